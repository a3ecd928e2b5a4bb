//! The daemon: one event loop that never waits, over a closed set of [`Event`]s, with plain
//! topics and Sparkplug B as two modes of it.
//!
//! Around the loop run the parts that may be slow, each on its own thread or task, each
//! reporting back as an event: the sampler thread (sensor reads, alert rules), the store thread
//! (the outbox, the alert state and the command ledger on disk), connect attempts and the TLS
//! diagnosis, command execution, reloads and certificate renewals. The loop itself only
//! dispatches: it moves messages between them and Paho, whose calls it makes never block.
//!
//! Invariants: the loop never waits (nothing in an arm awaits I/O, a lock held by a worker, or a
//! timer); durable before committed (see `store`); a stuck part stops only itself (see
//! `sampler`, `commands`); a stop takes at most [`SHUTDOWN_WAIT`], whatever is pending.

mod admit;
mod chores;
mod commands;
mod connect;
mod core;
mod delivery;
mod edge;
mod event;
mod execute;
pub mod link;
mod mode;
mod operations;
mod plain;
mod provision;
mod reload;
mod remote_config;
mod sampler;
mod signed;
mod status;
mod stop;
mod store;
mod stray;

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::commands::Response;
use crate::config::ValidConfig;
use crate::dedupe::Dedupe;
use crate::error::Error;
use crate::identity::Identity;
use crate::mqtt::{tls, Confirmation, Incoming, MqttError, MqttEvent, Session};
use crate::outbox::Outbox;
use crate::service;

use crate::admission::admit;
use crate::sync::Lock;
use connect::ConnectLog;
pub(crate) use core::Core;
use core::FOREVER;
pub use event::Event;
use event::{Report, StoreEvent};
use link::Link;
use mode::{Arrived, Mode};
use sampler::{AlertBook, Pass, Sampler, SamplerStats};
use store::Request;

/// How long a clean stop takes at most: the shutdown status, QoS >= 1 in flight, the store's
/// last writes and the disconnect all fit in it.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How often the loop looks for a stuck sensor read and a renewed certificate.
const HOUSEKEEPING: Duration = sampler::CHECK;

/// Counters of the daemon's life, for health, STATUS= and the Stopped line.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: u64,
    /// Dropped by a bound, or telemetry with no buffer while offline.
    pub dropped: u64,
    /// Queued but unreadable from the outbox file when their turn came.
    pub lost: u64,
    /// Refused by the broker (MQTT 5 reason code of 0x80 or above).
    pub refused: u64,
}

