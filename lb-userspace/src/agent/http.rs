//! A minimal HTTP/1.1 client over any byte stream (TCP, Unix socket, TLS): one request per
//! connection, with a deadline. Used by the probes, the cluster exchange, the
//! `/admin/connections` query and `lbctl`.
use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

/// Responses larger than this are refused (status and cluster state are far smaller).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// A failed exchange, with the target.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{target}: timed out after {after:?}")]
    Timeout { target: String, after: Duration },
    #[error("{target}: connect: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{target}: {reason}")]
    Protocol { target: String, reason: String },
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    /// JSON body, if any.
    pub body: Option<Vec<u8>>,
    /// Bearer token, if any.
    pub token: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// `GET path`.
    pub fn get(path: &'a str) -> Call<'a> {
        Call {
            method: Method::GET,
            path,
            body: None,
            token: None,
        }
    }

    /// `POST path` with a JSON body.
    pub fn post(path: &'a str, body: Vec<u8>) -> Call<'a> {
        Call {
            method: Method::POST,
            path,
            body: Some(body),
            token: None,
        }
    }
}

/// Sends `call` over `io` and reads the whole response.
pub async fn exchange<IO>(
    io: IO,
    host: &str,
    call: &Call<'_>,
    target: &str,
) -> Result<(StatusCode, Bytes), HttpError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proto = |reason: String| HttpError::Protocol {
        target: target.to_owned(),
        reason,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| proto(format!("handshake: {e}")))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(call.method.clone())
        .uri(call.path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "lb-agent");
    if let Some(token) = call.token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if call.body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(
            call.body.clone().unwrap_or_default(),
        )))
        .map_err(|e| proto(format!("building the request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| proto(format!("request: {e}")))?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| proto(format!("reading the body: {e}")))?
        .to_bytes();
    conn.abort();
    Ok((status, body))
}

/// Connects to `addr` over TCP and sends `call`, all within `timeout`.
pub async fn tcp(
    addr: SocketAddr,
    call: &Call<'_>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), HttpError> {
    let target = format!("http://{addr}{}", call.path);
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Connect {
                target: target.clone(),
                source,
            })?;
        // Probes and control messages are tiny; do not wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(|source| HttpError::Connect {
                target: target.clone(),
                source,
            })?;
        exchange(stream, &addr.to_string(), call, &target).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout {
            target: target.clone(),
            after: timeout,
        })?
}
