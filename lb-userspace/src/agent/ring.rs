//! From gateway set, health and admin state to the data path's [`DesiredL4`].
//!
//! A gateway is in the Maglev ring when it is healthy and enabled, with its effective
//! weight (admin override, else configured). Ids are positions in name order
//! ([`AgentConfig::gateway_ids`]) and Maglev sorts its input by name, so the result is a
//! pure function of (gateway set, health, admin state): every agent with the same inputs
//! computes the same ring, whatever order its config lists the gateways in.
use std::collections::BTreeMap;

use lb_common::maglev::{self, DEFAULT_TABLE_SIZE, MaglevBackend, MaglevError};

use super::{
    admin_state::{AdminMode, AdminState},
    config::AgentConfig,
    l4::{DesiredL4, L4Gateway, L4Service},
};

/// The Maglev input: the gateways that take new flows, with their weights.
pub fn ring_members(
    cfg: &AgentConfig,
    healthy: &BTreeMap<String, bool>,
    admin: &AdminState,
) -> Vec<MaglevBackend> {
    cfg.gateway_ids()
        .into_iter()
        .filter(|(_, g)| {
            healthy.get(&g.name).copied().unwrap_or(false)
                && admin.mode(&g.name) == AdminMode::Enabled
        })
        .map(|(id, g)| MaglevBackend::new(id, g.name.clone(), admin.weight(&g.name, g.weight)))
        .collect()
}

/// The ring of `members`, at the default table size.
pub fn build_ring(members: &[MaglevBackend]) -> Result<Vec<u32>, MaglevError> {
    maglev::build(members, DEFAULT_TABLE_SIZE)
}

/// The whole desired data-path state: every VIP of every VRRP instance, on every
/// configured port, mapped through `ring`. `None` without `[xdp]`.
pub fn desired_l4(cfg: &AgentConfig, ring: &[u32]) -> Option<DesiredL4> {
    let xdp = cfg.xdp.as_ref()?;
    let gateways: Vec<L4Gateway> = cfg
        .gateway_ids()
        .into_iter()
        .map(|(id, g)| L4Gateway {
            id,
            name: g.name.clone(),
            ipv4: g.address,
            ipv6: g.address6,
            local: g.name == cfg.node.name,
        })
        .collect();
    let local = cfg.gateway(&cfg.node.name);
    let mut services: Vec<L4Service> = cfg
        .vrrp
        .iter()
        .flat_map(|inst| inst.vips.iter().map(|(ip, _)| *ip))
        .flat_map(|vip| {
            xdp.ports.iter().map(move |(port, protocol)| L4Service {
                vip,
                port: *port,
                protocol: *protocol,
                ring: Vec::new(),
            })
        })
        .collect();
    services.sort_by_key(|s| (s.vip, s.port, s.protocol));
    services.dedup_by(|a, b| (a.vip, a.port, a.protocol) == (b.vip, b.port, b.protocol));
    for s in &mut services {
        s.ring = ring.to_vec();
    }
    Some(DesiredL4 {
        local_ipv4: local.map(|g| g.address),
        local_ipv6: local.and_then(|g| g.address6),
        gateways,
        services,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::path::Path;

    use super::*;
    use crate::agent::{admin_state::Change, config};

    fn cfg(order: &[&str]) -> AgentConfig {
        let mut text = String::from(
            "[node]\nname = \"b\"\nstate_dir = \"/tmp/s\"\n\
             [[vrrp]]\nname = \"v\"\nvrid = 1\ninterface = \"eth0\"\npriority = 100\nvips = [\"10.0.0.100\", \"10.0.0.101\"]\n\
             [xdp]\ninterface = \"eth0\"\nports = [{ port = 80 }, { port = 53, protocol = \"udp\" }]\n",
        );
        for (i, n) in order.iter().enumerate() {
            text.push_str(&format!(
                "[[gateways]]\nname = \"{n}\"\naddress = \"10.0.0.{}\"\nprobe = {{ kind = \"tcp\", port = 80 }}\n",
                i + 1
            ));
        }
        config::parse(Path::new("t.toml"), &text).unwrap()
    }

    fn all_healthy(names: &[&str]) -> BTreeMap<String, bool> {
        names.iter().map(|n| ((*n).to_owned(), true)).collect()
    }

    #[test]
    fn same_inputs_same_ring_whatever_the_config_order() {
        let names = ["a", "b", "c"];
        let (x, y) = (cfg(&["a", "b", "c"]), cfg(&["c", "a", "b"]));
        let admin = AdminState::default();
        let rx = build_ring(&ring_members(&x, &all_healthy(&names), &admin)).unwrap();
        let ry = build_ring(&ring_members(&y, &all_healthy(&names), &admin)).unwrap();
        assert_eq!(rx, ry);
        assert_eq!(rx.len(), DEFAULT_TABLE_SIZE as usize);
        let ids: std::collections::BTreeSet<u32> = rx.iter().copied().collect();
        assert_eq!(ids, [0, 1, 2].into());
    }

    #[test]
    fn unhealthy_and_drained_gateways_leave_the_ring() {
        let c = cfg(&["a", "b", "c"]);
        let mut health = all_healthy(&["a", "b", "c"]);
        health.insert("a".into(), false);
        let mut admin = AdminState::default();
        admin.apply("c", Change::Drain, "b");
        let members = ring_members(&c, &health, &admin);
        assert_eq!(members, vec![MaglevBackend::new(1, "b", 100)]);
        admin.apply("c", Change::Enable, "b");
        admin.apply("c", Change::Weight(300), "b");
        let members = ring_members(&c, &health, &admin);
        assert_eq!(members[1], MaglevBackend::new(2, "c", 300));
        let none = ring_members(&c, &BTreeMap::new(), &admin);
        assert!(none.is_empty());
        assert!(
            build_ring(&none)
                .unwrap()
                .iter()
                .all(|&s| s == maglev::NO_BACKEND)
        );
    }

    #[test]
    fn desired_state_lists_every_vip_port() {
        let c = cfg(&["a", "b"]);
        let d = desired_l4(&c, &[0, 1, 0]).unwrap();
        assert_eq!(d.local_ipv4, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(d.gateways.len(), 2);
        assert!(d.gateways[1].local && !d.gateways[0].local);
        assert_eq!(d.services.len(), 4);
        assert_eq!(d.services[0].port, 53);
        assert_eq!(d.services[0].ring, vec![0, 1, 0]);
        let mut no_xdp = c.clone();
        no_xdp.xdp = None;
        assert!(desired_l4(&no_xdp, &[]).is_none());
    }
}
