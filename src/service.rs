//! Process-level concerns: signals, logging.

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{LogLevel, LogTarget};

/// Resolves on SIGTERM or SIGINT with the signal's name.
pub async fn shutdown_signal() -> &'static str {
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler can be installed");
    let mut interrupt = signal(SignalKind::interrupt()).expect("a SIGINT handler can be installed");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    }
}

/// Tells systemd (when it started us with a NOTIFY_SOCKET) about a state change; nothing otherwise.
pub fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::debug!(error = %err, "Cannot notify systemd.");
    }
}

/// systemd's watchdog interval, when `WatchdogSec` is set for this process.
pub fn watchdog() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled()
}

/// SIGHUP, the reload request.
pub fn hangups() -> tokio::signal::unix::Signal {
    signal(SignalKind::hangup()).expect("a SIGHUP handler can be installed")
}

/// Where log lines went, for the first line the agent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    Journald,
    Stderr,
    /// `log.target: journald` was asked for but the journal's socket cannot be reached.
    StderrNoJournal,
}

/// Sets up logging at the configured level: to the journal with structured fields (SENSOR=,
/// BROKER=, ALERT=, … so `journalctl -u fieldagent SENSOR=cpu_temp` works), or to stderr.
/// `auto` means the journal when systemd connected our stderr to it (`JOURNAL_STREAM`).
pub fn init_logging(level: LogLevel, target: LogTarget) -> LogSink {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let level = match level {
        LogLevel::Trace => tracing::Level::TRACE,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let want_journal = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    if want_journal {
        match tracing_journald::layer() {
            Ok(journal) => {
                // Field names as they are (SENSOR=, not F_SENSOR=); the identifier is fixed so
                // a renamed binary still logs as the unit's programme.
                // INFO as "informational" (6), not the crate's "notice" (5): routine lines stay
                // out of `journalctl -p notice`.
                let journal = journal
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        info: tracing_journald::Priority::Informational,
                        debug: tracing_journald::Priority::Debug,
                        ..tracing_journald::PriorityMappings::new()
                    })
                    .with_field_prefix(None)
                    .with_syslog_identifier("fieldagent".to_owned());
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(journal)
                    .try_init();
                return LogSink::Journald;
            }
            Err(_) if target == LogTarget::Auto => {}
            Err(_) => {
                init_stderr(filter);
                return LogSink::StderrNoJournal;
            }
        }
    }
    init_stderr(filter);
    LogSink::Stderr
}

fn init_stderr(filter: tracing_subscriber::filter::LevelFilter) {
    // Colours only for a person at a terminal; a file or the journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// systemd's documented test: `JOURNAL_STREAM` holds the device and inode of the stream it
/// connected to stderr; when they match stderr's, our stderr goes to the journal (and not, say,
/// to a file the operator redirected it to).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    // A duplicate of fd 2 as a File, for std's u64 dev/ino on every target.
    let stderr = std::io::stderr().as_fd().try_clone_to_owned();
    match stderr.map(std::fs::File::from).and_then(|f| f.metadata()) {
        Ok(meta) => meta.dev() == dev && meta.ino() == ino,
        Err(_) => false,
    }
}
