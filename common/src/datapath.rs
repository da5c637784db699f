//! The contract between the XDP program and userspace: map names, sizes, key and value
//! layouts, flags, the flow hash and the encapsulation headers.
//!
//! Everything here compiles for the BPF target (`no_std`, no allocation) and is used by
//! both sides, so the two agree byte for byte. The per-packet *algorithm* is specified by
//! the reference model ([`crate::model`]); the XDP program (`lb-ebpf/src/path.rs`)
//! implements the same steps and the differential test holds them equal.
//!
//! Conventions: addresses are stored as raw network-order bytes; an IPv4 address fills the
//! first 4 bytes of a 16-byte field and the rest is zero. Ports are raw network-order bytes.
//!
//! # Words
//!
//! The XDP program handles addresses and keys as 64-bit words, never as byte arrays on the
//! BPF stack: the BPF target forbids unaligned stack access, so LLVM copies, compares and
//! zeroes byte arrays there one byte at a time (a 12-byte zero fill became a call to a
//! byte-loop `memset`). A 16-byte address is two words ([`AddrWords`]): its bytes 0-7 and
//! 8-15 read as little-endian `u64`s, which is what a native load of the raw bytes gives
//! on the little-endian machines XDP runs on (`to_le`/`from_le` keep it right elsewhere).
//! The key types are aligned so that a key built from words is stored as words.

/// Number of slots of every VIP's Maglev ring in the data path (a prime; Maglev's default).
pub const RING_SIZE: u32 = 65537;
/// Most VIPs (address, port, protocol) the data path holds; VIP ids are `0..MAX_VIPS`.
pub const MAX_VIPS: u32 = 64;
/// Most gateway nodes; gateway ids are `0..MAX_GATEWAYS`.
pub const MAX_GATEWAYS: u32 = 1024;
/// Bits of the VIP address prefilter (`VIP_FILTER`, 64 bits per array entry).
pub const VIP_FILTER_BITS: u32 = 4096;
/// Slots of the `VIPS` table (a power of two): services and address entries, placed by
/// userspace at one of [`VIP_PROBES`] positions from [`vip_slot_hash`].
pub const VIP_TABLE_SLOTS: u32 = 1024;
/// Positions a VIP entry may occupy (`hash + 0..VIP_PROBES`, wrapping); lookups check all.
pub const VIP_PROBES: u32 = 4;
/// State of a [`VipSlot`] whose entry is live.
pub const VIP_SLOT_USED: u32 = 1;
/// Flows each connection table (`FLOWS4` and `FLOWS6`) holds by default; the loader sets
/// the real size at load time, the same for both ([`flow_buckets`] buckets each).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1_048_576;
/// Entries per bucket of the connection tables.
pub const FLOW_WAYS: usize = 4;
/// The bits of a stored entry's last word that belong to the key: ports (bits 0-31) and
/// protocol (32-39). Bits 40-47 hold the entry's check byte, 48-57 its gateway id, 63 its
/// referenced bit ([`FLOW_REF`]).
pub const FLOW_TAIL_KEY_MASK: u64 = 0xff_ffff_ffff;
/// A ring slot or flow entry that names no gateway.
pub const NO_GATEWAY: u32 = u32::MAX;
/// TTL / hop limit of the outer header of encapsulated packets.
pub const OUTER_TTL: u8 = 64;
/// The smallest link MTU IPv6 allows (RFC 8200 section 5); a "packet too big" never
/// reports less, and quotes the invoking packet up to this size.
pub const IPV6_MIN_MTU: u16 = 1280;
/// Bytes of the invoking packet an ICMPv6 "packet too big" from the data path quotes:
/// as much as fits in [`IPV6_MIN_MTU`] (RFC 4443 section 3.2).
pub const PTB_QUOTE: usize = IPV6_MIN_MTU as usize - 40 - 8;

/// Map names (the XDP program declares them; userspace opens them by these names).
pub mod map_names {
    /// `Array<VipSlot>[VIP_TABLE_SLOTS]`: services and VIP addresses, an open-addressed
    /// table in an array (the verifier inlines array lookups; a hash-map lookup cost
    /// ~40 ns here).
    pub const VIPS: &str = "VIPS";
    /// `Array<u64>[VIP_FILTER_BITS / 64]`: a bit per hashed destination address; clear
    /// means "no VIP entry has this address", so the packet passes without a hash lookup.
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// `Array<u32>[MAX_VIPS]`: which ring copy (0 or 1) of each VIP is active.
    pub const RING_SELECT: &str = "RING_SELECT";
    /// `Array<u32>[MAX_VIPS * 2 * RING_SIZE]`: two Maglev rings per VIP.
    pub const RINGS: &str = "RINGS";
    /// `Array<GatewayValue>[MAX_GATEWAYS]`.
    pub const GATEWAYS: &str = "GATEWAYS";
    /// `Array<NodeConfig>[1]`: this node's addresses and MAC.
    pub const NODE: &str = "NODE";
    /// `Array<FlowBucket4>[flow_buckets(size)]`: the connection table of IPv4 flows.
    pub const FLOWS4: &str = "FLOWS4";
    /// `Array<FlowBucket6>[flow_buckets(size)]`: the connection table of IPv6 flows.
    pub const FLOWS6: &str = "FLOWS6";
    /// The program's global `u32` holding the bucket count of each connection table (the
    /// loader sets it with the tables' size).
    pub const FLOW_BUCKETS: &str = "FLOW_BUCKETS";
    /// `PerCpuArray<StatCounter>[ExitReason::COUNT]`.
    pub const EXIT_STATS: &str = "EXIT_STATS";
    /// `PerCpuArray<VipStats>[MAX_VIPS]`.
    pub const VIP_STATS: &str = "VIP_STATS";
    /// `PerCpuArray<StatCounter>[MAX_GATEWAYS]`.
    pub const GATEWAY_STATS: &str = "GATEWAY_STATS";
}

/// Address family tags used in keys.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMPV6: u8 = 58;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;

