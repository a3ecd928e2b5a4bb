//! Sparkplug B 3.0 mode: the daemon as an edge node, with Sparkplug's session rules.
//!
//! Each connect takes the next bdSeq (saved first), registers NDEATH with it as the will, and
//! subscribes to NCMD (and the primary host's STATE). NBIRTH goes out once a reading exists and,
//! with `primary_host_id`, only while that host's STATE says online; a host that goes offline
//! after our birth gets NDEATH and a disconnect, and the node comes back through the backoff.
//! NDATA carries only what changed beyond its deadband. Store and forward: while no birth stands
//! (the primary host offline, the broker unreachable), what each pass would have published goes
//! to the durable outbox instead (by metric name, with the original timestamps; bounded by
//! `broker.max_queued_messages`, oldest dropped first); after the next NBIRTH it goes out as
//! NDATA marked historical, oldest first, at `broker.drain_rate` messages a second, each with
//! the session's next seq. Across restarts and power cuts too: the outbox is on disk. A reload
//! that changes only the metric set
//! is a rebirth in the same session; one that changes the session (broker, TLS, identity,
//! Sparkplug ids) ends it with NDEATH and starts the next, as a certificate renewal does. The
//! node's own health (plain mode's health topic) is in its `Node Info/…` metrics.

use std::path::PathBuf;
use std::sync::Arc;

use super::delivery::{Answer, Delivery};
use super::event::{Report, Taken};
use super::mode::{Arrived, Mode};
use super::sampler::{AlertSink, Pass};
use super::store::Request;
use super::Core;
use crate::alerts::{AlertEvent, SavedState, Transition};
use crate::config::ValidConfig;
use crate::identity::Identity;
use crate::mqtt::{Confirmation, Connected, Incoming, Outgoing, Profile};
use crate::outbox::{Dropped, Kind};
use crate::sparkplug::{
    host_state, History, HostState, MetricValue, Node, NodeCommand, Reading, Topics, ACTUATORS,
    NODE_INFO,
};
use crate::sync::Lock;

pub(crate) struct Edge {
    topics: Topics,
    node: Node,
    /// The board's name (`Properties/Hardware`), read once at start.
    hardware: String,
    /// An NBIRTH stands in this MQTT session.
    born: bool,
    /// The primary host's latest STATE in this session; always online without a primary host.
    host: Option<HostState>,
    /// The newest STATE timestamp seen in this session: an older one is stale and ignored.
    /// Forgotten at every new session, so one far-future STATE cannot block births for good.
    host_seen: u64,
    /// Store and forward: what was kept while no birth stood goes out through this after the
    /// next birth, paced, as historical NDATA.
    delivery: Delivery,
    /// Kept records that could not be sent as NDATA (not this node's, or none of whose metrics
    /// is declared any more), logged once a session.
    unusable_logged: bool,
    /// The outbox's bound dropped kept data: said once until a birth stands again.
    bound_logged: bool,
    /// The most bytes of one kept record (`telemetry.max_message_bytes`): a pass with more
    /// changes is kept as several records of the same time, each sent as an NDATA of its own.
    record_bytes: usize,
}

impl Edge {
    pub fn new(config: &ValidConfig, identity: &Identity, alerts: &SavedState) -> Edge {
        let hardware = hardware(&config.config().sysfs_root);
        Edge {
            topics: topics(config, identity),
            node: node(config, &hardware, alerts),
            hardware,
            born: false,
            host: None,
            host_seen: 0,
            delivery: Delivery::new(
                config.config().broker.drain_rate,
                // As plain mode's: an answer that never came goes again.
                std::time::Duration::from_secs((4 * config.config().broker.keepalive_s).max(30)),
            ),
            unusable_logged: false,
            bound_logged: false,
            record_bytes: record_bytes(config),
        }
    }

    /// NCMD and, with a primary host, its STATE: subscribed on every connect.
    pub fn subscriptions_for(config: &ValidConfig, identity: &Identity) -> Vec<String> {
        subscriptions(&topics(config, identity))
    }

