//! End-to-end: reload under load, refused reloads, graceful shutdown, connection limits.

// Request helpers below are test code outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn config(ups: &[&TestUpstream], version: &str, extra_listener: &str) -> String {
    format!(
        r#"
[global]
drain_timeout = "20s"

[admin]
listen = "127.0.0.1:0"

[listeners.web]
listen = "127.0.0.1:0"
{extra_listener}

[upstreams.api]
{members}

[[routes]]
name = "api"
upstream = "api"
[routes.response_headers]
set = {{ x-config = "{version}" }}
"#,
        members = members(ups)
    )
}

async fn reload(c: &TestClient, gw: &TestGateway) -> (StatusCode, String) {
    let req = Request::post(gw.admin_url("/admin/reload"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (s, _, b) = send(c, req).await;
    (s, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request() {
    let a = TestUpstream::start("a", false).await;
    let b = TestUpstream::start("b", false).await;
    let gw = TestGateway::start(&config(&[&a, &b], "v0", "")).await;
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let url = gw.url("web", "/load");
        let (failures, done) = (Arc::clone(&failures), Arc::clone(&done));
        workers.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..150 {
                let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                match c.request(req).await {
                    Ok(res) if res.status() == StatusCode::OK => {}
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let admin = client();
    for i in 1..=20 {
        // Alternate the member set too: pools and member state carry over.
        let ups: &[&TestUpstream] = if i % 2 == 0 { &[&a, &b] } else { &[&b] };
        gw.rewrite(&config(ups, &format!("v{i}"), ""));
        let (status, body) = reload(&admin, &gw).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 600);
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let (_, headers, _) = get(&client(), &gw.url("web", "/")).await;
    assert_eq!(headers["x-config"], "v20");
    let (_, _, metrics) = get(&admin, &gw.admin_url("/metrics")).await;
    assert!(metrics.contains("lb_gateway_config_reloads_total{result=\"success\"} 20"));
}

#[tokio::test]
async fn a_reload_that_turns_the_access_log_on_starts_its_writer() {
    let a = TestUpstream::start("a", false).await;
    let with_log = |on: bool| {
        config(&[&a], "v1", "").replace("[global]\n", &format!("[global]\naccess_log = {on}\n"))
    };
    let gw = TestGateway::start(&with_log(false)).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("web", "/off")).await.0, StatusCode::OK);
    gw.rewrite(&with_log(true));
    let (status, body) = reload(&c, &gw).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(&c, &gw.url("web", "/on")).await.0, StatusCode::OK);
    // No flush: the line reaches the output through the writer thread the reload started.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = String::from_utf8(gw.access_log.0.lock().unwrap().clone()).unwrap();
        if !text.is_empty() {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access-log line without a flush"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(text.contains("\"/on\""), "{text}");
    assert!(!text.contains("\"/off\""), "{text}");
}

#[tokio::test]
async fn invalid_reload_is_refused_with_every_error_and_old_config_serves() {
    let a = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&[&a], "v1", "")).await;
    let c = client();
    gw.rewrite(&format!(
        "{}\n[upstreams.bad]\nmembers = [{{ address = \"x\", weight = 0 }}]\n[[routes]]\nupstream = \"nope\"\n",
        config(&[&a], "v2", "")
    ));
    let (status, body) = reload(&c, &gw).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let errors: Vec<String> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    for want in [
        "upstreams.bad.members[0].weight: must be > 0",
        "upstreams.bad.members[0].address:",
        "routes[1].upstream: no upstream named `nope`",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "{want} not in {errors:#?}"
        );
    }
    let (status, headers, _) = get(&c, &gw.url("web", "/")).await;
    assert_eq!(
        (status, headers["x-config"].to_str().unwrap()),
        (StatusCode::OK, "v1")
    );
    // Syntax errors too.
    gw.rewrite("[listeners.web\n");
    assert_eq!(reload(&c, &gw).await.0, StatusCode::BAD_REQUEST);
    // Listener address changes need a restart.
    gw.rewrite(&config(&[&a], "v3", "").replace(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"",
        "[listeners.web]\nlisten = \"127.0.0.2:0\"",
    ));
    let (status, body) = reload(&c, &gw).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("listeners.web.listen"), "{body}");
    let (_, _, metrics) = get(&c, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("lb_gateway_config_reloads_total{result=\"failure\"} 3"),
        "{metrics}"
    );
    assert_eq!(get(&c, &gw.url("web", "/")).await.1["x-config"], "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let a = TestUpstream::start("a", false).await;
    let mut gw = TestGateway::start(&config(&[&a], "v1", "")).await;
    let addr = gw.addr("web");
    let admin = client();
    let mut inflight = Vec::new();
    for _ in 0..3 {
        let url = gw.url("web", "/hold");
        inflight.push(tokio::spawn(async move { get(&client(), &url).await }));
    }
    a.wait_held(3).await;
    // An idle keep-alive connection: it must be closed, not waited for.
    let idle = client();
    assert_eq!(get(&idle, &gw.url("web", "/")).await.0, StatusCode::OK);

    let gateway = gw.gw.take().unwrap();
    let shared = Arc::clone(gateway.shared());
    let ready_url = format!("http://{}/health/ready", gateway.admin_addr().unwrap());
    let draining = tokio::spawn(gateway.shutdown());
    eventually("ready turns false", || async {
        get(&admin, &ready_url).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    eventually("new connections refused", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    // Idle keep-alive closed; the three in-flight connections remain.
    eventually("idle connection closed", || async {
        shared.active_connections() == 3
    })
    .await;
    a.state.release.notify_waiters();
    for r in inflight {
        let (status, headers, body) = r.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "a /hold 0"));
        // The connection closes after it, and the response says so.
        assert_eq!(headers["connection"], "close", "{headers:?}");
    }
    let report = draining.await.unwrap();
    assert_eq!(report.remaining_connections, 0);
}

#[tokio::test]
async fn drain_deadline_reports_remaining_connections() {
    let a = TestUpstream::start("a", false).await;
    let mut gw = TestGateway::start(&config(&[&a], "v1", "")).await;
    let url = gw.url("web", "/hold");
    let stuck = tokio::spawn(async move { get(&client(), &url).await });
    a.wait_held(1).await;
    let report = gw
        .gw
        .take()
        .unwrap()
        .drain(std::time::Duration::from_millis(100))
        .await;
    assert_eq!(report.remaining_connections, 1);
    a.state.release.notify_waiters();
    stuck.abort();
}

/// Connections waiting in the kernel's accept queue of the listening socket on 127.0.0.1:`port`
/// (for a socket in LISTEN state, `rx_queue` of /proc/net/tcp is that queue's length).
fn accept_queue(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f[1] == local && f[3] == "0A")
        .map(|f| {
            let rx = f[4].split(':').nth(1).unwrap();
            usize::from_str_radix(rx, 16).unwrap()
        })
        .expect("listening socket not found in /proc/net/tcp")
}

