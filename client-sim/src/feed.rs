//! The match feed: plays matches on topics `match/<id>`, one event per match every `step`,
//! market suspensions published urgent. Shared by `publish` and `demo`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::fleet::unix_us;
use crate::matchsim::Match;
use crate::publisher::{PublishError, Publisher};

/// Topic of match `id`.
pub fn match_topic(id: u32) -> String {
    format!("match/{id}")
}

/// Plays `matches` matches (ids 1..=matches) until `stop` is set or `limit` passes; a finished
/// match is followed by a new one on the same topic. Counts publishes into `published`.
pub fn play(
    publisher: &mut Publisher,
    matches: u32,
    step: Duration,
    limit: Option<Duration>,
    stop: &AtomicBool,
    published: &AtomicU64,
    seed: u64,
) -> Result<(), PublishError> {
    let mut games: Vec<Match> = (1..=matches).map(|id| Match::new(id, seed)).collect();
    let mut round = 0u64;
    let start = Instant::now();
    let mut next = Instant::now();
    let mut buf = BytesMut::new();
    while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| start.elapsed() < l) {
        for g in &mut games {
            let step = match g.next_step(unix_us()) {
                Some(s) => s,
                None => {
                    round += 1;
                    *g = Match::new(g.id(), seed.wrapping_add(round));
                    continue;
                }
            };
            buf.clear();
            step.event.encode(&mut buf);
            publisher.publish(&match_topic(g.id()), step.urgent, false, &buf)?;
            published.fetch_add(1, Ordering::Relaxed);
        }
        publisher.flush()?;
        next += step;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        } else {
            next = Instant::now();
        }
    }
    Ok(())
}
