//! Starting and stopping a whole engine: listeners, shards, the bus.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use yorker_uring::RingConfig;

use crate::bus::ShardBus;
use crate::driver::{self, ShardSetup};
use crate::proto::registry::Registry;
use crate::proto::registry::RegistryLimits;
use crate::proto::{CoreConfig, CoreStats, Shard};
use crate::stats::{self, SharedStats};

/// Everything needed to start an engine.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0: pick a free one).
    pub listen: SocketAddr,
    /// Number of cores (one shard each, or several: see `multi_ring`).
    pub cores: usize,
    /// When `core.max_connections` exceeds what one ring's direct-descriptor table holds
    /// (RLIMIT_NOFILE): run several rings (shard threads pinned to the core) so that the cap
    /// holds; `false` lowers the cap to one ring's table instead.
    pub multi_ring: bool,
    /// CPUs to pin core `i` (its shard, or the shards of its rings) to (`cpus[i % len]`);
    /// empty: the CPUs the process may use.
    pub cpus: Vec<usize>,
    /// Per-shard core settings (`max_connections` is per shard).
    pub core: CoreConfig,
    /// Topic counts and history bounds.
    pub registry: RegistryLimits,
    /// listen(2) backlog.
    pub backlog: i32,
    /// Provided receive buffers per shard (power of two).
    pub recv_buffers: u16,
    /// Size of each receive buffer.
    pub recv_buffer_size: u32,
    /// Submission queue size per shard.
    pub sq_entries: u32,
    /// Gathered sends a shard submits at most between two looks at its completions (bounds
    /// how long inbound traffic waits during a big fan-out).
    pub sends_per_round: usize,
    /// Deliveries a shard queues from the bus at most between two looks at its completions
    /// (at least one whole update).
    pub deliveries_per_round: u64,
    /// Updates a shard's inbox holds at most; beyond it they are dropped and the shard
    /// resynchronises its subscribers (SNAPSHOT|RESET).
    pub inbox_capacity: usize,
    /// SO_SNDBUF of every connection, bytes (the kernel doubles it); 0: kernel autotuning.
    pub socket_send_buffer: usize,
    /// Also hand every update to this tap as the shards get it (an origin's multicast feed,
    /// `yorker-relay`).
    pub tap: Option<Arc<dyn crate::bus::Tap>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7000".parse().expect("valid"),
            cores: 1,
            multi_ring: false,
            cpus: Vec::new(),
            core: CoreConfig::default(),
            registry: RegistryLimits::default(),
            backlog: 4096,
            recv_buffers: 2048,
            recv_buffer_size: 2048,
            sq_entries: 4096,
            sends_per_round: 128,
            deliveries_per_round: 16_384,
            inbox_capacity: 1 << 20,
            socket_send_buffer: 256 * 1024,
            tap: None,
        }
    }
}

/// A setting out of range, found by [`ServerConfig::validate`] (the CLI and configurations
/// built in code get the same checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("{setting} {problem}")]
pub struct ConfigError {
    /// The setting, named as its command-line flag.
    pub setting: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn need(ok: bool, setting: &'static str, problem: impl Into<String>) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            setting,
            problem: problem.into(),
        })
    }
}

