//! Unit tests for the directory digest. Property tests live in `tests/digest_props.rs`.

use std::fs;
use std::path::Path;

use super::*;

const EMPTY_BLAKE3: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn empty_file_matches_known_vector() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "empty", b"");
    let d = digest_dir(dir.path()).unwrap();
    assert_eq!(to_hex(&d.files[0].digest), EMPTY_BLAKE3);
    assert_eq!(
        format_digest(&d.files[0].digest),
        format!("blake3:{EMPTY_BLAKE3}")
    );
}

#[test]
fn hash_reader_matches_blake3_on_both_paths() {
    for len in [
        0,
        1,
        1023,
        1024,
        1025,
        (1 << 20) + 3,
        (8 << 20) + 17,
        (17 << 20) + 5,
    ] {
        let data = pattern(len);
        let want = *blake3::hash(&data).as_bytes();
        for hint in [0, u64::MAX] {
            assert_eq!(
                hash_reader(&data[..], hint).unwrap(),
                (len as u64, want),
                "len {len} hint {hint}"
            );
        }
    }
}

#[test]
fn file_digests_and_encoding() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.bin", &pattern(3000));
    write(dir.path(), "a/z.json", b"{}");
    write(dir.path(), "a.txt", b"x");
    let d = digest_dir(dir.path()).unwrap();
    let paths: Vec<_> = d.files.iter().map(|f| f.path.as_str()).collect();
    // Byte order: '.' (0x2e) sorts before '/' (0x2f).
    assert_eq!(paths, ["a.txt", "a/z.json", "b.bin"]);
    assert_eq!(d.files[2].size, 3000);
    assert_eq!(d.files[2].digest, *blake3::hash(&pattern(3000)).as_bytes());
    let mut enc = DIR_DIGEST_DOMAIN.to_vec();
    for f in &d.files {
        enc.extend((f.path.len() as u64).to_le_bytes());
        enc.extend(f.path.as_bytes());
        enc.extend(f.size.to_le_bytes());
        enc.extend(f.digest);
    }
    assert_eq!(d.digest, *blake3::hash(&enc).as_bytes());
    assert_eq!(d.digest, combine(&d.files));
}

#[test]
fn empty_dir_is_domain_only() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    let d = digest_dir(dir.path()).unwrap();
    assert!(d.files.is_empty());
    assert_eq!(d.digest, *blake3::hash(DIR_DIGEST_DOMAIN).as_bytes());
}

#[test]
fn changes_change_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "w/model.bin", &pattern(5000));
    write(dir.path(), "config.json", b"{}");
    let base = digest_dir(dir.path()).unwrap().digest;
    let mut data = pattern(5000);
    data[4321] ^= 1;
    write(dir.path(), "w/model.bin", &data);
    let flipped = digest_dir(dir.path()).unwrap().digest;
    assert_ne!(base, flipped);
    fs::rename(
        dir.path().join("config.json"),
        dir.path().join("config2.json"),
    )
    .unwrap();
    let renamed = digest_dir(dir.path()).unwrap().digest;
    assert_ne!(flipped, renamed);
    write(dir.path(), "extra", b"");
    assert_ne!(renamed, digest_dir(dir.path()).unwrap().digest);
}

#[test]
fn errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = digest_dir(&missing).unwrap_err();
    assert!(matches!(e, CoreError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("nope"));
    write(dir.path(), "f", b"1");
    let e = digest_dir(&dir.path().join("f")).unwrap_err();
    assert!(matches!(e, CoreError::NotADirectory { .. }), "{e:?}");
}

/// A reader over `file` that, at its first read, runs `tamper` (another writer changing the file
/// while it is being hashed).
struct TamperingReader<'a, F: FnMut()> {
    file: &'a fs::File,
    tamper: Option<F>,
}

impl<F: FnMut() + Send> std::io::Read for TamperingReader<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(mut t) = self.tamper.take() {
            t();
        }
        std::io::Read::read(&mut self.file, buf)
    }
}

