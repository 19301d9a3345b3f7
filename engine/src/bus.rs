//! The cross-shard bus: one lock-free MPSC queue per shard, and an eventfd doorbell that wakes
//! the shard's ring. Doorbells are coalesced: a publisher rings only if the shard has not been
//! rung since it last drained its queue.
//!
//! Each queue is bounded (`capacity` updates). A shard that falls that far behind (or died) does
//! not make the others pile up memory: further updates for it are dropped and counted, and the
//! shard, at its next drain, resynchronises its subscribers from the registry (each gets the
//! latest value of its topics flagged SNAPSHOT|RESET, as after a failed resume).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;
use yorker_uring::EventFd;

use crate::proto::{Control, Dest, UpdateMsg};

/// Something that sees every update as the shards get it: the origin's multicast feed
/// (`relay::origin`). It is called with the topic locked, so it must only enqueue.
pub trait Tap: Send + Sync + std::fmt::Debug {
    /// One update, in the order the shards see it.
    fn offer(&self, msg: &UpdateMsg);
}

/// Client messages, replies and member events in transit to one shard, at most (each at most a
/// frame): beyond it the sender's shard refuses with `server_busy`. Acknowledgements and the
/// backend directory are never refused (they are bounded by the in-flight windows and the
/// number of backends).
pub const CONTROL_CAPACITY: usize = 65_536;

/// One shard's inbound side: updates, and control messages (client messages, replies, the
/// backend directory, member events) in a queue of their own, so that an update backlog never
/// delays an acknowledgement and a resync never drops one.
#[derive(Debug)]
pub struct Inbox {
    queue: SegQueue<UpdateMsg>,
    len: AtomicUsize,
    capacity: usize,
    control: SegQueue<Control>,
    control_len: AtomicUsize,
    overrun: AtomicBool,
    dropped: AtomicU64,
    rung: AtomicBool,
    bell: EventFd,
}

impl Inbox {
    /// The doorbell the shard's ring waits on.
    pub fn bell(&self) -> &EventFd {
        &self.bell
    }

    /// Takes every queued update, in order. Clears the doorbell first, so a publish racing with
    /// the drain rings again rather than being missed.
    pub fn drain(&self, mut f: impl FnMut(UpdateMsg)) -> usize {
        self.rung.store(false, Ordering::SeqCst);
        let mut n = 0;
        while let Some(m) = self.queue.pop() {
            f(m);
            n += 1;
        }
        self.len.fetch_sub(n, Ordering::AcqRel);
        n
    }

    /// Takes queued updates in order while `f` returns true (it is given each update and
    /// returns whether the shard may take another this round). Returns how many were taken;
    /// the rest stay queued for the next round ([`Inbox::is_empty`] says whether any do).
    pub fn drain_while(&self, mut f: impl FnMut(UpdateMsg) -> bool) -> usize {
        self.rung.store(false, Ordering::SeqCst);
        let mut n = 0;
        while let Some(m) = self.queue.pop() {
            n += 1;
            if !f(m) {
                break;
            }
        }
        self.len.fetch_sub(n, Ordering::AcqRel);
        n
    }

    /// True when no update waits.
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Takes every queued control message, in order.
    pub fn drain_control(&self, mut f: impl FnMut(Control)) -> usize {
        let mut n = 0;
        while let Some(m) = self.control.pop() {
            f(m);
            n += 1;
        }
        self.control_len.fetch_sub(n, Ordering::AcqRel);
        n
    }

    /// Queues a control message. A non-essential one (see [`Control::is_essential`]) is
    /// refused when [`CONTROL_CAPACITY`] (or `capacity`, if lower) control messages wait already; essential ones are bounded by
    /// construction and always taken.
    fn push_control(&self, msg: Control) -> Result<(), Control> {
        let cap = self.capacity.min(CONTROL_CAPACITY);
        if self.control_len.fetch_add(1, Ordering::AcqRel) >= cap && !msg.is_essential() {
            self.control_len.fetch_sub(1, Ordering::AcqRel);
            return Err(msg);
        }
        self.control.push(msg);
        self.ring();
        Ok(())
    }

    /// True (once) when updates were dropped since the last call: the shard must resynchronise.
    pub fn take_overrun(&self) -> bool {
        self.overrun.swap(false, Ordering::AcqRel)
    }

    /// Updates dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues `msg` unless the queue holds `capacity` updates already.
    fn push(&self, msg: UpdateMsg) {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.len.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.overrun.store(true, Ordering::Release);
        } else {
            self.queue.push(msg);
        }
        self.ring();
    }

    /// Wakes the shard (shutdown, or an update).
    pub fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            self.bell.notify();
        }
    }
}

