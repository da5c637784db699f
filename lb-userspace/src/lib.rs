//! The userspace side of the load balancer: `lb-agent` and `lbctl` are thin binaries over
//! these modules.
//!
//! * [`dataplane`]: loads, attaches and feeds the XDP program; the only module that
//!   touches aya.
//! * [`vrrp`]: VRRPv3 codec, state machine and sockets.
//! * [`xdp_l4`]: the agent's L4 data path on the real XDP program (desired state -> maps).
//! * [`agent`]: the `lb-agent run` daemon (config, VRRP driver, health probes, cluster
//!   admin state, admin API, metrics).

pub mod agent;
pub mod dataplane;
pub mod vrrp;
pub mod xdp_l4;
