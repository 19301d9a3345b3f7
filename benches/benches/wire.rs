//! Wire codec benchmarks: encoding one UPDATE, decoding a stream of them.
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use yorker_wire::{encode_update, Decoder, DEFAULT_MAX_FRAME};

fn encode(c: &mut Criterion) {
    let payload = [7u8; 64];
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_update_64B", |b| {
        let mut seq = 0;
        b.iter(|| {
            seq += 1;
            encode_update(3, seq, 1_700_000_000_000_000, 0, &payload)
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let payload = [7u8; 64];
    let mut stream = BytesMut::new();
    for seq in 0..1000 {
        stream.extend_from_slice(&encode_update(3, seq, 1, 0, &payload));
    }
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decode_1000_updates_in_1500B_chunks", |b| {
        b.iter_batched(
            || Decoder::new(DEFAULT_MAX_FRAME),
            |mut d| {
                let mut n = 0;
                for chunk in stream.chunks(1500) {
                    d.feed(chunk);
                    while let Ok(Some(_)) = d.next_frame() {
                        n += 1;
                    }
                }
                assert_eq!(n, 1000);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
