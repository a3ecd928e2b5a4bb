//! The operation engine in the loop (plain mode): requests from `{prefix}/operations/{type}`,
//! their states through the store (the record saved, then the status pushed: a crash between the
//! two pushes the same status again at the next start, never a different one), and the work
//! itself handed to the privileged helper through the files of `operations::protocol`.
//!
//! The loop never waits here: reading and writing the helper's files runs on the blocking pool
//! and comes back as `Event::Operations`. While an operation runs, each sampling pass looks at the
//! helper's results (one task at a time). A request the helper does not take within
//! [`TAKE_TIMEOUT`], or an operation it stops reporting on for [`STALLED`], ends `failed` with
//! that reason, so nothing stays `executing` for ever.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::event::{Event, OperationEvent};
use super::store::Request;
use super::Daemon;
use crate::mqtt::Incoming;
use crate::operations::engine::{Arrival, Engine, Ledger};
use crate::operations::protocol::{self, HelperRequest, HelperResult};
use crate::operations::{self, Before, Kind, Operation, Params, State, Target};

/// The record of every operation, in `state_dir`.
pub const FILE: &str = "operations.json";

/// How long the helper has to take a request (its path unit starts it at once).
pub const TAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an operation may go without a word from the helper before it ends `failed`: an
/// update waits out `confirm_s` twice (the new version, then the old one after a rollback) and
/// apt's downloads, hence the margin.
pub fn stalled(kind: Kind, confirm_s: f64) -> Duration {
    match kind {
        Kind::SoftwareUpdate => {
            Duration::from_secs_f64(2.0 * confirm_s) + Duration::from_secs(1800)
        }
        Kind::ConfigUpdate => Duration::from_secs_f64(confirm_s) + Duration::from_secs(600),
        _ => Duration::from_secs(600),
    }
}

/// The largest chunk of a log upload, in bytes of its message.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Messages to publish, in order: (topic, payload).
pub type Messages = Vec<(Arc<str>, Vec<u8>)>;

/// The daemon's side of the operations.
pub(crate) struct Operations {
    engine: Engine,
    /// `state_dir/operations.json`.
    path: PathBuf,
    state_dir: PathBuf,
    /// `{prefix}/operations/status`.
    status_topic: Arc<str>,
    /// `{prefix}/operations/log/`.
    log_prefix: String,
    /// What this agent knows of itself, which a later start proves an outcome by.
    before: Before,
    /// A look at the helper's files is under way.
    polling: bool,
    /// When this process last saw each running operation move (monotonic), for the bounds.
    progress: HashMap<String, Instant>,
    /// Log uploads whose chunks are being sent.
    uploading: Vec<String>,
    /// This system installs packages with apt (not an image built by Yocto).
    has_apt: bool,
    /// A state changed since `status.json` was last written.
    pub changed: bool,
    /// The `config_update` whose change the running (or next) reload applies.
    pub reload_for: Option<String>,
    /// `config_update`s waiting for a connection made with their change, until when.
    pub confirming: HashMap<String, Instant>,
}

impl Operations {
    /// The record in `state_dir` (a damaged one is set aside: `state::load`). Blocking; at start.
    pub fn load(state_dir: &Path, prefix: &str, before: Before) -> Operations {
        let path = state_dir.join(FILE);
        let ledger: Ledger = crate::state::load(&path);
        Operations {
            engine: Engine::new(ledger),
            path,
            state_dir: state_dir.to_owned(),
            status_topic: Arc::from(format!("{prefix}/operations/status")),
            log_prefix: format!("{prefix}/operations/log/"),
            before,
            polling: false,
            progress: HashMap::new(),
            uploading: Vec::new(),
            has_apt: Path::new("/usr/bin/apt-get").exists() && Path::new("/usr/bin/dpkg").exists(),
            changed: false,
            reload_for: None,
            confirming: HashMap::new(),
        }
    }

