//! Deterministic simulation of two shards and a fake kernel, in virtual time, modelled on
//! quinn-proto's test simulator.
//!
//! The fake kernel does what io_uring does to the shard, in any order it may: it allocates
//! direct-descriptor slots round-robin and reuses a slot as soon as its Close completes (even
//! in the same batch as a new accept), delays completions by random amounts, lets a receive or
//! a send complete just before the cancellation aimed at it, and delivers a reader's bytes only
//! as fast as it reads. Clients publish, subscribe, resume, read at random speeds and hang up.
//!
//! Checked on every step:
//! * every operation names the slot's current occupant (never the next one after reuse);
//! * at most one send is in flight per socket; Close only once nothing is in flight;
//! * outboxes stay within their limit;
//!
//! and at the end: every slot is free again, per-topic order, no duplicates, gaps only where
//! conflation is allowed, and the latest value of every subscribed topic reached every live
//! subscriber.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use yorker_wire::*;

use super::registry::Registry;
use super::slot::SlotState;
use super::*;

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

/// A simulated client.
struct Client {
    shard: usize,
    /// The kernel slot and the token the shard gave it, once accepted.
    token: Option<Token>,
    /// Bytes the client has not read yet (the socket's receive side).
    wire: Vec<u8>,
    speed: usize,
    dec: Decoder,
    topics: HashMap<u32, TopicView>,
    requests: HashMap<u32, Vec<(String, bool)>>,
    names: HashMap<String, u32>,
    /// Frames the client sent that the server has not received yet.
    outgoing: Vec<u8>,
    /// The client hung up (or the server closed it).
    gone: bool,
    closed_by_server: bool,
    gaps: u64,
    resets: u64,
    role: Role,
    /// WELCOME's session id.
    session: u64,
    /// MESSAGE / POST request ids sent, and the POST's topic name (None: a MESSAGE).
    sent: HashMap<u32, Option<String>>,
    /// ACKs received: request id -> (code, seq). Exactly one per request.
    acks: HashMap<u32, (u16, u64)>,
    /// Updates of its own NO_ECHO POSTs: (topic id, seq).
    own: std::collections::HashSet<(u32, u64)>,
    /// Backend: CLIENT_MESSAGEs received, (session, request id).
    received: Vec<(u64, u32)>,
    /// RESPONSEs received (request ids).
    responses: Vec<u32>,
}

/// What the fake kernel knows of one slot.
#[derive(Default, Clone)]
struct KSlot {
    /// The client whose socket is installed here.
    client: Option<usize>,
    /// The generation the shard gave its occupant (from its first ArmRecv).
    generation: Option<u32>,
    recv_armed: bool,
    /// A send is in flight (its bytes are delivered to the client as it reads).
    send_in_flight: bool,
    /// Receives and sends whose completion has not reached the shard yet: until then the
    /// operation still references the slot.
    ops: u32,
    closing: bool,
    /// The socket was sent to the other shard's ring (`HandOff`); this slot still holds a
    /// reference until the shard closes it.
    moved: bool,
}

/// A completion the kernel will post.
#[derive(Debug, Clone, Copy)]
enum Cqe {
    RecvEnded(Token, i32),
    SendDone(Token),
    SendFailed(Token),
    Closed(Token),
    HandedOff(Token, bool),
    HandedIn(u32),
}

struct Kernel {
    slots: Vec<KSlot>,
    /// Round-robin allocation hint, as the kernel's file-index allocator.
    hint: usize,
    /// (due tick, completion).
    pending: Vec<(u64, Cqe)>,
}

impl Kernel {
    fn alloc(&mut self) -> Option<u32> {
        let n = self.slots.len();
        for k in 0..n {
            let i = (self.hint + k) % n;
            if self.slots[i].client.is_none() && !self.slots[i].closing {
                self.hint = i + 1;
                return Some(i as u32);
            }
        }
        None
    }
}

struct World {
    rng: Rng,
    registry: Arc<Registry>,
    shards: Vec<Shard>,
    kernels: Vec<Kernel>,
    clients: Vec<Client>,
    bus: Vec<UpdateMsg>,
    bus_history: Vec<UpdateMsg>,
    /// Control messages on their way: (shard, message).
    controls: Vec<(usize, Control)>,
    now: Now,
    tick: u64,
    next_req: u32,
    limit: usize,
}

const TOPICS: [&str; 5] = ["m/1", "m/2", "m/3", "news", "odds"];
const SLOTS: usize = 24;

impl World {
    fn new(seed: u64, policy: SlowPolicy) -> World {
        Self::with_config(seed, policy, |_| {})
    }

    fn with_config(seed: u64, policy: SlowPolicy, tweak: impl FnOnce(&mut CoreConfig)) -> World {
        let registry = Arc::new(Registry::new(99, 16, 100));
        let mut cfg = CoreConfig {
            max_connections: SLOTS - 4,
            outbox_limit: 2_000,
            slow_policy: policy,
            publisher_key: Some("k".into()),
            backend_key: Some("k".into()),
            max_frames_per_send: 4,
            heartbeat_ms: 1_000_000,
            write_timeout_ms: 400,
            ..CoreConfig::default()
        };
        tweak(&mut cfg);
        let cfg = Arc::new(cfg);
        let placement = Arc::new(super::placement::Placement::new(2));
        for i in 0..2 {
            // The fake kernel needs no ring descriptor; any non-negative number lists the shard.
            placement.set_ring(i, i as i32);
        }
        let shards = (0..2)
            .map(|i| {
                Shard::new(cfg.clone(), registry.clone(), i + 1)
                    .with_id(i as u8)
                    .with_placement(placement.clone())
            })
            .collect();
        let kernels = (0..2)
            .map(|_| Kernel {
                slots: vec![KSlot::default(); SLOTS],
                hint: 0,
                pending: Vec::new(),
            })
            .collect();
        World {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            registry,
            shards,
            kernels,
            clients: Vec::new(),
            bus: Vec::new(),
            bus_history: Vec::new(),
            controls: Vec::new(),
            now: Now { ms: 1, unix_us: 1 },
            tick: 0,
            next_req: 1,
            limit: 2_000,
        }
    }

