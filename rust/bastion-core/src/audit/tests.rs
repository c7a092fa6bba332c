#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Map, Value};

use super::*;

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("object expected"),
    }
}

fn log(n: usize, key: &SigningKey) -> Vec<u8> {
    let mut c = Chain::fresh().unwrap();
    let mut out = c.seal(Kind::Start, Map::new(), 1_700_000_000_000).unwrap().line;
    for i in 0..n {
        let f = fields(json!({"request_id": format!("r{i}"), "prompt_tokens": i, "status": "OK"}));
        out.extend(c.seal(Kind::Request, f, 1_700_000_000_000 + i as u64).unwrap().line);
    }
    out.extend(c.checkpoint(key, 1_700_000_001_000).unwrap().line);
    out
}

fn verify(bytes: &[u8], key: &SigningKey) -> VerifyReport {
    verify_segments(&[(segment_name(0), bytes.to_vec())], &key.public_key())
}

#[test]
fn time_format() {
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(rfc3339_ms(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
    assert!(is_rfc3339_ms("2024-12-31T23:59:59.999Z"));
    assert!(!is_rfc3339_ms("2024-13-31T23:59:59.999Z"));
    assert!(!is_rfc3339_ms("2024-12-31 23:59:59.999Z"));
}

#[test]
fn hex_roundtrip_and_genesis_differs_per_log() {
    let h = chain_hash(&[7u8; 32], b"{}");
    assert_eq!(from_hex32(&super::hash::hex(&h)), Some(h));
    assert_eq!(from_hex32(&super::hash::hex(&h).to_uppercase()), None);
    assert_ne!(genesis("a"), genesis("b"));
    assert_ne!(chain_hash(&[0u8; 32], b"x"), chain_hash(&[1u8; 32], b"x"));
}

#[test]
fn intact_log_verifies() {
    let (key, _) = SigningKey::generate().unwrap();
    let r = verify(&log(10, &key), &key);
    assert_eq!(r.problem, None);
    assert_eq!(r.records, 12);
    assert_eq!(r.last_checkpoint, Some(11));
    assert_eq!(r.unsigned_tail, 0);
}

#[test]
fn records_are_canonical_and_contentless() {
    let (key, _) = SigningKey::generate().unwrap();
    let text = String::from_utf8(log(2, &key)).unwrap();
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("{\"hash\":\""), "{first}");
    assert!(!first.contains(' '));
}

#[test]
fn caller_cannot_set_reserved_or_unknown_fields() {
    let mut c = Chain::fresh().unwrap();
    for bad in [json!({"seq": 5}), json!({"prompt": "secret"}), json!({"latency_ms": "x"}), json!({"sig": "00"})] {
        let e = c.seal(Kind::Request, fields(bad), 0).unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }
    assert!(c.seal(Kind::Checkpoint, Map::new(), 0).is_err());
    assert_eq!(c.next_seq(), 0);
}

#[test]
fn wrong_key_and_unsigned_tail() {
    let (key, _) = SigningKey::generate().unwrap();
    let (other, _) = SigningKey::generate().unwrap();
    let bytes = log(3, &key);
    let r = verify(&bytes, &other);
    assert!(r.problem.unwrap().reason.contains("another key"));
    // Drop the checkpoint: the chain is intact but the tail is unsigned.
    let cut = bytes[..bytes.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let r = verify(&bytes[..cut], &key);
    assert_eq!(r.problem, None);
    assert_eq!((r.last_checkpoint, r.unsigned_tail), (None, 4));
}

#[test]
fn torn_final_line_reported() {
    let (key, _) = SigningKey::generate().unwrap();
    let mut bytes = log(3, &key);
    bytes.extend_from_slice(b"{\"hash\":");
    let p = verify(&bytes, &key).problem.unwrap();
    assert!(p.reason.starts_with("torn final line: 8 bytes"), "{}", p.reason);
    assert_eq!((p.line, p.seq), (6, 5));
}

#[test]
fn segments_link_and_missing_segment_detected() {
    let (key, _) = SigningKey::generate().unwrap();
    let bytes = log(5, &key);
    let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    let a: Vec<u8> = lines[..3].concat();
    let b: Vec<u8> = lines[3..].concat();
    let pk = key.public_key();
    let ok = verify_segments(&[(segment_name(0), a.clone()), (segment_name(1), b.clone())], &pk);
    assert_eq!(ok.problem, None);
    let c: Vec<u8> = lines[4..].concat();
    let bad = verify_segments(&[(segment_name(0), a), (segment_name(1), c)], &pk);
    let p = bad.problem.unwrap();
    assert_eq!((p.segment.as_str(), p.line, p.seq), ("audit-00000001.jsonl", 1, 4));
    assert!(p.reason.contains("missing"), "{}", p.reason);
}

#[test]
fn dir_recover_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    let fresh = recover(dir.path()).unwrap();
    assert!(fresh.fresh);
    let mut bytes = log(4, &key);
    bytes.extend_from_slice(b"{\"partial");
    let path = dir.path().join(segment_name(0));
    std::fs::write(&path, &bytes).unwrap();
    let r = recover(dir.path()).unwrap();
    assert_eq!((r.fresh, r.truncated, r.chain.next_seq()), (false, 9, 6));
    assert_eq!(r.segment_len, (bytes.len() - 9) as u64);
    let v = verify_dir(dir.path(), &key.public_key()).unwrap();
    assert_eq!(v.problem, None);
    assert_eq!(v.last.map(|l| l.0), Some(5));
}

#[test]
fn key_files() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p, c) = (dir.path().join("s.pk8"), dir.path().join("s.pub"), dir.path().join("c.key"));
    let id = keygen(&s, &p, &c).unwrap();
    let sk = SigningKey::from_file(&s).unwrap();
    let pk = PublicKey::from_file(&p).unwrap();
    assert_eq!(sk.public_key(), pk);
    assert_eq!(pk.key_id(), id);
    let ck = ContentKey::from_file(&c).unwrap();
    assert!(ck.mac(b"hello").starts_with("hmac-sha256:"));
    assert!(keygen(&s, &p, &c).is_err(), "keygen must not overwrite");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SigningKey::from_file(&s).is_err());
    }
}
