//! Before provisioning: `apt install` starts the unit before any certificate exists (an empty
//! file counts as not there yet). Rather
//! than exit 78 and show a failed unit, the agent waits for the TLS files its config names:
//! ready for systemd, STATUS= and `status.json` saying what it waits for, the watchdog petted,
//! SIGTERM ending it. Every 5 s (and on SIGHUP) it reads the config again, drop-ins included,
//! since provisioning usually writes one that names the broker and the files; it starts, with
//! the config as it is then, once every file that config names exists. Whatever is wrong with
//! them then (a bad key, an expired certificate) is a config error as before.
//!
//! Why here and not a systemd path unit: the files are wherever the config says, and a path
//! unit would have to be told the same paths again (and kept in step with every drop-in).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::ValidConfig;
use crate::service;

/// How often the files are looked for.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// The first TLS file `config` names that does not exist or is empty (an installer that has
/// created it and not written it yet, or a power cut that came before the file reached the
/// disk). A file that cannot be looked at (a directory without permission) counts as there: the
/// checks after this say what is wrong.
pub fn missing_file(config: &ValidConfig) -> Option<PathBuf> {
    let tls = &config.config().broker.tls;
    [&tls.ca_file, &tls.cert_file, &tls.key_file]
        .into_iter()
        .flatten()
        // A key in a PKCS#11 token is a URI, not a file to wait for.
        .filter(|path| !crate::keys::is_uri(path))
        .find(|path| match std::fs::metadata(path) {
            Ok(meta) => meta.is_file() && meta.len() == 0,
            Err(err) => err.kind() == std::io::ErrorKind::NotFound,
        })
        .cloned()
}

/// Waits until every TLS file of the config exists; `None` when a stop signal came first. The
/// config returned is the one last read (SIGHUP reads it again).
pub async fn wait(mut config: ValidConfig, path: &Path) -> Option<ValidConfig> {
    let Some(mut missing) = missing_file(&config) else {
        return Some(config);
    };
    tracing::warn!(
        file = %missing.display(),
        "Not provisioned yet: waiting for the TLS files the config names; the agent starts by itself once they exist."
    );
    announce(&config, &missing);
    let watchdog = service::watchdog();
    let mut pet = tokio::time::interval(watchdog.map_or(super::FOREVER, |w| w / 2));
    let mut look = tokio::time::interval(LOOK_EVERY);
    // status.json is stale after 150 s: say it again every health interval.
    let mut refresh = tokio::time::interval_at(
        tokio::time::Instant::now() + crate::health::INTERVAL,
        crate::health::INTERVAL,
    );
    let mut hangups = service::hangups();
    // The last reason the config was refused, logged once.
    let mut refused: Option<String> = None;
    let shutdown = service::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            signal = &mut shutdown => {
                tracing::info!(signal, "Stopped while waiting for provisioning.");
                return None;
            }
            _ = pet.tick(), if watchdog.is_some() => {
                service::notify(&[sd_notify::NotifyState::Watchdog]);
                continue;
            }
            Some(()) = hangups.recv() => {}
            _ = refresh.tick() => announce(&config, &missing),
            _ = look.tick() => {}
        }
        // Provisioning writes the files and, usually, a drop-in naming them: read it all again.
        let path = path.to_owned();
        let reread = tokio::task::spawn_blocking(move || {
            let mut warnings = Vec::new();
            crate::config::load_reporting(&path, &mut warnings).map_err(|err| err.to_string())
        })
        .await;
        match reread {
            Ok(Ok(new)) => {
                config = new;
                refused = None;
            }
            Ok(Err(why)) => {
                if refused.as_deref() != Some(why.as_str()) {
                    tracing::error!(error = %why, "The config does not load; waiting with the one read before.");
                    refused = Some(why);
                }
            }
            Err(_) => {}
        }
        match missing_file(&config) {
            None => {
                tracing::info!("Provisioned: the TLS files exist; starting.");
                return Some(config);
            }
            Some(now_missing) if now_missing != missing => {
                missing = now_missing;
                announce(&config, &missing);
            }
            Some(_) => {}
        }
    }
}

/// READY=1 with a STATUS= that says what is missing, and the same in `status.json`.
fn announce(config: &ValidConfig, missing: &Path) {
    service::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "waiting for provisioning: {} does not exist",
            missing.display()
        )),
    ]);
    let now = crate::model::now_ms();
    let written = crate::local_status::Written {
        pid: std::process::id(),
        version: crate::VERSION.to_owned(),
        written_ts: now,
        written_boot_ms: Some(crate::clock::boot_ms()),
        boot_id: Some(crate::mqtt::boot_id()),
        started_ts: now,
        client_id: config.config().identity.client_id.clone(),
        mode: "waiting".to_owned(),
        waiting_for: Some(missing.display().to_string()),
        since_ts: now,
        outbox_durable: true,
        ..crate::local_status::Written::default()
    };
    let dir = config.config().state_dir.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(err) = crate::local_status::write(&dir, &written) {
            tracing::debug!(error = %err, "Cannot write status.json.");
        }
    });
}
