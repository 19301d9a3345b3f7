//! # yorker-ingest
//!
//! An origin that takes its updates from an existing, replicated log instead of from
//! publishers:
//!
//! * `yorker serve --ingest redis-stream://HOST:PORT/KEY[,KEY...]`: each Redis stream key is one
//!   topic (named like the key); each entry is one update (its `payload` field), numbered by its
//!   position among all entries ever added to the stream;
//! * `yorker serve --ingest nats-jetstream://HOST:PORT/STREAM[=TOPIC][,...]`: each JetStream
//!   stream is one topic (named like the stream, or as `=TOPIC` says), whatever subjects it
//!   collects; each message is one update, numbered by its stream sequence.
//!
//! Either way the epoch comes from the source's identity, so **two origins reading the same
//! log number every update alike**, and an origin restarted on it carries on where it was:
//! clients resume instead of resetting (docs/SCALE-OUT.md).
//!
//! The reader runs on a thread of its own (the shards never wait for it) and hands every entry
//! to the engine through the relay [`Injector`], exactly as a relay applies its origin's
//! updates: in order, duplicates dropped, a gap announced as SNAPSHOT|RESET. [`numbering`] is
//! the sans-IO part.
//!
//! The other direction, client messages into the log, is [`sink`] (`yorker sink`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod jetstream;
pub mod numbering;
mod redis_stream;
pub mod sink;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use yorker_relay::Injector;

/// Where updates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IngestSource {
    /// Redis Streams: one stream per topic.
    RedisStream {
        /// `host:port` of the Redis server.
        addr: String,
        /// The stream keys; each is a topic of the same name.
        keys: Vec<String>,
        /// The entry field that holds the payload.
        field: String,
    },
    /// NATS JetStream: one stream per topic.
    NatsJetStream {
        /// `host:port` of the NATS server.
        addr: String,
        /// Credentials, if the server wants them.
        auth: NatsAuth,
        /// `(stream, topic)`: each stream's messages are the topic's updates.
        streams: Vec<(String, String)>,
    },
}

/// How the ingest logs in to a NATS server (the URL's `USER:PASSWORD@` or `TOKEN@`).
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NatsAuth {
    /// None.
    #[default]
    None,
    /// A user and password.
    UserPassword(String, String),
    /// A token.
    Token(String),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.write_str(match self {
            NatsAuth::None => "None",
            NatsAuth::UserPassword(..) => "UserPassword(..)",
            NatsAuth::Token(_) => "Token(..)",
        })
    }
}

impl NatsAuth {
    /// The NATS client's options for a connection named `name` with these credentials: 2 s to
    /// connect, 5 s for a request.
    pub(crate) fn connect_options(&self, name: &str) -> async_nats::ConnectOptions {
        let opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(std::time::Duration::from_secs(2))
            .request_timeout(Some(std::time::Duration::from_secs(5)));
        match self {
            NatsAuth::None => opts,
            NatsAuth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
            NatsAuth::Token(t) => opts.token(t.clone()),
        }
    }
}

impl IngestSource {
    /// `(name in the source, topic)` of every topic the source feeds.
    pub fn topics(&self) -> Vec<(String, String)> {
        match self {
            IngestSource::RedisStream { keys, .. } => {
                keys.iter().map(|k| (k.clone(), k.clone())).collect()
            }
            IngestSource::NatsJetStream { streams, .. } => streams.clone(),
        }
    }
}

/// Settings of an ingest (`--ingest URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// The source.
    pub source: IngestSource,
    /// Entries read back per stream when the ingest (re)synchronises: the topic's history, so
    /// that clients of a restarted origin can resume (`history=`, default 64).
    pub history: usize,
    /// Longest a read blocks before the reader looks at its stop flag, ms.
    pub block_ms: u64,
    /// How often the reader checks its count against the stream's (`verify-ms=`), ms.
    pub verify_ms: u64,
}

/// An ingest or sink URL (`--ingest`, `yorker sink --to`) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?}: {why}")]
pub struct BadIngestUrl {
    /// The URL.
    pub url: String,
    /// What is wrong.
    pub why: String,
}

