//! The subscriber fleet: many simulated game clients on a few threads, each thread with its own
//! io_uring. Each socket is connected normally, installed into the ring's fixed-file table
//! (direct descriptor) and its ordinary fd closed at once, so one process holds more
//! connections than its fd limit (the table's limit is per ring). Receives are multishot from a
//! provided-buffer ring; slow readers use paced single-shot receives.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use socket2::{Domain, Socket, Type};
use yorker_uring::{Completion, Op, Ring, RingConfig, SendOutcome, UserData};
use yorker_wire::{update_flags, ResumeFrom};

use crate::check::{TopicCheck, Totals};
use crate::matchsim::Rng;
use crate::proto::{self, Event, Proto};

/// Completions a busy worker with many connections waits for before it wakes (or a moment).
const BATCH: usize = 32;

/// Connections one source address can open to one server address (ephemeral ports).
pub const PER_SOURCE_IP: usize = 25_000;
/// Connections per worker thread at most (each ring's fixed-file table must fit RLIMIT_NOFILE).
pub const PER_THREAD_MAX: usize = 18_000;

/// How payloads carry their timestamp (and, for benchmarks, their update index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// Benchmark payload: publish time (u64 µs) then update index (u64), then padding.
    Bench,
    /// Cricket score payload (timestamp at offset 25).
    Score,
}

/// Publish time and bench index of a payload.
pub fn payload_stamp(kind: PayloadKind, p: &[u8]) -> (u64, Option<u64>) {
    match kind {
        PayloadKind::Bench if p.len() >= 16 => (
            u64::from_be_bytes(p[0..8].try_into().expect("8")),
            Some(u64::from_be_bytes(p[8..16].try_into().expect("8"))),
        ),
        PayloadKind::Score if p.len() >= 33 => {
            (u64::from_be_bytes(p[25..33].try_into().expect("8")), None)
        }
        _ => (0, None),
    }
}

/// Microseconds since the Unix epoch.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Which topics clients subscribe to.
#[derive(Debug, Clone)]
pub struct TopicChoice {
    /// Topic names.
    pub names: Vec<String>,
    /// Zipf-like skew: topic k is chosen with weight 1/(k+1)^skew (0 = uniform).
    pub skew: f64,
}

impl TopicChoice {
    /// Picks a topic index.
    pub fn pick(&self, rng: &mut Rng) -> usize {
        if self.names.len() <= 1 {
            return 0;
        }
        let w: Vec<f64> = (0..self.names.len())
            .map(|k| 1.0 / ((k + 1) as f64).powf(self.skew))
            .collect();
        let mut x = rng.unit() * w.iter().sum::<f64>();
        for (k, wk) in w.iter().enumerate() {
            if x < *wk {
                return k;
            }
            x -= wk;
        }
        self.names.len() - 1
    }
}

/// Settings of a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Engine addresses (clients spread round-robin).
    pub addrs: Vec<SocketAddr>,
    /// Number of clients.
    pub conns: usize,
    /// Worker threads (each with a ring).
    pub threads: usize,
    /// New connections per second over the whole fleet (0: as fast as possible).
    pub ramp_per_s: u64,
    /// Topic choice.
    pub topics: TopicChoice,
    /// Conflation on the subscriptions.
    pub conflate: bool,
    /// Fraction of clients that read slowly.
    pub slow_fraction: f64,
    /// A slow reader waits this long between reads.
    pub slow_delay_ms: u64,
    /// Fraction of clients that drop and reconnect (with resume) per second.
    pub churn_per_s: f64,
    /// Payload format.
    pub payload: PayloadKind,
    /// Updates tracked for fan-out completion and fairness (bench index range).
    pub track_updates: usize,
    /// Protocol.
    pub proto: Proto,
    /// Seed.
    pub seed: u64,
    /// First source address: clients use 127.0.0.<base>, then <base+1> every 25,000
    /// connections (set it apart when several processes load one server).
    pub source_base: u8,
    /// With `Proto::Tls`: the client configuration (trusting the engine's certificate).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// Per-update tracking: first and last receive time and receiver count, by bench index.
