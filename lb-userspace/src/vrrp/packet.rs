//! The VRRPv3 advertisement on the wire (RFC 5798 section 5, unchanged in RFC 9568), and the
//! IP-level checks a receiver must make before the state machine sees a packet (RFC 5798
//! section 7.1).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    IPvX Address(es) ...                       |
//! ```
//!
//! The checksum covers an IP pseudo-header followed by the VRRP message, for IPv4 as well
//! as IPv6 (RFC 5798 section 5.2.8 as clarified by RFC 9568 section 5.2.8). keepalived and
//! FRR compute and check it that way; the keepalived capture in
//! `tests/fixtures/keepalived-vrrpv3.txt` verifies only with the pseudo-header.
//!
//! Decoding is strict: every field that can be wrong yields a [`PacketError`] that names it.
//! Nothing here panics on input from the network.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

/// IP protocol number / IPv6 next header of VRRP (RFC 5798 section 5.1.1.3, 5.1.2.3).
pub const VRRP_PROTOCOL: u8 = 112;
/// The only version this module speaks (RFC 5798 section 5.2.1).
pub const VRRP_VERSION: u8 = 3;
/// The only message type defined (RFC 5798 section 5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// IPv4 TTL / IPv6 hop limit a VRRP packet is sent with and must arrive with
/// (RFC 5798 sections 5.1.1.3, 5.1.2.3, 7.1).
pub const VRRP_TTL: u8 = 255;
/// The IPv4 multicast group adverts go to (RFC 5798 section 5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group adverts go to (RFC 5798 section 5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// Length of the fixed part of the message, before the addresses.
pub const HEADER_LEN: usize = 8;
/// The largest Max Adver Int: the field has 12 bits (RFC 5798 section 5.2.7).
pub const MAX_ADVER_INT_CENTIS: u16 = 0x0fff;
/// The largest number of addresses the 8-bit count field can carry.
pub const MAX_ADDRESSES: usize = 255;

/// Length of an IPv4 header without options.
const IPV4_MIN_HEADER: usize = 20;
/// Length of the fixed IPv6 header.
const IPV6_HEADER: usize = 40;

