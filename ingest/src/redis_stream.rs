//! The Redis Streams reader: one blocking connection on the ingest's thread.
//!
//! A session (re)synchronises every stream first: in one transaction `XINFO STREAM` (the
//! count) and `XREVRANGE ... COUNT history` (the newest entries), numbered by
//! [`number_newest`]; what is newer than what the engine holds is applied (the first value of a
//! topic as a snapshot, later ones in order; a gap shows as SNAPSHOT|RESET). Then it follows all
//! streams with `XREAD BLOCK`, numbering each entry one past the previous, and every
//! `verify_ms` checks its count against the stream's. Any error ends the session: the reader
//! is unsynced (readiness fails, the counters say why) and reconnects with backoff; clients
//! keep their last values meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{Connection, Value};
use yorker_engine::proto::registry::Topic;
use yorker_relay::{FeedStats, Injector};

use crate::numbering::{number_newest, EntryId, Position, StreamInfo};

use crate::IngestConfig;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply to {what}: {got}")]
    Reply { what: &'static str, got: String },
    #[error("stopped")]
    Stopped,
}

fn unexpected(what: &'static str, v: &Value) -> SessionError {
    SessionError::Reply {
        what,
        got: format!("{v:?}").chars().take(200).collect(),
    }
}

/// One stream and the topic it feeds.
struct Stream {
    key: String,
    topic: Arc<Topic>,
    /// Where the reader stands (None: never synchronised).
    pos: Option<Position>,
}

/// Follows the streams, each with the topic it feeds (`topics`, from [`crate::Ingest::start`]).
pub(crate) fn run(
    cfg: &IngestConfig,
    addr: &str,
    field: &str,
    topics: Vec<(String, Arc<Topic>)>,
    injector: &Injector,
    stop: &AtomicBool,
) {
    let mut streams: Vec<Stream> = topics
        .into_iter()
        .map(|(key, topic)| Stream {
            key,
            topic,
            pos: None,
        })
        .collect();
    let what = format!("{} stream(s) at redis://{addr}", streams.len());
    crate::follow(&what, injector, stop, |synced| {
        session(cfg, addr, field, injector, &mut streams, stop, synced)
    });
}

impl crate::SessionEnd for SessionError {
    fn stopped(&self) -> bool {
        matches!(self, SessionError::Stopped)
    }
}

fn session(
    cfg: &IngestConfig,
    addr: &str,
    field: &str,
    injector: &Injector,
    streams: &mut [Stream],
    stop: &AtomicBool,
    synced: &mut dyn FnMut(),
) -> Result<(), SessionError> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    let block = Duration::from_millis(cfg.block_ms);
    con.set_read_timeout(Some(block + Duration::from_secs(5)))?;
    con.set_write_timeout(Some(Duration::from_secs(5)))?;
    for s in streams.iter_mut() {
        resync(&mut con, cfg, field, injector, s)?;
    }
    synced();
    let mut verified = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(SessionError::Stopped);
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(512).arg("BLOCK").arg(cfg.block_ms);
        cmd.arg("STREAMS");
        for s in streams.iter() {
            cmd.arg(&s.key);
        }
        for s in streams.iter() {
            cmd.arg(s.pos.unwrap_or_default().id.to_string());
        }
        let reply: Value = cmd.query(&mut con)?;
        for (key, entries) in xread_streams(&reply)? {
            let Some(s) = streams.iter_mut().find(|s| s.key.as_bytes() == key) else {
                continue;
            };
            for (id, fields) in entries {
                let pos = s.pos.get_or_insert_with(Position::default);
                if id <= pos.id {
                    continue;
                }
                let n = pos.advance(id);
                crate::apply_entry(
                    injector,
                    &s.topic,
                    n,
                    id.timestamp_us(),
                    payload(&fields, field),
                    false,
                );
            }
        }
        if verified.elapsed() >= Duration::from_millis(cfg.verify_ms) {
            verified = Instant::now();
            for s in streams.iter_mut() {
                let info = xinfo(&mut con, &s.key)?;
                let Some(pos) = s.pos else { continue };
                if pos.rewound(&info) || !pos.agrees(&info) {
                    tracing::error!(
                        "ingest: stream {:?} no longer matches the count (at {} as entry {}; the stream says {} entries, newest {}): an entry was deleted before it was read, or the stream was created again; resynchronising the topic (its clients get SNAPSHOT|RESET)",
                        s.key, pos.id, pos.number, info.entries_added, info.last_id
                    );
                    FeedStats::add(&injector.stats().gaps, 1);
                    resync(&mut con, cfg, field, injector, s)?;
                }
            }
        }
    }
}

