//! Failover of the VIP between two lb-agents in the lab: the master is killed (SIGKILL)
//! and its link cut; the backup takes the VIP and a client in another namespace reaches
//! it again; the old master comes back and preempts, or not, as configured. Also the
//! operator's `lbctl failover` and SIGHUP/`lbctl reload` of the priority. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "agent_support.rs"]
mod support;

use lb_tests::privileged::require_root;
use support::*;

const PORT: u16 = 8080;

fn inst(priority: u8, preempt: bool, vip: std::net::IpAddr) -> Instance {
    Instance {
        name: "vip",
        vrid: 71,
        priority,
        advert_cs: 10,
        preempt,
        vips: vec![vip],
    }
}

fn crash_failover(prefix: &str, net: u8, preempt: bool) {
    let lab = vrrp_lab(prefix, net, 2);
    let scratch = Scratch::new(prefix);
    let vip = vip_v4(net);
    let hosts = ["node1", "node2"];
    name_servers(&lab, &hosts, PORT);
    let f1 = agent_config(&scratch, "node1", &[inst(200, preempt, vip)], "");
    let f2 = agent_config(&scratch, "node2", &[inst(100, preempt, vip)], "");
    let mut a1 = start_agent(&lab, &scratch, "node1", &f1);
    let _a2 = start_agent(&lab, &scratch, "node2", &f2);
    wait_until("node1 holds the VIP", 10, || {
        holders(&lab, &hosts, vip) == ["node1"]
    });
    wait_until("the client reaches node1 through the VIP", 10, || {
        who_answers(&lab, "client", vip, PORT).as_deref() == Some("node1")
    });

    // Crash: SIGKILL (no priority 0, the VIP stays on the dead host) and cut the link.
    a1.sigkill();
    lab.cut_link("node1").unwrap();
    wait_until("node2 takes the VIP", 10, || has_addr(&lab, "node2", vip));
    wait_until("the client reaches node2 through the VIP", 10, || {
        who_answers(&lab, "client", vip, PORT).as_deref() == Some("node2")
    });
    assert_eq!(agent_state(&f2.socket, "vip").as_deref(), Some("master"));

    // The host comes back and its agent restarts; at start it clears the leftover VIP.
    lab.restore_link("node1").unwrap();
    let _a1 = start_agent(&lab, &scratch, "node1", &f1);
    if preempt {
        wait_until("node1 preempts", 10, || {
            holders(&lab, &hosts, vip) == ["node1"]
        });
        wait_until("the client reaches node1 again", 10, || {
            who_answers(&lab, "client", vip, PORT).as_deref() == Some("node1")
        });
        assert_eq!(agent_state(&f2.socket, "vip").as_deref(), Some("backup"));
    } else {
        wait_until("node1 settles as backup", 10, || {
            agent_state(&f1.socket, "vip").as_deref() == Some("backup")
        });
        // Several Master_Down_Intervals later node2 still holds it alone.
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert_eq!(holders(&lab, &hosts, vip), ["node2"]);
        assert_eq!(
            who_answers(&lab, "client", vip, PORT).as_deref(),
            Some("node2")
        );
    }
}

#[test]
fn crash_failover_with_preemption() {
    if !require_root("crash_failover_with_preemption") {
        return;
    }
    crash_failover("lbtfo1", 91, true);
}

#[test]
fn crash_failover_without_preemption() {
    if !require_root("crash_failover_without_preemption") {
        return;
    }
    crash_failover("lbtfo2", 92, false);
}

