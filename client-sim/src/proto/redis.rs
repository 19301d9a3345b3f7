//! Redis pub/sub over RESP2: SUBSCRIBE and PUBLISH out; subscribe confirmations and
//! `message` pushes in.

use super::{Event, ParseError};

/// A RESP array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut b = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        b.extend_from_slice(a);
        b.extend_from_slice(b"\r\n");
    }
    b
}

/// SUBSCRIBE `channel`.
pub fn subscribe(channel: &str) -> Vec<u8> {
    command(&[b"SUBSCRIBE", channel.as_bytes()])
}

/// PUBLISH.
pub fn publish(channel: &str, payload: &[u8]) -> Vec<u8> {
    command(&[b"PUBLISH", channel.as_bytes(), payload])
}

/// Incremental parser of the push stream of a subscribed connection.
#[derive(Debug, Default)]
pub struct Parser {
    partial: Vec<u8>,
}

impl Parser {
    /// Feeds bytes; calls `on` per push.
    pub fn feed(&mut self, data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), ParseError> {
        super::feed_buffered(&mut self.partial, data, |b| parse(b, on))
    }
}

/// One RESP value: bulk strings as slices, integers, arrays flattened into `items`.
/// Returns the bytes it spans, or None when incomplete.
fn value<'a>(
    b: &'a [u8],
    items: &mut Vec<&'a [u8]>,
    depth: u8,
) -> Result<Option<usize>, ParseError> {
    if depth > 4 {
        return Err(ParseError("RESP nesting too deep".into()));
    }
    let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() > 64 * 1024 {
            Err(ParseError("RESP line too long".into()))
        } else {
            Ok(None)
        };
    };
    let head = &b[1..eol];
    let num = || -> Result<i64, ParseError> {
        std::str::from_utf8(head)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ParseError("RESP bad number".into()))
    };
    match b.first() {
        Some(b'$') => {
            let n = num()?;
            if n < 0 {
                return Ok(Some(eol + 2));
            }
            let n = n as usize;
            if n > 512 * 1024 * 1024 {
                return Err(ParseError("RESP bulk too large".into()));
            }
            if b.len() < eol + 2 + n + 2 {
                return Ok(None);
            }
            items.push(&b[eol + 2..eol + 2 + n]);
            Ok(Some(eol + 2 + n + 2))
        }
        Some(b'*') => {
            let n = num()?;
            let mut at = eol + 2;
            for _ in 0..n.max(0) {
                match value(&b[at..], items, depth + 1)? {
                    Some(used) => at += used,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        Some(b':') | Some(b'+') => {
            items.push(head);
            Ok(Some(eol + 2))
        }
        Some(b'-') => Err(ParseError(format!(
            "redis error: {}",
            String::from_utf8_lossy(head)
        ))),
        _ => Err(ParseError("RESP: unknown type byte".into())),
    }
}

fn parse(b: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<usize, ParseError> {
    let mut pos = 0;
    let mut items = Vec::with_capacity(4);
    while pos < b.len() {
        items.clear();
        match value(&b[pos..], &mut items, 0)? {
            None => break,
            Some(used) => {
                match items.first().copied() {
                    Some(b"message") if items.len() == 3 => on(Event::Update {
                        topic_id: 0,
                        seq: 0,
                        flags: 0,
                        payload: items[2],
                    }),
                    Some(b"subscribe") => on(Event::SubAck {
                        topic_id: 0,
                        seq: 0,
                        ok: true,
                    }),
                    _ => on(Event::Other),
                }
                pos += used;
            }
        }
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_batched_pushes() {
        let mut stream = b"*3\r\n$9\r\nsubscribe\r\n$7\r\nbench.t\r\n:1\r\n".to_vec();
        for i in 0..4u8 {
            stream.extend(command(&[b"message", b"bench.t", &[i, b'\r', b'\n', b'$']]));
        }
        for cut in 0..stream.len() {
            let mut p = Parser::default();
            let (mut got, mut acks) = (Vec::new(), 0);
            for part in [&stream[..cut], &stream[cut..]] {
                p.feed(part, &mut |e| match e {
                    Event::Update { payload, .. } => got.push(payload[0]),
                    Event::SubAck { .. } => acks += 1,
                    _ => {}
                })
                .unwrap();
            }
            assert_eq!((got, acks), (vec![0, 1, 2, 3], 1), "cut {cut}");
        }
        assert!(Parser::default()
            .feed(b"-ERR nope\r\n", &mut |_| {})
            .is_err());
    }
}
