//! The userspace side of the load balancer: `lb-agent` and `lbctl` are thin binaries over
//! these modules.
//!
//! * [`dataplane`]: loads, attaches and feeds the XDP program; the only module that
//!   touches aya.

pub mod dataplane;
pub mod vrrp;
