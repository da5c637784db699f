//! The agent's L4 data path on the real XDP program: [`XdpL4`] implements
//! [`L4Dataplane`] over [`Dataplane`]'s map writer.
//!
//! `apply` turns the agent's whole desired state into map contents:
//! * `NODE`: this node's addresses on the XDP interface and the interface's MAC;
//! * `GATEWAYS`: one entry per gateway id, with the next-hop MAC read from the kernel's
//!   neighbour table (a gateway whose MAC is not known yet is resolved by sending it one
//!   UDP datagram to the discard port, which makes the kernel ARP / neighbour-solicit);
//!   ids no longer in the table are cleared, so their flows re-hash;
//! * per service a VIP id (stable while the service exists), its ring (double-buffered by
//!   the writer), the service entry and an address entry per VIP address.
//!
//! The same desired state applied twice writes nothing.
use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::Path,
    time::Duration,
};

use lb_common::datapath::{
    FAMILY_V4, FAMILY_V6, GW_F_LOCAL, GW_F_V4, GW_F_V6, GW_F_VALID, GatewayValue, MAX_VIPS,
    NODE_F_V4, NODE_F_V6, NodeConfig, PROTO_TCP, PROTO_UDP, VIP_F_ADDRESS, VipKey, VipValue,
    v4_field,
};

use crate::{
    agent::{
        config::{AgentConfig, XdpMode},
        l4::{Count, DesiredL4, L4Counters, L4Dataplane, L4Error, L4Protocol},
    },
    dataplane::{AttachMode, Dataplane, DataplaneError, LoadOptions},
};

type ServiceKey = (IpAddr, u16, L4Protocol);

/// The XDP program attached to one interface, driven by the agent.
pub struct XdpL4 {
    dp: Dataplane,
    iface: String,
    mac: [u8; 6],
    ids: HashMap<ServiceKey, u32>,
    addresses: BTreeSet<VipKey>,
    gateways_written: BTreeSet<u32>,
    last: Option<DesiredL4>,
}

fn err(op: impl Into<String>, reason: impl ToString) -> L4Error {
    L4Error {
        op: op.into(),
        reason: reason.to_string(),
    }
}

impl XdpL4 {
    /// Loads the program and attaches it to `iface` in `mode`.
    pub fn attach(iface: &str, mode: AttachMode, opts: &LoadOptions) -> Result<Self, L4Error> {
        let op = format!("attach to {iface}");
        let mut dp = Dataplane::load_with(opts).map_err(|e| err(&op, e))?;
        let attached = dp.attach(iface, mode).map_err(|e| err(&op, e))?;
        tracing::info!(%iface, mode = ?attached, "XDP data path attached");
        let mac = interface_mac(iface).map_err(|e| err(format!("read the MAC of {iface}"), e))?;
        Ok(XdpL4 {
            dp,
            iface: iface.to_owned(),
            mac,
            ids: HashMap::new(),
            addresses: BTreeSet::new(),
            gateways_written: BTreeSet::new(),
            last: None,
        })
    }

    /// The underlying loader (the program stays attached as long as it lives).
    pub fn into_dataplane(self) -> Dataplane {
        self.dp
    }

    /// The underlying loader, for reading counters and tables.
    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    fn vip_key(vip: IpAddr, port: u16, protocol: L4Protocol) -> VipKey {
        let (family, addr) = family_addr(vip);
        VipKey {
            addr,
            port: port.to_be_bytes(),
            proto: match protocol {
                L4Protocol::Tcp => PROTO_TCP,
                L4Protocol::Udp => PROTO_UDP,
            },
            family,
        }
    }

