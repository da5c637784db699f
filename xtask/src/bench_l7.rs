//! `cargo xtask bench l7 [--json FILE]`: lb-gateway against NGINX and HAProxy on one machine.
//!
//! Setup, identical for the three proxies:
//!
//! - **upstream**: one NGINX process (`master_process off`, one worker) answering every request
//!   with `return 200 "hello world\n"` (a 12-byte body), keep-alive, no access log;
//! - **cores**: the load generator and the upstream pinned to CPU 0 with `taskset`, the proxy
//!   under test pinned to CPU 1 (the machine has two);
//! - **proxies**: lb-gateway as operators install it (`cargo xtask dist`: fat LTO and
//!   profile-guided optimisation; `LB_BENCH_NO_PGO=1` leaves PGO out) with one worker thread
//!   (`--worker-threads 1`), NGINX with `worker_processes 1`, HAProxy with `nbthread 1`;
//!   each with the same routes (an exact-path fixed answer, two prefix routes to the
//!   upstream, a default), forwarding headers, request
//!   ids generated, sent upstream and returned, metrics on (lb-gateway's Prometheus registry,
//!   NGINX `stub_status`, HAProxy's Prometheus exporter), keep-alive to clients and to the
//!   upstream;
//! - **cases**: HTTP/1.1 saturation (`wrk -t1 -c50`), the same with the access log on (to a
//!   file; each proxy writes lb-gateway's JSON line, same keys, and the bench checks that it
//!   did: see [`NGINX_LOG_FORMAT`]), h2c (`h2load -t1 -c50 -m1`), TLS 1.3 (`wrk -t1 -c50`
//!   over https; a self-signed P-256 certificate made with the `openssl` CLI at bench time),
//!   and CPU use at a fixed 20,000 req/s (`h2load --h1 -t1 -c50 --rps 400`, i.e. 400 req/s
//!   per connection);
//! - **measures**: requests per second and p99 latency from wrk (h2load reports the mean
//!   request time instead), and the proxy's CPU use: the utime + stime of all its processes
//!   (/proc/PID/stat) over the run divided by the run's wall time, 100% = one core, and from
//!   both the CPU time per request (the figure other load on the machine disturbs least),
//!   split into user space (utime) and the kernel's work on the proxy's behalf (stime: its
//!   system calls and the network stack, where most of a proxied request's time goes);
//! - each case is run [`RUNS`] times, the proxies interleaved within each round (each round
//!   starts with the next proxy, so none is always first), after a warm-up; the medians are
//!   reported, with the ratios of lb-gateway to NGINX and HAProxy, and the same ratios round
//!   by round (a round's runs follow each other, so the machine's drift between rounds, which
//!   can exceed the differences measured, cancels out of them).
//!
//! All traffic goes to 127.0.0.1. Every run is bounded in time (`-d`/`-D` and a `timeout`
//! wrapper), every wait has a deadline, and every process started is stopped at the end (also
//! on error). `LB_BENCH_SECONDS` (default 10) sets the length of one run and `LB_BENCH_CASES`
//! (comma-separated: `http1,access_log,h2c,tls13,fixed_rate`) limits the cases, for quick
//! iterations; the numbers in BENCHMARKS.md use the defaults.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::shell;

/// Measured runs per case and proxy; the median is reported.
pub const RUNS: usize = 3;
/// Connections of the load generator.
const CONNECTIONS: u32 = 50;
/// The fixed rate of the CPU case, requests per second (all connections together).
const FIXED_RATE: u32 = 20_000;
/// Unmeasured load before the measured runs of a case.
const WARM_UP: Duration = Duration::from_secs(2);
/// Longest wait for a process to listen or to exit.
const PROCESS_DEADLINE: Duration = Duration::from_secs(15);
/// The CPU of the load generator and upstream, and that of the proxy.
const LOAD_CPU: &str = "0";
const PROXY_CPU: &str = "1";
/// With the access log on, NGINX and HAProxy log what lb-gateway does (its JSON access line:
/// same keys, the closest each has to every value), NGINX buffered as lb-gateway is (64 KiB
/// or 100 ms; HAProxy writes a line at a time to stdout, it has no buffer for it).
const NGINX_LOG_FORMAT: &str = r#"{"timestamp":"$time_iso8601","target":"access_log","request_id":"$request_id","trace_id":"$http_traceparent","listener":"$server_addr:$server_port","client_addr":"$remote_addr:$remote_port","method":"$request_method","host":"$host","path":"$request_uri","protocol":"$server_protocol","status":$status,"route":"$route","upstream":"$proxy_host","member":"$upstream_addr","attempts":"$upstream_status","bytes_sent":$bytes_sent,"complete":"$request_completion","duration_ms":$request_time,"ttfb_ms":"$upstream_header_time","error":null,"error_origin":null}"#;
/// HAProxy's, `%{+E}o` escaping `"` and `\` in every value; captures 0 and 1 are the
/// `traceparent` and `Host` headers.
const HAPROXY_LOG_FORMAT: &str = r#"%{+E}o{\"timestamp\":\"%tr\",\"target\":\"access_log\",\"request_id\":\"%ID\",\"trace_id\":\"%[capture.req.hdr(0)]\",\"listener\":\"%fi:%fp\",\"client_addr\":\"%ci:%cp\",\"method\":\"%HM\",\"host\":\"%[capture.req.hdr(1)]\",\"path\":\"%HP\",\"protocol\":\"%HV\",\"status\":%ST,\"route\":\"%b\",\"upstream\":\"%b\",\"member\":\"%s\",\"attempts\":%rc,\"bytes_sent\":%B,\"complete\":\"%tsc\",\"duration_ms\":%Ta,\"ttfb_ms\":%Tr,\"error\":null,\"error_origin\":null}"#;

/// The request path (routed by prefix to the upstream in every proxy).
const PATH: &str = "/api/hello";

