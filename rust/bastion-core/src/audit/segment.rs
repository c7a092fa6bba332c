//! Segment files (`audit-NNNNNNNN.jsonl`): naming, listing, reading, and resuming a log after a
//! restart or a crash.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::Path;

use super::chain::{Chain, Kind};
use super::keys::open_error;
use super::limits::{MAX_LINE, MAX_SEGMENTS, MAX_SEGMENT_FILE};
use super::verify::{check_single, split_lines};
use crate::CoreError;

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";

/// The file name of segment `i`.
pub fn segment_name(i: u32) -> String {
    format!("{PREFIX}{i:08}{SUFFIX}")
}

fn parse_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|i| *i <= MAX_SEGMENTS)
}

/// The segment indices present in `dir`, sorted. Other files are ignored; a segment that is a
/// symlink or not a regular file is an error.
pub fn list_segments(dir: &Path) -> Result<Vec<u32>, CoreError> {
    let rd = std::fs::read_dir(dir).map_err(|e| CoreError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| CoreError::io(dir, e))?;
        let Some(i) = entry.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| CoreError::io(&path, e))?;
        if ft.is_symlink() {
            return Err(CoreError::Symlink { path });
        }
        if !ft.is_file() {
            return Err(CoreError::NotRegularFile { path });
        }
        out.push(i);
    }
    out.sort_unstable();
    Ok(out)
}

fn open_segment(path: &Path, write: bool) -> Result<std::fs::File, CoreError> {
    let mut o = OpenOptions::new();
    o.read(true).write(write);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let f = o.open(path).map_err(|e| open_error(path, e))?;
    let meta = f.metadata().map_err(|e| CoreError::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(CoreError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > MAX_SEGMENT_FILE {
        return Err(CoreError::Format {
            path: path.to_path_buf(),
            segment: None,
            reason: format!("segment larger than {MAX_SEGMENT_FILE} bytes"),
        });
    }
    Ok(f)
}

/// Read a whole segment file (no symlinks, regular files only, size-limited).
pub(crate) fn read_segment(path: &Path) -> Result<Vec<u8>, CoreError> {
    let f = open_segment(path, false)?;
    let mut buf = Vec::new();
    f.take(MAX_SEGMENT_FILE)
        .read_to_end(&mut buf)
        .map_err(|e| CoreError::io(path, e))?;
    Ok(buf)
}

/// Where a writer continues a log.
#[derive(Debug)]
pub struct Resume {
    /// The chain state (a fresh log when the directory held no records).
    pub chain: Chain,
    /// Whether this is a new log.
    pub fresh: bool,
    /// The segment to append to.
    pub segment: u32,
    /// Its current length.
    pub segment_len: u64,
    /// Bytes of a torn final line that were removed (an incomplete, never-acknowledged write).
    pub truncated: u64,
}

fn cannot_resume(path: &Path, segment: u32, reason: String) -> CoreError {
    CoreError::Integrity {
        path: path.to_path_buf(),
        segment: Some(u64::from(segment)),
        reason: format!("cannot resume the audit log: {reason}"),
    }
}

/// Find where the log in `dir` ends. A torn final line of the last segment (bytes after its last
/// newline, from a crash mid-write) is cut off — it was never fsynced as a whole record, so never
/// acknowledged — and its length reported so the writer can record it. The last record must
/// verify on its own and record 0 must be a start record; otherwise the directory is refused
/// (run the verifier). The rest of the log is not re-verified here.
pub fn recover(dir: &Path) -> Result<Resume, CoreError> {
    let idx = list_segments(dir)?;
    let Some(&last) = idx.last() else {
        return Ok(Resume {
            chain: Chain::fresh()?,
            fresh: true,
            segment: 0,
            segment_len: 0,
            truncated: 0,
        });
    };
    let last_path = dir.join(segment_name(last));
    let bytes = read_segment(&last_path)?;
    let (_, torn) = split_lines(&bytes);
    let keep = (bytes.len() - torn) as u64;
    if torn > 0 {
        let f = open_segment(&last_path, true)?;
        f.set_len(keep).map_err(|e| CoreError::io(&last_path, e))?;
        f.sync_all().map_err(|e| CoreError::io(&last_path, e))?;
    }
    let mut tail: Option<(u32, Vec<u8>)> = None;
    for &i in idx.iter().rev() {
        let b = if i == last {
            bytes[..keep as usize].to_vec()
        } else {
            read_segment(&dir.join(segment_name(i)))?
        };
        let (lines, _) = split_lines(&b);
        if let Some(l) = lines.last() {
            tail = Some((i, l.to_vec()));
            break;
        }
    }
    let Some((tail_seg, line)) = tail else {
        if idx.len() > 1 {
            return Err(cannot_resume(
                &last_path,
                last,
                "several segments but no records".into(),
            ));
        }
        return Ok(Resume {
            chain: Chain::fresh()?,
            fresh: true,
            segment: last,
            segment_len: 0,
            truncated: torn as u64,
        });
    };
    let tail_path = dir.join(segment_name(tail_seg));
    let (seq, hash, _, _) = check_single(&line)
        .map_err(|e| cannot_resume(&tail_path, tail_seg, format!("last record: {e}")))?;
    let first_path = dir.join(segment_name(0));
    let log_id = first_log_id(&first_path)?;
    Ok(Resume {
        chain: Chain::resume(log_id, seq, hash),
        fresh: false,
        segment: last,
        segment_len: keep,
        truncated: torn as u64,
    })
}

/// The log id of record 0 (the start record at the head of segment 0).
fn first_log_id(path: &Path) -> Result<String, CoreError> {
    let f = open_segment(path, false)?;
    let mut head = Vec::new();
    f.take(MAX_LINE as u64 + 1)
        .read_to_end(&mut head)
        .map_err(|e| CoreError::io(path, e))?;
    let (lines, _) = split_lines(&head);
    let first = lines
        .first()
        .ok_or_else(|| cannot_resume(path, 0, "record 0 is missing".into()))?;
    match check_single(first) {
        Ok((0, _, Kind::Start, Some(id))) => Ok(id),
        Ok(_) => Err(cannot_resume(
            path,
            0,
            "record 0 is not a start record".into(),
        )),
        Err(e) => Err(cannot_resume(path, 0, format!("record 0: {e}"))),
    }
}
