//! `yorker serve` and `yorker relay` flags (each also a `YORKER_*` environment variable) ->
//! [`Settings`]: the engine's validated [`ServerConfig`] and the relay feed's settings.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use clap::{Args, ValueEnum};

use yorker_engine::proto::auth::{parse_patterns, KeySpec, Policy, TokenVerifier};
use yorker_engine::proto::registry::RegistryLimits;
use yorker_engine::proto::{CoreConfig, SlowPolicy};
use yorker_engine::ServerConfig;
use yorker_relay::receiver::ReceiverConfig;
use yorker_relay::MulticastOut;

/// What the flags configure.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The engine.
    pub server: ServerConfig,
    /// The origin's multicast feed, if any.
    pub multicast: Option<MulticastOut>,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// `ADDR:PORT`, or a bare port on loopback.
fn parse_admin_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?}: expected ADDR:PORT or a port number"))
}

/// What to do with a connection whose outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowPolicyArg {
    /// Keep only the newest update per topic (subscriptions may opt out); close only if it
    /// still overflows.
    Conflate,
    /// Never conflate; ERROR slow_consumer and close when the outbox is full.
    Disconnect,
}

/// Flags of `yorker serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (TCP).
    #[arg(long, env = "YORKER_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// Shard threads, one per core [default: all online cores].
    #[arg(long, env = "YORKER_CORES")]
    pub cores: Option<usize>,
    /// CPUs to pin the cores to, e.g. "0,2-3" (core i, all its rings, gets the i-th CPU of the list).
    #[arg(long, env = "YORKER_CPUS", value_parser = parse_cpus)]
    pub cpus: Option<CpuList>,
    /// Connections per core [default: 100000, lowered to what one ring's direct-descriptor
    /// table holds, RLIMIT_NOFILE - 80]. A value given here (or in the environment or the
    /// settings file) is honoured: a core whose cap exceeds one ring's table runs several rings.
    #[arg(long, env = "YORKER_MAX_CONNS_PER_CORE")]
    pub max_conns_per_core: Option<usize>,
    /// Milliseconds a new connection has to send HELLO.
    #[arg(long, env = "YORKER_HANDSHAKE_TIMEOUT_MS", default_value_t = 5_000)]
    pub handshake_timeout_ms: u64,
    /// Heartbeat interval in ms; clients silent for three intervals are closed.
    #[arg(long, env = "YORKER_HEARTBEAT_MS", default_value_t = 15_000)]
    pub heartbeat_ms: u64,
    /// A send not completed within this many ms closes the connection (a dead reader).
    #[arg(long, env = "YORKER_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// Maximum frame length in bytes, both directions.
    #[arg(long, env = "YORKER_MAX_FRAME", default_value_t = 65_536)]
    pub max_frame: u32,
    /// Subscriptions per connection.
    #[arg(long, env = "YORKER_MAX_SUBSCRIPTIONS", default_value_t = 64)]
    pub max_subscriptions: u32,
    /// Key publishers present as their HELLO token; without it no connection may publish.
    #[arg(long, env = "YORKER_PUBLISHER_KEY", hide_env_values = true)]
    pub publisher_key: Option<String>,
    /// Key relays present as their HELLO token; without it no relay may connect (unless
    /// --allow-anonymous-relays). With a multicast feed it also signs the relays' NAKs.
    #[arg(long, env = "YORKER_RELAY_KEY", hide_env_values = true)]
    pub relay_key: Option<String>,
    /// Let relays connect without a key (--relay-key unset). Off by default: every relay
    /// session costs a snapshot of every topic.
    #[arg(long, env = "YORKER_ALLOW_ANONYMOUS_RELAYS")]
    pub allow_anonymous_relays: bool,
    /// Key backend services present as their HELLO token (role backend, protocol version 3);
    /// without it (and without a token granting `backend`) no backend may connect, and every
    /// MESSAGE is answered `no_backend`.
    #[arg(long, env = "YORKER_BACKEND_KEY", hide_env_values = true)]
    pub backend_key: Option<String>,
    /// Let sessions without a token send MESSAGE to the backends (by default only sessions
    /// with a verified token, publishers and backends may).
    #[arg(long, env = "YORKER_ANONYMOUS_MESSAGES")]
    pub anonymous_messages: bool,
    /// MESSAGEs (and subscribers' POSTs) per second per connection; beyond: ACK rate_limited.
    #[arg(long, env = "YORKER_MESSAGE_RATE", default_value_t = 50)]
    pub message_rate: u32,
    /// Burst of that per-connection rate.
    #[arg(long, env = "YORKER_MESSAGE_BURST", default_value_t = 100)]
    pub message_burst: u32,
    /// MESSAGEs of one connection waiting for their ACK at most; beyond: ACK rate_limited.
    #[arg(long, env = "YORKER_MAX_INFLIGHT_MESSAGES", default_value_t = 64)]
    pub max_inflight_messages: u32,
    /// Bytes queued per backend connection at most; beyond it MESSAGEs routed to it are
    /// refused server_busy (the backend stays connected).
    #[arg(long, env = "YORKER_BACKEND_OUTBOX_LIMIT", default_value_t = 16 * 1024 * 1024)]
    pub backend_outbox_limit: usize,
    /// Do not accept WebSocket upgrades on --listen (by default a connection whose first bytes
    /// are an HTTP `GET` with `Upgrade: websocket` is served over WebSocket).
    #[arg(long, env = "YORKER_NO_WEBSOCKET")]
    pub no_websocket: bool,
    /// WebSocket `Origin`s allowed (comma-separated, exact; `*` any). Default: any origin,
    /// including clients that send none. Browsers always send one: list your game's sites.
    #[arg(long, env = "YORKER_WS_ORIGINS", value_delimiter = ',')]
    pub ws_origins: Vec<String>,
    /// TLS certificate chain (PEM). With --tls-key, connections that open with a TLS handshake
    /// get TLS (raw yorker or WebSocket inside: wss), on the same port. Re-read on SIGHUP.
    #[arg(long, env = "YORKER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "YORKER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Refuse connections that do not start with a TLS handshake (needs --tls-cert).
    #[arg(long, env = "YORKER_REQUIRE_TLS")]
    pub require_tls: bool,
    /// A topic's member count goes to its presence subscribers at most once per this many ms.
    #[arg(long, env = "YORKER_PRESENCE_INTERVAL_MS", default_value_t = 1_000)]
    pub presence_interval_ms: u64,
    /// MEMBER join/leave events only while a topic has at most this many members (0: never).
    #[arg(long, env = "YORKER_PRESENCE_EVENTS_MAX", default_value_t = 32)]
    pub presence_events_max: u32,
    /// Relay connections the server holds at most (each receives every topic).
    #[arg(long, env = "YORKER_MAX_RELAYS", default_value_t = 64)]
    pub max_relays: usize,
    /// Key files that verify signed tokens (JWT): [KID=]PATH, repeat or comma-separate. A PEM
    /// public key (Ed25519: EdDSA, P-256: ES256, RSA: RS256) or an HS256 secret file (>= 32
    /// bytes). Re-read on SIGHUP.
    #[arg(long = "jwt-key", env = "YORKER_JWT_KEYS", value_delimiter = ',')]
    pub jwt_keys: Vec<KeySpec>,
    /// Tokens must carry this audience (`aud`).
    #[arg(long, env = "YORKER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Tokens must carry this issuer (`iss`).
    #[arg(long, env = "YORKER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Refuse subscribers without a token (needs --jwt-key).
    #[arg(long, env = "YORKER_REQUIRE_TOKEN")]
    pub require_token: bool,
    /// Topic patterns anonymous subscribers may subscribe to (comma-separated; `*` one
    /// segment, final `**` any rest). user/... topics are never anonymous.
    #[arg(
        long,
        env = "YORKER_ANONYMOUS_TOPICS",
        value_delimiter = ',',
        default_value = "**"
    )]
    pub anonymous_topics: Vec<String>,
    /// After a session's token expires it lives this many ms more, waiting for AUTH.
    #[arg(long, env = "YORKER_TOKEN_GRACE_MS", default_value_t = 30_000)]
    pub token_grace_ms: u64,
    /// Outbox bytes per relay connection (every topic, never conflated; beyond it the relay is
    /// disconnected and resynchronises).
    #[arg(long, env = "YORKER_RELAY_OUTBOX_LIMIT", default_value_t = 64 * 1024 * 1024)]
    pub relay_outbox_limit: usize,
    /// Outbox bytes per connection before the slow-consumer policy applies.
    #[arg(long, env = "YORKER_OUTBOX_LIMIT", default_value_t = 262_144)]
    pub outbox_limit: usize,
    /// Outbox bytes over all connections of one core; beyond it the largest outboxes are closed.
    #[arg(long, env = "YORKER_SHARD_OUTBOX_CAP", default_value_t = 512 * 1024 * 1024)]
    pub shard_outbox_cap: usize,
    /// Slow-consumer policy.
    #[arg(long, env = "YORKER_SLOW_POLICY", value_enum, default_value_t = SlowPolicyArg::Conflate)]
    pub slow_policy: SlowPolicyArg,
    /// Updates kept per topic for resume after reconnect.
    #[arg(long, env = "YORKER_HISTORY_DEPTH", default_value_t = 64)]
    pub history_depth: usize,
    /// Bytes of history kept per topic (at most --outbox-limit, so a replay fits an outbox).
    #[arg(long, env = "YORKER_HISTORY_BYTES", default_value_t = 128 * 1024)]
    pub history_bytes: usize,
    /// Bytes of history kept over all topics; beyond it busy topics keep only their latest
    /// value (their resumes become RESETs).
    #[arg(long, env = "YORKER_MAX_HISTORY_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_history_bytes: usize,
    /// Topics publishers (or a relay's feed) may create at most.
    #[arg(long, env = "YORKER_MAX_TOPICS", default_value_t = 100_000)]
    pub max_topics: usize,
    /// Placeholder topics at most: subscribed before their first publish, freed with their last
    /// subscriber. Kept apart from --max-topics so subscribers cannot crowd out publishers.
    #[arg(long, env = "YORKER_MAX_PLACEHOLDERS", default_value_t = 100_000)]
    pub max_placeholders: usize,
    /// A frame that starts arriving must be complete within this many ms (a client dripping
    /// a large frame byte by byte is closed with ERROR frame_timeout).
    #[arg(long, env = "YORKER_FRAME_TIMEOUT_MS", default_value_t = 10_000)]
    pub frame_timeout_ms: u64,
    /// Bytes of partly received frames held over all connections of one core; beyond it the
    /// connection holding the largest one is closed (ERROR server_busy).
    #[arg(long, env = "YORKER_SHARD_INBOUND_CAP", default_value_t = 64 * 1024 * 1024)]
    pub shard_inbound_cap: usize,
    /// Frames gathered into one send at most.
    #[arg(long, env = "YORKER_MAX_FRAMES_PER_SEND", default_value_t = 64)]
    pub max_frames_per_send: usize,
    /// On shutdown, clients are told to reconnect after this many ms ...
    #[arg(long, env = "YORKER_GOAWAY_BASE_MS", default_value_t = 1_000)]
    pub goaway_base_ms: u32,
    /// ... plus a random share of this many ms, so reconnects spread out.
    #[arg(long, env = "YORKER_GOAWAY_JITTER_MS", default_value_t = 4_000)]
    pub goaway_jitter_ms: u32,
    /// New connections admitted per second per core (a burst of as many); beyond it they get
    /// GOAWAY server_busy with a retry hint. 0: no limit.
    #[arg(long, env = "YORKER_ACCEPT_RATE", default_value_t = 20_000)]
    pub accept_rate: u32,
    /// Time a closing connection (or the whole server on shutdown) has to flush.
    #[arg(long, env = "YORKER_DRAIN_MS", default_value_t = 2_000)]
    pub drain_ms: u64,
    /// listen(2) backlog (raise net.core.somaxconn to match).
    #[arg(long, env = "YORKER_BACKLOG", default_value_t = 4096)]
    pub backlog: i32,
    /// Provided receive buffers per core (power of two, at most 32768).
    #[arg(long, env = "YORKER_RECV_BUFFERS", default_value_t = 2048)]
    pub recv_buffers: u16,
    /// Size of each receive buffer in bytes.
    #[arg(long, env = "YORKER_RECV_BUFFER_SIZE", default_value_t = 2048)]
    pub recv_buffer_size: u32,
    /// Submission queue entries per core.
    #[arg(long, env = "YORKER_SQ_ENTRIES", default_value_t = 4096)]
    pub sq_entries: u32,
    /// Gathered sends a core submits at most before it looks at its completions again (bounds
    /// how long inbound traffic waits during a big fan-out).
    #[arg(long, env = "YORKER_SENDS_PER_ROUND", default_value_t = 128)]
    pub sends_per_round: usize,
    /// Deliveries a core queues from its inbox at most before it looks at its completions
    /// again (at least one whole update): with --sends-per-round, bounds how long a PING or a
    /// MESSAGE waits while the core fans out bursts.
    #[arg(long, env = "YORKER_DELIVERIES_PER_ROUND", default_value_t = 16_384)]
    pub deliveries_per_round: u64,
    /// Updates a core's inbox holds at most; beyond it they are dropped and that core
    /// resynchronises its subscribers (SNAPSHOT|RESET).
    #[arg(long, env = "YORKER_INBOX_CAPACITY", default_value_t = 1 << 20)]
    pub inbox_capacity: usize,
    /// SO_SNDBUF of every client connection in bytes (the kernel doubles it); bounds the kernel
    /// memory a reader that stopped reading can hold. 0: the kernel's autotuning.
    #[arg(long, env = "YORKER_SOCKET_SEND_BUFFER", default_value_t = 256 * 1024)]
    pub socket_send_buffer: usize,
    /// Seconds between one-line stats on stderr; 0 turns them off.
    #[arg(long, env = "YORKER_STATS_INTERVAL", default_value_t = 5)]
    pub stats_interval: u64,
    /// Take updates from an existing replicated log (docs/SCALE-OUT.md):
    /// redis-stream://HOST:PORT/KEY[,KEY...][?field=payload&history=64&verify-ms=5000] or
    /// nats-jetstream://[USER:PASSWORD@|TOKEN@]HOST:PORT/STREAM[=TOPIC][,...][?history=64&verify-ms=5000].
    /// Each stream is one topic (named like the stream unless =TOPIC says otherwise), numbered
    /// by the stream, so origins on the same streams number every update alike. Publishing to
    /// those topics is refused.
    #[arg(long, env = "YORKER_INGEST", hide_env_values = true)]
    pub ingest: Option<yorker_ingest::IngestConfig>,
    /// The admin HTTP listener (metrics, health, HTTP publish, drain): ADDR:PORT, or a bare PORT
    /// for 127.0.0.1:PORT. Off unless given; keep it on loopback or a private network (only
    /// /publish checks a key).
    #[arg(long, env = "YORKER_ADMIN_LISTEN", value_parser = parse_admin_addr)]
    pub admin_listen: Option<SocketAddr>,
    /// Log lines as text (default) or one JSON object per line.
    #[arg(long, env = "YORKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A TOML file of settings: `flag-name = value` for any flag of this command (e.g.
    /// `publisher-key = "..."`, `max-conns-per-core = 50000`). Environment variables override
    /// it, and flags override both.
    #[arg(long, env = "YORKER_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Origin: also multicast every update to relays, to GROUP:PORT (repeat, or comma-separate,
    /// for an A/B feed on two groups). Needs --multicast-if.
    #[arg(long, env = "YORKER_MULTICAST_OUT", value_delimiter = ',')]
    pub multicast_out: Vec<SocketAddrV4>,
    /// Local IPv4 address of the interface multicast is sent from (relays: joined on). Never
    /// defaulted, so a feed cannot leak onto the wrong network.
    #[arg(long, env = "YORKER_MULTICAST_IF")]
    pub multicast_if: Option<Ipv4Addr>,
    /// IP TTL of feed datagrams (1 keeps them on the local subnet).
    #[arg(long, env = "YORKER_MULTICAST_TTL", default_value_t = 1)]
    pub multicast_ttl: u32,
    /// Feed channel number (relays follow one channel; several origins may share a group).
    #[arg(long, env = "YORKER_MULTICAST_CHANNEL", default_value_t = 0)]
    pub multicast_channel: u16,
    /// Largest feed datagram in bytes (keep it under the path MTU: 1472 on Ethernet).
    #[arg(long, env = "YORKER_MULTICAST_DATAGRAM", default_value_t = 1472)]
    pub multicast_datagram: usize,
    /// Feed heartbeat interval while idle, ms (relays see tail loss within it).
    #[arg(long, env = "YORKER_MULTICAST_HEARTBEAT_MS", default_value_t = 100)]
    pub multicast_heartbeat_ms: u64,
    /// How long the origin keeps sent datagrams for retransmission, ms.
    #[arg(long, env = "YORKER_RETRANSMIT_MS", default_value_t = 5_000)]
    pub retransmit_ms: u64,
    /// Bytes of sent datagrams kept for retransmission at most.
    #[arg(long, env = "YORKER_RETRANSMIT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub retransmit_bytes: usize,
}

