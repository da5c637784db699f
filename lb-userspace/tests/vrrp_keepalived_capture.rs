//! Interoperability with keepalived, checked against a real capture: every VRRPv3 advert
//! keepalived v2.2.7 sent (IPv4 and IPv6, priorities 100, 150 and 0) decodes to the right
//! fields, and our encoder, and our state machine's adverts, reproduce its bytes exactly,
//! checksum included. Our gratuitous ARP and unsolicited NA builders reproduce keepalived's
//! frames too.
//!
//! The frames are in `tests/fixtures/keepalived-vrrpv3.txt`, copied from the team's capture
//! `/work/shared/fixtures/keepalived-vrrpv3-capture.txt` (see the fixture's header).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use lb_userspace::vrrp::{
    announce::{gratuitous_arp, unsolicited_na, unsolicited_na_frame},
    packet::{
        AdverInterval, Advertisement, Delivery, Family, PseudoHeader, VirtualAddrs, Vrid,
        check_ip_header, parse_ipv4, parse_ipv6,
    },
    state::{Action, AnnounceConfig, Config, Event, Priority, State, VirtualRouter},
};

const FIXTURE: &str = include_str!("fixtures/keepalived-vrrpv3.txt");
const ETH_HEADER: usize = 14;

/// One captured Ethernet frame: the tcpdump timestamp and the bytes.
struct Frame {
    ts: String,
    bytes: Vec<u8>,
}

/// The frames of the fixture, in order. A line starting with a digit opens a frame; lines
/// starting with a tab and `0x` hold its bytes (offset, then 16-bit groups).
fn frames() -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    for line in FIXTURE.lines() {
        if line.starts_with(|c: char| c.is_ascii_digit()) {
            let ts = line.split_whitespace().next().unwrap().to_string();
            frames.push(Frame {
                ts,
                bytes: Vec::new(),
            });
        } else if let Some(hex) = line.strip_prefix("\t0x") {
            let (_, groups) = hex.split_once(':').unwrap();
            let frame = frames.last_mut().unwrap();
            for group in groups.split_whitespace() {
                assert!(group.len() % 2 == 0, "odd group {group:?}");
                for i in (0..group.len()).step_by(2) {
                    frame
                        .bytes
                        .push(u8::from_str_radix(&group[i..i + 2], 16).unwrap());
                }
            }
        }
    }
    frames
}

/// The VRRP frames of the fixture, split: (timestamp, IP header fields, VRRP message).
fn vrrp_frames() -> Vec<(String, lb_userspace::vrrp::packet::IpHeaderInfo, Vec<u8>)> {
    frames()
        .into_iter()
        .filter_map(|f| {
            let ethertype = u16::from_be_bytes([f.bytes[12], f.bytes[13]]);
            let ip = &f.bytes[ETH_HEADER..];
            let (hdr, msg) = match ethertype {
                0x0800 => parse_ipv4(ip).unwrap(),
                0x86dd => parse_ipv6(ip).unwrap(),
                _ => return None,
            };
            (hdr.protocol == 112).then(|| (f.ts.clone(), hdr, msg.to_vec()))
        })
        .collect()
}

/// What tcpdump and the capture's decoder (its section 7) say about each advert:
/// (timestamp, source, priority, checksum).
const EXPECTED: [(&str, &str, u8, u16); 10] = [
    ("1795432775.059990", "10.99.0.11", 100, 0x7499),
    ("1795432775.160615", "10.99.0.11", 100, 0x7499),
    ("1795432775.260759", "10.99.0.11", 100, 0x7499),
    (
        "1795432775.060550",
        "fe80::e4ff:a6ff:fe1e:936c",
        100,
        0x4f7e,
    ),
    (
        "1795432775.161086",
        "fe80::e4ff:a6ff:fe1e:936c",
        100,
        0x4f7e,
    ),
    (
        "1795432775.261213",
        "fe80::e4ff:a6ff:fe1e:936c",
        100,
        0x4f7e,
    ),
    ("1795432777.458165", "10.99.0.12", 150, 0x4298),
    (
        "1795432777.465874",
        "fe80::e007:b8ff:febb:d8b5",
        150,
        0xca8f,
    ),
    ("1795432783.375361", "10.99.0.12", 0, 0xd898),
    ("1795432783.379965", "fe80::e007:b8ff:febb:d8b5", 0, 0x6090),
];