fn hash_while(path: &Path, tamper: impl FnMut() + Send) -> Result<(u64, [u8; 32]), CoreError> {
    let file = fs::File::open(path).unwrap();
    let before = file.metadata().unwrap();
    let reader = TamperingReader {
        file: &file,
        tamper: Some(tamper),
    };
    file::hash_opened(path, &file, &before, reader)
}

#[test]
fn a_file_that_grows_while_hashed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("grows");
    fs::write(&p, pattern(3000)).unwrap();
    let e = hash_while(&p, || {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"more").unwrap();
    })
    .unwrap_err();
    assert!(matches!(e, CoreError::FileChanged { .. }), "{e:?}");
    assert!(e.to_string().contains("grows"));
}

#[test]
fn a_file_that_shrinks_while_hashed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shrinks");
    fs::write(&p, pattern(3000)).unwrap();
    let e = hash_while(&p, || {
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(10).unwrap();
    })
    .unwrap_err();
    assert!(matches!(e, CoreError::FileChanged { .. }), "{e:?}");
}

#[test]
fn a_same_size_rewrite_while_hashed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rewritten");
    fs::write(&p, pattern(3000)).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let e = hash_while(&p, || {
        use std::io::{Seek, Write};
        let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(std::io::SeekFrom::Start(2000)).unwrap();
        f.write_all(b"X").unwrap(); // same length, new mtime
    })
    .unwrap_err();
    assert!(matches!(e, CoreError::FileChanged { .. }), "{e:?}");
    // Untouched, the same file hashes fine.
    assert_eq!(hash_while(&p, || {}).unwrap().0, 3000);
}

#[cfg(unix)]
mod unix {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn symlinks_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "real/a", b"a");
        symlink(dir.path().join("real/a"), dir.path().join("link")).unwrap();
        let e = digest_dir(dir.path()).unwrap_err();
        assert!(
            matches!(&e, CoreError::Symlink { path } if path.ends_with("link")),
            "{e:?}"
        );

        let d2 = tempfile::tempdir().unwrap();
        symlink(dir.path().join("real"), d2.path().join("dirlink")).unwrap();
        assert!(matches!(
            digest_dir(d2.path()),
            Err(CoreError::Symlink { .. })
        ));
        // The root itself, and hash_file on a link.
        let root_link = d2.path().join("dirlink");
        assert!(matches!(
            digest_dir(&root_link),
            Err(CoreError::Symlink { .. })
        ));
        assert!(matches!(
            hash_file(&dir.path().join("link")),
            Err(CoreError::Symlink { .. })
        ));
    }

    #[test]
    fn socket_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _l = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let e = digest_dir(dir.path()).unwrap_err();
        assert!(matches!(e, CoreError::NotRegularFile { .. }), "{e:?}");
    }

    #[test]
    fn non_utf8_name_refused() {
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"bad\xff");
        if fs::write(dir.path().join(name), b"x").is_err() {
            return; // filesystem that enforces UTF-8 names
        }
        assert!(matches!(
            digest_dir(dir.path()),
            Err(CoreError::NonUtf8Path { .. })
        ));
    }
}

#[test]
fn stream_finalize_once() {
    let mut s = Blake3Stream::new();
    s.update(b"abc").unwrap();
    assert_eq!(s.finalize().unwrap(), *blake3::hash(b"abc").as_bytes());
    assert!(s.is_finalized());
    assert!(matches!(s.finalize(), Err(CoreError::AlreadyFinalized)));
    assert!(matches!(s.update(b"x"), Err(CoreError::AlreadyFinalized)));
    let big = pattern(PARALLEL_UPDATE_MIN * 3 + 1);
    let mut s = Blake3Stream::default();
    s.update(&big).unwrap();
    assert_eq!(s.finalize().unwrap(), *blake3::hash(&big).as_bytes());
}
