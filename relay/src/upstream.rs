//! A relay-role session to an upstream engine over TCP (protocol v1, docs/PROTOCOL.md §2.5):
//! every topic's snapshot, SYNCED, then every update. Used for the multicast relay's snapshot
//! fallback (stop at SYNCED) and for `yorker relay --upstream` (follow until it ends).
//!
//! **Catching up after a failover.** When the upstream has the epoch the relay already holds
//! (another origin on the same log, or the same one back), a topic whose snapshot jumps more
//! than one past what the relay holds would reach the relay's clients as SNAPSHOT|RESET. The
//! session holds such snapshots back and, after SYNCED, asks for the updates in between
//! (SUBSCRIBE entries with RESUME, §2.5): the upstream answers `resumed` and replays them from
//! its history, so clients see every update in order. Only what history no longer holds is
//! answered `reset`, with the snapshot flagged SNAPSHOT|RESET.
//!
//! Blocking I/O on its own thread: a relay has one upstream, not a hundred thousand.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use yorker_wire::{
    update_flags, ClientConfig, ClientEvent, ClientSession, Disconnect, ErrorCode, Frame,
    ResumeFrom, Role, SubResult, Subscribe, SubscribeEntry, Update, PROTOCOL_VERSION,
};

use super::{unix_us, FeedStats, Injector};
use yorker_engine::proto::registry::Topic;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No address, refused, reset, timed out.
    #[error("upstream {addr}: {source}")]
    Io {
        /// The upstream.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// The upstream refused us or failed (ERROR frame).
    #[error("upstream {addr} sent ERROR {code} ({name}): {message}")]
    Refused {
        /// The upstream.
        addr: String,
        /// Wire error code.
        code: u16,
        /// Its name.
        name: &'static str,
        /// Its message.
        message: String,
    },
    /// The upstream is going away; reconnect after this many ms.
    #[error("upstream {addr} is going away (reconnect after {after_ms} ms)")]
    GoAway {
        /// The upstream.
        addr: String,
        /// Its reconnect hint.
        after_ms: u32,
    },
    /// It sent something a relay session cannot accept.
    #[error("upstream {addr} broke the protocol: {why}")]
    Protocol {
        /// The upstream.
        addr: String,
        /// What happened.
        why: String,
    },
    /// Asked to stop.
    #[error("stopped")]
    Stopped,
}

/// What the initial snapshot established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// The upstream's epoch (adopted by the relay's registry).
    pub epoch: u64,
    /// Its feed position when it took the snapshot.
    pub feed_seq: u64,
    /// Topics in the snapshot.
    pub topics: u32,
}

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// HOST:PORT of the upstream engine.
    pub addr: String,
    /// Relay key the upstream expects, if any.
    pub key: Option<String>,
    /// Time to connect, and then again for WELCOME to arrive.
    pub connect_timeout: Duration,
}

/// The first address `addr` (HOST:PORT or IP:PORT) resolves to.
pub(crate) fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
}

/// Topics per catch-up SUBSCRIBE at most (well under any server's `max_subscriptions`).
const CATCH_UP_ENTRIES: usize = 256;
/// Bytes of topic names per catch-up SUBSCRIBE at most, so that the frame stays far below any
/// server's `--max-frame` (topic names are up to 255 bytes).
const CATCH_UP_NAME_BYTES: usize = 8 * 1024;

/// Splits catch-up entries, given their topic names' lengths, into SUBSCRIBE frames of at most
/// [`CATCH_UP_ENTRIES`] entries and [`CATCH_UP_NAME_BYTES`] bytes of names (one entry at least
/// per frame).
fn catch_up_chunks(name_lens: impl Iterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut from, mut bytes, mut n) = (0, 0, 0);
    for (i, len) in name_lens.enumerate() {
        if i > from && (i - from == CATCH_UP_ENTRIES || bytes + len > CATCH_UP_NAME_BYTES) {
            out.push(from..i);
            (from, bytes) = (i, 0);
        }
        bytes += len;
        n = i + 1;
    }
    if n > from {
        out.push(from..n);
    }
    out
}

