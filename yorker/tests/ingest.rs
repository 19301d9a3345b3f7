//! `yorker serve --ingest` against the real logs a studio runs, each on a loopback port of its
//! own: a redis-server (`redis-stream://`) and a nats-server with JetStream
//! (`nats-jetstream://`), Debian's packages, installed by scripts/install-test-deps.sh. For
//! both: updates from the stream reach subscribers in order, two origins on the same stream
//! number every update alike, an origin restarted on the stream lets its clients resume, a
//! stream outage shows in readiness while clients keep their last values, and a relay fails
//! over between two origins without a RESET. Then what is particular to each: the sink into a
//! Redis stream, a JetStream stream created again.

#[path = "../../engine/tests/common/mod.rs"]
mod common;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use yorker_wire::*;

const T: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory of its own for one server's data.
fn fresh_dir(kind: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "yorker-ingest-{kind}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A replicated log an origin ingests from, on a loopback port of its own with its data in a
/// directory of its own (so that a restart keeps the streams). Killed when dropped.
trait Log: Sized {
    /// A new, empty one.
    fn fresh() -> Self;
    /// Appends one update to `topic`'s stream; returns the timestamp (µs) that every origin
    /// must stamp it with.
    fn append(&self, topic: &str, payload: &str) -> u64;
    /// The `--ingest` URL for these topics (`verify-ms=200`, so that checks happen in a test's
    /// time).
    fn url(&self, topics: &[&str]) -> String;
    /// Its server process.
    fn server(&mut self) -> &mut Server;
    /// Stops it the way an outage would (SIGKILL).
    fn kill(&mut self) {
        self.server().kill();
    }
    /// Starts it again on the same port and data.
    fn restart(&mut self) {
        self.server().restart();
    }
    /// `yorker sink --to` for a destination named `name` (created if the log needs that).
    fn sink_url(&self, name: &str) -> String;
    /// How many messages the sink has stored under `name`, and the newest as
    /// `[user, session, request, key, payload]`.
    fn sunk(&self, name: &str) -> (u64, Vec<String>);
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process killed when this is dropped (a failing test included).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

/// A log's server process on a loopback port of its own, its data in a directory of its own;
/// killed, and the directory removed, when dropped.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// Starts the process on a port with a data directory and waits until it answers.
    spawn: fn(u16, &PathBuf) -> Child,
}

impl Server {
    fn start(kind: &str, spawn: fn(u16, &PathBuf) -> Child) -> Server {
        let (port, dir) = (free_port(), fresh_dir(kind));
        Server {
            child: spawn(port, &dir),
            port,
            dir,
            spawn,
        }
    }

    fn kill(&mut self) {
        kill(&mut self.child);
    }

    fn restart(&mut self) {
        self.kill();
        self.child = (self.spawn)(self.port, &self.dir);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server, its append-only file written per command.
struct Redis {
    server: Server,
}

impl Redis {
    fn spawn(port: u16, dir: &PathBuf) -> Child {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server (apt-get install redis-server; scripts/install-test-deps.sh does)",
            );
        wait_for(T, "redis-server answers", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok_and(|s| cmd_on(s, &["PING"]) == "+PONG")
        });
        child
    }

    fn cmd(&self, args: &[&str]) -> String {
        cmd_on(
            TcpStream::connect(("127.0.0.1", self.server.port)).unwrap(),
            args,
        )
    }
}

impl Log for Redis {
    fn fresh() -> Redis {
        Redis {
            server: Server::start("redis", Redis::spawn),
        }
    }

    fn server(&mut self) -> &mut Server {
        &mut self.server
    }

    fn append(&self, key: &str, payload: &str) -> u64 {
        let id = self.cmd(&["XADD", key, "*", "payload", payload]);
        assert!(id.contains('-'), "XADD answered {id:?}");
        let ms: u64 = id.split('-').next().unwrap().parse().unwrap();
        ms * 1000
    }

    fn url(&self, keys: &[&str]) -> String {
        format!(
            "redis-stream://127.0.0.1:{}/{}?verify-ms=200",
            self.server.port,
            keys.join(",")
        )
    }

    fn sink_url(&self, key: &str) -> String {
        format!("redis-stream://127.0.0.1:{}/{key}", self.server.port)
    }

    fn sunk(&self, key: &str) -> (u64, Vec<String>) {
        let len = cmd_all(self.server.port, &["XLEN", key])[0]
            .parse()
            .unwrap();
        let last = cmd_all(
            self.server.port,
            &["XREVRANGE", key, "+", "-", "COUNT", "1"],
        );
        let fields = last.get(1..).unwrap_or_default();
        let names: Vec<&str> = fields.iter().step_by(2).map(String::as_str).collect();
        if !fields.is_empty() {
            assert_eq!(names, ["user", "session", "request", "key", "payload"]);
        }
        (len, fields.iter().skip(1).step_by(2).cloned().collect())
    }
}

/// A nats-server with JetStream, its streams in files. One stream per topic, as the ingest
/// wants: topic `score/1` is stream `score_1` collecting subject `score.1`. Written to with the
/// official client, as a studio's feed would.
struct JetStream {
    server: Server,
    rt: tokio::runtime::Runtime,
}

impl JetStream {
    fn spawn(port: u16, dir: &PathBuf) -> Child {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server; scripts/install-test-deps.sh does)");
        wait_for(T, "nats-server answers", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok_and(|s| {
                let mut line = String::new();
                let _ = s.set_read_timeout(Some(T));
                BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("INFO ")
            })
        });
        child
    }

    fn stream(topic: &str) -> String {
        topic.replace('/', "_")
    }

    fn subject(topic: &str) -> String {
        topic.replace('/', ".")
    }

    /// Runs `f` with a JetStream context on a new connection.
    fn with<R>(
        &self,
        f: impl AsyncFnOnce(async_nats::jetstream::Context) -> Result<R, async_nats::Error>,
    ) -> R {
        let addr = format!("127.0.0.1:{}", self.server.port);
        self.rt.block_on(async {
            let client = async_nats::connect(addr)
                .await
                .expect("connect to nats-server");
            let r = f(async_nats::jetstream::new(client.clone()))
                .await
                .expect("JetStream request");
            let _ = client.flush().await;
            r
        })
    }

    /// Deletes `topic`'s stream and creates it again, empty.
    fn recreate(&self, topic: &str) {
        let name = JetStream::stream(topic);
        let config = JetStream::config(topic);
        self.with(async |js| {
            js.delete_stream(&name).await?;
            js.create_stream(config).await?;
            Ok(())
        })
    }

    fn config(topic: &str) -> async_nats::jetstream::stream::Config {
        async_nats::jetstream::stream::Config {
            name: JetStream::stream(topic),
            subjects: vec![JetStream::subject(topic)],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }
}