    /// A new topic prefix after a reload.
    pub fn set_prefix(&mut self, prefix: &str) {
        self.status_topic = Arc::from(format!("{prefix}/operations/status"));
        self.log_prefix = format!("{prefix}/operations/log/");
    }

    pub fn summaries(&self) -> Vec<operations::Summary> {
        self.engine.summaries()
    }

    pub fn is_running(&self) -> bool {
        self.engine.running().next().is_some()
    }

    pub fn get(&self, id: &str) -> Option<&Operation> {
        self.engine.get(id)
    }

    /// The operations that have not ended, oldest first.
    pub fn running(&self) -> impl Iterator<Item = &Operation> {
        self.engine.running()
    }

    /// A reload for operation `id` is asked for or running.
    pub fn reloading_for(&self, id: &str) -> bool {
        self.reload_for.as_deref() == Some(id)
    }

    /// When this agent started (Unix ms), as operations record it.
    pub fn started_ts(&self) -> u64 {
        self.before.started_ts
    }

    /// This boot's id (read once at start).
    pub fn boot_id(&self) -> &str {
        &self.before.boot_id
    }
}

impl Daemon {
    /// At start, before the first connect: what the agent before this one left unfinished is
    /// decided or resumed, and every state whose status may not have reached the outbox is
    /// pushed again.
    pub(super) fn resume_operations(&mut self) {
        let now = crate::model::now_ms();
        let before = self.core.operations.before.clone();
        let state_dir = self.core.operations.state_dir.clone();
        let changed = self
            .core
            .operations
            .engine
            .resume(now, |op| match &op.params {
                // Proven by the restart itself; successful once online (`operations_connected`).
                Params::Restart {
                    target: Target::Agent,
                } if op.before.started_ts != before.started_ts => Some(State::Executing {
                    step: "confirming".to_owned(),
                }),
                Params::Restart {
                    target: Target::Device,
                } if op.before.boot_id != before.boot_id => Some(State::Executing {
                    step: "confirming".to_owned(),
                }),
                // The helper keeps nothing of a log upload: taken (its request gone) and
                // without a result, it was cut short with the agent.
                Params::LogUpload { .. }
                    if !protocol::request_path(&state_dir, &op.id).exists()
                        && !protocol::result_path(&state_dir, &op.id).exists() =>
                {
                    None
                }
                // The helper decides these; it finishes or undoes an interrupted update at boot.
                _ => Some(op.state.clone()),
            });
        let again = self.core.operations.engine.unpublished();
        let mut all = changed;
        for op in again {
            if !all.iter().any(|changed| changed.id == op.id) {
                all.push(op);
            }
        }
        for op in self.core.operations.engine.running() {
            self.core
                .operations
                .progress
                .insert(op.id.clone(), Instant::now());
        }
        self.resume_config_updates();
        if !all.is_empty() {
            self.record_operations(all, Vec::new());
        }
    }

