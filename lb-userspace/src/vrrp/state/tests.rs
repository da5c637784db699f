//! Unit tests of the state machine with injected time: one table row per transition or
//! timer rule of RFC 5798 section 6.4, then the extensions and edge cases.
use std::net::{IpAddr, Ipv4Addr};

use super::*;

/// Priority 100, 10 cs interval: Skew_Time = 156 * 100 ms / 256 = 60.9375 ms.
const SKEW: Duration = Duration::from_nanos(60_937_500);
/// 3 * 100 ms + SKEW.
const MDI: Duration = Duration::from_nanos(360_937_500);
const INTERVAL: Duration = Duration::from_millis(100);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 99, 0, last))
}

fn vips() -> VirtualAddrs {
    VirtualAddrs::V4(vec![Ipv4Addr::new(10, 99, 0, 200)])
}

fn interval(centis: u16) -> AdverInterval {
    AdverInterval::from_centis(centis).unwrap()
}

fn prio(p: u8) -> Priority {
    Priority::new(p).unwrap()
}

/// lb-agent as 10.99.0.11, priority 100, 10 cs, preempting, keepalived announce defaults.
fn cfg() -> Config {
    Config {
        vrid: Vrid::new(51).unwrap(),
        priority: prio(100),
        adver_interval: interval(10),
        preempt: true,
        preempt_delay: Duration::ZERO,
        primary_addr: ip(11),
        addrs: vips(),
        announce: AnnounceConfig::default(),
    }
}

fn advert(priority: u8) -> Advertisement {
    Advertisement {
        vrid: Vrid::new(51).unwrap(),
        priority,
        max_adver_int: interval(10),
        addrs: vips(),
    }
}

fn from(last: u8, priority: u8) -> Event {
    Event::Advert {
        src: ip(last),
        advert: advert(priority),
    }
}

fn sched(at: Instant) -> Action {
    Action::ScheduleTimer(Some(at))
}

