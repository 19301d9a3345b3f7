//! # yorker-relay
//!
//! Relays: an origin engine feeds relay engines, each serving its own clients (docs/RELAYS.md).
//! This crate stands on `yorker-engine` and attaches to it from outside: the origin's feed is a
//! [`yorker_engine::bus::Tap`] on the engine's bus, and a relay's updates go in through an
//! [`Injector`] over the engine's registry and bus. The engine knows nothing of relays.
//!
//! * [`packer`] and [`receiver`] are sans-IO: datagram packing and the retransmit ring on the
//!   origin; ordering, gap detection, NAK timing and snapshot fallback on the relay.
//! * [`origin`] runs next to an engine started with `--multicast-out`: it multicasts every
//!   update as the shards get it, sends heartbeats, and answers NAKs from the ring.
//! * [`upstream`] is a relay-role TCP session to an upstream engine: a one-off snapshot of every
//!   topic (multicast recovery), or the whole feed (`--upstream`).
//! * [`follower`] drives a relay: the multicast receiver, or the TCP upstream, feeding the
//!   relay's own shards through [`Injector`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod follower;
pub mod origin;
pub mod packer;
pub mod receiver;
pub mod upstream;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use yorker_wire::Update;

use yorker_engine::bus::ShardBus;
use yorker_engine::proto::registry::Registry;
use yorker_engine::proto::registry::{Applied, Topic, TopicLimit};

/// Settings of the origin's multicast feed (`yorker serve --multicast-out`).
#[derive(Debug, Clone)]
pub struct MulticastOut {
    /// Groups to send every datagram to (two for an A/B feed).
    pub groups: Vec<SocketAddrV4>,
    /// Local address of the interface to send from (required: never a default route).
    pub interface: Ipv4Addr,
    /// IP TTL of the datagrams (1: never leaves the subnet).
    pub ttl: u32,
    /// Channel number in every header.
    pub channel: u16,
    /// Largest datagram, bytes (UDP payload).
    pub max_datagram: usize,
    /// Heartbeat interval while idle, ms.
    pub heartbeat_ms: u64,
    /// How long the retransmit ring keeps a datagram, ms.
    pub retransmit_ms: u64,
    /// Bytes the retransmit ring holds at most.
    pub retransmit_bytes: usize,
    /// The relay key: NAKs must carry a tag made with it. `None` (only with
    /// `--allow-anonymous-relays`): NAKs are answered untagged, rate limits still apply.
    pub nak_key: Option<Vec<u8>>,
}

impl MulticastOut {
    /// The largest `--max-frame` an origin with a feed may announce: every update (behind its
    /// topic name and the datagram header) fits one datagram.
    pub const MAX_FRAME: u32 =
        (yorker_wire::feed::MAX_DATAGRAM - yorker_wire::feed::FEED_HEADER_LEN - 256 - 4) as u32;

    /// Checks the feed's settings against the engine's `max_frame` and relay policy.
    pub fn validate(&self, max_frame: u32, allow_anonymous_relays: bool) -> Result<(), String> {
        let need = |ok: bool, msg: &str| if ok { Ok(()) } else { Err(msg.to_string()) };
        need(
            !self.groups.is_empty() && self.groups.iter().all(|g| g.ip().is_multicast()),
            "--multicast-out needs multicast groups (224.0.0.0/4)",
        )?;
        need(
            (yorker_wire::feed::MIN_DATAGRAM..=yorker_wire::feed::MAX_DATAGRAM)
                .contains(&self.max_datagram),
            "--multicast-datagram must be between 256 and 65507",
        )?;
        need(
            self.heartbeat_ms >= 1 && self.ttl <= 255,
            "--multicast-heartbeat-ms must be at least 1 and --multicast-ttl at most 255",
        )?;
        need(
            self.nak_key.is_some() || allow_anonymous_relays,
            "--multicast-out needs --relay-key: relays sign their NAKs with it, and an origin answers no unsigned NAK (or give --allow-anonymous-relays)",
        )?;
        need(
            max_frame <= Self::MAX_FRAME,
            "--max-frame is too large for a multicast feed (every update must fit one datagram)",
        )
    }
}

