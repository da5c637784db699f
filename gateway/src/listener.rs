//! Client listeners: accept (bounded by `max_connections`), TLS handshake, HTTP/1.1 or HTTP/2
//! (h2c prior knowledge on plain listeners, ALPN on TLS), per-connection timeouts, and graceful
//! shutdown.
//!
//! Each connection has a watchdog: a partial request older than `header_timeout` gets
//! `408 Request Timeout` and the connection is closed; a connection idle (no request in
//! flight, nothing received) for `idle_timeout` is closed gracefully; one whose client has
//! taken none of what the gateway has to send for `send_timeout` (it stopped reading; over
//! HTTP/2 also one stream whose window it keeps shut) is closed at once. On shutdown every
//! connection finishes its in-flight requests and closes; idle keep-alives close at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use crate::body;
use crate::clock;
use crate::conn::{ConnHold, ConnInfo};
use crate::framing::FramingGuard;
use crate::server::{ConnectionGuard, Shared};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 streams a client may reset before the gateway took them up, per connection, before
/// it is sent GOAWAY (`ENHANCE_YOUR_CALM`): the `h2` crate's own default, set here so that a
/// change of that default cannot lift it.
const H2_MAX_PENDING_RESETS: usize = 20;

/// The access log's `error` for a response cut because its client took nothing of it for
/// `send_timeout`, and for one cut because its HTTP/2 client ignored GOAWAY.
const SEND_TIMEOUT_CUT: &str = "the client took nothing of the response for send_timeout";
const ABORT_CUT: &str = "the client went on opening streams after GOAWAY";

/// Live state of one client connection, shared by its IO wrapper, its requests and its
/// watchdog. The stamps are [`clock::coarse_millis`] values (0: not set), compared only with
/// timeouts of seconds.
#[derive(Debug)]
struct ConnState {
    in_flight: AtomicUsize,
    /// When the first byte of a not-yet-dispatched request arrived (0: no partial request).
    partial_since: AtomicU64,
    /// Last time the connection went idle (start, or a response finished).
    idle_since: AtomicU64,
    /// Since when a write has been waiting for the client to take bytes (0: not waiting).
    blocked_since: AtomicU64,
    /// HTTP/2: per response being sent, since when it has had data for the client that the
    /// client's flow-control window does not let out (0: not waiting). A client that does not
    /// read a stream blocks no socket write, so `blocked_since` cannot see it.
    streams: Mutex<Vec<Weak<AtomicU64>>>,
    /// Requests begun on the connection.
    requests: AtomicU64,
}