/// Flags of `yorker relay` besides those of `serve`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Follow the origin's multicast feed on GROUP:PORT (repeat for A/B groups on one port).
    /// Needs --multicast-if and --recovery.
    #[arg(long, env = "YORKER_MULTICAST_IN", value_delimiter = ',')]
    pub multicast_in: Vec<SocketAddrV4>,
    /// The origin engine's HOST:PORT: NAKs go there over UDP, snapshots come from it over TCP.
    /// Several (HOST:PORT,HOST:PORT): the first is the origin whose feed this relay hears; the
    /// others are origins reading the same replicated log (docs/SCALE-OUT.md), followed over
    /// TCP if that feed falls silent for --feed-silence-ms.
    #[arg(long, env = "YORKER_RECOVERY", value_delimiter = ',')]
    pub recovery: Vec<String>,
    /// A multicast feed without any datagram (data or heartbeat) for this long is silent: the
    /// relay is not ready, and with several --recovery origins it follows the next over TCP.
    /// Keep it well above the origin's --multicast-heartbeat-ms.
    #[arg(long, env = "YORKER_FEED_SILENCE_MS", default_value_t = 2_000)]
    pub feed_silence_ms: u64,
    /// Follow an upstream engine (origin or relay) over TCP instead of multicast: HOST:PORT.
    /// Several (HOST:PORT,HOST:PORT): origins reading one replicated log (docs/SCALE-OUT.md),
    /// tried in turn when the one followed fails; they share epoch and numbers, so clients
    /// see no RESET for topics that did not move during the switch.
    #[arg(
        long,
        env = "YORKER_UPSTREAM",
        conflicts_with = "multicast_in",
        value_delimiter = ','
    )]
    pub upstream: Vec<String>,
    /// Relay key the upstream or origin expects (its --relay-key).
    #[arg(long, env = "YORKER_UPSTREAM_KEY", hide_env_values = true)]
    pub upstream_key: Option<String>,
    /// Longest random delay before a NAK, ms.
    #[arg(long, env = "YORKER_NAK_DELAY_MS", default_value_t = 10)]
    pub nak_delay_ms: u64,
    /// Wait for a retransmit before NAKing again, ms.
    #[arg(long, env = "YORKER_NAK_RETRY_MS", default_value_t = 50)]
    pub nak_retry_ms: u64,
    /// NAKs for one gap before resynchronising from a snapshot.
    #[arg(long, env = "YORKER_NAK_ATTEMPTS", default_value_t = 3)]
    pub nak_attempts: u32,
    /// Datagrams held out of order (or during a snapshot) before resynchronising.
    #[arg(long, env = "YORKER_MAX_PENDING_DATAGRAMS", default_value_t = 8192)]
    pub max_pending_datagrams: usize,
}

