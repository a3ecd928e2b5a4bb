//! Running one job of the executor (`daemon::commands`) on the blocking pool, with its deadline:
//! a command (dedupe, expiry, the action, the answer) or a Sparkplug NCMD write (the value the
//! actuator holds afterwards). What ends comes back to the loop as an event.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::commands::{Job, Origin};
use super::event::Event;
use crate::commands::{Action, Command, Response};
use crate::config::SensorSpec;
use crate::dedupe::Dedupe;
use crate::model::Sample;
use crate::sensors::Sensors;
use crate::sync::Lock;

/// The largest reading a `read` answer carries: brokers refuse larger messages (AWS IoT Core
/// at 128 KB), and an answer that cannot be delivered is no answer.
const MAX_READ_ANSWER: usize = 128 * 1024;

/// How long one command may run before it is answered as timed out.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// What execution needs, apart from the loop.
#[derive(Clone)]
pub struct Context {
    pub started: Instant,
    pub specs: std::sync::Arc<[SensorSpec]>,
    pub sysfs_root: PathBuf,
    pub ledger: Arc<Mutex<Dedupe>>,
    /// The sensors whose read is stuck (shared with the sampler): `read` does not block on
    /// them again.
    pub stuck: crate::sensors::Stuck,
}

/// Runs `job` on the blocking pool with a deadline. A command's answer comes back as
/// `Event::Answered`; an NCMD write's result as `Event::Written`; when either timed out,
/// `Event::Finished` follows once the job has returned (its actuator takes no more until then).
pub fn spawn(job: Job, context: Context, events: mpsc::Sender<Event>) {
    let Job { command, origin } = job;
    match origin {
        Origin::Command => {
            let key = command.name.clone();
            let id = command.id.clone();
            spawn_job(
                key,
                id,
                move || answer(&command, &context),
                DEADLINE,
                events,
            );
        }
        Origin::Ncmd => spawn_write(command, events),
    }
}

/// An NCMD write: the value the actuator holds afterwards comes back as `Event::Written`.
fn spawn_write(command: Command, events: mpsc::Sender<Event>) {
    let Action::Write { target, value } = command.action else {
        return;
    };
    let actuator = command.name;
    tokio::spawn(async move {
        let mut job = tokio::task::spawn_blocking(move || {
            let result = crate::actuators::set(&target, &value).map(|_| value.clone());
            let now = match (&target, &result) {
                // A Modbus register is not read back; what was acknowledged is what it holds.
                (crate::actuators::Target::Modbus(_), Ok(value)) => Some(value.clone()),
                _ => crate::actuators::current(&target),
            };
            (result, now)
        });
        match tokio::time::timeout(DEADLINE, &mut job).await {
            Ok(done) => {
                let (result, value) =
                    done.unwrap_or_else(|_| (Err("internal error while writing".to_owned()), None));
                let _ = events
                    .send(Event::Written {
                        actuator,
                        result,
                        value,
                        finished: true,
                    })
                    .await;
            }
            Err(_) => {
                let _ = events
                    .send(Event::Written {
                        actuator: actuator.clone(),
                        result: Err(format!(
                            "no result within {} s; the actuator may be stuck and takes no more writes until it returns",
                            DEADLINE.as_secs()
                        )),
                        value: None,
                        finished: false,
                    })
                    .await;
                let _ = job.await;
                let _ = events.send(Event::Finished { key: actuator }).await;
            }
        }
    });
}

/// The deadline and the events of [`spawn`] around any blocking `job`.
fn spawn_job(
    key: String,
    id: String,
    job: impl FnOnce() -> (Response, bool) + Send + 'static,
    deadline: Duration,
    events: mpsc::Sender<Event>,
) {
    tokio::spawn(async move {
        let mut job = tokio::task::spawn_blocking(job);
        match tokio::time::timeout(deadline, &mut job).await {
            Ok(result) => {
                let (response, record) = result.unwrap_or_else(|_| {
                    (
                        Response::refused(Some(&id), &key, "internal error while executing"),
                        false,
                    )
                });
                let _ = events
                    .send(Event::Answered {
                        key,
                        response,
                        record,
                        finished: true,
                    })
                    .await;
            }
            Err(_) => {
                let response = Response::refused(
                    Some(&id),
                    &key,
                    format!(
                        "timed out: no result within {} s; the actuator may be stuck and the outcome is unknown",
                        deadline.as_secs()
                    ),
                );
                let _ = events
                    .send(Event::Answered {
                        key: key.clone(),
                        response,
                        record: true,
                        finished: false,
                    })
                    .await;
                let _ = job.await;
                let _ = events.send(Event::Finished { key }).await;
            }
        }
    });
}

