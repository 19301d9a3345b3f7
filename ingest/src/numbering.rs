//! How a stream's entries become a topic's sequence numbers, sans-IO.
//!
//! A Redis stream counts every entry ever added to it (`entries-added` in `XINFO STREAM`,
//! Redis 7), trimming included. Entry number `n` is the `n`-th entry ever added, so every origin
//! reading the same stream numbers every entry alike, whenever it started and however far the
//! stream was trimmed: that number is the topic's `seq`. What it cannot survive is `XDEL` of an
//! entry after the one being numbered (the count then no longer says where it stands): entries
//! at or before the stream's largest deleted id are not numbered from the count, and the
//! ingest checks its running count against the stream's own now and then ([`Position`]).

use std::fmt;
use std::str::FromStr;

/// A stream entry id, `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct EntryId {
    /// Milliseconds (Redis' clock when the entry was added, unless the producer chose).
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EntryId {
    /// The update timestamp an entry carries: its id's time, so that every origin stamps it
    /// alike.
    pub fn timestamp_us(self) -> u64 {
        self.ms.saturating_mul(1000)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// An entry id that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a stream entry id: {0:?}")]
pub struct BadEntryId(pub String);

impl FromStr for EntryId {
    type Err = BadEntryId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadEntryId(s.chars().take(64).collect());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(EntryId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// What `XINFO STREAM` says of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamInfo {
    /// Entries ever added (`entries-added`).
    pub entries_added: u64,
    /// The newest id ever generated (`last-generated-id`), deleted or not.
    pub last_id: EntryId,
    /// The largest id ever deleted (`max-deleted-entry-id`; trimming counts too).
    pub max_deleted_id: EntryId,
}

/// Where the ingest stands in a stream: the newest entry it has numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Its id (`0-0`: nothing yet).
    pub id: EntryId,
    /// Its number (0: nothing yet).
    pub number: u64,
}

impl Position {
    /// The stream's own position: its newest entry ever is entry `entries_added`.
    pub fn of(info: &StreamInfo) -> Position {
        Position {
            id: info.last_id,
            number: info.entries_added,
        }
    }

    /// Numbers the next entry read after this position (XREAD returns entries in order).
    pub fn advance(&mut self, id: EntryId) -> u64 {
        self.id = id;
        self.number += 1;
        self.number
    }

    /// Whether the stream went backwards from here: deleted and created again (its count and
    /// ids restarted), so the numbers this position gave mean nothing any more.
    pub fn rewound(&self, info: &StreamInfo) -> bool {
        info.entries_added < self.number || info.last_id < self.id
    }

    /// Whether this position, reached by counting entries as they were read, still agrees
    /// with the stream's count (an entry deleted before the ingest read it breaks the count).
    /// Only meaningful when the ingest has read everything: `info.last_id == self.id`.
    pub fn agrees(&self, info: &StreamInfo) -> bool {
        info.last_id != self.id || info.entries_added == self.number
    }
}

/// Numbers the newest entries of a stream, as `XREVRANGE key + - COUNT n` returned them
/// (newest first) in the same transaction as `XINFO STREAM`: the newest entry ever is number
/// `entries_added`, each older one one less. Entries at or before the largest deleted id are
/// left out (a deletion after an entry shifts the count), as is everything when the newest
/// entry ever was itself deleted. Returns `(id, number)`, oldest first.
pub fn number_newest(info: &StreamInfo, newest_first: &[EntryId]) -> Vec<(EntryId, u64)> {
    if newest_first.first() != Some(&info.last_id) {
        return Vec::new();
    }
    let mut out: Vec<(EntryId, u64)> = newest_first
        .iter()
        .enumerate()
        .take_while(|&(i, id)| *id > info.max_deleted_id && (i as u64) < info.entries_added)
        .map(|(i, id)| (*id, info.entries_added - i as u64))
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    #[test]
    fn ids_parse_print_and_order() {
        let a: EntryId = "1700000000000-3".parse().unwrap();
        assert_eq!(
            a,
            EntryId {
                ms: 1_700_000_000_000,
                seq: 3
            }
        );
        assert_eq!(a.to_string(), "1700000000000-3");
        assert!(a < "1700000000000-4".parse().unwrap());
        assert!(a < "1700000000001-0".parse().unwrap());
        assert!("12".parse::<EntryId>().is_err());
        assert!("a-1".parse::<EntryId>().is_err());
        assert_eq!(a.timestamp_us(), 1_700_000_000_000_000);
    }

    #[test]
    fn newest_entries_are_numbered_from_the_count() {
        // 10 entries added, the oldest 7 trimmed away (trimming moves max-deleted).
        let info = StreamInfo {
            entries_added: 10,
            last_id: id(10),
            max_deleted_id: id(7),
        };
        let got = number_newest(&info, &[id(10), id(9), id(8)]);
        assert_eq!(got, vec![(id(8), 8), (id(9), 9), (id(10), 10)]);
        // Asked for more than there is: the same.
        assert_eq!(number_newest(&info, &[id(10), id(9), id(8)]).len(), 3);
        // An entry deleted in the middle: only what follows it is numbered.
        let info = StreamInfo {
            max_deleted_id: id(9),
            ..info
        };
        assert_eq!(number_newest(&info, &[id(10), id(8)]), vec![(id(10), 10)]);
        // The newest entry ever deleted: nothing can be numbered from the count.
        let info = StreamInfo {
            max_deleted_id: id(10),
            ..info
        };
        assert_eq!(number_newest(&info, &[id(8)]), vec![]);
        // An empty stream.
        assert_eq!(number_newest(&StreamInfo::default(), &[]), vec![]);
    }

    #[test]
    fn positions_count_and_notice_a_rewound_stream() {
        let info = StreamInfo {
            entries_added: 5,
            last_id: id(5),
            max_deleted_id: EntryId::default(),
        };
        let mut p = Position::of(&info);
        assert_eq!(p.advance(id(6)), 6);
        assert_eq!(p.advance(id(7)), 7);
        let now = StreamInfo {
            entries_added: 7,
            last_id: id(7),
            ..info
        };
        assert!(p.agrees(&now) && !p.rewound(&now));
        // An unread entry was deleted: the count no longer matches.
        let now = StreamInfo {
            entries_added: 8,
            ..now
        };
        assert!(!p.agrees(&now));
        // Deleted and created again.
        let new = StreamInfo {
            entries_added: 2,
            last_id: id(9),
            ..info
        };
        assert!(p.rewound(&new));
    }

    proptest! {
        /// Two origins that read the same stream at different moments (after different amounts
        /// of trimming) give every entry they both number the same number, which is its
        /// position among all entries ever added.
        #[test]
        fn two_readers_agree(total in 1u64..200, trimmed_a in 0u64..200, trimmed_b in 0u64..200,
                             window in 1usize..50) {
            let reader = |trimmed: u64| {
                let trimmed = trimmed.min(total - 1);
                let info = StreamInfo {
                    entries_added: total,
                    last_id: id(total),
                    max_deleted_id: id(trimmed),
                };
                let newest: Vec<EntryId> = (trimmed + 1..=total).rev().take(window).map(id).collect();
                number_newest(&info, &newest)
            };
            for (i, n) in reader(trimmed_a).into_iter().chain(reader(trimmed_b)) {
                prop_assert_eq!(i.ms, n);
            }
        }
    }
}
