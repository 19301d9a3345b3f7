//! Regression tests for attacks by anonymous clients (the trust boundary): each reproduces the
//! attack over real sockets and checks that a well-behaved subscriber on the same core keeps
//! receiving every update, in order, while it runs.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use yorker_wire::*;

const T: Duration = Duration::from_secs(10);

/// A NO_CONFLATE subscriber of `canary` on the same (single) core as the attack, and a
/// publisher that feeds it. `check` publishes one more update and asserts it arrives, in order.
struct Canary {
    sub: Client,
    publisher: Client,
    next: u64,
}

impl Canary {
    fn start(addr: std::net::SocketAddr) -> Canary {
        let mut sub = Client::connect(addr, Role::Subscriber);
        let e = sub.subscribe("canary", false);
        assert_eq!(e.result, SubResult::Ok);
        let mut c = Canary {
            sub,
            publisher: Client::connect(addr, Role::Publisher),
            next: 1,
        };
        c.check();
        c
    }

    fn check(&mut self) {
        self.publisher
            .publish("canary", 0, &self.next.to_be_bytes());
        let u = self
            .sub
            .next_update(T)
            .expect("the canary keeps receiving during the attack");
        assert_eq!(u.seq, self.next, "canary lost or reordered an update");
        assert_eq!(&u.payload[..], &self.next.to_be_bytes());
        self.next += 1;
    }
}

fn subscribe_names(c: &mut Client, names: impl Iterator<Item = String>) -> SubAck {
    c.subscribe_with(
        names
            .map(|topic| SubscribeEntry {
                topic,
                resume: None,
                conflate: true,
                presence: false,
            })
            .collect(),
    )
}

/// Issue 11, item 1: a subscriber at its subscription limit used to create a topic for every
/// refused entry, filling the registry until the publisher got `topic_limit`.
#[test]
fn subscribers_cannot_fill_the_topic_registry() {
    let mut cfg = config(1);
    cfg.core.max_subscriptions = 8;
    cfg.registry.max_placeholders = 20;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut canary = Canary::start(addr);
    let base = server.registry().len();

    let mut attacker = Client::connect(addr, Role::Subscriber);
    let first = subscribe_names(&mut attacker, (0..8).map(|i| format!("junk/{i}")));
    assert!(first.entries.iter().all(|e| e.result == SubResult::Ok));
    canary.check();
    // At its limit: every further entry is refused with id 0 and creates nothing.
    for round in 0..20 {
        let a = subscribe_names(&mut attacker, (0..8).map(|i| format!("junk/{round}/{i}")));
        for e in &a.entries {
            assert_eq!(
                (e.result, e.topic_id, e.seq),
                (SubResult::LimitReached, 0, 0)
            );
        }
        canary.check();
    }
    assert_eq!(server.registry().len(), base + 8);

    // More attackers hit the placeholder cap, never the publishers' topic budget.
    let mut others: Vec<Client> = (0..3)
        .map(|_| Client::connect(addr, Role::Subscriber))
        .collect();
    for (n, o) in others.iter_mut().enumerate() {
        subscribe_names(o, (0..8).map(|i| format!("more/{n}/{i}")));
    }
    assert_eq!(server.registry().placeholders(), 20);
    let mut p = Client::connect(addr, Role::Publisher);
    for i in 0..50 {
        p.publish(&format!("real/{i}"), 0, b"v");
    }
    let mut late = Client::connect(addr, Role::Subscriber);
    let e = late.subscribe("real/49", true);
    assert_eq!(
        (e.result, e.seq),
        (SubResult::Ok, 1),
        "the publisher created its topics"
    );
    canary.check();

    // Placeholders go with their subscribers.
    drop(attacker);
    drop(others);
    wait_for(T, "placeholders freed", || {
        server.registry().placeholders() == 0
    });
    canary.check();
}

