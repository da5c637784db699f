//! Unit tests of the wire format: error cases, the IP-level checks, and proptest
//! properties (roundtrip, bit flips caught by the checksum, no panics on any input).
use super::*;
use proptest::prelude::*;

fn v4_ph() -> PseudoHeader {
    PseudoHeader::V4 {
        src: Ipv4Addr::new(10, 99, 0, 11),
        dst: MULTICAST_V4,
    }
}

fn v6_ph() -> PseudoHeader {
    PseudoHeader::V6 {
        src: "fe80::e4ff:a6ff:fe1e:936c".parse().unwrap(),
        dst: MULTICAST_V6,
    }
}

fn advert_v4() -> Advertisement {
    Advertisement {
        vrid: Vrid::new(51).unwrap(),
        priority: 100,
        max_adver_int: AdverInterval::from_centis(10).unwrap(),
        addrs: VirtualAddrs::V4(vec![Ipv4Addr::new(10, 99, 0, 200)]),
    }
}

/// Bytes of the capture's first IPv4 advert (vrid 51, prio 100, 10 cs, 10.99.0.200).
const CAPTURED_V4: [u8; 12] = [
    0x31, 0x33, 0x64, 0x01, 0x00, 0x0a, 0x74, 0x99, 0x0a, 0x63, 0x00, 0xc8,
];

#[test]
fn encode_matches_keepalived_bytes() {
    assert_eq!(advert_v4().encode(&v4_ph()).unwrap(), CAPTURED_V4);
}

#[test]
fn checksum_needs_the_pseudo_header() {
    // Over the message alone the keepalived checksum does not verify.
    assert_ne!(fold(sum_words(0, &CAPTURED_V4)), 0xffff);
    assert_eq!(
        pseudo_header_checksum(&v4_ph(), VRRP_PROTOCOL, &CAPTURED_V4),
        0
    );
}

#[test]
fn decode_errors_name_the_field() {
    let ph = v4_ph();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut m = CAPTURED_V4.to_vec();
        f(&mut m);
        Advertisement::decode(&m, &ph)
    };
    assert_eq!(
        with(&|m| m.truncate(7)),
        Err(PacketError::Truncated { len: 7 })
    );
    assert_eq!(
        with(&|m| m[0] = 0x21),
        Err(PacketError::WrongVersion { version: 2 })
    );
    assert_eq!(
        with(&|m| m[0] = 0x32),
        Err(PacketError::WrongType { kind: 2 })
    );
    assert_eq!(
        with(&|m| m[3] = 2),
        Err(PacketError::AddressCountMismatch {
            count: 2,
            family: Family::V4,
            expected: 16,
            len: 12
        })
    );
    assert_eq!(
        with(&|m| m.push(0)),
        Err(PacketError::AddressCountMismatch {
            count: 1,
            family: Family::V4,
            expected: 12,
            len: 13
        })
    );
    assert_eq!(
        with(&|m| m[7] ^= 1),
        Err(PacketError::BadChecksum {
            found: 0x7498,
            computed: 0x7499
        })
    );
}

/// Re-checksums a message after a field was changed, to reach the later checks.
fn fix_checksum(m: &mut [u8], ph: &PseudoHeader) {
    m[6..8].fill(0);
    let c = pseudo_header_checksum(ph, VRRP_PROTOCOL, m);
    m[6..8].copy_from_slice(&c.to_be_bytes());
}

/// A change to a message.
type Edit = fn(&mut Vec<u8>);

#[test]
fn decode_rejects_invalid_values_with_valid_checksum() {
    let ph = v4_ph();
    let cases: [(&str, Edit, PacketError); 3] = [
        ("vrid 0", |m| m[1] = 0, PacketError::ZeroVrid),
        ("interval 0", |m| m[4..6].fill(0), PacketError::ZeroInterval),
        (
            "count 0",
            |m| {
                m[3] = 0;
                m.truncate(8);
            },
            PacketError::NoAddresses,
        ),
    ];
    for (name, edit, want) in cases {
        let mut m = CAPTURED_V4.to_vec();
        edit(&mut m);
        fix_checksum(&mut m, &ph);
        assert_eq!(Advertisement::decode(&m, &ph), Err(want), "{name}");
    }
}

#[test]
fn reserved_bits_are_ignored_on_receipt() {
    let ph = v4_ph();
    let mut m = CAPTURED_V4.to_vec();
    m[4] |= 0xf0;
    fix_checksum(&mut m, &ph);
    assert_eq!(Advertisement::decode(&m, &ph), Ok(advert_v4()));
}

