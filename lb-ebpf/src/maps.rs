//! The maps of the data path. Userspace (lb-userspace's `dataplane` module) opens them by
//! these names.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use lb_common::{ExitReason, StatCounter};

/// One counter per [`ExitReason`]; every exit path bumps exactly one.
#[map(name = "EXIT_STATS")]
pub static EXIT_STATS: PerCpuArray<StatCounter> =
    PerCpuArray::with_max_entries(ExitReason::COUNT, 0);
