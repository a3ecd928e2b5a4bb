//! `fieldagent check`: every finding about the config, its drop-ins, its certificates, the
//! identity, the actuators and one read of every sensor.

use std::io::Write;
use std::path::Path;

use crate::config::{self, Finding, Findings, Severity, ValidConfig};
use crate::error::Error;
use crate::identity;
use crate::sensors::Sensors;

/// What `check` found.
#[derive(Debug)]
pub struct CheckOutcome {
    pub errors: usize,
    pub warnings: usize,
}

/// `fieldagent check`: every finding about the config, its certificates, the identity and one read
/// of every sensor. Sensor failures are warnings: the agent runs and reports them.
///
/// `quiet` prints only warnings and errors.
pub fn check(path: &Path, quiet: bool, out: &mut dyn Write) -> Result<CheckOutcome, Error> {
    let (config, report) = config::inspect(path)?;
    // OpenSSL as the agent would set it up (a TPM key's provider, a token's engine), before the
    // probes use it.
    let _floor = match &config {
        Some(config) => Some(super::connect::floor(&config.config().broker.tls)?),
        None => None,
    };
    report_findings(config, report, quiet, out)
}

/// `check` once OpenSSL is set up (`check --connect` has done it).
pub(super) fn check_set_up(
    path: &Path,
    quiet: bool,
    out: &mut dyn Write,
) -> Result<CheckOutcome, Error> {
    let (config, report) = config::inspect(path)?;
    report_findings(config, report, quiet, out)
}

fn report_findings(
    config: Option<ValidConfig>,
    mut report: Findings,
    quiet: bool,
    out: &mut dyn Write,
) -> Result<CheckOutcome, Error> {
    if let Some(config) = &config {
        probe(config, &mut report.items);
    }
    if !report.has_errors() {
        report.items.insert(0, Finding::ok("", "config is valid"));
    }
    let shown = Findings {
        file: report.file.clone(),
        items: report
            .items
            .iter()
            .filter(|f| !quiet || f.severity >= Severity::Warning)
            .cloned()
            .collect(),
    };
    if !shown.items.is_empty() {
        writeln!(out, "{shown}")?;
    }
    let count = |severity| {
        report
            .items
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    };
    let outcome = CheckOutcome {
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
    };
    writeln!(
        out,
        "check: {} error(s), {} warning(s)",
        outcome.errors, outcome.warnings
    )?;
    Ok(outcome)
}

