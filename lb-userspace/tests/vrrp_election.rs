//! Elections on a simulated LAN: several [`VirtualRouter`]s, simulated time, adverts
//! encoded to bytes and decoded again on the way (the checks a receiver makes included).
//! Covers startup election, crash and graceful failover, preemption with and without
//! Preempt_Mode, split brain after a partition heals, the equal-priority tie break, and
//! tracked priority (RFC 5798 section 6.4).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use lb_userspace::vrrp::{
    packet::{
        AdverInterval, Advertisement, Delivery, IpHeaderInfo, PseudoHeader, VRRP_PROTOCOL,
        VRRP_TTL, VirtualAddrs, Vrid, check_ip_header,
    },
    state::{
        Action, AnnounceConfig, Config, Event, Priority, State, VirtualRouter,
        master_down_interval, skew_time,
    },
};

const INTERVAL: Duration = Duration::from_millis(100);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Node {
    router: VirtualRouter,
    addr: IpAddr,
    /// Whether the process runs (a crashed node neither sends nor receives).
    alive: bool,
    timer: Option<Instant>,
    has_vips: bool,
    /// Instants at which this node became Master.
    became_master: Vec<Instant>,
}

/// A broadcast segment with a partition switch: nodes in different groups do not hear
/// each other.
struct Lan {
    nodes: Vec<Node>,
    group: Vec<u8>,
    now: Instant,
    /// Check after each timer that a partition has one VIP holder at most. Off while a
    /// split brain heals: until the winner's next advert both still hold the VIP.
    single_master: bool,
}

fn config(last: u8, priority: u8, preempt: bool) -> Config {
    Config {
        vrid: Vrid::new(51).unwrap(),
        priority: Priority::new(priority).unwrap(),
        adver_interval: AdverInterval::from_centis(10).unwrap(),
        preempt,
        preempt_delay: Duration::ZERO,
        primary_addr: IpAddr::V4(Ipv4Addr::new(10, 99, 0, last)),
        addrs: VirtualAddrs::V4(vec![Ipv4Addr::new(10, 99, 0, 200)]),
        announce: AnnounceConfig::default(),
    }
}

impl Lan {
    /// Nodes 10.99.0.<last> with the given priorities.
    fn new(nodes: &[(u8, u8, bool)]) -> Lan {
        let nodes = nodes
            .iter()
            .map(|&(last, prio, preempt)| {
                let cfg = config(last, prio, preempt);
                Node {
                    addr: cfg.primary_addr,
                    router: VirtualRouter::new(cfg).unwrap(),
                    alive: false,
                    timer: None,
                    has_vips: false,
                    became_master: Vec::new(),
                }
            })
            .collect::<Vec<_>>();
        Lan {
            group: vec![0; nodes.len()],
            nodes,
            now: Instant::now(),
            single_master: true,
        }
    }

    /// Delivers `event` to node `i` now, then everything that follows from it.
    fn inject(&mut self, i: usize, event: Event) {
        let mut work = VecDeque::from([(i, event)]);
        while let Some((i, event)) = work.pop_front() {
            if !self.nodes[i].alive {
                continue;
            }
            let actions = self.nodes[i].router.handle(self.now, event);
            for action in actions {
                let node = &mut self.nodes[i];
                match action {
                    Action::Transition {
                        to: State::Master, ..
                    } => node.became_master.push(self.now),
                    Action::AddVips => node.has_vips = true,
                    Action::RemoveVips => node.has_vips = false,
                    Action::ScheduleTimer(at) => node.timer = at,
                    Action::SendAdvert(adv) => {
                        for (j, adv) in self.transmit(i, &adv) {
                            work.push_back((j, adv));
                        }
                    }
                    Action::Transition { .. } | Action::Announce { .. } | Action::Ignored(_) => {}
                }
            }
        }
    }

