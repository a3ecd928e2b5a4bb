//! A connect attempt apart from its session, so it runs as a task ([`Attempt`]), and the end of
//! a connection from a task ([`Closer`]); the password read for each attempt.

use std::time::Duration;

use paho_mqtt as paho;

use super::{Connected, MqttError, Outgoing};
use crate::telemetry;

/// A connect attempt, apart from the session: see [`Session::attempt`].
pub struct Attempt {
    pub(super) client: paho::AsyncClient,
    pub(super) options: paho::ConnectOptions,
    /// `connect_timeout_s`: Paho's bound of each URL's TCP, TLS and CONNACK; ours of the
    /// SUBSCRIBE and of the online status.
    pub(super) timeout: Duration,
    pub(super) urls_count: usize,
    pub(super) subscriptions: Vec<String>,
    pub(super) urls: String,
    pub(super) written: Vec<(String, String)>,
    /// Plain mode: the status topic and boot id of the online status.
    pub(super) status: Option<(String, String)>,
    /// The attempt speaks MQTT 5 (for the words of a refusal).
    pub(super) mqtt5: bool,
    /// A Sparkplug edge node over MQTT 5: every DISCONNECT carries "Disconnect with Will
    /// Message" (0x04), as Sparkplug 3.0 requires, so the broker publishes the NDEATH too.
    pub(super) will_on_disconnect: bool,
}

/// The options of a DISCONNECT within `timeout`, with reason code 0x04 when `with_will`.
fn disconnect_options(timeout: Duration, with_will: bool) -> paho::DisconnectOptions {
    let mut options = paho::DisconnectOptionsBuilder::new();
    options.timeout(timeout);
    if with_will {
        options.reason_code(paho::ReasonCode::DisconnectWithWillMessage);
    }
    options.finalize()
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
            will_on_disconnect: self.will_on_disconnect,
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
        let options = disconnect_options(Duration::from_secs(1), self.will_on_disconnect);
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
    pub(super) client: paho::AsyncClient,
    pub(super) goodbye: Outgoing,
    /// As [`Attempt`]'s: Sparkplug over MQTT 5 disconnects with the will.
    pub(super) will_on_disconnect: bool,
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
    /// `wait` again) so the broker does not send the will (a Sparkplug edge node over MQTT 5:
    /// so it does, the NDEATH a second time with the same bdSeq, as the specification asks).
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
        let options = disconnect_options(wait, self.will_on_disconnect);
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
pub(super) fn describe(err: &paho::Error) -> String {
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
