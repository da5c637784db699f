//! Malformed VRRP adverts on the segment (wrong version, bad checksum, TTL below 255,
//! a length that does not match the address count) are counted by reason in the agent's
//! metrics and ignored: the Master stays Master. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "agent_support.rs"]
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
};

use lb_tests::privileged::require_root;
use lb_userspace::vrrp::packet::{AdverInterval, Advertisement, PseudoHeader, VirtualAddrs, Vrid};
use support::*;

const NET: u8 = 97;

/// Sends `payload` as IP protocol 112 to 224.0.0.18 with `ttl` out of the interface with
/// address `from`, in the calling thread's namespace.
fn send_raw(from: Ipv4Addr, payload: &[u8], ttl: i32) {
    // SAFETY: plain socket calls on a descriptor we own and close; every pointer points to
    // a live value of the stated size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, 112);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let rc = libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_TTL,
            std::ptr::from_ref(&ttl).cast(),
            size_of::<i32>() as libc::socklen_t,
        );
        assert_eq!(rc, 0);
        let ifaddr = libc::in_addr {
            s_addr: u32::from(from).to_be(),
        };
        let rc = libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            std::ptr::from_ref(&ifaddr).cast(),
            size_of::<libc::in_addr>() as libc::socklen_t,
        );
        assert_eq!(rc, 0);
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from(Ipv4Addr::new(224, 0, 0, 18)).to_be();
        let n = libc::sendto(
            fd,
            payload.as_ptr().cast(),
            payload.len(),
            0,
            std::ptr::from_ref(&to).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(
            n,
            payload.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn malformed_adverts_are_counted_and_ignored() {
    if !require_root("malformed_adverts_are_counted_and_ignored") {
        return;
    }
    let prefix = "lbtbad";
    let lab = vrrp_lab(prefix, NET, 1);
    let scratch = Scratch::new(prefix);
    let vip = vip_v4(NET);
    let metrics_at = format!("{}:9102", node_v4(NET, 1));
    let files = agent_config(
        &scratch,
        "node1",
        &[Instance {
            name: "v4",
            vrid: 51,
            priority: 100,
            advert_cs: 10,
            preempt: true,
            vips: vec![vip],
        }],
        &format!("[metrics]\nlisten = \"{metrics_at}\"\n"),
    );
    let agent = start_agent(&lab, &scratch, "node1", &files);
    wait_until("node1 is master", 10, || has_addr(&lab, "node1", vip));
    // An idle Master sends a few adverts a second and waits otherwise. (A state task that
    // re-read an unchanged VRRP status in a loop once burned a whole core: ~2 s of CPU
    // in these 2 s; an idle agent uses a few ms.)
    let before = cpu_seconds(agent.pid());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let used = cpu_seconds(agent.pid()) - before;
    assert!(used < 0.2, "the idle agent used {used:.2} s of CPU in 2 s");

    // A valid advert of a higher priority would take mastership; every one of these is
    // broken in one way and must change nothing.
    // The client's address (10.NET.0.10): node_v4 numbers nodes from .11.
    let client = node_v4(NET, 0);
    let good = Advertisement {
        vrid: Vrid::new(51).unwrap(),
        priority: 250,
        max_adver_int: AdverInterval::from_centis(10).unwrap(),
        addrs: VirtualAddrs::V4(vec![match vip {
            IpAddr::V4(v) => v,
            IpAddr::V6(_) => unreachable!(),
        }]),
    };
    let ph = PseudoHeader::new(client, "224.0.0.18".parse().unwrap()).unwrap();
    let bytes = good.encode(&ph).unwrap();
    let mut version2 = bytes.clone();
    version2[0] = 0x21;
    let mut checksum = bytes.clone();
    checksum[6] ^= 0xff;
    let mut length = bytes.clone();
    length.extend_from_slice(&[0, 0, 0, 0]);
    let from = match client {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => unreachable!(),
    };
    lab.in_host("client", || {
        send_raw(from, &version2, 255);
        send_raw(from, &checksum, 255);
        send_raw(from, &length, 255);
        send_raw(from, &bytes, 64);
    })
    .unwrap();

    let addr: SocketAddr = metrics_at.parse().unwrap();
    let scrape = || {
        lab.in_host("client", move || {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap()
    };
    let mut text = String::new();
    wait_until("the four bad adverts are counted", 10, || {
        text = scrape();
        ["version", "checksum", "length", "ttl"].iter().all(|r| {
            metric(
                &text,
                &format!("lb_vrrp_adverts_invalid_total{{instance=\"v4\",reason=\"{r}\"}}"),
            ) == 1.0
        })
    });
    assert_eq!(
        agent_state(&files.socket, "v4").as_deref(),
        Some("master"),
        "{text}"
    );
    assert!(has_addr(&lab, "node1", vip));
    assert_eq!(
        metric(
            &text,
            "lb_vrrp_transitions_total{instance=\"v4\",to=\"backup\"}"
        ),
        1.0,
        "only the start-up transition to backup"
    );
    // The same advert, intact and with TTL 255, is valid and wins: the checks above were
    // about the damage, not about the sender.
    lab.in_host("client", || send_raw(from, &bytes, 255))
        .unwrap();
    wait_until(
        "the valid higher-priority advert makes node1 backup",
        10,
        || agent_state(&files.socket, "v4").as_deref() == Some("backup"),
    );
}
