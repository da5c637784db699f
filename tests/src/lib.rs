//! The network-namespace lab and the end-to-end tests' shared pieces.
//!
//! * [`lab`]: builds topologies of network namespaces (hosts on a bridged segment) with
//!   the settings XDP forwarding over veth needs on these kernels, runs processes inside
//!   hosts, cuts links, and tears everything down in a drop guard.
//! * [`privileged`]: the gate every root-only test passes through.
//! * [`frames`]: a frame builder for the data-path tests and the benchmark.
//! * [`xdp`]: the XDP program and the reference model side by side, fed the same map
//!   contents (the fixture and differential tests, `cargo xtask bench xdp`).
//!
//! The `lb-lab` binary exposes the lab by hand (`cargo xtask lab up|down|status`) and
//! runs the demo (`cargo xtask demo`).

pub mod frames;
pub mod lab;
pub mod privileged;
pub mod xdp;
