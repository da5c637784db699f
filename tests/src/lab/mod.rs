//! Network-namespace topologies for tests, the demo and manual experiments.
//!
//! A lab is a set of *hosts* (one network namespace each, named `{prefix}-{host}`) whose
//! `eth0` is plugged into one bridge `br0` living in a *switch* namespace
//! `{prefix}-sw`. Every veth pair is created directly between the switch namespace and
//! the host namespace, so nothing is ever created in the root namespace, and deleting the
//! namespaces removes every interface. Addresses live only inside the namespaces.
//!
//! Settings that XDP forwarding over veth needs on these kernels are applied here:
//! * TX checksum offload is turned off on every veth (both ends): XDP rewrites and
//!   retransmits frames whose checksum was left to "offload", and the receiver would
//!   drop them as checksum errors.
//! * For a host marked [`HostSpec::xdp_tx`], the `xdp_pass` program is attached to the
//!   switch-side peer of its veth: veth silently drops XDP_TX frames unless the peer has
//!   an XDP program.
//!
//! IPv6 duplicate address detection is off in every namespace so addresses are usable at
//! once. Hosts holding a VIP on loopback get `arp_ignore=1`/`arp_announce=2` so they
//! never answer ARP for it, and `rp_filter` is off everywhere.
//!
//! Every lab has a prefix; [`Lab::up`] first removes leftovers of the same prefix (from a
//! crashed run), and dropping the [`Lab`] tears everything down: processes inside the
//! hosts are killed, bpffs pins under `/sys/fs/bpf/{prefix}` removed, namespaces deleted.
mod cmd;
mod spec;
pub mod topology;

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub use cmd::{in_netns, list_netns, netns_pids};
pub use spec::{HostSpec, IpNet};

/// Name of the bridge in the switch namespace.
pub const BRIDGE: &str = "br0";
/// Name of every host's interface on the segment.
pub const HOST_IFACE: &str = "eth0";
/// Root of the lab's bpffs pins.
pub const BPFFS: &str = "/sys/fs/bpf";

/// What went wrong while building, using or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab prefix {prefix:?} is invalid: use 1 to 12 characters of a-z and 0-9")]
    BadPrefix { prefix: String },
    #[error(
        "host name {name:?} is invalid: use 1 to 12 characters of a-z and 0-9, unique in the lab"
    )]
    BadHostName { name: String },
    #[error("address {text:?} is invalid: {reason}")]
    BadAddress { text: String, reason: String },
    #[error("no host {name:?} in lab {prefix}")]
    UnknownHost { prefix: String, name: String },
    #[error("`{cmd}` exited with {status}: {stderr}")]
    Command {
        cmd: String,
        status: i32,
        stderr: String,
    },
    #[error("could not run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {ns}: {errno}")]
    Setns {
        ns: String,
        errno: nix::errno::Errno,
    },
    #[error("a thread working in network namespace {ns} panicked")]
    ThreadPanicked { ns: String },
    #[error("mounting bpffs at {BPFFS}: {0}")]
    MountBpffs(nix::errno::Errno),
    #[error("attaching xdp_pass to {iface} in {ns}: {source}")]
    XdpPass {
        ns: String,
        iface: String,
        #[source]
        source: lb_userspace::dataplane::DataplaneError,
    },
    #[error("processes in {ns} still alive after SIGKILL: {pids:?}")]
    Unkillable { ns: String, pids: Vec<i32> },
}

/// A host as built: its namespace, MAC and addresses.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Host {
    pub name: String,
    /// The network namespace, `{prefix}-{name}`.
    pub ns: String,
    /// MAC address of its `eth0`.
    pub mac: [u8; 6],
    /// Addresses on `eth0`.
    pub addrs: Vec<IpNet>,
    /// Addresses on `lo` (VIPs).
    pub loopback: Vec<IpAddr>,
    /// The switch-side veth in the switch namespace, `p-{name}`.
    pub port: String,
}

impl Host {
    /// The first IPv4 address on `eth0`.
    pub fn ipv4(&self) -> Option<IpAddr> {
        self.addrs.iter().map(|a| a.addr).find(IpAddr::is_ipv4)
    }

    /// The first IPv6 address on `eth0`.
    pub fn ipv6(&self) -> Option<IpAddr> {
        self.addrs.iter().map(|a| a.addr).find(IpAddr::is_ipv6)
    }
}

/// A running lab; dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    hosts: Vec<Host>,
    /// Set once torn down, so drop does not do it twice.
    down: bool,
}

