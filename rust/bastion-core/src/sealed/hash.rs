//! The hash of ciphertext segments and of the header: BLAKE3 (default) or SHA-256 (FIPS).

use serde::{Deserialize, Serialize};

/// Hash algorithm named in the header's `hash` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashAlg {
    /// BLAKE3-256 (default).
    #[serde(rename = "blake3")]
    Blake3,
    /// SHA-256 (ring).
    #[serde(rename = "sha256")]
    Sha256,
}

impl HashAlg {
    /// The 32-byte hash of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> [u8; 32] {
        match self {
            HashAlg::Blake3 => {
                let mut h = blake3::Hasher::new();
                for p in parts {
                    h.update(p);
                }
                *h.finalize().as_bytes()
            }
            HashAlg::Sha256 => {
                let mut h = ring::digest::Context::new(&ring::digest::SHA256);
                for p in parts {
                    h.update(p);
                }
                let mut out = [0u8; 32];
                out.copy_from_slice(h.finish().as_ref());
                out
            }
        }
    }

    /// Name as written in the header.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Blake3 => "blake3",
            HashAlg::Sha256 => "sha256",
        }
    }
}
