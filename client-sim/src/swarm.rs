//! `yorker-sim rooms` and `yorker-sim bets`: clients that talk, not only listen.
//!
//! * `rooms`: thousands of small rooms; each client subscribes to its room (NO_CONFLATE) and
//!   POSTs to it with NO_ECHO at a steady rate, with a token whose `publish` pattern is its
//!   room. Every POST acknowledged must reach every other member: losses are counted, and the
//!   post -> member latency is reported.
//! * `bets`: clients send MESSAGEs to backend stubs (which REPLY at once) while a publisher
//!   BROADCASTs to every client; reports MESSAGE -> ACK and MESSAGE -> RESPONSE latency, and
//!   any message without an ACK ok or a RESPONSE.
//!
//! Each thread drives its share of the clients over non-blocking sockets (plain std, so the
//! load generator runs anywhere); a client's clock is the thread's loop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use yorker_wire::{
    update_flags, Decoder, ErrorCode, Frame, Hello, Message, Post, Role, Subscribe, SubscribeEntry,
    MAX_MAX_FRAME,
};

use crate::fleet::unix_us;
use crate::report::{percentiles, row};
use crate::token::{claims, Signer};

/// Flags of `yorker-sim rooms`.
#[derive(Debug, Clone, Args)]
pub struct RoomsArgs {
    /// The engine.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Clients.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Members per room (rooms = clients / room-size).
    #[arg(long, default_value_t = 5)]
    pub room_size: usize,
    /// POSTs per second per client.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Seconds of posting (after everyone joined).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// The HS256 secret file the engine verifies tokens with (its --jwt-key): each client
    /// gets a token allowing it to post to its room.
    #[arg(long)]
    pub jwt_secret: PathBuf,
    /// Client threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `yorker-sim bets`.
#[derive(Debug, Clone, Args)]
pub struct BetsArgs {
    /// The engine.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Clients sending bets.
    #[arg(long, default_value_t = 5_000)]
    pub clients: usize,
    /// MESSAGEs per second per client.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Seconds of betting.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Backend stubs (each REPLYs to every message at once).
    #[arg(long, default_value_t = 2)]
    pub backends: usize,
    /// The engine's --backend-key.
    #[arg(long, env = "YORKER_BACKEND_KEY")]
    pub backend_key: String,
    /// The engine's publisher key: a publisher BROADCASTs odds to every client meanwhile.
    #[arg(long, env = "YORKER_PUBLISHER_KEY", default_value = "demo")]
    pub key: String,
    /// BROADCAST updates per second (0: none).
    #[arg(long, default_value_t = 10)]
    pub broadcast_rate: u64,
    /// HS256 secret file of the engine's --jwt-key: clients get tokens (user = client
    /// number). Without it clients are anonymous (the engine needs --anonymous-messages).
    #[arg(long)]
    pub jwt_secret: Option<PathBuf>,
    /// Client threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// What a client does.
#[derive(Debug, Clone)]
enum Plan {
    /// POST to `room`, NO_ECHO.
    Room { room: String },
    /// MESSAGE keyed by the client's number.
    Bet,
}

/// One client's connection and bookkeeping.
struct Peer {
    id: u32,
    s: TcpStream,
    dec: Decoder,
    out: BytesMut,
    plan: Plan,
    open: bool,
    joined: bool,
    next_send: Instant,
    next_req: u32,
    /// Request id -> send time (µs since the Unix epoch).
    sent: HashMap<u32, u64>,
    closed: bool,
}

/// What the threads count.
#[derive(Default)]
struct Tally {
    sent: u64,
    acked: u64,
    refused: HashMap<u16, u64>,
    /// rooms: deliveries received; bets: RESPONSEs.
    received: u64,
    /// rooms: deliveries expected (members - 1 per acknowledged POST, computed at the end).
    broadcasts: u64,
    latency: Option<Histogram<u64>>,
    ack: Option<Histogram<u64>>,
    unanswered: u64,
    closed: u64,
    /// rooms: acknowledged POSTs per room.
    posts_per_room: HashMap<String, u64>,
    /// rooms: deliveries per room.
    got_per_room: HashMap<String, u64>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.sent += o.sent;
        self.acked += o.acked;
        for (k, v) in o.refused {
            *self.refused.entry(k).or_insert(0) += v;
        }
        self.received += o.received;
        self.broadcasts += o.broadcasts;
        self.unanswered += o.unanswered;
        self.closed += o.closed;
        for (a, b) in [(&mut self.latency, o.latency), (&mut self.ack, o.ack)] {
            match (a.as_mut(), b) {
                (Some(x), Some(y)) => x.add(&y).expect("same bounds"),
                (None, Some(y)) => *a = Some(y),
                _ => {}
            }
        }
        for (k, v) in o.posts_per_room {
            *self.posts_per_room.entry(k).or_insert(0) += v;
        }
        for (k, v) in o.got_per_room {
            *self.got_per_room.entry(k).or_insert(0) += v;
        }
    }
}

/// Opens a version 3 session (blocking connect and HELLO; the rest is non-blocking).
fn open(addr: SocketAddr, role: Role, token: String, id: u32, plan: Plan) -> Result<Peer, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    Frame::Hello(Hello {
        version: 3,
        role,
        client_name: "yorker-sim".into(),
        token,
    })
    .encode(&mut out)
    .map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(Peer {
        id,
        s,
        dec: Decoder::new(MAX_MAX_FRAME),
        out,
        plan,
        open: false,
        joined: false,
        next_send: Instant::now(),
        next_req: 1,
        sent: HashMap::new(),
        closed: false,
    })
}

