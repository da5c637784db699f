//! `lb-lab`: the network-namespace lab by hand, and the demo. Needs root.
//!
//! Normally run through `cargo xtask lab ...` and `cargo xtask demo`, which install the
//! prerequisites and build the binaries first.
#![allow(clippy::print_stdout, reason = "a CLI prints its results")]
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use lb_tests::lab::{self, Lab, topology};

/// Build, inspect and remove network-namespace labs; run the demo.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the standard topology (client, nodes, backends on one bridge) and leave it up.
    Up {
        /// Name prefix of the namespaces (a-z, 0-9, at most 12).
        #[arg(long, default_value = "lab")]
        prefix: String,
        /// Number of LB/gateway nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Number of backend hosts.
        #[arg(long, default_value_t = 2)]
        backends: u8,
    },
    /// Remove a lab: kill its processes, remove its pins and namespaces.
    Down {
        #[arg(long, default_value = "lab")]
        prefix: String,
    },
    /// Show a lab's namespaces, addresses, XDP programs and processes.
    Status {
        #[arg(long, default_value = "lab")]
        prefix: String,
    },
    /// The appliance end to end: three nodes with lb-agent (VRRP, health, XDP) and
    /// lb-gateway, two backends, a client; spreading, drain, failover; then tear down.
    Demo {
        #[arg(long, default_value = "demo")]
        prefix: String,
        /// Leave the lab up at the end (remove it with `cargo xtask lab down --prefix PREFIX`).
        #[arg(long)]
        keep: bool,
    },
    /// The demo's backend service (run inside a backend host): answers every GET with its
    /// name.
    #[command(hide = true)]
    ServeHttp {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            prefix,
            nodes,
            backends,
        } => {
            let lab = Lab::up(&prefix, topology::standard(nodes, backends)?)?;
            print_hosts(&lab);
            // Leave it running: `lb-lab down` removes it.
            std::mem::forget(lab);
            println!(
                "\nlab {prefix} is up; remove it with `cargo xtask lab down --prefix {prefix}`"
            );
        }
        Command::Down { prefix } => {
            let removed = lab::teardown_prefix(&prefix)?;
            println!("removed {} namespaces of lab {prefix}", removed.len());
        }
        Command::Status { prefix } => {
            let status = lab::status(&prefix)?;
            if status.is_empty() {
                println!("no lab with prefix {prefix}");
            } else {
                print!("{status}");
            }
        }
        Command::Demo { prefix, keep } => demo(&prefix, keep)?,
        Command::ServeHttp { listen, name } => serve_http(listen, &name)?,
    }
    Ok(())
}

