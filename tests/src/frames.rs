//! Building Ethernet frames byte by byte for the data-path tests and the benchmark.
//!
//! Independent of `lb_common::datapath` on purpose (its own checksum code, its own
//! layouts), so the fixture tests check the data path against a second implementation.
//! Transport checksums are left zero: the data path never reads or changes them.
use std::net::{Ipv4Addr, Ipv6Addr};

/// The MAC the test frames are sent from (the client, or the router in front of the node).
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// The MAC of the node running the program.
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// The RFC 1071 Internet checksum of `bytes`.
pub fn inet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for chunk in bytes.chunks(2) {
        let hi = u64::from(chunk[0]) << 8;
        let lo = chunk.get(1).map_or(0, |b| u64::from(*b));
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame from [`PEER_MAC`] to [`NODE_MAC`] (optionally 802.1Q-tagged with `vlan`)
/// carrying `payload` with `ethertype`.
pub fn ethernet(vlan: Option<u16>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    ethernet_macs(NODE_MAC, PEER_MAC, vlan, ethertype, payload)
}

/// An Ethernet frame with explicit MACs.
pub fn ethernet_macs(
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(tci) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The knobs of an IPv4 header.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Option bytes (padded with zeros to a multiple of 4).
    pub options: Vec<u8>,
}

impl V4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        V4 {
            src,
            dst,
            proto,
            tos: 0,
            ttl: 64,
            id: 0x1234,
            df: true,
            mf: false,
            frag_offset: 0,
            options: Vec::new(),
        }
    }

    /// The header and `payload`, with a correct header checksum.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let hlen = 20 + opts.len();
        let total = (hlen + payload.len()) as u16;
        let flags = (u16::from(self.df) << 14) | (u16::from(self.mf) << 13) | self.frag_offset;
        let mut h = vec![0x40 | (hlen / 4) as u8, self.tos];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&opts);
        let c = inet_checksum(&h).to_be_bytes();
        h[10] = c[0];
        h[11] = c[1];
        h.extend_from_slice(payload);
        h
    }
}

/// An IPv6 packet: fixed header (traffic class `tc`, flow label `flow`) and `payload`.
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    tc: u8,
    flow: u32,
    payload: &[u8],
) -> Vec<u8> {
    let vtcfl: u32 = (6 << 28) | (u32::from(tc) << 20) | (flow & 0x000f_ffff);
    let mut h = Vec::with_capacity(40 + payload.len());
    h.extend_from_slice(&vtcfl.to_be_bytes());
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next_header, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A TCP segment (checksum zero) with `flags` and `payload`.
pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1000u32.to_be_bytes());
    t.extend_from_slice(&(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// A UDP datagram (checksum zero).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An ICMP / ICMPv6 message: type, code, 4 bytes of rest-of-header, body (checksum zero).
pub fn icmp(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    m
}

/// IPv4 TCP frame from `src:sport` to `dst:dport`.
pub fn tcp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let ip = V4::new(src, dst, 6).packet(&tcp(sport, dport, flags, b""));
    ethernet(None, 0x0800, &ip)
}

/// IPv6 TCP frame from `src:sport` to `dst:dport`.
pub fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    let ip = ipv6(src, dst, 6, 0, 0, &tcp(sport, dport, flags, b""));
    ethernet(None, 0x86dd, &ip)
}
