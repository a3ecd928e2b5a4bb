//! Plain mode: the `{prefix}/…` topics. Telemetry at QoS 0 goes straight to Paho while online;
//! alerts, command responses and telemetry at QoS >= 1 or kept while offline go through the
//! outbox (the store) and drain from it at `broker.drain_rate`; health is published on every
//! connect and every minute, retained.
//!
//! The device starts offline happily: until the first connect attempt has ended, the latest
//! sample waits for it (at `telemetry.qos`: through the outbox at QoS >= 1); after that, up to `telemetry.buffer_while_offline` telemetry messages
//! are kept while offline and the rest are dropped and counted.

use std::sync::Arc;

use super::delivery::{Answer, Delivery, WINDOW};
use super::event::{Report, Taken};
use super::mode::{Arrived, Mode};
use super::sampler::{AlertSink, Pass};
use super::store::Request;
use super::Core;
use crate::config::ValidConfig;
use crate::identity::Identity;
use crate::mqtt::{Confirmation, Connected, Incoming, Profile};
use crate::outbox::{Dropped, Kind};

/// Numbers from the config used on every message.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `telemetry.qos`.
    qos: u8,
    /// `telemetry.buffer_while_offline`, bounded by `broker.max_queued_messages`.
    keep_offline: usize,
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
        }
    }
}

/// The topics of one device.
struct Topics {
    /// `{prefix}/commands/`: a command's topic is this and its name, nothing else.
    commands: String,
    /// `{prefix}/operations/`: a request's topic is this and its type.
    operations: String,
    alerts: Arc<str>,
    telemetry: Arc<str>,
    responses: Arc<str>,
    health: String,
}

impl Topics {
    fn new(config: &ValidConfig, identity: &Identity) -> Topics {
        let prefix = config.topic_prefix(&identity.client_id);
        Topics {
            commands: format!("{prefix}/commands/"),
            operations: format!("{prefix}/operations/"),
            alerts: Arc::from(format!("{prefix}/alerts")),
            telemetry: Arc::from(format!("{prefix}/telemetry")),
            responses: Arc::from(format!("{prefix}/responses")),
            health: format!("{prefix}/health"),
        }
    }
}

pub(crate) struct Plain {
    delivery: Delivery,
    limits: Limits,
    topics: Topics,
    /// The latest sample made before the first connect attempt ended (the agent is starting,
    /// not offline): it waits for that connect even without an offline buffer.
    first_sample: Vec<String>,
    /// False until the first connect attempt has ended.
    attempted: bool,
    /// Topics on which the broker refused a message (logged once each).
    refused_topics: std::collections::HashSet<String>,
    /// Sparkplug history found after a switch to plain mode was said to be dropped.
    sparkplug_dropped_logged: bool,
}

impl Plain {
    pub fn new(config: &ValidConfig, identity: &Identity) -> Plain {
        let broker = &config.config().broker;
        // A confirmation that has not come after four keepalives means the message goes again.
        let ack_timeout = std::time::Duration::from_secs((4 * broker.keepalive_s).max(30));
        Plain {
            delivery: Delivery::new(broker.drain_rate, ack_timeout),
            limits: Limits::of(config),
            topics: Topics::new(config, identity),
            first_sample: Vec::new(),
            attempted: false,
            refused_topics: std::collections::HashSet::new(),
            sparkplug_dropped_logged: false,
        }
    }

