//! The per-packet decision. It follows the reference model (`lb_common::model`, which
//! documents every step) step for step; the differential test holds the two equal.
//!
//! Every return goes through [`run`]'s single exit, which bumps the counter of its reason,
//! so no exit is uncounted. Reads that fail after the model's bounds checks passed cannot
//! happen (the checks bound them inside the frame); they exist for the verifier and end
//! in `aborted`.
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    ExitReason,
    datapath::{
        AddrWords, ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, FAMILY_V4, FAMILY_V6, FlowKey,
        GW_F_LOCAL, GW_F_V4, GW_F_V6, GW_F_VALID, GatewayValue, IPV4_HLEN, IPV6_HLEN, IPV6_MIN_MTU,
        NO_GATEWAY, NODE_F_V4, NODE_F_V6, NodeConfig, OUTER_TTL, PROTO_ICMP, PROTO_ICMPV6,
        PROTO_IPIP, PROTO_IPV6, PROTO_TCP, PROTO_UDP, PTB_QUOTE, RING_CHUNK_SLOTS,
        VIP_F_NO_CONNTRACK, VIP_PROBES, VIP_SLOT_USED, VIP_TABLE_SLOTS, VipValue, checksum_fold,
        flow_bucket, flow_hash, flow_lookup, flow_record, flow_table_hash, ipv4_checksum_words,
        is_ipv6_extension, ring_entry, ring_slot_gateway, v4_words, vip_filter_bit_words,
        vip_slot_hash_words, vip_tail,
    },
};

use crate::{
    maps::{
        EXIT_STATS, FLOW_BUCKETS, FLOWS4, FLOWS6, GATEWAY_STATS, GATEWAYS, NODE, RING_SELECT,
        RINGS, VIP_FILTER, VIP_STATS, VIPS,
    },
    packet::{Span, be16_at, raw16, raw32, u8_at, v4_addr_at, v6_addr_at},
};

const VLAN_L3: usize = ETH_HLEN + 4;

enum Step {
    Done(ExitReason),
    Forward {
        gw: u32,
        icmp: bool,
    },
    /// Strip `outer` bytes after the Ethernet header of length `l3`.
    Decap {
        l3: usize,
        outer: usize,
    },
}

#[derive(Clone, Copy)]
struct Ip {
    family: u8,
    l4: usize,
    end: usize,
    src: AddrWords,
    dst: AddrWords,
}

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let flen = frame_len(ctx);
    let len = flen as u64;
    // One inlined body: a BPF-to-BPF call costs more than its work here (this machine's
    // kernel returns through a mitigation thunk; three stage calls were 25 ns of a 130 ns
    // hit), and with words instead of byte arrays the whole path fits the 512-byte stack.
    let reason = match classify(ctx, flen) {
        None => ExitReason::Aborted,
        Some(Step::Done(r)) => r,
        Some(Step::Forward { gw, icmp }) => {
            forward(ctx, gw, icmp, len).unwrap_or(ExitReason::Aborted)
        }
        Some(Step::Decap { l3, outer }) => decap(ctx, l3, outer).unwrap_or(ExitReason::Aborted),
    };
    if let Some(c) = EXIT_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot returned by the map; no other writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
    reason.action()
}

/// The prefilter: `false` means no VIP entry has this destination (see
/// [`lb_common::datapath::vip_filter_bit`]); an array lookup, which the verifier inlines.
#[inline(always)]
fn filter_hit(dst: AddrWords) -> bool {
    let bit = vip_filter_bit_words(dst);
    match VIP_FILTER.get(bit >> 6) {
        Some(w) => *w & (1u64 << (bit & 63)) != 0,
        None => true,
    }
}

/// Looks the key with address words `addr` and tail word `tail` (port, protocol, family:
/// [`vip_tail`]) up in the open-addressed `VIPS` table: the [`VIP_PROBES`] slots from its
/// hash, all checked (removal only clears a slot's state, so there is no early stop).
#[inline(always)]
fn vip_lookup(addr: AddrWords, tail: u32) -> Option<VipValue> {
    let v = vip_lookup_raw(addr[0], addr[1], tail);
    if v == u64::MAX {
        None
    } else {
        Some(VipValue {
            id: v as u32,
            flags: (v >> 32) as u32,
        })
    }
}