    /// A new client; its HELLO is queued and it is accepted by the kernel at once if a slot is
    /// free (otherwise it waits, like a backlog).
    fn connect(&mut self, role: Role, speed: usize) -> usize {
        self.connect_version(role, speed, 1)
    }

    fn connect_version(&mut self, role: Role, speed: usize, version: u16) -> usize {
        let shard = self.clients.len() % 2;
        self.connect_on(role, speed, version, shard)
    }

    /// A new client that the listener's hash gives to `shard`.
    fn connect_on(&mut self, role: Role, speed: usize, version: u16, shard: usize) -> usize {
        self.clients.push(Client {
            shard,
            token: None,
            wire: Vec::new(),
            speed,
            dec: Decoder::new(DEFAULT_MAX_FRAME),
            topics: HashMap::new(),
            requests: HashMap::new(),
            names: HashMap::new(),
            outgoing: Vec::new(),
            gone: false,
            closed_by_server: false,
            gaps: 0,
            resets: 0,
            role,
            session: 0,
            sent: HashMap::new(),
            acks: HashMap::new(),
            own: Default::default(),
            received: Vec::new(),
            responses: Vec::new(),
        });
        let i = self.clients.len() - 1;
        self.send(
            i,
            &Frame::Hello(Hello {
                version,
                role,
                client_name: "sim".into(),
                token: "k".into(),
            }),
        );
        self.accept(i);
        i
    }

    fn accept(&mut self, i: usize) {
        let sh = self.clients[i].shard;
        let Some(slot) = self.kernels[sh].alloc() else {
            return;
        };
        self.kernels[sh].slots[slot as usize] = KSlot {
            client: Some(i),
            ..KSlot::default()
        };
        self.shards[sh].handle(Input::Accepted { slot }, self.now);
        self.drive(sh);
    }

    fn send(&mut self, i: usize, f: &Frame) {
        let b = f.to_bytes().unwrap();
        self.clients[i].outgoing.extend_from_slice(&b);
    }

    fn subscribe(&mut self, i: usize) {
        let name = TOPICS[self.rng.below(TOPICS.len() as u64) as usize].to_string();
        let conflate = self.rng.below(4) != 0;
        let resume = self.clients[i]
            .names
            .get(&name)
            .and_then(|id| self.clients[i].topics.get(id))
            .map(|v| ResumeFrom {
                epoch: 99,
                seq: v.last_seq,
            });
        self.subscribe_to(i, name, resume, conflate);
    }

