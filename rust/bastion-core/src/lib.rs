//! bastion-core: the pure-Rust half of bastion (no pyo3, no logging, no unsafe).
//!
//! Everything here returns structured [`CoreError`]s; the `bastion-py` crate maps them onto
//! `bastion.errors` classes and decides about the GIL.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod blockhash;
pub mod digest;
pub mod error;
pub mod kvbudget;
pub mod sealed;

pub use error::CoreError;
