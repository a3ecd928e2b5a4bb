//! What the daemon says about itself: the health payload, and systemd's STATUS= line, kept
//! current (each failed connect with its reason and next retry, each connect, each health tick
//! with the queue and whether the outbox is memory-only).

use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;

use super::Core;
use crate::service;
use crate::sync::Lock;

/// The health payload from the daemon's counters.
pub fn health(core: &Core) -> String {
    let (rss_bytes, cpu_time_ms) = crate::health::process_usage();
    let ts = crate::model::now_ms();
    let errors = core.stats.sensor_errors.locked().clone();
    let counters = &core.counters;
    crate::health::Health {
        ts,
        time_synced: crate::clock::synced(ts),
        version: crate::VERSION,
        uptime_s: core.started.elapsed().as_secs(),
        rss_bytes,
        cpu_time_ms,
        messages: crate::health::Messages {
            sent: counters.sent,
            dropped: counters.dropped
                + counters.lost
                + core.stats.queue_full.load(Ordering::Relaxed)
                + core.incoming_tx.dropped(),
            queued: core.outbox.per_kind.iter().sum::<usize>() as u64,
            refused: counters.refused,
        },
        reconnects: core.link.connects.saturating_sub(1),
        last_connect_error: (!core.connect_log.last_error.is_empty())
            .then_some(core.connect_log.last_error.as_str()),
        sensor_errors: &errors,
        outbox_durable: core.outbox.durable,
        operations: core.operations.summaries(),
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

/// After a sampling pass: `status.json` again when an alert event was made since the last
/// write (a raise or clear, a sensor failing or back: each one advances the alert book's event
/// counter) or an operation changed state. One comparison per pass, no copy; a write per change,
/// not per pass: boards have slow flash.
pub fn write_file_if_changed(core: &mut Core) {
    let events = core.book.locked().state().counter;
    let operations = core.operations.changed;
    if (events != core.status_alerts || operations) && write_file(core) {
        core.status_alerts = events;
        core.operations.changed = false;
    }
}

/// The raised alerts (`sensor_fault` once, when any sensor fails) and the failing sensors.
fn alerts(core: &Core) -> (Vec<String>, Vec<String>) {
    let book = core.book.locked();
    let on = |map: &std::collections::BTreeMap<String, bool>| {
        map.iter()
            .filter(|(_, up)| **up)
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>()
    };
    let mut raised = on(&book.state().raised);
    let faults = on(&book.state().faults);
    if !faults.is_empty() {
        raised.push(crate::alerts::SENSOR_FAULT.to_owned());
    }
    (raised, faults)
}

/// Replaces `state_dir/status.json` with the daemon's state, on the blocking pool (the loop
/// never waits on the disk); skipped while the previous write is still under way. Whether a
/// write started.
pub fn write_file(core: &Core) -> bool {
    use std::sync::atomic::AtomicBool;
    if core.status_writing.swap(true, Ordering::AcqRel) {
        return false;
    }
    let now = crate::model::now_ms();
    let (raised, failing_sensors) = alerts(core);
    let written = crate::local_status::Written {
        pid: std::process::id(),
        version: crate::VERSION.to_owned(),
        written_ts: now,
        written_boot_ms: Some(crate::clock::boot_ms()),
        boot_id: Some(core.operations.boot_id().to_owned()),
        started_ts: now.saturating_sub(core.started.elapsed().as_millis() as u64),
        client_id: core.identity.client_id.clone(),
        mode: if core.config.config().sparkplug.is_some() {
            "sparkplug"
        } else {
            "plain"
        }
        .to_owned(),
        waiting_for: None,
        connected: core.server.is_some(),
        broker: core.server.as_ref().map(|(server, _)| server.clone()),
        since_ts: core
            .server
            .as_ref()
            .map_or(core.offline_since, |(_, since)| *since),
        last_connect_error: (!core.connect_log.last_error.is_empty())
            .then(|| core.connect_log.last_error.clone()),
        queued: crate::local_status::Queued::from_kinds(core.outbox.per_kind),
        oldest_queued_ts: core.outbox.oldest_ms,
        raised,
        failing_sensors,
        outbox_durable: core.outbox.durable,
        sent: core.counters.sent,
        dropped: core.counters.dropped
            + core.counters.lost
            + core.stats.queue_full.load(Ordering::Relaxed),
        refused: core.counters.refused,
        reconnects: core.link.connects.saturating_sub(1),
        operations: core.operations.summaries(),
    };
    let dir = core.config.config().state_dir.clone();
    let busy: std::sync::Arc<AtomicBool> = std::sync::Arc::clone(&core.status_writing);
    tokio::task::spawn_blocking(move || {
        if let Err(err) = crate::local_status::write(&dir, &written) {
            tracing::debug!(error = %err, "Cannot write status.json.");
        }
        busy.store(false, Ordering::Release);
    });
    true
}