impl RelayArgs {
    /// Validates the relay flags against the engine flags.
    pub fn check(&self, serve: &ServeArgs) -> Result<(), String> {
        check_key(&self.upstream_key, "--upstream-key")?;
        if serve.ingest.is_some() {
            return Err("--ingest is for origins (yorker serve); a relay follows an origin".into());
        }
        if serve.publisher_key.is_some() {
            return Err(
                "a relay takes no publishers: drop --publisher-key (publish to the origin)".into(),
            );
        }
        if !serve.multicast_out.is_empty() {
            return Err("--multicast-out is for origins; a relay serves further relays over TCP (--upstream)".into());
        }
        match (self.upstream.is_empty(), self.multicast_in.is_empty()) {
            (true, true) => {
                Err("a relay needs --multicast-in GROUP:PORT or --upstream HOST:PORT".into())
            }
            (false, _) => Ok(()),
            (true, false) => {
                if serve.multicast_if.is_none() {
                    return Err("--multicast-in needs --multicast-if ADDR (the local interface to join the group on)".into());
                }
                if self.recovery.is_empty() {
                    return Err("--multicast-in needs --recovery HOST:PORT (the origin, for NAKs and snapshots)".into());
                }
                if self.feed_silence_ms < 100 {
                    return Err("--feed-silence-ms must be at least 100".into());
                }
                if self.nak_attempts == 0 || self.max_pending_datagrams < 16 {
                    return Err(
                        "--nak-attempts must be at least 1 and --max-pending-datagrams at least 16"
                            .into(),
                    );
                }
                Ok(())
            }
        }
    }

