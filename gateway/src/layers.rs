//! The tower layers around [`crate::proxy::ProxyService`], outermost first:
//!
//! 1. [`RequestIdLayer`]: keeps or creates `x-request-id` and echoes it on the response;
//! 2. [`ObserveLayer`]: tracing span, in-flight gauge, request metrics and the access-log line
//!    (written when the response body ends);
//! 3. [`ErrorLayer`]: the only place where a [`ProxyError`] becomes a response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response, header};
use tower::{Layer, Service};

use crate::accesslog::{AccessLine, AccessLog, RequestLog};
use crate::body::{self, BodyOutcome, ResponseBody, TrackedBody};
use crate::config::RouteConfig;
use crate::conn::ConnInfo;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::trace::{REQUEST_ID, TRACEPARENT};

/// Adds `x-request-id`.
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

/// See [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = crate::trace::request_id(req.headers().get(&REQUEST_ID));
        req.headers_mut().insert(REQUEST_ID.clone(), id.clone());
        RequestIdFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RequestId`]: the inner response with `x-request-id` added. The layer
    /// futures are named types rather than boxes so that a request allocates one future
    /// (the proxy's), not one per layer.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(mut id) = this.id.take() {
            // Unique per response, so HPACK's dynamic table gains nothing from it; marked
            // sensitive, HTTP/2 sends it as a never-indexed literal instead of inserting it
            // (and evicting an entry) in every response, and of comparing it with the ids
            // still in the table. HTTP/1 ignores the flag.
            id.set_sensitive(true);
            res.headers_mut().insert(REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(res))
    }
}

/// Metrics, tracing span and access log.
#[derive(Clone)]
pub struct ObserveLayer {
    state: Arc<ObserveState>,
}

struct ObserveState {
    metrics: Metrics,
    access_log: Arc<std::sync::atomic::AtomicBool>,
    access_log_output: AccessLog,
    /// Set when the gateway's drain gave up on the connections still open (`drain_timeout`):
    /// their requests end because the gateway stops, not because the client left.
    gave_up: Arc<std::sync::atomic::AtomicBool>,
    /// The request metrics of recently seen (route, method, status class) combinations.
    /// There is one state per connection (see `Shared::service_stack`), so the lock is not
    /// contended and the listener label is fixed.
    cache: std::sync::Mutex<Vec<CachedMetrics>>,
}

/// Resolved request metrics of one (route, method, status class); the route is kept alive so
/// that comparing pointers is sound.
struct CachedMetrics {
    route: Option<Arc<RouteConfig>>,
    method: http::Method,
    class: &'static str,
    requests: prometheus::IntCounter,
    duration: prometheus::Histogram,
}

/// Entries of [`ObserveState::cache`]; when full it starts over (routes change on reload).
const METRICS_CACHE: usize = 16;

impl ObserveState {
    /// Counts one answered request.
    fn record(
        &self,
        listener: &str,
        route: Option<&Arc<RouteConfig>>,
        method: &http::Method,
        class: &'static str,
        elapsed: std::time::Duration,
    ) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let hit = cache.iter().find(|c| {
            c.class == class
                && c.method == *method
                && match (&c.route, route) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        });
        if let Some(c) = hit {
            c.requests.inc();
            c.duration.observe(elapsed.as_secs_f64());
            return;
        }
        let name = route.map_or("-", |r| r.name.as_str());
        let entry = CachedMetrics {
            route: route.cloned(),
            method: method.clone(),
            class,
            requests: self.metrics.requests_total.with_label_values(&[
                listener,
                name,
                method.as_str(),
                class,
            ]),
            duration: self
                .metrics
                .request_duration_seconds
                .with_label_values(&[listener, name]),
        };
        entry.requests.inc();
        entry.duration.observe(elapsed.as_secs_f64());
        if cache.len() >= METRICS_CACHE {
            cache.clear();
        }
        cache.push(entry);
    }
}

impl ObserveLayer {
    /// `access_log` is read per request so that a reload can switch it; lines go to
    /// `access_log_output`.
    pub fn new(
        metrics: Metrics,
        access_log: Arc<std::sync::atomic::AtomicBool>,
        access_log_output: AccessLog,
        gave_up: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Self {
            state: Arc::new(ObserveState {
                metrics,
                access_log,
                access_log_output,
                gave_up,
                cache: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    state: Arc<ObserveState>,
}

/// What the access log needs besides the response (collected only when it is on): cheap
/// reference-counted copies of request parts, turned into text only when the line is written.
struct AccessFields {
    request_id: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
    /// The `Host` header, used when the URI has no authority.
    host_header: Option<HeaderValue>,
    uri: http::Uri,
    protocol: &'static str,
}

/// Header bytes as text for the log: not every header value is UTF-8 (obs-text), and the
/// line must stay valid JSON, so invalid sequences become U+FFFD.
fn lossy(v: &HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "-",
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let log = RequestLog::default();
        req.extensions_mut().insert(log.clone());
        let conn = req.extensions().get::<ConnInfo>().cloned();
        let access = self
            .state
            .access_log
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| {
                Box::new(AccessFields {
                    request_id: req.headers().get(&REQUEST_ID).cloned(),
                    traceparent: req.headers().get(&TRACEPARENT).cloned(),
                    host_header: req.headers().get(header::HOST).cloned(),
                    uri: req.uri().clone(),
                    protocol: protocol_name(req.version()),
                })
            });
        let method = req.method().clone();
        // Debug level: at the default level the span costs nothing; error events carry the
        // request id themselves.
        let span = tracing::debug_span!("request", request_id = ?req.headers().get(&REQUEST_ID), method = %method, path = %req.uri().path());
        let state = Arc::clone(&self.state);
        state.metrics.in_flight_requests.inc();
        let in_flight = InFlightGauge(state.metrics.in_flight_requests.clone());
        ObserveFuture {
            inner: self.inner.call(req),
            span,
            done: Some(ObserveDone {
                start,
                log,
                conn,
                access,
                method,
                state,
                in_flight,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Observe`]: the inner future in the request's span, then the response
    /// with its body tracked. Dropped before the response (the client went away: HTTP/1
    /// connection closed, HTTP/2 stream reset), the request is counted and logged as
    /// [`CLIENT_CLOSED_REQUEST`] (as 503 when the gateway dropped it, see [`GAVE_UP`]).
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        done: Option<ObserveDone>,
    }

    impl<F> PinnedDrop for ObserveFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(done) = this.project().done.take() {
                done.abandoned();
            }
        }
    }
}

