//! The origin's multicast feed: a sender thread that packs the updates every shard receives
//! into numbered datagrams (plus heartbeats while idle), and a recovery thread that answers
//! NAKs from the retransmit ring.
//!
//! The frames are the ones the registry encoded once for the local subscribers; the feed only
//! adds the topic name in front of each.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use yorker_wire::feed::{verify_nak, FeedHeader, Kind, NakError};

use super::packer::{Packer, RetransmitRing};
use super::{unix_us, FeedStats, MulticastOut};
use yorker_engine::proto::registry::Registry;
use yorker_engine::proto::UpdateMsg;

/// Updates queued between the shards and the sender thread at most. Beyond it the sender is
/// hopelessly behind: updates are dropped and the relays are told by a hole in the sequence.
const TAP_CAPACITY: usize = 1 << 20;

/// Where the bus hands each update for multicast. Never blocks the publishing shard.
#[derive(Debug)]
pub struct FeedTap {
    tx: SyncSender<UpdateMsg>,
    overrun: AtomicBool,
    stats: Arc<FeedStats>,
}

/// The receiving end of a [`FeedTap`], handed to [`Origin::start`].
#[derive(Debug)]
pub struct FeedQueue {
    rx: Receiver<UpdateMsg>,
    tap: Arc<FeedTap>,
}

impl FeedTap {
    /// A tap for the engine's bus (`ServerConfig::tap`) and the queue the origin's sender
    /// thread reads. The tap is made before the engine starts, the origin after (it needs the
    /// engine's registry and listen address).
    pub fn channel(stats: Arc<FeedStats>) -> (Arc<FeedTap>, FeedQueue) {
        let (tx, rx) = sync_channel(TAP_CAPACITY);
        let tap = Arc::new(FeedTap {
            tx,
            overrun: AtomicBool::new(false),
            stats,
        });
        (tap.clone(), FeedQueue { rx, tap })
    }
}

impl yorker_engine::bus::Tap for FeedTap {
    /// Queues `msg` for the sender thread.
    fn offer(&self, msg: &UpdateMsg) {
        match self.tx.try_send(msg.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.overrun.store(true, Ordering::Release);
                FeedStats::add(&self.stats.overruns, 1);
            }
        }
    }
}

