//! A publisher: one blocking connection with role publisher, a match feed or raw benchmark
//! payloads. Publishing is a trickle next to fan-out, so plain blocking I/O is enough.

use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use yorker_wire::{update_flags, Decoder, Frame, Hello, Publish, Role, DEFAULT_MAX_FRAME};

use crate::proto::{mqtt, nats, redis, Proto};

/// A connected publisher.
#[derive(Debug)]
pub struct Publisher {
    out: BufWriter<TcpStream>,
    buf: BytesMut,
    proto: Proto,
    /// Publishes by XADD to the Redis stream named like the topic (an engine's --ingest).
    xadd: bool,
    /// Publishing into a JetStream stream: the subject is the topic with `.` for `/`.
    jetstream: bool,
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Socket error.
    #[error("publisher connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused the session.
    #[error("server refused the publisher: {0}")]
    Refused(String),
}

impl Publisher {
    /// Connects and completes the handshake with `key`.
    pub fn connect(addr: SocketAddr, key: &str) -> Result<Publisher, PublishError> {
        Publisher::connect_proto(addr, key, Proto::Yorker)
    }

    /// Connects a publisher of any protocol (the key only matters to yorker).
    pub fn connect_proto(
        addr: SocketAddr,
        key: &str,
        proto: Proto,
    ) -> Result<Publisher, PublishError> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        // Over WebSocket or TLS only the subscribers: the publisher uses the same port over TCP.
        let proto = proto.base();
        if proto != Proto::Yorker {
            return Publisher::connect_peer(s, proto);
        }
        let mut hello = BytesMut::new();
        Frame::Hello(Hello {
            version: 1,
            role: Role::Publisher,
            client_name: "yorker-sim publisher".into(),
            token: key.into(),
        })
        .encode(&mut hello)
        .map_err(|e| PublishError::Refused(e.to_string()))?;
        (&s).write_all(&hello)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut dec = Decoder::new(DEFAULT_MAX_FRAME);
        let mut b = [0u8; 4096];
        loop {
            match dec
                .next_frame()
                .map_err(|e| PublishError::Refused(e.to_string()))?
            {
                Some(Frame::Welcome(_)) => break,
                Some(Frame::Error(e)) => return Err(PublishError::Refused(e.message)),
                Some(_) => continue,
                None => {
                    let n = (&s).read(&mut b)?;
                    if n == 0 {
                        return Err(PublishError::Refused("closed during handshake".into()));
                    }
                    dec.feed(&b[..n]);
                }
            }
        }
        // The server never sends a publisher anything it must read (no subscriptions), but a
        // reader thread keeps its socket drained of HEARTBEATs and notices an ERROR.
        let reader = s.try_clone()?;
        std::thread::spawn(move || {
            let mut r = reader;
            let _ = r.set_read_timeout(None);
            let mut b = [0u8; 4096];
            while matches!(r.read(&mut b), Ok(n) if n > 0) {}
        });
        Ok(Publisher {
            out: BufWriter::with_capacity(64 * 1024, s),
            buf: BytesMut::new(),
            proto,
            xadd: false,
            jetstream: false,
        })
    }

    /// A publisher that appends to Redis streams (`XADD <topic> * payload <bytes>`) at `addr`,
    /// for an engine that ingests them (`yorker serve --ingest redis-stream://...`).
    pub fn connect_stream(addr: SocketAddr) -> Result<Publisher, PublishError> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut p = Publisher::connect_peer(s, Proto::Redis)?;
        p.xadd = true;
        Ok(p)
    }

    /// A publisher into JetStream at `addr` (a NATS server): a core NATS PUB to subject
    /// `<topic with . for />`, which the stream collecting that subject stores, for an engine
    /// that ingests it (`yorker serve --ingest nats-jetstream://...`). Fire and forget, like a
    /// feed that does not wait for acknowledgements.
    pub fn connect_jetstream(addr: SocketAddr) -> Result<Publisher, PublishError> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut p = Publisher::connect_peer(s, Proto::Nats)?;
        p.jetstream = true;
        Ok(p)
    }

    fn connect_peer(s: TcpStream, proto: Proto) -> Result<Publisher, PublishError> {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut b = [0u8; 4096];
        match proto {
            Proto::Mqtt => {
                (&s).write_all(&mqtt::connect("yorker-sim-publisher", 600))?;
                let n = (&s).read(&mut b)?;
                if n < 4 || b[0] != 0x20 || b[3] != 0 {
                    return Err(PublishError::Refused("MQTT CONNACK refused".into()));
                }
            }
            Proto::Nats => {
                // INFO first, then CONNECT.
                let n = (&s).read(&mut b)?;
                if !b[..n].starts_with(b"INFO") {
                    return Err(PublishError::Refused("no NATS INFO".into()));
                }
                (&s).write_all(&nats::connect())?;
            }
            _ => {}
        }
        // Keep the socket drained (NATS PINGs need PONGs; MQTT/Redis send nothing).
        let reader = s.try_clone()?;
        let mut writer = s.try_clone()?;
        std::thread::spawn(move || {
            let mut r = reader;
            let _ = r.set_read_timeout(None);
            let mut b = [0u8; 4096];
            while let Ok(n) = r.read(&mut b) {
                if n == 0 {
                    break;
                }
                if proto == Proto::Nats && b[..n].windows(6).any(|w| w == b"PING\r\n") {
                    let _ = writer.write_all(nats::PONG);
                }
            }
        });
        Ok(Publisher {
            out: BufWriter::with_capacity(64 * 1024, s),
            buf: BytesMut::new(),
            proto,
            xadd: false,
            jetstream: false,
        })
    }

    /// Queues one PUBLISH (call [`Publisher::flush`] to send).
    pub fn publish(
        &mut self,
        topic: &str,
        urgent: bool,
        broadcast: bool,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        self.buf.clear();
        if self.xadd {
            let cmd = redis::command(&[b"XADD", topic.as_bytes(), b"*", b"payload", payload]);
            return Ok(self.out.write_all(&cmd)?);
        }
        if self.jetstream {
            let subject = topic.replace('/', ".");
            return Ok(self.out.write_all(&nats::publish(&subject, payload))?);
        }
        // Publishers speak the protocol inside the transport (connect_proto keeps only that).
        match self.proto.base() {
            Proto::Mqtt => return Ok(self.out.write_all(&mqtt::publish(topic, payload))?),
            Proto::Nats => return Ok(self.out.write_all(&nats::publish(topic, payload))?),
            Proto::Redis => return Ok(self.out.write_all(&redis::publish(topic, payload))?),
            _ => {}
        }
        let mut flags = 0;
        if urgent {
            flags |= update_flags::URGENT;
        }
        if broadcast {
            flags |= update_flags::BROADCAST;
        }
        Frame::Publish(Publish {
            flags,
            topic: topic.into(),
            payload: bytes::Bytes::copy_from_slice(payload),
        })
        .encode(&mut self.buf)
        .map_err(|e| PublishError::Refused(e.to_string()))?;
        self.out.write_all(&self.buf)?;
        Ok(())
    }

    /// Sends what is queued.
    pub fn flush(&mut self) -> Result<(), PublishError> {
        self.out.flush()?;
        Ok(())
    }
}

/// A benchmark payload of `size` bytes (at least 16): publish time, update index, padding.
pub fn bench_payload(size: usize, index: u64, now_us: u64) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(size.max(16));
    b.put_u64(now_us);
    b.put_u64(index);
    b.resize(size.max(16), 0x5a);
    b.to_vec()
}
