//! `lbctl`: the operator CLI. Talks to the local `lb-agent` over its Unix socket, or to a
//! remote one over HTTPS with a bearer token.
//!
//! Exit codes (also in `lbctl --help` and `lb-userspace/AGENT.md`):
//! 0 done (and, for a change, applied on every node); 1 the agent refused or failed;
//! 2 usage; 3 `drain --wait` timed out with connections left; 4 the agent is unreachable;
//! 5 a change applied here but not confirmed by every peer; 64 invalid configuration.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI prints its results"
)]
use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{
    agent::{
        api::{ChangeReport, Connections, Retiring, Status},
        client::{self, ClientError, Endpoint},
        config::{self, AgentConfig, EXIT_CONFIG},
        http::Call,
    },
    dataplane,
};

const EXIT_FAILED: u8 = 1;
const EXIT_TIMEOUT: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;
const EXIT_PARTIAL: u8 = 5;

/// Operate the load balancer.
///
/// Exit codes: 0 done (a change: applied on every node), 1 refused or failed, 2 usage,
/// 3 `drain --wait` timed out, 4 agent unreachable, 5 a change not confirmed by every
/// peer, 64 invalid configuration.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// The agent's admin socket.
    #[arg(long, global = true, env = "LBCTL_SOCKET", default_value = config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// A remote agent's HTTPS admin listener, `HOST:PORT` (instead of the socket).
    #[arg(long, global = true, env = "LBCTL_URL", requires_all = ["token_file", "ca_file"])]
    remote: Option<String>,
    /// File holding the bearer token for `--remote`.
    #[arg(long, global = true, env = "LBCTL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the remote agent's certificate.
    #[arg(long, global = true, env = "LBCTL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Deadline of each call to the agent, in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    call_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// VRRP role and priority, VIP owner, each gateway's health, admin state, weight,
    /// connections, and the data path's counters.
    Status,
    /// Take a gateway out of new-flow assignment on every node; existing flows finish.
    Drain {
        /// The gateway's name.
        node: String,
        /// Wait until the gateway has no active connections (or the timeout). First the
        /// gateway is asked to close its client connections gracefully (each after its
        /// current request), so that keep-alive clients reconnect to the other gateways.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// With --wait: do not ask the gateway to close its connections; wait for its
        /// clients to close them.
        #[arg(long, requires = "wait")]
        no_retire: bool,
    },
    /// Put a drained gateway back into new-flow assignment on every node.
    Enable {
        /// The gateway's name.
        node: String,
    },
    /// Set a gateway's Maglev weight on every node (overrides the configured weight).
    Weight {
        /// The gateway's name.
        node: String,
        /// The new weight, 1-65535.
        weight: u32,
    },
    /// Make this node give up VRRP mastership now (priority-0 advert); it stays at
    /// priority 1 for --hold seconds so preemption does not take the VIP back at once.
    Failover {
        /// Seconds at priority 1.
        #[arg(long, default_value_t = 30)]
        hold: u64,
    },
    /// Make the agent re-read its configuration file; an invalid file is refused and the
    /// running configuration stays.
    Reload,
    /// Validate an agent configuration file locally (exit 64 when invalid).
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Show the XDP data path's per-exit-reason counters of a pinned attachment.
    Counters {
        /// bpffs directory given to `lb-agent xdp attach --pin-dir`.
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        pin_dir: PathBuf,
    },
}

/// How a command ended.
struct Failure {
    code: u8,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure {
            code: EXIT_FAILED,
            message: format!("{e:#}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("lbctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: &Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::CheckConfig { file } => match AgentConfig::load(file) {
            Ok(cfg) => {
                if cli.output == Output::Json {
                    println!("{}", serde_json::json!({"file": file, "valid": true}));
                } else {
                    println!(
                        "{}: ok ({} vrrp instance(s), {} gateway(s))",
                        file.display(),
                        cfg.vrrp.len(),
                        cfg.gateways.len()
                    );
                }
                Ok(0)
            }
            Err(e) => {
                if cli.output == Output::Json {
                    println!(
                        "{}",
                        serde_json::json!({"file": file, "valid": false, "error": e.to_string()})
                    );
                }
                Err(Failure {
                    code: u8::try_from(EXIT_CONFIG).unwrap_or(EXIT_FAILED),
                    message: e.to_string(),
                })
            }
        },
        Command::Counters { pin_dir } => {
            counters(cli, pin_dir)?;
            Ok(0)
        }
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(remote_command(cli))
        }
    }
}

