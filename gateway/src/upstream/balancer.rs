//! Load-balancing algorithms: pick one available member of a pool.
//!
//! Every algorithm first narrows the pool to the candidates: members that are available
//! (healthy and not ejected), below `max_requests_per_member` requests in flight when the
//! pool sets it, and not excluded (a retry goes to another member when one is available).
//! Then:
//!
//! - `round_robin`: candidates in turn, ignoring weights;
//! - `weighted_round_robin`: smooth weighted round robin (nginx), spreading heavy members;
//! - `least_connections`: fewest in-flight requests relative to weight, ties in turn;
//! - `p2c_ewma`: two random candidates, the one with lower latency EWMA x (in-flight + 1) /
//!   weight wins (members without a sample cost 0, so new members get traffic);
//! - `consistent_hash`: a ring with virtual nodes proportional to weight; the key's owner,
//!   or the next available member clockwise.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::config::Algorithm;
use crate::entropy;

use super::member::Member;

const VNODES_PER_WEIGHT: u32 = 40;
const MAX_VNODES_PER_MEMBER: u32 = 4000;

/// A balancer for one pool (built once per snapshot).
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    next: AtomicUsize,
    /// Smooth WRR current weights, indexed like the members.
    wrr: Mutex<Vec<i64>>,
    /// Consistent-hash ring of (point, member index), sorted by point.
    ring: Vec<(u64, usize)>,
    /// `max_requests_per_member` (`u64::MAX`: none): a member with this many requests in
    /// flight is no candidate.
    limit: u64,
}

impl Balancer {
    /// Builds the balancer for `members` (the ring depends on their addresses and weights).
    pub fn new(algorithm: Algorithm, members: &[std::sync::Arc<Member>]) -> Self {
        let ring = if matches!(algorithm, Algorithm::ConsistentHash(_)) {
            let mut ring = Vec::new();
            for (i, m) in members.iter().enumerate() {
                let vnodes = m
                    .weight
                    .saturating_mul(VNODES_PER_WEIGHT)
                    .min(MAX_VNODES_PER_MEMBER);
                for v in 0..vnodes {
                    let point = entropy::stable_hash(format!("{}#{v}", m.address).as_bytes());
                    ring.push((point, i));
                }
            }
            ring.sort_unstable();
            ring
        } else {
            Vec::new()
        };
        Self {
            algorithm,
            next: AtomicUsize::new(entropy::below(members.len().max(1))),
            wrr: Mutex::new(vec![0; members.len()]),
            ring,
            limit: u64::MAX,
        }
    }

    /// The same balancer, with members at `limit` requests in flight passed over.
    #[must_use]
    pub fn with_member_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit.unwrap_or(u64::MAX);
        self
    }

    /// Picks a member index. `hash_key` is used by `consistent_hash` (a missing key picks at
    /// random); `exclude` lists members already tried by this request. `None`: no member is
    /// available, or every available one is at the member limit.
    pub fn pick(
        &self,
        members: &[std::sync::Arc<Member>],
        hash_key: Option<u64>,
        exclude: &[usize],
        now: Instant,
    ) -> Option<usize> {
        // The candidates on the stack for the usual handful of members (this runs for every
        // attempt); a larger pool uses the heap.
        let mut inline = [0usize; INLINE_CANDIDATES];
        let mut heap = Vec::new();
        let buf: &mut [usize] = if members.len() <= INLINE_CANDIDATES {
            &mut inline
        } else {
            heap.resize(members.len(), 0);
            &mut heap
        };
        let n = candidates(members, exclude, now, self.limit, buf);
        let candidates = &buf[..n];
        if candidates.is_empty() {
            return None;
        }
        let pick = match &self.algorithm {
            Algorithm::RoundRobin => {
                candidates[self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()]
            }
            Algorithm::WeightedRoundRobin => self.smooth_wrr(members, candidates),
            Algorithm::LeastConnections => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let n = candidates.len();
                (0..n)
                    .map(|k| candidates[(start + k) % n])
                    .min_by(|&a, &b| {
                        let (ma, mb) = (&members[a], &members[b]);
                        // in_flight_a / w_a < in_flight_b / w_b without division.
                        (u128::from(ma.in_flight()) * u128::from(mb.weight))
                            .cmp(&(u128::from(mb.in_flight()) * u128::from(ma.weight)))
                    })
                    .unwrap_or(candidates[0])
            }
            Algorithm::P2cEwma => {
                let n = candidates.len();
                if n == 1 {
                    candidates[0]
                } else {
                    let a = entropy::below(n);
                    let b = (a + 1 + entropy::below(n - 1)) % n;
                    let cost = |i: usize| {
                        let m = &members[i];
                        u128::from(m.ewma_micros()) * u128::from(m.in_flight() + 1) * 1000
                            / u128::from(m.weight.max(1))
                    };
                    let (ia, ib) = (candidates[a], candidates[b]);
                    if cost(ib) < cost(ia) { ib } else { ia }
                }
            }
            Algorithm::ConsistentHash(_) => match hash_key {
                None => candidates[entropy::below(candidates.len())],
                Some(key) => self.ring_lookup(key, candidates).unwrap_or(candidates[0]),
            },
        };
        Some(pick)
    }

    fn smooth_wrr(&self, members: &[std::sync::Arc<Member>], candidates: &[usize]) -> usize {
        let mut current = self
            .wrr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: i64 = candidates
            .iter()
            .map(|&i| i64::from(members[i].weight))
            .sum();
        let mut best = candidates[0];
        for &i in candidates {
            current[i] += i64::from(members[i].weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        best
    }

    fn ring_lookup(&self, key: u64, candidates: &[usize]) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|(p, _)| *p < key);
        (0..self.ring.len())
            .map(|k| self.ring[(start + k) % self.ring.len()].1)
            .find(|i| candidates.contains(i))
    }
}

