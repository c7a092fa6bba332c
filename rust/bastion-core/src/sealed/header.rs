//! The JSON header of `weights.ctxh`: typed fields, canonical encoding, validation and the
//! rekey-stable header digest.

use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::hash::HashAlg;
use super::json;
use super::limits::*;
use super::segment::n_segments;
use super::st;
use super::AeadAlg;

/// Value of the `format` field.
pub const FORMAT_NAME: &str = "bastion.sealed";
/// Domain separation prefix of the header digest.
const DIGEST_DOMAIN: &[u8] = b"bastion.sealed.v1.header-digest\0";
/// Context entry that binds the wrapped DEK to this header's digest.
pub const CTX_HEADER_DIGEST: &str = "bastion.header_digest";
/// Context entry naming the format version.
pub const CTX_FORMAT: &str = "bastion.format";
/// Value of [`CTX_FORMAT`].
pub const CTX_FORMAT_VALUE: &str = "sealed.v1";

/// The decoded header. Field order here is irrelevant: the encoding is canonical (sorted keys).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Format version; equals the binary version field.
    pub version: u32,
    /// Segment AEAD.
    pub aead: AeadAlg,
    /// Plaintext (= ciphertext) bytes per segment; a power of two.
    pub segment_size: u64,
    /// Hash of ciphertext segments and of the header.
    pub hash: HashAlg,
    /// HKDF salt, base64 of 32 bytes.
    pub salt: String,
    /// How the DEK is wrapped (excluded from the header digest).
    pub key: KeyBlock,
    /// Key commitment, base64 of HMAC-SHA256 (excluded from the header digest).
    pub commitment: String,
    /// Data files, in index order.
    pub files: Vec<FileEntry>,
    /// Tensor index (safetensors-compatible), offsets in plaintext space of `files[file]`.
    pub tensors: BTreeMap<String, TensorEntry>,
    /// Optional provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// The key block: who wraps the DEK, and the wrapped DEK.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyBlock {
    /// Key provider (`file` is implemented in the core; others are external).
    pub provider: String,
    /// Provider-specific key id (for `file`: a keyed fingerprint of the KEK).
    pub key_id: String,
    /// Base64 of the wrapped DEK (for `file`: nonce ‖ ciphertext ‖ tag).
    pub wrapped_dek: String,
    /// Wrapping context (AAD / KMS encryption context). Always holds [`CTX_FORMAT`] and
    /// [`CTX_HEADER_DIGEST`].
    pub context: BTreeMap<String, String>,
}

/// One data file `weights-NNNNN.ctxd`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// `weights-{index+1:05}.ctxd`.
    pub name: String,
    /// The safetensors file it was sealed from (a plain file name).
    pub source_name: String,
    /// Plaintext length = ciphertext length.
    pub plaintext_len: u64,
    /// Number of segments (`max(1, ceil(len / segment_size))`).
    pub segments: u64,
}

/// One tensor of the index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    /// safetensors dtype name (`F32`, `BF16`, …).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Index into `files`.
    pub file: u32,
    /// `[begin, end)` in the plaintext of the file (including the original safetensors header).
    pub data_offsets: [u64; 2],
}

/// Optional provenance of the sealed model.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// Where the model came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_uri: Option<String>,
    /// Upstream revision (commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Upstream OMS digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_digest: Option<String>,
    /// Upstream signer identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_signer: Option<String>,
}

/// Data file name of index `i`.
pub fn data_file_name(i: usize) -> String {
    format!("weights-{:05}.ctxd", i + 1)
}