#[derive(Debug)]
pub struct UpdateTrack {
    /// Earliest receive, µs since epoch (u64::MAX: none).
    pub first: Vec<AtomicU64>,
    /// Latest receive.
    pub last: Vec<AtomicU64>,
    /// Receivers so far.
    pub count: Vec<AtomicU32>,
    /// Publish time carried by the payload (u64::MAX: unknown).
    pub sent: Vec<AtomicU64>,
}

impl UpdateTrack {
    fn new(n: usize) -> Self {
        UpdateTrack {
            first: (0..n).map(|_| AtomicU64::new(u64::MAX)).collect(),
            last: (0..n).map(|_| AtomicU64::new(0)).collect(),
            count: (0..n).map(|_| AtomicU32::new(0)).collect(),
            sent: (0..n).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }
    fn record(&self, index: u64, sent_us: u64, at_us: u64) {
        let i = index as usize;
        if i < self.count.len() {
            self.sent[i].fetch_min(sent_us, Ordering::Relaxed);
            self.first[i].fetch_min(at_us, Ordering::Relaxed);
            self.last[i].fetch_max(at_us, Ordering::Relaxed);
            self.count[i].fetch_add(1, Ordering::Release);
        }
    }
}

/// State shared between the fleet's threads and whoever drives it.
#[derive(Debug)]
pub struct Shared {
    /// Set to stop every thread.
    pub stop: AtomicBool,
    /// Clients connected (TCP).
    pub connected: AtomicU64,
    /// Clients whose subscriptions were acknowledged.
    pub subscribed: AtomicU64,
    /// Updates received.
    pub received: AtomicU64,
    /// Connections the server closed or failed.
    pub disconnects: AtomicU64,
    /// Connect failures.
    pub connect_failures: AtomicU64,
    /// Per-update tracking.
    pub track: UpdateTrack,
}

/// What a thread measured.
#[derive(Debug)]
pub struct Report {
    /// Per-delivery latency, publish to receive, µs (live updates to normal readers).
    pub latency: Histogram<u64>,
    /// The same for the simulated slow readers.
    pub latency_slow: Histogram<u64>,
    /// Connect to SUBACK, µs.
    pub connect: Histogram<u64>,
    /// Delivery checks.
    pub totals: Totals,
    /// Clients that reconnected (churn or GOAWAY).
    pub reconnects: u64,
    /// GOAWAY frames honoured.
    pub goaways: u64,
    /// ERROR frames by code.
    pub errors: Vec<(u16, u64)>,
    /// For each topic id: the highest seq any client of this thread ended with and the lowest.
    pub final_seqs: Vec<(u32, u64, u64)>,
}

impl Report {
    fn new() -> Self {
        Report {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
            latency_slow: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
            connect: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
            totals: Totals::default(),
            reconnects: 0,
            goaways: 0,
            errors: Vec::new(),
            final_seqs: Vec::new(),
        }
    }

    /// Merges another thread's report.
    pub fn merge(&mut self, o: &Report) {
        self.latency.add(&o.latency).ok();
        self.latency_slow.add(&o.latency_slow).ok();
        self.connect.add(&o.connect).ok();
        self.totals.merge(&o.totals);
        self.reconnects += o.reconnects;
        self.goaways += o.goaways;
        for &(c, n) in &o.errors {
            match self.errors.iter_mut().find(|e| e.0 == c) {
                Some(e) => e.1 += n,
                None => self.errors.push((c, n)),
            }
        }
        for &(t, hi, lo) in &o.final_seqs {
            match self.final_seqs.iter_mut().find(|e| e.0 == t) {
                Some(e) => {
                    e.1 = e.1.max(hi);
                    e.2 = e.2.min(lo);
                }
                None => self.final_seqs.push((t, hi, lo)),
            }
        }
    }
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    /// Shared counters and the stop flag.
    pub shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<Report>>>,
}

impl Fleet {
    /// Starts the worker threads; connections ramp up in the background.
    pub fn start(cfg: FleetConfig) -> std::io::Result<Fleet> {
        yorker_uring::raise_nofile_limit();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            connected: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            track: UpdateTrack::new(cfg.track_updates),
        });
        let threads_needed = cfg.conns.div_ceil(PER_THREAD_MAX).max(1);
        let nthreads = cfg.threads.max(threads_needed).min(cfg.conns.max(1));
        let cfg = Arc::new(cfg);
        let mut threads = Vec::new();
        for t in 0..nthreads {
            // Global client indices t, t + n, t + 2n, ...: interleaved so ramps are even.
            let mine: Vec<usize> = (t..cfg.conns).step_by(nthreads).collect();
            let (cfg, shared) = (cfg.clone(), shared.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fleet-{t}"))
                    .spawn(move || Worker::new(&cfg, shared, mine, t, nthreads)?.run())?,
            );
        }
        Ok(Fleet { shared, threads })
    }

    /// Stops every client and returns the merged report.
    pub fn stop(self) -> std::io::Result<Report> {
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut total = Report::new();
        for t in self.threads {
            let r = t
                .join()
                .map_err(|_| std::io::Error::other("fleet thread panicked"))??;
            total.merge(&r);
        }
        Ok(total)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected yet, or waiting to reconnect.
    Waiting,
    /// TCP connected, handshake sent.
    Handshaking,
    /// Subscribed.
    Active,
    /// Shutdown sent, waiting for the receive to end.
    Closing,
}

