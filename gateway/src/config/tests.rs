//! Config parsing and validation tests.

use std::path::Path;

use super::*;

const MINIMAL: &str = r#"
[listeners.web]
listen = "127.0.0.1:0"

[upstreams.api]
members = [{ address = "127.0.0.1:9000" }]

[[routes]]
upstream = "api"
"#;

fn errors(text: &str) -> Vec<String> {
    match parse(text, Path::new("/etc/gw.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.messages(),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL, Path::new("gw.toml")).unwrap();
    let l = &c.listeners["web"];
    assert_eq!(l.max_header_bytes, 16 * 1024);
    assert!(l.http2);
    assert_eq!(l.max_requests_per_connection, 1000);
    assert_eq!(l.max_connection_age, Duration::from_secs(3600));
    assert_eq!(l.max_concurrent_streams, 128);
    let u = &c.upstreams["api"];
    assert_eq!(u.algorithm, Algorithm::RoundRobin);
    assert_eq!(u.retry.budget_percent, 20);
    assert_eq!(c.routes[0].name, "route-0");
}

#[test]
fn unknown_key_is_rejected_with_file_name() {
    let e = parse(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nlisten_port = 3\n",
        Path::new("/etc/gw.toml"),
    )
    .unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("/etc/gw.toml:"), "{s}");
    assert!(s.contains("listen_port"), "{s}");
}

#[test]
fn all_errors_are_collected_with_key_paths() {
    let text = r#"
[global]
drain_timeout = "10 parsecs"

[listeners.web]
listen = "nope"
max_body_bytes = -1
body_timeout = "soon"
send_timeout = "1 fortnight"
max_requests_per_connection = 0
max_connection_age = "old"
max_concurrent_streams = 100001

[upstreams.api]
algorithm = "random"
read_timeout = "-1s"
max_requests_per_member = 0
tunnel_idle_timeout = "never"
members = [{ address = "a:1", weight = 1 }, { address = "b:2", weight = 0 }]

[[routes]]
upstream = "missing"
[routes.match]
path_pattern = "/users/{id"
methods = ["G E T"]
"#;
    let errs = errors(text);
    let want = [
        "global.drain_timeout:",
        "listeners.web.listen: `nope` is not an IP:port address",
        "listeners.web.max_body_bytes:",
        "listeners.web.body_timeout:",
        "listeners.web.send_timeout:",
        "listeners.web.max_requests_per_connection: must be > 0",
        "listeners.web.max_connection_age:",
        "listeners.web.max_concurrent_streams: must be between 1 and 100000",
        "upstreams.api.algorithm:",
        "upstreams.api.read_timeout:",
        "upstreams.api.max_requests_per_member: must be > 0",
        "upstreams.api.tunnel_idle_timeout:",
        "upstreams.api.members[1].weight: must be > 0",
        "routes[0].upstream: no upstream named `missing`",
        "routes[0].match.path_pattern:",
        "routes[0].match.methods[0]:",
    ];
    for w in want {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "missing {w} in {errs:#?}"
        );
    }
}

#[test]
fn consistent_hash_needs_a_hash_source() {
    let text = MINIMAL.replace(
        "[upstreams.api]",
        "[upstreams.api]\nalgorithm = \"consistent_hash\"",
    );
    assert_eq!(
        errors(&text),
        vec!["upstreams.api.hash: is required with algorithm `consistent_hash`"]
    );
    let ok = MINIMAL.replace(
        "[upstreams.api]",
        "[upstreams.api]\nalgorithm = \"consistent_hash\"\nhash = { source = \"cookie\", name = \"sid\" }",
    );
    assert!(errors(&ok).is_empty());
}

#[test]
fn strip_prefix_requires_a_prefix_match() {
    let text = format!("{MINIMAL}strip_prefix = true\n");
    assert_eq!(
        errors(&text),
        vec!["routes[0].strip_prefix: requires `match.path_prefix`"]
    );
}

#[test]
fn route_needs_exactly_one_action() {
    let text = format!("{MINIMAL}[routes.respond]\nstatus = 200\n");
    assert_eq!(
        errors(&text),
        vec!["routes[0]: exactly one of `upstream`, `redirect` or `respond` is required"]
    );
}

#[test]
fn relative_tls_paths_resolve_next_to_the_config() {
    let text = r#"
[listeners.tls]
listen = "127.0.0.1:0"
[listeners.tls.tls]
certificates = [{ cert_file = "c.pem", key_file = "/abs/k.pem", server_names = ["*.Example.com"] }]
"#;
    let c = parse(text, Path::new("/etc/gw/gw.toml")).unwrap();
    let cert = &c.listeners["tls"].tls.as_ref().unwrap().certificates[0];
    assert_eq!(cert.cert_file, Path::new("/etc/gw/c.pem"));
    assert_eq!(cert.key_file, Path::new("/abs/k.pem"));
    assert_eq!(cert.server_names, vec!["*.example.com"]);
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("5 days").is_err());
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(text in "\\PC{0,200}") {
        drop(parse(&text, Path::new("x.toml")));
    }
}

