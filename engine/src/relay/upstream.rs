//! A relay-role session to an upstream engine over TCP (protocol v1, docs/PROTOCOL.md §2.5):
//! every topic's snapshot, SYNCED, then every update. Used for the multicast relay's snapshot
//! fallback (stop at SYNCED) and for `yorker relay --upstream` (follow until it ends).
//!
//! Blocking I/O on its own thread: a relay has one upstream, not a hundred thousand.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use yorker_wire::{
    frame::HANDSHAKE_MAX_FRAME, Decoder, ErrorCode, Frame, Hello, Role, PROTOCOL_VERSION,
};

use super::{unix_us, Injector};
use crate::proto::registry::Topic;

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

/// One session: connect, HELLO as a relay, apply the snapshot; `on_synced` is called at SYNCED.
/// With `follow` false it returns right after; otherwise it applies live updates until the
/// connection ends or `stop` is set.
pub fn session(
    cfg: &UpstreamConfig,
    injector: &Injector,
    follow: bool,
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
    // Short reads let the loop see `stop` and send its PINGs.
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io_err)?;
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        role: Role::Relay,
        client_name: "yorker-relay".into(),
        token: cfg.key.clone().unwrap_or_default(),
    })
    .to_bytes()
    .map_err(|e| UpstreamError::Protocol {
        addr: cfg.addr.clone(),
        why: e.to_string(),
    })?;
    s.write_all(&hello).map_err(io_err)?;

    let mut dec = Decoder::new(HANDSHAKE_MAX_FRAME);
    // None: over this relay's topic cap; its updates are dropped (and counted).
    let mut topics: HashMap<u32, Option<Arc<Topic>>> = HashMap::new();
    let mut ping_every = Duration::from_secs(5);
    let mut last_ping = Instant::now();
    // No WELCOME within the handshake time, or three heartbeat intervals of silence after it:
    // the upstream is gone (or the connection landed in a dead listener's queue), reconnect.
    let mut silence_limit = cfg.connect_timeout;
    let mut last_rx = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let proto = |why: String| UpstreamError::Protocol {
        addr: cfg.addr.clone(),
        why,
    };
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(UpstreamError::Stopped);
        }
        if last_rx.elapsed() > silence_limit {
            return Err(io_err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing received for {silence_limit:?}"),
            )));
        }
        if last_ping.elapsed() >= ping_every {
            let ping = Frame::Ping { nonce: unix_us() }
                .to_bytes()
                .expect("ping encodes");
            s.write_all(&ping).map_err(io_err)?;
            last_ping = Instant::now();
        }
        match s.read(&mut buf) {
            Ok(0) => {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                )))
            }
            Ok(n) => {
                last_rx = Instant::now();
                dec.feed(&buf[..n])
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(proto(e.to_string())),
            };
            match frame {
                Frame::Welcome(w) => {
                    dec.set_max_frame(w.limits.max_frame);
                    let hb = Duration::from_millis((w.heartbeat_ms as u64).max(100));
                    ping_every = hb / 2;
                    silence_limit = hb * 3;
                    // Numbers from now on are the upstream's: adopt its epoch first, so that a
                    // restart shows as SNAPSHOT|RESET on every topic.
                    injector.registry().adopt_epoch(w.epoch);
                }
                Frame::Topic { topic_id, name } => {
                    topics.insert(topic_id, injector.topic(&name).ok());
                }
                Frame::Update(u) => match topics.get(&u.topic_id) {
                    Some(Some(t)) => {
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
                Frame::Synced {
                    topics: n,
                    epoch,
                    feed_seq,
                } => {
                    let s = Synced {
                        epoch,
                        feed_seq,
                        topics: n,
                    };
                    on_synced(s);
                    if !follow {
                        return Ok(s);
                    }
                }
                Frame::Heartbeat | Frame::Pong { .. } => {}
                Frame::Error(e) => {
                    return Err(UpstreamError::Refused {
                        addr: cfg.addr.clone(),
                        code: e.code,
                        name: ErrorCode::from_u16(e.code)
                            .map(|c| c.name())
                            .unwrap_or("unknown"),
                        message: e.message,
                    })
                }
                Frame::GoAway(g) => {
                    return Err(UpstreamError::GoAway {
                        addr: cfg.addr.clone(),
                        after_ms: g.reconnect_after_ms,
                    })
                }
                other => {
                    return Err(proto(format!("unexpected {}", other.name())));
                }
            }
        }
    }
}