/// The proxies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proxy {
    LbGateway,
    Nginx,
    Haproxy,
}

impl Proxy {
    const ALL: [Proxy; 3] = [Proxy::LbGateway, Proxy::Nginx, Proxy::Haproxy];

    fn name(self) -> &'static str {
        match self {
            Self::LbGateway => "lb-gateway",
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
        }
    }
}

/// The cases measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    Http1,
    AccessLog,
    H2c,
    Tls13,
    FixedRate,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Http1,
        Case::AccessLog,
        Case::H2c,
        Case::Tls13,
        Case::FixedRate,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::AccessLog => "access_log",
            Self::H2c => "h2c",
            Self::Tls13 => "tls13",
            Self::FixedRate => "fixed_rate",
        }
    }

    fn title(self) -> String {
        match self {
            Self::Http1 => "HTTP/1.1 saturation".into(),
            Self::AccessLog => "HTTP/1.1, access log on".into(),
            Self::H2c => "h2c saturation".into(),
            Self::Tls13 => "TLS 1.3 (HTTP/1.1) saturation".into(),
            Self::FixedRate => format!("HTTP/1.1 at a fixed {FIXED_RATE} req/s"),
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub requests_per_second: f64,
    /// wrk's 99th percentile (not reported by h2load).
    pub p99_ms: Option<f64>,
    /// h2load's mean request time (not reported by wrk).
    pub mean_ms: Option<f64>,
    /// CPU time of the proxy over wall time; 100 = one core.
    pub cpu_percent: f64,
    /// The user-space part of `cpu_percent` (the rest is the kernel's, on the proxy's
    /// behalf: its system calls and the network stack).
    pub user_cpu_percent: f64,
    /// Failed requests, non-2xx answers and socket errors.
    pub errors: u64,
}

/// The runs of one proxy in one case and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub proxy: Proxy,
    pub runs: Vec<Run>,
    pub median_requests_per_second: f64,
    pub median_p99_ms: Option<f64>,
    pub median_mean_ms: Option<f64>,
    pub median_cpu_percent: f64,
    /// Median over runs of the proxy's CPU time per request, in microseconds: the figure that
    /// other load on the machine disturbs least.
    pub median_cpu_us_per_request: f64,
    /// The same, user space only; the kernel's share is the difference.
    pub median_user_us_per_request: f64,
}

/// One case: every proxy, and lb-gateway's ratios.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub case: Case,
    pub title: String,
    pub command: String,
    pub results: Vec<Measured>,
    /// lb-gateway / NGINX and lb-gateway / HAProxy, of req/s (of CPU use in the fixed-rate case).
    pub ratio_to_nginx: Option<f64>,
    pub ratio_to_haproxy: Option<f64>,
    /// The same ratios within each round (the proxies' runs of one round follow each other,
    /// so the machine's drift between rounds cancels out of them), in round order.
    pub round_ratios_to_nginx: Vec<f64>,
    pub round_ratios_to_haproxy: Vec<f64>,
}

/// The whole report, as written by `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub versions: Vec<String>,
    pub seconds_per_run: u64,
    pub runs: usize,
    pub cases: Vec<CaseReport>,
    /// The config files used, by file name (ports and paths are those of this run).
    pub configs: std::collections::BTreeMap<String, String>,
    /// How the lb-gateway binary was built.
    pub gateway_build: String,
}

