//! The immutable runtime snapshot: validated config, routers, upstream pools and TLS configs.
//!
//! Readers load it once per request/connection from one [`arc_swap::ArcSwap`]; a reload builds
//! a complete new snapshot (carrying member state and connection pools over) and swaps it in
//! one step, so a request never sees half of two configs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, FieldError, ListenerConfig};
use crate::health::{self, TaskSet};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::tls;
use crate::upstream::Upstream;

/// Maps keyed by listener or upstream name, looked up on every request. The names come from
/// the operator's config, not from clients, so a fast unkeyed hash (FNV-1a, the `fnv` crate)
/// is safe here and several times cheaper than the standard library's SipHash for these
/// short keys.
pub type NameMap<V> = HashMap<String, V, fnv::FnvBuildHasher>;

/// The addresses each `discover` member's name resolved to (sorted, no duplicates).
pub type Resolved = BTreeMap<String, Vec<Found>>;

/// One address a `discover` name resolved to: an A/AAAA answer (with the entry's port), or a
/// target of an SRV answer (with the record's port and weight).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub addr: SocketAddr,
    /// The SRV record's weight (1..=10000); `None`: the member entry's `weight`.
    pub weight: Option<std::num::NonZeroU32>,
}

impl From<SocketAddr> for Found {
    fn from(addr: SocketAddr) -> Self {
        Self { addr, weight: None }
    }
}

/// `10.0.0.5:8080`, or `10.0.0.5:8080 weight 3` for an SRV target (as logged).
impl std::fmt::Debug for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.weight {
            None => write!(f, "{}", self.addr),
            Some(w) => write!(f, "{} weight {w}", self.addr),
        }
    }
}

/// Per-listener runtime data.
#[derive(Debug)]
pub struct ListenerRuntime {
    pub config: ListenerConfig,
    pub router: Router,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Everything a request needs, immutable.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub listeners: Arc<NameMap<ListenerRuntime>>,
    pub upstreams: NameMap<Arc<Upstream>>,
    /// What the `discover` members resolved to when this snapshot was built.
    pub resolved: Arc<Resolved>,
    health_tasks: TaskSet,
}

impl Snapshot {
    /// Builds a snapshot (loads certificates); errors carry key paths. `discover` members
    /// become one member per address in `resolved` (none for a name missing there).
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        resolved: Resolved,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        let routes: Vec<_> = config.routes.iter().cloned().map(Arc::new).collect();
        let mut listeners = NameMap::default();
        for (name, l) in &config.listeners {
            let tls = tls::server_config(l, &mut errs);
            listeners.insert(
                name.clone(),
                ListenerRuntime {
                    config: l.clone(),
                    router: Router::for_listener(name, &routes),
                    tls,
                },
            );
        }
        let upstreams = build_upstreams(&config, previous, metrics, &resolved, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Self {
            config: Arc::new(config),
            listeners: Arc::new(listeners),
            upstreams,
            resolved: Arc::new(resolved),
            health_tasks: TaskSet::default(),
        })
    }

    /// This snapshot with its `discover` members taken from `resolved`: same config,
    /// listeners and certificates (nothing is read from disk), upstream pools rebuilt
    /// carrying over the state of every member whose address stays.
    pub fn with_resolved(
        &self,
        metrics: &Metrics,
        resolved: Resolved,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        let upstreams = build_upstreams(&self.config, Some(self), metrics, &resolved, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Self {
            config: Arc::clone(&self.config),
            listeners: Arc::clone(&self.listeners),
            upstreams,
            resolved: Arc::new(resolved),
            health_tasks: TaskSet::default(),
        })
    }

    /// Starts active health checks (needs a tokio runtime).
    pub fn start_health_checks(&mut self, metrics: &Metrics) {
        for up in self.upstreams.values() {
            health::spawn(up, metrics, &mut self.health_tasks);
        }
    }

    /// Errors for listener changes a reload cannot apply (sockets are bound once at start).
    pub fn reload_conflicts(&self, next: &Config) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (name, l) in &next.listeners {
            match self.config.listeners.get(name) {
                None => errs.push(FieldError {
                    path: format!("listeners.{name}"),
                    message: "new listeners need a restart".into(),
                }),
                Some(old) if old.listen != l.listen || old.tls.is_some() != l.tls.is_some() => errs
                    .push(FieldError {
                        path: format!("listeners.{name}.listen"),
                        message: "changing the address or TLS on/off needs a restart".into(),
                    }),
                Some(_) => {}
            }
        }
        for name in self.config.listeners.keys() {
            if !next.listeners.contains_key(name) {
                errs.push(FieldError {
                    path: format!("listeners.{name}"),
                    message: "removing a listener needs a restart".into(),
                });
            }
        }
        if self.config.admin != next.admin {
            errs.push(FieldError {
                path: "admin.listen".into(),
                message: "changing the admin address needs a restart".into(),
            });
        }
        errs
    }
}

fn build_upstreams(
    config: &Config,
    previous: Option<&Snapshot>,
    metrics: &Metrics,
    resolved: &Resolved,
    errs: &mut Vec<FieldError>,
) -> NameMap<Arc<Upstream>> {
    let now = Instant::now();
    let mut upstreams = NameMap::default();
    for (name, u) in &config.upstreams {
        let prev = previous
            .and_then(|p| p.upstreams.get(name))
            .map(Arc::as_ref);
        if let Some(up) = Upstream::build(u, prev, metrics, now, resolved, errs) {
            upstreams.insert(name.clone(), Arc::new(up));
        }
    }
    upstreams
}