/// `fieldagent run`: checks the config and what it points at, then runs the daemon until
/// SIGTERM or SIGINT. Certificate errors refuse to start, as `check` would report them.
///
/// `verbosity` shifts `log.level`: +1 per `-v`, -1 per `-q`.
pub fn start(path: &Path, verbosity: i8, warn: &mut dyn Write) -> Result<(), Error> {
    limit_malloc_arenas();
    let config = crate::config::load_reporting(path, warn)?;
    // Before anything uses OpenSSL: the TLS floor (see mqtt::tls).
    // In state_dir only: a shared temporary directory is no place for a file that decides the
    // TLS floor (anyone could plant one there).
    let min = config.config().broker.tls.min_version;
    let state_dir = &config.config().state_dir;
    let needs = crate::keys::openssl_needs(&config.config().broker.tls);
    let floor = crate::mqtt::tls::enforce_floor(min, &needs, state_dir)?;
    crate::mqtt::tls::floor_holds(min).map_err(Error::TlsFloorIgnored)?;
    let log = &config.config().log;
    if crate::service::init_logging(log.level.shifted(verbosity), log.target)
        == crate::service::LogSink::StderrNoJournal
    {
        tracing::warn!(
            "log.target is journald but the journal cannot be reached; logging to stderr."
        );
    }
    tracing::info!(
        openssl_conf = %floor.path.display(),
        system = %floor.system.as_deref().unwrap_or(Path::new("none")).display(),
        "TLS {} at least, over the system's OpenSSL config.",
        crate::mqtt::tls::display(min)
    );
    // One thread: the agent's work is small and boards have little memory.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("fieldagent")
        // Bounded: a job past this waits its turn rather than a thread more (one stuck
        // actuator holds one thread; commands and NCMD writes run one per actuator).
        .max_blocking_threads(64)
        .build()
        .map_err(Error::Runtime)?;
    // Not provisioned yet (no certificate): wait for it rather than fail the unit.
    let Some(config) = runtime.block_on(provision::wait(config, path)) else {
        return Ok(());
    };
    let (config, identity) = admit(config, path, warn)?;
    runtime.block_on(run(
        config.into_running(),
        identity,
        Some(path.to_owned()),
        crate::service::shutdown_signal,
    ))?;
    // Tasks still waiting on Paho (a hanging connect) are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Runs the agent until `shutdown` resolves, then stops cleanly within [`SHUTDOWN_WAIT`]; a
/// second `shutdown` signal during the stop ends it at once.
pub async fn run<F, S>(
    config: ValidConfig,
    identity: Identity,
    reload_from: Option<PathBuf>,
    mut shutdown: S,
) -> Result<(), MqttError>
where
    S: FnMut() -> F,
    F: Future<Output = &'static str>,
{
    let (events_tx, mut events) = mpsc::channel(256);
    let (lost_tx, mut lost) = mpsc::channel(4);
    let (incoming_tx, mut incoming) = crate::mqtt::incoming_queue();
    let (passes_tx, mut passes) = mpsc::channel(sampler::TELEMETRY_QUEUE);
    let key_pair = admit::key_pair_store(&config);
    let sparkplug = config.config().sparkplug.is_some();
    admit::adopt_state(&config.config().state_dir, &identity.client_id);
    let book = Arc::new(Mutex::new(AlertBook::load(&config, &identity.client_id)));
    let mode: Box<dyn Mode> = if sparkplug {
        let state = book.locked().state().clone();
        Box::new(edge::Edge::new(&config, &identity, &state))
    } else {
        Box::new(plain::Plain::new(&config, &identity))
    };
    let session = Session::new(
        &config,
        &identity.client_id,
        lost_tx.clone(),
        incoming_tx.clone(),
        key_pair.as_ref().map(|store| &store.files),
        mode.profile(&config, &identity),
    )?;
    // The state files are opened after `Starting.`: on slow flash their fsyncs can take a while.
    let ledger = Arc::new(Mutex::new(Dedupe::open(
        config.config().state_dir.join(crate::dedupe::FILE),
        crate::dedupe::CAPACITY,
    )));
    let outbox = open_outbox(&config, &mut book.locked());
    let (store, store_thread) = store::start(outbox, Arc::clone(&ledger), events_tx.clone());
    let stats = Arc::new(SamplerStats::default());
    let started = Instant::now();
    let held_outputs = crate::actuators::hold(&config.actuators);
    let operations = operations::Operations::load(
        &config.config().state_dir,
        &config.topic_prefix(&identity.client_id),
        crate::operations::Before {
            started_ts: crate::model::now_ms(),
            boot_id: crate::mqtt::boot_id(),
            version: crate::VERSION.to_owned(),
        },
    );
    // Vetted by admission already: what the directory holds now.
    let keys = crate::signed::probe(&config.config().security)
        .0
        .map(std::sync::Arc::new);
    if let Some(keys) = &keys {
        tracing::info!(
            keys = keys.len(),
            "Commands and operation requests must be signed."
        );
    }
    let core = Core {
        keys,
        link: Link::new(&config.config().broker.reconnect, Instant::now()),
        config,
        identity,
        session,
        store,
        outbox: Report {
            durable: true,
            ..Report::default()
        },
        counters: Counters::default(),
        connect_log: ConnectLog::default(),
        events: events_tx.clone(),
        started,
        stats: Arc::clone(&stats),
        book: Arc::clone(&book),
        stuck: crate::sensors::Stuck::default(),
        operations,
        server: None,
        offline_since: crate::model::now_ms(),
        status_writing: Arc::default(),
        status_alerts: 0,
        reconnect_after: None,
        held_outputs,
        lost_tx,
        incoming_tx,
    };
    mode.log_start(&core);
    let sampler = start_sampler(&core, mode.as_ref(), passes_tx.clone());
    let mut daemon = Daemon {
        commands: commands::Commands::new(core.config.config().broker.command_rate),
        context: commands::Context {
            started,
            specs: core.config.sensors.clone(),
            sysfs_root: core.config.config().sysfs_root.clone(),
            ledger,
            stuck: core.stuck.clone(),
        },
        core,
        mode,
        sampler,
        passes_tx,
        key_pair,
        reload_from,
        reloading: false,
        reload_again: false,
        renewing: false,
    };
    // Ready once sampling runs: devices start offline, so this does not wait for the broker.
    service::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("sampling; connecting"),
    ]);
    daemon.resume_operations();
    status::write_file(&daemon.core);
    // The watchdog, health and housekeeping ride on the passes, with one backstop timer.
    let mut chores = chores::Chores::new(
        Instant::now(),
        service::watchdog(),
        crate::health::INTERVAL,
        HOUSEKEEPING,
    );
    let mut alarm = chores::Alarm::new();
    let mut hangups = daemon.reload_from.as_ref().map(|_| service::hangups());
    let first_shutdown = shutdown();
    tokio::pin!(first_shutdown);
    let signal = loop {
        alarm.set(chores.wake_at());
        let next_attempt = daemon.core.link.next_attempt();
        let pump_at = daemon.pump_at();
        tokio::select! {
            biased;
            signal = &mut first_shutdown => break signal,
            Some(event) = events.recv() => daemon.on_event(event),
            Some(MqttEvent::Lost { cause }) = lost.recv() => daemon.on_lost(cause),
            () = sleep_until(next_attempt), if next_attempt.is_some() => daemon.connect(),
            () = sleep_until(pump_at), if pump_at.is_some() => daemon.pump(),
            Some(message) = incoming.recv() => daemon.on_incoming(message),
            Some(pass) = passes.recv() => {
                daemon.on_pass(pass);
                daemon.chores(chores.due(Instant::now()));
            }
            () = alarm.ring() => {
                daemon.chores(chores.due(Instant::now()));
            }
            Some(()) = next_hangup(&mut hangups) => daemon.reload(),
        }
    };
    daemon
        .stop(signal, &mut events, &mut incoming, store_thread, shutdown)
        .await;
    Ok(())
}

