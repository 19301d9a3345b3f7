//! Counters shared between a shard thread (writer) and the stats printer and tests (readers).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::CoreStats;

macro_rules! shared_stats {
    ($($field:ident),* $(,)?) => {
        /// A shard's counters, published by the shard after every loop iteration.
        #[derive(Debug, Default)]
        pub struct SharedStats {
            $( $field: AtomicU64, )*
            /// io_uring_enter calls.
            enters: AtomicU64,
            /// Sends in flight on the ring (gauge).
            sends_in_flight: AtomicU64,
            /// Longest fan-out since last read, µs: from draining a batch of updates to the
            /// submission of the last send it caused (this shard's share of the spread between
            /// first and last subscriber).
            fanout_us_max: AtomicU64,
        }

        impl SharedStats {
            /// Publishes the core's counters and the ring's enter count.
            pub fn store(&self, s: &CoreStats, enters: u64, sends_in_flight: usize) {
                self.sends_in_flight.store(sends_in_flight as u64, Ordering::Relaxed);
                $( self.$field.store(s.$field, Ordering::Relaxed); )*
                self.enters.store(enters, Ordering::Relaxed);
            }

            /// Reads them back.
            pub fn load(&self) -> (CoreStats, u64) {
                (CoreStats { $( $field: self.$field.load(Ordering::Relaxed), )* },
                 self.enters.load(Ordering::Relaxed))
            }
        }

        impl SharedStats {
            /// Records one fan-out's duration.
            pub fn record_fanout(&self, us: u64) {
                self.fanout_us_max.fetch_max(us, Ordering::Relaxed);
            }

            /// Longest fan-out since the last call, µs (and resets it).
            pub fn take_fanout_max(&self) -> u64 {
                self.fanout_us_max.swap(0, Ordering::Relaxed)
            }

            /// Sends in flight on the shard's ring.
            pub fn sends_in_flight(&self) -> u64 {
                self.sends_in_flight.load(Ordering::Relaxed)
            }
        }

        /// Adds up shards' counters.
        pub fn sum(all: &[(CoreStats, u64)]) -> (CoreStats, u64) {
            let mut t = CoreStats::default();
            let mut enters = 0;
            for (s, e) in all {
                $( t.$field += s.$field; )*
                enters += e;
            }
            (t, enters)
        }
    };
}

shared_stats!(
    connections,
    subscriptions,
    outbox_bytes,
    accepted,
    refused_full,
    handed_off,
    handed_in,
    handoff_failed,
    refused_busy,
    resyncs,
    updates_in,
    updates_fanned_out,
    deliveries,
    conflated,
    urgent,
    slow_disconnects,
    cap_disconnects,
    errors_sent,
    write_timeouts,
    heartbeats,
    sends,
    frames_sent,
    bytes_sent,
    relay_links,
    inbound_bytes,
    frame_timeouts,
    inbound_cap_closes,
    auth_refused,
    tokens_verified,
    tokens_expired,
    messages_in,
    messages_to_backends,
    messages_acked,
    messages_refused,
    posts,
    posts_refused,
    replies,
    replies_dropped,
    control_dropped,
    ws_refused,
    ws_connections,
    tls_refused,
    tls_connections,
    member_events_dropped,
);
