//! A small HTTP/1.1 client for plain upstream connections, driven by the request's own task.
//!
//! hyper's client connection runs as a task of its own and talks to the request through a
//! dispatch channel: every proxied request paid for that channel, the extra task wake-ups and
//! hyper's general state machine. The common request (a body already in memory, no upgrade)
//! needs none of it: [`send`] writes the request and reads the response head on the caller's
//! task, and [`Body`] reads the response body straight from the socket and hands the
//! connection back to its pool once the body has been read to the end.
//!
//! Requests that need more (streamed request bodies, WebSocket upgrades, `CONNECT`, request
//! headers that set their own framing) still go through hyper, see [`super::pool`].
//!
//! Response framing follows RFC 9112 §6.3, as hyper's client does: 1xx responses other than
//! `101` are skipped; responses to `HEAD` and `101`/`204`/`304` have no body; then
//! `Transfer-Encoding` (chunked, else read until the member closes), `Content-Length` (all
//! values equal), else read until close. Unlike hyper, a response carrying both
//! `Transfer-Encoding` and `Content-Length` is refused: it is how response smuggling starts,
//! and no sane member sends it. A connection is reused only when its response was read to the
//! end, it allows keep-alive (`Connection`, HTTP version) and nothing follows the response.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::client::ConnectionUses;
use super::member::Member;
use crate::clock;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most header fields in a response head or trailer section (hyper's default).
const MAX_HEADERS: usize = 100;
/// Longest response head (hyper's default read buffer limit).
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Longest chunk-size line.
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section.
const MAX_TRAILER_BYTES: usize = 64 * 1024;
/// Smallest capacity of a response header map (see [`parse_head`]).
const MAP_CAPACITY: usize = 16;
/// Read buffer growth step.
const READ_CHUNK: usize = 8192;

/// An HTTP/1.1 connection to a member, idle between requests.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not consumed yet (empty while idle).
    buf: BytesMut,
    uses: ConnectionUses,
}

