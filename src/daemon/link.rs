//! Where the connection to the broker stands, as a pure state machine: waiting for the next
//! attempt, connecting, or up. Time and the random number are arguments, so every path is
//! unit-tested without a broker or a clock (in the spirit of rumqttc's `MqttState`).
//!
//! The daemon's loop asks [`Link::due`] whether to start an attempt, runs the attempt as a task,
//! and reports its end with [`Link::connected`] or [`Link::failed`]. Each attempt has a number:
//! the result of an attempt that a reload or a renewal made obsolete is recognised and ignored.

use std::time::{Duration, Instant};

use crate::config::ReconnectConfig;
use crate::mqtt::backoff::Backoff;

/// A connection that stayed up this long resets the backoff; a shorter one (a broker that
/// accepts and then drops us) keeps backing off, so a flapping link never becomes a tight loop.
pub const STABLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection; the next attempt starts at `at`.
    Waiting { at: Instant },
    /// Attempt number `attempt` runs since `since`.
    Connecting { attempt: u64, since: Instant },
    /// Connected since `since` (by attempt `attempt`).
    Up { attempt: u64, since: Instant },
}

#[derive(Debug)]
pub struct Link {
    state: State,
    backoff: Backoff,
    /// The number of the last attempt started.
    attempts: u64,
    /// Successful connects so far.
    pub connects: u64,
}

/// What a reported result meant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The result belongs to an attempt that no longer counts; the connection it made (if any)
    /// should be closed.
    Stale,
    /// Connected.
    Up,
    /// Failed; the next attempt is in this long.
    Retry(Duration),
}

impl Link {
    pub fn new(config: &ReconnectConfig, now: Instant) -> Link {
        Link {
            state: State::Waiting { at: now },
            backoff: Backoff::new(config),
            attempts: 0,
            connects: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// When the loop should start the next attempt: `None` while one runs or while up.
    pub fn next_attempt(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { at } => Some(at),
            _ => None,
        }
    }

    /// Starts an attempt if one is due; its number is what the result must name.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        match self.state {
            State::Waiting { at } if now >= at => {
                self.attempts += 1;
                self.state = State::Connecting {
                    attempt: self.attempts,
                    since: now,
                };
                Some(self.attempts)
            }
            _ => None,
        }
    }

    /// Attempt `attempt` connected.
    pub fn connected(&mut self, attempt: u64, now: Instant) -> Outcome {
        match self.state {
            State::Connecting {
                attempt: current, ..
            } if current == attempt => {
                self.state = State::Up {
                    attempt,
                    since: now,
                };
                self.connects += 1;
                Outcome::Up
            }
            _ => Outcome::Stale,
        }
    }

    /// Attempt `attempt` failed; `random` is uniform in 0..1 (the jitter).
    pub fn failed(&mut self, attempt: u64, now: Instant, random: f64) -> Outcome {
        match self.state {
            State::Connecting {
                attempt: current, ..
            } if current == attempt => {
                let delay = self.backoff.next_delay(random);
                self.state = State::Waiting { at: now + delay };
                Outcome::Retry(delay)
            }
            _ => Outcome::Stale,
        }
    }

    /// The connection dropped. `None` when there was none to lose (a late report).
    pub fn lost(&mut self, now: Instant, random: f64) -> Option<Duration> {
        let State::Up { since, .. } = self.state else {
            return None;
        };
        if now.saturating_duration_since(since) >= STABLE {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay(random);
        self.state = State::Waiting { at: now + delay };
        Some(delay)
    }

    /// We ended the connection on purpose (new settings, a renewed certificate, a primary host
    /// that went away): connect again after `after`, the backoff starting afresh unless `keep`
    /// asks to keep backing off. A running attempt becomes stale.
    pub fn restart(&mut self, now: Instant, after: Duration, keep_backoff: bool) {
        if !keep_backoff {
            self.backoff.reset();
        }
        self.state = State::Waiting { at: now + after };
    }

    /// The delay the backoff gives next, for a restart that should back off (a primary host
    /// that went offline).
    pub fn backoff_delay(&mut self, random: f64) -> Duration {
        self.backoff.next_delay(random)
    }

    /// New reconnect settings from a reload; the state stays.
    pub fn set_backoff(&mut self, config: &ReconnectConfig) {
        self.backoff = Backoff::new(config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(now: Instant) -> Link {
        Link::new(
            &ReconnectConfig {
                initial_s: 1.0,
                max_s: 8.0,
                jitter: 0.0,
            },
            now,
        )
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_first_attempt_is_due_at_once_and_only_once() {
        let t0 = Instant::now();
        let mut link = link(t0);
        assert_eq!(link.next_attempt(), Some(t0));
        assert_eq!(link.due(t0), Some(1));
        assert_eq!(link.due(t0), None, "one attempt at a time");
        assert_eq!(link.next_attempt(), None);
        assert_eq!(link.connected(1, t0 + S(1)), Outcome::Up);
        assert!(link.is_up());
        assert_eq!(link.connects, 1);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut link = link(t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            let attempt = link.due(now).expect("due");
            let Outcome::Retry(delay) = link.failed(attempt, now, 0.5) else {
                panic!("a failure retries");
            };
            delays.push(delay.as_secs());
            assert_eq!(link.due(now + delay - Duration::from_millis(1)), None);
            now += delay;
        }
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn a_short_lived_connection_keeps_backing_off_a_stable_one_resets() {
        let t0 = Instant::now();
        let mut link = link(t0);
        let mut now = t0;
        for _ in 0..3 {
            let attempt = link.due(now).unwrap();
            if let Outcome::Retry(delay) = link.failed(attempt, now, 0.5) {
                now += delay;
            }
        }
        let attempt = link.due(now).unwrap();
        assert_eq!(link.connected(attempt, now), Outcome::Up);
        // Dropped after 5 s: a flapping broker, the backoff goes on from where it was.
        assert_eq!(link.lost(now + S(5), 0.5), Some(S(8)));
        now += S(13);
        let attempt = link.due(now).unwrap();
        link.connected(attempt, now);
        // Up for STABLE: the next outage starts from initial_s.
        assert_eq!(link.lost(now + STABLE, 0.5), Some(S(1)));
        assert_eq!(
            link.lost(now + STABLE, 0.5),
            None,
            "lost twice is lost once"
        );
    }

    #[test]
    fn a_result_of_an_obsolete_attempt_is_stale() {
        let t0 = Instant::now();
        let mut link = link(t0);
        let first = link.due(t0).unwrap();
        // A reload restarts the link while the first attempt still runs.
        link.restart(t0, Duration::ZERO, false);
        let second = link.due(t0).unwrap();
        assert_ne!(first, second);
        assert_eq!(link.connected(first, t0), Outcome::Stale);
        assert_eq!(link.failed(first, t0, 0.5), Outcome::Stale);
        assert_eq!(link.connected(second, t0), Outcome::Up);
        assert_eq!(link.connects, 1);
    }

    #[test]
    fn a_restart_connects_again_after_the_given_delay() {
        let t0 = Instant::now();
        let mut link = link(t0);
        let attempt = link.due(t0).unwrap();
        link.connected(attempt, t0);
        link.restart(t0 + S(1), S(2), false);
        assert!(!link.is_up());
        assert_eq!(link.due(t0 + S(2)), None);
        assert!(link.due(t0 + S(3)).is_some());
    }
}
