//! Helpers shared by the `agent_*` lab tests (included with `#[path]`): a lab for VRRP
//! (no VIP on loopback: VRRP puts it on eth0), agent and keepalived processes with logs,
//! config files, polling with a deadline, and `lbctl`.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "test helpers: a panic is the failure report"
)]

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::lab::{HostSpec, Lab};

/// A built binary of the workspace (`cargo test --workspace` builds them next to the
/// test executables' `deps` directory).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build -p lb-userspace --bins` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        // Leftovers of a crashed run with the same pid are harmless to remove.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("LB_KEEP_SCRATCH").is_none() {
            let _ignored = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A lab of `client` and `node1..nodeN` on 10.`net`.0.0/24 and fd`net`::/64: client .10,
/// node i .1i.
pub fn vrrp_lab(prefix: &str, net: u8, nodes: u8) -> Lab {
    let mut hosts = vec![
        HostSpec::new("client")
            .addr(&format!("10.{net}.0.10/24"))
            .unwrap()
            .addr(&format!("fd{net}::10/64"))
            .unwrap(),
    ];
    for n in 1..=nodes {
        hosts.push(
            HostSpec::new(&format!("node{n}"))
                .addr(&format!("10.{net}.0.{}/24", 10 + n))
                .unwrap()
                .addr(&format!("fd{net}::{:x}/64", 0x10 + n))
                .unwrap(),
        );
    }
    Lab::up(prefix, hosts).unwrap()
}

pub fn node_v4(net: u8, n: u8) -> IpAddr {
    format!("10.{net}.0.{}", 10 + n).parse().unwrap()
}

pub fn node_v6(net: u8, n: u8) -> IpAddr {
    format!("fd{net}::{:x}", 0x10 + n).parse().unwrap()
}

pub fn vip_v4(net: u8) -> IpAddr {
    format!("10.{net}.0.100").parse().unwrap()
}

pub fn vip_v6(net: u8) -> IpAddr {
    format!("fd{net}::100").parse().unwrap()
}

/// A child process killed (SIGKILL) on drop, with its output in a log file.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap()
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for the exit; returns its status code.
    pub fn sigterm(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Spawns `program args` inside `host`, output appended to `log`.
pub fn spawn_in(
    lab: &Lab,
    host: &str,
    name: &str,
    program: &Path,
    args: &[&str],
    log: PathBuf,
) -> Proc {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let err = out.try_clone().unwrap();
    let child = lab
        .spawn(host, program.to_str().unwrap(), args, |c| {
            c.stdout(Stdio::from(out)).stderr(Stdio::from(err));
            c.env(
                "RUST_LOG",
                "info,lb_userspace=debug,netlink_packet_route=error",
            );
        })
        .unwrap();
    Proc {
        child: Some(child),
        log,
        name: name.to_owned(),
    }
}

/// One `[[vrrp]]` instance of a test agent.
#[derive(Clone, Debug)]
pub struct Instance {
    pub name: &'static str,
    pub vrid: u8,
    pub priority: u8,
    pub advert_cs: u16,
    pub preempt: bool,
    pub vips: Vec<IpAddr>,
}

/// An agent configuration for `node` in `dir`; returns (config file, admin socket).
pub struct AgentFiles {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

pub fn agent_config(
    scratch: &Scratch,
    node: &str,
    instances: &[Instance],
    extra: &str,
) -> AgentFiles {
    let socket = scratch.path(&format!("{node}.sock"));
    let state_dir = scratch.path(&format!("{node}-state"));
    let mut text = format!(
        "[node]\nname = \"{node}\"\nstate_dir = \"{}\"\n\n[admin]\nsocket = \"{}\"\n\n",
        state_dir.display(),
        socket.display()
    );
    for i in instances {
        let vips: Vec<String> = i.vips.iter().map(|v| format!("\"{v}\"")).collect();
        writeln!(
            text,
            "[[vrrp]]\nname = \"{}\"\nvrid = {}\ninterface = \"eth0\"\npriority = {}\nadvert_interval_cs = {}\npreempt = {}\nvips = [{}]\ngarp_repeat_delay_ms = 1000\n",
            i.name,
            i.vrid,
            i.priority,
            i.advert_cs,
            i.preempt,
            vips.join(", ")
        )
        .unwrap();
    }
    text.push_str(extra);
    let config = scratch.path(&format!("{node}.toml"));
    std::fs::write(&config, text).unwrap();
    AgentFiles {
        config,
        socket,
        state_dir,
    }
}

/// Starts `lb-agent run` in `host`.
pub fn start_agent(lab: &Lab, scratch: &Scratch, host: &str, files: &AgentFiles) -> Proc {
    let log = scratch.path(&format!("{host}-agent.log"));
    let p = spawn_in(
        lab,
        host,
        &format!("lb-agent@{host}"),
        &bin("lb-agent"),
        &["run", "--config", files.config.to_str().unwrap()],
        log,
    );
    wait_until(&format!("agent on {host} serves its socket"), 10, || {
        lbctl(&files.socket, &["status"]).0 == 0
    });
    p
}

/// Runs `lbctl --socket SOCKET args`; returns (exit code, stdout, stderr).
pub fn lbctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("lbctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lbctl -o json args`, parsed; panics unless the exit code is `code`.
pub fn lbctl_json(socket: &Path, args: &[&str], code: i32) -> serde_json::Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let (c, out, err) = lbctl(socket, &all);
    assert_eq!(c, code, "lbctl {args:?}: stdout {out} stderr {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lbctl {args:?} output {out:?}: {e}"))
}

/// The VRRP state of instance `name` as the agent reports it.
pub fn agent_state(socket: &Path, name: &str) -> Option<String> {
    let (code, out, _) = lbctl(socket, &["-o", "json", "status"]);
    if code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["vrrp"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
        .and_then(|i| i["state"].as_str().map(str::to_owned))
}

/// Polls `f` every 20 ms until it holds; panics after `secs` seconds naming `what`.
/// CPU time (user + system, seconds) of process `pid` so far, from `/proc`.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `host` has `addr` on eth0.
pub fn has_addr(lab: &Lab, host: &str, addr: IpAddr) -> bool {
    let out = lab
        .exec(host, "ip", &["-o", "addr", "show", "dev", "eth0"])
        .unwrap_or_default();
    let needle = format!(" {addr}/");
    out.contains(&needle)
}

/// Hosts among `hosts` that hold `addr`.
pub fn holders(lab: &Lab, hosts: &[&str], addr: IpAddr) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| has_addr(lab, h, addr))
        .map(|h| (*h).to_owned())
        .collect()
}

