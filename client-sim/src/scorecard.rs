//! The live scorecard of `yorker-sim watch`: state built from score events, and its rendering.

use yorker_wire::score::{BallEvent, EventKind, MarketState};

/// What a viewer sees of one match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scorecard {
    /// Latest event.
    pub last: Option<BallEvent>,
    /// Symbols of the last six deliveries, oldest first.
    pub recent: Vec<String>,
    /// First-innings total once known.
    pub first_innings: Option<(u16, u8)>,
    /// Updates applied.
    pub updates: u64,
}

impl Scorecard {
    /// Applies one event.
    pub fn apply(&mut self, e: BallEvent) {
        self.updates += 1;
        if e.kind == EventKind::InningsEnd {
            self.first_innings = Some((e.total_runs, e.total_wickets));
            self.recent.clear();
        }
        let sym = e.kind.symbol(e.runs);
        if !sym.is_empty() {
            self.recent.push(sym);
            if self.recent.len() > 6 {
                self.recent.remove(0);
            }
        }
        self.last = Some(e);
    }

    /// The scorecard as text (no terminal control codes).
    pub fn render(&self) -> String {
        let Some(e) = self.last else {
            return "waiting for the first ball...\n".into();
        };
        let market = match e.market {
            MarketState::Open => "OPEN",
            MarketState::Suspended => "SUSPENDED",
            MarketState::Closed => "CLOSED",
        };
        let mut s = format!(
            "Match {}  innings {}\n{}/{}  ({}.{} ov)",
            e.match_id, e.innings, e.total_runs, e.total_wickets, e.over, e.ball
        );
        if e.target > 0 {
            let need = e.target.saturating_sub(e.total_runs);
            s += &format!("  target {}  need {}", e.target, need);
        }
        if let Some((r, w)) = self.first_innings {
            s += &format!("  (1st innings {r}/{w})");
        }
        s += &format!(
            "\nlast balls: {}\nstriker #{}  bowler #{}\nmarket: {}\n",
            if self.recent.is_empty() {
                "-".to_string()
            } else {
                self.recent.join(" ")
            },
            e.striker_id,
            e.bowler_id,
            market
        );
        if e.kind == EventKind::MatchEnd {
            s += "match over\n";
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matchsim::Match;

    #[test]
    fn renders_a_recorded_stream() {
        let mut m = Match::new(3, 42);
        let mut card = Scorecard::default();
        let mut recorded = Vec::new();
        for _ in 0..40 {
            recorded.push(m.next_step(1).unwrap().event);
        }
        for e in &recorded {
            card.apply(*e);
        }
        let text = card.render();
        let last = recorded.last().unwrap();
        assert!(
            text.contains(&format!("{}/{}", last.total_runs, last.total_wickets)),
            "{text}"
        );
        assert!(
            text.contains(&format!("({}.{} ov)", last.over, last.ball)),
            "{text}"
        );
        assert!(text.contains("market: "));
        assert!(card.recent.len() <= 6);
        // The last six symbols are the last six deliveries'.
        let want: Vec<String> = recorded
            .iter()
            .map(|e| e.kind.symbol(e.runs))
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(card.recent, want[want.len() - card.recent.len()..].to_vec());
        assert_eq!(
            Scorecard::default().render(),
            "waiting for the first ball...\n"
        );
    }
}
