//! The config file: typed structs, loading and validation.
//!
//! `load` turns YAML into these structs and remembers where every key stood, so each finding can
//! name the line and column. `validate` checks the parsed structure without touching the file
//! system and returns every finding at once. Probing what the config points at (certificates,
//! sensors) is not done here: see `crate::certs` and `crate::sensors`.
//!
//! The structs mirror the YAML keys exactly; every field has the default the SPEC gives. Only this
//! module names `serde_yaml`.

mod components;
mod sources;
pub use sources::{ADS1115_GAINS, ADS1115_RATES};
mod diff;
mod dropin;
pub mod explain;
mod finding;
mod load;
pub mod operations;
mod positions;
#[cfg(test)]
mod reference;
mod report;
mod sensor;
mod validate;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use diff::Changes;
pub use dropin::directory as dropin_directory;
pub use finding::{Finding, Findings, Severity};
pub use load::{inspect, inspect_with, load, load_str, Candidate, ConfigError};
pub use report::load_reporting;
pub use sensor::*;
pub use validate::{
    validate_topic_id, ActuatorSpec, Endpoint, Scheme, SensorSource, SensorSpec, ValidConfig,
};

/// Where the daemon and the offline commands look for the config when neither `--config` nor
/// `FIELDAGENT_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/fieldagent/config.yaml";

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The only section without a full default: `broker.urls` is required.
    pub broker: BrokerConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Persistence of in-flight and buffered messages and of command dedupe.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Root for hwmon, thermal, IIO, serial and MAC lookups; tests point it at a fake tree.
    #[serde(default = "default_sysfs_root")]
    pub sysfs_root: PathBuf,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub sensors: Vec<SensorConfig>,
    #[serde(default)]
    pub alerts: Vec<AlertConfig>,
    /// The allow-list of things a remote command may change.
    #[serde(default)]
    pub actuators: Vec<ActuatorConfig>,
    /// Sparkplug B edge node mode instead of the plain topics, when present.
    #[serde(default)]
    pub sparkplug: Option<SparkplugConfig>,
    /// Remote operations (plain mode); each key enables one type.
    #[serde(default)]
    pub operations: OperationsConfig,
    /// Signed requests.
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub log: LogConfig,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/fieldagent")
}

fn default_sysfs_root() -> PathBuf {
    PathBuf::from("/sys")
}

/// `broker:` — how to reach the broker.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Tried in order, so a dead first broker fails over to the next. Required: validation
    /// refuses an empty list.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Plain `mqtt://` is refused unless this is true.
    #[serde(default)]
    pub allow_insecure: bool,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u64,
    /// A connect attempt (TCP + TLS + CONNACK) that takes longer is abandoned.
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: u64,
    /// False keeps a persistent session (v5: clean_start false + session_expiry_s).
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT 5 only: how long the broker keeps the session while the device is away.
    #[serde(default = "default_session_expiry_s")]
    pub session_expiry_s: u64,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub username: Option<String>,
    /// Read at connect time; its contents never reach a log.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// Bound of the offline buffer kept on disk in `state_dir`.
    #[serde(default = "default_max_queued_messages")]
    pub max_queued_messages: u64,
    /// Messages per second a backlog drains at after a reconnect (a token bucket with a burst of
    /// as many), so a fleet coming back at once does not flatten the broker.
    #[serde(default = "default_drain_rate")]
    pub drain_rate: f64,
    /// Commands per second the agent takes (a token bucket with a burst of as many); more are
    /// answered at once with `ok:false`, `"error":"busy"`, so a flood is answered, not queued
    /// without bound.
    #[serde(default = "default_command_rate")]
    pub command_rate: f64,
}

fn default_keepalive_s() -> u64 {
    60
}
fn default_connect_timeout_s() -> u64 {
    10
}
fn default_session_expiry_s() -> u64 {
    86_400
}
fn default_max_queued_messages() -> u64 {
    10_000
}
fn default_drain_rate() -> f64 {
    50.0
}
fn default_command_rate() -> f64 {
    20.0
}

impl BrokerConfig {
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_s)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_s)
    }
}

/// MQTT protocol version. Accepts `"3.1.1"`, `"5"` or the number `5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    V311,
    V5,
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        })
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(f64),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text,
            Raw::Number(number) => number.to_string(),
        };
        match text.as_str() {
            "3.1.1" => Ok(Protocol::V311),
            "5" | "5.0" => Ok(Protocol::V5),
            other => Err(serde::de::Error::custom(format!(
                "expected \"3.1.1\" or \"5\", found \"{other}\""
            ))),
        }
    }
}

