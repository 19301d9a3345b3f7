//! Drives a relay: receives the origin's multicast feed (or follows an upstream over TCP) and
//! feeds every update into the relay's own shards through the [`Injector`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use yorker_wire::feed::{messages, sign_nak, FeedHeader, FeedMessage, Kind};
use yorker_wire::ErrorCode;

use super::receiver::{Action, Receiver, ReceiverConfig, ReceiverStats, SnapshotReason};
use super::upstream::{self, Synced, UpstreamConfig, UpstreamError};
use super::{unix_us, FeedStats, Injector};

/// Where a relay's updates come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The origin's multicast groups (several: an A/B feed, arbitrated by sequence number).
    Multicast {
        /// Groups, all on the same port.
        groups: Vec<SocketAddrV4>,
        /// Local address of the interface to join them on.
        interface: Ipv4Addr,
        /// Gap handling (and how long a silent feed is tolerated).
        receiver: ReceiverConfig,
        /// Other origins on the same replicated log, HOST:PORT each (docs/SCALE-OUT.md): when
        /// the feed falls silent the relay follows them over TCP instead, as
        /// [`Source::Upstreams`] does, for good. Empty: it waits for the feed to come back.
        fallback: Vec<String>,
    },
    /// An upstream engine over TCP.
    Upstream,
    /// Several upstream engines over TCP, HOST:PORT each: origins reading one replicated log
    /// (docs/SCALE-OUT.md), which share epoch and numbers. The relay follows one; when its
    /// session fails or ends it moves to the next, and since the numbers are the same there,
    /// its clients see no RESET for topics that did not move meanwhile.
    Upstreams(Vec<String>),
}

/// A running follower thread.
#[derive(Debug)]
pub struct Follower {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Follower {
    /// Starts following. `upstream` is where snapshots (and, for [`Source::Upstream`],
    /// everything) come from; for [`Source::Multicast`] NAKs go to the same address over UDP.
    pub fn start(source: Source, upstream: UpstreamConfig, injector: Injector) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = match source {
            Source::Upstream => std::thread::Builder::new()
                .name("yorker-upstream".into())
                .spawn(move || {
                    let addrs = vec![upstream.addr.clone()];
                    follow_tcp(upstream, &addrs, injector, &st)
                })?,
            Source::Upstreams(addrs) => std::thread::Builder::new()
                .name("yorker-upstream".into())
                .spawn(move || follow_tcp(upstream, &addrs, injector, &st))?,
            Source::Multicast {
                groups,
                interface,
                receiver,
                fallback,
            } => {
                let sock = join_groups(&groups, interface)?;
                let nak_to = upstream::resolve(&upstream.addr).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("--recovery {}: {e}", upstream.addr),
                    )
                })?;
                let naks = UdpSocket::bind(SocketAddr::from((interface, 0)))?;
                let m = Multicast {
                    sock,
                    naks,
                    nak_to,
                    injector,
                    upstream,
                    receiver,
                    fallback,
                    stop: st,
                };
                std::thread::Builder::new()
                    .name("yorker-feed-in".into())
                    .spawn(move || m.run())?
            }
        };
        Ok(Follower {
            thread: Some(thread),
            stop,
        })
    }

    /// Stops following.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A socket on the groups' port that has joined every group on `interface`.
fn join_groups(groups: &[SocketAddrV4], interface: Ipv4Addr) -> io::Result<UdpSocket> {
    let port = groups
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no multicast group"))?
        .port();
    if groups
        .iter()
        .any(|g| g.port() != port || !g.ip().is_multicast())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--multicast-in groups must be multicast addresses on one port",
        ));
    }
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Several relays (and tests) on one host share the port.
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // One group: bind to it, so that other groups on the port are not delivered here.
    let bind_ip = if groups.len() == 1 {
        *groups[0].ip()
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    s.bind(&SocketAddr::from((bind_ip, port)).into())?;
    for g in groups {
        s.join_multicast_v4(g.ip(), &interface)?;
    }
    // A burst must fit while the thread is busy applying the previous one.
    let _ = s.set_recv_buffer_size(8 << 20);
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(FAST_POLL))?;
    Ok(s)
}

/// Receive timeout while a NAK or snapshot is pending: the timer resolution of gap recovery.
const FAST_POLL: Duration = Duration::from_millis(2);
/// Receive timeout otherwise (how fast a stop request is seen).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Reconnect delays after a failed session: from 100 ms, doubling up to 5 s (shared with the
/// ingest's readers).
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5_000))
}

/// Sleeps `d` in short steps; false when asked to stop meanwhile.
pub fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
    !stop.load(Ordering::Acquire)
}

