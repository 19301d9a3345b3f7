//! Relays over real sockets.
//!
//! * In-process, on loopback: the relay role of the protocol, and a chain of TCP relays.
//! * In a network namespace of their own (the test re-runs itself under `unshare -n`, so no
//!   multicast ever reaches the host's interfaces): an origin and two relay *processes* on a
//!   multicast feed with 5% datagram loss injected by nftables, `kill -9` of a relay, and an
//!   origin restart.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use std::sync::Arc;

use yorker_relay::follower::{Follower, Source};
use yorker_relay::upstream::UpstreamConfig;
use yorker_relay::{FeedStats, Injector};
use yorker_wire::*;

// ---------------------------------------------------------------------------------------------
// A client that checks what it receives
// ---------------------------------------------------------------------------------------------

/// What one client knows of one topic.
#[derive(Debug, Default, Clone)]
struct Seen {
    seq: u64,
    payload: Vec<u8>,
    resets: u64,
}

/// A subscriber to every topic of a list, on the one client session of `yorker-wire`, that
/// checks for every update: per-topic order (the session counts duplicates and steps back),
/// and on non-conflating subscriptions no gap at all (a skipped number without RESET would be
/// a silent loss).
struct Checker {
    stream: TcpStream,
    cs: ClientSession,
    conflate: bool,
    topics: Vec<String>,
    seen: HashMap<String, Seen>,
    epoch: u64,
    name: String,
    start: Instant,
    /// SUBACK results of the current connection, by subscription.
    results: Vec<Option<SubResult>>,
}

impl Checker {
    fn connect(addr: SocketAddr, topics: &[String], conflate: bool, name: &str) -> Checker {
        let mut cs = ClientSession::new(ClientConfig {
            name: name.into(),
            ..ClientConfig::default()
        });
        for t in topics {
            cs.subscribe(t, conflate);
        }
        let mut k = Checker {
            stream: TcpStream::connect(addr).expect("connect"),
            cs,
            conflate,
            topics: topics.to_vec(),
            seen: HashMap::new(),
            epoch: 0,
            name: name.into(),
            start: Instant::now(),
            results: vec![None; topics.len()],
        };
        k.open();
        k
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Opens the session on the current stream and waits for every SUBACK.
    fn open(&mut self) -> Vec<SubResult> {
        self.stream.set_nodelay(true).unwrap();
        assert!(self.cs.poll_connect(self.now()));
        self.cs.on_connected(self.now());
        self.results = vec![None; self.topics.len()];
        assert!(
            self.run_until(Duration::from_secs(10), |k| k
                .results
                .iter()
                .all(|r| r.is_some())),
            "{}: no SUBACK",
            self.name
        );
        self.results.iter().map(|r| r.expect("answered")).collect()
    }

    /// Moves to another engine; the session resumes every topic from the last update held.
    fn reconnect(&mut self, addr: SocketAddr, _topics: &[String]) -> Vec<SubResult> {
        self.cs.reconnect_now(self.now());
        while self.cs.poll_event().is_some() {}
        self.stream = TcpStream::connect(addr).expect("connect");
        self.open()
    }

    fn on_event(&mut self, ev: ClientEvent) -> bool {
        match ev {
            ClientEvent::Connected { epoch, .. } => self.epoch = epoch,
            ClientEvent::Subscribed { index, result } => {
                assert!(result.is_subscribed(), "{}: {:?}", self.name, result);
                self.results[index] = Some(result);
            }
            ClientEvent::Update { index, update, .. } | ClientEvent::Reset { index, update } => {
                let topic = &self.topics[index];
                let s = self.seen.entry(topic.clone()).or_default();
                if update.flags & update_flags::RESET != 0 {
                    s.resets += 1;
                }
                s.seq = update.seq;
                s.payload = update.payload.to_vec();
                let sub = &self.cs.subscriptions()[index];
                assert_eq!(
                    sub.duplicates, 0,
                    "{}: {topic}: a duplicate or a step back",
                    self.name
                );
                if !self.conflate {
                    assert_eq!(
                        sub.gaps, 0,
                        "{}: {topic}: gap without RESET on a non-conflating subscription",
                        self.name
                    );
                }
            }
            ClientEvent::Disconnected { .. } => return false,
            ClientEvent::Unsubscribed(u) => {
                panic!("{}: update for unknown topic id {}", self.name, u.topic_id)
            }
            _ => {}
        }
        true
    }

    /// Reads until `done` holds for this checker; false on timeout or connection loss.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Checker) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 65536];
        while !done(self) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            let out = self.cs.poll_transmit(self.now());
            if !out.is_empty() && self.stream.write_all(&out).is_err() {
                return false;
            }
            self.stream
                .set_read_timeout(Some(
                    left.clamp(Duration::from_millis(1), Duration::from_millis(100)),
                ))
                .unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => self.cs.on_disconnected(self.now()),
                Ok(n) => self.cs.handle_bytes(&buf[..n], self.now()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => self.cs.on_disconnected(self.now()),
            }
            if self.cs.poll_timeout().is_some_and(|t| t <= self.now()) {
                self.cs.handle_timeout(self.now());
            }
            while let Some(ev) = self.cs.poll_event() {
                if !self.on_event(ev) {
                    return false;
                }
            }
        }
        true
    }

    fn holds(&self, latest: &HashMap<String, Vec<u8>>) -> bool {
        latest
            .iter()
            .all(|(t, p)| self.seen.get(t).is_some_and(|s| &s.payload == p))
    }
}

