//! The sampler: reads every sensor each `telemetry.interval_s` on a thread of its own (reads
//! block), evaluates the alert rules on the same sample, hands alert events to the store and
//! telemetry to the event loop.
//!
//! A stuck part stops only itself. The thread says which sensor it is reading and since when;
//! the event loop looks at that every [`CHECK`] (5 s). A read that has taken longer than
//! [`crate::sensors::DEADLINE`] retires the thread (it exits when the read returns, without
//! evaluating or sending anything) and starts another in its place, which reports the stuck
//! sensor as a `Timeout` error (and so `sensor_fault`) until the first thread's read returns.
//! The other sensors go on being read, and the watchdog goes on being petted: a wedged sensor is
//! not a reason to restart the agent into the same wedge.
//!
//! The alert rules and their state live in one [`AlertBook`] shared by every sampler thread of
//! the daemon's life, reloads included; a thread evaluates only while the book's generation is
//! its own, so two threads never make events from the same state.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::event::{Event, SaveAlertState};
use super::store::{Request, StoreHandle};
use crate::alerts::{AlertEvent, Alerts, SavedState};
use crate::config::ValidConfig;
use crate::model::Sample;
use crate::sensors::{Sensors, DEADLINE};
use crate::sparkplug::Reading;
use crate::sync::Lock;

/// How often the event loop looks for a stuck read: on its housekeeping tick, which it has
/// anyway (a timer of its own would cost wakeups all the time for a rare event).
pub const CHECK: Duration = Duration::from_secs(5);

/// Telemetry between the sampler and the event loop. Full means the loop is behind; the sampler
/// then drops the newest and counts it.
pub const TELEMETRY_QUEUE: usize = 8;

/// The alert state in `state_dir`.
pub const ALERTS_FILE: &str = "alerts.json";

/// What one sampling pass hands the event loop.
#[derive(Debug)]
pub enum Pass {
    /// Plain mode: the telemetry payload, in parts when it is larger than
    /// `telemetry.max_message_bytes`.
    Json(Vec<String>),
    /// Sparkplug mode: the values and the names of failing sensors.
    Reading(Reading),
}

/// Where alert events go.
#[derive(Clone)]
pub enum AlertSink {
    /// Plain mode: into the outbox on `topic`, then the state is saved (the store does both).
    Outbox { topic: Arc<str> },
    /// Sparkplug mode: to the event loop (state-based; the next birth carries the state), the
    /// state saved by the store.
    Loop(mpsc::Sender<Event>),
}

/// The alert rules and their state, shared by every sampler thread of the daemon.
pub struct AlertBook {
    alerts: Alerts,
    /// Raised by every new sampler thread; an older thread that sees a newer one exits.
    generation: u64,
    path: PathBuf,
}

impl AlertBook {
    /// The rules of `config` with the state saved in `state_dir`.
    pub fn load(config: &ValidConfig, client_id: &str) -> AlertBook {
        let path = config.config().state_dir.join(ALERTS_FILE);
        let saved: SavedState = crate::state::load(&path);
        AlertBook {
            alerts: Alerts::new(client_id, &config.config().alerts, saved),
            generation: 0,
            path,
        }
    }

    /// Catches up with alert events the outbox holds beyond the saved state (a power cut
    /// after they were queued, before the state was saved), and saves the state if it moved.
    pub fn catch_up<'a>(&mut self, events: impl IntoIterator<Item = &'a [u8]>) {
        let before = self.alerts.state().counter;
        if !self.alerts.catch_up(events) {
            return;
        }
        let state = self.alerts.state();
        tracing::warn!(
            from = before,
            to = state.counter,
            raised = state.raised.len() + state.faults.len(),
            "Alert state behind the outbox (a power cut between them?): caught up from the queued events."
        );
        if let Err(err) = crate::state::save(&self.path, state) {
            tracing::error!(path = %self.path.display(), error = %err, "Cannot save alert state.");
        }
    }

    /// The state as it stands (what the next birth should say, in Sparkplug mode).
    pub fn state(&self) -> &SavedState {
        self.alerts.state()
    }
}

