//! Checks of the parsed config: every finding at once, no I/O.
//!
//! Each `check_*` pass looks at one section and pushes findings that name the key path, what was
//! expected and what was found. Whether files exist, certificates parse or sensors answer is the
//! probe's business (`crate::certs`, `crate::sensors`), shared by `check` and the daemon.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::finding::Finding;
use super::load::{Partial, Positions};
use super::{
    ActuatorConfig, AlertConfig, BrokerConfig, Config, I2cChip, I2cConfig, IdentityConfig,
    SensorConfig, SparkplugConfig, SystemMetric, TelemetryConfig,
};

/// A config that passed validation; the rest of the program takes only this.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    config: Config,
    /// `broker.urls`, parsed.
    pub endpoints: Vec<Endpoint>,
    /// `sensors`, each with exactly one source.
    pub sensors: Vec<SensorSpec>,
    /// Where each key stood in the file, to place findings made after loading.
    positions: std::sync::Arc<Positions>,
}

impl ValidConfig {
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn with_positions(mut self, positions: Positions) -> ValidConfig {
        self.positions = std::sync::Arc::new(positions);
        self
    }

    /// Fills in the line and column of findings that name a key of this config.
    pub fn locate(&self, findings: &mut [Finding]) {
        for finding in findings {
            if finding.position.is_none() {
                finding.position = self.positions.find(&finding.key);
            }
        }
    }

    /// The topic prefix with `{client_id}` substituted.
    pub fn topic_prefix(&self, client_id: &str) -> String {
        substitute(&self.config.topics.prefix, client_id)
    }
}

/// A broker address from `broker.urls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as written in the config, for logs and findings.
    pub url: String,
    pub scheme: Scheme,
    /// Host name or IP address; IPv6 without brackets.
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `mqtts://` or `ssl://`.
    Tls,
    /// `mqtt://` or `tcp://`, only with `allow_insecure`.
    Plain,
}

/// One configured sensor, its source resolved to exactly one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSpec {
    /// Where it stands in the file, e.g. `sensors[2]`, for findings about it.
    pub key: String,
    pub name: String,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<String>,
    pub source: SensorSource,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SensorSource {
    ThermalZone { zone_type: String },
    Hwmon { chip: String, input: String },
    Iio { device: String, channel: String },
    File(PathBuf),
    I2c(I2cConfig),
    System(Vec<SystemMetric>),
}

