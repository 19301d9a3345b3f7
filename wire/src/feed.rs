//! The relay feed: UDP datagrams from an origin engine to its relays (docs/RELAYS.md).
//!
//! Every datagram starts with the same 34-byte header. DATA datagrams then carry `count`
//! messages, each `topic (str8) | UPDATE frame` where the frame is the one the origin encoded
//! once for its own subscribers, length prefix included. HEARTBEAT datagrams carry no message
//! and repeat the last DATA sequence number, so a relay sees loss at the tail of a burst. NAK
//! (relay -> origin) asks for `count` datagrams from `seq`; UNAVAILABLE (origin -> relay)
//! answers a NAK the retransmit ring can no longer serve.
//!
//! A NAK carries an HMAC-SHA256 tag (truncated to 16 bytes) over its header, keyed with the
//! relay key, and the relay's clock in `send_time`: an origin answers only NAKs from holders of
//! the key, sent recently (see [`sign_nak`], [`verify_nak`]).
//!
//! Sans-IO like the rest of the crate: bytes in, values out, never a panic on bad input.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::codec::decode_body;
use crate::frame::{frame_type, Update, LENGTH_PREFIX};

/// First two bytes of every datagram: "YK".
pub const FEED_MAGIC: u16 = 0x594b;
/// Version of the datagram format.
pub const FEED_VERSION: u8 = 1;
/// Bytes of the header.
pub const FEED_HEADER_LEN: usize = 34;
/// Smallest datagram size an origin may be configured with: a header and one small message.
pub const MIN_DATAGRAM: usize = 256;
/// Largest UDP payload a datagram may have.
pub const MAX_DATAGRAM: usize = 65_507;

/// What a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Origin -> group: `count` messages; `seq` is this datagram's number.
    Data = 1,
    /// Origin -> group, while idle: `seq` is the number of the last DATA datagram sent.
    Heartbeat = 2,
    /// Relay -> origin (unicast): please resend DATA `seq .. seq + count`.
    Nak = 3,
    /// Origin -> relay (unicast): DATA `seq .. seq + count` left the retransmit ring.
    Unavailable = 4,
}

impl Kind {
    /// The kind for a wire value.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Data,
            2 => Kind::Heartbeat,
            3 => Kind::Nak,
            4 => Kind::Unavailable,
            _ => return None,
        })
    }
}

/// Header flags (one byte).
pub mod feed_flags {
    /// A DATA datagram sent again in answer to a NAK.
    pub const RETRANSMIT: u8 = 0x01;
}

/// The header every datagram starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedHeader {
    /// What the datagram is.
    pub kind: Kind,
    /// [`feed_flags`].
    pub flags: u8,
    /// Channel number: one origin stream; a relay ignores other channels on its group.
    pub channel: u16,
    /// The origin's server epoch; every topic sequence number inside belongs to it.
    pub epoch: u64,
    /// Packet sequence number (DATA, from 1 per epoch), the last one sent (HEARTBEAT), or the
    /// first one of a range (NAK, UNAVAILABLE).
    pub seq: u64,
    /// Origin's clock when sent, µs since the Unix epoch (0 in NAK).
    pub send_time_us: u64,
    /// Messages (DATA) or datagrams in the range (NAK, UNAVAILABLE); 0 in HEARTBEAT.
    pub count: u16,
}

/// Why a datagram was refused. Datagrams come from the network: every one of these is counted
/// and dropped, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// Shorter than the header.
    #[error("datagram of {0} bytes is shorter than the {FEED_HEADER_LEN}-byte header")]
    Short(usize),
    /// Not a yorker feed datagram.
    #[error("bad magic {0:#06x}")]
    Magic(u16),
    /// A version this build does not speak.
    #[error("unsupported feed version {0}")]
    Version(u8),
    /// An undefined kind byte.
    #[error("unknown datagram kind {0}")]
    Kind(u8),
    /// A message does not fit in the datagram, or bytes are left over.
    #[error("malformed message {index}: {why}")]
    Message {
        /// Which message (from 0).
        index: u16,
        /// What is wrong.
        why: &'static str,
    },
}

impl FeedHeader {
    /// Appends the header to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u16(FEED_MAGIC);
        dst.put_u8(FEED_VERSION);
        dst.put_u8(self.kind as u8);
        dst.put_u8(self.flags);
        dst.put_u8(0);
        dst.put_u16(self.channel);
        dst.put_u64(self.epoch);
        dst.put_u64(self.seq);
        dst.put_u64(self.send_time_us);
        dst.put_u16(self.count);
    }

    /// The header alone, as a datagram (HEARTBEAT, NAK, UNAVAILABLE).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(FEED_HEADER_LEN);
        self.encode(&mut b);
        b.freeze()
    }

    /// Reads the header at the front of `d`.
    pub fn decode(d: &[u8]) -> Result<FeedHeader, FeedError> {
        if d.len() < FEED_HEADER_LEN {
            return Err(FeedError::Short(d.len()));
        }
        let mut b = &d[..FEED_HEADER_LEN];
        let magic = b.get_u16();
        if magic != FEED_MAGIC {
            return Err(FeedError::Magic(magic));
        }
        let version = b.get_u8();
        if version != FEED_VERSION {
            return Err(FeedError::Version(version));
        }
        let k = b.get_u8();
        let kind = Kind::from_u8(k).ok_or(FeedError::Kind(k))?;
        let flags = b.get_u8();
        let _reserved = b.get_u8();
        Ok(FeedHeader {
            kind,
            flags,
            channel: b.get_u16(),
            epoch: b.get_u64(),
            seq: b.get_u64(),
            send_time_us: b.get_u64(),
            count: b.get_u16(),
        })
    }
}