    pub fn node_topic(&self) -> &str {
        &self.topics.nbirth
    }

    pub fn ndeath_topic(&self) -> String {
        self.topics.ndeath.clone()
    }

    /// A reload: the new metric set is declared by a rebirth in this session, or, when the
    /// session changed, by the birth of the next one.
    fn renew(
        &mut self,
        config: &ValidConfig,
        identity: &Identity,
        alerts: &SavedState,
        session_changed: bool,
    ) {
        let bd_seq = self.node.bd_seq;
        self.node = node(config, &self.hardware, alerts);
        self.node.bd_seq = bd_seq;
        self.topics = topics(config, identity);
        self.record_bytes = record_bytes(config);
        self.born = false;
        if session_changed {
            self.session_ended();
            tracing::info!("Reloaded; starting a new Sparkplug session.");
        } else {
            tracing::info!("Reloaded; a new NBIRTH will declare the changed metrics.");
        }
    }

    fn connected(&mut self, core: &mut Core, connected: &Connected, bd_seq: Option<u64>) {
        // The session's NDEATH (its will, set before the attempt) is also the goodbye of a clean
        // stop.
        let bd_seq = bd_seq.unwrap_or((self.node.bd_seq + 1) % 256);
        self.node.bd_seq = bd_seq;
        self.born = false;
        // Kept records in flight on the last connection go again (after this session's birth).
        self.delivery.connected(core.link.connects, &core.store);
        self.unusable_logged = false;
        // The primary host's STATE of this session may already be here: the retained one is
        // delivered at the subscribe, which can be before this event. What the last session saw
        // was forgotten when it ended (`ended`).
        if self.topics.state.is_none() {
            self.host = Some(HostState {
                online: true,
                timestamp: 0,
            });
        }
        tracing::info!(broker = %connected.server, bd_seq, "Connected.");
        self.try_birth(core);
    }

    /// The session ended (lost, or closed by us): the next one needs a new birth.
    fn session_ended(&mut self) {
        self.born = false;
        self.host = None;
        self.host_seen = 0;
    }

    fn reading(&mut self, core: &mut Core, reading: Reading) {
        let ts = reading.ts_ms;
        if self.node.observe(&reading) && self.born {
            tracing::info!("A new sensor value appeared; rebirth to declare it.");
            self.born = false;
        }
        if self.born {
            self.send_changes(core);
        } else {
            self.try_birth(core);
            if !self.born {
                self.keep(core, ts);
            }
        }
    }

    /// Store: what this pass would have published, to the durable outbox (it goes out as
    /// historical NDATA after the next birth). The first pass after a start holds every metric:
    /// the node cannot know what the records before the restart held, and a repeated value at a
    /// later time is still true history.
    fn keep(&mut self, core: &mut Core, ts: u64) {
        if self.topics.state.is_none() || !self.node.has_readings() {
            // Without a primary host there is no host whose history to complete: what was not
            // sent is declared by the next birth. Before the first pass (an alert event can
            // come first): that pass keeps it all.
            return;
        }
        let metrics = self.node.changes_named();
        if metrics.is_empty() {
            return;
        }
        let topic: Arc<str> = Arc::from(self.topics.ndata.as_str());
        for record in History::split(ts, metrics, self.record_bytes) {
            core.store.send(Request::Push {
                kind: Kind::Telemetry,
                qos: 0,
                topic: Arc::clone(&topic),
                payload: record.encode(),
                limit: None,
            });
        }
    }

    fn alert(&mut self, core: &mut Core, event: AlertEvent) {
        let name = format!("Alerts/{}", event.alert);
        let raised = event.state == Transition::Raised;
        if !self.node.set(&name, MetricValue::Boolean(raised), event.ts) {
            return;
        }
        if self.born {
            self.send_changes(core);
        } else {
            // Kept at once, with its own time: a raise and its clear between two passes are two
            // records.
            self.keep(core, event.ts);
        }
    }

    fn node_info(&mut self, core: &mut Core) {
        if self.born {
            refresh(core, &mut self.node);
            self.send_changes(core);
        }
    }

