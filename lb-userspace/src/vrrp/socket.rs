//! Raw-socket I/O for VRRP: adverts over IPv4 and IPv6 (multicast group or unicast peers)
//! and the gratuitous ARP / unsolicited NA announcements, non-blocking behind tokio's
//! `AsyncFd`. Needs CAP_NET_RAW. Everything received goes through the checks of
//! [`super::packet`] before it is handed out.
//!
//! Each virtual router has two sockets of protocol 112: a receiving one, bound to the
//! device only (a raw socket bound to an address would see only packets to that address,
//! not to the group), and a sending one, bound to our primary address so that the kernel
//! uses it as the source, with TTL / hop limit 255 (RFC 5798 sections 5.1.1.3, 5.1.2.3),
//! multicast loop off (we must not hear ourselves), and the interface as multicast
//! interface. We compute the checksum ourselves for both families (the pseudo-header
//! checksum of RFC 5798 section 5.2.8); `IPV6_CHECKSUM` is left off.
//!
//! The IPv6 NA goes out of an ICMPv6 raw socket with `IPV6_PKTINFO` naming the virtual
//! address as source, so the address must be on the interface and not tentative: add it
//! with `IFA_F_NODAD`, as keepalived does.
use std::{
    ffi::CString,
    io::{self, Read as _},
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    num::NonZeroU32,
    os::fd::AsRawFd as _,
    ptr,
};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    announce::{ALL_NODES, BROADCAST_MAC, ETHERTYPE_ARP, Mac, gratuitous_arp, unsolicited_na},
    packet::{
        Advertisement, Delivery, Family, IpHeaderInfo, MULTICAST_V4, MULTICAST_V6, PacketError,
        PseudoHeader, VRRP_PROTOCOL, VRRP_TTL, VirtualAddrs, check_ip_header, parse_ipv4,
    },
};

/// Type of service / traffic class of our adverts: precedence "internetwork control", as
/// keepalived sends them.
const TOS_INTERNETWORK_CONTROL: u32 = 0xc0;
/// Large enough for any advert: IPv4 header with options + 8 + 255 * 16.
const RECV_BUF: usize = 4608;

/// A socket-level failure, naming the interface and the operation.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// No interface of that name in this network namespace.
    #[error("interface {iface:?} does not exist: {source}")]
    UnknownInterface {
        iface: String,
        #[source]
        source: io::Error,
    },
    /// A system call failed.
    #[error("{iface}: {op}: {source}")]
    Io {
        iface: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The local address, the peers and the virtual addresses must be of one family.
    #[error("{iface}: {addr} is not an {family} address")]
    FamilyMismatch {
        iface: String,
        addr: IpAddr,
        family: Family,
    },
    /// Our own advert could not be encoded.
    #[error("{iface}: encoding an advert: {source}")]
    Encode {
        iface: String,
        #[source]
        source: PacketError,
    },
}

/// The interface a virtual router runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name, e.g. `eth0`.
    pub name: String,
    /// Index.
    pub index: NonZeroU32,
    /// Hardware address, the source of our announcements.
    pub mac: Mac,
}

