//! The MQTT session through Eclipse Paho C (the `paho-mqtt` crate). Only this module names paho
//! types. Paho's callbacks run on its own thread and only forward events into a bounded channel;
//! they never block and never decide.
//!
//! Reconnecting is ours, not Paho's (its automatic reconnect has no jitter): `run` owns the loop
//! and asks [`Session::connect`] again after each [`backoff::Backoff`] delay.

mod attempt;
pub mod backoff;
pub mod openssl_conf;
pub mod tls;

pub use attempt::{read_password, Attempt, Closer, Secret};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paho_mqtt as paho;
use tokio::sync::mpsc;

use crate::config::{Protocol, Scheme, ValidConfig};
use crate::telemetry;

/// What Paho tells the daemon.
#[derive(Debug)]
pub enum MqttEvent {
    /// The connection dropped: the broker sent a DISCONNECT (MQTT 5; `cause` names its reason
    /// code), or the socket ended (keepalive timeout, broker gone, socket error; `cause` `None`).
    Lost { cause: Option<String> },
}

/// The largest packet the agent takes from a broker, announced as MQTT 5's Maximum Packet Size
/// so the broker never sends more (it drops such a message for this client instead): a command
/// is at most 4 KiB and an operation request at most 64 KiB of content, signed and escaped.
/// Over MQTT 3.1.1 nothing can be announced; the broker's own limit (mosquitto's
/// `max_packet_size`) is then the bound of what Paho reads into memory.
pub const MAX_INCOMING_PACKET: u32 = 256 * 1024;

/// A message on a subscribed topic: `{prefix}/commands/{name}`, or in Sparkplug mode NCMD and
/// STATE.
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Sent with the retain flag: replayed by the broker at every subscribe.
    pub retained: bool,
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
    /// `check --connect`: the plain session's settings (the same persistent session, so the
    /// same ACL), but no will and no online status, and nothing subscribed by the connect: the
    /// check subscribes itself, to time it.
    Probe,
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

/// How much of incoming messages may wait for the event loop, in bytes (topic and payload, plus
/// [`INCOMING_OVERHEAD`] each). Paho calls its message callback with its own lock held, so the
/// callback must never wait: a loop that called into Paho meanwhile (a publish, a look at the
/// connection) would wait for that lock, and neither would move again. The queue therefore
/// takes every message up to this much and the loop drains it at once (a command is parsed and
/// queued in microseconds); a flood beyond it is dropped with an error line and counted.
pub const INCOMING_BYTES: usize = 16 << 20;

/// What one queued message counts for besides its topic and payload.
pub const INCOMING_OVERHEAD: usize = 64;

/// The sending half of the incoming queue, for Paho's message callback: never waits.
#[derive(Clone)]
pub struct IncomingSender {
    tx: mpsc::UnboundedSender<Incoming>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

/// The receiving half of the incoming queue, for the event loop.
pub struct IncomingReceiver {
    rx: mpsc::UnboundedReceiver<Incoming>,
    queued: Arc<AtomicUsize>,
}

/// The queue between Paho's message callback and the event loop (see [`INCOMING_BYTES`]).
pub fn incoming_queue() -> (IncomingSender, IncomingReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        IncomingSender {
            tx,
            queued: Arc::clone(&queued),
            dropped: Arc::default(),
        },
        IncomingReceiver { rx, queued },
    )
}

fn weight(message: &Incoming) -> usize {
    message.topic.len() + message.payload.len() + INCOMING_OVERHEAD
}

impl IncomingSender {
    /// Messages dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    /// Queues `message` without waiting; false when the queue holds [`INCOMING_BYTES`] already
    /// (the message is dropped and counted) or the loop has gone.
    pub fn send(&self, message: Incoming) -> bool {
        let size = weight(&message);
        if self.queued.fetch_add(size, Ordering::AcqRel) + size > INCOMING_BYTES {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            if self.dropped.fetch_add(1, Ordering::AcqRel) == 0 {
                tracing::error!(topic = %message.topic.escape_debug(), "More incoming messages than the agent holds while it works through them; this one and the next are dropped (counted in health).");
            }
            return false;
        }
        self.tx.send(message).is_ok()
    }
}

