//! Turning measurements into the bench summary: percentiles, completion and fairness, loss,
//! CPU; as a human table or one JSON object.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::fleet::{Report, UpdateTrack};

/// CPU seconds (user + system) this process used so far, from /proc/self/stat.
pub fn cpu_seconds() -> f64 {
    process_cpu_seconds("self")
}

/// CPU seconds (user + system) of process `pid` ("self" for this one), from /proc.
pub fn process_cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Per-update fan-out completion (publish to last receiver) and fairness spread (first to last
/// receiver), over the tracked updates `range` that reached at least one receiver.
pub fn completion_and_spread(
    track: &UpdateTrack,
    range: std::ops::Range<usize>,
) -> (Histogram<u64>, Histogram<u64>) {
    let mut completion = Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds");
    let mut spread = Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds");
    use std::sync::atomic::Ordering::Relaxed;
    for i in range {
        if i >= track.count.len() || track.count[i].load(Relaxed) == 0 {
            continue;
        }
        let (first, last, sent) = (
            track.first[i].load(Relaxed),
            track.last[i].load(Relaxed),
            track.sent[i].load(Relaxed),
        );
        if sent != u64::MAX {
            completion.record(last.saturating_sub(sent).max(1)).ok();
        }
        spread.record(last.saturating_sub(first).max(1)).ok();
    }
    (completion, spread)
}

/// Percentiles of a µs histogram as JSON (ms).
pub fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "count": h.len(),
    })
}

/// One line of a percentile table.
pub fn row(name: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("{name:<22} (none)");
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "{name:<22} p50 {:>9.3}  p90 {:>9.3}  p99 {:>9.3}  p99.9 {:>9.3}  max {:>9.3} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    )
}

/// Loss accounting for a run where every subscriber should have received `expected` updates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loss {
    /// Deliveries expected.
    pub expected: u64,
    /// Deliveries counted by the tracker.
    pub delivered: u64,
    /// Expected but neither delivered nor legally conflated.
    pub lost: u64,
}

/// Computes [`Loss`].
pub fn loss(track: &UpdateTrack, published: usize, subscribers: u64, report: &Report) -> Loss {
    use std::sync::atomic::Ordering::Relaxed;
    let delivered: u64 = track.count[..published.min(track.count.len())]
        .iter()
        .map(|c| c.load(Relaxed) as u64)
        .sum();
    let expected = published as u64 * subscribers;
    Loss {
        expected,
        delivered,
        lost: expected.saturating_sub(delivered + report.totals.conflated),
    }
}

/// A table row from [`percentiles`]' JSON (for reports that crossed a process boundary).
pub fn json_row(name: &str, v: &Value) -> String {
    if v.is_null() {
        return format!("{name:<22} (none)");
    }
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "{name:<22} p50 {:>9.3}  p90 {:>9.3}  p99 {:>9.3}  p99.9 {:>9.3}  max {:>9.3} ms",
        f("p50_ms"),
        f("p90_ms"),
        f("p99_ms"),
        f("p999_ms"),
        f("max_ms")
    )
}
