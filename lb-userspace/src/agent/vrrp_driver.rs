//! Runs the VRRP state machines ([`crate::vrrp::state`]) on the wire.
//!
//! All instances run on one dedicated OS thread with its own single-threaded tokio
//! runtime, at real-time priority (`SCHED_FIFO`) when the process may use it: the
//! advertisement timer must stay on time when the rest of the agent, or the machine, is
//! busy (a 30 ms interval gives a backup ~90 ms before it takes over). Nothing else runs
//! on that thread: no probes, no API, no ring builds. How late the timers fire is exported
//! as `lb_vrrp_timer_lateness_seconds`.
//!
//! Each instance is one task: it waits for the next of (a packet, its timer, a command),
//! feeds the state machine with `now`, and carries out the returned actions in order:
//! adverts go out of the raw socket at once; VIPs on and off the interface through
//! rtnetlink (IPv6 with `IFA_F_NODAD`) and the gratuitous ARPs / unsolicited NAs go, in
//! order, to the instance's address worker, because rtnetlink waits for the kernel's RTNL
//! lock and the advert timer must not.
use std::{
    net::IpAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::{config::VrrpInstance, metrics::Metrics, netlink};
use crate::vrrp::{
    packet::{Family, VirtualAddrs},
    socket::{Announcer, Inbound, Interface, VrrpSocket},
    state::{Action, AnnounceConfig, Config, Event, Priority, State, VirtualRouter},
};

/// Commands to the VRRP thread.
#[derive(Debug)]
pub enum VrrpCommand {
    /// Subtract this from every instance's configured priority (tracking).
    Deduct(u32),
    /// Give up mastership now: priority-0 advert, back to Backup, and hold priority 1
    /// for `hold` so that preemption does not take it back at once.
    Failover {
        hold: Duration,
        done: oneshot::Sender<Vec<String>>,
    },
    /// New configured priorities, one per instance in order (a reload that changed
    /// nothing else); taken like a tracking change, without a restart.
    SetConfigured(Vec<Priority>),
    /// Priority-0 advert from every Master, VIPs removed, then the thread ends.
    Shutdown,
}

/// One instance as the rest of the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpStatus {
    pub name: String,
    pub vrid: u8,
    pub interface: String,
    pub state: String,
    pub priority: u8,
    pub configured_priority: u8,
    /// The current Master: us in Master, the last accepted sender in Backup.
    pub master: Option<IpAddr>,
    /// Our advert source.
    pub source: Option<IpAddr>,
    pub vips: Vec<IpAddr>,
    /// Unix time (ms) of the last transition.
    pub since_ms: u64,
    /// The last error (socket, netlink), if any.
    pub error: Option<String>,
}

/// The running VRRP thread.
pub struct VrrpHandle {
    pub commands: mpsc::Sender<VrrpCommand>,
    pub status: watch::Receiver<Vec<VrrpStatus>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VrrpHandle {
    /// Shuts every instance down (priority-0 adverts) and waits for the thread.
    pub async fn shutdown(mut self) {
        if self.commands.send(VrrpCommand::Shutdown).await.is_err() {
            tracing::debug!("VRRP thread already gone");
        }
        if let Some(t) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || t.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("VRRP thread panicked");
            }
        }
    }
}

/// The VRRP thread could not start.
#[derive(Debug, thiserror::Error)]
#[error("VRRP: {0}")]
pub struct VrrpError(String);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Starts the thread with `instances`, waits until every socket is open, and returns
/// the handle. `deduction` is the initial tracking deduction.
pub fn spawn(
    instances: Vec<VrrpInstance>,
    deduction: u32,
    metrics: Metrics,
) -> Result<VrrpHandle, VrrpError> {
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let initial: Vec<VrrpStatus> = instances.iter().map(initial_status).collect();
    let (status_tx, status_rx) = watch::channel(initial);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("lb-vrrp".into())
        .spawn(move || {
            raise_priority();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    if ready_tx.send(Err(format!("runtime: {e}"))).is_err() {
                        tracing::error!("VRRP start aborted");
                    }
                    return;
                }
            };
            rt.block_on(run(
                instances, deduction, metrics, cmd_rx, status_tx, ready_tx,
            ));
        })
        .map_err(|e| VrrpError(format!("spawning the thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(VrrpHandle {
            commands: cmd_tx,
            status: status_rx,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            if thread.join().is_err() {
                tracing::error!("VRRP thread panicked");
            }
            Err(VrrpError(e))
        }
        Err(_) => Err(VrrpError("the thread ended during start".into())),
    }
}

