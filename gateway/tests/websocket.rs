//! End-to-end: WebSocket upgrade passthrough to a real WebSocket upstream on loopback.

// WebSocket server and client helpers below are test code outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

async fn next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("no message")
        .expect("stream ended")
        .expect("read failed")
}

/// A WebSocket upstream: greets every client first (server-initiated bytes), then echoes
/// each message back prefixed with `echo:`; records the handshake headers.
async fn ws_upstream() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = socket.accept().await.unwrap();
            let seen = Arc::clone(&seen2);
            tokio::spawn(async move {
                // The callback's signature is tungstenite's.
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, res: Response| {
                    seen.lock().unwrap().push(req.headers().clone());
                    Ok(res)
                };
                let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback)
                    .await
                    .unwrap();
                ws.send(Message::text("hello from upstream")).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::text(format!("echo:{}", t.as_str())),
                        Message::Binary(b) => {
                            let mut v = b"echo:".to_vec();
                            v.extend_from_slice(&b);
                            Message::binary(v)
                        }
                        // tungstenite answers the close itself; the stream then ends.
                        _ => continue,
                    };
                    ws.send(reply).await.unwrap();
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_carries_bytes_both_ways() {
    let (ws_addr, seen) = ws_upstream().await;
    let plain = TestUpstream::start("plain", false).await;
    let text = format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
max_connections = 1

[upstreams.ws]
members = [{{ address = "{ws_addr}" }}]

[upstreams.plain]
{plain}

[[routes]]
upstream = "ws"
match = {{ path_prefix = "/ws" }}

[[routes]]
upstream = "plain"
"#,
        plain = members(&[&plain])
    );
    let gw = TestGateway::start(&text).await;
    let url = format!("ws://{}/ws/chat", gw.addr("web"));
    let (mut ws, response) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake timed out")
        .expect("handshake failed");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(response.headers().contains_key("x-request-id"));
    assert!(response.headers().contains_key("sec-websocket-accept"));

    // Server-initiated bytes arrive without the client sending anything.
    assert_eq!(next(&mut ws).await, Message::text("hello from upstream"));
    ws.send(Message::text("ping 1")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("echo:ping 1"));
    // A large binary message (several TCP segments each way).
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let mut want = b"echo:".to_vec();
    want.extend_from_slice(&big);
    assert_eq!(next(&mut ws).await, Message::binary(want));

    // The upstream saw the proxied handshake with the forwarding headers.
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let h = &seen[0];
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert!(h.contains_key("x-request-id"));
        assert!(
            h["upgrade"]
                .to_str()
                .unwrap()
                .eq_ignore_ascii_case("websocket")
        );
    }
    // The tunnel counts as the listener's one connection while it is open.
    assert_eq!(gw.gw().shared().active_connections(), 1);
    // Close handshake through the tunnel, then the client lets go of its connection.
    ws.close(None).await.unwrap();
    let closing = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("close timed out");
    assert!(
        matches!(closing, None | Some(Ok(Message::Close(_)))),
        "{closing:?}"
    );
    drop(ws);
    eventually("tunnel closed", || async {
        gw.gw().shared().active_connections() == 0
    })
    .await;
    // The slot is free again: plain HTTP works on the same listener.
    let (status, _, body) = get(&client(), &gw.url("web", "/after")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "plain /after 0"));
}

#[tokio::test]
async fn other_upgrades_are_not_passed_on() {
    let up = TestUpstream::start("a", false).await;
    let text = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\n{}\n[[routes]]\nupstream = \"u\"\n",
        members(&[&up])
    );
    let gw = TestGateway::start(&text).await;
    let r = raw(
        gw.addr("web"),
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: upgrade, close\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    let seen = up.state.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].1.contains_key("upgrade"));
    assert!(!seen[0].1.contains_key("connection"));
}

/// A tunnel with no byte either way for `tunnel_idle_timeout` is closed; one in use stays
/// open however long it lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() {
    let (ws_addr, _seen) = ws_upstream().await;
    let gw = TestGateway::start(&format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"

[upstreams.ws]
members = [{{ address = "{ws_addr}" }}]
tunnel_idle_timeout = "400ms"

[[routes]]
upstream = "ws"
"#
    ))
    .await;
    let url = format!("ws://{}/ws", gw.addr("web"));
    let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake timed out")
        .expect("handshake failed");
    assert_eq!(next(&mut ws).await, Message::text("hello from upstream"));
    // In use: a message every 100 ms for 1.2 s, three times the timeout.
    for i in 0..12 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text(format!("echo:ping {i}")));
    }
    // Then idle: the gateway closes the tunnel, the client's stream ends.
    let end = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("the idle tunnel was never closed");
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    eventually("the tunnel's connection is gone", || async {
        gw.gw().shared().active_connections() == 0
    })
    .await;
    assert_eq!(gw.gw().shared().metrics.timeouts.tunnel_idle.get(), 1);
}
