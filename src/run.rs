//! The daemon: a sampler thread, the MQTT session and one event loop, until a shutdown signal.
//!
//! The device starts offline happily: sampling runs from the first second, broker or not. While
//! offline, up to `telemetry.buffer_while_offline` telemetry messages are kept in memory and sent,
//! oldest first, after the next connect; the rest are dropped and counted (the durable outbox for
//! QoS >= 1 comes with its own issue).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::mpsc;

use crate::alerts::{AlertEvent, Alerts};
use crate::commands::{self, Action, Command, Response};
use crate::config::{Changes, ConfigError, Findings, Scheme, Severity, ValidConfig};
use crate::dedupe::Dedupe;
use crate::delivery::{Delivery, WINDOW};
use crate::identity::Identity;
use crate::model::Sample;
use crate::mqtt::backoff::Backoff;
use crate::mqtt::{tls, Incoming, MqttError, MqttEvent, Profile, Session};
use crate::offline::Error;
use crate::outbox::{Kind, Outbox};
use crate::sensors::Sensors;
use crate::service;
use crate::sparkplug::Reading;

/// How long a clean stop waits for the shutdown status to be acknowledged.
pub(crate) const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Telemetry payloads between the sampler thread and the event loop. Full means the loop is
/// stuck connecting; the sampler then drops the newest and counts it.
pub(crate) const TELEMETRY_QUEUE: usize = 8;

/// Alert events between the sampler and the event loop.
pub(crate) const ALERT_QUEUE: usize = 64;

/// The alert state in `state_dir`.
pub(crate) const ALERTS_FILE: &str = "alerts.json";

/// A connection that stayed up this long resets the backoff; a shorter one (a broker that
/// accepts and then drops us) keeps backing off, so a flapping link never becomes a tight loop.
pub(crate) const STABLE: Duration = Duration::from_secs(30);

/// Numbers from the config that the event loop uses on every message.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `telemetry.qos`.
    qos: u8,
    /// `telemetry.buffer_while_offline`, bounded by `broker.max_queued_messages`.
    keep_offline: usize,
    /// `broker.max_queued_messages`: the bound of each offline queue.
    max_queued: u64,
}

impl Limits {
    fn of(config: &ValidConfig) -> Limits {
        let config = config.config();
        Limits {
            qos: config.telemetry.qos,
            keep_offline: config
                .telemetry
                .buffer_while_offline
                .min(config.broker.max_queued_messages) as usize,
            max_queued: config.broker.max_queued_messages,
        }
    }
}

/// Counters of the session, logged on connect and at shutdown (the health topic comes later).
#[derive(Debug, Default)]
struct Counters {
    sent: u64,
    /// Dropped by a bound, or telemetry with no buffer while offline.
    dropped: u64,
    /// Queued but unreadable from the outbox file when their turn came.
    lost: u64,
    reconnects: u64,
}

/// What start-up and every reload do after loading the config: probe what it points at (an error
/// refuses it, warnings go to `warn`) and work out the identity.
pub(crate) fn admit(
    config: ValidConfig,
    path: &Path,
    warn: &mut dyn Write,
) -> Result<(ValidConfig, Identity), Error> {
    let now_s = (crate::model::now_ms() / 1000) as i64;
    let mut findings = Findings {
        file: path.to_owned(),
        items: crate::certs::probe_for_run(&config.config().broker, now_s),
    };
    config.locate(&mut findings.items);
    for finding in findings
        .items
        .iter()
        .filter(|f| f.severity == Severity::Warning)
    {
        writeln!(warn, "{}", finding.display(&findings.file))?;
    }
    if findings.has_errors() {
        findings.items.retain(|f| f.severity == Severity::Error);
        return Err(Error::Config(ConfigError::Invalid(findings)));
    }
    let identity = crate::identity::resolve(config.config())?;
    Ok((config, identity))
}

/// `fieldagent run`: checks the config and what it points at, then runs the daemon until
/// SIGTERM or SIGINT. Certificate errors refuse to start, as `check` would report them.
pub fn start(path: &Path, warn: &mut dyn Write) -> Result<(), Error> {
    let config = crate::offline::load(path, warn)?;
    // Before anything uses OpenSSL: the TLS floor (see mqtt::tls).
    let min = config.config().broker.tls.min_version;
    crate::mqtt::tls::enforce_floor(min, &config.config().state_dir)
        .or_else(|_| crate::mqtt::tls::enforce_floor(min, &std::env::temp_dir()))
        .map_err(Error::TlsFloor)?;
    let (config, identity) = admit(config, path, warn)?;
    let log = &config.config().log;
    if crate::service::init_logging(log.level, log.target)
        == crate::service::LogSink::StderrNoJournal
    {
        tracing::warn!(
            "log.target is journald but the journal cannot be reached; logging to stderr."
        );
    }
    // One thread: the agent's work is small and boards have little memory.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("fieldagent")
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(run(
        config,
        identity,
        Some(path.to_owned()),
        crate::service::shutdown_signal,
    ))?;
    Ok(())
}

