//! The two modes of the daemon's loop, plain topics ([`super::plain::Plain`]) and a Sparkplug B
//! edge node ([`super::edge::Edge`]), asked through one trait instead of a `match` at every
//! call. What only one mode does has a default that does nothing, so the loop reads the same
//! for both.
//!
//! The operation engine (plain mode only, like commands) meets the loop here too: requests
//! arrive through [`Mode::on_incoming`] as [`Arrived::Operation`], and their states leave through
//! the outbox like command answers (`daemon::operations`).

use std::sync::Arc;

use super::event::{Report, Taken};
use super::sampler::{AlertSink, Pass};
use super::Core;
use crate::alerts::AlertEvent;
use crate::config::ValidConfig;
use crate::identity::Identity;
use crate::mqtt::{Confirmation, Connected, Incoming, Profile};
use crate::outbox::Dropped;

/// What an incoming message asks of the loop.
pub(crate) enum Arrived {
    /// A command on `{prefix}/commands/{name}`, for the executor.
    Command { name: String, message: Incoming },
    /// The actuator writes of a Sparkplug NCMD, in order, for the executor.
    Writes(Vec<(String, String)>),
    /// An operation request on `{prefix}/operations/{kind}`, for the operation engine.
    Operation { kind: String, message: Incoming },
    /// Handled by the mode, or ignored (logged once per topic).
    Done,
}

/// What the loop asks of its mode.
pub(crate) trait Mode {
    /// Sparkplug B: switching mode takes a restart.
    fn is_sparkplug(&self) -> bool;

    /// The session's profile for `config` as `identity` (a reload asks for the new one).
    fn profile(&self, config: &ValidConfig, identity: &Identity) -> Profile;

    /// Where the sampler hands alert events.
    fn alert_sink(&self, core: &Core) -> AlertSink;

    /// The `Starting.` line.
    fn log_start(&self, core: &Core);

    /// Sparkplug: the bdSeq of the last session (the next connect saves the one after it).
    fn bd_seq(&self) -> Option<u64> {
        None
    }

    /// Just before attempt `bd_seq`'s connect: Sparkplug sets the will (NDEATH) it carries.
    fn before_attempt(&self, _core: &mut Core, _bd_seq: Option<u64>) {}

    fn on_connected(&mut self, core: &mut Core, connected: &Connected, bd_seq: Option<u64>);

    /// A connect attempt ended without a connection.
    fn attempt_failed(&mut self) {}

    /// The session ended (lost, or closed by the agent): Sparkplug needs a new birth.
    fn ended(&mut self) {}

    /// Whether a reconnect the agent makes (a reload, a renewed certificate) says goodbye first
    /// (Sparkplug: NDEATH, so the host sees the session end).
    fn goodbye_on_reconnect(&self) -> bool {
        false
    }

    fn on_pass(&mut self, core: &mut Core, pass: Pass);

    /// Every health interval: plain publishes `{prefix}/health`, Sparkplug its `Node Info`.
    fn health_tick(&mut self, core: &mut Core);

    fn on_incoming(&mut self, core: &mut Core, message: Incoming) -> Arrived;

    /// During the stop: the name of the command `topic` carries, to refuse it.
    fn command_name<'a>(&self, _topic: &'a str) -> Option<&'a str> {
        None
    }

    /// Where command answers go (plain mode).
    fn responses_topic(&self) -> Option<Arc<str>> {
        None
    }

    /// Sparkplug: an alert raised or cleared (plain mode's go through the store).
    fn on_alert(&mut self, _core: &mut Core, _event: AlertEvent) {}

    /// Sparkplug: an NCMD write ended; the value the actuator holds now, if it can be read.
    fn on_written(
        &mut self,
        _core: &mut Core,
        _actuator: &str,
        _result: Result<String, String>,
        _value: Option<String>,
    ) {
    }

    /// The outbox as the store reported it, after a batch.
    fn on_report(&mut self, _report: &Report) {}

    /// Plain: messages the store handed over for sending.
    fn taken(
        &mut self,
        _core: &mut Core,
        _generation: u64,
        _messages: Vec<Taken>,
        _lost: &[Dropped],
    ) {
    }

    /// Plain: Paho's answer for one outbox message.
    fn delivered(
        &mut self,
        _core: &mut Core,
        _generation: u64,
        _id: u64,
        _confirmation: &Confirmation,
    ) {
    }

    /// Plain: when the delivery may ask the store for more.
    fn pump_at(&self, _core: &Core) -> Option<std::time::Instant> {
        None
    }

    /// Plain: asks the store for more to send.
    fn pump(&mut self, _core: &mut Core) {}

    /// Outbox messages handed to Paho and not yet confirmed.
    fn inflight(&self) -> usize {
        0
    }

    /// A reload: the new config (`sampling` or `session` changed as `Changes` says).
    fn reconfigure(
        &mut self,
        core: &Core,
        config: &ValidConfig,
        identity: &Identity,
        changed: bool,
        session: bool,
    );

    /// Whether a reload that changed anything restarts sampling (Sparkplug: its metric set is
    /// the sampler's, declared anew by a birth).
    fn resample_on_any_change(&self) -> bool {
        false
    }
}
