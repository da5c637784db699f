//! The connection table (`lb_common::model::FlowTable`, the same bucket code the XDP program
//! runs) against a plain map of what was recorded: it never answers with a gateway that was
//! not the last one recorded for that flow, keeps what fits, and evicts only from full
//! buckets.
use std::collections::HashMap;

use lb_common::{
    datapath::{FLOW_WAYS, FlowKey, flow_bucket, flow_table_hash},
    model::FlowTable,
};
use proptest::prelude::*;

/// IPv4 key words of client `c` (a small universe, so buckets collide and fill).
fn key4(c: u16) -> [u64; 2] {
    let key = FlowKey {
        src: lb_common::datapath::v4_field([10, 0, (c >> 8) as u8, c as u8]),
        dst: lb_common::datapath::v4_field([192, 0, 2, 1]),
        sport: (40_000 + c).to_be_bytes(),
        dport: 80u16.to_be_bytes(),
        proto: 6,
        family: 4,
        _pad: [0; 2],
    };
    key.words4()
}

/// IPv6 key words of client `c`.
fn key6(c: u16) -> [u64; 5] {
    let mut src = [0u8; 16];
    src[0] = 0x20;
    src[1] = 0x01;
    src[14..].copy_from_slice(&c.to_be_bytes());
    let key = FlowKey {
        src,
        dst: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        sport: (40_000 + c).to_be_bytes(),
        dport: 443u16.to_be_bytes(),
        proto: 17,
        family: 6,
        _pad: [0; 2],
    };
    key.words6()
}

