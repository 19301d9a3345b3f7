//! Delivery semantics over real sockets: snapshots, resume, conflation and the disconnect
//! policy for slow readers, the urgent lane, broadcast.

mod common;

use std::time::Duration;

use common::*;
use yorker_engine::proto::SlowPolicy;
use yorker_wire::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn late_subscriber_gets_the_latest_value_as_a_snapshot() {
    let server = start(config(2));
    let addr = server.local_addr();
    let mut p = Client::connect(addr, Role::Publisher);
    let mut early = Client::connect(addr, Role::Subscriber);
    early.subscribe("score", false);
    for i in 1..=5u8 {
        p.publish("score", 0, &[i]);
    }
    while early.next_update(T).unwrap().seq < 5 {}
    let mut late = Client::connect(addr, Role::Subscriber);
    let ack = late.subscribe("score", true);
    assert_eq!((ack.result, ack.seq), (SubResult::Ok, 5));
    let snap = late.next_update(T).unwrap();
    assert_eq!(
        (snap.seq, snap.flags, &snap.payload[..]),
        (5, update_flags::SNAPSHOT, &[5u8][..])
    );
    p.publish("score", 0, &[6]);
    let live = late.next_update(T).unwrap();
    assert_eq!((live.seq, live.flags), (6, 0));
}

#[test]
fn reconnect_with_resume_gets_exactly_the_missed_updates() {
    let mut cfg = config(2);
    cfg.registry.history_depth = 8;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut p = Client::connect(addr, Role::Publisher);
    let mut c = Client::connect(addr, Role::Subscriber);
    let epoch = c.welcome.as_ref().unwrap().epoch;
    c.subscribe("m", false);
    for i in 1..=3u8 {
        p.publish("m", 0, &[i]);
    }
    while c.next_update(T).unwrap().seq < 3 {}
    drop(c); // the tunnel
    for i in 4..=7u8 {
        p.publish("m", 0, &[i]);
    }
    // Wait until the server has sequenced them: a live subscriber sees seq 7.
    let mut probe = Client::connect(addr, Role::Subscriber);
    probe.subscribe("m", false);
    while probe.next_update(T).unwrap().seq < 7 {}
    let mut back = Client::connect(addr, Role::Subscriber);
    let ack = back.subscribe_with(vec![SubscribeEntry {
        topic: "m".into(),
        resume: Some(ResumeFrom { epoch, seq: 3 }),
        conflate: false,
        presence: false,
    }]);
    assert_eq!(
        (ack.entries[0].result, ack.entries[0].seq),
        (SubResult::Resumed, 7)
    );
    let got: Vec<(u64, u8)> = (0..4)
        .map(|_| back.next_update(T).unwrap())
        .map(|u| (u.seq, u.payload[0]))
        .collect();
    assert_eq!(got, vec![(4, 4), (5, 5), (6, 6), (7, 7)]);
    p.publish("m", 0, &[8]);
    assert_eq!(
        back.next_update(T).unwrap().seq,
        8,
        "nothing replayed twice"
    );

    // Beyond the history (depth 8) or from another epoch: a RESET snapshot.
    for i in 9..=30u8 {
        p.publish("m", 0, &[i]);
    }
    while back.next_update(T).unwrap().seq < 30 {}
    for resume in [
        ResumeFrom { epoch, seq: 8 },
        ResumeFrom {
            epoch: epoch + 1,
            seq: 30,
        },
    ] {
        let mut r = Client::connect(addr, Role::Subscriber);
        let ack = r.subscribe_with(vec![SubscribeEntry {
            topic: "m".into(),
            resume: Some(resume),
            conflate: true,
            presence: false,
        }]);
        assert_eq!(ack.entries[0].result, SubResult::Reset);
        let u = r.next_update(T).unwrap();
        assert_eq!(
            (u.seq, u.flags),
            (30, update_flags::SNAPSHOT | update_flags::RESET)
        );
    }
}

/// Publishes `n` updates of `size` bytes to "feed", paced by a fast reader (so that fast
/// readers are never the slow ones), and returns what the fast readers saw.
fn slow_reader_scenario(policy: SlowPolicy) -> (Vec<u64>, Client, yorker_engine::Server) {
    let mut cfg = config(1);
    cfg.core.slow_policy = policy;
    cfg.core.outbox_limit = 512 * 1024;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut p = Client::connect(addr, Role::Publisher);
    let mut slow = Client::connect_small_rcvbuf(addr, Role::Subscriber);
    slow.subscribe("feed", true);
    let mut fast: Vec<Client> = (0..3)
        .map(|_| Client::connect(addr, Role::Subscriber))
        .collect();
    for f in &mut fast {
        f.subscribe("feed", false);
    }
    let payload = vec![7u8; 32 * 1024];
    let n = 400u64; // 12.8 MB: far beyond what the kernel buffers for the slow socket
    let mut seen = Vec::new();
    for seq in 1..=n {
        p.publish("feed", 0, &payload);
        for (i, f) in fast.iter_mut().enumerate() {
            let u = f.next_update(T).expect("fast reader keeps receiving");
            assert_eq!(u.seq, seq, "fast reader {i} lost or reordered an update");
            if i == 0 {
                seen.push(u.seq);
            }
        }
    }
    (seen, slow, server)
}

