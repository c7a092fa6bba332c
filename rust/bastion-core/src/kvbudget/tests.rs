use proptest::prelude::*;

use super::*;

#[test]
fn cap_refuses_what_would_exceed_it() {
    let mut l = KvLedger::new(100);
    let a = l.register("a", 2, 5).unwrap();
    assert!(l.can_admit(a, 5, 100).unwrap());
    l.on_allocate(a, 4).unwrap();
    assert!(l.can_admit(a, 1, 100).unwrap());
    assert!(!l.can_admit(a, 2, 100).unwrap());
    assert_eq!(l.admit_gate(a, 2).unwrap(), None);
    l.on_allocate(a, 1).unwrap();
    assert!(l.at_cap(a).unwrap());
    assert!(l.over_reservation(a).unwrap());
}

#[test]
fn admission_keeps_other_tenants_unused_reservation_free() {
    let mut l = KvLedger::new(20);
    let a = l.register("a", 0, 0).unwrap();
    let b = l.register("b", 6, 0).unwrap();
    assert_eq!(l.others_unused(a).unwrap(), 6);
    assert_eq!(l.others_unused(b).unwrap(), 0);
    // 10 free blocks: a may take 4, not 5; b may take all 10 (its own reservation is no obstacle).
    assert!(l.can_admit(a, 4, 10).unwrap());
    assert!(!l.can_admit(a, 5, 10).unwrap());
    assert!(l.can_admit(b, 10, 10).unwrap());
    l.on_allocate(b, 4).unwrap();
    assert_eq!(l.others_unused(a).unwrap(), 2);
    l.on_allocate(b, 4).unwrap();
    assert_eq!(l.others_unused(a).unwrap(), 0);
    assert_eq!(l.total_unused(), 0);
    l.on_free(b, 8).unwrap();
    assert_eq!(l.total_unused(), 6);
}

#[test]
fn reservations_cannot_exceed_capacity_or_cap() {
    let mut l = KvLedger::new(10);
    l.register("a", 6, 0).unwrap();
    assert!(l.register("b", 5, 0).is_err());
    assert!(l.slot("b").is_none());
    assert!(l.register("b", 4, 0).is_ok());
    // lowering a's reservation makes room; raising it past the capacity is refused unchanged
    assert!(l.register("a", 7, 0).is_err());
    assert_eq!(l.snapshot()[0].reserved, 6);
    l.register("a", 1, 0).unwrap();
    l.register("b", 9, 0).unwrap();
    assert!(l.register("c", 3, 2).is_err());
}

#[test]
fn updating_limits_keeps_the_unused_total_exact() {
    let mut l = KvLedger::new(50);
    let a = l.register("a", 10, 0).unwrap();
    l.on_allocate(a, 4).unwrap();
    assert_eq!(l.total_unused(), 6);
    assert_eq!(l.register("a", 3, 8).unwrap(), a);
    assert_eq!(l.total_unused(), 0);
    assert!(!l.can_admit(a, 5, 50).unwrap());
}

#[test]
fn free_more_than_held_is_refused_unchanged() {
    let mut l = KvLedger::new(10);
    let a = l.register("a", 0, 0).unwrap();
    l.on_allocate(a, 3).unwrap();
    assert!(l.on_free(a, 4).is_err());
    assert_eq!(l.held(a).unwrap(), 3);
    assert_eq!(l.total_held(), 3);
    assert!(l.held(7).is_err());
    assert!(l.on_allocate(7, 1).is_err());
}

#[test]
fn cached_blocks_are_protected_within_the_reservation() {
    let mut l = KvLedger::new(20);
    let b = l.register("b", 4, 0).unwrap();
    l.on_allocate(b, 3).unwrap();
    l.on_free(b, 3).unwrap();
    l.on_cache(b, 3).unwrap();
    assert!(!l.evictable(b, 0).unwrap());
    l.on_cache(b, 2).unwrap();
    assert!(l.evictable(b, 0).unwrap());
    assert!(!l.evictable(b, 1).unwrap());
    l.on_evict(b, 1).unwrap();
    assert!(!l.evictable(b, 0).unwrap());
    l.on_uncache(b, 4).unwrap();
    assert!(l.on_evict(b, 1).is_err());
    assert_eq!(l.snapshot()[0].evictions, 1);
    l.on_preempt(b).unwrap();
    assert_eq!(l.snapshot()[0].preemptions, 1);
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize, u64),
    Free(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..4, 0u64..8).prop_map(|(t, n)| Op::Alloc(t, n)),
        (0usize..4, 0u64..8).prop_map(|(t, n)| Op::Free(t, n)),
    ]
}

proptest! {
    #[test]
    fn gated_allocation_keeps_the_invariants(
        limits in proptest::collection::vec((0u64..10, 0u64..20), 4),
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        const CAP: u64 = 64;
        let mut l = KvLedger::new(CAP);
        let mut slots = Vec::new();
        for (i, &(reserved, cap)) in limits.iter().enumerate() {
            let cap = if cap == 0 { 0 } else { cap.max(reserved) };
            slots.push(l.register(&format!("t{i}"), reserved, cap).unwrap());
        }
        let mut model = [0u64; 4];
        for o in ops {
            let allocated: u64 = model.iter().sum();
            let free = CAP - allocated;
            match o {
                Op::Alloc(t, n) => {
                    if l.can_admit(slots[t], n, free).unwrap() {
                        l.on_allocate(slots[t], n).unwrap();
                        model[t] += n;
                    }
                }
                Op::Free(t, n) => {
                    let ok = l.on_free(slots[t], n).is_ok();
                    prop_assert_eq!(ok, n <= model[t]);
                    if ok { model[t] -= n; }
                }
            }
            let mut unused = 0;
            for (t, s) in slots.iter().enumerate() {
                let st = &l.snapshot()[*s];
                prop_assert_eq!(st.held, model[t]);
                prop_assert!(st.cap == 0 || st.held <= st.cap);
                unused += st.reserved.saturating_sub(st.held);
            }
            prop_assert_eq!(l.total_held(), model.iter().sum::<u64>());
            prop_assert!(l.total_held() <= CAP);
            prop_assert_eq!(l.total_unused(), unused);
            // every tenant can still reach its reservation out of what is free
            for (t, s) in slots.iter().enumerate() {
                let want = l.snapshot()[*s].reserved.saturating_sub(model[t]);
                let free = CAP - model.iter().sum::<u64>();
                prop_assert!(want <= free);
            }
        }
    }
}