/// Runs the agent until `shutdown` resolves, then stops cleanly; a second `shutdown` signal
/// during the stop ends it at once.
pub async fn run<F, S>(
    mut config: ValidConfig,
    mut identity: Identity,
    reload_from: Option<PathBuf>,
    mut shutdown: S,
) -> Result<(), MqttError>
where
    S: FnMut() -> F,
    F: Future<Output = &'static str>,
{
    if config.config().sparkplug.is_some() {
        return crate::sparkplug::run::run(config, identity, reload_from, shutdown).await;
    }
    let (events_tx, mut events) = mpsc::channel(4);
    let (incoming_tx, mut incoming) = mpsc::channel(crate::mqtt::INCOMING_QUEUE);
    let mut key_pair = key_pair_store(&config);
    let mut session = Session::new(
        &config,
        &identity.client_id,
        events_tx.clone(),
        incoming_tx.clone(),
        key_pair.as_ref().map(|store| &store.files),
        Profile::Plain,
    )?;
    // Said before the state files are opened: on slow flash their fsyncs can take a while.
    tracing::info!(client_id = %identity.client_id, source = %identity, broker = %session.urls(), "Starting.");
    let mut cert_watch = tokio::time::interval(CERT_WATCH);
    cert_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangups = reload_from.as_ref().map(|_| crate::service::hangups());
    let dedupe = Arc::new(std::sync::Mutex::new(Dedupe::open(
        config.config().state_dir.join(crate::dedupe::FILE),
        crate::dedupe::CAPACITY,
    )));
    let started = Instant::now();
    let (mut delivery, mut done_rx) = open_outbox(&config);

    let (telemetry_tx, mut telemetry) = mpsc::channel::<String>(TELEMETRY_QUEUE);
    let queue_full = Arc::new(AtomicU64::new(0));
    // Alerts are never dropped on the way: the sampler waits when this is full.
    let (alert_tx, mut alert_rx) = mpsc::channel::<AlertEvent>(ALERT_QUEUE);
    let sensor_errors = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let last_pass_ms = Arc::new(AtomicU64::new(crate::model::now_ms()));
    let outputs = Outputs {
        telemetry: TelemetrySink::Json(telemetry_tx),
        alerts: alert_tx,
        queue_full: Arc::clone(&queue_full),
        sensor_errors: Arc::clone(&sensor_errors),
        last_pass_ms: Arc::clone(&last_pass_ms),
    };
    let mut sampling = Sampling::start(&config, &identity, outputs.clone());
    // Ready once sampling runs: devices start offline, so this does not wait for the broker.
    service::notify(&[
        NotifyState::Ready,
        NotifyState::Status("sampling; connecting"),
    ]);
    let watchdog = service::watchdog();
    let mut watchdog_timer =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
    let mut health_timer = tokio::time::interval_at(
        tokio::time::Instant::now() + crate::health::INTERVAL,
        crate::health::INTERVAL,
    );
    let health_topic = |identity: &Identity, config: &ValidConfig| {
        format!("{}/health", config.topic_prefix(&identity.client_id))
    };
    let mut alerts_topic = format!("{}/alerts", config.topic_prefix(&identity.client_id));

    let mut limits = Limits::of(&config);
    // The latest sample made before the first connect attempt ended (the agent is starting, not
    // offline): it waits for that connect even without an offline buffer.
    let mut first_sample: Option<String> = None;
    // Telemetry the sampler could not hand over (the loop's queue was full), as last seen.
    let mut queue_full_seen = 0;
    let mut counters = Counters::default();
    let mut backoff = Backoff::new(&config.config().broker.reconnect);
    let mut connected_since: Option<Instant> = None;
    // False until the first connect attempt has ended.
    let mut attempted = false;
    let mut connect_log = ConnectLog::default();
    let mut next_attempt = tokio::time::Instant::now();
    let first_shutdown = shutdown();
    tokio::pin!(first_shutdown);
    let signal = loop {
        tokio::select! {
            biased;
            signal = &mut first_shutdown => break signal,
            _ = watchdog_timer.tick(), if watchdog.is_some() => pet_watchdog(&config, &last_pass_ms),
            _ = health_timer.tick(), if connected_since.is_some() => {
                let payload = health(&counters, delivery.outbox.len() as u64, &connect_log.last_error, &sensor_errors, started);
                if session.publish(&health_topic(&identity, &config), payload, 0, false).is_ok() {
                    counters.sent += 1;
                }
            }
            _ = cert_watch.tick(), if key_pair.is_some() => {
                let Some(store) = key_pair.as_mut() else { continue };
                if renewed(store, &config, &identity).await {
                    session.disconnect().await;
                    connected_since = None;
                    backoff.reset();
                    next_attempt = tokio::time::Instant::now();
                }
            }
            Some(()) = next_hangup(&mut hangups) => {
                let Some(path) = &reload_from else { continue };
                service::notify(&[NotifyState::Reloading]);
                let (new_config, new_identity) = match reload(path).await {
                    Ok(loaded) => loaded,
                    Err(findings) => {
                        tracing::error!(findings = %findings, "Reload refused; the running config stays.");
                        service::notify(&[NotifyState::Ready, NotifyState::Status("reload refused; running the previous config")]);
                        continue;
                    }
                };
                if new_config.config().sparkplug.is_some() {
                    tracing::error!("Reload refused: switching to Sparkplug mode takes a restart of the agent; the running config stays.");
                    service::notify(&[NotifyState::Ready]);
                    continue;
                }
                let changes = Changes::between(config.config(), new_config.config());
                let same_identity = new_identity.client_id == identity.client_id;
                if changes.session || !same_identity {
                    if new_config.config().broker.tls.min_version != config.config().broker.tls.min_version {
                        tracing::warn!("broker.tls.min_version takes effect at the next start of the agent.");
                    }
                    let tls_changed = new_config.config().broker.tls != config.config().broker.tls;
                    if tls_changed {
                        key_pair = key_pair_store(&new_config);
                    }
                    match Session::new(
                        &new_config,
                        &new_identity.client_id,
                        events_tx.clone(),
                        incoming_tx.clone(),
                        key_pair.as_ref().map(|store| &store.files),
                        Profile::Plain,
                    ) {
                        Ok(new_session) => {
                            if same_identity {
                                session.disconnect().await;
                            } else {
                                session.close(SHUTDOWN_WAIT).await;
                            }
                            session = new_session;
                            connected_since = None;
                            backoff.reset();
                            next_attempt = tokio::time::Instant::now();
                            alerts_topic = format!("{}/alerts", new_config.topic_prefix(&new_identity.client_id));
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "Reload refused; the running config stays.");
                            service::notify(&[NotifyState::Ready]);
                            continue;
                        }
                    }
                }
                limits = Limits::of(&new_config);
                delivery.outbox.set_bound(limits.max_queued as usize);
                delivery.set_rate(new_config.config().broker.drain_rate);
                backoff = Backoff::new(&new_config.config().broker.reconnect);
                if changes.sampling || !same_identity {
                    std::mem::replace(&mut sampling, Sampling::placeholder()).stop(SHUTDOWN_WAIT).await;
                    sampling = Sampling::start(&new_config, &new_identity, outputs.clone());
                }
                tracing::info!(sampling = changes.sampling, reconnect = changes.session || !same_identity, changed = changes.any, "Reloaded.");
                config = new_config;
                identity = new_identity;
                service::notify(&[NotifyState::Ready]);
            }
            () = tokio::time::sleep_until(next_attempt), if connected_since.is_none() => {
                let result = session.connect().await;
                attempted = true;
                match result {
                    Ok(connected) => {
                        connected_since = Some(Instant::now());
                        counters.reconnects += 1;
                        connect_log.connected();
                        // Nothing sent on an earlier connection is trusted to have arrived:
                        // what was in flight goes again (at-least-once; ids stay the same).
                        delivery.outbox.requeue_inflight();
                        let buffered = delivery.outbox.len();
                        if let Some(payload) = first_sample.take() {
                            if session.publish(&session.telemetry_topic, payload, limits.qos, false).is_ok() {
                                counters.sent += 1;
                            }
                        }
                        // The backlog drains from here at broker.drain_rate, alerts and
                        // responses first (the drain branch below).
                        service::notify(&[NotifyState::Status(&format!(
                            "connected to {}; sent {}, dropped {}",
                            connected.server, counters.sent, counters.dropped
                        ))]);
                        let payload = health(&counters, delivery.outbox.len() as u64, &connect_log.last_error, &sensor_errors, started);
                        let _ = session.publish(&health_topic(&identity, &config), payload, 0, false);
                        tracing::info!(
                            broker = %connected.server,
                            session_present = connected.session_present,
                            queued = buffered,
                            dropped = counters.dropped,
                            "Connected."
                        );
                    }
                    Err(err) => {
                        let delay = backoff.next_delay(fastrand::f64());
                        connect_log.failed(&err, &config, session.urls(), delay).await;
                        next_attempt = tokio::time::Instant::now() + delay;
                    }
                }
            }
            Some(MqttEvent::Lost) = events.recv() => {
                if let Some(since) = connected_since.take() {
                    if since.elapsed() >= STABLE {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay(fastrand::f64());
                    tracing::warn!(broker = %session.urls(), retry_in_s = delay.as_secs_f64(), "Connection lost.");
                    service::notify(&[NotifyState::Status(&format!(
                        "offline: connection lost, retrying in {:.1} s",
                        delay.as_secs_f64()
                    ))]);
                    next_attempt = tokio::time::Instant::now() + delay;
                }
            }
            Some(command) = incoming.recv() => {
                let response = answer(command, &config, Arc::clone(&dedupe), started).await;
                tracing::info!(command = %response.command, id = ?response.id, ok = response.ok, duplicate = response.duplicate, error = ?response.error, "Command.");
                // On disk before it counts as answered; sent by the drain branch.
                counters.dropped += delivery.push(Kind::Response, 1, &session.responses_topic, response.to_json().as_bytes(), None);
            }
            Some(event) = alert_rx.recv() => {
                // Written and fsynced before it counts as published; sent by the drain branch.
                counters.dropped += delivery.push(Kind::Alert, event.qos, &alerts_topic, event.to_json().as_bytes(), None);
                if connected_since.is_some() {
                    counters.lost += delivery.pump(&session);
                }
                // From the start of the sampling pass that made it to the publish call.
                tracing::debug!(
                    alert = %event.alert,
                    latency_us = crate::model::now_us().saturating_sub(event.pass_start_us),
                    "Alert handed to Paho."
                );
            }
            Some(done) = done_rx.recv() => {
                if delivery.done(done, connected_since.is_some()) {
                    counters.sent += 1;
                }
            }
            () = tokio::time::sleep_until(delivery.ready_at()), if connected_since.is_some() && delivery.wants_to_send() => {
                counters.lost += delivery.pump(&session);
            }
            Some(payload) = telemetry.recv() => {
                let full = queue_full.load(Ordering::Relaxed);
                delivery.telemetry_gap += full - queue_full_seen;
                queue_full_seen = full;
                let online = connected_since.is_some();
                if online && limits.qos == 0 {
                    // Live QoS 0 telemetry is not written to disk; it goes at once, beside any
                    // backlog (live data is not starved by a drain).
                    let payload = match delivery.telemetry_gap {
                        0 => payload,
                        gap => with_dropped_str(payload, gap),
                    };
                    match session.publish(&session.telemetry_topic, payload, 0, false) {
                        Ok(()) => {
                            counters.sent += 1;
                            delivery.telemetry_gap = 0;
                        }
                        Err(_) => {
                            counters.dropped += 1;
                            delivery.telemetry_gap += 1;
                        }
                    }
                } else if online || limits.keep_offline > 0 {
                    // QoS >= 1, or buffered while offline: through the outbox, bounded by
                    // telemetry.buffer_while_offline (and a window's worth while online).
                    let keep = if online { limits.keep_offline.max(WINDOW) } else { limits.keep_offline };
                    counters.dropped += delivery.push(Kind::Telemetry, limits.qos, &session.telemetry_topic, payload.as_bytes(), Some(keep));
                } else if !attempted {
                    // Until the first connect attempt ends the agent is starting, not offline:
                    // the latest sample waits for it.
                    if first_sample.replace(payload).is_some() {
                        counters.dropped += 1;
                        delivery.telemetry_gap += 1;
                    }
                } else {
                    counters.dropped += 1;
                    delivery.telemetry_gap += 1;
                }
            }
        }
    };
    tracing::info!(signal, "Shutting down.");
    service::notify(&[NotifyState::Stopping]);
    // A sampler waiting to hand over an alert wakes when the receiver goes.
    drop(alert_rx);
    drop(sampling.stop);
    tokio::select! {
        () = async {
            // Up to SHUTDOWN_WAIT for what is in flight to be confirmed; the rest stays in the
            // outbox for the next start.
            let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
            while connected_since.is_some() && delivery.outbox.inflight() > 0 {
                match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                    Ok(Some(done)) => {
                        if delivery.done(done, false) {
                            counters.sent += 1;
                        }
                    }
                    _ => break,
                }
            }
            session.close(SHUTDOWN_WAIT).await;
        } => {}
        signal = shutdown() => tracing::warn!(signal, "Second signal: stopping without waiting."),
    }
    tracing::info!(
        sent = counters.sent,
        dropped = counters.dropped + counters.lost + queue_full.load(Ordering::Relaxed),
        queued = delivery.outbox.len(),
        connects = counters.reconnects,
        "Stopped."
    );
    // The sampler wakes on the closed channel; a read stuck in the kernel is not waited for.
    if sampling.thread.is_finished() {
        let _ = sampling.thread.join();
    }
    Ok(())
}

