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
    let mut out = c
        .seal(Kind::Start, Map::new(), 1_700_000_000_000)
        .unwrap()
        .line;
    for i in 0..n {
        let f = fields(json!({"request_id": format!("r{i}"), "prompt_tokens": i, "status": "OK"}));
        out.extend(
            c.seal(Kind::Request, f, 1_700_000_000_000 + i as u64)
                .unwrap()
                .line,
        );
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
    for bad in [
        json!({"seq": 5}),
        json!({"prompt": "secret"}),
        json!({"latency_ms": "x"}),
        json!({"sig": "00"}),
    ] {
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
    let cut = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
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
    assert!(
        p.reason.starts_with("torn final line: 8 bytes"),
        "{}",
        p.reason
    );
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
    let ok = verify_segments(
        &[(segment_name(0), a.clone()), (segment_name(1), b.clone())],
        &pk,
    );
    assert_eq!(ok.problem, None);
    let c: Vec<u8> = lines[4..].concat();
    let bad = verify_segments(&[(segment_name(0), a), (segment_name(1), c)], &pk);
    let p = bad.problem.unwrap();
    assert_eq!(
        (p.segment.as_str(), p.line, p.seq),
        ("audit-00000001.jsonl", 1, 4)
    );
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
    let (s, p, c) = (
        dir.path().join("s.pk8"),
        dir.path().join("s.pub"),
        dir.path().join("c.key"),
    );
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

#[test]
fn content_mac_is_keyed_per_tenant_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p, c) = (
        dir.path().join("s"),
        dir.path().join("p"),
        dir.path().join("c"),
    );
    keygen(&s, &p, &c).unwrap();
    let k = ContentKey::from_file(&c).unwrap();
    let a = k.mac_for("acme", b"the prompt").unwrap();
    assert!(a.starts_with("hmac-sha256:") && a.len() == 12 + 64, "{a}");
    assert_eq!(a, k.mac_for("acme", b"the prompt").unwrap());
    assert_ne!(a, k.mac_for("globex", b"the prompt").unwrap());
    assert_ne!(a, k.mac_for("acme", b"the prompt.").unwrap());
    assert_ne!(
        a,
        k.mac(b"the prompt"),
        "the tenant key is not the content key itself"
    );
    // The tenant is length-prefixed: moving bytes between tenant and data changes the MAC.
    assert_ne!(
        k.mac_for("ab", b"c").unwrap(),
        k.mac_for("a", b"bc").unwrap()
    );
    // Another content key gives other MACs.
    let (s2, p2, c2) = (
        dir.path().join("s2"),
        dir.path().join("p2"),
        dir.path().join("c2"),
    );
    keygen(&s2, &p2, &c2).unwrap();
    assert_ne!(
        a,
        ContentKey::from_file(&c2)
            .unwrap()
            .mac_for("acme", b"the prompt")
            .unwrap()
    );
}

#[test]
fn field_lists_are_sorted_and_disjoint() {
    for list in [STR_FIELDS, INT_FIELDS] {
        assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
    }
    assert!(STR_FIELDS.iter().all(|f| !INT_FIELDS.contains(f)));
    let mut c = Chain::fresh().unwrap();
    let f = fields(
        json!({"auth_method": "mtls", "decision": "deny", "event": "rate_limited",
        "adapter": "a", "adapter_digest": "blake3:00", "client_request_id": "x", "retention": "30d",
        "records": 3, "streams": 2}),
    );
    c.seal(Kind::Decision, f, 0).unwrap();
}

