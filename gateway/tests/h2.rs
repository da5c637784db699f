//! End-to-end: HTTP/2 with prior knowledge (h2c) from clients and to upstreams.

// The helpers below are test code outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::{StatusCode, Version};

#[tokio::test]
async fn h2c_clients_and_h2c_upstreams() {
    let h1 = TestUpstream::start("h1", false).await;
    let h2 = TestUpstream::start("h2", true).await;
    let text = format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"

[upstreams.one]
{m1}

[upstreams.two]
protocol = "h2c"
{m2}

[[routes]]
upstream = "one"
match = {{ path_prefix = "/one" }}

[[routes]]
upstream = "two"
match = {{ path_prefix = "/two" }}
"#,
        m1 = members(&[&h1]),
        m2 = members(&[&h2])
    );
    let gw = TestGateway::start(&text).await;
    let c = h2c_client();
    for (path, want) in [("/one/x", "h1 /one/x 0"), ("/two/y", "h2 /two/y 0")] {
        let res = c
            .request(
                http::Request::get(gw.url("web", path))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.version(), Version::HTTP_2);
        assert_eq!(res.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, want);
    }
    // HTTP/1.1 clients reach the h2c upstream too.
    let (status, _, body) = get(&client(), &gw.url("web", "/two/z")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "h2 /two/z 0"));
    let seen = h2.state.seen.lock().unwrap();
    assert!(
        seen.iter()
            .all(|(_, h, _)| h.contains_key("x-forwarded-for"))
    );
}

/// The size HTTP/2 gives a header list (RFC 9113 §6.5.2): name + value + 32 per field,
/// pseudo-header fields included.
fn h2_list_size(fields: &[(&str, &str)]) -> usize {
    fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum()
}

#[tokio::test]
async fn h2_header_limit_gives_431() {
    let up = TestUpstream::start("a", false).await;
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[listeners.web]\nlisten = \"127.0.0.1:0\"\nmax_header_bytes = 2048\n[upstreams.u]\n{}\n[[routes]]\nupstream = \"u\"\n",
        members(&[&up])
    );
    let gw = TestGateway::start(&text).await;
    let authority = gw.addr("web").to_string();
    // The request's header list without x-big; the client sends exactly these fields.
    let base = h2_list_size(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", &authority),
        (":path", "/"),
    ]);
    // x-big's value length that brings the list to exactly `size`.
    let value_len = |size: usize| size - base - "x-big".len() - 32;
    let c = h2c_client();
    let send = |len: usize| {
        let req = http::Request::get(gw.url("web", "/"))
            .header("x-big", "a".repeat(len))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let c = c.clone();
        async move {
            let res = tokio::time::timeout(DEADLINE, c.request(req))
                .await
                .expect("timed out")
                .expect("request failed");
            assert_eq!(res.version(), Version::HTTP_2);
            (res.status(), res.headers().clone())
        }
    };
    // One byte under the limit passes; at the limit the HTTP/2 layer answers 431 before the
    // request reaches routing (so no request id), and the upstream never sees it.
    let (status, headers) = send(value_len(2047)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(up.hits(), 1);
    let (status, headers) = send(value_len(2048)).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(!headers.contains_key("x-request-id"));
    let (status, _) = send(value_len(2048) + 1000).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(up.hits(), 1);
    // Only the stream was refused: the same connection goes on serving.
    let (status, _) = send(10).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.hits(), 2);
    let (_, _, metrics) = get(&client(), &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("lb_gateway_connections_total{listener=\"web\"} 1\n"),
        "{metrics}"
    );
}

