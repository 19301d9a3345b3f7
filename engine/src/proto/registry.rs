//! The topic registry, shared by every shard: name -> id, per-topic sequence numbers, the latest
//! value, a bounded history for resume, and cached snapshot frames.
//!
//! An update is encoded exactly once, here, under its topic's lock, and handed to every shard
//! while that lock is held, so every shard sees a topic's updates in sequence order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use yorker_wire::{encode_update, update_flags, Frame, ResumeFrom, SubResult, UPDATE_HEADER_LEN};

/// An update as it travels from the publishing shard to every shard.
#[derive(Debug, Clone)]
pub struct UpdateMsg {
    /// Topic id.
    pub topic: u32,
    /// Sequence number, assigned once.
    pub seq: u64,
    /// URGENT / BROADCAST as published.
    pub flags: u8,
    /// The encoded UPDATE frame, shared by every subscriber.
    pub frame: Bytes,
    /// The session id of a connection that must not receive it (POST with NO_ECHO); 0: none.
    pub skip: u64,
}

/// What [`Registry::apply`] did with a relayed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The next update of the topic (or its first value): fanned out as it came.
    InOrder,
    /// Already applied: dropped.
    Duplicate,
    /// Continuity broke (gap, epoch change): fanned out as SNAPSHOT|RESET.
    Reset,
    /// Not applied: the relay cannot serve it (larger than its `--max-frame`).
    Dropped,
}

/// Why a topic could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the topic registry holds its maximum of {0} topics")]
pub struct TopicLimit(pub usize);

/// How the registry's memory is bounded (see docs/OPERATIONS.md, "Limits and memory").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryLimits {
    /// Updates kept per topic for resume.
    pub history_depth: usize,
    /// Bytes of history kept per topic (the newest update is always kept: it is the value).
    pub history_bytes: usize,
    /// Bytes of history kept over all topics, the newest update of each excluded. Beyond it a
    /// topic being published keeps only its newest update (its resumes become RESETs).
    pub max_history_bytes: usize,
    /// Topics created by publishers (or relays) at most.
    pub max_topics: usize,
    /// Topics that exist only because somebody subscribed before the first publish, at most.
    /// Such a placeholder has no value and is freed with its last subscriber.
    pub max_placeholders: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            history_depth: 64,
            history_bytes: 128 * 1024,
            max_history_bytes: 256 * 1024 * 1024,
            max_topics: 100_000,
            max_placeholders: 100_000,
        }
    }
}

/// How a subscription starts: the SUBACK result and the frames that follow it.
#[derive(Debug, Clone)]
pub struct SubStart {
    /// SUBACK result.
    pub result: SubResult,
    /// The topic's current sequence number (SUBACK seq).
    pub seq: u64,
    /// Snapshot or replayed frames, in order; the subscription's last seen seq becomes `seq`.
    pub frames: Vec<Bytes>,
}

#[derive(Debug)]
struct Last {
    payload: Bytes,
    timestamp_us: u64,
}

#[derive(Debug, Default)]
struct TopicState {
    seq: u64,
    last: Option<Last>,
    /// (seq, live frame), oldest first, at most `history_depth` entries and `history_bytes`
    /// bytes (the newest entry always stays: it shares its bytes with the latest value).
    history: VecDeque<(u64, Bytes)>,
    /// Bytes of `history`.
    history_len: usize,
    snapshot: Option<Bytes>,
    snapshot_reset: Option<Bytes>,
    /// Relays only: the origin's epoch changed and this topic has not been resynchronised yet;
    /// its next update replaces every subscriber's state (SNAPSHOT|RESET).
    stale: bool,
}

/// One topic.
#[derive(Debug)]
pub struct Topic {
    /// Compact id used on the wire (from 1). Ids of freed placeholders are reused.
    pub id: u32,
    /// Its name.
    pub name: Arc<str>,
    /// Its TOPIC frame (for relay links), encoded once.
    pub topic_frame: Bytes,
    /// Numbered by an ingest source (a stream): publishers, POSTs and HTTP publish are refused,
    /// since a number they took would collide with the stream's.
    fed: std::sync::atomic::AtomicBool,
    state: Mutex<TopicState>,
}

impl Topic {
    /// Whether an ingest source numbers this topic (see [`Registry::mark_fed`]).
    pub fn is_fed(&self) -> bool {
        self.fed.load(Ordering::Acquire)
    }

    /// Why a publish to this topic is refused, if it is fed by an ingest: the one wording for
    /// PUBLISH and HTTP publish.
    pub fn fed_refusal(&self) -> Option<String> {
        self.is_fed().then(|| {
            format!(
                "{} is fed by the ingest (its numbers come from the stream): append to the stream instead",
                self.name
            )
        })
    }
}

