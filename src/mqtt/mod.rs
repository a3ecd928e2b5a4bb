//! The MQTT session through Eclipse Paho C (the `paho-mqtt` crate). Only this module names paho
//! types. Paho's callbacks run on its own thread and only forward events into a bounded channel;
//! they never block and never decide.
//!
//! Reconnecting is ours, not Paho's (its automatic reconnect has no jitter): `run` owns the loop
//! and asks [`Session::connect`] again after each [`backoff::Backoff`] delay.

pub mod backoff;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use paho_mqtt as paho;
use tokio::sync::mpsc;

use crate::config::{Protocol, Scheme, ValidConfig};
use crate::telemetry;

/// What Paho tells the daemon.
#[derive(Debug)]
pub enum MqttEvent {
    /// The connection dropped (keepalive timeout, broker gone, socket error).
    Lost,
}

/// A message on a subscribed topic: `{prefix}/commands/{name}`, or in Sparkplug mode NCMD and
/// STATE.
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    /// The last topic level: the command's name in plain mode.
    pub name: String,
    pub payload: Vec<u8>,
}

/// What the session is for: the plain topics, or a Sparkplug B edge node.
#[derive(Debug, Clone)]
pub enum Profile {
    /// Persistent session (`broker.clean_session`), retained status and will on
    /// `{prefix}/status`, commands subscribed.
    Plain,
    /// Sparkplug B 3.0: Clean Session true (MQTT 5: Clean Start true, Session Expiry 0), these
    /// filters subscribed on every connect, and a will the caller sets before each connect
    /// ([`Session::set_will`]), also published as the goodbye on a clean stop.
    Sparkplug { subscriptions: Vec<String> },
}

/// A message the session sends on its own: the will, or the goodbye of a clean stop.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

impl Outgoing {
    fn message(&self) -> paho::Message {
        if self.retain {
            paho::Message::new_retained(&self.topic, self.payload.clone(), i32::from(self.qos))
        } else {
            paho::Message::new(&self.topic, self.payload.clone(), i32::from(self.qos))
        }
    }
}

/// Commands waiting for the event loop. A command arriving when this is full is lost (and
/// logged): the broker has already had its acknowledgement.
pub const INCOMING_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("cannot create the MQTT client: {0}")]
    Create(#[source] paho::Error),
    #[error("cannot read broker.password_file {}: {source}", path.display())]
    Password {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[source] paho::Error),
    #[error("connect to {urls}: {cause}")]
    Connect { urls: String, cause: String },
}

/// What a successful connect found.
#[derive(Debug)]
pub struct Connected {
    /// The broker that answered, after failover.
    pub server: String,
    /// The broker kept our session (clean_session false); when it did not, subscriptions must
    /// be made again.
    pub session_present: bool,
}

/// One device's MQTT client: the options it connects with and the topics it owns.
pub struct Session {
    client: paho::AsyncClient,
    /// Kept as the builder: a Sparkplug will changes before every connect.
    options: paho::ConnectOptionsBuilder,
    profile: Profile,
    /// The will as last set; in Sparkplug mode also the goodbye of a clean stop.
    will: Outgoing,
    /// The URLs in failover order, for log lines.
    urls: String,
    /// Paho's URI of each endpoint and the URL as configured, to name a broker as the operator
    /// wrote it.
    written: Vec<(String, String)>,
    /// `{prefix}/status`.
    status_topic: String,
    /// `{prefix}/telemetry`.
    pub telemetry_topic: String,
    /// `{prefix}/responses`.
    pub responses_topic: String,
    /// Subscribed on every connect: `{prefix}/commands/+`, or Sparkplug's NCMD and STATE.
    subscriptions: Vec<String>,
    boot_id: String,
}

/// Paho's URI for an endpoint: it knows `ssl://` and `tcp://`.
fn paho_uri(endpoint: &crate::config::Endpoint) -> String {
    let scheme = match endpoint.scheme {
        Scheme::Tls => "ssl",
        Scheme::Plain => "tcp",
    };
    if endpoint.host.contains(':') {
        format!("{scheme}://[{}]:{}", endpoint.host, endpoint.port)
    } else {
        format!("{scheme}://{}:{}", endpoint.host, endpoint.port)
    }
}