fn initial_status(inst: &VrrpInstance) -> VrrpStatus {
    VrrpStatus {
        name: inst.name.clone(),
        vrid: inst.vrid.get(),
        interface: inst.interface.clone(),
        state: State::Initialize.to_string(),
        priority: inst.priority.get(),
        configured_priority: inst.priority.get(),
        master: None,
        source: inst.source,
        vips: inst.vips.iter().map(|(ip, _)| *ip).collect(),
        since_ms: unix_ms(),
        error: None,
    }
}

/// SCHED_FIFO for this thread when allowed; the agent works without it, with more jitter.
fn raise_priority() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: pthread_self is always valid for the calling thread; `param` is a valid
    // sched_param that outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc == 0 {
        tracing::info!("VRRP thread runs with SCHED_FIFO priority 10");
    } else {
        tracing::warn!(
            errno = rc,
            "VRRP thread could not get SCHED_FIFO; timers may jitter under load"
        );
    }
}

/// One instance, opened.
struct Running {
    inst: VrrpInstance,
    router: VirtualRouter,
    socket: VrrpSocket,
    /// The address worker's parts, moved into it when the instance starts.
    worker: Option<AddressWorker>,
}

/// What the address worker does, in order.
#[derive(Debug)]
enum AddressOp {
    /// Put the VIPs on the interface.
    Add,
    /// Take them off, after `grace` (a handover keeps them a moment).
    Remove { grace: Duration },
    /// Gratuitous ARPs / unsolicited NAs.
    Announce(u32),
}

/// Carries out the address changes and announcements of one instance, in order, off the
/// VRRP task: rtnetlink calls wait for the kernel's RTNL lock, which other work (a
/// network namespace being dismantled, thousands of routes) can hold for seconds, and
/// the advert timer must not wait for that.
struct AddressWorker {
    inst: VrrpInstance,
    index: u32,
    announcer: Announcer,
    addrs: VirtualAddrs,
}

async fn open(inst: &VrrpInstance, nl: &rtnetlink::Handle) -> Result<Running, String> {
    let iface = Interface::lookup(&inst.interface).map_err(|e| e.to_string())?;
    let index = iface.index.get();
    let source = match inst.source {
        Some(s) => s,
        None => netlink::primary_address(nl, index, inst.family == Family::V6)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "{}: no {} address to send adverts from (set vrrp.source)",
                    inst.interface,
                    if inst.family == Family::V6 {
                        "IPv6 link-local"
                    } else {
                        "IPv4"
                    }
                )
            })?,
    };
    let addrs = match inst.family {
        Family::V4 => VirtualAddrs::V4(
            inst.vips
                .iter()
                .filter_map(|(ip, _)| match ip {
                    IpAddr::V4(v) => Some(*v),
                    IpAddr::V6(_) => None,
                })
                .collect(),
        ),
        Family::V6 => VirtualAddrs::V6(
            inst.vips
                .iter()
                .filter_map(|(ip, _)| match ip {
                    IpAddr::V6(v) => Some(*v),
                    IpAddr::V4(_) => None,
                })
                .collect(),
        ),
    };
    let cfg = Config {
        vrid: inst.vrid,
        priority: inst.priority,
        adver_interval: inst.advert_interval,
        preempt: inst.preempt,
        preempt_delay: inst.preempt_delay,
        primary_addr: source,
        addrs: addrs.clone(),
        announce: AnnounceConfig {
            burst: inst.garp_burst,
            repeat_delay: inst.garp_repeat_delay,
            refresh_interval: inst.garp_refresh,
            refresh_burst: 1,
        },
    };
    let router = VirtualRouter::new(cfg).map_err(|e| e.to_string())?;
    let socket = VrrpSocket::open(iface.clone(), source, inst.unicast_peers.clone())
        .map_err(|e| e.to_string())?;
    let announcer = Announcer::open(iface, inst.family, true).map_err(|e| e.to_string())?;
    Ok(Running {
        inst: inst.clone(),
        router,
        socket,
        worker: Some(AddressWorker {
            inst: inst.clone(),
            index,
            announcer,
            addrs,
        }),
    })
}