/// The lookup as one register: `flags << 32 | id`, or `u64::MAX` when not found (an
/// `Option<VipValue>` built inside the loop left an undefined register on the not-found
/// path, which the verifier refuses).
#[inline(always)]
fn vip_lookup_raw(a0: u64, a1: u64, tail: u32) -> u64 {
    let h = vip_slot_hash_words([a0, a1], tail);
    // The key is the three words a slot stores it in (address halves; port, protocol and
    // family); each probe compares them with words loaded from the 8-byte-aligned map
    // value.
    let (k0, k1, k2) = (a0.to_le(), a1.to_le(), tail.to_le());
    let mut i = 0;
    while i < VIP_PROBES {
        if let Some(p) = VIPS.get_ptr((h + i) & (VIP_TABLE_SLOTS - 1)) {
            let w = p.cast::<u64>();
            let d = p.cast::<u32>();
            // SAFETY: `p` points at a whole `VipSlot` (32 bytes, 8-byte aligned as every
            // map value): words 0-1 are the address, u32 4 the port/protocol/family, 5 the
            // id, 6 the flags, 7 the state (see `lb_common::datapath::VipSlot`).
            let (s0, s1, tail, id, flags, state) = unsafe {
                (
                    w.read(),
                    w.add(1).read(),
                    d.add(4).read(),
                    d.add(5).read(),
                    d.add(6).read(),
                    d.add(7).read(),
                )
            };
            if state == VIP_SLOT_USED && s0 == k0 && s1 == k1 && tail == k2 {
                return (u64::from(flags) << 32) | u64::from(id);
            }
        }
        i += 1;
    }
    u64::MAX
}

#[inline(always)]
fn is_vip_addr(family: u8, addr: AddrWords) -> bool {
    vip_lookup(addr, vip_tail(0, 0, family)).is_some()
}

#[inline(always)]
fn malformed(family: u8, dst: AddrWords) -> Step {
    if is_vip_addr(family, dst) {
        Step::Done(ExitReason::DropMalformed)
    } else {
        Step::Done(ExitReason::PassNotVip)
    }
}

/// The frame length, for the logical checks of the model. Hidden from the optimiser:
/// otherwise LLVM derives pointer bounds from checks against it and drops the pointer
/// checks the verifier needs ("invalid access to packet").
#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    core::hint::black_box(ctx.data_end() - ctx.data())
}

