//! The agent's configuration: TOML parsed into raw structs (`deny_unknown_fields`
//! everywhere), then [`validate`]d into typed ones, collecting every error with its key
//! path. The same code runs for `lb-agent check-config`, start-up and reload.
//!
//! The reference for operators is `lb-userspace/AGENT.md`.
use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::vrrp::{
    packet::{AdverInterval, Family, MAX_ADDRESSES, Vrid},
    state::Priority,
};

/// Exit code of every binary on an invalid configuration (`EX_DATAERR` of sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// One problem in a configuration file, with the key path it is about (`vrrp[0].vips[1]`;
/// empty for the document itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where: dotted key path with array indices.
    pub path: String,
    /// Why, and what would be valid.
    pub reason: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, one per line as `file: key.path: reason`.
    #[error("{}", render_issues(file, issues))]
    Invalid {
        file: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

fn render_issues(file: &Path, issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("{}: {i}", file.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// Raw: what the file says.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    vrrp: Vec<RawVrrp>,
    #[serde(default)]
    tracking: RawTracking,
    #[serde(default)]
    gateways: Vec<RawGateway>,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    xdp: Option<RawXdp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    state_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVrrp {
    name: String,
    vrid: u16,
    interface: String,
    priority: u16,
    #[serde(default = "default_advert_cs")]
    advert_interval_cs: u16,
    #[serde(default = "default_true")]
    preempt: bool,
    #[serde(default)]
    preempt_delay_ms: u64,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    unicast_peers: Vec<String>,
    vips: Vec<String>,
    #[serde(default = "default_garp_burst")]
    garp_burst: u32,
    #[serde(default = "default_garp_repeat")]
    garp_repeat_delay_ms: Option<u64>,
    #[serde(default)]
    garp_refresh_ms: Option<u64>,
}

fn default_advert_cs() -> u16 {
    100
}
fn default_true() -> bool {
    true
}
fn default_garp_burst() -> u32 {
    5
}
fn default_garp_repeat() -> Option<u64> {
    Some(5000)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTracking {
    #[serde(default)]
    xdp_attached: Option<RawXdpTrack>,
    #[serde(default)]
    gateway_ready: Option<RawGatewayReady>,
    #[serde(default)]
    uplink: Vec<RawUplink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXdpTrack {
    interface: String,
    weight: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGatewayReady {
    url: String,
    weight: u16,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    interface: String,
    weight: u16,
}

fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    500
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    name: String,
    address: String,
    #[serde(default)]
    address6: Option<String>,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    admin: Option<String>,
    probe: RawProbe,
}

fn default_weight() -> u32 {
    100
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    kind: String,
    port: u16,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    expect_status: Option<u16>,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_rise")]
    rise: u32,
    #[serde(default = "default_fall")]
    fall: u32,
}

fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default = "default_sync_ms")]
    sync_interval_ms: u64,
    #[serde(default)]
    token_file: Option<PathBuf>,
}

impl Default for RawCluster {
    fn default() -> Self {
        RawCluster {
            listen: None,
            peers: Vec::new(),
            sync_interval_ms: default_sync_ms(),
            token_file: None,
        }
    }
}

fn default_sync_ms() -> u64 {
    5000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_socket")]
    socket: PathBuf,
    #[serde(default)]
    https: Option<RawHttps>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            socket: default_socket(),
            https: None,
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

/// Where `lb-agent` listens and `lbctl` connects when nothing else is said.
pub const DEFAULT_SOCKET: &str = "/run/lb-agent/admin.sock";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttps {
    listen: String,
    cert_file: PathBuf,
    key_file: PathBuf,
    token_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXdp {
    interface: String,
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default = "default_flow_table_size")]
    flow_table_size: u32,
}

fn default_flow_table_size() -> u32 {
    lb_common::datapath::DEFAULT_FLOW_TABLE_SIZE
}

fn default_mode() -> String {
    "auto".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    port: u16,
    #[serde(default = "default_proto")]
    protocol: String,
}

fn default_proto() -> String {
    "tcp".into()
}

// ---------------------------------------------------------------------------------------
// Validated: what the agent runs with.

/// A validated agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// This node.
    pub node: NodeConfig,
    /// Virtual routers (one address family each).
    pub vrrp: Vec<VrrpInstance>,
    /// Health inputs of the VRRP priority.
    pub tracking: Tracking,
    /// The gateway nodes, in file order (ids are positions in name order, see
    /// [`AgentConfig::gateway_ids`]).
    pub gateways: Vec<GatewayConfig>,
    /// Admin-state exchange with the other agents.
    pub cluster: ClusterConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// Prometheus listener.
    pub metrics: Option<SocketAddr>,
    /// The L4 data path, when this node runs it.
    pub xdp: Option<XdpConfig>,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Unique in the cluster; the origin of admin-state changes made here.
    pub name: String,
    /// Where the admin state is persisted.
    pub state_dir: PathBuf,
}

/// One `[[vrrp]]` instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpInstance {
    /// Name, used in logs, metrics and status.
    pub name: String,
    pub vrid: Vrid,
    pub interface: String,
    /// Configured priority before tracking deductions.
    pub priority: Priority,
    pub advert_interval: AdverInterval,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// Source address of our adverts; `None`: the interface's first IPv4 address, or its
    /// IPv6 link-local address, looked up at start.
    pub source: Option<IpAddr>,
    /// Unicast peers; empty for multicast.
    pub unicast_peers: Vec<IpAddr>,
    /// The virtual addresses with their prefix length, all of [`VrrpInstance::family`].
    pub vips: Vec<(IpAddr, u8)>,
    pub family: Family,
    pub garp_burst: u32,
    pub garp_repeat_delay: Option<Duration>,
    pub garp_refresh: Option<Duration>,
}

