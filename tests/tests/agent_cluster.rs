//! Cluster admin state across three lb-agents in the lab: drain / enable / weight made on
//! one node apply on every node (and `lbctl` says which did), a node that was down while
//! changes were made converges after its restart from its persisted state and its peers,
//! health probes take a dead gateway out of the ring, and `lbctl drain --wait` waits for
//! the gateway's active connections to reach zero or times out, and says which. Needs
//! root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "agent_support.rs"]
mod support;

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use lb_tests::{lab::Lab, privileged::require_root};
use serde_json::Value;
use support::*;

const NET: u8 = 95;
const PROBE_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9901;
const CLUSTER_PORT: u16 = 7900;
const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// The cluster's shared token (every agent reads it from `token_file`).
const TOKEN: &str = "cluster-secret-0123456789";

fn extra(me: u8, token_file: &std::path::Path) -> String {
    let mut s = String::new();
    for n in 1..=3u8 {
        s.push_str(&format!(
            "[[gateways]]\nname = \"node{n}\"\naddress = \"{}\"\nadmin = \"{}:{ADMIN_PORT}\"\nprobe = {{ kind = \"tcp\", port = {PROBE_PORT}, interval_ms = 100, timeout_ms = 100, rise = 2, fall = 2 }}\n\n",
            node_v4(NET, n),
            node_v4(NET, n)
        ));
    }
    let peers: Vec<String> = (1..=3u8)
        .filter(|n| *n != me)
        .map(|n| format!("\"{}:{CLUSTER_PORT}\"", node_v4(NET, n)))
        .collect();
    s.push_str(&format!(
        "[cluster]\nlisten = \"{}:{CLUSTER_PORT}\"\npeers = [{}]\nsync_interval_ms = 300\ntoken_file = \"{}\"\n",
        node_v4(NET, me),
        peers.join(", "),
        token_file.display()
    ));
    s
}

