//! Differential test: at least 100,000 random and mutated frames through the real XDP
//! program (BPF_PROG_TEST_RUN) and through the reference model (`lb_common::model`), over
//! the standard map contents, with ring changes, gateway removals and node MTUs along the way.
//! Verdicts and output bytes must match exactly for every frame, and every counter and
//! both connection tables at the end. Frames: IPv4/IPv6, VLAN, options, TCP/UDP/ICMP/other
//! protocols, fragments, extension headers, ICMP errors quoting VIP flows, encapsulated
//! packets, non-VIP traffic, then mutations (truncation, wrong lengths, odd IHL and data
//! offsets, flipped bytes, padding). The seed is printed; `LB_DIFF_SEED=N` replays a run. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::datapath::{
    FAMILY_V4, GW_F_V4, GW_F_V6, GW_F_VALID, GatewayValue, NODE_F_V4, NODE_F_V6, NodeConfig,
    VIP_F_ADDRESS, VIP_F_HASH_SRC_ADDR, VipKey, VipValue, v4_field,
};
use lb_tests::{
    frames::{NODE_MAC, V4, ethernet, icmp, ipv6, tcp, udp},
    privileged::require_root,
    xdp::{Harness, ring_of, standard, std_state::*},
};
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom};

const FRAMES: usize = 120_000;

fn v4_dst(r: &mut SmallRng) -> Ipv4Addr {
    *[
        VIP_A,
        VIP_A,
        VIP_EMPTY,
        VIP_SPLIT,
        VIP_SPLIT,
        VIP_NOCT,
        VIP_SRC,
        NODE4,
        Ipv4Addr::new(10, 0, 0, 77),
    ]
    .choose(r)
    .unwrap()
}

fn v6_dst(r: &mut SmallRng) -> Ipv6Addr {
    *[
        VIP6,
        VIP6,
        VIP6,
        NODE6,
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x77),
    ]
    .choose(r)
    .unwrap()
}

fn port(r: &mut SmallRng) -> u16 {
    *[80, 80, 53, 443, 443, 8080, 22, 0, 65535]
        .choose(r)
        .unwrap()
}

fn client4(r: &mut SmallRng) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, r.random_range(1..6))
}

fn client6(r: &mut SmallRng) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, r.random_range(1..6))
}

fn payload(r: &mut SmallRng) -> Vec<u8> {
    // Mostly small; some large enough to exceed the node MTUs set below once encapsulated.
    let n = if r.random_bool(0.65) {
        r.random_range(0..16)
    } else if r.random_bool(0.7) {
        r.random_range(0..200)
    } else {
        r.random_range(1200..1500)
    };
    (0..n).map(|_| r.random()).collect()
}

fn tcp_flags(r: &mut SmallRng) -> u8 {
    *[0x02, 0x02, 0x10, 0x10, 0x18, 0x12, 0x11, 0x04, 0x00, 0xff]
        .choose(r)
        .unwrap()
}

/// A transport payload for `proto`, from a client's port pool (so flows repeat).
fn l4(r: &mut SmallRng, proto: u8, dport: u16) -> Vec<u8> {
    let sport = 40000 + r.random_range(0..48u16);
    match proto {
        6 => tcp(sport, dport, tcp_flags(r), &payload(r)),
        17 => udp(sport, dport, &payload(r)),
        _ => payload(r),
    }
}

fn ip4(r: &mut SmallRng, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let proto = *[6, 6, 6, 17, 17, 1, 47, 4].choose(r).unwrap();
    let dport = port(r);
    let body = match proto {
        1 => icmp4_body(r),
        4 => {
            let (s, d) = (client4(r), v4_dst(r));
            ip4(r, s, d)
        }
        _ => l4(r, proto, dport),
    };
    let mut h = V4::new(src, dst, proto);
    h.tos = r.random();
    h.df = r.random_bool(0.6);
    if r.random_bool(0.1) {
        h.mf = r.random_bool(0.5);
        h.frag_offset = r.random_range(0..4);
    }
    if r.random_bool(0.15) {
        h.options = (0..r.random_range(1..=40)).map(|_| 1).collect();
    }
    h.packet(&body)
}

/// An ICMP message: usually an error quoting a reply from a VIP service.
fn icmp4_body(r: &mut SmallRng) -> Vec<u8> {
    let ty = *[3, 3, 3, 8, 11].choose(r).unwrap();
    let reply_proto = *[6, 17].choose(r).unwrap();
    let reply = V4::new(v4_dst(r), client4(r), reply_proto).packet(&match reply_proto {
        6 => tcp(port(r), 40000 + r.random_range(0..48u16), 0x12, b""),
        _ => udp(port(r), 40000 + r.random_range(0..48u16), b"x"),
    });
    let quote = r.random_range(20..=reply.len());
    icmp(ty, r.random_range(0..5), [0, 0, 5, 0x78], &reply[..quote])
}