#[test]
fn ipv6_message_in_ipv4_packet_is_a_count_mismatch() {
    let v6 = Advertisement {
        addrs: VirtualAddrs::V6(vec!["fd99::200".parse().unwrap()]),
        ..advert_v4()
    };
    let msg = v6.encode(&v6_ph()).unwrap();
    assert!(matches!(
        Advertisement::decode(&msg, &v4_ph()),
        Err(PacketError::AddressCountMismatch {
            count: 1,
            family: Family::V4,
            ..
        })
    ));
}

#[test]
fn encode_refuses_what_cannot_be_sent() {
    assert_eq!(
        advert_v4().encode(&v6_ph()),
        Err(PacketError::WrongFamily {
            packet: Family::V6,
            addrs: Family::V4
        })
    );
    let none = Advertisement {
        addrs: VirtualAddrs::V4(vec![]),
        ..advert_v4()
    };
    assert_eq!(none.encode(&v4_ph()), Err(PacketError::NoAddresses));
    let many = Advertisement {
        addrs: VirtualAddrs::V4(vec![Ipv4Addr::LOCALHOST; 256]),
        ..advert_v4()
    };
    assert_eq!(
        many.encode(&v4_ph()),
        Err(PacketError::TooManyAddresses { count: 256 })
    );
}

#[test]
fn interval_and_vrid_ranges() {
    assert_eq!(AdverInterval::from_centis(0), None);
    assert_eq!(AdverInterval::from_centis(4096), None);
    assert_eq!(
        AdverInterval::from_centis(4095).map(AdverInterval::as_duration),
        Some(Duration::from_millis(40_950))
    );
    assert_eq!(Vrid::new(0), None);
    assert_eq!(Vrid::new(255).map(Vrid::get), Some(255));
}

#[test]
fn same_set_ignores_order_and_family_matters() {
    let a = VirtualAddrs::V4(vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2)]);
    let b = VirtualAddrs::V4(vec![Ipv4Addr::new(2, 2, 2, 2), Ipv4Addr::new(1, 1, 1, 1)]);
    let c = VirtualAddrs::V4(vec![Ipv4Addr::new(1, 1, 1, 1)]);
    assert!(a.same_set(&b));
    assert!(!a.same_set(&c));
    assert!(!c.same_set(&VirtualAddrs::V6(vec![])));
}

#[test]
fn ip_header_checks() {
    let good = IpHeaderInfo {
        src: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 11)),
        dst: IpAddr::V4(MULTICAST_V4),
        ttl: 255,
        protocol: 112,
    };
    let local = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 12));
    let peers = [good.src];
    let unicast = Delivery::Unicast {
        local,
        peers: &peers,
    };
    let cases: [(&str, IpHeaderInfo, Delivery<'_>, Result<(), PacketError>); 9] = [
        ("multicast ok", good, Delivery::Multicast, Ok(())),
        (
            "ttl 254",
            IpHeaderInfo { ttl: 254, ..good },
            Delivery::Multicast,
            Err(PacketError::BadTtl { ttl: 254 }),
        ),
        (
            "protocol 17",
            IpHeaderInfo {
                protocol: 17,
                ..good
            },
            Delivery::Multicast,
            Err(PacketError::WrongProtocol { protocol: 17 }),
        ),
        (
            "other group",
            IpHeaderInfo {
                dst: "224.0.0.5".parse().unwrap(),
                ..good
            },
            Delivery::Multicast,
            Err(PacketError::BadDestination {
                dst: "224.0.0.5".parse().unwrap(),
            }),
        ),
        (
            "unicast to us from a peer",
            IpHeaderInfo { dst: local, ..good },
            unicast,
            Ok(()),
        ),
        (
            "group while unicast",
            good,
            unicast,
            Err(PacketError::BadDestination { dst: good.dst }),
        ),
        (
            "unicast from a stranger",
            IpHeaderInfo {
                src: "10.99.0.13".parse().unwrap(),
                dst: local,
                ..good
            },
            unicast,
            Err(PacketError::UnknownPeer {
                src: "10.99.0.13".parse().unwrap(),
            }),
        ),
        (
            "multicast source",
            IpHeaderInfo {
                src: "224.0.0.1".parse().unwrap(),
                ..good
            },
            Delivery::Multicast,
            Err(PacketError::BadSource {
                src: "224.0.0.1".parse().unwrap(),
            }),
        ),
        (
            "mixed families",
            IpHeaderInfo {
                dst: IpAddr::V6(MULTICAST_V6),
                ..good
            },
            Delivery::Multicast,
            Err(PacketError::FamilyMismatch {
                src: good.src,
                dst: IpAddr::V6(MULTICAST_V6),
            }),
        ),
    ];
    for (name, hdr, delivery, want) in cases {
        assert_eq!(check_ip_header(&hdr, &delivery).map(|_| ()), want, "{name}");
    }
    let v6 = IpHeaderInfo {
        src: "fe80::1".parse().unwrap(),
        dst: IpAddr::V6(MULTICAST_V6),
        ttl: 255,
        protocol: 112,
    };
    assert_eq!(
        check_ip_header(&v6, &Delivery::Multicast).map(|p| p.family()),
        Ok(Family::V6)
    );
}

