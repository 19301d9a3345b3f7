//! Running `yorker serve` and `yorker relay`: the engine, the relay feed threads, signals, the
//! stats line, and an exit code that tells the truth. Shared by the `yorker` binary and
//! `yorker-sim` (which runs the same engine as a child process for its demo).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use yorker_engine::{Server, Totals};
use yorker_relay::follower::{Follower, Source};
use yorker_relay::origin::{FeedTap, Origin};
use yorker_relay::upstream::UpstreamConfig;
use yorker_relay::{FeedStats, Injector};

use crate::admin::{Admin, AdminState};
use crate::config::{LogFormat, RelayArgs, ServeArgs};

/// Runs `yorker serve` until SIGTERM/SIGINT; exit 0 after a graceful shutdown, 1 on a start-up
/// error or when a shard died, 2 on bad flags.
pub fn serve(args: ServeArgs) -> ExitCode {
    run(args, None)
}

/// Runs `yorker relay`: an engine whose updates come from an origin (multicast feed) or an
/// upstream engine (TCP) instead of publishers.
pub fn relay(args: ServeArgs, relay: RelayArgs) -> ExitCode {
    init_logs(args.log_format);
    if let Err(e) = relay.check(&args) {
        tracing::error!("{e}");
        return ExitCode::from(2);
    }
    run(args, Some(relay))
}

/// Runs `yorker sink` until SIGTERM or SIGINT: 0 when stopped, 1 when the engine refused its
/// key, 2 for a bad destination.
pub fn sink(args: crate::config::SinkArgs) -> ExitCode {
    init_logs(args.log_format);
    let to = match args.to.parse::<yorker_ingest::sink::Destination>() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("--to: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = yorker_ingest::sink::SinkConfig {
        engine: args.engine,
        backend_key: args.backend_key,
        to,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    }
    match yorker_ingest::sink::run(&cfg, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("sink: {e}");
            ExitCode::from(1)
        }
    }
}

fn start_follower(
    server: &Server,
    args: &ServeArgs,
    r: &RelayArgs,
    stats: Arc<FeedStats>,
) -> std::io::Result<Follower> {
    let upstream = UpstreamConfig {
        addr: r
            .upstream
            .first()
            .cloned()
            .or_else(|| r.recovery.first().cloned())
            .unwrap_or_default(),
        key: r.upstream_key.clone(),
        connect_timeout: Duration::from_secs(5),
    };
    let source = match (r.upstream.len(), args.multicast_if) {
        (1, _) => Source::Upstream,
        (2.., _) => Source::Upstreams(r.upstream.clone()),
        (0, Some(interface)) => Source::Multicast {
            groups: r.multicast_in.clone(),
            interface,
            receiver: r.receiver(args.multicast_channel),
            fallback: r.recovery.iter().skip(1).cloned().collect(),
        },
        (0, None) => unreachable!("RelayArgs::check requires --multicast-if"),
    };
    Follower::start(source, upstream, Injector::for_server(server, stats))
}

/// Logs to stderr through `tracing`: `YORKER_LOG` filters (default `info`, e.g.
/// `YORKER_LOG=debug` or `YORKER_LOG=yorker_relay=debug,info`), as text or one JSON object per
/// line. Idempotent.
pub fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("YORKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => b.json().with_current_span(false).try_init(),
    };
}

/// How often free heap pages go back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// How often the main thread looks for signals and dead shards.
const WATCH: Duration = Duration::from_millis(100);

