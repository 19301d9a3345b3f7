//! A latency probe that runs beside a benchmark: one extra connection that sends a PING every
//! few milliseconds and times the answer (yorker PING/PONG, Redis `PING`, NATS `PING`), and for
//! yorker optionally a MESSAGE to a backend stub that REPLYs at once (message -> backend ->
//! reply, and the ACK). Each sample is filed under the phase it was sent in: `idle` (before
//! the publisher starts) or `busy` (while the engine fans out), so the two are measured side
//! by side in one run.
//!
//! One request at a time: when an answer takes longer than the interval, the next probe waits
//! for it (no queueing delay is hidden, none is added).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use yorker_wire::{Decoder, Frame, Hello, Message, Role, Welcome, MAX_MAX_FRAME};

use crate::proto::Proto;
use crate::report::percentiles;

/// Phases a sample is filed under.
pub const IDLE: usize = 0;
/// While the engine fans out.
pub const BUSY: usize = 1;

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The server.
    pub addr: SocketAddr,
    /// Its protocol.
    pub proto: Proto,
    /// Time between two probes.
    pub interval: Duration,
    /// yorker: also time MESSAGE -> backend -> RESPONSE through a backend stub connected with
    /// this key (the server needs `--backend-key` and `--anonymous-messages`).
    pub backend_key: Option<String>,
}

/// Samples per phase, microseconds.
#[derive(Debug)]
pub struct ProbeReport {
    /// PING round trips.
    pub ping: [Histogram<u64>; 2],
    /// MESSAGE -> RESPONSE round trips (through the backend stub).
    pub message: [Histogram<u64>; 2],
    /// MESSAGE -> ACK.
    pub ack: [Histogram<u64>; 2],
    /// Requests that got no answer within 5 s, or were refused.
    pub lost: u64,
}

/// A running probe.
#[derive(Debug)]
pub struct Probe {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    handle: JoinHandle<Result<ProbeReport, String>>,
    stub: Option<JoinHandle<Result<u64, String>>>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

const ANSWER_WITHIN: Duration = Duration::from_secs(5);

impl Probe {
    /// Connects and starts probing in the `idle` phase.
    pub fn start(cfg: ProbeConfig) -> Result<Probe, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(IDLE));
        let stub = match (&cfg.backend_key, cfg.proto) {
            (Some(key), Proto::Yorker) => {
                let mut b = YorkerConn::connect(cfg.addr, Role::Backend, key, 3)?;
                let stop = stop.clone();
                Some(std::thread::spawn(move || b.serve_backend(&stop)))
            }
            _ => None,
        };
        let mut conn = Conn::connect(&cfg)?;
        let (s, p) = (stop.clone(), phase.clone());
        let handle = std::thread::Builder::new()
            .name("yorker-sim probe".into())
            .spawn(move || conn.run(&cfg, &s, &p))
            .map_err(|e| e.to_string())?;
        Ok(Probe {
            stop,
            phase,
            handle,
            stub,
        })
    }

    /// Files the next samples under `phase`.
    pub fn set_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// Stops and returns the samples.
    pub fn stop(self) -> Result<ProbeReport, String> {
        self.stop.store(true, Ordering::Relaxed);
        let r = self
            .handle
            .join()
            .map_err(|_| "the probe thread panicked".to_string())??;
        if let Some(s) = self.stub {
            s.join()
                .map_err(|_| "the backend stub panicked".to_string())??;
        }
        Ok(r)
    }
}

/// The probe's connection, per protocol.
enum Conn {
    Yorker(YorkerConn),
    Line {
        s: TcpStream,
        buf: Vec<u8>,
        /// The answer line (`+PONG` for Redis, `PONG` for NATS).
        pong: &'static [u8],
    },
}

