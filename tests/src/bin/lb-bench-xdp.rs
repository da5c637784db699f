//! `cargo xtask bench xdp [--json FILE]` runs this (in release, as root): nanoseconds per
//! packet through the XDP data path under BPF_PROG_TEST_RUN.
//!
//! Every case is the mean over `--calls` (default 1,000,000) test runs of one packet each,
//! timed by the kernel (the `duration` BPF_PROG_TEST_RUN reports for a single run), not one
//! run with `repeat` (the program rewrites its input, so repeats would time another path).
//! The floor, a trivial program returning XDP_TX (`xdp_floor`), is measured in the same
//! run and subtracted. The process pins itself to one CPU.
//!
//! Cases: the floor; non-VIP pass; TCP SYN (a new flow: every call a distinct 5-tuple)
//! IPv4 and IPv6; TCP ACK hitting the connection table (one flow) IPv4 and IPv6; TCP ACK
//! over 1,000,000 established flows (the table filled by the IPv4 SYN case, the ACKs
//! cycling through all of them), and for contrast the same ACKs cycling over 1,000 of
//! those flows (no target); then the memory probe (no target): an XDP program that only
//! reads one random 64-byte line of an array map as big as the IPv4 connection table
//! (`xdp_probe`), which is what reaching a random bucket of that table costs from the
//! kernel on this machine. The new-flow IPv4 and 1M-flow cases each touch one random
//! bucket of that table, so the report also gives them net of the probe: the program's own
//! work. Then, for context, the latency of one random memory access over working sets of
//! the tables' sizes from user space (pointer chasing), and what installing a ring costs
//! the loader (a gateway joining or leaving a service: the agent rewrites every service's
//! ring).
use std::{
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use lb_common::{
    ExitReason,
    datapath::{FlowBucket4, FlowBucket6, RING_SIZE, flow_buckets},
};
use lb_tests::{
    frames::{TCP_ACK, TCP_SYN, tcp4, tcp6},
    xdp::{Harness, ring_of, standard, std_state::*},
};
use lb_userspace::dataplane::{HelperPrograms, MemoryProbe};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(about = "Nanoseconds per packet through the XDP data path (BPF_PROG_TEST_RUN)")]
struct Args {
    /// Test runs per case (one packet each).
    #[arg(long, default_value_t = 1_000_000)]
    calls: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// CPU to pin to.
    #[arg(long, default_value_t = 1)]
    cpu: usize,
    /// Time only the cases whose name contains this (the floor always runs; the 1M-flow
    /// case still fills the table with the IPv4 SYNs first, untimed). For profiling one
    /// case; the report is then partial.
    #[arg(long)]
    only: Option<String>,
    /// Entries of each connection table (the agent's `[xdp] flow_table_size`). The default
    /// holds the 1M-flow case's flows at half load, so they stay in the table.
    #[arg(long, default_value_t = 2 * 1_048_576)]
    flow_table_size: u32,
}

#[derive(Debug, Serialize)]
struct Case {
    name: &'static str,
    calls: u32,
    /// Mean kernel-timed nanoseconds per run.
    mean_ns: f64,
    /// `mean_ns` minus the floor's.
    net_ns: f64,
    /// Mean wall-clock nanoseconds per syscall, for reference.
    wall_ns: f64,
    /// Target net of the floor, where the issue sets one.
    target_ns: Option<f64>,
    /// For the cases that touch one random bucket of the IPv4 table: `net_ns` minus the
    /// memory probe's, the program's own work.
    net_of_memory_probe_ns: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    cpu: usize,
    flow_table_size: u32,
    cases: Vec<Case>,
    /// The machine's cost of one dependent random memory access over a working set of the
    /// given size, from user space (context for the new-flow and 1M-flow cases, each of
    /// which touches one random bucket of a table this big).
    memory_latency: Vec<MemoryLatency>,
    /// Milliseconds to install a ring in which a third of the slots changed (a third
    /// gateway joining a service).
    ring_write_ms: f64,
}

#[derive(Debug, Serialize)]
struct MemoryLatency {
    bytes: u64,
    ns_per_access: f64,
}

