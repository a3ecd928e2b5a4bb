//! The store: one thread that owns the outbox, the saved alert state and the ledger's record of
//! each command's answer. The event loop and the sampler hand it requests and never wait for
//! it; what it did comes back as events. (The ledger's first record of a command, "interrupted",
//! is written by the command's own job on the blocking pool before its action runs: see
//! `daemon::commands`.)
//!
//! Durable before committed: an alert event is appended to the outbox and `fdatasync`ed before
//! the alert state that says it was raised is saved, and a command's answer is in the outbox
//! before the ledger records it. A crash between the two steps means the event is made again
//! with the same id (a duplicate the consumer recognises), never an event that is lost.
//!
//! Requests that arrive while one is written share its `fdatasync` (group commit): the thread
//! takes every request waiting, writes them, syncs once, then does what must follow the sync.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::event::{Event, Report, StoreEvent, Taken};
use crate::alerts::{AlertEvent, SavedState};
use crate::commands::Response;
use crate::dedupe::Dedupe;
use crate::outbox::{Dropped, Kind, Outbox};
use crate::sync::Lock;

/// What the store is asked to do, in order.
#[derive(Debug)]
pub enum Request {
    /// Queue a message (telemetry at QoS >= 1 or kept while offline).
    Push {
        kind: Kind,
        qos: u8,
        topic: Arc<str>,
        payload: Vec<u8>,
        /// The most messages of this kind to keep (the telemetry buffer).
        limit: Option<usize>,
    },
    /// The alert events of one sampling pass and the alert state after them: the events are
    /// queued and synced first, the state saved after.
    Alerts {
        topic: Arc<str>,
        events: Vec<AlertEvent>,
        state: SavedState,
        path: PathBuf,
    },
    /// Sparkplug mode: the alert state after a pass, asked by the loop after what it kept of
    /// the pass's events (saved after this batch's sync, as `Alerts` is).
    SaveState {
        state: SavedState,
        path: PathBuf,
        names: Vec<String>,
    },
    /// A command's answer: queued and synced, then recorded in the ledger when `record`.
    Answer {
        topic: Arc<str>,
        response: Response,
        record: bool,
    },
    /// Operations' states: `ledger` saved at `path` (fsynced) first, then `messages` queued
    /// (their statuses, and what must precede them), then the ledger saved again with
    /// `published` marked so, once the messages are on disk.
    Operations {
        ledger: crate::operations::engine::Ledger,
        path: PathBuf,
        messages: Vec<(Arc<str>, Vec<u8>)>,
        published: Vec<String>,
    },
    /// Up to `max` messages for sending, in priority order, for connection `generation`.
    Take {
        max: usize,
        generation: u64,
    },
    /// The broker has it.
    Delivered(u64),
    /// Send it again (Paho refused it, or its answer never came).
    Requeue(u64),
    /// The broker refused it for good (MQTT 5 reason code): it leaves the outbox as dropped.
    Dropped(u64),
    /// A new connection: everything in flight goes again.
    RequeueInflight,
    SetBound(usize),
    /// Finish what came before and end the thread.
    Stop,
}

/// The loop's end of the store.
#[derive(Clone)]
pub struct StoreHandle {
    requests: std_mpsc::Sender<Request>,
}

impl StoreHandle {
    /// Hands a request over; never waits. False once the store has stopped.
    pub fn send(&self, request: Request) -> bool {
        self.requests.send(request).is_ok()
    }
}

/// Starts the store thread over `outbox`, reporting into `events`.
pub fn start(
    outbox: Outbox,
    ledger: Arc<Mutex<Dedupe>>,
    events: mpsc::Sender<Event>,
) -> (StoreHandle, std::thread::JoinHandle<()>) {
    let (requests, incoming) = std_mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("store".to_owned())
        .spawn(move || Store::new(outbox, ledger, events).run(incoming))
        .expect("the store thread can be spawned");
    (StoreHandle { requests }, thread)
}

