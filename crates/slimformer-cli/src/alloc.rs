//! The allocator's policy, for every command.
//!
//! A training step allocates and frees tensors of tens of megabytes (activations,
//! gradients, the word embeddings' 47 MB gradient), and so does a forward pass of a
//! batch (each layer's outputs). glibc serves blocks above its mmap threshold with
//! fresh mappings and trims the heap's free top back to the system, so every step
//! or batch faulted its memory in again, zero-filled by the kernel: 2.4 million
//! page faults in 20 steps of fine-tuning MiniLM (about 8% of the time), 194,000 in
//! 13 int8 passes at 32×128. A process returns to its peak at the next step or
//! batch anyway, so it keeps what it frees (4× fewer faults in both; the peak RSS
//! of a 32×128 bench run went from 214 to 220 MiB).

/// Keeps freed memory in the process instead of returning it to the system;
/// `one_arena`: every thread allocates from one arena (see below).
pub fn keep_freed_memory(one_arena: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any threads
    // start allocating. Values glibc rejects are ignored (it returns 0).
    unsafe {
        // The largest threshold glibc accepts (HEAP_MAX/2 on 64-bit).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // The forward pass runs on the pool's threads (`layers::on_pool`), and with an
        // arena per thread each kept its own freed blocks: peak RSS at 32×128 rose by
        // 40–60 MiB (int8 183 → 240). Training is left an arena per thread: with one,
        // fine-tuning ran 2–5% slower (4 of 4 rounds), and its memory is no target.
        if one_arena {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            // Blocks above 32 MB (the most M_MMAP_THRESHOLD takes) were still fresh
            // mappings: a feed-forward activation of a full batch (8192 tokens × 1536
            // floats, 50 MB) was mapped, faulted in and unmapped in every layer — 5 s
            // of the kernel's time in a 28 s `embed` of 6,000 texts at 2 threads. With
            // mmap off they come from the one heap and are kept like the rest: 0.3 s,
            // the same peak RSS. Training's arenas keep mmap (a non-main arena cannot
            // grow past 64 MB without it).
            libc::mallopt(libc::M_MMAP_MAX, 0);
        }
    }
}
