//! Deterministic simulation of two shards, many connections, random publish / subscribe /
//! read-speed schedules, in virtual time, checking the delivery invariants:
//! per-topic order, no duplicates, gaps only where conflation is allowed, the latest value of
//! every subscribed topic eventually delivered to every live subscriber, and bounded outboxes.
//! Modelled on quinn-proto's test simulator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use yorker_wire::*;

use super::shard_core::CloseOrder;
use super::*;

#[derive(Default)]
struct QueueBus(Mutex<Vec<UpdateMsg>>);
impl Bus for QueueBus {
    fn publish(&self, msg: UpdateMsg) {
        self.0.lock().unwrap().push(msg);
    }
}

/// xorshift, so the run is reproducible from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct TopicView {
    last_seq: u64,
    conflate: bool,
}

/// A simulated client: a socket receive buffer drained at `speed` bytes per tick, and a decoder.
struct Client {
    shard: usize,
    slot: u32,
    speed: usize,
    wire: Vec<u8>,
    in_flight: usize,
    dec: Decoder,
    topics: HashMap<u32, TopicView>,
    /// Topic names by request id awaiting SUBACK.
    requests: HashMap<u32, Vec<(String, bool)>>,
    names: HashMap<String, u32>,
    closed: bool,
    gaps: u64,
}

struct World {
    rng: Rng,
    bus: Arc<QueueBus>,
    shards: Vec<ShardCore>,
    clients: Vec<Client>,
    now: Now,
    next_req: u32,
    limit: usize,
}

const TOPICS: [&str; 5] = ["m/1", "m/2", "m/3", "news", "odds"];

impl World {
    fn new(seed: u64, policy: SlowPolicy) -> World {
        let registry = Arc::new(Registry::new(99, 16, 100));
        let bus = Arc::new(QueueBus::default());
        let cfg = Arc::new(CoreConfig {
            outbox_limit: 2_000,
            slow_policy: policy,
            publisher_key: Some("k".into()),
            max_frames_per_send: 4,
            heartbeat_ms: 1_000_000,
            ..CoreConfig::default()
        });
        let shards = (0..2)
            .map(|i| ShardCore::new(cfg.clone(), registry.clone(), bus.clone(), i + 1))
            .collect();
        World {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            bus,
            shards,
            clients: Vec::new(),
            now: Now { ms: 1, unix_us: 1 },
            next_req: 1,
            limit: 2_000,
        }
    }

    fn connect(&mut self, role: Role, speed: usize) -> usize {
        let shard = self.clients.len() % 2;
        let slot = self.clients.len() as u32;
        self.shards[shard].open(slot, self.now);
        let hello = Frame::Hello(Hello {
            version: 1,
            role,
            client_name: "sim".into(),
            token: "k".into(),
        });
        self.clients.push(Client {
            shard,
            slot,
            speed,
            wire: Vec::new(),
            in_flight: 0,
            dec: Decoder::new(DEFAULT_MAX_FRAME),
            topics: HashMap::new(),
            requests: HashMap::new(),
            names: HashMap::new(),
            closed: false,
            gaps: 0,
        });
        let i = self.clients.len() - 1;
        self.send(i, &hello);
        i
    }

    fn send(&mut self, i: usize, f: &Frame) {
        let b = f.to_bytes().unwrap();
        let (shard, slot) = (self.clients[i].shard, self.clients[i].slot);
        // Deliver in random pieces, as TCP may.
        let mut pos = 0;
        while pos < b.len() {
            let n = 1 + self.rng.below(b.len() as u64) as usize;
            let end = (pos + n).min(b.len());
            self.shards[shard].on_bytes(slot, &b[pos..end], self.now);
            pos = end;
        }
    }

    fn subscribe(&mut self, i: usize) {
        let name = TOPICS[self.rng.below(TOPICS.len() as u64) as usize].to_string();
        let conflate = self.rng.below(4) != 0;
        let req = self.next_req;
        self.next_req += 1;
        let resume = self.clients[i]
            .names
            .get(&name)
            .and_then(|id| self.clients[i].topics.get(id))
            .map(|v| ResumeFrom {
                epoch: 99,
                seq: v.last_seq,
            });
        self.clients[i]
            .requests
            .insert(req, vec![(name.clone(), conflate)]);
        self.send(
            i,
            &Frame::Subscribe(Subscribe {
                request_id: req,
                entries: vec![SubscribeEntry {
                    topic: name,
                    resume,
                    conflate,
                }],
            }),
        );
    }