impl BadIngestUrl {
    fn new(url: &str, why: &str) -> Self {
        BadIngestUrl {
            url: url.into(),
            why: why.into(),
        }
    }
}

/// Splits `SCHEME://AUTHORITY/PATH[?QUERY]` into the authority, the path and the query;
/// `path_help` says what the path names, for an URL without one.
fn split_url<'a>(
    url: &'a str,
    scheme: &str,
    path_help: &str,
) -> Result<(&'a str, &'a str, &'a str), BadIngestUrl> {
    let bad = |why: &str| BadIngestUrl::new(url, why);
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| bad(&format!("the URL must start with {scheme}://")))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad(path_help))?;
    Ok((authority, path, query))
}

/// `addr` if it is `HOST:PORT`.
fn host_port<'a>(url: &str, addr: &'a str) -> Result<&'a str, BadIngestUrl> {
    if addr.is_empty() || !addr.contains(':') {
        return Err(BadIngestUrl::new(url, "the address must be HOST:PORT"));
    }
    Ok(addr)
}

/// Splits `redis-stream://HOST:PORT/PATH[?QUERY]` into the address, the path (the stream
/// keys) and the query.
pub(crate) fn split_redis_stream_url(url: &str) -> Result<(&str, &str, &str), BadIngestUrl> {
    let (addr, path, query) = split_url(
        url,
        "redis-stream",
        "name the stream keys after the address: redis-stream://HOST:PORT/KEY[,KEY...]",
    )?;
    Ok((host_port(url, addr)?, path, query))
}

/// Splits `nats-jetstream://[CREDENTIALS@]HOST:PORT/PATH[?QUERY]` into the credentials, the
/// address, the path and the query.
pub(crate) fn split_jetstream_url(url: &str) -> Result<(NatsAuth, &str, &str, &str), BadIngestUrl> {
    let (authority, path, query) = split_url(
        url,
        "nats-jetstream",
        "name the streams after the address: nats-jetstream://HOST:PORT/STREAM[,STREAM...]",
    )?;
    let (auth, addr) = match authority.rsplit_once('@') {
        None => (NatsAuth::None, authority),
        Some(("", _)) => return Err(BadIngestUrl::new(url, "empty credentials before '@'")),
        Some((cred, addr)) => match cred.split_once(':') {
            Some((user, pass)) => (NatsAuth::UserPassword(user.into(), pass.into()), addr),
            None => (NatsAuth::Token(cred.into()), addr),
        },
    };
    Ok((auth, host_port(url, addr)?, path, query))
}

/// Whether a name occurs twice.
fn named_twice<'a>(names: impl Iterator<Item = &'a str>) -> bool {
    let mut v: Vec<&str> = names.collect();
    v.sort_unstable();
    v.windows(2).any(|w| w[0] == w[1])
}

/// A JetStream stream name as the server accepts it (no whitespace, `.`, `*`, `>`, slashes or
/// control characters; at most 255 bytes).
fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
}

/// `(stream, topic)` pairs of a `nats-jetstream://` path: `STREAM[=TOPIC][,...]`.
fn jetstream_streams(url: &str, path: &str) -> Result<Vec<(String, String)>, BadIngestUrl> {
    let bad = |why: &str| BadIngestUrl::new(url, why);
    let mut streams = Vec::new();
    for item in path.split(',').filter(|s| !s.is_empty()) {
        let (stream, topic) = item.split_once('=').unwrap_or((item, item));
        if !valid_stream_name(stream) {
            return Err(bad(&format!(
                "{stream:?} is not a JetStream stream name (no whitespace, '.', '*', '>' or slashes)"
            )));
        }
        yorker_wire::topic::validate(topic)
            .map_err(|e| bad(&format!("{topic:?} is not a valid topic name: {e}")))?;
        streams.push((stream.to_string(), topic.to_string()));
    }
    if streams.is_empty() {
        return Err(bad("no stream"));
    }
    if named_twice(streams.iter().map(|(s, _)| s.as_str()))
        || named_twice(streams.iter().map(|(_, t)| t.as_str()))
    {
        return Err(bad("a stream or a topic is named twice"));
    }
    Ok(streams)
}

