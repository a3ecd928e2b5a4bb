//! GPIO through the kernel's character device (`/dev/gpiochipN`, uAPI v2), with gpiocdev.
//!
//! A line is named by its chip (the name `gpiochip0`, a path, or the chip's label such as
//! `pinctrl-bcm2711`, which stays the same when probe order renumbers the chips) and by its
//! offset or the line's name from the device tree (`GPIO17`). The [`Backend`] trait is the seam:
//! [`linux::Linux`] is the kernel's, `sim::Sim` a simulated chip for tests where no kernel with
//! gpio-sim is at hand.
//!
//! Lines are requested once per process and shared ([`input`], [`output`]): a sampler thread
//! that replaces a stuck one, the `read` command and the edge watcher all use the same request,
//! since the kernel gives a line to one request at a time. The kernel releases a line when the
//! process exits; an output then keeps the level it was last driven to on most chips, but
//! nothing holds it any more.

pub mod linux;
#[cfg(test)]
pub mod sim;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::sync::Lock;
use serde::Deserialize;

/// A line by offset or by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum LineRef {
    Offset(u32),
    Name(String),
}

impl std::fmt::Display for LineRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineRef::Offset(offset) => write!(f, "{offset}"),
            LineRef::Name(name) => write!(f, "\"{name}\""),
        }
    }
}

/// The pull resistor of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bias {
    /// Leave it as the board configured it.
    #[default]
    AsIs,
    Disabled,
    PullUp,
    PullDown,
}

/// A validated `gpio:` input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InputSpec {
    pub chip: String,
    pub line: LineRef,
    pub bias: Bias,
    pub active_low: bool,
    /// Edges wake the sampler at once, once the line has been stable for `debounce`.
    pub edges: bool,
    pub debounce: Duration,
}

/// A validated `gpio:` output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutputSpec {
    pub chip: String,
    pub line: LineRef,
    pub active_low: bool,
}

/// The default settling time of an input with `edges: true`.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(10);

/// Where a line was found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Found {
    pub chip: PathBuf,
    pub offset: u32,
}

/// What a GPIO implementation provides.
pub trait Backend: Send + Sync {
    /// The chip and offset of a line.
    fn find(&self, chip: &str, line: &LineRef) -> Result<Found, String>;
    /// Requests an input (with edge detection on both edges when `spec.edges`).
    fn input(&self, found: &Found, spec: &InputSpec) -> Result<Box<dyn Input>, String>;
    /// Requests a line for output without changing it: its level is kept until the first
    /// [`Output::set`] makes it an output.
    fn output(&self, found: &Found, active_low: bool) -> Result<Box<dyn Output>, String>;
}

/// A requested input line.
pub trait Input: Send + Sync {
    /// The logical value (active-low applied).
    fn value(&self) -> Result<bool, String>;
    /// Waits for an edge event or for `stop` to be raised; true when an event came. Events are
    /// consumed.
    fn wait_edge(&self, stop: &Stop) -> Result<bool, String>;
    /// Lets waiters look at their [`Stop`] again (the simulation's condition variable; the
    /// kernel's backend polls the stop's eventfd and needs nothing).
    fn wake(&self) {}
    /// Consumes every edge event waiting.
    fn drain(&self) -> Result<(), String>;
}

/// A requested output line.
pub trait Output: Send + Sync {
    /// Drives the line to the logical `value` (active-low applied).
    fn set(&self, value: bool) -> Result<(), String>;
    /// The logical value it has now.
    fn get(&self) -> Result<bool, String>;
}

type InputRegistry = Mutex<HashMap<Found, (InputSpec, Weak<dyn Input>)>>;
type OutputRegistry = Mutex<HashMap<Found, Weak<dyn Output>>>;

fn backend_slot() -> &'static Mutex<Arc<dyn Backend>> {
    static BACKEND: OnceLock<Mutex<Arc<dyn Backend>>> = OnceLock::new();
    BACKEND.get_or_init(|| Mutex::new(Arc::new(linux::Linux)))
}

/// The backend in use: the kernel's, or a test's simulated chips.
pub fn backend() -> Arc<dyn Backend> {
    Arc::clone(&backend_slot().locked())
}

/// Replaces the backend (tests).
#[cfg(test)]
pub fn use_backend(backend: Arc<dyn Backend>) {
    *backend_slot().locked() = backend;
    // Lines of the previous backend (a sampler thread of an earlier test may still be ending)
    // are not this one's.
    inputs().locked().clear();
    outputs().locked().clear();
}

