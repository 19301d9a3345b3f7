//! Topic-name rules (docs/PROTOCOL.md, "Topic names").
//!
//! A name is 1 to 255 bytes of `A-Z a-z 0-9 . _ - :` and `/`, where `/` separates non-empty
//! segments (no leading, trailing or doubled `/`). Names are case-sensitive. The rules keep
//! names printable in logs and leave room for wildcards in a later version.

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// Why a topic name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty name.
    #[error("topic name is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`].
    #[error("topic name is longer than 255 bytes")]
    TooLong,
    /// A byte outside the allowed set.
    #[error("topic name contains byte 0x{0:02x}, outside A-Z a-z 0-9 . _ - : /")]
    BadByte(u8),
    /// Leading, trailing or doubled `/`.
    #[error("topic name has an empty segment (leading, trailing or doubled '/')")]
    EmptySegment,
}

/// Checks a topic name against the rules.
pub fn validate(name: &str) -> Result<(), TopicError> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Err(TopicError::Empty);
    }
    if b.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if let Some(&bad) = b
        .iter()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b':' | b'/')))
    {
        return Err(TopicError::BadByte(bad));
    }
    if b[0] == b'/' || b[b.len() - 1] == b'/' || name.contains("//") {
        return Err(TopicError::EmptySegment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["match/1234/score", "a", "ipl:2026/final-1.v2", "X_Y"] {
            assert_eq!(validate(n), Ok(()), "{n}");
        }
        assert_eq!(validate(&"a".repeat(255)), Ok(()));
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(validate(""), Err(TopicError::Empty));
        assert_eq!(validate(&"a".repeat(256)), Err(TopicError::TooLong));
        assert_eq!(validate("a b"), Err(TopicError::BadByte(b' ')));
        assert_eq!(validate("a/#"), Err(TopicError::BadByte(b'#')));
        assert_eq!(validate("é"), Err(TopicError::BadByte(0xc3)));
        assert_eq!(validate("/a"), Err(TopicError::EmptySegment));
        assert_eq!(validate("a/"), Err(TopicError::EmptySegment));
        assert_eq!(validate("a//b"), Err(TopicError::EmptySegment));
    }
}
