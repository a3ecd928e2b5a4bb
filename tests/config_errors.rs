//! Broken configs: each is refused with the key path, line, column and a message saying what was
//! expected and what was found.

use std::path::Path;

use fieldagent::config::{load_str, ConfigError, Severity};

use crate::util::{fieldagent, stderr, stdout, TestDir};

const BROKER: &str =
    "broker:\n  urls: [\"mqtts://127.0.0.1:8883\"]\n  tls: { ca_file: /etc/ca.pem }\n";

/// Asserts that `yaml` is refused with an error at `key`, on `line`, whose message contains
/// `message`.
fn check(yaml: &str, key: &str, line: usize, message: &str) {
    let findings = match load_str(yaml, Path::new("/etc/fieldagent/config.yaml")) {
        Ok(_) => panic!("accepted, expected an error at {key}:\n{yaml}"),
        Err(ConfigError::Invalid(findings)) => findings,
        Err(other) => panic!("unexpected error {other}"),
    };
    let found = findings
        .errors()
        .find(|f| f.key == key)
        .unwrap_or_else(|| panic!("no error at {key}; got:\n{findings}"));
    assert_eq!(
        found.position.map(|p| p.0),
        Some(line),
        "line of {key}:\n{findings}"
    );
    assert!(
        found.message.contains(message),
        "message of {key}: {:?} lacks {message:?}",
        found.message
    );
    assert_eq!(found.severity, Severity::Error);
}