/// Runs the benchmark, prints the results and, with `json`, writes the [`Report`].
pub fn run(json: Option<&Path>) -> anyhow::Result<()> {
    let seconds: u64 = match std::env::var("LB_BENCH_SECONDS") {
        Ok(s) => s
            .parse()
            .ok()
            .filter(|s| (1..=300).contains(s))
            .context("LB_BENCH_SECONDS must be 1..=300")?,
        Err(_) => 10,
    };
    let cases: Vec<Case> = match std::env::var("LB_BENCH_CASES") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                Case::ALL
                    .into_iter()
                    .find(|c| c.name() == n.trim())
                    .with_context(|| format!("unknown case `{n}` in LB_BENCH_CASES"))
            })
            .collect::<anyhow::Result<_>>()?,
        Err(_) => Case::ALL.to_vec(),
    };
    check_tools()?;
    // The binary operators install: `cargo xtask dist`'s (fat LTO and PGO);
    // `LB_BENCH_NO_PGO=1` measures the same profile without PGO.
    let pgo = std::env::var("LB_BENCH_NO_PGO").as_deref() != Ok("1");
    let built = crate::dist::gateway(pgo)?;
    let gateway_bin =
        std::fs::canonicalize(&built.gateway).context("the lb-gateway binary was not built")?;

    let bench = Bench::prepare(gateway_bin, seconds)?;
    let report = bench.measure(&cases);
    // The work directory is removed on success and kept (for its logs) on failure.
    let mut report = report?;
    report.gateway_build = if built.pgo {
        "profile dist (fat LTO, one codegen unit) with PGO (cargo xtask dist)".to_owned()
    } else {
        "profile dist (fat LTO, one codegen unit), no PGO (LB_BENCH_NO_PGO=1)".to_owned()
    };
    if let Err(e) = fs::remove_dir_all(&bench.dir) {
        eprintln!("cannot remove {}: {e}", bench.dir.display());
    }
    print!("{}", render(&report));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)?;
        fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn check_tools() -> anyhow::Result<()> {
    for tool in [
        "nginx", "haproxy", "wrk", "h2load", "openssl", "taskset", "timeout",
    ] {
        if shell::output("sh", &["-c", &format!("command -v {tool}")]).is_none() {
            bail!("`{tool}` is missing; run `cargo xtask setup` (as root) first");
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        bail!(
            "the benchmark pins the load and the proxy to different CPUs; this machine has {cpus}"
        );
    }
    Ok(())
}

/// The profile-guided build's training run (`cargo xtask dist`): the instrumented gateway at
/// `gateway_bin` serves the benchmark's kinds of traffic for `seconds` each (HTTP/1.1, h2c,
/// TLS 1.3, a fixed rate with idle time between requests, access log off and on) plus fixed
/// answers, 404s and uploads, and leaves its profile in `profiles` when it exits.
pub fn train(gateway_bin: PathBuf, profiles: &Path, seconds: u64) -> anyhow::Result<()> {
    check_tools()?;
    let bench = Bench::prepare(gateway_bin, seconds)?;
    let result = bench.train(profiles);
    if result.is_ok()
        && let Err(e) = fs::remove_dir_all(&bench.dir)
    {
        eprintln!("cannot remove {}: {e}", bench.dir.display());
    }
    result
}

/// Ports of one proxy.
#[derive(Debug, Clone, Copy)]
struct ProxyPorts {
    http: u16,
    h2c: u16,
    tls: u16,
    metrics: u16,
}

struct Bench {
    dir: PathBuf,
    gateway_bin: PathBuf,
    seconds: u64,
    upstream_port: u16,
    ports: [ProxyPorts; 3],
}

/// A started process, stopped (SIGTERM, then SIGKILL after a deadline) when dropped.
struct Running {
    name: String,
    child: Child,
}

impl Running {
    fn start(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process and its children (NGINX's worker), for CPU accounting.
    fn pids(&self) -> Vec<u32> {
        let root = self.pid();
        let mut pids = vec![root];
        if let Ok(entries) = fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if stat_fields(pid).is_some_and(|f| f.ppid == root) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// utime + stime, and utime alone, of the process and its children, in clock ticks.
    fn cpu_ticks(&self) -> (u64, u64) {
        self.pids()
            .into_iter()
            .filter_map(stat_fields)
            .fold((0, 0), |(all, user), f| {
                (all + f.ticks, user + f.user_ticks)
            })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = self.pid().to_string();
        if shell::output("kill", &["-TERM", &pid]).is_none() {
            eprintln!("{}: SIGTERM failed (already gone?)", self.name);
        }
        let deadline = Instant::now() + PROCESS_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{}: did not stop on SIGTERM, killing it", self.name);
        if let Err(e) = self.child.kill() {
            eprintln!("{}: kill failed: {e}", self.name);
        }
        if let Err(e) = self.child.wait() {
            eprintln!("{}: wait failed: {e}", self.name);
        }
    }
}

struct StatFields {
    ppid: u32,
    /// utime + stime.
    ticks: u64,
    /// utime.
    user_ticks: u64,
}

/// ppid and utime + stime from /proc/PID/stat (fields 4, 14 and 15; the command name in
/// parentheses may contain spaces, so fields are counted after the last `)`).
fn stat_fields(pid: u32) -> Option<StatFields> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<StatFields> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    let user: u64 = f.get(11)?.parse().ok()?;
    Some(StatFields {
        ppid: f.get(1)?.parse().ok()?,
        ticks: user + f.get(12)?.parse::<u64>().ok()?,
        user_ticks: user,
    })
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a port")?;
    Ok(l.local_addr()?.port())
}

fn wait_listening(port: u16, what: &str) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + PROCESS_DEADLINE;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} does not listen on 127.0.0.1:{port}")
}

fn pinned(cpu: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu, program]);
    c
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

impl Bench {
    fn prepare(gateway_bin: PathBuf, seconds: u64) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("lb-bench-l7-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // NGINX workers run as `nobody` when started by root; they only need to read.
        shell::run(Command::new("chmod").args(["755", &dir.display().to_string()]))?;
        shell::step("bench l7: generating a TLS certificate (openssl, P-256, self-signed)");
        shell::run(
            Command::new("openssl")
                .args(
                    "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
                     -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout"
                        .split_whitespace(),
                )
                .arg(dir.join("key.pem"))
                .arg("-out")
                .arg(dir.join("cert.pem"))
                .stderr(Stdio::null()),
        )?;
        let combined = [
            fs::read_to_string(dir.join("cert.pem"))?,
            fs::read_to_string(dir.join("key.pem"))?,
        ]
        .concat();
        fs::write(dir.join("combined.pem"), combined)?;
        let mut ports = Vec::new();
        for _ in Proxy::ALL {
            ports.push(ProxyPorts {
                http: free_port()?,
                h2c: free_port()?,
                tls: free_port()?,
                metrics: free_port()?,
            });
        }
        let ports: [ProxyPorts; 3] = ports
            .try_into()
            .map_err(|_| anyhow::anyhow!("three proxies"))?;
        Ok(Self {
            dir,
            gateway_bin,
            seconds,
            upstream_port: free_port()?,
            ports,
        })
    }

    fn ports(&self, proxy: Proxy) -> ProxyPorts {
        self.ports[Proxy::ALL.iter().position(|p| *p == proxy).unwrap_or(0)]
    }

    fn start_upstream(&self) -> anyhow::Result<Running> {
        let conf = format!(
            "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {dir}/upstream.pid;\n\
             error_log {dir}/upstream-error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n\
             \x20 client_body_temp_path {dir}/up-body;\n  proxy_temp_path {dir}/up-proxy;\n\
             \x20 fastcgi_temp_path {dir}/up-fcgi;\n  uwsgi_temp_path {dir}/up-uwsgi;\n  scgi_temp_path {dir}/up-scgi;\n\
             \x20 server {{\n    listen 127.0.0.1:{port} backlog=4096;\n\
             \x20   location / {{ default_type text/plain; return 200 \"hello world\\n\"; }}\n  }}\n}}\n",
            dir = self.dir.display(),
            port = self.upstream_port
        );
        let path = self.dir.join("upstream.conf");
        fs::write(&path, conf)?;
        let mut cmd = pinned(LOAD_CPU, "nginx");
        cmd.arg("-p").arg(&self.dir).arg("-c").arg(&path);
        let r = Running::start("upstream nginx", &mut cmd, &self.dir.join("upstream.out"))?;
        wait_listening(self.upstream_port, "the upstream")?;
        Ok(r)
    }