#[inline(always)]
fn classify(ctx: &XdpContext, len: usize) -> Option<Step> {
    if len < ETH_HLEN {
        return Some(Step::Done(ExitReason::PassNotIp));
    }
    let mut proto = be16_at(ctx, 12)?;
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q {
        if len < VLAN_L3 {
            return Some(Step::Done(ExitReason::PassNotIp));
        }
        proto = be16_at(ctx, 16)?;
        l3 = VLAN_L3;
    }
    match proto {
        ETH_P_IP => ipv4(ctx, len, l3),
        ETH_P_IPV6 => ipv6(ctx, len, l3),
        _ => Some(Step::Done(ExitReason::PassNotIp)),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, len: usize, l3: usize) -> Option<Step> {
    if len < l3 + IPV4_HLEN {
        return Some(Step::Done(ExitReason::PassNotVip));
    }
    // The fixed header in five loads behind one bounds check.
    let h = Span::<IPV4_HLEN>::at(ctx, l3)?;
    let dst = v4_words(h.get::<u32>(16));
    let proto = h.get::<u32>(8).to_ne_bytes()[1];
    if proto != PROTO_IPIP && !filter_hit(dst) {
        return Some(Step::Done(ExitReason::PassNotVip));
    }
    let w0 = h.get::<u32>(0).to_ne_bytes();
    let vhl = w0[0];
    let ihl = ((vhl & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([w0[2], w0[3]]) as usize;
    if vhl >> 4 != 4 || ihl < IPV4_HLEN || total < ihl || l3 + total > len {
        return Some(malformed(FAMILY_V4, dst));
    }
    let ip = Ip {
        family: FAMILY_V4,
        l4: l3 + ihl,
        end: l3 + total,
        src: v4_words(h.get::<u32>(12)),
        dst,
    };
    let w1 = h.get::<u32>(4).to_ne_bytes();
    let fragmented = u16::from_be_bytes([w1[2], w1[3]]) & 0x3fff != 0;
    if proto == PROTO_IPIP {
        return decap_check(ctx, &ip, l3, ihl, fragmented);
    }
    if fragmented {
        return Some(Step::Done(if is_vip_addr(FAMILY_V4, dst) {
            ExitReason::PassFragment
        } else {
            ExitReason::PassNotVip
        }));
    }
    match proto {
        PROTO_ICMP => icmp(ctx, &ip),
        PROTO_TCP | PROTO_UDP => transport(ctx, &ip, proto, len as u64),
        _ => Some(Step::Done(ExitReason::PassNotVip)),
    }
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, len: usize, l3: usize) -> Option<Step> {
    if len < l3 + IPV6_HLEN {
        return Some(Step::Done(ExitReason::PassNotVip));
    }
    // The fixed header behind one bounds check.
    let h = Span::<IPV6_HLEN>::at(ctx, l3)?;
    let dst = [u64::from_le(h.get(24)), u64::from_le(h.get(32))];
    let w1 = h.get::<u32>(4).to_ne_bytes();
    let nh = w1[2];
    if nh != PROTO_IPV6 && !filter_hit(dst) {
        return Some(Step::Done(ExitReason::PassNotVip));
    }
    let payload = u16::from_be_bytes([w1[0], w1[1]]) as usize;
    if h.get::<u32>(0).to_ne_bytes()[0] >> 4 != 6 || l3 + IPV6_HLEN + payload > len {
        return Some(malformed(FAMILY_V6, dst));
    }
    let ip = Ip {
        family: FAMILY_V6,
        l4: l3 + IPV6_HLEN,
        end: l3 + IPV6_HLEN + payload,
        src: [u64::from_le(h.get(8)), u64::from_le(h.get(16))],
        dst,
    };
    match nh {
        PROTO_IPV6 => decap_check(ctx, &ip, l3, IPV6_HLEN, false),
        PROTO_ICMPV6 => icmp(ctx, &ip),
        PROTO_TCP | PROTO_UDP => transport(ctx, &ip, nh, len as u64),
        _ => Some(Step::Done(
            if is_ipv6_extension(nh) && is_vip_addr(FAMILY_V6, dst) {
                ExitReason::PassIpv6Ext
            } else {
                ExitReason::PassNotVip
            },
        )),
    }
}

#[inline(always)]
fn decap_check(
    ctx: &XdpContext,
    ip: &Ip,
    l3: usize,
    outer: usize,
    fragmented: bool,
) -> Option<Step> {
    let node = NODE.get(0)?;
    let inner = ip.l4;
    let ours = if ip.family == FAMILY_V4 {
        node.flags & NODE_F_V4 != 0
            && ip.dst[0] == u64::from(u32::from_le(addr4_word(&node.addr4)))
            && !fragmented
            && inner + IPV4_HLEN <= ip.end
            && u8_at(ctx, inner)? >> 4 == 4
            && is_vip_addr(FAMILY_V4, v4_addr_at(ctx, inner + 16)?)
    } else {
        let a = addr6_words(&node.addr6);
        node.flags & NODE_F_V6 != 0
            && ip.dst == [u64::from_le(a[0]), u64::from_le(a[1])]
            && inner + IPV6_HLEN <= ip.end
            && u8_at(ctx, inner)? >> 4 == 6
            && is_vip_addr(FAMILY_V6, v6_addr_at(ctx, inner + 24)?)
    };
    Some(if ours {
        Step::Decap { l3, outer }
    } else {
        Step::Done(ExitReason::PassEncapOther)
    })
}

#[inline(always)]
fn gateway_valid(gw: u32) -> bool {
    GATEWAYS.get(gw).is_some_and(|g| g.flags & GW_F_VALID != 0)
}

#[inline(always)]
fn ring_pick(vip: &VipValue, key: &FlowKey) -> u32 {
    let Some(select) = RING_SELECT.get(vip.id) else {
        return NO_GATEWAY;
    };
    let (entry, slot) = ring_entry(vip.id, *select, flow_hash(key, vip.flags));
    match RINGS.get(entry) {
        Some(chunk) => chunk
            .slots
            .get((slot % RING_CHUNK_SLOTS) as usize)
            .map_or(NO_GATEWAY, |v| ring_slot_gateway(*v)),
        None => NO_GATEWAY,
    }
}

/// The connection table's gateway for `key` while it is `VALID`, else [`NO_GATEWAY`]:
/// `FLOWS4` for IPv4, `FLOWS6` for IPv6 (the bucket of the key's table hash, its four
/// entries compared in place; a hit marks its entry referenced). `family` is the `Ip`'s,
/// a constant in each family's inlined path, so each call site names one map and the
/// verifier inlines the lookup.
#[inline(always)]
fn lookup_flow(family: u8, key: &FlowKey) -> u32 {
    let buckets = FLOW_BUCKETS.load();
    // SAFETY (both): the pointer is into the map's value, valid for the program's run;
    // other CPUs may write the bucket at the same time (see the check byte).
    let gw = if family == FAMILY_V4 {
        let k = key.words4();
        let hash = flow_table_hash(&k);
        match FLOWS4.get_ptr_mut(flow_bucket(hash, buckets)) {
            Some(b) => flow_lookup(unsafe { &mut *b }, &k, hash),
            None => None,
        }
    } else {
        let k = key.words6();
        let hash = flow_table_hash(&k);
        match FLOWS6.get_ptr_mut(flow_bucket(hash, buckets)) {
            Some(b) => flow_lookup(unsafe { &mut *b }, &k, hash),
            None => None,
        }
    };
    match gw {
        Some(gw) if gateway_valid(gw) => gw,
        _ => NO_GATEWAY,
    }
}

/// Records `key`'s flow on gateway `gw` in its family's table, as `flow_record` says:
/// over its own entry (a SYN of a reused 5-tuple re-picks its gateway), else in a free
/// one, else over the entry second chance picks (evicting that flow).
#[inline(always)]
fn record_flow(family: u8, key: &FlowKey, gw: u32) {
    let buckets = FLOW_BUCKETS.load();
    // SAFETY (both): as in `lookup_flow`.
    if family == FAMILY_V4 {
        let k = key.words4();
        let hash = flow_table_hash(&k);
        if let Some(b) = FLOWS4.get_ptr_mut(flow_bucket(hash, buckets)) {
            flow_record(unsafe { &mut *b }, &k, hash, gw);
        }
    } else {
        let k = key.words6();
        let hash = flow_table_hash(&k);
        if let Some(b) = FLOWS6.get_ptr_mut(flow_bucket(hash, buckets)) {
            flow_record(unsafe { &mut *b }, &k, hash, gw);
        }
    }
}

#[inline(always)]
fn icmp(ctx: &XdpContext, ip: &Ip) -> Option<Step> {
    let l4 = ip.l4;
    if l4 + 8 > ip.end || !is_vip_addr(ip.family, ip.dst) {
        return Some(Step::Done(ExitReason::PassNotVip));
    }
    let ty = u8_at(ctx, l4)?;
    let q = l4 + 8;
    let (qsrc, qdst, ql4, qproto) = if ip.family == FAMILY_V4 {
        if ty != 3 || q + IPV4_HLEN > ip.end {
            return Some(Step::Done(ExitReason::PassNotVip));
        }
        let vhl = u8_at(ctx, q)?;
        if vhl >> 4 != 4 || vhl & 0x0f < 5 {
            return Some(Step::Done(ExitReason::PassNotVip));
        }
        (
            v4_addr_at(ctx, q + 12)?,
            v4_addr_at(ctx, q + 16)?,
            q + ((vhl & 0x0f) as usize) * 4,
            u8_at(ctx, q + 9)?,
        )
    } else {
        if (ty != 1 && ty != 2) || q + IPV6_HLEN > ip.end || u8_at(ctx, q)? >> 4 != 6 {
            return Some(Step::Done(ExitReason::PassNotVip));
        }
        (
            v6_addr_at(ctx, q + 8)?,
            v6_addr_at(ctx, q + 24)?,
            q + IPV6_HLEN,
            u8_at(ctx, q + 6)?,
        )
    };
    if (qproto != PROTO_TCP && qproto != PROTO_UDP) || ql4 + 8 > ip.end {
        return Some(Step::Done(ExitReason::PassNotVip));
    }
    let qsport = raw16(ctx, ql4)?;
    let qdport = raw16(ctx, ql4 + 2)?;
    let Some(vip) = vip_lookup(qsrc, vip_tail(qsport, qproto, ip.family)) else {
        return Some(Step::Done(ExitReason::PassNotVip));
    };
    let key = FlowKey::from_words(qdst, qsrc, qdport, qsport, qproto, ip.family);
    let mut gw = NO_GATEWAY;
    if vip.flags & VIP_F_NO_CONNTRACK == 0 {
        gw = lookup_flow(ip.family, &key);
    }
    if gw == NO_GATEWAY {
        gw = ring_pick(&vip, &key);
        if !gateway_valid(gw) {
            return Some(Step::Done(ExitReason::DropNoGateway));
        }
    }
    Some(Step::Forward { gw, icmp: true })
}

#[inline(always)]
fn transport(ctx: &XdpContext, ip: &Ip, proto: u8, len: u64) -> Option<Step> {
    let l4 = ip.l4;
    // TCP: data offset and flags, one load.
    let mut tcp_flags = 0;
    let ok = if proto == PROTO_TCP {
        l4 + 20 <= ip.end && {
            let w = raw16(ctx, l4 + 12)?.to_ne_bytes();
            tcp_flags = w[1];
            let doff = ((w[0] >> 4) as usize) * 4;
            doff >= 20 && l4 + doff <= ip.end
        }
    } else {
        l4 + 8 <= ip.end && {
            let ulen = be16_at(ctx, l4 + 4)? as usize;
            ulen >= 8 && l4 + ulen <= ip.end
        }
    };
    if !ok {
        return Some(malformed(ip.family, ip.dst));
    }
    let ports = raw32(ctx, l4)?.to_ne_bytes();
    let sport = u16::from_ne_bytes([ports[0], ports[1]]);
    let dport = u16::from_ne_bytes([ports[2], ports[3]]);
    let Some(vip) = vip_lookup(ip.dst, vip_tail(dport, proto, ip.family)) else {
        return Some(Step::Done(ExitReason::PassNotVip));
    };
    let stats = VIP_STATS.get_ptr_mut(vip.id);
    if let Some(s) = stats {
        // SAFETY: per-CPU slot; no other writer on this CPU.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
        }
    }
    let key = FlowKey::from_words(ip.src, ip.dst, sport, dport, proto, ip.family);
    let syn = proto == PROTO_TCP && tcp_flags & 0x12 == 0x02;
    let conntrack = vip.flags & VIP_F_NO_CONNTRACK == 0;
    let mut gw = NO_GATEWAY;
    if conntrack && !syn {
        gw = lookup_flow(ip.family, &key);
    }
    if gw == NO_GATEWAY {
        gw = ring_pick(&vip, &key);
        if !gateway_valid(gw) {
            return Some(Step::Done(ExitReason::DropNoGateway));
        }
        if let Some(s) = stats {
            // SAFETY: as above.
            unsafe { (*s).new_flows += 1 };
        }
        if conntrack {
            record_flow(ip.family, &key, gw);
        }
    }
    Some(Step::Forward { gw, icmp: false })
}

#[inline(always)]
fn count_gateway(gw: u32, len: u64) {
    if let Some(s) = GATEWAY_STATS.get_ptr_mut(gw) {
        // SAFETY: per-CPU slot; no other writer on this CPU.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
        }
    }
}

#[inline(always)]
fn adjust_head(ctx: &XdpContext, delta: i32) -> Option<()> {
    // SAFETY: the helper checks the new head against the frame's headroom and tail.
    let r = unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) };
    if r == 0 { Some(()) } else { None }
}

