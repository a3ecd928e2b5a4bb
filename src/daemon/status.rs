//! What the daemon says about itself: the health payload, and systemd's STATUS= line, kept
//! current (each failed connect with its reason and next retry, each connect, each health tick
//! with the queue and whether the outbox is memory-only).

use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;

use super::Core;
use crate::service;

/// The health payload from the daemon's counters.
pub fn health(core: &Core) -> String {
    let (rss_bytes, cpu_time_ms) = crate::health::process_usage();
    let ts = crate::model::now_ms();
    let errors = core
        .stats
        .sensor_errors
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let counters = &core.counters;
    crate::health::Health {
        ts,
        time_synced: crate::clock::synced(ts),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: core.started.elapsed().as_secs(),
        rss_bytes,
        cpu_time_ms,
        messages: crate::health::Messages {
            sent: counters.sent,
            dropped: counters.dropped
                + counters.lost
                + core.stats.queue_full.load(Ordering::Relaxed),
            queued: core.outbox.per_kind.iter().sum::<usize>() as u64,
            refused: counters.refused,
        },
        reconnects: core.link.connects.saturating_sub(1),
        last_connect_error: (!core.connect_log.last_error.is_empty())
            .then_some(core.connect_log.last_error.as_str()),
        sensor_errors: &errors,
        outbox_durable: core.outbox.durable,
    }
    .to_json()
}

/// STATUS= as things stand: connected or not, counters, the queue, the outbox's state.
pub fn notify(core: &Core) {
    let memory_only = if core.outbox.durable {
        ""
    } else {
        "; outbox MEMORY-ONLY (state_dir refuses writes)"
    };
    let queued = core.outbox.per_kind.iter().sum::<usize>();
    let text = match &core.server {
        Some((server, _)) => format!(
            "connected to {server}; sent {}, dropped {}, queued {queued}{memory_only}",
            core.counters.sent, core.counters.dropped
        ),
        None => {
            let last = if core.connect_log.last_error.is_empty() {
                "connecting".to_owned()
            } else {
                format!("offline: {}", core.connect_log.last_error)
            };
            format!("{last}; queued {queued}{memory_only}")
        }
    };
    service::notify(&[NotifyState::Status(&text)]);
}

/// A connect failed or the connection was lost.
pub fn offline(reason: &str, retry_in: Duration) {
    service::notify(&[NotifyState::Status(&format!(
        "offline: {reason}; retrying in {:.1} s",
        retry_in.as_secs_f64()
    ))]);
}

/// The outbox went memory-only or back to disk.
pub fn outbox_changed(durable: bool) {
    if durable {
        service::notify(&[NotifyState::Status("outbox on disk again")]);
    } else {
        service::notify(&[NotifyState::Status(
            "outbox MEMORY-ONLY: state_dir refuses writes; queued messages are lost if the agent stops",
        )]);
    }
}