    fn gateway_config(&self, access_log: bool) -> String {
        let p = self.ports(Proxy::LbGateway);
        format!(
            r#"[global]
access_log = {access_log}

[admin]
listen = "127.0.0.1:{metrics}"

[listeners.http]
listen = "127.0.0.1:{http}"
max_requests_per_connection = 1000000

[listeners.h2c]
listen = "127.0.0.1:{h2c}"
max_requests_per_connection = 1000000

[listeners.tls]
listen = "127.0.0.1:{tls}"
http2 = false
max_requests_per_connection = 1000000
[listeners.tls.tls]
certificates = [{{ cert_file = "{dir}/cert.pem", key_file = "{dir}/key.pem" }}]

[upstreams.app]
members = [{{ address = "127.0.0.1:{up}" }}]
pool_max_idle_per_member = 256

[[routes]]
name = "health"
match = {{ path_exact = "/healthz" }}
respond = {{ status = 200, body = "ok" }}

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
upstream = "app"

[[routes]]
name = "static"
match = {{ path_prefix = "/static", methods = ["GET", "HEAD"] }}
upstream = "app"

[[routes]]
name = "default"
respond = {{ status = 404, body = "no route" }}
"#,
            metrics = p.metrics,
            http = p.http,
            h2c = p.h2c,
            tls = p.tls,
            dir = self.dir.display(),
            up = self.upstream_port,
        )
    }