impl Log for JetStream {
    fn fresh() -> JetStream {
        JetStream {
            server: Server::start("nats", JetStream::spawn),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn server(&mut self) -> &mut Server {
        &mut self.server
    }

    fn append(&self, topic: &str, payload: &str) -> u64 {
        let (subject, config) = (JetStream::subject(topic), JetStream::config(topic));
        let payload = payload.to_string();
        self.with(async |js| {
            let stream = js.get_or_create_stream(config).await?;
            let ack = js.publish(subject, payload.into()).await?.await?;
            let stored = stream.get_raw_message(ack.sequence).await?;
            Ok((stored.time.unix_timestamp_nanos() / 1000) as u64)
        })
    }

    fn url(&self, topics: &[&str]) -> String {
        let streams: Vec<String> = topics
            .iter()
            .map(|t| format!("{}={t}", JetStream::stream(t)))
            .collect();
        format!(
            "nats-jetstream://127.0.0.1:{}/{}?verify-ms=200",
            self.server.port,
            streams.join(",")
        )
    }

    /// The stream `name` collects `name.>`: the sink publishes to `name.<user>`.
    fn sink_url(&self, name: &str) -> String {
        let config = async_nats::jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        };
        self.with(async |js| {
            js.get_or_create_stream(config).await?;
            Ok(())
        });
        format!("nats-jetstream://127.0.0.1:{}/{name}", self.server.port)
    }

    fn sunk(&self, name: &str) -> (u64, Vec<String>) {
        let name = name.to_string();
        self.with(async |js| {
            let mut stream = js.get_stream(&name).await?;
            let state = stream.info().await?.state.clone();
            if state.messages == 0 {
                return Ok((0, Vec::new()));
            }
            let m = stream.get_raw_message(state.last_sequence).await?;
            let h = |k: &str| m.headers.get(k).map(|v| v.to_string()).unwrap_or_default();
            // Anonymous senders are `_` in the subject.
            assert_eq!(m.subject.as_str(), format!("{name}._"));
            Ok((
                state.messages,
                vec![
                    h("Yorker-User"),
                    h("Yorker-Session"),
                    h("Yorker-Request"),
                    h("Yorker-Key"),
                    String::from_utf8_lossy(&m.payload).into_owned(),
                ],
            ))
        })
    }
}

/// One command in RESP; the first line of the answer (a bulk string's value for bulk replies).
fn cmd_on(mut s: TcpStream, args: &[&str]) -> String {
    s.set_read_timeout(Some(T)).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return String::new();
    }
    if line.starts_with('$') {
        line.clear();
        let _ = r.read_line(&mut line);
    }
    line.trim_end().to_string()
}

