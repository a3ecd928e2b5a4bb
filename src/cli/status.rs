//! `fieldagent status`: what the agent running with this config's `state_dir` is doing, from
//! `status.json` and the outbox file.

use std::io::Write;
use std::path::Path;

use crate::config;
use crate::error::Error;

/// `fieldagent status`: what the agent running with this config's `state_dir` is doing. True
/// when it runs and its state is fresh.
pub fn status(path: &Path, json: bool, out: &mut dyn Write) -> Result<bool, Error> {
    let (config, _) = config::load(path)?;
    let now = crate::model::now_ms();
    let status = crate::local_status::read(
        &config.config().state_dir,
        now,
        crate::local_status::is_fieldagent,
    )?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&status).expect("status always serializes")
        )?;
    } else {
        status.render(now, out)?;
    }
    Ok(status.running)
}