// Map values are 8-byte aligned and `GatewayValue`/`NodeConfig` are `align(8)` with
// the same layout: flags at 0, the IPv4 address at 4, the IPv6 address at 8, the MAC at
// 24. Their fields are read as words through these (byte-array fields would otherwise be
// read a byte at a time).

/// The `addr4` field of a `NodeConfig` or `GatewayValue` as one raw word.
#[inline(always)]
fn addr4_word(a: &[u8; 4]) -> u32 {
    // SAFETY: callers pass an `addr4` field: 4 bytes at offset 4 of an 8-byte-aligned value.
    unsafe { core::ptr::addr_of!(*a).cast::<u32>().read() }
}

/// The `addr6` field of a `NodeConfig` or `GatewayValue` as two raw words.
#[inline(always)]
fn addr6_words(a: &[u8; 16]) -> [u64; 2] {
    // SAFETY: callers pass an `addr6` field: 16 bytes at offset 8 of an 8-byte-aligned value.
    unsafe { core::ptr::addr_of!(*a).cast::<[u64; 2]>().read() }
}

/// A MAC address as its first four bytes and last two, raw.
#[inline(always)]
fn mac_words(m: &[u8; 6]) -> (u32, u16) {
    // SAFETY: callers pass the `mac` field of a `NodeConfig` or `GatewayValue` (offset
    // 24 of an 8-byte-aligned value), so both reads are aligned and inside the field.
    unsafe {
        let p = core::ptr::addr_of!(*m);
        (
            p.cast::<u32>().read(),
            p.cast::<u8>().add(4).cast::<u16>().read(),
        )
    }
}

