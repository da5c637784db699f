//! Validation: raw config -> typed [`Config`], collecting every error with its key path.
//!
//! Defaults live here (and in `gateway/CONFIG.md`), nowhere else.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};

use super::raw::{
    RawConfig, RawHeaderOps, RawHealthCheck, RawListener, RawMatch, RawOutlier, RawRetry, RawRoute,
    RawUpstream, RawUpstreamTls,
};
use super::{
    Algorithm, CertificateConfig, Config, FieldError, HashSource, HeaderOps, HealthCheckConfig,
    HealthCheckKind, HostMatch, ListenerConfig, MemberConfig, OutlierConfig, PathMatch,
    PathRewrite, RetryConfig, RouteAction, RouteConfig, RouteMatch, Segment, TlsConfig,
    UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig, parse_duration,
};

/// CA bundle used for TLS to upstreams when `ca_file` is not set (Debian's system bundle).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Collects errors while validation goes on.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, value: Option<&String>, default: Duration) -> Duration {
        match value.map(|v| parse_duration(v)) {
            None => default,
            Some(Ok(d)) if d.is_zero() => {
                self.push(path, "must be > 0");
                default
            }
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(path, e);
                default
            }
        }
    }

    fn int_in(&mut self, path: &str, value: Option<i64>, default: u64, min: u64, max: u64) -> u64 {
        match value {
            None => default,
            Some(v) => match u64::try_from(v) {
                Ok(v) if (min..=max).contains(&v) => v,
                _ if min == 1 && v <= 0 => {
                    self.push(path, "must be > 0");
                    default
                }
                _ => {
                    self.push(path, format!("must be between {min} and {max}"));
                    default
                }
            },
        }
    }
}

fn usize_from(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn u32_from(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Validates a raw config; `base` anchors relative file paths.
pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors::default();
    let global = raw.global.unwrap_or_default();
    let drain_timeout = errs.duration(
        "global.drain_timeout",
        global.drain_timeout.as_ref(),
        Duration::from_secs(30),
    );
    let dns_refresh = errs.duration(
        "global.dns_refresh",
        global.dns_refresh.as_ref(),
        Duration::from_secs(10),
    );
    let admin = raw.admin.and_then(|a| a.listen).and_then(|l| {
        l.parse::<SocketAddr>()
            .map_err(|_| errs.push("admin.listen", format!("`{l}` is not an IP:port address")))
            .ok()
    });

    if raw.listeners.is_empty() {
        errs.push("listeners", "at least one listener is required");
    }
    let listener_names: BTreeSet<String> = raw.listeners.keys().cloned().collect();
    let upstream_names: BTreeSet<String> = raw.upstreams.keys().cloned().collect();
    let mut listeners = BTreeMap::new();
    let mut addresses: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (name, l) in raw.listeners {
        let path = format!("listeners.{name}");
        if let Some(listener) = listener(&mut errs, &path, &name, l, base) {
            if let Some(other) = addresses.insert(listener.listen, name.clone())
                && listener.listen.port() != 0
            {
                errs.push(
                    format!("{path}.listen"),
                    format!("address already used by listener `{other}`"),
                );
            }
            listeners.insert(name, listener);
        }
    }

    let mut upstreams = BTreeMap::new();
    for (name, u) in raw.upstreams {
        let path = format!("upstreams.{name}");
        if let Some(up) = upstream(&mut errs, &path, &name, u, base) {
            upstreams.insert(name, up);
        }
    }

    let mut routes = Vec::new();
    let mut route_names = BTreeSet::new();
    for (index, r) in raw.routes.into_iter().enumerate() {
        let path = format!("routes[{index}]");
        if let Some(route) = route(&mut errs, &path, index, r, &listener_names, &upstream_names) {
            if !route_names.insert(route.name.clone()) {
                errs.push(
                    format!("{path}.name"),
                    format!("route name `{}` is used twice", route.name),
                );
            }
            routes.push(route);
        }
    }

    if errs.0.is_empty() {
        Ok(Config {
            drain_timeout,
            access_log: global.access_log.unwrap_or(true),
            dns_refresh,
            admin,
            listeners,
            upstreams,
            routes,
        })
    } else {
        Err(errs.0)
    }
}

fn valid_name(errs: &mut Errors, path: &str, name: &str) {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        errs.push(path, "names may only contain letters, digits, `-` and `_`");
    }
}

