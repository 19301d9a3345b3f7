//! Arbitrary server bytes into the client session, in two reads with a timer between: no
//! panic, and whatever it reports is consistent (a Disconnected comes with a retry delay or
//! none).
#![no_main]
use libfuzzer_sys::fuzz_target;
use yorker_wire::{ClientConfig, ClientSession};

fuzz_target!(|data: &[u8]| {
    let mut s = ClientSession::new(ClientConfig::default());
    s.subscribe("match/1", true);
    s.subscribe("odds", false);
    assert!(s.poll_connect(0));
    s.on_connected(0);
    let half = data.len() / 2;
    s.handle_bytes(&data[..half], 1);
    s.handle_timeout(10_000);
    s.handle_bytes(&data[half..], 20_000);
    s.handle_timeout(100_000);
    while s.poll_event().is_some() {}
    let _ = s.poll_transmit(100_000);
});