/// Feed counters, shared between the feed threads and the stats line. On an origin the
/// `*_out`, NAK-received and retransmit counters move; on a relay the others.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Datagrams multicast (DATA, HEARTBEAT and retransmits).
    pub datagrams_out: AtomicU64,
    /// Datagrams received from the group.
    pub datagrams_in: AtomicU64,
    /// Datagrams refused as malformed.
    pub bad_datagrams: AtomicU64,
    /// Gaps found in the packet sequence.
    pub gaps: AtomicU64,
    /// NAKs sent (relay) or received (origin).
    pub naks: AtomicU64,
    /// Datagrams retransmitted (origin) or recovered after a gap (relay).
    pub retransmits: AtomicU64,
    /// NAKed ranges the ring no longer held (origin).
    pub unavailable: AtomicU64,
    /// NAKs refused (origin): bad or missing tag, stale send time, over a rate limit.
    pub naks_refused: AtomicU64,
    /// Snapshots fetched to resynchronise (not counting the one at start-up).
    pub snapshot_fallbacks: AtomicU64,
    /// Updates applied to this relay's registry (fanned out), duplicates excluded.
    pub updates_applied: AtomicU64,
    /// Updates that arrived twice (snapshot overlap, A/B, retransmits) and were dropped.
    pub duplicates: AtomicU64,
    /// Updates fanned out as SNAPSHOT|RESET because continuity broke.
    pub resets: AtomicU64,
    /// Updates the origin could not queue for multicast (relays resynchronise).
    pub overruns: AtomicU64,
    /// Updates dropped because their topic would exceed this relay's `--max-topics`.
    pub topic_limit_drops: AtomicU64,
    /// Updates dropped because their frame exceeds this relay's `--max-frame`.
    pub oversize_drops: AtomicU64,
    /// Relay lag: origin accept time to applied here, µs, of the latest update (gauge).
    pub lag_us: AtomicU64,
    /// Largest lag since the stats line last read it, µs.
    pub lag_max_us: AtomicU64,
    /// Errors reading an ingest source (each ends the reader's session; it reconnects).
    pub source_errors: AtomicU64,
    /// Topics a relay caught up on after moving to an upstream of the same epoch (their
    /// missed updates replayed instead of a SNAPSHOT|RESET).
    pub catch_ups: AtomicU64,
    /// Times a relay's multicast feed fell silent (no datagram for `--feed-silence-ms`).
    pub silences: AtomicU64,
    /// A relay holds a synchronised snapshot of its upstream and follows it (readiness).
    pub synced: std::sync::atomic::AtomicBool,
}

impl FeedStats {
    /// The monotonic counters, by name (for metrics exporters).
    pub fn counters(&self) -> [(&'static str, u64); 18] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("datagrams_out", g(&self.datagrams_out)),
            ("datagrams_in", g(&self.datagrams_in)),
            ("bad_datagrams", g(&self.bad_datagrams)),
            ("gaps", g(&self.gaps)),
            ("naks", g(&self.naks)),
            ("naks_refused", g(&self.naks_refused)),
            ("retransmits", g(&self.retransmits)),
            ("unavailable", g(&self.unavailable)),
            ("snapshot_fallbacks", g(&self.snapshot_fallbacks)),
            ("updates_applied", g(&self.updates_applied)),
            ("duplicates", g(&self.duplicates)),
            ("resets", g(&self.resets)),
            ("overruns", g(&self.overruns)),
            ("topic_limit_drops", g(&self.topic_limit_drops)),
            ("oversize_drops", g(&self.oversize_drops)),
            ("source_errors", g(&self.source_errors)),
            ("catch_ups", g(&self.catch_ups)),
            ("silences", g(&self.silences)),
        ]
    }

