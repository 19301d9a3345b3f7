//! Sans-IO core benchmarks: outbox enqueue and conflation, and the fan-out of one update to
//! 10,000 subscribers (queueing and taking the sends, no sockets).
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use yorker_engine::proto::outbox::{Entry, Outbox};
use yorker_engine::proto::registry::Registry;
use yorker_engine::proto::{CoreConfig, Input, Now, Output, Shard, Token, UpdateMsg};
use yorker_wire::{encode_update, Frame, Hello, Role, Subscribe, SubscribeEntry};

fn outbox(c: &mut Criterion) {
    let frame = encode_update(1, 1, 0, 0, &[0u8; 64]);
    let mut g = c.benchmark_group("outbox");
    g.throughput(Throughput::Elements(1));
    g.bench_function("enqueue_and_take", |b| {
        let mut o = Outbox::default();
        let mut out = Vec::with_capacity(1);
        b.iter(|| {
            o.push(
                Entry {
                    frame: frame.clone(),
                    topic: 1,
                    seq: 1,
                    conflatable: false,
                    raw: false,
                },
                1 << 20,
            );
            out.clear();
            o.take_batch(1, &mut out)
        })
    });
    g.bench_function("conflate_with_8_topics_queued", |b| {
        let mut o = Outbox::default();
        for t in 1..=8 {
            o.push(
                Entry {
                    frame: frame.clone(),
                    topic: t,
                    seq: 1,
                    conflatable: true,
                    raw: false,
                },
                1 << 20,
            );
        }
        let mut seq = 1;
        b.iter(|| {
            seq += 1;
            o.push(
                Entry {
                    frame: frame.clone(),
                    topic: 1 + (seq % 8) as u32,
                    seq,
                    conflatable: true,
                    raw: false,
                },
                1 << 20,
            )
        })
    });
    g.finish();
}

/// Sends everything the shard has to send, completing each send at once.
fn flush(core: &mut Shard, now: Now, out: &mut Vec<Bytes>) -> usize {
    let mut sent = Vec::new();
    while let Some(t) = core.poll_transmit(now, out) {
        out.clear();
        sent.push(t);
    }
    for &t in &sent {
        core.handle(Input::SendDone(t), now);
    }
    sent.len()
}

fn fanout(c: &mut Criterion) {
    const N: u32 = 10_000;
    let registry = Arc::new(Registry::new(1, 0, 10));
    let cfg = Arc::new(CoreConfig {
        max_connections: N as usize + 1,
        ..CoreConfig::default()
    });
    let mut core = Shard::new(cfg, registry.clone(), 1);
    let now = Now { ms: 1, unix_us: 1 };
    let mut hs = Vec::new();
    hs.extend_from_slice(
        &Frame::Hello(Hello {
            version: 1,
            role: Role::Subscriber,
            client_name: "b".into(),
            token: String::new(),
        })
        .to_bytes()
        .unwrap(),
    );
    hs.extend_from_slice(
        &Frame::Subscribe(Subscribe {
            request_id: 1,
            entries: vec![SubscribeEntry {
                topic: "m".into(),
                resume: None,
                conflate: true,
                presence: false,
            }],
        })
        .to_bytes()
        .unwrap(),
    );
    let mut out = Vec::new();
    for slot in 0..N {
        core.handle(Input::Accepted { slot }, now);
        let mut token: Option<Token> = None;
        while let Some(o) = core.poll_output() {
            if let Output::ArmRecv(t) = o {
                token = Some(t);
            }
        }
        core.handle(Input::Received(token.expect("armed"), &hs), now);
    }
    // Drain WELCOME/SUBACK so every outbox starts empty.
    flush(&mut core, now, &mut out);
    let topic = registry.get_or_create("m").unwrap();
    let frame: Bytes = encode_update(topic.id, 1, 0, 0, &[0u8; 64]);
    let mut seq = 0;
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("one_update_to_10k_subscribers", |b| {
        b.iter_batched(
            || {
                seq += 1;
                UpdateMsg {
                    topic: topic.id,
                    seq,
                    flags: 0,
                    frame: frame.clone(),
                    skip: 0,
                }
            },
            |msg| {
                core.handle(Input::Update(&msg), now);
                flush(&mut core, now, &mut out)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, outbox, fanout);
criterion_main!(benches);
