//! Sealing a model directory: stream each safetensors file through the segment AEAD into
//! `weights-NNNNN.ctxd`, copy plaintext files, write `weights.ctxh` last, publish atomically.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use ring::aead::LessSafeKey;
use ring::rand::{SecureRandom, SystemRandom};

use super::build::build_header;
use super::container::{Container, CTXH_NAME};
use super::header::*;
use super::io::{open_error, open_nofollow, read_full};
use super::keys::{Dek, KeyEncryptionKey, KeyWrapper};
use super::limits::*;
use super::segment::{n_segments, seal_segment, SegmentPos, HASH_LEN, TAG_LEN};
use super::source::{scan, SourceWeights};
use super::{AeadAlg, HashAlg};
use crate::CoreError;

/// Segments encrypted per batch (in parallel) while streaming.
const BATCH: usize = 8;

/// Options of [`seal_dir`].
#[derive(Debug, Clone)]
pub struct SealOptions {
    /// Segment AEAD.
    pub aead: AeadAlg,
    /// Segment size (power of two, 64 KiB..64 MiB).
    pub segment_size: u64,
    /// Ciphertext/header hash.
    pub hash: HashAlg,
    /// Extra wrapping context (e.g. `model` → id); keys may not start with `bastion.`.
    pub context: BTreeMap<String, String>,
    /// Optional provenance.
    pub origin: Option<Origin>,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions {
            aead: AeadAlg::Aes256Gcm,
            segment_size: DEFAULT_SEGMENT,
            hash: HashAlg::Blake3,
            context: BTreeMap::new(),
            origin: None,
        }
    }
}

/// What [`seal_dir`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealReport {
    /// Data files written.
    pub files: usize,
    /// Tensors indexed.
    pub tensors: usize,
    /// Plaintext bytes sealed.
    pub bytes: u64,
    /// Plaintext files copied verbatim.
    pub copied: Vec<String>,
    /// Hex header digest.
    pub header_digest: String,
}

fn invalid(field: &'static str, problem: &str) -> CoreError {
    CoreError::InvalidArgument {
        field,
        problem: problem.into(),
    }
}

/// Seal the model directory `src` into the new directory `out` under the KEK at `kek_path`.
///
/// `out` must not exist. Everything is written into a sibling staging directory that is renamed
/// to `out` only when complete (and removed on failure), `weights.ctxh` last.
pub fn seal_dir(
    src: &Path,
    out: &Path,
    kek_path: &Path,
    opts: &SealOptions,
) -> Result<SealReport, CoreError> {
    let kek = KeyEncryptionKey::from_file(kek_path)?;
    seal_dir_with_kek(src, out, &kek, opts)
}

/// [`seal_dir`] with a loaded KEK.
pub fn seal_dir_with_kek(
    src: &Path,
    out: &Path,
    kek: &KeyEncryptionKey,
    opts: &SealOptions,
) -> Result<SealReport, CoreError> {
    seal_dir_with(src, out, kek, opts)
}

/// [`seal_dir`] with any key-encryption key (a local file, a KMS, an HSM).
pub fn seal_dir_with(
    src: &Path,
    out: &Path,
    kek: &dyn KeyWrapper,
    opts: &SealOptions,
) -> Result<SealReport, CoreError> {
    let s = opts.segment_size;
    if !s.is_power_of_two() || !(MIN_SEGMENT..=MAX_SEGMENT).contains(&s) {
        return Err(invalid(
            "segment_size",
            "must be a power of two in [65536, 67108864]",
        ));
    }
    if opts.context.keys().any(|k| k.starts_with("bastion.")) {
        return Err(invalid(
            "context",
            "keys starting with 'bastion.' are reserved",
        ));
    }
    if out.exists() || fs::symlink_metadata(out).is_ok() {
        return Err(invalid("out", "must not exist"));
    }
    let plan = scan(src)?;
    let rng = SystemRandom::new();
    let (header, dek, salt) = build_header(&plan.weights, kek, opts, &rng)?;
    let staging = staging_dir(out, &rng)?;
    let result = write_all(
        &staging,
        &header,
        &dek,
        &salt,
        &plan.weights,
        &plan.copies,
        src,
    );
    let published = result.and_then(|()| {
        fs::rename(&staging, out).map_err(|e| CoreError::io(out, e))?;
        sync_dir(out.parent().unwrap_or(Path::new(".")));
        Ok(())
    });
    if let Err(e) = published {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    Ok(SealReport {
        files: plan.weights.len(),
        tensors: header.tensors.len(),
        bytes: plan.weights.iter().map(|w| w.len).sum(),
        copied: plan.copies,
        header_digest: header
            .key
            .context
            .get(CTX_HEADER_DIGEST)
            .cloned()
            .unwrap_or_default(),
    })
}

fn staging_dir(out: &Path, rng: &SystemRandom) -> Result<PathBuf, CoreError> {
    let mut r = [0u8; 8];
    rng.fill(&mut r)
        .map_err(|_| CoreError::Crypto("system RNG"))?;
    let name = out
        .file_name()
        .ok_or_else(|| invalid("out", "needs a final path component"))?;
    let staging = out.with_file_name(format!(
        ".{}.sealing-{}",
        name.to_string_lossy(),
        to_hex32(&r)
    ));
    fs::create_dir(&staging).map_err(|e| CoreError::io(&staging, e))?;
    Ok(staging)
}

fn to_hex32(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn create_new(path: &Path) -> Result<File, CoreError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| open_error(path, e))
}

