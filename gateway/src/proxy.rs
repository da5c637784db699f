//! The innermost service: route the request and answer it (fixed response, redirect) or
//! forward it to an upstream member, with retries, timeouts and outlier detection.
//!
//! Stages of a proxied request, in order: check framing and header size -> route -> read the
//! start of the body (up to `retry.buffer_bytes`, kept so that a retry can resend it; the rest
//! streams, see [`crate::request_body`]) -> build the upstream request (rewrite, hop-by-hop
//! headers removed, forwarding headers, trace context, route header operations) -> attempts
//! (pick a member, per-try timeout, classify, maybe retry within the budget) -> response headers
//! (hop-by-hop removed, route operations); the response body streams back. A WebSocket upgrade
//! that the member accepts becomes a byte tunnel between the two connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use crate::accesslog::RequestLog;
use crate::body::{self, RequestBody, ResponseBody};
use crate::config::{HashSource, RouteAction, RouteConfig, UpstreamProtocol};
use crate::conn::ConnInfo;
use crate::entropy;
use crate::error::ProxyError;
use crate::request_body::{BodyLimits, RequestBodySource};
use crate::router::{self, RequestFacts};
use crate::server::Shared;
use crate::snapshot::Snapshot;
use crate::trace::TRACEPARENT;
use crate::upstream::client::ConnectionUses;
use crate::upstream::h1::UpstreamBody;
use crate::upstream::pool::{Lease, SendError};
use crate::upstream::{AttemptOutcome, Member, Upstream};

/// The name lengths of [`HOP_BY_HOP`] (a cheap first test).
const HOP_BY_HOP_LENGTHS: [usize; 6] = [2, 7, 10, 16, 17, 18];

/// Headers that describe one connection and are never forwarded.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Routes and proxies requests using the current snapshot.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
}

impl ProxyService {
    /// A service reading snapshots from `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl tower::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ResponseBody>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let snapshot = self.shared.snapshot.load_full();
        let shared = Arc::clone(&self.shared);
        // `handle` owns what it needs: no async block around it, whose state would add a
        // copy of the request to the boxed future (moved whole into the box).
        Box::pin(handle(shared, snapshot, req))
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The host the client asked for, as the request carries it: both are reference-counted
/// slices of the request, so keeping one past the request costs no copy.
enum RawHost {
    /// The URI's authority (HTTP/2, absolute form).
    Authority(http::uri::Authority),
    /// The `Host` header (checked to be text).
    Header(HeaderValue),
}

impl RawHost {
    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Authority(a) => Some(a.as_str()),
            Self::Header(v) => v.to_str().ok(),
        }
    }
}

/// The host the client asked for: URI authority (HTTP/2, absolute form) or `Host`.
fn request_host(req: &Request<Incoming>) -> Option<RawHost> {
    if let Some(a) = req.uri().authority() {
        return Some(RawHost::Authority(a.clone()));
    }
    req.headers()
        .get(header::HOST)
        .filter(|h| h.to_str().is_ok())
        .map(|h| RawHost::Header(h.clone()))
}

fn check_framing(
    req: &Request<Incoming>,
    conn: &ConnInfo,
    max_header_bytes: usize,
) -> Result<(), ProxyError> {
    if conn.framing_is_ambiguous() {
        return Err(ProxyError::BadRequest {
            reason: "both Content-Length and Transfer-Encoding",
        });
    }
    // One pass over the (few) headers: comparing a name with a standard one is cheaper than
    // the hashed lookups of three separate checks.
    let (mut size, mut te, mut cl, mut hosts) = (0usize, false, false, 0usize);
    for (n, v) in req.headers() {
        size += n.as_str().len() + v.len() + 4;
        if n == header::HOST {
            hosts += 1;
        } else if n == header::TRANSFER_ENCODING {
            te = true;
        } else if n == header::CONTENT_LENGTH {
            cl = true;
        }
    }
    if te && cl {
        return Err(ProxyError::BadRequest {
            reason: "both Content-Length and Transfer-Encoding",
        });
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest {
            reason: "more than one Host header",
        });
    }
    if size > max_header_bytes {
        return Err(ProxyError::HeadersTooLarge {
            limit: max_header_bytes,
        });
    }
    Ok(())
}