fn file_path(base: &Path, value: &str) -> PathBuf {
    let p = PathBuf::from(value);
    if p.is_absolute() { p } else { base.join(p) }
}

fn listener(
    errs: &mut Errors,
    path: &str,
    name: &str,
    l: RawListener,
    base: &Path,
) -> Option<ListenerConfig> {
    valid_name(errs, path, name);
    let listen = match l.listen {
        None => {
            errs.push(
                format!("{path}.listen"),
                "is required (e.g. `0.0.0.0:8080`)",
            );
            None
        }
        Some(s) => s
            .parse::<SocketAddr>()
            .map_err(|_| {
                errs.push(
                    format!("{path}.listen"),
                    format!("`{s}` is not an IP:port address"),
                )
            })
            .ok(),
    };
    let max_connections = errs.int_in(
        &format!("{path}.max_connections"),
        l.max_connections,
        10_000,
        1,
        1_000_000,
    );
    let max_header_bytes = errs.int_in(
        &format!("{path}.max_header_bytes"),
        l.max_header_bytes,
        16 * 1024,
        1024,
        1024 * 1024,
    );
    let max_body_bytes = errs.int_in(
        &format!("{path}.max_body_bytes"),
        l.max_body_bytes,
        1024 * 1024,
        0,
        1024 * 1024 * 1024,
    );
    let header_timeout = errs.duration(
        &format!("{path}.header_timeout"),
        l.header_timeout.as_ref(),
        Duration::from_secs(10),
    );
    let body_timeout = errs.duration(
        &format!("{path}.body_timeout"),
        l.body_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let send_timeout = errs.duration(
        &format!("{path}.send_timeout"),
        l.send_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let idle_timeout = errs.duration(
        &format!("{path}.idle_timeout"),
        l.idle_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let max_requests_per_connection = errs.int_in(
        &format!("{path}.max_requests_per_connection"),
        l.max_requests_per_connection,
        1000,
        1,
        u64::from(u32::MAX),
    );
    let max_connection_age = errs.duration(
        &format!("{path}.max_connection_age"),
        l.max_connection_age.as_ref(),
        Duration::from_secs(3600),
    );
    let max_concurrent_streams = errs.int_in(
        &format!("{path}.max_concurrent_streams"),
        l.max_concurrent_streams,
        128,
        1,
        100_000,
    );
    let tls = l.tls.map(|t| {
        let tpath = format!("{path}.tls");
        if t.certificates.is_empty() {
            errs.push(
                format!("{tpath}.certificates"),
                "at least one certificate is required",
            );
        }
        let mut certificates = Vec::new();
        for (i, c) in t.certificates.into_iter().enumerate() {
            let cpath = format!("{tpath}.certificates[{i}]");
            let cert_file = c.cert_file.map(|f| file_path(base, &f));
            let key_file = c.key_file.map(|f| file_path(base, &f));
            if cert_file.is_none() {
                errs.push(
                    format!("{cpath}.cert_file"),
                    "is required (PEM certificate chain)",
                );
            }
            if key_file.is_none() {
                errs.push(format!("{cpath}.key_file"), "is required (PEM private key)");
            }
            let mut server_names = Vec::new();
            for (j, n) in c.server_names.iter().enumerate() {
                match host_match(n) {
                    Ok(_) => server_names.push(n.to_ascii_lowercase()),
                    Err(e) => errs.push(format!("{cpath}.server_names[{j}]"), e),
                }
            }
            if let (Some(cert_file), Some(key_file)) = (cert_file, key_file) {
                certificates.push(CertificateConfig {
                    cert_file,
                    key_file,
                    server_names,
                });
            }
        }
        TlsConfig {
            certificates,
            client_ca_file: t.client_ca_file.map(|f| file_path(base, &f)),
        }
    });
    Some(ListenerConfig {
        name: name.to_string(),
        listen: listen?,
        http2: l.http2.unwrap_or(true),
        max_connections: usize_from(max_connections),
        max_header_bytes: usize_from(max_header_bytes),
        max_body_bytes: usize_from(max_body_bytes),
        header_timeout,
        body_timeout,
        send_timeout,
        idle_timeout,
        max_requests_per_connection,
        max_connection_age,
        max_concurrent_streams: u32_from(max_concurrent_streams),
        tls,
    })
}

fn upstream(
    errs: &mut Errors,
    path: &str,
    name: &str,
    u: RawUpstream,
    base: &Path,
) -> Option<UpstreamConfig> {
    valid_name(errs, path, name);
    let hash = u.hash.map(|h| {
        let hpath = format!("{path}.hash");
        match (h.source.as_deref(), h.name) {
            (Some("header"), Some(n)) => match HeaderName::from_bytes(n.as_bytes()) {
                Ok(n) => Some(HashSource::Header(n)),
                Err(_) => {
                    errs.push(
                        format!("{hpath}.name"),
                        format!("`{n}` is not a header name"),
                    );
                    None
                }
            },
            (Some("cookie"), Some(n)) if !n.is_empty() => Some(HashSource::Cookie(n)),
            (Some("header" | "cookie"), _) => {
                errs.push(format!("{hpath}.name"), "is required for this source");
                None
            }
            (Some("client_address"), None) => Some(HashSource::ClientAddress),
            (Some("client_address"), Some(_)) => {
                errs.push(
                    format!("{hpath}.name"),
                    "is not used with source `client_address`",
                );
                None
            }
            (other, _) => {
                errs.push(
                    format!("{hpath}.source"),
                    format!(
                        "{} must be one of header, cookie, client_address",
                        other.map_or("is required and".to_string(), |o| format!("`{o}`"))
                    ),
                );
                None
            }
        }
    });
    let algorithm = match u.algorithm.as_deref().unwrap_or("round_robin") {
        "round_robin" => Some(Algorithm::RoundRobin),
        "weighted_round_robin" => Some(Algorithm::WeightedRoundRobin),
        "least_connections" => Some(Algorithm::LeastConnections),
        "p2c_ewma" => Some(Algorithm::P2cEwma),
        "consistent_hash" => match &hash {
            Some(Some(h)) => Some(Algorithm::ConsistentHash(h.clone())),
            Some(None) => None,
            None => {
                errs.push(
                    format!("{path}.hash"),
                    "is required with algorithm `consistent_hash`",
                );
                None
            }
        },
        other => {
            errs.push(
                format!("{path}.algorithm"),
                format!(
                    "`{other}` is not one of round_robin, weighted_round_robin, \
                     least_connections, p2c_ewma, consistent_hash"
                ),
            );
            None
        }
    };
    if hash.is_some() && !matches!(algorithm, Some(Algorithm::ConsistentHash(_)) | None) {
        errs.push(
            format!("{path}.hash"),
            "is only used with algorithm `consistent_hash`",
        );
    }
    let protocol = match u.protocol.as_deref().unwrap_or("http1") {
        "http1" => Some(UpstreamProtocol::Http1),
        "h2c" => Some(UpstreamProtocol::H2c),
        "h2" => Some(UpstreamProtocol::H2),
        other => {
            errs.push(
                format!("{path}.protocol"),
                format!("`{other}` is not one of http1, h2c, h2"),
            );
            None
        }
    };
    match (protocol, u.tls.is_some()) {
        (Some(UpstreamProtocol::H2), false) => errs.push(
            format!("{path}.protocol"),
            "`h2` is HTTP/2 over TLS and needs `tls`; use `h2c` for cleartext HTTP/2",
        ),
        (Some(UpstreamProtocol::H2c), true) => errs.push(
            format!("{path}.protocol"),
            "`h2c` is cleartext; with `tls` use `h2`",
        ),
        _ => {}
    }
    let tls = u
        .tls
        .map(|t| upstream_tls(errs, &format!("{path}.tls"), t, base));
    if u.members.is_empty() {
        errs.push(format!("{path}.members"), "at least one member is required");
    }
    let mut members = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, m) in u.members.into_iter().enumerate() {
        let mpath = format!("{path}.members[{i}]");
        let weight = match m.weight {
            None => NonZeroU32::MIN,
            Some(w) => match u32::try_from(w).ok().and_then(NonZeroU32::new) {
                Some(w) if w.get() <= 10_000 => w,
                Some(_) => {
                    errs.push(format!("{mpath}.weight"), "must be <= 10000");
                    NonZeroU32::MIN
                }
                None => {
                    errs.push(format!("{mpath}.weight"), "must be > 0");
                    NonZeroU32::MIN
                }
            },
        };
        let discover = m.discover.unwrap_or(false);
        match m.address {
            None => errs.push(format!("{mpath}.address"), "is required (`host:port`)"),
            Some(a) if super::is_srv_name(&a) => {
                if !seen.insert(a.clone()) {
                    errs.push(format!("{mpath}.address"), format!("`{a}` is listed twice"));
                }
                if !srv_name_ok(&a) {
                    errs.push(
                        format!("{mpath}.address"),
                        format!("`{a}` is not a DNS name (letters, digits, `-`, `_`, `.`)"),
                    );
                }
                if !discover {
                    errs.push(
                        format!("{mpath}.discover"),
                        format!("`{a}` is an SRV name (no port): it needs `discover = true`"),
                    );
                }
                members.push(MemberConfig {
                    address: a,
                    weight,
                    discover,
                });
            }
            Some(a) => match member_address(&a) {
                Ok(()) => {
                    if !seen.insert(a.clone()) {
                        errs.push(format!("{mpath}.address"), format!("`{a}` is listed twice"));
                    }
                    if discover && a.parse::<SocketAddr>().is_ok() {
                        errs.push(
                            format!("{mpath}.discover"),
                            format!("`{a}` is an IP address; `discover` needs a DNS name"),
                        );
                    }
                    members.push(MemberConfig {
                        address: a,
                        weight,
                        discover,
                    });
                }
                Err(e) => errs.push(format!("{mpath}.address"), e),
            },
        }
    }
    if members.iter().any(|m| m.discover) && tls.as_ref().is_some_and(|t| t.server_name.is_none()) {
        errs.push(
            format!("{path}.tls.server_name"),
            "is required with `discover` members (they are connected to by IP address, so the \
             name to verify cannot come from the address)",
        );
    }
    let connect_timeout = errs.duration(
        &format!("{path}.connect_timeout"),
        u.connect_timeout.as_ref(),
        Duration::from_secs(2),
    );
    let try_timeout = errs.duration(
        &format!("{path}.try_timeout"),
        u.try_timeout.as_ref(),
        Duration::from_secs(10),
    );
    let timeout = errs.duration(
        &format!("{path}.timeout"),
        u.timeout.as_ref(),
        Duration::from_secs(30),
    );
    let read_timeout = errs.duration(
        &format!("{path}.read_timeout"),
        u.read_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let tunnel_idle_timeout = errs.duration(
        &format!("{path}.tunnel_idle_timeout"),
        u.tunnel_idle_timeout.as_ref(),
        Duration::from_secs(3600),
    );
    if try_timeout > timeout {
        errs.push(format!("{path}.try_timeout"), "must not exceed `timeout`");
    }
    let pool_idle_timeout = errs.duration(
        &format!("{path}.pool_idle_timeout"),
        u.pool_idle_timeout.as_ref(),
        Duration::from_secs(90),
    );
    let pool_max_idle_per_member = errs.int_in(
        &format!("{path}.pool_max_idle_per_member"),
        u.pool_max_idle_per_member,
        32,
        0,
        10_000,
    );
    let max_requests_per_member = u.max_requests_per_member.map(|v| {
        errs.int_in(
            &format!("{path}.max_requests_per_member"),
            Some(v),
            1,
            1,
            1_000_000,
        )
    });
    let queue_timeout = u.queue_timeout.as_ref().map(|t| {
        let key = format!("{path}.queue_timeout");
        if max_requests_per_member.is_none() {
            errs.push(
                &key,
                "needs `max_requests_per_member` (there is no queue without it)",
            );
        }
        errs.duration(&key, Some(t), Duration::from_secs(1))
    });
    let health_check = u
        .health_check
        .and_then(|h| health_check(errs, &format!("{path}.health_check"), h));
    let outlier = outlier(
        errs,
        &format!("{path}.outlier"),
        u.outlier.unwrap_or_default(),
    );
    let retry = retry(errs, &format!("{path}.retry"), u.retry.unwrap_or_default());
    Some(UpstreamConfig {
        name: name.to_string(),
        algorithm: algorithm?,
        protocol: protocol?,
        members,
        connect_timeout,
        try_timeout,
        read_timeout,
        tunnel_idle_timeout,
        timeout,
        pool_idle_timeout,
        pool_max_idle_per_member: usize_from(pool_max_idle_per_member),
        max_requests_per_member,
        queue_timeout,
        health_check,
        outlier,
        retry,
        tls,
    })
}

fn upstream_tls(
    errs: &mut Errors,
    path: &str,
    t: RawUpstreamTls,
    base: &Path,
) -> UpstreamTlsConfig {
    let server_name = t.server_name.filter(|n| {
        let ok = rustls_pki_types::ServerName::try_from(n.as_str()).is_ok();
        if !ok {
            errs.push(
                format!("{path}.server_name"),
                format!("`{n}` is not a DNS name or IP address"),
            );
        }
        ok
    });
    let client_cert = match (t.cert_file, t.key_file) {
        (Some(c), Some(k)) => Some((file_path(base, &c), file_path(base, &k))),
        (None, None) => None,
        (Some(_), None) => {
            errs.push(
                format!("{path}.key_file"),
                "is required with `cert_file` (client certificate)",
            );
            None
        }
        (None, Some(_)) => {
            errs.push(
                format!("{path}.cert_file"),
                "is required with `key_file` (client certificate)",
            );
            None
        }
    };
    UpstreamTlsConfig {
        ca_file: t
            .ca_file
            .map_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE), |f| file_path(base, &f)),
        server_name,
        client_cert,
    }
}

/// A member address is `host:port` with a non-empty host and a valid, non-zero port.
/// An SRV name's characters: DNS labels, `_` included (`_http._tcp.api.example.com`).
fn srv_name_ok(a: &str) -> bool {
    let a = a.strip_suffix('.').unwrap_or(a);
    a.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

fn member_address(a: &str) -> Result<(), String> {
    if a.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("`{a}` is not `host:port`"))?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(format!("`{a}` is not `host:port`"))
    }
}

