//! The data path end to end with real TCP and direct server return (issue 3, "a namespace
//! test with real TCP"). Needs root.
//!
//! Topology (one L2 segment, 10.81.0.0/24 and fd81::/64):
//!
//! | host | address | role |
//! | --- | --- | --- |
//! | client | .10 / ::10 | connects to the VIP; routes the VIP via the LB's address |
//! | lb | .2 / ::2 | `lb_xdp` on eth0 (native): VIP services with a Maglev ring over gw1..gw3 |
//! | gw1..gw3 | .11.. / ::11.. | `lb_xdp` on eth0 (native) decapsulates; VIP on loopback; HTTP server |
//!
//! A client packet to the VIP reaches the LB (the client's route to the VIP goes via the
//! LB, and the gateways are ARP-silent for the VIP), whose program picks a gateway from
//! the connection table or the VIP's ring and sends the packet IPIP / IP6IP6-encapsulated
//! with XDP_TX. The gateway's program strips the outer header and passes the inner packet
//! to its stack, where the server bound to the VIP answers the client directly (DSR): the
//! replies never cross the LB.
//!
//! MTU: the client's link stays at 1500, so it sends IP packets of up to 1500 bytes
//! (requests here are larger than one segment, so full-size segments are sent). The LB
//! adds 20 (IPIP) or 40 (IP6IP6) bytes, so up to 1540-byte packets travel from the LB to
//! the gateways: the LB's link (veth checks XDP_TX frames against the peer's MTU) and the
//! gateways' links (bridge egress port and the gateway's eth0) are set to MTU 1600. The
//! gateways' replies are sized by the client's MSS (1460 / 1440, from its 1500 MTU) and
//! travel straight to the client, so they fit its 1500 link.
//!
//! Checked: every connection completes (IPv4 and IPv6); the gateway that served each
//! connection (the server answers with its name, and each server records its peers) is
//! exactly the one the VIP's Maglev ring names for the connection's 5-tuple; the LB's
//! connection table holds the same gateway; every packet the LB encapsulated was
//! decapsulated by exactly one gateway. Then, with connections held open mid-request, the
//! ring is changed to drain one gateway: the held connections (also those on the drained
//! gateway) complete against their original gateway, new connections follow the new ring
//! and never reach the drained gateway.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "test code"
)]

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_common::{
    ExitReason,
    datapath::{
        FAMILY_V4, FAMILY_V6, FlowKey, GW_F_V4, GW_F_V6, GW_F_VALID, GatewayValue, NODE_F_V4,
        NODE_F_V6, NodeConfig, PROTO_TCP, RING_SIZE, VIP_F_ADDRESS, VipKey, VipValue, flow_hash,
        v4_field,
    },
};
use lb_tests::{
    lab::{Host, HostSpec, Lab},
    privileged::require_root,
    xdp::ring_of,
};
use lb_userspace::{
    agent::l4::{DesiredL4, L4Dataplane as _, L4Gateway, L4Protocol, L4Service},
    dataplane::{AttachMode, AttachedMode, Dataplane, LoadOptions},
    xdp_l4::XdpL4,
};

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd81, 0, 0, 0, 0, 0, 0, 0x100);
const PORT: u16 = 80;
/// VIP ids of the two services (TCP 80 on each VIP address).
const VIP_ID4: u32 = 0;
const VIP_ID6: u32 = 1;
/// Gateway ids; gateway `n` is host `gw{n}`.
const GATEWAYS: [u32; 3] = [1, 2, 3];
/// The gateway drained in the ring-change test.
const DRAINED: u32 = 2;
/// MTU of the links that carry encapsulated frames (see the module docs).
const TUNNEL_MTU: u32 = 1600;
/// Connections per family in the spread test.
const CONNS: usize = 60;
/// Request body: several full-size segments from the client, each encapsulated.
const REQUEST_BODY: usize = 6000;
/// Response body: several full-size segments straight back to the client.
const RESPONSE_BODY: usize = 8000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection-table size of the test's program loads (far above the connection count).
const FLOW_TABLE: u32 = 4096;

