//! End-to-end: request and response bodies far larger than any buffer stream through the
//! gateway. Each test makes one side wait for the other mid-body, so a gateway that buffered
//! whole bodies would deadlock and the test would fail at its deadline.

// Upstream and body helpers below are test code outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const MIB: usize = 1024 * 1024;

/// The body bytes at offset `i` (a pattern, so corruption or reordering shows).
fn pattern(offset: usize, len: usize) -> Bytes {
    (offset..offset + len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn checksum(acc: u64, offset: usize, data: &[u8]) -> u64 {
    data.iter().enumerate().fold(acc, |a, (i, b)| {
        a.wrapping_mul(31)
            .wrapping_add(u64::from(*b) ^ ((offset + i) as u64))
    })
}

#[derive(Default)]
struct Seen {
    /// Bytes of the request body received so far.
    received: AtomicU64,
    received_changed: Notify,
    /// Upload requests that arrived.
    uploads: AtomicUsize,
    /// The client received the first part of the download.
    client_has_first_part: Notify,
}

/// An upstream that reads uploads frame by frame (reporting progress) and answers
/// `len checksum`, and serves `/download` as 1 MiB, a pause until the client confirms it got
/// bytes, then `rest` more MiB.
async fn streaming_upstream(rest: usize) -> (SocketAddr, Arc<Seen>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = socket.accept().await.unwrap();
            let seen = Arc::clone(&seen2);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move { Ok::<_, Infallible>(handle(req, seen, rest).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    eprintln!("streaming upstream: {e}");
                }
            });
        }
    });
    (addr, seen)
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Seen>,
    rest: usize,
) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    if req.uri().path() == "/download" {
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
        tokio::spawn(async move {
            tx.send_data(pattern(0, MIB)).await.unwrap();
            // The client must get bytes of this response before the rest exists.
            seen.client_has_first_part.notified().await;
            for i in 0..rest {
                tx.send_data(pattern((i + 1) * MIB, MIB)).await.unwrap();
            }
        });
        return Response::new(body.boxed());
    }
    seen.uploads.fetch_add(1, Ordering::SeqCst);
    let mut body = req.into_body();
    let (mut len, mut sum) = (0usize, 0u64);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Response::new(Full::new(Bytes::from("aborted")).boxed());
        };
        if let Ok(data) = frame.into_data() {
            sum = checksum(sum, len, &data);
            len += data.len();
            seen.received.store(len as u64, Ordering::SeqCst);
            seen.received_changed.notify_waiters();
        }
    }
    Response::new(Full::new(Bytes::from(format!("{len} {sum}"))).boxed())
}

/// `GET /download` through the gateway: the response body, once its head came with 200.
async fn download(gw: &TestGateway) -> Incoming {
    let res = tokio::time::timeout(
        DEADLINE,
        client().get(gw.url("web", "/download").parse().unwrap()),
    )
    .await
    .expect("no response headers")
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body()
}

type ChannelClient = Client<HttpConnector, Channel<Bytes>>;

fn channel_client() -> ChannelClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Waits until the upstream received at least `n` body bytes.
async fn wait_received(seen: &Seen, n: u64) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let changed = seen.received_changed.notified();
            if seen.received.load(Ordering::SeqCst) >= n {
                return;
            }
            changed.await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "upstream never received {n} bytes (has {})",
            seen.received.load(Ordering::SeqCst)
        )
    });
}

async fn send_parts(tx: &mut Sender<Bytes>, from_mib: usize, to_mib: usize) {
    for i in from_mib..to_mib {
        tx.send_data(pattern(i * MIB, MIB)).await.unwrap();
    }
}

