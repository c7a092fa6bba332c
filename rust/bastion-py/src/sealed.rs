//! Sealed-format bindings: `SealedReader`, `seal_dir`, `rekey`, `create_kek`, `inspect`,
//! `verify_ciphertext`. Paths are owned before the GIL is released; the DEK and KEK never leave
//! Rust; plaintext is written straight into a new `bytes`, or into a byte buffer the caller owns and reuses
//! (`read_range_into`), only after its segments authenticated (on failure that buffer is zeroed).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bastion_core::sealed::{
    self, AeadAlg, HashAlg, KeyEncryptionKey, Origin, SealOptions, SealedDir,
};
use bastion_core::CoreError;
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::NativeError;
use crate::wrapper::Key;

type Report = (usize, u64, u64);
/// `(dtype, shape, file index, (begin, end))`.
type TensorRow = (String, Vec<u64>, u32, (u64, u64));

fn invalid(field: &'static str, problem: &str) -> NativeError {
    CoreError::InvalidArgument {
        field,
        problem: problem.into(),
    }
    .into()
}

/// A sealed model opened with a local KEK. Frozen; the reader itself is immutable and shared, so
/// concurrent reads from several threads are safe; `close()` drops it (reads in flight finish).
#[pyclass(frozen, module = "bastion._native")]
pub(crate) struct SealedReader {
    inner: Mutex<Option<Arc<sealed::SealedReader>>>,
}

impl SealedReader {
    fn get(&self) -> Result<Arc<sealed::SealedReader>, NativeError> {
        let g = self.inner.lock().map_err(|_| CoreError::AlreadyFinalized)?;
        Ok(g.as_ref().cloned().ok_or(CoreError::AlreadyFinalized)?)
    }

    fn read<'py>(&self, py: Python<'py>, fi: u32, b: u64, e: u64) -> PyResult<Bound<'py, PyBytes>> {
        let r = self.get()?;
        r.check_range(fi, b, e).map_err(NativeError::from)?;
        let len = usize::try_from(e - b).map_err(|_| invalid("range", "too large"))?;
        PyBytes::new_with(py, len, |buf| {
            // `buf` belongs to a `bytes` object no Python code can see yet.
            py.detach(|| r.read_range_into(fi, b, buf))
                .map_err(|e| PyErr::from(NativeError::from(e)))
        })
    }
}

#[pymethods]
impl SealedReader {
    /// Open `path` with `kek`: a KEK file (0600/0400) or a key-provider object (`wrapper.rs`).
    /// Validates the header, every data file's size, unwraps the DEK and checks the key commitment.
    #[new]
    fn new(py: Python<'_>, path: PathBuf, kek: &Bound<'_, PyAny>) -> PyResult<Self> {
        let key = Key::from_py(kek)?;
        let r = key.finish(py.detach(|| sealed::SealedReader::open_with(&path, key.wrapper())))?;
        Ok(SealedReader {
            inner: Mutex::new(Some(Arc::new(r))),
        })
    }

    /// The exact bytes of `weights.ctxh` this reader decoded (for the signature check).
    fn header_file<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>, NativeError> {
        Ok(PyBytes::new(
            py,
            self.get()?.sealed_dir().header_file_bytes(),
        ))
    }

    /// Sorted tensor names.
    fn tensor_names(&self) -> Result<Vec<String>, NativeError> {
        Ok(self.get()?.tensor_names())
    }

    /// `(dtype, shape, file_index, (begin, end))` of one tensor.
    fn tensor_info(&self, name: &str) -> Result<TensorRow, NativeError> {
        let r = self.get()?;
        let t = r.tensor_info(name)?;
        Ok((
            t.dtype.clone(),
            t.shape.clone(),
            t.file,
            (t.data_offsets[0], t.data_offsets[1]),
        ))
    }

    /// `[(data file name, source safetensors name, plaintext length), ...]` in index order.
    fn files(&self) -> Result<Vec<(String, String, u64)>, NativeError> {
        let r = self.get()?;
        let h = r.sealed_dir().header();
        Ok(h.files
            .iter()
            .map(|f| (f.name.clone(), f.source_name.clone(), f.plaintext_len))
            .collect())
    }

