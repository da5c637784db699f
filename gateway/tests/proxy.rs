//! End-to-end: routing, actions, rewrites and forwarding headers through a real gateway.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

fn config(up: &TestUpstream) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[listeners.web]
listen = "127.0.0.1:0"

[upstreams.api]
{members}

[[routes]]
name = "api"
upstream = "api"
strip_prefix = true
match = {{ path_prefix = "/api" }}
[routes.request_headers]
set = {{ x-gateway = "yes" }}
remove = ["x-secret"]
[routes.response_headers]
add = {{ x-served-by = "gw" }}
remove = ["x-drop-me"]

[[routes]]
name = "users"
upstream = "api"
rewrite_prefix = "/v2/people"
match = {{ path_prefix = "/users", methods = ["GET"] }}

[[routes]]
name = "old"
match = {{ path_exact = "/old" }}
redirect = {{ location = "https://example.com/new", status = 301 }}

[[routes]]
name = "ping"
match = {{ path_exact = "/ping", hosts = ["ping.example.com"] }}
respond = {{ status = 200, body = "pong", content_type = "text/plain" }}
"#,
        members = members(&[up])
    )
}

#[tokio::test]
async fn forwards_with_rewrites_and_forwarding_headers() {
    let up = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&up)).await;
    let c = client();
    let req = Request::get(gw.url("web", "/api/items?x=1"))
        .header("x-secret", "s")
        .header("x-request-id", "client-id-1")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&c, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "a /items?x=1 0");
    assert_eq!(headers["x-request-id"], "client-id-1");
    assert_eq!(headers["x-served-by"], "gw");
    assert!(headers.get("x-drop-me").is_none());
    assert!(
        headers.get("keep-alive").is_none(),
        "hop-by-hop response header leaked"
    );

    let seen = up.state.seen.lock().unwrap().pop().unwrap();
    let h = seen.1;
    assert_eq!(h["x-gateway"], "yes");
    assert!(h.get("x-secret").is_none());
    assert!(
        h.get("x-hop").is_none(),
        "header named in Connection was forwarded"
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr("web").to_string());
    assert!(
        h["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=127.0.0.1;proto=http")
    );
    assert_eq!(h["x-request-id"], "client-id-1");
    let tp = h["traceparent"].to_str().unwrap();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(!tp.contains("00f067aa0ba902b7"));
    let mut lines = Vec::new();
    eventually("the access-log line", || {
        lines = gw.access_lines();
        std::future::ready(!lines.is_empty())
    })
    .await;
    assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[tokio::test]
async fn generates_request_id_and_traceparent() {
    let up = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&up)).await;
    let (status, headers, _) = get(&client(), &gw.url("web", "/api")).await;
    assert_eq!(status, StatusCode::OK);
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    let seen = up.state.seen.lock().unwrap().pop().unwrap();
    assert_eq!(seen.0, "/");
    assert_eq!(seen.1["x-request-id"], id);
    // A new trace: the access line names the trace the upstream request carried.
    let tp = seen.1["traceparent"].to_str().unwrap().to_owned();
    assert_eq!(tp.len(), 55, "{tp}");
    let mut lines = Vec::new();
    eventually("the access-log line", || {
        lines = gw.access_lines();
        std::future::ready(!lines.is_empty())
    })
    .await;
    assert_eq!(lines[0]["request_id"], id);
    assert_eq!(lines[0]["trace_id"], tp[3..35]);
}