/// VIP entry flag: an address-only entry (port 0, protocol 0). Says "this address is a
/// VIP", so malformed packets, fragments and extension headers to it are recognised
/// without a port. Userspace writes one per VIP address.
pub const VIP_F_ADDRESS: u32 = 1;
/// Hash by client address only (ignore ports): every connection of one client goes to
/// the same gateway.
pub const VIP_F_HASH_SRC_ADDR: u32 = 2;
/// Do not use the connection table: every packet is hashed (stateless, for UDP services
/// whose gateways share no per-flow state anyway).
pub const VIP_F_NO_CONNTRACK: u32 = 4;
/// All VIP flags the data path understands.
pub const VIP_F_ALL: u32 = VIP_F_ADDRESS | VIP_F_HASH_SRC_ADDR | VIP_F_NO_CONNTRACK;

/// Gateway flag: the entry is in use. Flows pinned to a gateway without it are re-hashed.
pub const GW_F_VALID: u32 = 1;
/// The gateway is this node: its traffic is passed to the local stack.
pub const GW_F_LOCAL: u32 = 2;
/// `addr4` is set.
pub const GW_F_V4: u32 = 4;
/// `addr6` is set.
pub const GW_F_V6: u32 = 8;

/// Node flag: `addr4` is set (IPv4 encapsulation and decapsulation work).
pub const NODE_F_V4: u32 = 1;
/// Node flag: `addr6` is set.
pub const NODE_F_V6: u32 = 2;

/// A 16-byte address field as two words (see the module docs).
pub type AddrWords = [u64; 2];

/// The words of a 16-byte address field.
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> AddrWords {
    [half(a, false), half(a, true)]
}

/// The words of an IPv4 address field (the address in the first 4 bytes, the rest zero)
/// from the address's raw bytes read as a native `u32`.
#[inline(always)]
pub fn v4_words(raw: u32) -> AddrWords {
    [u64::from(u32::from_le(raw)), 0]
}

/// The word of a key's port, protocol and family bytes, as [`VipKey`] stores them after
/// the address (`port` is the raw network-order port read as a native `u16`).
#[inline(always)]
pub fn vip_tail(port: u16, proto: u8, family: u8) -> u32 {
    u32::from(u16::from_le(port)) | (u32::from(proto) << 16) | (u32::from(family) << 24)
}

/// Key of the `VIPS` map.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: [u8; 16],
    /// Destination port, network order; `[0, 0]` in address entries.
    pub port: [u8; 2],
    /// IP protocol (6 or 17); 0 in address entries.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

impl VipKey {
    /// The address-only entry of `addr`.
    pub const fn address(family: u8, addr: [u8; 16]) -> Self {
        VipKey {
            addr,
            port: [0, 0],
            proto: 0,
            family,
        }
    }
}

/// Value of the `VIPS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipValue {
    /// Index into `RING_SELECT`, `RINGS` and `VIP_STATS` (`< MAX_VIPS`); unused in
    /// address entries.
    pub id: u32,
    /// `VIP_F_*`.
    pub flags: u32,
}

/// Value of the `GATEWAYS` map: where to send a gateway's flows.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GatewayValue {
    /// `GW_F_*`.
    pub flags: u32,
    /// Outer IPv4 destination for IPv4 flows.
    pub addr4: [u8; 4],
    /// Outer IPv6 destination for IPv6 flows.
    pub addr6: [u8; 16],
    /// Destination MAC of the next hop towards the gateway (its own MAC on one L2 segment).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Value of the single-entry `NODE` map: this node.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// `NODE_F_*`.
    pub flags: u32,
    /// Outer source of IPv4 encapsulation; IPIP packets to it are decapsulated.
    pub addr4: [u8; 4],
    /// Outer source of IPv6 encapsulation; IP6IP6 packets to it are decapsulated.
    pub addr6: [u8; 16],
    /// Source MAC of transmitted frames (the interface's MAC).
    pub mac: [u8; 6],
    /// The interface's MTU (the largest L3 packet it sends), native order; 0: no check.
    /// A packet that would exceed it once encapsulated is answered with an ICMP
    /// "fragmentation needed" / ICMPv6 "packet too big" (see [`crate::model`]).
    pub mtu: u16,
}

/// A flow's 5-tuple as the client sent the packet (client -> VIP), of either family: the
/// input of [`flow_hash`]; the connection tables store it as [`FlowKey::words4`] (IPv4,
/// `FLOWS4`) or [`FlowKey::words6`] (IPv6, `FLOWS6`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The key from address words and the raw ports (network-order bytes read as native
    /// `u16`s); built and stored as five words.
    #[inline(always)]
    pub fn from_words(
        src: AddrWords,
        dst: AddrWords,
        sport: u16,
        dport: u16,
        proto: u8,
        family: u8,
    ) -> FlowKey {
        let tail = u64::from(u16::from_le(sport))
            | (u64::from(u16::from_le(dport)) << 16)
            | (u64::from(proto) << 32)
            | (u64::from(family) << 40);
        let w = [src[0], src[1], dst[0], dst[1], tail].map(u64::to_le);
        // SAFETY: `FlowKey` is `repr(C)`, 40 bytes of byte arrays and bytes with no
        // implicit padding (`layouts_have_no_implicit_padding`), so every 40-byte value is
        // a valid key; `transmute` checks the sizes.
        unsafe { core::mem::transmute::<[u64; 5], FlowKey>(w) }
    }

    /// The five words of the key: source, destination (two each), then ports, protocol
    /// and family (as [`FlowKey::from_words`] packs them).
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        // SAFETY: as in `from_words`: 40 plain bytes either way.
        unsafe { core::mem::transmute::<FlowKey, [u64; 5]>(*self) }.map(u64::from_le)
    }
}

