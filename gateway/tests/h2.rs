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

#[tokio::test]
async fn h2_header_limit_gives_431() {
    let up = TestUpstream::start("a", false).await;
    let text = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nmax_header_bytes = 2048\n[upstreams.u]\n{}\n[[routes]]\nupstream = \"u\"\n",
        members(&[&up])
    );
    let gw = TestGateway::start(&text).await;
    let req = http::Request::get(gw.url("web", "/"))
        .header("x-big", "a".repeat(3000))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let res = h2c_client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(up.hits(), 0);
}
