//! Encoding frames into `BytesMut`, and the incremental [`Decoder`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::frame::*;

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

impl Frame {
    /// Appends this frame, length prefix included, to `dst`.
    ///
    /// On error nothing is appended.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.check()?;
        let start = dst.len();
        dst.put_u32(0); // patched below, once the body length is known
        dst.put_u8(self.frame_type());
        match self {
            Frame::Hello(h) => {
                dst.put_u16(h.version);
                dst.put_u8(h.role as u8);
                put_str8(dst, &h.client_name);
                if h.long_token() {
                    put_str16(dst, &h.token);
                } else {
                    put_str8(dst, &h.token);
                }
            }
            Frame::Auth { token } => put_str16(dst, token),
            Frame::AuthOk {
                expires_at_s,
                grace_ms,
            } => {
                dst.put_u64(*expires_at_s);
                dst.put_u32(*grace_ms);
            }
            Frame::Subscribe(s) => {
                dst.put_u32(s.request_id);
                dst.put_u16(s.entries.len() as u16);
                for e in &s.entries {
                    let mut flags = 0;
                    if e.resume.is_some() {
                        flags |= sub_flags::RESUME;
                    }
                    if !e.conflate {
                        flags |= sub_flags::NO_CONFLATE;
                    }
                    if e.presence {
                        flags |= sub_flags::PRESENCE;
                    }
                    dst.put_u8(flags);
                    put_str8(dst, &e.topic);
                    if let Some(r) = e.resume {
                        dst.put_u64(r.epoch);
                        dst.put_u64(r.seq);
                    }
                }
            }
            Frame::Unsubscribe(u) => {
                dst.put_u32(u.request_id);
                dst.put_u16(u.topic_ids.len() as u16);
                for id in &u.topic_ids {
                    dst.put_u32(*id);
                }
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => dst.put_u64(*nonce),
            Frame::Publish(p) => {
                dst.put_u8(p.flags);
                put_str8(dst, &p.topic);
                dst.put_slice(&p.payload);
            }
            Frame::Welcome(w) => {
                dst.put_u16(w.version);
                dst.put_u64(w.session_id);
                dst.put_u64(w.epoch);
                dst.put_u32(w.heartbeat_ms);
                dst.put_u32(w.limits.max_frame);
                dst.put_u32(w.limits.max_subscriptions);
                dst.put_u32(w.limits.outbox_limit);
            }
            Frame::SubAck(s) => {
                dst.put_u32(s.request_id);
                dst.put_u16(s.entries.len() as u16);
                for e in &s.entries {
                    dst.put_u8(e.result as u8);
                    dst.put_u32(e.topic_id);
                    dst.put_u64(e.seq);
                }
            }
            Frame::Update(u) => {
                dst.put_u32(u.topic_id);
                dst.put_u64(u.seq);
                dst.put_u64(u.timestamp_us);
                dst.put_u8(u.flags);
                dst.put_slice(&u.payload);
            }
            Frame::Heartbeat => {}
            Frame::Error(e) => {
                dst.put_u16(e.code);
                put_str16(dst, &e.message);
            }
            Frame::GoAway(g) => {
                dst.put_u16(g.code);
                dst.put_u32(g.reconnect_after_ms);
                put_str16(dst, &g.message);
            }
            Frame::Topic { topic_id, name } => {
                dst.put_u32(*topic_id);
                put_str8(dst, name);
            }
            Frame::Message(m) => {
                dst.put_u32(m.request_id);
                put_str8(dst, &m.routing_key);
                dst.put_slice(&m.payload);
            }
            Frame::Post(p) => {
                dst.put_u32(p.request_id);
                let flags = match &p.idempotency_key {
                    Some(_) => p.flags | update_flags::IDEMPOTENCY_KEY,
                    None => p.flags & !update_flags::IDEMPOTENCY_KEY,
                };
                dst.put_u8(flags);
                put_str8(dst, &p.topic);
                if let Some(k) = &p.idempotency_key {
                    put_str8(dst, k);
                }
                dst.put_slice(&p.payload);
            }
            Frame::PresenceGet { request_id, topic } => {
                dst.put_u32(*request_id);
                put_str8(dst, topic);
            }
            Frame::Reply {
                session_id,
                request_id,
                payload,
            } => {
                dst.put_u64(*session_id);
                dst.put_u32(*request_id);
                dst.put_slice(payload);
            }
            Frame::Ack {
                request_id,
                code,
                seq,
            } => {
                dst.put_u32(*request_id);
                dst.put_u16(*code);
                dst.put_u64(*seq);
            }
            Frame::Response {
                request_id,
                payload,
            } => {
                dst.put_u32(*request_id);
                dst.put_slice(payload);
            }
            Frame::Presence {
                request_id,
                topic_id,
                members,
            } => {
                dst.put_u32(*request_id);
                dst.put_u32(*topic_id);
                dst.put_u32(*members);
            }
            Frame::Member {
                topic_id,
                event,
                session_id,
                user,
            } => {
                dst.put_u32(*topic_id);
                dst.put_u8(*event);
                dst.put_u64(*session_id);
                put_str8(dst, user);
            }
            Frame::ClientMessage(m) => {
                dst.put_u64(m.session_id);
                dst.put_u32(m.request_id);
                put_str8(dst, &m.user);
                put_str8(dst, &m.routing_key);
                dst.put_slice(&m.payload);
            }
            Frame::Synced {
                topics,
                epoch,
                feed_seq,
            } => {
                dst.put_u32(*topics);
                dst.put_u64(*epoch);
                dst.put_u64(*feed_seq);
            }
        }
        let len = (dst.len() - start - LENGTH_PREFIX) as u32;
        dst[start..start + LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut b = BytesMut::new();
        self.encode(&mut b)?;
        Ok(b.freeze())
    }

    /// Validates every length-limited field before anything is written.
    fn check(&self) -> Result<(), EncodeError> {
        let str8 = |field, s: &str| check_len(field, s.len(), u8::MAX as usize);
        let str16 = |field, s: &str| check_len(field, s.len(), u16::MAX as usize);
        let count = |field, n: usize| {
            if n > u16::MAX as usize {
                Err(EncodeError::TooManyEntries {
                    field,
                    len: n,
                    max: u16::MAX as usize,
                })
            } else {
                Ok(())
            }
        };
        match self {
            Frame::Hello(h) => {
                str8("client_name", &h.client_name)?;
                if h.long_token() {
                    str16("token", &h.token)
                } else {
                    str8("token", &h.token)
                }
            }
            Frame::Auth { token } => str16("token", token),
            Frame::Subscribe(s) => {
                count("entries", s.entries.len())?;
                s.entries.iter().try_for_each(|e| str8("topic", &e.topic))
            }
            Frame::Unsubscribe(u) => count("topic_ids", u.topic_ids.len()),
            Frame::Publish(p) => str8("topic", &p.topic),
            Frame::SubAck(s) => count("entries", s.entries.len()),
            Frame::Error(e) => str16("message", &e.message),
            Frame::GoAway(g) => str16("message", &g.message),
            Frame::Topic { name, .. } => str8("name", name),
            Frame::Message(m) => str8("routing_key", &m.routing_key),
            Frame::Post(p) => {
                str8("topic", &p.topic)?;
                p.idempotency_key
                    .as_deref()
                    .map_or(Ok(()), |k| str8("idempotency_key", k))
            }
            Frame::PresenceGet { topic, .. } => str8("topic", topic),
            Frame::Member { user, .. } => str8("user", user),
            Frame::ClientMessage(m) => {
                str8("user", &m.user)?;
                str8("routing_key", &m.routing_key)
            }
            _ => Ok(()),
        }
    }
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        Err(EncodeError::FieldTooLong { field, len, max })
    } else {
        Ok(())
    }
}