/// What the log has said about failed connects in this outage: each distinct cause is diagnosed
/// once (a probe is one more handshake) and logged once, not once per attempt.
#[derive(Debug, Default)]
pub(crate) struct ConnectLog {
    seen_errors: Vec<String>,
    last_diagnosis: Option<String>,
    last_logged: String,
    /// The reason of the last failed connect, for the health topic; kept after a success.
    pub(crate) last_error: String,
}

impl ConnectLog {
    /// A connect succeeded: the next outage is logged afresh.
    pub(crate) fn connected(&mut self) {
        self.seen_errors.clear();
        self.last_logged.clear();
    }

    /// A connect failed; the next attempt is in `delay`.
    pub(crate) async fn failed(
        &mut self,
        err: &MqttError,
        config: &ValidConfig,
        urls: &str,
        delay: Duration,
    ) {
        let cause = err.to_string();
        // Paho words one failure several ways; the diagnosis names it.
        if !self.seen_errors.contains(&cause) {
            self.last_diagnosis = diagnose_tls(config).await;
            self.seen_errors.push(cause.clone());
        }
        let reason = self.last_diagnosis.clone().unwrap_or(cause);
        if reason != self.last_logged {
            tracing::warn!(
                broker = %urls,
                reason = %reason,
                retry_in_s = delay.as_secs_f64(),
                "Cannot connect."
            );
            self.last_logged = reason;
            self.last_error = self.last_logged.clone();
        } else {
            tracing::debug!(error = %err, retry_in_s = delay.as_secs_f64(), "Cannot connect.");
        }
    }
}

