//! The one actuator executor: remote commands (plain mode) and Sparkplug NCMD writes, off the
//! event loop. The loop only parses (pure) and queues; execution runs on the blocking pool, one
//! job at a time per actuator in arrival order, different actuators side by side, each with a
//! deadline. A command's answer comes back as an event and goes into the outbox like any
//! message; an NCMD write's result comes back as the value the actuator holds, for NDATA.
//!
//! NCMD writes carry no id and expect no answer: a metric is a set-point, so while one write
//! to an actuator runs, a newer one replaces the one waiting (the last value sent is the one
//! that counts, and a flood of NCMDs never piles up jobs). The rate applies per NCMD message.
//!
//! Every command Paho acknowledged is answered: executed, refused with a reason, `"busy"` when
//! more arrive than the agent takes (`broker.command_rate`, or too many waiting for one
//! actuator), `"timed out"` when an actuator does not return within its deadline, or, when the
//! agent stops first, refused as not executed. None vanishes.

use std::collections::{HashMap, VecDeque};

use super::delivery::TokenBucket;
use crate::commands::{self, Action, Command, Response};
use crate::config::ActuatorSpec;

pub use super::execute::{spawn, Context};

/// Commands waiting for one actuator at most; more are answered busy.
pub const MAX_WAITING: usize = 8;

/// Who asked for a job, and so where its end goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A command on `{prefix}/commands/{name}`: answered on `{prefix}/responses`.
    Command,
    /// A Sparkplug NCMD write: its result is the value the actuator holds (`Event::Written`).
    Ncmd,
}

/// One queued piece of work for an actuator (or a built-in).
#[derive(Debug, Clone)]
pub struct Job {
    pub command: Command,
    pub origin: Origin,
}

/// The jobs waiting and running, per actuator (or built-in).
pub struct Commands {
    waiting: HashMap<String, VecDeque<Job>>,
    /// The job running per actuator: (id, name, origin).
    running: HashMap<String, (String, String, Origin)>,
    bucket: TokenBucket,
}

impl Commands {
    pub fn new(rate: f64) -> Commands {
        Commands {
            waiting: HashMap::new(),
            running: HashMap::new(),
            bucket: TokenBucket::new(rate, tokio::time::Instant::now()),
        }
    }

    pub fn set_rate(&mut self, rate: f64) {
        self.bucket = TokenBucket::new(rate, tokio::time::Instant::now());
    }

    /// A message on `{prefix}/commands/{name}`: an answer at once (refused, busy), or `None`
    /// when it was queued.
    pub fn arrive(
        &mut self,
        name: &str,
        payload: &[u8],
        retained: bool,
        actuators: &[ActuatorSpec],
    ) -> Option<Response> {
        let command = match commands::parse(name, payload, actuators) {
            Ok(command) => command,
            Err(refusal) => return Some(refusal),
        };
        if retained {
            // A retained command is replayed at every subscribe: running it would repeat an old
            // order at each reconnect.
            return Some(Response::refused(
                Some(&command.id),
                &command.name,
                "refused: the command was published with the retain flag (replayed at every subscribe); publish commands without it",
            ));
        }
        if !self.bucket.take(tokio::time::Instant::now()) {
            return Some(busy(
                &command,
                "more than broker.command_rate commands per second",
            ));
        }
        let queue = self.waiting.entry(command.name.clone()).or_default();
        if queue.len() >= MAX_WAITING {
            return Some(busy(
                &command,
                "too many commands waiting for this actuator",
            ));
        }
        queue.push_back(Job {
            command,
            origin: Origin::Command,
        });
        None
    }

    /// The writes of one Sparkplug NCMD (actuator name, value), in order: each checked against
    /// the allow-list and queued for its actuator, a newer write replacing one that waits. The
    /// reasons for writes refused come back, for the log.
    pub fn arrive_ncmd(
        &mut self,
        writes: Vec<(String, String)>,
        actuators: &[ActuatorSpec],
    ) -> Vec<String> {
        if writes.is_empty() {
            return Vec::new();
        }
        if !self.bucket.take(tokio::time::Instant::now()) {
            return vec![format!(
                "busy: more than broker.command_rate NCMDs per second; {} write(s) not made",
                writes.len()
            )];
        }
        let mut refused = Vec::new();
        for (name, value) in writes {
            let Some(actuator) = actuators.iter().find(|a| a.name == name) else {
                refused.push(format!(
                    "{}: no such actuator; not written",
                    name.escape_debug()
                ));
                continue;
            };
            let value = match commands::allowed_value(actuator, Some(value)) {
                Ok(value) => value,
                Err(why) => {
                    refused.push(format!("{name}: {why}"));
                    continue;
                }
            };
            let job = Job {
                command: Command {
                    id: String::new(),
                    name: name.clone(),
                    action: Action::Write {
                        target: actuator.target.clone(),
                        value,
                    },
                    expires_ts: None,
                },
                origin: Origin::Ncmd,
            };
            let queue = self.waiting.entry(name).or_default();
            match queue
                .iter_mut()
                .find(|waiting| waiting.origin == Origin::Ncmd)
            {
                Some(waiting) => *waiting = job,
                None => queue.push_back(job),
            }
        }
        refused
    }

    /// The jobs that can start now: the first waiting of every actuator that runs nothing.
    pub fn ready(&mut self) -> Vec<Job> {
        let mut ready = Vec::new();
        for (key, queue) in &mut self.waiting {
            if self.running.contains_key(key) {
                continue;
            }
            if let Some(job) = queue.pop_front() {
                self.running.insert(
                    key.clone(),
                    (job.command.id.clone(), job.command.name.clone(), job.origin),
                );
                ready.push(job);
            }
        }
        self.waiting.retain(|_, queue| !queue.is_empty());
        ready
    }

