//! Router tests: precedence table, pattern capture, and properties.

use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;

use super::*;
use crate::config::{self, RouteConfig};

fn routes(text: &str) -> Vec<Arc<RouteConfig>> {
    let full = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\n[listeners.other]\nlisten = \"127.0.0.1:1\"\n\
         [upstreams.u]\nmembers = [{{ address = \"127.0.0.1:1\" }}]\n{text}"
    );
    config::parse(&full, Path::new("t.toml"))
        .unwrap()
        .routes
        .into_iter()
        .map(Arc::new)
        .collect()
}

fn pick(
    router: &Router,
    host: Option<&str>,
    method: Method,
    uri: &str,
    headers: &HeaderMap,
) -> Option<String> {
    let (path, query) = uri
        .split_once('?')
        .map_or((uri, None), |(p, q)| (p, Some(q)));
    router
        .route(&RequestFacts {
            host,
            path,
            query,
            method: &method,
            headers,
        })
        .map(|m| m.route.name.clone())
}

const TABLE: &str = r#"
[[routes]]
name = "catch-all"
upstream = "u"

[[routes]]
name = "api-prefix"
upstream = "u"
match = { path_prefix = "/api" }

[[routes]]
name = "api-prefix-dup"
upstream = "u"
match = { path_prefix = "/api/" }

[[routes]]
name = "user-pattern"
upstream = "u"
match = { path_pattern = "/api/users/{id}" }

[[routes]]
name = "user-me"
upstream = "u"
match = { path_exact = "/api/users/me" }

[[routes]]
name = "api-post"
upstream = "u"
match = { path_prefix = "/api", methods = ["POST"] }

[[routes]]
name = "canary"
upstream = "u"
match = { path_prefix = "/api", headers = [{ name = "x-canary", value = "1" }], query = [{ name = "debug" }] }

[[routes]]
name = "wild-host"
upstream = "u"
match = { hosts = ["*.example.com"] }

[[routes]]
name = "deep-wild-host"
upstream = "u"
match = { hosts = ["*.eu.example.com"] }

[[routes]]
name = "exact-host"
upstream = "u"
match = { hosts = ["api.example.com"] }

[[routes]]
name = "other-only"
listeners = ["other"]
upstream = "u"
match = { path_exact = "/only-other" }
"#;

#[test]
fn precedence_table() {
    let all = routes(TABLE);
    let web = Router::for_listener("web", &all);
    let other = Router::for_listener("other", &all);
    let none = HeaderMap::new();
    let mut canary = HeaderMap::new();
    canary.insert("x-canary", HeaderValue::from_static("1"));
    type Case<'a> = (
        &'a Router,
        Option<&'a str>,
        Method,
        &'a str,
        &'a HeaderMap,
        &'a str,
    );
    let cases: &[Case<'_>] = &[
        (&web, None, Method::GET, "/", &none, "catch-all"),
        (&web, None, Method::GET, "/apix", &none, "catch-all"),
        (&web, None, Method::GET, "/api", &none, "api-prefix"),
        // `/api/` normalises to the same prefix as `/api`: declared first wins.
        (&web, None, Method::GET, "/api/things", &none, "api-prefix"),
        (
            &web,
            None,
            Method::GET,
            "/api/users/42",
            &none,
            "user-pattern",
        ),
        (
            &web,
            None,
            Method::GET,
            "/api/users/42/x",
            &none,
            "api-prefix",
        ),
        (&web, None, Method::GET, "/api/users/me", &none, "user-me"),
        (&web, None, Method::POST, "/api/things", &none, "api-post"),
        (&web, None, Method::GET, "/api/x?debug", &canary, "canary"),
        (
            &web,
            None,
            Method::GET,
            "/api/x?a=1&debug=yes",
            &canary,
            "canary",
        ),
        (
            &web,
            None,
            Method::GET,
            "/api/x?nodebug",
            &canary,
            "api-prefix",
        ),
        (
            &web,
            Some("www.example.com"),
            Method::GET,
            "/api",
            &none,
            "wild-host",
        ),
        (
            &web,
            Some("example.com"),
            Method::GET,
            "/api",
            &none,
            "api-prefix",
        ),
        (
            &web,
            Some("a.eu.example.com"),
            Method::GET,
            "/",
            &none,
            "deep-wild-host",
        ),
        (
            &web,
            Some("api.example.com"),
            Method::GET,
            "/api/users/me",
            &none,
            "exact-host",
        ),
        (&web, None, Method::GET, "/only-other", &none, "catch-all"),
        (
            &other,
            None,
            Method::GET,
            "/only-other",
            &none,
            "other-only",
        ),
    ];
    for (router, host, method, uri, headers, want) in cases {
        let got = pick(router, *host, method.clone(), uri, headers);
        assert_eq!(got.as_deref(), Some(*want), "{method} {host:?} {uri}");
    }
}