fn health_check(errs: &mut Errors, path: &str, h: RawHealthCheck) -> Option<HealthCheckConfig> {
    let kind = match (h.kind.as_deref().unwrap_or("http"), h.path) {
        ("http", p) => {
            let p = p.unwrap_or_else(|| "/".to_string());
            if !p.starts_with('/') {
                errs.push(format!("{path}.path"), "must start with `/`");
            }
            Some(HealthCheckKind::Http { path: p })
        }
        ("tcp", None) => Some(HealthCheckKind::Tcp),
        ("tcp", Some(_)) => {
            errs.push(format!("{path}.path"), "is not used with kind `tcp`");
            None
        }
        (other, _) => {
            errs.push(
                format!("{path}.kind"),
                format!("`{other}` is not one of http, tcp"),
            );
            None
        }
    };
    let interval = errs.duration(
        &format!("{path}.interval"),
        h.interval.as_ref(),
        Duration::from_secs(5),
    );
    let timeout = errs.duration(
        &format!("{path}.timeout"),
        h.timeout.as_ref(),
        Duration::from_secs(1),
    );
    let rise = errs.int_in(&format!("{path}.rise"), h.rise, 2, 1, 100);
    let fall = errs.int_in(&format!("{path}.fall"), h.fall, 3, 1, 100);
    Some(HealthCheckConfig {
        kind: kind?,
        interval,
        timeout,
        rise: u32_from(rise),
        fall: u32_from(fall),
    })
}

