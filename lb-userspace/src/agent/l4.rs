//! The agent's interface to the L4 data path (the XDP program's maps).
//!
//! The agent decides *what* the data path should do and hands it over as one
//! [`DesiredL4`]: this node's addresses, the gateway table and, per VIP and port, the
//! Maglev ring of gateway ids. An implementation of [`L4Dataplane`] makes the maps say
//! exactly that. The agent calls [`L4Dataplane::apply`] after every change of the inputs
//! (gateway health, admin state, configuration), always with the *whole* desired state,
//! never a delta: an implementation may diff against what it wrote last, but it must not
//! rely on being told what changed.
//!
//! Invariants the agent guarantees for every `DesiredL4` it passes:
//! * gateway ids are dense `0..gateways.len()`, assigned by gateway name order, so every
//!   agent with the same gateway set uses the same ids;
//! * every ring has exactly [`lb_common::maglev::DEFAULT_TABLE_SIZE`] slots, each a gateway
//!   id of the table or [`lb_common::maglev::NO_BACKEND`] (no gateway may take new flows);
//! * every agent given the same gateway set, health and admin state computes the same rings
//!   (see [`super::ring`]).
//!
//! What an implementation must guarantee:
//! * readers never see a half-written ring (the rings are double-buffered: write the
//!   inactive copy, then flip the index);
//! * `apply` is idempotent: applying the same value twice changes nothing;
//! * an error leaves the previous state serving (the agent retries on the next change and
//!   reports the error in `lbctl status` and the logs).
//!
//! The agent runs without an L4 data path when `[xdp]` is not configured (gateway-only
//! nodes); [`FakeL4`] records what it is given, for tests.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex, PoisonError},
};

use serde::{Deserialize, Serialize};

pub use super::config::L4Protocol;

/// One gateway node as the data path sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct L4Gateway {
    /// Index in the gateway map, the value stored in ring slots.
    pub id: u32,
    /// Node name (the Maglev hash key).
    pub name: String,
    /// Outer destination of IPIP-encapsulated IPv4 flows.
    pub ipv4: Ipv4Addr,
    /// Outer destination of IP6IP6-encapsulated IPv6 flows, if the node has one.
    pub ipv6: Option<Ipv6Addr>,
    /// This node: flows mapped here are passed to the local stack, not encapsulated.
    pub local: bool,
}

/// One service: a VIP, a port and a protocol, with its ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct L4Service {
    /// The virtual address.
    pub vip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: L4Protocol,
    /// The Maglev lookup table: slot `flow_hash % ring.len()` holds the gateway id.
    pub ring: Vec<u32>,
}

/// Everything the data path needs, as one value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct DesiredL4 {
    /// This node's IPv4 address on the data-path interface (outer source of IPIP).
    pub local_ipv4: Option<Ipv4Addr>,
    /// This node's IPv6 address on the data-path interface (outer source of IP6IP6).
    pub local_ipv6: Option<Ipv6Addr>,
    /// The gateway table, ordered by id.
    pub gateways: Vec<L4Gateway>,
    /// The services, ordered by (vip, port, protocol).
    pub services: Vec<L4Service>,
}

/// Packet and byte counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// The data path's counters, summed over CPUs. Monotonic while the program stays loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct L4Counters {
    /// Per exit reason (the names of `lb_common::ExitReason`).
    pub exits: Vec<(String, Count)>,
    /// Per service (vip, port, protocol).
    pub services: Vec<(IpAddr, u16, L4Protocol, Count)>,
    /// Per gateway id: what was sent to (or passed for) it.
    pub gateways: Vec<(u32, Count)>,
}

/// An error of the data path, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("L4 data path: {op}: {reason}")]
pub struct L4Error {
    /// The operation (e.g. "write ring of 10.0.0.100:443/tcp").
    pub op: String,
    /// What went wrong.
    pub reason: String,
}

/// The data path as the agent drives it. Implemented by the XDP loader
/// (`crate::dataplane`) and by [`FakeL4`].
pub trait L4Dataplane: Send {
    /// Makes the maps equal to `desired` (see the module documentation for the contract).
    fn apply(&mut self, desired: &DesiredL4) -> Result<(), L4Error>;
    /// Reads the counters.
    fn counters(&self) -> Result<L4Counters, L4Error>;
    /// Whether the program is attached to its interface (a VRRP priority input).
    fn attached(&self) -> bool;
}

/// A data path that remembers what it was given; for tests. Clones share the record.
#[derive(Debug, Default, Clone)]
pub struct FakeL4 {
    /// Every `apply`, in order.
    pub applied: Arc<Mutex<Vec<DesiredL4>>>,
    /// Returned by `counters`.
    pub counters: L4Counters,
    /// When set, `apply` fails with this reason (and records nothing).
    pub fail: Option<String>,
    /// How long `apply` takes (a real one may wait for neighbour entries).
    pub delay: std::time::Duration,
}

impl FakeL4 {
    /// The last state applied.
    pub fn last(&self) -> Option<DesiredL4> {
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .cloned()
    }
}

impl L4Dataplane for FakeL4 {
    fn apply(&mut self, desired: &DesiredL4) -> Result<(), L4Error> {
        std::thread::sleep(self.delay);
        if let Some(reason) = &self.fail {
            return Err(L4Error {
                op: "apply".into(),
                reason: reason.clone(),
            });
        }
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(desired.clone());
        Ok(())
    }

    fn counters(&self) -> Result<L4Counters, L4Error> {
        Ok(self.counters.clone())
    }

    fn attached(&self) -> bool {
        true
    }
}