fn icmp6_body(r: &mut SmallRng) -> Vec<u8> {
    let ty = *[1, 2, 2, 128, 3].choose(r).unwrap();
    let reply_proto = *[6, 17].choose(r).unwrap();
    let body = match reply_proto {
        6 => tcp(port(r), 40000 + r.random_range(0..48u16), 0x12, b""),
        _ => udp(port(r), 40000 + r.random_range(0..48u16), b"x"),
    };
    let reply = ipv6(v6_dst(r), client6(r), reply_proto, 0, 0, &body);
    let quote = r.random_range(40..=reply.len());
    icmp(ty, 0, [0, 0, 5, 0], &reply[..quote])
}

fn ip6(r: &mut SmallRng, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let nh = *[6, 6, 6, 17, 58, 58, 41, 0, 44, 59].choose(r).unwrap();
    let dport = port(r);
    let body = match nh {
        58 => icmp6_body(r),
        41 => {
            let (s, d) = (client6(r), v6_dst(r));
            ip6(r, s, d)
        }
        0 | 44 => {
            let mut ext = vec![6, 0, 1, 4, 0, 0, 0, 0];
            ext.extend_from_slice(&l4(r, 6, dport));
            ext
        }
        _ => l4(r, nh, dport),
    };
    ipv6(src, dst, nh, r.random(), r.random::<u32>() & 0xfffff, &body)
}

fn frame(r: &mut SmallRng) -> Vec<u8> {
    let vlan = r.random_bool(0.1).then(|| r.random_range(1..4095));
    match r.random_range(0..20) {
        0 => ethernet(
            vlan,
            *[0x0806, 0x88cc, 0x88a8].choose(r).unwrap(),
            &payload(r),
        ),
        1..=10 => {
            let src = if r.random_bool(0.1) {
                Ipv4Addr::new(10, 0, 0, 9)
            } else {
                client4(r)
            };
            let dst = v4_dst(r);
            let ip = ip4(r, src, dst);
            ethernet(vlan, 0x0800, &ip)
        }
        _ => {
            let (s, d) = (client6(r), v6_dst(r));
            let ip = ip6(r, s, d);
            ethernet(vlan, 0x86dd, &ip)
        }
    }
}

