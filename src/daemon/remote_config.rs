//! `config_update` in the loop: a drop-in pushed from the fleet. The agent checks the merged
//! config with the change before anything is written (on the blocking pool), hands the write to
//! the helper (the agent cannot write `/etc`), reloads when the helper says it is written, and
//! confirms the change by a connection made with it; a change not confirmed within `confirm_s`
//! (or that the reload refuses) is undone by the helper, reloaded again, and ends `failed`,
//! "rolled back: …".
//!
//! The steps are the operation's state, so a restart (kill -9, a power cut) goes on from them:
//! the agent that starts runs whatever is on disk, and a change not yet confirmed is confirmed
//! by its first connection or undone within `confirm_s` of the start.

use std::time::{Duration, Instant};

use serde_json::json;

use super::event::{Event, OperationEvent};
use super::Daemon;
use crate::operations::protocol::HelperRequest;
use crate::operations::{Operation, Params, State};

/// The step of a change the helper has written, being reloaded.
pub const RELOADING: &str = "reloading";
/// The step of a change waiting for a connection made with it.
pub const CONFIRMING: &str = "confirming";
/// The steps of a change being undone start with this, then say why.
pub const ROLLING_BACK: &str = "rolling back: ";

fn step_of(op: &Operation) -> Option<&str> {
    match &op.state {
        State::Executing { step } => Some(step.as_str()),
        _ => None,
    }
}

