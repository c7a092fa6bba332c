//! The chain hash, the genesis value and the checkpoint signing message.

/// BLAKE3 `derive_key` context of record hashes.
const RECORD_CONTEXT: &str = "bastion.audit.v1 2025 record chain hash";
/// BLAKE3 `derive_key` context of the genesis `prev`.
const GENESIS_CONTEXT: &str = "bastion.audit.v1 2025 genesis";
/// Domain prefix of the checkpoint signature message.
const SIGN_DOMAIN: &[u8] = b"bastion.audit.v1.checkpoint\0";

/// The hash of one record: BLAKE3-derive_key(RECORD_CONTEXT) over `prev` (32 raw bytes) followed by
/// the canonical JSON of the record without its `hash` and `sig` fields.
pub fn chain_hash(prev: &[u8; 32], canonical_body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(RECORD_CONTEXT);
    h.update(prev);
    h.update(canonical_body);
    *h.finalize().as_bytes()
}

/// The `prev` of record 0: BLAKE3-derive_key(GENESIS_CONTEXT) over the log id's bytes.
pub fn genesis(log_id: &str) -> [u8; 32] {
    blake3::derive_key(GENESIS_CONTEXT, log_id.as_bytes())
}

/// What a checkpoint signs: domain ‖ u8 len(log id) ‖ log id ‖ u64be seq ‖ hash (32 raw bytes).
pub fn signed_message(log_id: &str, seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let id = log_id.as_bytes();
    let mut m = Vec::with_capacity(SIGN_DOMAIN.len() + 1 + id.len() + 8 + 32);
    m.extend_from_slice(SIGN_DOMAIN);
    // Log ids are 32 hex digits (checked by the verifier), so the length fits a byte.
    m.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(id);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// Lowercase hex of any bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(D[usize::from(b >> 4)]));
        s.push(char::from(D[usize::from(b & 15)]));
    }
    s
}

/// Decode lowercase hex into `out`; `false` on any other length or character.
pub(crate) fn from_hex(s: &str, out: &mut [u8]) -> bool {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return false;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        match (nib(b[2 * i]), nib(b[2 * i + 1])) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

/// Decode 64 lowercase hex digits.
pub fn from_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    from_hex(s, &mut out).then_some(out)
}