impl Lab {
    /// Builds the topology. Leftovers of the same prefix are removed first; if any step
    /// fails, everything created so far is removed before the error is returned.
    pub fn up(prefix: &str, specs: Vec<HostSpec>) -> Result<Lab, LabError> {
        validate_name(prefix).map_err(|()| LabError::BadPrefix {
            prefix: prefix.to_owned(),
        })?;
        let mut seen = Vec::new();
        for s in &specs {
            if validate_name(&s.name).is_err() || s.name == "sw" || seen.contains(&&s.name) {
                return Err(LabError::BadHostName {
                    name: s.name.clone(),
                });
            }
            seen.push(&s.name);
        }
        teardown_prefix(prefix)?;
        let mut lab = Lab {
            prefix: prefix.to_owned(),
            hosts: Vec::new(),
            down: false,
        };
        // On error `lab` is dropped here, which removes whatever was created.
        lab.build(specs)?;
        Ok(lab)
    }

    fn build(&mut self, specs: Vec<HostSpec>) -> Result<(), LabError> {
        let sw = self.switch_ns();
        cmd::ip(&["netns", "add", &sw])?;
        cmd::sysctls(
            &sw,
            &[
                ("net.ipv6.conf.all.disable_ipv6".into(), "1".into()),
                ("net.ipv6.conf.default.disable_ipv6".into(), "1".into()),
            ],
        )?;
        cmd::ip_in(&sw, &["link", "set", "lo", "up"])?;
        // No multicast snooping: VRRP adverts must reach every port without a querier.
        cmd::ip_in(
            &sw,
            &[
                "link",
                "add",
                BRIDGE,
                "type",
                "bridge",
                "stp_state",
                "0",
                "mcast_snooping",
                "0",
            ],
        )?;
        cmd::ip_in(&sw, &["link", "set", BRIDGE, "up"])?;

        for (index, spec) in specs.into_iter().enumerate() {
            let host = self.add_host(index, spec)?;
            self.hosts.push(host);
        }
        Ok(())
    }

