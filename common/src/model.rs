//! The reference model of the XDP data path: the specification of what `lb_xdp` does to a
//! frame, written as plain Rust over a byte slice and a copy of the map contents.
//!
//! The XDP program (`lb-ebpf/src/path.rs`) follows the same steps in the same order; the
//! differential test (`lb-userspace/tests/xdp_differential.rs`) runs 100,000+ random and
//! mutated frames through both and requires the same verdict, the same output bytes and
//! the same counters. When the two disagree, this file says which one is right.
//!
//! # The steps
//!
//! 1. **Ethernet.** Shorter than 14 bytes, or an EtherType other than IPv4/IPv6 (after at
//!    most one 802.1Q tag): `pass_not_ip`.
//! 2. **IP header.** Too short to hold the fixed header (20 / 40 bytes): `pass_not_vip`
//!    (the destination cannot even be read). A bad version, IHL below 5, a total length
//!    below the header or beyond the frame (IPv6: payload beyond the frame): the packet is
//!    malformed, see *malformed* below. Frames longer than the IP packet (Ethernet padding)
//!    are fine and keep their trailing bytes.
//! 3. **Encapsulated** (IPv4 protocol 4 / IPv6 next header 41): if the outer destination is
//!    this node, the outer header is not fragmented, and the inner header is a whole header
//!    of the same family whose destination is a VIP address: the outer header is removed
//!    (the Ethernet header, with any VLAN tag, moves up) and the packet is passed: `decap`.
//!    Anything else: `pass_encap_other`, untouched.
//! 4. **IPv4 fragments** (MF set or offset non-zero): `pass_fragment` when the destination
//!    is a VIP address (the stack reassembles; the data path does not), else
//!    `pass_not_vip`. **IPv6 extension headers** ([`is_ipv6_extension`]): `pass_ipv6_ext`
//!    when the destination is a VIP address, else `pass_not_vip`.
//! 5. **ICMP errors** addressed to a VIP address (IPv4 type 3, destination unreachable including fragmentation
//!    needed; ICMPv6 type 1 unreachable and 2 packet too big) that quote a TCP/UDP packet
//!    *from* a VIP service (the gateway's reply, sent with the VIP as source): the quoted
//!    packet is turned around into the client's flow key, the flow's gateway is found as
//!    for data (connection table, else the ring, without recording) and the whole ICMP
//!    packet is sent to it (`icmp_forwarded`, or `local` if that is this node). Any other
//!    ICMP, or a quote too short to hold the quoted IP header plus 8 bytes:
//!    `pass_not_vip`.
//! 6. **TCP/UDP.** A transport header that does not fit in the IP packet (TCP: 20 bytes and
//!    a data offset of 5..=15 words inside the packet; UDP: 8 bytes and a UDP length of 8 up
//!    to the IP payload): malformed. Otherwise the (destination, port, protocol) is looked up
//!    in `VIPS`; no entry: `pass_not_vip`. Other protocols: `pass_not_vip`.
//! 7. **Flow.** Per-VIP counters count the packet. Unless the VIP has
//!    [`VIP_F_NO_CONNTRACK`] or the packet is a TCP SYN without ACK, the connection table of
//!    the packet's family is consulted (IPv4: `FLOWS4` under [`FlowKey::words4`]; IPv6:
//!    `FLOWS6` under [`FlowKey::words6`]; a [`FlowTable`] each: the bucket of the key's
//!    [`flow_table_hash`], an entry whose key and check byte match, which the hit marks
//!    referenced, [`flow_lookup`]); a hit whose gateway is still `VALID` keeps that gateway. Otherwise the gateway is
//!    `ring[flow_hash % RING_SIZE]` of the VIP's active ring copy ([`flow_hash`] of the
//!    [`FlowKey`], either family); it must be a `VALID` gateway (else `drop_no_gateway`);
//!    the VIP's `new_flows` counts it and the flow is recorded in its family's table
//!    (unless `NO_CONNTRACK`) as [`flow_record`] says: over its own entry (a SYN of a reused
//!    5-tuple re-picks its gateway), else in the first free one, else over the entry second
//!    chance picks, evicting that flow.
//! 8. **Forward.** A `LOCAL` gateway: `local` (passed untouched). Otherwise the packet is encapsulated ([`outer_ipv4`] /
//!    [`outer_ipv6`]) behind a new Ethernet header (destination = the gateway's next-hop
//!    MAC, source = this node's MAC, the input's VLAN tag kept) and transmitted: `tx`.
//!    A family that this node or the gateway has no address for: `drop_no_gateway`.
//!    The gateway's counters count `local` and `tx` packets.
//! 9. **Too big.** When the node has an MTU (`NodeConfig::mtu`, not 0) and the frame's L3
//!    bytes plus the outer header would exceed it: a forwarded ICMP error, or an IPv4
//!    packet without DF, is dropped (`drop_too_big`). Otherwise the sender is told, from
//!    the VIP, back out of the same interface (`icmp_too_big`; MACs swapped, the VLAN tag
//!    kept): IPv4 an ICMP "fragmentation needed" (type 3 code 4, RFC 792/1191) with the
//!    next-hop MTU `mtu - 20`, quoting the IP header and 8 bytes; IPv6 an ICMPv6 "packet
//!    too big" (RFC 4443 3.2) with MTU `max(mtu, 1320) - 40` (never below 1280; for IPv6
//!    the limit itself is `max(mtu, 1320)`), quoting the first [`PTB_QUOTE`] bytes of the
//!    packet. TTL / hop limit 64, DSCP 0.
//!
//! *Malformed*: when the destination address is a VIP address (an address entry exists),
//! `drop_malformed`; else `pass_not_vip` (not ours to judge).
//!
//! Every packet bumps exactly one exit-reason counter by one packet and its input length.
//! Checksums of the input are not verified (the receiving kernel does); the data path never
//! changes a byte of the inner packet, so it cannot make a good checksum bad.
use std::collections::HashMap;

