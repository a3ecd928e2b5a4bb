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
mod commands;
mod delivery;
mod edge;
pub mod link;
mod plain;
mod sampler;
mod status;
mod store;

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::alerts::AlertEvent;
use crate::commands::Response;
use crate::config::{Changes, Scheme, ValidConfig};
use crate::dedupe::Dedupe;
use crate::identity::Identity;
use crate::mqtt::{tls, Closer, Connected, Incoming, MqttError, MqttEvent, Profile, Session};
use crate::offline::Error;
use crate::outbox::Outbox;
use crate::service;
use crate::sparkplug::MetricValue;

pub(crate) use admit::admit;
use link::{Link, Outcome};
use sampler::{AlertBook, AlertSink, Pass, Sampler, SamplerStats};
use store::{Report, Request, StoreEvent, StoreHandle};

/// How long a clean stop takes at most: the shutdown status, QoS >= 1 in flight, the store's
/// last writes and the disconnect all fit in it.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How often the certificate and key files are looked at for a renewal.
const CERT_WATCH: Duration = Duration::from_secs(5);

/// Results of the work that runs apart from the loop, and what the store reports. Paho's
/// connection-lost signal, incoming messages and the sampler's passes have channels of their
/// own (each with its own rule when full).
#[derive(Debug)]
pub enum Event {
    /// The store finished a batch, or answered a `Take`.
    Store(StoreEvent),
    /// A connect attempt ended; `closer` ends the connection it made if it is no longer wanted.
    Connect {
        attempt: u64,
        result: Result<Connected, Failed>,
        closer: Closer,
        /// Sparkplug: the bdSeq of this session (its NDEATH is the will).
        bd_seq: Option<u64>,
    },
    /// Sparkplug: the bdSeq of connect attempt `attempt` is saved; the attempt may start.
    BdSeq { attempt: u64, bd_seq: u64 },
    /// Paho's answer for one outbox message.
    Delivered { generation: u64, id: u64, ok: bool },
    /// A command's answer; `record` when it ran (the ledger keeps its answer); `finished` when
    /// its actuator is free again (false after a timeout: `Finished` follows).
    Answered {
        key: String,
        response: Response,
        record: bool,
        finished: bool,
    },
    /// A timed-out command's job has returned.
    Finished { key: String },
    /// Sparkplug: an alert raised or cleared (plain mode's go through the store).
    Alert(AlertEvent),
    /// A reload's new config and identity, or why it was refused.
    Reloaded(Box<Result<(ValidConfig, Identity), String>>),
    /// A certificate renewal was checked and copied in, or refused.
    Renewed(Result<(), String>),
    /// A session we ended has disconnected: the next connect may start.
    SessionClosed,
    /// Sparkplug: an NCMD write ended; `value` is what the actuator holds now.
    Written {
        actuator: String,
        result: Result<String, String>,
        value: MetricValue,
    },
}

/// Why a connect attempt failed, with the diagnosis of a TLS refusal when one was made.
#[derive(Debug)]
pub struct Failed {
    pub error: MqttError,
    pub diagnosis: Option<String>,
}

/// Counters of the daemon's life, for health, STATUS= and the Stopped line.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: u64,
    /// Dropped by a bound, or telemetry with no buffer while offline.
    pub dropped: u64,
    /// Queued but unreadable from the outbox file when their turn came.
    pub lost: u64,
}

/// What failed connects said: each distinct cause is diagnosed once (a probe is one more
/// handshake) and logged once per outage, not once per attempt.
#[derive(Debug, Default)]
pub struct ConnectLog {
    seen_errors: Vec<String>,
    last_diagnosis: Option<String>,
    last_logged: String,
    /// The reason of the last failed connect, for health; kept after a success.
    pub last_error: String,
}

impl ConnectLog {
    /// A connect succeeded: the next outage is logged afresh.
    fn connected(&mut self) {
        self.seen_errors.clear();
        self.last_logged.clear();
    }

    /// Whether a failure with this cause is new in this outage (and so worth a diagnosis).
    fn is_new(&self, cause: &str) -> bool {
        !self.seen_errors.iter().any(|seen| seen == cause)
    }