fn print_hosts(lab: &Lab) {
    println!(
        "{:<10} {:<22} {:<18} {:<14} VIPs on lo",
        "HOST", "NAMESPACE", "MAC", "IPv4"
    );
    for h in lab.hosts() {
        println!(
            "{:<10} {:<22} {:<18} {:<14} {}",
            h.name,
            h.ns,
            lab::format_mac(&h.mac),
            h.ipv4().map(|a| a.to_string()).unwrap_or_default(),
            h.loopback
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

/// The binaries built next to this one (`cargo xtask demo` builds them).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating lb-lab")?;
    let path = exe
        .parent()
        .context("lb-lab has no parent directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo xtask demo does)",
            path.display()
        );
    }
    Ok(path)
}

fn step(text: &str) {
    println!("\n==> {text}");
}

/// The demo agents' connection-table size (`[xdp] flow_table_size`): small, as a lab
/// needs, and unusual, so that the demo can find the agents' tables among the kernel's maps.
const DEMO_FLOW_TABLE: u32 = 49_152;

/// Connection tables (`FLOWS4`, `FLOWS6`) sized for `entries` flows (arrays of
/// `flow_buckets(entries)` buckets) among the kernel's maps (`bpftool -j map show`), by name.
fn flow_tables_of_size(entries: u32) -> anyhow::Result<(usize, usize)> {
    let buckets = lb_common::datapath::flow_buckets(entries);
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .context("running bpftool")?;
    anyhow::ensure!(out.status.success(), "bpftool map show failed");
    let maps: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let count = |name: &str| {
        maps.iter()
            .filter(|m| {
                m["name"] == name
                    && m["type"] == "array"
                    && m["max_entries"].as_u64() == Some(u64::from(buckets))
            })
            .count()
    };
    Ok((count("FLOWS4"), count("FLOWS6")))
}

fn demo(prefix: &str, keep: bool) -> anyhow::Result<()> {
    let bins = Bins {
        agent: sibling("lb-agent")?.to_string_lossy().into_owned(),
        lbctl: sibling("lbctl")?.to_string_lossy().into_owned(),
        gateway: sibling("lb-gateway")?.to_string_lossy().into_owned(),
        lab: std::env::current_exe()?.to_string_lossy().into_owned(),
    };
    let dir = PathBuf::from(format!("/tmp/lb-demo-{prefix}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;

    step(
        "Building the lab: a client, three nodes (agent + XDP + gateway) and two backends on one bridge",
    );
    // Encapsulation adds 20/40 bytes between the nodes: their links get MTU 1600, the
    // client keeps 1500 (docs/datapath.md, MTU).
    let specs = topology::standard(3, 2)?
        .into_iter()
        .map(|h| {
            if h.name.starts_with("node") {
                h.mtu(1600)
            } else {
                h
            }
        })
        .collect();
    let lab = Lab::up(prefix, specs)?;
    print_hosts(&lab);

    step("Starting an HTTP service on each backend");
    for b in ["backend1", "backend2"] {
        let addr = lab.host(b)?.ipv4().context("backend without IPv4")?;
        let listen = format!("{addr}:8080");
        spawn_logged(
            &lab,
            &dir,
            b,
            "service",
            &bins.lab,
            &["serve-http", "--listen", &listen, "--name", b],
        )?;
        println!("{b}: http://{listen}/");
    }

    step("Starting lb-gateway and lb-agent on node1..node3 (node1 has the highest VRRP priority)");
    for (i, node) in ["node1", "node2", "node3"].iter().enumerate() {
        let gw_cfg = dir.join(format!("{node}-gateway.toml"));
        std::fs::write(&gw_cfg, gateway_config(&lab, node)?)?;
        spawn_logged(
            &lab,
            &dir,
            node,
            "gateway",
            &bins.gateway,
            &["run", "--config", &gw_cfg.to_string_lossy()],
        )?;
        let agent_cfg = dir.join(format!("{node}-agent.toml"));
        std::fs::write(
            &agent_cfg,
            agent_config(&lab, &dir, node, 150 - 50 * i as u8)?,
        )?;
        let check = lab.exec(
            node,
            &bins.agent,
            &["check-config", &agent_cfg.to_string_lossy()],
        )?;
        print!("{check}");
        spawn_logged(
            &lab,
            &dir,
            node,
            "agent",
            &bins.agent,
            &["run", "--config", &agent_cfg.to_string_lossy()],
        )?;
    }
    let lbctl = |node: &str, args: &[&str]| -> anyhow::Result<String> {
        let sock = dir
            .join(format!("{node}.sock"))
            .to_string_lossy()
            .into_owned();
        let mut all = vec!["--socket", sock.as_str()];
        all.extend_from_slice(args);
        Ok(lab.exec(node, &bins.lbctl, &all)?)
    };
    wait_for(
        "node1 to be VRRP master with all three gateways healthy",
        Duration::from_secs(30),
        || {
            let status = lbctl("node1", &["-o", "json", "status"]).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
            Ok(all_master(&v) && healthy_count(&v) == 3)
        },
    )?;
    print!("{}", lbctl("node1", &["status"])?);
    let (v4, v6) = flow_tables_of_size(DEMO_FLOW_TABLE)?;
    println!(
        "connection tables in the kernel: {v4} x FLOWS4 and {v6} x FLOWS6 of {DEMO_FLOW_TABLE} entries ([xdp] flow_table_size; {} buckets of four)",
        lb_common::datapath::flow_buckets(DEMO_FLOW_TABLE)
    );
    anyhow::ensure!(
        v4 >= 3 && v6 >= 3,
        "the three agents' connection tables do not have the configured {DEMO_FLOW_TABLE} entries"
    );

    step(
        "Client: 30 HTTP requests to each VIP; the XDP program on node1 spreads them over the gateways",
    );
    for vip in [topology::VIP4, topology::VIP6] {
        let counts = requests(&lab, vip, 30)?;
        println!("{vip}: {}", describe(&counts));
    }

    step("Draining node2 (lbctl drain node2): new connections avoid it on every node");
    print!("{}", lbctl("node1", &["drain", "node2"])?);
    let counts = requests(&lab, topology::VIP4, 30)?;
    println!("{}: {}", topology::VIP4, describe(&counts));
    anyhow::ensure!(
        !counts.keys().any(|(gw, _)| gw == "node2"),
        "a drained gateway took new connections: {counts:?}"
    );
    print!("{}", lbctl("node1", &["enable", "node2"])?);

    step("Failover: SIGKILL node1's agent and cut its link; node2 takes the VIP");
    let started = std::time::Instant::now();
    lab.kill_processes("node1")?;
    lab.cut_link("node1")?;
    wait_for("node2 to be VRRP master", Duration::from_secs(10), || {
        let status = lbctl("node2", &["-o", "json", "status"]).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        Ok(all_master(&v))
    })?;
    let counts = wait_for_requests(&lab, topology::VIP4, 10, Duration::from_secs(15))?;
    println!(
        "the client reaches {} again {:.2} s after the kill: {}",
        topology::VIP4,
        started.elapsed().as_secs_f64(),
        describe(&counts)
    );
    print!("{}", lbctl("node2", &["status"])?);
    lab.restore_link("node1")?;

    println!("\nlogs and configs: {}", dir.display());
    if keep {
        println!(
            "\nlab {prefix} left up; `cargo xtask lab status --prefix {prefix}` shows it, `cargo xtask lab down --prefix {prefix}` removes it"
        );
        std::mem::forget(lab);
    } else {
        step("Tearing the lab down");
        lab.down()?;
        let left = lab::lab_namespaces(prefix)?;
        println!("namespaces left: {}", left.len());
    }
    Ok(())
}

struct Bins {
    agent: String,
    lbctl: String,
    gateway: String,
    lab: String,
}

fn spawn_logged(
    lab: &Lab,
    dir: &std::path::Path,
    host: &str,
    what: &str,
    program: &str,
    args: &[&str],
) -> anyhow::Result<()> {
    let log = std::fs::File::create(dir.join(format!("{host}-{what}.log")))?;
    let err = log.try_clone()?;
    lab.spawn(host, program, args, |c| {
        c.stdout(log).stderr(err);
    })?;
    Ok(())
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if ok()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Whether every VRRP instance in an `lbctl -o json status` is in the Master state.
fn all_master(status: &serde_json::Value) -> bool {
    status["vrrp"].as_array().is_some_and(|v| {
        !v.is_empty()
            && v.iter().all(|i| {
                i["state"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("master"))
            })
    })
}

fn healthy_count(status: &serde_json::Value) -> usize {
    status["gateways"].as_array().map_or(0, |g| {
        g.iter()
            .filter(|g| g["healthy"].as_bool() == Some(true))
            .count()
    })
}

fn gateway_config(lab: &Lab, node: &str) -> anyhow::Result<String> {
    let me = lab.host(node)?.ipv4().context("node without IPv4")?;
    let b1 = lab
        .host("backend1")?
        .ipv4()
        .context("backend without IPv4")?;
    let b2 = lab
        .host("backend2")?
        .ipv4()
        .context("backend without IPv4")?;
    Ok(format!(
        r#"[global]
access_log = true

[admin]
listen = "{me}:9901"

[listeners.api]
listen = "[::]:80"

[upstreams.app]
algorithm = "round_robin"
members = [{{ address = "{b1}:8080" }}, {{ address = "{b2}:8080" }}]

[[routes]]
name = "app"
upstream = "app"
match = {{ path_prefix = "/" }}
[routes.response_headers]
set = {{ x-gateway = "{node}" }}
"#
    ))
}

fn agent_config(
    lab: &Lab,
    dir: &std::path::Path,
    node: &str,
    priority: u8,
) -> anyhow::Result<String> {
    let me = lab.host(node)?;
    let v4 = me.ipv4().context("node without IPv4")?;
    let mut gateways = String::new();
    let mut peers = Vec::new();
    for n in ["node1", "node2", "node3"] {
        let h = lab.host(n)?;
        let a4 = h.ipv4().context("node without IPv4")?;
        let a6 = h.ipv6().context("node without IPv6")?;
        gateways.push_str(&format!(
            r#"
[[gateways]]
name = "{n}"
address = "{a4}"
address6 = "{a6}"
admin = "{a4}:9901"
probe = {{ kind = "http", port = 9901, path = "/health/ready", expect_status = 200, interval_ms = 500, timeout_ms = 400, rise = 1, fall = 2 }}
"#
        ));
        if n != node {
            peers.push(format!("\"{a4}:7900\""));
        }
    }
    let state = dir.join(format!("{node}-state"));
    let sock = dir.join(format!("{node}.sock"));
    // The cluster's shared token, one file for the three agents (as an operator would
    // copy one secret to every node).
    let token = dir.join("cluster.token");
    if !token.exists() {
        let mut raw = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
            .context("reading /dev/urandom")?;
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&token, format!("{hex}\n"))
            .with_context(|| format!("writing {}", token.display()))?;
    }
    Ok(format!(
        r#"[node]
name = "{node}"
state_dir = "{state}"

[[vrrp]]
name = "api-v4"
vrid = 51
interface = "eth0"
priority = {priority}
advert_interval_cs = 10
vips = ["{vip4}"]

[[vrrp]]
name = "api-v6"
vrid = 51
interface = "eth0"
priority = {priority}
advert_interval_cs = 10
vips = ["{vip6}"]
{gateways}
[cluster]
listen = "{v4}:7900"
peers = [{peers}]
sync_interval_ms = 2000
token_file = "{token}"

[admin]
socket = "{sock}"

[metrics]
listen = "{v4}:9902"

[xdp]
interface = "eth0"
mode = "native"
ports = [{{ port = 80 }}]
flow_table_size = {flows}
"#,
        flows = DEMO_FLOW_TABLE,
        state = state.display(),
        sock = sock.display(),
        token = token.display(),
        vip4 = topology::VIP4,
        vip6 = topology::VIP6,
        peers = peers.join(", "),
    ))
}

/// `n` HTTP GETs from the client to `vip`:80, each on a new connection; counts by
/// (gateway, backend).
fn requests(
    lab: &Lab,
    vip: IpAddr,
    n: usize,
) -> anyhow::Result<std::collections::BTreeMap<(String, String), usize>> {
    lab.in_host("client", move || {
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            let (gw, backend) = http_get(SocketAddr::new(vip, 80))?;
            *counts.entry((gw, backend)).or_insert(0) += 1;
        }
        Ok(counts)
    })?
}

fn wait_for_requests(
    lab: &Lab,
    vip: IpAddr,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<std::collections::BTreeMap<(String, String), usize>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match requests(lab, vip, n) {
            Ok(c) => return Ok(c),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

fn describe(counts: &std::collections::BTreeMap<(String, String), usize>) -> String {
    let mut by_gw = std::collections::BTreeMap::<&str, usize>::new();
    let mut by_backend = std::collections::BTreeMap::<&str, usize>::new();
    for ((gw, b), n) in counts {
        *by_gw.entry(gw).or_default() += n;
        *by_backend.entry(b).or_default() += n;
    }
    format!("by gateway {by_gw:?}, by backend {by_backend:?}")
}

/// One `GET /` with `Connection: close`; returns the `x-gateway` header and the body.
fn http_get(addr: SocketAddr) -> anyhow::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no end of headers")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "status: {}",
        head.lines().next().unwrap_or("")
    );
    let gw = head
        .lines()
        .find_map(|l| l.strip_prefix("x-gateway: "))
        .unwrap_or("?")
        .to_owned();
    Ok((gw, body.trim().to_owned()))
}

/// The demo's backend: answers every request with its name.
fn serve_http(listen: SocketAddr, name: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let name = name.to_owned();
        std::thread::spawn(move || {
            if s.set_read_timeout(Some(Duration::from_secs(10))).is_err() {
                return;
            }
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                // Serve every request on the connection (keep-alive from the gateway).
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let end = buf
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(0, |p| p + 4);
                buf.drain(..end);
                let body = format!("{name}\n");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}