fn put_str8(dst: &mut BytesMut, s: &str) {
    dst.put_u8(s.len() as u8);
    dst.put_slice(s.as_bytes());
}

fn put_str16(dst: &mut BytesMut, s: &str) {
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

/// Encodes one UPDATE frame straight from its parts into a shared buffer, without building an
/// [`Update`] first. This is the engine's encode-once path: the returned `Bytes` is what every
/// subscriber's socket is sent.
pub fn encode_update(
    topic_id: u32,
    seq: u64,
    timestamp_us: u64,
    flags: u8,
    payload: &[u8],
) -> Bytes {
    let mut b = BytesMut::with_capacity(UPDATE_HEADER_LEN + payload.len());
    b.put_u32((UPDATE_HEADER_LEN - LENGTH_PREFIX + payload.len()) as u32);
    b.put_u8(frame_type::UPDATE);
    b.put_u32(topic_id);
    b.put_u64(seq);
    b.put_u64(timestamp_us);
    b.put_u8(flags);
    b.put_slice(payload);
    b.freeze()
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Incremental decoder: feed it byte chunks of any size, pull whole frames out.
///
/// It buffers at most one partial frame (bounded by `max_frame`) plus whatever whole frames
/// the caller fed and has not pulled yet. Payloads are zero-copy slices of that buffer.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_frame: u32,
    failed: Option<DecodeError>,
}

impl Decoder {
    /// A decoder that refuses frames whose length prefix exceeds `max_frame`.
    pub fn new(max_frame: u32) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max_frame,
            failed: None,
        }
    }

    /// Changes the maximum frame length (e.g. after WELCOME).
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// The maximum frame length in force.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Releases the buffer's memory when it holds nothing. Idle connections then cost no
    /// receive memory at all.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed, or the error that makes the
    /// stream undecodable. After an error every later call returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match decode_one(&mut self.buf, self.max_frame) {
            Err(e) => {
                self.buf = BytesMut::new();
                self.failed = Some(e.clone());
                Err(e)
            }
            ok => ok,
        }
    }
}

