//! `lb-lab`: the network-namespace lab by hand, and the demo. Needs root.
//!
//! Normally run through `cargo xtask lab ...` and `cargo xtask demo`, which install the
//! prerequisites and build the binaries first.
#![allow(clippy::print_stdout, reason = "a CLI prints its results")]
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use lb_tests::lab::{self, Lab, topology};

/// Build, inspect and remove network-namespace labs; run the demo.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the standard topology (client, nodes, backends on one bridge) and leave it up.
    Up {
        /// Name prefix of the namespaces (a-z, 0-9, at most 12).
        #[arg(long, default_value = "lab")]
        prefix: String,
        /// Number of LB/gateway nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Number of backend hosts.
        #[arg(long, default_value_t = 2)]
        backends: u8,
    },
    /// Remove a lab: kill its processes, remove its pins and namespaces.
    Down {
        #[arg(long, default_value = "lab")]
        prefix: String,
    },
    /// Show a lab's namespaces, addresses, XDP programs and processes.
    Status {
        #[arg(long, default_value = "lab")]
        prefix: String,
    },
    /// Bring up a lab, show the pieces that work, tear it down.
    Demo {
        #[arg(long, default_value = "demo")]
        prefix: String,
        /// Leave the lab up at the end (remove it with `cargo xtask lab down --prefix PREFIX`).
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            prefix,
            nodes,
            backends,
        } => {
            let lab = Lab::up(&prefix, topology::standard(nodes, backends)?)?;
            print_hosts(&lab);
            // Leave it running: `lb-lab down` removes it.
            std::mem::forget(lab);
            println!(
                "\nlab {prefix} is up; remove it with `cargo xtask lab down --prefix {prefix}`"
            );
        }
        Command::Down { prefix } => {
            let removed = lab::teardown_prefix(&prefix)?;
            println!("removed {} namespaces of lab {prefix}", removed.len());
        }
        Command::Status { prefix } => {
            let status = lab::status(&prefix)?;
            if status.is_empty() {
                println!("no lab with prefix {prefix}");
            } else {
                print!("{status}");
            }
        }
        Command::Demo { prefix, keep } => demo(&prefix, keep)?,
    }
    Ok(())
}

fn print_hosts(lab: &Lab) {
    println!(
        "{:<10} {:<22} {:<18} {:<14} VIPs on lo",
        "HOST", "NAMESPACE", "MAC", "IPv4"
    );
    for h in lab.hosts() {
        println!(
            "{:<10} {:<22} {:<18} {:<14} {}",
            h.name,
            h.ns,
            lab::format_mac(&h.mac),
            h.ipv4().map(|a| a.to_string()).unwrap_or_default(),
            h.loopback
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

/// The binaries built next to this one (`cargo xtask demo` builds them).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating lb-lab")?;
    let path = exe
        .parent()
        .context("lb-lab has no parent directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo xtask demo does)",
            path.display()
        );
    }
    Ok(path)
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn demo(prefix: &str, keep: bool) -> anyhow::Result<()> {
    let agent = sibling("lb-agent")?;
    let lbctl = sibling("lbctl")?;
    let agent = agent.to_string_lossy().into_owned();
    let lbctl = lbctl.to_string_lossy().into_owned();

    step("Building the lab: a client, three LB/gateway nodes and two backends on one bridge");
    let lab = Lab::up(prefix, topology::standard(3, 2)?)?;
    print_hosts(&lab);

    let node = lab.host("node1")?.clone();
    let pin_dir = lab.pin_dir().join("node1");
    let pin = pin_dir.to_string_lossy().into_owned();
    step("Attaching the XDP data path to node1's eth0 with lb-agent");
    lab.exec(
        "node1",
        &agent,
        &["xdp", "attach", "--iface", "eth0", "--pin-dir", &pin],
    )?;
    print!(
        "{}",
        lab.exec("node1", "ip", &["-d", "link", "show", "eth0"])?
    );

    step("Sending traffic from the client to node1 through the XDP program");
    let node_v4 = node.ipv4().context("node1 has no IPv4 address")?;
    let node_v6 = node.ipv6().context("node1 has no IPv6 address")?;
    for addr in [node_v4, node_v6] {
        let echoed = tcp_echo_roundtrip(&lab, addr)?;
        println!("TCP to {addr}:7: {echoed} bytes echoed back");
    }
    let sent = udp_burst(&lab, node_v4, 1000)?;
    println!("UDP to {node_v4}:9: {sent} of 1000 datagrams echoed back by node1");

    step("Reading the data path's counters with lbctl (every packet is counted by exit reason)");
    print!(
        "{}",
        lab.exec("node1", &lbctl, &["counters", "--pin-dir", &pin])?
    );

    step("Cutting node2's link and restoring it");
    lab.cut_link("node2")?;
    print!(
        "{}",
        lab.exec("node2", "ip", &["-br", "link", "show", "eth0"])?
    );
    lab.restore_link("node2")?;
    print!(
        "{}",
        lab.exec("node2", "ip", &["-br", "link", "show", "eth0"])?
    );

    if keep {
        println!(
            "\nlab {prefix} left up; `cargo xtask lab status --prefix {prefix}` shows it, `cargo xtask lab down --prefix {prefix}` removes it"
        );
        std::mem::forget(lab);
    } else {
        step("Tearing the lab down");
        lab.down()?;
        let left = lab::lab_namespaces(prefix)?;
        println!("namespaces left: {}", left.len());
    }
    println!(
        "\nWhat is next: VRRP failover of the VIP, Maglev spreading over the gateways, and the L7 gateway (see README.md)."
    );
    Ok(())
}

/// Runs an echo server in node's namespace and a client in the client's; returns the
/// number of bytes echoed.
fn tcp_echo_roundtrip(lab: &Lab, addr: IpAddr) -> anyhow::Result<usize> {
    let listener = lab.in_host_of(addr, move || TcpListener::bind(SocketAddr::new(addr, 7)))??;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        s.write_all(&buf[..n])
    });
    let n = lab.in_host("client", move || -> std::io::Result<usize> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(addr, 7), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"hello through XDP")?;
        let mut buf = [0u8; 64];
        s.read(&mut buf)
    })??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))??;
    Ok(n)
}

/// UDP ping-pong: `count` datagrams, each echoed back before the next is sent (so no
/// socket buffer overflows). Returns how many came back.
fn udp_burst(lab: &Lab, addr: IpAddr, count: usize) -> anyhow::Result<usize> {
    let server = lab.in_host_of(addr, move || UdpSocket::bind(SocketAddr::new(addr, 9)))??;
    server.set_read_timeout(Some(Duration::from_secs(2)))?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        for _ in 0..count {
            match server.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    if server.send_to(&buf[..n], peer).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let unspecified = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let got = lab.in_host("client", move || -> std::io::Result<usize> {
        let tx = UdpSocket::bind(unspecified)?;
        tx.set_read_timeout(Some(Duration::from_secs(2)))?;
        tx.connect(SocketAddr::new(addr, 9))?;
        let mut got = 0;
        let mut buf = [0u8; 16];
        for i in 0..count {
            tx.send(&(i as u32).to_be_bytes())?;
            if tx.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        Ok(got)
    })??;
    echo.join()
        .map_err(|_| anyhow::anyhow!("UDP echo thread panicked"))?;
    Ok(got)
}
