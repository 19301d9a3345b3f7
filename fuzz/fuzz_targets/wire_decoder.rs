//! Arbitrary bytes into the incremental decoder, split at a fuzzer-chosen point: it never
//! panics, and every frame it returns re-encodes to bytes that decode to the same frame.
#![no_main]
use libfuzzer_sys::fuzz_target;
use yorker_wire::{Decoder, MAX_MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut d = Decoder::new(MAX_MAX_FRAME);
    d.feed(&data[..split]);
    d.feed(&data[split..]);
    while let Ok(Some(f)) = d.next_frame() {
        if let Ok(b) = f.to_bytes() {
            let mut again = Decoder::new(MAX_MAX_FRAME);
            again.feed(&b);
            assert_eq!(again.next_frame().expect("re-decodes"), Some(f));
        }
    }
});