/// A stand-in for lb-gateway's admin listener: `/admin/connections` with a count the
/// test controls, and `/admin/retire-connections`, which it counts in `retired` (the real
/// endpoint is tested against lb-gateway in its own crate).
fn fake_gateway_admin(lab: &Lab, host: &str, count: Arc<AtomicU64>, retired: Arc<AtomicU64>) {
    let listener = lab
        .in_host(host, || TcpListener::bind(("0.0.0.0", ADMIN_PORT)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let (status, body) = if req.starts_with("GET /admin/connections ") {
                let c = count.load(Ordering::SeqCst);
                (
                    "200 OK",
                    format!(
                        "{{\"active_connections\":{c},\"in_flight_requests\":0,\"draining\":false}}"
                    ),
                )
            } else if req.starts_with("POST /admin/retire-connections ") {
                retired.fetch_add(1, Ordering::SeqCst);
                let c = count.load(Ordering::SeqCst);
                (
                    "200 OK",
                    format!("{{\"status\":\"retiring\",\"active_connections\":{c}}}"),
                )
            } else {
                ("404 Not Found", String::new())
            };
            let _ignored = s.write_all(
                format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
}

fn gateway<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap()
}

/// Whether the agent at `socket` reports `gw` with `mode`, `weight` and ring membership.
fn reports(socket: &std::path::Path, gw: &str, mode: &str, weight: u64, in_ring: bool) -> bool {
    let (code, out, _) = lbctl(socket, &["-o", "json", "status"]);
    if code != 0 {
        return false;
    }
    let s: Value = serde_json::from_str(&out).unwrap();
    let g = gateway(&s, gw);
    g["mode"] == mode && g["weight"] == weight && g["in_ring"] == in_ring
}

fn applied_nodes(report: &Value) -> Vec<(String, bool)> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_owned(),
                n["applied"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn drain_enable_weight_converge_across_three_agents_with_a_restart() {
    if !require_root("drain_enable_weight_converge_across_three_agents_with_a_restart") {
        return;
    }
    let prefix = "lbtcl";
    let lab = vrrp_lab(prefix, NET, 3);
    let scratch = Scratch::new(prefix);
    name_servers(&lab, &NODES, PROBE_PORT);
    let conns3 = Arc::new(AtomicU64::new(0));
    let retired3 = Arc::new(AtomicU64::new(0));
    for (i, h) in NODES.iter().enumerate() {
        let c = if i == 2 {
            conns3.clone()
        } else {
            Arc::new(AtomicU64::new(0))
        };
        let r = if i == 2 {
            retired3.clone()
        } else {
            Arc::new(AtomicU64::new(0))
        };
        fake_gateway_admin(&lab, h, c, r);
    }
    let token_file = scratch.path("cluster.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let files: Vec<AgentFiles> = (1..=3u8)
        .map(|n| agent_config(&scratch, &format!("node{n}"), &[], &extra(n, &token_file)))
        .collect();
    let mut agents: Vec<Proc> = (0..3)
        .map(|i| start_agent(&lab, &scratch, NODES[i], &files[i]))
        .collect();
    for f in &files {
        for gw in NODES {
            wait_until(
                &format!("{gw} healthy and in the ring at {}", f.socket.display()),
                10,
                || reports(&f.socket, gw, "enabled", 100, true),
            );
        }
    }

    // Drain node2 on node1: every node applies it, and says so.
    let report = lbctl_json(&files[0].socket, &["drain", "node2"], 0);
    assert_eq!(
        applied_nodes(&report),
        [
            ("node1".into(), true),
            ("node2".into(), true),
            ("node3".into(), true)
        ]
    );
    for f in &files {
        assert!(
            reports(&f.socket, "node2", "drained", 100, false),
            "{}",
            f.socket.display()
        );
        let s = lbctl_json(&f.socket, &["status"], 0);
        assert_eq!(s["ring_members"], 2);
    }

    // node3's agent goes down; changes made meanwhile are reported as not applied there.
    agents[2].sigkill();
    let report = lbctl_json(&files[1].socket, &["weight", "node1", "300"], 5);
    let nodes = applied_nodes(&report);
    assert_eq!(nodes[0], ("node2".into(), true));
    assert!(nodes.contains(&("node1".into(), true)), "{nodes:?}");
    let down = format!("{}:{CLUSTER_PORT}", node_v4(NET, 3));
    assert!(nodes.contains(&(down, false)), "{nodes:?}");
    let (code, out, _) = lbctl(&files[0].socket, &["enable", "node2"]);
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("no"),
        "the table shows the node that did not apply: {out}"
    );

    // node3 restarts: from its own disk it still has node2 drained, and it converges on
    // the newer entries of its peers.
    let state_file = files[2].state_dir.join("admin-state.json");
    assert!(state_file.exists(), "node3 persisted the drain");
    agents[2] = start_agent(&lab, &scratch, "node3", &files[2]);
    for f in &files {
        wait_until(&format!("{} converged", f.socket.display()), 10, || {
            reports(&f.socket, "node2", "enabled", 100, true)
                && reports(&f.socket, "node1", "enabled", 300, true)
        });
    }

    // A dead gateway leaves every ring through the probes, and comes back.
    lab.cut_link("node3").unwrap();
    for f in &files[..2] {
        wait_until("node3 out of the ring after failed probes", 10, || {
            let s = lbctl_json(&f.socket, &["status"], 0);
            gateway(&s, "node3")["healthy"] == false && gateway(&s, "node3")["in_ring"] == false
        });
    }
    lab.restore_link("node3").unwrap();
    for f in &files {
        wait_until("node3 back in the ring", 10, || {
            reports(&f.socket, "node3", "enabled", 100, true)
        });
    }

    // drain --wait: times out while connections remain, and says so.
    conns3.store(2, Ordering::SeqCst);
    let (code, out, err) = lbctl(
        &files[0].socket,
        &["drain", "node3", "--wait", "--timeout", "1"],
    );
    assert_eq!(code, 3, "{out} {err}");
    assert!(
        out.contains("timed out after 1s with 2 active connection(s) left"),
        "{out}"
    );
    // The gateway was asked to let its clients go first.
    assert!(
        out.contains("node3: closing its 2 connection(s) gracefully"),
        "{out}"
    );
    assert_eq!(retired3.load(Ordering::SeqCst), 1);
    // ... and returns once they reach zero.
    let mut child = Command::new(bin("lbctl"))
        .arg("--socket")
        .arg(&files[0].socket)
        .args(["-o", "json", "drain", "node3", "--wait", "--timeout", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "lbctl asked the gateway to retire its connections",
        10,
        || retired3.load(Ordering::SeqCst) == 2,
    );
    wait_until("lbctl polls the gateway", 10, || {
        lbctl_json(&files[0].socket, &["status"], 0)["gateways"][2]["active_connections"] == 2
    });
    assert!(child.try_wait().unwrap().is_none(), "lbctl must still wait");
    conns3.store(0, Ordering::SeqCst);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["wait"], "drained");
    assert_eq!(v["active_connections"], 0);
    assert_eq!(v["retired"], 2);
    // --no-retire waits without asking.
    let (code, out, err) = lbctl(
        &files[0].socket,
        &["drain", "node3", "--wait", "--no-retire", "--timeout", "5"],
    );
    assert_eq!(code, 0, "{out} {err}");
    assert!(!out.contains("gracefully"), "{out}");
    assert_eq!(retired3.load(Ordering::SeqCst), 2);
    for f in &files {
        wait_until("node3 drained everywhere", 5, || {
            reports(&f.socket, "node3", "drained", 100, false)
        });
    }

    // The cluster endpoint wants the shared token: a push without it, or with another,
    // is refused and changes nothing (node1 stays at weight 300).
    let rogue = r#"{"node":"rogue","state":{"gateways":{"node1":{"mode":"drained","weight":1,"version":999,"origin":"rogue"}}}}"#;
    // (A well-formed state: with the token it would win, being newer.)
    serde_json::from_str::<lb_userspace::agent::api::PeerState>(rogue).unwrap();
    for auth in ["", "authorization: Bearer wrong-token-0123456789\r\n"] {
        let reply = lab
            .in_host("node2", || {
                let mut s =
                    std::net::TcpStream::connect((node_v4(NET, 1), CLUSTER_PORT)).unwrap();
                write!(
                    s,
                    "POST /v1/cluster/state HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{rogue}",
                    rogue.len()
                )
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
            .unwrap();
        assert!(reply.starts_with("HTTP/1.1 401"), "{auth:?}: {reply}");
    }
    assert!(reports(&files[0].socket, "node1", "enabled", 300, true));

    // Unknown gateway: refused with exit 1 and a message.
    let (code, _, err) = lbctl(&files[0].socket, &["drain", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("no gateway \"nosuch\""), "{err}");
    drop(agents);
}
