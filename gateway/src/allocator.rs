//! The process allocator: mimalloc, called without its aligned entry points for ordinary
//! alignments.
//!
//! `mimalloc::MiMalloc` passes every request to `mi_malloc_aligned`, whose fast path only
//! covers blocks of up to 1 KiB that happen to be free; anything larger (hyper's read and
//! write buffers, header maps) takes the generic over-allocating path, several hundred
//! instructions per call (measured with callgrind on the proxy path). Like the standard
//! library's `System` allocator, this calls plain `mi_malloc` when the alignment is one that
//! every mimalloc block has anyway (16 bytes on 64-bit targets), and mimalloc's own aligned
//! functions otherwise.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

// Provided by the mimalloc library that the `mimalloc` crate links (through `libmimalloc-sys`).
unsafe extern "C" {
    fn mi_malloc(size: usize) -> *mut c_void;
    fn mi_zalloc(size: usize) -> *mut c_void;
    fn mi_realloc(p: *mut c_void, newsize: usize) -> *mut c_void;
}

/// The alignment of every block `mi_malloc` returns (`MI_MAX_ALIGN_SIZE`).
const MIN_ALIGN: usize = 16;

/// The global allocator of the `lb-gateway` binary.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

/// Whether plain `mi_malloc` satisfies `layout` (the same rule as `std`'s `System`: a block
/// smaller than the alignment might come from a smaller size class).
fn natural(layout: &Layout) -> bool {
    layout.align() <= MIN_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every pointer comes from mimalloc and goes back to it; the aligned cases are the
// `mimalloc` crate's implementation, the others get blocks aligned to at least `MIN_ALIGN`,
// which `natural` checked is enough.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if natural(&layout) {
            // SAFETY: a plain C allocation call; `layout.size()` is non-zero by contract.
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if natural(&layout) {
            // SAFETY: as in `alloc`.
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from mimalloc (either path); `mi_free` takes any of its blocks.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.align() <= new_size {
            // SAFETY: `ptr` is a live mimalloc block; the new block keeps `MIN_ALIGN`.
            unsafe { mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_and_usable() {
        let a = Allocator;
        for (size, align) in [
            (1, 1),
            (8, 8),
            (24, 8),
            (4096, 8),
            (100_000, 16),
            (64, 128),
            (8, 4096),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero sizes; every block is freed with its layout.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                assert!(std::slice::from_raw_parts(p, size).iter().all(|b| *b == 0));
                p.write_bytes(7, size);
                let q = a.realloc(p, layout, size * 3);
                assert!(!q.is_null());
                assert_eq!(q as usize % align, 0);
                assert_eq!(*q.add(size - 1), 7);
                a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
            }
        }
    }
}