    /// The command's name when `topic` is exactly `{prefix}/commands/{name}`.
    fn command_topic<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let name = topic.strip_prefix(self.topics.commands.as_str())?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// The operation's type when `topic` is exactly `{prefix}/operations/{type}` (not the status
    /// or log topics the agent publishes itself).
    fn operation_topic<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let kind = topic.strip_prefix(self.topics.operations.as_str())?;
        (!kind.is_empty() && !kind.contains('/') && kind != "status").then_some(kind)
    }

    fn connected(&mut self, core: &mut Core, connected: &Connected) {
        self.attempted = true;
        // Nothing sent on an earlier connection is trusted to have arrived: what was in flight
        // goes again (at-least-once; ids stay the same).
        self.delivery.connected(core.link.connects, &core.store);
        for payload in std::mem::take(&mut self.first_sample) {
            self.send_live(core, payload);
        }
        self.publish_health(core);
        tracing::info!(
            broker = %connected.server,
            session_present = connected.session_present,
            queued = core.outbox.per_kind.iter().sum::<usize>(),
            dropped = core.counters.dropped,
            "Connected."
        );
    }

    /// One sampling pass's telemetry: one message, or its parts when the pass is larger than
    /// `telemetry.max_message_bytes` (each part counts as a message).
    fn telemetry(&mut self, core: &mut Core, parts: Vec<String>) {
        let full = core
            .stats
            .queue_full
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        self.delivery.telemetry_dropped(full);
        core.counters.dropped += full;
        let online = core.link.is_up();
        let count = parts.len();
        // Until the first connect attempt has ended the agent is starting, not offline: the
        // latest pass waits for that connect, at telemetry.qos like every other (through the
        // outbox at QoS >= 1, bounded as while online, so what the last run left unconfirmed
        // there is not pushed out by the first pass).
        let starting = !online && !self.attempted && self.limits.keep_offline == 0;
        if starting && self.limits.qos > 0 {
            self.push(core, parts, WINDOW.max(count));
        } else if online && self.limits.qos == 0 {
            // Live QoS 0 telemetry is not written to disk; it goes at once, beside any backlog
            // (live data is not starved by a drain).
            for payload in parts {
                self.send_live(core, payload);
            }
        } else if online || self.limits.keep_offline > 0 {
            // QoS >= 1, or kept while offline: through the outbox, bounded by
            // telemetry.buffer_while_offline (and a window's worth, and the whole pass, while
            // online).
            let keep = if online {
                self.limits.keep_offline.max(WINDOW).max(count)
            } else {
                self.limits.keep_offline
            };
            self.push(core, parts, keep);
        } else if !self.attempted {
            let replaced = std::mem::replace(&mut self.first_sample, parts);
            for _ in replaced {
                self.dropped_telemetry(core);
            }
        } else {
            for _ in parts {
                self.dropped_telemetry(core);
            }
        }
    }

    /// Telemetry through the outbox, at most `keep` telemetry messages kept there.
    fn push(&mut self, core: &mut Core, parts: Vec<String>, keep: usize) {
        for payload in parts {
            core.store.send(Request::Push {
                kind: Kind::Telemetry,
                qos: self.limits.qos,
                topic: Arc::clone(&self.topics.telemetry),
                payload: payload.into_bytes(),
                limit: Some(keep),
            });
        }
    }

    fn dropped_telemetry(&mut self, core: &mut Core) {
        core.counters.dropped += 1;
        self.delivery.telemetry_dropped(1);
    }

    /// QoS 0 telemetry straight to Paho, saying how many were dropped since the last one.
    fn send_live(&mut self, core: &mut Core, payload: String) {
        let payload = match self.delivery.telemetry_gap() {
            0 => payload,
            gap => String::from_utf8(crate::telemetry::with_dropped(payload.into_bytes(), gap))
                .expect("ASCII added to UTF-8 stays UTF-8"),
        };
        if core
            .session
            .publish(&self.topics.telemetry, payload.into_bytes(), 0, false)
        {
            core.counters.sent += 1;
            self.delivery.telemetry_sent();
        } else {
            self.dropped_telemetry(core);
        }
    }

    /// The store's answer to a `Take`.
    fn take_over(
        &mut self,
        core: &mut Core,
        generation: u64,
        messages: Vec<Taken>,
        lost: &[Dropped],
    ) {
        self.delivery
            .telemetry_dropped(lost.iter().filter(|d| d.kind == Kind::Telemetry).count() as u64);
        // History a Sparkplug session kept before a reload to plain mode: JSON no Sparkplug
        // host could read on its NDATA topic, and no plain topic of this device.
        let (messages, sparkplug): (Vec<Taken>, Vec<Taken>) = messages
            .into_iter()
            .partition(|taken| !is_sparkplug_history(taken));
        if !sparkplug.is_empty() {
            if !std::mem::replace(&mut self.sparkplug_dropped_logged, true) {
                tracing::warn!(
                    "Sparkplug history kept before the switch to plain topics is dropped."
                );
            }
            for taken in sparkplug {
                core.counters.dropped += 1;
                core.store.send(Request::Dropped(taken.message.id));
            }
        }
        self.delivery.taken(
            generation,
            messages,
            &core.session,
            &core.store,
            &core.events,
        );
    }

    fn confirmation(
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
            Answer::Refused {
                kind,
                topic,
                reason,
            } => {
                core.counters.refused += 1;
                if kind != Kind::Alert {
                    core.counters.dropped += 1;
                }
                // Once per topic: a refusing ACL refuses every message on it.
                if self.refused_topics.insert(topic.to_string()) {
                    let fate = if kind == Kind::Alert {
                        "kept, and sent again after the next connect"
                    } else {
                        "dropped"
                    };
                    tracing::error!(topic = %topic, kind = kind.name(), reason = %reason, "The broker refused a message (MQTT 5); it is {fate}. Check the broker's ACL for this device.");
                }
            }
            Answer::Again => {}
        }
    }

    /// `{prefix}/health`, retained, so a dashboard that starts late sees the last one.
    fn publish_health(&mut self, core: &mut Core) {
        if !core.link.is_up() {
            return;
        }
        let payload = super::status::health(core);
        if core
            .session
            .publish(&self.topics.health, payload.into_bytes(), 0, true)
        {
            core.counters.sent += 1;
        }
    }
}

