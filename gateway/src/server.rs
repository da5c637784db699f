//! The running gateway: shared state (the snapshot behind one atomic swap, metrics, counters),
//! start-up, reload and graceful shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tower::ServiceBuilder;

use crate::accesslog::{AccessLog, AccessLogError};
use crate::config::{self, ConfigError, FieldError};
use crate::layers::{
    ErrorLayer, ErrorToResponse, Observe, ObserveLayer, RequestId, RequestIdLayer,
};
use crate::metrics::{Metrics, MetricsError};
use crate::proxy::ProxyService;
use crate::snapshot::{Resolved, Snapshot};
use crate::{admin, discovery, listener};

/// The request service of a connection, all layers included. Cloning it is a couple of
/// reference-count increments, so a connection clones it for every request.
pub type ServiceStack = RequestId<Observe<ErrorToResponse<ProxyService>>>;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener `{listener}`: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
}

/// Where the access log goes.
pub enum AccessLogOutput {
    /// Standard output (the binary).
    Stdout,
    /// Any writer (tests).
    Writer(Box<dyn std::io::Write + Send>),
}

impl std::fmt::Debug for AccessLogOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stdout => "Stdout",
            Self::Writer(_) => "Writer",
        })
    }
}

/// State shared by listeners, the admin API and signal handlers.
pub struct Shared {
    /// The current snapshot; replaced whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    config_path: PathBuf,
    draining: AtomicBool,
    active_connections: AtomicUsize,
    connection_closed: Notify,
    /// Whether the access log is on (the config's `global.access_log`, switched by reloads).
    access_log: Arc<AtomicBool>,
    access_log_output: AccessLog,
    /// Set when a drain passed its deadline with connections open (see [`ObserveLayer`]).
    gave_up: Arc<AtomicBool>,
    reload_lock: Mutex<()>,
    /// Wakes the DNS refresh after a reload (the config's names or period may have changed).
    pub discovery_wake: Notify,
    /// Signalled by `POST /admin/retire-connections`: every open connection closes
    /// gracefully, the listeners go on accepting.
    retire: watch::Sender<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config_path", &self.config_path)
            .field("active_connections", &self.active_connections())
            .finish_non_exhaustive()
    }
}

/// Counts a client connection until dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    shared: Arc<Shared>,
    gauge: prometheus::IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        self.shared
            .active_connections
            .fetch_sub(1, Ordering::AcqRel);
        self.shared.connection_closed.notify_waiters();
    }
}

impl Shared {
    /// Builds the layered service (outermost first: request id, observe, errors, proxy).
    pub fn service_stack(self: &Arc<Self>) -> ServiceStack {
        ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(ObserveLayer::new(
                self.metrics.clone(),
                Arc::clone(&self.access_log),
                self.access_log_output.clone(),
                Arc::clone(&self.gave_up),
            ))
            .layer(ErrorLayer)
            .service(ProxyService::new(Arc::clone(self)))
    }

    /// Registers a new client connection.
    pub fn connection_opened(self: &Arc<Self>, listener: &str) -> ConnectionGuard {
        self.active_connections.fetch_add(1, Ordering::AcqRel);
        self.metrics
            .connections_total
            .with_label_values(&[listener])
            .inc();
        let gauge = self
            .metrics
            .active_connections
            .with_label_values(&[listener]);
        gauge.inc();
        ConnectionGuard {
            shared: Arc::clone(self),
            gauge,
        }
    }

    /// Open client connections, all listeners together.
    pub fn active_connections(&self) -> usize {
        self.active_connections.load(Ordering::Acquire)
    }

    /// Whether the gateway is draining (not ready).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Asks every open client connection to close gracefully (HTTP/1: idle ones at once, busy
    /// ones after their response, which says `Connection: close`; HTTP/2: GOAWAY, the open
    /// streams finish); WebSocket tunnels are left alone and new connections are served. What
    /// an operator does after `lbctl drain` so that keep-alive clients reconnect, and land on
    /// the nodes still in the ring. Returns the connections open when asked.
    pub fn retire_connections(&self) -> usize {
        self.retire.send_replace(());
        self.active_connections()
    }

    /// A receiver that sees every later [`Self::retire_connections`].
    pub(crate) fn retire_signal(&self) -> watch::Receiver<()> {
        self.retire.subscribe()
    }

