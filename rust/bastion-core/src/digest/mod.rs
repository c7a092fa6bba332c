//! Model-directory digests (BLAKE3).
//!
//! The encoding is specified in `docs/model-digest.md`:
//! `BLAKE3("bastion.model-dir-digest.v1" ‖ for each file sorted by path:
//! u64le(len(path)) ‖ path ‖ u64le(size) ‖ file_digest[32])`.

mod file;
mod stream;
mod walk;

use std::path::Path;

use rayon::prelude::*;

use crate::CoreError;

pub use file::{hash_file, hash_reader};
pub use stream::{Blake3Stream, PARALLEL_UPDATE_MIN};

/// Domain-separation prefix of the directory digest, version 1.
pub const DIR_DIGEST_DOMAIN: &[u8] = b"bastion.model-dir-digest.v1";

/// The digest of one regular file inside a model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Path relative to the root, UTF-8, `/`-separated, no leading `/`.
    pub path: String,
    /// Number of bytes hashed.
    pub size: u64,
    /// BLAKE3 of the file contents.
    pub digest: [u8; 32],
}

/// The digest of a whole model directory plus its per-file digests (sorted by path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirDigest {
    /// BLAKE3 over the v1 encoding of `files`.
    pub digest: [u8; 32],
    /// Every regular file under the root, sorted by `path` (byte order).
    pub files: Vec<FileDigest>,
}

/// Digest every regular file under `root` and combine them.
///
/// Refuses symlinks (including `root` itself), FIFOs, sockets, devices and non-UTF-8 names. Files
/// are hashed in parallel on the current rayon pool; large files are also hashed multi-threaded
/// and streamed, so multi-GB files never sit in memory whole.
pub fn digest_dir(root: &Path) -> Result<DirDigest, CoreError> {
    let entries = walk::walk(root)?;
    let files = entries
        .par_iter()
        .map(|e| {
            let (size, digest) = file::hash_listed_file(&e.abs, Some(&e.id))?;
            Ok(FileDigest {
                path: e.rel.clone(),
                size,
                digest,
            })
        })
        .collect::<Result<Vec<_>, CoreError>>()?;
    Ok(DirDigest {
        digest: combine(&files),
        files,
    })
}

/// The v1 directory digest over already-computed file digests. `files` must be sorted by path
/// (as [`digest_dir`] returns them); the function hashes them in the order given.
pub fn combine(files: &[FileDigest]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(DIR_DIGEST_DOMAIN);
    for f in files {
        h.update(&(f.path.len() as u64).to_le_bytes());
        h.update(f.path.as_bytes());
        h.update(&f.size.to_le_bytes());
        h.update(&f.digest);
    }
    *h.finalize().as_bytes()
}

/// `"blake3:<64 lowercase hex>"`, the textual form used across bastion.
pub fn format_digest(digest: &[u8; 32]) -> String {
    format!("blake3:{}", to_hex(digest))
}

/// 64 lowercase hex digits.
pub fn to_hex(digest: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*digest).to_hex().to_string()
}

#[cfg(test)]
mod tests;
