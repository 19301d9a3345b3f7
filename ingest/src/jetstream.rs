//! The NATS JetStream reader: the official client (`async-nats`) on a current-thread tokio
//! runtime that the ingest's own thread owns, built per session and dropped with it (so a
//! session that ends takes its connection, consumers and timers along).
//!
//! A session looks up every stream (`STREAM.INFO`), decides where to start reading it from what
//! the engine already holds ([`plan`]), and opens an *ordered* push consumer per stream
//! (ephemeral, no acks, flow control and idle heartbeats; the client recreates it past any
//! hiccup in delivery order). The ingest counts as synced (readiness) once every stream's
//! backlog is read: a message with nothing pending after it, or a block without any message.
//! Each message's stream sequence is the topic's `seq` and its
//! stored time the update's timestamp, so every origin on the stream numbers and stamps it
//! alike. Every `verify_ms` the session looks at the streams again: a stream deleted and created
//! again (another creation time, or a last sequence below the reader's) restarts the session,
//! and its topic with SNAPSHOT|RESET. A lost connection, a consumer error or a missing stream
//! ends the session; [`crate::follow`] retries with backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, stream};
use futures_util::stream::{SelectAll, StreamExt};
use yorker_engine::proto::registry::Topic;
use yorker_relay::{FeedStats, Injector};

use crate::{IngestConfig, NatsAuth};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Nats(String),
    #[error("stream {stream:?}: {why}")]
    Stream { stream: String, why: String },
    #[error("stream {0:?} was deleted and created again")]
    Rewound(String),
    #[error("connection lost")]
    Disconnected,
    #[error("stopped")]
    Stopped,
}

impl crate::SessionEnd for SessionError {
    fn stopped(&self) -> bool {
        matches!(self, SessionError::Stopped)
    }
}

fn stream_error(stream: &str, e: impl std::fmt::Display) -> SessionError {
    SessionError::Stream {
        stream: stream.into(),
        why: e.to_string(),
    }
}

/// One stream and the topic it feeds.
struct Feed {
    stream: String,
    topic: Arc<Topic>,
    /// The stream's creation time (ns since the Unix epoch) when last looked at: another one
    /// means the stream was deleted and created again.
    created_ns: Option<i128>,
    /// The newest stream sequence applied (0: none).
    applied: u64,
    /// The next message applied is the topic's first value from this stream: a snapshot.
    first: bool,
    /// The session has read everything the stream held when the session began.
    caught_up: bool,
}

/// What the stream says of itself (`STREAM.INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StreamState {
    /// Creation time, ns since the Unix epoch.
    pub created_ns: i128,
    /// Oldest sequence still stored (the last one + 1 when empty).
    pub first_seq: u64,
    /// Newest sequence ever stored (0: none yet).
    pub last_seq: u64,
}

/// Where a session starts reading a stream, sans-IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The stream went back (deleted and created again since it was last read): the topic's
    /// numbers mean nothing any more and it restarts with SNAPSHOT|RESET.
    pub rewound: bool,
    /// The first stream sequence to read.
    pub start: u64,
    /// The first message read is the topic's first value here: flag it SNAPSHOT.
    pub first_is_snapshot: bool,
}

/// Plans a session's start on a stream: `held` is the topic's seq in the engine (0: nothing),
/// `seen_created_ns` the stream's creation time when last read (None: never read).
///
/// What the engine holds is not read again; at most `history` of the newest messages are read
/// (the topic's history, so that clients of a restarted origin can resume). A topic the engine
/// holds nothing of starts from a snapshot; one the stream has moved on from by more than
/// `history` gets the gap announced as SNAPSHOT|RESET by the injector.
pub(crate) fn plan(
    held: u64,
    seen_created_ns: Option<i128>,
    now: StreamState,
    history: usize,
) -> Plan {
    let rewound = seen_created_ns.is_some_and(|c| c != now.created_ns) || held > now.last_seq;
    let held = if rewound { 0 } else { held };
    let window = now
        .last_seq
        .saturating_sub(history.max(1) as u64 - 1)
        .max(now.first_seq)
        .max(1);
    Plan {
        rewound,
        start: window.max(held + 1),
        first_is_snapshot: held == 0,
    }
}

/// Follows the streams, each with the topic it feeds (`topics`, from [`crate::Ingest::start`]).
pub(crate) fn run(
    cfg: &IngestConfig,
    addr: &str,
    auth: &NatsAuth,
    topics: Vec<(String, Arc<Topic>)>,
    injector: &Injector,
    stop: &AtomicBool,
) {
    let mut feeds: Vec<Feed> = topics
        .into_iter()
        .map(|(stream, topic)| Feed {
            stream,
            topic,
            created_ns: None,
            applied: 0,
            first: true,
            caught_up: false,
        })
        .collect();
    let what = format!("{} stream(s) at nats://{addr} (JetStream)", feeds.len());
    crate::follow(&what, injector, stop, |synced| {
        let rt = crate::nats_runtime()
            .map_err(|e| SessionError::Nats(format!("cannot start the client's runtime: {e}")))?;
        rt.block_on(session(cfg, addr, auth, injector, &mut feeds, stop, synced))
    });
}