/// `[tracking]`: what lowers the VRRP priority, and by how much.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracking {
    /// The XDP program attached to this interface.
    pub xdp_attached: Option<(String, u8)>,
    /// The local gateway's readiness endpoint.
    pub gateway_ready: Option<GatewayReady>,
    /// Interfaces that must be operationally up.
    pub uplinks: Vec<(String, u8)>,
}

/// `[tracking.gateway_ready]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayReady {
    /// `http://host:port/path`.
    pub target: HttpTarget,
    pub weight: u8,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A plain-HTTP URL broken up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    pub path: String,
}

/// One `[[gateways]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    pub name: String,
    pub address: Ipv4Addr,
    pub address6: Option<Ipv6Addr>,
    /// Configured weight; the admin state may override it.
    pub weight: u32,
    /// The gateway's admin listener (`/admin/connections`), for `lbctl drain --wait`.
    pub admin: Option<SocketAddr>,
    pub probe: ProbeConfig,
}

/// How a gateway is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub kind: ProbeKind,
    pub port: u16,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy gateway healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy gateway unhealthy.
    pub fall: u32,
}

/// The kind of probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// HTTP/1.1 GET of `path`, healthy when the status is `expect_status`.
    Http { path: String, expect_status: u16 },
    /// A TCP connect.
    Tcp,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Where the other agents reach this one.
    pub listen: Option<SocketAddr>,
    /// The other agents.
    pub peers: Vec<SocketAddr>,
    /// Period of the anti-entropy pull.
    pub sync_interval: Duration,
    /// The shared secret of the cluster (`token_file`'s content): required as a bearer
    /// token on the cluster endpoint and sent to the peers. `None`: no authentication.
    pub token: Option<Secret>,
}

/// A secret read from a file; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub std::sync::Arc<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Reads a token file: its content without trailing whitespace, at least 16 characters.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim_end().to_owned();
    if token.len() < 16 {
        return Err(format!(
            "{}: the token must have at least 16 characters",
            path.display()
        ));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{}: the token must be one word (no spaces or control characters)",
            path.display()
        ));
    }
    Ok(token)
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Unix socket (mode 0600).
    pub socket: PathBuf,
    pub https: Option<HttpsConfig>,
}

/// `[admin.https]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsConfig {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// File holding the bearer token (trailing whitespace ignored).
    pub token_file: PathBuf,
}

/// `[xdp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpConfig {
    pub interface: String,
    pub mode: XdpMode,
    /// The ports served on every VIP.
    pub ports: Vec<(u16, L4Protocol)>,
    /// Entries of each connection table (IPv4 and IPv6 flows are kept apart, each table
    /// this size).
    pub flow_table_size: u32,
}

/// Bounds of `[xdp] flow_table_size`: at least 256 buckets of four, and at most 896 MiB of
/// kernel memory (both tables, 56 bytes per unit).
pub const FLOW_TABLE_SIZE_MIN: u32 = 1024;
pub const FLOW_TABLE_SIZE_MAX: u32 = 16 * 1024 * 1024;

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
}

/// Transport protocol of a VIP port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum L4Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for L4Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4Protocol::Tcp => "tcp",
            L4Protocol::Udp => "udp",
        })
    }
}

