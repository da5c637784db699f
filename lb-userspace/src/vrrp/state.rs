//! The VRRPv3 state machine of RFC 5798 section 6 (section 6 of RFC 9568 keeps it, calling
//! Master "Active"), as a pure function of time and events.
//!
//! [`VirtualRouter::handle`] takes `now` and one [`Event`] and returns the [`Action`]s the
//! caller must carry out, in order. It never sleeps, reads a clock or does I/O, so tests
//! drive it with made-up instants. The last action of every call is
//! [`Action::ScheduleTimer`]: the one instant at which the caller must deliver
//! [`Event::Timer`] next (it replaces any earlier request). A `Timer` event that comes
//! early fires nothing; one that comes late fires every timer that is due, once.
//!
//! Timers only fire on `Event::Timer`. An advert handled at or after a deadline that has
//! not fired yet is processed first, as if it arrived just before: a Backup that is late to
//! look at its timer keeps its master rather than taking over.
//!
//! Beyond the RFC:
//! * dynamic priority ([`Event::SetPriority`]): the agent lowers its priority when local
//!   health fails. A Master sends an advert at once with the new priority, so that a
//!   preempting Backup learns it without waiting an interval;
//! * a preempt delay: a Backup that would preempt a lower-priority Master keeps accepting
//!   its adverts for [`Config::preempt_delay`] after it first hears one, then preempts;
//! * gratuitous ARP / unsolicited NA repeats and periodic refresh ([`AnnounceConfig`]),
//!   as keepalived does with `garp_master_delay` and `garp_master_refresh`.
use std::{
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::packet::{AdverInterval, Advertisement, Family, MAX_ADDRESSES, VirtualAddrs, Vrid};

/// A router's priority in a virtual router, 1-255 (RFC 5798 section 5.2.4). 255 means the
/// router owns the virtual addresses; 0 is never a router's priority, only the "leaving"
/// value of an advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    /// The address owner's priority.
    pub const OWNER: Priority = Priority(255);
    /// The RFC's default for a backup router (RFC 5798 section 6.1).
    pub const DEFAULT: Priority = Priority(100);

    /// `None` for 0.
    pub const fn new(priority: u8) -> Option<Priority> {
        if priority == 0 {
            None
        } else {
            Some(Priority(priority))
        }
    }

    /// The priority as a number.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether this is the address owner's priority, 255.
    pub const fn is_owner(self) -> bool {
        self.0 == 255
    }
}

/// How the new Master announces the virtual addresses (gratuitous ARP for IPv4,
/// unsolicited Neighbor Advertisement for IPv6; RFC 5798 section 6.4.2 lines 375-395).
/// The defaults are keepalived's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// Announcements per virtual address on becoming Master (keepalived
    /// `garp_master_repeat`, default 5). 0 sends none.
    pub burst: u32,
    /// When to send the burst a second time after becoming Master (keepalived
    /// `garp_master_delay`, default 5 s); `None` for no second burst.
    pub repeat_delay: Option<Duration>,
    /// Period of the refresh while Master (keepalived `garp_master_refresh`, default off).
    pub refresh_interval: Option<Duration>,
    /// Announcements per virtual address at each refresh (keepalived
    /// `garp_master_refresh_repeat`, default 1).
    pub refresh_burst: u32,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            burst: 5,
            repeat_delay: Some(Duration::from_secs(5)),
            refresh_interval: None,
            refresh_burst: 1,
        }
    }
}

/// The configuration of one virtual router on one interface (RFC 5798 section 6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// VRID.
    pub vrid: Vrid,
    /// Priority at start; [`Event::SetPriority`] changes it later.
    pub priority: Priority,
    /// Advertisement_Interval: how often the Master sends adverts.
    pub adver_interval: AdverInterval,
    /// Preempt_Mode: whether a Backup takes over from a lower-priority Master.
    pub preempt: bool,
    /// How long a Backup keeps deferring to a lower-priority Master before it preempts.
    /// Zero preempts at once.
    pub preempt_delay: Duration,
    /// Our primary address on the interface, the source of our adverts: an IPv4 address,
    /// or the IPv6 link-local address. It breaks priority ties (RFC 5798 section 6.4.3).
    pub primary_addr: IpAddr,
    /// The virtual addresses (IPvX Address(es), RFC 5798 section 6.1).
    pub addrs: VirtualAddrs,
    /// Gratuitous ARP / unsolicited NA behaviour.
    pub announce: AnnounceConfig,
}

/// A configuration the state machine cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A virtual router needs at least one address.
    #[error("vrid {vrid}: no virtual address")]
    NoAddresses { vrid: Vrid },
    /// More addresses than an advert can carry.
    #[error("vrid {vrid}: {count} virtual addresses, at most {MAX_ADDRESSES}")]
    TooManyAddresses { vrid: Vrid, count: usize },
    /// The primary address and the virtual addresses are of different families.
    #[error("vrid {vrid}: primary address {primary} is not {family} like the virtual addresses")]
    FamilyMismatch {
        vrid: Vrid,
        primary: IpAddr,
        family: Family,
    },
}

