//! Facts about the client connection that every request on it carries (request extension).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Connection facts, inserted into each request's extensions by the listener.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Listener name (key of `[listeners.NAME]`).
    pub listener: Arc<str>,
    /// The client's address as seen by the socket.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Set by the framing guard when the client sent an ambiguous HTTP/1 message (both
    /// `Content-Length` and `Transfer-Encoding`); every request on it is refused.
    pub ambiguous_framing: Arc<AtomicBool>,
}

impl ConnInfo {
    /// Whether ambiguous framing was seen on this connection.
    pub fn framing_is_ambiguous(&self) -> bool {
        self.ambiguous_framing.load(Ordering::Acquire)
    }
}
