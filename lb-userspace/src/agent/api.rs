//! The agent's HTTP surfaces: the admin API (Unix socket with mode 0600, optionally HTTPS
//! with a bearer token), the cluster endpoint the peers exchange admin state on, and the
//! Prometheus endpoint.
//!
//! Admin API (JSON; errors are `{"error": "..."}` with a 4xx/5xx status):
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /v1/status` | VRRP, gateways (health, admin state, weight, ring, connections), tracking, data path |
//! | `POST /v1/gateways/{name}/drain`, `/enable` | change the admin state; pushed to every peer; the reply lists which nodes applied it |
//! | `POST /v1/gateways/{name}/weight` `{"weight": N}` | the same for the weight |
//! | `GET /v1/gateways/{name}/connections` | the gateway's `/admin/connections` |
//! | `POST /v1/gateways/{name}/retire-connections` | the gateway's `/admin/retire-connections`: its client connections close gracefully (after a drain, so that they reconnect elsewhere) |
//! | `POST /v1/failover` `{"hold_ms": N}` | give up VRRP mastership |
//! | `POST /v1/reload` | re-read the configuration file |
//! | `GET /v1/cluster/state` | the admin state held here |
//!
//! Cluster endpoint (on `cluster.listen`): `GET /v1/cluster/state`, and
//! `POST /v1/cluster/state` with a peer's state, which is merged and answered with
//! `{"node": NAME, "state": ...}` after the merge.
use std::{
    convert::Infallible, net::SocketAddr, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures::future::join_all;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::{mpsc, oneshot, watch},
};

use super::{
    admin_state::{AdminState, Change, GatewayAdmin},
    daemon::{Command, CommandError, Snapshot},
    http::{self as client, Call},
    metrics::Metrics,
};

/// Largest request body accepted.
const MAX_REQUEST: usize = 4 * 1024 * 1024;
/// Deadline of one call to a peer or a gateway.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share.
pub struct ApiCtx {
    pub commands: mpsc::Sender<Command>,
    pub snapshot: watch::Receiver<Snapshot>,
    pub metrics: Metrics,
    /// Where the TCP listeners are bound (the OS picks the port for `:0`).
    pub listeners: Listeners,
}

/// The bound addresses of the agent's TCP listeners.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Listeners {
    pub cluster: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

/// Which listener a request came in on.
#[derive(Debug, Clone)]
enum Surface {
    /// Unix socket: the file mode is the authentication.
    Local,
    /// HTTPS: needs the bearer token.
    Remote { token: Arc<str> },
    /// Peers.
    Cluster,
    /// Prometheus.
    Metrics,
}

/// A listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct ListenError {
    pub what: String,
    pub reason: String,
}

fn listen_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ListenError {
    let what = what.into();
    move |e| ListenError {
        what,
        reason: e.to_string(),
    }
}

/// Binds the Unix socket at `path` (removing a stale one) with mode 0600.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ListenError> {
    let what = format!("admin socket {}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err(&what))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(&what)(e)),
    }
    let listener = UnixListener::bind(path).map_err(listen_err(&what))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(listen_err(&what))?;
    Ok(listener)
}

/// Serves the admin API on a bound Unix socket until the task is aborted.
pub async fn serve_unix(ctx: Arc<ApiCtx>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_conn(ctx.clone(), stream, Surface::Local),
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves the peers' endpoint.
pub async fn serve_cluster(ctx: Arc<ApiCtx>, listener: TcpListener) {
    serve_tcp(ctx, listener, Surface::Cluster).await;
}

/// Serves `/metrics`.
pub async fn serve_metrics(ctx: Arc<ApiCtx>, listener: TcpListener) {
    serve_tcp(ctx, listener, Surface::Metrics).await;
}

async fn serve_tcp(ctx: Arc<ApiCtx>, listener: TcpListener, surface: Surface) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_conn(ctx.clone(), stream, surface.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Loads the certificate, key and token of the HTTPS admin listener.
pub fn tls_acceptor(
    cert_file: &Path,
    key_file: &Path,
    token_file: &Path,
) -> Result<(tokio_rustls::TlsAcceptor, Arc<str>), ListenError> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let bad = |what: &Path, reason: String| ListenError {
        what: what.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(cert_file, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| bad(key_file, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert_file, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(key_file, e.to_string()))?;
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| bad(token_file, e.to_string()))?
        .trim()
        .to_owned();
    if token.len() < 16 {
        return Err(bad(
            token_file,
            "the token must have at least 16 characters".into(),
        ));
    }
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        Arc::from(token),
    ))
}

/// Serves the admin API over HTTPS with bearer-token authentication.
pub async fn serve_https(
    ctx: Arc<ApiCtx>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    token: Arc<str>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "https accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let token = token.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => spawn_conn(ctx, tls, Surface::Remote { token }),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

fn spawn_conn<IO>(ctx: Arc<ApiCtx>, io: IO, surface: Surface)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| {
            let ctx = ctx.clone();
            let surface = surface.clone();
            async move { Ok::<_, Infallible>(handle(&ctx, &surface, req).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await
        {
            tracing::debug!(error = %e, "API connection ended with an error");
        }
    });
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!("{{\"error\":\"serializing the response: {e}\"}}").into_bytes()
    });
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The admin address of gateway `name`, or the error reply (unknown gateway, or no `admin`
/// address configured).
fn gateway_admin(ctx: &ApiCtx, name: &str) -> Result<SocketAddr, Box<Response<Full<Bytes>>>> {
    let cfg = ctx.snapshot.borrow().cfg.clone();
    let Some(gw) = cfg.gateway(name) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no gateway {name:?} in the configuration"),
        )));
    };
    gw.admin.ok_or_else(|| {
        Box::new(error(
            StatusCode::CONFLICT,
            format!("gateway {name:?} has no `admin` address in the agent's configuration"),
        ))
    })
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": msg.into() }))
}

async fn body<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<T, Response<Full<Bytes>>> {
    let bytes = Limited::new(req.into_body(), MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// The cluster's shared token in the running configuration, if one is set: required on
/// the cluster endpoint and sent with pushes to peers.
fn cluster_token(ctx: &ApiCtx) -> Option<Arc<str>> {
    ctx.snapshot
        .borrow()
        .cfg
        .cluster
        .token
        .as_ref()
        .map(|t| t.0.clone())
}

async fn handle(ctx: &ApiCtx, surface: &Surface, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // The token the request must carry: the HTTPS admin token, or on the cluster
    // endpoint the cluster's shared token of the running configuration (if set).
    let required = match surface {
        Surface::Remote { token } => Some(token.clone()),
        Surface::Cluster => cluster_token(ctx),
        Surface::Local | Surface::Metrics => None,
    };
    if let Some(token) = required {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            if matches!(surface, Surface::Cluster) {
                ctx.metrics.cluster_unauthorized.inc();
            }
            let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (surface, &method, segments.as_slice()) {
        (Surface::Metrics, &Method::GET, ["metrics"]) => match ctx.metrics.render() {
            Ok(text) => {
                let mut resp = Response::new(Full::new(Bytes::from(text)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (Surface::Metrics, _, _) => error(StatusCode::NOT_FOUND, "only GET /metrics here"),
        (_, &Method::GET, ["v1", "cluster", "state"]) => {
            let snap = ctx.snapshot.borrow().clone();
            json(
                StatusCode::OK,
                &PeerState {
                    node: snap.node,
                    state: snap.admin,
                },
            )
        }
        (Surface::Cluster, &Method::POST, ["v1", "cluster", "state"]) => {
            let theirs: PeerState = match body(req).await {
                Ok(s) => s,
                Err(resp) => return resp,
            };
            let (tx, rx) = oneshot::channel();
            let cmd = Command::Merge {
                state: theirs.state,
                reply: Some(tx),
            };
            if ctx.commands.send(cmd).await.is_err() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "agent is stopping");
            }
            match rx.await {
                Ok(state) => {
                    let node = ctx.snapshot.borrow().node.clone();
                    json(StatusCode::OK, &PeerState { node, state })
                }
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "agent is stopping"),
            }
        }
        (Surface::Cluster, _, _) => error(StatusCode::NOT_FOUND, "only /v1/cluster/state here"),
        (_, &Method::GET, ["v1", "status"]) => json(StatusCode::OK, &status(ctx).await),
        (_, &Method::POST, ["v1", "gateways", name, op @ ("drain" | "enable" | "weight")]) => {
            let change = match *op {
                "drain" => Change::Drain,
                "enable" => Change::Enable,
                _ => match body::<WeightBody>(req).await {
                    Ok(b) => Change::Weight(b.weight),
                    Err(resp) => return resp,
                },
            };
            change_gateway(ctx, name, change).await
        }
        (_, &Method::GET, ["v1", "gateways", name, "connections"]) => {
            let admin = match gateway_admin(ctx, name) {
                Ok(a) => a,
                Err(resp) => return *resp,
            };
            match connections(admin).await {
                Ok(c) => json(StatusCode::OK, &c),
                Err(e) => error(StatusCode::BAD_GATEWAY, e),
            }
        }
        (_, &Method::POST, ["v1", "gateways", name, "retire-connections"]) => {
            let admin = match gateway_admin(ctx, name) {
                Ok(a) => a,
                Err(resp) => return *resp,
            };
            match retire_connections(admin).await {
                Ok(c) => json(StatusCode::OK, &c),
                Err(e) => error(StatusCode::BAD_GATEWAY, e),
            }
        }
        (_, &Method::POST, ["v1", "failover"]) => {
            let hold = match body::<FailoverBody>(req).await {
                Ok(b) => Duration::from_millis(b.hold_ms.unwrap_or(DEFAULT_FAILOVER_HOLD_MS)),
                Err(resp) => return resp,
            };
            let (tx, rx) = oneshot::channel();
            if ctx
                .commands
                .send(Command::Failover { hold, reply: tx })
                .await
                .is_err()
            {
                return error(StatusCode::SERVICE_UNAVAILABLE, "agent is stopping");
            }
            match rx.await {
                Ok(lines) => json(StatusCode::OK, &serde_json::json!({ "instances": lines })),
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "agent is stopping"),
            }
        }
        (_, &Method::POST, ["v1", "reload"]) => {
            let (tx, rx) = oneshot::channel();
            if ctx
                .commands
                .send(Command::Reload { reply: Some(tx) })
                .await
                .is_err()
            {
                return error(StatusCode::SERVICE_UNAVAILABLE, "agent is stopping");
            }
            match rx.await {
                Ok(Ok(lines)) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "reloaded": true, "changes": lines }),
                ),
                Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "agent is stopping"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
    }
}

/// `lbctl failover` without `--hold`.
pub const DEFAULT_FAILOVER_HOLD_MS: u64 = 30_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverBody {
    hold_ms: Option<u64>,
}

/// The admin state one node holds, as exchanged between peers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerState {
    pub node: String,
    pub state: AdminState,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One node's answer to a change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeApplied {
    /// Node name, or the peer address when it did not answer.
    pub node: String,
    pub applied: bool,
    pub error: Option<String>,
}

/// The reply to a drain / enable / weight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeReport {
    pub gateway: String,
    pub entry: GatewayAdmin,
    pub nodes: Vec<NodeApplied>,
}

async fn change_gateway(ctx: &ApiCtx, name: &str, change: Change) -> Response<Full<Bytes>> {
    let (tx, rx) = oneshot::channel();
    let cmd = Command::Change {
        gateway: name.to_owned(),
        change,
        reply: tx,
    };
    if ctx.commands.send(cmd).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "agent is stopping");
    }
    let applied = match rx.await {
        Ok(Ok(a)) => a,
        Ok(Err(e @ CommandError::UnknownGateway(_))) => {
            return error(StatusCode::NOT_FOUND, e.to_string());
        }
        Ok(Err(e @ CommandError::Invalid(_))) => {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "agent is stopping"),
    };
    let (me, peers) = {
        let snap = ctx.snapshot.borrow();
        (snap.node.clone(), snap.cfg.cluster.peers.clone())
    };
    let mut nodes = vec![NodeApplied {
        node: me.clone(),
        applied: true,
        error: None,
    }];
    let ours = PeerState {
        node: me,
        state: applied.state.clone(),
    };
    let results = push_to_peers(ctx, &peers, &ours).await;
    for (peer, result) in results {
        nodes.push(match result {
            Ok(theirs) => NodeApplied {
                applied: theirs.state.has_applied(name, &applied.entry),
                node: theirs.node,
                error: None,
            },
            Err(e) => NodeApplied {
                node: peer.to_string(),
                applied: false,
                error: Some(e),
            },
        });
    }
    json(
        StatusCode::OK,
        &ChangeReport {
            gateway: name.to_owned(),
            entry: applied.entry,
            nodes,
        },
    )
}

/// Pushes `ours` to every peer at once; what they answer is merged back.
pub async fn push_to_peers(
    ctx: &ApiCtx,
    peers: &[SocketAddr],
    ours: &PeerState,
) -> Vec<(SocketAddr, Result<PeerState, String>)> {
    let body = match serde_json::to_vec(ours) {
        Ok(b) => b,
        Err(e) => return peers.iter().map(|p| (*p, Err(e.to_string()))).collect(),
    };
    let token = cluster_token(ctx);
    let calls = peers.iter().map(|peer| {
        let body = body.clone();
        let token = token.clone();
        async move {
            let mut call = Call::post("/v1/cluster/state", body);
            call.token = token.as_deref();
            (*peer, exchange_state(*peer, &call).await)
        }
    });
    let results = join_all(calls).await;
    for (peer, r) in &results {
        let label = peer.to_string();
        ctx.metrics
            .cluster_syncs
            .with_label_values(&[label.as_str(), if r.is_ok() { "ok" } else { "error" }])
            .inc();
        if let Ok(theirs) = r {
            let cmd = Command::Merge {
                state: theirs.state.clone(),
                reply: None,
            };
            if ctx.commands.send(cmd).await.is_err() {
                break;
            }
        }
    }
    results
}

/// One state exchange with a peer.
pub async fn exchange_state(peer: SocketAddr, call: &Call<'_>) -> Result<PeerState, String> {
    let (status, body) = client::tcp(peer, call, PEER_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if status != StatusCode::OK {
        return Err(format!("{peer}: status {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{peer}: bad reply: {e}"))
}

/// The anti-entropy loop: pulls every peer's state at start and every `sync_interval`,
/// and pushes ours, so that a node that was down or missed a push converges.
pub async fn sync_loop(ctx: Arc<ApiCtx>) {
    loop {
        let (node, admin, peers, every) = {
            let snap = ctx.snapshot.borrow();
            (
                snap.node.clone(),
                snap.admin.clone(),
                snap.cfg.cluster.peers.clone(),
                snap.cfg.cluster.sync_interval,
            )
        };
        if !peers.is_empty() {
            let ours = PeerState { node, state: admin };
            for (peer, r) in push_to_peers(&ctx, &peers, &ours).await {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "peer sync failed");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// What a gateway's `/admin/connections` says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Connections {
    pub active_connections: u64,
    #[serde(default)]
    pub in_flight_requests: u64,
    #[serde(default)]
    pub draining: bool,
}

/// What a gateway's `/admin/retire-connections` says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Retiring {
    pub status: String,
    /// The connections open when the gateway was asked.
    pub active_connections: u64,
}

/// Asks a gateway's admin listener to close its client connections gracefully.
pub async fn retire_connections(admin: SocketAddr) -> Result<Retiring, String> {
    let url = format!("http://{admin}/admin/retire-connections");
    let (status, body) = client::tcp(
        admin,
        &Call::post("/admin/retire-connections", Vec::new()),
        PEER_TIMEOUT,
    )
    .await
    .map_err(|e| e.to_string())?;
    if status != StatusCode::OK {
        return Err(format!("{url}: status {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: bad reply: {e}"))
}

/// Deadline of the connection query `status` makes to each gateway (a dead gateway must
/// not make status slow).
const STATUS_CONN_TIMEOUT: Duration = Duration::from_millis(500);

/// Asks a gateway's admin listener for its connection counts.
pub async fn connections(admin: SocketAddr) -> Result<Connections, String> {
    connections_within(admin, PEER_TIMEOUT).await
}

async fn connections_within(admin: SocketAddr, timeout: Duration) -> Result<Connections, String> {
    let (status, body) = client::tcp(admin, &Call::get("/admin/connections"), timeout)
        .await
        .map_err(|e| e.to_string())?;
    if status != StatusCode::OK {
        return Err(format!("http://{admin}/admin/connections: status {status}"));
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("http://{admin}/admin/connections: bad reply: {e}"))
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub config_file: String,
    pub vrrp: Vec<super::vrrp_driver::VrrpStatus>,
    pub gateways: Vec<GatewayStatus>,
    pub ring_members: usize,
    pub ring_rebuilds: u64,
    pub admin_version: u64,
    pub tracking_deduction: u32,
    pub tracking: Vec<(String, bool, u8)>,
    pub l4_enabled: bool,
    pub l4_error: Option<String>,
    pub l4_counters: Option<super::l4::L4Counters>,
    pub peers: Vec<String>,
    pub listeners: Listeners,
}

/// One gateway in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub name: String,
    pub id: u32,
    pub address: String,
    pub healthy: bool,
    pub probed: bool,
    pub last_error: Option<String>,
    pub mode: String,
    pub weight: u32,
    pub in_ring: bool,
    pub admin_version: u64,
    pub admin_origin: Option<String>,
    /// From the gateway's admin endpoint, when it has one and answered.
    pub active_connections: Option<u64>,
}

async fn status(ctx: &ApiCtx) -> Status {
    let snap = ctx.snapshot.borrow().clone();
    let cfg = snap.cfg.clone();
    let ids = cfg.gateway_ids();
    let conns = join_all(ids.iter().map(|(_, g)| async move {
        match g.admin {
            Some(a) => connections_within(a, STATUS_CONN_TIMEOUT)
                .await
                .ok()
                .map(|c| c.active_connections),
            None => None,
        }
    }))
    .await;
    let gateways = ids
        .iter()
        .zip(conns)
        .map(|((id, g), active)| {
            let h = snap.health.get(&g.name);
            let entry = snap.admin.get(&g.name);
            GatewayStatus {
                name: g.name.clone(),
                id: *id,
                address: g.address.to_string(),
                healthy: h.is_some_and(|h| h.healthy),
                probed: h.is_some_and(|h| h.probed),
                last_error: h.and_then(|h| h.last_error.clone()),
                mode: snap.admin.mode(&g.name).to_string(),
                weight: snap.admin.weight(&g.name, g.weight),
                in_ring: snap.ring.iter().any(|(n, _)| *n == g.name),
                admin_version: entry.map_or(0, |e| e.version),
                admin_origin: entry.map(|e| e.origin.clone()),
                active_connections: active,
            }
        })
        .collect();
    Status {
        node: snap.node.clone(),
        config_file: cfg.file.display().to_string(),
        vrrp: snap.vrrp.clone(),
        gateways,
        ring_members: snap.ring.len(),
        ring_rebuilds: snap.ring_rebuilds,
        admin_version: snap.admin.max_version(),
        tracking_deduction: snap.tracking.deduction,
        tracking: snap.tracking.checks.clone(),
        l4_enabled: snap.l4.enabled,
        l4_error: snap.l4.error.clone(),
        l4_counters: snap.l4.counters.clone(),
        peers: cfg.cluster.peers.iter().map(ToString::to_string).collect(),
        listeners: ctx.listeners.clone(),
    }
}