impl AgentConfig {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        parse(file, &text)
    }

    /// The gateway list in id order: ids are positions in the list sorted by name, so
    /// every agent with the same gateway set assigns the same ids.
    pub fn gateway_ids(&self) -> Vec<(u32, &GatewayConfig)> {
        let mut sorted: Vec<&GatewayConfig> = self.gateways.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        (0u32..).zip(sorted).collect()
    }

    /// The gateway called `name`.
    pub fn gateway(&self, name: &str) -> Option<&GatewayConfig> {
        self.gateways.iter().find(|g| g.name == name)
    }

    /// Settings that only a restart can change; a reload that changes them is refused.
    pub fn restart_only_diff(&self, new: &AgentConfig) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut check = |path: &str, same: bool| {
            if !same {
                out.push(ConfigIssue {
                    path: path.into(),
                    reason: "cannot change on reload; restart the agent".into(),
                });
            }
        };
        check("node.name", self.node.name == new.node.name);
        check("node.state_dir", self.node.state_dir == new.node.state_dir);
        check("admin", self.admin == new.admin);
        check("metrics.listen", self.metrics == new.metrics);
        check("cluster.listen", self.cluster.listen == new.cluster.listen);
        check("xdp", self.xdp == new.xdp);
        out
    }
}

/// Parses and validates `text` as the contents of `file`.
pub fn parse(file: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
    let invalid = |issues| ConfigError::Invalid {
        file: file.to_owned(),
        issues,
    };
    let de = toml::Deserializer::parse(text).map_err(|e| invalid(vec![toml_issue(text, &e)]))?;
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut issue = toml_issue(text, &inner);
        issue.path = if path == "." { String::new() } else { path };
        invalid(vec![issue])
    })?;
    let mut v = Validator::default();
    let cfg = v.config(file, raw);
    if v.issues.is_empty() {
        Ok(cfg)
    } else {
        Err(invalid(v.issues))
    }
}

fn toml_issue(text: &str, e: &toml::de::Error) -> ConfigIssue {
    let at = e
        .span()
        .map(|span| {
            let before = text.get(..span.start).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, str::len) + 1;
            format!(" (line {line}, column {col})")
        })
        .unwrap_or_default();
    ConfigIssue {
        path: String::new(),
        reason: format!("{}{at}", e.message().trim_end()),
    }
}

