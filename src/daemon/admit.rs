//! What start-up and every reload do before a config is used: load it, probe what it points at,
//! work out the identity; and the certificate renewal check. The same path for both (vector's
//! rule: a reload goes through the code of start-up). Everything here blocks (it reads files):
//! the event loop runs it as a task and takes the result as an event.

use std::io::Write;
use std::path::Path;

use crate::config::{ConfigError, Findings, Severity, ValidConfig};
use crate::identity::Identity;
use crate::mqtt::tls;
use crate::offline::Error;

/// Probes what `config` points at (an error refuses it, warnings go to `warn`) and works out
/// the identity.
pub(crate) fn admit(
    config: ValidConfig,
    path: &Path,
    warn: &mut dyn Write,
) -> Result<(ValidConfig, Identity), Error> {
    let now_s = (crate::model::now_ms() / 1000) as i64;
    let mut findings = Findings {
        file: path.to_owned(),
        items: crate::certs::probe_for_run(&config.config().broker, now_s),
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

/// Loads, validates and probes the config at `path` for a reload: the path of start-up. Every
/// finding comes back in one line when it is refused. Blocking.
pub(crate) fn reload(path: &Path) -> Result<(ValidConfig, Identity), String> {
    let mut warnings = Vec::new();
    let admitted = crate::offline::load(path, &mut warnings)
        .and_then(|config| admit(config, path, &mut warnings));
    for line in String::from_utf8_lossy(&warnings).lines() {
        tracing::warn!(finding = %line, "Config warning.");
    }
    admitted.map_err(|err| err.to_string())
}

/// The agent's own copies of the device certificate and key, when both are configured and
/// `state_dir` takes them; otherwise Paho reads the configured files directly.
pub(crate) fn key_pair_store(config: &ValidConfig) -> Option<tls::KeyPairStore> {
    let tls = &config.config().broker.tls;
    let (cert, key) = (tls.cert_file.as_ref()?, tls.key_file.as_ref()?);
    match tls::KeyPairStore::new(cert, key, &config.config().state_dir) {
        Ok(store) => Some(store),
        Err(err) => {
            tracing::warn!(error = %err, "Cannot keep copies of the certificate in state_dir; a bad renewal on disk would be used as it is.");
            None
        }
    }
}

/// A renewed pair must parse, match, be valid now, and name the device the agent runs as; then
/// it is copied in, and the next connect uses it. Blocking.
pub(crate) fn renew(
    config: &ValidConfig,
    source: &tls::KeyPairFiles,
    files: &tls::KeyPairFiles,
    identity: &Identity,
) -> Result<(), String> {
    let mut broker = config.config().broker.clone();
    broker.tls.cert_file = Some(source.cert.clone());
    broker.tls.key_file = Some(source.key.clone());
    broker.password_file = None;
    let now_s = (crate::model::now_ms() / 1000) as i64;
    let errors: Vec<String> = crate::certs::probe(&broker, now_s)
        .into_iter()
        .filter(|f| f.severity == Severity::Error && f.key != "broker.tls.ca_file")
        .map(|f| f.message)
        .collect();
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    if let crate::identity::Origin::CertificateCn(_) = identity.origin {
        let cn = crate::identity::certificate_cn(&source.cert)
            .map_err(|err| err.to_string())?
            .unwrap_or_default();
        if cn != identity.client_id {
            return Err(format!(
                "its CN \"{cn}\" is not the running identity \"{}\"",
                identity.client_id
            ));
        }
    }
    tls::copy_pair(source, files).map_err(|err| format!("cannot copy it into state_dir: {err}"))
}