    /// The config file reloads read.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Re-reads the config file and swaps in a new snapshot; on any error the current
    /// snapshot stays and every problem is returned.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let _serialised = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = self.try_reload();
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .config_reloads_total
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(()) => tracing::info!(file = %self.config_path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the previous config stays")
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), ConfigError> {
        let config = config::load(&self.config_path)?;
        let current = self.snapshot.load_full();
        let invalid = |errors| ConfigError::Invalid {
            file: self.config_path.clone(),
            errors,
        };
        let conflicts = current.reload_conflicts(&config);
        if !conflicts.is_empty() {
            return Err(invalid(conflicts));
        }
        let resolved = discovery::for_reload(config.discovered_names(), &current.resolved);
        let mut next =
            Snapshot::build(config, Some(&current), &self.metrics, resolved).map_err(invalid)?;
        // Only a config that is otherwise valid starts the writer thread.
        if next.config.access_log
            && let Err(e) = self.access_log_output.start()
        {
            return Err(invalid(vec![FieldError {
                path: "global.access_log".into(),
                message: e.to_string(),
            }]));
        }
        next.start_health_checks(&self.metrics);
        self.access_log
            .store(next.config.access_log, Ordering::Relaxed);
        self.swap(next);
        self.discovery_wake.notify_one();
        Ok(())
    }

    /// Makes `next` the snapshot; the pools it replaces stop publishing member health, and
    /// the series of members that left are removed (a gone member must not stay "healthy"
    /// in the metrics, nor its counters pile up).
    fn swap(&self, next: Snapshot) {
        let old = self.snapshot.swap(Arc::new(next));
        let new = self.snapshot.load();
        for (name, up) in &old.upstreams {
            up.retire();
            let kept = new.upstreams.get(name);
            for m in &up.members {
                let stays = kept.is_some_and(|k| k.members.iter().any(|n| n.address == m.address));
                if !stays {
                    self.metrics.forget_member(name, &m.address);
                }
            }
        }
    }

    /// Swaps in a snapshot whose `discover` members follow `answers` (new answers by name;
    /// names without one keep theirs). Serialised with reloads; a no-op when nothing changed.
    pub fn apply_resolved(&self, answers: Resolved) {
        let _serialised = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.snapshot.load_full();
        let mut merged = Resolved::new();
        for name in current.config.discovered_names() {
            let addrs = answers.get(&name).or_else(|| current.resolved.get(&name));
            if let Some(addrs) = addrs {
                merged.insert(name, addrs.clone());
            }
        }
        if merged == *current.resolved {
            return;
        }
        let changed: Vec<(String, Vec<crate::snapshot::Found>)> = merged
            .iter()
            .filter(|(name, addrs)| current.resolved.get(*name) != Some(*addrs))
            .map(|(name, addrs)| (name.clone(), addrs.clone()))
            .collect();
        match current.with_resolved(&self.metrics, merged) {
            Ok(mut next) => {
                next.start_health_checks(&self.metrics);
                self.swap(next);
                for (name, addrs) in changed {
                    tracing::info!(name = %name, addresses = ?addrs, "discover: the name's members changed");
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::error!(path = %e.path, error = %e.message, "discover: the new members were not applied");
                }
            }
        }
    }
}

/// Validates a config file completely (certificates included) without starting anything.
///
/// The names of `discover` members are resolved as the gateway would at start (all at once,
/// each within the start-up timeout) and each answer is logged: a name that does not resolve
/// here is a warning, not an error (the machine checking the config may not see the
/// deployment's DNS; the gateway serves such a pool once the name resolves).
pub fn check_config(path: &Path) -> Result<config::Config, ConfigError> {
    let config = config::load(path)?;
    let setup_error = |message: String| ConfigError::Syntax {
        file: path.to_path_buf(),
        message,
    };
    let metrics = Metrics::new().map_err(|e| setup_error(e.to_string()))?;
    let names = config.discovered_names();
    let resolved = if names.is_empty() {
        Resolved::new()
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| setup_error(format!("cannot start the resolver: {e}")))?;
        let resolved = runtime.block_on(discovery::resolve_all(names));
        for (name, addrs) in &resolved {
            tracing::info!(name = %name, addresses = ?addrs, "discover: the name resolves");
        }
        resolved
    };
    Snapshot::build(config.clone(), None, &metrics, resolved).map_err(|errors| {
        ConfigError::Invalid {
            file: path.to_path_buf(),
            errors,
        }
    })?;
    Ok(config)
}