/// Writes the Ethernet header of an encapsulated frame: the gateway's next-hop MAC, this
/// node's MAC and `proto` (0x8100 when the input was tagged; the tag and the inner
/// EtherType are written after it).
#[inline(always)]
fn put_eth(ctx: &XdpContext, g: &GatewayValue, n: &NodeConfig, proto: u16) -> Option<()> {
    let eth = Span::<ETH_HLEN>::at(ctx, 0)?;
    let (d0, d1) = mac_words(&g.mac);
    let (s0, s1) = mac_words(&n.mac);
    eth.put(0, d0);
    eth.put(4, d1);
    eth.put(6, s0);
    eth.put(10, s1);
    eth.put(12, proto.to_be());
    Some(())
}

#[inline(always)]
fn forward(ctx: &XdpContext, gw: u32, icmp: bool, len: u64) -> Option<ExitReason> {
    let g = GATEWAYS.get(gw)?;
    if g.flags & GW_F_LOCAL != 0 {
        count_gateway(gw, len);
        return Some(ExitReason::Local);
    }
    let node = NODE.get(0)?;
    // The tag as plain values, never an `Option`: an `Option<u16>` left its undefined
    // payload in a register that LLVM spilled, which the verifier refuses.
    let mut proto = be16_at(ctx, 12)?;
    let tagged = proto == ETH_P_8021Q;
    let mut tci = 0;
    if tagged {
        tci = raw16(ctx, 14)?;
        proto = be16_at(ctx, 16)?;
    }
    let l3 = if tagged { VLAN_L3 } else { ETH_HLEN };
    let eth_proto = if tagged { ETH_P_8021Q } else { proto };
    if proto == ETH_P_IP {
        if node.flags & NODE_F_V4 == 0 || g.flags & GW_F_V4 == 0 {
            return Some(ExitReason::DropNoGateway);
        }
        // The outer header (RFC 2003), as five native words of its raw bytes: TOS copied
        // from the inner header (DSCP and ECN, RFC 6040 normal mode), total length =
        // inner + 20, DF copied, identification 0, TTL `OUTER_TTL`, protocol 4. The same
        // bytes as `lb_common::datapath::outer_ipv4`, which the model uses.
        let in0 = raw32(ctx, l3)?.to_ne_bytes();
        let df = u8_at(ctx, l3 + 6)? & 0x40;
        let mtu = u64::from(node.mtu);
        if mtu != 0 && len - l3 as u64 + IPV4_HLEN as u64 > mtu {
            if icmp || df == 0 {
                return Some(ExitReason::DropTooBig);
            }
            let next_hop = node.mtu.saturating_sub(IPV4_HLEN as u16);
            return frag_needed(ctx, l3, tagged, next_hop, len);
        }
        let total = u16::from_be_bytes([in0[2], in0[3]])
            .wrapping_add(IPV4_HLEN as u16)
            .to_be_bytes();
        let w0 = u32::from_ne_bytes([0x45, in0[1], total[0], total[1]]);
        let w1 = u32::from_ne_bytes([0, 0, df, 0]);
        let (src, dst) = (addr4_word(&node.addr4), addr4_word(&g.addr4));
        let c = ipv4_checksum_words([
            w0,
            w1,
            u32::from_ne_bytes([OUTER_TTL, PROTO_IPIP, 0, 0]),
            src,
            dst,
        ])
        .to_ne_bytes();
        adjust_head(ctx, -(IPV4_HLEN as i32))?;
        put_eth(ctx, g, node, eth_proto)?;
        let ip = Span::<IPV4_HLEN>::at(ctx, l3)?;
        ip.put(0, w0);
        ip.put(4, w1);
        ip.put(8, u32::from_ne_bytes([OUTER_TTL, PROTO_IPIP, c[0], c[1]]));
        ip.put(12, src);
        ip.put(16, dst);
    } else {
        if node.flags & NODE_F_V6 == 0 || g.flags & GW_F_V6 == 0 {
            return Some(ExitReason::DropNoGateway);
        }
        // Never below the IPv6 minimum: a smaller configured MTU counts as 1320.
        let limit = u64::from(node.mtu.max(IPV6_MIN_MTU + IPV6_HLEN as u16));
        if node.mtu != 0 && len - l3 as u64 + IPV6_HLEN as u64 > limit {
            if icmp {
                return Some(ExitReason::DropTooBig);
            }
            return packet_too_big(ctx, l3, tagged, limit as u32 - IPV6_HLEN as u32, len);
        }
        // The outer header (RFC 2473): version, traffic class and flow label copied from
        // the inner header, payload length = inner + 40, next header 41, hop limit
        // `OUTER_TTL`; the same bytes as `lb_common::datapath::outer_ipv6`.
        let in0 = raw32(ctx, l3)?.to_ne_bytes();
        let payload = be16_at(ctx, l3 + 4)?
            .wrapping_add(IPV6_HLEN as u16)
            .to_be_bytes();
        let w0 = u32::from_ne_bytes([0x60 | (in0[0] & 0x0f), in0[1], in0[2], in0[3]]);
        let w1 = u32::from_ne_bytes([payload[0], payload[1], PROTO_IPV6, OUTER_TTL]);
        let (src, dst) = (addr6_words(&node.addr6), addr6_words(&g.addr6));
        adjust_head(ctx, -(IPV6_HLEN as i32))?;
        put_eth(ctx, g, node, eth_proto)?;
        let ip = Span::<IPV6_HLEN>::at(ctx, l3)?;
        ip.put(0, w0);
        ip.put(4, w1);
        ip.put(8, src[0]);
        ip.put(16, src[1]);
        ip.put(24, dst[0]);
        ip.put(32, dst[1]);
    }
    if tagged {
        let tag = Span::<4>::at(ctx, ETH_HLEN)?;
        tag.put(0, tci);
        tag.put(2, proto.to_be());
    }
    count_gateway(gw, len);
    Some(if icmp {
        ExitReason::IcmpForwarded
    } else {
        ExitReason::Tx
    })
}

