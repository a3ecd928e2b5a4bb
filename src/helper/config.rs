//! `config_update` on the root side: a drop-in in `conf.d/` written or deleted, and put back as
//! it was when the agent asks (`undo`). The agent checked the change; the helper checks it again
//! itself (the name against `operations.config_update.names`, the merged config with `check`'s
//! loader) before it writes anything. What the file held before is saved first, in the
//! helper's own directory, so an undo needs nothing from the agent; a request run twice (a power
//! cut before its file was removed) writes the same file again and keeps the first saved state.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Helper;
use crate::operations::protocol;
use crate::operations::State;

/// How many changes' saved states are kept (the newest).
const KEEP: usize = 32;

/// What a drop-in held before a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub name: String,
    /// Its content, or `None` when there was no such file.
    pub previous: Option<String>,
}

fn saved_dir(helper: &Helper) -> PathBuf {
    helper.dir.join("config")
}

fn saved_path(helper: &Helper, id: &str) -> PathBuf {
    saved_dir(helper).join(format!("{}.json", protocol::file_name(id)))
}

fn executing(step: &str) -> State {
    State::Executing {
        step: step.to_owned(),
    }
}

/// The change: checked again, the previous state saved, the file written (or deleted).
pub fn apply(helper: &Helper, id: &str, name: &str, content: Option<&str>) {
    let running = helper.config.config().clone();
    if let Err(reason) =
        crate::config::operations::check_change(&helper.config_path, name, content, &running)
    {
        return helper.result(
            id,
            State::Failed {
                reason: reason.replacen("refused:", "refused by the helper:", 1),
            },
        );
    }
    let dir = crate::config::dropin_directory(&helper.config_path);
    let file = dir.join(name);
    let saved = saved_path(helper, id);
    if !saved.exists() {
        let previous = match std::fs::read_to_string(&file) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => {
                return helper.result(
                    id,
                    State::Failed {
                        reason: format!(
                            "cannot read {}: {err}; nothing was written",
                            file.display()
                        ),
                    },
                )
            }
        };
        let record = Saved {
            id: id.to_owned(),
            name: name.to_owned(),
            previous,
        };
        if let Err(err) = crate::state::private_dir(&saved_dir(helper))
            .and_then(|()| crate::state::save(&saved, &record))
        {
            return helper.result(
                id,
                State::Failed {
                    reason: format!(
                        "cannot save the file's previous state ({err}); nothing was written"
                    ),
                },
            );
        }
        prune(helper);
    }
    match put(&dir, name, content) {
        Ok(()) => helper.result(
            id,
            executing(if content.is_some() {
                "written"
            } else {
                "deleted"
            }),
        ),
        Err(err) => helper.result(
            id,
            State::Failed {
                reason: format!("cannot write {}: {err}", file.display()),
            },
        ),
    }
}

/// The undo: the file as it was before change `id`.
pub fn undo(helper: &Helper, id: &str) {
    let saved: Option<Saved> = crate::state::load(&saved_path(helper, id));
    let Some(saved) = saved else {
        return helper.result(
            id,
            State::Failed {
                reason: "nothing saved of the file before this change; it stays as it is"
                    .to_owned(),
            },
        );
    };
    let dir = crate::config::dropin_directory(&helper.config_path);
    match put(&dir, &saved.name, saved.previous.as_deref()) {
        Ok(()) => helper.result(id, executing("restored")),
        Err(err) => helper.result(
            id,
            State::Failed {
                reason: format!("cannot restore {}: {err}", dir.join(&saved.name).display()),
            },
        ),
    }
}

/// `name` in `dir` made to hold `content` (or removed), atomically and durably: a temporary
/// file (hidden, so never read as a drop-in), fsync, rename, fsync of the directory. Mode 0644,
/// root's, as the package's own drop-ins.
fn put(dir: &Path, name: &str, content: Option<&str>) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = dir.join(name);
    match content {
        Some(content) => {
            let temporary = dir.join(format!(".{name}.tmp"));
            let _ = std::fs::remove_file(&temporary);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&temporary)?;
            out.write_all(content.as_bytes())?;
            out.sync_all()?;
            std::fs::rename(&temporary, &file)?;
        }
        None => match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        },
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Only the newest [`KEEP`] saved states stay.
fn prune(helper: &Helper) {
    let Ok(entries) = std::fs::read_dir(saved_dir(helper)) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    if files.len() <= KEEP {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - KEEP] {
        let _ = std::fs::remove_file(path);
    }
}
