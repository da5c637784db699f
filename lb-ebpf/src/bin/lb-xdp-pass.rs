//! Map-less helper programs, in their own object so that attaching one allocates nothing.
//!
//! * `xdp_pass`: returns XDP_PASS. The lab attaches it to the peer of every veth whose
//!   other end transmits with XDP_TX: veth silently drops XDP_TX frames unless the
//!   receiving peer has an XDP program attached (verified on these kernels; see
//!   ARCHITECTURE.md, lab notes). Real NICs need nothing of the kind.
//! * `xdp_floor`: returns XDP_TX unconditionally; `cargo xtask bench xdp` measures it in
//!   the same run and subtracts it from every case.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// On the host the programs are compiled (so clippy and the compiler check them) but unused.
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code))]

mod programs {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

    #[xdp]
    pub fn xdp_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[xdp]
    pub fn xdp_floor(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_TX
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
