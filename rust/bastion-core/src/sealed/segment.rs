//! Segment arithmetic, nonces, AAD and the per-segment AEAD (detached tags, in place).

use ring::aead::{Aad, LessSafeKey, Nonce, Tag};

/// Bytes of a detached AEAD tag.
pub const TAG_LEN: usize = 16;
/// Bytes of a segment hash.
pub const HASH_LEN: usize = 32;

/// Number of segments of a file of `len` bytes: `max(1, ceil(len / s))` (an empty file still has
/// one, empty, authenticated segment, so truncation to zero is detected).
pub fn n_segments(len: u64, s: u64) -> u64 {
    if len == 0 || s == 0 {
        1
    } else {
        len.div_ceil(s)
    }
}

/// Plaintext range `[start, end)` of segment `i` of a file of `len` bytes.
pub fn segment_bounds(i: u64, len: u64, s: u64) -> (u64, u64) {
    let start = i.saturating_mul(s).min(len);
    (start, start.saturating_add(s).min(len))
}

/// Indices of the segments covering the non-empty plaintext range `[b, e)`: `b/s ..= (e-1)/s`.
pub fn covering(b: u64, e: u64, s: u64) -> (u64, u64) {
    (b / s, e.saturating_sub(1) / s)
}

/// Nonce: 88-bit big-endian segment counter ‖ 1-byte last-segment flag (as in age).
pub fn nonce(segment: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&segment.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// AAD: header digest ‖ u32be file index ‖ u64be segment index.
pub fn aad(header_digest: &[u8; 32], file: u32, segment: u64) -> [u8; 44] {
    let mut a = [0u8; 44];
    a[..32].copy_from_slice(header_digest);
    a[32..36].copy_from_slice(&file.to_be_bytes());
    a[36..].copy_from_slice(&segment.to_be_bytes());
    a
}

/// Where a segment sits: the file's index, the segment's index, whether it is the last one.
#[derive(Debug, Clone, Copy)]
pub struct SegmentPos {
    /// File index.
    pub file: u32,
    /// Segment index within the file.
    pub index: u64,
    /// Last segment of the file.
    pub last: bool,
}

/// Encrypt `buf` in place, returning the detached tag.
pub fn seal_segment(
    key: &LessSafeKey,
    hd: &[u8; 32],
    pos: SegmentPos,
    buf: &mut [u8],
) -> Option<[u8; TAG_LEN]> {
    let a = aad(hd, pos.file, pos.index);
    let tag = key
        .seal_in_place_separate_tag(nonce(pos.index, pos.last), Aad::from(&a[..]), buf)
        .ok()?;
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    Some(out)
}

/// Authenticate and decrypt `buf` in place. On failure `buf` is zeroed (no unauthenticated
/// plaintext is ever left behind) and `false` is returned.
pub fn open_segment(
    key: &LessSafeKey,
    hd: &[u8; 32],
    pos: SegmentPos,
    tag: &[u8; TAG_LEN],
    buf: &mut [u8],
) -> bool {
    let a = aad(hd, pos.file, pos.index);
    let ok = key
        .open_in_place_separate_tag(
            nonce(pos.index, pos.last),
            Aad::from(&a[..]),
            Tag::from(*tag),
            buf,
            0..,
        )
        .is_ok();
    if !ok {
        buf.fill(0);
    }
    ok
}
