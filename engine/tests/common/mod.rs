//! A blocking test client over std TcpStream and the wire crate, and polling helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use yorker_engine::{Server, ServerConfig};
use yorker_wire::*;

pub const KEY: &str = "test-key";
pub const RELAY_KEY: &str = "test-relay-key";

pub fn config(cores: usize) -> ServerConfig {
    let mut c = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores,
        ..ServerConfig::default()
    };
    c.core.publisher_key = Some(KEY.into());
    c.core.relay_key = Some(RELAY_KEY.into());
    c.core.max_connections = 2000;
    c.recv_buffers = 256;
    c.sq_entries = 256;
    c
}

pub fn start(cfg: ServerConfig) -> Server {
    Server::start(cfg).expect("server starts")
}

/// Waits for `cond`, polling: the engine's counters are published asynchronously by its
/// threads, so there is no event to block on from the outside. Bounded by `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub struct Client {
    pub stream: TcpStream,
    dec: Decoder,
    pub welcome: Option<Welcome>,
    /// The server closed the connection (EOF or an error), as seen by `next`.
    pub eof: bool,
    next_req: u32,
}

impl Client {
    pub fn raw(addr: SocketAddr) -> Client {
        Client::try_raw(addr).expect("connect")
    }

    pub fn try_raw(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            dec: Decoder::new(MAX_MAX_FRAME),
            welcome: None,
            eof: false,
            next_req: 1,
        })
    }

    /// A client whose receive buffer is fixed at a few KB (autotuning off), so a reader that
    /// stops reading stalls the server's sends quickly.
    pub fn connect_small_rcvbuf(addr: SocketAddr, role: Role) -> Client {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&addr.into()).expect("connect");
        let stream: TcpStream = s.into();
        stream.set_nodelay(true).unwrap();
        Client::handshake(
            Client {
                stream,
                dec: Decoder::new(MAX_MAX_FRAME),
                welcome: None,
                eof: false,
                next_req: 1,
            },
            role,
        )
    }

    pub fn connect(addr: SocketAddr, role: Role) -> Client {
        Client::handshake(Client::raw(addr), role)
    }

    fn handshake(mut c: Client, role: Role) -> Client {
        if let Err(other) = c.hello(role, Duration::from_secs(5)) {
            panic!("expected WELCOME, got {other:?}");
        }
        c
    }

    /// HELLO as `role` (publishers present KEY), then WELCOME within `timeout`; otherwise
    /// what came instead (None: nothing, or the connection ended).
    pub fn hello(&mut self, role: Role, timeout: Duration) -> Result<(), Option<Frame>> {
        let token = match role {
            Role::Publisher => KEY.into(),
            Role::Relay => RELAY_KEY.into(),
            _ => String::new(),
        };
        self.hello_with(1, role, token, timeout)
    }

    /// HELLO with a protocol version and token of the caller's choosing, then WELCOME.
    pub fn hello_with(
        &mut self,
        version: u16,
        role: Role,
        token: String,
        timeout: Duration,
    ) -> Result<(), Option<Frame>> {
        self.send(&Frame::Hello(Hello {
            version,
            role,
            client_name: "test".into(),
            token,
        }));
        match self.next(timeout) {
            Some(Frame::Welcome(w)) => {
                self.welcome = Some(w);
                Ok(())
            }
            other => Err(other),
        }
    }

    pub fn send(&mut self, f: &Frame) {
        self.stream
            .write_all(&f.to_bytes().unwrap())
            .expect("write");
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.stream.write_all(b).expect("write");
    }

    /// Next frame within `timeout`; None on timeout or EOF.
    pub fn next(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.dec.next_frame().expect("server frames decode") {
                return Some(f);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut buf = [0u8; 65536];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return None;
                }
                Ok(n) => self.dec.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(_) => {
                    self.eof = true;
                    return None;
                }
            }
        }
    }

    /// True once the server closed the connection (EOF or reset) within `timeout`, after any
    /// frames still in flight.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut buf = [0u8; 65536];
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    pub fn subscribe_with(&mut self, entries: Vec<SubscribeEntry>) -> SubAck {
        let request_id = self.next_req;
        self.next_req += 1;
        self.send(&Frame::Subscribe(Subscribe {
            request_id,
            entries,
        }));
        match self.next(Duration::from_secs(5)) {
            Some(Frame::SubAck(a)) => {
                assert_eq!(a.request_id, request_id);
                a
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn subscribe(&mut self, topic: &str, conflate: bool) -> SubAckEntry {
        self.subscribe_with(vec![SubscribeEntry {
            topic: topic.into(),
            resume: None,
            conflate,
            presence: false,
        }])
        .entries[0]
    }

    pub fn publish(&mut self, topic: &str, flags: u8, payload: &[u8]) {
        self.send(&Frame::Publish(Publish {
            flags,
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
        }));
    }

    pub fn next_update(&mut self, timeout: Duration) -> Option<Update> {
        loop {
            match self.next(timeout)? {
                Frame::Update(u) => return Some(u),
                Frame::Heartbeat | Frame::Pong { .. } => continue,
                other => panic!("expected UPDATE, got {other:?}"),
            }
        }
    }

    pub fn expect_error(&mut self, code: ErrorCode) {
        loop {
            match self.next(Duration::from_secs(10)) {
                Some(Frame::Error(e)) => {
                    assert_eq!(e.code, code as u16, "{e:?}");
                    return;
                }
                Some(Frame::Heartbeat) | Some(Frame::Update(_)) => continue,
                other => panic!("expected ERROR {code}, got {other:?}"),
            }
        }
    }
}

/// HELLO version 2 with `token`: WELCOME, then AUTH_OK (the token was verified).
pub fn connect_with_token(addr: SocketAddr, role: Role, token: String) -> Client {
    let mut c = Client::raw(addr);
    c.hello_with(2, role, token, Duration::from_secs(10))
        .expect("WELCOME");
    assert_eq!(c.welcome.as_ref().unwrap().version, 2);
    match c.next(Duration::from_secs(10)) {
        Some(Frame::AuthOk { .. }) => c,
        other => panic!("expected AUTH_OK, got {other:?}"),
    }
}

/// HELLO with `token` must be refused with ERROR auth_failed; returns its message.
pub fn refused(addr: SocketAddr, version: u16, role: Role, token: String) -> String {
    let mut c = Client::raw(addr);
    match c.hello_with(version, role, token, Duration::from_secs(10)) {
        Err(Some(Frame::Error(e))) => {
            assert_eq!(e.code, ErrorCode::AuthFailed as u16, "{e:?}");
            e.message
        }
        other => panic!("expected ERROR auth_failed, got {other:?}"),
    }
}
