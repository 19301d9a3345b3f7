//! `yorker-sim attack`: hostile or heavy client behaviour against a running engine, with a
//! canary measured before and during. The canary is a NO_CONFLATE subscriber of
//! `canary/probe`, fed 100 updates a second by its own publisher; it reports its delivery
//! latency and any lost update. With `--server-pid` the engine's RSS and CPU are read too.
//!
//! Every loop is bounded by `--seconds`; every connection has timeouts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;
use yorker_wire::{
    frame_type, Decoder, Frame, Hello, Role, Subscribe, SubscribeEntry, MAX_MAX_FRAME,
};

use crate::fleet::unix_us;
use crate::proto::yorker::handshake;
use crate::publisher::{bench_payload, Publisher};
use crate::report::process_cpu_seconds;
use crate::token::{claims, Signer};

/// What the attacking threads do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttackKind {
    /// Anonymous relay HELLOs in a loop (connect, HELLO role relay, read the answer, close).
    RelayHellos,
    /// Subscribers sending SUBSCRIBEs full of new topic names.
    SubscribeFlood,
    /// Connections that announce a large frame and drip it a byte at a time.
    Drip,
    /// Random bytes after connect.
    Garbage,
    /// Connect, HELLO, SUBSCRIBE, close, as fast as possible.
    ReconnectStorm,
    /// Connect, HELLO (with --token / --token-key), wait for WELCOME, close: HELLOs per second.
    Hellos,
    /// Subscribers with a tiny receive buffer that never read, on a topic the attack floods
    /// with 16 KB updates (NO_CONFLATE): the engine must cut them off (write timeout, slow
    /// consumer) without slowing anyone else.
    StalledReaders,
}

/// Flags of `yorker-sim attack`.
#[derive(Debug, Clone, Args)]
pub struct AttackArgs {
    /// The attack.
    #[arg(value_enum)]
    pub kind: AttackKind,
    /// Engine address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Publisher key (the canary's publisher, and --topics).
    #[arg(long, env = "YORKER_PUBLISHER_KEY", default_value = "demo")]
    pub key: String,
    /// Attacking threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Seconds of attack (after --warmup seconds of canary alone).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of canary alone before the attack (the "before" figures).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Publish this many topics (`prep/<i>`, 100-byte values) before starting.
    #[arg(long, default_value_t = 0)]
    pub topics: usize,
    /// The engine's pid: report its RSS and CPU before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Hellos: the token every connection presents (HELLO version 2).
    #[arg(long)]
    pub token: Option<String>,
    /// Hellos: sign a distinct token per connection with this key (every HELLO a signature
    /// check on the server); tokens are minted before the attack starts.
    #[arg(long)]
    pub token_key: Option<PathBuf>,
    /// Drip: connections per thread.
    #[arg(long, default_value_t = 100)]
    pub drip_conns: usize,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Counters of the attacking threads.
#[derive(Debug, Default)]
struct Counts {
    ops: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// The canary's measurements for one window.
#[derive(Debug)]
struct Window {
    latency_us: Histogram<u64>,
    lost: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
            lost: 0,
        }
    }