    /// A message on NCMD or the primary host's STATE. The actuator writes an NCMD asks for
    /// come back, in order, for the one executor (`daemon::commands`).
    fn message(&mut self, core: &mut Core, message: Incoming) -> Vec<(String, String)> {
        let mut writes = Vec::new();
        if self.topics.state.as_deref() == Some(message.topic.as_str()) {
            self.on_state(core, &message);
        } else if message.topic == self.topics.ncmd {
            let commands = match self.node.commands(&message.payload) {
                Ok(commands) => commands,
                Err(why) => {
                    tracing::warn!(topic = %message.topic, error = %why.to_string().escape_debug(), "NCMD ignored.");
                    return writes;
                }
            };
            for command in commands {
                match command {
                    NodeCommand::Rebirth => {
                        tracing::info!("Rebirth requested.");
                        self.born = false;
                        self.try_birth(core);
                    }
                    NodeCommand::Write { actuator, value } => writes.push((actuator, value)),
                    NodeCommand::Ignored { metric, why } => {
                        tracing::warn!(metric = %metric.escape_debug(), reason = %why.escape_debug(), "NCMD metric ignored.");
                    }
                }
            }
        } else {
            crate::daemon::stray::warn(&message.topic);
        }
        writes
    }

    fn on_state(&mut self, core: &mut Core, message: &Incoming) {
        let state = match host_state(&message.payload) {
            Ok(state) => state,
            Err(why) => {
                tracing::warn!(topic = %message.topic, error = %why.to_string().escape_debug(), "STATE ignored.");
                return;
            }
        };
        if state.timestamp < self.host_seen {
            tracing::info!(topic = %message.topic, timestamp = state.timestamp, newest = self.host_seen, "Stale STATE ignored (older than one seen in this session).");
            return;
        }
        self.host_seen = state.timestamp;
        tracing::info!(topic = %message.topic, online = state.online, "Primary host STATE.");
        if state.online {
            self.host = Some(state);
            self.try_birth(core);
            return;
        }
        // Offline. After an online STATE in this session (born or not yet), the specification's
        // behaviour: NDEATH, disconnect, and start over with the next broker (through the
        // backoff). Offline from this session's first STATE: with one broker the node waits here
        // for the host; with several it moves on to the next.
        let was_online = self.host.is_some_and(|host| host.online);
        if self.born || was_online || core.session.servers() > 1 {
            let current = core.server.as_ref().map(|(server, _)| server.clone());
            self.session_ended();
            core.close_session(true);
            core.session.next_server_after(current.as_deref());
            let delay = core.link.backoff_delay(fastrand::f64());
            tracing::warn!(
                retry_in_s = delay.as_secs_f64(),
                "Primary host offline: NDEATH published, disconnecting."
            );
            core.reconnect_after = Some(delay);
        } else {
            self.host = Some(state);
        }
    }

    /// An NCMD write ended: the value the actuator holds now goes out in NDATA.
    fn written(
        &mut self,
        core: &mut Core,
        actuator: &str,
        result: Result<String, String>,
        value: Option<String>,
    ) {
        let value = value.map_or(MetricValue::Null, MetricValue::Text);
        match result {
            Ok(written) => {
                tracing::info!(actuator = %actuator, value = %written, "Actuator written (NCMD).")
            }
            Err(why) => {
                tracing::warn!(actuator = %actuator, reason = %why, "Actuator write failed.")
            }
        }
        self.node.set(
            &format!("{ACTUATORS}{actuator}"),
            value,
            crate::model::now_ms(),
        );
        self.send_changes(core);
    }