/// The states of RFC 5798 section 6.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Waiting for Startup (section 6.4.1).
    Initialize,
    /// Monitoring the Master (section 6.4.2).
    Backup,
    /// Forwarding for the virtual addresses (section 6.4.3; "Active" in RFC 9568).
    Master,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
        })
    }
}

/// An input to the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start the virtual router (section 6.4.1).
    Startup,
    /// Stop it; a Master sends priority 0 first (section 6.4.3 lines 655-670).
    Shutdown,
    /// An advert that passed the checks of [`super::packet`], with its IP source.
    Advert {
        /// IP source: the sender's primary address.
        src: IpAddr,
        /// The decoded message.
        advert: Advertisement,
    },
    /// The instant last asked for by [`Action::ScheduleTimer`] has come (or any time:
    /// only due timers fire).
    Timer,
    /// Local health changed our priority (XDP attached, gateway ready, uplink up, ...).
    SetPriority(Priority),
}

/// Why an advert did not change anything; for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// The router is in Initialize.
    NotRunning,
    /// We own the addresses (priority 255) and so discard adverts (RFC 5798 section 7.1).
    AddressOwner,
    /// The advert is for another virtual router.
    OtherVrid(Vrid),
    /// IPv4 advert to an IPv6 virtual router or the reverse.
    OtherFamily,
    /// The address list differs from ours and the sender is not the owner: misconfiguration
    /// (RFC 5798 section 7.1).
    AddressMismatch,
    /// Backup with preemption: the Master's priority is below ours, so we let the
    /// Master_Down_Timer run out (RFC 5798 section 6.4.2 line 470).
    Preempting { priority: u8 },
    /// Master: the sender does not win against us (section 6.4.3 line 770).
    LowerPriority { priority: u8 },
}

/// What the caller must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The state changed.
    Transition { from: State, to: State },
    /// Send this advert to the group (or the unicast peers).
    SendAdvert(Advertisement),
    /// Put the virtual addresses on the interface (before any announcement, which the
    /// IPv6 NA is sent from). For IPv6 this also joins their solicited-node groups
    /// (section 6.4.2 line 390), which the kernel does when the address is added.
    AddVips,
    /// Take the virtual addresses off the interface. Idempotent: also given on entering
    /// Backup from Initialize, to clear leftovers of an earlier run.
    RemoveVips,
    /// Send `count` gratuitous ARP requests (IPv4) or unsolicited Neighbor Advertisements
    /// (IPv6) for each virtual address.
    Announce { count: u32 },
    /// An advert was discarded (nothing else to do).
    Ignored(Ignored),
    /// Deliver [`Event::Timer`] at this instant; `None`: no timer is running.
    ScheduleTimer(Option<Instant>),
}

/// Which announcement the announce timer stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnnouncePhase {
    /// The second burst, `repeat_delay` after becoming Master.
    Repeat,
    /// A periodic refresh.
    Refresh,
}

/// Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256 (RFC 5798 section 6.1,
/// as written for version 3).
pub fn skew_time(priority: Priority, master_adver_interval: AdverInterval) -> Duration {
    master_adver_interval.as_duration() * (256 - u32::from(priority.get())) / 256
}

/// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time (RFC 5798 section 6.1).
pub fn master_down_interval(priority: Priority, master_adver_interval: AdverInterval) -> Duration {
    master_adver_interval.as_duration() * 3 + skew_time(priority, master_adver_interval)
}

/// One virtual router: RFC 5798 section 6.4 plus the extensions in the module docs.
#[derive(Debug, Clone)]
pub struct VirtualRouter {
    cfg: Config,
    state: State,
    priority: Priority,
    master_adver_interval: AdverInterval,
    /// Adver_Timer, running in Master.
    adver_timer: Option<Instant>,
    /// Master_Down_Timer, running in Backup.
    master_down_timer: Option<Instant>,
    /// Next announcement, in Master.
    announce_timer: Option<(Instant, AnnouncePhase)>,
    /// Backup: when we first heard the lower-priority Master we are about to preempt.
    preempt_since: Option<Instant>,
    /// The current Master's address as far as we know.
    master: Option<IpAddr>,
}

