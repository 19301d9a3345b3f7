//! One connection slot (a direct descriptor of the shard's ring) as one state machine: the only
//! record of a connection's life, its I/O included.
//!
//! ```text
//!            Accepted                     fail/GOAWAY: Draining (still Live)
//!   Free ───────────────► Live ───────────────────────────────┐
//!    ▲                     │  abort, or flushed after Draining │
//!    │                     ▼                                    │
//!    │      Closing { recv armed?, send in flight? } ◄──────────┘
//!    │                     │  CancelRecv / CancelSend emitted; their ends arrive
//!    │                     ▼  (RecvEnded, SendFailed/SendDone)
//!    └── Closed ─── CloseSubmitted   (Close emitted only once nothing is in flight)
//! ```
//!
//! A connection accepted while the shard is at its cap takes a detour when another shard has
//! room: `Free -> Moving` (HandOff asked for, nothing armed) `-> CloseSubmitted` once the other
//! shard holds the socket, or `-> Live` (refused with `server_full`) when it could not be moved.
//!
//! Every I/O the shard asks for carries a [`Token`]: the slot and the generation of its current
//! occupant. The generation changes at every accept, so a completion of an earlier occupant
//! (a late cancel, a stale receive) is recognised and ignored. Close is emitted only when no
//! operation references the slot any more, so the kernel can hand the slot to a new connection
//! without any operation of the old one touching it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use yorker_wire::{ErrorCode, Role};

use super::auth::Grant;
use super::outbox::{Entry, Outbox, Pushed};
use super::{Now, Output, Shard};

/// Linux's ENOBUFS: a multishot receive ran out of provided buffers and must be re-armed.
const ENOBUFS: i32 = 105;

/// A connection as the driver names it in its operations and completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    /// The fixed-file slot.
    pub slot: u32,
    /// The generation of the slot's occupant (24 bits).
    pub generation: u32,
}

/// Where a connection's session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for HELLO.
    AwaitHello,
    /// HELLO accepted.
    Active(Role),
    /// Its last frame (ERROR or GOAWAY) is queued; it closes once flushed or at the deadline.
    Draining {
        /// Monotonic ms.
        deadline_ms: u64,
    },
}

/// A live connection: its session, its queue, and the I/O the shard has asked for. Kept small:
/// a shard holds hundreds of thousands.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) phase: Phase,
    /// A partial frame between reads (rare: most reads end on a frame boundary).
    pub(crate) pending: Option<Box<BytesMut>>,
    pub(crate) outbox: Outbox,
    /// What the session's token allows (none: anonymous, or authenticated by a key).
    pub(crate) grant: Option<Arc<Grant>>,
    /// A multishot receive is armed.
    pub(crate) recv_armed: bool,
    /// A gathered send is in flight (at most one per socket).
    pub(crate) sending: bool,
    /// Queued in the shard's ready list.
    pub(crate) in_ready: bool,
    /// Negotiated protocol version.
    pub(crate) version: u8,
    /// Unique per session within the epoch: the high half of its session id.
    pub(crate) tag: u32,
    // Milliseconds since the server started, as u32 (49 days; timeouts compare differences
    // with wrapping arithmetic).
    pub(crate) opened_ms: u32,
    pub(crate) last_rx_ms: u32,
    pub(crate) last_tx_ms: u32,
    pub(crate) send_started_ms: u32,
    /// When the first byte of the partial frame in `pending` arrived.
    pub(crate) partial_since_ms: u32,
    /// The deadline this connection is registered for in the shard's timer heap (low 32 bits
    /// of the ms clock); entries for other deadlines are stale.
    pub(crate) wake: Option<u32>,
}

impl Conn {
    fn new(now: Now) -> Conn {
        let t = now.ms as u32;
        Conn {
            phase: Phase::AwaitHello,
            pending: None,
            outbox: Outbox::default(),
            grant: None,
            recv_armed: false,
            sending: false,
            in_ready: false,
            version: 0,
            tag: 0,
            opened_ms: t,
            last_rx_ms: t,
            last_tx_ms: t,
            send_started_ms: 0,
            partial_since_ms: 0,
            wake: None,
        }
    }
}