impl SensorSource {
    /// The quantity names of a source that yields several values; empty for one value.
    pub fn quantities(&self) -> Vec<&'static str> {
        match self {
            SensorSource::System(metrics) => metrics.iter().map(|m| m.as_str()).collect(),
            SensorSource::I2c(i2c) => match i2c.chip {
                I2cChip::Sht3x => vec!["temperature", "humidity"],
                I2cChip::Bme280 => vec!["temperature", "pressure", "humidity"],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }
}

/// Validates `config`, pushing every finding. Returns the valid form even when findings contain
/// errors; the caller refuses it then.
pub(crate) fn validate(
    config: Config,
    partial: &Partial,
    findings: &mut Vec<Finding>,
) -> Option<ValidConfig> {
    let endpoints = if partial.broker_failed {
        Vec::new()
    } else {
        check_broker(&config.broker, findings)
    };
    check_identity(&config.identity, findings);
    check_topics(&config.topics.prefix, findings);
    check_absolute("state_dir", &config.state_dir, findings);
    check_absolute("sysfs_root", &config.sysfs_root, findings);
    check_telemetry(&config.telemetry, &config.broker, findings);
    let sensors = check_sensors(&config.sensors, &partial.sensor_index, findings);
    let mut quantities: HashSet<String> = partial.sensor_names.iter().cloned().collect();
    let mut partial_names: HashSet<&str> =
        partial.sensor_names.iter().map(String::as_str).collect();
    for sensor in &sensors {
        let names = sensor.source.quantities();
        if names.is_empty() {
            quantities.insert(sensor.name.clone());
        } else {
            for quantity in names {
                quantities.insert(format!("{}.{quantity}", sensor.name));
            }
        }
    }
    // A sensor whose entry was broken may be referenced as `name` or `name.quantity`.
    partial_names.retain(|name| !name.is_empty());
    check_alerts(
        &config.alerts,
        &partial.alert_index,
        &quantities,
        &partial_names,
        findings,
    );
    check_actuators(&config.actuators, &partial.actuator_index, findings);
    if let Some(sparkplug) = &config.sparkplug {
        check_sparkplug(sparkplug, &config, &sensors, findings);
    }
    Some(ValidConfig {
        config,
        endpoints,
        sensors,
        positions: Default::default(),
    })
}

fn check_broker(broker: &BrokerConfig, findings: &mut Vec<Finding>) -> Vec<Endpoint> {
    if broker.urls.is_empty() {
        findings.push(Finding::error(
            "broker.urls",
            "expected at least one broker URL such as mqtts://broker.example.com:8883, found none",
        ));
    }
    let mut endpoints = Vec::new();
    for (index, url) in broker.urls.iter().enumerate() {
        let key = format!("broker.urls[{index}]");
        match parse_endpoint(url) {
            Ok(endpoint) => {
                if endpoint.scheme == Scheme::Plain && !broker.allow_insecure {
                    findings.push(Finding::error(
                        &key,
                        format!(
                            "plain MQTT is refused: expected mqtts:// or ssl://, found \"{url}\" \
                             (set broker.allow_insecure: true to allow it)"
                        ),
                    ));
                }
                if endpoint.scheme == Scheme::Tls && broker.tls.ca_file.is_none() {
                    findings.push(Finding::error(
                        "broker.tls.ca_file",
                        format!("required for the TLS URL \"{url}\", found nothing"),
                    ));
                }
                endpoints.push(endpoint);
            }
            Err(message) => findings.push(Finding::error(key, message)),
        }
    }
    if broker.keepalive_s == 0 || broker.keepalive_s > 65_535 {
        findings.push(Finding::error(
            "broker.keepalive_s",
            format!("expected 1..=65535 seconds, found {}", broker.keepalive_s),
        ));
    }
    if broker.connect_timeout_s == 0 {
        findings.push(Finding::error(
            "broker.connect_timeout_s",
            "expected a positive number of seconds, found 0",
        ));
    }
    if broker.session_expiry_s > u64::from(u32::MAX) {
        findings.push(Finding::error(
            "broker.session_expiry_s",
            format!(
                "expected 0..=4294967295 seconds, found {}",
                broker.session_expiry_s
            ),
        ));
    }
    for (key, path) in [
        ("broker.tls.ca_file", &broker.tls.ca_file),
        ("broker.tls.cert_file", &broker.tls.cert_file),
        ("broker.tls.key_file", &broker.tls.key_file),
        ("broker.password_file", &broker.password_file),
    ] {
        if let Some(path) = path {
            check_absolute(key, path, findings);
        }
    }
    if broker.tls.cert_file.is_some() != broker.tls.key_file.is_some() {
        let (missing, present) = if broker.tls.cert_file.is_some() {
            ("broker.tls.key_file", "cert_file")
        } else {
            ("broker.tls.cert_file", "key_file")
        };
        findings.push(Finding::error(
            missing,
            format!("required together with broker.tls.{present}, found nothing"),
        ));
    }
    if broker.password_file.is_some() && broker.username.is_none() {
        findings.push(Finding::error(
            "broker.username",
            "required when broker.password_file is set, found nothing",
        ));
    }
    let reconnect = &broker.reconnect;
    if !(reconnect.initial_s.is_finite() && reconnect.initial_s > 0.0) {
        findings.push(Finding::error(
            "broker.reconnect.initial_s",
            format!(
                "expected a positive number of seconds, found {}",
                reconnect.initial_s
            ),
        ));
    }
    if !(reconnect.max_s.is_finite() && reconnect.max_s >= reconnect.initial_s) {
        findings.push(Finding::error(
            "broker.reconnect.max_s",
            format!(
                "expected at least initial_s ({}), found {}",
                reconnect.initial_s, reconnect.max_s
            ),
        ));
    }
    if !(0.0..=1.0).contains(&reconnect.jitter) {
        findings.push(Finding::error(
            "broker.reconnect.jitter",
            format!("expected 0..=1, found {}", reconnect.jitter),
        ));
    }
    if !(broker.drain_rate.is_finite() && broker.drain_rate >= 1.0) {
        findings.push(Finding::error(
            "broker.drain_rate",
            format!(
                "expected at least 1 message per second, found {}",
                broker.drain_rate
            ),
        ));
    }
    if !(broker.command_rate.is_finite() && broker.command_rate >= 1.0) {
        findings.push(Finding::error(
            "broker.command_rate",
            format!(
                "expected at least 1 command per second, found {}",
                broker.command_rate
            ),
        ));
    }
    if broker.max_queued_messages == 0 {
        findings.push(Finding::error(
            "broker.max_queued_messages",
            "expected at least 1 (alerts must be kept while offline), found 0",
        ));
    }
    endpoints
}

/// Parses `scheme://host[:port][/]`, the form Paho takes.
pub(crate) fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "expected a URL like mqtts://host:8883, found \"{url}\""
        ));
    };
    let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "mqtts" | "ssl" => (Scheme::Tls, 8883),
        "mqtt" | "tcp" => (Scheme::Plain, 1883),
        _ => {
            return Err(format!(
                "expected scheme mqtts://, ssl://, mqtt:// or tcp://, found \"{scheme}://\""
            ))
        }
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') || authority.contains('?') || authority.contains('#') {
        return Err(format!(
            "expected no path after host and port, found \"{url}\""
        ));
    }
    if authority.contains('@') {
        return Err(
            "credentials do not belong in the URL; use broker.username and broker.password_file"
                .to_owned(),
        );
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!(
                "expected ']' after an IPv6 address, found \"{url}\""
            ));
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("expected ':port' after ']', found \"{after}\"")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("expected a host name, found none in \"{url}\""));
    }
    let port = match port {
        None => default_port,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("expected a port 1..=65535, found \"{text}\"")),
        },
    };
    Ok(Endpoint {
        url: url.to_owned(),
        scheme,
        host: host.to_owned(),
        port,
    })
}