    /// Gap-handling settings.
    pub fn receiver(&self, channel: u16) -> ReceiverConfig {
        ReceiverConfig {
            channel,
            nak_delay_ms: self.nak_delay_ms,
            nak_retry_ms: self.nak_retry_ms.max(1),
            nak_attempts: self.nak_attempts,
            max_pending: self.max_pending_datagrams,
            silence_ms: self.feed_silence_ms,
            ..ReceiverConfig::default()
        }
    }
}

/// Keys travel as a HELLO token (str8): 1 to 255 bytes.
fn check_key(key: &Option<String>, flag: &str) -> Result<(), String> {
    match key {
        Some(k) if k.is_empty() || k.len() > 255 => Err(format!("{flag} must be 1 to 255 bytes")),
        _ => Ok(()),
    }
}

/// The CPUs this process may run on (its affinity mask: taskset, cpusets, containers).
fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

/// `--cpus` must name CPUs this process may use, one per shard.
fn check_cpus(cpus: &[usize], cores: usize, allowed: &[usize]) -> Result<(), String> {
    if !allowed.is_empty() {
        if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
            return Err(format!(
                "--cpus: CPU {bad} is not available to this process (it may use {})",
                allowed
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
    }
    if cpus.len() != cores {
        return Err(format!(
            "--cores {cores} but --cpus lists {} CPU(s): give one CPU per shard",
            cpus.len()
        ));
    }
    Ok(())
}

/// A parsed CPU list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a
                .trim()
                .parse()
                .map_err(|_| format!("bad CPU number in {part:?}"))?;
            let b: usize = b
                .trim()
                .parse()
                .map_err(|_| format!("bad CPU number in {part:?}"))?;
            if a > b || b - a > 4096 {
                return Err(format!("bad CPU range {part:?}"));
            }
            out.extend(a..=b);
        } else {
            out.push(
                part.parse()
                    .map_err(|_| format!("bad CPU number {part:?}"))?,
            );
        }
    }
    if out.is_empty() {
        return Err("empty CPU list".into());
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = out.iter().find(|c| !seen.insert(**c)) {
        return Err(format!(
            "CPU {dup} is listed twice (one shard per CPU: two shards on one CPU only contend)"
        ));
    }
    Ok(CpuList(out))
}