/// Counters the sampler keeps for health, across threads and reloads.
#[derive(Default)]
pub struct SamplerStats {
    /// Telemetry dropped because the event loop's queue was full.
    pub queue_full: AtomicU64,
    /// Failed reads per sensor value since start.
    pub sensor_errors: Mutex<BTreeMap<String, u64>>,
}

/// Where one thread stands, written by it and read by the event loop.
struct Progress {
    /// The sensor being read, plus one; 0 between reads.
    reading: AtomicUsize,
    /// When that read started (`clock::monotonic_ms`).
    since_ms: AtomicU64,
    /// When the last pass ended (`clock::monotonic_ms`).
    last_pass_ms: AtomicU64,
    /// Set by the loop: exit after the current read.
    retired: AtomicBool,
    /// Set by the thread when the read the loop found stuck has returned (see `Stuck::mark`).
    returned: AtomicBool,
    /// The sensor the loop marked stuck when it retired this thread, plus one; 0 while none.
    marked: AtomicUsize,
}

/// What a sampler thread needs, shared with its replacements.
#[derive(Clone)]
struct Setup {
    config: ValidConfig,
    book: Arc<Mutex<AlertBook>>,
    stats: Arc<SamplerStats>,
    store: StoreHandle,
    alerts: AlertSink,
    passes: mpsc::Sender<Pass>,
    json: bool,
    /// Sensors whose read has not returned (shared with every sampler thread, across reloads,
    /// and with `read`): skipped with a `Timeout` error.
    stuck: crate::sensors::Stuck,
}

/// What the sampler thread's wait between passes can be woken by.
enum Signal {
    /// End the thread.
    Stop,
    /// A source changed between passes (a GPIO edge): make a pass now.
    Wake,
}

/// The running sampler: its current thread and how to stop it.
pub struct Sampler {
    setup: Setup,
    progress: Arc<Progress>,
    stop: std_mpsc::Sender<Signal>,
}

impl Sampler {
    /// Starts sampling `config` with the rules and state of `book`.
    pub fn start(
        config: &ValidConfig,
        book: Arc<Mutex<AlertBook>>,
        stats: Arc<SamplerStats>,
        store: StoreHandle,
        alerts: AlertSink,
        passes: mpsc::Sender<Pass>,
        stuck: crate::sensors::Stuck,
    ) -> Sampler {
        let json = matches!(alerts, AlertSink::Outbox { .. });
        let setup = Setup {
            config: config.clone(),
            book,
            stats,
            store,
            alerts,
            passes,
            json,
            stuck,
        };
        let (progress, stop) = spawn(setup.clone());
        Sampler {
            setup,
            progress,
            stop,
        }
    }

    /// When the last pass ended (`clock::monotonic_ms`): the watchdog is petted only while this
    /// moves.
    pub fn last_pass_ms(&self) -> u64 {
        self.progress.last_pass_ms.load(Ordering::Relaxed)
    }

    /// Replaces a thread stuck in one read for longer than the deadline. Called by the event
    /// loop every [`CHECK`]; does nothing while reads return in time.
    pub fn check(&mut self) {
        let reading = self.progress.reading.load(Ordering::Relaxed);
        if reading == 0 {
            return;
        }
        let since = self.progress.since_ms.load(Ordering::Relaxed);
        let now = crate::clock::monotonic_ms();
        if now.saturating_sub(since) < DEADLINE.as_millis() as u64 {
            return;
        }
        let index = reading - 1;
        if let Some(spec) = self.setup.config.sensors.get(index) {
            // The thread is retired whatever: it made no pass for the deadline. It frees the
            // sensor marked here when it ends (even if that read returned just now).
            self.progress.marked.store(reading, Ordering::Release);
            if self.setup.stuck.mark(&spec.source, &self.progress.returned) {
                tracing::error!(sensor = %spec.name, deadline_s = DEADLINE.as_secs_f64(), "Sensor read stuck; sampling goes on without it until the read returns.");
            }
        }
        self.progress.retired.store(true, Ordering::Relaxed);
        let (progress, stop) = spawn(self.setup.clone());
        self.progress = progress;
        let _ = std::mem::replace(&mut self.stop, stop).send(Signal::Stop);
    }

