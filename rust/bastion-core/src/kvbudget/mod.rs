//! Per-tenant KV-cache block budgets (SC-4): the ledger behind the tenant-aware scheduler.
//!
//! Tenants are small integer slots. Each has a guaranteed reservation and a burst cap (0 = none)
//! and three counters: `held` (blocks charged to its running requests), `cached` (free but
//! still-hashed blocks it owns, i.e. eviction candidates) and the preemption/eviction tallies.
//! Every operation is O(1): the sum of all tenants' unused reservation is kept up to date, so
//! "what must stay free for the others" needs no scan.
//!
//! Rules the scheduler builds on:
//! - admission: `held + n <= cap` (if capped) and `n + others_unused <= free`, so admitting one
//!   tenant never eats into another tenant's unused reservation;
//! - eviction: a cached block is protected while its owner's `held + cached <= reserved`;
//! - preemption victims come from tenants over their reservation first.
//!
//! Reservations are first come: registering (or raising) a reservation that would make the sum
//! of reservations exceed the pool capacity is refused.

use std::collections::HashMap;

use crate::CoreError;

/// A tenant's budget and counters, as reported by [`KvLedger::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStats {
    /// The opaque tenant key.
    pub key: String,
    /// Guaranteed reservation in blocks.
    pub reserved: u64,
    /// Burst cap in blocks (0 = no cap).
    pub cap: u64,
    /// Blocks charged to the tenant's requests.
    pub held: u64,
    /// Free, still-cached blocks the tenant owns.
    pub cached: u64,
    /// Requests of this tenant preempted so far.
    pub preemptions: u64,
    /// Cached blocks of this tenant evicted so far.
    pub evictions: u64,
    /// Requests of this tenant holding a charge (running, or holding blocks while waiting).
    pub requests: u64,
}

impl TenantStats {
    fn unused(&self) -> u64 {
        self.reserved.saturating_sub(self.held)
    }
}

/// The ledger: one per block pool.
#[derive(Debug)]
pub struct KvLedger {
    capacity: u64,
    tenants: Vec<TenantStats>,
    slots: HashMap<String, usize>,
    total_reserved: u64,
    total_held: u64,
    total_unused: u64,
    total_requests: u64,
}

fn invalid(field: &'static str, problem: &str) -> CoreError {
    CoreError::InvalidArgument {
        field,
        problem: problem.into(),
    }
}

