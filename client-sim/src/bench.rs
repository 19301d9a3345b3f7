//! `yorker-sim bench`: subscribers and a publisher in one command, burst or rate mode.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::fleet::{unix_us, Fleet, FleetConfig, PayloadKind, TopicChoice};
use crate::probe::{ProbeArgs, ProbeChild};
use crate::proto::Proto;
use crate::publisher::{bench_payload, Publisher};
use crate::report::{
    completion_and_spread, cpu_seconds, json_row, loss, percentiles, process_cpu_seconds, row,
};

/// Burst or rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One update at a time; wait until every subscriber has it.
    Burst,
    /// A fixed number of updates per second for a duration.
    Rate,
}

/// Flags of `yorker-sim bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Engine address(es); clients spread over them.
    #[arg(long = "addr", default_value = "127.0.0.1:7000", value_delimiter = ',')]
    pub addrs: Vec<SocketAddr>,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    /// Burst or rate mode.
    #[arg(long, value_enum, default_value_t = Mode::Burst)]
    pub mode: Mode,
    /// Burst mode: number of updates.
    #[arg(long, default_value_t = 50)]
    pub bursts: usize,
    /// Rate mode: updates per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Rate mode: seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Payload bytes (at least 16: publish time and index).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// New connections per second while ramping up (0: as fast as possible).
    #[arg(long, default_value_t = 5000)]
    pub ramp: u64,
    /// Receiver threads (more are added when one ring cannot hold the connections).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Publisher key of the engine.
    #[arg(long, env = "YORKER_PUBLISHER_KEY", default_value = "demo")]
    pub key: String,
    /// Let the server conflate (then skipped updates are not losses).
    #[arg(long)]
    pub conflate: bool,
    /// Protocol of the server under test.
    #[arg(long, value_enum, default_value_t = Proto::Yorker)]
    pub proto: Proto,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Give up waiting for one burst after this many ms (counted as loss).
    #[arg(long, default_value_t = 10_000)]
    pub burst_timeout_ms: u64,
    /// First loopback source address 127.0.0.<N> (one more per 25,000 clients).
    #[arg(long, default_value_t = 1)]
    pub source_base: u8,
    /// Process id of the server under test: its CPU time over the measured window is reported.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Publish to this engine instead of the first --addr (an origin, with the subscribers on
    /// its relays: latency is then origin -> relay -> client).
    #[arg(long)]
    pub publish_addr: Option<SocketAddr>,
    /// Publish by XADD to the Redis stream named like the topic on this Redis server
    /// (HOST:PORT) instead of to the engine, for an engine that ingests it
    /// (`--ingest redis-stream://HOST:PORT/<--topic>`): latency is then producer -> Redis ->
    /// engine -> client.
    #[arg(long, conflicts_with = "publish_jetstream")]
    pub publish_stream: Option<SocketAddr>,
    /// Publish into JetStream on this NATS server (HOST:PORT): a NATS PUB to subject
    /// `<--topic with . for />`, stored by the stream that collects it, for an engine that
    /// ingests that stream (`--ingest nats-jetstream://HOST:PORT/STREAM=<--topic>`): latency is
    /// then producer -> NATS -> engine -> client.
    #[arg(long)]
    pub publish_jetstream: Option<SocketAddr>,
    /// The topic (default: a fresh `bench/<pid>-<n>`).
    #[arg(long)]
    pub topic: Option<String>,
    /// Also probe the server's responsiveness: one more connection sends a PING every this
    /// many ms (yorker PING, Redis PING, NATS PING), first for --probe-idle-s with the
    /// subscribers connected and no publishing, then during the bench; both are reported.
    /// 0: no probe.
    #[arg(long, default_value_t = 0)]
    pub probe_ms: u64,
    /// Seconds of the probe's idle phase.
    #[arg(long, default_value_t = 3)]
    pub probe_idle_s: u64,
    /// yorker: the probe also sends a MESSAGE per interval, answered by a backend stub that
    /// connects with this key (the server needs --backend-key and --anonymous-messages):
    /// MESSAGE -> backend -> RESPONSE and MESSAGE -> ACK, idle and during the bench.
    #[arg(long, env = "YORKER_BACKEND_KEY")]
    pub probe_backend_key: Option<String>,
    /// Run the probe at this SCHED_FIFO priority (`chrt -f`, needs root; 0: normal), so that
    /// when the client cores are saturated the probe's own wake-up delay is not counted as
    /// the server's.
    #[arg(long, default_value_t = 0)]
    pub probe_rt_priority: u8,
    /// With --proto tls: the PEM certificate(s) to trust (the engine's --tls-cert).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
}

