//! rtnetlink: the VIPs on the interface (added on becoming Master, removed on leaving it),
//! the primary address lookup, and the link watcher that feeds priority tracking (uplink
//! operational state, XDP program attached).
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressScope},
        link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp, State as OperState, XdpAttached},
    },
    sys::{AsyncSocket as _, SocketAddr as NlAddr},
};
use tokio::sync::mpsc;

/// A netlink failure with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {op}: {reason}")]
pub struct NetlinkError {
    pub op: String,
    pub reason: String,
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |e| NetlinkError {
        op,
        reason: e.to_string(),
    }
}

/// The errno of a netlink NACK, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Opens a netlink route connection, spawning its driver on the current runtime.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetlinkError {
        op: "open".into(),
        reason: e.to_string(),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Adds `addr/prefix` to interface `index`; an address already there is success.
/// IPv6 addresses get `IFA_F_NODAD`: a VIP must be usable (and the NA sendable from it)
/// at once, and the old Master may still hold it for a moment.
pub async fn add_address(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> Result<(), NetlinkError> {
    let mut req = handle.address().add(index, addr, prefix);
    if addr.is_ipv6() {
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(nl_err(format!("add {addr}/{prefix} to ifindex {index}"))(e)),
    }
}

/// Removes `addr` from interface `index`; an address not there is success.
pub async fn remove_address(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> Result<(), NetlinkError> {
    let mut found = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(addr)
        .execute();
    let op = format!("remove {addr}/{prefix} from ifindex {index}");
    while let Some(msg) = found.try_next().await.map_err(nl_err(op.clone()))? {
        match handle.address().del(msg).execute().await {
            Ok(()) => {}
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => {}
            Err(e) => return Err(nl_err(op)(e)),
        }
    }
    Ok(())
}

/// The address adverts are sent from: the first IPv4 address of the interface, or its
/// IPv6 link-local address (RFC 5798 section 5.1.2.1).
pub async fn primary_address(
    handle: &Handle,
    index: u32,
    ipv6: bool,
) -> Result<Option<IpAddr>, NetlinkError> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let op = format!("list addresses of ifindex {index}");
    while let Some(msg) = addrs.try_next().await.map_err(nl_err(op.clone()))? {
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        match addr {
            Some(ip @ IpAddr::V4(_)) if !ipv6 && msg.header.scope == AddressScope::Universe => {
                return Ok(Some(ip));
            }
            Some(ip @ IpAddr::V6(v6)) if ipv6 && v6.segments()[0] & 0xffc0 == 0xfe80 => {
                return Ok(Some(ip));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// What the link watcher reports about one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct LinkInfo {
    /// Operationally up (carrier).
    pub up: bool,
    /// An XDP program is attached.
    pub xdp: bool,
}

fn link_info(msg: &LinkMessage) -> (Option<String>, LinkInfo) {
    let mut name = None;
    let mut oper = None;
    let mut xdp = false;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::OperState(s) => oper = Some(*s),
            LinkAttribute::Xdp(list) => {
                xdp = list.iter().any(|x| match x {
                    LinkXdp::Attached(a) => !matches!(a, XdpAttached::None),
                    LinkXdp::ProgId(id) => *id != 0,
                    _ => false,
                });
            }
            _ => {}
        }
    }
    let flags = msg.header.flags;
    let up = match oper {
        Some(OperState::Up) => true,
        // Interfaces without operstate support (lo) report Unknown: use the flags.
        Some(OperState::Unknown) | None => {
            flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp)
        }
        Some(_) => false,
    };
    (name, LinkInfo { up, xdp })
}

/// Sends the state of every interface on start, on every change (RTMGRP_LINK) and every
/// `resync` (XDP attachment does not always raise a link event). Returns when the receiver
/// is gone or netlink fails.
pub async fn watch_links(
    out: mpsc::Sender<BTreeMap<String, LinkInfo>>,
    resync: Duration,
) -> Result<(), NetlinkError> {
    let (mut conn, handle, mut events) = rtnetlink::new_connection().map_err(|e| NetlinkError {
        op: "open link watcher".into(),
        reason: e.to_string(),
    })?;
    conn.socket_mut()
        .socket_mut()
        .bind(&NlAddr::new(0, rtnetlink::constants::RTMGRP_LINK))
        .map_err(|e| NetlinkError {
            op: "subscribe to link events".into(),
            reason: e.to_string(),
        })?;
    tokio::spawn(conn);
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<BTreeMap<String, LinkInfo>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            ev = events.next() => {
                let Some((msg, _)) = ev else {
                    return Err(NetlinkError { op: "link events".into(), reason: "connection closed".into() });
                };
                if !matches!(msg.payload, NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_))) {
                    continue;
                }
            }
        }
        let mut now = BTreeMap::new();
        let mut links = handle.link().get().execute();
        while let Some(msg) = links.try_next().await.map_err(nl_err("list links"))? {
            if let (Some(name), info) = link_info(&msg) {
                now.insert(name, info);
            }
        }
        if last.as_ref() != Some(&now) {
            if out.send(now.clone()).await.is_err() {
                return Ok(());
            }
            last = Some(now);
        }
    }
}