impl ServeArgs {
    /// Validates the flags and builds the engine configuration.
    pub fn to_config(&self) -> Result<Settings, String> {
        let online = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cores = self
            .cores
            .unwrap_or_else(|| self.cpus.as_ref().map(|c| c.0.len()).unwrap_or(online));
        if cores == 0 {
            return Err("--cores must be at least 1".into());
        }
        if let Some(cpus) = &self.cpus {
            check_cpus(&cpus.0, cores, &allowed_cpus())?;
        }
        let tokens = if self.jwt_keys.is_empty() {
            if self.require_token {
                return Err("--require-token needs --jwt-key (the keys that verify tokens)".into());
            }
            None
        } else {
            Some(std::sync::Arc::new(TokenVerifier::new(
                self.jwt_keys.clone(),
                self.jwt_audience.clone(),
                self.jwt_issuer.clone(),
            )?))
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some(std::sync::Arc::new(
                yorker_engine::proto::tls::TlsSettings::new(c.clone(), k.clone())?,
            )),
            _ if self.require_tls => {
                return Err("--require-tls needs --tls-cert and --tls-key".into())
            }
            _ => None,
        };
        let anonymous_topics = parse_patterns(
            &self
                .anonymous_topics
                .iter()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect::<Vec<_>>(),
        )
        .map_err(|e| format!("--anonymous-topics: {e}"))?;
        let mut max_frame = self.max_frame;
        let multicast = if self.multicast_out.is_empty() {
            None
        } else {
            let Some(interface) = self.multicast_if else {
                return Err("--multicast-out needs --multicast-if ADDR: the local interface to send from (there is no default, so a feed never leaks onto the wrong network)".into());
            };
            // Every UPDATE must fit one datagram (with its topic name and the header).
            let fits = MulticastOut::MAX_FRAME;
            if max_frame > fits {
                tracing::warn!("--max-frame {max_frame} lowered to {fits} so that every update fits one feed datagram");
                max_frame = fits;
            }
            Some(MulticastOut {
                groups: self.multicast_out.clone(),
                interface,
                ttl: self.multicast_ttl,
                channel: self.multicast_channel,
                max_datagram: self.multicast_datagram,
                heartbeat_ms: self.multicast_heartbeat_ms,
                retransmit_ms: self.retransmit_ms,
                retransmit_bytes: self.retransmit_bytes,
                nak_key: self.relay_key.clone().map(String::into_bytes),
            })
        };
        let cfg = ServerConfig {
            listen: self.listen,
            cores,
            multi_ring: self.max_conns_per_core.is_some(),
            cpus: self.cpus.clone().map(|c| c.0).unwrap_or_default(),
            core: CoreConfig {
                max_connections: self.max_conns_per_core.unwrap_or(100_000),
                max_frame,
                max_subscriptions: self.max_subscriptions,
                outbox_limit: self.outbox_limit,
                shard_outbox_cap: self.shard_outbox_cap,
                slow_policy: match self.slow_policy {
                    SlowPolicyArg::Conflate => SlowPolicy::Conflate,
                    SlowPolicyArg::Disconnect => SlowPolicy::Disconnect,
                },
                handshake_timeout_ms: self.handshake_timeout_ms,
                heartbeat_ms: self.heartbeat_ms,
                write_timeout_ms: self.write_timeout_ms,
                publisher_key: self.publisher_key.clone(),
                relay_key: self.relay_key.clone(),
                allow_anonymous_relays: self.allow_anonymous_relays,
                tokens,
                policy: Policy {
                    anonymous_topics,
                    require_token: self.require_token,
                    grace_ms: self.token_grace_ms,
                },
                max_relays: self.max_relays,
                relay_outbox_limit: self.relay_outbox_limit,
                frame_timeout_ms: self.frame_timeout_ms,
                shard_inbound_cap: self.shard_inbound_cap,
                max_frames_per_send: self.max_frames_per_send,
                goaway_base_ms: self.goaway_base_ms,
                goaway_jitter_ms: self.goaway_jitter_ms,
                drain_ms: self.drain_ms,
                accept_rate: self.accept_rate,
                backend_key: self.backend_key.clone(),
                anonymous_messages: self.anonymous_messages,
                message_rate: self.message_rate,
                message_burst: self.message_burst,
                max_inflight_messages: self.max_inflight_messages,
                backend_outbox_limit: self.backend_outbox_limit,
                presence_interval_ms: self.presence_interval_ms,
                presence_events_max: self.presence_events_max,
                websocket: !self.no_websocket,
                tls,
                require_tls: self.require_tls,
                ws_origins: self
                    .ws_origins
                    .iter()
                    .filter(|o| !o.is_empty())
                    .cloned()
                    .collect(),
            },
            registry: RegistryLimits {
                history_depth: self.history_depth,
                history_bytes: self.history_bytes,
                max_history_bytes: self.max_history_bytes,
                max_topics: self.max_topics,
                max_placeholders: self.max_placeholders,
            },
            backlog: self.backlog,
            recv_buffers: self.recv_buffers,
            recv_buffer_size: self.recv_buffer_size,
            sq_entries: self.sq_entries,
            sends_per_round: self.sends_per_round,
            deliveries_per_round: self.deliveries_per_round,
            inbox_capacity: self.inbox_capacity,
            socket_send_buffer: self.socket_send_buffer,
            tap: None,
        };
        cfg.validate().map_err(|e| e.to_string())?;
        if let Some(m) = &multicast {
            m.validate(cfg.core.max_frame, self.allow_anonymous_relays)?;
        }
        Ok(Settings {
            server: cfg,
            multicast,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("0,2-4").unwrap().0, vec![0, 2, 3, 4]);
        assert!(parse_cpus("").is_err());
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("x").is_err());
        assert!(parse_cpus("0,0,0,0").unwrap_err().contains("twice"));
        assert!(parse_cpus("1,0-2").unwrap_err().contains("twice"));
    }

