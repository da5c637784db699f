//! Request bodies on their way to an upstream: buffered when small (so that any attempt can
//! resend them), streamed when large.
//!
//! [`RequestBodySource::read`] reads the client's body until it ends or passes the upstream's
//! `retry.buffer_bytes`. A body that ended is kept whole and every attempt sends a copy. A
//! longer one is streamed: its first bytes and the rest of the client's stream go, once, to
//! the first attempt that polls them, so memory stays bounded by `buffer_bytes` whatever the
//! body size. Such a request can be retried only while no attempt has started sending it (a
//! failed connect), which [`RequestBodySource::replayable`] tells.
//!
//! `max_body_bytes` is enforced in both phases; when the streamed part passes it, the attempt
//! fails and [`RequestBodySource::client_fault`] turns that into `413`. So is `body_timeout`,
//! the longest wait for the next part of the body (a client that stops sending holds neither
//! a connection nor an upstream forever): `408`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::body::{BoxError, RequestBody};
use crate::error::ProxyError;

/// The listener's limits on a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `max_body_bytes`.
    pub max_bytes: usize,
    /// `body_timeout`: the longest wait for the next part of the body.
    pub timeout: Duration,
}

/// The client's request body, ready to be sent by one or more attempts.
#[derive(Debug)]
pub enum RequestBodySource {
    /// No body.
    Empty,
    /// The whole body, read before the first attempt.
    Buffered(Bytes),
    /// A body longer than the buffer: sent once, by the first attempt that polls it.
    Streaming(Arc<Stream>),
}

/// The shared state of a streamed body.
#[derive(Debug)]
pub struct Stream {
    /// Read before the first attempt, then the rest of the client's body; taken by the first
    /// attempt that polls.
    parts: Mutex<Option<(Vec<Bytes>, Incoming)>>,
    /// The declared `Content-Length`, if any (so the upstream gets it too).
    declared: Option<u64>,
    /// `max_body_bytes`.
    limit: u64,
    /// `body_timeout`.
    timeout: Duration,
    too_large: AtomicBool,
    timed_out: AtomicBool,
    client_error: Mutex<Option<hyper::Error>>,
}

impl RequestBodySource {
    /// Reads the body until it ends (buffered) or passes `buffer` bytes (streamed). A body
    /// declared or found larger than `limits.max_bytes` is refused with `413`, one whose next
    /// part does not come within `limits.timeout` with `408`.
    pub async fn read(
        mut body: Incoming,
        declared: Option<u64>,
        limits: BodyLimits,
        buffer: usize,
    ) -> Result<Self, ProxyError> {
        let limit = limits.max_bytes;
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        if body.is_end_stream() {
            return Ok(Self::Empty);
        }
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut read: usize = 0;
        // A body declared longer than the buffer streams at once: waiting for the first
        // `buffer` bytes would only delay it.
        let streams_anyway = buffer == 0 || declared.is_some_and(|len| len > buffer as u64);
        while !streams_anyway && read <= buffer {
            let next = tokio::time::timeout(limits.timeout, body.frame())
                .await
                .map_err(|_| ProxyError::BodyTimeout {
                    timeout: limits.timeout,
                })?;
            match next {
                None => {
                    return Ok(match chunks.len() {
                        0 => Self::Empty,
                        1 => Self::Buffered(chunks.swap_remove(0)),
                        _ => Self::Buffered(chunks.concat().into()),
                    });
                }
                Some(Err(source)) => return Err(ProxyError::ClientBody { source }),
                Some(Ok(frame)) => {
                    // Trailers of a small body are dropped like before; data is what counts.
                    if let Ok(data) = frame.into_data() {
                        read += data.len();
                        if read > limit {
                            return Err(ProxyError::BodyTooLarge { limit });
                        }
                        if !data.is_empty() {
                            chunks.push(data);
                        }
                    }
                }
            }
        }
        Ok(Self::Streaming(Arc::new(Stream {
            parts: Mutex::new(Some((chunks, body))),
            declared,
            limit: limit as u64,
            timeout: limits.timeout,
            too_large: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            client_error: Mutex::new(None),
        })))
    }