    fn add_host(&self, index: usize, spec: HostSpec) -> Result<Host, LabError> {
        let sw = self.switch_ns();
        let ns = format!("{}-{}", self.prefix, spec.name);
        let port = format!("p-{}", spec.name);
        let mac = spec.mac.unwrap_or(default_mac(index));
        cmd::ip(&["netns", "add", &ns])?;

        let mut settings: Vec<(String, String)> = vec![
            ("net.ipv6.conf.all.accept_dad".into(), "0".into()),
            ("net.ipv6.conf.default.accept_dad".into(), "0".into()),
            ("net.ipv4.conf.all.rp_filter".into(), "0".into()),
            ("net.ipv4.conf.default.rp_filter".into(), "0".into()),
        ];
        if !spec.loopback.is_empty() {
            settings.push(("net.ipv4.conf.all.arp_ignore".into(), "1".into()));
            settings.push(("net.ipv4.conf.all.arp_announce".into(), "2".into()));
        }
        if spec.forwarding {
            settings.push(("net.ipv4.ip_forward".into(), "1".into()));
            settings.push(("net.ipv6.conf.all.forwarding".into(), "1".into()));
        }
        // Keys of `eth0` itself can only be written once it exists (below).
        let eth0_key = format!(".{HOST_IFACE}.");
        let (eth0_settings, other): (Vec<_>, Vec<_>) = spec
            .sysctls
            .iter()
            .cloned()
            .partition(|(key, _)| key.contains(&eth0_key));
        settings.extend(other);
        cmd::sysctls(&ns, &settings)?;
        cmd::ip_in(&ns, &["link", "set", "lo", "up"])?;

        cmd::ip_in(
            &sw,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", HOST_IFACE, "netns", &ns,
            ],
        )?;
        cmd::ip_in(&sw, &["link", "set", &port, "master", BRIDGE])?;
        cmd::sysctls(&ns, &eth0_settings)?;
        let mac_text = format_mac(&mac);
        cmd::ip_in(&ns, &["link", "set", HOST_IFACE, "address", &mac_text])?;
        for a in &spec.addrs {
            let text = a.to_string();
            let mut args = vec!["addr", "add", text.as_str(), "dev", HOST_IFACE];
            if a.addr.is_ipv6() {
                args.push("nodad");
            }
            cmd::ip_in(&ns, &args)?;
        }
        for vip in &spec.loopback {
            let text = match vip {
                IpAddr::V4(v) => format!("{v}/32"),
                IpAddr::V6(v) => format!("{v}/128"),
            };
            cmd::ip_in(&ns, &["addr", "add", &text, "dev", "lo"])?;
        }
        // Lab-only: veth leaves checksums to "offload", which XDP rewriting breaks.
        cmd::run(
            "ip",
            &["netns", "exec", &sw, "ethtool", "-K", &port, "tx", "off"],
        )?;
        cmd::run(
            "ip",
            &[
                "netns", "exec", &ns, "ethtool", "-K", HOST_IFACE, "tx", "off",
            ],
        )?;
        if let Some(mtu) = spec.mtu {
            let mtu = mtu.to_string();
            cmd::ip_in(&sw, &["link", "set", &port, "mtu", &mtu])?;
            cmd::ip_in(&ns, &["link", "set", HOST_IFACE, "mtu", &mtu])?;
        }
        cmd::ip_in(&sw, &["link", "set", &port, "up"])?;
        cmd::ip_in(&ns, &["link", "set", HOST_IFACE, "up"])?;
        for route in &spec.routes {
            let mut args = vec!["route", "add"];
            args.extend(route.split_whitespace());
            cmd::ip_in(&ns, &args)?;
        }
        if spec.xdp_tx {
            self.attach_pass(&port)?;
        }
        Ok(Host {
            name: spec.name,
            ns,
            mac,
            addrs: spec.addrs,
            loopback: spec.loopback,
            port,
        })
    }

    /// Attaches `xdp_pass` to a switch port so XDP_TX frames sent into it are delivered.
    fn attach_pass(&self, port: &str) -> Result<(), LabError> {
        ensure_bpffs()?;
        let sw = self.switch_ns();
        let pin = self.pin_dir().join(format!("pass-{port}"));
        let iface = port.to_owned();
        cmd::in_netns(&sw, move || {
            lb_userspace::dataplane::attach_pass_pinned(&iface, &pin)
        })?
        .map_err(|source| LabError::XdpPass {
            ns: sw.clone(),
            iface: port.to_owned(),
            source,
        })?;
        Ok(())
    }

    /// The lab's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The switch namespace, `{prefix}-sw`.
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// Where this lab's bpffs pins live; removed on teardown.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(BPFFS).join(&self.prefix)
    }

    /// All hosts, in the order they were specified.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// One host by name.
    pub fn host(&self, name: &str) -> Result<&Host, LabError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| LabError::UnknownHost {
                prefix: self.prefix.clone(),
                name: name.to_owned(),
            })
    }

    /// The host that has `addr` on its `eth0`.
    pub fn host_with_addr(&self, addr: IpAddr) -> Result<&Host, LabError> {
        self.hosts
            .iter()
            .find(|h| h.addrs.iter().any(|a| a.addr == addr))
            .ok_or_else(|| LabError::UnknownHost {
                prefix: self.prefix.clone(),
                name: addr.to_string(),
            })
    }

    /// Runs `f` inside the namespace of the host that owns `addr`.
    pub fn in_host_of<T, F>(&self, addr: IpAddr, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let ns = self.host_with_addr(addr)?.ns.clone();
        cmd::in_netns(&ns, f)
    }

    /// Runs `f` on a thread inside the host's namespace (see [`in_netns`]).
    pub fn in_host<T, F>(&self, name: &str, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let ns = self.host(name)?.ns.clone();
        cmd::in_netns(&ns, f)
    }

    /// Starts a process inside the host (stdin closed, output inherited unless the
    /// caller's `configure` changes it). The lab kills it on teardown at the latest.
    ///
    /// Only the network namespace is entered (`nsenter --net`), unlike `ip netns exec`,
    /// which also mounts a fresh sysfs and so hides bpffs at /sys/fs/bpf.
    pub fn spawn(
        &self,
        name: &str,
        program: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Result<Child, LabError> {
        let ns = self.host(name)?.ns.clone();
        let mut command = Command::new("nsenter");
        command
            .arg(netns_arg(&ns))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null());
        configure(&mut command);
        command.spawn().map_err(|source| LabError::Spawn {
            cmd: format!("{program} {} (in {ns})", args.join(" ")),
            source,
        })
    }

    /// Runs a command inside the host to completion and returns its stdout.
    pub fn exec(&self, name: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
        let ns = self.host(name)?.ns.clone();
        let net = netns_arg(&ns);
        let mut all = vec![net.as_str(), "--", program];
        all.extend_from_slice(args);
        cmd::run("nsenter", &all)
    }

    /// Cuts the host's link: its switch port goes down, so the host loses carrier.
    pub fn cut_link(&self, name: &str) -> Result<(), LabError> {
        let port = self.host(name)?.port.clone();
        cmd::ip_in(&self.switch_ns(), &["link", "set", &port, "down"]).map(drop)
    }

    /// Restores a link cut by [`Lab::cut_link`].
    pub fn restore_link(&self, name: &str) -> Result<(), LabError> {
        let port = self.host(name)?.port.clone();
        cmd::ip_in(&self.switch_ns(), &["link", "set", &port, "up"]).map(drop)
    }

    /// SIGKILLs every process inside the host and waits until they are gone. Returns how
    /// many were killed.
    pub fn kill_processes(&self, name: &str) -> Result<usize, LabError> {
        let ns = self.host(name)?.ns.clone();
        kill_netns_processes(&ns)
    }

    /// Tears the lab down now (dropping it does the same).
    pub fn down(mut self) -> Result<(), LabError> {
        self.down = true;
        teardown_prefix(&self.prefix).map(drop)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        if let Err(e) = teardown_prefix(&self.prefix) {
            #[allow(clippy::print_stderr, reason = "drop cannot return the error")]
            {
                eprintln!("lab {}: teardown failed: {e}", self.prefix);
            }
        }
    }
}