/// One command in RESP; every string of the reply, flattened (arrays of bulk strings).
fn cmd_all(port: u16, args: &[&str]) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    let mut pending = 1i64;
    while pending > 0 {
        pending -= 1;
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            "*" => pending += rest.parse::<i64>().unwrap().max(0),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n >= 0 {
                    let mut b = vec![0u8; n as usize + 2];
                    r.read_exact(&mut b).unwrap();
                    out.push(String::from_utf8_lossy(&b[..n as usize]).into_owned());
                }
            }
            _ => out.push(rest.to_string()),
        }
    }
    out
}

/// `yorker serve --ingest URL` with an admin listener. Killed when dropped.
struct Origin {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Origin {
    fn start(url: &str, listen: &str) -> Origin {
        let (child, addr, admin) = support::serve_with_admin(&[
            "--publisher-key",
            KEY,
            "--listen",
            listen,
            "--cores",
            "1",
            "--stats-interval",
            "0",
            "--ingest",
            url,
            "--relay-key",
            RELAY_KEY,
        ]);
        Origin { child, addr, admin }
    }

    /// `yorker relay` following `upstreams` (HOST:PORT,...) over TCP.
    fn relay(upstreams: &str) -> Origin {
        let (child, addr, admin) = support::run_with_admin(
            "relay",
            &[
                "--listen",
                "127.0.0.1:0",
                "--cores",
                "1",
                "--stats-interval",
                "0",
                "--upstream",
                upstreams,
                "--upstream-key",
                RELAY_KEY,
            ],
        );
        Origin { child, addr, admin }
    }

