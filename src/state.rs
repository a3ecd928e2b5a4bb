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
    private_dir(dir)?;
    let temporary = path.with_extension("tmp");
    let mut file = create_private(&temporary)?;
    serde_json::to_writer(&mut file, state)?;
    file.flush()?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and its parents) with mode 0700 where they do not exist; an existing one is
/// left as it is (systemd's `StateDirectory=` sets its own).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `path` for writing, mode 0600, exclusively: whatever is there already (a file left by
/// a crash, a symlink someone planted) is removed first, never written through.
pub fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
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

    /// Issue 20: state files are 0600 in a 0700 directory even when the agent runs by hand, and
    /// a symlink planted at a temporary name is replaced, not written through.
    #[test]
    fn state_files_are_private_and_follow_no_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let path = state_dir.join("alerts.json");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "kept").unwrap();
        std::fs::create_dir(&state_dir).unwrap();
        std::os::unix::fs::symlink(&victim, path.with_extension("tmp")).unwrap();
        save(&path, &7u64).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "kept");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        let fresh = dir.path().join("fresh/state.json");
        save(&fresh, &1u64).unwrap();
        assert_eq!(mode(fresh.parent().unwrap()), 0o700);
    }
}
