//! One pool member's live state: health, outlier ejection, in-flight requests, latency.
//!
//! State is shared by the balancer, the proxy and the health checker through atomics; it is
//! carried over to the new snapshot on reload when the member's address stays the same.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::OutlierConfig;

/// A pool member.
#[derive(Debug)]
pub struct Member {
    /// `host:port` as configured.
    pub address: String,
    /// The address as a URI authority (parsed once, cloned into every request URI).
    pub authority: Option<http::uri::Authority>,
    pub weight: u32,
    healthy: AtomicBool,
    in_flight: AtomicU64,
    /// Exponentially weighted moving average of latency, in microseconds (0: no sample yet).
    ewma_micros: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Idle keep-alive connections (plain HTTP/1.1 upstreams, see [`super::pool`]).
    pub idle: super::pool::IdleConnections,
    /// Requests queued for a slot (`max_requests_per_member` with `queue_timeout`) waiting on
    /// this member: an ending request wakes them through `freed` only when there are some.
    waiting: AtomicU64,
    freed: tokio::sync::Notify,
}

/// Result of one attempt, as seen by outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Success,
    Failure,
}

impl Member {
    /// A new member, healthy until a check or outlier detection says otherwise.
    pub fn new(address: String, weight: u32) -> Self {
        Self {
            authority: address.parse().ok(),
            address,
            weight,
            healthy: AtomicBool::new(true),
            in_flight: AtomicU64::new(0),
            ewma_micros: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            idle: super::pool::IdleConnections::default(),
            waiting: AtomicU64::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Waits (as a queued request) until one of `members` ends a request, or `timeout`.
    /// Registers before `ready` is asked again, so an end in between is not missed: `ready`
    /// is the caller's new try, and its answer is returned at once if it has one.
    pub async fn wait_for_slot<T>(
        members: &[std::sync::Arc<Member>],
        timeout: Duration,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let _waiting = Waiting::on(members);
            let mut notified: Vec<_> = members
                .iter()
                .map(|m| Box::pin(m.freed.notified()))
                .collect();
            for n in &mut notified {
                n.as_mut().enable();
            }
            // Orders the registration before `ready`'s reads of the members' counts.
            std::sync::atomic::fence(Ordering::SeqCst);
            if let Some(t) = ready() {
                return Some(t);
            }
            let freed = futures_util::future::select_all(notified);
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return ready();
            }
        }
    }

    /// Whether the member may take traffic at `now`.
    pub fn available(&self, now: Instant) -> bool {
        self.healthy.load(Ordering::Acquire) && !self.is_ejected(now)
    }

    /// Whether outlier detection has the member ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.lock_ejection().is_some_and(|until| now < until)
    }

    fn lock_ejection(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.ejected_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How much longer outlier detection keeps the member out, if it is ejected at `now`.
    pub fn ejected_for(&self, now: Instant) -> Option<Duration> {
        self.lock_ejection()
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Failed attempts in a row since the last success or ejection.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Active health state.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Sets the active health state (from the health checker).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
    }

    /// Requests currently sent to this member.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Latency EWMA in microseconds, 0 before the first sample.
    pub fn ewma_micros(&self) -> u64 {
        self.ewma_micros.load(Ordering::Relaxed)
    }

    /// Marks a request as started; the guard ends it when dropped.
    pub fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(std::sync::Arc::clone(self))
    }

    /// Records a latency sample (weight 1/5 for the new sample).
    pub fn record_latency(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let update = |old: u64| {
            Some(if old == 0 {
                sample
            } else {
                (old * 4 + sample) / 5
            })
        };
        // The closure always returns Some, so this cannot fail.
        if self
            .ewma_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, update)
            .is_err()
        {
            self.ewma_micros.store(sample, Ordering::Relaxed);
        }
    }

    /// Feeds outlier detection; returns `true` when this call ejected the member.
    ///
    /// `may_eject` is false when the pool already has its maximum share of members ejected.
    pub fn record_outcome(
        &self,
        outcome: AttemptOutcome,
        cfg: &OutlierConfig,
        now: Instant,
        may_eject: bool,
    ) -> bool {
        match outcome {
            AttemptOutcome::Success => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                if !self.is_ejected(now) {
                    self.ejections.store(0, Ordering::Relaxed);
                }
                false
            }
            AttemptOutcome::Failure => {
                let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if cfg.consecutive_failures == 0
                    || failures < cfg.consecutive_failures
                    || !may_eject
                {
                    return false;
                }
                let mut until = self.lock_ejection();
                if until.is_some_and(|u| now < u) {
                    return false;
                }
                let n = self.ejections.fetch_add(1, Ordering::Relaxed);
                let backoff = cfg
                    .base_ejection
                    .saturating_mul(1u32 << n.min(16))
                    .min(cfg.max_ejection);
                *until = Some(now + backoff);
                self.consecutive_failures.store(0, Ordering::Relaxed);
                true
            }
        }
    }
}