    /// Client `i` subscribes to one topic; the request is remembered so its SUBACK can be checked.
    fn subscribe_to(&mut self, i: usize, name: String, resume: Option<ResumeFrom>, conflate: bool) {
        let req = self.next_req;
        self.next_req += 1;
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
                    presence: false,
                }],
            }),
        );
    }

    fn publish(&mut self, publisher: usize) {
        let topic = TOPICS[self.rng.below(TOPICS.len() as u64) as usize].to_string();
        let urgent = self.rng.below(10) == 0;
        let len = 1 + self.rng.below(60) as usize;
        let flags = if urgent { update_flags::URGENT } else { 0 };
        self.publish_to(publisher, topic, flags, Bytes::from(vec![7u8; len]));
    }

    /// Client `i` sends one MESSAGE.
    fn message(&mut self, i: usize, key: &str) {
        let req = self.next_req;
        self.next_req += 1;
        self.clients[i].sent.insert(req, None);
        self.send(
            i,
            &Frame::Message(Message {
                request_id: req,
                routing_key: key.into(),
                payload: Bytes::from_static(b"bet"),
            }),
        );
    }

    /// Client `i` sends one POST.
    fn post(&mut self, i: usize, topic: &str, flags: u8) {
        let req = self.next_req;
        self.next_req += 1;
        self.clients[i].sent.insert(req, Some(topic.into()));
        self.send(
            i,
            &Frame::Post(Post {
                request_id: req,
                flags,
                topic: topic.into(),
                idempotency_key: None,
                payload: Bytes::from_static(b"chat"),
            }),
        );
    }

    /// Client `publisher` sends one PUBLISH.
    fn publish_to(&mut self, publisher: usize, topic: String, flags: u8, payload: Bytes) {
        self.send(
            publisher,
            &Frame::Publish(Publish {
                flags,
                topic,
                payload,
            }),
        );
    }

    /// The kernel performs what shard `sh` asked for: outputs, then transmits.
    fn drive(&mut self, sh: usize) {
        loop {
            let mut acted = false;
            while let Some(o) = self.shards[sh].poll_output() {
                acted = true;
                self.perform(sh, o);
            }
            let mut frames = Vec::new();
            while let Some(t) = self.shards[sh].poll_transmit(self.now, &mut frames) {
                acted = true;
                let k = self.check_token(sh, t, "transmit");
                assert!(!k.send_in_flight, "two sends in flight on slot {}", t.slot);
                let client = k.client.expect("occupied");
                self.kernels[sh].slots[t.slot as usize].send_in_flight = true;
                self.kernels[sh].slots[t.slot as usize].ops += 1;
                for f in frames.drain(..) {
                    self.clients[client].wire.extend_from_slice(&f);
                }
            }
            if !acted {
                return;
            }
        }
    }

    /// Asserts that `t` names the slot's current occupant; returns the kernel's view of it.
    fn check_token(&self, sh: usize, t: Token, what: &str) -> KSlot {
        let k = self.kernels[sh].slots[t.slot as usize].clone();
        assert!(
            k.client.is_some() && !k.closing,
            "{what} on slot {} which holds no socket",
            t.slot
        );
        assert_eq!(
            k.generation,
            Some(t.generation),
            "{what} on slot {} names another occupant",
            t.slot
        );
        k
    }

    fn later(&mut self, sh: usize, cqe: Cqe) {
        let due = self.tick + self.rng.below(4);
        self.kernels[sh].pending.push((due, cqe));
    }

    fn perform(&mut self, sh: usize, o: Output) {
        match o {
            Output::ArmRecv(t) => {
                let k = &mut self.kernels[sh].slots[t.slot as usize];
                assert!(
                    k.client.is_some() && !k.closing,
                    "recv armed on an empty slot"
                );
                match k.generation {
                    None => k.generation = Some(t.generation),
                    Some(g) => assert_eq!(g, t.generation, "recv armed for another occupant"),
                }
                assert!(!k.recv_armed, "recv armed twice");
                k.recv_armed = true;
                k.ops += 1;
                let client = k.client.expect("occupied");
                if self.clients[client].gone && !self.clients[client].closed_by_server {
                    // The peer hung up: the new receive sees the end of the stream at once.
                    self.kernels[sh].slots[t.slot as usize].recv_armed = false;
                    self.later(sh, Cqe::RecvEnded(t, 0));
                    return;
                }
                let k = &mut self.kernels[sh].slots[t.slot as usize];
                // Sometimes the provided buffers run out at once: the shard must re-arm.
                if self.rng.below(20) == 0 {
                    k.recv_armed = false;
                    self.later(sh, Cqe::RecvEnded(t, -105));
                }
            }
            Output::CancelRecv(t) => {
                let k = self.check_token(sh, t, "cancel recv");
                if k.recv_armed {
                    self.kernels[sh].slots[t.slot as usize].recv_armed = false;
                    self.later(sh, Cqe::RecvEnded(t, -125));
                }
            }
            Output::CancelSend(t) => {
                let k = self.check_token(sh, t, "cancel send");
                if k.send_in_flight {
                    self.kernels[sh].slots[t.slot as usize].send_in_flight = false;
                    // The send may complete just before the cancel reaches it.
                    let cqe = if self.rng.below(2) == 0 {
                        Cqe::SendDone(t)
                    } else {
                        Cqe::SendFailed(t)
                    };
                    self.later(sh, cqe);
                }
            }
            Output::Close(t) => {
                let k = self.check_token(sh, t, "close");
                assert!(
                    k.ops == 0,
                    "close of slot {} with {} operation(s) still in flight",
                    t.slot,
                    k.ops
                );
                let client = k.client.expect("occupied");
                if !k.moved && !self.clients[client].gone {
                    self.clients[client].gone = true;
                    self.clients[client].closed_by_server = true;
                }
                self.kernels[sh].slots[t.slot as usize].closing = true;
                self.later(sh, Cqe::Closed(t));
            }
            Output::HandOff { token: t, to } => {
                let k = &mut self.kernels[sh].slots[t.slot as usize];
                assert!(
                    k.client.is_some() && !k.closing && !k.moved,
                    "hand-off of slot {} which holds no socket",
                    t.slot
                );
                assert_eq!(k.ops, 0, "hand-off of slot {} with I/O in flight", t.slot);
                assert!(k.generation.is_none(), "hand-off of a slot already armed");
                assert_ne!(to, sh, "hand-off to itself");
                k.generation = Some(t.generation);
                k.ops += 1;
                let client = k.client.expect("occupied");
                match self.kernels[to].alloc() {
                    Some(slot) => {
                        self.kernels[sh].slots[t.slot as usize].moved = true;
                        self.kernels[to].slots[slot as usize] = KSlot {
                            client: Some(client),
                            ..KSlot::default()
                        };
                        self.clients[client].shard = to;
                        self.clients[client].token = None;
                        self.later(to, Cqe::HandedIn(slot));
                        self.later(sh, Cqe::HandedOff(t, true));
                    }
                    None => self.later(sh, Cqe::HandedOff(t, false)),
                }
            }
            Output::Publish(p) => {
                let bus = &mut self.bus;
                let skip = p.skip;
                let (seq, _) = self.registry.publish_once(
                    p.idempotency_key.as_deref(),
                    &p.topic,
                    p.flags,
                    &p.payload,
                    self.now.unix_us,
                    &mut |mut m| {
                        m.skip = skip;
                        bus.push(m)
                    },
                );
                if let Some(origin) = p.ack {
                    self.shards[sh].handle(Input::Published { origin, seq }, self.now);
                }
            }
            Output::Control(dest, msg) => match dest {
                Dest::Shard(i) => self.controls.push((i as usize, msg)),
                Dest::All => {
                    for i in 0..self.shards.len() {
                        self.controls.push((i, msg.clone()));
                    }
                }
            },
        }
    }

    /// One step of virtual time.
    fn step(&mut self) {
        self.tick += 1;
        self.now.ms += 10;
        self.now.unix_us += 10_000;
        // Control messages, then updates: bus -> every shard.
        for (sh, m) in std::mem::take(&mut self.controls) {
            self.shards[sh].handle(Input::Control(&m), self.now);
        }
        let msgs = std::mem::take(&mut self.bus);
        for m in &msgs {
            for sh in 0..2 {
                self.shards[sh].handle(Input::Update(m), self.now);
            }
        }
        self.bus_history.extend(msgs);
        for sh in 0..2 {
            self.drive(sh);
        }
        // Clients -> kernel -> shard: bytes flow only into an armed receive, in random pieces.
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            let (Some(t), sh) = (c.token.or_else(|| self.find_token(i)), c.shard) else {
                continue;
            };
            self.clients[i].token = Some(t);
            let k = &self.kernels[sh].slots[t.slot as usize];
            if !k.recv_armed || self.clients[i].outgoing.is_empty() || self.clients[i].gone {
                continue;
            }
            let out = std::mem::take(&mut self.clients[i].outgoing);
            let n = 1 + self.rng.below(out.len() as u64) as usize;
            self.clients[i].outgoing = out[n..].to_vec();
            self.shards[sh].handle(Input::Received(t, &out[..n]), self.now);
            self.drive(sh);
        }
        // Completions due now, in random order.
        for sh in 0..2 {
            let tick = self.tick;
            let mut due: Vec<Cqe> = Vec::new();
            self.kernels[sh].pending.retain(|&(at, c)| {
                if at <= tick {
                    due.push(c);
                    false
                } else {
                    true
                }
            });
            for j in (1..due.len()).rev() {
                let k = self.rng.below(j as u64 + 1) as usize;
                due.swap(j, k);
            }
            for c in due {
                if let Cqe::RecvEnded(t, _)
                | Cqe::SendDone(t)
                | Cqe::SendFailed(t)
                | Cqe::HandedOff(t, _) = c
                {
                    let k = &mut self.kernels[sh].slots[t.slot as usize];
                    assert!(
                        k.ops > 0,
                        "a completion for slot {} with nothing in flight",
                        t.slot
                    );
                    k.ops -= 1;
                }
                let input = match c {
                    Cqe::RecvEnded(t, r) => Input::RecvEnded(t, r),
                    Cqe::SendDone(t) => Input::SendDone(t),
                    Cqe::SendFailed(t) => Input::SendFailed(t),
                    Cqe::Closed(t) => {
                        // The slot is free in the kernel now; an accept may take it at once.
                        self.kernels[sh].slots[t.slot as usize] = KSlot::default();
                        Input::Closed(t)
                    }
                    Cqe::HandedOff(t, ok) => Input::HandedOff(t, ok),
                    Cqe::HandedIn(slot) => Input::HandedIn { slot },
                };
                self.shards[sh].handle(input, self.now);
                self.drive(sh);
            }
        }
        // Clients read; a completed read of a whole send completes it.
        for i in 0..self.clients.len() {
            self.client_read(i);
        }
        for sh in 0..2 {
            if self.shards[sh]
                .poll_timeout()
                .is_some_and(|d| d <= self.now.ms)
            {
                self.shards[sh].handle_timeout(self.now);
                self.drive(sh);
            }
            for s in 0..SLOTS as u32 {
                assert!(
                    self.shards[sh].outbox_bytes(s) <= self.limit + 64,
                    "outbox over its limit"
                );
            }
            // Churn leaves stale deadlines behind; compaction keeps them bounded.
            let live = self.shards[sh].connections();
            assert!(self.shards[sh].timers.len() <= 2 * live + 1025);
        }
    }

    /// The token of client `i` once its slot got a generation.
    fn find_token(&self, i: usize) -> Option<Token> {
        let sh = self.clients[i].shard;
        self.kernels[sh]
            .slots
            .iter()
            .enumerate()
            .find(|(_, k)| k.client == Some(i) && !k.closing && !k.moved)
            .and_then(|(s, k)| {
                k.generation.map(|generation| Token {
                    slot: s as u32,
                    generation,
                })
            })
    }

    /// Client `i` hangs up: its armed receive ends with 0 bytes.
    fn hang_up(&mut self, i: usize) {
        let Some(t) = self.clients[i].token else {
            return;
        };
        let sh = self.clients[i].shard;
        self.clients[i].gone = true;
        let k = &mut self.kernels[sh].slots[t.slot as usize];
        if k.recv_armed && k.generation == Some(t.generation) && !k.closing {
            k.recv_armed = false;
            self.later(sh, Cqe::RecvEnded(t, 0));
        }
    }

    fn client_read(&mut self, i: usize) {
        let sh = self.clients[i].shard;
        let c = &mut self.clients[i];
        let n = c.speed.min(c.wire.len());
        let data: Vec<u8> = c.wire.drain(..n).collect();
        c.dec.feed(&data);
        if let Some(t) = c.token {
            let k = &mut self.kernels[sh].slots[t.slot as usize];
            if k.send_in_flight && c.wire.is_empty() && k.generation == Some(t.generation) {
                k.send_in_flight = false;
                let due = self.tick + self.rng.below(3);
                self.kernels[sh].pending.push((due, Cqe::SendDone(t)));
            }
        }
        let c = &mut self.clients[i];
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
                    assert!(
                        !c.own.contains(&(u.topic_id, u.seq))
                            || u.flags & update_flags::SNAPSHOT != 0,
                        "a NO_ECHO update reached its poster live"
                    );
                    let v = c.topics.get_mut(&u.topic_id).expect("UPDATE after SUBACK");
                    let reset = u.flags & update_flags::RESET != 0;
                    if reset {
                        c.resets += 1;
                    }
                    // The poster's own NO_ECHO updates are not gaps: its ACKs named them.
                    while c.own.contains(&(u.topic_id, v.last_seq + 1)) && v.last_seq + 1 < u.seq {
                        v.last_seq += 1;
                    }
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
                    assert!(
                        [ErrorCode::SlowConsumer as u16, ErrorCode::ServerFull as u16]
                            .contains(&e.code),
                        "{e:?}"
                    );
                }
                Frame::GoAway(g) => {
                    assert_eq!(g.code, ErrorCode::ServerFull as u16, "{g:?}");
                }
                Frame::Welcome(w) => c.session = w.session_id,
                Frame::Ack {
                    request_id,
                    code,
                    seq,
                } => {
                    let what = c.sent.get(&request_id).expect("ACK of a request sent");
                    assert!(
                        c.acks.insert(request_id, (code, seq)).is_none(),
                        "two ACKs for request {request_id}"
                    );
                    if let (Some(name), 0) = (what, code) {
                        let id = c.names[name.as_str()];
                        c.own.insert((id, seq));
                    }
                }
                Frame::ClientMessage(m) => {
                    assert_eq!(c.role, Role::Backend);
                    c.received.push((m.session_id, m.request_id));
                    let reply = Frame::Reply {
                        session_id: m.session_id,
                        request_id: m.request_id,
                        payload: m.payload,
                    };
                    c.outgoing.extend_from_slice(&reply.to_bytes().unwrap());
                }
                Frame::Response { request_id, .. } => c.responses.push(request_id),
                Frame::Pong { .. } | Frame::Heartbeat => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// Runs one simulation; returns (conflated gaps seen, live subscribers at the end).
