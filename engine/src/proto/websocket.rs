//! The WebSocket transport (RFC 6455) on the same listener as raw TCP: a connection whose first
//! bytes are `GET` is a WebSocket handshake (a yorker frame starts with a zero byte). After the
//! 101 answer, the client's binary messages carry its yorker byte stream (unmasked here and fed
//! to the session as if it came over TCP), and every frame the shard queues for the connection
//! goes out as one binary message: a header in front of the shared frame, in the same gathered
//! send. The header depends only on the frame's length, so it is built once per length and
//! shared by every WebSocket subscriber of an update (encode-once holds).

use std::collections::HashMap;

use bytes::Bytes;
use yorker_wire::websocket::{self as ws, Control, FrameDecoder, HandshakeError};

use super::outbox::Entry;
use super::slot::{live_mut, Phase};
use super::{Now, Shard};

/// A WebSocket connection's transport state (kept beside the slot, only for WebSocket
/// connections).
#[derive(Debug, Default)]
pub(crate) struct WsConn {
    /// The handshake bytes so far; `None` once upgraded.
    handshake: Option<Vec<u8>>,
    dec: FrameDecoder,
}

/// Header bytes per frame length, built once (bounded).
#[derive(Debug, Default)]
pub(crate) struct Headers(HashMap<usize, Bytes>);

impl Headers {
    fn get(&mut self, len: usize) -> Bytes {
        if let Some(h) = self.0.get(&len) {
            return h.clone();
        }
        if self.0.len() >= 4096 {
            self.0.clear();
        }
        let (h, n) = ws::frame_header(ws::opcode::BINARY, len);
        let b = Bytes::copy_from_slice(&h[..n]);
        self.0.insert(len, b.clone());
        b
    }
}

/// Is `origin` allowed by the configured list (empty: every origin, and none)?
fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    allowed.is_empty()
        || origin.is_some_and(|o| {
            allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
        })
}

impl Shard {
    /// Bytes arrived on a connection: through the WebSocket layer when it is (or is becoming)
    /// one, straight to the session otherwise.
    pub(crate) fn on_transport_bytes(&mut self, slot: u32, data: &[u8], now: Now) {
        let fresh = self.conn(slot).is_some_and(|c| {
            c.phase == Phase::AwaitHello && c.pending.is_none() && !self.ws.contains_key(&slot)
        });
        if fresh && self.cfg.websocket && ws::looks_like_http(data) {
            self.ws.insert(
                slot,
                WsConn {
                    handshake: Some(Vec::new()),
                    dec: FrameDecoder::default(),
                },
            );
        }
        let Some(w) = self.ws.get_mut(&slot) else {
            return self.on_bytes(slot, data, now);
        };
        let rest: Vec<u8>;
        let mut input = data;
        if let Some(h) = w.handshake.as_mut() {
            h.extend_from_slice(data);
            let parsed = ws::parse_request(h);
            let req = match parsed {
                Ok(None) => return,
                Err(e) => return self.ws_refuse(slot, &e, now),
                Ok(Some(req)) => req,
            };
            if !origin_allowed(&self.cfg.ws_origins, req.origin.as_deref()) {
                let e = HandshakeError::new(403, "origin not allowed");
                return self.ws_refuse(slot, &e, now);
            }
            let w = self.ws.get_mut(&slot).expect("present");
            let h = w.handshake.take().expect("handshaking");
            rest = h[req.len..].to_vec();
            let resp = Bytes::from(ws::accept_response(&req));
            self.push_raw(slot, resp);
            input = &rest;
        }
        let Some(w) = self.ws.get_mut(&slot) else {
            return;
        };
        let (mut plain, mut controls) = (Vec::new(), Vec::new());
        let r = w.dec.feed(input, &mut plain, &mut controls);
        if !plain.is_empty() {
            self.on_bytes(slot, &plain, now);
        }
        for c in controls {
            match c {
                Control::Ping(p) => {
                    let pong = Bytes::from(ws::control_frame(ws::opcode::PONG, &p));
                    self.push_raw(slot, pong);
                }
                Control::Close(_) => {
                    // The client closes: answer with a close, then close once flushed.
                    self.ws_close(slot, ws::close_code::NORMAL, "", now);
                    return;
                }
            }
        }
        if let Err(e) = r {
            self.ws_close(slot, e.code, e.reason, now);
        }
    }

    /// Queues transport bytes (never wrapped) and puts the connection first in line.
    fn push_raw(&mut self, slot: u32, b: Bytes) {
        let limit = self.cfg.outbox_limit;
        let Some(c) = live_mut(&mut self.slots, slot) else {
            return;
        };
        let len = b.len();
        if c.outbox.push_urgent(Entry::raw(b), limit).0 == super::outbox::Pushed::Overflow {
            self.stats.slow_disconnects += 1;
            return self.abort(slot);
        }
        self.total_outbox += len;
        self.mark_ready_first(slot);
    }

    /// A refused handshake: the HTTP answer, then close.
    fn ws_refuse(&mut self, slot: u32, e: &HandshakeError, now: Now) {
        tracing::debug!(
            slot,
            status = e.status,
            reason = e.reason,
            "websocket handshake refused"
        );
        self.stats.ws_refused += 1;
        let resp = Bytes::from(ws::refusal_response(e));
        self.finish_raw(slot, resp, now);
    }

    /// A WebSocket close (`code`), then close the connection once flushed.
    pub(crate) fn ws_close(&mut self, slot: u32, code: u16, reason: &str, now: Now) {
        let f = Bytes::from(ws::close_frame(code, reason));
        self.finish_raw(slot, f, now);
    }

    /// Ends the connection with these transport bytes as its last.
    pub(crate) fn finish_raw(&mut self, slot: u32, b: Bytes, now: Now) {
        self.end_with(slot, b, true, now);
    }

    /// After a final yorker frame (ERROR, GOAWAY) on a WebSocket connection: a close frame too.
    pub(crate) fn ws_close_after_final(&mut self, slot: u32) {
        if self.ws.get(&slot).is_none_or(|w| w.handshake.is_some()) {
            return;
        }
        let f = Bytes::from(ws::close_frame(ws::close_code::NORMAL, ""));
        if let Some(c) = live_mut(&mut self.slots, slot) {
            let len = f.len();
            c.outbox.push_raw_last(f);
            self.total_outbox += len;
        }
    }

    /// Fills `frames` for a WebSocket connection's send from `entries`: each yorker frame
    /// behind its (shared) header, transport bytes as they are.
    pub(crate) fn ws_frames(&mut self, entries: &mut Vec<Entry>, frames: &mut Vec<Bytes>) {
        for e in entries.drain(..) {
            if e.raw {
                frames.push(e.frame);
            } else {
                frames.push(self.ws_headers.get(e.frame.len()));
                frames.push(e.frame);
            }
        }
    }

    /// True while `slot` is in the middle of a WebSocket upgrade.
    pub(crate) fn ws_handshaking(&self, slot: u32) -> bool {
        self.ws.get(&slot).is_some_and(|w| w.handshake.is_some())
    }

    /// Forgets a connection's WebSocket state (it ended).
    pub(crate) fn forget_ws(&mut self, slot: u32) {
        self.ws.remove(&slot);
    }
}
