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
}

pub fn run(which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Maglev { json } => crate::bench_maglev::run(json.as_deref()),
    }
}
