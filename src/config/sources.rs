//! Checks of where a sensor or an actuator reads and writes: each sensor source (sysfs, files,
//! 1-Wire, I2C chips, Modbus points, GPIO lines) and the devices several of them share (one
//! serial line, one GPIO line). Part of validation (see `validate`): every finding at once, no
//! I/O.

use std::collections::HashSet;

use super::finding::Finding;
use super::validate::{check_absolute, ActuatorSpec, SensorSource, SensorSpec};
use super::{
    FileConfig, FileField, GpioInputConfig, I2cChip, I2cConfig, ModbusConfig, SensorConfig,
};
use crate::actuators::Target;
use crate::modbus::{Point, Table, Transport};

/// Whether exactly one of the `(key, set)` pairs is set; if not, an error at `key` naming them
/// all and those that were set.
pub(super) fn exactly_one(
    key: &str,
    what: &str,
    keys: &[(&str, bool)],
    findings: &mut Vec<Finding>,
) -> bool {
    let present: Vec<&str> = keys
        .iter()
        .filter_map(|(name, set)| set.then_some(*name))
        .collect();
    if present.len() == 1 {
        return true;
    }
    let all: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
    let found = if present.is_empty() {
        "none".to_owned()
    } else {
        present.join(" and ")
    };
    findings.push(Finding::error(
        key,
        format!(
            "expected exactly one {what} key ({}), found {found}",
            all.join(", ")
        ),
    ));
    false
}

