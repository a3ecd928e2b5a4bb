//! The daemon: a sampler thread, the MQTT session and one event loop, until a shutdown signal.
//!
//! The device starts offline happily: sampling runs from the first second, broker or not, and
//! telemetry made while offline is dropped and counted (the durable outbox comes later).

use std::future::Future;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::ValidConfig;
use crate::identity::Identity;
use crate::model::Sample;
use crate::mqtt::backoff::Backoff;
use crate::mqtt::{MqttError, MqttEvent, Session};
use crate::sensors::Sensors;

/// How long a clean stop waits for the shutdown status to be acknowledged.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Telemetry payloads between the sampler thread and the event loop. Full means the loop is
/// stuck connecting; the sampler then drops the newest and counts it.
const TELEMETRY_QUEUE: usize = 8;

/// Runs the agent until `shutdown` resolves; returns after the clean stop.
pub async fn run(
    config: ValidConfig,
    identity: Identity,
    shutdown: impl Future<Output = &'static str>,
) -> Result<(), MqttError> {
    let (events_tx, mut events) = mpsc::channel(4);
    let session = Session::new(&config, &identity.client_id, events_tx)?;
    tracing::info!(client_id = %identity.client_id, source = %identity, broker = %session.urls(), "Starting.");

    let (telemetry_tx, mut telemetry) = mpsc::channel::<String>(TELEMETRY_QUEUE);
    let (stop_sampler, sampler_stop) = std_mpsc::channel::<()>();
    let interval = Duration::from_secs_f64(config.config().telemetry.interval_s);
    let mut sensors = Sensors::new(&config.sensors, &config.config().sysfs_root);
    let sampler = std::thread::Builder::new()
        .name("sampler".to_owned())
        .spawn(move || {
            let mut sample = Sample::default();
            let mut seq: u64 = 0;
            let mut next = Instant::now();
            loop {
                sensors.read_all(&mut sample);
                let payload = crate::telemetry::telemetry(&sample, seq);
                seq += 1;
                if telemetry_tx.try_send(payload).is_err() {
                    tracing::debug!("Telemetry queue full; sample dropped.");
                }
                next += interval;
                let wait = next.saturating_duration_since(Instant::now());
                match sampler_stop.recv_timeout(wait) {
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })
        .expect("the sampler thread can be spawned");

    let qos = config.config().telemetry.qos;
    let mut backoff = Backoff::new(&config.config().broker.reconnect);
    let mut connected = false;
    let mut last_error = String::new();
    let mut next_attempt = tokio::time::Instant::now();
    let mut dropped: u64 = 0;
    tokio::pin!(shutdown);
    let signal = loop {
        tokio::select! {
            signal = &mut shutdown => break signal,
            Some(payload) = telemetry.recv() => {
                if !(connected && session.publish(&session.telemetry_topic, payload, qos, false)) {
                    dropped += 1;
                }
            }
            Some(MqttEvent::Lost) = events.recv() => {
                if connected {
                    connected = false;
                    let delay = backoff.next_delay(fastrand::f64());
                    tracing::warn!(broker = %session.urls(), retry_in_s = delay.as_secs_f64(), "Connection lost.");
                    next_attempt = tokio::time::Instant::now() + delay;
                }
            }
            () = tokio::time::sleep_until(next_attempt), if !connected => {
                match session.connect().await {
                    Ok(()) => {
                        connected = true;
                        backoff.reset();
                        last_error.clear();
                        tracing::info!(broker = %session.urls(), dropped_while_offline = dropped, "Connected.");
                    }
                    Err(err) => {
                        let delay = backoff.next_delay(fastrand::f64());
                        let cause = err.to_string();
                        // Once per distinct cause, not once per attempt.
                        if cause != last_error {
                            tracing::warn!(error = %cause, retry_in_s = delay.as_secs_f64(), "Cannot connect.");
                            last_error = cause;
                        }
                        next_attempt = tokio::time::Instant::now() + delay;
                    }
                }
            }
        }
    };
    tracing::info!(signal, "Shutting down.");
    drop(stop_sampler);
    session.close(SHUTDOWN_WAIT).await;
    // The sampler wakes on the closed channel; a read stuck in the kernel is not waited for.
    if sampler.is_finished() {
        let _ = sampler.join();
    }
    Ok(())
}