impl FromStr for IngestConfig {
    type Err = BadIngestUrl;

    /// `redis-stream://HOST:PORT/KEY[,KEY...][?field=payload&history=64&verify-ms=5000]` or
    /// `nats-jetstream://[USER:PASSWORD@|TOKEN@]HOST:PORT/STREAM[=TOPIC][,...][?history=64&verify-ms=5000]`.
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| BadIngestUrl::new(url, why);
        if url.starts_with("nats-jetstream://") {
            let (auth, addr, path, query) = split_jetstream_url(url)?;
            let source = IngestSource::NatsJetStream {
                addr: addr.into(),
                auth,
                streams: jetstream_streams(url, path)?,
            };
            return IngestConfig::with_query(source, url, query);
        }
        if !url.starts_with("redis-stream://") {
            return Err(bad(
                "the URL must start with redis-stream:// or nats-jetstream://",
            ));
        }
        let (addr, keys, query) = split_redis_stream_url(url)?;
        let keys: Vec<String> = keys
            .split(',')
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect();
        if keys.is_empty() {
            return Err(bad("no stream key"));
        }
        for k in &keys {
            yorker_wire::topic::validate(k)
                .map_err(|e| bad(&format!("stream key {k:?} is not a valid topic name: {e}")))?;
        }
        if named_twice(keys.iter().map(String::as_str)) {
            return Err(bad("a stream key is named twice"));
        }
        let source = IngestSource::RedisStream {
            addr: addr.into(),
            keys,
            field: "payload".into(),
        };
        IngestConfig::with_query(source, url, query)
    }
}

impl IngestConfig {
    /// The settings for `source`: the defaults, then the URL's query parameters.
    fn with_query(source: IngestSource, url: &str, query: &str) -> Result<Self, BadIngestUrl> {
        let mut cfg = IngestConfig {
            source,
            history: 64,
            block_ms: 500,
            verify_ms: 5_000,
        };
        cfg.query(url, query)?;
        Ok(cfg)
    }

    /// Applies the URL's query parameters.
    fn query(&mut self, url: &str, query: &str) -> Result<(), BadIngestUrl> {
        let bad = |why: &str| BadIngestUrl::new(url, why);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let num = |max: u64| -> Result<u64, BadIngestUrl> {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| bad(&format!("{k} must be a number from 1 to {max}")))
            };
            match (k, &mut self.source) {
                ("field", IngestSource::RedisStream { field, .. }) if !v.is_empty() => {
                    *field = v.into();
                }
                ("history", _) => self.history = num(100_000)? as usize,
                ("verify-ms", _) => self.verify_ms = num(3_600_000)?,
                _ => return Err(bad(&format!("unknown or empty parameter {k:?}"))),
            }
        }
        Ok(())
    }

    /// The epoch every origin on these streams shares: a hash of the source's identity (the
    /// kind of log, the streams and their topics; not the address, so that origins may reach
    /// the same replicated log through different addresses). Never 0.
    pub fn epoch(&self) -> u64 {
        // FNV-1a, 64 bits: stable across builds and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: &[u8]| {
            for &x in b {
                h ^= u64::from(x);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        match &self.source {
            IngestSource::RedisStream { keys, field, .. } => {
                eat(b"yorker redis-stream\0");
                for k in keys {
                    eat(k.as_bytes());
                    eat(b"\0");
                }
                eat(field.as_bytes());
            }
            IngestSource::NatsJetStream { streams, .. } => {
                eat(b"yorker nats-jetstream\0");
                for (stream, topic) in streams {
                    eat(stream.as_bytes());
                    eat(b"=");
                    eat(topic.as_bytes());
                    eat(b"\0");
                }
            }
        }
        h.max(1)
    }
}

