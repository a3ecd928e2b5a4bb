//! Sensors against fake sysfs trees: lookup by name, unit conversion, IIO scaling, failures that
//! stay local, and devices that vanish and come back.

use std::path::Path;
use std::sync::Arc;

use fieldagent::config::load_str;
use fieldagent::model::Sample;
use fieldagent::sensors::Sensors;

use crate::util::{fake_sysfs, TestDir};

fn sensors(dir: &TestDir, sensors_yaml: &str) -> Sensors {
    let yaml = format!(
        "broker: {{ urls: [\"mqtts://127.0.0.1\"], tls: {{ ca_file: /ca.pem }} }}\nsysfs_root: {}\nsensors:\n{sensors_yaml}",
        dir.path().join("sys").display()
    );
    let (config, _) = load_str(&yaml, Path::new("test.yaml")).expect("valid config");
    Sensors::new(&config.sensors, &config.config().sysfs_root)
}

fn values(sample: &Sample) -> Vec<(&str, f64)> {
    sample.values.iter().map(|(n, v)| (&**n, *v)).collect()
}

fn error(sample: &Sample, name: &str) -> Option<String> {
    sample
        .errors
        .iter()
        .find(|(n, _)| &**n == name)
        .map(|(_, e)| e.to_string())
}

#[test]
fn every_sysfs_kind_in_its_unit() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let mut set = sensors(
        &dir,
        r#"  - { name: cpu, thermal_zone: { type: cpu-thermal } }
  - { name: gpu, thermal_zone: { type: gpu-thermal } }
  - { name: nvme, hwmon: { chip: nvme, input: temp1 } }
  - { name: lm75, hwmon: { chip: lm75, input: temp1 } }
  - { name: volts, hwmon: { chip: ina219, input: in1 } }
  - { name: amps, hwmon: { chip: ina219, input: curr1 } }
  - { name: watts, hwmon: { chip: ina219, input: power1 } }
  - { name: fan, hwmon: { chip: pwmfan, input: fan1 } }
  - { name: adc, iio: { device: ads1015, channel: in_voltage0 } }
  - { name: rh, iio: { device: bme680, channel: in_humidityrelative } }
  - { name: baro, iio: { device: bme680, channel: in_pressure } }
  - { name: fahrenheit, thermal_zone: { type: cpu-thermal }, scale: 1.8, offset: 32 }
"#,
    );
    let mut sample = Sample::default();
    set.read_all(&mut sample);
    assert!(sample.errors.is_empty(), "{:?}", sample.errors);
    assert_eq!(
        values(&sample),
        [
            ("cpu", 48.25),
            ("gpu", 39.0),
            ("nvme", 35.85),
            ("lm75", -10.5),
            ("volts", 12.04),
            ("amps", -0.25),
            ("watts", 3.01),
            ("fan", 2400.0),
            ("adc", 3.072),
            ("rh", 45.123),
            ("baro", 1013.25),
            ("fahrenheit", 118.85),
        ]
    );
    let units: Vec<Option<&str>> = set.iter().map(|s| s.unit(0)).collect();
    assert_eq!(
        units,
        [
            Some("°C"),
            Some("°C"),
            Some("°C"),
            Some("°C"),
            Some("V"),
            Some("A"),
            Some("W"),
            Some("RPM"),
            Some("V"),
            Some("%RH"),
            Some("hPa"),
            Some("°C"),
        ]
    );
    assert!(sample.ts_ms > 1_600_000_000_000);
}

