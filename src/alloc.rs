//! A global allocator that keeps giant reservations virtual.
//!
//! The Kafka decoder (kafka-protocol 0.18) reserves `Vec` capacity from array counts read off
//! the wire before it decodes the elements. A hostile count of 2^31 would ask the system
//! allocator for hundreds of GiB, which fails and aborts the process. Reservations of 1 GiB or
//! more are therefore served by `mmap` with `MAP_NORESERVE`: they cost address space, not memory,
//! and the decoder fails on the missing bytes long before touching more than the frame's size
//! worth of elements. Everything smaller goes to the system allocator unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

const HUGE: usize = 1 << 30;

/// See the module documentation.
pub struct GuardedAlloc;

// SAFETY: every pointer is either from `System` (small layouts) or from a private anonymous
// mmap of exactly `layout.size()` bytes (huge layouts, page-aligned, so any align <= 4096 holds);
// dealloc/realloc dispatch on the same size threshold, so each pointer returns to its source.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE && layout.align() <= 4096 {
            let p = libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return std::ptr::null_mut();
            }
            return p as *mut u8;
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= HUGE && layout.align() <= 4096 {
            libc::munmap(ptr as *mut libc::c_void, layout.size());
            return;
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE && layout.align() <= 4096 {
            return self.alloc(layout); // anonymous mappings are zero-filled
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < HUGE && new_size < HUGE {
            return System.realloc(ptr, layout, new_size);
        }
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let new = self.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}
