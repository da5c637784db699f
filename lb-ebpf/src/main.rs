//! XDP programs of the load balancer.
//!
//! `lb_xdp` is the data path (see docs/datapath.md and the reference model in lb-common's `model` module). The map-less helper programs
//! (`xdp_pass`, `xdp_floor`) live in `src/bin/lb-xdp-pass.rs`, a separate object; the
//! benchmark's memory probe (`xdp_probe`) in `src/bin/lb-xdp-probe.rs`, another.
//!
//! Built for `bpfel-unknown-none` by lb-userspace's build.rs. On the host the crate still
//! compiles (for clippy and rustdoc) with an empty `main`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// On the host the programs are compiled (so clippy and the compiler check them) but unused.
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code))]

mod maps;
mod packet;
mod path;

mod programs {
    use aya_ebpf::{macros::xdp, programs::XdpContext};

    /// The load-balancing data path. `#[inline(always)]`: the `#[xdp]` macro wraps this
    /// function in the entry point, and without it the body stayed a BPF-to-BPF call
    /// (one more return through this kernel's SRSO thunk on every packet).
    #[xdp]
    #[inline(always)]
    pub fn lb_xdp(ctx: XdpContext) -> u32 {
        crate::path::run(&ctx)
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
