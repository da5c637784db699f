//! The per-packet decision. Every return goes through [`exit`], which bumps the counter
//! of its reason, so no exit is uncounted.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::ExitReason;

use crate::{maps::EXIT_STATS, packet};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let reason = classify(ctx);
    exit(ctx, reason)
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> ExitReason {
    let Some(mut proto) = packet::read_be16(ctx, 12) else {
        return ExitReason::PassNotIp;
    };
    let mut _l3 = ETH_HLEN;
    if proto == ETH_P_8021Q {
        match packet::read_be16(ctx, 16) {
            Some(inner) => {
                proto = inner;
                _l3 += 4;
            }
            None => return ExitReason::PassNotIp,
        }
    }
    match proto {
        ETH_P_IP | ETH_P_IPV6 => ExitReason::PassNotVip,
        _ => ExitReason::PassNotIp,
    }
}

#[inline(always)]
fn exit(ctx: &XdpContext, reason: ExitReason) -> u32 {
    if let Some(c) = EXIT_STATS.get_ptr_mut(reason as u32) {
        let len = (ctx.data_end() - ctx.data()) as u64;
        // SAFETY: per-CPU slot returned by the map; no other writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
    match reason {
        ExitReason::DropMalformed | ExitReason::DropNoGateway => xdp_action::XDP_DROP,
        ExitReason::Tx | ExitReason::IcmpForwarded => xdp_action::XDP_TX,
        ExitReason::Aborted => xdp_action::XDP_ABORTED,
        _ => xdp_action::XDP_PASS,
    }
}