#[tokio::test]
async fn max_connections_holds_back_new_connections() {
    let a = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&[&a], "v1", "max_connections = 1")).await;
    let port = gw.addr("web").port();
    let admin = client();
    let mut first = TcpStream::connect(gw.addr("web")).await.unwrap();
    first
        .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    a.wait_held(1).await;
    assert_eq!(accept_queue(port), 0);
    let mut second = TcpStream::connect(gw.addr("web")).await.unwrap();
    second
        .write_all(b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // The kernel completed the handshake, but the gateway does not accept the connection:
    // it waits in the accept queue. (Without the limit it would be accepted at once and this
    // would time out.)
    eventually("second connection queued", || async {
        accept_queue(port) == 1
    })
    .await;
    // This test runs the gateway on its own single-threaded runtime: by the time an admin
    // round trip is done, the accept loop has had every chance to take the connection.
    let (_, _, body) = get(&admin, &gw.admin_url("/admin/connections")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["active_connections"], 1);
    let (_, _, metrics) = get(&admin, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("lb_gateway_connections_total{listener=\"web\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(accept_queue(port), 1);
    assert_eq!(a.hits(), 1);
    // When the first connection ends, the second is accepted and served.
    a.state.release.notify_waiters();
    let r = read_all(&mut first).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = read_all(&mut second).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(r.split("\r\n\r\n").nth(1), Some("a /second 0"));
    assert_eq!(accept_queue(port), 0);
    assert_eq!(a.hits(), 2);
    let (_, _, metrics) = get(&admin, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("lb_gateway_connections_total{listener=\"web\"} 2\n"),
        "{metrics}"
    );
}

/// A reload that changes a health check: the replaced config's probes stop at once, even while
/// a request still runs on it (its probes would otherwise go on, and flip the shared members'
/// health by the old rules, for as long as that request lasts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_stops_the_replaced_configs_health_probes() {
    let a = TestUpstream::start("a", false).await;
    let probe = |path: &str| {
        format!(
            "[upstreams.api.health_check]\npath = \"{path}\"\ninterval = \"20ms\"\ntimeout = \"1s\"\n"
        )
    };
    let with_probe = |path: &str| {
        config(&[&a], "v1", "").replace("\n[[routes]]", &format!("\n{}\n[[routes]]", probe(path)))
    };
    let gw = TestGateway::start(&with_probe("/old-probe")).await;
    let probes = |path: &str| {
        a.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(uri, _, _)| uri == path)
            .count()
    };
    eventually("the first config probes", || async {
        probes("/old-probe") > 0
    })
    .await;
    // A request on the first config holds it until released.
    let url = gw.url("web", "/hold");
    let held = tokio::spawn(async move { get(&client(), &url).await });
    a.wait_held(1).await;

    gw.rewrite(&with_probe("/new-probe"));
    let c = client();
    assert_eq!(reload(&c, &gw).await.0, StatusCode::OK);
    eventually("the new config probes", || async {
        probes("/new-probe") > 0
    })
    .await;
    // One probe of the old config may have been under way during the reload.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let old = probes("/old-probe");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        probes("/old-probe"),
        old,
        "the replaced config still probes"
    );
    assert!(probes("/new-probe") >= 5, "{}", probes("/new-probe"));

    a.state.release.notify_waiters();
    let (status, _, body) = held.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a /hold 0"));
}

