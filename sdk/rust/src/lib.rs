//! # yorker-client
//!
//! The client SDK for game clients: [`Client`] connects to a yorker engine, subscribes with
//! automatic snapshot and resume, reconnects with full-jitter backoff that honours the
//! server's GOAWAY hints, notices a silent server (a stalled proxy) and hands the game plain
//! [`Event`]s. It is the protocol's one sans-IO session (`yorker_wire::client::ClientSession`,
//! docs/CLIENTS.md) driven by blocking `std::net` sockets, so it runs wherever std does
//! (Android and iOS included: no io_uring, no async runtime).
//!
//! ```no_run
//! use std::time::Duration;
//! use yorker_client::{Client, Event};
//!
//! let mut client = Client::connect("127.0.0.1:7000", "");
//! client.subscribe("match/42");
//! loop {
//!     // Once per game frame (or block for up to the timeout on a network thread).
//!     while let Some(ev) = client.poll(Duration::from_millis(16)) {
//!         match ev {
//!             Event::Update { topic, payload, .. } => println!("{topic}: {} bytes", payload.len()),
//!             Event::Reset { topic, .. } => println!("{topic}: state replaced"),
//!             Event::Disconnected { reason, retry_in_ms } => println!("{reason:?}, retry in {retry_in_ms:?}"),
//!             _ => {}
//!         }
//!     }
//! }
//! ```
//!
//! Threading: a [`Client`] is `Send`, not shared; drive it from one thread (the game loop or a
//! network thread of its own). [`Client::poll`] never blocks longer than its timeout, except
//! for opening a connection (at most [`Config::connect_timeout`]).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use yorker_wire::client::{ClientConfig, ClientEvent, ClientSession};
use yorker_wire::Role;

pub use yorker_wire::client::Disconnect;
pub use yorker_wire::SubResult;

/// How a [`Client`] connects.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the engine (or of a relay); `yorker://` in front is accepted.
    pub addr: String,
    /// A signed token (JWT) from the game's auth service, or empty for an anonymous session.
    pub token: String,
    /// `client_name` in HELLO (shows in server logs).
    pub name: String,
    /// First reconnect delay ceiling, ms (doubles per failed attempt; full jitter below it).
    pub backoff_base_ms: u64,
    /// Largest reconnect delay, ms.
    pub backoff_max_ms: u64,
    /// Opening a connection gives up after this long.
    pub connect_timeout: Duration,
    /// Seed of the reconnect jitter; `None`: random (every client must differ, or a server
    /// restart brings all of them back in the same millisecond).
    pub seed: Option<u64>,
}

impl Config {
    /// Defaults for `addr` and `token`.
    pub fn new(addr: &str, token: &str) -> Config {
        Config {
            addr: addr.trim_start_matches("yorker://").to_string(),
            token: token.to_string(),
            name: "yorker-client-rust".into(),
            backoff_base_ms: 250,
            backoff_max_ms: 30_000,
            connect_timeout: Duration::from_secs(5),
            seed: None,
        }
    }
}

/// What happened, for the game.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The session is open (also after every reconnect).
    Connected {
        /// The server's session id (quote it in support requests).
        session_id: u64,
        /// The server epoch.
        epoch: u64,
    },
    /// A subscription was answered: `ok`, `resumed` (only missed updates follow), `reset`, or
    /// a refusal (`forbidden`, `invalid_topic`, `limit_reached`).
    Subscribed {
        /// The topic.
        topic: String,
        /// The answer.
        result: SubResult,
    },
    /// The topic's latest value (`snapshot`), a replayed or a live update, in order.
    Update {
        /// The topic.
        topic: String,
        /// Its sequence number within the epoch.
        seq: u64,
        /// The publisher's bytes.
        payload: Bytes,
        /// This is the value the topic had when the subscription started.
        snapshot: bool,
        /// Updates conflated away just before this one (0 without conflation).
        skipped: u64,
    },
    /// Everything held for the topic is replaced by this value (a resume was impossible or
    /// the server restarted).
    Reset {
        /// The topic.
        topic: String,
        /// Its sequence number.
        seq: u64,
        /// The new value.
        payload: Bytes,
    },
    /// The connection ended; `retry_in_ms`: the client reconnects by itself after this long
    /// (`None`: it will not: a refused token, or [`Client::close`]).
    Disconnected {
        /// Why.
        reason: Disconnect,
        /// When the next attempt happens.
        retry_in_ms: Option<u64>,
    },
}

/// A connection to a yorker engine that reconnects by itself. See the crate documentation.
#[derive(Debug)]
pub struct Client {
    cfg: Config,
    session: ClientSession,
    stream: Option<TcpStream>,
    start: Instant,
    buf: Vec<u8>,
    /// The socket is in non-blocking mode (reads for a zero timeout).
    nonblocking: bool,
}

impl Client {
    /// A client for `addr` (`host:port`) presenting `token` (empty: anonymous). It connects
    /// at the first [`Client::poll`].
    pub fn connect(addr: &str, token: &str) -> Client {
        Client::with_config(Config::new(addr, token))
    }