/// Decode standard base64 (padded, canonical trailing bits).
pub fn b64d(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

/// Encode standard base64.
pub fn b64e(b: &[u8]) -> String {
    B64.encode(b)
}

impl Header {
    /// The canonical bytes of the whole header.
    pub fn to_canonical(&self) -> Result<Vec<u8>, String> {
        json::canonical(&serde_json::to_value(self).map_err(|e| e.to_string())?)
    }

    /// Parse canonical header bytes: strict JSON, known fields only, exactly the canonical
    /// encoding (so one header has one byte string), then [`Header::validate`].
    pub fn parse(bytes: &[u8]) -> Result<Header, String> {
        let v = json::parse_strict(bytes).map_err(|e| format!("header JSON: {e}"))?;
        let h: Header = serde_json::from_value(v).map_err(|e| format!("header field: {e}"))?;
        if h.to_canonical()? != bytes {
            return Err("header JSON is not in canonical form".into());
        }
        h.validate()?;
        Ok(h)
    }

    /// The header digest: `H(domain ‖ canonical(header without "key" and "commitment"))`.
    ///
    /// Excluding the key block and the commitment keeps it stable across rekeying; the key block
    /// is authenticated by the wrap (its AAD is the canonical key block without `wrapped_dek`,
    /// whose context holds this digest), the commitment by recomputing it.
    pub fn digest(&self) -> Result<[u8; 32], String> {
        let mut v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let Value::Object(m) = &mut v {
            m.remove("key");
            m.remove("commitment");
        }
        let body = json::canonical(&v)?;
        Ok(self.hash.digest(&[DIGEST_DOMAIN, &body]))
    }

    /// Total number of segments over all files.
    pub fn total_segments(&self) -> u64 {
        self.files.iter().map(|f| f.segments).sum()
    }

    /// The 32-byte salt (validated).
    pub fn salt_bytes(&self) -> Result<[u8; 32], String> {
        b64d(&self.salt)
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| "salt: must be base64 of 32 bytes".into())
    }

    /// Check every field against the limits in [`super::limits`].
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT_NAME || self.version != FORMAT_VERSION {
            return Err("format/version: unsupported".into());
        }
        let s = self.segment_size;
        if !s.is_power_of_two() || !(MIN_SEGMENT..=MAX_SEGMENT).contains(&s) {
            return Err(format!(
                "segment_size: must be a power of two in [{MIN_SEGMENT}, {MAX_SEGMENT}]"
            ));
        }
        self.salt_bytes()?;
        let commit = b64d(&self.commitment).map(|c| c.len());
        if commit != Some(32) {
            return Err("commitment: must be base64 of 32 bytes".into());
        }
        self.validate_key()?;
        self.validate_files()?;
        self.validate_tensors()?;
        if let Some(o) = &self.origin {
            for x in [
                &o.source_uri,
                &o.revision,
                &o.upstream_digest,
                &o.upstream_signer,
            ]
            .into_iter()
            .flatten()
            {
                if x.len() > MAX_TEXT {
                    return Err(format!("origin: strings are limited to {MAX_TEXT} bytes"));
                }
            }
        }
        Ok(())
    }

    fn validate_key(&self) -> Result<(), String> {
        let k = &self.key;
        if k.provider.is_empty() || k.provider.len() > MAX_NAME || k.key_id.len() > MAX_TEXT {
            return Err(format!(
                "key.provider/key_id: 1..{MAX_NAME} / ..{MAX_TEXT} bytes"
            ));
        }
        match b64d(&k.wrapped_dek) {
            Some(w) if !w.is_empty() && w.len() <= MAX_WRAPPED => {}
            _ => return Err(format!("key.wrapped_dek: base64 of 1..{MAX_WRAPPED} bytes")),
        }
        if k.context.len() > MAX_CONTEXT
            || k.context
                .iter()
                .any(|(a, b)| a.len() > MAX_TEXT || b.len() > MAX_TEXT)
        {
            return Err(format!(
                "key.context: at most {MAX_CONTEXT} entries of {MAX_TEXT} bytes"
            ));
        }
        if k.context.get(CTX_FORMAT).map(String::as_str) != Some(CTX_FORMAT_VALUE)
            || !k.context.contains_key(CTX_HEADER_DIGEST)
        {
            return Err("key.context: bastion.format / bastion.header_digest missing".into());
        }
        Ok(())
    }

    fn validate_files(&self) -> Result<(), String> {
        if self.files.is_empty() || self.files.len() > MAX_FILES {
            return Err(format!("files: 1..{MAX_FILES} entries"));
        }
        let mut sources = BTreeSet::new();
        let mut total: u64 = 0;
        for (i, f) in self.files.iter().enumerate() {
            if f.name != data_file_name(i) {
                return Err(format!("files[{i}].name: must be {}", data_file_name(i)));
            }
            if !st::is_plain_name(&f.source_name)
                || !f.source_name.ends_with(".safetensors")
                || !sources.insert(f.source_name.as_str())
            {
                return Err(format!(
                    "files[{i}].source_name: unique plain *.safetensors name"
                ));
            }
            if f.plaintext_len > MAX_FILE_LEN {
                return Err(format!("files[{i}].plaintext_len: at most {MAX_FILE_LEN}"));
            }
            if f.segments != n_segments(f.plaintext_len, self.segment_size) {
                return Err(format!(
                    "files[{i}].segments: inconsistent with plaintext_len"
                ));
            }
            total = total.saturating_add(f.segments);
        }
        if total > MAX_SEGMENTS {
            return Err(format!("files: at most {MAX_SEGMENTS} segments in all"));
        }
        Ok(())
    }

    fn validate_tensors(&self) -> Result<(), String> {
        if self.tensors.len() > MAX_TENSORS {
            return Err(format!("tensors: at most {MAX_TENSORS} entries"));
        }
        for (name, t) in &self.tensors {
            if name.is_empty() || name.len() > MAX_TEXT {
                return Err(format!("tensors: names are 1..{MAX_TEXT} bytes"));
            }
            let file = self
                .files
                .get(t.file as usize)
                .ok_or_else(|| "tensors[].file: out of range".to_string())?;
            let [b, e] = t.data_offsets;
            if b > e || e > file.plaintext_len {
                return Err("tensors[].data_offsets: outside the file".into());
            }
            if st::tensor_nbytes(&t.dtype, &t.shape) != Some(e - b) {
                return Err("tensors[]: dtype/shape inconsistent with data_offsets".into());
            }
        }
        Ok(())
    }
}