/// When a connection has served enough: `max_requests_per_connection` and the
/// [`clock::coarse_millis`] stamp at which it is `max_connection_age` old.
#[derive(Debug, Clone, Copy)]
struct Retire {
    max_requests: u64,
    at: u64,
    /// HTTP/2: a client may have had its streams open before the GOAWAY reached it, so it
    /// gets `max_concurrent_streams` more; beyond that it ignores the GOAWAY (as a rapid-reset
    /// attacker would, resetting each stream it opens) and the connection is closed at once.
    abort_after: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retiring {
    No,
    Last,
    Overdue,
}

impl ConnState {
    fn new(now: u64) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            partial_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(now),
            blocked_since: AtomicU64::new(0),
            streams: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
        }
    }

    /// Counts a request begun: whether it is to be the connection's last, or one too many.
    fn count_request(&self, retire: Retire) -> Retiring {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if n > retire.abort_after {
            Retiring::Overdue
        } else if n >= retire.max_requests || clock::coarse_millis() >= retire.at {
            Retiring::Last
        } else {
            Retiring::No
        }
    }

    /// Registers an HTTP/2 response body: its stamp starts now (the client must give the
    /// stream room for its first data within `send_timeout`).
    fn watch_stream(&self) -> Arc<AtomicU64> {
        let stamp = Arc::new(AtomicU64::new(clock::coarse_millis()));
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        // Ended responses are forgotten here too, so the list stays near the number of
        // open streams between the watchdog's looks.
        if streams.len() >= 64 && streams.len().is_power_of_two() {
            streams.retain(|w| w.strong_count() > 0);
        }
        streams.push(Arc::downgrade(&stamp));
        drop(streams);
        stamp
    }

    /// The oldest stamp of a response still waiting for the client's window (forgetting the
    /// responses that ended), or 0.
    fn oldest_stalled_stream(&self) -> u64 {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|w| w.strong_count() > 0);
        streams
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&s| s != 0)
            .min()
            .unwrap_or(0)
    }

    /// A write or flush returned: pending starts the send clock (if not running), done stops
    /// it. The common case, a write that completes with no clock running, is one load.
    fn on_write<T>(&self, res: &Poll<T>) {
        let since = self.blocked_since.load(Ordering::Relaxed);
        match (res.is_pending(), since) {
            (true, 0) => self
                .blocked_since
                .store(clock::coarse_millis(), Ordering::Relaxed),
            (false, s) if s != 0 => self.blocked_since.store(0, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Bytes arrived: between requests, they begin a partial request (the first stamp
    /// stays).
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.partial_since.load(Ordering::Relaxed) == 0
        {
            self.partial_since
                .store(clock::coarse_millis(), Ordering::Relaxed);
        }
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.partial_since.store(0, Ordering::Relaxed);
        RequestGuard(Arc::clone(self))
    }
}

/// Ends a request on its connection when dropped (response body done, or request abandoned).
struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0
            .idle_since
            .store(clock::coarse_millis(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// IO wrapper: notes arriving bytes for the watchdog and feeds the HTTP/1 framing guard.
struct WatchedIo<S> {
    inner: S,
    state: Arc<ConnState>,
    framing: Option<Framing>,
}

/// HTTP/1 framing state of a connection.
struct Framing {
    guard: FramingGuard,
    /// Raised when the guard saw an ambiguous message.
    ambiguous: Arc<AtomicBool>,
    /// Raised when the connection became a tunnel: no more HTTP to follow.
    tunnel: Arc<AtomicBool>,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let fresh = &buf.filled()[before..];
        // Only HTTP/1 has "partial request" semantics; HTTP/2 control frames arrive at any time.
        let this = &mut *self;
        if !fresh.is_empty()
            && let Some(framing) = &mut this.framing
            && !framing.tunnel.load(Ordering::Relaxed)
        {
            this.state.on_read();
            if framing.guard.feed(fresh) {
                framing.ambiguous.store(true, Ordering::Release);
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.state.on_write(&res);
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.state.on_write(&res);
        res
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.state.on_write(&res);
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 response body whose stamp says since when it has waited for the client: set
    /// when it hands hyper a data frame (hyper polls again once the stream's window lets that
    /// frame out), cleared when polled again or when it ended.
    struct H2ResponseStamp<B> {
        #[pin]
        inner: B,
        stamp: Arc<AtomicU64>,
    }
}

impl<B> http_body::Body for H2ResponseStamp<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let res = inner.as_mut().poll_frame(cx);
        let waiting =
            matches!(&res, Poll::Ready(Some(Ok(f))) if f.is_data()) && !inner.is_end_stream();
        this.stamp.store(
            if waiting { clock::coarse_millis() } else { 0 },
            Ordering::Relaxed,
        );
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Accept loop of one listener; returns when `shutdown` flips.
pub async fn accept_loop(
    shared: Arc<Shared>,
    name: Arc<str>,
    socket: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(Notify::new());
    loop {
        // Wait for room under max_connections (read from the current snapshot).
        loop {
            let notified = closed.notified();
            let max = shared
                .snapshot
                .load()
                .listeners
                .get(&*name)
                .map_or(0, |l| l.config.max_connections);
            if active.load(Ordering::Acquire) < max {
                break;
            }
            tokio::select! {
                () = notified => {}
                _ = shutdown.changed() => return,
            }
        }
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed");
                // Out of descriptors and similar: give the process a moment, stay responsive
                // to shutdown.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        active.fetch_add(1, Ordering::AcqRel);
        let slot = Slot {
            active: Arc::clone(&active),
            closed: Arc::clone(&closed),
        };
        let guard = shared.connection_opened(&name);
        // Boxed before it is spawned: the connection's future is ~9 KiB (hyper's connection
        // state, TLS included), and `spawn` moves its argument through several frames on
        // the way into the task's cell, each move a copy; a box is moved as a pointer.
        tokio::spawn(Box::pin(serve_connection(
            Arc::clone(&shared),
            Arc::clone(&name),
            stream,
            peer,
            shutdown.clone(),
            (slot, guard),
        )));
    }
}

/// Frees a `max_connections` slot when the connection ends.
struct Slot {
    active: Arc<AtomicUsize>,
    closed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.closed.notify_one();
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    name: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    guards: (Slot, ConnectionGuard),
) {
    let snapshot = shared.snapshot.load_full();
    let Some(listener) = snapshot.listeners.get(&*name) else {
        return;
    };
    let limits = listener.config.clone();
    let tls = listener.tls.clone();
    drop(snapshot);
    let state = Arc::new(ConnState::new(clock::coarse_millis()));
    let conn = ConnInfo::new(
        Arc::clone(&name),
        peer,
        tls.is_some(),
        ConnHold::new(guards),
    );
    let flag = Arc::clone(&conn.ambiguous_framing);
    match tls {
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let handshake =
                tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await;
            let tls_stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.timeouts.header.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_http(shared, conn, tls_stream, h2, &limits, state, flag, shutdown).await;
        }
        None => {
            let h2 = limits.http2 && is_h2_preface(&stream, limits.header_timeout).await;
            serve_http(shared, conn, stream, h2, &limits, state, flag, shutdown).await;
        }
    }
}

/// Peeks at the first bytes: HTTP/2 prior knowledge starts with the connection preface.
async fn is_h2_preface(stream: &TcpStream, timeout: Duration) -> bool {
    let mut buf = [0u8; 24];
    let peek = async {
        loop {
            let n = stream.peek(&mut buf).await.unwrap_or(0);
            if n == 0 || buf[..n] != H2_PREFACE[..n] {
                return false;
            }
            if n == H2_PREFACE.len() {
                return true;
            }
            // A partial preface: wait for more bytes.
            if stream.readable().await.is_err() {
                return false;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(timeout, peek).await.unwrap_or(false)
}

/// The response future of `stack` for `req`: its `call` when the stack is ready now (the
/// gateway's layers always are), else a `oneshot` of a clone, which waits for readiness.
fn call_ready<S, R>(
    stack: &mut S,
    req: R,
) -> futures_util::future::Either<S::Future, tower::util::Oneshot<S, R>>
where
    S: tower::Service<R> + Clone,
{
    use futures_util::future::Either;
    match stack.poll_ready(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(Ok(())) => Either::Left(stack.call(req)),
        _ => Either::Right(stack.clone().oneshot(req)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_http<S>(
    shared: Arc<Shared>,
    conn: ConnInfo,
    io: S,
    h2: bool,
    limits: &crate::config::ListenerConfig,
    state: Arc<ConnState>,
    flag: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = WatchedIo {
        inner: io,
        state: Arc::clone(&state),
        framing: (!h2).then(|| Framing {
            guard: FramingGuard::default(),
            ambiguous: flag,
            tunnel: Arc::clone(&conn.tunnel),
        }),
    };
    // One stack per connection, called in place (never borrowed across an await): cloning it
    // per request and going through `oneshot` moved the request three more times.
    let stack = std::cell::RefCell::new(shared.service_stack());
    let facts = conn.clone();
    let svc_state = Arc::clone(&state);
    // The watchdog's mailbox; the service posts to it too (HTTP/2's last request).
    let control = Arc::new(Control::default());
    let svc_control = Arc::clone(&control);
    let retire = Retire {
        max_requests: limits.max_requests_per_connection,
        at: clock::expiry(limits.max_connection_age),
        abort_after: if h2 {
            limits
                .max_requests_per_connection
                .saturating_add(u64::from(limits.max_concurrent_streams))
        } else {
            u64::MAX
        },
    };
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let guard = svc_state.request_started();
        // The connection's last request: HTTP/2 says GOAWAY now (the streams open go on),
        // HTTP/1 says `Connection: close` on the response (a tunnel has no next request).
        let retiring = svc_state.count_request(retire);
        match retiring {
            Retiring::Last if h2 => svc_control.send(Command::Graceful),
            Retiring::Overdue => svc_control.send(Command::Abort),
            _ => {}
        }
        req.extensions_mut().insert(conn.clone());
        let call = call_ready(&mut *stack.borrow_mut(), req);
        let streams = h2.then(|| Arc::clone(&svc_state));
        async move {
            let res = call.await?;
            let (mut parts, inner) = res.into_parts();
            if retiring == Retiring::Last
                && !h2
                && parts.status != http::StatusCode::SWITCHING_PROTOCOLS
            {
                parts.headers.insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            let body = match streams {
                Some(state) if !http_body::Body::is_end_stream(&inner) => {
                    let stamp = state.watch_stream();
                    body::holding(H2ResponseStamp { inner, stamp }, guard)
                }
                _ => body::holding(inner, guard),
            };
            Ok::<_, std::convert::Infallible>(http::Response::from_parts(parts, body))
        }
    });
    let tick = (limits
        .header_timeout
        .min(limits.idle_timeout)
        .min(limits.send_timeout)
        / 4)
    .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let draining = *shutdown.borrow();
    // The timer and the shutdown signal live in a task of their own: polled beside the
    // connection, they would be polled again on every wake-up of the connection (several per
    // request); this way the connection polls only its `Control` (an atomic load and a waker
    // registration).
    let _watchdog = AbortOnDrop(tokio::spawn(watch_connection(
        Arc::clone(&state),
        Arc::clone(&control),
        (shutdown, shared.retire_signal()),
        tick,
        Timeouts {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
            send: limits.send_timeout,
        },
    )));
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_concurrent_streams)
            // Rapid reset (CVE-2023-44487): a client that resets this many streams before
            // they were even taken up gets GOAWAY; streams reset later still count toward
            // `max_requests_per_connection`.
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS);
        let mut c = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
        if draining {
            c.as_mut().graceful_shutdown();
        }
        let mut shutting_down = draining;
        loop {
            tokio::select! {
                biased;
                r = c.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "h2 connection ended with an error");
                    }
                    return;
                }
                command = std::future::poll_fn(|cx| control.poll_command(cx)) => {
                    if command == Command::SendTimeout {
                        shared.metrics.timeouts.send.inc();
                        facts.cut(SEND_TIMEOUT_CUT);
                        tracing::debug!("the client took nothing for send_timeout: closed");
                        return;
                    }
                    if command == Command::Abort {
                        facts.cut(ABORT_CUT);
                        tracing::debug!("the client ignored GOAWAY: closed");
                        return;
                    }
                    // HTTP/2 has no partial-request state: any other verdict closes
                    // gracefully.
                    if command != Command::None && !shutting_down {
                        shutting_down = true;
                        c.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .writev(false)
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 8192);
    let mut c = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if draining {
        Pin::new(&mut c).graceful_shutdown();
    }
    let mut shutting_down = draining;
    loop {
        tokio::select! {
            // The connection first: it is what wakes the task almost every time.
            biased;
            r = &mut c => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "http/1 connection ended with an error");
                }
                return;
            }
            command = std::future::poll_fn(|cx| control.poll_command(cx)) => match command {
                Command::None => {}
                Command::Graceful => {
                    if !shutting_down {
                        shutting_down = true;
                        Pin::new(&mut c).graceful_shutdown();
                    }
                }
                Command::SendTimeout => {
                    shared.metrics.timeouts.send.inc();
                    facts.cut(SEND_TIMEOUT_CUT);
                    tracing::debug!("the client took nothing for send_timeout: closed");
                    return;
                }
                // Only HTTP/2 asks for it.
                Command::Abort => return,
                Command::HeaderTimeout => {
                    shared.metrics.timeouts.header.inc();
                    let Some(parts) = c.into_parts() else {
                        return;
                    };
                    let mut io = parts.io.into_inner();
                    let response = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    let written = tokio::time::timeout(Duration::from_secs(1), async {
                        io.inner.write_all(response).await?;
                        io.inner.shutdown().await
                    })
                    .await;
                    if !matches!(written, Ok(Ok(()))) {
                        tracing::debug!("could not send 408");
                    }
                    return;
                }
            }
        }
    }
}

/// What the watchdog asks of its connection (the most severe request wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Command {
    None = 0,
    /// Finish the requests in flight and close (shutdown, or idle too long).
    Graceful = 1,
    /// A request head took longer than `header_timeout`: answer 408 and close.
    HeaderTimeout = 2,
    /// The client took nothing of the response for `send_timeout`: close at once (an answer
    /// could not be sent either).
    SendTimeout = 3,
    /// An HTTP/2 client went on opening streams long after it was sent GOAWAY: close at once.
    Abort = 4,
}

/// The watchdog's mailbox of one connection. The connection polls it on every wake-up
/// (several per request), so waiting costs an atomic waker's registration, not a lock.
#[derive(Debug, Default)]
struct Control {
    command: std::sync::atomic::AtomicU8,
    waker: atomic_waker::AtomicWaker,
}

impl Control {
    fn send(&self, command: Command) {
        self.command.fetch_max(command as u8, Ordering::AcqRel);
        // The command stays stored when the connection is not waiting, so nothing is lost.
        self.waker.wake();
    }

    /// The command sent since the last one taken; else registers the task to be woken by
    /// the next [`Control::send`].
    fn poll_command(&self, cx: &mut Context<'_>) -> Poll<Command> {
        match self.take() {
            Command::None => {}
            command => return Poll::Ready(command),
        }
        self.waker.register(cx.waker());
        // A command sent between the first look and the registration woke nobody.
        match self.take() {
            Command::None => Poll::Pending,
            command => Poll::Ready(command),
        }
    }

    fn take(&self) -> Command {
        match self.command.swap(0, Ordering::AcqRel) {
            0 => Command::None,
            1 => Command::Graceful,
            2 => Command::HeaderTimeout,
            3 => Command::SendTimeout,
            _ => Command::Abort,
        }
    }
}

/// Aborts the task when dropped (the watchdog ends with its connection).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The listener's connection timeouts the watchdog enforces.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    idle: Duration,
    send: Duration,
}

/// Watches one connection: shutdown and retirement (the admin API's), header, idle and send
/// timeouts, checked every `tick`.
async fn watch_connection(
    state: Arc<ConnState>,
    control: Arc<Control>,
    (mut shutdown, mut retire): (watch::Receiver<bool>, watch::Receiver<()>),
    tick: Duration,
    timeouts: Timeouts,
) {
    let mut shutdown_seen = *shutdown.borrow();
    if shutdown_seen {
        // The gateway began to drain between the connection's start and this task's first
        // poll (a spawned task may wait for its worker): `changed()` will not fire for that.
        // A connection that saw the drain itself ignores the repeat.
        control.send(Command::Graceful);
    }
    loop {
        tokio::select! {
            // Err: the gateway is gone; either way the connection is to close.
            _ = shutdown.changed(), if !shutdown_seen => {
                shutdown_seen = true;
                control.send(Command::Graceful);
            }
            // Err: the gateway is gone (the shutdown branch covers it).
            Ok(()) = retire.changed() => control.send(Command::Graceful),
            () = tokio::time::sleep(tick) => match watchdog(&state, timeouts) {
                Verdict::Ok => {}
                Verdict::Idle => control.send(Command::Graceful),
                Verdict::HeaderTimeout => control.send(Command::HeaderTimeout),
                Verdict::SendTimeout => control.send(Command::SendTimeout),
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Ok,
    Idle,
    HeaderTimeout,
    SendTimeout,
}

fn watchdog(state: &ConnState, timeouts: Timeouts) -> Verdict {
    let now = clock::coarse_millis();
    let send = clock::millis(timeouts.send);
    let blocked = state.blocked_since.load(Ordering::Relaxed);
    if blocked != 0 && now.saturating_sub(blocked) >= send {
        return Verdict::SendTimeout;
    }
    let stalled = state.oldest_stalled_stream();
    if stalled != 0 && now.saturating_sub(stalled) >= send {
        return Verdict::SendTimeout;
    }
    if state.in_flight.load(Ordering::Acquire) > 0 {
        return Verdict::Ok;
    }
    let (header_timeout, idle_timeout) = (timeouts.header, timeouts.idle);
    let partial = state.partial_since.load(Ordering::Relaxed);
    if partial != 0 {
        if now.saturating_sub(partial) >= clock::millis(header_timeout) {
            Verdict::HeaderTimeout
        } else {
            Verdict::Ok
        }
    } else if now.saturating_sub(state.idle_since.load(Ordering::Relaxed))
        >= clock::millis(idle_timeout)
    {
        Verdict::Idle
    } else {
        Verdict::Ok
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, reason = "test code")]

    use super::*;

    /// A service that is not ready at its first `poll_ready` (it wakes the task), then is;
    /// it answers with the request doubled and counts the calls made while not ready.
    #[derive(Clone, Default)]
    struct Slow {
        polls: Arc<AtomicUsize>,
        calls_unready: Arc<AtomicUsize>,
        ready: bool,
    }

    impl tower::Service<u32> for Slow {
        type Response = u32;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<u32, std::convert::Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.polls.fetch_add(1, Ordering::SeqCst) == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = true;
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: u32) -> Self::Future {
            if !self.ready {
                self.calls_unready.fetch_add(1, Ordering::SeqCst);
            }
            std::future::ready(Ok(req * 2))
        }
    }

    /// The direct call is only taken when the service is ready; otherwise the request waits
    /// for readiness and is still answered.
    #[tokio::test]
    async fn call_ready_waits_for_a_service_that_is_not_ready() {
        let mut svc = Slow::default();
        let first = call_ready(&mut svc, 21);
        assert!(matches!(first, futures_util::future::Either::Right(_)));
        assert_eq!(first.await, Ok(42));
        let second = call_ready(&mut svc, 5);
        assert!(matches!(second, futures_util::future::Either::Left(_)));
        assert_eq!(second.await, Ok(10));
        assert_eq!(svc.calls_unready.load(Ordering::SeqCst), 0);
    }

    /// A drain that began before a connection's watchdog first ran still closes the
    /// connection: the watchdog cannot wait for a change that already happened.
    #[tokio::test]
    async fn a_watchdog_started_during_a_drain_asks_for_the_graceful_close() {
        let (_draining, rx) = watch::channel(true);
        let (_retire, retire) = watch::channel(());
        let control = Arc::new(Control::default());
        let long = Duration::from_secs(60);
        let watchdog = AbortOnDrop(tokio::spawn(watch_connection(
            Arc::new(ConnState::new(clock::coarse_millis())),
            Arc::clone(&control),
            (rx, retire),
            long,
            Timeouts {
                header: long,
                idle: long,
                send: long,
            },
        )));
        let command = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| control.poll_command(cx)),
        )
        .await
        .expect("the watchdog asked for nothing");
        assert_eq!(command, Command::Graceful);
        drop(watchdog);
    }
}
