//! Service discovery by DNS: a member with `discover = true` stands for every address its
//! `host:port` resolves to (the system resolver: `/etc/hosts`, then DNS, as `nsswitch.conf`
//! says), one pool member each, resolved again every `global.dns_refresh`. A name of the form
//! `_service._proto.domain` (no port) is looked up as SRV records instead (`hickory-resolver`,
//! configured from `/etc/resolv.conf`: the system resolver has no SRV lookup): each target of
//! the lowest priority, at its address (from the answer's additional section, else the system
//! resolver) and the record's port, with the record's weight.
//!
//! Resolution never runs on a request's path. At start the gateway resolves every name before
//! it serves; a reload (on a blocking thread) resolves the names new to the config and keeps
//! the last answer for the others; [`refresh`] re-resolves them all in the background and,
//! when an answer changed, swaps in a snapshot whose pools have the new members (the state and
//! pooled connections of members that stay are carried over, in-flight requests to a member
//! that went away finish on the old snapshot). A failed or empty answer keeps the previous
//! one, so a DNS outage does not empty a pool.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::{Name, RData, Record};

use crate::config::is_srv_name;
use crate::server::Shared;
use crate::snapshot::{Found, Resolved};

/// Longest wait for one name at start, in the background refresh and in a reload.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sorted, without duplicates (an address once, with its first weight), so that answers
/// compare equal whatever the resolver's order.
fn normalise(mut found: Vec<Found>) -> Vec<Found> {
    found.sort_unstable();
    found.dedup_by_key(|f| f.addr);
    found
}

/// Resolves `name` (`host:port`, or an SRV name) without blocking the runtime.
pub async fn resolve(name: &str) -> std::io::Result<Vec<Found>> {
    let lookup = async {
        if is_srv_name(name) {
            resolve_srv(name).await
        } else {
            Ok(tokio::net::lookup_host(name)
                .await?
                .map(Found::from)
                .collect())
        }
    };
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(found) => Ok(normalise(found?)),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {RESOLVE_TIMEOUT:?}"),
        )),
    }
}

/// Resolves `name` on the calling thread (a reload runs on a blocking thread; an SRV lookup
/// gets a runtime of its own there).
pub fn resolve_blocking(name: &str) -> std::io::Result<Vec<Found>> {
    if is_srv_name(name) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(resolve(name));
    }
    Ok(normalise(
        name.to_socket_addrs()?.map(Found::from).collect(),
    ))
}

/// One target of an SRV answer.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: Name,
    port: u16,
    weight: NonZeroU32,
}

/// The targets a client should use (RFC 2782): those of the lowest priority, without the
/// "no service here" target `.` and port 0. A weight of 0 (rarely picked, says the RFC) counts
/// as 1, and weights are capped at the members' maximum, 10000.
fn srv_targets(answers: &[Record]) -> Vec<Target> {
    let srvs: Vec<_> = answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) if !srv.target.is_root() && srv.port != 0 => Some(srv),
            _ => None,
        })
        .collect();
    let Some(lowest) = srvs.iter().map(|s| s.priority).min() else {
        return Vec::new();
    };
    srvs.into_iter()
        .filter(|s| s.priority == lowest)
        .map(|s| Target {
            host: s.target.clone(),
            port: s.port,
            weight: NonZeroU32::new(u32::from(s.weight).clamp(1, 10_000))
                .unwrap_or(NonZeroU32::MIN),
        })
        .collect()
}

