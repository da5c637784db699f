//! End-to-end: HTTP/2 with prior knowledge (h2c) from clients and to upstreams.

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