/// Sleeps until `at` (never when `None`; the branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The next SIGHUP, or never when reloading is off.
async fn next_hangup(hangups: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangups {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

fn start_sampler(core: &Core, mode: &dyn Mode, passes: mpsc::Sender<Pass>) -> Sampler {
    let alerts = mode.alert_sink(core);
    let sampler = Sampler::start(
        &core.config,
        Arc::clone(&core.book),
        Arc::clone(&core.stats),
        core.store.clone(),
        alerts,
        passes,
        core.stuck.clone(),
    );
    // Off the loop: a large heap takes glibc a while to walk.
    tokio::task::spawn_blocking(release_freed_memory);
    sampler
}

/// Hands the memory freed since to the system: reading a config (its YAML tree, where each key
/// stood) costs several times what the config keeps, and glibc's heap would otherwise hold that
/// peak for the life of the process. After start-up and after each reload, never per pass.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointer of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// At most two glibc malloc arenas, before any thread starts. glibc gives each thread that
/// meets a locked arena one of its own, up to eight per core, and each keeps the peak it once
/// held: with a thread per Modbus device that is several MiB of freed memory nobody returns
/// (bench/scale). The threads allocate little per pass, so two arenas cost no waiting worth
/// measuring. `MALLOC_ARENA_MAX` in the environment, when set, is left to decide.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets a glibc tunable, before this process starts a thread.
            #[allow(unsafe_code)]
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
    }
}