/// Follows the upstream at `addrs[0]`; when a session fails or ends, the next address in turn
/// (the same one again when there is only one), after the backoff or the GOAWAY's hint. With
/// several addresses a failed upstream is left at once, without waiting.
fn follow_tcp(mut cfg: UpstreamConfig, addrs: &[String], injector: Injector, stop: &AtomicBool) {
    let mut attempt = 0u32;
    let mut first = true;
    let mut next = 0usize;
    // Off once an upstream refused a catch-up request (an engine from before them).
    let mut catch_up = true;
    while !stop.load(Ordering::Acquire) {
        cfg.addr = addrs[next % addrs.len()].clone();
        let r = upstream::session_with(&cfg, &injector, true, catch_up, stop, &mut |s| {
            tracing::info!(
                "synced with upstream {} (epoch {:#x}, {} topics)",
                cfg.addr,
                s.epoch,
                s.topics
            );
            if !first {
                FeedStats::add(&injector.stats().snapshot_fallbacks, 1);
            }
            first = false;
            attempt = 0;
            injector.stats().synced.store(true, Ordering::Release);
        });
        injector.stats().synced.store(false, Ordering::Release);
        next += 1;
        let wait = match r {
            Err(UpstreamError::Stopped) => return,
            Err(UpstreamError::GoAway { after_ms, .. }) => {
                attempt = 0;
                Duration::from_millis(after_ms as u64)
            }
            Err(UpstreamError::Refused { code, .. })
                if catch_up
                    && (code == ErrorCode::UnexpectedFrame as u16
                        || code == ErrorCode::TooManyEntries as u16) =>
            {
                tracing::warn!(
                    "upstream {} refused a catch-up request: resynchronising by snapshot only from now on (topics that moved during a switch reach clients as SNAPSHOT|RESET)",
                    cfg.addr
                );
                catch_up = false;
                next -= 1; // the same upstream again, at once
                Duration::ZERO
            }
            Err(e) => {
                attempt += 1;
                if addrs.len() > 1 {
                    tracing::warn!(
                        "upstream session ended: {e}; trying {}",
                        addrs[next % addrs.len()]
                    );
                    // Another upstream may be fine: no wait before the first try of each
                    // round, the backoff once every one of them has failed.
                    if attempt as usize % addrs.len() != 0 {
                        Duration::ZERO
                    } else {
                        backoff(attempt / addrs.len() as u32)
                    }
                } else {
                    tracing::warn!("upstream session ended: {e}");
                    backoff(attempt)
                }
            }
            Ok(_) => backoff(0),
        };
        if !sleep_unless_stopped(wait, stop) {
            return;
        }
    }
}

struct Multicast {
    sock: UdpSocket,
    naks: UdpSocket,
    nak_to: SocketAddr,
    injector: Injector,
    upstream: UpstreamConfig,
    receiver: ReceiverConfig,
    fallback: Vec<String>,
    stop: Arc<AtomicBool>,
}

type SnapshotResult = Result<Synced, String>;

