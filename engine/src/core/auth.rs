//! Who may do what: topic patterns, the private `user/` namespace.

/// The first segment of every per-user topic: `user/<subject>` and below are private to the
/// session whose token has that subject.
pub const USER_PREFIX: &str = "user";

/// True for topics under `user/`, which only their user may subscribe to.
pub fn is_private(topic: &str) -> bool {
    topic.split('/').next() == Some(USER_PREFIX)
}
