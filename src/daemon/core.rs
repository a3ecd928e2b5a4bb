//! What both modes of the loop use: the config and identity, the session and its link, the
//! store's handle, the counters. One place, so each mode and each part of the loop takes it by
//! reference.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::connect::ConnectLog;
use super::event::{Event, Report};
use super::link::Link;
use super::sampler::{AlertBook, SamplerStats};
use super::store::StoreHandle;
use super::Counters;
use crate::config::ValidConfig;
use crate::identity::Identity;
use crate::mqtt::{tls, MqttError, MqttEvent, Profile, Session};

/// The parts both modes use.
pub(crate) struct Core {
    pub config: ValidConfig,
    pub identity: Identity,
    pub session: Session,
    pub link: Link,
    pub store: StoreHandle,
    /// The outbox as the store last reported it.
    pub outbox: Report,
    pub counters: Counters,
    pub connect_log: ConnectLog,
    pub events: mpsc::Sender<Event>,
    pub started: Instant,
    pub stats: Arc<SamplerStats>,
    pub book: Arc<Mutex<AlertBook>>,
    /// The remote operations (plain mode).
    pub operations: super::operations::Operations,
    /// The keys requests must be signed with (`security.command_keys`), when they must be.
    pub keys: Option<Arc<crate::signed::Keys>>,
    /// The sensors whose read is stuck, for every sampler thread (across reloads) and `read`.
    pub stuck: crate::sensors::Stuck,
    /// The broker we are connected to, and since when (Unix ms).
    pub server: Option<(String, u64)>,
    /// Since when there is no connection (Unix ms), while `server` is `None`.
    pub offline_since: u64,
    /// A write of `status.json` is under way (it is skipped, not queued, while one is).
    pub status_writing: Arc<std::sync::atomic::AtomicBool>,
    /// The alert book's event counter when `status.json` was last written after a pass.
    pub status_alerts: u64,
    /// After the session we are closing has gone, connect again after this (a primary host
    /// that went offline); at once when `None`.
    pub reconnect_after: Option<Duration>,
    /// The GPIO outputs of the actuators, held while the agent runs (their levels kept until a
    /// command sets them).
    pub held_outputs: Vec<Arc<dyn crate::gpio::Output>>,
    /// Paho's channels, for a new session after a reload.
    pub(super) lost_tx: mpsc::Sender<MqttEvent>,
    pub(super) incoming_tx: crate::mqtt::IncomingSender,
}

impl Core {
    /// The connection is gone (or going).
    pub fn went_offline(&mut self) {
        if self.server.take().is_some() {
            self.offline_since = crate::model::now_ms();
        }
    }

    /// A session for `config` in the mode's profile.
    pub(super) fn new_session(
        &self,
        config: &ValidConfig,
        identity: &Identity,
        key_pair: Option<&tls::KeyPairStore>,
        profile: Profile,
    ) -> Result<Session, MqttError> {
        Session::new(
            config,
            &identity.client_id,
            self.lost_tx.clone(),
            self.incoming_tx.clone(),
            key_pair.map(|store| &store.files),
            profile,
        )
    }

    /// Connects again with the session as it now is: after the current connection has ended
    /// (with the goodbye when `goodbye`), or at once when there is none.
    pub(super) fn reconnect(&mut self, goodbye: bool) {
        if self.session.is_connected() {
            self.close_session(goodbye);
        } else {
            self.link.restart(Instant::now(), Duration::ZERO, false);
        }
    }

    /// Ends the current connection from a task; the next connect waits for `SessionClosed`.
    pub(super) fn close_session(&mut self, goodbye: bool) {
        let closer = self.session.closer();
        let events = self.events.clone();
        // No attempt until the old connection is gone (same client ID: a takeover otherwise).
        self.link.restart(Instant::now(), FOREVER, true);
        self.went_offline();
        tokio::spawn(async move {
            if goodbye {
                closer.close(Duration::from_secs(2)).await;
            } else {
                closer.disconnect(Duration::from_secs(2)).await;
            }
            let _ = events.send(Event::SessionClosed).await;
        });
    }
}

/// A wait that ends only by an event.
pub(super) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
