//! Command ids already executed, with the answer each got: bounded (the newest `capacity`), kept
//! in `state_dir` so a restart never executes a command twice.

use std::collections::VecDeque;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::commands::Response;

/// How many ids are remembered.
pub const CAPACITY: usize = 1000;

/// The state file in `state_dir`.
pub const FILE: &str = "commands.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Oldest first.
    executed: VecDeque<(String, Response)>,
}

pub struct Dedupe {
    path: PathBuf,
    saved: Saved,
    capacity: usize,
}

impl Dedupe {
    pub fn open(path: PathBuf, capacity: usize) -> Dedupe {
        let saved = crate::state::load(&path);
        Dedupe {
            path,
            saved,
            capacity,
        }
    }

    /// The answer `id` got, if it was executed before.
    pub fn get(&self, id: &str) -> Option<&Response> {
        self.saved
            .executed
            .iter()
            .rev()
            .find(|(known, _)| known == id)
            .map(|(_, response)| response)
    }

    /// Records `response` for `id` and saves; the oldest id goes when full.
    pub fn record(&mut self, id: &str, response: &Response) -> std::io::Result<()> {
        match self
            .saved
            .executed
            .iter_mut()
            .find(|(known, _)| known == id)
        {
            Some(entry) => entry.1 = response.clone(),
            None => {
                if self.saved.executed.len() == self.capacity {
                    self.saved.executed.pop_front();
                }
                self.saved
                    .executed
                    .push_back((id.to_owned(), response.clone()));
            }
        }
        crate::state::save(&self.path, &self.saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut dedupe = Dedupe::open(path.clone(), 2);
        for id in ["a", "b", "c"] {
            dedupe.record(id, &Response::ok(id, "fan")).unwrap();
        }
        assert!(dedupe.get("a").is_none(), "the oldest went");
        let reopened = Dedupe::open(path, 2);
        assert_eq!(reopened.get("c"), Some(&Response::ok("c", "fan")));
        assert!(reopened.get("b").is_some());
    }
}