/// The outbox in `state_dir`, with what opening it found said in the log; the alert state
/// catches up with the events it holds (the outbox is the durable truth: an event is synced
/// there before the state that counts it is saved).
fn open_outbox(config: &ValidConfig, book: &mut AlertBook) -> Outbox {
    let broker = &config.config().broker;
    let mut alerts: Vec<Vec<u8>> = Vec::new();
    let (outbox, recovery) = Outbox::open_seeing(
        &config.config().state_dir,
        broker.max_queued_messages as usize,
        &mut |kind, payload| {
            if kind == crate::outbox::Kind::Alert {
                alerts.push(payload.to_vec());
            }
        },
    );
    book.catch_up(alerts.iter().map(Vec::as_slice));
    if let Some((reason, aside)) = &recovery.damaged {
        tracing::error!(
            reason = %reason,
            moved_to = %aside.display(),
            recovered = recovery.recovered,
            "Outbox damaged (power cut or disk fault?); moved aside, the messages before the damage kept."
        );
    }
    if let Some(reason) = &recovery.unusable {
        tracing::error!(reason = %reason, "Outbox cannot use state_dir; queued messages are kept in memory only until it can.");
    }
    if !recovery.dropped.is_empty() {
        tracing::warn!(
            dropped = recovery.dropped.len(),
            "Outbox holds more than broker.max_queued_messages; the oldest were dropped, telemetry first."
        );
    }
    if recovery.recovered > 0 {
        tracing::info!(
            queued = recovery.recovered,
            "Outbox: messages from an earlier run will be delivered."
        );
    }
    outbox
}

/// The daemon's state: the shared core, the mode, and the parts around the loop.
struct Daemon {
    core: Core,
    mode: Box<dyn Mode>,
    sampler: Sampler,
    passes_tx: mpsc::Sender<Pass>,
    commands: commands::Commands,
    context: commands::Context,
    key_pair: Option<tls::KeyPairStore>,
    reload_from: Option<PathBuf>,
    /// A reload runs.
    reloading: bool,
    /// A SIGHUP came while a reload ran: one more reload follows it.
    reload_again: bool,
    /// A renewal check runs.
    renewing: bool,
}

impl Daemon {
    pub(super) fn on_event(&mut self, event: Event) {
        match event {
            Event::Store(StoreEvent::Report(report)) => self.on_report(report),
            Event::Store(StoreEvent::Taken {
                generation,
                messages,
                lost,
            }) => {
                self.core.counters.lost += lost.len() as u64;
                self.mode.taken(&mut self.core, generation, messages, &lost);
            }
            Event::Store(StoreEvent::Stopped) => {}
            Event::Connect {
                attempt,
                result,
                closer,
                bd_seq,
            } => self.on_connect(attempt, result, closer, bd_seq),
            Event::Prepared {
                attempt,
                password,
                bd_seq,
            } => self.on_prepared(attempt, password, bd_seq),
            Event::Delivered {
                generation,
                id,
                confirmation,
            } => self.delivered(generation, id, &confirmation),
            Event::Answered {
                key,
                response,
                record,
                finished,
            } => {
                self.answered(&key, response, record, finished);
                if finished {
                    self.run_commands();
                }
            }
            Event::Finished { key } => {
                self.commands.finished(&key);
                self.run_commands();
            }
            Event::Alert(event) => self.mode.on_alert(&mut self.core, event),
            Event::AlertState(save) => {
                let event::SaveAlertState { state, path, names } = *save;
                self.core
                    .store
                    .send(Request::SaveState { state, path, names });
            }
            Event::Reloaded(result) => self.on_reloaded(*result),
            Event::Operations(event) => self.on_operation_event(event),
            Event::Renewed(result) => self.on_renewed(result),
            Event::SessionClosed => {
                let after = self.core.reconnect_after.take();
                self.core.link.restart(
                    Instant::now(),
                    after.unwrap_or(Duration::ZERO),
                    after.is_some(),
                );
            }
            Event::Written {
                actuator,
                result,
                value,
                finished,
            } => {
                self.mode
                    .on_written(&mut self.core, &actuator, result, value);
                if finished {
                    self.commands.finished(&actuator);
                    self.run_commands();
                }
            }
        }
    }

    pub(super) fn on_report(&mut self, report: Report) {
        self.core.counters.dropped += report.too_large as u64;
        self.mode.on_report(&report);
        for dropped in &report.dropped {
            self.core.counters.dropped += 1;
            match dropped.kind {
                crate::outbox::Kind::Telemetry => {}
                other => tracing::error!(
                    kind = other.name(),
                    "Outbox full (broker.max_queued_messages); the oldest {} was dropped.",
                    other.name()
                ),
            }
        }
        if report.durable != self.core.outbox.durable {
            status::outbox_changed(report.durable);
        }
        self.core.outbox = report;
    }

    /// When the mode's delivery may ask the store for more.
    pub(super) fn pump_at(&self) -> Option<Instant> {
        self.mode.pump_at(&self.core)
    }