fn check_identity(identity: &IdentityConfig, findings: &mut Vec<Finding>) {
    if identity.client_id != "auto" {
        if let Err(why) = validate_topic_id(&identity.client_id, 128) {
            findings.push(Finding::error("identity.client_id", why));
        }
    }
    if identity.client_id == "auto" && identity.sources.is_empty() {
        findings.push(Finding::error(
            "identity.sources",
            "expected at least one of certificate_cn, serial, mac for client_id: auto, found none",
        ));
    }
    let mut seen = HashSet::new();
    for (index, source) in identity.sources.iter().enumerate() {
        if !seen.insert(source) {
            findings.push(Finding::error(
                format!("identity.sources[{index}]"),
                format!("expected each source once, found {source:?} again"),
            ));
        }
    }
    if let Some(interface) = &identity.mac_interface {
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
            findings.push(Finding::error(
                "identity.mac_interface",
                format!("expected a network interface name such as eth0, found \"{interface}\""),
            ));
        }
    }
}

/// Checks a client ID, group ID or similar string that ends up inside topic names.
pub fn validate_topic_id(id: &str, max_bytes: usize) -> Result<(), String> {
    if id.is_empty() {
        return Err("expected a non-empty ID, found an empty one".to_owned());
    }
    if id.len() > max_bytes {
        return Err(format!(
            "expected at most {max_bytes} bytes, found {} in \"{}\"",
            id.len(),
            id.escape_debug()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| matches!(c, '/' | '+' | '#') || c.is_control())
    {
        return Err(format!(
            "expected no '/', '+', '#' or control characters (it ends up in topic names), \
             found {:?} in \"{}\"",
            bad,
            id.escape_debug()
        ));
    }
    Ok(())
}

/// Replaces every `{client_id}` in `template`.
pub(crate) fn substitute(template: &str, client_id: &str) -> String {
    template.replace("{client_id}", client_id)
}

/// Finds placeholders other than `{client_id}` in a template.
fn unknown_placeholder(template: &str) -> Option<&str> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        let close = after.find('}').map_or(after.len(), |c| c + 1);
        let placeholder = &after[..close];
        if placeholder != "{client_id}" {
            return Some(placeholder);
        }
        rest = &after[close..];
    }
    None
}