/// The status a request abandoned by its client before the response is counted and logged
/// with (NGINX's "client closed request"); no client ever receives it.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The access log's `error` for an abandoned request (unless the gateway cut the connection,
/// which says why).
const CLIENT_WENT_AWAY: &str = "the client went away before the response";

/// The access log's `error` for a request the gateway dropped when it stopped: its drain
/// passed `drain_timeout` with the request unfinished. Such a request is counted as 503.
const GAVE_UP: &str = "the gateway stopped before the response ended (drain_timeout)";

/// What [`Observe`] keeps from the request for the end of the response.
struct ObserveDone {
    start: Instant,
    log: RequestLog,
    conn: Option<ConnInfo>,
    /// Boxed: it is large, and moved with the request's future and into the response
    /// body's hook; without an access log it is `None` and costs nothing.
    access: Option<Box<AccessFields>>,
    method: http::Method,
    state: Arc<ObserveState>,
    in_flight: InFlightGauge,
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, E>>,
{
    type Output = Result<Response<ResponseBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let res = std::task::ready!(this.inner.poll(cx));
        // An error drops what was kept (the in-flight gauge goes down); the error layer
        // inside makes errors rare here.
        let done = this.done.take();
        Poll::Ready(match (res, done) {
            (Ok(res), Some(done)) => Ok(done.finish(res)),
            (res, _) => res,
        })
    }
}

impl ObserveDone {
    /// The response with its body tracked: metrics and the access-log line when it ends.
    fn finish(self, res: Response<ResponseBody>) -> Response<ResponseBody> {
        // Time to first byte goes only into the access log: no clock read without it.
        let ttfb = if self.access.is_some() {
            self.start.elapsed()
        } else {
            std::time::Duration::ZERO
        };
        let status = res.status().as_u16();
        let (parts, inner) = res.into_parts();
        let body = TrackedBody::new(inner, move |outcome| {
            self.end(status, Some(ttfb), &outcome);
        });
        Response::from_parts(parts, body::boxed(body))
    }