    /// Relay lag of the latest update, µs (origin accept time to applied here).
    pub fn lag_us(&self) -> u64 {
        self.lag_us.load(Ordering::Relaxed)
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Records the lag of one applied update.
    pub fn lag(&self, us: u64) {
        self.lag_us.store(us, Ordering::Relaxed);
        self.lag_max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// One-line summary for the stats line.
    pub fn line(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "feed: datagrams_out={} datagrams_in={} bad={} gaps={} naks={} naks_refused={} retransmits={} unavailable={} snapshot_fallbacks={} applied={} duplicates={} resets={} overruns={} topic_limit_drops={} oversize_drops={} source_errors={} catch_ups={} silences={} lag_us={} lag_max_us={}",
            g(&self.datagrams_out),
            g(&self.datagrams_in),
            g(&self.bad_datagrams),
            g(&self.gaps),
            g(&self.naks),
            g(&self.naks_refused),
            g(&self.retransmits),
            g(&self.unavailable),
            g(&self.snapshot_fallbacks),
            g(&self.updates_applied),
            g(&self.duplicates),
            g(&self.resets),
            g(&self.overruns),
            g(&self.topic_limit_drops),
            g(&self.oversize_drops),
            g(&self.source_errors),
            g(&self.catch_ups),
            g(&self.silences),
            g(&self.lag_us),
            self.lag_max_us.swap(0, Ordering::Relaxed),
        )
    }
}

/// Feeds updates numbered by an origin into a relay's own shards, as if published locally.
#[derive(Debug, Clone)]
pub struct Injector {
    registry: Arc<Registry>,
    bus: Arc<ShardBus>,
    stats: Arc<FeedStats>,
    max_frame: u32,
}

impl Injector {
    /// An injector into `server`'s shards, counting into `stats`.
    pub fn for_server(server: &yorker_engine::Server, stats: Arc<FeedStats>) -> Self {
        Injector::new(
            server.registry().clone(),
            server.bus().clone(),
            stats,
            server.max_frame(),
        )
    }

    /// An injector into `registry`'s shards, whose clients were promised frames of at most
    /// `max_frame` bytes.
    pub fn new(
        registry: Arc<Registry>,
        bus: Arc<ShardBus>,
        stats: Arc<FeedStats>,
        max_frame: u32,
    ) -> Self {
        Injector {
            registry,
            bus,
            stats,
            max_frame,
        }
    }

    /// The relay's registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The feed counters.
    pub fn stats(&self) -> &Arc<FeedStats> {
        &self.stats
    }

    /// The relay's topic for an origin topic name. Beyond this relay's topic cap the update is
    /// dropped and counted (the first time with a line on stderr): raise `--max-topics` on
    /// relays at least as high as on the origin.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, TopicLimit> {
        self.registry.get_or_create(name).inspect_err(|e| {
            if self.stats.topic_limit_drops.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("updates of topic {name:?} and others dropped: {e}");
            }
        })
    }

    /// Applies one update of the origin (see [`Registry::apply`]). An update too large for
    /// this relay's clients is dropped and counted; the topic's next update then shows the
    /// break as SNAPSHOT|RESET.
    pub fn apply(&self, topic: &Topic, u: &Update, now_us: u64) -> Applied {
        let len = yorker_wire::UPDATE_HEADER_LEN - yorker_wire::LENGTH_PREFIX + u.payload.len();
        if len > self.max_frame as usize {
            if self.stats.oversize_drops.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    "an update of {} bytes exceeds --max-frame {}: dropped (give relays at least the origin's --max-frame)",
                    len, self.max_frame
                );
            }
            return Applied::Dropped;
        }
        let bus = &self.bus;
        let a = self.registry.apply(topic, u, &mut |m| bus.publish(m));
        match a {
            Applied::Duplicate => FeedStats::add(&self.stats.duplicates, 1),
            Applied::Dropped => {}
            Applied::InOrder | Applied::Reset => {
                FeedStats::add(&self.stats.updates_applied, 1);
                if a == Applied::Reset {
                    FeedStats::add(&self.stats.resets, 1);
                }
                if u.flags & yorker_wire::update_flags::SNAPSHOT == 0 {
                    self.stats.lag(now_us.saturating_sub(u.timestamp_us));
                }
            }
        }
        a
    }
}

/// Wall clock, µs since the Unix epoch.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
