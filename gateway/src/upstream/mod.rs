//! Upstream pools: members with live state, a balancer, a pooled client and a retry budget.

pub mod balancer;
pub mod client;
pub mod member;

use std::sync::Arc;
use std::time::Instant;

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::retry::RetryBudget;

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
    pub budget: RetryBudget,
}

impl Upstream {
    /// Builds a pool; members and the connection pool of `previous` are kept where the
    /// address (and for the pool, the connection settings) did not change.
    pub fn build(
        cfg: &UpstreamConfig,
        previous: Option<&Upstream>,
        metrics: &Metrics,
        now: Instant,
    ) -> Self {
        let members: Vec<Arc<Member>> = cfg
            .members
            .iter()
            .map(|m| {
                previous
                    .and_then(|p| {
                        p.members
                            .iter()
                            .find(|old| old.address == m.address && old.weight == m.weight.get())
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Member::new(m.address.clone(), m.weight.get())))
            })
            .collect();
        let client = match previous {
            Some(p) if client::same_pool_settings(&p.config, cfg) => p.client.clone(),
            _ => client::build(
                cfg,
                metrics
                    .upstream_connections_opened_total
                    .with_label_values(&[cfg.name.as_str()]),
            ),
        };
        let up = Self {
            balancer: Balancer::new(cfg.algorithm.clone(), &members),
            config: cfg.clone(),
            members,
            client,
            budget: RetryBudget::new(&cfg.retry, now),
        };
        up.publish_health(metrics, now);
        up
    }

    /// Whether outlier detection may eject one more member without passing the cap.
    pub fn may_eject(&self, now: Instant) -> bool {
        let ejected = self.members.iter().filter(|m| m.is_ejected(now)).count();
        let cap = self.members.len() * self.config.outlier.max_ejected_percent as usize / 100;
        ejected < cap
    }

    /// Updates the member health gauge.
    pub fn publish_health(&self, metrics: &Metrics, now: Instant) {
        for m in &self.members {
            metrics
                .upstream_member_healthy
                .with_label_values(&[self.config.name.as_str(), m.address.as_str()])
                .set(i64::from(m.available(now)));
        }
    }
}
