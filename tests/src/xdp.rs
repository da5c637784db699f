//! The XDP program and the reference model side by side.
//!
//! [`Harness`] loads the real program (BPF_PROG_TEST_RUN needs root, no interface) and a
//! [`Model`], and applies every map write to both, so a frame can be run through the two
//! and the results compared. [`standard`] installs the map contents the fixture and
//! differential tests and the benchmark share.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, bail};
use lb_common::{
    ExitReason,
    datapath::{
        FAMILY_V4, FAMILY_V6, FlowKey, FlowKey4, FlowValue, GW_F_LOCAL, GW_F_V4, GW_F_V6,
        GW_F_VALID, GatewayValue, MAX_GATEWAYS, MAX_VIPS, NODE_F_V4, NODE_F_V6, NodeConfig,
        PROTO_TCP, PROTO_UDP, RING_SIZE, VIP_F_ADDRESS, VIP_F_HASH_SRC_ADDR, VIP_F_NO_CONNTRACK,
        VipKey, VipValue, v4_field,
    },
    maglev::{self, MaglevBackend},
    model::{Model, Outcome},
};
use lb_userspace::dataplane::{Dataplane, LoadOptions, TestRunOutput};

use crate::frames::NODE_MAC;

/// The program and the model, fed the same map writes.
pub struct Harness {
    pub dp: Dataplane,
    pub model: Model,
}

impl Harness {
    /// Loads the program with a connection table of `flow_table_size` entries.
    pub fn load(flow_table_size: u32) -> anyhow::Result<Self> {
        let dp = Dataplane::load_with(&LoadOptions { flow_table_size })
            .context("loading the XDP program")?;
        Ok(Harness {
            dp,
            model: Model::with_flow_table_size(flow_table_size),
        })
    }

    pub fn set_node(&mut self, node: NodeConfig) -> anyhow::Result<()> {
        self.dp.set_node(&node)?;
        self.model.node = node;
        Ok(())
    }

    pub fn set_gateway(&mut self, id: u32, gw: GatewayValue) -> anyhow::Result<()> {
        self.dp.set_gateway(id, &gw)?;
        self.model.gateways[id as usize] = gw;
        Ok(())
    }

    pub fn set_vip(&mut self, key: VipKey, value: VipValue) -> anyhow::Result<()> {
        self.dp.set_vip(&key, &value)?;
        self.model.vips.insert(key, value);
        Ok(())
    }

    pub fn remove_vip(&mut self, key: VipKey) -> anyhow::Result<()> {
        self.dp.remove_vip(&key)?;
        self.model.vips.remove(&key);
        Ok(())
    }

    /// Installs a ring in both (the program's writer flips to the other copy; so does
    /// the model).
    pub fn write_ring(&mut self, vip_id: u32, ring: &[u32]) -> anyhow::Result<()> {
        self.dp.write_ring(vip_id, ring)?;
        let target = 1 - (self.model.ring_select[vip_id as usize] & 1);
        self.model.set_ring(vip_id, target, ring);
        self.model.ring_select[vip_id as usize] = target;
        Ok(())
    }

    /// Runs `frame` through both.
    pub fn run(&mut self, frame: &[u8]) -> anyhow::Result<(TestRunOutput, Outcome)> {
        let got = self.dp.test_run(frame)?;
        let want = self.model.process(frame);
        Ok((got, want))
    }

