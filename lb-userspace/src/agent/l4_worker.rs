//! The data path on a thread of its own.
//!
//! Writing the maps can block: a gateway whose MAC the neighbour table lacks is probed and
//! the table read again for up to ~300 ms (`xdp_l4`). The daemon's state task must not
//! block (it answers the admin API and feeds VRRP's priority tracking), so it hands each
//! new desired state to this thread and goes on. The thread applies the newest state
//! (states superseded while it was busy are skipped: each one is complete, so only the
//! last matters), reads the counters every [`COUNTER_PERIOD`], and reports both back on a
//! watch channel.
use std::{
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{
    l4::{DesiredL4, L4Counters, L4Dataplane},
    metrics::Metrics,
};

/// How often the counters are read.
pub const COUNTER_PERIOD: Duration = Duration::from_secs(1);

/// What the thread last saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct L4Report {
    /// The error of the last apply; `None` after a success. The previous maps keep
    /// serving after a failed apply.
    pub apply_error: Option<String>,
    /// The error of the last counter read.
    pub counters_error: Option<String>,
    pub counters: Option<L4Counters>,
    /// Whether the program is attached (a priority-tracking input).
    pub attached: bool,
    /// Desired states applied successfully so far.
    pub applied: u64,
    /// The generation ([`L4Worker::apply`]) of the last state handled, applied or not:
    /// every state up to it is either in the maps or was superseded.
    pub handled: u64,
}

/// Handle to the thread; dropping it lets the thread finish its current apply and exit.
pub struct L4Worker {
    tx: mpsc::Sender<(u64, DesiredL4)>,
    generation: u64,
    /// The latest report.
    pub reports: watch::Receiver<L4Report>,
    _thread: JoinHandle<()>,
}

impl L4Worker {
    /// Starts the thread with `dp`, whose maps already hold the state of `report`.
    pub fn spawn(
        dp: Box<dyn L4Dataplane>,
        metrics: Metrics,
        report: L4Report,
    ) -> std::io::Result<L4Worker> {
        let (tx, rx) = mpsc::channel();
        let (report_tx, reports) = watch::channel(report.clone());
        let generation = report.handled;
        let thread = std::thread::Builder::new()
            .name("lb-l4".into())
            .spawn(move || run(dp, rx, report_tx, metrics, report))?;
        Ok(L4Worker {
            tx,
            generation,
            reports,
            _thread: thread,
        })
    }

    /// Queues `desired` for the thread (it returns at once) and returns its generation:
    /// once the report's `handled` reaches it, the maps hold this state or a newer one.
    /// `None` when the thread is gone (the maps keep their last state).
    pub fn apply(&mut self, desired: DesiredL4) -> Option<u64> {
        self.generation += 1;
        if self.tx.send((self.generation, desired)).is_err() {
            tracing::error!("data path thread is gone; the maps keep their last state");
            return None;
        }
        Some(self.generation)
    }
}

