//! The shard driver: one thread, one io_uring, one SO_REUSEPORT listener. It moves bytes and
//! completions between the kernel and its [`ShardCore`] and decides nothing itself.
//!
//! Per connection slot it only tracks which of its operations are in flight, so that a slot is
//! closed (and can be reused by the kernel) only once no operation references it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use yorker_uring::{Completion, Op, Ring, RingConfig, SendOutcome, UserData};

use crate::bus::Inbox;
use crate::core::shard_core::CloseOrder;
use crate::core::{Now, ShardCore};
use crate::stats::SharedStats;

/// What a shard thread needs.
#[derive(Debug)]
pub struct ShardSetup {
    /// Shard number.
    pub id: usize,
    /// CPU to pin the thread to.
    pub cpu: Option<usize>,
    /// This shard's SO_REUSEPORT listener.
    pub listener: socket2::Socket,
    /// Ring sizes.
    pub ring: RingConfig,
    /// Timer tick.
    pub tick: Duration,
    /// The inbound bus queue.
    pub inbox: Arc<Inbox>,
    /// Counters for the outside world.
    pub stats: Arc<SharedStats>,
    /// Set by the server to start a graceful shutdown.
    pub shutdown: Arc<AtomicBool>,
    /// Common start of monotonic time.
    pub epoch_instant: Instant,
}

#[derive(Debug, Default, Clone, Copy)]
struct SlotIo {
    generation: u32,
    recv_armed: bool,
    shut: bool,
    close_sent: bool,
}

/// Clock reads for the core.
fn now(start: Instant) -> Now {
    Now {
        ms: start.elapsed().as_millis() as u64,
        unix_us: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0),
    }
}