/// Lifecycle of one topic id, kept under the index lock.
#[derive(Debug, Clone, Copy, Default)]
struct Life {
    /// Created (or touched) by a publisher or a relay feed: lives for the epoch.
    permanent: bool,
    /// Subscriptions over all shards.
    subscribers: u32,
    /// Of which asked for presence (member counts and events).
    watchers: u32,
}

/// A topic's presence over all shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    /// Subscriptions (the member count).
    pub members: u32,
    /// Subscriptions that asked for presence.
    pub watchers: u32,
}

/// Names, free ids and lifecycles: everything that creates or frees a topic, under one lock.
#[derive(Debug, Default)]
struct Index {
    names: HashMap<Arc<str>, u32>,
    /// By id (index 0 unused).
    life: Vec<Life>,
    free: Vec<u32>,
    permanent: usize,
    placeholders: usize,
}

/// Every topic of the server epoch.
#[derive(Debug)]
pub struct Registry {
    epoch: AtomicU64,
    limits: RegistryLimits,
    index: Mutex<Index>,
    /// By id - 1; `None` for a freed id.
    topics: RwLock<Vec<Option<Arc<Topic>>>>,
    /// History bytes over all topics, newest entry of each excluded.
    history_total: AtomicUsize,
    frames_encoded: AtomicU64,
    next_session: AtomicU64,
    feed_seq: AtomicU64,
    /// Relay sessions over all shards.
    relay_sessions: AtomicUsize,
    /// Idempotency keys of recent publishes (POST with a key, HTTP publish).
    idempotency: Mutex<IdempotencyWindow>,
}

/// How long an idempotency key is remembered, µs.
pub const IDEMPOTENCY_WINDOW_US: u64 = 300_000_000;
/// Idempotency keys remembered at most (the oldest are forgotten first).
pub const IDEMPOTENCY_MAX_KEYS: usize = 100_000;

/// Recent idempotency keys: key -> the sequence number its publish got.
#[derive(Debug, Default)]
struct IdempotencyWindow {
    seen: HashMap<Box<str>, u64>,
    order: std::collections::VecDeque<(u64, Box<str>)>,
}

impl IdempotencyWindow {
    fn expire(&mut self, now_us: u64) {
        while let Some((at, _)) = self.order.front() {
            if now_us.saturating_sub(*at) < IDEMPOTENCY_WINDOW_US
                && self.order.len() <= IDEMPOTENCY_MAX_KEYS
            {
                break;
            }
            let (_, k) = self.order.pop_front().expect("checked");
            self.seen.remove(&k);
        }
    }
}

impl Registry {
    /// An empty registry for `epoch`, with default limits except `history_depth` and
    /// `max_topics` (tests, benches).
    pub fn new(epoch: u64, history_depth: usize, max_topics: usize) -> Self {
        Registry::with_limits(
            epoch,
            RegistryLimits {
                history_depth,
                max_topics,
                max_placeholders: max_topics,
                ..RegistryLimits::default()
            },
        )
    }

    /// An empty registry for `epoch`.
    pub fn with_limits(epoch: u64, limits: RegistryLimits) -> Self {
        Registry {
            epoch: AtomicU64::new(epoch),
            limits,
            index: Mutex::new(Index::default()),
            topics: RwLock::new(Vec::new()),
            history_total: AtomicUsize::new(0),
            frames_encoded: AtomicU64::new(0),
            next_session: AtomicU64::new(1),
            feed_seq: AtomicU64::new(0),
            relay_sessions: AtomicUsize::new(0),
            idempotency: Mutex::new(IdempotencyWindow::default()),
        }
    }

    /// [`Registry::publish`], at most once per idempotency key within
    /// [`IDEMPOTENCY_WINDOW_US`]: a key seen already is answered with the sequence number its
    /// first publish got, and nothing is published (the second value is true). Keys are global
    /// to the server (publishers should use unique ones, such as UUIDs); the check and the
    /// publish happen under one lock, so two retries racing on two cores publish once.
    pub fn publish_once(
        &self,
        key: Option<&str>,
        topic: &Topic,
        flags: u8,
        payload: &[u8],
        now_us: u64,
        fanout: &mut dyn FnMut(UpdateMsg),
    ) -> (u64, bool) {
        let Some(key) = key else {
            return (self.publish(topic, flags, payload, now_us, fanout), false);
        };
        let mut w = self.idempotency.lock().unwrap_or_else(|e| e.into_inner());
        w.expire(now_us);
        if let Some(&seq) = w.seen.get(key) {
            return (seq, true);
        }
        let seq = self.publish(topic, flags, payload, now_us, fanout);
        let k: Box<str> = key.into();
        w.seen.insert(k.clone(), seq);
        w.order.push_back((now_us, k));
        (seq, false)
    }