/// `POST /admin/retire-connections`: idle keep-alives close at once, a busy HTTP/1 connection
/// after its response (which says `Connection: close`), an HTTP/2 one after GOAWAY; the
/// gateway goes on accepting and serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_connections_closes_every_connection_and_serves_on() {
    let a = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(&[&a], "v1", "")).await;
    let shared = Arc::clone(gw.gw().shared());
    // An idle HTTP/1 keep-alive connection.
    let mut idle = TcpStream::connect(gw.addr("web")).await.unwrap();
    idle.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut idle, &mut first)
        .await
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // An HTTP/1 connection with a request in flight.
    let mut busy = TcpStream::connect(gw.addr("web")).await.unwrap();
    busy.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    a.wait_held(1).await;
    // An HTTP/2 connection with one request done.
    let tcp = TcpStream::connect(gw.addr("web")).await.unwrap();
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    let res = h2
        .send_request(
            Request::get(gw.url("web", "/h2"))
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    eventually("three connections open", || async {
        shared.active_connections() == 3
    })
    .await;

    let req = Request::post(gw.admin_url("/admin/retire-connections"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "retiring");
    assert_eq!(v["active_connections"], 3);

    // The idle one closes without a word more.
    let mut rest = Vec::new();
    tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut rest),
    )
    .await
    .expect("the idle connection was not closed")
    .unwrap();
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1"));
    // The HTTP/2 one gets GOAWAY and ends.
    tokio::time::timeout(DEADLINE, h2_conn)
        .await
        .expect("the HTTP/2 connection did not end")
        .unwrap()
        .unwrap();
    // The busy one finishes its request, says so, and closes.
    a.state.release.notify_waiters();
    let answer = read_all(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    eventually("every connection closed", || async {
        shared.active_connections() == 0
    })
    .await;
    // New connections are served as before.
    let (status, headers, _) = get(&client(), &gw.url("web", "/after")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-config"], "v1");
}
