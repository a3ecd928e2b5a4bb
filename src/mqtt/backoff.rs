//! Reconnect delays: exponential from `initial_s` to `max_s`, each with random jitter, so a fleet
//! restarted together does not reconnect in lockstep. Pure: the random number is an argument.

use std::time::Duration;

use crate::config::ReconnectConfig;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial_s: f64,
    max_s: f64,
    jitter: f64,
    /// Failed attempts since the last successful connection.
    attempt: u32,
}

impl Backoff {
    pub fn new(config: &ReconnectConfig) -> Backoff {
        Backoff {
            initial_s: config.initial_s,
            max_s: config.max_s,
            jitter: config.jitter,
            attempt: 0,
        }
    }

    /// The delay before the next attempt; `random` is uniform in 0..1. The base doubles per
    /// attempt up to `max_s`; the jitter spreads it by ±`jitter` of itself.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let base = (self.initial_s * 2f64.powi(self.attempt.min(30) as i32)).min(self.max_s);
        self.attempt = self.attempt.saturating_add(1);
        let spread = 1.0 + self.jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * spread).max(0.0))
    }

    /// Called once a connection is up: the next outage starts from `initial_s` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(initial_s: f64, max_s: f64, jitter: f64, randoms: &[f64], expected_s: &[f64]) {
        let mut backoff = Backoff::new(&ReconnectConfig {
            initial_s,
            max_s,
            jitter,
        });
        let got: Vec<f64> = randoms
            .iter()
            .map(|r| backoff.next_delay(*r).as_secs_f64())
            .collect();
        assert_eq!(got, expected_s);
    }

    #[test]
    fn delays() {
        // No jitter: doubling up to the ceiling.
        check(1.0, 10.0, 0.0, &[0.3; 6], &[1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);
        // Jitter 0.5: random 0 gives half the base, 1 one and a half, 0.5 the base.
        check(2.0, 120.0, 0.5, &[0.0, 1.0, 0.5], &[1.0, 6.0, 8.0]);
        // Many attempts never overflow.
        let mut backoff = Backoff::new(&ReconnectConfig::default());
        for _ in 0..1000 {
            backoff.next_delay(0.5);
        }
        assert_eq!(backoff.next_delay(0.5), Duration::from_secs(120));
        backoff.reset();
        assert_eq!(backoff.next_delay(0.5), Duration::from_secs(1));
    }
}