impl ServerConfig {
    /// Checks every setting and their relations; [`Server::start`] refuses a configuration
    /// that fails.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.core;
        let r = &self.registry;
        need(
            (1..=256).contains(&self.cores),
            "--cores",
            "must be between 1 and 256 (session ids carry the core)",
        )?;
        need(
            c.max_connections < 0x00ff_0000,
            "--max-conns-per-core",
            "must be below 16,711,680 (session ids carry the slot in 24 bits)",
        )?;
        need(
            self.deliveries_per_round >= 1,
            "--deliveries-per-round",
            "must be at least 1",
        )?;
        need(
            c.message_rate >= 1 && c.message_burst >= 1,
            "--message-rate",
            "rate and burst must be at least 1",
        )?;
        need(
            c.max_inflight_messages >= 1,
            "--max-inflight-messages",
            "must be at least 1",
        )?;
        need(
            c.backend_outbox_limit >= c.max_frame as usize,
            "--backend-outbox-limit",
            "must be at least --max-frame",
        )?;
        need(
            c.presence_interval_ms >= 10,
            "--presence-interval-ms",
            "must be at least 10",
        )?;
        need(
            (4096..=yorker_wire::MAX_MAX_FRAME).contains(&c.max_frame),
            "--max-frame",
            "must be between 4096 and 16777216",
        )?;
        need(
            c.heartbeat_ms >= 100,
            "--heartbeat-ms",
            "must be at least 100",
        )?;
        need(
            c.handshake_timeout_ms >= 10,
            "--handshake-timeout-ms",
            "must be at least 10",
        )?;
        need(
            c.write_timeout_ms >= 10,
            "--write-timeout-ms",
            "must be at least 10",
        )?;
        need(
            c.max_connections >= 1,
            "--max-conns-per-core",
            "must be at least 1",
        )?;
        need(
            c.outbox_limit >= c.max_frame as usize,
            "--outbox-limit",
            "must be at least --max-frame",
        )?;
        need(
            c.shard_outbox_cap >= c.outbox_limit,
            "--shard-outbox-cap",
            "must be at least --outbox-limit",
        )?;
        // Every reply must fit a frame: a SUBACK holds one 13-byte entry per requested topic,
        // and requests carry at most --max-subscriptions entries.
        let most = (c.max_frame as usize - 7) / 13;
        need(
            c.max_subscriptions >= 1 && c.max_subscriptions as usize <= most,
            "--max-subscriptions",
            format!("must be between 1 and (max-frame - 7) / 13 = {most} (a SUBACK answering that many topics must fit a frame)"),
        )?;
        need(
            r.history_bytes >= 1 && r.history_bytes <= c.outbox_limit,
            "--history-bytes",
            "must be between 1 and --outbox-limit (a replay must fit an outbox)",
        )?;
        need(
            r.max_topics >= 1 && r.max_topics < u32::MAX as usize / 2,
            "--max-topics",
            "out of range",
        )?;
        need(
            r.max_placeholders >= 1 && r.max_placeholders < u32::MAX as usize / 2,
            "--max-placeholders",
            "out of range",
        )?;
        need(
            c.frame_timeout_ms >= 10,
            "--frame-timeout-ms",
            "must be at least 10",
        )?;
        need(
            c.shard_inbound_cap >= c.max_frame as usize,
            "--shard-inbound-cap",
            "must be at least --max-frame",
        )?;
        need(
            (1..=1024).contains(&c.max_frames_per_send),
            "--max-frames-per-send",
            "must be between 1 and 1024 (IOV_MAX)",
        )?;
        need(
            self.inbox_capacity >= 1024,
            "--inbox-capacity",
            "must be at least 1024",
        )?;
        need(
            (1..=65_536).contains(&self.sends_per_round),
            "--sends-per-round",
            "must be between 1 and 65536",
        )?;
        need(
            self.sq_entries.is_power_of_two() && (64..=32768).contains(&self.sq_entries),
            "--sq-entries",
            "must be a power of two between 64 and 32768",
        )?;
        need(
            self.recv_buffers.is_power_of_two() && self.recv_buffers <= 32768,
            "--recv-buffers",
            "must be a power of two <= 32768",
        )?;
        need(
            (512..=1 << 20).contains(&self.recv_buffer_size),
            "--recv-buffer-size",
            "must be between 512 and 1048576",
        )?;
        for (key, setting) in [
            (&c.publisher_key, "--publisher-key"),
            (&c.relay_key, "--relay-key"),
        ] {
            need(
                key.as_ref().is_none_or(|k| (1..=255).contains(&k.len())),
                setting,
                "must be 1 to 255 bytes (it travels as a HELLO token)",
            )?;
        }
        need(
            c.relay_outbox_limit >= 65_536,
            "--relay-outbox-limit",
            "must be at least 65536",
        )?;
        need(
            !c.policy.require_token || c.tokens.is_some(),
            "--require-token",
            "needs --jwt-key (the keys that verify tokens)",
        )?;
        Ok(())
    }
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel refused to set up io_uring (too old, disabled by sysctl or seccomp).
    #[error("io_uring unavailable on shard {shard}: {source} (kernel 6.1+ needed; check kernel.io_uring_disabled and container seccomp)")]
    Uring {
        /// Which shard.
        shard: usize,
        /// The OS error.
        source: io::Error,
    },
    /// Any other OS error during start-up.
    #[error("start-up failed: {0}")]
    Io(#[from] io::Error),
}

