//! `bastion._native`: pyo3 bindings over `bastion-core`.
//!
//! This crate only converts types, maps errors (see `errors.rs`) and decides about the GIL: every
//! O(bytes) operation runs detached from the interpreter on inputs owned (or immutably borrowed
//! from `bytes`) beforehand. Its one `unsafe` block (writing decrypted weights into a caller's reusable
//! buffer, `sealed.rs`) is allowed where it stands and listed in `docs/SAFETY.md`; any other is an error.
#![deny(unsafe_code)]

mod audit;
mod blockhash;
mod digest;
mod errors;
mod kvbudget;
mod sealed;
mod wrapper;

use pyo3::prelude::*;

/// The native half of bastion. Import it through `bastion.digest`, `bastion.weights` and `bastion.audit`, not directly.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Import the exception classes now, so that raising one later can never fail to import them.
    errors::init(m.py())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(digest::digest_dir, m)?)?;
    m.add_class::<digest::Blake3Hasher>()?;
    sealed::register(m)?;
    audit::register(m)?;
    blockhash::register(m)?;
    kvbudget::register(m)?;
    Ok(())
}