impl Daemon {
    /// A `config_update` accepted: the merged config with the change is checked (on the
    /// blocking pool) before the helper is asked to write it.
    pub(super) fn check_config_update(&mut self, op: Operation) {
        let Params::ConfigUpdate { name, content } = op.params.clone() else {
            return;
        };
        let Some(path) = self.reload_from.clone() else {
            return self.move_operation(
                &op.id,
                State::Failed {
                    reason: "this agent runs without a config file to change".to_owned(),
                },
            );
        };
        let running = self.core.config.config().clone();
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let id = op.id.clone();
            let checked = tokio::task::spawn_blocking(move || {
                crate::config::operations::check_change(&path, &name, content.as_deref(), &running)
            })
            .await
            .unwrap_or_else(|_| Err("internal error while checking".to_owned()));
            let _ = events
                .send(Event::Operations(OperationEvent::Checked {
                    id,
                    result: checked,
                }))
                .await;
        });
    }

    pub(super) fn on_config_checked(&mut self, id: &str, result: Result<(), String>) {
        let Some(op) = self.core.operations.get(id).cloned() else {
            return;
        };
        match result {
            Ok(()) => {
                self.move_operation(
                    id,
                    State::Executing {
                        step: "writing".to_owned(),
                    },
                );
                self.hand_to_helper(op);
            }
            Err(reason) => self.move_operation(id, State::Failed { reason }),
        }
    }

    /// What the helper said of a `config_update`: written (reload it), restored (reload, then
    /// end rolled back), or failed.
    pub(super) fn on_config_result(&mut self, op: &Operation, state: State) {
        let step = step_of(op).unwrap_or_default().to_owned();
        let waiting = step == "writing" || (step.is_empty() && op.state == State::Accepted);
        let undoing = step.starts_with(ROLLING_BACK) && !self.core.operations.reloading_for(&op.id);
        match state {
            State::Executing { step: done }
                if waiting && (done == "written" || done == "deleted") =>
            {
                self.move_operation(
                    &op.id,
                    State::Executing {
                        step: RELOADING.to_owned(),
                    },
                );
                self.reload_for(&op.id);
            }
            State::Executing { step: done } if done == "restored" && undoing => {
                self.reload_for(&op.id);
            }
            State::Failed { reason } if !step.starts_with(ROLLING_BACK) => {
                self.move_operation(&op.id, State::Failed { reason });
            }
            State::Failed { reason } => {
                // The undo failed: the change stays; a person must look.
                self.move_operation(
                    &op.id,
                    State::Failed {
                        reason: format!(
                            "rolled back: {}; but restoring the previous file failed ({reason})",
                            &step[ROLLING_BACK.len()..]
                        ),
                    },
                );
            }
            _ => {}
        }
    }

    /// Reloads the config for operation `id`; its outcome comes to `config_reloaded`.
    fn reload_for(&mut self, id: &str) {
        self.core.operations.reload_for = Some(id.to_owned());
        if self.reloading {
            self.reload_again = true;
        } else {
            self.reload();
        }
    }

    /// A reload ended (`Ok(true)` when it reconnects): the operation that asked for it moves on.
    pub(super) fn config_reloaded(&mut self, outcome: Result<bool, String>) {
        let Some(id) = self.core.operations.reload_for.take() else {
            return;
        };
        let Some(op) = self.core.operations.get(&id).cloned() else {
            return;
        };
        let step = step_of(&op).unwrap_or_default().to_owned();
        if let Some(why) = step.strip_prefix(ROLLING_BACK) {
            let reason = match outcome {
                Ok(_) => format!("rolled back: {why}; the previous config is back"),
                Err(refused) => format!(
                    "rolled back: {why}; the previous file is back, but the reload refused it too ({refused})"
                ),
            };
            return self.move_operation(&id, State::Failed { reason });
        }
        if step != RELOADING {
            return;
        }
        match outcome {
            Err(refused) => self.undo_config(&op, format!("the reload refused it: {refused}")),
            // Sensors, alerts, actuators: taken without reconnecting, done. Unless this agent
            // started after the change was accepted: it loaded the change at its start, so the
            // reload cannot tell whether it reconnects, and a connection must prove it.
            Ok(false) if op.before.started_ts == self.core.operations.started_ts() => {
                self.move_operation(
                    &id,
                    State::Successful {
                        result: result_of(&op, false),
                    },
                );
            }
            // Confirmed by the next connection, made with the new config.
            Ok(_) => self.confirm_config(&op),
        }
    }

    fn confirm_config(&mut self, op: &Operation) {
        let confirm_s = confirm_s(self);
        self.core.operations.confirming.insert(
            op.id.clone(),
            Instant::now() + Duration::from_secs_f64(confirm_s),
        );
        self.move_operation(
            &op.id,
            State::Executing {
                step: CONFIRMING.to_owned(),
            },
        );
    }

    /// Connected: every change waiting for a connection is confirmed.
    pub(super) fn config_connected(&mut self) {
        let confirmed: Vec<Operation> = self
            .core
            .operations
            .running()
            .filter(|op| matches!(op.params, Params::ConfigUpdate { .. }))
            .filter(|op| step_of(op) == Some(CONFIRMING))
            .cloned()
            .collect();
        for op in confirmed {
            self.core.operations.confirming.remove(&op.id);
            self.move_operation(
                &op.id,
                State::Successful {
                    result: result_of(&op, true),
                },
            );
        }
    }

    /// At every pass: a change not confirmed in time is undone.
    pub(super) fn check_config_deadlines(&mut self) {
        let now = Instant::now();
        let late: Vec<String> = self
            .core
            .operations
            .confirming
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            self.core.operations.confirming.remove(&id);
            let Some(op) = self.core.operations.get(&id).cloned() else {
                continue;
            };
            if step_of(&op) == Some(CONFIRMING) {
                let why = format!(
                    "not connected with the new config within {} s",
                    confirm_s(self)
                );
                self.undo_config(&op, why);
            }
        }
    }

    /// At start: a change that was being reloaded or confirmed is confirmed by this agent's
    /// first connection (it runs with what is on disk), or undone within `confirm_s`.
    pub(super) fn resume_config_updates(&mut self) {
        let pending: Vec<Operation> = self
            .core
            .operations
            .running()
            .filter(|op| matches!(op.params, Params::ConfigUpdate { .. }))
            .filter(|op| matches!(step_of(op), Some(RELOADING | CONFIRMING)))
            .cloned()
            .collect();
        for op in pending {
            self.confirm_config(&op);
        }
    }

    /// Asks the helper to put back the file as it was before operation `op`.
    fn undo_config(&mut self, op: &Operation, why: String) {
        tracing::warn!(id = %op.id, reason = %why, "Undoing a remote config change.");
        self.move_operation(
            &op.id,
            State::Executing {
                step: format!("{ROLLING_BACK}{why}"),
            },
        );
        let request = HelperRequest {
            id: op.id.clone(),
            params: op.params.clone(),
            accepted_ts: op.accepted_ts,
            undo: true,
        };
        self.write_request(request);
    }
}

/// `operations.config_update.confirm_s` (its default when the key went away meanwhile).
fn confirm_s(daemon: &Daemon) -> f64 {
    daemon
        .core
        .config
        .config()
        .operations
        .config_update
        .as_ref()
        .map_or(60.0, |update| update.confirm_s)
}

fn result_of(op: &Operation, reconnected: bool) -> serde_json::Value {
    match &op.params {
        Params::ConfigUpdate { name, content } => json!({
            "name": name,
            "deleted": content.is_none(),
            "reconnected": reconnected,
        }),
        _ => json!({}),
    }
}
