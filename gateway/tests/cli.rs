//! The `lb-gateway` binary: help, `check-config` exit codes, and `run` with the access log,
//! SIGHUP reload and SIGTERM drain.

// Process helpers below are test code outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Instant;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_lb-gateway");

#[test]
fn help_lists_the_subcommands() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("check-config") && text.contains("run"),
        "{text}"
    );
    let out = std::process::Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--config") && text.contains("SIGHUP"),
        "{text}"
    );
}

#[test]
fn check_config_exit_codes() {
    let dir = TempDir::new();
    let good = dir.write(
        "good.toml",
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nrespond = { body = \"hi\" }\n",
    );
    let out = std::process::Command::new(BIN)
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.write(
        "bad.toml",
        "[listeners.web]\nlisten = \"nowhere\"\n[upstreams.u]\nmembers = [{ address = \"a:1\", weight = 0 }]\n",
    );
    let out = std::process::Command::new(BIN)
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path_str(&bad)), "{err}");
    assert!(
        err.contains("listeners.web.listen: `nowhere` is not an IP:port address"),
        "{err}"
    );
    assert!(
        err.contains("upstreams.u.members[0].weight: must be > 0"),
        "{err}"
    );

    let unknown = dir.write(
        "unknown.toml",
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n",
    );
    let out = std::process::Command::new(BIN)
        .args(["check-config"])
        .arg(&unknown)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));

    let missing = dir.0.join("missing.toml");
    let out = std::process::Command::new(BIN)
        .args(["check-config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// SIGTERM: the gateway drains and exits successfully.
async fn terminate(child: &mut tokio::process::Child, pid: u32) {
    signal(pid, "-TERM");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// `lb-gateway run --config PATH`, its pid, and its stdout lines as they come.
fn run(path: &std::path::Path) -> (tokio::process::Child, u32, mpsc::UnboundedReceiver<String>) {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let (tx, lines) = mpsc::unbounded_channel();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = out.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, pid, lines)
}

async fn next_json(
    lines: &mut mpsc::UnboundedReceiver<String>,
    what: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, lines.recv())
            .await
            .expect("log line")
            .expect("log ended");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && what(&v)
        {
            return v;
        }
    }
}

#[tokio::test]
async fn run_logs_access_reloads_on_sighup_and_drains_on_sigterm() {
    let up = TestUpstream::start("a", false).await;
    let dir = TempDir::new();
    let config = |v: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[listeners.web]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\n{}\n\
             [[routes]]\nname = \"main\"\nupstream = \"u\"\nresponse_headers = {{ set = {{ x-config = \"{v}\" }} }}\n",
            members(&[&up])
        )
    };
    let path = dir.write("gw.toml", &config("one"));
    let (mut child, pid, mut lines) = run(&path);
    let mut addrs: HashMap<String, SocketAddr> = HashMap::new();
    while addrs.len() < 2 {
        let v = next_json(&mut lines, |v| v["message"] == "listening").await;
        addrs.insert(
            v["listener"].as_str().unwrap().to_string(),
            v["addr"].as_str().unwrap().parse().unwrap(),
        );
    }
    let url = format!("http://{}/hello", addrs["web"]);
    let c = client();
    let (status, headers, _) = get(&c, &url).await;
    assert_eq!(
        (status, headers["x-config"].to_str().unwrap()),
        (StatusCode::OK, "one")
    );
    let line = next_json(&mut lines, |v| v["target"] == "access_log").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "main");
    assert_eq!(line["upstream"], "u");
    assert_eq!(line["path"], "/hello");
    assert_eq!(line["request_id"].as_str().unwrap().len(), 32);
    assert!(
        line["client_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    std::fs::write(&path, config("two")).unwrap();
    signal(pid, "-HUP");
    eventually("SIGHUP reload applied", || async {
        get(&c, &url).await.1["x-config"] == "two"
    })
    .await;

    terminate(&mut child, pid).await;
}

/// A request still running when the drain passes `drain_timeout` is dropped with the process,
/// and its access line says it was the gateway's doing (503, `internal`), not the client's.
#[tokio::test]
async fn a_request_cut_by_the_drain_deadline_is_logged_as_the_gateways_doing() {
    let up = TestUpstream::start("a", false).await;
    let dir = TempDir::new();
    let path = dir.write(
        "gw.toml",
        &format!(
            "[global]\ndrain_timeout = \"300ms\"\n[listeners.web]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\n{}\n[[routes]]\nname = \"main\"\nupstream = \"u\"\n",
            members(&[&up])
        ),
    );
    let (mut child, pid, mut lines) = run(&path);
    let v = next_json(&mut lines, |v| v["message"] == "listening").await;
    let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    let url = format!("http://{addr}/hold");
    let stuck = tokio::spawn(async move { client().get(url.parse().unwrap()).await });
    up.wait_held(1).await;
    terminate(&mut child, pid).await;
    let line = next_json(&mut lines, |v| v["target"] == "access_log").await;
    assert_eq!(line["path"], "/hold", "{line}");
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["complete"], false, "{line}");
    assert_eq!(
        line["error"], "the gateway stopped before the response ended (drain_timeout)",
        "{line}"
    );
    assert_eq!(line["error_origin"], "internal", "{line}");
    // The client's connection was closed without an answer.
    assert!(stuck.await.unwrap().is_err());
    up.state.release.notify_waiters();
}
