//! Retry budget: retries may add at most a fixed share of the request rate plus a small floor,
//! so that during an outage retries never multiply the load on a pool.
//!
//! The budget counts requests and retries over a sliding window of two ten-second buckets.
//! Time is passed in, so tests drive it without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RetryConfig;

const BUCKET: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Window {
    start: Instant,
    requests: u64,
    retries: u64,
    prev_requests: u64,
    prev_retries: u64,
}

/// Per-upstream retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    window: Mutex<Window>,
}

impl RetryBudget {
    /// A budget with the given policy, starting empty at `now`.
    pub fn new(cfg: &RetryConfig, now: Instant) -> Self {
        Self {
            percent: u64::from(cfg.budget_percent),
            min_per_second: u64::from(cfg.budget_min_per_second),
            window: Mutex::new(Window {
                start: now,
                requests: 0,
                retries: 0,
                prev_requests: 0,
                prev_retries: 0,
            }),
        }
    }

    fn with_window<T>(&self, now: Instant, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(w.start);
        if elapsed >= BUCKET * 2 {
            *w = Window {
                start: now,
                requests: 0,
                retries: 0,
                prev_requests: 0,
                prev_retries: 0,
            };
        } else if elapsed >= BUCKET {
            w.prev_requests = w.requests;
            w.prev_retries = w.retries;
            w.requests = 0;
            w.retries = 0;
            w.start += BUCKET;
        }
        f(&mut w)
    }

    /// Counts one original request (not retries).
    pub fn record_request(&self, now: Instant) {
        self.with_window(now, |w| w.requests += 1);
    }

    /// Takes one retry from the budget; `false` means the budget is spent and the caller must
    /// not retry.
    pub fn try_acquire(&self, now: Instant) -> bool {
        let floor = self.min_per_second * BUCKET.as_secs() * 2;
        let percent = self.percent;
        self.with_window(now, |w| {
            let requests = w.requests + w.prev_requests;
            let retries = w.retries + w.prev_retries;
            let allowed = floor + requests * percent / 100;
            if retries < allowed {
                w.retries += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u32, floor: u32, now: Instant) -> RetryBudget {
        RetryBudget::new(
            &RetryConfig {
                max_retries: 2,
                budget_percent: percent,
                budget_min_per_second: floor,
                buffer_bytes: 0,
            },
            now,
        )
    }

    #[test]
    fn retries_are_limited_to_the_share_of_requests() {
        let t0 = Instant::now();
        let b = budget(20, 0, t0);
        for _ in 0..100 {
            b.record_request(t0);
        }
        let granted = (0..100).filter(|_| b.try_acquire(t0)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_floor_allows_some_retries_at_low_traffic() {
        let t0 = Instant::now();
        let b = budget(20, 1, t0);
        let granted = (0..100).filter(|_| b.try_acquire(t0)).count();
        assert_eq!(granted, 20); // 1/s over the 20 s window
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let b = budget(50, 0, t0);
        for _ in 0..10 {
            b.record_request(t0);
        }
        assert_eq!((0..10).filter(|_| b.try_acquire(t0)).count(), 5);
        // One bucket later the old counts still weigh; two buckets later they are gone.
        let t1 = t0 + BUCKET;
        assert!(!b.try_acquire(t1));
        let t2 = t0 + BUCKET * 3;
        assert!(!b.try_acquire(t2));
        b.record_request(t2);
        b.record_request(t2);
        assert!(b.try_acquire(t2));
    }

    proptest::proptest! {
        /// Whatever the mix, granted retries never exceed the floor plus the share.
        #[test]
        fn never_exceeds_budget(requests in 0u64..500, attempts in 0usize..500, percent in 0u32..=100, floor in 0u32..5) {
            let t0 = Instant::now();
            let b = budget(percent, floor, t0);
            for _ in 0..requests { b.record_request(t0); }
            let granted = (0..attempts).filter(|_| b.try_acquire(t0)).count() as u64;
            let limit = u64::from(floor) * 20 + requests * u64::from(percent) / 100;
            proptest::prop_assert!(granted <= limit);
        }
    }
}