/// All shards' inboxes.
#[derive(Debug)]
pub struct ShardBus {
    inboxes: Vec<Arc<Inbox>>,
    tap: Option<Arc<dyn Tap>>,
}

impl ShardBus {
    /// A bus for `shards` shards, each queue holding at most `capacity` updates; `tap` also
    /// gets every update (the origin's multicast feed).
    pub fn new(shards: usize, capacity: usize, tap: Option<Arc<dyn Tap>>) -> std::io::Result<Self> {
        let inboxes = (0..shards)
            .map(|_| {
                Ok(Arc::new(Inbox {
                    queue: SegQueue::new(),
                    len: AtomicUsize::new(0),
                    capacity,
                    control: SegQueue::new(),
                    control_len: AtomicUsize::new(0),
                    overrun: AtomicBool::new(false),
                    dropped: AtomicU64::new(0),
                    rung: AtomicBool::new(false),
                    bell: EventFd::new()?,
                }))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(ShardBus { inboxes, tap })
    }

    /// Shard `i`'s inbox.
    pub fn inbox(&self, i: usize) -> Arc<Inbox> {
        self.inboxes[i].clone()
    }

    /// Wakes every shard.
    pub fn ring_all(&self) {
        for i in &self.inboxes {
            i.ring();
        }
    }
}

impl ShardBus {
    /// Hands a control message to one shard or to all. Returns the message when the (single)
    /// target refused it; a refusal by some shards of an [`Dest::All`] message is counted by
    /// the bus only (those are member events: best effort).
    pub fn send_control(&self, dest: Dest, msg: Control) -> Result<(), Control> {
        match dest {
            Dest::Shard(i) => match self.inboxes.get(i as usize) {
                Some(inbox) => inbox.push_control(msg),
                None => Err(msg),
            },
            Dest::All => {
                for inbox in &self.inboxes {
                    if inbox.push_control(msg.clone()).is_err() {
                        inbox.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            }
        }
    }

    /// Delivers `msg` to every shard (the publishing shard included), and to the tap. Called
    /// with the topic locked, so it only enqueues and wakes, never blocks.
    pub fn publish(&self, msg: UpdateMsg) {
        if let Some(t) = &self.tap {
            t.offer(&msg);
        }
        let last = self.inboxes.len() - 1;
        for (i, inbox) in self.inboxes.iter().enumerate() {
            // The frame is shared: cloning the message bumps a reference count, no copy.
            if i == last {
                inbox.push(msg);
                break;
            }
            inbox.push(msg.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_are_bounded_but_acknowledgements_never_refused() {
        use crate::proto::{Origin, Token};
        let bus = ShardBus::new(1, 1024, None).unwrap();
        let reply = || Control::Reply {
            session: 1,
            frame: bytes::Bytes::from_static(b"r"),
        };
        for _ in 0..1024 {
            assert!(bus.send_control(Dest::Shard(0), reply()).is_ok());
        }
        assert!(bus.send_control(Dest::Shard(0), reply()).is_err());
        let ack = Control::Acked {
            origin: Origin {
                shard: 0,
                token: Token {
                    slot: 1,
                    generation: 1,
                },
                request_id: 1,
            },
            code: 0,
        };
        assert!(bus.send_control(Dest::Shard(0), ack).is_ok());
        assert!(
            bus.send_control(Dest::Shard(7), reply()).is_err(),
            "no such shard"
        );
        assert_eq!(bus.inbox(0).drain_control(|_| {}), 1025);
        assert!(bus.send_control(Dest::Shard(0), reply()).is_ok());
    }

    #[test]
    fn a_full_inbox_drops_and_asks_for_a_resync() {
        let bus = ShardBus::new(2, 3, None).unwrap();
        let msg = |seq| UpdateMsg {
            topic: 1,
            seq,
            flags: 0,
            frame: bytes::Bytes::from_static(b"x"),
            skip: 0,
        };
        for seq in 1..=5 {
            bus.publish(msg(seq));
        }
        let (a, b) = (bus.inbox(0), bus.inbox(1));
        assert!(a.take_overrun() && !a.take_overrun());
        assert_eq!(a.dropped(), 2);
        let mut got = Vec::new();
        assert_eq!(a.drain(|m| got.push(m.seq)), 3);
        assert_eq!(got, vec![1, 2, 3]);
        // Room again after the drain.
        bus.publish(msg(6));
        assert_eq!(a.drain(|_| {}), 1);
        assert!(!a.take_overrun());
        // The other shard did not drain meanwhile: it is still full and lost 6 too.
        assert!(b.take_overrun());
        assert_eq!((b.drain(|_| {}), b.dropped()), (3, 3));
    }
}
