//! `cargo xtask dist`: the binaries an operator installs, built for speed.
//!
//! - Every binary is built with the `dist` profile (`Cargo.toml`: the release profile with
//!   fat link-time optimisation and one codegen unit).
//! - `lb-gateway` is also built with profile-guided optimisation (PGO) unless `--no-pgo`:
//!   1. an instrumented build (`-Cprofile-generate`) in `TARGET/pgo/generate`;
//!   2. a training run: that binary proxies the L7 benchmark's workload (HTTP/1.1, h2c,
//!      TLS 1.3, a fixed rate, access log off and on, fixed answers, 404s and uploads) to a
//!      local NGINX upstream on 127.0.0.1 for a few seconds per kind (`bench_l7::train`);
//!   3. `llvm-profdata merge` (rustup's `llvm-tools`, added when missing, or the system's
//!      tool of rustc's LLVM major version);
//!   4. the final build (`-Cprofile-use`) in `TARGET/pgo/use`.
//!
//!   Both builds name the host `--target` so that `RUSTFLAGS` reach the gateway's code only,
//!   not build scripts or proc macros.
//!
//!   Each step uses its own target directory because `RUSTFLAGS` differ: sharing one would
//!   rebuild every dependency at each switch.
//! - The results are copied to `TARGET/dist/bin/`.
//!
//! The training needs what the L7 benchmark needs (`cargo xtask setup`: nginx, wrk, h2load,
//! openssl) and two CPUs; the eBPF toolchain is needed for `lb-agent`/`lbctl`.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::shell;

/// Seconds of load per kind of traffic in the training run.
const TRAINING_SECONDS: u64 = 3;

/// What `dist` built.
pub struct Built {
    pub gateway: PathBuf,
    pub pgo: bool,
}

pub fn run(pgo: bool) -> anyhow::Result<()> {
    let target = target_dir()?;
    let bin_dir = target.join("dist/bin");
    fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;

    shell::step("dist: building lb-agent and lbctl (profile dist)");
    shell::cargo(&["build", "--profile", "dist", "-p", "lb-userspace", "--bins"])?;
    for name in ["lb-agent", "lbctl"] {
        copy(&target.join("dist").join(name), &bin_dir.join(name))?;
    }
    let built = gateway(pgo)?;
    copy(&built.gateway, &bin_dir.join("lb-gateway"))?;

    println!("\ndist: binaries in {}:", bin_dir.display());
    for name in ["lb-gateway", "lb-agent", "lbctl"] {
        let path = bin_dir.join(name);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let how = if name == "lb-gateway" && built.pgo {
            "LTO + PGO"
        } else {
            "LTO"
        };
        println!("  {name:<11} {:>6.1} MiB  {how}", size as f64 / 1048576.0);
    }
    Ok(())
}

/// Builds `lb-gateway` with the dist profile, with PGO when `pgo`; returns the binary.
pub fn gateway(pgo: bool) -> anyhow::Result<Built> {
    let target = target_dir()?;
    if !pgo {
        shell::step("dist: building lb-gateway (profile dist, no PGO)");
        shell::cargo(&["build", "--profile", "dist", "-p", "lb-gateway"])?;
        return Ok(Built {
            gateway: target.join("dist/lb-gateway"),
            pgo: false,
        });
    }
    let profdata_tool = llvm_profdata()?;
    let generate_dir = target.join("pgo/generate");
    let use_dir = target.join("pgo/use");
    let profiles = target.join("pgo/profiles");
    // Old profiles would mix a previous binary's counters into this one's.
    if profiles.exists() {
        fs::remove_dir_all(&profiles)
            .with_context(|| format!("removing {}", profiles.display()))?;
    }
    fs::create_dir_all(&profiles).with_context(|| format!("creating {}", profiles.display()))?;

    let host = host_triple()?;
    shell::step("dist: building an instrumented lb-gateway (PGO step 1 of 4)");
    build_gateway(
        &generate_dir,
        &host,
        &format!("-Cprofile-generate={}", profiles.display()),
    )?;

    shell::step("dist: training run (PGO step 2 of 4)");
    crate::bench_l7::train(
        generate_dir.join(&host).join("dist/lb-gateway"),
        &profiles,
        TRAINING_SECONDS,
    )?;

    shell::step("dist: merging the profiles (PGO step 3 of 4)");
    // Only the training gateway's files (`bench_l7::train` names them).
    let raw: Vec<PathBuf> = fs::read_dir(&profiles)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("lb-gateway-") && n.ends_with(".profraw"))
        })
        .collect();
    if raw.is_empty() {
        bail!(
            "the training run left no profile in {} (did the gateway exit cleanly?)",
            profiles.display()
        );
    }
    // A new name per training run: cargo rebuilds when `RUSTFLAGS` change, not when the file
    // they name does, so a reused name would keep code optimised for an older profile.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let merged = profiles.join(format!("lb-gateway-{stamp}.profdata"));
    shell::run(
        Command::new(&profdata_tool)
            .arg("merge")
            .arg("-o")
            .arg(&merged)
            .args(&raw),
    )?;

    shell::step("dist: building the optimised lb-gateway (PGO step 4 of 4)");
    build_gateway(
        &use_dir,
        &host,
        &format!("-Cprofile-use={}", merged.display()),
    )?;
    Ok(Built {
        gateway: use_dir.join(&host).join("dist/lb-gateway"),
        pgo: true,
    })
}

