//! Gateway configuration: load a TOML file, validate it into typed values.
//!
//! The same [`load`] runs for `check-config`, start-up and reload. Parsing goes through
//! [`raw`] (serde, unknown keys rejected) and then [`validate`] (every problem collected with
//! its key path, e.g. `upstreams.api.members[1].weight: must be > 0`). See `gateway/CONFIG.md`
//! for the reference of every key.

pub mod raw;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};

/// One problem in a config file: the key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted key path, e.g. `listeners.web.tls.certificates[0].cert_file`.
    pub path: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape (unknown key, wrong type).
    #[error("{}: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    /// The file parsed but some values are invalid; every problem is listed.
    #[error("{}: {} error(s):\n{}", file.display(), errors.len(), join_errors(errors))]
    Invalid {
        file: PathBuf,
        errors: Vec<FieldError>,
    },
}

impl ConfigError {
    /// Every problem as `path: message` lines (one line for read and syntax errors).
    pub fn messages(&self) -> Vec<String> {
        match self {
            Self::Invalid { errors, .. } => errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads, parses and validates a config file.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    parse(&text, file)
}

/// Parses and validates config text; `file` names it in errors and anchors relative paths.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    validate::validate(raw, &base).map_err(|errors| ConfigError::Invalid {
        file: file.to_path_buf(),
        errors,
    })
}

/// A validated configuration. Immutable; a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Whether one JSON access-log line is written per request.
    pub access_log: bool,
    /// How often the names of `discover` members are resolved again.
    pub dns_refresh: Duration,
    /// Address of the admin listener (health, metrics, reload), if any.
    pub admin: Option<SocketAddr>,
    pub listeners: BTreeMap<String, ListenerConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes in declaration order (precedence is computed by the router).
    pub routes: Vec<RouteConfig>,
}

/// `[listeners.NAME]`
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub http2: bool,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    /// Longest wait for the next part of a request body.
    pub body_timeout: Duration,
    /// Longest wait for the client to take more of a response.
    pub send_timeout: Duration,
    pub idle_timeout: Duration,
    /// A connection's last request is its `max_requests_per_connection`th, or the first
    /// after it is `max_connection_age` old (HTTP/1: `Connection: close` on that response;
    /// HTTP/2: GOAWAY). Long-lived keep-alives thus move to other nodes after a scale-out.
    pub max_requests_per_connection: u64,
    pub max_connection_age: Duration,
    /// HTTP/2: streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    pub tls: Option<TlsConfig>,
}

/// `[listeners.NAME.tls]`
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub certificates: Vec<CertificateConfig>,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca_file: Option<PathBuf>,
}

/// One certificate chain and key, and the SNI names it serves.
#[derive(Debug, Clone)]
pub struct CertificateConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Lower-case names, exact (`api.example.com`) or wildcard (`*.example.com`).
    pub server_names: Vec<String>,
}

/// Load-balancing algorithm of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    P2cEwma,
    ConsistentHash(HashSource),
}

impl Algorithm {
    /// The name used in the config file.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::LeastConnections => "least_connections",
            Self::P2cEwma => "p2c_ewma",
            Self::ConsistentHash(_) => "consistent_hash",
        }
    }
}

/// What a consistent-hash pool hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    Header(HeaderName),
    Cookie(String),
    ClientAddress,
}

/// Protocol spoken to the members of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`); needs `tls`.
    H2,
}

impl UpstreamProtocol {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2c => "h2c",
            Self::H2 => "h2",
        }
    }

    /// Whether requests are sent as HTTP/2.
    pub fn is_h2(self) -> bool {
        matches!(self, Self::H2c | Self::H2)
    }
}

