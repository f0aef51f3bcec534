//! Redis stream ids (`<ms>-<seq>`), compared as numbers: string order is wrong ("9-0" > "10-0").

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(StreamId { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_order_and_round_trip() {
        let a = StreamId::parse("9-5").unwrap();
        let b = StreamId::parse("10-0").unwrap();
        assert!(a < b);
        assert!(StreamId::parse("10-1").unwrap() > b);
        assert_eq!(StreamId::parse("12").unwrap().to_string(), "12-0");
        assert_eq!(b.to_string(), "10-0");
        assert!(StreamId::parse("x-1").is_none());
        assert!(StreamId::parse("").is_none());
    }
}
