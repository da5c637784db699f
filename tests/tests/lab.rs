//! The lab itself: topologies of several hosts come up, talk, lose and regain links, run
//! and kill processes, and leave nothing behind, also when a test panics midway or a
//! previous run crashed. Needs root (see `lb_tests::privileged`).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    lab::{self, HostSpec, Lab, topology},
    privileged::require_root,
};

/// Interface names in the root namespace, to prove a lab never touches it.
fn root_links() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
        .collect();
    names.sort();
    names
}

fn assert_nothing_left(prefix: &str) {
    assert!(
        lab::lab_namespaces(prefix).unwrap().is_empty(),
        "namespaces of {prefix} left: {:?}",
        lab::lab_namespaces(prefix).unwrap()
    );
    assert!(
        !Path::new(lab::BPFFS).join(prefix).exists(),
        "bpffs pins of {prefix} left"
    );
}

/// One TCP round trip from `from` to `to`'s address: true when the echo came back.
fn tcp_reaches(lab: &Lab, from: &str, to: IpAddr, timeout: Duration) -> bool {
    let listener = lab
        .in_host_of(to, move || TcpListener::bind(SocketAddr::new(to, 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(false).unwrap();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 8];
            if let Ok(n) = s.read(&mut buf) {
                let _ignored = s.write_all(&buf[..n]);
            }
        }
    });
    let ok = lab
        .in_host(from, move || -> std::io::Result<bool> {
            let mut s = TcpStream::connect_timeout(&SocketAddr::new(to, port), timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.write_all(b"ping")?;
            let mut buf = [0u8; 8];
            Ok(s.read(&mut buf)? == 4 && &buf[..4] == b"ping")
        })
        .unwrap()
        .unwrap_or(false);
    if !ok {
        // Unblock the accept so the thread ends.
        let _ignored = lab.in_host_of(to, move || {
            TcpStream::connect_timeout(&SocketAddr::new(to, port), Duration::from_secs(1))
        });
    }
    server.join().unwrap();
    ok
}