/// `cargo build --profile dist -p lb-gateway` into `dir` with `flag` added to `RUSTFLAGS`.
/// With an explicit `--target`, `RUSTFLAGS` apply to the gateway and its dependencies only,
/// not to build scripts and proc macros (which would otherwise be instrumented too).
fn build_gateway(dir: &Path, host: &str, flag: &str) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !flags.is_empty() {
        flags.push(' ');
    }
    flags.push_str(flag);
    shell::run(
        Command::new(cargo)
            .args([
                "build",
                "--profile",
                "dist",
                "-p",
                "lb-gateway",
                "--target",
                host,
            ])
            .env("CARGO_TARGET_DIR", dir)
            .env("RUSTFLAGS", flags),
    )
}

/// An `llvm-profdata` of rustc's LLVM (profiles are versioned; another LLVM's tool may not
/// read them): rustup's `llvm-tools` component of the default toolchain (added here when
/// missing, so that only `dist` depends on it), else the system's tool of the same LLVM
/// major version (Debian's `llvm-N` package, which `cargo xtask setup` installs for
/// bpf-linker).
pub fn llvm_profdata() -> anyhow::Result<PathBuf> {
    let sysroot = shell::output("rustc", &["--print", "sysroot"]).context("running rustc")?;
    let rustup_tool = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host_triple()?)
        .join("bin/llvm-profdata");
    if !rustup_tool.exists() {
        println!("dist: adding rustup's llvm-tools component (llvm-profdata)");
        if let Err(e) = shell::run(Command::new("rustup").args(["component", "add", "llvm-tools"]))
        {
            eprintln!("dist: {e:#}; looking for the system's llvm-profdata instead");
        }
    }
    if rustup_tool.exists() {
        return Ok(rustup_tool);
    }
    let major = shell::output("rustc", &["-vV"])
        .and_then(|v| {
            v.lines().find_map(|l| {
                l.strip_prefix("LLVM version: ")
                    .and_then(|ver| ver.split('.').next())
                    .map(|m| m.trim().to_owned())
            })
        })
        .context("reading rustc's LLVM version from `rustc -vV`")?;
    let system_tool = PathBuf::from(format!("/usr/lib/llvm-{major}/bin/llvm-profdata"));
    if system_tool.exists() {
        return Ok(system_tool);
    }
    bail!(
        "no llvm-profdata of LLVM {major}: neither {} (rustup component llvm-tools) nor {}; \
         install one, or build without PGO (`cargo xtask dist --no-pgo`)",
        rustup_tool.display(),
        system_tool.display()
    )
}

fn host_triple() -> anyhow::Result<String> {
    shell::output("rustc", &["-vV"])
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("host: ").map(|h| h.trim().to_owned()))
        })
        .context("reading the host triple from `rustc -vV`")
}

fn target_dir() -> anyhow::Result<PathBuf> {
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => crate::workspace_root()?.join("target"),
    })
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}