    /// The actuator `key` is free again.
    pub fn finished(&mut self, key: &str) {
        self.running.remove(key);
    }

    /// Whether anything waits or runs.
    pub fn idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// The agent stops: an answer for every command that waits (not executed) and every one
    /// that still runs (its outcome unknown; the ledger says so too). NCMD writes expect no
    /// answer; those waiting are not made.
    pub fn stop(&mut self) -> Vec<Response> {
        let mut answers = Vec::new();
        for (_, queue) in self.waiting.drain() {
            for job in queue {
                if job.origin == Origin::Command {
                    answers.push(Response::refused(
                        Some(&job.command.id),
                        &job.command.name,
                        "the agent stopped before running it; not executed",
                    ));
                }
            }
        }
        for (_, (id, name, origin)) in self.running.drain() {
            if origin == Origin::Command {
                answers.push(Response::refused(
                    Some(&id),
                    &name,
                    "the agent stopped while running it; its outcome is unknown",
                ));
            }
        }
        answers
    }
}

fn busy(command: &Command, why: &str) -> Response {
    let mut response = Response::refused(Some(&command.id), &command.name, "busy");
    response.data.insert(
        "reason".to_owned(),
        format!("{why}; send it again later").into(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actuators() -> Vec<ActuatorSpec> {
        vec![ActuatorSpec {
            key: "actuators[0]".to_owned(),
            name: "fan".to_owned(),
            target: crate::actuators::Target::File("/nonexistent/fan".into()),
            values: vec!["0".to_owned(), "1".to_owned()],
        }]
    }

    fn payload(id: usize) -> Vec<u8> {
        format!(r#"{{"id":"c{id}","value":"1"}}"#).into_bytes()
    }

    #[tokio::test(start_paused = true)]
    async fn one_at_a_time_per_actuator_busy_beyond_the_queue_and_the_rate() {
        let mut commands = Commands::new(100.0);
        let mut answers = Vec::new();
        for id in 0..20 {
            if let Some(answer) = commands.arrive("fan", &payload(id), false, &actuators()) {
                answers.push(answer);
            }
        }
        assert_eq!(
            answers.len(),
            20 - MAX_WAITING,
            "the rest are answered busy"
        );
        assert!(answers
            .iter()
            .all(|a| !a.ok && a.error.as_deref() == Some("busy")));
        let first = commands.ready();
        assert_eq!(first.len(), 1, "one per actuator");
        assert_eq!(first[0].command.id, "c0");
        assert!(commands.ready().is_empty(), "fan still runs");
        commands.finished("fan");
        assert_eq!(commands.ready()[0].command.id, "c1", "in arrival order");
        let stopped = commands.stop();
        assert_eq!(
            stopped.len(),
            MAX_WAITING - 1,
            "6 waiting and 1 running answered"
        );
        assert!(commands.idle());
    }

    /// Issue 31: 100 NCMDs each writing `fan = 1, fan = 0` ran in parallel and in no order
    /// (the file ended at 1 in 96 of 100). Through the one executor they wait for the write
    /// that runs, a newer one replacing the one waiting: one job at a time, and the last value
    /// is the one written last.
    #[tokio::test(start_paused = true)]
    async fn ncmd_writes_run_one_at_a_time_and_the_last_value_wins() {
        let mut commands = Commands::new(1000.0);
        let mut started = Vec::new();
        for round in 0..100 {
            let refused = commands.arrive_ncmd(
                vec![
                    ("fan".to_owned(), "1".to_owned()),
                    ("fan".to_owned(), "0".to_owned()),
                ],
                &actuators(),
            );
            assert!(refused.is_empty(), "{refused:?}");
            let ready = commands.ready();
            assert!(ready.len() <= 1, "one job per actuator");
            started.extend(ready);
            if round % 10 == 9 {
                commands.finished("fan");
            }
        }
        assert!(
            commands
                .waiting
                .get("fan")
                .is_some_and(|queue| queue.len() == 1),
            "one write waits"
        );
        commands.finished("fan");
        let last = commands.ready();
        let Action::Write { value, .. } = &last[0].command.action else {
            panic!("a write");
        };
        assert_eq!(value, "0", "the last value sent is the last written");
        assert!(started.len() <= 11, "{} jobs for 200 writes", started.len());
        // Unknown actuators and values outside the allow-list are refused, never queued.
        let refused = commands.arrive_ncmd(
            vec![
                ("pump".to_owned(), "1".to_owned()),
                ("fan".to_owned(), "7".to_owned()),
            ],
            &actuators(),
        );
        assert_eq!(refused.len(), 2, "{refused:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_answers_busy_and_refills() {
        let mut commands = Commands::new(2.0);
        let busy = (0..5)
            .filter_map(|id| {
                let key = format!("k{id}");
                let actuators = vec![ActuatorSpec {
                    key: "actuators[0]".to_owned(),
                    name: key.clone(),
                    target: crate::actuators::Target::File("/nonexistent".into()),
                    values: vec!["1".to_owned()],
                }];
                commands.arrive(&key, &payload(id), false, &actuators)
            })
            .count();
        assert_eq!(busy, 3, "a burst of 2, then busy");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(commands
            .arrive("fan", &payload(9), false, &actuators())
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_retained_command_is_refused() {
        let mut commands = Commands::new(10.0);
        let answer = commands
            .arrive("fan", &payload(1), true, &actuators())
            .expect("answered at once");
        assert!(answer.error.unwrap().contains("retain"));
        assert!(commands.idle());
    }
}
