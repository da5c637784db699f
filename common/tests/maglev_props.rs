//! Property tests of the Maglev table builder (`lb_common::maglev`).
//!
//! Balance tolerance: for each backend with weight `w > 0`, `expected = M * w / W` (M the
//! table size, W the total weight). The builder guarantees `|count - expected| < 1` slot
//! whenever every expected share is at least one slot, and the tests check that, plus the
//! issue's "within 1% of its weighted share" as `|count - expected| / expected <= 0.01`, for
//! every backend whose expected share is at least 100 slots (below that, rounding to whole
//! slots alone can exceed 1%; at M = 65537 this covers up to 655 equal backends).
//!
//! Disruption bound: removing (adding) one backend must move at most the slots it owned
//! (gets) plus a churn among the others of `(0.1 + 0.01 * n) / n` of the table, n the number
//! of backends before the change. Measured at M = 65537 (`cargo xtask bench maglev`), the
//! churn is ~0.05/n at n = 10 and ~0.7/n at n = 100 (total factor ~1.6 of the ideal 1/n with
//! equal weights; the bound allows 2.1).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

use lb_common::maglev::{
    DEFAULT_TABLE_SIZE, MaglevBackend, MaglevError, NO_BACKEND, build, disruption, is_prime,
    max_balance_deviation,
};
use proptest::prelude::*;

const M: u32 = DEFAULT_TABLE_SIZE;

/// Unique backend names, 1..=`max` of them.
fn names(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set("[a-z][a-z0-9.-]{0,15}", 1..=max)
        .prop_map(|s| s.into_iter().collect())
}

/// Backends with unique names, ids not equal to their position, and weights from `weight`.
fn backends(
    max: usize,
    weight: impl Strategy<Value = u32> + Clone,
) -> impl Strategy<Value = Vec<MaglevBackend>> {
    names(max).prop_flat_map(move |names| {
        let n = names.len();
        prop::collection::vec(weight.clone(), n).prop_map(move |weights| {
            names
                .iter()
                .zip(weights)
                .enumerate()
                .map(|(i, (name, w))| MaglevBackend::new(i as u32 * 7 + 3, name.clone(), w))
                .collect()
        })
    })
}

fn counts(table: &[u32]) -> HashMap<u32, u64> {
    let mut c = HashMap::new();
    for &id in table {
        *c.entry(id).or_default() += 1;
    }
    c
}

/// Checks the balance guarantees documented at the top of this file; `percent_for_all`
/// requires the 1% bound of every backend (the caller knows all shares are >= 100 slots).
fn assert_balanced(backends: &[MaglevBackend], table: &[u32], percent_for_all: bool) {
    let c = counts(table);
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    for b in backends.iter().filter(|b| b.weight > 0) {
        let expected = table.len() as f64 * f64::from(b.weight) / total as f64;
        let count = c.get(&b.id).copied().unwrap_or(0) as f64;
        let error = (count - expected).abs();
        assert!(
            error < 1.0,
            "{}: {count} slots, expected {expected}",
            b.name
        );
        if expected >= 100.0 || percent_for_all {
            assert!(
                error / expected <= 0.01,
                "{}: {count} slots, expected {expected}",
                b.name
            );
        }
    }
}