/// Issue 11, item 6: requests with more entries than max_subscriptions are refused, so no
/// reply can outgrow a frame.
#[test]
fn oversized_requests_are_refused_and_replies_fit_a_frame() {
    let server = start(config(1));
    let addr = server.local_addr();
    let mut canary = Canary::start(addr);
    let max = 64;
    let mut c = Client::connect(addr, Role::Subscriber);
    let a = subscribe_names(&mut c, (0..max).map(|i| format!("t/{i}")));
    assert_eq!(a.entries.len(), max);
    let mut c = Client::connect(addr, Role::Subscriber);
    c.send(&Frame::Subscribe(Subscribe {
        request_id: 9,
        entries: (0..5_041)
            .map(|i| SubscribeEntry {
                topic: format!("t/{i}"),
                resume: None,
                conflate: true,
                presence: false,
            })
            .collect(),
    }));
    c.expect_error(ErrorCode::TooManyEntries);
    canary.check();
    let mut c = Client::connect(addr, Role::Subscriber);
    c.send(&Frame::Unsubscribe(Unsubscribe {
        request_id: 9,
        topic_ids: (0..16_000).collect(),
    }));
    c.expect_error(ErrorCode::TooManyEntries);
    canary.check();
}

/// Issue 11, item 4: the header of a large frame followed by one byte at a time used to hold
/// the connection (and up to max_frame bytes) forever.
#[test]
fn a_dripped_frame_is_cut_off_and_costs_only_its_bytes() {
    let mut cfg = config(1);
    cfg.core.frame_timeout_ms = 400;
    cfg.core.heartbeat_ms = 60_000;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut canary = Canary::start(addr);
    let mut d = Client::connect(addr, Role::Subscriber);
    // A 60,000-byte PUBLISH announced, then dripped.
    d.send_raw(&[0, 0, 0xea, 0x60, frame_type::PUBLISH]);
    d.send_raw(&[0; 10]);
    wait_for(T, "the partial frame is held", || {
        server.totals().core.inbound_bytes > 0
    });
    assert!(
        server.totals().core.inbound_bytes < 4096,
        "nothing is reserved for the announced length: {}",
        server.totals().core.inbound_bytes
    );
    let mut cut = false;
    for _ in 0..40 {
        if std::io::Write::write_all(&mut d.stream, &[0]).is_err() {
            break;
        }
        canary.check();
        if let Some(Frame::Error(e)) = d.next(Duration::from_millis(50)) {
            assert_eq!(e.code, ErrorCode::FrameTimeout as u16);
            cut = true;
            break;
        }
    }
    assert!(cut, "the dripping connection was not cut off");
    assert!(d.closed_within(T));
    wait_for(T, "partial bytes released", || {
        server.totals().core.inbound_bytes == 0
    });
    assert_eq!(server.totals().core.frame_timeouts, 1);
    canary.check();
}

/// The partial frames of all connections of a core are capped together: beyond the cap the
/// largest holders are closed with `server_busy`.
#[test]
fn partial_frames_are_capped_per_core() {
    let mut cfg = config(1);
    cfg.core.max_frame = 8192;
    cfg.core.shard_inbound_cap = 20_000;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut canary = Canary::start(addr);
    let mut holders: Vec<Client> = (0..10)
        .map(|_| {
            let mut c = Client::connect(addr, Role::Subscriber);
            // 4,000 of an announced 8,000-byte frame.
            c.send_raw(&[0, 0, 0x1f, 0x40, frame_type::PUBLISH]);
            c.send_raw(&[0; 4_000]);
            c
        })
        .collect();
    let mut busy = 0;
    for h in &mut holders {
        if let Some(Frame::Error(e)) = h.next(Duration::from_millis(300)) {
            assert_eq!(e.code, ErrorCode::ServerBusy as u16);
            busy += 1;
        }
    }
    assert!(
        busy >= 4,
        "only {busy} connections were closed over the cap"
    );
    assert!(server.totals().core.inbound_bytes <= 20_000);
    canary.check();
}