/// An IPv4 flow's key as the IPv4 connection table (`FLOWS4`) stores it ([`FlowKey::words4`]):
/// the whole IPv4 5-tuple as the client sent the packet, in 16 bytes (two words). It holds everything a [`FlowKey`] of family
/// [`FAMILY_V4`] holds (the family is implied by the table), so two flows share a key only
/// when they share the 5-tuple.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey4 {
    /// The IPv4 key of `key` (a [`FlowKey`] of family [`FAMILY_V4`]: its addresses in the
    /// first 4 bytes of their fields), built from its words.
    #[inline(always)]
    pub fn of(key: &FlowKey) -> FlowKey4 {
        let w = key.words();
        let k = [(w[0] & 0xffff_ffff) | (w[2] << 32), w[4] & 0xff_ffff_ffff].map(u64::to_le);
        // SAFETY: `FlowKey4` is `repr(C)`, 16 bytes of byte arrays and bytes with no
        // implicit padding (`layouts_have_no_implicit_padding`); `transmute` checks sizes.
        unsafe { core::mem::transmute::<[u64; 2], FlowKey4>(k) }
    }

    /// The [`FlowKey`] of the same 5-tuple (family [`FAMILY_V4`]).
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            src: v4_field(self.src),
            dst: v4_field(self.dst),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }
}

/// What a connection-table entry says about its flow: the gateway id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowValue {
    pub gateway: u32,
}

// The connection tables.
//
// Each is an array map of buckets of `FLOW_WAYS` entries (a set-associative cache, as CPU
// caches are built): the program finds a flow's bucket from a hash of its 5-tuple and
// compares the bucket's entries in place. Array lookups are inlined by the verifier, so a
// lookup is a hash, one memory access and a few compares, with no helper call and no lock;
// recording a flow writes one entry. (A kernel LRU hash map cost ~300 ns per insert on
// this machine: it takes a free node from per-CPU lists and links it in.)
//
// An entry is the flow's key words (`FlowKey::words4` / `words6`), whose last word also
// holds a check byte and the gateway id. An entry is free when its protocol byte is 0 (a
// key's protocol is TCP or UDP). A flow is recorded in its own entry if the bucket has
// one, else in the first free entry, else over an entry chosen by second chance (CLOCK,
// the approximation of LRU the kernel's LRU maps use too): hits mark entries referenced,
// and an eviction passes over referenced entries, clearing the mark. The evicted flow goes
// to the ring again on its next packet, which gives the same gateway unless the ring
// changed meanwhile.
//
// Entries are shared by all CPUs and written without a lock (two or five 8-byte stores).
// A reader racing with a writer of the same entry could see words of two flows; the check
// byte (bits of the flow's table hash) makes such a mix fail the compare (all but 1 in 256
// of the rare mixes whose key words happen to equal the reader's flow), so the packet is
// treated as a miss and goes to the ring, never to another flow's gateway.

/// Ring slots per `RINGS` entry: a [`RingChunk`] is one 64-byte cache line of 16-bit
/// gateway ids. (An array map stores every value in a multiple of 8 bytes, so a ring of
/// 4-byte slots took 8 bytes per slot: four times the memory.)
pub const RING_CHUNK_SLOTS: u32 = 32;
/// `RINGS` entries per ring copy (the last is partly used: `RING_SIZE` is prime).
pub const RING_CHUNKS: u32 = RING_SIZE.div_ceil(RING_CHUNK_SLOTS);

/// An entry of `RINGS`: [`RING_CHUNK_SLOTS`] consecutive slots of one ring copy, each the
/// gateway id (`< MAX_GATEWAYS`) of the flows whose hash lands there, or
/// [`RING_NO_GATEWAY`] (see [`ring_slot_value`] and [`ring_slot_gateway`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RingChunk {
    pub slots: [u16; RING_CHUNK_SLOTS as usize],
}

/// A ring slot that names no gateway ([`NO_GATEWAY`] in a ring of `u32`s: the Maglev ring
/// of a service without gateways).
pub const RING_NO_GATEWAY: u16 = u16::MAX;

/// How a ring slot holding gateway `gw` is stored: [`NO_GATEWAY`] as [`RING_NO_GATEWAY`],
/// an id below [`MAX_GATEWAYS`] as itself; `None` for anything else (not storable).
#[inline(always)]
pub fn ring_slot_value(gw: u32) -> Option<u16> {
    if gw == NO_GATEWAY {
        Some(RING_NO_GATEWAY)
    } else if gw < MAX_GATEWAYS {
        Some(gw as u16)
    } else {
        None
    }
}

/// The gateway a stored ring slot names (the inverse of [`ring_slot_value`]).
#[inline(always)]
pub fn ring_slot_gateway(v: u16) -> u32 {
    if v == RING_NO_GATEWAY {
        NO_GATEWAY
    } else {
        u32::from(v)
    }
}

/// A bucket of the IPv4 connection table (`FLOWS4`): four entries of two words, 64
/// bytes (one cache line). Stored as [`FlowBucket6`] is: the entries' last words first.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowBucket4 {
    /// Each entry's last word (ports and protocol, check byte, gateway, referenced bit).
    pub tails: [u64; FLOW_WAYS],
    /// Each entry's first word (the addresses).
    pub heads: [u64; FLOW_WAYS],
}

/// A bucket of the IPv6 connection table (`FLOWS6`): four entries of five words, 160 bytes.
///
/// The four entries' last words come first, together in the bucket's first 32 bytes, and
/// their addresses after: recording a new flow, and passing over the entries of other
/// flows, reads the last words only (an entry's addresses are read when its ports and
/// protocol match), so it touches one cache line of the bucket instead of all three.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowBucket6 {
    /// Each entry's last word (ports and protocol, check byte, gateway, referenced bit).
    pub tails: [u64; FLOW_WAYS],
    /// Each entry's first four words (source and destination addresses).
    pub heads: [[u64; 4]; FLOW_WAYS],
}

/// A bucket's entries of `N` words, whatever the bucket's layout: the program's buckets
/// ([`FlowBucket4`], [`FlowBucket6`]) keep the last words apart from the rest, the model
/// keeps whole entries (`[[u64; N]; FLOW_WAYS]`). [`flow_lookup`] and [`flow_record`] see
/// buckets through it, so both run the same code on either.
pub trait FlowWays<const N: usize> {
    /// Entry `i`'s last word.
    fn tail(&self, i: usize) -> u64;
    /// Writes entry `i`'s last word.
    fn set_tail(&mut self, i: usize, tail: u64);
    /// Whether entry `i`'s first `N - 1` words are `key`'s.
    fn head_is(&self, i: usize, key: &[u64; N]) -> bool;
    /// Entry `i`, whole.
    fn entry(&self, i: usize) -> [u64; N];
    /// Writes entry `i` whole.
    fn set_entry(&mut self, i: usize, e: &[u64; N]);
}

