//! A simulated GPIO chip at the [`Backend`] seam, modelled on the kernel's gpio-sim: each line
//! has a name, an outside drive (a switch that pulls it high or low, or nothing), a pull from the
//! request's bias when nothing drives it, and a request that owns it. Edge events queue like the
//! kernel's, one per level change of an input requested with edge detection.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use super::{Backend, Bias, Found, Input, InputSpec, LineRef, Output, Stop};
use crate::sync::Lock;

#[derive(Default)]
struct Line {
    name: String,
    /// What the outside world drives the line to, if anything.
    external: Option<bool>,
    /// The pull from the request's bias.
    pull: Option<bool>,
    /// Driven by an output request.
    driven: Option<bool>,
    requested: bool,
    edges: bool,
    events: usize,
    last_level: bool,
}

impl Line {
    fn level(&self) -> bool {
        self.driven.or(self.external).or(self.pull).unwrap_or(false)
    }
}

#[derive(Default)]
struct State {
    lines: Vec<Line>,
}

/// One simulated chip: `gpiochip0` labelled `gpio-sim.0-node0`.
pub struct Sim {
    name: String,
    label: String,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Sim {
    pub fn new(names: &[&str]) -> Sim {
        let lines = names
            .iter()
            .map(|name| Line {
                name: (*name).to_owned(),
                ..Line::default()
            })
            .collect();
        Sim {
            name: "gpiochip0".to_owned(),
            label: "gpio-sim.0-node0".to_owned(),
            state: Arc::new((Mutex::new(State { lines }), Condvar::new())),
        }
    }

    /// The outside world drives line `offset` (None lets it float to its pull).
    pub fn drive(&self, offset: u32, level: Option<bool>) {
        let (lock, ready) = &*self.state;
        let mut state = lock.lock().unwrap();
        let line = &mut state.lines[offset as usize];
        line.external = level;
        Self::settle(line);
        ready.notify_all();
    }

    /// The physical level of a line (what a meter on the pin would show).
    pub fn level(&self, offset: u32) -> bool {
        self.state.0.lock().unwrap().lines[offset as usize].level()
    }

    pub fn is_requested(&self, offset: u32) -> bool {
        self.state.0.lock().unwrap().lines[offset as usize].requested
    }

    fn settle(line: &mut Line) {
        let level = line.level();
        if level != line.last_level && line.requested && line.edges {
            line.events += 1;
        }
        line.last_level = level;
    }
}

impl Backend for Sim {
    fn find(&self, chip: &str, line: &LineRef) -> Result<Found, String> {
        if chip != self.name && chip != self.label && chip != "/dev/gpiochip0" {
            return Err(format!(
                "no GPIO chip named or labelled \"{chip}\"; found {} \"{}\"",
                self.name, self.label
            ));
        }
        let state = self.state.0.lock().unwrap();
        let offset = match line {
            LineRef::Offset(offset) if (*offset as usize) < state.lines.len() => *offset,
            LineRef::Offset(offset) => {
                return Err(format!(
                    "/dev/gpiochip0 has lines 0..{}, not {offset}",
                    state.lines.len()
                ))
            }
            LineRef::Name(name) => state
                .lines
                .iter()
                .position(|l| &l.name == name)
                .ok_or_else(|| format!("/dev/gpiochip0 has no line named \"{name}\""))?
                as u32,
        };
        Ok(Found {
            chip: PathBuf::from("/dev/gpiochip0"),
            offset,
        })
    }

    fn input(&self, found: &Found, spec: &InputSpec) -> Result<Box<dyn Input>, String> {
        let mut state = self.state.0.lock().unwrap();
        let line = claim(&mut state, found.offset)?;
        line.edges = spec.edges;
        line.pull = match spec.bias {
            Bias::PullUp => Some(true),
            Bias::PullDown => Some(false),
            Bias::AsIs | Bias::Disabled => None,
        };
        line.events = 0;
        line.last_level = line.level();
        Ok(Box::new(SimInput {
            state: Arc::clone(&self.state),
            offset: found.offset,
            active_low: spec.active_low,
        }))
    }

    fn output(&self, found: &Found, active_low: bool) -> Result<Box<dyn Output>, String> {
        let mut state = self.state.0.lock().unwrap();
        claim(&mut state, found.offset)?;
        Ok(Box::new(SimOutput {
            state: Arc::clone(&self.state),
            offset: found.offset,
            active_low,
        }))
    }
}

/// Line `offset` for a new request: one request per line, as the kernel allows.
fn claim(state: &mut State, offset: u32) -> Result<&mut Line, String> {
    let line = &mut state.lines[offset as usize];
    if line.requested {
        return Err(format!(
            "cannot request line {offset} of /dev/gpiochip0: Device or resource busy"
        ));
    }
    line.requested = true;
    Ok(line)
}

struct SimInput {
    state: Arc<(Mutex<State>, Condvar)>,
    offset: u32,
    active_low: bool,
}

impl Input for SimInput {
    fn value(&self) -> Result<bool, String> {
        let state = self.state.0.lock().unwrap();
        Ok(state.lines[self.offset as usize].level() != self.active_low)
    }

    fn wait_edge(&self, stop: &Stop) -> Result<bool, String> {
        let (lock, ready) = &*self.state;
        let mut state = lock.lock().unwrap();
        loop {
            if stop.is_raised() {
                return Ok(false);
            }
            let line = &mut state.lines[self.offset as usize];
            if line.events > 0 {
                line.events = 0;
                return Ok(true);
            }
            state = ready.wait(state).unwrap();
        }
    }

    fn wake(&self) {
        // Taken and released so a waiter between its look at the stop and its wait sees it.
        drop(self.state.0.lock().unwrap());
        self.state.1.notify_all();
    }

    fn drain(&self) -> Result<(), String> {
        self.state.0.lock().unwrap().lines[self.offset as usize].events = 0;
        Ok(())
    }
}

impl Drop for SimInput {
    fn drop(&mut self) {
        let mut state = self.state.0.lock().unwrap();
        let line = &mut state.lines[self.offset as usize];
        line.requested = false;
        line.edges = false;
        line.pull = None;
    }
}

struct SimOutput {
    state: Arc<(Mutex<State>, Condvar)>,
    offset: u32,
    active_low: bool,
}

impl Output for SimOutput {
    fn set(&self, value: bool) -> Result<(), String> {
        let mut state = self.state.0.lock().unwrap();
        state.lines[self.offset as usize].driven = Some(value != self.active_low);
        Ok(())
    }

    fn get(&self) -> Result<bool, String> {
        let state = self.state.0.lock().unwrap();
        Ok(state.lines[self.offset as usize].level() != self.active_low)
    }
}

impl Drop for SimOutput {
    fn drop(&mut self) {
        // Released: nothing drives it any more (the kernel's gpio-sim keeps the level; a real
        // pin with a pull resistor goes to the pull).
        self.state.0.lock().unwrap().lines[self.offset as usize].requested = false;
    }
}

/// One test at a time may swap the process's GPIO backend: this lock is held while one does.
static BACKEND_LOCK: Mutex<()> = Mutex::new(());

/// Installs a simulated chip with lines named `names` as the process's GPIO backend, for as long
/// as the guard lives.
pub fn install(names: &[&str]) -> (std::sync::MutexGuard<'static, ()>, Arc<Sim>) {
    let guard = BACKEND_LOCK.locked();
    let sim = Arc::new(Sim::new(names));
    super::use_backend(Arc::clone(&sim) as Arc<dyn Backend>);
    (guard, sim)
}