/// A slot's state.
#[derive(Debug, Default)]
pub(crate) enum State {
    /// No connection: a new accept may take the slot.
    #[default]
    Free,
    /// A connection (handshake, open, or draining).
    Live(Conn),
    /// The session is over; cancellations are on their way. Close follows when both ends
    /// have arrived.
    Closing {
        /// The receive has not ended yet.
        recv_armed: bool,
        /// The send has not completed yet.
        send_in_flight: bool,
    },
    /// Close was asked for; the slot is free at its completion.
    CloseSubmitted,
    /// Accepted over this shard's cap and on its way to a shard with room
    /// ([`Output::HandOff`]); nothing is armed. Closed once the other shard has it.
    Moving,
}

/// One slot of the shard's table.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) generation: u32,
    pub(crate) state: State,
}

/// A slot's state as tests and diagnostics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// No connection.
    Free,
    /// Waiting for HELLO.
    Handshake,
    /// A session.
    Open,
    /// Flushing its last frame.
    Draining,
    /// Waiting for its receive and/or send to end before Close.
    Closing {
        /// Receive still armed.
        recv_armed: bool,
        /// Send still in flight.
        send_in_flight: bool,
    },
    /// Close submitted.
    CloseSubmitted,
    /// Being handed to another shard.
    Moving,
}

impl Slot {
    pub(crate) fn public_state(&self) -> SlotState {
        match &self.state {
            State::Free => SlotState::Free,
            State::Live(c) => match c.phase {
                Phase::AwaitHello => SlotState::Handshake,
                Phase::Active(_) => SlotState::Open,
                Phase::Draining { .. } => SlotState::Draining,
            },
            State::Closing {
                recv_armed,
                send_in_flight,
            } => SlotState::Closing {
                recv_armed: *recv_armed,
                send_in_flight: *send_in_flight,
            },
            State::CloseSubmitted => SlotState::CloseSubmitted,
            State::Moving => SlotState::Moving,
        }
    }
}

/// Milliseconds elapsed from `then` to `now` on the u32 clock.
pub(crate) fn since(now: u64, then: u32) -> u64 {
    (now as u32).wrapping_sub(then) as u64
}

/// The live connection in `slot`, borrowing only the slot table (so the shard's other fields
/// stay usable alongside).
pub(crate) fn live_mut(slots: &mut [Slot], slot: u32) -> Option<&mut Conn> {
    match &mut slots.get_mut(slot as usize)?.state {
        State::Live(c) => Some(c),
        _ => None,
    }
}