    /// A connect failed; the next attempt is in `delay`. Returns the reason as logged.
    fn failed(&mut self, failed: &Failed, urls: &str, delay: Duration) -> String {
        let cause = failed.error.to_string();
        if self.is_new(&cause) {
            self.last_diagnosis = failed.diagnosis.clone();
            self.seen_errors.push(cause.clone());
        }
        let reason = self.last_diagnosis.clone().unwrap_or(cause);
        if reason != self.last_logged {
            tracing::warn!(broker = %urls, reason = %reason, retry_in_s = delay.as_secs_f64(), "Cannot connect.");
            self.last_logged = reason.clone();
            self.last_error = reason.clone();
        } else {
            tracing::debug!(error = %failed.error, retry_in_s = delay.as_secs_f64(), "Cannot connect.");
        }
        reason
    }
}

/// `fieldagent run`: checks the config and what it points at, then runs the daemon until
/// SIGTERM or SIGINT. Certificate errors refuse to start, as `check` would report them.
pub fn start(path: &Path, warn: &mut dyn Write) -> Result<(), Error> {
    let config = crate::offline::load(path, warn)?;
    // Before anything uses OpenSSL: the TLS floor (see mqtt::tls).
    let min = config.config().broker.tls.min_version;
    crate::mqtt::tls::enforce_floor(min, &config.config().state_dir)
        .or_else(|_| crate::mqtt::tls::enforce_floor(min, &std::env::temp_dir()))
        .map_err(Error::TlsFloor)?;
    let (config, identity) = admit(config, path, warn)?;
    let log = &config.config().log;
    if crate::service::init_logging(log.level, log.target)
        == crate::service::LogSink::StderrNoJournal
    {
        tracing::warn!(
            "log.target is journald but the journal cannot be reached; logging to stderr."
        );
    }
    // One thread: the agent's work is small and boards have little memory.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("fieldagent")
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(run(
        config,
        identity,
        Some(path.to_owned()),
        crate::service::shutdown_signal,
    ))?;
    // Tasks still waiting on Paho (a hanging connect) are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// The parts both modes use.
pub(crate) struct Core {
    pub config: ValidConfig,
    pub identity: Identity,
    pub session: Session,
    pub link: Link,
    pub store: StoreHandle,
    /// The outbox as the store last reported it.
    pub outbox: Report,
    pub counters: Counters,
    pub connect_log: ConnectLog,
    pub events: mpsc::Sender<Event>,
    pub started: Instant,
    pub stats: Arc<SamplerStats>,
    pub book: Arc<Mutex<AlertBook>>,
    /// The broker we are connected to, and since when (Unix ms).
    pub server: Option<(String, u64)>,
    /// After the session we are closing has gone, connect again after this (a primary host
    /// that went offline); at once when `None`.
    pub reconnect_after: Option<Duration>,
    /// Paho's channels, for a new session after a reload.
    lost_tx: mpsc::Sender<MqttEvent>,
    incoming_tx: mpsc::Sender<Incoming>,
}

impl Core {
    /// A session for `config` in the mode's profile.
    fn new_session(
        &self,
        config: &ValidConfig,
        identity: &Identity,
        key_pair: Option<&tls::KeyPairStore>,
        profile: Profile,
    ) -> Result<Session, MqttError> {
        Session::new(
            config,
            &identity.client_id,
            self.lost_tx.clone(),
            self.incoming_tx.clone(),
            key_pair.map(|store| &store.files),
            profile,
        )
    }

    /// Ends the current connection from a task; the next connect waits for `SessionClosed`.
    fn close_session(&mut self, goodbye: bool) {
        let closer = self.session.closer();
        let events = self.events.clone();
        // No attempt until the old connection is gone (same client ID: a takeover otherwise).
        self.link.restart(Instant::now(), FOREVER, true);
        self.server = None;
        tokio::spawn(async move {
            if goodbye {
                closer.close(Duration::from_secs(2)).await;
            } else {
                closer.disconnect(Duration::from_secs(2)).await;
            }
            let _ = events.send(Event::SessionClosed).await;
        });
    }
}

/// A wait that ends only by an event.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The two modes of the loop.
enum Mode {
    Plain(Box<plain::Plain>),
    Sparkplug(Box<edge::Edge>),
}

impl Mode {
    fn profile(&self) -> Profile {
        match self {
            Mode::Plain(_) => Profile::Plain,
            Mode::Sparkplug(edge) => Profile::Sparkplug {
                subscriptions: edge.subscriptions(),
            },
        }
    }
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
    let (incoming_tx, mut incoming) = mpsc::channel(crate::mqtt::INCOMING_QUEUE);
    let (passes_tx, mut passes) = mpsc::channel(sampler::TELEMETRY_QUEUE);
    let key_pair = admit::key_pair_store(&config);
    let sparkplug = config.config().sparkplug.is_some();
    let book = Arc::new(Mutex::new(AlertBook::load(&config, &identity.client_id)));
    let mode = if sparkplug {
        let state = book.lock().map(|b| b.state().clone()).unwrap_or_default();
        Mode::Sparkplug(Box::new(edge::Edge::new(&config, &identity, &state)))
    } else {
        Mode::Plain(Box::new(plain::Plain::new(&config, &identity)))
    };
    let session = Session::new(
        &config,
        &identity.client_id,
        lost_tx.clone(),
        incoming_tx.clone(),
        key_pair.as_ref().map(|store| &store.files),
        mode.profile(),
    )?;
    match &mode {
        Mode::Plain(_) => {
            tracing::info!(client_id = %identity.client_id, source = %identity, broker = %session.urls(), "Starting.")
        }
        Mode::Sparkplug(edge) => {
            tracing::info!(client_id = %identity.client_id, source = %identity, broker = %session.urls(), node = %edge.node_topic(), "Starting as a Sparkplug B edge node.")
        }
    }
    // The state files are opened after `Starting.`: on slow flash their fsyncs can take a while.
    let ledger = Arc::new(Mutex::new(Dedupe::open(
        config.config().state_dir.join(crate::dedupe::FILE),
        crate::dedupe::CAPACITY,
    )));
    let outbox = open_outbox(&config);
    let (store, store_thread) = store::start(outbox, Arc::clone(&ledger), events_tx.clone());
    let stats = Arc::new(SamplerStats::default());
    let started = Instant::now();
    let core = Core {
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
        server: None,
        reconnect_after: None,
        lost_tx,
        incoming_tx,
    };
    let sampler = start_sampler(&core, &mode, passes_tx.clone());
    let mut daemon = Daemon {
        commands: commands::Commands::new(core.config.config().broker.command_rate),
        context: commands::Context {
            started,
            specs: core.config.sensors.clone(),
            sysfs_root: core.config.config().sysfs_root.clone(),
            ledger,
        },
        core,
        mode,
        sampler,
        passes_tx,
        key_pair,
        reload_from,
        reloading: false,
        renewing: false,
    };
    // Ready once sampling runs: devices start offline, so this does not wait for the broker.
    service::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("sampling; connecting"),
    ]);
    let watchdog = service::watchdog();
    let mut watchdog_timer = tokio::time::interval(watchdog.map_or(FOREVER, |w| w / 2));
    let mut sampler_check = tokio::time::interval(sampler::CHECK);
    sampler_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health_timer = tokio::time::interval_at(
        tokio::time::Instant::now() + crate::health::INTERVAL,
        crate::health::INTERVAL,
    );
    let mut cert_watch = tokio::time::interval(CERT_WATCH);
    cert_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangups = daemon.reload_from.as_ref().map(|_| service::hangups());
    let first_shutdown = shutdown();
    tokio::pin!(first_shutdown);
    let signal = loop {
        let next_attempt = daemon.core.link.next_attempt();
        let pump_at = daemon.pump_at();
        tokio::select! {
            biased;
            signal = &mut first_shutdown => break signal,
            _ = watchdog_timer.tick(), if watchdog.is_some() => daemon.pet_watchdog(),
            Some(event) = events.recv() => daemon.on_event(event),
            Some(MqttEvent::Lost) = lost.recv() => daemon.on_lost(),
            () = sleep_until(next_attempt), if next_attempt.is_some() => daemon.connect(),
            () = sleep_until(pump_at), if pump_at.is_some() => daemon.pump(),
            Some(message) = incoming.recv() => daemon.on_incoming(message),
            Some(pass) = passes.recv() => daemon.on_pass(pass),
            _ = sampler_check.tick() => daemon.sampler.check(),
            _ = health_timer.tick() => daemon.health_tick(),
            _ = cert_watch.tick(), if daemon.key_pair.is_some() && !daemon.renewing => daemon.watch_certificate(),
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

fn start_sampler(core: &Core, mode: &Mode, passes: mpsc::Sender<Pass>) -> Sampler {
    let alerts = match mode {
        Mode::Plain(plain) => AlertSink::Outbox {
            topic: plain.alerts_topic(),
        },
        Mode::Sparkplug(_) => AlertSink::Loop(core.events.clone()),
    };
    Sampler::start(
        &core.config,
        Arc::clone(&core.book),
        Arc::clone(&core.stats),
        core.store.clone(),
        alerts,
        passes,
    )
}

/// The outbox in `state_dir`, with what opening it found said in the log.
fn open_outbox(config: &ValidConfig) -> Outbox {
    let broker = &config.config().broker;
    let (outbox, recovery) = Outbox::open(
        &config.config().state_dir,
        broker.max_queued_messages as usize,
    );
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
    mode: Mode,
    sampler: Sampler,
    passes_tx: mpsc::Sender<Pass>,
    commands: commands::Commands,
    context: commands::Context,
    key_pair: Option<tls::KeyPairStore>,
    reload_from: Option<PathBuf>,
    /// A reload runs; another SIGHUP meanwhile is taken after it.
    reloading: bool,
    /// A renewal check runs.
    renewing: bool,
}

impl Daemon {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Store(StoreEvent::Report(report)) => self.on_report(report),
            Event::Store(StoreEvent::Taken {
                generation,
                messages,
                lost,
            }) => {
                self.core.counters.lost += lost.len() as u64;
                if let Mode::Plain(plain) = &mut self.mode {
                    plain.taken(&mut self.core, generation, messages, &lost);
                }
            }
            Event::Store(StoreEvent::Stopped) => {}
            Event::Connect {
                attempt,
                result,
                closer,
                bd_seq,
            } => self.on_connect(attempt, result, closer, bd_seq),
            Event::BdSeq { attempt, bd_seq } => self.start_attempt(attempt, Some(bd_seq)),
            Event::Delivered { generation, id, ok } => {
                if let Mode::Plain(plain) = &mut self.mode {
                    plain.delivered(&mut self.core, generation, id, ok);
                }
            }
            Event::Answered {
                key,
                response,
                record,
                finished,
            } => {
                self.answer(response, record);
                if finished {
                    self.commands.finished(&key);
                    self.run_commands();
                }
            }
            Event::Finished { key } => {
                self.commands.finished(&key);
                self.run_commands();
            }
            Event::Alert(event) => {
                if let Mode::Sparkplug(edge) = &mut self.mode {
                    edge.on_alert(&mut self.core, event);
                }
            }
            Event::Reloaded(result) => self.on_reloaded(*result),
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
            } => {
                if let Mode::Sparkplug(edge) = &mut self.mode {
                    edge.on_written(&mut self.core, &actuator, result, value);
                }
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        for dropped in &report.dropped {
            self.core.counters.dropped += 1;
            match dropped.kind {
                crate::outbox::Kind::Telemetry => {
                    if let Mode::Plain(plain) = &mut self.mode {
                        plain.delivery.telemetry_gap += 1;
                    }
                }
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
        if let Mode::Plain(plain) = &mut self.mode {
            plain.delivery.queued = report.queued;
        }
        self.core.outbox = report;
    }

    /// Starts a connect attempt; its end comes back as `Event::Connect`. In Sparkplug mode the
    /// next bdSeq is saved first (fsynced, on the blocking pool), so a crash never reuses one
    /// whose NDEATH may still be delivered; the attempt starts when it is (`Event::BdSeq`).
    fn connect(&mut self) {
        let Some(attempt) = self.core.link.due(Instant::now()) else {
            return;
        };
        let Mode::Sparkplug(edge) = &self.mode else {
            return self.start_attempt(attempt, None);
        };
        let state_dir = self.core.config.config().state_dir.clone();
        let last = edge.bd_seq();
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let bd_seq = edge::next_bd_seq(state_dir, last).await;
            let _ = events.send(Event::BdSeq { attempt, bd_seq }).await;
        });
    }

    fn start_attempt(&mut self, attempt_number: u64, bd_seq: Option<u64>) {
        if let (Mode::Sparkplug(edge), Some(bd_seq)) = (&self.mode, bd_seq) {
            self.core
                .session
                .set_will(edge::will(edge.ndeath_topic(), bd_seq));
        }
        let attempt = self.core.session.attempt();
        let closer = attempt.closer();
        let events = self.core.events.clone();
        let diagnose = self.diagnosis_input();
        let seen: Vec<String> = self.core.connect_log.seen_errors.clone();
        tokio::spawn(async move {
            let result = match attempt.run().await {
                Ok(connected) => Ok(connected),
                Err(error) => {
                    let cause = error.to_string();
                    let diagnosis = match diagnose {
                        Some((endpoint, settings, timeout)) if !seen.contains(&cause) => {
                            tokio::task::spawn_blocking(move || {
                                tls::diagnose(&endpoint, &settings, timeout)
                            })
                            .await
                            .ok()
                            .flatten()
                        }
                        _ => None,
                    };
                    Err(Failed { error, diagnosis })
                }
            };
            let _ = events
                .send(Event::Connect {
                    attempt: attempt_number,
                    result,
                    closer,
                    bd_seq,
                })
                .await;
        });
    }

    /// What a TLS diagnosis needs: the first TLS endpoint, the TLS settings and the timeout.
    fn diagnosis_input(
        &self,
    ) -> Option<(crate::config::Endpoint, crate::config::TlsConfig, Duration)> {
        let config = &self.core.config;
        let endpoint = config
            .endpoints
            .iter()
            .find(|e| e.scheme == Scheme::Tls)?
            .clone();
        Some((
            endpoint,
            config.config().broker.tls.clone(),
            config.config().broker.connect_timeout(),
        ))
    }

    fn on_connect(
        &mut self,
        attempt: u64,
        result: Result<Connected, Failed>,
        closer: Closer,
        bd_seq: Option<u64>,
    ) {
        let now = Instant::now();
        match result {
            Ok(connected) => match self.core.link.connected(attempt, now) {
                Outcome::Up => {
                    self.core.connect_log.connected();
                    self.core.server = Some((connected.server.clone(), crate::model::now_ms()));
                    match &mut self.mode {
                        Mode::Plain(plain) => plain.on_connected(&mut self.core, &connected),
                        Mode::Sparkplug(edge) => {
                            edge.on_connected(&mut self.core, &connected, bd_seq)
                        }
                    }
                    status::notify(&self.core);
                }
                _ => {
                    // Made obsolete by a reload or renewal while it ran.
                    tokio::spawn(closer.disconnect(Duration::from_secs(2)));
                }
            },
            Err(failed) => {
                if let Mode::Plain(plain) = &mut self.mode {
                    plain.attempted();
                }
                if let Outcome::Retry(delay) = self.core.link.failed(attempt, now, fastrand::f64())
                {
                    let urls = self.core.session.urls().to_owned();
                    let reason = self.core.connect_log.failed(&failed, &urls, delay);
                    status::offline(&reason, delay);
                }
            }
        }
    }

    fn on_lost(&mut self) {
        let Some(delay) = self.core.link.lost(Instant::now(), fastrand::f64()) else {
            return;
        };
        self.core.server = None;
        if let Mode::Sparkplug(edge) = &mut self.mode {
            edge.ended();
        }
        tracing::warn!(broker = %self.core.session.urls(), retry_in_s = delay.as_secs_f64(), "Connection lost.");
        status::offline("connection lost", delay);
    }

    /// When the plain mode's delivery may ask the store for more.
    fn pump_at(&self) -> Option<Instant> {
        match &self.mode {
            Mode::Plain(plain) if self.core.link.is_up() && plain.delivery.wants_to_send() => {
                Some(plain.delivery.ready_at().into_std())
            }
            _ => None,
        }
    }

    fn pump(&mut self) {
        if let Mode::Plain(plain) = &mut self.mode {
            plain.delivery.request(&self.core.store);
        }
    }

    fn on_incoming(&mut self, message: Incoming) {
        match &mut self.mode {
            Mode::Plain(plain) => {
                let Some(name) = plain.command_name(&message.topic) else {
                    tracing::warn!(topic = %message.topic.escape_debug(), "Message on a topic that is not a command topic; ignored.");
                    return;
                };
                let name = name.to_owned();
                if let Some(answer) = self.commands.arrive(
                    &name,
                    &message.payload,
                    message.retained,
                    &self.core.config.config().actuators,
                ) {
                    self.answer(answer, false);
                }
                self.run_commands();
            }
            Mode::Sparkplug(edge) => edge.on_incoming(&mut self.core, message),
        }
    }

    /// Starts every command that may run now.
    fn run_commands(&mut self) {
        for command in self.commands.ready() {
            commands::spawn(command, self.context.clone(), self.core.events.clone());
        }
    }

    /// A command's answer: logged, and into the outbox (then the ledger, when `record`).
    fn answer(&mut self, response: Response, record: bool) {
        tracing::info!(command = %response.command.escape_debug(), id = ?response.id, ok = response.ok, duplicate = response.duplicate, error = ?response.error, "Command.");
        let Mode::Plain(plain) = &self.mode else {
            return;
        };
        self.core.store.send(Request::Answer {
            topic: plain.responses_topic(),
            response,
            record,
        });
    }

    fn on_pass(&mut self, pass: Pass) {
        match (&mut self.mode, pass) {
            (Mode::Plain(plain), Pass::Json(payload)) => plain.on_pass(&mut self.core, payload),
            (Mode::Sparkplug(edge), Pass::Reading(reading)) => {
                edge.on_pass(&mut self.core, reading)
            }
            // A pass of the other mode's sampler cannot happen: a mode switch takes a restart.
            _ => {}
        }
    }

    fn health_tick(&mut self) {
        match &mut self.mode {
            Mode::Plain(plain) => plain.publish_health(&mut self.core),
            Mode::Sparkplug(edge) => edge.health_tick(&mut self.core),
        }
        status::notify(&self.core);
    }

    /// Pets the systemd watchdog, but only while sampling is alive: a wedged sampler lets
    /// systemd restart the agent. (A stuck sensor does not wedge it; see `sampler`.)
    fn pet_watchdog(&self) {
        let interval_ms = (self.core.config.config().telemetry.interval_s * 1000.0) as u64;
        let since = crate::model::now_ms().saturating_sub(self.sampler.last_pass_ms());
        if since <= 3 * interval_ms + 10_000 {
            service::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(
                since_last_pass_ms = since,
                "Sampling is stuck; not petting the watchdog."
            );
        }
    }

    /// Every `CERT_WATCH`: a renewed certificate on disk is checked on the blocking pool.
    fn watch_certificate(&mut self) {
        let Some(store) = self.key_pair.as_mut() else {
            return;
        };
        if !store.changed() {
            return;
        }
        self.renewing = true;
        let source = store.source().clone();
        let files = store.files.clone();
        let config = self.core.config.clone();
        let identity = self.core.identity.clone();
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                admit::renew(&config, &source, &files, &identity)
            })
            .await
            .unwrap_or_else(|_| Err("internal error while checking".to_owned()));
            let _ = events.send(Event::Renewed(result)).await;
        });
    }

    fn on_renewed(&mut self, result: Result<(), String>) {
        self.renewing = false;
        let cert = self
            .key_pair
            .as_ref()
            .map(|store| store.source().cert.display().to_string())
            .unwrap_or_default();
        match result {
            Ok(()) => {
                tracing::info!(cert = %cert, "Certificate renewed; reconnecting once.");
                // Sparkplug: a clean end of this session (NDEATH) and a new one with the new
                // pair; plain: a disconnect, the next connect says online again.
                let goodbye = matches!(self.mode, Mode::Sparkplug(_));
                if let Mode::Sparkplug(edge) = &mut self.mode {
                    edge.ended();
                }
                if self.core.session.is_connected() {
                    self.core.close_session(goodbye);
                } else {
                    self.core
                        .link
                        .restart(Instant::now(), Duration::ZERO, false);
                }
            }
            Err(reason) => {
                tracing::error!(cert = %cert, reason = %reason, "New certificate refused; the running one stays.")
            }
        }
    }

    /// SIGHUP: the new config is loaded and checked on the blocking pool.
    fn reload(&mut self) {
        let Some(path) = self.reload_from.clone() else {
            return;
        };
        if self.reloading {
            tracing::info!("A reload is running; this SIGHUP is taken with it.");
            return;
        }
        self.reloading = true;
        service::notify(&[sd_notify::NotifyState::Reloading]);
        let events = self.core.events.clone();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || admit::reload(&path))
                .await
                .unwrap_or_else(|_| Err("internal error while reloading".to_owned()));
            let _ = events.send(Event::Reloaded(Box::new(result))).await;
        });
    }

    fn on_reloaded(&mut self, result: Result<(ValidConfig, Identity), String>) {
        self.reloading = false;
        let refused = |why: &str| {
            tracing::error!(findings = %why, "Reload refused; the running config stays.");
            service::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("reload refused; running the previous config"),
            ]);
        };
        let (config, identity) = match result {
            Ok(loaded) => loaded,
            Err(findings) => return refused(&findings),
        };
        let sparkplug = config.config().sparkplug.is_some();
        if sparkplug != matches!(self.mode, Mode::Sparkplug(_)) {
            return refused(
                "switching between plain and Sparkplug mode takes a restart of the agent",
            );
        }
        let old = self.core.config.config();
        let changes = Changes::between(old, config.config());
        let same_identity = identity.client_id == self.core.identity.client_id;
        if changes.session || !same_identity {
            if config.config().broker.tls.min_version != old.broker.tls.min_version {
                tracing::warn!(
                    "broker.tls.min_version takes effect at the next start of the agent."
                );
            }
            let key_pair = if config.config().broker.tls != old.broker.tls {
                admit::key_pair_store(&config)
            } else {
                self.key_pair.take()
            };
            let profile = match &self.mode {
                Mode::Plain(_) => Profile::Plain,
                Mode::Sparkplug(_) => Profile::Sparkplug {
                    subscriptions: edge::Edge::subscriptions_for(&config, &identity),
                },
            };
            let session =
                match self
                    .core
                    .new_session(&config, &identity, key_pair.as_ref(), profile)
                {
                    Ok(session) => session,
                    Err(err) => {
                        self.key_pair = key_pair;
                        return refused(&err.to_string());
                    }
                };
            self.key_pair = key_pair;
            // The old session ends (Sparkplug or a new identity: with its goodbye), the new
            // one connects once it has.
            let goodbye = !same_identity || matches!(self.mode, Mode::Sparkplug(_));
            if self.core.session.is_connected() {
                self.core.close_session(goodbye);
            } else {
                self.core
                    .link
                    .restart(Instant::now(), Duration::ZERO, false);
            }
            self.core.session = session;
            self.core.server = None;
        }
        self.core
            .link
            .set_backoff(&config.config().broker.reconnect);
        self.core.store.send(Request::SetBound(
            config.config().broker.max_queued_messages as usize,
        ));
        self.commands.set_rate(config.config().broker.command_rate);
        self.context.specs = config.sensors.clone();
        self.context.sysfs_root = config.config().sysfs_root.clone();
        let nothing = !changes.any && same_identity;
        let sampling = changes.sampling || !same_identity;
        let session_changed = changes.session || !same_identity;
        match &mut self.mode {
            Mode::Plain(plain) => plain.reconfigure(&config, &identity),
            Mode::Sparkplug(edge) => {
                if !nothing {
                    let state = self
                        .core
                        .book
                        .lock()
                        .map(|b| b.state().clone())
                        .unwrap_or_default();
                    edge.reconfigure(&config, &identity, &state, session_changed);
                }
            }
        }
        if sampling || (!nothing && matches!(self.mode, Mode::Sparkplug(_))) {
            self.core
                .book
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .reconfigure(&config, &identity.client_id);
            self.core.config = config;
            self.core.identity = identity;
            let mut old = std::mem::replace(
                &mut self.sampler,
                start_sampler(&self.core, &self.mode, self.passes_tx.clone()),
            );
            old.stop();
        } else {
            self.core.config = config;
            self.core.identity = identity;
        }
        if nothing {
            tracing::info!("Reloaded; nothing changed.");
        } else {
            tracing::info!(sampling, reconnect = session_changed, "Reloaded.");
        }
        service::notify(&[sd_notify::NotifyState::Ready]);
    }

    /// The stop: within `SHUTDOWN_WAIT` of the signal, whatever is pending. Commands that run
    /// finish or are answered as interrupted, what is in flight is confirmed or stays queued,
    /// the goodbye goes out, and everything handed to the store is on disk before the end.
    async fn stop<F, S>(
        mut self,
        signal: &'static str,
        events: &mut mpsc::Receiver<Event>,
        incoming: &mut mpsc::Receiver<Incoming>,
        store_thread: std::thread::JoinHandle<()>,
        mut shutdown: S,
    ) where
        S: FnMut() -> F,
        F: Future<Output = &'static str>,
    {
        tracing::info!(signal, "Shutting down.");
        service::notify(&[sd_notify::NotifyState::Stopping]);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT - Duration::from_millis(300);
        let second = shutdown();
        tokio::pin!(second);
        self.sampler.stop();
        let at_once = tokio::select! {
            () = self.finish(events, incoming, deadline) => false,
            signal = &mut second => {
                tracing::warn!(signal, "Second signal: stopping without waiting.");
                true
            }
        };
        if !at_once {
            // What is still unanswered, then the store's last writes.
            for answer in self.commands.stop() {
                self.answer(answer, false);
            }
            while let Ok(message) = incoming.try_recv() {
                self.refuse_stopping(message);
            }
            self.core.store.send(Request::Stop);
            let flushed = tokio::select! {
                flushed = wait_stopped(events, deadline + Duration::from_millis(250)) => flushed,
                signal = &mut second => {
                    tracing::warn!(signal, "Second signal: stopping without waiting.");
                    false
                }
            };
            if flushed {
                let _ = store_thread.join();
            } else {
                tracing::error!("The store did not finish in time (slow disk?); the last writes may be missing.");
            }
        }
        tracing::info!(
            sent = self.core.counters.sent,
            dropped = self.core.counters.dropped
                + self.core.counters.lost
                + self
                    .core
                    .stats
                    .queue_full
                    .load(std::sync::atomic::Ordering::Relaxed),
            queued = self.core.outbox.per_kind.iter().sum::<usize>(),
            connects = self.core.link.connects,
            "Stopped."
        );
    }

    /// Lets running commands end and what is in flight be confirmed, then publishes the
    /// goodbye and disconnects, all before `deadline`.
    async fn finish(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        incoming: &mut mpsc::Receiver<Incoming>,
        deadline: tokio::time::Instant,
    ) {
        // Leave time for the goodbye and the disconnect.
        let settle = deadline - Duration::from_millis(1500);
        loop {
            let inflight = match &self.mode {
                Mode::Plain(plain) => plain.delivery.inflight(),
                Mode::Sparkplug(_) => 0,
            };
            let busy = !self.commands.idle() || (self.core.link.is_up() && inflight > 0);
            if !busy {
                break;
            }
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event_stopping(event),
                    None => break,
                },
                Some(message) = incoming.recv() => self.refuse_stopping(message),
                () = tokio::time::sleep_until(settle) => break,
            }
        }
        if self.core.session.is_connected() {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait = (remaining.saturating_sub(Duration::from_millis(600)) / 2)
                .max(Duration::from_millis(200));
            self.core.session.closer().close(wait).await;
        }
    }

    /// During the stop only answers and confirmations count; nothing new starts.
    fn on_event_stopping(&mut self, event: Event) {
        match event {
            Event::Answered {
                key,
                response,
                record,
                finished,
            } => {
                self.answer(response, record);
                if finished {
                    self.commands.finished(&key);
                }
            }
            Event::Finished { key } => self.commands.finished(&key),
            Event::Delivered { generation, id, ok } => {
                if let Mode::Plain(plain) = &mut self.mode {
                    plain.delivered(&mut self.core, generation, id, ok);
                }
            }
            Event::Store(StoreEvent::Report(report)) => self.on_report(report),
            _ => {}
        }
    }

    /// A command that arrives during the stop is answered, not run.
    fn refuse_stopping(&mut self, message: Incoming) {
        let Mode::Plain(plain) = &self.mode else {
            return;
        };
        let Some(name) = plain.command_name(&message.topic) else {
            return;
        };
        let name = name.to_owned();
        let id = crate::commands::parse(
            &name,
            &message.payload,
            &self.core.config.config().actuators,
        )
        .ok()
        .map(|command| command.id);
        let response =
            Response::refused(id.as_deref(), &name, "the agent is stopping; not executed");
        self.answer(response, false);
    }
}

/// Waits for the store's `Stopped`, handling nothing else; false at `deadline`.
async fn wait_stopped(events: &mut mpsc::Receiver<Event>, deadline: tokio::time::Instant) -> bool {
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Store(StoreEvent::Stopped))) => return true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return false,
        }
    }
}