/// `tail` and `set_tail` of the program's buckets, which keep the last words in `tails`.
macro_rules! tails_first {
    () => {
        #[inline(always)]
        fn tail(&self, i: usize) -> u64 {
            self.tails[i & (FLOW_WAYS - 1)]
        }
        #[inline(always)]
        fn set_tail(&mut self, i: usize, tail: u64) {
            self.tails[i & (FLOW_WAYS - 1)] = tail;
        }
    };
}

impl FlowWays<2> for FlowBucket4 {
    tails_first!();
    #[inline(always)]
    fn head_is(&self, i: usize, key: &[u64; 2]) -> bool {
        self.heads[i & (FLOW_WAYS - 1)] == key[0]
    }
    #[inline(always)]
    fn entry(&self, i: usize) -> [u64; 2] {
        [
            self.heads[i & (FLOW_WAYS - 1)],
            self.tails[i & (FLOW_WAYS - 1)],
        ]
    }
    #[inline(always)]
    fn set_entry(&mut self, i: usize, e: &[u64; 2]) {
        self.heads[i & (FLOW_WAYS - 1)] = e[0];
        self.tails[i & (FLOW_WAYS - 1)] = e[1];
    }
}

impl FlowWays<5> for FlowBucket6 {
    tails_first!();
    #[inline(always)]
    fn head_is(&self, i: usize, key: &[u64; 5]) -> bool {
        let h = &self.heads[i & (FLOW_WAYS - 1)];
        h[0] == key[0] && h[1] == key[1] && h[2] == key[2] && h[3] == key[3]
    }
    #[inline(always)]
    fn entry(&self, i: usize) -> [u64; 5] {
        let h = self.heads[i & (FLOW_WAYS - 1)];
        [h[0], h[1], h[2], h[3], self.tails[i & (FLOW_WAYS - 1)]]
    }
    #[inline(always)]
    fn set_entry(&mut self, i: usize, e: &[u64; 5]) {
        self.heads[i & (FLOW_WAYS - 1)] = [e[0], e[1], e[2], e[3]];
        self.tails[i & (FLOW_WAYS - 1)] = e[4];
    }
}

impl<const N: usize> FlowWays<N> for [[u64; N]; FLOW_WAYS] {
    #[inline(always)]
    fn tail(&self, i: usize) -> u64 {
        self[i & (FLOW_WAYS - 1)][N - 1]
    }
    #[inline(always)]
    fn set_tail(&mut self, i: usize, tail: u64) {
        self[i & (FLOW_WAYS - 1)][N - 1] = tail;
    }
    #[inline(always)]
    fn head_is(&self, i: usize, key: &[u64; N]) -> bool {
        let e = &self[i & (FLOW_WAYS - 1)];
        let mut same = true;
        let mut j = 0;
        while j + 1 < N {
            same &= e[j] == key[j];
            j += 1;
        }
        same
    }
    #[inline(always)]
    fn entry(&self, i: usize) -> [u64; N] {
        self[i & (FLOW_WAYS - 1)]
    }
    #[inline(always)]
    fn set_entry(&mut self, i: usize, e: &[u64; N]) {
        self[i & (FLOW_WAYS - 1)] = *e;
    }
}

/// Buckets of each connection table for a size of `flows` entries (rounded up).
pub const fn flow_buckets(flows: u32) -> u32 {
    flows.div_ceil(FLOW_WAYS as u32)
}

impl FlowKey {
    /// The key words an IPv4 flow is stored under: addresses (source in the low half),
    /// then ports and protocol.
    #[inline(always)]
    pub fn words4(&self) -> [u64; 2] {
        let w = self.words();
        [
            (w[0] & 0xffff_ffff) | (w[2] << 32),
            w[4] & FLOW_TAIL_KEY_MASK,
        ]
    }

    /// The key words an IPv6 flow is stored under: source, destination, then ports and
    /// protocol.
    #[inline(always)]
    pub fn words6(&self) -> [u64; 5] {
        let w = self.words();
        [w[0], w[1], w[2], w[3], w[4] & FLOW_TAIL_KEY_MASK]
    }
}

/// The hash of a flow's key words that places it in a connection table: the bucket is
/// [`flow_bucket`] of it, the check byte its low 8 bits, the way evicted in a full bucket
/// bits 8-9.
#[inline(always)]
pub fn flow_table_hash<const N: usize>(key: &[u64; N]) -> u32 {
    let mut h = 0x636f_6e6e_7461_626c_u64;
    let mut i = 0;
    while i < N {
        h = mix(h, key[i]);
        i += 1;
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 32) as u32
}

/// The bucket of table hash `hash` in a table of `buckets` buckets (multiply-shift: any
/// bucket count works, the hash's high bits choose).
#[inline(always)]
pub fn flow_bucket(hash: u32, buckets: u32) -> u32 {
    ((u64::from(hash) * u64::from(buckets)) >> 32) as u32
}

/// Bit of a stored entry's last word set when a packet found the entry (the "referenced"
/// bit of a second-chance, or CLOCK, replacement: an evicting write passes over entries
/// that have it, clearing it, and takes the first that has not).
pub const FLOW_REF: u64 = 1 << 63;
/// Gateway ids in an entry: bits 48-57 of its last word.
const FLOW_GW_MASK: u64 = 0x3ff;
const _: () = assert!(MAX_GATEWAYS as u64 - 1 == FLOW_GW_MASK);
// Ring slots hold gateway ids in 16 bits.
const _: () = assert!(MAX_GATEWAYS <= 1 << 16);

/// The stored entry of a flow with key words `key` and table hash `hash` on gateway `gw`
/// (an id below [`MAX_GATEWAYS`], so it fits the entry's 10 bits), not referenced yet.
#[inline(always)]
pub fn flow_entry<const N: usize>(key: &[u64; N], hash: u32, gw: u32) -> [u64; N] {
    let mut e = *key;
    e[N - 1] = (key[N - 1] & FLOW_TAIL_KEY_MASK)
        | (u64::from(hash & 0xff) << 40)
        | ((u64::from(gw) & FLOW_GW_MASK) << 48);
    e
}

