//! Remote operations (plain mode): long-running work a fleet asks of the device on
//! `{prefix}/operations/{type}` (`software_update`, `config_update`, `log_upload`, `restart`),
//! whose states go out on `{prefix}/operations/status`.
//!
//! This module is pure: a request parsed and checked against the config ([`parse`]), the states
//! an operation goes through ([`State`]), their status messages ([`status_json`]) and the
//! [`engine::Engine`] that keeps every operation's record (busy rules, duplicates, what a restart
//! found unfinished). Time is an argument everywhere. Running an operation is the daemon's
//! (`daemon::operations`) and, for what needs root, the helper's (`helper`): the two speak
//! through the files of [`protocol`].

pub mod engine;
pub mod protocol;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::operations::{debian_package_name, drop_in_matches};
use crate::config::OperationsConfig;

/// Requests larger than this are refused unread: a `config_update` carries at most 64 KiB of
/// content, which JSON escaping and a signature may double.
pub const MAX_REQUEST: usize = 192 * 1024;

/// The most content a `config_update` writes.
pub const MAX_CONTENT: usize = 64 * 1024;

/// What is kept and shown: the running operations and this many finished ones.
pub const RECENT: usize = 10;

/// The kinds of operation, by the name of their topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    SoftwareUpdate,
    ConfigUpdate,
    LogUpload,
    Restart,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::SoftwareUpdate,
        Kind::ConfigUpdate,
        Kind::LogUpload,
        Kind::Restart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::SoftwareUpdate => "software_update",
            Kind::ConfigUpdate => "config_update",
            Kind::LogUpload => "log_upload",
            Kind::Restart => "restart",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// While one of these runs no other operation may start, and it starts only alone: it
    /// restarts the agent (or the device).
    pub fn exclusive(self) -> bool {
        matches!(self, Kind::SoftwareUpdate | Kind::Restart)
    }
}

/// What a restart restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Agent,
    Device,
}

/// What a request asks, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Params {
    SoftwareUpdate {
        package: String,
        version: String,
    },
    ConfigUpdate {
        name: String,
        /// `None` with `delete`.
        content: Option<String>,
    },
    LogUpload {
        since_ts: Option<u64>,
        until_ts: Option<u64>,
        lines: u64,
        priority: Option<u8>,
        grep: Option<String>,
    },
    Restart {
        target: Target,
    },
}

impl Params {
    pub fn kind(&self) -> Kind {
        match self {
            Params::SoftwareUpdate { .. } => Kind::SoftwareUpdate,
            Params::ConfigUpdate { .. } => Kind::ConfigUpdate,
            Params::LogUpload { .. } => Kind::LogUpload,
            Params::Restart { .. } => Kind::Restart,
        }
    }
}

/// A request, parsed and allowed by the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: String,
    pub params: Params,
    /// Refused once it passed (ms), as commands are.
    pub expires_ts: Option<u64>,
}

/// Why a request is refused at once: its `failed` status carries `reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Null when the payload was too broken to carry one.
    pub id: Option<String>,
    /// The type as the topic named it.
    pub kind: String,
    pub reason: String,
}

impl Refusal {
    fn new(id: Option<&str>, kind: &str, reason: impl Into<String>) -> Refusal {
        Refusal {
            id: id.map(str::to_owned),
            kind: kind.to_owned(),
            reason: reason.into(),
        }
    }

    /// Its `failed` status message, stamped `ts`.
    pub fn status_json(&self, ts: u64) -> String {
        let mut status = Map::new();
        status.insert(
            "id".to_owned(),
            self.id.clone().map_or(Value::Null, Value::String),
        );
        status.insert("type".to_owned(), self.kind.clone().into());
        status.insert("state".to_owned(), "failed".into());
        status.insert("ts".to_owned(), ts.into());
        status.insert("reason".to_owned(), self.reason.clone().into());
        Value::Object(status).to_string()
    }
}

