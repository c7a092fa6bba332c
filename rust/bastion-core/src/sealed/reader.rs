//! Opening a sealed directory: [`SealedDir`] (validated, no key) and [`SealedReader`] (DEK
//! unwrapped, commitment checked, plaintext ranges).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use ring::aead::LessSafeKey;

use super::container::{read_container_bytes, Container, CTXH_NAME};
use super::header::{b64d, Header, KeyBlock, TensorEntry, CTX_HEADER_DIGEST};
use super::io::{open_error, open_nofollow, pread_exact};
use super::keys::{Dek, KeyEncryptionKey, KeyWrapper};
use super::segment::{covering, open_segment, segment_bounds, SegmentPos};
use super::verify::first_failure;
use super::{json, limits};
use crate::digest::to_hex;
use crate::CoreError;

/// One opened data file. The handle is kept, so every later read sees the inode validated here.
pub(crate) struct DataFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) len: u64,
    /// Index of this file's segment 0 in the global tables.
    pub(crate) base: usize,
}

/// A sealed directory opened and validated without a key: header, tables and data-file sizes.
pub struct SealedDir {
    pub(crate) dir: PathBuf,
    pub(crate) c: Container,
    pub(crate) digest: [u8; 32],
    pub(crate) files: Vec<DataFile>,
    /// The exact bytes of `weights.ctxh` that were decoded.
    pub(crate) header_file: Vec<u8>,
}

/// The canonical bytes the `file` provider's wrap authenticates: the key block without
/// `wrapped_dek` (provider, key_id, context — and so the header digest).
pub(crate) fn wrap_aad(k: &KeyBlock) -> Result<Vec<u8>, String> {
    let mut v = serde_json::to_value(k).map_err(|e| e.to_string())?;
    if let serde_json::Value::Object(m) = &mut v {
        m.remove("wrapped_dek");
    }
    json::canonical(&v)
}

