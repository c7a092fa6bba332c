//! `KvLedger`: per-tenant KV-cache block budgets (`bastion_core::kvbudget`) for the tenant-aware
//! scheduler. Every method is O(1) except `snapshot` and `step_fits`
//! (O(tenants)); errors (unknown slot, underflow, reservation
//! over capacity) raise `bastion.errors.InvalidArgument` and change nothing.

use std::sync::Mutex;

use bastion_core::kvbudget;
use bastion_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::NativeError;

/// The block ledger of one KV-cache pool. Tenants are small integer slots from `register`.
#[pyclass(frozen, module = "bastion._native")]
pub(crate) struct KvLedger {
    state: Mutex<kvbudget::KvLedger>,
}

impl KvLedger {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut kvbudget::KvLedger) -> Result<T, CoreError>,
    ) -> Result<T, NativeError> {
        let mut g = self.state.lock().map_err(|_| CoreError::AlreadyFinalized)?;
        Ok(f(&mut g)?)
    }
}

#[pymethods]
impl KvLedger {
    #[new]
    fn new(capacity: u64) -> Self {
        KvLedger {
            state: Mutex::new(kvbudget::KvLedger::new(capacity)),
        }
    }

    /// Register `key` or update its limits; returns its slot.
    fn register(&self, key: &str, reserved: u64, cap: u64) -> Result<usize, NativeError> {
        self.with(|l| l.register(key, reserved, cap))
    }

    fn slot(&self, key: &str) -> Result<Option<usize>, NativeError> {
        self.with(|l| Ok(l.slot(key)))
    }

    /// None if `n` more blocks would pass the cap, else the blocks to keep free for the others.
    fn admit_gate(&self, slot: usize, n: u64) -> Result<Option<u64>, NativeError> {
        self.with(|l| l.admit_gate(slot, n))
    }

    fn can_admit(&self, slot: usize, n: u64, free: u64) -> Result<bool, NativeError> {
        self.with(|l| l.can_admit(slot, n, free))
    }

    fn others_unused(&self, slot: usize) -> Result<u64, NativeError> {
        self.with(|l| l.others_unused(slot))
    }

    fn on_allocate(&self, slot: usize, n: u64) -> Result<(), NativeError> {
        self.with(|l| l.on_allocate(slot, n))
    }

    fn on_free(&self, slot: usize, n: u64) -> Result<(), NativeError> {
        self.with(|l| l.on_free(slot, n))
    }

    fn on_cache(&self, slot: usize, n: u64) -> Result<(), NativeError> {
        self.with(|l| l.on_cache(slot, n))
    }

    fn on_uncache(&self, slot: usize, n: u64) -> Result<(), NativeError> {
        self.with(|l| l.on_uncache(slot, n))
    }

    fn on_evict(&self, slot: usize, n: u64) -> Result<(), NativeError> {
        self.with(|l| l.on_evict(slot, n))
    }

    /// A request of `slot` now holds a charge.
    fn open_request(&self, slot: usize) -> Result<(), NativeError> {
        self.with(|l| l.open_request(slot))
    }

    /// A request of `slot` released its charge.
    fn close_request(&self, slot: usize) -> Result<(), NativeError> {
        self.with(|l| l.close_request(slot))
    }

    /// Whether a step growing each open request by at most `per_request` blocks, plus `fixed`
    /// in all, keeps every cap and leaves every unused reservation within `free` blocks.
    fn step_fits(&self, per_request: u64, fixed: u64, free: u64) -> Result<bool, NativeError> {
        self.with(|l| Ok(l.step_fits(per_request, fixed, free)))
    }

    fn on_preempt(&self, slot: usize) -> Result<(), NativeError> {
        self.with(|l| l.on_preempt(slot))
    }

    fn held(&self, slot: usize) -> Result<u64, NativeError> {
        self.with(|l| l.held(slot))
    }

    fn over_reservation(&self, slot: usize) -> Result<bool, NativeError> {
        self.with(|l| l.over_reservation(slot))
    }

    /// Whether one more cached block of `slot` may be evicted, `pending` being chosen already.
    fn evictable(&self, slot: usize, pending: u64) -> Result<bool, NativeError> {
        self.with(|l| l.evictable(slot, pending))
    }

    fn at_cap(&self, slot: usize) -> Result<bool, NativeError> {
        self.with(|l| l.at_cap(slot))
    }

    /// `{tenant_key: {reserved, cap, held, cached, preemptions, evictions}}`.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let tenants = self.with(|l| Ok(l.snapshot().to_vec()))?;
        let out = PyDict::new(py);
        for t in tenants {
            let d = PyDict::new(py);
            d.set_item("reserved", t.reserved)?;
            d.set_item("cap", t.cap)?;
            d.set_item("held", t.held)?;
            d.set_item("cached", t.cached)?;
            d.set_item("preemptions", t.preemptions)?;
            d.set_item("evictions", t.evictions)?;
            out.set_item(t.key, d)?;
        }
        Ok(out)
    }

    #[getter]
    fn capacity(&self) -> Result<u64, NativeError> {
        self.with(|l| Ok(l.capacity()))
    }

    #[getter]
    fn total_held(&self) -> Result<u64, NativeError> {
        self.with(|l| Ok(l.total_held()))
    }

    #[getter]
    fn total_unused(&self) -> Result<u64, NativeError> {
        self.with(|l| Ok(l.total_unused()))
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<KvLedger>()
}