impl Conn {
    fn connect(cfg: &ProbeConfig) -> Result<Conn, String> {
        match cfg.proto {
            Proto::Yorker => Ok(Conn::Yorker(YorkerConn::connect(
                cfg.addr,
                Role::Subscriber,
                "",
                // PING alone works with any version (an older engine, for before/after runs).
                if cfg.backend_key.is_some() { 3 } else { 1 },
            )?)),
            Proto::Redis | Proto::Nats => {
                let s = TcpStream::connect(cfg.addr).map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(ANSWER_WITHIN))
                    .map_err(|e| e.to_string())?;
                let mut c = Conn::Line {
                    s,
                    buf: Vec::new(),
                    pong: if cfg.proto == Proto::Redis {
                        b"+PONG"
                    } else {
                        b"PONG"
                    },
                };
                if cfg.proto == Proto::Nats {
                    if let Conn::Line { s, .. } = &mut c {
                        s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
                            .map_err(|e| e.to_string())?;
                    }
                }
                Ok(c)
            }
            Proto::Mqtt
            | Proto::Ws
            | Proto::Tls
            | Proto::Wss
            | Proto::NatsWs
            | Proto::NatsTls
            | Proto::NatsWss => Err("the probe speaks yorker (TCP), Redis and NATS".into()),
        }
    }

    /// One PING; its round trip.
    fn ping(&mut self, nonce: u64) -> Result<Option<Duration>, String> {
        let t0 = Instant::now();
        match self {
            Conn::Yorker(y) => {
                y.send(&Frame::Ping { nonce })?;
                let got = y.wait(|f| matches!(f, Frame::Pong { nonce: n } if *n == nonce))?;
                Ok(got.map(|_| t0.elapsed()))
            }
            Conn::Line { s, buf, pong } => {
                s.write_all(b"PING\r\n").map_err(|e| e.to_string())?;
                let deadline = Instant::now() + ANSWER_WITHIN;
                loop {
                    while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                        let line: Vec<u8> = buf.drain(..end + 2).take(end).collect();
                        if line == *pong {
                            return Ok(Some(t0.elapsed()));
                        }
                        if line == b"PING" {
                            // NATS asks us too.
                            s.write_all(b"PONG\r\n").map_err(|e| e.to_string())?;
                        }
                    }
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    let mut b = [0u8; 4096];
                    match s.read(&mut b) {
                        Ok(0) => return Err("the server closed the probe".into()),
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
        }
    }

    fn run(
        &mut self,
        cfg: &ProbeConfig,
        stop: &AtomicBool,
        phase: &AtomicUsize,
    ) -> Result<ProbeReport, String> {
        let mut r = ProbeReport {
            ping: [hist(), hist()],
            message: [hist(), hist()],
            ack: [hist(), hist()],
            lost: 0,
        };
        let messages = cfg.backend_key.is_some() && matches!(self, Conn::Yorker(_));
        let mut next = Instant::now();
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            next = (next + cfg.interval).max(Instant::now());
            n += 1;
            let ph = phase.load(Ordering::Relaxed);
            match self.ping(n)? {
                Some(rtt) => r.ping[ph].saturating_record(rtt.as_micros() as u64),
                None => r.lost += 1,
            }
            if messages {
                let Conn::Yorker(y) = self else {
                    unreachable!("checked")
                };
                let t0 = Instant::now();
                y.send(&Frame::Message(Message {
                    request_id: n as u32,
                    routing_key: String::new(),
                    payload: Bytes::from_static(b"probe"),
                }))?;
                let mut acked = false;
                let mut answered = false;
                let deadline = Instant::now() + ANSWER_WITHIN;
                while !(acked && answered) && Instant::now() < deadline {
                    let f = y.wait(|f| {
                        matches!(f, Frame::Ack { request_id, .. } | Frame::Response { request_id, .. } if *request_id == n as u32)
                    })?;
                    match f {
                        Some(Frame::Ack { code: 0, .. }) => {
                            acked = true;
                            r.ack[ph].saturating_record(t0.elapsed().as_micros() as u64);
                        }
                        Some(Frame::Ack { .. }) => break, // refused: counted below
                        Some(Frame::Response { .. }) => {
                            answered = true;
                            r.message[ph].saturating_record(t0.elapsed().as_micros() as u64);
                        }
                        _ => break,
                    }
                }
                if !(acked && answered) {
                    r.lost += 1;
                }
            }
        }
        Ok(r)
    }
}

/// A blocking yorker connection (version 3).
struct YorkerConn {
    s: TcpStream,
    dec: Decoder,
    welcome: Welcome,
}

impl YorkerConn {
    fn connect(
        addr: SocketAddr,
        role: Role,
        token: &str,
        need_version: u16,
    ) -> Result<YorkerConn, String> {
        let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut c = YorkerConn {
            s,
            dec: Decoder::new(MAX_MAX_FRAME),
            welcome: Welcome {
                version: 0,
                session_id: 0,
                epoch: 0,
                heartbeat_ms: 0,
                limits: yorker_wire::Limits {
                    max_frame: 0,
                    max_subscriptions: 0,
                    outbox_limit: 0,
                },
            },
        };
        c.send(&Frame::Hello(Hello {
            version: 3,
            role,
            client_name: "yorker-sim probe".into(),
            token: token.into(),
        }))?;
        match c.wait(|f| matches!(f, Frame::Welcome(_) | Frame::Error(_)))? {
            Some(Frame::Welcome(w)) if w.version >= need_version => c.welcome = w,
            Some(Frame::Welcome(w)) => {
                return Err(format!(
                    "the server speaks protocol version {}; the probe needs {need_version}",
                    w.version
                ))
            }
            Some(Frame::Error(e)) => {
                return Err(format!("the server refused the probe: {}", e.message))
            }
            _ => return Err("no WELCOME for the probe".into()),
        }
        Ok(c)
    }

