//! The source safetensors header parser and the strict JSON parser must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bastion_core::sealed::json::parse_strict(data);
    let _ = bastion_core::sealed::parse_safetensors_header(data, data.len() as u64 + 64);
});
