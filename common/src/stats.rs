//! Per-CPU counters kept by the XDP program.
//!
//! Every exit path of the program bumps exactly one [`ExitReason`] slot of the
//! `EXIT_STATS` per-CPU array, so the sum over all reasons equals the number of packets
//! the program has seen.

/// XDP verdicts (the kernel's `enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Why the XDP program returned the verdict it did. The discriminant is the index into
/// the `EXIT_STATS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitReason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): XDP_PASS.
    PassNotIp = 0,
    /// IP traffic that is not addressed to a configured VIP: XDP_PASS.
    PassNotVip = 1,
    /// An IPv4 fragment to a VIP: XDP_PASS (the stack reassembles; see docs).
    PassFragment = 2,
    /// An IPv6 packet with extension headers to a VIP: XDP_PASS.
    PassIpv6Ext = 3,
    /// Encapsulated traffic that is not for this node and a VIP: XDP_PASS untouched.
    PassEncapOther = 4,
    /// A truncated or malformed packet addressed to a VIP: XDP_DROP.
    DropMalformed = 5,
    /// The flow's gateway is this node: XDP_PASS into the local stack.
    Local = 6,
    /// Encapsulated towards another gateway node: XDP_TX.
    Tx = 7,
    /// An encapsulated packet for this node had its outer header stripped: XDP_PASS.
    Decap = 8,
    /// An ICMP error quoting a VIP flow forwarded to that flow's gateway: XDP_TX.
    IcmpForwarded = 9,
    /// The VIP has no usable gateway (empty ring): XDP_DROP.
    DropNoGateway = 10,
    /// The packet would exceed the node's MTU once encapsulated; an ICMP "fragmentation
    /// needed" (IPv4 with DF) or ICMPv6 "packet too big" goes back to the sender: XDP_TX.
    IcmpTooBig = 11,
    /// The same for a packet that cannot be answered so (IPv4 without DF, or a forwarded
    /// ICMP error): XDP_DROP.
    DropTooBig = 12,
    /// A helper call failed (adjust_head, map update): XDP_ABORTED.
    Aborted = 13,
}

impl ExitReason {
    /// Number of reasons; the size of the `EXIT_STATS` array.
    pub const COUNT: u32 = 14;

    /// All reasons, in index order.
    pub const ALL: [ExitReason; Self::COUNT as usize] = [
        ExitReason::PassNotIp,
        ExitReason::PassNotVip,
        ExitReason::PassFragment,
        ExitReason::PassIpv6Ext,
        ExitReason::PassEncapOther,
        ExitReason::DropMalformed,
        ExitReason::Local,
        ExitReason::Tx,
        ExitReason::Decap,
        ExitReason::IcmpForwarded,
        ExitReason::DropNoGateway,
        ExitReason::IcmpTooBig,
        ExitReason::DropTooBig,
        ExitReason::Aborted,
    ];

    /// The reason with index `i`; `Aborted` for an index out of range.
    #[inline(always)]
    pub const fn from_index(i: u32) -> Self {
        match i {
            0 => ExitReason::PassNotIp,
            1 => ExitReason::PassNotVip,
            2 => ExitReason::PassFragment,
            3 => ExitReason::PassIpv6Ext,
            4 => ExitReason::PassEncapOther,
            5 => ExitReason::DropMalformed,
            6 => ExitReason::Local,
            7 => ExitReason::Tx,
            8 => ExitReason::Decap,
            9 => ExitReason::IcmpForwarded,
            10 => ExitReason::DropNoGateway,
            11 => ExitReason::IcmpTooBig,
            12 => ExitReason::DropTooBig,
            _ => ExitReason::Aborted,
        }
    }

    /// The XDP verdict of this exit (`XDP_ABORTED` 0, `XDP_DROP` 1, `XDP_PASS` 2, `XDP_TX` 3).
    pub const fn action(self) -> u32 {
        match self {
            ExitReason::DropMalformed | ExitReason::DropNoGateway | ExitReason::DropTooBig => {
                XDP_DROP
            }
            ExitReason::Tx | ExitReason::IcmpForwarded | ExitReason::IcmpTooBig => XDP_TX,
            ExitReason::Aborted => XDP_ABORTED,
            _ => XDP_PASS,
        }
    }

    /// Stable snake_case name, used as a metric label.
    pub const fn name(self) -> &'static str {
        match self {
            ExitReason::PassNotIp => "pass_not_ip",
            ExitReason::PassNotVip => "pass_not_vip",
            ExitReason::PassFragment => "pass_fragment",
            ExitReason::PassIpv6Ext => "pass_ipv6_ext",
            ExitReason::PassEncapOther => "pass_encap_other",
            ExitReason::DropMalformed => "drop_malformed",
            ExitReason::Local => "local",
            ExitReason::Tx => "tx",
            ExitReason::Decap => "decap",
            ExitReason::IcmpForwarded => "icmp_forwarded",
            ExitReason::DropNoGateway => "drop_no_gateway",
            ExitReason::IcmpTooBig => "icmp_too_big",
            ExitReason::DropTooBig => "drop_too_big",
            ExitReason::Aborted => "aborted",
        }
    }
}

/// A packet and byte counter (one per CPU in a per-CPU map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatCounter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: two u64 fields, repr(C), no padding, every bit pattern valid.
unsafe impl aya::Pod for StatCounter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, r) in ExitReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(ExitReason::from_index(i as u32), *r);
        }
        let mut names: Vec<_> = ExitReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ExitReason::COUNT as usize);
    }
}
