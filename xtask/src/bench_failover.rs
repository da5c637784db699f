//! `cargo xtask bench failover [--json FILE]`: how long the VIP is gone when its Master
//! dies or hands over, for lb-agent and for keepalived configured alike, in the same run.
//!
//! A lab of network namespaces (`lbbfo-*`, removed at the end and on a crash of the
//! previous run): a client and two nodes on one bridge. node1 (priority 200, preempt) and
//! node2 (priority 100) run one VRRPv3 virtual router for one IPv4 VIP with an
//! advertisement interval of [`ADVERT_CS`] centiseconds.
//!
//! For each implementation, [`TRIALS`] trials of each kind (`LB_BENCH_TRIALS` overrides):
//! - **crash**: cut node1's link, then SIGKILL every process of node1's daemon; the event
//!   is the cut;
//! - **graceful**: SIGTERM node1's daemon (priority-0 advert); the event is the signal.
//!
//! Two measures per trial:
//! - **client outage**: the client pings the VIP every [`PING_INTERVAL`] s; the outage is
//!   the longest gap between two replies from the last reply before the event on
//!   (`ping -D` timestamps; 2 ms means no reply was missed);
//! - **ownership**: from the event to node2's `ip monitor` reporting the VIP on its eth0.
//!
//! After each trial node1 comes back (link restored, daemon restarted) and preempts.
//! Then a **soak**: both daemons run for [`SOAK`] (`LB_BENCH_SOAK_SECS` overrides) while
//! one busy thread per core keeps every core loaded; any VIP takeover by node2 is a false
//! takeover.
//!
//! Both run at real-time priority (the agent by default, keepalived with
//! `max_auto_priority`). Median and p99 are printed and, with `--json`, written as JSON;
//! `LB_BENCH_KEEP=1` keeps the daemons' logs; `LB_BENCH_IMPL=agent|keepalived` and
//! `LB_BENCH_KIND=crash|graceful` run only part of it (for experiments), `LB_BENCH_VERBOSE=1`
//! says where each trial's longest gap lies, `LB_BENCH_PRIORITIES=254,250` sets node1's and
//! node2's priorities (default 200,100). Needs root, keepalived and ping; builds
//! lb-agent in release first.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

/// Advertisement interval of both implementations: 30 ms.
pub const ADVERT_CS: u16 = 3;
/// Trials per kind and implementation (`LB_BENCH_TRIALS` overrides).
pub const TRIALS: usize = 20;
/// Client probe period.
pub const PING_INTERVAL: &str = "0.002";
/// Default soak duration.
pub const SOAK: Duration = Duration::from_secs(120);

const PREFIX: &str = "lbbfo";
const VIP: &str = "10.66.0.100";
const HOSTS: [(&str, &str); 3] = [
    ("client", "10.66.0.10"),
    ("node1", "10.66.0.11"),
    ("node2", "10.66.0.12"),
];

/// The VRRP implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Impl {
    Agent,
    Keepalived,
}

/// Median and p99 of a series, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub samples: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct ImplResult {
    implementation: Impl,
    crash_outage: Summary,
    crash_ownership: Summary,
    graceful_outage: Summary,
    graceful_ownership: Summary,
    soak_secs: u64,
    soak_false_takeovers: usize,
    discarded_trials: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    advert_interval_ms: u32,
    priorities: (u8, u8),
    trials_per_kind: usize,
    results: Vec<ImplResult>,
}

fn summary(mut ms: Vec<f64>) -> Summary {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            return f64::NAN;
        }
        let i = ((ms.len() as f64 - 1.0) * q).round() as usize;
        ms.get(i).copied().unwrap_or(f64::NAN)
    };
    Summary {
        samples: ms.len(),
        median_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn ns(host: &str) -> String {
    format!("{PREFIX}-{host}")
}

fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    sh("ip", args)
}

fn in_ns(host: &str, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", ns(host)))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    c
}

/// Kills every process in the namespace of `host`.
fn kill_all(host: &str) -> anyhow::Result<()> {
    let pids = ip(&["netns", "pids", &ns(host)]).unwrap_or_default();
    for pid in pids.split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            sh("kill", &["-9", &pid.to_string()]).ok();
        }
    }
    Ok(())
}

