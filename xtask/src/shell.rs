//! Running commands with their output passed through, failing with the command line.
use std::process::Command;

use anyhow::{Context as _, bail};

/// Prints a step header.
pub fn step(text: &str) {
    println!("\n==> {text}");
}

/// Runs `cargo ARGS`, inheriting stdio.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(Command::new(cargo).args(args))
}

/// Runs a command, inheriting stdio; fails when it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or `None` when it cannot run or fails.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
