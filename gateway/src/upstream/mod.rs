//! Upstream pools: members with live state, a balancer, a pooled client and a retry budget.

pub mod balancer;
pub mod client;
pub mod h1;
pub mod member;
pub mod pool;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use prometheus::IntCounter;

use crate::config::{FieldError, UpstreamConfig};
use crate::metrics::Metrics;
use crate::retry::RetryBudget;
use crate::snapshot::Resolved;

pub use balancer::Balancer;
pub use client::UpstreamClient;
pub use member::{AttemptOutcome, Member};

/// One upstream pool as used by the proxy (part of a snapshot).
#[derive(Debug)]
pub struct Upstream {
    pub config: UpstreamConfig,
    pub members: Vec<Arc<Member>>,
    pub balancer: Balancer,
    pub client: UpstreamClient,
    /// The request path's pool for plain HTTP/1.1 upstreams (`client` serves the others and
    /// the health probes).
    pub pool: Option<pool::Http1Pool>,
    pub budget: RetryBudget,
    /// `lb_gateway_upstream_pool_reused_requests_total` of this upstream (resolved once).
    pub pool_reused: IntCounter,
    /// `lb_gateway_upstream_overflow_total` of this upstream (resolved once).
    overflow: IntCounter,
    /// The counters of each member (same index), resolved once so that an attempt does not
    /// look labels up (and a retired pool cannot bring back the series of a member that left:
    /// its handles are no longer in the registry).
    counters: Vec<MemberCounters>,
    /// When the health gauge was last published (ms since `epoch`).
    published_ms: AtomicU64,
    epoch: Instant,
    /// Set when a newer snapshot replaced this pool: it no longer publishes member health
    /// (requests still finishing on it would bring back the series of members that left).
    retired: AtomicBool,
}

/// The counters of one member: `lb_gateway_upstream_attempts_total` by outcome label, and
/// `lb_gateway_upstream_ejections_total`.
#[derive(Debug)]
struct MemberCounters {
    attempts: [IntCounter; ATTEMPT_OUTCOMES.len()],
    ejections: IntCounter,
}

/// The `outcome` label values of `lb_gateway_upstream_attempts_total`.
pub const ATTEMPT_OUTCOMES: [&str; 5] =
    ["success", "http_5xx", "connect_error", "timeout", "error"];

/// How often the member health gauge is refreshed from the request path (health checks and
/// ejections publish at once).
const PUBLISH_EVERY_MS: u64 = 1000;

impl Upstream {
    /// Builds a pool; members and the connection pool of `previous` are kept where the
    /// address (and for the pool, the connection settings) did not change. TLS files are
    /// loaded here; their errors are pushed with key paths and `None` is returned.
    pub fn build(
        cfg: &UpstreamConfig,
        previous: Option<&Upstream>,
        metrics: &Metrics,
        now: Instant,
        resolved: &Resolved,
        errs: &mut Vec<FieldError>,
    ) -> Option<Self> {
        let members: Vec<Arc<Member>> = member_addresses(cfg, resolved)
            .into_iter()
            .map(|(address, weight)| {
                previous
                    .and_then(|p| {
                        p.members
                            .iter()
                            .find(|old| old.address == address && old.weight == weight)
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Member::new(address, weight)))
            })
            .collect();
        let opened = metrics
            .upstream_connections_opened_total
            .with_label_values(&[cfg.name.as_str()]);
        let (client, pool) = match previous {
            Some(p) if client::same_pool_settings(&p.config, cfg) => {
                (p.client.clone(), p.pool.clone())
            }
            _ => {
                // Connections pooled under the old settings are not reused.
                for m in &members {
                    m.idle.clear();
                }
                (
                    client::build(cfg, opened.clone(), errs)?,
                    client::build_http1_pool(cfg, opened),
                )
            }
        };
        let counters = members
            .iter()
            .map(|m| {
                let (name, address) = (cfg.name.as_str(), m.address.as_str());
                MemberCounters {
                    attempts: ATTEMPT_OUTCOMES.map(|o| {
                        metrics
                            .upstream_attempts_total
                            .with_label_values(&[name, address, o])
                    }),
                    ejections: metrics
                        .upstream_ejections_total
                        .with_label_values(&[name, address]),
                }
            })
            .collect();
        let up = Self {
            balancer: Balancer::new(cfg.algorithm.clone(), &members)
                .with_member_limit(cfg.max_requests_per_member),
            config: cfg.clone(),
            members,
            client,
            pool,
            pool_reused: metrics
                .upstream_pool_reused_requests_total
                .with_label_values(&[cfg.name.as_str()]),
            overflow: metrics
                .upstream_overflow_total
                .with_label_values(&[cfg.name.as_str()]),
            budget: RetryBudget::new(&cfg.retry, now),
            counters,
            published_ms: AtomicU64::new(0),
            epoch: now,
            retired: AtomicBool::new(false),
        };
        up.publish_health(metrics, now);
        Some(up)
    }