fn outlier(errs: &mut Errors, path: &str, o: RawOutlier) -> OutlierConfig {
    let consecutive_failures = errs.int_in(
        &format!("{path}.consecutive_failures"),
        o.consecutive_failures,
        5,
        0,
        1000,
    );
    let base_ejection = errs.duration(
        &format!("{path}.base_ejection"),
        o.base_ejection.as_ref(),
        Duration::from_secs(10),
    );
    let max_ejection = errs.duration(
        &format!("{path}.max_ejection"),
        o.max_ejection.as_ref(),
        Duration::from_secs(300),
    );
    if max_ejection < base_ejection {
        errs.push(format!("{path}.max_ejection"), "must be >= `base_ejection`");
    }
    let max_ejected_percent = errs.int_in(
        &format!("{path}.max_ejected_percent"),
        o.max_ejected_percent,
        50,
        0,
        100,
    );
    OutlierConfig {
        consecutive_failures: u32_from(consecutive_failures),
        base_ejection,
        max_ejection,
        max_ejected_percent: u32_from(max_ejected_percent),
    }
}

fn retry(errs: &mut Errors, path: &str, r: RawRetry) -> RetryConfig {
    let max_retries = errs.int_in(&format!("{path}.max_retries"), r.max_retries, 2, 0, 10);
    let budget_percent = errs.int_in(
        &format!("{path}.budget_percent"),
        r.budget_percent,
        20,
        0,
        100,
    );
    let budget_min_per_second = errs.int_in(
        &format!("{path}.budget_min_per_second"),
        r.budget_min_per_second,
        3,
        0,
        10_000,
    );
    let buffer_bytes = errs.int_in(
        &format!("{path}.buffer_bytes"),
        r.buffer_bytes,
        64 * 1024,
        0,
        16 * 1024 * 1024,
    );
    RetryConfig {
        max_retries: u32_from(max_retries),
        budget_percent: u32_from(budget_percent),
        budget_min_per_second: u32_from(budget_min_per_second),
        buffer_bytes: usize_from(buffer_bytes),
    }
}

