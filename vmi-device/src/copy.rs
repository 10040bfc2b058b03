//! Copying the few bytes of a small message without a call into `memcpy` (the call and its
//! size dispatch cost more than the copy at 8 bytes, the common message).
#![allow(unsafe_code)]

/// Copies `len` bytes from `src` to `dst`: 4 to 64 bytes as two or four possibly
/// overlapping word moves (a message-passing header and a small payload are 32 bytes),
/// anything else through `copy_nonoverlapping`.
///
/// # Safety
/// As [`std::ptr::copy_nonoverlapping`]: `src..src+len` readable, `dst..dst+len` writable,
/// the two not overlapping.
#[inline(always)]
pub unsafe fn copy_small(src: *const u8, dst: *mut u8, len: usize) {
    use std::ptr::{read_unaligned as rd, write_unaligned as wr};
    // SAFETY: every access lies inside the caller's two ranges: for 8..=16 bytes the two
    // 8-byte moves cover them, overlapping in the middle; likewise 4-byte moves for 4..=7,
    // 16-byte moves for 17..=32, and four 16-byte moves (two from each end) for 33..=64.
    unsafe {
        match len {
            8..=16 => {
                let (a, b) = (rd(src as *const u64), rd(src.add(len - 8) as *const u64));
                wr(dst as *mut u64, a);
                wr(dst.add(len - 8) as *mut u64, b);
            }
            17..=32 => {
                let (a, b) = (rd(src as *const u128), rd(src.add(len - 16) as *const u128));
                wr(dst as *mut u128, a);
                wr(dst.add(len - 16) as *mut u128, b);
            }
            33..=64 => {
                let a = rd(src as *const u128);
                let b = rd(src.add(16) as *const u128);
                let c = rd(src.add(len - 32) as *const u128);
                let d = rd(src.add(len - 16) as *const u128);
                wr(dst as *mut u128, a);
                wr(dst.add(16) as *mut u128, b);
                wr(dst.add(len - 32) as *mut u128, c);
                wr(dst.add(len - 16) as *mut u128, d);
            }
            4..=7 => {
                let (a, b) = (rd(src as *const u32), rd(src.add(len - 4) as *const u32));
                wr(dst as *mut u32, a);
                wr(dst.add(len - 4) as *mut u32, b);
            }
            _ => std::ptr::copy_nonoverlapping(src, dst, len),
        }
    }
}

/// Asks the CPU to fetch the cache line at `p` (x86-64; nothing elsewhere). A hint: it
/// reads no value and cannot fault, whatever `p` is. Ring readers use it on the line where
/// the next record will land while they wait for it (see `lent::is_empty_prefetch`).
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch touches no value and does not fault, for any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Where to start `len` bytes in a buffer at address `base` with room for `cap` bytes, so
/// that the kernel copies them in fast: the offset (below 64) that puts them at address
/// `like` modulo 64, the address their source has (or is expected to have), when the buffer
/// has room for it; otherwise 0.
///
/// The kernel copies into user memory (`read`, `process_vm_readv`) with `rep movsb`, which on
/// the AMD EPYC machine measured is about five times slower when the destination lies 1 to
/// 31 bytes past the source within a page: 1 MiB in 110 us aligned, 460-660 us 1 to 31 bytes
/// past (a C test of `process_vm_readv`; 106-137 us from 33 bytes on). Transports put the
/// fragments they read behind their own headers, which is how payloads landed a few bytes
/// past their source.
pub fn aligned_lead(base: usize, like: usize, len: usize, cap: usize) -> usize {
    let lead = like.wrapping_sub(base) % 64;
    if len.saturating_add(lead) <= cap {
        lead
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lead_puts_the_bytes_at_the_source_s_alignment_when_there_is_room() {
        for base in [0usize, 1, 16, 63, 64, 4095, usize::MAX - 7] {
            for like in [0usize, 8, 24, 0x20, 4051, usize::MAX] {
                let lead = aligned_lead(base, like, 100, 200);
                assert!(lead < 64);
                assert_eq!(base.wrapping_add(lead) % 64, like % 64, "{base} {like}");
                assert_eq!(aligned_lead(base, like, 100, 100 + lead), lead);
                if lead > 0 {
                    assert_eq!(aligned_lead(base, like, 100, 100 + lead - 1), 0, "no room");
                }
            }
        }
        assert_eq!(aligned_lead(0, 0, usize::MAX, usize::MAX), 0);
    }

    #[test]
    fn every_length_copies_exactly_its_bytes() {
        let src: Vec<u8> = (1..=80).collect();
        for len in 0..=80 {
            let mut dst = vec![0u8; 88];
            // SAFETY: both ranges in bounds, distinct vectors.
            unsafe { copy_small(src.as_ptr(), dst.as_mut_ptr().add(3), len) };
            assert_eq!(&dst[3..3 + len], &src[..len], "len {len}");
            assert!(dst[..3].iter().all(|&b| b == 0) && dst[3 + len..].iter().all(|&b| b == 0));
        }
    }
}
