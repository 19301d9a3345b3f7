//! The other direction: client messages into the log. `yorker sink` is a backend (role 4) of an
//! engine that appends every CLIENT_MESSAGE it receives to a Redis stream, keyed by the sender's
//! user: `XADD KEY [MAXLEN ~ N] * user U session S request R key K payload P`.
//!
//! The acknowledgement promise is the backend path's (docs/PROTOCOL.md §2.7): the engine
//! acknowledges a MESSAGE `ok` once it has written it to a backend, here the sink. The sink
//! appends messages in the order it receives them, one at a time; while Redis is away it stops
//! reading from the engine, whose queue for the sink then fills and refuses new messages with
//! `server_busy`, so nothing piles up without bound and senders learn it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use yorker_wire::{ClientMessage, Decoder, Frame, Hello, Role, DEFAULT_MAX_FRAME};

use yorker_relay::follower::{backoff, sleep_unless_stopped};

/// Settings of `yorker sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// The engine, HOST:PORT.
    pub engine: String,
    /// The engine's backend key (`--backend-key`), or a token with role `backend`.
    pub backend_key: String,
    /// The Redis server, HOST:PORT.
    pub redis: String,
    /// The stream key messages are appended to.
    pub stream: String,
    /// Trim the stream to about this many entries (`MAXLEN ~`); 0: never trimmed.
    pub maxlen: u64,
}

impl SinkConfig {
    /// Reads `redis-stream://HOST:PORT/KEY[?maxlen=N]`.
    pub fn destination(url: &str) -> Result<(String, String, u64), crate::BadIngestUrl> {
        let bad = |why: &str| crate::BadIngestUrl::new(url, why);
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
        Ok((addr.into(), key.into(), maxlen))
    }
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
    /// Asked to stop.
    #[error("stopped")]
    Stopped,
}

/// Runs the sink until `stop`: connects to the engine as a backend, appends every client message
/// to the stream, reconnects (with backoff) when either side goes away. A refused HELLO (a wrong
/// key) ends it with the reason: retrying cannot help.
pub fn run(cfg: &SinkConfig, stop: &AtomicBool) -> Result<(), SinkError> {
    let mut attempt = 0u32;
    let mut redis: Option<redis::Connection> = None;
    while !stop.load(Ordering::Acquire) {
        match session(cfg, &mut redis, stop, &mut attempt) {
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
    redis: &mut Option<redis::Connection>,
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
    tracing::info!(
        "sink: backend of {} -> redis://{}/{}",
        cfg.engine,
        cfg.redis,
        cfg.stream
    );
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
            Some(Frame::ClientMessage(m)) => append(cfg, redis, &m, stop)?,
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

/// Appends one message, retrying (and holding the engine connection unread meanwhile) until
/// Redis takes it or the sink is stopped.
fn append(
    cfg: &SinkConfig,
    redis: &mut Option<redis::Connection>,
    m: &ClientMessage,
    stop: &AtomicBool,
) -> Result<(), SinkError> {
    let mut attempt = 0u32;
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(SinkError::Stopped);
        }
        let r = (|| -> redis::RedisResult<()> {
            if redis.is_none() {
                let c = redis::Client::open(format!("redis://{}/", cfg.redis))?;
                let con = c.get_connection_with_timeout(Duration::from_secs(2))?;
                con.set_read_timeout(Some(Duration::from_secs(5)))?;
                *redis = Some(con);
            }
            let con = redis.as_mut().expect("connected above");
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&cfg.stream);
            if cfg.maxlen > 0 {
                cmd.arg("MAXLEN").arg("~").arg(cfg.maxlen);
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
        })();
        match r {
            Ok(()) => return Ok(()),
            Err(e) => {
                *redis = None;
                attempt += 1;
                if attempt <= 3 || attempt.is_power_of_two() {
                    tracing::warn!(
                        "sink: redis://{}: {e}; holding the engine's messages until it is back",
                        cfg.redis
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
            SinkConfig::destination("redis-stream://127.0.0.1:6379/bets?maxlen=1000").unwrap(),
            ("127.0.0.1:6379".into(), "bets".into(), 1000)
        );
        for bad in [
            "redis://x:1/k",
            "redis-stream://x/k",
            "redis-stream://x:1/",
            "redis-stream://x:1/a,b",
            "redis-stream://x:1/k?colour=red",
        ] {
            assert!(SinkConfig::destination(bad).is_err(), "{bad}");
        }
    }
}
