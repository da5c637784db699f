//! `lb-agent`: the per-node agent: VRRP, gateway probes, cluster admin state, admin API,
//! metrics, and the XDP data path. Configuration reference: `lb-userspace/AGENT.md`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage, 64 invalid configuration.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI prints its results"
)]
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_userspace::{
    agent::{
        self,
        config::{AgentConfig, ConfigError, EXIT_CONFIG},
    },
    dataplane::{self, AttachMode, Dataplane},
};

/// The load balancer's node agent: VRRP for the VIPs, gateway health probes, cluster
/// admin state, admin API, metrics and the XDP data path.
///
/// Exit codes: 0 clean stop, 1 runtime failure, 2 usage, 64 invalid configuration.
/// Reference: lb-userspace/AGENT.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file without starting; prints every error with its key
    /// path and exits 64 when the file is invalid.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Run the agent until SIGTERM/SIGINT (SIGHUP reloads the configuration).
    Run {
        /// The TOML file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Manage the XDP data path on an interface by hand.
    #[command(subcommand)]
    Xdp(XdpCommand),
}

#[derive(Debug, Subcommand)]
enum XdpCommand {
    /// Load the data path, attach it to an interface and pin it so it stays attached
    /// after this command exits.
    Attach {
        /// Interface to attach to (in this process's network namespace).
        #[arg(long)]
        iface: String,
        /// Attach mode: auto tries native first and falls back to generic with a warning.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        mode: AttachMode,
        /// bpffs directory that holds the pinned link and counter map.
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        pin_dir: PathBuf,
    },
    /// Detach a pinned data path and remove its pins.
    Detach {
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        pin_dir: PathBuf,
    },
}

/// Without RUST_LOG: info, and netlink-packet-route's complaints about attributes of
/// newer kernels it does not know (harmless, and logged on every link dump) only as errors.
const DEFAULT_LOG: &str = "info,netlink_packet_route=error";

fn load_or_exit(file: &std::path::Path) -> AgentConfig {
    match AgentConfig::load(file) {
        Ok(cfg) => cfg,
        Err(e @ ConfigError::Invalid { .. }) => {
            eprintln!("{e}");
            std::process::exit(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

/// The L4 data path for `[xdp]`: the XDP program attached to the configured interface,
/// its maps written from the agent's desired state (`lb_userspace::xdp_l4`).
fn l4_factory() -> agent::L4Factory {
    lb_userspace::xdp_l4::factory()
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => {
            let cfg = load_or_exit(&file);
            println!(
                "{}: ok ({} vrrp instance(s), {} gateway(s), {} peer(s))",
                file.display(),
                cfg.vrrp.len(),
                cfg.gateways.len(),
                cfg.cluster.peers.len()
            );
        }
        Command::Run { config } => {
            let cfg = load_or_exit(&config);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(agent::run(cfg, l4_factory()))
                .context("lb-agent")?;
        }
        Command::Xdp(XdpCommand::Attach {
            iface,
            mode,
            pin_dir,
        }) => {
            let mut dp = Dataplane::load().context("loading the XDP program")?;
            let mode = dp
                .attach_pinned(&iface, mode, &pin_dir)
                .with_context(|| format!("attaching to {iface}"))?;
            tracing::info!(%iface, ?mode, pin_dir = %pin_dir.display(), "XDP data path attached");
        }
        Command::Xdp(XdpCommand::Detach { pin_dir }) => {
            dataplane::detach_pinned(&pin_dir)
                .with_context(|| format!("detaching {}", pin_dir.display()))?;
            tracing::info!(pin_dir = %pin_dir.display(), "XDP data path detached");
        }
    }
    Ok(())
}