fn run(args: ServeArgs, relay: Option<RelayArgs>) -> ExitCode {
    init_logs(args.log_format);
    let settings = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    // Register signals before starting shards so an early SIGTERM is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    if args.allow_anonymous_relays && args.relay_key.is_none() {
        tracing::warn!("--allow-anonymous-relays: any client may connect as a relay and receive every topic (each such session costs a snapshot of every topic); set --relay-key instead");
    }
    let mut cfg = settings.server;
    let cores = cfg.cores;
    let tokens = cfg.core.tokens.clone();
    let tls = cfg.core.tls.clone();
    if let Some(t) = &tls {
        if t.ktls_available {
            tracing::info!("TLS on: user-space rustls (the kernel offers kTLS; yorker does not hand sessions to it yet)");
        } else {
            tracing::info!("TLS on: user-space rustls (no kernel TLS on this host)");
        }
    }
    let feed_stats = Arc::new(FeedStats::default());
    // An origin's feed is a tap on the engine's bus; its threads start once the engine has a
    // registry and an address.
    let queue = settings.multicast.as_ref().map(|_| {
        let (tap, queue) = FeedTap::channel(feed_stats.clone());
        cfg.tap = Some(tap);
        queue
    });
    // The metrics recorder goes in before the shards start: their histograms bind to it.
    let metrics = match args.admin_listen.map(|_| crate::admin::install_recorder()) {
        Some(Err(e)) => {
            tracing::error!("cannot set up metrics: {e}");
            return ExitCode::from(1);
        }
        Some(Ok(h)) => Some(h),
        None => None,
    };
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        "listening on {} with {} core(s), {} connection slots per core",
        server.local_addr(),
        cores,
        server.files_per_shard()
    );
    let mut origin = match (&settings.multicast, queue) {
        (Some(m), Some(q)) => {
            match Origin::start(
                m,
                server.local_addr(),
                server.registry().clone(),
                q,
                feed_stats.clone(),
            ) {
                Ok(o) => {
                    tracing::info!(
                        "multicasting every update to {:?} (NAKs on udp {})",
                        m.groups,
                        server.local_addr()
                    );
                    Some(o)
                }
                Err(e) => {
                    tracing::error!(
                        "cannot start the multicast feed (interface {}, NAKs on udp {}): {e}",
                        m.interface,
                        server.local_addr()
                    );
                    return ExitCode::from(1);
                }
            }
        }
        _ => None,
    };
    let mut follower = match &relay {
        None => None,
        Some(r) => match start_follower(&server, &args, r, feed_stats.clone()) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!("cannot follow the origin: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let mut ingest = match args.ingest.clone() {
        None => None,
        Some(cfg) => match yorker_ingest::Ingest::start(
            cfg,
            Injector::for_server(&server, feed_stats.clone()),
        ) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::error!("cannot start the ingest: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let feed = origin.is_some() || relay.is_some() || ingest.is_some();
    let server = Arc::new(server);
    let mut admin = None;
    let mut drain_request = None;
    if let (Some(addr), Some(metrics)) = (args.admin_listen, metrics) {
        let state = Arc::new(AdminState::new(
            server.clone(),
            metrics,
            args.publisher_key.clone(),
            feed.then(|| feed_stats.clone()),
            relay.is_some() || ingest.is_some(),
        ));
        drain_request = Some(state.drain.clone());
        match Admin::start(addr, state) {
            Ok(a) => {
                tracing::info!("admin listener on http://{}", a.local_addr());
                admin = Some(a);
            }
            Err(e) => {
                tracing::error!("{e}");
                server.begin_shutdown();
                return ExitCode::from(1);
            }
        }
    }
    let stats_stop = Arc::new(AtomicBool::new(false));
    let stats_thread = (args.stats_interval > 0).then(|| {
        let (s, stop, fs) = (server.clone(), stats_stop.clone(), feed_stats.clone());
        let every = Duration::from_secs(args.stats_interval);
        std::thread::Builder::new()
            .name("yorker-stats".into())
            .spawn(move || stats_loop(&s, every, feed.then_some(&*fs), &stop))
            .ok()
    });
    // Until SIGTERM or SIGINT, or a shard dies. SIGHUP re-reads the token keys (rotation).
    // Every TRIM_EVERY the allocator gives free pages back, so that memory a burst took (a
    // reconnect storm, a flood of partial frames) does not stay resident.
    let mut failed = false;
    let mut drain_over = None;
    let mut last_trim = Instant::now();
    'watch: loop {
        if let Some(over) = drain_request
            .as_ref()
            .and_then(|d| *d.lock().unwrap_or_else(|e| e.into_inner()))
        {
            drain_over = Some(over);
            break 'watch;
        }
        if last_trim.elapsed() >= TRIM_EVERY {
            yorker_uring::release_free_heap();
            last_trim = Instant::now();
        }
        for sig in signals.pending() {
            if sig == SIGHUP {
                if let Some(t) = &tls {
                    match t.reload() {
                        Ok(()) => tracing::info!(
                            "SIGHUP: TLS certificate reloaded (open connections keep theirs)"
                        ),
                        Err(e) => tracing::warn!(
                            "SIGHUP: TLS certificate not reloaded, the old one stays: {e}"
                        ),
                    }
                }
                match &tokens {
                    Some(v) => match v.reload() {
                        Ok(n) => tracing::info!("SIGHUP: {n} token key(s) reloaded"),
                        Err(e) => {
                            tracing::warn!("SIGHUP: keys not reloaded, the old ones stay: {e}")
                        }
                    },
                    None => tracing::info!("SIGHUP: nothing to reload (no --jwt-key)"),
                }
            } else {
                tracing::info!("signal {sig}: stopping (GOAWAY to every client, draining)");
                break 'watch;
            }
        }
        let dead = server.dead_shards();
        if !dead.is_empty() {
            tracing::error!(
                "shard(s) {dead:?} ended unexpectedly: sending GOAWAY on the others, draining, exiting 1 (a supervisor should restart yorker)"
            );
            failed = true;
            break;
        }
        std::thread::sleep(WATCH);
    }
    if let Some(f) = follower.as_mut() {
        f.stop();
    }
    if let Some(i) = ingest.as_mut() {
        i.stop();
    }
    match drain_over {
        Some(over) => {
            tracing::info!(
                over_ms = over.as_millis() as u64,
                "draining: accepting nothing, GOAWAY spread over the window"
            );
            server.begin_drain(over);
        }
        None => server.begin_shutdown(),
    }
    // A second signal aborts the drain.
    std::thread::spawn(move || {
        if signals.forever().any(|s| s != SIGHUP) {
            tracing::warn!("second signal, exiting now");
            std::process::exit(130);
        }
    });
    while !server.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    stats_stop.store(true, Ordering::Release);
    if let Some(Some(t)) = stats_thread {
        let _ = t.join();
    }
    if let Some(mut a) = admin.take() {
        a.stop();
    }
    if let Some(o) = origin.as_mut() {
        o.stop();
    }
    let t = server.totals();
    tracing::info!(
        "stopped. {}",
        stats_line(&t, &Totals::default(), Duration::ZERO)
    );
    if feed {
        tracing::info!("{}", feed_stats.line());
    }
    // Every other holder of the server is gone: the exit code reports every shard's end.
    let server = Arc::try_unwrap(server).expect("the stats thread has been joined");
    match server.join() {
        Ok(()) if !failed => ExitCode::SUCCESS,
        Ok(()) => ExitCode::from(1),
        Err(e) => {
            tracing::error!("shard error: {e}");
            ExitCode::from(1)
        }
    }
}

fn stats_loop(server: &Server, every: Duration, feed: Option<&FeedStats>, stop: &AtomicBool) {
    let mut last = server.totals();
    let mut at = Instant::now();
    loop {
        // Sleep in short steps so a stop is seen at once.
        let until = Instant::now() + every;
        while Instant::now() < until {
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        let t = server.totals();
        tracing::info!(
            "{} fanout_max_us={}",
            stats_line(&t, &last, at.elapsed()),
            server.take_fanout_max_us()
        );
        if let Some(f) = feed {
            tracing::info!("{}", f.line());
        }
        last = t;
        at = Instant::now();
    }
}

fn stats_line(t: &Totals, last: &Totals, dt: Duration) -> String {
    let secs = dt.as_secs_f64();
    let rate = |now: u64, before: u64| {
        if secs > 0.0 {
            format!("{:.0}", (now - before) as f64 / secs)
        } else {
            "-".into()
        }
    };
    let sends = t.core.sends - last.core.sends;
    let enters = (t.enters - last.enters).max(1);
    format!(
        "conns={} subs={} topics={} updates_in={} deliveries={} deliveries/s={} sends/enter={:.1} frames/send={:.1} conflated={} urgent={} slow_closed={} errors_sent={} write_timeouts={} outbox_bytes={} inbound_bytes={} frame_timeouts={} auth_refused={} tokens_verified={} tokens_expired={} messages={} messages_acked={} messages_refused={} posts={} posts_refused={} replies={} replies_dropped={} control_dropped={}",
        t.core.connections,
        t.core.subscriptions,
        t.topics,
        t.core.updates_in,
        t.core.deliveries,
        rate(t.core.deliveries, last.core.deliveries),
        sends as f64 / enters as f64,
        (t.core.frames_sent - last.core.frames_sent) as f64 / sends.max(1) as f64,
        t.core.conflated,
        t.core.urgent,
        t.core.slow_disconnects,
        t.core.errors_sent,
        t.core.write_timeouts,
        t.core.outbox_bytes,
        t.core.inbound_bytes,
        t.core.frame_timeouts,
        t.core.auth_refused,
        t.core.tokens_verified,
        t.core.tokens_expired,
        t.core.messages_in,
        t.core.messages_acked,
        t.core.messages_refused,
        t.core.posts,
        t.core.posts_refused,
        t.core.replies,
        t.core.replies_dropped,
        t.core.control_dropped,
    )
}