/// Parses a request that arrived on `{prefix}/operations/{type_name}`, checked against what
/// `config` enables. Pure.
pub fn parse(
    type_name: &str,
    payload: &[u8],
    config: &OperationsConfig,
) -> Result<Request, Refusal> {
    let shown = type_name.chars().take(64).collect::<String>();
    if payload.len() > MAX_REQUEST {
        return Err(Refusal::new(
            None,
            &shown,
            format!(
                "malformed: the request is {} bytes, more than {MAX_REQUEST}",
                payload.len()
            ),
        ));
    }
    let object: Map<String, Value> = match serde_json::from_slice(payload) {
        Ok(Value::Object(object)) => object,
        Ok(_) => {
            return Err(Refusal::new(
                None,
                &shown,
                "malformed: expected a JSON object such as {\"id\":\"…\"}",
            ))
        }
        Err(err) => {
            return Err(Refusal::new(
                None,
                &shown,
                format!("malformed: not JSON ({err})"),
            ))
        }
    };
    let id = match object.get("id") {
        Some(Value::String(id)) if valid_id(id) => id.clone(),
        Some(Value::String(_)) => {
            return Err(Refusal::new(
                None,
                &shown,
                "malformed: \"id\" must be 1 to 128 printable characters",
            ))
        }
        _ => {
            return Err(Refusal::new(
                None,
                &shown,
                "malformed: missing \"id\" (a string)",
            ))
        }
    };
    let refuse = |reason: String| Refusal::new(Some(&id), &shown, reason);
    let Some(kind) = Kind::from_name(type_name) else {
        return Err(refuse(format!(
            "unknown operation type \"{}\"; one of {}",
            shown.escape_debug(),
            Kind::ALL.map(Kind::name).join(", ")
        )));
    };
    let expires_ts = match object.get("expires_ts") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().ok_or_else(|| {
            refuse("malformed: \"expires_ts\" must be Unix time in ms".to_owned())
        })?),
    };
    let known: &[&str] = match kind {
        Kind::SoftwareUpdate => &["package", "version"],
        Kind::ConfigUpdate => &["name", "content", "delete"],
        Kind::LogUpload => &["since_ts", "until_ts", "lines", "priority", "grep"],
        Kind::Restart => &["target"],
    };
    // The signed envelope's fields (checked before this) and the common ones.
    if let Some(unknown) = object.keys().find(|key| {
        !known.contains(&key.as_str())
            && !["id", "expires_ts", "topic", "iat"].contains(&key.as_str())
    }) {
        return Err(refuse(format!(
            "malformed: unknown parameter \"{}\" of {}; it takes {}",
            unknown.chars().take(64).collect::<String>().escape_debug(),
            kind.name(),
            known.join(", ")
        )));
    }
    let text = |key: &str| -> Result<Option<String>, Refusal> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(refuse(format!("malformed: \"{key}\" must be a string"))),
        }
    };
    let number = |key: &str| -> Result<Option<u64>, Refusal> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .map(Some)
                .ok_or_else(|| refuse(format!("malformed: \"{key}\" must be a whole number"))),
        }
    };
    let not_enabled = || {
        refuse(format!(
            "not enabled: operations.{} is not set in this device's config",
            kind.name()
        ))
    };
    let params = match kind {
        Kind::SoftwareUpdate => {
            let allowed = config.software_update.as_ref().ok_or_else(not_enabled)?;
            let package = text("package")?
                .ok_or_else(|| refuse("malformed: missing \"package\"".to_owned()))?;
            let version = text("version")?
                .ok_or_else(|| refuse("malformed: missing \"version\"".to_owned()))?;
            if !debian_package_name(&package) || !allowed.packages.contains(&package) {
                return Err(refuse(format!(
                    "refused: package \"{}\" is not in operations.software_update.packages ({})",
                    package.chars().take(64).collect::<String>().escape_debug(),
                    allowed.packages.join(", ")
                )));
            }
            if !debian_version(&version) {
                return Err(refuse(format!(
                    "malformed: \"{}\" is not a Debian version",
                    version.chars().take(64).collect::<String>().escape_debug()
                )));
            }
            Params::SoftwareUpdate { package, version }
        }
        Kind::ConfigUpdate => {
            let allowed = config.config_update.as_ref().ok_or_else(not_enabled)?;
            let name =
                text("name")?.ok_or_else(|| refuse("malformed: missing \"name\"".to_owned()))?;
            if !allowed
                .names
                .iter()
                .any(|glob| drop_in_matches(glob, &name))
            {
                return Err(refuse(format!(
                    "refused: \"{}\" is not a drop-in name operations.config_update.names allows ({})",
                    name.chars().take(64).collect::<String>().escape_debug(),
                    allowed.names.join(", ")
                )));
            }
            let delete = match object.get("delete") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(delete)) => *delete,
                Some(_) => {
                    return Err(refuse(
                        "malformed: \"delete\" must be true or false".to_owned(),
                    ))
                }
            };
            let content = text("content")?;
            match (delete, content) {
                (true, None) => Params::ConfigUpdate {
                    name,
                    content: None,
                },
                (true, Some(_)) => {
                    return Err(refuse(
                        "malformed: \"delete\":true takes no \"content\"".to_owned(),
                    ))
                }
                (false, None) => {
                    return Err(refuse(
                        "malformed: missing \"content\" (or \"delete\":true)".to_owned(),
                    ))
                }
                (false, Some(content)) if content.len() > MAX_CONTENT => {
                    return Err(refuse(format!(
                        "refused: the content is {} bytes, more than {MAX_CONTENT}",
                        content.len()
                    )))
                }
                (false, Some(content)) => Params::ConfigUpdate {
                    name,
                    content: Some(content),
                },
            }
        }
        Kind::LogUpload => {
            let allowed = config.log_upload.as_ref().ok_or_else(not_enabled)?;
            let lines = number("lines")?.unwrap_or(allowed.max_lines);
            if lines == 0 || lines > allowed.max_lines {
                return Err(refuse(format!(
                    "refused: \"lines\" must be 1 to {} (operations.log_upload.max_lines), found {lines}",
                    allowed.max_lines
                )));
            }
            let priority = match number("priority")? {
                Some(priority) if priority > 7 => {
                    return Err(refuse(format!(
                        "malformed: \"priority\" must be 0 (emerg) to 7 (debug), found {priority}"
                    )))
                }
                priority => priority.map(|p| p as u8),
            };
            let grep = text("grep")?;
            if grep.as_ref().is_some_and(|grep| grep.len() > 256) {
                return Err(refuse(
                    "malformed: \"grep\" is longer than 256 characters".to_owned(),
                ));
            }
            let since_ts = number("since_ts")?;
            let until_ts = number("until_ts")?;
            if let (Some(since), Some(until)) = (since_ts, until_ts) {
                if since > until {
                    return Err(refuse(format!(
                        "malformed: \"since_ts\" {since} is after \"until_ts\" {until}"
                    )));
                }
            }
            Params::LogUpload {
                since_ts,
                until_ts,
                lines,
                priority,
                grep,
            }
        }
        Kind::Restart => {
            let allowed = config.restart.as_ref().ok_or_else(not_enabled)?;
            let target =
                match text("target")?.as_deref() {
                    None | Some("agent") => Target::Agent,
                    Some("device") if allowed.device => Target::Device,
                    Some("device") => return Err(refuse(
                        "refused: restarting the device is not enabled (operations.restart.device)"
                            .to_owned(),
                    )),
                    Some(other) => {
                        return Err(refuse(format!(
                            "malformed: \"target\" must be \"agent\" or \"device\", found \"{}\"",
                            other.chars().take(32).collect::<String>().escape_debug()
                        )))
                    }
                };
            Params::Restart { target }
        }
    };
    Ok(Request {
        id,
        params,
        expires_ts,
    })
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(char::is_control)
}

