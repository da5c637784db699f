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

/// The two raw bytes at `offset` (a port).
#[inline(always)]
pub fn bytes2(ctx: &XdpContext, offset: usize) -> Option<[u8; 2]> {
    load::<u16>(ctx, offset).map(u16::to_ne_bytes)
}

/// The four raw bytes at `offset` (an IPv4 address).
#[inline(always)]
pub fn bytes4(ctx: &XdpContext, offset: usize) -> Option<[u8; 4]> {
    load::<u32>(ctx, offset).map(u32::to_ne_bytes)
}

/// The sixteen raw bytes at `offset` (an IPv6 address), as two 8-byte loads.
#[inline(always)]
pub fn bytes16(ctx: &XdpContext, offset: usize) -> Option<[u8; 16]> {
    let [lo, hi] = load::<[u64; 2]>(ctx, offset)?;
    let (lo, hi) = (lo.to_ne_bytes(), hi.to_ne_bytes());
    Some([
        lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3], hi[4],
        hi[5], hi[6], hi[7],
    ])
}

/// Copies `N` bytes (a multiple of 2) from the stack into the frame at `offset`, in 8-,
/// 4- and 2-byte stores.
#[inline(always)]
pub fn write_bytes<const N: usize>(ctx: &XdpContext, offset: usize, b: &[u8; N]) -> Option<()> {
    // One bounds check for the whole copy; the stores below stay inside it.
    let base = ptr_at::<[u8; N]>(ctx, offset)? as usize;
    let mut i = 0;
    while i + 8 <= N {
        let w = u64::from_ne_bytes([
            b[i],
            b[i + 1],
            b[i + 2],
            b[i + 3],
            b[i + 4],
            b[i + 5],
            b[i + 6],
            b[i + 7],
        ]);
        // SAFETY: inside the checked range; see the module docs on alignment.
        unsafe { core::ptr::write((base + i) as *mut u64, w) };
        i += 8;
    }
    if i + 4 <= N {
        let w = u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        // SAFETY: as above.
        unsafe { core::ptr::write((base + i) as *mut u32, w) };
        i += 4;
    }
    if i + 2 <= N {
        let w = u16::from_ne_bytes([b[i], b[i + 1]]);
        // SAFETY: as above.
        unsafe { core::ptr::write((base + i) as *mut u16, w) };
    }
    Some(())
}

/// Reads `N` bytes (a multiple of 2) at `offset` onto the stack, in 8-, 4- and 2-byte loads.
#[inline(always)]
pub fn read_bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let base = ptr_at::<[u8; N]>(ctx, offset)? as usize;
    let mut out = [0u8; N];
    let mut i = 0;
    while i + 8 <= N {
        // SAFETY: inside the checked range; see the module docs on alignment.
        let w = unsafe { core::ptr::read((base + i) as *const u64) }.to_ne_bytes();
        let mut j = 0;
        while j < 8 {
            out[i + j] = w[j];
            j += 1;
        }
        i += 8;
    }
    if i + 4 <= N {
        // SAFETY: as above.
        let w = unsafe { core::ptr::read((base + i) as *const u32) }.to_ne_bytes();
        out[i] = w[0];
        out[i + 1] = w[1];
        out[i + 2] = w[2];
        out[i + 3] = w[3];
        i += 4;
    }
    if i + 2 <= N {
        // SAFETY: as above.
        let w = unsafe { core::ptr::read((base + i) as *const u16) }.to_ne_bytes();
        out[i] = w[0];
        out[i + 1] = w[1];
    }
    Some(out)
}