/// Reads a stream's count and newest entries in one transaction and applies what the engine
/// does not hold yet.
fn resync(
    con: &mut Connection,
    cfg: &IngestConfig,
    field: &str,
    injector: &Injector,
    s: &mut Stream,
) -> Result<(), SessionError> {
    let exists: i64 = redis::cmd("EXISTS").arg(&s.key).query(con)?;
    let (info, newest) = if exists == 0 {
        (StreamInfo::default(), Vec::new())
    } else {
        let replies: Vec<Value> = redis::pipe()
            .atomic()
            .cmd("XINFO")
            .arg("STREAM")
            .arg(&s.key)
            .cmd("XREVRANGE")
            .arg(&s.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(cfg.history)
            .query(con)?;
        let [info, range] = replies.as_slice() else {
            return Err(SessionError::Reply {
                what: "MULTI XINFO XREVRANGE",
                got: format!("{} replies", replies.len()),
            });
        };
        (parse_xinfo(info)?, entries(range, "XREVRANGE")?)
    };
    let rewound = s.pos.is_some_and(|p| p.rewound(&info));
    if let Some(pos) = s.pos {
        if rewound {
            tracing::warn!(
                "ingest: stream {:?} went back (entry {} of {} then, {} now): created again; its topic restarts with SNAPSHOT|RESET",
                s.key, pos.number, pos.id, info.entries_added
            );
            injector.registry().mark_stale(&s.topic);
            FeedStats::add(&injector.stats().resets, 1);
        }
    }
    let ids: Vec<EntryId> = newest.iter().map(|(id, _)| *id).collect();
    // The numbered entries are the newest ones, oldest first: `newest[..n]` backwards.
    let numbered = number_newest(&info, &ids);
    let fields = newest[..numbered.len()].iter().rev().map(|(_, f)| f);
    // What the engine holds already (nothing that counts after a rewind).
    let held = if rewound {
        0
    } else {
        injector.registry().seq(&s.topic)
    };
    let mut first = held == 0;
    for ((id, n), fields) in numbered.into_iter().zip(fields) {
        if n <= held && !first {
            continue;
        }
        crate::apply_entry(
            injector,
            &s.topic,
            n,
            id.timestamp_us(),
            payload(fields, field),
            first,
        );
        first = false;
    }
    s.pos = Some(Position::of(&info));
    Ok(())
}

/// The payload field of an entry; an entry without it is an empty update (and counted).
fn payload(fields: &[(Vec<u8>, Vec<u8>)], field: &str) -> Bytes {
    fields
        .iter()
        .find(|(k, _)| k.as_slice() == field.as_bytes())
        .map(|(_, v)| Bytes::copy_from_slice(v))
        .unwrap_or_default()
}

type Entries = Vec<(EntryId, Vec<(Vec<u8>, Vec<u8>)>)>;

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn id_of(v: &Value, what: &'static str) -> Result<EntryId, SessionError> {
    text(v)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| unexpected(what, v))
}

/// `[[id, [field, value, ...]], ...]` (XRANGE, XREVRANGE, one stream of XREAD).
fn entries(v: &Value, what: &'static str) -> Result<Entries, SessionError> {
    let Value::Array(items) = v else {
        return Err(unexpected(what, v));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(unexpected(what, item));
        };
        let [id, fields] = pair.as_slice() else {
            return Err(unexpected(what, item));
        };
        let id = id_of(id, what)?;
        let fields = match fields {
            Value::Array(kv) => kv
                .chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((text(k)?.to_vec(), text(v)?.to_vec())),
                    _ => None,
                })
                .collect(),
            // A deleted entry still listed (rare): no fields.
            Value::Nil => Vec::new(),
            other => return Err(unexpected(what, other)),
        };
        out.push((id, fields));
    }
    Ok(out)
}

