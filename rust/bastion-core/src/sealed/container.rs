//! The binary layout of `weights.ctxh`:
//! `"BSTNCTXH" ‖ u32le version ‖ u64le json_len ‖ json ‖ tags[N][16] ‖ hashes[N][32]`,
//! N = total segments, tables in file order then segment order.

use std::io::Read;
use std::path::Path;

use super::header::Header;
use super::io::{open_error, open_nofollow};
use super::limits::{FORMAT_VERSION, MAX_HEADER};
use super::segment::{HASH_LEN, TAG_LEN};
use crate::CoreError;

/// File name of the header.
pub const CTXH_NAME: &str = "weights.ctxh";
/// Magic bytes.
pub const MAGIC: &[u8; 8] = b"BSTNCTXH";
const PREFIX: u64 = 8 + 4 + 8;

/// A decoded `weights.ctxh`.
#[derive(Debug, Clone)]
pub struct Container {
    /// The validated header.
    pub header: Header,
    /// Detached AEAD tags, one per segment (global order).
    pub tags: Vec<[u8; TAG_LEN]>,
    /// Ciphertext hashes, one per segment (global order).
    pub hashes: Vec<[u8; HASH_LEN]>,
}

impl Container {
    /// Encode (the header is re-encoded canonically).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let json = self.header.to_canonical()?;
        let mut out = Vec::with_capacity(json.len() + 64 + self.tags.len() * (TAG_LEN + HASH_LEN));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for t in &self.tags {
            out.extend_from_slice(t);
        }
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        Ok(out)
    }
}

/// Decode and validate container bytes; errors are [`CoreError::Format`] naming `path`.
pub fn decode_container(path: &Path, bytes: &[u8]) -> Result<Container, CoreError> {
    let fmt = |reason: String| CoreError::Format {
        path: path.to_path_buf(),
        segment: None,
        reason,
    };
    if (bytes.len() as u64) < PREFIX || &bytes[..8] != MAGIC {
        return Err(fmt("bad magic or short prefix".into()));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[8..12]);
    if u32::from_le_bytes(v) != FORMAT_VERSION {
        return Err(fmt(format!("version: only {FORMAT_VERSION} is supported")));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&bytes[12..20]);
    let json_len = u64::from_le_bytes(l);
    if json_len > MAX_HEADER || json_len > bytes.len() as u64 - PREFIX {
        return Err(fmt(format!(
            "header length: at most {MAX_HEADER} and within the file"
        )));
    }
    let json_end = (PREFIX + json_len) as usize;
    let header = Header::parse(&bytes[PREFIX as usize..json_end]).map_err(fmt)?;
    let n = header.total_segments();
    let tables = &bytes[json_end..];
    let want = n.checked_mul((TAG_LEN + HASH_LEN) as u64);
    if want != Some(tables.len() as u64) {
        return Err(fmt(format!(
            "tag/hash tables: need {n} entries, found a different size"
        )));
    }
    let (t, h) = tables.split_at(n as usize * TAG_LEN);
    let tags = t
        .chunks_exact(TAG_LEN)
        .map(|c| <[u8; TAG_LEN]>::try_from(c).unwrap_or_default())
        .collect();
    let hashes = h
        .chunks_exact(HASH_LEN)
        .map(|c| <[u8; HASH_LEN]>::try_from(c).unwrap_or_default())
        .collect();
    Ok(Container {
        header,
        tags,
        hashes,
    })
}

/// Read and decode `dir/weights.ctxh` (no symlinks; the whole file is bounded by
/// `MAX_HEADER` plus the tables its header declares).
pub fn read_container(dir: &Path) -> Result<Container, CoreError> {
    read_container_bytes(dir).map(|(c, _)| c)
}

/// [`read_container`], also returning the exact file bytes that were decoded (so a signature
/// over the file can be checked against the bytes in use, with no second read).
pub fn read_container_bytes(dir: &Path) -> Result<(Container, Vec<u8>), CoreError> {
    let path = dir.join(CTXH_NAME);
    let mut f = open_nofollow(&path).map_err(|e| open_error(&path, e))?;
    let meta = f.metadata().map_err(|e| CoreError::io(&path, e))?;
    if !meta.file_type().is_file() {
        return Err(CoreError::NotRegularFile { path });
    }
    // Read the prefix and header first, so a huge file is refused before its tables are read.
    let mut prefix = [0u8; PREFIX as usize];
    f.read_exact(&mut prefix).map_err(|_| CoreError::Format {
        path: path.clone(),
        segment: None,
        reason: "short prefix".into(),
    })?;
    let mut l = [0u8; 8];
    l.copy_from_slice(&prefix[12..20]);
    let json_len = u64::from_le_bytes(l);
    if json_len > MAX_HEADER || json_len > meta.len().saturating_sub(PREFIX) {
        return Err(CoreError::Format {
            path,
            segment: None,
            reason: "header length exceeds limits".into(),
        });
    }
    let mut bytes = prefix.to_vec();
    bytes.resize((PREFIX + json_len) as usize, 0);
    f.read_exact(&mut bytes[PREFIX as usize..])
        .map_err(|e| CoreError::io(&path, e))?;
    // The header fixes the table size: refuse a file of any other size before reading the tables.
    let expected = Header::parse(&bytes[PREFIX as usize..])
        .ok()
        .and_then(|h| h.total_segments().checked_mul((TAG_LEN + HASH_LEN) as u64))
        .and_then(|t| t.checked_add(PREFIX + json_len));
    if let Some(want) = expected {
        if want != meta.len() {
            return Err(CoreError::Format {
                path,
                segment: None,
                reason: "tag/hash tables: file size does not match the header".into(),
            });
        }
        f.read_to_end(&mut bytes)
            .map_err(|e| CoreError::io(&path, e))?;
    }
    let c = decode_container(&path, &bytes)?;
    Ok((c, bytes))
}