/// Where the sampler's telemetry goes: JSON payloads (plain mode) or readings (Sparkplug).
#[derive(Clone)]
pub(crate) enum TelemetrySink {
    Json(mpsc::Sender<String>),
    Readings(mpsc::Sender<Reading>),
}

/// Where the sampler's results go.
#[derive(Clone)]
pub(crate) struct Outputs {
    pub(crate) telemetry: TelemetrySink,
    pub(crate) alerts: mpsc::Sender<AlertEvent>,
    /// Telemetry dropped because the event loop's queue was full.
    pub(crate) queue_full: Arc<AtomicU64>,
    /// Failed reads per sensor value since start, for the health topic.
    pub(crate) sensor_errors: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    /// When the last sampling pass ended (Unix ms): the watchdog only pets while this moves.
    pub(crate) last_pass_ms: Arc<AtomicU64>,
}

/// The outbox in `state_dir`, with what opening it found said in the log.
fn open_outbox(config: &ValidConfig) -> (Delivery, mpsc::Receiver<crate::delivery::Done>) {
    let broker = &config.config().broker;
    let (outbox, recovery) = Outbox::open(
        &config.config().state_dir,
        broker.max_queued_messages as usize,
    );
    if let Some((reason, aside)) = &recovery.damaged {
        tracing::error!(
            reason = %reason,
            moved_to = %aside.display(),
            recovered = recovery.recovered,
            "Outbox damaged (power cut or disk fault?); moved aside, the messages before the damage kept."
        );
    }
    if let Some(reason) = &recovery.unusable {
        tracing::error!(reason = %reason, "Outbox cannot use state_dir; queued messages are kept in memory only.");
    }
    if !recovery.dropped.is_empty() {
        tracing::warn!(
            dropped = recovery.dropped.len(),
            "Outbox holds more than broker.max_queued_messages; the oldest were dropped, telemetry first."
        );
    }
    if recovery.recovered > 0 {
        tracing::info!(
            queued = recovery.recovered,
            "Outbox: messages from an earlier run will be delivered."
        );
    }
    // A confirmation that has not come after four keepalives means the message goes again.
    let ack_timeout = Duration::from_secs((4 * broker.keepalive_s).max(30));
    Delivery::new(outbox, broker.drain_rate, ack_timeout)
}