/// Whether entry `i` of `ways` holds the flow with key words `key` (its key part; the
/// check byte, gateway and referenced bit aside). The last word is compared first and the
/// others only when it matches, so passing over other flows' entries reads last words only.
#[inline(always)]
fn same_key<const N: usize, W: FlowWays<N>>(ways: &W, i: usize, key: &[u64; N]) -> bool {
    ways.tail(i) & FLOW_TAIL_KEY_MASK == key[N - 1] && ways.head_is(i, key)
}

/// The gateway an entry's last word names.
#[inline(always)]
fn entry_gateway(last: u64) -> u32 {
    ((last >> 48) & FLOW_GW_MASK) as u32
}

/// Looks up the flow with key words `key` and table hash `hash` in `ways` (its bucket):
/// its gateway if an entry holds it whole (key and check byte). A hit marks the entry
/// referenced ([`FLOW_REF`]; written only when not set yet, so a busy flow's entry is
/// written once per eviction sweep, not per packet).
#[inline(always)]
pub fn flow_lookup<const N: usize, W: FlowWays<N>>(
    ways: &mut W,
    key: &[u64; N],
    hash: u32,
) -> Option<u32> {
    let mut i = 0;
    while i < FLOW_WAYS {
        let last = ways.tail(i);
        if (last >> 40) & 0xff == u64::from(hash & 0xff) && same_key(ways, i, key) {
            if last & FLOW_REF == 0 {
                ways.set_tail(i, last | FLOW_REF);
            }
            return Some(entry_gateway(last));
        }
        i += 1;
    }
    None
}

/// Records the flow with key words `key` and table hash `hash` on gateway `gw` in `ways`
/// (its bucket): over the entry that holds its key if there is one (a SYN of a reused
/// 5-tuple re-picks its gateway), else in the first free entry, else (the bucket is full)
/// by second chance: starting at the way bits 8-9 of its hash pick, referenced entries are
/// passed over and lose their referenced bit, and the first unreferenced one is evicted
/// (the starting one if all four were referenced). Flows that see packets thus outlive
/// flows that do not (a flood of SYNs evicts its own entries first).
#[inline(always)]
pub fn flow_record<const N: usize, W: FlowWays<N>>(
    ways: &mut W,
    key: &[u64; N],
    hash: u32,
    gw: u32,
) {
    let entry = flow_entry(key, hash, gw);
    let mut free = FLOW_WAYS;
    let mut i = 0;
    while i < FLOW_WAYS {
        if same_key(ways, i, key) {
            ways.set_entry(i, &entry);
            return;
        }
        if free == FLOW_WAYS && (ways.tail(i) >> 32) & 0xff == 0 {
            free = i;
        }
        i += 1;
    }
    if free < FLOW_WAYS {
        ways.set_entry(free, &entry);
        return;
    }
    let start = (hash >> 8) as usize;
    let mut victim = start & (FLOW_WAYS - 1);
    let mut j = 0;
    while j < FLOW_WAYS {
        let w = (start + j) & (FLOW_WAYS - 1);
        let last = ways.tail(w);
        if last & FLOW_REF == 0 {
            victim = w;
            break;
        }
        ways.set_tail(w, last & !FLOW_REF);
        j += 1;
    }
    ways.set_entry(victim, &entry);
}

/// The flow an IPv4 table entry holds, if the entry is in use and whole (check byte).
pub fn flow_entry4_decode(e: &[u64; 2]) -> Option<(FlowKey4, FlowValue)> {
    let key = [e[0], e[1] & FLOW_TAIL_KEY_MASK];
    let used = (e[1] >> 32) & 0xff != 0;
    let whole = (e[1] >> 40) & 0xff == u64::from(flow_table_hash(&key) & 0xff);
    // SAFETY: `FlowKey4` is `repr(C)`, 16 bytes of byte arrays and bytes with no
    // implicit padding (`layouts_have_no_implicit_padding`); `transmute` checks sizes.
    let k = unsafe { core::mem::transmute::<[u64; 2], FlowKey4>(key.map(u64::to_le)) };
    (used && whole).then_some((
        k,
        FlowValue {
            gateway: entry_gateway(e[1]),
        },
    ))
}

/// The flow an IPv6 table entry holds (a [`FlowKey`] of family [`FAMILY_V6`]), if the
/// entry is in use and whole (check byte).
pub fn flow_entry6_decode(e: &[u64; 5]) -> Option<(FlowKey, FlowValue)> {
    let key = [e[0], e[1], e[2], e[3], e[4] & FLOW_TAIL_KEY_MASK];
    let used = (e[4] >> 32) & 0xff != 0;
    let whole = (e[4] >> 40) & 0xff == u64::from(flow_table_hash(&key) & 0xff);
    let mut w = key;
    w[4] |= u64::from(FAMILY_V6) << 40;
    // SAFETY: as in `FlowKey::from_words`: 40 plain bytes either way.
    let k = unsafe { core::mem::transmute::<[u64; 5], FlowKey>(w.map(u64::to_le)) };
    (used && whole).then_some((
        k,
        FlowValue {
            gateway: entry_gateway(e[4]),
        },
    ))
}

/// A slot of the `VIPS` table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipSlot {
    pub key: VipKey,
    pub value: VipValue,
    /// [`VIP_SLOT_USED`] when live, 0 when free.
    pub state: u32,
}

/// The first probe position of `key` in the `VIPS` table.
#[inline(always)]
pub fn vip_slot_hash(key: &VipKey) -> u32 {
    vip_slot_hash_words(
        addr_words(&key.addr),
        vip_tail(u16::from_le_bytes(key.port), key.proto, key.family),
    )
}

