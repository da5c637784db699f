//! End-to-end: limits, timeouts and malformed or smuggling requests over raw TCP. A refused
//! request must get the right status and never reach the upstream.

// The helpers below are test code outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn setup() -> (TestUpstream, TestGateway) {
    setup_with("").await
}

/// [`setup`] with more settings for the upstream `api`.
async fn setup_with(upstream_extra: &str) -> (TestUpstream, TestGateway) {
    let up = TestUpstream::start("a", false).await;
    let text = format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
max_header_bytes = 2048
max_body_bytes = 1000
header_timeout = "300ms"
body_timeout = "500ms"
idle_timeout = "400ms"

[upstreams.api]
{members}
{upstream_extra}

[[routes]]
upstream = "api"
"#,
        members = members(&[&up])
    );
    let gw = TestGateway::start(&text).await;
    (up, gw)
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

#[tokio::test]
async fn well_formed_raw_request_passes() {
    let (up, gw) = setup().await;
    let r = raw(
        gw.addr("web"),
        b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "{r}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (up, gw) = setup().await;
    let big = "a".repeat(4000);
    let r = raw(
        gw.addr("web"),
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        status_line(&r),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{r}"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let (up, gw) = setup().await;
    let body = "b".repeat(2000);
    let r = raw(
        gw.addr("web"),
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_line(&r), "HTTP/1.1 413 Payload Too Large", "{r}");
    // Chunked, no declared length: refused while reading.
    let r = raw(
        gw.addr("web"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_line(&r), "HTTP/1.1 413 Payload Too Large", "{r}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn slow_headers_get_408() {
    let (up, gw) = setup().await;
    let mut s = TcpStream::connect(gw.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Never finish the headers: the gateway answers 408 and closes.
    let r = read_all(&mut s).await;
    assert_eq!(status_line(&r), "HTTP/1.1 408 Request Timeout", "{r}");
    assert_eq!(up.hits(), 0);
    assert_eq!(gw.gw().shared().metrics.timeouts.header.get(), 1);
}

/// A client that stops sending its body gets 408 after `body_timeout` without data, whether
/// the body was being read whole first or already streamed to the upstream; one that sends it
/// slowly but steadily (each part within the timeout) is served.
#[tokio::test]
async fn stalled_bodies_get_408_and_slow_steady_ones_pass() {
    let (up, gw) = setup().await;
    // Read whole before the first attempt (small bodies are buffered for retries).
    let r = raw(
        gw.addr("web"),
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_line(&r), "HTTP/1.1 408 Request Timeout", "{r}");
    assert_eq!(up.hits(), 0);
    assert_eq!(gw.gw().shared().metrics.timeouts.body.get(), 1);

    // Streamed: nothing is buffered, the upstream is being sent the body when the client
    // stalls.
    let (streaming, gw2) = setup_with("[upstreams.api.retry]\nbuffer_bytes = 0").await;
    let r = raw(
        gw2.addr("web"),
        b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    assert_eq!(status_line(&r), "HTTP/1.1 408 Request Timeout", "{r}");
    assert_eq!(streaming.hits(), 0, "the upstream got a whole request");
    assert_eq!(gw2.gw().shared().metrics.timeouts.body.get(), 1);
    let line = gw2
        .access_lines()
        .into_iter()
        .find(|l| l["path"] == "/s")
        .unwrap();
    assert_eq!(line["status"], 408);
    assert_eq!(line["error_origin"], "client");

    // Slow but steady: a part every 200 ms, 2 s in all, four times the timeout.
    let mut s = TcpStream::connect(gw2.addr("web")).await.unwrap();
    s.write_all(b"POST /steady HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        s.write_all(b"1\r\nx\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let r = read_all(&mut s).await;
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "{r}");
    assert!(r.ends_with("a /steady 10"), "{r}");
}

/// A client that stops reading a response is cut off after `send_timeout` without taking a
/// byte: the gateway does not hold the connection (and the response) for it forever.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_send_timeout() {
    // Larger than what the socket buffers hold (the client's receive buffer is made small).
    let big = "x".repeat(8 * 1024 * 1024);
    let gw = TestGateway::start(&format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
send_timeout = "500ms"

[[routes]]
respond = {{ status = 200, body = "{big}" }}
"#
    ))
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(gw.addr("web")).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let shared = std::sync::Arc::clone(gw.gw().shared());
    eventually("the connection is open", || async {
        shared.active_connections() == 1
    })
    .await;
    // Not reading: the gateway's writes wait, and after send_timeout it closes.
    eventually("the gateway closed the connection", || async {
        shared.active_connections() == 0
    })
    .await;
    // What the client gets is cut short.
    let mut got = Vec::new();
    let _ended = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got).await;
    assert!(got.len() < big.len(), "{} bytes", got.len());
    assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    assert_eq!(shared.metrics.timeouts.send.get(), 1);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (up, gw) = setup().await;
    let mut s = TcpStream::connect(gw.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // One response, then the idle timeout closes the connection (read_all returns on EOF).
    let r = read_all(&mut s).await;
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "{r}");
    assert_eq!(r.matches("HTTP/1.1").count(), 1);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let (up, gw) = setup().await;
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ];
    for case in cases {
        let r = raw(gw.addr("web"), case).await;
        assert_eq!(
            status_line(&r),
            "HTTP/1.1 400 Bad Request",
            "{:?} -> {r}",
            String::from_utf8_lossy(case)
        );
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_never_forwarded() {
    let (up, gw) = setup().await;
    let cases: &[&[u8]] = &[
        // CL.TE
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        // TE.CL
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        // Second request on a keep-alive connection is the ambiguous one.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // Conflicting Content-Length values.
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        // Obfuscated Transfer-Encoding.
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        // obs-fold
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        // Bad chunk sizes.
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        // Chunk longer than announced.
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n",
    ];
    for (i, case) in cases.iter().enumerate() {
        let before = up.hits();
        let r = raw(gw.addr("web"), case).await;
        // The keep-alive case may first answer its well-formed request.
        let last = r.rsplit("HTTP/1.1 ").next().unwrap_or("");
        assert!(
            last.starts_with("400 Bad Request"),
            "case {i}: {:?} -> {r}",
            String::from_utf8_lossy(case)
        );
        if i == 2 {
            // The first, well-formed request came before the ambiguous one was read, or was
            // refused with it; either way the ambiguous one never reached the upstream.
            assert!(up.hits() - before <= 1);
            let seen = up.state.seen.lock().unwrap();
            assert!(
                seen.iter().all(|(_, _, body)| body.is_empty()),
                "ambiguous body reached the upstream"
            );
        } else {
            assert_eq!(up.hits(), before, "case {i} reached the upstream");
        }
    }
}

/// A small deterministic generator (xorshift64*): the same cases on every run, so a failure
/// can be replayed from its case number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One to three random edits of a well-formed request: bytes replaced, inserted or deleted,
/// lines repeated, the input cut short, tricky header lines or request-line tokens put in.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    const BYTES: &[u8] = b"\r\n :\0\t\x7f\xff\"\\/;,=-0123456789abcdefABCDEF";
    const HEADERS: &[&[u8]] = &[
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 99999999999999999999999\r\n",
        b"Content-Length: 1, 1\r\n",
        b"Host: \r\n",
        b"Host: a b\r\n",
        b"Expect: 100-continue\r\n",
        b"Connection: close\r\n",
        b"Connection: upgrade\r\nUpgrade: websocket\r\n",
        b": no-name\r\n",
        b"X-Nul: a\0b\r\n",
        b"X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        b" leading-space: 1\r\n",
        b"Te: trailers\r\n",
        b"Keep-Alive: timeout=0\r\n",
    ];
    const STARTS: &[&[u8]] = &[
        b"GET / HTTP/1.0\r\n",
        b"GET / HTTP/2.0\r\n",
        b"GET / HTTP/1.1 \r\n",
        b"GET  / HTTP/1.1\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"GET http://other.example/x HTTP/1.1\r\n",
        b"GET /%00%ff/../.. HTTP/1.1\r\n",
        b"\r\n\r\nGET / HTTP/1.1\r\n",
        b"G\xc3\xa9T / HTTP/1.1\r\n",
    ];
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(b.len() + 1);
        match rng.below(7) {
            0 if at < b.len() => b[at] = *rng.pick(BYTES),
            1 => b.insert(at, *rng.pick(BYTES)),
            2 if at < b.len() => {
                let end = (at + 1 + rng.below(8)).min(b.len());
                b.drain(at..end);
            }
            3 => {
                // Repeat the line that starts after the first CRLF at or after `at`.
                let rest = &b[at.min(b.len())..];
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    let start = at + i + 2;
                    if let Some(j) = b[start..].windows(2).position(|w| w == b"\r\n") {
                        let line = b[start..start + j + 2].to_vec();
                        b.splice(start..start, line);
                    }
                }
            }
            4 => b.truncate(at),
            5 => {
                // A header line right after the request line.
                if let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
                    let h = rng.pick(HEADERS).to_vec();
                    b.splice(i + 2..i + 2, h);
                }
            }
            _ => {
                if let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
                    b.splice(..i + 2, rng.pick(STARTS).to_vec());
                }
            }
        }
    }
    b
}

