//! Maglev consistent hashing: the reference builder of the lookup table ("ring") that maps a
//! flow hash to a gateway.
//!
//! The agent writes the table built here into the per-VIP ring map; the XDP program picks
//! `table[flow_hash % table.len()]`; the tests compare the two. Every node builds its table
//! from the same inputs, so the output must depend on nothing but the backend set and the
//! table size: not on input order, not on the platform, not on the Rust release.
//!
//! # Algorithm
//!
//! From Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
//! NSDI 2016, section 3.4. With `M` the table size (a prime), each backend derives from two
//! independent hashes of its name an `offset = h1 % M` and a `skip = h2 % (M - 1) + 1`. Its
//! preference list is the permutation `(offset + j * skip) % M` for `j = 0, 1, ...`: since `M`
//! is prime and `1 <= skip < M`, it visits every slot exactly once. Backends then take turns;
//! on its turn a backend claims the first slot of its preference list not yet claimed, and
//! the table is done when every slot is claimed. Each backend keeps a cursor into its list,
//! so the whole fill does no allocation per slot and costs `O(M log M)` steps expected
//! (the paper's bound) plus `O(M log N)` for the turn order below.
//!
//! Because a backend's preferences do not depend on the other backends, removing one backend
//! mostly hands its own slots to the others and leaves the rest in place; adding one takes
//! about its share from everyone. Maglev trades a little of that stability for near-perfect
//! balance, and the trade grows with `N / M`: removing one of `N` equally weighted backends
//! moves about 1.03x the ideal `1/N` of the slots for N = 10, 1.6x for N = 100 and 6.9x for
//! N = 1000 at M = 65537; 1.01x, 1.14x and 4.3x at M = 655373 (`cargo xtask bench
//! maglev`; the same factors as the paper's unweighted algorithm). The paper sizes `M`
//! above `100 * N` for balance; a larger `M` also lowers this factor. The property tests
//! bound it for N <= 100 at the default size.
//!
//! # Weights
//!
//! The paper's round robin gives every backend the same number of turns. For integer weights
//! this module separates *how many* slots a backend gets from *which* slots it gets:
//!
//! 1. **Quota.** Backend `i` of weight `w_i` is owed `M * w_i / W` slots (`W` = total weight).
//!    Whole slots are apportioned with the largest-remainder (Hamilton) method in exact
//!    integer arithmetic, ties going to the earlier name, so every backend gets its quota
//!    rounded down or up: `|slots_i - M * w_i / W| < 1`. A backend with weight `> 0` whose
//!    quota is below one slot is given exactly one slot and the others share the rest, so
//!    weight `> 0` always means "present in the table".
//! 2. **Turn order.** Backend `i` takes its `j`-th turn at virtual time `(j + 1/2) / w_i`,
//!    turns run in virtual-time order (ties by name), and a backend stops taking turns once
//!    it owns its quota. So every backend moves through its preference list at a pace
//!    proportional to its weight and all reach their quota at about the same time
//!    (`~ M / W`). The pace of the others does not depend on a backend joining or leaving,
//!    which keeps weighted tables as stable as unweighted ones. With equal weights this is
//!    exactly the paper's round robin in name order (the first `M mod N` names own one
//!    extra slot, as the paper's last, partial round gives them).
//!
//! # Invariants of [`build`]
//!
//! - The table has exactly `table_size` slots. Every slot holds the `id` of a backend with
//!   weight `> 0`, or every slot holds [`NO_BACKEND`] when no backend has weight `> 0`.
//! - Each backend with weight `> 0` holds at least one slot and exactly its quota (above).
//!   When every quota is at least one slot, a backend's slot count is therefore within one
//!   slot of `M * w / W`, and within 1% of it whenever that share is 100 slots or more.
//!   (Otherwise the slots given to backends below one slot come out of the others' shares.)
//! - The result is a pure function of the *set* of backends and `table_size`: inputs are
//!   sorted by name first, and the name hash is implemented here (FNV-1a 64 with a
//!   splitmix64 finaliser), never `std`'s hasher, whose output may change between releases.
//!   Changing the hash or the seeds remaps flows on mixed-version clusters: the golden tests
//!   pin it.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;