fn sync_dir(dir: &Path) {
    // Best effort: directory fsync is not supported everywhere.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn write_all(
    staging: &Path,
    h: &Header,
    dek: &Dek,
    salt: &[u8; 32],
    weights: &[SourceWeights],
    copies: &[String],
    src: &Path,
) -> Result<(), CoreError> {
    let digest = h.digest().map_err(|r| invalid("options", &r))?;
    let mut tags = Vec::with_capacity(h.total_segments() as usize);
    let mut hashes = Vec::with_capacity(h.total_segments() as usize);
    for (i, w) in weights.iter().enumerate() {
        let key = dek.file_key(h.aead, salt, i as u32)?;
        let dst = staging.join(data_file_name(i));
        let ctx = SealCtx {
            key: &key,
            digest: &digest,
            file: i as u32,
            seg: h.segment_size,
            hash: h.hash,
        };
        seal_file(&ctx, w, &dst, &mut tags, &mut hashes)?;
    }
    for name in copies {
        copy_plain(&src.join(name), &staging.join(name))?;
    }
    let c = Container {
        header: h.clone(),
        tags,
        hashes,
    };
    write_ctxh(staging, &c)?;
    sync_dir(staging);
    Ok(())
}

/// Write `dir/weights.ctxh` through a temporary file and a rename.
pub(crate) fn write_ctxh(dir: &Path, c: &Container) -> Result<(), CoreError> {
    let path = dir.join(CTXH_NAME);
    let tmp = dir.join(format!("{CTXH_NAME}.tmp"));
    let bytes = c.encode().map_err(|r| CoreError::Format {
        path: path.clone(),
        segment: None,
        reason: r,
    })?;
    let _ = fs::remove_file(&tmp);
    let mut f = create_new(&tmp)?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| CoreError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| CoreError::io(&path, e))?;
    sync_dir(dir);
    Ok(())
}

struct SealCtx<'a> {
    key: &'a LessSafeKey,
    digest: &'a [u8; 32],
    file: u32,
    seg: u64,
    hash: HashAlg,
}

fn seal_file(
    c: &SealCtx<'_>,
    w: &SourceWeights,
    dst: &Path,
    tags: &mut Vec<[u8; TAG_LEN]>,
    hashes: &mut Vec<[u8; HASH_LEN]>,
) -> Result<(), CoreError> {
    let changed = || CoreError::FileChanged {
        path: w.path.clone(),
    };
    let n = n_segments(w.len, c.seg);
    let mut out = create_new(dst)?;
    let mut input = &w.file;
    let mut buf = vec![0u8; BATCH * c.seg as usize];
    let mut at = 0u64;
    let mut si = 0u64;
    while si < n {
        let want = ((w.len - at) as usize).min(buf.len());
        let got = read_full(&mut input, &mut buf[..want]).map_err(|e| CoreError::io(&w.path, e))?;
        if got != want {
            return Err(changed());
        }
        // The bytes encrypted must be the bytes whose header was parsed.
        let p = &w.prefix;
        if (at as usize) < p.len() {
            let end = p.len().min(at as usize + got);
            if buf[..end - at as usize] != p[at as usize..end] {
                return Err(changed());
            }
        }
        let chunk = &mut buf[..got];
        let parts: Vec<&mut [u8]> = if got == 0 {
            vec![chunk]
        } else {
            chunk.chunks_mut(c.seg as usize).collect()
        };
        let first = si;
        let sealed = parts
            .into_par_iter()
            .enumerate()
            .map(|(k, seg)| {
                let index = first + k as u64;
                let pos = SegmentPos {
                    file: c.file,
                    index,
                    last: index + 1 == n,
                };
                let tag = seal_segment(c.key, c.digest, pos, seg)
                    .ok_or(CoreError::Crypto("segment seal"))?;
                Ok((tag, c.hash.digest(&[seg])))
            })
            .collect::<Result<Vec<_>, CoreError>>()?;
        si += sealed.len() as u64;
        for (t, h) in sealed {
            tags.push(t);
            hashes.push(h);
        }
        out.write_all(chunk).map_err(|e| CoreError::io(dst, e))?;
        at += got as u64;
    }
    let mut probe = [0u8; 1];
    if read_full(&mut input, &mut probe).map_err(|e| CoreError::io(&w.path, e))? != 0 {
        return Err(changed());
    }
    out.sync_all().map_err(|e| CoreError::io(dst, e))
}

fn copy_plain(src: &Path, dst: &Path) -> Result<(), CoreError> {
    let mut f = open_nofollow(src).map_err(|e| open_error(src, e))?;
    let meta = f.metadata().map_err(|e| CoreError::io(src, e))?;
    if !meta.file_type().is_file() {
        return Err(CoreError::NotRegularFile {
            path: src.to_path_buf(),
        });
    }
    let mut out = create_new(dst)?;
    let n = std::io::copy(&mut f, &mut out).map_err(|e| CoreError::io(dst, e))?;
    if n != meta.len() {
        return Err(CoreError::FileChanged {
            path: src.to_path_buf(),
        });
    }
    out.sync_all().map_err(|e| CoreError::io(dst, e))
}