    /// The body of one attempt.
    pub fn attempt(&self) -> RequestBody {
        match self {
            Self::Empty => crate::body::empty(),
            Self::Buffered(b) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
            Self::Streaming(s) => StreamBody {
                shared: Arc::clone(s),
                prefix: Vec::new(),
                rest: None,
                sent: 0,
                started: false,
                idle: None,
                waiting: false,
            }
            .boxed(),
        }
    }

    /// The whole body when it is in memory (empty or buffered); `None` when it streams.
    pub fn in_memory(&self) -> Option<Bytes> {
        match self {
            Self::Empty => Some(Bytes::new()),
            Self::Buffered(b) => Some(b.clone()),
            Self::Streaming(_) => None,
        }
    }

    /// Whether another attempt can send the body: always when it was buffered; for a streamed
    /// body only while no attempt has taken it.
    pub fn replayable(&self) -> bool {
        match self {
            Self::Empty | Self::Buffered(_) => true,
            Self::Streaming(s) => s
                .parts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some(),
        }
    }

    /// The client's fault that made an attempt fail while streaming (body over the limit, or
    /// reading from the client failed), if any.
    pub fn client_fault(&self) -> Option<ProxyError> {
        let Self::Streaming(s) = self else {
            return None;
        };
        if s.too_large.load(Ordering::Acquire) {
            return Some(ProxyError::BodyTooLarge {
                limit: usize::try_from(s.limit).unwrap_or(usize::MAX),
            });
        }
        if s.timed_out.load(Ordering::Acquire) {
            return Some(ProxyError::BodyTimeout { timeout: s.timeout });
        }
        s.client_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|source| ProxyError::ClientBody { source })
    }
}

/// Why a streamed body stopped.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("the request body was already sent by an earlier attempt")]
    AlreadySent,
    #[error("the client sent no request body data for {0:?}")]
    Timeout(Duration),
}

/// The body of an attempt that streams.
struct StreamBody {
    shared: Arc<Stream>,
    /// Buffered chunks still to send, in reverse order.
    prefix: Vec<Bytes>,
    rest: Option<Incoming>,
    /// Data bytes yielded so far.
    sent: u64,
    started: bool,
    /// Fires `body_timeout` after the client's stream last had nothing to give (made on the
    /// first wait: a body that never makes the sender wait costs no timer).
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last poll of the client's stream was pending (the timer runs).
    waiting: bool,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.started {
            this.started = true;
            let taken = this
                .shared
                .parts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let Some((mut prefix, rest)) = taken else {
                return Poll::Ready(Some(Err(StreamError::AlreadySent.into())));
            };
            prefix.reverse();
            this.prefix = prefix;
            this.rest = Some(rest);
        }
        if let Some(chunk) = this.prefix.pop() {
            this.sent += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        if polled.is_ready() {
            this.waiting = false;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                    if this.sent > this.shared.limit {
                        this.shared.too_large.store(true, Ordering::Release);
                        this.rest = None;
                        return Poll::Ready(Some(Err(
                            StreamError::TooLarge(this.shared.limit).into()
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.rest = None;
                let message = e.to_string();
                *this
                    .shared
                    .client_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e);
                Poll::Ready(Some(Err(message.into())))
            }
            Poll::Ready(None) => {
                this.rest = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = this.shared.timeout;
                let idle = crate::body::arm_idle_timer(&mut this.idle, &mut this.waiting, timeout);
                if idle.as_mut().poll(cx).is_ready() {
                    this.shared.timed_out.store(true, Ordering::Release);
                    this.rest = None;
                    return Poll::Ready(Some(Err(StreamError::Timeout(timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.started && self.prefix.is_empty() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.shared.declared {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}