impl Interface {
    /// Looks `name` up in the calling thread's network namespace.
    pub fn lookup(name: &str) -> Result<Interface, SocketError> {
        let unknown = |source| SocketError::UnknownInterface {
            iface: name.to_string(),
            source,
        };
        let cname = CString::new(name)
            .map_err(|_| unknown(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        let index = NonZeroU32::new(index).ok_or_else(|| unknown(io::Error::last_os_error()))?;
        let mac = hardware_address(name).map_err(unknown)?;
        Ok(Interface {
            name: name.to_string(),
            index,
            mac,
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(io::Error) -> SocketError + '_ {
        move |source| SocketError::Io {
            iface: self.name.clone(),
            op,
            source,
        }
    }
}

/// The MAC address of `name` (SIOCGIFHWADDR), correct in any network namespace, unlike
/// /sys/class/net which shows the namespace sysfs was mounted in.
fn hardware_address(name: &str) -> io::Result<Mac> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name (zeroed tail); the kernel
    // writes at most sizeof(ifreq) bytes into it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFHWADDR the union holds `ifru_hwaddr`.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// What came in on a [`VrrpSocket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// An advert that passed every check; feed it to the state machine as
    /// [`super::state::Event::Advert`].
    Advert {
        /// IP source: the sender's primary address.
        src: IpAddr,
        /// The message.
        advert: Advertisement,
    },
    /// A packet that failed a check (count it, log it at debug, go on).
    Rejected {
        /// IP source, when the IP header could be read.
        src: Option<IpAddr>,
        /// What was wrong.
        error: PacketError,
    },
}

/// The sockets of one virtual router on one interface.
#[derive(Debug)]
pub struct VrrpSocket {
    iface: Interface,
    local: IpAddr,
    peers: Vec<IpAddr>,
    rx: AsyncFd<Socket>,
    tx: AsyncFd<Socket>,
}

impl VrrpSocket {
    /// Opens the sockets on `iface`, sending from `local` (an IPv4 address of the interface,
    /// or its IPv6 link-local address) to the VRRP group, or to `peers` when there are any.
    /// Must be called inside a tokio runtime.
    pub fn open(
        iface: Interface,
        local: IpAddr,
        peers: Vec<IpAddr>,
    ) -> Result<VrrpSocket, SocketError> {
        let family = Family::of(local);
        if let Some(&addr) = peers.iter().find(|p| Family::of(**p) != family) {
            return Err(SocketError::FamilyMismatch {
                iface: iface.name,
                addr,
                family,
            });
        }
        let multicast = peers.is_empty();
        let domain = match family {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        };
        let raw = || {
            Socket::new(
                domain,
                Type::RAW,
                Some(Protocol::from(i32::from(VRRP_PROTOCOL))),
            )
            .map_err(iface.err("socket(IPPROTO_VRRP)"))
        };
        let (rx, tx) = (raw()?, raw()?);
        for s in [&rx, &tx] {
            s.bind_device(Some(iface.name.as_bytes()))
                .map_err(iface.err("SO_BINDTODEVICE"))?;
            s.set_nonblocking(true).map_err(iface.err("O_NONBLOCK"))?;
        }
        match local {
            IpAddr::V4(addr) => {
                // Only the groups this socket joined, not every group of the host.
                rx.set_multicast_all_v4(false)
                    .map_err(iface.err("IP_MULTICAST_ALL"))?;
                if multicast {
                    rx.join_multicast_v4_n(
                        &MULTICAST_V4,
                        &InterfaceIndexOrAddress::Index(iface.index.get()),
                    )
                    .map_err(iface.err("IP_ADD_MEMBERSHIP 224.0.0.18"))?;
                }
                tx.bind(&SockAddr::from(SocketAddrV4::new(addr, 0)))
                    .map_err(iface.err("bind to the local address"))?;
                tx.set_multicast_if_v4(&addr)
                    .map_err(iface.err("IP_MULTICAST_IF"))?;
                tx.set_multicast_ttl_v4(u32::from(VRRP_TTL))
                    .map_err(iface.err("IP_MULTICAST_TTL"))?;
                tx.set_ttl_v4(u32::from(VRRP_TTL))
                    .map_err(iface.err("IP_TTL"))?;
                tx.set_multicast_loop_v4(false)
                    .map_err(iface.err("IP_MULTICAST_LOOP"))?;
                tx.set_tos_v4(TOS_INTERNETWORK_CONTROL)
                    .map_err(iface.err("IP_TOS"))?;
            }
            IpAddr::V6(addr) => {
                rx.set_multicast_all_v6(false)
                    .map_err(iface.err("IPV6_MULTICAST_ALL"))?;
                // The hop limit and destination come as control messages (RFC 5798
                // section 7.1 needs both; the IPv6 header is not delivered).
                rx.set_recv_hoplimit_v6(true)
                    .map_err(iface.err("IPV6_RECVHOPLIMIT"))?;
                set_recv_pktinfo_v6(&rx).map_err(iface.err("IPV6_RECVPKTINFO"))?;
                if multicast {
                    rx.join_multicast_v6(&MULTICAST_V6, iface.index.get())
                        .map_err(iface.err("IPV6_ADD_MEMBERSHIP ff02::12"))?;
                }
                tx.bind(&SockAddr::from(SocketAddrV6::new(
                    addr,
                    0,
                    0,
                    scope(addr, &iface),
                )))
                .map_err(iface.err("bind to the local address"))?;
                tx.set_multicast_if_v6(iface.index.get())
                    .map_err(iface.err("IPV6_MULTICAST_IF"))?;
                tx.set_multicast_hops_v6(u32::from(VRRP_TTL))
                    .map_err(iface.err("IPV6_MULTICAST_HOPS"))?;
                tx.set_unicast_hops_v6(u32::from(VRRP_TTL))
                    .map_err(iface.err("IPV6_UNICAST_HOPS"))?;
                tx.set_multicast_loop_v6(false)
                    .map_err(iface.err("IPV6_MULTICAST_LOOP"))?;
                tx.set_tclass_v6(TOS_INTERNETWORK_CONTROL)
                    .map_err(iface.err("IPV6_TCLASS"))?;
            }
        }
        let rx = register(&iface, rx)?;
        let tx = register(&iface, tx)?;
        Ok(VrrpSocket {
            iface,
            local,
            peers,
            rx,
            tx,
        })
    }

    /// Where adverts go: the group, or every unicast peer.
    fn destinations(&self) -> Vec<IpAddr> {
        if self.peers.is_empty() {
            vec![Family::of(self.local).multicast_group()]
        } else {
            self.peers.clone()
        }
    }

    /// Sends `advert` to the group or to each peer, checksum computed over the
    /// pseudo-header of each destination.
    pub async fn send(&self, advert: &Advertisement) -> Result<(), SocketError> {
        for dst in self.destinations() {
            let ph = PseudoHeader::new(self.local, dst).map_err(|source| SocketError::Encode {
                iface: self.iface.name.clone(),
                source,
            })?;
            let bytes = advert.encode(&ph).map_err(|source| SocketError::Encode {
                iface: self.iface.name.clone(),
                source,
            })?;
            let to = match dst {
                IpAddr::V4(a) => SockAddr::from(SocketAddrV4::new(a, 0)),
                IpAddr::V6(a) => SockAddr::from(SocketAddrV6::new(a, 0, 0, scope(a, &self.iface))),
            };
            self.tx
                .async_io(Interest::WRITABLE, |s| s.send_to(&bytes, &to))
                .await
                .map_err(self.iface.err("send advert"))?;
        }
        Ok(())
    }

    /// Waits for the next VRRP packet and checks it (RFC 5798 section 7.1).
    pub async fn recv(&self) -> Result<Inbound, SocketError> {
        let mut buf = vec![0u8; RECV_BUF];
        let delivery = if self.peers.is_empty() {
            Delivery::Multicast
        } else {
            Delivery::Unicast {
                local: self.local,
                peers: &self.peers,
            }
        };
        let (hdr, msg) = match self.local {
            IpAddr::V4(_) => {
                // A raw IPv4 socket delivers the IP header too.
                let n = self
                    .rx
                    .async_io(Interest::READABLE, |s| (&*s).read(&mut buf))
                    .await
                    .map_err(self.iface.err("recv advert"))?;
                match parse_ipv4(buf.get(..n).unwrap_or_default()) {
                    Ok((hdr, msg)) => (hdr, msg.to_vec()),
                    Err(error) => return Ok(Inbound::Rejected { src: None, error }),
                }
            }
            IpAddr::V6(_) => {
                let got = self
                    .rx
                    .async_io(Interest::READABLE, |s| recv_v6(s, &mut buf))
                    .await
                    .map_err(self.iface.err("recvmsg advert"))?;
                let hdr = IpHeaderInfo {
                    src: IpAddr::V6(got.src),
                    // Without the control messages the checks fail on TTL / destination.
                    dst: IpAddr::V6(got.dst.unwrap_or(Ipv6Addr::UNSPECIFIED)),
                    ttl: got.hop_limit.unwrap_or(0),
                    protocol: VRRP_PROTOCOL,
                };
                (hdr, buf.get(..got.len).unwrap_or_default().to_vec())
            }
        };
        let checked =
            check_ip_header(&hdr, &delivery).and_then(|ph| Advertisement::decode(&msg, &ph));
        Ok(match checked {
            Ok(advert) => Inbound::Advert {
                src: hdr.src,
                advert,
            },
            Err(error) => Inbound::Rejected {
                src: Some(hdr.src),
                error,
            },
        })
    }
}

/// Hands `socket` to tokio's reactor; an error, not tokio's panic, outside a runtime.
fn register(iface: &Interface, socket: Socket) -> Result<AsyncFd<Socket>, SocketError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(iface.err("register with tokio")(io::Error::other(
            "not inside a tokio runtime",
        )));
    }
    // SAFETY: `Socket` owns its descriptor; it is moved into the AsyncFd and closed only
    // when that is dropped, so the fd stays open and the same for the AsyncFd's lifetime.
    unsafe { AsyncFd::register(socket) }
        .map_err(|e| iface.err("register with tokio")(io::Error::from(e)))
}

/// The scope id a link-local or multicast-link-local address needs: our interface.
fn scope(addr: Ipv6Addr, iface: &Interface) -> u32 {
    let link_local = addr.segments()[0] & 0xffc0 == 0xfe80;
    let link_multicast = addr.segments()[0] & 0xff0f == 0xff02;
    if link_local || link_multicast {
        iface.index.get()
    } else {
        0
    }
}

fn set_recv_pktinfo_v6(sock: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd, a c_int option value and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            ptr::from_ref(&on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One IPv6 datagram with what the control messages said.
struct RecvV6 {
    len: usize,
    src: Ipv6Addr,
    dst: Option<Ipv6Addr>,
    hop_limit: Option<u8>,
}

/// Control buffer with the alignment `cmsghdr` needs.
#[repr(C, align(8))]
struct ControlBuf([u8; 256]);

/// recvmsg(2) with IPV6_HOPLIMIT and IPV6_PKTINFO. A truncated datagram is an error
/// (no advert is longer than [`RECV_BUF`]).
fn recv_v6(sock: &Socket, buf: &mut [u8]) -> io::Result<RecvV6> {
    let mut control = ControlBuf([0; 256]);
    // SAFETY: plain C structs; all zeroes is valid for both.
    let (mut name, mut msg): (libc::sockaddr_in6, libc::msghdr) = unsafe { (zeroed(), zeroed()) };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    msg.msg_name = ptr::from_mut(&mut name).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: every pointer in `msg` points to a live buffer of the stated length.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    let len = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram or control data truncated",
        ));
    }
    let mut out = RecvV6 {
        len,
        src: Ipv6Addr::from(name.sin6_addr.s6_addr),
        dst: None,
        hop_limit: None,
    };
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* helpers stay within
    // msg_control[..msg_controllen], and each payload is read unaligned at its own type,
    // which the kernel wrote for that (level, type).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let hops = ptr::read_unaligned(data.cast::<libc::c_int>());
                    out.hop_limit = u8::try_from(hops).ok();
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    out.dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(out)
}

