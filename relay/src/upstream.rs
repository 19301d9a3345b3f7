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
    ClientConfig, ClientEvent, ClientSession, Disconnect, ErrorCode, Role, PROTOCOL_VERSION,
};

use super::{unix_us, Injector};
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

/// One session: connect, HELLO as a relay, apply the snapshot; `on_synced` is called at SYNCED.
/// With `follow` false it returns right after; otherwise it applies live updates until the
/// connection ends or `stop` is set. The protocol is the one client session of `yorker-wire`
/// ([`ClientSession`]); this function only moves bytes and applies what it reports.
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
                    // Numbers from now on are the upstream's: adopt its epoch first, so that a
                    // restart shows as SNAPSHOT|RESET on every topic.
                    injector.registry().adopt_epoch(epoch);
                }
                ClientEvent::Topic { id, name } => {
                    topics.insert(id, injector.topic(&name).ok());
                }
                ClientEvent::Unsubscribed(u) => match topics.get(&u.topic_id) {
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
                ClientEvent::Synced {
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