/// A running engine.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    threads: Vec<JoinHandle<io::Result<()>>>,
    shutdown: Arc<AtomicBool>,
    drain_over_ms: Arc<AtomicU64>,
    tls: Option<Arc<crate::proto::tls::TlsSettings>>,
    bus: Arc<ShardBus>,
    registry: Arc<Registry>,
    stats: Vec<Arc<SharedStats>>,
    files_per_shard: u32,
    max_frame: u32,
    /// Held for the engine's lifetime: see [`claim`].
    _claim: UnixListener,
}

/// Totals over all shards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Summed counters.
    pub core: CoreStats,
    /// io_uring_enter calls.
    pub enters: u64,
    /// UPDATE frames encoded (one per publish, plus cached snapshots).
    pub frames_encoded: u64,
    /// Topics.
    pub topics: u64,
}

/// One engine per TCP port. SO_REUSEPORT lets a second process of the same user bind the same
/// port, and the kernel would then silently hand it part of the new connections (publishers on
/// one engine, subscribers on the other: updates that never arrive). The same goes for a second
/// engine on a more specific address of the port (`127.0.0.1:P` next to `0.0.0.0:P` takes every
/// loopback client), so the claim is per port, whatever the address. An abstract Unix socket
/// named after the port (per network namespace, released when the process dies, even by
/// SIGKILL) turns that into a clear start-up error.
fn claim(addr: SocketAddr) -> Result<UnixListener, StartError> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("yorker-engine/tcp-port/{}", addr.port());
    let taken = |source| StartError::Listen { addr, source };
    let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(taken)?;
    UnixListener::bind_addr(&sa).map_err(|e| {
        taken(if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                "another yorker engine already listens on this port (SO_REUSEPORT, or a more specific address, would let it take connections meant for the other)",
            )
        } else {
            e
        })
    })
}

/// Listening TCP sockets on `port` in this network namespace (from /proc/net/tcp and tcp6).
fn listeners_on(port: u16) -> usize {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    // local_address is field 1 (ADDR:PORT in hex), st is field 3 (0A: LISTEN)
                    f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
                })
                .count()
        })
        .sum()
}

/// Waits (up to 10 s) until no socket listens on `port`: a previous engine of this port that
/// was killed leaves its listeners in the SO_REUSEPORT group until its rings are torn down.
/// Anything still listening after that is another program: refuse to share its port.
fn wait_for_foreign_listeners(port: u16) -> io::Result<()> {
    let start = Instant::now();
    let mut logged = false;
    while listeners_on(port) > 0 {
        if start.elapsed() > std::time::Duration::from_secs(10) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "address in use: another program keeps listening on this port with SO_REUSEPORT (not a yorker engine: the engine claim is free)",
            ));
        }
        if !logged {
            tracing::info!("port {port}: waiting for a previous engine's listeners to go");
            logged = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if logged {
        tracing::info!("port {port}: free after {} ms", start.elapsed().as_millis());
    }
    Ok(())
}

/// A socket of the port's SO_REUSEPORT group, bound but not yet listening. Accepted sockets
/// inherit its options, the send buffer (`sndbuf`, 0: the kernel's autotuning) included.
fn bound(addr: SocketAddr, sndbuf: usize) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: gathered sends are already
    // batched, so Nagle would only add latency.
    s.set_tcp_nodelay(true)?;
    if sndbuf > 0 {
        // A reader that stops reading can make the kernel hold up to the send buffer for it;
        // autotuned, that is megabytes per socket, and enough stalled readers push TCP into
        // memory pressure, which slows every connection of the host.
        s.set_send_buffer_size(sndbuf)?;
    }
    s.bind(&addr.into())?;
    Ok(s)
}

fn listener(addr: SocketAddr, backlog: i32, sndbuf: usize) -> io::Result<Socket> {
    let s = bound(addr, sndbuf)?;
    s.listen(backlog)?;
    Ok(s)
}

/// Shards at most: a session id names its shard in 8 bits.
const MAX_SHARDS: u64 = 256;

