//! The safetensors header parser the sealer runs on untrusted model files: never panics, and every
//! tensor it accepts lies inside the file, after the header.
#![no_main]

use bastion_core::sealed::parse_safetensors_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&data[..8]);
    let json = &data[8..];
    let file_len = u64::from_le_bytes(len) % (1 << 40) + 8 + json.len() as u64;
    if let Ok(tensors) = parse_safetensors_header(json, file_len) {
        for t in tensors.values() {
            assert!(8 + json.len() as u64 <= t.offsets[0]);
            assert!(t.offsets[0] <= t.offsets[1] && t.offsets[1] <= file_len);
        }
    }
});
