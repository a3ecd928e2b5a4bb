//! `fieldagent config [--json]`: the merged config as the agent would run it (the config file,
//! its drop-ins, every default filled in) and where each value comes from (`config::explain`).
//! The same loader as `check` and the daemon.

use std::io::Write;
use std::path::Path;

use crate::config::{self, explain};
use crate::error::Error;

/// `fieldagent config`: YAML with each value's origin as a comment, or with `--json` one object
/// `{"config":{…},"origins":{"key.path":"file:line" | "default"}}`.
pub fn show(path: &Path, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    let (config, _) = config::load(path)?;
    if json {
        writeln!(out, "{}", explain::json(&config))?;
    } else {
        writeln!(
            out,
            "# {} as the agent runs it: its drop-ins merged, every default filled in, each value's origin after it.",
            path.display()
        )?;
        out.write_all(explain::yaml(&config).as_bytes())?;
    }
    Ok(())
}
