//! `yorker-sim subscribe` and `yorker-sim publish`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use crate::feed::{match_topic, play};
use crate::fleet::{unix_us, Fleet, FleetConfig, PayloadKind, TopicChoice};
use crate::proto::Proto;
use crate::publisher::{bench_payload, Publisher};
use crate::report::row;

/// Flags of `yorker-sim subscribe`.
#[derive(Debug, Clone, Args)]
pub struct SubscribeArgs {
    /// Engine address(es); clients spread over them.
    #[arg(long = "addr", default_value = "127.0.0.1:7000", value_delimiter = ',')]
    pub addrs: Vec<SocketAddr>,
    /// Simulated clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Topics `match/1..=K`; clients pick one with a skewed popularity.
    #[arg(long, default_value_t = 1)]
    pub topics: u32,
    /// Popularity skew (0 uniform; 1 Zipf: one big match, many small ones).
    #[arg(long, default_value_t = 1.0)]
    pub skew: f64,
    /// New connections per second.
    #[arg(long, default_value_t = 5000)]
    pub ramp: u64,
    /// Receiver threads (more are added when one ring cannot hold the connections).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Turn conflation off (every update must arrive).
    #[arg(long)]
    pub no_conflate: bool,
    /// Fraction of slow readers.
    #[arg(long, default_value_t = 0.0)]
    pub slow_fraction: f64,
    /// Pause of a slow reader between reads, ms.
    #[arg(long, default_value_t = 500)]
    pub slow_delay_ms: u64,
    /// Fraction of clients that drop and reconnect (with resume) each second.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Payloads are bench payloads (from `publish --raw`) rather than score events.
    #[arg(long)]
    pub raw: bool,
    /// Seconds to run.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Protocol of the server.
    #[arg(long, value_enum, default_value_t = Proto::Yorker)]
    pub proto: Proto,
    /// First loopback source address 127.0.0.<N> (one more per 25,000 clients); give each
    /// process its own range when several load one server.
    #[arg(long, default_value_t = 1)]
    pub source_base: u8,
}

/// Runs the subscribers for the duration; exit 1 on a loss or duplicate.
pub fn subscribe(a: &SubscribeArgs) -> Result<i32, String> {
    let fleet = Fleet::start(FleetConfig {
        addrs: a.addrs.clone(),
        conns: a.clients,
        threads: a.threads,
        ramp_per_s: a.ramp,
        topics: TopicChoice {
            names: (1..=a.topics.max(1)).map(match_topic).collect(),
            skew: a.skew,
        },
        conflate: !a.no_conflate,
        slow_fraction: a.slow_fraction,
        slow_delay_ms: a.slow_delay_ms,
        churn_per_s: a.churn,
        payload: if a.raw {
            PayloadKind::Bench
        } else {
            PayloadKind::Score
        },
        track_updates: 0,
        proto: a.proto,
        seed: unix_us(),
        source_base: a.source_base,
        tls: None,
    })
    .map_err(|e| e.to_string())?;
    let s = fleet.shared.clone();
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < Duration::from_secs(a.duration) {
        std::thread::sleep(Duration::from_secs(1));
        let rx = s.received.load(Ordering::Relaxed);
        eprintln!(
            "t={:>3}s connected {} subscribed {} received {} (+{}/s) server-closed {} connect-failures {}",
            start.elapsed().as_secs(),
            s.connected.load(Ordering::Relaxed),
            s.subscribed.load(Ordering::Relaxed),
            rx,
            rx - last,
            s.disconnects.load(Ordering::Relaxed),
            s.connect_failures.load(Ordering::Relaxed)
        );
        last = rx;
    }
    let r = fleet.stop().map_err(|e| e.to_string())?;
    println!("{}", row("delivery latency", &r.latency));
    println!("{}", row("connect (to SUBACK)", &r.connect));
    println!(
        "received {} gaps {} duplicates {} conflated {} resets {} reconnects {} goaways {} errors {:?}",
        r.totals.received, r.totals.gaps, r.totals.duplicates, r.totals.conflated, r.totals.resets, r.reconnects, r.goaways, r.errors
    );
    Ok(if r.totals.gaps > 0 || r.totals.duplicates > 0 {
        1
    } else {
        0
    })
}

/// Flags of `yorker-sim publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Engine address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Publisher key.
    #[arg(long, env = "YORKER_PUBLISHER_KEY", default_value = "demo")]
    pub key: String,
    /// Matches to play at once (topics match/1..=N).
    #[arg(long, default_value_t = 1)]
    pub matches: u32,
    /// Speed-up over real time (real time: one event every 10 s, three per ball).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Publish raw benchmark payloads instead of a match.
    #[arg(long)]
    pub raw: bool,
    /// Raw: topic.
    #[arg(long, default_value = "match/1")]
    pub topic: String,
    /// Raw: payload bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Raw: updates per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Seconds to run (0: until stopped; matches restart when they end).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    /// Protocol of the server.
    #[arg(long, value_enum, default_value_t = Proto::Yorker)]
    pub proto: Proto,
}

/// Publishes; returns the exit code.
pub fn publish(a: &PublishArgs) -> Result<i32, String> {
    let mut p = Publisher::connect_proto(a.addr, &a.key, a.proto).map_err(|e| e.to_string())?;
    let limit = (a.duration > 0).then(|| Duration::from_secs(a.duration));
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    if a.raw {
        let interval = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
        let start = Instant::now();
        let mut next = Instant::now();
        let mut i = 0u64;
        while limit.is_none_or(|l| start.elapsed() < l) {
            while Instant::now() >= next {
                p.publish(&a.topic, false, false, &bench_payload(a.size, i, unix_us()))
                    .map_err(|e| e.to_string())?;
                i += 1;
                next += interval;
            }
            p.flush().map_err(|e| e.to_string())?;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        count.store(i, Ordering::Relaxed);
    } else {
        if a.speed <= 0.0 {
            return Err("--speed must be positive".into());
        }
        let step = Duration::from_secs_f64(10.0 / a.speed);
        play(
            &mut p,
            a.matches.max(1),
            step,
            limit,
            &stop,
            &count,
            unix_us(),
        )
        .map_err(|e| e.to_string())?;
    }
    eprintln!("published {} updates", count.load(Ordering::Relaxed));
    Ok(0)
}