pub(super) fn sensor_source(
    key: &str,
    sensor: &SensorConfig,
    findings: &mut Vec<Finding>,
) -> Option<SensorSource> {
    let present = [
        ("thermal_zone", sensor.thermal_zone.is_some()),
        ("hwmon", sensor.hwmon.is_some()),
        ("iio", sensor.iio.is_some()),
        ("file", sensor.file.is_some()),
        ("w1", sensor.w1.is_some()),
        ("i2c", sensor.i2c.is_some()),
        ("modbus", sensor.modbus.is_some()),
        ("gpio", sensor.gpio.is_some()),
        ("system", sensor.system.is_some()),
    ];
    if !exactly_one(key, "source", &present, findings) {
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
        let field = match file {
            FileConfig::Path(path) => {
                check_absolute(&format!("{key}.file"), path, findings);
                FileField::Whole
            }
            FileConfig::Field(spec) => {
                check_absolute(&format!("{key}.file.path"), &spec.path, findings);
                match (&spec.key, spec.column) {
                    (Some(name), None) => {
                        if name.is_empty()
                            || name.contains(['=', ':'])
                            || name.chars().any(char::is_whitespace)
                        {
                            findings.push(Finding::error(
                                format!("{key}.file.key"),
                                format!(
                                    "expected a key without spaces, '=' or ':', found \"{}\"",
                                    name.escape_debug()
                                ),
                            ));
                        }
                        FileField::Key(name.clone())
                    }
                    (None, Some(column)) => {
                        if column == 0 {
                            findings.push(Finding::error(
                                format!("{key}.file.column"),
                                "expected a column counted from 1, found 0",
                            ));
                        }
                        FileField::Column(column)
                    }
                    (Some(_), Some(_)) => {
                        findings.push(Finding::error(
                            format!("{key}.file"),
                            "expected key or column, found both",
                        ));
                        FileField::Whole
                    }
                    (None, None) => FileField::Whole,
                }
            }
        };
        return Some(SensorSource::File {
            path: file.path().clone(),
            field,
        });
    }
    if let Some(w1) = &sensor.w1 {
        // A 1-Wire device directory is the family code, a dash and the serial in hex.
        let ok = w1.device.len() >= 4
            && w1.device.as_bytes()[2] == b'-'
            && w1
                .device
                .bytes()
                .enumerate()
                .all(|(i, b)| i == 2 || b.is_ascii_hexdigit());
        if !ok {
            findings.push(Finding::error(
                format!("{key}.w1.device"),
                format!(
                    "expected a 1-Wire device such as 28-0316a2791fff, found \"{}\"",
                    w1.device.escape_debug()
                ),
            ));
        }
        return Some(SensorSource::W1 {
            device: w1.device.clone(),
        });
    }
    if let Some(i2c) = &sensor.i2c {
        check_i2c(&format!("{key}.i2c"), i2c, findings);
        return Some(SensorSource::I2c(i2c.clone()));
    }
    if let Some(modbus) = &sensor.modbus {
        return check_modbus(&format!("{key}.modbus"), modbus, findings).map(SensorSource::Modbus);
    }
    if let Some(gpio) = &sensor.gpio {
        return check_gpio_input(&format!("{key}.gpio"), gpio, findings).map(SensorSource::Gpio);
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

pub(super) fn check_i2c(key: &str, i2c: &I2cConfig, findings: &mut Vec<Finding>) {
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

/// Checks `modbus:` of a sensor or an actuator at `key`; the point when it can be built.
pub(super) fn check_modbus(
    key: &str,
    modbus: &ModbusConfig,
    findings: &mut Vec<Finding>,
) -> Option<Point> {
    let transport = match Transport::parse(&modbus.url) {
        Ok(transport) => Some(transport),
        Err(why) => {
            findings.push(Finding::error(format!("{key}.url"), why));
            None
        }
    };
    if let Some(Transport::Rtu(_) | Transport::RtuOverTcp { .. }) = &transport {
        if !(1..=247).contains(&modbus.unit) {
            findings.push(Finding::error(
                format!("{key}.unit"),
                format!(
                    "expected a unit 1..=247 on a serial line, found {}",
                    modbus.unit
                ),
            ));
        }
    }
    let bits = modbus.table.is_bits();
    if bits && modbus.value_type.is_some() {
        findings.push(Finding::error(
            format!("{key}.type"),
            format!(
                "a {} is one bit (read as 0 or 1): type applies to holding and input registers only",
                if modbus.table == Table::Coil { "coil" } else { "discrete input" }
            ),
        ));
    }
    let value_type = modbus.value_type.unwrap_or_default();
    for (name, given) in [
        ("byte_order", modbus.byte_order.is_some()),
        ("word_order", modbus.word_order.is_some()),
    ] {
        if given && (bits || value_type.registers() == 1) {
            findings.push(Finding::error(
                format!("{key}.{name}"),
                format!(
                    "{name} orders the registers of a value of two or four (u32, i32, f32, u64, i64, f64); found it with {}",
                    if bits {
                        modbus.table.as_str()
                    } else {
                        value_type.as_str()
                    }
                ),
            ));
        }
    }
    if let (Some(bytes), Some(words)) = (modbus.byte_order, modbus.word_order) {
        if bytes != crate::modbus::ByteOrder::from(words) {
            findings.push(Finding::error(
                format!("{key}.word_order"),
                format!(
                    "word_order {} means byte_order {}, but byte_order says {}: give one of them",
                    if words == crate::modbus::WordOrder::Big {
                        "big"
                    } else {
                        "little"
                    },
                    crate::modbus::ByteOrder::from(words).as_str(),
                    bytes.as_str()
                ),
            ));
        }
    }
    let count = if bits { 1 } else { value_type.registers() };
    if u32::from(modbus.address) + u32::from(count) > 65_536 {
        findings.push(Finding::error(
            format!("{key}.address"),
            format!(
                "a {} needs {count} registers from {}, past the last address 65535",
                value_type.as_str(),
                modbus.address
            ),
        ));
    }
    let timeout_s = modbus
        .timeout_s
        .unwrap_or(crate::modbus::DEFAULT_TIMEOUT.as_secs_f64());
    if !(0.05..=crate::modbus::MAX_TIMEOUT_S).contains(&timeout_s) {
        findings.push(Finding::error(
            format!("{key}.timeout_s"),
            format!(
                "expected 0.05 to {} seconds, found {timeout_s}",
                crate::modbus::MAX_TIMEOUT_S
            ),
        ));
    }
    let max_span = modbus.max_span.unwrap_or(crate::modbus::DEFAULT_MAX_SPAN);
    let limit = modbus.table.protocol_max();
    if max_span < count || max_span > limit {
        findings.push(Finding::error(
            format!("{key}.max_span"),
            format!(
                "expected {count} to {limit} (the protocol's most for a {} read), found {max_span}",
                modbus.table.as_str()
            ),
        ));
    }
    Some(Point {
        transport: transport?,
        unit: modbus.unit,
        table: modbus.table,
        address: modbus.address,
        value_type,
        byte_order: modbus
            .byte_order
            .or(modbus.word_order.map(Into::into))
            .unwrap_or_default(),
        timeout: std::time::Duration::from_secs_f64(
            timeout_s.clamp(0.05, crate::modbus::MAX_TIMEOUT_S),
        ),
        max_span: max_span.clamp(count, limit),
    })
}

pub(super) fn check_chip_and_line(
    key: &str,
    chip: &str,
    line: &crate::gpio::LineRef,
    findings: &mut Vec<Finding>,
) {
    if chip.trim().is_empty() {
        findings.push(Finding::error(
            format!("{key}.chip"),
            "expected a chip such as gpiochip0 or its label, found an empty one",
        ));
    }
    if let crate::gpio::LineRef::Name(name) = line {
        if name.trim().is_empty() {
            findings.push(Finding::error(
                format!("{key}.line"),
                "expected an offset such as 17 or a line name such as GPIO17, found an empty name",
            ));
        }
    }
}

pub(super) fn check_gpio_input(
    key: &str,
    gpio: &GpioInputConfig,
    findings: &mut Vec<Finding>,
) -> Option<crate::gpio::InputSpec> {
    check_chip_and_line(key, &gpio.chip, &gpio.line, findings);
    let debounce = match gpio.debounce_ms {
        Some(_) if !gpio.edges => {
            findings.push(Finding::error(
                format!("{key}.debounce_ms"),
                "debounce_ms applies to edges; set edges: true or remove it",
            ));
            crate::gpio::DEFAULT_DEBOUNCE
        }
        Some(ms) if ms > 1000 => {
            findings.push(Finding::error(
                format!("{key}.debounce_ms"),
                format!("expected 0 to 1000 milliseconds, found {ms}"),
            ));
            crate::gpio::DEFAULT_DEBOUNCE
        }
        Some(ms) => std::time::Duration::from_millis(u64::from(ms)),
        None => crate::gpio::DEFAULT_DEBOUNCE,
    };
    Some(crate::gpio::InputSpec {
        chip: gpio.chip.clone(),
        line: gpio.line.clone(),
        bias: gpio.bias,
        active_low: gpio.active_low,
        edges: gpio.edges,
        debounce,
    })
}

/// One serial line with one set of settings, and one GPIO line used once, across sensors and
/// actuators.
pub(super) fn check_shared_devices(
    sensors: &[SensorSpec],
    actuators: &[ActuatorSpec],
    findings: &mut Vec<Finding>,
) {
    let mut serial: std::collections::HashMap<std::path::PathBuf, (String, Transport)> =
        std::collections::HashMap::new();
    let mut lines: std::collections::HashMap<(String, crate::gpio::LineRef), String> =
        std::collections::HashMap::new();
    let points = sensors
        .iter()
        .filter_map(|s| match &s.source {
            SensorSource::Modbus(point) => Some((format!("{}.modbus.url", s.key), point)),
            _ => None,
        })
        .chain(actuators.iter().filter_map(|a| match &a.target {
            Target::Modbus(point) => Some((format!("{}.modbus.url", a.key), point)),
            _ => None,
        }));
    for (key, point) in points {
        if let Transport::Rtu(settings) = &point.transport {
            match serial.get(&settings.path) {
                Some((first, transport)) if *transport != point.transport => {
                    findings.push(Finding::error(
                        key,
                        format!(
                            "{} is already used as {transport} at {first}; one serial line has one set of settings",
                            settings.path.display()
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    serial.insert(settings.path.clone(), (key, point.transport.clone()));
                }
            }
        }
    }
    let gpio_lines = sensors
        .iter()
        .filter_map(|s| match &s.source {
            SensorSource::Gpio(input) => Some((
                format!("{}.gpio", s.key),
                input.chip.clone(),
                input.line.clone(),
            )),
            _ => None,
        })
        .chain(actuators.iter().filter_map(|a| match &a.target {
            Target::Gpio(output) => Some((
                format!("{}.gpio", a.key),
                output.chip.clone(),
                output.line.clone(),
            )),
            _ => None,
        }));
    for (key, chip, line) in gpio_lines {
        if let Some(first) = lines.get(&(chip.clone(), line.clone())) {
            findings.push(Finding::error(
                key,
                format!("line {line} of {chip} is already used at {first}; a line is one input or one output"),
            ));
        } else {
            lines.insert((chip, line), key);
        }
    }
}