fn check_topics(prefix: &str, findings: &mut Vec<Finding>) {
    let key = "topics.prefix";
    if let Some(placeholder) = unknown_placeholder(prefix) {
        findings.push(Finding::error(
            key,
            format!("expected only the placeholder {{client_id}}, found \"{placeholder}\""),
        ));
        return;
    }
    let topic = substitute(prefix, "x");
    let problem = if topic.is_empty() {
        Some("expected a topic prefix such as devices/{client_id}, found an empty one".to_owned())
    } else if topic.contains(['+', '#']) || topic.contains('\0') {
        Some(format!(
            "expected no '+', '#' or NUL in a topic, found \"{prefix}\""
        ))
    } else if topic.starts_with('/') || topic.ends_with('/') || topic.contains("//") {
        Some(format!(
            "expected no empty topic levels, found \"{prefix}\""
        ))
    } else if topic.starts_with('$') {
        Some(format!(
            "expected a topic not starting with '$' (reserved for the broker), found \"{prefix}\""
        ))
    } else {
        None
    };
    if let Some(message) = problem {
        findings.push(Finding::error(key, message));
    } else if !prefix.contains("{client_id}") {
        findings.push(Finding::warning(
            key,
            format!(
                "\"{prefix}\" does not contain {{client_id}}: every device would share these \
                 topics, and per-device broker ACLs would refuse them"
            ),
        ));
    }
}

fn check_absolute(key: &str, path: &Path, findings: &mut Vec<Finding>) {
    if !path.is_absolute() {
        findings.push(Finding::error(
            key,
            format!(
                "expected an absolute path (systemd starts the agent in /), found \"{}\"",
                path.display()
            ),
        ));
    }
}

fn check_telemetry(
    telemetry: &TelemetryConfig,
    broker: &BrokerConfig,
    findings: &mut Vec<Finding>,
) {
    if !(telemetry.interval_s.is_finite() && telemetry.interval_s >= 0.1) {
        findings.push(Finding::error(
            "telemetry.interval_s",
            format!(
                "expected at least 0.1 seconds, found {}",
                telemetry.interval_s
            ),
        ));
    }
    check_qos("telemetry.qos", telemetry.qos, 0, findings);
    if telemetry.buffer_while_offline > broker.max_queued_messages {
        findings.push(Finding::warning(
            "telemetry.buffer_while_offline",
            format!(
                "{} is more than broker.max_queued_messages ({}), which bounds it",
                telemetry.buffer_while_offline, broker.max_queued_messages
            ),
        ));
    }
}

fn check_qos(key: &str, qos: u8, min: u8, findings: &mut Vec<Finding>) {
    if !(min..=2).contains(&qos) {
        findings.push(Finding::error(
            key,
            format!("expected {min}..=2, found {qos}"),
        ));
    }
}

/// Names end up in JSON keys, topics (actuators) and Sparkplug metric names; `.` separates a
/// sensor from its quantity.
fn check_name(key: &str, name: &str, findings: &mut Vec<Finding>) -> bool {
    let bad = name.chars().find(|c| {
        matches!(c, '.' | '/' | '+' | '#' | '"' | '\\') || c.is_whitespace() || c.is_control()
    });
    let message = if name.is_empty() {
        "expected a name, found an empty one".to_owned()
    } else if name.len() > 64 {
        format!("expected at most 64 bytes, found {}", name.len())
    } else if let Some(bad) = bad {
        format!(
            "expected letters, digits, '_' or '-', found {bad:?} in \"{}\"",
            name.escape_debug()
        )
    } else {
        return true;
    };
    findings.push(Finding::error(key, message));
    false
}

fn check_unique<'a>(
    seen: &mut HashSet<&'a str>,
    key: &str,
    what: &str,
    name: &'a str,
    findings: &mut Vec<Finding>,
) {
    if !seen.insert(name) {
        findings.push(Finding::error(
            key,
            format!("expected a unique {what} name, found \"{name}\" twice"),
        ));
    }
}

/// The file index of the `position`th parsed entry of a list.
fn file_index(indices: &[usize], position: usize) -> usize {
    indices.get(position).copied().unwrap_or(position)
}