async fn handle(
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (shared, snapshot) = (&*shared, &*snapshot);
    let conn = req
        .extensions()
        .get::<ConnInfo>()
        .cloned()
        .ok_or_else(|| ProxyError::Internal("request without connection info".into()))?;
    let listener = snapshot.listeners.get(&*conn.listener).ok_or_else(|| {
        ProxyError::Internal(format!("listener `{}` not in snapshot", conn.listener))
    })?;
    check_framing(&req, &conn, listener.config.max_header_bytes)?;
    let raw_host = request_host(&req);
    let raw_host = raw_host.as_ref().and_then(RawHost::as_str);
    let host = raw_host.map(router::normalize_host);
    let matched = {
        let facts = RequestFacts {
            host: host.as_deref(),
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
        };
        listener.router.route(&facts).ok_or(ProxyError::NoRoute)?
    };
    let log = req.extensions().get::<RequestLog>().cloned();
    if let Some(log) = &log {
        log.set_route(&matched.route);
    }
    let route = matched.route;
    let mut response = match &route.action {
        RouteAction::Respond {
            status,
            body,
            content_type,
        } => {
            let mut res = Response::new(body::full(body.clone()));
            *res.status_mut() = *status;
            res.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
            res
        }
        RouteAction::Redirect { location, status } => {
            let mut res = Response::new(body::empty());
            *res.status_mut() = *status;
            let loc = HeaderValue::from_str(location)
                .map_err(|_| ProxyError::Internal("invalid redirect location".into()))?;
            res.headers_mut().insert(header::LOCATION, loc);
            res
        }
        RouteAction::Proxy { upstream } => {
            let up = snapshot.upstreams.get(upstream).ok_or_else(|| {
                ProxyError::Internal(format!("upstream `{upstream}` not in snapshot"))
            })?;
            // The trace the request goes upstream in: the client's, or a new one.
            let traceparent = crate::trace::child_header(req.headers().get(&TRACEPARENT));
            if let Some(log) = &log {
                log.set_upstream(up, &traceparent);
            }
            let body_limits = BodyLimits {
                max_bytes: listener.config.max_body_bytes,
                timeout: listener.config.body_timeout,
            };
            forward(
                shared,
                up,
                &route,
                &conn,
                raw_host,
                body_limits,
                log.as_ref(),
                traceparent,
                req,
            )
            .await?
        }
    };
    route.response_headers.apply(response.headers_mut());
    Ok(response)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) headers to see which hop-by-hop names are present: comparing
    // names is cheaper than hashing each of them for a lookup, and most messages carry none
    // or only `Connection`.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut any = false;
    for name in headers.keys() {
        // A length test first: most names have none of the hop-by-hop lengths.
        let n = name.as_str().len();
        if HOP_BY_HOP_LENGTHS.contains(&n)
            && let Some(i) = HOP_BY_HOP.iter().position(|h| h == name)
        {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    // HOP_BY_HOP[0] is `Connection`: remove the headers it lists too. `keep-alive`, the usual
    // token, is one of HOP_BY_HOP already, so a lone `keep-alive` needs no list.
    let only_keep_alive = || {
        let mut values = headers.get_all(header::CONNECTION).iter();
        matches!((values.next(), values.next()), (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"keep-alive"))
    };
    if present[0] && !only_keep_alive() {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// Appends `value` to a comma-separated header (the first one of that name), or sets it.
/// One lookup through the entry: the header is usually absent.
fn append_value(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    let mut entry = match headers.entry(name) {
        header::Entry::Vacant(v) => {
            v.insert(value);
            return;
        }
        header::Entry::Occupied(o) => o,
    };
    let combined = match entry.get().to_str() {
        Ok(prev) if !prev.is_empty() => {
            let mut s = String::with_capacity(prev.len() + 2 + value.len());
            s.push_str(prev);
            s.push_str(", ");
            s.push_str(value.to_str().unwrap_or(""));
            HeaderValue::from_str(&s).ok()
        }
        _ => Some(value),
    };
    if let Some(v) = combined {
        // Replaces every value of that name (as `HeaderMap::insert` does).
        entry.insert(v);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

fn forwarding_headers(headers: &mut HeaderMap, conn: &ConnInfo, host: Option<&str>) {
    let proto = if conn.tls { "https" } else { "http" };
    append_value(headers, X_FORWARDED_FOR.clone(), conn.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    let (forwarded_host, forwarded) = conn.host_values(host);
    if let Some(v) = forwarded_host {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
    if let Some(v) = forwarded {
        append_value(headers, FORWARDED.clone(), v);
    }
}

fn hash_key(source: &HashSource, headers: &HeaderMap, conn: &ConnInfo) -> Option<u64> {
    match source {
        HashSource::ClientAddress => {
            Some(entropy::stable_hash(conn.peer.ip().to_string().as_bytes()))
        }
        HashSource::Header(name) => headers
            .get(name)
            .map(|v| entropy::stable_hash(v.as_bytes())),
        HashSource::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| entropy::stable_hash(v.as_bytes())),
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Shared,
    up: &Arc<Upstream>,
    route: &RouteConfig,
    conn: &ConnInfo,
    host: Option<&str>,
    body_limits: BodyLimits,
    log: Option<&RequestLog>,
    traceparent: HeaderValue,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let cfg = &up.config;
    // A WebSocket upgrade (HTTP/1.1 only; HTTP/2 has no Upgrade) to an HTTP/1.1 upstream.
    let upgrade = websocket_upgrade(&req, cfg.protocol);
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = RequestBodySource::read(incoming, declared, body_limits, cfg.retry.buffer_bytes)
        .await
        .inspect_err(|e| count_timeout(shared, e))?;

    let idempotent = is_idempotent(&parts.method);
    let scheme = if cfg.tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let hash = match &cfg.algorithm {
        crate::config::Algorithm::ConsistentHash(src) => hash_key(src, &parts.headers, conn),
        _ => None,
    };
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    if let Some(proto) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    if !headers.contains_key(header::HOST)
        && let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok())
    {
        headers.insert(header::HOST, v);
    }
    forwarding_headers(&mut headers, conn, host);
    headers.insert(TRACEPARENT.clone(), traceparent);
    route.request_headers.apply(&mut headers);
    let path_and_query = match &route.rewrite {
        Some(rw) => {
            let path = router::rewrite_prefix(parts.uri.path(), &rw.prefix, &rw.replacement);
            let pq = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            PathAndQuery::try_from(pq)
                .map_err(|_| ProxyError::Internal("cannot build the upstream path".into()))?
        }
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let version = if cfg.protocol.is_h2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    // Requests that the own HTTP/1.1 client carries (see `upstream::h1`): to a plain HTTP/1.1
    // pool, body in memory, no upgrade, no `CONNECT`, no framing set by the route's header
    // operations. The others go through hyper.
    let in_memory = match (&up.pool, &upgrade) {
        (Some(_), None)
            if parts.method != Method::CONNECT
                && !headers.contains_key(header::CONTENT_LENGTH)
                && !headers.contains_key(header::TRANSFER_ENCODING) =>
        {
            body.in_memory()
        }
        _ => None,
    };
    let metrics = &shared.metrics;
    let name = cfg.name.as_str();
    let start = Instant::now();
    let deadline = start + cfg.timeout;
    up.budget.record_request(start);
    // Members tried so far, on the stack: attempts are bounded by `retry.max_retries` (at
    // most 10) + 1.
    let mut tried = [0usize; 11];
    let mut tried_len = 0;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        // One clock read per attempt (the first attempt starts when the request does): it
        // picks the member, bounds the try and times the attempt's latency.
        let mut now = if attempt == 1 { start } else { Instant::now() };
        let picked = match up
            .balancer
            .pick(&up.members, hash, &tried[..tried_len], now)
        {
            Some(idx) => Some(idx),
            // Every available member busy: wait in the queue for a slot, within the
            // request's overall deadline.
            None => match up.config.queue_timeout {
                Some(queue) if up.members.iter().any(|m| m.available(now)) => {
                    let wait = queue.min(deadline.saturating_duration_since(now));
                    let slot = Member::wait_for_slot(&up.members, wait, || {
                        up.balancer
                            .pick(&up.members, hash, &tried[..tried_len], Instant::now())
                    })
                    .await;
                    // The try (its timeout and latency) starts when the queue let it go.
                    now = Instant::now();
                    slot
                }
                _ => None,
            },
        };
        let Some(idx) = picked else {
            return Err(no_member(up, now));
        };
        if let Some(slot) = tried.get_mut(tried_len) {
            *slot = idx;
            tried_len += 1;
        }
        let member = &up.members[idx];
        if let Some(log) = log {
            log.set_member(member, attempt);
        }
        let Some(authority) = &member.authority else {
            return Err(ProxyError::Internal(format!(
                "member address `{}` is no authority",
                member.address
            )));
        };
        let upstream_req = match &in_memory {
            // The own client only serialises the headers: it borrows them, so that no
            // attempt copies them.
            Some(bytes) => AttemptRequest::H1 {
                method: &parts.method,
                path_and_query: &path_and_query,
                headers: &headers,
                body: bytes,
            },
            None => {
                // The last possible attempt takes the headers; earlier ones copy them.
                let attempt_headers = if attempt > cfg.retry.max_retries {
                    std::mem::take(&mut headers)
                } else {
                    headers.clone()
                };
                let uri = Uri::builder()
                    .scheme(scheme.clone())
                    .authority(authority.clone())
                    .path_and_query(path_and_query.clone())
                    .build()
                    .map_err(|_| ProxyError::Internal("cannot build the upstream URI".into()))?;
                let mut req = Request::new(body.attempt());
                *req.method_mut() = parts.method.clone();
                *req.uri_mut() = uri;
                *req.version_mut() = version;
                *req.headers_mut() = attempt_headers;
                AttemptRequest::Hyper(Box::new(req))
            }
        };
        let in_flight = member.start();
        let remaining = deadline.saturating_duration_since(now);
        let per_try = cfg.try_timeout.min(remaining);
        let span = tracing::debug_span!("upstream_attempt", upstream = name, member = %member.address, attempt);
        let try_deadline = tokio::time::Instant::from_std(now + per_try);
        let result = tokio::time::timeout_at(try_deadline, send_attempt(up, member, upstream_req))
            .instrument(span)
            .await;
        let done = Instant::now();
        // The client's body failed (too large, or the client went away): not the member's
        // fault, and nothing to retry.
        if result.as_ref().is_ok_and(Result::is_err)
            && let Some(fault) = body.client_fault()
        {
            count_timeout(shared, &fault);
            return Err(fault);
        }
        let (outcome_label, outcome, res) = match result {
            Ok(Ok((res, reused, lease))) => {
                member.record_latency(done - now);
                if reused {
                    up.pool_reused.inc();
                }
                if res.status().is_server_error() {
                    ("http_5xx", AttemptOutcome::Failure, Ok((res, lease)))
                } else {
                    ("success", AttemptOutcome::Success, Ok((res, lease)))
                }
            }
            Ok(Err(AttemptError::Connect(source))) => (
                "connect_error",
                AttemptOutcome::Failure,
                Err(ProxyError::Connect {
                    upstream: name.to_string(),
                    member: member.address.clone(),
                    source,
                }),
            ),
            Ok(Err(AttemptError::Request(source))) => (
                "error",
                AttemptOutcome::Failure,
                Err(ProxyError::UpstreamRequest {
                    upstream: name.to_string(),
                    member: member.address.clone(),
                    source,
                }),
            ),
            Err(_elapsed) if done >= deadline => (
                "timeout",
                AttemptOutcome::Failure,
                Err(ProxyError::Timeout {
                    upstream: name.to_string(),
                    timeout: cfg.timeout,
                }),
            ),
            Err(_elapsed) => (
                "timeout",
                AttemptOutcome::Failure,
                Err(ProxyError::TryTimeout {
                    upstream: name.to_string(),
                    member: member.address.clone(),
                    timeout: per_try,
                }),
            ),
        };
        up.count_attempt(idx, outcome_label);
        let ejected = member.record_outcome(outcome, &cfg.outlier, done, up.may_eject(done));
        if ejected {
            up.count_ejection(idx);
            tracing::warn!(upstream = name, member = %member.address, "member ejected by outlier detection");
        }
        up.maybe_publish_health(metrics, done, ejected);

        let retryable = match &res {
            Ok((r, _)) => r.status().is_server_error() && idempotent,
            Err(e) => e.retry_safe(idempotent),
        } && body.replayable();
        let attempts_left = attempt <= cfg.retry.max_retries && done < deadline;
        if retryable && attempts_left {
            if up.budget.try_acquire(done) {
                metrics
                    .upstream_retries_total
                    .with_label_values(&[name, "attempted"])
                    .inc();
                tracing::debug!(upstream = name, member = %member.address, attempt, "retrying");
                continue;
            }
            metrics
                .upstream_retries_total
                .with_label_values(&[name, "budget_exhausted"])
                .inc();
        }
        let (mut res, lease) = res?;
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection becomes the tunnel; it never goes back to the pool.
            if let Some(lease) = lease {
                lease.discard();
            }
            let (Some(proto), Some(client_upgrade)) = (upgrade, client_upgrade) else {
                return Err(ProxyError::Internal(
                    "upstream tried to switch protocols".into(),
                ));
            };
            let upstream_upgrade = hyper::upgrade::on(&mut res);
            let (mut parts, _empty) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto);
            parts.version = Version::HTTP_11;
            conn.tunnel.store(true, Ordering::Relaxed);
            let hold = conn.hold.clone();
            let idle = cfg.tunnel_idle_timeout;
            let idle_count = metrics.timeouts.tunnel_idle.clone();
            let span = tracing::debug_span!("tunnel", upstream = name, member = %member.address);
            tokio::spawn(
                async move {
                    // The connection stays counted, and the member busy, while the tunnel lives.
                    let _hold = (hold, in_flight);
                    tunnel(client_upgrade, upstream_upgrade, idle, &idle_count).await;
                }
                .instrument(span),
            );
            return Ok(Response::from_parts(parts, body::empty()));
        }
        let (mut parts, incoming) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The member stays busy, and its connection leased, until the body has ended.
        let body = body::holding(
            body::ReadTimeout::new(incoming, cfg.read_timeout),
            (in_flight, lease),
        );
        let mut response = Response::from_parts(parts, body);
        *response.version_mut() = Version::HTTP_11;
        return Ok(response);
    }
}

/// Why an attempt got no response head.
enum AttemptError {
    /// No connection to the member (nothing was sent).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The request failed on an open connection.
    Request(Box<dyn std::error::Error + Send + Sync>),
}

/// The request of one attempt, for either client.
enum AttemptRequest<'a> {
    /// Through hyper (the pool's or the upstream's client). Boxed: this path is rare
    /// (streamed bodies, upgrades, HTTP/2 and TLS upstreams), and the request inline would
    /// make every attempt's future larger.
    Hyper(Box<Request<RequestBody>>),
    /// Through the pool's own HTTP/1.1 client (body in memory).
    H1 {
        method: &'a Method,
        path_and_query: &'a PathAndQuery,
        headers: &'a HeaderMap,
        body: &'a bytes::Bytes,
    },
}

/// Sends one attempt to `member`: through the upstream's HTTP/1.1 pool when it has one (its
/// own client for requests with the body in memory, else hyper), else through its pooled
/// hyper-util client. Returns the response head, whether the connection was reused, and the
/// pool lease to hold until the response body ends (the own client's body hands its
/// connection back itself).
async fn send_attempt(
    up: &Upstream,
    member: &Arc<Member>,
    req: AttemptRequest<'_>,
) -> Result<(Response<UpstreamBody>, bool, Option<Lease>), AttemptError> {
    let send_error = |e| match e {
        SendError::Connect(e) => AttemptError::Connect(e),
        SendError::Request(e) => AttemptError::Request(e),
    };
    let req = match req {
        AttemptRequest::Hyper(req) => *req,
        AttemptRequest::H1 {
            method,
            path_and_query,
            headers,
            body,
        } => {
            let (Some(pool), Some(authority)) = (&up.pool, &member.authority) else {
                return Err(AttemptError::Request(
                    "no HTTP/1.1 pool for this upstream".into(),
                ));
            };
            let (res, reused) = pool
                .send_h1(member, authority, method, path_and_query, headers, body)
                .await
                .map_err(send_error)?;
            return Ok((res.map(UpstreamBody::H1), reused, None));
        }
    };
    if let (Some(pool), Some(authority)) = (&up.pool, &member.authority) {
        // Boxed: this path is rare (streamed bodies, upgrades), and its future inline would
        // enlarge every request's future, which is moved (copied) whole.
        let (res, reused, lease) = Box::pin(pool.send(member, authority, req))
            .await
            .map_err(send_error)?;
        return Ok((res.map(UpstreamBody::Hyper), reused, Some(lease)));
    }
    match up.client.request(req).await {
        Ok(res) => {
            let reused = res
                .extensions()
                .get::<ConnectionUses>()
                .is_some_and(ConnectionUses::record);
            Ok((res.map(UpstreamBody::Hyper), reused, None))
        }
        Err(e) if e.is_connect() => Err(AttemptError::Connect(Box::new(e))),
        Err(e) => Err(AttemptError::Request(Box::new(e))),
    }
}

/// The `Upgrade` value of a WebSocket upgrade request that can be passed to `protocol`
/// upstreams: HTTP/1.1, `Connection: upgrade` and `Upgrade: websocket`.
fn websocket_upgrade(req: &Request<Incoming>, protocol: UpstreamProtocol) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || protocol != UpstreamProtocol::Http1 {
        return None;
    }
    let headers = req.headers();
    // `Upgrade` first: almost every request has none, and then `Connection` is not parsed.
    let upgrade = headers.get(header::UPGRADE)?;
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = upgrade
        .to_str()
        .ok()?
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"));
    (connection_upgrade && websocket).then(|| upgrade.clone())
}

/// Copies bytes both ways between the upgraded client and upstream connections until both
/// sides are done.
/// Why no member was picked: none is available, or (circuit breaking) every available one is
/// at `max_requests_per_member`, which is counted.
fn no_member(up: &Upstream, now: Instant) -> ProxyError {
    let upstream = up.config.name.clone();
    match up.config.max_requests_per_member {
        Some(limit) if up.members.iter().any(|m| m.available(now)) => {
            up.count_overflow();
            ProxyError::Overflow { upstream, limit }
        }
        _ => ProxyError::NoMember { upstream },
    }
}

/// Counts a request-body timeout in `lb_gateway_timeouts_total`.
fn count_timeout(shared: &Shared, e: &ProxyError) {
    if matches!(e, ProxyError::BodyTimeout { .. }) {
        shared.metrics.timeouts.body.inc();
    }
}

/// Copies bytes both ways until either side closes, or until no byte went either way for
/// `idle` (then both connections are closed and `idle_count` counts it).
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: std::time::Duration,
    idle_count: &prometheus::IntCounter,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let last = Arc::new(std::sync::atomic::AtomicU64::new(
        crate::clock::coarse_millis(),
    ));
    let mut client = Active::new(TokioIo::new(client), &last);
    let mut upstream = Active::new(TokioIo::new(upstream), &last);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
            Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
        },
        () = idle_for(&last, idle) => {
            idle_count.inc();
            tracing::debug!(?idle, "tunnel idle: closed");
        }
    }
}

