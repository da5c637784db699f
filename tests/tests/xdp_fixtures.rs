//! Packet fixtures through the real XDP program (BPF_PROG_TEST_RUN): a table of
//! (description, input frame, expected verdict, expected output frame) over the standard
//! map contents, IPv4 and IPv6, every case of the data path. Expected outputs are built by
//! `lb_tests::frames` (its own header and checksum code), and every case also runs
//! through the reference model, which must agree. Then sequences that need state: flow
//! pinning across a ring change, re-hashing when a gateway goes, stateless and
//! source-hashed VIPs, and the counters. Needs root (loading BPF), no namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{
    ExitReason,
    datapath::{FlowKey, FlowKey4, GatewayValue, RING_SIZE, v4_field},
};
use lb_tests::{
    frames::{self, TCP_ACK, TCP_PSH, TCP_SYN, V4, ethernet, ethernet_macs, icmp, ipv6, tcp, udp},
    privileged::require_root,
    xdp::{Harness, ring_of, standard, std_state::*},
};

/// What the program must leave in the frame.
enum Out {
    Same,
    Frame(Vec<u8>),
}

struct Case {
    what: &'static str,
    input: Vec<u8>,
    reason: ExitReason,
    out: Out,
}

fn case(what: &'static str, input: Vec<u8>, reason: ExitReason, out: Out) -> Case {
    Case {
        what,
        input,
        reason,
        out,
    }
}

/// The frame the program should transmit for an IPv4 packet `inner` (IP header on) sent to
/// gateway `gw`: IPIP from this node, TOS and DF copied, TTL 64, id 0.
fn ipip(gw: u32, vlan: Option<u16>, inner: &[u8]) -> Vec<u8> {
    let mut outer = V4::new(NODE4, gw4(gw), 4);
    outer.tos = inner[1];
    outer.df = inner[6] & 0x40 != 0;
    outer.id = 0;
    outer.ttl = 64;
    ethernet_macs(
        gw_mac(gw),
        frames::NODE_MAC,
        vlan,
        0x0800,
        &outer.packet(inner),
    )
}

/// The frame for an IPv6 packet `inner` sent to gateway `gw`: IP6IP6 from this node,
/// traffic class and flow label copied, hop limit 64.
fn ip6ip6(gw: u32, vlan: Option<u16>, inner: &[u8]) -> Vec<u8> {
    let tc = (inner[0] << 4) | (inner[1] >> 4);
    let flow = u32::from_be_bytes([0, inner[1] & 0x0f, inner[2], inner[3]]);
    let outer = ipv6(NODE6, gw6(gw), 41, tc, flow, inner);
    ethernet_macs(gw_mac(gw), frames::NODE_MAC, vlan, 0x86dd, &outer)
}

fn v4tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    V4::new(src, dst, 6).packet(&tcp(sport, dport, flags, b"hello"))
}

fn v6tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    ipv6(src, dst, 6, 0, 0, &tcp(sport, dport, flags, b"hello"))
}

fn eth4(ip: &[u8]) -> Vec<u8> {
    ethernet(None, 0x0800, ip)
}

fn eth6(ip: &[u8]) -> Vec<u8> {
    ethernet(None, 0x86dd, ip)
}

