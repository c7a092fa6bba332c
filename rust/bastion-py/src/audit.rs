//! Audit-log bindings: `AuditChain` (sealing records), the three audit key types, `audit_keygen`,
//! `audit_verify_dir` and `audit_segment_name`. The Python writer owns files and the commit policy;
//! every byte of the format comes from `bastion_core::audit`. Secret keys never leave Rust.

use std::path::PathBuf;
use std::sync::Mutex;

use bastion_core::audit::{self, Chain, ContentKey, PublicKey, SigningKey, VerifyReport, Witness};
use bastion_core::digest::to_hex;
use bastion_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::errors::NativeError;

/// `mac_for` inputs at least this long are hashed with the GIL released.
const DETACH_MIN: usize = 64 * 1024;

fn invalid(field: &'static str, problem: &str) -> NativeError {
    CoreError::InvalidArgument {
        field,
        problem: problem.into(),
    }
    .into()
}

/// The chain state of one log. Frozen, with the state behind a lock: seals are serialised, and a
/// failed seal leaves the chain unchanged.
#[pyclass(frozen, module = "bastion._native")]
pub(crate) struct AuditChain {
    state: Mutex<Chain>,
}

impl AuditChain {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Chain) -> Result<T, CoreError>,
    ) -> Result<T, NativeError> {
        let mut g = self.state.lock().map_err(|_| CoreError::AlreadyFinalized)?;
        Ok(f(&mut g)?)
    }
}

#[pymethods]
impl AuditChain {
    /// Find where the log in `dir` ends (cutting a torn final line): `(chain, info)` with info
    /// `{fresh, segment, segment_len, truncated}`.
    #[staticmethod]
    fn recover<'py>(py: Python<'py>, dir: PathBuf) -> PyResult<(AuditChain, Bound<'py, PyDict>)> {
        let r = py
            .detach(move || audit::recover(&dir))
            .map_err(NativeError::from)?;
        let info = PyDict::new(py);
        info.set_item("fresh", r.fresh)?;
        info.set_item("segment", r.segment)?;
        info.set_item("segment_len", r.segment_len)?;
        info.set_item("truncated", r.truncated)?;
        Ok((
            AuditChain {
                state: Mutex::new(r.chain),
            },
            info,
        ))
    }

    /// Seal one event record: `kind` is request, decision, start or stop; `fields_json` a JSON
    /// object of schema fields. Returns `(seq, line)`.
    fn seal<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        fields_json: &Bound<'py, PyAny>,
        now_ms: u64,
    ) -> PyResult<(u64, Bound<'py, PyBytes>)> {
        let s = if let Ok(b) = fields_json.cast::<PyBytes>() {
            self.with(|c| c.seal_json(kind, b.as_bytes(), now_ms))?
        } else if let Ok(t) = fields_json.cast::<PyString>() {
            let text = t.to_str()?;
            self.with(|c| c.seal_json(kind, text.as_bytes(), now_ms))?
        } else {
            return Err(invalid("fields", "must be JSON as bytes or str").into());
        };
        Ok((s.seq, PyBytes::new(py, &s.line)))
    }

    /// Seal a checkpoint signed by `signing_key`: `(seq, hash_hex, line)`.
    fn checkpoint<'py>(
        &self,
        py: Python<'py>,
        signing_key: &AuditSigningKey,
        now_ms: u64,
    ) -> Result<(u64, String, Bound<'py, PyBytes>), NativeError> {
        let s = self.with(|c| c.checkpoint(&signing_key.0, now_ms))?;
        Ok((s.seq, to_hex(&s.hash), PyBytes::new(py, &s.line)))
    }

    /// The log id (32 hex digits).
    #[getter]
    fn log_id(&self) -> Result<String, NativeError> {
        self.with(|c| Ok(c.log_id().to_owned()))
    }

    /// The seq the next record gets.
    #[getter]
    fn next_seq(&self) -> Result<u64, NativeError> {
        self.with(|c| Ok(c.next_seq()))
    }

    /// Records sealed since the last checkpoint.
    #[getter]
    fn since_checkpoint(&self) -> Result<u64, NativeError> {
        self.with(|c| Ok(c.since_checkpoint()))
    }
}

/// The checkpoint signing key (PKCS#8 Ed25519, 0600/0400, read by Rust; never returned).
#[pyclass(frozen, module = "bastion._native")]
pub(crate) struct AuditSigningKey(SigningKey);

#[pymethods]
impl AuditSigningKey {
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> Result<AuditSigningKey, NativeError> {
        Ok(AuditSigningKey(
            py.detach(move || SigningKey::from_file(&path))?,
        ))
    }

    /// The public fingerprint written into checkpoints, `ed25519:<32 hex>`.
    #[getter]
    fn key_id(&self) -> String {
        self.0.public_key().key_id()
    }
}

/// The checkpoint verification key (text file `ed25519:<64 hex>`).
#[pyclass(frozen, module = "bastion._native")]
pub(crate) struct AuditPublicKey(PublicKey);

