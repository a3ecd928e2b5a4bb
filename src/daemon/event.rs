//! The closed set of events the daemon's loop dispatches: what the parts around it report. It
//! imports nothing of the daemon, so every part can name it without a circle.

use crate::alerts::{AlertEvent, SavedState};
use crate::commands::Response;
use crate::config::ValidConfig;
use crate::identity::Identity;
use crate::mqtt::{Closer, Confirmation, Connected, MqttError, Secret};
use crate::outbox::{Dropped, Outgoing};

/// Results of the work that runs apart from the loop, and what the store reports. Paho's
/// connection-lost signal, incoming messages and the sampler's passes have channels of their
/// own (each with its own rule when full).
#[derive(Debug)]
pub enum Event {
    /// The store finished a batch, or answered a `Take`.
    Store(StoreEvent),
    /// A connect attempt ended; `closer` ends the connection it made if it is no longer wanted.
    Connect {
        attempt: u64,
        result: Result<Connected, Failed>,
        closer: Closer,
        /// Sparkplug: the bdSeq of this session (its NDEATH is the will).
        bd_seq: Option<u64>,
    },
    /// What connect attempt `attempt` needs is ready: the password read from
    /// `broker.password_file` (or why it could not be), and in Sparkplug mode the bdSeq, saved.
    Prepared {
        attempt: u64,
        password: Result<Option<Secret>, MqttError>,
        bd_seq: Option<u64>,
    },
    /// Paho's answer for one outbox message.
    Delivered {
        generation: u64,
        id: u64,
        confirmation: Confirmation,
    },
    /// A command's answer; `record` when it ran (the ledger keeps its answer); `finished` when
    /// its actuator is free again (false after a timeout: `Finished` follows).
    Answered {
        key: String,
        response: Response,
        record: bool,
        finished: bool,
    },
    /// A timed-out command's job has returned.
    Finished { key: String },
    /// Sparkplug: an alert raised or cleared (plain mode's go through the store).
    Alert(AlertEvent),
    /// Sparkplug: the alert state after the pass whose `Alert`s came just before it, saved once
    /// what the loop kept of those events is on disk.
    AlertState(Box<SaveAlertState>),
    /// A reload's new config, or why it was refused.
    Reloaded(Box<Result<Reloaded, String>>),
    /// A certificate renewal was checked and copied in, or refused.
    Renewed(Result<(), String>),
    /// A session we ended has disconnected: the next connect may start.
    SessionClosed,
    /// What an operation's background work found (the helper's files, a log upload's chunks).
    Operations(OperationEvent),
    /// Sparkplug: an NCMD write ended; `value` is what the actuator holds now (`None` when it
    /// cannot be read); `finished` when its actuator is free again (false after a timeout:
    /// `Finished` follows).
    Written {
        actuator: String,
        result: Result<String, String>,
        value: Option<String>,
        finished: bool,
    },
}

/// What the work around operations reports (see `daemon::operations`).
#[derive(Debug)]
pub enum OperationEvent {
    /// The helper's files of each running operation: its result, if any, and whether its request
    /// still waits to be taken.
    Looked(
        Vec<(
            String,
            Option<crate::operations::protocol::HelperResult>,
            bool,
        )>,
    ),
    /// The operation cannot go on.
    Failed { id: String, reason: String },
    /// A `config_update`'s change checked against the config (or why it is refused).
    Checked {
        id: String,
        result: Result<(), String>,
    },
    /// A log upload's chunks are made (or why not): they go out before its terminal state.
    Uploaded {
        id: String,
        chunks: Result<usize, String>,
        lines: u64,
        messages: Vec<(std::sync::Arc<str>, Vec<u8>)>,
    },
}

/// A reload taken: the new config and identity, and, when `broker.tls` changed, the agent's new
/// copies of the key pair (`None` inside when there is none to keep).
#[derive(Debug)]
pub struct Reloaded {
    pub config: ValidConfig,
    pub identity: Identity,
    /// The keys requests must be signed with, read again.
    pub keys: Option<crate::signed::Keys>,
    pub key_pair: Option<Option<crate::mqtt::tls::KeyPairStore>>,
}

/// Why a connect attempt failed, with the diagnosis of a TLS refusal when one was made.
#[derive(Debug)]
pub struct Failed {
    pub error: MqttError,
    pub diagnosis: Option<String>,
}

/// What the store reports to the event loop.
#[derive(Debug)]
pub enum StoreEvent {
    /// After every batch of requests.
    Report(Report),
    /// The answer to a `Take`.
    Taken {
        generation: u64,
        messages: Vec<Taken>,
        /// Queued messages whose payload could not be read back.
        lost: Vec<Dropped>,
    },
    /// The thread has ended after a `Stop`; everything before it is on disk.
    Stopped,
}

/// A message taken for sending, with what the loop logs about an alert.
#[derive(Debug)]
pub struct Taken {
    pub message: Outgoing,
    /// For an alert made in this run: its name and when its sampling pass started (Unix µs).
    pub alert: Option<(String, u64)>,
}

/// The outbox as it stands after a batch.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Queued and not in flight.
    pub queued: usize,
    /// Queued per kind (alerts, responses, telemetry), in flight included.
    pub per_kind: [usize; 3],
    /// False while the outbox is memory-only.
    pub durable: bool,
    /// Pushed out by the bound in this batch.
    pub dropped: Vec<Dropped>,
    /// Refused in this batch as larger than the outbox stores (dropped, and logged by it).
    pub too_large: usize,
    /// When the oldest queued message was stored (Unix ms), if any is queued.
    pub oldest_ms: Option<u64>,
}

/// An alert state to save, and the alerts whose events changed it.
#[derive(Debug)]
pub struct SaveAlertState {
    pub state: SavedState,
    pub path: std::path::PathBuf,
    pub names: Vec<String>,
}
