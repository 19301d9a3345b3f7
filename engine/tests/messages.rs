//! Version 3 over real sockets and real io_uring: client MESSAGEs to backends (identity,
//! routing, REPLY), every ACK refusal code, rooms (POST with token patterns, NO_ECHO),
//! presence. Each refusal case keeps a well-behaved NO_CONFLATE subscriber on the same core and
//! checks it received every update, in order, while the refused client misbehaved.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use yorker_engine::proto::auth::{KeySpec, TokenVerifier};
use yorker_engine::ServerConfig;
use yorker_wire::*;

const T: Duration = Duration::from_secs(10);
const SECRET: [u8; 32] = [9; 32];
const BACKEND_KEY: &str = "test-backend-key";

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&SECRET),
    )
    .unwrap()
}

fn user_token(sub: &str, publish: &[&str]) -> String {
    token(serde_json::json!({
        "sub": sub,
        "exp": jsonwebtoken::get_current_timestamp() + 600,
        "publish": publish,
    }))
}

/// One core (so every client shares it with the canary), tokens verified with SECRET, a
/// backend key.
fn cfg(cores: usize) -> ServerConfig {
    let d = std::env::temp_dir().join(format!(
        "yorker-messages-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hs.key"), SECRET).unwrap();
    let spec: KeySpec = format!("{}", d.join("hs.key").display()).parse().unwrap();
    let mut c = config(cores);
    c.core.tokens = Some(Arc::new(
        TokenVerifier::new(vec![spec], None, None).unwrap(),
    ));
    c.core.backend_key = Some(BACKEND_KEY.into());
    c
}

/// HELLO version 3 with `token` (WELCOME, then AUTH_OK when it is a verified token).
fn v3(addr: std::net::SocketAddr, role: Role, token: String) -> Client {
    let verified = token.contains('.');
    let mut c = Client::raw(addr);
    c.hello_with(3, role, token, T).expect("WELCOME");
    assert_eq!(c.welcome.as_ref().unwrap().version, 3);
    if verified {
        match c.next(T) {
            Some(Frame::AuthOk { .. }) => {}
            other => panic!("expected AUTH_OK, got {other:?}"),
        }
    }
    c
}

fn backend(addr: std::net::SocketAddr) -> Client {
    v3(addr, Role::Backend, BACKEND_KEY.into())
}

fn message(c: &mut Client, request_id: u32, key: &str, payload: &[u8]) {
    c.send(&Frame::Message(Message {
        request_id,
        routing_key: key.into(),
        payload: Bytes::copy_from_slice(payload),
    }));
}

/// The next ACK (skipping heartbeats and updates).
fn ack(c: &mut Client) -> (u32, u16, u64) {
    loop {
        match c.next(T) {
            Some(Frame::Ack {
                request_id,
                code,
                seq,
            }) => return (request_id, code, seq),
            Some(Frame::Heartbeat | Frame::Update(_) | Frame::Presence { .. }) => continue,
            other => panic!("expected ACK, got {other:?}"),
        }
    }
}

fn client_message(b: &mut Client) -> ClientMessage {
    loop {
        match b.next(T) {
            Some(Frame::ClientMessage(m)) => return m,
            Some(Frame::Heartbeat) => continue,
            other => panic!("expected CLIENT_MESSAGE, got {other:?}"),
        }
    }
}

/// A canary: a NO_CONFLATE subscriber of `canary` on the same core, and a publisher of it.
struct Canary {
    sub: Client,
    publisher: Client,
    sent: u64,
}

impl Canary {
    fn new(addr: std::net::SocketAddr) -> Canary {
        let mut sub = Client::connect(addr, Role::Subscriber);
        assert_eq!(sub.subscribe("canary", false).result, SubResult::Ok);
        Canary {
            sub,
            publisher: Client::connect(addr, Role::Publisher),
            sent: 0,
        }
    }

    fn publish(&mut self) {
        self.sent += 1;
        self.publisher
            .publish("canary", 0, &self.sent.to_be_bytes());
    }