/// What must follow the batch's `fdatasync`.
enum AfterSync {
    SaveAlerts {
        state: SavedState,
        path: PathBuf,
        names: Vec<String>,
    },
    Record(Response),
    Published {
        ledger: crate::operations::engine::Ledger,
        path: PathBuf,
        ids: Vec<String>,
    },
}

struct Store {
    outbox: Outbox,
    ledger: Arc<Mutex<Dedupe>>,
    events: mpsc::Sender<Event>,
    /// Alerts made in this run, by outbox id, for the latency log line when they are sent.
    alerts: HashMap<u64, (String, u64)>,
    /// When each queued message was stored (Unix ms), oldest first, for `status`.
    stored_ms: std::collections::BTreeMap<u64, u64>,
    dropped: Vec<Dropped>,
    /// Messages refused in this batch as larger than the outbox stores (it logged each).
    too_large: usize,
    after_sync: Vec<AfterSync>,
}

impl Store {
    fn new(outbox: Outbox, ledger: Arc<Mutex<Dedupe>>, events: mpsc::Sender<Event>) -> Store {
        Store {
            outbox,
            ledger,
            events,
            alerts: HashMap::new(),
            stored_ms: std::collections::BTreeMap::new(),
            dropped: Vec::new(),
            too_large: 0,
            after_sync: Vec::new(),
        }
    }

    fn run(mut self, requests: std_mpsc::Receiver<Request>) {
        loop {
            // While memory-only, wake now and then to try the disk again.
            let first = if self.outbox.durable() {
                requests.recv().map_err(|_| ())
            } else {
                match requests.recv_timeout(crate::outbox::RETRY) {
                    Ok(request) => Ok(request),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        if self.outbox.retry_disk() {
                            self.report();
                        }
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(()),
                }
            };
            let Ok(first) = first else {
                self.outbox.sync();
                self.finish_batch();
                return;
            };
            let mut batch = vec![first];
            batch.extend(requests.try_iter());
            let mut stop = false;
            for request in batch {
                if stop {
                    // Asked after Stop: nothing more is taken (the loop has stopped sending).
                    continue;
                }
                stop = self.handle(request);
            }
            self.outbox.sync();
            self.finish_batch();
            if stop {
                let _ = self.events.blocking_send(Event::Store(StoreEvent::Stopped));
                return;
            }
        }
    }

    /// Does one request; true for `Stop`.
    fn handle(&mut self, request: Request) -> bool {
        match request {
            Request::Push {
                kind,
                qos,
                topic,
                payload,
                limit,
            } => {
                self.push(kind, qos, &topic, &payload, limit);
            }
            Request::Alerts {
                topic,
                events,
                state,
                path,
            } => {
                let mut names = Vec::with_capacity(events.len());
                for event in &events {
                    let id = self.push(
                        Kind::Alert,
                        event.qos,
                        &topic,
                        event.to_json().as_bytes(),
                        None,
                    );
                    self.alerts
                        .insert(id, (event.alert.clone(), event.pass_start_us));
                    names.push(event.alert.clone());
                }
                self.after_sync
                    .push(AfterSync::SaveAlerts { state, path, names });
            }
            Request::SaveState { state, path, names } => {
                self.after_sync
                    .push(AfterSync::SaveAlerts { state, path, names });
            }
            Request::Answer {
                topic,
                response,
                record,
            } => {
                self.push(
                    Kind::Response,
                    1,
                    &topic,
                    response.to_json().as_bytes(),
                    None,
                );
                if record {
                    self.after_sync.push(AfterSync::Record(response));
                }
            }
            Request::Operations {
                ledger,
                path,
                messages,
                published,
            } => {
                // The record before the status: a crash between them pushes the same status
                // again at the next start, never one the record does not hold.
                if let Err(err) = crate::state::save(&path, &ledger) {
                    tracing::error!(path = %path.display(), error = %err, "Cannot save the operations' record; a restart may not know how they ended.");
                }
                for (topic, payload) in messages {
                    self.push(Kind::Response, 1, &topic, &payload, None);
                }
                self.after_sync.push(AfterSync::Published {
                    ledger,
                    path,
                    ids: published,
                });
            }
            Request::Take { max, generation } => {
                // What is taken must be on disk first: it may be confirmed at once.
                self.outbox.sync();
                self.take(max, generation);
            }
            Request::Delivered(id) => {
                self.outbox.delivered(id);
                self.forget(id);
            }
            Request::Requeue(id) => self.outbox.requeue(id),
            Request::Dropped(id) => {
                self.outbox.drop_inflight(id);
                self.forget(id);
            }
            Request::RequeueInflight => self.outbox.requeue_inflight(),
            Request::SetBound(bound) => self.outbox.set_bound(bound),
            Request::Stop => return true,
        }
        false
    }