    /// A message on `{prefix}/operations/{kind}`.
    pub(super) fn on_operation(&mut self, kind: &str, message: Incoming) {
        let now = crate::model::now_ms();
        let config = self.core.config.config();
        let request = match operations::parse(kind, &message.payload, &config.operations) {
            Ok(request) => request,
            Err(refusal) => {
                tracing::warn!(operation = %kind.escape_debug(), id = ?refusal.id, reason = %refusal.reason, "Operation refused.");
                return self.publish_operation_answer(refusal.status_json(now));
            }
        };
        let refuse = |reason: String| operations::Refusal {
            id: Some(request.id.clone()),
            kind: kind.to_owned(),
            reason,
        };
        if message.retained {
            let refusal = refuse("refused: the request was published with the retain flag (replayed at every subscribe); publish requests without it".to_owned());
            return self.publish_operation_answer(refusal.status_json(now));
        }
        if let Err(why) = super::execute::expiry(request.expires_ts, now, crate::clock::synced(now))
        {
            return self.publish_operation_answer(refuse(why).status_json(now));
        }
        if request.params.kind() == Kind::SoftwareUpdate && !self.core.operations.has_apt {
            let why = "refused: this system has no apt (an image built with Yocto or similar updates as a whole image, with RAUC, SWUpdate or Mender); nothing was changed".to_owned();
            return self.publish_operation_answer(refuse(why).status_json(now));
        }
        let before = self.core.operations.before.clone();
        match self.core.operations.engine.arrive(request, now, before) {
            Arrival::Answered(status) => self.publish_operation_answer(status),
            Arrival::Accepted(op) => {
                tracing::info!(operation = op.kind().name(), id = %op.id, "Operation accepted.");
                self.core
                    .operations
                    .progress
                    .insert(op.id.clone(), Instant::now());
                self.record_operations(vec![op.clone()], Vec::new());
                if op.kind() == Kind::ConfigUpdate {
                    self.check_config_update(op);
                } else {
                    self.hand_to_helper(op);
                }
            }
        }
    }

    /// A request the signature check refused: `failed` with its reason, not recorded.
    pub(super) fn refuse_operation(&mut self, kind: &str, refused: crate::signed::Refused) {
        let refusal = operations::Refusal {
            id: refused.id,
            kind: kind.chars().take(64).collect(),
            reason: refused.reason,
        };
        self.publish_operation_answer(refusal.status_json(crate::model::now_ms()));
    }

    /// An answer that is not recorded (a refusal, a duplicate): into the outbox like a command's.
    fn publish_operation_answer(&mut self, status: String) {
        self.core.store.send(Request::Push {
            kind: crate::outbox::Kind::Response,
            qos: 1,
            topic: Arc::clone(&self.core.operations.status_topic),
            payload: status.into_bytes(),
            limit: None,
        });
    }

    /// `changed` operations' new states: the record saved, then their statuses (after `before`,
    /// messages that must precede them, such as a log upload's chunks) pushed.
    pub(super) fn record_operations(&mut self, changed: Vec<Operation>, before: Messages) {
        let ops = &mut self.core.operations;
        ops.changed = true;
        let mut messages = before;
        let mut ids = Vec::new();
        for op in &changed {
            messages.push((
                Arc::clone(&ops.status_topic),
                operations::status_json(op, false).into_bytes(),
            ));
            ids.push(op.id.clone());
            if op.state.is_terminal() {
                tracing::info!(operation = op.kind().name(), id = %op.id, state = op.state.name(), reason = ?match &op.state { State::Failed { reason } => Some(reason.as_str()), _ => None }, "Operation ended.");
                ops.progress.remove(&op.id);
            }
        }
        self.core.store.send(Request::Operations {
            ledger: ops.engine.ledger().clone(),
            path: ops.path.clone(),
            messages,
            published: ids.clone(),
        });
        for id in &ids {
            ops.engine.published(id);
        }
        let finished: Vec<String> = changed
            .iter()
            .filter(|op| op.state.is_terminal())
            .map(|op| op.id.clone())
            .collect();
        if !finished.is_empty() {
            let state_dir = ops.state_dir.clone();
            // The helper's files of ended operations go; the record stays.
            tokio::task::spawn_blocking(move || {
                for id in finished {
                    for path in [
                        protocol::result_path(&state_dir, &id),
                        protocol::request_path(&state_dir, &id),
                        protocol::log_path(&state_dir, &id),
                    ] {
                        let _ = std::fs::remove_file(path);
                    }
                }
            });
        }
    }

    /// Operation `id` enters `state` now (nothing when that changes nothing).
    pub(super) fn move_operation(&mut self, id: &str, state: State) {
        let now = crate::model::now_ms();
        if let Some(op) = self.core.operations.engine.set(id, state, now) {
            self.core
                .operations
                .progress
                .insert(op.id.clone(), Instant::now());
            self.record_operations(vec![op], Vec::new());
        }
    }

