//! The worked hex examples of docs/PROTOCOL.md are this crate's test vectors: every
//! ```` ```hex vector=NAME ```` block in the document is decoded and compared with the frame
//! built here, and every frame built here must appear in the document, byte for byte.

use bytes::{Bytes, BytesMut};
use yorker_wire::score::{BallEvent, EventKind, MarketState};
use yorker_wire::*;

fn expected() -> Vec<(&'static str, Frame)> {
    let score = {
        let mut b = BytesMut::new();
        ball().encode(&mut b);
        b.freeze()
    };
    vec![
        (
            "hello",
            Frame::Hello(Hello {
                version: 1,
                role: Role::Subscriber,
                client_name: "game".into(),
                token: String::new(),
            }),
        ),
        (
            "hello_publisher",
            Frame::Hello(Hello {
                version: 1,
                role: Role::Publisher,
                client_name: "feed".into(),
                token: "s3cret".into(),
            }),
        ),
        (
            "hello_relay",
            Frame::Hello(Hello {
                version: 1,
                role: Role::Relay,
                client_name: "relay".into(),
                token: "rk".into(),
            }),
        ),
        (
            "hello_v2",
            Frame::Hello(Hello {
                version: 2,
                role: Role::Subscriber,
                client_name: "game".into(),
                token: "h.p.s".into(),
            }),
        ),
        (
            "auth",
            Frame::Auth {
                token: "h.p.s".into(),
            },
        ),
        (
            "auth_ok",
            Frame::AuthOk {
                expires_at_s: 1_767_225_600,
                grace_ms: 30_000,
            },
        ),
        (
            "topic",
            Frame::Topic {
                topic_id: 7,
                name: "match/42".into(),
            },
        ),
        (
            "synced",
            Frame::Synced {
                topics: 3,
                epoch: 0x0006_2a1b_3c4d_5e6f,
                feed_seq: 1000,
            },
        ),
        (
            "hello_backend",
            Frame::Hello(Hello {
                version: 3,
                role: Role::Backend,
                client_name: "bets".into(),
                token: "bk".into(),
            }),
        ),
        (
            "subscribe_presence",
            Frame::Subscribe(Subscribe {
                request_id: 4,
                entries: vec![SubscribeEntry {
                    topic: "room/7".into(),
                    resume: None,
                    conflate: false,
                    presence: true,
                }],
            }),
        ),
        (
            "message",
            Frame::Message(Message {
                request_id: 9,
                routing_key: "u1".into(),
                payload: Bytes::from_static(&[0xb0, 0x01]),
            }),
        ),
        (
            "post",
            Frame::Post(Post {
                request_id: 10,
                flags: update_flags::NO_ECHO,
                topic: "room/7".into(),
                idempotency_key: None,
                payload: Bytes::from_static(b"hi"),
            }),
        ),
        (
            "post_idempotent",
            Frame::Post(Post {
                request_id: 12,
                flags: 0,
                topic: "odds/7".into(),
                idempotency_key: Some("e1".into()),
                payload: Bytes::from_static(b"s"),
            }),
        ),
        (
            "presence_get",
            Frame::PresenceGet {
                request_id: 11,
                topic: "room/7".into(),
            },
        ),
        (
            "reply",
            Frame::Reply {
                session_id: 0x0000_0005_0000_0003,
                request_id: 9,
                payload: Bytes::from_static(&[0x01]),
            },
        ),
        (
            "ack",
            Frame::Ack {
                request_id: 10,
                code: 0,
                seq: 42,
            },
        ),
        (
            "ack_refused",
            Frame::Ack {
                request_id: 9,
                code: 21,
                seq: 0,
            },
        ),
        (
            "response",
            Frame::Response {
                request_id: 9,
                payload: Bytes::from_static(&[0x01]),
            },
        ),
        (
            "presence",
            Frame::Presence {
                request_id: 0,
                topic_id: 3,
                members: 5,
            },
        ),
        (
            "member",
            Frame::Member {
                topic_id: 3,
                event: 1,
                session_id: 0x0000_0005_0000_0003,
                user: "u1".into(),
            },
        ),
        (
            "client_message",
            Frame::ClientMessage(ClientMessage {
                session_id: 0x0000_0005_0000_0003,
                request_id: 9,
                user: "u1".into(),
                routing_key: "u1".into(),
                payload: Bytes::from_static(&[0xb0, 0x01]),
            }),
        ),
        (
            "subscribe",
            Frame::Subscribe(Subscribe {
                request_id: 1,
                entries: vec![SubscribeEntry {
                    topic: "match/42".into(),
                    resume: None,
                    conflate: true,
                    presence: false,
                }],
            }),
        ),
        (
            "subscribe_resume",
            Frame::Subscribe(Subscribe {
                request_id: 2,
                entries: vec![
                    SubscribeEntry {
                        topic: "match/42".into(),
                        resume: Some(ResumeFrom {
                            epoch: 0x0006_2a1b_3c4d_5e6f,
                            seq: 17,
                        }),
                        conflate: true,
                        presence: false,
                    },
                    SubscribeEntry {
                        topic: "news".into(),
                        resume: None,
                        conflate: false,
                        presence: false,
                    },
                ],
            }),
        ),
        (
            "unsubscribe",
            Frame::Unsubscribe(Unsubscribe {
                request_id: 3,
                topic_ids: vec![1, 2],
            }),
        ),
        ("ping", Frame::Ping { nonce: 5 }),
        (
            "publish",
            Frame::Publish(Publish {
                flags: update_flags::URGENT,
                topic: "match/42".into(),
                payload: Bytes::from_static(b"\x01\x02\x03"),
            }),
        ),
        (
            "welcome",
            Frame::Welcome(Welcome {
                version: 1,
                session_id: 9,
                epoch: 0x0006_2a1b_3c4d_5e6f,
                heartbeat_ms: 15_000,
                limits: Limits {
                    max_frame: 65_536,
                    max_subscriptions: 64,
                    outbox_limit: 262_144,
                },
            }),
        ),
        (
            "suback",
            Frame::SubAck(SubAck {
                request_id: 2,
                entries: vec![
                    SubAckEntry {
                        result: SubResult::Resumed,
                        topic_id: 1,
                        seq: 20,
                    },
                    SubAckEntry {
                        result: SubResult::Ok,
                        topic_id: 2,
                        seq: 0,
                    },
                ],
            }),
        ),
        (
            "update",
            Frame::Update(Update {
                topic_id: 1,
                seq: 18,
                timestamp_us: 0x0006_2a1b_3c4d_6000,
                flags: 0,
                payload: Bytes::from_static(b"\x01\x02\x03"),
            }),
        ),
        (
            "update_snapshot_reset",
            Frame::Update(Update {
                topic_id: 1,
                seq: 20,
                timestamp_us: 0x0006_2a1b_3c4d_7000,
                flags: update_flags::SNAPSHOT | update_flags::RESET,
                payload: Bytes::from_static(b"\x01\x02\x03"),
            }),
        ),
        (
            "update_score",
            Frame::Update(Update {
                topic_id: 1,
                seq: 21,
                timestamp_us: 0x0006_2a1b_3c4d_8000,
                flags: 0,
                payload: score,
            }),
        ),
        ("heartbeat", Frame::Heartbeat),
        ("pong", Frame::Pong { nonce: 5 }),
        (
            "error",
            Frame::Error(ErrorFrame {
                code: ErrorCode::NotPublisher as u16,
                message: "publish needs role publisher".into(),
            }),
        ),
        (
            "goaway",
            Frame::GoAway(GoAway {
                code: ErrorCode::ShuttingDown as u16,
                reconnect_after_ms: 2_500,
                message: "restart".into(),
            }),
        ),
    ]
}