use crate::{
    ExitReason, StatCounter,
    datapath::{
        DEFAULT_FLOW_TABLE_SIZE, ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, FAMILY_V4, FAMILY_V6,
        FLOW_WAYS, FlowKey, FlowKey4, FlowValue, GW_F_LOCAL, GW_F_V4, GW_F_V6, GW_F_VALID,
        GatewayValue, IPV4_HLEN, IPV6_HLEN, IPV6_MIN_MTU, MAX_GATEWAYS, MAX_VIPS, NO_GATEWAY,
        NODE_F_V4, NODE_F_V6, NodeConfig, OUTER_TTL, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP,
        PROTO_IPV6, PROTO_TCP, PROTO_UDP, PTB_QUOTE, RING_SIZE, VIP_F_NO_CONNTRACK, VipKey,
        VipStats, VipValue, checksum_fold, flow_bucket, flow_buckets, flow_entry4_decode,
        flow_entry6_decode, flow_hash, flow_lookup, flow_record, flow_table_hash,
        is_ipv6_extension, outer_ipv4, outer_ipv6, ring_index, v4_field, v4_of,
    },
};

/// What the model did with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reason: ExitReason,
    /// The frame as the program leaves it (the input when untouched).
    pub frame: Vec<u8>,
}

/// A connection table as the program keeps it (`FLOWS4` with `N` = 2 key words, `FLOWS6`
/// with 5; see the connection tables in [`crate::datapath`]): buckets of [`FLOW_WAYS`]
/// entries, kept sparse (a bucket never written is all free, as the kernel's zero-filled
/// array).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowTable<const N: usize> {
    buckets: u32,
    slots: HashMap<u32, [[u64; N]; FLOW_WAYS]>,
}

impl<const N: usize> FlowTable<N> {
    /// An empty table sized for `flows` entries, as the loader sizes the program's.
    pub fn new(flows: u32) -> Self {
        FlowTable {
            buckets: flow_buckets(flows),
            slots: HashMap::new(),
        }
    }

    /// The number of buckets.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The gateway recorded for the flow with key words `key`, without marking its entry
    /// referenced (for tests and diagnostics; the data path uses [`FlowTable::lookup`]).
    pub fn find(&self, key: &[u64; N]) -> Option<u32> {
        let hash = flow_table_hash(key);
        let mut bucket = *self.slots.get(&flow_bucket(hash, self.buckets))?;
        flow_lookup(&mut bucket, key, hash)
    }

