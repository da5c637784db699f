//! `cargo xtask`: setup, the test suite, the lab, the demo and the benchmarks.
//!
//! xtask must build on a fresh machine before anything is installed, so it depends on no
//! crate that needs the eBPF toolchain; it drives cargo and the `lb-lab` binary instead.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI reports progress"
)]

mod bench;
mod bench_failover;
mod bench_l7;
mod bench_maglev;
mod dist;
mod setup;
mod shell;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Project automation for the load-balancer appliance.
#[derive(Debug, Parser)]
#[command(about, bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install every prerequisite (idempotent: a second run only checks).
    Setup,
    /// Set up, then run the whole suite: fmt, clippy, unit tests and the privileged
    /// namespace tests (root; `LB_SKIP_PRIVILEGED=1` skips those, loudly).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the local lab demo.
    Demo {
        /// Leave the lab up at the end.
        #[arg(long)]
        keep: bool,
    },
    /// Build, inspect or remove a lab of network namespaces by hand (root): `up`,
    /// `down`, `status`. The arguments go to `lb-lab` unchanged (`cargo xtask lab help`).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Build the binaries operators install, optimised (fat LTO; lb-gateway also
    /// profile-guided after a short training run on 127.0.0.1), into `target/dist/bin/`.
    /// Needs `cargo xtask setup` first.
    Dist {
        /// Build lb-gateway without profile-guided optimisation (no training run).
        #[arg(long)]
        no_pgo: bool,
    },
    /// Benchmarks (never part of the test suite); results go in BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    match cli.command {
        Command::Setup => setup::run(),
        Command::Test { args } => test(&args),
        Command::Demo { keep } => {
            setup::run()?;
            shell::cargo(&[
                "build",
                "-p",
                "lb-userspace",
                "-p",
                "lb-gateway",
                "-p",
                "lb-tests",
                "--bins",
            ])?;
            let mut args = vec!["demo"];
            if keep {
                args.push("--keep");
            }
            lab(&args)
        }
        Command::Lab { args } => {
            setup::run()?;
            lab(&args.iter().map(String::as_str).collect::<Vec<_>>())
        }
        Command::Dist { no_pgo } => dist::run(!no_pgo),
        Command::Bench { which } => bench::run(which),
    }
}

fn lab(args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["run", "--quiet", "-p", "lb-tests", "--bin", "lb-lab", "--"];
    all.extend_from_slice(args);
    shell::cargo(&all)
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    setup::run()?;
    shell::step("cargo fmt --check");
    shell::cargo(&["fmt", "--all", "--", "--check"])?;
    shell::step("cargo clippy (all targets, warnings are errors)");
    shell::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    shell::step("cargo test (unit, integration and privileged namespace tests)");
    if std::env::var("LB_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!(
            "\n*** LB_SKIP_PRIVILEGED=1: the privileged namespace tests will be SKIPPED. CI never sets this. ***\n"
        );
    }
    let mut args: Vec<&str> = vec!["test", "--workspace"];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    shell::cargo(&args)?;
    println!(
        "\nxtask test: all steps passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The workspace root: xtask's manifest directory's parent.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("xtask has no parent directory")
}