async fn session(
    cfg: &IngestConfig,
    addr: &str,
    auth: &NatsAuth,
    injector: &Injector,
    feeds: &mut [Feed],
    stop: &AtomicBool,
    synced: &mut dyn FnMut(),
) -> Result<(), SessionError> {
    let client = auth
        .connect_options("yorker-ingest")
        .connect(addr)
        .await
        .map_err(|e| SessionError::Nats(e.to_string()))?;
    let js = jetstream::new(client.clone());
    let mut streams = Vec::with_capacity(feeds.len());
    let mut merged = SelectAll::new();
    for (i, f) in feeds.iter_mut().enumerate() {
        let mut s = js
            .get_stream(&f.stream)
            .await
            .map_err(|e| stream_error(&f.stream, e))?;
        let now = state_of(s.info().await.map_err(|e| stream_error(&f.stream, e))?);
        let p = plan(
            injector.registry().seq(&f.topic),
            f.created_ns,
            now,
            cfg.history,
        );
        if p.rewound {
            tracing::warn!(
                "ingest: stream {:?} was deleted and created again; its topic restarts with SNAPSHOT|RESET",
                f.stream
            );
            injector.registry().mark_stale(&f.topic);
            FeedStats::add(&injector.stats().resets, 1);
        }
        f.created_ns = Some(now.created_ns);
        f.first = p.first_is_snapshot;
        f.applied = p.start - 1;
        f.caught_up = p.start > now.last_seq;
        let consumer = s
            .create_consumer(OrderedConfig {
                deliver_subject: client.new_inbox(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: p.start,
                },
                description: Some("yorker ingest".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| stream_error(&f.stream, e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| stream_error(&f.stream, e))?;
        merged.push(messages.map(move |m| (i, m)).boxed());
        streams.push(s);
    }
    // Ready once every stream's backlog is read (as a Redis session is once its history is):
    // a client let in earlier would get an older snapshot, then the backlog.
    let mut ready = false;
    let block = Duration::from_millis(cfg.block_ms);
    let mut verified = Instant::now();
    loop {
        if !ready && feeds.iter().all(|f| f.caught_up) {
            ready = true;
            synced();
        }
        if stop.load(Ordering::Acquire) {
            return Err(SessionError::Stopped);
        }
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err(SessionError::Disconnected);
        }
        match tokio::time::timeout(block, merged.next()).await {
            Err(_idle) => {
                // A backlog arrives as fast as the server sends it; a whole block without any
                // message means none is left (the newest messages may have been deleted, so a
                // stream's last sequence is not always reached).
                for f in feeds.iter_mut() {
                    f.caught_up = true;
                }
            }
            Ok(None) => return Err(SessionError::Nats("the consumers ended".into())),
            Ok(Some((i, Err(e)))) => return Err(stream_error(&feeds[i].stream, e)),
            Ok(Some((i, Ok(m)))) => {
                let f = &mut feeds[i];
                let info = m.info().map_err(|e| stream_error(&f.stream, e))?;
                let seq = info.stream_sequence;
                // `pending`: messages still to come to this consumer (deleted ones not counted).
                f.caught_up |= info.pending == 0;
                if seq <= f.applied {
                    continue;
                }
                let ts = u64::try_from(info.published.unix_timestamp_nanos() / 1000).unwrap_or(0);
                crate::apply_entry(injector, &f.topic, seq, ts, m.payload.clone(), f.first);
                f.first = false;
                f.applied = seq;
            }
        }
        if verified.elapsed() >= Duration::from_millis(cfg.verify_ms) {
            verified = Instant::now();
            for (f, s) in feeds.iter().zip(streams.iter_mut()) {
                let now = state_of(s.info().await.map_err(|e| stream_error(&f.stream, e))?);
                if f.created_ns != Some(now.created_ns) || now.last_seq < f.applied {
                    FeedStats::add(&injector.stats().gaps, 1);
                    return Err(SessionError::Rewound(f.stream.clone()));
                }
            }
        }
    }
}

fn state_of(info: &stream::Info) -> StreamState {
    StreamState {
        created_ns: info.created.unix_timestamp_nanos(),
        first_seq: info.state.first_sequence,
        last_seq: info.state.last_sequence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(first_seq: u64, last_seq: u64) -> StreamState {
        StreamState {
            created_ns: 7,
            first_seq,
            last_seq,
        }
    }

    #[test]
    fn a_new_topic_starts_from_a_snapshot_within_the_history() {
        // 100 messages, history 64: read 37..=100, the first a snapshot.
        let p = plan(0, None, state(1, 100), 64);
        assert_eq!((p.rewound, p.start, p.first_is_snapshot), (false, 37, true));
        // Fewer than the history: from the oldest stored.
        assert_eq!(plan(0, None, state(5, 20), 64).start, 5);
        // An empty stream (never written, or purged after 20): wait for the next.
        assert_eq!(plan(0, None, state(0, 0), 64).start, 1);
        assert_eq!(plan(0, None, state(21, 20), 64).start, 21);
    }

    #[test]
    fn a_topic_the_engine_holds_goes_on_after_it() {
        let p = plan(90, Some(7), state(1, 100), 64);
        assert_eq!(
            (p.rewound, p.start, p.first_is_snapshot),
            (false, 91, false)
        );
        // Up to date: the next one.
        assert_eq!(plan(100, Some(7), state(1, 100), 64).start, 101);
        // Further behind than the history: from the window (the injector announces the gap).
        assert_eq!(plan(10, Some(7), state(1, 100), 64).start, 37);
    }

    #[test]
    fn a_stream_created_again_is_noticed() {
        // Another creation time.
        let p = plan(90, Some(6), state(1, 3), 64);
        assert_eq!((p.rewound, p.start, p.first_is_snapshot), (true, 1, true));
        // Fewer messages than the engine holds (an origin started before the re-creation).
        let p = plan(90, None, state(1, 3), 64);
        assert_eq!((p.rewound, p.start, p.first_is_snapshot), (true, 1, true));
    }
}