fn inputs() -> &'static InputRegistry {
    static INPUTS: OnceLock<InputRegistry> = OnceLock::new();
    INPUTS.get_or_init(InputRegistry::default)
}

fn outputs() -> &'static OutputRegistry {
    static OUTPUTS: OnceLock<OutputRegistry> = OnceLock::new();
    OUTPUTS.get_or_init(OutputRegistry::default)
}

/// The input `spec` names, requested if this process does not hold it yet.
pub fn input(spec: &InputSpec) -> Result<(Found, Arc<dyn Input>), String> {
    let backend = backend();
    let found = backend.find(&spec.chip, &spec.line)?;
    let mut held = inputs().locked();
    held.retain(|_, (_, line)| line.strong_count() > 0);
    if let Some((settings, line)) = held.get(&found) {
        if let Some(line) = line.upgrade() {
            if settings != spec {
                return Err(format!(
                    "line {} of {} is held by this agent with other settings until the old ones are let go",
                    found.offset,
                    found.chip.display()
                ));
            }
            return Ok((found, line));
        }
    }
    let line: Arc<dyn Input> = Arc::from(backend.input(&found, spec)?);
    held.insert(found.clone(), (spec.clone(), Arc::downgrade(&line)));
    Ok((found, line))
}

/// The output `spec` names, requested (its level kept) if this process does not hold it yet.
pub fn output(spec: &OutputSpec) -> Result<Arc<dyn Output>, String> {
    let backend = backend();
    let found = backend.find(&spec.chip, &spec.line)?;
    let mut held = outputs().locked();
    held.retain(|_, line| line.strong_count() > 0);
    if let Some(line) = held.get(&found).and_then(Weak::upgrade) {
        return Ok(line);
    }
    let line: Arc<dyn Output> = Arc::from(backend.output(&found, spec.active_low)?);
    held.insert(found, Arc::downgrade(&line));
    Ok(line)
}

/// `0`/`1` (and `false`/`true`, `off`/`on`) as a logical level.
pub fn level(value: &str) -> Result<bool, String> {
    match value.trim() {
        "0" | "false" | "off" => Ok(false),
        "1" | "true" | "on" => Ok(true),
        other => Err(format!(
            "expected 0, 1, true, false, on or off for a GPIO line, found \"{other}\""
        )),
    }
}

/// One waiter's way out of [`Input::wait_edge`]: a flag, and an eventfd the kernel's backend
/// polls beside the line. Each watch has its own, so two watches of one shared line never take
/// each other's.
pub struct Stop {
    raised: std::sync::atomic::AtomicBool,
    fd: nix::sys::eventfd::EventFd,
}

impl Stop {
    pub fn new() -> Result<Stop, String> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        Ok(Stop {
            raised: std::sync::atomic::AtomicBool::new(false),
            fd: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|err| format!("cannot make an eventfd: {err}"))?,
        })
    }

    pub fn raise(&self) {
        self.raised.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.fd.write(1);
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

/// Watches an input's edges on a thread of its own and calls `wake` once per settled change:
/// after an edge it waits `debounce`, consumes the edges of the bounce, and wakes only when the
/// level differs from the one it last reported. Stops (and joins) when dropped.
pub struct EdgeWatch {
    line: Arc<dyn Input>,
    stop: Arc<Stop>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EdgeWatch {
    pub fn start(
        line: Arc<dyn Input>,
        debounce: Duration,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<EdgeWatch, String> {
        let stop = Arc::new(Stop::new()?);
        let mut last = line.value()?;
        let (thread_line, thread_stop) = (Arc::clone(&line), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("gpio-edges".to_owned())
            .spawn(move || loop {
                let edge = thread_line.wait_edge(&thread_stop);
                if thread_stop.is_raised() {
                    return;
                }
                match edge {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "GPIO edge events failed; the line is read each pass only.");
                        return;
                    }
                }
                std::thread::sleep(debounce);
                let _ = thread_line.drain();
                match thread_line.value() {
                    Ok(now) if now != last => {
                        last = now;
                        wake();
                    }
                    _ => {}
                }
            })
            .map_err(|err| format!("cannot start the edge thread: {err}"))?;
        Ok(EdgeWatch {
            line,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EdgeWatch {
    fn drop(&mut self) {
        self.stop.raise();
        self.line.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
