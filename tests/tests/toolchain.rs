//! The first end-to-end proof of the toolchain: the XDP program built by
//! lb-userspace's build.rs is loaded, attached to a veth inside a lab namespace, real
//! packets are sent across it from another namespace, and the program's counter map
//! shows it saw every one of them. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use lb_common::ExitReason;
use lb_tests::{
    lab::{HostSpec, Lab},
    privileged::require_root,
};
use lb_userspace::dataplane::{AttachMode, AttachedMode, Dataplane};

const COUNT: u32 = 500;

#[test]
fn xdp_program_sees_packets_sent_from_another_namespace() {
    if !require_root("xdp_program_sees_packets_sent_from_another_namespace") {
        return;
    }
    let lab = Lab::up(
        "lbttool",
        vec![
            HostSpec::new("client")
                .addr("10.79.0.1/24")
                .unwrap()
                .addr("fd79::1/64")
                .unwrap(),
            HostSpec::new("node")
                .addr("10.79.0.2/24")
                .unwrap()
                .addr("fd79::2/64")
                .unwrap(),
        ],
    )
    .unwrap();

    // Load and attach inside the node's namespace; the Dataplane value owns the link.
    let dp = lab
        .in_host("node", || -> anyhow::Result<(Dataplane, AttachedMode)> {
            let mut dp = Dataplane::load()?;
            let mode = dp.attach("eth0", AttachMode::Native)?;
            Ok((dp, mode))
        })
        .unwrap();
    let (dp, mode) = dp.unwrap();
    assert_eq!(mode, AttachedMode::Native, "veth supports native XDP");
    let attached = lab
        .exec("node", "ip", &["-d", "link", "show", "eth0"])
        .unwrap();
    assert!(attached.contains("prog/xdp"), "{attached}");
    let before = dp.exit_stats().unwrap();

    for (to, from) in [("10.79.0.2", "0.0.0.0:0"), ("[fd79::2]", "[::]:0")] {
        let addr: SocketAddr = format!("{to}:9").parse().unwrap();
        // A receiver proves the packets were passed up the node's stack, not just seen.
        let rx = lab
            .in_host("node", move || UdpSocket::bind(addr))
            .unwrap()
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let received = lab
            .in_host("client", move || -> std::io::Result<u32> {
                let tx = UdpSocket::bind(from)?;
                let mut got = 0;
                let mut buf = [0u8; 8];
                for i in 0..COUNT {
                    tx.send_to(&i.to_be_bytes(), addr)?;
                    // One at a time, so no socket buffer can overflow.
                    if rx.recv(&mut buf).is_ok() && buf[..4] == i.to_be_bytes() {
                        got += 1;
                    }
                }
                Ok(got)
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            received, COUNT,
            "datagrams to {addr} that reached the node's socket"
        );
    }

    let after = dp.exit_stats().unwrap();
    let seen =
        after.get(ExitReason::PassNotVip).packets - before.get(ExitReason::PassNotVip).packets;
    // 2 * COUNT datagrams, plus whatever ARP/ND and other IP traffic crossed meanwhile.
    assert!(
        seen >= u64::from(2 * COUNT),
        "the program counted {seen} IP packets, expected at least {}",
        2 * COUNT
    );
    assert!(after.get(ExitReason::PassNotVip).bytes > before.get(ExitReason::PassNotVip).bytes);
    // No packet took a drop or abort exit.
    for reason in [
        ExitReason::DropMalformed,
        ExitReason::DropNoGateway,
        ExitReason::Aborted,
    ] {
        assert_eq!(after.get(reason).packets, 0, "{}", reason.name());
    }
    assert_eq!(
        after.total_packets() - before.total_packets(),
        after.iter().map(|(_, c)| c.packets).sum::<u64>() - before.total_packets()
    );
    drop(dp);
    lab.down().unwrap();
}