impl KvLedger {
    /// A ledger for a pool of `capacity` blocks.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            tenants: Vec::new(),
            slots: HashMap::new(),
            total_reserved: 0,
            total_held: 0,
            total_unused: 0,
            total_requests: 0,
        }
    }

    /// The pool capacity in blocks.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Register `key` (or update its limits) and return its slot. Refused, changing nothing, when
    /// `reserved > cap` (with a cap) or the reservations would exceed the capacity.
    pub fn register(&mut self, key: &str, reserved: u64, cap: u64) -> Result<usize, CoreError> {
        if cap != 0 && reserved > cap {
            return Err(invalid("reserved", "must not exceed the cap"));
        }
        let old = self.slots.get(key).map_or(0, |&s| self.tenants[s].reserved);
        let total = self.total_reserved - old + reserved;
        if total > self.capacity {
            return Err(invalid(
                "reserved",
                "reservations would exceed the pool capacity",
            ));
        }
        let slot = match self.slots.get(key) {
            Some(&s) => s,
            None => {
                self.tenants.push(TenantStats {
                    key: key.to_owned(),
                    reserved: 0,
                    cap: 0,
                    held: 0,
                    cached: 0,
                    preemptions: 0,
                    evictions: 0,
                    requests: 0,
                });
                self.slots.insert(key.to_owned(), self.tenants.len() - 1);
                self.tenants.len() - 1
            }
        };
        let t = &mut self.tenants[slot];
        self.total_unused -= t.unused();
        t.reserved = reserved;
        t.cap = cap;
        self.total_unused += t.unused();
        self.total_reserved = total;
        Ok(slot)
    }

    /// The slot of `key`, if registered.
    pub fn slot(&self, key: &str) -> Option<usize> {
        self.slots.get(key).copied()
    }

    fn get(&self, slot: usize) -> Result<&TenantStats, CoreError> {
        self.tenants
            .get(slot)
            .ok_or_else(|| invalid("slot", "unknown tenant slot"))
    }

    fn get_mut(&mut self, slot: usize) -> Result<&mut TenantStats, CoreError> {
        self.tenants
            .get_mut(slot)
            .ok_or_else(|| invalid("slot", "unknown tenant slot"))
    }

    /// Blocks the other tenants may still claim under their reservations (to be kept free).
    pub fn others_unused(&self, slot: usize) -> Result<u64, CoreError> {
        Ok(self.total_unused - self.get(slot)?.unused())
    }

    /// `None` if `n` more blocks would take the tenant past its cap; otherwise how many free
    /// blocks must remain for the other tenants' reservations.
    pub fn admit_gate(&self, slot: usize, n: u64) -> Result<Option<u64>, CoreError> {
        let t = self.get(slot)?;
        if t.cap != 0 && t.held.saturating_add(n) > t.cap {
            return Ok(None);
        }
        Ok(Some(self.total_unused - t.unused()))
    }

    /// Whether `n` more blocks for `slot` fit its cap and leave the others' unused reservations
    /// within `free` blocks.
    pub fn can_admit(&self, slot: usize, n: u64, free: u64) -> Result<bool, CoreError> {
        Ok(self
            .admit_gate(slot, n)?
            .is_some_and(|keep| n.checked_add(keep).is_some_and(|need| need <= free)))
    }

    /// Charge `n` blocks to `slot`.
    pub fn on_allocate(&mut self, slot: usize, n: u64) -> Result<(), CoreError> {
        let t = self
            .tenants
            .get_mut(slot)
            .ok_or_else(|| invalid("slot", "unknown tenant slot"))?;
        let held = t
            .held
            .checked_add(n)
            .ok_or_else(|| invalid("n", "held block count overflow"))?;
        self.total_unused -= t.unused();
        t.held = held;
        self.total_unused += t.unused();
        self.total_held += n;
        Ok(())
    }

    /// Release `n` blocks charged to `slot`; refused (changing nothing) if it holds fewer.
    pub fn on_free(&mut self, slot: usize, n: u64) -> Result<(), CoreError> {
        let t = self
            .tenants
            .get_mut(slot)
            .ok_or_else(|| invalid("slot", "unknown tenant slot"))?;
        if n > t.held {
            return Err(invalid("n", "more blocks freed than held"));
        }
        self.total_unused -= t.unused();
        t.held -= n;
        self.total_unused += t.unused();
        self.total_held -= n;
        Ok(())
    }

    /// `n` blocks owned by `slot` became free but stay cached.
    pub fn on_cache(&mut self, slot: usize, n: u64) -> Result<(), CoreError> {
        let t = self.get_mut(slot)?;
        t.cached = t
            .cached
            .checked_add(n)
            .ok_or_else(|| invalid("n", "cached block count overflow"))?;
        Ok(())
    }

    /// `n` cached blocks of `slot` were reused by a prefix hit (no longer free).
    pub fn on_uncache(&mut self, slot: usize, n: u64) -> Result<(), CoreError> {
        let t = self.get_mut(slot)?;
        t.cached = t
            .cached
            .checked_sub(n)
            .ok_or_else(|| invalid("n", "more blocks uncached than cached"))?;
        Ok(())
    }

    /// `n` cached blocks of `slot` were evicted.
    pub fn on_evict(&mut self, slot: usize, n: u64) -> Result<(), CoreError> {
        let t = self.get_mut(slot)?;
        t.cached = t
            .cached
            .checked_sub(n)
            .ok_or_else(|| invalid("n", "more blocks evicted than cached"))?;
        t.evictions += n;
        Ok(())
    }

    /// A request of `slot` now holds a charge (counted by [`KvLedger::step_fits`]).
    pub fn open_request(&mut self, slot: usize) -> Result<(), CoreError> {
        let t = self.get_mut(slot)?;
        t.requests = t
            .requests
            .checked_add(1)
            .ok_or_else(|| invalid("slot", "request count overflow"))?;
        self.total_requests += 1;
        Ok(())
    }

    /// A request of `slot` no longer holds a charge; refused (changing nothing) if none is open.
    pub fn close_request(&mut self, slot: usize) -> Result<(), CoreError> {
        let t = self.get_mut(slot)?;
        t.requests = t
            .requests
            .checked_sub(1)
            .ok_or_else(|| invalid("slot", "no open request to close"))?;
        self.total_requests -= 1;
        Ok(())
    }

    /// Whether a step in which every open request grows by at most `per_request` blocks, plus
    /// `fixed` blocks over all (the step's token budget), keeps every tenant within its cap, leaves
    /// every tenant's unused reservation within `free` blocks, and cannot change whether any of a
    /// growing tenant's cached blocks is protected from eviction (its held + cached blocks either
    /// already above its reservation, or within it even after the growth). When it holds, that
    /// step's allocations need no per-allocation check and their charges may be settled after
    /// them: the bound is the check, made once per step.
    pub fn step_fits(&self, per_request: u64, fixed: u64, free: u64) -> bool {
        let grow = |requests: u64| requests.saturating_mul(per_request).saturating_add(fixed);
        if grow(self.total_requests).saturating_add(self.total_unused) > free {
            return false;
        }
        self.tenants.iter().all(|t| {
            if t.requests == 0 {
                return true; // nothing of this tenant's can grow in the step
            }
            let grown = t.held.saturating_add(grow(t.requests));
            let within_cap = t.cap == 0 || grown <= t.cap;
            let protection_fixed = t.cached == 0
                || t.held > t.reserved
                || grown.saturating_add(t.cached) <= t.reserved;
            within_cap && protection_fixed
        })
    }

    /// A request of `slot` was preempted.
    pub fn on_preempt(&mut self, slot: usize) -> Result<(), CoreError> {
        self.get_mut(slot)?.preemptions += 1;
        Ok(())
    }

    /// Blocks charged to `slot`.
    pub fn held(&self, slot: usize) -> Result<u64, CoreError> {
        Ok(self.get(slot)?.held)
    }

    /// Whether `slot` holds more than its reservation (first in line for preemption).
    pub fn over_reservation(&self, slot: usize) -> Result<bool, CoreError> {
        let t = self.get(slot)?;
        Ok(t.held > t.reserved)
    }

    /// Whether one more of `slot`'s cached blocks may be evicted, `pending` of them being chosen
    /// already: its held + remaining cached blocks exceed its reservation.
    pub fn evictable(&self, slot: usize, pending: u64) -> Result<bool, CoreError> {
        let t = self.get(slot)?;
        Ok(t.held.saturating_add(t.cached.saturating_sub(pending)) > t.reserved)
    }

    /// Whether `slot` has reached its cap (never, without one).
    pub fn at_cap(&self, slot: usize) -> Result<bool, CoreError> {
        let t = self.get(slot)?;
        Ok(t.cap != 0 && t.held >= t.cap)
    }

    /// Sum of `held` over all tenants.
    pub fn total_held(&self) -> u64 {
        self.total_held
    }

    /// Sum of the tenants' unused reservations.
    pub fn total_unused(&self) -> u64 {
        self.total_unused
    }

    /// Every tenant's budget and counters, in slot order.
    pub fn snapshot(&self) -> &[TenantStats] {
        &self.tenants
    }
}

#[cfg(test)]
mod tests;
