//! One conformance suite for every client SDK. Each SDK ships a *driver*: a small program that
//! puts the SDK behind a line protocol (commands on stdin, events on stdout; docs/CLIENTS.md,
//! "Conformance"). The suite runs a real engine (in this process, on loopback), a TCP proxy it
//! can stall or cut, and a publisher, and checks what each driver reports:
//!
//! handshake; subscribe with snapshot; live updates in order; resume after the client's
//! socket is killed (exactly the missed updates); a silent server noticed (a stalled proxy);
//! GOAWAY honoured with its hint; RESET after a server restart (new epoch); an invalid token
//! surfaced without retries; reconnect backoff spread over 1,000 clients; no socket left open
//! after close.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use yorker_engine::{Server, ServerConfig};
use yorker_wire::{Frame, Hello, Publish, Role};

/// How long any expected event may take.
pub const T: Duration = Duration::from_secs(10);

/// A driver process.
#[allow(missing_debug_implementations)]
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// Every line seen so far (for failure messages).
    pub log: Vec<String>,
    name: String,
}

impl Driver {
    /// Starts `cmd` (a driver).
    pub fn start(name: &str, mut cmd: Command) -> Driver {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start the driver: {e}"));
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Driver {
            child,
            stdin,
            lines,
            log: Vec::new(),
            name: name.into(),
        }
    }

    /// Sends one command.
    pub fn cmd(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").expect("driver stdin");
        self.stdin.flush().ok();
    }

    /// The next line, within `wait`.
    pub fn next(&mut self, wait: Duration) -> Option<String> {
        let l = self.lines.recv_timeout(wait).ok()?;
        self.log.push(l.clone());
        Some(l)
    }

    /// Lines until one starts with `prefix` (returned); panics after [`T`].
    pub fn expect(&mut self, prefix: &str) -> String {
        let until = Instant::now() + T;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => continue,
                None => panic!(
                    "{}: no {prefix:?} within {T:?}; lines so far:\n{}",
                    self.name,
                    self.log.join("\n")
                ),
            }
        }
    }

    /// The next `update`/`reset` line, skipping everything else.
    pub fn next_update(&mut self) -> Vec<String> {
        let l = loop {
            let l = self.expect("");
            if l.starts_with("update ") || l.starts_with("reset ") {
                break l;
            }
            if l.starts_with("unknown") || l.starts_with("error") {
                panic!("{}: {l}", self.name);
            }
        };
        l.split_whitespace().map(str::to_string).collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of the engine that can stall (forward nothing, keep the sockets) or cut
/// every connection. Its connection count is the clients' socket count.
#[allow(missing_debug_implementations)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    open: Arc<AtomicUsize>,
}

impl Proxy {
    /// A proxy to `target` (read at every connection, so a restarted engine on the same port
    /// is found).
    pub fn start(target: Arc<Mutex<SocketAddr>>) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let open = Arc::new(AtomicUsize::new(0));
        let (f, c, o) = (frozen.clone(), conns.clone(), open.clone());
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { continue };
                let to = *target.lock().unwrap();
                let Ok(server) = TcpStream::connect(to) else {
                    continue; // the client sees a close: the engine is down
                };
                c.lock().unwrap().push(client.try_clone().unwrap());
                c.lock().unwrap().push(server.try_clone().unwrap());
                o.fetch_add(1, Ordering::SeqCst);
                let both = Arc::new(AtomicUsize::new(2));
                for (mut a, mut b) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (f, o, both) = (f.clone(), o.clone(), both.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            match a.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if f.load(Ordering::SeqCst) {
                                        continue; // stalled: swallow
                                    }
                                    if b.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        // A stalled middlebox does not pass a close on either: the client
                        // must notice the silence itself (cut() closes everything).
                        if !f.load(Ordering::SeqCst) {
                            let _ = b.shutdown(Shutdown::Both);
                            let _ = a.shutdown(Shutdown::Both);
                        }
                        if both.fetch_sub(1, Ordering::SeqCst) == 1 {
                            o.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                }
            }
        });
        Proxy {
            addr,
            frozen,
            conns,
            open,
        }
    }

    /// Stop forwarding in both directions (a stalled middlebox); sockets stay open.
    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }

    /// Cut every connection (the client's socket is killed).
    pub fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Client connections open through the proxy.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// The engine under the suite, restartable on the same port.
#[allow(missing_debug_implementations)]
pub struct Engine {
    /// The running server.
    pub server: Option<Server>,
    /// Its address (shared with the proxy).
    pub addr: Arc<Mutex<SocketAddr>>,
    cfg: ServerConfig,
}

/// The publisher key of the suite's engines.
pub const KEY: &str = "conformance-key";