    /// Writes the request for the helper (on the blocking pool).
    pub(super) fn hand_to_helper(&mut self, op: Operation) {
        self.write_request(HelperRequest {
            id: op.id.clone(),
            params: op.params.clone(),
            accepted_ts: op.accepted_ts,
            undo: false,
        });
    }

    /// Writes `request` into `state_dir/requests/` (on the blocking pool); the operation fails
    /// when it cannot be written.
    pub(super) fn write_request(&mut self, request: HelperRequest) {
        let state_dir = self.core.operations.state_dir.clone();
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let id = request.id.clone();
            let written = tokio::task::spawn_blocking(move || {
                protocol::hand_over(&state_dir, &request).map_err(|err| {
                    format!(
                        "cannot hand the request to the helper ({}): {err}",
                        state_dir.join(protocol::REQUESTS).display()
                    )
                })
            })
            .await
            .unwrap_or_else(|_| Err("internal error while handing the request over".to_owned()));
            if let Err(reason) = written {
                let _ = events
                    .send(Event::Operations(OperationEvent::Failed { id, reason }))
                    .await;
            }
        });
    }

    /// At each pass while an operation runs: a look at the helper's files (one at a time).
    pub(super) fn poll_operations(&mut self) {
        self.check_config_deadlines();
        let ops = &mut self.core.operations;
        if ops.polling || !ops.is_running() {
            return;
        }
        ops.polling = true;
        let state_dir = ops.state_dir.clone();
        let ids: Vec<String> = ops.engine.running().map(|op| op.id.clone()).collect();
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let looked = tokio::task::spawn_blocking(move || {
                ids.into_iter()
                    .map(|id| {
                        let result = std::fs::read(protocol::result_path(&state_dir, &id))
                            .ok()
                            .and_then(|bytes| serde_json::from_slice::<HelperResult>(&bytes).ok())
                            .filter(|result| result.id == id);
                        let waiting = protocol::request_path(&state_dir, &id).exists();
                        (id, result, waiting)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let _ = events
                .send(Event::Operations(OperationEvent::Looked(looked)))
                .await;
        });
    }

    pub(super) fn on_operation_event(&mut self, event: OperationEvent) {
        match event {
            OperationEvent::Looked(looked) => {
                self.core.operations.polling = false;
                for (id, result, waiting) in looked {
                    self.on_helper(&id, result, waiting);
                }
            }
            OperationEvent::Failed { id, reason } => {
                self.move_operation(&id, State::Failed { reason });
            }
            OperationEvent::Checked { id, result } => self.on_config_checked(&id, result),
            OperationEvent::Uploaded {
                id,
                chunks,
                lines,
                messages,
            } => {
                self.core.operations.uploading.retain(|up| *up != id);
                let now = crate::model::now_ms();
                let state = match chunks {
                    Ok(chunks) => State::Successful {
                        result: json!({ "chunks": chunks, "lines": lines }),
                    },
                    Err(reason) => State::Failed { reason },
                };
                if let Some(op) = self.core.operations.engine.set(&id, state, now) {
                    self.record_operations(vec![op], messages);
                }
            }
        }
    }

    /// What the helper's files say of running operation `id`.
    fn on_helper(&mut self, id: &str, result: Option<HelperResult>, waiting: bool) {
        let Some(op) = self.core.operations.engine.get(id).cloned() else {
            return;
        };
        let seen = self
            .core
            .operations
            .progress
            .get(id)
            .copied()
            .unwrap_or_else(Instant::now);
        match result {
            None if waiting && seen.elapsed() >= TAKE_TIMEOUT => {
                let state_dir = self.core.operations.state_dir.clone();
                let path = protocol::request_path(&state_dir, id);
                tokio::task::spawn_blocking(move || std::fs::remove_file(path));
                self.move_operation(id, State::Failed {
                    reason: format!("the helper did not take the request within {} s (is fieldagent-helper.path active? `systemctl status fieldagent-helper.path`)", TAKE_TIMEOUT.as_secs()),
                });
            }
            None => self.check_stalled(&op, seen),
            Some(result) => match (&op.params, result.state) {
                // The lines are ready: the agent sends them, then says it is done.
                (Params::LogUpload { .. }, State::Successful { result }) => {
                    if !self.core.operations.uploading.contains(&op.id) {
                        self.core.operations.uploading.push(op.id.clone());
                        self.move_operation(
                            id,
                            State::Executing {
                                step: "uploading".to_owned(),
                            },
                        );
                        self.send_log(&op, result["lines"].as_u64().unwrap_or(0));
                    }
                }
                // A restart the helper started: successful once the agent is online again
                // (a later start proves it); only its failure is news here.
                (Params::Restart { .. }, State::Failed { reason }) => {
                    self.move_operation(id, State::Failed { reason })
                }
                (Params::Restart { .. }, _) => self.check_stalled(&op, seen),
                (Params::ConfigUpdate { .. }, state) => {
                    self.on_config_result(&op, state);
                    let op = self.core.operations.engine.get(id).cloned();
                    if let Some(op) = op.filter(|op| !op.state.is_terminal()) {
                        self.check_stalled(&op, seen);
                    }
                }
                (_, state) => {
                    if state == op.state {
                        self.check_stalled(&op, seen);
                    } else {
                        self.move_operation(id, state);
                    }
                }
            },
        }
    }

    fn check_stalled(&mut self, op: &Operation, seen: Instant) {
        let confirm_s = match &op.params {
            Params::SoftwareUpdate { .. } => self
                .core
                .config
                .config()
                .operations
                .software_update
                .as_ref()
                .map_or(120.0, |update| update.confirm_s),
            Params::ConfigUpdate { .. } => self
                .core
                .config
                .config()
                .operations
                .config_update
                .as_ref()
                .map_or(60.0, |update| update.confirm_s),
            _ => 0.0,
        };
        let limit = stalled(op.kind(), confirm_s);
        if seen.elapsed() >= limit && !self.core.operations.uploading.contains(&op.id) {
            self.move_operation(
                &op.id,
                State::Failed {
                    reason: format!(
                        "the helper said nothing of it for {} s; its outcome is unknown",
                        limit.as_secs()
                    ),
                },
            );
        }
    }

    /// Connected: a restart this agent came back from is successful now, with its proof.
    pub(super) fn operations_connected(&mut self) {
        self.config_connected();
        let before = self.core.operations.before.clone();
        let confirming: Vec<(String, Target)> = self
            .core
            .operations
            .engine
            .running()
            .filter_map(|op| match (&op.params, &op.state) {
                (Params::Restart { target }, State::Executing { step }) if step == "confirming" => {
                    Some((op.id.clone(), *target))
                }
                _ => None,
            })
            .collect();
        for (id, target) in confirming {
            let result = match target {
                Target::Agent => {
                    json!({ "started_ts": before.started_ts, "boot_id": before.boot_id })
                }
                Target::Device => {
                    json!({ "boot_id": before.boot_id, "started_ts": before.started_ts })
                }
            };
            self.move_operation(&id, State::Successful { result });
        }
    }

    /// Reads a log upload's lines from the helper's file and makes its chunks (each at most
    /// [`CHUNK_BYTES`], in order), on the blocking pool; they go to the outbox before the
    /// terminal state (`OperationEvent::Uploaded`).
    fn send_log(&mut self, op: &Operation, lines: u64) {
        let path = protocol::log_path(&self.core.operations.state_dir, &op.id);
        let topic: Arc<str> = Arc::from(format!("{}{}", self.core.operations.log_prefix, op.id));
        let id = op.id.clone();
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let task_id = id.clone();
            let done = tokio::task::spawn_blocking(move || chunks(&path, &task_id, &topic))
                .await
                .unwrap_or_else(|_| Err("internal error while reading the lines".to_owned()));
            let (chunks, messages) = match done {
                Ok((count, messages)) => (Ok(count), messages),
                Err(reason) => (Err(reason), Vec::new()),
            };
            let _ = events
                .send(Event::Operations(OperationEvent::Uploaded {
                    id,
                    chunks,
                    lines,
                    messages,
                }))
                .await;
        });
    }
}

