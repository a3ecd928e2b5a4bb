//! Before provisioning: `apt install` starts the unit before any certificate exists (an empty
//! file counts as not there yet). Rather
//! than exit 78 and show a failed unit, the agent waits for the TLS files its config names:
//! ready for systemd, STATUS= and `status.json` saying what it waits for, the watchdog petted,
//! SIGTERM ending it. Every 5 s (and on SIGHUP) it reads the config again, drop-ins included,
//! since provisioning usually writes one that names the broker and the files; it starts, with
//! the config as it is then, once every file that config names exists. Whatever is wrong with
//! them then (a bad key, an expired certificate) is a config error as before, with one
//! exception: a key in the TPM that cannot be used yet is waited for the same way (the TPM's
//! resource manager may start after the agent at boot), see [`waiting_for`].
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

/// What the agent waits for before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// A key in the TPM that cannot be used yet, not a file not provisioned yet.
    key: bool,
    /// The file or the key (`waiting_for` in status.json).
    what: String,
    /// Why, for STATUS= and the log.
    why: String,
}

/// A TLS file not there yet, or a key in the TPM that cannot be used yet: at boot the TPM's
/// resource manager may come up after the agent. Such a key is waited for (and tried again
/// every few seconds) rather than refused with exit 78, which systemd would not restart: a
/// device whose TPM answered late would stay offline. A TPM key has no PIN, so trying again
/// costs nothing. A key in a PKCS#11 token is not retried here: each try logs in with the PIN,
/// and a wrong PIN tried every few seconds would lock the token; its errors are config errors.
pub fn waiting_for(config: &ValidConfig) -> Option<Waiting> {
    if let Some(path) = missing_file(config) {
        return Some(Waiting {
            key: false,
            what: path.display().to_string(),
            why: format!(
                "waiting for provisioning: {} does not exist",
                path.display()
            ),
        });
    }
    let tls = &config.config().broker.tls;
    let key = tls.key_file.as_ref()?;
    if crate::keys::kind_of(key) != crate::keys::KeyKind::Tpm {
        return None;
    }
    crate::keys::load(tls).err().map(|why| Waiting {
        key: true,
        what: key.display().to_string(),
        why: format!("waiting for the device key: {why}"),
    })
}

/// Waits until every TLS file of the config exists and a key in a TPM or token can be used;
/// `None` when a stop signal came first. The config returned is the one last read (SIGHUP reads
/// it again).
pub async fn wait(mut config: ValidConfig, path: &Path) -> Option<ValidConfig> {
    // Off the loop's thread: a TPM may be slow to answer.
    let first = config.clone();
    let Ok(Some(mut missing)) = tokio::task::spawn_blocking(move || waiting_for(&first)).await
    else {
        return Some(config);
    };
    if !missing.key {
        tracing::warn!(
            file = %missing.what,
            "Not provisioned yet: waiting for the TLS files the config names; the agent starts by itself once they exist."
        );
    } else {
        tracing::warn!(
            key = %missing.what,
            reason = %missing.why,
            "Not ready to start: waiting for the device key; the agent starts by itself once it can be used."
        );
    }
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
        // A key in a TPM or token is tried again too (blocking: the TPM may be slow).
        let path = path.to_owned();
        let before = config.clone();
        let reread = tokio::task::spawn_blocking(move || {
            let mut warnings = Vec::new();
            let read =
                crate::config::load_reporting(&path, &mut warnings).map_err(|err| err.to_string());
            let waiting = waiting_for(read.as_ref().unwrap_or(&before));
            (read, waiting)
        });
        // A TPM that hangs does not hold up a stop.
        let reread = tokio::select! {
            reread = reread => reread,
            signal = &mut shutdown => {
                tracing::info!(signal, "Stopped while waiting for provisioning.");
                return None;
            }
        };
        let Ok((read, waiting)) = reread else {
            continue;
        };
        match read {
            Ok(new) => {
                config = new;
                refused = None;
            }
            Err(why) => {
                if refused.as_deref() != Some(why.as_str()) {
                    tracing::error!(error = %why, "The config does not load; waiting with the one read before.");
                    refused = Some(why);
                }
            }
        }
        match waiting {
            None => {
                tracing::info!(
                    "Provisioned: the TLS files exist and the key can be used; starting."
                );
                return Some(config);
            }
            Some(now) if now != missing => {
                tracing::warn!(waiting_for = %now.what, reason = %now.why, "Still waiting.");
                missing = now;
                announce(&config, &missing);
            }
            Some(_) => {}
        }
    }
}

/// READY=1 with a STATUS= that says what is missing, and the same in `status.json`.
fn announce(config: &ValidConfig, missing: &Waiting) {
    service::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&missing.why),
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
        waiting_for: Some(missing.what.clone()),
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