/// What an answer to a frame needs of its Ethernet header: the MACs (first four bytes and
/// last two, raw) and, when tagged, the tag word (bytes 12-15).
#[derive(Clone, Copy)]
struct ReplyEth {
    dst: (u32, u16),
    src: (u32, u16),
    tag: u32,
}

#[inline(always)]
fn reply_eth_fields(ctx: &XdpContext, tagged: bool) -> Option<ReplyEth> {
    let eth = Span::<ETH_HLEN>::at(ctx, 0)?;
    let tag = if tagged { raw32(ctx, ETH_HLEN - 2)? } else { 0 };
    Some(ReplyEth {
        dst: (eth.get::<u32>(0), eth.get::<u16>(4)),
        src: (eth.get::<u32>(6), eth.get::<u16>(10)),
        tag,
    })
}

/// Writes the Ethernet header of a reply: the input's MACs swapped, its tag kept.
#[inline(always)]
fn put_reply_eth(ctx: &XdpContext, e: ReplyEth, tagged: bool, ethertype: u16) -> Option<()> {
    let eth = Span::<ETH_HLEN>::at(ctx, 0)?;
    eth.put(0, e.src.0);
    eth.put(4, e.src.1);
    eth.put(6, e.dst.0);
    eth.put(10, e.dst.1);
    if tagged {
        let t = Span::<{ ETH_HLEN + 4 }>::at(ctx, 0)?;
        t.put(12, e.tag);
        t.put(16, ethertype.to_be());
    } else {
        eth.put(12, ethertype.to_be());
    }
    Some(())
}