fn run(seed: u64, policy: SlowPolicy) -> (u64, u64) {
    let mut w = World::new(seed, policy);
    let publisher = w.connect(Role::Publisher, 1 << 20);
    let mut subscribers = Vec::new();
    for _ in 0..30 {
        let speed = match w.rng.below(4) {
            0 => 3,    // very slow
            1 => 40,   // slow
            _ => 4096, // fast
        };
        let i = w.connect(Role::Subscriber, speed);
        for _ in 0..1 + w.rng.below(3) {
            w.subscribe(i);
        }
        subscribers.push(i);
    }
    for step in 0..600 {
        for _ in 0..w.rng.below(4) {
            w.publish(publisher);
        }
        if w.rng.below(15) == 0 {
            let i = subscribers[w.rng.below(subscribers.len() as u64) as usize];
            if !w.clients[i].gone {
                w.subscribe(i);
            }
        }
        // Churn: a client hangs up and a new one takes a slot right away (slot reuse).
        if step < 500 && w.rng.below(8) == 0 {
            let i = subscribers[w.rng.below(subscribers.len() as u64) as usize];
            w.hang_up(i);
            let speed = if w.rng.below(3) == 0 { 40 } else { 4096 };
            let n = w.connect(Role::Subscriber, speed);
            w.subscribe(n);
            subscribers.push(n);
        }
        // Clients the kernel had no slot for (all slots busy) retry.
        for i in 0..w.clients.len() {
            if w.clients[i].token.is_none() && w.find_token(i).is_none() && !w.clients[i].gone {
                let sh = w.clients[i].shard;
                if !w.kernels[sh].slots.iter().any(|k| k.client == Some(i)) {
                    w.accept(i);
                }
            }
        }
        w.step();
    }
    // Quiesce: everyone still connected reads fast until nothing moves.
    for c in &mut w.clients {
        c.speed = 1 << 20;
    }
    for _ in 0..200 {
        w.step();
    }
    let mut gaps = 0;
    let mut live = 0;
    for (i, c) in w.clients.iter().enumerate() {
        gaps += c.gaps;
        if i == publisher || c.gone || c.token.is_none() {
            continue;
        }
        live += 1;
        for (&id, v) in &c.topics {
            let reg = &w.registry;
            let seq = reg.get(id).map(|t| reg.seq(&t)).unwrap_or(0);
            assert_eq!(v.last_seq, seq, "latest value not delivered");
        }
    }
    // Every slot of a client that is gone is free again, in the shard and in the kernel.
    for (i, c) in w.clients.iter().enumerate() {
        if c.gone {
            let sh = c.shard;
            assert!(
                !w.kernels[sh].slots.iter().any(|k| k.client == Some(i)),
                "client {i}'s socket was never closed"
            );
        }
    }
    for sh in 0..2 {
        for s in 0..SLOTS as u32 {
            let k = &w.kernels[sh].slots[s as usize];
            let st = w.shards[sh].slot_state(s);
            if k.client.is_none() {
                assert_eq!(st, SlotState::Free, "slot {s} leaked ({st:?})");
            } else {
                assert!(
                    matches!(st, SlotState::Open | SlotState::Handshake),
                    "slot {s}: {st:?}"
                );
            }
        }
        assert_eq!(w.shards[sh].stats().outbox_bytes as usize, {
            (0..SLOTS as u32)
                .map(|s| w.shards[sh].outbox_bytes(s))
                .sum::<usize>()
        });
    }
    if std::env::var("SIM_DEBUG").is_ok() {
        eprintln!(
            "seed {seed}: gaps {gaps} live {live} clients {} stats {:?}",
            w.clients.len(),
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

/// Client messages and room posts interleaved with fan-out and churn, over two shards: every
/// MESSAGE gets exactly one ACK; an ACK ok means a backend received it; backends' REPLYs reach
/// their senders; a NO_ECHO post never reaches its poster live and is not taken for a gap.
#[test]
fn client_messages_and_posts_interleaved_with_fanout() {
    for seed in 1..=6 {
        let mut w = World::with_config(seed, SlowPolicy::Conflate, |c| {
            c.anonymous_messages = true;
            c.message_rate = 1_000;
            c.max_inflight_messages = 8;
        });
        let publisher = w.connect(Role::Publisher, 1 << 20);
        let poster = w.connect_version(Role::Publisher, 1 << 20, 3);
        let backends = [
            w.connect_version(Role::Backend, 1 << 20, 3),
            w.connect_version(Role::Backend, 1 << 20, 3),
        ];
        let mut clients = Vec::new();
        for k in 0..8 {
            let i = w.connect_version(Role::Subscriber, if k % 3 == 0 { 40 } else { 4096 }, 3);
            w.subscribe_to(i, "m/1".into(), None, true);
            w.subscribe_to(i, "room".into(), None, false);
            clients.push(i);
        }
        w.subscribe_to(poster, "room".into(), None, false);
        for _ in 0..5 {
            w.step();
        }
        for step in 0..300 {
            for _ in 0..w.rng.below(3) {
                w.publish(publisher);
            }
            for &i in &clients {
                if w.rng.below(3) == 0 {
                    let key = format!("u{}", w.rng.below(5));
                    w.message(i, &key);
                }
            }
            if w.rng.below(4) == 0 {
                w.post(poster, "room", update_flags::NO_ECHO);
            }
            if step == 150 {
                w.hang_up(backends[0]);
            }
            w.step();
        }
        for c in &mut w.clients {
            c.speed = 1 << 20;
        }
        for _ in 0..200 {
            w.step();
        }
        let received: std::collections::HashSet<(u64, u32)> = backends
            .iter()
            .flat_map(|&b| w.clients[b].received.clone())
            .collect();
        let (mut ok, mut gone) = (0, 0);
        for &i in clients.iter().chain([&poster]) {
            let c = &w.clients[i];
            assert!(!c.gone, "client {i} was closed");
            for (req, what) in &c.sent {
                let (code, _) = *c
                    .acks
                    .get(req)
                    .unwrap_or_else(|| panic!("request {req} never acknowledged"));
                if what.is_some() {
                    assert_eq!(code, 0, "POST refused");
                    continue;
                }
                match code {
                    0 => {
                        ok += 1;
                        assert!(
                            received.contains(&(c.session, *req)),
                            "ACK ok for a message no backend got"
                        );
                    }
                    c if c == ErrorCode::BackendGone as u16 => gone += 1,
                    c if c == ErrorCode::RateLimited as u16 => {}
                    other => panic!("unexpected ACK code {other}"),
                }
            }
            // Every message the live backend got was answered.
            let to_live = w.clients[backends[1]]
                .received
                .iter()
                .filter(|(s, _)| *s == c.session)
                .count();
            assert!(c.responses.len() >= to_live, "a REPLY was lost");
        }
        assert!(ok > 100, "seed {seed}: only {ok} messages acknowledged");
        if std::env::var("SIM_DEBUG").is_ok() {
            eprintln!("seed {seed}: ok {ok} backend_gone {gone}");
        }
        // No posted update was echoed, and the room kept its order for everyone else.
        assert!(!w.clients[poster].own.is_empty());
    }
}

/// Issues 12 and 19: the listener's hash sends every client to shard 0. Over its cap, shard 0
/// hands each new connection to shard 1 (the driver moves the descriptor with MSG_RING), whose
/// clients are served like any other; only when both shards are full is a client refused, with
/// GOAWAY `server_full`.
#[test]
fn a_full_shard_hands_connections_to_one_with_room() {
    for seed in 1..=20 {
        let mut w = World::with_config(seed, SlowPolicy::Conflate, |c| c.max_connections = 6);
        let p = w.connect_on(Role::Publisher, 1 << 20, 1, 0);
        let subs: Vec<usize> = (0..11)
            .map(|_| {
                let i = w.connect_on(Role::Subscriber, 1 << 20, 1, 0);
                w.subscribe_to(i, "m/1".into(), None, false);
                i
            })
            .collect();
        for _ in 0..60 {
            w.step();
        }
        let (s0, s1) = (w.shards[0].stats(), w.shards[1].stats());
        assert_eq!((s0.accepted, s0.handed_off), (12, 6), "seed {seed}");
        assert_eq!((s1.accepted, s1.handed_in), (0, 6), "seed {seed}");
        assert_eq!(s0.refused_full + s1.refused_full, 0, "seed {seed}");
        assert_eq!((s0.connections, s1.connections), (6, 6), "seed {seed}");
        w.publish_to(p, "m/1".into(), 0, Bytes::from_static(b"x"));
        for _ in 0..40 {
            w.step();
        }
        for &i in &subs {
            let c = &w.clients[i];
            assert!(
                !c.gone && c.session != 0,
                "seed {seed}: client {i} not served"
            );
            assert!(
                c.topics.values().any(|v| v.last_seq == 1),
                "seed {seed}: client {i} missed the update"
            );
        }
        // Both full: the next client is refused, and neither shard keeps its slot.
        let extra = w.connect_on(Role::Subscriber, 1 << 20, 1, 0);
        for _ in 0..40 {
            w.step();
        }
        assert!(w.clients[extra].closed_by_server, "seed {seed}");
        assert_eq!(w.shards[0].stats().refused_full, 1, "seed {seed}");
        assert_eq!(w.shards[0].stats().connections, 6, "seed {seed}");
    }
}

#[test]
fn encode_once_per_update_whatever_the_subscribers() {
    let mut w = World::new(5, SlowPolicy::Conflate);
    let p = w.connect(Role::Publisher, 1 << 20);
    for _ in 0..16 {
        let i = w.connect(Role::Subscriber, 1 << 20);
        w.subscribe_to(i, "m/1".into(), None, true);
    }
    for _ in 0..30 {
        w.step();
    }
    let before = w.registry.frames_encoded();
    for _ in 0..10 {
        w.publish_to(p, "m/1".into(), 0, Bytes::from_static(b"x"));
        for _ in 0..20 {
            w.step();
        }
    }
    assert_eq!(w.registry.frames_encoded() - before, 10);
    let deliveries: u64 = w.shards.iter().map(|s| s.stats().deliveries).sum();
    assert_eq!(deliveries, 160);
}

/// A write timeout while the send is stuck: the shard cancels the send and closes only after
/// the cancellation (or the send's late success) came back; the kernel gives the slot to the
/// next connection, whose operations carry the new generation.
#[test]
fn stuck_send_is_cancelled_and_the_slot_reused_safely() {
    for seed in 1..=40 {
        let mut w = World::new(seed, SlowPolicy::Conflate);
        let p = w.connect(Role::Publisher, 1 << 20);
        let stuck = w.connect(Role::Subscriber, 0); // never reads
        w.subscribe(stuck);
        for _ in 0..5 {
            w.step();
        }
        for _ in 0..3 {
            w.publish(p);
        }
        for _ in 0..80 {
            w.step();
        }
        let t = w.clients[stuck].token.expect("accepted");
        assert!(w.clients[stuck].closed_by_server, "seed {seed}: not closed");
        assert_eq!(w.shards[1].stats().write_timeouts, 1, "seed {seed}");
        assert_eq!(w.shards[1].slot_state(t.slot), SlotState::Free);
        // Fill the shard's slots: the freed one is taken again, by a new generation.
        let mut reused = false;
        for _ in 0..4 * SLOTS {
            let n = w.connect(Role::Subscriber, 4096);
            if w.clients[n].shard == 1 {
                w.step();
                if let Some(nt) = w.clients[n].token.or_else(|| w.find_token(n)) {
                    if nt.slot == t.slot {
                        assert_ne!(nt.generation, t.generation);
                        reused = true;
                        break;
                    }
                }
            }
        }
        assert!(reused, "seed {seed}: slot {} never reused", t.slot);
        for _ in 0..20 {
            w.step();
        }
    }
}

/// A timer entry per live connection at most, plus stale ones that never outnumber them much:
/// no scan of every connection, and no unbounded growth.
#[test]
fn deadlines_stay_bounded_without_a_scan() {
    let mut w = World::new(9, SlowPolicy::Conflate);
    for _ in 0..16 {
        let i = w.connect(Role::Subscriber, 4096);
        w.subscribe(i);
    }
    for _ in 0..500 {
        w.step();
    }
    for sh in 0..2 {
        let live = w.shards[sh].connections();
        assert!(
            w.shards[sh].timers.len() <= 3 * live + 8,
            "{}",
            w.shards[sh].timers.len()
        );
    }
}

/// A shard whose inbox overflowed resynchronises: each subscriber gets the latest value as
/// SNAPSHOT|RESET, and updates older than it that were still queued are skipped.
#[test]
fn an_overrun_shard_resyncs_its_subscribers_from_the_registry() {
    let mut w = World::new(11, SlowPolicy::Conflate);
    let p = w.connect(Role::Publisher, 1 << 20);
    let subs: Vec<usize> = (0..6)
        .map(|_| w.connect(Role::Subscriber, 1 << 20))
        .collect();
    for &i in &subs {
        w.subscribe_to(i, "m/1".into(), None, false);
    }
    for _ in 0..20 {
        w.step();
    }
    for _ in 0..5 {
        w.publish_to(p, "m/1".into(), 0, Bytes::from_static(b"v"));
    }
    for _ in 0..20 {
        w.step();
    }
    // Shard 1 lost updates: it resynchronises, then an old update still queued arrives.
    let stale = w
        .bus_history
        .iter()
        .find(|m| m.seq == 2)
        .cloned()
        .expect("seq 2 published");
    w.shards[1].handle(Input::Resync, w.now);
    w.shards[1].handle(Input::Update(&stale), w.now);
    w.drive(1);
    for _ in 0..20 {
        w.step();
    }
    for &i in &subs {
        let c = &w.clients[i];
        let v = c.topics.values().next().expect("subscribed");
        assert_eq!(v.last_seq, 5);
        assert_eq!(
            c.resets,
            u64::from(c.shard == 1),
            "client {i} on shard {}",
            c.shard
        );
    }
    assert_eq!(w.shards[1].stats().resyncs, 1);
}

/// A hand-off the kernel could not do (the other ring's table was full, or the ring had gone)
/// ends as if no shard had room: the connection is refused here with GOAWAY `server_full`, and
/// its slot is closed normally.
#[test]
fn a_failed_hand_off_is_refused_with_server_full() {
    let registry = Arc::new(Registry::new(99, 16, 100));
    let cfg = Arc::new(CoreConfig {
        max_connections: 1,
        ..CoreConfig::default()
    });
    let placement = Arc::new(super::placement::Placement::new(2));
    placement.set_ring(0, 0);
    placement.set_ring(1, 1);
    let mut s = Shard::new(cfg, registry, 3).with_placement(placement.clone());
    let now = Now { ms: 1, unix_us: 1 };
    s.handle(Input::Accepted { slot: 0 }, now);
    assert!(matches!(s.poll_output(), Some(Output::ArmRecv(_))));
    s.handle(Input::Accepted { slot: 1 }, now);
    let Some(Output::HandOff { token, to: 1 }) = s.poll_output() else {
        panic!("expected a hand-off to shard 1");
    };
    assert_eq!(s.slot_state(1), SlotState::Moving);
    assert_eq!(placement.load(1), 1, "a connection reserved on shard 1");
    s.handle(Input::HandedOff(token, false), now);
    let st = s.stats();
    assert_eq!(
        (st.handed_off, st.handoff_failed, st.refused_full),
        (1, 1, 1)
    );
    // Armed again here, and refused: GOAWAY server_full goes out on the slot.
    assert!(matches!(s.poll_output(), Some(Output::ArmRecv(t)) if t == token));
    let mut frames = Vec::new();
    assert_eq!(s.poll_transmit(now, &mut frames), Some(token));
    let bytes: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
    let mut dec = Decoder::new(DEFAULT_MAX_FRAME);
    dec.feed(&bytes);
    match dec.next_frame().expect("decodes") {
        Some(Frame::GoAway(g)) => assert_eq!(g.code, ErrorCode::ServerFull as u16),
        other => panic!("expected GOAWAY, got {other:?}"),
    }
}

mod fuzz {
    //! Arbitrary client bytes never panic a shard and never break its bounds: the stand-in for
    //! a fuzz target that CI always runs.
    use super::*;
    use proptest::prelude::*;

    fn shard() -> Shard {
        let registry = Arc::new(Registry::new(99, 16, 100));
        let cfg = Arc::new(CoreConfig {
            max_connections: 16,
            outbox_limit: 2_000,
            publisher_key: Some("k".into()),
            relay_key: Some("r".into()),
            ..CoreConfig::default()
        });
        Shard::new(cfg, registry, 3)
    }

    /// Accepts `slot` and returns its token (from the shard's ArmRecv).
    fn open(s: &mut Shard, slot: u32, now: Now) -> Token {
        s.handle(Input::Accepted { slot }, now);
        loop {
            match s.poll_output().expect("ArmRecv") {
                Output::ArmRecv(t) => return t,
                _ => continue,
            }
        }
    }

    /// Applies outputs like a driver (publishes go to every connection of the shard).
    fn settle(s: &mut Shard, now: Now) {
        let mut bus = Vec::new();
        while let Some(o) = s.poll_output() {
            if let Output::Publish(p) = o {
                let reg = s.registry().clone();
                reg.publish(&p.topic, p.flags, &p.payload, now.unix_us, &mut |m| {
                    bus.push(m)
                });
            }
        }
        for m in &bus {
            s.handle(Input::Update(m), now);
        }
    }

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
                    conflate: true,
                    presence: true,
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
                presence: r,
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
                version: 3,
                role: Role::Subscriber,
                client_name: "a".into(),
                token: String::new()
            })),
            ("[a-z/]{1,8}", any::<u8>()).prop_map(|(t, flags)| Frame::Post(Post {
                request_id: 5,
                flags,
                topic: t,
                idempotency_key: None,
                payload: Bytes::from_static(b"p")
            })),
            "[a-z]{0,8}".prop_map(|k| Frame::Message(Message {
                request_id: 6,
                routing_key: k,
                payload: Bytes::from_static(b"m")
            })),
            "[a-z/]{1,8}".prop_map(|t| Frame::PresenceGet {
                request_id: 7,
                topic: t
            }),
            any::<u64>().prop_map(|sid| Frame::Reply {
                session_id: sid,
                request_id: 8,
                payload: Bytes::from_static(b"r")
            }),
            Just(Frame::Hello(Hello {
                version: 1,
                role: Role::Relay,
                client_name: "r".into(),
                token: String::new()
            })),
            // A relay with the key: its SUBSCRIBEs are catch-up requests.
            Just(Frame::Hello(Hello {
                version: 1,
                role: Role::Relay,
                client_name: "r".into(),
                token: "r".into()
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
            let mut s = shard();
            let now = Now { ms: 1, unix_us: 1 };
            let max = s.config().max_subscriptions as usize;
            let mut tokens = Vec::new();
            for (i, chunks) in conns.iter().enumerate() {
                let t = open(&mut s, i as u32, now);
                tokens.push(t);
                for c in chunks {
                    s.handle(Input::Received(t, c), now);
                    let reg = s.registry().clone();
                    prop_assert!(reg.len() <= (i + 1) * max, "{} topics", reg.len());
                    prop_assert_eq!(reg.all().len(), 0, "a permanent topic appeared");
                    while let Some(o) = s.poll_output() {
                        prop_assert!(
                            !matches!(o, Output::Publish(_) | Output::Control(_, Control::ToBackend { .. } | Control::Reply { .. })),
                            "an anonymous client published or reached a backend: {:?}", o
                        );
                    }
                }
            }
            for t in tokens {
                s.handle(Input::RecvEnded(t, 0), now);
            }
            prop_assert_eq!(s.registry().len(), 0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_client_bytes(conns in proptest::collection::vec(chunks(), 1..6)) {
            let mut s = shard();
            let mut now = Now { ms: 1, unix_us: 1 };
            let mut tokens = Vec::new();
            // Connections that open with `G` are WebSocket handshakes: their output is HTTP
            // and WebSocket framing (the websocket tests and fuzz target cover it).
            let mut websocket = std::collections::HashSet::new();
            for (i, chunks) in conns.iter().enumerate() {
                let t = open(&mut s, i as u32, now);
                tokens.push(t);
                if chunks.iter().find_map(|c| c.first()) == Some(&b'G') {
                    websocket.insert(t.slot);
                }
                for c in chunks {
                    s.handle(Input::Received(t, c), now);
                    settle(&mut s, now);
                }
            }
            now.ms += 100_000;
            s.handle_timeout(now);
            let mut frames = Vec::new();
            while let Some(t) = s.poll_transmit(now, &mut frames) {
                // Whatever the server sends must decode.
                let mut d = Decoder::new(MAX_MAX_FRAME);
                for f in frames.drain(..) { d.feed(&f); }
                if !websocket.contains(&t.slot) {
                    while let Some(_f) = d.next_frame().expect("server output decodes") {}
                }
                s.handle(Input::SendDone(t), now);
                prop_assert!(s.outbox_bytes(t.slot) <= 2_000 + 300);
            }
            prop_assert!(s.stats().connections <= conns.len() as u64);
        }
    }
}
