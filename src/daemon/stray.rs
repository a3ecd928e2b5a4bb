//! Messages on topics the agent never subscribed to as commands (a bridge that maps topics, a
//! broker that delivers more than asked): ignored, and said once per topic, not once per
//! message, so a flood of them cannot flood the journal.

use crate::sync::Lock;
use std::collections::HashSet;
use std::sync::Mutex;

/// Topics already reported; at most this many are remembered (then one more line says so and
/// the rest are counted silently).
const REMEMBERED: usize = 64;

struct Seen {
    topics: HashSet<String>,
    /// Stray messages since the last report of a new topic, for that line.
    more: u64,
    full: bool,
}

static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

/// A message arrived on `topic`, which is not one the agent takes: a warning the first time
/// this topic is seen.
pub fn warn(topic: &str) {
    let mut seen = SEEN.locked();
    let seen = seen.get_or_insert_with(|| Seen {
        topics: HashSet::new(),
        more: 0,
        full: false,
    });
    if seen.topics.contains(topic) {
        seen.more += 1;
        return;
    }
    if seen.topics.len() >= REMEMBERED {
        seen.more += 1;
        if !seen.full {
            seen.full = true;
            tracing::warn!(
                topics = REMEMBERED,
                "Messages on more topics that are not command topics; no more of them are logged."
            );
        }
        return;
    }
    seen.topics.insert(topic.to_owned());
    tracing::warn!(topic = %topic.escape_debug(), earlier_stray = seen.more, "Message on a topic that is not a command topic; ignored (said once per topic).");
}
