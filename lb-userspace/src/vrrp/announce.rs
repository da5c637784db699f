//! The frames a new Master sends to move the virtual addresses to itself (RFC 5798
//! section 6.4.2 lines 375-395): a gratuitous ARP request per IPv4 address (RFC 5227
//! section 3 / RFC 826) and an unsolicited Neighbor Advertisement per IPv6 address
//! (RFC 4861 sections 4.4 and 7.2.6). Pure byte builders; [`super::socket`] sends them.
//!
//! Like keepalived without `use_vmac`, the frames carry the interface's real MAC address,
//! not the virtual router MAC 00-00-5E-00-01-{VRID}: the VIP simply moves to the new
//! Master's MAC.
use std::net::{Ipv4Addr, Ipv6Addr};

use super::packet::{PseudoHeader, pseudo_header_checksum};

/// A MAC address.
pub type Mac = [u8; 6];

/// The Ethernet broadcast address.
pub const BROADCAST_MAC: Mac = [0xff; 6];
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IPv6 next header of ICMPv6.
pub const ICMPV6_PROTOCOL: u8 = 58;
/// All-nodes multicast, where unsolicited NAs go (RFC 4861 section 7.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Length of a gratuitous ARP frame (Ethernet header + ARP for IPv4, unpadded).
pub const ARP_FRAME_LEN: usize = 42;
/// Length of the Neighbor Advertisement with one target link-layer address option.
pub const NA_LEN: usize = 32;
/// Length of a complete NA frame: Ethernet + IPv6 + [`NA_LEN`].
pub const NA_FRAME_LEN: usize = 14 + 40 + NA_LEN;

/// ICMPv6 type of a Neighbor Advertisement.
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// NA flags (RFC 4861 section 4.4): Router and Override; Solicited stays clear.
const NA_ROUTER: u8 = 0x80;
const NA_OVERRIDE: u8 = 0x20;
/// Option type Target Link-Layer Address (RFC 4861 section 4.6.1).
const OPT_TARGET_LL_ADDR: u8 = 2;

/// A gratuitous ARP request for `ip` from `mac`, as a complete Ethernet frame: broadcast,
/// sender and target protocol address both `ip`, target hardware address broadcast
/// (what keepalived sends; RFC 5227 section 3 allows either request or reply).
pub fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request.
    f[14..22].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&BROADCAST_MAC);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited Neighbor Advertisement for `target` (the ICMPv6 message, checksum
/// included, for an IPv6 packet from `target` to ff02::1): Override set, Solicited clear,
/// Router set when `router` (RFC 5798 asks for R; keepalived 2.2.7 leaves it clear), and
/// a Target Link-Layer Address option carrying `mac`.
pub fn unsolicited_na(mac: Mac, target: Ipv6Addr, router: bool) -> [u8; NA_LEN] {
    let mut m = [0u8; NA_LEN];
    m[0] = NEIGHBOR_ADVERTISEMENT;
    m[4] = NA_OVERRIDE | if router { NA_ROUTER } else { 0 };
    m[8..24].copy_from_slice(&target.octets());
    m[24] = OPT_TARGET_LL_ADDR;
    m[25] = 1; // option length in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    let ph = PseudoHeader::V6 {
        src: target,
        dst: ALL_NODES,
    };
    let checksum = pseudo_header_checksum(&ph, ICMPV6_PROTOCOL, &m);
    m[2..4].copy_from_slice(&checksum.to_be_bytes());
    m
}

/// [`unsolicited_na`] as a complete Ethernet frame to 33:33:00:00:00:01, with hop limit
/// 255 (RFC 4861 section 7.1.2), traffic class and flow label 0.
pub fn unsolicited_na_frame(mac: Mac, target: Ipv6Addr, router: bool) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    // The multicast MAC of ff02::1 (RFC 2464 section 7).
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&(NA_LEN as u16).to_be_bytes());
    f[20] = ICMPV6_PROTOCOL;
    f[21] = 255;
    f[22..38].copy_from_slice(&target.octets());
    f[38..54].copy_from_slice(&ALL_NODES.octets());
    f[54..].copy_from_slice(&unsolicited_na(mac, target, router));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0xe6, 0xff, 0xa6, 0x1e, 0x93, 0x6c];

    #[test]
    fn na_checksum_verifies_and_router_flag_changes_it() {
        let target: Ipv6Addr = "fd99::200".parse().unwrap();
        let ph = PseudoHeader::V6 {
            src: target,
            dst: ALL_NODES,
        };
        for router in [false, true] {
            let na = unsolicited_na(MAC, target, router);
            assert_eq!(pseudo_header_checksum(&ph, ICMPV6_PROTOCOL, &na), 0);
            assert_eq!(na[4] & NA_ROUTER != 0, router);
            assert_eq!(na[4] & 0x40, 0, "Solicited must be clear");
        }
    }

    #[test]
    fn garp_layout() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(&f[28..32], &[192, 0, 2, 1]);
        assert_eq!(&f[38..42], &[192, 0, 2, 1]);
        assert_eq!(&f[22..28], &MAC);
    }
}
