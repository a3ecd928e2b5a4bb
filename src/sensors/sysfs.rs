//! Thermal zones, hwmon inputs and IIO channels under `sysfs_root`.
//!
//! Devices are found by their `type` or `name` file, never by their number (hwmonN and
//! iio:deviceN change across boots and driver reloads). The attribute found is kept open and
//! re-read from offset 0, which sysfs regenerates on every read: one `pread` per sample and no
//! allocation. Any failure drops what was resolved, so the next read looks the device up again and
//! a driver that comes back is picked up without a restart.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{SensorError, Source};

/// The conversion of a hwmon input from its sysfs milli-unit to the source unit, and that unit,
/// by the input's prefix (Documentation/hwmon/sysfs-interface.rst). `None` for names that are not
/// `<kind><N>`.
pub fn hwmon_kind(input: &str) -> Option<(f64, &'static str)> {
    let digits = input.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let kind = &input[..input.len() - digits.len()];
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    match kind {
        "temp" => Some((0.001, "°C")),
        "in" => Some((0.001, "V")),
        "curr" => Some((0.001, "A")),
        "power" => Some((0.000_001, "W")),
        "humidity" => Some((0.001, "%RH")),
        "fan" => Some((1.0, "RPM")),
        _ => None,
    }
}

/// The conversion of an IIO channel's processed value to the source unit, by channel type
/// (Documentation/ABI/testing/sysfs-bus-iio): voltages in mV, temperatures in m°C, pressure in kPa.
fn iio_kind(channel: &str) -> (f64, Option<&'static str>) {
    let kind = channel
        .trim_start_matches("in_")
        .trim_end_matches(|c: char| c.is_ascii_digit());
    match kind {
        "voltage" => (0.001, Some("V")),
        "current" => (0.001, Some("A")),
        "power" => (0.001, Some("W")),
        "temp" => (0.001, Some("°C")),
        "humidityrelative" => (0.001, Some("%RH")),
        "pressure" => (10.0, Some("hPa")),
        _ => (1.0, None),
    }
}

#[derive(Debug)]
enum Lookup {
    Thermal { zone_type: String },
    Hwmon { chip: String, input: String },
    Iio { device: String, channel: String },
}

/// An attribute found and open, with what turns its number into the source unit:
/// value = (raw + offset) * scale * factor.
#[derive(Debug)]
struct Resolved {
    path: PathBuf,
    file: File,
    offset: f64,
    scale: f64,
    factor: f64,
}

/// A value read from sysfs: thermal zone, hwmon input or IIO channel.
#[derive(Debug)]
pub(crate) struct SysfsSource {
    root: PathBuf,
    lookup: Lookup,
    unit: Option<&'static str>,
    resolved: Option<Resolved>,
}

impl SysfsSource {
    pub fn thermal(root: &Path, zone_type: &str) -> SysfsSource {
        SysfsSource::new(
            root,
            Lookup::Thermal {
                zone_type: zone_type.to_owned(),
            },
            Some("°C"),
        )
    }

    pub fn hwmon(root: &Path, chip: &str, input: &str) -> SysfsSource {
        let unit = hwmon_kind(input).map(|(_, unit)| unit);
        SysfsSource::new(
            root,
            Lookup::Hwmon {
                chip: chip.to_owned(),
                input: input.to_owned(),
            },
            unit,
        )
    }

    pub fn iio(root: &Path, device: &str, channel: &str) -> SysfsSource {
        let (_, unit) = iio_kind(channel);
        SysfsSource::new(
            root,
            Lookup::Iio {
                device: device.to_owned(),
                channel: channel.to_owned(),
            },
            unit,
        )
    }

    fn new(root: &Path, lookup: Lookup, unit: Option<&'static str>) -> SysfsSource {
        SysfsSource {
            root: root.to_owned(),
            lookup,
            unit,
            resolved: None,
        }
    }

    fn resolve(&self) -> Result<Resolved, SensorError> {
        match &self.lookup {
            Lookup::Thermal { zone_type } => {
                let dir = self.root.join("class/thermal");
                let zone = find_by_name(&dir, "thermal_zone", "type", zone_type, "thermal zone")?;
                open(zone.join("temp"), 0.0, 1.0, 0.001)
            }
            Lookup::Hwmon { chip, input } => {
                let dir = self.root.join("class/hwmon");
                let device = find_by_name(&dir, "hwmon", "name", chip, "hwmon chip")?;
                let (factor, _) = hwmon_kind(input).unwrap_or((1.0, ""));
                let file = format!("{input}_input");
                // Older drivers keep their attributes in the parent device directory.
                let path = [device.join(&file), device.join("device").join(&file)]
                    .into_iter()
                    .find(|p| p.exists())
                    .unwrap_or_else(|| device.join(&file));
                open(path, 0.0, 1.0, factor)
            }
            Lookup::Iio { device, channel } => {
                let dir = self.root.join("bus/iio/devices");
                let device = find_by_name(&dir, "iio:device", "name", device, "IIO device")?;
                let (factor, _) = iio_kind(channel);
                let input = device.join(format!("{channel}_input"));
                if input.exists() {
                    return open(input, 0.0, 1.0, factor);
                }
                // Shared attributes drop the channel index: in_voltage0 -> in_voltage_scale.
                let shared = channel.trim_end_matches(|c: char| c.is_ascii_digit());
                let optional = |suffix: &str, default: f64| -> Result<f64, SensorError> {
                    for name in [format!("{channel}_{suffix}"), format!("{shared}_{suffix}")] {
                        let path = device.join(name);
                        if path.exists() {
                            return read_number(&path);
                        }
                    }
                    Ok(default)
                };
                let offset = optional("offset", 0.0)?;
                let scale = optional("scale", 1.0)?;
                open(device.join(format!("{channel}_raw")), offset, scale, factor)
            }
        }
    }

