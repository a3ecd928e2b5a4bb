//! What the daemon does around admission (`crate::admission`): the reload's load and admission,
//! the agent's copies of the key pair, the renewal check, and whose data `state_dir` holds. The
//! same path as start-up (vector's rule: a reload goes through the code of start-up). Everything
//! here blocks (it reads files): the event loop runs it off the loop and takes the result as an
//! event.

use std::path::Path;

use crate::config::{Severity, ValidConfig};
use crate::identity::Identity;
use crate::mqtt::tls;

/// Loads, validates and probes the config at `path` for a reload: the path of start-up. Every
/// finding comes back in one line when it is refused. Blocking.
pub(crate) fn reload(path: &Path) -> Result<(ValidConfig, Identity), String> {
    let mut warnings = Vec::new();
    let admitted = crate::config::load_reporting(path, &mut warnings)
        .map_err(crate::error::Error::from)
        .and_then(|config| crate::admission::admit(config, path, &mut warnings));
    for line in String::from_utf8_lossy(&warnings).lines() {
        tracing::warn!(finding = %line, "Config warning.");
    }
    admitted
        .map(|(config, identity)| (config.into_running(), identity))
        .map_err(|err| err.to_string())
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

/// The identity whose data `state_dir` holds (`identity.json`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Owner {
    client_id: String,
}

/// The file naming whose data `state_dir` holds.
const OWNER_FILE: &str = "identity.json";

/// At start, before the outbox and the alert state are opened: what `state_dir` holds was made
/// as the client ID `identity.json` names. When the board now has another identity (provisioned
/// anew), that outbox and alert state are moved aside (kept for a person, never sent as this
/// device's: their topics and alert ids name the other one) with an error line, and the file
/// names the new owner. A reload never changes the identity (it is refused), so this is the
/// one place it can change.
pub(crate) fn adopt_state(state_dir: &Path, client_id: &str) {
    let path = state_dir.join(OWNER_FILE);
    let owner: Owner = crate::state::load(&path);
    if owner.client_id == client_id {
        return;
    }
    if !owner.client_id.is_empty() {
        let queued = crate::outbox::inspect(state_dir)
            .map(|on_disk| on_disk.per_kind.iter().sum::<usize>())
            .unwrap_or(0);
        let stamp = crate::model::now_ms();
        let mut moved = Vec::new();
        for file in [crate::outbox::FILE, super::sampler::ALERTS_FILE] {
            let from = state_dir.join(file);
            let aside = state_dir.join(format!("{file}.as-{}-{stamp}", owner.client_id));
            if std::fs::rename(&from, &aside).is_ok() {
                moved.push(aside.display().to_string());
            }
        }
        tracing::error!(
            previous = %owner.client_id,
            client_id = %client_id,
            queued,
            moved_to = %moved.join(", "),
            "state_dir holds what was made as another client ID; it is kept aside, not sent as this device's."
        );
    }
    let owner = Owner {
        client_id: client_id.to_owned(),
    };
    if let Err(err) = crate::state::save(&path, &owner) {
        tracing::warn!(path = %path.display(), error = %err, "Cannot record whose data state_dir holds.");
    }
}