/// Most slots that may move when the set of `n` backends changes by `ideal` of the table.
///
/// Maglev is not perfectly minimal: besides the changed backend's own slots, some slots
/// move between unchanged backends, more so as n/M grows (plain unweighted Maglev moves
/// about 1.6x the ideal at n = 100, M = 65537, and single sets reach about 2.1x around
/// n = 44). With weights, a change to a light backend still changes every other backend's
/// quota, so the slots moving between the others scale with an equal share (1/n), not
/// with the changed backend's own share: removing a weight-1 backend of 34 (1% of the
/// slots) moved 3.4% (the case in `maglev_props.proptest-regressions`, found by CI). The
/// bound allows 2.5x the larger of the two plus 0.5% of the table: the issue's "little
/// more than that gateway's 1/N". (1,500 random cases each of removing, adding and
/// reweighting, n up to 100, weights 1-6: at most 57% of this bound.)
fn disruption_bound(n: usize, ideal: f64) -> f64 {
    2.5 * ideal.max(1.0 / n as f64) + 0.005
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn equal_weights_within_one_percent(backends in backends(100, Just(1u32))) {
        let table = build(&backends, M).unwrap();
        assert_eq!(table.len(), M as usize);
        assert_balanced(&backends, &table, true);
        prop_assert!(max_balance_deviation(&backends, &table) <= 0.01);
    }

    #[test]
    fn mixed_weights_within_one_slot(backends in backends(100, 1u32..=10)) {
        // Smallest share: 65537 / (100 * 10) = 65 slots, so the one-slot bound applies to
        // all and the 1% bound to those of 100 slots or more.
        let table = build(&backends, M).unwrap();
        assert_balanced(&backends, &table, false);
    }

    #[test]
    fn mixed_weights_within_one_percent(backends in backends(100, 1u32..=6)) {
        // Smallest share: 65537 / (100 * 6) = 109 slots.
        let table = build(&backends, M).unwrap();
        assert_balanced(&backends, &table, true);
        prop_assert!(max_balance_deviation(&backends, &table) <= 0.01);
    }

    #[test]
    fn large_weights_within_one_slot(backends in backends(20, 1u32..=1_000_000)) {
        let table = build(&backends, M).unwrap();
        let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        let min = backends.iter().map(|b| b.weight).min().unwrap();
        prop_assume!(u64::from(M) * u64::from(min) >= total);
        assert_balanced(&backends, &table, false);
    }

    #[test]
    fn zero_weight_never_owns_a_slot_and_positive_always_does(
        backends in backends(60, prop_oneof![Just(0u32), 1u32..=1000, Just(u32::MAX)])
    ) {
        let table = build(&backends, M).unwrap();
        let c = counts(&table);
        if backends.iter().all(|b| b.weight == 0) {
            prop_assert!(table.iter().all(|&id| id == NO_BACKEND));
        } else {
            prop_assert!(!c.contains_key(&NO_BACKEND));
            for b in &backends {
                prop_assert_eq!(c.contains_key(&b.id), b.weight > 0, "{}", b.name);
            }
            prop_assert_eq!(c.len(), backends.iter().filter(|b| b.weight > 0).count());
        }
    }

    #[test]
    fn order_independent_and_deterministic(
        (backends, shuffled) in backends(100, 0u32..=10)
            .prop_flat_map(|b| (Just(b.clone()), Just(b).prop_shuffle()))
    ) {
        let table = build(&backends, M).unwrap();
        prop_assert_eq!(&table, &build(&backends, M).unwrap());
        prop_assert!(table == build(&shuffled, M).unwrap());
    }

    #[test]
    fn removing_one_backend_moves_little(
        (backends, victim) in backends(100, 1u32..=6)
            .prop_filter("at least two backends", |b| b.len() >= 2)
            .prop_flat_map(|b| { let n = b.len(); (Just(b), 0..n) })
    ) {
        let before = build(&backends, M).unwrap();
        let mut fewer = backends.clone();
        let removed = fewer.remove(victim);
        let after = build(&fewer, M).unwrap();
        let owned = before.iter().filter(|&&id| id == removed.id).count() as f64 / f64::from(M);
        let moved = disruption(&before, &after);
        prop_assert!(moved >= owned);
        prop_assert!(
            moved <= disruption_bound(backends.len(), owned),
            "n = {}, moved {moved}, owned {owned}", backends.len()
        );
    }

    #[test]
    fn adding_one_backend_moves_little(
        backends in backends(100, 1u32..=6),
        weight in 1u32..=6,
    ) {
        let before = build(&backends, M).unwrap();
        let mut more = backends.clone();
        more.push(MaglevBackend::new(1, "Added", weight));
        let after = build(&more, M).unwrap();
        let gained = after.iter().filter(|&&id| id == 1).count() as f64 / f64::from(M);
        let moved = disruption(&before, &after);
        prop_assert!(moved >= gained);
        prop_assert!(
            moved <= disruption_bound(backends.len(), gained),
            "n = {}, moved {moved}, gained {gained}", backends.len()
        );
    }

    #[test]
    fn changing_one_weight_moves_little(
        (backends, index, weight) in backends(100, 1u32..=6)
            .prop_flat_map(|b| { let n = b.len(); (Just(b), 0..n, 1u32..=12) })
    ) {
        let before = build(&backends, M).unwrap();
        let mut changed = backends.clone();
        changed[index].weight = weight;
        let after = build(&changed, M).unwrap();
        let id = backends[index].id;
        let owned = |t: &[u32]| t.iter().filter(|&&x| x == id).count();
        let delta = owned(&after).abs_diff(owned(&before)) as f64 / f64::from(M);
        let moved = disruption(&before, &after);
        prop_assert!(moved >= delta);
        prop_assert!(
            moved <= disruption_bound(backends.len(), delta),
            "n = {}, moved {moved}, share change {delta}", backends.len()
        );
    }

    #[test]
    fn non_prime_sizes_are_rejected(size in 0u32..200_000) {
        let result = build(&[MaglevBackend::new(0, "a", 1)], size);
        if is_prime(size) && size > 1 {
            prop_assert_eq!(result.unwrap().len(), size as usize);
        } else {
            prop_assert_eq!(result, Err(MaglevError::NotPrime { table_size: size }));
        }
    }
}