#[test]
fn six_host_lab_comes_up_connects_and_leaves_nothing_behind() {
    if !require_root("six_host_lab_comes_up_connects_and_leaves_nothing_behind") {
        return;
    }
    let before = root_links();
    let lab = Lab::up("lbtsix", topology::standard(3, 2).unwrap()).unwrap();
    assert_eq!(lab.hosts().len(), 6);
    for h in lab.hosts() {
        assert!(
            lab::list_netns().unwrap().contains(&h.ns),
            "{} missing",
            h.ns
        );
        let addrs = lab
            .exec(&h.name, "ip", &["-br", "addr", "show", "eth0"])
            .unwrap();
        for a in &h.addrs {
            assert!(addrs.contains(&a.to_string()), "{}: {addrs}", h.name);
        }
        let offload = lab.exec(&h.name, "ethtool", &["-k", "eth0"]).unwrap();
        assert!(
            offload.contains("tx-checksumming: off"),
            "{}: TX checksum offload must be off: {offload}",
            h.name
        );
    }
    // Nodes hold the VIP on loopback and are ARP-silent for it; their switch ports carry
    // xdp_pass so XDP_TX frames from them are delivered.
    let node = lab.host("node1").unwrap();
    let lo = lab
        .exec("node1", "ip", &["-br", "addr", "show", "lo"])
        .unwrap();
    assert!(
        lo.contains("10.77.0.100/32") && lo.contains("fd77::100/128"),
        "{lo}"
    );
    let arp_ignore = lab
        .in_host("node1", || {
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/arp_ignore")
        })
        .unwrap()
        .unwrap();
    assert_eq!(arp_ignore.trim(), "1");
    let port = Command::new("ip")
        .args(["-n", &lab.switch_ns(), "-d", "link", "show", &node.port])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&port.stdout).contains("prog/xdp"),
        "xdp_pass missing on {}",
        node.port
    );

    // Every host reaches every other over IPv4 and IPv6.
    let client = lab.host("client").unwrap().clone();
    for h in lab.hosts().iter().filter(|h| h.name != "client") {
        for addr in [h.ipv4().unwrap(), h.ipv6().unwrap()] {
            assert!(
                tcp_reaches(&lab, "client", addr, Duration::from_secs(5)),
                "client -> {} {addr}",
                h.name
            );
        }
    }
    assert!(tcp_reaches(
        &lab,
        "backend2",
        client.ipv4().unwrap(),
        Duration::from_secs(5)
    ));

    // Cut a link: the host is unreachable; restore it: reachable again.
    let n2 = lab.host("node2").unwrap().ipv4().unwrap();
    lab.cut_link("node2").unwrap();
    let link = lab
        .exec("node2", "ip", &["-br", "link", "show", "eth0"])
        .unwrap();
    assert!(
        link.contains("LOWERLAYERDOWN") || link.contains("NO-CARRIER"),
        "{link}"
    );
    assert!(!tcp_reaches(&lab, "client", n2, Duration::from_millis(500)));
    lab.restore_link("node2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tcp_reaches(&lab, "client", n2, Duration::from_secs(1)) {
        assert!(
            Instant::now() < deadline,
            "node2 unreachable after restoring its link"
        );
    }

    // Processes run inside a host and are killed by the lab.
    let mut child = lab.spawn("backend1", "sleep", &["600"], |_| {}).unwrap();
    let ns = lab.host("backend1").unwrap().ns.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab::netns_pids(&ns).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "sleep never showed up in {ns}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(lab.kill_processes("backend1").unwrap(), 1);
    let status = child.wait().unwrap();
    assert!(!status.success(), "sleep should have been killed");

    // A process left running is killed by the teardown.
    let mut left = lab.spawn("backend2", "sleep", &["600"], |_| {}).unwrap();
    lab.down().unwrap();
    assert!(
        !left.wait().unwrap().success(),
        "teardown must kill what runs in the lab"
    );
    assert_nothing_left("lbtsix");
    assert_eq!(root_links(), before, "the root namespace's links changed");
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    if !require_root("a_panicking_test_leaves_nothing_behind") {
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::up("lbtpanic", topology::standard(2, 1).unwrap()).unwrap();
        assert_eq!(lab.hosts().len(), 4);
        #[allow(
            clippy::zombie_processes,
            reason = "the panic is the point; the lab's teardown kills it"
        )]
        let _sleeper = lab.spawn("node1", "sleep", &["600"], |_| {}).unwrap();
        panic!("test body fails midway");
    });
    assert!(result.is_err());
    assert_nothing_left("lbtpanic");
}

#[test]
fn leftovers_of_a_crashed_run_are_removed_first() {
    if !require_root("leftovers_of_a_crashed_run_are_removed_first") {
        return;
    }
    // What a run killed with SIGKILL leaves: namespaces, a process inside one, pins.
    lab::teardown_prefix("lbtcrash").unwrap();
    for ns in ["lbtcrash-sw", "lbtcrash-old"] {
        let st = Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", "lbtcrash-old", "sleep", "600"])
        .spawn()
        .unwrap();
    lab::ensure_bpffs().unwrap();
    std::fs::create_dir_all(Path::new(lab::BPFFS).join("lbtcrash")).unwrap();

    let lab = Lab::up(
        "lbtcrash",
        vec![
            HostSpec::new("a").addr("10.78.0.1/24").unwrap(),
            HostSpec::new("b").addr("10.78.0.2/24").unwrap(),
        ],
    )
    .unwrap();
    let names = lab::lab_namespaces("lbtcrash").unwrap();
    assert!(!names.contains(&"lbtcrash-old".to_owned()), "{names:?}");
    assert!(orphan.wait().is_ok());
    drop(lab);
    assert_nothing_left("lbtcrash");
}

#[test]
fn bad_specs_are_refused_before_anything_is_created() {
    // No root needed: validation happens first.
    let err = Lab::up("Bad-Prefix", vec![]).unwrap_err().to_string();
    assert!(err.contains("Bad-Prefix"), "{err}");
    let err = Lab::up("lbtbad", vec![HostSpec::new("a"), HostSpec::new("a")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"a\""), "{err}");
    let err = HostSpec::new("x")
        .addr("10.0.0.300/24")
        .unwrap_err()
        .to_string();
    assert!(err.contains("10.0.0.300/24"), "{err}");
}
