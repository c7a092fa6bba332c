//! `weights.ctxh` decoding (prefix, canonical JSON header, field validation, tables) must never
//! panic; whatever decodes must re-encode to the same bytes (one encoding per header).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = bastion_core::sealed::decode_container(Path::new("fuzz"), data) {
        let again = c.encode().unwrap_or_default();
        assert_eq!(again, data, "decoded header must re-encode identically");
        let _ = c.header.digest();
    }
});