/// How a server's connections map onto rings. One ring's direct-descriptor table holds at most
/// RLIMIT_NOFILE slots (the kernel's rule for registered files), so a core whose
/// `--max-conns-per-core` needs more runs several rings, each driven by a shard thread pinned
/// to that core: a node's connections are then bounded by memory and the cap, not by
/// RLIMIT_NOFILE (direct descriptors use no file descriptor of the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RingPlan {
    /// Rings (shards) per core.
    rings_per_core: u64,
    /// Shards in all.
    shards: usize,
    /// Connections per shard.
    per_shard: u64,
    /// Slots of each ring's table (`per_shard` plus the reserve).
    files: u32,
}

impl RingPlan {
    /// `multi`: a cap beyond one ring's table runs several rings per core (otherwise the cap
    /// is lowered to what one ring holds).
    fn new(cores: usize, per_core: u64, nofile: u64, reserve: u64, multi: bool) -> RingPlan {
        let cores = cores.max(1) as u64;
        let table = nofile.saturating_sub(16).max(reserve + 1);
        let per_ring = table - reserve;
        let most = if multi {
            (MAX_SHARDS / cores).max(1)
        } else {
            1
        };
        let rings_per_core = per_core.div_ceil(per_ring).clamp(1, most);
        let per_shard = per_core.div_ceil(rings_per_core).min(per_ring).max(1);
        RingPlan {
            rings_per_core,
            shards: (cores * rings_per_core) as usize,
            per_shard,
            files: (per_shard + reserve) as u32,
        }
    }
}

impl Server {
    /// Binds, starts every shard, and returns once all of them are accepting.
    pub fn start(cfg: ServerConfig) -> Result<Server, StartError> {
        cfg.validate()?;
        let nofile = yorker_uring::raise_nofile_limit();
        // A few slots beyond the cap let the core answer server_full instead of the kernel
        // leaving connections stuck in the backlog with ENFILE.
        let reserve = 64u64;
        let plan = RingPlan::new(
            cfg.cores,
            cfg.core.max_connections as u64,
            nofile,
            reserve,
            cfg.multi_ring,
        );
        let files = plan.files;
        let mut core_cfg = cfg.core.clone();
        core_cfg.max_connections = plan.per_shard as usize;
        if plan.rings_per_core > 1 {
            tracing::info!(
                "--max-conns-per-core {} exceeds one ring's direct-descriptor table (RLIMIT_NOFILE {}): {} rings per core, {} connections each",
                cfg.core.max_connections, nofile, plan.rings_per_core, plan.per_shard
            );
        }
        if plan.per_shard * plan.rings_per_core < cfg.core.max_connections as u64 {
            let why = if cfg.multi_ring {
                format!("at most {MAX_SHARDS} shards in all, each ring's table capped by RLIMIT_NOFILE {nofile}")
            } else {
                format!("one ring per core, its table capped by RLIMIT_NOFILE {nofile}; give --max-conns-per-core explicitly for several rings per core")
            };
            tracing::info!(
                "--max-conns-per-core {} lowered to {} ({why})",
                cfg.core.max_connections,
                plan.per_shard * plan.rings_per_core,
            );
        }
        let shards = plan.shards;
        let core_cfg = Arc::new(core_cfg);
        let epoch = new_epoch();
        let registry = Arc::new(Registry::with_limits(epoch, cfg.registry));
        let shutdown = Arc::new(AtomicBool::new(false));
        let drain_over_ms = Arc::new(AtomicU64::new(0));
        let epoch_instant = Instant::now();

        // Bind every listener before starting any thread, so a taken port fails cleanly.
        let early_claim = if cfg.listen.port() != 0 {
            Some(claim(cfg.listen)?)
        } else {
            None
        };
        let first = bound(cfg.listen, cfg.socket_send_buffer)
            .and_then(|s| {
                // The claim is ours, so no engine is alive on this port; but an engine killed
                // a moment ago may still have listeners in the port's SO_REUSEPORT group until
                // the kernel tears its rings down, and connections hashed to them would be
                // reset. Our socket is bound, not listening: it takes no connection yet.
                if cfg.listen.port() != 0 {
                    wait_for_foreign_listeners(cfg.listen.port())?;
                }
                s.listen(cfg.backlog)?;
                Ok(s)
            })
            .map_err(|source| StartError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let addr = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| StartError::Io(io::Error::other("listener has no inet address")))?;
        // An ephemeral port is ours alone; claim it anyway so the rule has no exception.
        let claimed = match early_claim {
            Some(c) => c,
            None => claim(addr)?,
        };
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners.push(
                listener(addr, cfg.backlog, cfg.socket_send_buffer)
                    .map_err(|source| StartError::Listen { addr, source })?,
            );
        }
        let bus = Arc::new(ShardBus::new(shards, cfg.inbox_capacity, cfg.tap.clone())?);

