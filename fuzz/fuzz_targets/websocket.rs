//! The WebSocket layer an unauthenticated client reaches first: the opening handshake parser
//! and the streaming frame decoder, fed arbitrary bytes split at a fuzzer-chosen point. Never
//! panics; the decoder's buffered state stays bounded (a header and a control payload).
#![no_main]
use libfuzzer_sys::fuzz_target;
use yorker_wire::websocket::{parse_request, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut d = FrameDecoder::default();
    let (mut out, mut controls) = (Vec::new(), Vec::new());
    if d.feed(&data[..split], &mut out, &mut controls).is_ok() {
        let _ = d.feed(&data[split..], &mut out, &mut controls);
    }
    assert!(d.buffered() <= 14 + 125);
    assert!(out.len() <= data.len());
});