fn cases() -> Vec<Case> {
    use ExitReason::*;
    let mut v = Vec::new();
    let syn4 = v4tcp(CLIENT4, 40000, VIP_A, 80, TCP_SYN);
    let syn6 = v6tcp(CLIENT6, 40000, VIP6, 80, TCP_SYN);

    // Not IP, or too short to say.
    v.push(case(
        "ARP",
        ethernet(None, 0x0806, &[0u8; 28]),
        PassNotIp,
        Out::Same,
    ));
    v.push(case(
        "bare Ethernet header with the IPv4 EtherType",
        ethernet(None, 0x0800, &[]),
        PassNotVip,
        Out::Same,
    ));
    v.push(case(
        "VLAN tag cut short",
        {
            let mut f = ethernet(Some(7), 0x0800, &[]);
            f.truncate(16);
            f
        },
        PassNotIp,
        Out::Same,
    ));
    v.push(case(
        "QinQ outer tag (0x88a8) is not parsed",
        ethernet(None, 0x88a8, &syn4),
        PassNotIp,
        Out::Same,
    ));
    v.push(case(
        "IPv4 header cut at 19 bytes",
        eth4(&syn4[..19]),
        PassNotVip,
        Out::Same,
    ));
    v.push(case(
        "IPv6 header cut at 39 bytes",
        eth6(&syn6[..39]),
        PassNotVip,
        Out::Same,
    ));

    // Not a VIP.
    v.push(case(
        "IPv4 TCP to another address",
        eth4(&v4tcp(CLIENT4, 1, NODE4, 80, TCP_SYN)),
        PassNotVip,
        Out::Same,
    ));
    v.push(case(
        "IPv4 TCP to a VIP address, unconfigured port",
        eth4(&v4tcp(CLIENT4, 1, VIP_A, 8080, TCP_SYN)),
        PassNotVip,
        Out::Same,
    ));
    v.push(case(
        "IPv4 UDP to a TCP-only VIP port",
        eth4(&V4::new(CLIENT4, VIP_A, 17).packet(&udp(1, 80, b"x"))),
        PassNotVip,
        Out::Same,
    ));
    v.push(case(
        "IPv4 GRE to a VIP address",
        eth4(&V4::new(CLIENT4, VIP_A, 47).packet(&[0u8; 8])),
        PassNotVip,
        Out::Same,
    ));
    v.push(case(
        "IPv6 TCP to another address",
        eth6(&v6tcp(CLIENT6, 1, NODE6, 80, TCP_SYN)),
        PassNotVip,
        Out::Same,
    ));

    // To a service: encapsulated to the ring's gateway.
    v.push(case(
        "IPv4 SYN to service 0: IPIP to gateway 1",
        eth4(&syn4),
        Tx,
        Out::Frame(ipip(GW1, None, &syn4)),
    ));
    v.push(case(
        "IPv4 SYN with a VLAN tag: the tag is kept",
        ethernet(Some(0x0123), 0x0800, &syn4),
        Tx,
        Out::Frame(ipip(GW1, Some(0x0123), &syn4)),
    ));
    let mut opt = V4::new(CLIENT4, VIP_A, 6);
    opt.options = vec![1, 1, 1, 0, 0x94, 4, 0, 0]; // NOPs and Router Alert: IHL 7
    opt.tos = 0xb9;
    opt.df = false;
    let opt = opt.packet(&tcp(
        40001,
        80,
        TCP_ACK | TCP_PSH,
        b"GET / HTTP/1.1\r\n\r\n",
    ));
    v.push(case(
        "IPv4 with options, TOS and no DF: copied into the outer header",
        eth4(&opt),
        Tx,
        Out::Frame(ipip(GW1, None, &opt)),
    ));
    let mut padded = eth4(&syn4);
    padded.extend_from_slice(&[0xee; 6]);
    let mut padded_out = ipip(GW1, None, &syn4);
    padded_out.extend_from_slice(&[0xee; 6]);
    v.push(case(
        "Ethernet padding after the IP packet is carried along",
        padded,
        Tx,
        Out::Frame(padded_out),
    ));
    v.push(case(
        "IPv6 SYN to service 1: IP6IP6 to gateway 2",
        eth6(&syn6),
        Tx,
        Out::Frame(ip6ip6(GW2, None, &syn6)),
    ));
    let tc6 = ipv6(
        CLIENT6,
        VIP6,
        6,
        0xb8,
        0xabcde,
        &tcp(40002, 80, TCP_ACK, b"x"),
    );
    v.push(case(
        "IPv6 traffic class and flow label copied",
        ethernet(Some(9), 0x86dd, &tc6),
        Tx,
        Out::Frame(ip6ip6(GW2, Some(9), &tc6)),
    ));
    v.push(case(
        "UDP to service 2, whose gateway is this node: passed",
        eth4(&V4::new(CLIENT4, VIP_A, 17).packet(&udp(5353, 53, b"query"))),
        Local,
        Out::Same,
    ));

    // No usable gateway.
    v.push(case(
        "service 3 has an empty ring",
        eth4(&v4tcp(CLIENT4, 1, VIP_EMPTY, 80, TCP_SYN)),
        DropNoGateway,
        Out::Same,
    ));
    v.push(case(
        "service 4's gateway has no IPv6 address",
        eth6(&v6tcp(CLIENT6, 1, VIP6, 443, TCP_SYN)),
        DropNoGateway,
        Out::Same,
    ));

    // Malformed: dropped when addressed to a VIP address, passed otherwise.
    let mut bad = syn4.clone();
    bad[0] = 0x44; // IHL 4
    v.push(case(
        "IPv4 IHL 4 to a VIP",
        eth4(&bad),
        DropMalformed,
        Out::Same,
    ));
    let mut bad = syn4.clone();
    bad[0] = 0x65; // version 6 in an IPv4 frame
    v.push(case(
        "IPv4 EtherType, version 6, to a VIP",
        eth4(&bad),
        DropMalformed,
        Out::Same,
    ));
    v.push(case(
        "IPv4 total length beyond the frame, to a VIP",
        eth4(&syn4[..syn4.len() - 1]),
        DropMalformed,
        Out::Same,
    ));
    let other = v4tcp(CLIENT4, 1, NODE4, 80, TCP_SYN);
    v.push(case(
        "IPv4 total length beyond the frame, not a VIP",
        eth4(&other[..other.len() - 1]),
        PassNotVip,
        Out::Same,
    ));
    let mut bad = syn4.clone();
    bad[20 + 12] = 0x40; // TCP data offset 4
    v.push(case(
        "TCP data offset 4",
        eth4(&bad),
        DropMalformed,
        Out::Same,
    ));
    let mut bad = syn4.clone();
    bad[20 + 12] = 0xf0; // data offset 15: 60 bytes, beyond the segment
    v.push(case(
        "TCP data offset beyond the packet",
        eth4(&bad),
        DropMalformed,
        Out::Same,
    ));
    let tiny = V4::new(CLIENT4, VIP_A, 6).packet(&[0u8; 12]);
    v.push(case(
        "TCP header of 12 bytes",
        eth4(&tiny),
        DropMalformed,
        Out::Same,
    ));
    let mut bad = V4::new(CLIENT4, VIP_A, 17).packet(&udp(5353, 53, b"q"));
    bad[20 + 5] = 7; // UDP length 7
    v.push(case("UDP length 7", eth4(&bad), DropMalformed, Out::Same));
    let mut bad = syn6.clone();
    bad[0] = 0x40;
    v.push(case(
        "IPv6 EtherType, version 4, to a VIP",
        eth6(&bad),
        DropMalformed,
        Out::Same,
    ));
    v.push(case(
        "IPv6 payload length beyond the frame, to a VIP",
        eth6(&syn6[..syn6.len() - 2]),
        DropMalformed,
        Out::Same,
    ));

    // Fragments and extension headers go to the stack.
    let mut frag = V4::new(CLIENT4, VIP_A, 6);
    frag.df = false;
    frag.mf = true;
    v.push(case(
        "first IPv4 fragment to a VIP",
        eth4(&frag.packet(&tcp(40003, 80, TCP_ACK, &[7; 64]))),
        PassFragment,
        Out::Same,
    ));
    frag.mf = false;
    frag.frag_offset = 9;
    v.push(case(
        "last IPv4 fragment to a VIP",
        eth4(&frag.packet(&[7; 40])),
        PassFragment,
        Out::Same,
    ));
    frag.dst = NODE4;
    v.push(case(
        "IPv4 fragment to another address",
        eth4(&frag.packet(&[7; 40])),
        PassNotVip,
        Out::Same,
    ));
    let mut hbh = vec![6, 0, 5, 2, 0, 0, 1, 0]; // hop-by-hop: router alert, then TCP
    hbh.extend_from_slice(&tcp(40004, 80, TCP_SYN, b""));
    v.push(case(
        "IPv6 hop-by-hop header to a VIP",
        eth6(&ipv6(CLIENT6, VIP6, 0, 0, 0, &hbh)),
        PassIpv6Ext,
        Out::Same,
    ));
    v.push(case(
        "IPv6 hop-by-hop header to another address",
        eth6(&ipv6(CLIENT6, NODE6, 0, 0, 0, &hbh)),
        PassNotVip,
        Out::Same,
    ));

    // Decapsulation on this node.
    let inner = v4tcp(CLIENT4, 40005, VIP_A, 80, TCP_SYN);
    let outer = V4::new(Ipv4Addr::new(10, 0, 0, 9), NODE4, 4).packet(&inner);
    v.push(case(
        "IPIP to this node with a VIP inside: stripped and passed",
        eth4(&outer),
        Decap,
        Out::Frame(eth4(&inner)),
    ));
    v.push(case(
        "IPIP decap keeps the VLAN tag",
        ethernet(Some(5), 0x0800, &outer),
        Decap,
        Out::Frame(ethernet(Some(5), 0x0800, &inner)),
    ));
    let mut with_opts = V4::new(Ipv4Addr::new(10, 0, 0, 9), NODE4, 4);
    with_opts.options = vec![1, 1, 1, 1];
    v.push(case(
        "IPIP with outer options (IHL 6): all 24 bytes stripped",
        eth4(&with_opts.packet(&inner)),
        Decap,
        Out::Frame(eth4(&inner)),
    ));
    let not_vip = v4tcp(CLIENT4, 40005, NODE4, 22, TCP_SYN);
    v.push(case(
        "IPIP to this node, inner not a VIP",
        eth4(&V4::new(Ipv4Addr::new(10, 0, 0, 9), NODE4, 4).packet(&not_vip)),
        PassEncapOther,
        Out::Same,
    ));
    v.push(case(
        "IPIP to another node",
        eth4(&V4::new(Ipv4Addr::new(10, 0, 0, 9), gw4(GW1), 4).packet(&inner)),
        PassEncapOther,
        Out::Same,
    ));
    v.push(case(
        "IPIP to this node, inner cut short",
        eth4(&V4::new(Ipv4Addr::new(10, 0, 0, 9), NODE4, 4).packet(&inner[..19])),
        PassEncapOther,
        Out::Same,
    ));
    let inner6 = v6tcp(CLIENT6, 40006, VIP6, 80, TCP_SYN);
    let outer6 = ipv6(gw6(GW1), NODE6, 41, 0, 0, &inner6);
    v.push(case(
        "IP6IP6 to this node with a VIP inside: stripped and passed",
        eth6(&outer6),
        Decap,
        Out::Frame(eth6(&inner6)),
    ));
    v.push(case(
        "IP6IP6 to another node",
        eth6(&ipv6(gw6(GW1), gw6(GW2), 41, 0, 0, &inner6)),
        PassEncapOther,
        Out::Same,
    ));

    // ICMP errors about VIP flows follow the flow.
    let reply = v4tcp(VIP_A, 80, CLIENT4, 40007, TCP_SYN | TCP_ACK);
    let frag_needed = V4::new(Ipv4Addr::new(198, 51, 100, 1), VIP_A, 1).packet(&icmp(
        3,
        4,
        [0, 0, 0x05, 0x78],
        &reply[..28],
    ));
    v.push(case(
        "ICMP fragmentation needed quoting a reply from service 0: to gateway 1",
        eth4(&frag_needed),
        IcmpForwarded,
        Out::Frame(ipip(GW1, None, &frag_needed)),
    ));
    let dns_reply = V4::new(VIP_A, CLIENT4, 17).packet(&udp(53, 5353, b"answer"));
    let unreach = V4::new(CLIENT4, VIP_A, 1).packet(&icmp(3, 3, [0; 4], &dns_reply[..28]));
    v.push(case(
        "ICMP port unreachable quoting service 2 (this node): passed",
        eth4(&unreach),
        Local,
        Out::Same,
    ));
    v.push(case(
        "ICMP quote cut before the ports",
        eth4(&V4::new(CLIENT4, VIP_A, 1).packet(&icmp(3, 4, [0; 4], &reply[..22]))),
        PassNotVip,
        Out::Same,
    ));
    v.push(case(
        "ICMP echo request to a VIP",
        eth4(&V4::new(CLIENT4, VIP_A, 1).packet(&icmp(8, 0, [0, 1, 0, 1], b"ping"))),
        PassNotVip,
        Out::Same,
    ));
    let other_reply = v4tcp(NODE4, 22, CLIENT4, 40007, TCP_ACK);
    v.push(case(
        "ICMP error quoting a non-VIP flow",
        eth4(&V4::new(CLIENT4, NODE4, 1).packet(&icmp(3, 4, [0; 4], &other_reply[..28]))),
        PassNotVip,
        Out::Same,
    ));
    let reply6 = v6tcp(VIP6, 80, CLIENT6, 40008, TCP_SYN | TCP_ACK);
    let ptb = ipv6(
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1),
        VIP6,
        58,
        0,
        0,
        &icmp(2, 0, 1280u32.to_be_bytes(), &reply6[..48]),
    );
    v.push(case(
        "ICMPv6 packet too big quoting service 1: to gateway 2",
        eth6(&ptb),
        IcmpForwarded,
        Out::Frame(ip6ip6(GW2, None, &ptb)),
    ));
    let elsewhere = V4::new(Ipv4Addr::new(198, 51, 100, 1), NODE4, 1).packet(&icmp(
        3,
        4,
        [0, 0, 0x05, 0x78],
        &reply[..28],
    ));
    v.push(case(
        "ICMP error quoting a VIP flow but not addressed to a VIP",
        eth4(&elsewhere),
        PassNotVip,
        Out::Same,
    ));
    let echo6 = ipv6(
        CLIENT6,
        VIP6,
        58,
        0,
        0,
        &icmp(128, 0, [0, 1, 0, 1], b"ping"),
    );
    v.push(case(
        "ICMPv6 echo request to a VIP",
        eth6(&echo6),
        PassNotVip,
        Out::Same,
    ));
    v
}