/// Damage a frame the ways real garbage is damaged.
fn mutate(r: &mut SmallRng, f: &mut Vec<u8>) {
    let l3 = if f.len() >= 14 && f[12] == 0x81 {
        18
    } else {
        14
    };
    for _ in 0..r.random_range(1..=3) {
        match r.random_range(0..9) {
            0 => {
                let n = r.random_range(14..=f.len().max(14));
                f.truncate(n);
            }
            1 if f.len() > l3 + 5 => {
                // IPv4 total length / IPv6 payload length.
                let at = if f[l3] >> 4 == 6 { l3 + 4 } else { l3 + 2 };
                let v: u16 = if r.random_bool(0.5) {
                    r.random()
                } else {
                    let cur = u16::from_be_bytes([f[at], f[at + 1]]);
                    cur.wrapping_add(r.random_range(0..8)).wrapping_sub(4)
                };
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            2 if f.len() > l3 => {
                // Version and IHL.
                f[l3] = r.random();
            }
            3 if f.len() > l3 + 32 => {
                // TCP data offset (IPv4 without options) / somewhere in the L4 header.
                let at = l3 + r.random_range(20..33);
                f[at] = r.random();
            }
            4 if !f.is_empty() => {
                let at = r.random_range(0..f.len().min(96));
                f[at] ^= 1 << r.random_range(0..8);
            }
            5 => f.extend((0..r.random_range(1..20)).map(|_| r.random::<u8>())),
            6 if f.len() > l3 + 8 => {
                // IPv4 fragment bits / IPv6 next header (both at offset 6).
                f[l3 + 6] = r.random();
            }
            7 if f.len() > l3 + 9 => {
                // IPv4 protocol.
                f[l3 + 9] = *[1, 4, 6, 17, 41, 58, 0].choose(r).unwrap();
            }
            _ => {
                if f.len() > 20 {
                    let at = r.random_range(14..f.len());
                    f[at] = r.random();
                }
            }
        }
    }
    if f.len() < 14 {
        f.resize(14, 0);
    }
}

#[test]
fn program_and_model_agree_on_random_and_mutated_frames() {
    if !require_root("program_and_model_agree_on_random_and_mutated_frames") {
        return;
    }
    differential(262_144, FRAMES);
}

/// The same with connection tables of 128 buckets (512 flows each) for ~1,700 flows: most
/// new flows evict another, and evicted flows come back through the ring (after ring
/// changes, to other gateways); the program and the model must still agree frame by frame
/// and entry by entry.
#[test]
fn program_and_model_agree_when_the_connection_tables_evict() {
    if !require_root("program_and_model_agree_when_the_connection_tables_evict") {
        return;
    }
    let (flows4, flows6) = differential(512, FRAMES);
    assert!(
        flows4 >= 400 && flows6 >= 400,
        "the small tables filled up: {flows4} IPv4, {flows6} IPv6 flows of 512"
    );
}

/// Runs `frames` random and mutated frames through the program and the model with
/// connection tables of `table` flows, comparing every verdict and output frame, then the
/// counters and the tables. Returns the flows each table holds at the end.
#[allow(
    clippy::print_stderr,
    reason = "the test's report: the seed to replay it, what it covered"
)]
fn differential(table: u32, frames: usize) -> (usize, usize) {
    let seed = std::env::var("LB_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6c62_2d64_6966_6621_u64);
    eprintln!("differential test seed: {seed} (replay with LB_DIFF_SEED={seed}), table {table}");
    let mut r = SmallRng::seed_from_u64(seed);
    let mut h = Harness::load(table).unwrap();
    standard(&mut h).unwrap();
    let rings = [
        ring_of(&[GW1, GW2]).unwrap(),
        ring_of(&[GW2]).unwrap(),
        ring_of(&[GW1]).unwrap(),
        ring_of(&[GW1, GW2, GW_LOCAL]).unwrap(),
    ];
    let mut by_reason = std::collections::BTreeMap::<&str, u64>::new();
    let mut mutated = 0;
    for i in 0..frames {
        if i > 0 && i % 15_000 == 0 {
            // Change the split services' ring, and take gateway 2 out or put it back.
            let ring = &rings[(i / 15_000) % rings.len()];
            for vip in [5, 6, 7, 8] {
                h.write_ring(vip, ring).unwrap();
            }
            let gw2 = if (i / 15_000) % 3 == 1 {
                GatewayValue::default()
            } else {
                GatewayValue {
                    flags: GW_F_VALID | GW_F_V4 | GW_F_V6,
                    addr4: gw4(GW2).octets(),
                    addr6: gw6(GW2).octets(),
                    mac: gw_mac(GW2),
                    _pad: [0; 2],
                }
            };
            h.set_gateway(GW2, gw2).unwrap();
            // The node's MTU: none, small (IPv4 packets of a few hundred bytes are too big;
            // IPv6 counts it as 1320), or a common one.
            let mtu = [0, 200, 1400, 200, 1500][(i / 15_000) % 5];
            h.set_node(NodeConfig {
                flags: NODE_F_V4 | NODE_F_V6,
                addr4: NODE4.octets(),
                addr6: NODE6.octets(),
                mac: NODE_MAC,
                mtu,
            })
            .unwrap();
            // Take service 7 and its address away, or put them back: the prefilter bit
            // must follow.
            let svc = VipKey {
                addr: v4_field(VIP_SRC.octets()),
                port: 80u16.to_be_bytes(),
                proto: 6,
                family: FAMILY_V4,
            };
            let addr = VipKey::address(FAMILY_V4, svc.addr);
            if (i / 15_000) % 2 == 1 {
                h.remove_vip(svc).unwrap();
                h.remove_vip(addr).unwrap();
            } else {
                h.set_vip(
                    addr,
                    VipValue {
                        id: 0,
                        flags: VIP_F_ADDRESS,
                    },
                )
                .unwrap();
                h.set_vip(
                    svc,
                    VipValue {
                        id: 7,
                        flags: VIP_F_HASH_SRC_ADDR,
                    },
                )
                .unwrap();
            }
        }
        let mut f = frame(&mut r);
        if r.random_bool(0.45) {
            mutate(&mut r, &mut f);
            mutated += 1;
        }
        let (got, want) = h.run(&f).unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            (got.action, hex(&got.frame)),
            (want.reason.action(), hex(&want.frame)),
            "frame #{i} (seed {seed}): program vs model (model says {}); input {}",
            want.reason.name(),
            hex(&f)
        );
        *by_reason.entry(want.reason.name()).or_default() += 1;
    }
    h.check_counters().unwrap();
    // Both connection tables, entry for entry (IPv4 under the compact key).
    h.check_flows().unwrap();
    let (flows4, flows6) = (h.model.flows4.len(), h.model.flows6.len());
    eprintln!("connection tables: {flows4} IPv4 flows, {flows6} IPv6 flows");
    assert!(
        flows4 >= 100 && flows6 >= 100,
        "both tables exercised: {flows4} IPv4, {flows6} IPv6 flows"
    );
    eprintln!("{frames} frames ({mutated} mutated), by exit reason: {by_reason:?}");
    // The generator reaches every path but `aborted`.
    for reason in lb_common::ExitReason::ALL {
        if reason != lb_common::ExitReason::Aborted {
            assert!(
                by_reason.get(reason.name()).copied().unwrap_or(0) >= 50,
                "too few frames exercised {}: {by_reason:?}",
                reason.name()
            );
        }
    }
    (flows4, flows6)
}