impl SealedDir {
    /// Open `dir`: parse and validate `weights.ctxh`, check the key context names this header's
    /// digest, open every data file (no symlinks) and check its size against the header.
    pub fn open(dir: &Path) -> Result<SealedDir, CoreError> {
        let (c, header_file) = read_container_bytes(dir)?;
        let ctxh = dir.join(CTXH_NAME);
        let fmt = |reason: String| CoreError::Format {
            path: ctxh.clone(),
            segment: None,
            reason,
        };
        let digest = c.header.digest().map_err(fmt)?;
        if c.header.key.context.get(CTX_HEADER_DIGEST) != Some(&to_hex(&digest)) {
            return Err(CoreError::Integrity {
                path: ctxh,
                segment: None,
                reason: "key context does not name this header's digest".into(),
            });
        }
        let s = c.header.segment_size;
        let mut files = Vec::with_capacity(c.header.files.len());
        let mut base = 0usize;
        for f in &c.header.files {
            let path = dir.join(&f.name);
            let integrity = |segment, reason: &str| CoreError::Integrity {
                path: path.clone(),
                segment,
                reason: reason.into(),
            };
            let file = match open_nofollow(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(integrity(None, "data file missing"))
                }
                Err(e) => return Err(open_error(&path, e)),
            };
            let meta = file.metadata().map_err(|e| CoreError::io(&path, e))?;
            if !meta.file_type().is_file() {
                return Err(CoreError::NotRegularFile { path });
            }
            if meta.len() < f.plaintext_len {
                return Err(integrity(Some(meta.len() / s), "data file truncated"));
            }
            if meta.len() > f.plaintext_len {
                return Err(integrity(None, "extra bytes after the last segment"));
            }
            files.push(DataFile {
                path,
                file,
                len: f.plaintext_len,
                base,
            });
            base += f.segments as usize;
        }
        Ok(SealedDir {
            dir: dir.to_path_buf(),
            c,
            digest,
            files,
            header_file,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.c.header
    }

    /// The exact bytes of `weights.ctxh` this directory was opened from (what a signature over
    /// the file must match).
    pub fn header_file_bytes(&self) -> &[u8] {
        &self.header_file
    }

    /// The header digest (bound into every segment's AAD; stable across rekeying).
    pub fn header_digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn file(&self, fi: u32) -> Result<&DataFile, CoreError> {
        self.files
            .get(fi as usize)
            .ok_or_else(|| CoreError::InvalidArgument {
                field: "file_index",
                problem: format!("must be below {}", self.files.len()),
            })
    }

    /// Read ciphertext segment `si` of file `fi` into `buf` (exactly the segment's length) and
    /// check its hash against the table. Nothing is decrypted.
    pub(crate) fn read_verified(&self, fi: u32, si: u64, buf: &mut [u8]) -> Result<(), CoreError> {
        let f = self.file(fi)?;
        let (start, _) = segment_bounds(si, f.len, self.c.header.segment_size);
        pread_exact(&f.file, buf, start).map_err(|e| CoreError::io(&f.path, e))?;
        let want = self.c.hashes.get(f.base + si as usize);
        if want != Some(&self.c.header.hash.digest(&[buf])) {
            buf.fill(0);
            return Err(CoreError::Integrity {
                path: f.path.clone(),
                segment: Some(si),
                reason: "ciphertext hash does not match the hash table".into(),
            });
        }
        Ok(())
    }
}

/// A sealed directory with its DEK unwrapped: returns authenticated plaintext.
/// Holds per-file AEAD keys only (the DEK itself is dropped and zeroized after open).
pub struct SealedReader {
    d: SealedDir,
    keys: Vec<LessSafeKey>,
}

/// Unwrap the DEK with a local KEK and check the key commitment (before any decryption).
pub(crate) fn unlock(d: &SealedDir, kek: &dyn KeyWrapper) -> Result<Dek, CoreError> {
    let h = &d.c.header;
    let ctxh = d.dir.join(CTXH_NAME);
    let integ = |reason: &str| CoreError::Integrity {
        path: ctxh.clone(),
        segment: None,
        reason: reason.into(),
    };
    if h.key.provider != kek.provider() {
        return Err(CoreError::InvalidArgument {
            field: "kek",
            problem: format!(
                "this model's data key is wrapped by the '{}' key provider, not '{}'",
                h.key.provider,
                kek.provider()
            ),
        });
    }
    let aad = wrap_aad(&h.key).map_err(|r| CoreError::Format {
        path: ctxh.clone(),
        segment: None,
        reason: r,
    })?;
    let wrapped = b64d(&h.key.wrapped_dek).unwrap_or_default();
    let dek = kek
        .unwrap_wrapped(&wrapped, &aad)?
        .ok_or_else(|| integ("DEK unwrap failed: wrong key-encryption key or altered key block"))?;
    let salt = h.salt_bytes().map_err(|r| CoreError::Format {
        path: ctxh.clone(),
        segment: None,
        reason: r,
    })?;
    let commitment = b64d(&h.commitment).unwrap_or_default();
    if !dek.check_commitment(&salt, &d.digest, &commitment)? {
        return Err(integ("key commitment mismatch"));
    }
    Ok(dek)
}

impl SealedReader {
    /// Open `dir` with the KEK at `kek_path`: validate everything, unwrap the DEK, check the
    /// commitment, derive the per-file keys.
    pub fn open(dir: &Path, kek_path: &Path) -> Result<SealedReader, CoreError> {
        let kek = KeyEncryptionKey::from_file(kek_path)?;
        Self::open_with_kek(dir, &kek)
    }

    /// [`SealedReader::open`] with an already-loaded KEK.
    pub fn open_with_kek(dir: &Path, kek: &KeyEncryptionKey) -> Result<SealedReader, CoreError> {
        Self::open_with(dir, kek)
    }

    /// Open `dir` with any key-encryption key (a local file, a KMS, an HSM).
    pub fn open_with(dir: &Path, kek: &dyn KeyWrapper) -> Result<SealedReader, CoreError> {
        let d = SealedDir::open(dir)?;
        let dek = unlock(&d, kek)?;
        let h = &d.c.header;
        let salt = h.salt_bytes().map_err(|r| CoreError::Format {
            path: dir.join(CTXH_NAME),
            segment: None,
            reason: r,
        })?;
        let keys = (0..h.files.len() as u32)
            .map(|i| dek.file_key(h.aead, &salt, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SealedReader { d, keys })
    }

    /// The validated, unkeyed view.
    pub fn sealed_dir(&self) -> &SealedDir {
        &self.d
    }

    /// Tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        self.d.c.header.tensors.keys().cloned().collect()
    }

    /// One tensor's index entry.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorEntry, CoreError> {
        self.d
            .c
            .header
            .tensors
            .get(name)
            .ok_or_else(|| CoreError::InvalidArgument {
                field: "name",
                problem: "no such tensor".into(),
            })
    }

