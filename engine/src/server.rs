//! Starting and stopping a whole engine: listeners, shards, the bus.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::relay::origin::Origin;
use crate::relay::{FeedStats, Injector, MulticastOut};
use crate::stats::{self, SharedStats};

/// Everything needed to start an engine.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0: pick a free one).
    pub listen: SocketAddr,
    /// Number of shards.
    pub cores: usize,
    /// CPUs to pin shard `i` to (`cpus[i % len]`); empty: the CPUs the process may use.
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
    /// Multicast every update to relays (origin side of docs/RELAYS.md).
    pub multicast: Option<MulticastOut>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7000".parse().expect("valid"),
            cores: 1,
            cpus: Vec::new(),
            core: CoreConfig::default(),
            registry: RegistryLimits::default(),
            backlog: 4096,
            recv_buffers: 2048,
            recv_buffer_size: 2048,
            sq_entries: 4096,
            sends_per_round: 1024,
            multicast: None,
        }
    }
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
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
    bus: Arc<ShardBus>,
    registry: Arc<Registry>,
    stats: Vec<Arc<SharedStats>>,
    files_per_shard: u32,
    max_frame: u32,
    feed_stats: Arc<FeedStats>,
    origin: Option<Origin>,
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

fn listener(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: gathered sends are already
    // batched, so Nagle would only add latency.
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s)
}

impl Server {
    /// Binds, starts every shard, and returns once all of them are accepting.
    pub fn start(cfg: ServerConfig) -> Result<Server, StartError> {
        if cfg.cores == 0 || cfg.cores > 1024 {
            return Err(StartError::Config(
                "--cores must be between 1 and 1024".into(),
            ));
        }
        if !cfg.recv_buffers.is_power_of_two() || cfg.recv_buffers > 32768 {
            return Err(StartError::Config(
                "--recv-buffers must be a power of two <= 32768".into(),
            ));
        }
        let nofile = yorker_uring::raise_nofile_limit();
        // A few slots beyond the cap let the core answer server_full instead of the kernel
        // leaving connections stuck in the backlog with ENFILE.
        let reserve = 64u64;
        let want = cfg.core.max_connections as u64 + reserve;
        let files = want.min(nofile.saturating_sub(16)).max(reserve + 1) as u32;
        let mut core_cfg = cfg.core.clone();
        core_cfg.max_connections = core_cfg
            .max_connections
            .min((files as u64 - reserve) as usize);
        if core_cfg.max_connections < cfg.core.max_connections {
            eprintln!(
                "yorker: --max-conns-per-core {} lowered to {} (RLIMIT_NOFILE {} caps each ring's direct-descriptor table)",
                cfg.core.max_connections, core_cfg.max_connections, nofile
            );
        }
        let core_cfg = Arc::new(core_cfg);
        let epoch = new_epoch();
        let registry = Arc::new(Registry::with_limits(epoch, cfg.registry));
        let shutdown = Arc::new(AtomicBool::new(false));
        let epoch_instant = Instant::now();

        // Bind every listener before starting any thread, so a taken port fails cleanly.
        let early_claim = if cfg.listen.port() != 0 {
            Some(claim(cfg.listen)?)
        } else {
            None
        };
        let first = listener(cfg.listen, cfg.backlog).map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
        let addr = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| StartError::Config("listener has no inet address".into()))?;
        // An ephemeral port is ours alone; claim it anyway so the rule has no exception.
        let claimed = match early_claim {
            Some(c) => c,
            None => claim(addr)?,
        };
        let mut listeners = vec![first];
        for _ in 1..cfg.cores {
            listeners.push(
                listener(addr, cfg.backlog)
                    .map_err(|source| StartError::Listen { addr, source })?,
            );
        }
        let feed_stats = Arc::new(FeedStats::default());
        let (tap, origin) = match &cfg.multicast {
            Some(m) => {
                // NAKs come to the listen address, over UDP.
                let (tap, origin) = Origin::start(m, addr, registry.clone(), feed_stats.clone())
                    .map_err(|e| {
                        StartError::Config(format!(
                            "cannot start the multicast feed (interface {}, NAKs on udp {addr}): {e}",
                            m.interface
                        ))
                    })?;
                (Some(tap), Some(origin))
            }
            None => (None, None),
        };
        let bus = Arc::new(ShardBus::new(cfg.cores, tap)?);

        // Pin shard i to the i-th CPU this process may run on (respects taskset and cpusets),
        // unless --cpus chose.
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
            bus: bus.clone(),
            registry: registry.clone(),
            stats: Vec::new(),
            files_per_shard: files,
            max_frame: core_cfg.max_frame,
            feed_stats,
            origin,
            _claim: claimed,
        };
        for (id, l) in listeners.into_iter().enumerate() {
            let st = Arc::new(SharedStats::default());
            server.stats.push(st.clone());
            let setup = ShardSetup {
                id,
                cpu: if cpus.is_empty() {
                    None
                } else {
                    Some(cpus[id % cpus.len()])
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
                epoch_instant,
                sends_per_round: cfg.sends_per_round,
            };
            let core = Shard::new(
                core_cfg.clone(),
                registry.clone(),
                epoch ^ ((id as u64 + 1) << 32),
            );
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

    /// Feeds updates numbered elsewhere into this engine's shards (a relay's follower).
    pub fn injector(&self) -> Injector {
        Injector::new(
            self.registry.clone(),
            self.bus.clone(),
            self.feed_stats.clone(),
            self.max_frame,
        )
    }

    /// Relay-feed counters (multicast out on an origin, feed in on a relay).
    pub fn feed_stats(&self) -> &Arc<FeedStats> {
        &self.feed_stats
    }

    /// True when this engine multicasts a relay feed.
    pub fn has_feed(&self) -> bool {
        self.origin.is_some()
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

    /// Starts a graceful shutdown: stop accepting, GOAWAY everyone, drain, stop.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.bus.ring_all();
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
        if let Some(mut o) = self.origin.take() {
            o.stop();
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
