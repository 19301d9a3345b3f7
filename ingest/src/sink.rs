//! The other direction: client messages into the log. `yorker sink` is a backend (role 4) of an
//! engine that appends every CLIENT_MESSAGE it receives to the log, keyed by the sender's user:
//!
//! * `redis-stream://HOST:PORT/KEY[?maxlen=N]`: `XADD KEY [MAXLEN ~ N] * user U session S
//!   request R key K payload P`;
//! * `nats-jetstream://[CREDENTIALS@]HOST:PORT/SUBJECT`: a JetStream publish to
//!   `SUBJECT.<user>` (the user escaped into one subject token, [`subject_token`]) with headers
//!   `Yorker-User`, `Yorker-Session`, `Yorker-Request`, `Yorker-Key` and the payload as the
//!   body, acknowledged by the stream that collects `SUBJECT.>` before the next is sent.
//!
//! The acknowledgement promise is the backend path's (docs/PROTOCOL.md §2.7): the engine
//! acknowledges a MESSAGE `ok` once it has written it to a backend, here the sink. The sink
//! appends messages in the order it receives them, one at a time, each stored by the log before
//! the next; while the log is away it stops reading from the engine, whose queue for the sink
//! then fills and refuses new messages with `server_busy`, so nothing piles up without bound and
//! senders learn it. A message whose store was not confirmed is sent again: at least once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use yorker_wire::{ClientMessage, Decoder, Frame, Hello, Role, DEFAULT_MAX_FRAME};

use yorker_relay::follower::{backoff, sleep_unless_stopped};

use crate::NatsAuth;

/// Settings of `yorker sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// The engine, HOST:PORT.
    pub engine: String,
    /// The engine's backend key (`--backend-key`), or a token with role `backend`.
    pub backend_key: String,
    /// Where messages go.
    pub to: Destination,
}

/// Where `yorker sink` appends client messages (`--to URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// A Redis stream.
    RedisStream {
        /// The Redis server, HOST:PORT.
        addr: String,
        /// The stream key messages are appended to.
        stream: String,
        /// Trim the stream to about this many entries (`MAXLEN ~`); 0: never trimmed.
        maxlen: u64,
    },
    /// JetStream: `SUBJECT.<user>`, stored by whichever stream collects it.
    JetStream {
        /// The NATS server, HOST:PORT.
        addr: String,
        /// Credentials, if the server wants them.
        auth: NatsAuth,
        /// The subject's prefix.
        subject: String,
    },
}

impl std::str::FromStr for Destination {
    type Err = crate::BadIngestUrl;

    /// `redis-stream://HOST:PORT/KEY[?maxlen=N]` or
    /// `nats-jetstream://[USER:PASSWORD@|TOKEN@]HOST:PORT/SUBJECT`.
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| crate::BadIngestUrl::new(url, why);
        if url.starts_with("nats-jetstream://") {
            let (auth, addr, subject, query) = crate::split_jetstream_url(url)?;
            let token_ok = |t: &str| {
                !t.is_empty()
                    && !t
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
            };
            if subject.len() > 200 || !subject.split('.').all(token_ok) {
                return Err(bad(
                    "name one subject prefix without wildcards: nats-jetstream://HOST:PORT/SUBJECT (messages go to SUBJECT.<user>)",
                ));
            }
            if !query.is_empty() {
                return Err(bad(&format!("unknown parameter {query:?}")));
            }
            return Ok(Destination::JetStream {
                addr: addr.into(),
                auth,
                subject: subject.into(),
            });
        }
        let (addr, key, query) = crate::split_redis_stream_url(url)?;
        if key.is_empty() || key.contains(',') {
            return Err(bad("name one stream: redis-stream://HOST:PORT/KEY"));
        }
        let mut maxlen = 0;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("maxlen", v)) => {
                    maxlen = v
                        .parse()
                        .map_err(|_| bad("maxlen must be a number (0: never trimmed)"))?
                }
                _ => return Err(bad(&format!("unknown parameter {kv:?}"))),
            }
        }
        Ok(Destination::RedisStream {
            addr: addr.into(),
            stream: key.into(),
            maxlen,
        })
    }
}

