//! Property tests: encode -> decode round trips under random chunking, and the decoder's
//! behaviour on arbitrary bytes (the bounded stand-in for a fuzz target that CI always runs).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use yorker_wire::*;

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max)
        .prop_map(|cs| cs.into_iter().collect::<String>())
        .prop_filter("fits a str8", |s| s.len() <= 255)
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    let entry = (
        text(20),
        proptest::option::of((any::<u64>(), any::<u64>())),
        any::<bool>(),
    )
        .prop_map(|(topic, r, conflate)| SubscribeEntry {
            topic,
            resume: r.map(|(epoch, seq)| ResumeFrom { epoch, seq }),
            conflate,
            presence: false,
        });
    let result = prop_oneof![
        Just(SubResult::Ok),
        Just(SubResult::Resumed),
        Just(SubResult::Reset),
        Just(SubResult::AlreadySubscribed),
        Just(SubResult::InvalidTopic),
        Just(SubResult::LimitReached),
        Just(SubResult::NotSubscribed),
        Just(SubResult::Forbidden),
    ];
    prop_oneof![
        (any::<u16>(), 1u8..=3, text(30), text(30)).prop_map(
            |(version, role, client_name, token)| {
                Frame::Hello(Hello {
                    version,
                    role: Role::from_u8(role).expect("1..=3 are roles"),
                    client_name,
                    token,
                })
            }
        ),
        (any::<u32>(), proptest::collection::vec(entry, 0..5)).prop_map(|(request_id, entries)| {
            Frame::Subscribe(Subscribe {
                request_id,
                entries,
            })
        }),
        (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..10)).prop_map(
            |(request_id, topic_ids)| Frame::Unsubscribe(Unsubscribe {
                request_id,
                topic_ids
            })
        ),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        (any::<u8>(), text(40), payload()).prop_map(|(flags, topic, payload)| Frame::Publish(
            Publish {
                flags,
                topic,
                payload
            }
        )),
        (
            any::<u16>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<[u32; 3]>()
        )
            .prop_map(
                |(version, session_id, epoch, heartbeat_ms, l)| Frame::Welcome(Welcome {
                    version,
                    session_id,
                    epoch,
                    heartbeat_ms,
                    limits: Limits {
                        max_frame: l[0],
                        max_subscriptions: l[1],
                        outbox_limit: l[2]
                    },
                })
            ),
        (
            any::<u32>(),
            proptest::collection::vec((result, any::<u32>(), any::<u64>()), 0..5)
        )
            .prop_map(|(request_id, es)| Frame::SubAck(SubAck {
                request_id,
                entries: es
                    .into_iter()
                    .map(|(result, topic_id, seq)| SubAckEntry {
                        result,
                        topic_id,
                        seq
                    })
                    .collect(),
            })),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            payload()
        )
            .prop_map(
                |(topic_id, seq, timestamp_us, flags, payload)| Frame::Update(Update {
                    topic_id,
                    seq,
                    timestamp_us,
                    flags,
                    payload,
                })
            ),
        Just(Frame::Heartbeat),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        (any::<u16>(), text(50))
            .prop_map(|(code, message)| Frame::Error(ErrorFrame { code, message })),
        (any::<u16>(), any::<u32>(), text(50)).prop_map(|(code, reconnect_after_ms, message)| {
            Frame::GoAway(GoAway {
                code,
                reconnect_after_ms,
                message,
            })
        }),
        (any::<u32>(), text(40)).prop_map(|(topic_id, name)| Frame::Topic { topic_id, name }),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(topics, epoch, feed_seq)| {
            Frame::Synced {
                topics,
                epoch,
                feed_seq,
            }
        }),
        // Version 2: long tokens.
        (
            2u16..=9,
            1u8..=3,
            proptest::collection::vec(text(200), 0..4)
        )
            .prop_map(|(version, role, parts)| {
                Frame::Hello(Hello {
                    version,
                    role: Role::from_u8(role).expect("1..=3 are roles"),
                    client_name: "c".into(),
                    token: parts.join("."),
                })
            }),
        proptest::collection::vec(text(200), 0..4).prop_map(|parts| Frame::Auth {
            token: parts.join(".")
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(expires_at_s, grace_ms)| Frame::AuthOk {
            expires_at_s,
            grace_ms
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip_under_random_chunking(
        frames in proptest::collection::vec(frame(), 1..20),
        cuts in proptest::collection::vec(1usize..64, 1..50),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            f.encode(&mut stream).unwrap();
        }
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        let mut got = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < stream.len() {
            let n = cuts[i % cuts.len()].min(stream.len() - pos);
            d.feed(&stream[pos..pos + n]);
            pos += n;
            i += 1;
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(d.buffered(), 0);
    }

    /// Arbitrary bytes: the decoder returns frames or a typed error, never panics, never
    /// buffers more than one frame's worth beyond what it was fed, and after an error stays failed.
    #[test]
    fn arbitrary_bytes_never_panic(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..20),
        max in 1u32..5000,
    ) {
        let mut d = Decoder::new(max);
        let mut failed = false;
        for c in &chunks {
            d.feed(c);
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        prop_assert!(!failed);
                        // Whatever decodes must re-encode to something that decodes the same.
                        let again = f.to_bytes().unwrap();
                        let mut d2 = Decoder::new(u32::MAX);
                        d2.feed(&again);
                        prop_assert_eq!(d2.next_frame().unwrap(), Some(f));
                    }
                    Ok(None) => break,
                    Err(_) => { failed = true; break; }
                }
            }
            prop_assert!(d.buffered() <= max as usize + 4 + c.len());
        }
    }

    /// Arbitrary bodies behind a valid prefix exercise every frame parser.
    #[test]
    fn arbitrary_bodies_of_every_type(t in prop::sample::select(vec![1u8,2,3,4,5,0x81,0x82,0x83,0x84,0x85,0x86,0x87]),
                                      body in proptest::collection::vec(any::<u8>(), 0..100)) {
        let mut b = Vec::new();
        b.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        b.push(t);
        b.extend_from_slice(&body);
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        d.feed(&b);
        match d.next_frame() {
            Ok(Some(f)) => prop_assert_eq!(f.frame_type(), t),
            Ok(None) => prop_assert!(false, "a whole frame was fed"),
            Err(e) => prop_assert!(matches!(e.code(), ErrorCode::MalformedFrame)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Relay feed datagrams come from the network: arbitrary bytes behind a valid header (and
    /// arbitrary headers) are refused with an error or parsed completely, never a panic; what
    /// parses is exactly `count` whole UPDATE frames.
    #[test]
    fn feed_datagrams_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..400),
        count in 0u16..8,
        raw in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        use yorker_wire::feed::*;
        let _ = FeedHeader::decode(&raw);
        let mut d = BytesMut::new();
        FeedHeader {
            kind: Kind::Data,
            flags: 0,
            channel: 0,
            epoch: 1,
            seq: 1,
            send_time_us: 0,
            count,
        }
        .encode(&mut d);
        d.extend_from_slice(&body);
        let d = d.freeze();
        let h = FeedHeader::decode(&d).unwrap();
        if let Ok(m) = messages(&d, &h) {
            prop_assert_eq!(m.len(), count as usize);
            let total: usize = m
                .iter()
                .map(|x| message_len(&x.topic, &Frame::Update(x.update.clone()).to_bytes().unwrap()))
                .sum();
            prop_assert_eq!(total + FEED_HEADER_LEN, d.len());
        }
    }

    /// Packed messages round-trip.
    #[test]
    fn feed_messages_round_trip(
        msgs in proptest::collection::vec(("[a-z/]{1,20}", any::<u64>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..100)), 0..10),
    ) {
        use yorker_wire::feed::*;
        let mut d = BytesMut::new();
        FeedHeader { kind: Kind::Data, flags: 0, channel: 3, epoch: 9, seq: 5, send_time_us: 1, count: msgs.len() as u16 }
            .encode(&mut d);
        for (t, seq, flags, p) in &msgs {
            put_message(&mut d, t, &encode_update(1, *seq, 2, *flags, p));
        }
        let d = d.freeze();
        let got = messages(&d, &FeedHeader::decode(&d).unwrap()).unwrap();
        prop_assert_eq!(got.len(), msgs.len());
        for (g, (t, seq, flags, p)) in got.iter().zip(&msgs) {
            prop_assert_eq!(&g.topic, t);
            prop_assert_eq!((g.update.seq, g.update.flags, &g.update.payload[..]), (*seq, *flags, &p[..]));
        }
    }
}