impl Mode for Plain {
    fn is_sparkplug(&self) -> bool {
        false
    }

    fn profile(&self, _config: &ValidConfig, _identity: &Identity) -> Profile {
        Profile::Plain
    }

    fn alert_sink(&self, _core: &Core) -> AlertSink {
        AlertSink::Outbox {
            topic: Arc::clone(&self.topics.alerts),
        }
    }

    fn log_start(&self, core: &Core) {
        tracing::info!(client_id = %core.identity.client_id, source = %core.identity, broker = %core.session.urls(), "Starting.");
    }

    fn on_connected(&mut self, core: &mut Core, connected: &Connected, _bd_seq: Option<u64>) {
        self.connected(core, connected);
    }

    fn attempt_failed(&mut self) {
        self.attempted = true;
    }

    fn on_pass(&mut self, core: &mut Core, pass: Pass) {
        // A pass of the other mode's sampler cannot come: a mode switch takes a restart.
        if let Pass::Json(parts) = pass {
            self.telemetry(core, parts);
        }
    }

    fn health_tick(&mut self, core: &mut Core) {
        self.publish_health(core);
    }

    fn on_incoming(&mut self, _core: &mut Core, message: Incoming) -> Arrived {
        if let Some(name) = self.command_topic(&message.topic) {
            return Arrived::Command {
                name: name.to_owned(),
                message,
            };
        }
        if let Some(kind) = self.operation_topic(&message.topic) {
            return Arrived::Operation {
                kind: kind.to_owned(),
                message,
            };
        }
        // Its own statuses, which `{prefix}/operations/+` brings back: nothing to do.
        if message.topic.strip_prefix(self.topics.operations.as_str()) == Some("status") {
            return Arrived::Done;
        }
        super::stray::warn(&message.topic);
        Arrived::Done
    }

    fn command_name<'a>(&self, topic: &'a str) -> Option<&'a str> {
        self.command_topic(topic)
    }

    fn responses_topic(&self) -> Option<Arc<str>> {
        Some(Arc::clone(&self.topics.responses))
    }

    fn on_report(&mut self, report: &Report) {
        self.delivery.telemetry_dropped(
            report
                .dropped
                .iter()
                .filter(|dropped| dropped.kind == Kind::Telemetry)
                .count() as u64,
        );
        self.delivery.set_queued(report.queued);
    }

    fn taken(&mut self, core: &mut Core, generation: u64, messages: Vec<Taken>, lost: &[Dropped]) {
        self.take_over(core, generation, messages, lost);
    }

    fn delivered(
        &mut self,
        core: &mut Core,
        generation: u64,
        id: u64,
        confirmation: &Confirmation,
    ) {
        self.confirmation(core, generation, id, confirmation);
    }

    fn pump_at(&self, core: &Core) -> Option<std::time::Instant> {
        (core.link.is_up() && self.delivery.wants_to_send())
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
        _core: &Core,
        config: &ValidConfig,
        identity: &Identity,
        _changed: bool,
        _session: bool,
    ) {
        self.limits = Limits::of(config);
        self.topics = Topics::new(config, identity);
        self.delivery.set_rate(config.config().broker.drain_rate);
    }
}

/// A record kept by Sparkplug's store and forward.
fn is_sparkplug_history(taken: &Taken) -> bool {
    let message = &taken.message;
    message.kind == Kind::Telemetry
        && message
            .topic
            .strip_prefix(crate::sparkplug::NAMESPACE)
            .is_some_and(|rest| rest.starts_with('/'))
        && crate::sparkplug::History::decode(&message.payload).is_ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn only_the_command_topic_itself_names_a_command() {
        let yaml = "broker: { urls: [\"mqtts://a:8883\"], tls: { ca_file: /ca } }\nidentity: { client_id: dev1 }\n";
        let (config, _) = crate::config::load_str(yaml, Path::new("c.yaml")).unwrap();
        let identity = crate::identity::resolve(config.config()).unwrap();
        let plain = Plain::new(&config, &identity);
        for (topic, expected) in [
            ("devices/dev1/commands/fan", Some("fan")),
            ("devices/dev1/commands/ping", Some("ping")),
            // Issue 24: a broker delivered a retained message from another topic; its last
            // level named an actuator.
            ("devices/dev1/settings/fan", None),
            ("devices/dev2/commands/fan", None),
            ("devices/dev1/commands/", None),
            ("devices/dev1/commands/fan/extra", None),
            ("other/devices/dev1/commands/fan", None),
        ] {
            assert_eq!(plain.command_topic(topic), expected, "{topic}");
        }
    }
}
