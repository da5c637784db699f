//! Prometheus metrics of the gateway, one registry per process (not a global).
//!
//! Names carry units and `_total` suffixes; the reference is in `gateway/CONFIG.md`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Error registering a metric (a programming error: duplicate name or bad label).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// All gateway metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by listener, route, method and status class (`2xx`...).
    pub requests_total: IntCounterVec,
    /// Request duration from headers received to response body end.
    pub request_duration_seconds: HistogramVec,
    /// Open client connections by listener.
    pub active_connections: IntGaugeVec,
    /// Accepted client connections by listener.
    pub connections_total: IntCounterVec,
    /// Requests being processed.
    pub in_flight_requests: IntGauge,
    /// Upstream attempts by upstream, member and outcome (`success`, `http_5xx`, `connect_error`,
    /// `timeout`, `error`).
    pub upstream_attempts_total: IntCounterVec,
    /// 1 when a member can take traffic (healthy and not ejected), else 0.
    pub upstream_member_healthy: IntGaugeVec,
    /// Retries by upstream and decision (`attempted`, `budget_exhausted`).
    pub upstream_retries_total: IntCounterVec,
    /// Outlier ejections by upstream and member.
    pub upstream_ejections_total: IntCounterVec,
    /// New upstream connections by upstream.
    pub upstream_connections_opened_total: IntCounterVec,
    /// Upstream requests sent over a pooled (reused) connection, by upstream.
    pub upstream_pool_reused_requests_total: IntCounterVec,
    /// Requests refused with 503 because every available member was at
    /// `max_requests_per_member`, by upstream.
    pub upstream_overflow_total: IntCounterVec,
    /// Config reloads by result (`success`, `failure`).
    pub config_reloads_total: IntCounterVec,
    /// Access-log lines dropped because the output could not keep up (or failed).
    pub access_log_dropped_lines_total: IntCounter,
    /// `lb_gateway_timeouts_total` by timeout, resolved once.
    pub timeouts: TimeoutCounters,
}

/// `lb_gateway_timeouts_total{timeout}`: how often each bounded wait ran out.
#[derive(Clone, Debug)]
pub struct TimeoutCounters {
    /// A request head (or TLS handshake) took longer than `header_timeout`.
    pub header: IntCounter,
    /// A request body stalled for `body_timeout`.
    pub body: IntCounter,
    /// A client took nothing of a response for `send_timeout`.
    pub send: IntCounter,
    /// A member sent nothing of a response body for `read_timeout`.
    pub read: IntCounter,
    /// A tunnel had no traffic for `tunnel_idle_timeout`.
    pub tunnel_idle: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let requests_total = counter(
            "lb_gateway_requests_total",
            "Requests by listener, route, method and status class.",
            &["listener", "route", "method", "status_class"],
        )?;
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "lb_gateway_request_duration_seconds",
                "Request duration from headers received to the end of the response body.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["listener", "route"],
        )?;
        registry.register(Box::new(request_duration_seconds.clone()))?;
        let active_connections = gauge(
            "lb_gateway_active_connections",
            "Open client connections by listener.",
            &["listener"],
        )?;
        let connections_total = counter(
            "lb_gateway_connections_total",
            "Accepted client connections by listener.",
            &["listener"],
        )?;
        let in_flight_requests =
            IntGauge::new("lb_gateway_in_flight_requests", "Requests being processed.")?;
        registry.register(Box::new(in_flight_requests.clone()))?;
        let upstream_attempts_total = counter(
            "lb_gateway_upstream_attempts_total",
            "Upstream attempts by upstream, member and outcome.",
            &["upstream", "member", "outcome"],
        )?;
        let upstream_member_healthy = gauge(
            "lb_gateway_upstream_member_healthy",
            "1 when the member takes traffic (healthy and not ejected), else 0.",
            &["upstream", "member"],
        )?;
        let upstream_retries_total = counter(
            "lb_gateway_upstream_retries_total",
            "Retries by upstream and decision (attempted, budget_exhausted).",
            &["upstream", "decision"],
        )?;
        let upstream_ejections_total = counter(
            "lb_gateway_upstream_ejections_total",
            "Outlier ejections by upstream and member.",
            &["upstream", "member"],
        )?;
        let upstream_connections_opened_total = counter(
            "lb_gateway_upstream_connections_opened_total",
            "New upstream connections by upstream.",
            &["upstream"],
        )?;
        let upstream_pool_reused_requests_total = counter(
            "lb_gateway_upstream_pool_reused_requests_total",
            "Upstream requests sent over a reused pooled connection, by upstream.",
            &["upstream"],
        )?;
        let upstream_overflow_total = counter(
            "lb_gateway_upstream_overflow_total",
            "Requests refused (503) because every available member was at max_requests_per_member, by upstream.",
            &["upstream"],
        )?;
        let config_reloads_total = counter(
            "lb_gateway_config_reloads_total",
            "Config reloads by result (success, failure).",
            &["result"],
        )?;
        let access_log_dropped_lines_total = IntCounter::new(
            "lb_gateway_access_log_dropped_lines_total",
            "Access-log lines dropped because the output could not keep up or failed.",
        )?;
        registry.register(Box::new(access_log_dropped_lines_total.clone()))?;
        let timeouts_total = counter(
            "lb_gateway_timeouts_total",
            "Bounded waits that ran out, by timeout.",
            &["timeout"],
        )?;
        let timeouts = TimeoutCounters {
            header: timeouts_total.with_label_values(&["header"]),
            body: timeouts_total.with_label_values(&["body"]),
            send: timeouts_total.with_label_values(&["send"]),
            read: timeouts_total.with_label_values(&["read"]),
            tunnel_idle: timeouts_total.with_label_values(&["tunnel_idle"]),
        };
        Ok(Self {
            registry,
            requests_total,
            request_duration_seconds,
            active_connections,
            connections_total,
            in_flight_requests,
            upstream_attempts_total,
            upstream_member_healthy,
            upstream_retries_total,
            upstream_ejections_total,
            upstream_connections_opened_total,
            upstream_pool_reused_requests_total,
            upstream_overflow_total,
            config_reloads_total,
            access_log_dropped_lines_total,
            timeouts,
        })
    }

    /// Removes every series of a member that left `upstream`'s pool (health, attempts,
    /// ejections): with `discover` names whose addresses change on each deploy, the series of
    /// gone addresses would otherwise pile up for the life of the process.
    pub fn forget_member(&self, upstream: &str, member: &str) {
        // Err: that series was never created; nothing to remove.
        self.upstream_member_healthy
            .remove_label_values(&[upstream, member])
            .ok();
        self.upstream_ejections_total
            .remove_label_values(&[upstream, member])
            .ok();
        for outcome in crate::upstream::ATTEMPT_OUTCOMES {
            self.upstream_attempts_total
                .remove_label_values(&[upstream, member, outcome])
                .ok();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new().unwrap();
        m.config_reloads_total.with_label_values(&["success"]).inc();
        let text = m.render().unwrap();
        assert!(text.contains("lb_gateway_config_reloads_total{result=\"success\"} 1"));
    }
}
