//! `yorker-sim demo`: the engine, a few thousand simulated clients and a simulated match
//! day, for about 20 seconds, then a summary. Everything it starts, it stops.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::feed::{match_topic, play};
use crate::fleet::{Fleet, FleetConfig, PayloadKind, TopicChoice};
use crate::proto::Proto;
use crate::publisher::Publisher;
use crate::report::{completion_and_spread, cpu_seconds, row};

/// Flags of `yorker-sim demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Simulated game clients.
    #[arg(long, default_value_t = 3000)]
    pub clients: usize,
    /// Matches played at once (one topic each; clients prefer the first, like one big match
    /// and several small ones).
    #[arg(long, default_value_t = 8)]
    pub matches: u32,
    /// Seconds the match day lasts.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Milliseconds between events of one match (three events per ball).
    #[arg(long, default_value_t = 60)]
    pub step_ms: u64,
    /// Engine cores [default: half the online cores, at least 1].
    #[arg(long)]
    pub cores: Option<usize>,
    /// Fraction of clients on a slow mobile link (they get conflated updates).
    #[arg(long, default_value_t = 0.05)]
    pub slow_fraction: f64,
    /// Fraction of clients that drop and reconnect each second (they resume).
    #[arg(long, default_value_t = 0.01)]
    pub churn: f64,
}

/// Kills the engine if the demo fails half-way.
struct EngineGuard(Option<Child>);

impl Drop for EngineGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_engine(cores: usize, key: &str) -> Result<(EngineGuard, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--stats-interval",
            "0",
            "--publisher-key",
            key,
        ])
        .args([
            "--cores",
            &cores.to_string(),
            "--goaway-base-ms",
            "200",
            "--goaway-jitter-ms",
            "800",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the engine: {e}"))?;
    let stderr = child.stderr.take().expect("piped");
    let guard = EngineGuard(Some(child));
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .ok_or("the engine exited during start-up")?
            .map_err(|e| e.to_string())?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("unexpected engine line: {line}"))?;
        }
        if line.contains("ERROR") {
            return Err(format!("engine: {line}"));
        }
    };
    // Keep draining the engine's stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok((guard, addr))
}

/// Runs the demo; returns the exit code.
pub fn run(a: &DemoArgs) -> Result<i32, String> {
    let online = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let cores = a.cores.unwrap_or((online / 2).max(1));
    let key = "demo";
    let (mut engine, addr) = start_engine(cores, key)?;
    println!(
        "yorker demo: engine on {addr} ({cores} core(s)), {} clients, {} matches, {} s",
        a.clients, a.matches, a.seconds
    );

    let steps = (a.seconds * 1000 / a.step_ms.max(1) + 50) as usize;
    let fleet = Fleet::start(FleetConfig {
        addrs: vec![addr],
        conns: a.clients,
        threads: 1,
        ramp_per_s: 5000,
        topics: TopicChoice {
            names: (1..=a.matches).map(match_topic).collect(),
            skew: 1.0,
        },
        conflate: true,
        slow_fraction: a.slow_fraction,
        slow_delay_ms: 250,
        churn_per_s: a.churn,
        payload: PayloadKind::Score,
        track_updates: steps * a.matches as usize,
        proto: Proto::Yorker,
        seed: 7,
        source_base: 1,
        tls: None,
    })
    .map_err(|e| format!("cannot start the clients: {e}"))?;
    let shared = fleet.shared.clone();
    let t0 = Instant::now();
    while (shared.subscribed.load(Ordering::Relaxed) as usize) < a.clients {
        if t0.elapsed() > Duration::from_secs(60) {
            let shared = fleet.shared.clone();
            let _ = fleet.stop();
            return Err(format!(
                "only {} of {} clients subscribed within 60 s ({} connected, {} connect failures, {} closed by the server)",
                shared.subscribed.load(Ordering::Relaxed),
                a.clients,
                shared.connected.load(Ordering::Relaxed),
                shared.connect_failures.load(Ordering::Relaxed),
                shared.disconnects.load(Ordering::Relaxed)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{} clients subscribed in {:.2} s",
        a.clients,
        t0.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let mut publisher = Publisher::connect(addr, key).map_err(|e| e.to_string())?;
    let feed = {
        let (stop, published) = (stop.clone(), published.clone());
        let (matches, step) = (a.matches, Duration::from_millis(a.step_ms));
        std::thread::spawn(move || {
            play(&mut publisher, matches, step, None, &stop, &published, 2026)
        })
    };
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last = (0u64, Instant::now());
    while start.elapsed() < Duration::from_secs(a.seconds) {
        std::thread::sleep(Duration::from_millis(500));
        let rx = shared.received.load(Ordering::Relaxed);
        let rate = (rx - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (rx, Instant::now());
        let line = format!(
            "t={:>4.1}s  clients {}  updates published {}  deliveries {} ({:.0}/s)",
            start.elapsed().as_secs_f64(),
            shared.connected.load(Ordering::Relaxed),
            published.load(Ordering::Relaxed),
            rx,
            rate
        );
        if tty {
            print!("\r{line}   ");
            let _ = std::io::stdout().flush();
        } else {
            println!("{line}");
        }
    }
    if tty {
        println!();
    }
    stop.store(true, Ordering::SeqCst);
    let feed_result = feed.join().map_err(|_| "feed thread panicked")?;
    // Let in-flight updates land before the clients stop counting.
    std::thread::sleep(Duration::from_millis(300));
    let cpu = cpu_seconds() - cpu0;
    let report = fleet.stop().map_err(|e| e.to_string())?;

    // Graceful engine stop: SIGTERM, GOAWAY, drain, exit 0.
    let mut child = engine.0.take().expect("engine running");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().map_err(|e| e.to_string())?;

    let total = published.load(Ordering::Relaxed) as usize;
    let (completion, spread) = completion_and_spread(&shared.track, 0..steps * a.matches as usize);
    println!();
    println!(
        "summary ({} s, {} updates published, {} delivered)",
        a.seconds, total, report.totals.received
    );
    println!("{}", row("delivery latency", &report.latency));
    println!("{}", row("  slow readers", &report.latency_slow));
    println!("{}", row("fan-out completion", &completion));
    println!("{}", row("fairness spread", &spread));
    println!("{}", row("connect (to SUBACK)", &report.connect));
    println!(
        "losses {}  duplicates {}  conflated (slow readers) {}  reconnects {} (resumed)  resets {}",
        report.totals.gaps,
        report.totals.duplicates,
        report.totals.conflated,
        report.reconnects,
        report.totals.resets
    );
    println!("client CPU {cpu:.2} s; engine exited with {status}");
    if let Err(e) = feed_result {
        return Err(format!("match feed failed: {e}"));
    }
    let ok = report.totals.gaps == 0 && report.totals.duplicates == 0 && status.success();
    println!(
        "{}",
        if ok {
            "demo OK"
        } else {
            "demo FAILED: see the counts above"
        }
    );
    Ok(if ok { 0 } else { 1 })
}
