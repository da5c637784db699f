//! The connector of a pool's members, which adds TLS when the upstream has `tls` (ALPN `h2` or
//! `http/1.1`), counts new connections and tags each one so that reuse can be measured; and
//! hyper-util's pooled client over it, used by `h2c`/`h2` and TLS upstreams and by health
//! probes (plain HTTP/1.1 requests go through [`super::pool`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntCounter;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pool::Http1Pool;
use crate::body::RequestBody;
use crate::config::{FieldError, UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig};

/// The pooled HTTP client of one upstream.
pub type UpstreamClient = Client<CountingConnector, RequestBody>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Number of responses received on one connection so far; the first is not a reuse.
#[derive(Debug, Clone, Default)]
pub struct ConnectionUses(Arc<AtomicU64>);

impl ConnectionUses {
    /// Counts one more response on this connection; `true` when the connection was reused.
    pub fn record(&self) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed) > 0
    }
}

/// TLS settings of a connector: the client config and the fixed SNI name, if any.
#[derive(Clone)]
struct UpstreamTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Wraps [`HttpConnector`]: adds TLS, counts opened connections and tags them.
#[derive(Debug, Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    tls: Option<UpstreamTls>,
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
        let fut = self.inner.call(uri.clone());
        let opened = self.opened.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = fut.await?;
            let stream = match tls {
                None => Stream::Plain(tcp.into_inner()),
                Some(tls) => {
                    let name = match tls.server_name {
                        Some(n) => n,
                        None => server_name_of(&uri)?,
                    };
                    let s = tls.connector.connect(name, tcp.into_inner()).await?;
                    Stream::Tls(Box::new(s))
                }
            };
            opened.inc();
            Ok(TaggedIo {
                inner: TokioIo::new(stream),
                uses: ConnectionUses(Arc::new(AtomicU64::new(0))),
            })
        })
    }
}

/// The host of a member URI as a TLS server name (brackets of IPv6 literals removed).
fn server_name_of(uri: &Uri) -> Result<ServerName<'static>, BoxError> {
    let host = uri.host().ok_or("upstream URI without a host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(ServerName::try_from(host.to_string())?)
}

/// A member connection: plain TCP or TLS.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A connection with its use counter; the pool hands the counter to every response.
#[derive(Debug)]
pub struct TaggedIo {
    inner: TokioIo<Stream>,
    uses: ConnectionUses,
}

impl TaggedIo {
    /// The use counter of this connection.
    pub fn uses(&self) -> ConnectionUses {
        self.uses.clone()
    }

    /// The TCP stream of a plain connection and its use counter (`None` for TLS).
    pub fn into_plain(self) -> Option<(TcpStream, ConnectionUses)> {
        match self.inner.into_inner() {
            Stream::Plain(tcp) => Some((tcp, self.uses)),
            Stream::Tls(_) => None,
        }
    }
}

impl Connection for TaggedIo {
    fn connected(&self) -> Connected {
        let connected = Connected::new().extra(self.uses.clone());
        match self.inner.inner() {
            Stream::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
                connected.negotiated_h2()
            }
            _ => connected,
        }
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

/// Whether a reload can keep the pool of `a` for `b`. A TLS pool is always rebuilt so that a
/// reload picks up new CA files and client certificates.
pub fn same_pool_settings(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    a.protocol == b.protocol
        && a.tls.is_none()
        && b.tls.is_none()
        && a.connect_timeout == b.connect_timeout
        && a.pool_idle_timeout == b.pool_idle_timeout
        && a.pool_max_idle_per_member == b.pool_max_idle_per_member
}

/// The scheme of member URIs.
pub fn scheme(cfg: &UpstreamConfig) -> &'static str {
    if cfg.tls.is_some() { "https" } else { "http" }
}