/// Bytes of the authentication tag after a NAK's header.
pub const NAK_TAG_LEN: usize = 16;

fn nak_mac(key: &[u8], header: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(header);
    mac
}

/// A NAK datagram: the header, then HMAC-SHA256(key, header) truncated to 16 bytes.
pub fn sign_nak(header: &FeedHeader, key: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(FEED_HEADER_LEN + NAK_TAG_LEN);
    header.encode(&mut b);
    let tag = nak_mac(key, &b).finalize().into_bytes();
    b.put_slice(&tag[..NAK_TAG_LEN]);
    b.freeze()
}

/// Why a NAK was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NakError {
    /// Not a NAK datagram at all.
    #[error("not a NAK: {0}")]
    Malformed(#[from] FeedError),
    /// The datagram is another kind.
    #[error("a {0:?} datagram where a NAK was expected")]
    NotNak(Kind),
    /// No tag, or a tag that does not match the key.
    #[error("NAK tag missing or wrong")]
    BadTag,
    /// Its send time is too far from ours (a replayed or forged NAK).
    #[error("NAK sent {0} ms away from our clock")]
    Stale(u64),
}

/// Checks a NAK: a valid header of kind NAK, a tag made with `key` (when the origin has one),
/// and a send time within `window_us` of `now_us`.
pub fn verify_nak(
    d: &[u8],
    key: Option<&[u8]>,
    now_us: u64,
    window_us: u64,
) -> Result<FeedHeader, NakError> {
    let h = FeedHeader::decode(d)?;
    if h.kind != Kind::Nak {
        return Err(NakError::NotNak(h.kind));
    }
    let Some(key) = key else {
        return Ok(h);
    };
    if d.len() != FEED_HEADER_LEN + NAK_TAG_LEN {
        return Err(NakError::BadTag);
    }
    nak_mac(key, &d[..FEED_HEADER_LEN])
        .verify_truncated_left(&d[FEED_HEADER_LEN..])
        .map_err(|_| NakError::BadTag)?;
    let skew = now_us.abs_diff(h.send_time_us);
    if skew > window_us {
        return Err(NakError::Stale(skew / 1000));
    }
    Ok(h)
}

/// Bytes one message takes in a DATA datagram.
pub fn message_len(topic: &str, frame: &[u8]) -> usize {
    1 + topic.len() + frame.len()
}

/// Appends one message: the topic name, then the encoded UPDATE frame as is. The caller
/// guarantees `topic` is a valid topic name (at most 255 bytes) and `frame` an UPDATE frame.
pub fn put_message(dst: &mut BytesMut, topic: &str, frame: &[u8]) {
    debug_assert!(topic.len() <= u8::MAX as usize);
    dst.put_u8(topic.len() as u8);
    dst.put_slice(topic.as_bytes());
    dst.put_slice(frame);
}

/// One message of a DATA datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedMessage {
    /// The topic's name (the origin's topic ids mean nothing to a relay).
    pub topic: String,
    /// The update, exactly as the origin encoded it.
    pub update: Update,
}