/// Everything the gateway sends on one connection within `wait` (a request cut short may get
/// no answer: the gateway waits for the rest).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8], wait: std::time::Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The gateway may close before reading everything (a refused head): that is an answer.
    s.write_all(bytes).await.ok();
    let mut out = Vec::new();
    // Err: the connection stayed open past `wait`; what came until then is the answer.
    let _open = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    out
}

/// Randomly mangled requests (a fixed set of 300, see [`mutate`]): each gets answers that
/// are HTTP responses with a success or client-error status, never a server error (no 500,
/// 502, 503 or 504: nothing malformed may reach the healthy upstream and fail there, nothing
/// may crash a connection's task), no task panics, and the gateway serves normally
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mangled_requests_get_http_answers_and_never_a_server_error() {
    static PANICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.lock().unwrap().push(info.to_string());
        default_hook(info);
    }));
    let (up, gw) = setup().await;
    let addr = gw.addr("web");
    let seeds: &[&[u8]] = &[
        b"GET /a?x=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /d HTTP/1.1\r\nHost: x\r\n\r\nGET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cases: Vec<Vec<u8>> = (0..300)
        .map(|i| mutate(&mut rng, seeds[i % seeds.len()]))
        .collect();
    let mut answered = 0;
    let mut tally = std::collections::BTreeMap::new();
    for (chunk_no, chunk) in cases.chunks(50).enumerate() {
        let replies = futures_util::future::join_all(
            chunk
                .iter()
                .map(|c| exchange(addr, c, std::time::Duration::from_secs(3))),
        )
        .await;
        for (k, (case, reply)) in chunk.iter().zip(replies).enumerate() {
            let i = chunk_no * 50 + k;
            let text = String::from_utf8_lossy(&reply);
            let statuses: Vec<u16> = text
                .match_indices("HTTP/1.")
                .filter_map(|(at, _)| text.get(at + 9..at + 12))
                .filter_map(|s| s.parse().ok())
                .collect();
            // Only a connection that sent nothing gets nothing (closed when idle).
            assert!(
                reply.is_empty() == case.is_empty()
                    && (reply.is_empty() || reply.starts_with(b"HTTP/1.") && !statuses.is_empty()),
                "case {i}: {:?} -> not an HTTP answer: {text}",
                String::from_utf8_lossy(case)
            );
            // What HTTP answers a request with: success (the upstream's 200, or 100 Continue)
            // or a client error; of server errors only "not implemented" and "version not
            // supported", which are about the request.
            assert!(
                statuses
                    .iter()
                    .all(|s| [100, 200, 400, 408, 413, 414, 417, 431, 501, 505].contains(s)),
                "case {i}: {:?} -> {text}",
                String::from_utf8_lossy(case)
            );
            answered += usize::from(!statuses.is_empty());
            for st in &statuses {
                *tally.entry(*st).or_insert(0) += 1;
            }
        }
    }
    // Every case is answered (a request cut short by `header_timeout` or `body_timeout`,
    // both well under the wait) but those that sent nothing, and every request that reached
    // the upstream came back with its 200.
    let empty = cases.iter().filter(|c| c.is_empty()).count();
    assert_eq!(answered + empty, 300, "{empty} empty: {tally:?}");
    assert_eq!(
        tally.get(&200).copied().unwrap_or(0),
        up.hits(),
        "{tally:?}"
    );
    let r = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "{r}");
    assert!(up.hits() > 0);
    let panics = PANICS.lock().unwrap();
    assert!(panics.is_empty(), "{panics:?}");
}

