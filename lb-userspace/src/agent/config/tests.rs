#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
use super::*;

pub(crate) const FULL: &str = r#"
[node]
name = "node1"
state_dir = "/var/lib/lb-agent"

[[vrrp]]
name = "v4"
vrid = 51
interface = "eth0"
priority = 150
advert_interval_cs = 3
preempt = true
preempt_delay_ms = 500
vips = ["10.0.0.100", "10.0.0.101/24"]
unicast_peers = ["10.0.0.2"]

[[vrrp]]
name = "v6"
vrid = 51
interface = "eth0"
priority = 150
vips = ["fd00::100"]

[tracking]
xdp_attached = { interface = "eth0", weight = 50 }
gateway_ready = { url = "http://127.0.0.1:9901/health/ready", weight = 60 }
uplink = [{ interface = "eth0", weight = 100 }]

[[gateways]]
name = "node2"
address = "10.0.0.2"
address6 = "fd00::2"
admin = "10.0.0.2:9901"
probe = { kind = "http", port = 9901, path = "/health/ready", expect_status = 200, interval_ms = 200, timeout_ms = 100, rise = 2, fall = 3 }

[[gateways]]
name = "node1"
address = "10.0.0.1"
weight = 50
probe = { kind = "tcp", port = 443 }

[cluster]
listen = "10.0.0.1:7900"
peers = ["10.0.0.2:7900"]

[admin]
socket = "/run/lb-agent/admin.sock"
https = { listen = "0.0.0.0:7443", cert_file = "/etc/lb/a.crt", key_file = "/etc/lb/a.key", token_file = "/etc/lb/token" }

[metrics]
listen = "127.0.0.1:9902"

[xdp]
interface = "eth0"
mode = "native"
ports = [{ port = 443 }, { port = 53, protocol = "udp" }]
"#;

