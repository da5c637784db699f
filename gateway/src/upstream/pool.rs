//! The keep-alive pool of plain HTTP/1.1 upstreams, checked out by the request's own task.
//! A member keeps two idle lists: connections of the own client ([`super::h1`], which
//! carries requests whose body is in memory and that upgrade nothing: almost all of them) and
//! `hyper::client::conn::http1` senders (streamed request bodies, WebSocket upgrades,
//! `CONNECT`, requests whose header operations set their own framing).
//!
//! This replaces hyper-util's pooled client on the hot path of `http1` upstreams without
//! TLS (the others, and health probes, still use it, see [`super::client`]): no pool key
//! hashing, no lazy connect future built per request and no extra task per response to hand
//! the connection back. Behaviour kept from that client:
//!
//! - the most recently used idle connection that is ready is taken first; one the member closed meanwhile
//!   is skipped, and a request that could not be written to it goes to the next one (it never
//!   reached the member, so this is not a retry in the sense of `retry`);
//! - a connection goes back to the pool when the response body has ended (or was dropped;
//!   a connection whose response was not read to the end is closed by hyper and skipped;
//!   the own client closes it at once);
//! - at most `pool_max_idle_per_member` idle connections per member and list, each closed after
//!   `pool_idle_timeout` unused (a reaper task per member sweeps them);
//! - requests are sent in origin form with a `Host` header (the member's authority when the
//!   client sent none); WebSocket upgrades work on these connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tower::ServiceExt as _;

use super::client::{ConnectionUses, CountingConnector, TaggedIo};
use super::h1::{self, Conn};
use super::member::Member;
use crate::body::RequestBody;
use crate::clock;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an attempt through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (resolve, TCP connect, HTTP/1 handshake): the request
    /// was not sent, so a retry is always safe.
    #[error("connect: {0}")]
    Connect(#[source] BoxError),
    /// The request was (possibly) written; the member's answer failed.
    #[error("{0}")]
    Request(#[source] BoxError),
}

/// One idle connection.
struct Idle {
    sender: SendRequest<RequestBody>,
    uses: ConnectionUses,
    /// [`clock::coarse_millis`] after which the connection is not reused.
    expires: u64,
}

/// One idle connection of the own HTTP/1.1 client.
struct IdleConn {
    conn: Conn,
    /// [`clock::coarse_millis`] after which the connection is not reused.
    expires: u64,
}

/// The idle connections of one member (most recently used last): hyper's, used by requests
/// that need hyper (streamed bodies, upgrades), and the own client's, used by the others.
/// Each list keeps at most `pool_max_idle_per_member`.
#[derive(Default)]
pub struct IdleConnections {
    list: Mutex<Vec<Idle>>,
    conns: Mutex<Vec<IdleConn>>,
    reaper: AtomicBool,
}

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConnections")
            .field("idle", &self.lock().len())
            .field("idle_own", &self.lock_conns().len())
            .finish()
    }
}