#[test]
fn is_prime_agrees_with_a_sieve() {
    const LIMIT: usize = 200_000;
    let mut composite = vec![false; LIMIT];
    for i in 2..LIMIT {
        if !composite[i] {
            for j in (i * i..LIMIT).step_by(i) {
                composite[j] = true;
            }
        }
    }
    for (n, &c) in composite.iter().enumerate() {
        assert_eq!(is_prime(n as u32), n >= 2 && !c, "{n}");
    }
}

#[test]
fn empty_set_gives_no_backend_everywhere() {
    assert_eq!(build(&[], M).unwrap(), vec![NO_BACKEND; M as usize]);
    assert_eq!(build(&[], 2).unwrap(), vec![NO_BACKEND; 2]);
}

#[test]
fn all_zero_weights_give_no_backend_everywhere() {
    let backends: Vec<_> = (0..10)
        .map(|i| MaglevBackend::new(i, format!("gw-{i}"), 0))
        .collect();
    assert_eq!(build(&backends, M).unwrap(), vec![NO_BACKEND; M as usize]);
}

#[test]
fn single_backend_owns_everything() {
    let table = build(&[MaglevBackend::new(5, "only", 3)], 7).unwrap();
    assert_eq!(table, [5; 7]);
}

#[test]
fn table_size_must_exceed_backend_count() {
    let backends: Vec<_> = (0..5)
        .map(|i| MaglevBackend::new(i, format!("gw-{i}"), u32::from(i == 0)))
        .collect();
    // Weight-0 backends count: validity must not change when a backend is drained.
    assert_eq!(
        build(&backends, 5),
        Err(MaglevError::TableTooSmall {
            table_size: 5,
            backends: 5
        })
    );
    let table = build(&backends, 7).unwrap();
    assert_eq!(table, [0; 7]);
}

#[test]
fn every_backend_owns_a_slot_in_the_smallest_table() {
    // n backends at the smallest prime above n: everyone still gets a slot.
    let backends: Vec<_> = (0..12)
        .map(|i| MaglevBackend::new(i, format!("gw-{i}"), 1 + i * 1000))
        .collect();
    let table = build(&backends, 13).unwrap();
    let c = counts(&table);
    assert_eq!(c.len(), 12);
}

#[test]
fn duplicate_errors_do_not_depend_on_order() {
    let mut backends = vec![
        MaglevBackend::new(1, "b", 1),
        MaglevBackend::new(2, "a", 1),
        MaglevBackend::new(1, "c", 1),
    ];
    let expected = Err(MaglevError::DuplicateId {
        id: 1,
        first: "b".into(),
        second: "c".into(),
    });
    assert_eq!(build(&backends, M), expected);
    backends.reverse();
    assert_eq!(build(&backends, M), expected);
}

#[test]
fn equal_sets_balance_for_any_naming_scheme() {
    // Different naming schemes give comparably balanced tables.
    for prefix in ["gw-", "node", "10.0.0."] {
        let backends: BTreeSet<String> = (0..100).map(|i| format!("{prefix}{i}")).collect();
        let backends: Vec<_> = backends
            .into_iter()
            .zip(0..)
            .map(|(name, id)| MaglevBackend::new(id, name, 1))
            .collect();
        let table = build(&backends, M).unwrap();
        assert!(max_balance_deviation(&backends, &table) <= 0.01);
    }
}