fn check_sensors(
    sensors: &[SensorConfig],
    indices: &[usize],
    findings: &mut Vec<Finding>,
) -> Vec<SensorSpec> {
    let mut seen = HashSet::new();
    let mut specs = Vec::with_capacity(sensors.len());
    for (position, sensor) in sensors.iter().enumerate() {
        let key = format!("sensors[{}]", file_index(indices, position));
        if check_name(&format!("{key}.name"), &sensor.name, findings) {
            check_unique(
                &mut seen,
                &format!("{key}.name"),
                "sensor",
                &sensor.name,
                findings,
            );
        }
        for (field, value) in [("scale", sensor.scale), ("offset", sensor.offset)] {
            if let Some(value) = value {
                if !value.is_finite() {
                    findings.push(Finding::error(
                        format!("{key}.{field}"),
                        format!("expected a finite number, found {value}"),
                    ));
                }
            }
        }
        if sensor.scale == Some(0.0) {
            findings.push(Finding::warning(
                format!("{key}.scale"),
                "0 turns every reading into the offset",
            ));
        }
        if let Some(source) = sensor_source(&key, sensor, findings) {
            specs.push(SensorSpec {
                key: key.clone(),
                name: sensor.name.clone(),
                scale: sensor.scale.unwrap_or(1.0),
                offset: sensor.offset.unwrap_or(0.0),
                unit: sensor.unit.clone(),
                source,
            });
        }
    }
    specs
}

const SOURCE_KEYS: &str = "thermal_zone, hwmon, iio, file, i2c, system";

