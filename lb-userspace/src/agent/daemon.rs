//! The state task: the one owner of the agent's state.
//!
//! It holds the configuration, every gateway's [`Health`], the cluster [`AdminState`],
//! the link and readiness inputs of priority tracking, the ring and the data path, and the
//! handle of the VRRP thread. Probes, the link watcher, the readiness probe, the admin API
//! and the peer exchange send it messages over bounded channels; it publishes a
//! [`Snapshot`] on a `watch` channel after every change, which status and the peer
//! exchange read without asking it.
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::maglev::MaglevBackend;
use serde::Serialize;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{
    admin_state::{AdminState, Change, GatewayAdmin},
    config::{AgentConfig, ConfigIssue},
    health::{self, Health, ProbeResult},
    l4::{DesiredL4, L4Counters, L4Dataplane},
    l4_worker::{L4Report, L4Worker},
    metrics::Metrics,
    netlink::{self, LinkInfo},
    ring,
    vrrp_driver::{self, VrrpCommand, VrrpHandle, VrrpStatus},
};

/// What the state task publishes after every change.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(skip)]
    pub cfg: Arc<AgentConfig>,
    pub node: String,
    pub vrrp: Vec<VrrpStatus>,
    pub health: BTreeMap<String, Health>,
    pub admin: AdminState,
    /// Names of the gateways in the ring, with their weights.
    pub ring: Vec<(String, u32)>,
    pub ring_rebuilds: u64,
    pub tracking: TrackingStatus,
    pub l4: L4Status,
}

/// Priority-tracking inputs and the resulting deduction.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TrackingStatus {
    pub deduction: u32,
    /// (check, ok, weight)
    pub checks: Vec<(String, bool, u8)>,
}

/// The data path as status shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct L4Status {
    pub enabled: bool,
    pub error: Option<String>,
    pub counters: Option<L4Counters>,
}

/// A local change, applied and persisted, ready to be pushed to the peers.
#[derive(Debug, Clone)]
pub struct ChangeApplied {
    pub entry: GatewayAdmin,
    pub state: AdminState,
}

/// Why a command was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error("no gateway {0:?} in the configuration")]
    UnknownGateway(String),
    #[error("{0}")]
    Invalid(String),
    #[error("persisting the admin state: {0}")]
    Persist(String),
    #[error("invalid configuration:\n{0}")]
    Config(String),
}

