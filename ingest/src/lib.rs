//! # yorker-ingest
//!
//! An origin that takes its updates from an existing, replicated log instead of from
//! publishers: `yorker serve --ingest redis-stream://HOST:PORT/KEY[,KEY...]`. Each stream key is
//! one topic (named like the key); each entry is one update (its `payload` field). The topic's
//! sequence number is the entry's position among all entries ever added to the stream, and the
//! epoch comes from the streams' identity, so **two origins reading the same streams number
//! every update alike**, and an origin restarted on them carries on where it was: clients resume
//! instead of resetting (docs/SCALE-OUT.md).
//!
//! The reader runs on a thread of its own (a blocking Redis connection; the shards never wait
//! for it) and hands every entry to the engine through the relay [`Injector`], exactly as a
//! relay applies its origin's updates: in order, duplicates dropped, a gap announced as
//! SNAPSHOT|RESET. [`numbering`] is the sans-IO part.
//!
//! The other direction, client messages into the log, is [`sink`] (`yorker sink`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

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

/// A `redis-stream://` URL (`--ingest`, `yorker sink --to`) that cannot be used.
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

/// Splits `redis-stream://HOST:PORT/PATH[?QUERY]` into the address, the path (the stream
/// keys) and the query.
pub(crate) fn split_redis_stream_url(url: &str) -> Result<(&str, &str, &str), BadIngestUrl> {
    let bad = |why: &str| BadIngestUrl::new(url, why);
    let rest = url
        .strip_prefix("redis-stream://")
        .ok_or_else(|| bad("the URL must start with redis-stream://"))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (addr, path) = rest.split_once('/').ok_or_else(|| {
        bad("name the stream keys after the address: redis-stream://HOST:PORT/KEY[,KEY...]")
    })?;
    if addr.is_empty() || !addr.contains(':') {
        return Err(bad("the address must be HOST:PORT"));
    }
    Ok((addr, path, query))
}

impl FromStr for IngestConfig {
    type Err = BadIngestUrl;

    /// `redis-stream://HOST:PORT/KEY[,KEY...][?field=payload&history=64&verify-ms=5000]`.
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| BadIngestUrl::new(url, why);
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
        let mut dup = keys.clone();
        dup.sort();
        dup.dedup();
        if dup.len() != keys.len() {
            return Err(bad("a stream key is named twice"));
        }
        let mut cfg = IngestConfig {
            source: IngestSource::RedisStream {
                addr: addr.into(),
                keys,
                field: "payload".into(),
            },
            history: 64,
            block_ms: 500,
            verify_ms: 5_000,
        };
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let num = |max: u64| -> Result<u64, BadIngestUrl> {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| bad(&format!("{k} must be a number from 1 to {max}")))
            };
            match k {
                "field" if !v.is_empty() => {
                    let IngestSource::RedisStream { field, .. } = &mut cfg.source;
                    *field = v.into();
                }
                "history" => cfg.history = num(100_000)? as usize,
                "verify-ms" => cfg.verify_ms = num(3_600_000)?,
                _ => return Err(bad(&format!("unknown or empty parameter {k:?}"))),
            }
        }
        Ok(cfg)
    }
}

impl IngestConfig {
    /// The epoch every origin on these streams shares: a hash of the source's identity (the
    /// stream keys; not the address, so that origins may reach the same replicated Redis
    /// through different addresses). Never 0.
    pub fn epoch(&self) -> u64 {
        let IngestSource::RedisStream { keys, field, .. } = &self.source;
        // FNV-1a, 64 bits: stable across builds and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: &[u8]| {
            for &x in b {
                h ^= u64::from(x);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        eat(b"yorker redis-stream\0");
        for k in keys {
            eat(k.as_bytes());
            eat(b"\0");
        }
        eat(field.as_bytes());
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
        let IngestSource::RedisStream { keys, .. } = &cfg.source;
        let mut topics = Vec::with_capacity(keys.len());
        for key in keys {
            match injector.topic(key) {
                Ok(t) => {
                    injector.registry().mark_fed(&t);
                    topics.push((key.clone(), t));
                }
                Err(e) => tracing::error!("ingest: stream {key:?} has no topic: {e}"),
            }
        }
        tracing::info!("ingest: epoch {epoch:#x} from {}", describe(&cfg.source));
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("yorker-ingest".into())
            .spawn(move || redis_stream::run(&cfg, topics, &injector, &st))?;
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

fn describe(s: &IngestSource) -> String {
    let IngestSource::RedisStream { addr, keys, .. } = s;
    format!("redis-stream://{addr} ({} stream(s))", keys.len())
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
    fn the_epoch_names_the_streams_not_the_address() {
        let a: IngestConfig = "redis-stream://10.0.0.1:6379/s1,s2".parse().unwrap();
        let b: IngestConfig = "redis-stream://10.0.0.2:6380/s1,s2".parse().unwrap();
        let c: IngestConfig = "redis-stream://10.0.0.1:6379/s1,s3".parse().unwrap();
        assert_eq!(a.epoch(), b.epoch());
        assert_ne!(a.epoch(), c.epoch());
        assert_ne!(a.epoch(), 0);
    }
}