fn lab_specs() -> anyhow::Result<Vec<HostSpec>> {
    let mut hosts = vec![
        HostSpec::new("client")
            .addr("10.81.0.10/24")?
            .addr("fd81::10/64")?
            // Only the LB is a next hop for the VIP; the gateways never answer ARP/ND for
            // it (arp_ignore/arp_announce, set by the lab for VIPs on loopback; Linux does
            // not answer neighbour solicitations for an address on another interface).
            .route(&format!("{VIP4}/32 via 10.81.0.2"))
            .route(&format!("{VIP6}/128 via fd81::2")),
        HostSpec::new("lb")
            .addr("10.81.0.2/24")?
            .addr("fd81::2/64")?
            .xdp_tx()
            .mtu(TUNNEL_MTU),
    ];
    for n in GATEWAYS {
        hosts.push(
            HostSpec::new(&format!("gw{n}"))
                .addr(&format!("10.81.0.{}/24", 10 + n))?
                .addr(&format!("fd81::{:x}/64", 0x10 + n))?
                .vip(IpAddr::V4(VIP4))
                .vip(IpAddr::V6(VIP6))
                .mtu(TUNNEL_MTU)
                // Replies leave from the VIP on lo towards the client on eth0: no reverse
                // path filtering (the lab turns it off already; be explicit per device).
                .sysctl("net.ipv4.conf.eth0.rp_filter", "0")
                .sysctl("net.ipv4.conf.lo.rp_filter", "0")
                .sysctl("net.ipv4.conf.eth0.arp_ignore", "1")
                .sysctl("net.ipv4.conf.eth0.arp_announce", "2"),
        );
    }
    Ok(hosts)
}

fn v4_of(host: &Host) -> Ipv4Addr {
    match host.ipv4() {
        Some(IpAddr::V4(a)) => a,
        other => panic!("{} has no IPv4 address: {other:?}", host.name),
    }
}

fn v6_of(host: &Host) -> Ipv6Addr {
    match host.ipv6() {
        Some(IpAddr::V6(a)) => a,
        other => panic!("{} has no IPv6 address: {other:?}", host.name),
    }
}

fn service_key(vip: IpAddr) -> VipKey {
    match vip {
        IpAddr::V4(a) => VipKey {
            addr: v4_field(a.octets()),
            port: PORT.to_be_bytes(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        },
        IpAddr::V6(a) => VipKey {
            addr: a.octets(),
            port: PORT.to_be_bytes(),
            proto: PROTO_TCP,
            family: FAMILY_V6,
        },
    }
}

fn address_key(vip: IpAddr) -> VipKey {
    let k = service_key(vip);
    VipKey::address(k.family, k.addr)
}

fn vip_id(vip: IpAddr) -> u32 {
    if vip.is_ipv4() { VIP_ID4 } else { VIP_ID6 }
}

fn node_config(host: &Host) -> NodeConfig {
    NodeConfig {
        flags: NODE_F_V4 | NODE_F_V6,
        addr4: v4_of(host).octets(),
        addr6: v6_of(host).octets(),
        mac: host.mac,
        mtu: 0,
    }
}

/// The connection-table key of the client's flow `client -> vip:PORT`.
fn flow_key(client: SocketAddr, vip: IpAddr) -> FlowKey {
    let (src, dst, family) = match (client.ip(), vip) {
        (IpAddr::V4(c), IpAddr::V4(v)) => (v4_field(c.octets()), v4_field(v.octets()), FAMILY_V4),
        (IpAddr::V6(c), IpAddr::V6(v)) => (c.octets(), v.octets(), FAMILY_V6),
        other => panic!("mixed families: {other:?}"),
    };
    FlowKey {
        src,
        dst,
        sport: client.port().to_be_bytes(),
        dport: PORT.to_be_bytes(),
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    }
}

/// The gateway `ring` names for the connection from `client` to the VIP.
fn ring_gateway(ring: &[u32], client: SocketAddr, vip: IpAddr) -> u32 {
    let slot = flow_hash(&flow_key(client, vip), 0) % RING_SIZE;
    ring[slot as usize]
}

// ---------------------------------------------------------------------------------------
// The gateways' HTTP server.

/// One connection a gateway's server answered.
#[derive(Clone, Copy, Debug)]
struct Served {
    gateway: u32,
    peer: SocketAddr,
}

/// Servers on VIP4:80 and [VIP6]:80 inside every gateway; each answers with its name.
struct Servers {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<Served>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(lab: &Lab) -> anyhow::Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for gw in GATEWAYS {
            for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
                // The socket belongs to the gateway's namespace for its whole life, so the
                // accept loop can run on an ordinary thread.
                let listener = lab
                    .in_host(&format!("gw{gw}"), move || {
                        TcpListener::bind(SocketAddr::new(vip, PORT))
                    })?
                    .with_context(|| format!("gw{gw}: binding {vip}:{PORT}"))?;
                listener.set_nonblocking(true)?;
                let (stop, served) = (stop.clone(), served.clone());
                threads.push(std::thread::spawn(move || {
                    accept_loop(gw, &listener, &stop, &served);
                }));
            }
        }
        Ok(Servers {
            stop,
            served,
            threads,
        })
    }

    /// The connections served so far, in the order they were answered.
    fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.served.lock().unwrap().len()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ignored = t.join();
        }
    }
}

