//! The verifier: every record's form and hash, the chain's seq and `prev` links across segments,
//! and every checkpoint's signature. Records are checked in parallel; links in order.

use std::path::Path;

use rayon::prelude::*;
use serde_json::Value;

use super::chain::Kind;
use super::fields::check_event;
use super::hash::{chain_hash, from_hex, from_hex32, genesis, hex, signed_message};
use super::keys::PublicKey;
use super::limits::MAX_LINE;
use super::segment::{list_segments, read_segment, segment_name};
use super::time::is_rfc3339_ms;
use crate::sealed::json::{canonical, parse_strict};
use crate::CoreError;

/// The first thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The segment file concerned.
    pub segment: String,
    /// Line number within it (1-based; 0 when the whole segment is concerned).
    pub line: u64,
    /// The seq of the first bad record (as written if readable, else the seq expected there).
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// What the verifier found. The log is intact when `problem` is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files checked, in order.
    pub segments: Vec<String>,
    /// Records that verified (before the first problem).
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// The log id (from record 0).
    pub log_id: Option<String>,
    /// The last good record's seq and hash.
    pub last: Option<(u64, String)>,
    /// The seq of the last verified checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Good records after the last checkpoint (chain intact, not yet signed).
    pub unsigned_tail: u64,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

/// The latest checkpoint as known from outside the log (the writer's witness file, kept on other
/// storage). The verifier alone cannot see records cut off after the last checkpoint; given a
/// witness it requires the log to hold that very checkpoint, so truncation back past it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Witness {
    /// The checkpoint's seq.
    pub seq: u64,
    /// Its `hash`.
    pub hash: [u8; 32],
}

/// One record checked on its own (form, schema and own hash).
struct Rec {
    seq: u64,
    kind: Kind,
    prev: [u8; 32],
    hash: [u8; 32],
    log_id: Option<String>,
    key_id: Option<String>,
    sig: Option<[u8; 64]>,
}

fn str_field(m: &serde_json::Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// Check one line (newline excluded) on its own.
fn check_line(line: &[u8]) -> Result<Rec, String> {
    const MALFORMED: &str = "record is not canonical JSON of the audit schema (modified?)";
    if line.len() > MAX_LINE {
        return Err(format!("record longer than {MAX_LINE} bytes"));
    }
    let v = parse_strict(line).map_err(|_| MALFORMED.to_owned())?;
    if canonical(&v).ok().as_deref() != Some(line) {
        return Err(MALFORMED.into());
    }
    let Value::Object(mut m) = v else {
        return Err(MALFORMED.into());
    };
    let hash = m
        .remove("hash")
        .and_then(|h| h.as_str().and_then(from_hex32));
    let sig = match m.remove("sig") {
        None => None,
        Some(s) => {
            let mut b = [0u8; 64];
            let ok = s.as_str().is_some_and(|s| from_hex(s, &mut b));
            Some(if ok { Some(b) } else { None })
        }
    };
    let seq = m.get("seq").and_then(Value::as_u64);
    let kind = m
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::from_name);
    let prev = m.get("prev").and_then(Value::as_str).and_then(from_hex32);
    let time_ok = m
        .get("time")
        .and_then(Value::as_str)
        .is_some_and(is_rfc3339_ms);
    let (Some(hash), Some(seq), Some(kind), Some(prev), true) = (hash, seq, kind, prev, time_ok)
    else {
        return Err(MALFORMED.into());
    };
    check_event(&m).map_err(|e| format!("record breaks the schema: {e}"))?;
    let log_id = str_field(&m, "log_id");
    let key_id = str_field(&m, "key_id");
    let sig = match (kind, sig) {
        (Kind::Checkpoint, None) => return Err("checkpoint without a signature".into()),
        (Kind::Checkpoint, Some(None)) => return Err("checkpoint signature is malformed".into()),
        (Kind::Checkpoint, Some(Some(s))) => Some(s),
        (_, Some(_)) => return Err(MALFORMED.into()),
        (_, None) => None,
    };
    let body = canonical(&Value::Object(m)).map_err(|_| MALFORMED.to_owned())?;
    if chain_hash(&prev, &body) != hash {
        return Err("hash does not match the record (record modified)".into());
    }
    Ok(Rec {
        seq,
        kind,
        prev,
        hash,
        log_id,
        key_id,
        sig,
    })
}

