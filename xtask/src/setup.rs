//! `cargo xtask setup`: installs what the build, the tests and the demo need on a fresh
//! machine of this project's kind (Debian 12, root, rustup with stable and nightly).
//!
//! Idempotent: every step first checks whether its result is already there and does
//! nothing if so, so a second run only checks (a second or two).
use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::shell;

/// Debian packages: the eBPF toolchain's LLVM, tools the lab uses, and the real peers the
/// tests and benchmarks run against.
pub const APT_PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22, the same major as rustc's.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "clang",
    "bpftool",
    // The lab.
    "iproute2",
    "ethtool",
    "procps",
    "iputils-ping",
    "tcpdump",
    // Real peers for tests and benchmarks.
    "keepalived",
    "redis-server",
    "nginx",
    "haproxy",
    "wrk",
    "nghttp2-client",
    // promtool, to check the agent's metrics output.
    "prometheus",
];

/// The bpf-linker release this project builds with (the newest that builds with LLVM 22
/// and rustc 1.95 here).
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    shell::step("setup: checking prerequisites");
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    bpffs()?;
    println!(
        "setup: everything in place ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn is_root() -> bool {
    shell::output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            shell::output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_none_or(|s| s.trim() != "install ok installed")
        })
        .collect();
    if missing.is_empty() {
        println!("setup: {} Debian packages installed", APT_PACKAGES.len());
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {}; run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    shell::run(Command::new("apt-get").args(["update", "-q"]))?;
    shell::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"])
            .args(&missing),
    )
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let sysroot = shell::output("rustc", &["+nightly", "--print", "sysroot"]);
    let Some(sysroot) = sysroot else {
        println!("setup: installing the nightly toolchain (for -Z build-std of the eBPF crate)");
        return shell::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    };
    let core = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if core.exists() {
        println!("setup: nightly rust-src present");
        return Ok(());
    }
    println!("setup: adding rust-src to the nightly toolchain");
    shell::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(v) = shell::output("bpf-linker", &["--version"])
        && v.contains(BPF_LINKER_VERSION)
    {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    // bpf-linker's build script finds LLVM through LLVM_PREFIX (or an llvm-config on
    // PATH); llvm-sys through LLVM_SYS_221_PREFIX. Without them it searches /usr and
    // fails with "unable to find library -lLLVM".
    shell::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
    .context("installing bpf-linker")
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, at, kind) = (f.next(), f.next(), f.next());
        at == Some("/sys/fs/bpf") && kind == Some("bpf")
    });
    if mounted {
        println!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    if !is_root() {
        println!(
            "setup: bpffs is not mounted and this is not root; the privileged tests will mount it"
        );
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    shell::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