/// Sends the announcements of a new Master on one interface: gratuitous ARP through an
/// AF_PACKET socket, unsolicited NA through an ICMPv6 raw socket.
#[derive(Debug)]
pub struct Announcer {
    iface: Interface,
    /// Set the NA Router flag (RFC 5798 section 6.4.2 line 395); keepalived 2.2.7 leaves
    /// it clear.
    router_flag: bool,
    socket: AsyncFd<Socket>,
    family: Family,
}

impl Announcer {
    /// Opens the socket for `family` on `iface`. Must be called inside a tokio runtime.
    pub fn open(
        iface: Interface,
        family: Family,
        router_flag: bool,
    ) -> Result<Announcer, SocketError> {
        let socket = match family {
            // Protocol 0: a send-only packet socket that receives nothing.
            Family::V4 => Socket::new(Domain::PACKET, Type::RAW, None)
                .map_err(iface.err("socket(AF_PACKET)"))?,
            Family::V6 => {
                let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                    .map_err(iface.err("socket(IPPROTO_ICMPV6)"))?;
                s.bind_device(Some(iface.name.as_bytes()))
                    .map_err(iface.err("SO_BINDTODEVICE"))?;
                // RFC 4861 section 7.1.2: receivers drop NAs with another hop limit.
                s.set_multicast_hops_v6(255)
                    .map_err(iface.err("IPV6_MULTICAST_HOPS"))?;
                s.set_multicast_if_v6(iface.index.get())
                    .map_err(iface.err("IPV6_MULTICAST_IF"))?;
                s.set_multicast_loop_v6(false)
                    .map_err(iface.err("IPV6_MULTICAST_LOOP"))?;
                s
            }
        };
        socket
            .set_nonblocking(true)
            .map_err(iface.err("O_NONBLOCK"))?;
        let socket = register(&iface, socket)?;
        Ok(Announcer {
            iface,
            router_flag,
            socket,
            family,
        })
    }

