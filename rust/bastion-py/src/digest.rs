//! `digest_dir` and `Blake3Hasher`.

use std::path::PathBuf;
use std::sync::Mutex;

use bastion_core::digest::{self, Blake3Stream};
use bastion_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::NativeError;

/// `update()` inputs at least this long are hashed with the GIL released.
const DETACH_MIN: usize = 64 * 1024;

type FileRow = (String, u64, String);

/// Digest a model directory: `("blake3:<hex>", [(relpath, size, "blake3:<hex>"), ...])`.
///
/// The path is owned before the GIL is released; walking and hashing run detached.
#[pyfunction]
pub(crate) fn digest_dir(
    py: Python<'_>,
    path: PathBuf,
) -> Result<(String, Vec<FileRow>), NativeError> {
    let out = py.detach(move || -> Result<_, CoreError> {
        let d = digest::digest_dir(&path)?;
        let files = d
            .files
            .into_iter()
            .map(|f| {
                let hex = digest::format_digest(&f.digest);
                (f.path, f.size, hex)
            })
            .collect::<Vec<_>>();
        Ok((digest::format_digest(&d.digest), files))
    })?;
    Ok(out)
}

/// Incremental BLAKE3. Frozen, with the state behind a lock, so sharing it between threads is safe.
#[pyclass(frozen, module = "bastion._native")]
pub(crate) struct Blake3Hasher {
    state: Mutex<Blake3Stream>,
}

impl Blake3Hasher {
    fn with_state<T>(
        &self,
        f: impl FnOnce(&mut Blake3Stream) -> Result<T, CoreError>,
    ) -> Result<T, NativeError> {
        // A poisoned lock means an update panicked midway: the state is unusable.
        let mut guard = self.state.lock().map_err(|_| CoreError::AlreadyFinalized)?;
        Ok(f(&mut guard)?)
    }
}

#[pymethods]
impl Blake3Hasher {
    #[new]
    fn new() -> Self {
        Blake3Hasher {
            state: Mutex::new(Blake3Stream::new()),
        }
    }

    /// Absorb `data` (immutable `bytes` only, read in place). Large inputs release the GIL.
    fn update(&self, py: Python<'_>, data: &Bound<'_, PyBytes>) -> Result<(), NativeError> {
        // `bytes` is immutable and `data` holds a reference, so the slice stays valid and
        // unchanged while detached.
        let bytes = data.as_bytes();
        if bytes.len() >= DETACH_MIN {
            py.detach(|| self.with_state(|s| s.update(bytes)))
        } else {
            self.with_state(|s| s.update(bytes))
        }
    }

    /// The BLAKE3 digest as 64 lowercase hex digits. A second call raises `AlreadyFinalized`.
    fn finalize(&self) -> Result<String, NativeError> {
        let d = self.with_state(Blake3Stream::finalize)?;
        Ok(digest::to_hex(&d))
    }
}