#[derive(Debug)]
struct TopicState {
    topic: usize,
    id: u32,
    check: TopicCheck,
    /// Updates up to this seq are replays after a resume: not timed.
    replay_until: u64,
}

#[derive(Debug)]
struct Conn {
    global: usize,
    state: State,
    generation: u32,
    recv_armed: bool,
    slow: bool,
    due_ms: u64,
    parser: proto::Parser,
    topics: Vec<TopicState>,
    epoch: u64,
    next_ping_ms: u64,
    connected_at: Instant,
    reconnect: bool,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Welcome {
        epoch: u64,
    },
    SubAck {
        id: u32,
        seq: u64,
        ok: bool,
    },
    Update {
        id: u32,
        seq: u64,
        flags: u8,
        ts: u64,
        index: Option<u64>,
    },
    GoAway {
        ms: u32,
    },
    Error {
        code: u16,
    },
}

struct Worker {
    cfg: FleetConfig,
    shared: Arc<Shared>,
    ring: Ring,
    conns: Vec<Conn>,
    report: Report,
    rng: Rng,
    start: Instant,
    /// Index in `conns` of the next client to connect for the first time.
    next_new: usize,
    thread: usize,
    nthreads: usize,
    ping_cursor: usize,
    heartbeat_ms: u64,
    scratch: Vec<Ev>,
    slow_queue: Vec<(u64, usize)>,
    /// Connections that will reconnect (pushed when `reconnect` is set; stale entries are
    /// dropped when seen). Scanning every connection for this on every loop iteration cost a
    /// fifth of the load generator's CPU at 15,000 connections.
    reconnect_queue: Vec<usize>,
    churn_credit: f64,
    last_churn: Instant,
}