    /// Stops sampling: the thread ends at its next wait (a read stuck in the kernel is not
    /// waited for; it exits when the read returns).
    pub fn stop(&mut self) {
        self.progress.retired.store(true, Ordering::Relaxed);
        // Wakes the thread from its wait between passes.
        let _ = self.stop.send(Signal::Stop);
    }
}

/// Starts one sampler thread; a new generation of the alert book is its.
fn spawn(setup: Setup) -> (Arc<Progress>, std_mpsc::Sender<Signal>) {
    let (stop, stopped) = std_mpsc::channel::<Signal>();
    let waker = Mutex::new(stop.clone());
    let progress = Arc::new(Progress {
        reading: AtomicUsize::new(0),
        since_ms: AtomicU64::new(0),
        last_pass_ms: AtomicU64::new(crate::clock::monotonic_ms()),
        retired: AtomicBool::new(false),
        returned: AtomicBool::new(false),
        marked: AtomicUsize::new(0),
    });
    let generation = {
        let mut book = setup.book.locked();
        book.generation += 1;
        book.generation
    };
    let thread_progress = Arc::clone(&progress);
    std::thread::Builder::new()
        .name("sampler".to_owned())
        .spawn(move || {
            let wake: crate::sensors::Wake = Arc::new(move || {
                let _ = waker.locked().send(Signal::Wake);
            });
            sample(setup, thread_progress, generation, stopped, wake)
        })
        .expect("the sampler thread can be spawned");
    (progress, stop)
}

/// The body of one sampler thread.
fn sample(
    setup: Setup,
    progress: Arc<Progress>,
    generation: u64,
    stop: std_mpsc::Receiver<Signal>,
    wake: crate::sensors::Wake,
) {
    let config = setup.config.config();
    let interval = Duration::from_secs_f64(config.telemetry.interval_s);
    let mut sensors = Sensors::new(&setup.config.sensors, &config.sysfs_root);
    sensors.watch(&wake);
    drop(wake);
    // Planning the Modbus requests and building every sensor leaves garbage in this thread's
    // heap; handed back once, before the first pass.
    super::release_freed_memory();
    // This pass was asked for by a source between two scheduled ones.
    let mut woken = false;
    let mut sample = Sample::default();
    let mut failing: Vec<Arc<str>> = Vec::new();
    let mut seq: u64 = 0;
    let mut next = Instant::now();
    // The indexes of stuck sensors, worked out again only when the shared set changed.
    let mut stuck_version = u64::MAX;
    let mut stuck: Vec<bool> = Vec::new();
    loop {
        let pass_start_us = crate::model::now_us();
        sample.values.clear();
        sample.errors.clear();
        sample.ts_ms = crate::model::now_ms();
        let version = setup.stuck.version();
        if version != stuck_version {
            stuck_version = version;
            stuck = setup
                .config
                .sensors
                .iter()
                .map(|spec| setup.stuck.contains(&spec.source))
                .collect();
        }
        sensors.begin_pass();
        for index in 0..sensors.len() {
            if stuck.get(index).copied().unwrap_or(false) {
                sensors.skip_stuck(index, DEADLINE, &mut sample);
                continue;
            }
            progress
                .since_ms
                .store(crate::clock::monotonic_ms(), Ordering::Relaxed);
            progress.reading.store(index + 1, Ordering::Relaxed);
            sensors.read_one(index, &mut sample);
            progress.reading.store(0, Ordering::Relaxed);
            if progress.retired.load(Ordering::Relaxed) {
                break;
            }
        }
        if progress.retired.load(Ordering::Relaxed) {
            break;
        }
        let synced = crate::clock::synced(sample.ts_ms);
        if !evaluate(&setup, generation, &sample, synced, pass_start_us) {
            break;
        }
        log_sensor_changes(&sample, &mut failing);
        count_errors(&setup.stats, &sample);
        progress
            .last_pass_ms
            .store(crate::clock::monotonic_ms(), Ordering::Relaxed);
        let pass = if setup.json {
            Pass::Json(crate::telemetry::telemetry_parts(
                &sample,
                seq,
                synced,
                setup.config.config().telemetry.max_message_bytes as usize,
            ))
        } else {
            Pass::Reading(Reading {
                ts_ms: sample.ts_ms,
                synced,
                values: sample.values.clone(),
                failing: sample
                    .errors
                    .iter()
                    .map(|(name, _)| Arc::clone(name))
                    .collect(),
            })
        };
        seq += 1;
        match setup.passes.try_send(pass) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(pass)) => {
                // Each part of a pass is a telemetry message, dropped as such.
                let messages = match &pass {
                    Pass::Json(parts) => parts.len() as u64,
                    Pass::Reading(_) => 1,
                };
                setup
                    .stats
                    .queue_full
                    .fetch_add(messages, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
        if !woken {
            next += interval;
        }
        let now = Instant::now();
        if next < now {
            // A slow pass skips ticks rather than bursting.
            next = now;
        }
        woken = match stop.recv_timeout(next - now) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => false,
            Ok(Signal::Wake) => {
                // Several edges at once make one pass.
                let mut stopping = false;
                while let Ok(signal) = stop.try_recv() {
                    stopping |= matches!(signal, Signal::Stop);
                }
                if stopping {
                    break;
                }
                true
            }
            _ => break,
        };
    }
    // Retired for a read that came back after the deadline: that sensor is read again from now
    // on.
    let marked = progress.marked.load(Ordering::Acquire);
    if let Some(spec) = marked
        .checked_sub(1)
        .and_then(|index| setup.config.sensors.get(index))
    {
        if setup.stuck.returned(&spec.source, &progress.returned) {
            tracing::info!(
                sensor = %spec.name,
                "A stuck sensor read returned; it is read again."
            );
        }
    }
}