/// `broker.tls:` — mutual TLS material and policy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Required for `mqtts://` and `ssl://` URLs.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The provisioning certificate; its subject CN is the first identity source.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// A PEM key, a TPM 2.0 key file (TSS2 PRIVATE KEY) or a `pkcs11:` URI (RFC 7512).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub min_version: TlsVersion,
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
    /// How to reach the TPM that holds a TSS2 key file.
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
    /// The PKCS#11 module and PIN for a `pkcs11:` key.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
}

/// `broker.tls.tpm:` — the TPM 2.0 a TSS2 key file belongs to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// The TSS2 TCTI: `device:/dev/tpmrm0` (the kernel's resource manager), `tabrmd` (the
    /// tpm2-abrmd daemon), `swtpm:host=127.0.0.1,port=2321` (a simulator).
    #[serde(default = "default_tcti")]
    pub tcti: String,
}

fn default_tcti() -> String {
    "device:/dev/tpmrm0".to_owned()
}

/// `broker.tls.pkcs11:` — the token a `pkcs11:` key lives in.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The token's PKCS#11 module (a shared library).
    pub module: PathBuf,
    /// A file holding the token's user PIN (read at each start and reload, never logged).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: None,
            cert_file: None,
            key_file: None,
            tpm: None,
            pkcs11: None,
            min_version: TlsVersion::default(),
            verify_hostname: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// The lowest TLS version the agent accepts; nothing below 1.2 exists here on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// `broker.reconnect:` — exponential backoff with random jitter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectConfig {
    #[serde(default = "default_initial_s")]
    pub initial_s: f64,
    #[serde(default = "default_max_s")]
    pub max_s: f64,
    /// Fraction of each delay drawn at random, 0..=1, so a fleet does not reconnect in lockstep.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial_s: default_initial_s(),
            max_s: default_max_s(),
            jitter: default_jitter(),
        }
    }
}

fn default_initial_s() -> f64 {
    1.0
}
fn default_max_s() -> f64 {
    120.0
}
fn default_jitter() -> f64 {
    0.2
}

/// `identity:` — where the MQTT client ID comes from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// `auto`, or a literal client ID.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// The order `auto` tries.
    #[serde(default = "default_identity_sources")]
    pub sources: Vec<IdentitySource>,
    /// For the `mac` source; else the first non-loopback interface by name.
    #[serde(default)]
    pub mac_interface: Option<String>,
    /// A literal `client_id` must equal the CN of `broker.tls.cert_file` (the identity the
    /// broker binds the session to); false says the broker identifies devices some other way.
    #[serde(default = "default_true")]
    pub match_certificate: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            client_id: default_client_id(),
            sources: default_identity_sources(),
            mac_interface: None,
            match_certificate: true,
        }
    }
}

fn default_client_id() -> String {
    "auto".to_owned()
}

fn default_identity_sources() -> Vec<IdentitySource> {
    vec![
        IdentitySource::CertificateCn,
        IdentitySource::Serial,
        IdentitySource::Mac,
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    CertificateCn,
    Serial,
    Mac,
}

/// `topics:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            prefix: default_prefix(),
        }
    }
}

fn default_prefix() -> String {
    "devices/{client_id}".to_owned()
}

/// `telemetry:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Seconds between two sampling passes; fractions are allowed.
    #[serde(default = "default_interval_s")]
    pub interval_s: f64,
    #[serde(default)]
    pub qos: u8,
    /// How many telemetry messages to keep while offline; 0 drops them (counted).
    #[serde(default)]
    pub buffer_while_offline: u64,
    /// A pass whose payload is larger goes as several messages (`part`, `parts`).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
}

fn default_max_message_bytes() -> u64 {
    131_072
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            interval_s: default_interval_s(),
            qos: 0,
            buffer_while_offline: 0,
            max_message_bytes: default_max_message_bytes(),
        }
    }
}

fn default_interval_s() -> f64 {
    10.0
}