    /// A client with every setting chosen.
    pub fn with_config(cfg: Config) -> Client {
        let seed = cfg.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            // No entropy source: fall back to the clock and the address of a local.
            if getrandom::getrandom(&mut b).is_err() {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1);
                return t ^ (&b as *const _ as u64);
            }
            u64::from_le_bytes(b)
        });
        let session = ClientSession::new(ClientConfig {
            name: cfg.name.clone(),
            role: Role::Subscriber,
            token: cfg.token.clone(),
            backoff_base_ms: cfg.backoff_base_ms,
            backoff_max_ms: cfg.backoff_max_ms,
            seed,
            ..ClientConfig::default()
        });
        Client {
            cfg,
            session,
            stream: None,
            start: Instant::now(),
            buf: vec![0u8; 64 * 1024],
            nonblocking: false,
        }
    }

    /// Subscribes to `topic` without conflation: every update arrives, in order (now if
    /// connected, otherwise with the next connection; after a reconnect it resumes from the
    /// last update held).
    pub fn subscribe(&mut self, topic: &str) {
        self.session.subscribe(topic, false);
    }

    /// Subscribes to `topic` letting the server conflate: a slow client gets the newest value
    /// rather than every step (the right choice for scores and odds).
    pub fn subscribe_latest(&mut self, topic: &str) {
        self.session.subscribe(topic, true);
    }

    /// True while a session is open.
    pub fn is_connected(&self) -> bool {
        self.session.is_open()
    }

    /// The network changed or the app came back from the background: drop the connection (if
    /// any) and connect again now, without waiting for a backoff.
    pub fn reconnect_now(&mut self) {
        let now = self.now();
        self.session.reconnect_now(now);
        self.stream = None;
    }

    /// Closes the session and its socket; the client stays closed.
    pub fn close(&mut self) {
        self.session.close();
        if let Some(s) = self.stream.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The next event, waiting at most `timeout` for one (0: only what is ready). Does the
    /// network work: connects, reconnects, reads, writes, keeps the connection alive.
    pub fn poll(&mut self, timeout: Duration) -> Option<Event> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.next_event() {
                return Some(ev);
            }
            let now = self.now();
            if self.session.poll_connect(now) {
                self.open(now);
                continue;
            }
            self.flush(now);
            if self.stream.is_some() && !self.session.wants_connection() {
                // The session ended it (silence, handshake timeout, close): the socket goes.
                self.stream = None;
            }
            if let Some(ev) = self.next_event() {
                return Some(ev);
            }
            let left = until.saturating_duration_since(Instant::now());
            let due = self
                .session
                .poll_timeout()
                .map(|d| Duration::from_millis(d.saturating_sub(now)));
            let wait = due.map_or(left, |d| d.min(left));
            match self.stream.as_mut() {
                Some(s) => {
                    // A zero wait reads only what is there (a game frame must not block).
                    let nonblocking = wait.is_zero();
                    if nonblocking != self.nonblocking {
                        let _ = s.set_nonblocking(nonblocking);
                        self.nonblocking = nonblocking;
                    }
                    if !nonblocking {
                        let _ = s.set_read_timeout(Some(wait));
                    }
                    match s.read(&mut self.buf) {
                        Ok(0) => self.lost(),
                        Ok(n) => {
                            let now = self.now();
                            self.session.handle_bytes(&self.buf[..n], now);
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => self.lost(),
                    }
                }
                None => std::thread::sleep(wait),
            }
            let now = self.now();
            if self.session.poll_timeout().is_some_and(|d| now >= d) {
                self.session.handle_timeout(now);
            }
            if Instant::now() >= until && self.session.poll_timeout().is_none_or(|d| self.now() < d)
            {
                return self.next_event();
            }
        }
    }

    fn open(&mut self, now: u64) {
        let addr: Option<SocketAddr> = self
            .cfg
            .addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next());
        let stream =
            addr.and_then(|a| TcpStream::connect_timeout(&a, self.cfg.connect_timeout).ok());
        match stream {
            Some(s) => {
                let _ = s.set_nodelay(true);
                self.nonblocking = false;
                self.stream = Some(s);
                let now = self.now();
                self.session.on_connected(now);
            }
            None => self.session.on_disconnected(now),
        }
    }

    fn flush(&mut self, now: u64) {
        let out = self.session.poll_transmit(now);
        if out.is_empty() {
            return;
        }
        let ok = match self.stream.as_mut() {
            Some(s) => {
                if self.nonblocking {
                    let _ = s.set_nonblocking(false);
                    self.nonblocking = false;
                }
                s.write_all(&out).is_ok()
            }
            None => true,
        };
        if !ok {
            self.lost();
        }
    }

    fn lost(&mut self) {
        self.stream = None;
        let now = self.now();
        self.session.on_disconnected(now);
    }

    fn topic(&self, index: usize) -> String {
        self.session
            .subscriptions()
            .get(index)
            .map(|s| s.topic.clone())
            .unwrap_or_default()
    }

    fn next_event(&mut self) -> Option<Event> {
        while let Some(ev) = self.session.poll_event() {
            let e = match ev {
                ClientEvent::Connected {
                    session_id, epoch, ..
                } => Event::Connected { session_id, epoch },
                ClientEvent::Subscribed { index, result } => Event::Subscribed {
                    topic: self.topic(index),
                    result,
                },
                ClientEvent::Update {
                    index,
                    update,
                    skipped,
                } => Event::Update {
                    topic: self.topic(index),
                    seq: update.seq,
                    snapshot: update.flags & yorker_wire::update_flags::SNAPSHOT != 0,
                    payload: update.payload,
                    skipped,
                },
                ClientEvent::Reset { index, update } => Event::Reset {
                    topic: self.topic(index),
                    seq: update.seq,
                    payload: update.payload,
                },
                ClientEvent::Disconnected {
                    reason,
                    retry_in_ms,
                } => {
                    if self.stream.is_some() && !self.session.wants_connection() {
                        self.stream = None;
                    }
                    Event::Disconnected {
                        reason,
                        retry_in_ms,
                    }
                }
                _ => continue,
            };
            return Some(e);
        }
        None
    }
}
