//! Key-encryption keys for the sealed format, as Python passes them: a path to a local KEK file
//! (read by Rust itself; the key never reaches Python), or a provider object whose KEK lives in a
//! KMS or HSM (`bastion.keys`: OpenBao/Vault Transit, PKCS#11).
//!
//! A provider object has `name` (the header's `key.provider`), `key_id() -> str`,
//! `wrap(dek: bytearray, aad: bytes) -> bytes` and `unwrap(wrapped: bytes, aad: bytes) ->
//! bytearray | None`. The data key has to cross into Python to reach the KMS or HSM client: it is
//! handed over in a `bytearray` that is overwritten with zeros as soon as the call returns, and the
//! `bytearray` an unwrap returns is copied into zeroizing memory and overwritten the same way (what
//! the client library keeps internally is outside our reach; `docs/SAFETY.md`). An exception the
//! provider raises is re-raised unchanged once the core call has unwound.

use std::path::PathBuf;
use std::sync::Mutex;

use bastion_core::sealed::{Dek, KeyEncryptionKey, KeyWrapper};
use bastion_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PySlice, PyString};
use zeroize::Zeroizing;

use crate::errors::NativeError;

/// A provider object's KEK.
pub(crate) struct PyWrapper {
    obj: Py<PyAny>,
    provider: String,
    error: Mutex<Option<PyErr>>,
}

/// Overwrite a `bytearray` in place with zeros (an equal-length slice assignment never reallocates).
fn wipe(ba: &Bound<'_, PyByteArray>) -> PyResult<()> {
    let py = ba.py();
    let n = ba.len();
    let zeros = Zeroizing::new(vec![0u8; n]);
    let all = PySlice::new(py, 0, n as isize, 1);
    ba.set_item(all, PyBytes::new(py, &zeros))
}

impl PyWrapper {
    fn stash(&self, e: PyErr) -> CoreError {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
        CoreError::Crypto("key provider call failed")
    }

    fn take_error(&self) -> Option<PyErr> {
        self.error.lock().ok().and_then(|mut slot| slot.take())
    }
}

impl KeyWrapper for PyWrapper {
    fn provider(&self) -> String {
        self.provider.clone()
    }

    fn key_id(&self) -> Result<String, CoreError> {
        Python::attach(|py| self.obj.call_method0(py, "key_id")?.extract::<String>(py))
            .map_err(|e| self.stash(e))
    }

    fn wrap_dek(&self, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, CoreError> {
        Python::attach(|py| {
            let lent = dek.with_bytes(|b| PyByteArray::new(py, b));
            let result = self
                .obj
                .call_method1(py, "wrap", (&lent, PyBytes::new(py, aad)));
            wipe(&lent)?;
            result?.extract::<Vec<u8>>(py)
        })
        .map_err(|e| self.stash(e))
    }

    fn unwrap_wrapped(&self, wrapped: &[u8], aad: &[u8]) -> Result<Option<Dek>, CoreError> {
        let got = Python::attach(|py| -> PyResult<Option<Zeroizing<Vec<u8>>>> {
            let r = self.obj.call_method1(
                py,
                "unwrap",
                (PyBytes::new(py, wrapped), PyBytes::new(py, aad)),
            )?;
            if r.is_none(py) {
                return Ok(None);
            }
            let ba = r.bind(py).cast::<PyByteArray>()?;
            let copy = Zeroizing::new(ba.to_vec());
            wipe(ba)?;
            Ok(Some(copy))
        })
        .map_err(|e| self.stash(e))?;
        got.map(|k| Dek::from_slice(&k)).transpose()
    }
}

/// The KEK argument of a binding: a path (`str` or `os.PathLike`) or a provider object.
pub(crate) enum Key {
    File(KeyEncryptionKey),
    Provider(PyWrapper),
}

impl Key {
    pub(crate) fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Key> {
        let is_path = obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")?;
        if is_path {
            let path: PathBuf = obj.extract()?;
            let py = obj.py();
            let kek = py
                .detach(move || KeyEncryptionKey::from_file(&path))
                .map_err(NativeError::from)?;
            return Ok(Key::File(kek));
        }
        let provider: String = obj.getattr("name")?.extract()?;
        Ok(Key::Provider(PyWrapper {
            obj: obj.clone().unbind(),
            provider,
            error: Mutex::new(None),
        }))
    }

    pub(crate) fn wrapper(&self) -> &dyn KeyWrapper {
        match self {
            Key::File(k) => k,
            Key::Provider(p) => p,
        }
    }

    /// The exception a provider raised during the last core call, if any.
    pub(crate) fn take_error(&self) -> Option<PyErr> {
        match self {
            Key::Provider(p) => p.take_error(),
            Key::File(_) => None,
        }
    }

    /// Converts a core result, re-raising the provider's own exception where it caused the failure.
    pub(crate) fn finish<T>(&self, r: Result<T, CoreError>) -> PyResult<T> {
        r.map_err(|e| {
            self.take_error()
                .unwrap_or_else(|| NativeError::from(e).into())
        })
    }
}
