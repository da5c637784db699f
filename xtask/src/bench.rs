//! `cargo xtask bench ...`: benchmarks, never part of the test suite. xtask itself is
//! built in release (see .cargo/config.toml), so in-process benchmarks measure optimized
//! code.
use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Maglev table build time, balance and disruption (lb-common's builder).
    Maglev {
        /// Also write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The XDP data path: ns per packet through BPF_PROG_TEST_RUN, net of a trivial
    /// program's floor, with a memory probe (a random bucket of a table that size) and the
    /// time to install a ring (runs lb-tests' `lb-bench-xdp` in release; needs root).
    Xdp {
        /// Also write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Test runs per case (one packet each).
        #[arg(long, default_value_t = 1_000_000)]
        calls: u32,
    },
    /// VRRP failover: client outage and VIP-ownership time for crash and graceful
    /// handover, lb-agent and keepalived side by side, then a soak with both cores busy
    /// counting false takeovers (root; see xtask/src/bench_failover.rs).
    Failover {
        /// Also write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// lb-gateway against NGINX and HAProxy: req/s, p99 and CPU (see xtask/src/bench_l7.rs).
    L7 {
        /// Also write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub fn run(which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Maglev { json } => crate::bench_maglev::run(json.as_deref()),
        Bench::Xdp { json, calls } => {
            crate::setup::run()?;
            let calls = calls.to_string();
            let mut args = vec![
                "run",
                "--quiet",
                "--release",
                "-p",
                "lb-tests",
                "--bin",
                "lb-bench-xdp",
                "--",
                "--calls",
                &calls,
            ];
            let json = json.map(|p| p.display().to_string());
            if let Some(p) = &json {
                args.extend(["--json", p]);
            }
            crate::shell::cargo(&args)
        }
        Bench::Failover { json } => {
            crate::setup::run()?;
            crate::bench_failover::run(json.as_deref())
        }
        Bench::L7 { json } => crate::bench_l7::run(json.as_deref()),
    }
}