#[tokio::test]
async fn rewrite_redirect_fixed_response_and_no_route() {
    let up = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&up)).await;
    let c = client();
    let (status, _, body) = get(&c, &gw.url("web", "/users/7")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "a /v2/people/7 0")
    );

    // Method condition: POST /users matches no route.
    let post = Request::post(gw.url("web", "/users/7"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, post).await.0, StatusCode::NOT_FOUND);

    let (status, headers, _) = get(&c, &gw.url("web", "/old")).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "https://example.com/new");

    let ping = Request::get(gw.url("web", "/ping"))
        .header("host", "ping.example.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(&c, ping).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "pong"));
    // Wrong host: no route.
    assert_eq!(
        get(&c, &gw.url("web", "/ping")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn post_bodies_are_forwarded() {
    let up = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&up)).await;
    let req = Request::post(gw.url("web", "/api/upload"))
        .body(Full::new(Bytes::from(vec![b'x'; 5000])))
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a /upload 5000"));
}

#[tokio::test]
async fn admin_endpoints() {
    let up = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&up)).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("web", "/api")).await.0, StatusCode::OK);
    assert_eq!(
        get(&c, &gw.admin_url("/health/live")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&c, &gw.admin_url("/health/ready")).await.0,
        StatusCode::OK
    );
    let (status, _, body) = get(&c, &gw.admin_url("/admin/connections")).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["active_connections"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["draining"], false);
    let (_, _, metrics) = get(&c, &gw.admin_url("/metrics")).await;
    for name in [
        "lb_gateway_requests_total{listener=\"web\",method=\"GET\",route=\"api\",status_class=\"2xx\"} 1",
        "lb_gateway_request_duration_seconds_bucket",
        "lb_gateway_active_connections{listener=\"web\"}",
        "lb_gateway_upstream_member_healthy",
        "lb_gateway_upstream_connections_opened_total{upstream=\"api\"} 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    assert_eq!(
        get(&c, &gw.admin_url("/nope")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn access_log_lines_stay_one_valid_json_object_with_hostile_input() {
    let up = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&up)).await;
    // Quotes, backslashes and braces in the path; a tab, quotes, a backslash and bytes that
    // are not UTF-8 in the Host header; a client request id with a quote and a backslash
    // (visible ASCII, so it is kept).
    let request: &[u8] = b"GET /api/x\"y\\z{}?q=1 HTTP/1.1\r\n\
        Host: h\xff\xfe\"o\\st\tx\r\n\
        x-request-id: id\"with\\quote\r\n\
        Connection: close\r\n\r\n";
    let answer = raw(gw.addr("web"), request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A request the router answers itself, with a 404.
    let answer = raw(
        gw.addr("web"),
        b"GET /nothing\\here HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let mut lines = Vec::new();
    eventually("two access-log lines", || {
        lines = gw.access_lines();
        std::future::ready(lines.len() >= 2)
    })
    .await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let proxied = &lines[0];
    assert_eq!(proxied["target"], "access_log");
    assert_eq!(proxied["path"], "/api/x\"y\\z{}");
    assert_eq!(proxied["host"], "h\u{fffd}\u{fffd}\"o\\st\tx");
    assert_eq!(proxied["request_id"], "id\"with\\quote");
    assert_eq!(proxied["status"], 200);
    assert_eq!(proxied["route"], "api");
    assert_eq!(proxied["upstream"], "api");
    assert_eq!(proxied["member"], up.addr.to_string());
    assert_eq!(proxied["attempts"], 1);
    assert_eq!(proxied["complete"], true);
    assert_eq!(proxied["protocol"], "HTTP/1.1");
    assert_eq!(proxied["method"], "GET");
    let unrouted = &lines[1];
    assert_eq!(unrouted["path"], "/nothing\\here");
    assert_eq!(unrouted["status"], 404);
    assert_eq!(unrouted["error_origin"], "client");
    assert_eq!(unrouted["request_id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn a_request_without_host_reaches_the_member_with_its_address_as_host() {
    // HTTP/1.0 allows a request without `Host`: the upstream request (own HTTP/1.1 client,
    // body in memory) then names the member, as hyper's client would.
    let up = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&up)).await;
    let answer = raw(gw.addr("web"), b"GET /api/nohost HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let seen = up.state.seen.lock().unwrap().pop().unwrap();
    assert_eq!(seen.0, "/nohost");
    let hosts: Vec<_> = seen.1.get_all("host").iter().collect();
    assert_eq!(hosts, [up.addr.to_string().as_str()]);
    assert!(seen.1.get("x-forwarded-host").is_none());
}

/// A request whose client goes away before the response (HTTP/1: the connection closes;
/// HTTP/2: the stream is reset) is still counted and logged, as NGINX's 499.
#[tokio::test]
async fn a_request_its_client_abandons_is_counted_and_logged_as_499() {
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&up)).await;
    let find = |path: &'static str| {
        let gw = &gw;
        async move {
            let mut line = None;
            eventually(&format!("the access line of {path}"), || {
                line = gw.access_lines().into_iter().find(|l| l["path"] == path);
                std::future::ready(line.is_some())
            })
            .await;
            line.unwrap()
        }
    };
    // HTTP/1.1: the client closes its connection while the member holds the request.
    let mut s = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    s.write_all(b"GET /api/hold1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    up.wait_held(1).await;
    drop(s);
    let line = find("/api/hold1").await;
    // HTTP/2: the client resets the stream (hyper's client does when the response future is
    // dropped).
    let c = h2c_client();
    let pending = tokio::spawn({
        let url = gw.url("web", "/api/hold2");
        async move { get(&c, &url).await }
    });
    up.wait_held(2).await;
    pending.abort();
    let line2 = find("/api/hold2").await;
    for (l, protocol) in [(&line, "HTTP/1.1"), (&line2, "HTTP/2.0")] {
        assert_eq!(l["status"], 499, "{l}");
        assert_eq!(l["protocol"], protocol, "{l}");
        assert_eq!(l["complete"], false, "{l}");
        assert_eq!(l["bytes_sent"], 0, "{l}");
        assert!(l["ttfb_ms"].is_null(), "{l}");
        assert_eq!(l["route"], "api", "{l}");
        assert_eq!(l["upstream"], "api", "{l}");
        assert_eq!(
            l["error"], "the client went away before the response",
            "{l}"
        );
        assert_eq!(l["error_origin"], "client", "{l}");
    }
    let (_, _, metrics) = get(&client(), &gw.admin_url("/metrics")).await;
    let want = "lb_gateway_requests_total{listener=\"web\",method=\"GET\",route=\"api\",status_class=\"4xx\"} 2";
    assert!(metrics.contains(want), "missing {want} in\n{metrics}");
    assert!(
        metrics.contains("lb_gateway_in_flight_requests 0"),
        "{metrics}"
    );
    up.state.release.notify_waiters();
}