    fn read_value(&mut self) -> Result<f64, SensorError> {
        let resolved = match &mut self.resolved {
            Some(resolved) => resolved,
            None => self.resolved.insert(self.resolve()?),
        };
        let mut buf = [0u8; 64];
        let length = resolved
            .file
            .read_at(&mut buf, 0)
            .map_err(|source| SensorError::Read {
                path: resolved.path.clone(),
                source,
            })?;
        let raw = parse_number(&buf[..length], &resolved.path)?;
        Ok((raw + resolved.offset) * resolved.scale * resolved.factor)
    }
}

impl Source for SysfsSource {
    fn read(&mut self, out: &mut [Result<f64, SensorError>]) {
        let result = self.read_value();
        if result.is_err() {
            self.resolved = None;
        }
        out[0] = result;
    }

    fn describe(&self) -> String {
        let what = match &self.lookup {
            Lookup::Thermal { zone_type } => format!("thermal_zone {zone_type}"),
            Lookup::Hwmon { chip, input } => format!("hwmon {chip}/{input}"),
            Lookup::Iio { device, channel } => format!("iio {device}/{channel}"),
        };
        match &self.resolved {
            Some(resolved) => format!("{what} ({})", resolved.path.display()),
            None => what,
        }
    }

    fn unit(&self, _index: usize) -> Option<&'static str> {
        self.unit
    }
}

fn open(path: PathBuf, offset: f64, scale: f64, factor: f64) -> Result<Resolved, SensorError> {
    match File::open(&path) {
        Ok(file) => Ok(Resolved {
            path,
            file,
            offset,
            scale,
            factor,
        }),
        Err(source) => Err(SensorError::Read { path, source }),
    }
}

/// Finds the entry `<prefix>N` of `dir` whose file `key` holds `wanted`, lowest N first.
fn find_by_name(
    dir: &Path,
    prefix: &str,
    key: &'static str,
    wanted: &str,
    what: &'static str,
) -> Result<PathBuf, SensorError> {
    let not_found = || SensorError::NotFound {
        what,
        key,
        wanted: wanted.to_owned(),
        dir: dir.to_owned(),
    };
    let entries = std::fs::read_dir(dir).map_err(|_| not_found())?;
    let mut candidates: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let number = name.to_str()?.strip_prefix(prefix)?.parse().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    candidates.sort_unstable();
    candidates
        .into_iter()
        .map(|(_, path)| path)
        .find(|path| {
            std::fs::read_to_string(path.join(key)).is_ok_and(|text| text.trim_end() == wanted)
        })
        .ok_or_else(not_found)
}

fn read_number(path: &Path) -> Result<f64, SensorError> {
    let bytes = std::fs::read(path).map_err(|source| SensorError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_number(&bytes, path)
}

/// Parses a sysfs attribute: one number, surrounded by whitespace at most.
fn parse_number(bytes: &[u8], path: &Path) -> Result<f64, SensorError> {
    std::str::from_utf8(bytes)
        .ok()
        .map(str::trim)
        .and_then(|text| text.parse::<f64>().ok())
        .filter(|value| value.is_finite())
        .ok_or_else(|| SensorError::NotANumber {
            path: path.to_owned(),
            found: String::from_utf8_lossy(bytes)
                .trim()
                .escape_debug()
                .to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwmon_kinds() {
        for (input, expected) in [
            ("temp1", Some((0.001, "°C"))),
            ("in0", Some((0.001, "V"))),
            ("curr2", Some((0.001, "A"))),
            ("power1", Some((0.000_001, "W"))),
            ("humidity1", Some((0.001, "%RH"))),
            ("fan3", Some((1.0, "RPM"))),
            ("temp", None),
            ("temp1_input", None),
            ("pwm1", None),
        ] {
            assert_eq!(hwmon_kind(input), expected, "{input}");
        }
    }

    #[test]
    fn iio_kinds() {
        assert_eq!(iio_kind("in_voltage0"), (0.001, Some("V")));
        assert_eq!(iio_kind("in_temp"), (0.001, Some("°C")));
        assert_eq!(iio_kind("in_pressure"), (10.0, Some("hPa")));
        assert_eq!(iio_kind("in_illuminance"), (1.0, None));
    }

    #[test]
    fn numbers() {
        let path = Path::new("/x");
        assert_eq!(parse_number(b"48250\n", path).unwrap(), 48250.0);
        assert_eq!(parse_number(b"-5\n", path).unwrap(), -5.0);
        assert_eq!(parse_number(b"0.000610351\n", path).unwrap(), 0.000610351);
        let err = parse_number(b"garbage\n", path).unwrap_err().to_string();
        assert_eq!(err, "/x: expected a number, found \"garbage\"");
    }
}