/// Counts a request as in flight to a member until dropped.
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<Member>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // Sequentially consistent with the queued request's registration (see
        // `wait_for_slot`): either it sees this slot free, or this sees it waiting. On x86 the
        // decrement is a locked instruction either way and the load a plain one.
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        // One load per request; the wake-up (a lock) only when a queued request waits.
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.freed.notify_waiters();
        }
    }
}

/// Counts a queued request as waiting on each of some members while it lives.
struct Waiting<'a>(&'a [std::sync::Arc<Member>]);

impl<'a> Waiting<'a> {
    fn on(members: &'a [std::sync::Arc<Member>]) -> Self {
        for m in members {
            m.waiting.fetch_add(1, Ordering::SeqCst);
        }
        Self(members)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        for m in self.0 {
            m.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_and_backs_off() {
        let m = Member::new("a:1".into(), 1);
        let t0 = Instant::now();
        assert!(!m.record_outcome(AttemptOutcome::Failure, &cfg(), t0, true));
        assert!(!m.record_outcome(AttemptOutcome::Failure, &cfg(), t0, true));
        assert!(m.record_outcome(AttemptOutcome::Failure, &cfg(), t0, true));
        assert!(!m.available(t0));
        let t1 = t0 + Duration::from_secs(10);
        assert!(m.available(t1));
        // Fails again right after returning: ejected for twice as long.
        for _ in 0..3 {
            m.record_outcome(AttemptOutcome::Failure, &cfg(), t1, true);
        }
        assert!(!m.available(t1 + Duration::from_secs(19)));
        assert!(m.available(t1 + Duration::from_secs(20)));
        // The back-off is capped by max_ejection.
        let t2 = t1 + Duration::from_secs(20);
        for _ in 0..3 {
            m.record_outcome(AttemptOutcome::Failure, &cfg(), t2, true);
        }
        assert!(m.available(t2 + Duration::from_secs(25)));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let m = Member::new("a:1".into(), 1);
        let t0 = Instant::now();
        for _ in 0..10 {
            m.record_outcome(AttemptOutcome::Failure, &cfg(), t0, true);
            m.record_outcome(AttemptOutcome::Failure, &cfg(), t0, true);
            m.record_outcome(AttemptOutcome::Success, &cfg(), t0, true);
        }
        assert!(m.available(t0));
    }

    #[test]
    fn ejection_respects_the_pool_cap() {
        let m = Member::new("a:1".into(), 1);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(!m.record_outcome(AttemptOutcome::Failure, &cfg(), t0, false));
        }
        assert!(m.available(t0));
    }

    #[test]
    fn ewma_moves_towards_samples() {
        let m = Member::new("a:1".into(), 1);
        m.record_latency(Duration::from_millis(10));
        assert_eq!(m.ewma_micros(), 10_000);
        m.record_latency(Duration::from_millis(60));
        assert_eq!(m.ewma_micros(), 20_000);
    }
}
