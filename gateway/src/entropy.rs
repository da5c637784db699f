//! Fast, non-cryptographic randomness for request ids, trace ids and balancer choices.
//!
//! Seeded per process from the standard library's randomly keyed hasher, so no extra
//! dependency is needed; never use it for secrets.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The per-process random seed (from the standard library's randomly keyed hasher).
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| RandomState::new().hash_one(0x6c62_2d67_6174_6577_u64))
}

/// A random-looking 64-bit value, different on every call: SplitMix64 over a seeded counter
/// (a bijection of the counter, so values do not repeat before 2^64 calls). Much cheaper per
/// request than keyed SipHash, and as unpredictable across processes.
pub fn next_u64() -> u64 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    mix(seed().wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// A uniformly distributed index below `n` (`n` must be > 0).
pub fn below(n: usize) -> usize {
    let n64 = u64::try_from(n).unwrap_or(u64::MAX).max(1);
    usize::try_from(next_u64() % n64).unwrap_or(0)
}

/// Stable 64-bit hash (FNV-1a with a final mix), identical across processes and versions, so
/// consistent hashing agrees between gateways.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64 finaliser: spreads the bits of a weak hash.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` random bytes as lower-case hex.
pub fn hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes * 2];
    hex_into(&mut buf);
    buf.into_iter().map(char::from).collect()
}

/// Fills `out` with random lower-case hex digits.
pub fn hex_into(out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for chunk in out.chunks_mut(16) {
        let mut v = next_u64();
        for d in chunk {
            *d = DIGITS[(v >> 60) as usize];
            v <<= 4;
        }
    }
}