    /// The data path's lookup: the gateway recorded for the flow with key words `key`,
    /// marking its entry referenced (see [`flow_lookup`]).
    pub fn lookup(&mut self, key: &[u64; N]) -> Option<u32> {
        let hash = flow_table_hash(key);
        let bucket = self.slots.get_mut(&flow_bucket(hash, self.buckets))?;
        flow_lookup(bucket, key, hash)
    }

    /// Records the flow with key words `key` on gateway `gw` (see [`flow_record`]).
    pub fn record(&mut self, key: &[u64; N], gw: u32) {
        let hash = flow_table_hash(key);
        let bucket = self
            .slots
            .entry(flow_bucket(hash, self.buckets))
            .or_insert([[0; N]; FLOW_WAYS]);
        flow_record(bucket, key, hash, gw);
    }

    /// The entries in use, with their bucket numbers.
    pub fn entries(&self) -> impl Iterator<Item = (u32, &[u64; N])> {
        self.slots.iter().flat_map(|(b, ways)| {
            ways.iter()
                .filter(|e| (e[N - 1] >> 32) & 0xff != 0)
                .map(move |e| (*b, e))
        })
    }

    /// The number of flows held.
    pub fn len(&self) -> usize {
        self.entries().count()
    }

    /// Whether no flow is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FlowTable<2> {
    /// The IPv4 flows held, by their keys.
    pub fn flows(&self) -> HashMap<FlowKey4, FlowValue> {
        self.entries()
            .filter_map(|(_, e)| flow_entry4_decode(e))
            .collect()
    }
}

impl FlowTable<5> {
    /// The IPv6 flows held, by their keys (family [`FAMILY_V6`]).
    pub fn flows(&self) -> HashMap<FlowKey, FlowValue> {
        self.entries()
            .filter_map(|(_, e)| flow_entry6_decode(e))
            .collect()
    }
}

/// The contents of the data-path maps, and the model's processing of a frame against them.
///
/// Maps that are arrays in the kernel are zero-filled here as there: an unwritten ring slot
/// names gateway 0, an unwritten gateway has no flags (not `VALID`).
#[derive(Clone, Debug)]
pub struct Model {
    pub node: NodeConfig,
    pub vips: HashMap<VipKey, VipValue>,
    /// `RING_SELECT`, `MAX_VIPS` entries.
    pub ring_select: Vec<u32>,
    /// `RINGS`: sparse; slots not present are 0.
    pub rings: HashMap<u32, u32>,
    /// `GATEWAYS`, `MAX_GATEWAYS` entries.
    pub gateways: Vec<GatewayValue>,
    /// `FLOWS4`, the IPv4 connection table (evicting as the program's does).
    pub flows4: FlowTable<2>,
    /// `FLOWS6`, the IPv6 connection table.
    pub flows6: FlowTable<5>,
    pub exit_stats: [StatCounter; ExitReason::COUNT as usize],
    pub vip_stats: Vec<VipStats>,
    pub gateway_stats: Vec<StatCounter>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            node: NodeConfig::default(),
            vips: HashMap::new(),
            ring_select: vec![0; MAX_VIPS as usize],
            rings: HashMap::new(),
            gateways: vec![GatewayValue::default(); MAX_GATEWAYS as usize],
            flows4: FlowTable::new(DEFAULT_FLOW_TABLE_SIZE),
            flows6: FlowTable::new(DEFAULT_FLOW_TABLE_SIZE),
            exit_stats: [StatCounter::default(); ExitReason::COUNT as usize],
            vip_stats: vec![VipStats::default(); MAX_VIPS as usize],
            gateway_stats: vec![StatCounter::default(); MAX_GATEWAYS as usize],
        }
    }
}

/// Bounds-checked reads of the frame.
struct Frame<'a>(&'a [u8]);