/// Reads one response with a `content-length` body from `s` (the gateway's answers here all
/// have one) and returns its head and body as text.
async fn read_response(s: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let complete = |buf: &[u8]| -> bool {
        let text = String::from_utf8_lossy(buf);
        let Some(end) = text.find("\r\n\r\n") else {
            return false;
        };
        let len = text[..end]
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        buf.len() >= end + 4 + len
    };
    let read = async {
        let mut chunk = [0u8; 4096];
        while !complete(&buf) {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed mid-response");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("no whole response");
    String::from_utf8_lossy(&buf).into_owned()
}

/// `max_requests_per_connection` and `max_connection_age` over HTTP/1.1: the last response
/// says `Connection: close` and the gateway closes after it; the requests before it keep the
/// connection.
#[tokio::test]
async fn a_connection_ends_after_max_requests_or_max_age() {
    let up = TestUpstream::start("a", false).await;
    let text = format!(
        r#"
[listeners.few]
listen = "127.0.0.1:0"
max_requests_per_connection = 3

[listeners.aged]
listen = "127.0.0.1:0"
max_connection_age = "300ms"

[upstreams.api]
{members}

[[routes]]
upstream = "api"
"#,
        members = members(&[&up])
    );
    let gw = TestGateway::start(&text).await;
    // Four pipelined requests: three are answered, the third with `Connection: close`, then
    // the connection ends and the fourth is never read.
    let mut s = TcpStream::connect(gw.addr("few")).await.unwrap();
    s.write_all(&b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4))
        .await
        .unwrap();
    let r = read_all(&mut s).await;
    let responses: Vec<&str> = r.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 3, "{r}");
    for (i, resp) in responses.iter().enumerate() {
        assert!(resp.starts_with("200 OK"), "{r}");
        let closes = resp.to_ascii_lowercase().contains("connection: close");
        assert_eq!(closes, i == 2, "response {i}: {resp}");
    }
    assert_eq!(up.hits(), 3);
    // A new connection gets three more.
    let mut s = TcpStream::connect(gw.addr("few")).await.unwrap();
    s.write_all(b"GET /q HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert_eq!(up.hits(), 4);

    // By age: the first request keeps the connection, the first one after 300 ms is its last.
    let mut s = TcpStream::connect(gw.addr("aged")).await.unwrap();
    s.write_all(b"GET /young HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(!r.to_ascii_lowercase().contains("connection: close"), "{r}");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    s.write_all(b"GET /old HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_all(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
    assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "{r}");
    assert_eq!(up.hits(), 6);
}
