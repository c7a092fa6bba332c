//! Unit tests of the byte-level layouts. Tamper corpus and properties: `tests/sealed_*.rs`.

use super::segment::{aad, covering, n_segments, nonce, segment_bounds};
use super::st::{parse_header, tensor_nbytes};

#[test]
fn nonce_is_counter_then_last_flag() {
    let n = nonce(0x0102_0304_0506_0708, true);
    assert_eq!(n.as_ref(), &[0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 1]);
    assert_eq!(
        nonce(5, false).as_ref(),
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0]
    );
}

#[test]
fn aad_layout() {
    let a = aad(&[7u8; 32], 0x0A0B_0C0D, 0x1122);
    assert_eq!(&a[..32], &[7u8; 32]);
    assert_eq!(&a[32..36], &[0x0A, 0x0B, 0x0C, 0x0D]);
    assert_eq!(&a[36..], &[0, 0, 0, 0, 0, 0, 0x11, 0x22]);
}

#[test]
fn segment_arithmetic() {
    let s = 1 << 16;
    assert_eq!(n_segments(0, s), 1);
    assert_eq!(n_segments(1, s), 1);
    assert_eq!(n_segments(s, s), 1);
    assert_eq!(n_segments(s + 1, s), 2);
    assert_eq!(segment_bounds(1, s + 1, s), (s, s + 1));
    assert_eq!(segment_bounds(0, 0, s), (0, 0));
    assert_eq!(covering(s - 1, s + 1, s), (0, 1));
    assert_eq!(covering(s, 2 * s, s), (1, 1));
}

#[test]
fn safetensors_rules() {
    assert_eq!(tensor_nbytes("F32", &[2, 3]), Some(24));
    assert_eq!(tensor_nbytes("F4", &[3]), None);
    assert_eq!(tensor_nbytes("F4", &[4]), Some(2));
    assert_eq!(tensor_nbytes("F32", &[u64::MAX, 2]), None);
    assert_eq!(tensor_nbytes("X", &[1]), None);
    let ok = br#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}"#;
    let t = parse_header(ok, 8 + ok.len() as u64 + 3).unwrap();
    assert_eq!(
        t["b"].offsets,
        [8 + ok.len() as u64 + 2, 8 + ok.len() as u64 + 3]
    );
    // Gap, overlap, trailing data, duplicate key, extra field.
    let len = |j: &[u8], d: u64| 8 + j.len() as u64 + d;
    let gap = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
    assert!(parse_header(gap, len(gap, 2)).is_err());
    let one = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    assert!(parse_header(one, len(one, 2)).is_err());
    let dup = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    assert!(parse_header(dup, len(dup, 1)).is_err());
    let extra = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}"#;
    assert!(parse_header(extra, len(extra, 1)).is_err());
}
