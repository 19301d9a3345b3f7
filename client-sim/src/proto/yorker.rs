//! yorker protocol v1 for the load generator: a zero-copy fast path for UPDATE frames (the
//! hot path at hundreds of thousands of deliveries per second), the wire crate for the rest.

use bytes::{BufMut, Bytes, BytesMut};
use yorker_wire::frame::{frame_type, LENGTH_PREFIX};
use yorker_wire::{codec::decode_body, Frame, Hello, ResumeFrom, Role, Subscribe, SubscribeEntry};

use super::{Event, ParseError};

/// Incremental parser; keeps only a partial frame between reads.
#[derive(Debug, Default)]
pub struct Parser {
    partial: Vec<u8>,
}

/// Largest frame the load generator accepts.
pub const MAX_FRAME: usize = 16 << 20;

impl Parser {
    /// Feeds received bytes, calling `on` for every whole frame.
    pub fn feed(&mut self, data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), ParseError> {
        super::feed_buffered(&mut self.partial, data, |b| parse_frames(b, on))
    }
}

/// Parses whole frames from the front of `b`; returns the bytes consumed.
fn parse_frames(b: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<usize, ParseError> {
    let mut pos = 0;
    while b.len() - pos >= LENGTH_PREFIX {
        let len = u32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(ParseError(format!("bad frame length {len}")));
        }
        if b.len() - pos - LENGTH_PREFIX < len {
            break;
        }
        let body = &b[pos + LENGTH_PREFIX..pos + LENGTH_PREFIX + len];
        pos += LENGTH_PREFIX + len;
        if body[0] == frame_type::UPDATE && body.len() >= 22 {
            on(Event::Update {
                topic_id: u32::from_be_bytes(body[1..5].try_into().expect("4 bytes")),
                seq: u64::from_be_bytes(body[5..13].try_into().expect("8 bytes")),
                flags: body[21],
                payload: &body[22..],
            });
            continue;
        }
        match decode_body(Bytes::copy_from_slice(body)).map_err(|e| ParseError(e.to_string()))? {
            Frame::Welcome(w) => on(Event::Welcome {
                epoch: w.epoch,
                heartbeat_ms: w.heartbeat_ms,
            }),
            Frame::SubAck(a) => {
                for e in a.entries {
                    on(Event::SubAck {
                        topic_id: e.topic_id,
                        seq: e.seq,
                        ok: e.result.is_subscribed(),
                    });
                }
            }
            Frame::GoAway(g) => on(Event::GoAway {
                reconnect_after_ms: g.reconnect_after_ms,
            }),
            Frame::Error(e) => on(Event::Error { code: e.code }),
            _ => on(Event::Other),
        }
    }
    Ok(pos)
}

/// HELLO followed by SUBSCRIBE, as one buffer to send on connect.
pub fn handshake(name: &str, topics: &[(String, Option<ResumeFrom>)], conflate: bool) -> Bytes {
    let mut b = BytesMut::new();
    Frame::Hello(Hello {
        version: 1,
        role: Role::Subscriber,
        client_name: name.into(),
        token: String::new(),
    })
    .encode(&mut b)
    .expect("short hello");
    Frame::Subscribe(Subscribe {
        request_id: 1,
        entries: topics
            .iter()
            .map(|(t, resume)| SubscribeEntry {
                topic: t.clone(),
                resume: *resume,
                conflate,
            })
            .collect(),
    })
    .encode(&mut b)
    .expect("valid topics");
    b.freeze()
}

/// A PING frame.
pub fn ping(nonce: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(13);
    b.put_u32(9);
    b.put_u8(frame_type::PING);
    b.put_u64(nonce);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yorker_wire::encode_update;

    fn collect(p: &mut Parser, chunks: &[&[u8]]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e| {
                if let Event::Update { seq, payload, .. } = e {
                    out.push((seq, payload.to_vec()));
                }
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn split_and_batched_frames() {
        let mut all = Vec::new();
        for s in 1..=5u64 {
            all.extend_from_slice(&encode_update(1, s, 0, 0, &[s as u8; 3]));
        }
        // Many frames in one read.
        assert_eq!(collect(&mut Parser::default(), &[&all]).len(), 5);
        // Split at every position.
        for cut in 0..all.len() {
            let got = collect(&mut Parser::default(), &[&all[..cut], &all[cut..]]);
            assert_eq!(
                got.iter().map(|g| g.0).collect::<Vec<_>>(),
                vec![1, 2, 3, 4, 5],
                "cut {cut}"
            );
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(collect(&mut Parser::default(), &bytes).len(), 5);
    }

    #[test]
    fn control_frames_and_errors() {
        let mut p = Parser::default();
        let mut ev = Vec::new();
        let goaway = Frame::GoAway(yorker_wire::GoAway {
            code: 13,
            reconnect_after_ms: 777,
            message: "x".into(),
        })
        .to_bytes()
        .unwrap();
        p.feed(&goaway, &mut |e| ev.push(format!("{e:?}"))).unwrap();
        assert!(ev[0].contains("777"));
        assert!(Parser::default().feed(&[0, 0, 0, 0], &mut |_| {}).is_err());
    }
}