    fn nginx_config(&self, access_log: bool) -> String {
        let p = self.ports(Proxy::Nginx);
        let dir = self.dir.display();
        let log = if access_log {
            format!(
                "log_format gateway escape=json '{NGINX_LOG_FORMAT}';\n  \
                 access_log {dir}/nginx-access.log gateway buffer=64k flush=100ms;"
            )
        } else {
            "access_log off;".to_owned()
        };
        let proxied = "proxy_pass http://app;\n      proxy_http_version 1.1;\n      \
             proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n      \
             proxy_set_header X-Request-Id $request_id;\n      \
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
             proxy_set_header X-Forwarded-Proto $scheme;\n      \
             proxy_set_header X-Forwarded-Host $host;\n      \
             add_header X-Request-Id $request_id always;";
        // With the access log on, each location names its route for the log, as lb-gateway's
        // routes are named.
        let route = |name: &str| {
            if access_log {
                format!("set $route {name}; ")
            } else {
                String::new()
            }
        };
        let server = |listen: String| {
            format!(
                "  server {{\n    {listen}\n    \
                 location = /healthz {{ {health}return 200 \"ok\"; }}\n    \
                 location /api {{\n      {api}{proxied}\n    }}\n    \
                 location /static {{\n      {static}limit_except GET {{ deny all; }}\n      {proxied}\n    }}\n    \
                 location / {{ {default}return 404 \"no route\"; }}\n  }}\n",
                health = route("health"),
                api = route("api"),
                static = route("static"),
                default = route("default"),
            )
        };
        let mut conf = format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  {log}\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n\
             \x20 client_body_temp_path {dir}/ng-body;\n  proxy_temp_path {dir}/ng-proxy;\n\
             \x20 fastcgi_temp_path {dir}/ng-fcgi;\n  uwsgi_temp_path {dir}/ng-uwsgi;\n  scgi_temp_path {dir}/ng-scgi;\n\
             \x20 upstream app {{\n    server 127.0.0.1:{up};\n    keepalive 256;\n    keepalive_requests 1000000;\n  }}\n",
            up = self.upstream_port
        );
        conf.push_str(&server(format!(
            "listen 127.0.0.1:{} backlog=4096;",
            p.http
        )));
        conf.push_str(&server(format!(
            "listen 127.0.0.1:{} http2 backlog=4096;",
            p.h2c
        )));
        conf.push_str(&server(format!(
            "listen 127.0.0.1:{} ssl backlog=4096;\n    ssl_certificate {dir}/cert.pem;\n    \
             ssl_certificate_key {dir}/key.pem;\n    ssl_protocols TLSv1.3;",
            p.tls
        )));
        // Metrics: connection and request counters.
        conf.push_str(&format!("  server {{\n    listen 127.0.0.1:{} backlog=4096;\n    location /metrics {{ stub_status; }}\n  }}\n}}\n",
            p.metrics));
        conf
    }

    fn haproxy_config(&self, access_log: bool) -> String {
        let p = self.ports(Proxy::Haproxy);
        let dir = self.dir.display();
        let (global_log, log) = if access_log {
            (
                "  log stdout format raw local0\n".to_owned(),
                format!("  log global\n  log-format \"{HAPROXY_LOG_FORMAT}\"\n"),
            )
        } else {
            (String::new(), String::new())
        };
        format!(
            "global\n  nbthread 1\n  maxconn 4096\n{global_log}\n\
             defaults\n  mode http\n{log}  timeout connect 2s\n  timeout client 60s\n  timeout server 30s\n\
             \x20 timeout http-keep-alive 300s\n  option http-keep-alive\n  http-reuse always\n\n\
             frontend web\n\
             \x20 bind 127.0.0.1:{http}\n\
             \x20 bind 127.0.0.1:{h2c} proto h2\n\
             \x20 bind 127.0.0.1:{tls} ssl crt {dir}/combined.pem ssl-min-ver TLSv1.3 alpn http/1.1\n\
             \x20 unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid\n\
             \x20 unique-id-header X-Request-Id\n\
             \x20 http-request capture req.hdr(traceparent) len 64\n\
             \x20 http-request capture req.hdr(host) len 128\n\
             \x20 http-response set-header X-Request-Id %[unique-id]\n\
             \x20 option forwardfor\n\
             \x20 http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}\n\
             \x20 http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}\n\
             \x20 http-request set-header X-Forwarded-Host %[req.hdr(host)]\n\
             \x20 acl health path /healthz\n\
             \x20 acl api path_beg /api\n\
             \x20 acl static path_beg /static\n\
             \x20 acl get method GET HEAD\n\
             \x20 http-request return status 200 content-type text/plain string ok if health\n\
             \x20 use_backend app if api\n\
             \x20 use_backend app if static get\n\
             \x20 default_backend no_route\n\n\
             frontend metrics\n\
             \x20 bind 127.0.0.1:{metrics}\n\
             \x20 http-request use-service prometheus-exporter if {{ path /metrics }}\n\n\
             backend app\n\
             \x20 server s1 127.0.0.1:{up}\n\n\
             backend no_route\n\
             \x20 http-request return status 404 content-type text/plain string \"no route\"\n",
            http = p.http,
            h2c = p.h2c,
            tls = p.tls,
            metrics = p.metrics,
            up = self.upstream_port,
        )
    }

    fn start_proxy(&self, proxy: Proxy, access_log: bool) -> anyhow::Result<Running> {
        self.start_proxy_with(proxy, access_log, None)
    }

    /// Starts `proxy`; `profiles` (lb-gateway only) is where an instrumented binary writes
    /// its profile.
    fn start_proxy_with(
        &self,
        proxy: Proxy,
        access_log: bool,
        profiles: Option<&Path>,
    ) -> anyhow::Result<Running> {
        let suffix = if access_log { "-log" } else { "" };
        let name = proxy.name();
        let r = match proxy {
            Proxy::LbGateway => {
                let path = self.dir.join(format!("gateway{suffix}.toml"));
                fs::write(&path, self.gateway_config(access_log))?;
                let mut cmd = pinned(PROXY_CPU, &self.gateway_bin.display().to_string());
                cmd.args(["run", "--worker-threads", "1", "--config"])
                    .arg(&path);
                if let Some(dir) = profiles {
                    cmd.env("LLVM_PROFILE_FILE", dir.join("lb-gateway-%p.profraw"));
                }
                Running::start(
                    name,
                    &mut cmd,
                    &self.dir.join(format!("gateway{suffix}.out")),
                )?
            }
            Proxy::Nginx => {
                let path = self.dir.join(format!("nginx{suffix}.conf"));
                fs::write(&path, self.nginx_config(access_log))?;
                let mut cmd = pinned(PROXY_CPU, "nginx");
                cmd.arg("-p").arg(&self.dir).arg("-c").arg(&path);
                Running::start(name, &mut cmd, &self.dir.join(format!("nginx{suffix}.out")))?
            }
            Proxy::Haproxy => {
                let path = self.dir.join(format!("haproxy{suffix}.cfg"));
                fs::write(&path, self.haproxy_config(access_log))?;
                let mut cmd = pinned(PROXY_CPU, "haproxy");
                cmd.arg("-db").arg("-f").arg(&path);
                Running::start(
                    name,
                    &mut cmd,
                    &self.dir.join(format!("haproxy{suffix}.out")),
                )?
            }
        };
        let p = self.ports(proxy);
        for port in [p.http, p.h2c, p.tls, p.metrics] {
            wait_listening(port, name)?;
        }
        Ok(r)
    }

    /// The load command of a case against a proxy, for `seconds`.
    fn load_command(&self, case: Case, proxy: Proxy, seconds: u64) -> Vec<String> {
        let p = self.ports(proxy);
        let (c, d) = (CONNECTIONS, seconds);
        let line = match case {
            Case::Http1 | Case::AccessLog => {
                format!(
                    "wrk -t1 -c {c} -d {d}s --latency http://127.0.0.1:{}{PATH}",
                    p.http
                )
            }
            Case::Tls13 => {
                format!(
                    "wrk -t1 -c {c} -d {d}s --latency https://127.0.0.1:{}{PATH}",
                    p.tls
                )
            }
            Case::H2c => format!(
                "h2load -t1 -c {c} -m1 -D {d} http://127.0.0.1:{}{PATH}",
                p.h2c
            ),
            Case::FixedRate => format!(
                "h2load --h1 -t1 -c {c} --rps {} -D {d} http://127.0.0.1:{}{PATH}",
                FIXED_RATE / CONNECTIONS,
                p.http
            ),
        };
        line.split_whitespace().map(str::to_owned).collect()
    }

    /// One bounded load run; returns the tool's output and the proxy's CPU use, all and
    /// user space only (percent of one core).
    fn load(
        &self,
        case: Case,
        proxy: Proxy,
        running: &Running,
        seconds: u64,
    ) -> anyhow::Result<(String, f64, f64)> {
        let args = self.load_command(case, proxy, seconds);
        let mut cmd = Command::new("timeout");
        cmd.arg((seconds + 30).to_string())
            .args(["taskset", "-c", LOAD_CPU])
            .args(&args);
        let ticks_before = running.cpu_ticks();
        let started = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("running {}", args.join(" ")))?;
        let wall = started.elapsed().as_secs_f64();
        let ticks_after = running.cpu_ticks();
        let ticks = ticks_after.0.saturating_sub(ticks_before.0);
        let user_ticks = ticks_after.1.saturating_sub(ticks_before.1);
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let hz: f64 = shell::output("getconf", &["CLK_TCK"])
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        let percent = |t: u64| t as f64 / hz / wall * 100.0;
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            percent(ticks),
            percent(user_ticks),
        ))
    }

    /// See [`train`].
    fn train(&self, profiles: &Path) -> anyhow::Result<()> {
        let _upstream = self.start_upstream()?;
        let body = self.dir.join("upload.json");
        fs::write(&body, "{\"item\":\"x\"}".repeat(256))?;
        let body = body.display().to_string();
        let p = self.ports(Proxy::LbGateway);
        for access_log in [false, true] {
            let gateway = self.start_proxy_with(Proxy::LbGateway, access_log, Some(profiles))?;
            let cases: &[Case] = if access_log {
                &[Case::AccessLog]
            } else {
                &[Case::Http1, Case::H2c, Case::Tls13, Case::FixedRate]
            };
            for case in cases {
                shell::step(&format!("training: {}", case.title()));
                self.load(*case, Proxy::LbGateway, &gateway, self.seconds)?;
            }
            shell::step("training: fixed answers, 404s and uploads (HTTP/1.1 and h2c)");
            let n = 2_000;
            for line in [
                format!("h2load --h1 -c10 -n{n} http://127.0.0.1:{}/healthz", p.http),
                format!("h2load --h1 -c10 -n{n} http://127.0.0.1:{}/nothing", p.http),
                format!("h2load -c10 -n{n} http://127.0.0.1:{}/nothing", p.h2c),
                format!(
                    "h2load --h1 -c10 -n{n} -d {body} http://127.0.0.1:{}{PATH}",
                    p.http
                ),
                format!(
                    "h2load -c10 -n{n} -d {body} http://127.0.0.1:{}{PATH}",
                    p.h2c
                ),
            ] {
                let args: Vec<&str> = line.split_whitespace().collect();
                shell::run(
                    Command::new("timeout")
                        .arg((self.seconds + 30).to_string())
                        .args(["taskset", "-c", LOAD_CPU])
                        .args(&args)
                        .stdout(Stdio::null()),
                )?;
            }
            // The profile is written when the gateway exits (SIGTERM, graceful); a gateway
            // that had to be killed left none.
            let profile = profiles.join(format!("lb-gateway-{}.profraw", gateway.pid()));
            drop(gateway);
            if !profile.exists() {
                bail!(
                    "the instrumented gateway left no profile at {} (it did not exit on SIGTERM?)",
                    profile.display()
                );
            }
        }
        Ok(())
    }

    fn measure(&self, cases: &[Case]) -> anyhow::Result<Report> {
        let _upstream = self.start_upstream()?;
        let mut reports = Vec::new();
        for access_log in [false, true] {
            let group: Vec<Case> = cases
                .iter()
                .copied()
                .filter(|c| (*c == Case::AccessLog) == access_log)
                .collect();
            if group.is_empty() {
                continue;
            }
            let mut running = Vec::new();
            for proxy in Proxy::ALL {
                running.push((proxy, self.start_proxy(proxy, access_log)?));
            }
            for case in group {
                shell::step(&format!("bench l7: {}", case.title()));
                reports.push(self.measure_case(case, &running)?);
            }
            if access_log {
                self.check_access_logs()?;
            }
        }
        let mut configs = std::collections::BTreeMap::new();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if [".conf", ".toml", ".cfg"].iter().any(|x| name.ends_with(x)) {
                    configs.insert(name, fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        Ok(Report {
            machine: machine(),
            versions: versions(),
            seconds_per_run: self.seconds,
            runs: RUNS,
            cases: reports,
            configs,
            gateway_build: String::new(),
        })
    }

    /// The access-log case compares like with like: every proxy's last access line is a JSON
    /// object with lb-gateway's keys.
    fn check_access_logs(&self) -> anyhow::Result<()> {
        let keys = |proxy: Proxy, file: &str| -> anyhow::Result<Vec<String>> {
            let path = self.dir.join(file);
            let text = fs::read_to_string(&path).with_context(|| {
                format!("reading {}'s access log {}", proxy.name(), path.display())
            })?;
            // The last complete line that is an access line (lb-gateway's stdout has its
            // other logs too).
            let line = text
                .split_inclusive('\n')
                .rfind(|l| l.ends_with('\n') && l.contains(r#""target":"access_log""#))
                .with_context(|| {
                    format!(
                        "{} wrote no access line to {}",
                        proxy.name(),
                        path.display()
                    )
                })?;
            let value: serde_json::Value = serde_json::from_str(line).with_context(|| {
                format!(
                    "{}'s access line is not JSON: {}",
                    proxy.name(),
                    line.trim_end()
                )
            })?;
            let object = value
                .as_object()
                .with_context(|| format!("{}'s access line is not a JSON object", proxy.name()))?;
            Ok(object.keys().cloned().collect())
        };
        let gateway = keys(Proxy::LbGateway, "gateway-log.out")?;
        for (proxy, file) in [
            (Proxy::Nginx, "nginx-access.log"),
            (Proxy::Haproxy, "haproxy-log.out"),
        ] {
            let theirs = keys(proxy, file)?;
            if theirs != gateway {
                bail!(
                    "{}'s access line has the keys {theirs:?}, lb-gateway's {gateway:?}: the case would not compare like with like",
                    proxy.name()
                );
            }
        }
        Ok(())
    }

    fn measure_case(&self, case: Case, running: &[(Proxy, Running)]) -> anyhow::Result<CaseReport> {
        for (proxy, r) in running {
            self.load(case, *proxy, r, WARM_UP.as_secs())?;
        }
        let mut runs: Vec<(Proxy, Vec<Run>)> =
            running.iter().map(|(p, _)| (*p, Vec::new())).collect();
        for round in 0..RUNS {
            // Rotated: the proxy measured first in a round follows whatever ran before (the
            // warm-up, the previous round's last proxy); no proxy is always first.
            let order = (0..running.len()).map(|k| (round + k) % running.len());
            for i in order {
                let (proxy, r) = &running[i];
                let (out, cpu, user) = self.load(case, *proxy, r, self.seconds)?;
                let run = parse_run(case, &out, cpu, user).with_context(|| {
                    format!("cannot parse the output of {}:\n{out}", proxy.name())
                })?;
                println!(
                    "  round {} {:<10} {:>9.0} req/s  p99 {:>8}  mean {:>8}  cpu {:>5.1}%  errors {}",
                    round + 1,
                    proxy.name(),
                    run.requests_per_second,
                    run.p99_ms.map_or("-".into(), |v| format!("{v:.2}ms")),
                    run.mean_ms.map_or("-".into(), |v| format!("{v:.2}ms")),
                    run.cpu_percent,
                    run.errors
                );
                runs[i].1.push(run);
            }
        }
        let results: Vec<Measured> = runs
            .into_iter()
            .map(|(proxy, runs)| {
                let pick = |f: &dyn Fn(&Run) -> Option<f64>| {
                    let mut v: Vec<f64> = runs.iter().filter_map(f).collect();
                    (!v.is_empty()).then(|| median(&mut v))
                };
                Measured {
                    proxy,
                    median_requests_per_second: pick(&|r| Some(r.requests_per_second))
                        .unwrap_or(f64::NAN),
                    median_p99_ms: pick(&|r| r.p99_ms),
                    median_mean_ms: pick(&|r| r.mean_ms),
                    median_cpu_percent: pick(&|r| Some(r.cpu_percent)).unwrap_or(f64::NAN),
                    median_cpu_us_per_request: pick(&|r| {
                        Some(r.cpu_percent * 10_000.0 / r.requests_per_second)
                    })
                    .unwrap_or(f64::NAN),
                    median_user_us_per_request: pick(&|r| {
                        Some(r.user_cpu_percent * 10_000.0 / r.requests_per_second)
                    })
                    .unwrap_or(f64::NAN),
                    runs,
                }
            })
            .collect();
        let get = |p: Proxy| results.iter().find(|m| m.proxy == p);
        let ratio = |other: Proxy| {
            let (gw, o) = (get(Proxy::LbGateway)?, get(other)?);
            Some(if case == Case::FixedRate {
                gw.median_cpu_percent / o.median_cpu_percent
            } else {
                gw.median_requests_per_second / o.median_requests_per_second
            })
        };
        Ok(CaseReport {
            case,
            title: case.title(),
            command: self
                .load_command(case, Proxy::LbGateway, self.seconds)
                .join(" "),
            ratio_to_nginx: ratio(Proxy::Nginx),
            ratio_to_haproxy: ratio(Proxy::Haproxy),
            round_ratios_to_nginx: round_ratios(case, &results, Proxy::Nginx),
            round_ratios_to_haproxy: round_ratios(case, &results, Proxy::Haproxy),
            results,
        })
    }
}

/// Reads one run's figures from wrk or h2load output (`cpu` and `user`: the proxy's CPU use
/// in percent of one core, all and user space only).
fn parse_run(case: Case, out: &str, cpu: f64, user: f64) -> Option<Run> {
    match case {
        Case::H2c | Case::FixedRate => {
            let finished = out
                .lines()
                .find(|l| l.trim_start().starts_with("finished in"))?;
            let rps = finished
                .split(',')
                .nth(1)?
                .trim()
                .strip_suffix("req/s")?
                .trim()
                .parse()
                .ok()?;
            let requests = out
                .lines()
                .find(|l| l.trim_start().starts_with("requests:"))?;
            let count = |what: &str| -> Option<u64> {
                requests
                    .split(',')
                    .find(|p| p.trim().ends_with(what))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            let status = out
                .lines()
                .find(|l| l.trim_start().starts_with("status codes:"))?;
            let non_2xx: u64 = status
                .split(',')
                .filter(|p| !p.contains("2xx"))
                .filter_map(|p| p.split_whitespace().rev().nth(1)?.parse::<u64>().ok())
                .sum();
            let mean = out
                .lines()
                .find(|l| l.trim_start().starts_with("time for request:"))
                .and_then(|l| l.split_whitespace().nth(5))
                .and_then(duration_ms);
            Some(Run {
                requests_per_second: rps,
                p99_ms: None,
                mean_ms: mean,
                cpu_percent: cpu,
                user_cpu_percent: user,
                errors: count("failed")? + count("errored")? + count("timeout")? + non_2xx,
            })
        }
        Case::Http1 | Case::AccessLog | Case::Tls13 => {
            let rps = out
                .lines()
                .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
                .trim()
                .parse()
                .ok()?;
            let p99 = out
                .lines()
                .find_map(|l| l.trim().strip_prefix("99%"))
                .and_then(|v| duration_ms(v.trim()));
            let non_2xx: u64 = out
                .lines()
                .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let socket: u64 = out
                .lines()
                .find_map(|l| l.trim().strip_prefix("Socket errors:"))
                .map(|v| {
                    v.split(',')
                        .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                        .sum()
                })
                .unwrap_or(0);
            Some(Run {
                requests_per_second: rps,
                p99_ms: Some(p99?),
                mean_ms: None,
                cpu_percent: cpu,
                user_cpu_percent: user,
                errors: non_2xx + socket,
            })
        }
    }
}

/// `812.00us`, `1.23ms`, `2.00s` -> milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().ok()?;
    match unit {
        "us" => Some(n / 1000.0),
        "ms" => Some(n),
        "s" => Some(n * 1000.0),
        _ => None,
    }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = shell::output("uname", &["-r"]).unwrap_or_default();
    format!("{cpus} x {cpu}, Linux {}", kernel.trim())
}

fn versions() -> Vec<String> {
    let first_line = |program: &str, args: &[&str]| -> String {
        let out = Command::new(program).args(args).output();
        match out {
            Ok(o) => {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            }
            Err(_) => format!("{program}: not found"),
        }
    };
    vec![
        first_line("nginx", &["-v"]),
        first_line("haproxy", &["-v"]),
        first_line("wrk", &["-v"]),
        first_line("h2load", &["--version"]),
        first_line("rustc", &["-V"]),
    ]
}

/// lb-gateway's figure over `other`'s, round by round: req/s, or CPU use in the fixed-rate
/// case.
fn round_ratios(case: Case, results: &[Measured], other: Proxy) -> Vec<f64> {
    let runs = |p: Proxy| results.iter().find(|m| m.proxy == p).map(|m| &m.runs);
    let (Some(gw), Some(o)) = (runs(Proxy::LbGateway), runs(other)) else {
        return Vec::new();
    };
    let value = |r: &Run| {
        if case == Case::FixedRate {
            r.cpu_percent
        } else {
            r.requests_per_second
        }
    };
    gw.iter().zip(o).map(|(g, o)| value(g) / value(o)).collect()
}

/// The results as text tables.
fn render(report: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "\nbench l7: {} ({} runs of {} s per case and proxy, medians)\nlb-gateway build: {}\n",
        report.machine, report.runs, report.seconds_per_run, report.gateway_build
    ));
    for c in &report.cases {
        s.push_str(&format!("\n{}\n  command: {}\n", c.title, c.command));
        s.push_str(&format!(
            "  {:<11} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>12}\n",
            "proxy", "req/s", "p99 ms", "mean ms", "cpu %", "cpu us/req", "user us", "kernel us"
        ));
        for m in &c.results {
            let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            s.push_str(&format!(
                "  {:<11} {:>10.0} {:>10} {:>10} {:>8.1} {:>10.1} {:>10.1} {:>12.1}\n",
                m.proxy.name(),
                m.median_requests_per_second,
                opt(m.median_p99_ms),
                opt(m.median_mean_ms),
                m.median_cpu_percent,
                m.median_cpu_us_per_request,
                m.median_user_us_per_request,
                m.median_cpu_us_per_request - m.median_user_us_per_request
            ));
        }
        let what = if c.case == Case::FixedRate {
            "CPU use"
        } else {
            "req/s"
        };
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}x"));
        s.push_str(&format!(
            "  lb-gateway {what}: {} NGINX's, {} HAProxy's\n",
            opt(c.ratio_to_nginx),
            opt(c.ratio_to_haproxy)
        ));
        let rounds = |v: &[f64]| {
            let mut sorted = v.to_vec();
            let list: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
            let mid = (!sorted.is_empty()).then(|| median(&mut sorted));
            format!("{} (median {})", list.join(" "), opt(mid))
        };
        s.push_str(&format!(
            "  round by round (each round's proxies back to back): NGINX {}, HAProxy {}\n",
            rounds(&c.round_ratios_to_nginx),
            rounds(&c.round_ratios_to_haproxy)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:1/\n  1 threads and 50 connections\n  Latency Distribution\n     50%  500.00us\n     99%    1.50ms\n  100 requests in 10.00s, 1.00MB read\n  Non-2xx or 3xx responses: 2\n  Socket errors: connect 0, read 1, write 0, timeout 3\nRequests/sec:  12345.67\nTransfer/sec:      1.23MB\n";
        let r = parse_run(Case::Http1, out, 50.0, 12.5).unwrap();
        assert!((r.requests_per_second - 12345.67).abs() < 1e-9);
        assert_eq!(r.p99_ms, Some(1.5));
        assert_eq!(r.errors, 6);
        assert_eq!((r.cpu_percent, r.user_cpu_percent), (50.0, 12.5));
    }

    #[test]
    fn parses_h2load_output() {
        let out = "finished in 10.00s, 20000.10 req/s, 1.23MB/s\nrequests: 200001 total, 200001 started, 200001 done, 199999 succeeded, 2 failed, 1 errored, 0 timeout\nstatus codes: 199999 2xx, 0 3xx, 0 4xx, 4 5xx\ntime for request:      100us      4.00ms       250us       50us    90.00%\n";
        let r = parse_run(Case::FixedRate, out, 20.0, 5.0).unwrap();
        assert!((r.requests_per_second - 20000.1).abs() < 1e-9);
        assert_eq!(r.mean_ms, Some(0.25));
        assert_eq!(r.errors, 7);
    }

    #[test]
    fn parses_proc_stat() {
        let f = parse_stat("42 (a b) c) S 7 1 1 0 -1 0 0 0 0 0 150 25 0 0 20 0 1 0").unwrap();
        assert_eq!((f.ppid, f.ticks, f.user_ticks), (7, 175, 150));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0]), 2.5);
    }

    #[test]
    fn ratios_are_taken_within_each_round() {
        let run = |rps: f64, cpu: f64| Run {
            requests_per_second: rps,
            p99_ms: None,
            mean_ms: None,
            cpu_percent: cpu,
            user_cpu_percent: cpu / 4.0,
            errors: 0,
        };
        let measured = |proxy, runs: Vec<Run>| Measured {
            proxy,
            median_requests_per_second: 0.0,
            median_p99_ms: None,
            median_mean_ms: None,
            median_cpu_percent: 0.0,
            median_cpu_us_per_request: 0.0,
            median_user_us_per_request: 0.0,
            runs,
        };
        let results = vec![
            measured(Proxy::LbGateway, vec![run(110.0, 20.0), run(88.0, 30.0)]),
            measured(Proxy::Nginx, vec![run(100.0, 25.0), run(80.0, 40.0)]),
        ];
        let r = round_ratios(Case::Http1, &results, Proxy::Nginx);
        assert!(
            (r[0] - 1.1).abs() < 1e-9 && (r[1] - 1.1).abs() < 1e-9,
            "{r:?}"
        );
        let r = round_ratios(Case::FixedRate, &results, Proxy::Nginx);
        assert!(
            (r[0] - 0.8).abs() < 1e-9 && (r[1] - 0.75).abs() < 1e-9,
            "{r:?}"
        );
        assert!(round_ratios(Case::Http1, &results, Proxy::Haproxy).is_empty());
    }
}
