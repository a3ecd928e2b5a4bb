//! Delivering the outbox over the session: at most `WINDOW` messages in flight, at a bounded rate
//! (a token bucket), alerts and responses before telemetry, each kind in order. A message leaves
//! the outbox only when Paho reports the broker has it.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::mqtt::Session;
use crate::outbox::{Kind, Outbox, Pushed};

/// Messages handed to Paho and not yet confirmed, at most. Paho keeps them in memory and the
/// broker's inflight window is usually 20 (mosquitto's `max_inflight_messages`).
pub const WINDOW: usize = 10;

/// Paho's answer for one message.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    pub id: u64,
    pub ok: bool,
}

/// Publishes per second on average with bursts of up to `burst`.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, now: Instant) -> TokenBucket {
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

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there.
    fn next(&self) -> Instant {
        if self.tokens >= 1.0 {
            self.at
        } else {
            self.at + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

pub struct Delivery {
    pub outbox: Outbox,
    bucket: TokenBucket,
    /// Telemetry dropped since a telemetry message last went out: the next one says how many.
    pub telemetry_gap: u64,
    done_tx: mpsc::Sender<Done>,
    /// A message not confirmed within this is sent again (the connection looked alive but the
    /// answer never came).
    ack_timeout: Duration,
}

impl Delivery {
    pub fn new(
        outbox: Outbox,
        rate: f64,
        ack_timeout: Duration,
    ) -> (Delivery, mpsc::Receiver<Done>) {
        // Room for every confirmation of a full window, twice (requeued and late ones).
        let (done_tx, done_rx) = mpsc::channel(4 * WINDOW);
        let delivery = Delivery {
            outbox,
            bucket: TokenBucket::new(rate, Instant::now()),
            telemetry_gap: 0,
            done_tx,
            ack_timeout,
        };
        (delivery, done_rx)
    }

    pub fn set_rate(&mut self, rate: f64) {
        self.bucket = TokenBucket::new(rate, Instant::now());
    }

    /// Queues a message; what the bound dropped is logged and counted in the returned number.
    pub fn push(
        &mut self,
        kind: Kind,
        qos: u8,
        topic: &str,
        payload: &[u8],
        limit: Option<usize>,
    ) -> u64 {
        let Pushed { dropped, .. } = self.outbox.push(kind, qos, topic, payload, limit);
        for lost in &dropped {
            match lost.kind {
                Kind::Telemetry => self.telemetry_gap += 1,
                other => tracing::error!(
                    kind = other.name(),
                    queued = self.outbox.len(),
                    "Outbox full (broker.max_queued_messages); the oldest {} was dropped.",
                    other.name()
                ),
            }
        }
        dropped.len() as u64
    }

    /// Whether something is queued and the window has room.
    pub fn wants_to_send(&self) -> bool {
        self.outbox.inflight() < WINDOW && self.outbox.len() > self.outbox.inflight()
    }

    /// When the bucket allows the next publish.
    pub fn ready_at(&self) -> Instant {
        self.bucket.next()
    }

    /// Hands queued messages to Paho while the window and the bucket allow. Returns how many
    /// were lost because their payload could not be read back.
    pub fn pump(&mut self, session: &Session) -> u64 {
        let mut lost = 0;
        while self.wants_to_send() && self.bucket.take(Instant::now()) {
            let Some(next) = self.outbox.take_next() else {
                break;
            };
            let message = match next {
                Ok(message) => message,
                Err(dropped) => {
                    if dropped.kind == Kind::Telemetry {
                        self.telemetry_gap += 1;
                    }
                    lost += 1;
                    continue;
                }
            };
            let mut payload = message.payload;
            if message.kind == Kind::Telemetry && self.telemetry_gap > 0 {
                payload = crate::telemetry::with_dropped(payload, self.telemetry_gap);
                self.telemetry_gap = 0;
            }
            let Some(token) = session.publish_tracked(&message.topic, payload, message.qos) else {
                // Gone again: it goes at the next connect.
                self.outbox.requeue(message.id);
                break;
            };
            let done = self.done_tx.clone();
            let id = message.id;
            let wait = self.ack_timeout;
            tokio::spawn(async move {
                let ok = matches!(tokio::time::timeout(wait, token).await, Ok(Ok(_)));
                let _ = done.send(Done { id, ok }).await;
            });
        }
        lost
    }

    /// Paho's answer: the message is done, or goes again. True when it was delivered.
    pub fn done(&mut self, done: Done, connected: bool) -> bool {
        if done.ok {
            self.outbox.delivered(done.id);
        } else if connected {
            // Refused or unanswered on a connection that is up: send it again now. (When the
            // connection is down, everything in flight goes again at the next connect.)
            self.outbox.requeue(done.id);
        }
        done.ok
    }
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