/// One session: connect, HELLO as a relay, apply the snapshot; `on_synced` is called at SYNCED.
/// With `follow` false it returns right after; otherwise it applies live updates until the
/// connection ends or `stop` is set, and catches up on topics a failover skipped (see the
/// module's docs). The protocol is the one client session of `yorker-wire`
/// ([`ClientSession`]); this function only moves bytes and applies what it reports.
pub fn session(
    cfg: &UpstreamConfig,
    injector: &Injector,
    follow: bool,
    stop: &AtomicBool,
    on_synced: &mut dyn FnMut(Synced),
) -> Result<Synced, UpstreamError> {
    session_with(cfg, injector, follow, follow, stop, on_synced)
}

/// [`session`], with catching up chosen separately (off for an upstream that refused it).
pub(crate) fn session_with(
    cfg: &UpstreamConfig,
    injector: &Injector,
    follow: bool,
    catch_up: bool,
    stop: &AtomicBool,
    on_synced: &mut dyn FnMut(Synced),
) -> Result<Synced, UpstreamError> {
    let io_err = |source| UpstreamError::Io {
        addr: cfg.addr.clone(),
        source,
    };
    let sa = resolve(&cfg.addr).map_err(io_err)?;
    let mut s = TcpStream::connect_timeout(&sa, cfg.connect_timeout).map_err(io_err)?;
    s.set_nodelay(true).map_err(io_err)?;
    // Short reads let the loop see `stop` and the session's timers.
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io_err)?;
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let mut cs = ClientSession::new(ClientConfig {
        name: "yorker-relay".into(),
        role: Role::Relay,
        token: cfg.key.clone().unwrap_or_default(),
        version: PROTOCOL_VERSION,
        // No WELCOME within this time (a dead process's queue, a wrong service): give up.
        handshake_timeout_ms: cfg.connect_timeout.as_millis() as u64,
        ..ClientConfig::default()
    });
    cs.poll_connect(now());
    cs.on_connected(now());
    // None: over this relay's topic cap; its updates are dropped (and counted).
    let mut topics: HashMap<u32, Option<Arc<Topic>>> = HashMap::new();
    // The upstream numbers in the epoch this relay already holds: snapshots that skip updates
    // can be caught up on.
    let mut same_epoch = false;
    let mut synced = false;
    // Topic id -> its snapshot, held back until the catch-up is answered; updates of these
    // topics until then are covered by the replay and dropped.
    let mut held: HashMap<u32, Update> = HashMap::new();
    // Catch-up request id -> its topic ids, in entry order.
    let mut asked: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    let proto = |why: String| UpstreamError::Protocol {
        addr: cfg.addr.clone(),
        why,
    };
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(UpstreamError::Stopped);
        }
        let out = cs.poll_transmit(now());
        if !out.is_empty() {
            s.write_all(&out).map_err(io_err)?;
        }
        if cs.poll_timeout().is_some_and(|t| t <= now()) {
            cs.handle_timeout(now());
        }
        match s.read(&mut buf) {
            Ok(0) => cs.on_disconnected(now()),
            Ok(n) => cs.handle_bytes(&buf[..n], now()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io_err(e)),
        }
        while let Some(ev) = cs.poll_event() {
            match ev {
                ClientEvent::Connected { epoch, .. } => {
                    same_epoch = catch_up && injector.registry().epoch() == epoch;
                    // Numbers from now on are the upstream's: adopt its epoch first, so that a
                    // restart shows as SNAPSHOT|RESET on every topic.
                    injector.registry().adopt_epoch(epoch);
                }
                ClientEvent::Topic { id, name } => {
                    topics.insert(id, injector.topic(&name).ok());
                }
                ClientEvent::Unsubscribed(u) => match topics.get(&u.topic_id) {
                    Some(Some(_)) if held.contains_key(&u.topic_id) => {}
                    Some(Some(t)) => {
                        let have = injector.registry().seq(t);
                        if same_epoch
                            && !synced
                            && u.flags & update_flags::SNAPSHOT != 0
                            && have > 0
                            && u.seq > have + 1
                        {
                            held.insert(u.topic_id, u);
                            continue;
                        }
                        injector.apply(t, &u, unix_us());
                    }
                    Some(None) => {}
                    None => {
                        return Err(proto(format!(
                            "UPDATE for topic id {} before its TOPIC",
                            u.topic_id
                        )))
                    }
                },
                ClientEvent::Answered(a) => {
                    let Some(ids) = asked.remove(&a.request_id) else {
                        continue;
                    };
                    for (id, e) in ids.into_iter().zip(a.entries) {
                        let Some(snapshot) = held.remove(&id) else {
                            continue;
                        };
                        if e.result == SubResult::Resumed {
                            FeedStats::add(&injector.stats().catch_ups, 1);
                        }
                        // `resumed`: the replay follows; `reset`: the snapshot follows, flagged
                        // SNAPSHOT|RESET. Anything else: apply what was held (a RESET).
                        if !matches!(e.result, SubResult::Resumed | SubResult::Reset) {
                            if let Some(Some(t)) = topics.get(&id) {
                                injector.apply(t, &snapshot, unix_us());
                            }
                        }
                    }
                }
                ClientEvent::Synced {
                    topics: n,
                    epoch,
                    feed_seq,
                } => {
                    synced = true;
                    let s = Synced {
                        epoch,
                        feed_seq,
                        topics: n,
                    };
                    if !follow {
                        // No catch-up on a session that ends here: apply what was held.
                        for (id, u) in held.drain() {
                            if let Some(Some(t)) = topics.get(&id) {
                                injector.apply(t, &u, unix_us());
                            }
                        }
                    }
                    on_synced(s);
                    if !follow {
                        return Ok(s);
                    }
                    if !held.is_empty() {
                        let mut ids: Vec<u32> = held.keys().copied().collect();
                        ids.sort_unstable();
                        tracing::info!(
                            "catching up on {} topic(s) that moved during the switch to {}",
                            ids.len(),
                            cfg.addr
                        );
                        // Held topics all have a topic here (see where they are held).
                        let wanted: Vec<(u32, &Arc<Topic>)> = ids
                            .iter()
                            .filter_map(|id| Some((*id, topics.get(id)?.as_ref()?)))
                            .collect();
                        let bounds = catch_up_chunks(wanted.iter().map(|(_, t)| t.name.len()));
                        for (k, range) in bounds.into_iter().enumerate() {
                            let chunk = &wanted[range];
                            let request_id = 0x4000_0000 + k as u32;
                            let entries = chunk
                                .iter()
                                .map(|(_, t)| SubscribeEntry {
                                    topic: t.name.to_string(),
                                    resume: Some(ResumeFrom {
                                        epoch,
                                        seq: injector.registry().seq(t),
                                    }),
                                    conflate: false,
                                    presence: false,
                                })
                                .collect();
                            cs.send(&Frame::Subscribe(Subscribe {
                                request_id,
                                entries,
                            }))
                            .map_err(|e| proto(format!("catch-up request: {e}")))?;
                            asked.insert(request_id, chunk.iter().map(|(id, _)| *id).collect());
                        }
                    }
                }
                ClientEvent::Disconnected { reason, .. } => {
                    return Err(match reason {
                        Disconnect::GoAway { after_ms, .. } => UpstreamError::GoAway {
                            addr: cfg.addr.clone(),
                            after_ms,
                        },
                        Disconnect::Error { code, message } => UpstreamError::Refused {
                            addr: cfg.addr.clone(),
                            code,
                            name: ErrorCode::from_u16(code)
                                .map(|c| c.name())
                                .unwrap_or("unknown"),
                            message,
                        },
                        Disconnect::Protocol(why) => proto(why),
                        Disconnect::HandshakeTimeout | Disconnect::ServerSilent => {
                            io_err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("nothing received in time ({reason:?})"),
                            ))
                        }
                        _ => io_err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed",
                        )),
                    });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_requests_are_split_by_entries_and_bytes() {
        assert!(catch_up_chunks(std::iter::empty()).is_empty());
        assert_eq!(catch_up_chunks([10; 3].into_iter()), vec![0..3]);
        // 600 short names: 256 per frame.
        assert_eq!(
            catch_up_chunks([8; 600].into_iter()),
            vec![0..256, 256..512, 512..600]
        );
        // Long names: 8 KiB of names per frame (32 of 255 bytes fit, the 33rd does not).
        let r = catch_up_chunks([255; 70].into_iter());
        assert_eq!(r, vec![0..32, 32..64, 64..70]);
    }
}