fn accept_loop(
    gw: u32,
    listener: &TcpListener,
    stop: &AtomicBool,
    served: &Arc<Mutex<Vec<Served>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let served = served.clone();
                // Bounded by the socket timeouts.
                std::thread::spawn(move || {
                    if let Err(e) = serve(gw, stream, peer, &served) {
                        eprintln!("gw{gw}: serving {peer}: {e:#}");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => {
                eprintln!("gw{gw}: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The request body's byte `i`: a pattern, so a corrupted segment is noticed.
fn body_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// Reads one `POST` with a `Content-Length` body, checks the body, answers with the
/// gateway's name and `RESPONSE_BODY` bytes, and closes.
fn serve(
    gw: u32,
    mut stream: TcpStream,
    peer: SocketAddr,
    served: &Mutex<Vec<Served>>,
) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT * 2))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        ensure!(buf.len() < 16 * 1024, "request head too long");
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "connection closed in the request head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("no Content-Length")?;
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "connection closed in the request body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..];
    let intact = body.len() == len && body.iter().enumerate().all(|(i, b)| *b == body_byte(i));
    let (status, text) = if intact {
        ("200 OK", format!("served-by gw{gw} peer {peer}\n"))
    } else {
        ("400 Bad Request", format!("gw{gw}: body corrupted\n"))
    };
    let mut reply = text.into_bytes();
    reply.resize(RESPONSE_BODY, b'.');
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&reply)?;
    if intact {
        served.lock().unwrap().push(Served { gateway: gw, peer });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The client.

/// A connection to the VIP whose request is (partly) sent.
struct Pending {
    stream: TcpStream,
    local: SocketAddr,
    /// How much of the request has been written.
    sent: usize,
    request: Vec<u8>,
}

fn request_bytes(vip: IpAddr) -> Vec<u8> {
    let mut r = format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: {REQUEST_BODY}\r\nConnection: close\r\n\r\n",
        SocketAddr::new(vip, PORT)
    )
    .into_bytes();
    r.extend((0..REQUEST_BODY).map(body_byte));
    r
}

/// Connects to the VIP (call inside the client's namespace) and writes the first `part`
/// bytes of the request.
fn open(vip: IpAddr, part: usize) -> anyhow::Result<Pending> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(vip, PORT), CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {vip}:{PORT}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let local = stream.local_addr()?;
    let request = request_bytes(vip);
    let sent = part.min(request.len());
    stream
        .write_all(&request[..sent])
        .with_context(|| format!("{local}: sending the request"))?;
    Ok(Pending {
        stream,
        local,
        sent,
        request,
    })
}

/// Sends the rest of the request, reads the whole response and returns the gateway that
/// answered (any thread: the socket keeps its namespace).
fn finish(mut p: Pending) -> anyhow::Result<(SocketAddr, u32)> {
    let local = p.local;
    let mut run = || -> anyhow::Result<u32> {
        p.stream.write_all(&p.request[p.sent..])?;
        let mut resp = Vec::new();
        p.stream.read_to_end(&mut resp)?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("no response head in {} bytes", resp.len()))?;
        ensure!(head.starts_with("HTTP/1.1 200 "), "response: {head}");
        ensure!(
            body.len() == RESPONSE_BODY,
            "response body of {} bytes, expected {RESPONSE_BODY}",
            body.len()
        );
        let gw = body
            .strip_prefix("served-by gw")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no gateway name in {:?}", &body[..40.min(body.len())]))?;
        Ok(gw)
    };
    let gw = run().with_context(|| format!("connection from {local}"))?;
    Ok((local, gw))
}

/// `n` complete connections, one after another, from the client's namespace.
fn connections(lab: &Lab, vip: IpAddr, n: usize) -> anyhow::Result<Vec<(SocketAddr, u32)>> {
    lab.in_host("client", move || {
        (0..n)
            .map(|_| open(vip, 0).and_then(finish))
            .collect::<anyhow::Result<Vec<_>>>()
    })?
}

// ---------------------------------------------------------------------------------------
// The appliance.

/// The lab with the LB and the gateways' programs attached and the servers running.
/// Fields drop in order: servers, programs, then the lab's namespaces.
struct Dsr {
    servers: Servers,
    lb: Dataplane,
    /// The gateways' programs: attached for as long as they live.
    gateways: Vec<Dataplane>,
    lab: Lab,
}

impl Dsr {
    fn up(prefix: &str) -> anyhow::Result<Dsr> {
        let lab = Lab::up(prefix, lab_specs()?)?;
        for h in lab.hosts() {
            let mtu = lab.exec(&h.name, "ip", &["-o", "link", "show", "eth0"])?;
            let want = if h.name == "client" { 1500 } else { TUNNEL_MTU };
            ensure!(mtu.contains(&format!(" mtu {want} ")), "{}: {mtu}", h.name);
        }

        let lb_host = lab.host("lb")?.clone();
        let mut gateway_values = Vec::new();
        let mut gateways = Vec::new();
        for id in GATEWAYS {
            let host = lab.host(&format!("gw{id}"))?.clone();
            gateway_values.push((
                id,
                GatewayValue {
                    flags: GW_F_VALID | GW_F_V4 | GW_F_V6,
                    addr4: v4_of(&host).octets(),
                    addr6: v6_of(&host).octets(),
                    // One L2 segment: the next hop is the gateway itself.
                    mac: host.mac,
                    _pad: [0; 2],
                },
            ));
            // Each gateway runs the same program: its node address makes it decapsulate
            // IPIP / IP6IP6 addressed to it whose inner destination is a VIP address.
            let node = node_config(&host);
            let dp = lab.in_host(&host.name, move || -> anyhow::Result<Dataplane> {
                let mut dp = Dataplane::load_with(&LoadOptions {
                    flow_table_size: FLOW_TABLE,
                })?;
                dp.set_node(&node)?;
                for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
                    dp.set_vip(
                        &address_key(vip),
                        &VipValue {
                            id: 0,
                            flags: VIP_F_ADDRESS,
                        },
                    )?;
                }
                let mode = dp.attach("eth0", AttachMode::Native)?;
                ensure!(mode == AttachedMode::Native, "attached in {mode:?} mode");
                Ok(dp)
            })??;
            gateways.push(dp);
        }

        let ring = ring_of(&GATEWAYS)?;
        let node = node_config(&lb_host);
        let lb = lab.in_host("lb", move || -> anyhow::Result<Dataplane> {
            let mut dp = Dataplane::load_with(&LoadOptions {
                flow_table_size: FLOW_TABLE,
            })?;
            dp.set_node(&node)?;
            for (id, gw) in &gateway_values {
                dp.set_gateway(*id, gw)?;
            }
            for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
                dp.write_ring(vip_id(vip), &ring)?;
                dp.set_vip(
                    &service_key(vip),
                    &VipValue {
                        id: vip_id(vip),
                        flags: 0,
                    },
                )?;
                dp.set_vip(
                    &address_key(vip),
                    &VipValue {
                        id: 0,
                        flags: VIP_F_ADDRESS,
                    },
                )?;
            }
            let mode = dp.attach("eth0", AttachMode::Native)?;
            ensure!(mode == AttachedMode::Native, "attached in {mode:?} mode");
            Ok(dp)
        })??;

        let servers = Servers::start(&lab)?;
        Ok(Dsr {
            servers,
            lb,
            gateways,
            lab,
        })
    }

    /// The same lab, but every node's maps are written by the agent's L4 writer
    /// (`lb_userspace::xdp_l4::XdpL4`) from one `DesiredL4` per node, as `lb-agent run`
    /// does: gateway MACs come from the kernel's neighbour table, VIP ids and address
    /// entries from the service list.
    fn up_via_agent_writer(prefix: &str) -> anyhow::Result<Dsr> {
        let lab = Lab::up(prefix, lab_specs()?)?;
        let ring = ring_of(&GATEWAYS)?;
        let desired = |local: Option<&str>| -> anyhow::Result<DesiredL4> {
            let me = lab.host(local.unwrap_or("lb"))?;
            let mut gateways = Vec::new();
            for id in GATEWAYS {
                let host = lab.host(&format!("gw{id}"))?;
                gateways.push(L4Gateway {
                    id,
                    name: host.name.clone(),
                    ipv4: v4_of(host),
                    ipv6: Some(v6_of(host)),
                    local: Some(host.name.as_str()) == local,
                });
            }
            Ok(DesiredL4 {
                local_ipv4: Some(v4_of(me)),
                local_ipv6: Some(v6_of(me)),
                gateways,
                services: vips()
                    .into_iter()
                    .map(|vip| L4Service {
                        vip,
                        port: PORT,
                        protocol: L4Protocol::Tcp,
                        ring: ring.clone(),
                    })
                    .collect(),
            })
        };
        let attach = |host: &str, d: DesiredL4| -> anyhow::Result<Dataplane> {
            lab.in_host(host, move || -> anyhow::Result<Dataplane> {
                let mut l4 = XdpL4::attach(
                    "eth0",
                    AttachMode::Native,
                    &LoadOptions {
                        flow_table_size: FLOW_TABLE,
                    },
                )?;
                l4.apply(&d)?;
                // Applying the same state again is a no-op and succeeds.
                l4.apply(&d)?;
                ensure!(l4.attached(), "attached");
                Ok(l4.into_dataplane())
            })?
        };
        let mut gateways = Vec::new();
        for id in GATEWAYS {
            let name = format!("gw{id}");
            gateways.push(attach(&name, desired(Some(&name))?)?);
        }
        let lb = attach("lb", desired(None)?)?;
        // The LB resolved every gateway's MAC from its neighbour table.
        for id in GATEWAYS {
            let mac = lab.host(&format!("gw{id}"))?.mac;
            let written = lb.gateway(id)?;
            ensure!(
                written.mac == mac && written.flags & GW_F_VALID != 0,
                "gateway {id}: {written:?}, expected MAC {mac:02x?}"
            );
        }
        let servers = Servers::start(&lab)?;
        Ok(Dsr {
            servers,
            lb,
            gateways,
            lab,
        })
    }

    fn write_ring(&mut self, ring: &[u32]) -> anyhow::Result<()> {
        for id in [VIP_ID4, VIP_ID6] {
            self.lb.write_ring(id, ring)?;
            ensure!(
                self.lb.active_ring(id)? == ring,
                "VIP {id}: the active ring is not the one written"
            );
        }
        Ok(())
    }

    /// The LB's connection-table entry for the client's connection.
    fn table_gateway(&self, client: SocketAddr, vip: IpAddr) -> anyhow::Result<Option<u32>> {
        let key = flow_key(client, vip);
        Ok(self
            .lb
            .flows()?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.gateway))
    }

    fn gateway_packets(&self) -> anyhow::Result<BTreeMap<u32, u64>> {
        GATEWAYS
            .iter()
            .map(|id| Ok((*id, self.lb.gateway_stats(*id)?.packets)))
            .collect()
    }

    /// Encapsulated by the LB, decapsulated by the gateways (packets).
    fn tunnel_counts(&self) -> anyhow::Result<(u64, u64)> {
        let tx = self.lb.exit_stats()?.get(ExitReason::Tx).packets;
        let mut decap = 0;
        for dp in &self.gateways {
            decap += dp.exit_stats()?.get(ExitReason::Decap).packets;
        }
        Ok((tx, decap))
    }

    /// No packet took a drop or abort exit on any node.
    fn check_no_drops(&self) -> anyhow::Result<()> {
        for (name, dp) in
            std::iter::once(("lb", &self.lb)).chain(self.gateways.iter().map(|d| ("a gateway", d)))
        {
            let stats = dp.exit_stats()?;
            for reason in [
                ExitReason::DropMalformed,
                ExitReason::DropNoGateway,
                ExitReason::Aborted,
                ExitReason::PassEncapOther,
            ] {
                ensure!(
                    stats.get(reason).packets == 0,
                    "{name}: {} packets took exit {}",
                    stats.get(reason).packets,
                    reason.name()
                );
            }
        }
        Ok(())
    }

    /// Waits (bounded) until every packet the LB encapsulated has been decapsulated by a
    /// gateway; fails if the counts do not meet.
    fn check_tunnel_balanced(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (tx, decap) = self.tunnel_counts()?;
            if tx == decap && tx > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the LB encapsulated {tx} packets, the gateways decapsulated {decap}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every connection was served by `expected(client)`: by the client's account (the
    /// response names the gateway), the servers' (their peer lists) and the LB's
    /// connection table. `since`: the servers' count before these connections (a later
    /// connection may reuse an earlier one's source port). Returns the connections per
    /// gateway.
    fn check_served(
        &self,
        vip: IpAddr,
        done: &[(SocketAddr, u32)],
        since: usize,
        expected: impl Fn(SocketAddr) -> u32,
    ) -> anyhow::Result<BTreeMap<u32, usize>> {
        let served = self.servers.served().split_off(since);
        let table = self.lb.flows()?;
        let mut per_gateway = BTreeMap::new();
        let mut wrong = Vec::new();
        for (local, got) in done {
            let want = expected(*local);
            let by_server: Vec<u32> = served
                .iter()
                .filter(|s| s.peer.ip() == local.ip() && s.peer.port() == local.port())
                .map(|s| s.gateway)
                .collect();
            let key = flow_key(*local, vip);
            let in_table: Vec<u32> = table
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v.gateway)
                .collect();
            if *got != want || by_server != [want] || in_table != [want] {
                wrong.push(format!(
                    "{local}: ring says gw{want}, response gw{got}, servers {by_server:?}, connection table {in_table:?}"
                ));
            }
            *per_gateway.entry(*got).or_insert(0) += 1;
        }
        ensure!(
            wrong.is_empty(),
            "{} of {} connections to {vip} off their expected gateway:\n{}",
            wrong.len(),
            done.len(),
            wrong.join("\n")
        );
        Ok(per_gateway)
    }
}