impl IdleConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection that has not expired (expired and closed ones are dropped, which
    /// closes them): the most recently used one that is ready to send, else the most
    /// recently used one. A connection is handed back when its response body ends, a moment
    /// before its task has seen that end; waiting for that would cost the request a trip
    /// through the run queue.
    fn pop(&self, now: u64) -> Option<Idle> {
        let mut list = self.lock();
        loop {
            let pick = list
                .iter()
                .rposition(|i| i.sender.is_ready())
                .or_else(|| list.len().checked_sub(1))?;
            let idle = list.remove(pick);
            if idle.expires > now && !idle.sender.is_closed() {
                return Some(idle);
            }
        }
    }

    fn push(&self, idle: Idle, max_idle: usize) {
        let mut list = self.lock();
        if list.len() < max_idle {
            list.push(idle);
        }
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection of the own client that has not expired and
    /// that the member has not closed (the others are dropped, which closes them).
    fn pop_conn(&self, now: u64) -> Option<Conn> {
        let mut list = self.lock_conns();
        while let Some(idle) = list.pop() {
            if idle.expires > now && idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// How many connections are idle (both clients').
    pub fn len(&self) -> usize {
        self.lock().len() + self.lock_conns().len()
    }

    /// Whether no connection is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many connections of the own client are idle.
    pub fn own_idle(&self) -> usize {
        self.lock_conns().len()
    }

    /// Keeps a connection of the own client for reuse until `expires` (a
    /// [`clock::coarse_millis`] value).
    pub fn push_conn(&self, conn: Conn, expires: u64, max_idle: usize) {
        let mut list = self.lock_conns();
        if list.len() < max_idle {
            list.push(IdleConn { conn, expires });
        }
    }

    /// Closes every idle connection (the pool settings changed on reload).
    pub fn clear(&self) {
        self.lock().clear();
        self.lock_conns().clear();
    }

    /// Drops (closes) expired connections and forgets closed ones.
    fn sweep(&self, now: u64) {
        self.lock()
            .retain(|i| i.expires > now && !i.sender.is_closed());
        self.lock_conns()
            .retain(|i| i.expires > now && i.conn.is_usable());
    }
}

/// Pool settings of one upstream.
#[derive(Debug, Clone)]
pub struct Http1Pool {
    connector: CountingConnector,
    idle_timeout: Duration,
    max_idle: usize,
}

/// A checked-out connection; back to its member's idle list when dropped (unless closed).
pub struct Lease {
    sender: Option<SendRequest<RequestBody>>,
    uses: ConnectionUses,
    member: Arc<Member>,
    idle_timeout: Duration,
    max_idle: usize,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("member", &self.member.address)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Never returns the connection to the pool (it became a tunnel).
    pub fn discard(mut self) {
        self.sender = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take()
            && !sender.is_closed()
            && self.max_idle > 0
        {
            self.member.idle.push(
                Idle {
                    sender,
                    uses: self.uses.clone(),
                    expires: clock::expiry(self.idle_timeout),
                },
                self.max_idle,
            );
        }
    }
}

impl Http1Pool {
    /// A pool opening connections with `connector`.
    pub fn new(connector: CountingConnector, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            connector,
            idle_timeout,
            max_idle,
        }
    }

    /// Sends `req` (absolute URI) to `member`: on an idle connection if there is a usable one,
    /// else on a new one. Returns the response head, whether the connection was reused, and
    /// the lease to hold until the response body is done.
    pub async fn send(
        &self,
        member: &Arc<Member>,
        authority: &Authority,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, bool, Lease), SendError> {
        to_origin_form(&mut req, authority);
        let now = clock::coarse_millis();
        while let Some(idle) = member.idle.pop(now) {
            let mut sender = idle.sender;
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(res) => {
                    let reused = idle.uses.record();
                    return Ok((res, reused, self.lease(member, sender, idle.uses)));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the connection was closing; try the next one.
                    Some(r) => req = r,
                    None => return Err(SendError::Request(e.into_error().into())),
                },
            }
        }
        let io = self.connect(authority).await?;
        let uses = io.uses();
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        self.start_reaper(member);
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Request(e.into()))?;
        let reused = uses.record();
        Ok((res, reused, self.lease(member, sender, uses)))
    }

    /// Sends a request whose body is in memory with the own HTTP/1.1 client (see
    /// [`super::h1`]): on an idle connection if there is a usable one, else on a new one.
    /// `headers` must not set `Content-Length` or `Transfer-Encoding`. Returns the response
    /// (its body hands the connection back when read to the end) and whether the connection
    /// was reused.
    pub async fn send_h1(
        &self,
        member: &Arc<Member>,
        authority: &Authority,
        method: &Method,
        path_and_query: &PathAndQuery,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<(Response<h1::Body>, bool), SendError> {
        // `Host` from the member's authority when the request has none (as hyper's client
        // adds it), written after the other headers: the map is borrowed, not changed.
        let host = (!headers.contains_key(header::HOST))
            .then_some(authority.as_str())
            .filter(|h| HeaderValue::from_str(h).is_ok());
        let wire = h1::encode_request(method, path_and_query.as_str(), headers, host, body);
        let head_request = *method == Method::HEAD;
        let now = clock::coarse_millis();
        while let Some(mut conn) = member.idle.pop_conn(now) {
            match h1::write_request(&mut conn, &wire).await {
                Ok(()) => return self.response(member, conn, head_request).await,
                // Not written: the member was closing the connection; try the next one.
                Err(e) if !e.partly_sent => {}
                Err(e) => return Err(SendError::Request(e.source.into())),
            }
        }
        let (tcp, uses) = self
            .connect(authority)
            .await?
            .into_plain()
            .ok_or_else(|| SendError::Connect("a TLS connection in a plain pool".into()))?;
        self.start_reaper(member);
        let mut conn = Conn::new(tcp, uses);
        h1::write_request(&mut conn, &wire)
            .await
            .map_err(|e| SendError::Request(e.source.into()))?;
        self.response(member, conn, head_request).await
    }

    /// A new connection to `authority`, through the counting connector.
    async fn connect(&self, authority: &Authority) -> Result<TaggedIo, SendError> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        self.connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(SendError::Connect)
    }

    async fn response(
        &self,
        member: &Arc<Member>,
        conn: Conn,
        head_request: bool,
    ) -> Result<(Response<h1::Body>, bool), SendError> {
        let ret = h1::PoolReturn {
            member: Arc::clone(member),
            idle_timeout: self.idle_timeout,
            max_idle: self.max_idle,
        };
        h1::read_response(conn, head_request, ret)
            .await
            .map_err(|e| SendError::Request(e.into()))
    }

    fn lease(
        &self,
        member: &Arc<Member>,
        sender: SendRequest<RequestBody>,
        uses: ConnectionUses,
    ) -> Lease {
        Lease {
            sender: Some(sender),
            uses,
            member: Arc::clone(member),
            idle_timeout: self.idle_timeout,
            max_idle: self.max_idle,
        }
    }

    /// Starts the task that closes a member's expired idle connections (once per member; it
    /// ends with the member).
    fn start_reaper(&self, member: &Arc<Member>) {
        if member.idle.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Member> = Arc::downgrade(member);
        let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(member) = weak.upgrade() else {
                    return;
                };
                member.idle.sweep(clock::coarse_millis());
            }
        });
    }
}

/// HTTP/1 requests go in origin form; `Host` is the member's authority when the client
/// sent none (as hyper-util's client does).
fn to_origin_form(req: &mut Request<RequestBody>, authority: &Authority) {
    if !req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
}