/// Per-instance commands.
#[derive(Debug)]
enum InstanceCommand {
    Deduct(u32),
    SetConfigured(Priority),
    Failover(Duration, oneshot::Sender<String>),
    Shutdown(oneshot::Sender<()>),
}

async fn run(
    instances: Vec<VrrpInstance>,
    deduction: u32,
    metrics: Metrics,
    mut commands: mpsc::Receiver<VrrpCommand>,
    status: watch::Sender<Vec<VrrpStatus>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let nl = match netlink::connect() {
        Ok(h) => h,
        Err(e) => {
            if ready.send(Err(e.to_string())).is_err() {
                tracing::error!("VRRP start aborted");
            }
            return;
        }
    };
    let mut opened = Vec::new();
    for inst in &instances {
        match open(inst, &nl).await {
            Ok(r) => opened.push(r),
            Err(e) => {
                if ready
                    .send(Err(format!("instance {}: {e}", inst.name)))
                    .is_err()
                {
                    tracing::error!("VRRP start aborted");
                }
                return;
            }
        }
    }
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for (slot, r) in opened.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(8);
        senders.push(tx);
        let ctx = InstanceCtx {
            slot,
            nl: nl.clone(),
            metrics: metrics.clone(),
            status: status.clone(),
        };
        tasks.push(tokio::spawn(run_instance(r, deduction, ctx, rx)));
    }
    if ready.send(Ok(())).is_err() {
        return;
    }
    while let Some(cmd) = commands.recv().await {
        match cmd {
            VrrpCommand::Deduct(d) => {
                for s in &senders {
                    if s.send(InstanceCommand::Deduct(d)).await.is_err() {
                        tracing::error!("a VRRP instance task ended");
                    }
                }
            }
            VrrpCommand::Failover { hold, done } => {
                let mut out = Vec::new();
                for s in &senders {
                    let (tx, rx) = oneshot::channel();
                    if s.send(InstanceCommand::Failover(hold, tx)).await.is_ok()
                        && let Ok(line) = rx.await
                    {
                        out.push(line);
                    }
                }
                if done.send(out).is_err() {
                    tracing::debug!("failover requester went away");
                }
            }
            VrrpCommand::SetConfigured(priorities) => {
                for (s, p) in senders.iter().zip(priorities) {
                    if s.send(InstanceCommand::SetConfigured(p)).await.is_err() {
                        tracing::error!("a VRRP instance task ended");
                    }
                }
            }
            VrrpCommand::Shutdown => break,
        }
    }
    for s in &senders {
        let (tx, rx) = oneshot::channel();
        if s.send(InstanceCommand::Shutdown(tx)).await.is_ok() && rx.await.is_err() {
            tracing::error!("a VRRP instance did not confirm its shutdown");
        }
    }
    for t in tasks {
        if t.await.is_err() {
            tracing::error!("a VRRP instance task panicked");
        }
    }
}

struct InstanceCtx {
    slot: usize,
    nl: rtnetlink::Handle,
    metrics: Metrics,
    status: watch::Sender<Vec<VrrpStatus>>,
}

