//! The config's `sensors:` entries and their sources, as the YAML writes them (validation turns
//! them into `SensorSpec`s).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One entry of `sensors:`. Exactly one source key is set; validation turns it into
/// [`SensorSource`]. The source keys are plain options (not a serde enum) so that unknown keys
/// stay errors and a missing or doubled source gets a message of our own.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    pub name: String,
    /// value = reading * scale + offset, after the source's own unit conversion.
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
    /// Overrides the source's own unit in `read` and in metadata.
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub thermal_zone: Option<ThermalZoneConfig>,
    #[serde(default)]
    pub hwmon: Option<HwmonConfig>,
    #[serde(default)]
    pub iio: Option<IioConfig>,
    #[serde(default)]
    pub file: Option<FileConfig>,
    #[serde(default)]
    pub w1: Option<W1Config>,
    #[serde(default)]
    pub i2c: Option<I2cConfig>,
    #[serde(default)]
    pub modbus: Option<ModbusConfig>,
    #[serde(default)]
    pub gpio: Option<GpioInputConfig>,
    #[serde(default)]
    pub system: Option<Vec<SystemMetric>>,
}

/// `modbus:` of a sensor or an actuator: one value on a Modbus device.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// `tcp://host[:502]` or `rtu:///dev/ttyUSB0?baud=9600&parity=E&data=8&stop=1`.
    pub url: String,
    /// The unit (slave) id: 1..=247 on a serial line, 0..=255 over TCP.
    #[serde(default = "default_modbus_unit")]
    pub unit: u8,
    pub table: crate::modbus::Table,
    /// The zero-based address on the wire.
    pub address: u16,
    #[serde(default, rename = "type")]
    pub value_type: Option<crate::modbus::ValueType>,
    /// How a value of several registers lies on the wire: ABCD, CDAB, BADC or DCBA.
    #[serde(default)]
    pub byte_order: Option<crate::modbus::ByteOrder>,
    /// The shorthand for two of them: big (ABCD) or little (CDAB).
    #[serde(default)]
    pub word_order: Option<crate::modbus::WordOrder>,
    /// How long the device has to answer one request.
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// The most registers (or coils) one coalesced request may span.
    #[serde(default)]
    pub max_span: Option<u16>,
}

fn default_modbus_unit() -> u8 {
    1
}

/// `gpio:` of a sensor: an input line.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GpioInputConfig {
    /// `gpiochip0`, `/dev/gpiochip0` or the chip's label.
    pub chip: String,
    /// The offset on the chip, or the line's name.
    pub line: crate::gpio::LineRef,
    #[serde(default)]
    pub bias: crate::gpio::Bias,
    #[serde(default)]
    pub active_low: bool,
    /// A settled change wakes the sampler at once instead of waiting for the next pass.
    #[serde(default)]
    pub edges: bool,
    /// How long the line must be stable after an edge (with `edges`).
    #[serde(default)]
    pub debounce_ms: Option<u32>,
}

/// `gpio:` of an actuator: an output line.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GpioOutputConfig {
    pub chip: String,
    pub line: crate::gpio::LineRef,
    #[serde(default)]
    pub active_low: bool,
}

/// A thermal zone, found by the contents of its `type` file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalZoneConfig {
    #[serde(rename = "type")]
    pub zone_type: String,
}

/// A hwmon input, found by the chip's `name` file (never by hwmonN, which changes across boots).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HwmonConfig {
    pub chip: String,
    /// `temp1`, `in0`, `curr1`, `power1`, `humidity1`, `fan1`.
    pub input: String,
}

/// `file:`: a path whose file holds exactly one number, or a path with the field that holds it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum FileConfig {
    Path(PathBuf),
    Field(FileFieldConfig),
}

impl FileConfig {
    pub fn path(&self) -> &PathBuf {
        match self {
            FileConfig::Path(path) => path,
            FileConfig::Field(field) => &field.path,
        }
    }
}

/// `file: { path, key }` or `file: { path, column }`, for bridge files with several values.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileFieldConfig {
    pub path: PathBuf,
    /// The value of the line `key=value` or `key: value`.
    #[serde(default)]
    pub key: Option<String>,
    /// The whitespace-separated column (from 1) of the first non-empty line.
    #[serde(default)]
    pub column: Option<usize>,
}

/// Which part of a `file:` sensor's file holds its value, once validated.
#[derive(Debug, Clone, PartialEq)]
pub enum FileField {
    /// The whole file: exactly one number.
    Whole,
    Key(String),
    Column(usize),
}

/// A 1-Wire temperature sensor (DS18B20 and kin) under `sysfs_root/bus/w1/devices/DEVICE/`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct W1Config {
    /// The device's directory name, e.g. `28-0316a2791fff`.
    pub device: String,
}

/// An IIO channel, found by the device's `name` file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IioConfig {
    pub device: String,
    /// e.g. `in_voltage0`, `in_temp`, `in_humidityrelative`.
    pub channel: String,
}

/// An I2C chip read directly over `/dev/i2c-N`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct I2cConfig {
    pub bus: u32,
    /// 7-bit address, 0x03..=0x77.
    pub address: u16,
    pub chip: I2cChip,
    /// ads1115: single-ended input 0..=3.
    #[serde(default)]
    pub channel: Option<u8>,
    /// ads1115: full-scale range in volts (the PGA setting).
    #[serde(default)]
    pub gain: Option<f64>,
    /// ads1115: samples per second.
    #[serde(default)]
    pub data_rate: Option<u32>,
    /// raw: the register to read.
    #[serde(default)]
    pub register: Option<u8>,
    /// raw: how many bytes, 1..=4.
    #[serde(default)]
    pub length: Option<u8>,
    #[serde(default)]
    pub endian: Option<Endian>,
    #[serde(default)]
    pub signed: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum I2cChip {
    Tmp102,
    Lm75,
    Sht3x,
    Bme280,
    Ads1115,
    Raw,
}

impl I2cChip {
    pub fn as_str(self) -> &'static str {
        match self {
            I2cChip::Tmp102 => "tmp102",
            I2cChip::Lm75 => "lm75",
            I2cChip::Sht3x => "sht3x",
            I2cChip::Bme280 => "bme280",
            I2cChip::Ads1115 => "ads1115",
            I2cChip::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endian {
    #[default]
    Big,
    Little,
}

/// Host metrics, read through sysinfo and statvfs rather than sysfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemMetric {
    CpuPercent,
    MemUsedPercent,
    Load1,
    Load5,
    Load15,
    DiskUsedPercent,
    UptimeS,
}

impl SystemMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemMetric::CpuPercent => "cpu_percent",
            SystemMetric::MemUsedPercent => "mem_used_percent",
            SystemMetric::Load1 => "load1",
            SystemMetric::Load5 => "load5",
            SystemMetric::Load15 => "load15",
            SystemMetric::DiskUsedPercent => "disk_used_percent",
            SystemMetric::UptimeS => "uptime_s",
        }
    }

    pub fn unit(self) -> Option<&'static str> {
        match self {
            SystemMetric::CpuPercent
            | SystemMetric::MemUsedPercent
            | SystemMetric::DiskUsedPercent => Some("%"),
            SystemMetric::UptimeS => Some("s"),
            SystemMetric::Load1 | SystemMetric::Load5 | SystemMetric::Load15 => None,
        }
    }
}
