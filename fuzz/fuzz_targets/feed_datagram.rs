//! Arbitrary datagrams into the relay feed's decoders (header, DATA messages, NAK check):
//! refused or parsed, never a panic.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use yorker_wire::feed::{messages, verify_nak, FeedHeader, Kind};

fuzz_target!(|data: &[u8]| {
    let d = Bytes::copy_from_slice(data);
    if let Ok(h) = FeedHeader::decode(&d) {
        if h.kind == Kind::Data {
            let _ = messages(&d, &h);
        }
    }
    let _ = verify_nak(data, Some(b"key"), 1_000, 10_000_000);
    let _ = verify_nak(data, None, 1_000, 10_000_000);
});