/// The running feed threads.
#[derive(Debug)]
pub struct Origin {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Origin {
    /// Opens the sockets and starts both threads. `recovery` is the UDP address NAKs come to
    /// (the engine's listen address); `queue` is the other end of the engine's tap.
    pub fn start(
        cfg: &MulticastOut,
        recovery: SocketAddr,
        registry: Arc<Registry>,
        queue: FeedQueue,
        stats: Arc<FeedStats>,
    ) -> io::Result<Origin> {
        let out = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        out.set_multicast_if_v4(&cfg.interface)?;
        out.set_multicast_ttl_v4(cfg.ttl)?;
        // Relays on this host (and tests in a namespace) receive the group too.
        out.set_multicast_loop_v4(true)?;
        out.bind(&SocketAddr::from((cfg.interface, 0)).into())?;
        out.set_send_buffer_size(4 << 20)?;
        let out: Arc<UdpSocket> = Arc::new(out.into());
        let naks = UdpSocket::bind(recovery)?;
        naks.set_read_timeout(Some(Duration::from_millis(100)))?;

        let FeedQueue { rx, tap } = queue;
        let ring = Arc::new(Mutex::new(RetransmitRing::new(
            cfg.retransmit_ms,
            cfg.retransmit_bytes,
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let sender = Sender {
            cfg: cfg.clone(),
            out: out.clone(),
            rx,
            tap: tap.clone(),
            registry: registry.clone(),
            ring: ring.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
            names: HashMap::new(),
            started: Instant::now(),
        };
        let recovery = Recovery {
            cfg: cfg.clone(),
            out,
            naks,
            registry,
            ring,
            stats,
            stop: stop.clone(),
            linger: HashMap::new(),
            limits: HashMap::new(),
            started: Instant::now(),
        };
        let threads = vec![
            std::thread::Builder::new()
                .name("yorker-feed-out".into())
                .spawn(move || sender.run())?,
            std::thread::Builder::new()
                .name("yorker-feed-nak".into())
                .spawn(move || recovery.run())?,
        ];
        Ok(Origin { threads, stop })
    }

    /// Stops both threads (after the sender flushed what it holds).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn send_all(out: &UdpSocket, groups: &[SocketAddrV4], d: &[u8], stats: &FeedStats) {
    for g in groups {
        // A failed send is a loss like any other: the relays NAK it.
        if out.send_to(d, g).is_ok() {
            FeedStats::add(&stats.datagrams_out, 1);
        }
    }
}

struct Sender {
    cfg: MulticastOut,
    out: Arc<UdpSocket>,
    rx: Receiver<UpdateMsg>,
    tap: Arc<FeedTap>,
    registry: Arc<Registry>,
    ring: Arc<Mutex<RetransmitRing>>,
    stats: Arc<FeedStats>,
    stop: Arc<AtomicBool>,
    names: HashMap<u32, Arc<str>>,
    started: Instant,
}

impl Sender {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn run(mut self) {
        let mut packer = Packer::new(
            self.cfg.channel,
            self.registry.epoch(),
            self.cfg.max_datagram,
        );
        let hb = Duration::from_millis(self.cfg.heartbeat_ms.max(1));
        let mut last_sent = Instant::now();
        // Bounded wait so a stop request is seen within one heartbeat interval.
        loop {
            let wait = hb.saturating_sub(last_sent.elapsed());
            match self.rx.recv_timeout(wait) {
                Ok(m) => {
                    self.pack(&mut packer, m);
                    // Everything already queued goes into the same datagrams: batching costs
                    // no added latency, it only happens when updates arrive together.
                    while let Ok(m) = self.rx.try_recv() {
                        self.pack(&mut packer, m);
                    }
                    if let Some(d) = packer.flush(unix_us()) {
                        self.emit(&packer, d);
                    }
                    last_sent = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.stop.load(Ordering::Acquire) {
                        break;
                    }
                    let d = packer.heartbeat(unix_us());
                    send_all(&self.out, &self.cfg.groups, &d, &self.stats);
                    last_sent = Instant::now();
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.stop.load(Ordering::Acquire) {
                break;
            }
        }
    }

    fn pack(&mut self, packer: &mut Packer, m: UpdateMsg) {
        if self.tap.overrun.swap(false, Ordering::AcqRel) {
            // Updates were dropped before they got a datagram: leave a hole in the numbering
            // that no retransmit can fill, so every relay resynchronises from a snapshot.
            if let Some(d) = packer.flush(unix_us()) {
                self.emit(packer, d);
            }
            packer.skip();
        }
        let name = match self.names.get(&m.topic) {
            Some(n) => n.clone(),
            None => match self.registry.get(m.topic) {
                Some(t) => {
                    self.names.insert(m.topic, t.name.clone());
                    t.name.clone()
                }
                None => return,
            },
        };
        if let Some(d) = packer.push(&name, &m.frame, unix_us()) {
            self.emit(packer, d);
        }
    }

    fn emit(&self, packer: &Packer, d: bytes::Bytes) {
        send_all(&self.out, &self.cfg.groups, &d, &self.stats);
        let now = self.now_ms();
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(packer.last_seq(), now, d);
        self.registry.set_feed_seq(packer.last_seq());
    }
}

struct Recovery {
    cfg: MulticastOut,
    out: Arc<UdpSocket>,
    naks: UdpSocket,
    registry: Arc<Registry>,
    ring: Arc<Mutex<RetransmitRing>>,
    stats: Arc<FeedStats>,
    stop: Arc<AtomicBool>,
    /// Datagram -> when it was last retransmitted: NAKs from other relays for the same loss
    /// that arrive within the linger time are swallowed (one retransmit serves the group).
    linger: HashMap<u64, u64>,
    /// Per source address: how many datagrams it may still have retransmitted.
    limits: HashMap<IpAddr, Bucket>,
    started: Instant,
}

/// NAKs for a datagram retransmitted this recently are answered by that retransmit.
const LINGER_MS: u64 = 20;
/// Datagrams one NAK may ask for.
const MAX_NAK_RANGE: u64 = 1024;
/// A NAK's send time may be this far from the origin's clock (replays of old NAKs are refused).
const NAK_WINDOW_US: u64 = 10_000_000;
/// Retransmitted datagrams one source may cause per second, and in one burst.
const SOURCE_RATE: f64 = 5_000.0;
const SOURCE_BURST: f64 = 10_000.0;
/// Sources tracked at once; beyond it, sources idle for a second are forgotten, and if none is,
/// new sources are refused until one is.
const MAX_SOURCES: usize = 1024;

/// A token bucket: `tokens` datagrams may be retransmitted now; it refills at `SOURCE_RATE`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn take(&mut self, n: f64, now_ms: u64) -> bool {
        let dt = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * SOURCE_RATE).min(SOURCE_BURST);
        self.at_ms = now_ms;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

impl Recovery {
    fn run(mut self) {
        let mut buf = vec![0u8; 2048];
        let key = self.cfg.nak_key.clone();
        while !self.stop.load(Ordering::Acquire) {
            let Ok((n, from)) = self.naks.recv_from(&mut buf) else {
                continue; // timeout (checks stop) or a transient error
            };
            match verify_nak(&buf[..n], key.as_deref(), unix_us(), NAK_WINDOW_US) {
                Ok(h) if h.channel == self.cfg.channel => self.answer(&h, from.ip()),
                Ok(_) | Err(NakError::Malformed(_)) | Err(NakError::NotNak(_)) => {
                    FeedStats::add(&self.stats.bad_datagrams, 1)
                }
                Err(NakError::BadTag) | Err(NakError::Stale(_)) => {
                    FeedStats::add(&self.stats.naks_refused, 1)
                }
            }
        }
    }

    /// True when `from` may have `n` more datagrams retransmitted now.
    fn allow(&mut self, from: IpAddr, n: u64, now_ms: u64) -> bool {
        if !self.limits.contains_key(&from) && self.limits.len() >= MAX_SOURCES {
            self.limits
                .retain(|_, b| now_ms.saturating_sub(b.at_ms) < 1000);
            if self.limits.len() >= MAX_SOURCES {
                return false;
            }
        }
        self.limits
            .entry(from)
            .or_insert(Bucket {
                tokens: SOURCE_BURST,
                at_ms: now_ms,
            })
            .take(n as f64, now_ms)
    }

    fn answer(&mut self, h: &FeedHeader, from: IpAddr) {
        FeedStats::add(&self.stats.naks, 1);
        if h.epoch != self.registry.epoch() {
            return; // the relay will see this epoch's datagrams and resynchronise
        }
        let now = self.started.elapsed().as_millis() as u64;
        let asked = (h.count as u64).clamp(1, MAX_NAK_RANGE);
        if !self.allow(from, asked, now) {
            FeedStats::add(&self.stats.naks_refused, 1);
            return;
        }
        self.linger.retain(|_, &mut at| now - at <= LINGER_MS);
        let end = h.seq.saturating_add(asked);
        let mut missing: Option<(u64, u64)> = None;
        let mut resend = Vec::new();
        {
            // Copies out under the lock, sends after it: the sender thread must not wait on
            // retransmissions.
            let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            for seq in h.seq..end {
                if self.linger.contains_key(&seq) {
                    continue;
                }
                match ring.get(seq) {
                    Some(d) => {
                        resend.push(d);
                        self.linger.insert(seq, now);
                    }
                    None => {
                        let m = missing.get_or_insert((seq, 0));
                        m.1 += 1;
                    }
                }
            }
        }
        for d in &resend {
            send_all(&self.out, &self.cfg.groups, d, &self.stats);
            FeedStats::add(&self.stats.retransmits, 1);
        }
        if let Some((first, count)) = missing {
            FeedStats::add(&self.stats.unavailable, 1);
            let d = FeedHeader {
                kind: Kind::Unavailable,
                flags: 0,
                channel: self.cfg.channel,
                epoch: h.epoch,
                seq: first,
                send_time_us: unix_us(),
                count: count.min(u16::MAX as u64) as u16,
            }
            .to_bytes();
            // To the group: every relay missing the same datagrams learns it at once.
            send_all(&self.out, &self.cfg.groups, &d, &self.stats);
        }
    }
}
