//! MQTT 3.1.1 at QoS 0, enough to measure a broker: CONNECT, SUBSCRIBE, PUBLISH, PINGREQ out;
//! CONNACK, SUBACK, PUBLISH, PINGRESP in. Packets may be split anywhere or batched.

use super::{Event, ParseError};

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn utf8(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT with a clean session and `keepalive_s`.
pub fn connect(client_id: &str, keepalive_s: u16) -> Vec<u8> {
    let mut b = Vec::new();
    utf8("MQTT", &mut b);
    b.push(4); // protocol level 3.1.1
    b.push(0x02); // clean session
    b.extend_from_slice(&keepalive_s.to_be_bytes());
    utf8(client_id, &mut b);
    packet(0x10, &b)
}

/// SUBSCRIBE to `topic` at QoS 0.
pub fn subscribe(packet_id: u16, topic: &str) -> Vec<u8> {
    let mut b = packet_id.to_be_bytes().to_vec();
    utf8(topic, &mut b);
    b.push(0);
    packet(0x82, &b)
}

/// PUBLISH at QoS 0.
pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(topic.len() + payload.len() + 2);
    utf8(topic, &mut b);
    b.extend_from_slice(payload);
    packet(0x30, &b)
}

/// PINGREQ.
pub fn pingreq() -> Vec<u8> {
    vec![0xc0, 0]
}

/// Incremental parser of broker-to-client packets.
#[derive(Debug, Default)]
pub struct Parser {
    partial: Vec<u8>,
}

impl Parser {
    /// Feeds bytes; calls `on` per packet.
    pub fn feed(&mut self, data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), ParseError> {
        super::feed_buffered(&mut self.partial, data, |b| parse(b, on))
    }
}

fn parse(b: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<usize, ParseError> {
    let mut pos = 0;
    loop {
        let rest = &b[pos..];
        if rest.len() < 2 {
            return Ok(pos);
        }
        // Remaining length: 1-4 bytes of 7 bits.
        let (mut len, mut mult, mut i) = (0usize, 1usize, 1);
        loop {
            let Some(&byte) = rest.get(i) else {
                return Ok(pos);
            };
            len += (byte & 0x7f) as usize * mult;
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
            mult *= 128;
            if i > 4 {
                return Err(ParseError("MQTT remaining length over 4 bytes".into()));
            }
        }
        if rest.len() < i + len {
            return Ok(pos);
        }
        let body = &rest[i..i + len];
        match rest[0] >> 4 {
            2 => on(Event::Welcome {
                epoch: 0,
                heartbeat_ms: 0,
            }),
            9 => on(Event::SubAck {
                topic_id: 0,
                seq: 0,
                ok: body.get(2).is_some_and(|&rc| rc != 0x80),
            }),
            3 => {
                if body.len() < 2 {
                    return Err(ParseError("MQTT PUBLISH too short".into()));
                }
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                // QoS 1/2 would carry a packet id after the topic; we subscribe at QoS 0.
                let qos = (rest[0] >> 1) & 3;
                let start = 2 + tl + if qos > 0 { 2 } else { 0 };
                if body.len() < start {
                    return Err(ParseError("MQTT PUBLISH topic overruns".into()));
                }
                on(Event::Update {
                    topic_id: 0,
                    seq: 0,
                    flags: 0,
                    payload: &body[start..],
                });
            }
            _ => on(Event::Other),
        }
        pos += i + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_batched_publishes() {
        let mut stream = vec![0x20, 2, 0, 0]; // CONNACK
        stream.extend(vec![0x90, 3, 0, 1, 0]); // SUBACK
        for i in 0..5u8 {
            stream.extend(publish("bench/t", &[i; 200])); // 2-byte remaining length
        }
        stream.extend(vec![0xd0, 0]); // PINGRESP
        for cut in 0..stream.len() {
            let mut p = Parser::default();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                p.feed(part, &mut |e| {
                    if let Event::Update { payload, .. } = e {
                        got.push(payload[0]);
                        assert_eq!(payload.len(), 200);
                    }
                })
                .unwrap();
            }
            assert_eq!(got, vec![0, 1, 2, 3, 4], "cut {cut}");
        }
        assert!(Parser::default()
            .feed(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], &mut |_| {})
            .is_err());
    }

    #[test]
    fn packets_encode_as_specified() {
        assert_eq!(pingreq(), vec![0xc0, 0]);
        let c = connect("a", 60);
        assert_eq!(&c[..2], &[0x10, 13]);
        assert_eq!(subscribe(1, "t"), vec![0x82, 6, 0, 1, 0, 1, b't', 0]);
    }
}