/// Removes every namespace named `{prefix}-*` (killing the processes inside first) and
/// the bpffs pins under `/sys/fs/bpf/{prefix}`. Returns the namespaces removed. Safe to
/// call when nothing is there.
pub fn teardown_prefix(prefix: &str) -> Result<Vec<String>, LabError> {
    validate_name(prefix).map_err(|()| LabError::BadPrefix {
        prefix: prefix.to_owned(),
    })?;
    let ours: Vec<String> = lab_namespaces(prefix)?;
    let mut first_error = None;
    for ns in &ours {
        if let Err(e) = kill_netns_processes(ns) {
            first_error.get_or_insert(e);
        }
    }
    // Removing the pins detaches the pinned XDP links.
    let pins = PathBuf::from(BPFFS).join(prefix);
    match std::fs::remove_dir_all(&pins) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            first_error.get_or_insert(LabError::Io { path: pins, source });
        }
    }
    for ns in &ours {
        if let Err(e) = cmd::ip(&["netns", "del", ns]) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(ours),
    }
}

/// The namespaces that belong to labs with this prefix.
pub fn lab_namespaces(prefix: &str) -> Result<Vec<String>, LabError> {
    let start = format!("{prefix}-");
    Ok(cmd::list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(&start))
        .collect())
}

/// A human summary of a lab: per namespace, its interfaces, addresses and XDP programs.
pub fn status(prefix: &str) -> Result<String, LabError> {
    let mut out = String::new();
    for ns in lab_namespaces(prefix)? {
        out.push_str(&format!("== {ns}\n"));
        out.push_str(&cmd::ip_in(&ns, &["-br", "addr"])?);
        for line in cmd::ip_in(&ns, &["-d", "link"])?.lines() {
            if line.trim_start().starts_with("prog/xdp") {
                out.push_str(&format!("   xdp: {}\n", line.trim()));
            }
        }
        let pids = netns_pids(&ns)?;
        if !pids.is_empty() {
            out.push_str(&format!("   processes: {pids:?}\n"));
        }
    }
    Ok(out)
}

fn kill_netns_processes(ns: &str) -> Result<usize, LabError> {
    let pids = netns_pids(ns)?;
    for &pid in &pids {
        // ESRCH (already gone) is fine; anything else shows up as a survivor below.
        let _ignored = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = netns_pids(ns)?;
        if left.is_empty() {
            return Ok(pids.len());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Unkillable {
                ns: ns.to_owned(),
                pids: left,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it is mounted already.
pub fn ensure_bpffs() -> Result<(), LabError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|source| LabError::Io {
        path: "/proc/mounts".into(),
        source,
    })?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(LabError::MountBpffs)
}

/// `--net=/var/run/netns/NS` for nsenter.
fn netns_arg(ns: &str) -> String {
    format!("--net={}", cmd::netns_path(ns).display())
}

fn validate_name(name: &str) -> Result<(), ()> {
    let ok = !name.is_empty()
        && name.len() <= 12
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok { Ok(()) } else { Err(()) }
}

/// Locally administered, unicast: 02:6c:62 ("lb") then the host's index.
fn default_mac(index: usize) -> [u8; 6] {
    let i = index as u32 + 1;
    [0x02, 0x6c, 0x62, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// `aa:bb:cc:dd:ee:ff`
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("lbt1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a-b").is_err());
        assert!(validate_name("UPPER").is_err());
        assert!(validate_name("thirteenchars").is_err());
    }

    #[test]
    fn default_macs_are_unicast_local_and_distinct() {
        let a = default_mac(0);
        let b = default_mac(1);
        assert_ne!(a, b);
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        assert_eq!(format_mac(&a), "02:6c:62:00:00:01");
    }
}
