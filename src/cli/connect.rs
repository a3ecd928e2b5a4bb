//! `fieldagent check --connect`: `check`, then one real connection as the device. The TLS floor
//! in a private temporary directory (before anything touches OpenSSL), then a connect with
//! `Profile::Probe` (the plain session's settings, no will, no online status), a timed subscribe
//! and QoS 1 publish, and the daemon's diagnosis of a failure; commands the broker kept for the
//! device are answered `ok:false`, not run. Refused while `status.json` says an agent runs.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::{self, Scheme, ValidConfig};
use crate::error::Error;
use crate::identity::Identity;
use crate::mqtt::{tls, Confirmation, Profile, Session};

/// What `check --connect` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// The offline checks found errors; nothing was tried.
    ConfigErrors,
    Failed,
    Passed,
}

/// `fieldagent check --connect`: `check`, then, when it found no error, one real connection
/// ([`connect`]).
pub fn check_connect(
    path: &Path,
    quiet: bool,
    out: &mut dyn Write,
) -> Result<ConnectOutcome, Error> {
    // The TLS floor before anything touches OpenSSL (the offline checks do).
    let floor = match config::inspect(path) {
        Ok((Some(config), _)) => Some(floor(&config.config().broker.tls)?),
        _ => None,
    };
    let outcome = super::check::check_set_up(path, quiet, out)?;
    if outcome.errors > 0 {
        return Ok(ConnectOutcome::ConfigErrors);
    }
    let mut ignored = Vec::new();
    let config = config::load_reporting(path, &mut ignored)?;
    let (config, identity) = crate::admission::admit(config, path, &mut ignored)?;
    let passed = connect(config, &identity, out)?;
    drop(floor);
    writeln!(
        out,
        "check --connect: {}",
        if passed { "ok" } else { "FAILED" }
    )?;
    Ok(if passed {
        ConnectOutcome::Passed
    } else {
        ConnectOutcome::Failed
    })
}

/// How long queued commands are waited for after the subscribe.
const LISTEN: Duration = Duration::from_millis(500);

/// The TLS floor for the check, as the daemon has it, from a private directory of its own
/// (state_dir may belong to the service user, and a file this process left there could stop
/// the agent). Must run before anything in the process uses OpenSSL; the directory is removed
/// when the returned guard is dropped (OpenSSL has read the file by then).
pub fn floor(tls: &crate::config::TlsConfig) -> Result<FloorDir, Error> {
    floor_for_key(tls, false)
}

/// [`floor`], with the TPM's provider even before the key file exists (`cert create-key --tpm`).
pub fn floor_for_key(tls: &crate::config::TlsConfig, tpm: bool) -> Result<FloorDir, Error> {
    let dir = private_temp_dir()?;
    let guard = FloorDir(dir);
    let needs = if tpm {
        crate::keys::tpm_needs(tls)
    } else {
        crate::keys::openssl_needs(tls)
    };
    tls::enforce_floor(tls.min_version, &needs, &guard.0)?;
    Ok(guard)
}

/// The check's private directory; removed on drop.
pub struct FloorDir(std::path::PathBuf);

impl Drop for FloorDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True when every step passed. [`floor`] must have run first.
pub fn connect(
    config: ValidConfig,
    identity: &Identity,
    out: &mut dyn Write,
) -> Result<bool, Error> {
    let state_dir = &config.config().state_dir;
    if let Ok(status) = crate::local_status::read(
        state_dir,
        crate::model::now_ms(),
        crate::local_status::is_fieldagent,
    ) {
        if status.running {
            writeln!(
                out,
                "connect: not tried: the agent runs (pid {}) as {} with this state_dir; a second \
                 connection as the same device would take over its session. Stop it first \
                 (systemctl stop fieldagent), or read `fieldagent status`.",
                status.pid.unwrap_or_default(),
                identity.client_id
            )?;
            return Ok(false);
        }
    }
    let min = config.config().broker.tls.min_version;
    tls::floor_holds(min).map_err(Error::TlsFloorIgnored)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(steps(&config, identity, out))
}

fn private_temp_dir() -> Result<std::path::PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "fieldagent-check-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    // Not recursive: a directory already there (planted) is an error, never used.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(Error::Output)?;
    Ok(dir)
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