impl Peer {
    fn queue(&mut self, f: &Frame) {
        f.encode(&mut self.out).expect("client frames encode");
    }

    /// Writes what is queued; reads what arrived. False once the connection is gone.
    fn pump(&mut self, buf: &mut [u8]) -> bool {
        while !self.out.is_empty() {
            match self.s.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    let _ = self.out.split_to(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        loop {
            match self.s.read(buf) {
                Ok(0) => return false,
                Ok(n) => self.dec.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Runs `peers` until `stop`, then for `settle` more (answers still arriving), sending only
/// while `sending`.
fn drive(
    mut peers: Vec<Peer>,
    rate: f64,
    stop: &AtomicBool,
    sending: &AtomicBool,
    backend: bool,
) -> Tally {
    let mut t = Tally {
        latency: Some(hist()),
        ack: Some(hist()),
        ..Tally::default()
    };
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_ping = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let ping = now.duration_since(last_ping) > Duration::from_secs(5);
        if ping {
            last_ping = now;
        }
        for p in peers.iter_mut().filter(|p| !p.closed) {
            if ping {
                p.queue(&Frame::Ping { nonce: 0 });
            }
            if p.joined && !backend && sending.load(Ordering::Relaxed) && now >= p.next_send {
                p.next_send = (p.next_send + interval).max(now - interval);
                let req = p.next_req;
                p.next_req += 1;
                let at = unix_us();
                p.sent.insert(req, at);
                t.sent += 1;
                let mut payload = BytesMut::with_capacity(16);
                payload.put_u32(p.id);
                payload.put_u32(req);
                payload.put_u64(at);
                let payload = payload.freeze();
                let f = match &p.plan {
                    Plan::Room { room } => Frame::Post(Post {
                        request_id: req,
                        flags: update_flags::NO_ECHO,
                        topic: room.clone(),
                        idempotency_key: None,
                        payload,
                    }),
                    Plan::Bet => Frame::Message(Message {
                        request_id: req,
                        routing_key: format!("u{}", p.id),
                        payload,
                    }),
                };
                p.queue(&f);
            }
            if !p.pump(&mut buf) {
                p.closed = true;
                t.closed += 1;
                continue;
            }
            while let Ok(Some(f)) = p.dec.next_frame() {
                handle(p, f, &mut t);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    t.unanswered = peers.iter().map(|p| p.sent.len() as u64).sum();
    t
}

fn handle(p: &mut Peer, f: Frame, t: &mut Tally) {
    let now = unix_us();
    match f {
        Frame::Welcome(_) => {
            p.open = true;
            match &p.plan {
                Plan::Room { room } => p.queue(&Frame::Subscribe(Subscribe {
                    request_id: 1,
                    entries: vec![SubscribeEntry {
                        topic: room.clone(),
                        resume: None,
                        conflate: false,
                        presence: false,
                    }],
                })),
                Plan::Bet => {
                    p.joined = true;
                }
            }
        }
        Frame::SubAck(a) if a.entries.iter().all(|e| e.result.is_subscribed()) => {
            p.joined = true;
        }
        Frame::Ack {
            request_id, code, ..
        } => {
            let Some(&at) = p.sent.get(&request_id) else {
                return;
            };
            if code == 0 {
                t.acked += 1;
                if let Some(h) = t.ack.as_mut() {
                    h.saturating_record(now.saturating_sub(at));
                }
                if let Plan::Room { room } = &p.plan {
                    *t.posts_per_room.entry(room.clone()).or_insert(0) += 1;
                    p.sent.remove(&request_id);
                }
            } else {
                *t.refused.entry(code).or_insert(0) += 1;
                p.sent.remove(&request_id);
            }
        }
        Frame::Response { request_id, .. } => {
            if let Some(at) = p.sent.remove(&request_id) {
                t.received += 1;
                if let Some(h) = t.latency.as_mut() {
                    h.saturating_record(now.saturating_sub(at));
                }
            }
        }
        Frame::Update(u) => {
            if u.flags & update_flags::BROADCAST != 0 {
                t.broadcasts += 1;
                return;
            }
            if u.payload.len() >= 16 {
                let at = u64::from_be_bytes(u.payload[8..16].try_into().expect("8 bytes"));
                t.received += 1;
                if let Some(h) = t.latency.as_mut() {
                    h.saturating_record(now.saturating_sub(at));
                }
                if let Plan::Room { room } = &p.plan {
                    *t.got_per_room.entry(room.clone()).or_insert(0) += 1;
                }
            }
        }
        Frame::ClientMessage(m) => p.queue(&Frame::Reply {
            session_id: m.session_id,
            request_id: m.request_id,
            payload: m.payload,
        }),
        Frame::Error(_) => p.closed = true,
        _ => {}
    }
}

/// Starts `threads` threads over `peers`.
fn run_threads(
    peers: Vec<Peer>,
    threads: usize,
    rate: f64,
    stop: &Arc<AtomicBool>,
    sending: &Arc<AtomicBool>,
    backend: bool,
) -> Vec<std::thread::JoinHandle<Tally>> {
    let threads = threads.max(1);
    let mut shares: Vec<Vec<Peer>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, p) in peers.into_iter().enumerate() {
        shares[i % threads].push(p);
    }
    shares
        .into_iter()
        .map(|share| {
            let (stop, sending) = (stop.clone(), sending.clone());
            std::thread::spawn(move || drive(share, rate, &stop, &sending, backend))
        })
        .collect()
}

fn join(hs: Vec<std::thread::JoinHandle<Tally>>) -> Result<Tally, String> {
    let mut t = Tally::default();
    for h in hs {
        t.merge(
            h.join()
                .map_err(|_| "a client thread panicked".to_string())?,
        );
    }
    Ok(t)
}

fn refused_json(t: &Tally) -> serde_json::Value {
    t.refused
        .iter()
        .map(|(c, n)| {
            let name = ErrorCode::from_u16(*c).map_or("?", |e| e.name());
            (name.to_string(), json!(n))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `yorker-sim rooms`.
pub fn rooms(a: &RoomsArgs) -> Result<i32, String> {
    if a.room_size < 2 {
        return Err("--room-size must be at least 2".into());
    }
    let signer = Signer::from_file(&a.jwt_secret, None)?;
    let rooms = a.clients.div_ceil(a.room_size);
    let mut peers = Vec::with_capacity(a.clients);
    let mut members: HashMap<String, u64> = HashMap::new();
    for i in 0..a.clients {
        let room = format!("room/{}", i / a.room_size);
        *members.entry(room.clone()).or_insert(0) += 1;
        let user = format!("player{i}");
        let c = claims(
            Some(&user),
            3600,
            "subscriber",
            std::slice::from_ref(&room),
            std::slice::from_ref(&room),
        );
        let token = signer.sign(&c)?;
        peers.push(open(
            a.addr,
            Role::Subscriber,
            token,
            i as u32,
            Plan::Room { room },
        )?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sending = Arc::new(AtomicBool::new(false));
    let hs = run_threads(peers, a.threads, a.rate, &stop, &sending, false);
    // Everyone joins (SUBACK) before anyone posts: give the threads a moment.
    std::thread::sleep(Duration::from_secs(2));
    sending.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(a.duration));
    sending.store(false, Ordering::Relaxed);
    // Let the last posts arrive.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let t = join(hs)?;
    let expected: u64 = t
        .posts_per_room
        .iter()
        .map(|(r, n)| n * (members[r] - 1))
        .sum();
    let lost = expected.saturating_sub(t.received);
    let latency = t.latency.clone().unwrap_or_else(hist);
    let ack = t.ack.clone().unwrap_or_else(hist);
    let bad = lost > 0 || t.closed > 0 || t.unanswered > 0;
    if a.json {
        println!(
            "{}",
            json!({
                "mode": "rooms", "clients": a.clients, "rooms": rooms, "room_size": a.room_size,
                "rate_per_client": a.rate, "duration_s": a.duration,
                "posts": t.sent, "acked": t.acked, "refused": refused_json(&t),
                "deliveries": t.received, "expected": expected, "lost": lost,
                "unacknowledged": t.unanswered, "closed": t.closed,
                "latency": percentiles(&latency), "ack": percentiles(&ack), "ok": !bad,
            })
        );
    } else {
        println!(
            "yorker-sim rooms: {} clients in {rooms} rooms of {}, {} posts/s each, {} s",
            a.clients, a.room_size, a.rate, a.duration
        );
        println!(
            "posts {} acknowledged {} refused {:?}; deliveries {} of {} expected, lost {lost}, unacknowledged {}, closed {}{}",
            t.sent, t.acked, t.refused, t.received, expected, t.unanswered, t.closed,
            if bad { "  ** LOSS **" } else { "" }
        );
        println!("{}", row("post -> member", &latency));
        println!("{}", row("post -> ACK", &ack));
    }
    Ok(if bad { 1 } else { 0 })
}

/// `yorker-sim bets`.
pub fn bets(a: &BetsArgs) -> Result<i32, String> {
    let signer = a
        .jwt_secret
        .as_ref()
        .map(|p| Signer::from_file(p, None))
        .transpose()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sending = Arc::new(AtomicBool::new(false));
    let backends: Vec<Peer> = (0..a.backends)
        .map(|i| {
            open(
                a.addr,
                Role::Backend,
                a.backend_key.clone(),
                i as u32,
                Plan::Bet,
            )
        })
        .collect::<Result<_, _>>()?;
    let bh = run_threads(backends, 1, 1.0, &stop, &sending, true);
    let mut peers = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let token = match &signer {
            Some(s) => s.sign(&claims(
                Some(&format!("bettor{i}")),
                3600,
                "subscriber",
                &[],
                &[],
            ))?,
            None => String::new(),
        };
        peers.push(open(a.addr, Role::Subscriber, token, i as u32, Plan::Bet)?);
    }
    let hs = run_threads(peers, a.threads, a.rate, &stop, &sending, false);
    std::thread::sleep(Duration::from_secs(2));
    sending.store(true, Ordering::Relaxed);
    let mut publisher = if a.broadcast_rate > 0 {
        Some(crate::publisher::Publisher::connect(a.addr, &a.key).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let end = Instant::now() + Duration::from_secs(a.duration);
    let mut k = 0u64;
    while Instant::now() < end {
        if let Some(p) = publisher.as_mut() {
            k += 1;
            p.publish(
                "odds/all",
                false,
                true,
                &Bytes::from(k.to_be_bytes().to_vec()),
            )
            .and_then(|_| p.flush())
            .map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_secs_f64(1.0 / a.broadcast_rate as f64));
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    sending.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let t = join(hs)?;
    let b = join(bh)?;
    let latency = t.latency.clone().unwrap_or_else(hist);
    let ack = t.ack.clone().unwrap_or_else(hist);
    let bad = t.unanswered > 0 || t.closed > 0 || b.closed > 0 || t.received < t.acked;
    if a.json {
        println!(
            "{}",
            json!({
                "mode": "bets", "clients": a.clients, "backends": a.backends,
                "rate_per_client": a.rate, "duration_s": a.duration,
                "broadcasts_sent": k, "broadcasts_received": t.broadcasts,
                "messages": t.sent, "acked": t.acked, "refused": refused_json(&t),
                "responses": t.received, "unanswered": t.unanswered, "closed": t.closed + b.closed,
                "message_to_reply": percentiles(&latency), "message_to_ack": percentiles(&ack),
                "ok": !bad,
            })
        );
    } else {
        println!(
            "yorker-sim bets: {} clients, {} MESSAGE/s each, {} backend stubs, {} BROADCAST/s, {} s",
            a.clients, a.rate, a.backends, a.broadcast_rate, a.duration
        );
        println!(
            "messages {} acknowledged {} refused {:?} responses {} unanswered {} closed {}; broadcasts sent {k}, received {}{}",
            t.sent, t.acked, t.refused, t.received, t.unanswered, t.closed + b.closed, t.broadcasts,
            if bad { "  ** LOSS **" } else { "" }
        );
        println!("{}", row("MESSAGE -> reply", &latency));
        println!("{}", row("MESSAGE -> ACK", &ack));
    }
    Ok(if bad { 1 } else { 0 })
}