    /// The request was dropped before its response: the client went away (or the gateway
    /// stopped, its drain deadline passed).
    fn abandoned(self) {
        let outcome = BodyOutcome::default();
        let status = if self
            .state
            .gave_up
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            http::StatusCode::SERVICE_UNAVAILABLE.as_u16()
        } else {
            CLIENT_CLOSED_REQUEST
        };
        self.end(status, None, &outcome);
    }

    /// The request ended (its response body, or the request before a response): metrics and
    /// the access line. `ttfb` is `None` when no response was sent.
    fn end(self, status: u16, ttfb: Option<std::time::Duration>, outcome: &BodyOutcome) {
        let Self {
            start,
            log,
            conn,
            access,
            method,
            state,
            in_flight,
        } = self;
        drop(in_flight);
        if outcome.read_timed_out {
            state.metrics.timeouts.read.inc();
        }
        let fields = log.fields();
        let listener = conn.as_ref().map_or("-", |c| &*c.listener);
        let elapsed = start.elapsed();
        state.record(
            listener,
            fields.route.as_ref(),
            &method,
            status_class(status),
            elapsed,
        );
        if let Some(access) = access {
            // Why the client got less than the response (and whose doing it was): the
            // gateway cut the connection, the gateway stopped, or (no response at all) the
            // client went away.
            let cut = if outcome.complete {
                None
            } else {
                conn.as_ref()
                    .and_then(|c| c.cut_reason())
                    .map(|r| (r, "client"))
                    .or_else(|| {
                        state
                            .gave_up
                            .load(std::sync::atomic::Ordering::Relaxed)
                            .then_some((GAVE_UP, "internal"))
                    })
                    .or((ttfb.is_none()).then_some((CLIENT_WENT_AWAY, "client")))
            };
            let request_id = access.request_id.as_ref().map(lossy);
            // The trace sent upstream (it may be a new one), else the client's.
            let trace_id = fields
                .traceparent
                .as_ref()
                .or(access.traceparent.as_ref())
                .and_then(|v| v.to_str().ok())
                .and_then(crate::trace::trace_id);
            let host = match access.uri.authority() {
                Some(a) => Some(std::borrow::Cow::Borrowed(a.as_str())),
                None => access.host_header.as_ref().map(lossy),
            };
            state.access_log_output.write(&AccessLine {
                request_id: request_id.as_deref().unwrap_or(""),
                trace_id,
                listener,
                client_addr: conn.as_ref().map_or("-", ConnInfo::peer_text),
                method: method.as_str(),
                host: host.as_deref(),
                path: access.uri.path(),
                protocol: access.protocol,
                status,
                route: fields.route.as_ref().map(|r| r.name.as_str()),
                upstream: fields.upstream.as_ref().map(|u| u.config.name.as_str()),
                member: fields.member.as_ref().map(|m| m.address.as_str()),
                attempts: fields.attempts,
                bytes_sent: outcome.bytes,
                complete: outcome.complete,
                duration: elapsed,
                ttfb,
                // An error that became the response, else one that cut its body (on its
                // way in: the member's side; on its way out: the gateway cut the client
                // off).
                error: fields
                    .error
                    .as_deref()
                    .or(outcome.error.as_deref())
                    .or(cut.map(|(reason, _)| reason)),
                error_origin: fields
                    .error_origin
                    .or(outcome.error.as_ref().map(|_| "upstream"))
                    .or(cut.map(|(_, origin)| origin)),
            });
        }
    }
}

struct InFlightGauge(prometheus::IntGauge);

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Turns errors into responses.
#[derive(Debug, Clone, Default)]
pub struct ErrorLayer;

impl<S> Layer<S> for ErrorLayer {
    type Service = ErrorToResponse<S>;
    fn layer(&self, inner: S) -> ErrorToResponse<S> {
        ErrorToResponse { inner }
    }
}

/// See [`ErrorLayer`].
#[derive(Debug, Clone)]
pub struct ErrorToResponse<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ErrorToResponse<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = ProxyError> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = ErrorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let log = req.extensions().get::<RequestLog>().cloned();
        let request_id = req.headers().get(&REQUEST_ID).cloned();
        ErrorFuture {
            inner: self.inner.call(req),
            log,
            request_id,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`ErrorToResponse`].
    pub struct ErrorFuture<F> {
        #[pin]
        inner: F,
        log: Option<RequestLog>,
        request_id: Option<HeaderValue>,
    }
}

impl<F> Future for ErrorFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, ProxyError>>,
{
    type Output = Result<Response<ResponseBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match std::task::ready!(this.inner.poll(cx)) {
            Ok(res) => res,
            Err(e) => error_response(&e, this.log.as_ref(), this.request_id.as_ref()),
        }))
    }
}

/// The response for an error: its status and a short text body (no internals).
pub fn error_response(
    e: &ProxyError,
    log: Option<&RequestLog>,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let origin = e.origin().as_str();
    if let Some(log) = log {
        log.set_error(e.to_string(), origin);
    }
    let request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("-");
    match e.origin() {
        crate::error::Origin::Client => {
            tracing::debug!(error = %e, origin, request_id, "request failed");
        }
        _ => tracing::warn!(error = %e, origin, request_id, "request failed"),
    }
    let status = e.status();
    let text = format!("{}\n", status.canonical_reason().unwrap_or("error"));
    let mut res = Response::new(body::full(text));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if status.is_client_error() && status != http::StatusCode::NOT_FOUND {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_request_id_goes_upstream_and_back_marked_sensitive_on_the_response() {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let s = Arc::clone(&seen);
        let inner = tower::service_fn(move |req: Request<()>| {
            *s.lock().unwrap() = req.headers().get(&REQUEST_ID).cloned();
            async { Ok::<_, std::convert::Infallible>(Response::new(())) }
        });
        let mut svc = RequestIdLayer.layer(inner);
        let mut req = Request::new(());
        req.headers_mut()
            .insert(REQUEST_ID.clone(), HeaderValue::from_static("abc-123"));
        let res = svc.call(req).await.unwrap();
        let id = &res.headers()[&REQUEST_ID];
        assert_eq!(id, "abc-123");
        assert!(id.is_sensitive());
        // The upstream copy is the same id; a new one is made when the client sent none.
        assert_eq!(seen.lock().unwrap().take().unwrap(), "abc-123");
        let res = svc.call(Request::new(())).await.unwrap();
        let made = seen.lock().unwrap().take().unwrap();
        assert!(!made.is_empty());
        assert_eq!(res.headers()[&REQUEST_ID], made);
    }
}