/// `telemetry::with_dropped` for a payload that is a String.
fn with_dropped_str(payload: String, dropped: u64) -> String {
    String::from_utf8(crate::telemetry::with_dropped(
        payload.into_bytes(),
        dropped,
    ))
    .expect("ASCII added to UTF-8 stays UTF-8")
}

/// The health payload from the loop's counters.
fn health(
    counters: &Counters,
    queued: u64,
    last_error: &str,
    sensor_errors: &std::sync::Mutex<BTreeMap<String, u64>>,
    started: Instant,
) -> String {
    let (rss_bytes, cpu_time_ms) = crate::health::process_usage();
    let ts = crate::model::now_ms();
    let errors = sensor_errors
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    crate::health::Health {
        ts,
        time_synced: crate::clock::synced(ts),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: started.elapsed().as_secs(),
        rss_bytes,
        cpu_time_ms,
        messages: crate::health::Messages {
            sent: counters.sent,
            dropped: counters.dropped + counters.lost,
            queued,
        },
        reconnects: counters.reconnects.saturating_sub(1),
        last_connect_error: (!last_error.is_empty()).then_some(last_error),
        sensor_errors: &errors,
    }
    .to_json()
}

/// How often the certificate and key files are looked at for a renewal.
pub(crate) const CERT_WATCH: Duration = Duration::from_secs(5);

