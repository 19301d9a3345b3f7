//! yorker over WebSocket for the load generator: the HTTP upgrade, masked client frames
//! around the yorker stream, and the server's binary messages (one yorker frame each) unwrapped
//! into the yorker parser.

use yorker_wire::websocket::{masked_frame, opcode};

use super::{yorker, Event, ParseError};

/// The upgrade request (key: RFC 6455's example; the server checks its form, not its value).
pub fn upgrade_request() -> Vec<u8> {
    b"GET / HTTP/1.1\r\nHost: yorker\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: yorker\r\n\r\n".to_vec()
}

/// `payload` (yorker frames) as one masked binary message.
pub fn masked(payload: &[u8]) -> Vec<u8> {
    masked_frame(true, opcode::BINARY, payload, [0x5a, 0xa5, 0x3c, 0xc3])
}

/// Incremental parser: the 101 answer, then server frames whose payloads feed the yorker
/// parser.
#[derive(Debug, Default)]
pub struct Parser {
    upgraded: bool,
    partial: Vec<u8>,
    inner: yorker::Parser,
}

impl Parser {
    /// Feeds received bytes, calling `on` for every yorker frame.
    pub fn feed(&mut self, data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), ParseError> {
        let inner = &mut self.inner;
        let upgraded = &mut self.upgraded;
        super::feed_buffered(&mut self.partial, data, |b| {
            let mut at = 0;
            if !*upgraded {
                let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return Ok(0);
                };
                if !b.starts_with(b"HTTP/1.1 101") {
                    return Err(ParseError(format!(
                        "websocket upgrade refused: {}",
                        String::from_utf8_lossy(&b[..end.min(80)])
                    )));
                }
                *upgraded = true;
                at = end + 4;
            }
            loop {
                let rest = &b[at..];
                if rest.len() < 2 {
                    return Ok(at);
                }
                let op = rest[0] & 0x0f;
                let (len, hl) = match rest[1] & 0x7f {
                    126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                    127 if rest.len() >= 10 => (
                        u64::from_be_bytes(rest[2..10].try_into().expect("8")) as usize,
                        10,
                    ),
                    l if l < 126 => (l as usize, 2),
                    _ => return Ok(at),
                };
                if rest.len() < hl + len {
                    return Ok(at);
                }
                if op == opcode::BINARY {
                    inner.feed(&rest[hl..hl + len], on)?;
                } else if op == opcode::CLOSE {
                    on(Event::Other);
                }
                at += hl + len;
            }
        })
    }
}