fn check(h: &mut Harness, c: &Case) {
    let before = h.dp.exit_stats().unwrap();
    let (got, model) = h
        .run(&c.input)
        .unwrap_or_else(|e| panic!("{}: {e}", c.what));
    let expected = match &c.out {
        Out::Same => c.input.clone(),
        Out::Frame(f) => f.clone(),
    };
    assert_eq!(got.action, c.reason.action(), "{}: verdict", c.what);
    assert_eq!(hex(&got.frame), hex(&expected), "{}: output frame", c.what);
    assert_eq!(model.reason, c.reason, "{}: the model's reason", c.what);
    assert_eq!(
        hex(&model.frame),
        hex(&expected),
        "{}: the model's frame",
        c.what
    );
    let after = h.dp.exit_stats().unwrap();
    assert_eq!(
        after.get(c.reason).packets,
        before.get(c.reason).packets + 1,
        "{}: counted under {}",
        c.what,
        c.reason.name()
    );
    assert_eq!(
        after.total_packets(),
        before.total_packets() + 1,
        "{}: counted once",
        c.what
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn harness() -> Harness {
    let mut h = Harness::load(65536).unwrap();
    standard(&mut h).unwrap();
    h
}

#[test]
fn fixture_table() {
    if !require_root("fixture_table") {
        return;
    }
    let mut h = harness();
    let cases = cases();
    for c in &cases {
        check(&mut h, c);
    }
    h.check_counters().unwrap();
    h.check_flows().unwrap();
    // The transmitted frames are valid to an independent parser (etherparse).
    for c in cases.iter().filter(|c| matches!(c.out, Out::Frame(_))) {
        let (got, _) = h.run(&c.input).unwrap();
        let parsed = etherparse::SlicedPacket::from_ethernet(&got.frame)
            .unwrap_or_else(|e| panic!("{}: {e}", c.what));
        if let Some(etherparse::NetSlice::Ipv4(ip)) = parsed.net {
            let header = ip.header().to_header();
            assert_eq!(
                header.header_checksum,
                header.calc_header_checksum(),
                "{}",
                c.what
            );
        }
    }
}

fn gateway_of(h: &mut Harness, frame: &[u8]) -> Option<u32> {
    let (got, model) = h.run(frame).unwrap();
    assert_eq!(hex(&got.frame), hex(&model.frame));
    if got.action != ExitReason::Tx.action() {
        return None;
    }
    // The outer destination MAC names the gateway.
    (1..=3).find(|id| got.frame[..6] == gw_mac(*id))
}

/// Opens 200 flows to service `vip_id` (split over gateways 1 and 2) with `frame(port,
/// flags)`, drains gateway 1 from the ring, and checks that established flows keep their
/// gateway while new flows and SYNs of old ones follow the ring.
fn pinning_across_a_ring_change(vip_id: u32, frame: impl Fn(u16, u8) -> Vec<u8>) {
    let mut h = harness();
    let mut pinned = Vec::new();
    for port in 20000..20200u16 {
        let gw = gateway_of(&mut h, &frame(port, TCP_SYN)).unwrap();
        pinned.push((port, gw));
    }
    let on1 = pinned.iter().filter(|(_, g)| *g == GW1).count();
    assert!(
        (60..=140).contains(&on1),
        "both gateways get flows: {on1} of 200 on gateway 1"
    );
    // Drain gateway 1: the ring now holds only gateway 2.
    h.write_ring(vip_id, &ring_of(&[GW2]).unwrap()).unwrap();
    for (port, gw) in &pinned {
        let now = gateway_of(&mut h, &frame(*port, TCP_ACK)).unwrap();
        assert_eq!(
            now, *gw,
            "established flow from port {port} kept its gateway"
        );
    }
    // New flows, and a SYN of an old flow (a new connection on a reused port), follow the ring.
    for port in 30000..30100u16 {
        let gw = gateway_of(&mut h, &frame(port, TCP_SYN)).unwrap();
        assert_eq!(gw, GW2);
    }
    let (port, _) = pinned.iter().find(|(_, g)| *g == GW1).unwrap();
    let gw = gateway_of(&mut h, &frame(*port, TCP_SYN)).unwrap();
    assert_eq!(gw, GW2, "a SYN re-hashes");
    // ... and its entry now names gateway 2 in both.
    let gw_after = gateway_of(&mut h, &frame(*port, TCP_ACK)).unwrap();
    assert_eq!(gw_after, GW2, "the SYN replaced the entry");
    // The ring the kernel uses is the one written.
    assert_eq!(h.dp.active_ring(vip_id).unwrap(), ring_of(&[GW2]).unwrap());
    h.check_counters().unwrap();
    h.check_flows().unwrap();
}

#[test]
fn flows_keep_their_gateway_when_the_ring_changes() {
    if !require_root("flows_keep_their_gateway_when_the_ring_changes") {
        return;
    }
    // Service 5 (IPv4, the `FLOWS4` table).
    pinning_across_a_ring_change(5, |port, flags| {
        frames::tcp4(CLIENT4, port, VIP_SPLIT, 80, flags)
    });
}

#[test]
fn ipv6_flows_keep_their_gateway_when_the_ring_changes() {
    if !require_root("ipv6_flows_keep_their_gateway_when_the_ring_changes") {
        return;
    }
    // Service 8 (IPv6, the `FLOWS6` table).
    pinning_across_a_ring_change(8, |port, flags| {
        frames::tcp6(CLIENT6, port, VIP6, 8080, flags)
    });
}

#[test]
fn flows_of_a_removed_gateway_are_rehashed() {
    if !require_root("flows_of_a_removed_gateway_are_rehashed") {
        return;
    }
    let mut h = harness();
    let mut on1 = Vec::new();
    for port in 21000..21100u16 {
        if gateway_of(&mut h, &frames::tcp4(CLIENT4, port, VIP_SPLIT, 80, TCP_SYN)) == Some(GW1) {
            on1.push(port);
        }
    }
    assert!(!on1.is_empty());
    // Gateway 1 dies: the agent takes it out of the ring and clears its entry.
    h.write_ring(5, &ring_of(&[GW2]).unwrap()).unwrap();
    h.set_gateway(GW1, GatewayValue::default()).unwrap();
    for port in on1 {
        let gw = gateway_of(&mut h, &frames::tcp4(CLIENT4, port, VIP_SPLIT, 80, TCP_ACK));
        assert_eq!(
            gw,
            Some(GW2),
            "flow from port {port} moved to a live gateway"
        );
    }
    h.check_counters().unwrap();
    h.check_flows().unwrap();
}

#[test]
fn stateless_and_source_hashed_services() {
    if !require_root("stateless_and_source_hashed_services") {
        return;
    }
    let mut h = harness();
    // Service 6 (UDP 443) keeps no flow entries.
    for port in 0..50u16 {
        let ip = V4::new(CLIENT4, VIP_NOCT, 17).packet(&udp(10000 + port, 443, b"quic"));
        let (got, _) = h.run(&ethernet(None, 0x0800, &ip)).unwrap();
        assert_eq!(got.action, ExitReason::Tx.action());
    }
    let flows = h.dp.flows().unwrap();
    assert!(
        !flows
            .iter()
            .any(|(k, _)| k.dst == v4_field(VIP_NOCT.octets())),
        "no connection-table entries for a NO_CONNTRACK service"
    );
    assert_eq!(
        h.dp.vip_stats(6).unwrap().new_flows,
        50,
        "every packet is hashed"
    );
    // Service 7 sends every port of one client to one gateway, and spreads clients.
    let mut seen = std::collections::BTreeSet::new();
    for client in 1..=40u8 {
        let src = Ipv4Addr::new(192, 0, 2, client);
        let first = gateway_of(&mut h, &frames::tcp4(src, 1000, VIP_SRC, 80, TCP_SYN)).unwrap();
        for port in 1001..1010 {
            let gw = gateway_of(&mut h, &frames::tcp4(src, port, VIP_SRC, 80, TCP_SYN)).unwrap();
            assert_eq!(gw, first, "client {src}: all ports on one gateway");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "clients spread over both gateways");
    h.check_counters().unwrap();
    h.check_flows().unwrap();
}

#[test]
fn connection_tables_record_the_client_flow_by_family() {
    if !require_root("connection_tables_record_the_client_flow_by_family") {
        return;
    }
    let mut h = harness();
    h.run(&frames::tcp6(CLIENT6, 45000, VIP6, 8080, TCP_SYN))
        .unwrap();
    h.run(&frames::tcp4(CLIENT4, 45000, VIP_SPLIT, 80, TCP_SYN))
        .unwrap();
    // UDP to service 2 (this node's ring) is recorded too.
    let ip = V4::new(CLIENT4, VIP_A, 17).packet(&udp(5353, 53, b"query"));
    h.run(&ethernet(None, 0x0800, &ip)).unwrap();
    let want6 = FlowKey {
        src: CLIENT6.octets(),
        dst: VIP6.octets(),
        sport: 45000u16.to_be_bytes(),
        dport: 8080u16.to_be_bytes(),
        proto: 6,
        family: 6,
        _pad: [0; 2],
    };
    let want4 = FlowKey4 {
        src: CLIENT4.octets(),
        dst: VIP_SPLIT.octets(),
        sport: 45000u16.to_be_bytes(),
        dport: 80u16.to_be_bytes(),
        proto: 6,
        _pad: [0; 3],
    };
    let want4_udp = FlowKey4 {
        src: CLIENT4.octets(),
        dst: VIP_A.octets(),
        sport: 5353u16.to_be_bytes(),
        dport: 53u16.to_be_bytes(),
        proto: 17,
        _pad: [0; 3],
    };
    // Each family in its own table: IPv6 under the 40-byte key, IPv4 under the 16-byte one.
    let flows6 = h.dp.flows6().unwrap();
    assert_eq!(flows6.len(), 1, "{flows6:?}");
    assert_eq!(flows6[0].0, want6);
    assert_eq!(Some(flows6[0].1), h.model.flow(&want6));
    let mut flows4 = h.dp.flows4().unwrap();
    flows4.sort_by_key(|(k, _)| *k);
    let mut keys4: Vec<_> = flows4.iter().map(|(k, _)| *k).collect();
    keys4.sort();
    let mut want_keys4 = vec![want4, want4_udp];
    want_keys4.sort();
    assert_eq!(keys4, want_keys4);
    for (k, v) in &flows4 {
        assert_eq!(Some(*v), h.model.flow(&k.flow_key()));
    }
    assert_eq!(
        flows4
            .iter()
            .find(|(k, _)| *k == want4_udp)
            .map(|(_, v)| v.gateway),
        Some(GW_LOCAL)
    );
    // `flows()` shows both, IPv4 keys widened to `FlowKey`s of family 4.
    let all = h.dp.flows().unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().any(|(k, _)| *k == want6));
    assert!(all.iter().any(|(k, _)| *k == want4.flow_key()));
    assert_eq!(h.model.flow_count(), 3);
    h.check_flows().unwrap();
    assert_eq!(h.dp.active_ring(8).unwrap().len(), RING_SIZE as usize);
}

#[test]
fn acks_hit_the_table_of_their_family() {
    if !require_root("acks_hit_the_table_of_their_family") {
        return;
    }
    let mut h = harness();
    // Flows of both families pinned, then the ring flipped to the other gateway: only a
    // hit in the right table keeps them where they were.
    let f4 = |flags| frames::tcp4(CLIENT4, 46000, VIP_SPLIT, 80, flags);
    let f6 = |flags| frames::tcp6(CLIENT6, 46000, VIP6, 8080, flags);
    let g4 = gateway_of(&mut h, &f4(TCP_SYN)).unwrap();
    let g6 = gateway_of(&mut h, &f6(TCP_SYN)).unwrap();
    let other = |g| if g == GW1 { GW2 } else { GW1 };
    h.write_ring(5, &ring_of(&[other(g4)]).unwrap()).unwrap();
    h.write_ring(8, &ring_of(&[other(g6)]).unwrap()).unwrap();
    for _ in 0..3 {
        assert_eq!(gateway_of(&mut h, &f4(TCP_ACK)), Some(g4));
        assert_eq!(gateway_of(&mut h, &f6(TCP_ACK)), Some(g6));
        assert_eq!(gateway_of(&mut h, &f4(TCP_PSH)), Some(g4));
    }
    // A non-SYN miss is recorded in its own family's table.
    let f4b = |flags| frames::tcp4(CLIENT4, 46001, VIP_SPLIT, 80, flags);
    let f6b = |flags| frames::tcp6(CLIENT6, 46001, VIP6, 8080, flags);
    assert_eq!(gateway_of(&mut h, &f4b(TCP_ACK)), Some(other(g4)));
    assert_eq!(gateway_of(&mut h, &f6b(TCP_ACK)), Some(other(g6)));
    assert_eq!(h.dp.flows4().unwrap().len(), 2);
    assert_eq!(h.dp.flows6().unwrap().len(), 2);
    h.check_counters().unwrap();
    h.check_flows().unwrap();
}

#[test]
fn removed_services_pass_and_return() {
    if !require_root("removed_services_pass_and_return") {
        return;
    }
    let mut h = harness();
    let syn = frames::tcp4(CLIENT4, 40000, VIP_A, 80, TCP_SYN);
    assert_eq!(gateway_of(&mut h, &syn), Some(GW1));
    // Every entry of the address goes (services 0 and 2, and the address entry): the
    // prefilter bit is cleared and the packet is passed.
    let services = lb_tests::xdp::standard_services().unwrap();
    let of_a: Vec<_> = services
        .iter()
        .filter(|s| s.key.addr == v4_field(VIP_A.octets()))
        .collect();
    for s in &of_a {
        h.remove_vip(s.key).unwrap();
    }
    let addr = lb_common::datapath::VipKey::address(4, v4_field(VIP_A.octets()));
    h.remove_vip(addr).unwrap();
    let (got, model) = h.run(&syn).unwrap();
    assert_eq!(got.action, ExitReason::PassNotVip.action());
    assert_eq!(model.reason, ExitReason::PassNotVip);
    // Back again: forwarded as before.
    h.set_vip(
        addr,
        lb_common::datapath::VipValue {
            id: 0,
            flags: lb_common::datapath::VIP_F_ADDRESS,
        },
    )
    .unwrap();
    for s in &of_a {
        h.set_vip(
            s.key,
            lb_common::datapath::VipValue {
                id: s.id,
                flags: s.flags,
            },
        )
        .unwrap();
    }
    assert_eq!(gateway_of(&mut h, &syn), Some(GW1));
    h.check_counters().unwrap();
    h.check_flows().unwrap();
}

#[test]
fn vip_table_probes_collisions_and_refuses_a_fifth() {
    if !require_root("vip_table_probes_collisions_and_refuses_a_fifth") {
        return;
    }
    use lb_common::datapath::{VIP_F_ADDRESS, VIP_PROBES, VipKey, VipValue, vip_slot_hash};
    let mut h = harness();
    // Addresses in 10.9.0.0/16 whose address entries all hash to one slot.
    let target = vip_slot_hash(&VipKey::address(4, v4_field([10, 9, 0, 0])));
    let colliding: Vec<Ipv4Addr> = (1..=u16::MAX)
        .map(|i| Ipv4Addr::new(10, 9, (i >> 8) as u8, i as u8))
        .filter(|a| vip_slot_hash(&VipKey::address(4, v4_field(a.octets()))) == target)
        .take(VIP_PROBES as usize + 1)
        .collect();
    assert_eq!(colliding.len(), VIP_PROBES as usize + 1);
    let entry = VipValue {
        id: 0,
        flags: VIP_F_ADDRESS,
    };
    let key = |a: &Ipv4Addr| VipKey::address(4, v4_field(a.octets()));
    for a in &colliding[..VIP_PROBES as usize] {
        h.set_vip(key(a), entry).unwrap();
    }
    let err = h
        .set_vip(key(&colliding[VIP_PROBES as usize]), entry)
        .unwrap_err();
    assert!(err.to_string().contains("no free slot"), "{err}");
    // Every placed entry is found wherever it landed: a truncated packet to it is dropped.
    let truncated = |a: &Ipv4Addr| {
        let ip = V4::new(CLIENT4, *a, 6).packet(&tcp(1, 80, TCP_SYN, b""));
        eth4(&ip[..ip.len() - 1])
    };
    for a in &colliding[..VIP_PROBES as usize] {
        let (got, model) = h.run(&truncated(a)).unwrap();
        assert_eq!(got.action, ExitReason::DropMalformed.action(), "{a}");
        assert_eq!(model.reason, ExitReason::DropMalformed);
    }
    // Freeing one makes room; the fifth is then found, the freed one no longer.
    h.remove_vip(key(&colliding[1])).unwrap();
    h.set_vip(key(&colliding[VIP_PROBES as usize]), entry)
        .unwrap();
    let (got, _) = h.run(&truncated(&colliding[VIP_PROBES as usize])).unwrap();
    assert_eq!(got.action, ExitReason::DropMalformed.action());
    let (got, _) = h.run(&truncated(&colliding[1])).unwrap();
    assert_eq!(got.action, ExitReason::PassNotVip.action());
    // Changing a value moves the entry without a gap and both sides agree.
    let svc = lb_tests::xdp::standard_services().unwrap().remove(5);
    h.set_vip(
        svc.key,
        VipValue {
            id: svc.id,
            flags: lb_common::datapath::VIP_F_HASH_SRC_ADDR,
        },
    )
    .unwrap();
    let live: Vec<_> = h.dp.vips().unwrap();
    assert_eq!(
        live.iter().filter(|(k, _)| *k == svc.key).count(),
        1,
        "one live entry per key after a value change"
    );
    for port in 1000..1020 {
        gateway_of(&mut h, &frames::tcp4(CLIENT4, port, VIP_SPLIT, 80, TCP_SYN));
    }
    h.check_counters().unwrap();
    h.check_flows().unwrap();
}

/// Sets this node's MTU in the program and the model (the standard node otherwise).
fn set_mtu(h: &mut Harness, mtu: u16) {
    use lb_common::datapath::{NODE_F_V4, NODE_F_V6, NodeConfig};
    h.set_node(NodeConfig {
        flags: NODE_F_V4 | NODE_F_V6,
        addr4: NODE4.octets(),
        addr6: NODE6.octets(),
        mac: frames::NODE_MAC,
        mtu,
    })
    .unwrap();
}

/// Runs `input`, which must be answered with an ICMP error; checks what the program and
/// the model agree on and returns the parsed reply.
fn too_big_reply(h: &mut Harness, what: &str, input: &[u8]) -> Vec<u8> {
    let (got, model) = h.run(input).unwrap();
    assert_eq!(model.reason, ExitReason::IcmpTooBig, "{what}: the model");
    assert_eq!(
        got.action,
        ExitReason::IcmpTooBig.action(),
        "{what}: verdict"
    );
    assert_eq!(
        hex(&got.frame),
        hex(&model.frame),
        "{what}: program vs model"
    );
    // Back to the sender: the MACs swapped.
    assert_eq!(got.frame[0..6], input[6..12], "{what}: destination MAC");
    assert_eq!(got.frame[6..12], input[0..6], "{what}: source MAC");
    got.frame
}

#[test]
fn packets_too_big_for_the_mtu_are_answered_with_icmp() {
    use etherparse::{
        Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, NetHeaders, PacketHeaders,
        TransportHeader, icmpv4::DestUnreachableHeader,
    };
    if !require_root("packets_too_big_for_the_mtu_are_answered_with_icmp") {
        return;
    }
    let mut h = harness();
    set_mtu(&mut h, 1400);
    let body = vec![0x5a; 1400];

    // IPv4 with DF, tagged and with options: "fragmentation needed" with MTU 1400 - 20,
    // quoting the IP header (24 bytes) and 8 bytes.
    let mut ip = V4::new(CLIENT4, VIP_SPLIT, 6);
    ip.df = true;
    ip.options = vec![1, 1, 1, 1];
    let inner = ip.packet(&tcp(40000, 80, TCP_ACK, &body));
    let input = ethernet(Some(42), 0x0800, &inner);
    let reply = too_big_reply(&mut h, "IPv4 DF", &input);
    let headers = PacketHeaders::from_ethernet_slice(&reply).unwrap();
    let Some(NetHeaders::Ipv4(ip4, _)) = &headers.net else {
        panic!("not IPv4: {headers:?}")
    };
    assert_eq!(ip4.source, VIP_SPLIT.octets());
    assert_eq!(ip4.destination, CLIENT4.octets());
    assert_eq!(ip4.header_checksum, ip4.calc_header_checksum());
    assert_eq!(ip4.time_to_live, 64);
    let Some(TransportHeader::Icmpv4(icmp)) = &headers.transport else {
        panic!("not ICMP: {headers:?}")
    };
    assert_eq!(
        icmp.icmp_type,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1380
        })
    );
    let quote = headers.payload.slice();
    assert_eq!(quote, &inner[..24 + 8], "the quote");
    assert_eq!(
        icmp.checksum,
        Icmpv4Header::with_checksum(icmp.icmp_type.clone(), quote).checksum
    );
    assert_eq!(reply.len(), 18 + 20 + 8 + 32);
    assert!(
        matches!(headers.link, Some(etherparse::LinkHeader::Ethernet2(_))),
        "{headers:?}"
    );

    // IPv4 without DF: dropped (the data path cannot fragment).
    let mut ip = V4::new(CLIENT4, VIP_SPLIT, 6);
    ip.df = false;
    let input = eth4(&ip.packet(&tcp(40000, 80, TCP_ACK, &body)));
    check(
        &mut h,
        &case("IPv4 without DF", input, ExitReason::DropTooBig, Out::Same),
    );
    // A packet that fits is encapsulated as ever.
    let mut ip = V4::new(CLIENT4, VIP_SPLIT, 6);
    ip.df = true;
    let fits = ip.packet(&tcp(40000, 80, TCP_ACK, &body[..1340]));
    let (got, _) = h.run(&eth4(&fits)).unwrap();
    assert_eq!(got.action, ExitReason::Tx.action(), "1380 + 20 bytes fit");

    // IPv6: "packet too big" with MTU 1400 - 40, quoting 1232 bytes, checksum over the
    // pseudo-header.
    let inner = ipv6(CLIENT6, VIP6, 6, 0, 0, &tcp(40000, 8080, TCP_ACK, &body));
    let input = eth6(&inner);
    let reply = too_big_reply(&mut h, "IPv6", &input);
    let headers = PacketHeaders::from_ethernet_slice(&reply).unwrap();
    let Some(NetHeaders::Ipv6(ip6, _)) = &headers.net else {
        panic!("not IPv6: {headers:?}")
    };
    assert_eq!(ip6.source, VIP6.octets());
    assert_eq!(ip6.destination, CLIENT6.octets());
    assert_eq!(ip6.hop_limit, 64);
    let Some(TransportHeader::Icmpv6(icmp)) = &headers.transport else {
        panic!("not ICMPv6: {headers:?}")
    };
    assert_eq!(icmp.icmp_type, Icmpv6Type::PacketTooBig { mtu: 1360 });
    let quote = headers.payload.slice();
    assert_eq!(quote, &inner[..1232], "the quote");
    assert_eq!(
        icmp.checksum,
        Icmpv6Header::with_checksum(icmp.icmp_type, ip6.source, ip6.destination, quote)
            .unwrap()
            .checksum
    );
    assert_eq!(reply.len(), 14 + 40 + 8 + 1232);

    // An MTU below what IPv6 allows counts as 1320: a 1300-byte packet still goes through,
    // a bigger one gets "packet too big" with 1280.
    set_mtu(&mut h, 1000);
    let fits = ipv6(
        CLIENT6,
        VIP6,
        6,
        0,
        0,
        &tcp(40000, 8080, TCP_ACK, &body[..1220]),
    );
    let (got, _) = h.run(&eth6(&fits)).unwrap();
    assert_eq!(got.action, ExitReason::Tx.action());
    let reply = too_big_reply(&mut h, "IPv6 at 1280", &input);
    let headers = PacketHeaders::from_ethernet_slice(&reply).unwrap();
    let Some(TransportHeader::Icmpv6(icmp)) = &headers.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!(icmp.icmp_type, Icmpv6Type::PacketTooBig { mtu: 1280 });
    h.check_counters().unwrap();
    h.check_flows().unwrap();
}

