//! What start-up, every reload and `check --connect` do with a valid config before it is used:
//! probe what it points at (certificates, keys, the password file) and work out the identity.
//! Blocking (it reads files); the daemon runs it off its event loop.

use std::io::Write;
use std::path::Path;

use crate::config::{ConfigError, Findings, Severity, ValidConfig};
use crate::error::Error;
use crate::identity::Identity;

/// Probes what `config` points at (an error refuses it, warnings go to `warn`) and works out
/// the identity.
pub fn admit(
    config: ValidConfig,
    path: &Path,
    warn: &mut dyn Write,
) -> Result<(ValidConfig, Identity), Error> {
    let now_s = (crate::model::now_ms() / 1000) as i64;
    let mut items = crate::certs::probe_for_run(&config.config().broker, now_s);
    items.extend(crate::signed::probe(&config.config().security).1);
    let mut findings = Findings {
        file: path.to_owned(),
        items,
    };
    config.locate(&mut findings.items);
    for finding in findings
        .items
        .iter()
        .filter(|f| f.severity == Severity::Warning)
    {
        writeln!(warn, "{}", finding.display(&findings.file))?;
    }
    if findings.has_errors() {
        findings.items.retain(|f| f.severity == Severity::Error);
        return Err(Error::Config(ConfigError::Invalid(findings)));
    }
    let identity = crate::identity::resolve(config.config())?;
    Ok((config, identity))
}
