//! Gathered sends: one `sendmsg` over an iovec of shared frames, owned by the ring until the
//! kernel completes it.

use bytes::Bytes;

/// What became of a send when its completion arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Every byte went out; the frames have been released.
    Done {
        /// Frames sent.
        frames: usize,
        /// Bytes sent.
        bytes: usize,
    },
    /// A short send: the unsent remainder was resubmitted at once (same user_data). Frames are
    /// never split by anything else: the remainder goes out before any newer frame.
    Resubmitted {
        /// Bytes sent by this completion.
        sent: usize,
    },
    /// The send failed (or was cancelled); the frames have been released.
    Failed {
        /// Positive errno (ECANCELED after a cancel).
        errno: i32,
        /// Bytes never sent.
        unsent: usize,
    },
    /// No send was in flight on that slot (a stale completion).
    Unknown,
}

/// One in-flight gathered send. Boxed, so `msg` and `iov` keep their addresses while the
/// kernel holds pointers to them; recycled through the ring's pool to avoid an allocation per
/// send.
#[derive(Debug)]
pub(crate) struct SendOp {
    pub(crate) frames: Vec<Bytes>,
    pub(crate) iov: Vec<libc::iovec>,
    pub(crate) msg: libc::msghdr,
    /// Index of the first frame not yet completely sent.
    pub(crate) first: usize,
    /// Bytes of `frames[first]` already sent.
    pub(crate) offset: usize,
    pub(crate) user_data: u64,
}

impl SendOp {
    pub(crate) fn new() -> Box<Self> {
        Box::new(SendOp {
            frames: Vec::new(),
            iov: Vec::new(),
            // SAFETY-free: msghdr is plain old data; all-zero is a valid empty header.
            msg: zeroed_msghdr(),
            first: 0,
            offset: 0,
            user_data: 0,
        })
    }

    pub(crate) fn remaining(&self) -> usize {
        self.frames[self.first..]
            .iter()
            .map(|f| f.len())
            .sum::<usize>()
            - self.offset
    }

    /// Points `iov`/`msg` at the unsent part of the frames.
    pub(crate) fn prepare(&mut self) {
        self.iov.clear();
        for (i, f) in self.frames[self.first..].iter().enumerate() {
            let skip = if i == 0 { self.offset } else { 0 };
            self.iov.push(libc::iovec {
                iov_base: f[skip..].as_ptr() as *mut libc::c_void,
                iov_len: f.len() - skip,
            });
        }
        self.msg = zeroed_msghdr();
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
    }

    /// Accounts `n` sent bytes; returns true when everything is sent.
    pub(crate) fn advance(&mut self, mut n: usize) -> bool {
        while n > 0 && self.first < self.frames.len() {
            let left = self.frames[self.first].len() - self.offset;
            if n >= left {
                n -= left;
                self.first += 1;
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
        // Zero-length frames at the tail count as sent.
        while self.first < self.frames.len() && self.frames[self.first].len() == self.offset {
            self.first += 1;
            self.offset = 0;
        }
        self.first == self.frames.len()
    }

    /// Drops buffers grown beyond a typical gathered send, so a pooled op stays small.
    pub(crate) fn shrink(&mut self) {
        if self.frames.capacity() > 64 {
            self.frames = Vec::new();
            self.iov = Vec::new();
        }
    }

    pub(crate) fn reset(&mut self) {
        self.frames.clear();
        self.iov.clear();
        self.msg = zeroed_msghdr();
        self.first = 0;
        self.offset = 0;
    }
}

fn zeroed_msghdr() -> libc::msghdr {
    libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: std::ptr::null_mut(),
        msg_iovlen: 0,
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_over_frames() {
        let mut op = SendOp::new();
        op.frames = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"f"),
        ];
        assert_eq!(op.remaining(), 6);
        assert!(!op.advance(4));
        assert_eq!((op.first, op.offset), (1, 1));
        op.prepare();
        assert_eq!(op.iov.len(), 2);
        assert_eq!(op.iov[0].iov_len, 1);
        assert_eq!(op.remaining(), 2);
        assert!(op.advance(2));
    }
}
