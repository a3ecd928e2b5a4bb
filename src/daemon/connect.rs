//! Connecting: each attempt runs as a task (a connect takes up to `connect_timeout_s` per URL,
//! and the TLS diagnosis of a refusal is one more handshake), its end comes back as
//! `Event::Connect`, and the pure [`super::link::Link`] says what it means.

use std::time::{Duration, Instant};

use super::event::{Event, Failed};
use super::link::Outcome;
use super::{edge, status, Daemon};
use crate::config::Scheme;
use crate::mqtt::{tls, Closer, Connected};

/// What failed connects said: each distinct cause is diagnosed once (a probe is one more
/// handshake) and logged once per outage, not once per attempt.
#[derive(Debug, Default)]
pub struct ConnectLog {
    seen_errors: Vec<String>,
    last_diagnosis: Option<String>,
    last_logged: String,
    /// The reason of the last failed connect, for health; kept after a success.
    pub last_error: String,
}

impl ConnectLog {
    /// A connect succeeded: the next outage is logged afresh.
    pub(super) fn connected(&mut self) {
        self.seen_errors.clear();
        self.last_logged.clear();
    }

    /// Whether a failure with this cause is new in this outage (and so worth a diagnosis).
    pub(super) fn is_new(&self, cause: &str) -> bool {
        !self.seen_errors.iter().any(|seen| seen == cause)
    }

    /// A connect failed; the next attempt is in `delay`. Returns the reason as logged.
    pub(super) fn failed(&mut self, failed: &Failed, urls: &str, delay: Duration) -> String {
        let cause = failed.error.to_string();
        if self.is_new(&cause) {
            self.last_diagnosis = failed.diagnosis.clone();
            self.seen_errors.push(cause.clone());
        }
        let reason = self.last_diagnosis.clone().unwrap_or(cause);
        if reason != self.last_logged {
            tracing::warn!(broker = %urls, reason = %reason, retry_in_s = delay.as_secs_f64(), "Cannot connect.");
            self.last_logged = reason.clone();
            self.last_error = reason.clone();
        } else {
            tracing::debug!(error = %failed.error, retry_in_s = delay.as_secs_f64(), "Cannot connect.");
        }
        reason
    }
}