#[test]
fn a_failing_sensor_never_stops_the_others() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    dir.write("sys/class/hwmon/hwmon4/name", "broken\n");
    dir.write("sys/class/hwmon/hwmon4/temp1_input", "\n");
    dir.write("data/garbage", "ERR\n");
    let mut set = sensors(
        &dir,
        &format!(
            r#"  - {{ name: gone, file: {base}/data/vanished }}
  - {{ name: cpu, thermal_zone: {{ type: cpu-thermal }} }}
  - {{ name: junk, file: {base}/data/garbage }}
  - {{ name: empty, hwmon: {{ chip: broken, input: temp1 }} }}
  - {{ name: nochip, hwmon: {{ chip: tmp421, input: temp1 }} }}
  - {{ name: noinput, hwmon: {{ chip: lm75, input: temp9 }} }}
  - {{ name: noiio, iio: {{ device: ads1015, channel: in_voltage3 }} }}
  - {{ name: fan, hwmon: {{ chip: pwmfan, input: fan1 }} }}
"#,
            base = dir.path().display()
        ),
    );
    let mut sample = Sample::default();
    set.read_all(&mut sample);
    assert_eq!(values(&sample), [("cpu", 48.25), ("fan", 2400.0)]);
    let sys = dir.path().join("sys");
    let data = dir.path().join("data");
    for (name, expected) in [
        ("gone", format!("cannot read {}/vanished: No such file or directory (os error 2)", data.display())),
        ("junk", format!("{}/garbage: expected a number, found \"ERR\"", data.display())),
        ("empty", format!("{}/class/hwmon/hwmon4/temp1_input: expected a number, found \"\"", sys.display())),
        ("nochip", format!("no hwmon chip with name \"tmp421\" under {}/class/hwmon", sys.display())),
        ("noinput", format!("cannot read {}/class/hwmon/hwmon2/temp9_input: No such file or directory (os error 2)", sys.display())),
        ("noiio", format!("cannot read {}/bus/iio/devices/iio:device0/in_voltage3_raw: No such file or directory (os error 2)", sys.display())),
    ] {
        assert_eq!(error(&sample, name).as_deref(), Some(expected.as_str()), "{name}");
    }
}

#[test]
fn a_chip_that_vanishes_and_comes_back_under_another_number_is_found_again() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let mut set = sensors(
        &dir,
        "  - { name: fan, hwmon: { chip: pwmfan, input: fan1 } }\n",
    );
    let mut sample = Sample::default();
    set.read_all(&mut sample);
    assert_eq!(values(&sample), [("fan", 2400.0)]);
    assert!(set
        .iter()
        .next()
        .unwrap()
        .describe()
        .contains("hwmon3/fan1_input"));

    // The driver is unloaded. In sysfs the kept attribute then fails to read (ENODEV); in this
    // fake tree the kept file is emptied, which fails the same way, and its directory removed.
    std::fs::write(dir.path().join("sys/class/hwmon/hwmon3/fan1_input"), "").unwrap();
    std::fs::remove_dir_all(dir.path().join("sys/class/hwmon/hwmon3")).unwrap();
    set.read_all(&mut sample);
    assert!(values(&sample).is_empty());
    assert!(
        error(&sample, "fan").unwrap().contains("expected a number"),
        "{:?}",
        sample.errors
    );
    set.read_all(&mut sample);
    assert!(
        error(&sample, "fan")
            .unwrap()
            .contains("no hwmon chip with name \"pwmfan\""),
        "{:?}",
        sample.errors
    );

    // It is loaded again as hwmon7 with a new value.
    dir.write("sys/class/hwmon/hwmon7/name", "pwmfan\n");
    dir.write("sys/class/hwmon/hwmon7/fan1_input", "3100\n");
    set.read_all(&mut sample);
    assert_eq!(values(&sample), [("fan", 3100.0)]);
    assert!(set
        .iter()
        .next()
        .unwrap()
        .describe()
        .contains("hwmon7/fan1_input"));
}

#[test]
fn kept_attributes_see_new_values() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let mut set = sensors(
        &dir,
        "  - { name: cpu, thermal_zone: { type: cpu-thermal } }\n",
    );
    let mut sample = Sample::default();
    set.read_all(&mut sample);
    assert_eq!(values(&sample), [("cpu", 48.25)]);
    dir.write("sys/class/thermal/thermal_zone1/temp", "81000\n");
    set.read_all(&mut sample);
    assert_eq!(values(&sample), [("cpu", 81.0)]);
}

#[test]
fn a_file_replaced_by_rename_is_read_anew() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let path = dir.write("run/tank", "12.5\n");
    let mut set = sensors(
        &dir,
        &format!("  - {{ name: tank, file: {}, scale: 2 }}\n", path.display()),
    );
    let mut sample = Sample::default();
    set.read_all(&mut sample);
    assert_eq!(values(&sample), [("tank", 25.0)]);
    let new = dir.write("run/tank.new", "30\n");
    std::fs::rename(new, &path).unwrap();
    set.read_all(&mut sample);
    assert_eq!(values(&sample), [("tank", 60.0)]);
}

