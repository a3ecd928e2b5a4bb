//! Every operation's record, as a pure state machine: what a request becomes (accepted, refused
//! as busy, answered as a duplicate), each change of state, what a start finds unfinished. Time
//! and the facts a restart proves are arguments; saving the record is the caller's (the daemon
//! hands it to the store, which saves it before the status it says goes out).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{status_json, Before, Kind, Operation, Request, State, Summary, RECENT};

/// Operations remembered, running and finished, for duplicates and `status` (the oldest finished
/// ones go first beyond it).
pub const KEEP: usize = 100;

/// The record of every operation kept: what `state_dir/operations.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Oldest first.
    pub operations: VecDeque<Operation>,
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// Accepted and recorded: it runs now; its `accepted` status is to be published.
    Accepted(Operation),
    /// Answered at once, not recorded (busy) or already known (a duplicate): publish this.
    Answered(String),
}

/// The records of every operation, and the rules between them.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    ledger: Ledger,
}

impl Engine {
    pub fn new(ledger: Ledger) -> Engine {
        Engine { ledger }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn get(&self, id: &str) -> Option<&Operation> {
        self.ledger.operations.iter().find(|op| op.id == id)
    }

    /// The operations that have not ended, oldest first.
    pub fn running(&self) -> impl Iterator<Item = &Operation> {
        self.ledger
            .operations
            .iter()
            .filter(|op| !op.state.is_terminal())
    }

    /// What `status` and health list: every running operation and the last [`RECENT`] finished.
    pub fn summaries(&self) -> Vec<Summary> {
        let finished: Vec<&Operation> = self
            .ledger
            .operations
            .iter()
            .filter(|op| op.state.is_terminal())
            .collect();
        let skip = finished.len().saturating_sub(RECENT);
        self.running()
            .chain(finished.into_iter().skip(skip))
            .map(Summary::from)
            .collect()
    }

    /// A request arrives at `now` (ms); `before` is what this agent knows of itself. A known id
    /// is answered with its last state, marked duplicate; a request the busy rules refuse is
    /// answered `failed` and not recorded (the same id may come again later); anything else is
    /// accepted.
    pub fn arrive(&mut self, request: Request, now: u64, before: Before) -> Arrival {
        if let Some(known) = self.get(&request.id) {
            return Arrival::Answered(status_json(known, true));
        }
        let kind = request.params.kind();
        if let Some(why) = self.busy(kind) {
            let refusal = super::Refusal {
                id: Some(request.id),
                kind: kind.name().to_owned(),
                reason: format!("busy: {why}"),
            };
            return Arrival::Answered(refusal.status_json(now));
        }
        let operation = Operation {
            id: request.id,
            params: request.params,
            state: State::Accepted,
            ts: now,
            accepted_ts: now,
            before,
            published: false,
        };
        self.ledger.operations.push_back(operation.clone());
        self.trim();
        Arrival::Accepted(operation)
    }

    /// Why an operation of `kind` cannot start now, if it cannot: one of a kind at a time, and
    /// an update or a restart runs alone.
    fn busy(&self, kind: Kind) -> Option<String> {
        let running: Vec<&Operation> = self.running().collect();
        if let Some(exclusive) = running.iter().find(|op| op.kind().exclusive()) {
            return Some(format!(
                "{} {} is running; nothing else starts until it ends",
                exclusive.kind().name(),
                exclusive.id
            ));
        }
        if let Some(same) = running.iter().find(|op| op.kind() == kind) {
            return Some(format!(
                "{} {} is running; one at a time",
                kind.name(),
                same.id
            ));
        }
        if kind.exclusive() && !running.is_empty() {
            return Some(format!(
                "{} runs alone, and {} {} is running",
                kind.name(),
                running[0].kind().name(),
                running[0].id
            ));
        }
        None
    }

    /// Operation `id` enters `state` at `now`. Nothing changes (`None`) for an unknown id, for
    /// one that has ended (exactly one terminal state), or for the state it is in already.
    pub fn set(&mut self, id: &str, state: State, now: u64) -> Option<Operation> {
        let operation = self.ledger.operations.iter_mut().find(|op| op.id == id)?;
        if operation.state.is_terminal() || operation.state == state {
            return None;
        }
        operation.state = state;
        operation.ts = now;
        operation.published = false;
        let changed = operation.clone();
        self.trim();
        Some(changed)
    }

    /// The store has pushed the status of `id`'s current state.
    pub fn published(&mut self, id: &str) {
        if let Some(operation) = self.ledger.operations.iter_mut().find(|op| op.id == id) {
            operation.published = true;
        }
    }

    /// Operations whose current status may not have reached the outbox (a crash between the
    /// record and the push): pushed again at start, the same message.
    pub fn unpublished(&self) -> Vec<Operation> {
        self.ledger
            .operations
            .iter()
            .filter(|op| !op.published)
            .cloned()
            .collect()
    }

    /// At start: every operation left unfinished by the agent before is decided by `decide`
    /// (what can be proven now: the helper's verdict, a new start time or boot id), and ends
    /// `failed` "interrupted" when nothing is proven and it cannot go on. `decide` returns
    /// `Some(state)` to move it on (a terminal state, or one it resumes in) and `None` when the
    /// outcome is unknown.
    pub fn resume(
        &mut self,
        now: u64,
        mut decide: impl FnMut(&Operation) -> Option<State>,
    ) -> Vec<Operation> {
        let unfinished: Vec<String> = self.running().map(|op| op.id.clone()).collect();
        let mut changed = Vec::new();
        for id in unfinished {
            let Some(operation) = self.get(&id) else {
                continue;
            };
            let state = decide(operation).unwrap_or_else(|| State::Failed {
                reason: "interrupted: the agent stopped while it ran (a crash, a kill or a power cut) and its outcome cannot be proven".to_owned(),
            });
            if let Some(operation) = self.set(&id, state, now) {
                changed.push(operation);
            }
        }
        changed
    }

    /// Keeps at most [`KEEP`]: the oldest finished and published ones go first; running ones
    /// always stay.
    fn trim(&mut self) {
        while self.ledger.operations.len() > KEEP {
            let Some(oldest) = self
                .ledger
                .operations
                .iter()
                .position(|op| op.state.is_terminal() && op.published)
            else {
                break;
            };
            self.ledger.operations.remove(oldest);
        }
    }
}