#[test]
fn request_counts_refuse_closing_more_than_opened() {
    let mut l = KvLedger::new(16);
    let s = l.register("a", 0, 0).unwrap();
    l.open_request(s).unwrap();
    l.close_request(s).unwrap();
    assert!(l.close_request(s).is_err());
    assert_eq!(l.snapshot()[s].requests, 0);
    assert!(l.open_request(7).is_err());
}

#[test]
fn step_bound_counts_caps_and_every_unused_reservation() {
    let mut l = KvLedger::new(100);
    let a = l.register("a", 10, 20).unwrap();
    let b = l.register("b", 30, 0).unwrap();
    l.open_request(a).unwrap();
    l.open_request(a).unwrap();
    l.on_allocate(a, 12).unwrap();
    // a holds more than its reservation: nothing of its is unused
    assert_eq!(l.others_unused(b).unwrap(), 0);
    // a: 12 held, 2 requests; growing 2 each + 4 fixed = 8 -> 20 <= cap 20
    assert!(l.step_fits(2, 4, 100));
    // 21 > cap
    assert!(!l.step_fits(2, 5, 100));
    // unused reservations: a 0, b 30; growth 8 + 30 must fit in free
    assert!(l.step_fits(2, 4, 38));
    assert!(!l.step_fits(2, 4, 37));
    // a tenant without open requests cannot grow in a step: its cap is not in the bound
    let c = l.register("c", 0, 1).unwrap();
    l.on_allocate(c, 1).unwrap();
    assert!(l.step_fits(2, 4, 100));
    l.open_request(c).unwrap();
    assert!(!l.step_fits(0, 1, 100));
}

#[test]
fn step_bound_refuses_a_step_that_could_change_an_eviction_protection() {
    let mut l = KvLedger::new(100);
    let a = l.register("a", 10, 0).unwrap();
    l.open_request(a).unwrap();
    l.on_allocate(a, 4).unwrap();
    l.on_cache(a, 3).unwrap();
    // 4 held + 3 cached within 10; growing 1 + 2 keeps them within: protected before and after
    assert!(l.step_fits(1, 2, 100));
    // growing 1 + 3 could take them past 10: an allocation in the step would see them unprotected
    assert!(!l.step_fits(1, 3, 100));
    // above the reservation already: unprotected before and after, whatever the growth
    l.on_allocate(a, 7).unwrap();
    assert!(l.step_fits(1, 50, 100));
}

proptest! {
    #[test]
    fn a_step_within_the_bound_keeps_caps_and_reservations(
        limits in proptest::collection::vec((0u64..10, 0u64..40, 0u64..4, 0u64..12), 4),
        per_request in 1u64..3,
        fixed in 0u64..6,
        growth in proptest::collection::vec(0u64..100, 16),
    ) {
        const CAP: u64 = 128;
        let mut l = KvLedger::new(CAP);
        let mut slots = Vec::new();
        let mut held = [0u64; 4];
        for (i, &(reserved, cap, requests, h)) in limits.iter().enumerate() {
            let cap = if cap == 0 { 0 } else { cap.max(reserved) };
            let s = l.register(&format!("t{i}"), reserved, cap).unwrap();
            for _ in 0..requests { l.open_request(s).unwrap(); }
            let h = if cap == 0 { h } else { h.min(cap) };
            l.on_allocate(s, h).unwrap();
            held[i] = h;
            slots.push((s, requests));
        }
        let used: u64 = held.iter().sum();
        prop_assume!(used <= CAP);
        let free = CAP - used;
        if !l.step_fits(per_request, fixed, free) {
            return Ok(());
        }
        // any growth within the bound: each request at most per_request, plus `fixed` shared
        let mut spare = fixed;
        let mut g = growth.into_iter();
        let mut grown = [0u64; 4];
        for (i, &(_, requests)) in slots.iter().enumerate() {
            for _ in 0..requests {
                let want = g.next().unwrap_or(0) % (per_request + spare + 1);
                let extra = want.saturating_sub(per_request).min(spare);
                spare -= extra;
                grown[i] += want.min(per_request) + extra;
            }
        }
        let total: u64 = grown.iter().sum();
        prop_assert!(total <= free);
        for (i, &(s, _)) in slots.iter().enumerate() {
            l.on_allocate(s, grown[i]).unwrap();
            let st = &l.snapshot()[s];
            prop_assert!(st.cap == 0 || st.held <= st.cap);
        }
        // every tenant can still reach its reservation out of what is left free
        let left = free - total;
        for (i, &(s, _)) in slots.iter().enumerate() {
            let st = &l.snapshot()[s];
            prop_assert!(st.reserved.saturating_sub(held[i] + grown[i]) <= left);
        }
    }
}