/// Everything that can be wrong with a VRRP packet, at the IP or the VRRP level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the fixed 8-byte header.
    #[error("truncated VRRP message: {len} bytes, the header alone needs {HEADER_LEN}")]
    Truncated { len: usize },
    /// Version nibble is not 3 (VRRPv2 carries 2).
    #[error("VRRP version {version}, expected {VRRP_VERSION}")]
    WrongVersion { version: u8 },
    /// Type nibble is not 1 (ADVERTISEMENT).
    #[error("VRRP type {kind}, expected {TYPE_ADVERTISEMENT} (ADVERTISEMENT)")]
    WrongType { kind: u8 },
    /// The length does not hold exactly `count` addresses of the packet's family.
    #[error("{count} {family} address(es) need a {expected}-byte message, got {len} bytes")]
    AddressCountMismatch {
        count: u8,
        family: Family,
        expected: usize,
        len: usize,
    },
    /// Checksum over pseudo-header + message does not verify.
    #[error("bad VRRP checksum: packet carries {found:#06x}, computed {computed:#06x}")]
    BadChecksum { found: u16, computed: u16 },
    /// VRID 0 is not a valid virtual router (RFC 5798 section 5.2.3: 1-255).
    #[error("virtual router id 0 is invalid (valid: 1-255)")]
    ZeroVrid,
    /// A Max Adver Int of 0 would make every timer expire at once.
    #[error("max advertisement interval 0 is invalid (valid: 1-{MAX_ADVER_INT_CENTIS} cs)")]
    ZeroInterval,
    /// An interval that does not fit in 12 bits.
    #[error("max advertisement interval {centis} cs does not fit in 12 bits")]
    IntervalTooLarge { centis: u16 },
    /// Count 0: an advert carries one or more addresses (RFC 5798 sections 5.2.9, 5.2.10).
    #[error("advertisement carries no virtual address")]
    NoAddresses,
    /// More addresses than the count field can say.
    #[error("{count} virtual addresses, at most {MAX_ADDRESSES} fit in one advertisement")]
    TooManyAddresses { count: usize },
    /// Pseudo-header source and destination are of different families.
    #[error("source {src} and destination {dst} are of different address families")]
    FamilyMismatch { src: IpAddr, dst: IpAddr },
    /// Virtual addresses of one family in a packet of the other.
    #[error("{addrs} virtual addresses cannot be sent in an {packet} packet")]
    WrongFamily { packet: Family, addrs: Family },
    /// TTL / hop limit is not 255: the packet may come from off-link (RFC 5798 section 7.1).
    #[error("TTL/hop limit {ttl}, must be {VRRP_TTL}")]
    BadTtl { ttl: u8 },
    /// IP protocol / next header is not 112.
    #[error("IP protocol {protocol}, expected {VRRP_PROTOCOL} (VRRP)")]
    WrongProtocol { protocol: u8 },
    /// Destination is neither the VRRP group nor, with unicast peers, our own address.
    #[error("destination {dst} is neither the VRRP multicast group nor our unicast address")]
    BadDestination { dst: IpAddr },
    /// With unicast peers: the source is not one of them.
    #[error("source {src} is not a configured unicast peer")]
    UnknownPeer { src: IpAddr },
    /// Multicast, unspecified or loopback source: no router sends from there.
    #[error("source {src} cannot be a VRRP router's address")]
    BadSource { src: IpAddr },
    /// The IPv4/IPv6 header around the message is malformed.
    #[error("malformed {family} header: {reason}")]
    MalformedIpHeader {
        family: Family,
        reason: &'static str,
    },
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Bytes per address of this family.
    pub fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// The multicast group VRRP adverts of this family go to.
    pub fn multicast_group(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(MULTICAST_V4),
            Family::V6 => IpAddr::V6(MULTICAST_V6),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A Virtual Router Identifier: 1-255 (RFC 5798 section 5.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vrid(u8);

impl Vrid {
    /// `None` for 0, which no virtual router may use.
    pub const fn new(id: u8) -> Option<Vrid> {
        if id == 0 { None } else { Some(Vrid(id)) }
    }

    /// The identifier as a number.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Vrid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An advertisement interval in centiseconds, 1-4095 (RFC 5798 section 5.2.7): the 12-bit
/// Max Adver Int on the wire, and the Advertisement_Interval / Master_Adver_Interval of
/// section 6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdverInterval(u16);

impl AdverInterval {
    /// The RFC's default Advertisement_Interval: 100 cs = 1 s (RFC 5798 section 6.1).
    pub const DEFAULT: AdverInterval = AdverInterval(100);

    /// `None` unless `1 <= centis <= 4095`.
    pub const fn from_centis(centis: u16) -> Option<AdverInterval> {
        if centis == 0 || centis > MAX_ADVER_INT_CENTIS {
            None
        } else {
            Some(AdverInterval(centis))
        }
    }

    /// The interval in centiseconds.
    pub const fn centis(self) -> u16 {
        self.0
    }

    /// The interval as a duration.
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0) * 10)
    }
}

/// The virtual addresses of one virtual router; one family per virtual router
/// (RFC 5798 section 1: IPv4 and IPv6 virtual routers are separate instances).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VirtualAddrs {
    /// The addresses of an IPv4 virtual router.
    V4(Vec<Ipv4Addr>),
    /// The addresses of an IPv6 virtual router.
    V6(Vec<Ipv6Addr>),
}

