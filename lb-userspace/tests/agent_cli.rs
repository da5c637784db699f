//! `lb-agent` and `lbctl` as an operator uses them, on one machine without namespaces:
//! config validation (exit 64, file + key path + reason), an agent without VRRP probing
//! local "gateways", the admin socket (mode 0600), drain/weight persisted across a
//! restart, reload refusing a bad file, the HTTPS admin listener with its bearer token,
//! and the Prometheus output accepted by `promtool check metrics`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
const LBCTL: &str = env!("CARGO_BIN_EXE_lbctl");

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ignored = self.0.kill();
        let _ignored = self.0.wait();
    }
}

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lbctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    run(LBCTL, &all)
}

fn status(socket: &Path) -> Value {
    let (code, out, err) = lbctl(socket, &["-o", "json", "status"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A local TCP "gateway" that accepts and closes (a tcp probe target).
fn gateway_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in l.incoming() {});
    port
}

fn config(dir: &Path, gateways: &[(&str, u16)], extra: &str) -> PathBuf {
    let mut text = format!(
        "[node]\nname = \"solo\"\nstate_dir = \"{}\"\n[admin]\nsocket = \"{}\"\n{extra}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        dir.join("state").display(),
        dir.join("admin.sock").display(),
    );
    for (name, port) in gateways {
        text.push_str(&format!(
            "[[gateways]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nprobe = {{ kind = \"tcp\", port = {port}, interval_ms = 50, timeout_ms = 50 }}\n"
        ));
    }
    let file = dir.join("agent.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn start(file: &Path, socket: &Path) -> Agent {
    let child = Command::new(AGENT)
        .args(["run", "--config", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = Agent(child);
    wait_until("the agent serves its socket", || {
        lbctl(socket, &["status"]).0 == 0
    });
    agent
}

#[test]
fn check_config_names_file_key_path_and_reason_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[node]\nname = \"n\"\nstate_dir = \"/var/lib/x\"\n[[vrrp]]\nname = \"v\"\nvrid = 300\ninterface = \"eth0\"\npriority = 100\nvips = [\"10.0.0.1\"]\n",
    )
    .unwrap();
    for bin in [AGENT, LBCTL] {
        let (code, _, err) = run(bin, &["check-config", file.to_str().unwrap()]);
        assert_eq!(code, 64, "{bin}: {err}");
        assert!(
            err.contains(&format!(
                "{}: vrrp[0].vrid: 300: must be 1-255",
                file.display()
            )),
            "{bin}: {err}"
        );
    }
    std::fs::write(
        &file,
        "[node]\nname = \"n\"\nstate_dir = \"/var/lib/x\"\ntypo = 1\n",
    )
    .unwrap();
    let (code, _, err) = run(AGENT, &["check-config", file.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("node.typo: unknown field `typo`"), "{err}");
    let (code, _, err) = run(AGENT, &["run", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 64, "run refuses an invalid config too: {err}");
    let good = config(dir.path(), &[("gw", 1)], "");
    let (code, out, _) = run(AGENT, &["check-config", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("ok (0 vrrp instance(s), 1 gateway(s)"),
        "{out}"
    );
}

#[test]
fn admin_socket_changes_persist_and_reload_refuses_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let (a, b) = (gateway_port(), gateway_port());
    let file = config(dir.path(), &[("gw-a", a), ("gw-b", b)], "");
    let agent = start(&file, &socket);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket must be root-only");
    wait_until("both gateways in the ring", || {
        status(&socket)["ring_members"] == 2
    });

    let (code, out, err) = lbctl(&socket, &["drain", "gw-a"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("gw-a: drained (version 1, origin solo)"),
        "{out}"
    );
    assert!(out.contains("solo"), "{out}");
    let (code, _, err) = lbctl(&socket, &["weight", "gw-b", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("weight 0: must be 1-65535"), "{err}");
    assert_eq!(lbctl(&socket, &["weight", "gw-b", "7"]).0, 0);
    assert_eq!(status(&socket)["ring_members"], 1);

    // The state survives a crash of the agent.
    drop(agent);
    let agent = start(&file, &socket);
    let s = status(&socket);
    assert_eq!(s["gateways"][0]["mode"], "drained");
    assert_eq!(s["gateways"][1]["weight"], 7);
    assert_eq!(s["admin_version"], 1);

    // A bad file is refused and the running config stays; a good one is taken.
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, good.replace("interval_ms = 50", "interval_ms = 0")).unwrap();
    let (code, _, err) = lbctl(&socket, &["reload"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("gateways[0].probe.interval_ms: 0 ms is out of range"),
        "{err}"
    );
    assert_eq!(status(&socket)["gateways"].as_array().unwrap().len(), 2);
    let c = gateway_port();
    std::fs::write(
        &file,
        format!(
            "{good}[[gateways]]\nname = \"gw-c\"\naddress = \"127.0.0.1\"\nprobe = {{ kind = \"tcp\", port = {c} }}\n"
        ),
    )
    .unwrap();
    let (code, out, err) = lbctl(&socket, &["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gateways: 3 probed"), "{out}");
    wait_until("gw-c joins the ring", || {
        status(&socket)["ring_members"] == 2
    });
    // A change that needs a restart is refused by name.
    std::fs::write(&file, good.replace("name = \"solo\"", "name = \"other\"")).unwrap();
    let (code, _, err) = lbctl(&socket, &["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("node.name: cannot change on reload"), "{err}");
    drop(agent);

    // No agent: exit 4.
    let (code, _, err) = lbctl(&socket, &["status"]);
    assert_eq!(code, 4, "{err}");
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let file = config(dir.path(), &[("gw-a", gateway_port()), ("gw-b", 1)], "");
    let _agent = start(&file, &socket);
    wait_until("gw-a in the ring", || status(&socket)["ring_members"] == 1);
    let addr: SocketAddr = status(&socket)["listeners"]["metrics"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let resp = http_get(addr, "/metrics");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for want in [
        "lb_gateway_healthy{gateway=\"gw-a\"} 1",
        "lb_gateway_healthy{gateway=\"gw-b\"} 0",
        "lb_gateway_probes_total{gateway=\"gw-b\",result=\"fail\"}",
        "lb_ring_rebuilds_total",
        "lb_ring_members 1",
        "lb_admin_state_version 0",
    ] {
        assert!(body.contains(want), "missing {want}:\n{body}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) must be installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn https_admin_needs_the_bearer_token() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    std::fs::write(p("agent.pem"), cert.pem()).unwrap();
    std::fs::write(p("agent.key"), key.serialize_pem()).unwrap();
    std::fs::write(p("token"), "s3cret-token-for-tests\n").unwrap();
    std::fs::write(p("wrong"), "not-the-right-token-at-all").unwrap();
    let https = format!(
        "[admin.https]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\ntoken_file = \"{}\"\n",
        p("agent.pem").display(),
        p("agent.key").display(),
        p("token").display()
    );
    let socket = p("admin.sock");
    let file = config(dir.path(), &[("gw-a", gateway_port())], &https);
    let _agent = start(&file, &socket);
    let port = status(&socket)["listeners"]["https"]
        .as_str()
        .unwrap()
        .parse::<SocketAddr>()
        .unwrap()
        .port();
    let remote = format!("localhost:{port}");
    let with = |token: &str, args: &[&str]| {
        let mut all: Vec<String> = vec![
            "--remote".into(),
            remote.clone(),
            "--ca-file".into(),
            p("ca.pem").display().to_string(),
            "--token-file".into(),
            p(token).display().to_string(),
        ];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run(LBCTL, &refs)
    };
    let (code, _, err) = with("wrong", &["status"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401") && err.contains("bearer token"), "{err}");
    let (code, out, err) = with("token", &["-o", "json", "status"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["node"], "solo");
    let (code, out, err) = with("token", &["drain", "gw-a"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gw-a: drained"), "{out}");
}

/// The configuration example of AGENT.md is valid (the reference cannot drift from the
/// code unnoticed).
#[test]
fn agent_md_example_config_is_valid() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/AGENT.md")).unwrap();
    let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
    let len = doc[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("example.toml");
    std::fs::write(&file, &doc[start..start + len]).unwrap();
    let (code, out, err) = run(AGENT, &["check-config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2 vrrp instance(s), 1 gateway(s), 2 peer(s)"),
        "{out}"
    );
}
