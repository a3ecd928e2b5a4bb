//! The daemon as a Sparkplug B 3.0 edge node: the same sampler, backoff and connect logging as
//! plain mode (`crate::run`), with Sparkplug's session rules.
//!
//! Each connect takes the next bdSeq (saved first), registers NDEATH with it as the will, and
//! subscribes to NCMD (and the primary host's STATE). NBIRTH goes out once a reading exists and,
//! with `primary_host_id`, only while that host's STATE says online; a host that goes offline
//! after our birth gets NDEATH and a disconnect, and the node comes back through the backoff.
//! NDATA carries only what changed beyond its deadband. Sparkplug is state-based: what changes
//! while no birth stands is in the next NBIRTH, and alert changes of that time follow it as
//! historical NDATA, so no raise or clear goes unseen. A reload that changes only the metric
//! set is a rebirth in the same session; one that changes the session (broker, TLS, identity,
//! Sparkplug ids) ends it with NDEATH and starts the next, as a certificate renewal does.
//! The node's own health (plain mode's health topic) is in its `Node Info/…` metrics.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sd_notify::NotifyState;
use tokio::sync::mpsc;

use super::{host_state, HostState, MetricValue, Node, NodeCommand, Reading, Topics, NODE_INFO};
use crate::alerts::{AlertEvent, SavedState, Transition};
use crate::config::{Changes, ValidConfig};
use crate::identity::Identity;
use crate::mqtt::backoff::Backoff;
use crate::mqtt::{tls, Incoming, MqttError, MqttEvent, Outgoing, Profile, Session};
use crate::run::{
    next_hangup, pet_watchdog, reload, renewed, ConnectLog, Outputs, Sampling, TelemetrySink,
    ALERT_QUEUE, SHUTDOWN_WAIT, STABLE, TELEMETRY_QUEUE,
};
use crate::service;

/// Alert changes kept while no birth stands; older ones are dropped (and counted in the log).
const MISSED_ALERTS: usize = 1000;

/// One edge node session: the MQTT client, its topics and metrics, and where it stands.
struct Edge {
    session: Session,
    topics: Topics,
    node: Node,
    key_pair: Option<tls::KeyPairStore>,
    connected_since: Option<Instant>,
    /// An NBIRTH stands in this MQTT session.
    born: bool,
    /// The primary host's latest STATE in this session; always online without a primary host.
    host: Option<HostState>,
    /// The newest STATE timestamp seen: an older one is stale and ignored.
    host_seen: u64,
    /// Alert changes while no birth stood: sent as historical NDATA after the next birth.
    missed: Vec<(String, bool, u64)>,
}

/// What the node counts about itself across sessions and reloads, for its `Node Info/…`
/// metrics (plain mode's health topic) and the Stopped line.
struct Stats {
    started: Instant,
    sent: u64,
    connects: u64,
    /// Connect failures as logged; its last error is kept after a success.
    connect_log: ConnectLog,
    queue_full: Arc<AtomicU64>,
    sensor_errors: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Stats {
    /// Sets the node's `Node Info/…` metrics to what they are now.
    fn refresh(&self, node: &mut Node) {
        let (rss_bytes, cpu_time_ms) = crate::health::process_usage();
        let read_errors = self
            .sensor_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .sum();
        // In the order of NODE_INFO.
        let values = [
            MetricValue::UInt(self.started.elapsed().as_secs()),
            MetricValue::UInt(rss_bytes),
            MetricValue::UInt(cpu_time_ms),
            MetricValue::UInt(self.sent),
            MetricValue::UInt(self.queue_full.load(Ordering::Relaxed)),
            MetricValue::UInt(self.connects.saturating_sub(1)),
            MetricValue::UInt(read_errors),
            MetricValue::Text(self.connect_log.last_error.clone()),
        ];
        let now = crate::model::now_ms();
        for ((name, _), value) in NODE_INFO.iter().zip(values) {
            node.set(name, value, now);
        }
    }
}

impl Edge {
    fn new(
        config: &ValidConfig,
        identity: &Identity,
        events: mpsc::Sender<MqttEvent>,
        incoming: mpsc::Sender<Incoming>,
    ) -> Result<Edge, MqttError> {
        let sparkplug = config
            .config()
            .sparkplug
            .as_ref()
            .expect("Sparkplug mode runs only with a sparkplug: section");
        let topics = Topics::new(sparkplug, &identity.client_id);
        let key_pair = crate::run::key_pair_store(config);
        let mut subscriptions = vec![topics.ncmd.clone()];
        subscriptions.extend(topics.state.clone());
        let session = Session::new(
            config,
            &identity.client_id,
            events,
            incoming,
            key_pair.as_ref().map(|store| &store.files),
            Profile::Sparkplug { subscriptions },
        )?;
        Ok(Edge {
            session,
            topics,
            node: node(config),
            key_pair,
            connected_since: None,
            born: false,
            host: None,
            host_seen: 0,
            missed: Vec::new(),
        })
    }