#[test]
fn broken_configs_name_key_line_and_cause() {
    let cases: &[(String, &str, usize, &str)] = &[
        (
            format!("{BROKER}sensors:\n  - {{ name: a, file: /x }}\n  - {{ name: b, file: /y }}\n  - {{ name: c, i2c: {{ bus: 1, address: 0x90, chip: tmp102 }} }}\n"),
            "sensors[2].i2c.address",
            7,
            "expected a 7-bit address 0x03..=0x77, found 0x90",
        ),
        (
            "broker:\n  urls: [\"mqtt://10.0.0.1:1883\"]\n".to_owned(),
            "broker.urls[0]",
            2,
            "plain MQTT is refused",
        ),
        (
            "broker:\n  urls: [\"http://broker:80\"]\n".to_owned(),
            "broker.urls[0]",
            2,
            "expected scheme mqtts://, ssl://, mqtt:// or tcp://, found \"http://\"",
        ),
        (
            "broker:\n  urls: [\"mqtts://broker:99999\"]\n  tls: { ca_file: /ca }\n".to_owned(),
            "broker.urls[0]",
            2,
            "expected a port 1..=65535, found \"99999\"",
        ),
        (
            "broker:\n  urls: [\"mqtts://broker\"]\n".to_owned(),
            "broker.tls.ca_file",
            1,
            "required for the TLS URL",
        ),
        (
            format!("{BROKER}  colour: blue\n"),
            "broker.colour",
            4,
            "unknown key; expected one of urls,",
        ),
        (
            format!("{BROKER}telemetry:\n  qos: 3\n"),
            "telemetry.qos",
            5,
            "expected 0..=2, found 3",
        ),
        (
            format!("{BROKER}telemetry:\n  interval_s: 0\n"),
            "telemetry.interval_s",
            5,
            "expected at least 0.1 seconds, found 0",
        ),
        (
            format!("{BROKER}telemetry:\n  interval_s: soon\n"),
            "telemetry.interval_s",
            5,
            "expected a number, found string \"soon\"",
        ),
        (
            format!("{BROKER}  reconnect: {{ initial_s: 30, max_s: 10 }}\n"),
            "broker.reconnect.max_s",
            4,
            "expected at least initial_s (30), found 10",
        ),
        (
            format!("{BROKER}  reconnect: {{ jitter: 1.5 }}\n"),
            "broker.reconnect.jitter",
            4,
            "expected 0..=1, found 1.5",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: t, file: /a }}\n  - {{ name: t, file: /b }}\n"),
            "sensors[1].name",
            6,
            "expected a unique sensor name, found \"t\" twice",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: t, file: /a }}\nalerts:\n  - {{ name: hot, sensor: cpu, above: 80 }}\n"),
            "alerts[0].sensor",
            7,
            "expected the name of a configured sensor, found \"cpu\"",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: sys, system: [load1, uptime_s] }}\nalerts:\n  - {{ name: busy, sensor: sys, above: 4 }}\n"),
            "alerts[0].sensor",
            7,
            "has several quantities; expected one of sys.load1, sys.uptime_s",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: t, file: /a }}\nalerts:\n  - {{ name: hot, sensor: t, above: 80, clear_below: 90 }}\n"),
            "alerts[0].clear_below",
            7,
            "expected at most above (80), found 90",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: t, file: /a }}\nalerts:\n  - {{ name: hot, sensor: t, above: 80, qos: 0 }}\n"),
            "alerts[0].qos",
            7,
            "expected 1..=2, found 0",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: t, thermal_zone: {{ type: x }}, file: /a }}\n"),
            "sensors[0]",
            5,
            "expected exactly one source key (thermal_zone, hwmon, iio, file, w1, i2c, modbus, gpio, system), found thermal_zone and file",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: t, file: {{ path: /run/b, key: level, column: 2 }} }}\n"),
            "sensors[0].file",
            5,
            "expected key or column, found both",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: t, file: {{ path: /run/b, column: 0 }} }}\n"),
            "sensors[0].file.column",
            5,
            "expected a column counted from 1, found 0",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: t, w1: {{ device: ../../etc }} }}\n"),
            "sensors[0].w1.device",
            5,
            "expected a 1-Wire device such as 28-0316a2791fff, found \"../../etc\"",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: t, hwmon: {{ chip: lm75, input: temp1_input }} }}\n"),
            "sensors[0].hwmon.input",
            5,
            "found \"temp1_input\"",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: flow, i2c: {{ bus: 1, address: 0x50, chip: raw, register: 0x10 }} }}\n"),
            "sensors[0].i2c.length",
            5,
            "required for chip raw",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: adc, i2c: {{ bus: 1, address: 0x48, chip: ads1115, gain: 5 }} }}\n"),
            "sensors[0].i2c.gain",
            5,
            "expected one of 6.144, 4.096, 2.048, 1.024, 0.512, 0.256",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: t, i2c: {{ bus: 1, address: 0x48, chip: tmp102, gain: 2.048 }} }}\n"),
            "sensors[0].i2c.gain",
            5,
            "only for chip ads1115",
        ),
        (
            format!("{BROKER}actuators:\n  - {{ name: fan, file: /sys/class/gpio/gpio17/value, values: [] }}\n"),
            "actuators[0].values",
            5,
            "expected at least one allowed value",
        ),
        (
            format!("{BROKER}actuators:\n  - {{ name: ping, file: /x, values: [\"1\"] }}\n"),
            "actuators[0].name",
            5,
            "\"ping\" is a built-in command",
        ),
        (
            format!("{BROKER}topics:\n  prefix: \"devices/{{clientid}}\"\n"),
            "topics.prefix",
            5,
            "expected only the placeholder {client_id}, found \"{clientid}\"",
        ),
        (
            format!("{BROKER}topics:\n  prefix: \"devices/+/x\"\n"),
            "topics.prefix",
            5,
            "expected no '+', '#' or NUL",
        ),
        (
            format!("{BROKER}identity:\n  client_id: \"plant/7\"\n"),
            "identity.client_id",
            5,
            "expected no '/', '+', '#' or control characters",
        ),
        (
            format!("{BROKER}identity:\n  sources: [certificate_cn, imei]\n"),
            "identity.sources[1]",
            5,
            "expected one of certificate_cn, serial, mac, found \"imei\"",
        ),
        (
            "broker:\n  urls: [\"mqtts://a\"]\n  tls: { ca_file: /ca, min_version: \"1.1\" }\n".to_owned(),
            "broker.tls.min_version",
            3,
            "expected 1.2 or 1.3, found \"1.1\"",
        ),
        (
            format!("{BROKER}  protocol: \"4\"\n"),
            "broker.protocol",
            4,
            "expected \"3.1.1\" or \"5\", found \"4\"",
        ),
        (
            format!("{BROKER}state_dir: var/lib/fieldagent\n"),
            "state_dir",
            4,
            "expected an absolute path",
        ),
        (
            format!("{BROKER}sensor:\n  - {{ name: t, file: /a }}\n"),
            "sensor",
            4,
            "unknown key; did you mean `sensors`? expected one of broker, identity,",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ file: /a }}\n"),
            "sensors[0]",
            5,
            "missing required key `name`",
        ),
        (
            "broker:\n  urls: [\"mqtts://a\"\n".to_owned(),
            "",
            3,
            "not valid YAML",
        ),
        // Sparkplug ids end up in topic names: no '/', '+' or '#' (Sparkplug B 3.0, 4.1.1).
        (
            format!("{BROKER}sparkplug:\n  group_id: plant/1\n"),
            "sparkplug.group_id",
            5,
            "found '/' in \"plant/1\"",
        ),
        (
            format!("{BROKER}sparkplug:\n  group_id: plant1\n  edge_node_id: \"node+{{client_id}}\"\n"),
            "sparkplug.edge_node_id",
            6,
            "found '+' in \"node+x\"",
        ),
        (
            format!("{BROKER}sparkplug:\n  group_id: plant1\n  primary_host_id: \"scada#1\"\n"),
            "sparkplug.primary_host_id",
            6,
            "found '#' in \"scada#1\"",
        ),
        (
            format!("{BROKER}sparkplug:\n  group_id: \"{{site}}\"\n"),
            "sparkplug.group_id",
            5,
            "expected only the placeholder {client_id}, found \"{site}\"",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: a, file: /x }}\nsparkplug:\n  group_id: plant1\n  deadband: {{ b: 0.5 }}\n"),
            "sparkplug.deadband.b",
            8,
            "expected the name of a configured sensor, found \"b\"",
        ),
        (
            format!("{BROKER}sensors:\n  - {{ name: a, file: /x }}\nsparkplug:\n  group_id: plant1\n  deadband: {{ a: -1 }}\n"),
            "sparkplug.deadband.a",
            8,
            "expected 0 or more, found -1",
        ),
    ];
    for (yaml, key, line, message) in cases {
        check(yaml, key, *line, message);
    }
}

