//! `weights.ctxh` decoding (container prefix, strict JSON header, key block, tables): never panics,
//! never allocates beyond the limits, and whatever decodes re-encodes to an equivalent container.
#![no_main]

use std::path::Path;

use bastion_core::sealed::decode_container;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("weights.ctxh");
    if let Ok(c) = decode_container(path, data) {
        let again = c.encode().expect("a decoded container re-encodes");
        let c2 = decode_container(path, &again).expect("a re-encoded container decodes");
        assert_eq!(c.header.digest(), c2.header.digest());
        assert_eq!(c.tags, c2.tags);
        assert_eq!(c.hashes, c2.hashes);
    }
});