impl IncomingReceiver {
    pub async fn recv(&mut self) -> Option<Incoming> {
        let message = self.rx.recv().await?;
        self.queued.fetch_sub(weight(&message), Ordering::AcqRel);
        Some(message)
    }

    pub fn try_recv(&mut self) -> Option<Incoming> {
        let message = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(weight(&message), Ordering::AcqRel);
        Some(message)
    }
}

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
    /// The device key's PIN cannot be read (`broker.tls.pkcs11.pin_file`).
    #[error("{0}")]
    Key(String),
    #[error("connect to {urls}: {cause}")]
    Connect { urls: String, cause: String },
    /// Paho's connect timed out: the TCP connect, the TLS handshake or the CONNACK did not
    /// come within `connect_timeout_s` (Paho does not say which; the diagnosis does).
    #[error("connect to {urls}: no answer within {timeout_s} s (connect_timeout_s): the TCP connect, the TLS handshake or the CONNACK did not come")]
    NoAnswer { urls: String, timeout_s: f64 },
}

impl MqttError {
    /// Paho's connect got no answer in time (which step is missing takes a look of its own:
    /// `tls::missing_step`).
    pub fn is_no_answer(&self) -> bool {
        matches!(self, MqttError::NoAnswer { .. })
    }
}

/// The words for a DISCONNECT the broker sent: what Paho calls its reason code, and the code.
pub fn disconnect_cause(code: paho::ReasonCode) -> String {
    format!(
        "the broker sent DISCONNECT: {code} (reason code {:#04x})",
        code as u32
    )
}