fn becomes_master(from: State, priority: u8, now: Instant) -> Vec<Action> {
    vec![
        Action::Transition {
            from,
            to: State::Master,
        },
        Action::AddVips,
        Action::SendAdvert(advert(priority)),
        Action::Announce { count: 5 },
        sched(now + INTERVAL),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Start {
    Init,
    Backup,
    Master,
}

/// A router in `start`, and the instant it got there.
fn start(cfg: Config, start: Start) -> (VirtualRouter, Instant) {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(cfg).unwrap();
    if matches!(start, Start::Init) {
        return (r, t0);
    }
    r.handle(t0, Event::Startup);
    match (start, r.state()) {
        (Start::Backup, State::Backup) | (Start::Master, State::Master) => (r, t0),
        (Start::Master, State::Backup) => {
            let t = t0 + r.master_down_interval();
            r.handle(t, Event::Timer);
            assert_eq!(r.state(), State::Master);
            (r, t)
        }
        other => panic!("cannot start in {other:?}"),
    }
}

struct Case {
    /// What it checks, with the RFC 5798 section 6.4 line numbers.
    name: &'static str,
    cfg: fn(&mut Config),
    start: Start,
    /// When the event comes, after entering `start`.
    after: Duration,
    event: fn() -> Event,
    state: State,
    /// Expected actions, given the instant the state was entered and `now`.
    want: fn(Instant, Instant) -> Vec<Action>,
}

fn same(_: &mut Config) {}

fn table() -> Vec<Case> {
    vec![
        // ---- Initialize (section 6.4.1) ----
        Case {
            name: "init: startup, not owner -> backup, down timer = MDI (150-165)",
            cfg: same,
            start: Start::Init,
            after: ms(0),
            event: || Event::Startup,
            state: State::Backup,
            want: |_, now| {
                vec![
                    Action::Transition {
                        from: State::Initialize,
                        to: State::Backup,
                    },
                    Action::RemoveVips,
                    sched(now + MDI),
                ]
            },
        },
        Case {
            name: "init: startup as owner -> master, advert + announce (105-145)",
            cfg: |c| c.priority = Priority::OWNER,
            start: Start::Init,
            after: ms(0),
            event: || Event::Startup,
            state: State::Master,
            want: |_, now| becomes_master(State::Initialize, 255, now),
        },
        Case {
            name: "init: adverts are not processed",
            cfg: same,
            start: Start::Init,
            after: ms(0),
            event: || from(12, 150),
            state: State::Initialize,
            want: |_, _| {
                vec![
                    Action::Ignored(Ignored::NotRunning),
                    Action::ScheduleTimer(None),
                ]
            },
        },
        Case {
            name: "init: timer and shutdown do nothing",
            cfg: same,
            start: Start::Init,
            after: ms(5),
            event: || Event::Shutdown,
            state: State::Initialize,
            want: |_, _| vec![Action::ScheduleTimer(None)],
        },
        // ---- Backup (section 6.4.2) ----
        Case {
            name: "backup: shutdown -> initialize, timer cancelled (345-355)",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || Event::Shutdown,
            state: State::Initialize,
            want: |_, _| {
                vec![
                    Action::Transition {
                        from: State::Backup,
                        to: State::Initialize,
                    },
                    Action::ScheduleTimer(None),
                ]
            },
        },
        Case {
            name: "backup: timer 1 ns before Master_Down_Timer fires nothing",
            cfg: same,
            start: Start::Backup,
            after: MDI - Duration::from_nanos(1),
            event: || Event::Timer,
            state: State::Backup,
            want: |e, _| vec![sched(e + MDI)],
        },
        Case {
            name: "backup: Master_Down_Timer fires exactly at its deadline -> master (365-410)",
            cfg: same,
            start: Start::Backup,
            after: MDI,
            event: || Event::Timer,
            state: State::Master,
            want: |_, now| becomes_master(State::Backup, 100, now),
        },
        Case {
            name: "backup: late timer -> master, Adver_Timer counted from now",
            cfg: same,
            start: Start::Backup,
            after: MDI + ms(1000),
            event: || Event::Timer,
            state: State::Master,
            want: |_, now| becomes_master(State::Backup, 100, now),
        },
        Case {
            name: "backup: priority 0 -> Master_Down_Timer = Skew_Time (425-430)",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || from(12, 0),
            state: State::Backup,
            want: |_, now| vec![sched(now + SKEW)],
        },
        Case {
            name: "backup: higher priority resets Master_Down_Timer (445-460)",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || from(12, 150),
            state: State::Backup,
            want: |_, now| vec![sched(now + MDI)],
        },
        Case {
            name: "backup: equal priority is accepted even with preempt (445)",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || from(12, 100),
            state: State::Backup,
            want: |_, now| vec![sched(now + MDI)],
        },
        Case {
            name: "backup: lower priority with preempt is discarded, timer runs on (465-470)",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || from(12, 50),
            state: State::Backup,
            want: |e, _| {
                vec![
                    Action::Ignored(Ignored::Preempting { priority: 50 }),
                    sched(e + MDI),
                ]
            },
        },
        Case {
            name: "backup: lower priority without preempt is accepted (445)",
            cfg: |c| c.preempt = false,
            start: Start::Backup,
            after: ms(50),
            event: || from(12, 50),
            state: State::Backup,
            want: |_, now| vec![sched(now + MDI)],
        },
        Case {
            name: "backup: learns Master_Adver_Interval from the advert (450-460)",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || Event::Advert {
                src: ip(12),
                advert: Advertisement {
                    max_adver_int: interval(100),
                    ..advert(150)
                },
            },
            state: State::Backup,
            // 3 * 1 s + 156 * 1 s / 256.
            want: |_, now| vec![sched(now + Duration::from_nanos(3_609_375_000))],
        },
        Case {
            name: "backup: advert for another VRID is ignored",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || Event::Advert {
                src: ip(12),
                advert: Advertisement {
                    vrid: Vrid::new(52).unwrap(),
                    ..advert(150)
                },
            },
            state: State::Backup,
            want: |e, _| {
                vec![
                    Action::Ignored(Ignored::OtherVrid(Vrid::new(52).unwrap())),
                    sched(e + MDI),
                ]
            },
        },
        Case {
            name: "backup: other address list from a non-owner is dropped (7.1)",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || Event::Advert {
                src: ip(12),
                advert: Advertisement {
                    addrs: VirtualAddrs::V4(vec![Ipv4Addr::new(10, 99, 0, 201)]),
                    ..advert(150)
                },
            },
            state: State::Backup,
            want: |e, _| vec![Action::Ignored(Ignored::AddressMismatch), sched(e + MDI)],
        },
        Case {
            name: "backup: other address list from the owner is accepted (7.1)",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || Event::Advert {
                src: ip(12),
                advert: Advertisement {
                    addrs: VirtualAddrs::V4(vec![Ipv4Addr::new(10, 99, 0, 201)]),
                    ..advert(255)
                },
            },
            state: State::Backup,
            want: |_, now| vec![sched(now + MDI)],
        },
        Case {
            name: "backup: IPv6 advert to an IPv4 virtual router is ignored",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || Event::Advert {
                src: "fe80::2".parse().unwrap(),
                advert: advert(150),
            },
            state: State::Backup,
            want: |e, _| vec![Action::Ignored(Ignored::OtherFamily), sched(e + MDI)],
        },
        Case {
            name: "backup: SetPriority changes no timer",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || Event::SetPriority(Priority::new(200).unwrap()),
            state: State::Backup,
            want: |e, _| vec![sched(e + MDI)],
        },
        Case {
            name: "backup: a second Startup is ignored",
            cfg: same,
            start: Start::Backup,
            after: ms(50),
            event: || Event::Startup,
            state: State::Backup,
            want: |e, _| vec![sched(e + MDI)],
        },
        // ---- Master (section 6.4.3) ----
        Case {
            name: "master: timer 1 ms before Adver_Timer fires nothing",
            cfg: same,
            start: Start::Master,
            after: ms(99),
            event: || Event::Timer,
            state: State::Master,
            want: |e, _| vec![sched(e + INTERVAL)],
        },
        Case {
            name: "master: Adver_Timer fires -> advert, reset (680-690)",
            cfg: same,
            start: Start::Master,
            after: INTERVAL,
            event: || Event::Timer,
            state: State::Master,
            want: |_, now| vec![Action::SendAdvert(advert(100)), sched(now + INTERVAL)],
        },
        Case {
            name: "master: timer 2.5 intervals late sends one advert, next from now",
            cfg: same,
            start: Start::Master,
            after: ms(350),
            event: || Event::Timer,
            state: State::Master,
            want: |_, now| vec![Action::SendAdvert(advert(100)), sched(now + INTERVAL)],
        },
        Case {
            name: "master: adver and announce timers due together both fire",
            cfg: same,
            start: Start::Master,
            after: ms(5000),
            event: || Event::Timer,
            state: State::Master,
            want: |_, now| {
                vec![
                    Action::SendAdvert(advert(100)),
                    Action::Announce { count: 5 },
                    sched(now + INTERVAL),
                ]
            },
        },
        Case {
            name: "master: priority 0 -> advert at once, Adver_Timer reset (705-715)",
            cfg: same,
            start: Start::Master,
            after: ms(30),
            event: || from(12, 0),
            state: State::Master,
            want: |_, now| vec![Action::SendAdvert(advert(100)), sched(now + INTERVAL)],
        },
        Case {
            name: "master: higher priority -> backup (725, 740-760)",
            cfg: same,
            start: Start::Master,
            after: ms(30),
            event: || from(12, 150),
            state: State::Backup,
            want: |_, now| {
                vec![
                    Action::Transition {
                        from: State::Master,
                        to: State::Backup,
                    },
                    Action::RemoveVips,
                    sched(now + MDI),
                ]
            },
        },
        Case {
            name: "master: equal priority, higher sender address -> backup (735-760)",
            cfg: same,
            start: Start::Master,
            after: ms(30),
            event: || from(12, 100),
            state: State::Backup,
            want: |_, now| {
                vec![
                    Action::Transition {
                        from: State::Master,
                        to: State::Backup,
                    },
                    Action::RemoveVips,
                    sched(now + MDI),
                ]
            },
        },
        Case {
            name: "master: equal priority, lower sender address is discarded (770)",
            cfg: same,
            start: Start::Master,
            after: ms(30),
            event: || from(10, 100),
            state: State::Master,
            want: |e, _| {
                vec![
                    Action::Ignored(Ignored::LowerPriority { priority: 100 }),
                    sched(e + INTERVAL),
                ]
            },
        },
        Case {
            name: "master: equal priority and our own address (looped back) is discarded",
            cfg: same,
            start: Start::Master,
            after: ms(30),
            event: || from(11, 100),
            state: State::Master,
            want: |e, _| {
                vec![
                    Action::Ignored(Ignored::LowerPriority { priority: 100 }),
                    sched(e + INTERVAL),
                ]
            },
        },
        Case {
            name: "master: lower priority is discarded (770)",
            cfg: same,
            start: Start::Master,
            after: ms(30),
            event: || from(12, 99),
            state: State::Master,
            want: |e, _| {
                vec![
                    Action::Ignored(Ignored::LowerPriority { priority: 99 }),
                    sched(e + INTERVAL),
                ]
            },
        },
        Case {
            name: "master: steps down and learns the new Master's interval (745-755)",
            cfg: same,
            start: Start::Master,
            after: ms(30),
            event: || Event::Advert {
                src: ip(12),
                advert: Advertisement {
                    max_adver_int: interval(100),
                    ..advert(150)
                },
            },
            state: State::Backup,
            want: |_, now| {
                vec![
                    Action::Transition {
                        from: State::Master,
                        to: State::Backup,
                    },
                    Action::RemoveVips,
                    sched(now + Duration::from_nanos(3_609_375_000)),
                ]
            },
        },
        Case {
            name: "master: shutdown -> priority 0 advert, initialize (655-670)",
            cfg: same,
            start: Start::Master,
            after: ms(30),
            event: || Event::Shutdown,
            state: State::Initialize,
            want: |_, _| {
                vec![
                    Action::SendAdvert(advert(0)),
                    Action::RemoveVips,
                    Action::Transition {
                        from: State::Master,
                        to: State::Initialize,
                    },
                    Action::ScheduleTimer(None),
                ]
            },
        },
        Case {
            name: "master: SetPriority sends the new priority at once",
            cfg: same,
            start: Start::Master,
            after: ms(30),
            event: || Event::SetPriority(Priority::new(50).unwrap()),
            state: State::Master,
            want: |_, now| vec![Action::SendAdvert(advert(50)), sched(now + INTERVAL)],
        },
        Case {
            name: "master: SetPriority to the same value sends nothing",
            cfg: same,
            start: Start::Master,
            after: ms(30),
            event: || Event::SetPriority(Priority::new(100).unwrap()),
            state: State::Master,
            want: |e, _| vec![sched(e + INTERVAL)],
        },
        Case {
            name: "master as owner discards even a higher-address owner (7.1)",
            cfg: |c| c.priority = Priority::OWNER,
            start: Start::Master,
            after: ms(30),
            event: || from(12, 255),
            state: State::Master,
            want: |e, _| vec![Action::Ignored(Ignored::AddressOwner), sched(e + INTERVAL)],
        },
    ]
}

#[test]
fn rfc5798_transition_table() {
    let cases = table();
    assert!(cases.len() >= 30);
    for case in cases {
        let mut c = cfg();
        (case.cfg)(&mut c);
        let (mut r, entered) = start(c, case.start);
        let now = entered + case.after;
        let got = r.handle(now, (case.event)());
        assert_eq!(got, (case.want)(entered, now), "{}", case.name);
        assert_eq!(r.state(), case.state, "{}", case.name);
    }
}

#[test]
fn skew_and_master_down_interval() {
    // (priority, centiseconds, Skew_Time ns, Master_Down_Interval ns)
    let cases: [(u8, u16, u64, u64); 5] = [
        (100, 10, 60_937_500, 360_937_500),
        (150, 10, 41_406_250, 341_406_250),
        (254, 10, 781_250, 300_781_250),
        (255, 100, 3_906_250, 3_003_906_250),
        (1, 4095, 40_790_039_062, 163_640_039_062),
    ];
    for (p, cs, skew, mdi) in cases {
        let i = interval(cs);
        assert_eq!(
            skew_time(prio(p), i),
            Duration::from_nanos(skew),
            "{p}/{cs}"
        );
        assert_eq!(
            master_down_interval(prio(p), i),
            Duration::from_nanos(mdi),
            "{p}/{cs}"
        );
    }
}

#[test]
fn higher_priority_backup_times_out_first() {
    // The skew gives the best Backup the earliest timer, so it wins the race.
    let i = interval(10);
    assert!(master_down_interval(prio(200), i) < master_down_interval(prio(100), i));
    assert!(skew_time(prio(200), i) < skew_time(prio(100), i));
}

#[test]
fn config_is_validated() {
    let vrid = Vrid::new(51).unwrap();
    let none = Config {
        addrs: VirtualAddrs::V4(vec![]),
        ..cfg()
    };
    assert_eq!(
        VirtualRouter::new(none).err(),
        Some(ConfigError::NoAddresses { vrid })
    );
    let many = Config {
        addrs: VirtualAddrs::V4(vec![Ipv4Addr::LOCALHOST; 256]),
        ..cfg()
    };
    assert_eq!(
        VirtualRouter::new(many).err(),
        Some(ConfigError::TooManyAddresses { vrid, count: 256 })
    );
    let mixed = Config {
        primary_addr: "fe80::1".parse().unwrap(),
        ..cfg()
    };
    assert!(matches!(
        VirtualRouter::new(mixed),
        Err(ConfigError::FamilyMismatch { .. })
    ));
    assert_eq!(Priority::new(0), None);
}

#[test]
fn advert_at_the_deadline_before_the_timer_keeps_the_master() {
    let (mut r, t0) = start(cfg(), Start::Backup);
    // The Master_Down_Timer is due but the Timer event has not been handled yet.
    let got = r.handle(t0 + MDI, from(12, 150));
    assert_eq!(got, vec![sched(t0 + MDI + MDI)]);
    assert_eq!(
        r.handle(t0 + MDI, Event::Timer),
        vec![sched(t0 + MDI + MDI)]
    );
    assert_eq!(r.state(), State::Backup);
    assert_eq!(r.master(), Some(ip(12)));
}

#[test]
fn steady_master_keeps_backup_down_forever() {
    let (mut r, t0) = start(cfg(), Start::Backup);
    for n in 1..=100u32 {
        let now = t0 + INTERVAL * n;
        assert_eq!(r.handle(now, from(12, 150)), vec![sched(now + MDI)]);
        assert_eq!(r.handle(now, Event::Timer), vec![sched(now + MDI)]);
    }
    assert_eq!(r.state(), State::Backup);
}

#[test]
fn priority_zero_then_silence_takes_over_after_skew() {
    let (mut r, t0) = start(cfg(), Start::Backup);
    r.handle(t0 + ms(10), from(12, 150));
    let t = t0 + ms(20);
    r.handle(t, from(12, 0));
    assert_eq!(
        r.handle(t + SKEW - Duration::from_nanos(1), Event::Timer)
            .len(),
        1
    );
    assert_eq!(
        r.handle(t + SKEW, Event::Timer),
        becomes_master(State::Backup, 100, t + SKEW)
    );
}

#[test]
fn priority_zero_then_new_master_restores_full_interval() {
    let (mut r, t0) = start(cfg(), Start::Backup);
    r.handle(t0, from(12, 0));
    let t = t0 + ms(30);
    // Another Backup (priority 150, smaller skew) took over first.
    assert_eq!(r.handle(t, from(13, 150)), vec![sched(t + MDI)]);
    assert_eq!(r.master(), Some(ip(13)));
}

#[test]
fn preemption_takes_over_one_master_down_interval_after_the_last_accepted_advert() {
    let (mut r, t0) = start(
        Config {
            priority: prio(150),
            ..cfg()
        },
        Start::Backup,
    );
    let mdi = r.master_down_interval();
    // The Master has priority 100: each advert is discarded.
    for n in 1..=3u32 {
        let got = r.handle(t0 + INTERVAL * n, from(12, 100));
        assert_eq!(
            got[0],
            Action::Ignored(Ignored::Preempting { priority: 100 })
        );
    }
    assert_eq!(r.next_deadline(), Some(t0 + mdi));
    let got = r.handle(t0 + mdi, Event::Timer);
    assert_eq!(
        got[0],
        Action::Transition {
            from: State::Backup,
            to: State::Master
        }
    );
    // The old Master hears priority 150 and steps down.
    let (mut old, m0) = start(cfg(), Start::Master);
    let got = old.handle(m0, from(11, 150));
    assert_eq!(
        got[0],
        Action::Transition {
            from: State::Master,
            to: State::Backup
        }
    );
}

#[test]
fn preempt_delay_defers_to_the_lower_master_for_the_delay() {
    let delay = ms(1000);
    let c = Config {
        priority: prio(150),
        preempt_delay: delay,
        ..cfg()
    };
    let (mut r, t0) = start(c, Start::Backup);
    let mdi = r.master_down_interval();
    let first = t0 + ms(50);
    // Accepted while the delay runs: the timer keeps being pushed back.
    let mut last_accepted = first;
    let mut n = 0u32;
    loop {
        let now = first + INTERVAL * n;
        let got = r.handle(now, from(12, 100));
        if now - first < delay {
            assert_eq!(got, vec![sched(now + mdi)], "advert {n}");
            last_accepted = now;
        } else {
            assert_eq!(
                got[0],
                Action::Ignored(Ignored::Preempting { priority: 100 })
            );
            break;
        }
        n += 1;
    }
    assert_eq!(last_accepted, first + ms(900));
    assert_eq!(r.next_deadline(), Some(last_accepted + mdi));
    let got = r.handle(last_accepted + mdi, Event::Timer);
    assert_eq!(
        got[0],
        Action::Transition {
            from: State::Backup,
            to: State::Master
        }
    );
}

#[test]
fn preempt_delay_restarts_when_a_higher_master_shows_up() {
    let c = Config {
        priority: prio(150),
        preempt_delay: ms(500),
        ..cfg()
    };
    let (mut r, t0) = start(c, Start::Backup);
    r.handle(t0, from(12, 100));
    // A priority-200 router takes over: nothing to preempt any more.
    r.handle(t0 + ms(400), from(13, 200));
    // The 100 router is back as Master later: a full new delay window.
    let t = t0 + ms(600);
    assert_eq!(r.handle(t, from(12, 100)).len(), 1);
    assert_eq!(r.handle(t + ms(499), from(12, 100)).len(), 1);
    assert_eq!(
        r.handle(t + ms(500), from(12, 100))[0],
        Action::Ignored(Ignored::Preempting { priority: 100 })
    );
}

#[test]
fn tracked_priority_drop_lets_a_preempting_backup_take_over() {
    // Master with 150 loses health down to 90; the Backup at 100 preempts.
    let (mut m, t0) = start(
        Config {
            priority: prio(150),
            ..cfg()
        },
        Start::Master,
    );
    let sent = m.handle(t0 + ms(10), Event::SetPriority(prio(90)));
    let Some(Action::SendAdvert(adv)) = sent.first().cloned() else {
        panic!("{sent:?}")
    };
    assert_eq!(adv.priority, 90);
    let c = Config {
        primary_addr: ip(12),
        ..cfg()
    };
    let (mut b, b0) = start(c, Start::Backup);
    let got = b.handle(
        b0,
        Event::Advert {
            src: ip(11),
            advert: adv,
        },
    );
    assert_eq!(
        got[0],
        Action::Ignored(Ignored::Preempting { priority: 90 })
    );
}

#[test]
fn priority_raised_in_initialize_to_owner_starts_as_master() {
    let (mut r, t0) = start(cfg(), Start::Init);
    assert_eq!(
        r.handle(t0, Event::SetPriority(Priority::OWNER)),
        vec![Action::ScheduleTimer(None)]
    );
    let got = r.handle(t0, Event::Startup);
    assert_eq!(got, becomes_master(State::Initialize, 255, t0));
}

#[test]
fn announce_burst_repeat_and_refresh() {
    let c = Config {
        announce: AnnounceConfig {
            burst: 3,
            repeat_delay: Some(ms(5000)),
            refresh_interval: Some(ms(60_000)),
            refresh_burst: 1,
        },
        adver_interval: interval(4095),
        ..cfg()
    };
    let (mut r, tm) = start(c, Start::Master);
    let announce = |got: Vec<Action>| {
        got.iter()
            .filter_map(|a| match a {
                Action::Announce { count } => Some(*count),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // (time after becoming Master, announcements due then). The 40.95 s Adver_Timer
    // fires in between and announces nothing.
    let steps: [(u64, &[u32]); 6] = [
        (4_999, &[]),
        (5_000, &[3]),
        (64_999, &[]),
        (65_000, &[1]),
        (124_999, &[]),
        (125_000, &[1]),
    ];
    for (at, want) in steps {
        assert_eq!(
            announce(r.handle(tm + ms(at), Event::Timer)),
            want,
            "at {at} ms"
        );
    }
}

#[test]
fn announce_can_be_a_single_burst_or_nothing() {
    let single = Config {
        announce: AnnounceConfig {
            burst: 2,
            repeat_delay: None,
            refresh_interval: None,
            refresh_burst: 1,
        },
        ..cfg()
    };
    let (mut r, t0) = start(single, Start::Backup);
    let got = r.handle(t0 + MDI, Event::Timer);
    assert!(got.contains(&Action::Announce { count: 2 }));
    // Only the Adver_Timer is left.
    assert_eq!(r.next_deadline(), Some(t0 + MDI + INTERVAL));

    let silent = Config {
        announce: AnnounceConfig {
            burst: 0,
            ..AnnounceConfig::default()
        },
        ..cfg()
    };
    let (mut r, t0) = start(silent, Start::Backup);
    let got = r.handle(t0 + MDI, Event::Timer);
    assert!(!got.iter().any(|a| matches!(a, Action::Announce { .. })));
}

#[test]
fn announcements_stop_when_leaving_master() {
    let (mut r, tm) = start(cfg(), Start::Master);
    r.handle(tm + ms(10), from(12, 200));
    assert_eq!(r.state(), State::Backup);
    // The second burst due at tm + 5 s is gone; only the Master_Down_Timer runs.
    assert_eq!(
        r.next_deadline(),
        Some(tm + ms(10) + r.master_down_interval())
    );
    for n in 1..=60u32 {
        let now = tm + ms(10) + INTERVAL * n;
        let mut got = r.handle(now, from(12, 200));
        got.extend(r.handle(now, Event::Timer));
        assert!(
            !got.iter().any(|a| matches!(a, Action::Announce { .. })),
            "{got:?}"
        );
    }
    assert_eq!(r.state(), State::Backup);
}

#[test]
fn master_accessor_follows_the_state() {
    let (mut r, t0) = start(cfg(), Start::Backup);
    assert_eq!(r.master(), None);
    r.handle(t0, from(12, 150));
    assert_eq!(r.master(), Some(ip(12)));
    r.handle(t0 + ms(10), Event::Shutdown);
    assert_eq!(r.master(), None);
    r.handle(t0 + ms(20), Event::Startup);
    r.handle(t0 + ms(20) + MDI, Event::Timer);
    assert_eq!(r.master(), Some(ip(11)));
}

#[test]
fn restart_after_shutdown_uses_own_interval_again() {
    let (mut r, t0) = start(cfg(), Start::Backup);
    r.handle(
        t0,
        Event::Advert {
            src: ip(12),
            advert: Advertisement {
                max_adver_int: interval(100),
                ..advert(150)
            },
        },
    );
    assert_eq!(r.master_adver_interval(), interval(100));
    r.handle(t0, Event::Shutdown);
    let t = t0 + ms(1);
    assert_eq!(r.handle(t, Event::Startup).last(), Some(&sched(t + MDI)));
    assert_eq!(r.master_adver_interval(), interval(10));
}