    /// The wire: encode with the sender's pseudo-header, then at each receiver in the same
    /// partition run the IP-level checks and decode.
    fn transmit(&self, from: usize, adv: &Advertisement) -> Vec<(usize, Event)> {
        let src = self.nodes[from].addr;
        let hdr = IpHeaderInfo {
            src,
            dst: "224.0.0.18".parse().unwrap(),
            ttl: VRRP_TTL,
            protocol: VRRP_PROTOCOL,
        };
        let bytes = adv
            .encode(&PseudoHeader::new(hdr.src, hdr.dst).unwrap())
            .unwrap();
        (0..self.nodes.len())
            .filter(|&j| j != from && self.group[j] == self.group[from] && self.nodes[j].alive)
            .map(|j| {
                let ph = check_ip_header(&hdr, &Delivery::Multicast).unwrap();
                let advert = Advertisement::decode(&bytes, &ph).unwrap();
                (j, Event::Advert { src, advert })
            })
            .collect()
    }

    fn start(&mut self, i: usize) {
        self.nodes[i].alive = true;
        self.inject(i, Event::Startup);
    }

    /// Graceful stop: Shutdown (a Master sends priority 0), then the process is gone.
    fn stop(&mut self, i: usize) {
        self.inject(i, Event::Shutdown);
        self.nodes[i].alive = false;
    }

    /// Crash: gone without a word. The router restarts from Initialize later.
    fn crash(&mut self, i: usize) {
        self.nodes[i].alive = false;
        self.nodes[i].timer = None;
        self.nodes[i].has_vips = false;
        let cfg = self.nodes[i].router.config().clone();
        self.nodes[i].router = VirtualRouter::new(cfg).unwrap();
    }

    /// Runs every timer up to `until`, in time order.
    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            let next = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.alive)
                .filter_map(|(i, n)| n.timer.map(|t| (t, i)))
                .min();
            match next {
                Some((t, i)) if t <= until => {
                    self.now = self.now.max(t);
                    self.inject(i, Event::Timer);
                    if self.single_master {
                        self.assert_at_most_one_master_in_each_partition();
                    }
                }
                _ => break,
            }
        }
        self.now = until;
    }

    /// A partition has one holder of the VIP at most (adverts are delivered at once here,
    /// so a takeover resolves within the instant).
    fn assert_at_most_one_master_in_each_partition(&self) {
        for g in 0..=*self.group.iter().max().unwrap() {
            let masters = self
                .nodes
                .iter()
                .zip(&self.group)
                .filter(|(n, grp)| **grp == g && n.alive && n.has_vips)
                .count();
            assert!(masters <= 1, "{masters} VIP holders in partition {g}");
        }
    }

    fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive && self.nodes[i].router.state() == State::Master)
            .collect()
    }

    fn vip_holders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive && self.nodes[i].has_vips)
            .collect()
    }
}

#[test]
fn highest_priority_wins_the_startup_election() {
    let mut lan = Lan::new(&[(11, 100, true), (12, 200, true), (13, 150, true)]);
    for i in 0..3 {
        lan.start(i);
    }
    lan.run_for(ms(2000));
    assert_eq!(lan.masters(), vec![1]);
    assert_eq!(lan.vip_holders(), vec![1]);
    // Priority 200 has the smallest Master_Down_Interval, so it won at once.
    assert_eq!(lan.nodes[1].became_master.len(), 1);
    assert_eq!(lan.nodes[0].became_master, vec![]);
    assert_eq!(lan.nodes[2].became_master, vec![]);
}

#[test]
fn crash_of_the_master_fails_over_to_the_best_backup_within_master_down_interval() {
    let mut lan = Lan::new(&[(11, 100, true), (12, 200, true), (13, 150, true)]);
    (0..3).for_each(|i| lan.start(i));
    lan.run_for(ms(1000));
    let crash_at = lan.now;
    lan.crash(1);
    lan.run_for(ms(1000));
    assert_eq!(lan.masters(), vec![2]);
    assert_eq!(lan.vip_holders(), vec![2]);
    let took_over = lan.nodes[2].became_master[0];
    let bound = master_down_interval(
        Priority::new(150).unwrap(),
        AdverInterval::from_centis(10).unwrap(),
    );
    assert!(took_over - crash_at <= bound, "{:?}", took_over - crash_at);
    assert!(took_over - crash_at > bound - INTERVAL);
    assert!(lan.nodes[0].became_master.is_empty());
}

