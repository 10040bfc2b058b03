//! The doorbell's memory barrier, made asymmetric with `membarrier(2)`.
//!
//! A sender publishes a record and then reads the consumer's `sleeping` flag; a consumer
//! about to sleep sets the flag and then reads the producer's position once more. Each side
//! stores one word and then loads the other's (the Dekker pattern), so each needs a full
//! barrier between its store and its load, or both can miss the other: the record waits
//! in the ring while its reader sleeps. With a plain fence on both sides, every send pays
//! one full fence (`mfence` or a locked instruction on x86-64), which also makes the
//! sending core wait until its stores reached the cache, a transfer of the position's line
//! from the reader's core. On the 2-core development VM that capped 8-byte streaming at
//! about 12 million messages a second; without the fence, 19 million.
//!
//! The send is frequent and the sleep is rare, so the barrier is moved to the sleep: a
//! process registers for `MEMBARRIER_CMD_GLOBAL_EXPEDITED` when its device is created
//! ([`register`]); its sends then need only a compiler barrier between the publication and
//! the look at `sleeping`, and a peer about to sleep calls [`heavy`] between setting its flag
//! and its last look. That call makes every running thread of every registered process pass
//! a full memory barrier before it returns, so the sender's store and load are ordered as a
//! fence would have ordered them (the pattern of liburcu and of Folly's asymmetric
//! barriers). It costs the sleeper about 0.3 µs, next to a sleep that costs microseconds
//! anyway.
//!
//! Each side says in the handshake whether it registered ([`crate::wire::HELLO_FLAG_BARRIER`],
//! the answer's barrier byte). A connection's sends go without the fence only when both did:
//! this process is registered, so a peer's barrier reaches its threads, and the peer
//! registered, so its calls work (a registration that succeeded proves the kernel has the
//! command and no filter refuses it). Otherwise both sides keep the fence.

use std::io;

/// `membarrier(2)` commands (Linux `uapi/linux/membarrier.h`).
const CMD_QUERY: libc::c_long = 0;
const CMD_GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
const CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;

fn membarrier(cmd: libc::c_long) -> io::Result<libc::c_long> {
    // SAFETY: membarrier takes two integer arguments and touches no memory of the caller.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Registers this process for global expedited barriers. `Ok(())` when this process's sends
/// may go without the fence on connections whose peer registered too; the reason otherwise
/// (an old kernel, a seccomp filter), which the caller logs. Asked of the kernel at every
/// call (once per device), never cached: a child forked after a registration asks again
/// rather than trust its parent's answer. Registering again is harmless.
pub fn register() -> Result<(), String> {
    let have = membarrier(CMD_QUERY).map_err(|e| format!("membarrier(2): {e}"))?;
    let need = CMD_GLOBAL_EXPEDITED | CMD_REGISTER_GLOBAL_EXPEDITED;
    if have & need != need {
        return Err(format!(
            "the kernel's membarrier(2) lacks global expedited barriers (commands {have:#x})"
        ));
    }
    membarrier(CMD_REGISTER_GLOBAL_EXPEDITED)
        .map(|_| ())
        .map_err(|e| format!("membarrier(2) registration: {e}"))
}

/// A full memory barrier on every running thread of every registered process, this one's
/// included; called by a process about to sleep, between setting its `sleeping` flags and
/// its last look at the rings. An error means the barrier may not have happened: the
/// caller must not sleep without a short timeout.
pub fn heavy() -> io::Result<()> {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    membarrier(CMD_GLOBAL_EXPEDITED).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where registration works (every kernel since 4.16 without a filter against it), the
    /// barrier does too, and registering again gives the same answer.
    #[test]
    fn a_registered_process_can_issue_the_barrier() {
        match register() {
            Ok(()) => {
                heavy().expect("the barrier after a registration that succeeded");
                assert_eq!(register(), Ok(()));
            }
            Err(why) => {
                eprintln!("membarrier unavailable here ({why}): the fence stays");
                assert_eq!(register(), Err(why));
            }
        }
    }
}