/// Evaluates the rules on `sample` and hands the events on; false when this thread is no longer
/// the book's (a newer one runs) or nothing takes events any more.
fn evaluate(
    setup: &Setup,
    generation: u64,
    sample: &Sample,
    synced: bool,
    pass_start_us: u64,
) -> bool {
    let mut book = setup.book.locked();
    if book.generation != generation {
        return false;
    }
    let mut events = book
        .alerts
        .evaluate(sample, crate::clock::monotonic_ms(), synced);
    if events.is_empty() {
        return true;
    }
    for event in &mut events {
        event.pass_start_us = pass_start_us;
        log_event(event);
    }
    let state = book.alerts.state().clone();
    let path = book.path.clone();
    match &setup.alerts {
        // Handed over while the book is held (the store's queue never waits), so the order of
        // events is the order of passes.
        AlertSink::Outbox { topic } => setup.store.send(Request::Alerts {
            topic: Arc::clone(topic),
            events,
            state,
            path,
        }),
        AlertSink::Loop(events_tx) => {
            // The loop's queue may be full: never wait for it while holding the book, which
            // the loop takes on a reload.
            drop(book);
            // The state after the events: the loop keeps what they change (store and forward)
            // before it asks for the state to be saved, so the state never counts a change the
            // disk does not hold.
            let names = events.iter().map(|event| event.alert.clone()).collect();
            events
                .into_iter()
                .all(|event| events_tx.blocking_send(Event::Alert(event)).is_ok())
                && events_tx
                    .blocking_send(Event::AlertState(Box::new(SaveAlertState {
                        state,
                        path,
                        names,
                    })))
                    .is_ok()
        }
    }
}

/// One line per alert event, at the priority its severity asks for: a critical alert is an
/// error in the journal, a warning a warning.
fn log_event(event: &AlertEvent) {
    match event.severity {
        "critical" => {
            tracing::error!(alert = %event.alert, sensor = %event.sensor, state = ?event.state, id = %event.id, "Alert.")
        }
        "warning" => {
            tracing::warn!(alert = %event.alert, sensor = %event.sensor, state = ?event.state, id = %event.id, "Alert.")
        }
        _ => {
            tracing::info!(alert = %event.alert, sensor = %event.sensor, state = ?event.state, id = %event.id, "Alert.")
        }
    }
}

fn count_errors(stats: &SamplerStats, sample: &Sample) {
    if sample.errors.is_empty() {
        return;
    }
    let mut counts = stats.sensor_errors.locked();
    for (name, _) in &sample.errors {
        // No allocation per pass once a sensor's count exists.
        match counts.get_mut(&**name) {
            Some(count) => *count += 1,
            None => {
                counts.insert(name.to_string(), 1);
            }
        }
    }
}

