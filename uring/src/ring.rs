//! The ring: setup, submission helpers that own the memory they reference, completions.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::bufring::BufRing;
use crate::eventfd::EventFd;
use crate::send::{SendOp, SendOutcome};

/// Sizes of a ring and its tables.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Submission queue entries (power of two).
    pub sq_entries: u32,
    /// Completion queue entries (sized for multishot bursts).
    pub cq_entries: u32,
    /// Slots of the sparse fixed-file table (at most RLIMIT_NOFILE).
    pub files: u32,
    /// Provided receive buffers (power of two, <= 32768); 0 for none.
    pub buf_entries: u16,
    /// Size of each receive buffer.
    pub buf_size: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            sq_entries: 4096,
            cq_entries: 16384,
            files: 1024,
            buf_entries: 1024,
            buf_size: 4096,
        }
    }
}

/// A completion, copied out of the CQ.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The operation's user_data (see [`crate::UserData`]).
    pub user_data: u64,
    /// Result: >= 0 success value, < 0 negated errno.
    pub result: i32,
    /// CQE flags (buffer id, MORE).
    pub flags: u32,
}

impl Completion {
    /// Provided buffer id, when the kernel picked one.
    pub fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
    /// True when a multishot operation stays armed.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// A received buffer, lent by the kernel's provided-buffer ring: derefs to the bytes, and goes
/// back to the kernel when dropped. It borrows the ring, so no buffer outlives its pool and no
/// buffer can be recycled twice.
#[derive(Debug)]
pub struct RecvBuf<'a> {
    bufs: &'a mut BufRing,
    bid: u16,
    len: usize,
}

impl std::ops::Deref for RecvBuf<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the kernel wrote `len` bytes into buffer `bid` before posting the completion
        // that named it, and does not touch it again until `recycle` republishes it, which only
        // happens in `drop` below; this guard is the only handle to `bid` (taken once per
        // completion).
        unsafe { self.bufs.bytes(self.bid, self.len) }
    }
}

impl Drop for RecvBuf<'_> {
    fn drop(&mut self) {
        self.bufs.recycle(self.bid);
    }
}

/// One io_uring with everything its in-flight operations reference.
///
/// Field order matters for Drop: the buffer ring is unregistered explicitly in `Drop`, then the
/// ring fd closes, then the memory behind sends, timer and doorbell is freed.
pub struct Ring {
    uring: IoUring,
    bufs: Option<BufRing>,
    /// At most one send per direct descriptor, indexed by slot.
    sends: Vec<Option<Box<SendOp>>>,
    // Boxed on purpose: the kernel holds pointers into a SendOp, so it must keep its address
    // when it moves between the pool and `sends`.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<SendOp>>,
    bell_buf: Box<[u8; 8]>,
    bell_armed: bool,
    files: u32,
    enters: u64,
    in_flight: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("files", &self.files)
            .field("enters", &self.enters)
            .field(
                "sends_in_flight",
                &self.sends.iter().filter(|s| s.is_some()).count(),
            )
            .finish_non_exhaustive()
    }
}

const BUF_GROUP: u16 = 0;

/// Finished sends kept for reuse at most (the rest is freed).
const POOL_CAP: usize = 1024;

impl Ring {
    /// Builds a `SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG` ring with a sparse fixed-file table of
    /// `cfg.files` slots and, if asked, a provided-buffer ring. Must be used from the thread that
    /// created it (single issuer).
    pub fn new(cfg: RingConfig) -> io::Result<Ring> {
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            // The kernel flags pending deferred work (a receive that completed) in the SQ ring,
            // and the enter that submits a round of sends then also runs it (GETEVENTS) instead
            // of leaving it until the core next blocks: without it, a PING that arrives while a
            // core fans out a burst waits for the whole burst.
            .setup_taskrun_flag()
            .setup_submit_all()
            .setup_cqsize(cfg.cq_entries)
            .build(cfg.sq_entries)?;
        if cfg.files > 0 {
            uring.submitter().register_files_sparse(cfg.files)?;
        }
        let bufs = if cfg.buf_entries > 0 {
            Some(BufRing::register(
                &uring,
                BUF_GROUP,
                cfg.buf_entries,
                cfg.buf_size,
            )?)
        } else {
            None
        };
        let mut sends = Vec::new();
        sends.resize_with(cfg.files as usize, || None);
        Ok(Ring {
            uring,
            bufs,
            sends,
            pool: Vec::new(),
            bell_buf: Box::new([0; 8]),
            bell_armed: false,
            files: cfg.files,
            enters: 0,
            in_flight: 0,
        })
    }

    /// Slots in the fixed-file table.
    pub fn files(&self) -> u32 {
        self.files
    }

    /// Number of `io_uring_enter` calls made so far.
    pub fn enters(&self) -> u64 {
        self.enters
    }

    /// Queues an SQE, submitting first if the SQ is full.
    ///
    /// # Safety
    /// Every buffer `e` references must stay valid until its completion.
    unsafe fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from the caller's contract.
            if unsafe { self.uring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Submits queued SQEs without waiting.
    pub fn submit(&mut self) -> io::Result<usize> {
        self.enters += 1;
        match self.uring.submit() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(0),
            r => r,
        }
    }