impl Frame<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn u8(&self, off: usize) -> u8 {
        self.0.get(off).copied().unwrap_or(0)
    }
    fn be16(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.u8(off), self.u8(off + 1)])
    }
    fn a2(&self, off: usize) -> [u8; 2] {
        [self.u8(off), self.u8(off + 1)]
    }
    fn a4(&self, off: usize) -> [u8; 4] {
        [
            self.u8(off),
            self.u8(off + 1),
            self.u8(off + 2),
            self.u8(off + 3),
        ]
    }
    fn a16(&self, off: usize) -> [u8; 16] {
        let mut a = [0u8; 16];
        for (i, b) in a.iter_mut().enumerate() {
            *b = self.u8(off + i);
        }
        a
    }
}

/// Where the IP header is and what it says; the common part of both families.
#[derive(Clone, Copy)]
struct Ip {
    family: u8,
    /// Offset of the transport header.
    l4: usize,
    /// Offset just past the IP packet.
    end: usize,
    src: [u8; 16],
    dst: [u8; 16],
}

enum Step {
    Done(ExitReason),
    /// Forward the packet whose IP header is at `l3` to gateway `gw`.
    Forward {
        gw: u32,
        icmp: bool,
    },
}

impl Model {
    /// An empty model whose connection tables are sized for `flows` entries each, as the
    /// loader sizes the program's (`LoadOptions::flow_table_size`).
    pub fn with_flow_table_size(flows: u32) -> Self {
        Model {
            flows4: FlowTable::new(flows),
            flows6: FlowTable::new(flows),
            ..Model::default()
        }
    }

    /// Writes VIP `id`'s ring copy `select` (`ring.len()` must be [`RING_SIZE`]).
    pub fn set_ring(&mut self, vip_id: u32, select: u32, ring: &[u32]) {
        for (slot, gw) in ring.iter().enumerate() {
            let idx = (vip_id * 2 + (select & 1)) * RING_SIZE + slot as u32;
            if *gw == 0 {
                self.rings.remove(&idx);
            } else {
                self.rings.insert(idx, *gw);
            }
        }
    }

    /// Runs one frame through the data path.
    pub fn process(&mut self, input: &[u8]) -> Outcome {
        let f = Frame(input);
        let mut out = input.to_vec();
        let reason = match self.classify(&f) {
            Step::Done(r) => r,
            Step::Forward { gw, icmp } => self.forward(&f, gw, icmp, &mut out),
        };
        if reason == ExitReason::Decap {
            out = self.decap(&f);
        }
        let c = &mut self.exit_stats[reason as usize];
        c.packets += 1;
        c.bytes += input.len() as u64;
        Outcome { reason, frame: out }
    }

    fn is_vip_addr(&self, family: u8, addr: [u8; 16]) -> bool {
        self.vips.contains_key(&VipKey::address(family, addr))
    }

    fn malformed(&self, family: u8, dst: [u8; 16]) -> Step {
        if self.is_vip_addr(family, dst) {
            Step::Done(ExitReason::DropMalformed)
        } else {
            Step::Done(ExitReason::PassNotVip)
        }
    }

    fn l3(f: &Frame) -> Option<(u16, usize)> {
        if f.len() < ETH_HLEN {
            return None;
        }
        let proto = f.be16(12);
        if proto == ETH_P_8021Q {
            if f.len() < ETH_HLEN + 4 {
                return None;
            }
            return Some((f.be16(16), ETH_HLEN + 4));
        }
        Some((proto, ETH_HLEN))
    }

    fn classify(&mut self, f: &Frame) -> Step {
        let Some((proto, l3)) = Self::l3(f) else {
            return Step::Done(ExitReason::PassNotIp);
        };
        match proto {
            ETH_P_IP => self.ipv4(f, l3),
            ETH_P_IPV6 => self.ipv6(f, l3),
            _ => Step::Done(ExitReason::PassNotIp),
        }
    }