/// Decodes one frame from the front of `buf`, consuming it, or returns `Ok(None)` and consumes
/// nothing when `buf` does not yet hold a whole frame.
pub fn decode_one(buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, DecodeError> {
    let Some(len) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    // The type byte is checked as soon as it arrives so garbage is refused without waiting
    // for a (possibly huge) body.
    if buf.len() > LENGTH_PREFIX && frame_name(buf[LENGTH_PREFIX]) == "?" {
        return Err(DecodeError::UnknownFrameType(buf[LENGTH_PREFIX]));
    }
    let total = LENGTH_PREFIX + len as usize;
    if buf.len() < total {
        // Nothing is reserved for the announced length: a peer that announces a large frame
        // and then drips it costs only the bytes it actually sent.
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX);
    let body = buf.split_to(len as usize).freeze();
    decode_body(body).map(Some)
}

/// The length prefix at the front of `buf`, checked against `max_frame` (`None`: fewer than
/// four bytes so far). A frame is refused as soon as its prefix arrives, never after its body.
fn frame_len(buf: &[u8], max_frame: u32) -> Result<Option<u32>, DecodeError> {
    let Some(prefix) = buf.get(..LENGTH_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes"));
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    if len > max_frame {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    Ok(Some(len))
}

/// Splits the whole frames at the front of `buf` without copying: calls `on` with each frame's
/// body (type byte first) and returns the bytes consumed; an incomplete frame at the end is
/// left for the next call. For receivers that must not allocate per frame (the load
/// generator); [`Decoder`] is the general path.
pub fn split_frames(
    buf: &[u8],
    max_frame: u32,
    mut on: impl FnMut(&[u8]) -> Result<(), DecodeError>,
) -> Result<usize, DecodeError> {
    let mut pos = 0;
    while let Some(len) = frame_len(&buf[pos..], max_frame)? {
        let end = pos + LENGTH_PREFIX + len as usize;
        if buf.len() < end {
            break;
        }
        on(&buf[pos + LENGTH_PREFIX..end])?;
        pos = end;
    }
    Ok(pos)
}

/// A zero-copy view of an UPDATE frame's body (type byte first): the fields without parsing
/// the rest of the frame or allocating.
#[derive(Debug, Clone, Copy)]
pub struct UpdateView<'a>(&'a [u8]);

impl<'a> UpdateView<'a> {
    /// The view, when `body` is a well-formed UPDATE body.
    pub fn parse(body: &'a [u8]) -> Option<Self> {
        (body.first() == Some(&frame_type::UPDATE)
            && body.len() >= UPDATE_HEADER_LEN - LENGTH_PREFIX)
            .then_some(UpdateView(body))
    }
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }
    /// Topic id.
    pub fn topic_id(&self) -> u32 {
        u32::from_be_bytes(self.0[1..5].try_into().expect("4 bytes"))
    }
    /// Sequence number.
    pub fn seq(&self) -> u64 {
        self.u64_at(5)
    }
    /// Server timestamp, µs since the Unix epoch.
    pub fn timestamp_us(&self) -> u64 {
        self.u64_at(13)
    }
    /// [`update_flags`].
    pub fn flags(&self) -> u8 {
        self.0[21]
    }
    /// The payload.
    pub fn payload(&self) -> &'a [u8] {
        &self.0[UPDATE_HEADER_LEN - LENGTH_PREFIX..]
    }
}

