//! The admin HTTP listener of the `yorker` process: Prometheus metrics (checked by promtool
//! and against known traffic), health and readiness through a drain, HTTP publish with
//! idempotency, the topic list, the settings file's precedence, and a drain of 10,000
//! connections spread over its window.

#[path = "../../engine/tests/common/mod.rs"]
mod common;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use support::http;
use yorker_wire::*;

const T: Duration = Duration::from_secs(10);

/// A `yorker serve` process with an admin listener; its engine and admin addresses.
struct Proc {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Proc {
    fn start(extra: &[&str]) -> Proc {
        let mut args = vec!["--listen", "127.0.0.1:0", "--publisher-key", KEY];
        args.extend(["--stats-interval", "0"]);
        args.extend(extra);
        let (child, addr, admin) = support::serve_with_admin(&args);
        Proc { child, addr, admin }
    }

    fn http(&self, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
        http(self.admin, method, path, headers, body)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
}

/// The value of a metric line `name{labels} value` summed over its label sets.
fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_pass_promtool_and_count_known_traffic() {
    let p = Proc::start(&["--cores", "2"]);
    let mut subs: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::connect(p.addr, Role::Subscriber);
            c.subscribe("match/1", false);
            c
        })
        .collect();
    let mut publisher = Client::connect(p.addr, Role::Publisher);
    for i in 0..5u8 {
        publisher.publish("match/1", 0, &[i]);
    }
    for c in subs.iter_mut() {
        for want in 1..=5 {
            assert_eq!(c.next_update(T).unwrap().seq, want);
        }
    }
    // The shards publish their counters as they loop: poll until the deliveries show.
    let mut text = String::new();
    let t0 = Instant::now();
    while metric_sum(&text, "yorker_deliveries_total", "") < 15.0 {
        assert!(t0.elapsed() < T, "deliveries never reached 15:\n{text}");
        text = p.http("GET", "/metrics", &[], "").1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric_sum(&text, "yorker_deliveries_total", ""), 15.0);
    assert_eq!(metric_sum(&text, "yorker_updates_published_total", ""), 5.0);
    assert_eq!(metric_sum(&text, "yorker_subscriptions", ""), 3.0);
    assert_eq!(metric_sum(&text, "yorker_accepted_total", ""), 4.0);
    assert_eq!(metric_sum(&text, "yorker_frames_encoded_total", ""), 5.0);
    // 5 UPDATEs of 27 bytes (a 1-byte payload) to 3 subscribers, plus the control frames.
    assert!(metric_sum(&text, "yorker_sent_bytes_total", "") >= 15.0 * 27.0);
    assert_eq!(metric_sum(&text, "yorker_up", ""), 1.0);
    assert!(metric_sum(&text, "yorker_process_resident_memory_bytes", "") > 1e6);
    assert!(
        text.contains("# TYPE yorker_fanout_seconds histogram"),
        "{text}"
    );
    // Prometheus' own linter accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/install-test-deps.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.http("GET", "/nope", &[], "").0, 404);
    // The deployment kit's dashboard only uses metrics the engine exports.
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana-dashboard.json"
    ))
    .unwrap();
    let _: serde_json::Value = json(&dash);
    let mut used = 0;
    for w in dash.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = w.strip_prefix("yorker_") {
            let base = name.trim_end_matches("_bucket");
            if base.starts_with("feed_") {
                continue; // only an origin or a relay has a feed (tests/relays.rs covers it)
            }
            assert!(
                text.contains(&format!("yorker_{base}")),
                "the dashboard uses yorker_{base}, which /metrics does not export"
            );
            used += 1;
        }
    }
    assert!(used >= 10, "the dashboard uses {used} metrics");
}

