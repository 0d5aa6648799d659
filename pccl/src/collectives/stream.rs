//! Copies of results into the caller's memory that bypass the cache.
//!
//! A large op writes its results once, into a receive buffer far larger than the caches,
//! and reads none of them back before it ends (docs/ARCHITECTURE.md §5, "Stores"). An
//! ordinary store into such cold memory first reads each cache line in (to own it), so
//! it moves every result byte over the memory bus twice; a non-temporal ("streaming")
//! store writes the line without reading it. Measured here, 1 MiB frames copied into a
//! 128 MiB buffer: 7–9 GB/s with `copy_from_slice`, 18–19 GB/s streamed (BENCHMARKS.md).
//! Small ops keep ordinary copies: their results may still be in the cache when the
//! caller reads them.

/// Results buffers at least this large are written with streaming stores: several times
/// the second-level cache of the cores this runs on, so nothing of them would stay cached.
pub(crate) const STREAM_MIN_BYTES: usize = 8 << 20;

/// Copies `src` into `dst` (equal lengths), streaming when `stream` is set and the CPU
/// has streaming stores (every x86-64 has them, as SSE2); an ordinary copy otherwise.
pub(crate) fn store(dst: &mut [u8], src: &[u8], stream: bool) {
    assert_eq!(dst.len(), src.len(), "store: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if stream {
        return streamed(dst, src);
    }
    let _ = stream;
    dst.copy_from_slice(src);
}

/// Streaming copy: ordinary stores up to `dst`'s first 16-byte boundary and after its last,
/// 16-byte non-temporal stores in between, then a store fence.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // the one unsafe block of this crate: intrinsics take raw pointers
fn streamed(dst: &mut [u8], src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};

    const LANE: usize = 16;
    let head = dst.as_ptr().align_offset(LANE).min(dst.len());
    let body = (dst.len() - head) / LANE * LANE;
    dst[..head].copy_from_slice(&src[..head]);
    // SAFETY: SSE2 is part of x86-64. Every lane `i` reads `src[head + i..][..16]` and
    // writes `dst[head + i..][..16]`, both inside the slices (`head + body <= len`);
    // `dst + head` is 16-byte aligned (`align_offset`), as `_mm_stream_si128` needs, and
    // the two slices cannot overlap (one is borrowed mutably).
    unsafe {
        let (d, s) = (dst.as_mut_ptr().add(head), src.as_ptr().add(head));
        for i in (0..body).step_by(LANE) {
            let lane = _mm_loadu_si128(s.add(i).cast::<__m128i>());
            _mm_stream_si128(d.add(i).cast::<__m128i>(), lane);
        }
        // Streaming stores are weakly ordered: fence them before whatever tells another
        // thread the results are there (a lock, a channel, the op's return).
        _mm_sfence();
    }
    dst[head + body..].copy_from_slice(&src[head + body..]);
}

#[cfg(test)]
mod tests {
    use super::store;

    /// Every alignment of destination and source, lengths around the lane size and
    /// beyond: the bytes arrive exactly, and nothing outside `dst` is touched.
    #[test]
    fn streamed_copies_are_exact_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in [0, 1, 15, 16, 17, 31, 64, 100, 4093] {
            for d_off in 0..17 {
                for s_off in [0, 1, 5, 16] {
                    let mut dst = vec![0xEEu8; len + 40];
                    let s = &src[s_off..s_off + len];
                    store(&mut dst[d_off..d_off + len], s, true);
                    assert_eq!(&dst[d_off..d_off + len], s, "len {len} at {d_off}/{s_off}");
                    assert!(dst[..d_off].iter().all(|&b| b == 0xEE));
                    assert!(dst[d_off + len..].iter().all(|&b| b == 0xEE));
                }
            }
        }
    }
}