/// Cuts the tail of an ICMP reply so that `quote` bytes of the original packet (which
/// started at `l3` of the `len`-byte input) follow the new headers: the headers went in
/// front with the head adjustment, so the frame shrinks by what lies beyond the quote.
#[inline(always)]
fn keep_quote(ctx: &XdpContext, l3: usize, quote: usize, len: u64) -> Option<()> {
    let delta = (l3 + quote) as i64 - len as i64;
    // SAFETY: the helper checks the new tail against the frame's minimum and maximum.
    let r = unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) };
    if r == 0 { Some(()) } else { None }
}

/// ICMP "fragmentation needed" (type 3 code 4, next-hop MTU `next_hop`) to the sender of
/// the IPv4 packet at `l3`, from the VIP, quoting the IP header and 8 bytes: the new
/// headers go in front of the packet, which becomes the quote, and the tail is cut.
#[inline(always)]
fn frag_needed(
    ctx: &XdpContext,
    l3: usize,
    tagged: bool,
    next_hop: u16,
    len: u64,
) -> Option<ExitReason> {
    let eth = reply_eth_fields(ctx, tagged)?;
    let ip = Span::<IPV4_HLEN>::at(ctx, l3)?;
    let (client, vip) = (ip.get::<u32>(12), ip.get::<u32>(16));
    // IHL 5..=15 words (the packet passed the transport checks): 28..=68 bytes quoted.
    let quote = ((ip.get::<u32>(0).to_ne_bytes()[0] & 0x0f) as usize * 4 + 8) & 0x7f;
    adjust_head(ctx, -((IPV4_HLEN + 8) as i32))?;
    let at = l3 + IPV4_HLEN + 8;
    let nh = next_hop.to_be_bytes();
    let icmp1 = u32::from_ne_bytes([0, 0, nh[0], nh[1]]);
    let mut sum = u64::from(u32::from_ne_bytes([3, 4, 0, 0])) + u64::from(icmp1);
    let mut i = 0;
    while i < 17 && i * 4 < quote {
        sum += u64::from(raw32(ctx, at + i * 4)?);
        i += 1;
    }
    let c = checksum_fold(sum).to_ne_bytes();
    let total = ((IPV4_HLEN + 8 + quote) as u16).to_be_bytes();
    let w0 = u32::from_ne_bytes([0x45, 0, total[0], total[1]]);
    let ipc = ipv4_checksum_words([
        w0,
        0,
        u32::from_ne_bytes([OUTER_TTL, PROTO_ICMP, 0, 0]),
        vip,
        client,
    ])
    .to_ne_bytes();
    put_reply_eth(ctx, eth, tagged, ETH_P_IP)?;
    let h = Span::<{ IPV4_HLEN + 8 }>::at(ctx, l3)?;
    h.put(0, w0);
    h.put(4, 0u32);
    h.put(
        8,
        u32::from_ne_bytes([OUTER_TTL, PROTO_ICMP, ipc[0], ipc[1]]),
    );
    h.put(12, vip);
    h.put(16, client);
    h.put(20, u32::from_ne_bytes([3, 4, c[0], c[1]]));
    h.put(24, icmp1);
    keep_quote(ctx, l3, quote, len)?;
    Some(ExitReason::IcmpTooBig)
}

