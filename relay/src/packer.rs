//! Origin side, sans-IO: packing encoded UPDATE frames into numbered datagrams, and the
//! retransmit ring that answers NAKs.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use yorker_wire::feed::{
    feed_flags, message_len, put_message, FeedHeader, Kind, FEED_HEADER_LEN, MAX_DATAGRAM,
};

/// Packs messages into DATA datagrams of at most `max_datagram` bytes, numbering them from 1.
/// A message bigger than `max_datagram` travels alone in a datagram of up to [`MAX_DATAGRAM`]
/// (the engine lowers `--max-frame` so that every UPDATE fits one).
#[derive(Debug)]
pub struct Packer {
    channel: u16,
    epoch: u64,
    max_datagram: usize,
    seq: u64,
    buf: BytesMut,
    count: u16,
}

impl Packer {
    /// A packer for one channel of one epoch.
    pub fn new(channel: u16, epoch: u64, max_datagram: usize) -> Self {
        Packer {
            channel,
            epoch,
            max_datagram: max_datagram.min(MAX_DATAGRAM),
            seq: 0,
            buf: BytesMut::new(),
            count: 0,
        }
    }

    /// The number of the last datagram handed out (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Skips one number: a hole no retransmit can fill, which makes every relay resynchronise
    /// from a snapshot (used when updates were lost before they got a datagram).
    pub fn skip(&mut self) {
        self.seq += 1;
    }

    /// Adds one message; returns the datagram it closed, if adding it did not fit.
    pub fn push(&mut self, topic: &str, frame: &[u8], now_us: u64) -> Option<Bytes> {
        let len = message_len(topic, frame);
        let full =
            self.count > 0 && (self.buf.len() + len > self.max_datagram || self.count == u16::MAX);
        let out = if full { self.flush(now_us) } else { None };
        if self.count == 0 {
            self.buf
                .reserve(self.max_datagram.max(FEED_HEADER_LEN + len));
            self.buf.resize(FEED_HEADER_LEN, 0); // the header is written at flush
        }
        put_message(&mut self.buf, topic, frame);
        self.count += 1;
        out
    }

    /// Closes the datagram being filled, if it holds anything.
    pub fn flush(&mut self, now_us: u64) -> Option<Bytes> {
        if self.count == 0 {
            return None;
        }
        self.seq += 1;
        let mut h = BytesMut::with_capacity(FEED_HEADER_LEN);
        self.header(Kind::Data, self.seq, now_us, self.count)
            .encode(&mut h);
        self.buf[..FEED_HEADER_LEN].copy_from_slice(&h);
        self.count = 0;
        Some(self.buf.split().freeze())
    }

    /// A HEARTBEAT carrying the last DATA number.
    pub fn heartbeat(&self, now_us: u64) -> Bytes {
        self.header(Kind::Heartbeat, self.seq, now_us, 0).to_bytes()
    }

    /// The header of a datagram of this channel.
    pub fn header(&self, kind: Kind, seq: u64, now_us: u64, count: u16) -> FeedHeader {
        FeedHeader {
            kind,
            flags: 0,
            channel: self.channel,
            epoch: self.epoch,
            seq,
            send_time_us: now_us,
            count,
        }
    }
}

/// The last few seconds of DATA datagrams, by number, bounded in time and in bytes.
#[derive(Debug)]
pub struct RetransmitRing {
    keep_ms: u64,
    max_bytes: usize,
    bytes: usize,
    /// (seq, sent at ms, datagram), consecutive numbers, oldest first.
    q: VecDeque<(u64, u64, Bytes)>,
}

impl RetransmitRing {
    /// A ring keeping datagrams for `keep_ms`, at most `max_bytes` of them.
    pub fn new(keep_ms: u64, max_bytes: usize) -> Self {
        RetransmitRing {
            keep_ms,
            max_bytes,
            bytes: 0,
            q: VecDeque::new(),
        }
    }