fn tls_client(
    tls: &UpstreamTlsConfig,
    protocol: UpstreamProtocol,
    path: &str,
    errs: &mut Vec<FieldError>,
) -> Option<UpstreamTls> {
    let mut push = |path: String, message: String| errs.push(FieldError { path, message });
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&tls.ca_file)
        .map_err(|e| e.to_string())
        .and_then(|it| it.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string()));
    match cas {
        Ok(cas) => {
            let (added, _ignored) = roots.add_parsable_certificates(cas);
            if added == 0 {
                push(
                    format!("{path}.ca_file"),
                    format!("{}: no usable CA certificate", tls.ca_file.display()),
                );
                return None;
            }
        }
        Err(e) => {
            push(
                format!("{path}.ca_file"),
                format!("cannot read {}: {e}", tls.ca_file.display()),
            );
            return None;
        }
    }
    let builder = match rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    {
        Ok(b) => b.with_root_certificates(roots),
        Err(e) => {
            push(path.to_string(), format!("cannot configure TLS: {e}"));
            return None;
        }
    };
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = CertificateDer::pem_file_iter(cert_file)
                .map_err(|e| e.to_string())
                .and_then(|it| it.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string()));
            let chain = match chain {
                Ok(c) if !c.is_empty() => c,
                Ok(_) => {
                    push(
                        format!("{path}.cert_file"),
                        format!("{}: no CERTIFICATE block found", cert_file.display()),
                    );
                    return None;
                }
                Err(e) => {
                    push(
                        format!("{path}.cert_file"),
                        format!("cannot read {}: {e}", cert_file.display()),
                    );
                    return None;
                }
            };
            let key = match PrivateKeyDer::from_pem_file(key_file) {
                Ok(k) => k,
                Err(e) => {
                    push(
                        format!("{path}.key_file"),
                        format!("cannot load a private key from {}: {e}", key_file.display()),
                    );
                    return None;
                }
            };
            match builder.with_client_auth_cert(chain, key) {
                Ok(c) => c,
                Err(e) => {
                    push(
                        format!("{path}.key_file"),
                        format!("does not fit the certificate: {e}"),
                    );
                    return None;
                }
            }
        }
    };
    config.alpn_protocols = if protocol.is_h2() {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let server_name = tls
        .server_name
        .as_deref()
        .and_then(|n| ServerName::try_from(n.to_string()).ok());
    Some(UpstreamTls {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// The connector of an upstream's members (loads TLS files; errors carry key paths).
fn connector(
    cfg: &UpstreamConfig,
    opened: IntCounter,
    errs: &mut Vec<FieldError>,
) -> Option<CountingConnector> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    let tls = match &cfg.tls {
        None => None,
        Some(t) => {
            // The URIs say `https`; the TLS layer is ours.
            http.enforce_http(false);
            Some(tls_client(
                t,
                cfg.protocol,
                &format!("upstreams.{}.tls", cfg.name),
                errs,
            )?)
        }
    };
    Some(CountingConnector {
        inner: http,
        tls,
        opened,
    })
}

/// Builds the pooled client of an upstream (loads TLS files; errors carry key paths).
pub fn build(
    cfg: &UpstreamConfig,
    opened: IntCounter,
    errs: &mut Vec<FieldError>,
) -> Option<UpstreamClient> {
    let connector = connector(cfg, opened, errs)?;
    Some(
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_member)
            .http2_only(cfg.protocol.is_h2())
            .build(connector),
    )
}

/// The request-path pool of a plain HTTP/1.1 upstream; `None` for `h2c`/`h2` or TLS
/// upstreams, which use the client of [`build`].
pub fn build_http1_pool(cfg: &UpstreamConfig, opened: IntCounter) -> Option<Http1Pool> {
    if cfg.protocol != UpstreamProtocol::Http1 || cfg.tls.is_some() {
        return None;
    }
    let connector = connector(cfg, opened, &mut Vec::new())?;
    Some(Http1Pool::new(
        connector,
        cfg.pool_idle_timeout,
        cfg.pool_max_idle_per_member,
    ))
}