fn endpoint(cli: &Cli) -> Result<Endpoint, Failure> {
    match (&cli.remote, &cli.token_file, &cli.ca_file) {
        (Some(authority), Some(token_file), Some(ca_file)) => {
            let token = std::fs::read_to_string(token_file)
                .with_context(|| format!("reading {}", token_file.display()))?
                .trim()
                .to_owned();
            Ok(Endpoint::Https {
                authority: authority.clone(),
                token,
                ca_file: ca_file.clone(),
            })
        }
        (Some(_), _, _) => Err(Failure {
            code: 2,
            message: "--remote needs --token-file and --ca-file".into(),
        }),
        _ => Ok(Endpoint::Unix(cli.socket.clone())),
    }
}

/// Calls the agent; a non-2xx answer becomes a failure with the agent's error text.
async fn call_agent<T: serde::de::DeserializeOwned>(
    cli: &Cli,
    ep: &Endpoint,
    call: Call<'_>,
) -> Result<T, Failure> {
    let (status, body) = client::call(ep, &call, Duration::from_secs(cli.call_timeout))
        .await
        .map_err(|e| Failure {
            code: match e {
                ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
                ClientError::Http(_) => EXIT_UNREACHABLE,
            },
            message: e.to_string(),
        })?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(Failure {
            code: EXIT_FAILED,
            message: format!("agent refused ({status}): {msg}"),
        });
    }
    serde_json::from_slice(&body).map_err(|e| Failure {
        code: EXIT_FAILED,
        message: format!("unexpected reply from the agent: {e}"),
    })
}

async fn remote_command(cli: &Cli) -> Result<u8, Failure> {
    let ep = endpoint(cli)?;
    let json = cli.output == Output::Json;
    match &cli.command {
        Command::Status => {
            let status: Status = call_agent(cli, &ep, Call::get("/v1/status")).await?;
            if json {
                print_json(&status);
            } else {
                print_status(&status);
            }
            Ok(0)
        }
        Command::Drain {
            node,
            wait,
            timeout,
            no_retire,
        } => {
            let path = format!("/v1/gateways/{node}/drain");
            let report: ChangeReport = call_agent(cli, &ep, Call::post(&path, Vec::new())).await?;
            let code = if json && *wait {
                // One JSON document at the end, with the change and the wait.
                if report.nodes.iter().all(|n| n.applied) {
                    0
                } else {
                    EXIT_PARTIAL
                }
            } else {
                report_change(&report, json)
            };
            if !wait {
                return Ok(code);
            }
            // The drain is in place on the nodes that applied it: connections made from now
            // on go elsewhere, so the gateway's clients can be let go.
            let retired = if *no_retire {
                None
            } else {
                Some(retire(cli, &ep, node).await)
            };
            let (outcome, last) =
                wait_drained(cli, &ep, node, Duration::from_secs(*timeout)).await?;
            if json {
                print_json(&serde_json::json!({
                    "change": report,
                    "retired": retired,
                    "wait": outcome,
                    "active_connections": last,
                }));
            } else if outcome == "drained" {
                println!("{node}: drained, 0 active connections");
            } else {
                println!(
                    "{node}: timed out after {timeout}s with {last} active connection(s) left"
                );
            }
            if outcome == "drained" {
                Ok(code)
            } else {
                Ok(EXIT_TIMEOUT)
            }
        }
        Command::Enable { node } => {
            let path = format!("/v1/gateways/{node}/enable");
            let report: ChangeReport = call_agent(cli, &ep, Call::post(&path, Vec::new())).await?;
            Ok(report_change(&report, json))
        }
        Command::Weight { node, weight } => {
            let path = format!("/v1/gateways/{node}/weight");
            let body = serde_json::to_vec(&serde_json::json!({ "weight": weight }))
                .context("encoding the request")?;
            let report: ChangeReport = call_agent(cli, &ep, Call::post(&path, body)).await?;
            Ok(report_change(&report, json))
        }
        Command::Failover { hold } => {
            let body = serde_json::to_vec(&serde_json::json!({ "hold_ms": hold * 1000 }))
                .context("encoding the request")?;
            let v: serde_json::Value =
                call_agent(cli, &ep, Call::post("/v1/failover", body)).await?;
            if json {
                print_json(&v);
            } else if let Some(lines) = v.get("instances").and_then(|l| l.as_array()) {
                if lines.is_empty() {
                    println!("no VRRP instance on this node");
                }
                for l in lines {
                    println!("{}", l.as_str().unwrap_or_default());
                }
            }
            Ok(0)
        }
        Command::Reload => {
            let v: serde_json::Value =
                call_agent(cli, &ep, Call::post("/v1/reload", b"{}".to_vec())).await?;
            if json {
                print_json(&v);
            } else {
                println!("reloaded");
                for l in v
                    .get("changes")
                    .and_then(|l| l.as_array())
                    .into_iter()
                    .flatten()
                {
                    println!("  {}", l.as_str().unwrap_or_default());
                }
            }
            Ok(0)
        }
        Command::CheckConfig { .. } | Command::Counters { .. } => Ok(0),
    }
}