/// The chunks of the log file at `path` (one JSON object a line, as the helper wrote them), as
/// messages on `topic`: `{"id","chunk":N,"last":…,"lines":[…]}`, each at most [`CHUNK_BYTES`].
/// The file is read a line at a time; its size is bounded by `log_upload.max_lines`.
pub fn chunks(path: &Path, id: &str, topic: &Arc<str>) -> Result<(usize, Messages), String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|err| {
        format!(
            "cannot read the lines the helper wrote ({}): {err}",
            path.display()
        )
    })?;
    let reader = std::io::BufReader::new(file);
    let id_json = serde_json::to_string(id).expect("a string serializes");
    let head = |chunk: usize| format!("{{\"id\":{id_json},\"chunk\":{chunk},\"last\":");
    let mut messages: Messages = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut size = 0;
    let close = |lines: &[String], chunk: usize, last: bool| -> Vec<u8> {
        format!("{}{last},\"lines\":[{}]}}", head(chunk), lines.join(",")).into_bytes()
    };
    for line in reader.lines() {
        let line = line.map_err(|err| format!("cannot read the lines the helper wrote: {err}"))?;
        // Only what is JSON goes into a chunk, or the chunk would not be.
        if line.trim().is_empty() || serde_json::from_str::<serde_json::Value>(&line).is_err() {
            continue;
        }
        // One line larger than a chunk is cut (its message keeps its start).
        let line = if line.len() > CHUNK_BYTES - 200 {
            let mut entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(message) = entry["message"].as_str() {
                let cut: String = message.chars().take((CHUNK_BYTES - 400) / 4).collect();
                entry["message"] = format!("{cut}…").into();
            }
            entry.to_string()
        } else {
            line
        };
        if size + line.len() + 1 > CHUNK_BYTES - 100 && !lines.is_empty() {
            messages.push((Arc::clone(topic), close(&lines, messages.len(), false)));
            lines.clear();
            size = 0;
        }
        size += line.len() + 1;
        lines.push(line);
    }
    messages.push((Arc::clone(topic), close(&lines, messages.len(), true)));
    Ok((messages.len(), messages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_chunks_stay_under_64_kib_and_the_last_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        let mut text = String::new();
        for n in 0..3000 {
            text.push_str(&format!(
                "{{\"ts\":{n},\"priority\":6,\"message\":\"{}\"}}\n",
                "m".repeat(60)
            ));
        }
        std::fs::write(&path, text).unwrap();
        let topic: Arc<str> = Arc::from("devices/x/operations/log/l1");
        let (count, messages) = chunks(&path, "l1", &topic).unwrap();
        assert!(count >= 3, "{count}");
        let mut lines = 0;
        for (n, (_, payload)) in messages.iter().enumerate() {
            assert!(payload.len() <= CHUNK_BYTES, "{}", payload.len());
            let chunk: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(chunk["chunk"], n);
            assert_eq!(chunk["last"], n + 1 == count);
            lines += chunk["lines"].as_array().unwrap().len();
        }
        assert_eq!(lines, 3000);
        // No lines: one empty last chunk.
        std::fs::write(&path, "").unwrap();
        let (count, messages) = chunks(&path, "l1", &topic).unwrap();
        assert_eq!(count, 1);
        assert_eq!(
            String::from_utf8(messages[0].1.clone()).unwrap(),
            r#"{"id":"l1","chunk":0,"last":true,"lines":[]}"#
        );
    }
}
