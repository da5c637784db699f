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
use tracing::Instrument;

use crate::accesslog::{self, AccessLine, RequestLog};
use crate::body::{self, ResponseBody, TrackedBody};
use crate::conn::ConnInfo;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::trace::{REQUEST_ID, TRACEPARENT, TraceParent};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = crate::trace::request_id(req.headers().get(REQUEST_ID));
        req.headers_mut().insert(REQUEST_ID, id.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            res.headers_mut().insert(REQUEST_ID, id);
            Ok(res)
        })
    }
}

/// Metrics, tracing span and access log.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
    access_log: Arc<std::sync::atomic::AtomicBool>,
}

impl ObserveLayer {
    /// `access_log` is read per request so that a reload can switch it.
    pub fn new(metrics: Metrics, access_log: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self {
            metrics,
            access_log,
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            access_log: Arc::clone(&self.access_log),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
    access_log: Arc<std::sync::atomic::AtomicBool>,
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
    type Future = BoxFuture<Result<Response<ResponseBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let log = RequestLog::default();
        req.extensions_mut().insert(log.clone());
        let conn = req.extensions().get::<ConnInfo>().cloned();
        let request_id = header_string(req.headers().get(REQUEST_ID)).unwrap_or_default();
        let trace_id = req
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)
            .map(|t| t.trace_id);
        let method = req.method().to_string();
        let host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| header_string(req.headers().get(header::HOST)));
        let path = req.uri().path().to_string();
        let protocol = format!("{:?}", req.version());
        let span = tracing::info_span!("request", request_id = %request_id, method = %method, path = %path);
        let metrics = self.metrics.clone();
        let access_log = self.access_log.load(std::sync::atomic::Ordering::Relaxed);
        metrics.in_flight_requests.inc();
        let in_flight = InFlightGauge(metrics.in_flight_requests.clone());
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let res = fut.await?;
                let ttfb = start.elapsed();
                let status = res.status().as_u16();
                let (parts, inner) = res.into_parts();
                let body = TrackedBody::new(inner, move |outcome| {
                    drop(in_flight);
                    let fields = log.fields();
                    let route = fields.route.as_deref().unwrap_or("-");
                    let listener = conn.as_ref().map_or("-", |c| &*c.listener);
                    let elapsed = start.elapsed();
                    metrics
                        .requests_total
                        .with_label_values(&[
                            listener,
                            route,
                            method.as_str(),
                            status_class(status),
                        ])
                        .inc();
                    metrics
                        .request_duration_seconds
                        .with_label_values(&[listener, route])
                        .observe(elapsed.as_secs_f64());
                    if access_log {
                        accesslog::emit(&AccessLine {
                            request_id: &request_id,
                            trace_id: trace_id.as_deref(),
                            listener,
                            client_addr: conn
                                .as_ref()
                                .map_or_else(|| ([0, 0, 0, 0], 0).into(), |c| c.peer),
                            method: &method,
                            host: host.as_deref(),
                            path: &path,
                            protocol: &protocol,
                            status,
                            route: fields.route.as_deref(),
                            upstream: fields.upstream.as_deref(),
                            member: fields.member.as_deref(),
                            attempts: fields.attempts,
                            bytes_sent: outcome.bytes,
                            complete: outcome.complete,
                            duration_ms: accesslog::millis(elapsed),
                            ttfb_ms: accesslog::millis(ttfb),
                            error: fields.error.as_deref(),
                            error_origin: fields.error_origin,
                        });
                    }
                });
                Ok(Response::from_parts(parts, body::boxed(body)))
            }
            .instrument(span),
        )
    }
}

fn header_string(v: Option<&HeaderValue>) -> Option<String> {
    v.and_then(|v| v.to_str().ok()).map(str::to_string)
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
    type Future = BoxFuture<Result<Response<ResponseBody>, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let log = req.extensions().get::<RequestLog>().cloned();
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(res) => Ok(res),
                Err(e) => Ok(error_response(&e, log.as_ref())),
            }
        })
    }
}

/// The response for an error: its status and a short text body (no internals).
pub fn error_response(e: &ProxyError, log: Option<&RequestLog>) -> Response<ResponseBody> {
    let origin = e.origin().as_str();
    if let Some(log) = log {
        log.set_error(e.to_string(), origin);
    }
    match e.origin() {
        crate::error::Origin::Client => tracing::debug!(error = %e, origin, "request failed"),
        _ => tracing::warn!(error = %e, origin, "request failed"),
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
