//! `lb-agent run`: the per-node agent.
//!
//! One task ([`daemon`]) owns the state: configuration, gateway health, cluster admin
//! state, the VRRP status and the data path. Everything else talks to it over bounded
//! channels: the probe tasks ([`health`]), the VRRP thread ([`vrrp_driver`]), the link
//! watcher ([`netlink`]), the peer exchange ([`cluster`]), the admin API ([`api`]).
//! Readers (status, metrics) get `watch` snapshots.
//!
//! * [`config`]: TOML -> validated configuration with key-path errors;
//! * [`l4`]: the trait the XDP data path implements, and what the agent hands it;
//! * [`l4_worker`]: the thread that applies it, so the state task never blocks on it;
//! * [`ring`]: gateway set + health + admin state -> Maglev ring;
//! * [`admin_state`]: drain/enable/weight, versioned, persisted, merged;
//! * [`metrics`]: the Prometheus registry.
pub mod admin_state;
pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod health;
pub mod http;
pub mod l4;
pub mod l4_worker;
pub mod metrics;
pub mod netlink;
pub mod ring;
pub mod vrrp_driver;

use std::sync::Arc;

pub use daemon::L4Factory;

/// The agent could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] daemon::StartError),
    #[error(transparent)]
    Listen(#[from] api::ListenError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}

/// Runs the agent until SIGTERM or SIGINT: state task, VRRP, probes, listeners, peer
/// exchange. SIGHUP reloads the configuration. On the way out every VRRP Master sends a
/// priority-0 advert and removes its VIPs.
pub async fn run(cfg: config::AgentConfig, l4_factory: L4Factory) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |kind| {
        signal(kind).map_err(|e| api::ListenError {
            what: "signal handler".into(),
            reason: e.to_string(),
        })
    };
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    let metrics = metrics::Metrics::new()?;
    // Bind everything that can fail before VRRP starts.
    let unix = api::bind_unix(&cfg.admin.socket)?;
    let bind_tcp = |what: &str, addr| {
        let what = format!("{what} {addr}");
        async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| api::ListenError {
                    what,
                    reason: e.to_string(),
                })
        }
    };
    let cluster = match cfg.cluster.listen {
        Some(a) => Some(bind_tcp("cluster.listen", a).await?),
        None => None,
    };
    let metrics_listener = match cfg.metrics {
        Some(a) => Some(bind_tcp("metrics.listen", a).await?),
        None => None,
    };
    let https = match &cfg.admin.https {
        Some(h) => {
            let (acceptor, token) = api::tls_acceptor(&h.cert_file, &h.key_file, &h.token_file)?;
            Some((
                bind_tcp("admin.https.listen", h.listen).await?,
                acceptor,
                token,
            ))
        }
        None => None,
    };
    let local = |l: &Option<tokio::net::TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let listeners = api::Listeners {
        cluster: local(&cluster),
        metrics: local(&metrics_listener),
        https: https.as_ref().and_then(|(l, _, _)| l.local_addr().ok()),
    };
    let socket_path = cfg.admin.socket.clone();
    let running = daemon::start(cfg, metrics.clone(), &l4_factory).await?;
    let ctx = Arc::new(api::ApiCtx {
        commands: running.commands.clone(),
        snapshot: running.snapshot.clone(),
        metrics,
        listeners,
    });
    let mut tasks = vec![
        tokio::spawn(api::serve_unix(ctx.clone(), unix)),
        tokio::spawn(api::sync_loop(ctx.clone())),
    ];
    if let Some(l) = cluster {
        tasks.push(tokio::spawn(api::serve_cluster(ctx.clone(), l)));
    }
    if let Some(l) = metrics_listener {
        tasks.push(tokio::spawn(api::serve_metrics(ctx.clone(), l)));
    }
    if let Some((l, acceptor, token)) = https {
        tasks.push(tokio::spawn(api::serve_https(
            ctx.clone(),
            l,
            acceptor,
            token,
        )));
    }
    tracing::info!(node = %running.snapshot.borrow().node, socket = %socket_path.display(), "agent running");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                if running.commands.send(daemon::Command::Reload { reply: None }).await.is_err() {
                    break;
                }
            }
        }
    }
    tracing::info!("stopping: priority-0 adverts, VIPs removed");
    for t in &tasks {
        t.abort();
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if running
        .commands
        .send(daemon::Command::Shutdown { reply: tx })
        .await
        .is_ok()
        && rx.await.is_err()
    {
        tracing::error!("state task ended before confirming the shutdown");
    }
    if let Err(e) = std::fs::remove_file(&socket_path) {
        tracing::debug!(error = %e, "removing the admin socket");
    }
    Ok(())
}
