//! Reloads (SIGHUP) and certificate renewals: the new config or key pair is checked on the
//! blocking pool, and what it changes is applied when the result comes back as an event.

use super::event::Event;
use super::store::Request;
use super::{admit, edge, start_sampler, Daemon, Mode};
use crate::config::{Changes, ValidConfig};
use crate::identity::Identity;
use crate::mqtt::Profile;
use crate::service;

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
                let goodbye = matches!(self.mode, Mode::Sparkplug(_));
                if let Mode::Sparkplug(edge) = &mut self.mode {
                    edge.ended();
                }
                self.core.reconnect(goodbye);
            }
            Err(reason) => {
                tracing::error!(cert = %cert, reason = %reason, "New certificate refused; the running one stays.")
            }
        }
    }

    /// SIGHUP: the new config is loaded and checked on the blocking pool.
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
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || admit::reload(&path))
                .await
                .unwrap_or_else(|_| Err("internal error while reloading".to_owned()));
            let _ = events.send(Event::Reloaded(Box::new(result))).await;
        });
    }

    pub(super) fn on_reloaded(&mut self, result: Result<(ValidConfig, Identity), String>) {
        self.reloading = false;
        self.apply_reload(result);
        if std::mem::take(&mut self.reload_again) {
            self.reload();
        }
    }

    fn apply_reload(&mut self, result: Result<(ValidConfig, Identity), String>) {
        let refused = |why: &str| {
            tracing::error!(findings = %why, "Reload refused; the running config stays.");
            service::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("reload refused; running the previous config"),
            ]);
        };
        let (config, identity) = match result {
            Ok(loaded) => loaded,
            Err(findings) => return refused(&findings),
        };
        let sparkplug = config.config().sparkplug.is_some();
        if sparkplug != matches!(self.mode, Mode::Sparkplug(_)) {
            return refused(
                "switching between plain and Sparkplug mode takes a restart of the agent",
            );
        }
        let old = self.core.config.config();
        if config.config().state_dir != old.state_dir {
            return refused(&format!(
                "state_dir: moving it from {} to {} takes a restart of the agent (the outbox, the command ledger and the alert state are open where they are)",
                old.state_dir.display(),
                config.config().state_dir.display()
            ));
        }
        if identity.client_id != self.core.identity.client_id {
            return refused(&format!(
                "the client ID would change from {} to {}: a new identity takes a restart of the agent (what is queued was made as {})",
                self.core.identity.client_id, identity.client_id, self.core.identity.client_id
            ));
        }
        let changes = Changes::between(old, config.config());
        if changes.session {
            if config.config().broker.tls.min_version != old.broker.tls.min_version {
                tracing::warn!(
                    "broker.tls.min_version takes effect at the next start of the agent."
                );
            }
            let key_pair = if config.config().broker.tls != old.broker.tls {
                admit::key_pair_store(&config)
            } else {
                self.key_pair.take()
            };
            let profile = match &self.mode {
                Mode::Plain(_) => Profile::Plain,
                Mode::Sparkplug(_) => Profile::Sparkplug {
                    subscriptions: edge::Edge::subscriptions_for(&config, &identity),
                },
            };
            let session =
                match self
                    .core
                    .new_session(&config, &identity, key_pair.as_ref(), profile)
                {
                    Ok(session) => session,
                    Err(err) => {
                        self.key_pair = key_pair;
                        return refused(&err.to_string());
                    }
                };
            self.key_pair = key_pair;
            // The old session ends (Sparkplug: with its goodbye), the new one connects once it
            // has.
            let goodbye = matches!(self.mode, Mode::Sparkplug(_));
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
        let sampling = changes.sampling;
        let session_changed = changes.session;
        match &mut self.mode {
            Mode::Plain(plain) => plain.reconfigure(&config, &identity),
            Mode::Sparkplug(edge) => {
                if !nothing {
                    let state = self
                        .core
                        .book
                        .lock()
                        .map(|b| b.state().clone())
                        .unwrap_or_default();
                    edge.reconfigure(&config, &identity, &state, session_changed);
                }
            }
        }
        if sampling || (!nothing && matches!(self.mode, Mode::Sparkplug(_))) {
            self.core
                .book
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .reconfigure(&config, &identity.client_id);
            self.core.config = config;
            self.core.identity = identity;
            let mut old = std::mem::replace(
                &mut self.sampler,
                start_sampler(&self.core, &self.mode, self.passes_tx.clone()),
            );
            old.stop();
        } else {
            self.core.config = config;
            self.core.identity = identity;
        }
        // Built before the old ones go: a line in both stays held throughout.
        self.core.held_outputs = crate::actuators::hold(&self.core.config.actuators);
        if nothing {
            tracing::info!("Reloaded; nothing changed.");
        } else {
            tracing::info!(sampling, reconnect = session_changed, "Reloaded.");
        }
        service::notify(&[sd_notify::NotifyState::Ready]);
    }
}