/// The benchmark's helper programs do what the report says they measure: the floor returns
/// XDP_TX and touches nothing; the memory probe reads the line its frame names (XDP_TX) and
/// refuses an index past its map (XDP_DROP), so a wrong setup stops the benchmark instead
/// of timing nothing. (Test runs refuse frames shorter than an Ethernet header, so the
/// probe's too-short-frame check cannot be reached from here.)
#[test]
fn benchmark_floor_and_memory_probe() {
    if !require_root("benchmark_floor_and_memory_probe") {
        return;
    }
    use lb_userspace::dataplane::{HelperPrograms, MemoryProbe};
    let tx = ExitReason::Tx.action();
    let drop = 1; // XDP_DROP
    let frame = v4tcp(CLIENT4, 40000, VIP_SPLIT, 80, TCP_ACK);
    let helpers = HelperPrograms::load().unwrap();
    let out = helpers.floor_run(&frame).unwrap();
    assert_eq!((out.action, out.frame), (tx, frame.clone()));

    let probe = MemoryProbe::load(4096).unwrap();
    assert_eq!(probe.lines(), 4096);
    for line in [0, 1, 2047, 4095] {
        let f = probe.frame(line).unwrap();
        let out = probe.run(&f).unwrap();
        assert_eq!((out.action, &out.frame), (tx, &f), "line {line}");
    }
    assert!(probe.frame(4096).is_err(), "an index past the map");
    let mut past = probe.frame(0).unwrap();
    past[..4].copy_from_slice(&4096u32.to_ne_bytes());
    assert_eq!(probe.run(&past).unwrap().action, drop, "index past the map");
}

