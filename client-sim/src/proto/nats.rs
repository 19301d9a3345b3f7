//! Core NATS (text protocol): CONNECT, SUB, PUB, PING/PONG out; INFO, MSG, PING, PONG, +OK,
//! -ERR in. A PONG after our SUB+PING tells that the subscription is in place.

use super::{Event, ParseError};

/// CONNECT (no verbose acks) then SUB `subject` and a PING whose PONG confirms the SUB.
pub fn handshake(subject: &str, sid: u64) -> Vec<u8> {
    format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"yorker-sim\"}}\r\nSUB {subject} {sid}\r\nPING\r\n").into_bytes()
}

/// CONNECT for a publisher.
pub fn connect() -> Vec<u8> {
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"yorker-sim publisher\"}\r\n".to_vec()
}

/// PUB.
pub fn publish(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
    b.extend_from_slice(payload);
    b.extend_from_slice(b"\r\n");
    b
}

/// Reads the server's first line (INFO) from a blocking socket, byte by byte so that nothing
/// after it is consumed: nats-server 2.9 sends it in clear before a TLS handshake.
pub fn read_info_line(sock: &mut impl std::io::Read) -> std::io::Result<()> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() > MAX_LINE {
            return Err(std::io::Error::other("NATS INFO line too long"));
        }
        sock.read_exact(&mut b)?;
        line.push(b[0]);
    }
    if !line.starts_with(b"INFO ") {
        return Err(std::io::Error::other("the server did not start with INFO"));
    }
    Ok(())
}

/// What the server asks the client to send back (NATS pings clients and expects PONG).
pub const PONG: &[u8] = b"PONG\r\n";

/// Incremental parser of server-to-client lines and messages.
#[derive(Debug, Default)]
pub struct Parser {
    partial: Vec<u8>,
}

const MAX_LINE: usize = 64 * 1024;
const MAX_MSG: usize = 64 * 1024 * 1024;

impl Parser {
    /// Feeds bytes; calls `on` per message. A server PING sets `pinged` (the caller answers
    /// with [`PONG`]).
    pub fn feed(
        &mut self,
        data: &[u8],
        pinged: &mut bool,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), ParseError> {
        super::feed_buffered(&mut self.partial, data, |b| parse(b, pinged, on))
    }
}

fn parse(b: &[u8], pinged: &mut bool, on: &mut dyn FnMut(Event<'_>)) -> Result<usize, ParseError> {
    let mut pos = 0;
    loop {
        let rest = &b[pos..];
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            if rest.len() > MAX_LINE {
                return Err(ParseError("NATS control line too long".into()));
            }
            return Ok(pos);
        };
        let line = &rest[..eol];
        let mut words = line.split(|&c| c == b' ').filter(|w| !w.is_empty());
        match words.next() {
            Some(b"MSG") => {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let args: Vec<&[u8]> = words.collect();
                let n: usize = args
                    .last()
                    .and_then(|w| std::str::from_utf8(w).ok())
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| ParseError("NATS MSG without a size".into()))?;
                if n > MAX_MSG {
                    return Err(ParseError("NATS MSG too large".into()));
                }
                let start = eol + 2;
                if rest.len() < start + n + 2 {
                    return Ok(pos);
                }
                on(Event::Update {
                    topic_id: 0,
                    seq: 0,
                    flags: 0,
                    payload: &rest[start..start + n],
                });
                pos += start + n + 2;
                continue;
            }
            Some(b"PING") => *pinged = true,
            Some(b"PONG") => on(Event::SubAck {
                topic_id: 0,
                seq: 0,
                ok: true,
            }),
            Some(b"INFO") => on(Event::Welcome {
                epoch: 0,
                heartbeat_ms: 0,
            }),
            Some(b"-ERR") => on(Event::Error { code: 0 }),
            _ => on(Event::Other),
        }
        pos += eol + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_batched_messages() {
        let mut stream = b"INFO {\"server_id\":\"x\"}\r\nPONG\r\n".to_vec();
        for i in 0..4u8 {
            stream.extend_from_slice(format!("MSG bench.t 1 {}\r\n", 3).as_bytes());
            stream.extend_from_slice(&[i, b'\r', b'\n']); // payload may contain CRLF
            stream.extend_from_slice(b"\r\n");
        }
        stream.extend_from_slice(b"PING\r\n");
        for cut in 0..stream.len() {
            let mut p = Parser::default();
            let mut got = Vec::new();
            let mut pinged = false;
            let mut acks = 0;
            for part in [&stream[..cut], &stream[cut..]] {
                p.feed(part, &mut pinged, &mut |e| match e {
                    Event::Update { payload, .. } => got.push(payload.to_vec()),
                    Event::SubAck { .. } => acks += 1,
                    _ => {}
                })
                .unwrap();
            }
            assert_eq!(got.len(), 4, "cut {cut}");
            assert_eq!(got[2], vec![2, b'\r', b'\n']);
            assert!(pinged && acks == 1);
        }
        assert_eq!(publish("a.b", b"xy"), b"PUB a.b 2\r\nxy\r\n".to_vec());
    }
}
