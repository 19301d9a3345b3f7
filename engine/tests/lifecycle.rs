//! Engine v1 over real loopback sockets and real io_uring: fan-out across shards, the
//! connection lifecycle, bad input, vanishing and stalled clients, graceful shutdown.

mod common;

use std::net::Shutdown;
use std::time::Duration;

use common::*;
use yorker_wire::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn every_update_once_in_order_to_every_subscriber_across_two_shards() {
    let server = start(config(2));
    let addr = server.local_addr();
    let mut subs: Vec<Client> = (0..24)
        .map(|_| Client::connect(addr, Role::Subscriber))
        .collect();
    for s in &mut subs {
        let ack = s.subscribe("match/1", false);
        assert_eq!((ack.result, ack.seq), (SubResult::Ok, 0));
    }
    // Connections land on both shards (SO_REUSEPORT hashing; 24 all on one shard has p = 2^-23).
    wait_for(T, "subscriptions", || {
        server.totals().core.subscriptions == 24
    });
    let per_shard: Vec<u64> = server
        .shard_stats()
        .iter()
        .map(|(s, _)| s.subscriptions)
        .collect();
    assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");

    let mut p = Client::connect(addr, Role::Publisher);
    let n = 300u64;
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                while (seqs.len() as u64) < n {
                    let u = s.next_update(T).expect("update");
                    assert_eq!(u.flags, 0);
                    assert_eq!(&u.payload[..8], &u.seq.to_be_bytes());
                    seqs.push(u.seq);
                }
                seqs
            })
        })
        .collect();
    for seq in 1..=n {
        p.publish("match/1", 0, &seq.to_be_bytes());
    }
    for r in readers {
        assert_eq!(r.join().unwrap(), (1..=n).collect::<Vec<_>>());
    }
    let t = server.totals();
    // Encode once: one frame per update whatever the number of subscribers and shards.
    assert_eq!(t.frames_encoded, n);
    assert_eq!(t.core.updates_in, n);
    assert_eq!(t.core.updates_fanned_out, n * 2);
    wait_for(T, "deliveries counted", || {
        server.totals().core.deliveries == n * 24
    });
}

#[test]
fn handshake_timeout_closes_silent_connections() {
    let mut cfg = config(1);
    cfg.core.handshake_timeout_ms = 150;
    let server = start(cfg);
    let mut c = Client::raw(server.local_addr());
    c.expect_error(ErrorCode::HandshakeTimeout);
    assert!(c.closed_within(T));
    wait_for(T, "slot freed", || server.totals().core.connections == 0);
}

