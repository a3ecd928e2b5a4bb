//! Checks of the config's components: sensors (their sources are `sources`), alerts, actuators
//! and the Sparkplug section. Part of validation (see `validate`): every finding at once, no
//! I/O.

use std::collections::HashSet;

use super::finding::Finding;
use super::sources::{check_chip_and_line, check_modbus, exactly_one, sensor_source};
use super::validate::{
    check_absolute, check_qos, substitute, unknown_placeholder, validate_topic_id, ActuatorSpec,
    SensorSpec,
};
use super::{ActuatorConfig, AlertConfig, Config, SensorConfig, SparkplugConfig};
use crate::actuators::Target;
use crate::modbus::Table;

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

pub(super) fn check_sensors(
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

pub(super) fn check_alerts(
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

pub(super) fn check_actuators(
    actuators: &[ActuatorConfig],
    indices: &[usize],
    findings: &mut Vec<Finding>,
) -> Vec<ActuatorSpec> {
    let mut seen = HashSet::new();
    let mut specs = Vec::with_capacity(actuators.len());
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
        let present = [
            ("file", actuator.file.is_some()),
            ("gpio", actuator.gpio.is_some()),
            ("modbus", actuator.modbus.is_some()),
        ];
        if !exactly_one(&key, "target", &present, findings) {
            continue;
        }
        let target = if let Some(file) = &actuator.file {
            check_absolute(&format!("{key}.file"), file, findings);
            Target::File(file.clone())
        } else if let Some(gpio) = &actuator.gpio {
            let gkey = format!("{key}.gpio");
            check_chip_and_line(&gkey, &gpio.chip, &gpio.line, findings);
            for (value_index, value) in actuator.values.iter().enumerate() {
                if let Err(why) = crate::gpio::level(value) {
                    findings.push(Finding::error(format!("{key}.values[{value_index}]"), why));
                }
            }
            Target::Gpio(crate::gpio::OutputSpec {
                chip: gpio.chip.clone(),
                line: gpio.line.clone(),
                active_low: gpio.active_low,
            })
        } else {
            let Some(modbus) = &actuator.modbus else {
                continue;
            };
            if modbus.max_span.is_some() {
                findings.push(Finding::error(
                    format!("{key}.modbus.max_span"),
                    "max_span applies to a sensor's reads; an actuator writes one value",
                ));
            }
            let Some(point) = check_modbus(&format!("{key}.modbus"), modbus, findings) else {
                continue;
            };
            if !matches!(point.table, Table::Coil | Table::Holding) {
                findings.push(Finding::error(
                    format!("{key}.modbus.table"),
                    format!(
                        "expected coil or holding (the tables a device lets you write), found {}",
                        point.table.as_str()
                    ),
                ));
            } else {
                for (value_index, value) in actuator.values.iter().enumerate() {
                    if let Err(why) = point.encode(value) {
                        findings.push(Finding::error(format!("{key}.values[{value_index}]"), why));
                    }
                }
            }
            if point.unit == 0 {
                findings.push(Finding::error(
                    format!("{key}.modbus.unit"),
                    "unit 0 is a broadcast: no device answers it, so a command could not say what happened",
                ));
            }
            Target::Modbus(point)
        };
        specs.push(ActuatorSpec {
            key,
            name: actuator.name.clone(),
            target,
            values: actuator.values.clone(),
        });
    }
    specs
}

pub(super) fn check_sparkplug(
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
    // Metric names that differ only in case (tck-id-case-sensitivity-metric-names: an edge node
    // should not publish them; a host may take them for one).
    let groups: [Vec<(String, &str)>; 3] = [
        sensors
            .iter()
            .map(|s| (format!("{}.name", s.key), s.name.as_str()))
            .collect(),
        config
            .alerts
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("alerts[{i}].name"), a.name.as_str()))
            .collect(),
        config
            .actuators
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("actuators[{i}].name"), a.name.as_str()))
            .collect(),
    ];
    for group in &groups {
        let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
        for (key, name) in group {
            match seen.get(&name.to_lowercase()) {
                Some(first) if first != name => findings.push(Finding::warning(
                    key,
                    format!(
                        "\"{name}\" differs from \"{first}\" only in case: a Sparkplug host may take the two metrics for one"
                    ),
                )),
                _ => {
                    seen.insert(name.to_lowercase(), name);
                }
            }
        }
    }
}