impl Worker {
    fn new(
        cfg: &FleetConfig,
        shared: Arc<Shared>,
        mine: Vec<usize>,
        thread: usize,
        nthreads: usize,
    ) -> std::io::Result<Self> {
        let ring = Ring::new(RingConfig {
            sq_entries: 4096,
            cq_entries: 32768,
            files: mine.len() as u32 + 16,
            buf_entries: 4096,
            buf_size: 4096,
        })?;
        let mut rng = Rng::new(cfg.seed ^ ((thread as u64 + 1) * 0x1234_5678));
        let conns = mine
            .into_iter()
            .map(|global| {
                let topic = cfg.topics.pick(&mut rng);
                Conn {
                    global,
                    state: State::Waiting,
                    generation: 0,
                    recv_armed: false,
                    slow: rng.unit() < cfg.slow_fraction,
                    due_ms: 0,
                    parser: proto::Parser::new(cfg.proto),
                    topics: vec![TopicState {
                        topic,
                        id: 0,
                        check: TopicCheck::default(),
                        replay_until: 0,
                    }],
                    epoch: 0,
                    next_ping_ms: 0,
                    connected_at: Instant::now(),
                    reconnect: false,
                }
            })
            .collect();
        Ok(Worker {
            cfg: cfg.clone(),
            shared,
            ring,
            conns,
            report: Report::new(),
            rng,
            start: Instant::now(),
            next_new: 0,
            thread,
            nthreads,
            ping_cursor: 0,
            heartbeat_ms: 15_000,
            scratch: Vec::new(),
            slow_queue: Vec::new(),
            reconnect_queue: Vec::new(),
            churn_credit: 0.0,
            last_churn: Instant::now(),
        })
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn run(mut self) -> std::io::Result<Report> {
        let mut cqes: Vec<Completion> = Vec::with_capacity(8192);
        let mut busy = false;
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.connect_due()?;
            self.housekeeping()?;
            // Busy with many connections, wait for a batch (or a moment that grows with the
            // connections, 1 ns each, at most 50 us): one enter per completion costs more than
            // the receives themselves. With few connections (where latency is measured finely)
            // and when idle, wake at the first completion.
            let batch_wait = Duration::from_nanos((self.conns.len() as u64).min(50_000));
            let (want, wait) = if busy && batch_wait >= Duration::from_micros(2) {
                (BATCH, batch_wait)
            } else {
                (1, Duration::from_millis(5))
            };
            self.ring.submit_and_wait(want, Some(wait))?;
            cqes.clear();
            self.ring.completions(&mut cqes);
            // Batch only when completions already come in batches: at light load a wait would
            // only add to the latency being measured.
            busy = !cqes.is_empty();
            for c in &cqes {
                self.on_completion(c)?;
            }
        }
        self.shutdown_all(&mut cqes)?;
        for c in &self.conns {
            for t in &c.topics {
                self.report.totals.add(&t.check);
                if c.state == State::Active || c.state == State::Closing {
                    match self.report.final_seqs.iter_mut().find(|e| e.0 == t.id) {
                        Some(e) => {
                            e.1 = e.1.max(t.check.last);
                            e.2 = e.2.min(t.check.last);
                        }
                        None => self
                            .report
                            .final_seqs
                            .push((t.id, t.check.last, t.check.last)),
                    }
                }
            }
        }
        Ok(self.report)
    }

    /// Opens first connections on the ramp schedule, and reconnections that are due.
    fn connect_due(&mut self) -> std::io::Result<()> {
        let per_thread_rate = self.cfg.ramp_per_s as f64 / self.nthreads as f64;
        let allowed = if self.cfg.ramp_per_s == 0 {
            self.conns.len()
        } else {
            ((self.start.elapsed().as_secs_f64() * per_thread_rate) as usize + 1)
                .min(self.conns.len())
        };
        let mut budget = 512; // bounded work per loop iteration keeps completions flowing
        while self.next_new < allowed && budget > 0 {
            let i = self.next_new;
            self.next_new += 1;
            budget -= 1;
            self.open(i)?;
        }
        if self.reconnect_queue.is_empty() {
            return Ok(());
        }
        let now = self.ms();
        let mut queue = std::mem::take(&mut self.reconnect_queue);
        let mut k = 0;
        while k < queue.len() {
            let i = queue[k];
            let c = &self.conns[i];
            let waiting = c.state == State::Waiting || c.state == State::Closing;
            if !(waiting && c.reconnect) {
                queue.swap_remove(k); // reconnected already, or no longer to reconnect
            } else if c.state == State::Waiting
                && now >= c.due_ms
                && !self.ring.send_in_flight(i as u32)
                && !c.recv_armed
            {
                queue.swap_remove(k);
                self.report.reconnects += 1;
                self.open(i)?;
            } else {
                k += 1;
            }
        }
        // `open` may have queued connections that failed to dial again.
        queue.append(&mut self.reconnect_queue);
        self.reconnect_queue = queue;
        Ok(())
    }