impl Engine {
    /// An engine on a free loopback port: heartbeat 400 ms (so silence is noticed in about a
    /// second), GOAWAY hint exactly 700 ms.
    pub fn start() -> Engine {
        let mut cfg = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cores: 1,
            ..ServerConfig::default()
        };
        cfg.core.publisher_key = Some(KEY.into());
        cfg.core.heartbeat_ms = 400;
        cfg.core.goaway_base_ms = 700;
        cfg.core.goaway_jitter_ms = 0;
        cfg.core.max_connections = 4000;
        cfg.recv_buffers = 256;
        cfg.sq_entries = 256;
        let server = Server::start(cfg.clone()).expect("engine starts");
        let addr = server.local_addr();
        cfg.listen = addr;
        Engine {
            server: Some(server),
            addr: Arc::new(Mutex::new(addr)),
            cfg,
        }
    }

    /// Graceful shutdown (GOAWAY with the 700 ms hint to every client), then a new engine on
    /// the same port: a new epoch.
    pub fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.begin_shutdown();
            let t = Instant::now();
            while !s.is_finished() {
                assert!(t.elapsed() < T, "engine did not stop");
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(s);
        }
        let t = Instant::now();
        loop {
            match Server::start(self.cfg.clone()) {
                Ok(s) => {
                    self.server = Some(s);
                    return;
                }
                Err(e) if t.elapsed() < T => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("engine did not restart: {e}"),
            }
        }
    }

    /// Publishes `payload` to `topic` over a fresh publisher connection (returns once the
    /// engine has it).
    pub fn publish(&self, topic: &str, payloads: &[Vec<u8>]) {
        let addr = *self.addr.lock().unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(
            &Frame::Hello(Hello {
                version: 1,
                role: Role::Publisher,
                client_name: "conformance".into(),
                token: KEY.into(),
            })
            .to_bytes()
            .unwrap(),
        );
        for p in payloads {
            out.extend_from_slice(
                &Frame::Publish(Publish {
                    flags: 0,
                    topic: topic.into(),
                    payload: bytes::Bytes::copy_from_slice(p),
                })
                .to_bytes()
                .unwrap(),
            );
        }
        // A PING answered means everything before it was applied.
        out.extend_from_slice(&Frame::Ping { nonce: 1 }.to_bytes().unwrap());
        s.write_all(&out).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut dec = yorker_wire::Decoder::new(yorker_wire::DEFAULT_MAX_FRAME);
        let mut buf = [0u8; 4096];
        loop {
            while let Ok(Some(f)) = dec.next_frame() {
                if matches!(f, Frame::Pong { .. }) {
                    return;
                }
            }
            let n = s.read(&mut buf).expect("publisher read");
            assert!(n > 0, "publisher closed");
            dec.feed(&buf[..n]);
        }
    }

    /// Connections the engine holds.
    pub fn connections(&self) -> u64 {
        self.server
            .as_ref()
            .map_or(0, |s| s.totals().core.connections)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Waits until `cond` holds (bounded by [`T`]).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < T, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The suite, against the driver `start()` produces (called once per scenario group).
pub fn run_suite(name: &str, start: impl Fn() -> Driver) {
    let mut engine = Engine::start();
    let proxy = Proxy::start(engine.addr.clone());
    let topic = "match/7";
    engine.publish(topic, &[vec![1], vec![2], vec![3]]);

    // Handshake, subscribe with snapshot, live updates in order.
    let mut d = start();
    d.cmd(&format!("connect {} -", proxy.addr));
    d.cmd(&format!("subscribe {topic}"));
    let epoch1: u64 = d
        .expect("connected ")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        d.expect("subscribed "),
        format!("subscribed {topic} 0"),
        "{name}"
    );
    assert_eq!(
        d.next_update(),
        ["update", topic, "3", "1", "03"],
        "{name}: snapshot"
    );
    let live: Vec<Vec<u8>> = (4..=23u8).map(|i| vec![i]).collect();
    engine.publish(topic, &live);
    for i in 4..=23u8 {
        let u = d.next_update();
        assert_eq!(
            u,
            ["update", topic, &i.to_string(), "0", &hex(&[i])],
            "{name}: live in order"
        );
    }

    // Resume after the socket is killed: exactly the missed updates.
    proxy.cut();
    let l = d.expect("disconnected ");
    assert!(
        l.starts_with("disconnected connection_lost retry "),
        "{name}: {l}"
    );
    let missed: Vec<Vec<u8>> = (24..=28u8).map(|i| vec![i]).collect();
    engine.publish(topic, &missed);
    assert_eq!(
        d.expect("subscribed "),
        format!("subscribed {topic} 1"),
        "{name}: resumed"
    );
    for i in 24..=28u8 {
        let u = d.next_update();
        assert_eq!(
            u,
            ["update", topic, &i.to_string(), "0", &hex(&[i])],
            "{name}: replay"
        );
    }

    // A silent server (stalled proxy) is noticed within a few heartbeats, then resumed.
    proxy.freeze(true);
    let t = Instant::now();
    let l = d.expect("disconnected ");
    assert!(l.starts_with("disconnected server_silent"), "{name}: {l}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "{name}: silence noticed late"
    );
    proxy.freeze(false);
    proxy.cut();
    assert_eq!(
        d.expect("subscribed "),
        format!("subscribed {topic} 1"),
        "{name}: resumed after silence"
    );

    // GOAWAY honoured with its hint, then RESET after the restart (new epoch). The GOAWAY
    // leaves after `sent`, so a client that waits for the hint reconnects at least 700 ms
    // after it (measured from here: the driver's lines may reach us late on a loaded machine).
    let sent = Instant::now();
    engine.restart();
    let l = d.expect("disconnected ");
    let w: Vec<&str> = l.split_whitespace().collect();
    assert_eq!(
        &w[..4],
        ["disconnected", "goaway", "13", "700"],
        "{name}: {l}"
    );
    let retry: u64 = w[5].parse().unwrap_or(0);
    assert!(
        retry >= 700,
        "{name}: reconnect in {retry} ms, before the 700 ms hint"
    );
    engine.publish(topic, &[vec![99]]);
    let c = d.expect("connected ");
    assert!(
        sent.elapsed() >= Duration::from_millis(700),
        "{name}: reconnected {:?} after the GOAWAY, before its 700 ms hint",
        sent.elapsed()
    );
    let epoch2: u64 = c.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_ne!(epoch1, epoch2, "{name}: a restart is a new epoch");
    assert_eq!(
        d.expect("subscribed "),
        format!("subscribed {topic} 2"),
        "{name}: reset"
    );
    assert_eq!(
        d.next_update(),
        ["reset", topic, "1", "63"],
        "{name}: RESET with the new value"
    );

    // Close: no socket left open.
    d.cmd("close");
    d.expect("closed");
    wait_until("the client's socket to close", || proxy.open() == 0);
    wait_until("the engine to drop the session", || {
        engine.connections() == 0
    });
    drop(d);

    // An invalid token is surfaced, and not retried.
    let mut strict_cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: 1,
        ..ServerConfig::default()
    };
    let dir =
        std::env::temp_dir().join(format!("yorker-conformance-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("k.key"), [5u8; 32]).unwrap();
    let spec = format!("{}", dir.join("k.key").display()).parse().unwrap();
    strict_cfg.core.tokens = Some(Arc::new(
        yorker_engine::proto::auth::TokenVerifier::new(vec![spec], None, None).unwrap(),
    ));
    strict_cfg.core.policy.require_token = true;
    strict_cfg.recv_buffers = 64;
    strict_cfg.sq_entries = 64;
    let strict = Server::start(strict_cfg).unwrap();
    let mut d = start();
    d.cmd(&format!("connect {} not.a.token", strict.local_addr()));
    let l = d.expect("disconnected ");
    assert_eq!(l, "disconnected error 7 retry none", "{name}: {l}");
    drop(d);

    // Backoff spread over 1,000 clients (a port nothing listens on).
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut d = start();
    d.cmd(&format!("swarm 1000 {closed}"));
    let l = d.expect("delays");
    let delays: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(delays.len(), 1000, "{name}");
    let mut counts = std::collections::HashMap::new();
    for &x in &delays {
        *counts.entry(x).or_insert(0usize) += 1;
    }
    let most = counts.values().copied().max().unwrap();
    let (lo, hi) = (*delays.iter().min().unwrap(), *delays.iter().max().unwrap());
    eprintln!(
        "{name}: first reconnect delays over 1,000 clients: {} distinct values in {lo}..={hi} ms, at most {most} clients share one",
        counts.len()
    );
    // Millisecond delays under a 250 ms ceiling cannot all differ (1,000 clients, 250
    // values); full jitter spreads them evenly: no value shared by more than 2% of clients.
    assert!(
        counts.len() >= 150,
        "{name}: only {} distinct delays",
        counts.len()
    );
    assert!(
        most <= 20,
        "{name}: {most} clients would reconnect in the same millisecond"
    );
    assert!(hi - lo >= 150, "{name}: delays span only {lo}..{hi} ms");
}

/// Builds the TypeScript client (`npm ci` when its node_modules is missing, then `tsc`): its
/// tests import `dist/`. Returns sdk/typescript.
pub fn build_typescript() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../typescript");
    if !dir.join("node_modules/.bin/tsc").exists() {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .expect(
                "npm (Debian packages nodejs and npm; scripts/install-test-deps.sh installs them)",
            );
        assert!(st.success(), "npm ci failed");
    }
    let st = Command::new(dir.join("node_modules/.bin/tsc"))
        .args(["-p", "tsconfig.json"])
        .current_dir(&dir)
        .status()
        .expect("tsc");
    assert!(st.success(), "the TypeScript client does not compile");
    dir
}
