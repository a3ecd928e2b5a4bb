//! The loader that start-up, reloads, provisioning and the commands share: a valid config, with
//! its warnings written out.

use std::io::Write;
use std::path::Path;

use super::{load, ConfigError, Severity, ValidConfig};

/// Loads a valid config, writing its warnings (and notes of that weight) to `warn`, one line
/// each; an error refuses it with every finding. A warning that cannot be written is not a
/// reason to refuse the config.
pub fn load_reporting(path: &Path, warn: &mut dyn Write) -> Result<ValidConfig, ConfigError> {
    let (config, findings) = load(path)?;
    for finding in findings
        .items
        .iter()
        .filter(|f| f.severity >= Severity::Warning)
    {
        let _ = writeln!(warn, "{}", finding.display(&findings.file));
    }
    Ok(config)
}
