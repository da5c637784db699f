//! `lbctl drain NODE --wait` against a real lb-gateway: two agents in the lab, the gateway
//! on node2 with a keep-alive client connection from the client host. The drain asks the
//! gateway (through the agent, `POST /admin/retire-connections`) to close its connections
//! gracefully, so the wait ends as soon as the client's connection is closed, not at the
//! timeout. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "agent_support.rs"]
mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use lb_tests::privileged::require_root;
use serde_json::Value;
use support::*;

const NET: u8 = 99;
const PROBE_PORT: u16 = 8080;
const GATEWAY_PORT: u16 = 8081;
const ADMIN_PORT: u16 = 9901;
const CLUSTER_PORT: u16 = 7900;
const TOKEN: &str = "drain-secret-0123456789abcdef";

/// The agent's gateways (node2's with the real gateway's admin listener) and its cluster.
fn extra(me: u8, token_file: &std::path::Path) -> String {
    let mut s = String::new();
    for n in 1..=2u8 {
        let admin = if n == 2 {
            format!("admin = \"{}:{ADMIN_PORT}\"\n", node_v4(NET, n))
        } else {
            String::new()
        };
        s.push_str(&format!(
            "[[gateways]]\nname = \"node{n}\"\naddress = \"{}\"\n{admin}probe = {{ kind = \"tcp\", port = {PROBE_PORT}, interval_ms = 100, timeout_ms = 100, rise = 2, fall = 2 }}\n\n",
            node_v4(NET, n),
        ));
    }
    let peer = node_v4(NET, 3 - me);
    s.push_str(&format!(
        "[cluster]\nlisten = \"{}:{CLUSTER_PORT}\"\npeers = [\"{peer}:{CLUSTER_PORT}\"]\nsync_interval_ms = 300\ntoken_file = \"{}\"\n",
        node_v4(NET, me),
        token_file.display()
    ));
    s
}

/// Reads one HTTP/1.1 response with a `content-length` body; returns its head.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text[..end].to_owned();
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the gateway closed the connection mid-response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn drain_wait_retires_a_real_gateways_keep_alive_connections() {
    if !require_root("drain_wait_retires_a_real_gateways_keep_alive_connections") {
        return;
    }
    let prefix = "lbtdrn";
    let lab = vrrp_lab(prefix, NET, 2);
    let scratch = Scratch::new(prefix);
    name_servers(&lab, &["node1", "node2"], PROBE_PORT);
    // The real gateway on node2: a fixed answer, the admin listener the agents ask.
    let gw_config = scratch.path("gateway.toml");
    std::fs::write(
        &gw_config,
        format!(
            "[global]\naccess_log = false\n[admin]\nlisten = \"0.0.0.0:{ADMIN_PORT}\"\n\
             [listeners.web]\nlisten = \"0.0.0.0:{GATEWAY_PORT}\"\n\
             [[routes]]\nrespond = {{ status = 200, body = \"node2\" }}\n"
        ),
    )
    .unwrap();
    let _gateway = spawn_in(
        &lab,
        "node2",
        "lb-gateway@node2",
        &bin("lb-gateway"),
        &["run", "--config", gw_config.to_str().unwrap()],
        scratch.path("node2-gateway.log"),
    );
    let gateway = SocketAddr::new(node_v4(NET, 2), GATEWAY_PORT);
    let token_file = scratch.path("cluster.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let files: Vec<AgentFiles> = (1..=2u8)
        .map(|n| agent_config(&scratch, &format!("node{n}"), &[], &extra(n, &token_file)))
        .collect();
    let _agents: Vec<Proc> = (0..2)
        .map(|i| start_agent(&lab, &scratch, &format!("node{}", i + 1), &files[i]))
        .collect();

    // A keep-alive client on node2's gateway, its first request answered.
    let (conn_tx, conn_rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn({
        let lab_conn = lab
            .in_host("client", move || {
                let mut last = None;
                for _ in 0..100 {
                    match TcpStream::connect_timeout(&gateway, Duration::from_millis(300)) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = Some(e),
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(last.unwrap())
            })
            .unwrap();
        move || {
            let mut s = lab_conn.expect("the gateway on node2 never listened");
            s.write_all(b"GET / HTTP/1.1\r\nHost: node2\r\n\r\n")
                .unwrap();
            let head = read_response(&mut s);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            conn_tx.send(()).unwrap();
            // Held open until the gateway closes it.
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).map(|_| rest)
        }
    });
    conn_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the client's first request was not answered");
    wait_until("node2's connection is seen by the agent", 10, || {
        let s = lbctl_json(&files[0].socket, &["status"], 0);
        s["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "node2" && g["active_connections"] == 1)
    });

    // The drain waits only as long as the gateway takes to let the client go.
    let (code, out, err) = lbctl(
        &files[0].socket,
        &["-o", "json", "drain", "node2", "--wait", "--timeout", "15"],
    );
    assert_eq!(code, 0, "{out} {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["retired"], 1, "{v}");
    assert_eq!(v["wait"], "drained", "{v}");
    assert_eq!(v["active_connections"], 0, "{v}");
    // The client saw its connection closed, with nothing more sent.
    let rest = client
        .join()
        .unwrap()
        .expect("the client's connection was not closed");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}