impl Multicast {
    fn run(self) {
        let started = Instant::now();
        let now_ms = || started.elapsed().as_millis() as u64;
        let stats = self.injector.stats().clone();
        let (mut rx, first) = Receiver::new(self.receiver.clone(), unix_us());
        let mut actions = vec![first];
        let (done_tx, done_rx) = mpsc::channel::<SnapshotResult>();
        let mut snapshot_running = false;
        // After a failed snapshot the next one waits (the origin may be restarting).
        let mut snapshot_due: Option<Instant> = None;
        let mut failures = 0u32;
        let mut buf = vec![0u8; 65_536];
        // What of the receiver's counters was already added to the shared ones.
        let mut reported = ReceiverStats::default();
        let mut timeout = FAST_POLL;
        // The feed fell silent (the origin is gone or cannot be heard): not ready meanwhile.
        let mut silent = false;
        while !self.stop.load(Ordering::Acquire) {
            if rx.is_silent(now_ms()) != silent {
                silent = !silent;
                if silent {
                    FeedStats::add(&stats.silences, 1);
                    stats.synced.store(false, Ordering::Release);
                    if !self.fallback.is_empty() {
                        let mut addrs = self.fallback.clone();
                        addrs.push(self.upstream.addr.clone());
                        tracing::error!(
                            "the multicast feed of {} is silent (nothing for {} ms): following {} over TCP from now on (restart the relay to return to the feed)",
                            self.upstream.addr,
                            self.receiver.silence_ms,
                            addrs[0]
                        );
                        return follow_tcp(
                            self.upstream.clone(),
                            &addrs,
                            self.injector,
                            &self.stop,
                        );
                    }
                    tracing::error!(
                        "the multicast feed of {} is silent (nothing for {} ms): not ready until it is heard again; clients keep their last values",
                        self.upstream.addr,
                        self.receiver.silence_ms
                    );
                } else {
                    tracing::info!(
                        "the multicast feed of {} is heard again",
                        self.upstream.addr
                    );
                    // Ready again if a snapshot ever synced this relay (the receiver follows an
                    // epoch); a gap meanwhile is the receiver's to mend.
                    stats.synced.store(rx.epoch().is_some(), Ordering::Release);
                }
            }
            // Wake often only while something is timed (a NAK, a snapshot); idle, the
            // heartbeats wake us anyway.
            let want = if rx.has_timer() || snapshot_running || snapshot_due.is_some() {
                FAST_POLL
            } else {
                IDLE_POLL
            };
            if want != timeout && self.sock.set_read_timeout(Some(want)).is_ok() {
                timeout = want;
            }
            for a in actions.drain(..) {
                match a {
                    Action::Deliver(msgs) => self.deliver(msgs),
                    Action::Nak { epoch, seq, count } => {
                        let h = FeedHeader {
                            kind: Kind::Nak,
                            flags: 0,
                            channel: self.receiver.channel,
                            epoch,
                            seq,
                            send_time_us: unix_us(),
                            count,
                        };
                        // Signed with the relay key the origin expects (--upstream-key).
                        let d = match &self.upstream.key {
                            Some(k) => sign_nak(&h, k.as_bytes()),
                            None => h.to_bytes(),
                        };
                        let _ = self.naks.send_to(&d, self.nak_to);
                    }
                    Action::Snapshot(reason) => {
                        if reason != SnapshotReason::Start {
                            FeedStats::add(&stats.snapshot_fallbacks, 1);
                            tracing::info!("resynchronising from a snapshot ({reason:?})");
                        }
                        snapshot_due = Some(snapshot_due.unwrap_or_else(Instant::now));
                    }
                }
            }
            if !snapshot_running && snapshot_due.is_some_and(|t| Instant::now() >= t) {
                snapshot_due = None;
                snapshot_running = true;
                let cfg = self.upstream.clone();
                let inj = self.injector.clone();
                let tx = done_tx.clone();
                let stop = self.stop.clone();
                let spawned = std::thread::Builder::new()
                    .name("yorker-snapshot".into())
                    .spawn(move || {
                        let r = upstream::session(&cfg, &inj, false, &stop, &mut |_| {})
                            .map_err(|e| e.to_string());
                        let _ = tx.send(r);
                    });
                if let Err(e) = spawned {
                    let _ = done_tx.send(Err(format!("cannot start the snapshot thread: {e}")));
                }
            }
            if let Ok(r) = done_rx.try_recv() {
                snapshot_running = false;
                match r {
                    Ok(s) => {
                        failures = 0;
                        if rx.epoch() != Some(s.epoch) {
                            tracing::info!(
                                "synced with origin {} (epoch {:#x}, {} topics, feed at {}); following the feed",
                                self.upstream.addr, s.epoch, s.topics, s.feed_seq
                            );
                        }
                        rx.snapshot_done(s.epoch, s.feed_seq, now_ms(), &mut actions);
                        self.injector
                            .stats()
                            .synced
                            .store(!silent, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::warn!("snapshot failed: {e}");
                        failures += 1;
                        rx.snapshot_failed(&mut actions);
                        snapshot_due = Some(Instant::now() + backoff(failures));
                        actions.retain(|a| !matches!(a, Action::Snapshot(_)));
                    }
                }
                continue;
            }
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    FeedStats::add(&stats.datagrams_in, 1);
                    let d = Bytes::copy_from_slice(&buf[..n]);
                    // Parsed once, here; a DATA datagram whose messages do not parse is
                    // treated as lost (and NAKed), never half applied.
                    let parsed = FeedHeader::decode(&d).and_then(|h| match h.kind {
                        Kind::Data => messages(&d, &h).map(|m| (h, m)),
                        _ => Ok((h, Vec::new())),
                    });
                    match parsed {
                        Ok((h, m)) => rx.on_datagram(&h, m, now_ms(), &mut actions),
                        Err(_) => FeedStats::add(&stats.bad_datagrams, 1),
                    }
                }
                Err(_) => rx.on_tick(now_ms(), &mut actions),
            }
            let r = rx.stats();
            if r != reported {
                FeedStats::add(&stats.gaps, r.gaps - reported.gaps);
                FeedStats::add(&stats.naks, r.naks - reported.naks);
                FeedStats::add(&stats.retransmits, r.recovered - reported.recovered);
                reported = r;
            }
        }
    }

    /// Applies the messages of one DATA datagram, in order.
    fn deliver(&self, msgs: Vec<FeedMessage>) {
        let now = unix_us();
        for m in msgs {
            if let Ok(t) = self.injector.topic(&m.topic) {
                self.injector.apply(&t, &m.update, now);
            }
        }
    }
}
