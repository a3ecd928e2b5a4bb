//! Small state files in `state_dir`: JSON, written atomically (temporary file, fsync, rename,
//! fsync of the directory) so a power cut leaves the old or the new file, never half of one.
//!
//! A file that does not parse is moved aside with a log line and the agent starts from empty
//! state: a damaged file must never keep a device from running.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads `path`; a missing file is the default state, a damaged one is moved aside.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> T {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return T::default(),
        Err(err) => {
            tracing::error!(path = %path.display(), error = %err, "Cannot read state; starting from empty state.");
            return T::default();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(state) => state,
        Err(err) => {
            let aside = path.with_extension(format!("corrupt-{}", crate::model::now_ms()));
            let moved = std::fs::rename(path, &aside);
            tracing::error!(
                path = %path.display(),
                error = %err,
                moved_to = %aside.display(),
                moved = moved.is_ok(),
                "State file is damaged; moved aside, starting from empty state."
            );
            T::default()
        }
    }
}

/// Writes `state` to `path` atomically.
pub fn save<T: Serialize>(path: &Path, state: &T) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary)?;
    serde_json::to_writer(&mut file, state)?;
    file.flush()?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn round_trip_missing_and_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let empty: BTreeMap<String, u64> = load(&path);
        assert!(empty.is_empty());
        let mut state = BTreeMap::new();
        state.insert("counter".to_owned(), 7u64);
        save(&path, &state).unwrap();
        assert_eq!(load::<BTreeMap<String, u64>>(&path), state);
        std::fs::write(&path, b"{\"counter\": 7").unwrap();
        assert!(load::<BTreeMap<String, u64>>(&path).is_empty());
        assert!(!path.exists(), "the damaged file is moved aside");
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.corrupt-")
            });
        assert!(aside);
    }
}