impl std::fmt::Display for Destination {
    /// The destination without credentials, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::RedisStream { addr, stream, .. } => {
                write!(f, "redis-stream://{addr}/{stream}")
            }
            Destination::JetStream { addr, subject, .. } => {
                write!(f, "nats-jetstream://{addr}/{subject}.<user>")
            }
        }
    }
}

/// A user as one NATS subject token: ASCII letters, digits, `-` and `_` as they are, every
/// other byte as `%XX`; the anonymous user (empty) as `_`. Distinct users stay distinct.
pub fn subject_token(user: &str) -> String {
    if user.is_empty() {
        return "_".into();
    }
    escape(user, |b| {
        b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
    })
}

/// `s` with every byte that `keep` refuses (and `%`) written `%XX`.
fn escape(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if keep(b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a sink session ended.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The connection to the engine broke (retried).
    #[error("engine {addr}: {why}")]
    Engine {
        /// The engine.
        addr: String,
        /// What happened.
        why: String,
    },
    /// The engine refused the sink's HELLO (a wrong key): retrying cannot help.
    #[error("engine {addr} refused the sink: ERROR {code} {message}")]
    Refused {
        /// The engine.
        addr: String,
        /// The error code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// The log cannot be used at all (its client would not start).
    #[error("{0}")]
    Log(String),
    /// Asked to stop.
    #[error("stopped")]
    Stopped,
}

/// Runs the sink until `stop`: connects to the engine as a backend, appends every client message
/// to the stream, reconnects (with backoff) when either side goes away. A refused HELLO (a wrong
/// key) ends it with the reason: retrying cannot help.
pub fn run(cfg: &SinkConfig, stop: &AtomicBool) -> Result<(), SinkError> {
    let mut attempt = 0u32;
    let mut log = Log::new(&cfg.to)?;
    while !stop.load(Ordering::Acquire) {
        match session(cfg, &mut log, stop, &mut attempt) {
            Err(SinkError::Stopped) => return Ok(()),
            Err(e @ SinkError::Refused { .. }) => return Err(e),
            Err(e) => {
                attempt += 1;
                if attempt <= 3 || attempt.is_power_of_two() {
                    tracing::warn!("sink: {e} (retrying)");
                }
            }
            Ok(()) => {}
        }
        if !sleep_unless_stopped(backoff(attempt), stop) {
            return Ok(());
        }
    }
    Ok(())
}

fn engine_err(cfg: &SinkConfig, why: impl std::fmt::Display) -> SinkError {
    SinkError::Engine {
        addr: cfg.engine.clone(),
        why: why.to_string(),
    }
}

fn session(
    cfg: &SinkConfig,
    log: &mut Log,
    stop: &AtomicBool,
    attempt: &mut u32,
) -> Result<(), SinkError> {
    let mut s = TcpStream::connect(&cfg.engine).map_err(|e| engine_err(cfg, e))?;
    s.set_nodelay(true).map_err(|e| engine_err(cfg, e))?;
    let hello = Frame::Hello(Hello {
        version: yorker_wire::PROTOCOL_VERSION,
        role: Role::Backend,
        client_name: "yorker sink".into(),
        token: cfg.backend_key.clone(),
    });
    s.write_all(&hello.to_bytes().map_err(|e| engine_err(cfg, e))?)
        .map_err(|e| engine_err(cfg, e))?;
    let mut dec = Decoder::new(DEFAULT_MAX_FRAME);
    let mut buf = vec![0u8; 64 * 1024];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| engine_err(cfg, e))?;
    let heartbeat = {
        match next_frame(cfg, &mut s, &mut dec, &mut buf)? {
            Some(Frame::Welcome(w)) => Duration::from_millis(u64::from(w.heartbeat_ms)),
            Some(Frame::Error(e)) => {
                return Err(SinkError::Refused {
                    addr: cfg.engine.clone(),
                    code: e.code,
                    message: e.message,
                })
            }
            Some(other) => return Err(engine_err(cfg, format!("answered HELLO with {other:?}"))),
            None => return Err(engine_err(cfg, "no WELCOME")),
        }
    };
    *attempt = 0;
    tracing::info!("sink: backend of {} -> {}", cfg.engine, cfg.to);
    let ping_every = (heartbeat / 3).max(Duration::from_millis(50));
    s.set_read_timeout(Some(ping_every))
        .map_err(|e| engine_err(cfg, e))?;
    let mut pinged = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(SinkError::Stopped);
        }
        if pinged.elapsed() >= ping_every {
            let ping = Frame::Ping { nonce: 0 }.to_bytes().expect("PING encodes");
            s.write_all(&ping).map_err(|e| engine_err(cfg, e))?;
            pinged = Instant::now();
        }
        match next_frame(cfg, &mut s, &mut dec, &mut buf)? {
            Some(Frame::ClientMessage(m)) => append(cfg, log, &m, stop)?,
            Some(Frame::GoAway(g)) => {
                return Err(engine_err(
                    cfg,
                    format!("going away (reconnect after {} ms)", g.reconnect_after_ms),
                ))
            }
            Some(Frame::Error(e)) => {
                return Err(engine_err(cfg, format!("ERROR {} {}", e.code, e.message)))
            }
            _ => {}
        }
    }
}

