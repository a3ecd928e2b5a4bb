//! Checks of the parsed config: every finding at once, no I/O.
//!
//! Each `check_*` pass looks at one section and pushes findings that name the key path, what was
//! expected and what was found. Whether files exist, certificates parse or sensors answer is the
//! probe's business (`crate::certs`, `crate::sensors`), shared by `check` and the daemon.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::components::{check_actuators, check_alerts, check_sensors, check_sparkplug};
use super::finding::Finding;
use super::load::Partial;
use super::positions::Positions;
use super::{
    BrokerConfig, Config, I2cChip, I2cConfig, IdentityConfig, SystemMetric, TelemetryConfig,
};

/// A config that passed validation; the rest of the program takes only this.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// Shared: every part of the agent that keeps the config (the loop, the sampler) holds the
    /// same one, so a 10 000-sensor config is in memory once.
    config: std::sync::Arc<Config>,
    /// `broker.urls`, parsed.
    pub endpoints: Vec<Endpoint>,
    /// `sensors`, each with exactly one source (shared, as `config`).
    pub sensors: std::sync::Arc<[SensorSpec]>,
    /// `actuators`, each with exactly one target.
    pub actuators: Vec<ActuatorSpec>,
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

    /// The config as the daemon keeps it once admitted: without where each key was written,
    /// which only placing findings needs (several MiB for a 10 000-sensor config), and which
    /// a reload works out again from the files.
    pub fn into_running(mut self) -> ValidConfig {
        self.positions = Default::default();
        self
    }

    /// Fills in the file, line and column of findings that name a key of this config (and
    /// names the key as its file has it, for one from a drop-in).
    pub fn locate(&self, findings: &mut [Finding]) {
        self.positions.locate(findings);
    }

    /// Where the key `key` (`broker.urls`, `sensors[2].file`) is written: the file (the config
    /// or a drop-in), line and column; `None` when no file sets it (its default applies).
    pub fn written(&self, key: &str) -> Option<(&std::path::Path, usize, usize)> {
        self.positions.written(key)
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
    ThermalZone {
        zone_type: String,
    },
    Hwmon {
        chip: String,
        input: String,
    },
    Iio {
        device: String,
        channel: String,
    },
    File {
        path: PathBuf,
        field: super::FileField,
    },
    W1 {
        device: String,
    },
    I2c(I2cConfig),
    Modbus(crate::modbus::Point),
    Gpio(crate::gpio::InputSpec),
    System(Vec<SystemMetric>),
}

/// One configured actuator, its target resolved to exactly one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ActuatorSpec {
    /// Where it stands in the file, e.g. `actuators[1]`.
    pub key: String,
    pub name: String,
    pub target: crate::actuators::Target,
    pub values: Vec<String>,
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
    let actuators = check_actuators(&config.actuators, &partial.actuator_index, findings);
    super::sources::check_shared_devices(&sensors, &actuators, findings);
    if let Some(sparkplug) = &config.sparkplug {
        check_sparkplug(sparkplug, &config, &sensors, findings);
    }
    super::operations::check_operations(&config, findings);
    super::operations::check_security(&config, findings);
    Some(ValidConfig {
        config: std::sync::Arc::new(config),
        endpoints,
        sensors: sensors.into(),
        actuators,
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
    // A key in a PKCS#11 token is a pkcs11: URI, not a path.
    let key_file = broker
        .tls
        .key_file
        .as_ref()
        .filter(|key| !crate::keys::is_uri(key));
    let pin_file = broker
        .tls
        .pkcs11
        .as_ref()
        .and_then(|p11| p11.pin_file.as_ref());
    let module = broker.tls.pkcs11.as_ref().map(|p11| &p11.module);
    for (key, path) in [
        ("broker.tls.ca_file", broker.tls.ca_file.as_ref()),
        ("broker.tls.cert_file", broker.tls.cert_file.as_ref()),
        ("broker.tls.key_file", key_file),
        ("broker.tls.pkcs11.module", module),
        ("broker.tls.pkcs11.pin_file", pin_file),
        ("broker.password_file", broker.password_file.as_ref()),
    ] {
        if let Some(path) = path {
            check_absolute(key, path, findings);
        }
    }
    if broker.tls.pkcs11.is_some()
        && !broker
            .tls
            .key_file
            .as_ref()
            .is_some_and(|key| crate::keys::is_uri(key))
    {
        findings.push(Finding::warning(
            "broker.tls.pkcs11",
            "set, but broker.tls.key_file is not a pkcs11: URI, so it is not used",
        ));
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
pub(super) fn unknown_placeholder(template: &str) -> Option<&str> {
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

pub(super) fn check_absolute(key: &str, path: &Path, findings: &mut Vec<Finding>) {
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
    // At least room for a part's head and a few entries; at most what the outbox stores.
    let most = u64::from(crate::outbox::MAX_PAYLOAD);
    if !(1024..=most).contains(&telemetry.max_message_bytes) {
        findings.push(Finding::error(
            "telemetry.max_message_bytes",
            format!(
                "expected 1024 to {most} bytes, found {}",
                telemetry.max_message_bytes
            ),
        ));
    }
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

pub(super) fn check_qos(key: &str, qos: u8, min: u8, findings: &mut Vec<Finding>) {
    if !(min..=2).contains(&qos) {
        findings.push(Finding::error(
            key,
            format!("expected {min}..=2, found {qos}"),
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