fn ball() -> BallEvent {
    BallEvent {
        kind: EventKind::Four,
        match_id: 42,
        innings: 1,
        over: 12,
        ball: 3,
        runs: 4,
        extras: 0,
        total_runs: 97,
        total_wickets: 2,
        striker_id: 18,
        bowler_id: 7,
        market: MarketState::Open,
        target: 0,
        timestamp_us: 0x0006_2a1b_3c4d_7f00,
    }
}

/// Every `hex vector=NAME` block of docs/PROTOCOL.md, as (name, bytes).
fn doc_vectors() -> Vec<(String, Vec<u8>)> {
    vectors_of("PROTOCOL.md")
}

/// Every `hex vector=NAME` block of docs/`file`, as (name, bytes).
fn vectors_of(file: &str) -> Vec<(String, Vec<u8>)> {
    let path = format!("{}/../docs/{file}", env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<u8>)> = None;
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("```hex vector=") {
            current = Some((name.trim().to_string(), Vec::new()));
        } else if line.starts_with("```") {
            if let Some(v) = current.take() {
                out.push(v);
            }
        } else if let Some((_, bytes)) = current.as_mut() {
            let data = line.split('#').next().unwrap_or("");
            for tok in data.split_whitespace() {
                bytes.push(
                    u8::from_str_radix(tok, 16).unwrap_or_else(|_| panic!("bad hex {tok:?}")),
                );
            }
        }
    }
    out
}

