//! What the allocator holds: the bytes in use and the freed bytes it keeps, so that
//! a resident size that grows can be told apart as live data (a cache, a leak) or as
//! freed memory the allocator cannot give back (fragmentation).

/// The heap of every arena, as glibc's `mallinfo2` counts it.
#[derive(Debug, Clone, Copy)]
pub struct HeapStats {
    /// Bytes in allocated blocks (the heap and its large mapped blocks).
    pub in_use: u64,
    /// Freed bytes the heap still holds (some of them may have been given back
    /// page by page, so this is an upper bound of what they keep resident).
    pub free: u64,
}

/// The heap now; `None` where the allocator does not say (not glibc).
pub fn heap_stats() -> Option<HeapStats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters (under its locks).
        let info = unsafe { libc::mallinfo2() };
        Some(HeapStats {
            in_use: (info.uordblks + info.hblkhd) as u64,
            free: info.fordblks as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}