/// Runs a shard until shutdown completes. `started` is told once the ring is up (or why not).
pub fn run(
    setup: ShardSetup,
    mut core: ShardCore,
    started: std::sync::mpsc::Sender<io::Result<()>>,
) -> io::Result<()> {
    if let Some(cpu) = setup.cpu {
        // Best effort: a container may forbid it; the shard still works unpinned.
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let mut ring = match Ring::new(setup.ring) {
        Ok(r) => r,
        Err(e) => {
            let _ = started.send(Err(e));
            return Ok(());
        }
    };
    let mut driver = Driver {
        ios: vec![SlotIo::default(); setup.ring.files as usize],
        listener_fd: setup.listener.as_raw_fd(),
        accepting: true,
        accept_armed: false,
        ready: Vec::new(),
        closing: Vec::new(),
        batch: Vec::new(),
    };
    let start = setup.epoch_instant;
    let boot = driver
        .arm_accept(&mut ring)
        .and_then(|_| {
            ring.arm_doorbell(setup.inbox.bell(), UserData::new(Op::Doorbell, 0, 0).pack())
        })
        .and_then(|_| ring.arm_timer(setup.tick, UserData::new(Op::Timer, 0, 0).pack()))
        .and_then(|_| ring.submit().map(drop));
    if let Err(e) = boot {
        let _ = started.send(Err(e));
        return Ok(());
    }
    let _ = started.send(Ok(()));

    let mut cqes: Vec<Completion> = Vec::with_capacity(4096);
    let mut shutdown_seen = false;
    let mut hard_deadline: Option<Instant> = None;
    loop {
        let t = now(start);
        let fanout_start = Instant::now();
        let drained = setup.inbox.drain(|m| core.on_update(&m, t));
        if setup.shutdown.load(Ordering::SeqCst) && !shutdown_seen {
            shutdown_seen = true;
            driver.stop_accepting(&mut ring)?;
            core.begin_shutdown(t);
            hard_deadline =
                Some(Instant::now() + Duration::from_millis(core.config().drain_ms + 1000));
        }
        driver.flush(&mut ring, &mut core, t)?;
        if drained > 0 {
            // The sends are queued; the submit below starts them all at once.
            setup
                .stats
                .record_fanout(fanout_start.elapsed().as_micros() as u64);
        }
        setup
            .stats
            .store(&core.stats(), ring.enters(), ring.sends_in_flight());
        if shutdown_seen
            && (core.shutdown_complete() || hard_deadline.is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
        ring.submit_and_wait(1, None)?;
        cqes.clear();
        ring.completions(&mut cqes);
        let t = now(start);
        for c in &cqes {
            let Some(ud) = UserData::unpack(c.user_data) else {
                continue;
            };
            match ud.op {
                Op::Accept => driver.on_accept(&mut ring, &mut core, c, t)?,
                Op::Recv => driver.on_recv(&mut ring, &mut core, ud, c, t)?,
                Op::Send => driver.on_send(&mut ring, &mut core, ud, c, t)?,
                Op::Close => {
                    let io = &mut driver.ios[ud.slot as usize];
                    if io.generation == ud.generation && io.close_sent {
                        io.close_sent = false;
                        io.shut = false;
                        core.remove(ud.slot);
                    }
                }
                Op::Timer => {
                    ring.timer_fired();
                    core.on_tick(t);
                    if driver.accepting && !driver.accept_armed {
                        driver.arm_accept(&mut ring)?;
                    }
                    ring.arm_timer(setup.tick, UserData::new(Op::Timer, 0, 0).pack())?;
                }
                Op::Doorbell => {
                    ring.doorbell_fired();
                    ring.arm_doorbell(
                        setup.inbox.bell(),
                        UserData::new(Op::Doorbell, 0, 0).pack(),
                    )?;
                }
                Op::Cancel | Op::Shutdown | Op::Connect => {}
            }
        }
    }
    setup
        .stats
        .store(&core.stats(), ring.enters(), ring.sends_in_flight());
    Ok(())
}

struct Driver {
    ios: Vec<SlotIo>,
    listener_fd: i32,
    accepting: bool,
    accept_armed: bool,
    ready: Vec<u32>,
    closing: Vec<CloseOrder>,
    batch: Vec<u32>,
}

impl Driver {
    fn arm_accept(&mut self, ring: &mut Ring) -> io::Result<()> {
        ring.accept_multi(self.listener_fd, UserData::new(Op::Accept, 0, 0).pack())?;
        self.accept_armed = true;
        Ok(())
    }

    fn stop_accepting(&mut self, ring: &mut Ring) -> io::Result<()> {
        self.accepting = false;
        if self.accept_armed {
            ring.cancel(
                UserData::new(Op::Accept, 0, 0).pack(),
                UserData::new(Op::Cancel, 0, 0).pack(),
            )?;
        }
        Ok(())
    }

    fn on_accept(
        &mut self,
        ring: &mut Ring,
        core: &mut ShardCore,
        c: &Completion,
        t: Now,
    ) -> io::Result<()> {
        if !c.more() {
            self.accept_armed = false;
        }
        if c.result >= 0 {
            let slot = c.result as u32;
            let io = &mut self.ios[slot as usize];
            io.generation = io.generation.wrapping_add(1) & 0x00ff_ffff;
            io.recv_armed = true;
            io.shut = false;
            io.close_sent = false;
            core.open(slot, t);
            ring.recv_multi(slot, UserData::new(Op::Recv, slot, io.generation).pack())?;
        }
        // ENFILE (table full) or a transient error: the timer re-arms the accept.
        if !self.accept_armed && self.accepting && c.result >= 0 {
            self.arm_accept(ring)?;
        }
        Ok(())
    }

    fn on_recv(
        &mut self,
        ring: &mut Ring,
        core: &mut ShardCore,
        ud: UserData,
        c: &Completion,
        t: Now,
    ) -> io::Result<()> {
        let slot = ud.slot;
        let current = self.ios[slot as usize].generation == ud.generation;
        if let Some(bid) = c.buffer_id() {
            if current && c.result > 0 {
                core.on_bytes(slot, ring.buffer(bid, c.result as usize), t);
            }
            ring.recycle(bid);
        }
        if !current {
            return Ok(());
        }
        if !c.more() {
            let io = &mut self.ios[slot as usize];
            io.recv_armed = false;
            let retry = c.result > 0 || c.result == -libc::ENOBUFS;
            if retry && !io.shut && core.is_open(slot) {
                io.recv_armed = true;
                ring.recv_multi(slot, UserData::new(Op::Recv, slot, io.generation).pack())?;
            } else if c.result <= 0 {
                core.on_peer_closed(slot);
            }
        }
        self.maybe_close(ring, slot)
    }

    fn on_send(
        &mut self,
        ring: &mut Ring,
        core: &mut ShardCore,
        ud: UserData,
        c: &Completion,
        t: Now,
    ) -> io::Result<()> {
        match ring.complete_send(ud.slot, c.result) {
            SendOutcome::Done { .. } => core.on_send_done(ud.slot, t),
            SendOutcome::Resubmitted { .. } | SendOutcome::Unknown => {}
            SendOutcome::Failed { .. } => core.on_send_failed(ud.slot),
        }
        self.maybe_close(ring, ud.slot)
    }

    /// Closes, then starts the sends of every ready connection: one gathered send each, all
    /// submitted together by the next `io_uring_enter`.
    fn flush(&mut self, ring: &mut Ring, core: &mut ShardCore, t: Now) -> io::Result<()> {
        core.take_closing(&mut self.closing);
        let mut closing = std::mem::take(&mut self.closing);
        for o in closing.drain(..) {
            self.begin_close(ring, o)?;
        }
        self.closing = closing;
        core.take_ready(&mut self.ready);
        std::mem::swap(&mut self.ready, &mut self.batch);
        for &slot in &self.batch {
            let io = self.ios[slot as usize];
            if io.shut || ring.send_in_flight(slot) {
                continue;
            }
            let ud = UserData::new(Op::Send, slot, io.generation).pack();
            ring.send(slot, ud, |frames| {
                core.take_send(slot, frames, t);
            })?;
        }
        self.batch.clear();
        // Closes decided while flushing (none today) are picked up on the next iteration.
        Ok(())
    }

    /// Ends every operation on the slot, then (in `maybe_close`) closes it.
    ///
    /// Operations are cancelled by user_data, never shut down by slot: IORING_OP_SHUTDOWN is
    /// punted to io-wq and resolves the direct descriptor only when it runs, by which time a
    /// Close may have freed the slot and an accept may have put a new connection in it (we saw
    /// exactly that: new clients shut down by an old connection's shutdown). Closing the file
    /// still sends whatever the socket buffers hold, then FIN.
    fn begin_close(&mut self, ring: &mut Ring, o: CloseOrder) -> io::Result<()> {
        let slot = o.slot;
        let io = &mut self.ios[slot as usize];
        if io.shut {
            return Ok(());
        }
        io.shut = true;
        let generation = io.generation;
        if ring.send_in_flight(slot) {
            // A send stuck on a full socket never fails by itself: cancel it.
            ring.cancel(
                UserData::new(Op::Send, slot, generation).pack(),
                UserData::new(Op::Cancel, slot, generation).pack(),
            )?;
        }
        if io.recv_armed {
            ring.cancel(
                UserData::new(Op::Recv, slot, generation).pack(),
                UserData::new(Op::Cancel, slot, generation).pack(),
            )?;
        }
        self.maybe_close(ring, slot)
    }

    /// Closes the direct descriptor once nothing references it any more.
    fn maybe_close(&mut self, ring: &mut Ring, slot: u32) -> io::Result<()> {
        let io = &mut self.ios[slot as usize];
        if io.shut && !io.close_sent && !io.recv_armed && !ring.send_in_flight(slot) {
            io.close_sent = true;
            ring.close(slot, UserData::new(Op::Close, slot, io.generation).pack())?;
        }
        Ok(())
    }
}