    /// Publishes NBIRTH when it may: connected, a reading taken, the primary host online.
    fn try_birth(&mut self, core: &mut Core) {
        let host_online = self.host.is_some_and(|host| host.online);
        if self.born || !core.link.is_up() || !host_online || !self.node.has_readings() {
            return;
        }
        refresh(core, &mut self.node);
        let ts = crate::model::now_ms();
        let payload = self.node.birth(ts);
        if !core.session.publish(&self.topics.nbirth, payload, 0, false) {
            // The connection went: nothing counts as sent, the pass is kept.
            self.node.unsend_all();
            return;
        }
        self.born = true;
        self.bound_logged = false;
        core.counters.sent += 1;
        tracing::info!(topic = %self.topics.nbirth, bd_seq = self.node.bd_seq, kept = core.outbox.per_kind[Kind::Telemetry as usize], "NBIRTH published.");
    }

    /// Kept records the store handed over: each as historical NDATA with the next seq.
    fn forward(&mut self, core: &mut Core, generation: u64, messages: Vec<Taken>) {
        if !self.born {
            // The birth they were asked for is gone (the host went offline, a reload's rebirth
            // is due): they wait for the next one, with its aliases and seq.
            self.delivery.put_back(generation, messages, &core.store);
            return;
        }
        let mut sendable = Vec::with_capacity(messages.len());
        for mut taken in messages {
            let ndata = match History::decode(&taken.message.payload) {
                Ok(record) if *taken.message.topic == *self.topics.ndata => {
                    record.ndata(&mut self.node)
                }
                _ => None,
            };
            match ndata {
                Some(payload) => {
                    taken.message.payload = payload;
                    sendable.push(taken);
                }
                _ => {
                    if !self.unusable_logged {
                        self.unusable_logged = true;
                        tracing::warn!(topic = %taken.message.topic, "A kept message is not this node's history (or none of its metrics is declared now); dropped.");
                    }
                    core.counters.dropped += 1;
                    core.store.send(Request::Dropped(taken.message.id));
                }
            }
        }
        self.delivery.taken(
            generation,
            sendable,
            &core.session,
            &core.store,
            &core.events,
        );
    }

    /// Publishes what changed as NDATA (nothing when nothing did).
    fn send_changes(&mut self, core: &mut Core) {
        if !self.born {
            return;
        }
        let metrics = self.node.changes();
        if metrics.is_empty() {
            return;
        }
        let aliases: Vec<u64> = metrics.iter().filter_map(|m| m.alias).collect();
        let now = crate::model::now_ms();
        let payload = self.node.data(now, metrics);
        if core.session.publish(&self.topics.ndata, payload, 0, false) {
            core.counters.sent += 1;
        } else {
            // The connection went before the loop heard of it: no birth stands for what follows
            // (the next one is this session's rebirth or the next session's), and the changes
            // are kept as history instead of lost.
            self.node.unsend(&aliases);
            self.born = false;
            self.keep(core, now);
        }
    }
}

fn record_bytes(config: &ValidConfig) -> usize {
    usize::try_from(config.config().telemetry.max_message_bytes).unwrap_or(usize::MAX)
}

fn subscriptions(topics: &Topics) -> Vec<String> {
    let mut subscriptions = vec![topics.ncmd.clone()];
    subscriptions.extend(topics.state.clone());
    subscriptions
}

fn topics(config: &ValidConfig, identity: &Identity) -> Topics {
    let sparkplug = config
        .config()
        .sparkplug
        .as_ref()
        .expect("Sparkplug mode runs only with a sparkplug: section");
    Topics::new(sparkplug, &identity.client_id)
}

/// The node's metrics for `config`, with the alert states the sampler starts from and the
/// actuators' current values, so the next birth is true.
fn node(config: &ValidConfig, hardware: &str, alerts: &SavedState) -> Node {
    let now = crate::model::now_ms();
    let mut node = Node::new(config, hardware, now);
    for (name, raised) in &alerts.raised {
        node.set(
            &format!("Alerts/{name}"),
            MetricValue::Boolean(*raised),
            now,
        );
    }
    for actuator in &config.actuators {
        node.set(
            &format!("{ACTUATORS}{}", actuator.name),
            actuator_value(&actuator.target),
            now,
        );
    }
    node
}

