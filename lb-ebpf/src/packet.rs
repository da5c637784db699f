//! Bounds-checked access to the packet. Every raw pointer into the frame is made here,
//! after the check the verifier needs (`start + offset + size <= data_end`).
use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `offset` bytes into the frame, or `None` when the frame is
/// shorter than `offset + size_of::<T>()`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads a big-endian u16 at `offset`.
#[inline(always)]
pub fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the two bytes lie inside the frame.
    let b = unsafe { *p };
    Some(u16::from_be_bytes(b))
}