fn bar(len: u64, msg: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Runs the benchmark; returns the process exit code (non-zero on loss).
pub fn run(a: &BenchArgs) -> Result<i32, String> {
    if a.size < 16 {
        return Err("--size must be at least 16 (publish time and index)".into());
    }
    let topic = a
        .topic
        .clone()
        .unwrap_or_else(|| format!("bench/{}-{}", std::process::id(), unix_us() % 1_000_000));
    let updates = match a.mode {
        Mode::Burst => a.bursts,
        Mode::Rate => (a.rate * a.duration) as usize,
    };
    let tls =
        match (a.proto, &a.tls_ca) {
            (p, Some(ca)) if p.tls() => Some(crate::proto::tls::client_config(ca)?),
            (p, None) if p.tls() => return Err(
                "--proto tls, wss, nats-tls and nats-wss need --tls-ca (the server's certificate)"
                    .into(),
            ),
            _ => None,
        };
    let fleet = Fleet::start(FleetConfig {
        addrs: a.addrs.clone(),
        conns: a.subs,
        threads: a.threads,
        ramp_per_s: a.ramp,
        topics: TopicChoice {
            names: vec![topic.clone()],
            skew: 0.0,
        },
        conflate: a.conflate,
        slow_fraction: 0.0,
        slow_delay_ms: 0,
        churn_per_s: 0.0,
        payload: PayloadKind::Bench,
        track_updates: updates,
        proto: a.proto,
        seed: 1,
        source_base: a.source_base,
        tls,
    })
    .map_err(|e| format!("cannot start the client fleet: {e}"))?;
    let shared = fleet.shared.clone();

    // Ramp up.
    let pb = bar(a.subs as u64, "connecting", a.json);
    let ramp_limit = Duration::from_secs(60 + a.subs as u64 / a.ramp.max(100));
    let t0 = Instant::now();
    while (shared.subscribed.load(Ordering::Relaxed) as usize) < a.subs {
        pb.set_position(shared.subscribed.load(Ordering::Relaxed));
        if t0.elapsed() > ramp_limit {
            pb.finish_and_clear();
            let r = fleet.stop().map_err(|e| e.to_string())?;
            return Err(format!(
                "only {} of {} subscribers connected within {:?} (connect failures {}, server closes {}, errors {:?})",
                shared.subscribed.load(Ordering::Relaxed),
                a.subs,
                ramp_limit,
                shared.connect_failures.load(Ordering::Relaxed),
                shared.disconnects.load(Ordering::Relaxed),
                r.errors
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pb.finish_and_clear();
    let connect_s = t0.elapsed().as_secs_f64();

    let probe = if a.probe_ms > 0 {
        let mut p = ProbeChild::start(
            &ProbeArgs {
                addr: a.addrs[0],
                proto: a.proto,
                interval_ms: a.probe_ms,
                backend_key: a.probe_backend_key.clone(),
            },
            a.probe_rt_priority,
        )?;
        std::thread::sleep(Duration::from_secs(a.probe_idle_s));
        p.busy()?;
        Some(p)
    } else {
        None
    };
    let addr = a.publish_addr.unwrap_or(a.addrs[0]);
    let mut publisher = match (a.publish_stream, a.publish_jetstream) {
        (Some(redis), _) => Publisher::connect_stream(redis),
        (None, Some(nats)) => Publisher::connect_jetstream(nats),
        (None, None) => Publisher::connect_proto(addr, &a.key, a.proto),
    }
    .map_err(|e| e.to_string())?;
    let server_pid = a.server_pid.map(|p| p.to_string());
    let server_cpu = || server_pid.as_deref().map(process_cpu_seconds);
    let scpu0 = server_cpu();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let first_publish_us = unix_us();
    let mut published = 0usize;
    match a.mode {
        Mode::Burst => {
            let pb = bar(updates as u64, "bursts", a.json);
            for k in 0..updates {
                let now = unix_us();
                publisher
                    .publish(&topic, false, false, &bench_payload(a.size, k as u64, now))
                    .and_then(|_| publisher.flush())
                    .map_err(|e| e.to_string())?;
                published += 1;
                let deadline = Instant::now() + Duration::from_millis(a.burst_timeout_ms);
                while (shared.track.count[k].load(Ordering::Acquire) as usize) < a.subs
                    && Instant::now() < deadline
                {
                    std::hint::spin_loop();
                    std::thread::yield_now();
                }
                pb.inc(1);
            }
            pb.finish_and_clear();
        }
        Mode::Rate => {
            let pb = bar(a.duration, "seconds", a.json);
            let interval = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
            let mut next = Instant::now();
            while published < updates {
                // Publish every update that is due, then sleep to the next one.
                while published < updates && Instant::now() >= next {
                    publisher
                        .publish(
                            &topic,
                            false,
                            false,
                            &bench_payload(a.size, published as u64, unix_us()),
                        )
                        .map_err(|e| e.to_string())?;
                    published += 1;
                    next += interval;
                }
                publisher.flush().map_err(|e| e.to_string())?;
                pb.set_position(start.elapsed().as_secs());
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            // Let the tail arrive: stop when everything did, or nothing moved for a second.
            let mut last = shared.received.load(Ordering::Relaxed);
            let mut still = Instant::now();
            let tail_start = Instant::now();
            let want = (published * a.subs) as u64;
            // Bounded: an overloaded server may take a long time to drain; what has not
            // arrived 3 s after the last publish counts as not delivered.
            while still.elapsed() < Duration::from_secs(1)
                && tail_start.elapsed() < Duration::from_secs(3)
            {
                let now = shared.received.load(Ordering::Relaxed);
                if now >= want {
                    break;
                }
                if now != last {
                    last = now;
                    still = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            pb.finish_and_clear();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let probed = probe.map(|p| p.stop()).transpose()?;
    let scpu = match (scpu0, server_cpu()) {
        (Some(a0), Some(a1)) => Some(a1 - a0),
        _ => None,
    };
    let disconnects = shared.disconnects.load(Ordering::Relaxed);
    let report = fleet.stop().map_err(|e| e.to_string())?;
    let (completion, spread) = completion_and_spread(&shared.track, 0..published);
    let l = loss(&shared.track, published, a.subs as u64, &report);
    let last_rx = (0..published)
        .map(|i| shared.track.last[i].load(Ordering::Relaxed))
        .max()
        .unwrap_or(first_publish_us);
    let span_s = (last_rx.saturating_sub(first_publish_us) as f64 / 1e6).max(1e-6);
    let deliveries_per_s = l.delivered as f64 / span_s;
    let bad =
        l.lost > 0 || report.totals.gaps > 0 || report.totals.duplicates > 0 || disconnects > 0;

    if a.json {
        let v = json!({
            "proto": format!("{:?}", a.proto).to_lowercase(),
            "mode": format!("{:?}", a.mode).to_lowercase(),
            "subs": a.subs,
            "size": a.size,
            "updates": published,
            "rate": if a.mode == Mode::Rate { json!(a.rate) } else { json!(null) },
            "connect_s": connect_s,
            "connect": percentiles(&report.connect),
            "latency": percentiles(&report.latency),
            "completion": percentiles(&completion),
            "spread": percentiles(&spread),
            "deliveries": l.delivered,
            "expected": l.expected,
            "deliveries_per_s": deliveries_per_s.round(),
            "lost": l.lost,
            "gaps": report.totals.gaps,
            "duplicates": report.totals.duplicates,
            "conflated": report.totals.conflated,
            "disconnects": disconnects,
            "errors": report.errors.iter().map(|(c, n)| json!({"code": c, "count": n})).collect::<Vec<_>>(),
            "client_cpu_s": (cpu * 1000.0).round() / 1000.0,
            "server_cpu_s": scpu,
            "server_cpu_us_per_delivery": scpu.map(|c| if l.delivered > 0 { c * 1e6 / l.delivered as f64 } else { 0.0 }),
            "client_cpu_us_per_delivery": if l.delivered > 0 { cpu * 1e6 / l.delivered as f64 } else { 0.0 },
            "elapsed_s": elapsed,
            "probe": probed.as_ref().map(|p| {
                let mut p = p.clone();
                p["interval_ms"] = json!(a.probe_ms);
                p
            }),
            "ok": !bad,
        });
        println!("{v}");
    } else {
        println!(
            "yorker-sim bench: {:?} mode, {} subscribers, {} B payload, {} updates",
            a.mode, a.subs, a.size, published
        );
        println!("connected in {connect_s:.2} s");
        println!("{}", row("connect (to SUBACK)", &report.connect));
        println!("{}", row("delivery latency", &report.latency));
        println!("{}", row("fan-out completion", &completion));
        println!("{}", row("fairness spread", &spread));
        println!(
            "deliveries {} of {} expected, {:.0}/s; lost {} gaps {} duplicates {} conflated {} disconnects {}",
            l.delivered, l.expected, deliveries_per_s, l.lost, report.totals.gaps, report.totals.duplicates, report.totals.conflated, disconnects
        );
        println!(
            "client CPU {:.2} s over {:.2} s ({:.2} us per delivery){}",
            cpu,
            elapsed,
            if l.delivered > 0 {
                cpu * 1e6 / l.delivered as f64
            } else {
                0.0
            },
            if bad { "  ** LOSS **" } else { "" }
        );
        if let Some(p) = &probed {
            let mut rows = vec![
                ("PING idle", "ping_idle"),
                ("PING during bench", "ping_busy"),
            ];
            if a.probe_backend_key.is_some() {
                rows.extend([
                    ("MESSAGE->reply idle", "message_idle"),
                    ("MESSAGE->reply bench", "message_busy"),
                    ("MESSAGE->ACK idle", "ack_idle"),
                    ("MESSAGE->ACK bench", "ack_busy"),
                ]);
            }
            for (name, key) in rows {
                println!("{}", json_row(name, &p[key]));
            }
            if p["lost"].as_u64().unwrap_or(0) > 0 {
                println!("probe: {} requests unanswered or refused", p["lost"]);
            }
        }
        if let Some(c) = scpu {
            println!(
                "server CPU {:.2} s ({:.2} us per delivery)",
                c,
                if l.delivered > 0 {
                    c * 1e6 / l.delivered as f64
                } else {
                    0.0
                }
            );
        }
    }
    Ok(if bad { 1 } else { 0 })
}