/// The complete lines of `bytes` and the length of a torn final line (bytes after the last `\n`).
pub(crate) fn split_lines(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            lines.push(&bytes[start..i]);
            start = i + 1;
        }
    }
    (lines, bytes.len() - start)
}

/// Check one line on its own, as the writer's recovery does: `(seq, hash, log id)`.
pub(crate) fn check_single(line: &[u8]) -> Result<(u64, [u8; 32], Kind, Option<String>), String> {
    check_line(line).map(|r| (r.seq, r.hash, r.kind, r.log_id))
}

fn valid_log_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The verifier's state across segments.
struct Walk<'k> {
    key: &'k PublicKey,
    key_id: String,
    report: VerifyReport,
    witness: Option<Witness>,
    witness_seen: bool,
    /// Complete lines in the last segment walked.
    lines_in_last: u64,
}

impl<'k> Walk<'k> {
    fn new(key: &'k PublicKey, witness: Option<Witness>) -> Self {
        Walk {
            key,
            key_id: key.key_id(),
            report: VerifyReport::default(),
            witness,
            witness_seen: false,
            lines_in_last: 0,
        }
    }

    /// A walk that starts mid-log, at a record whose `prev` is taken as given (the records before it
    /// were verified when they were written over, or by a full verification).
    fn anchored(
        key: &'k PublicKey,
        witness: Option<Witness>,
        log_id: String,
        seq: u64,
        prev: [u8; 32],
    ) -> Self {
        let mut w = Walk::new(key, witness);
        if let Some(before) = seq.checked_sub(1) {
            w.report.log_id = Some(log_id);
            w.report.last = Some((before, hex(&prev)));
        }
        w
    }

    /// The record at the witness's seq must be the witnessed checkpoint.
    fn check_witness(&mut self, r: &Rec) -> Result<(), String> {
        let Some(w) = self.witness.filter(|w| w.seq == r.seq) else {
            return Ok(());
        };
        if r.kind != Kind::Checkpoint || r.hash != w.hash {
            return Err(format!(
                "checkpoint seq {} from the witness differs \
                 (log rewritten, or the witness is of another log)",
                w.seq
            ));
        }
        self.witness_seen = true;
        Ok(())
    }

    /// After the last segment: the witnessed checkpoint must have been seen.
    fn finish(&mut self) {
        let (Some(w), None, false) = (self.witness, &self.report.problem, self.witness_seen) else {
            return;
        };
        let segment = self
            .report
            .segments
            .last()
            .cloned()
            .unwrap_or_else(|| segment_name(0));
        let want = self.expected();
        let line = self.lines_in_last + 1;
        self.fail(
            &segment,
            line,
            want,
            format!("log truncated: checkpoint seq {} from the witness is missing (records end before it)", w.seq),
        );
    }

    fn fail(&mut self, segment: &str, line: u64, seq: u64, reason: impl Into<String>) {
        self.report.problem = Some(Problem {
            segment: segment.to_owned(),
            line,
            seq,
            reason: reason.into(),
        });
    }

    fn expected(&self) -> u64 {
        self.report.last.as_ref().map_or(0, |(s, _)| s + 1)
    }