async fn steps(
    config: &ValidConfig,
    identity: &Identity,
    out: &mut dyn Write,
) -> Result<bool, Error> {
    let (lost_tx, _lost) = mpsc::channel(4);
    let (incoming_tx, mut incoming) = crate::mqtt::incoming_queue();
    let mut session = Session::new(
        config,
        &identity.client_id,
        lost_tx,
        incoming_tx,
        None,
        Profile::Probe,
    )?;
    if let Some(path) = &config.config().broker.password_file {
        session.set_password(&crate::mqtt::read_password(path)?);
    }
    let timeout = config.config().broker.connect_timeout();
    let started = Instant::now();
    let attempt = session.attempt();
    let connected = match attempt.run().await {
        Ok(connected) => connected,
        Err(err) => {
            writeln!(out, "connect: FAILED after {} ms: {err}", ms(started))?;
            let endpoint = config.endpoints.iter().find(|e| e.scheme == Scheme::Tls);
            if let Some(endpoint) = endpoint.cloned() {
                let settings = config.config().broker.tls.clone();
                let no_answer = err.is_no_answer();
                let diagnosis = tokio::task::spawn_blocking(move || {
                    no_answer
                        .then(|| tls::missing_step(&endpoint, &settings, timeout))
                        .flatten()
                        .or_else(|| tls::diagnose(&endpoint, &settings, timeout))
                })
                .await
                .ok()
                .flatten();
                if let Some(diagnosis) = diagnosis {
                    writeln!(out, "diagnosis: {diagnosis}")?;
                }
            }
            return Ok(false);
        }
    };
    writeln!(
        out,
        "connect: ok in {} ms to {} as {} (TLS {}+, session present: {})",
        ms(started),
        connected.server,
        identity.client_id,
        tls::display(config.config().broker.tls.min_version),
        if connected.session_present {
            "yes"
        } else {
            "no"
        }
    )?;
    let mut passed = true;
    let sparkplug = config.config().sparkplug.as_ref();
    let filter = match sparkplug {
        Some(sp) => crate::sparkplug::Topics::new(sp, &identity.client_id).ncmd,
        None => session.commands_filter(),
    };
    let started = Instant::now();
    match session.subscribe(&filter).await {
        Ok(()) => writeln!(out, "subscribe {filter}: ok in {} ms", ms(started))?,
        Err(why) => {
            writeln!(
                out,
                "subscribe {filter}: FAILED after {} ms: {why}",
                ms(started)
            )?;
            passed = false;
        }
    }
    if sparkplug.is_some() {
        writeln!(
            out,
            "publish: skipped in Sparkplug mode (a message outside the node's session would break its seq)"
        )?;
    } else {
        let topic = session.health_topic();
        let payload = format!(
            r#"{{"ts":{},"version":"{}","check_connect":true}}"#,
            crate::model::now_ms(),
            crate::VERSION
        );
        let started = Instant::now();
        let confirmation = match session.publish_confirmed(&topic, payload.into_bytes(), 1, timeout)
        {
            Some(confirmation) => confirmation.await,
            None => Confirmation::Failed,
        };
        match confirmation {
            Confirmation::Delivered => {
                let caveat = if config.config().broker.protocol == crate::config::Protocol::V5 {
                    ""
                } else {
                    " (MQTT 3.1.1 cannot say whether the broker's ACL dropped it; protocol \"5\" can)"
                };
                writeln!(
                    out,
                    "publish {topic} (QoS 1): confirmed in {} ms{caveat}",
                    ms(started)
                )?;
            }
            Confirmation::Refused(reason) => {
                writeln!(
                    out,
                    "publish {topic} (QoS 1): REFUSED by the broker after {} ms: {reason}; check its ACL for this device",
                    ms(started)
                )?;
                passed = false;
            }
            Confirmation::Failed => {
                writeln!(
                    out,
                    "publish {topic} (QoS 1): FAILED: no PUBACK within {} s",
                    timeout.as_secs()
                )?;
                passed = false;
            }
        }
    }
    // Commands the broker kept for the device came with the session: answered, not run.
    let mut answered = 0;
    let until = tokio::time::Instant::now() + LISTEN;
    while let Ok(Some(message)) = tokio::time::timeout_at(until, incoming.recv()).await {
        if sparkplug.is_some() {
            continue;
        }
        let name = message
            .topic
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let id = serde_json::from_slice::<serde_json::Value>(&message.payload)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
        let response = crate::commands::Response::refused(
            id.as_deref(),
            &name,
            "not executed: received by `fieldagent check --connect` while the agent was stopped; send it again",
        );
        let payload = response.to_json().into_bytes();
        if let Some(confirmation) =
            session.publish_confirmed(&session.responses_topic, payload, 1, timeout)
        {
            confirmation.await;
        }
        answered += 1;
    }
    if answered > 0 {
        writeln!(
            out,
            "commands: {answered} kept by the broker for this device arrived and were answered ok:false, not executed"
        )?;
    }
    session.closer().disconnect(Duration::from_secs(2)).await;
    Ok(passed)
}