fn sensor_source(
    key: &str,
    sensor: &SensorConfig,
    findings: &mut Vec<Finding>,
) -> Option<SensorSource> {
    let present: Vec<&str> = [
        ("thermal_zone", sensor.thermal_zone.is_some()),
        ("hwmon", sensor.hwmon.is_some()),
        ("iio", sensor.iio.is_some()),
        ("file", sensor.file.is_some()),
        ("i2c", sensor.i2c.is_some()),
        ("system", sensor.system.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if present.len() != 1 {
        let found = if present.is_empty() {
            "none".to_owned()
        } else {
            present.join(" and ")
        };
        findings.push(Finding::error(
            key,
            format!("expected exactly one source key ({SOURCE_KEYS}), found {found}"),
        ));
        return None;
    }
    if let Some(zone) = &sensor.thermal_zone {
        if zone.zone_type.trim().is_empty() {
            findings.push(Finding::error(
                format!("{key}.thermal_zone.type"),
                "expected a zone type such as cpu-thermal, found an empty one",
            ));
        }
        return Some(SensorSource::ThermalZone {
            zone_type: zone.zone_type.clone(),
        });
    }
    if let Some(hwmon) = &sensor.hwmon {
        if hwmon.chip.trim().is_empty() || hwmon.chip.contains('/') {
            findings.push(Finding::error(
                format!("{key}.hwmon.chip"),
                format!(
                    "expected a chip name as in hwmonN/name, such as lm75, found \"{}\"",
                    hwmon.chip
                ),
            ));
        }
        if crate::sensors::hwmon_kind(&hwmon.input).is_none() {
            findings.push(Finding::error(
                format!("{key}.hwmon.input"),
                format!(
                    "expected temp<N>, in<N>, curr<N>, power<N>, humidity<N> or fan<N>, found \"{}\"",
                    hwmon.input
                ),
            ));
        }
        return Some(SensorSource::Hwmon {
            chip: hwmon.chip.clone(),
            input: hwmon.input.clone(),
        });
    }
    if let Some(iio) = &sensor.iio {
        if iio.device.trim().is_empty() || iio.device.contains('/') {
            findings.push(Finding::error(
                format!("{key}.iio.device"),
                format!(
                    "expected a device name as in iio:deviceN/name, found \"{}\"",
                    iio.device
                ),
            ));
        }
        let channel_ok = iio.channel.starts_with("in_")
            && iio.channel.len() > 3
            && iio
                .channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !channel_ok {
            findings.push(Finding::error(
                format!("{key}.iio.channel"),
                format!(
                    "expected a channel such as in_voltage0 or in_temp, found \"{}\"",
                    iio.channel
                ),
            ));
        }
        return Some(SensorSource::Iio {
            device: iio.device.clone(),
            channel: iio.channel.clone(),
        });
    }
    if let Some(file) = &sensor.file {
        check_absolute(&format!("{key}.file"), file, findings);
        return Some(SensorSource::File(file.clone()));
    }
    if let Some(i2c) = &sensor.i2c {
        check_i2c(&format!("{key}.i2c"), i2c, findings);
        return Some(SensorSource::I2c(i2c.clone()));
    }
    let metrics = sensor.system.clone().unwrap_or_default();
    if metrics.is_empty() {
        findings.push(Finding::error(
            format!("{key}.system"),
            "expected at least one of cpu_percent, mem_used_percent, load1, load5, load15, \
             disk_used_percent, uptime_s, found none",
        ));
    }
    let mut seen = HashSet::new();
    for (index, metric) in metrics.iter().enumerate() {
        if !seen.insert(*metric) {
            findings.push(Finding::error(
                format!("{key}.system[{index}]"),
                format!("expected each metric once, found {} again", metric.as_str()),
            ));
        }
    }
    Some(SensorSource::System(metrics))
}

/// ADS1115 full-scale ranges (PGA settings), in volts, from the datasheet's table 8.
pub const ADS1115_GAINS: [f64; 6] = [6.144, 4.096, 2.048, 1.024, 0.512, 0.256];
/// ADS1115 data rates in samples per second, from the datasheet's table 8.
pub const ADS1115_RATES: [u32; 8] = [8, 16, 32, 64, 128, 250, 475, 860];

fn check_i2c(key: &str, i2c: &I2cConfig, findings: &mut Vec<Finding>) {
    if !(0x03..=0x77).contains(&i2c.address) {
        findings.push(Finding::error(
            format!("{key}.address"),
            format!(
                "expected a 7-bit address 0x03..=0x77, found {:#04x}",
                i2c.address
            ),
        ));
    }
    let chip = i2c.chip.as_str();
    let only_for = |field: &str, set: bool, owner: I2cChip, findings: &mut Vec<Finding>| {
        if set && i2c.chip != owner {
            findings.push(Finding::error(
                format!("{key}.{field}"),
                format!(
                    "only for chip {}, found it with chip {chip}",
                    owner.as_str()
                ),
            ));
        }
    };
    only_for("channel", i2c.channel.is_some(), I2cChip::Ads1115, findings);
    only_for("gain", i2c.gain.is_some(), I2cChip::Ads1115, findings);
    only_for(
        "data_rate",
        i2c.data_rate.is_some(),
        I2cChip::Ads1115,
        findings,
    );
    only_for("register", i2c.register.is_some(), I2cChip::Raw, findings);
    only_for("length", i2c.length.is_some(), I2cChip::Raw, findings);
    only_for("endian", i2c.endian.is_some(), I2cChip::Raw, findings);
    only_for("signed", i2c.signed.is_some(), I2cChip::Raw, findings);
    if let Some(channel) = i2c.channel {
        if channel > 3 {
            findings.push(Finding::error(
                format!("{key}.channel"),
                format!("expected a single-ended input 0..=3, found {channel}"),
            ));
        }
    }
    if let Some(gain) = i2c.gain {
        if !ADS1115_GAINS.contains(&gain) {
            findings.push(Finding::error(
                format!("{key}.gain"),
                format!("expected one of 6.144, 4.096, 2.048, 1.024, 0.512, 0.256 (volts full scale), found {gain}"),
            ));
        }
    }
    if let Some(rate) = i2c.data_rate {
        if !ADS1115_RATES.contains(&rate) {
            findings.push(Finding::error(
                format!("{key}.data_rate"),
                format!(
                    "expected one of 8, 16, 32, 64, 128, 250, 475, 860 (samples/s), found {rate}"
                ),
            ));
        }
    }
    if i2c.chip == I2cChip::Raw {
        if i2c.register.is_none() {
            findings.push(Finding::error(
                format!("{key}.register"),
                "required for chip raw, found nothing",
            ));
        }
        match i2c.length {
            None => findings.push(Finding::error(
                format!("{key}.length"),
                "required for chip raw (1..=4 bytes), found nothing",
            )),
            Some(length) if !(1..=4).contains(&length) => findings.push(Finding::error(
                format!("{key}.length"),
                format!("expected 1..=4 bytes, found {length}"),
            )),
            Some(_) => {}
        }
    }
}

fn check_alerts(
    alerts: &[AlertConfig],
    indices: &[usize],
    quantities: &HashSet<String>,
    partial_sensors: &HashSet<&str>,
    findings: &mut Vec<Finding>,
) {
    let mut seen = HashSet::new();
    for (position, alert) in alerts.iter().enumerate() {
        let key = format!("alerts[{}]", file_index(indices, position));
        if check_name(&format!("{key}.name"), &alert.name, findings) {
            if alert.name == "sensor_fault" {
                findings.push(Finding::error(
                    format!("{key}.name"),
                    "\"sensor_fault\" is the built-in alert for failing sensors; choose another name",
                ));
            }
            check_unique(
                &mut seen,
                &format!("{key}.name"),
                "alert",
                &alert.name,
                findings,
            );
        }
        let base = alert.sensor.split('.').next().unwrap_or_default();
        if !quantities.contains(&alert.sensor) && !partial_sensors.contains(base) {
            let multi: Vec<&str> = quantities
                .iter()
                .filter(|q| q.starts_with(&format!("{}.", alert.sensor)))
                .map(String::as_str)
                .collect();
            let message = if multi.is_empty() {
                format!(
                    "expected the name of a configured sensor, found \"{}\"",
                    alert.sensor
                )
            } else {
                let mut multi = multi;
                multi.sort_unstable();
                format!(
                    "sensor \"{}\" has several quantities; expected one of {}",
                    alert.sensor,
                    multi.join(", ")
                )
            };
            findings.push(Finding::error(format!("{key}.sensor"), message));
        }
        let conditions = [
            ("above", alert.above),
            ("below", alert.below),
            ("equals", alert.equals),
        ];
        let set: Vec<&str> = conditions
            .iter()
            .filter_map(|(name, value)| value.map(|_| *name))
            .collect();
        if set.len() != 1 {
            let found = if set.is_empty() {
                "none".to_owned()
            } else {
                set.join(" and ")
            };
            findings.push(Finding::error(
                &key,
                format!("expected exactly one of above, below, equals, found {found}"),
            ));
        }
        for (field, value) in conditions.into_iter().chain([
            ("clear_below", alert.clear_below),
            ("clear_above", alert.clear_above),
        ]) {
            if let Some(value) = value {
                if !value.is_finite() {
                    findings.push(Finding::error(
                        format!("{key}.{field}"),
                        format!("expected a finite number, found {value}"),
                    ));
                }
            }
        }
        match (alert.clear_below, alert.above) {
            (Some(_), None) => findings.push(Finding::error(
                format!("{key}.clear_below"),
                "only with above:, found it without",
            )),
            (Some(clear), Some(above)) if clear > above => findings.push(Finding::error(
                format!("{key}.clear_below"),
                format!("expected at most above ({above}), found {clear}"),
            )),
            _ => {}
        }
        match (alert.clear_above, alert.below) {
            (Some(_), None) => findings.push(Finding::error(
                format!("{key}.clear_above"),
                "only with below:, found it without",
            )),
            (Some(clear), Some(below)) if clear < below => findings.push(Finding::error(
                format!("{key}.clear_above"),
                format!("expected at least below ({below}), found {clear}"),
            )),
            _ => {}
        }
        if !(alert.for_s.is_finite() && alert.for_s >= 0.0) {
            findings.push(Finding::error(
                format!("{key}.for_s"),
                format!("expected 0 or more seconds, found {}", alert.for_s),
            ));
        }
        check_qos(&format!("{key}.qos"), alert.qos, 1, findings);
    }
}

/// Command names that are built in and cannot be actuators.
pub const BUILTIN_COMMANDS: [&str; 2] = ["ping", "read"];

fn check_actuators(actuators: &[ActuatorConfig], indices: &[usize], findings: &mut Vec<Finding>) {
    let mut seen = HashSet::new();
    for (position, actuator) in actuators.iter().enumerate() {
        let key = format!("actuators[{}]", file_index(indices, position));
        if check_name(&format!("{key}.name"), &actuator.name, findings) {
            if BUILTIN_COMMANDS.contains(&actuator.name.as_str()) {
                findings.push(Finding::error(
                    format!("{key}.name"),
                    format!(
                        "\"{}\" is a built-in command; choose another name",
                        actuator.name
                    ),
                ));
            }
            check_unique(
                &mut seen,
                &format!("{key}.name"),
                "actuator",
                &actuator.name,
                findings,
            );
        }
        check_absolute(&format!("{key}.file"), &actuator.file, findings);
        if actuator.values.is_empty() {
            findings.push(Finding::error(
                format!("{key}.values"),
                "expected at least one allowed value, found none",
            ));
        }
        let mut values = HashSet::new();
        for (value_index, value) in actuator.values.iter().enumerate() {
            if !values.insert(value.as_str()) {
                findings.push(Finding::error(
                    format!("{key}.values[{value_index}]"),
                    format!("expected each value once, found \"{value}\" again"),
                ));
            }
        }
    }
}

fn check_sparkplug(
    sparkplug: &SparkplugConfig,
    config: &Config,
    sensors: &[SensorSpec],
    findings: &mut Vec<Finding>,
) {
    for (key, value) in [
        ("sparkplug.group_id", &sparkplug.group_id),
        ("sparkplug.edge_node_id", &sparkplug.edge_node_id),
    ] {
        if let Some(placeholder) = unknown_placeholder(value) {
            findings.push(Finding::error(
                key,
                format!("expected only the placeholder {{client_id}}, found \"{placeholder}\""),
            ));
        } else if let Err(why) = validate_topic_id(&substitute(value, "x"), 128) {
            findings.push(Finding::error(key, why));
        }
    }
    if let Some(host) = &sparkplug.primary_host_id {
        if let Err(why) = validate_topic_id(host, 128) {
            findings.push(Finding::error("sparkplug.primary_host_id", why));
        }
    }
    for (name, deadband) in &sparkplug.deadband {
        let key = format!("sparkplug.deadband.{name}");
        let base = name.split('.').next().unwrap_or_default();
        if !sensors.iter().any(|s| s.name == base) {
            findings.push(Finding::error(
                &key,
                format!("expected the name of a configured sensor, found \"{name}\""),
            ));
        }
        if !(deadband.is_finite() && *deadband >= 0.0) {
            findings.push(Finding::error(
                &key,
                format!("expected 0 or more, found {deadband}"),
            ));
        }
    }
    if !config.broker.clean_session {
        findings.push(Finding::note(
            "broker.clean_session",
            "overridden: Sparkplug B 3.0 requires Clean Session true for edge nodes",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: Result<(Scheme, &str, u16), &str>) {
        let got = parse_endpoint(url).map(|e| (e.scheme, e.host, e.port));
        match (got, expected) {
            (Ok((scheme, host, port)), Ok((s, h, p))) => {
                assert_eq!((scheme, host.as_str(), port), (s, h, p), "{url}")
            }
            (Err(message), Err(fragment)) => {
                assert!(message.contains(fragment), "{url}: {message}")
            }
            (got, expected) => panic!("{url}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn endpoints() {
        check(
            "mqtts://broker.example.com:8883",
            Ok((Scheme::Tls, "broker.example.com", 8883)),
        );
        check("ssl://10.0.0.1", Ok((Scheme::Tls, "10.0.0.1", 8883)));
        check("mqtt://localhost/", Ok((Scheme::Plain, "localhost", 1883)));
        check("tcp://[::1]:1884", Ok((Scheme::Plain, "::1", 1884)));
        check("mqtts://[::1]", Ok((Scheme::Tls, "::1", 8883)));
        check("wss://host:443", Err("expected scheme mqtts://"));
        check("broker:8883", Err("expected a URL like"));
        check(
            "mqtts://host:0",
            Err("expected a port 1..=65535, found \"0\""),
        );
        check("mqtts://host:70000", Err("found \"70000\""));
        check("mqtts://:8883", Err("expected a host name"));
        check("mqtts://user:pw@host", Err("credentials do not belong"));
        check("mqtts://host/path", Err("expected no path"));
    }

    #[test]
    fn topic_ids() {
        for (id, ok) in [
            ("sensor-node-001", true),
            ("a/b", false),
            ("a+b", false),
            ("a#", false),
            ("tab\there", false),
            ("", false),
            (&"x".repeat(128), true),
            (&"x".repeat(129), false),
        ] {
            assert_eq!(validate_topic_id(id, 128).is_ok(), ok, "{id:?}");
        }
    }

    #[test]
    fn placeholders() {
        assert_eq!(unknown_placeholder("devices/{client_id}/x"), None);
        assert_eq!(
            unknown_placeholder("devices/{clientid}"),
            Some("{clientid}")
        );
        assert_eq!(
            unknown_placeholder("devices/{client_id"),
            Some("{client_id")
        );
        assert_eq!(substitute("d/{client_id}/{client_id}", "n1"), "d/n1/n1");
    }
}