/// Parses a host condition: `example.com` or `*.example.com`.
pub fn host_match(h: &str) -> Result<HostMatch, String> {
    let h = h.to_ascii_lowercase();
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    if let Some(rest) = h.strip_prefix("*.") {
        if label_ok(rest) {
            return Ok(HostMatch::Wildcard(format!(".{rest}")));
        }
    } else if label_ok(&h) {
        return Ok(HostMatch::Exact(h));
    }
    Err(format!(
        "`{h}` is not a host name or wildcard (`api.example.com`, `*.example.com`)"
    ))
}

/// Parses a path pattern such as `/users/{id}/posts`.
pub fn path_pattern(p: &str) -> Result<Vec<Segment>, String> {
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| "must start with `/`".to_string())?;
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for seg in rest.split('/') {
        if let Some(inner) = seg.strip_prefix('{') {
            let name = inner
                .strip_suffix('}')
                .ok_or_else(|| format!("segment `{seg}` has an unclosed `{{`"))?;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "parameter `{seg}` needs a name of letters, digits, `_`"
                ));
            }
            if !names.insert(name.to_string()) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            out.push(Segment::Param(name.to_string()));
        } else if seg.contains(['{', '}']) {
            return Err(format!(
                "segment `{seg}`: a parameter must be a whole segment"
            ));
        } else {
            out.push(Segment::Literal(seg.to_string()));
        }
    }
    Ok(out)
}

