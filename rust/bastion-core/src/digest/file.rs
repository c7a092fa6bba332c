//! Streaming BLAKE3 of one file: bounded memory, multi-threaded for large files.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

use super::walk::FileId;
use crate::CoreError;

/// Read size for small files (and the unit of the single-threaded path).
const SMALL_CHUNK: usize = 1 << 20;
/// Read size for large files; each chunk is hashed with `update_rayon` while the next is read.
const LARGE_CHUNK: usize = 8 << 20;

/// Hash the regular file at `path`, returning `(bytes hashed, BLAKE3 digest)`.
///
/// Opens with `O_NOFOLLOW | O_NONBLOCK` (Unix), so a symlink is refused, and checks that the opened
/// file is a regular file. Every byte hashed is read from that one descriptor. Fails with
/// [`CoreError::FileChanged`] if the number of bytes read differs from the file's length at open, or
/// if the descriptor's length or modification time after hashing differs from before.
pub fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), CoreError> {
    hash_listed_file(path, None)
}

/// [`hash_file`], also requiring the opened file to be the one listed (device, inode, length).
pub(crate) fn hash_listed_file(
    path: &Path,
    expected: Option<&FileId>,
) -> Result<(u64, [u8; 32]), CoreError> {
    let file = open_nofollow(path).map_err(|e| open_error(path, e))?;
    let meta = file.metadata().map_err(|e| CoreError::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(CoreError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    if expected.is_some_and(|want| *want != FileId::of(&meta)) {
        return Err(CoreError::FileChanged {
            path: path.to_path_buf(),
        });
    }
    hash_opened(path, &file, &meta, &file)
}

/// Hash what `reader` yields (the bytes of `file`, opened at `path` with metadata `before`), then
/// check that it was the whole file and that the file did not change meanwhile: the bytes read equal
/// the length at open, and `fstat` after hashing shows the same length and modification time.
pub(crate) fn hash_opened<R: Read + Send>(
    path: &Path,
    file: &File,
    before: &Metadata,
    reader: R,
) -> Result<(u64, [u8; 32]), CoreError> {
    let changed = || CoreError::FileChanged {
        path: path.to_path_buf(),
    };
    let (size, digest) = hash_reader(reader, before.len()).map_err(|e| CoreError::io(path, e))?;
    if size != before.len() {
        return Err(changed());
    }
    let after = file.metadata().map_err(|e| CoreError::io(path, e))?;
    if Stamp::of(&after) != Stamp::of(before) {
        return Err(changed());
    }
    Ok((size, digest))
}

/// What must not change while a file is hashed: its length and modification time (ns).
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    #[cfg(unix)]
    mtime: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Stamp {
                len: meta.len(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
            }
        }
        #[cfg(not(unix))]
        {
            Stamp { len: meta.len() }
        }
    }
}

/// Hash everything `reader` yields until EOF, returning `(bytes read, BLAKE3 digest)`.
///
/// `size_hint` picks the strategy: below [`LARGE_CHUNK`] a 1 MiB buffer and plain `update`;
/// otherwise two 8 MiB buffers, hashing one with `update_rayon` while reading into the other.
/// Memory stays bounded whatever the input size; the digest never depends on the strategy.
pub fn hash_reader<R: Read + Send>(mut reader: R, size_hint: u64) -> io::Result<(u64, [u8; 32])> {
    let mut hasher = blake3::Hasher::new();
    let mut total: u64 = 0;
    if size_hint < LARGE_CHUNK as u64 {
        let mut buf = vec![0u8; SMALL_CHUNK];
        loop {
            let n = read_full(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
    } else {
        let mut cur = vec![0u8; LARGE_CHUNK];
        let mut next = vec![0u8; LARGE_CHUNK];
        let mut n = read_full(&mut reader, &mut cur)?;
        while n > 0 {
            let chunk = &cur[..n];
            let h = &mut hasher;
            let (_, read) = rayon::join(
                || h.update_rayon(chunk),
                || read_full(&mut reader, &mut next),
            );
            total += n as u64;
            n = read?;
            std::mem::swap(&mut cur, &mut next);
        }
    }
    Ok((total, *hasher.finalize().as_bytes()))
}

/// Fill `buf` as far as the reader allows; returns fewer bytes only at EOF.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(unix)]
fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a FIFO swapped in after listing must not block the open.
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).open(path)
}

fn open_error(path: &Path, e: io::Error) -> CoreError {
    // O_NOFOLLOW on a symlink fails with ELOOP.
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return CoreError::Symlink {
            path: path.to_path_buf(),
        };
    }
    CoreError::io(path, e)
}