/// `body_timeout` over HTTP/2: a stream whose body stops coming gets 408 (only that stream;
/// the connection goes on).
#[tokio::test]
async fn h2_a_stalled_request_body_gets_408() {
    use http_body_util::BodyExt;
    let up = TestUpstream::start("a", false).await;
    let text = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nbody_timeout = \"300ms\"\n[upstreams.u]\n{}\n[[routes]]\nupstream = \"u\"\n",
        members(&[&up])
    );
    let gw = TestGateway::start(&text).await;
    let c: hyper_util::client::legacy::Client<_, http_body_util::channel::Channel<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes>::new(1);
    let req = http::Request::post(gw.url("web", "/upload"))
        .body(body)
        .unwrap();
    let pending = tokio::spawn({
        let c = c.clone();
        async move { c.request(req).await }
    });
    tx.send_data(bytes::Bytes::from_static(b"part"))
        .await
        .unwrap();
    // ... and nothing more, without ending the stream.
    let res = tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("no answer to the stalled stream")
        .unwrap()
        .unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"Request Timeout\n");
    assert_eq!(up.hits(), 0);
    drop(tx);
    // Another stream on the same client works.
    let (empty_tx, body) = http_body_util::channel::Channel::<bytes::Bytes>::new(1);
    drop(empty_tx);
    let req = http::Request::get(gw.url("web", "/after"))
        .body(body)
        .unwrap();
    let res = tokio::time::timeout(DEADLINE, c.request(req))
        .await
        .expect("timed out")
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// `max_requests_per_connection` over HTTP/2: a client that heeds GOAWAY gets exactly that
/// many streams on a connection, which then ends.
#[tokio::test]
async fn h2_a_connection_ends_with_goaway_after_max_requests() {
    let up = TestUpstream::start("a", false).await;
    let text = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nmax_requests_per_connection = 5\n[upstreams.u]\n{}\n[[routes]]\nupstream = \"u\"\n",
        members(&[&up])
    );
    let gw = TestGateway::start(&text).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    for i in 0..5 {
        let req = http::Request::get(gw.url("web", &format!("/r{i}")))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = tokio::time::timeout(DEADLINE, sender.send_request(req))
            .await
            .expect("timed out")
            .expect("request failed");
        assert_eq!(res.status(), StatusCode::OK);
    }
    // The connection ends (GOAWAY, then close) without the client doing anything.
    tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("the connection did not end after its last request")
        .unwrap()
        .unwrap();
    let req = http::Request::get(gw.url("web", "/late"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert!(sender.send_request(req).await.is_err());
    assert_eq!(up.hits(), 5);
}

/// Raw HTTP/2 frames, for clients that misbehave on purpose.
mod frames {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap();
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The client preface and an empty SETTINGS frame.
    pub fn preface() -> Vec<u8> {
        let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        b.extend(frame(SETTINGS, 0, 0, &[]));
        b
    }

    /// A complete `GET` of `path` on `stream` (HPACK: static-table method and scheme,
    /// literal path and authority, never indexed).
    pub fn get(stream: u32, path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 0x01, b'x']);
        frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
    }

    /// RST_STREAM with CANCEL.
    pub fn cancel(stream: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())
    }

    /// One frame from the server: (type, flags, stream, payload), or None at the end of the
    /// connection.
    pub async fn read(s: &mut OwnedReadHalf) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], stream, payload))
    }

    pub async fn send(s: &mut OwnedWriteHalf, bytes: &[u8]) -> bool {
        s.write_all(bytes).await.is_ok()
    }
}

/// What the gateway did with a misbehaving HTTP/2 client.
#[derive(Debug, Default, Clone)]
struct H2Outcome {
    max_concurrent_streams: Option<u32>,
    goaway: bool,
    responses: usize,
    closed: bool,
    deadline_passed: bool,
}