    /// Link and sign checks of one record; `Err` is the reason.
    fn link(
        &mut self,
        r: &Rec,
        first_in_segment: bool,
        prev_seg: Option<&str>,
    ) -> Result<(), String> {
        let want = self.expected();
        if r.seq > want {
            return Err(format!(
                "seq {} where {want} was expected: records missing (deleted)",
                r.seq
            ));
        }
        if r.seq < want {
            return Err(format!(
                "seq {} where {want} was expected: record duplicated, inserted or reordered",
                r.seq
            ));
        }
        let expected_prev = match (&self.report.log_id, &self.report.last) {
            (_, Some((_, h))) => from_hex32(h),
            (None, None) => {
                let id = match (r.kind, &r.log_id) {
                    (Kind::Start, Some(id)) if valid_log_id(id) => id.clone(),
                    _ => return Err("record 0 is not a start record with a log id".into()),
                };
                self.report.log_id = Some(id.clone());
                Some(genesis(&id))
            }
            (Some(id), None) => Some(genesis(id)),
        };
        if expected_prev != Some(r.prev) {
            return Err(match (first_in_segment, prev_seg) {
                (true, Some(p)) => format!("broken segment link: prev is not the last hash of {p}"),
                _ => {
                    "prev is not the previous record's hash (record inserted, deleted or reordered)"
                        .into()
                }
            });
        }
        if r.log_id.is_some() && r.log_id != self.report.log_id {
            return Err("log id differs from record 0's (spliced from another log)".into());
        }
        self.check_witness(r)?;
        if r.kind == Kind::Checkpoint {
            let id = self.report.log_id.clone().unwrap_or_default();
            if r.log_id.is_none() {
                return Err("checkpoint without a log id".into());
            }
            if r.key_id.as_deref() != Some(self.key_id.as_str()) {
                return Err(
                    "checkpoint signed by another key (key_id differs from the given public key)"
                        .into(),
                );
            }
            let msg = signed_message(&id, r.seq, &r.hash);
            let good = r.sig.is_some_and(|s| self.key.verify(&msg, &s));
            if !good {
                return Err("bad checkpoint signature".into());
            }
            self.report.last_checkpoint = Some(r.seq);
            self.report.unsigned_tail = 0;
        } else {
            self.report.unsigned_tail += 1;
        }
        self.report.records += 1;
        self.report.last = Some((r.seq, hex(&r.hash)));
        Ok(())
    }

    /// Verify one segment; `false` once a problem was recorded.
    fn segment(&mut self, name: &str, bytes: &[u8], is_last: bool, prev_seg: Option<&str>) -> bool {
        self.report.segments.push(name.to_owned());
        self.report.bytes += bytes.len() as u64;
        let (lines, torn) = split_lines(bytes);
        self.lines_in_last = lines.len() as u64;
        if lines.is_empty() && torn == 0 && !is_last {
            let want = self.expected();
            self.fail(name, 0, want, "empty segment in the middle of the log");
            return false;
        }
        let checked: Vec<Result<Rec, String>> = lines.par_iter().map(|l| check_line(l)).collect();
        for (i, c) in checked.into_iter().enumerate() {
            let want = self.expected();
            let failure = match c {
                Err(reason) => Some((want, reason)),
                Ok(r) => self.link(&r, i == 0, prev_seg).err().map(|e| (r.seq, e)),
            };
            if let Some((seq, reason)) = failure {
                self.fail(name, i as u64 + 1, seq, reason);
                return false;
            }
        }
        if torn > 0 {
            let want = self.expected();
            let line = lines.len() as u64 + 1;
            let what = if is_last {
                ""
            } else {
                " (not the last segment)"
            };
            self.fail(
                name,
                line,
                want,
                format!("torn final line: {torn} bytes without a newline{what}; an incomplete write, never acknowledged"),
            );
            return false;
        }
        true
    }
}

/// Verify in-memory segments `(file name, bytes)` in order against `key`.
pub fn verify_segments(segments: &[(String, Vec<u8>)], key: &PublicKey) -> VerifyReport {
    verify_segments_with_witness(segments, key, None)
}

/// [`verify_segments`], also requiring the checkpoint `witness` (when given) to be in the log.
pub fn verify_segments_with_witness(
    segments: &[(String, Vec<u8>)],
    key: &PublicKey,
    witness: Option<Witness>,
) -> VerifyReport {
    let mut w = Walk::new(key, witness);
    let n = segments.len();
    for (i, (name, bytes)) in segments.iter().enumerate() {
        let prev = i
            .checked_sub(1)
            .and_then(|p| segments.get(p))
            .map(|s| s.0.as_str());
        if !w.segment(name, bytes, i + 1 == n, prev) {
            break;
        }
    }
    w.finish();
    w.report
}