#[test]
fn seal_json_checks_kind_and_object() {
    let mut c = Chain::fresh().unwrap();
    let s = c.seal_json("start", b"{\"version\":\"1\"}", 0).unwrap();
    assert_eq!(s.seq, 0);
    let e = c.seal_json("checkpoint", b"{}", 0).unwrap_err().to_string();
    assert!(e.contains("kind"), "{e}");
    let e = c.seal_json("request", b"[1]", 0).unwrap_err().to_string();
    assert!(e.contains("fields"), "{e}");
    let e = c
        .seal_json("request", b"{\"a\":1,\"a\":2}", 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fields"), "{e}");
    let e = c
        .seal_json("request", b"{\"prompt\":\"secret\"}", 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown field prompt") && !e.contains("secret"),
        "{e}"
    );
    assert_eq!(c.next_seq(), 1);
}

/// A log of `n` requests with a checkpoint after every 3 records; returns the bytes and the
/// checkpoints' `(seq, hash)`.
fn checkpointed(n: usize, key: &SigningKey) -> (Vec<u8>, Vec<Witness>) {
    let mut c = Chain::fresh().unwrap();
    let mut out = c.seal(Kind::Start, Map::new(), 0).unwrap().line;
    let mut cps = Vec::new();
    for i in 0..n {
        let f = fields(json!({"request_id": format!("r{i}")}));
        out.extend(c.seal(Kind::Request, f, i as u64).unwrap().line);
        if i % 3 == 2 {
            let s = c.checkpoint(key, i as u64).unwrap();
            cps.push(Witness {
                seq: s.seq,
                hash: s.hash,
            });
            out.extend(s.line);
        }
    }
    (out, cps)
}

fn cut_after_lines(bytes: &[u8], n: usize) -> Vec<u8> {
    bytes
        .split_inclusive(|b| *b == b'\n')
        .take(n)
        .collect::<Vec<_>>()
        .concat()
}

#[test]
fn witness_matches_and_detects_truncation_and_rewrite() {
    let (key, _) = SigningKey::generate().unwrap();
    let pk = key.public_key();
    let (bytes, cps) = checkpointed(9, &key);
    let seg = |b: Vec<u8>| vec![(segment_name(0), b)];
    let last = *cps.last().unwrap();
    let ok = verify_segments_with_witness(&seg(bytes.clone()), &pk, Some(last));
    assert_eq!(ok.problem, None);
    assert_eq!(ok.last_checkpoint, Some(last.seq));
    // Records cut back to the second checkpoint: intact on its own, caught by the witness.
    let earlier = cps[1];
    let cut = cut_after_lines(&bytes, earlier.seq as usize + 1);
    assert_eq!(verify_segments(&seg(cut.clone()), &pk).problem, None);
    let p = verify_segments_with_witness(&seg(cut), &pk, Some(last))
        .problem
        .unwrap();
    let want = format!(
        "log truncated: checkpoint seq {} from the witness is missing",
        last.seq
    );
    assert!(p.reason.starts_with(&want), "{}", p.reason);
    assert_eq!((p.seq, p.line), (earlier.seq + 1, earlier.seq + 2));
    // A witness of an earlier checkpoint still matches a longer log.
    assert_eq!(
        verify_segments_with_witness(&seg(bytes.clone()), &pk, Some(earlier)).problem,
        None
    );
    // A different hash at the witnessed seq: rewritten (or another log).
    let bad = Witness {
        seq: last.seq,
        hash: [9u8; 32],
    };
    let p = verify_segments_with_witness(&seg(bytes.clone()), &pk, Some(bad))
        .problem
        .unwrap();
    let want = format!("checkpoint seq {} from the witness differs", last.seq);
    assert!(p.reason.contains(&want), "{}", p.reason);
    // The witnessed seq holds a request record, not a checkpoint.
    let not_cp = Witness {
        seq: 1,
        hash: last.hash,
    };
    let p = verify_segments_with_witness(&seg(bytes.clone()), &pk, Some(not_cp))
        .problem
        .unwrap();
    assert_eq!(p.seq, 1);
    assert!(p.reason.contains("differs"), "{}", p.reason);
    // The same through the directory verifier.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(segment_name(0)), cut_after_lines(&bytes, 3)).unwrap();
    let r = verify_dir_with_witness(dir.path(), &pk, Some(last)).unwrap();
    assert!(r.problem.unwrap().reason.starts_with("log truncated"));
    assert_eq!(
        verify_dir_with_witness(dir.path(), &pk, None)
            .unwrap()
            .problem,
        None
    );
}