#[test]
fn document_vectors_decode_to_the_expected_frames() {
    let doc = doc_vectors();
    let want = expected();
    for (name, frame) in &want {
        let (_, bytes) = doc.iter().find(|(n, _)| n == name).unwrap_or_else(|| {
            panic!(
                "PROTOCOL.md lacks vector {name}; it should be:\n{}",
                hex(&frame.to_bytes().unwrap())
            )
        });
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        d.feed(bytes);
        assert_eq!(
            d.next_frame().unwrap().as_ref(),
            Some(frame),
            "vector {name}"
        );
        assert_eq!(d.buffered(), 0, "vector {name} has extra bytes");
        assert_eq!(
            frame.to_bytes().unwrap().as_ref(),
            bytes.as_slice(),
            "vector {name}: encoding differs from the document; expected\n{}",
            hex(&frame.to_bytes().unwrap())
        );
    }
    for (name, _) in &doc {
        if name != "score_payload" {
            assert!(
                want.iter().any(|(n, _)| n == name),
                "unexpected vector {name}"
            );
        }
    }
}

#[test]
fn score_payload_vector() {
    let doc = doc_vectors();
    let (_, bytes) = doc
        .iter()
        .find(|(n, _)| n == "score_payload")
        .expect("PROTOCOL.md lacks vector score_payload");
    assert_eq!(BallEvent::decode(bytes), Ok(ball()));
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The relay feed datagrams of docs/RELAYS.md.
fn feed_expected() -> Vec<(&'static str, Bytes)> {
    use yorker_wire::feed::*;
    let header = |kind, flags, seq, send_time_us, count| FeedHeader {
        kind,
        flags,
        channel: 1,
        epoch: 0x0006_2a1b_3c4d_5e6f,
        seq,
        send_time_us,
        count,
    };
    let mut data = BytesMut::new();
    header(Kind::Data, 0, 41, 0x0006_2a1b_3c4e_0000, 2).encode(&mut data);
    put_message(
        &mut data,
        "match/42",
        &encode_update(7, 17, 0x0006_2a1b_3c4d_ffff, 0, b"4/1"),
    );
    put_message(
        &mut data,
        "news",
        &encode_update(3, 2, 0x0006_2a1b_3c4d_fff0, 1, b"!"),
    );
    vec![
        ("feed_data", data.freeze()),
        (
            "feed_heartbeat",
            header(Kind::Heartbeat, 0, 41, 0x0006_2a1b_3c4e_1000, 0).to_bytes(),
        ),
        (
            "feed_nak",
            sign_nak(
                &header(Kind::Nak, 0, 38, 0x0006_2a1b_3c4e_3000, 3),
                b"relay-secret",
            ),
        ),
        (
            "feed_unavailable",
            header(Kind::Unavailable, 0, 38, 0x0006_2a1b_3c4e_2000, 3).to_bytes(),
        ),
    ]
}

#[test]
fn relay_document_vectors_are_the_datagrams() {
    use yorker_wire::feed::*;
    let doc = vectors_of("RELAYS.md");
    let want = feed_expected();
    for (name, bytes) in &want {
        let (_, got) = doc.iter().find(|(n, _)| n == name).unwrap_or_else(|| {
            panic!(
                "RELAYS.md lacks vector {name}; it should be:\n{}",
                hex(bytes)
            )
        });
        assert_eq!(
            got.as_slice(),
            bytes.as_ref(),
            "vector {name}; expected\n{}",
            hex(bytes)
        );
        let h = FeedHeader::decode(got).unwrap();
        if h.kind == Kind::Data {
            let m = messages(&Bytes::copy_from_slice(got), &h).unwrap();
            assert_eq!(m.len(), h.count as usize);
            assert_eq!((m[0].topic.as_str(), m[0].update.seq), ("match/42", 17));
        }
    }
    assert_eq!(doc.len(), want.len(), "unexpected vectors in RELAYS.md");
}

/// `cargo test -p yorker-wire --test vectors -- --ignored --nocapture print` prints every vector,
/// for writing the document.
#[test]
#[ignore]
fn print_vectors() {
    for (name, f) in expected() {
        println!("{name}: {}", hex(&f.to_bytes().unwrap()));
    }
    let mut b = BytesMut::new();
    ball().encode(&mut b);
    println!("score_payload: {}", hex(&b));
    for (name, d) in feed_expected() {
        println!("{name}: {}", hex(&d));
    }
}