    fn ipv4(&mut self, f: &Frame, l3: usize) -> Step {
        if f.len() < l3 + IPV4_HLEN {
            return Step::Done(ExitReason::PassNotVip);
        }
        let dst = v4_field(f.a4(l3 + 16));
        let vhl = f.u8(l3);
        let ihl = usize::from(vhl & 0x0f) * 4;
        let total = usize::from(f.be16(l3 + 2));
        if vhl >> 4 != 4 || ihl < IPV4_HLEN || total < ihl || l3 + total > f.len() {
            return self.malformed(FAMILY_V4, dst);
        }
        let ip = Ip {
            family: FAMILY_V4,
            l4: l3 + ihl,
            end: l3 + total,
            src: v4_field(f.a4(l3 + 12)),
            dst,
        };
        let proto = f.u8(l3 + 9);
        let fragmented = f.be16(l3 + 6) & 0x3fff != 0;
        if proto == PROTO_IPIP {
            return Step::Done(self.decap_check(f, &ip, fragmented));
        }
        if fragmented {
            return Step::Done(if self.is_vip_addr(FAMILY_V4, dst) {
                ExitReason::PassFragment
            } else {
                ExitReason::PassNotVip
            });
        }
        match proto {
            PROTO_ICMP => self.icmp(f, &ip),
            PROTO_TCP | PROTO_UDP => self.transport(f, &ip, proto),
            _ => Step::Done(ExitReason::PassNotVip),
        }
    }

    fn ipv6(&mut self, f: &Frame, l3: usize) -> Step {
        if f.len() < l3 + IPV6_HLEN {
            return Step::Done(ExitReason::PassNotVip);
        }
        let dst = f.a16(l3 + 24);
        let payload = usize::from(f.be16(l3 + 4));
        if f.u8(l3) >> 4 != 6 || l3 + IPV6_HLEN + payload > f.len() {
            return self.malformed(FAMILY_V6, dst);
        }
        let ip = Ip {
            family: FAMILY_V6,
            l4: l3 + IPV6_HLEN,
            end: l3 + IPV6_HLEN + payload,
            src: f.a16(l3 + 8),
            dst,
        };
        let nh = f.u8(l3 + 6);
        match nh {
            PROTO_IPV6 => Step::Done(self.decap_check(f, &ip, false)),
            PROTO_ICMPV6 => self.icmp(f, &ip),
            PROTO_TCP | PROTO_UDP => self.transport(f, &ip, nh),
            _ if is_ipv6_extension(nh) => Step::Done(if self.is_vip_addr(FAMILY_V6, dst) {
                ExitReason::PassIpv6Ext
            } else {
                ExitReason::PassNotVip
            }),
            _ => Step::Done(ExitReason::PassNotVip),
        }
    }

    /// Step 3: whether an encapsulated packet is for this node and a VIP.
    fn decap_check(&self, f: &Frame, ip: &Ip, fragmented: bool) -> ExitReason {
        let inner = ip.l4;
        let ours = if ip.family == FAMILY_V4 {
            self.node.flags & NODE_F_V4 != 0
                && v4_of(&ip.dst) == self.node.addr4
                && !fragmented
                && inner + IPV4_HLEN <= ip.end
                && f.u8(inner) >> 4 == 4
                && self.is_vip_addr(FAMILY_V4, v4_field(f.a4(inner + 16)))
        } else {
            self.node.flags & NODE_F_V6 != 0
                && ip.dst == self.node.addr6
                && inner + IPV6_HLEN <= ip.end
                && f.u8(inner) >> 4 == 6
                && self.is_vip_addr(FAMILY_V6, f.a16(inner + 24))
        };
        if ours {
            ExitReason::Decap
        } else {
            ExitReason::PassEncapOther
        }
    }

    /// The decapsulated frame: Ethernet header (with any VLAN tag), then the inner packet.
    fn decap(&self, f: &Frame) -> Vec<u8> {
        let Some((proto, l3)) = Self::l3(f) else {
            return f.0.to_vec();
        };
        let outer = if proto == ETH_P_IP {
            usize::from(f.u8(l3) & 0x0f) * 4
        } else {
            IPV6_HLEN
        };
        let mut out = f.0[..l3].to_vec();
        out.extend_from_slice(&f.0[l3 + outer..]);
        out
    }

