//! Delivering the outbox over the session: at most [`WINDOW`] messages in flight, at a bounded
//! rate (a token bucket), alerts and responses before telemetry, each kind in order. The store
//! holds the messages; this side only asks it for the next ones (`Take`), hands them to Paho and
//! reports each confirmation back. A message leaves the outbox only when Paho reports the broker
//! has it.
//!
//! Each connection has a generation. After a reconnect the store puts everything in flight back
//! (its requests are handled in order, so every earlier `Take` is covered); answers that belong
//! to an older generation no longer count against the window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::event::Event;
use super::event::Taken;
use super::store::{Request, StoreHandle};
use crate::mqtt::{Confirmation, Session};
use crate::outbox::Kind;

/// Messages handed to Paho and not yet confirmed, at most. Paho keeps them in memory and the
/// broker's inflight window is usually 20 (mosquitto's `max_inflight_messages`).
pub const WINDOW: usize = 10;

/// Publishes per second on average with bursts of up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst: rate.max(1.0),
            tokens: rate.max(1.0),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whole tokens there now.
    fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens as usize
    }

    /// When the next token is there.
    pub fn next(&self) -> Instant {
        if self.tokens >= 1.0 {
            self.at
        } else {
            self.at + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

pub struct Delivery {
    bucket: TokenBucket,
    /// Handed to Paho on the current connection and not yet answered.
    inflight: usize,
    /// A `Take` is on its way to the store.
    taking: bool,
    /// The current connection's number.
    generation: u64,
    /// Queued in the store and not in flight, as last reported.
    queued: usize,
    /// Telemetry dropped since a telemetry message last went out: the next one says how many.
    telemetry_gap: u64,
    /// What each message handed to Paho is, for what its refusal means.
    sending: HashMap<u64, (Kind, Arc<str>)>,
    /// A message not confirmed within this is sent again (the connection looked alive but the
    /// answer never came).
    ack_timeout: Duration,
}

impl Delivery {
    pub fn new(rate: f64, ack_timeout: Duration) -> Delivery {
        Delivery {
            bucket: TokenBucket::new(rate, Instant::now()),
            inflight: 0,
            taking: false,
            generation: 0,
            queued: 0,
            telemetry_gap: 0,
            sending: HashMap::new(),
            ack_timeout,
        }
    }

    pub fn set_rate(&mut self, rate: f64) {
        self.bucket = TokenBucket::new(rate, Instant::now());
    }

    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Telemetry messages dropped (the next one that goes says how many).
    pub fn telemetry_dropped(&mut self, count: u64) {
        self.telemetry_gap += count;
    }

    /// The telemetry dropped since the last one went, for a live message about to go; zero
    /// once it has gone (`telemetry_sent`).
    pub fn telemetry_gap(&self) -> u64 {
        self.telemetry_gap
    }

    /// A telemetry message went out, saying how many were dropped before it.
    pub fn telemetry_sent(&mut self) {
        self.telemetry_gap = 0;
    }

    /// What the store reported queued and not in flight.
    pub fn set_queued(&mut self, queued: usize) {
        self.queued = queued;
    }

    /// A new connection: what was in flight goes again.
    pub fn connected(&mut self, generation: u64, store: &StoreHandle) {
        self.generation = generation;
        self.inflight = 0;
        self.taking = false;
        self.sending.clear();
        store.send(Request::RequeueInflight);
    }

    /// Whether to ask the store for more (when the bucket allows): something is queued, the
    /// window has room and no request is on its way.
    pub fn wants_to_send(&self) -> bool {
        !self.taking && self.inflight < WINDOW && self.queued > 0
    }

    /// When the bucket allows the next publish.
    pub fn ready_at(&self) -> Instant {
        self.bucket.next()
    }

    /// Asks the store for as many as the window and the bucket allow.
    pub fn request(&mut self, store: &StoreHandle) {
        let room = WINDOW - self.inflight;
        let tokens = self.bucket.available(Instant::now());
        let max = room.min(tokens).min(self.queued);
        if max == 0 {
            return;
        }
        if store.send(Request::Take {
            max,
            generation: self.generation,
        }) {
            self.taking = true;
        }
    }

    /// The store's answer: hands the messages to Paho, each confirmation awaited on a task of
    /// its own that reports `Event::Delivered`.
    pub fn taken(
        &mut self,
        generation: u64,
        messages: Vec<Taken>,
        session: &Session,
        store: &StoreHandle,
        events: &mpsc::Sender<Event>,
    ) {
        if generation != self.generation {
            // The reconnect that made it old has put these back already.
            return;
        }
        self.taking = false;
        for Taken { message, alert } in messages {
            let _ = self.bucket.take(Instant::now());
            let mut payload = message.payload;
            if message.kind == Kind::Telemetry && self.telemetry_gap > 0 {
                payload = crate::telemetry::with_dropped(payload, self.telemetry_gap);
                self.telemetry_gap = 0;
            }
            let Some(confirmed) =
                session.publish_confirmed(&message.topic, payload, message.qos, self.ack_timeout)
            else {
                // Gone again: it goes at the next connect.
                store.send(Request::Requeue(message.id));
                continue;
            };
            if let Some((name, pass_start_us)) = alert {
                // From the start of the sampling pass that made it to the publish call.
                tracing::debug!(
                    alert = %name,
                    latency_us = crate::model::now_us().saturating_sub(pass_start_us),
                    "Alert handed to Paho."
                );
            }
            self.inflight += 1;
            self.sending
                .insert(message.id, (message.kind, Arc::clone(&message.topic)));
            let events = events.clone();
            let id = message.id;
            tokio::spawn(async move {
                let confirmation = confirmed.await;
                let _ = events
                    .send(Event::Delivered {
                        generation,
                        id,
                        confirmation,
                    })
                    .await;
            });
        }
    }

    /// The store's answer, not to be sent now after all (no Sparkplug birth stands any more):
    /// back to the front of their queues, for the next `Take`.
    pub fn put_back(&mut self, generation: u64, messages: Vec<Taken>, store: &StoreHandle) {
        if generation != self.generation {
            // The reconnect that made it old has put these back already.
            return;
        }
        self.taking = false;
        for taken in messages {
            store.send(Request::Requeue(taken.message.id));
        }
    }

    /// Paho's answer for one message: done, refused, or it goes again.
    pub fn delivered(
        &mut self,
        generation: u64,
        id: u64,
        confirmation: &Confirmation,
        store: &StoreHandle,
    ) -> Answer {
        let current = generation == self.generation;
        let sent = self.sending.remove(&id);
        if current {
            self.inflight = self.inflight.saturating_sub(1);
        }
        match confirmation {
            Confirmation::Delivered => {
                store.send(Request::Delivered(id));
                Answer::Delivered
            }
            Confirmation::Refused(reason) => {
                let (kind, topic) = sent.unwrap_or((Kind::Telemetry, Arc::from("?")));
                if kind == Kind::Alert {
                    // Kept: it stays in flight in the store, out of this connection's window,
                    // and goes again after the next connect (the ACL may have changed by then).
                } else {
                    store.send(Request::Dropped(id));
                }
                Answer::Refused {
                    kind,
                    topic,
                    reason: reason.clone(),
                }
            }
            Confirmation::Failed => {
                if current {
                    // Unanswered on a connection that is up: send it again now. (An older
                    // connection's messages went back at the reconnect.)
                    store.send(Request::Requeue(id));
                }
                Answer::Again
            }
        }
    }
}

/// What a confirmation meant for the counters and the log.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Delivered,
    /// The broker refused it (MQTT 5 reason code): an alert is kept for the next connection,
    /// anything else is dropped.
    Refused {
        kind: Kind,
        topic: Arc<str>,
        reason: String,
    },
    /// It goes again.
    Again,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, start);
        let burst = (0..100).take_while(|_| bucket.take(start)).count();
        assert_eq!(burst, 10);
        assert_eq!(bucket.next(), start + Duration::from_millis(100));
        let later = start + Duration::from_secs(2);
        let sent = (0..100).take_while(|_| bucket.take(later)).count();
        assert_eq!(sent, 10, "refilled to the burst, not beyond");
        let a_bit_later = later + Duration::from_millis(250);
        let sent = (0..100).take_while(|_| bucket.take(a_bit_later)).count();
        assert_eq!(sent, 2);
    }
}