/// Returns once `last` (a [`crate::clock::coarse_millis`] stamp) is `idle` old.
async fn idle_for(last: &std::sync::atomic::AtomicU64, idle: std::time::Duration) {
    let idle_ms = crate::clock::millis(idle);
    loop {
        let since = crate::clock::coarse_millis().saturating_sub(last.load(Ordering::Relaxed));
        if since >= idle_ms {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(idle_ms - since)).await;
    }
}

pin_project_lite::pin_project! {
    /// One side of a tunnel: stamps `last` whenever bytes are read from it.
    struct Active<T> {
        #[pin]
        inner: T,
        last: Arc<std::sync::atomic::AtomicU64>,
    }
}

impl<T> Active<T> {
    fn new(inner: T, last: &Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self {
            inner,
            last: Arc::clone(last),
        }
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for Active<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last
                .store(crate::clock::coarse_millis(), Ordering::Relaxed);
        }
        res
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Active<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(peer: &str, tls: bool) -> ConnInfo {
        ConnInfo::new(
            Arc::from("web"),
            peer.parse().unwrap(),
            tls,
            crate::conn::ConnHold::default(),
        )
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn hop_by_hop_lengths_cover_every_name() {
        for name in &HOP_BY_HOP {
            assert!(HOP_BY_HOP_LENGTHS.contains(&name.as_str().len()), "{name}");
        }
    }

    #[test]
    fn a_lone_keep_alive_connection_header_is_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Keep-Alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn append_value_sets_extends_and_replaces_repeated_headers() {
        let name = HeaderName::from_static("x-forwarded-for");
        let mut h = HeaderMap::new();
        append_value(&mut h, name.clone(), HeaderValue::from_static("10.0.0.1"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        // Two values: the first is extended, and the result replaces both.
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        append_value(&mut h, name.clone(), HeaderValue::from_static("10.0.0.3"));
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["10.0.0.1, 10.0.0.3"]);
        // An empty value is replaced.
        h.insert("x-forwarded-for", HeaderValue::from_static(""));
        append_value(&mut h, name, HeaderValue::from_static("10.0.0.4"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.4");
    }

    #[test]
    fn forwarding_headers_append_and_quote_ipv6() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        h.insert("forwarded", HeaderValue::from_static("for=192.0.2.1"));
        forwarding_headers(
            &mut h,
            &conn("[2001:db8::1]:4000", true),
            Some("api.example.com"),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.1, for=\"[2001:db8::1]\";proto=https;host=api.example.com"
        );
    }

    #[test]
    fn hash_keys_come_from_header_cookie_or_address() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1; sid=xyz"));
        h.insert("x-user", HeaderValue::from_static("alice"));
        let c = conn("10.0.0.1:1234", false);
        let cookie = hash_key(&HashSource::Cookie("sid".into()), &h, &c);
        assert_eq!(cookie, Some(entropy::stable_hash(b"xyz")));
        let header = hash_key(
            &HashSource::Header(HeaderName::from_static("x-user")),
            &h,
            &c,
        );
        assert_eq!(header, Some(entropy::stable_hash(b"alice")));
        assert_eq!(hash_key(&HashSource::Cookie("none".into()), &h, &c), None);
        let other_port = conn("10.0.0.1:9999", false);
        assert_eq!(
            hash_key(&HashSource::ClientAddress, &h, &c),
            hash_key(&HashSource::ClientAddress, &h, &other_port)
        );
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
