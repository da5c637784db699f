//! Active health checks: probe every member on an interval, flip its state after `rise`
//! consecutive successes or `fall` consecutive failures.
//!
//! Members start healthy, so a fresh gateway serves at once; a dead member is taken out after
//! `fall` probes (and sooner by passive outlier detection). The probing tasks belong to a
//! snapshot: they stop when a reload or a discovery change replaces their pool (before their
//! next probe; a probe under way then is not counted), even while requests still run on the
//! old snapshot, and are aborted when the snapshot is dropped.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, header};
use tokio::task::JoinHandle;

use crate::config::{HealthCheckConfig, HealthCheckKind, UpstreamProtocol};
use crate::metrics::Metrics;
use crate::upstream::{Member, Upstream, UpstreamClient};

/// The rise/fall state machine of one member (pure; the caller supplies probe results).
#[derive(Debug, Clone)]
pub struct HealthTracker {
    healthy: bool,
    successes: u32,
    failures: u32,
}

impl HealthTracker {
    /// Starts in the given state.
    pub fn new(healthy: bool) -> Self {
        Self {
            healthy,
            successes: 0,
            failures: 0,
        }
    }

    /// Feeds one probe result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.healthy && self.successes >= rise {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= fall {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

/// Aborts the tasks it holds when dropped (owned by a snapshot).
#[derive(Debug, Default)]
pub struct TaskSet(Vec<JoinHandle<()>>);

impl TaskSet {
    /// Adds a task.
    pub fn push(&mut self, handle: JoinHandle<()>) {
        self.0.push(handle);
    }
}

impl Drop for TaskSet {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Starts the probes of every member of `upstream` (nothing when it has no health check).
pub fn spawn(upstream: &Arc<Upstream>, metrics: &Metrics, tasks: &mut TaskSet) {
    let Some(hc) = upstream.config.health_check.clone() else {
        return;
    };
    for member in &upstream.members {
        let member = Arc::clone(member);
        let client = upstream.client.clone();
        let hc = hc.clone();
        let metrics = metrics.clone();
        let name = upstream.config.name.clone();
        let scheme = crate::upstream::client::scheme(&upstream.config);
        let protocol = upstream.config.protocol;
        let pool = Arc::clone(upstream);
        tasks.push(tokio::spawn(async move {
            let mut tracker = HealthTracker::new(member.healthy());
            let mut interval = tokio::time::interval(hc.interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if pool.is_retired() {
                    return;
                }
                let ok = probe(&member, &client, &hc, scheme, protocol).await;
                // The pool may have been replaced while the probe ran: its result is then
                // the old config's and must not touch the member, which the new pool shares.
                if pool.is_retired() {
                    return;
                }
                if let Some(state) = tracker.observe(ok, hc.rise, hc.fall) {
                    member.set_healthy(state);
                    tracing::info!(upstream = %name, member = %member.address, healthy = state, "member health changed");
                }
                pool.publish_member_health(&metrics, &member, Instant::now());
            }
        }));
    }
}

async fn probe(
    member: &Member,
    client: &UpstreamClient,
    hc: &HealthCheckConfig,
    scheme: &str,
    protocol: UpstreamProtocol,
) -> bool {
    let attempt = async {
        match &hc.kind {
            HealthCheckKind::Tcp => tokio::net::TcpStream::connect(member.address.as_str())
                .await
                .is_ok(),
            HealthCheckKind::Http { path } => {
                let uri = format!("{scheme}://{}{}", member.address, path);
                let mut req = Request::get(uri).header(header::USER_AGENT, "lb-gateway-health");
                if protocol.is_h2() {
                    req = req.version(http::Version::HTTP_2);
                }
                let Ok(req) = req.body(crate::body::empty()) else {
                    return false;
                };
                match client.request(req).await {
                    Ok(res) => res.status().is_success(),
                    Err(_) => false,
                }
            }
        }
    };
    tokio::time::timeout(hc.timeout, attempt)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut t = HealthTracker::new(true);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), None); // resets the failure streak
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), Some(false));
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), Some(true));
        assert_eq!(t.observe(true, 2, 3), None);
    }
}
