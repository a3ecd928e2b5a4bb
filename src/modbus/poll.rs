//! The Modbus requests of one set of sensors, queued once per pass and waited for by each
//! sensor with a deadline.
//!
//! At the start of a pass [`Poll::kick`] queues every request on its line (a request whose
//! previous job has not run yet is not queued twice: a slow line never builds a backlog). Each
//! sensor then takes its registers with [`Poll::take`]: it waits until the pass's kick plus
//! the device's timeout for a device that has been answering, and not at all for one that has
//! not (it gets that device's last error, or this pass's answer if it is already there). So a
//! device that stops answering delays one pass by its own timeout at most, and afterwards
//! costs the other sensors nothing; its line keeps asking it every pass, and the first answer
//! puts it back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::line::{self, Line, Outcome, Slot, Work};
use crate::sync::Lock;

/// Why the device did not answer, if it did not, as the failure a waiting sensor gets.
fn lost(outcome: &Outcome) -> Option<Failure> {
    line::lost(outcome).map(Failure::NoAnswer)
}
use super::plan::{self, Request};
use super::{Failure, Point};

/// The requests of one set of points.
pub struct Poll {
    requests: Vec<Planned>,
    /// For each point: (request, part).
    places: Vec<(usize, usize)>,
}

struct Planned {
    line: Arc<Line>,
    request: Request,
    /// The (address, count) of each part, shared by every pass's job.
    parts: Arc<[(u16, u16)]>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    slot: Option<Arc<Slot>>,
    kicked: Option<Instant>,
    /// The device did not answer the last time: not waited for.
    failing: Option<Failure>,
}

impl Poll {
    /// The requests that read `points` (in the order given), on their shared lines.
    pub fn new(points: &[Point]) -> Poll {
        let requests = plan::plan(points);
        let mut places = vec![(0, 0); points.len()];
        for (r, request) in requests.iter().enumerate() {
            for (p, &(index, _, _)) in request.parts.iter().enumerate() {
                places[index] = (r, p);
            }
        }
        Poll {
            requests: requests
                .into_iter()
                .map(|request| Planned {
                    line: line::open(&request.transport),
                    parts: request
                        .parts
                        .iter()
                        .map(|&(_, address, count)| (address, count))
                        .collect(),
                    request,
                    state: Mutex::default(),
                })
                .collect(),
            places,
        }
    }

    /// How many requests a pass makes.
    pub fn requests(&self) -> usize {
        self.requests.len()
    }

    /// Queues this pass's requests, those of answering devices first.
    pub fn kick(&self) {
        let now = Instant::now();
        for failing_last in [false, true] {
            for planned in &self.requests {
                let mut state = planned.lock();
                if state.failing.is_some() != failing_last {
                    continue;
                }
                if let Some(slot) = &state.slot {
                    match slot.wait_until(now) {
                        // Not run yet: never queued twice.
                        None => continue,
                        // Done since the last take: whether the device answers counts for
                        // whether this pass waits for it.
                        Some(outcome) => state.failing = lost(&outcome),
                    }
                }
                let request = &planned.request;
                state.slot = Some(planned.line.submit(
                    request.unit,
                    Work::Read {
                        table: request.table,
                        start: request.start,
                        count: request.count,
                        parts: Arc::clone(&planned.parts),
                    },
                    request.timeout,
                ));
                state.kicked = Some(now);
            }
        }
    }

    /// The registers of point `index` for this pass (kicking first if nobody has), handed to
    /// `decode` where they lie: nothing is copied or allocated for a point that answers.
    pub fn take<T>(&self, index: usize, decode: impl FnOnce(&[u16]) -> T) -> Result<T, Failure> {
        let (r, part) = self.places[index];
        let planned = &self.requests[r];
        let (slot, deadline, failing) = {
            let mut state = planned.lock();
            if state.slot.is_none() {
                drop(state);
                self.kick();
                state = planned.lock();
            }
            let kicked = state.kicked.unwrap_or_else(Instant::now);
            // A little over the device's timeout: the line's own timeout fires first and says
            // why (no answer, a bad CRC, a refused connection).
            let deadline = kicked + planned.request.timeout + Duration::from_millis(100);
            (state.slot.clone(), deadline, state.failing.clone())
        };
        let Some(slot) = slot else {
            return Err(Failure::NoAnswer("not asked".to_owned()));
        };
        let outcome: Option<Arc<Outcome>> = match &failing {
            Some(_) => slot.wait_until(Instant::now()),
            None => slot.wait_until(deadline),
        };
        let mut state = planned.lock();
        match outcome {
            Some(outcome) => {
                state.failing = lost(&outcome);
                drop(state);
                match &*outcome {
                    Ok(answer) => answer.part(part).map(decode),
                    Err(failure) => Err(failure.clone()),
                }
            }
            None => {
                if let Some(failure) = failing {
                    return Err(failure);
                }
                let failure = Failure::NoAnswer(format!(
                    "unit {}: no answer within {} s (its line is busy or stuck)",
                    planned.request.unit,
                    planned.request.timeout.as_secs_f64()
                ));
                state.failing = Some(failure.clone());
                Err(failure)
            }
        }
    }
}

impl Planned {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }
}