/// Default table size: a prime (2^16 + 1), large enough for the 1% balance bound with up to
/// 655 equally weighted backends (each then owns at least 100 slots). Disruption on a
/// backend change grows with `N / M` (see the module documentation).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// The slot value for "no backend": every slot of a table whose backends all have weight 0
/// (or that has no backends). No backend may use this id.
pub const NO_BACKEND: u32 = u32::MAX;

/// Seed of the hash that gives a backend's `offset`.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_3031; // "maglev01"
/// Seed of the hash that gives a backend's `skip`; must differ from [`OFFSET_SEED`].
const SKIP_SEED: u64 = 0x6d61_676c_6576_3032; // "maglev02"

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One entry of the backend set (for the load balancer: one gateway node).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// The value written into the slots this backend owns: its index in the gateway map.
    /// Unique within a set, and never [`NO_BACKEND`].
    pub id: u32,
    /// Stable identity (for example the node name). Hashed to give the backend's preference
    /// list, so it must be the same on every node and across restarts. Unique within a set.
    pub name: String,
    /// Relative weight. 0 means the backend takes no new flows: it owns no slot.
    pub weight: u32,
}

impl MaglevBackend {
    /// A backend with the given id, name and weight.
    pub fn new(id: u32, name: impl Into<String>, weight: u32) -> Self {
        Self {
            id,
            name: name.into(),
            weight,
        }
    }
}

/// Why a table could not be built. Every variant is an input error: the same input always
/// fails the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaglevError {
    /// The table size is not a prime number (so some preference lists would not cover
    /// every slot).
    NotPrime {
        /// The rejected size.
        table_size: u32,
    },
    /// The table size is not larger than the number of backends, so some backend with
    /// weight `> 0` could not own a slot.
    TableTooSmall {
        /// The rejected size.
        table_size: u32,
        /// Number of backends in the set (all of them, whatever their weight).
        backends: usize,
    },
    /// Two backends have the same name.
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// Two backends have the same id.
    DuplicateId {
        /// The repeated id.
        id: u32,
        /// Name of the first backend with that id (in name order).
        first: String,
        /// Name of the second backend with that id.
        second: String,
    },
    /// A backend uses the reserved id [`NO_BACKEND`].
    ReservedId {
        /// Name of that backend.
        name: String,
    },
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPrime { table_size } => {
                write!(f, "maglev table size {table_size} is not a prime number")
            }
            Self::TableTooSmall {
                table_size,
                backends,
            } => write!(
                f,
                "maglev table size {table_size} must be larger than the number of backends \
                 ({backends})"
            ),
            Self::DuplicateName { name } => {
                write!(f, "maglev backend name {name:?} appears more than once")
            }
            Self::DuplicateId { id, first, second } => write!(
                f,
                "maglev backends {first:?} and {second:?} have the same id {id}"
            ),
            Self::ReservedId { name } => write!(
                f,
                "maglev backend {name:?} uses id {NO_BACKEND}, which is reserved for \
                 \"no backend\""
            ),
        }
    }
}

impl std::error::Error for MaglevError {}

/// Whether `n` is prime (deterministic trial division by `6k ± 1`; about 11,000 steps at
/// most for a `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// Checks that a table of `table_size` slots can hold `backend_count` backends: the size
/// must be prime and larger than the number of backends (counting weight-0 backends too,
/// so that draining or enabling a backend never changes whether a configuration is valid).
///
/// [`build`] runs this check; configuration validation can call it on its own.
pub fn validate_table_size(table_size: u32, backend_count: usize) -> Result<(), MaglevError> {
    if !is_prime(table_size) {
        return Err(MaglevError::NotPrime { table_size });
    }
    if usize::try_from(table_size).is_ok_and(|m| m <= backend_count) {
        return Err(MaglevError::TableTooSmall {
            table_size,
            backends: backend_count,
        });
    }
    Ok(())
}