    #[test]
    fn cpus_must_exist_and_match_the_cores() {
        let allowed = [0, 1];
        assert!(check_cpus(&[0, 1], 2, &allowed).is_ok());
        let e = check_cpus(&(7..=99).collect::<Vec<_>>(), 93, &allowed).unwrap_err();
        assert!(e.contains("CPU 7 is not available"), "{e}");
        assert!(check_cpus(&[0], 2, &allowed)
            .unwrap_err()
            .contains("one CPU per shard"));
    }
}

/// Flags of `yorker sink`.
#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
    /// The engine whose client messages to take, HOST:PORT.
    #[arg(long, env = "YORKER_SINK_ENGINE", default_value = "127.0.0.1:7000")]
    pub engine: String,
    /// The engine's backend key (its --backend-key), or a token with role backend.
    #[arg(long, env = "YORKER_BACKEND_KEY", hide_env_values = true)]
    pub backend_key: String,
    /// Where messages go: redis-stream://HOST:PORT/KEY[?maxlen=N] (MAXLEN ~ N trims it), or
    /// nats-jetstream://[USER:PASSWORD@|TOKEN@]HOST:PORT/SUBJECT (published to SUBJECT.<user>,
    /// stored by the JetStream stream that collects SUBJECT.>).
    #[arg(long, env = "YORKER_SINK_TO", hide_env_values = true)]
    pub to: String,
    /// Log lines as text (default) or one JSON object per line.
    #[arg(long, env = "YORKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}