fn route(
    errs: &mut Errors,
    path: &str,
    index: usize,
    r: RawRoute,
    listeners: &BTreeSet<String>,
    upstreams: &BTreeSet<String>,
) -> Option<RouteConfig> {
    let name = r.name.unwrap_or_else(|| format!("route-{index}"));
    valid_name(errs, &format!("{path}.name"), &name);
    if let Some(ls) = &r.listeners {
        for (i, l) in ls.iter().enumerate() {
            if !listeners.contains(l) {
                errs.push(
                    format!("{path}.listeners[{i}]"),
                    format!("no listener named `{l}`"),
                );
            }
        }
    }
    let matcher = route_match(
        errs,
        &format!("{path}.match"),
        r.matches.unwrap_or_default(),
    );
    let actions = usize::from(r.upstream.is_some())
        + usize::from(r.redirect.is_some())
        + usize::from(r.respond.is_some());
    if actions != 1 {
        errs.push(
            path,
            "exactly one of `upstream`, `redirect` or `respond` is required",
        );
    }
    let action = if let Some(u) = r.upstream {
        if !upstreams.contains(&u) {
            errs.push(
                format!("{path}.upstream"),
                format!("no upstream named `{u}`"),
            );
        }
        Some(RouteAction::Proxy { upstream: u })
    } else if let Some(rd) = r.redirect {
        let status = match rd.status.unwrap_or(302) {
            s @ (301 | 302 | 303 | 307 | 308) => {
                StatusCode::from_u16(u16::try_from(s).unwrap_or(302)).unwrap_or(StatusCode::FOUND)
            }
            _ => {
                errs.push(
                    format!("{path}.redirect.status"),
                    "must be one of 301, 302, 303, 307, 308",
                );
                StatusCode::FOUND
            }
        };
        match rd.location {
            Some(l) if HeaderValue::from_str(&l).is_ok() && !l.is_empty() => {
                Some(RouteAction::Redirect {
                    location: l,
                    status,
                })
            }
            Some(_) => {
                errs.push(
                    format!("{path}.redirect.location"),
                    "is not a valid header value",
                );
                None
            }
            None => {
                errs.push(format!("{path}.redirect.location"), "is required");
                None
            }
        }
    } else if let Some(rs) = r.respond {
        let status = match rs
            .status
            .and_then(|s| u16::try_from(s).ok())
            .map(StatusCode::from_u16)
        {
            None if rs.status.is_none() => StatusCode::OK,
            Some(Ok(s)) if (200..=599).contains(&s.as_u16()) => s,
            _ => {
                errs.push(
                    format!("{path}.respond.status"),
                    "must be between 200 and 599",
                );
                StatusCode::OK
            }
        };
        let content_type = rs.content_type.unwrap_or_else(|| "text/plain".to_string());
        match HeaderValue::from_str(&content_type) {
            Ok(content_type) => Some(RouteAction::Respond {
                status,
                body: rs.body.unwrap_or_default(),
                content_type,
            }),
            Err(_) => {
                errs.push(
                    format!("{path}.respond.content_type"),
                    "is not a valid header value",
                );
                None
            }
        }
    } else {
        None
    };
    let rewrite = match (r.strip_prefix.unwrap_or(false), r.rewrite_prefix) {
        (false, None) => None,
        (strip, replacement) => {
            if strip && replacement.is_some() {
                errs.push(
                    format!("{path}.rewrite_prefix"),
                    "cannot be combined with `strip_prefix`",
                );
            }
            match &matcher.path {
                Some(PathMatch::Prefix(prefix)) => Some(PathRewrite {
                    prefix: prefix.clone(),
                    replacement: replacement.unwrap_or_default(),
                }),
                _ => {
                    let key = if strip {
                        "strip_prefix"
                    } else {
                        "rewrite_prefix"
                    };
                    errs.push(format!("{path}.{key}"), "requires `match.path_prefix`");
                    None
                }
            }
        }
    };
    if let Some(PathRewrite { replacement, .. }) = &rewrite
        && !replacement.is_empty()
        && !replacement.starts_with('/')
    {
        errs.push(format!("{path}.rewrite_prefix"), "must start with `/`");
    }
    let request_headers = header_ops(errs, &format!("{path}.request_headers"), r.request_headers);
    let response_headers = header_ops(
        errs,
        &format!("{path}.response_headers"),
        r.response_headers,
    );
    Some(RouteConfig {
        name,
        index,
        listeners: r.listeners,
        matcher,
        action: action?,
        rewrite,
        request_headers,
        response_headers,
    })
}

