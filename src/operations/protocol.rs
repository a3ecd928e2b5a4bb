//! How the agent and the privileged helper (`fieldagent-helper`, run as root by systemd) speak:
//! files in `state_dir`, each written atomically (a temporary file, fsync, rename).
//!
//! - `requests/<name>.json` ([`HelperRequest`]): an operation the agent accepted that needs root
//!   (`software_update`, `restart`, `log_upload`, `config_update`). The helper's path unit starts
//!   it when the directory is not empty; the helper records the request in its own journal and
//!   then removes the file, so a request is taken once.
//! - `results/<name>.json` ([`HelperResult`]): how the helper's work goes (`executing` with a
//!   step) and how it ended. The agent turns each into the operation's state and removes the
//!   file once the terminal state is in the outbox.
//! - `logs/<name>.jsonl`: a `log_upload`'s lines, one JSON object each, for the agent to send in
//!   chunks.
//!
//! The agent runs as its own user in its sandbox and never gains a privilege: whatever it asks,
//! the helper checks again against the config (`/etc/fieldagent`, which the agent cannot
//! write) before it acts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Params, State};

/// The directory of requests for the helper, in `state_dir`.
pub const REQUESTS: &str = "requests";
/// The directory of the helper's results, in `state_dir`.
pub const RESULTS: &str = "results";
/// The directory of log uploads' lines, in `state_dir`.
pub const LOGS: &str = "logs";

/// A request for the helper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelperRequest {
    pub id: String,
    pub params: Params,
    /// When the agent accepted it (Unix ms).
    pub accepted_ts: u64,
    /// Undo what this operation did (a `config_update`'s file put back as it was).
    #[serde(default)]
    pub undo: bool,
}

/// What the helper says of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelperResult {
    pub id: String,
    #[serde(flatten)]
    pub state: State,
    /// When it was written (Unix ms).
    pub ts: u64,
}

/// A file name for operation `id` (which may hold any printable character): its safe characters
/// (at most 64) and a checksum of the whole id, so no two ids share a file and no name leaves
/// its directory.
pub fn file_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        .take(64)
        .collect();
    format!("{safe}-{:08x}", crc32fast::hash(id.as_bytes()))
}

/// Hands `request` to the helper: written and fsynced beside `requests/`, then renamed into it,
/// so the helper (whose path unit fires for anything there) only ever sees whole requests.
pub fn hand_over(state_dir: &Path, request: &HelperRequest) -> std::io::Result<()> {
    use std::io::Write;
    let dir = state_dir.join(REQUESTS);
    crate::state::private_dir(&dir)?;
    let name = format!("{}.json", file_name(&request.id));
    let temporary = state_dir.join(format!(".request-{name}.tmp"));
    let mut file = crate::state::create_private(&temporary)?;
    serde_json::to_writer(&mut file, request)?;
    file.flush()?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(&name))?;
    std::fs::File::open(&dir)?.sync_all()
}

pub fn request_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir
        .join(REQUESTS)
        .join(format!("{}.json", file_name(id)))
}

pub fn result_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir
        .join(RESULTS)
        .join(format!("{}.json", file_name(id)))
}

pub fn log_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir
        .join(LOGS)
        .join(format!("{}.jsonl", file_name(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_stay_in_their_directory_and_differ() {
        for id in ["../../etc/passwd", "a/b", "..", "x y", "ü"] {
            let name = file_name(id);
            assert!(!name.contains('/') && !name.contains(".."), "{name}");
        }
        assert_ne!(file_name("a/b"), file_name("a_b"));
        assert_eq!(
            file_name("up-7"),
            format!("up-7-{:08x}", crc32fast::hash(b"up-7"))
        );
    }
}