#[test]
fn operator_failover_and_reload() {
    if !require_root("operator_failover_and_reload") {
        return;
    }
    let prefix = "lbtfo3";
    let net = 93;
    let lab = vrrp_lab(prefix, net, 2);
    let scratch = Scratch::new(prefix);
    let vip = vip_v6(net);
    let hosts = ["node1", "node2"];
    name_servers(&lab, &hosts, PORT);
    let f1 = agent_config(&scratch, "node1", &[inst(200, true, vip)], "");
    let f2 = agent_config(&scratch, "node2", &[inst(100, true, vip)], "");
    let _a1 = start_agent(&lab, &scratch, "node1", &f1);
    let a2 = start_agent(&lab, &scratch, "node2", &f2);
    wait_until("node1 holds the VIP", 10, || {
        holders(&lab, &hosts, vip) == ["node1"]
    });
    wait_until("the client reaches node1 over IPv6", 10, || {
        who_answers(&lab, "client", vip, PORT).as_deref() == Some("node1")
    });

    // `lbctl failover` on the master: node2 takes over and node1 does not preempt back
    // while it holds priority 1.
    let (code, out, err) = lbctl(&f1.socket, &["failover", "--hold", "600"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("gave up mastership"), "{out}");
    wait_until("node2 takes over", 5, || {
        holders(&lab, &hosts, vip) == ["node2"]
    });
    wait_until("the client reaches node2", 10, || {
        who_answers(&lab, "client", vip, PORT).as_deref() == Some("node2")
    });
    let s = lbctl_json(&f1.socket, &["status"], 0);
    assert_eq!(s["vrrp"][0]["state"], "backup");
    assert_eq!(s["vrrp"][0]["priority"], 1);
    // On a backup, failover has nothing to give up.
    let (code, out, _) = lbctl(&f1.socket, &["failover"]);
    assert_eq!(code, 0);
    assert!(out.contains("not master"), "{out}");

    // An invalid config is refused by reload; the old one keeps running.
    let good = std::fs::read_to_string(&f2.config).unwrap();
    std::fs::write(&f2.config, good.replace("priority = 100", "priority = 0")).unwrap();
    let (code, _, err) = lbctl(&f2.socket, &["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("vrrp[0].priority: 0: must be 1-255"), "{err}");
    assert!(
        has_addr(&lab, "node2", vip),
        "a refused reload changes nothing"
    );

    // A valid one that only changes node2's priority: taken in place, the Master stays
    // Master (no priority-0 handover, no transition at all).
    let since = lbctl_json(&f2.socket, &["status"], 0)["vrrp"][0]["since_ms"].clone();
    std::fs::write(&f2.config, good.replace("priority = 100", "priority = 250")).unwrap();
    let (code, out, err) = lbctl(&f2.socket, &["reload"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("priority 100 -> 250 (in place)"), "{out}");
    wait_until("node2 runs with priority 250", 10, || {
        let s = lbctl_json(&f2.socket, &["status"], 0);
        s["vrrp"][0]["configured_priority"] == 250 && s["vrrp"][0]["priority"] == 250
    });
    for _ in 0..5 {
        assert_eq!(holders(&lab, &hosts, vip), ["node2"]);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let s = lbctl_json(&f2.socket, &["status"], 0);
    assert_eq!(s["vrrp"][0]["state"], "master");
    assert_eq!(s["vrrp"][0]["since_ms"], since, "no transition: {s}");

    // Any other change to the instance (by SIGHUP: here its advert interval) restarts it:
    // the Master hands over with priority 0, then takes the VIP back as the highest
    // priority.
    let text = std::fs::read_to_string(&f2.config).unwrap();
    std::fs::write(
        &f2.config,
        text.replace("advert_interval_cs = 10", "advert_interval_cs = 20"),
    )
    .unwrap();
    a2.signal(libc::SIGHUP);
    wait_until("node2 restarted its instance", 10, || {
        lbctl_json(&f2.socket, &["status"], 0)["vrrp"][0]["since_ms"] != since
    });
    wait_until("node2 holds the VIP as the highest priority", 10, || {
        holders(&lab, &hosts, vip) == ["node2"]
            && agent_state(&f2.socket, "vip").as_deref() == Some("master")
    });
}

/// Priority tracking: the master's local gateway turning unready, then its uplink going
/// down (a second interface, tracked), each lowers its priority below the backup's, which
/// preempts; when the check recovers the master preempts back.
#[test]
fn tracked_checks_move_the_vip() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    if !require_root("tracked_checks_move_the_vip") {
        return;
    }
    let prefix = "lbtfo4";
    let net = 94;
    let lab = vrrp_lab(prefix, net, 2);
    let scratch = Scratch::new(prefix);
    let vip = vip_v4(net);
    let hosts = ["node1", "node2"];
    let ready = Arc::new(AtomicBool::new(true));
    fake_ready_endpoint(&lab, "node1", 9901, ready.clone());
    // The tracked "uplink": one end of a veth pair inside node1; downing the other end
    // takes its carrier away.
    lab.exec(
        "node1",
        "ip",
        &["link", "add", "up0", "type", "veth", "peer", "name", "up1"],
    )
    .unwrap();
    lab.exec("node1", "ip", &["link", "set", "up0", "up"])
        .unwrap();
    lab.exec("node1", "ip", &["link", "set", "up1", "up"])
        .unwrap();
    let tracking = "[tracking]\n\
        gateway_ready = { url = \"http://127.0.0.1:9901/health/ready\", weight = 150, interval_ms = 50, timeout_ms = 50 }\n\
        uplink = [{ interface = \"up0\", weight = 120 }]\n";
    let f1 = agent_config(&scratch, "node1", &[inst(200, true, vip)], tracking);
    let f2 = agent_config(&scratch, "node2", &[inst(100, true, vip)], "");
    let _a1 = start_agent(&lab, &scratch, "node1", &f1);
    let _a2 = start_agent(&lab, &scratch, "node2", &f2);
    wait_until("node1 holds the VIP", 10, || {
        holders(&lab, &hosts, vip) == ["node1"]
    });

    ready.store(false, Ordering::SeqCst);
    wait_until("node2 preempts an unready node1", 10, || {
        holders(&lab, &hosts, vip) == ["node2"]
    });
    let s = lbctl_json(&f1.socket, &["status"], 0);
    assert_eq!(s["vrrp"][0]["priority"], 50, "200 - 150");
    assert_eq!(s["tracking_deduction"], 150);
    ready.store(true, Ordering::SeqCst);
    wait_until("node1 preempts back when ready", 10, || {
        holders(&lab, &hosts, vip) == ["node1"]
    });

    lab.exec("node1", "ip", &["link", "set", "up1", "down"])
        .unwrap();
    wait_until("node2 preempts when node1's uplink is down", 10, || {
        holders(&lab, &hosts, vip) == ["node2"]
    });
    assert_eq!(
        lbctl_json(&f1.socket, &["status"], 0)["vrrp"][0]["priority"],
        80
    );
    lab.exec("node1", "ip", &["link", "set", "up1", "up"])
        .unwrap();
    wait_until("node1 preempts back when the uplink is up", 10, || {
        holders(&lab, &hosts, vip) == ["node1"]
    });
}

/// Priority tracking of the XDP attachment: without a program on eth0 node1 runs at
/// 200 - 150 = 50 and node2 is master; once a program is attached (read from the link's
/// IFLA_XDP through rtnetlink) node1 is back at 200 and preempts.
#[test]
fn tracked_xdp_attachment_moves_the_vip() {
    if !require_root("tracked_xdp_attachment_moves_the_vip") {
        return;
    }
    let prefix = "lbtfo5";
    let net = 96;
    let lab = vrrp_lab(prefix, net, 2);
    let scratch = Scratch::new(prefix);
    let vip = vip_v4(net);
    let hosts = ["node1", "node2"];
    let tracking = "[tracking]\nxdp_attached = { interface = \"eth0\", weight = 150 }\n";
    let f1 = agent_config(&scratch, "node1", &[inst(200, true, vip)], tracking);
    let f2 = agent_config(&scratch, "node2", &[inst(100, true, vip)], "");
    let _a2 = start_agent(&lab, &scratch, "node2", &f2);
    let _a1 = start_agent(&lab, &scratch, "node1", &f1);
    wait_until("node2 is master over an XDP-less node1", 10, || {
        holders(&lab, &hosts, vip) == ["node2"]
            && lbctl_json(&f1.socket, &["status"], 0)["vrrp"][0]["priority"] == 50
    });
    lb_tests::lab::ensure_bpffs().unwrap();
    let pin = lab.pin_dir().join("pass-node1-eth0");
    lab.in_host("node1", move || {
        lb_userspace::dataplane::attach_pass_pinned("eth0", &pin)
    })
    .unwrap()
    .unwrap();
    wait_until("node1 preempts once XDP is attached", 10, || {
        holders(&lab, &hosts, vip) == ["node1"]
    });
    assert_eq!(
        lbctl_json(&f1.socket, &["status"], 0)["tracking_deduction"],
        0
    );
}

/// Unicast peers instead of multicast: adverts go to the peer's address (seen on the wire),
/// the higher priority holds the VIP, and a crash of the Master moves it.
#[test]
fn unicast_peers_elect_and_fail_over() {
    if !require_root("unicast_peers_elect_and_fail_over") {
        return;
    }
    let prefix = "lbtfo6";
    let net = 98;
    let lab = vrrp_lab(prefix, net, 2);
    let scratch = Scratch::new(prefix);
    let vip = vip_v4(net);
    let hosts = ["node1", "node2"];
    name_servers(&lab, &hosts, PORT);
    let vrrp = |priority: u8, peer: u8| {
        format!(
            "[[vrrp]]\nname = \"vip\"\nvrid = 72\ninterface = \"eth0\"\npriority = {priority}\n\
             advert_interval_cs = 10\npreempt = true\nvips = [\"{vip}\"]\nunicast_peers = [\"{}\"]\n",
            node_v4(net, peer)
        )
    };
    let f1 = agent_config(&scratch, "node1", &[], &vrrp(200, 2));
    let f2 = agent_config(&scratch, "node2", &[], &vrrp(100, 1));
    let mut a1 = start_agent(&lab, &scratch, "node1", &f1);
    let _a2 = start_agent(&lab, &scratch, "node2", &f2);
    wait_until("node1 holds the VIP", 10, || {
        holders(&lab, &hosts, vip) == ["node1"]
    });
    // On node2's link: node1's adverts (IP protocol 112) addressed to node2, none to the
    // VRRP multicast group.
    let seen = lab
        .exec(
            "node2",
            "timeout",
            &[
                "3",
                "tcpdump",
                "-n",
                "-l",
                "-c",
                "3",
                "-i",
                "eth0",
                "ip proto 112",
            ],
        )
        .unwrap();
    let to_node2 = format!("{} > {}", node_v4(net, 1), node_v4(net, 2));
    assert!(seen.contains(&to_node2), "{seen}");
    assert!(!seen.contains("224.0.0.18"), "{seen}");
    wait_until("the client reaches node1", 10, || {
        who_answers(&lab, "client", vip, PORT).as_deref() == Some("node1")
    });

    a1.sigkill();
    lab.cut_link("node1").unwrap();
    wait_until("node2 takes the VIP", 10, || has_addr(&lab, "node2", vip));
    wait_until("the client reaches node2", 10, || {
        who_answers(&lab, "client", vip, PORT).as_deref() == Some("node2")
    });
    assert_eq!(agent_state(&f2.socket, "vip").as_deref(), Some("master"));
}
