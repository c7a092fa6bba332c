//! File helpers: no-follow opens, positional reads, full reads.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

use crate::CoreError;

/// Open for reading without following a final symlink (`O_NOFOLLOW | O_NONBLOCK` on Unix).
#[cfg(unix)]
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Open for reading (no symlink protection on this platform).
#[cfg(not(unix))]
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).open(path)
}

/// Map an open error, turning `ELOOP` (a symlink under `O_NOFOLLOW`) into [`CoreError::Symlink`].
pub fn open_error(path: &Path, e: io::Error) -> CoreError {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return CoreError::Symlink {
            path: path.to_path_buf(),
        };
    }
    CoreError::io(path, e)
}

/// Read exactly `buf.len()` bytes at `offset` (positional; the file cursor is not used).
#[cfg(unix)]
pub fn pread_exact(f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, offset)
}

/// Read exactly `buf.len()` bytes at `offset`.
#[cfg(windows)]
pub fn pread_exact(f: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Fill `buf` as far as the reader allows; fewer bytes only at EOF.
pub fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