/// Builds the Maglev lookup table of `table_size` slots for `backends`.
///
/// Returns, for each slot, the [`MaglevBackend::id`] of the backend that owns it; when no
/// backend has weight `> 0` (including an empty set), every slot is [`NO_BACKEND`]. The
/// result depends only on the set of backends, not on their order. See the module
/// documentation for the algorithm and the guarantees.
///
/// # Errors
///
/// [`MaglevError::NotPrime`] and [`MaglevError::TableTooSmall`] for a bad size (see
/// [`validate_table_size`]); [`MaglevError::DuplicateName`], [`MaglevError::DuplicateId`]
/// and [`MaglevError::ReservedId`] for a bad backend set.
pub fn build(backends: &[MaglevBackend], table_size: u32) -> Result<Vec<u32>, MaglevError> {
    validate_table_size(table_size, backends.len())?;
    let sorted = sorted_checked(backends)?;
    let active: Vec<&MaglevBackend> = sorted.into_iter().filter(|b| b.weight > 0).collect();
    let mut table = vec![NO_BACKEND; table_size as usize];
    if active.is_empty() {
        return Ok(table);
    }
    let weights: Vec<u32> = active.iter().map(|b| b.weight).collect();
    let targets = apportion(&weights, table_size);
    fill(&mut table, &active, &targets);
    Ok(table)
}

/// Fraction of slots (in `0.0..=1.0`) whose backend differs between `old` and `new`: the
/// share of new flows that a table change sends somewhere else. Tables of different sizes
/// map flows with a different modulus, so they count as a complete change (1.0); two empty
/// tables as none (0.0).
pub fn disruption(old: &[u32], new: &[u32]) -> f64 {
    if old.len() != new.len() {
        return 1.0;
    }
    if old.is_empty() {
        return 0.0;
    }
    let moved = old.iter().zip(new).filter(|(a, b)| a != b).count();
    moved as f64 / old.len() as f64
}

/// The largest relative deviation of a backend's slot count in `table` from its weighted
/// share `table.len() * weight / total_weight`, over the backends with weight `> 0`:
/// `max |count - expected| / expected`. A backend of weight 0 that owns a slot makes the
/// result infinite. Returns 0.0 when no backend has weight `> 0`.
///
/// Ids in `table` that belong to no backend are ignored; `backends` is assumed to be the set
/// the table was built from.
pub fn max_balance_deviation(backends: &[MaglevBackend], table: &[u32]) -> f64 {
    let mut counts: HashMap<u32, u64> = HashMap::with_capacity(backends.len());
    for &id in table {
        *counts.entry(id).or_default() += 1;
    }
    let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    let mut worst: f64 = 0.0;
    for b in backends {
        let count = counts.get(&b.id).copied().unwrap_or(0) as f64;
        if b.weight == 0 {
            if count > 0.0 {
                return f64::INFINITY;
            }
            continue;
        }
        let expected = table.len() as f64 * f64::from(b.weight) / total_weight as f64;
        worst = worst.max((count - expected).abs() / expected);
    }
    worst
}

/// Sorts the backends by name and rejects duplicate names, duplicate ids and the reserved
/// id. Checking in name order makes the reported error independent of input order.
fn sorted_checked(backends: &[MaglevBackend]) -> Result<Vec<&MaglevBackend>, MaglevError> {
    let mut sorted: Vec<&MaglevBackend> = backends.iter().collect();
    sorted.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = sorted.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(MaglevError::DuplicateName {
            name: pair[0].name.clone(),
        });
    }
    let mut seen: HashMap<u32, &str> = HashMap::with_capacity(sorted.len());
    for b in &sorted {
        if b.id == NO_BACKEND {
            return Err(MaglevError::ReservedId {
                name: b.name.clone(),
            });
        }
        if let Some(first) = seen.insert(b.id, &b.name) {
            return Err(MaglevError::DuplicateId {
                id: b.id,
                first: first.to_owned(),
                second: b.name.clone(),
            });
        }
    }
    Ok(sorted)
}

