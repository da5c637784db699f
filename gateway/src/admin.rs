//! The admin listener (plain HTTP/1.1, meant for localhost or a management network):
//!
//! - `GET /health/live`: 200 while the process runs;
//! - `GET /health/ready`: 200 when serving, 503 while draining;
//! - `GET /metrics`: Prometheus text format;
//! - `GET /admin/connections`: `{"active_connections":N,"in_flight_requests":N,"draining":B}`
//!   (what `lbctl drain --wait` polls);
//! - `GET /admin/upstreams`: every pool's members as the balancer sees them now (health,
//!   ejection, in-flight requests, latency, idle connections), see [`upstreams`];
//! - `POST /admin/reload`: reloads the config file; 200 `{"status":"reloaded"}` or 400
//!   `{"status":"rejected","errors":[...]}` with every problem (the old config keeps serving).
//! - `POST /admin/retire-connections`: every open client connection closes gracefully (see
//!   [`Shared::retire_connections`]); 200 `{"status":"retiring","active_connections":N}`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::server::Shared;

/// How long an admin client may take to send a request head.
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin API until the task is aborted.
pub async fn serve(shared: Arc<Shared>, socket: TcpListener) {
    loop {
        let (stream, _) = match socket.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            // A client that never finishes its request head is dropped (hyper answers 408).
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", value.to_string())
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health/live") => respond(StatusCode::OK, "text/plain", "live\n"),
        (&Method::GET, "/health/ready") => {
            if shared.is_draining() {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                respond(StatusCode::OK, "text/plain", "ready\n")
            }
        }
        (&Method::GET, "/metrics") => match shared.metrics.render() {
            Ok(text) => respond(StatusCode::OK, "text/plain; version=0.0.4", text),
            Err(e) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        (&Method::GET, "/admin/connections") => json(
            StatusCode::OK,
            &serde_json::json!({
                "active_connections": shared.active_connections(),
                "in_flight_requests": shared.metrics.in_flight_requests.get(),
                "draining": shared.is_draining(),
            }),
        ),
        (&Method::GET, "/admin/upstreams") => json(StatusCode::OK, &upstreams(shared)),
        (&Method::POST, "/admin/retire-connections") => {
            let open = shared.retire_connections();
            tracing::info!(
                active_connections = open,
                "retiring every client connection (admin API)"
            );
            json(
                StatusCode::OK,
                &serde_json::json!({ "status": "retiring", "active_connections": open }),
            )
        }
        (&Method::POST, "/admin/reload") => {
            let s = Arc::clone(shared);
            match tokio::task::spawn_blocking(move || s.reload()).await {
                Ok(Ok(())) => json(StatusCode::OK, &serde_json::json!({ "status": "reloaded" })),
                Ok(Err(e)) => json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "status": "rejected", "errors": e.messages() }),
                ),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        (
            _,
            "/health/live"
            | "/health/ready"
            | "/metrics"
            | "/admin/connections"
            | "/admin/upstreams"
            | "/admin/reload"
            | "/admin/retire-connections",
        ) => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `GET /admin/upstreams`: `{"upstreams":{NAME:{"algorithm":..,"protocol":..,"members":[..]}}}`
/// with, per member in pool order: `address`, `weight`, `available` (takes requests now),
/// `healthy` (active checks), `ejected_for_ms` (outlier detection; `null` when not ejected),
/// `consecutive_failures`, `in_flight`, `latency_ewma_ms` (`null` before the first response)
/// and `idle_connections`. Discovered members are listed by address.
fn upstreams(shared: &Shared) -> serde_json::Value {
    let snapshot = shared.snapshot.load();
    let now = std::time::Instant::now();
    let pools: serde_json::Map<String, serde_json::Value> = snapshot
        .upstreams
        .iter()
        .map(|(name, up)| {
            let members: Vec<serde_json::Value> = up
                .members
                .iter()
                .map(|m| {
                    let ewma = m.ewma_micros();
                    serde_json::json!({
                        "address": m.address,
                        "weight": m.weight,
                        "available": m.available(now),
                        "healthy": m.healthy(),
                        "ejected_for_ms": m.ejected_for(now).map(|d| d.as_millis()),
                        "consecutive_failures": m.consecutive_failures(),
                        "in_flight": m.in_flight(),
                        "latency_ewma_ms": (ewma > 0).then(|| ewma as f64 / 1000.0),
                        "idle_connections": m.idle.len(),
                    })
                })
                .collect();
            (
                name.clone(),
                serde_json::json!({
                    "algorithm": up.config.algorithm.name(),
                    "protocol": up.config.protocol.name(),
                    "members": members,
                }),
            )
        })
        .collect();
    serde_json::json!({ "upstreams": pools })
}