    pub(super) fn pump(&mut self) {
        self.mode.pump(&mut self.core);
    }

    pub(super) fn on_incoming(&mut self, message: Incoming) {
        match self.mode.on_incoming(&mut self.core, message) {
            Arrived::Command { name, message } => {
                let message = match self.opened(message) {
                    Ok(message) => message,
                    Err(refused) => {
                        let answer = crate::commands::Response::refused(
                            refused.id.as_deref(),
                            &name,
                            refused.reason,
                        );
                        return self.answer(answer, false);
                    }
                };
                if let Some(answer) = self.commands.arrive(
                    &name,
                    &message.payload,
                    message.retained,
                    &self.core.config.actuators,
                ) {
                    self.answer(answer, false);
                }
            }
            Arrived::Writes(writes) => {
                for refused in self
                    .commands
                    .arrive_ncmd(writes, &self.core.config.actuators)
                {
                    tracing::warn!(reason = %refused, "NCMD write refused.");
                }
            }
            Arrived::Operation { kind, message } => {
                return match self.opened(message) {
                    Ok(message) => self.on_operation(&kind, message),
                    Err(refused) => self.refuse_operation(&kind, refused),
                }
            }
            Arrived::Done => return,
        }
        self.run_commands();
    }

    /// Starts every job that may run now.
    pub(super) fn run_commands(&mut self) {
        for job in self.commands.ready() {
            commands::spawn(job, self.context.clone(), self.core.events.clone());
        }
    }

    /// Paho's answer for one outbox message (plain mode's).
    pub(super) fn delivered(&mut self, generation: u64, id: u64, confirmation: &Confirmation) {
        self.mode
            .delivered(&mut self.core, generation, id, confirmation);
    }

    /// A command ended: its answer goes out, and its actuator is free again when `finished`.
    pub(super) fn answered(&mut self, key: &str, response: Response, record: bool, finished: bool) {
        self.answer(response, record);
        if finished {
            self.commands.finished(key);
        }
    }

    /// A command's answer: logged, and into the outbox (then the ledger, when `record`).
    pub(super) fn answer(&mut self, response: Response, record: bool) {
        tracing::info!(command = %response.command.escape_debug(), id = ?response.id, ok = response.ok, duplicate = response.duplicate, error = ?response.error, "Command.");
        let Some(topic) = self.mode.responses_topic() else {
            return;
        };
        self.core.store.send(Request::Answer {
            topic,
            response,
            record,
        });
    }

    pub(super) fn on_pass(&mut self, pass: Pass) {
        self.mode.on_pass(&mut self.core, pass);
        // An alert raised or cleared, a sensor failing or back: `status` says so at once.
        status::write_file_if_changed(&mut self.core);
    }

    pub(super) fn health_tick(&mut self) {
        self.mode.health_tick(&mut self.core);
        status::notify(&self.core);
        status::write_file(&self.core);
    }

    /// The timed chores that are due (see `chores`).
    fn chores(&mut self, due: chores::Due) {
        // At every pass: the connection state the agent reports is the one Paho is in.
        self.check_connection();
        self.poll_operations();
        if due.pet {
            self.pet_watchdog();
        }
        if due.health {
            self.health_tick();
        }
        if due.housekeeping {
            self.housekeeping();
        }
    }

    /// Every `HOUSEKEEPING`: a sensor read stuck past its deadline is isolated, and a renewed
    /// certificate is checked.
    fn housekeeping(&mut self) {
        self.sampler.check();
        if !self.renewing {
            self.watch_certificate();
        }
    }

    /// Pets the systemd watchdog, but only while sampling is alive: a wedged sampler lets
    /// systemd restart the agent. (A stuck sensor does not wedge it; see `sampler`.)
    pub(super) fn pet_watchdog(&self) {
        let interval_ms = (self.core.config.config().telemetry.interval_s * 1000.0) as u64;
        let since = crate::clock::monotonic_ms().saturating_sub(self.sampler.last_pass_ms());
        if since <= 3 * interval_ms + 10_000 {
            service::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(
                since_last_pass_ms = since,
                "Sampling is stuck; not petting the watchdog."
            );
        }
    }
}
