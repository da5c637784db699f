//! The product's main job, as `cargo xtask demo` runs it: three nodes with lb-agent (VRRP,
//! health probes, the XDP data path) and lb-gateway, two backends and a client; traffic
//! spread over the gateways, a drain that new connections respect at once, and a
//! failover. `lb-lab demo` checks each step itself and exits non-zero when one fails; this
//! runs it under its own namespace prefix. Needs root and the workspace's binaries
//! (`cargo test --workspace` builds them).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::privileged::require_root;

#[test]
fn the_lab_demo_runs_end_to_end() {
    if !require_root("the_lab_demo_runs_end_to_end") {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-lab"))
        .args(["demo", "--prefix", "lbtdemo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: the demo takes well under a minute; a hang is killed and reported.
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lb-lab demo failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    for step in [
        "connection tables in the kernel: ",
        "the XDP program on node1 spreads them over the gateways",
        "Draining node2",
        "node2 takes the VIP",
        "the client reaches 10.77.0.100 again",
        "Tearing the lab down",
    ] {
        assert!(stdout.contains(step), "missing step {step:?}:\n{stdout}");
    }
}
