//! Test harness: in-process upstream servers on 127.0.0.1:0, a gateway started from a config
//! written to a temporary directory, HTTP clients, and polling with a deadline (no sleeps).

// Helpers of integration tests: clippy's test allowances only cover #[test] functions.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_gateway::server::{AccessLogOutput, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Upper bound for any wait in a test.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-gateway-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// What an upstream saw and how it behaves.
#[derive(Default)]
pub struct UpstreamState {
    pub hits: AtomicUsize,
    /// Status of normal responses (0 = 200).
    pub status: AtomicU16,
    /// Status of `/healthz` (0 = 200).
    pub health_status: AtomicU16,
    pub seen: Mutex<Vec<(String, HeaderMap, Bytes)>>,
    /// HTTP version of each request, in arrival order.
    pub versions: Mutex<Vec<http::Version>>,
    /// `/hold...` requests wait for this.
    pub release: Notify,
    /// Counts `/hold...` requests that arrived.
    pub held: AtomicUsize,
    pub held_changed: Notify,
}

/// An HTTP upstream started in the test.
pub struct TestUpstream {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    task: JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream_handle(
    name: String,
    state: Arc<UpstreamState>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let full_uri = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if path == "/healthz" {
        let s = state.health_status.load(Ordering::SeqCst);
        let mut res = Response::new(Full::new(Bytes::from("hc")));
        *res.status_mut() = StatusCode::from_u16(if s == 0 { 200 } else { s }).unwrap();
        return res;
    }
    state.versions.lock().unwrap().push(req.version());
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    state.hits.fetch_add(1, Ordering::SeqCst);
    state
        .seen
        .lock()
        .unwrap()
        .push((full_uri.clone(), headers, body.clone()));
    if path.starts_with("/hold") {
        let released = state.release.notified();
        state.held.fetch_add(1, Ordering::SeqCst);
        state.held_changed.notify_waiters();
        released.await;
    }
    let s = state.status.load(Ordering::SeqCst);
    let mut res = Response::new(Full::new(Bytes::from(format!(
        "{name} {full_uri} {}",
        body.len()
    ))));
    *res.status_mut() = StatusCode::from_u16(if s == 0 { 200 } else { s }).unwrap();
    res.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    res.headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    res.headers_mut().insert("x-drop-me", "1".parse().unwrap());
    res
}

impl TestUpstream {
    /// Starts an HTTP/1.1 upstream (or h2c with prior knowledge when `h2c`).
    pub async fn start(name: &str, h2c: bool) -> Self {
        Self::start_with(name, h2c, None).await
    }

    /// Starts an HTTP/1.1 upstream on `socket` (already bound).
    pub fn start_on(name: &str, socket: TcpListener) -> Self {
        Self::serve_on(name, false, None, socket)
    }

    /// Starts a TLS upstream: HTTP/2 when the client negotiated ALPN `h2`, else HTTP/1.1.
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(name, false, Some(tls)).await
    }

    async fn start_with(name: &str, h2c: bool, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_on(name, h2c, tls, socket)
    }

    fn serve_on(
        name: &str,
        h2c: bool,
        tls: Option<Arc<rustls::ServerConfig>>,
        socket: TcpListener,
    ) -> Self {
        let addr = socket.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let (n, st) = (name.to_string(), Arc::clone(&state));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = socket.accept().await else {
                    continue;
                };
                let (n, st) = (n.clone(), Arc::clone(&st));
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (n, st) = (n.clone(), Arc::clone(&st));
                        async move { Ok::<_, Infallible>(upstream_handle(n, st, req).await) }
                    });
                    let served = match tls {
                        None => serve(TokioIo::new(stream), h2c, svc).await,
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            let s = match acceptor.accept(stream).await {
                                Ok(s) => s,
                                Err(e) => {
                                    eprintln!("test upstream TLS handshake: {e}");
                                    return;
                                }
                            };
                            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve(TokioIo::new(s), h2, svc).await
                        }
                    };
                    if let Err(e) = served {
                        eprintln!("test upstream connection: {e}");
                    }
                });
            }
        });
        Self {
            name: name.to_string(),
            addr,
            state,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn set_status(&self, s: u16) {
        self.state.status.store(s, Ordering::SeqCst);
    }

    /// Waits until `n` `/hold` requests arrived.
    pub async fn wait_held(&self, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let changed = self.state.held_changed.notified();
            if self.state.held.load(Ordering::SeqCst) >= n {
                return;
            }
            assert!(Instant::now() < deadline, "held requests never arrived");
            if tokio::time::timeout(Duration::from_millis(50), changed)
                .await
                .is_err()
            {
                continue; // poll again
            }
        }
    }
}

async fn serve<I, S>(io: I, h2: bool, svc: S) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await
    }
}

/// A closed port: connecting to it fails at once.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// The access log of a test gateway, in memory.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A running gateway and its config directory.
pub struct TestGateway {
    pub gw: Option<Gateway>,
    pub dir: TempDir,
    pub config: PathBuf,
    pub access_log: Captured,
}

impl TestGateway {
    pub async fn start(config: &str) -> Self {
        let dir = TempDir::new();
        let path = dir.write("gateway.toml", config);
        Self::start_file(dir, path).await
    }

    /// A gateway from a config file already in `dir`.
    pub async fn start_file(dir: TempDir, path: PathBuf) -> Self {
        let access_log = Captured::default();
        let gw = Gateway::start_with(&path, AccessLogOutput::Writer(Box::new(access_log.clone())))
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        Self {
            gw: Some(gw),
            dir,
            config: path,
            access_log,
        }
    }

    /// The access-log lines so far (flushed first), each checked to be one JSON object.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.gw().access_log().flush();
        let bytes = self.access_log.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).expect("the access log is UTF-8");
        text.split_terminator('\n')
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {e}: {l}"))
            })
            .collect()
    }

    pub fn gw(&self) -> &Gateway {
        self.gw.as_ref().unwrap()
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.gw().listener_addr(listener).unwrap()
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{}", self.addr(listener), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw().admin_addr().unwrap(), path)
    }

    /// Rewrites the config file (the next reload reads it).
    pub fn rewrite(&self, config: &str) {
        std::fs::write(&self.config, config).unwrap();
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// Sends a request; returns status, headers and body text.
pub async fn send(
    client: &TestClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, String) {
    let res = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get(client: &TestClient, url: &str) -> (StatusCode, HeaderMap, String) {
    send(
        client,
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

/// Writes raw bytes to `addr` and reads the whole answer until the server closes or the
/// deadline passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_all(&mut s).await
}

pub async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    if tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .is_err()
    {
        eprintln!("read_all: deadline passed, returning what was read");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `[upstreams.NAME]` members line for some upstreams.
pub fn members(ups: &[&TestUpstream]) -> String {
    let items: Vec<String> = ups
        .iter()
        .map(|u| format!("{{ address = \"{}\" }}", u.addr))
        .collect();
    format!("members = [{}]", items.join(", "))
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
