//! Bounds-checked access to the packet. Every raw pointer into the frame is made here,
//! after the check the verifier needs (`start + offset + size <= data_end`).
use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `offset` bytes into the frame, or `None` when the frame is
/// shorter than `offset + size_of::<T>()`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads a `T` (a byte array or integer; any alignment) at `offset`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the bytes lie inside the frame.
    Some(unsafe { core::ptr::read_unaligned(p) })
}

/// Writes `v` at `offset`; `None` when it does not fit in the frame.
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, offset: usize, v: T) -> Option<()> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the bytes lie inside the frame.
    unsafe { core::ptr::write_unaligned(p, v) };
    Some(())
}

/// Reads the byte at `offset` through a two-byte window, so it needs `offset + 2 <= len`.
/// Every caller reads a header byte that more header follows. (A one-byte check compiles to
/// `ptr >= end`, from which the verifier learns no range.)
#[inline(always)]
pub fn u8_at(ctx: &XdpContext, offset: usize) -> Option<u8> {
    read::<[u8; 2]>(ctx, offset).map(|b| b[0])
}

/// Reads a big-endian u16 at `offset`.
#[inline(always)]
pub fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    read::<[u8; 2]>(ctx, offset).map(u16::from_be_bytes)
}