/// Messages to the state task.
#[derive(Debug)]
pub enum Command {
    /// An operator change made on this node.
    Change {
        gateway: String,
        change: Change,
        reply: oneshot::Sender<Result<ChangeApplied, CommandError>>,
    },
    /// A peer's state (pushed to us, or pulled by the sync task); replies with ours
    /// after the merge.
    Merge {
        state: AdminState,
        reply: Option<oneshot::Sender<AdminState>>,
    },
    /// Give up VRRP mastership.
    Failover {
        hold: Duration,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// Re-read the configuration file.
    Reload {
        reply: Option<oneshot::Sender<Result<Vec<String>, CommandError>>>,
    },
    /// Stop: priority-0 adverts, VIPs removed.
    Shutdown { reply: oneshot::Sender<()> },
}

/// A reply that confirms a change, sent once the data path has it (so that when `lbctl
/// drain` returns, new connections already avoid the gateway on every node that said yes).
enum Deferred {
    Change(
        oneshot::Sender<Result<ChangeApplied, CommandError>>,
        Result<ChangeApplied, CommandError>,
    ),
    Merge(oneshot::Sender<AdminState>, AdminState),
}

impl Deferred {
    fn send(self) {
        let gone = match self {
            Deferred::Change(tx, r) => tx.send(r).is_err(),
            Deferred::Merge(tx, s) => tx.send(s).is_err(),
        };
        if gone {
            tracing::debug!("requester went away before the reply");
        }
    }
}

/// Builds the L4 data path for `[xdp]`; provided by the binary.
pub type L4Factory =
    Box<dyn Fn(&AgentConfig) -> Result<Box<dyn L4Dataplane>, super::l4::L4Error> + Send>;

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] super::admin_state::StateError),
    #[error(transparent)]
    Vrrp(#[from] vrrp_driver::VrrpError),
    #[error(transparent)]
    L4(#[from] super::l4::L4Error),
    #[error("L4 data path thread: {0}")]
    L4Thread(String),
}

struct Daemon {
    cfg: Arc<AgentConfig>,
    metrics: Metrics,
    admin: AdminState,
    health: BTreeMap<String, Health>,
    probe_gen: u64,
    probes: Vec<JoinHandle<()>>,
    probe_tx: mpsc::Sender<ProbeResult>,
    links: BTreeMap<String, LinkInfo>,
    gateway_ready: Option<bool>,
    ready_task: Option<JoinHandle<()>>,
    ready_tx: mpsc::Sender<(u64, Result<(), String>)>,
    /// The data path's thread; `None` without `[xdp]` (and until the first apply).
    l4: Option<L4Worker>,
    /// The newest desired data-path state (what the thread was last given).
    desired_l4: Option<DesiredL4>,
    /// Generation of the last state given to the thread, and of the last it handled.
    l4_sent: u64,
    l4_handled: u64,
    /// Replies held until the data path holds the state they confirm (generation).
    deferred: Vec<(u64, Deferred)>,
    l4_attached: bool,
    l4_status: L4Status,
    members: Option<Vec<MaglevBackend>>,
    ring_rebuilds: u64,
    vrrp: Option<VrrpHandle>,
    vrrp_status: Vec<VrrpStatus>,
    deduction: u32,
    snapshot: watch::Sender<Snapshot>,
}

/// Handles to a running agent.
pub struct Running {
    pub commands: mpsc::Sender<Command>,
    pub snapshot: watch::Receiver<Snapshot>,
    pub metrics: Metrics,
    pub task: JoinHandle<()>,
}

/// Starts the state task: loads the admin state, runs the first probes, starts VRRP.
pub async fn start(
    cfg: AgentConfig,
    metrics: Metrics,
    l4_factory: &L4Factory,
) -> Result<Running, StartError> {
    let cfg = Arc::new(cfg);
    let admin = AdminState::load(&cfg.node.state_dir)?;
    let l4 = match &cfg.xdp {
        Some(_) => Some(l4_factory(&cfg)?),
        None => None,
    };
    let (probe_tx, probe_rx) = mpsc::channel(256);
    let (ready_tx, ready_rx) = mpsc::channel(8);
    let (links_tx, mut links_rx) = mpsc::channel(8);
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    tokio::spawn(async move {
        if let Err(e) = netlink::watch_links(links_tx, Duration::from_secs(1)).await {
            tracing::error!(error = %e, "link watcher stopped; uplink and XDP tracking frozen");
        }
    });
    let initial = Snapshot {
        cfg: cfg.clone(),
        node: cfg.node.name.clone(),
        vrrp: Vec::new(),
        health: BTreeMap::new(),
        admin: admin.clone(),
        ring: Vec::new(),
        ring_rebuilds: 0,
        tracking: TrackingStatus::default(),
        l4: L4Status::default(),
    };
    let (snap_tx, snap_rx) = watch::channel(initial);
    let mut d = Daemon {
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        admin,
        health: BTreeMap::new(),
        probe_gen: 0,
        probes: Vec::new(),
        probe_tx,
        links: BTreeMap::new(),
        gateway_ready: None,
        ready_task: None,
        ready_tx,
        l4_status: L4Status {
            enabled: l4.is_some(),
            ..Default::default()
        },
        l4_attached: l4.as_ref().is_some_and(|dp| dp.attached()),
        l4: None,
        desired_l4: None,
        l4_sent: 0,
        l4_handled: 0,
        deferred: Vec::new(),
        members: None,
        ring_rebuilds: 0,
        vrrp: None,
        vrrp_status: Vec::new(),
        deduction: 0,
        snapshot: snap_tx,
    };
    // First inputs of tracking before VRRP starts, so that it starts with the right
    // priority: the link dump, and one readiness probe.
    if let Ok(Some(links)) = tokio::time::timeout(Duration::from_secs(2), links_rx.recv()).await {
        d.links = links;
    }
    if let Some(gr) = &cfg.tracking.gateway_ready {
        let kind = super::config::ProbeKind::Http {
            path: gr.target.path.clone(),
            expect_status: 200,
        };
        d.gateway_ready = Some(
            health::probe_addr(gr.target.addr, &kind, gr.timeout)
                .await
                .is_ok(),
        );
    }
    d.deduction = d.compute_deduction().0;
    d.start_probes(&BTreeMap::new());
    d.start_ready_probe();
    d.metrics
        .admin_state_version
        .set(i64::try_from(d.admin.max_version()).unwrap_or(i64::MAX));
    d.rebuild(true);
    // The first state is written before VRRP starts (traffic may arrive as soon as this
    // node is Master); later ones go through the data path's thread.
    if let Some(dp) = l4 {
        d.l4 = Some(d.first_l4_apply(dp).await?);
    }
    let vrrp = vrrp_driver::spawn(cfg.vrrp.clone(), d.deduction, metrics.clone())?;
    d.vrrp_status = vrrp.status.borrow().clone();
    d.vrrp = Some(vrrp);
    d.publish();
    let task = tokio::spawn(d.run(cmd_rx, probe_rx, ready_rx, links_rx));
    Ok(Running {
        commands: cmd_tx,
        snapshot: snap_rx,
        metrics,
        task,
    })
}

impl Daemon {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut probes: mpsc::Receiver<ProbeResult>,
        mut ready: mpsc::Receiver<(u64, Result<(), String>)>,
        mut links: mpsc::Receiver<BTreeMap<String, LinkInfo>>,
    ) {
        loop {
            // The watch receivers are polled in place (`changed` marks what it saw): a
            // clone per iteration would start from the original's last-seen version and
            // report the same change again and again.
            let vrrp_status = self.vrrp.as_mut().map(|v| &mut v.status);
            let l4_reports = self.l4.as_mut().map(|w| &mut w.reports);
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Command::Shutdown { reply } = cmd {
                        self.stop().await;
                        if reply.send(()).is_err() {
                            tracing::debug!("shutdown requester went away");
                        }
                        return;
                    }
                    self.command(cmd).await;
                }
                Some(p) = probes.recv() => self.probe_result(p),
                Some((generation, result)) = ready.recv() => {
                    if generation == self.probe_gen {
                        self.gateway_ready = Some(result.is_ok());
                        self.retrack().await;
                    }
                }
                Some(l) = links.recv() => {
                    self.links = l;
                    self.retrack().await;
                }
                Ok(()) = async {
                    match vrrp_status {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(v) = &self.vrrp {
                        self.vrrp_status = v.status.borrow().clone();
                    }
                }
                changed = async {
                    match l4_reports {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if !changed {
                        tracing::error!("the data path thread stopped; the maps keep their last state");
                        self.l4 = None;
                        self.release_deferred(true);
                    } else if let Some(w) = &self.l4 {
                        let r = w.reports.borrow().clone();
                        self.take_l4_report(&r);
                        self.release_deferred(false);
                        if r.attached != self.l4_attached {
                            self.l4_attached = r.attached;
                            self.retrack().await;
                        }
                    }
                }
            }
            self.publish();
        }
        self.stop().await;
    }

    async fn stop(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
        if let Some(t) = self.ready_task.take() {
            t.abort();
        }
        if let Some(v) = self.vrrp.take() {
            v.shutdown().await;
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Change {
                gateway,
                change,
                reply,
            } => {
                let result = self.change(&gateway, change);
                // The snapshot (status, ring) shows the change before it is acknowledged.
                self.publish();
                self.reply_after_l4(Deferred::Change(reply, result));
            }
            Command::Merge { state, reply } => {
                let before = self.admin.clone();
                if self.admin.merge(&state) {
                    if let Err(e) = self.admin.save(&self.cfg.node.state_dir) {
                        tracing::error!(error = %e, "persisting merged admin state failed");
                    }
                    for (name, entry) in &self.admin.gateways {
                        if before.get(name) != Some(entry) {
                            tracing::info!(gateway = %name, mode = %entry.mode, weight = ?entry.weight, version = entry.version, origin = %entry.origin, "admin state from peer");
                            self.metrics
                                .admin_changes
                                .with_label_values(&["peer"])
                                .inc();
                        }
                    }
                    self.metrics
                        .admin_state_version
                        .set(i64::try_from(self.admin.max_version()).unwrap_or(i64::MAX));
                    self.rebuild(false);
                }
                if let Some(r) = reply {
                    self.reply_after_l4(Deferred::Merge(r, self.admin.clone()));
                }
            }
            Command::Failover { hold, reply } => {
                let lines = match &self.vrrp {
                    Some(v) => {
                        let (tx, rx) = oneshot::channel();
                        if v.commands
                            .send(VrrpCommand::Failover { hold, done: tx })
                            .await
                            .is_ok()
                        {
                            rx.await.unwrap_or_default()
                        } else {
                            vec!["VRRP thread is not running".into()]
                        }
                    }
                    None => vec!["VRRP is not running".into()],
                };
                if reply.send(lines).is_err() {
                    tracing::debug!("failover requester went away");
                }
            }
            Command::Reload { reply } => {
                let result = self.reload().await;
                match &result {
                    Ok(lines) => {
                        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                        tracing::info!(changes = ?lines, "configuration reloaded");
                    }
                    Err(e) => {
                        self.metrics
                            .config_reloads
                            .with_label_values(&["refused"])
                            .inc();
                        tracing::error!(error = %e, "configuration reload refused; the old one keeps running");
                    }
                }
                if let Some(r) = reply
                    && r.send(result).is_err()
                {
                    tracing::debug!("reload requester went away");
                }
            }
            Command::Shutdown { .. } => {}
        }
    }

    fn change(&mut self, gateway: &str, change: Change) -> Result<ChangeApplied, CommandError> {
        if self.cfg.gateway(gateway).is_none() {
            return Err(CommandError::UnknownGateway(gateway.to_owned()));
        }
        if let Change::Weight(w) = change
            && (w == 0 || w > 65_535)
        {
            return Err(CommandError::Invalid(format!(
                "weight {w}: must be 1-65535 (use drain to take a gateway out)"
            )));
        }
        let mut next = self.admin.clone();
        let entry = next.apply(gateway, change, &self.cfg.node.name);
        // Persist before acknowledging: an acknowledged change survives a crash.
        next.save(&self.cfg.node.state_dir)
            .map_err(|e| CommandError::Persist(e.to_string()))?;
        self.admin = next;
        tracing::info!(gateway, ?change, version = entry.version, "admin change");
        self.metrics
            .admin_changes
            .with_label_values(&["local"])
            .inc();
        self.metrics
            .admin_state_version
            .set(i64::try_from(self.admin.max_version()).unwrap_or(i64::MAX));
        self.rebuild(false);
        Ok(ChangeApplied {
            entry,
            state: self.admin.clone(),
        })
    }

    async fn reload(&mut self) -> Result<Vec<String>, CommandError> {
        let file = self.cfg.file.clone();
        let new = tokio::task::spawn_blocking(move || AgentConfig::load(&file))
            .await
            .map_err(|e| CommandError::Config(format!("reload task: {e}")))?
            .map_err(|e| CommandError::Config(e.to_string()))?;
        let diff: Vec<ConfigIssue> = self.cfg.restart_only_diff(&new);
        if !diff.is_empty() {
            return Err(CommandError::Config(
                diff.iter()
                    .map(|i| format!("{}: {i}", new.file.display()))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ));
        }
        let old = std::mem::replace(&mut self.cfg, Arc::new(new));
        let mut lines = Vec::new();
        let only_priorities = old.vrrp.len() == self.cfg.vrrp.len()
            && old.vrrp.iter().zip(&self.cfg.vrrp).all(|(a, b)| {
                let mut b = b.clone();
                b.priority = a.priority;
                *a == b
            });
        if old.vrrp != self.cfg.vrrp
            && only_priorities
            && let Some(v) = &self.vrrp
        {
            // Only priorities changed: the running instances take them as they take
            // tracking changes (a Master stays Master unless a Backup now wins by
            // preemption), with no handover.
            let priorities = self.cfg.vrrp.iter().map(|i| i.priority).collect();
            if v.commands
                .send(VrrpCommand::SetConfigured(priorities))
                .await
                .is_err()
            {
                tracing::error!("VRRP thread is gone");
            }
            for (a, b) in old.vrrp.iter().zip(&self.cfg.vrrp) {
                if a.priority != b.priority {
                    lines.push(format!(
                        "vrrp {}: priority {} -> {} (in place)",
                        b.name,
                        a.priority.get(),
                        b.priority.get()
                    ));
                }
            }
        } else if old.vrrp != self.cfg.vrrp {
            // Any other change to a virtual router restarts them: a Master hands over with
            // priority 0 and the new instances start in Backup.
            if let Some(v) = self.vrrp.take() {
                v.shutdown().await;
            }
            let deduction = self.compute_deduction().0;
            match vrrp_driver::spawn(self.cfg.vrrp.clone(), deduction, self.metrics.clone()) {
                Ok(v) => {
                    self.vrrp_status = v.status.borrow().clone();
                    self.vrrp = Some(v);
                    lines.push("vrrp: instances restarted".into());
                }
                Err(e) => {
                    self.vrrp_status.clear();
                    lines.push(format!("vrrp: FAILED to restart: {e}"));
                    tracing::error!(error = %e, "VRRP could not restart after reload");
                }
            }
        }
        if old.gateways != self.cfg.gateways {
            let kept = std::mem::take(&mut self.health);
            self.start_probes(&kept);
            lines.push(format!("gateways: {} probed", self.cfg.gateways.len()));
        }
        if old.tracking != self.cfg.tracking {
            self.start_ready_probe();
            self.retrack().await;
            lines.push("tracking: updated".into());
        }
        if old.cluster.peers != self.cfg.cluster.peers {
            lines.push(format!("cluster: {} peers", self.cfg.cluster.peers.len()));
        }
        self.rebuild(false);
        if lines.is_empty() {
            lines.push("no change".into());
        }
        Ok(lines)
    }

    /// (Re)starts one probe task per gateway; health of gateways whose probe did not
    /// change is kept.
    fn start_probes(&mut self, kept: &BTreeMap<String, Health>) {
        for p in self.probes.drain(..) {
            p.abort();
        }
        self.probe_gen += 1;
        self.health.clear();
        for g in &self.cfg.gateways {
            let mut h = kept
                .get(&g.name)
                .cloned()
                .unwrap_or_else(|| Health::new(g.probe.rise, g.probe.fall));
            h.set_thresholds(g.probe.rise, g.probe.fall);
            self.health.insert(g.name.clone(), h);
            self.probes.push(tokio::spawn(health::run_probe(
                g.clone(),
                self.probe_gen,
                self.probe_tx.clone(),
            )));
        }
    }

    fn start_ready_probe(&mut self) {
        if let Some(t) = self.ready_task.take() {
            t.abort();
        }
        let Some(gr) = self.cfg.tracking.gateway_ready.clone() else {
            self.gateway_ready = None;
            return;
        };
        let tx = self.ready_tx.clone();
        let generation = self.probe_gen;
        self.ready_task = Some(tokio::spawn(async move {
            let kind = super::config::ProbeKind::Http {
                path: gr.target.path.clone(),
                expect_status: 200,
            };
            let mut tick = tokio::time::interval(gr.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let r = health::probe_addr(gr.target.addr, &kind, gr.timeout).await;
                if tx.send((generation, r)).await.is_err() {
                    return;
                }
            }
        }));
    }

    fn probe_result(&mut self, p: ProbeResult) {
        if p.generation != self.probe_gen {
            return;
        }
        self.metrics
            .gateway_probes
            .with_label_values(&[
                p.gateway.as_str(),
                if p.result.is_ok() { "ok" } else { "fail" },
            ])
            .inc();
        let Some(h) = self.health.get_mut(&p.gateway) else {
            return;
        };
        if h.record(&p.result) {
            tracing::info!(gateway = %p.gateway, healthy = h.healthy, error = ?h.last_error, "gateway health changed");
            self.rebuild(false);
        }
    }

    /// The tracking deduction and the checks behind it.
    fn compute_deduction(&self) -> (u32, Vec<(String, bool, u8)>) {
        let t = &self.cfg.tracking;
        let mut checks = Vec::new();
        if let Some((iface, w)) = &t.xdp_attached {
            let ok = self.links.get(iface).is_some_and(|l| l.xdp) || self.l4_attached;
            checks.push((format!("xdp_attached({iface})"), ok, *w));
        }
        if let Some(gr) = &t.gateway_ready {
            checks.push((
                format!("gateway_ready(http://{}{})", gr.target.addr, gr.target.path),
                self.gateway_ready.unwrap_or(false),
                gr.weight,
            ));
        }
        for (iface, w) in &t.uplinks {
            let ok = self.links.get(iface).is_some_and(|l| l.up);
            checks.push((format!("uplink({iface})"), ok, *w));
        }
        let deduction = checks
            .iter()
            .filter(|(_, ok, _)| !ok)
            .map(|(_, _, w)| u32::from(*w))
            .sum();
        (deduction, checks)
    }

    async fn retrack(&mut self) {
        let (deduction, _) = self.compute_deduction();
        if deduction != self.deduction {
            tracing::info!(
                from = self.deduction,
                to = deduction,
                "VRRP priority deduction changed"
            );
            self.deduction = deduction;
            if let Some(v) = &self.vrrp
                && v.commands
                    .send(VrrpCommand::Deduct(deduction))
                    .await
                    .is_err()
            {
                tracing::error!("VRRP thread is gone");
            }
        }
    }

    /// Recomputes the ring when its inputs changed (or when `force`), and applies it.
    fn rebuild(&mut self, force: bool) {
        let healthy: BTreeMap<String, bool> = self
            .health
            .iter()
            .map(|(k, h)| (k.clone(), h.healthy))
            .collect();
        let members = ring::ring_members(&self.cfg, &healthy, &self.admin);
        for g in &self.cfg.gateways {
            let m = &self.metrics;
            m.gateway_healthy
                .with_label_values(&[&g.name])
                .set(i64::from(healthy.get(&g.name).copied().unwrap_or(false)));
            m.gateway_drained
                .with_label_values(&[&g.name])
                .set(i64::from(
                    self.admin.mode(&g.name) == super::admin_state::AdminMode::Drained,
                ));
            m.gateway_weight
                .with_label_values(&[&g.name])
                .set(i64::from(self.admin.weight(&g.name, g.weight)));
            m.gateway_in_ring
                .with_label_values(&[&g.name])
                .set(i64::from(members.iter().any(|b| b.name == g.name)));
        }
        if !force && self.members.as_ref() == Some(&members) {
            return;
        }
        let started = Instant::now();
        let built = ring::build_ring(&members);
        self.metrics
            .ring_build_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.ring_rebuilds.inc();
        self.ring_rebuilds += 1;
        self.metrics
            .ring_members
            .set(i64::try_from(members.len()).unwrap_or(i64::MAX));
        tracing::info!(members = ?members.iter().map(|b| (&b.name, b.weight)).collect::<Vec<_>>(), "ring rebuilt");
        self.members = Some(members);
        let table = match built {
            Ok(t) => t,
            Err(e) => {
                self.l4_status.error = Some(format!("maglev: {e:?}"));
                return;
            }
        };
        if self.l4_status.enabled
            && let Some(desired) = ring::desired_l4(&self.cfg, &table)
        {
            if let Some(w) = &mut self.l4
                && let Some(generation) = w.apply(desired.clone())
            {
                self.l4_sent = generation;
            }
            self.desired_l4 = Some(desired);
        }
    }

    /// Writes the first desired state with `dp` (off the runtime's threads: it may wait
    /// for neighbour entries), then hands `dp` to its thread.
    async fn first_l4_apply(
        &mut self,
        mut dp: Box<dyn L4Dataplane>,
    ) -> Result<L4Worker, StartError> {
        let desired = self.desired_l4.clone();
        let (dp, result) = tokio::task::spawn_blocking(move || {
            let result = desired.as_ref().map(|d| dp.apply(d));
            let counters = dp.counters();
            (dp, (result, counters))
        })
        .await
        .map_err(|e| StartError::L4Thread(e.to_string()))?;
        let (applied, counters) = result;
        let mut report = L4Report {
            attached: dp.attached(),
            ..L4Report::default()
        };
        match applied {
            Some(Ok(())) => report.applied = 1,
            Some(Err(e)) => {
                self.metrics.l4_apply_errors.inc();
                tracing::error!(error = %e, "writing the data path failed");
                report.apply_error = Some(e.to_string());
            }
            None => {}
        }
        match counters {
            Ok(c) => report.counters = Some(c),
            Err(e) => report.counters_error = Some(e.to_string()),
        }
        self.metrics.set_l4_counters(report.counters.clone());
        self.take_l4_report(&report);
        self.l4_attached = report.attached;
        L4Worker::spawn(dp, self.metrics.clone(), report)
            .map_err(|e| StartError::L4Thread(e.to_string()))
    }

    /// Sends `d` now if the data path holds everything given to it, or when it does.
    fn reply_after_l4(&mut self, d: Deferred) {
        if self.l4.is_some() && self.l4_sent > self.l4_handled {
            self.deferred.push((self.l4_sent, d));
        } else {
            d.send();
        }
    }

    /// Sends the deferred replies whose state the data path now holds (all of them when
    /// `all`: the thread is gone).
    fn release_deferred(&mut self, all: bool) {
        let handled = self.l4_handled;
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(g, _)| all || *g <= handled);
        self.deferred = wait;
        for (_, d) in ready {
            d.send();
        }
    }

    fn take_l4_report(&mut self, r: &L4Report) {
        self.l4_handled = r.handled;
        self.l4_status.counters = r.counters.clone();
        self.l4_status.error = r.apply_error.clone().or_else(|| r.counters_error.clone());
    }

    fn publish(&self) {
        let (deduction, checks) = self.compute_deduction();
        self.metrics.priority_deduction.set(i64::from(deduction));
        let snap = Snapshot {
            cfg: self.cfg.clone(),
            node: self.cfg.node.name.clone(),
            vrrp: self.vrrp_status.clone(),
            health: self.health.clone(),
            admin: self.admin.clone(),
            ring: self
                .members
                .iter()
                .flatten()
                .map(|b| (b.name.clone(), b.weight))
                .collect(),
            ring_rebuilds: self.ring_rebuilds,
            tracking: TrackingStatus { deduction, checks },
            l4: self.l4_status.clone(),
        };
        self.snapshot.send_replace(snap);
    }
}