/// Opens a TCP listener on `port` inside each host that answers with the host's name,
/// served by a thread of this process.
pub fn name_servers(lab: &Lab, hosts: &[&str], port: u16) {
    for h in hosts {
        let listener: TcpListener = lab
            // The dual-stack wildcard, so the VIP is served whenever it is on the host.
            .in_host(h, move || TcpListener::bind(("::", port)))
            .unwrap()
            .unwrap();
        let name = (*h).to_owned();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let _ignored = s.write_all(name.as_bytes());
            }
        });
    }
}

/// From `client`: connects to `addr:port` and reads the serving host's name.
pub fn who_answers(lab: &Lab, client: &str, addr: IpAddr, port: u16) -> Option<String> {
    lab.in_host(client, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(addr, port), Duration::from_millis(300))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .ok()
    .flatten()
}

/// A keepalived VRRPv3 instance block.
pub fn keepalived_instance(i: &Instance) -> String {
    let vips: Vec<String> = i
        .vips
        .iter()
        .map(|v| match v {
            IpAddr::V4(a) => format!("        {a}/32"),
            IpAddr::V6(a) => format!("        {a}/128"),
        })
        .collect();
    let v6 = i.vips.iter().any(IpAddr::is_ipv6);
    format!(
        "vrrp_instance {} {{\n    state BACKUP\n    interface eth0\n    virtual_router_id {}\n    priority {}\n    advert_int {}\n{}{}    virtual_ipaddress {{\n{}\n    }}\n}}\n",
        i.name,
        i.vrid,
        i.priority,
        f64::from(i.advert_cs) / 100.0,
        if i.preempt { "" } else { "    nopreempt\n" },
        if v6 { "    native_ipv6\n" } else { "" },
        vips.join("\n")
    )
}

/// Starts keepalived (VRRP only, foreground) inside `host` with `instances`.
pub fn start_keepalived(lab: &Lab, scratch: &Scratch, host: &str, instances: &[Instance]) -> Proc {
    let mut conf = String::from(
        "global_defs {\n    router_id lbtest\n    vrrp_version 3\n    vrrp_garp_master_delay 1\n}\n",
    );
    for i in instances {
        conf.push_str(&keepalived_instance(i));
    }
    let file = scratch.path(&format!("{host}-keepalived.conf"));
    std::fs::write(&file, conf).unwrap();
    let pid = scratch.path(&format!("{host}-keepalived.pid"));
    let vrrp_pid = scratch.path(&format!("{host}-keepalived-vrrp.pid"));
    let log = scratch.path(&format!("{host}-keepalived.log"));
    spawn_in(
        lab,
        host,
        &format!("keepalived@{host}"),
        Path::new("/usr/sbin/keepalived"),
        &[
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "--use-file",
            file.to_str().unwrap(),
            "--pid",
            pid.to_str().unwrap(),
            "--vrrp_pid",
            vrrp_pid.to_str().unwrap(),
        ],
        log,
    )
}

/// A tiny HTTP server inside `host` on `port`: `GET /health/ready` answers 200 while
/// `ready` holds, 503 otherwise (a stand-in for lb-gateway's readiness endpoint).
pub fn fake_ready_endpoint(
    lab: &Lab,
    host: &str,
    port: u16,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let listener = lab
        .in_host(host, move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ignored = s.read(&mut buf);
            let status = if ready.load(std::sync::atomic::Ordering::SeqCst) {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ignored = s.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
}
