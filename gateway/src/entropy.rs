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

/// `n` random bytes as lower-case hex (the tests' reference trace context uses it).
#[cfg(test)]
pub fn hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes * 2];
    hex_into(&mut buf);
    buf.into_iter().map(char::from).collect()
}

/// Fills `out` with random lower-case hex digits.
pub fn hex_into(out: &mut [u8]) {
    // Eight digits at a time from each half of a random value, in a register (a request
    // id and a `traceparent` take 80 digits per request; a table lookup per digit cost
    // about twice as many instructions). The digits come out in some fixed order of the
    // value's nibbles, which is as random as any other.
    let mut chunks = out.chunks_exact_mut(16);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&hex16(next_u64()));
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        rest.copy_from_slice(&hex16(next_u64())[..rest.len()]);
    }
}

/// The sixteen nibbles of `v` as lower-case hex digits.
fn hex16(v: u64) -> [u8; 16] {
    (u128::from(hex8((v >> 32) as u32)) << 64 | u128::from(hex8(v as u32))).to_le_bytes()
}

/// The eight nibbles of `x` as lower-case hex digits, one per byte (least significant
/// nibble in the lowest byte).
fn hex8(x: u32) -> u64 {
    // Spread the nibbles, one per byte.
    let mut v = u64::from(x);
    v = (v | (v << 16)) & 0x0000_ffff_0000_ffff;
    v = (v | (v << 8)) & 0x00ff_00ff_00ff_00ff;
    v = (v | (v << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 0x01 in each byte whose nibble is 10 or more (nibble + 6 carries into bit 4)...
    let letters = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    // ... which then moves from after '9' to 'a' ('a' - '0' - 10 = 39). No byte exceeds
    // 15 + 48 + 39, so nothing carries into the next one.
    v + 0x3030_3030_3030_3030 + letters * 39
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex8_writes_each_nibble_as_a_lower_case_digit() {
        assert_eq!(&hex8(0x0123_4567).to_le_bytes(), b"76543210");
        assert_eq!(&hex8(0x89ab_cdef).to_le_bytes(), b"fedcba98");
        assert_eq!(&hex8(0).to_le_bytes(), b"00000000");
        assert_eq!(&hex8(u32::MAX).to_le_bytes(), b"ffffffff");
        // Every nibble value, in every position.
        for n in 0..16u32 {
            let x = n * 0x1111_1111;
            let digit = b"0123456789abcdef"[n as usize];
            assert_eq!(hex8(x).to_le_bytes(), [digit; 8]);
        }
    }

    #[test]
    fn hex_into_fills_any_length_with_hex_digits() {
        let mut seen = [false; 16];
        for len in [0, 1, 8, 15, 16, 17, 32, 55, 1024] {
            let mut buf = vec![b'-'; len];
            hex_into(&mut buf);
            for &c in &buf {
                let Some(i) = b"0123456789abcdef".iter().position(|&d| d == c) else {
                    panic!("not a lower-case hex digit: {c}");
                };
                seen[i] = true;
            }
        }
        // 1,168 random digits: all sixteen values show up (odds of a miss: about 1e-31).
        assert!(seen.iter().all(|&s| s));
        // Values differ between calls.
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        hex_into(&mut a);
        hex_into(&mut b);
        assert_ne!(a, b);
    }
}