/// Sets the node's `Node Info/…` metrics to what they are now.
fn refresh(core: &Core, node: &mut Node) {
    let (rss_bytes, cpu_time_ms) = crate::health::process_usage();
    let read_errors = core.stats.sensor_errors.locked().values().sum();
    // In the order of NODE_INFO.
    let values = [
        MetricValue::UInt(core.started.elapsed().as_secs()),
        MetricValue::UInt(rss_bytes),
        MetricValue::UInt(cpu_time_ms),
        MetricValue::UInt(core.counters.sent),
        MetricValue::UInt(
            core.stats
                .queue_full
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
        MetricValue::UInt(core.link.connects.saturating_sub(1)),
        MetricValue::UInt(read_errors),
        MetricValue::Text(core.connect_log.last_error.clone()),
    ];
    let now = crate::model::now_ms();
    for ((name, _), value) in NODE_INFO.iter().zip(values) {
        node.set(name, value, now);
    }
}

/// The next bdSeq, in `state_dir`.
const BD_SEQ_FILE: &str = "sparkplug-bdseq.json";

/// The bdSeq for the next MQTT session: read from `state_dir`, and the one after it saved
/// before the connect, so a crash never reuses a bdSeq whose NDEATH may still be delivered.
/// Blocking.
fn save_next_bd_seq(state_dir: &std::path::Path) -> u64 {
    let path = state_dir.join(BD_SEQ_FILE);
    let this: u64 = crate::state::load::<u64>(&path) % 256;
    if let Err(err) = crate::state::save(&path, &((this + 1) % 256)) {
        tracing::error!(path = %path.display(), error = %err, "Cannot save the next Sparkplug bdSeq; a restart may reuse this one.");
    }
    this
}

/// The board's name, for `Properties/Hardware`: the device tree's model, else DMI's product
/// name, else the architecture. Read once, at start.
fn hardware(sysfs_root: &std::path::Path) -> String {
    [
        "firmware/devicetree/base/model",
        "class/dmi/id/product_name",
    ]
    .iter()
    .find_map(|relative| {
        let bytes = std::fs::read(sysfs_root.join(relative)).ok()?;
        let text = crate::identity::trim_sysfs(&String::from_utf8_lossy(&bytes)).to_owned();
        (!text.is_empty()).then_some(text)
    })
    .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

/// The NDEATH that is the will (and the goodbye) of the session with `bd_seq`.
pub fn will(topic: String, bd_seq: u64) -> Outgoing {
    Outgoing {
        topic,
        payload: crate::sparkplug::death(bd_seq, crate::model::now_ms()),
        qos: 1,
        retain: false,
    }
}

/// The bdSeq of the next session, saved first on the blocking pool; if that fails, the one after
/// `last` (never 0 by accident).
pub async fn next_bd_seq(state_dir: PathBuf, last: u64) -> u64 {
    match tokio::task::spawn_blocking(move || save_next_bd_seq(&state_dir)).await {
        Ok(bd_seq) => bd_seq,
        Err(err) => {
            let bd_seq = (last + 1) % 256;
            tracing::error!(error = %err, bd_seq, "Cannot read the next Sparkplug bdSeq; taking the one after the last session's.");
            bd_seq
        }
    }
}

/// An actuator's current value as a metric: a file's text or a GPIO line's level, or null when
/// unreadable (or a Modbus register, which is not read outside a command). A file is opened
/// non-blocking, so a FIFO cannot hold up the caller.
fn actuator_value(target: &crate::actuators::Target) -> MetricValue {
    crate::actuators::current(target).map_or(MetricValue::Null, MetricValue::Text)
}

impl Mode for Edge {
    fn is_sparkplug(&self) -> bool {
        true
    }

    fn profile(&self, config: &ValidConfig, identity: &Identity) -> Profile {
        Profile::Sparkplug {
            subscriptions: Edge::subscriptions_for(config, identity),
        }
    }

    fn alert_sink(&self, core: &Core) -> AlertSink {
        AlertSink::Loop(core.events.clone())
    }

    fn log_start(&self, core: &Core) {
        tracing::info!(client_id = %core.identity.client_id, source = %core.identity, broker = %core.session.urls(), node = %self.node_topic(), "Starting as a Sparkplug B edge node.");
    }

    fn bd_seq(&self) -> Option<u64> {
        Some(self.node.bd_seq)
    }

    fn before_attempt(&self, core: &mut Core, bd_seq: Option<u64>) {
        if let Some(bd_seq) = bd_seq {
            core.session.set_will(will(self.ndeath_topic(), bd_seq));
        }
    }

    fn on_connected(&mut self, core: &mut Core, connected: &Connected, bd_seq: Option<u64>) {
        self.connected(core, connected, bd_seq);
    }

    fn ended(&mut self) {
        self.session_ended();
    }

    fn goodbye_on_reconnect(&self) -> bool {
        true
    }

    fn on_pass(&mut self, core: &mut Core, pass: Pass) {
        // A pass of the other mode's sampler cannot come: a mode switch takes a restart.
        if let Pass::Reading(reading) = pass {
            self.reading(core, reading);
        }
    }

    fn health_tick(&mut self, core: &mut Core) {
        self.node_info(core);
    }

    fn on_incoming(&mut self, core: &mut Core, message: Incoming) -> Arrived {
        Arrived::Writes(self.message(core, message))
    }

    fn on_alert(&mut self, core: &mut Core, event: AlertEvent) {
        self.alert(core, event);
    }

    fn on_written(
        &mut self,
        core: &mut Core,
        actuator: &str,
        result: Result<String, String>,
        value: Option<String>,
    ) {
        self.written(core, actuator, result, value);
    }

    fn on_report(&mut self, report: &Report) {
        if !report.dropped.is_empty() && !std::mem::replace(&mut self.bound_logged, true) {
            tracing::warn!(
                dropped = report.dropped.len(),
                "Store and forward holds broker.max_queued_messages; the oldest kept data were dropped."
            );
        }
        self.delivery.set_queued(report.queued);
    }

    fn taken(&mut self, core: &mut Core, generation: u64, messages: Vec<Taken>, _lost: &[Dropped]) {
        // What could not be read back is counted as lost by the loop.
        self.forward(core, generation, messages);
    }

    fn delivered(
        &mut self,
        core: &mut Core,
        generation: u64,
        id: u64,
        confirmation: &Confirmation,
    ) {
        match self
            .delivery
            .delivered(generation, id, confirmation, &core.store)
        {
            Answer::Delivered => core.counters.sent += 1,
            Answer::Refused { topic, reason, .. } => {
                core.counters.refused += 1;
                core.counters.dropped += 1;
                tracing::warn!(topic = %topic, reason = %reason, "The broker refused historical NDATA (MQTT 5); dropped.");
            }
            Answer::Again => {}
        }
    }

    /// Only after this session's birth: historical data follow an NBIRTH.
    fn pump_at(&self, core: &Core) -> Option<std::time::Instant> {
        (self.born && core.link.is_up() && self.delivery.wants_to_send())
            .then(|| self.delivery.ready_at().into_std())
    }

    fn pump(&mut self, core: &mut Core) {
        self.delivery.request(&core.store);
    }

    fn inflight(&self) -> usize {
        self.delivery.inflight()
    }

    fn reconfigure(
        &mut self,
        core: &Core,
        config: &ValidConfig,
        identity: &Identity,
        changed: bool,
        session: bool,
    ) {
        self.delivery.set_rate(config.config().broker.drain_rate);
        if changed {
            let state = core.book.locked().state().clone();
            self.renew(config, identity, &state, session);
        }
    }

    fn resample_on_any_change(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bd_seq_advances_per_session_survives_restarts_and_wraps_at_256() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(save_next_bd_seq(dir.path()), 0);
        assert_eq!(save_next_bd_seq(dir.path()), 1);
        crate::state::save(&dir.path().join(BD_SEQ_FILE), &255u64).unwrap();
        assert_eq!(save_next_bd_seq(dir.path()), 255);
        assert_eq!(save_next_bd_seq(dir.path()), 0);
    }
}