/// Answers one command: a duplicate (the original answer, marked), expired, or executed. The id
/// is saved as executed before the action runs, so a restart never runs it twice; the answer
/// itself is recorded by the store once it is in the outbox. The flag says whether to record it.
fn answer(command: &Command, context: &Context) -> (Response, bool) {
    {
        let mut ledger = context.ledger.locked();
        if let Some(previous) = ledger.get(&command.id) {
            let mut response = previous.clone();
            response.duplicate = true;
            return (response, false);
        }
        let now_ms = crate::model::now_ms();
        if let Err(why) = expiry(command.expires_ts, now_ms, crate::clock::synced(now_ms)) {
            return (
                Response::refused(Some(&command.id), &command.name, why),
                false,
            );
        }
        let interrupted = Response::refused(
            Some(&command.id),
            &command.name,
            "the agent stopped while running it; not run again",
        );
        if let Err(err) = ledger.record(&command.id, &interrupted) {
            tracing::error!(error = %err, "Cannot save executed command ids; a restart could run this command again.");
        }
    }
    (execute(command, context), true)
}

/// Whether a command with `expires_ts` may run at `now_ms`: not once it expired, and not while
/// the clock is not believed (`synced` false): a board that booted in 1970 must not run a
/// command that expired last week.
pub(super) fn expiry(expires_ts: Option<u64>, now_ms: u64, synced: bool) -> Result<(), String> {
    let Some(expires) = expires_ts else {
        return Ok(());
    };
    if !synced {
        return Err(format!(
            "refused: the command carries expires_ts {expires} but the device's clock is not synchronised (time_synced false), so its expiry cannot be judged; not executed"
        ));
    }
    if now_ms > expires {
        return Err(format!(
            "expired: expires_ts {expires} is {} s in the past; not executed",
            (now_ms - expires) / 1000
        ));
    }
    Ok(())
}

fn execute(command: &Command, context: &Context) -> Response {
    let mut response = Response::ok(&command.id, &command.name);
    match &command.action {
        Action::Ping => {
            response.data.insert(
                "uptime_s".to_owned(),
                context.started.elapsed().as_secs().into(),
            );
            response
                .data
                .insert("version".to_owned(), crate::VERSION.into());
        }
        Action::Read => {
            let mut sensors = Sensors::new(&context.specs, &context.sysfs_root);
            let sample: Sample = sensors.read_all_within(crate::sensors::DEADLINE, &context.stuck);
            let json = sample.to_json();
            if json.len() > MAX_READ_ANSWER {
                return Response::refused(
                    Some(&command.id),
                    &command.name,
                    format!(
                        "the reading is {} bytes, more than an answer carries ({MAX_READ_ANSWER}); `fieldagent read` on the device shows it",
                        json.len()
                    ),
                );
            }
            let reading: serde_json::Value =
                serde_json::from_str(&json).expect("read --json output is JSON");
            if let serde_json::Value::Object(map) = reading {
                response.data.extend(map);
            }
        }
        Action::Write { target, value } => {
            match crate::actuators::set(target, value) {
                Ok(said) => {
                    if let Some(said) = said {
                        response.data.insert("device".to_owned(), said.into());
                    }
                }
                Err(reason) => {
                    return Response::refused(Some(&command.id), &command.name, reason);
                }
            }
            response
                .data
                .insert("value".to_owned(), value.clone().into());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command whose actuator does not return is answered as timed out at the deadline, and
    /// its actuator is free only once the job has returned. (Real time: tokio's paused clock
    /// does not advance while a blocking task runs.)
    #[tokio::test]
    async fn a_stuck_job_is_answered_at_its_deadline_and_frees_its_actuator_when_it_returns() {
        let (events_tx, mut events) = mpsc::channel(4);
        let (release, released) = std::sync::mpsc::channel::<()>();
        spawn_job(
            "fan".to_owned(),
            "c1".to_owned(),
            move || {
                let _ = released.recv();
                (Response::ok("c1", "fan"), true)
            },
            Duration::from_millis(200),
            events_tx,
        );
        match events.recv().await {
            Some(Event::Answered {
                key,
                response,
                record,
                finished,
            }) => {
                assert_eq!(key, "fan");
                assert!(!response.ok);
                assert!(response
                    .error
                    .unwrap()
                    .starts_with("timed out: no result within"));
                assert!(record, "the ledger says it may have run");
                assert!(!finished, "the actuator is still busy");
            }
            other => panic!("{other:?}"),
        }
        release.send(()).unwrap();
        match events.recv().await {
            Some(Event::Finished { key }) => assert_eq!(key, "fan"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_is_judged_only_by_a_believed_clock() {
        for (expires, now, synced, expected) in [
            (None, 5_000, false, Ok(())),
            (Some(10_000), 5_000, true, Ok(())),
            (
                Some(10_000),
                15_000,
                true,
                Err("expired: expires_ts 10000 is 5 s in the past"),
            ),
            // Issue 20: a board that booted in 1970 (or at its build date) must not judge it.
            (Some(10_000), 5_000, false, Err("clock is not synchronised")),
            (
                Some(10_000),
                15_000,
                false,
                Err("clock is not synchronised"),
            ),
        ] {
            let got = expiry(expires, now, synced);
            match (got, expected) {
                (Ok(()), Ok(())) => {}
                (Err(why), Err(part)) => assert!(why.contains(part), "{why}"),
                (got, expected) => {
                    panic!("{expires:?} {now} {synced}: {got:?}, expected {expected:?}")
                }
            }
        }
    }
}