    /// A tensor's bytes (GIL released; hash-checked, authenticated, decrypted into a new `bytes`).
    fn read_tensor<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let r = self.get()?;
        let t = r.tensor_info(name).map_err(NativeError::from)?;
        let (fi, b, e) = (t.file, t.data_offsets[0], t.data_offsets[1]);
        drop(r);
        self.read(py, fi, b, e)
    }

    /// Plaintext bytes `[begin, end)` of data file `file_index` (the original safetensors bytes).
    fn read_range<'py>(
        &self,
        py: Python<'py>,
        file_index: u32,
        begin: u64,
        end: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.read(py, file_index, begin, end)
    }

    /// Plaintext `[begin, begin + len(out))` of data file `file_index` decrypted into `out`: a writable,
    /// C-contiguous byte buffer the caller owns and reuses (a `bytearray`, a numpy array over pinned memory),
    /// so a loader pays no allocation and no page faults per batch. The GIL is released while the segments
    /// are read, hash-checked, authenticated and decrypted (in parallel); `out` must not be used elsewhere
    /// meanwhile. On any failure `out` is zeroed: no unauthenticated byte is ever left in it.
    fn read_range_into(
        &self,
        py: Python<'_>,
        file_index: u32,
        begin: u64,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let need = "must be a writable C-contiguous buffer of bytes";
        let buf = PyBuffer::<u8>::get(out).map_err(|_| invalid("out", need))?;
        if buf.readonly() {
            return Err(invalid("out", need).into());
        }
        let ptr = buf.as_slice_ptr().ok_or_else(|| invalid("out", need))?;
        let (addr, len) = (ptr.as_ptr() as *mut u8 as usize, buf.len_bytes());
        let r = self.get()?;
        #[allow(unsafe_code)]
        let done = py.detach(move || {
            // SAFETY: `buf` keeps the exporter's memory alive and its size fixed (an exported bytearray
            // cannot be resized) until it is dropped below, after this closure; `len` is its size in bytes.
            // The loader that passed `out` does not touch it until this call returns.
            let out = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
            r.read_range_into(file_index, begin, out)
        });
        drop(buf);
        done.map_err(|e| PyErr::from(NativeError::from(e)))
    }

    /// Hash-check every ciphertext segment (no decryption): `(files, segments, bytes)`.
    fn verify_ciphertext(&self, py: Python<'_>) -> Result<Report, NativeError> {
        let r = self.get()?;
        let v = py.detach(move || r.sealed_dir().verify_ciphertext())?;
        Ok((v.files, v.segments, v.bytes))
    }

    /// Hash-check, authenticate and decrypt every segment (plaintext discarded).
    fn verify_all(&self, py: Python<'_>) -> Result<Report, NativeError> {
        let r = self.get()?;
        let v = py.detach(move || r.verify_all())?;
        Ok((v.files, v.segments, v.bytes))
    }

    /// Drop the reader (keys and file handles); later calls raise `AlreadyFinalized`.
    fn close(&self) -> Result<(), NativeError> {
        let mut g = self.inner.lock().map_err(|_| CoreError::AlreadyFinalized)?;
        g.take();
        Ok(())
    }
}

/// Seal `src` into the new directory `out` under the KEK file `kek_path`. Returns
/// `(files, tensors, bytes, copied names, header digest hex)`.
#[pyfunction]
#[pyo3(signature = (src, out, kek, *, aead = "aes-256-gcm", segment_size = 1048576, hash = "blake3", context = None, origin = None))]
#[allow(clippy::too_many_arguments)] // the Python signature
pub(crate) fn seal_dir(
    py: Python<'_>,
    src: PathBuf,
    out: PathBuf,
    kek: &Bound<'_, PyAny>,
    aead: &str,
    segment_size: u64,
    hash: &str,
    context: Option<BTreeMap<String, String>>,
    origin: Option<BTreeMap<String, String>>,
) -> PyResult<(usize, usize, u64, Vec<String>, String)> {
    let aead = AeadAlg::from_name(aead)
        .ok_or_else(|| invalid("aead", "aes-256-gcm or chacha20-poly1305"))?;
    let hash = HashAlg::from_name(hash).ok_or_else(|| invalid("hash", "blake3 or sha256"))?;
    let origin = origin.map(origin_from).transpose()?;
    let opts = SealOptions {
        aead,
        segment_size,
        hash,
        context: context.unwrap_or_default(),
        origin,
    };
    let key = Key::from_py(kek)?;
    let r = key.finish(py.detach(|| sealed::seal_dir_with(&src, &out, key.wrapper(), &opts)))?;
    Ok((r.files, r.tensors, r.bytes, r.copied, r.header_digest))
}

fn origin_from(mut m: BTreeMap<String, String>) -> Result<Origin, NativeError> {
    let o = Origin {
        source_uri: m.remove("source_uri"),
        revision: m.remove("revision"),
        upstream_digest: m.remove("upstream_digest"),
        upstream_signer: m.remove("upstream_signer"),
    };
    if !m.is_empty() {
        return Err(invalid(
            "origin",
            "keys are source_uri, revision, upstream_digest, upstream_signer",
        ));
    }
    Ok(o)
}

/// Rewrap the DEK of `path` from `old_kek` to `new_kek` (ciphertext untouched); each is a KEK
/// file or a key-provider object, so a model can move between providers.
#[pyfunction]
pub(crate) fn rekey(
    py: Python<'_>,
    path: PathBuf,
    old_kek: &Bound<'_, PyAny>,
    new_kek: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let (old, new) = (Key::from_py(old_kek)?, Key::from_py(new_kek)?);
    py.detach(|| sealed::rekey_with(&path, old.wrapper(), new.wrapper()))
        .map_err(|e| {
            old.take_error()
                .or_else(|| new.take_error())
                .unwrap_or_else(|| NativeError::from(e).into())
        })
}

/// Create a new 0600 KEK file of 32 random bytes (refuses to overwrite).
#[pyfunction]
pub(crate) fn create_kek(py: Python<'_>, path: PathBuf) -> Result<(), NativeError> {
    Ok(py.detach(move || KeyEncryptionKey::create_file(&path))?)
}

/// The header of `path` as JSON text, without the wrapped DEK.
#[pyfunction]
pub(crate) fn inspect(py: Python<'_>, path: PathBuf) -> Result<String, NativeError> {
    Ok(py.detach(move || sealed::inspect(&path))?)
}

/// Open `path` without a key and hash-check every ciphertext segment: `(files, segments, bytes)`.
#[pyfunction]
pub(crate) fn verify_ciphertext(py: Python<'_>, path: PathBuf) -> Result<Report, NativeError> {
    let v = py.detach(move || SealedDir::open(&path)?.verify_ciphertext())?;
    Ok((v.files, v.segments, v.bytes))
}

/// Register the sealed-format API on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SealedReader>()?;
    m.add_function(wrap_pyfunction!(seal_dir, m)?)?;
    m.add_function(wrap_pyfunction!(rekey, m)?)?;
    m.add_function(wrap_pyfunction!(create_kek, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(verify_ciphertext, m)?)?;
    Ok(())
}
