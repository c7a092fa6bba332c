//! Property tests: digests do not depend on chunking or read sizes, and any change shows.

use std::io::{self, Read};

use bastion_core::digest::{digest_dir, hash_reader, Blake3Stream};
use proptest::prelude::*;

/// A reader that returns at most `step` bytes per call, cycling through the given step sizes.
struct Trickle<'a> {
    data: &'a [u8],
    steps: Vec<usize>,
    i: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let step = self.steps[self.i % self.steps.len()].max(1);
        self.i += 1;
        let n = step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn stream_independent_of_chunking(
        data in proptest::collection::vec(any::<u8>(), 0..70_000),
        cuts in proptest::collection::vec(1usize..9000, 1..12),
    ) {
        let mut s = Blake3Stream::new();
        let mut rest = &data[..];
        for c in cuts.iter().cycle() {
            if rest.is_empty() { break; }
            let n = (*c).min(rest.len());
            s.update(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        prop_assert_eq!(s.finalize().unwrap(), *blake3::hash(&data).as_bytes());
    }

    #[test]
    fn reader_independent_of_read_size(
        data in proptest::collection::vec(any::<u8>(), 0..70_000),
        steps in proptest::collection::vec(1usize..5000, 1..6),
        hint in prop_oneof![Just(0u64), Just(u64::MAX)],
    ) {
        let r = Trickle { data: &data, steps, i: 0 };
        let (n, d) = hash_reader(r, hint).unwrap();
        prop_assert_eq!(n, data.len() as u64);
        prop_assert_eq!(d, *blake3::hash(&data).as_bytes());
    }

    #[test]
    fn any_change_changes_dir_digest(
        files in proptest::collection::btree_map("[a-c]{1,3}(/[a-c]{1,2})?", proptest::collection::vec(any::<u8>(), 0..300), 1..6),
        pick in any::<prop::sample::Index>(),
        byte in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        // Skip trees where one name is both a file and a directory ("a" and "a/b").
        let names: Vec<&String> = files.keys().collect();
        prop_assume!(!names.iter().any(|a| names.iter().any(|b| b.starts_with(&format!("{a}/")))));
        for (rel, data) in &files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        let base = digest_dir(dir.path()).unwrap();
        prop_assert_eq!(base.files.len(), files.len());
        prop_assert_eq!(&digest_dir(dir.path()).unwrap(), &base);

        let (rel, data) = files.iter().nth(pick.index(files.len())).unwrap();
        let p = dir.path().join(rel);
        let mut changed = data.clone();
        if changed.is_empty() { changed.push(0) } else { let i = byte.index(changed.len()); changed[i] ^= 0x80; }
        std::fs::write(&p, &changed).unwrap();
        let edited = digest_dir(dir.path()).unwrap();
        prop_assert_ne!(edited.digest, base.digest);

        std::fs::rename(&p, p.with_file_name("renamed_x")).unwrap();
        prop_assert_ne!(digest_dir(dir.path()).unwrap().digest, edited.digest);
    }
}