    fn open(&mut self, i: usize) -> std::io::Result<()> {
        let global = self.conns[i].global;
        let addr = self.cfg.addrs[global % self.cfg.addrs.len()];
        let sock = match self.dial(global, addr) {
            Ok(s) => s,
            Err(e) => {
                if std::env::var_os("YORKER_SIM_DEBUG").is_some() {
                    eprintln!("dial {addr}: {e}");
                }
                self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                let c = &mut self.conns[i];
                c.state = State::Waiting;
                c.reconnect = true;
                c.due_ms = self.start.elapsed().as_millis() as u64 + 1000;
                self.reconnect_queue.push(i);
                return Ok(());
            }
        };
        let (sock, tls) = sock;
        let slot = i as u32;
        self.ring.register_fd(slot, sock.as_raw_fd())?;
        drop(sock); // the fixed-file table holds the socket now
        let c = &mut self.conns[i];
        c.generation = (c.generation + 1) & 0x00ff_ffff;
        c.state = State::Handshaking;
        c.parser = match tls {
            Some(conn) => proto::Parser::Tls(Box::new(proto::tls::Parser::with(
                conn,
                proto::Parser::new(self.cfg.proto),
            ))),
            None => proto::Parser::new(self.cfg.proto),
        };
        c.connected_at = Instant::now();
        let topics: Vec<(String, Option<ResumeFrom>)> = c
            .topics
            .iter()
            .map(|t| {
                let resume = (c.epoch != 0 && t.check.last != 0).then_some(ResumeFrom {
                    epoch: c.epoch,
                    seq: t.check.last,
                });
                (self.cfg.topics.names[t.topic].clone(), resume)
            })
            .collect();
        let hs = proto::handshake(
            self.cfg.proto,
            &format!("sim-{global}"),
            &topics,
            self.cfg.conflate,
        );
        let now = proto::sendable_before_upgrade(self.cfg.proto, &hs);
        if now < hs.len() {
            c.parser.send_after_upgrade(hs[now..].to_vec());
        }
        let hs = Bytes::from(c.parser.seal(&hs[..now]));
        let generation = c.generation;
        let slow = c.slow;
        self.shared.connected.fetch_add(1, Ordering::Relaxed);
        self.ring.send(
            slot,
            UserData::new(Op::Send, slot, generation).pack(),
            |f| f.push(hs),
        )?;
        self.arm_recv(i, slow)
    }