/// The namespaces; torn down on drop.
struct Lab;

impl Lab {
    fn up() -> anyhow::Result<Lab> {
        teardown();
        let lab = Lab;
        let sw = ns("sw");
        ip(&["netns", "add", &sw])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, (host, addr)) in HOSTS.iter().enumerate() {
            let n = ns(host);
            let port = format!("p-{host}");
            ip(&["netns", "add", &n])?;
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &n,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            let mac = format!("02:66:00:00:00:{:02x}", i + 1);
            ip(&["-n", &n, "link", "set", "eth0", "address", &mac])?;
            ip(&[
                "-n",
                &n,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &n, "link", "set", "eth0", "up"])?;
            ip(&["-n", &n, "link", "set", "lo", "up"])?;
        }
        wait_for_quiet_rtnl()?;
        Ok(lab)
    }

    fn cut(&self, host: &str) -> anyhow::Result<()> {
        ip(&["-n", &ns("sw"), "link", "set", &format!("p-{host}"), "down"]).map(drop)
    }

    fn restore(&self, host: &str) -> anyhow::Result<()> {
        ip(&["-n", &ns("sw"), "link", "set", &format!("p-{host}"), "up"]).map(drop)
    }

    fn holds_vip(&self, host: &str) -> bool {
        ip(&["-n", &ns(host), "-o", "addr", "show", "dev", "eth0"])
            .map(|out| out.contains(&format!(" {VIP}/")))
            .unwrap_or(false)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        teardown();
    }
}

fn teardown() {
    for (host, _) in HOSTS {
        kill_all(host).ok();
        ip(&["netns", "del", &ns(host)]).ok();
    }
    ip(&["netns", "del", &ns("sw")]).ok();
}

/// One VRRP daemon on a node.
struct Daemon {
    child: Child,
    host: &'static str,
}

impl Daemon {
    fn start(which: Impl, host: &'static str, dir: &Path, agent: &Path) -> anyhow::Result<Daemon> {
        let (p1, p2) = priorities();
        let priority = if host == "node1" { p1 } else { p2 };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{host}-{which:?}.log")))?;
        let mut cmd = match which {
            Impl::Agent => {
                let cfg = dir.join(format!("{host}.toml"));
                std::fs::write(
                    &cfg,
                    format!(
                        "[node]\nname = \"{host}\"\nstate_dir = \"{}\"\n[admin]\nsocket = \"{}\"\n\
                         [[vrrp]]\nname = \"v\"\nvrid = 66\ninterface = \"eth0\"\npriority = {priority}\n\
                         advert_interval_cs = {ADVERT_CS}\npreempt = true\nvips = [\"{VIP}\"]\n",
                        dir.join(format!("{host}-state")).display(),
                        dir.join(format!("{host}.sock")).display()
                    ),
                )?;
                in_ns(
                    host,
                    &agent.display().to_string(),
                    &["run", "--config", &cfg.display().to_string()],
                )
            }
            Impl::Keepalived => {
                let cfg = dir.join(format!("{host}-keepalived.conf"));
                std::fs::write(
                    &cfg,
                    format!(
                        "global_defs {{\n  router_id {host}\n  vrrp_version 3\n  max_auto_priority\n}}\n\
                         vrrp_instance v {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 66\n  \
                         priority {priority}\n  advert_int {}\n  virtual_ipaddress {{\n    {VIP}/32\n  }}\n}}\n",
                        f64::from(ADVERT_CS) / 100.0
                    ),
                )?;
                let p = |n: &str| dir.join(format!("{host}-{n}.pid")).display().to_string();
                // A killed keepalived leaves its pid files; a recycled pid would make the
                // next start think it is already running.
                for n in ["keepalived", "vrrp"] {
                    std::fs::remove_file(p(n)).ok();
                }
                in_ns(
                    host,
                    "keepalived",
                    &[
                        "--dont-fork",
                        "--log-console",
                        "--vrrp",
                        "--use-file",
                        &cfg.display().to_string(),
                        "--pid",
                        &p("keepalived"),
                        "--vrrp_pid",
                        &p("vrrp"),
                    ],
                )
            }
        };
        let child = cmd
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {which:?} on {host}"))?;
        Ok(Daemon { child, host })
    }

