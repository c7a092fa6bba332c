//! Property tests: segment arithmetic, random range reads, and "fuzz-lite" (random and mutated
//! headers never panic and are always refused).
// Test code: a failed unwrap/expect/panic is the test failing, by design (clippy.toml's allow-*-in-tests
// does not reach helper functions outside #[test] in integration tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sealed_util.rs"]
mod util;

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use bastion_core::sealed::{self, segment, SealedReader};
use proptest::prelude::*;
use util::*;

struct Sealed {
    _fx: Fixture,
    reader: SealedReader,
    plain: Vec<Vec<u8>>,
    ctxh: Vec<u8>,
    dir: PathBuf,
}

fn fixture() -> &'static Sealed {
    static F: OnceLock<Sealed> = OnceLock::new();
    F.get_or_init(|| {
        let fx = source();
        let dir = seal(&fx, "s");
        let reader = SealedReader::open(&dir, &fx.kek).unwrap();
        let plain = reader
            .sealed_dir()
            .header()
            .files
            .iter()
            .map(|f| fs::read(fx.src.join(&f.source_name)).unwrap())
            .collect();
        let ctxh = fs::read(dir.join("weights.ctxh")).unwrap();
        Sealed {
            _fx: fx,
            reader,
            plain,
            ctxh,
            dir,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn segment_math(len in 0u64..1 << 40, shift in 16u32..27, b in any::<u64>(), e in any::<u64>()) {
        let s = 1u64 << shift;
        let n = segment::n_segments(len, s);
        prop_assert!(n >= 1);
        // Segments tile [0, len) exactly.
        let (_, last_end) = segment::segment_bounds(n - 1, len, s);
        prop_assert_eq!(last_end, len);
        if len > 0 {
            prop_assert!(segment::segment_bounds(n - 1, len, s).0 < len);
        }
        let (b, e) = (b % (len + 1), e % (len + 1));
        let (b, e) = (b.min(e), b.max(e));
        if b < e {
            let (s0, s1) = segment::covering(b, e, s);
            prop_assert!(s0 <= s1 && s1 < n);
            let (a0, _) = segment::segment_bounds(s0, len, s);
            let (_, z1) = segment::segment_bounds(s1, len, s);
            prop_assert!(a0 <= b && e <= z1);
            prop_assert!(b < a0 + s && e > z1.saturating_sub(s));
        }
    }

    #[test]
    fn any_range_equals_the_plaintext_slice(fi in 0u32..2, b in any::<u64>(), e in any::<u64>()) {
        let f = fixture();
        let plain = &f.plain[fi as usize];
        let len = plain.len() as u64;
        let (b, e) = (b % (len + 1), e % (len + 1));
        let (b, e) = (b.min(e), b.max(e));
        prop_assert_eq!(&f.reader.read_range(fi, b, e).unwrap()[..], &plain[b as usize..e as usize]);
        prop_assert!(f.reader.read_range(fi, e, len + 1).is_err());
    }

    #[test]
    fn random_bytes_never_parse(data in proptest::collection::vec(any::<u8>(), 0..4096), magic in any::<bool>()) {
        let mut data = data;
        if magic && data.len() >= 20 {
            data[..8].copy_from_slice(sealed::MAGIC);
            data[8..12].copy_from_slice(&1u32.to_le_bytes());
            let n = (data.len() as u64 - 20).min(u64::from(data[12]));
            data[12..20].copy_from_slice(&n.to_le_bytes());
        }
        prop_assert!(sealed::decode_container(&PathBuf::from("x"), &data).is_err());
        let _ = sealed::parse_safetensors_header(&data, data.len() as u64 + 8);
        let _ = sealed::json::parse_strict(&data);
    }

    #[test]
    fn mutated_headers_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let f = fixture();
        let mut data = f.ctxh.clone();
        let json_end = 20 + u64::from_le_bytes(data[12..20].try_into().unwrap()) as usize;
        let mut in_header = false;
        for (i, x) in &edits {
            let at = i.index(data.len());
            if data[at] != *x {
                in_header |= at < json_end;
            }
            data[at] = *x;
        }
        let r = sealed::decode_container(&f.dir, &data);
        // One encoding per header: whatever decodes re-encodes to the same bytes.
        if let Ok(c) = &r {
            prop_assert_eq!(&c.encode().unwrap(), &data);
        }
        if in_header {
            // A changed prefix or JSON byte is refused (non-canonical JSON, a bad field), or it
            // decodes to a different header: a different digest (so every segment's AAD and the
            // context check fail) or a different key block/commitment (the wrap AAD or the
            // commitment check fails; see sealed_tamper::semantic_header_edits_refused).
            if let Ok(c) = r {
                let orig = f.reader.sealed_dir().header();
                prop_assert!(c.header != *orig);
                if c.header.digest().ok() == Some(f.reader.sealed_dir().header_digest()) {
                    prop_assert!(c.header.key != orig.key || c.header.commitment != orig.commitment);
                }
            }
        }
    }

    #[test]
    fn truncations_never_parse(cut in any::<prop::sample::Index>()) {
        let f = fixture();
        let at = cut.index(f.ctxh.len());
        prop_assert!(sealed::decode_container(&f.dir, &f.ctxh[..at]).is_err());
    }
}