    /// Submits and waits for at least `want` completions, or until `timeout`.
    pub fn submit_and_wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<usize> {
        self.enters += 1;
        let r = match timeout {
            None => self.uring.submit_and_wait(want),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(want, &args)
            }
        };
        match r {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::ETIME) | Some(libc::EBUSY)
                ) =>
            {
                Ok(0)
            }
            r => r,
        }
    }

    /// Moves completions into `out` (appending).
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        for c in self.uring.completion() {
            out.push(Completion {
                user_data: c.user_data(),
                result: c.result(),
                flags: c.flags(),
            });
        }
    }

    /// Arms a multishot accept on `listener` that installs each connection into a free slot of
    /// the fixed-file table (direct descriptor); the completion's result is the slot.
    pub fn accept_multi(&mut self, listener: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            .allocate_file_index(true)
            .build()
            .user_data(user_data);
        // SAFETY: references no memory; the listener fd is pinned by the kernel while armed.
        unsafe { self.push(&e) }
    }

    /// The buffer group receives draw from.
    fn bgid(&self) -> io::Result<u16> {
        self.bufs
            .as_ref()
            .map(|b| b.bgid())
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "ring has no buffer ring"))
    }

    /// Arms a multishot receive on direct descriptor `slot`, drawing from the buffer ring.
    pub fn recv_multi(&mut self, slot: u32, user_data: u64) -> io::Result<()> {
        let bgid = self.bgid()?;
        let e = opcode::RecvMulti::new(types::Fixed(slot), bgid)
            .build()
            .user_data(user_data);
        // SAFETY: the buffers belong to `self.bufs`, which stays registered until Drop.
        unsafe { self.push(&e) }
    }

    /// Arms one (not multishot) receive on `slot` that picks a buffer from the buffer ring.
    /// Lets a caller pace its reads, e.g. to simulate a slow reader.
    pub fn recv_once(&mut self, slot: u32, user_data: u64) -> io::Result<()> {
        let bgid = self.bgid()?;
        let e = opcode::Recv::new(types::Fixed(slot), std::ptr::null_mut(), 0)
            .buf_group(bgid)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data);
        // SAFETY: no caller memory: the kernel picks a buffer of `self.bufs`, registered until Drop.
        unsafe { self.push(&e) }
    }

    /// The provided buffer the kernel filled for completion `c`, if it picked one: a guard that
    /// derefs to the received bytes and hands the buffer back to the kernel when dropped. Call
    /// it once per completion (a completion names its buffer once).
    pub fn take_buffer(&mut self, c: &Completion) -> Option<RecvBuf<'_>> {
        let bid = c.buffer_id()?;
        let bufs = self.bufs.as_mut()?;
        let len = (c.result.max(0) as usize).min(bufs.buf_size() as usize);
        Some(RecvBuf { bufs, bid, len })
    }

    /// Sends in flight on this ring (a gauge: returns to 0 once every send completed, which is
    /// how tests prove no send buffer is leaked).
    pub fn sends_in_flight(&self) -> usize {
        self.in_flight
    }

    /// True while a send is in flight on `slot`.
    pub fn send_in_flight(&self, slot: u32) -> bool {
        matches!(self.sends.get(slot as usize), Some(Some(_)))
    }

    /// Starts one gathered send on `slot` over the frames that `fill` pushes (at most
    /// `max_frames`). Returns the bytes submitted; 0 (and nothing submitted) when `fill` pushed
    /// nothing. Fails with `EBUSY` if a send is already in flight on `slot`: only one send per
    /// stream socket may be outstanding, or the kernel may reorder them.
    pub fn send(
        &mut self,
        slot: u32,
        user_data: u64,
        fill: impl FnOnce(&mut Vec<Bytes>),
    ) -> io::Result<usize> {
        let idx = slot as usize;
        if idx >= self.sends.len() {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if self.sends[idx].is_some() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        let mut op = self.pool.pop().unwrap_or_else(SendOp::new);
        fill(&mut op.frames);
        if op.frames.is_empty() {
            self.recycle_op(op);
            return Ok(0);
        }
        op.user_data = user_data;
        op.prepare();
        let bytes = op.remaining();
        let e = opcode::SendMsg::new(types::Fixed(slot), &op.msg as *const libc::msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(user_data);
        self.sends[idx] = Some(op);
        self.in_flight += 1;
        // SAFETY: `msg`, `iov` and the frames they point into live in the boxed SendOp now
        // stored in `self.sends[idx]`; it is only taken out in `complete_send`, i.e. after the
        // kernel posted this operation's completion, and Drop closes the ring before freeing it.
        unsafe { self.push(&e) }?;
        Ok(bytes)
    }

    /// Accounts the completion of the send on `slot`: releases it, or resubmits the unsent
    /// remainder of a short send.
    pub fn complete_send(&mut self, slot: u32, result: i32) -> SendOutcome {
        let Some(mut op) = self.sends.get_mut(slot as usize).and_then(|s| s.take()) else {
            return SendOutcome::Unknown;
        };
        // Back to 1 below if the remainder is resubmitted.
        self.in_flight -= 1;
        if result < 0 {
            let unsent = op.remaining();
            op.reset();
            self.recycle_op(op);
            return SendOutcome::Failed {
                errno: -result,
                unsent,
            };
        }
        let frames = op.frames.len();
        let total = op.remaining();
        if op.advance(result as usize) {
            op.reset();
            self.recycle_op(op);
            return SendOutcome::Done {
                frames,
                bytes: total,
            };
        }
        op.prepare();
        let e = opcode::SendMsg::new(types::Fixed(slot), &op.msg as *const libc::msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(op.user_data);
        self.sends[slot as usize] = Some(op);
        self.in_flight += 1;
        // SAFETY: as in `send`: the op is back in `self.sends` (a Box, so `msg` did not move)
        // and stays there until this resubmission completes.
        match unsafe { self.push(&e) } {
            Ok(()) => SendOutcome::Resubmitted {
                sent: result as usize,
            },
            Err(err) => {
                let mut op = self.sends[slot as usize].take().expect("just stored");
                self.in_flight -= 1;
                let unsent = op.remaining();
                op.reset();
                self.recycle_op(op);
                SendOutcome::Failed {
                    errno: err.raw_os_error().unwrap_or(libc::EIO),
                    unsent,
                }
            }
        }
    }

    /// Returns a finished send's memory to the pool, which keeps at most `POOL_CAP` of them:
    /// a burst of sends (a reconnect storm, a broadcast) must not pin its peak memory forever.
    fn recycle_op(&mut self, mut op: Box<SendOp>) {
        if self.pool.len() < POOL_CAP {
            op.shrink();
            self.pool.push(op);
        }
    }

    /// Asks the kernel to cancel the operation whose user_data is `target`.
    pub fn cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        // SAFETY: references no memory.
        unsafe { self.push(&e) }
    }

    /// Closes direct descriptor `slot`, freeing the slot for a later accept. Call only once no
    /// operation on the slot is in flight.
    pub fn close(&mut self, slot: u32, user_data: u64) -> io::Result<()> {
        let e = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(user_data);
        // SAFETY: references no memory.
        unsafe { self.push(&e) }
    }

    /// Sends direct descriptor `slot` to the ring `target` (another thread's): the kernel
    /// installs the socket into a free slot of `target`'s fixed-file table and posts a
    /// completion there with `target_user_data` and that slot as its result; this ring gets a
    /// completion with `user_data` (negative result: nothing was installed). `slot` stays in
    /// this ring's table until closed here. Call only with nothing else in flight on `slot`.
    pub fn send_fixed_to_ring(
        &mut self,
        target: RawFd,
        slot: u32,
        target_user_data: u64,
        user_data: u64,
    ) -> io::Result<()> {
        let e = opcode::MsgRingSendFd::new(
            types::Fd(target),
            types::Fixed(slot),
            types::DestinationSlot::auto_target(),
            target_user_data,
        )
        .build()
        .user_data(user_data);
        // SAFETY: references no memory. A `target` that is not an io_uring (a ring that has
        // gone, its fd number reused) fails with EBADFD; the kernel checks it.
        unsafe { self.push(&e) }
    }

    /// The ring's own file descriptor (the target of [`Ring::send_fixed_to_ring`]).
    pub fn ring_fd(&self) -> RawFd {
        self.uring.as_raw_fd()
    }

    /// Arms an 8-byte read of the doorbell; its completion means somebody rang.
    pub fn arm_doorbell(&mut self, bell: &EventFd, user_data: u64) -> io::Result<()> {
        if self.bell_armed {
            return Ok(());
        }
        let e = opcode::Read::new(types::Fd(bell.as_raw_fd()), self.bell_buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data);
        // SAFETY: the 8-byte buffer is boxed in `self` and only re-armed after this read's
        // completion (`bell_armed`). The eventfd must outlive the ring; drivers own both.
        unsafe { self.push(&e) }?;
        self.bell_armed = true;
        Ok(())
    }

    /// Records that the doorbell read completed.
    pub fn doorbell_fired(&mut self) {
        self.bell_armed = false;
    }

    /// Installs an ordinary socket `fd` into slot `slot` of the fixed-file table. The caller may
    /// close `fd` afterwards: the table holds its own reference. This is how a client holds more
    /// sockets than its fd limit.
    pub fn register_fd(&mut self, slot: u32, fd: RawFd) -> io::Result<()> {
        self.uring.submitter().register_files_update(slot, &[fd])?;
        Ok(())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Stop the kernel from picking buffers before their memory goes; in-flight sends keep
        // their memory until the ring fd is closed (by `uring`'s own drop, which runs before
        // `sends` is dropped because it is declared first).
        if let Some(b) = &self.bufs {
            b.unregister(&self.uring);
        }
    }
}