/// The probes `check` adds to the config's own findings.
fn probe(config: &ValidConfig, items: &mut Vec<Finding>) {
    let now_s = (crate::model::now_ms() / 1000) as i64;
    let mut found = crate::certs::probe(&config.config().broker, now_s);
    if !found.iter().any(|f| f.severity == Severity::Error) {
        let tls = &config.config().broker.tls;
        if let Some(ca) = &tls.ca_file {
            let what = match (&tls.cert_file, &tls.key_file) {
                (Some(cert), Some(key)) => format!(
                    "the CA in {}, the device certificate {} and its key {} are usable",
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
                _ => format!(
                    "the CA in {} is usable (no client certificate)",
                    ca.display()
                ),
            };
            found.push(Finding::ok("broker.tls", what));
        }
    }
    match identity::resolve(config.config()) {
        Ok(identity) => {
            found.push(Finding::ok("identity", format!("client ID {identity}")));
            if !items
                .iter()
                .any(|f| f.key == "topics.prefix" && f.severity == Severity::Error)
            {
                found.push(Finding::ok(
                    "topics.prefix",
                    format!("topics under {}/", config.topic_prefix(&identity.client_id)),
                ));
            }
        }
        Err(err) => found.push(Finding::error("identity", err.to_string())),
    }
    probe_actuators(config, &mut found);
    let (keys, signed) = crate::signed::probe(&config.config().security);
    let refused = signed.iter().any(|f| f.severity == Severity::Error);
    found.extend(signed);
    if let (Some(keys), false) = (keys, refused) {
        if !keys.is_empty() {
            found.push(Finding::ok(
                "security.command_keys",
                format!(
                    "{} key(s); every command and operation request must be signed by one",
                    keys.len()
                ),
            ));
        }
    }
    let mut sensors = Sensors::new(&config.sensors, &config.config().sysfs_root);
    let sample =
        sensors.read_all_within(crate::sensors::DEADLINE, &crate::sensors::Stuck::default());
    // By name: a config of thousands of sensors must not cost their square.
    let values: std::collections::HashMap<&str, &f64> = sample
        .values
        .iter()
        .map(|(name, value)| (&**name, value))
        .collect();
    let errors: std::collections::HashMap<&str, &crate::model::SensorError> = sample
        .errors
        .iter()
        .map(|(name, err)| (&**name, err))
        .collect();
    for (spec, sensor) in config.sensors.iter().zip(sensors.iter()) {
        let key = &spec.key;
        for (value_index, name) in sensor.value_names().iter().enumerate() {
            if let Some(value) = values.get(&**name) {
                let unit = sensor
                    .unit(value_index)
                    .map_or_else(String::new, |unit| format!(" {unit}"));
                found.push(Finding::ok(
                    key,
                    format!("{name} = {value}{unit} from {}", sensor.describe()),
                ));
            } else if let Some(err) = errors.get(&**name) {
                found.push(Finding::warning(key, format!("{name}: {err}")));
            }
        }
    }
    config.locate(&mut found);
    items.extend(found);
}

/// Every actuator's file: there, not a symlink (writes do not follow one), not a FIFO or a
/// socket, and writable by the user the service runs as; every GPIO output's line found. Modbus
/// devices are not written to by a check.
fn probe_actuators(config: &ValidConfig, found: &mut Vec<Finding>) {
    for actuator in &config.actuators {
        let path = match &actuator.target {
            crate::actuators::Target::File(path) => path,
            crate::actuators::Target::Gpio(spec) => {
                let key = format!("{}.gpio", actuator.key);
                match crate::gpio::backend().find(&spec.chip, &spec.line) {
                    Ok(line) => found.push(Finding::ok(
                        &key,
                        format!(
                            "line {} of {}; the agent holds it while it runs",
                            line.offset,
                            line.chip.display()
                        ),
                    )),
                    Err(why) => found.push(Finding::warning(
                        &key,
                        format!(
                            "{why}; commands to {} will fail until it exists",
                            actuator.name
                        ),
                    )),
                }
                continue;
            }
            crate::actuators::Target::Modbus(point) => {
                found.push(Finding::ok(
                    format!("{}.modbus", actuator.key),
                    format!(
                        "{}; written by commands only, never by check",
                        point.describe()
                    ),
                ));
                continue;
            }
        };
        let key = format!("{}.file", actuator.key);
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(err) => {
                found.push(Finding::warning(
                    &key,
                    format!(
                        "cannot stat {}: {err}; commands to {} will fail until it exists",
                        path.display(),
                        actuator.name
                    ),
                ));
                continue;
            }
        };
        if meta.file_type().is_symlink() {
            found.push(Finding::warning(
                &key,
                format!(
                    "{} is a symlink; writes do not follow one: name the file it points to",
                    path.display()
                ),
            ));
            continue;
        }
        if let Some(what) = crate::actuators::unfit_actuator(meta.file_type()) {
            found.push(Finding::warning(
                &key,
                format!("{} is {what}; expected a file", path.display()),
            ));
            continue;
        }
        match writable_by_service(path, &meta) {
            Ok(who) => found.push(Finding::ok(
                &key,
                format!("{} is writable by {who}", path.display()),
            )),
            Err(why) => found.push(Finding::warning(&key, why)),
        }
    }
}

/// Whether the service can write `path`: as root, judged for the user `fieldagent` (the unit's)
/// when it exists; otherwise for the user running this.
fn writable_by_service(path: &Path, meta: &std::fs::Metadata) -> Result<String, String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let euid = nix::unistd::geteuid();
    let user = if euid.is_root() {
        nix::unistd::User::from_name("fieldagent").ok().flatten()
    } else {
        None
    };
    let Some(user) = user else {
        let who = if euid.is_root() {
            "root (no user fieldagent here)".to_owned()
        } else {
            format!("uid {euid}")
        };
        return match nix::unistd::access(path, nix::unistd::AccessFlags::W_OK) {
            Ok(()) => Ok(who),
            Err(err) => Err(format!(
                "{} is not writable by {who}: {err}",
                path.display()
            )),
        };
    };
    let name = std::ffi::CString::new(user.name.clone()).map_err(|err| err.to_string())?;
    let groups = nix::unistd::getgrouplist(&name, user.gid).unwrap_or_default();
    let mode = meta.permissions().mode();
    let writable = (meta.uid() == user.uid.as_raw() && mode & 0o200 != 0)
        || (groups.iter().any(|g| g.as_raw() == meta.gid()) && mode & 0o020 != 0)
        || mode & 0o002 != 0;
    if writable {
        Ok("user fieldagent".to_owned())
    } else {
        Err(format!(
            "{} is not writable by user fieldagent (owner uid {}, group gid {}, mode {:o}); give its group write access, e.g. with a udev rule",
            path.display(),
            meta.uid(),
            meta.gid(),
            mode & 0o7777
        ))
    }
}
