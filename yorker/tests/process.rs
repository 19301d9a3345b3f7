//! The `yorker` binary as a process: SIGTERM, SIGHUP, start-up errors and exit codes.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use yorker_wire::*;

const T: Duration = Duration::from_secs(10);

/// The address in the engine's "listening on ADDR ..." log line.
fn listening_addr(line: &str) -> SocketAddr {
    line.split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// Reads `child`'s stderr (piped) up to its "listening on ADDR" line: the address, the log up
/// to it, and the reader for what follows. Panics with the log if the process exits first.
fn wait_listening(child: &mut Child) -> (SocketAddr, String, BufReader<ChildStderr>) {
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut log = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            let status = child.wait();
            panic!("yorker exited early: {status:?}\n{log}");
        }
        log.push_str(&line);
        if line.contains("listening on") {
            return (listening_addr(&line), log, stderr);
        }
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("yorker-process-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn sigterm_sends_goaway_and_exits_zero() {
    let bin = env!("CARGO_BIN_EXE_yorker");
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--stats-interval",
            "0",
        ])
        .args(["--goaway-base-ms", "500", "--goaway-jitter-ms", "1000"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn yorker");
    // The listening line names the port.
    let (addr, _, _stderr) = wait_listening(&mut child);
    let mut c = Client::connect(addr, Role::Subscriber);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    match c.next(T) {
        Some(Frame::GoAway(g)) => {
            assert_eq!(g.code, ErrorCode::ShuttingDown as u16);
            assert!((500..=1500).contains(&g.reconnect_after_ms), "{g:?}");
        }
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    assert!(c.closed_within(T));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = std::io::stderr().flush();
}

#[test]
fn startup_errors_are_clear_and_nonzero() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let bin = env!("CARGO_BIN_EXE_yorker");
    let out = Command::new(bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cores",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
    let out = Command::new(bin)
        .args(["serve", "--cores", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin)
        .args(["serve", "--max-frame", "12"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-frame"));
    let out = Command::new(bin)
        .args(["serve", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Issue 11, item 8: impossible CPU lists are start-up errors.
#[test]
fn impossible_cpu_lists_are_refused() {
    for (cpus, want) in [("7-99", "not available"), ("0,0,0,0", "twice")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_yorker"))
            .args(["serve", "--listen", "127.0.0.1:0", "--cpus", cpus])
            .output()
            .expect("yorker runs");
        assert_eq!(out.status.code(), Some(2), "--cpus {cpus}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "--cpus {cpus}: {err}");
    }
}

/// Keys rotate without a restart: SIGHUP re-reads the key files.
#[test]
fn sighup_reloads_the_keys() {
    let d = dir();
    let key = d.join("rot.key");
    std::fs::write(&key, [5u8; 32]).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_yorker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"])
        .args(["--stats-interval", "0", "--require-token"])
        .arg("--jwt-key")
        .arg(format!("main={}", key.display()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("yorker starts");
    let (addr, _, mut stderr) = wait_listening(&mut child);
    let mut next_line = |want: &str| loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "yorker exited early"
        );
        if line.contains(want) {
            return line;
        }
    };
    let token = |secret: [u8; 32]| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("main".into());
        encode(
            &h,
            &serde_json::json!({"sub": "s", "exp": now() + 600}),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap()
    };
    let _old = connect_with_token(addr, Role::Subscriber, token([5; 32]));
    assert!(refused(addr, 2, Role::Subscriber, token([6; 32])).contains("signature"));
    std::fs::write(&key, [6u8; 32]).unwrap();
    let kill = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success())
    };
    kill("-HUP");
    next_line("reloaded");
    let _new = connect_with_token(addr, Role::Subscriber, token([6; 32]));
    assert!(refused(addr, 2, Role::Subscriber, token([5; 32])).contains("signature"));
    kill("-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// A shard that dies (here: panics through the test-only fault hook) is noticed: the process
/// logs it, sends GOAWAY on the other shards' connections, drains and exits 1 so that a
/// supervisor restarts it.
#[test]
fn a_dead_shard_drains_the_others_and_exits_1() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_yorker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cores", "2"])
        .args(["--stats-interval", "0", "--goaway-jitter-ms", "0"])
        .env("YORKER_TEST_KILL_SHARD", "1:700")
        .stderr(Stdio::piped())
        .spawn()
        .expect("yorker starts");
    let (addr, mut log, stderr) = wait_listening(&mut child);
    // Connections land on both shards (SO_REUSEPORT hashes their source ports).
    let mut clients: Vec<Client> = (0..40)
        .map(|_| Client::connect(addr, Role::Subscriber))
        .collect();
    let mut goaways = 0;
    for c in &mut clients {
        loop {
            match c.next(T) {
                Some(Frame::GoAway(g)) => {
                    assert_eq!(g.code, ErrorCode::ShuttingDown as u16);
                    goaways += 1;
                    break;
                }
                Some(Frame::Heartbeat) => continue,
                None => break, // on the dead shard: the connection just ends
                Some(other) => panic!("{other:?}"),
            }
        }
    }
    assert!(
        goaways > 0,
        "no connection of the surviving shard got GOAWAY"
    );
    assert!(goaways < 40, "no connection was on the dead shard");
    let status = child.wait().unwrap();
    for line in stderr.lines() {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("ended unexpectedly"), "{log}");
}

/// A restart right after kill -9: the dead engine's listeners linger in the port's
/// SO_REUSEPORT group until the kernel tears its rings down, and connections hashed to them
/// were reset. The new engine waits for them to go before it listens: every connection it
/// takes is its own.
#[test]
fn a_restart_after_kill_9_takes_every_connection_itself() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let start = |listen: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_yorker"))
            .args(["serve", "--listen", listen, "--cores", "2"])
            .args(["--stats-interval", "0"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("yorker starts");
        let (addr, _, stderr) = wait_listening(&mut child);
        (child, addr, stderr)
    };
    let (mut old, addr, _e) = start(&listen);
    let held: Vec<Client> = (0..50)
        .map(|_| Client::connect(addr, Role::Subscriber))
        .collect();
    old.kill().unwrap(); // SIGKILL
    old.wait().unwrap();
    let (mut new, addr, _e2) = start(&listen);
    for i in 0..200 {
        let mut c = Client::raw(addr);
        // A connection taken by a dead listener never gets WELCOME: fail fast.
        if let Err(other) = c.hello(Role::Subscriber, Duration::from_secs(2)) {
            panic!(
                "connection {i} after the restart: {other:?} (eof {})",
                c.eof
            );
        }
    }
    drop(held);
    new.kill().unwrap();
    new.wait().unwrap();
}

/// Issue 19: one core holds more subscribed connections than RLIMIT_NOFILE allows one ring's
/// direct-descriptor table: with the limit at 1,024 and `--max-conns-per-core 3000`, the core
/// runs several rings (shard threads pinned to it), and every connection receives the update.
#[test]
fn one_core_holds_more_connections_than_rlimit_nofile() {
    // The test's own clients need their descriptors.
    yorker_uring::raise_nofile_limit();
    let mut child = Command::new("bash")
        .args(["-c", r#"ulimit -n 1024 && exec "$0" "$@""#])
        .arg(env!("CARGO_BIN_EXE_yorker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"])
        .args(["--max-conns-per-core", "3000", "--publisher-key", KEY])
        .args(["--stats-interval", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("yorker starts");
    let (addr, log, _stderr) = wait_listening(&mut child);
    assert!(
        log.contains("4 rings per core, 750 connections each"),
        "{log}"
    );
    let n = 2_900;
    let mut shards = std::collections::BTreeSet::new();
    let mut subs: Vec<Client> = (0..n)
        .map(|_| {
            let mut c = Client::connect(addr, Role::Subscriber);
            shards.insert(c.welcome.as_ref().unwrap().session_id >> 24 & 0xff);
            assert_eq!(c.subscribe("all", false).result, SubResult::Ok);
            c
        })
        .collect();
    assert_eq!(shards.len(), 4, "connections on every ring: {shards:?}");
    let mut p = Client::connect(addr, Role::Publisher);
    p.publish("all", 0, b"everyone");
    for (i, s) in subs.iter_mut().enumerate() {
        let u = s
            .next_update(T)
            .unwrap_or_else(|| panic!("subscriber {i} got nothing"));
        assert_eq!((u.seq, &u.payload[..]), (1, &b"everyone"[..]));
    }
    drop(subs);
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
