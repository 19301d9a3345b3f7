//! Memory caps over the whole shard: queued bytes (`--shard-outbox-cap`) and partly received
//! frames (`--shard-inbound-cap`). Per-connection limits live where the memory is taken
//! (outbox, session); these catch what many connections add up to.

use yorker_wire::ErrorCode;

use super::slot::State;
use super::{Now, Shard};

impl Shard {
    /// The live connections and what `f` says each holds.
    fn holdings(&self, f: impl Fn(&super::slot::Conn) -> usize) -> Vec<(usize, u32)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.state {
                State::Live(c) => Some((f(c), i as u32)),
                _ => None,
            })
            .filter(|&(b, _)| b > 0)
            .collect()
    }

    /// Over the shard's cap on partial frames, close the connections holding the largest ones
    /// until back under it. Only a flood of partial frames gets here, so the scan is rare.
    pub(crate) fn enforce_inbound_cap(&mut self, now: Now) {
        if self.inbound_bytes <= self.cfg.shard_inbound_cap {
            return;
        }
        let mut big = self.holdings(|c| c.pending.as_ref().map_or(0, |p| p.capacity()));
        big.sort_unstable_by(|a, b| b.cmp(a));
        for (_, slot) in big {
            if self.inbound_bytes <= self.cfg.shard_inbound_cap {
                break;
            }
            self.stats.inbound_cap_closes += 1;
            self.fail(
                slot,
                ErrorCode::ServerBusy,
                "server memory cap for partial frames reached",
                now,
            );
        }
    }

    /// Over the shard's cap on queued bytes, close the largest outboxes first until back under
    /// 90% of it.
    pub(crate) fn enforce_shard_cap(&mut self, now: Now) {
        if self.total_outbox <= self.cfg.shard_outbox_cap {
            return;
        }
        let mut big = self.holdings(|c| c.outbox.bytes());
        big.sort_unstable_by(|a, b| b.cmp(a));
        let target = self.cfg.shard_outbox_cap / 10 * 9;
        for (_, slot) in big {
            if self.total_outbox <= target {
                break;
            }
            self.stats.slow_disconnects += 1;
            self.stats.cap_disconnects += 1;
            self.fail(
                slot,
                ErrorCode::SlowConsumer,
                "server memory cap reached",
                now,
            );
        }
    }
}