/// Decodes a frame from its type byte and body (no length prefix).
pub fn decode_body(mut b: Bytes) -> Result<Frame, DecodeError> {
    let t = b.get_u8();
    let name = frame_name(t);
    let mut r = Reader {
        b: &mut b,
        frame: name,
    };
    let frame = match t {
        frame_type::HELLO => {
            let version = r.u16("version")?;
            let role_v = r.u8("role")?;
            let role = Role::from_u8(role_v).ok_or(DecodeError::InvalidValue {
                frame: name,
                field: "role",
                value: role_v as u64,
            })?;
            let client_name = r.str8("client_name")?;
            // The version, read first, says how long the token may be.
            let token = if version >= 2 {
                r.str16("token")?
            } else {
                r.str8("token")?
            };
            Frame::Hello(Hello {
                version,
                role,
                client_name,
                token,
            })
        }
        frame_type::SUBSCRIBE => {
            let request_id = r.u32("request_id")?;
            let count = r.u16("count")? as usize;
            // Each entry is at least 2 bytes, so the body bounds the allocation.
            let mut entries = Vec::with_capacity(count.min(r.b.remaining() / 2));
            for _ in 0..count {
                let flags = r.u8("entry flags")?;
                let topic = r.str8("topic")?;
                let resume = if flags & sub_flags::RESUME != 0 {
                    Some(ResumeFrom {
                        epoch: r.u64("resume_epoch")?,
                        seq: r.u64("resume_seq")?,
                    })
                } else {
                    None
                };
                entries.push(SubscribeEntry {
                    topic,
                    resume,
                    conflate: flags & sub_flags::NO_CONFLATE == 0,
                    presence: flags & sub_flags::PRESENCE != 0,
                });
            }
            Frame::Subscribe(Subscribe {
                request_id,
                entries,
            })
        }
        frame_type::UNSUBSCRIBE => {
            let request_id = r.u32("request_id")?;
            let count = r.u16("count")? as usize;
            let mut topic_ids = Vec::with_capacity(count.min(r.b.remaining() / 4));
            for _ in 0..count {
                topic_ids.push(r.u32("topic_id")?);
            }
            Frame::Unsubscribe(Unsubscribe {
                request_id,
                topic_ids,
            })
        }
        frame_type::PING => Frame::Ping {
            nonce: r.u64("nonce")?,
        },
        frame_type::PUBLISH => {
            let flags = r.u8("flags")?;
            let topic = r.str8("topic")?;
            let payload = r.rest();
            Frame::Publish(Publish {
                flags,
                topic,
                payload,
            })
        }
        frame_type::WELCOME => Frame::Welcome(Welcome {
            version: r.u16("version")?,
            session_id: r.u64("session_id")?,
            epoch: r.u64("epoch")?,
            heartbeat_ms: r.u32("heartbeat_ms")?,
            limits: Limits {
                max_frame: r.u32("max_frame")?,
                max_subscriptions: r.u32("max_subscriptions")?,
                outbox_limit: r.u32("outbox_limit")?,
            },
        }),
        frame_type::SUBACK => {
            let request_id = r.u32("request_id")?;
            let count = r.u16("count")? as usize;
            let mut entries = Vec::with_capacity(count.min(r.b.remaining() / 13));
            for _ in 0..count {
                let v = r.u8("result")?;
                let result = SubResult::from_u8(v).ok_or(DecodeError::InvalidValue {
                    frame: name,
                    field: "result",
                    value: v as u64,
                })?;
                entries.push(SubAckEntry {
                    result,
                    topic_id: r.u32("topic_id")?,
                    seq: r.u64("seq")?,
                });
            }
            Frame::SubAck(SubAck {
                request_id,
                entries,
            })
        }
        frame_type::UPDATE => Frame::Update(Update {
            topic_id: r.u32("topic_id")?,
            seq: r.u64("seq")?,
            timestamp_us: r.u64("timestamp_us")?,
            flags: r.u8("flags")?,
            payload: r.rest(),
        }),
        frame_type::HEARTBEAT => Frame::Heartbeat,
        frame_type::PONG => Frame::Pong {
            nonce: r.u64("nonce")?,
        },
        frame_type::ERROR => Frame::Error(ErrorFrame {
            code: r.u16("code")?,
            message: r.str16("message")?,
        }),
        frame_type::GOAWAY => Frame::GoAway(GoAway {
            code: r.u16("code")?,
            reconnect_after_ms: r.u32("reconnect_after_ms")?,
            message: r.str16("message")?,
        }),
        frame_type::TOPIC => Frame::Topic {
            topic_id: r.u32("topic_id")?,
            name: r.str8("name")?,
        },
        frame_type::AUTH => Frame::Auth {
            token: r.str16("token")?,
        },
        frame_type::AUTH_OK => Frame::AuthOk {
            expires_at_s: r.u64("expires_at_s")?,
            grace_ms: r.u32("grace_ms")?,
        },
        frame_type::MESSAGE => Frame::Message(Message {
            request_id: r.u32("request_id")?,
            routing_key: r.str8("routing_key")?,
            payload: r.rest(),
        }),
        frame_type::POST => {
            let request_id = r.u32("request_id")?;
            let flags = r.u8("flags")?;
            let topic = r.str8("topic")?;
            let idempotency_key = if flags & update_flags::IDEMPOTENCY_KEY != 0 {
                Some(r.str8("idempotency_key")?)
            } else {
                None
            };
            Frame::Post(Post {
                request_id,
                flags: flags & !update_flags::IDEMPOTENCY_KEY,
                topic,
                idempotency_key,
                payload: r.rest(),
            })
        }
        frame_type::PRESENCE_GET => Frame::PresenceGet {
            request_id: r.u32("request_id")?,
            topic: r.str8("topic")?,
        },
        frame_type::REPLY => Frame::Reply {
            session_id: r.u64("session_id")?,
            request_id: r.u32("request_id")?,
            payload: r.rest(),
        },
        frame_type::ACK => Frame::Ack {
            request_id: r.u32("request_id")?,
            code: r.u16("code")?,
            seq: r.u64("seq")?,
        },
        frame_type::RESPONSE => Frame::Response {
            request_id: r.u32("request_id")?,
            payload: r.rest(),
        },
        frame_type::PRESENCE => Frame::Presence {
            request_id: r.u32("request_id")?,
            topic_id: r.u32("topic_id")?,
            members: r.u32("members")?,
        },
        frame_type::MEMBER => Frame::Member {
            topic_id: r.u32("topic_id")?,
            event: r.u8("event")?,
            session_id: r.u64("session_id")?,
            user: r.str8("user")?,
        },
        frame_type::CLIENT_MESSAGE => Frame::ClientMessage(ClientMessage {
            session_id: r.u64("session_id")?,
            request_id: r.u32("request_id")?,
            user: r.str8("user")?,
            routing_key: r.str8("routing_key")?,
            payload: r.rest(),
        }),
        frame_type::SYNCED => Frame::Synced {
            topics: r.u32("topics")?,
            epoch: r.u64("epoch")?,
            feed_seq: r.u64("feed_seq")?,
        },
        other => return Err(DecodeError::UnknownFrameType(other)),
    };
    if r.b.has_remaining() {
        return Err(DecodeError::TrailingBytes {
            frame: name,
            extra: r.b.remaining(),
        });
    }
    Ok(frame)
}

