//! `lb-agent`: the per-node agent. Loads and feeds the XDP program.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_userspace::dataplane::{self, AttachMode, Dataplane};

/// The load balancer's node agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
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
