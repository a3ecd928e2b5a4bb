//! The stop: within `SHUTDOWN_WAIT` of the signal, whatever is pending. Commands that run
//! finish or are answered as interrupted, what is in flight is confirmed or stays queued, the
//! goodbye goes out, and everything handed to the store is on disk before the end; a second
//! signal ends it at once.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use super::event::{Event, StoreEvent};
use super::store::Request;
use super::{Daemon, SHUTDOWN_WAIT};
use crate::commands::Response;
use crate::mqtt::Incoming;
use crate::service;

impl Daemon {
    /// The stop: within `SHUTDOWN_WAIT` of the signal, whatever is pending. Commands that run
    /// finish or are answered as interrupted, what is in flight is confirmed or stays queued,
    /// the goodbye goes out, and everything handed to the store is on disk before the end.
    pub(super) async fn stop<F, S>(
        mut self,
        signal: &'static str,
        events: &mut mpsc::Receiver<Event>,
        incoming: &mut crate::mqtt::IncomingReceiver,
        store_thread: std::thread::JoinHandle<()>,
        mut shutdown: S,
    ) where
        S: FnMut() -> F,
        F: Future<Output = &'static str>,
    {
        tracing::info!(signal, "Shutting down.");
        service::notify(&[sd_notify::NotifyState::Stopping]);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT - Duration::from_millis(300);
        let second = shutdown();
        tokio::pin!(second);
        self.sampler.stop();
        let at_once = tokio::select! {
            () = self.finish(events, incoming, deadline) => false,
            signal = &mut second => {
                tracing::warn!(signal, "Second signal: stopping without waiting.");
                true
            }
        };
        if !at_once {
            // What is still unanswered, then the store's last writes.
            for answer in self.commands.stop() {
                self.answer(answer, false);
            }
            while let Some(message) = incoming.try_recv() {
                self.refuse_stopping(message);
            }
            self.core.store.send(Request::Stop);
            let flushed = tokio::select! {
                flushed = wait_stopped(events, deadline + Duration::from_millis(250)) => flushed,
                signal = &mut second => {
                    tracing::warn!(signal, "Second signal: stopping without waiting.");
                    false
                }
            };
            if flushed {
                let _ = store_thread.join();
            } else {
                tracing::error!("The store did not finish in time (slow disk?); the last writes may be missing.");
            }
        }
        tracing::info!(
            sent = self.core.counters.sent,
            dropped = self.core.counters.dropped
                + self.core.counters.lost
                + self
                    .core
                    .stats
                    .queue_full
                    .load(std::sync::atomic::Ordering::Relaxed),
            queued = self.core.outbox.per_kind.iter().sum::<usize>(),
            connects = self.core.link.connects,
            "Stopped."
        );
    }

    /// Lets running commands end and what is in flight be confirmed, then publishes the
    /// goodbye and disconnects, all before `deadline`.
    pub(super) async fn finish(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        incoming: &mut crate::mqtt::IncomingReceiver,
        deadline: tokio::time::Instant,
    ) {
        // Leave time for the goodbye and the disconnect.
        let settle = deadline - Duration::from_millis(1500);
        loop {
            let inflight = self.mode.inflight();
            let busy = !self.commands.idle() || (self.core.link.is_up() && inflight > 0);
            if !busy {
                break;
            }
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event_stopping(event),
                    None => break,
                },
                Some(message) = incoming.recv() => self.refuse_stopping(message),
                () = tokio::time::sleep_until(settle) => break,
            }
        }
        if self.core.session.is_connected() {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait = (remaining.saturating_sub(Duration::from_millis(600)) / 2)
                .max(Duration::from_millis(200));
            self.core.session.closer().close(wait).await;
        }
    }

    /// During the stop only answers and confirmations count; nothing new starts.
    pub(super) fn on_event_stopping(&mut self, event: Event) {
        match event {
            Event::Answered {
                key,
                response,
                record,
                finished,
            } => self.answered(&key, response, record, finished),
            Event::Finished { key } => self.commands.finished(&key),
            Event::Delivered {
                generation,
                id,
                confirmation,
            } => self.delivered(generation, id, &confirmation),
            Event::Store(StoreEvent::Report(report)) => self.on_report(report),
            _ => {}
        }
    }

    /// A command that arrives during the stop is answered, not run.
    pub(super) fn refuse_stopping(&mut self, message: Incoming) {
        let Some(name) = self.mode.command_name(&message.topic) else {
            return;
        };
        let name = name.to_owned();
        let id = crate::commands::parse(&name, &message.payload, &self.core.config.actuators)
            .ok()
            .map(|command| command.id);
        let response =
            Response::refused(id.as_deref(), &name, "the agent is stopping; not executed");
        self.answer(response, false);
    }
}

/// Waits for the store's `Stopped`, handling nothing else; false at `deadline`.
async fn wait_stopped(events: &mut mpsc::Receiver<Event>, deadline: tokio::time::Instant) -> bool {
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Store(StoreEvent::Stopped))) => return true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return false,
        }
    }
}
