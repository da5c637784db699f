//! Service discovery by DNS, end to end: a real `lb-gateway` process whose resolver reads a
//! hosts file the test rewrites (the process runs in a mount namespace where that file is
//! bind-mounted over `/etc/hosts`, and a `resolv.conf` naming 127.0.0.1 over
//! `/etc/resolv.conf`, so a name missing from the file is asked of loopback, where nobody
//! answers, and never of a real DNS server), and real upstreams on three loopback addresses.
//! Needs root (`unshare --mount`); `LB_SKIP_PRIVILEGED=1` skips it, loudly.

// The helpers below are test code outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

// The same gate as the lab's privileged tests (one file, two crates).
#[path = "../../tests/src/privileged.rs"]
mod privileged;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{TempDir, TestUpstream, client, get};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_lb-gateway");
const DEADLINE: Duration = Duration::from_secs(20);

/// Binds one port on each of `ips` (the same port on all, as one DNS name's addresses have).
async fn same_port(ips: &[&str]) -> Vec<TcpListener> {
    for _ in 0..50 {
        let first = TcpListener::bind(format!("{}:0", ips[0])).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind(format!("{ip}:{port}")).await {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == ips.len() {
            return all;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// `lb-gateway COMMAND --config CONFIG` (`run`) or `lb-gateway COMMAND CONFIG`, in a mount
/// namespace where `hosts` is `/etc/hosts` and `resolv` is `/etc/resolv.conf`.
fn with_resolver(
    hosts: &std::path::Path,
    resolv: &std::path::Path,
    command: &str,
    config: &std::path::Path,
) -> std::process::Command {
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && exec "$3" "$4" $5 "$6""#)
        .arg("sh")
        .arg(hosts)
        .arg(resolv)
        .arg(BIN)
        .arg(command)
        .arg(if command == "run" { "--config" } else { "" })
        .arg(config);
    cmd
}

/// `lb-gateway run` as [`with_resolver`] starts it, its stdout in `dir/gateway.out`, once it
/// listens on `listen`.
async fn run_gateway(
    dir: &TempDir,
    hosts: &std::path::Path,
    resolv: &std::path::Path,
    config: &std::path::Path,
    listen: std::net::SocketAddr,
) -> tokio::process::Child {
    let mut gateway = tokio::process::Command::from(with_resolver(hosts, resolv, "run", config))
        .stdout(std::fs::File::create(dir.0.join("gateway.out")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("unshare (util-linux) runs");
    let deadline = Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        assert!(Instant::now() < deadline, "the gateway did not listen");
        assert!(gateway.try_wait().unwrap().is_none(), "the gateway exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway
}

/// A resolver setup that never leaves loopback: `hosts` as given, DNS asked of 127.0.0.1 only
/// (where nobody answers).
fn resolver_files(dir: &TempDir, hosts: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        dir.write("hosts", hosts),
        dir.write(
            "resolv.conf",
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        ),
    )
}

/// A gateway config: admin on `admin`, listener `web` on `listen`, every request to the
/// upstream `svc` (`upstream` is the body of its section), names refreshed every 200 ms.
fn svc_config(admin: std::net::SocketAddr, listen: std::net::SocketAddr, upstream: &str) -> String {
    format!(
        "[global]\naccess_log = false\ndns_refresh = \"200ms\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [listeners.web]\nlisten = \"{listen}\"\n\n[upstreams.svc]\n{upstream}\n\n[[routes]]\nupstream = \"svc\"\n"
    )
}

/// Which upstream answered each of `n` requests; every request must succeed.
async fn tally(url: &str, n: usize) -> BTreeMap<String, usize> {
    let c = client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, headers, body) = get(&c, url).await;
        assert_eq!(status, 200, "{body}");
        let name = headers["x-upstream"].to_str().unwrap().to_owned();
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_members_follow_the_names_addresses() {
    if !privileged::require_root("discover_members_follow_the_names_addresses") {
        return;
    }
    let sockets = same_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    let port = sockets[0].local_addr().unwrap().port();
    let ups: Vec<TestUpstream> = sockets
        .into_iter()
        .zip(["a", "b", "c"])
        .map(|(s, name)| TestUpstream::start_on(name, s))
        .collect();
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (listen, admin) = (free(), free());
    let dir = TempDir::new();
    // Two addresses for the name at first (`/etc/host.conf` has `multi on` on Debian; the
    // test says so if it does not).
    let (hosts, resolv) = resolver_files(&dir, "127.0.0.2 svc.test\n127.0.0.3 svc.test\n");
    let config_text = |members: &str| svc_config(admin, listen, &format!("members = [{members}]"));
    let config = dir.write(
        "gw.toml",
        &config_text(&format!(
            r#"{{ address = "svc.test:{port}", discover = true }}"#
        )),
    );
    let mut gateway = run_gateway(&dir, &hosts, &resolv, &config, listen).await;
    let deadline = Instant::now() + DEADLINE;
    let url = format!("http://{listen}/");

    // The name's two addresses are two members, taken in turn.
    let seen = tally(&url, 20).await;
    assert_eq!(
        seen,
        BTreeMap::from([("a".to_owned(), 10), ("b".to_owned(), 10)]),
        "round robin over both addresses of svc.test"
    );

    // The name moves to a third address: within a few refreshes every request goes there,
    // and none fails on the way, also among requests sent concurrently across the change.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), std::sync::Arc::clone(&stop));
            tokio::spawn(async move {
                let c = client();
                let mut statuses = BTreeMap::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, _, _) = get(&c, &url).await;
                    *statuses.entry(status.as_u16()).or_insert(0_usize) += 1;
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&hosts, "127.0.0.4 svc.test\n").unwrap();
    let moved = loop {
        assert!(
            Instant::now() < deadline,
            "requests never moved to the new address"
        );
        let seen = tally(&url, 10).await;
        if seen.keys().eq(["c"]) {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(moved["c"], 10);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        let statuses = task.await.unwrap();
        assert!(
            statuses.keys().eq([&200]) && statuses[&200] > 0,
            "{statuses:?}"
        );
    }
    let c_hits = ups[2].hits();
    assert!(c_hits >= 10, "{c_hits}");
    // The change is logged for the operator.
    let log = std::fs::read_to_string(dir.0.join("gateway.out")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("discover: the name's members changed")
                && l.contains(&format!("127.0.0.4:{port}"))),
        "{log}"
    );
    // The members that left are gone from every per-member series (health, attempts,
    // ejections: they had served requests), the new one is there.
    let (_, _, metrics) = get(&client(), &format!("http://{admin}/metrics")).await;
    let gauge = |ip: &str| {
        format!(r#"lb_gateway_upstream_member_healthy{{member="{ip}:{port}",upstream="svc"}}"#)
    };
    assert!(
        metrics.contains(&format!("{} 1", gauge("127.0.0.4"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            r#"lb_gateway_upstream_attempts_total{{member="127.0.0.4:{port}",outcome="success",upstream="svc"}}"#
        )),
        "{metrics}"
    );
    for gone in ["127.0.0.2", "127.0.0.3"] {
        let label = format!(r#"member="{gone}:{port}""#);
        assert!(!metrics.contains(&label), "{gone} still listed:\n{metrics}");
    }

    // A name that stops resolving keeps its last addresses (a DNS outage empties no pool).
    std::fs::write(&hosts, "127.0.0.1 other.test\n").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        tally(&url, 10).await,
        BTreeMap::from([("c".to_owned(), 10)])
    );

    // A reload that adds a second name: its addresses join the pool, the first name's last
    // answer stays. It also adds a third name that DNS never answers (asked of 127.0.0.9,
    // where the test holds port 53 and answers nothing, with a resolver timeout of 30 s): the
    // reload waits for it at most the discovery timeout (5 s), not the resolver's 30 s.
    let dns = std::net::UdpSocket::bind("127.0.0.9:53").unwrap();
    dns.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.9\noptions timeout:30 attempts:1\n",
    )
    .unwrap();
    std::fs::write(&hosts, "127.0.0.2 svc2.test\n").unwrap();
    std::fs::write(
        &config,
        config_text(&format!(
            r#"{{ address = "svc.test:{port}", discover = true }}, {{ address = "svc2.test:{port}", discover = true }}, {{ address = "silent.test:{port}", discover = true }}"#
        )),
    )
    .unwrap();
    let pid = gateway.id().expect("the gateway runs");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "the reload's new name got no traffic"
        );
        let seen = tally(&url, 10).await;
        if seen == BTreeMap::from([("a".to_owned(), 5), ("c".to_owned(), 5)]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The silent name was asked of DNS (so the reload did wait for it).
    let mut buf = [0u8; 512];
    let asked = std::iter::from_fn(|| dns.recv(&mut buf).ok().map(|n| buf[..n].to_vec()))
        .take(100)
        .any(|query| query.windows(7).any(|w| w == b"\x06silent"));
    assert!(asked, "silent.test was never asked of DNS");
    gateway.kill().await.unwrap();
}

/// `check-config` resolves `discover` names as the gateway would and reports each answer; a
/// name that does not resolve there is a warning, not an invalid config.
#[test]
fn check_config_reports_what_discover_names_resolve_to() {
    if !privileged::require_root("check_config_reports_what_discover_names_resolve_to") {
        return;
    }
    let dir = TempDir::new();
    let (hosts, resolv) = resolver_files(&dir, "127.0.0.2 svc.test\n127.0.0.3 svc.test\n");
    let config = dir.write(
        "gw.toml",
        r#"
[listeners.web]
listen = "127.0.0.1:0"

[upstreams.svc]
members = [
  { address = "svc.test:8080", discover = true },
  { address = "missing.test:8080", discover = true },
]

[[routes]]
upstream = "svc"
"#,
    );
    let out = with_resolver(&hosts, &resolv, "check-config", &config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let line = |what: &str, name: &str| {
        err.lines()
            .find(|l| l.contains(what) && l.contains(name))
            .unwrap_or_else(|| panic!("no `{what}` line for {name}:\n{err}"))
            .to_owned()
    };
    let found = line("discover: the name resolves", "svc.test:8080");
    assert!(
        found.contains("127.0.0.2:8080") && found.contains("127.0.0.3:8080"),
        "{found}"
    );
    let missing = line("discover: cannot resolve the name", "missing.test:8080");
    assert!(missing.contains("WARN"), "{missing}");
    assert!(err.contains("config is valid"), "{err}");
}

/// One SRV record the test's DNS server gives: priority, weight, port, target, and the
/// target's address in the additional section (`None`: not sent; the gateway must look the
/// target up itself, here in the hosts file).
type SrvRecord = (u16, u16, u16, &'static str, Option<[u8; 4]>);

/// A DNS server on `socket` (UDP) for the test: SRV queries for `_http._tcp.svc.test.` get
/// `records` (as they are when the query comes), anything else an empty NOERROR answer.
/// Counts the SRV queries.
async fn srv_server(
    socket: tokio::net::UdpSocket,
    records: std::sync::Arc<std::sync::Mutex<Vec<SrvRecord>>>,
    queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use hickory_proto::op::{Message, OpCode};
    use hickory_proto::rr::rdata::{A, SRV};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    let service = Name::from_ascii("_http._tcp.svc.test.").unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let mut answer = Message::response(query.metadata.id, OpCode::Query);
        answer.metadata.recursion_desired = query.metadata.recursion_desired;
        answer.metadata.recursion_available = true;
        answer.metadata.authoritative = true;
        for q in &query.queries {
            answer.add_query(q.clone());
            if q.query_type != RecordType::SRV || q.name != service {
                continue;
            }
            queries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            for &(priority, weight, port, target, ip) in records.lock().unwrap().iter() {
                let target = Name::from_ascii(target).unwrap();
                answer.add_answer(Record::from_rdata(
                    service.clone(),
                    1,
                    RData::SRV(SRV::new(priority, weight, port, target.clone())),
                ));
                if let Some([a, b, c, d]) = ip {
                    answer.add_additional(Record::from_rdata(
                        target,
                        1,
                        RData::A(A::new(a, b, c, d)),
                    ));
                }
            }
        }
        let Ok(bytes) = answer.to_vec() else {
            continue;
        };
        let _sent = socket.send_to(&bytes, from).await;
    }
}

/// An SRV name (`_http._tcp.svc.test`) as a `discover` member: the lowest priority's targets
/// become members at the records' ports with the records' weights, addressed from the
/// answer's additional section or, without one, the system resolver (the hosts file); a
/// changed answer changes the members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_srv_members_follow_the_records() {
    if !privileged::require_root("discover_srv_members_follow_the_records") {
        return;
    }
    // Three upstreams, each on a port of its own (SRV records carry the port).
    let mut ups = Vec::new();
    for (ip, name) in [("127.0.0.2", "a"), ("127.0.0.3", "b"), ("127.0.0.4", "c")] {
        let socket = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        ups.push(TestUpstream::start_on(name, socket));
    }
    let port = |i: usize| ups[i].addr.port();
    // a: address in the answer; b: only in the hosts file; c: a lower priority (unused).
    let records = std::sync::Arc::new(std::sync::Mutex::new(vec![
        (10, 1, port(0), "a.svc.test.", Some([127, 0, 0, 2])),
        (10, 3, port(1), "b.svc.test.", None),
        (20, 5, port(2), "c.svc.test.", Some([127, 0, 0, 4])),
    ]));
    let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dns = tokio::net::UdpSocket::bind("127.0.0.10:53").await.unwrap();
    let server = tokio::spawn(srv_server(
        dns,
        std::sync::Arc::clone(&records),
        std::sync::Arc::clone(&queries),
    ));
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (listen, admin) = (free(), free());
    let dir = TempDir::new();
    let hosts = dir.write("hosts", "127.0.0.3 b.svc.test\n");
    let resolv = dir.write(
        "resolv.conf",
        "nameserver 127.0.0.10\noptions timeout:1 attempts:1\n",
    );
    let config = dir.write(
        "gw.toml",
        &svc_config(
            admin,
            listen,
            "algorithm = \"weighted_round_robin\"\nmembers = [{ address = \"_http._tcp.svc.test\", discover = true }]",
        ),
    );
    // check-config reports what the name stands for.
    let out = with_resolver(&hosts, &resolv, "check-config", &config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let resolves = err
        .lines()
        .find(|l| l.contains("discover: the name resolves"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        resolves.contains(&format!("127.0.0.2:{} weight 1", port(0)))
            && resolves.contains(&format!("127.0.0.3:{} weight 3", port(1)))
            && !resolves.contains("127.0.0.4"),
        "{resolves}"
    );

    let mut gateway = run_gateway(&dir, &hosts, &resolv, &config, listen).await;
    let deadline = Instant::now() + DEADLINE;
    let url = format!("http://{listen}/");
    // Weighted 1:3 between a and b; c (priority 20) gets nothing.
    let seen = tally(&url, 40).await;
    assert_eq!(
        seen,
        BTreeMap::from([("a".to_owned(), 10), ("b".to_owned(), 30)]),
        "weights 1 and 3 over the priority-10 targets"
    );
    let (_, _, upstreams) = get(&client(), &format!("http://{admin}/admin/upstreams")).await;
    let v: serde_json::Value = serde_json::from_str(&upstreams).unwrap();
    let weights: Vec<(String, u64)> = v["upstreams"]["svc"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["address"].as_str().unwrap().to_owned(),
                m["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        weights,
        [
            (format!("127.0.0.2:{}", port(0)), 1),
            (format!("127.0.0.3:{}", port(1)), 3)
        ],
        "{upstreams}"
    );

    // The priority-10 targets go away: the priority-20 one takes over.
    records.lock().unwrap().retain(|r| r.0 == 20);
    let moved = loop {
        assert!(
            Instant::now() < deadline,
            "requests never moved to the remaining target"
        );
        let seen = tally(&url, 10).await;
        if seen.keys().eq(["c"]) {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(moved["c"], 10);
    assert!(queries.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    server.abort();
    gateway.kill().await.unwrap();
}