    fn send(&mut self, f: &Frame) -> Result<(), String> {
        self.s
            .write_all(&f.to_bytes().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    }

    /// The next frame `want` accepts, within [`ANSWER_WITHIN`] (others are skipped; an ERROR
    /// ends the probe).
    fn wait(&mut self, want: impl Fn(&Frame) -> bool) -> Result<Option<Frame>, String> {
        let deadline = Instant::now() + ANSWER_WITHIN;
        let mut b = vec![0u8; 16 * 1024];
        loop {
            while let Some(f) = self.dec.next_frame().map_err(|e| e.to_string())? {
                if want(&f) {
                    return Ok(Some(f));
                }
                if let Frame::Error(e) = f {
                    return Err(format!("the server closed the probe: {}", e.message));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.read_some(&mut b, "the server closed the probe")?;
        }
    }

    /// One read (bounded by the socket's timeout) into the decoder; a timeout is not an error.
    fn read_some(&mut self, b: &mut [u8], closed: &str) -> Result<(), String> {
        match self.s.read(b) {
            Ok(0) => Err(closed.into()),
            Ok(n) => {
                self.dec.feed(&b[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The backend stub: answers every CLIENT_MESSAGE with a REPLY at once, until `stop`.
    /// Returns the number answered.
    fn serve_backend(&mut self, stop: &AtomicBool) -> Result<u64, String> {
        let mut answered = 0;
        let mut last_ping = Instant::now();
        let hb = Duration::from_millis(self.welcome.heartbeat_ms as u64 / 2);
        let mut b = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            self.read_some(&mut b, "the server closed the backend stub")?;
            while let Some(f) = self.dec.next_frame().map_err(|e| e.to_string())? {
                match f {
                    Frame::ClientMessage(m) => {
                        self.send(&Frame::Reply {
                            session_id: m.session_id,
                            request_id: m.request_id,
                            payload: m.payload,
                        })?;
                        answered += 1;
                    }
                    Frame::Error(e) => return Err(format!("backend stub refused: {}", e.message)),
                    _ => {}
                }
            }
            if last_ping.elapsed() >= hb {
                self.send(&Frame::Ping { nonce: 0 })?;
                last_ping = Instant::now();
            }
        }
        Ok(answered)
    }
}

/// Flags of `yorker-sim probe` (normally started by `yorker-sim bench --probe-ms`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The server.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Its protocol.
    #[arg(long, value_enum, default_value_t = Proto::Yorker)]
    pub proto: Proto,
    /// Time between two probes, ms.
    #[arg(long, default_value_t = 2)]
    pub interval_ms: u64,
    /// yorker: also probe MESSAGE -> backend stub -> RESPONSE (the stub connects with this key).
    #[arg(long)]
    pub backend_key: Option<String>,
}

/// `yorker-sim probe`: probes until stdin says `stop` (or closes); `busy` on stdin switches
/// the phase samples are filed under. Prints `ready` once connected, then one JSON object.
pub fn run(a: &ProbeArgs) -> Result<i32, String> {
    let p = Probe::start(ProbeConfig {
        addr: a.addr,
        proto: a.proto,
        interval: Duration::from_millis(a.interval_ms.max(1)),
        backend_key: a.backend_key.clone(),
    })?;
    println!("ready");
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        match line.trim() {
            "busy" => p.set_phase(BUSY),
            "idle" => p.set_phase(IDLE),
            _ if n == 0 => break,
            "stop" => break,
            other => return Err(format!("probe: unknown command {other:?}")),
        }
    }
    let r = p.stop()?;
    println!("{}", r.to_json());
    Ok(0)
}

impl ProbeReport {
    /// Percentiles of every series, and the losses.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ping_idle": percentiles(&self.ping[IDLE]),
            "ping_busy": percentiles(&self.ping[BUSY]),
            "message_idle": percentiles(&self.message[IDLE]),
            "message_busy": percentiles(&self.message[BUSY]),
            "ack_idle": percentiles(&self.ack[IDLE]),
            "ack_busy": percentiles(&self.ack[BUSY]),
            "lost": self.lost,
        })
    }
}

/// `yorker-sim probe` as a child process, optionally at a real-time priority (`chrt -f`), so
/// that on a machine whose cores are all busy the probe's own scheduling delay does not count
/// as the server's.
#[derive(Debug)]
pub struct ProbeChild {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl ProbeChild {
    /// Starts the probe and waits until it is connected.
    pub fn start(a: &ProbeArgs, rt_priority: u8) -> Result<ProbeChild, String> {
        use std::io::BufRead;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = if rt_priority > 0 {
            let mut c = std::process::Command::new("chrt");
            c.args(["-f", &rt_priority.to_string()]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        cmd.arg("probe")
            .args(["--addr", &a.addr.to_string()])
            .args(["--proto", &format!("{:?}", a.proto).to_lowercase()])
            .args(["--interval-ms", &a.interval_ms.to_string()]);
        if let Some(k) = &a.backend_key {
            cmd.args(["--backend-key", k]);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the probe ({}): {e}", exe.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the probe did not start (said {:?})", line.trim()));
        }
        Ok(ProbeChild {
            child,
            stdin,
            stdout,
        })
    }

    /// Files the next samples under the busy phase.
    pub fn busy(&mut self) -> Result<(), String> {
        writeln!(self.stdin, "busy").map_err(|e| e.to_string())
    }

    /// Stops the probe; its report.
    pub fn stop(mut self) -> Result<serde_json::Value, String> {
        use std::io::BufRead;
        writeln!(self.stdin, "stop").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("the probe failed ({status})"));
        }
        serde_json::from_str(&line).map_err(|e| format!("probe report {line:?}: {e}"))
    }
}