    /// Compares both connection tables of the program with the model's, flow for flow:
    /// `FLOWS4` (compact IPv4 keys) and `FLOWS6`, evictions included (the model's tables
    /// are bucketed and evict as the program's do).
    pub fn check_flows(&self) -> anyhow::Result<()> {
        let got4: HashMap<FlowKey4, FlowValue> = self.dp.flows4()?.into_iter().collect();
        let want4 = self.model.flows4.flows();
        if got4 != want4 {
            bail!(
                "IPv4 connection table: program {} entries, model {}; first differences: {:?}",
                got4.len(),
                want4.len(),
                first_differences(&got4, &want4)
            );
        }
        let got6: HashMap<FlowKey, FlowValue> = self.dp.flows6()?.into_iter().collect();
        let want6 = self.model.flows6.flows();
        if got6 != want6 {
            bail!(
                "IPv6 connection table: program {} entries, model {}; first differences: {:?}",
                got6.len(),
                want6.len(),
                first_differences(&got6, &want6)
            );
        }
        if let Some((k, _)) = got6.iter().find(|(k, _)| k.family != FAMILY_V6) {
            bail!("IPv6 connection table holds a key of family {}", k.family);
        }
        Ok(())
    }

    /// Compares every counter of the program with the model's.
    pub fn check_counters(&self) -> anyhow::Result<()> {
        let exits = self.dp.exit_stats()?;
        for reason in ExitReason::ALL {
            let (got, want) = (exits.get(reason), self.model.exit_stats[reason as usize]);
            if got != want {
                bail!(
                    "exit counter {}: program {got:?}, model {want:?}",
                    reason.name()
                );
            }
        }
        for id in 0..MAX_VIPS {
            let (got, want) = (self.dp.vip_stats(id)?, self.model.vip_stats[id as usize]);
            if got != want {
                bail!("VIP {id} counters: program {got:?}, model {want:?}");
            }
        }
        for id in 0..MAX_GATEWAYS {
            let (got, want) = (
                self.dp.gateway_stats(id)?,
                self.model.gateway_stats[id as usize],
            );
            if got != want {
                bail!("gateway {id} counters: program {got:?}, model {want:?}");
            }
        }
        Ok(())
    }
}

/// Up to five keys whose entries differ between `a` and `b` (program, model).
fn first_differences<K: Eq + std::hash::Hash + Copy, V: PartialEq + Copy>(
    a: &HashMap<K, V>,
    b: &HashMap<K, V>,
) -> Vec<(K, Option<V>, Option<V>)> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(k) != b.get(k))
        .take(5)
        .map(|k| (*k, a.get(k).copied(), b.get(k).copied()))
        .collect()
}

/// A Maglev ring over gateways `ids` (equal weights, named `gw{id}`).
pub fn ring_of(ids: &[u32]) -> anyhow::Result<Vec<u32>> {
    let backends: Vec<_> = ids
        .iter()
        .map(|id| MaglevBackend::new(*id, format!("gw{id}"), 1))
        .collect();
    Ok(maglev::build(&backends, RING_SIZE)?)
}

/// The addresses and ids of [`standard`].
pub mod std_state {
    use super::*;

    pub const NODE4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    pub const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
    pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50);
    /// A VIP address of services 0 (TCP 80, ring: gateway 1), 2 (UDP 53, ring: this
    /// node) and nothing on other ports.
    pub const VIP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
    /// Service 3: TCP 80 with an empty ring.
    pub const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
    /// Service 5: TCP 80 with a Maglev ring over gateways 1 and 2.
    pub const VIP_SPLIT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 102);
    /// Service 6: UDP 443, no connection tracking, ring over gateways 1 and 2.
    pub const VIP_NOCT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 103);
    /// Service 7: TCP 80, hash by source address, ring over gateways 1 and 2.
    pub const VIP_SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 104);
    /// Services 1 (TCP 80, ring: gateway 2), 4 (TCP 443, ring: gateway 3, which has no
    /// IPv6 address) and 8 (TCP 8080, ring over gateways 1 and 2).
    pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
    pub const GW_LOCAL: u32 = 0;
    pub const GW1: u32 = 1;
    pub const GW2: u32 = 2;
    pub const GW_V4_ONLY: u32 = 3;

    pub fn gw_mac(id: u32) -> [u8; 6] {
        [0x02, 0, 0, 0, 0, 0x10 + id as u8]
    }
    pub fn gw4(id: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, 10 + id as u8)
    }
    pub fn gw6(id: u32) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10 + id as u16)
    }
}

