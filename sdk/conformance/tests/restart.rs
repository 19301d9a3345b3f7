//! 1,000 Rust SDK clients through a cut and a server restart (bounded, seconds): the half
//! behind a proxy that cuts them resume with exactly the missed updates; after the restart
//! every client gets the new value as a RESET; no client ever holds two connections.

use std::time::{Duration, Instant};

use yorker_client::{Client, Event, SubResult};
use yorker_conformance::{Engine, Proxy, T};

const N: usize = 1000;

/// Polls every client once without blocking; returns each one's events.
fn sweep(clients: &mut [Client], log: &mut [Vec<Event>]) {
    for (c, l) in clients.iter_mut().zip(log.iter_mut()) {
        while let Some(ev) = c.poll(Duration::ZERO) {
            l.push(ev);
        }
    }
}

fn until(
    what: &str,
    clients: &mut [Client],
    log: &mut [Vec<Event>],
    done: impl Fn(&[Vec<Event>]) -> bool,
) {
    let t = Instant::now();
    while !done(log) {
        assert!(t.elapsed() < 3 * T, "timed out waiting for {what}");
        sweep(clients, log);
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn last_seq(l: &[Event]) -> u64 {
    l.iter()
        .rev()
        .find_map(|e| match e {
            Event::Update { seq, .. } | Event::Reset { seq, .. } => Some(*seq),
            _ => None,
        })
        .unwrap_or(0)
}

#[test]
fn a_thousand_clients_resume_and_reset_through_a_restart() {
    yorker_uring_raise();
    let mut engine = Engine::start();
    let proxy = Proxy::start(engine.addr.clone());
    let direct = *engine.addr.lock().unwrap();
    let mut clients: Vec<Client> = (0..N)
        .map(|i| {
            let addr = if i % 2 == 0 { proxy.addr } else { direct };
            let mut c = Client::connect(&addr.to_string(), "");
            c.subscribe("t");
            c
        })
        .collect();
    let mut log: Vec<Vec<Event>> = vec![Vec::new(); N];
    until("every client subscribed", &mut clients, &mut log, |l| {
        l.iter()
            .all(|e| e.iter().any(|x| matches!(x, Event::Subscribed { .. })))
    });
    engine.publish("t", &[vec![1], vec![2], vec![3]]);
    until("seq 3 everywhere", &mut clients, &mut log, |l| {
        l.iter().all(|e| last_seq(e) == 3)
    });
    // The proxied half loses its sockets; 4..=6 are published meanwhile.
    proxy.cut();
    engine.publish("t", &[vec![4], vec![5], vec![6]]);
    until("seq 6 everywhere", &mut clients, &mut log, |l| {
        l.iter().all(|e| last_seq(e) == 6)
    });
    for (i, l) in log.iter().enumerate() {
        let seqs: Vec<u64> = l
            .iter()
            .filter_map(|e| match e {
                Event::Update { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        // In order, never twice; a client whose first connection broke before the first
        // publish may start from the snapshot (3). What was published after the cut arrives
        // exactly once, resumed or live.
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "client {i}: out of order or twice: {seqs:?}"
        );
        assert!(
            seqs.ends_with(&[4, 5, 6]) && seqs.first().is_some_and(|&s| s <= 3),
            "client {i}: {seqs:?}"
        );
        if i % 2 == 0 {
            assert!(
                l.iter().any(|e| matches!(
                    e,
                    Event::Subscribed {
                        result: SubResult::Resumed,
                        ..
                    }
                )),
                "client {i} did not resume"
            );
        }
    }
    // The restart: GOAWAY, a new epoch, the new value as a RESET.
    for l in log.iter_mut() {
        l.clear();
    }
    engine.restart();
    engine.publish("t", &[vec![9]]);
    until("the RESET everywhere", &mut clients, &mut log, |l| {
        l.iter()
            .all(|e| e.iter().any(|x| matches!(x, Event::Reset { seq: 1, .. })))
    });
    for (i, l) in log.iter().enumerate() {
        let connects = l
            .iter()
            .filter(|e| matches!(e, Event::Connected { .. }))
            .count();
        assert_eq!(
            connects, 1,
            "client {i} connected {connects} times after the restart"
        );
        assert!(
            l.iter().any(|e| matches!(
                e,
                Event::Disconnected {
                    reason: yorker_client::Disconnect::GoAway { .. },
                    ..
                }
            )),
            "client {i} saw no GOAWAY"
        );
    }
    // Exactly one connection per client (no duplicates from the reconnects).
    let t = Instant::now();
    while engine.connections() != N as u64 {
        assert!(
            t.elapsed() < T,
            "{} connections for {N} clients",
            engine.connections()
        );
        sweep(&mut clients, &mut log);
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in clients.iter_mut() {
        c.close();
    }
    let t = Instant::now();
    while engine.connections() != 0 {
        assert!(
            t.elapsed() < T,
            "{} sockets left open after close",
            engine.connections()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The test process holds 1,000 client sockets, the proxy's sockets and the engine's table.
fn yorker_uring_raise() {
    yorker_uring::raise_nofile_limit();
}