/// Bounds-checked field reader over a frame body.
struct Reader<'a> {
    b: &'a mut Bytes,
    frame: &'static str,
}

impl Reader<'_> {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.b.remaining() < n {
            Err(DecodeError::Truncated {
                frame: self.frame,
                field,
            })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.b.get_u8())
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.b.get_u16())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.b.get_u32())
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.b.get_u64())
    }
    fn string(&mut self, len: usize, field: &'static str) -> Result<String, DecodeError> {
        self.need(len, field)?;
        let raw = self.b.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8 {
            frame: self.frame,
            field,
        })
    }
    fn str8(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u8(field)? as usize;
        self.string(len, field)
    }
    fn str16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        self.string(len, field)
    }
    fn rest(&mut self) -> Bytes {
        self.b.split_to(self.b.remaining())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(seq: u64, payload: &'static [u8]) -> Frame {
        Frame::Update(Update {
            topic_id: 7,
            seq,
            timestamp_us: 1,
            flags: 0,
            payload: Bytes::from_static(payload),
        })
    }

    #[test]
    fn encode_update_matches_frame_encoding() {
        let via_frame = update(3, b"abc").to_bytes().unwrap();
        assert_eq!(encode_update(7, 3, 1, 0, b"abc"), via_frame);
        assert_eq!(via_frame.len(), UPDATE_HEADER_LEN + 3);
    }

    #[test]
    fn frame_split_at_every_byte() {
        let bytes = update(9, b"hello").to_bytes().unwrap();
        for cut in 0..bytes.len() {
            let mut d = Decoder::new(DEFAULT_MAX_FRAME);
            d.feed(&bytes[..cut]);
            assert_eq!(d.next_frame().unwrap(), None, "cut {cut}");
            d.feed(&bytes[cut..]);
            assert_eq!(d.next_frame().unwrap(), Some(update(9, b"hello")));
            assert_eq!(d.next_frame().unwrap(), None);
        }
    }

    #[test]
    fn many_frames_in_one_chunk() {
        let mut all = BytesMut::new();
        for i in 1..=100 {
            update(i, b"x").encode(&mut all).unwrap();
        }
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        d.feed(&all);
        for i in 1..=100 {
            assert_eq!(d.next_frame().unwrap(), Some(update(i, b"x")));
        }
        assert_eq!(d.next_frame().unwrap(), None);
        d.release_if_empty();
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversize_is_refused_before_the_body_arrives() {
        let mut d = Decoder::new(100);
        d.feed(&[0, 0, 0, 101]);
        assert_eq!(
            d.next_frame(),
            Err(DecodeError::FrameTooLarge { len: 101, max: 100 })
        );
        // Sticky: the stream position is lost.
        d.feed(&[0, 0, 0, 1, 0x84]);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn unknown_type_and_empty_frame() {
        let mut d = Decoder::new(100);
        d.feed(&[0, 0, 0, 50, 0x42]);
        assert_eq!(d.next_frame(), Err(DecodeError::UnknownFrameType(0x42)));
        let mut d = Decoder::new(100);
        d.feed(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(DecodeError::EmptyFrame));
    }

    #[test]
    fn truncated_and_trailing() {
        // PING with a 4-byte nonce.
        let mut d = Decoder::new(100);
        d.feed(&[0, 0, 0, 5, 0x04, 1, 2, 3, 4]);
        assert!(matches!(d.next_frame(), Err(DecodeError::Truncated { .. })));
        // HEARTBEAT with a stray byte.
        let mut d = Decoder::new(100);
        d.feed(&[0, 0, 0, 2, 0x84, 0]);
        assert!(matches!(
            d.next_frame(),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn update_view_reads_what_the_decoder_reads() {
        let f = encode_update(7, 99, 1234, update_flags::URGENT, b"payload");
        let mut seen = 0;
        let used = split_frames(&f, DEFAULT_MAX_FRAME, |body| {
            let v = UpdateView::parse(body).expect("an UPDATE");
            let Frame::Update(u) = decode_body(Bytes::copy_from_slice(body)).unwrap() else {
                panic!()
            };
            assert_eq!(
                (
                    v.topic_id(),
                    v.seq(),
                    v.timestamp_us(),
                    v.flags(),
                    v.payload()
                ),
                (u.topic_id, u.seq, u.timestamp_us, u.flags, &u.payload[..])
            );
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((used, seen), (f.len(), 1));
        assert_eq!(
            split_frames(&f[..f.len() - 1], DEFAULT_MAX_FRAME, |_| Ok(())),
            Ok(0)
        );
        assert!(UpdateView::parse(&[frame_type::UPDATE, 1, 2]).is_none());
        assert!(split_frames(&[0, 0, 0, 0], 10, |_| Ok(())).is_err());
    }

    #[test]
    fn huge_count_does_not_allocate_huge() {
        // SUBSCRIBE claiming 65535 entries in a 7-byte body: truncated, and no big Vec.
        let mut d = Decoder::new(100);
        d.feed(&[0, 0, 0, 7, 0x02, 0, 0, 0, 1, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn long_fields_refuse_to_encode() {
        let f = Frame::Publish(Publish {
            flags: 0,
            topic: "a".repeat(256),
            payload: Bytes::new(),
        });
        let mut b = BytesMut::new();
        assert!(matches!(
            f.encode(&mut b),
            Err(EncodeError::FieldTooLong { .. })
        ));
        assert!(b.is_empty());
    }
}