/// ICMPv6 "packet too big" (MTU `mtu`) to the sender of the IPv6 packet at `l3`, from the
/// VIP, quoting its first `PTB_QUOTE` bytes (the packet is longer: it exceeded an MTU of
/// at least 1320), built like [`frag_needed`].
#[inline(always)]
fn packet_too_big(
    ctx: &XdpContext,
    l3: usize,
    tagged: bool,
    mtu: u32,
    len: u64,
) -> Option<ExitReason> {
    let eth = reply_eth_fields(ctx, tagged)?;
    let ip = Span::<IPV6_HLEN>::at(ctx, l3)?;
    let client = [ip.get::<u64>(8), ip.get::<u64>(16)];
    let vip = [ip.get::<u64>(24), ip.get::<u64>(32)];
    adjust_head(ctx, -((IPV6_HLEN + 8) as i32))?;
    let at = l3 + IPV6_HLEN + 8;
    let plen = (8 + PTB_QUOTE) as u32;
    let halves = |w: u64| (w & 0xffff_ffff) + (w >> 32);
    let mtu_word = u32::from_ne_bytes(mtu.to_be_bytes());
    let mut sum = halves(vip[0])
        + halves(vip[1])
        + halves(client[0])
        + halves(client[1])
        + u64::from(u32::from_ne_bytes(plen.to_be_bytes()))
        + u64::from(u32::from_ne_bytes([0, 0, 0, PROTO_ICMPV6]))
        + u64::from(u32::from_ne_bytes([2, 0, 0, 0]))
        + u64::from(mtu_word);
    let quote = Span::<PTB_QUOTE>::at(ctx, at)?;
    let mut i = 0;
    while i < PTB_QUOTE / 8 {
        sum += halves(quote.get::<u64>(i * 8));
        i += 1;
    }
    let c = checksum_fold(sum).to_ne_bytes();
    let pl = (plen as u16).to_be_bytes();
    put_reply_eth(ctx, eth, tagged, ETH_P_IPV6)?;
    let h = Span::<{ IPV6_HLEN + 8 }>::at(ctx, l3)?;
    h.put(0, u32::from_ne_bytes([0x60, 0, 0, 0]));
    h.put(
        4,
        u32::from_ne_bytes([pl[0], pl[1], PROTO_ICMPV6, OUTER_TTL]),
    );
    h.put(8, vip[0]);
    h.put(16, vip[1]);
    h.put(24, client[0]);
    h.put(32, client[1]);
    h.put(40, u32::from_ne_bytes([2, 0, c[0], c[1]]));
    h.put(44, mtu_word);
    keep_quote(ctx, l3, PTB_QUOTE, len)?;
    Some(ExitReason::IcmpTooBig)
}

#[inline(always)]
fn decap(ctx: &XdpContext, l3: usize, outer: usize) -> Option<ExitReason> {
    // `outer` is 20..=60 (IPv4, from the IHL) or 40 (IPv6). The Ethernet header (with its
    // tag) is copied in words from before the outer header to the new start.
    let outer = outer & 0x3f;
    if l3 == VLAN_L3 {
        let eth = Span::<VLAN_L3>::at(ctx, 0)?;
        let (a, b, c) = (eth.get::<u64>(0), eth.get::<u64>(8), eth.get::<u16>(16));
        adjust_head(ctx, outer as i32)?;
        let eth = Span::<VLAN_L3>::at(ctx, 0)?;
        eth.put(0, a);
        eth.put(8, b);
        eth.put(16, c);
    } else {
        let eth = Span::<ETH_HLEN>::at(ctx, 0)?;
        let (a, b, c) = (eth.get::<u64>(0), eth.get::<u32>(8), eth.get::<u16>(12));
        adjust_head(ctx, outer as i32)?;
        let eth = Span::<ETH_HLEN>::at(ctx, 0)?;
        eth.put(0, a);
        eth.put(8, b);
        eth.put(12, c);
    }
    Some(ExitReason::Decap)
}
