//! Running commands with their output passed through, failing with the command line.
use std::process::Command;

use anyhow::{Context as _, bail};

/// Prints a step header.
pub fn step(text: &str) {
    println!("\n==> {text}");
}

/// Runs `cargo ARGS`, inheriting stdio.
///
/// Under CI (`CI` set and not `false`) the build is not incremental: a clean clone gains
/// nothing from the incremental cache, which would take another ~1.7 GB of disk.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(args);
    if in_ci() && std::env::var_os("CARGO_INCREMENTAL").is_none() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    run(&mut cmd)
}

/// Whether this runs under CI: `CI` is set to anything but `false` or `0` (the convention
/// of the common CI systems).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
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