/// Nanoseconds per dependent load over `bytes` of memory: one 8-byte word per 64-byte
/// line, the lines linked in one random cycle (pointer chasing, so no access can start
/// before the previous one ends), walked `accesses` times after one warm-up lap.
fn memory_latency(bytes: u64, accesses: u32) -> f64 {
    use rand::{SeedableRng as _, seq::SliceRandom as _};
    let lines = (bytes / 64).max(2) as usize;
    let mut order: Vec<usize> = (0..lines).collect();
    order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(
        0x006c_6174_656e_6379,
    ));
    let mut next = vec![0usize; lines * 8];
    for (i, line) in order.iter().enumerate() {
        next[line * 8] = order[(i + 1) % lines] * 8;
    }
    let mut p = order[0] * 8;
    for _ in 0..lines {
        p = next[p];
    }
    let start = Instant::now();
    for _ in 0..accesses {
        p = next[p];
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(accesses);
    std::hint::black_box(p);
    ns
}

/// The memory probe's case (see the module's documentation).
const PROBE: &str = "memory probe: random line, IPv4 table's size";
/// The cases that touch one random bucket of the IPv4 table.
const ONE_RANDOM_BUCKET: [&str; 2] = [
    "TCP SYN, new flow, IPv4",
    "TCP ACK over 1M established flows (IPv4)",
];

/// The `i`-th distinct client of the new-flow and big-table cases.
fn client4(i: u32) -> (Ipv4Addr, u16) {
    let ip = Ipv4Addr::from(0xc612_0000 | (i >> 12)); // 198.18.0.0/15
    (ip, 10_000 + (i & 0xfff) as u16)
}

fn client6(i: u32) -> (Ipv6Addr, u16) {
    let ip = Ipv6Addr::new(
        0x2001,
        0xdb8,
        0xbe,
        0,
        0,
        0,
        (i >> 16) as u16,
        (i >> 12) as u16 & 0xf,
    );
    (ip, 10_000 + (i & 0xfff) as u16)
}

struct Timing {
    kernel_ns: u128,
    wall_ns: u128,
}

/// Runs `frame_of(i)` for `i in 0..calls`, checking every verdict.
fn measure(
    calls: u32,
    want: u32,
    mut run: impl FnMut(&[u8]) -> anyhow::Result<(u32, std::time::Duration)>,
    frame_of: impl Fn(u32) -> Vec<u8>,
    prebuilt: bool,
) -> anyhow::Result<Timing> {
    let frames: Vec<Vec<u8>> = if prebuilt {
        (0..calls).map(&frame_of).collect()
    } else {
        vec![frame_of(0)]
    };
    let mut kernel_ns = 0u128;
    let start = Instant::now();
    for i in 0..calls {
        let f = &frames[if prebuilt { i as usize } else { 0 }];
        let (action, d) = run(f)?;
        if action != want {
            bail!("call {i}: verdict {action}, expected {want}");
        }
        kernel_ns += d.as_nanos();
    }
    Ok(Timing {
        kernel_ns,
        wall_ns: start.elapsed().as_nanos(),
    })
}

/// UDP from the client to service 2 (VIP_A:53), whose gateway is this node.
fn tcp_free_udp4() -> Vec<u8> {
    let ip = lb_tests::frames::V4::new(CLIENT4, VIP_A, 17)
        .packet(&lb_tests::frames::udp(5353, 53, b"query"));
    lb_tests::frames::ethernet(None, 0x0800, &ip)
}