/// Logs a sensor once when it starts failing (with the error) and once when it reads again,
/// not on every pass; the counts per pass go to the health topic.
fn log_sensor_changes(sample: &Sample, failing: &mut Vec<Arc<str>>) {
    for (name, err) in &sample.errors {
        if !failing.contains(name) {
            tracing::warn!(sensor = %name, error = %err, "Sensor failing.");
            failing.push(Arc::clone(name));
        }
    }
    failing.retain(|name| {
        let still = sample.errors.iter().any(|(failed, _)| failed == name);
        if !still {
            tracing::info!(sensor = %name, "Sensor reads again.");
        }
        still
    });
}

impl AlertBook {
    /// New rules from a reload, keeping the state of those that stay.
    pub fn reconfigure(&mut self, config: &ValidConfig, client_id: &str) {
        let state = self.alerts.state().clone();
        self.alerts = Alerts::new(client_id, &config.config().alerts, state);
        self.path = config.config().state_dir.join(ALERTS_FILE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GPIO input with `edges` starts a pass the moment it settles, and an `equals` alert on
    /// it is in the outbox then, not a sampling interval (here a minute) later.
    #[test]
    fn an_edge_raises_an_equals_alert_at_once() {
        let (_guard, sim) = crate::gpio::sim::install(&["DOOR"]);
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            r#"broker: {{ urls: ["mqtts://127.0.0.1:1"], tls: {{ ca_file: /etc/ssl/certs/ca-certificates.crt }} }}
state_dir: "{}"
telemetry: {{ interval_s: 60 }}
sensors:
  - {{ name: door, gpio: {{ chip: gpiochip0, line: DOOR, bias: pull-up, active_low: true, edges: true, debounce_ms: 5 }} }}
alerts:
  - {{ name: door_open, sensor: door, equals: 0, severity: critical }}
"#,
            dir.path().display()
        );
        let (config, _) =
            crate::config::load_str(&yaml, std::path::Path::new("c.yaml")).expect("valid");
        // Closed at start (the contact pulls the line to ground).
        sim.drive(0, Some(false));
        let (events_tx, _events_rx) = mpsc::channel(64);
        let (outbox, _) = crate::outbox::Outbox::open(dir.path(), 100);
        let (store, store_thread) = super::super::store::start(
            outbox,
            Arc::new(Mutex::new(crate::dedupe::Dedupe::open(
                dir.path().join("commands.json"),
                10,
            ))),
            events_tx,
        );
        let book = Arc::new(Mutex::new(AlertBook::load(&config, "node-g")));
        let (passes_tx, mut passes) = mpsc::channel(8);
        let mut sampler = Sampler::start(
            &config,
            book,
            Arc::default(),
            store.clone(),
            AlertSink::Outbox {
                topic: Arc::from("devices/node-g/alerts"),
            },
            passes_tx,
            crate::sensors::Stuck::default(),
        );
        let first = passes.blocking_recv().expect("the first pass");
        let Pass::Json(first) = first else {
            unreachable!()
        };
        let first = first.concat();
        assert!(first.contains(r#""door":1"#), "{first}");

        let opened = Instant::now();
        sim.drive(0, None); // the door opens: the pull-up takes the line high, which reads 0
        let second = passes.blocking_recv().expect("a pass on the edge");
        let latency = opened.elapsed();
        let Pass::Json(second) = second else {
            unreachable!()
        };
        let second = second.concat();
        assert!(second.contains(r#""door":0"#), "{second}");
        assert!(latency < Duration::from_secs(1), "{latency:?}");
        // The alert reaches the outbox (the store syncs it before the state says raised).
        let outbox = dir.path().join(crate::outbox::FILE);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let bytes = std::fs::read(&outbox).unwrap_or_default();
            if String::from_utf8_lossy(&bytes).contains(r#""alert":"door_open","state":"raised""#) {
                break;
            }
            assert!(Instant::now() < deadline, "no alert in the outbox");
            std::thread::sleep(Duration::from_millis(20));
        }
        sampler.stop();
        drop(passes);
        store.send(Request::Stop);
        store_thread.join().unwrap();
    }
}