    fn apply_inner(&mut self, d: &DesiredL4) -> Result<(), L4Error> {
        let mut flags = 0;
        if d.local_ipv4.is_some() {
            flags |= NODE_F_V4;
        }
        if d.local_ipv6.is_some() {
            flags |= NODE_F_V6;
        }
        self.dp
            .set_node(&NodeConfig {
                flags,
                addr4: d.local_ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
                addr6: d.local_ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets(),
                mac: self.mac,
                mtu: interface_mtu(&self.iface),
            })
            .map_err(|e| err("write NODE", e))?;

        let remote: Vec<IpAddr> = d
            .gateways
            .iter()
            .filter(|g| !g.local)
            .map(|g| IpAddr::V4(g.ipv4))
            .collect();
        let macs = neighbour_macs(&self.iface, &remote);
        let mut unresolved = Vec::new();
        for g in &d.gateways {
            let mac = if g.local {
                Some(self.mac)
            } else {
                macs.get(&IpAddr::V4(g.ipv4)).copied()
            };
            let mut flags = GW_F_V4;
            if g.ipv6.is_some() {
                flags |= GW_F_V6;
            }
            if g.local {
                flags |= GW_F_LOCAL;
            }
            match mac {
                Some(_) => flags |= GW_F_VALID,
                None => unresolved.push(g.name.clone()),
            }
            let value = GatewayValue {
                flags,
                addr4: g.ipv4.octets(),
                addr6: g.ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets(),
                mac: mac.unwrap_or_default(),
                _pad: [0; 2],
            };
            self.dp
                .set_gateway(g.id, &value)
                .map_err(|e| err(format!("write gateway {} ({})", g.id, g.name), e))?;
        }
        let ids: BTreeSet<u32> = d.gateways.iter().map(|g| g.id).collect();
        for id in self.gateways_written.difference(&ids) {
            self.dp
                .set_gateway(*id, &GatewayValue::default())
                .map_err(|e| err(format!("clear gateway {id}"), e))?;
        }
        self.gateways_written = ids;

        // Services: rings first, then entries; removed services after.
        let wanted: BTreeSet<ServiceKey> = d
            .services
            .iter()
            .map(|s| (s.vip, s.port, s.protocol))
            .collect();
        let gone: Vec<ServiceKey> = self
            .ids
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for k in &gone {
            self.dp
                .remove_vip(&Self::vip_key(k.0, k.1, k.2))
                .map_err(|e| err(format!("remove service {}:{}/{}", k.0, k.1, k.2), e))?;
            self.ids.remove(k);
        }
        for s in &d.services {
            let k = (s.vip, s.port, s.protocol);
            let id = match self.ids.get(&k) {
                Some(id) => *id,
                None => {
                    let used: BTreeSet<u32> = self.ids.values().copied().collect();
                    let id = (0..MAX_VIPS).find(|i| !used.contains(i)).ok_or_else(|| {
                        err(
                            format!("add service {}:{}/{}", s.vip, s.port, s.protocol),
                            format!("the data path holds at most {MAX_VIPS} services"),
                        )
                    })?;
                    self.ids.insert(k, id);
                    id
                }
            };
            let op = || format!("service {}:{}/{}", s.vip, s.port, s.protocol);
            self.dp
                .write_ring(id, &s.ring)
                .map_err(|e| err(format!("write ring of {}", op()), e))?;
            self.dp
                .set_vip(
                    &Self::vip_key(s.vip, s.port, s.protocol),
                    &VipValue { id, flags: 0 },
                )
                .map_err(|e| err(format!("write {}", op()), e))?;
        }
        let addresses: BTreeSet<VipKey> = d
            .services
            .iter()
            .map(|s| {
                let (family, addr) = family_addr(s.vip);
                VipKey::address(family, addr)
            })
            .collect();
        for a in addresses.difference(&self.addresses) {
            self.dp
                .set_vip(
                    a,
                    &VipValue {
                        id: 0,
                        flags: VIP_F_ADDRESS,
                    },
                )
                .map_err(|e| err("write a VIP address entry", e))?;
        }
        for a in self.addresses.difference(&addresses) {
            self.dp
                .remove_vip(a)
                .map_err(|e| err("remove a VIP address entry", e))?;
        }
        self.addresses = addresses;
        if unresolved.is_empty() {
            Ok(())
        } else {
            Err(err(
                "resolve next-hop MACs",
                format!(
                    "no neighbour entry on {} for gateway(s) {} yet; they take no flows until resolved",
                    self.iface,
                    unresolved.join(", ")
                ),
            ))
        }
    }
}

fn family_addr(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(a) => (FAMILY_V4, v4_field(a.octets())),
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    }
}

impl L4Dataplane for XdpL4 {
    fn apply(&mut self, desired: &DesiredL4) -> Result<(), L4Error> {
        if self.last.as_ref() == Some(desired) {
            return Ok(());
        }
        let r = self.apply_inner(desired);
        // Remember only a fully applied state, so an incomplete one is retried.
        self.last = r.is_ok().then(|| desired.clone());
        r
    }

    fn counters(&self) -> Result<L4Counters, L4Error> {
        let exits = self
            .dp
            .exit_stats()
            .map_err(|e| err("read exit counters", e))?;
        let mut out = L4Counters {
            exits: exits
                .iter()
                .map(|(r, c)| {
                    (
                        r.name().to_owned(),
                        Count {
                            packets: c.packets,
                            bytes: c.bytes,
                        },
                    )
                })
                .collect(),
            ..L4Counters::default()
        };
        let mut services: Vec<_> = self.ids.iter().collect();
        services.sort();
        for ((vip, port, proto), id) in services {
            let s = self
                .dp
                .vip_stats(*id)
                .map_err(|e| err("read VIP counters", e))?;
            out.services.push((
                *vip,
                *port,
                *proto,
                Count {
                    packets: s.packets,
                    bytes: s.bytes,
                },
            ));
        }
        for &id in &self.gateways_written {
            let c = self
                .dp
                .gateway_stats(id)
                .map_err(|e| err("read gateway counters", e))?;
            out.gateways.push((
                id,
                Count {
                    packets: c.packets,
                    bytes: c.bytes,
                },
            ));
        }
        Ok(out)
    }

    fn attached(&self) -> bool {
        // The link lives as long as `dp`; the interface may have gone away.
        Path::new("/sys/class/net").join(&self.iface).exists()
    }
}

