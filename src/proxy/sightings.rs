//! The first CONNECT to each host, logged once at info: what a user asking
//! "does my IDE's traffic reach kt, and is it decrypted?" looks for in the
//! log, without a line per connection.

use std::collections::HashSet;
use std::sync::Mutex;

/// Hosts remembered at most; past that, new hosts are not logged (a
/// gateway seeing that many is past first-use troubleshooting).
const CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Sightings {
    seen: Mutex<HashSet<Box<str>>>,
}

impl Sightings {
    /// Whether this is the first sighting of `host` (which is then
    /// remembered).
    pub(super) fn first(&self, host: &str) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        if seen.len() >= CAPACITY || seen.contains(host) {
            return false;
        }
        seen.insert(host.into());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_is_new_once_and_memory_is_bounded() {
        let s = Sightings::default();
        assert!(s.first("api.openai.com"));
        assert!(!s.first("api.openai.com"));
        assert!(s.first("github.com"));
        for i in 0..CAPACITY {
            s.first(&format!("h{i}.example"));
        }
        assert!(!s.first("late.example"));
        assert_eq!(s.seen.lock().map(|m| m.len()).ok(), Some(CAPACITY));
    }
}