    fn json(&self) -> serde_json::Value {
        let h = &self.latency_us;
        json!({
            "updates": h.len(),
            "lost": self.lost,
            "p50_us": h.value_at_quantile(0.5),
            "p99_us": h.value_at_quantile(0.99),
            "max_us": h.max(),
        })
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn hello(role: Role, version: u16, token: &str) -> Bytes {
    Frame::Hello(Hello {
        version,
        role,
        client_name: "attack".into(),
        token: token.into(),
    })
    .to_bytes()
    .expect("hello encodes")
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Reads frames until `want` says stop (true) or the connection ends; the frame that stopped.
fn read_until(s: &mut TcpStream, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
    let mut dec = Decoder::new(MAX_MAX_FRAME);
    let mut buf = [0u8; 16384];
    loop {
        match dec.next_frame() {
            Ok(Some(f)) if want(&f) => return Some(f),
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(_) => return None,
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => dec.feed(&buf[..n]),
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One attacking thread until `stop`.
fn attack(
    a: &AttackArgs,
    n: usize,
    tokens: &[String],
    stop: &AtomicBool,
    counts: &Counts,
) -> Result<(), String> {
    let mut rng = Rng((unix_us() ^ ((n as u64 + 1) * 0x9e37_79b9_7f4a_7c15)) | 1);
    let mut i = n;
    let mut drips: Vec<(TcpStream, usize)> = Vec::new();
    let mut stalled: Vec<TcpStream> = Vec::new();
    let mut flood: Option<Publisher> = None;
    let mut flood_seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let step = (|| -> std::io::Result<bool> {
            match a.kind {
                AttackKind::RelayHellos => {
                    let mut s = connect(a.addr)?;
                    s.write_all(&hello(Role::Relay, 1, ""))?;
                    let f =
                        read_until(&mut s, |f| matches!(f, Frame::Error(_) | Frame::Welcome(_)));
                    Ok(matches!(f, Some(Frame::Error(_))))
                }
                AttackKind::SubscribeFlood => {
                    let mut s = connect(a.addr)?;
                    s.write_all(&hello(Role::Subscriber, 1, ""))?;
                    read_until(&mut s, |f| matches!(f, Frame::Welcome(_)));
                    let mut refused = false;
                    for r in 0..20u32 {
                        let entries = (0..64)
                            .map(|_| SubscribeEntry {
                                topic: format!("flood/{:x}", rng.next()),
                                resume: None,
                                conflate: true,
                                presence: false,
                            })
                            .collect();
                        s.write_all(
                            &Frame::Subscribe(Subscribe {
                                request_id: r,
                                entries,
                            })
                            .to_bytes()
                            .expect("subscribe encodes"),
                        )?;
                        match read_until(&mut s, |f| {
                            matches!(f, Frame::SubAck(_) | Frame::Error(_))
                        }) {
                            Some(Frame::SubAck(ack)) => {
                                refused |= ack.entries.iter().any(|e| !e.result.is_subscribed())
                            }
                            _ => return Ok(true),
                        }
                    }
                    Ok(refused)
                }
                AttackKind::Drip => {
                    while drips.len() < a.drip_conns {
                        let mut s = connect(a.addr)?;
                        s.write_all(&hello(Role::Subscriber, 1, ""))?;
                        // A 60,000-byte PUBLISH announced.
                        s.write_all(&[0, 0, 0xea, 0x60, frame_type::PUBLISH])?;
                        s.set_nonblocking(true)?;
                        drips.push((s, 0));
                    }
                    let mut closed = 0;
                    drips.retain_mut(|(s, sent)| {
                        *sent += 1;
                        let alive = s.write_all(&[0]).is_ok();
                        let mut b = [0u8; 4096];
                        let eof = matches!(s.read(&mut b), Ok(0));
                        if !alive || eof {
                            closed += 1;
                        }
                        alive && !eof
                    });
                    counts.refused.fetch_add(closed, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                    Ok(false)
                }
                AttackKind::Garbage => {
                    let mut s = connect(a.addr)?;
                    let junk: Vec<u8> = (0..256).map(|_| rng.next() as u8).collect();
                    s.write_all(&junk)?;
                    let f = read_until(&mut s, |f| matches!(f, Frame::Error(_)));
                    Ok(f.is_some())
                }
                AttackKind::ReconnectStorm => {
                    let mut s = connect(a.addr)?;
                    let b = handshake("storm", &[("match/1".into(), None)], true);
                    s.write_all(&b)?;
                    let f = read_until(&mut s, |f| {
                        matches!(f, Frame::SubAck(_) | Frame::Error(_) | Frame::GoAway(_))
                    });
                    Ok(!matches!(f, Some(Frame::SubAck(_))))
                }
                AttackKind::StalledReaders => {
                    // Thread 0 floods the topic; the others hold never-reading subscribers.
                    if n == 0 {
                        let p = match flood.as_mut() {
                            Some(p) => p,
                            None => flood.insert(
                                Publisher::connect(a.addr, &a.key)
                                    .map_err(|e| std::io::Error::other(e.to_string()))?,
                            ),
                        };
                        for _ in 0..20 {
                            flood_seq += 1;
                            p.publish("flood/stalled", false, false, &[0x5a; 16_384])
                                .map_err(|e| std::io::Error::other(e.to_string()))?;
                        }
                        p.flush()
                            .map_err(|e| std::io::Error::other(e.to_string()))?;
                        std::thread::sleep(Duration::from_millis(10));
                        return Ok(false);
                    }
                    while stalled.len() < 50 {
                        let sock = socket2::Socket::new(
                            socket2::Domain::IPV4,
                            socket2::Type::STREAM,
                            None,
                        )?;
                        sock.set_recv_buffer_size(4096)?;
                        sock.connect_timeout(&a.addr.into(), Duration::from_secs(2))?;
                        let mut s: TcpStream = sock.into();
                        let b = handshake("stalled", &[("flood/stalled".into(), None)], false);
                        s.write_all(&b)?;
                        s.set_nonblocking(true)?;
                        stalled.push(s);
                    }
                    // Keep the ones the server closed counted and replaced; never read data.
                    let mut closed = 0;
                    stalled.retain(|s| {
                        let mut probe = [0u8; 1];
                        let gone = matches!(s.peek(&mut probe), Ok(0))
                            || matches!(s.take_error(), Ok(Some(_)));
                        closed += u64::from(gone);
                        !gone
                    });
                    counts.refused.fetch_add(closed, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                    Ok(false)
                }
                AttackKind::Hellos => {
                    let token = if tokens.is_empty() {
                        a.token.as_deref().unwrap_or("")
                    } else {
                        i += a.threads;
                        &tokens[i % tokens.len()]
                    };
                    let mut s = connect(a.addr)?;
                    s.write_all(&hello(Role::Subscriber, 2, token))?;
                    let f = read_until(&mut s, |f| {
                        matches!(f, Frame::Welcome(_) | Frame::Error(_) | Frame::GoAway(_))
                    });
                    Ok(!matches!(f, Some(Frame::Welcome(_))))
                }
            }
        })();
        match step {
            Ok(refused) => {
                counts.ops.fetch_add(1, Ordering::Relaxed);
                if refused {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    Ok(())
}

/// The canary: subscribes to `canary/probe` (NO_CONFLATE) and measures each update.
fn canary(
    addr: SocketAddr,
    key: &str,
    stop: Arc<AtomicBool>,
    attack_started: Arc<AtomicBool>,
) -> Result<(Window, Window), String> {
    let mut sub = connect(addr).map_err(|e| format!("canary: {e}"))?;
    let b = handshake("canary", &[("canary/probe".into(), None)], false);
    sub.write_all(&b).map_err(|e| e.to_string())?;
    let mut p = Publisher::connect(addr, key).map_err(|e| format!("canary publisher: {e}"))?;
    let pub_stop = stop.clone();
    let publisher = std::thread::spawn(move || {
        let mut i = 0u64;
        while !pub_stop.load(Ordering::Relaxed) {
            if p.publish(
                "canary/probe",
                false,
                false,
                &bench_payload(32, i, unix_us()),
            )
            .and_then(|_| p.flush())
            .is_err()
            {
                return;
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    sub.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let (mut before, mut during) = (Window::new(), Window::new());
    let mut dec = Decoder::new(MAX_MAX_FRAME);
    let mut last: Option<u64> = None;
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let n = match sub.read(&mut buf) {
            Ok(0) => return Err("the server closed the canary".into()),
            Ok(n) => n,
            Err(_) => continue,
        };
        dec.feed(&buf[..n]);
        while let Ok(Some(f)) = dec.next_frame() {
            let Frame::Update(u) = f else { continue };
            if u.payload.len() < 16 || u.flags & yorker_wire::update_flags::SNAPSHOT != 0 {
                last = Some(u.seq);
                continue;
            }
            let sent = u64::from_be_bytes(u.payload[..8].try_into().expect("8 bytes"));
            let w = if attack_started.load(Ordering::Relaxed) {
                &mut during
            } else {
                &mut before
            };
            let _ = w.latency_us.record(unix_us().saturating_sub(sent).max(1));
            if let Some(l) = last {
                w.lost += u.seq.saturating_sub(l + 1);
            }
            last = Some(u.seq);
        }
    }
    let _ = publisher.join();
    Ok((before, during))
}

/// Runs the attack; exit 1 when the canary lost an update or was cut off.
pub fn run(a: &AttackArgs) -> Result<i32, String> {
    if a.topics > 0 {
        let mut p = Publisher::connect(a.addr, &a.key).map_err(|e| e.to_string())?;
        for i in 0..a.topics {
            p.publish(&format!("prep/{i}"), false, false, &[0x42; 100])
                .map_err(|e| e.to_string())?;
        }
        p.flush().map_err(|e| e.to_string())?;
        // Let the engine apply them before the "before" figures are taken.
        std::thread::sleep(Duration::from_millis(500));
    }
    let tokens: Vec<String> = match &a.token_key {
        None => Vec::new(),
        Some(k) => {
            let signer = Signer::from_file(k, None)?;
            (0..20_000)
                .map(|i| {
                    signer.sign(&claims(
                        Some(&format!("u{i}")),
                        3600,
                        "subscriber",
                        &[],
                        &[],
                    ))
                })
                .collect::<Result<_, _>>()?
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let canary_thread = {
        let (addr, key, stop, started) = (a.addr, a.key.clone(), stop.clone(), started.clone());
        std::thread::spawn(move || canary(addr, &key, stop, started))
    };
    std::thread::sleep(Duration::from_secs(a.warmup));
    let rss_before = a.server_pid.map(rss_kb);
    let cpu_before = a.server_pid.map(|p| process_cpu_seconds(&p.to_string()));
    let counts = Arc::new(Counts::default());
    let attack_stop = Arc::new(AtomicBool::new(false));
    started.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let tokens = Arc::new(tokens);
    let workers: Vec<_> = (0..a.threads)
        .map(|n| {
            let (a, stop, counts, tokens) = (
                a.clone(),
                attack_stop.clone(),
                counts.clone(),
                tokens.clone(),
            );
            std::thread::spawn(move || attack(&a, n, &tokens, &stop, &counts))
        })
        .collect();
    let mut rss_peak = rss_before.unwrap_or(0);
    while t0.elapsed() < Duration::from_secs(a.seconds) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(p) = a.server_pid {
            rss_peak = rss_peak.max(rss_kb(p));
        }
    }
    attack_stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().map_err(|_| "an attack thread panicked")??;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = a
        .server_pid
        .zip(cpu_before)
        .map(|(p, b)| process_cpu_seconds(&p.to_string()) - b);
    // Let what the attack left behind settle, then read the server again.
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = a.server_pid.map(rss_kb);
    stop.store(true, Ordering::Relaxed);
    let (before, during) = canary_thread.join().map_err(|_| "the canary panicked")??;
    let ops = counts.ops.load(Ordering::Relaxed);
    let out = json!({
        "attack": format!("{:?}", a.kind),
        "threads": a.threads,
        "seconds": elapsed,
        "ops": ops,
        "ops_per_s": ops as f64 / elapsed,
        "refused": counts.refused.load(Ordering::Relaxed),
        "failed": counts.failed.load(Ordering::Relaxed),
        "server_cpu_s": cpu,
        "server_cpu_us_per_op": cpu.map(|c| c * 1e6 / ops.max(1) as f64),
        "rss_kb_before": rss_before,
        "rss_kb_peak": a.server_pid.map(|_| rss_peak),
        "rss_kb_after": rss_after,
        "canary_before": before.json(),
        "canary_during": during.json(),
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    }
    Ok(
        if before.lost + during.lost > 0 || during.latency_us.is_empty() {
            1
        } else {
            0
        },
    )
}