#[test]
fn discover_members_need_a_name_and_tls_needs_a_server_name() {
    let c = parse(
        r#"
[global]
dns_refresh = "250ms"
[listeners.web]
listen = "127.0.0.1:0"
[upstreams.api]
members = [{ address = "api.internal:8080", discover = true, weight = 3 }, { address = "10.0.0.1:80" }]
[[routes]]
upstream = "api"
"#,
        Path::new("gw.toml"),
    )
    .unwrap();
    assert_eq!(c.dns_refresh, Duration::from_millis(250));
    assert_eq!(
        c.discovered_names().into_iter().collect::<Vec<_>>(),
        ["api.internal:8080"]
    );
    assert!(!c.upstreams["api"].members[1].discover);
    assert_eq!(
        parse(MINIMAL, Path::new("gw.toml")).unwrap().dns_refresh,
        Duration::from_secs(10)
    );

    let e = errors(
        r#"
[global]
dns_refresh = "0s"
[listeners.web]
listen = "127.0.0.1:0"
[upstreams.api]
members = [{ address = "10.0.0.1:80", discover = true }, { address = "a.internal:80", discover = true }, { address = "b.internal:80", discover = true }]
tls = {}
[[routes]]
upstream = "api"
"#,
    );
    let expected = [
        "global.dns_refresh: must be > 0",
        "upstreams.api.members[0].discover: `10.0.0.1:80` is an IP address; `discover` needs a DNS name",
        "upstreams.api.tls.server_name: is required with `discover` members",
    ];
    for want in expected {
        assert!(
            e.iter().any(|m| m.starts_with(want)),
            "{want:?} not in {e:#?}"
        );
    }
    // The TLS error is listed once however many members discover.
    assert_eq!(
        e.iter().filter(|m| m.contains("tls.server_name")).count(),
        1,
        "{e:#?}"
    );
}

#[test]
fn srv_names_need_discover() {
    let member = |line: &str| {
        MINIMAL.replace(
            "members = [{ address = \"127.0.0.1:9000\" }]",
            &format!("members = [{line}]"),
        )
    };
    let ok = parse(
        &member("{ address = \"_http._tcp.api.example.com\", discover = true }"),
        Path::new("gw.toml"),
    )
    .unwrap();
    let m = &ok.upstreams["api"].members[0];
    assert!(m.discover && is_srv_name(&m.address));
    assert_eq!(
        ok.discovered_names().into_iter().collect::<Vec<_>>(),
        ["_http._tcp.api.example.com"]
    );
    assert_eq!(
        errors(&member("{ address = \"_http._tcp.api.example.com\" }")),
        vec![
            "upstreams.api.members[0].discover: `_http._tcp.api.example.com` is an SRV name (no port): it needs `discover = true`"
        ]
    );
    assert_eq!(
        errors(&member("{ address = \"_http._tcp.a b\", discover = true }")),
        vec![
            "upstreams.api.members[0].address: `_http._tcp.a b` is not a DNS name (letters, digits, `-`, `_`, `.`)"
        ]
    );
    // Not SRV names: a port, or one underscore label only.
    assert!(!is_srv_name("_http._tcp.example.com:80"));
    assert!(!is_srv_name("_http.example.com"));
    assert!(!is_srv_name("_http._tcp"));
    assert!(
        errors(&member(
            "{ address = \"_http.example.com\", discover = true }"
        ))
        .iter()
        .any(|e| e.contains("is not `host:port`"))
    );
}

/// The complete example at the top of CONFIG.md is a valid config (the docs stay true).
#[test]
fn the_reference_example_is_valid() {
    let doc = include_str!("../../CONFIG.md");
    let start = doc.find("```toml\n").expect("CONFIG.md has a toml example") + "```toml\n".len();
    let len = doc[start..].find("```").expect("the example ends");
    let example = &doc[start..start + len];
    let c = match parse(example, Path::new("/etc/lb-gateway/gateway.toml")) {
        Ok(c) => c,
        Err(e) => panic!("the CONFIG.md example is refused: {e}"),
    };
    assert_eq!(c.listeners["internal"].max_requests_per_connection, 10_000);
    assert_eq!(c.upstreams["users"].max_requests_per_member, Some(200));
    assert!(
        c.discovered_names()
            .contains("_http._tcp.users.service.consul")
    );
}

#[test]
fn queue_timeout_needs_a_member_limit() {
    let text = MINIMAL.replace("[upstreams.api]", "[upstreams.api]\nqueue_timeout = \"1s\"");
    assert_eq!(
        errors(&text),
        vec![
            "upstreams.api.queue_timeout: needs `max_requests_per_member` (there is no queue without it)"
        ]
    );
    let ok = MINIMAL.replace(
        "[upstreams.api]",
        "[upstreams.api]\nmax_requests_per_member = 5\nqueue_timeout = \"250ms\"",
    );
    let c = parse(&ok, Path::new("gw.toml")).unwrap();
    assert_eq!(
        c.upstreams["api"].queue_timeout,
        Some(Duration::from_millis(250))
    );
}
