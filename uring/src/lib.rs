//! # yorker-uring: the io_uring layer
//!
//! The one place in yorker with `unsafe` code. Everything the kernel may read or write while an
//! operation is in flight is owned here, so that no caller can free it early:
//!
//! * [`Ring`]: a `SINGLE_ISSUER | DEFER_TASKRUN` ring with a sparse fixed-file table (direct
//!   descriptors), one eventfd read, and at most one gathered send per direct descriptor, whose
//!   frames the ring holds until the send's completion.
//! * [`BufRing`]: a provided-buffer ring for multishot receives (no per-connection buffer); a
//!   received buffer comes out as a [`RecvBuf`] guard that gives it back when dropped.
//! * [`EventFd`]: the cross-thread doorbell.
//! * [`UserData`]: how a completion names its operation.
//!
//! Callers build nothing by hand: every submission goes through a method that knows which memory
//! the operation references.

#![deny(clippy::undocumented_unsafe_blocks)]

mod bufring;
mod eventfd;
mod ring;
mod send;
mod user_data;

pub use bufring::BufRing;
pub use eventfd::EventFd;
pub use ring::{Completion, RecvBuf, Ring, RingConfig};
pub use send::SendOutcome;
pub use user_data::{Op, UserData};

/// Returns the current soft RLIMIT_NOFILE, the ceiling of one ring's fixed-file table.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `r`, a valid local that outlives the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if rc == 0 {
        r.rlim_cur
    } else {
        1024
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the new soft limit. A ring's
/// fixed-file table may hold as many entries as this soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read/write the local `r`, which outlives them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

/// Gives free heap memory back to the kernel (glibc's `malloc_trim`): after a burst of
/// connections or a flood of frames has come and gone, the pages the allocator keeps free stop
/// counting as resident. Returns true when something was released. A no-op elsewhere than
/// glibc.
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and may be called from any thread at any time;
        // it only returns whole free pages of the allocator's own arenas to the kernel.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