#[test]
fn http_publish_is_acknowledged_and_idempotent() {
    let p = Proc::start(&["--cores", "1"]);
    let mut sub = Client::connect(p.addr, Role::Subscriber);
    sub.subscribe("odds/7", false);
    let auth = format!("Authorization: Bearer {KEY}");
    let body = r#"{"topic": "odds/7", "payload": "suspended", "urgent": true, "idempotency_key": "evt-1"}"#;
    let (status, r) = p.http("POST", "/publish", &[&auth], body);
    assert_eq!(status, 200, "{r}");
    let r = json(&r);
    assert_eq!(
        (r["seq"].as_u64(), r["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    let u = sub.next_update(T).unwrap();
    assert_eq!((u.seq, &u.payload[..]), (1, &b"suspended"[..]));
    assert_eq!(u.flags & update_flags::URGENT, update_flags::URGENT);
    assert_eq!(
        r["epoch"].as_u64(),
        Some(sub.welcome.as_ref().unwrap().epoch)
    );
    // A retry with the same key is answered with the first result and not applied again.
    let (status, r) = p.http("POST", "/publish", &[&auth], body);
    assert_eq!(status, 200);
    let r = json(&r);
    assert_eq!(
        (r["seq"].as_u64(), r["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    // A batch: seqs in order, a bad entry reported on its own.
    let batch = r#"{"updates": [{"topic": "odds/7", "payload_base64": "AQI="}, {"topic": "bad topic", "payload": "x"}, {"topic": "odds/7", "payload": "c"}]}"#;
    let (status, r) = p.http("POST", "/publish", &[&auth], batch);
    assert_eq!(status, 200, "{r}");
    let r = json(&r);
    assert_eq!(r["results"][0]["seq"].as_u64(), Some(2));
    assert!(r["results"][1]["error"].is_string());
    assert_eq!(r["results"][2]["seq"].as_u64(), Some(3));
    let u = sub.next_update(T).unwrap();
    assert_eq!(
        (u.seq, &u.payload[..]),
        (2, &[1u8, 2][..]),
        "the retry was not applied twice"
    );
    assert_eq!(sub.next_update(T).unwrap().seq, 3);
    // No key, a wrong key, bad JSON.
    assert_eq!(p.http("POST", "/publish", &[], body).0, 401);
    assert_eq!(
        p.http("POST", "/publish", &["Authorization: Bearer nope"], body)
            .0,
        401
    );
    assert_eq!(p.http("POST", "/publish", &[&auth], "{").0, 400);
    // The topic list.
    let (status, r) = p.http("GET", "/topics", &[], "");
    assert_eq!(status, 200);
    let r = json(&r);
    assert_eq!(r["topics"][0]["name"], "odds/7");
    assert_eq!(r["topics"][0]["seq"], 3);
    assert_eq!(r["topics"][0]["subscribers"], 1);
}

/// 10,000 connections evacuated over a 3 s drain: readiness goes false at once, health stays
/// true, the GOAWAYs spread over the window (a histogram is printed), and the process exits 0.
#[test]
fn drain_spreads_goaways_over_the_window_and_exits_zero() {
    yorker_uring::raise_nofile_limit();
    let mut p = Proc::start(&["--cores", "2", "--max-conns-per-core", "9000"]);
    const N: usize = 10_000;
    let hello = Frame::Hello(Hello {
        version: 1,
        role: Role::Subscriber,
        client_name: "drain".into(),
        token: String::new(),
    })
    .to_bytes()
    .unwrap();
    let mut conns: Vec<(TcpStream, Decoder, Option<Instant>)> = Vec::with_capacity(N);
    for _ in 0..N {
        let s = TcpStream::connect(p.addr).expect("connect");
        (&s).write_all(&hello).unwrap();
        s.set_nonblocking(true).unwrap();
        conns.push((s, Decoder::new(DEFAULT_MAX_FRAME), None));
    }
    // Every session is open (WELCOME read) before the drain starts.
    let mut buf = vec![0u8; 4096];
    let mut welcomed = 0;
    let t0 = Instant::now();
    while welcomed < N {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "only {welcomed} WELCOMEs"
        );
        for (s, d, _) in conns.iter_mut() {
            if let Ok(n) = s.read(&mut buf) {
                d.feed(&buf[..n]);
            }
            while let Ok(Some(f)) = d.next_frame() {
                assert!(matches!(f, Frame::Welcome(_)), "{f:?}");
                welcomed += 1;
            }
        }
    }
    assert_eq!(p.http("GET", "/readyz", &[], "").0, 200);
    let (status, _) = p.http("POST", "/drain?over=3s", &[], "");
    assert_eq!(status, 202);
    let start = Instant::now();
    assert_eq!(
        p.http("GET", "/readyz", &[], "").0,
        503,
        "not ready while draining"
    );
    assert_eq!(
        p.http("GET", "/healthz", &[], "").0,
        200,
        "healthy while draining"
    );
    let mut left = N;
    while left > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{left} never got GOAWAY"
        );
        for (s, d, at) in conns.iter_mut().filter(|c| c.2.is_none()) {
            if let Ok(n) = s.read(&mut buf) {
                d.feed(&buf[..n]);
            }
            while let Ok(Some(f)) = d.next_frame() {
                match f {
                    Frame::GoAway(g) => {
                        assert_eq!(g.code, ErrorCode::ShuttingDown as u16);
                        *at = Some(Instant::now());
                        left -= 1;
                    }
                    Frame::Heartbeat => {}
                    other => panic!("expected GOAWAY, got {other:?}"),
                }
            }
        }
    }
    // When each client was told to leave, in tenths of the window.
    let mut hist = [0usize; 12];
    for (_, _, at) in &conns {
        let ms = at.unwrap().duration_since(start).as_millis() as usize;
        hist[(ms / 300).min(11)] += 1;
    }
    eprintln!("GOAWAY arrival over the 3 s drain, per 300 ms: {hist:?}");
    for (i, &n) in hist.iter().take(10).enumerate() {
        assert!(
            (N / 40..=N / 5).contains(&n),
            "bucket {i} holds {n} of {N}: the drain is not spread ({hist:?})"
        );
    }
    assert!(hist[11] == 0, "GOAWAYs long after the window: {hist:?}");
    let status = p.child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
}

#[test]
fn settings_file_then_environment_then_flags() {
    let dir = std::env::temp_dir().join(format!("yorker-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("yorker.toml");
    std::fs::write(
        &file,
        "max-frame = 8192\nheartbeat-ms = 2000\npublisher-key = \"from-file\"\nanonymous-topics = [\"match/*\", \"news\"]\n",
    )
    .unwrap();
    let check = |env: &[(&str, &str)], flags: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_yorker"))
            .arg("check-config")
            .arg("--config")
            .arg(&file)
            .args(flags)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check(&[], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("max-frame = \"8192\""), "{out}");
    assert!(out.contains("heartbeat-ms = \"2000\""), "{out}");
    assert!(out.contains("anonymous-topics = \"match/*,news\""), "{out}");
    assert!(
        out.contains("publisher-key = <hidden>"),
        "secrets are not printed: {out}"
    );
    assert!(!out.contains("from-file"));
    let (_, out, _) = check(&[("YORKER_MAX_FRAME", "16384")], &[]);
    assert!(
        out.contains("max-frame = \"16384\""),
        "environment over file: {out}"
    );
    assert!(out.contains("heartbeat-ms = \"2000\""), "{out}");
    let (_, out, _) = check(&[("YORKER_MAX_FRAME", "16384")], &["--max-frame", "32768"]);
    assert!(
        out.contains("max-frame = \"32768\""),
        "flag over environment: {out}"
    );
    // A bad setting: one clear line, exit 2 (from the file, as from a flag).
    std::fs::write(&file, "max-frames = 1\n").unwrap();
    let (code, _, err) = check(&[], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown setting \"max-frames\""), "{err}");
    std::fs::write(&file, "max-frame = 100\n").unwrap();
    let (code, _, err) = check(&[], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--max-frame"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The example of the deployment kit is valid.
    let out = Command::new(env!("CARGO_BIN_EXE_yorker"))
        .args(["check-config", "--config"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/yorker.toml"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same file runs the engine.
    std::fs::write(&file, "stats-interval = 0\ncores = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_yorker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .arg("--max-frame")
        .arg("10")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an invalid flag still wins and fails"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_yorker"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--max-frame",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().next().expect("an error line");
    let v = json(line);
    assert_eq!(v["level"], "ERROR", "{line}");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-frame"),
        "{line}"
    );
}