    /// Publishes NBIRTH when it may: connected, a reading taken, the primary host online.
    fn try_birth(&mut self, stats: &mut Stats) {
        let host_online = self.host.is_some_and(|host| host.online);
        if self.born || self.connected_since.is_none() || !host_online || !self.node.has_readings()
        {
            return;
        }
        stats.refresh(&mut self.node);
        let ts = crate::model::now_ms();
        let payload = self.node.birth(ts);
        if !self.session.publish_bytes(&self.topics.nbirth, payload, 0) {
            return;
        }
        self.born = true;
        stats.sent += 1;
        tracing::info!(topic = %self.topics.nbirth, bd_seq = self.node.bd_seq, "NBIRTH published.");
        if !self.missed.is_empty() {
            let metrics: Vec<_> = self
                .missed
                .drain(..)
                .filter_map(|(name, raised, ts)| {
                    self.node
                        .historical(&name, MetricValue::Boolean(raised), ts)
                })
                .collect();
            let count = metrics.len();
            let payload = self.node.data(ts, metrics);
            if self.session.publish_bytes(&self.topics.ndata, payload, 0) {
                stats.sent += 1;
                tracing::info!(
                    alert_changes = count,
                    "Alert changes made while offline sent as historical NDATA."
                );
            }
        }
    }

    /// Publishes what changed as NDATA (nothing when nothing did).
    fn send_changes(&mut self, stats: &mut Stats) {
        if !self.born {
            return;
        }
        let metrics = self.node.changes();
        if metrics.is_empty() {
            return;
        }
        let payload = self.node.data(crate::model::now_ms(), metrics);
        if self.session.publish_bytes(&self.topics.ndata, payload, 0) {
            stats.sent += 1;
        }
    }

    /// The session ended (lost, or closed by us): the next one needs a new birth.
    fn ended(&mut self) {
        self.connected_since = None;
        self.born = false;
        self.host = None;
    }
}

/// The node's metrics for `config`, with the alert states the sampler starts from (state_dir)
/// and the actuators' current values, so the next birth is true.
fn node(config: &ValidConfig) -> Node {
    let mut node = Node::new(config);
    let saved: SavedState =
        crate::state::load(&config.config().state_dir.join(crate::run::ALERTS_FILE));
    let now = crate::model::now_ms();
    for (name, raised) in saved.raised {
        node.set(&format!("Alerts/{name}"), MetricValue::Boolean(raised), now);
    }
    for actuator in &config.config().actuators {
        node.set(
            &format!("{}{}", super::ACTUATORS, actuator.name),
            actuator_value(&actuator.file),
            now,
        );
    }
    node
}

/// Drops what a stopped sampler left in the queue: a reading of a sensor the new config no
/// longer has would otherwise be declared in the next NBIRTH, and stay there.
fn drain_readings(readings: &mut mpsc::Receiver<Reading>) {
    while readings.try_recv().is_ok() {}
}

/// An actuator's current value as a metric: its file's text, or null when unreadable.
fn actuator_value(file: &std::path::Path) -> MetricValue {
    match std::fs::read_to_string(file) {
        Ok(text) => MetricValue::Text(text.trim().to_owned()),
        Err(_) => MetricValue::Null,
    }
}

/// Runs the edge node until `shutdown` resolves, then publishes NDEATH and disconnects.
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
    let (events_tx, mut events) = mpsc::channel(4);
    let (incoming_tx, mut incoming) = mpsc::channel(crate::mqtt::INCOMING_QUEUE);
    let mut edge = Edge::new(&config, &identity, events_tx.clone(), incoming_tx.clone())?;
    let mut hangups = reload_from.as_ref().map(|_| service::hangups());
    tracing::info!(client_id = %identity.client_id, source = %identity, broker = %edge.session.urls(), node = %edge.topics.nbirth, "Starting as a Sparkplug B edge node.");