#[derive(Default)]
struct Validator {
    issues: Vec<ConfigIssue>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.issues.push(ConfigIssue {
            path: path.into(),
            reason: reason.into(),
        });
    }

    fn ip(&mut self, path: &str, text: &str) -> Option<IpAddr> {
        match text.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.err(path, format!("{text:?} is not an IP address"));
                None
            }
        }
    }

    fn socket_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path,
                    format!(
                        "{text:?} is not an address:port (e.g. 10.0.0.1:7900 or [fd00::1]:7900)"
                    ),
                );
                None
            }
        }
    }

    fn millis(&mut self, path: &str, ms: u64, min: u64, max: u64) -> Duration {
        if ms < min || ms > max {
            self.err(path, format!("{ms} ms is out of range ({min}-{max})"));
        }
        Duration::from_millis(ms)
    }

    fn weight(&mut self, path: &str, w: u16) -> u8 {
        match u8::try_from(w) {
            Ok(w) if w > 0 => w,
            _ => {
                self.err(path, format!("{w}: must be 1-254"));
                0
            }
        }
    }

    fn iface(&mut self, path: &str, name: &str) {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            self.err(path, format!("{name:?} is not an interface name"));
        }
    }

    fn config(&mut self, file: &Path, raw: RawConfig) -> AgentConfig {
        if raw.node.name.is_empty()
            || !raw
                .node
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            self.err(
                "node.name",
                format!("{:?}: use letters, digits, '-', '_' and '.'", raw.node.name),
            );
        }
        if !raw.node.state_dir.is_absolute() {
            self.err("node.state_dir", "must be an absolute path");
        }
        let vrrp = raw
            .vrrp
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.vrrp(i, r))
            .collect::<Vec<_>>();
        let mut seen = BTreeSet::new();
        for (i, inst) in vrrp.iter().enumerate() {
            if !seen.insert(inst.name.clone()) {
                self.err(
                    format!("vrrp[{i}].name"),
                    format!("{:?} is used twice", inst.name),
                );
            }
        }
        let mut seen = BTreeSet::new();
        for (i, inst) in vrrp.iter().enumerate() {
            if !seen.insert((
                inst.interface.clone(),
                inst.vrid.get(),
                inst.family == Family::V6,
            )) {
                self.err(
                    format!("vrrp[{i}].vrid"),
                    "another instance has this vrid, interface and address family",
                );
            }
        }
        let tracking = self.tracking(raw.tracking);
        let gateways: Vec<GatewayConfig> = raw
            .gateways
            .into_iter()
            .enumerate()
            .map(|(i, g)| self.gateway(i, g))
            .collect();
        let mut seen = BTreeSet::new();
        for (i, g) in gateways.iter().enumerate() {
            if !seen.insert(g.name.clone()) {
                self.err(
                    format!("gateways[{i}].name"),
                    format!("{:?} is used twice", g.name),
                );
            }
        }
        let cluster = ClusterConfig {
            listen: raw
                .cluster
                .listen
                .as_deref()
                .and_then(|l| self.socket_addr("cluster.listen", l)),
            peers: raw
                .cluster
                .peers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| self.socket_addr(&format!("cluster.peers[{i}]"), p))
                .collect(),
            sync_interval: self.millis(
                "cluster.sync_interval_ms",
                raw.cluster.sync_interval_ms,
                100,
                3_600_000,
            ),
            token: raw
                .cluster
                .token_file
                .as_deref()
                .and_then(|p| match read_token(p) {
                    Ok(t) => Some(Secret(t.into())),
                    Err(e) => {
                        self.err("cluster.token_file", e);
                        None
                    }
                }),
        };
        if !cluster.peers.is_empty() && cluster.listen.is_none() {
            self.err(
                "cluster.listen",
                "required when cluster.peers is set (the peers push changes to it)",
            );
        }
        if !raw.admin.socket.is_absolute() {
            self.err("admin.socket", "must be an absolute path");
        }
        let https = raw.admin.https.map(|h| HttpsConfig {
            listen: self
                .socket_addr("admin.https.listen", &h.listen)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            cert_file: h.cert_file,
            key_file: h.key_file,
            token_file: h.token_file,
        });
        let metrics = raw
            .metrics
            .and_then(|m| self.socket_addr("metrics.listen", &m.listen));
        let xdp = raw.xdp.map(|x| self.xdp(x));
        AgentConfig {
            file: file.to_owned(),
            node: NodeConfig {
                name: raw.node.name,
                state_dir: raw.node.state_dir,
            },
            vrrp,
            tracking,
            gateways,
            cluster,
            admin: AdminConfig {
                socket: raw.admin.socket,
                https,
            },
            metrics,
            xdp,
        }
    }

    fn vrrp(&mut self, i: usize, r: RawVrrp) -> VrrpInstance {
        let p = |k: &str| format!("vrrp[{i}].{k}");
        if r.name.is_empty() {
            self.err(p("name"), "must not be empty");
        }
        let vrid = u8::try_from(r.vrid).ok().and_then(Vrid::new);
        if vrid.is_none() {
            self.err(p("vrid"), format!("{}: must be 1-255", r.vrid));
        }
        self.iface(&p("interface"), &r.interface);
        let priority = u8::try_from(r.priority).ok().and_then(Priority::new);
        if priority.is_none() {
            self.err(
                p("priority"),
                format!("{}: must be 1-255 (255: address owner)", r.priority),
            );
        }
        let advert_interval = AdverInterval::from_centis(r.advert_interval_cs);
        if advert_interval.is_none() {
            self.err(
                p("advert_interval_cs"),
                format!("{}: must be 1-4095 centiseconds", r.advert_interval_cs),
            );
        }
        let preempt_delay = self.millis(&p("preempt_delay_ms"), r.preempt_delay_ms, 0, 3_600_000);
        let mut vips = Vec::new();
        for (j, text) in r.vips.iter().enumerate() {
            let path = format!("vrrp[{i}].vips[{j}]");
            let (addr, prefix) = match text.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (text.as_str(), None),
            };
            let Some(ip) = self.ip(&path, addr) else {
                continue;
            };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix.map(str::parse::<u8>) {
                None => max,
                Some(Ok(l)) if l <= max => l,
                Some(_) => {
                    self.err(&path, format!("prefix length must be 0-{max}"));
                    max
                }
            };
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                self.err(&path, format!("{ip} cannot be a virtual address"));
            }
            vips.push((ip, prefix));
        }
        let family = vips.first().map_or(Family::V4, |(ip, _)| Family::of(*ip));
        if vips.is_empty() && !r.vips.is_empty() {
            // Already reported per address.
        } else if vips.is_empty() {
            self.err(p("vips"), "at least one virtual address is needed");
        } else if vips.iter().any(|(ip, _)| Family::of(*ip) != family) {
            self.err(
                p("vips"),
                "all addresses of one instance must be of one family (VRRPv3); use a second instance with the same vrid for the other family",
            );
        } else if vips.len() > MAX_ADDRESSES {
            self.err(p("vips"), format!("at most {MAX_ADDRESSES} addresses"));
        }
        let source = r.source.as_deref().and_then(|s| self.ip(&p("source"), s));
        if let Some(s) = source
            && Family::of(s) != family
        {
            self.err(p("source"), format!("{s} is not of the family of the vips"));
        }
        let unicast_peers: Vec<IpAddr> = r
            .unicast_peers
            .iter()
            .enumerate()
            .filter_map(|(j, t)| self.ip(&format!("vrrp[{i}].unicast_peers[{j}]"), t))
            .collect();
        for (j, peer) in unicast_peers.iter().enumerate() {
            if Family::of(*peer) != family {
                self.err(
                    format!("vrrp[{i}].unicast_peers[{j}]"),
                    format!("{peer} is not of the family of the vips"),
                );
            }
        }
        let garp_repeat_delay = r
            .garp_repeat_delay_ms
            .map(|ms| self.millis(&p("garp_repeat_delay_ms"), ms, 1, 3_600_000));
        let garp_refresh = r
            .garp_refresh_ms
            .map(|ms| self.millis(&p("garp_refresh_ms"), ms, 100, 3_600_000));
        VrrpInstance {
            name: r.name,
            vrid: vrid.unwrap_or(FALLBACK_VRID),
            interface: r.interface,
            priority: priority.unwrap_or(Priority::DEFAULT),
            advert_interval: advert_interval.unwrap_or(AdverInterval::DEFAULT),
            preempt: r.preempt,
            preempt_delay,
            source,
            unicast_peers,
            vips,
            family,
            garp_burst: r.garp_burst,
            garp_repeat_delay,
            garp_refresh,
        }
    }

    fn tracking(&mut self, r: RawTracking) -> Tracking {
        let xdp_attached = r.xdp_attached.map(|x| {
            self.iface("tracking.xdp_attached.interface", &x.interface);
            let w = self.weight("tracking.xdp_attached.weight", x.weight);
            (x.interface, w)
        });
        let gateway_ready = r.gateway_ready.map(|g| GatewayReady {
            target: self.http_url("tracking.gateway_ready.url", &g.url),
            weight: self.weight("tracking.gateway_ready.weight", g.weight),
            interval: self.millis(
                "tracking.gateway_ready.interval_ms",
                g.interval_ms,
                10,
                3_600_000,
            ),
            timeout: self.millis(
                "tracking.gateway_ready.timeout_ms",
                g.timeout_ms,
                10,
                600_000,
            ),
        });
        let uplinks = r
            .uplink
            .into_iter()
            .enumerate()
            .map(|(i, u)| {
                self.iface(&format!("tracking.uplink[{i}].interface"), &u.interface);
                let w = self.weight(&format!("tracking.uplink[{i}].weight"), u.weight);
                (u.interface, w)
            })
            .collect();
        Tracking {
            xdp_attached,
            gateway_ready,
            uplinks,
        }
    }

    fn http_url(&mut self, path: &str, url: &str) -> HttpTarget {
        let fallback = HttpTarget {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            path: "/".into(),
        };
        let Some(rest) = url.strip_prefix("http://") else {
            self.err(path, format!("{url:?}: must be http://ADDRESS:PORT/PATH"));
            return fallback;
        };
        let (authority, p) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        match authority.parse() {
            Ok(addr) => HttpTarget {
                addr,
                path: p.to_owned(),
            },
            Err(_) => {
                self.err(
                    path,
                    format!("{url:?}: the host must be an IP address with a port"),
                );
                fallback
            }
        }
    }

    fn gateway(&mut self, i: usize, g: RawGateway) -> GatewayConfig {
        let p = |k: &str| format!("gateways[{i}].{k}");
        if g.name.is_empty() {
            self.err(p("name"), "must not be empty");
        }
        let address = match g.address.parse::<Ipv4Addr>() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    p("address"),
                    format!("{:?} is not an IPv4 address", g.address),
                );
                Ipv4Addr::UNSPECIFIED
            }
        };
        let address6 = g
            .address6
            .as_deref()
            .and_then(|t| match t.parse::<Ipv6Addr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.err(p("address6"), format!("{t:?} is not an IPv6 address"));
                    None
                }
            });
        if g.weight == 0 || g.weight > 65_535 {
            self.err(
                p("weight"),
                format!(
                    "{}: must be 1-65535 (use `lbctl drain` to take a gateway out)",
                    g.weight
                ),
            );
        }
        let admin = g
            .admin
            .as_deref()
            .and_then(|a| self.socket_addr(&p("admin"), a));
        let r = g.probe;
        let kind = match r.kind.as_str() {
            "http" => {
                let path = r.path.unwrap_or_else(|| "/health/ready".into());
                if !path.starts_with('/') {
                    self.err(p("probe.path"), format!("{path:?} must start with '/'"));
                }
                let expect_status = r.expect_status.unwrap_or(200);
                if !(100..=599).contains(&expect_status) {
                    self.err(
                        p("probe.expect_status"),
                        format!("{expect_status}: must be 100-599"),
                    );
                }
                ProbeKind::Http {
                    path,
                    expect_status,
                }
            }
            "tcp" => {
                if r.path.is_some() {
                    self.err(p("probe.path"), "only for kind = \"http\"");
                }
                if r.expect_status.is_some() {
                    self.err(p("probe.expect_status"), "only for kind = \"http\"");
                }
                ProbeKind::Tcp
            }
            other => {
                self.err(
                    p("probe.kind"),
                    format!("{other:?}: must be \"http\" or \"tcp\""),
                );
                ProbeKind::Tcp
            }
        };
        if r.port == 0 {
            self.err(p("probe.port"), "must be 1-65535");
        }
        let interval = self.millis(&p("probe.interval_ms"), r.interval_ms, 10, 3_600_000);
        let timeout = self.millis(&p("probe.timeout_ms"), r.timeout_ms, 1, 600_000);
        if timeout > interval {
            self.err(p("probe.timeout_ms"), "must not exceed probe.interval_ms");
        }
        for (k, n) in [("probe.rise", r.rise), ("probe.fall", r.fall)] {
            if n == 0 || n > 100 {
                self.err(p(k), format!("{n}: must be 1-100"));
            }
        }
        GatewayConfig {
            name: g.name,
            address,
            address6,
            weight: g.weight,
            admin,
            probe: ProbeConfig {
                kind,
                port: r.port,
                interval,
                timeout,
                rise: r.rise,
                fall: r.fall,
            },
        }
    }

    fn xdp(&mut self, x: RawXdp) -> XdpConfig {
        self.iface("xdp.interface", &x.interface);
        let mode = match x.mode.as_str() {
            "auto" => XdpMode::Auto,
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            other => {
                self.err(
                    "xdp.mode",
                    format!("{other:?}: must be auto, native or generic"),
                );
                XdpMode::Auto
            }
        };
        let mut ports = Vec::new();
        for (i, p) in x.ports.iter().enumerate() {
            let proto = match p.protocol.as_str() {
                "tcp" => L4Protocol::Tcp,
                "udp" => L4Protocol::Udp,
                other => {
                    self.err(
                        format!("xdp.ports[{i}].protocol"),
                        format!("{other:?}: must be tcp or udp"),
                    );
                    L4Protocol::Tcp
                }
            };
            if p.port == 0 {
                self.err(format!("xdp.ports[{i}].port"), "must be 1-65535");
            }
            if ports.contains(&(p.port, proto)) {
                self.err(format!("xdp.ports[{i}]"), "listed twice");
            }
            ports.push((p.port, proto));
        }
        if ports.is_empty() {
            self.err("xdp.ports", "at least one port is needed");
        }
        if !(FLOW_TABLE_SIZE_MIN..=FLOW_TABLE_SIZE_MAX).contains(&x.flow_table_size) {
            self.err(
                "xdp.flow_table_size",
                format!(
                    "{}: must be {FLOW_TABLE_SIZE_MIN}-{FLOW_TABLE_SIZE_MAX}",
                    x.flow_table_size
                ),
            );
        }
        XdpConfig {
            interface: x.interface,
            mode,
            ports,
            flow_table_size: x.flow_table_size,
        }
    }
}

/// Stands in for an invalid vrid while the other errors are collected (never used: the
/// config is rejected).
const FALLBACK_VRID: Vrid = match Vrid::new(1) {
    Some(v) => v,
    None => panic!("1 is a valid vrid"),
};

#[cfg(test)]
mod tests;