/// The agent's own copies of the device certificate and key, when both are configured and
/// `state_dir` takes them; otherwise Paho reads the configured files directly.
pub(crate) fn key_pair_store(config: &ValidConfig) -> Option<tls::KeyPairStore> {
    let tls = &config.config().broker.tls;
    let (cert, key) = (tls.cert_file.as_ref()?, tls.key_file.as_ref()?);
    match tls::KeyPairStore::new(cert, key, &config.config().state_dir) {
        Ok(store) => Some(store),
        Err(err) => {
            tracing::warn!(error = %err, "Cannot keep copies of the certificate in state_dir; a bad renewal on disk would be used as it is.");
            None
        }
    }
}

/// A renewed pair must parse, match, be valid now, and name the device the agent runs as.
fn check_renewal(
    config: &ValidConfig,
    source: &tls::KeyPairFiles,
    identity: &Identity,
) -> Result<(), String> {
    let mut broker = config.config().broker.clone();
    broker.tls.cert_file = Some(source.cert.clone());
    broker.tls.key_file = Some(source.key.clone());
    broker.password_file = None;
    let now_s = (crate::model::now_ms() / 1000) as i64;
    let errors: Vec<String> = crate::certs::probe(&broker, now_s)
        .into_iter()
        .filter(|f| f.severity == Severity::Error && f.key != "broker.tls.ca_file")
        .map(|f| f.message)
        .collect();
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    if let crate::identity::Origin::CertificateCn(_) = identity.origin {
        let cn = crate::identity::certificate_cn(&source.cert)
            .map_err(|err| err.to_string())?
            .unwrap_or_default();
        if cn != identity.client_id {
            return Err(format!(
                "its CN \"{cn}\" is not the running identity \"{}\"",
                identity.client_id
            ));
        }
    }
    Ok(())
}

/// Pets the systemd watchdog, but only while sampling is alive: a wedged sampler lets systemd
/// restart the agent.
pub(crate) fn pet_watchdog(config: &ValidConfig, last_pass_ms: &AtomicU64) {
    let interval_ms = (config.config().telemetry.interval_s * 1000.0) as u64;
    let since = crate::model::now_ms().saturating_sub(last_pass_ms.load(Ordering::Relaxed));
    if since <= 3 * interval_ms + 10_000 {
        service::notify(&[NotifyState::Watchdog]);
    } else {
        tracing::error!(
            since_last_pass_ms = since,
            "Sampling is stuck; not petting the watchdog."
        );
    }
}

/// Whether the certificate and key on disk were renewed and the new pair is accepted (it is
/// then what the next connect uses); a refused renewal is logged and the running pair stays.
pub(crate) async fn renewed(
    store: &mut tls::KeyPairStore,
    config: &ValidConfig,
    identity: &Identity,
) -> bool {
    if !store.changed() {
        return false;
    }
    let source = store.source().clone();
    let checked = {
        let config = config.clone();
        let identity = identity.clone();
        tokio::task::spawn_blocking(move || check_renewal(&config, &source, &identity))
            .await
            .unwrap_or_else(|_| Err("internal error while checking".to_owned()))
    };
    match checked.and_then(|()| {
        store
            .accept()
            .map_err(|err| format!("cannot copy it into state_dir: {err}"))
    }) {
        Ok(()) => {
            tracing::info!(cert = %store.source().cert.display(), "Certificate renewed; reconnecting once.");
            true
        }
        Err(reason) => {
            tracing::error!(
                cert = %store.source().cert.display(),
                reason = %reason,
                "New certificate refused; the running one stays."
            );
            false
        }
    }
}