/// [`vip_slot_hash`] of the key with address words `addr` and tail word `tail`
/// ([`vip_tail`]).
#[inline(always)]
pub fn vip_slot_hash_words(addr: AddrWords, tail: u32) -> u32 {
    let h = mix(mix(addr[0], addr[1]), u64::from(tail));
    (h >> 40) as u32 & (VIP_TABLE_SLOTS - 1)
}

/// Per-VIP counters (one per CPU in `VIP_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    /// Packets that picked a gateway from the ring (connection-table misses and SYNs).
    pub new_flows: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), fields are integers or byte arrays laid out without implicit
    // padding (explicit `_pad` fields), every bit pattern is valid.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipValue {}
    unsafe impl aya::Pod for super::VipSlot {}
    unsafe impl aya::Pod for super::GatewayValue {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKey4 {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::FlowBucket4 {}
    unsafe impl aya::Pod for super::FlowBucket6 {}
    unsafe impl aya::Pod for super::RingChunk {}
    unsafe impl aya::Pod for super::VipStats {}
}

#[inline(always)]
fn mix(h: u64, v: u64) -> u64 {
    let x = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 29)
}

#[inline(always)]
fn half(a: &[u8; 16], hi: bool) -> u64 {
    let o = if hi { 8 } else { 0 };
    u64::from_le_bytes([
        a[o],
        a[o + 1],
        a[o + 2],
        a[o + 3],
        a[o + 4],
        a[o + 5],
        a[o + 6],
        a[o + 7],
    ])
}

/// The flow hash that picks a ring slot: `flow_hash(key, flags) % RING_SIZE`. With
/// [`VIP_F_HASH_SRC_ADDR`] the ports and protocol are left out.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, vip_flags: u32) -> u32 {
    let w = key.words();
    // Word 4: ports in bits 0-31, protocol 32-39, family 40-47.
    let mut h = mix(0x6c62_2d6c_6232_3031, (w[4] >> 40) & 0xff);
    h = mix(h, w[0]);
    h = mix(h, w[1]);
    h = mix(h, w[2]);
    h = mix(h, w[3]);
    if vip_flags & VIP_F_HASH_SRC_ADDR == 0 {
        h = mix(h, w[4] & 0xff_ffff_ffff);
    }
    // Final avalanche (the murmur3 64-bit finaliser).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 32) as u32
}

/// The `VIP_FILTER` bit of a destination address. Userspace sets the bit of every VIP
/// entry's address before it inserts the entry and clears it after the last entry with
/// that bit is gone; the program only skips the `VIPS` lookup on a clear bit, so a shared
/// bit costs a lookup, never a wrong verdict.
#[inline(always)]
pub fn vip_filter_bit(addr: &[u8; 16]) -> u32 {
    vip_filter_bit_words(addr_words(addr))
}

/// [`vip_filter_bit`] of the address with words `a`.
#[inline(always)]
pub fn vip_filter_bit_words(a: AddrWords) -> u32 {
    let x = a[0] ^ a[1].rotate_left(29);
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as u32
}

/// Ring slot `hash % RING_SIZE` of copy `select` (0 or 1) of VIP `vip_id`, numbered over
/// all rings (copy after copy, VIP after VIP): the model's ring index. [`ring_entry`] says
/// where the slot is stored in `RINGS`.
#[inline(always)]
pub fn ring_index(vip_id: u32, select: u32, hash: u32) -> u32 {
    (vip_id * 2 + (select & 1)) * RING_SIZE + hash % RING_SIZE
}

/// Where slot `hash % RING_SIZE` of copy `select` of VIP `vip_id` is stored: the `RINGS`
/// entry ([`RingChunk`]) and the slot within it (`< RING_CHUNK_SLOTS`).
#[inline(always)]
pub fn ring_entry(vip_id: u32, select: u32, hash: u32) -> (u32, u32) {
    let slot = hash % RING_SIZE;
    (
        (vip_id * 2 + (select & 1)) * RING_CHUNKS + slot / RING_CHUNK_SLOTS,
        slot % RING_CHUNK_SLOTS,
    )
}

