//! `xdp_probe`, the benchmark's memory probe, in its own object so that nothing else
//! allocates its map.
//!
//! It reads one 64-byte line of `PROBE_LINES`, an array map the loader sizes like a
//! connection table, and returns XDP_TX. The line's index is the frame's first four bytes
//! (native byte order). `cargo xtask bench xdp` sends one random index per test run: the
//! cost over the floor is what reaching one random line of a table that big costs from an
//! XDP program on this machine, which is the part of the new-flow and big-table cases the
//! program cannot shorten. An index out of range (or a frame shorter than four bytes)
//! returns XDP_DROP, which the benchmark reports as an error.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// On the host the program is compiled (so clippy and the compiler check it) but unused.
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code))]

mod programs {
    use aya_ebpf::{
        bindings::{BPF_F_MMAPABLE, xdp_action},
        macros::{map, xdp},
        maps::Array,
        programs::XdpContext,
    };

    /// Lines of eight words; the loader sets the number. Page-aligned (mappable) like the
    /// connection tables, so each value is one cache line.
    #[map(name = "PROBE_LINES")]
    static PROBE_LINES: Array<[u64; 8]> = Array::with_max_entries(1, BPF_F_MMAPABLE);

    #[xdp]
    pub fn xdp_probe(ctx: XdpContext) -> u32 {
        let (start, end) = (ctx.data(), ctx.data_end());
        if start + 4 > end {
            return xdp_action::XDP_DROP;
        }
        // SAFETY: the four bytes at `start` are inside the frame (checked just above).
        let index = unsafe { core::ptr::read_unaligned(start as *const u32) };
        match PROBE_LINES.get_ptr(index) {
            // SAFETY: the map returned a pointer to one of its values, valid for the
            // program's run; the volatile read keeps the load the probe exists for.
            Some(line) => match unsafe { core::ptr::read_volatile(line.cast::<u64>()) } {
                // The lines are zero; this arm only makes the verdict depend on the load.
                u64::MAX => xdp_action::XDP_PASS,
                _ => xdp_action::XDP_TX,
            },
            None => xdp_action::XDP_DROP,
        }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is never called.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