#[test]
fn pattern_captures_parameters() {
    let all = routes(
        "[[routes]]\nupstream = \"u\"\nmatch = { path_pattern = \"/users/{id}/posts/{post}\" }\n",
    );
    let router = Router::for_listener("web", &all);
    let m = router
        .route(&RequestFacts {
            host: None,
            path: "/users/7/posts/abc",
            query: None,
            method: &Method::GET,
            headers: &HeaderMap::new(),
        })
        .unwrap();
    assert_eq!(
        m.params,
        vec![("id".into(), "7".into()), ("post".into(), "abc".into())]
    );
}

#[test]
fn rewrite_and_host_normalisation() {
    assert_eq!(rewrite_prefix("/api/users", "/api", ""), "/users");
    assert_eq!(rewrite_prefix("/api", "/api", ""), "/");
    assert_eq!(rewrite_prefix("/api/users", "/api", "/v2"), "/v2/users");
    assert_eq!(rewrite_prefix("/api/users", "/api", "/v2/"), "/v2/users");
    assert_eq!(rewrite_prefix("/x", "/", "/base"), "/base/x");
    assert_eq!(normalize_host("API.Example.com:8443"), "api.example.com");
    assert_eq!(normalize_host("[::1]:80"), "[::1]");
    assert_eq!(normalize_host("example.com."), "example.com");
    assert_eq!(normalize_host("[::1"), "[::1]");
    assert_eq!(normalize_host("[FE80::1]:443"), "[fe80::1]");
    // A host in lower case already is a slice of the input, not a copy.
    assert!(matches!(
        normalize_host("api.example.com:8080"),
        std::borrow::Cow::Borrowed("api.example.com")
    ));
    assert!(matches!(
        normalize_host("[::1]:80"),
        std::borrow::Cow::Borrowed("[::1]")
    ));
}