#[test]
fn graceful_shutdown_fails_over_within_skew_time() {
    let mut lan = Lan::new(&[(11, 100, true), (12, 200, true), (13, 150, true)]);
    (0..3).for_each(|i| lan.start(i));
    lan.run_for(ms(1000));
    let stop_at = lan.now;
    lan.stop(1);
    lan.run_for(ms(500));
    assert_eq!(lan.masters(), vec![2]);
    let skew = skew_time(
        Priority::new(150).unwrap(),
        AdverInterval::from_centis(10).unwrap(),
    );
    assert_eq!(lan.nodes[2].became_master[0] - stop_at, skew);
    assert!(lan.nodes[0].became_master.is_empty());
}

#[test]
fn returning_higher_priority_node_preempts_only_with_preempt_mode() {
    for preempt in [true, false] {
        let mut lan = Lan::new(&[(11, 100, true), (12, 200, preempt)]);
        lan.start(0);
        lan.run_for(ms(1000));
        assert_eq!(lan.masters(), vec![0]);
        lan.start(1);
        lan.run_for(ms(2000));
        let want = if preempt { vec![1] } else { vec![0] };
        assert_eq!(lan.masters(), want, "preempt {preempt}");
        assert_eq!(lan.vip_holders(), want, "preempt {preempt}");
    }
}

#[test]
fn split_brain_after_a_partition_heals_keeps_the_higher_priority() {
    let mut lan = Lan::new(&[(11, 100, true), (12, 150, true)]);
    (0..2).for_each(|i| lan.start(i));
    lan.run_for(ms(1000));
    lan.group = vec![0, 1];
    lan.run_for(ms(1000));
    assert_eq!(lan.masters(), vec![0, 1], "both Master while partitioned");
    lan.group = vec![0, 0];
    lan.single_master = false;
    lan.run_for(INTERVAL);
    assert_eq!(lan.masters(), vec![1]);
    assert_eq!(lan.vip_holders(), vec![1]);
}

#[test]
fn equal_priority_split_brain_keeps_the_higher_address() {
    let mut lan = Lan::new(&[(12, 100, true), (11, 100, true)]);
    lan.group = vec![0, 1];
    (0..2).for_each(|i| lan.start(i));
    lan.run_for(ms(1000));
    assert_eq!(lan.masters(), vec![0, 1]);
    lan.group = vec![0, 0];
    lan.single_master = false;
    lan.run_for(INTERVAL);
    // 10.99.0.12 > 10.99.0.11 (RFC 5798 section 6.4.3 line 735).
    assert_eq!(lan.masters(), vec![0]);
}

#[test]
fn tracked_priority_moves_the_vip_and_back() {
    let mut lan = Lan::new(&[(11, 150, true), (12, 100, true)]);
    (0..2).for_each(|i| lan.start(i));
    lan.run_for(ms(1000));
    assert_eq!(lan.masters(), vec![0]);
    // The Master's gateway fails: its health tracking drops it to 90.
    let drop_at = lan.now;
    lan.inject(0, Event::SetPriority(Priority::new(90).unwrap()));
    lan.run_for(ms(1000));
    assert_eq!(lan.masters(), vec![1]);
    let moved = lan.nodes[1].became_master[0] - drop_at;
    let bound = master_down_interval(
        Priority::new(100).unwrap(),
        AdverInterval::from_centis(10).unwrap(),
    );
    assert!(moved <= bound, "{moved:?}");
    // Healthy again: 150 preempts back.
    lan.inject(0, Event::SetPriority(Priority::new(150).unwrap()));
    lan.run_for(ms(1000));
    assert_eq!(lan.masters(), vec![0]);
    assert_eq!(lan.vip_holders(), vec![0]);
}

#[test]
fn lone_backup_without_a_master_takes_over_after_master_down_interval() {
    let mut lan = Lan::new(&[(11, 100, true)]);
    let t0 = lan.now;
    lan.start(0);
    lan.run_for(ms(1000));
    assert_eq!(
        lan.nodes[0].became_master,
        vec![t0 + Duration::from_nanos(360_937_500)]
    );
}
