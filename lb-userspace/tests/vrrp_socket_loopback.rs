//! Real raw sockets on the loopback interface, with unicast "peers" at ::1 / 127.0.0.1:
//! an advert goes out through [`VrrpSocket::send`] and comes back through
//! [`VrrpSocket::recv`], where the receive checks refuse it for its loopback source. That
//! the refusal is `BadSource` (checked after protocol and TTL / hop limit) shows the
//! packet arrived with TTL 255 and, for IPv6, that the hop-limit control message was read.
//! Needs CAP_NET_RAW; skipped without it. Touches nothing but `lo`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]
use std::{io, net::IpAddr, time::Duration};

use lb_userspace::vrrp::{
    packet::{AdverInterval, Advertisement, PacketError, VirtualAddrs, Vrid},
    socket::{Inbound, Interface, SocketError, VrrpSocket},
};

fn advert(addrs: VirtualAddrs) -> Advertisement {
    Advertisement {
        vrid: Vrid::new(51).unwrap(),
        priority: 100,
        max_adver_int: AdverInterval::from_centis(10).unwrap(),
        addrs,
    }
}

/// Opens a unicast socket on lo, or `None` when raw sockets are not permitted here.
fn open(local: &str) -> Option<VrrpSocket> {
    let local: IpAddr = local.parse().unwrap();
    match VrrpSocket::open(Interface::lookup("lo").unwrap(), local, vec![local]) {
        Ok(s) => Some(s),
        Err(SocketError::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
            None
        }
        Err(e) => panic!("{e}"),
    }
}

async fn roundtrip(local: &str, addrs: VirtualAddrs) {
    let Some(sock) = open(local) else {
        return;
    };
    sock.send(&advert(addrs)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sock.recv())
        .await
        .expect("no packet within 5 s")
        .unwrap();
    let src: IpAddr = local.parse().unwrap();
    assert_eq!(
        got,
        Inbound::Rejected {
            src: Some(src),
            error: PacketError::BadSource { src },
        }
    );
}

#[tokio::test]
async fn ipv4_send_and_receive_on_loopback() {
    roundtrip(
        "127.0.0.1",
        VirtualAddrs::V4(vec!["10.99.0.200".parse().unwrap()]),
    )
    .await;
}

#[tokio::test]
async fn ipv6_send_and_receive_on_loopback() {
    roundtrip("::1", VirtualAddrs::V6(vec!["fd99::200".parse().unwrap()])).await;
}