/// The straightforward form of [`normalize_host`] (copies at each step).
fn normalize_host_reference(raw: &str) -> String {
    let host = if raw.starts_with('[') {
        raw.split_once(']').map_or(raw, |(h, _)| h).to_string() + "]"
    } else {
        raw.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(raw, |(h, _)| h)
            .to_string()
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

proptest! {
    #[test]
    fn host_normalisation_matches_the_reference(raw in "\\[?[a-zA-Z0-9:.\\]\\[é-]{0,24}") {
        prop_assert_eq!(normalize_host(&raw), normalize_host_reference(&raw));
    }
}

fn seg() -> impl Strategy<Value = String> {
    "[a-c]{1,2}"
}

prop_compose! {
    fn route_toml(i: usize)(
        kind in 0..4u8,
        segs in proptest::collection::vec(seg(), 0..3),
        method in proptest::option::of(prop_oneof![Just("GET"), Just("POST")]),
        host in proptest::option::of(prop_oneof![Just("a.example.com"), Just("*.example.com")]),
    ) -> String {
        let p = format!("/{}", segs.join("/"));
        let path = match kind {
            0 => String::new(),
            1 => format!("path_exact = \"{p}\", "),
            2 => format!("path_prefix = \"{p}\", "),
            _ => format!("path_pattern = \"{}\", ", if segs.is_empty() { "/{x}".to_string() } else { format!("{p}/{{x}}") }),
        };
        let method = method.map(|m| format!("methods = [\"{m}\"], ")).unwrap_or_default();
        let host = host.map(|h| format!("hosts = [\"{h}\"], ")).unwrap_or_default();
        format!("[[routes]]\nname = \"r{i}\"\nupstream = \"u\"\nmatch = {{ {path}{method}{host} }}\n")
    }
}

fn route_set() -> impl Strategy<Value = String> {
    (0..6usize).prop_flat_map(|n| {
        (0..n)
            .map(route_toml)
            .collect::<Vec<_>>()
            .prop_map(|v| v.concat())
    })
}

proptest! {
    /// The winner is at least as specific as every other matching route, and on a tie it was
    /// declared first.
    #[test]
    fn winner_is_most_specific_then_first(
        text in route_set(),
        segs in proptest::collection::vec(seg(), 0..4),
        post in any::<bool>(),
        host in proptest::option::of(prop_oneof![Just("a.example.com"), Just("b.example.com")]),
    ) {
        let all = routes(&text);
        let router = Router::for_listener("web", &all);
        let path = format!("/{}", segs.join("/"));
        let method = if post { Method::POST } else { Method::GET };
        let headers = HeaderMap::new();
        let facts = RequestFacts { host, path: &path, query: None, method: &method, headers: &headers };
        let winner = router.route(&facts);
        let matching: Vec<_> = all.iter().filter_map(|r| matches(&r.matcher, &facts).map(|(s, _)| (s, r.index))).collect();
        match winner {
            None => prop_assert!(matching.is_empty()),
            Some(w) => {
                let (ws, wi) = matching.iter().find(|(_, i)| *i == w.route.index).copied().unwrap();
                for (s, i) in &matching {
                    prop_assert!(ws > *s || (ws == *s && wi <= *i));
                }
            }
        }
    }

    /// A path built from a pattern always matches it and captures the values.
    #[test]
    fn pattern_roundtrip(lits in proptest::collection::vec("[a-z]{1,4}", 1..4), vals in proptest::collection::vec("[a-zA-Z0-9_.-]{1,6}", 1..4)) {
        let mut pattern = String::new();
        let mut path = String::new();
        for (i, (l, v)) in lits.iter().zip(&vals).enumerate() {
            pattern.push_str(&format!("/{l}/{{p{i}}}"));
            path.push_str(&format!("/{l}/{v}"));
        }
        let segs = config::validate::path_pattern(&pattern).unwrap();
        let params = pattern_matches(&segs, &path).unwrap();
        let got: Vec<_> = params.into_iter().map(|(_, v)| v).collect();
        let want: Vec<_> = vals.iter().take(lits.len().min(vals.len())).cloned().collect();
        prop_assert_eq!(got, want);
    }

    /// Rewriting always yields an absolute path.
    #[test]
    fn rewrite_is_absolute(rest in "(/[a-z]{1,3}){0,3}/?", replacement in prop_oneof![Just(""), Just("/v2"), Just("/v2/")]) {
        let path = format!("/api{rest}");
        let out = rewrite_prefix(&path, "/api", replacement);
        prop_assert!(out.starts_with('/'));
        prop_assert!(!out.contains("//"));
    }

    /// Prefix matching never matches in the middle of a segment.
    #[test]
    fn prefix_is_segment_aware(prefix in "/[a-c]{1,3}", path in "/[a-c]{0,5}(/[a-c]{0,2})?") {
        if prefix_matches(&prefix, &path) {
            let with_slash = format!("{prefix}/");
            let ok = path == prefix || path.starts_with(&with_slash);
            prop_assert!(ok);
        }
    }
}