    /// Plaintext length of file `fi`.
    pub fn file_len(&self, fi: u32) -> Result<u64, CoreError> {
        Ok(self.d.file(fi)?.len)
    }

    /// Plaintext `[b, e)` of file `fi` as a new vector.
    pub fn read_range(&self, fi: u32, b: u64, e: u64) -> Result<Vec<u8>, CoreError> {
        self.check_range(fi, b, e)?;
        let mut out = vec![0u8; (e - b) as usize];
        self.read_range_into(fi, b, &mut out)?;
        Ok(out)
    }

    /// A whole tensor's bytes.
    pub fn read_tensor(&self, name: &str) -> Result<Vec<u8>, CoreError> {
        let t = self.tensor_info(name)?;
        self.read_range(t.file, t.data_offsets[0], t.data_offsets[1])
    }

    /// Check `[b, e)` lies within file `fi`.
    pub fn check_range(&self, fi: u32, b: u64, e: u64) -> Result<(), CoreError> {
        let len = self.d.file(fi)?.len;
        if b > e || e > len || e - b > limits::MAX_FILE_LEN.min(usize::MAX as u64) {
            return Err(CoreError::InvalidArgument {
                field: "range",
                problem: format!("must satisfy begin <= end <= {len}"),
            });
        }
        Ok(())
    }

    /// Decrypt plaintext `[b, b + out.len())` of file `fi` into `out`. Each covering segment is
    /// read with `pread`, hash-checked, then authenticated and decrypted (segments in parallel on
    /// the rayon pool; whole segments in place in `out`). On error `out` is zeroed.
    pub fn read_range_into(&self, fi: u32, b: u64, out: &mut [u8]) -> Result<(), CoreError> {
        let e = b.saturating_add(out.len() as u64);
        self.check_range(fi, b, e)?;
        if out.is_empty() {
            return Ok(());
        }
        let s = self.d.c.header.segment_size;
        let (s0, s1) = covering(b, e, s);
        // Split `out` at segment boundaries: (segment index, plaintext offset of the piece, piece).
        let mut pieces = Vec::with_capacity((s1 - s0 + 1) as usize);
        let mut rest = &mut out[..];
        let mut at = b;
        for si in s0..=s1 {
            let end = ((si + 1) * s).min(e);
            let (piece, tail) = rest.split_at_mut((end - at) as usize);
            pieces.push((si, at, piece));
            rest = tail;
            at = end;
        }
        let r = first_failure(
            pieces
                .into_par_iter()
                .map(|(si, at, piece)| self.decrypt_piece(fi, si, at, piece)),
        );
        if r.is_err() {
            out.fill(0);
        }
        r
    }

    fn decrypt_piece(&self, fi: u32, si: u64, at: u64, piece: &mut [u8]) -> Result<(), CoreError> {
        let f = self.d.file(fi)?;
        let (ss, se) = segment_bounds(si, f.len, self.d.c.header.segment_size);
        if at == ss && piece.len() as u64 == se - ss {
            return self.decrypt_segment(fi, si, piece);
        }
        let mut scratch = vec![0u8; (se - ss) as usize];
        self.decrypt_segment(fi, si, &mut scratch)?;
        let off = (at - ss) as usize;
        piece.copy_from_slice(&scratch[off..off + piece.len()]);
        Ok(())
    }

    /// Read, hash-check, authenticate and decrypt one whole segment into `buf`.
    pub(crate) fn decrypt_segment(
        &self,
        fi: u32,
        si: u64,
        buf: &mut [u8],
    ) -> Result<(), CoreError> {
        self.d.read_verified(fi, si, buf)?;
        let f = self.d.file(fi)?;
        let seg = &self.d.c.header.files[fi as usize];
        let tag = self
            .d
            .c
            .tags
            .get(f.base + si as usize)
            .copied()
            .unwrap_or_default();
        let key = self
            .keys
            .get(fi as usize)
            .ok_or(CoreError::Crypto("missing file key"))?;
        let pos = SegmentPos {
            file: fi,
            index: si,
            last: si + 1 == seg.segments,
        };
        if !open_segment(key, &self.d.digest, pos, &tag, buf) {
            return Err(CoreError::Integrity {
                path: f.path.clone(),
                segment: Some(si),
                reason: "authentication failed (tampered, reordered or spliced segment)".into(),
            });
        }
        Ok(())
    }
}