fn vip4() -> VirtualAddrs {
    VirtualAddrs::V4(vec![Ipv4Addr::new(10, 99, 0, 200)])
}

fn vip6() -> VirtualAddrs {
    VirtualAddrs::V6(vec!["fd99::200".parse::<Ipv6Addr>().unwrap()])
}

#[test]
fn fixture_holds_every_expected_advert() {
    let got: Vec<String> = vrrp_frames().into_iter().map(|(ts, _, _)| ts).collect();
    let want: Vec<String> = EXPECTED.iter().map(|e| e.0.to_string()).collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted);
}

#[test]
fn captured_adverts_decode_to_the_right_fields() {
    for (ts, hdr, msg) in vrrp_frames() {
        let (_, src, priority, checksum) = *EXPECTED.iter().find(|e| e.0 == ts).unwrap();
        let ph = check_ip_header(&hdr, &Delivery::Multicast)
            .unwrap_or_else(|e| panic!("{ts}: IP-level check failed: {e}"));
        assert_eq!(hdr.src, src.parse::<IpAddr>().unwrap(), "{ts}");
        assert_eq!(hdr.ttl, 255, "{ts}");
        let adv = Advertisement::decode(&msg, &ph).unwrap_or_else(|e| panic!("{ts}: {e}"));
        let addrs = match ph.family() {
            Family::V4 => vip4(),
            Family::V6 => vip6(),
        };
        assert_eq!(
            adv,
            Advertisement {
                vrid: Vrid::new(51).unwrap(),
                priority,
                max_adver_int: AdverInterval::from_centis(10).unwrap(),
                addrs,
            },
            "{ts}"
        );
        assert_eq!(u16::from_be_bytes([msg[6], msg[7]]), checksum, "{ts}");
    }
}

#[test]
fn our_encoder_reproduces_keepalived_bytes() {
    let mut families = Vec::new();
    for (ts, hdr, msg) in vrrp_frames() {
        let ph = PseudoHeader::new(hdr.src, hdr.dst).unwrap();
        let adv = Advertisement::decode(&msg, &ph).unwrap();
        assert_eq!(adv.encode(&ph).unwrap(), msg, "{ts}");
        families.push(ph.family());
    }
    assert!(families.contains(&Family::V4) && families.contains(&Family::V6));
}

#[test]
fn tampered_capture_fails_with_a_named_error() {
    let (ts, hdr, mut msg) = vrrp_frames().remove(0);
    let ph = check_ip_header(&hdr, &Delivery::Multicast).unwrap();
    msg[2] = 101; // priority changed, checksum not
    let err = Advertisement::decode(&msg, &ph).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad VRRP checksum: packet carries 0x7499, computed 0x7399",
        "{ts}"
    );
    // The same bytes over the wrong pseudo-header (another source) do not verify either.
    let other = PseudoHeader::new("10.99.0.13".parse().unwrap(), hdr.dst).unwrap();
    let (_, _, good) = vrrp_frames().remove(0);
    assert!(Advertisement::decode(&good, &other).is_err());
}

/// lb2 of the capture (10.99.0.12 / fe80::e007:b8ff:febb:d8b5, priority 150) as our
/// state machine: its first advert as Master and its shutdown advert must be keepalived's.
fn lb2(primary: IpAddr, addrs: VirtualAddrs) -> VirtualRouter {
    VirtualRouter::new(Config {
        vrid: Vrid::new(51).unwrap(),
        priority: Priority::new(150).unwrap(),
        adver_interval: AdverInterval::from_centis(10).unwrap(),
        preempt: true,
        preempt_delay: std::time::Duration::ZERO,
        primary_addr: primary,
        addrs,
        announce: AnnounceConfig::default(),
    })
    .unwrap()
}