impl Conn {
    /// A new connection.
    pub fn new(io: TcpStream, uses: ConnectionUses) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            uses,
        }
    }

    /// Whether an idle connection can carry a request: the member has neither closed it nor
    /// sent anything unasked. Costs no system call while the socket is not readable.
    pub fn is_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Counts one more response; `true` when the connection was used before.
    fn record_use(&self) -> bool {
        self.uses.record()
    }

    /// Reads more bytes into the buffer; `Ok(0)` when the member closed the connection.
    ///
    /// Through `AsyncRead::poll_read`, not `try_read_buf`: tokio's `poll_read` takes a read
    /// that does not fill the buffer as the socket drained and forgets its readiness, so
    /// [`Conn::is_usable`] on the idle connection then costs no system call. (With
    /// `try_read_buf` the readiness stayed, and every request paid a `recvfrom` that returned
    /// EAGAIN.)
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 8 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Where a connection goes back when its response has been read.
#[derive(Debug)]
pub struct PoolReturn {
    pub member: Arc<Member>,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

impl PoolReturn {
    fn put(&self, conn: Conn) {
        if self.max_idle > 0 {
            self.member
                .idle
                .push_conn(conn, clock::expiry(self.idle_timeout), self.max_idle);
        }
    }
}

/// Why a request could not be sent on a connection.
#[derive(Debug)]
pub struct WriteError {
    /// Whether some of the request reached the socket (then it may have reached the member).
    pub partly_sent: bool,
    pub source: io::Error,
}

/// Serialises a request (origin form, HTTP/1.1) with its in-memory body: the head as hyper
/// writes it (names as stored, one line per value), `Content-Length` when the body is not
/// empty. The caller makes sure `headers` set no framing of their own. `host`, when given,
/// is written as a `host` header after `headers` (the caller checks that they have none and
/// that it is a valid header value).
pub fn encode_request(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    host: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut len = method.as_str().len() + path_and_query.len() + 16 + body.len() + 32;
    if let Some(host) = host {
        len += host.len() + 8;
    }
    for (name, value) in headers {
        len += name.as_str().len() + value.len() + 4;
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(host) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Writes a serialised request.
pub async fn write_request(conn: &mut Conn, wire: &[u8]) -> Result<(), WriteError> {
    let mut written = 0;
    while written < wire.len() {
        match conn.io.write(&wire[written..]).await {
            Ok(0) => {
                return Err(WriteError {
                    partly_sent: written > 0,
                    source: io::ErrorKind::WriteZero.into(),
                });
            }
            Ok(n) => written += n,
            Err(source) => {
                return Err(WriteError {
                    partly_sent: written > 0,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The response error of a request that was sent.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("reading the response: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the response head was complete")]
    Closed,
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Reads the response head of a request sent on `conn` (1xx other than `101` skipped) and
/// returns the response with its body reading the rest from `conn`. `head_request`: the
/// request was `HEAD` (no body whatever the headers say).
pub async fn read_response(
    mut conn: Conn,
    head_request: bool,
    ret: PoolReturn,
) -> Result<(Response<Body>, bool), ResponseError> {
    loop {
        if !conn.buf.is_empty()
            && let Some(head) = parse_head(&mut conn.buf, head_request)?
        {
            let Head {
                mut response,
                framing,
                keep_alive,
            } = head;
            let reused = conn.record_use();
            let state = match framing {
                Framing::Empty => State::Done,
                Framing::Length(0) => State::Done,
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::Chunked(Chunk::Size),
                Framing::UntilClose => State::UntilClose,
            };
            let reusable = keep_alive && framing != Framing::UntilClose;
            let mut body = Body {
                conn: Some(conn),
                state,
                reusable,
                ret: Some(ret),
            };
            if body.state == State::Done {
                // Nothing to read: the connection is free already. A `101` switches the
                // connection to another protocol, so it never goes back.
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    body.reusable = false;
                }
                body.finish();
            }
            *response.body_mut() = body;
            return Ok((response, reused));
        }
        if conn.buf.len() >= MAX_HEAD_BYTES {
            return Err(ResponseError::HeadTooLarge);
        }
        if poll_fn(|cx| conn.poll_fill(cx)).await? == 0 {
            return Err(ResponseError::Closed);
        }
    }
}

/// A parsed response head.
struct Head {
    response: Response<Body>,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a response head at the start of `buf` and consumes it; `None` while incomplete.
/// Informational responses (1xx but `101`) are consumed and skipped.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, ResponseError> {
    loop {
        // Offsets of names and values, taken while httparse borrows the buffer; the head is
        // then split off once and values share its allocation. (A vector, not a zeroed
        // array of `MAX_HEADERS`: clearing that costs more than the allocation.)
        let mut fields: Vec<(usize, usize, usize, usize)> = Vec::new();
        let (len, code, version, reason) =
            {
                // Uninitialised: httparse writes only the fields it finds.
                let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
                let mut res = httparse::Response::new(&mut []);
                let len = match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut res, &buf[..], &mut headers)?
                {
                    httparse::Status::Complete(len) => len,
                    httparse::Status::Partial => return Ok(None),
                };
                let base = buf.as_ptr() as usize;
                let code = res.code.ok_or(ResponseError::Invalid("no status code"))?;
                let version = if res.version == Some(1) {
                    Version::HTTP_11
                } else {
                    Version::HTTP_10
                };
                let reason = res.reason.map(|r| {
                    let start = r.as_ptr() as usize - base;
                    (start, start + r.len())
                });
                fields.reserve_exact(res.headers.len());
                for h in res.headers.iter() {
                    let name = h.name.as_ptr() as usize - base;
                    let value = h.value.as_ptr() as usize - base;
                    fields.push((name, name + h.name.len(), value, value + h.value.len()));
                }
                (len, code, version, reason)
            };
        let head = buf.split_to(len).freeze();
        let status =
            StatusCode::from_u16(code).map_err(|_| ResponseError::Invalid("bad status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // `100 Continue`, `103 Early Hints`...: the final response follows.
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        // Room to spare: hyper's server keeps the map of the response it wrote for the next
        // request it parses on the connection, which then gains the forwarding headers.
        let mut headers = HeaderMap::with_capacity(fields.len().max(MAP_CAPACITY));
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        for &(ns, ne, vs, ve) in &fields {
            let name = HeaderName::from_bytes(&head[ns..ne])
                .map_err(|_| ResponseError::Invalid("bad header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| ResponseError::Invalid("bad header value"))?;
            if name == header::CONNECTION {
                // Once any `Connection` line asks to close, a later `keep-alive` cannot undo it.
                if saw_close || has_token(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    // HTTP/1.0 closes unless told otherwise.
                    keep_alive = has_token(&value, "keep-alive");
                }
            }
            headers.append(name, value);
        }
        let framing = framing(status, version, &headers, head_request)?;
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some((rs, re)) = reason {
            let phrase = &head[rs..re];
            // Kept, as hyper does, only when it is not the usual one.
            if status.canonical_reason().map(str::as_bytes) != Some(phrase)
                && let Ok(p) = hyper::ext::ReasonPhrase::try_from(head.slice(rs..re))
            {
                response.extensions_mut().insert(p);
            }
        }
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// The body framing of a response (RFC 9112 §6.3).
fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    head_request: bool,
) -> Result<Framing, ResponseError> {
    if head_request || matches!(status.as_u16(), 101 | 204 | 304) || status.is_informational() {
        return Ok(Framing::Empty);
    }
    let te = headers.contains_key(header::TRANSFER_ENCODING);
    let cl = headers.contains_key(header::CONTENT_LENGTH);
    if te && cl {
        return Err(ResponseError::Invalid(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    if te {
        if version == Version::HTTP_10 {
            return Err(ResponseError::Invalid("Transfer-Encoding in HTTP/1.0"));
        }
        return Ok(if is_chunked(headers) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    if cl {
        return content_length(headers)
            .map(Framing::Length)
            .ok_or(ResponseError::Invalid("bad Content-Length"));
    }
    Ok(Framing::UntilClose)
}

/// Whether the last transfer coding is `chunked`.
fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// The `Content-Length`: every value (lines and comma-separated lists) digits only and equal.
/// Works on bytes: a value that is not visible ASCII has no digits-only element anyway.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for v in value.as_bytes().split(|&b| b == b',') {
            let v = v.trim_ascii();
            if v.is_empty() {
                return None;
            }
            let mut n: u64 = 0;
            for &b in v {
                if !b.is_ascii_digit() {
                    return None;
                }
                n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            }
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    length
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Where the body reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left in the current chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
}

/// A response body read from its connection; the connection goes back to its pool when the
/// body has been read to the end (and is closed if the body is dropped before).
#[derive(Debug)]
pub struct Body {
    conn: Option<Conn>,
    state: State,
    reusable: bool,
    ret: Option<PoolReturn>,
}

impl Body {
    fn empty() -> Self {
        Self {
            conn: None,
            state: State::Done,
            reusable: false,
            ret: None,
        }
    }

    /// The end was reached: the connection goes back to the pool if it can carry another
    /// request (bytes after the response mean the member is out of step: close).
    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(conn), Some(ret)) = (self.conn.take(), self.ret.take())
            && self.reusable
            && conn.buf.is_empty()
        {
            ret.put(conn);
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                this.state = State::Done;
                return Poll::Ready(None);
            };
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) | State::Chunked(Chunk::Data(left)) => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => return this.fail("connection closed before the body ended"),
                            Ok(_) => continue,
                            Err(e) => return this.fail(e),
                        }
                    }
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(n).freeze();
                    let left = left - n as u64;
                    match this.state {
                        State::Length(_) if left == 0 => this.finish(),
                        State::Length(_) => this.state = State::Length(left),
                        _ if left == 0 => this.state = State::Chunked(Chunk::DataEnd),
                        _ => this.state = State::Chunked(Chunk::Data(left)),
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => {
                                // The end of the body; the connection is spent.
                                this.state = State::Done;
                                this.conn = None;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return this.fail(e),
                        }
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        conn.buf.advance(used);
                        this.state = State::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if conn.buf.len() > MAX_CHUNK_LINE => {
                        return this.fail("chunk-size line too long");
                    }
                    Ok(httparse::Status::Partial) => match ready!(conn.poll_fill(cx)) {
                        Ok(0) => return this.fail("connection closed inside a chunked body"),
                        Ok(_) => {}
                        Err(e) => return this.fail(e),
                    },
                    Err(_) => return this.fail("invalid chunk size"),
                },
                State::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() < 2 {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => return this.fail("connection closed inside a chunked body"),
                            Ok(_) => continue,
                            Err(e) => return this.fail(e),
                        }
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return this.fail("chunk data not followed by CRLF");
                    }
                    conn.buf.advance(2);
                    this.state = State::Chunked(Chunk::Size);
                }
                State::Chunked(Chunk::Trailers) => match parse_trailers(&mut conn.buf) {
                    Ok(Some(trailers)) => {
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(None) if conn.buf.len() > MAX_TRAILER_BYTES => {
                        return this.fail("trailer section too large");
                    }
                    Ok(None) => match ready!(conn.poll_fill(cx)) {
                        Ok(0) => return this.fail("connection closed inside a chunked body"),
                        Ok(_) => {}
                        Err(e) => return this.fail(e),
                    },
                    Err(e) => return this.fail(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Parses the trailer section after the last chunk and consumes it: `Some(None)` when it is
/// empty, `None` while incomplete.
#[allow(clippy::option_option)]
fn parse_trailers(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, BoxError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (used, parsed) = match httparse::parse_headers(&buf[..], &mut fields)? {
        httparse::Status::Complete(c) => c,
        httparse::Status::Partial => return Ok(None),
    };
    let trailers = if parsed.is_empty() {
        None
    } else {
        let mut map = HeaderMap::with_capacity(parsed.len());
        for h in parsed {
            map.append(
                HeaderName::from_bytes(h.name.as_bytes())?,
                HeaderValue::from_bytes(h.value)?,
            );
        }
        Some(map)
    };
    buf.advance(used);
    Ok(Some(trailers))
}

/// The body of a response from either client: hyper's (`h2`, TLS, streamed requests,
/// upgrades) or [`Body`].
#[derive(Debug)]
pub enum UpstreamBody {
    Hyper(hyper::body::Incoming),
    H1(Body),
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::H1(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use http_body::Body as _;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// What a fake member does after reading the request head.
    struct Script {
        /// Written in order, with a short pause between pieces (to split reads).
        pieces: Vec<&'static [u8]>,
        /// Close the connection after the last piece.
        close: bool,
    }

    fn once(bytes: &'static [u8]) -> Script {
        script(&[bytes], false)
    }

    fn script(pieces: &[&'static [u8]], close: bool) -> Script {
        Script {
            pieces: pieces.to_vec(),
            close,
        }
    }

    struct Outcome {
        response: Response<Body>,
        member: Arc<Member>,
        _server: tokio::task::JoinHandle<()>,
    }

    /// Sends `method /` to a fake member that answers with `script`; returns the response
    /// (body unread) and the member whose pool the connection may go back to.
    async fn exchange(method: Method, script: Script) -> Result<Outcome, ResponseError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await.unwrap() == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            for piece in script.pieces {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if script.close {
                drop(s);
            } else {
                // Keep the connection open until the test ends.
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut conn = Conn::new(tcp, ConnectionUses::default());
        let member = Arc::new(Member::new(addr.to_string(), 1));
        let wire = encode_request(&method, "/", &HeaderMap::new(), None, b"");
        write_request(&mut conn, &wire).await.unwrap();
        let ret = PoolReturn {
            member: Arc::clone(&member),
            idle_timeout: Duration::from_secs(60),
            max_idle: 4,
        };
        let (response, _reused) = read_response(conn, method == Method::HEAD, ret).await?;
        Ok(Outcome {
            response,
            member,
            _server: server,
        })
    }

    /// Reads the whole body: data, trailers, and whether the connection went back.
    async fn read_all(o: Outcome) -> (Result<(Bytes, Option<HeaderMap>), BoxError>, bool) {
        let body = o.response.into_body();
        let collected = body.collect().await;
        let pooled = o.member.idle.own_idle() == 1;
        let result = collected.map(|c| {
            let trailers = c.trailers().cloned();
            (c.to_bytes(), trailers)
        });
        (result, pooled)
    }

    /// `exchange` of a `GET` whose response is read whole: `read_all`'s result.
    async fn get_all(script: Script) -> (Result<(Bytes, Option<HeaderMap>), BoxError>, bool) {
        read_all(exchange(Method::GET, script).await.unwrap()).await
    }

    #[tokio::test]
    async fn content_length_body_is_read_and_the_connection_reused() {
        let o = exchange(
            Method::GET,
            once(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"),
        )
        .await
        .unwrap();
        assert_eq!(o.response.status(), StatusCode::OK);
        assert_eq!(o.response.headers()["x-a"], "1");
        assert_eq!(o.response.body().size_hint().exact(), Some(5));
        let (body, pooled) = read_all(o).await;
        assert_eq!(&body.unwrap().0[..], b"hello");
        assert!(pooled);
    }

    #[tokio::test]
    async fn extra_bytes_after_a_body_prevent_reuse() {
        let (body, pooled) = get_all(script(
            &[
                b"HTTP/1.1 200 OK\r\ncont",
                b"ent-length: 10\r\n\r\nhel",
                b"lo world",
            ],
            false,
        ))
        .await;
        // Two bytes more than declared arrived: the member is out of step, no reuse.
        assert_eq!(&body.unwrap().0[..], b"hello worl");
        assert!(!pooled);
    }

    #[tokio::test]
    async fn chunked_body_with_extensions_and_trailers() {
        let o = exchange(
            Method::GET,
            script(
                &[
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhel",
                    b"lo\r\n6\r",
                    b"\n world\r\n0\r\nx-checksum: abc\r\n",
                    b"\r\n",
                ],
                false,
            ),
        )
        .await
        .unwrap();
        assert_eq!(o.response.body().size_hint().exact(), None);
        let (body, pooled) = read_all(o).await;
        let (data, trailers) = body.unwrap();
        assert_eq!(&data[..], b"hello world");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
        assert!(pooled);
    }

    #[tokio::test]
    async fn chunked_body_without_trailers() {
        let (body, pooled) = get_all(once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ))
        .await;
        let (data, trailers) = body.unwrap();
        assert_eq!(&data[..], b"abc");
        assert!(trailers.is_none());
        assert!(pooled);
    }

    #[tokio::test]
    async fn bad_chunk_framing_fails_the_body() {
        let cases: [&'static [u8]; 2] = [
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        ];
        for bad in cases {
            let (body, pooled) = get_all(once(bad)).await;
            assert!(body.is_err());
            assert!(!pooled);
        }
    }

    #[tokio::test]
    async fn a_body_without_length_ends_when_the_member_closes() {
        let (body, pooled) = get_all(script(
            &[b"HTTP/1.1 200 OK\r\n\r\npart one, ", b"part two"],
            true,
        ))
        .await;
        assert_eq!(&body.unwrap().0[..], b"part one, part two");
        assert!(!pooled);
        // A transfer coding other than chunked is read until close too.
        let (body, pooled) = get_all(script(
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxyz"],
            true,
        ))
        .await;
        assert_eq!(&body.unwrap().0[..], b"xyz");
        assert!(!pooled);
    }

    #[tokio::test]
    async fn a_truncated_body_is_an_error() {
        let (body, pooled) = get_all(script(
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"],
            true,
        ))
        .await;
        assert!(body.is_err());
        assert!(!pooled);
    }

    #[tokio::test]
    async fn head_204_and_304_responses_have_no_body() {
        let o = exchange(
            Method::HEAD,
            once(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"),
        )
        .await
        .unwrap();
        assert!(o.response.body().is_end_stream());
        assert_eq!(o.response.headers()["content-length"], "100");
        let (body, pooled) = read_all(o).await;
        assert!(body.unwrap().0.is_empty());
        assert!(pooled);
        let cases: [&'static [u8]; 2] = [
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
        ];
        for status in cases {
            let o = exchange(Method::GET, once(status)).await.unwrap();
            assert!(o.response.body().is_end_stream());
            let (body, pooled) = read_all(o).await;
            assert!(body.unwrap().0.is_empty());
            assert!(pooled);
        }
    }

    #[tokio::test]
    async fn informational_responses_are_skipped() {
        let o = exchange(
            Method::GET,
            script(&[
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
                ], false),
        )
        .await
        .unwrap();
        assert_eq!(o.response.status(), StatusCode::CREATED);
        assert!(!o.response.headers().contains_key("link"));
        let (body, pooled) = read_all(o).await;
        assert_eq!(&body.unwrap().0[..], b"ok");
        assert!(pooled);
    }

    #[tokio::test]
    async fn switching_protocols_is_returned_and_the_connection_not_reused() {
        let o = exchange(
            Method::GET,
            once(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"),
        )
        .await
        .unwrap();
        assert_eq!(o.response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let (body, pooled) = read_all(o).await;
        assert!(body.unwrap().0.is_empty());
        assert!(!pooled);
    }

    #[tokio::test]
    async fn ambiguous_or_invalid_framing_is_refused() {
        let cases: [&'static [u8]; 7] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\nabcd",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
        ];
        for bad in cases {
            let r = exchange(Method::GET, once(bad)).await;
            assert!(r.is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn repeated_equal_content_lengths_are_accepted() {
        let (body, pooled) = get_all(once(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\nabc",
        ))
        .await;
        assert_eq!(&body.unwrap().0[..], b"abc");
        assert!(pooled);
    }

    #[tokio::test]
    async fn keep_alive_follows_connection_and_version() {
        let cases: [(&'static [u8], bool); 4] = [
            (
                b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
            (
                b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\nConnection: x, Close\r\ncontent-length: 1\r\n\r\na", false),
        ];
        for (response, reusable) in cases {
            let (body, pooled) = get_all(once(response)).await;
            assert!(body.is_ok());
            assert_eq!(pooled, reusable, "{}", String::from_utf8_lossy(response));
        }
    }

    #[tokio::test]
    async fn a_dropped_body_closes_the_connection() {
        let o = exchange(
            Method::GET,
            once(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc"),
        )
        .await
        .unwrap();
        let member = Arc::clone(&o.member);
        drop(o);
        assert_eq!(member.idle.own_idle(), 0);
    }

    #[tokio::test]
    async fn an_unusual_reason_phrase_is_kept() {
        let o = exchange(
            Method::GET,
            once(b"HTTP/1.1 200 Fine\r\ncontent-length: 0\r\n\r\n"),
        )
        .await
        .unwrap();
        let phrase = o.response.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(
            phrase.map(hyper::ext::ReasonPhrase::as_bytes),
            Some(&b"Fine"[..])
        );
        let o = exchange(
            Method::GET,
            once(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        )
        .await
        .unwrap();
        assert!(
            o.response
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_not_usable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let conn = Conn::new(tcp, ConnectionUses::default());
        assert!(conn.is_usable());
        drop(server);
        // The close reaches the socket's readiness after a turn of the driver.
        let deadline = Instant::now() + Duration::from_secs(5);
        while conn.is_usable() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!conn.is_usable());
    }

    #[test]
    fn content_length_values_must_agree() {
        let cl = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            content_length(&h)
        };
        assert_eq!(cl(&["42"]), Some(42));
        assert_eq!(cl(&[" 7 , 7", "7"]), Some(7));
        assert_eq!(cl(&["7", "8"]), None);
        assert_eq!(cl(&["7,"]), None);
        assert_eq!(cl(&["-1"]), None);
        assert_eq!(cl(&["18446744073709551616"]), None);
        assert_eq!(cl(&[]), None);
    }

    #[test]
    fn connection_tokens_are_found_in_lists() {
        let v = HeaderValue::from_static("Upgrade, CLOSE ");
        assert!(has_token(&v, "close"));
        assert!(has_token(&v, "upgrade"));
        assert!(!has_token(&v, "keep-alive"));
        assert!(!has_token(&HeaderValue::from_static("closed"), "close"));
    }

    #[test]
    fn requests_are_encoded_like_hyper_does() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        h.append("x-multi", HeaderValue::from_static("1"));
        h.append("x-multi", HeaderValue::from_static("2"));
        let wire = encode_request(&Method::POST, "/a?b=c", &h, None, b"body");
        assert_eq!(
            wire,
            b"POST /a?b=c HTTP/1.1\r\nhost: example.com\r\nx-multi: 1\r\nx-multi: 2\r\ncontent-length: 4\r\n\r\nbody"
        );
        // An empty body sends no length (as hyper does).
        let wire = encode_request(&Method::GET, "/", &HeaderMap::new(), None, b"");
        assert_eq!(wire, b"GET / HTTP/1.1\r\n\r\n");
        // A `Host` from the member comes after the request's headers (where hyper's client
        // appends it).
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        let wire = encode_request(&Method::GET, "/", &h, Some("10.0.0.1:8080"), b"");
        assert_eq!(
            wire,
            b"GET / HTTP/1.1\r\nx-a: 1\r\nhost: 10.0.0.1:8080\r\n\r\n"
        );
    }
}