#[test]
fn slow_reader_is_conflated_while_fast_readers_lose_nothing() {
    let (seen, mut slow, server) = slow_reader_scenario(SlowPolicy::Conflate);
    assert_eq!(seen.len(), 400);
    assert!(server.totals().core.conflated > 0);
    // The slow reader now reads: increasing seqs with gaps, ending at the latest.
    let mut last = 0;
    let mut gaps = 0;
    while last < 400 {
        let u = slow
            .next_update(T)
            .expect("slow reader gets the latest value eventually");
        assert!(u.seq > last);
        if u.seq > last + 1 {
            gaps += 1;
        }
        last = u.seq;
    }
    assert!(gaps > 0, "the slow reader was never skipped ahead");
    assert_eq!(server.totals().core.slow_disconnects, 0);
}

#[test]
fn slow_reader_is_disconnected_under_the_disconnect_policy() {
    let (seen, mut slow, server) = slow_reader_scenario(SlowPolicy::Disconnect);
    assert_eq!(seen.len(), 400);
    slow.expect_error(ErrorCode::SlowConsumer);
    assert!(slow.closed_within(T));
    let t = server.totals().core;
    assert_eq!(t.conflated, 0);
    assert!(t.slow_disconnects >= 1);
}

#[test]
fn urgent_update_overtakes_a_backlog() {
    let mut cfg = config(1);
    cfg.core.outbox_limit = 16 << 20;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut p = Client::connect(addr, Role::Publisher);
    let mut c = Client::connect_small_rcvbuf(addr, Role::Subscriber);
    c.subscribe("odds", false);
    c.subscribe("market", true);
    let mut pace = Client::connect(addr, Role::Subscriber);
    pace.subscribe("odds", false);
    // A backlog that cannot fit in the kernel's buffers: it waits in the outbox.
    let payload = vec![1u8; 32 * 1024];
    let n = 250u64;
    for seq in 1..=n {
        p.publish("odds", 0, &payload);
        while pace.next_update(T).unwrap().seq < seq {}
    }
    p.publish("market", update_flags::URGENT, b"suspended");
    pace.subscribe("market", true);
    let u = pace.next_update(T).unwrap();
    assert_eq!(
        u.flags & update_flags::SNAPSHOT,
        update_flags::SNAPSHOT,
        "published before the probe subscribed"
    );
    // Now read everything: the urgent update must come before the end of the odds backlog.
    let mut odds_after_urgent = 0;
    let mut urgent_seen = false;
    let mut last_odds = 0;
    while last_odds < n || !urgent_seen {
        let u = c.next_update(T).expect("all of it arrives");
        if u.payload.as_ref() == b"suspended" {
            assert_eq!(u.flags, update_flags::URGENT);
            urgent_seen = true;
        } else {
            assert_eq!(
                u.seq,
                last_odds + 1,
                "non-conflating backlog stays complete and ordered"
            );
            last_odds = u.seq;
            if urgent_seen {
                odds_after_urgent += 1;
            }
        }
    }
    assert!(
        odds_after_urgent > 0,
        "the urgent update did not overtake the backlog"
    );
    assert!(server.totals().core.urgent >= 1);
}

#[test]
fn broadcast_reaches_every_subscriber() {
    let server = start(config(2));
    let addr = server.local_addr();
    let mut p = Client::connect(addr, Role::Publisher);
    let mut subscribed = Client::connect(addr, Role::Subscriber);
    let id = subscribed.subscribe("announce", true).topic_id;
    let mut others: Vec<Client> = (0..6)
        .map(|_| Client::connect(addr, Role::Subscriber))
        .collect();
    for o in &mut others {
        o.subscribe("match/9", true);
    }
    p.publish("announce", update_flags::BROADCAST, b"no room");
    for c in others.iter_mut().chain(std::iter::once(&mut subscribed)) {
        let u = c.next_update(T).unwrap();
        assert_eq!(
            (u.topic_id, u.seq, u.flags),
            (id, 1, update_flags::BROADCAST)
        );
        assert_eq!(&u.payload[..], b"no room");
    }
    assert!(
        subscribed.next_update(Duration::from_millis(100)).is_none(),
        "delivered once"
    );
}
