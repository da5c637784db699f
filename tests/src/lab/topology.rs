//! Named topologies used by the demo, `cargo xtask lab up` and the tests.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{HostSpec, LabError};

/// The service VIP of the standard topology (IPv4).
pub const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100));
/// The service VIP of the standard topology (IPv6).
pub const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x100));

/// The appliance on one L2 segment (10.77.0.0/24, fd77::/64):
///
/// | host | address | role |
/// | --- | --- | --- |
/// | client | .10 / ::10 | sends traffic to the VIP |
/// | node1..node{nodes} | .11.. / ::11.. | agent + XDP + gateway; VIP on loopback; XDP_TX |
/// | backend1..backend{backends} | .21.. / ::21.. | HTTP services behind the gateways |
pub fn standard(nodes: u8, backends: u8) -> Result<Vec<HostSpec>, LabError> {
    let mut hosts = vec![
        HostSpec::new("client")
            .addr("10.77.0.10/24")?
            .addr("fd77::10/64")?,
    ];
    for n in 1..=nodes {
        hosts.push(
            HostSpec::new(&format!("node{n}"))
                .addr(&format!("10.77.0.{}/24", 10 + n))?
                .addr(&format!("fd77::{:x}/64", 0x10 + n))?
                .vip(VIP4)
                .vip(VIP6)
                .xdp_tx(),
        );
    }
    for b in 1..=backends {
        hosts.push(
            HostSpec::new(&format!("backend{b}"))
                .addr(&format!("10.77.0.{}/24", 20 + b))?
                .addr(&format!("fd77::{:x}/64", 0x20 + b))?,
        );
    }
    Ok(hosts)
}