    /// Every update arrived, in order.
    fn check(&mut self) {
        for want in 1..=self.sent {
            let u = self.sub.next_update(T).expect("canary update");
            assert_eq!(u.seq, want, "canary lost or reordered an update");
        }
    }
}

#[test]
fn messages_reach_a_backend_with_the_senders_identity_and_replies_come_back() {
    let s = start(cfg(1));
    let addr = s.local_addr();
    let mut b = backend(addr);
    let mut alice = v3(addr, Role::Subscriber, user_token("alice", &[]));
    let sid = alice.welcome.as_ref().unwrap().session_id;
    // The backend's arrival reaches the shard through the bus: retry until it is known.
    let mut req = 1;
    loop {
        message(&mut alice, req, "alice", b"bet:42");
        let (r, code, _) = ack(&mut alice);
        assert_eq!(r, req);
        if code == 0 {
            break;
        }
        assert_eq!(code, ErrorCode::NoBackend as u16);
        req += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let m = client_message(&mut b);
    assert_eq!(
        (
            m.session_id,
            m.request_id,
            m.user.as_str(),
            m.routing_key.as_str()
        ),
        (sid, req, "alice", "alice")
    );
    assert_eq!(&m.payload[..], b"bet:42");
    // Several messages with one key keep their order.
    for i in 0..50u32 {
        message(&mut alice, 1000 + i, "alice", &i.to_be_bytes());
    }
    for i in 0..50u32 {
        assert_eq!(ack(&mut alice), (1000 + i, 0, 0));
        let m = client_message(&mut b);
        assert_eq!(
            m.request_id,
            1000 + i,
            "one key's messages kept their order"
        );
    }
    // The backend answers one session; it may also publish to the user's private topic.
    b.send(&Frame::Reply {
        session_id: sid,
        request_id: req,
        payload: Bytes::from_static(b"accepted"),
    });
    match alice.next(T) {
        Some(Frame::Response {
            request_id,
            payload,
        }) => assert_eq!((request_id, &payload[..]), (req, &b"accepted"[..])),
        other => panic!("expected RESPONSE, got {other:?}"),
    }
    assert_eq!(alice.subscribe("user/alice", false).result, SubResult::Ok);
    b.publish("user/alice", 0, b"balance:10");
    let u = alice.next_update(T).unwrap();
    assert_eq!(&u.payload[..], b"balance:10");
    // A REPLY for a session that is gone is dropped, not an error for the backend.
    b.send(&Frame::Reply {
        session_id: sid ^ (1 << 40),
        request_id: 1,
        payload: Bytes::new(),
    });
    b.send(&Frame::Ping { nonce: 7 });
    assert_eq!(b.next(T), Some(Frame::Pong { nonce: 7 }));
}

#[test]
fn messages_spread_over_backends_by_routing_key() {
    let s = start(cfg(2));
    let addr = s.local_addr();
    let mut backends = [backend(addr), backend(addr)];
    let mut c = v3(addr, Role::Subscriber, user_token("bob", &[]));
    // Wait until both backends are known to the client's shard: a key that goes to each.
    let mut seen = [0usize; 2];
    let mut req = 0;
    while seen.contains(&0) {
        for key in 0..40 {
            req += 1;
            message(&mut c, req, &format!("k{key}"), b"x");
            let (_, code, _) = ack(&mut c);
            if code == ErrorCode::NoBackend as u16 {
                continue;
            }
            assert_eq!(code, 0);
        }
        for (i, b) in backends.iter_mut().enumerate() {
            while let Some(Frame::ClientMessage(_)) = b.next(Duration::from_millis(200)) {
                seen[i] += 1;
            }
        }
        assert!(req < 4000, "messages never reached both backends: {seen:?}");
    }
    // The same key always goes to the same backend.
    let mut owner = None;
    for i in 0..20 {
        req += 1;
        message(&mut c, req, "same", &[i]);
        assert_eq!(ack(&mut c).1, 0);
        let got: Vec<usize> = (0..2)
            .filter(|&j| {
                matches!(
                    backends[j].next(Duration::from_millis(300)),
                    Some(Frame::ClientMessage(_))
                )
            })
            .collect();
        assert_eq!(got.len(), 1);
        assert!(
            owner.is_none_or(|o| o == got[0]),
            "a key moved between backends"
        );
        owner = Some(got[0]);
    }
}

#[test]
fn every_refusal_has_its_code_and_a_canary_is_unaffected() {
    let mut c = cfg(1);
    c.core.message_rate = 2;
    c.core.message_burst = 3;
    c.core.max_inflight_messages = 1000;
    c.core.backend_outbox_limit = 256 * 1024;
    // Small socket buffers, so a backend that stops reading stalls the server's sends soon.
    c.socket_send_buffer = 4096;
    let s = start(c);
    let addr = s.local_addr();
    let mut canary = Canary::new(addr);

    // forbidden: no token, and the server does not allow anonymous messages.
    let mut anon = v3(addr, Role::Subscriber, String::new());
    message(&mut anon, 1, "", b"x");
    assert_eq!(ack(&mut anon), (1, ErrorCode::Forbidden as u16, 0));
    canary.publish();

    // no_backend.
    let mut alice = v3(addr, Role::Subscriber, user_token("alice", &[]));
    message(&mut alice, 1, "", b"x");
    assert_eq!(ack(&mut alice), (1, ErrorCode::NoBackend as u16, 0));
    canary.publish();

    // frame_too_large: the CLIENT_MESSAGE would exceed max_frame (checked first).
    message(&mut alice, 2, "", &[0u8; 65_520]);
    assert_eq!(ack(&mut alice), (2, ErrorCode::FrameTooLarge as u16, 0));

    // A backend that never reads: its queue at the server fills (server_busy), and when it
    // goes, what was still queued for it is refused backend_gone.
    let stalled = {
        let mut b = Client::raw(addr);
        // A small receive buffer, never read: the server's sends stall.
        let sock = socket2::SockRef::from(&b.stream);
        sock.set_recv_buffer_size(4096).unwrap();
        b.hello_with(3, Role::Backend, BACKEND_KEY.into(), T)
            .expect("WELCOME");
        b
    };
    // rate_limited: a burst of 3, then 2 per second.
    let mut senders: Vec<Client> = (0..40)
        .map(|i| v3(addr, Role::Subscriber, user_token(&format!("u{i}"), &[])))
        .collect();
    // Wait until the backend is known (the first ACK is not no_backend).
    loop {
        message(&mut senders[0], 99, "", b"probe");
        let (_, code, _) = ack(&mut senders[0]);
        if code != ErrorCode::NoBackend as u16 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut codes = std::collections::BTreeMap::new();
    for (i, c) in senders.iter_mut().enumerate() {
        for r in 0..3u32 {
            message(c, 100 + r, &format!("k{i}"), &[7u8; 60_000]);
        }
    }
    canary.publish();
    // Refusals come at once; ACKs ok wait for the stalled backend, so read what is there.
    for c in senders.iter_mut() {
        while let Some((_, code, _)) = ack_or_none(c, Duration::from_millis(100)) {
            *codes.entry(code).or_insert(0) += 1;
        }
    }
    assert!(
        codes.contains_key(&(ErrorCode::ServerBusy as u16)),
        "a full backend queue must refuse with server_busy: {codes:?}"
    );
    assert!(
        codes.contains_key(&(ErrorCode::RateLimited as u16)),
        "sender 0 exceeded its burst: {codes:?}"
    );
    // The stalled backend goes: messages queued for it become backend_gone.
    let before: u64 = s
        .shard_stats()
        .iter()
        .map(|(c, _)| c.messages_refused)
        .sum();
    drop(stalled);
    wait_for(T, "the backend's messages refused", || {
        s.shard_stats()
            .iter()
            .map(|(c, _)| c.messages_refused)
            .sum::<u64>()
            > before
    });
    let mut gone = 0;
    for c in senders.iter_mut() {
        while let Some((_, code, _)) = ack_or_none(c, Duration::from_millis(100)) {
            if code == ErrorCode::BackendGone as u16 {
                gone += 1;
            }
            *codes.entry(code + 1000).or_insert(0) += 1;
        }
    }
    assert!(
        gone > 0,
        "messages queued for a backend that left must be refused backend_gone: {codes:?}"
    );
    canary.publish();
    canary.check();
    // Every client is still connected: ACK refusals are never fatal.
    for c in senders.iter_mut().chain([&mut alice, &mut anon]) {
        c.send(&Frame::Ping { nonce: 1 });
        loop {
            match c.next(T) {
                Some(Frame::Pong { nonce: 1 }) => break,
                Some(Frame::Ack { .. } | Frame::Heartbeat) => continue,
                other => panic!("expected PONG, got {other:?}"),
            }
        }
    }
}

fn ack_or_none(c: &mut Client, wait: Duration) -> Option<(u32, u16, u64)> {
    loop {
        match c.next(wait)? {
            Frame::Ack {
                request_id,
                code,
                seq,
            } => return Some((request_id, code, seq)),
            _ => continue,
        }
    }
}

#[test]
fn room_members_post_to_each_other_within_their_token() {
    let s = start(cfg(2));
    let addr = s.local_addr();
    let mut members: Vec<Client> = ["ann", "ben", "cat"]
        .iter()
        .map(|u| v3(addr, Role::Subscriber, user_token(u, &["room/7"])))
        .collect();
    for m in members.iter_mut() {
        assert_eq!(m.subscribe("room/7", false).result, SubResult::Ok);
    }
    // ann posts with NO_ECHO: the others get it; ann gets the ACK with its seq, not the update.
    members[0].send(&Frame::Post(Post {
        request_id: 1,
        flags: update_flags::NO_ECHO,
        topic: "room/7".into(),
        idempotency_key: None,
        payload: Bytes::from_static(b"gg"),
    }));
    let (r, code, seq) = ack(&mut members[0]);
    assert_eq!((r, code), (1, 0));
    for m in members[1..].iter_mut() {
        let u = m.next_update(T).unwrap();
        assert_eq!((u.seq, &u.payload[..]), (seq, &b"gg"[..]));
    }
    // ben posts with echo: everyone, ben included, gets it as the next seq.
    members[1].send(&Frame::Post(Post {
        request_id: 2,
        flags: 0,
        topic: "room/7".into(),
        idempotency_key: None,
        payload: Bytes::from_static(b"wp"),
    }));
    let mut ben_saw = Vec::new();
    loop {
        match members[1].next(T) {
            Some(Frame::Ack {
                request_id: 2,
                code: 0,
                seq,
            }) => ben_saw.push(("ack", seq)),
            Some(Frame::Update(u)) => ben_saw.push(("update", u.seq)),
            other => panic!("{other:?}"),
        }
        if ben_saw.len() == 2 {
            break;
        }
    }
    assert_eq!(ben_saw, vec![("ack", seq + 1), ("update", seq + 1)]);
    for i in [0, 2] {
        assert_eq!(members[i].next_update(T).unwrap().seq, seq + 1);
    }
    // Outside the token's patterns, BROADCAST, or without a token: forbidden, not fatal.
    for (topic, flags) in [("room/8", 0), ("room/7", update_flags::BROADCAST)] {
        members[2].send(&Frame::Post(Post {
            request_id: 3,
            flags,
            topic: topic.into(),
            idempotency_key: None,
            payload: Bytes::new(),
        }));
        assert_eq!(ack(&mut members[2]), (3, ErrorCode::Forbidden as u16, 0));
    }
    let mut anon = v3(addr, Role::Subscriber, String::new());
    anon.send(&Frame::Post(Post {
        request_id: 4,
        flags: 0,
        topic: "room/7".into(),
        idempotency_key: None,
        payload: Bytes::new(),
    }));
    assert_eq!(ack(&mut anon), (4, ErrorCode::Forbidden as u16, 0));
    // A publisher's POST is acknowledged with its seq too.
    let mut p = v3(addr, Role::Publisher, KEY.into());
    p.send(&Frame::Post(Post {
        request_id: 5,
        flags: 0,
        topic: "room/7".into(),
        idempotency_key: None,
        payload: Bytes::from_static(b"gm"),
    }));
    assert_eq!(ack(&mut p), (5, 0, seq + 2));
    // An idempotent retry is acknowledged with the first seq and not applied again.
    for request_id in [6, 7] {
        p.send(&Frame::Post(Post {
            request_id,
            flags: 0,
            topic: "room/7".into(),
            idempotency_key: Some("order-991".into()),
            payload: Bytes::from_static(b"once"),
        }));
        assert_eq!(ack(&mut p), (request_id, 0, seq + 3));
    }
    for m in members.iter_mut() {
        assert_eq!(m.next_update(T).unwrap().seq, seq + 2);
        let u = m.next_update(T).unwrap();
        assert_eq!((u.seq, &u.payload[..]), (seq + 3, &b"once"[..]));
        assert!(
            m.next(Duration::from_millis(200)).is_none(),
            "the retry was applied twice"
        );
    }
    // Version 3 frames in a version 2 session are unexpected.
    let mut old = connect_with_token(addr, Role::Subscriber, user_token("dan", &["room/7"]));
    old.send(&Frame::Post(Post {
        request_id: 6,
        flags: 0,
        topic: "room/7".into(),
        idempotency_key: None,
        payload: Bytes::new(),
    }));
    old.expect_error(ErrorCode::UnexpectedFrame);
}

#[test]
fn presence_counts_and_member_events() {
    let mut c = cfg(2);
    c.core.presence_interval_ms = 50;
    c.core.presence_events_max = 3;
    let s = start(c);
    let addr = s.local_addr();
    let mut watcher = v3(addr, Role::Subscriber, user_token("ann", &[]));
    let a = watcher.subscribe_with(vec![SubscribeEntry {
        topic: "room/1".into(),
        resume: None,
        conflate: true,
        presence: true,
    }]);
    let id = a.entries[0].topic_id;
    let ann_sid = watcher.welcome.as_ref().unwrap().session_id;
    assert_eq!(
        watcher.next(T),
        Some(Frame::Presence {
            request_id: 0,
            topic_id: id,
            members: 1
        })
    );
    // Its own join, as every presence subscriber of the room sees it.
    assert_eq!(
        watcher.next(T),
        Some(Frame::Member {
            topic_id: id,
            event: 1,
            session_id: ann_sid,
            user: "ann".into()
        })
    );
    let mut ben = v3(addr, Role::Subscriber, user_token("ben", &[]));
    let ben_sid = ben.welcome.as_ref().unwrap().session_id;
    ben.subscribe("room/1", true);
    // A join: MEMBER (the room is small), and the count when the interval comes.
    let mut joined = false;
    let mut count = 0;
    while !(joined && count == 2) {
        match watcher.next(T) {
            Some(Frame::Member {
                topic_id,
                event: 1,
                session_id,
                user,
            }) => {
                assert_eq!((topic_id, session_id, user.as_str()), (id, ben_sid, "ben"));
                joined = true;
            }
            Some(Frame::Presence { members, .. }) => count = members,
            other => panic!("{other:?}"),
        }
    }
    // PRESENCE_GET from anyone allowed to subscribe.
    ben.send(&Frame::PresenceGet {
        request_id: 9,
        topic: "room/1".into(),
    });
    assert_eq!(
        ben.next(T),
        Some(Frame::Presence {
            request_id: 9,
            topic_id: id,
            members: 2
        })
    );
    ben.send(&Frame::PresenceGet {
        request_id: 10,
        topic: "no/such".into(),
    });
    assert_eq!(
        ben.next(T),
        Some(Frame::Presence {
            request_id: 10,
            topic_id: 0,
            members: 0
        })
    );
    // Past the event limit only counts move; a leave below it is an event again.
    let mut crowd: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::connect(addr, Role::Subscriber);
            c.subscribe("room/1", true);
            c
        })
        .collect();
    let mut events = 0;
    loop {
        match watcher.next(T) {
            Some(Frame::Member { .. }) => events += 1,
            Some(Frame::Presence { members: 5, .. }) => break,
            Some(Frame::Presence { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        events, 1,
        "only the join that kept the room within 3 members is an event"
    );
    crowd.truncate(1);
    drop(ben);
    let mut left = 0;
    loop {
        match watcher.next(T) {
            Some(Frame::Member { event: 2, .. }) => left += 1,
            Some(Frame::Presence { members: 2, .. }) => break,
            Some(Frame::Presence { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        left >= 1,
        "a leave that brought the room within the limit is an event"
    );
}

/// An anonymous client joining and leaving a watched room in a loop cannot push the room's
/// presence subscriber over its outbox limit: MEMBER events are dropped for a queue already
/// half full, and the watcher stays connected and gets the exact count.
#[test]
fn member_event_floods_cannot_disconnect_a_watcher() {
    let mut c = cfg(1);
    c.core.presence_events_max = 32;
    c.core.presence_interval_ms = 50;
    c.core.outbox_limit = 131_072;
    // Small socket buffers: a watcher that does not read stalls the server's sends soon.
    c.socket_send_buffer = 4096;
    let s = start(c);
    let addr = s.local_addr();
    let mut w = v3(addr, Role::Subscriber, String::new());
    let a = w.subscribe_with(vec![SubscribeEntry {
        topic: "room/9".into(),
        resume: None,
        conflate: true,
        presence: true,
    }]);
    let id = a.entries[0].topic_id;
    socket2::SockRef::from(&w.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    // The watcher does not read while an anonymous client joins and leaves 10,000 times
    // (40,000 MEMBER events, about 760 KB: six times the watcher's outbox limit).
    let mut noisy = v3(addr, Role::Subscriber, String::new());
    for i in 0..20_000u32 {
        noisy.send(&Frame::Subscribe(Subscribe {
            request_id: i,
            entries: vec![SubscribeEntry {
                topic: "room/9".into(),
                resume: None,
                conflate: true,
                presence: false,
            }],
        }));
        noisy.send(&Frame::Unsubscribe(Unsubscribe {
            request_id: i,
            topic_ids: vec![id],
        }));
        if i % 100 == 99 {
            // The noisy client reads its own SUBACKs (else its own queue would close it).
            let mut acks = 0;
            while acks < 200 {
                match noisy.next(T) {
                    Some(Frame::SubAck(_)) => acks += 1,
                    Some(_) => {}
                    None => panic!("the noisy client was closed"),
                }
            }
        }
    }
    noisy.send(&Frame::Ping { nonce: 5 });
    loop {
        match noisy.next(T) {
            Some(Frame::Pong { nonce: 5 }) => break,
            Some(_) => continue,
            None => panic!("the noisy client was closed"),
        }
    }
    // The watcher reads now: still connected, and the count is exact.
    let t = std::time::Instant::now();
    let mut members = None;
    while members != Some(1) {
        assert!(
            t.elapsed() < T,
            "no PRESENCE with the exact count (last {members:?})"
        );
        match w.next(T) {
            Some(Frame::Presence { members: m, .. }) => members = Some(m),
            Some(Frame::Member { .. }) => continue,
            other => panic!("the watcher got {other:?}"),
        }
    }
    // Still connected: a PING is answered.
    w.send(&Frame::Ping { nonce: 77 });
    loop {
        match w.next(T) {
            Some(Frame::Pong { nonce: 77 }) => break,
            Some(Frame::Presence { .. } | Frame::Member { .. }) => continue,
            other => panic!("the watcher was cut off by the flood: {other:?}"),
        }
    }
    let dropped: u64 = s
        .shard_stats()
        .iter()
        .map(|(c, _)| c.member_events_dropped)
        .sum();
    assert!(
        dropped > 0,
        "the flood never reached the watcher's limit: the test shows nothing"
    );
    eprintln!("member events dropped for the slow watcher: {dropped}");
}
