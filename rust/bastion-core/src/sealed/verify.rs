//! Whole-directory checks on the rayon pool: ciphertext hashes only (no key), or full
//! authentication and decryption of every segment (plaintext discarded).

use rayon::prelude::*;

use super::reader::{SealedDir, SealedReader};
use super::segment::segment_bounds;
use crate::CoreError;

/// What a whole-directory check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    /// Data files checked.
    pub files: usize,
    /// Segments checked.
    pub segments: u64,
    /// Ciphertext bytes checked.
    pub bytes: u64,
}

impl SealedDir {
    fn all_segments(&self) -> Vec<(u32, u64, usize)> {
        let s = self.c.header.segment_size;
        let mut v = Vec::with_capacity(self.c.tags.len());
        for (fi, f) in self.c.header.files.iter().enumerate() {
            for si in 0..f.segments {
                let (a, b) = segment_bounds(si, f.plaintext_len, s);
                v.push((fi as u32, si, (b - a) as usize));
            }
        }
        v
    }

    fn report(&self) -> VerifyReport {
        VerifyReport {
            files: self.files.len(),
            segments: self.c.tags.len() as u64,
            bytes: self.files.iter().map(|f| f.len).sum(),
        }
    }

    /// Hash every ciphertext segment and compare it with the table, in parallel; no key needed.
    ///
    /// This proves the data files match `weights.ctxh`; it proves authenticity only together with
    /// a signature over `weights.ctxh` (the OMS bundle), since the tables are not keyed.
    pub fn verify_ciphertext(&self) -> Result<VerifyReport, CoreError> {
        let seg = self.c.header.segment_size as usize;
        first_failure(self.all_segments().into_par_iter().map_init(
            || vec![0u8; seg],
            |buf, (fi, si, len)| self.read_verified(fi, si, &mut buf[..len]),
        ))?;
        Ok(self.report())
    }
}

impl SealedReader {
    /// Hash-check, authenticate and decrypt every segment (plaintext discarded), in parallel.
    pub fn verify_all(&self) -> Result<VerifyReport, CoreError> {
        let d = self.sealed_dir();
        let seg = d.c.header.segment_size as usize;
        first_failure(d.all_segments().into_par_iter().map_init(
            || vec![0u8; seg],
            |buf, (fi, si, len)| self.decrypt_segment(fi, si, &mut buf[..len]),
        ))?;
        Ok(d.report())
    }
}

/// The error of the first failing segment in file and segment order, whatever the threads' timing (segments after
/// a failure already found are not checked); Ok when every segment passed.
pub(super) fn first_failure<I>(checks: I) -> Result<(), CoreError>
where
    I: IndexedParallelIterator<Item = Result<(), CoreError>>,
{
    match checks.find_first(Result::is_err) {
        Some(failed) => failed,
        None => Ok(()),
    }
}
