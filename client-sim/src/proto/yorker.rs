//! yorker protocol for the load generator: the wire crate's zero-copy frame splitting and
//! UPDATE view on the hot path (hundreds of thousands of deliveries per second), its decoder
//! and encoder for the rest. No protocol layout is repeated here.

use bytes::{Bytes, BytesMut};
use yorker_wire::{
    codec::decode_body, split_frames, Frame, Hello, ResumeFrom, Role, Subscribe, SubscribeEntry,
    UpdateView,
};

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

/// Parses whole frames from the front of `b`; returns the bytes consumed. UPDATE frames, the hot
/// path, are read in place through the wire crate's zero-copy [`UpdateView`].
fn parse_frames(b: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<usize, ParseError> {
    split_frames(b, MAX_FRAME as u32, |body| {
        if let Some(u) = UpdateView::parse(body) {
            on(Event::Update {
                topic_id: u.topic_id(),
                seq: u.seq(),
                flags: u.flags(),
                payload: u.payload(),
            });
            return Ok(());
        }
        match decode_body(Bytes::copy_from_slice(body))? {
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
        Ok(())
    })
    .map_err(|e| ParseError(e.to_string()))
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
                presence: false,
            })
            .collect(),
    })
    .encode(&mut b)
    .expect("valid topics");
    b.freeze()
}

/// A PING frame.
pub fn ping(nonce: u64) -> Bytes {
    Frame::Ping { nonce }.to_bytes().expect("ping encodes")
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