/// A segment's first record, checked on its own: `(seq, prev, log id)`.
type Head = (u64, [u8; 32], Option<String>);

/// The first record of a segment file (None: the segment holds no complete record).
fn first_record(path: &Path) -> Result<Option<Head>, CoreError> {
    let bytes = read_segment(path)?;
    let (lines, _) = split_lines(&bytes);
    let Some(first) = lines.first() else {
        return Ok(None);
    };
    check_line(first)
        .map(|r| Some((r.seq, r.prev, r.log_id)))
        .map_err(|reason| CoreError::Integrity {
            path: path.to_path_buf(),
            segment: None,
            reason: format!("first record: {reason}"),
        })
}

/// What a writer checks before it continues the log in `dir`: from the segment that holds the
/// witnessed checkpoint to the end, every record, link and checkpoint signature, and that the
/// record at the witness's seq is that checkpoint with that hash. Records before that segment are
/// not read (`verify_dir_with_witness` checks them all). The report's `unsigned_tail` counts the
/// records after the last checkpoint.
pub fn verify_dir_from_witness(
    dir: &Path,
    key: &PublicKey,
    witness: Witness,
) -> Result<VerifyReport, CoreError> {
    let idx = list_segments(dir)?;
    let mut start = 0;
    for (pos, &i) in idx.iter().enumerate().rev() {
        match first_record(&dir.join(segment_name(i)))? {
            Some((seq, _, _)) if seq <= witness.seq => {
                start = pos;
                break;
            }
            _ => {}
        }
    }
    let mut w = Walk::new(key, Some(witness));
    if start > 0 {
        let head = first_record(&dir.join(segment_name(idx[start])))?;
        let log_id = first_record(&dir.join(segment_name(0)))?.and_then(|(_, _, id)| id);
        if let (Some((seq, prev, _)), Some(id)) = (head, log_id) {
            w = Walk::anchored(key, Some(witness), id, seq, prev);
        }
    }
    walk_segments(dir, &idx, start, w)
}

/// Walk segments `idx[start..]` of `dir` (their indices must run without a gap), then finish.
fn walk_segments(
    dir: &Path,
    idx: &[u32],
    start: usize,
    mut w: Walk<'_>,
) -> Result<VerifyReport, CoreError> {
    for (pos, &i) in idx.iter().enumerate().skip(start) {
        let name = segment_name(i);
        if i as usize != pos {
            let missing = segment_name(pos as u32);
            let want = w.expected();
            w.fail(&missing, 0, want, format!("segment {missing} is missing"));
            break;
        }
        let bytes = read_segment(&dir.join(&name))?;
        let prev = pos.checked_sub(1).map(|p| segment_name(p as u32));
        if !w.segment(&name, &bytes, pos + 1 == idx.len(), prev.as_deref()) {
            break;
        }
    }
    w.finish();
    Ok(w.report)
}

/// Verify the log in directory `dir` against `key`, one segment in memory at a time.
pub fn verify_dir(dir: &Path, key: &PublicKey) -> Result<VerifyReport, CoreError> {
    verify_dir_with_witness(dir, key, None)
}

/// [`verify_dir`], also requiring the checkpoint `witness` (when given) to be in the log: without
/// it, records cut off after the last checkpoint cannot be told from records never written.
pub fn verify_dir_with_witness(
    dir: &Path,
    key: &PublicKey,
    witness: Option<Witness>,
) -> Result<VerifyReport, CoreError> {
    let mut w = Walk::new(key, witness);
    let idx = list_segments(dir)?;
    if idx.is_empty() {
        w.fail(&segment_name(0), 0, 0, "no audit segments in the directory");
        return Ok(w.report);
    }
    walk_segments(dir, &idx, 0, w)
}
