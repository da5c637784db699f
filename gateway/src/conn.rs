//! Facts about the client connection that every request on it carries (request extension).

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::HeaderValue;

/// Connection facts, inserted into each request's extensions by the listener. One shared
/// allocation per connection: a request's copies (extensions, layers) are one reference count
/// each.
#[derive(Debug, Clone)]
pub struct ConnInfo(Arc<ConnFacts>);

impl std::ops::Deref for ConnInfo {
    type Target = ConnFacts;
    fn deref(&self) -> &ConnFacts {
        &self.0
    }
}

/// See [`ConnInfo`].
#[derive(Debug)]
pub struct ConnFacts {
    /// Listener name (key of `[listeners.NAME]`).
    pub listener: Arc<str>,
    /// The client's address as seen by the socket.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Set by the framing guard when the client sent an ambiguous HTTP/1 message (both
    /// `Content-Length` and `Transfer-Encoding`); every request on it is refused.
    pub ambiguous_framing: Arc<AtomicBool>,
    /// Set when the connection became a tunnel (WebSocket upgrade): its bytes are no longer
    /// HTTP, so the framing guard stops following them.
    pub tunnel: Arc<AtomicBool>,
    /// The client IP as an `X-Forwarded-For` element, and `for=...;proto=...` of
    /// `Forwarded` (made once per connection).
    pub forwarded_for: HeaderValue,
    pub forwarded: Arc<str>,
    /// The host-dependent forwarding values of the last host seen on this connection (the
    /// host rarely changes on a connection, so they are built once, not per request).
    host_values: Mutex<Option<HostValues>>,
    /// `peer` as text, made on first use (the access log) and then shared by the
    /// connection's requests.
    peer_text: OnceLock<Box<str>>,
    /// Why the gateway cut the connection, when it did (a response cut by that close says
    /// so in the access log).
    cut: OnceLock<&'static str>,
    /// Keeps the connection counted (its `max_connections` slot and the active-connection
    /// gauge) for as long as a clone lives, so a tunnel that outlives the HTTP connection
    /// still counts.
    pub hold: ConnHold,
}

impl ConnInfo {
    /// Facts of a new connection.
    pub fn new(listener: Arc<str>, peer: SocketAddr, tls: bool, hold: ConnHold) -> Self {
        let ip = peer.ip();
        let proto = if tls { "https" } else { "http" };
        let forwarded = if ip.is_ipv6() {
            format!("for=\"[{ip}]\";proto={proto}")
        } else {
            format!("for={ip};proto={proto}")
        };
        Self(Arc::new(ConnFacts {
            listener,
            peer,
            tls,
            ambiguous_framing: Arc::new(AtomicBool::new(false)),
            tunnel: Arc::new(AtomicBool::new(false)),
            forwarded_for: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            forwarded: Arc::from(forwarded),
            host_values: Mutex::default(),
            peer_text: OnceLock::new(),
            cut: OnceLock::new(),
            hold,
        }))
    }

    /// Notes why the gateway is cutting the connection (the first reason stays).
    pub fn cut(&self, reason: &'static str) {
        let _first = self.cut.set(reason);
    }

    /// Why the gateway cut the connection, if it did.
    pub fn cut_reason(&self) -> Option<&'static str> {
        self.cut.get().copied()
    }

    /// `X-Forwarded-Host` and this hop's `Forwarded` element (`for=...;proto=...;host=...`)
    /// for a request to `host`; `None` where the host cannot be written in that header.
    pub fn host_values(&self, host: Option<&str>) -> (Option<HeaderValue>, Option<HeaderValue>) {
        let mut cache = self
            .host_values
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.as_ref()
            && c.host.as_deref() == host
        {
            return (c.forwarded_host.clone(), c.forwarded.clone());
        }
        let forwarded_host = host.and_then(|h| HeaderValue::from_str(h).ok());
        let quotable = host.filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b';' && b != b',')
        });
        let mut fwd =
            String::with_capacity(self.forwarded.len() + 6 + quotable.map_or(0, str::len));
        fwd.push_str(&self.forwarded);
        if let Some(h) = quotable {
            fwd.push_str(";host=");
            fwd.push_str(h);
        }
        let forwarded = HeaderValue::from_str(&fwd).ok();
        let values = HostValues {
            host: host.map(Box::from),
            forwarded_host,
            forwarded,
        };
        let out = (values.forwarded_host.clone(), values.forwarded.clone());
        *cache = Some(values);
        out
    }

    /// The client's `IP:port` as text.
    pub fn peer_text(&self) -> &str {
        self.peer_text
            .get_or_init(|| self.peer.to_string().into_boxed_str())
    }

    /// Whether ambiguous framing was seen on this connection.
    pub fn framing_is_ambiguous(&self) -> bool {
        self.ambiguous_framing.load(Ordering::Acquire)
    }
}

/// See [`ConnInfo::host_values`].
#[derive(Debug)]
struct HostValues {
    host: Option<Box<str>>,
    forwarded_host: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
}

/// Something kept alive while the connection (or its tunnel) lives.
#[derive(Clone, Default)]
pub struct ConnHold(Option<Arc<dyn Any + Send + Sync>>);

impl ConnHold {
    /// Holds `value` until the last clone is dropped.
    pub fn new(value: impl Any + Send + Sync) -> Self {
        Self(Some(Arc::new(value)))
    }
}

impl std::fmt::Debug for ConnHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ConnHold(held)"
        } else {
            "ConnHold(empty)"
        })
    }
}
