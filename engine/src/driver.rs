//! The io_uring driver: one thread, one ring, one SO_REUSEPORT listener. It moves bytes and
//! completions between the kernel and its [`Shard`] and decides nothing about connections: the
//! shard's outputs become submissions, completions become the shard's inputs.
//!
//! The loop is bounded: between two looks at its completions it queues at most
//! `deliveries_per_round` deliveries from the bus (whole updates: at least one) and submits at
//! most `sends_per_round` gathered sends, and answers to what clients sent (PONG, SUBACK, ACK)
//! go first in the send order; so a core fanning out bursts to many connections still reads and
//! answers PINGs, SUBSCRIBEs, MESSAGEs and publishes within a short delay.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use yorker_uring::{Completion, Op, Ring, RingConfig, SendOutcome, UserData};

use crate::bus::{Inbox, ShardBus};
use crate::proto::placement::Placement;
use crate::proto::{Input, Now, Output, Shard, Token};
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
    /// The inbound bus queue.
    pub inbox: Arc<Inbox>,
    /// Every shard's inbox: where this shard's publishes go.
    pub bus: Arc<ShardBus>,
    /// Counters for the outside world.
    pub stats: Arc<SharedStats>,
    /// Set by the server to start a graceful shutdown.
    pub shutdown: Arc<AtomicBool>,
    /// With the shutdown: spread the GOAWAYs over this many ms (a lame-duck drain); 0: at once.
    pub drain_over_ms: Arc<AtomicU64>,
    /// Common start of monotonic time.
    pub epoch_instant: Instant,
    /// Gathered sends submitted at most between two reaps of the completion queue.
    pub sends_per_round: usize,
    /// Deliveries queued from the bus at most between two reaps (at least one update).
    pub deliveries_per_round: u64,
    /// Every shard's load and ring: connections accepted over the cap move to a shard with
    /// room through it.
    pub placement: Arc<Placement>,
}

/// While alive, tells the placement that this shard's ring takes connections; withdraws it
/// before the ring closes (a normal exit or a panic), so no hand-off targets a ring that is
/// gone.
struct RingListed<'a>(&'a Placement, usize);

impl Drop for RingListed<'_> {
    fn drop(&mut self) {
        self.0.set_ring(self.1, -1);
    }
}

/// Clock reads for the shard.
fn now(start: Instant) -> Now {
    Now {
        ms: start.elapsed().as_millis() as u64,
        unix_us: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0),
    }
}

fn ud(op: Op, t: Token) -> u64 {
    UserData::new(op, t.slot, t.generation).pack()
}

fn token(u: UserData) -> Token {
    Token {
        slot: u.slot,
        generation: u.generation,
    }
}

/// How long the accept waits before it is re-armed after the kernel refused it (the table is
/// full: slots free up as connections close).
const ACCEPT_RETRY: Duration = Duration::from_millis(20);
/// The longest a shard sleeps without looking at its shutdown flag and timers.
const MAX_WAIT: Duration = Duration::from_millis(500);

