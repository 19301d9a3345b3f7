//! The cross-shard bus: one lock-free MPSC queue per shard, and an eventfd doorbell that wakes
//! the shard's ring. Doorbells are coalesced: a publisher rings only if the shard has not been
//! rung since it last drained its queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;
use yorker_uring::EventFd;

use crate::proto::UpdateMsg;

/// Something that sees every update as the shards get it: the origin's multicast feed
/// (`relay::origin`). It is called with the topic locked, so it must only enqueue.
pub trait Tap: Send + Sync + std::fmt::Debug {
    /// One update, in the order the shards see it.
    fn offer(&self, msg: &UpdateMsg);
}

/// One shard's inbound side.
#[derive(Debug)]
pub struct Inbox {
    queue: SegQueue<UpdateMsg>,
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
        n
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
    /// A bus for `shards` shards; `tap` also gets every update (the origin's multicast feed).
    pub fn new(shards: usize, tap: Option<Arc<dyn Tap>>) -> std::io::Result<Self> {
        let inboxes = (0..shards)
            .map(|_| {
                Ok(Arc::new(Inbox {
                    queue: SegQueue::new(),
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
                inbox.queue.push(msg);
                inbox.ring();
                break;
            }
            inbox.queue.push(msg.clone());
            inbox.ring();
        }
    }
}