    /// SIGKILL of everything in the node (keepalived's VRRP runs in a child process).
    fn crash(mut self) -> anyhow::Result<()> {
        kill_all(self.host)?;
        self.child.wait()?;
        Ok(())
    }

    fn terminate(mut self) -> anyhow::Result<()> {
        sh("kill", &["-TERM", &self.child.id().to_string()])?;
        self.child.wait()?;
        // Anything left (keepalived's child on a slow exit) goes too.
        kill_all(self.host)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Waits until link changes take effect at once again. Namespaces deleted shortly before
/// (a previous run, the test suite) are dismantled by the kernel in the background while
/// holding RTNL, which can stall every address and link change for seconds: a benchmark
/// started then would measure that, not VRRP.
fn wait_for_quiet_rtnl() -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quick = 0;
    while quick < 5 {
        let start = Instant::now();
        ip(&["-n", &ns("sw"), "link", "set", "br0", "up"])?;
        quick = if start.elapsed() < Duration::from_millis(20) {
            quick + 1
        } else {
            0
        };
        if Instant::now() > deadline {
            bail!("link changes stay slow (RTNL busy) after 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Whether the client gets an answer from the VIP (one ping).
fn client_reaches_vip() -> bool {
    in_ns("client", "ping", &["-n", "-q", "-c", "1", "-W", "1", VIP])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out after {secs} s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// `ping -D` from the client; stopped with SIGINT (which flushes its output).
struct Pinger(Child);

impl Pinger {
    fn start() -> anyhow::Result<Pinger> {
        let child = in_ns(
            "client",
            "ping",
            &["-n", "-D", "-i", PING_INTERVAL, "-W", "1", VIP],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ping")?;
        Ok(Pinger(child))
    }

    /// Reply timestamps (unix seconds).
    fn stop(mut self) -> anyhow::Result<Vec<f64>> {
        sh("kill", &["-INT", &self.0.id().to_string()])?;
        let out =
            std::mem::replace(&mut self.0, Command::new("true").spawn()?).wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect())
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Watches node2's eth0 addresses; sends the receipt time of every line naming the VIP.
struct Monitor {
    child: Child,
    seen: mpsc::Receiver<f64>,
}

impl Monitor {
    fn start() -> anyhow::Result<Monitor> {
        let mut child = in_ns("node2", "ip", &["-o", "monitor", "address", "dev", "eth0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ip monitor")?;
        let out = child.stdout.take().context("ip monitor stdout")?;
        let (tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains(&format!(" {VIP}/"))
                    && !line.starts_with("Deleted")
                    && tx.send(unix_now()).is_err()
                {
                    return;
                }
            }
        });
        Ok(Monitor { child, seen })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Crash,
    Graceful,
}

/// One trial; node1's daemon is gone afterwards. Returns (client outage ms, ownership ms).
fn trial(lab: &Lab, which: Impl, kind: Kind, node1: Daemon) -> anyhow::Result<(f64, f64)> {
    let monitor = Monitor::start()?;
    let pinger = Pinger::start()?;
    std::thread::sleep(Duration::from_millis(200));
    // The event: the moment node1 is gone from the segment (crash: its link is cut, its
    // daemon killed right after) or its daemon is told to stop (graceful).
    let event = match kind {
        Kind::Crash => {
            lab.cut("node1")?;
            let event = unix_now();
            node1.crash()?;
            event
        }
        Kind::Graceful => {
            let event = unix_now();
            node1.terminate()?;
            event
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let owned = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let t = monitor
            .seen
            .recv_timeout(left)
            .context("node2 never took the VIP")?;
        // Only a change after the event counts (a late removal/addition from the previous
        // round would otherwise show up here).
        if t >= event {
            break t;
        }
    };
    // Let the client see it.
    std::thread::sleep(Duration::from_millis(300));
    let mut replies = pinger.stop()?;
    replies.sort_by(f64::total_cmp);
    // The longest silence between two replies, from the last reply before the event on
    // (a graceful Master may keep answering for a moment after the event).
    let Some(first) = replies.iter().rposition(|t| *t < event) else {
        bail!("{which:?} {kind:?}: the client got no reply before the event");
    };
    if replies.len() <= first + 1 {
        bail!("{which:?} {kind:?}: the client got no reply after the event");
    }
    let (gap, at) = replies[first..]
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .fold((0.0, event), |m, g| if g.0 > m.0 { g } else { m });
    if std::env::var_os("LB_BENCH_VERBOSE").is_some() {
        println!(
            "    longest gap starts {:+.1} ms after the event; ownership {:+.1} ms",
            (at - event) * 1000.0,
            (owned - event) * 1000.0
        );
    }
    Ok((gap * 1000.0, (owned - event) * 1000.0))
}

/// Back to the start after a trial: node1's link up, leftovers gone, its daemon restarted
/// and preempting, and the client answered.
fn recover(lab: &Lab, which: Impl, dir: &Path, agent: &Path) -> anyhow::Result<Daemon> {
    kill_all("node1")?;
    lab.restore("node1")?;
    // A killed daemon leaves the VIP on node1; keepalived does not clear it at start.
    ip(&[
        "-n",
        &ns("node1"),
        "addr",
        "del",
        &format!("{VIP}/32"),
        "dev",
        "eth0",
    ])
    .ok();
    let node1 = Daemon::start(which, "node1", dir, agent)?;
    wait_for("node1 to preempt", 20, || {
        lab.holds_vip("node1") && !lab.holds_vip("node2")
    })?;
    // The client must be answered before the next trial: when other work holds the
    // kernel's RTNL lock (namespaces being dismantled), address changes lag for seconds.
    wait_for("the client to reach the VIP", 20, client_reaches_vip)?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(node1)
}

fn soak(lab: &Lab, secs: u64) -> anyhow::Result<usize> {
    let stop = Arc::new(AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let burners: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x: u64 = 1;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let monitor = Monitor::start()?;
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        b.join().ok();
    }
    let takeovers = monitor.seen.try_iter().count();
    if !lab.holds_vip("node1") || lab.holds_vip("node2") {
        return Ok(takeovers.max(1));
    }
    Ok(takeovers)
}

fn run_impl(
    lab: &Lab,
    which: Impl,
    dir: &Path,
    agent: &Path,
    trials: usize,
    soak_secs: u64,
) -> anyhow::Result<ImplResult> {
    println!("\n{which:?}: {trials} crash + {trials} graceful trials, then {soak_secs} s soak");
    let node2 = Daemon::start(which, "node2", dir, agent)?;
    std::thread::sleep(Duration::from_millis(100));
    let mut node1 = Daemon::start(which, "node1", dir, agent)?;
    wait_for("node1 to hold the VIP", 20, || {
        lab.holds_vip("node1") && !lab.holds_vip("node2")
    })?;
    // Also wait for the client to be answered: right after a previous run's namespaces
    // went away the kernel may hold RTNL for seconds, and nothing is measured until then.
    wait_for("the client to reach the VIP", 20, client_reaches_vip)?;
    let mut series = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut discarded = 0;
    for (k, kind) in [Kind::Crash, Kind::Graceful].into_iter().enumerate() {
        if !selected("LB_BENCH_KIND", &format!("{kind:?}")) {
            continue;
        }
        let mut i = 0;
        while i < trials {
            let result = trial(lab, which, kind, node1);
            node1 = recover(lab, which, dir, agent)?;
            match result {
                Ok((outage, ownership)) => {
                    println!(
                        "  {kind:?} #{i:<2} outage {outage:7.1} ms  ownership {ownership:7.1} ms"
                    );
                    series[2 * k].push(outage);
                    series[2 * k + 1].push(ownership);
                    i += 1;
                }
                // A disturbed trial (the harness, not VRRP: e.g. the client saw nothing
                // before the event) is reported and run again, at most 5 times in all.
                Err(e) if discarded < 5 => {
                    discarded += 1;
                    println!("  {kind:?} #{i:<2} discarded: {e:#}");
                }
                Err(e) => return Err(e.context("too many disturbed trials")),
            }
        }
    }
    let false_takeovers = soak(lab, soak_secs)?;
    println!("  soak: {false_takeovers} false takeover(s) in {soak_secs} s with every core busy");
    drop(node1);
    drop(node2);
    kill_all("node1")?;
    kill_all("node2")?;
    for h in ["node1", "node2"] {
        ip(&[
            "-n",
            &ns(h),
            "addr",
            "del",
            &format!("{VIP}/32"),
            "dev",
            "eth0",
        ])
        .ok();
    }
    let [a, b, c, d] = series;
    Ok(ImplResult {
        implementation: which,
        crash_outage: summary(a),
        crash_ownership: summary(b),
        graceful_outage: summary(c),
        graceful_ownership: summary(d),
        soak_secs,
        soak_false_takeovers: false_takeovers,
        discarded_trials: discarded,
    })
}

/// node1's and node2's priorities: 200 and 100, or `LB_BENCH_PRIORITIES=P1,P2`. A Backup
/// waits Skew_Time = (256 - P2) / 256 advert intervals after a priority-0 advert, so the
/// graceful ownership time depends on P2.
fn priorities() -> (u8, u8) {
    std::env::var("LB_BENCH_PRIORITIES")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once(',')?;
            let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (a > b && b >= 1 && a <= 254).then_some((a, b))
        })
        .unwrap_or((200, 100))
}

/// Whether `name` is selected by the environment variable `var` (unset: everything;
/// otherwise a comma-separated list of names, case-insensitive).
fn selected(var: &str, name: &str) -> bool {
    std::env::var(var).map_or(true, |list| {
        list.split(',')
            .any(|item| item.trim().eq_ignore_ascii_case(name))
    })
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        },
        PathBuf::from,
    )
}

/// Runs the benchmark; see the module documentation.
pub fn run(json: Option<&Path>) -> anyhow::Result<()> {
    if sh("id", &["-u"])?.trim() != "0" {
        bail!("bench failover needs root (network namespaces, raw sockets)");
    }
    for tool in ["keepalived", "ping", "nsenter"] {
        if sh("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            bail!("bench failover needs {tool} (cargo xtask setup installs it)");
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "lb-userspace",
            "--bin",
            "lb-agent",
        ])
        .status()
        .context("building lb-agent")?;
    if !status.success() {
        bail!("building lb-agent failed");
    }
    let agent = target_dir().join("release").join("lb-agent");
    let soak_secs = std::env::var("LB_BENCH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SOAK.as_secs());
    let trials = std::env::var("LB_BENCH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TRIALS);
    let dir = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let lab = Lab::up()?;
    let mut results = Vec::new();
    for which in [Impl::Agent, Impl::Keepalived] {
        if !selected("LB_BENCH_IMPL", &format!("{which:?}")) {
            continue;
        }
        results.push(run_impl(&lab, which, &dir, &agent, trials, soak_secs)?);
    }
    drop(lab);
    if std::env::var_os("LB_BENCH_KEEP").is_some() {
        println!("logs kept in {}", dir.display());
    } else {
        std::fs::remove_dir_all(&dir).ok();
    }
    println!(
        "\nadvert interval {} ms, priorities {} (node1) and {} (node2), {trials} trials per kind (ms: median / p99)",
        u32::from(ADVERT_CS) * 10,
        priorities().0,
        priorities().1
    );
    println!(
        "{:<11} {:>17} {:>17} {:>17} {:>17} {:>6} {:>10}",
        "",
        "crash outage",
        "crash ownership",
        "graceful outage",
        "graceful owner.",
        "false",
        "discarded"
    );
    for r in &results {
        let f = |s: &Summary| format!("{:.1} / {:.1}", s.median_ms, s.p99_ms);
        println!(
            "{:<11} {:>17} {:>17} {:>17} {:>17} {:>6} {:>10}",
            format!("{:?}", r.implementation),
            f(&r.crash_outage),
            f(&r.crash_ownership),
            f(&r.graceful_outage),
            f(&r.graceful_ownership),
            r.soak_false_takeovers,
            r.discarded_trials
        );
    }
    if let Some(path) = json {
        let report = Report {
            advert_interval_ms: u32::from(ADVERT_CS) * 10,
            priorities: priorities(),
            trials_per_kind: trials,
            results,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