/// Issue 11, item 2: anonymous relay HELLOs each used to build a snapshot of every topic.
#[test]
fn anonymous_relay_hellos_are_refused_without_snapshot_work() {
    let mut cfg = config(1);
    cfg.core.relay_key = None;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut canary = Canary::start(addr);
    let mut p = Client::connect(addr, Role::Publisher);
    for i in 0..200 {
        p.publish(&format!("m/{i}"), 0, &[7; 100]);
    }
    wait_for(T, "every topic published", || {
        server.registry().lookup("m/199").is_some()
    });
    canary.check();
    let encoded = server.totals().frames_encoded;
    let mut checks = 0;
    for i in 0..300 {
        let mut r = Client::raw(addr);
        r.send(&Frame::Hello(Hello {
            version: 1,
            role: Role::Relay,
            client_name: "storm".into(),
            token: String::new(),
        }));
        r.expect_error(ErrorCode::AuthFailed);
        if i % 50 == 0 {
            canary.check();
            checks += 1;
        }
    }
    let t = server.totals();
    // Only the canary's own updates were encoded: no snapshot was built for any relay.
    assert_eq!(t.frames_encoded, encoded + checks, "no snapshot was built");
    assert_eq!(t.core.relay_links, 0);
    wait_for(T, "refusals counted", || {
        server.totals().core.auth_refused == 300
    });
    canary.check();
}

/// Keyed relays are capped too: each costs a snapshot of every topic.
#[test]
fn relay_sessions_are_capped() {
    let mut cfg = config(2);
    cfg.core.max_relays = 2;
    let server = start(cfg);
    let addr = server.local_addr();
    let r1 = Client::connect(addr, Role::Relay);
    let r2 = Client::connect(addr, Role::Relay);
    let mut r3 = Client::raw(addr);
    assert!(matches!(
        r3.hello(Role::Relay, T),
        Err(Some(Frame::GoAway(g))) if g.code == ErrorCode::ServerFull as u16 && g.reconnect_after_ms >= 1000
    ));
    // A slot frees when a relay leaves.
    drop(r1);
    wait_for(T, "relay slot freed", || {
        server.totals().core.relay_links == 1
    });
    let _r4 = Client::connect(addr, Role::Relay);
    drop(r2);
}

/// Issue 12: a resume whose replay does not fit the outbox used to close the connection
/// (`slow_consumer`) on every reconnect; it falls back to the snapshot instead.
#[test]
fn a_resume_that_does_not_fit_falls_back_to_a_snapshot() {
    let mut cfg = config(1);
    cfg.registry.history_bytes = cfg.core.outbox_limit;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut p = Client::connect(addr, Role::Publisher);
    for topic in ["a", "b"] {
        for i in 0..64u32 {
            let mut v = vec![0u8; 8_000];
            v[..4].copy_from_slice(&i.to_be_bytes());
            p.publish(topic, 0, &v);
        }
    }
    wait_for(T, "every update applied", || {
        let r = server.registry();
        r.lookup("b").is_some_and(|t| r.seq(&t) == 64)
    });
    let mut probe = Client::connect(addr, Role::Subscriber);
    assert_eq!(probe.subscribe("b", true).seq, 64);
    let epoch = probe.welcome.as_ref().unwrap().epoch;
    let resume = |topic: &str, seq| SubscribeEntry {
        topic: topic.into(),
        resume: Some(ResumeFrom { epoch, seq }),
        conflate: false,
        presence: false,
    };
    // Each replay (24 x 8 KB) fits an empty outbox; both together do not.
    let mut c = Client::connect(addr, Role::Subscriber);
    let a = c.subscribe_with(vec![resume("a", 40), resume("b", 40)]);
    let results: Vec<SubResult> = a.entries.iter().map(|e| e.result).collect();
    assert_eq!(results, vec![SubResult::Resumed, SubResult::Reset]);
    let (id_a, id_b) = (a.entries[0].topic_id, a.entries[1].topic_id);
    for seq in 41..=64 {
        let u = c.next_update(T).unwrap();
        assert_eq!((u.topic_id, u.seq), (id_a, seq));
    }
    let u = c.next_update(T).unwrap();
    assert_eq!(
        (u.topic_id, u.seq, u.flags),
        (id_b, 64, update_flags::SNAPSHOT | update_flags::RESET)
    );
    // The case with default bounds: resume from seq 1 is a RESET, not a disconnect.
    let mut d = Client::connect(addr, Role::Subscriber);
    let a = d.subscribe_with(vec![resume("a", 1)]);
    assert_eq!(a.entries[0].result, SubResult::Reset);
    assert_eq!(d.next_update(T).unwrap().seq, 64);
    p.publish("a", 0, b"live");
    assert_eq!(&d.next_update(T).unwrap().payload[..], b"live");
    let _ = Bytes::new();
}