        // Pin core i (its shards) to the i-th CPU this process may run on (respects taskset and
        // cpusets), unless --cpus chose.
        let cpus: Vec<usize> = if cfg.cpus.is_empty() {
            core_affinity::get_core_ids()
                .map(|ids| ids.into_iter().map(|c| c.id).collect())
                .unwrap_or_default()
        } else {
            cfg.cpus.clone()
        };
        let mut server = Server {
            addr,
            threads: Vec::new(),
            shutdown: shutdown.clone(),
            drain_over_ms: drain_over_ms.clone(),
            tls: cfg.core.tls.clone(),
            bus: bus.clone(),
            registry: registry.clone(),
            stats: Vec::new(),
            files_per_shard: files,
            max_frame: core_cfg.max_frame,
            _claim: claimed,
        };
        let placement = Arc::new(crate::proto::placement::Placement::new(listeners.len()));
        for (id, l) in listeners.into_iter().enumerate() {
            let st = Arc::new(SharedStats::default());
            server.stats.push(st.clone());
            let setup = ShardSetup {
                id,
                // A core's rings (shards) share its CPU.
                cpu: if cpus.is_empty() {
                    None
                } else {
                    Some(cpus[(id / plan.rings_per_core as usize) % cpus.len()])
                },
                listener: l,
                ring: RingConfig {
                    sq_entries: cfg.sq_entries,
                    cq_entries: cfg.sq_entries * 4,
                    files,
                    buf_entries: cfg.recv_buffers,
                    buf_size: cfg.recv_buffer_size,
                },
                inbox: bus.inbox(id),
                bus: bus.clone(),
                stats: st,
                shutdown: shutdown.clone(),
                drain_over_ms: drain_over_ms.clone(),
                epoch_instant,
                sends_per_round: cfg.sends_per_round,
                deliveries_per_round: cfg.deliveries_per_round,
                placement: placement.clone(),
            };
            let core = Shard::new(
                core_cfg.clone(),
                registry.clone(),
                epoch ^ ((id as u64 + 1) << 32),
            )
            .with_id(id as u8)
            .with_placement(placement.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            let t = std::thread::Builder::new()
                .name(format!("yorker-shard-{id}"))
                .spawn(move || driver::run(setup, core, tx))?;
            server.threads.push(t);
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    server.stop();
                    return Err(StartError::Uring { shard: id, source });
                }
                Err(_) => {
                    server.stop();
                    return Err(StartError::Io(io::Error::other(format!(
                        "shard {id} died during start-up"
                    ))));
                }
            }
        }
        Ok(server)
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared topic registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Every shard's inbox: where updates numbered elsewhere (a relay's feed) are handed in.
    pub fn bus(&self) -> &Arc<ShardBus> {
        &self.bus
    }

    /// The largest frame this engine's clients were promised (WELCOME).
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Direct-descriptor slots per shard.
    pub fn files_per_shard(&self) -> u32 {
        self.files_per_shard
    }

    /// Counters of each shard.
    pub fn shard_stats(&self) -> Vec<(CoreStats, u64)> {
        self.stats.iter().map(|s| s.load()).collect()
    }

    /// Sends in flight over all shards' rings.
    pub fn sends_in_flight(&self) -> u64 {
        self.stats.iter().map(|s| s.sends_in_flight()).sum()
    }

    /// Longest fan-out on any shard since the last call, µs (see `SharedStats`).
    pub fn take_fanout_max_us(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| s.take_fanout_max())
            .max()
            .unwrap_or(0)
    }

    /// Counters over all shards.
    pub fn totals(&self) -> Totals {
        let (core, enters) = stats::sum(&self.shard_stats());
        Totals {
            core,
            enters,
            frames_encoded: self.registry.frames_encoded(),
            topics: self.registry.len() as u64,
        }
    }

    /// Lame-duck drain: stop accepting, then GOAWAY each connection at a random moment within
    /// `over` (so clients reconnect elsewhere spread out, not as a herd), flush, stop.
    pub fn begin_drain(&self, over: std::time::Duration) {
        self.drain_over_ms
            .store(over.as_millis() as u64, Ordering::SeqCst);
        self.begin_shutdown();
    }

    /// Re-reads the TLS certificate and key (SIGHUP): new handshakes use them, open connections
    /// keep theirs. `Ok` without TLS configured.
    pub fn reload_tls(&self) -> Result<(), String> {
        self.tls.as_ref().map_or(Ok(()), |t| t.reload())
    }

    /// True once a shutdown or drain began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Starts a graceful shutdown: stop accepting, GOAWAY everyone, drain, stop.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.bus.ring_all();
    }

    /// Shards whose thread ended (returned an error or panicked) although no shutdown was
    /// asked for.
    pub fn dead_shards(&self) -> Vec<usize> {
        if self.shutdown.load(Ordering::SeqCst) {
            return Vec::new();
        }
        self.threads
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_finished())
            .map(|(i, _)| i)
            .collect()
    }

    /// True once every shard thread has ended.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for every shard to finish; the first shard error, if any.
    pub fn join(mut self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if result.is_ok() {
                        result = Err(e)
                    }
                }
                Err(_) => {
                    if result.is_ok() {
                        result = Err(io::Error::other("a shard thread panicked"))
                    }
                }
            }
        }
        result
    }

    fn stop(&mut self) {
        self.begin_shutdown();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

/// A fresh server epoch: 64 random bits (never 0), so that it changes at every start and
/// cannot be guessed from the start time.
fn new_epoch() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // No entropy source at all: fall back to the clock (unique, not secret).
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1)
            | 1;
    }
    u64::from_be_bytes(b).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19: a core's connections are not capped by one ring's table any more.
    #[test]
    fn rings_per_core_cover_the_cap_beyond_rlimit_nofile() {
        // Fits one ring: as before.
        let p = RingPlan::new(2, 10_000, 20_000, 64, true);
        assert_eq!(
            (p.rings_per_core, p.shards, p.per_shard, p.files),
            (1, 2, 10_000, 10_064)
        );
        // RLIMIT_NOFILE 1,024: a table holds 1,008 slots, 944 connections; 3,000 per core
        // need 4 rings of 750.
        let p = RingPlan::new(1, 3_000, 1_024, 64, true);
        assert_eq!(
            (p.rings_per_core, p.shards, p.per_shard, p.files),
            (4, 4, 750, 814)
        );
        // 100,000 per core on 16 cores with the usual 19,936 usable slots: 6 rings per core.
        let p = RingPlan::new(16, 100_000, 20_000, 64, true);
        assert_eq!((p.rings_per_core, p.shards), (6, 96));
        assert!(p.per_shard * p.rings_per_core >= 100_000);
        // At most 256 shards: the cap is lowered instead.
        let p = RingPlan::new(128, 100_000, 20_000, 64, true);
        assert_eq!((p.rings_per_core, p.shards), (2, 256));
        assert!(p.per_shard * p.rings_per_core < 100_000);
        // Without `multi` (the default cap, not asked for): one ring, the cap lowered.
        let p = RingPlan::new(2, 100_000, 20_000, 64, false);
        assert_eq!((p.rings_per_core, p.shards, p.per_shard), (1, 2, 19_920));
    }

    /// A configuration built in code gets the checks the command line gets.
    #[test]
    fn code_built_configs_are_validated() {
        let ok = ServerConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let mut c = ServerConfig::default();
        c.core.max_subscriptions = 10_000;
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "--max-subscriptions");
        let c = ServerConfig {
            cores: 0,
            ..ServerConfig::default()
        };
        assert!(matches!(
            Server::start(c),
            Err(StartError::Config(ConfigError {
                setting: "--cores",
                ..
            }))
        ));
        let mut c = ServerConfig::default();
        c.core.outbox_limit = 1000;
        assert_eq!(c.validate().unwrap_err().setting, "--outbox-limit");
    }
}
