//! A T20 match simulator: ball by ball, with the betting market suspended around every ball.
//! Deterministic for a seed, so tests and benchmarks replay the same match.

use yorker_wire::score::{BallEvent, EventKind, MarketState};

/// Small deterministic RNG (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded; a zero seed is replaced.
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One event to publish and whether it is urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The event.
    pub event: BallEvent,
    /// Publish with URGENT (market suspensions).
    pub urgent: bool,
}

/// A match in progress.
#[derive(Debug, Clone)]
pub struct Match {
    rng: Rng,
    id: u32,
    innings: u8,
    over: u8,
    ball: u8,
    total: u16,
    wickets: u8,
    target: u16,
    striker: u32,
    non_striker: u32,
    next_batter: u32,
    bowler: u32,
    /// Phase within a ball: 0 suspend market, 1 the ball, 2 reopen market.
    phase: u8,
    done: bool,
}

const OVERS: u8 = 20;

impl Match {
    /// A new match.
    pub fn new(id: u32, seed: u64) -> Self {
        Match {
            rng: Rng::new(seed ^ id as u64),
            id,
            innings: 1,
            over: 0,
            ball: 0,
            total: 0,
            wickets: 0,
            target: 0,
            striker: 1,
            non_striker: 2,
            next_batter: 3,
            bowler: 101,
            phase: 0,
            done: false,
        }
    }

    /// The match id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// True once the match ended.
    pub fn is_over(&self) -> bool {
        self.done
    }

    fn event(
        &self,
        kind: EventKind,
        runs: u8,
        extras: u8,
        market: MarketState,
        ts: u64,
    ) -> BallEvent {
        BallEvent {
            kind,
            match_id: self.id,
            innings: self.innings,
            over: self.over,
            ball: self.ball,
            runs,
            extras,
            total_runs: self.total,
            total_wickets: self.wickets,
            striker_id: self.striker,
            bowler_id: self.bowler,
            market,
            target: self.target,
            timestamp_us: ts,
        }
    }

    /// The next event, stamped `now_us`; `None` once the match is over.
    pub fn next_step(&mut self, now_us: u64) -> Option<Step> {
        if self.done {
            return None;
        }
        match self.phase {
            0 => {
                self.phase = 1;
                Some(Step {
                    event: self.event(EventKind::Market, 0, 0, MarketState::Suspended, now_us),
                    urgent: true,
                })
            }
            1 => {
                self.phase = 2;
                Some(Step {
                    event: self.bowl(now_us),
                    urgent: false,
                })
            }
            _ => {
                self.phase = 0;
                if let Some(end) = self.end_of_innings(now_us) {
                    return Some(end);
                }
                Some(Step {
                    event: self.event(EventKind::Market, 0, 0, MarketState::Open, now_us),
                    urgent: false,
                })
            }
        }
    }

    fn bowl(&mut self, now_us: u64) -> BallEvent {
        let r = self.rng.below(1000);
        // Rough T20 frequencies per delivery.
        let (kind, runs, extras) = match r {
            0..=329 => (EventKind::Dot, 0, 0),
            330..=629 => (EventKind::Runs, 1, 0),
            630..=719 => (EventKind::Runs, 2, 0),
            720..=729 => (EventKind::Runs, 3, 0),
            730..=849 => (EventKind::Four, 4, 0),
            850..=899 => (EventKind::Six, 6, 0),
            900..=949 => (EventKind::Wicket, 0, 0),
            950..=979 => (EventKind::Wide, 1, 1),
            980..=989 => (EventKind::NoBall, 1, 1),
            990..=994 => (EventKind::Bye, 1, 1),
            _ => (EventKind::LegBye, 1, 1),
        };
        self.total += runs as u16;
        if kind == EventKind::Wicket {
            self.wickets += 1;
            self.striker = self.next_batter;
            self.next_batter += 1;
        }
        if kind.is_legal_delivery() {
            self.ball += 1;
        }
        if runs % 2 == 1 {
            std::mem::swap(&mut self.striker, &mut self.non_striker);
        }
        let e = self.event(kind, runs, extras, MarketState::Suspended, now_us);
        if self.ball == 6 {
            self.ball = 0;
            self.over += 1;
            std::mem::swap(&mut self.striker, &mut self.non_striker);
            self.bowler = 101 + (self.bowler - 100) % 5;
        }
        e
    }

    fn end_of_innings(&mut self, now_us: u64) -> Option<Step> {
        let chased = self.innings == 2 && self.total >= self.target;
        if !(self.over >= OVERS || self.wickets >= 10 || chased) {
            return None;
        }
        if self.innings == 1 {
            let e = self.event(EventKind::InningsEnd, 0, 0, MarketState::Open, now_us);
            self.target = self.total + 1;
            self.innings = 2;
            self.over = 0;
            self.ball = 0;
            self.total = 0;
            self.wickets = 0;
            self.striker = 201;
            self.non_striker = 202;
            self.next_batter = 203;
            Some(Step {
                event: e,
                urgent: false,
            })
        } else {
            self.done = true;
            Some(Step {
                event: self.event(EventKind::MatchEnd, 0, 0, MarketState::Closed, now_us),
                urgent: true,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_match_is_plausible_and_deterministic() {
        let play = |seed| {
            let mut m = Match::new(7, seed);
            let mut steps = Vec::new();
            while let Some(s) = m.next_step(0) {
                steps.push(s);
                assert!(steps.len() < 5_000, "match never ends");
            }
            steps
        };
        let a = play(1);
        assert_eq!(a, play(1));
        let last = a.last().unwrap().event;
        assert_eq!(last.kind, EventKind::MatchEnd);
        assert_eq!(last.market, MarketState::Closed);
        let legal = a
            .iter()
            .filter(|s| s.event.kind.is_legal_delivery())
            .count();
        assert!(legal > 60 && legal <= 240, "{legal} legal balls");
        // Every ball is preceded by an urgent suspension.
        for w in a.windows(2) {
            if w[1].event.kind.is_legal_delivery() {
                assert_eq!((w[0].event.kind, w[0].urgent), (EventKind::Market, true));
            }
        }
        assert!(a.iter().any(|s| s.event.kind == EventKind::Four));
        assert!(a.iter().any(|s| s.event.kind == EventKind::Wicket));
    }
}