fn issues(text: &str) -> Vec<String> {
    match parse(Path::new("/etc/lb/agent.toml"), text) {
        Ok(_) => panic!("expected errors"),
        Err(e @ ConfigError::Invalid { .. }) => e.to_string().lines().map(str::to_owned).collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn full_config_validates() {
    let cfg = parse(Path::new("a.toml"), FULL).unwrap();
    assert_eq!(cfg.node.name, "node1");
    assert_eq!(cfg.vrrp.len(), 2);
    assert_eq!(cfg.vrrp[0].advert_interval.centis(), 3);
    assert_eq!(cfg.vrrp[0].vips[1], ("10.0.0.101".parse().unwrap(), 24));
    assert_eq!(cfg.vrrp[1].family, Family::V6);
    assert_eq!(cfg.vrrp[1].vips[0].1, 128);
    assert_eq!(cfg.tracking.uplinks, vec![("eth0".to_string(), 100)]);
    assert_eq!(
        cfg.tracking.gateway_ready.as_ref().unwrap().target.path,
        "/health/ready"
    );
    assert_eq!(cfg.gateways[1].probe.kind, ProbeKind::Tcp);
    assert_eq!(cfg.gateways[1].probe.rise, 2);
    let ids: Vec<_> = cfg
        .gateway_ids()
        .into_iter()
        .map(|(id, g)| (id, g.name.clone()))
        .collect();
    assert_eq!(ids, vec![(0, "node1".into()), (1, "node2".into())]);
    let xdp = cfg.xdp.unwrap();
    assert_eq!(
        xdp.ports,
        vec![(443, L4Protocol::Tcp), (53, L4Protocol::Udp)]
    );
    assert_eq!(
        xdp.flow_table_size,
        lb_common::datapath::DEFAULT_FLOW_TABLE_SIZE
    );
}

#[test]
fn flow_table_size_is_bounded() {
    let with = |n: &str| {
        FULL.replace(
            "mode = \"native\"",
            &format!("mode = \"native\"\nflow_table_size = {n}"),
        )
    };
    let cfg = parse(Path::new("a.toml"), &with("262144")).unwrap();
    assert_eq!(cfg.xdp.unwrap().flow_table_size, 262_144);
    for bad in ["1023", "16777217", "0"] {
        let got = issues(&with(bad));
        assert!(
            got.iter().any(|g| g.contains(&format!(
                "xdp.flow_table_size: {bad}: must be 1024-16777216"
            ))),
            "{bad}: {got:#?}"
        );
    }
}

#[test]
fn unknown_key_names_file_path_and_line() {
    let text = FULL.replace("preempt = true", "preempt = true\nprempt_delay = 3");
    let err = parse(Path::new("/etc/lb/agent.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/etc/lb/agent.toml: vrrp[0].prempt_delay: "),
        "{err}"
    );
    assert!(err.contains("unknown field `prempt_delay`"), "{err}");
    assert!(err.contains("line 13"), "{err}");
}

#[test]
fn wrong_type_names_key_path() {
    let text = FULL.replace("priority = 150\nadvert", "priority = \"high\"\nadvert");
    let err = parse(Path::new("x.toml"), &text).unwrap_err().to_string();
    assert!(err.contains("vrrp[0].priority"), "{err}");
}

#[test]
fn every_semantic_error_is_collected() {
    let text = FULL
        .replace(
            "vrid = 51\ninterface = \"eth0\"\npriority = 150\nadvert",
            "vrid = 0\ninterface = \"eth0\"\npriority = 0\nadvert",
        )
        .replace("advert_interval_cs = 3", "advert_interval_cs = 5000")
        .replace("\"10.0.0.101/24\"", "\"fd00::5\"")
        .replace("rise = 2, fall = 3", "rise = 0, fall = 3")
        .replace("name = \"node1\"\naddress", "name = \"node2\"\naddress")
        .replace(
            "{ port = 53, protocol = \"udp\" }",
            "{ port = 53, protocol = \"sctp\" }",
        )
        .replace("http://127.0.0.1:9901/health/ready", "https://gw/ready");
    let got = issues(&text);
    for want in [
        "vrrp[0].vrid: 0: must be 1-255",
        "vrrp[0].priority: 0: must be 1-255",
        "vrrp[0].advert_interval_cs: 5000",
        "vrrp[0].vips: all addresses of one instance must be of one family",
        "gateways[0].probe.rise: 0: must be 1-100",
        "gateways[1].name: \"node2\" is used twice",
        "xdp.ports[1].protocol: \"sctp\"",
        "tracking.gateway_ready.url",
    ] {
        assert!(
            got.iter()
                .any(|g| g.starts_with("/etc/lb/agent.toml: ") && g.contains(want)),
            "missing {want:?} in {got:#?}"
        );
    }
}

#[test]
fn peers_need_a_listen_address() {
    let text = FULL.replace("listen = \"10.0.0.1:7900\"\n", "");
    let got = issues(&text);
    assert!(
        got.iter().any(|g| g.contains("cluster.listen: required")),
        "{got:?}"
    );
}

#[test]
fn cluster_token_is_read_and_checked() {
    let dir = std::env::temp_dir().join(format!("lb-agent-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let with = |file: &Path| {
        FULL.replace(
            "peers = [\"10.0.0.2:7900\"]\n",
            &format!(
                "peers = [\"10.0.0.2:7900\"]\ntoken_file = \"{}\"\n",
                file.display()
            ),
        )
    };
    let good = dir.join("good");
    std::fs::write(&good, "s3cr3t-0123456789abcdef\n").unwrap();
    let cfg = parse(Path::new("a.toml"), &with(&good)).unwrap();
    assert_eq!(
        cfg.cluster.token.as_ref().map(|t| &*t.0),
        Some("s3cr3t-0123456789abcdef")
    );
    assert!(
        !format!("{cfg:?}").contains("s3cr3t"),
        "Debug shows the token"
    );
    let short = dir.join("short");
    std::fs::write(&short, "abc\n").unwrap();
    let got = issues(&with(&short));
    assert!(
        got.iter()
            .any(|g| g.contains("cluster.token_file") && g.contains("at least 16")),
        "{got:?}"
    );
    let spaced = dir.join("spaced");
    std::fs::write(&spaced, "two words in one token\n").unwrap();
    let got = issues(&with(&spaced));
    assert!(
        got.iter()
            .any(|g| g.contains("cluster.token_file") && g.contains("one word")),
        "{got:?}"
    );
    let got = issues(&with(&dir.join("missing")));
    assert!(
        got.iter()
            .any(|g| g.contains("cluster.token_file") && g.contains("missing")),
        "{got:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn minimal_config_uses_defaults() {
    let cfg = parse(
        Path::new("m.toml"),
        "[node]\nname = \"n\"\nstate_dir = \"/tmp/x\"\n",
    )
    .unwrap();
    assert!(cfg.vrrp.is_empty() && cfg.gateways.is_empty() && cfg.xdp.is_none());
    assert_eq!(cfg.admin.socket, Path::new(DEFAULT_SOCKET));
}

#[test]
fn reload_refuses_restart_only_changes() {
    let a = parse(Path::new("a.toml"), FULL).unwrap();
    let b = parse(
        Path::new("a.toml"),
        &FULL.replace("127.0.0.1:9902", "127.0.0.1:9903"),
    )
    .unwrap();
    let diff = a.restart_only_diff(&b);
    assert_eq!(diff.len(), 1);
    assert_eq!(diff[0].path, "metrics.listen");
    let c = parse(
        Path::new("a.toml"),
        &FULL.replace("priority = 150\nadvert", "priority = 120\nadvert"),
    )
    .unwrap();
    assert!(a.restart_only_diff(&c).is_empty());
}

#[test]
fn syntax_error_has_a_line() {
    let err = parse(Path::new("s.toml"), "[node\nname = 1")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("s.toml: "), "{err}");
    assert!(err.contains("line 1"), "{err}");
}
