//! Route matching and precedence.
//!
//! A request is matched against every route of its listener; among the routes whose
//! conditions all hold, the most specific wins, compared in this order:
//!
//! 1. host: an exact host beats a wildcard, a longer wildcard beats a shorter one, and any
//!    host condition beats none;
//! 2. path: exact beats pattern beats prefix beats none; among patterns more literal
//!    segments win, among prefixes and exacts the longer one wins;
//! 3. the number of other conditions (a method list counts as one, each header and query
//!    condition as one);
//! 4. declaration order: the route declared first wins.
//!
//! Hosts are compared lower-case without port; paths and query values are compared as sent
//! (not percent-decoded).

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::{HostMatch, PathMatch, RouteConfig, RouteMatch, Segment};

/// What a request is matched on.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Lower-case host without port, if the request named one.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// Specificity of one successful match; larger is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    host_rank: u8,
    host_len: usize,
    path_rank: u8,
    path_len: usize,
    conditions: usize,
}

/// Path parameters captured by a pattern, in pattern order.
pub type Params = Vec<(String, String)>;

/// The routes of one listener.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Arc<RouteConfig>>,
}

/// A matched route and the path parameters it captured.
#[derive(Debug, Clone)]
pub struct Matched {
    pub route: Arc<RouteConfig>,
    pub params: Vec<(String, String)>,
}

impl Router {
    /// Builds the router of `listener` from all routes (in declaration order).
    pub fn for_listener(listener: &str, routes: &[Arc<RouteConfig>]) -> Self {
        let routes = routes
            .iter()
            .filter(|r| {
                r.listeners
                    .as_ref()
                    .is_none_or(|ls| ls.iter().any(|l| l == listener))
            })
            .cloned()
            .collect();
        Self { routes }
    }

    /// Finds the most specific matching route.
    pub fn route(&self, facts: &RequestFacts<'_>) -> Option<Matched> {
        let mut best: Option<(Specificity, &Arc<RouteConfig>, Params)> = None;
        for r in &self.routes {
            if let Some((spec, params)) = matches(&r.matcher, facts) {
                // Strictly greater: on a tie the earlier declaration stays.
                if best.as_ref().is_none_or(|(b, _, _)| spec > *b) {
                    best = Some((spec, r, params));
                }
            }
        }
        best.map(|(_, route, params)| Matched {
            route: Arc::clone(route),
            params,
        })
    }
}

/// Returns the specificity and captured parameters when every condition of `m` holds.
pub fn matches(m: &RouteMatch, facts: &RequestFacts<'_>) -> Option<(Specificity, Params)> {
    let (host_rank, host_len) = if m.hosts.is_empty() {
        (0, 0)
    } else {
        let host = facts.host?;
        m.hosts
            .iter()
            .filter_map(|h| match h {
                HostMatch::Exact(e) if e == host => Some((2, e.len())),
                HostMatch::Wildcard(suffix)
                    if host.len() > suffix.len() && host.ends_with(suffix.as_str()) =>
                {
                    Some((1, suffix.len()))
                }
                _ => None,
            })
            .max()?
    };
    let mut params = Vec::new();
    let (path_rank, path_len) = match &m.path {
        None => (0, 0),
        Some(PathMatch::Exact(p)) => {
            if facts.path != p {
                return None;
            }
            (3, p.len())
        }
        Some(PathMatch::Prefix(p)) => {
            if !prefix_matches(p, facts.path) {
                return None;
            }
            (1, p.len())
        }
        Some(PathMatch::Pattern(segs)) => {
            params = pattern_matches(segs, facts.path)?;
            let literals = segs
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count();
            (2, literals)
        }
    };
    if !m.methods.is_empty() && !m.methods.contains(facts.method) {
        return None;
    }
    for (name, want) in &m.headers {
        let mut values = facts.headers.get_all(name).iter();
        let ok = match want {
            None => values.next().is_some(),
            Some(w) => values.any(|v| v.as_bytes() == w.as_bytes()),
        };
        if !ok {
            return None;
        }
    }
    for (name, want) in &m.query {
        let mut pairs = facts.query.unwrap_or("").split('&').filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        });
        let ok = match want {
            None => pairs.next().is_some(),
            Some(w) => pairs.any(|v| v == w),
        };
        if !ok {
            return None;
        }
    }
    let conditions = usize::from(!m.methods.is_empty()) + m.headers.len() + m.query.len();
    Some((
        Specificity {
            host_rank,
            host_len,
            path_rank,
            path_len,
            conditions,
        },
        params,
    ))
}

/// Segment-aware prefix match: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn pattern_matches(segs: &[Segment], path: &str) -> Option<Vec<(String, String)>> {
    let rest = path.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let mut params = Vec::new();
    for seg in segs {
        let part = parts.next()?;
        match seg {
            Segment::Literal(l) => {
                if l != part {
                    return None;
                }
            }
            Segment::Param(name) => {
                if part.is_empty() {
                    return None;
                }
                params.push((name.clone(), part.to_string()));
            }
        }
    }
    parts.next().is_none().then_some(params)
}

/// Replaces the matched prefix of `path` (which must match it) with `replacement`.
pub fn rewrite_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = if prefix == "/" {
        path
    } else {
        path.strip_prefix(prefix).unwrap_or(path)
    };
    let joined = match (replacement.ends_with('/'), rest.starts_with('/')) {
        (true, true) => format!("{}{}", replacement.trim_end_matches('/'), rest),
        (false, false) if !rest.is_empty() => format!("{replacement}/{rest}"),
        _ => format!("{replacement}{rest}"),
    };
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// Normalises the request host: lower-case, port removed, IPv6 brackets kept.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    // Slices of `raw` where possible: no allocation for a host that is lower case already
    // (the usual case), else one for the lower-cased result.
    let host: Cow<'_, str> = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => raw.get(..=end).unwrap_or(raw).into(),
            None => format!("{raw}]").into(),
        }
    } else {
        raw.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(raw, |(h, _)| h)
            .into()
    };
    match host {
        Cow::Borrowed(h) => {
            let h = h.trim_end_matches('.');
            if h.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(h.to_ascii_lowercase())
            } else {
                Cow::Borrowed(h)
            }
        }
        Cow::Owned(h) => Cow::Owned(h.trim_end_matches('.').to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests;