/// Applies `ops` (client, gateway, whether a packet looks the flow up first, as the data
/// path does for non-SYN packets, marking it referenced) to a table of `flows` entries and
/// checks it against the record of what was written after every step.
fn run<const N: usize>(
    flows: u32,
    ops: &[(u16, u16, bool)],
    key: impl Fn(u16) -> [u64; N],
) -> Result<(), TestCaseError> {
    let mut table = FlowTable::<N>::new(flows);
    let mut last: HashMap<u16, u32> = HashMap::new();
    for &(c, gw, look) in ops {
        let k = key(c);
        if look {
            // A hit answers with the last gateway recorded; a lookup changes no flow.
            let before = (table.len(), table.find(&k));
            prop_assert_eq!(table.lookup(&k), before.1);
            prop_assert_eq!(table.len(), before.0);
            if let Some(g) = before.1 {
                prop_assert_eq!(Some(&g), last.get(&c));
            }
            continue;
        }
        let hash = flow_table_hash(&k);
        let bucket = flow_bucket(hash, table.buckets());
        let held_before: Vec<u16> = last
            .keys()
            .copied()
            .filter(|o| table.find(&key(*o)).is_some())
            .collect();
        let in_bucket_before = held_before
            .iter()
            .filter(|o| flow_bucket(flow_table_hash(&key(**o)), table.buckets()) == bucket)
            .count();
        let was_held = table.find(&k).is_some();
        table.record(&k, u32::from(gw));
        last.insert(c, u32::from(gw));
        // The flow just recorded is found, with its gateway.
        prop_assert_eq!(table.find(&k), Some(u32::from(gw)));
        // Nothing answers with a gateway other than the last one recorded for it.
        for (o, g) in &last {
            if let Some(found) = table.find(&key(*o)) {
                prop_assert_eq!(found, *g, "client {} answered with a stale gateway", o);
            }
        }
        // Only a new flow in a full bucket evicts, and then exactly one flow of that bucket.
        let lost: Vec<u16> = held_before
            .iter()
            .copied()
            .filter(|o| *o != c && table.find(&key(*o)).is_none())
            .collect();
        if was_held || in_bucket_before < FLOW_WAYS {
            prop_assert!(lost.is_empty(), "evicted {:?} with room", lost);
        } else {
            prop_assert_eq!(lost.len(), 1);
            let victim = lost[0];
            prop_assert_eq!(
                flow_bucket(flow_table_hash(&key(victim)), table.buckets()),
                bucket
            );
        }
        prop_assert!(table.len() <= (table.buckets() as usize) * FLOW_WAYS);
        prop_assert_eq!(
            table.len(),
            held_before.len() + usize::from(!was_held) - lost.len()
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn ipv4_table_keeps_the_last_gateway_and_evicts_only_when_full(
        flows in 4u32..64,
        ops in proptest::collection::vec((0u16..200, 0u16..1024, any::<bool>()), 1..300),
    ) {
        run(flows, &ops, key4)?;
    }

    #[test]
    fn ipv6_table_keeps_the_last_gateway_and_evicts_only_when_full(
        flows in 4u32..64,
        ops in proptest::collection::vec((0u16..200, 0u16..1024, any::<bool>()), 1..300),
    ) {
        run(flows, &ops, key6)?;
    }
}

/// A table with room for every flow holds all of them (no eviction below one bucket's
/// worth of collisions), and a torn entry (key of one flow, tail word of another) is not
/// taken for either.
#[test]
fn a_roomy_table_holds_every_flow() {
    let mut t = FlowTable::<2>::new(1 << 16);
    for c in 0..1000 {
        t.record(&key4(c), u32::from(c % 7));
    }
    assert_eq!(t.len(), 1000);
    for c in 0..1000 {
        assert_eq!(t.find(&key4(c)), Some(u32::from(c % 7)));
    }
    assert_eq!(t.flows().len(), 1000);
}

/// Second chance: in a full bucket, flows that saw packets since the last eviction sweep
/// outlive flows that did not, so a stream of new flows (a SYN flood) evicts its own kind.
#[test]
fn busy_flows_outlive_new_ones_in_a_full_bucket() {
    // One bucket of four.
    let mut t = FlowTable::<2>::new(4);
    assert_eq!(t.buckets(), 1);
    let (a, b, c, d) = (key4(1), key4(2), key4(3), key4(4));
    for (i, k) in [a, b, c, d].iter().enumerate() {
        t.record(k, i as u32);
    }
    for k in [a, b, c] {
        assert!(t.lookup(&k).is_some());
    }
    // A new flow evicts the one flow that saw no packet.
    t.record(&key4(100), 9);
    assert_eq!(t.find(&d), None);
    for k in [a, b, c] {
        assert!(t.find(&k).is_some());
    }
    // The busy flows see packets again; each further new flow evicts the previous one.
    for n in 101..120 {
        for k in [a, b, c] {
            assert!(t.lookup(&k).is_some());
        }
        t.record(&key4(n), 9);
        assert_eq!(t.find(&key4(n - 1)), None, "new flow {} evicted", n - 1);
        assert_eq!(t.find(&key4(n)), Some(9));
        for k in [a, b, c] {
            assert!(
                t.find(&k).is_some(),
                "a busy flow was evicted by new flow {n}"
            );
        }
    }
    // Once nobody is referenced any more, the way the hash picks goes first: nothing
    // stays stuck (all four are candidates again).
    assert_eq!(t.len(), 4);
}

#[test]
fn a_mixed_entry_fails_the_check() {
    use lb_common::datapath::{flow_entry, flow_lookup};
    // Two flows with the same addresses and different ports: a reader that sees the first
    // word of one and the last word of the other sees the second flow's key...
    let a = key4(1);
    let mut b = a;
    b[1] = key4(2)[1];
    let (ha, hb) = (flow_table_hash(&a), flow_table_hash(&b));
    assert_ne!(ha & 0xff, hb & 0xff, "pick flows whose check bytes differ");
    // ...with the check byte written for `a`'s tail: rejected.
    let ea = flow_entry(&a, ha, 3);
    let torn = [b[0], (ea[1] & !0xff_ffff_ffff) | b[1]];
    let mut ways = [torn, [0; 2], [0; 2], [0; 2]];
    assert_eq!(flow_lookup(&mut ways, &b, hb), None);
    let whole = flow_entry(&b, hb, 3);
    assert_eq!(
        flow_lookup(&mut [whole, [0; 2], [0; 2], [0; 2]], &b, hb),
        Some(3)
    );
}