    /// Step 5.
    fn icmp(&mut self, f: &Frame, ip: &Ip) -> Step {
        let l4 = ip.l4;
        if l4 + 8 > ip.end || !self.is_vip_addr(ip.family, ip.dst) {
            return Step::Done(ExitReason::PassNotVip);
        }
        let ty = f.u8(l4);
        let q = l4 + 8;
        let quoted = if ip.family == FAMILY_V4 {
            if ty != 3 || q + IPV4_HLEN > ip.end {
                return Step::Done(ExitReason::PassNotVip);
            }
            let vhl = f.u8(q);
            if vhl >> 4 != 4 || vhl & 0x0f < 5 {
                return Step::Done(ExitReason::PassNotVip);
            }
            Ip {
                family: FAMILY_V4,
                l4: q + usize::from(vhl & 0x0f) * 4,
                end: ip.end,
                src: v4_field(f.a4(q + 12)),
                dst: v4_field(f.a4(q + 16)),
            }
        } else {
            if (ty != 1 && ty != 2) || q + IPV6_HLEN > ip.end || f.u8(q) >> 4 != 6 {
                return Step::Done(ExitReason::PassNotVip);
            }
            Ip {
                family: FAMILY_V6,
                l4: q + IPV6_HLEN,
                end: ip.end,
                src: f.a16(q + 8),
                dst: f.a16(q + 24),
            }
        };
        let qproto = if ip.family == FAMILY_V4 {
            f.u8(q + 9)
        } else {
            f.u8(q + 6)
        };
        if (qproto != PROTO_TCP && qproto != PROTO_UDP) || quoted.l4 + 8 > ip.end {
            return Step::Done(ExitReason::PassNotVip);
        }
        let qsport = f.a2(quoted.l4);
        let qdport = f.a2(quoted.l4 + 2);
        let Some(vip) = self
            .vips
            .get(&VipKey {
                addr: quoted.src,
                port: qsport,
                proto: qproto,
                family: ip.family,
            })
            .copied()
        else {
            return Step::Done(ExitReason::PassNotVip);
        };
        // The client's flow, as the client sent it.
        let key = FlowKey {
            src: quoted.dst,
            dst: quoted.src,
            sport: qdport,
            dport: qsport,
            proto: qproto,
            family: ip.family,
            _pad: [0; 2],
        };
        let mut gw = NO_GATEWAY;
        if vip.flags & VIP_F_NO_CONNTRACK == 0 {
            gw = self.lookup_flow(&key);
        }
        if gw == NO_GATEWAY {
            gw = self.ring_pick(&vip, &key);
            if !self.gateway_valid(gw) {
                return Step::Done(ExitReason::DropNoGateway);
            }
        }
        Step::Forward { gw, icmp: true }
    }