/// Opens `batches` x `per_batch` streams on the listener `web`, never answering the
/// gateway's PINGs nor heeding its GOAWAY: each batch once the previous one's responses came
/// or, with `reset`, the batch's streams `/hold` cancelled as soon as `up` holds them (rapid
/// reset against a slow member: each stream it opens costs the member work). Returns once the
/// gateway closed the connection, or at the deadline.
async fn misbehave(
    gw: &TestGateway,
    up: &TestUpstream,
    batches: u32,
    per_batch: u32,
    reset: bool,
) -> H2Outcome {
    use std::sync::{Arc, Mutex};
    let s = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let out = Arc::new(Mutex::new(H2Outcome::default()));
    let reader = tokio::spawn({
        let out = Arc::clone(&out);
        async move {
            while let Some((kind, flags, _, payload)) = frames::read(&mut rd).await {
                let mut o = out.lock().unwrap();
                match kind {
                    frames::SETTINGS if flags & 1 == 0 => {
                        for p in payload.chunks_exact(6) {
                            if u16::from_be_bytes([p[0], p[1]]) == 0x3 {
                                o.max_concurrent_streams =
                                    Some(u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                            }
                        }
                    }
                    frames::GOAWAY => o.goaway = true,
                    frames::HEADERS | frames::DATA if flags & frames::END_STREAM != 0 => {
                        o.responses += 1;
                    }
                    _ => {}
                }
            }
            out.lock().unwrap().closed = true;
        }
    });
    let snapshot = || out.lock().unwrap().clone();
    let run = async {
        if !frames::send(&mut wr, &frames::preface()).await {
            return;
        }
        let mut next = 1u32;
        for _ in 0..batches {
            let mut batch = Vec::new();
            let mut resets = Vec::new();
            for _ in 0..per_batch {
                batch.extend(frames::get(next, if reset { "/hold" } else { "/" }));
                resets.extend(frames::cancel(next));
                next += 2;
            }
            let want = snapshot().responses + per_batch as usize;
            if !frames::send(&mut wr, &batch).await {
                return;
            }
            if reset {
                // Once the member has them (a stream reset before the gateway took it up
                // counts toward the `h2` crate's own limit of 20 instead).
                let held =
                    up.state.held.load(std::sync::atomic::Ordering::SeqCst) + per_batch as usize;
                while up.state.held.load(std::sync::atomic::Ordering::SeqCst) < held
                    && !snapshot().closed
                {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                if !frames::send(&mut wr, &resets).await {
                    return;
                }
            }
            loop {
                let o = snapshot();
                if o.closed || reset || o.responses >= want {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            if snapshot().closed {
                return;
            }
        }
    };
    // At the deadline the outcome says what happened so far (`closed` false).
    let finished = tokio::time::timeout(DEADLINE, async {
        run.await;
        reader.await.is_ok()
    })
    .await;
    out.lock().unwrap().deadline_passed = finished.is_err();
    snapshot()
}

/// A client that ignores GOAWAY and goes on opening streams is cut off after
/// `max_requests_per_connection` + `max_concurrent_streams` of them; one that resets every
/// stream it opens (rapid reset, CVE-2023-44487) too. The gateway advertises its
/// `max_concurrent_streams` and serves on.
#[tokio::test]
async fn h2_clients_that_ignore_goaway_or_reset_every_stream_are_cut_off() {
    let up = TestUpstream::start("a", false).await;
    let text = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nmax_requests_per_connection = 50\nmax_concurrent_streams = 16\n[upstreams.u]\n{}\n[[routes]]\nupstream = \"u\"\n",
        members(&[&up])
    );
    let gw = TestGateway::start(&text).await;
    // 300 streams, 10 at a time, each batch answered before the next.
    let o = misbehave(&gw, &up, 30, 10, false).await;
    assert_eq!(o.max_concurrent_streams, Some(16), "{o:?}");
    assert!(o.goaway, "no GOAWAY: {o:?}");
    assert!(o.closed, "the connection was not closed: {o:?}");
    assert!(
        (50..=66).contains(&up.hits()),
        "{} requests reached the upstream: {o:?}",
        up.hits()
    );
    // 2,000 streams, each cancelled right after it was opened.
    let before = up.hits();
    let o = misbehave(&gw, &up, 200, 10, true).await;
    up.state.release.notify_waiters();
    assert!(o.goaway, "no GOAWAY: {o:?}");
    assert!(o.closed, "the connection was not closed: {o:?}");
    let reached = up.hits() - before;
    assert!(
        reached <= 66,
        "{reached} reset requests reached the upstream: {o:?}"
    );
    // Other clients are served.
    let (status, _, _) = get(&h2c_client(), &gw.url("web", "/after")).await;
    assert_eq!(status, StatusCode::OK);
}