/// Asks the gateway (through the agent) to close its client connections gracefully; a failure
/// (an older gateway, an unreachable admin listener) is reported and the wait goes on.
/// Returns the connections it had open when asked, or `None`.
async fn retire(cli: &Cli, ep: &Endpoint, node: &str) -> Option<u64> {
    let path = format!("/v1/gateways/{node}/retire-connections");
    match call_agent::<Retiring>(cli, ep, Call::post(&path, Vec::new())).await {
        Ok(r) => {
            if cli.output == Output::Table {
                println!(
                    "{node}: closing its {} connection(s) gracefully",
                    r.active_connections
                );
            }
            Some(r.active_connections)
        }
        Err(e) => {
            eprintln!(
                "{node}: could not ask the gateway to close its connections: {}",
                e.message
            );
            None
        }
    }
}

/// Polls the gateway's active connections until 0 or `timeout`.
async fn wait_drained(
    cli: &Cli,
    ep: &Endpoint,
    node: &str,
    timeout: Duration,
) -> Result<(&'static str, u64), Failure> {
    let path = format!("/v1/gateways/{node}/connections");
    let deadline = Instant::now() + timeout;
    loop {
        let c: Connections = call_agent(cli, ep, Call::get(&path)).await?;
        if c.active_connections == 0 {
            return Ok(("drained", 0));
        }
        if Instant::now() >= deadline {
            return Ok(("timeout", c.active_connections));
        }
        if cli.output == Output::Table {
            eprintln!("{node}: {} active connection(s)...", c.active_connections);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
    }
}

fn report_change(report: &ChangeReport, json: bool) -> u8 {
    let all = report.nodes.iter().all(|n| n.applied);
    if json {
        print_json(report);
    } else {
        let e = &report.entry;
        println!(
            "{}: {}{} (version {}, origin {})",
            report.gateway,
            e.mode,
            e.weight
                .map(|w| format!(", weight {w}"))
                .unwrap_or_default(),
            e.version,
            e.origin
        );
        println!("{:<24} {:<8} ERROR", "NODE", "APPLIED");
        for n in &report.nodes {
            println!(
                "{:<24} {:<8} {}",
                n.node,
                if n.applied { "yes" } else { "no" },
                n.error.as_deref().unwrap_or("-")
            );
        }
    }
    if all { 0 } else { EXIT_PARTIAL }
}

fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("lbctl: encoding JSON: {e}"),
    }
}