    /// The entry of `key`'s flow in the connection table of its family.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        let gateway = if key.family == FAMILY_V4 {
            self.flows4.find(&key.words4())
        } else {
            self.flows6.find(&key.words6())
        }?;
        Some(FlowValue { gateway })
    }

    /// Records `key`'s flow in the connection table of its family (replacing any entry).
    fn record_flow(&mut self, key: &FlowKey, value: FlowValue) {
        if key.family == FAMILY_V4 {
            self.flows4.record(&key.words4(), value.gateway);
        } else {
            self.flows6.record(&key.words6(), value.gateway);
        }
    }

    /// Flows in both connection tables.
    pub fn flow_count(&self) -> usize {
        self.flows4.len() + self.flows6.len()
    }

    /// The connection table's gateway for `key` while that gateway is still `VALID`,
    /// else [`NO_GATEWAY`]. A hit marks the entry referenced, valid gateway or not.
    fn lookup_flow(&mut self, key: &FlowKey) -> u32 {
        let gw = if key.family == FAMILY_V4 {
            self.flows4.lookup(&key.words4())
        } else {
            self.flows6.lookup(&key.words6())
        };
        match gw {
            Some(gw) if self.gateway_valid(gw) => gw,
            _ => NO_GATEWAY,
        }
    }

    fn gateway_valid(&self, gw: u32) -> bool {
        self.gateways
            .get(gw as usize)
            .is_some_and(|g| g.flags & GW_F_VALID != 0)
    }

    fn ring_pick(&self, vip: &VipValue, key: &FlowKey) -> u32 {
        let Some(select) = self.ring_select.get(vip.id as usize) else {
            return NO_GATEWAY;
        };
        let idx = ring_index(vip.id, *select, flow_hash(key, vip.flags));
        self.rings.get(&idx).copied().unwrap_or(0)
    }

    /// Steps 6 and 7.
    fn transport(&mut self, f: &Frame, ip: &Ip, proto: u8) -> Step {
        let l4 = ip.l4;
        let ok = if proto == PROTO_TCP {
            l4 + 20 <= ip.end && {
                let doff = usize::from(f.u8(l4 + 12) >> 4) * 4;
                doff >= 20 && l4 + doff <= ip.end
            }
        } else {
            l4 + 8 <= ip.end && {
                let ulen = usize::from(f.be16(l4 + 4));
                ulen >= 8 && l4 + ulen <= ip.end
            }
        };
        if !ok {
            return self.malformed(ip.family, ip.dst);
        }
        let sport = f.a2(l4);
        let dport = f.a2(l4 + 2);
        let Some(vip) = self
            .vips
            .get(&VipKey {
                addr: ip.dst,
                port: dport,
                proto,
                family: ip.family,
            })
            .copied()
        else {
            return Step::Done(ExitReason::PassNotVip);
        };
        let len = f.len() as u64;
        if let Some(s) = self.vip_stats.get_mut(vip.id as usize) {
            s.packets += 1;
            s.bytes += len;
        }
        let key = FlowKey {
            src: ip.src,
            dst: ip.dst,
            sport,
            dport,
            proto,
            family: ip.family,
            _pad: [0; 2],
        };
        let tcp_flags = f.u8(l4 + 13);
        let syn = proto == PROTO_TCP && tcp_flags & 0x12 == 0x02;
        let conntrack = vip.flags & VIP_F_NO_CONNTRACK == 0;
        let mut gw = NO_GATEWAY;
        if conntrack && !syn {
            gw = self.lookup_flow(&key);
        }
        if gw == NO_GATEWAY {
            gw = self.ring_pick(&vip, &key);
            if !self.gateway_valid(gw) {
                return Step::Done(ExitReason::DropNoGateway);
            }
            if let Some(s) = self.vip_stats.get_mut(vip.id as usize) {
                s.new_flows += 1;
            }
            if conntrack {
                self.record_flow(&key, FlowValue { gateway: gw });
            }
        }
        Step::Forward { gw, icmp: false }
    }

    fn count_gateway(&mut self, gw: u32, len: usize) {
        if let Some(s) = self.gateway_stats.get_mut(gw as usize) {
            s.packets += 1;
            s.bytes += len as u64;
        }
    }

    /// Step 8.
    fn forward(&mut self, f: &Frame, gw: u32, icmp: bool, out: &mut Vec<u8>) -> ExitReason {
        let g = self.gateways[gw as usize];
        if g.flags & GW_F_LOCAL != 0 {
            self.count_gateway(gw, f.len());
            return ExitReason::Local;
        }
        let Some((proto, l3)) = Self::l3(f) else {
            return ExitReason::Aborted;
        };
        let mut frame = Vec::with_capacity(f.len() + IPV6_HLEN);
        frame.extend_from_slice(&g.mac);
        frame.extend_from_slice(&self.node.mac);
        if l3 > ETH_HLEN {
            frame.extend_from_slice(&f.0[12..16]);
        }
        frame.extend_from_slice(&proto.to_be_bytes());
        if proto == ETH_P_IP {
            if self.node.flags & NODE_F_V4 == 0 || g.flags & GW_F_V4 == 0 {
                return ExitReason::DropNoGateway;
            }
            let mtu = usize::from(self.node.mtu);
            if mtu != 0 && f.len() - l3 + IPV4_HLEN > mtu {
                if icmp || f.u8(l3 + 6) & 0x40 == 0 {
                    return ExitReason::DropTooBig;
                }
                *out = frag_needed(f, l3, mtu.saturating_sub(IPV4_HLEN) as u16);
                return ExitReason::IcmpTooBig;
            }
            let outer = outer_ipv4(
                f.u8(l3 + 1),
                f.be16(l3 + 2),
                f.u8(l3 + 6) & 0x40 != 0,
                self.node.addr4,
                g.addr4,
            );
            frame.extend_from_slice(&outer);
        } else {
            if self.node.flags & NODE_F_V6 == 0 || g.flags & GW_F_V6 == 0 {
                return ExitReason::DropNoGateway;
            }
            // Never below the IPv6 minimum: a smaller configured MTU counts as 1320.
            let mtu = usize::from(self.node.mtu);
            let limit = mtu.max(usize::from(IPV6_MIN_MTU) + IPV6_HLEN);
            if mtu != 0 && f.len() - l3 + IPV6_HLEN > limit {
                if icmp {
                    return ExitReason::DropTooBig;
                }
                *out = packet_too_big(f, l3, (limit - IPV6_HLEN) as u32);
                return ExitReason::IcmpTooBig;
            }
            let outer = outer_ipv6(f.a4(l3), f.be16(l3 + 4), &self.node.addr6, &g.addr6);
            frame.extend_from_slice(&outer);
        }
        frame.extend_from_slice(&f.0[l3..]);
        *out = frame;
        self.count_gateway(gw, f.len());
        if icmp {
            ExitReason::IcmpForwarded
        } else {
            ExitReason::Tx
        }
    }
}

