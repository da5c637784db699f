//! Response bodies: one boxed type for every response, and a wrapper that counts the bytes
//! sent and runs completion hooks (access log, metrics, in-flight guards) when the body ends
//! or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Boxed error of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the gateway sends.
pub type ResponseBody = BoxBody<Bytes, BoxError>;

/// The body type of every request the gateway sends to an upstream.
pub type RequestBody = BoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// How a body ended, passed to completion hooks.
#[derive(Debug, Clone, Default)]
pub struct BodyOutcome {
    /// Data bytes sent.
    pub bytes: u64,
    /// The end of the body was reached (otherwise the client went away or it failed).
    pub complete: bool,
    /// Reading the body failed.
    pub failed: bool,
    /// Why it failed (the upstream's side: a proxied body fails only on its way in).
    pub error: Option<String>,
    /// It failed because the upstream sent nothing for `read_timeout` ([`ReadTimedOut`]).
    pub read_timed_out: bool,
}

pin_project_lite::pin_project! {
    /// Counts bytes and runs its hook once, on end of stream, error, or drop. The hook is a
    /// type parameter, not a boxed closure: the tracked body is boxed whole (see [`boxed`]),
    /// so one allocation and one dynamic call less per response.
    pub struct TrackedBody<H>
    where
        H: FnOnce(BodyOutcome),
    {
        #[pin]
        inner: ResponseBody,
        outcome: BodyOutcome,
        hook: Option<H>,
    }

    impl<H> PinnedDrop for TrackedBody<H>
    where
        H: FnOnce(BodyOutcome),
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // hyper stops polling a body that says it has ended (after its last data frame,
            // or before any for an empty body), so the end is seen here rather than as a
            // `None` frame.
            if !this.outcome.failed && this.inner.is_end_stream() {
                this.outcome.complete = true;
            }
            if let Some(hook) = this.hook.take() {
                hook(std::mem::take(this.outcome));
            }
        }
    }
}

impl<H> TrackedBody<H>
where
    H: FnOnce(BodyOutcome),
{
    /// Wraps a body with one hook.
    pub fn new(inner: ResponseBody, hook: H) -> Self {
        Self {
            inner,
            outcome: BodyOutcome::default(),
            hook: Some(hook),
        }
    }
}

impl<H> Body for TrackedBody<H>
where
    H: FnOnce(BodyOutcome),
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.outcome.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.outcome.failed = true;
                this.outcome.error = Some(e.to_string());
                this.outcome.read_timed_out = e.is::<ReadTimedOut>();
            }
            Poll::Ready(None) => this.outcome.complete = true,
            Poll::Pending => {}
        }
        if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            && let Some(hook) = this.hook.take()
        {
            hook(std::mem::take(this.outcome));
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Boxes a tracked body (with its hook: one allocation).
pub fn boxed<H>(body: TrackedBody<H>) -> ResponseBody
where
    H: FnOnce(BodyOutcome) + Send + Sync + 'static,
{
    BoxBody::new(body)
}

pin_project_lite::pin_project! {
    /// A body that keeps a guard until it ends (end of stream, error or drop): what a
    /// [`TrackedBody`] hook dropping it would do, without a boxed hook, and around any body type so that
    /// the whole thing is boxed once.
    pub struct Holding<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> Holding<B, G> {
    /// Keeps `guard` alive until `inner` has ended.
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B, G> Body for Holding<B, G>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => {
                this.guard.take();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.guard.take();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A body that fails when its next frame does not come within `timeout` (an upstream
    /// that stopped sending in the middle of a response). The timer is made at the first
    /// wait, so a body that never makes its reader wait costs none.
    pub struct ReadTimeout<B> {
        #[pin]
        inner: B,
        timeout: std::time::Duration,
        idle: Option<Pin<Box<tokio::time::Sleep>>>,
        // The last poll was pending (the timer runs).
        waiting: bool,
    }
}

impl<B> ReadTimeout<B> {
    /// `inner`, failing after `timeout` without a frame.
    pub fn new(inner: B, timeout: std::time::Duration) -> Self {
        Self {
            inner,
            timeout,
            idle: None,
            waiting: false,
        }
    }
}

/// The timer of a body whose source just had nothing to give: set to fire `timeout` from now
/// when the wait is new (`waiting` was false; made on the first wait), left running when
/// the previous poll was already waiting.
pub fn arm_idle_timer<'a>(
    idle: &'a mut Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: &mut bool,
    timeout: std::time::Duration,
) -> &'a mut Pin<Box<tokio::time::Sleep>> {
    let fresh = !std::mem::replace(waiting, true);
    let deadline = || tokio::time::Instant::now() + timeout;
    if fresh && let Some(sleep) = idle.as_mut() {
        sleep.as_mut().reset(deadline());
    }
    idle.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline())))
}