/// The addresses the answer's additional section gives for `host`.
fn addresses_of(host: &Name, additionals: &[Record]) -> Vec<IpAddr> {
    additionals
        .iter()
        .filter(|r| r.name == *host)
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The members an SRV name stands for. The resolver is made afresh from `/etc/resolv.conf`
/// each time (a lookup every `dns_refresh` at most; it follows edits of that file).
async fn resolve_srv(name: &str) -> std::io::Result<Vec<Found>> {
    let resolver = hickory_resolver::TokioResolver::builder_tokio()
        .and_then(|b| b.build())
        .map_err(std::io::Error::other)?;
    let lookup = resolver
        .srv_lookup(name)
        .await
        .map_err(std::io::Error::other)?;
    let mut found = Vec::new();
    for target in srv_targets(lookup.answers()) {
        let mut ips = addresses_of(&target.host, lookup.additionals());
        if ips.is_empty() {
            let host = target.host.to_ascii();
            let host = host.trim_end_matches('.');
            match tokio::net::lookup_host((host, target.port)).await {
                Ok(addrs) => ips = addrs.map(|a| a.ip()).collect(),
                Err(e) => {
                    tracing::warn!(name, target = host, error = %e, "discover: cannot resolve an SRV target");
                }
            }
        }
        found.extend(ips.into_iter().map(|ip| Found {
            addr: SocketAddr::new(ip, target.port),
            weight: Some(target.weight),
        }));
    }
    Ok(found)
}

/// Keeps a usable answer; logs why one is not.
fn usable(name: &str, answer: std::io::Result<Vec<Found>>) -> Option<Vec<Found>> {
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
        let kept: Vec<Found> = vec![Found::from("10.1.2.3:80".parse::<SocketAddr>().unwrap())];
        let current = Resolved::from([("kept.test:80".to_owned(), kept.clone())]);
        let r = for_reload(
            ["kept.test:80".to_owned(), "localhost:8080".to_owned()],
            &current,
        );
        assert_eq!(r["kept.test:80"], kept);
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(r["localhost:8080"].contains(&Found::from(local)), "{r:?}");
    }

    #[test]
    fn answers_compare_whatever_the_resolver_order() {
        let a = Found::from("10.0.0.1:80".parse::<SocketAddr>().unwrap());
        let b = Found::from("10.0.0.2:80".parse::<SocketAddr>().unwrap());
        assert_eq!(normalise(vec![b, a, b]), normalise(vec![a, b]));
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Record {
        use hickory_resolver::proto::rr::rdata::SRV;
        Record::from_rdata(
            Name::from_ascii("_http._tcp.svc.test.").unwrap(),
            30,
            RData::SRV(SRV::new(
                priority,
                weight,
                port,
                Name::from_ascii(target).unwrap(),
            )),
        )
    }

    /// RFC 2782: only the lowest priority is used; `.` and port 0 are no targets; weights
    /// become member weights (0 counts as 1, capped at 10000).
    #[test]
    fn srv_answers_give_the_lowest_prioritys_targets_with_their_weights() {
        let answers = [
            srv(20, 5, 8080, "backup.svc.test."),
            srv(10, 0, 8081, "a.svc.test."),
            srv(10, 60000, 8082, "b.svc.test."),
            srv(10, 3, 8083, "."),
            srv(10, 3, 0, "c.svc.test."),
            srv(5, 1, 8084, "."),
        ];
        let t = srv_targets(&answers);
        let got: Vec<(String, u16, u32)> = t
            .iter()
            .map(|t| (t.host.to_ascii(), t.port, t.weight.get()))
            .collect();
        assert_eq!(
            got,
            [
                ("a.svc.test.".to_owned(), 8081, 1),
                ("b.svc.test.".to_owned(), 8082, 10_000),
            ]
        );
        assert!(srv_targets(&[srv(0, 0, 80, ".")]).is_empty());
        let a = Record::from_rdata(
            Name::from_ascii("a.svc.test.").unwrap(),
            30,
            RData::A(hickory_resolver::proto::rr::rdata::A::new(10, 0, 0, 1)),
        );
        assert_eq!(
            addresses_of(&t[0].host, &[a.clone(), answers[0].clone()]),
            [IpAddr::from([10, 0, 0, 1])]
        );
        assert!(addresses_of(&t[1].host, &[a]).is_empty());
    }
}