    fn dial(
        &self,
        global: usize,
        addr: SocketAddr,
    ) -> std::io::Result<(Socket, Option<rustls::ClientConnection>)> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_tcp_nodelay(true)?;
        // Beyond one source address's ephemeral ports, use 127.0.0.2, .3, ...
        let per_addr = global / self.cfg.addrs.len();
        let src = self.cfg.source_base.max(1) as usize + per_addr / PER_SOURCE_IP;
        if src > 1 && addr.ip().is_loopback() {
            let ip = Ipv4Addr::new(127, 0, 0, src.min(254) as u8);
            s.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
        }
        // Bounded: a server whose backlog overflowed makes connect wait for SYN retransmits,
        // and one stuck connect would stall every client of this thread.
        s.connect_timeout(&addr.into(), Duration::from_secs(2))?;
        // TLS: the handshake runs here, blocking and bounded, before the ring takes the socket.
        let tls = match &self.cfg.tls {
            Some(cfg) => {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut sock = &s;
                if self.cfg.proto == Proto::NatsTls {
                    // nats-server 2.9 sends its INFO in clear before the TLS handshake.
                    proto::nats::read_info_line(&mut sock)?;
                }
                let conn = proto::tls::handshake(cfg, &mut sock)?;
                s.set_read_timeout(None)?;
                Some(conn)
            }
            None => None,
        };
        Ok((s, tls))
    }

    fn arm_recv(&mut self, i: usize, slow: bool) -> std::io::Result<()> {
        let c = &mut self.conns[i];
        let ud = UserData::new(Op::Recv, i as u32, c.generation).pack();
        c.recv_armed = true;
        if slow {
            self.ring.recv_once(i as u32, ud)
        } else {
            self.ring.recv_multi(i as u32, ud)
        }
    }

    fn housekeeping(&mut self) -> std::io::Result<()> {
        let now = self.ms();
        // Slow readers whose pause is over read again.
        let mut k = 0;
        while k < self.slow_queue.len() {
            let (due, i) = self.slow_queue[k];
            if due <= now {
                self.slow_queue.swap_remove(k);
                let st = self.conns[i].state;
                if (st == State::Handshaking || st == State::Active) && !self.conns[i].recv_armed {
                    self.arm_recv(i, true)?;
                }
            } else {
                k += 1;
            }
        }
        // Keep-alive pings, a slice of the clients per iteration.
        let n = self.conns.len().min(self.next_new);
        if let Some((ping, every)) = proto::keepalive(self.cfg.proto, self.heartbeat_ms, now) {
            let ping = Bytes::from(ping);
            for _ in 0..n.min(256) {
                let i = self.ping_cursor % n.max(1);
                self.ping_cursor = self.ping_cursor.wrapping_add(1);
                let c = &mut self.conns[i];
                if c.state == State::Active && now >= c.next_ping_ms {
                    c.next_ping_ms = now + every;
                    let ud = UserData::new(Op::Send, i as u32, c.generation).pack();
                    if !self.ring.send_in_flight(i as u32) {
                        let bytes = c.parser.seal_shared(&ping);
                        self.ring.send(i as u32, ud, |f| f.push(bytes))?;
                    }
                }
            }
        }
        // Reconnect churn.
        if self.cfg.churn_per_s > 0.0 {
            let dt = self.last_churn.elapsed().as_secs_f64();
            self.last_churn = Instant::now();
            self.churn_credit += dt * self.cfg.churn_per_s * n as f64;
            while self.churn_credit >= 1.0 && n > 0 {
                self.churn_credit -= 1.0;
                let i = self.rng.below(n as u64) as usize;
                if self.conns[i].state == State::Active {
                    let jitter = 50 + self.rng.below(500);
                    self.close(i, jitter)?;
                }
            }
        }
        Ok(())
    }

    /// Drops a connection and reconnects it `after_ms` later (with resume).
    ///
    /// The receive is cancelled by its user_data rather than with a Shutdown op: Shutdown runs
    /// in io-wq and resolves the direct descriptor when it runs, which may be after the slot
    /// already holds the reconnected socket. The old socket closes when the slot is
    /// re-registered.
    fn close(&mut self, i: usize, after_ms: u64) -> std::io::Result<()> {
        let now = self.ms();
        let c = &mut self.conns[i];
        if c.state == State::Waiting || c.state == State::Closing {
            return Ok(());
        }
        c.reconnect = true;
        c.due_ms = now + after_ms;
        self.reconnect_queue.push(i);
        self.shared.connected.fetch_sub(1, Ordering::Relaxed);
        if c.recv_armed {
            c.state = State::Closing;
            let target = UserData::new(Op::Recv, i as u32, c.generation).pack();
            self.ring.cancel(
                target,
                UserData::new(Op::Cancel, i as u32, c.generation).pack(),
            )
        } else {
            c.state = State::Waiting;
            Ok(())
        }
    }

    fn on_completion(&mut self, c: &Completion) -> std::io::Result<()> {
        let Some(ud) = UserData::unpack(c.user_data) else {
            return Ok(());
        };
        let i = ud.slot as usize;
        match ud.op {
            Op::Recv => {
                let current = i < self.conns.len() && self.conns[i].generation == ud.generation;
                // Parse while the ring lends the buffer; act on the events after it went back.
                let parsed = match self.ring.take_buffer(c) {
                    Some(buf) if current && c.result > 0 => {
                        self.scratch.clear();
                        let mut scratch = std::mem::take(&mut self.scratch);
                        let payload = self.cfg.payload;
                        let r = self.conns[i].parser.feed(&buf, &mut |e| {
                            scratch.push(match e {
                                Event::Update {
                                    topic_id,
                                    seq,
                                    flags,
                                    payload: p,
                                } => {
                                    let (ts, index) = payload_stamp(payload, p);
                                    Ev::Update {
                                        id: topic_id,
                                        seq,
                                        flags,
                                        ts,
                                        index,
                                    }
                                }
                                Event::Welcome { epoch, .. } => Ev::Welcome { epoch },
                                Event::SubAck { topic_id, seq, ok } => Ev::SubAck {
                                    id: topic_id,
                                    seq,
                                    ok,
                                },
                                Event::GoAway { reconnect_after_ms } => Ev::GoAway {
                                    ms: reconnect_after_ms,
                                },
                                Event::Error { code } => Ev::Error { code },
                                Event::Other => return,
                            })
                        });
                        Some((r, scratch))
                    }
                    _ => None,
                };
                if let Some((r, mut scratch)) = parsed {
                    let now = unix_us();
                    self.send_reply(i)?;
                    for e in scratch.drain(..) {
                        self.on_event(i, e, now)?;
                    }
                    self.scratch = scratch;
                    if r.is_err() {
                        // Code 0: the stream did not parse (a refusal such as Redis'
                        // -DENIED, or garbage). Reconnect after a pause.
                        self.count_error(0);
                        self.close(i, 1000)?;
                    }
                }
                if !current {
                    return Ok(());
                }
                let slow = self.conns[i].slow;
                let ended = !c.more() || slow;
                if ended {
                    self.conns[i].recv_armed = false;
                    let state = self.conns[i].state;
                    if c.result > 0 || c.result == -libc::ENOBUFS {
                        if state == State::Handshaking || state == State::Active {
                            if slow {
                                let due = self.ms() + self.cfg.slow_delay_ms;
                                self.slow_queue.push((due, i));
                            } else {
                                self.arm_recv(i, false)?;
                            }
                        }
                    } else {
                        // EOF or error: the connection is gone. Unless we were closing it
                        // ourselves, the server went away without GOAWAY (a crash, a reset):
                        // reconnect (with resume) after a random delay, so a fleet whose server
                        // died does not come back as one herd.
                        let jitter = 100 + self.rng.below(2_000);
                        let due = self.ms() + jitter;
                        let conn = &mut self.conns[i];
                        if conn.state != State::Closing && conn.state != State::Waiting {
                            self.shared.disconnects.fetch_add(1, Ordering::Relaxed);
                            self.shared.connected.fetch_sub(1, Ordering::Relaxed);
                            conn.reconnect = true;
                            conn.due_ms = due;
                            self.reconnect_queue.push(i);
                        }
                        conn.state = State::Waiting;
                    }
                }
            }
            Op::Send => {
                match self.ring.complete_send(ud.slot, c.result) {
                    // The receive side notices the close.
                    SendOutcome::Failed { .. } => {}
                    // A reply that waited for this send (a PONG, a handshake held back until
                    // the WebSocket upgrade) goes now.
                    _ if !self.ring.send_in_flight(ud.slot) => self.send_reply(i)?,
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends what the connection's protocol owes the server now (see `Parser::take_reply`),
    /// unless a send is in flight: then it stays pending until that send completes.
    fn send_reply(&mut self, i: usize) -> std::io::Result<()> {
        if self.ring.send_in_flight(i as u32) {
            return Ok(());
        }
        let c = &mut self.conns[i];
        if !matches!(c.state, State::Handshaking | State::Active) {
            return Ok(());
        }
        if let Some(reply) = c.parser.take_reply() {
            let ud = UserData::new(Op::Send, i as u32, c.generation).pack();
            self.ring
                .send(i as u32, ud, |f| f.push(Bytes::from(reply)))?;
        }
        Ok(())
    }

    fn on_event(&mut self, i: usize, e: Ev, now_us: u64) -> std::io::Result<()> {
        match e {
            Ev::Welcome { epoch } => {
                let c = &mut self.conns[i];
                if c.epoch != 0 && c.epoch != epoch {
                    // A restarted server: old sequence numbers mean nothing now.
                    for t in &mut c.topics {
                        t.check.last = 0;
                    }
                }
                c.epoch = epoch;
            }
            Ev::SubAck { id, seq, ok } => {
                let c = &mut self.conns[i];
                if let Some(t) = c.topics.iter_mut().find(|t| t.id == 0 || t.id == id) {
                    t.id = id;
                    t.replay_until = seq;
                }
                if ok && c.state == State::Handshaking {
                    c.state = State::Active;
                    if !c.reconnect {
                        self.shared.subscribed.fetch_add(1, Ordering::Relaxed);
                        self.report
                            .connect
                            .record(c.connected_at.elapsed().as_micros().max(1) as u64)
                            .ok();
                    }
                }
            }
            Ev::Update {
                id,
                seq,
                flags,
                ts,
                index,
            } => {
                self.shared.received.fetch_add(1, Ordering::Relaxed);
                // Peers' protocols carry no sequence number: use the bench index (from 1).
                let seq = if seq == 0 {
                    index.map_or(0, |i| i + 1)
                } else {
                    seq
                };
                let conflate = self.cfg.conflate;
                let c = &mut self.conns[i];
                let snapshot = flags & update_flags::SNAPSHOT != 0;
                let mut replay = snapshot;
                if let Some(t) = c.topics.iter_mut().find(|t| t.id == id).filter(|_| seq > 0) {
                    t.check
                        .see(seq, conflate, snapshot, flags & update_flags::RESET != 0);
                    replay |= seq <= t.replay_until;
                }
                if !replay && ts > 0 {
                    let lat = now_us.saturating_sub(ts).max(1);
                    if c.slow {
                        self.report.latency_slow.record(lat).ok();
                    } else {
                        self.report.latency.record(lat).ok();
                        // Bench payloads carry their index; score updates are indexed by
                        // (seq, topic). Fan-out completion and fairness cover normal readers.
                        let ix = index.or_else(|| {
                            let k = self.cfg.topics.names.len() as u64;
                            (id >= 1 && seq >= 1).then(|| (seq - 1) * k + (id as u64 - 1))
                        });
                        if let Some(ix) = ix {
                            self.shared.track.record(ix, ts, now_us);
                        }
                    }
                }
            }
            Ev::GoAway { ms } => {
                self.report.goaways += 1;
                self.close(i, ms as u64)?;
            }
            Ev::Error { code } => self.count_error(code),
        }
        Ok(())
    }

    fn count_error(&mut self, code: u16) {
        match self.report.errors.iter_mut().find(|e| e.0 == code) {
            Some(e) => e.1 += 1,
            None => self.report.errors.push((code, 1)),
        }
    }

    /// Closes every connection and waits (bounded) for the kernel to release them.
    fn shutdown_all(&mut self, cqes: &mut Vec<Completion>) -> std::io::Result<()> {
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            c.reconnect = false;
            if c.recv_armed && c.state != State::Closing {
                c.state = State::Closing;
                let target = UserData::new(Op::Recv, i as u32, c.generation).pack();
                self.ring.cancel(
                    target,
                    UserData::new(Op::Cancel, i as u32, c.generation).pack(),
                )?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline
            && (self.conns.iter().any(|c| c.recv_armed) || self.ring.sends_in_flight() > 0)
        {
            self.ring
                .submit_and_wait(1, Some(Duration::from_millis(20)))?;
            cqes.clear();
            self.ring.completions(cqes);
            for c in cqes.iter() {
                if let Some(ud) = UserData::unpack(c.user_data) {
                    match ud.op {
                        Op::Recv => {
                            drop(self.ring.take_buffer(c));
                            if !c.more() || self.conns[ud.slot as usize].slow {
                                self.conns[ud.slot as usize].recv_armed = false;
                            }
                        }
                        Op::Send => {
                            self.ring.complete_send(ud.slot, c.result);
                        }
                        _ => {}
                    }
                }
            }
        }
        let _ = (self.thread, Bytes::new());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_choice_is_skewed() {
        let tc = TopicChoice {
            names: (0..10).map(|k| format!("m/{k}")).collect(),
            skew: 1.2,
        };
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            counts[tc.pick(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9], "{counts:?}");
        let uniform = TopicChoice {
            names: vec!["a".into(), "b".into()],
            skew: 0.0,
        };
        let a = (0..10_000).filter(|_| uniform.pick(&mut rng) == 0).count();
        assert!((4_000..6_000).contains(&a));
    }

    #[test]
    fn payload_stamps() {
        let mut p = vec![0u8; 64];
        p[..8].copy_from_slice(&5u64.to_be_bytes());
        p[8..16].copy_from_slice(&9u64.to_be_bytes());
        assert_eq!(payload_stamp(PayloadKind::Bench, &p), (5, Some(9)));
        assert_eq!(payload_stamp(PayloadKind::Bench, &p[..4]), (0, None));
    }
}