    fn publish(&mut self, publisher: usize) {
        let topic = TOPICS[self.rng.below(TOPICS.len() as u64) as usize].to_string();
        let urgent = self.rng.below(10) == 0;
        let len = 1 + self.rng.below(60) as usize;
        let payload = Bytes::from(vec![7u8; len]);
        self.send(
            publisher,
            &Frame::Publish(Publish {
                flags: if urgent { update_flags::URGENT } else { 0 },
                topic,
                payload,
            }),
        );
    }

    /// One tick of the "driver": bus -> shards, ready -> sends, wires -> clients, closes.
    fn pump(&mut self) {
        let msgs: Vec<UpdateMsg> = std::mem::take(&mut *self.bus.0.lock().unwrap());
        for m in &msgs {
            for s in &mut self.shards {
                s.on_update(m, self.now);
            }
        }
        for sh in 0..2 {
            let mut ready = Vec::new();
            self.shards[sh].take_ready(&mut ready);
            for slot in ready {
                let c = &mut self.clients[slot as usize];
                if c.in_flight > 0 {
                    continue;
                }
                let mut out = Vec::new();
                let n = self.shards[sh].take_send(slot, &mut out, self.now);
                for f in out {
                    c.wire.extend_from_slice(&f);
                }
                c.in_flight = n;
            }
            let mut closing: Vec<CloseOrder> = Vec::new();
            self.shards[sh].take_closing(&mut closing);
            for o in closing {
                self.clients[o.slot as usize].closed = true;
                self.shards[sh].remove(o.slot);
            }
        }
        for s in &self.shards {
            for c in &self.clients {
                assert!(
                    s.outbox_bytes(c.slot) <= self.limit + 64,
                    "outbox over its limit"
                );
            }
        }
        for i in 0..self.clients.len() {
            self.client_read(i);
        }
    }

