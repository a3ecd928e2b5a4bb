//! Reloads (SIGHUP) and certificate renewals: the new config or key pair is checked on the
//! blocking pool, and what it changes is applied when the result comes back as an event.
//!
//! Everything that touches the disk happens off the loop, before the result comes back: the
//! load and admission of the new config, the refusals that need no running state (a new
//! `state_dir`, a new identity, a switch of mode), and, when `broker.tls` changed, the copy of
//! the new key pair into `state_dir` (fsynced), which is made only once the reload is known to
//! be taken.

use std::path::PathBuf;

use super::event::{Event, Reloaded};
use super::store::Request;
use super::{admit, start_sampler, Daemon};
use crate::config::{Changes, TlsConfig};
use crate::mqtt::tls::KeyPairStore;
use crate::service;
use crate::sync::Lock;

impl Daemon {
    /// Every `CERT_WATCH`: a renewed certificate on disk is checked on the blocking pool.
    pub(super) fn watch_certificate(&mut self) {
        let Some(store) = self.key_pair.as_mut() else {
            return;
        };
        if !store.changed() {
            return;
        }
        self.renewing = true;
        let source = store.source().clone();
        let files = store.files.clone();
        let config = self.core.config.clone();
        let identity = self.core.identity.clone();
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                admit::renew(&config, &source, &files, &identity)
            })
            .await
            .unwrap_or_else(|_| Err("internal error while checking".to_owned()));
            let _ = events.send(Event::Renewed(result)).await;
        });
    }

    pub(super) fn on_renewed(&mut self, result: Result<(), String>) {
        self.renewing = false;
        let cert = self
            .key_pair
            .as_ref()
            .map(|store| store.source().cert.display().to_string())
            .unwrap_or_default();
        match result {
            Ok(()) => {
                tracing::info!(cert = %cert, "Certificate renewed; reconnecting once.");
                // Sparkplug: a clean end of this session (NDEATH) and a new one with the new
                // pair; plain: a disconnect, the next connect says online again.
                let goodbye = self.mode.goodbye_on_reconnect();
                self.mode.ended();
                self.core.reconnect(goodbye);
            }
            Err(reason) => {
                tracing::error!(cert = %cert, reason = %reason, "New certificate refused; the running one stays.")
            }
        }
    }

    /// SIGHUP: the new config is loaded, checked and (when its TLS files changed) its key pair
    /// copied on the blocking pool; the result comes back as `Event::Reloaded`.
    pub(super) fn reload(&mut self) {
        let Some(path) = self.reload_from.clone() else {
            return;
        };
        if self.reloading {
            // The running reload may have read the files before this change: one more follows
            // it (however many SIGHUPs came meanwhile).
            tracing::info!("A reload is running; another follows it for this SIGHUP.");
            self.reload_again = true;
            return;
        }
        self.reloading = true;
        service::notify(&[sd_notify::NotifyState::Reloading]);
        let running = Running {
            state_dir: self.core.config.config().state_dir.clone(),
            client_id: self.core.identity.client_id.clone(),
            sparkplug: self.mode.is_sparkplug(),
            tls: self.core.config.config().broker.tls.clone(),
        };
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || prepare(&path, &running))
                .await
                .unwrap_or_else(|_| Err("internal error while reloading".to_owned()));
            let _ = events.send(Event::Reloaded(Box::new(result))).await;
        });
    }

    pub(super) fn on_reloaded(&mut self, result: Result<Reloaded, String>) {
        self.reloading = false;
        let outcome = match result {
            Ok(reloaded) => self.apply_reload(reloaded),
            Err(why) => {
                refused(&why);
                Err(why)
            }
        };
        if std::mem::take(&mut self.reload_again) {
            self.reload();
        } else {
            // The last of the reloads asked for: a remote change waiting for it goes on.
            self.config_reloaded(outcome);
        }
    }

    /// Applies a reload; whether it reconnects, or why it was refused.
    fn apply_reload(&mut self, reloaded: Reloaded) -> Result<bool, String> {
        let Reloaded {
            config,
            identity,
            keys,
            key_pair,
        } = reloaded;
        let old = self.core.config.config();
        let changes = Changes::between(old, config.config());
        if changes.session {
            if config.config().broker.tls.min_version != old.broker.tls.min_version {
                tracing::warn!(
                    "broker.tls.min_version takes effect at the next start of the agent."
                );
            }
            let key_pair = match key_pair {
                Some(new) => new,
                None => self.key_pair.take(),
            };
            let profile = self.mode.profile(&config, &identity);
            let session =
                match self
                    .core
                    .new_session(&config, &identity, key_pair.as_ref(), profile)
                {
                    Ok(session) => session,
                    Err(err) => {
                        self.key_pair = key_pair;
                        refused(&err.to_string());
                        return Err(err.to_string());
                    }
                };
            self.key_pair = key_pair;
            // The old session ends (Sparkplug: with its goodbye), the new one connects once it
            // has.
            let goodbye = self.mode.goodbye_on_reconnect();
            self.core.reconnect(goodbye);
            self.core.session = session;
            self.core.went_offline();
        }
        self.core
            .link
            .set_backoff(&config.config().broker.reconnect);
        self.core.store.send(Request::SetBound(
            config.config().broker.max_queued_messages as usize,
        ));
        self.commands.set_rate(config.config().broker.command_rate);
        self.context.specs = config.sensors.clone();
        self.context.sysfs_root = config.config().sysfs_root.clone();
        let nothing = !changes.any;
        self.mode
            .reconfigure(&self.core, &config, &identity, !nothing, changes.session);
        let resample = changes.sampling || (!nothing && self.mode.resample_on_any_change());
        if resample {
            self.core
                .book
                .locked()
                .reconfigure(&config, &identity.client_id);
        }
        self.core
            .operations
            .set_prefix(&config.topic_prefix(&identity.client_id));
        self.core.config = config;
        self.core.identity = identity;
        if let Some(keys) = &keys {
            tracing::info!(keys = keys.len(), "Signing keys read again.");
        }
        self.core.keys = keys.map(std::sync::Arc::new);
        if resample {
            let mut old = std::mem::replace(
                &mut self.sampler,
                start_sampler(&self.core, self.mode.as_ref(), self.passes_tx.clone()),
            );
            old.stop();
        }
        // Built before the old ones go: a line in both stays held throughout.
        self.core.held_outputs = crate::actuators::hold(&self.core.config.actuators);
        if nothing {
            tracing::info!("Reloaded; nothing changed.");
        } else {
            tracing::info!(
                sampling = changes.sampling,
                reconnect = changes.session,
                "Reloaded."
            );
        }
        service::notify(&[sd_notify::NotifyState::Ready]);
        Ok(changes.session)
    }
}

