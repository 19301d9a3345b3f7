//! Balanced placement across shards. Every shard publishes how many connection slots it holds;
//! a shard whose `--max-conns-per-core` is reached hands a connection it just accepted to the
//! least loaded shard that still has room ([`super::Output::HandOff`]: the driver moves the
//! direct descriptor to that shard's ring with `IORING_OP_MSG_RING`), so the kernel's
//! reuseport hash never makes a client wait or be refused while another core has room. Only a
//! connection that no shard can take is refused with `server_full`.
//!
//! Plain atomics, read and written without locks: a load read here may be a moment old, so a
//! pick reserves its connection on the target at once, and the target checks its own cap again
//! when the connection arrives (it refuses, never hands a connection on a second time).

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// The shards' loads and rings, shared by every shard of a server.
#[derive(Debug)]
pub struct Placement {
    loads: Box<[AtomicU32]>,
    rings: Box<[AtomicI32]>,
}

impl Placement {
    /// Placement over `shards` shards, all empty and without a ring yet.
    pub fn new(shards: usize) -> Self {
        Placement {
            loads: (0..shards).map(|_| AtomicU32::new(0)).collect(),
            rings: (0..shards).map(|_| AtomicI32::new(-1)).collect(),
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.loads.len()
    }

    /// Connection slots `shard` holds now.
    pub fn load(&self, shard: usize) -> u32 {
        self.loads
            .get(shard)
            .map_or(0, |l| l.load(Ordering::Relaxed))
    }

    /// `shard` holds `n` connection slots.
    pub(crate) fn set_load(&self, shard: usize, n: u32) {
        if let Some(l) = self.loads.get(shard) {
            l.store(n, Ordering::Relaxed);
        }
    }

    /// The least loaded shard other than `from` holding fewer than `max` connections, with one
    /// connection reserved on it; `None` when every other shard is full.
    pub(crate) fn pick(&self, from: usize, max: usize) -> Option<usize> {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        let (to, _) = self
            .loads
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != from && self.ring(i).is_some())
            .map(|(i, l)| (i, l.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n < max)
            .min_by_key(|&(_, n)| n)?;
        self.loads[to].fetch_add(1, Ordering::Relaxed);
        Some(to)
    }

    /// The ring (its file descriptor) that `shard` runs, if it is up.
    pub fn ring(&self, shard: usize) -> Option<i32> {
        let fd = self.rings.get(shard)?.load(Ordering::Acquire);
        (fd >= 0).then_some(fd)
    }

    /// `shard` runs ring `fd` (its driver, once the ring is up), or none any more (`-1`,
    /// before the ring is dropped: nothing is handed to it after that).
    pub fn set_ring(&self, shard: usize, fd: i32) {
        if let Some(r) = self.rings.get(shard) {
            r.store(fd, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_least_loaded_other_shard_with_room_and_reserves() {
        let p = Placement::new(3);
        for s in 0..3 {
            p.set_ring(s, 10 + s as i32);
        }
        p.set_load(0, 10);
        p.set_load(1, 7);
        p.set_load(2, 5);
        assert_eq!(p.pick(0, 10), Some(2));
        assert_eq!(p.load(2), 6, "the pick reserves a connection");
        p.set_load(2, 10);
        assert_eq!(p.pick(0, 10), Some(1));
        p.set_load(1, 10);
        assert_eq!(p.pick(0, 10), None, "every other shard is full");
        // A shard without a ring (not up, or gone) is never picked.
        p.set_load(1, 0);
        p.set_ring(1, -1);
        assert_eq!(p.pick(0, 10), None);
    }
}