fn vips() -> [IpAddr; 2] {
    [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
}

#[test]
fn dsr_connections_follow_the_maglev_ring() {
    if !require_root("dsr_connections_follow_the_maglev_ring") {
        return;
    }
    let started = Instant::now();
    let dsr = Dsr::up("lbtdsr").unwrap();
    follow_the_ring(&dsr);
    eprintln!("took {:?}", started.elapsed());
}

/// The same through the agent's L4 writer: `XdpL4::apply` of a `DesiredL4` on every node.
#[test]
fn dsr_through_the_agent_l4_writer() {
    if !require_root("dsr_through_the_agent_l4_writer") {
        return;
    }
    let dsr = Dsr::up_via_agent_writer("lbtdsra").unwrap();
    follow_the_ring(&dsr);
}

fn follow_the_ring(dsr: &Dsr) {
    let ring = ring_of(&GATEWAYS).unwrap();

    for vip in vips() {
        let gw_before = dsr.gateway_packets().unwrap();
        let new_before = dsr.lb.vip_stats(vip_id(vip)).unwrap().new_flows;
        let since = dsr.servers.count();
        let done = connections(&dsr.lab, vip, CONNS).unwrap();
        assert_eq!(done.len(), CONNS, "every connection to {vip} completes");
        let per_gateway = dsr
            .check_served(vip, &done, since, |c| ring_gateway(&ring, c, vip))
            .unwrap();
        // With 60 connections over 3 equal shares, each gateway gets some (a miss has
        // probability (2/3)^60).
        assert_eq!(
            per_gateway.keys().copied().collect::<Vec<_>>(),
            GATEWAYS,
            "{vip}: {per_gateway:?}"
        );
        // The LB's per-gateway counters moved for every gateway that served connections.
        let gw_after = dsr.gateway_packets().unwrap();
        for (id, n) in &per_gateway {
            let delta = gw_after[id] - gw_before[id];
            // At least SYN, ACK, request segments and FIN per connection.
            assert!(
                delta >= 4 * *n as u64,
                "{vip}: gw{id} served {n} connections but the LB sent it {delta} packets"
            );
        }
        let new_flows = dsr.lb.vip_stats(vip_id(vip)).unwrap().new_flows - new_before;
        assert!(
            new_flows >= CONNS as u64,
            "{vip}: {new_flows} new flows for {CONNS} connections"
        );
        eprintln!("{vip}: {CONNS} connections per gateway {per_gateway:?}");
    }
    dsr.check_tunnel_balanced().unwrap();
    dsr.check_no_drops().unwrap();
}

#[test]
fn dsr_ring_change_keeps_established_connections() {
    if !require_root("dsr_ring_change_keeps_established_connections") {
        return;
    }
    let started = Instant::now();
    let mut dsr = Dsr::up("lbtdsrd").unwrap();
    let before = ring_of(&GATEWAYS).unwrap();
    let remaining: Vec<u32> = GATEWAYS.into_iter().filter(|g| *g != DRAINED).collect();
    let after = ring_of(&remaining).unwrap();

    // Hold connections open mid-request (head and part of the body sent) until enough of
    // them are on the gateway about to be drained: those are the ones the new ring moves.
    let mut held: Vec<(IpAddr, Pending, u32)> = Vec::new();
    for vip in vips() {
        let mut on_drained = 0;
        let mut total = 0;
        for _ in 0..80 {
            if on_drained >= 5 && total >= 15 {
                break;
            }
            let p = dsr
                .lab
                .in_host("client", move || open(vip, 200 + REQUEST_BODY / 2))
                .unwrap()
                .unwrap();
            let gw = ring_gateway(&before, p.local, vip);
            on_drained += usize::from(gw == DRAINED);
            total += 1;
            held.push((vip, p, gw));
        }
        assert!(
            on_drained >= 5,
            "{vip}: only {on_drained} of {total} held connections on gw{DRAINED}"
        );
    }
    // The LB recorded every held connection with the gateway the old ring names.
    for (vip, p, gw) in &held {
        assert_eq!(
            dsr.table_gateway(p.local, *vip).unwrap(),
            Some(*gw),
            "{}: connection table",
            p.local
        );
    }

    dsr.write_ring(&after).unwrap();
    let moved = held
        .iter()
        .filter(|(vip, p, gw)| ring_gateway(&after, p.local, *vip) != *gw)
        .count();
    assert!(
        moved >= 10,
        "the new ring must move some held connections (moved {moved})"
    );

    // New connections while the old ones are still open: they follow the new ring.
    for vip in vips() {
        let since = dsr.servers.count();
        let done = connections(&dsr.lab, vip, 30).unwrap();
        let per_gateway = dsr
            .check_served(vip, &done, since, |c| ring_gateway(&after, c, vip))
            .unwrap();
        assert!(
            !per_gateway.contains_key(&DRAINED),
            "{vip}: new connections reached the drained gw{DRAINED}: {per_gateway:?}"
        );
    }

    // The held connections complete against their original gateway, including those the
    // new ring would send elsewhere.
    let held_count = held.len();
    let mut by_vip: BTreeMap<IpAddr, Vec<(SocketAddr, u32)>> = BTreeMap::new();
    let mut original: BTreeMap<SocketAddr, u32> = BTreeMap::new();
    let since = dsr.servers.count();
    for (vip, p, gw) in held {
        original.insert(p.local, gw);
        let done = finish(p).unwrap();
        by_vip.entry(vip).or_default().push(done);
    }
    let mut completed = 0;
    for (vip, done) in &by_vip {
        let per_gateway = dsr
            .check_served(*vip, done, since, |c| original[&c])
            .unwrap();
        completed += done.len();
        eprintln!("{vip}: held connections completed per gateway {per_gateway:?}");
    }
    assert_eq!(completed, held_count, "every held connection completes");

    // Once the held connections are closed, the drained gateway gets no packet at all.
    dsr.check_tunnel_balanced().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let drained_before = dsr.lb.gateway_stats(DRAINED).unwrap().packets;
    for vip in vips() {
        let since = dsr.servers.count();
        let done = connections(&dsr.lab, vip, 30).unwrap();
        let per_gateway = dsr
            .check_served(vip, &done, since, |c| ring_gateway(&after, c, vip))
            .unwrap();
        assert!(!per_gateway.contains_key(&DRAINED), "{per_gateway:?}");
    }
    assert_eq!(
        dsr.lb.gateway_stats(DRAINED).unwrap().packets,
        drained_before,
        "packets sent to the drained gateway after its connections closed"
    );
    dsr.check_tunnel_balanced().unwrap();
    dsr.check_no_drops().unwrap();
    eprintln!("took {:?}", started.elapsed());
}

/// Path-MTU discovery through the LB: with the LB's MTU set to the clients' (1500), a
/// full-size client segment would exceed it once encapsulated. The program answers it with
/// ICMP "fragmentation needed" / ICMPv6 "packet too big" from the VIP; the client's kernel
/// lowers its path MTU to the VIP and resends, and every upload completes.
#[test]
fn dsr_too_big_packets_recover_by_path_mtu_discovery() {
    if !require_root("dsr_too_big_packets_recover_by_path_mtu_discovery") {
        return;
    }
    let mut dsr = Dsr::up("lbtpmtu").unwrap();
    let node = node_config(dsr.lab.host("lb").unwrap());
    dsr.lb.set_node(&NodeConfig { mtu: 1500, ..node }).unwrap();
    let before = dsr.lb.exit_stats().unwrap();
    for vip in vips() {
        let before = dsr
            .lb
            .exit_stats()
            .unwrap()
            .get(ExitReason::IcmpTooBig)
            .packets;
        // Requests of 6,000 bytes: several full-size segments each.
        let done = connections(&dsr.lab, vip, 5).unwrap();
        assert_eq!(done.len(), 5, "{vip}");
        let after = dsr
            .lb
            .exit_stats()
            .unwrap()
            .get(ExitReason::IcmpTooBig)
            .packets;
        assert!(after > before, "{vip}: no ICMP too-big was sent");
    }
    let after = dsr.lb.exit_stats().unwrap();
    assert_eq!(
        after.get(ExitReason::DropTooBig).packets,
        before.get(ExitReason::DropTooBig).packets,
        "TCP sets DF: nothing is dropped as too big"
    );
    // The client learned the smaller path MTU to each VIP.
    let routes = dsr
        .lab
        .exec("client", "ip", &["route", "get", &VIP4.to_string()])
        .unwrap();
    assert!(routes.contains("mtu 1480"), "{routes}");
    let routes = dsr
        .lab
        .exec("client", "ip", &["-6", "route", "get", &VIP6.to_string()])
        .unwrap();
    assert!(routes.contains("mtu 1460"), "{routes}");
}