    /// A feed counter from /metrics.
    fn feed_counter(&self, name: &str) -> u64 {
        let (_, metrics) = support::http(self.admin, "GET", "/metrics", &[], "");
        let key = format!("yorker_feed_total{{counter=\"{name}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn ready(&self) -> bool {
        support::http(self.admin, "GET", "/readyz", &[], "").0 == 200
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn subscriber(o: &Origin, topic: &str, resume: Option<ResumeFrom>) -> (Client, SubAckEntry) {
    let mut c = Client::connect(o.addr, Role::Subscriber);
    let ack = c.subscribe_with(vec![SubscribeEntry {
        topic: topic.into(),
        resume,
        conflate: false,
        presence: false,
    }]);
    let e = ack.entries[0];
    (c, e)
}

/// Two origins ingesting `topic`'s stream, both following it.
fn two_origins(log: &impl Log, topic: &str) -> (Origin, Origin) {
    let a = Origin::start(&log.url(&[topic]), "127.0.0.1:0");
    let b = Origin::start(&log.url(&[topic]), "127.0.0.1:0");
    wait_for(T, "both origins synced", || a.ready() && b.ready());
    (a, b)
}

fn epoch(c: &Client) -> u64 {
    c.welcome.as_ref().expect("welcomed").epoch
}

/// The stream's entries reach subscribers in order, numbered by their position in the stream
/// (entries added before the origin started included), stamped with the time the log stored
/// them.
fn stream_entries_reach_subscribers_in_order_numbered_by_the_stream<L: Log>() {
    let log = L::fresh();
    for p in ["a", "b", "c"] {
        log.append("score/1", p);
    }
    log.append("score/2", "first");
    let o = Origin::start(&log.url(&["score/1", "score/2"]), "127.0.0.1:0");
    wait_for(T, "ingest synced", || o.ready());
    let (mut c, ack) = subscriber(&o, "score/1", None);
    assert_eq!((ack.result, ack.seq), (SubResult::Ok, 3));
    let snap = c.next_update(T).expect("the latest value");
    assert_eq!((snap.seq, &snap.payload[..]), (3, &b"c"[..]));
    let mut stamps = Vec::new();
    for i in 0..20 {
        stamps.push(log.append("score/1", &format!("u{i}")));
    }
    for (i, ts) in stamps.iter().enumerate() {
        let u = c.next_update(T).expect("every entry");
        assert_eq!(u.seq, 4 + i as u64);
        assert_eq!(u.payload, format!("u{i}").into_bytes());
        assert_eq!(u.timestamp_us, *ts, "stamped with the stored time");
    }
    // The other stream is another topic, numbered on its own.
    let (mut c2, ack) = subscriber(&o, "score/2", None);
    assert_eq!((ack.result, ack.seq), (SubResult::Ok, 1));
    assert_eq!(c2.next_update(T).expect("score/2 snapshot").seq, 1);
    log.append("score/2", "second");
    let u = c2.next_update(T).expect("score/2");
    assert_eq!((u.seq, &u.payload[..]), (2, &b"second"[..]));
}

/// Two origins on the same stream give every update the same epoch, number, timestamp and
/// payload; one of them killed and started again carries on from the stream, and its clients
/// resume (`resumed`, the missed updates replayed) instead of resetting.
fn origins_on_one_stream_number_alike_and_a_restart_resumes<L: Log>() {
    let log = L::fresh();
    log.append("match/9", "toss");
    let (a, b) = two_origins(&log, "match/9");
    let (mut ca, _) = subscriber(&a, "match/9", None);
    let (mut cb, _) = subscriber(&b, "match/9", None);
    assert_eq!(epoch(&ca), epoch(&cb), "one epoch for one stream");
    for c in [&mut ca, &mut cb] {
        assert_eq!(c.next_update(T).expect("snapshot").seq, 1);
    }
    for i in 0..30 {
        log.append("match/9", &format!("ball {i}"));
    }
    for _ in 0..30 {
        // Every field of the UPDATE frame, so the frames are byte-identical (both origins
        // created the topic first, at start, so its id is the same too).
        let (ua, ub) = (ca.next_update(T).unwrap(), cb.next_update(T).unwrap());
        assert_eq!(
            (ua.topic_id, ua.seq, ua.timestamp_us, ua.flags, &ua.payload),
            (ub.topic_id, ub.seq, ub.timestamp_us, ub.flags, &ub.payload)
        );
        assert_eq!(
            Frame::Update(ua).to_bytes().unwrap(),
            Frame::Update(ub).to_bytes().unwrap()
        );
    }
    // Restart A on the same port while the stream moves on.
    let listen = a.addr.to_string();
    let old_epoch = epoch(&ca);
    drop(a);
    log.append("match/9", "while down 1");
    log.append("match/9", "while down 2");
    let a = Origin::start(&log.url(&["match/9"]), &listen);
    wait_for(T, "restarted origin synced", || a.ready());
    let (mut again, ack) = subscriber(
        &a,
        "match/9",
        Some(ResumeFrom {
            epoch: old_epoch,
            seq: 31,
        }),
    );
    assert_eq!(epoch(&again), old_epoch, "the restart keeps the epoch");
    assert_eq!(ack.result, SubResult::Resumed, "{ack:?}");
    for (seq, p) in [(32, "while down 1"), (33, "while down 2")] {
        let u = again.next_update(T).expect("replayed");
        assert_eq!((u.seq, u.flags, &u.payload[..]), (seq, 0, p.as_bytes()));
    }
}

/// The stream's server goes away: the origin is not ready (readiness says why, the feed
/// counters count it), subscribers keep the last value (new ones get it too), and when the
/// stream is back the numbering goes on.
fn a_stream_outage_shows_and_clients_keep_their_last_values<L: Log>() {
    let mut log = L::fresh();
    log.append("odds/3", "2.10");
    let o = Origin::start(&log.url(&["odds/3"]), "127.0.0.1:0");
    wait_for(T, "synced", || o.ready());
    let (mut c, _) = subscriber(&o, "odds/3", None);
    assert_eq!(c.next_update(T).unwrap().seq, 1);
    log.kill();
    wait_for(T, "not ready while the stream is away", || !o.ready());
    assert!(o.feed_counter("source_errors") >= 1);
    let (mut late, ack) = subscriber(&o, "odds/3", None);
    assert_eq!((ack.result, ack.seq), (SubResult::Ok, 1));
    assert_eq!(&late.next_update(T).unwrap().payload[..], b"2.10");
    log.restart();
    wait_for(T, "ready again", || o.ready());
    log.append("odds/3", "1.95");
    for cl in [&mut c, &mut late] {
        let u = cl.next_update(T).expect("the stream goes on");
        assert_eq!((u.seq, u.flags, &u.payload[..]), (2, 0, &b"1.95"[..]));
    }
}

/// Origins A and B on `topic`'s stream (its first entry "toss"), a relay following A then B
/// (`--upstream A,B`), and a NO_CONFLATE subscriber of the relay that got the snapshot (seq 1).
fn relay_on_two_origins(log: &impl Log, topic: &str) -> (Origin, Origin, Origin, Client) {
    log.append(topic, "toss");
    let (a, b) = two_origins(log, topic);
    let relay = Origin::relay(&format!("{},{}", a.addr, b.addr));
    wait_for(T, "relay synced", || relay.ready());
    let (mut c, ack) = subscriber(&relay, topic, None);
    assert_eq!((ack.result, ack.seq), (SubResult::Ok, 1));
    assert_eq!(c.next_update(T).unwrap().seq, 1);
    (a, b, relay, c)
}

/// The next updates are `seqs`, in order, unflagged, with payloads `<prefix> 0`, `<prefix> 1`...
fn expect_in_order(c: &mut Client, seqs: std::ops::RangeInclusive<u64>, prefix: &str) {
    for (k, seq) in seqs.enumerate() {
        let u = c.next_update(T).expect("every update");
        assert_eq!(
            (u.seq, u.flags, &u.payload[..]),
            (seq, 0, format!("{prefix} {k}").as_bytes()),
            "no RESET, no gap"
        );
    }
}

/// A relay following two origins on one stream (`--upstream A,B`) moves to B when A dies; B
/// has the same epoch and numbers, so the relay's clients see no RESET and no gap.
fn a_relay_fails_over_between_origins_on_one_stream_without_reset<L: Log>() {
    let log = L::fresh();
    let (a, _b, relay, mut c) = relay_on_two_origins(&log, "match/7");
    for i in 0..5 {
        log.append("match/7", &format!("before {i}"));
    }
    expect_in_order(&mut c, 2..=6, "before");
    drop(a);
    wait_for(T, "the relay synced with B", || {
        relay.feed_counter("snapshot_fallbacks") >= 1
    });
    for i in 0..5 {
        log.append("match/7", &format!("after {i}"));
    }
    expect_in_order(&mut c, 7..=11, "after");
    assert_eq!(relay.feed_counter("resets"), 0);
}

/// A relay whose origin stops forwarding while the stream moves on (frozen, then killed) has
/// missed several updates when it moves to B: B's snapshot jumps ahead. The relay catches up
/// (asks B for the updates after its seq, replayed from B's history), so its clients still see
/// every update in order, no RESET and no gap.
fn a_relay_catches_up_on_what_it_missed_during_a_failover<L: Log>() {
    let log = L::fresh();
    let (a, b, relay, mut c) = relay_on_two_origins(&log, "match/6");
    // Freeze A: the relay's session to it stays open, and nothing comes through.
    let frozen = Command::new("kill")
        .args(["-STOP", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(frozen.success());
    for i in 0..5 {
        log.append("match/6", &format!("during {i}"));
    }
    wait_for(T, "B has all five", || {
        subscriber(&b, "match/6", None).1.seq == 6
    });
    drop(a);
    expect_in_order(&mut c, 2..=6, "during");
    log.append("match/6", "after");
    let u = c.next_update(T).expect("live through B");
    assert_eq!((u.seq, u.flags, &u.payload[..]), (7, 0, &b"after"[..]));
    assert_eq!(relay.feed_counter("resets"), 0);
    assert_eq!(relay.feed_counter("catch_ups"), 1);
}

/// A topic the stream numbers takes no PUBLISH (nor POST, nor HTTP publish): a number taken
/// there would collide with the stream's. The publisher gets ERROR not_publisher saying why;
/// the stream's numbering goes on untouched, and other topics publish as usual.
fn publishing_to_an_ingested_topic_is_refused<L: Log>() {
    let log = L::fresh();
    log.append("score/5", "first");
    let o = Origin::start(&log.url(&["score/5"]), "127.0.0.1:0");
    wait_for(T, "synced", || o.ready());
    let (mut c, _) = subscriber(&o, "score/5", None);
    assert_eq!(c.next_update(T).unwrap().seq, 1);
    let mut p = Client::connect(o.addr, Role::Publisher);
    p.publish("score/5", 0, b"forged");
    match p.next(T) {
        Some(Frame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::NotPublisher as u16);
            assert!(e.message.contains("fed by the ingest"), "{}", e.message);
        }
        other => panic!("expected ERROR not_publisher, got {other:?}"),
    }
    log.append("score/5", "second");
    let u = c.next_update(T).expect("the stream goes on");
    assert_eq!((u.seq, &u.payload[..]), (2, &b"second"[..]));
    // Another topic is published to as usual.
    let (mut other, _) = subscriber(&o, "chat/1", None);
    let mut p = Client::connect(o.addr, Role::Publisher);
    p.publish("chat/1", 0, b"hello");
    assert_eq!(other.next_update(T).expect("published").seq, 1);
}

/// Every test above, once against each log.
macro_rules! on_each_log {
    ($($name:ident),* $(,)?) => {
        mod redis_stream {
            $(#[test] fn $name() { super::$name::<super::Redis>() })*
        }
        mod nats_jetstream {
            $(#[test] fn $name() { super::$name::<super::JetStream>() })*
        }
    };
}

on_each_log!(
    stream_entries_reach_subscribers_in_order_numbered_by_the_stream,
    origins_on_one_stream_number_alike_and_a_restart_resumes,
    a_stream_outage_shows_and_clients_keep_their_last_values,
    a_relay_fails_over_between_origins_on_one_stream_without_reset,
    a_relay_catches_up_on_what_it_missed_during_a_failover,
    publishing_to_an_ingested_topic_is_refused,
    client_messages_reach_the_log_through_the_sink,
);

/// A JetStream stream deleted and created again starts its numbers over: the origin notices
/// (another creation time), and the topic's clients get the new stream's first message flagged
/// SNAPSHOT|RESET, then the rest in order.
#[test]
fn a_jetstream_stream_created_again_resets_its_topic() {
    let log = JetStream::fresh();
    for i in 0..3 {
        log.append("score/8", &format!("old {i}"));
    }
    let o = Origin::start(&log.url(&["score/8"]), "127.0.0.1:0");
    wait_for(T, "synced", || o.ready());
    let (mut c, _) = subscriber(&o, "score/8", None);
    assert_eq!(c.next_update(T).unwrap().seq, 3);
    log.recreate("score/8");
    log.append("score/8", "new 0");
    let u = c.next_update(T).expect("the new stream's first message");
    assert_eq!(
        (u.seq, u.flags, &u.payload[..]),
        (
            1,
            update_flags::SNAPSHOT | update_flags::RESET,
            &b"new 0"[..]
        )
    );
    log.append("score/8", "new 1");
    let u = c.next_update(T).expect("in order after it");
    assert_eq!((u.seq, u.flags, &u.payload[..]), (2, 0, &b"new 1"[..]));
}

/// `yorker sink`: a backend that appends every client message to the log, keyed by user. Each
/// MESSAGE acknowledged ok is in the log, with its user, session, request id, routing key and
/// payload, those acknowledged while the log was away included.
fn client_messages_reach_the_log_through_the_sink<L: Log>() {
    let mut log = L::fresh();
    let to = log.sink_url("bets");
    let (engine, addr, _admin) = support::serve_with_admin(&[
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--stats-interval",
        "0",
        "--backend-key",
        "sink-key",
        "--anonymous-messages",
    ]);
    let _engine = Origin {
        child: engine,
        addr,
        admin: _admin,
    };
    let sink = Command::new(env!("CARGO_BIN_EXE_yorker"))
        .args([
            "sink",
            "--engine",
            &addr.to_string(),
            "--backend-key",
            "sink-key",
        ])
        .args(["--to", &to])
        .stderr(Stdio::null())
        .spawn()
        .expect("yorker sink");
    // Killed when the test ends, failing or not.
    let _sink = Killed(sink);
    let mut c = Client::raw(addr);
    c.hello_with(3, Role::Subscriber, String::new(), T)
        .expect("WELCOME");
    let session = c.welcome.as_ref().unwrap().session_id;
    let send = |c: &mut Client, id: u32, payload: &str| {
        c.send(&Frame::Message(Message {
            request_id: id,
            routing_key: "match/1".into(),
            payload: payload.as_bytes().to_vec().into(),
        }));
        loop {
            match c.next(T) {
                Some(Frame::Ack {
                    request_id, code, ..
                }) if request_id == id => return code,
                Some(Frame::Heartbeat) => continue,
                other => panic!("expected ACK {id}, got {other:?}"),
            }
        }
    };
    // Until the sink is connected: no_backend (21).
    let mut id = 0;
    wait_for(T, "the sink is a backend", || {
        id += 1;
        let code = send(&mut c, id, "probe");
        assert!(code == 0 || code == 21, "ACK code {code}");
        code == 0
    });
    for i in 0..10 {
        id += 1;
        assert_eq!(send(&mut c, id, &format!("bet {i}")), 0, "acknowledged ok");
    }
    wait_for(T, "11 messages in the log", || log.sunk("bets").0 == 11);
    let want = [
        "",
        &session.to_string(),
        &id.to_string(),
        "match/1",
        "bet 9",
    ];
    assert_eq!(log.sunk("bets").1, want);
    // The log goes away: messages acknowledged meanwhile are held by the sink, not lost, and
    // reach the log once it is back.
    log.kill();
    for i in 0..3 {
        id += 1;
        assert_eq!(send(&mut c, id, &format!("held {i}")), 0, "acknowledged ok");
    }
    log.restart();
    wait_for(T, "the held messages in the log", || {
        log.sunk("bets").0 == 14
    });
    assert_eq!(log.sunk("bets").1[4], "held 2");
}
