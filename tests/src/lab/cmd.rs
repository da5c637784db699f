//! Running `ip`/`ethtool`, and doing work inside a network namespace from this process.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
};

use nix::sched::{CloneFlags, setns};

use super::LabError;

/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: format!("{program} {}", args.join(" ")),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            status: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

/// `ip -n NS ARGS...`
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// The network namespaces that exist now (names only).
pub fn list_netns() -> Result<Vec<String>, LabError> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// The path of a named namespace's handle.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Runs `f` on a fresh thread that has entered network namespace `ns`. Sockets it opens,
/// interfaces it resolves and `/proc/sys/net` files it writes are those of `ns`. The
/// calling thread's namespace is never changed.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, LabError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = netns_path(ns);
    let file = File::open(&path).map_err(|source| LabError::Io {
        path: path.clone(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Setns {
                ns: ns.to_owned(),
                errno: e,
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| LabError::ThreadPanicked { ns: ns.to_owned() })?
    })
}

/// Writes sysctls (`net.ipv4.conf.all.rp_filter` style keys) inside `ns`.
pub fn sysctls(ns: &str, settings: &[(String, String)]) -> Result<(), LabError> {
    let settings = settings.to_vec();
    in_netns(ns, move || -> Result<(), LabError> {
        for (key, value) in &settings {
            let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).map_err(|source| LabError::Io { path, source })?;
        }
        Ok(())
    })?
}

/// The PIDs of processes whose network namespace is `ns`.
pub fn netns_pids(ns: &str) -> Result<Vec<i32>, LabError> {
    let out = ip(&["netns", "pids", ns])?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}