    /// Whether outlier detection may eject one more member without passing the cap.
    pub fn may_eject(&self, now: Instant) -> bool {
        let ejected = self.members.iter().filter(|m| m.is_ejected(now)).count();
        let cap = self.members.len() * self.config.outlier.max_ejected_percent as usize / 100;
        ejected < cap
    }

    /// Counts an attempt on member `idx` with an outcome of [`ATTEMPT_OUTCOMES`].
    pub fn count_attempt(&self, idx: usize, outcome: &str) {
        let counters = self.counters.get(idx);
        let i = ATTEMPT_OUTCOMES.iter().position(|o| *o == outcome);
        if let (Some(c), Some(i)) = (counters, i) {
            c.attempts[i].inc();
        }
    }

    /// Counts a request refused because every available member was at its limit.
    pub fn count_overflow(&self) {
        self.overflow.inc();
    }

    /// Counts an outlier ejection of member `idx`.
    pub fn count_ejection(&self, idx: usize) {
        if let Some(c) = self.counters.get(idx) {
            c.ejections.inc();
        }
    }

    /// Updates the member health gauge when `changed`, or when it was last published more
    /// than a second ago (ejections expire without an event).
    pub fn maybe_publish_health(&self, metrics: &Metrics, now: Instant, changed: bool) {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let last = self.published_ms.load(Ordering::Relaxed);
        if changed || ms.saturating_sub(last) >= PUBLISH_EVERY_MS {
            self.published_ms.store(ms, Ordering::Relaxed);
            self.publish_health(metrics, now);
        }
    }

    /// Marks the pool as replaced by a newer snapshot's (see [`Self::is_retired`]).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Whether a newer snapshot replaced this pool; it then publishes no member health.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Updates the member health gauge (not once the pool is retired).
    pub fn publish_health(&self, metrics: &Metrics, now: Instant) {
        for m in &self.members {
            self.publish_member_health(metrics, m, now);
        }
    }

    /// Updates one member's health gauge (not once the pool is retired).
    pub fn publish_member_health(&self, metrics: &Metrics, member: &Member, now: Instant) {
        if self.is_retired() {
            return;
        }
        metrics
            .upstream_member_healthy
            .with_label_values(&[self.config.name.as_str(), member.address.as_str()])
            .set(i64::from(member.available(now)));
    }
}

/// The members' addresses and weights in config order: a `discover` member becomes one per
/// address its name resolved to (none while it has not resolved); an address that appears
/// twice (a name resolving to a listed address, two names to one address) is a member once,
/// with the first weight.
fn member_addresses(cfg: &UpstreamConfig, resolved: &Resolved) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    let mut push = |address: String, weight: u32| {
        if !out.iter().any(|(a, _)| *a == address) {
            out.push((address, weight));
        }
    };
    for m in &cfg.members {
        if m.discover {
            for found in resolved.get(&m.address).into_iter().flatten() {
                let weight = found.weight.unwrap_or(m.weight);
                push(found.addr.to_string(), weight.get());
            }
        } else {
            push(m.address.clone(), m.weight.get());
        }
    }
    out
}
