//! A shard's subscriber index: topic -> connections, and connection -> subscriptions, with O(1)
//! removal (each subscription remembers its position in the topic's list).

/// One subscription of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Sub {
    /// Topic id.
    pub topic: u32,
    /// Position of the connection in the topic's subscriber list.
    pos: u32,
    /// Highest sequence number queued to the connection; older or equal updates are skipped,
    /// which makes delivery exactly-once when a snapshot races a live update.
    pub last_seq: u64,
    /// Conflation on for this subscription.
    pub conflate: bool,
    /// Presence asked for (member counts and events).
    pub presence: bool,
}

/// The index. Slots are connection ids (direct-descriptor indices).
#[derive(Debug, Default)]
pub struct SubIndex {
    by_topic: Vec<Vec<u32>>,
    by_conn: Vec<Vec<Sub>>,
    total: usize,
}

impl SubIndex {
    /// An index for connection slots `0..slots` (more grow it on demand).
    pub fn with_slots(slots: usize) -> Self {
        let mut by_conn = Vec::new();
        by_conn.resize_with(slots, Vec::new);
        SubIndex {
            by_topic: Vec::new(),
            by_conn,
            total: 0,
        }
    }

    /// Total subscriptions.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Connections subscribed to `topic`.
    pub fn subscribers(&self, topic: u32) -> &[u32] {
        self.by_topic
            .get(topic as usize)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Topics with at least one subscriber on this shard.
    pub fn topics(&self) -> Vec<u32> {
        self.by_topic
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(t, _)| t as u32)
            .collect()
    }

    /// Subscriptions of `slot`.
    pub fn of_conn(&self, slot: u32) -> &[Sub] {
        self.by_conn
            .get(slot as usize)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// The subscription of `slot` to `topic`.
    pub fn get_mut(&mut self, slot: u32, topic: u32) -> Option<&mut Sub> {
        self.by_conn
            .get_mut(slot as usize)?
            .iter_mut()
            .find(|s| s.topic == topic)
    }

    /// Adds a subscription; false if it already exists.
    pub fn add(&mut self, slot: u32, topic: u32, conflate: bool, last_seq: u64) -> bool {
        if self.get_mut(slot, topic).is_some() {
            return false;
        }
        if self.by_topic.len() <= topic as usize {
            self.by_topic.resize_with(topic as usize + 1, Vec::new);
        }
        if self.by_conn.len() <= slot as usize {
            self.by_conn.resize_with(slot as usize + 1, Vec::new);
        }
        let list = &mut self.by_topic[topic as usize];
        let pos = list.len() as u32;
        list.push(slot);
        let subs = &mut self.by_conn[slot as usize];
        if subs.capacity() == 0 {
            // Most game clients follow one match: do not round up to 4 entries.
            subs.reserve_exact(1);
        }
        subs.push(Sub {
            topic,
            pos,
            last_seq,
            conflate,
            presence: false,
        });
        self.total += 1;
        true
    }

    /// Removes a subscription; false if there was none.
    pub fn remove(&mut self, slot: u32, topic: u32) -> bool {
        let Some(subs) = self.by_conn.get_mut(slot as usize) else {
            return false;
        };
        let Some(i) = subs.iter().position(|s| s.topic == topic) else {
            return false;
        };
        let pos = subs.swap_remove(i).pos as usize;
        if subs.is_empty() {
            *subs = Vec::new();
        }
        self.unlink(topic, pos);
        self.total -= 1;
        true
    }

    /// Removes every subscription of `slot` and returns them (the caller releases the topics).
    pub fn remove_conn(&mut self, slot: u32) -> Vec<Sub> {
        let Some(subs) = self.by_conn.get_mut(slot as usize) else {
            return Vec::new();
        };
        let subs = std::mem::take(subs);
        self.total -= subs.len();
        for s in &subs {
            self.unlink(s.topic, s.pos as usize);
        }
        subs
    }

    /// Swap-removes position `pos` of `topic`'s list and fixes the moved connection's position.
    fn unlink(&mut self, topic: u32, pos: usize) {
        let list = &mut self.by_topic[topic as usize];
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos) {
            if let Some(s) = self.by_conn[moved as usize]
                .iter_mut()
                .find(|s| s.topic == topic)
            {
                s.pos = pos as u32;
            }
        }
    }

    /// Checks the two directions agree (tests).
    #[cfg(test)]
    pub fn check(&self) {
        let mut n = 0;
        for (slot, subs) in self.by_conn.iter().enumerate() {
            for s in subs {
                assert_eq!(self.by_topic[s.topic as usize][s.pos as usize], slot as u32);
                n += 1;
            }
        }
        assert_eq!(n, self.total);
        assert_eq!(self.by_topic.iter().map(|l| l.len()).sum::<usize>(), n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_keeps_both_directions_consistent() {
        let mut ix = SubIndex::default();
        for slot in 0..50 {
            assert!(ix.add(slot, 1 + slot % 3, true, 0));
            assert!(ix.add(slot, 7, false, 0));
        }
        assert!(!ix.add(3, 7, true, 0));
        ix.check();
        for slot in (0..50).step_by(3) {
            assert!(ix.remove(slot, 7));
            assert!(!ix.remove(slot, 7));
        }
        ix.check();
        for slot in (0..50).step_by(2) {
            ix.remove_conn(slot);
        }
        ix.check();
        assert!(ix.subscribers(7).iter().all(|s| s % 2 == 1 && s % 3 != 0));
        assert!(ix.subscribers(99).is_empty());
    }
}