#[pymethods]
impl AuditPublicKey {
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> Result<AuditPublicKey, NativeError> {
        Ok(AuditPublicKey(
            py.detach(move || PublicKey::from_file(&path))?,
        ))
    }

    /// `ed25519:<32 hex>`, as in checkpoints.
    #[getter]
    fn key_id(&self) -> String {
        self.0.key_id()
    }
}

/// The content-HMAC key (32 bytes, 0600/0400, read by Rust; never returned).
#[pyclass(frozen, module = "bastion._native")]
pub(crate) struct AuditContentKey(ContentKey);

#[pymethods]
impl AuditContentKey {
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> Result<AuditContentKey, NativeError> {
        Ok(AuditContentKey(
            py.detach(move || ContentKey::from_file(&path))?,
        ))
    }

    /// `hmac-sha256:<64 hex>` of `data` under the key derived for `tenant` (HKDF-SHA256).
    fn mac_for(
        &self,
        py: Python<'_>,
        tenant: &str,
        data: &Bound<'_, PyBytes>,
    ) -> Result<String, NativeError> {
        // `bytes` is immutable and `data` holds a reference, so the slice stays valid while detached.
        let bytes = data.as_bytes();
        if bytes.len() >= DETACH_MIN {
            Ok(py.detach(|| self.0.mac_for(tenant, bytes))?)
        } else {
            Ok(self.0.mac_for(tenant, bytes)?)
        }
    }
}

/// Create the signing key (0600), its public key (0644) and the content key (0600); refuses to
/// overwrite. Returns the key id.
#[pyfunction]
fn audit_keygen(
    py: Python<'_>,
    signing_path: PathBuf,
    public_path: PathBuf,
    content_path: PathBuf,
) -> Result<String, NativeError> {
    Ok(py.detach(move || audit::keygen(&signing_path, &public_path, &content_path))?)
}

/// The file name of segment `i`.
#[pyfunction]
fn audit_segment_name(i: u32) -> String {
    audit::segment_name(i)
}

/// Verify the log in `dir` against the public key file; with a witness (`witness_seq` and
/// `witness_hash` together) also require that checkpoint to be in the log.
/// With `from_witness`, only the end of the log is read: from the segment holding the witnessed
/// checkpoint (what the writer checks before continuing a log).
#[pyfunction]
#[pyo3(signature = (dir, public_key_path, witness_seq=None, witness_hash=None, from_witness=false))]
fn audit_verify_dir<'py>(
    py: Python<'py>,
    dir: PathBuf,
    public_key_path: PathBuf,
    witness_seq: Option<u64>,
    witness_hash: Option<&str>,
    from_witness: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let witness = match (witness_seq, witness_hash) {
        (None, None) => None,
        (Some(seq), Some(h)) => {
            let hash = audit::from_hex32(h)
                .ok_or_else(|| invalid("witness_hash", "must be 64 lowercase hex digits"))?;
            Some(Witness { seq, hash })
        }
        _ => return Err(invalid("witness", "give witness_seq and witness_hash together").into()),
    };
    if from_witness && witness.is_none() {
        return Err(invalid("from_witness", "needs witness_seq and witness_hash").into());
    }
    let r = py
        .detach(move || -> Result<VerifyReport, CoreError> {
            let key = PublicKey::from_file(&public_key_path)?;
            match (from_witness, witness) {
                (true, Some(w)) => audit::verify_dir_from_witness(&dir, &key, w),
                _ => audit::verify_dir_with_witness(&dir, &key, witness),
            }
        })
        .map_err(NativeError::from)?;
    report_dict(py, r)
}

fn report_dict(py: Python<'_>, r: VerifyReport) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("segments", r.segments)?;
    d.set_item("records", r.records)?;
    d.set_item("bytes", r.bytes)?;
    d.set_item("log_id", r.log_id)?;
    let (last_seq, last_hash) = r.last.map_or((None, None), |(s, h)| (Some(s), Some(h)));
    d.set_item("last_seq", last_seq)?;
    d.set_item("last_hash", last_hash)?;
    d.set_item("last_checkpoint", r.last_checkpoint)?;
    d.set_item("unsigned_tail", r.unsigned_tail)?;
    match r.problem {
        None => d.set_item("problem", py.None())?,
        Some(p) => {
            let pd = PyDict::new(py);
            pd.set_item("segment", p.segment)?;
            pd.set_item("line", p.line)?;
            pd.set_item("seq", p.seq)?;
            pd.set_item("reason", p.reason)?;
            d.set_item("problem", pd)?;
        }
    }
    Ok(d)
}

/// Register the audit-log API on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<AuditChain>()?;
    m.add_class::<AuditSigningKey>()?;
    m.add_class::<AuditPublicKey>()?;
    m.add_class::<AuditContentKey>()?;
    m.add_function(wrap_pyfunction!(audit_keygen, m)?)?;
    m.add_function(wrap_pyfunction!(audit_segment_name, m)?)?;
    m.add_function(wrap_pyfunction!(audit_verify_dir, m)?)?;
    Ok(())
}
