//! The MQTT session through Eclipse Paho C (the `paho-mqtt` crate). Only this module names paho
//! types. Paho's callbacks run on its own thread and only forward events into a bounded channel;
//! they never block and never decide.
//!
//! Reconnecting is ours, not Paho's (its automatic reconnect has no jitter): `run` owns the loop
//! and asks [`Session::connect`] again after each [`backoff::Backoff`] delay.

pub mod backoff;
pub mod openssl_conf;
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

/// Messages waiting for the event loop. When this is full, Paho's receive thread waits (up to
/// [`INCOMING_WAIT`]) instead of dropping what it has already acknowledged: it reads no more
/// from the socket meanwhile, so the broker holds the rest (backpressure).
pub const INCOMING_QUEUE: usize = 256;

/// How long Paho's thread waits for room in the incoming queue before it gives a message up
/// (the event loop would have to be stuck for that long; it never waits on anything slow).
pub const INCOMING_WAIT: Duration = Duration::from_secs(30);

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
    /// `{prefix}/telemetry`.
    pub telemetry_topic: String,
    /// `{prefix}/responses`.
    pub responses_topic: String,
    /// Subscribed on every connect: `{prefix}/commands/+`, or Sparkplug's NCMD and STATE.
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
            let mut command = Incoming {
                topic: message.topic().to_owned(),
                payload: message.payload().to_vec(),
                retained: message.retained(),
            };
            // Waits for room rather than dropping a message Paho has acknowledged.
            let started = std::time::Instant::now();
            loop {
                match incoming.try_send(command) {
                    Ok(()) => return,
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                    Err(mpsc::error::TrySendError::Full(back)) => {
                        if started.elapsed() >= INCOMING_WAIT {
                            tracing::error!(topic = %back.topic, "The event loop took no message for 30 s; one is lost.");
                            return;
                        }
                        command = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
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
                let expiry = if sparkplug {
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
            }
            options.ssl_options(ssl.finalize());
        }
        let subscriptions = match &profile {
            Profile::Plain => vec![format!("{prefix}/commands/+")],
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
            telemetry_topic: format!("{prefix}/telemetry"),
            responses_topic: format!("{prefix}/responses"),
            subscriptions,
            boot_id: boot_id(),
            mqtt5: broker.protocol == Protocol::V5,
        })
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
        }
    }

    /// An owned handle that ends this session's connection, for a task.
    pub fn closer(&self) -> Closer {
        Closer {
            client: self.client.clone(),
            goodbye: self.goodbye(),
        }
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
        let token = self.publish_tracked(topic, payload, qos)?;
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
            Err(err) => Err(describe(&err)),
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

/// A connect attempt, apart from the session: see [`Session::attempt`].
pub struct Attempt {
    client: paho::AsyncClient,
    options: paho::ConnectOptions,
    /// `connect_timeout_s`: Paho's bound of each URL's TCP, TLS and CONNACK; ours of the
    /// SUBSCRIBE and of the online status.
    timeout: Duration,
    urls_count: usize,
    subscriptions: Vec<String>,
    urls: String,
    written: Vec<(String, String)>,
    /// Plain mode: the status topic and boot id of the online status.
    status: Option<(String, String)>,
    /// The attempt speaks MQTT 5 (for the words of a refusal).
    mqtt5: bool,
}

impl Attempt {
    /// An owned handle that ends the connection this attempt makes (it may succeed after the
    /// loop has stopped caring).
    pub fn closer(&self) -> Closer {
        Closer {
            client: self.client.clone(),
            goodbye: Outgoing {
                topic: String::new(),
                payload: Vec::new(),
                qos: 0,
                retain: false,
            },
        }
    }

    /// The broker URLs, for log lines.
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// How long the whole attempt may take at most: Paho's connect timeout for each URL, then
    /// one each for the SUBSCRIBE and the online status, and a little slack. The daemon gives up
    /// on an attempt that has not ended by then (a backstop: each step has its own bound).
    pub fn bound(&self) -> Duration {
        self.timeout * (self.urls_count as u32 + 2) + Duration::from_secs(5)
    }

    /// Connects (trying the URLs in order), subscribes, and in plain mode publishes the retained
    /// online status and waits for the broker to take it. Each step is bounded by
    /// `connect_timeout_s`: a broker that never answers the SUBSCRIBE or the status ends the
    /// attempt with that reason (the connection closed), so the agent never waits half
    /// connected.
    pub async fn run(self) -> Result<Connected, MqttError> {
        let failed = |cause: String| MqttError::Connect {
            urls: self.urls.clone(),
            cause,
        };
        let response =
            self.client
                .connect(self.options.clone())
                .await
                .map_err(|err| match err {
                    paho::Error::TcpConnectTimeout => MqttError::NoAnswer {
                        urls: self.urls.clone(),
                        timeout_s: self.timeout.as_secs_f64(),
                    },
                    err => failed(describe_connect(&err, self.mqtt5)),
                })?;
        // On every connect: a broker that lost the session has lost the subscription too, and
        // subscribing again to a kept one changes nothing.
        for filter in &self.subscriptions {
            let cause = match tokio::time::timeout(self.timeout, self.client.subscribe(filter, 1))
                .await
            {
                Ok(Ok(_)) => continue,
                Ok(Err(err)) => format!("subscribing to {filter} failed: {}", describe(&err)),
                Err(_) => format!(
                    "the broker accepted the connection but did not answer the SUBSCRIBE to {filter} within {} s (connect_timeout_s)",
                    self.timeout.as_secs_f64()
                ),
            };
            self.abandon().await;
            return Err(failed(cause));
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
        if let Some((topic, boot_id)) = &self.status {
            let now_ms = crate::model::now_ms();
            let status = telemetry::online(now_ms, crate::clock::synced(now_ms), boot_id);
            let token = self
                .client
                .publish(paho::Message::new_retained(topic, status, 1));
            let cause = match tokio::time::timeout(self.timeout, token).await {
                Ok(Ok(())) => None,
                Ok(Err(paho::Error::ReasonCode(code, _))) => Some(format!(
                    "the broker refused the online status on {topic}: {code} (reason code {:#04x}); check its ACL",
                    code as u32
                )),
                Ok(Err(err)) => Some(format!(
                    "publishing the online status on {topic} failed: {}",
                    describe(&err)
                )),
                Err(_) => Some(format!(
                    "the broker did not acknowledge the online status on {topic} within {} s (connect_timeout_s)",
                    self.timeout.as_secs_f64()
                )),
            };
            if let Some(cause) = cause {
                self.abandon().await;
                return Err(failed(cause));
            }
        }
        Ok(connected)
    }

    /// Ends a connection this attempt made but will not use.
    async fn abandon(&self) {
        let options = paho::DisconnectOptionsBuilder::new()
            .timeout(Duration::from_secs(1))
            .finalize();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.disconnect(options)).await;
    }
}

/// A password: its `Debug` never shows it.
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `broker.password_file`'s first line, without its line ending.
pub fn read_password(path: &std::path::Path) -> Result<String, MqttError> {
    let text = std::fs::read_to_string(path).map_err(|source| MqttError::Password {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Ends a session's connection from a task: see [`Session::closer`].
pub struct Closer {
    client: paho::AsyncClient,
    goodbye: Outgoing,
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closer")
            .field("goodbye", &self.goodbye.topic)
            .finish()
    }
}

impl Closer {
    /// Publishes the goodbye, waits up to `wait` for it, and disconnects cleanly (within about
    /// `wait` again) so the broker does not send the will.
    pub async fn close(self, wait: Duration) {
        if !self.client.is_connected() {
            return;
        }
        let topic = self.goodbye.topic.clone();
        let delivered =
            tokio::time::timeout(wait, self.client.publish(self.goodbye.message())).await;
        if !matches!(delivered, Ok(Ok(()))) {
            tracing::warn!(topic = %topic, "Goodbye message not confirmed in time.");
        }
        self.disconnect(wait).await;
    }

    /// Disconnects cleanly without a goodbye, for a reconnect with new settings.
    pub async fn disconnect(self, wait: Duration) {
        if !self.client.is_connected() {
            return;
        }
        let options = paho::DisconnectOptionsBuilder::new()
            .timeout(wait)
            .finalize();
        match tokio::time::timeout(
            wait + Duration::from_millis(500),
            self.client.disconnect(options),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "Disconnect failed."),
            Err(_) => tracing::warn!("Disconnect not confirmed in time."),
        }
    }
}

/// Paho's error in words: its own text for a refused CONNACK is only "(0)".
fn describe(err: &paho::Error) -> String {
    match err {
        paho::Error::ConnectReturn(code) => format!("the broker refused the connection: {code}"),
        other => other.to_string(),
    }
}

/// A failed connect in words, naming a refused protocol version and suggesting the other: a
/// 3.1.1-only broker answers an MQTT 5 CONNECT with a 3.1.1 CONNACK (code 1) or by closing,
/// which Paho reports as "General failure".
fn describe_connect(err: &paho::Error, mqtt5: bool) -> String {
    let text = describe(err);
    let refused = matches!(
        err,
        paho::Error::ConnectReturn(paho::ConnectReturnCode::UnacceptableProtocolVersion)
            | paho::Error::ReasonCode(paho::ReasonCode::UnsupportedProtocolVersion, _)
    );
    if mqtt5 && (refused || matches!(err, paho::Error::Failure)) {
        format!("{text}: the broker refused MQTT 5 or closed the connection at the CONNECT; if it speaks only MQTT 3.1.1, set broker.protocol: \"3.1.1\"")
    } else if refused {
        format!("{text}: the broker refused MQTT 3.1.1; if it speaks only MQTT 5, set broker.protocol: \"5\"")
    } else {
        text
    }
}

/// The kernel's boot id, so consumers can tell a reboot from a reconnect.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}