/// One entry of `alerts:`. Exactly one of `above`, `below`, `equals`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    pub name: String,
    /// A sensor name, or `name.quantity` for sensors with several quantities.
    pub sensor: String,
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
    #[serde(default)]
    pub equals: Option<f64>,
    /// Hysteresis for `above`.
    #[serde(default)]
    pub clear_below: Option<f64>,
    /// Hysteresis for `below`.
    #[serde(default)]
    pub clear_above: Option<f64>,
    /// How long the condition must hold before raising (and the clear condition before clearing).
    #[serde(default)]
    pub for_s: f64,
    #[serde(default)]
    pub severity: AlertSeverity,
    #[serde(default = "default_alert_qos")]
    pub qos: u8,
}

fn default_alert_qos() -> u8 {
    1
}

/// Alert severity as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertSeverity {
    Info,
    #[default]
    Warning,
    Critical,
}

/// One entry of `actuators:` — a file, GPIO line or Modbus coil or register a remote command may
/// set to one of `values`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActuatorConfig {
    pub name: String,
    /// Exactly one of `file`, `gpio` and `modbus`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub gpio: Option<GpioOutputConfig>,
    #[serde(default)]
    pub modbus: Option<ModbusConfig>,
    pub values: Vec<String>,
}

/// `sparkplug:` — Sparkplug B 3.0 edge node settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    pub group_id: String,
    #[serde(default = "default_edge_node_id")]
    pub edge_node_id: String,
    #[serde(default)]
    pub primary_host_id: Option<String>,
    /// Per-sensor report-by-exception deadband, in the sensor's unit.
    #[serde(default)]
    pub deadband: std::collections::BTreeMap<String, f64>,
}

fn default_edge_node_id() -> String {
    "{client_id}".to_owned()
}

/// `security:` — who may ask the device to act.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// A directory of Ed25519 public keys (`<key id>.pem`); when set, every command and
    /// operation request must be signed by one of them.
    #[serde(default)]
    pub command_keys: Option<PathBuf>,
    /// How old a signed request may be.
    #[serde(default = "default_max_command_age_s")]
    pub max_command_age_s: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            command_keys: None,
            max_command_age_s: default_max_command_age_s(),
        }
    }
}

fn default_max_command_age_s() -> u64 {
    300
}

/// `operations:` — remote operations; each key enables one type, and a type whose key is absent
/// is refused as not enabled.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OperationsConfig {
    #[serde(default)]
    pub software_update: Option<SoftwareUpdateConfig>,
    #[serde(default)]
    pub config_update: Option<ConfigUpdateConfig>,
    #[serde(default)]
    pub log_upload: Option<LogUploadConfig>,
    #[serde(default)]
    pub restart: Option<RestartConfig>,
}

/// `operations.software_update`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SoftwareUpdateConfig {
    /// The packages a request may name.
    #[serde(default = "default_update_packages")]
    pub packages: Vec<String>,
    /// How long the new version has to be running and connected before it is rolled back, s.
    #[serde(default = "default_update_confirm_s")]
    pub confirm_s: f64,
}

fn default_update_packages() -> Vec<String> {
    vec!["fieldagent".to_owned()]
}

fn default_update_confirm_s() -> f64 {
    120.0
}

/// `operations.config_update`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigUpdateConfig {
    /// Globs of the drop-in names (in `conf.d/`) a request may write or delete.
    #[serde(default = "default_config_names")]
    pub names: Vec<String>,
    /// How long the agent has to be connected again after a change that reconnects, s.
    #[serde(default = "default_config_confirm_s")]
    pub confirm_s: f64,
}

fn default_config_names() -> Vec<String> {
    vec!["50-remote*.yaml".to_owned()]
}

fn default_config_confirm_s() -> f64 {
    60.0
}

/// `operations.log_upload`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogUploadConfig {
    /// The most lines one upload carries.
    #[serde(default = "default_max_lines")]
    pub max_lines: u64,
}

fn default_max_lines() -> u64 {
    5000
}

/// `operations.restart`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// The whole device may be restarted, not only the agent.
    #[serde(default)]
    pub device: bool,
}

/// `log:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub level: LogLevel,
    #[serde(default)]
    pub target: LogTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    const ALL: [LogLevel; 5] = [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ];

    /// `steps` more verbose (negative: quieter), within trace..error.
    pub fn shifted(self, steps: i8) -> LogLevel {
        let at = Self::ALL.iter().position(|l| *l == self).unwrap_or(2) as i8;
        Self::ALL[(at - steps).clamp(0, 4) as usize]
    }
}

/// `auto` is journald when run by systemd, else stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    #[default]
    Auto,
    Journald,
    Stderr,
}