/// XREAD's reply: nil (timed out) or `[[key, entries], ...]`.
fn xread_streams(v: &Value) -> Result<Vec<(Vec<u8>, Entries)>, SessionError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => streams
            .iter()
            .map(|s| match s {
                Value::Array(pair) => match pair.as_slice() {
                    [key, list] => Ok((
                        text(key).ok_or_else(|| unexpected("XREAD", s))?.to_vec(),
                        entries(list, "XREAD")?,
                    )),
                    _ => Err(unexpected("XREAD", s)),
                },
                _ => Err(unexpected("XREAD", s)),
            })
            .collect(),
        Value::Map(streams) => streams
            .iter()
            .map(|(key, list)| {
                Ok((
                    text(key).ok_or_else(|| unexpected("XREAD", key))?.to_vec(),
                    entries(list, "XREAD")?,
                ))
            })
            .collect(),
        other => Err(unexpected("XREAD", other)),
    }
}

fn xinfo(con: &mut Connection, key: &str) -> Result<StreamInfo, SessionError> {
    let exists: i64 = redis::cmd("EXISTS").arg(key).query(con)?;
    if exists == 0 {
        return Ok(StreamInfo::default());
    }
    let v: Value = redis::cmd("XINFO").arg("STREAM").arg(key).query(con)?;
    parse_xinfo(&v)
}

/// `XINFO STREAM`: a flat list (RESP2) or a map (RESP3) of names and values; Redis 7 or later
/// (`entries-added`, `max-deleted-entry-id`).
fn parse_xinfo(v: &Value) -> Result<StreamInfo, SessionError> {
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((k, v)),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        other => return Err(unexpected("XINFO STREAM", other)),
    };
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| text(k) == Some(name.as_bytes()))
            .map(|(_, v)| *v)
    };
    let need = |name: &'static str| {
        get(name).ok_or(SessionError::Reply {
            what: "XINFO STREAM",
            got: format!("no {name:?} (Redis 7 or later is needed)"),
        })
    };
    let entries_added = match need("entries-added")? {
        Value::Int(n) if *n >= 0 => *n as u64,
        other => return Err(unexpected("XINFO STREAM entries-added", other)),
    };
    Ok(StreamInfo {
        entries_added,
        last_id: id_of(need("last-generated-id")?, "XINFO STREAM")?,
        max_deleted_id: id_of(need("max-deleted-entry-id")?, "XINFO STREAM")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::BulkString(x.as_bytes().to_vec())
    }

    #[test]
    fn replies_parse() {
        let info = Value::Array(vec![
            s("length"),
            Value::Int(2),
            s("last-generated-id"),
            s("5-1"),
            s("max-deleted-entry-id"),
            s("0-0"),
            s("entries-added"),
            Value::Int(7),
        ]);
        assert_eq!(
            parse_xinfo(&info).unwrap(),
            StreamInfo {
                entries_added: 7,
                last_id: "5-1".parse().unwrap(),
                max_deleted_id: EntryId::default(),
            }
        );
        // Redis 6 has no entries-added: refused with a reason.
        let old = Value::Array(vec![s("length"), Value::Int(2)]);
        assert!(parse_xinfo(&old)
            .unwrap_err()
            .to_string()
            .contains("Redis 7"));
        let read = Value::Array(vec![Value::Array(vec![
            s("score/1"),
            Value::Array(vec![Value::Array(vec![
                s("5-1"),
                Value::Array(vec![s("payload"), s("97/2")]),
            ])]),
        ])]);
        let got = xread_streams(&read).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, b"score/1");
        assert_eq!(got[0].1[0].0, "5-1".parse().unwrap());
        assert_eq!(
            payload(&got[0].1[0].1, "payload"),
            Bytes::from_static(b"97/2")
        );
        assert_eq!(payload(&got[0].1[0].1, "other"), Bytes::new());
        assert!(xread_streams(&Value::Nil).unwrap().is_empty());
        assert!(xread_streams(&Value::Int(3)).is_err());
    }
}