/// One service of [`standard`].
pub struct Service {
    pub id: u32,
    pub key: VipKey,
    pub flags: u32,
    pub ring: Vec<u32>,
}

fn v4key(a: Ipv4Addr, port: u16, proto: u8) -> VipKey {
    VipKey {
        addr: v4_field(a.octets()),
        port: port.to_be_bytes(),
        proto,
        family: FAMILY_V4,
    }
}

fn v6key(a: Ipv6Addr, port: u16, proto: u8) -> VipKey {
    VipKey {
        addr: a.octets(),
        port: port.to_be_bytes(),
        proto,
        family: FAMILY_V6,
    }
}

/// The services of [`standard`], in id order.
pub fn standard_services() -> anyhow::Result<Vec<Service>> {
    use std_state::*;
    let split = ring_of(&[GW1, GW2])?;
    let all = |gw: u32| vec![gw; RING_SIZE as usize];
    let s = |id, key, flags, ring| Service {
        id,
        key,
        flags,
        ring,
    };
    Ok(vec![
        s(0, v4key(VIP_A, 80, PROTO_TCP), 0, all(GW1)),
        s(1, v6key(VIP6, 80, PROTO_TCP), 0, all(GW2)),
        s(2, v4key(VIP_A, 53, PROTO_UDP), 0, all(GW_LOCAL)),
        s(3, v4key(VIP_EMPTY, 80, PROTO_TCP), 0, ring_of(&[])?),
        s(4, v6key(VIP6, 443, PROTO_TCP), 0, all(GW_V4_ONLY)),
        s(5, v4key(VIP_SPLIT, 80, PROTO_TCP), 0, split.clone()),
        s(
            6,
            v4key(VIP_NOCT, 443, PROTO_UDP),
            VIP_F_NO_CONNTRACK,
            split.clone(),
        ),
        s(
            7,
            v4key(VIP_SRC, 80, PROTO_TCP),
            VIP_F_HASH_SRC_ADDR,
            split.clone(),
        ),
        s(8, v6key(VIP6, 8080, PROTO_TCP), 0, split),
    ])
}

/// Installs the standard map contents: this node (10.0.0.1 / fd00::1), gateways 0 (this
/// node), 1 and 2 (both families) and 3 (IPv4 only), the services of
/// [`standard_services`] and an address entry per VIP address.
pub fn standard(h: &mut Harness) -> anyhow::Result<()> {
    use std_state::*;
    h.set_node(NodeConfig {
        flags: NODE_F_V4 | NODE_F_V6,
        addr4: NODE4.octets(),
        addr6: NODE6.octets(),
        mac: NODE_MAC,
        mtu: 0,
    })?;
    for id in [GW_LOCAL, GW1, GW2, GW_V4_ONLY] {
        let (addr4, addr6) = if id == GW_LOCAL {
            (NODE4, NODE6)
        } else {
            (gw4(id), gw6(id))
        };
        let mut flags = GW_F_VALID | GW_F_V4;
        if id != GW_V4_ONLY {
            flags |= GW_F_V6;
        }
        if id == GW_LOCAL {
            flags |= GW_F_LOCAL;
        }
        h.set_gateway(
            id,
            GatewayValue {
                flags,
                addr4: addr4.octets(),
                addr6: if id == GW_V4_ONLY {
                    [0; 16]
                } else {
                    addr6.octets()
                },
                mac: if id == GW_LOCAL { NODE_MAC } else { gw_mac(id) },
                _pad: [0; 2],
            },
        )?;
    }
    for s in standard_services()? {
        h.write_ring(s.id, &s.ring)?;
        h.set_vip(
            s.key,
            VipValue {
                id: s.id,
                flags: s.flags,
            },
        )?;
        h.set_vip(
            VipKey::address(s.key.family, s.key.addr),
            VipValue {
                id: 0,
                flags: VIP_F_ADDRESS,
            },
        )?;
    }
    Ok(())
}