fn print_status(s: &Status) {
    println!("node {}  (config {})", s.node, s.config_file);
    println!();
    if s.vrrp.is_empty() {
        println!("VRRP: no instance on this node");
    } else {
        println!(
            "{:<12} {:>4} {:<10} {:<10} {:>8} {:<26} VIPS",
            "VRRP", "VRID", "IFACE", "STATE", "PRIO", "MASTER"
        );
    }
    for v in &s.vrrp {
        let vips: Vec<String> = v.vips.iter().map(ToString::to_string).collect();
        println!(
            "{:<12} {:>4} {:<10} {:<10} {:>3}/{:<4} {:<26} {}",
            v.name,
            v.vrid,
            v.interface,
            v.state,
            v.priority,
            v.configured_priority,
            v.master
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            vips.join(",")
        );
        if let Some(e) = &v.error {
            println!("  error: {e}");
        }
    }
    if !s.tracking.is_empty() {
        println!();
        println!("tracking (priority -{}):", s.tracking_deduction);
        for (check, ok, w) in &s.tracking {
            println!(
                "  {:<48} {:<5} weight {w}",
                check,
                if *ok { "ok" } else { "FAIL" }
            );
        }
    }
    println!();
    println!(
        "{:<16} {:>3} {:<16} {:<9} {:<8} {:>6} {:<7} {:>6} {:<12}",
        "GATEWAY", "ID", "ADDRESS", "HEALTH", "ADMIN", "WEIGHT", "RING", "CONNS", "VERSION"
    );
    for g in &s.gateways {
        let health = match (g.probed, g.healthy) {
            (false, _) => "unknown",
            (true, true) => "healthy",
            (true, false) => "DOWN",
        };
        println!(
            "{:<16} {:>3} {:<16} {:<9} {:<8} {:>6} {:<7} {:>6} {:<12}",
            g.name,
            g.id,
            g.address,
            health,
            g.mode,
            g.weight,
            if g.in_ring { "yes" } else { "no" },
            g.active_connections
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            match &g.admin_origin {
                Some(o) => format!("{}@{o}", g.admin_version),
                None => "-".into(),
            }
        );
        if let (false, Some(e)) = (g.healthy, &g.last_error) {
            println!("  {e}");
        }
    }
    println!();
    println!(
        "ring: {} member(s), {} rebuild(s); admin state version {}; peers: {}",
        s.ring_members,
        s.ring_rebuilds,
        s.admin_version,
        if s.peers.is_empty() {
            "none".into()
        } else {
            s.peers.join(", ")
        }
    );
    if s.l4_enabled {
        println!("data path: {}", s.l4_error.as_deref().unwrap_or("ok"));
        if let Some(c) = &s.l4_counters {
            for (reason, n) in &c.exits {
                println!(
                    "  {reason:<18} {:>12} pkts {:>14} bytes",
                    n.packets, n.bytes
                );
            }
        }
    } else {
        println!("data path: not configured on this node (gateway-only)");
    }
}

fn counters(cli: &Cli, pin_dir: &std::path::Path) -> Result<(), Failure> {
    let stats = dataplane::pinned_exit_stats(pin_dir)
        .with_context(|| format!("reading counters pinned in {}", pin_dir.display()))?;
    match cli.output {
        Output::Table => {
            println!("{:<18} {:>12} {:>14}", "EXIT", "PACKETS", "BYTES");
            for (reason, c) in stats.iter() {
                println!("{:<18} {:>12} {:>14}", reason.name(), c.packets, c.bytes);
            }
        }
        Output::Json => {
            let map: serde_json::Map<String, serde_json::Value> = stats
                .iter()
                .map(|(r, c)| {
                    (
                        r.name().to_owned(),
                        serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                    )
                })
                .collect();
            println!("{}", serde_json::Value::Object(map));
        }
    }
    Ok(())
}