fn pin(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU index")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to CPU {cpu}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    pin(args.cpu)?;
    let calls = args.calls;
    let table = args.flow_table_size;
    let mut h = Harness::load(table)?;
    standard(&mut h)?;
    let helpers = HelperPrograms::load()?;
    let tx = ExitReason::Tx.action();
    let pass = ExitReason::PassNotVip.action();
    let mut results: Vec<(&'static str, Timing, Option<f64>)> = Vec::new();

    let syn4 = |i: u32| {
        let (ip, port) = client4(i);
        tcp4(ip, port, VIP_SPLIT, 80, TCP_SYN)
    };
    let ack4 = |i: u32| {
        let (ip, port) = client4(i);
        tcp4(ip, port, VIP_SPLIT, 80, TCP_ACK)
    };
    let syn6 = |i: u32| {
        let (ip, port) = client6(i);
        tcp6(ip, port, VIP6, 8080, TCP_SYN)
    };
    let dp = &h.dp;
    let run_dp = |f: &[u8]| -> anyhow::Result<(u32, std::time::Duration)> {
        let o = dp.test_run(f)?;
        Ok((o.action, o.duration))
    };

    writeln!(std::io::stderr(), "floor ...")?;
    let floor = measure(
        calls,
        ExitReason::Tx.action(),
        |f| {
            let o = helpers.floor_run(f)?;
            Ok((o.action, o.duration))
        },
        syn4,
        false,
    )?;
    results.push(("floor (xdp_floor: return XDP_TX)", floor, None));
    let only = args.only.as_deref();
    let want = |name: &str| only.is_none_or(|o| name.contains(o));
    let name = "non-VIP pass";
    if want(name) {
        writeln!(std::io::stderr(), "pass ...")?;
        let t = measure(
            calls,
            pass,
            run_dp,
            |_| tcp4(CLIENT4, 40000, NODE4, 22, TCP_ACK),
            false,
        )?;
        results.push((name, t, Some(20.0)));
    }
    // One flow per family: its SYN records it, then its ACKs hit the table.
    for (name, flow) in [
        (
            "TCP ACK, connection-table hit, IPv4",
            (|flags| tcp4(CLIENT4, 40000, VIP_SPLIT, 80, flags)) as fn(u8) -> Vec<u8>,
        ),
        ("TCP ACK, connection-table hit, IPv6", |flags| {
            tcp6(CLIENT6, 40000, VIP6, 8080, flags)
        }),
    ] {
        if want(name) {
            writeln!(std::io::stderr(), "{name} ...")?;
            dp.test_run(&flow(TCP_SYN))?;
            let t = measure(calls, tx, run_dp, |_| flow(TCP_ACK), false)?;
            results.push((name, t, Some(60.0)));
        }
    }
    let name = "TCP SYN, new flow, IPv4";
    let big = "TCP ACK over 1M established flows (IPv4)";
    // The 1M-flow case needs the table this case fills.
    if want(name) || want(big) {
        writeln!(std::io::stderr(), "new flows v4 ...")?;
        let t = measure(calls, tx, run_dp, syn4, true)?;
        if want(name) {
            results.push((name, t, Some(140.0)));
        }
    }
    let name = "TCP SYN, new flow, IPv6";
    if want(name) {
        writeln!(std::io::stderr(), "new flows v6 ...")?;
        let t = measure(calls, tx, run_dp, syn6, true)?;
        results.push((name, t, Some(140.0)));
    }
    if want(big) {
        writeln!(std::io::stderr(), "big table ...")?;
        let t = measure(calls, tx, run_dp, ack4, true)?;
        results.push((big, t, Some(60.0)));
        // The same table, the ACKs cycling through 1,000 of its flows: the data path's work
        // for many flows without the cost of reaching a random one of a million buckets
        // (the difference between the two is the memory system's, not the program's).
        writeln!(std::io::stderr(), "1000 of the flows ...")?;
        let t = measure(calls, tx, run_dp, |i| ack4(i % 1000), true)?;
        results.push(("TCP ACK cycling over 1,000 of those flows", t, None));
    }
    if want(PROBE) {
        // One line per IPv4 bucket: a map of the IPv4 table's size, read at random.
        writeln!(std::io::stderr(), "memory probe ...")?;
        let probe = MemoryProbe::load(flow_buckets(table))?;
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x0070_726f_6265);
        let lines: Vec<u32> = (0..calls)
            .map(|_| rng.random_range(0..probe.lines()))
            .collect();
        // Every index is in range; an empty frame would come back XDP_DROP and stop the
        // benchmark with that verdict.
        let frame = |i: u32| probe.frame(lines[i as usize]).unwrap_or_default();
        let t = measure(
            calls,
            tx,
            |f| {
                let o = probe.run(f)?;
                Ok((o.action, o.duration))
            },
            frame,
            true,
        )?;
        results.push((PROBE, t, None));
    }

    // For contrast (not a target): the same path run warm, `repeat` times back to back
    // inside one test run, on a frame the program passes unmodified (UDP to a service
    // whose gateway is this node: VIP lookup, connection table, counters).
    if only.is_none() {
        let local = tcp_free_udp4();
        let warm = dp.test_run_repeated(&local, 100_000)?;
        let cold = measure(
            calls / 10,
            ExitReason::Local.action(),
            run_dp,
            |_| local.clone(),
            false,
        )?;
        let floor_warm = helpers.floor_run_repeated(&local, 100_000)?;
        writeln!(
            std::io::stderr(),
            "warm vs cold, UDP to a local service: warm (repeat 100000) {} ns/run, floor warm {} ns/run; cold (one per call) {:.1} ns/run",
            warm.duration.as_nanos(),
            floor_warm.duration.as_nanos(),
            cold.kernel_ns as f64 / f64::from(calls / 10)
        )?;
    }
    let floor_ns = results[0].1.kernel_ns as f64 / f64::from(calls);
    let mean_ns = |t: &Timing| t.kernel_ns as f64 / f64::from(calls);
    let probe_ns = results
        .iter()
        .find(|(name, ..)| *name == PROBE)
        .map(|(_, t, _)| mean_ns(t) - floor_ns);
    let cases: Vec<Case> = results
        .into_iter()
        .map(|(name, t, target)| {
            let mean = mean_ns(&t);
            Case {
                name,
                calls,
                mean_ns: mean,
                net_ns: mean - floor_ns,
                wall_ns: t.wall_ns as f64 / f64::from(calls),
                target_ns: target,
                net_of_memory_probe_ns: probe_ns
                    .filter(|_| ONE_RANDOM_BUCKET.contains(&name))
                    .map(|p| mean - floor_ns - p),
            }
        })
        .collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "XDP data path, BPF_PROG_TEST_RUN, kernel {kernel}, CPU {}, {} calls per case, flow table {table}",
        args.cpu, calls
    )?;
    writeln!(
        out,
        "{:<44} {:>9} {:>12} {:>10} {:>8}",
        "case", "mean ns", "net of floor", "wall ns", "target"
    )?;
    for c in &cases {
        let target = c.target_ns.map_or("-".to_owned(), |t| format!("<= {t:.0}"));
        writeln!(
            out,
            "{:<44} {:>9.1} {:>12.1} {:>10.1} {:>8}",
            c.name, c.mean_ns, c.net_ns, c.wall_ns, target
        )?;
    }
    for c in &cases {
        if let Some(own) = c.net_of_memory_probe_ns {
            writeln!(
                out,
                "{}: {own:.1} ns net of the floor and the memory probe (the program's own work)",
                c.name
            )?;
        }
    }
    // The 1M-flow ACKs and new flows each touch one random bucket; what one random access
    // costs at the tables' sizes says how much of their time is the memory's.
    let bytes4 = u64::from(flow_buckets(table)) * size_of::<FlowBucket4>() as u64;
    let bytes6 = u64::from(flow_buckets(table)) * size_of::<FlowBucket6>() as u64;
    let mut memory = Vec::new();
    for bytes in [4 << 20, 16 << 20, bytes4, bytes6] {
        let ns = memory_latency(bytes, 2_000_000);
        writeln!(
            out,
            "memory: one random access over {:>4} MiB{}: {ns:.1} ns",
            bytes >> 20,
            if bytes == bytes4 {
                " (the IPv4 table)"
            } else if bytes == bytes6 {
                " (the IPv6 table)"
            } else {
                ""
            }
        )?;
        memory.push(MemoryLatency {
            bytes,
            ns_per_access: ns,
        });
    }
    // Installing a ring: a gateway joins a two-gateway service (a third of the slots
    // change). Both copies hold the old ring first (the writer fills the inactive copy),
    // and every call waits out the writer's grace period first, so no call waits for it.
    let (before, after) = (ring_of(&[1, 2])?, ring_of(&[1, 2, 3])?);
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    // Service 5 (VIP_SPLIT:80, see `standard`).
    let grace = lb_userspace::dataplane::RING_GRACE;
    let mut ring_ms = Vec::new();
    for _ in 0..10 {
        for _ in 0..2 {
            std::thread::sleep(grace);
            h.dp.write_ring(5, &before)?;
        }
        std::thread::sleep(grace);
        let start = Instant::now();
        let written = h.dp.write_ring(5, &after)?;
        ring_ms.push(start.elapsed().as_secs_f64() * 1e3);
        if written != changed {
            bail!("ring install wrote {written} slots, expected {changed}");
        }
    }
    let ring_write_ms = ring_ms.iter().sum::<f64>() / ring_ms.len() as f64;
    writeln!(
        out,
        "ring install (a third gateway joins a service: {changed} of {RING_SIZE} slots change): {ring_write_ms:.2} ms"
    )?;
    let report = Report {
        ring_write_ms,
        kernel,
        cpu: args.cpu,
        flow_table_size: table,
        cases,
        memory_latency: memory,
    };
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}