    let (readings_tx, mut readings) = mpsc::channel::<Reading>(TELEMETRY_QUEUE);
    let (alert_tx, mut alert_rx) = mpsc::channel::<AlertEvent>(ALERT_QUEUE);
    let mut stats = Stats {
        started: Instant::now(),
        sent: 0,
        connects: 0,
        connect_log: ConnectLog::default(),
        queue_full: Arc::new(AtomicU64::new(0)),
        sensor_errors: Arc::default(),
    };
    let last_pass_ms = Arc::new(AtomicU64::new(crate::model::now_ms()));
    let outputs = Outputs {
        telemetry: TelemetrySink::Readings(readings_tx),
        alerts: alert_tx,
        queue_full: Arc::clone(&stats.queue_full),
        sensor_errors: Arc::clone(&stats.sensor_errors),
        last_pass_ms: Arc::clone(&last_pass_ms),
    };
    let mut sampling = Sampling::start(&config, &identity, outputs.clone());
    service::notify(&[
        NotifyState::Ready,
        NotifyState::Status("sampling; connecting"),
    ]);
    let watchdog = service::watchdog();
    let mut watchdog_timer =
        tokio::time::interval(watchdog.map_or(std::time::Duration::from_secs(3600), |w| w / 2));
    let mut cert_watch = tokio::time::interval(crate::run::CERT_WATCH);
    cert_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::new(&config.config().broker.reconnect);
    let mut health_timer = tokio::time::interval_at(
        tokio::time::Instant::now() + crate::health::INTERVAL,
        crate::health::INTERVAL,
    );
    let mut next_attempt = tokio::time::Instant::now();
    let first_shutdown = shutdown();
    tokio::pin!(first_shutdown);
    let signal = loop {
        tokio::select! {
            biased;
            signal = &mut first_shutdown => break signal,
            _ = watchdog_timer.tick(), if watchdog.is_some() => pet_watchdog(&config, &last_pass_ms),
            _ = health_timer.tick(), if edge.born => {
                stats.refresh(&mut edge.node);
                edge.send_changes(&mut stats);
            }
            _ = cert_watch.tick(), if edge.key_pair.is_some() => {
                let Some(store) = edge.key_pair.as_mut() else { continue };
                if renewed(store, &config, &identity).await {
                    // A clean stop of this session (NDEATH), and a new one with the new pair.
                    edge.session.close(SHUTDOWN_WAIT).await;
                    edge.ended();
                    backoff.reset();
                    next_attempt = tokio::time::Instant::now();
                }
            }
            Some(()) = next_hangup(&mut hangups) => {
                let Some(path) = &reload_from else { continue };
                service::notify(&[NotifyState::Reloading]);
                let refused = match reload(path).await {
                    Err(findings) => Some(findings),
                    Ok((new_config, _)) if new_config.config().sparkplug.is_none() => Some(
                        "leaving Sparkplug mode takes a restart of the agent".to_owned(),
                    ),
                    Ok((new_config, new_identity))
                        if new_identity.client_id == identity.client_id
                            && !Changes::between(config.config(), new_config.config()).session =>
                    {
                        if new_config.config() == config.config() {
                            tracing::info!("Reloaded; nothing changed.");
                        } else {
                            // What is sampled, alerted on or actuated changed, not the session:
                            // a rebirth declares the new metric set (same bdSeq, seq 0).
                            std::mem::replace(&mut sampling, Sampling::placeholder()).stop(SHUTDOWN_WAIT).await;
                            drain_readings(&mut readings);
                            let bd_seq = edge.node.bd_seq;
                            edge.node = node(&new_config);
                            edge.node.bd_seq = bd_seq;
                            edge.born = false;
                            sampling = Sampling::start(&new_config, &new_identity, outputs.clone());
                            config = new_config;
                            identity = new_identity;
                            tracing::info!("Reloaded; a new NBIRTH will declare the changed metrics.");
                        }
                        None
                    }
                    Ok((new_config, new_identity)) => {
                        match Edge::new(&new_config, &new_identity, events_tx.clone(), incoming_tx.clone()) {
                            Ok(new_edge) => {
                                // The session itself changed (broker, TLS, identity, Sparkplug
                                // ids): NDEATH for this one, a new bdSeq and NBIRTH for the next.
                                edge.session.close(SHUTDOWN_WAIT).await;
                                edge = new_edge;
                                std::mem::replace(&mut sampling, Sampling::placeholder()).stop(SHUTDOWN_WAIT).await;
                                drain_readings(&mut readings);
                                sampling = Sampling::start(&new_config, &new_identity, outputs.clone());
                                backoff = Backoff::new(&new_config.config().broker.reconnect);
                                next_attempt = tokio::time::Instant::now();
                                config = new_config;
                                identity = new_identity;
                                tracing::info!("Reloaded; starting a new Sparkplug session.");
                                None
                            }
                            Err(err) => Some(err.to_string()),
                        }
                    }
                };
                if let Some(findings) = refused {
                    tracing::error!(findings = %findings, "Reload refused; the running config stays.");
                }
                service::notify(&[NotifyState::Ready]);
            }
            () = tokio::time::sleep_until(next_attempt), if edge.connected_since.is_none() => {
                // Saved (fsynced, off the event loop) before the connect: a crash after it never
                // reuses this bdSeq.
                let state_dir = config.config().state_dir.clone();
                let bd_seq = match tokio::task::spawn_blocking(move || super::next_bd_seq(&state_dir)).await {
                    Ok(bd_seq) => bd_seq,
                    Err(err) => {
                        // Not 0 by accident: the one after the last session's.
                        let bd_seq = (edge.node.bd_seq + 1) % 256;
                        tracing::error!(error = %err, bd_seq, "Cannot read the next Sparkplug bdSeq; taking the one after the last session's.");
                        bd_seq
                    }
                };
                edge.node.bd_seq = bd_seq;
                edge.session.set_will(Outgoing {
                    topic: edge.topics.ndeath.clone(),
                    payload: super::death(bd_seq),
                    qos: 1,
                    retain: false,
                });
                match edge.session.connect().await {
                    Ok(connected) => {
                        edge.connected_since = Some(Instant::now());
                        edge.born = false;
                        edge.host = match edge.topics.state {
                            Some(_) => None,
                            None => Some(HostState { online: true, timestamp: 0 }),
                        };
                        stats.connects += 1;
                        stats.connect_log.connected();
                        tracing::info!(broker = %connected.server, bd_seq, "Connected.");
                        service::notify(&[NotifyState::Status(&format!("connected to {}", connected.server))]);
                        edge.try_birth(&mut stats);
                    }
                    Err(err) => {
                        let delay = backoff.next_delay(fastrand::f64());
                        stats.connect_log.failed(&err, &config, edge.session.urls(), delay).await;
                        next_attempt = tokio::time::Instant::now() + delay;
                    }
                }
            }
            Some(MqttEvent::Lost) = events.recv() => {
                if let Some(since) = edge.connected_since {
                    if since.elapsed() >= STABLE {
                        backoff.reset();
                    }
                    edge.ended();
                    let delay = backoff.next_delay(fastrand::f64());
                    tracing::warn!(broker = %edge.session.urls(), retry_in_s = delay.as_secs_f64(), "Connection lost.");
                    next_attempt = tokio::time::Instant::now() + delay;
                }
            }
            Some(message) = incoming.recv() => {
                if edge.topics.state.as_deref() == Some(message.topic.as_str()) {
                    let state = match host_state(&message.payload) {
                        Ok(state) => state,
                        Err(why) => {
                            tracing::warn!(topic = %message.topic, error = %why, "STATE ignored.");
                            continue;
                        }
                    };
                    if state.timestamp < edge.host_seen {
                        tracing::debug!(topic = %message.topic, "Stale STATE ignored.");
                        continue;
                    }
                    edge.host_seen = state.timestamp;
                    tracing::info!(topic = %message.topic, online = state.online, "Primary host STATE.");
                    if state.online {
                        edge.host = Some(state);
                        edge.try_birth(&mut stats);
                    } else if edge.born {
                        // The specification's behaviour: NDEATH, disconnect, and come back
                        // (through the backoff) to wait for the host.
                        edge.session.close(SHUTDOWN_WAIT).await;
                        edge.ended();
                        let delay = backoff.next_delay(fastrand::f64());
                        tracing::warn!(retry_in_s = delay.as_secs_f64(), "Primary host offline: NDEATH published, disconnected.");
                        next_attempt = tokio::time::Instant::now() + delay;
                    } else {
                        edge.host = Some(state);
                    }
                } else if message.topic == edge.topics.ncmd {
                    let commands = match edge.node.commands(&message.payload) {
                        Ok(commands) => commands,
                        Err(why) => {
                            tracing::warn!(topic = %message.topic, error = %why, "NCMD ignored.");
                            continue;
                        }
                    };
                    for command in commands {
                        match command {
                            NodeCommand::Rebirth => {
                                tracing::info!("Rebirth requested.");
                                edge.born = false;
                                edge.try_birth(&mut stats);
                            }
                            NodeCommand::Write { actuator, value } => {
                                write_actuator(&mut edge, &mut stats, &config, &actuator, value).await;
                            }
                            NodeCommand::Ignored { metric, why } => {
                                tracing::warn!(metric = %metric, reason = %why, "NCMD metric ignored.");
                            }
                        }
                    }
                }
            }
            Some(event) = alert_rx.recv() => {
                let name = format!("Alerts/{}", event.alert);
                let raised = event.state == Transition::Raised;
                if edge.node.set(&name, MetricValue::Boolean(raised), event.ts) {
                    if edge.born {
                        edge.send_changes(&mut stats);
                    } else {
                        if edge.missed.len() == MISSED_ALERTS {
                            edge.missed.remove(0);
                            tracing::warn!(alert = %event.alert, "Too many alert changes while offline; the oldest is only in the next NBIRTH's state.");
                        }
                        edge.missed.push((name, raised, event.ts));
                    }
                }
            }
            Some(reading) = readings.recv() => {
                if edge.node.observe(&reading) && edge.born {
                    tracing::info!("A new sensor value appeared; rebirth to declare it.");
                    edge.born = false;
                }
                if edge.born {
                    edge.send_changes(&mut stats);
                } else {
                    edge.try_birth(&mut stats);
                }
            }
        }
    };
    tracing::info!(signal, "Shutting down.");
    service::notify(&[NotifyState::Stopping]);
    drop(alert_rx);
    drop(sampling.stop);
    tokio::select! {
        // NDEATH (the will's payload) and a clean disconnect.
        () = edge.session.close(SHUTDOWN_WAIT) => {}
        signal = shutdown() => tracing::warn!(signal, "Second signal: stopping without waiting."),
    }
    tracing::info!(
        sent = stats.sent,
        dropped = stats.queue_full.load(Ordering::Relaxed),
        connects = stats.connects,
        "Stopped."
    );
    if sampling.thread.is_finished() {
        let _ = sampling.thread.join();
    }
    Ok(())
}