/// Runs a shard until shutdown completes. `started` is told once the ring is up (or why not).
pub fn run(
    setup: ShardSetup,
    mut shard: Shard,
    started: std::sync::mpsc::Sender<io::Result<()>>,
) -> io::Result<()> {
    let _span = tracing::info_span!("shard", id = setup.id).entered();
    if let Some(cpu) = setup.cpu {
        // Best effort: a container may forbid it; the shard still works unpinned.
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            tracing::warn!("could not pin to CPU {cpu}; running unpinned");
        }
    }
    let mut ring = match Ring::new(setup.ring) {
        Ok(r) => r,
        Err(e) => {
            let _ = started.send(Err(e));
            return Ok(());
        }
    };
    let listener = setup.listener.as_raw_fd();
    let accept_ud = UserData::new(Op::Accept, 0, 0).pack();
    let bell_ud = UserData::new(Op::Doorbell, 0, 0).pack();
    let boot = ring
        .accept_multi(listener, accept_ud)
        .and_then(|_| ring.arm_doorbell(setup.inbox.bell(), bell_ud))
        .and_then(|_| ring.submit().map(drop));
    if let Err(e) = boot {
        let _ = started.send(Err(e));
        return Ok(());
    }
    setup.placement.set_ring(setup.id, ring.ring_fd());
    let _listed = RingListed(&setup.placement, setup.id);
    let _ = started.send(Ok(()));
    tracing::info!(cpu = ?setup.cpu, slots = setup.ring.files, "shard up");
    let fault = fault_hook(setup.id);

    let start = setup.epoch_instant;
    let registry = shard.registry().clone();
    let mut accepting = true;
    let mut accept_armed = true;
    let mut accept_retry: Option<Instant> = None;
    let mut cqes: Vec<Completion> = Vec::with_capacity(4096);
    let mut frames: Vec<Bytes> = Vec::with_capacity(64);
    let mut shutdown_seen = false;
    let mut hard_deadline: Option<Instant> = None;
    // (first update drained, first send submitted) of the fan-out in progress.
    let mut burst: Option<(Instant, Option<Instant>)> = None;
    // Handles resolve against the process's metrics recorder (yorker's --admin-listen) now:
    // no lookup per record; without a recorder they do nothing.
    let shard_label = setup.id.to_string();
    let fanout_seconds =
        metrics::histogram!("yorker_fanout_seconds", "shard" => shard_label.clone());
    let spread_seconds =
        metrics::histogram!("yorker_fanout_spread_seconds", "shard" => shard_label);
    loop {
        if fault.is_some_and(|at| Instant::now() >= at) {
            panic!(
                "YORKER_TEST_KILL_SHARD: shard {} killed on purpose",
                setup.id
            );
        }
        let t = now(start);
        let fanout_start = Instant::now();
        setup
            .inbox
            .drain_control(|m| shard.handle(Input::Control(&m), t));
        let budget_end = shard.deliveries() + setup.deliveries_per_round;
        let drained = setup.inbox.drain_while(|m| {
            shard.handle(Input::Update(&m), t);
            shard.deliveries() < budget_end
        });
        if setup.inbox.take_overrun() {
            tracing::warn!(
                dropped = setup.inbox.dropped(),
                "inbox overflowed: updates dropped; resynchronising this shard's subscribers"
            );
            shard.handle(Input::Resync, t);
        }
        if setup.shutdown.load(Ordering::SeqCst) && !shutdown_seen {
            shutdown_seen = true;
            if accepting && accept_armed {
                ring.cancel(accept_ud, UserData::new(Op::Cancel, 0, 0).pack())?;
            }
            accepting = false;
            let over = setup.drain_over_ms.load(Ordering::SeqCst);
            shard.begin_drain(t, over);
            hard_deadline =
                Some(Instant::now() + Duration::from_millis(over + shard.config().drain_ms + 1000));
        }
        if shard.poll_timeout().is_some_and(|d| d <= t.ms) {
            shard.handle_timeout(t);
        }
        if accepting && !accept_armed && accept_retry.is_none_or(|at| Instant::now() >= at) {
            ring.accept_multi(listener, accept_ud)?;
            accept_armed = true;
            accept_retry = None;
        }
        // What the shard decided, then at most `sends_per_round` gathered sends: all submitted
        // together by the next enter.
        apply_outputs(&mut ring, &mut shard, &registry, &setup, t)?;
        if drained > 0 && burst.is_none() {
            burst = Some((fanout_start, None));
        }
        for _ in 0..setup.sends_per_round {
            let Some(tok) = shard.poll_transmit(t, &mut frames) else {
                break;
            };
            ring.send(tok.slot, ud(Op::Send, tok), |out| out.append(&mut frames))?;
            if let Some((_, first @ None)) = &mut burst {
                *first = Some(Instant::now());
            }
        }
        if drained > 0 {
            setup
                .stats
                .record_fanout(fanout_start.elapsed().as_micros() as u64);
        }
        // A burst is complete on this core when every delivery it queued was handed to the
        // kernel: from its first update drained to its last send submitted, and the spread
        // from its first send to its last.
        if !shard.has_transmits() {
            if let Some((began, first)) = burst.take() {
                let now = Instant::now();
                fanout_seconds.record(now.duration_since(began).as_secs_f64());
                if let Some(f) = first {
                    spread_seconds.record(now.duration_since(f).as_secs_f64());
                }
            }
        }
        setup
            .stats
            .store(&shard.stats(), ring.enters(), ring.sends_in_flight());
        if shutdown_seen
            && (shard.shutdown_complete() || hard_deadline.is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
        // Wait for a completion, the next deadline, or (with sends still queued) nothing at all.
        let (want, wait) = if shard.has_transmits() || !setup.inbox.is_empty() {
            (0, Duration::ZERO)
        } else {
            let mut wait = MAX_WAIT;
            if let Some(d) = shard.poll_timeout() {
                wait = wait.min(Duration::from_millis(d.saturating_sub(now(start).ms)));
            }
            if let Some(at) = accept_retry {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            (1, wait)
        };
        ring.submit_and_wait(want, Some(wait))?;
        cqes.clear();
        ring.completions(&mut cqes);
        let t = now(start);
        for c in &cqes {
            let Some(u) = UserData::unpack(c.user_data) else {
                continue;
            };
            match u.op {
                Op::Accept => {
                    if !c.more() {
                        accept_armed = false;
                    }
                    if c.result >= 0 {
                        shard.handle(
                            Input::Accepted {
                                slot: c.result as u32,
                            },
                            t,
                        );
                    } else if !accept_armed {
                        // ENFILE (table full) or a transient error: retry shortly.
                        accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    }
                }
                Op::Recv => {
                    let tok = token(u);
                    if let Some(buf) = ring.take_buffer(c) {
                        if c.result > 0 {
                            shard.handle(Input::Received(tok, &buf), t);
                        }
                    }
                    // A PUBLISH takes effect before the next input is read, so what a client
                    // sends later (on any connection) sees it, as it would on a single core.
                    apply_outputs(&mut ring, &mut shard, &registry, &setup, t)?;
                    if !c.more() {
                        shard.handle(Input::RecvEnded(tok, c.result), t);
                    }
                }
                Op::Send => match ring.complete_send(u.slot, c.result) {
                    SendOutcome::Done { .. } => shard.handle(Input::SendDone(token(u)), t),
                    SendOutcome::Failed { .. } => shard.handle(Input::SendFailed(token(u)), t),
                    SendOutcome::Resubmitted { .. } | SendOutcome::Unknown => {}
                },
                Op::Close => shard.handle(Input::Closed(token(u)), t),
                Op::HandOff => shard.handle(Input::HandedOff(token(u), c.result >= 0), t),
                Op::HandedIn => {
                    if c.result >= 0 {
                        shard.handle(
                            Input::HandedIn {
                                slot: c.result as u32,
                            },
                            t,
                        );
                    }
                }
                Op::Doorbell => {
                    ring.doorbell_fired();
                    ring.arm_doorbell(setup.inbox.bell(), bell_ud)?;
                }
                Op::Cancel | Op::Connect => {}
            }
        }
    }
    setup
        .stats
        .store(&shard.stats(), ring.enters(), ring.sends_in_flight());
    tracing::debug!("shard stopped");
    Ok(())
}

/// Test-only fault injection: `YORKER_TEST_KILL_SHARD=ID:MS` makes shard ID panic MS
/// milliseconds after it started, so tests can check that a dead shard is noticed, the others
/// drain, and the process exits non-zero. Unset (always, in production) it does nothing.
fn fault_hook(id: usize) -> Option<Instant> {
    let v = std::env::var("YORKER_TEST_KILL_SHARD").ok()?;
    let (shard, ms) = v.split_once(':')?;
    let (shard, ms): (usize, u64) = (shard.parse().ok()?, ms.parse().ok()?);
    (shard == id).then(|| Instant::now() + Duration::from_millis(ms))
}

/// Turns the shard's outputs into submissions; a PUBLISH is applied to the registry (sequence
/// number, one encode) and handed to every shard's inbox, in order.
fn apply_outputs(
    ring: &mut Ring,
    shard: &mut Shard,
    registry: &crate::proto::registry::Registry,
    setup: &ShardSetup,
    t: Now,
) -> io::Result<()> {
    let bus: &ShardBus = &setup.bus;
    while let Some(o) = shard.poll_output() {
        match o {
            Output::ArmRecv(tok) => ring.recv_multi(tok.slot, ud(Op::Recv, tok))?,
            Output::CancelRecv(tok) => ring.cancel(ud(Op::Recv, tok), ud(Op::Cancel, tok))?,
            Output::CancelSend(tok) => ring.cancel(ud(Op::Send, tok), ud(Op::Cancel, tok))?,
            Output::Close(tok) => ring.close(tok.slot, ud(Op::Close, tok))?,
            Output::HandOff { token: tok, to } => match setup.placement.ring(to) {
                Some(fd) => ring.send_fixed_to_ring(
                    fd,
                    tok.slot,
                    UserData::new(Op::HandedIn, 0, 0).pack(),
                    ud(Op::HandOff, tok),
                )?,
                None => shard.handle(Input::HandedOff(tok, false), t),
            },
            Output::Publish(p) => {
                let skip = p.skip;
                let (seq, _) = registry.publish_once(
                    p.idempotency_key.as_deref(),
                    &p.topic,
                    p.flags,
                    &p.payload,
                    t.unix_us,
                    &mut |mut m| {
                        m.skip = skip;
                        bus.publish(m)
                    },
                );
                if let Some(origin) = p.ack {
                    shard.handle(Input::Published { origin, seq }, t);
                }
            }
            Output::Control(dest, msg) => {
                if let Err(m) = bus.send_control(dest, msg) {
                    shard.handle(Input::ControlRefused(&m), t);
                }
            }
        }
    }
    Ok(())
}