#[test]
fn system_metrics_have_one_value_each() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let mut set = sensors(
        &dir,
        "  - { name: sys, system: [mem_used_percent, uptime_s, load1, disk_used_percent] }\n",
    );
    let mut sample = Sample::default();
    set.read_all(&mut sample);
    let names: Vec<&str> = sample.values.iter().map(|(n, _)| &**n).collect();
    assert_eq!(
        names,
        [
            "sys.mem_used_percent",
            "sys.uptime_s",
            "sys.load1",
            "sys.disk_used_percent"
        ]
    );
    let names: Vec<Arc<str>> = set.iter().next().unwrap().value_names().to_vec();
    assert_eq!(names.len(), 4);
    assert_eq!(set.iter().next().unwrap().unit(1), Some("s"));
}

/// Issue 20: `file:` took "the first number in the file"; a DS18B20's `w1_slave` read as
/// 0.072 (its first hex byte), `ERROR -1 sensor disconnected` as -1. Strict files, a field by
/// key or column, and the `w1` source with its CRC check.
#[test]
fn strict_files_fields_and_one_wire_sensors() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let w1 = "sys/bus/w1/devices";
    dir.write(
        &format!("{w1}/28-0316a2791fff/w1_slave"),
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
    );
    dir.write(
        &format!("{w1}/28-0316a2791aaa/w1_slave"),
        "72 01 4b 46 7f ff 0e 10 57 : crc=58 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
    );
    dir.write(&format!("{w1}/28-0316a2791bbb/temperature"), "-1250\n");
    let disconnected = dir.write("run/disconnected", "ERROR -1 sensor disconnected\n");
    let bridge = dir.write("run/bridge", "status=ok\nlevel=12.5\n");
    let columns = dir.write("run/columns", "1764140000 21.5 45\n");
    let slave_as_file = dir.path().join(format!("{w1}/28-0316a2791fff/w1_slave"));
    let mut set = sensors(
        &dir,
        &format!(
            "  - {{ name: probe, w1: {{ device: 28-0316a2791fff }} }}\n\
             \x20 - {{ name: noisy, w1: {{ device: 28-0316a2791aaa }} }}\n\
             \x20 - {{ name: newer, w1: {{ device: 28-0316a2791bbb }} }}\n\
             \x20 - {{ name: absent, w1: {{ device: 28-000000000000 }} }}\n\
             \x20 - {{ name: bad, file: {} }}\n\
             \x20 - {{ name: level, file: {{ path: {}, key: level }} }}\n\
             \x20 - {{ name: flow, file: {{ path: {}, key: flow }} }}\n\
             \x20 - {{ name: humidity, file: {{ path: {}, column: 3 }} }}\n\
             \x20 - {{ name: raw_slave, file: {} }}\n",
            disconnected.display(),
            bridge.display(),
            bridge.display(),
            columns.display(),
            slave_as_file.display(),
        ),
    );
    let mut sample = Sample::default();
    set.read_all(&mut sample);
    assert_eq!(
        values(&sample),
        [
            ("probe", 23.125),
            ("newer", -1.25),
            ("level", 12.5),
            ("humidity", 45.0)
        ]
    );
    for (name, part) in [
        ("noisy", "a CRC error on the bus (w1_slave says crc NO)"),
        (
            "absent",
            "no 1-Wire device with directory \"28-000000000000\"",
        ),
        (
            "bad",
            "expected a number, found \"ERROR -1 sensor disconnected\"",
        ),
        ("flow", "no line \"flow=…\" or \"flow: …\""),
        (
            "raw_slave",
            "expected a number, found \"72 01 4b 46 7f ff 0e 10 57 : crc=57 YES",
        ),
    ] {
        let err = error(&sample, name).unwrap_or_else(|| panic!("{name} read"));
        assert!(err.contains(part), "{name}: {err}");
    }
}