/// The L4 factory for `lb-agent run`: attaches to `[xdp] interface` in its mode.
pub fn factory() -> crate::agent::L4Factory {
    Box::new(|cfg: &AgentConfig| {
        let Some(x) = &cfg.xdp else {
            return Err(err("attach", "no [xdp] section"));
        };
        let mode = match x.mode {
            XdpMode::Auto => AttachMode::Auto,
            XdpMode::Native => AttachMode::Native,
            XdpMode::Generic => AttachMode::Generic,
        };
        let opts = LoadOptions {
            flow_table_size: x.flow_table_size,
        };
        let l4 = XdpL4::attach(&x.interface, mode, &opts)?;
        Ok(Box::new(l4) as Box<dyn L4Dataplane>)
    })
}

/// The MAC of `iface`, from sysfs.
fn interface_mac(iface: &str) -> Result<[u8; 6], DataplaneError> {
    let path = Path::new("/sys/class/net").join(iface).join("address");
    let text = std::fs::read_to_string(&path).map_err(|source| DataplaneError::Io {
        path: path.clone(),
        source,
    })?;
    parse_mac(text.trim()).ok_or(DataplaneError::UnknownInterface {
        iface: iface.to_owned(),
    })
}

/// The MTU of `iface` from sysfs (read at every apply, so a changed MTU is picked up with
/// the next one); 0 (no too-big check in the data path) when it cannot be read.
fn interface_mtu(iface: &str) -> u16 {
    let path = Path::new("/sys/class/net").join(iface).join("mtu");
    match std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    {
        Some(m) => u16::try_from(m).unwrap_or(u16::MAX),
        None => {
            tracing::warn!(path = %path.display(), "interface MTU unreadable; no too-big check");
            0
        }
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The MACs the kernel's neighbour table has for `ips` on `iface`. For addresses it has
/// none for, one UDP datagram to the discard port makes the kernel resolve them, and the
/// table is read again a few times (one dump per read, for all addresses).
fn neighbour_macs(iface: &str, ips: &[IpAddr]) -> HashMap<IpAddr, [u8; 6]> {
    let mut found = read_neighbours(iface);
    found.retain(|ip, _| ips.contains(ip));
    let missing: Vec<IpAddr> = ips
        .iter()
        .filter(|ip| !found.contains_key(ip))
        .copied()
        .collect();
    if missing.is_empty() {
        return found;
    }
    for ip in &missing {
        let bind: SocketAddr = match ip {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        // Best effort: if the probe cannot be sent, the reads below simply find nothing.
        if let Ok(sock) = UdpSocket::bind(bind)
            && let Err(e) = sock.send_to(b"lb-agent neighbour probe", (*ip, 9))
        {
            tracing::debug!(%ip, error = %e, "neighbour probe not sent");
        }
    }
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(30));
        let table = read_neighbours(iface);
        for ip in &missing {
            if let Some(mac) = table.get(ip) {
                found.insert(*ip, *mac);
            }
        }
        if missing.iter().all(|ip| found.contains_key(ip)) {
            break;
        }
    }
    found
}

/// The resolved entries of the kernel's neighbour table on `iface`, over rtnetlink, on a
/// thread with its own runtime (the caller may be inside the agent's runtime). Empty when
/// the table cannot be read.
fn read_neighbours(iface: &str) -> HashMap<IpAddr, [u8; 6]> {
    let Ok(ifindex) = crate::dataplane::if_index(iface) else {
        return HashMap::new();
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut out = HashMap::new();
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return out;
            };
            rt.block_on(async {
                use futures::TryStreamExt as _;
                use rtnetlink::packet_route::neighbour::{
                    NeighbourAddress, NeighbourAttribute, NeighbourState,
                };
                let Ok((conn, handle, _)) = rtnetlink::new_connection() else {
                    return;
                };
                tokio::spawn(conn);
                let mut dump = handle.neighbours().get().execute();
                while let Ok(Some(msg)) = dump.try_next().await {
                    if msg.header.ifindex != ifindex
                        || matches!(
                            msg.header.state,
                            NeighbourState::Incomplete
                                | NeighbourState::Failed
                                | NeighbourState::None
                        )
                    {
                        continue;
                    }
                    let mut dst = None;
                    let mut mac = None;
                    for a in &msg.attributes {
                        match a {
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                                dst = Some(IpAddr::V4(*v4));
                            }
                            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                                dst = Some(IpAddr::V6(*v6));
                            }
                            NeighbourAttribute::LinkLocalAddress(l) => {
                                mac = parse_mac_bytes(l);
                            }
                            _ => {}
                        }
                    }
                    if let (Some(dst), Some(mac)) = (dst, mac) {
                        out.insert(dst, mac);
                    }
                }
            });
            out
        })
        .join()
        .unwrap_or_default()
    })
}

fn parse_mac_bytes(b: &[u8]) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    if b.len() != 6 {
        return None;
    }
    mac.copy_from_slice(b);
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:0a:4d:00:0b"),
            Some([0x02, 0, 0x0a, 0x4d, 0, 0x0b])
        );
        assert_eq!(parse_mac("02:00:0a:4d:00"), None);
        assert_eq!(parse_mac("02:00:0a:4d:00:0b:01"), None);
        assert_eq!(parse_mac("zz:00:0a:4d:00:0b"), None);
    }
}
