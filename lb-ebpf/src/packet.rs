//! Bounds-checked access to the packet. Every raw pointer into the frame is made here,
//! after the check the verifier needs (`start + offset + size <= data_end`).
//!
//! # Alignment
//!
//! Loads and stores use the natural width of their type (`u16`, `u32`, `u64`), as C
//! programs on packet headers do, even where the header is only 2-byte aligned (an IPv4
//! address 26 bytes into a frame). The BPF instruction set has no alignment faults on
//! packet memory where the architecture has efficient unaligned access (x86-64, arm64:
//! the verifier allows it there), and the JIT emits plain moves. Reading byte arrays
//! with `read_unaligned` instead makes LLVM's BPF backend emit one load per byte, which
//! tripled the instruction count of the hot path.
use aya_ebpf::programs::XdpContext;
use lb_common::datapath::{AddrWords, v4_words};

/// A pointer to a `T` at `offset` bytes into the frame, or `None` when the frame is
/// shorter than `offset + size_of::<T>()`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    // Opaque to the optimiser, so it keeps this check next to the access it guards instead
    // of proving it redundant from an earlier check on a pointer the verifier no longer
    // relates to this one.
    let end = core::hint::black_box(ctx.data_end());
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Loads a `u16`, `u32` or `u64` at `offset` (raw, network byte order in memory).
#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the bytes lie inside the frame; see the module docs
    // on alignment.
    Some(unsafe { core::ptr::read(p) })
}

/// Reads the byte at `offset` through a two-byte window, so it needs `offset + 2 <= len`.
/// Every caller reads a header byte that more header follows. (A one-byte check compiles to
/// `ptr >= end`, from which the verifier learns no range.)
#[inline(always)]
pub fn u8_at(ctx: &XdpContext, offset: usize) -> Option<u8> {
    load::<u16>(ctx, offset).map(|w| w.to_ne_bytes()[0])
}

/// Reads a big-endian u16 at `offset`.
#[inline(always)]
pub fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    load::<u16>(ctx, offset).map(u16::from_be)
}

/// The two raw bytes at `offset` as a native `u16` (a port: see
/// `lb_common::datapath` on words).
#[inline(always)]
pub fn raw16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    load::<u16>(ctx, offset)
}

/// The four raw bytes at `offset` as a native `u32`.
#[inline(always)]
pub fn raw32(ctx: &XdpContext, offset: usize) -> Option<u32> {
    load::<u32>(ctx, offset)
}

/// The words of the IPv4 address at `offset` (as a 16-byte address field).
#[inline(always)]
pub fn v4_addr_at(ctx: &XdpContext, offset: usize) -> Option<AddrWords> {
    load::<u32>(ctx, offset).map(v4_words)
}

/// The words of the IPv6 address at `offset`, as two 8-byte loads.
#[inline(always)]
pub fn v6_addr_at(ctx: &XdpContext, offset: usize) -> Option<AddrWords> {
    load::<[u64; 2]>(ctx, offset).map(|[a, b]| [u64::from_le(a), u64::from_le(b)])
}

/// `N` bytes of the frame from `offset`, checked once; [`Span::put`] stores inside them.
#[derive(Clone, Copy)]
pub struct Span<const N: usize>(usize);

impl<const N: usize> Span<N> {
    #[inline(always)]
    pub fn at(ctx: &XdpContext, offset: usize) -> Option<Self> {
        ptr_at::<[u8; N]>(ctx, offset).map(|p| Span(p as usize))
    }

    /// Stores `v` (raw bytes, native order) at `at` bytes into the span.
    #[inline(always)]
    pub fn put<T: Copy>(self, at: usize, v: T) {
        if at + core::mem::size_of::<T>() <= N {
            // SAFETY: inside the checked span (the condition is constant after inlining);
            // see the module docs on alignment.
            unsafe { core::ptr::write((self.0 + at) as *mut T, v) }
        }
    }

    /// Loads a `T` (raw bytes, native order) from `at` bytes into the span.
    #[inline(always)]
    pub fn get<T: Copy + Default>(self, at: usize) -> T {
        if at + core::mem::size_of::<T>() <= N {
            // SAFETY: as in `put`.
            unsafe { core::ptr::read((self.0 + at) as *const T) }
        } else {
            T::default()
        }
    }
}