#[test]
fn ipv4_header_parse_errors() {
    let mut pkt = vec![
        0x45, 0xc0, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xd0, 0x2c, 0x0a, 0x63, 0x00,
        0x0b, 0xe0, 0x00, 0x00, 0x12,
    ];
    pkt.extend_from_slice(&CAPTURED_V4);
    let (info, payload) = parse_ipv4(&pkt).unwrap();
    assert_eq!(payload, CAPTURED_V4);
    assert_eq!((info.ttl, info.protocol), (255, 112));
    let mut padded = pkt.clone();
    padded.extend_from_slice(&[0; 14]);
    assert_eq!(parse_ipv4(&padded).unwrap().1, CAPTURED_V4);
    let reason = |p: &[u8]| match parse_ipv4(p) {
        Err(PacketError::MalformedIpHeader { reason, .. }) => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(reason(&pkt[..19]), "shorter than 20 bytes");
    assert_eq!(reason(&pkt[..31]), "total length does not match the packet");
    let mut bad_ck = pkt.clone();
    bad_ck[11] ^= 1;
    assert_eq!(reason(&bad_ck), "header checksum");
    let mut frag = pkt.clone();
    frag[6] = 0x20;
    assert_eq!(reason(&frag), "fragment");
    let mut v6 = pkt.clone();
    v6[0] = 0x65;
    assert_eq!(reason(&v6), "version is not 4");
}

fn arb_advert() -> impl Strategy<Value = Advertisement> {
    let addrs = prop_oneof![
        prop::collection::vec(any::<u32>().prop_map(Ipv4Addr::from), 1..=20)
            .prop_map(VirtualAddrs::V4),
        prop::collection::vec(any::<u128>().prop_map(Ipv6Addr::from), 1..=20)
            .prop_map(VirtualAddrs::V6),
    ];
    (1u8..=255, any::<u8>(), 1u16..=MAX_ADVER_INT_CENTIS, addrs).prop_map(
        |(vrid, priority, centis, addrs)| Advertisement {
            vrid: Vrid(vrid),
            priority,
            max_adver_int: AdverInterval(centis),
            addrs,
        },
    )
}

fn ph_for(family: Family, src: u128, dst: u128) -> PseudoHeader {
    match family {
        Family::V4 => PseudoHeader::V4 {
            src: Ipv4Addr::from(src as u32),
            dst: Ipv4Addr::from(dst as u32),
        },
        Family::V6 => PseudoHeader::V6 {
            src: Ipv6Addr::from(src),
            dst: Ipv6Addr::from(dst),
        },
    }
}

proptest! {
    #[test]
    fn encode_decode_roundtrip(adv in arb_advert(), src in any::<u128>(), dst in any::<u128>()) {
        let ph = ph_for(adv.addrs.family(), src, dst);
        let bytes = adv.encode(&ph).unwrap();
        prop_assert_eq!(bytes.len(), adv.encoded_len());
        prop_assert_eq!(Advertisement::decode(&bytes, &ph), Ok(adv));
    }

    #[test]
    fn any_single_bit_flip_is_detected(adv in arb_advert(), bit in any::<prop::sample::Index>()) {
        let ph = ph_for(adv.addrs.family(), 1, 2);
        let mut bytes = adv.encode(&ph).unwrap();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        // The checksum covers every bit, the reserved ones included.
        prop_assert!(Advertisement::decode(&bytes, &ph).is_err());
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400), v6 in any::<bool>()) {
        let ph = ph_for(if v6 { Family::V6 } else { Family::V4 }, 7, 9);
        if let Ok(adv) = Advertisement::decode(&bytes, &ph) {
            prop_assert_eq!(adv.encoded_len(), bytes.len());
        }
    }

    #[test]
    fn ip_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok((_, payload)) = parse_ipv4(&bytes) {
            prop_assert!(payload.len() + 20 <= bytes.len());
        }
        if let Ok((_, payload)) = parse_ipv6(&bytes) {
            prop_assert!(payload.len() + 40 <= bytes.len());
        }
    }
}