/// The next frame, or None when the read timed out.
fn next_frame(
    cfg: &SinkConfig,
    s: &mut TcpStream,
    dec: &mut Decoder,
    buf: &mut [u8],
) -> Result<Option<Frame>, SinkError> {
    loop {
        if let Some(f) = dec.next_frame().map_err(|e| engine_err(cfg, e))? {
            return Ok(Some(f));
        }
        match s.read(buf) {
            Ok(0) => return Err(engine_err(cfg, "closed the connection")),
            Ok(n) => dec.feed(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Ok(None)
            }
            Err(e) => return Err(engine_err(cfg, e)),
        }
    }
}

/// The log's side of the sink: a connection made when first needed and dropped after an error.
// One per sink process: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Log {
    Redis {
        addr: String,
        stream: String,
        maxlen: u64,
        con: Option<redis::Connection>,
    },
    JetStream {
        addr: String,
        auth: NatsAuth,
        subject: String,
        /// The client's runtime, current-thread, on the sink's own thread.
        rt: tokio::runtime::Runtime,
        js: Option<async_nats::jetstream::Context>,
    },
}

impl Log {
    fn new(to: &Destination) -> Result<Log, SinkError> {
        Ok(match to.clone() {
            Destination::RedisStream {
                addr,
                stream,
                maxlen,
            } => Log::Redis {
                addr,
                stream,
                maxlen,
                con: None,
            },
            Destination::JetStream {
                addr,
                auth,
                subject,
            } => Log::JetStream {
                addr,
                auth,
                subject,
                rt: crate::nats_runtime().map_err(|e| {
                    SinkError::Log(format!("cannot start the NATS client's runtime: {e}"))
                })?,
                js: None,
            },
        })
    }

    /// Appends one message; an error drops the connection (the next call makes another).
    fn append(&mut self, m: &ClientMessage) -> Result<(), String> {
        match self {
            Log::Redis {
                addr,
                stream,
                maxlen,
                con,
            } => xadd(con, addr, stream, *maxlen, m).map_err(|e| {
                *con = None;
                e.to_string()
            }),
            Log::JetStream {
                addr,
                auth,
                subject,
                rt,
                js,
            } => rt
                .block_on(publish(js, addr, auth, subject, m))
                .inspect_err(|_| {
                    *js = None;
                }),
        }
    }
}

fn xadd(
    con: &mut Option<redis::Connection>,
    addr: &str,
    stream: &str,
    maxlen: u64,
    m: &ClientMessage,
) -> redis::RedisResult<()> {
    let con = match con {
        Some(c) => c,
        None => {
            let c = redis::Client::open(format!("redis://{addr}/"))?;
            let new = c.get_connection_with_timeout(Duration::from_secs(2))?;
            new.set_read_timeout(Some(Duration::from_secs(5)))?;
            con.insert(new)
        }
    };
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream);
    if maxlen > 0 {
        cmd.arg("MAXLEN").arg("~").arg(maxlen);
    }
    cmd.arg("*")
        .arg("user")
        .arg(&m.user)
        .arg("session")
        .arg(m.session_id)
        .arg("request")
        .arg(m.request_id)
        .arg("key")
        .arg(&m.routing_key)
        .arg("payload")
        .arg(&m.payload[..]);
    let _: redis::Value = cmd.query(con)?;
    Ok(())
}