/// Members picked from without an allocation (see [`Balancer::pick`]).
const INLINE_CANDIDATES: usize = 16;

/// Writes the indexes of the available members below `limit` requests in flight and not in
/// `exclude` to `buf` (all such members if every one of them is excluded) and returns how
/// many. `buf` holds at least `members.len()` entries.
fn candidates(
    members: &[std::sync::Arc<Member>],
    exclude: &[usize],
    now: Instant,
    limit: u64,
    buf: &mut [usize],
) -> usize {
    let mut available = 0;
    let mut fresh = 0;
    for (i, m) in members.iter().enumerate() {
        if !m.available(now) || m.in_flight() >= limit {
            continue;
        }
        if let Some(slot) = buf.get_mut(available) {
            *slot = i;
            available += 1;
        }
        if !exclude.contains(&i) {
            fresh += 1;
        }
    }
    if fresh == 0 || fresh == available {
        return available;
    }
    // Keep the fresh ones, in order (the excluded ones move behind them).
    let mut kept = 0;
    for k in 0..available {
        if !exclude.contains(&buf[k]) {
            buf.swap(kept, k);
            kept += 1;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::config::HashSource;

    fn pool(weights: &[u32]) -> Vec<Arc<Member>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(Member::new(format!("10.0.0.{i}:80"), *w)))
            .collect()
    }

    fn counts(b: &Balancer, members: &[Arc<Member>], n: usize) -> Vec<usize> {
        let now = Instant::now();
        let mut c = vec![0; members.len()];
        for _ in 0..n {
            c[b.pick(members, None, &[], now).unwrap()] += 1;
        }
        c
    }

    proptest! {
        /// The candidates written to the buffer (on the stack or the heap) are the available
        /// members that are not excluded, in order, or all available ones if none is left.
        #[test]
        fn candidates_are_the_available_fresh_members(
            healthy in proptest::collection::vec(any::<bool>(), 0..40),
            exclude in proptest::collection::vec(0usize..40, 0..11),
        ) {
            let m = pool(&vec![1; healthy.len()]);
            for (member, ok) in m.iter().zip(&healthy) {
                member.set_healthy(*ok);
            }
            let now = Instant::now();
            let available: Vec<usize> = (0..m.len()).filter(|&i| healthy[i]).collect();
            let fresh: Vec<usize> =
                available.iter().copied().filter(|i| !exclude.contains(i)).collect();
            let expected = if fresh.is_empty() { available } else { fresh };
            let mut buf = vec![0; m.len()];
            let n = candidates(&m, &exclude, now, u64::MAX, &mut buf);
            prop_assert_eq!(&buf[..n], &expected[..]);
            // `pick` agrees for the round robin: it only ever picks a candidate.
            let b = Balancer::new(Algorithm::RoundRobin, &m);
            let picked = b.pick(&m, None, &exclude, now);
            prop_assert_eq!(picked.is_some(), !expected.is_empty());
            if let Some(p) = picked {
                prop_assert!(expected.contains(&p));
            }
        }
    }

    #[test]
    fn round_robin_is_even() {
        let m = pool(&[1, 5, 1]);
        let b = Balancer::new(Algorithm::RoundRobin, &m);
        assert_eq!(counts(&b, &m, 300), vec![100, 100, 100]);
    }

    #[test]
    fn weighted_round_robin_follows_weights_smoothly() {
        let m = pool(&[5, 1, 1]);
        let b = Balancer::new(Algorithm::WeightedRoundRobin, &m);
        let now = Instant::now();
        let seq: Vec<usize> = (0..7)
            .map(|_| b.pick(&m, None, &[], now).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&b, &m, 700), vec![500, 100, 100]);
    }

    /// Every algorithm passes over members at the member limit; all of them there: no pick.
    #[test]
    fn members_at_the_limit_are_no_candidates() {
        let m = pool(&[1, 1, 1]);
        let algorithms = [
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::LeastConnections,
            Algorithm::P2cEwma,
            Algorithm::ConsistentHash(HashSource::ClientAddress),
        ];
        let now = Instant::now();
        let busy0 = (m[0].start(), m[0].start());
        let busy2 = (m[2].start(), m[2].start());
        for algorithm in algorithms {
            let b = Balancer::new(algorithm, &m).with_member_limit(Some(2));
            for key in 0..20 {
                assert_eq!(b.pick(&m, Some(key), &[], now), Some(1));
            }
            let _busy1 = (m[1].start(), m[1].start());
            assert_eq!(b.pick(&m, Some(7), &[], now), None);
        }
        drop((busy0, busy2));
    }

    #[test]
    fn least_connections_prefers_idle_members() {
        let m = pool(&[1, 1, 1]);
        let b = Balancer::new(Algorithm::LeastConnections, &m);
        let _busy0 = m[0].start();
        let _busy2 = (m[2].start(), m[2].start());
        assert_eq!(b.pick(&m, None, &[], Instant::now()), Some(1));
    }

    #[test]
    fn p2c_avoids_the_slow_member() {
        let m = pool(&[1, 1, 1]);
        for (i, ms) in [(0, 100), (1, 1), (2, 1)] {
            m[i].record_latency(Duration::from_millis(ms));
        }
        let b = Balancer::new(Algorithm::P2cEwma, &m);
        let c = counts(&b, &m, 3000);
        // The slow member only wins when both choices are... never: any pair with it loses.
        assert_eq!(c[0], 0, "{c:?}");
        assert!(c[1] > 1000 && c[2] > 1000, "{c:?}");
    }

    #[test]
    fn unavailable_and_excluded_members_are_skipped() {
        let m = pool(&[1, 1, 1]);
        m[0].set_healthy(false);
        let b = Balancer::new(Algorithm::RoundRobin, &m);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(b.pick(&m, None, &[1], now), Some(2));
        }
        // Only excluded members left: they are used rather than failing.
        assert_eq!(
            b.pick(&m, None, &[1, 2], now).map(|i| i == 1 || i == 2),
            Some(true)
        );
        m[1].set_healthy(false);
        m[2].set_healthy(false);
        assert_eq!(b.pick(&m, None, &[], now), None);
    }

    #[test]
    fn consistent_hash_is_sticky_and_balanced() {
        let m = pool(&[1, 1, 1, 1]);
        let b = Balancer::new(Algorithm::ConsistentHash(HashSource::ClientAddress), &m);
        let now = Instant::now();
        let mut per = HashMap::new();
        for k in 0..4000u64 {
            let key = entropy::stable_hash(&k.to_le_bytes());
            let a = b.pick(&m, Some(key), &[], now).unwrap();
            assert_eq!(b.pick(&m, Some(key), &[], now), Some(a));
            *per.entry(a).or_insert(0) += 1;
        }
        for i in 0..4 {
            let c = per.get(&i).copied().unwrap_or(0);
            assert!((600..1400).contains(&c), "{per:?}");
        }
    }

    proptest! {
        /// Removing a member only moves the keys it owned.
        #[test]
        fn consistent_hash_minimal_disruption(keys in proptest::collection::vec(any::<u64>(), 1..200), down in 0usize..4) {
            let m = pool(&[1, 2, 1, 3]);
            let b = Balancer::new(Algorithm::ConsistentHash(HashSource::ClientAddress), &m);
            let now = Instant::now();
            let before: Vec<usize> = keys.iter().map(|k| b.pick(&m, Some(*k), &[], now).unwrap()).collect();
            m[down].set_healthy(false);
            for (k, was) in keys.iter().zip(before) {
                let now_pick = b.pick(&m, Some(*k), &[], now).unwrap();
                prop_assert_ne!(now_pick, down);
                if was != down {
                    prop_assert_eq!(now_pick, was);
                }
            }
        }

        /// Every algorithm picks only available members, and always finds one if any exists.
        #[test]
        fn picks_only_available(weights in proptest::collection::vec(1u32..5, 1..6), healthy in proptest::collection::vec(any::<bool>(), 6), alg in 0u8..5, key in any::<u64>()) {
            let m = pool(&weights);
            for (i, member) in m.iter().enumerate() {
                member.set_healthy(healthy[i]);
            }
            let algorithm = match alg {
                0 => Algorithm::RoundRobin,
                1 => Algorithm::WeightedRoundRobin,
                2 => Algorithm::LeastConnections,
                3 => Algorithm::P2cEwma,
                _ => Algorithm::ConsistentHash(HashSource::ClientAddress),
            };
            let b = Balancer::new(algorithm, &m);
            let now = Instant::now();
            let any_up = m.iter().any(|x| x.available(now));
            for _ in 0..10 {
                match b.pick(&m, Some(key), &[], now) {
                    Some(i) => prop_assert!(m[i].available(now)),
                    None => prop_assert!(!any_up),
                }
            }
        }

        /// Smooth WRR gives each member exactly its share over one full cycle.
        #[test]
        fn wrr_exact_shares(weights in proptest::collection::vec(1u32..6, 1..5)) {
            let m = pool(&weights);
            let b = Balancer::new(Algorithm::WeightedRoundRobin, &m);
            let total: u32 = weights.iter().sum();
            let c = counts(&b, &m, total as usize);
            for (i, w) in weights.iter().enumerate() {
                prop_assert_eq!(c[i], *w as usize);
            }
        }
    }
}
