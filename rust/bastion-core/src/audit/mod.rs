//! The tamper-evident audit log (`docs/audit-log.md`): hash-chained JSON Lines records with
//! Ed25519-signed checkpoints, split into numbered segments.
//!
//! * [`Chain`] seals records: it assigns `seq`, `time` and `prev`, computes [`chain_hash`] and
//!   returns the canonical line. Checkpoints carry a signature by a [`SigningKey`].
//! * [`recover`] finds where an existing log ends (dropping a torn final line) so a writer can
//!   continue the same chain.
//! * [`verify_dir`] / [`verify_segments`] check every record, link and signature.
//!
//! The core writes no records to disk itself: the Python writer owns the file descriptors and the
//! group-commit policy; the core owns every byte of the format.

mod chain;
mod fields;
mod hash;
mod keys;
mod segment;
mod time;
mod verify;

pub use chain::{Chain, Kind, Sealed};
pub use fields::{INT_FIELDS, STR_FIELDS};
pub use hash::{chain_hash, from_hex32, genesis, signed_message};
pub use keys::{keygen, ContentKey, PublicKey, SigningKey};
pub use segment::{list_segments, recover, segment_name, Resume};
pub use time::{is_rfc3339_ms, rfc3339_ms};
pub use verify::{
    verify_dir, verify_dir_from_witness, verify_dir_with_witness, verify_segments,
    verify_segments_with_witness, Problem, VerifyReport, Witness,
};

/// Limits enforced on every record (named in error messages).
pub mod limits {
    /// Longest string value of an event field (bytes).
    pub const MAX_FIELD: usize = 4096;
    /// Longest record line (bytes, newline excluded).
    pub const MAX_LINE: usize = 64 << 10;
    /// Largest segment file the verifier or the recovery will read.
    pub const MAX_SEGMENT_FILE: u64 = 1 << 32;
    /// Most segments in one log directory.
    pub const MAX_SEGMENTS: u32 = 99_999_999;
    /// Largest PKCS#8 signing-key file (bytes).
    pub const MAX_KEY_FILE: u64 = 4096;
}

#[cfg(test)]
mod tests;