/// Publishes one message to JetStream and waits for the stream's acknowledgement (5 s at most).
async fn publish(
    js: &mut Option<async_nats::jetstream::Context>,
    addr: &str,
    auth: &NatsAuth,
    subject: &str,
    m: &ClientMessage,
) -> Result<(), String> {
    let ctx = match js {
        Some(ctx) => ctx,
        None => {
            let client = auth
                .connect_options("yorker-sink")
                .connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let mut ctx = async_nats::jetstream::new(client);
            ctx.set_timeout(Duration::from_secs(5));
            js.insert(ctx)
        }
    };
    // Header values are printable ASCII: what a client chose is escaped.
    let printable = |b: u8| (0x20..0x7f).contains(&b);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Yorker-User", escape(&m.user, printable).as_str());
    headers.insert("Yorker-Session", m.session_id.to_string().as_str());
    headers.insert("Yorker-Request", m.request_id.to_string().as_str());
    headers.insert("Yorker-Key", escape(&m.routing_key, printable).as_str());
    let ack = ctx
        .publish_with_headers(
            format!("{subject}.{}", subject_token(&m.user)),
            headers,
            m.payload.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Appends one message, retrying (and holding the engine connection unread meanwhile) until
/// the log takes it or the sink is stopped.
fn append(
    cfg: &SinkConfig,
    log: &mut Log,
    m: &ClientMessage,
    stop: &AtomicBool,
) -> Result<(), SinkError> {
    let mut attempt = 0u32;
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(SinkError::Stopped);
        }
        match log.append(m) {
            Ok(()) => return Ok(()),
            Err(e) => {
                attempt += 1;
                if attempt <= 3 || attempt.is_power_of_two() {
                    tracing::warn!(
                        "sink: {}: {e}; holding the engine's messages until it takes them",
                        cfg.to
                    );
                }
                if !sleep_unless_stopped(backoff(attempt), stop) {
                    return Err(SinkError::Stopped);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert_eq!(
            "redis-stream://127.0.0.1:6379/bets?maxlen=1000"
                .parse::<Destination>()
                .unwrap(),
            Destination::RedisStream {
                addr: "127.0.0.1:6379".into(),
                stream: "bets".into(),
                maxlen: 1000
            }
        );
        let d: Destination = "nats-jetstream://u:secret@127.0.0.1:4222/game.bets"
            .parse()
            .unwrap();
        assert_eq!(
            d,
            Destination::JetStream {
                addr: "127.0.0.1:4222".into(),
                auth: NatsAuth::UserPassword("u".into(), "secret".into()),
                subject: "game.bets".into()
            }
        );
        assert!(!d.to_string().contains("secret"));
        for bad in [
            "redis://x:1/k",
            "redis-stream://x/k",
            "redis-stream://x:1/",
            "redis-stream://x:1/a,b",
            "redis-stream://x:1/k?colour=red",
            "nats-jetstream://x:1/",
            "nats-jetstream://x:1/bets.>",
            "nats-jetstream://x:1/bets.*.x",
            "nats-jetstream://x:1/bets..x",
            "nats-jetstream://x:1/bets?x=1",
        ] {
            assert!(bad.parse::<Destination>().is_err(), "{bad}");
        }
    }

    #[test]
    fn users_become_one_subject_token() {
        assert_eq!(subject_token("user-42_b"), "user-42_b");
        assert_eq!(subject_token(""), "_");
        assert_eq!(subject_token("a.b c>*"), "a%2Eb%20c%3E%2A");
        // No two users share a token.
        assert_ne!(subject_token("a.b"), subject_token("a%2Eb"));
        assert_eq!(
            escape("x\r\ny%", |b| (0x20..0x7f).contains(&b)),
            "x%0D%0Ay%25"
        );
    }
}