impl VirtualAddrs {
    /// The family of the addresses.
    pub fn family(&self) -> Family {
        match self {
            VirtualAddrs::V4(_) => Family::V4,
            VirtualAddrs::V6(_) => Family::V6,
        }
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        match self {
            VirtualAddrs::V4(a) => a.len(),
            VirtualAddrs::V6(a) => a.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The addresses as [`IpAddr`]s, in order.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let (v4, v6) = match self {
            VirtualAddrs::V4(a) => (a.as_slice(), &[][..]),
            VirtualAddrs::V6(a) => (&[][..], a.as_slice()),
        };
        v4.iter()
            .map(|a| IpAddr::V4(*a))
            .chain(v6.iter().map(|a| IpAddr::V6(*a)))
    }

    /// Whether both hold the same set of addresses, in any order and ignoring repeats
    /// (the comparison of RFC 5798 section 7.1).
    pub fn same_set(&self, other: &VirtualAddrs) -> bool {
        self.family() == other.family()
            && self.iter().all(|a| other.iter().any(|b| b == a))
            && other.iter().all(|b| self.iter().any(|a| a == b))
    }
}

/// The source and destination of the IP packet that carries a message: the part of the
/// pseudo-header (RFC 768 style for IPv4, RFC 8200 section 8.1 for IPv6) that varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PseudoHeader {
    /// An IPv4 packet's source and destination.
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    /// An IPv6 packet's source and destination.
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl PseudoHeader {
    /// Pairs `src` and `dst`, which must be of one family.
    pub fn new(src: IpAddr, dst: IpAddr) -> Result<PseudoHeader, PacketError> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Ok(PseudoHeader::V4 { src, dst }),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Ok(PseudoHeader::V6 { src, dst }),
            _ => Err(PacketError::FamilyMismatch { src, dst }),
        }
    }

    /// The family of the packet.
    pub fn family(&self) -> Family {
        match self {
            PseudoHeader::V4 { .. } => Family::V4,
            PseudoHeader::V6 { .. } => Family::V6,
        }
    }

    /// The source address.
    pub fn src(&self) -> IpAddr {
        match *self {
            PseudoHeader::V4 { src, .. } => IpAddr::V4(src),
            PseudoHeader::V6 { src, .. } => IpAddr::V6(src),
        }
    }

    /// The one's-complement sum of the pseudo-header for an upper-layer message of
    /// `len` bytes and protocol `protocol`, not yet folded.
    fn sum(&self, protocol: u8, len: usize) -> u64 {
        match self {
            PseudoHeader::V4 { src, dst } => {
                // src, dst, zero, protocol, 16-bit length.
                let len = (len & 0xffff) as u16;
                let mut acc = sum_words(0, &src.octets());
                acc = sum_words(acc, &dst.octets());
                acc + u64::from(protocol) + u64::from(len)
            }
            PseudoHeader::V6 { src, dst } => {
                // src, dst, 32-bit upper-layer length, 24 zero bits, next header.
                let len = (len & 0xffff_ffff) as u32;
                let mut acc = sum_words(0, &src.octets());
                acc = sum_words(acc, &dst.octets());
                sum_words(acc, &len.to_be_bytes()) + u64::from(protocol)
            }
        }
    }
}

/// Adds `bytes` to a one's-complement accumulator as big-endian 16-bit words, padding an
/// odd last byte with zero (RFC 1071). A u64 cannot overflow for any real input.
fn sum_words(mut acc: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// Folds the carries back in: the 16-bit one's-complement sum.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves at most 16 bits.
    acc as u16
}

/// The Internet checksum of `msg` (checksum field included as it is) behind the
/// pseudo-header for protocol `protocol`. Over a message whose checksum field is zero this
/// is the value to put in the field; over a received message it is 0 when it verifies.
pub fn pseudo_header_checksum(ph: &PseudoHeader, protocol: u8, msg: &[u8]) -> u16 {
    !fold(sum_words(ph.sum(protocol, msg.len()), msg))
}

/// One VRRPv3 ADVERTISEMENT (RFC 5798 section 5.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Advertisement {
    /// The virtual router this advert speaks for.
    pub vrid: Vrid,
    /// Sender's priority: 0 = master leaving, 1-254 backups, 255 = address owner
    /// (RFC 5798 section 5.2.4).
    pub priority: u8,
    /// The sender's Advertisement_Interval (RFC 5798 section 5.2.7).
    pub max_adver_int: AdverInterval,
    /// The virtual addresses; their family must be the IP packet's.
    pub addrs: VirtualAddrs,
}