/// Splits a whole DATA datagram (header included) into its messages. Either every message is
/// well formed and exactly fills the datagram, or nothing is returned.
pub fn messages(datagram: &Bytes, header: &FeedHeader) -> Result<Vec<FeedMessage>, FeedError> {
    let mut b = datagram.slice(FEED_HEADER_LEN.min(datagram.len())..);
    let mut out = Vec::with_capacity((header.count as usize).min(b.len() / 32 + 1));
    for index in 0..header.count {
        let bad = |why| FeedError::Message { index, why };
        if b.remaining() < 1 {
            return Err(bad("truncated topic"));
        }
        let tl = b.get_u8() as usize;
        if b.remaining() < tl {
            return Err(bad("truncated topic"));
        }
        let topic = std::str::from_utf8(&b[..tl])
            .map_err(|_| bad("topic is not UTF-8"))?
            .to_string();
        b.advance(tl);
        if b.remaining() < LENGTH_PREFIX + 1 {
            return Err(bad("truncated frame"));
        }
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len == 0 || b.remaining() - LENGTH_PREFIX < len {
            return Err(bad("frame longer than the datagram"));
        }
        if b[LENGTH_PREFIX] != frame_type::UPDATE {
            return Err(bad("not an UPDATE frame"));
        }
        b.advance(LENGTH_PREFIX);
        let body = b.split_to(len);
        let update = match decode_body(body) {
            Ok(crate::Frame::Update(u)) => u,
            _ => return Err(bad("malformed UPDATE")),
        };
        out.push(FeedMessage { topic, update });
    }
    if b.has_remaining() {
        return Err(FeedError::Message {
            index: header.count,
            why: "bytes after the last message",
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_update;

    fn header(kind: Kind, count: u16) -> FeedHeader {
        FeedHeader {
            kind,
            flags: 0,
            channel: 7,
            epoch: 0x0102030405060708,
            seq: 42,
            send_time_us: 99,
            count,
        }
    }

    #[test]
    fn header_round_trip() {
        for kind in [Kind::Data, Kind::Heartbeat, Kind::Nak, Kind::Unavailable] {
            let h = header(kind, 3);
            let b = h.to_bytes();
            assert_eq!(b.len(), FEED_HEADER_LEN);
            assert_eq!(FeedHeader::decode(&b), Ok(h));
        }
    }

    #[test]
    fn data_round_trip() {
        let mut d = BytesMut::new();
        header(Kind::Data, 2).encode(&mut d);
        let f1 = encode_update(3, 10, 5, 0, b"abc");
        let f2 = encode_update(9, 11, 6, 1, b"");
        put_message(&mut d, "match/1", &f1);
        put_message(&mut d, "m", &f2);
        let d = d.freeze();
        let h = FeedHeader::decode(&d).unwrap();
        let m = messages(&d, &h).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].topic, "match/1");
        assert_eq!(
            (m[0].update.seq, &m[0].update.payload[..]),
            (10, &b"abc"[..])
        );
        assert_eq!((m[1].update.topic_id, m[1].update.flags), (9, 1));
        assert_eq!(
            message_len("m", &f2) + message_len("match/1", &f1) + 34,
            d.len()
        );
    }

    #[test]
    fn naks_are_signed_and_checked() {
        let mut h = header(Kind::Nak, 3);
        h.send_time_us = 1_000_000;
        let d = sign_nak(&h, b"k");
        assert_eq!(d.len(), FEED_HEADER_LEN + NAK_TAG_LEN);
        assert_eq!(verify_nak(&d, Some(b"k"), 1_500_000, 1_000_000), Ok(h));
        assert_eq!(
            verify_nak(&d, Some(b"other"), 1_500_000, 1_000_000),
            Err(NakError::BadTag)
        );
        assert_eq!(
            verify_nak(&h.to_bytes(), Some(b"k"), 1_500_000, 1_000_000),
            Err(NakError::BadTag),
            "an untagged NAK is refused when the origin has a key"
        );
        assert_eq!(
            verify_nak(&d, Some(b"k"), 9_000_000, 1_000_000),
            Err(NakError::Stale(8_000))
        );
        let mut forged = d.to_vec();
        forged[23] ^= 1; // another seq under the same tag
        assert_eq!(
            verify_nak(&forged, Some(b"k"), 1_500_000, 1_000_000),
            Err(NakError::BadTag)
        );
        assert!(verify_nak(&h.to_bytes(), None, 0, 0).is_ok());
        assert!(matches!(
            verify_nak(&header(Kind::Data, 0).to_bytes(), None, 0, 0),
            Err(NakError::NotNak(Kind::Data))
        ));
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        assert_eq!(FeedHeader::decode(&[0; 10]), Err(FeedError::Short(10)));
        let mut h = header(Kind::Data, 1).to_bytes().to_vec();
        h[0] = 0;
        assert!(matches!(FeedHeader::decode(&h), Err(FeedError::Magic(_))));
        let mut h = header(Kind::Data, 1).to_bytes().to_vec();
        h[3] = 77;
        assert_eq!(FeedHeader::decode(&h), Err(FeedError::Kind(77)));
        // Count says 2, one message present; then one byte too many.
        let mut d = BytesMut::new();
        header(Kind::Data, 2).encode(&mut d);
        put_message(&mut d, "t", &encode_update(1, 1, 1, 0, b"x"));
        let d = d.freeze();
        assert!(messages(&d, &FeedHeader::decode(&d).unwrap()).is_err());
        let mut e = d.to_vec();
        e.push(0);
        let e = Bytes::from(e);
        let mut h1 = FeedHeader::decode(&e).unwrap();
        h1.count = 1;
        assert!(messages(&e, &h1).is_err());
        // Every truncation of a valid datagram is refused, never a panic.
        for cut in 0..d.len() {
            let t = d.slice(..cut);
            if let Ok(h) = FeedHeader::decode(&t) {
                assert!(messages(&t, &h).is_err());
            }
        }
    }
}
