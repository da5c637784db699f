//! Service discovery by DNS: a member with `discover = true` stands for every address its
//! `host:port` resolves to (the system resolver: `/etc/hosts`, then DNS, as `nsswitch.conf`
//! says), one pool member each, resolved again every `global.dns_refresh`.
//!
//! Resolution never runs on a request's path. At start the gateway resolves every name before
//! it serves; a reload (on a blocking thread) resolves the names new to the config and keeps
//! the last answer for the others; [`refresh`] re-resolves them all in the background and,
//! when an answer changed, swaps in a snapshot whose pools have the new members (the state and
//! pooled connections of members that stay are carried over, in-flight requests to a member
//! that went away finish on the old snapshot). A failed or empty answer keeps the previous
//! one, so a DNS outage does not empty a pool.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::Shared;
use crate::snapshot::Resolved;

/// Longest wait for one name at start, in the background refresh and in a reload.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sorted, without duplicates, so that answers compare equal whatever the resolver's order.
fn normalise(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// Resolves `name` (`host:port`) without blocking the runtime.
pub async fn resolve(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name)).await {
        Ok(found) => Ok(normalise(found?.collect())),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {RESOLVE_TIMEOUT:?}"),
        )),
    }
}

/// Resolves `name` on the calling thread (a reload runs on a blocking thread).
pub fn resolve_blocking(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(normalise(name.to_socket_addrs()?.collect()))
}

/// Keeps a usable answer; logs why one is not.
fn usable(name: &str, answer: std::io::Result<Vec<SocketAddr>>) -> Option<Vec<SocketAddr>> {
    match answer {
        Ok(addrs) if !addrs.is_empty() => Some(addrs),
        Ok(_) => {
            tracing::warn!(name, "discover: the name resolved to no address");
            None
        }
        Err(e) => {
            tracing::warn!(name, error = %e, "discover: cannot resolve the name");
            None
        }
    }
}

/// Resolves every name, all at once (one slow name does not hold up the others); a name
/// without a usable answer is left out.
pub async fn resolve_all(names: impl IntoIterator<Item = String>) -> Resolved {
    let lookups = names.into_iter().map(|name| async move {
        let answer = resolve(&name).await;
        usable(&name, answer).map(|addrs| (name, addrs))
    });
    futures_util::future::join_all(lookups)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The answers for a new config's names: the current answer where there is one, otherwise
/// resolved now (blocking: call it from a blocking thread, not the runtime's). New names are
/// looked up all at once, each on a thread of its own, and waited for at most
/// [`RESOLVE_TIMEOUT`] together: with DNS down a reload that adds names is late by that
/// much, not by the resolver's own timeouts once per name. A name still unanswered then is
/// left out (its lookup thread ends with the resolver's timeout; the background refresh picks
/// the name up later).
pub fn for_reload(names: impl IntoIterator<Item = String>, current: &Resolved) -> Resolved {
    let mut resolved = Resolved::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pending = std::collections::BTreeSet::new();
    for name in names {
        if let Some(addrs) = current.get(&name) {
            resolved.insert(name, addrs.clone());
            continue;
        }
        let tx = tx.clone();
        let lookup = name.clone();
        let spawned = std::thread::Builder::new()
            .name("discover".into())
            .spawn(move || {
                let answer = resolve_blocking(&lookup);
                // Err: the reload stopped waiting; the answer is not needed.
                tx.send((lookup, answer)).ok();
            });
        match spawned {
            Ok(_) => {
                pending.insert(name);
            }
            Err(e) => tracing::warn!(name, error = %e, "discover: cannot start a lookup"),
        }
    }
    drop(tx);
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    while !pending.is_empty() {
        let Ok((name, answer)) =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            for name in &pending {
                tracing::warn!(name, "discover: no answer within {RESOLVE_TIMEOUT:?}");
            }
            break;
        };
        pending.remove(&name);
        if let Some(addrs) = usable(&name, answer) {
            resolved.insert(name, addrs);
        }
    }
    resolved
}

/// The background refresh (runs until aborted): every `global.dns_refresh` while the config
/// has `discover` members, asleep otherwise until a reload wakes it.
pub async fn refresh(shared: Arc<Shared>) {
    loop {
        let snapshot = shared.snapshot.load_full();
        let names = snapshot.config.discovered_names();
        if names.is_empty() {
            shared.discovery_wake.notified().await;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(snapshot.config.dns_refresh) => {}
            () = shared.discovery_wake.notified() => continue,
        }
        let answers = resolve_all(names).await;
        let unchanged = answers
            .iter()
            .all(|(name, addrs)| snapshot.resolved.get(name) == Some(addrs));
        if unchanged {
            continue;
        }
        let s = Arc::clone(&shared);
        // Builds and swaps under the reload lock, off the runtime's thread.
        if let Err(e) = tokio::task::spawn_blocking(move || s.apply_resolved(answers)).await {
            tracing::error!(error = %e, "discover: applying new addresses failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only names from `/etc/hosts` (`localhost`): a unit test sends no DNS query.
    #[test]
    fn a_reload_keeps_known_answers_and_resolves_new_names() {
        let kept: Vec<SocketAddr> = vec!["10.1.2.3:80".parse().unwrap()];
        let current = Resolved::from([("kept.test:80".to_owned(), kept.clone())]);
        let r = for_reload(
            ["kept.test:80".to_owned(), "localhost:8080".to_owned()],
            &current,
        );
        assert_eq!(r["kept.test:80"], kept);
        assert!(
            r["localhost:8080"].contains(&"127.0.0.1:8080".parse().unwrap()),
            "{r:?}"
        );
    }

    #[test]
    fn answers_compare_whatever_the_resolver_order() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert_eq!(normalise(vec![b, a, b]), normalise(vec![a, b]));
    }
}