fn route_match(errs: &mut Errors, path: &str, m: RawMatch) -> RouteMatch {
    let mut hosts = Vec::new();
    for (i, h) in m.hosts.iter().enumerate() {
        match host_match(h) {
            Ok(h) => hosts.push(h),
            Err(e) => errs.push(format!("{path}.hosts[{i}]"), e),
        }
    }
    let given = usize::from(m.path_exact.is_some())
        + usize::from(m.path_prefix.is_some())
        + usize::from(m.path_pattern.is_some());
    if given > 1 {
        errs.push(
            path,
            "at most one of `path_exact`, `path_prefix`, `path_pattern` may be given",
        );
    }
    let mut path_match = None;
    if let Some(p) = m.path_exact {
        if p.starts_with('/') {
            path_match = Some(PathMatch::Exact(p));
        } else {
            errs.push(format!("{path}.path_exact"), "must start with `/`");
        }
    } else if let Some(p) = m.path_prefix {
        if p.starts_with('/') {
            let trimmed = p.trim_end_matches('/');
            path_match = Some(PathMatch::Prefix(if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            }));
        } else {
            errs.push(format!("{path}.path_prefix"), "must start with `/`");
        }
    } else if let Some(p) = m.path_pattern {
        match path_pattern(&p) {
            Ok(segs) => path_match = Some(PathMatch::Pattern(segs)),
            Err(e) => errs.push(format!("{path}.path_pattern"), e),
        }
    }
    let mut methods = Vec::new();
    for (i, name) in m.methods.iter().enumerate() {
        match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
            Ok(me) => methods.push(me),
            Err(_) => errs.push(
                format!("{path}.methods[{i}]"),
                format!("`{name}` is not a method"),
            ),
        }
    }
    let mut headers = Vec::new();
    for (i, h) in m.headers.into_iter().enumerate() {
        match h
            .name
            .as_deref()
            .map(|n| HeaderName::from_bytes(n.as_bytes()))
        {
            Some(Ok(n)) => headers.push((n, h.value)),
            Some(Err(_)) => errs.push(format!("{path}.headers[{i}].name"), "is not a header name"),
            None => errs.push(format!("{path}.headers[{i}].name"), "is required"),
        }
    }
    let mut query = Vec::new();
    for (i, q) in m.query.into_iter().enumerate() {
        match q.name {
            Some(n) if !n.is_empty() => query.push((n, q.value)),
            _ => errs.push(format!("{path}.query[{i}].name"), "is required"),
        }
    }
    RouteMatch {
        hosts,
        path: path_match,
        methods,
        headers,
        query,
    }
}

fn header_ops(errs: &mut Errors, path: &str, ops: Option<RawHeaderOps>) -> HeaderOps {
    let Some(ops) = ops else {
        return HeaderOps::default();
    };
    let mut pairs = |key: &str, map: BTreeMap<String, String>| {
        let mut out = Vec::new();
        for (name, value) in map {
            let n = HeaderName::from_bytes(name.as_bytes());
            let v = HeaderValue::from_str(&value);
            match (n, v) {
                (Ok(n), Ok(v)) => out.push((n, v)),
                (Err(_), _) => errs.push(format!("{path}.{key}.{name}"), "is not a header name"),
                (_, Err(_)) => errs.push(
                    format!("{path}.{key}.{name}"),
                    "is not a valid header value",
                ),
            }
        }
        out
    };
    let add = pairs("add", ops.add);
    let set = pairs("set", ops.set);
    let mut remove = Vec::new();
    for (i, name) in ops.remove.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => remove.push(n),
            Err(_) => errs.push(format!("{path}.remove[{i}]"), "is not a header name"),
        }
    }
    HeaderOps { add, set, remove }
}