fn sent(actions: &[Action]) -> Vec<Advertisement> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendAdvert(adv) => Some(adv.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn state_machine_adverts_match_keepalived_master_and_shutdown() {
    let captured: Vec<_> = vrrp_frames();
    let bytes_of = |ts: &str| captured.iter().find(|c| c.0 == ts).unwrap().2.clone();
    let cases = [
        (
            "10.99.0.12",
            vip4(),
            "1795432777.458165",
            "1795432783.375361",
        ),
        (
            "fe80::e007:b8ff:febb:d8b5",
            vip6(),
            "1795432777.465874",
            "1795432783.379965",
        ),
    ];
    for (src, addrs, first_ts, shutdown_ts) in cases {
        let src: IpAddr = src.parse().unwrap();
        let ph = PseudoHeader::new(src, Family::of(src).multicast_group()).unwrap();
        let mut r = lb2(src, addrs);
        let t0 = Instant::now();
        r.handle(t0, Event::Startup);
        let t1 = t0 + r.master_down_interval();
        let became = r.handle(t1, Event::Timer);
        assert_eq!(r.state(), State::Master);
        let first = sent(&became);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].encode(&ph).unwrap(), bytes_of(first_ts), "{src}");
        let bye = sent(&r.handle(t1, Event::Shutdown));
        assert_eq!(bye.len(), 1);
        assert_eq!(bye[0].encode(&ph).unwrap(), bytes_of(shutdown_ts), "{src}");
    }
}

#[test]
fn state_machine_follows_keepalived_adverts() {
    // We are lb1's peer at priority 100 (10.99.0.11, the capture's lb1 address); keepalived's
    // lb2 (150) preempts us, then shuts down with priority 0.
    let captured = vrrp_frames();
    let decoded = |ts: &str| {
        let (_, hdr, msg) = captured.iter().find(|c| c.0 == ts).unwrap();
        let ph = check_ip_header(hdr, &Delivery::Multicast).unwrap();
        (hdr.src, Advertisement::decode(msg, &ph).unwrap())
    };
    let mut r = VirtualRouter::new(Config {
        vrid: Vrid::new(51).unwrap(),
        priority: Priority::new(100).unwrap(),
        adver_interval: AdverInterval::from_centis(10).unwrap(),
        preempt: true,
        preempt_delay: std::time::Duration::ZERO,
        primary_addr: "10.99.0.11".parse().unwrap(),
        addrs: vip4(),
        announce: AnnounceConfig::default(),
    })
    .unwrap();
    let t0 = Instant::now();
    r.handle(t0, Event::Startup);
    let tm = t0 + r.master_down_interval();
    r.handle(tm, Event::Timer);
    assert_eq!(r.state(), State::Master);

    let (src, adv) = decoded("1795432777.458165");
    let got = r.handle(tm, Event::Advert { src, advert: adv });
    assert_eq!(
        got[0],
        Action::Transition {
            from: State::Master,
            to: State::Backup
        }
    );
    assert_eq!(r.master(), Some(src));

    let (src, adv) = decoded("1795432783.375361");
    let t = tm + std::time::Duration::from_millis(50);
    let got = r.handle(t, Event::Advert { src, advert: adv });
    // Priority 0: take over after Skew_Time = 156 * 100 ms / 256.
    assert_eq!(
        got,
        vec![Action::ScheduleTimer(Some(
            t + std::time::Duration::from_nanos(60_937_500)
        ))]
    );
}

/// The frame captured at `ts`.
fn frame(ts: &str) -> Vec<u8> {
    frames().into_iter().find(|f| f.ts == ts).unwrap().bytes
}

const LB1_MAC: [u8; 6] = [0xe6, 0xff, 0xa6, 0x1e, 0x93, 0x6c];

#[test]
fn gratuitous_arp_matches_keepalived_frame() {
    for ts in ["1795432775.060133", "1795432775.060153"] {
        let want = frame(ts);
        assert_eq!(want.len(), 42);
        assert_eq!(
            gratuitous_arp(LB1_MAC, Ipv4Addr::new(10, 99, 0, 200)).to_vec(),
            want,
            "{ts}"
        );
    }
}

#[test]
fn unsolicited_na_matches_keepalived_frame() {
    let want = frame("1795432775.060686");
    assert_eq!(want.len(), 86);
    let target: Ipv6Addr = "fd99::200".parse().unwrap();
    // keepalived 2.2.7 leaves the Router flag clear.
    let got = unsolicited_na_frame(LB1_MAC, target, false);
    assert_eq!(got.to_vec(), want);
    // The ICMPv6 part alone (what a raw ICMPv6 socket sends), checksum 0x36e1.
    let na = unsolicited_na(LB1_MAC, target, false);
    assert_eq!(na.to_vec(), want[54..].to_vec());
    assert_eq!(u16::from_be_bytes([na[2], na[3]]), 0x36e1);
}
