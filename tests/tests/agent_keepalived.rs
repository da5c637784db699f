//! Interoperability of lb-agent's VRRPv3 with keepalived (Debian's package) in one
//! virtual router, IPv4 and IPv6, in both roles: the higher priority wins and the other
//! follows; each detects the other's death (SIGKILL) and takes over; a clean stop sends
//! priority 0 and the other takes over at once (well before Master_Down_Interval).
//! Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "agent_support.rs"]
mod support;

use std::{net::IpAddr, time::Duration};

use lb_tests::privileged::require_root;
use support::*;

/// Advertisement interval of both sides: 1 s, so Master_Down_Interval is 3.6-3.9 s
/// while a priority-0 handover takes Skew_Time (< 1 s): the two are told apart with
/// a wide margin.
const ADVERT_CS: u16 = 100;

fn instance(vip: IpAddr, priority: u8) -> Instance {
    Instance {
        name: if vip.is_ipv4() { "v4" } else { "v6" },
        vrid: 61,
        priority,
        advert_cs: ADVERT_CS,
        preempt: true,
        vips: vec![vip],
    }
}

/// Agent on node1, keepalived on node2. `agent_high`: which side has the higher priority.
fn interop(prefix: &str, net: u8, v6: bool, agent_high: bool) {
    let lab = vrrp_lab(prefix, net, 2);
    let scratch = Scratch::new(prefix);
    let vip = if v6 { vip_v6(net) } else { vip_v4(net) };
    let (agent_prio, ka_prio) = if agent_high { (150, 100) } else { (100, 150) };
    let name = if v6 { "v6" } else { "v4" };
    let hosts = ["node1", "node2"];
    let (winner, loser) = if agent_high {
        ("node1", "node2")
    } else {
        ("node2", "node1")
    };

    let files = agent_config(&scratch, "node1", &[instance(vip, agent_prio)], "");
    let mut agent = start_agent(&lab, &scratch, "node1", &files);
    let mut ka = start_keepalived(&lab, &scratch, "node2", &[instance(vip, ka_prio)]);

    // Election: the higher priority holds the VIP, alone; the other is Backup.
    wait_until(&format!("{winner} holds {vip}"), 15, || {
        holders(&lab, &hosts, vip) == [winner]
    });
    let expected = if agent_high { "master" } else { "backup" };
    wait_until(&format!("agent is {expected}"), 5, || {
        agent_state(&files.socket, name).as_deref() == Some(expected)
    });
    // Stable: still one holder a few intervals later (no flapping between implementations).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(holders(&lab, &hosts, vip), [winner], "flapped");

    // A clean stop of the winner: priority 0, the loser takes over within Skew_Time.
    let took = if agent_high {
        assert_eq!(agent.sigterm(), Some(0), "agent exit status");
        wait_until(&format!("{loser} takes over after priority 0"), 10, || {
            holders(&lab, &hosts, vip) == [loser]
        })
    } else {
        assert_eq!(ka.sigterm(), Some(0), "keepalived exit status");
        wait_until(&format!("{loser} takes over after priority 0"), 10, || {
            holders(&lab, &hosts, vip) == [loser]
        })
    };
    assert!(
        took < Duration::from_millis(2500),
        "{loser} took {took:?}: that is death detection (>= 3.6 s), not a priority-0 handover"
    );

    // Restart the winner: it preempts.
    if agent_high {
        agent = start_agent(&lab, &scratch, "node1", &files);
    } else {
        ka = start_keepalived(&lab, &scratch, "node2", &[instance(vip, ka_prio)]);
    }
    wait_until(&format!("{winner} preempts back"), 15, || {
        holders(&lab, &hosts, vip) == [winner]
    });

    // Death (SIGKILL, no priority 0) of the winner: the loser detects it and takes over.
    if agent_high {
        agent.sigkill();
        // A killed agent leaves its VIP behind; the link cut stands for the dead host.
        lab.cut_link("node1").unwrap();
    } else {
        // Cut the link first: keepalived's VRRP work runs in a child process that gets
        // SIGTERM when its parent dies and then sends a priority-0 advert on the way out,
        // which would turn the death into a clean handover.
        lab.cut_link("node2").unwrap();
        // Then kill everything in the host.
        lab.kill_processes("node2").unwrap();
        ka.sigkill();
    }
    let took = wait_until(
        &format!("{loser} detects the death and takes over"),
        15,
        || has_addr(&lab, loser, vip),
    );
    assert!(
        took >= Duration::from_secs(2),
        "took over after {took:?}: faster than Master_Down_Interval, so not death detection"
    );
    if !agent_high {
        assert_eq!(agent_state(&files.socket, name).as_deref(), Some("master"));
    }
    drop(agent);
    drop(ka);
}

#[test]
fn keepalived_interop_ipv4_agent_master() {
    if !require_root("keepalived_interop_ipv4_agent_master") {
        return;
    }
    interop("lbtka4m", 81, false, true);
}

#[test]
fn keepalived_interop_ipv4_agent_backup() {
    if !require_root("keepalived_interop_ipv4_agent_backup") {
        return;
    }
    interop("lbtka4b", 82, false, false);
}

#[test]
fn keepalived_interop_ipv6_agent_master() {
    if !require_root("keepalived_interop_ipv6_agent_master") {
        return;
    }
    interop("lbtka6m", 83, true, true);
}

#[test]
fn keepalived_interop_ipv6_agent_backup() {
    if !require_root("keepalived_interop_ipv6_agent_backup") {
        return;
    }
    interop("lbtka6b", 84, true, false);
}
