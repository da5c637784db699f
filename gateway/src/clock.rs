//! The coarse monotonic clock for per-request bookkeeping that is only ever compared with
//! timeouts (seconds in practice; a stamp is off by at most a tick either way): when a
//! partial request began, when a connection went idle, when a pooled upstream connection
//! expires.
//!
//! It reads `CLOCK_MONOTONIC_COARSE`, the kernel's last tick (steps of 1-4 ms): a vDSO read
//! that touches no time source, ~3 ns on the benchmark machine against ~20 ns for
//! `Instant::now()`, which a proxy would otherwise pay several times per request. Latencies
//! (histograms, the balancers' EWMA, the access log) keep the precise clock.

use nix::time::{ClockId, clock_gettime};

/// Milliseconds on the coarse monotonic clock (the same clock as `Instant`, at a tick's
/// resolution). Never 0, so atomics can use 0 for "not set".
pub fn coarse_millis() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        // Only kernels older than 2.6.32 lack the coarse clock; the precise one is the same
        // clock.
        .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC));
    let ms = ts.map_or(0, |ts| {
        let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
        let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
        secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
    });
    ms.max(1)
}

/// Whole milliseconds of `d`, saturating: timeouts compared with [`coarse_millis`] stamps.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The [`coarse_millis`] stamp `d` from now.
pub fn expiry(d: std::time::Duration) -> u64 {
    coarse_millis().saturating_add(millis(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The coarse clock follows the precise one, never runs backwards, and lags it by at
    /// most a tick (the kernel's tick is at most 10 ms; 50 ms leaves room for a busy host
    /// preempting the test between two reads).
    #[test]
    fn follows_the_monotonic_clock_within_a_tick() {
        let t0 = Instant::now();
        let c0 = coarse_millis();
        let mut last = c0;
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let c = coarse_millis();
            let fine = millis(t0.elapsed());
            assert!(c >= last, "the coarse clock went back from {last} to {c}");
            last = c;
            let coarse = c - c0;
            assert!(
                coarse.abs_diff(fine) <= 50,
                "coarse clock moved {coarse} ms while the precise one moved {fine} ms"
            );
            if fine >= 120 {
                assert!(coarse > 0, "the coarse clock did not move in {fine} ms");
                break;
            }
        }
    }
}
