//! `lbctl`: the operator CLI.
#![allow(clippy::print_stdout, reason = "a CLI prints its results")]
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::dataplane;

/// Operate the load balancer.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the XDP data path's per-exit-reason counters of a pinned attachment.
    Counters {
        /// bpffs directory given to `lb-agent xdp attach --pin-dir`.
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        pin_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Counters { pin_dir } => {
            let stats = dataplane::pinned_exit_stats(&pin_dir)
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
        }
    }
    Ok(())
}