/// The Ethernet header of a reply to `f`: its MACs swapped, its VLAN tag (if any) kept,
/// then `ethertype`.
fn reply_eth(f: &Frame, l3: usize, ethertype: u16) -> Vec<u8> {
    let mut e = Vec::with_capacity(l3);
    e.extend_from_slice(&f.0[6..12]);
    e.extend_from_slice(&f.0[0..6]);
    if l3 > ETH_HLEN {
        e.extend_from_slice(&f.0[12..16]);
    }
    e.extend_from_slice(&ethertype.to_be_bytes());
    e
}

/// The one's-complement sum of `data` as native 32-bit words (`data.len()` a multiple of
/// 4), for [`checksum_fold`].
fn sum_words(data: &[u8]) -> u64 {
    data.chunks(4)
        .map(|c| u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
        .sum()
}

/// ICMP "fragmentation needed" (type 3 code 4) to the sender of the IPv4 packet at `l3`,
/// from its destination (the VIP), quoting its IP header and 8 bytes.
fn frag_needed(f: &Frame, l3: usize, next_hop_mtu: u16) -> Vec<u8> {
    let quote = usize::from(f.u8(l3) & 0x0f) * 4 + 8;
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&next_hop_mtu.to_be_bytes());
    icmp.extend_from_slice(&f.0[l3..l3 + quote]);
    let c = checksum_fold(sum_words(&icmp)).to_ne_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    let total = ((IPV4_HLEN + icmp.len()) as u16).to_be_bytes();
    let mut ip = vec![
        0x45, 0, total[0], total[1], 0, 0, 0, 0, OUTER_TTL, PROTO_ICMP, 0, 0,
    ];
    ip.extend_from_slice(&f.a4(l3 + 16));
    ip.extend_from_slice(&f.a4(l3 + 12));
    let c = checksum_fold(sum_words(&ip)).to_ne_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    let mut out = reply_eth(f, l3, ETH_P_IP);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&icmp);
    out
}

/// ICMPv6 "packet too big" (type 2) to the sender of the IPv6 packet at `l3`, from its
/// destination (the VIP), quoting its first [`PTB_QUOTE`] bytes.
fn packet_too_big(f: &Frame, l3: usize, mtu: u32) -> Vec<u8> {
    let mut icmp = vec![2, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&f.0[l3..l3 + PTB_QUOTE]);
    let (src, dst) = (f.a16(l3 + 24), f.a16(l3 + 8));
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, PROTO_ICMPV6]);
    let c = checksum_fold(sum_words(&pseudo) + sum_words(&icmp)).to_ne_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    let plen = (icmp.len() as u16).to_be_bytes();
    let mut out = reply_eth(f, l3, ETH_P_IPV6);
    out.extend_from_slice(&[0x60, 0, 0, 0, plen[0], plen[1], PROTO_ICMPV6, OUTER_TTL]);
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&icmp);
    out
}
