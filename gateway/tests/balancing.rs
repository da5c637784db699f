//! End-to-end: balancing algorithms, health checks, outlier ejection, retries and their
//! budget, timeouts, connection reuse, the admin view of the pools.

// Request helpers below are test code outside #[test] functions.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

fn config(upstream_extra: &str, ups: &[&TestUpstream]) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[listeners.web]
listen = "127.0.0.1:0"

[upstreams.pool]
{members}
{upstream_extra}

[[routes]]
upstream = "pool"
"#,
        members = members(ups)
    )
}

async fn three() -> (TestUpstream, TestUpstream, TestUpstream) {
    (
        TestUpstream::start("a", false).await,
        TestUpstream::start("b", false).await,
        TestUpstream::start("c", false).await,
    )
}

async fn tally(
    gw: &TestGateway,
    n: usize,
    header: Option<(&str, String)>,
) -> HashMap<String, usize> {
    let c = client();
    let mut out = HashMap::new();
    for i in 0..n {
        let mut req = Request::get(gw.url("web", "/x"));
        if let Some((name, value)) = &header {
            req = req.header(
                *name,
                format!(
                    "{value}{}",
                    if value.is_empty() {
                        i.to_string()
                    } else {
                        String::new()
                    }
                ),
            );
        }
        let (status, headers, _) = send(&c, req.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        *out.entry(headers["x-upstream"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let (a, b, c) = three().await;
    let gw = TestGateway::start(&config("algorithm = \"round_robin\"", &[&a, &b, &c])).await;
    let t = tally(&gw, 30, None).await;
    assert_eq!((t["a"], t["b"], t["c"]), (10, 10, 10), "{t:?}");
}

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let (a, b, _) = three().await;
    let text = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\n[upstreams.pool]\nalgorithm = \"weighted_round_robin\"\n\
         members = [{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\", weight = 1 }}]\n[[routes]]\nupstream = \"pool\"\n",
        a.addr, b.addr
    );
    let gw = TestGateway::start(&text).await;
    let t = tally(&gw, 40, None).await;
    assert_eq!((t["a"], t["b"]), (30, 10), "{t:?}");
}

#[tokio::test]
async fn least_connections_avoids_busy_members() {
    let (a, b, _) = three().await;
    let gw = TestGateway::start(&config("algorithm = \"least_connections\"", &[&a, &b])).await;
    // Pin one request on whichever member takes it, then all others go to the idle one.
    let url = gw.url("web", "/hold");
    let held = tokio::spawn(async move { get(&client(), &url).await });
    eventually("a request is held", || async {
        a.state.held.load(std::sync::atomic::Ordering::SeqCst)
            + b.state.held.load(std::sync::atomic::Ordering::SeqCst)
            == 1
    })
    .await;
    let busy = if a.state.held.load(std::sync::atomic::Ordering::SeqCst) == 1 {
        "a"
    } else {
        "b"
    };
    let t = tally(&gw, 10, None).await;
    assert_eq!(t.get(busy), None, "{t:?}");
    a.state.release.notify_waiters();
    b.state.release.notify_waiters();
    assert_eq!(held.await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn p2c_ewma_uses_every_fast_member() {
    let (a, b, c) = three().await;
    let gw = TestGateway::start(&config("algorithm = \"p2c_ewma\"", &[&a, &b, &c])).await;
    let t = tally(&gw, 60, None).await;
    assert_eq!(t.values().sum::<usize>(), 60);
    assert!(t.len() >= 2, "{t:?}");
}

#[tokio::test]
async fn consistent_hash_by_header_is_sticky() {
    let (a, b, c) = three().await;
    let gw = TestGateway::start(&config(
        "algorithm = \"consistent_hash\"\nhash = { source = \"header\", name = \"x-user\" }",
        &[&a, &b, &c],
    ))
    .await;
    for user in ["alice", "bob", "carol", "dave"] {
        let t = tally(&gw, 8, Some(("x-user", user.to_string()))).await;
        assert_eq!(t.len(), 1, "user {user} spread over {t:?}");
    }
    // Distinct keys spread over members.
    let t = tally(&gw, 60, Some(("x-user", String::new()))).await;
    assert_eq!(t.len(), 3, "{t:?}");
}

#[tokio::test]
async fn consistent_hash_by_cookie_is_sticky() {
    let (a, b, c) = three().await;
    let gw = TestGateway::start(&config(
        "algorithm = \"consistent_hash\"\nhash = { source = \"cookie\", name = \"sid\" }",
        &[&a, &b, &c],
    ))
    .await;
    let t = tally(&gw, 10, Some(("cookie", "theme=dark; sid=42".to_string()))).await;
    assert_eq!(t.len(), 1, "{t:?}");
}

/// A gateway over `a` and `b` (round robin, no retries) where `a` answers 500 and has been
/// ejected for `base_ejection` by outlier detection (two failures in a row).
async fn with_a_ejected(a: &TestUpstream, b: &TestUpstream, base_ejection: &str) -> TestGateway {
    let gw = TestGateway::start(&config(
        &format!(
            "[upstreams.pool.outlier]\nconsecutive_failures = 2\nbase_ejection = \"{base_ejection}\"\n\
             max_ejected_percent = 50\n[upstreams.pool.retry]\nmax_retries = 0"
        ),
        &[a, b],
    ))
    .await;
    a.set_status(500);
    let c = client();
    // Round robin: `a` fails twice within the first four requests and is ejected.
    for _ in 0..4 {
        get(&c, &gw.url("web", "/x")).await;
    }
    gw
}

#[tokio::test]
async fn outlier_detection_ejects_and_returns() {
    let (a, b, _) = three().await;
    let gw = with_a_ejected(&a, &b, "2s").await;
    let c = client();
    let before = a.hits();
    let t = tally(&gw, 10, None).await;
    assert_eq!(t.get("a"), None, "ejected member got traffic: {t:?}");
    assert_eq!(a.hits(), before);
    // Healthy again: after the back-off it takes traffic again.
    a.set_status(0);
    eventually("ejected member returns", || async {
        get(&c, &gw.url("web", "/x")).await.1["x-upstream"] == "a"
    })
    .await;
    let (_, _, metrics) = get(&c, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("lb_gateway_upstream_ejections_total{member="),
        "{metrics}"
    );
}

#[tokio::test]
async fn active_health_checks_take_members_out_and_back() {
    let (a, b, _) = three().await;
    let gw = TestGateway::start(&config(
        "[upstreams.pool.health_check]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2",
        &[&a, &b],
    ))
    .await;
    a.state
        .health_status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let c = client();
    let metrics_url = gw.admin_url("/metrics");
    let down = format!(
        "lb_gateway_upstream_member_healthy{{member=\"{}\",upstream=\"pool\"}} 0",
        a.addr
    );
    eventually("a marked down", || async {
        get(&c, &metrics_url).await.2.contains(&down)
    })
    .await;
    let t = tally(&gw, 10, None).await;
    assert_eq!(t.get("a"), None, "{t:?}");
    a.state
        .health_status
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let up = format!(
        "lb_gateway_upstream_member_healthy{{member=\"{}\",upstream=\"pool\"}} 1",
        a.addr
    );
    eventually("a back up", || async {
        get(&c, &metrics_url).await.2.contains(&up)
    })
    .await;
    let t = tally(&gw, 10, None).await;
    assert_eq!(t["a"], 5, "{t:?}");
}

#[tokio::test]
async fn tcp_health_check_marks_a_dead_member_down() {
    let a = TestUpstream::start("a", false).await;
    let dead = closed_port().await;
    let text = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\n[upstreams.pool]\nmembers = [{{ address = \"{}\" }}, {{ address = \"{dead}\" }}]\n\
         [upstreams.pool.health_check]\nkind = \"tcp\"\ninterval = \"50ms\"\nfall = 1\n[upstreams.pool.retry]\nmax_retries = 0\n[[routes]]\nupstream = \"pool\"\n",
        a.addr
    );
    let gw = TestGateway::start(&text).await;
    let shared = std::sync::Arc::clone(gw.gw().shared());
    eventually("dead member marked down", || {
        let s = std::sync::Arc::clone(&shared);
        async move { !s.snapshot.load().upstreams["pool"].members[1].healthy() }
    })
    .await;
    let t = tally(&gw, 6, None).await;
    assert_eq!(t["a"], 6);
}

#[tokio::test]
async fn idempotent_requests_are_retried_on_another_member() {
    let (a, b, _) = three().await;
    let gw = TestGateway::start(&config(
        "[upstreams.pool.outlier]\nconsecutive_failures = 0",
        &[&a, &b],
    ))
    .await;
    a.set_status(503);
    let c = client();
    for _ in 0..6 {
        let (status, headers, _) = get(&c, &gw.url("web", "/x")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-upstream"], "b");
    }
    // POST reached `a`: not retried, the 503 goes back to the client.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = Request::post(gw.url("web", "/x"))
            .body(Full::new(Bytes::from("p")))
            .unwrap();
        statuses.push(send(&c, req).await.0);
    }
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    let (_, _, metrics) = get(&c, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(
            "lb_gateway_upstream_retries_total{decision=\"attempted\",upstream=\"pool\"}"
        )
    );
}

#[tokio::test]
async fn connect_failures_are_retried_even_for_post() {
    let a = TestUpstream::start("a", false).await;
    let dead = closed_port().await;
    let text = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\n[upstreams.pool]\nmembers = [{{ address = \"{dead}\" }}, {{ address = \"{}\" }}]\n\
         [upstreams.pool.outlier]\nconsecutive_failures = 0\n[[routes]]\nupstream = \"pool\"\n",
        a.addr
    );
    let gw = TestGateway::start(&text).await;
    let c = client();
    for _ in 0..6 {
        let req = Request::post(gw.url("web", "/x"))
            .body(Full::new(Bytes::from("p")))
            .unwrap();
        let (status, _, body) = send(&c, req).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "a /x 1"));
    }
    assert_eq!(a.hits(), 6);
}

#[tokio::test]
async fn retry_budget_stops_retries_during_an_outage() {
    let (a, b, _) = three().await;
    let gw = TestGateway::start(&config(
        "[upstreams.pool.outlier]\nconsecutive_failures = 0\n[upstreams.pool.retry]\nmax_retries = 3\nbudget_percent = 20\nbudget_min_per_second = 0",
        &[&a, &b],
    ))
    .await;
    a.set_status(503);
    b.set_status(503);
    let c = client();
    let n = 50;
    for _ in 0..n {
        assert_eq!(
            get(&c, &gw.url("web", "/x")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let attempts = a.hits() + b.hits();
    // Without a budget this would be 4 x 50 = 200 attempts.
    assert!(
        attempts <= n + n / 5,
        "{attempts} attempts for {n} requests"
    );
    let (_, _, metrics) = get(&c, &gw.admin_url("/metrics")).await;
    assert!(metrics.contains("decision=\"budget_exhausted\""));
}

#[tokio::test]
async fn try_timeout_gives_504() {
    let a = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config(
        "try_timeout = \"200ms\"\ntimeout = \"5s\"\n[upstreams.pool.outlier]\nconsecutive_failures = 0\n[upstreams.pool.retry]\nmax_retries = 0",
        &[&a],
    ))
    .await;
    let (status, _, _) = get(&client(), &gw.url("web", "/hold")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    a.state.release.notify_waiters();
}

#[tokio::test]
async fn overall_timeout_bounds_all_tries() {
    let a = TestUpstream::start("a", false).await;
    let b = TestUpstream::start("b", false).await;
    let gw = TestGateway::start(&config(
        "try_timeout = \"150ms\"\ntimeout = \"300ms\"\n[upstreams.pool.outlier]\nconsecutive_failures = 0\n[upstreams.pool.retry]\nmax_retries = 5\nbudget_min_per_second = 100",
        &[&a, &b],
    ))
    .await;
    let (status, _, _) = get(&client(), &gw.url("web", "/hold")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    // At most 300ms / 150ms = 2 full tries (plus one cut short).
    let held = a.state.held.load(std::sync::atomic::Ordering::SeqCst)
        + b.state.held.load(std::sync::atomic::Ordering::SeqCst);
    assert!(held <= 3, "{held}");
    a.state.release.notify_waiters();
    b.state.release.notify_waiters();
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let a = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config("", &[&a])).await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, &gw.url("web", "/x")).await.0, StatusCode::OK);
    }
    let (_, _, metrics) = get(&c, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("lb_gateway_upstream_connections_opened_total{upstream=\"pool\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lb_gateway_upstream_pool_reused_requests_total{upstream=\"pool\"} 9"),
        "{metrics}"
    );
}

#[tokio::test]
async fn no_available_member_is_503() {
    let a = TestUpstream::start("a", false).await;
    let gw = TestGateway::start(&config("", &[&a])).await;
    gw.gw().shared().snapshot.load().upstreams["pool"].members[0].set_healthy(false);
    assert_eq!(
        get(&client(), &gw.url("web", "/x")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// An upstream that answers one keep-alive response per connection and then closes it, so
/// every pooled connection is dead by the time the next request wants it.
async fn one_shot_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                // Then the socket is dropped: closed after one response.
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap_or_default();
            });
        }
    });
    addr
}

#[tokio::test]
async fn pooled_connections_closed_by_the_member_are_not_used() {
    let addr = one_shot_upstream().await;
    let cfg = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[listeners.web]
listen = "127.0.0.1:0"

[upstreams.pool]
members = [{{ address = "{addr}" }}]

[[routes]]
upstream = "pool"
"#
    );
    let gw = TestGateway::start(&cfg).await;
    let c = client();
    for _ in 0..5 {
        let (status, _, body) = get(&c, &gw.url("web", "/x")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok");
    }
    let (_, _, metrics) = get(&c, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("lb_gateway_upstream_connections_opened_total{upstream=\"pool\"} 5"),
        "{metrics}"
    );
}

/// `GET /admin/upstreams` shows each member as the balancer sees it: an ejected member with
/// the time it stays out, a serving one with its latency and idle connections.
#[tokio::test]
async fn admin_upstreams_shows_each_members_state() {
    let (a, b, _) = three().await;
    let gw = with_a_ejected(&a, &b, "30s").await;
    let c = client();
    get(&c, &gw.url("web", "/x")).await;
    let (status, headers, body) = get(&c, &gw.admin_url("/admin/upstreams")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pool = &v["upstreams"]["pool"];
    assert_eq!(pool["algorithm"], "round_robin", "{body}");
    assert_eq!(pool["protocol"], "http1", "{body}");
    let members = pool["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{body}");
    let member = |up: &TestUpstream| {
        members
            .iter()
            .find(|m| m["address"] == up.addr.to_string())
            .unwrap()
            .clone()
    };
    let ejected = member(&a);
    assert_eq!(ejected["available"], false, "{body}");
    assert_eq!(ejected["healthy"], true, "{body}");
    let left = ejected["ejected_for_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 30_000, "{body}");
    let serving = member(&b);
    assert_eq!(serving["available"], true, "{body}");
    assert_eq!(serving["ejected_for_ms"], serde_json::Value::Null, "{body}");
    assert_eq!(serving["consecutive_failures"], 0, "{body}");
    assert_eq!(serving["in_flight"], 0, "{body}");
    assert_eq!(serving["weight"], 1, "{body}");
    assert!(serving["latency_ewma_ms"].as_f64().unwrap() > 0.0, "{body}");
    assert!(serving["idle_connections"].as_u64().unwrap() >= 1, "{body}");

    let req = Request::post(gw.admin_url("/admin/upstreams"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, req).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

/// `max_requests_per_member` (circuit breaking): a member at its limit takes no more
/// requests; when every available member is at it, the request gets 503 at once (counted,
/// and said in the access log) instead of piling up on slow members.
#[tokio::test]
async fn members_at_max_requests_take_no_more_and_the_overflow_is_503() {
    use std::sync::atomic::Ordering::SeqCst;
    let (a, b, _) = three().await;
    let gw = TestGateway::start(&config("max_requests_per_member = 1", &[&a, &b])).await;
    let hold = |path: &str| {
        let url = gw.url("web", path);
        tokio::spawn(async move { get(&client(), &url).await })
    };
    // Two held requests: one on each member (whichever the first went to is full).
    let first = hold("/hold1");
    eventually("the first request is held", || async {
        a.state.held.load(SeqCst) + b.state.held.load(SeqCst) == 1
    })
    .await;
    let second = hold("/hold2");
    eventually("both members hold one", || async {
        a.state.held.load(SeqCst) == 1 && b.state.held.load(SeqCst) == 1
    })
    .await;
    // Both full: refused at once, and the members never see it.
    let (status, _, _) = get(&client(), &gw.url("web", "/third")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.hits() + b.hits(), 2);
    let (_, _, metrics) = get(&client(), &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("lb_gateway_upstream_overflow_total{upstream=\"pool\"} 1"),
        "{metrics}"
    );
    let line = gw
        .access_lines()
        .into_iter()
        .find(|l| l["path"] == "/third")
        .unwrap();
    assert_eq!(line["status"], 503);
    assert_eq!(
        line["error"],
        "upstream `pool`: every available member has 1 requests in flight (max_requests_per_member)"
    );
    // Once they finish, requests flow again.
    a.state.release.notify_waiters();
    b.state.release.notify_waiters();
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    assert_eq!(second.await.unwrap().0, StatusCode::OK);
    let t = tally(&gw, 4, None).await;
    assert_eq!(t.values().sum::<usize>(), 4, "{t:?}");
}

/// `queue_timeout`: with every member at `max_requests_per_member`, a request waits for a
/// slot and is served as soon as one frees (woken, not at the end of its wait), or gets 503
/// when none frees in time.
#[tokio::test]
async fn a_full_pool_queues_requests_for_queue_timeout() {
    use std::sync::atomic::Ordering::SeqCst;
    let a = TestUpstream::start("a", false).await;
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[listeners.web]
listen = "127.0.0.1:0"

[upstreams.long]
{members}
max_requests_per_member = 1
queue_timeout = "20s"

[upstreams.short]
{members}
max_requests_per_member = 1
queue_timeout = "600ms"

[[routes]]
upstream = "long"
strip_prefix = true
match = {{ path_prefix = "/long" }}

[[routes]]
upstream = "short"
strip_prefix = true
match = {{ path_prefix = "/short" }}
"#,
        members = members(&[&a])
    );
    let gw = TestGateway::start(&text).await;
    let spawn_get = |path: &str| {
        let url = gw.url("web", path);
        tokio::spawn(async move { get(&client(), &url).await })
    };
    // A slot frees while the request waits: it is served then, long before its 20 s wait
    // would end.
    let held = spawn_get("/long/hold1");
    a.wait_held(1).await;
    let queued = spawn_get("/long/queued");
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert!(!queued.is_finished(), "the queued request did not wait");
    assert_eq!(a.hits(), 1, "the queued request reached the member early");
    a.state.release.notify_waiters();
    assert_eq!(held.await.unwrap().0, StatusCode::OK);
    let (status, _, body) = tokio::time::timeout(std::time::Duration::from_secs(10), queued)
        .await
        .expect("the queued request was not woken when the slot freed")
        .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a /queued 0"));
    // No slot frees in time: 503 after the queue timeout, counted.
    let held = spawn_get("/short/hold2");
    eventually("the second held request", || async {
        a.state.held.load(SeqCst) == 2
    })
    .await;
    let started = std::time::Instant::now();
    let (status, _, _) = get(&client(), &gw.url("web", "/short/late")).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        waited >= std::time::Duration::from_millis(550),
        "answered after {waited:?}, before the queue timeout"
    );
    let (_, _, metrics) = get(&client(), &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("lb_gateway_upstream_overflow_total{upstream=\"short\"} 1"),
        "{metrics}"
    );
    a.state.release.notify_waiters();
    assert_eq!(held.await.unwrap().0, StatusCode::OK);
}