    /// Records datagram `seq` and forgets what is too old. Numbers skipped since the last one
    /// are held as holes (never served).
    pub fn push(&mut self, seq: u64, now_ms: u64, d: Bytes) {
        match self.q.back() {
            Some(&(last, _, _)) if seq <= last || seq - last > 1024 => self.clear(),
            Some(&(last, _, _)) => {
                for hole in last + 1..seq {
                    self.q.push_back((hole, now_ms, Bytes::new()));
                }
            }
            None => {}
        }
        self.bytes += d.len();
        self.q.push_back((seq, now_ms, d));
        self.expire(now_ms);
    }

    /// Forgets datagrams older than the window or beyond the byte cap.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(_, at, ref d)) = self.q.front() {
            if now_ms.saturating_sub(at) <= self.keep_ms && self.bytes <= self.max_bytes {
                break;
            }
            self.bytes -= d.len();
            self.q.pop_front();
        }
    }

    fn clear(&mut self) {
        self.q.clear();
        self.bytes = 0;
    }

    /// Datagram `seq` flagged RETRANSMIT, if still held.
    pub fn get(&self, seq: u64) -> Option<Bytes> {
        let &(first, _, _) = self.q.front()?;
        let (_, _, d) = self.q.get(seq.checked_sub(first)? as usize)?;
        if d.is_empty() {
            return None;
        }
        let mut b = BytesMut::from(&d[..]);
        b[4] |= feed_flags::RETRANSMIT; // the flags byte of the header
        Some(b.freeze())
    }

    /// The oldest number held.
    pub fn oldest(&self) -> Option<u64> {
        self.q.front().map(|&(s, _, _)| s)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yorker_wire::encode_update;
    use yorker_wire::feed::messages;

    #[test]
    fn packs_until_full_then_numbers_datagrams() {
        let mut p = Packer::new(1, 9, 300);
        let f = encode_update(1, 1, 0, 0, &[7; 64]); // 90 bytes, 93 as a message with "m/1"
        assert!(p.push("m/1", &f, 5).is_none());
        assert!(p.push("m/1", &f, 5).is_none());
        let d = p
            .push("m/1", &f, 5)
            .expect("the third does not fit 300 bytes");
        let h = FeedHeader::decode(&d).unwrap();
        assert_eq!(
            (h.kind, h.seq, h.count, h.epoch, h.channel),
            (Kind::Data, 1, 2, 9, 1)
        );
        assert_eq!(messages(&d, &h).unwrap().len(), 2);
        let d2 = p.flush(6).unwrap();
        let h2 = FeedHeader::decode(&d2).unwrap();
        assert_eq!((h2.seq, h2.count), (2, 1));
        assert!(p.flush(7).is_none());
        let hb = FeedHeader::decode(&p.heartbeat(8)).unwrap();
        assert_eq!((hb.kind, hb.seq), (Kind::Heartbeat, 2));
        // An oversized message still goes out, alone.
        let big = encode_update(1, 2, 0, 0, &[0; 1000]);
        p.push("m/1", &big, 9);
        let d3 = p.flush(9).unwrap();
        assert!(d3.len() > 1000);
    }

    #[test]
    fn ring_bounds_and_lookup() {
        let mut r = RetransmitRing::new(1000, 250);
        let d = |n: u8| Bytes::from(vec![n; 100]);
        r.push(1, 0, d(1));
        r.push(2, 10, d(2));
        assert_eq!(r.get(1).unwrap()[5], 1);
        assert_eq!(
            r.get(2).unwrap()[4] & feed_flags::RETRANSMIT,
            feed_flags::RETRANSMIT
        );
        r.push(3, 20, d(3)); // 300 bytes > 250: the oldest goes
        assert_eq!(r.oldest(), Some(2));
        assert!(r.get(1).is_none() && r.get(4).is_none() && r.get(0).is_none());
        r.push(4, 1015, d(4)); // 2 was sent at 10: older than 1000 ms
        assert_eq!(r.oldest(), Some(3));
        assert_eq!(r.bytes(), 200);
        r.push(6, 1016, d(6)); // 5 was skipped: a hole
        assert!(r.get(5).is_none());
        assert_eq!(r.get(6).unwrap()[5], 6);
    }
}