/// `[upstreams.NAME.tls]`: TLS to the members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// CA certificates that sign the members' certificates (PEM).
    pub ca_file: PathBuf,
    /// Name to send as SNI and to verify; `None`: the host of each member's address.
    pub server_name: Option<String>,
    /// Client certificate chain and key presented to members (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// `[upstreams.NAME]`
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub algorithm: Algorithm,
    pub protocol: UpstreamProtocol,
    pub members: Vec<MemberConfig>,
    pub connect_timeout: Duration,
    pub try_timeout: Duration,
    /// Longest wait for the next part of a response body from a member.
    pub read_timeout: Duration,
    /// An upgraded connection (WebSocket) with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_member: usize,
    /// Requests one member may have in flight (retries included); a member at it takes no
    /// more, and when every available member is at it the request gets 503 (circuit
    /// breaking). `None`: no limit.
    pub max_requests_per_member: Option<u64>,
    /// With `max_requests_per_member`: how long a request waits for a member to free a slot
    /// before its 503. `None`: it does not wait.
    pub queue_timeout: Option<Duration>,
    pub health_check: Option<HealthCheckConfig>,
    pub outlier: OutlierConfig,
    pub retry: RetryConfig,
    pub tls: Option<UpstreamTlsConfig>,
}

/// One member: `host:port` and a weight. A name is resolved on every new connection, unless
/// `discover`: then it stands for every address it resolves to, one member each, resolved
/// again every `global.dns_refresh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    pub address: String,
    pub weight: NonZeroU32,
    pub discover: bool,
}

/// Whether a `discover` name asks for SRV records: `_service._proto.domain`, without a port.
pub fn is_srv_name(name: &str) -> bool {
    let mut labels = name.split('.');
    !name.contains(':')
        && labels
            .next()
            .is_some_and(|l| l.len() > 1 && l.starts_with('_'))
        && labels
            .next()
            .is_some_and(|l| l.len() > 1 && l.starts_with('_'))
        && labels.next().is_some_and(|l| !l.is_empty())
}

impl UpstreamConfig {
    /// The `host:port` names of this upstream's `discover` members.
    pub fn discovered_names(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|m| m.discover)
            .map(|m| m.address.as_str())
    }
}

impl Config {
    /// The `host:port` names of every `discover` member, each once.
    pub fn discovered_names(&self) -> BTreeSet<String> {
        self.upstreams
            .values()
            .flat_map(UpstreamConfig::discovered_names)
            .map(str::to_owned)
            .collect()
    }
}

/// Active health checking.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// How a member is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` answers 2xx.
    Http { path: String },
}

/// Passive outlier detection.
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// Consecutive failures (5xx, connect errors, timeouts) that eject a member; 0 disables.
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

/// Retry policy and budget.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub max_retries: u32,
    /// Retries allowed as a percentage of requests over the budget window.
    pub budget_percent: u32,
    /// Retries per second always allowed, so that low traffic can still retry.
    pub budget_min_per_second: u32,
    /// Request bodies up to this size are read whole before the first attempt so that any
    /// attempt can resend them; larger ones stream and are resent only if never sent.
    pub buffer_bytes: usize,
}

/// `[[routes]]`
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Declaration index, the final tie-breaker of route precedence.
    pub index: usize,
    /// Listeners this route applies to; `None` means all.
    pub listeners: Option<Vec<String>>,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub rewrite: Option<PathRewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// The conditions of a route; all must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Any of these hosts; empty means any host.
    pub hosts: Vec<HostMatch>,
    pub path: Option<PathMatch>,
    /// Any of these methods; empty means any method.
    pub methods: Vec<Method>,
    /// All of these headers; `None` value means "present".
    pub headers: Vec<(HeaderName, Option<String>)>,
    /// All of these query parameters; `None` value means "present".
    pub query: Vec<(String, Option<String>)>,
}

/// A host condition (lower-case, without port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`; matches one or more labels before it.
    Wildcard(String),
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// Segment-aware prefix: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
    Prefix(String),
    /// `/users/{id}/posts`: `{name}` matches exactly one non-empty segment.
    Pattern(Vec<Segment>),
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    Proxy {
        upstream: String,
    },
    Redirect {
        location: String,
        status: StatusCode,
    },
    Respond {
        status: StatusCode,
        body: String,
        content_type: HeaderValue,
    },
}

/// Rewrite of a prefix-matched path before proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRewrite {
    pub prefix: String,
    /// Replacement of the prefix (`""` strips it).
    pub replacement: String,
}

/// Header operations, applied in the order remove, set, add.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Applies the operations to a header map.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Parses `250ms`, `10s`, `5m`, `1h` (a unit is required).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit; write e.g. `500ms`, `10s`, `5m`"))?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. `500ms`, `10s`, `5m`"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "`{text}` has unknown unit `{unit}`; use ms, s, m or h"
            ));
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests;