    fn client_read(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let n = c.speed.min(c.wire.len());
        let data: Vec<u8> = c.wire.drain(..n).collect();
        c.dec.feed(&data);
        if c.in_flight > 0 && c.wire.is_empty() {
            c.in_flight = 0;
            if !c.closed {
                self.shards[c.shard].on_send_done(c.slot, self.now);
            }
        }
        while let Some(f) = c.dec.next_frame().expect("server frames decode") {
            match f {
                Frame::SubAck(a) => {
                    let req = c.requests.remove(&a.request_id).expect("known request");
                    for ((name, conflate), e) in req.into_iter().zip(a.entries) {
                        assert!(e.result.is_subscribed(), "{:?}", e.result);
                        c.names.insert(name, e.topic_id);
                        let v = c.topics.entry(e.topic_id).or_default();
                        if e.result != SubResult::AlreadySubscribed {
                            v.conflate = conflate;
                        }
                        if e.result == SubResult::Resumed {
                            assert!(e.seq >= v.last_seq);
                        }
                    }
                }
                Frame::Update(u) => {
                    let v = c.topics.get_mut(&u.topic_id).expect("UPDATE after SUBACK");
                    let reset = u.flags & update_flags::RESET != 0;
                    if !reset {
                        assert!(
                            u.seq > v.last_seq,
                            "order/duplicate: {} after {}",
                            u.seq,
                            v.last_seq
                        );
                        if u.seq > v.last_seq + 1
                            && v.last_seq > 0
                            && u.flags & update_flags::SNAPSHOT == 0
                        {
                            assert!(v.conflate, "gap on a non-conflating subscription");
                            c.gaps += 1;
                        }
                    }
                    v.last_seq = u.seq;
                }
                Frame::Error(e) => {
                    assert_eq!(e.code, ErrorCode::SlowConsumer as u16, "{e:?}");
                }
                Frame::Welcome(_) | Frame::Pong { .. } | Frame::Heartbeat => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn run(seed: u64, policy: SlowPolicy) -> (u64, u64) {
    let mut w = World::new(seed, policy);
    let publisher = w.connect(Role::Publisher, 1 << 20);
    for _ in 0..40 {
        let speed = match w.rng.below(4) {
            0 => 3,    // very slow
            1 => 40,   // slow
            _ => 4096, // fast
        };
        let i = w.connect(Role::Subscriber, speed);
        let subs = 1 + w.rng.below(3);
        for _ in 0..subs {
            w.subscribe(i);
        }
    }
    for _ in 0..600 {
        w.now.ms += 1;
        w.now.unix_us += 1000;
        for _ in 0..w.rng.below(4) {
            w.publish(publisher);
        }
        if w.rng.below(20) == 0 {
            let i = 1 + w.rng.below(40) as usize;
            if !w.clients[i].closed {
                w.subscribe(i);
            }
        }
        w.pump();
    }
    // Quiesce: everyone reads fast until nothing moves.
    for c in &mut w.clients {
        c.speed = 1 << 20;
    }
    for _ in 0..50 {
        w.pump();
    }
    let registry_seq = |w: &World, id: u32| {
        // The latest seq of a topic, as the registry knows it.
        let reg = &w.shards[0].registry;
        reg.start_subscription(&reg.get(id).unwrap(), None, usize::MAX)
            .seq
    };
    let mut gaps = 0;
    let mut live = 0;
    for c in w.clients.iter().skip(1) {
        gaps += c.gaps;
        if c.closed {
            continue;
        }
        live += 1;
        for (&id, v) in &c.topics {
            assert_eq!(
                v.last_seq,
                registry_seq(&w, id),
                "latest value not delivered"
            );
        }
    }
    for s in &w.shards {
        assert_eq!(s.stats().outbox_bytes, 0);
    }
    if std::env::var("SIM_DEBUG").is_ok() {
        eprintln!(
            "seed {seed}: gaps {gaps} live {live} stats {:?}",
            w.shards[0].stats()
        );
    }
    (gaps, live)
}

#[test]
fn simulation_invariants_conflate_policy() {
    let mut total_gaps = 0;
    for seed in 1..=12 {
        let (gaps, live) = run(seed, SlowPolicy::Conflate);
        total_gaps += gaps;
        assert!(live > 0);
    }
    // Slow readers on conflating subscriptions must have been skipped ahead at least once,
    // or the simulation did not exercise conflation.
    assert!(total_gaps > 0);
}

#[test]
fn simulation_invariants_disconnect_policy() {
    for seed in 100..=106 {
        let (gaps, _) = run(seed, SlowPolicy::Disconnect);
        assert_eq!(gaps, 0, "the disconnect policy never conflates");
    }
}

#[test]
fn encode_once_per_update_whatever_the_subscribers() {
    let mut w = World::new(5, SlowPolicy::Conflate);
    let p = w.connect(Role::Publisher, 1 << 20);
    for _ in 0..30 {
        let i = w.connect(Role::Subscriber, 1 << 20);
        w.send(
            i,
            &Frame::Subscribe(Subscribe {
                request_id: 1,
                entries: vec![SubscribeEntry {
                    topic: "m/1".into(),
                    resume: None,
                    conflate: true,
                }],
            }),
        );
        w.clients[i].requests.insert(1, vec![("m/1".into(), true)]);
    }
    w.pump();
    let before = w.shards[0].registry.frames_encoded();
    for _ in 0..10 {
        w.send(
            p,
            &Frame::Publish(Publish {
                flags: 0,
                topic: "m/1".into(),
                payload: Bytes::from_static(b"x"),
            }),
        );
        w.pump();
    }
    assert_eq!(w.shards[0].registry.frames_encoded() - before, 10);
    let deliveries: u64 = w.shards.iter().map(|s| s.stats().deliveries).sum();
    assert_eq!(deliveries, 300);
    let _ = BytesMut::new();
}

mod fuzz {
    //! Arbitrary client bytes never panic the core and never break its bounds: the stand-in
    //! for a fuzz target that CI always runs.
    use super::*;
    use proptest::prelude::*;

    fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
        // Mostly valid frames with corruption, plus raw noise.
        let frame = prop_oneof![
            Just(Frame::Hello(Hello {
                version: 1,
                role: Role::Subscriber,
                client_name: "f".into(),
                token: String::new()
            })),
            Just(Frame::Hello(Hello {
                version: 1,
                role: Role::Publisher,
                client_name: "f".into(),
                token: "k".into()
            })),
            "[a-z/]{0,12}".prop_map(|t| Frame::Subscribe(Subscribe {
                request_id: 1,
                entries: vec![SubscribeEntry {
                    topic: t,
                    resume: Some(ResumeFrom { epoch: 99, seq: 3 }),
                    conflate: true
                }],
            })),
            "[a-z/ ]{0,12}".prop_map(|t| Frame::Publish(Publish {
                flags: 3,
                topic: t,
                payload: Bytes::from_static(b"p")
            })),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            Just(Frame::Unsubscribe(Unsubscribe {
                request_id: 2,
                topic_ids: vec![1, 9, 0]
            })),
            Just(Frame::Heartbeat),
        ]
        .prop_map(|f| f.to_bytes().unwrap().to_vec());
        let noisy = (
            frame,
            any::<u8>(),
            any::<prop::sample::Index>(),
            any::<bool>(),
        )
            .prop_map(|(mut b, x, i, flip)| {
                if flip {
                    let at = i.index(b.len());
                    b[at] ^= x;
                }
                b
            });
        proptest::collection::vec(
            prop_oneof![4 => noisy, 1 => proptest::collection::vec(any::<u8>(), 0..40)],
            1..30,
        )
    }

    /// Frames an anonymous client may send: no key, so no publisher or relay role.
    fn anonymous_chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let entry =
            ("[a-z]{1,3}(/[a-z0-9]{1,3}){0,2}", any::<bool>()).prop_map(|(t, r)| SubscribeEntry {
                topic: t,
                resume: r.then_some(ResumeFrom { epoch: 99, seq: 1 }),
                conflate: true,
            });
        let frame = prop_oneof![
            Just(Frame::Hello(Hello {
                version: 2,
                role: Role::Subscriber,
                client_name: "a".into(),
                token: String::new()
            })),
            (any::<u32>(), proptest::collection::vec(entry, 0..12)).prop_map(|(r, e)| {
                Frame::Subscribe(Subscribe {
                    request_id: r,
                    entries: e,
                })
            }),
            proptest::collection::vec(0u32..40, 0..8).prop_map(|ids| {
                Frame::Unsubscribe(Unsubscribe {
                    request_id: 3,
                    topic_ids: ids,
                })
            }),
            "[a-z/]{1,8}".prop_map(|t| Frame::Publish(Publish {
                flags: 0,
                topic: t,
                payload: Bytes::from_static(b"p")
            })),
            Just(Frame::Hello(Hello {
                version: 1,
                role: Role::Relay,
                client_name: "r".into(),
                token: String::new()
            })),
            Just(Frame::Auth {
                token: "x.y.z".into()
            }),
        ]
        .prop_map(|f| f.to_bytes().unwrap().to_vec());
        proptest::collection::vec(frame, 1..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// No sequence of anonymous client frames makes the registry grow beyond what those
        /// connections may hold (max_subscriptions each), and it shrinks back to nothing when
        /// they leave: subscribers never create permanent topics.
        #[test]
        fn anonymous_frames_never_grow_the_registry_beyond_their_limit(
            conns in proptest::collection::vec(anonymous_chunks(), 1..5),
        ) {
            let mut w = World::new(7, SlowPolicy::Conflate);
            let max = w.shards[0].config().max_subscriptions as usize;
            for (i, chunks) in conns.iter().enumerate() {
                w.shards[0].open(i as u32, w.now);
                for c in chunks {
                    w.shards[0].on_bytes(i as u32, c, w.now);
                    let reg = &w.shards[0].registry;
                    prop_assert!(reg.len() <= (i + 1) * max, "{} topics", reg.len());
                    prop_assert_eq!(reg.all().len(), 0, "a permanent topic appeared");
                }
            }
            for i in 0..conns.len() {
                w.shards[0].on_peer_closed(i as u32);
                w.shards[0].remove(i as u32);
            }
            prop_assert_eq!(w.shards[0].registry.len(), 0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_client_bytes(conns in proptest::collection::vec(chunks(), 1..6)) {
            let mut w = World::new(3, SlowPolicy::Conflate);
            for (i, chunks) in conns.iter().enumerate() {
                let slot = i as u32;
                w.shards[0].open(slot, w.now);
                for c in chunks {
                    w.shards[0].on_bytes(slot, c, w.now);
                    let msgs: Vec<UpdateMsg> = std::mem::take(&mut *w.bus.0.lock().unwrap());
                    for m in &msgs {
                        w.shards[0].on_update(m, w.now);
                    }
                }
            }
            w.now.ms += 100_000;
            w.shards[0].on_tick(w.now);
            let mut ready = Vec::new();
            w.shards[0].take_ready(&mut ready);
            for slot in ready {
                let mut out = Vec::new();
                w.shards[0].take_send(slot, &mut out, w.now);
                // Whatever the server sends must decode.
                let mut d = Decoder::new(MAX_MAX_FRAME);
                for f in out { d.feed(&f); }
                while let Some(_f) = d.next_frame().expect("server output decodes") {}
                w.shards[0].on_send_done(slot, w.now);
                prop_assert!(w.shards[0].outbox_bytes(slot) <= 2_000 + 300);
            }
            let mut closing = Vec::new();
            w.shards[0].take_closing(&mut closing);
            for o in closing { w.shards[0].remove(o.slot); }
            let s = w.shards[0].stats();
            prop_assert!(s.connections <= conns.len() as u64);
        }
    }
}
