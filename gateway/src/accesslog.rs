//! The access log: one JSON object per request, emitted as a `tracing` event with target
//! `access_log` when the response body ends (or the client goes away).
//!
//! Inner stages fill a shared [`RequestLog`] (route, upstream, member, attempts, error) carried
//! in the request extensions; the observe layer writes the line.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use crate::config::RouteConfig;
use crate::upstream::{Member, Upstream};

/// Fields filled in while the request is processed (shared references, so filling them in
/// allocates nothing).
#[derive(Debug, Clone, Default)]
pub struct LogFields {
    pub route: Option<Arc<RouteConfig>>,
    pub upstream: Option<Arc<Upstream>>,
    pub member: Option<Arc<Member>>,
    pub attempts: u32,
    pub error: Option<String>,
    pub error_origin: Option<&'static str>,
}

/// Shared slot for [`LogFields`] (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Mutex<LogFields>>);

impl RequestLog {
    fn with<T>(&self, f: impl FnOnce(&mut LogFields) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records the matched route.
    pub fn set_route(&self, route: &Arc<RouteConfig>) {
        self.with(|l| l.route = Some(Arc::clone(route)));
    }

    /// Records the upstream pool.
    pub fn set_upstream(&self, upstream: &Arc<Upstream>) {
        self.with(|l| l.upstream = Some(Arc::clone(upstream)));
    }

    /// Records the member of the current attempt.
    pub fn set_member(&self, member: &Arc<Member>, attempt: u32) {
        self.with(|l| {
            l.member = Some(Arc::clone(member));
            l.attempts = attempt;
        });
    }

    /// Records the error that became the response.
    pub fn set_error(&self, error: String, origin: &'static str) {
        self.with(|l| {
            l.error = Some(error);
            l.error_origin = Some(origin);
        });
    }

    /// A copy of the fields.
    pub fn fields(&self) -> LogFields {
        self.with(|l| l.clone())
    }
}

/// One access-log line.
#[derive(Debug, Serialize)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
    pub listener: &'a str,
    pub client_addr: SocketAddr,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub member: Option<&'a str>,
    pub attempts: u32,
    pub bytes_sent: u64,
    pub complete: bool,
    pub duration_ms: f64,
    pub ttfb_ms: f64,
    pub error: Option<&'a str>,
    pub error_origin: Option<&'a str>,
}

/// Emits the line (JSON in the `line` field of an `access_log` event).
pub fn emit(line: &AccessLine<'_>) {
    match serde_json::to_string(line) {
        Ok(json) => tracing::info!(target: "access_log", "{json}"),
        Err(e) => tracing::warn!(error = %e, "cannot serialise an access-log line"),
    }
}

/// Milliseconds as a float, for log fields.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