/// How long a Master that sent priority 0 keeps its VIPs: three advertisement intervals
/// plus a little, at most 1 s. The best Backup takes over after its Skew_Time (below one
/// interval) and announces itself; a loaded Backup can be later than that, and a client
/// whose traffic still reaches this node meanwhile must find the VIP here, not a gap.
/// Both nodes holding the VIP for a moment is harmless: each answers what reaches it.
fn handover_grace(inst: &VrrpInstance) -> Duration {
    (inst.advert_interval.as_duration() * 3 + Duration::from_millis(5)).min(Duration::from_secs(1))
}

fn effective(configured: Priority, deduction: u32, held: bool) -> Priority {
    if held {
        return Priority::new(1).unwrap_or(configured);
    }
    if configured.is_owner() {
        return configured;
    }
    let p = u32::from(configured.get()).saturating_sub(deduction).max(1);
    Priority::new(u8::try_from(p).unwrap_or(1)).unwrap_or(configured)
}

async fn run_instance(
    mut r: Running,
    mut deduction: u32,
    ctx: InstanceCtx,
    mut commands: mpsc::Receiver<InstanceCommand>,
) {
    let name = r.inst.name.clone();
    let m = &ctx.metrics;
    for role in ["initialize", "backup", "master"] {
        m.vrrp_role
            .with_label_values(&[&name, role])
            .set(i64::from(role == "initialize"));
    }
    m.vrrp_vips_held.with_label_values(&[&name]).set(0);
    let mut deadline: Option<Instant> = None;
    let mut hold_until: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let start_priority = effective(r.inst.priority, deduction, false);
    let mut actions = Vec::new();
    if start_priority != r.router.priority() {
        actions.extend(
            r.router
                .handle(Instant::now(), Event::SetPriority(start_priority)),
        );
    }
    actions.extend(r.router.handle(Instant::now(), Event::Startup));
    let (ops, ops_rx) = mpsc::unbounded_channel();
    let worker = match r.worker.take() {
        Some(w) => tokio::spawn(run_address_worker(
            w,
            ctx.nl.clone(),
            ctx.metrics.clone(),
            ops_rx,
        )),
        None => tokio::spawn(async {}),
    };
    let mut exiting = false;
    let mut check_timer_next = false;
    let mut shutdown_ack: Option<oneshot::Sender<()>> = None;
    loop {
        // Handing over (shutdown, failover: a priority-0 advert before the removal):
        // the VIPs stay until the best Backup has taken over (its Skew_Time, below one
        // advert interval) and announced itself, so that clients see no gap. Both hold
        // them meanwhile, which is harmless: each answers what reaches it.
        let mut handing_over = false;
        for a in std::mem::take(&mut actions) {
            if matches!(&a, Action::SendAdvert(adv) if adv.priority == 0) {
                handing_over = true;
            }
            if let Err(e) = execute(&mut r, &ctx, a, &mut deadline, &ops, handing_over).await {
                tracing::warn!(instance = %name, error = %e, "VRRP action failed");
                last_error = Some(e);
            }
        }
        publish(&r, &ctx, last_error.clone());
        if exiting {
            // The VIPs are off before the shutdown is confirmed.
            drop(ops);
            if worker.await.is_err() {
                tracing::error!(instance = %name, "address worker panicked");
            }
            if let Some(ack) = shutdown_ack.take()
                && ack.send(()).is_err()
            {
                tracing::debug!("shutdown requester went away");
            }
            return;
        }
        // After a packet, a timer that is due fires before the next packet is read, so a
        // flood of packets cannot starve the advert timer.
        if std::mem::take(&mut check_timer_next)
            && let Some(d) = deadline
        {
            let now = Instant::now();
            if d <= now {
                m.vrrp_timer_lateness
                    .with_label_values(&[&name])
                    .observe(now.saturating_duration_since(d).as_secs_f64());
                actions.extend(r.router.handle(now, Event::Timer));
                continue;
            }
        }
        let sleep_to = [deadline, hold_until].into_iter().flatten().min();
        // Packets first: when this thread runs late and finds both an advert and a due
        // Master_Down_Timer, the advert counts as arrived in time (the state machine's
        // rule) and the Backup keeps its Master instead of a false takeover.
        let event = tokio::select! {
            biased;
            pkt = r.socket.recv() => match pkt {
                Ok(Inbound::Advert { src, advert }) => {
                    check_timer_next = true;
                    m.vrrp_adverts_received.with_label_values(&[&name]).inc();
                    Some(Event::Advert { src, advert })
                }
                Ok(Inbound::Rejected { src, error }) => {
                    check_timer_next = true;
                    m.vrrp_adverts_invalid
                        .with_label_values(&[&name, super::metrics::invalid_reason(&error)])
                        .inc();
                    tracing::debug!(instance = %name, ?src, %error, "VRRP packet rejected");
                    None
                }
                Err(e) => {
                    tracing::warn!(instance = %name, error = %e, "VRRP receive failed");
                    last_error = Some(e.to_string());
                    // Do not spin on a persistent socket error.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    None
                }
            },
            () = sleep_until(sleep_to) => {
                let now = Instant::now();
                if let Some(h) = hold_until && h <= now {
                    hold_until = None;
                    Some(Event::SetPriority(effective(r.inst.priority, deduction, false)))
                } else {
                    if let Some(d) = deadline {
                        m.vrrp_timer_lateness
                            .with_label_values(&[&name])
                            .observe(now.saturating_duration_since(d).as_secs_f64());
                    }
                    Some(Event::Timer)
                }
            }
            cmd = commands.recv() => match cmd {
                Some(InstanceCommand::Deduct(d)) => {
                    deduction = d;
                    Some(Event::SetPriority(effective(r.inst.priority, deduction, hold_until.is_some())))
                }
                Some(InstanceCommand::SetConfigured(p)) => {
                    tracing::info!(instance = %name, from = r.inst.priority.get(), to = p.get(), "configured priority changed");
                    r.inst.priority = p;
                    Some(Event::SetPriority(effective(r.inst.priority, deduction, hold_until.is_some())))
                }
                Some(InstanceCommand::Failover(hold, done)) => {
                    let was = r.router.state();
                    let now = Instant::now();
                    if was == State::Master {
                        hold_until = now.checked_add(hold);
                        actions.extend(r.router.handle(now, Event::Shutdown));
                        actions.extend(r.router.handle(now, Event::SetPriority(effective(r.inst.priority, deduction, true))));
                        actions.extend(r.router.handle(now, Event::Startup));
                    }
                    let line = if was == State::Master {
                        format!("{name}: gave up mastership (priority 1 for {hold:?})")
                    } else {
                        format!("{name}: not master ({was}), nothing to do")
                    };
                    if done.send(line).is_err() {
                        tracing::debug!("failover requester went away");
                    }
                    None
                }
                Some(InstanceCommand::Shutdown(ack)) => {
                    shutdown_ack = Some(ack);
                    exiting = true;
                    Some(Event::Shutdown)
                }
                None => {
                    exiting = true;
                    Some(Event::Shutdown)
                }
            },
        };
        if let Some(ev) = event {
            actions.extend(r.router.handle(Instant::now(), ev));
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

async fn run_address_worker(
    w: AddressWorker,
    nl: rtnetlink::Handle,
    m: Metrics,
    mut ops: mpsc::UnboundedReceiver<AddressOp>,
) {
    let name = w.inst.name.as_str();
    while let Some(op) = ops.recv().await {
        let result = match op {
            AddressOp::Add => add_vips(&w, &nl).await.map(|()| {
                m.vrrp_vips_held.with_label_values(&[name]).set(1);
            }),
            AddressOp::Remove { grace } => {
                // A newer Add queued behind this removal makes the wait pointless, but
                // harmless: the order of operations is kept either way.
                tokio::time::sleep(grace).await;
                remove_vips(&w, &nl).await.map(|()| {
                    m.vrrp_vips_held.with_label_values(&[name]).set(0);
                })
            }
            AddressOp::Announce(count) => {
                w.announcer.announce(&w.addrs, count).await.map_err(|e| {
                    m.vrrp_send_errors
                        .with_label_values(&[name, "announce"])
                        .inc();
                    e.to_string()
                })
            }
        };
        if let Err(e) = result {
            tracing::warn!(instance = name, error = %e, "VIP address operation failed");
        }
    }
}

async fn add_vips(w: &AddressWorker, nl: &rtnetlink::Handle) -> Result<(), String> {
    for (ip, prefix) in &w.inst.vips {
        netlink::add_address(nl, w.index, *ip, *prefix)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn remove_vips(w: &AddressWorker, nl: &rtnetlink::Handle) -> Result<(), String> {
    for (ip, prefix) in &w.inst.vips {
        netlink::remove_address(nl, w.index, *ip, *prefix)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn worker_gone() -> String {
    "the address worker has stopped".into()
}

async fn execute(
    r: &mut Running,
    ctx: &InstanceCtx,
    action: Action,
    deadline: &mut Option<Instant>,
    ops: &mpsc::UnboundedSender<AddressOp>,
    handing_over: bool,
) -> Result<(), String> {
    let name = r.inst.name.as_str();
    let m = &ctx.metrics;
    match action {
        Action::ScheduleTimer(at) => *deadline = at,
        Action::SendAdvert(advert) => match r.socket.send(&advert).await {
            Ok(()) => m.vrrp_adverts_sent.with_label_values(&[name]).inc(),
            Err(e) => {
                m.vrrp_send_errors
                    .with_label_values(&[name, "advert"])
                    .inc();
                return Err(e.to_string());
            }
        },
        Action::Transition { from, to } => {
            tracing::info!(instance = name, %from, %to, priority = r.router.priority().get(), "VRRP transition");
            m.vrrp_transitions
                .with_label_values(&[name, &to.to_string()])
                .inc();
            for role in [State::Initialize, State::Backup, State::Master] {
                m.vrrp_role
                    .with_label_values(&[name, &role.to_string()])
                    .set(i64::from(role == to));
            }
            ctx.status.send_modify(|all| {
                if let Some(s) = all.get_mut(ctx.slot) {
                    s.since_ms = unix_ms();
                }
            });
        }
        Action::AddVips => ops.send(AddressOp::Add).map_err(|_| worker_gone())?,
        Action::RemoveVips => ops
            .send(AddressOp::Remove {
                grace: if handing_over {
                    handover_grace(&r.inst)
                } else {
                    Duration::ZERO
                },
            })
            .map_err(|_| worker_gone())?,
        Action::Announce { count } => ops
            .send(AddressOp::Announce(count))
            .map_err(|_| worker_gone())?,
        Action::Ignored(why) => {
            m.vrrp_adverts_ignored
                .with_label_values(&[name, super::metrics::ignored_reason(&why)])
                .inc();
        }
    }
    Ok(())
}

fn publish(r: &Running, ctx: &InstanceCtx, error: Option<String>) {
    let state = r.router.state().to_string();
    let priority = r.router.priority().get();
    let master = r.router.master();
    ctx.metrics
        .vrrp_priority
        .with_label_values(&[&r.inst.name])
        .set(i64::from(priority));
    ctx.status.send_if_modified(|all| {
        let Some(s) = all.get_mut(ctx.slot) else {
            return false;
        };
        let source = Some(r.router.config().primary_addr);
        let configured = r.inst.priority.get();
        let changed = s.state != state
            || s.priority != priority
            || s.configured_priority != configured
            || s.master != master
            || s.error != error
            || s.source != source;
        s.state = state;
        s.priority = priority;
        s.configured_priority = configured;
        s.master = master;
        s.error = error;
        s.source = source;
        changed
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn effective_priority_clamps_and_holds() {
        let p = |n| Priority::new(n).unwrap();
        assert_eq!(effective(p(150), 0, false), p(150));
        assert_eq!(effective(p(150), 100, false), p(50));
        assert_eq!(effective(p(150), 500, false), p(1));
        assert_eq!(
            effective(p(255), 100, false),
            p(255),
            "the owner is not tracked"
        );
        assert_eq!(effective(p(150), 0, true), p(1));
    }
}