/// An NCMD write to `Actuators/<name>`: through the same allow-list as plain commands; the
/// value the file holds afterwards is reported in NDATA either way.
async fn write_actuator(
    edge: &mut Edge,
    stats: &mut Stats,
    config: &ValidConfig,
    name: &str,
    value: String,
) {
    let Some(actuator) = config
        .config()
        .actuators
        .iter()
        .find(|a| a.name == name)
        .cloned()
    else {
        tracing::warn!(actuator = %name, "NCMD write to an unknown actuator ignored.");
        return;
    };
    let value = match crate::commands::allowed_value(&actuator, Some(value)) {
        Ok(value) => value,
        Err(why) => {
            tracing::warn!(actuator = %name, reason = %why, "NCMD write refused.");
            return;
        }
    };
    let file = actuator.file;
    let written = tokio::task::spawn_blocking(move || {
        let result = crate::commands::write(&file, &value).map(|()| value);
        (result, actuator_value(&file))
    })
    .await;
    let Ok((result, now)) = written else { return };
    match result {
        Ok(value) => tracing::info!(actuator = %name, value = %value, "Actuator written (NCMD)."),
        Err(why) => tracing::warn!(actuator = %name, reason = %why, "Actuator write failed."),
    }
    let metric = format!("{}{}", super::ACTUATORS, name);
    edge.node.set(&metric, now, crate::model::now_ms());
    edge.send_changes(stats);
}
