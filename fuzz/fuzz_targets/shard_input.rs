//! Arbitrary client bytes into a shard (anonymous, publisher-keyed and relay-keyed roles are
//! all reachable: the bytes choose), publishes applied like the driver does, time advanced and
//! sends completed: no panic, outboxes within their limit, and everything the shard sends
//! decodes.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use yorker_engine::proto::registry::Registry;
use yorker_engine::proto::{CoreConfig, Input, Now, Output, Shard};
use yorker_wire::{Decoder, MAX_MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let registry = Arc::new(Registry::new(7, 8, 64));
    let cfg = Arc::new(CoreConfig {
        max_connections: 8,
        outbox_limit: 8_192,
        publisher_key: Some("k".into()),
        relay_key: Some("r".into()),
        ..CoreConfig::default()
    });
    let mut s = Shard::new(cfg, registry.clone(), 1);
    let mut now = Now { ms: 1, unix_us: 1 };
    // The first byte picks how many connections share the input; chunks go round-robin.
    let conns = data.first().map_or(1, |b| 1 + (*b % 3) as u32);
    let mut tokens = Vec::new();
    for slot in 0..conns {
        s.handle(Input::Accepted { slot }, now);
        while let Some(o) = s.poll_output() {
            if let Output::ArmRecv(t) = o {
                tokens.push(t);
            }
        }
    }
    let mut frames = Vec::new();
    // Connections that opened with `G` speak WebSocket: their output is HTTP and WebSocket
    // framing, not bare yorker frames (the websocket target fuzzes that layer).
    let mut websocket = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    for (i, chunk) in data.get(1..).unwrap_or(&[]).chunks(37).enumerate() {
        let t = tokens[i % tokens.len()];
        if seen.insert(t.slot) && chunk.first() == Some(&b'G') {
            websocket.insert(t.slot);
        }
        s.handle(Input::Received(t, chunk), now);
        let mut bus = Vec::new();
        while let Some(o) = s.poll_output() {
            if let Output::Publish(p) = o {
                registry.publish(&p.topic, p.flags, &p.payload, now.unix_us, &mut |m| {
                    bus.push(m)
                });
            }
        }
        for m in &bus {
            s.handle(Input::Update(m), now);
        }
        while let Some(t) = s.poll_transmit(now, &mut frames) {
            let mut d = Decoder::new(MAX_MAX_FRAME);
            for f in frames.drain(..) {
                d.feed(&f);
            }
            if !websocket.contains(&t.slot) {
                while let Some(_f) = d.next_frame().expect("server output decodes") {}
            }
            s.handle(Input::SendDone(t), now);
            assert!(s.outbox_bytes(t.slot) <= 8_192 + 512);
        }
        now.ms += 997;
        now.unix_us += 997_000;
        if s.poll_timeout().is_some_and(|d| d <= now.ms) {
            s.handle_timeout(now);
        }
    }
});