/// Splits `slots` whole slots among backends of the given (all `> 0`) weights: the
/// largest-remainder method, except that a backend whose quota is below one slot gets
/// exactly one. The targets sum to `slots`.
///
/// Requires `0 < weights.len() < slots` (checked by [`validate_table_size`]), which
/// guarantees that some backend keeps a quota of at least one slot in every round.
fn apportion(weights: &[u32], slots: u32) -> Vec<u32> {
    let n = weights.len();
    let mut targets = vec![0u32; n];
    // Backends pinned to one slot because their quota was below one.
    let mut pinned = vec![false; n];
    let mut pinned_count: u32 = 0;
    // Pinning lowers everyone else's quota, which may push another backend below one slot:
    // repeat until stable. Each round pins at least one more backend, so at most n rounds.
    let (free, total) = loop {
        let free = u128::from(slots.saturating_sub(pinned_count));
        let total: u128 = weights
            .iter()
            .zip(&pinned)
            .filter(|&(_, &p)| !p)
            .map(|(&w, _)| u128::from(w))
            .sum();
        let mut changed = false;
        for (i, &w) in weights.iter().enumerate() {
            if !pinned[i] && free * u128::from(w) < total {
                pinned[i] = true;
                pinned_count += 1;
                changed = true;
            }
        }
        if !changed {
            break (free, total);
        }
    };

    let mut assigned: u128 = 0;
    // (remainder, index) of every backend that is not pinned.
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(n);
    for (i, &w) in weights.iter().enumerate() {
        if pinned[i] {
            targets[i] = 1;
            continue;
        }
        let share = free * u128::from(w);
        // total > 0 here: the unpinned set is never empty (see the function doc).
        let floor = share.checked_div(total).unwrap_or(0);
        targets[i] = u32::try_from(floor).unwrap_or(u32::MAX);
        assigned += floor;
        remainders.push((share % total.max(1), i));
    }
    // Largest remainder first; among equal remainders, the earlier name.
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let leftover = usize::try_from(free.saturating_sub(assigned)).unwrap_or(0);
    for &(_, i) in remainders.iter().take(leftover) {
        targets[i] += 1;
    }
    targets
}

/// A backend's pending turn in the fill: its `taken`-th claim, due at virtual time
/// `(taken + 1/2) / weight`. Pacing by weight rather than by target keeps the relative
/// order of the other backends' turns unchanged when one backend joins or leaves, as in the
/// paper's round robin; the target only decides when the backend stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Turn {
    taken: u32,
    weight: u32,
    target: u32,
    index: u32,
}