/// The next SIGHUP, or never when reloading is off.
pub(crate) async fn next_hangup(hangups: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangups {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// Loads, validates and probes the config at `path` for a reload, on the blocking pool (it reads
/// files); the same path as start-up. Every finding comes back in one line when it is refused.
pub(crate) async fn reload(path: &Path) -> Result<(ValidConfig, Identity), String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut warnings = Vec::new();
        let admitted = crate::offline::load(&path, &mut warnings)
            .and_then(|config| admit(config, &path, &mut warnings));
        for line in String::from_utf8_lossy(&warnings).lines() {
            tracing::warn!(finding = %line, "Config warning.");
        }
        admitted.map_err(|err| err.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("internal error while reloading".to_owned()))
}

/// The running sampler: dropping `stop` ends it at its next wait.
pub(crate) struct Sampling {
    pub(crate) stop: std_mpsc::Sender<()>,
    pub(crate) thread: std::thread::JoinHandle<()>,
}

impl Sampling {
    /// A stand-in while the real one is swapped; its thread has already finished.
    pub(crate) fn placeholder() -> Sampling {
        let (stop, _) = std_mpsc::channel::<()>();
        Sampling {
            stop,
            thread: std::thread::spawn(|| {}),
        }
    }

    /// Starts sampling with the alert state saved in `state_dir`.
    pub(crate) fn start(config: &ValidConfig, identity: &Identity, outputs: Outputs) -> Sampling {
        let (stop, stopped) = std_mpsc::channel::<()>();
        let alerts_path = config.config().state_dir.join(ALERTS_FILE);
        let alerts = Alerts::new(
            &identity.client_id,
            &config.config().alerts,
            crate::state::load(&alerts_path),
        );
        let thread = spawn_sampler(config, outputs, stopped, alerts, alerts_path);
        Sampling { stop, thread }
    }

    /// Stops sampling and waits up to `wait` for the thread (a read stuck in the kernel is not
    /// waited for longer), so two samplers never write the alert state at once.
    pub(crate) async fn stop(self, wait: Duration) {
        drop(self.stop);
        let thread = self.thread;
        let joined =
            tokio::time::timeout(wait, tokio::task::spawn_blocking(move || thread.join())).await;
        if joined.is_err() {
            tracing::warn!("The sampler did not stop in time; a sensor read may be stuck.");
        }
    }
}

/// Logs a sensor once when it starts failing (with the error) and once when it reads again,
/// not on every pass; the counts per pass go to the health topic.
fn log_sensor_changes(sample: &Sample, failing: &mut Vec<Arc<str>>) {
    for (name, err) in &sample.errors {
        if !failing.contains(name) {
            tracing::warn!(sensor = %name, error = %err, "Sensor failing.");
            failing.push(Arc::clone(name));
        }
    }
    failing.retain(|name| {
        let still = sample.errors.iter().any(|(failed, _)| failed == name);
        if !still {
            tracing::info!(sensor = %name, "Sensor reads again.");
        }
        still
    });
}

/// Reads every sensor each `telemetry.interval_s` on a thread of its own (reads block), evaluates
/// the alert rules on the same sample, saves the alert state when it changed, and hands telemetry
/// and alert events to the event loop.
fn spawn_sampler(
    config: &ValidConfig,
    outputs: Outputs,
    stop: std_mpsc::Receiver<()>,
    mut alerts: Alerts,
    alerts_path: std::path::PathBuf,
) -> std::thread::JoinHandle<()> {
    let interval = Duration::from_secs_f64(config.config().telemetry.interval_s);
    let mut sensors = Sensors::new(&config.sensors, &config.config().sysfs_root);
    std::thread::Builder::new()
        .name("sampler".to_owned())
        .spawn(move || {
            let mut sample = Sample::default();
            let mut failing: Vec<Arc<str>> = Vec::new();
            let mut seq: u64 = 0;
            let mut next = Instant::now();
            loop {
                let pass_start_us = crate::model::now_us();
                sensors.read_all(&mut sample);
                let synced = crate::clock::synced(sample.ts_ms);
                let mut events = alerts.evaluate(&sample, sample.ts_ms, synced);
                for event in &mut events {
                    event.pass_start_us = pass_start_us;
                }
                if !events.is_empty() {
                    // Saved before the events leave, so a restart never raises them again.
                    if let Err(err) = crate::state::save(&alerts_path, alerts.state()) {
                        tracing::error!(path = %alerts_path.display(), error = %err, "Cannot save alert state.");
                    }
                    for event in events {
                        tracing::info!(alert = %event.alert, sensor = %event.sensor, state = ?event.state, id = %event.id, "Alert.");
                        if outputs.alerts.blocking_send(event).is_err() {
                            return;
                        }
                    }
                }
                log_sensor_changes(&sample, &mut failing);
                if !sample.errors.is_empty() {
                    let mut counts = outputs
                        .sensor_errors
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    for (name, _) in &sample.errors {
                        // No allocation per pass once a sensor's count exists.
                        match counts.get_mut(&**name) {
                            Some(count) => *count += 1,
                            None => {
                                counts.insert(name.to_string(), 1);
                            }
                        }
                    }
                }
                outputs
                    .last_pass_ms
                    .store(crate::model::now_ms(), Ordering::Relaxed);
                let handed = match &outputs.telemetry {
                    TelemetrySink::Json(sink) => {
                        sink.try_send(crate::telemetry::telemetry(&sample, seq, synced)).is_ok()
                    }
                    TelemetrySink::Readings(sink) => sink
                        .try_send(Reading {
                            ts_ms: sample.ts_ms,
                            synced,
                            values: sample.values.clone(),
                            failing: sample.errors.iter().map(|(name, _)| Arc::clone(name)).collect(),
                        })
                        .is_ok(),
                };
                seq += 1;
                if !handed {
                    outputs.queue_full.fetch_add(1, Ordering::Relaxed);
                }
                next += interval;
                let now = Instant::now();
                if next < now {
                    // A slow pass (a stuck sensor) skips ticks rather than bursting.
                    next = now;
                }
                match stop.recv_timeout(next - now) {
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })
        .expect("the sampler thread can be spawned")
}

/// Answers one command: refused, a duplicate (the original answer, marked), expired, or executed.
/// The id is saved as executed before the action runs, so a restart never runs it twice. Runs on
/// the blocking pool: it writes state_dir and an actuator, and `read` reads sensors.
async fn answer(
    command: Incoming,
    config: &ValidConfig,
    dedupe: Arc<std::sync::Mutex<Dedupe>>,
    started: Instant,
) -> Response {
    let name = command.name.clone();
    let parsed = commands::parse(&command.name, &command.payload, &config.config().actuators);
    let specs = config.sensors.clone();
    let sysfs_root = config.config().sysfs_root.clone();
    let task = tokio::task::spawn_blocking(move || {
        let command = match parsed {
            Ok(command) => command,
            Err(refusal) => return refusal,
        };
        let mut dedupe = dedupe
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(previous) = dedupe.get(&command.id) {
            let mut response = previous.clone();
            response.duplicate = true;
            return response;
        }
        let now_ms = crate::model::now_ms();
        if let Some(expires) = command.expires_ts {
            if now_ms > expires {
                return Response::refused(
                    Some(&command.id),
                    &command.name,
                    format!(
                        "expired: expires_ts {expires} is {} s in the past; not executed",
                        (now_ms - expires) / 1000
                    ),
                );
            }
        }
        let interrupted = Response::refused(
            Some(&command.id),
            &command.name,
            "the agent stopped while running it; not run again",
        );
        if let Err(err) = dedupe.record(&command.id, &interrupted) {
            tracing::error!(error = %err, "Cannot save executed command ids; a restart could run this command again.");
        }
        let response = execute(&command, started, &specs, &sysfs_root);
        if let Err(err) = dedupe.record(&command.id, &response) {
            tracing::error!(error = %err, "Cannot save a command's answer.");
        }
        response
    });
    task.await
        .unwrap_or_else(|_| Response::refused(None, &name, "internal error while executing"))
}

fn execute(
    command: &Command,
    started: Instant,
    specs: &[crate::config::SensorSpec],
    sysfs_root: &Path,
) -> Response {
    let mut response = Response::ok(&command.id, &command.name);
    match &command.action {
        Action::Ping => {
            response
                .data
                .insert("uptime_s".to_owned(), started.elapsed().as_secs().into());
            response
                .data
                .insert("version".to_owned(), env!("CARGO_PKG_VERSION").into());
        }
        Action::Read => {
            let mut sensors = Sensors::new(specs, sysfs_root);
            let mut sample = Sample::default();
            sensors.read_all(&mut sample);
            let reading: serde_json::Value =
                serde_json::from_str(&sample.to_json()).expect("read --json output is JSON");
            if let serde_json::Value::Object(map) = reading {
                response.data.extend(map);
            }
        }
        Action::Write { file, value } => {
            if let Err(reason) = commands::write(file, value) {
                return Response::refused(Some(&command.id), &command.name, reason);
            }
            response
                .data
                .insert("value".to_owned(), value.clone().into());
        }
    }
    response
}

/// After a failed connect to a TLS broker: why, if the broker's TLS version is below the floor.
pub(crate) async fn diagnose_tls(config: &ValidConfig) -> Option<String> {
    let endpoint = config
        .endpoints
        .iter()
        .find(|e| e.scheme == Scheme::Tls)?
        .clone();
    let settings = config.config().broker.tls.clone();
    let timeout = config.config().broker.connect_timeout();
    tokio::task::spawn_blocking(move || tls::diagnose(&endpoint, &settings, timeout))
        .await
        .ok()
        .flatten()
}