    /// Counts one more relay session, unless `max` are open already.
    pub fn try_add_relay(&self, max: usize) -> bool {
        self.relay_sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A relay session ended.
    pub fn remove_relay(&self) {
        let _ = self
            .relay_sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// The limits in force.
    pub fn limits(&self) -> &RegistryLimits {
        &self.limits
    }

    /// History bytes held over all topics (the newest update of each excluded).
    pub fn history_bytes(&self) -> usize {
        self.history_total.load(Ordering::Relaxed)
    }

    /// Topics that exist only as placeholders (subscribed, never published).
    pub fn placeholders(&self) -> usize {
        self.lock_index().placeholders
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Relays only: adopts the origin's epoch. When it differs, every topic's history is
    /// dropped (its numbers mean nothing in the new epoch) and every topic is marked stale, so
    /// that its next update reaches each subscriber as SNAPSHOT|RESET. True when it changed.
    pub fn adopt_epoch(&self, epoch: u64) -> bool {
        if self.epoch.swap(epoch, Ordering::AcqRel) == epoch {
            return false;
        }
        for t in self.live() {
            let mut st = t.state.lock().unwrap_or_else(|e| e.into_inner());
            self.clear_history(&mut st);
            st.stale = true;
        }
        true
    }

    /// Ingest only: `topic` is numbered by an external source from now on; nothing else may
    /// publish to it.
    pub fn mark_fed(&self, topic: &Topic) {
        topic.fed.store(true, Ordering::Release);
    }

    /// Feeds only: `topic`'s numbering restarted at its source (a stream deleted and created
    /// again). Its history goes, and its next update reaches subscribers as SNAPSHOT|RESET
    /// whatever its number (see [`Registry::apply`]); resumes from the old numbers get `reset`.
    pub fn mark_stale(&self, topic: &Topic) {
        let mut st = topic.state.lock().unwrap_or_else(|e| e.into_inner());
        self.clear_history(&mut st);
        st.stale = true;
    }

    /// UPDATE frames encoded so far (live frames and snapshots); one per publish plus one per
    /// snapshot variant first requested after a publish, whatever the number of subscribers.
    pub fn frames_encoded(&self) -> u64 {
        self.frames_encoded.load(Ordering::Relaxed)
    }

    /// Number of topics (placeholders included).
    pub fn len(&self) -> usize {
        let ix = self.lock_index();
        ix.permanent + ix.placeholders
    }

    /// True when no topic exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last relay-feed datagram multicast (0: none, or no feed).
    pub fn feed_seq(&self) -> u64 {
        self.feed_seq.load(Ordering::Acquire)
    }

    /// The feed sender records each datagram it multicast.
    pub fn set_feed_seq(&self, seq: u64) {
        self.feed_seq.store(seq, Ordering::Release);
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The topic named `name`, if it exists (creates nothing).
    pub fn lookup(&self, name: &str) -> Option<Arc<Topic>> {
        let id = *self.lock_index().names.get(name)?;
        self.get(id)
    }

    /// The topic named `name` for a publisher or a relay feed: created if needed (or promoted
    /// from a placeholder), and kept for the epoch. At most `max_topics` such topics.
    pub fn get_or_create(&self, name: &str) -> Result<Arc<Topic>, TopicLimit> {
        let mut ix = self.lock_index();
        if let Some(&id) = ix.names.get(name) {
            if !ix.life[id as usize].permanent {
                if ix.permanent >= self.limits.max_topics {
                    return Err(TopicLimit(self.limits.max_topics));
                }
                ix.life[id as usize].permanent = true;
                ix.permanent += 1;
                ix.placeholders -= 1;
            }
            return Ok(self.get(id).expect("named topics exist"));
        }
        if ix.permanent >= self.limits.max_topics {
            return Err(TopicLimit(self.limits.max_topics));
        }
        let t = self.create(&mut ix, name);
        ix.life[t.id as usize].permanent = true;
        ix.permanent += 1;
        Ok(t)
    }

    /// One more subscription to `name`: the topic, or a placeholder created for it (no value,
    /// freed again with its last subscriber, see [`Registry::release`]). At most
    /// `max_placeholders` placeholders exist, so subscribers cannot fill the registry that
    /// publishers need: the checks come before anything is allocated.
    pub fn acquire(&self, name: &str) -> Result<Arc<Topic>, TopicLimit> {
        let mut ix = self.lock_index();
        let id = match ix.names.get(name) {
            Some(&id) => id,
            None => {
                if ix.placeholders >= self.limits.max_placeholders {
                    return Err(TopicLimit(self.limits.max_placeholders));
                }
                ix.placeholders += 1;
                self.create(&mut ix, name).id
            }
        };
        ix.life[id as usize].subscribers += 1;
        Ok(self.get(id).expect("named topics exist"))
    }

    /// One subscription to topic `id` ended (`watcher`: it had asked for presence). A
    /// placeholder whose last subscriber left is freed (its id may be reused: nobody holds it
    /// any more). Returns the topic's presence afterwards.
    pub fn release(&self, id: u32, watcher: bool) -> Presence {
        let mut ix = self.lock_index();
        let Some(life) = ix.life.get_mut(id as usize) else {
            return Presence::default();
        };
        life.subscribers = life.subscribers.saturating_sub(1);
        if watcher {
            life.watchers = life.watchers.saturating_sub(1);
        }
        let left = Presence {
            members: life.subscribers,
            watchers: life.watchers,
        };
        if life.subscribers > 0 || life.permanent {
            return left;
        }
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let Some(t) = topics.get_mut(id as usize - 1).and_then(|t| t.take()) else {
            return left;
        };
        ix.names.remove(&t.name);
        ix.life[id as usize] = Life::default();
        ix.free.push(id);
        ix.placeholders -= 1;
        left
    }

    /// A subscription to topic `id` asked for presence.
    pub fn add_watcher(&self, id: u32) -> Presence {
        let mut ix = self.lock_index();
        let Some(life) = ix.life.get_mut(id as usize) else {
            return Presence::default();
        };
        life.watchers += 1;
        Presence {
            members: life.subscribers,
            watchers: life.watchers,
        }
    }

    /// Topic `id`'s presence over all shards.
    pub fn presence(&self, id: u32) -> Presence {
        self.lock_index()
            .life
            .get(id as usize)
            .map_or(Presence::default(), |l| Presence {
                members: l.subscribers,
                watchers: l.watchers,
            })
    }

    /// Subscriptions to topic `id` over all shards.
    pub fn subscribers(&self, id: u32) -> u32 {
        self.lock_index()
            .life
            .get(id as usize)
            .map_or(0, |l| l.subscribers)
    }

    /// A new topic under the index lock (the caller counts it).
    fn create(&self, ix: &mut Index, name: &str) -> Arc<Topic> {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let id = ix.free.pop().unwrap_or(topics.len() as u32 + 1);
        let name: Arc<str> = Arc::from(name);
        let t = Arc::new(Topic {
            id,
            name: name.clone(),
            topic_frame: Frame::Topic {
                topic_id: id,
                name: name.to_string(),
            }
            .to_bytes()
            .expect("topic names fit a str8"),
            fed: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(TopicState::default()),
        });
        if id as usize > topics.len() {
            topics.push(Some(t.clone()));
        } else {
            topics[id as usize - 1] = Some(t.clone());
        }
        if ix.life.len() <= id as usize {
            ix.life.resize(id as usize + 1, Life::default());
        }
        ix.names.insert(name, id);
        t
    }

    /// The topic with id `id`.
    pub fn get(&self, id: u32) -> Option<Arc<Topic>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.get((id as usize).checked_sub(1)?)?.clone()
    }

    /// Every topic kept for the epoch (created by a publisher or a feed), in id order;
    /// placeholders are left out.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let ix = self.lock_index();
        self.live()
            .into_iter()
            .filter(|t| ix.life[t.id as usize].permanent)
            .collect()
    }

    /// Every topic, placeholders included.
    fn live(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Assigns the next sequence number of `topic`, encodes the UPDATE once, records it as the
    /// latest value and in the history, and hands it to `fanout` while the topic is locked (so
    /// that every receiver gets the topic's updates in order). Returns the sequence number.
    pub fn publish(
        &self,
        topic: &Topic,
        flags: u8,
        payload: &[u8],
        now_us: u64,
        fanout: &mut dyn FnMut(UpdateMsg),
    ) -> u64 {
        let flags = flags & update_flags::PUBLISH_MASK;
        let mut st = topic.state.lock().unwrap_or_else(|e| e.into_inner());
        let seq = st.seq + 1;
        self.record(topic.id, &mut st, seq, now_us, flags, payload, fanout);
        seq
    }

    /// Makes update `seq` the topic's latest value: encodes it once, drops the cached
    /// snapshots, appends it to the history (restarted when the update is a snapshot:
    /// nothing before it can be replayed), and hands it to `fanout`, all under the topic's
    /// lock held by the caller.
    #[allow(clippy::too_many_arguments)] // the parts of one update, all needed
    fn record(
        &self,
        id: u32,
        st: &mut TopicState,
        seq: u64,
        timestamp_us: u64,
        flags: u8,
        payload: &[u8],
        fanout: &mut dyn FnMut(UpdateMsg),
    ) {
        st.seq = seq;
        let frame = encode_update(id, seq, timestamp_us, flags, payload);
        self.frames_encoded.fetch_add(1, Ordering::Relaxed);
        st.last = Some(Last {
            payload: frame.slice(UPDATE_HEADER_LEN..),
            timestamp_us,
        });
        st.snapshot = None;
        st.snapshot_reset = None;
        if flags & update_flags::SNAPSHOT != 0 {
            self.clear_history(st);
        }
        self.push_history(st, seq, frame.clone());
        fanout(UpdateMsg {
            topic: id,
            seq,
            flags,
            frame,
            skip: 0,
        });
    }

    /// Appends the newest update to the history and trims it to its bounds: `history_depth`
    /// entries, `history_bytes` bytes per topic, and `max_history_bytes` over all topics (the
    /// newest entry of each topic is not counted there: it is the latest value, kept anyway).
    fn push_history(&self, st: &mut TopicState, seq: u64, frame: Bytes) {
        let l = &self.limits;
        if l.history_depth == 0 {
            return;
        }
        if let Some((_, newest)) = st.history.back() {
            // The previous newest entry now costs history memory of its own.
            self.history_total
                .fetch_add(newest.len(), Ordering::Relaxed);
        }
        st.history_len += frame.len();
        st.history.push_back((seq, frame));
        while st.history.len() > 1
            && (st.history.len() > l.history_depth
                || st.history_len > l.history_bytes
                || self.history_total.load(Ordering::Relaxed) > l.max_history_bytes)
        {
            let (_, old) = st.history.pop_front().expect("len > 1");
            st.history_len -= old.len();
            self.history_total.fetch_sub(old.len(), Ordering::Relaxed);
        }
    }

    /// Empties a topic's history (its numbers restarted, or a snapshot broke continuity).
    fn clear_history(&self, st: &mut TopicState) {
        if let Some((_, newest)) = st.history.back() {
            let extra = st.history_len - newest.len();
            self.history_total.fetch_sub(extra, Ordering::Relaxed);
        }
        st.history.clear();
        st.history_len = 0;
    }

    /// Relays only: applies an update that the origin numbered (`seq`, its timestamp and
    /// flags), re-encoded once with this engine's topic id and handed to `fanout` like a local
    /// publish. Duplicates (seq at or below the topic's) are dropped, so overlapping sources
    /// (a snapshot and buffered live packets, A/B feeds, retransmits) need no other filter.
    /// A gap, or the first update after an epoch change, breaks continuity: it goes out
    /// flagged SNAPSHOT|RESET and the history restarts from it.
    pub fn apply(
        &self,
        topic: &Topic,
        u: &yorker_wire::Update,
        fanout: &mut dyn FnMut(UpdateMsg),
    ) -> Applied {
        let mut st = topic.state.lock().unwrap_or_else(|e| e.into_inner());
        let snapshot = u.flags & update_flags::SNAPSHOT != 0;
        // A topic that never had a value (a client subscribed before the relay synced) has no
        // state a client could hold: its first value is no break.
        let (applied, flags) = if st.stale && st.last.is_some() {
            (Applied::Reset, update_flags::SNAPSHOT | update_flags::RESET)
        } else if u.seq <= st.seq {
            return Applied::Duplicate;
        } else if u.seq == st.seq + 1 {
            (Applied::InOrder, u.flags & update_flags::PUBLISH_MASK)
        } else if st.seq == 0 && snapshot {
            // The first value this relay learns: a snapshot, like a subscriber's.
            (Applied::InOrder, update_flags::SNAPSHOT)
        } else {
            (Applied::Reset, update_flags::SNAPSHOT | update_flags::RESET)
        };
        st.stale = false;
        self.record(
            topic.id,
            &mut st,
            u.seq,
            u.timestamp_us,
            flags,
            &u.payload,
            fanout,
        );
        applied
    }

    /// The topic's current sequence number.
    pub fn seq(&self, topic: &Topic) -> u64 {
        topic.state.lock().unwrap_or_else(|e| e.into_inner()).seq
    }

    /// How a new subscription to `topic` starts, given an optional resume point. A replay
    /// longer than `replay_budget` bytes (what the connection's outbox can still take) falls
    /// back to the snapshot, answered `reset`: a resume never costs the client its connection.
    pub fn start_subscription(
        &self,
        topic: &Topic,
        resume: Option<ResumeFrom>,
        replay_budget: usize,
    ) -> SubStart {
        let mut st = topic.state.lock().unwrap_or_else(|e| e.into_inner());
        let cur = st.seq;
        let epoch = self.epoch();
        let reset = match resume {
            None => false,
            Some(r) if r.epoch != epoch || r.seq > cur || st.stale => true,
            Some(r) if r.seq == cur => {
                return SubStart {
                    result: SubResult::Resumed,
                    seq: cur,
                    frames: Vec::new(),
                }
            }
            Some(r) => {
                let first_needed = r.seq + 1;
                match st.history.front() {
                    Some(&(oldest, _))
                        if oldest <= first_needed
                            && st
                                .history
                                .iter()
                                .skip((first_needed - oldest) as usize)
                                .map(|(_, f)| f.len())
                                .sum::<usize>()
                                <= replay_budget =>
                    {
                        let skip = (first_needed - oldest) as usize;
                        return SubStart {
                            result: SubResult::Resumed,
                            seq: cur,
                            frames: st
                                .history
                                .iter()
                                .skip(skip)
                                .map(|(_, f)| f.clone())
                                .collect(),
                        };
                    }
                    _ => true,
                }
            }
        };
        let result = if reset {
            SubResult::Reset
        } else {
            SubResult::Ok
        };
        let frames = self
            .snapshot(topic.id, &mut st, reset)
            .into_iter()
            .collect();
        SubStart {
            result,
            seq: cur,
            frames,
        }
    }

    /// The cached snapshot frame of the latest value (encoded at most once per value and form).
    fn snapshot(&self, id: u32, st: &mut TopicState, reset: bool) -> Option<Bytes> {
        let cached = if reset {
            &st.snapshot_reset
        } else {
            &st.snapshot
        };
        if let Some(f) = cached {
            return Some(f.clone());
        }
        let last = st.last.as_ref()?;
        let flags = update_flags::SNAPSHOT | if reset { update_flags::RESET } else { 0 };
        let f = encode_update(id, st.seq, last.timestamp_us, flags, &last.payload);
        self.frames_encoded.fetch_add(1, Ordering::Relaxed);
        if reset {
            st.snapshot_reset = Some(f.clone());
        } else {
            st.snapshot = Some(f.clone());
        }
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yorker_wire::{Decoder, Frame};

    fn decode(f: &Bytes) -> yorker_wire::Update {
        let mut d = Decoder::new(1 << 20);
        d.feed(f);
        match d.next_frame().unwrap().unwrap() {
            Frame::Update(u) => u,
            other => panic!("{other:?}"),
        }
    }

    fn publish(r: &Registry, t: &Topic, p: &[u8]) -> Vec<UpdateMsg> {
        let mut out = Vec::new();
        r.publish(t, 0, p, 1000, &mut |m| out.push(m));
        out
    }

    #[test]
    fn sequence_and_snapshot() {
        let r = Registry::new(7, 4, 10);
        let t = r.get_or_create("m/1").unwrap();
        let s = r.start_subscription(&t, None, usize::MAX);
        assert_eq!((s.result, s.seq, s.frames.len()), (SubResult::Ok, 0, 0));
        publish(&r, &t, b"a");
        let m = publish(&r, &t, b"b");
        assert_eq!(m[0].seq, 2);
        let s = r.start_subscription(&t, None, usize::MAX);
        assert_eq!((s.result, s.seq), (SubResult::Ok, 2));
        let u = decode(&s.frames[0]);
        assert_eq!(
            (u.seq, u.flags, &u.payload[..]),
            (2, update_flags::SNAPSHOT, &b"b"[..])
        );
        // Cached: a second subscriber costs no encode.
        let before = r.frames_encoded();
        r.start_subscription(&t, None, usize::MAX);
        assert_eq!(r.frames_encoded(), before);
    }

    #[test]
    fn history_replay_versus_reset() {
        let r = Registry::new(7, 3, 10);
        let t = r.get_or_create("m/1").unwrap();
        for p in [b"1", b"2", b"3", b"4", b"5"] {
            publish(&r, &t, p);
        }
        // History holds 3,4,5. Resume from 2: replay 3..=5, the original frames.
        let s = r.start_subscription(&t, Some(ResumeFrom { epoch: 7, seq: 2 }), usize::MAX);
        assert_eq!(s.result, SubResult::Resumed);
        let seqs: Vec<u64> = s.frames.iter().map(|f| decode(f).seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(decode(&s.frames[0]).flags, 0);
        // Up to date: nothing follows.
        let s = r.start_subscription(&t, Some(ResumeFrom { epoch: 7, seq: 5 }), usize::MAX);
        assert_eq!((s.result, s.frames.len()), (SubResult::Resumed, 0));
        // Too old: reset snapshot.
        let s = r.start_subscription(&t, Some(ResumeFrom { epoch: 7, seq: 1 }), usize::MAX);
        assert_eq!(s.result, SubResult::Reset);
        let u = decode(&s.frames[0]);
        assert_eq!(
            (u.seq, u.flags),
            (5, update_flags::SNAPSHOT | update_flags::RESET)
        );
        // From the future of this epoch: reset.
        let s = r.start_subscription(&t, Some(ResumeFrom { epoch: 7, seq: 9 }), usize::MAX);
        assert_eq!(s.result, SubResult::Reset);
    }

    #[test]
    fn epoch_change_resets() {
        let old = Registry::new(1, 8, 10);
        let t = old.get_or_create("m").unwrap();
        publish(&old, &t, b"x");
        // Restarted server: new epoch, same topic name, seq restarts.
        let new = Registry::new(2, 8, 10);
        let t2 = new.get_or_create("m").unwrap();
        publish(&new, &t2, b"y");
        let s = new.start_subscription(&t2, Some(ResumeFrom { epoch: 1, seq: 1 }), usize::MAX);
        assert_eq!(s.result, SubResult::Reset);
        assert_eq!(&decode(&s.frames[0]).payload[..], b"y");
    }

    fn upd(seq: u64, flags: u8, p: &[u8]) -> yorker_wire::Update {
        yorker_wire::Update {
            topic_id: 99, // the origin's id: meaningless here
            seq,
            timestamp_us: 5,
            flags,
            payload: Bytes::copy_from_slice(p),
        }
    }

    fn apply(r: &Registry, t: &Topic, u: yorker_wire::Update) -> (Applied, Option<UpdateMsg>) {
        let mut out = None;
        let a = r.apply(t, &u, &mut |m| out = Some(m));
        (a, out)
    }

    /// A feed whose source restarted its numbering (a stream created again): the topic's next
    /// update, with a lower number, goes out as SNAPSHOT|RESET instead of being dropped as a
    /// duplicate, and resumes from the old numbers get `reset`.
    #[test]
    fn a_stale_topic_takes_a_lower_number_as_a_reset() {
        let r = Registry::new(1, 8, 10);
        let t = r.get_or_create("m").unwrap();
        apply(&r, &t, upd(40, update_flags::SNAPSHOT, b"a"));
        apply(&r, &t, upd(41, 0, b"b"));
        assert_eq!(apply(&r, &t, upd(2, 0, b"old")).0, Applied::Duplicate);
        r.mark_stale(&t);
        let s = r.start_subscription(&t, Some(ResumeFrom { epoch: 1, seq: 40 }), usize::MAX);
        assert_eq!(
            s.result,
            SubResult::Reset,
            "the history went with the numbering"
        );
        let (a, m) = apply(&r, &t, upd(1, update_flags::SNAPSHOT, b"new"));
        assert_eq!(a, Applied::Reset);
        assert_eq!(
            m.unwrap().flags,
            update_flags::SNAPSHOT | update_flags::RESET
        );
        assert_eq!(r.seq(&t), 1);
        assert_eq!(apply(&r, &t, upd(2, 0, b"next")).0, Applied::InOrder);
    }

    #[test]
    fn relayed_updates_keep_origin_numbers_and_flag_breaks() {
        let r = Registry::new(1, 8, 10);
        r.adopt_epoch(77);
        assert_eq!(r.epoch(), 77);
        let t = r.get_or_create("m").unwrap();
        // First value: a snapshot (the relay's start), passed on as a snapshot.
        let (a, m) = apply(&r, &t, upd(10, update_flags::SNAPSHOT, b"s"));
        assert_eq!(
            (a, m.unwrap().flags),
            (Applied::InOrder, update_flags::SNAPSHOT)
        );
        // In order, with the origin's flags and timestamp; re-encoded with the local id.
        let (a, m) = apply(&r, &t, upd(11, update_flags::URGENT, b"u"));
        let m = m.unwrap();
        let u = decode(&m.frame);
        assert_eq!(a, Applied::InOrder);
        assert_eq!(
            (u.topic_id, u.seq, u.timestamp_us, u.flags),
            (t.id, 11, 5, 1)
        );
        // Duplicates (snapshot overlap, A/B, retransmit) are dropped.
        assert_eq!(apply(&r, &t, upd(11, 0, b"u")).0, Applied::Duplicate);
        assert_eq!(apply(&r, &t, upd(3, 0, b"old")).0, Applied::Duplicate);
        // A gap: SNAPSHOT|RESET, and the history restarts there.
        let (a, m) = apply(&r, &t, upd(15, update_flags::SNAPSHOT, b"v"));
        assert_eq!(a, Applied::Reset);
        assert_eq!(
            m.unwrap().flags,
            update_flags::SNAPSHOT | update_flags::RESET
        );
        let s = r.start_subscription(&t, Some(ResumeFrom { epoch: 77, seq: 11 }), usize::MAX);
        assert_eq!(s.result, SubResult::Reset);
        apply(&r, &t, upd(16, 0, b"w"));
        let s = r.start_subscription(&t, Some(ResumeFrom { epoch: 77, seq: 15 }), usize::MAX);
        assert_eq!((s.result, s.frames.len()), (SubResult::Resumed, 1));
        // The origin restarted: numbers restart low, and the first one resets every client.
        assert!(r.adopt_epoch(78));
        assert!(!r.adopt_epoch(78));
        let s = r.start_subscription(&t, Some(ResumeFrom { epoch: 78, seq: 16 }), usize::MAX);
        assert_eq!(s.result, SubResult::Reset, "stale until resynchronised");
        let (a, m) = apply(&r, &t, upd(1, 0, b"new"));
        assert_eq!((a, m.unwrap().seq), (Applied::Reset, 1));
        assert_eq!(apply(&r, &t, upd(2, 0, b"n2")).0, Applied::InOrder);
    }

    #[test]
    fn topic_limit() {
        let r = Registry::new(1, 0, 2);
        let a = r.get_or_create("a").unwrap();
        assert_eq!(r.get_or_create("a").unwrap().id, a.id);
        r.get_or_create("b").unwrap();
        assert_eq!(r.get_or_create("c").unwrap_err(), TopicLimit(2));
        assert_eq!(r.get(2).unwrap().name.as_ref(), "b");
        assert!(r.get(0).is_none() && r.get(3).is_none());
    }

    #[test]
    fn placeholders_are_freed_with_their_last_subscriber_and_never_crowd_out_publishers() {
        let r = Registry::with_limits(
            1,
            RegistryLimits {
                max_topics: 2,
                max_placeholders: 3,
                ..RegistryLimits::default()
            },
        );
        // Subscribers create placeholders up to their own cap, and no further.
        let a = r.acquire("a").unwrap();
        let b = r.acquire("b").unwrap();
        r.acquire("c").unwrap();
        assert_eq!(r.acquire("d").unwrap_err(), TopicLimit(3));
        assert_eq!((r.len(), r.placeholders()), (3, 3));
        // A second subscriber of "a" shares it.
        assert_eq!(r.acquire("a").unwrap().id, a.id);
        assert_eq!(r.subscribers(a.id), 2);
        // Publishers still have their whole budget; publishing promotes a placeholder.
        assert_eq!(r.get_or_create("b").unwrap().id, b.id);
        r.get_or_create("p").unwrap();
        assert_eq!(r.get_or_create("q").unwrap_err(), TopicLimit(2));
        assert_eq!(r.all().len(), 2, "placeholders are not listed for relays");
        // The last subscriber leaving frees a placeholder (not a published topic).
        r.release(b.id, false);
        assert!(r.get(b.id).is_some());
        r.release(a.id, false);
        assert!(r.lookup("a").is_some());
        r.release(a.id, false);
        assert!(r.lookup("a").is_none() && r.get(a.id).is_none());
        // Its id is reused.
        assert_eq!(r.acquire("e").unwrap().id, a.id);
        assert_eq!(r.placeholders(), 2);
    }

    #[test]
    fn history_is_bounded_in_bytes_per_topic_and_over_all_topics() {
        let frame_len = UPDATE_HEADER_LEN + 100;
        let r = Registry::with_limits(
            1,
            RegistryLimits {
                history_depth: 64,
                history_bytes: 10 * frame_len,
                max_history_bytes: 12 * frame_len,
                ..RegistryLimits::default()
            },
        );
        let t1 = r.get_or_create("one").unwrap();
        for _ in 0..30 {
            publish(&r, &t1, &[1; 100]);
        }
        // 10 frames per topic: 9 of them count as history beyond the latest value.
        assert_eq!(r.history_bytes(), 9 * frame_len);
        let s = r.start_subscription(&t1, Some(ResumeFrom { epoch: 1, seq: 21 }), usize::MAX);
        assert_eq!((s.result, s.frames.len()), (SubResult::Resumed, 9));
        let t2 = r.get_or_create("two").unwrap();
        for _ in 0..30 {
            publish(&r, &t2, &[2; 100]);
        }
        // The global cap holds: the second topic could only keep a few entries.
        assert!(r.history_bytes() <= 12 * frame_len + frame_len);
        // A replay that does not fit the caller's budget falls back to a snapshot.
        let s = r.start_subscription(&t1, Some(ResumeFrom { epoch: 1, seq: 21 }), 5 * frame_len);
        assert_eq!((s.result, s.frames.len()), (SubResult::Reset, 1));
        assert_eq!(
            decode(&s.frames[0]).flags,
            update_flags::SNAPSHOT | update_flags::RESET
        );
    }
}