    /// Sends `count` announcements for each of `addrs` (all of this announcer's family).
    pub async fn announce(&self, addrs: &VirtualAddrs, count: u32) -> Result<(), SocketError> {
        if addrs.family() != self.family {
            return Err(SocketError::FamilyMismatch {
                iface: self.iface.name.clone(),
                addr: addrs
                    .iter()
                    .next()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                family: self.family,
            });
        }
        for _ in 0..count {
            match addrs {
                VirtualAddrs::V4(ips) => {
                    let to = link_broadcast(&self.iface);
                    for ip in ips {
                        let frame = gratuitous_arp(self.iface.mac, *ip);
                        self.socket
                            .async_io(Interest::WRITABLE, |s| s.send_to(&frame, &to))
                            .await
                            .map_err(self.iface.err("send gratuitous ARP"))?;
                    }
                }
                VirtualAddrs::V6(ips) => {
                    for ip in ips {
                        let na = unsolicited_na(self.iface.mac, *ip, self.router_flag);
                        self.socket
                            .async_io(Interest::WRITABLE, |s| {
                                send_from_v6(s, &na, *ip, ALL_NODES, self.iface.index)
                            })
                            .await
                            .map_err(self.iface.err("send unsolicited NA"))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The link-layer broadcast destination of a gratuitous ARP on `iface`.
fn link_broadcast(iface: &Interface) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll fits in sockaddr_storage (view_as checks it) and is plain data.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = ETHERTYPE_ARP.to_be();
    ll.sll_ifindex = i32::try_from(iface.index.get()).unwrap_or(0);
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&BROADCAST_MAC);
    // SAFETY: the storage holds an initialised sockaddr_ll of the given length.
    unsafe { SockAddr::new(storage, size_of::<libc::sockaddr_ll>() as libc::socklen_t) }
}

/// sendmsg(2) of an ICMPv6 message from `src` (IPV6_PKTINFO) to `dst` on `ifindex`.
fn send_from_v6(
    sock: &Socket,
    payload: &[u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ifindex: NonZeroU32,
) -> io::Result<usize> {
    // SAFETY: plain C structs; all zeroes is valid.
    let (mut to, mut msg): (libc::sockaddr_in6, libc::msghdr) = unsafe { (zeroed(), zeroed()) };
    to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    to.sin6_addr.s6_addr = dst.octets();
    to.sin6_scope_id = ifindex.get();
    let info = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: src.octets(),
        },
        ipi6_ifindex: ifindex.get(),
    };
    let mut control = ControlBuf([0; 256]);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    msg.msg_name = ptr::from_mut(&mut to).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the one cmsg written fits in
    // `control` (256 bytes > CMSG_SPACE(20)); sendmsg only reads the buffers, and the
    // iovec's mutable pointer is never written through.
    let n = unsafe {
        let space = libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32);
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for IPV6_PKTINFO"));
        }
        (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
        (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
        libc::sendmsg(sock.as_raw_fd(), &msg, 0)
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_lookup() {
        let lo = Interface::lookup("lo").unwrap();
        assert_eq!(lo.mac, [0; 6]);
        assert!(lo.index.get() >= 1);
    }

    #[test]
    fn unknown_interface_is_named() {
        let err = Interface::lookup("no-such-if0").unwrap_err();
        assert!(err.to_string().contains("\"no-such-if0\""), "{err}");
        assert!(matches!(
            Interface::lookup("a-name-longer-than-ifnamsiz"),
            Err(SocketError::UnknownInterface { .. })
        ));
    }

    #[test]
    fn scope_only_for_link_scoped_addresses() {
        let iface = Interface {
            name: "eth0".into(),
            index: NonZeroU32::new(7).unwrap(),
            mac: [0; 6],
        };
        assert_eq!(scope("fe80::1".parse().unwrap(), &iface), 7);
        assert_eq!(scope(MULTICAST_V6, &iface), 7);
        assert_eq!(scope("fd99::200".parse().unwrap(), &iface), 0);
    }

    #[test]
    fn peers_must_match_the_local_family() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let lo = Interface::lookup("lo").unwrap();
        let err = VrrpSocket::open(
            lo,
            "127.0.0.1".parse().unwrap(),
            vec!["::1".parse().unwrap()],
        )
        .unwrap_err();
        assert!(matches!(err, SocketError::FamilyMismatch { .. }), "{err}");
    }
}