impl VirtualRouter {
    /// A virtual router in Initialize.
    pub fn new(cfg: Config) -> Result<VirtualRouter, ConfigError> {
        let vrid = cfg.vrid;
        if cfg.addrs.is_empty() {
            return Err(ConfigError::NoAddresses { vrid });
        }
        if cfg.addrs.len() > MAX_ADDRESSES {
            return Err(ConfigError::TooManyAddresses {
                vrid,
                count: cfg.addrs.len(),
            });
        }
        if Family::of(cfg.primary_addr) != cfg.addrs.family() {
            return Err(ConfigError::FamilyMismatch {
                vrid,
                primary: cfg.primary_addr,
                family: cfg.addrs.family(),
            });
        }
        Ok(VirtualRouter {
            priority: cfg.priority,
            master_adver_interval: cfg.adver_interval,
            cfg,
            state: State::Initialize,
            adver_timer: None,
            master_down_timer: None,
            announce_timer: None,
            preempt_since: None,
            master: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The current priority (the configured one until [`Event::SetPriority`]).
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Master_Adver_Interval: learned from the Master's adverts in Backup.
    pub fn master_adver_interval(&self) -> AdverInterval {
        self.master_adver_interval
    }

    /// The Master_Down_Interval with the current priority and Master_Adver_Interval.
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.priority, self.master_adver_interval)
    }

    /// The Master's address: ours in Master, the last accepted sender in Backup.
    pub fn master(&self) -> Option<IpAddr> {
        match self.state {
            State::Master => Some(self.cfg.primary_addr),
            State::Backup => self.master,
            State::Initialize => None,
        }
    }

    /// The earliest running timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.adver_timer,
            self.master_down_timer,
            self.announce_timer.map(|(at, _)| at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Processes one event at `now` and returns what to do, ending with
    /// [`Action::ScheduleTimer`].
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state, event) {
            (State::Initialize, Event::Startup) => self.startup(now, &mut out),
            (State::Initialize, Event::Advert { .. }) => {
                out.push(Action::Ignored(Ignored::NotRunning));
            }
            // Already running / already stopped / nothing is due in Initialize.
            (State::Backup | State::Master, Event::Startup)
            | (State::Initialize, Event::Shutdown | Event::Timer) => {}
            (State::Backup, Event::Shutdown) => {
                // Section 6.4.2 lines 345-355.
                self.clear_timers();
                self.enter(State::Initialize, &mut out);
            }
            (State::Master, Event::Shutdown) => {
                // Section 6.4.3 lines 655-670.
                self.clear_timers();
                out.push(Action::SendAdvert(self.advert(0)));
                out.push(Action::RemoveVips);
                self.enter(State::Initialize, &mut out);
            }
            (State::Backup, Event::Timer) => {
                if due(self.master_down_timer, now) {
                    // Section 6.4.2 lines 365-410.
                    self.become_master(now, &mut out);
                }
            }
            (State::Master, Event::Timer) => self.master_timers(now, &mut out),
            (state, Event::Advert { src, advert }) => {
                if let Some(why) = self.precheck(src, &advert) {
                    out.push(Action::Ignored(why));
                } else if state == State::Backup {
                    self.backup_advert(now, src, &advert, &mut out);
                } else {
                    self.master_advert(now, src, &advert, &mut out);
                }
            }
            (state, Event::SetPriority(priority)) => {
                let changed = priority != self.priority;
                self.priority = priority;
                // A new priority restarts the preempt-delay window.
                self.preempt_since = None;
                if state == State::Master && changed {
                    out.push(Action::SendAdvert(self.advert(priority.get())));
                    self.adver_timer = now.checked_add(self.cfg.adver_interval.as_duration());
                }
            }
        }
        out.push(Action::ScheduleTimer(self.next_deadline()));
        out
    }

    /// Section 6.4.1.
    fn startup(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.priority.is_owner() {
            // Lines 105-145.
            self.become_master(now, out);
        } else {
            // Lines 150-165.
            self.master_adver_interval = self.cfg.adver_interval;
            self.master_down_timer = now.checked_add(self.master_down_interval());
            self.enter(State::Backup, out);
            out.push(Action::RemoveVips);
        }
    }

    /// Sends the first advert and announcements and starts the Master's timers
    /// (section 6.4.1 lines 110-145, section 6.4.2 lines 370-410).
    fn become_master(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.clear_timers();
        self.enter(State::Master, out);
        out.push(Action::AddVips);
        out.push(Action::SendAdvert(self.advert(self.priority.get())));
        if self.cfg.announce.burst > 0 {
            out.push(Action::Announce {
                count: self.cfg.announce.burst,
            });
        }
        self.adver_timer = now.checked_add(self.cfg.adver_interval.as_duration());
        self.announce_timer = match self.cfg.announce.repeat_delay {
            Some(delay) => now.checked_add(delay).map(|at| (at, AnnouncePhase::Repeat)),
            None => self.next_refresh(now),
        };
    }