/// Anonymous sessions may not subscribe to per-user topics.
#[test]
fn per_user_topics_are_forbidden_to_anonymous_sessions() {
    let server = start(config(1));
    let mut c = Client::connect(server.local_addr(), Role::Subscriber);
    let a = subscribe_names(
        &mut c,
        ["user/alice".to_string(), "user/bob/bets".into()].into_iter(),
    );
    for e in &a.entries {
        assert_eq!((e.result, e.topic_id), (SubResult::Forbidden, 0));
    }
    assert_eq!(server.registry().len(), 0);
}

/// Issue 11, item 5: history memory is capped over all topics, whatever the number of topics a
/// publisher fills.
#[test]
fn topic_history_memory_is_capped_over_all_topics() {
    let mut cfg = config(1);
    // Per topic up to 1 MB (16 of these updates): 12 topics would hold about 11 MB.
    cfg.core.outbox_limit = 1 << 20;
    cfg.registry.history_bytes = 1 << 20;
    cfg.registry.max_history_bytes = 2 << 20;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut canary = Canary::start(addr);
    let mut p = Client::connect(addr, Role::Publisher);
    let value = vec![9u8; 60_000];
    for t in 0..12 {
        for _ in 0..70 {
            p.publish(&format!("big/{t}"), 0, &value);
        }
        canary.check();
    }
    wait_for(T, "every update applied", || {
        let r = server.registry();
        r.lookup("big/11").is_some_and(|t| r.seq(&t) == 70)
    });
    let held = server.registry().history_bytes();
    assert!(
        held <= (2 << 20) + 65_536,
        "{held} bytes of history over all topics"
    );
    assert!(held >= 60_000, "some history is kept");
    canary.check();
}

/// Issue 12: a reconnect herd is admitted at --accept-rate per core; the rest are turned away
/// with GOAWAY server_busy and a jittered retry hint (never a bare ERROR), and come back later.
#[test]
fn a_connection_herd_is_admitted_at_the_accept_rate_and_told_when_to_return() {
    let mut cfg = config(1);
    cfg.core.accept_rate = 50;
    cfg.core.goaway_base_ms = 200;
    cfg.core.goaway_jitter_ms = 800;
    let server = start(cfg);
    let addr = server.local_addr();
    let mut canary = Canary::start(addr);
    let mut admitted = 0;
    let mut hints = Vec::new();
    for _ in 0..200 {
        let mut c = Client::raw(addr);
        match c.hello(Role::Subscriber, T) {
            Ok(()) => admitted += 1,
            Err(Some(Frame::GoAway(g))) => {
                assert_eq!(g.code, ErrorCode::ServerBusy as u16);
                hints.push(g.reconnect_after_ms);
            }
            other => panic!("{other:?}"),
        }
    }
    canary.check();
    assert!(
        (45..=150).contains(&admitted),
        "{admitted} admitted from a burst of 200 at 50/s"
    );
    assert!(hints.iter().all(|h| (200..=1000).contains(h)));
    hints.sort_unstable();
    hints.dedup();
    assert!(hints.len() > 20, "retry hints are spread: {hints:?}");
    // After the hint, a client is admitted again.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let mut late = Client::raw(addr);
    assert!(late.hello(Role::Subscriber, T).is_ok());
    assert!(server.totals().core.refused_busy >= 50);
    canary.check();
}