/// Rings are stored 32 slots of 16 bits to a map entry: whatever a ring holds (ids up to
/// the last gateway, "no gateway" slots, a last entry that is one slot long) reads back the
/// same; a rewrite reports the slots that changed; a ring naming an id the data path
/// cannot hold is refused and the ring in use stays.
#[test]
fn rings_read_back_as_written() {
    if !require_root("rings_read_back_as_written") {
        return;
    }
    use lb_common::datapath::{MAX_GATEWAYS, NO_GATEWAY};
    let mut h = harness();
    let vip_id = 5;
    let mut ring: Vec<u32> = (0..RING_SIZE).map(|i| (i * 7919) % MAX_GATEWAYS).collect();
    for i in (0..RING_SIZE as usize).step_by(97) {
        ring[i] = NO_GATEWAY;
    }
    ring[RING_SIZE as usize - 1] = MAX_GATEWAYS - 1;
    h.write_ring(vip_id, &ring).unwrap();
    assert_eq!(h.dp.active_ring(vip_id).unwrap(), ring);
    // The other copy held the standard ring: written again, three slots differ from it.
    h.write_ring(vip_id, &ring).unwrap();
    let mut next = ring.clone();
    next[0] = 3;
    next[31] = NO_GATEWAY;
    next[RING_SIZE as usize - 1] = 0;
    assert_eq!(h.dp.write_ring(vip_id, &next).unwrap(), 3);
    assert_eq!(h.dp.active_ring(vip_id).unwrap(), next);

    let mut bad = next.clone();
    bad[100] = MAX_GATEWAYS;
    let e = h.dp.write_ring(vip_id, &bad).unwrap_err().to_string();
    assert!(e.contains("gateway id in a ring 1024"), "{e}");
    assert_eq!(h.dp.active_ring(vip_id).unwrap(), next);
}