impl Ord for Turn {
    /// Reversed so that `BinaryHeap` (a max-heap) pops the earliest virtual time first, and
    /// among equal times the backend with the earlier name.
    fn cmp(&self, other: &Self) -> Ordering {
        // (2a+1)/(2v) vs (2b+1)/(2w), cross-multiplied exactly (weights are > 0).
        let lhs = (2 * u128::from(self.taken) + 1) * u128::from(other.weight);
        let rhs = (2 * u128::from(other.taken) + 1) * u128::from(self.weight);
        rhs.cmp(&lhs).then(other.index.cmp(&self.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Where a backend is in its preference list.
struct Cursor {
    id: u32,
    /// Next slot of the preference list to try.
    next: u64,
    skip: u64,
}

/// Fills `table` (all [`NO_BACKEND`], prime length) so that `active[i]` (weight `> 0`)
/// owns exactly `targets[i]` slots; `targets` sums to the table length.
fn fill(table: &mut [u32], active: &[&MaglevBackend], targets: &[u32]) {
    let m = table.len() as u64;
    let mut cursors: Vec<Cursor> = active
        .iter()
        .map(|b| {
            let (offset, skip) = offset_skip(b.name.as_bytes(), m);
            Cursor {
                id: b.id,
                next: offset,
                skip,
            }
        })
        .collect();
    let mut turns: BinaryHeap<Turn> = BinaryHeap::with_capacity(active.len());
    for ((index, &target), b) in (0u32..).zip(targets).zip(active) {
        if target > 0 {
            turns.push(Turn {
                taken: 0,
                weight: b.weight.max(1),
                target,
                index,
            });
        }
    }
    while let Some(mut turn) = turns.pop() {
        let cursor = &mut cursors[turn.index as usize];
        // Terminates: the preference list visits every slot (m prime, 0 < skip < m) and a
        // slot is still free, since the targets sum to m and this turn is not yet served.
        loop {
            let slot = &mut table[cursor.next as usize];
            cursor.next += cursor.skip;
            if cursor.next >= m {
                cursor.next -= m;
            }
            if *slot == NO_BACKEND {
                *slot = cursor.id;
                break;
            }
        }
        turn.taken += 1;
        if turn.taken < turn.target {
            turns.push(turn);
        }
    }
}

/// A backend's `(offset, skip)` for a table of `m` slots (`m` prime, `m >= 2`).
fn offset_skip(name: &[u8], m: u64) -> (u64, u64) {
    let offset = name_hash(name, OFFSET_SEED) % m;
    let skip = name_hash(name, SKIP_SEED) % (m - 1) + 1;
    (offset, skip)
}

/// Stable 64-bit hash of `bytes` under `seed`: FNV-1a 64 started from a seed-dependent
/// basis, then the splitmix64 finaliser (FNV alone mixes the high bits poorly, and `% m`
/// reads the low bits). Part of the cross-node contract: do not change.
fn name_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = FNV_OFFSET_BASIS ^ mix64(seed);
    for &byte in bytes {
        h ^= u64::from(byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix64(h ^ bytes.len() as u64)
}

/// The splitmix64 finaliser (Steele, Lea, Flood 2014): a bijection with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend::new(i, format!("gw-{i}"), 1))
            .collect()
    }

    fn counts(table: &[u32]) -> HashMap<u32, u64> {
        let mut c = HashMap::new();
        for &id in table {
            *c.entry(id).or_default() += 1;
        }
        c
    }

    #[test]
    fn is_prime_small_and_large() {
        let small: Vec<u32> = (0..50).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
        );
        assert!(is_prime(65537));
        assert!(is_prime(655_373));
        assert!(is_prime(4_294_967_291)); // largest u32 prime
        assert!(!is_prime(65536));
        assert!(!is_prime(65535));
        assert!(!is_prime(u32::MAX));
        assert!(!is_prime(65521 * 65519));
    }

    #[test]
    fn name_hash_is_pinned() {
        // Golden values: every node, every release must compute the same permutation.
        assert_eq!(name_hash(b"", OFFSET_SEED), 0xa8e3_d67e_ad60_797d);
        assert_eq!(name_hash(b"", SKIP_SEED), 0xf6e7_09ee_a7e9_be02);
        assert_eq!(name_hash(b"gw-a", OFFSET_SEED), 0xceaf_58b0_6b73_eb7d);
        assert_eq!(name_hash(b"gw-a", SKIP_SEED), 0x9183_7002_2e79_f143);
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
    }

    #[test]
    fn offset_and_skip_are_in_range() {
        for m in [2u64, 3, 7, 65537] {
            for i in 0..200 {
                let (offset, skip) = offset_skip(format!("b{i}").as_bytes(), m);
                assert!(offset < m);
                assert!((1..m).contains(&skip));
            }
        }
    }

    #[test]
    fn table_is_pinned() {
        // Golden table: a change here remaps flows across a mixed-version cluster.
        let backends = [
            MaglevBackend::new(0, "gw-a", 1),
            MaglevBackend::new(1, "gw-b", 1),
            MaglevBackend::new(2, "gw-c", 2),
        ];
        // Cross-checked against an independent Python model of the module doc.
        let table = build(&backends, 13).unwrap();
        assert_eq!(table, [2, 2, 1, 2, 0, 1, 2, 2, 2, 2, 0, 1, 0]);
        let backends: Vec<MaglevBackend> = (0..10)
            .map(|i| MaglevBackend::new(i, format!("gw-{i}"), i % 3 + 1))
            .collect();
        let table = build(&backends, DEFAULT_TABLE_SIZE).unwrap();
        let bytes: Vec<u8> = table.iter().flat_map(|id| id.to_le_bytes()).collect();
        assert_eq!(name_hash(&bytes, 0), 0xee24_ee79_97de_cd3a);
    }

    #[test]
    fn paper_example_equal_weights() {
        // Three equal backends at M = 7: sizes 3, 2, 2 (the extra slot to the first name).
        let table = build(&set(3), 7).unwrap();
        let c = counts(&table);
        assert_eq!(c[&0], 3);
        assert_eq!(c[&1], 2);
        assert_eq!(c[&2], 2);
    }

    #[test]
    fn apportion_is_exact_and_rounds_by_largest_remainder() {
        assert_eq!(apportion(&[1, 1, 1], 7), [3, 2, 2]);
        assert_eq!(apportion(&[1, 2], 7), [2, 5]);
        assert_eq!(apportion(&[3, 1], 13), [10, 3]);
        // Quota below one slot: pinned to one, the rest shared by weight.
        assert_eq!(apportion(&[1, 1000], 13), [1, 12]);
        assert_eq!(apportion(&[1, 1, 1000, 1000], 7), [1, 1, 3, 2]);
        assert_eq!(
            apportion(&[u32::MAX, u32::MAX, 1], 4_294_967_291)
                .iter()
                .map(|&t| u64::from(t))
                .sum::<u64>(),
            4_294_967_291
        );
    }

    #[test]
    fn tiny_weight_still_owns_a_slot() {
        let backends = [
            MaglevBackend::new(0, "big", u32::MAX),
            MaglevBackend::new(1, "tiny", 1),
        ];
        let c = counts(&build(&backends, DEFAULT_TABLE_SIZE).unwrap());
        assert_eq!(c[&1], 1);
        assert_eq!(c[&0], u64::from(DEFAULT_TABLE_SIZE) - 1);
    }

    #[test]
    fn errors() {
        assert_eq!(
            build(&set(3), 65536),
            Err(MaglevError::NotPrime { table_size: 65536 })
        );
        assert_eq!(build(&[], 0), Err(MaglevError::NotPrime { table_size: 0 }));
        assert_eq!(build(&[], 1), Err(MaglevError::NotPrime { table_size: 1 }));
        assert_eq!(
            build(&set(7), 7),
            Err(MaglevError::TableTooSmall {
                table_size: 7,
                backends: 7
            })
        );
        let mut dup = set(3);
        dup[2].name = "gw-0".into();
        assert_eq!(
            build(&dup, 13),
            Err(MaglevError::DuplicateName {
                name: "gw-0".into()
            })
        );
        let mut dup = set(3);
        dup[0].id = 2;
        assert_eq!(
            build(&dup, 13),
            Err(MaglevError::DuplicateId {
                id: 2,
                first: "gw-0".into(),
                second: "gw-2".into()
            })
        );
        let mut reserved = set(2);
        reserved[1].id = NO_BACKEND;
        reserved[1].weight = 0;
        assert_eq!(
            build(&reserved, 13),
            Err(MaglevError::ReservedId {
                name: "gw-1".into()
            })
        );
        assert!(
            MaglevError::NotPrime { table_size: 4 }
                .to_string()
                .contains("not a prime")
        );
    }

    #[test]
    fn disruption_edges() {
        assert_eq!(disruption(&[], &[]), 0.0);
        assert_eq!(disruption(&[1, 2], &[1]), 1.0);
        assert_eq!(disruption(&[1, 2, 3, 4], &[1, 2, 3, 5]), 0.25);
    }

    #[test]
    fn balance_deviation_flags_zero_weight_owner() {
        let backends = [MaglevBackend::new(0, "a", 1), MaglevBackend::new(1, "b", 0)];
        assert_eq!(max_balance_deviation(&backends, &[0, 0, 0]), 0.0);
        assert_eq!(max_balance_deviation(&backends, &[0, 0, 1]), f64::INFINITY);
        assert_eq!(max_balance_deviation(&[], &[NO_BACKEND; 3]), 0.0);
    }
}