/// A Debian version: an optional epoch, upstream version and revision, of the characters Debian
/// policy allows (5.6.12), starting with a digit.
pub fn debian_version(version: &str) -> bool {
    let upstream = version.split_once(':').map_or(version, |(epoch, rest)| {
        if epoch.chars().all(|c| c.is_ascii_digit()) && !epoch.is_empty() {
            rest
        } else {
            ""
        }
    });
    !upstream.is_empty()
        && version.len() <= 64
        && upstream.starts_with(|c: char| c.is_ascii_digit())
        && upstream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '~'))
}

/// The upstream part of a Debian version (no epoch, no revision): what `fieldagent --version`
/// and its online status say.
pub fn upstream_version(version: &str) -> &str {
    let version = version.split_once(':').map_or(version, |(_, rest)| rest);
    version
        .rsplit_once('-')
        .map_or(version, |(upstream, _)| upstream)
}

/// Where an operation stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Accepted,
    Executing { step: String },
    Successful { result: Value },
    Failed { reason: String },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Accepted => "accepted",
            State::Executing { .. } => "executing",
            State::Successful { .. } => "successful",
            State::Failed { .. } => "failed",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, State::Successful { .. } | State::Failed { .. })
    }
}

/// What the agent that accepted an operation knew, which proves an outcome after a restart:
/// its own start time, the kernel's boot id, and its version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Before {
    pub started_ts: u64,
    pub boot_id: String,
    pub version: String,
}

/// One operation's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub params: Params,
    #[serde(flatten)]
    pub state: State,
    /// When it entered its state (Unix ms).
    pub ts: u64,
    /// When it was accepted (Unix ms).
    pub accepted_ts: u64,
    pub before: Before,
    /// The status of its current state is in the outbox (false from the moment the state is
    /// recorded until the store has pushed it; a start finds it false after a crash and pushes it
    /// again, the same message).
    #[serde(default)]
    pub published: bool,
}

impl Operation {
    pub fn kind(&self) -> Kind {
        self.params.kind()
    }
}

/// The status message of `operation`'s current state; `duplicate` when it answers a request
/// with an id already seen.
pub fn status_json(operation: &Operation, duplicate: bool) -> String {
    let mut status = Map::new();
    status.insert("id".to_owned(), operation.id.clone().into());
    status.insert("type".to_owned(), operation.kind().name().into());
    status.insert("state".to_owned(), operation.state.name().into());
    status.insert("ts".to_owned(), operation.ts.into());
    match &operation.state {
        State::Executing { step } => {
            status.insert("step".to_owned(), step.clone().into());
        }
        State::Successful { result } => {
            status.insert("result".to_owned(), result.clone());
        }
        State::Failed { reason } => {
            status.insert("reason".to_owned(), reason.clone().into());
        }
        State::Accepted => {}
    }
    if duplicate {
        status.insert("duplicate".to_owned(), true.into());
    }
    Value::Object(status).to_string()
}

/// What `status --json` and health show of an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub state: String,
    pub ts: u64,
}

impl From<&Operation> for Summary {
    fn from(operation: &Operation) -> Summary {
        Summary {
            id: operation.id.clone(),
            kind: operation.kind().name().to_owned(),
            state: operation.state.name().to_owned(),
            ts: operation.ts,
        }
    }
}

#[cfg(test)]
mod tests;