/// The IPv4 header checksum (RFC 791) of a 20-byte header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_checksum(h: &[u8; IPV4_HLEN]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < IPV4_HLEN {
        sum += ((h[i] as u32) << 8) | h[i + 1] as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The IPv4 header checksum of a 20-byte header given as five words (the raw header bytes
/// read as native `u32`s, the checksum field zero), as the native `u16` to store at bytes
/// 10-11. The one's-complement sum does not depend on byte order (RFC 1071, 2(B)), so it
/// is summed in native words and folded.
#[inline(always)]
pub fn ipv4_checksum_words(w: [u32; 5]) -> u16 {
    checksum_fold(
        u64::from(w[0]) + u64::from(w[1]) + u64::from(w[2]) + u64::from(w[3]) + u64::from(w[4]),
    )
}

/// The Internet checksum (RFC 1071) from a sum of native 32-bit words of the data: folded
/// to 16 bits and complemented, as the native `u16` to store.
#[inline(always)]
pub fn checksum_fold(sum: u64) -> u16 {
    let mut sum = sum;
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The outer IPv4 header of IPIP encapsulation (RFC 2003): TOS copied from the inner header
/// (DSCP and ECN, RFC 6040 normal mode), total length = inner total length + 20, DF copied
/// from the inner header, identification 0, TTL [`OUTER_TTL`], protocol 4.
#[inline(always)]
pub fn outer_ipv4(
    inner_tos: u8,
    inner_total_len: u16,
    inner_df: bool,
    src: [u8; 4],
    dst: [u8; 4],
) -> [u8; IPV4_HLEN] {
    let len = inner_total_len.wrapping_add(IPV4_HLEN as u16).to_be_bytes();
    let mut h = [
        0x45,
        inner_tos,
        len[0],
        len[1],
        0,
        0,
        if inner_df { 0x40 } else { 0 },
        0,
        OUTER_TTL,
        PROTO_IPIP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let c = ipv4_checksum(&h).to_be_bytes();
    h[10] = c[0];
    h[11] = c[1];
    h
}

/// The outer IPv6 header of IP6IP6 encapsulation (RFC 2473): version, traffic class and
/// flow label copied from the inner header (`inner_vtcfl`, its first 4 bytes), payload
/// length = inner payload length + 40, next header 41, hop limit [`OUTER_TTL`].
#[inline(always)]
pub fn outer_ipv6(
    inner_vtcfl: [u8; 4],
    inner_payload_len: u16,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> [u8; IPV6_HLEN] {
    let len = inner_payload_len
        .wrapping_add(IPV6_HLEN as u16)
        .to_be_bytes();
    let mut h = [0u8; IPV6_HLEN];
    h[0] = 0x60 | (inner_vtcfl[0] & 0x0f);
    h[1] = inner_vtcfl[1];
    h[2] = inner_vtcfl[2];
    h[3] = inner_vtcfl[3];
    h[4] = len[0];
    h[5] = len[1];
    h[6] = PROTO_IPV6;
    h[7] = OUTER_TTL;
    let mut i = 0;
    while i < 16 {
        h[8 + i] = src[i];
        h[24 + i] = dst[i];
        i += 1;
    }
    h
}

/// IPv6 next-header values that are extension headers (RFC 8200 and the IANA list):
/// packets to a VIP that carry one are passed to the stack.
#[inline(always)]
pub fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// The first 4 bytes of a 16-byte address field (IPv4 addresses are stored there).
#[inline(always)]
pub fn v4_of(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// A 16-byte address field holding an IPv4 address.
#[inline(always)]
pub fn v4_field(a: [u8; 4]) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[0] = a[0];
    f[1] = a[1];
    f[2] = a[2];
    f[3] = a[3];
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot of every ring copy has its own place in `RINGS`, inside the map, and the
    /// slots of one copy are stored in order (what the loader's writer assumes).
    /// The program's buckets (last words apart) and whole-entry buckets (the model's) go
    /// through the same states under the same records and lookups, way for way.
    #[test]
    fn bucket_layouts_behave_alike() {
        fn run<const N: usize, B: FlowWays<N> + Default>(seed: u64) {
            let mut x = seed;
            let mut next = move || {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                x >> 33
            };
            let mut program = B::default();
            let mut model = [[0u64; N]; FLOW_WAYS];
            for step in 0..20_000 {
                // Keys from a pool of 12 for one bucket: same keys, free ways and evictions.
                let k = next() % 12;
                let mut key = [0u64; N];
                for (j, w) in key.iter_mut().enumerate() {
                    *w = k.wrapping_mul(0x9e37_79b9) ^ j as u64;
                }
                key[N - 1] = (0x0600_0000_0000 | k) & FLOW_TAIL_KEY_MASK;
                let hash = flow_table_hash(&key);
                if next() % 3 == 0 {
                    let gw = (next() % u64::from(MAX_GATEWAYS)) as u32;
                    flow_record(&mut program, &key, hash, gw);
                    flow_record(&mut model, &key, hash, gw);
                } else {
                    assert_eq!(
                        flow_lookup(&mut program, &key, hash),
                        flow_lookup(&mut model, &key, hash),
                        "step {step}"
                    );
                }
                for i in 0..FLOW_WAYS {
                    assert_eq!(program.entry(i), model.entry(i), "step {step} way {i}");
                }
            }
        }
        for seed in 1..4 {
            run::<2, FlowBucket4>(seed);
            run::<5, FlowBucket6>(seed);
        }
    }

    #[test]
    fn ring_slots_store_every_gateway_and_none() {
        for gw in [0, 1, MAX_GATEWAYS - 1, NO_GATEWAY] {
            let v = ring_slot_value(gw);
            assert_eq!(v.map(ring_slot_gateway), Some(gw), "gateway {gw}");
        }
        assert_eq!(ring_slot_value(MAX_GATEWAYS), None);
        assert_eq!(ring_slot_value(u32::from(RING_NO_GATEWAY)), None);
    }

    #[test]
    fn ring_entries_place_every_slot_once() {
        assert_eq!(RING_CHUNKS, 2049);
        let mut seen = std::collections::HashSet::new();
        for vip in [0, 1, MAX_VIPS - 1] {
            for select in [0, 1] {
                let base = (vip * 2 + select) * RING_CHUNKS;
                for slot in 0..RING_SIZE {
                    let (entry, lane) = ring_entry(vip, select, slot);
                    assert!(entry < MAX_VIPS * 2 * RING_CHUNKS && lane < RING_CHUNK_SLOTS);
                    assert_eq!(
                        (entry - base) * RING_CHUNK_SLOTS + lane,
                        slot,
                        "vip {vip} copy {select} slot {slot}"
                    );
                    assert!(seen.insert((entry, lane)));
                    // The hash is reduced modulo the ring size first, like `ring_index`.
                    assert_eq!(ring_entry(vip, select, slot + RING_SIZE), (entry, lane));
                }
            }
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<VipKey>(), 20);
        assert_eq!(core::mem::size_of::<VipValue>(), 8);
        assert_eq!(core::mem::size_of::<VipSlot>(), 32);
        assert_eq!(core::mem::size_of::<GatewayValue>(), 32);
        assert_eq!(core::mem::size_of::<NodeConfig>(), 32);
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        assert_eq!(core::mem::size_of::<FlowKey4>(), 16);
        assert_eq!(core::mem::size_of::<FlowValue>(), 4);
        assert_eq!(core::mem::size_of::<FlowBucket4>(), 64);
        assert_eq!(core::mem::size_of::<RingChunk>(), 64);
        assert_eq!(core::mem::size_of::<FlowBucket6>(), 160);
        assert_eq!(core::mem::size_of::<VipStats>(), 24);
    }

    #[test]
    fn ipv4_checksum_matches_a_known_header() {
        // The worked example of RFC 1071's usual illustration (Wikipedia's IPv4 header).
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        // A header with a correct checksum sums to 0xffff, whose complement is 0.
        let mut sum: u32 = 0;
        for w in h.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn words_are_the_raw_bytes() {
        let key = FlowKey {
            src: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            dst: v4_field([10, 0, 0, 100]),
            sport: [0x9c, 0x40],
            dport: [0, 80],
            proto: PROTO_TCP,
            family: FAMILY_V6,
            _pad: [0; 2],
        };
        let raw16 = |b: [u8; 2]| u16::from_ne_bytes(b);
        let built = FlowKey::from_words(
            addr_words(&key.src),
            v4_words(u32::from_ne_bytes([10, 0, 0, 100])),
            raw16(key.sport),
            raw16(key.dport),
            key.proto,
            key.family,
        );
        assert_eq!(built, key);
        assert_eq!(
            FlowKey::from_words(
                [built.words()[0], built.words()[1]],
                [built.words()[2], built.words()[3]],
                raw16(key.sport),
                raw16(key.dport),
                key.proto,
                key.family,
            ),
            key
        );
        assert_eq!(built.words()[4], 0x0606_5000_409c);
        // The tail word is the u32 that a `VipSlot` holds after the address.
        let vk = VipKey {
            addr: key.dst,
            port: [0, 80],
            proto: PROTO_TCP,
            family: FAMILY_V4,
        };
        assert_eq!(
            vip_tail(raw16(vk.port), vk.proto, vk.family).to_le_bytes(),
            [0, 80, PROTO_TCP, FAMILY_V4]
        );
        assert_eq!(
            vip_slot_hash(&vk),
            vip_slot_hash_words(addr_words(&vk.addr), vip_tail(raw16([0, 80]), 6, 4))
        );
    }

    #[test]
    fn flow_key4_holds_the_ipv4_5_tuple() {
        let key = FlowKey {
            src: v4_field([192, 0, 2, 50]),
            dst: v4_field([10, 0, 0, 100]),
            sport: [0x9c, 0x40],
            dport: [0, 80],
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        let k4 = FlowKey4::of(&key);
        assert_eq!(
            k4,
            FlowKey4 {
                src: [192, 0, 2, 50],
                dst: [10, 0, 0, 100],
                sport: [0x9c, 0x40],
                dport: [0, 80],
                proto: PROTO_TCP,
                _pad: [0; 3],
            }
        );
        assert_eq!(k4.flow_key(), key);
        // Every field is in the key: keys differ when any part of the 5-tuple does.
        let variants = [
            FlowKey {
                src: v4_field([192, 0, 2, 51]),
                ..key
            },
            FlowKey {
                dst: v4_field([10, 0, 0, 101]),
                ..key
            },
            FlowKey {
                sport: [0x9c, 0x41],
                ..key
            },
            FlowKey {
                dport: [0, 81],
                ..key
            },
            FlowKey {
                proto: PROTO_UDP,
                ..key
            },
        ];
        for v in variants {
            assert_ne!(FlowKey4::of(&v), k4, "{v:?}");
            assert_eq!(FlowKey4::of(&v).flow_key(), v);
        }
    }

    #[test]
    fn checksum_of_words_equals_the_byte_checksum() {
        let mut h = outer_ipv4(0x10, 1400, false, [192, 168, 7, 1], [172, 16, 0, 200]);
        h[10] = 0;
        h[11] = 0;
        let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let c = ipv4_checksum_words([w(0), w(4), w(8), w(12), w(16)]);
        assert_eq!(c.to_ne_bytes(), ipv4_checksum(&h).to_be_bytes());
        // Many headers, including sums that need every fold.
        for seed in 0..5000u32 {
            let x = seed.wrapping_mul(0x9e37_79b9);
            let mut h = outer_ipv4(
                x as u8,
                (x >> 8) as u16,
                x & 1 == 0,
                x.to_be_bytes(),
                (!x).rotate_left(7).to_be_bytes(),
            );
            h[10] = 0;
            h[11] = 0;
            let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            let c = ipv4_checksum_words([w(0), w(4), w(8), w(12), w(16)]);
            assert_eq!(
                c.to_ne_bytes(),
                ipv4_checksum(&h).to_be_bytes(),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn outer_ipv4_fields() {
        let h = outer_ipv4(0xb8, 60, true, [10, 0, 0, 1], [10, 0, 0, 2]);
        assert_eq!(h[0], 0x45);
        assert_eq!(h[1], 0xb8);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 80);
        assert_eq!(h[6], 0x40);
        assert_eq!(h[8], OUTER_TTL);
        assert_eq!(h[9], PROTO_IPIP);
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(u16::from_be_bytes([h[10], h[11]]), ipv4_checksum(&z));
    }

    #[test]
    fn flow_hash_depends_on_every_field_unless_src_only() {
        let base = FlowKey {
            src: v4_field([10, 0, 0, 1]),
            dst: v4_field([10, 0, 0, 100]),
            sport: [0x9c, 0x40],
            dport: [0, 80],
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        let h = flow_hash(&base, 0);
        let mut k = base;
        k.sport = [0x9c, 0x41];
        assert_ne!(flow_hash(&k, 0), h);
        assert_eq!(
            flow_hash(&k, VIP_F_HASH_SRC_ADDR),
            flow_hash(&base, VIP_F_HASH_SRC_ADDR)
        );
        k = base;
        k.src[3] = 2;
        assert_ne!(flow_hash(&k, 0), h);
        assert_ne!(
            flow_hash(&k, VIP_F_HASH_SRC_ADDR),
            flow_hash(&base, VIP_F_HASH_SRC_ADDR)
        );
        k = base;
        k.proto = PROTO_UDP;
        assert_ne!(flow_hash(&k, 0), h);
    }

    #[test]
    fn flow_hash_spreads_evenly_over_the_ring() {
        // 200k client ports over 16 buckets of the ring: each within 5% of the mean.
        let mut buckets = [0u32; 16];
        for p in 0..200_000u32 {
            let k = FlowKey {
                src: v4_field([10, 1, (p >> 16) as u8, (p >> 8) as u8]),
                dst: v4_field([10, 0, 0, 100]),
                sport: (p as u16).to_be_bytes(),
                dport: [0, 80],
                proto: PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            };
            let slot = flow_hash(&k, 0) % RING_SIZE;
            buckets[(slot as usize * 16) / RING_SIZE as usize] += 1;
        }
        let mean = 200_000.0 / 16.0;
        for b in buckets {
            assert!((f64::from(b) - mean).abs() / mean < 0.05, "{buckets:?}");
        }
    }
}
