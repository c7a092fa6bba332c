//! The sealed model format (`docs/sealed-format.md`): encrypted, integrity-checked safetensors
//! weights with random access per tensor.
//!
//! A sealed directory holds `weights.ctxh` (magic, version, canonical JSON header, tag table,
//! hash table), `weights-NNNNN.ctxd` data files (ciphertext only, ciphertext offset = plaintext
//! offset) and the model's plaintext config/tokenizer files, copied verbatim.
//!
//! * [`seal_dir`] writes one; [`rekey`] rewraps its DEK under another KEK without touching
//!   ciphertext; [`inspect`] shows the header without secrets.
//! * [`SealedDir`] opens and validates one without a key ([`SealedDir::verify_ciphertext`]).
//! * [`SealedReader`] unwraps the DEK, checks the key commitment and returns plaintext ranges,
//!   each segment hash-checked against the table before it is decrypted.

mod build;
mod container;
mod hash;
mod header;
mod io;
pub mod json;
mod keys;
mod reader;
mod rekey;
pub mod segment;
mod source;
mod st;
mod verify;
mod writer;

use serde::{Deserialize, Serialize};

pub use container::{decode_container, Container, CTXH_NAME, MAGIC};
pub use hash::HashAlg;
pub use header::{data_file_name, FileEntry, Header, KeyBlock, Origin, TensorEntry};
pub use keys::{Dek, KeyEncryptionKey, KeyWrapper};
pub use reader::{SealedDir, SealedReader};
pub use rekey::{inspect, rekey, rekey_with};
pub use st::{dtype_bits, parse_header as parse_safetensors_header, tensor_nbytes};
pub use verify::VerifyReport;
pub use writer::{seal_dir, SealOptions, SealReport};
pub use writer::{seal_dir_with, seal_dir_with_kek};

/// Limits enforced on every header (named in error messages).
pub mod limits {
    /// Binary and JSON format version.
    pub const FORMAT_VERSION: u32 = 1;
    /// Largest header JSON (bytes).
    pub const MAX_HEADER: u64 = 16 << 20;
    /// Largest source safetensors header JSON (bytes).
    pub const MAX_SAFETENSORS_HEADER: usize = 16 << 20;
    /// Smallest segment size.
    pub const MIN_SEGMENT: u64 = 64 << 10;
    /// Largest segment size.
    pub const MAX_SEGMENT: u64 = 64 << 20;
    /// Default segment size.
    pub const DEFAULT_SEGMENT: u64 = 1 << 20;
    /// Most data files.
    pub const MAX_FILES: usize = 99_999;
    /// Largest data file (1 PiB).
    pub const MAX_FILE_LEN: u64 = 1 << 50;
    /// Most segments over all files.
    pub const MAX_SEGMENTS: u64 = 1 << 26;
    /// Most tensors.
    pub const MAX_TENSORS: usize = 1 << 20;
    /// Longest free-text field (names, ids, context entries, origin).
    pub const MAX_TEXT: usize = 4096;
    /// Longest provider name.
    pub const MAX_NAME: usize = 64;
    /// Most context entries.
    pub const MAX_CONTEXT: usize = 64;
    /// Largest wrapped DEK (bytes, decoded).
    pub const MAX_WRAPPED: usize = 8192;
}

/// Segment AEAD named in the header's `aead` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AeadAlg {
    /// AES-256-GCM (default).
    #[default]
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// ChaCha20-Poly1305 (CPUs without AES-NI).
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl AeadAlg {
    pub(crate) fn ring(self) -> &'static ring::aead::Algorithm {
        match self {
            AeadAlg::Aes256Gcm => &ring::aead::AES_256_GCM,
            AeadAlg::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
        }
    }

    /// Name as written in the header.
    pub fn name(self) -> &'static str {
        match self {
            AeadAlg::Aes256Gcm => "aes-256-gcm",
            AeadAlg::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// Parse a header name.
    pub fn from_name(s: &str) -> Option<AeadAlg> {
        match s {
            "aes-256-gcm" => Some(AeadAlg::Aes256Gcm),
            "chacha20-poly1305" => Some(AeadAlg::ChaCha20Poly1305),
            _ => None,
        }
    }
}

impl HashAlg {
    /// Parse a header name.
    pub fn from_name(s: &str) -> Option<HashAlg> {
        match s {
            "blake3" => Some(HashAlg::Blake3),
            "sha256" => Some(HashAlg::Sha256),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