    /// Appends a message without syncing; the batch syncs once.
    fn push(
        &mut self,
        kind: Kind,
        qos: u8,
        topic: &str,
        payload: &[u8],
        limit: Option<usize>,
    ) -> u64 {
        let pushed = self.outbox.push_deferred(kind, qos, topic, payload, limit);
        for dropped in &pushed.dropped {
            self.forget(dropped.id);
        }
        self.dropped.extend(pushed.dropped);
        if pushed.refused {
            self.too_large += 1;
        } else {
            self.stored_ms.insert(pushed.id, crate::model::now_ms());
        }
        pushed.id
    }

    fn forget(&mut self, id: u64) {
        self.alerts.remove(&id);
        self.stored_ms.remove(&id);
    }

    fn take(&mut self, max: usize, generation: u64) {
        let mut messages = Vec::new();
        let mut lost = Vec::new();
        while messages.len() < max {
            match self.outbox.take_next() {
                None => break,
                Some(Ok(message)) => {
                    let alert = self.alerts.get(&message.id).cloned();
                    messages.push(Taken { message, alert });
                }
                Some(Err(dropped)) => {
                    self.forget(dropped.id);
                    lost.push(dropped);
                }
            }
        }
        let _ = self.events.blocking_send(Event::Store(StoreEvent::Taken {
            generation,
            messages,
            lost,
        }));
    }

    /// What follows the sync, then the report.
    fn finish_batch(&mut self) {
        let durable = self.outbox.durable();
        for step in std::mem::take(&mut self.after_sync) {
            match step {
                AfterSync::SaveAlerts { state, path, names } => {
                    if !durable {
                        // Not saved as raised: a restart makes these events again, so the
                        // memory-only outbox loses nothing that is not made anew.
                        tracing::error!(alerts = %names.join(", "), "Alert kept in memory only (state_dir refuses writes); a restart now would make it again.");
                        continue;
                    }
                    if let Err(err) = crate::state::save(&path, &state) {
                        tracing::error!(path = %path.display(), error = %err, "Cannot save alert state; a restart would make these events again.");
                    }
                }
                AfterSync::Record(response) => {
                    let Some(id) = response.id.clone() else {
                        continue;
                    };
                    let mut ledger = self.ledger.locked();
                    if let Err(err) = ledger.record(&id, &response) {
                        tracing::error!(error = %err, "Cannot save a command's answer in the ledger.");
                    }
                }
                AfterSync::Published {
                    mut ledger,
                    path,
                    ids,
                } => {
                    if !durable {
                        // Memory-only: the next start pushes them again.
                        continue;
                    }
                    for op in ledger.operations.iter_mut() {
                        if ids.contains(&op.id) {
                            op.published = true;
                        }
                    }
                    if let Err(err) = crate::state::save(&path, &ledger) {
                        tracing::debug!(path = %path.display(), error = %err, "Cannot mark operations' states as published; a restart sends them again.");
                    }
                }
            }
        }
        self.report();
    }

    fn report(&mut self) {
        let per_kind = Kind::ALL.map(|kind| self.outbox.count(kind));
        let report = Report {
            queued: self.outbox.len() - self.outbox.inflight(),
            per_kind,
            durable: self.outbox.durable(),
            dropped: std::mem::take(&mut self.dropped),
            too_large: std::mem::take(&mut self.too_large),
            oldest_ms: self.stored_ms.values().next().copied(),
        };
        let _ = self
            .events
            .blocking_send(Event::Store(StoreEvent::Report(report)));
    }
}
