//! The one mapping from `CoreError` to the Python classes defined in `bastion/errors.py`.
//!
//! Exceptions are raised with the core's message (paths and OS errors, never file contents) as the
//! positional `detail`, which is for logs and the operator's CLI only; the client-safe
//! `public_message` stays the class's fixed text. `InvalidArgument(field, problem)` builds its own
//! client-safe text from the argument's name and limit.

use bastion_core::CoreError;
use pyo3::prelude::*;
use pyo3::PyTypeInfo;

pyo3::import_exception!(bastion.errors, BastionError);
pyo3::import_exception!(bastion.errors, IntegrityError);
pyo3::import_exception!(bastion.errors, FormatError);
pyo3::import_exception!(bastion.errors, NativeIOError);
pyo3::import_exception!(bastion.errors, AlreadyFinalized);
pyo3::import_exception!(bastion.errors, ConfigError);
pyo3::import_exception!(bastion.errors, InvalidArgument);

/// Import `bastion.errors` (returning its error rather than panicking later) and resolve every
/// class once.
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    py.import("bastion.errors")?;
    let _ = (
        BastionError::type_object(py),
        IntegrityError::type_object(py),
        FormatError::type_object(py),
        NativeIOError::type_object(py),
        AlreadyFinalized::type_object(py),
        ConfigError::type_object(py),
        InvalidArgument::type_object(py),
    );
    Ok(())
}

/// A core error on its way to Python. Binding functions return `Result<T, NativeError>`; `?` on a
/// `CoreError` converts through the single `From` below.
#[derive(Debug)]
pub(crate) struct NativeError(CoreError);

impl From<CoreError> for NativeError {
    fn from(e: CoreError) -> Self {
        NativeError(e)
    }
}

impl From<NativeError> for PyErr {
    fn from(NativeError(e): NativeError) -> PyErr {
        let detail = e.to_string();
        Python::attach(|py| {
            // InvalidArgument(field, problem): names the argument and the limit, never the value.
            if let CoreError::InvalidArgument { field, problem } = &e {
                let ty = InvalidArgument::type_object(py);
                return match ty.call1((*field, problem.as_str())) {
                    Ok(v) => PyErr::from_value(v),
                    Err(err) => err,
                };
            }
            let ty = match e {
                CoreError::Io { .. } | CoreError::NotADirectory { .. } => {
                    NativeIOError::type_object(py)
                }
                CoreError::Symlink { .. }
                | CoreError::NotRegularFile { .. }
                | CoreError::FileChanged { .. } => IntegrityError::type_object(py),
                CoreError::NonUtf8Path { .. }
                | CoreError::Format { .. }
                | CoreError::Refused { .. } => FormatError::type_object(py),
                CoreError::Integrity { .. } => IntegrityError::type_object(py),
                CoreError::KeyFile { .. } => ConfigError::type_object(py),
                CoreError::AlreadyFinalized => AlreadyFinalized::type_object(py),
                // Fail closed: a variant this binding does not know is still a BastionError.
                _ => BastionError::type_object(py),
            };
            // BastionError(detail, *, public=None): the detail is positional, the public text the class's.
            match ty.call1((detail.as_str(),)) {
                Ok(v) => PyErr::from_value(v),
                Err(err) => err,
            }
        })
    }
}