fn config(members: &str, listener_extra: &str) -> String {
    format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
max_body_bytes = 67108864
{listener_extra}

[upstreams.up]
{members}
[upstreams.up.retry]
buffer_bytes = 65536

[[routes]]
upstream = "up"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_to_the_upstream_before_it_ends() {
    let (addr, seen) = streaming_upstream(0).await;
    let gw = TestGateway::start(&config(
        &format!("members = [{{ address = \"{addr}\" }}]"),
        "",
    ))
    .await;
    let (mut tx, body) = Channel::<Bytes>::new(2);
    let req = Request::post(gw.url("web", "/upload")).body(body).unwrap();
    let c = channel_client();
    let response = tokio::spawn(async move { c.request(req).await });
    // 1 MiB (16x the retry buffer), no end of body yet: the upstream must already see it.
    send_parts(&mut tx, 0, 1).await;
    wait_received(&seen, MIB as u64).await;
    send_parts(&mut tx, 1, 24).await;
    drop(tx);
    let res = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("no response")
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    let want_sum = (0..24).fold(0, |acc, i| checksum(acc, i * MIB, &pattern(i * MIB, MIB)));
    assert_eq!(text, format!("{} {want_sum}", 24 * MIB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_streams_to_the_client_before_it_ends() {
    let rest = 23;
    let (addr, seen) = streaming_upstream(rest).await;
    let gw = TestGateway::start(&config(
        &format!("members = [{{ address = \"{addr}\" }}]"),
        "",
    ))
    .await;
    let mut body = download(&gw).await;
    let (mut len, mut sum, mut released) = (0usize, 0u64, false);
    loop {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("response body stalled: buffered by the gateway?");
        let Some(frame) = frame else { break };
        if let Ok(data) = frame.unwrap().into_data() {
            sum = checksum(sum, len, &data);
            len += data.len();
        }
        if !released {
            released = true;
            seen.client_has_first_part.notify_one();
        }
    }
    let total = (rest + 1) * MIB;
    let want_sum = (0..=rest).fold(0, |acc, i| checksum(acc, i * MIB, &pattern(i * MIB, MIB)));
    assert_eq!((len, sum), (total, want_sum));
}

/// An upstream that stops sending in the middle of a response (here: after its first MiB)
/// is given up after `read_timeout` without data: the client's response is cut (it never
/// looks complete) and logged as incomplete, rather than hanging for as long as the upstream
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_the_upstream_stops_sending_is_cut_after_read_timeout() {
    let (addr, _seen) = streaming_upstream(23).await;
    let gw = TestGateway::start(&config(
        &format!("members = [{{ address = \"{addr}\" }}]\nread_timeout = \"500ms\""),
        "",
    ))
    .await;
    let mut body = download(&gw).await;
    let mut len = 0;
    // The client never says it got the first part, so the upstream sends nothing more.
    let failed = loop {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("the response hung: no read timeout");
        match frame {
            None => break false,
            Some(Err(_)) => break true,
            Some(Ok(f)) => len += f.into_data().map_or(0, |d| d.len()),
        }
    };
    assert!(failed, "the cut response looked complete ({len} bytes)");
    assert!(len <= MIB, "{len}");
    let line = gw
        .access_lines()
        .into_iter()
        .find(|l| l["path"] == "/download")
        .unwrap();
    assert_eq!(line["complete"], false, "{line}");
    assert_eq!(line["error_origin"], "upstream", "{line}");
    assert_eq!(gw.gw().shared().metrics.timeouts.read.get(), 1);
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("no response data for 500ms"),
        "{line}"
    );
}

/// HTTP/2: a client that stops reading one stream (its flow-control window stays shut, so no
/// socket write ever blocks) is disconnected after `send_timeout`: it cannot hold the
/// upstream response (and the member's connection) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_stops_reading_a_stream_is_closed_after_send_timeout() {
    let (addr, seen) = streaming_upstream(23).await;
    // The upstream sends its 24 MiB without waiting for the client.
    seen.client_has_first_part.notify_one();
    let gw = TestGateway::start(&config(
        &format!("members = [{{ address = \"{addr}\" }}]"),
        "send_timeout = \"500ms\"",
    ))
    .await;
    let res = tokio::time::timeout(
        DEADLINE,
        h2c_client().get(gw.url("web", "/download").parse().unwrap()),
    )
    .await
    .expect("no response headers")
    .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    // The body is not read: the stream's window fills and stays shut.
    let shared = Arc::clone(gw.gw().shared());
    eventually("the gateway closed the connection", || async {
        shared.active_connections() == 0
    })
    .await;
    assert_eq!(shared.metrics.timeouts.send.get(), 1);
    let mut body = res.into_body();
    let ended_early = loop {
        match tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("body hung")
        {
            None => break false,
            Some(Err(_)) => break true,
            Some(Ok(_)) => {}
        }
    };
    assert!(ended_early, "the whole body came through");
    // The access line says the gateway cut the response, and why.
    let mut lines = Vec::new();
    eventually("the access line", || {
        lines = gw.access_lines();
        std::future::ready(!lines.is_empty())
    })
    .await;
    let line = &lines[0];
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["complete"], false, "{line}");
    assert_eq!(
        line["error"], "the client took nothing of the response for send_timeout",
        "{line}"
    );
    assert_eq!(line["error_origin"], "client", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_retried_after_a_failed_connect() {
    // The first member refuses connections: the body was never sent, so the retry to the
    // second member sends all of it.
    let dead = closed_port().await;
    let (addr, seen) = streaming_upstream(0).await;
    let gw = TestGateway::start(&config(
        &format!("members = [{{ address = \"{dead}\" }}, {{ address = \"{addr}\" }}]\nalgorithm = \"round_robin\""),
        "",
    ))
    .await;
    let c = channel_client();
    for round in 0..2 {
        let (mut tx, body) = Channel::<Bytes>::new(2);
        let req = Request::post(gw.url("web", "/upload")).body(body).unwrap();
        let c = c.clone();
        let response = tokio::spawn(async move { c.request(req).await });
        send_parts(&mut tx, 0, 3).await;
        drop(tx);
        let res = tokio::time::timeout(DEADLINE, response)
            .await
            .expect("no response")
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "round {round}");
        let text = res.into_body().collect().await.unwrap().to_bytes();
        let want_sum = (0..3).fold(0, |acc, i| checksum(acc, i * MIB, &pattern(i * MIB, MIB)));
        assert_eq!(text, format!("{} {want_sum}", 3 * MIB), "round {round}");
    }
    assert_eq!(seen.uploads.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_limit_is_cut_and_answered_413() {
    let (addr, seen) = streaming_upstream(0).await;
    let gw = TestGateway::start(
        &config(&format!("members = [{{ address = \"{addr}\" }}]"), "")
            .replace("max_body_bytes = 67108864", "max_body_bytes = 2097152"),
    )
    .await;
    let (mut tx, body) = Channel::<Bytes>::new(2);
    let req = Request::post(gw.url("web", "/upload")).body(body).unwrap();
    let c = channel_client();
    let response = tokio::spawn(async move { c.request(req).await });
    // 2 MiB is allowed and reaches the upstream; the next byte is one too many.
    send_parts(&mut tx, 0, 2).await;
    wait_received(&seen, 2 * MIB as u64).await;
    tx.send_data(Bytes::from_static(b"x")).await.unwrap();
    let res = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("no response")
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The upstream saw its request aborted, never a complete body.
    assert_eq!(seen.received.load(Ordering::SeqCst), 2 * MIB as u64);
    drop(tx);
}