/// Why a [`ReadTimeout`] body failed.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response data for {0:?}")]
pub struct ReadTimedOut(pub std::time::Duration);

impl<B> Body for ReadTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = arm_idle_timer(this.idle, this.waiting, *this.timeout);
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(ReadTimedOut(*this.timeout).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Boxes `inner` with `guard` kept until it ends (one allocation for both).
pub fn holding<B, G>(inner: B, guard: G) -> ResponseBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
    G: Send + Sync + 'static,
{
    BoxBody::new(Holding::new(inner, guard))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Where a test hook puts the outcome it was given.
    type Seen = Arc<Mutex<Option<BodyOutcome>>>;

    fn tracked(inner: ResponseBody) -> (TrackedBody<impl FnOnce(BodyOutcome)>, Seen) {
        let seen = Arc::new(Mutex::new(None));
        let s = Arc::clone(&seen);
        let body = TrackedBody::new(inner, move |o| *s.lock().unwrap() = Some(o));
        (body, seen)
    }

    #[tokio::test]
    async fn a_body_dropped_after_its_last_frame_counts_as_complete() {
        // What hyper does with a body of known length: one frame, then no further poll.
        let (mut body, seen) = tracked(full("abc"));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().map(Bytes::len), Some(3));
        drop(body);
        let o = seen.lock().unwrap().take().unwrap();
        assert!(o.complete && !o.failed);
        assert_eq!(o.bytes, 3);
        // An empty body is never polled.
        let (body, seen) = tracked(empty());
        drop(body);
        assert!(seen.lock().unwrap().take().unwrap().complete);
    }

    /// Sets its flag when dropped.
    struct Flag(Arc<Mutex<bool>>);

    impl Drop for Flag {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = true;
        }
    }

    #[tokio::test]
    async fn a_holding_body_releases_its_guard_at_the_end_or_when_dropped() {
        // Released when the end is read, before the body is dropped.
        let released = Arc::new(Mutex::new(false));
        let (tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(2);
        let mut body = holding(rx, Flag(Arc::clone(&released)));
        let mut tx = tx;
        tx.send_data(Bytes::from_static(b"ab")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().map(Bytes::len), Some(2));
        assert!(!*released.lock().unwrap());
        drop(tx);
        assert!(body.frame().await.is_none());
        assert!(*released.lock().unwrap());
        drop(body);
        // Released when dropped before its end.
        let released = Arc::new(Mutex::new(false));
        let (_tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(2);
        let body = holding(rx, Flag(Arc::clone(&released)));
        assert!(!*released.lock().unwrap());
        drop(body);
        assert!(*released.lock().unwrap());
    }

    #[tokio::test]
    async fn a_holding_body_passes_frames_and_the_end_through() {
        let released = Arc::new(Mutex::new(false));
        let body = holding(full("abc"), Flag(Arc::clone(&released)));
        assert_eq!(body.size_hint().exact(), Some(3));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
        assert!(*released.lock().unwrap());
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_incomplete() {
        let (tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(2);
        let (mut body, seen) = tracked(rx.boxed());
        let mut tx = tx;
        tx.send_data(Bytes::from_static(b"ab")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        drop(body);
        let o = seen.lock().unwrap().take().unwrap();
        assert!(!o.complete);
        assert_eq!(o.bytes, 2);
    }
}
