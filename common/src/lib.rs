//! Types shared by the XDP program (`lb-ebpf`, built `no_std` for the BPF target) and
//! userspace (`lb-userspace`, the tests, xtask).
//!
//! Everything that crosses the kernel boundary is `#[repr(C)]` with explicit padding so
//! that the two sides agree on the layout byte for byte. With the `user` feature the types
//! implement `aya::Pod` so userspace can read and write them in maps.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod datapath;
#[cfg(feature = "std")]
pub mod maglev;
#[cfg(feature = "std")]
pub mod model;
pub mod stats;

pub use stats::{ExitReason, StatCounter};