#[test]
fn every_finding_is_reported_at_once() {
    let yaml = format!(
        "{BROKER}  keepalive_s: 0\n  typo: 1\ntelemetry:\n  qos: 5\nsensors:\n  - {{ name: a, i2c: {{ bus: 1, address: 0x02, chip: lm75 }} }}\n  - {{ name: b, hwmon: {{ chip: x }} }}\n  - {{ name: c, i2c: {{ bus: 1, address: 0x99, chip: lm75 }} }}\nalerts:\n  - {{ name: hot, sensor: b, above: 1 }}\n"
    );
    let Err(ConfigError::Invalid(findings)) = load_str(&yaml, Path::new("c.yaml")) else {
        panic!("accepted");
    };
    let keys: Vec<&str> = findings.errors().map(|f| f.key.as_str()).collect();
    // The broken hwmon entry is reported once; the alert on it is not reported as unknown.
    assert_eq!(
        keys,
        [
            "broker.keepalive_s",
            "broker.typo",
            "telemetry.qos",
            "sensors[0].i2c.address",
            "sensors[1].hwmon",
            "sensors[2].i2c.address",
        ],
        "{findings}"
    );
}

#[test]
fn check_exits_78_and_prints_every_finding_with_file_and_line() {
    let dir = TestDir::new();
    let path = dir.config(&format!(
        "{BROKER}telemetry:\n  qos: 7\nsensors:\n  - {{ name: c, i2c: {{ bus: 1, address: 0x90, chip: lm75 }} }}\n"
    ));
    let output = fieldagent(&["--config", path.to_str().unwrap(), "check"]);
    assert_eq!(output.status.code(), Some(78), "{}", stdout(&output));
    let text = stdout(&output);
    let file = path.display().to_string();
    assert!(
        text.contains(&format!(
            "error: {file}:5:3: telemetry.qos: expected 0..=2, found 7"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "error: {file}:7:31: sensors[0].i2c.address: expected a 7-bit address 0x03..=0x77, found 0x90"
        )),
        "{text}"
    );
    assert!(text.contains("error: "), "{text}");
}

#[test]
fn read_and_identity_refuse_a_broken_config_with_78() {
    let dir = TestDir::new();
    let path = dir.config("broker:\n  urls: []\n");
    for command in ["read", "identity"] {
        let output = fieldagent(&["--config", path.to_str().unwrap(), command]);
        assert_eq!(output.status.code(), Some(78), "{command}");
        assert!(
            stderr(&output).contains("broker.urls: expected at least one broker URL"),
            "{command}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let output = fieldagent(&["--config", "/nonexistent/fieldagent.yaml", "check"]);
    assert_eq!(output.status.code(), Some(78));
    assert!(
        stderr(&output).contains("cannot read config /nonexistent/fieldagent.yaml: No such file"),
        "{}",
        stderr(&output)
    );
}
