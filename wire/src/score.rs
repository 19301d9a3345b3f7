//! The cricket score payload (docs/PROTOCOL.md, appendix A).
//!
//! One ball-by-ball event, 33 bytes, big-endian. The engine never looks inside payloads;
//! the match simulator publishes these and the demo client and `watch` decode them.

use bytes::{Buf, BufMut, BytesMut};

/// Encoded size of a [`BallEvent`].
pub const SCORE_PAYLOAD_LEN: usize = 33;
/// Version byte of this payload layout.
pub const SCORE_PAYLOAD_VERSION: u8 = 1;

/// What happened on this delivery (or to the match).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventKind {
    /// No run.
    Dot = 0,
    /// 1, 2 or 3 runs off the bat.
    Runs = 1,
    /// Boundary four.
    Four = 2,
    /// Six.
    Six = 3,
    /// Batter out.
    Wicket = 4,
    /// Wide (extra, ball not counted).
    Wide = 5,
    /// No-ball (extra, ball not counted).
    NoBall = 6,
    /// Byes.
    Bye = 7,
    /// Leg byes.
    LegBye = 8,
    /// Only the market state changed (suspended before a ball, reopened after it).
    Market = 9,
    /// The innings ended.
    InningsEnd = 10,
    /// The match ended.
    MatchEnd = 11,
}

impl EventKind {
    /// The kind for a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        use EventKind::*;
        Some(match v {
            0 => Dot,
            1 => Runs,
            2 => Four,
            3 => Six,
            4 => Wicket,
            5 => Wide,
            6 => NoBall,
            7 => Bye,
            8 => LegBye,
            9 => Market,
            10 => InningsEnd,
            11 => MatchEnd,
            _ => return None,
        })
    }
    /// True when the delivery counts towards the over (not a wide or no-ball).
    pub fn is_legal_delivery(self) -> bool {
        use EventKind::*;
        matches!(self, Dot | Runs | Four | Six | Wicket | Bye | LegBye)
    }
    /// Compact symbol for a scorecard's "last six balls".
    pub fn symbol(self, runs: u8) -> String {
        use EventKind::*;
        match self {
            Dot => ".".into(),
            Runs | Bye | LegBye => runs.to_string(),
            Four => "4".into(),
            Six => "6".into(),
            Wicket => "W".into(),
            Wide => "wd".into(),
            NoBall => "nb".into(),
            Market | InningsEnd | MatchEnd => String::new(),
        }
    }
}

/// State of the betting market on the match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MarketState {
    /// Bets accepted.
    Open = 0,
    /// Bets refused (a ball is being bowled or reviewed).
    Suspended = 1,
    /// Market settled.
    Closed = 2,
}

impl MarketState {
    /// The state for a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(MarketState::Open),
            1 => Some(MarketState::Suspended),
            2 => Some(MarketState::Closed),
            _ => None,
        }
    }
}

/// One event of a match, with the innings score after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BallEvent {
    /// What happened.
    pub kind: EventKind,
    /// Match identifier.
    pub match_id: u32,
    /// Innings, 1-based.
    pub innings: u8,
    /// Completed overs before this ball (0-based over number).
    pub over: u8,
    /// Legal ball within the over after this event, 0..=6.
    pub ball: u8,
    /// Runs from this event, extras included.
    pub runs: u8,
    /// Extras from this event.
    pub extras: u8,
    /// Innings total after this event.
    pub total_runs: u16,
    /// Wickets fallen after this event.
    pub total_wickets: u8,
    /// Batter on strike.
    pub striker_id: u32,
    /// Bowler.
    pub bowler_id: u32,
    /// Market state after this event.
    pub market: MarketState,
    /// Target in the chase (0 in the first innings).
    pub target: u16,
    /// Publisher clock, microseconds since the Unix epoch (end-to-end latency).
    pub timestamp_us: u64,
}

/// Why a score payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoreError {
    /// Not 33 bytes.
    #[error("score payload is {0} bytes, expected 33")]
    BadLength(usize),
    /// Version byte other than 1.
    #[error("score payload version {0} is not 1")]
    BadVersion(u8),
    /// Unknown event kind.
    #[error("unknown event kind {0}")]
    BadKind(u8),
    /// Unknown market state.
    #[error("unknown market state {0}")]
    BadMarket(u8),
}

impl BallEvent {
    /// Appends the 33-byte payload.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(SCORE_PAYLOAD_LEN);
        dst.put_u8(SCORE_PAYLOAD_VERSION);
        dst.put_u8(self.kind as u8);
        dst.put_u32(self.match_id);
        dst.put_u8(self.innings);
        dst.put_u8(self.over);
        dst.put_u8(self.ball);
        dst.put_u8(self.runs);
        dst.put_u8(self.extras);
        dst.put_u16(self.total_runs);
        dst.put_u8(self.total_wickets);
        dst.put_u32(self.striker_id);
        dst.put_u32(self.bowler_id);
        dst.put_u8(self.market as u8);
        dst.put_u16(self.target);
        dst.put_u64(self.timestamp_us);
    }

    /// Reads a payload.
    pub fn decode(mut b: &[u8]) -> Result<Self, ScoreError> {
        if b.len() != SCORE_PAYLOAD_LEN {
            return Err(ScoreError::BadLength(b.len()));
        }
        let v = b.get_u8();
        if v != SCORE_PAYLOAD_VERSION {
            return Err(ScoreError::BadVersion(v));
        }
        let k = b.get_u8();
        let kind = EventKind::from_u8(k).ok_or(ScoreError::BadKind(k))?;
        let match_id = b.get_u32();
        let innings = b.get_u8();
        let over = b.get_u8();
        let ball = b.get_u8();
        let runs = b.get_u8();
        let extras = b.get_u8();
        let total_runs = b.get_u16();
        let total_wickets = b.get_u8();
        let striker_id = b.get_u32();
        let bowler_id = b.get_u32();
        let m = b.get_u8();
        let market = MarketState::from_u8(m).ok_or(ScoreError::BadMarket(m))?;
        let target = b.get_u16();
        let timestamp_us = b.get_u64();
        Ok(BallEvent {
            kind,
            match_id,
            innings,
            over,
            ball,
            runs,
            extras,
            total_runs,
            total_wickets,
            striker_id,
            bowler_id,
            market,
            target,
            timestamp_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let e = BallEvent {
            kind: EventKind::Six,
            match_id: 42,
            innings: 2,
            over: 17,
            ball: 3,
            runs: 6,
            extras: 0,
            total_runs: 181,
            total_wickets: 4,
            striker_id: 18,
            bowler_id: 7,
            market: MarketState::Open,
            target: 190,
            timestamp_us: 99,
        };
        let mut b = BytesMut::new();
        e.encode(&mut b);
        assert_eq!(b.len(), SCORE_PAYLOAD_LEN);
        assert_eq!(BallEvent::decode(&b), Ok(e));
        assert_eq!(BallEvent::decode(&b[1..]), Err(ScoreError::BadLength(32)));
        let mut bad = b.to_vec();
        bad[1] = 200;
        assert_eq!(BallEvent::decode(&bad), Err(ScoreError::BadKind(200)));
        bad[0] = 2;
        assert_eq!(BallEvent::decode(&bad), Err(ScoreError::BadVersion(2)));
    }
}