/// What became of one published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// The broker has it.
    Delivered,
    /// The broker answered with a reason code of 0x80 or above (MQTT 5): not delivered, and
    /// sending it again on this connection would be refused again.
    Refused(String),
    /// No answer in time, or the connection went: it goes again.
    Failed,
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
    /// Kept as the builder: a Sparkplug will changes before every connect, and the password is
    /// read again before each ([`Session::set_password`]), so a rotated one is used.
    options: paho::ConnectOptionsBuilder,
    /// `broker.connect_timeout_s`: also the bound of the SUBSCRIBE and the online status of an
    /// attempt, each.
    connect_timeout: Duration,
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
    /// `{prefix}/responses`.
    pub responses_topic: String,
    /// Subscribed on every connect: `{prefix}/commands/+` and `{prefix}/operations/+`, or
    /// Sparkplug's NCMD and STATE.
    subscriptions: Vec<String>,
    boot_id: String,
    /// `broker.protocol` is "5".
    mqtt5: bool,
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
        incoming: IncomingSender,
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
        let lost = events.clone();
        client.set_connection_lost_callback(move |_| {
            // A full channel already holds a Lost event; this one adds nothing.
            let _ = lost.try_send(MqttEvent::Lost { cause: None });
        });
        // A DISCONNECT from the broker (MQTT 5: a session taken over, a server shutting down)
        // ends the connection too, but Paho reports it only here, never as a lost connection.
        client.set_disconnected_callback(move |_, _, code| {
            let _ = events.try_send(MqttEvent::Lost {
                cause: Some(disconnect_cause(code)),
            });
        });
        client.set_message_callback(move |_, message| {
            let Some(message) = message else { return };
            // Never waits (see INCOMING_BYTES): Paho holds its lock here.
            incoming.send(Incoming {
                topic: message.topic().to_owned(),
                payload: message.payload().to_vec(),
                retained: message.retained(),
            });
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
        let clean = broker.clean_session || sparkplug || config.config().sparkplug.is_some();
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
            .connect_timeout(broker.connect_timeout());
        if !matches!(profile, Profile::Probe) {
            options.will_message(will.message());
        }
        match broker.protocol {
            Protocol::V311 => {
                options.clean_session(clean);
            }
            Protocol::V5 => {
                let mut properties = paho::Properties::new();
                // An edge node's session ends with its connection (Sparkplug 3.0), also when
                // `check --connect` connects as the node.
                let expiry = if sparkplug || config.config().sparkplug.is_some() {
                    0
                } else {
                    u32::try_from(broker.session_expiry_s).unwrap_or(u32::MAX)
                };
                properties
                    .push_u32(paho::PropertyCode::SessionExpiryInterval, expiry)
                    .map_err(MqttError::Create)?;
                properties
                    .push_u32(paho::PropertyCode::MaximumPacketSize, MAX_INCOMING_PACKET)
                    .map_err(MqttError::Create)?;
                options.clean_start(clean).properties(properties);
            }
        }
        if let Some(username) = &broker.username {
            options.user_name(username);
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
                // A key in a token: its PIN, which the vendored Paho hands to the pkcs11 engine
                // (read here, at the session's creation: at start and at each reload).
                if crate::keys::is_uri(key) {
                    if let Some(pin) = crate::keys::pin(tls).map_err(MqttError::Key)? {
                        ssl.private_key_password(pin);
                    }
                }
            }
            options.ssl_options(ssl.finalize());
        }
        let subscriptions = match &profile {
            Profile::Plain => vec![
                format!("{prefix}/commands/+"),
                format!("{prefix}/operations/+"),
            ],
            Profile::Sparkplug { subscriptions } => subscriptions.clone(),
            Profile::Probe => Vec::new(),
        };
        Ok(Session {
            client,
            options,
            connect_timeout: broker.connect_timeout(),
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
            responses_topic: format!("{prefix}/responses"),
            subscriptions,
            boot_id: boot_id(),
            mqtt5: broker.protocol == Protocol::V5,
        })
    }

    /// How many brokers `broker.urls` names.
    pub fn servers(&self) -> usize {
        self.written.len()
    }

    /// The next connect tries the brokers from the one after `current` (the one this session
    /// is on; the first of this order when unknown), the others after it in turn: Sparkplug's
    /// walk to the next server when the primary host is offline on this one.
    pub fn next_server_after(&mut self, current: Option<&str>) {
        if self.written.len() < 2 {
            return;
        }
        let at = current
            .and_then(|current| {
                self.written
                    .iter()
                    .position(|(uri, url)| uri == current || url == current)
            })
            .unwrap_or(0);
        self.written.rotate_left(at + 1);
        let uris: Vec<&str> = self.written.iter().map(|(uri, _)| uri.as_str()).collect();
        self.options.server_uris(&uris);
    }

    /// The will of the next connect (Sparkplug's NDEATH carries the session's bdSeq).
    pub fn set_will(&mut self, will: Outgoing) {
        self.options.will_message(will.message());
        self.will = will;
    }

    /// The password of the next connect (`broker.password_file` as read just before it).
    pub fn set_password(&mut self, password: &str) {
        self.options.password(password);
    }

    /// A connect attempt that runs apart from the event loop (it takes up to
    /// `connect_timeout_s` per URL): owned, so it can be moved into a task.
    pub fn attempt(&self) -> Attempt {
        Attempt {
            client: self.client.clone(),
            options: self.options.finalize(),
            timeout: self.connect_timeout,
            urls_count: self.written.len(),
            subscriptions: self.subscriptions.clone(),
            urls: self.urls.clone(),
            written: self.written.clone(),
            status: match self.profile {
                Profile::Plain => Some((self.status_topic.clone(), self.boot_id.clone())),
                Profile::Sparkplug { .. } | Profile::Probe => None,
            },
            mqtt5: self.mqtt5,
            will_on_disconnect: self.will_on_disconnect(),
        }
    }

    /// Sparkplug 3.0 over MQTT 5: every DISCONNECT says "Disconnect with Will Message".
    fn will_on_disconnect(&self) -> bool {
        self.mqtt5 && matches!(self.profile, Profile::Sparkplug { .. })
    }

    /// An owned handle that ends this session's connection, for a task.
    pub fn closer(&self) -> Closer {
        Closer {
            client: self.client.clone(),
            goodbye: self.goodbye(),
            will_on_disconnect: self.will_on_disconnect(),
        }
    }

    /// Hands a message to Paho without waiting for the broker (QoS 0 needs no answer; a
    /// failure at QoS 1 or more shows as a lost connection); false when there is no connection
    /// to send it on.
    pub fn publish(&self, topic: &str, payload: Vec<u8>, qos: u8, retain: bool) -> bool {
        if !self.client.is_connected() {
            return false;
        }
        let message = if retain {
            paho::Message::new_retained(topic, payload, i32::from(qos))
        } else {
            paho::Message::new(topic, payload, i32::from(qos))
        };
        drop(self.client.publish(message));
        true
    }

    /// Hands an outbox message to Paho; the future says, within `wait`, whether the broker took
    /// it (PUBACK or PUBCOMP), refused it (MQTT 5: a reason code of 0x80 or above, e.g. its ACL),
    /// or gave no answer. `None` when there is no connection to send it on.
    pub fn publish_confirmed(
        &self,
        topic: &str,
        payload: Vec<u8>,
        qos: u8,
        wait: Duration,
    ) -> Option<impl std::future::Future<Output = Confirmation> + Send + 'static> {
        if !self.client.is_connected() {
            return None;
        }
        let token = self
            .client
            .publish(paho::Message::new(topic, payload, i32::from(qos)));
        Some(async move {
            match tokio::time::timeout(wait, token).await {
                Ok(Ok(_)) => Confirmation::Delivered,
                Ok(Err(paho::Error::ReasonCode(code, _))) => {
                    Confirmation::Refused(format!("{code} (reason code {:#04x})", code as u32))
                }
                _ => Confirmation::Failed,
            }
        })
    }

    /// Subscribes to `filter` at QoS 1; the broker's refusal (a SUBACK failure code, e.g. its
    /// ACL) is an error with the code.
    pub async fn subscribe(&self, filter: &str) -> Result<(), String> {
        match self.client.subscribe(filter, 1).await {
            Ok(response) => match response.subscribe_response() {
                Some(code) if code >= 0x80 => Err(format!(
                    "the broker refused the subscription (code {code:#04x})"
                )),
                _ => Ok(()),
            },
            Err(err) => Err(attempt::describe(&err)),
        }
    }

    /// `{prefix}/health`.
    pub fn health_topic(&self) -> String {
        let prefix = self.status_topic.trim_end_matches("/status");
        format!("{prefix}/health")
    }

    /// `{prefix}/commands/+`.
    pub fn commands_filter(&self) -> String {
        let prefix = self.status_topic.trim_end_matches("/status");
        format!("{prefix}/commands/+")
    }

    /// The goodbye of a clean stop: plain, the retained shutdown status; Sparkplug, the NDEATH
    /// that is also the will.
    fn goodbye(&self) -> Outgoing {
        match self.profile {
            Profile::Plain | Profile::Probe => {
                let now_ms = crate::model::now_ms();
                Outgoing {
                    topic: self.status_topic.clone(),
                    payload: telemetry::shutdown(now_ms, crate::clock::synced(now_ms)).into_bytes(),
                    qos: 1,
                    retain: true,
                }
            }
            Profile::Sparkplug { .. } => self.will.clone(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    pub fn urls(&self) -> &str {
        &self.urls
    }
}

/// The kernel's boot id, so consumers can tell a reboot from a reconnect.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The callback never waits: up to INCOMING_BYTES it queues, beyond that it drops and
    /// counts; what the loop takes makes room again.
    #[test]
    fn the_incoming_queue_never_waits_and_counts_what_it_drops() {
        let (sender, mut receiver) = incoming_queue();
        let message = |size: usize| Incoming {
            topic: "t".to_owned(),
            payload: vec![b'x'; size],
            retained: false,
        };
        let big = INCOMING_BYTES / 4;
        for _ in 0..3 {
            assert!(sender.send(message(big)));
        }
        assert!(!sender.send(message(big)), "the fourth does not fit");
        assert_eq!(sender.dropped(), 1);
        assert!(receiver.try_recv().is_some());
        assert!(sender.send(message(big)), "room again");
        assert_eq!(sender.dropped(), 1);
    }
}