impl Daemon {
    /// Starts a connect attempt; its end comes back as `Event::Connect`. What must be ready
    /// before it is prepared on the blocking pool first (`Event::Prepared`): the password,
    /// read again for every connect so a rotated one is used, and in Sparkplug mode the next
    /// bdSeq, saved (fsynced) so a crash never reuses one whose NDEATH may still be delivered.
    pub(super) fn connect(&mut self) {
        let Some(attempt) = self.core.link.due(Instant::now()) else {
            return;
        };
        let password_file = self.core.config.config().broker.password_file.clone();
        let bd_seq = self
            .mode
            .bd_seq()
            .map(|last| (self.core.config.config().state_dir.clone(), last));
        if password_file.is_none() && bd_seq.is_none() {
            return self.start_attempt(attempt, None);
        }
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let password = match password_file {
                Some(path) => {
                    tokio::task::spawn_blocking(move || crate::mqtt::read_password(&path).map(Some))
                        .await
                        .unwrap_or_else(|_| {
                            Err(crate::mqtt::MqttError::Connect {
                                urls: String::new(),
                                cause: "internal error while reading broker.password_file"
                                    .to_owned(),
                            })
                        })
                }
                None => Ok(None),
            };
            let bd_seq = match bd_seq {
                Some((state_dir, last)) => Some(edge::next_bd_seq(state_dir, last).await),
                None => None,
            };
            let _ = events
                .send(Event::Prepared {
                    attempt,
                    password: password.map(|p| p.map(crate::mqtt::Secret)),
                    bd_seq,
                })
                .await;
        });
    }

    /// What attempt `attempt` needed is ready: it starts, or fails at once when the password
    /// file could not be read.
    pub(super) fn on_prepared(
        &mut self,
        attempt: u64,
        password: Result<Option<crate::mqtt::Secret>, crate::mqtt::MqttError>,
        bd_seq: Option<u64>,
    ) {
        match password {
            Ok(password) => {
                if let Some(password) = password {
                    self.core.session.set_password(&password.0);
                }
                self.start_attempt(attempt, bd_seq);
            }
            Err(error) => {
                let closer = self.core.session.attempt().closer();
                self.on_connect(
                    attempt,
                    Err(Failed {
                        error,
                        diagnosis: None,
                    }),
                    closer,
                    bd_seq,
                );
            }
        }
    }

    pub(super) fn start_attempt(&mut self, attempt_number: u64, bd_seq: Option<u64>) {
        self.mode.before_attempt(&mut self.core, bd_seq);
        let attempt = self.core.session.attempt();
        let closer = attempt.closer();
        let bound = attempt.bound();
        let events = self.core.events.clone();
        let diagnose = self.diagnosis_input();
        let seen: Vec<String> = self.core.connect_log.seen_errors.clone();
        tokio::spawn(async move {
            let urls = attempt.urls().to_owned();
            // A backstop: every step of the attempt has its own bound, so this fires only if
            // one of them does not hold (the link must never stay "connecting").
            let outcome = tokio::time::timeout(bound, attempt.run())
                .await
                .unwrap_or_else(|_| {
                    Err(crate::mqtt::MqttError::Connect {
                        urls,
                        cause: format!(
                            "the connect attempt did not end within {} s; abandoned",
                            bound.as_secs()
                        ),
                    })
                });
            let result = match outcome {
                Ok(connected) => Ok(connected),
                Err(error) => {
                    let cause = error.to_string();
                    let diagnosis = match diagnose {
                        Some((endpoint, settings, timeout)) if !seen.contains(&cause) => {
                            let no_answer = error.is_no_answer();
                            tokio::task::spawn_blocking(move || {
                                no_answer
                                    .then(|| tls::missing_step(&endpoint, &settings, timeout))
                                    .flatten()
                                    .or_else(|| tls::diagnose(&endpoint, &settings, timeout))
                            })
                            .await
                            .ok()
                            .flatten()
                        }
                        _ => None,
                    };
                    Err(Failed { error, diagnosis })
                }
            };
            let _ = events
                .send(Event::Connect {
                    attempt: attempt_number,
                    result,
                    closer,
                    bd_seq,
                })
                .await;
        });
    }

    /// What a TLS diagnosis needs: the first TLS endpoint, the TLS settings and the timeout.
    pub(super) fn diagnosis_input(
        &self,
    ) -> Option<(crate::config::Endpoint, crate::config::TlsConfig, Duration)> {
        let config = &self.core.config;
        let endpoint = config
            .endpoints
            .iter()
            .find(|e| e.scheme == Scheme::Tls)?
            .clone();
        // The pair the connect used: the agent's own copies when it keeps them.
        let mut tls = config.config().broker.tls.clone();
        if let Some(store) = &self.key_pair {
            tls.cert_file = Some(store.files.cert.clone());
            tls.key_file = Some(store.files.key.clone());
        }
        Some((endpoint, tls, config.config().broker.connect_timeout()))
    }

    pub(super) fn on_connect(
        &mut self,
        attempt: u64,
        result: Result<Connected, Failed>,
        closer: Closer,
        bd_seq: Option<u64>,
    ) {
        let now = Instant::now();
        match result {
            Ok(connected) => match self.core.link.connected(attempt, now) {
                Outcome::Up => {
                    self.core.connect_log.connected();
                    self.core.server = Some((connected.server.clone(), crate::model::now_ms()));
                    self.mode.on_connected(&mut self.core, &connected, bd_seq);
                    self.operations_connected();
                    status::notify(&self.core);
                    status::write_file(&self.core);
                }
                _ => {
                    // Made obsolete by a reload or renewal while it ran.
                    tokio::spawn(closer.disconnect(Duration::from_secs(2)));
                }
            },
            Err(failed) => {
                self.mode.attempt_failed();
                if let Outcome::Retry(delay) = self.core.link.failed(attempt, now, fastrand::f64())
                {
                    let urls = self.core.session.urls().to_owned();
                    let reason = self.core.connect_log.failed(&failed, &urls, delay);
                    status::offline(&reason, delay);
                    status::write_file(&self.core);
                }
            }
        }
    }

    /// The connection ended: Paho reported it lost (`cause` `None`), the broker sent a
    /// DISCONNECT (`cause` names its reason code), or Paho no longer has one while the link
    /// says up.
    pub(super) fn on_lost(&mut self, cause: Option<String>) {
        let Some(delay) = self.core.link.lost(Instant::now(), fastrand::f64()) else {
            return;
        };
        self.core.went_offline();
        self.mode.ended();
        let reason = cause.unwrap_or_else(|| "connection lost".to_owned());
        tracing::warn!(broker = %self.core.session.urls(), reason = %reason, retry_in_s = delay.as_secs_f64(), "Connection lost.");
        self.core.connect_log.last_error = reason.clone();
        status::offline(&reason, delay);
        status::write_file(&self.core);
    }

    /// The link says up but Paho has no connection (a report that never came): the state the
    /// agent reports is Paho's, so this is a lost connection.
    pub(super) fn check_connection(&mut self) {
        if self.core.link.is_up() && !self.core.session.is_connected() {
            self.on_lost(Some(
                "the MQTT library has no connection (no report of its end arrived)".to_owned(),
            ));
        }
    }
}