impl Session {
    pub fn new(
        config: &ValidConfig,
        client_id: &str,
        events: mpsc::Sender<MqttEvent>,
        incoming: mpsc::Sender<Incoming>,
        key_pair: Option<&tls::KeyPairFiles>,
        profile: Profile,
    ) -> Result<Session, MqttError> {
        let broker = &config.config().broker;
        let uris: Vec<String> = config.endpoints.iter().map(paho_uri).collect();
        let version = match broker.protocol {
            Protocol::V311 => paho::MQTT_VERSION_3_1_1,
            Protocol::V5 => paho::MQTT_VERSION_5,
        };
        let client = paho::CreateOptionsBuilder::new()
            .server_uri(uris[0].clone())
            .client_id(client_id)
            .persistence(None)
            .mqtt_version(version)
            .finalize();
        let client = paho::AsyncClient::new(client).map_err(MqttError::Create)?;
        client.set_connection_lost_callback(move |_| {
            // A full channel already holds a Lost event; this one adds nothing.
            let _ = events.try_send(MqttEvent::Lost);
        });
        client.set_message_callback(move |_, message| {
            let Some(message) = message else { return };
            let name = message
                .topic()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let command = Incoming {
                topic: message.topic().to_owned(),
                name,
                payload: message.payload().to_vec(),
            };
            if incoming.try_send(command).is_err() {
                tracing::error!(topic = %message.topic(), "Command queue full; command lost.");
            }
        });

        let prefix = config.topic_prefix(client_id);
        let status_topic = format!("{prefix}/status");
        let will = Outgoing {
            topic: status_topic.clone(),
            payload: telemetry::will().into_bytes(),
            qos: 1,
            retain: true,
        };
        let sparkplug = matches!(profile, Profile::Sparkplug { .. });
        // Sparkplug B 3.0 requires a clean session of edge nodes, whatever the config says.
        let clean = broker.clean_session || sparkplug;
        let mut options = match broker.protocol {
            Protocol::V311 => paho::ConnectOptionsBuilder::new_v3(),
            Protocol::V5 => paho::ConnectOptionsBuilder::new_v5(),
        };
        // Paho pings after a keepalive of silence and gives up after another without an answer;
        // at half the configured keepalive a half-open connection is noticed within keepalive_s,
        // and the broker (which allows 1.5 times what we announce) fires the will sooner.
        options
            .server_uris(&uris)
            .keep_alive_interval((broker.keepalive() / 2).max(Duration::from_secs(1)))
            .connect_timeout(broker.connect_timeout())
            .will_message(will.message());
        match broker.protocol {
            Protocol::V311 => {
                options.clean_session(clean);
            }
            Protocol::V5 => {
                let mut properties = paho::Properties::new();
                let expiry = if sparkplug {
                    0
                } else {
                    u32::try_from(broker.session_expiry_s).unwrap_or(u32::MAX)
                };
                properties
                    .push_u32(paho::PropertyCode::SessionExpiryInterval, expiry)
                    .map_err(MqttError::Create)?;
                options.clean_start(clean).properties(properties);
            }
        }
        if let Some(username) = &broker.username {
            options.user_name(username);
        }
        if let Some(path) = &broker.password_file {
            let password = std::fs::read_to_string(path).map_err(|source| MqttError::Password {
                path: path.clone(),
                source,
            })?;
            options.password(password.trim_end_matches(['\n', '\r']));
        }
        if config.endpoints.iter().any(|e| e.scheme == Scheme::Tls) {
            let tls = &broker.tls;
            let mut ssl = paho::SslOptionsBuilder::new();
            ssl.enable_server_cert_auth(true)
                .verify(tls.verify_hostname);
            if let Some(ca) = &tls.ca_file {
                ssl.trust_store(ca).map_err(MqttError::Tls)?;
            }
            // The agent's own copies of the certificate and key when it keeps them (see
            // tls::KeyPairStore), so a bad renewal on disk never reaches a connect.
            let (cert, key) = match key_pair {
                Some(store) => (Some(store.cert.clone()), Some(store.key.clone())),
                None => (tls.cert_file.clone(), tls.key_file.clone()),
            };
            if let Some(cert) = &cert {
                ssl.key_store(cert).map_err(MqttError::Tls)?;
            }
            if let Some(key) = &key {
                ssl.private_key(key).map_err(MqttError::Tls)?;
            }
            options.ssl_options(ssl.finalize());
        }
        let subscriptions = match &profile {
            Profile::Plain => vec![format!("{prefix}/commands/+")],
            Profile::Sparkplug { subscriptions } => subscriptions.clone(),
        };
        Ok(Session {
            client,
            options,
            profile,
            will,
            urls: config
                .endpoints
                .iter()
                .map(|e| e.url.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            written: config
                .endpoints
                .iter()
                .map(|e| (paho_uri(e), e.url.clone()))
                .collect(),
            status_topic,
            telemetry_topic: format!("{prefix}/telemetry"),
            responses_topic: format!("{prefix}/responses"),
            subscriptions,
            boot_id: boot_id(),
        })
    }

    /// The will of the next connect (Sparkplug's NDEATH carries the session's bdSeq).
    pub fn set_will(&mut self, will: Outgoing) {
        self.options.will_message(will.message());
        self.will = will;
    }

    /// Connects (trying the URLs in order), subscribes, and in plain mode publishes the retained
    /// online status.
    pub async fn connect(&self) -> Result<Connected, MqttError> {
        let response = self
            .client
            .connect(self.options.finalize())
            .await
            .map_err(|err| MqttError::Connect {
                urls: self.urls.clone(),
                cause: describe(&err),
            })?;
        // On every connect: a broker that lost the session has lost the subscription too, and
        // subscribing again to a kept one changes nothing.
        for filter in &self.subscriptions {
            if let Err(err) = self.client.subscribe(filter, 1).await {
                let _ = self.client.disconnect(None).await;
                return Err(MqttError::Connect {
                    urls: self.urls.clone(),
                    cause: format!("subscribing to {filter} failed: {}", describe(&err)),
                });
            }
        }
        let connected = match response.connect_response() {
            Some(response) => Connected {
                server: self
                    .written
                    .iter()
                    .find(|(uri, _)| *uri == response.server_uri)
                    .map_or(response.server_uri, |(_, url)| url.clone()),
                session_present: response.session_present,
            },
            None => Connected {
                server: self.urls.clone(),
                session_present: false,
            },
        };
        if let Profile::Plain = self.profile {
            let now_ms = crate::model::now_ms();
            let status = telemetry::online(now_ms, crate::clock::synced(now_ms), &self.boot_id);
            // Just connected: a failure here is a connection lost at once, which Paho reports.
            let _ = self.publish(&self.status_topic, status, 1, true);
        }
        Ok(connected)
    }

    /// Hands a message to Paho, or gives the payload back when there is no connection to send
    /// it on (so the caller can keep it without a copy).
    pub fn publish(
        &self,
        topic: &str,
        payload: String,
        qos: u8,
        retain: bool,
    ) -> Result<(), String> {
        if !self.client.is_connected() {
            return Err(payload);
        }
        let message = if retain {
            paho::Message::new_retained(topic, payload, i32::from(qos))
        } else {
            paho::Message::new(topic, payload, i32::from(qos))
        };
        // QoS 0 needs no answer; a QoS >= 1 failure shows as a lost connection.
        drop(self.client.publish(message));
        Ok(())
    }

    /// Hands a binary message to Paho; false when there is no connection to send it on.
    pub fn publish_bytes(&self, topic: &str, payload: Vec<u8>, qos: u8) -> bool {
        if !self.client.is_connected() {
            return false;
        }
        drop(
            self.client
                .publish(paho::Message::new(topic, payload, i32::from(qos))),
        );
        true
    }

    /// Hands an outbox message to Paho: the token completes when the broker has it (PUBACK or
    /// PUBCOMP; for QoS 0 once written). `None` when there is no connection to send it on.
    pub fn publish_tracked(
        &self,
        topic: &str,
        payload: Vec<u8>,
        qos: u8,
    ) -> Option<paho::DeliveryToken> {
        if !self.client.is_connected() {
            return None;
        }
        Some(
            self.client
                .publish(paho::Message::new(topic, payload, i32::from(qos))),
        )
    }

    /// Publishes the goodbye (plain: the retained shutdown status; Sparkplug: the NDEATH that
    /// is also the will), waits up to `wait` for it, and disconnects cleanly so the broker does
    /// not send the will.
    pub async fn close(&self, wait: Duration) {
        if !self.client.is_connected() {
            return;
        }
        let goodbye = match self.profile {
            Profile::Plain => {
                let now_ms = crate::model::now_ms();
                paho::Message::new_retained(
                    &self.status_topic,
                    telemetry::shutdown(now_ms, crate::clock::synced(now_ms)),
                    1,
                )
            }
            Profile::Sparkplug { .. } => self.will.message(),
        };
        let topic = goodbye.topic().to_owned();
        let delivered = tokio::time::timeout(wait, self.client.publish(goodbye)).await;
        if !matches!(delivered, Ok(Ok(()))) {
            tracing::warn!(topic = %topic, "Goodbye message not confirmed in time.");
        }
        let options = paho::DisconnectOptionsBuilder::new()
            .timeout(wait)
            .finalize();
        if let Err(err) = self.client.disconnect(options).await {
            tracing::warn!(error = %err, "Disconnect failed.");
        }
    }

    /// Disconnects cleanly without a status, for a reconnect with new settings (the next
    /// connect publishes the online status again).
    pub async fn disconnect(&self) {
        if self.client.is_connected() {
            let options = paho::DisconnectOptionsBuilder::new()
                .timeout(Duration::from_secs(2))
                .finalize();
            let _ = self.client.disconnect(options).await;
        }
    }

    pub fn urls(&self) -> &str {
        &self.urls
    }
}

/// Paho's error in words: its own text for a refused CONNACK is only "(0)".
fn describe(err: &paho::Error) -> String {
    match err {
        paho::Error::ConnectReturn(code) => format!("the broker refused the connection: {code}"),
        other => other.to_string(),
    }
}

/// The kernel's boot id, so consumers can tell a reboot from a reconnect.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}