/// A running ingest: a thread reading the source into the engine. Stops when dropped.
#[derive(Debug)]
pub struct Ingest {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ingest {
    /// Adopts the source's epoch in the engine's registry and starts reading. Connection
    /// trouble does not fail the start: the reader retries with backoff, and the feed counters
    /// (`synced`, readiness) tell whether it is following the source.
    pub fn start(cfg: IngestConfig, injector: Injector) -> std::io::Result<Ingest> {
        let epoch = cfg.epoch();
        injector.registry().adopt_epoch(epoch);
        // Before anything else can publish to them: these topics take their numbers from the
        // stream only.
        let mut topics = Vec::new();
        for (name, topic) in cfg.source.topics() {
            match injector.topic(&topic) {
                Ok(t) => {
                    injector.registry().mark_fed(&t);
                    topics.push((name, t));
                }
                Err(e) => tracing::error!("ingest: stream {name:?} has no topic: {e}"),
            }
        }
        tracing::info!("ingest: epoch {epoch:#x} from {}", describe(&cfg.source));
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("yorker-ingest".into())
            .spawn(move || match &cfg.source {
                IngestSource::RedisStream { addr, field, .. } => {
                    redis_stream::run(&cfg, addr, field, topics, &injector, &st)
                }
                IngestSource::NatsJetStream { addr, auth, .. } => {
                    jetstream::run(&cfg, addr, auth, topics, &injector, &st)
                }
            })?;
        Ok(Ingest {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops reading and waits for the thread (at most a read's block time).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Hands one entry of a stream to the engine as update `seq` of `topic`, stamped
/// `timestamp_us`. The first value a topic gets from the stream (`first`) is flagged SNAPSHOT:
/// nothing before it is known here.
pub(crate) fn apply_entry(
    injector: &Injector,
    topic: &yorker_engine::proto::registry::Topic,
    seq: u64,
    timestamp_us: u64,
    payload: bytes::Bytes,
    first: bool,
) {
    let u = yorker_wire::Update {
        topic_id: 0,
        seq,
        timestamp_us,
        flags: if first {
            yorker_wire::update_flags::SNAPSHOT
        } else {
            0
        },
        payload,
    };
    injector.apply(topic, &u, yorker_relay::unix_us());
}

/// The runtime the NATS client runs on: current-thread, on the calling (side) thread.
pub(crate) fn nats_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// How a reader's session ended, for [`follow`].
pub(crate) trait SessionEnd: std::fmt::Display {
    /// Asked to stop (not an error).
    fn stopped(&self) -> bool;
}

/// The reader's outer loop, whatever the source: runs sessions until stopped. A session calls
/// `synced` once it follows the source (readiness says so from then on); when it ends with an
/// error the reader is unsynced (readiness fails, `source_errors` counts it), logs why, and
/// starts another after a backoff. Clients keep their last values meanwhile.
pub(crate) fn follow<E: SessionEnd>(
    what: &str,
    injector: &Injector,
    stop: &AtomicBool,
    mut session: impl FnMut(&mut dyn FnMut()) -> Result<(), E>,
) {
    use yorker_relay::follower::{backoff, sleep_unless_stopped};
    use yorker_relay::FeedStats;
    let stats = injector.stats();
    let mut attempt = 0u32;
    let mut sessions = 0u64;
    while !stop.load(Ordering::Acquire) {
        let r = session(&mut || {
            sessions += 1;
            attempt = 0;
            if sessions > 1 {
                FeedStats::add(&stats.snapshot_fallbacks, 1);
            }
            stats.synced.store(true, Ordering::Release);
            tracing::info!("ingest: following {what}");
        });
        stats.synced.store(false, Ordering::Release);
        match r {
            Ok(()) => return,
            Err(e) if e.stopped() => return,
            Err(e) => {
                FeedStats::add(&stats.source_errors, 1);
                attempt += 1;
                if attempt <= 3 || attempt.is_power_of_two() {
                    tracing::warn!(
                        "ingest: {what}: {e} (retrying; clients keep their last values)"
                    );
                }
            }
        }
        if !sleep_unless_stopped(backoff(attempt), stop) {
            return;
        }
    }
}

fn describe(s: &IngestSource) -> String {
    match s {
        IngestSource::RedisStream { addr, keys, .. } => {
            format!("redis-stream://{addr} ({} stream(s))", keys.len())
        }
        IngestSource::NatsJetStream { addr, streams, .. } => {
            format!("nats-jetstream://{addr} ({} stream(s))", streams.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_say_why() {
        let c: IngestConfig = "redis-stream://127.0.0.1:6379/score/1,score/2?history=8"
            .parse()
            .unwrap();
        assert_eq!(
            c.source,
            IngestSource::RedisStream {
                addr: "127.0.0.1:6379".into(),
                keys: vec!["score/1".into(), "score/2".into()],
                field: "payload".into(),
            }
        );
        assert_eq!(c.history, 8);
        for (url, why) in [
            ("nats://x:1/a", "must start with redis-stream://"),
            ("redis-stream://x:1", "name the stream keys"),
            ("redis-stream://x/a", "HOST:PORT"),
            ("redis-stream://x:1/", "no stream key"),
            ("redis-stream://x:1/a,a", "named twice"),
            ("redis-stream://x:1/a?history=0", "history must be"),
            ("redis-stream://x:1/a?colour=red", "unknown"),
        ] {
            let e = url.parse::<IngestConfig>().unwrap_err();
            assert!(e.to_string().contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn jetstream_urls_parse_and_bad_ones_say_why() {
        let c: IngestConfig = "nats-jetstream://ingest:s3cret@127.0.0.1:4222/SCORES_1=score/1,odds?history=8&verify-ms=100"
            .parse()
            .unwrap();
        assert_eq!(
            c.source,
            IngestSource::NatsJetStream {
                addr: "127.0.0.1:4222".into(),
                auth: NatsAuth::UserPassword("ingest".into(), "s3cret".into()),
                streams: vec![
                    ("SCORES_1".into(), "score/1".into()),
                    ("odds".into(), "odds".into())
                ],
            }
        );
        assert_eq!((c.history, c.verify_ms), (8, 100));
        // The secret never shows in a debug print (logs, errors).
        assert!(!format!("{c:?}").contains("s3cret"));
        let t: IngestConfig = "nats-jetstream://tok@h:1/s".parse().unwrap();
        let IngestSource::NatsJetStream { auth, .. } = &t.source else {
            panic!("{t:?}")
        };
        assert_eq!(*auth, NatsAuth::Token("tok".into()));
        for (url, why) in [
            ("nats-jetstream://h:1", "name the streams"),
            ("nats-jetstream://h/s", "HOST:PORT"),
            ("nats-jetstream://@h:1/s", "empty credentials"),
            ("nats-jetstream://h:1/", "no stream"),
            ("nats-jetstream://h:1/a.b", "not a JetStream stream name"),
            ("nats-jetstream://h:1/a b", "not a JetStream stream name"),
            ("nats-jetstream://h:1/a,a", "named twice"),
            ("nats-jetstream://h:1/a=t,b=t", "named twice"),
            ("nats-jetstream://h:1/a=", "not a valid topic"),
            ("nats-jetstream://h:1/a?field=x", "unknown"),
        ] {
            let e = url.parse::<IngestConfig>().unwrap_err();
            assert!(e.to_string().contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn the_epoch_names_the_streams_not_the_address() {
        let a: IngestConfig = "redis-stream://10.0.0.1:6379/s1,s2".parse().unwrap();
        let b: IngestConfig = "redis-stream://10.0.0.2:6380/s1,s2".parse().unwrap();
        let c: IngestConfig = "redis-stream://10.0.0.1:6379/s1,s3".parse().unwrap();
        assert_eq!(a.epoch(), b.epoch());
        assert_ne!(a.epoch(), c.epoch());
        assert_ne!(a.epoch(), 0);
        let n1: IngestConfig = "nats-jetstream://10.0.0.1:4222/S1=s1,S2=s2"
            .parse()
            .unwrap();
        let n2: IngestConfig = "nats-jetstream://u:p@10.0.0.9:4223/S1=s1,S2=s2"
            .parse()
            .unwrap();
        let n3: IngestConfig = "nats-jetstream://10.0.0.1:4222/S1=s1,S2=s3"
            .parse()
            .unwrap();
        assert_eq!(n1.epoch(), n2.epoch());
        assert_ne!(n1.epoch(), n3.epoch());
        assert_ne!(n1.epoch(), a.epoch());
    }
}