#[test]
fn heartbeats_then_timeout_for_silent_clients() {
    let mut cfg = config(1);
    cfg.core.heartbeat_ms = 100;
    let server = start(cfg);
    let mut c = Client::connect(server.local_addr(), Role::Subscriber);
    assert_eq!(c.welcome.as_ref().unwrap().heartbeat_ms, 100);
    // Silent: the server sends heartbeats while idle, then gives up after three intervals.
    let mut heartbeats = 0;
    loop {
        match c.next(T) {
            Some(Frame::Heartbeat) => heartbeats += 1,
            Some(Frame::Error(e)) => {
                assert_eq!(e.code, ErrorCode::HeartbeatTimeout as u16);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(heartbeats >= 1);
    assert!(c.closed_within(T));
    // A client that pings stays.
    let mut live = Client::connect(server.local_addr(), Role::Subscriber);
    for nonce in 0..8 {
        live.send(&Frame::Ping { nonce });
        loop {
            match live.next(T) {
                Some(Frame::Pong { nonce: n }) => {
                    assert_eq!(n, nonce);
                    break;
                }
                Some(Frame::Heartbeat) => {}
                other => panic!("{other:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(60));
    }
}

#[test]
fn bad_input_gets_error_and_close_while_others_keep_receiving() {
    let server = start(config(2));
    let addr = server.local_addr();
    let mut good = Client::connect(addr, Role::Subscriber);
    good.subscribe("t", false);
    let mut p = Client::connect(addr, Role::Publisher);

    let cases: Vec<(Vec<u8>, ErrorCode, bool)> = vec![
        (
            b"\x00\x00\x00\x05\x42junk".to_vec(),
            ErrorCode::UnknownFrameType,
            false,
        ),
        (vec![0, 0x10, 0, 0, 1], ErrorCode::FrameTooLarge, false), // 1 MiB before HELLO
        (vec![0, 0, 0, 0], ErrorCode::MalformedFrame, false),
        (
            Frame::Ping { nonce: 1 }.to_bytes().unwrap().to_vec(),
            ErrorCode::UnexpectedFrame,
            false,
        ),
        (
            vec![0, 0, 0, 2, 0x01, 0x00],
            ErrorCode::MalformedFrame,
            false,
        ), // truncated HELLO
        (vec![0, 0x10, 0, 0, 5], ErrorCode::FrameTooLarge, true), // after HELLO
        (
            Frame::Heartbeat.to_bytes().unwrap().to_vec(),
            ErrorCode::UnexpectedFrame,
            true,
        ),
    ];
    for (i, (bytes, code, after_hello)) in cases.into_iter().enumerate() {
        let mut bad = if after_hello {
            Client::connect(addr, Role::Subscriber)
        } else {
            Client::raw(addr)
        };
        bad.send_raw(&bytes);
        bad.expect_error(code);
        assert!(bad.closed_within(T), "case {i}");
        p.publish("t", 0, &[i as u8]);
        let u = good.next_update(T).expect("others keep receiving");
        assert_eq!(u.seq, i as u64 + 1);
    }
    // Subscribers may not publish; wrong keys are refused.
    let mut s = Client::connect(addr, Role::Subscriber);
    s.publish("t", 0, b"x");
    s.expect_error(ErrorCode::NotPublisher);
    let mut wrong = Client::raw(addr);
    wrong.send(&Frame::Hello(Hello {
        version: 1,
        role: Role::Publisher,
        client_name: "x".into(),
        token: "nope".into(),
    }));
    wrong.expect_error(ErrorCode::AuthFailed);
    let mut v0 = Client::raw(addr);
    v0.send(&Frame::Hello(Hello {
        version: 0,
        role: Role::Subscriber,
        client_name: "x".into(),
        token: String::new(),
    }));
    v0.expect_error(ErrorCode::UnsupportedVersion);
    p.publish("bad topic", 0, b"x");
    p.expect_error(ErrorCode::InvalidTopic);
    // Per-topic problems are SUBACK results, not errors.
    let ack = good.subscribe_with(vec![
        SubscribeEntry {
            topic: "/bad".into(),
            resume: None,
            conflate: true,
            presence: false,
        },
        SubscribeEntry {
            topic: "t".into(),
            resume: None,
            conflate: true,
            presence: false,
        },
    ]);
    assert_eq!(ack.entries[0].result, SubResult::InvalidTopic);
    assert_eq!(ack.entries[1].result, SubResult::AlreadySubscribed);
    wait_for(T, "bad connections closed", || {
        server.totals().core.connections == 1
    });
}

#[test]
fn vanishing_and_stalled_clients_free_their_slots_and_send_buffers() {
    let mut cfg = config(1);
    cfg.core.write_timeout_ms = 300;
    cfg.core.outbox_limit = 8 << 20;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut p = Client::connect(addr, Role::Publisher);
    // A stalled reader (never reads) and a vanishing one (reset mid-send).
    let mut stalled = Client::connect_small_rcvbuf(addr, Role::Subscriber);
    stalled.subscribe("big", true);
    let mut vanishing = Client::connect_small_rcvbuf(addr, Role::Subscriber);
    vanishing.subscribe("big", true);
    let mut fast = Client::connect(addr, Role::Subscriber);
    fast.subscribe("big", true);
    let payload = vec![0xabu8; 60_000];
    // Paced by the fast reader, so every update also reaches the two stalled sockets, until
    // well past the most the kernel buffers for one socket (tcp_wmem max on the server side,
    // plus the client's 4 KB window): after that their sends must be stuck.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let updates = (wmem_max + (2 << 20)) / payload.len() + 4;
    for seq in 1..=updates as u64 {
        p.publish("big", 0, &payload);
        while fast.next_update(T).expect("fast reader").seq < seq {}
    }
    let seq = updates as u64;
    socket2::SockRef::from(&vanishing.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(vanishing); // RST with a send in flight
                     // The write timeout cancels the stuck send and closes the stalled reader.
    wait_for(T, "write timeout", || {
        server.totals().core.write_timeouts >= 1
    });
    p.publish("big", 0, b"last");
    while fast.next_update(T).expect("fast reader").seq <= seq {}
    wait_for(T, "slots freed", || server.totals().core.connections == 2);
    wait_for(T, "no send left in flight", || {
        server.sends_in_flight() == 0
    });
    stalled.stream.shutdown(Shutdown::Both).ok();
    assert_eq!(server.totals().core.outbox_bytes, 0);
}

/// SO_REUSEPORT would let a second engine of the same user bind the same port and silently take
/// part of the connections; it must refuse to start instead.
#[test]
fn a_second_engine_on_the_same_address_is_refused() {
    let first = start(config(1));
    let addr = first.local_addr();
    let mut cfg = config(1);
    cfg.listen = addr;
    match yorker_engine::Server::start(cfg) {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("another yorker engine"), "{msg}");
        }
        Ok(_) => panic!("a second engine started on {addr}"),
    }
    // The first one is unaffected, and the address is free again once it stops.
    let mut c = Client::connect(addr, Role::Subscriber);
    assert!(c.welcome.take().is_some());
    drop(c);
    drop(first);
    let mut cfg = config(1);
    cfg.listen = addr;
    let again = yorker_engine::Server::start(cfg).expect("the address is free again");
    assert_eq!(again.local_addr(), addr);
}

/// A second engine on a more specific address of the same port (127.0.0.1:P next to
/// 0.0.0.0:P) would take every loopback client of the first: refused too.
#[test]
fn a_second_engine_on_a_more_specific_address_of_the_port_is_refused() {
    let mut cfg = config(1);
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let first = start(cfg);
    let port = first.local_addr().port();
    let mut cfg = config(1);
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    match yorker_engine::Server::start(cfg) {
        Err(e) => assert!(e.to_string().contains("another yorker engine"), "{e}"),
        Ok(_) => panic!("a second engine started on 127.0.0.1:{port}"),
    }
    // Loopback clients still reach the first engine.
    let mut c = Client::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Role::Subscriber,
    );
    assert!(c.welcome.take().is_some());
}

/// Regression: closing a connection must never touch the connection the kernel puts in the
/// same slot next. (A Shutdown op, run late by io-wq, once shut down whichever socket held the
/// slot by then.) Churn many connections and check that every survivor still works.
#[test]
fn churn_never_closes_the_next_occupant_of_a_slot() {
    let server = start(config(1));
    let addr = server.local_addr();
    let mut p = Client::connect(addr, Role::Publisher);
    let mut live: Vec<Client> = Vec::new();
    for round in 0..60 {
        // Close a few (client-side EOF, and some resets), open a few more at the same time.
        let n = live.len().min(4);
        for c in live.drain(..n) {
            if round % 2 == 0 {
                socket2::SockRef::from(&c.stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(c);
        }
        for _ in 0..5 {
            let mut c = Client::connect(addr, Role::Subscriber);
            c.subscribe("churn", true);
            live.push(c);
        }
    }
    p.publish("churn", 0, b"still there?");
    for (i, c) in live.iter_mut().enumerate() {
        let u = c
            .next_update(T)
            .unwrap_or_else(|| panic!("survivor {i} was closed"));
        assert_eq!(&u.payload[..], b"still there?");
    }
    wait_for(T, "closed slots freed", || {
        server.totals().core.connections == live.len() as u64 + 1
    });
}

/// Issues 12 and 19: a core that has reached `--max-conns-per-core` moves each connection the
/// kernel's reuseport hash still gives it to a core with room (`IORING_OP_MSG_RING`), where it
/// is served like any other; only when every core is full is a client refused, with GOAWAY
/// `server_full` and a retry hint.
#[test]
fn a_full_core_moves_new_connections_to_one_with_room() {
    let mut cfg = config(2);
    cfg.core.max_connections = 8;
    let server = start(cfg);
    let addr = server.local_addr();
    // The core a session lives on is in its id (bits 24-31).
    let core = |c: &Client| (c.welcome.as_ref().expect("welcomed").session_id >> 24) & 0xff;
    let load = |i: usize| server.shard_stats()[i].0.connections;
    // Every connection so far counted where the hash put it, and every hand-off completed:
    // returns how many were handed over.
    let mut connected = 0u64;
    let settle = |connected: u64| {
        wait_for(T, "counters settled", || {
            let t = server.totals().core;
            t.accepted == connected && t.handed_in == t.handed_off
        });
        server.totals().core.handed_in
    };
    // Fill core 0; connections the hash gives to core 1 are closed again.
    let mut subs: Vec<Client> = Vec::new();
    while subs.len() < 8 {
        assert!(connected < 400, "the hash never chose core 0");
        let c = Client::connect(addr, Role::Subscriber);
        connected += 1;
        if core(&c) == 0 {
            subs.push(c);
        } else {
            drop(c);
            wait_for(T, "core 1 empty again", || load(1) == 0);
        }
    }
    assert_eq!(settle(connected), 0, "core 0 had room");
    // Core 0 is full: whatever the hash chooses, the next connections end up on core 1. Until
    // one has got there by a hand-off, core 1 keeps two slots free (clients the hash sent to
    // core 1 directly are closed again), so the test sees at least one.
    while subs.len() < 15 {
        assert!(connected < 800, "the hash never chose core 0 again");
        let moved_before = settle(connected);
        let c = Client::connect(addr, Role::Subscriber);
        connected += 1;
        assert_eq!(core(&c), 1, "a full core kept a connection");
        let moved = settle(connected) > moved_before;
        if moved || moved_before > 0 || subs.len() < 14 {
            subs.push(c);
        } else {
            let n = load(1);
            drop(c);
            wait_for(T, "slot freed", || load(1) == n - 1);
        }
    }
    let mut publisher = Client::connect(addr, Role::Publisher);
    connected += 1;
    assert_eq!(core(&publisher), 1, "a full core kept a connection");
    assert!(settle(connected) >= 1, "no connection was handed over");
    let t = server.totals().core;
    assert_eq!((t.refused_full, t.handoff_failed), (0, 0));
    assert_eq!((load(0), load(1)), (8, 8));
    for s in &mut subs {
        assert_eq!(s.subscribe("all", false).result, SubResult::Ok);
    }
    publisher.publish("all", 0, b"x");
    for s in &mut subs {
        assert_eq!(s.next_update(T).expect("served").seq, 1);
    }
    // Every core full: refused, with a hint, and nobody else is disturbed.
    let mut extra = Client::raw(addr);
    match extra.hello(Role::Subscriber, T) {
        Err(Some(Frame::GoAway(g))) => {
            assert_eq!(g.code, ErrorCode::ServerFull as u16);
            assert!(g.reconnect_after_ms > 0);
        }
        other => panic!("expected GOAWAY server_full, got {other:?}"),
    }
    publisher.publish("all", 0, b"y");
    for s in &mut subs {
        assert_eq!(s.next_update(T).expect("still served").seq, 2);
    }
}
