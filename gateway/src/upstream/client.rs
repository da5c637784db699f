//! The keep-alive connection pool to a pool's members (hyper-util's pooled client), with a
//! connector that counts new connections and tags each one so that reuse can be measured.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::net::TcpStream;

use crate::config::{UpstreamConfig, UpstreamProtocol};

/// The pooled HTTP client of one upstream.
pub type UpstreamClient = Client<CountingConnector, Full<Bytes>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Number of responses received on one connection so far; the first is not a reuse.
#[derive(Debug, Clone)]
pub struct ConnectionUses(Arc<AtomicU64>);

impl ConnectionUses {
    /// Counts one more response on this connection; `true` when the connection was reused.
    pub fn record(&self) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed) > 0
    }
}

/// Wraps [`HttpConnector`]: counts opened connections and tags them.
#[derive(Debug, Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    opened: IntCounter,
}

impl tower::Service<Uri> for CountingConnector {
    type Response = TaggedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TaggedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let opened = self.opened.clone();
        Box::pin(async move {
            let io = fut.await?;
            opened.inc();
            Ok(TaggedIo {
                inner: io,
                uses: ConnectionUses(Arc::new(AtomicU64::new(0))),
            })
        })
    }
}

/// A connection with its use counter; the pool hands the counter to every response.
#[derive(Debug)]
pub struct TaggedIo {
    inner: TokioIo<TcpStream>,
    uses: ConnectionUses,
}

impl Connection for TaggedIo {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.uses.clone())
    }
}

impl hyper::rt::Read for TaggedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TaggedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Whether two configs can share one pool of connections.
pub fn same_pool_settings(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    a.protocol == b.protocol
        && a.connect_timeout == b.connect_timeout
        && a.pool_idle_timeout == b.pool_idle_timeout
        && a.pool_max_idle_per_member == b.pool_max_idle_per_member
}

/// Builds the pooled client of an upstream.
pub fn build(cfg: &UpstreamConfig, opened: IntCounter) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    let connector = CountingConnector {
        inner: http,
        opened,
    };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_member)
        .http2_only(cfg.protocol == UpstreamProtocol::H2c)
        .build(connector)
}