/// What graceful shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open when the drain deadline passed (0: clean).
    pub remaining_connections: usize,
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    listeners: BTreeMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    admin_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listeners", &self.listeners)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Loads the config, binds every listener and the admin endpoint, and starts serving;
    /// the access log goes to stdout.
    pub async fn start(config_path: &Path) -> Result<Self, StartError> {
        Self::start_with(config_path, AccessLogOutput::Stdout).await
    }

    /// [`Self::start`] with the access log going to `access_log`.
    pub async fn start_with(
        config_path: &Path,
        access_log: AccessLogOutput,
    ) -> Result<Self, StartError> {
        let config = config::load(config_path)?;
        let metrics = Metrics::new()?;
        let dropped = metrics.access_log_dropped_lines_total.clone();
        let access_log_output = match access_log {
            AccessLogOutput::Stdout => AccessLog::stdout(dropped),
            AccessLogOutput::Writer(w) => AccessLog::new(w, dropped),
        };
        if config.access_log {
            access_log_output.start()?;
        }
        let resolved = discovery::resolve_all(config.discovered_names()).await;
        let mut snapshot = Snapshot::build(config, None, &metrics, resolved).map_err(|errors| {
            ConfigError::Invalid {
                file: config_path.to_path_buf(),
                errors,
            }
        })?;
        snapshot.start_health_checks(&metrics);
        let access_log = snapshot.config.access_log;
        let admin_addr = snapshot.config.admin;
        let listen: Vec<(String, SocketAddr)> = snapshot
            .config
            .listeners
            .iter()
            .map(|(n, l)| (n.clone(), l.listen))
            .collect();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            config_path: config_path.to_path_buf(),
            draining: AtomicBool::new(false),
            active_connections: AtomicUsize::new(0),
            connection_closed: Notify::new(),
            access_log: Arc::new(AtomicBool::new(access_log)),
            gave_up: Arc::new(AtomicBool::new(false)),
            access_log_output,
            reload_lock: Mutex::new(()),
            discovery_wake: Notify::new(),
            retire: watch::Sender::new(()),
        });
        let (shutdown, rx) = watch::channel(false);
        let mut sockets = Vec::new();
        for (name, addr) in listen {
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    listener: name.clone(),
                    addr,
                    source,
                })?;
            let local = socket.local_addr().map_err(|source| StartError::Bind {
                listener: name.clone(),
                addr,
                source,
            })?;
            sockets.push((name, local, socket));
        }
        let (admin, admin_task) = match admin_addr {
            Some(addr) => {
                let socket = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind {
                        listener: "admin".into(),
                        addr,
                        source,
                    })?;
                let local = socket.local_addr().map_err(|source| StartError::Bind {
                    listener: "admin".into(),
                    addr,
                    source,
                })?;
                tracing::info!(listener = "admin", addr = %local, "listening");
                let task = tokio::spawn(admin::serve(Arc::clone(&shared), socket));
                (Some(local), Some(task))
            }
            None => (None, None),
        };
        let mut listeners = BTreeMap::new();
        let mut tasks = vec![tokio::spawn(discovery::refresh(Arc::clone(&shared)))];
        for (name, local, socket) in sockets {
            tracing::info!(listener = %name, addr = %local, "listening");
            tasks.push(tokio::spawn(listener::accept_loop(
                Arc::clone(&shared),
                Arc::from(name.as_str()),
                socket,
                rx.clone(),
            )));
            listeners.insert(name, local);
        }
        Ok(Self {
            shared,
            shutdown,
            listeners,
            admin,
            tasks,
            admin_task,
        })
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.get(name).copied()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Shared state (snapshot, metrics, counters).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The access log (to flush it after the runtime has stopped).
    pub fn access_log(&self) -> &AccessLog {
        &self.shared.access_log_output
    }

    /// Reloads the config file (see [`Shared::reload`]).
    pub fn reload(&self) -> Result<(), ConfigError> {
        self.shared.reload()
    }

    /// Graceful shutdown: stop accepting, let in-flight requests finish and idle keep-alives
    /// close, until no connection is left or the config's `drain_timeout` passes.
    pub async fn shutdown(self) -> ShutdownReport {
        let timeout = self.shared.snapshot.load().config.drain_timeout;
        self.drain(timeout).await
    }

    /// [`Self::shutdown`] with an explicit deadline.
    pub async fn drain(self, timeout: Duration) -> ShutdownReport {
        self.shared.draining.store(true, Ordering::Release);
        // Receivers may all be gone already (no listener); nothing to tell then.
        self.shutdown.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let closed = self.shared.connection_closed.notified();
            let mut closed = std::pin::pin!(closed);
            // Registered before the check, so a close in between is not missed.
            closed.as_mut().enable();
            if self.shared.active_connections() == 0 {
                break;
            }
            tokio::select! {
                () = closed => {}
                () = tokio::time::sleep_until(deadline.into()) => break,
            }
        }
        let remaining = self.shared.active_connections();
        if remaining > 0 {
            // Their requests end when the runtime drops them: logged as the gateway's doing.
            self.shared.gave_up.store(true, Ordering::Relaxed);
            tracing::warn!(remaining, "drain deadline passed with connections open");
        }
        if let Some(t) = &self.admin_task {
            t.abort();
        }
        self.shared.access_log_output.flush();
        ShutdownReport {
            remaining_connections: remaining,
        }
    }
}