    /// The Adver_Timer (section 6.4.3 lines 680-690) and the announce timer.
    fn master_timers(&mut self, now: Instant, out: &mut Vec<Action>) {
        if due(self.adver_timer, now) {
            out.push(Action::SendAdvert(self.advert(self.priority.get())));
            self.adver_timer = now.checked_add(self.cfg.adver_interval.as_duration());
        }
        if let Some((at, phase)) = self.announce_timer
            && at <= now
        {
            let count = match phase {
                AnnouncePhase::Repeat => self.cfg.announce.burst,
                AnnouncePhase::Refresh => self.cfg.announce.refresh_burst,
            };
            if count > 0 {
                out.push(Action::Announce { count });
            }
            self.announce_timer = self.next_refresh(now);
        }
    }

    fn next_refresh(&self, now: Instant) -> Option<(Instant, AnnouncePhase)> {
        let every = self.cfg.announce.refresh_interval?;
        now.checked_add(every)
            .map(|at| (at, AnnouncePhase::Refresh))
    }

    /// The receive checks of RFC 5798 section 7.1 that need the configuration.
    fn precheck(&self, src: IpAddr, advert: &Advertisement) -> Option<Ignored> {
        if self.priority.is_owner() {
            return Some(Ignored::AddressOwner);
        }
        if advert.vrid != self.cfg.vrid {
            return Some(Ignored::OtherVrid(advert.vrid));
        }
        if Family::of(src) != self.cfg.addrs.family()
            || advert.addrs.family() != self.cfg.addrs.family()
        {
            return Some(Ignored::OtherFamily);
        }
        if advert.priority != Priority::OWNER.get() && !advert.addrs.same_set(&self.cfg.addrs) {
            return Some(Ignored::AddressMismatch);
        }
        None
    }

    /// Section 6.4.2 lines 420-485.
    fn backup_advert(
        &mut self,
        now: Instant,
        src: IpAddr,
        advert: &Advertisement,
        out: &mut Vec<Action>,
    ) {
        if advert.priority == 0 {
            // Lines 425-430: the Master is leaving; the best Backup (smallest skew) takes
            // over first.
            self.master_down_timer =
                now.checked_add(skew_time(self.priority, self.master_adver_interval));
            return;
        }
        let lower = advert.priority < self.priority.get();
        if self.cfg.preempt && lower {
            let since = *self.preempt_since.get_or_insert(now);
            let waited = now.checked_duration_since(since).unwrap_or_default();
            if waited >= self.cfg.preempt_delay {
                // Line 470: discard, and let the Master_Down_Timer run out.
                out.push(Action::Ignored(Ignored::Preempting {
                    priority: advert.priority,
                }));
                return;
            }
        } else {
            self.preempt_since = None;
        }
        // Lines 445-460.
        self.master_adver_interval = advert.max_adver_int;
        self.master_down_timer = now.checked_add(self.master_down_interval());
        self.master = Some(src);
    }

    /// Section 6.4.3 lines 700-785.
    fn master_advert(
        &mut self,
        now: Instant,
        src: IpAddr,
        advert: &Advertisement,
        out: &mut Vec<Action>,
    ) {
        if advert.priority == 0 {
            // Lines 705-715: answer at once so the Backups do not take over.
            out.push(Action::SendAdvert(self.advert(self.priority.get())));
            self.adver_timer = now.checked_add(self.cfg.adver_interval.as_duration());
            return;
        }
        let ours = self.priority.get();
        // Lines 725-735: the primary addresses compare as unsigned numbers; IpAddr's order
        // within one family is exactly that.
        let wins =
            advert.priority > ours || (advert.priority == ours && src > self.cfg.primary_addr);
        if !wins {
            out.push(Action::Ignored(Ignored::LowerPriority {
                priority: advert.priority,
            }));
            return;
        }
        // Lines 740-760.
        self.clear_timers();
        self.master_adver_interval = advert.max_adver_int;
        self.master_down_timer = now.checked_add(self.master_down_interval());
        self.master = Some(src);
        self.enter(State::Backup, out);
        out.push(Action::RemoveVips);
    }

    fn enter(&mut self, to: State, out: &mut Vec<Action>) {
        out.push(Action::Transition {
            from: self.state,
            to,
        });
        self.state = to;
        self.preempt_since = None;
        if to != State::Backup {
            self.master = None;
        }
    }

    fn clear_timers(&mut self) {
        self.adver_timer = None;
        self.master_down_timer = None;
        self.announce_timer = None;
    }

    /// Our advert with `priority` (0 when leaving).
    fn advert(&self, priority: u8) -> Advertisement {
        Advertisement {
            vrid: self.cfg.vrid,
            priority,
            max_adver_int: self.cfg.adver_interval,
            addrs: self.cfg.addrs.clone(),
        }
    }
}

/// Whether a timer is running and due at `now` (a deadline equal to `now` is due).
fn due(timer: Option<Instant>, now: Instant) -> bool {
    timer.is_some_and(|at| at <= now)
}

#[cfg(test)]
mod tests;