fn run(
    mut dp: Box<dyn L4Dataplane>,
    rx: mpsc::Receiver<(u64, DesiredL4)>,
    report_tx: watch::Sender<L4Report>,
    metrics: Metrics,
    mut report: L4Report,
) {
    let mut next_read = Instant::now();
    loop {
        match rx.recv_timeout(next_read.saturating_duration_since(Instant::now())) {
            Ok(mut next) => {
                while let Ok(newer) = rx.try_recv() {
                    next = newer;
                }
                let (generation, desired) = next;
                report.handled = generation;
                match dp.apply(&desired) {
                    Ok(()) => {
                        report.apply_error = None;
                        report.applied += 1;
                    }
                    Err(e) => {
                        metrics.l4_apply_errors.inc();
                        tracing::error!(error = %e, "writing the data path failed; the previous state keeps serving");
                        report.apply_error = Some(e.to_string());
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= next_read {
            match dp.counters() {
                Ok(c) => {
                    report.counters = Some(c);
                    report.counters_error = None;
                }
                Err(e) => report.counters_error = Some(e.to_string()),
            }
            metrics.set_l4_counters(report.counters.clone());
            report.attached = dp.attached();
            next_read = Instant::now() + COUNTER_PERIOD;
        }
        report_tx.send_if_modified(|r| {
            if *r == report {
                false
            } else {
                *r = report.clone();
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::agent::l4::{L4Error, L4Protocol, L4Service};

    /// A data path whose applies take `delay` and which records what it applied.
    struct Slow {
        delay: Duration,
        applied: Arc<Mutex<Vec<usize>>>,
        fail: bool,
    }

    impl L4Dataplane for Slow {
        fn apply(&mut self, d: &DesiredL4) -> Result<(), L4Error> {
            std::thread::sleep(self.delay);
            if self.fail {
                return Err(L4Error {
                    op: "test".into(),
                    reason: "refused".into(),
                });
            }
            if let Ok(mut a) = self.applied.lock() {
                a.push(d.services.len());
            }
            Ok(())
        }
        fn counters(&self) -> Result<L4Counters, L4Error> {
            Ok(L4Counters::default())
        }
        fn attached(&self) -> bool {
            true
        }
    }

    fn desired(n: usize) -> DesiredL4 {
        DesiredL4 {
            services: (0..n)
                .map(|i| L4Service {
                    vip: std::net::IpAddr::from([10, 0, 0, u8::try_from(i).unwrap_or(0)]),
                    port: 80,
                    protocol: L4Protocol::Tcp,
                    ring: vec![0],
                })
                .collect(),
            ..DesiredL4::default()
        }
    }

    #[tokio::test]
    async fn applies_return_at_once_and_only_the_newest_pending_state_is_written() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let dp = Slow {
            delay: Duration::from_millis(500),
            applied: applied.clone(),
            fail: false,
        };
        let metrics = Metrics::new().unwrap();
        let mut w = L4Worker::spawn(Box::new(dp), metrics, L4Report::default()).unwrap();
        let start = Instant::now();
        for n in 1..=5 {
            assert_eq!(w.apply(desired(n)), Some(n as u64));
        }
        // Blocking on even one apply would take 500 ms.
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "apply blocked"
        );
        let done = || applied.lock().unwrap().last() == Some(&5);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(done() && w.reports.borrow().applied == applied.lock().unwrap().len() as u64)
            && Instant::now() < deadline
        {
            if tokio::time::timeout(Duration::from_millis(100), w.reports.changed())
                .await
                .is_err()
            {
                continue;
            }
        }
        // The state being written when the others came in (1, if the thread had picked
        // it up) and then only the newest: 2-4 were superseded while it was busy.
        let got = applied.lock().unwrap().clone();
        assert!(got == vec![1, 5] || got == vec![5], "{got:?}");
        let r = w.reports.borrow().clone();
        assert_eq!(r.applied, got.len() as u64);
        assert_eq!(r.handled, 5);
        assert!(r.attached);
        assert!(r.counters.is_some());
        assert_eq!(r.apply_error, None);
    }

    #[tokio::test]
    async fn a_failed_apply_is_reported_and_counted() {
        let dp = Slow {
            delay: Duration::ZERO,
            applied: Arc::default(),
            fail: true,
        };
        let metrics = Metrics::new().unwrap();
        let mut w = L4Worker::spawn(Box::new(dp), metrics.clone(), L4Report::default()).unwrap();
        w.apply(desired(1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.reports.borrow().apply_error.is_none() && Instant::now() < deadline {
            if tokio::time::timeout(Duration::from_secs(1), w.reports.changed())
                .await
                .is_err()
            {
                continue;
            }
        }
        assert_eq!(
            w.reports.borrow().apply_error.as_deref(),
            Some("L4 data path: test: refused"),
            "{:?}",
            w.reports.borrow()
        );
        assert_eq!(metrics.l4_apply_errors.get(), 1);
    }
}