impl Advertisement {
    /// Length of the encoded message.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.addrs.len() * self.addrs.family().addr_len()
    }

    /// The message as sent inside an IP packet from `ph.src` to `ph.dst`, checksum included.
    /// Fails when the addresses are of the other family, there are none, or more than 255.
    pub fn encode(&self, ph: &PseudoHeader) -> Result<Vec<u8>, PacketError> {
        let family = self.addrs.family();
        if family != ph.family() {
            return Err(PacketError::WrongFamily {
                packet: ph.family(),
                addrs: family,
            });
        }
        if self.addrs.is_empty() {
            return Err(PacketError::NoAddresses);
        }
        let count = u8::try_from(self.addrs.len()).map_err(|_| PacketError::TooManyAddresses {
            count: self.addrs.len(),
        })?;
        let mut buf = Vec::with_capacity(self.encoded_len());
        buf.push((VRRP_VERSION << 4) | TYPE_ADVERTISEMENT);
        buf.push(self.vrid.get());
        buf.push(self.priority);
        buf.push(count);
        // The 4 reserved bits are sent as zero (RFC 5798 section 5.2.6); AdverInterval
        // guarantees the value fits in the other 12.
        buf.extend_from_slice(&(self.max_adver_int.centis() & MAX_ADVER_INT_CENTIS).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        match &self.addrs {
            VirtualAddrs::V4(addrs) => addrs
                .iter()
                .for_each(|a| buf.extend_from_slice(&a.octets())),
            VirtualAddrs::V6(addrs) => addrs
                .iter()
                .for_each(|a| buf.extend_from_slice(&a.octets())),
        }
        let checksum = pseudo_header_checksum(ph, VRRP_PROTOCOL, &buf);
        buf[6..8].copy_from_slice(&checksum.to_be_bytes());
        Ok(buf)
    }

    /// Parses and checks a message received in an IP packet described by `ph`, in the order
    /// of RFC 5798 section 7.1: version, type, length against count, checksum, then the
    /// field values. The reserved bits are ignored (section 5.2.6).
    pub fn decode(msg: &[u8], ph: &PseudoHeader) -> Result<Advertisement, PacketError> {
        let [
            ver_type,
            vrid,
            priority,
            count,
            int_hi,
            int_lo,
            ck_hi,
            ck_lo,
            addr_bytes @ ..,
        ] = msg
        else {
            return Err(PacketError::Truncated { len: msg.len() });
        };
        let version = ver_type >> 4;
        if version != VRRP_VERSION {
            return Err(PacketError::WrongVersion { version });
        }
        let kind = ver_type & 0x0f;
        if kind != TYPE_ADVERTISEMENT {
            return Err(PacketError::WrongType { kind });
        }
        let family = ph.family();
        let expected = HEADER_LEN + usize::from(*count) * family.addr_len();
        if msg.len() != expected {
            return Err(PacketError::AddressCountMismatch {
                count: *count,
                family,
                expected,
                len: msg.len(),
            });
        }
        if pseudo_header_checksum(ph, VRRP_PROTOCOL, msg) != 0 {
            let mut zeroed = msg.to_vec();
            zeroed[6..8].fill(0);
            return Err(PacketError::BadChecksum {
                found: u16::from_be_bytes([*ck_hi, *ck_lo]),
                computed: pseudo_header_checksum(ph, VRRP_PROTOCOL, &zeroed),
            });
        }
        let vrid = Vrid::new(*vrid).ok_or(PacketError::ZeroVrid)?;
        let centis = u16::from_be_bytes([*int_hi, *int_lo]) & MAX_ADVER_INT_CENTIS;
        let max_adver_int = AdverInterval::from_centis(centis).ok_or(PacketError::ZeroInterval)?;
        if *count == 0 {
            return Err(PacketError::NoAddresses);
        }
        let addrs = match family {
            Family::V4 => VirtualAddrs::V4(
                addr_bytes
                    .chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect(),
            ),
            Family::V6 => VirtualAddrs::V6(
                addr_bytes
                    .chunks_exact(16)
                    .filter_map(|c| <[u8; 16]>::try_from(c).ok())
                    .map(Ipv6Addr::from)
                    .collect(),
            ),
        };
        Ok(Advertisement {
            vrid,
            priority: *priority,
            max_adver_int,
            addrs,
        })
    }
}

/// The IP-header fields the receiver checks (RFC 5798 section 7.1). From a raw IPv4 socket
/// they come from the delivered header ([`parse_ipv4`]); for IPv6 the hop limit comes from
/// the `IPV6_HOPLIMIT` control message and the destination from `IPV6_PKTINFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeaderInfo {
    /// Source address: the sender's primary address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 protocol or IPv6 next header.
    pub protocol: u8,
}

/// How adverts reach this router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// To 224.0.0.18 / ff02::12 (RFC 5798 sections 5.1.1.2, 5.1.2.2).
    Multicast,
    /// Unicast between configured peers (keepalived's `unicast_peer`), not in the RFC:
    /// adverts come to `local` from one of `peers`.
    Unicast {
        /// Our own address the peers send to.
        local: IpAddr,
        /// The only sources we accept.
        peers: &'a [IpAddr],
    },
}

