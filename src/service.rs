//! Process-level concerns: signals, logging.

use tokio::signal::unix::{signal, SignalKind};

use crate::config::LogLevel;

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

/// Logs to stderr at the configured level.
pub fn init_logging(level: LogLevel) {
    let level = match level {
        LogLevel::Trace => tracing::Level::TRACE,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    // Colours only for a person at a terminal; a file or the journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