impl Shard {
    pub(crate) fn conn(&self, slot: u32) -> Option<&Conn> {
        match &self.slots.get(slot as usize)?.state {
            State::Live(c) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn conn_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        live_mut(&mut self.slots, slot)
    }

    pub(crate) fn token(&self, slot: u32) -> Token {
        Token {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    /// True when `t` is the slot's current generation.
    fn same(&self, t: Token) -> bool {
        self.slots
            .get(t.slot as usize)
            .is_some_and(|s| s.generation == t.generation)
    }

    // -----------------------------------------------------------------------------------------
    // Transitions driven by the kernel
    // -----------------------------------------------------------------------------------------

    /// A connection was accepted into `slot` (or `handed_in` by a full shard). Over the cap it
    /// moves to a shard with room; when none has room it is told `server_full` and closed.
    pub(crate) fn on_accepted(&mut self, slot: u32, now: Now, handed_in: bool) {
        if self.slots.len() <= slot as usize {
            self.slots.resize_with(slot as usize + 1, Slot::default);
        }
        let s = &mut self.slots[slot as usize];
        match s.state {
            State::Free => {}
            State::CloseSubmitted => {
                // The kernel reuses a slot only after its Close completed, and posts that
                // completion first; seeing the accept first means the Close completion was
                // lost. The slot is free either way.
                self.stats.connections -= 1;
            }
            State::Live(_) | State::Closing { .. } | State::Moving => {
                debug_assert!(false, "slot {slot} accepted while in use");
                // Cannot happen with a correct kernel; recover by forgetting the old occupant.
                self.abort(slot);
                self.stats.connections -= 1;
            }
        }
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1) & 0x00ff_ffff;
        self.stats.connections += 1;
        if handed_in {
            self.stats.handed_in += 1;
        } else {
            self.stats.accepted += 1;
        }
        self.publish_load();
        if !handed_in && !self.shutting_down && self.live_connections() > self.cfg.max_connections {
            let to = self
                .placement
                .as_ref()
                .and_then(|p| p.pick(self.id as usize, self.cfg.max_connections));
            if let Some(to) = to {
                self.slots[slot as usize].state = State::Moving;
                self.stats.handed_off += 1;
                let token = self.token(slot);
                self.out.push_back(Output::HandOff { token, to });
                return;
            }
        }
        self.open(slot, now);
    }

    /// The hand-off of a connection accepted over the cap ended (see [`State::Moving`]).
    pub(crate) fn on_handed_off(&mut self, t: Token, moved: bool, now: Now) {
        if !self.same(t) || !matches!(self.slots[t.slot as usize].state, State::Moving) {
            return;
        }
        if moved {
            // The other shard's table holds the socket now; this slot lets go of it.
            self.slots[t.slot as usize].state = State::CloseSubmitted;
            self.out.push_back(Output::Close(t));
        } else {
            self.stats.handoff_failed += 1;
            self.open(t.slot, now);
        }
    }

    /// Starts the session of a connection in `slot` (its generation is set): arms its receive
    /// and its handshake deadline, or turns it away (GOAWAY with a retry hint) when the server
    /// shuts down, the shard is over its cap, or new connections come too fast.
    fn open(&mut self, slot: u32, now: Now) {
        let mut c = Conn::new(now);
        c.recv_armed = true;
        self.slots[slot as usize].state = State::Live(c);
        let t = self.token(slot);
        self.out.push_back(Output::ArmRecv(t));
        self.schedule(slot, now);
        // Turned away with GOAWAY and a jittered retry hint, never a bare ERROR: refused
        // clients come back spread out, not as a herd.
        if self.shutting_down {
            self.refuse(
                slot,
                ErrorCode::ShuttingDown,
                "server is shutting down",
                now,
            );
        } else if self.live_connections() > self.cfg.max_connections {
            self.stats.refused_full += 1;
            self.refuse(
                slot,
                ErrorCode::ServerFull,
                "connection limit of this core reached",
                now,
            );
        } else if !self.admit(now) {
            self.stats.refused_busy += 1;
            self.refuse(
                slot,
                ErrorCode::ServerBusy,
                "too many new connections: retry after the hint",
                now,
            );
        }
    }

    /// Connections in a session (slots that are live), for the connection cap.
    fn live_connections(&self) -> usize {
        // Closing slots still hold a descriptor but no session; the cap is about sessions,
        // and the few slots beyond it (see the server's reserve) absorb the closing ones.
        self.stats.connections as usize
    }

    pub(crate) fn on_recv_ended(&mut self, t: Token, result: i32) {
        if !self.same(t) {
            return;
        }
        let slot = t.slot;
        match &mut self.slots[slot as usize].state {
            State::Live(c) => {
                c.recv_armed = false;
                let retry = result > 0 || result == -ENOBUFS;
                if retry && !matches!(c.phase, Phase::Draining { .. }) {
                    c.recv_armed = true;
                    self.out.push_back(Output::ArmRecv(t));
                } else if result <= 0 && result != -ENOBUFS {
                    // The peer closed (0) or the socket failed.
                    self.abort(slot);
                }
            }
            State::Closing { recv_armed, .. } => {
                *recv_armed = false;
                self.maybe_close(slot);
            }
            _ => {}
        }
    }

    /// The connection's send ended: `ok` when every byte went out.
    pub(crate) fn on_send_end(&mut self, t: Token, ok: bool, now: Now) {
        if !self.same(t) {
            return;
        }
        let slot = t.slot;
        match &mut self.slots[slot as usize].state {
            State::Live(c) if !ok => {
                c.sending = false;
                self.abort(slot);
            }
            State::Live(c) => {
                c.sending = false;
                c.last_tx_ms = now.ms as u32;
                if !self.backend_links.is_empty() {
                    self.backend_send_done(slot);
                }
                let tls_pending = self.tls_wants_write(slot);
                let Some(c) = self.conn_mut(slot) else {
                    return;
                };
                if tls_pending && c.outbox.is_empty() {
                    c.in_ready = true;
                    self.ready.push_back(slot);
                } else if !c.outbox.is_empty() {
                    self.mark_ready(slot);
                } else {
                    self.close_if_flushed(slot);
                    // Idle now: the heartbeat may be due before what it waited for.
                    self.schedule(slot, now);
                }
            }
            State::Closing { send_in_flight, .. } => {
                *send_in_flight = false;
                self.maybe_close(slot);
            }
            _ => {}
        }
    }

    pub(crate) fn on_closed(&mut self, t: Token) {
        if !self.same(t) {
            return;
        }
        let s = &mut self.slots[t.slot as usize];
        if matches!(s.state, State::CloseSubmitted) {
            s.state = State::Free;
            self.stats.connections -= 1;
            self.publish_load();
        }
    }

    /// Starts `slot`'s next gathered send into `frames`, if it has frames and none in flight.
    pub(crate) fn start_send(
        &mut self,
        slot: u32,
        now: Now,
        frames: &mut Vec<Bytes>,
    ) -> Option<Token> {
        let max = self.cfg.max_frames_per_send;
        let backend = self.backend_links.contains_key(&slot);
        let websocket = self.ws.contains_key(&slot);
        let tls = self.tls.contains_key(&slot);
        let tls_pending = tls && self.tls_wants_write(slot);
        let c = self.conn_mut(slot)?;
        c.in_ready = false;
        if c.sending || (c.outbox.is_empty() && !tls_pending) {
            return None;
        }
        let n = if websocket || tls {
            // WebSocket: two iovecs per yorker frame (its header and the frame). TLS: the
            // plaintext goes into the connection's session, one buffer of records goes out.
            let mut entries = std::mem::take(&mut self.entries);
            let c = self.conn_mut(slot)?;
            let take = if websocket { (max / 2).max(1) } else { max };
            let n = c.outbox.take_entries(take, &mut entries);
            if backend {
                let mut tickets = std::mem::take(&mut self.tickets);
                tickets.extend(
                    entries
                        .iter()
                        .filter(|e| e.topic == 0 && e.seq != 0)
                        .map(|e| e.seq),
                );
                self.backend_send_started(slot, &mut tickets);
                self.tickets = tickets;
            }
            if websocket {
                self.ws_frames(&mut entries, frames);
            } else {
                frames.extend(entries.drain(..).map(|e| e.frame));
            }
            self.entries = entries;
            if tls {
                let records = self.tls_seal(slot, frames);
                if !records.is_empty() {
                    frames.push(records);
                }
            }
            n
        } else if backend {
            let mut tickets = std::mem::take(&mut self.tickets);
            let c = self.conn_mut(slot)?;
            let n = c.outbox.take_batch_tickets(max, frames, &mut tickets);
            self.backend_send_started(slot, &mut tickets);
            self.tickets = tickets;
            n
        } else {
            c.outbox.take_batch(max, frames)
        };
        if frames.is_empty() {
            // Nothing to write after all (a TLS session with nothing ready yet).
            self.total_outbox -= n;
            return None;
        }
        let c = self.conn_mut(slot)?;
        c.sending = true;
        c.send_started_ms = now.ms as u32;
        c.last_tx_ms = now.ms as u32;
        self.total_outbox -= n;
        self.stats.bytes_sent += n as u64;
        self.stats.sends += 1;
        self.stats.frames_sent += frames.len() as u64;
        // The write timeout may come before anything else this connection waits for.
        self.schedule(slot, now);
        Some(self.token(slot))
    }

    // -----------------------------------------------------------------------------------------
    // Queueing and closing
    // -----------------------------------------------------------------------------------------

    pub(crate) fn mark_ready(&mut self, slot: u32) {
        if let Some(c) = self.conn_mut(slot) {
            if !c.sending && !c.in_ready && !c.outbox.is_empty() {
                c.in_ready = true;
                self.ready.push_back(slot);
            }
        }
    }

    /// As [`Shard::mark_ready`], but the connection goes to the front of the ready list: it
    /// is answering something the client just sent (PONG, SUBACK, ACK), and an answer must
    /// not wait behind a fan-out to every other connection of the core.
    pub(crate) fn mark_ready_first(&mut self, slot: u32) {
        if let Some(c) = self.conn_mut(slot) {
            if !c.sending && !c.in_ready && !c.outbox.is_empty() {
                c.in_ready = true;
                self.ready.push_front(slot);
            }
        }
    }

    /// Queues a small control frame (WELCOME, SUBACK, PONG, HEARTBEAT, ACK) in the urgent lane,
    /// and puts the connection first in line to send.
    pub(crate) fn push_control(&mut self, slot: u32, f: Bytes) {
        let limit = self.cfg.outbox_limit;
        let Some(c) = self.conn_mut(slot) else {
            return;
        };
        let len = f.len();
        if c.outbox.push_urgent(Entry::control(f), limit).0 == Pushed::Overflow {
            self.stats.slow_disconnects += 1;
            self.abort(slot);
            return;
        }
        self.total_outbox += len;
        self.mark_ready_first(slot);
    }

    /// Ends the session: subscriptions, partial frame, queue and relay link go; the slot waits
    /// for its receive and send to end, then closes. Whatever was queued is dropped.
    pub(crate) fn abort(&mut self, slot: u32) {
        if !matches!(
            self.slots.get(slot as usize).map(|s| &s.state),
            Some(State::Live(_))
        ) {
            return; // already ending
        }
        // While the session is still there (its id and user name its MEMBER events).
        self.drop_subscriptions(slot);
        self.end_backend(slot);
        self.forget_sender(slot);
        self.forget_ws(slot);
        self.forget_tls(slot);
        let s = &mut self.slots[slot as usize];
        let State::Live(c) = std::mem::take(&mut s.state) else {
            unreachable!("checked above");
        };
        let (recv_armed, send_in_flight) = (c.recv_armed, c.sending);
        s.state = State::Closing {
            recv_armed,
            send_in_flight,
        };
        self.total_outbox -= c.outbox.bytes();
        if let Some(p) = &c.pending {
            self.inbound_bytes -= p.capacity();
        }
        drop(c);
        self.drop_relay_link(slot);
        let t = self.token(slot);
        if recv_armed {
            self.out.push_back(Output::CancelRecv(t));
        }
        if send_in_flight {
            // A send stuck on a full socket never fails by itself: cancel it.
            self.out.push_back(Output::CancelSend(t));
        }
        self.maybe_close(slot);
    }

    /// Closes the descriptor once nothing references the slot any more.
    fn maybe_close(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if let State::Closing {
            recv_armed: false,
            send_in_flight: false,
        } = s.state
        {
            s.state = State::CloseSubmitted;
            let t = self.token(slot);
            self.out.push_back(Output::Close(t));
        }
    }

    /// A draining connection whose last frame is out closes.
    pub(crate) fn close_if_flushed(&mut self, slot: u32) {
        if let Some(c) = self.conn(slot) {
            if matches!(c.phase, Phase::Draining { .. }) && !c.sending && c.outbox.is_empty() {
                self.abort(slot);
            }
        }
    }

    /// ERROR with `code`, then close once flushed (or at the drain deadline).
    pub(crate) fn fail(&mut self, slot: u32, code: ErrorCode, message: &str, now: Now) {
        if self.ws_handshaking(slot) {
            // An HTTP client that never finished its upgrade: no yorker frame to send it.
            return self.abort(slot);
        }
        let f = yorker_wire::Frame::Error(yorker_wire::ErrorFrame {
            code: code as u16,
            message: message.chars().take(200).collect(),
        })
        .to_bytes()
        .expect("short error encodes");
        if self.end_with(slot, f, false, now) {
            self.stats.errors_sent += 1;
        }
    }

    /// Turns a connection away: GOAWAY with `code` and a jittered retry hint, then close once
    /// flushed. Unlike ERROR it tells the client when to come back; it may come before WELCOME.
    pub(crate) fn refuse(&mut self, slot: u32, code: ErrorCode, message: &str, now: Now) {
        let after = self.retry_hint();
        let f = goaway_frame(code, after, message);
        self.end_with(slot, f, false, now);
    }

    /// Ends a connection with `f` as its last frame: what was queued goes, `f` goes first, then
    /// the connection closes once flushed (or at the drain deadline). `raw`: `f` is transport
    /// bytes (an HTTP answer, a WebSocket close or a TLS alert) sent as they are; otherwise it
    /// is a yorker frame (ERROR, GOAWAY), followed on a WebSocket by a close frame. False when
    /// the connection was already ending.
    pub(crate) fn end_with(&mut self, slot: u32, f: Bytes, raw: bool, now: Now) -> bool {
        let drain = self.cfg.drain_ms;
        if self
            .conn(slot)
            .is_none_or(|c| matches!(c.phase, Phase::Draining { .. }))
        {
            return false;
        }
        self.retire_backend(slot);
        let Some(c) = self.conn_mut(slot) else {
            return false;
        };
        // What was queued no longer matters: the connection is ending.
        let cleared = c.outbox.clear();
        let len = f.len();
        if raw {
            c.outbox.push_raw_last(f);
        } else {
            c.outbox.push_final(f);
        }
        c.phase = Phase::Draining {
            deadline_ms: now.ms + drain,
        };
        self.total_outbox = self.total_outbox - cleared + len;
        if !raw {
            self.ws_close_after_final(slot);
        }
        self.drop_subscriptions(slot);
        self.drop_pending(slot);
        self.mark_ready(slot);
        self.schedule(slot, now);
        self.close_if_flushed(slot);
        true
    }

    /// GOAWAY after what is queued, then close once flushed (or at the drain deadline).
    pub(crate) fn go_away(
        &mut self,
        slot: u32,
        code: ErrorCode,
        after_ms: u32,
        message: &str,
        now: Now,
    ) {
        let f = goaway_frame(code, after_ms, message);
        let drain = self.cfg.drain_ms;
        let Some(c) = self.conn_mut(slot) else {
            return;
        };
        if !matches!(c.phase, Phase::Active(_)) {
            return; // already ending
        }
        self.retire_backend(slot);
        let Some(c) = self.conn_mut(slot) else {
            return;
        };
        c.outbox.push_last(f.clone());
        c.phase = Phase::Draining {
            deadline_ms: now.ms + drain,
        };
        self.total_outbox += f.len();
        self.ws_close_after_final(slot);
        self.drop_subscriptions(slot);
        self.drop_pending(slot);
        self.mark_ready(slot);
        self.schedule(slot, now);
        self.close_if_flushed(slot);
    }

    /// Drops a connection's partial frame (it is ending).
    pub(crate) fn drop_pending(&mut self, slot: u32) {
        if let Some(p) = self.conn_mut(slot).and_then(|c| c.pending.take()) {
            self.inbound_bytes -= p.capacity();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Deadlines
    // -----------------------------------------------------------------------------------------

    /// The earliest moment (monotonic ms) `slot` needs attention, if it is live.
    fn deadline(&self, slot: u32, now: Now) -> Option<u64> {
        let c = self.conn(slot)?;
        let at = |stamp: u32, after: u64| now.ms - since(now.ms, stamp) + after;
        let mut d = match c.phase {
            Phase::Draining { deadline_ms } => return Some(deadline_ms),
            Phase::AwaitHello => at(c.opened_ms, self.cfg.handshake_timeout_ms),
            Phase::Active(_) => {
                let hb = self.cfg.heartbeat_ms;
                let mut d = at(c.last_rx_ms, 3 * hb);
                if !c.sending && c.outbox.is_empty() {
                    d = d.min(at(c.last_tx_ms, hb));
                    if c.outbox.holds_memory() {
                        d = d.min(at(c.last_tx_ms, 1000));
                    }
                }
                if let Some(g) = &c.grant {
                    let expires_unix_ms = g
                        .expires_at_s
                        .saturating_mul(1000)
                        .saturating_add(self.cfg.policy.grace_ms);
                    let left = expires_unix_ms.saturating_sub(now.unix_us / 1000);
                    d = d.min(now.ms.saturating_add(left));
                }
                d
            }
        };
        if c.sending {
            d = d.min(at(c.send_started_ms, self.cfg.write_timeout_ms));
        }
        if c.pending.is_some() {
            d = d.min(at(c.partial_since_ms, self.cfg.frame_timeout_ms));
        }
        Some(d)
    }

    /// Registers `slot`'s next deadline in the heap when it is earlier than the one it is
    /// registered for (a later one needs nothing: the earlier entry fires and re-registers).
    pub(crate) fn schedule(&mut self, slot: u32, now: Now) {
        let Some(d) = self.deadline(slot, now) else {
            return;
        };
        let generation = self.slots[slot as usize].generation;
        let c = self.conn_mut(slot).expect("deadline() saw it live");
        let earlier = match c.wake {
            None => true,
            Some(w) => (d as u32).wrapping_sub(now.ms as u32) < w.wrapping_sub(now.ms as u32),
        };
        if earlier {
            c.wake = Some(d as u32);
            self.timers.push(d, slot, generation);
            if self.timers.len() > 2 * self.stats.connections as usize + 1024 {
                self.compact_timers();
            }
        }
    }

    /// Keeps only the heap entries that still stand for a live connection's registered
    /// deadline (churn leaves the others behind until they come due).
    fn compact_timers(&mut self) {
        let slots = &self.slots;
        self.timers.compact(|at, slot, generation| {
            slots.get(slot as usize).is_some_and(|s| {
                s.generation == generation
                    && matches!(&s.state, State::Live(c) if c.wake == Some(at as u32))
            })
        });
    }

    /// A deadline of `slot` fired: check every timeout of the connection, then register its
    /// next one.
    pub(crate) fn on_deadline(&mut self, slot: u32, generation: u32, deadline: u64, now: Now) {
        if self.slots.get(slot as usize).map(|s| s.generation) != Some(generation) {
            return;
        }
        let hb = self.cfg.heartbeat_ms;
        let cfg = &self.cfg;
        let Some(c) = live_mut(&mut self.slots, slot) else {
            return;
        };
        if c.wake != Some(deadline as u32) {
            return; // a stale entry: the connection re-registered for an earlier deadline
        }
        c.wake = None;
        if let Phase::Draining { deadline_ms } = c.phase {
            if now.ms >= deadline_ms {
                self.abort(slot);
                return;
            }
            self.schedule(slot, now);
            return;
        }
        if c.sending && since(now.ms, c.send_started_ms) >= cfg.write_timeout_ms {
            self.stats.write_timeouts += 1;
            self.abort(slot);
            return;
        }
        if c.grant.as_ref().is_some_and(|g| {
            g.expires_at_s.saturating_mul(1000) + cfg.policy.grace_ms <= now.unix_us / 1000
        }) {
            self.stats.tokens_expired += 1;
            self.fail(
                slot,
                ErrorCode::TokenExpired,
                "token expired; refresh it with AUTH before it does",
                now,
            );
            return;
        }
        if c.pending.is_some() && since(now.ms, c.partial_since_ms) >= cfg.frame_timeout_ms {
            self.stats.frame_timeouts += 1;
            self.fail(
                slot,
                ErrorCode::FrameTimeout,
                "a frame did not complete within the frame timeout",
                now,
            );
            return;
        }
        if c.phase == Phase::AwaitHello {
            if since(now.ms, c.opened_ms) >= cfg.handshake_timeout_ms {
                self.fail(slot, ErrorCode::HandshakeTimeout, "no HELLO in time", now);
                return;
            }
        } else if since(now.ms, c.last_rx_ms) >= 3 * hb {
            self.fail(
                slot,
                ErrorCode::HeartbeatTimeout,
                "silent for three heartbeat intervals",
                now,
            );
            return;
        } else {
            let idle = since(now.ms, c.last_tx_ms);
            if !c.sending && idle >= 1000 {
                c.outbox.release_if_empty();
            }
            if !c.sending && c.outbox.is_empty() && idle >= hb {
                let f = self.heartbeat_frame.clone();
                self.push_control(slot, f);
                self.stats.heartbeats += 1;
            }
        }
        self.schedule(slot, now);
    }
}

/// The encoded GOAWAY a shard sends when it turns a connection away or drains it.
fn goaway_frame(code: ErrorCode, reconnect_after_ms: u32, message: &str) -> Bytes {
    yorker_wire::Frame::GoAway(yorker_wire::GoAway {
        code: code as u16,
        reconnect_after_ms,
        message: message.into(),
    })
    .to_bytes()
    .expect("goaway encodes")
}

#[cfg(test)]
mod size_tests {
    /// An engine holds hundreds of thousands of connections, and the goal is <= 256 bytes of
    /// RSS per idle subscribed one (scripts/capacity.sh measures it). This guards the biggest
    /// part of that budget against quiet growth.
    #[test]
    fn per_connection_state_stays_small() {
        assert!(
            std::mem::size_of::<super::Slot>() <= 128,
            "{}",
            std::mem::size_of::<super::Slot>()
        );
        assert!(std::mem::size_of::<super::Outbox>() <= 40);
    }
}