fn topics(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("match/{i}")).collect()
}

/// Publishes `count` updates round-robin over `topics`, paced so that they spread over many
/// datagrams; returns the latest payload of each topic.
fn publish(
    p: &mut Client,
    topics: &[String],
    count: usize,
    tag: &str,
    pace: Duration,
) -> HashMap<String, Vec<u8>> {
    let mut latest = HashMap::new();
    for i in 0..count {
        let t = &topics[i % topics.len()];
        let payload = format!("{tag}:{t}:{i}").into_bytes();
        let flags = if i % 17 == 0 { update_flags::URGENT } else { 0 };
        p.publish(t, flags, &payload);
        latest.insert(t.clone(), payload);
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
    latest
}

// ---------------------------------------------------------------------------------------------
// In-process, loopback
// ---------------------------------------------------------------------------------------------

#[test]
fn relay_role_gets_every_topic_then_every_update() {
    let server = start(config(2));
    let addr = server.local_addr();
    let mut p = Client::connect(addr, Role::Publisher);
    p.publish("a", 0, b"a1");
    p.publish("b", 0, b"b1");
    p.publish("a", 0, b"a2");
    // The publisher's shard applies them asynchronously.
    wait_for(Duration::from_secs(5), "three publishes applied", || {
        let r = server.registry();
        r.len() == 2 && r.seq(&r.get_or_create("a").unwrap()) == 2
    });

    let mut r = Client::connect(addr, Role::Relay);
    let epoch = r.welcome.as_ref().unwrap().epoch;
    let mut names = HashMap::new();
    let mut snap = HashMap::new();
    loop {
        match r.next(Duration::from_secs(5)).expect("snapshot frames") {
            Frame::Topic { topic_id, name } => {
                names.insert(topic_id, name);
            }
            Frame::Update(u) => {
                assert_eq!(u.flags, update_flags::SNAPSHOT);
                snap.insert(names[&u.topic_id].clone(), (u.seq, u.payload));
            }
            Frame::Synced {
                topics, epoch: e, ..
            } => {
                assert_eq!((topics, e), (2, epoch));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(snap["a"].0, 2);
    assert_eq!(&snap["b"].1[..], b"b1");
    // Live: a new topic is introduced by TOPIC before its first UPDATE; nothing conflated.
    p.publish("c", update_flags::URGENT, b"c1");
    for i in 0..50u32 {
        p.publish("a", 0, &i.to_be_bytes());
    }
    match r.next(Duration::from_secs(5)) {
        Some(Frame::Topic { topic_id, name }) => {
            assert_eq!(name, "c");
            names.insert(topic_id, name);
        }
        other => panic!("expected TOPIC, got {other:?}"),
    }
    let u = r.next_update(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (&names[&u.topic_id][..], u.flags),
        ("c", update_flags::URGENT)
    );
    for seq in 3..53 {
        let u = r.next_update(Duration::from_secs(5)).unwrap();
        assert_eq!((&names[&u.topic_id][..], u.seq), ("a", seq));
    }
    // A relay may neither subscribe nor publish.
    r.publish("a", 0, b"no");
    r.expect_error(ErrorCode::UnexpectedFrame);
}

#[test]
fn relay_key_is_enforced() {
    let mut cfg = config(1);
    cfg.core.relay_key = Some("relay-secret".into());
    let server = start(cfg);
    let mut c = Client::raw(server.local_addr());
    c.send(&Frame::Hello(Hello {
        version: 1,
        role: Role::Relay,
        client_name: "r".into(),
        token: "wrong".into(),
    }));
    c.expect_error(ErrorCode::AuthFailed);
}

#[test]
fn tcp_relays_chain_and_clients_move_between_them() {
    let origin = start(config(1));
    let mut relay_cfg = config(2);
    relay_cfg.core.publisher_key = None;
    let relay1 = start(relay_cfg.clone());
    let relay2 = start(relay_cfg);
    let follow = |server: &yorker_engine::Server, up: SocketAddr| {
        Follower::start(
            Source::Upstream,
            UpstreamConfig {
                addr: up.to_string(),
                key: Some(RELAY_KEY.into()),
                connect_timeout: Duration::from_secs(2),
            },
            Injector::for_server(server, Arc::new(FeedStats::default())),
        )
        .expect("follower starts")
    };
    let _f1 = follow(&relay1, origin.local_addr());
    // relay2 follows relay1: relays chain.
    let _f2 = follow(&relay2, relay1.local_addr());
    let ts = topics(4);
    let mut p = Client::connect(origin.local_addr(), Role::Publisher);
    let first = publish(&mut p, &ts, 40, "one", Duration::ZERO);
    // relay2 may connect before relay1 synced: relay1's epoch then changes, relay2 is sent
    // away to resynchronise and reconnects (bounded backoff); under a loaded CI that has taken
    // more than 10 s once.
    wait_for(Duration::from_secs(30), "relay2 synced", || {
        relay2.registry().epoch() == origin.registry().epoch()
            && relay2.registry().len() == ts.len()
    });
    let mut k = Checker::connect(relay2.local_addr(), &ts, false, "chain");
    assert!(k.run_until(Duration::from_secs(10), |k| k.holds(&first)));
    let second = publish(&mut p, &ts, 400, "two", Duration::ZERO);
    assert!(k.run_until(Duration::from_secs(10), |k| k.holds(&second)));
    // Same epoch and numbers on every relay: moving from relay2 to relay1 resumes.
    assert_eq!(k.epoch, origin.registry().epoch());
    let results = k.reconnect(relay1.local_addr(), &ts);
    assert!(
        results.iter().all(|r| *r == SubResult::Resumed),
        "{results:?}"
    );
    let third = publish(&mut p, &ts, 40, "three", Duration::ZERO);
    assert!(k.run_until(Duration::from_secs(10), |k| k.holds(&third)));
    assert!(k.seen.values().all(|s| s.resets == 0));
    // Both relays hold the origin's numbers.
    for t in &ts {
        let seq = |s: &yorker_engine::Server| {
            let r = s.registry();
            r.seq(&r.get_or_create(t).unwrap())
        };
        wait_for(Duration::from_secs(10), "relays caught up", || {
            seq(&relay1) == seq(&origin) && seq(&relay2) == seq(&origin)
        });
    }
}

/// Issue 11, item 3: one forged 34-byte NAK used to make an origin multicast up to 1,024
/// datagrams again. NAKs must carry the relay key's tag and a fresh send time, and each source
/// is rate-limited. (Run on the host: the feed's multicast sends go nowhere here, the
/// retransmit ring and the NAK port work all the same.)
#[test]
fn naks_need_the_relay_key_and_are_rate_limited() {
    use std::sync::atomic::Ordering::Relaxed;
    use yorker_relay::origin::{FeedTap, Origin};
    use yorker_relay::MulticastOut;
    use yorker_wire::feed::{sign_nak, FeedHeader, Kind};
    let mut cfg = config(1);
    // Every update must fit one feed datagram.
    cfg.core.max_frame = 16_384;
    let stats = Arc::new(FeedStats::default());
    let (tap, queue) = FeedTap::channel(stats.clone());
    cfg.tap = Some(tap);
    let feed = MulticastOut {
        groups: vec!["239.7.7.8:9111".parse().unwrap()],
        interface: "127.0.0.1".parse().unwrap(),
        ttl: 0,
        channel: 0,
        max_datagram: 1472,
        heartbeat_ms: 1000,
        retransmit_ms: 60_000,
        retransmit_bytes: 64 << 20,
        nak_key: Some(RELAY_KEY.as_bytes().to_vec()),
    };
    let server = start(cfg);
    let addr = server.local_addr();
    let _origin = Origin::start(&feed, addr, server.registry().clone(), queue, stats.clone())
        .expect("the feed starts");
    let mut p = Client::connect(addr, Role::Publisher);
    for i in 0..50u32 {
        p.publish("m", 0, &i.to_be_bytes());
        // One datagram each: the feed thread flushes whatever is queued when it wakes.
        wait_for(Duration::from_secs(5), "datagram sent", || {
            server.registry().feed_seq() > i as u64
        });
    }
    let epoch = server.registry().epoch();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
    };
    let nak = |send_time_us, count| FeedHeader {
        kind: Kind::Nak,
        flags: 0,
        channel: 0,
        epoch,
        seq: 1,
        send_time_us,
        count,
    };
    // Unsigned, wrongly signed, and stale NAKs: nothing is retransmitted.
    udp.send_to(&nak(now(), 50).to_bytes(), addr).unwrap();
    udp.send_to(&sign_nak(&nak(now(), 50), b"guess"), addr)
        .unwrap();
    udp.send_to(
        &sign_nak(&nak(now() - 60_000_000, 50), RELAY_KEY.as_bytes()),
        addr,
    )
    .unwrap();
    wait_for(Duration::from_secs(5), "three NAKs refused", || {
        stats.naks_refused.load(Relaxed) == 3
    });
    assert_eq!(stats.retransmits.load(Relaxed), 0);
    // A signed, fresh NAK is answered.
    udp.send_to(&sign_nak(&nak(now(), 50), RELAY_KEY.as_bytes()), addr)
        .unwrap();
    wait_for(Duration::from_secs(5), "50 retransmits", || {
        stats.retransmits.load(Relaxed) == 50
    });
    // A flood of valid NAKs, each for 1,024 datagrams, from one source stops at its budget
    // (bursts of 10,000 datagrams, 5,000 a second).
    for _ in 0..400 {
        std::thread::sleep(Duration::from_millis(21)); // past the 20 ms duplicate linger
        udp.send_to(&sign_nak(&nak(now(), 1024), RELAY_KEY.as_bytes()), addr)
            .unwrap();
        if stats.naks_refused.load(Relaxed) > 3 {
            break;
        }
    }
    assert!(
        stats.naks_refused.load(Relaxed) > 3,
        "the source was never limited"
    );
    assert!(stats.retransmits.load(Relaxed) <= 50 * 20);
    // The origin still serves its clients.
    let mut c = Client::connect(addr, Role::Subscriber);
    assert_eq!(c.subscribe("m", true).seq, 50);
}

// ---------------------------------------------------------------------------------------------
// Processes in a network namespace of their own
// ---------------------------------------------------------------------------------------------

const GROUP: &str = "239.7.7.7:9100";

/// Runs the calling test again inside a new network namespace and returns false; inside it,
/// sets up loopback multicast and returns true. Multicast never leaves the namespace.
fn in_netns(test: &str) -> bool {
    if std::env::var_os("YORKER_IN_NETNS").is_some() {
        sh("ip link set lo up");
        sh("ip link set lo multicast on");
        sh("ip route add 224.0.0.0/4 dev lo");
        return true;
    }
    // Root (CI) can create a network namespace directly; elsewhere, or where a container
    // withholds CAP_SYS_ADMIN, an unprivileged user namespace can own one.
    let flags: &[&str] = [&["--net"][..], &["--map-root-user", "--net"][..]]
        .into_iter()
        .find(|f| {
            Command::new("unshare")
                .args(*f)
                .arg("true")
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("cannot create a network namespace: `unshare --net` needs root or unprivileged user namespaces (and util-linux)");
    let status = Command::new("unshare")
        .args(flags)
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("YORKER_IN_NETNS", "1")
        .status()
        .expect("unshare(1) from util-linux runs");
    assert!(
        status.success(),
        "{test} failed inside its network namespace"
    );
    false
}

fn sh(cmd: &str) {
    let st = Command::new("sh")
        .args(["-c", cmd])
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        st.success(),
        "`{cmd}` failed (iproute2 and nftables are needed: .ci/run installs them)"
    );
}

/// Drops about 1 in `one_in` datagrams to the group (input hook: every member loses it).
fn inject_loss(one_in: u32) {
    inject_loss_on(GROUP, one_in);
}

fn inject_loss_on(group: &str, one_in: u32) {
    let group = group.split(':').next().unwrap();
    sh("nft add table inet yorker_loss");
    sh("nft add chain inet yorker_loss input '{ type filter hook input priority 0; }'");
    sh(&format!(
        "nft add rule inet yorker_loss input ip daddr {group} numgen random mod {one_in} 0 counter drop"
    ));
}

fn dropped_datagrams() -> u64 {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "yorker_loss"])
        .output()
        .expect("nft");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A yorker process, killed when dropped; its stderr goes to a file shown if the test fails.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, args: &[&str]) -> Proc {
        let log = std::env::temp_dir().join(format!(
            "yorker-relay-test-{}-{name}.log",
            std::process::id()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_yorker"))
            .args(args)
            .args(["--cores", "1", "--stats-interval", "1"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("yorker starts");
        Proc { child, log }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- {} ---", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn wait_listening(addr: &str) {
    let a: SocketAddr = addr.parse().unwrap();
    wait_for(
        Duration::from_secs(10),
        &format!("{addr} listening"),
        || TcpStream::connect(a).is_ok(),
    );
}

fn origin() -> Proc {
    origin_on(GROUP)
}

fn origin_args(groups: &str) -> Vec<&str> {
    vec![
        "serve",
        "--listen",
        "127.0.0.1:7000",
        "--publisher-key",
        KEY,
        "--relay-key",
        RELAY_KEY,
        "--multicast-out",
        groups,
        "--multicast-if",
        "127.0.0.1",
        "--multicast-heartbeat-ms",
        "20",
    ]
}

fn origin_on(groups: &str) -> Proc {
    let p = Proc::start("origin", &origin_args(groups));
    wait_listening("127.0.0.1:7000");
    p
}

fn multicast_relay(port: u16) -> Proc {
    multicast_relay_on(port, GROUP)
}

fn multicast_relay_on(port: u16, groups: &str) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let p = Proc::start(
        &format!("relay-{port}"),
        &[
            "relay",
            "--listen",
            &listen,
            "--multicast-in",
            groups,
            "--multicast-if",
            "127.0.0.1",
            "--recovery",
            "127.0.0.1:7000",
            "--upstream-key",
            RELAY_KEY,
        ],
    );
    wait_listening(&listen);
    p
}

/// Connects and completes the handshake, retrying connections refused or reset before WELCOME.
fn connect_retrying(addr: &str, role: Role) -> Client {
    let a: SocketAddr = addr.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no WELCOME from {addr}");
        let Ok(mut c) = Client::try_raw(a) else {
            std::thread::sleep(Duration::from_millis(10)); // the port is between owners
            continue;
        };
        if c.hello(role, Duration::from_secs(2)).is_ok() {
            return c;
        }
    }
}

/// A publisher on the origin that has published `ready` = "1" (see [`wait_ready`]).
fn ready_publisher() -> Client {
    let mut p = Client::connect("127.0.0.1:7000".parse().unwrap(), Role::Publisher);
    p.publish("ready", 0, b"1");
    p
}

/// Waits until the relay on `port` serves the origin's `ready` value: it has synced.
fn wait_ready(port: u16) {
    wait_value(&format!("127.0.0.1:{port}"), "ready", b"1");
}

/// Waits until the engine at `addr` serves `topic` with exactly `payload`.
fn wait_value(addr: &str, topic: &str, payload: &[u8]) {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut k = Checker::connect(addr, &[topic.to_string()], true, "probe");
    let want = HashMap::from([(topic.to_string(), payload.to_vec())]);
    assert!(
        k.run_until(Duration::from_secs(15), |k| k.holds(&want)),
        "{addr} never served the latest {topic}"
    );
}

/// Waits for the process's next feed stats line (printed every second), so that it counts
/// everything that happened before this call.
fn next_stats_line(p: &Proc) {
    let lines = |p: &Proc| p.log().lines().filter(|l| l.contains("feed:")).count();
    let now = lines(p);
    wait_for(Duration::from_secs(5), "a feed stats line", || {
        lines(p) > now
    });
}

fn relay_line(p: &Proc, key: &str) -> u64 {
    let log = p.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("feed:"))
        .unwrap_or("");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn multicast_with_loss_every_client_ends_with_every_latest_value() {
    if !in_netns("multicast_with_loss_every_client_ends_with_every_latest_value") {
        return;
    }
    inject_loss(20);
    let _origin = origin();
    let mut p = ready_publisher();
    let relays = [multicast_relay(7101), multicast_relay(7102)];
    wait_ready(7101);
    wait_ready(7102);

    let ts = topics(8);
    let mut clients = Vec::new();
    for port in [7101, 7102] {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for (i, conflate) in [true, false, true, false].into_iter().enumerate() {
            clients.push(Checker::connect(
                addr,
                &ts,
                conflate,
                &format!("{port}/{i}"),
            ));
        }
    }
    let latest = publish(&mut p, &ts, 3000, "loss", Duration::from_micros(300));
    for k in &mut clients {
        let name = k.name.clone();
        assert!(
            k.run_until(Duration::from_secs(20), |k| k.holds(&latest)),
            "{name} does not hold every latest value"
        );
    }
    let dropped = dropped_datagrams();
    assert!(dropped > 0, "the loss rule dropped nothing");
    // The losses were repaired by NAKs, not papered over: both relays applied every update
    // (a snapshot fallback would apply fewer) or said why.
    for r in &relays {
        next_stats_line(r);
        let (naks, fallbacks) = (relay_line(r, "naks"), relay_line(r, "snapshot_fallbacks"));
        assert!(naks > 0, "a relay saw {dropped} losses and sent no NAK");
        eprintln!("relay: dropped={dropped} naks={naks} snapshot_fallbacks={fallbacks}");
    }
}

#[test]
fn killed_relay_clients_resume_on_the_other_one() {
    if !in_netns("killed_relay_clients_resume_on_the_other_one") {
        return;
    }
    let _origin = origin();
    let mut p = ready_publisher();
    let mut a = multicast_relay(7101);
    let _b = multicast_relay(7102);
    wait_ready(7101);
    wait_ready(7102);

    let ts = topics(4);
    let on_a: SocketAddr = "127.0.0.1:7101".parse().unwrap();
    let on_b: SocketAddr = "127.0.0.1:7102".parse().unwrap();
    let mut clients: Vec<Checker> = (0..4)
        .map(|i| Checker::connect(on_a, &ts, i % 2 == 0, &format!("client{i}")))
        .collect();
    let before = publish(&mut p, &ts, 200, "before", Duration::from_micros(200));
    for k in &mut clients {
        assert!(k.run_until(Duration::from_secs(10), |k| k.holds(&before)));
    }
    // B has everything the clients saw (it may lag A by a moment: a resume from a seq it has
    // not reached yet would rightly be a reset).
    let mut on_b_probe = Checker::connect(on_b, &ts, true, "probe-b");
    assert!(on_b_probe.run_until(Duration::from_secs(10), |k| k.holds(&before)));
    a.kill9();
    let during = publish(&mut p, &ts, 20, "during", Duration::ZERO);
    for k in &mut clients {
        // The same epoch and numbers on both relays: a resume, replayed from history.
        let results = k.reconnect(on_b, &ts);
        assert!(
            results.iter().all(|r| *r == SubResult::Resumed),
            "{}: {results:?}",
            k.name
        );
        assert!(k.run_until(Duration::from_secs(10), |k| k.holds(&during)));
    }
    let after = publish(&mut p, &ts, 200, "after", Duration::from_micros(200));
    for k in &mut clients {
        assert!(k.run_until(Duration::from_secs(10), |k| k.holds(&after)));
        assert!(k.seen.values().all(|s| s.resets == 0), "{}", k.name);
    }
}

#[test]
fn origin_restart_changes_the_epoch_and_relays_resync() {
    if !in_netns("origin_restart_changes_the_epoch_and_relays_resync") {
        return;
    }
    let mut o = origin();
    let mut p = ready_publisher();
    let _m = multicast_relay(7101);
    let _t = Proc::start(
        "relay-tcp",
        &[
            "relay",
            "--listen",
            "127.0.0.1:7102",
            "--upstream",
            "127.0.0.1:7000",
            "--upstream-key",
            RELAY_KEY,
        ],
    );
    wait_listening("127.0.0.1:7102");
    wait_ready(7101);
    wait_ready(7102);
    let ts = topics(3);
    let mut clients: Vec<Checker> = [7101, 7102]
        .iter()
        .flat_map(|port| {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            [true, false].map(|c| Checker::connect(addr, &ts, c, &format!("{port}/{c}")))
        })
        .collect();
    let old = publish(&mut p, &ts, 300, "old", Duration::from_micros(100));
    for k in &mut clients {
        assert!(k.run_until(Duration::from_secs(10), |k| k.holds(&old)));
    }
    let old_epoch = clients[0].epoch;

    o.kill9();
    // Not origin(): until the kernel tears down the killed origin's ring, its listener still
    // accepts connections on the port (nobody answers them), so "listening" proves nothing.
    let _o2 = Proc::start("origin2", &origin_args(GROUP));
    // Until the killed origin's ring is torn down (asynchronously, by the kernel), its
    // listener still sits in the port's SO_REUSEPORT group and connections hashed to it are
    // reset: a client retries, as real ones do.
    let mut p = connect_retrying("127.0.0.1:7000", Role::Publisher);
    let new_epoch = p.welcome.as_ref().unwrap().epoch;
    assert_ne!(new_epoch, old_epoch);
    // Numbering restarts at 1 in the new epoch: each client gets it as SNAPSHOT|RESET.
    let new = publish(&mut p, &ts, 30, "new", Duration::from_millis(2));
    for k in &mut clients {
        let name = k.name.clone();
        assert!(
            k.run_until(Duration::from_secs(15), |k| k.holds(&new)),
            "{name} did not resynchronise"
        );
        assert!(k.seen.values().all(|s| s.resets >= 1), "{name}: no RESET");
    }
    // New clients of either relay are told the origin's new epoch.
    for port in [7101, 7102] {
        let c = Client::connect(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Role::Subscriber,
        );
        assert_eq!(c.welcome.as_ref().unwrap().epoch, new_epoch);
    }
}

#[test]
fn ab_feeds_arbitrate_by_sequence_number() {
    if !in_netns("ab_feeds_arbitrate_by_sequence_number") {
        return;
    }
    let ab = "239.7.7.7:9100,239.7.7.8:9100";
    // Group A loses a quarter of its datagrams; B loses none: B's copy fills every hole.
    inject_loss_on("239.7.7.7", 4);
    let _origin = origin_on(ab);
    let mut p = ready_publisher();
    let relay = multicast_relay_on(7101, ab);
    wait_ready(7101);
    let ts = topics(4);
    let mut k = Checker::connect("127.0.0.1:7101".parse().unwrap(), &ts, false, "ab");
    let latest = publish(&mut p, &ts, 1000, "ab", Duration::from_micros(300));
    assert!(k.run_until(Duration::from_secs(10), |k| k.holds(&latest)));
    assert!(k.seen.values().all(|s| s.resets == 0));
    assert!(dropped_datagrams() > 0, "the loss rule dropped nothing");
    next_stats_line(&relay);
    // B's copy filled A's holes: NAKs only where both copies were lost (a receive buffer
    // overflowing under load), far fewer than A's losses.
    let (naks, dropped) = (relay_line(&relay, "naks"), dropped_datagrams());
    assert!(
        naks * 4 < dropped,
        "{naks} NAKs for {dropped} datagrams dropped on A"
    );
    assert!(relay_line(&relay, "duplicates") == 0 && relay_line(&relay, "applied") >= 1000);
}

#[test]
fn a_relay_never_sends_its_clients_a_frame_beyond_its_max_frame() {
    let origin = start(config(1));
    let mut relay_cfg = config(1);
    relay_cfg.core.publisher_key = None;
    relay_cfg.core.max_frame = 4096;
    let relay = start(relay_cfg);
    let feed_stats = Arc::new(FeedStats::default());
    let _f = Follower::start(
        Source::Upstream,
        UpstreamConfig {
            addr: origin.local_addr().to_string(),
            key: Some(RELAY_KEY.into()),
            connect_timeout: Duration::from_secs(2),
        },
        Injector::for_server(&relay, feed_stats.clone()),
    )
    .expect("follower starts");
    wait_for(Duration::from_secs(10), "the relay synced", || {
        relay.registry().epoch() == origin.registry().epoch()
    });
    let ts = vec!["big".to_string()];
    let mut k = Checker::connect(relay.local_addr(), &ts, false, "small-frames");
    let mut p = Client::connect(origin.local_addr(), Role::Publisher);
    p.publish("big", 0, b"small 1");
    p.publish("big", 0, &vec![7u8; 10_000]);
    p.publish("big", 0, b"small 3");
    let want = HashMap::from([("big".to_string(), b"small 3".to_vec())]);
    assert!(k.run_until(Duration::from_secs(10), |k| k.holds(&want)));
    // The client never saw the 10 KB frame; the break shows as SNAPSHOT|RESET on seq 3.
    let seen = &k.seen["big"];
    assert_eq!((seen.seq, seen.resets), (3, 1));
    assert_eq!(
        feed_stats
            .oversize_drops
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// A listener that accepts but never answers (a dead process's queue, a wrong service): the
/// session gives up instead of waiting forever, so the relay reconnects elsewhere or later.
#[test]
fn an_upstream_that_never_says_welcome_is_given_up() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = start(config(1));
    let cfg = UpstreamConfig {
        addr: dead.local_addr().unwrap().to_string(),
        key: None,
        connect_timeout: Duration::from_millis(300),
    };
    let injector = Injector::for_server(&relay, Arc::new(FeedStats::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let r = yorker_relay::upstream::session(&cfg, &injector, true, &stop, &mut |_| {});
        let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
    });
    // A watchdog, not a measurement: without the give-up the session would never return.
    let r = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the session gave up");
    let err = r.expect_err("a silent upstream is an error");
    assert!(err.contains("nothing received"), "{err}");
    drop(dead);
}

/// XADD `payload` to Redis stream `key` on 127.0.0.1:`port` (inside the test's namespace).
fn xadd(port: u16, key: &str, payload: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let args = ["XADD", key, "*", "payload", payload];
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut b = [0u8; 64];
    let n = s.read(&mut b).unwrap();
    assert!(b[..n].starts_with(b"$"), "XADD answered {:?}", &b[..n]);
}

/// Two origins ingest one Redis stream; a relay hears A's multicast feed, with
/// `--recovery A,B`. A dies: the feed falls silent, and the relay follows B over TCP instead.
/// B numbers alike, so the relay catches up on what it missed: its client sees every entry,
/// in order, with no RESET.
#[test]
fn a_multicast_relay_follows_another_origin_when_the_feed_falls_silent() {
    if !in_netns("a_multicast_relay_follows_another_origin_when_the_feed_falls_silent") {
        return;
    }
    /// Killed when dropped, the test failing or not.
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _redis = KillOnDrop(
        Command::new("redis-server")
            .args(["--port", "7600", "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/install-test-deps.sh installs it)"),
    );
    wait_for(Duration::from_secs(10), "redis-server", || {
        TcpStream::connect("127.0.0.1:7600").is_ok()
    });
    xadd(7600, "match/5", "toss");
    let ingest = "redis-stream://127.0.0.1:7600/match/5";
    let mut a = Proc::start(
        "origin-a",
        &[
            "serve",
            "--listen",
            "127.0.0.1:7000",
            "--relay-key",
            RELAY_KEY,
            "--multicast-out",
            GROUP,
            "--multicast-if",
            "127.0.0.1",
            "--multicast-heartbeat-ms",
            "20",
            "--ingest",
            ingest,
        ],
    );
    let _b = Proc::start(
        "origin-b",
        &[
            "serve",
            "--listen",
            "127.0.0.1:7001",
            "--relay-key",
            RELAY_KEY,
            "--ingest",
            ingest,
        ],
    );
    wait_listening("127.0.0.1:7000");
    wait_listening("127.0.0.1:7001");
    let relay = Proc::start(
        "relay-mc",
        &[
            "relay",
            "--listen",
            "127.0.0.1:7110",
            "--multicast-in",
            GROUP,
            "--multicast-if",
            "127.0.0.1",
            "--recovery",
            "127.0.0.1:7000,127.0.0.1:7001",
            "--upstream-key",
            RELAY_KEY,
            "--feed-silence-ms",
            "300",
        ],
    );
    wait_listening("127.0.0.1:7110");
    wait_value("127.0.0.1:7110", "match/5", b"toss");
    let mut c = Client::connect("127.0.0.1:7110".parse().unwrap(), Role::Subscriber);
    c.subscribe_with(vec![SubscribeEntry {
        topic: "match/5".into(),
        resume: None,
        conflate: false,
        presence: false,
    }]);
    let t = Duration::from_secs(10);
    assert_eq!(c.next_update(t).expect("snapshot").seq, 1);
    for i in 0..3 {
        xadd(7600, "match/5", &format!("feed {i}"));
    }
    for seq in 2..=4 {
        assert_eq!(c.next_update(t).expect("through the feed").seq, seq);
    }
    a.kill9();
    for i in 0..5 {
        xadd(7600, "match/5", &format!("after {i}"));
    }
    for (k, seq) in (5..=9).enumerate() {
        let u = c.next_update(t).expect("through B");
        assert_eq!(
            (u.seq, u.flags, &u.payload[..]),
            (seq, 0, format!("after {k}").as_bytes()),
            "no RESET, no gap"
        );
    }
    next_stats_line(&relay);
    assert_eq!(relay_line(&relay, "silences"), 1);
    assert_eq!(relay_line(&relay, "resets"), 0);
    assert!(relay.log().contains("over TCP from now on"));
}
