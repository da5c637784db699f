//! VRRP version 3 (RFC 5798, obsoleted by RFC 9568 with the same wire format and state
//! machine), as `lb-agent` speaks it to move the VIP between nodes and to interoperate with
//! keepalived.
//!
//! * [`packet`]: the advertisement on the wire, its pseudo-header checksum, and the
//!   receiver's IP-level checks;
//! * [`state`]: the Initialize / Backup / Master state machine as a pure function of
//!   `now` and events, returning actions;
//! * [`announce`]: the gratuitous ARP and unsolicited Neighbor Advertisement frames a new
//!   Master sends;
//! * [`socket`]: raw-socket I/O (adverts over IPv4/IPv6, multicast or unicast peers, and
//!   the announcements), wrapped in tokio's `AsyncFd`.
pub mod announce;
pub mod packet;
pub mod socket;
pub mod state;
