//! The load generator's accounting against a scripted server: a tiny TCP server that answers
//! the handshake, then sends a scripted sequence of UPDATEs with a loss, a duplicate, a
//! reorder, a conflated skip and a reset, and a GOAWAY. The fleet's report must count each.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use yorker_sim::fleet::{Fleet, FleetConfig, PayloadKind, TopicChoice};
use yorker_sim::proto::Proto;
use yorker_sim::publisher::bench_payload;
use yorker_wire::*;

/// Serves one connection: WELCOME, SUBACK, then `script` as UPDATE frames (seq, flags), then
/// optionally GOAWAY; keeps the socket open until the client goes.
fn scripted(script: Vec<(u64, u8)>, goaway: bool) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut dec = Decoder::new(4096);
        let mut buf = [0u8; 4096];
        let mut got_sub = false;
        while !got_sub {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "client closed during handshake");
            dec.feed(&buf[..n]);
            while let Some(f) = dec.next_frame().unwrap() {
                match f {
                    Frame::Hello(_) => {
                        let w = Frame::Welcome(Welcome {
                            version: 1,
                            session_id: 1,
                            epoch: 5,
                            heartbeat_ms: 60_000,
                            limits: Limits {
                                max_frame: 65536,
                                max_subscriptions: 8,
                                outbox_limit: 1 << 20,
                            },
                        });
                        s.write_all(&w.to_bytes().unwrap()).unwrap();
                    }
                    Frame::Subscribe(sub) => {
                        let ack = Frame::SubAck(SubAck {
                            request_id: sub.request_id,
                            entries: vec![SubAckEntry {
                                result: SubResult::Ok,
                                topic_id: 3,
                                seq: 0,
                            }],
                        });
                        s.write_all(&ack.to_bytes().unwrap()).unwrap();
                        got_sub = true;
                    }
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        for (i, (seq, flags)) in script.iter().enumerate() {
            let p = bench_payload(32, i as u64, 1);
            out.extend_from_slice(&encode_update(3, *seq, 1, *flags, &p));
        }
        if goaway {
            out.extend_from_slice(
                &Frame::GoAway(GoAway {
                    code: 13,
                    reconnect_after_ms: 60_000,
                    message: "bye".into(),
                })
                .to_bytes()
                .unwrap(),
            );
        }
        // Dribble it out in small pieces: the client must reassemble frames.
        for chunk in out.chunks(7) {
            s.write_all(chunk).unwrap();
        }
        let _ = s.read(&mut buf);
    });
    addr
}

fn run(script: Vec<(u64, u8)>, conflate: bool, goaway: bool) -> yorker_sim::fleet::Report {
    let n = script.len() as u64;
    let addr = scripted(script, goaway);
    let fleet = Fleet::start(FleetConfig {
        addrs: vec![addr],
        conns: 1,
        threads: 1,
        ramp_per_s: 0,
        topics: TopicChoice {
            names: vec!["t".into()],
            skew: 0.0,
        },
        conflate,
        slow_fraction: 0.0,
        slow_delay_ms: 0,
        churn_per_s: 0.0,
        payload: PayloadKind::Score,
        track_updates: 0,
        proto: Proto::Yorker,
        seed: 1,
        source_base: 1,
        tls: None,
    })
    .unwrap();
    let t = Instant::now();
    while fleet.shared.received.load(Ordering::Relaxed) < n {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "scripted updates did not all arrive"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    if goaway {
        // The GOAWAY follows the updates in the stream.
        let t = Instant::now();
        loop {
            let r = fleet.shared.disconnects.load(Ordering::Relaxed);
            if r > 0 || t.elapsed() > Duration::from_millis(300) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    fleet.stop().unwrap()
}

#[test]
fn counts_losses_duplicates_and_reorders_on_a_non_conflating_subscription() {
    // 1 2 | 4 (3 lost) | 4 (dup) | 3 (late) | 6 (5 lost)
    let r = run(
        vec![(1, 0), (2, 0), (4, 0), (4, 0), (3, 0), (6, 0)],
        false,
        false,
    );
    assert_eq!(r.totals.received, 6);
    assert_eq!(r.totals.gaps, 2);
    assert_eq!(r.totals.duplicates, 2);
    assert_eq!(r.totals.conflated, 0);
}

#[test]
fn gaps_are_conflated_skips_on_a_conflating_subscription_and_resets_restart() {
    let snapshot_reset = update_flags::SNAPSHOT | update_flags::RESET;
    // 1 | 5 (skip of 3) | reset to 2 | 3
    let r = run(
        vec![(1, 0), (5, 0), (2, snapshot_reset), (3, 0)],
        true,
        false,
    );
    assert_eq!(r.totals.received, 4);
    assert_eq!(r.totals.conflated, 3);
    assert_eq!(
        (r.totals.gaps, r.totals.duplicates, r.totals.resets),
        (0, 0, 1)
    );
}

#[test]
fn goaway_is_honoured() {
    let r = run(vec![(1, 0), (2, 0)], false, true);
    assert_eq!(r.goaways, 1);
    assert_eq!((r.totals.gaps, r.totals.duplicates), (0, 0));
}