/// The IP-level checks of RFC 5798 section 7.1 (TTL/hop limit 255, protocol 112) plus the
/// destination (the group, or our address with unicast peers) and a sane source. Returns
/// the pseudo-header to decode the message with.
pub fn check_ip_header(
    hdr: &IpHeaderInfo,
    delivery: &Delivery<'_>,
) -> Result<PseudoHeader, PacketError> {
    let ph = PseudoHeader::new(hdr.src, hdr.dst)?;
    if hdr.protocol != VRRP_PROTOCOL {
        return Err(PacketError::WrongProtocol {
            protocol: hdr.protocol,
        });
    }
    if hdr.ttl != VRRP_TTL {
        return Err(PacketError::BadTtl { ttl: hdr.ttl });
    }
    if hdr.src.is_multicast() || hdr.src.is_unspecified() || hdr.src.is_loopback() {
        return Err(PacketError::BadSource { src: hdr.src });
    }
    if let IpAddr::V4(v4) = hdr.src
        && v4.is_broadcast()
    {
        return Err(PacketError::BadSource { src: hdr.src });
    }
    match delivery {
        Delivery::Multicast => {
            if hdr.dst != ph.family().multicast_group() {
                return Err(PacketError::BadDestination { dst: hdr.dst });
            }
        }
        Delivery::Unicast { local, peers } => {
            if hdr.dst != *local {
                return Err(PacketError::BadDestination { dst: hdr.dst });
            }
            if !peers.contains(&hdr.src) {
                return Err(PacketError::UnknownPeer { src: hdr.src });
            }
        }
    }
    Ok(ph)
}

/// Splits an IPv4 packet (as a raw `IPPROTO_VRRP` socket delivers it on Linux: header
/// included, lengths in network order) into its header fields and payload. Checks version,
/// header length, total length, header checksum, and refuses fragments (a VRRP message is
/// never fragmented). Bytes past the total length (link padding) are dropped.
pub fn parse_ipv4(packet: &[u8]) -> Result<(IpHeaderInfo, &[u8]), PacketError> {
    let bad = |reason| PacketError::MalformedIpHeader {
        family: Family::V4,
        reason,
    };
    let fixed = packet
        .get(..IPV4_MIN_HEADER)
        .ok_or(bad("shorter than 20 bytes"))?;
    if fixed[0] >> 4 != 4 {
        return Err(bad("version is not 4"));
    }
    let ihl = usize::from(fixed[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HEADER {
        return Err(bad("header length below 20 bytes"));
    }
    let total = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    if total < ihl || total > packet.len() {
        return Err(bad("total length does not match the packet"));
    }
    let header = packet
        .get(..ihl)
        .ok_or(bad("header longer than the packet"))?;
    if u16::from_be_bytes([fixed[6], fixed[7]]) & 0x3fff != 0 {
        return Err(bad("fragment"));
    }
    if fold(sum_words(0, header)) != 0xffff {
        return Err(bad("header checksum"));
    }
    let info = IpHeaderInfo {
        src: IpAddr::V4(Ipv4Addr::new(fixed[12], fixed[13], fixed[14], fixed[15])),
        dst: IpAddr::V4(Ipv4Addr::new(fixed[16], fixed[17], fixed[18], fixed[19])),
        ttl: fixed[8],
        protocol: fixed[9],
    };
    let payload = packet.get(ihl..total).ok_or(bad("payload out of range"))?;
    Ok((info, payload))
}

/// Splits an IPv6 packet into its header fields and payload. Extension headers are not
/// walked: VRRP must be the first next header, or [`check_ip_header`] refuses the protocol.
/// Bytes past the payload length (link padding) are dropped.
pub fn parse_ipv6(packet: &[u8]) -> Result<(IpHeaderInfo, &[u8]), PacketError> {
    let bad = |reason| PacketError::MalformedIpHeader {
        family: Family::V6,
        reason,
    };
    let fixed = packet
        .get(..IPV6_HEADER)
        .ok_or(bad("shorter than 40 bytes"))?;
    if fixed[0] >> 4 != 6 {
        return Err(bad("version is not 6"));
    }
    let payload_len = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
    let payload = packet
        .get(IPV6_HEADER..IPV6_HEADER + payload_len)
        .ok_or(bad("payload length exceeds the packet"))?;
    let addr = |at: usize| {
        fixed
            .get(at..at + 16)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
            .ok_or(bad("address out of range"))
    };
    let info = IpHeaderInfo {
        src: addr(8)?,
        dst: addr(24)?,
        ttl: fixed[7],
        protocol: fixed[6],
    };
    Ok((info, payload))
}

#[cfg(test)]
mod tests;