/// A reload refused: logged with every finding, and systemd told the running config stays.
fn refused(why: &str) {
    tracing::error!(findings = %why, "Reload refused; the running config stays.");
    service::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("reload refused; running the previous config"),
    ]);
}

/// What a reload checks the new config against.
struct Running {
    state_dir: PathBuf,
    client_id: String,
    sparkplug: bool,
    tls: TlsConfig,
}

/// The blocking part of a reload: load and admit the config at `path`, refuse what takes a
/// restart, and copy the key pair in when `broker.tls` changed (only then: the agent's copies
/// are what the running session connects with).
fn prepare(path: &std::path::Path, running: &Running) -> Result<Reloaded, String> {
    let (config, identity) = admit::reload(path)?;
    if config.config().sparkplug.is_some() != running.sparkplug {
        return Err(
            "switching between plain and Sparkplug mode takes a restart of the agent".to_owned(),
        );
    }
    if config.config().state_dir != running.state_dir {
        return Err(format!(
            "state_dir: moving it from {} to {} takes a restart of the agent (the outbox, the command ledger and the alert state are open where they are)",
            running.state_dir.display(),
            config.config().state_dir.display()
        ));
    }
    if identity.client_id != running.client_id {
        return Err(format!(
            "the client ID would change from {} to {}: a new identity takes a restart of the agent (what is queued was made as {})",
            running.client_id, identity.client_id, running.client_id
        ));
    }
    // Where the key lives is read by OpenSSL once, at start (its provider or engine).
    let key_setup = |tls: &TlsConfig| {
        (
            tls.key_file.as_deref().map(crate::keys::kind_of),
            tls.tpm.clone(),
            tls.pkcs11.as_ref().map(|p11| p11.module.clone()),
        )
    };
    if key_setup(&config.config().broker.tls) != key_setup(&running.tls) {
        return Err("where the device key lives (a file, a TPM, a PKCS#11 token), broker.tls.tpm and broker.tls.pkcs11.module take a restart of the agent: OpenSSL loads their provider or engine once, at start".to_owned());
    }
    let key_pair: Option<Option<KeyPairStore>> =
        (config.config().broker.tls != running.tls).then(|| admit::key_pair_store(&config));
    // Admission refused a key directory with errors; this is what it holds now.
    let keys = crate::signed::probe(&config.config().security).0;
    Ok(Reloaded {
        config,
        identity,
        keys,
        key_pair,
    })
}
