//! 1-Wire temperature sensors (DS18B20, DS18S20, DS1822, MAX31850) through the kernel's w1
//! driver, under `sysfs_root/bus/w1/devices/DEVICE/`.
//!
//! Newer kernels (w1_therm since 5.x) give `temperature`: millidegrees Celsius, one integer.
//! Older ones, and some boards' drivers, give only `w1_slave`: two lines, the scratchpad with
//! its CRC verdict, then the scratchpad again with `t=` in millidegrees:
//!
//! ```text
//! 72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
//! 72 01 4b 46 7f ff 0e 10 57 t=23125
//! ```
//!
//! A `NO` there is a read that failed on the bus (noise, a long cable, a loose contact); it is an
//! error, never a value. 85 °C with a good CRC is the DS18B20's power-on value, read before a
//! conversion finished (often a parasite-power problem): an error too.

use std::path::PathBuf;

use super::file::number;
use super::{SensorError, Source};

pub(crate) struct W1Source {
    dir: PathBuf,
    device: String,
}

impl W1Source {
    pub fn new(sysfs_root: &std::path::Path, device: &str) -> W1Source {
        W1Source {
            dir: sysfs_root.join("bus/w1/devices").join(device),
            device: device.to_owned(),
        }
    }

    fn read_value(&self) -> Result<f64, SensorError> {
        let temperature = self.dir.join("temperature");
        match std::fs::read(&temperature) {
            Ok(bytes) => {
                return parse_temperature(&bytes).map_err(|found| SensorError::NotANumber {
                    path: temperature,
                    found,
                })
            }
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(SensorError::Read {
                    path: temperature,
                    source: err,
                })
            }
            Err(_) => {}
        }
        let slave = self.dir.join("w1_slave");
        let bytes = std::fs::read(&slave).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                SensorError::NotFound {
                    what: "1-Wire device",
                    key: "directory",
                    wanted: self.device.clone(),
                    dir: self.dir.parent().map(PathBuf::from).unwrap_or_default(),
                }
            } else {
                SensorError::Read {
                    path: slave.clone(),
                    source,
                }
            }
        })?;
        parse_w1_slave(&bytes).map_err(|what| SensorError::NoField { path: slave, what })
    }
}

impl Source for W1Source {
    fn read(&mut self, out: &mut [Result<f64, SensorError>]) {
        out[0] = self.read_value();
    }

    fn describe(&self) -> String {
        format!("1-Wire {}", self.dir.display())
    }

    fn unit(&self, _index: usize) -> Option<&'static str> {
        Some("°C")
    }
}

/// `temperature`: millidegrees Celsius, one integer, in °C.
pub fn parse_temperature(bytes: &[u8]) -> Result<f64, String> {
    let text = String::from_utf8_lossy(bytes);
    let millidegrees = text
        .trim()
        .parse::<i64>()
        .map_err(|_| text.trim().escape_debug().to_string())?;
    plausible(millidegrees)
}

/// `w1_slave`: the CRC verdict of the first line must be `YES`; `t=` of the second line is the
/// temperature in millidegrees Celsius. In °C, or what was wrong.
pub fn parse_w1_slave(bytes: &[u8]) -> Result<f64, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "bytes that are not text".to_owned())?;
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim();
    let verdict = first
        .rsplit_once("crc=")
        .map(|(_, rest)| rest.split_whitespace().nth(1).unwrap_or(""))
        .ok_or_else(|| format!("no CRC verdict in \"{}\"", first.escape_debug()))?;
    match verdict {
        "YES" => {}
        "NO" => return Err("a CRC error on the bus (w1_slave says crc NO)".to_owned()),
        other => return Err(format!("a CRC verdict of \"{}\"", other.escape_debug())),
    }
    let second = lines.next().unwrap_or("").trim();
    let (_, value) = second
        .rsplit_once("t=")
        .ok_or_else(|| format!("no t= in \"{}\"", second.escape_debug()))?;
    let millidegrees = number(value)
        .filter(|v| v.fract() == 0.0)
        .ok_or_else(|| format!("t={}", value.escape_debug()))?;
    plausible(millidegrees as i64)
}

/// Millidegrees to °C, refusing what a DS18B20 cannot measure and its power-on value.
fn plausible(millidegrees: i64) -> Result<f64, String> {
    if millidegrees == 85_000 {
        return Err(
            "85 °C, the power-on value: the conversion did not finish (parasite power?)".to_owned(),
        );
    }
    if !(-55_000..=125_000).contains(&millidegrees) {
        return Err(format!(
            "{} °C, outside the -55..125 °C a 1-Wire sensor measures",
            millidegrees as f64 / 1000.0
        ));
    }
    Ok(millidegrees as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w1_slave_files() {
        // DS18B20 datasheet, table 1: 0x0191 = +25.0625 °C; the kernel prints t= in m°C.
        for (text, expected) in [
            (
                "91 01 4b 46 7f ff 0c 10 1c : crc=1c YES\n91 01 4b 46 7f ff 0c 10 1c t=25062\n",
                Ok(25.062),
            ),
            (
                "5e ff 4b 46 7f ff 02 10 22 : crc=22 YES\n5e ff 4b 46 7f ff 02 10 22 t=-10125\n",
                Ok(-10.125),
            ),
            (
                "91 01 4b 46 7f ff 0c 10 1c : crc=1d NO\n91 01 4b 46 7f ff 0c 10 1c t=25062\n",
                Err("CRC error"),
            ),
            (
                "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n",
                Err("power-on value"),
            ),
            ("", Err("no CRC verdict")),
            ("00 00 : crc=00 YES\n", Err("no t=")),
            ("00 00 : crc=00 YES\n00 t=abc\n", Err("t=abc")),
            ("00 00 : crc=00 MAYBE\n00 t=1\n", Err("MAYBE")),
        ] {
            match (parse_w1_slave(text.as_bytes()), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(why), Err(part)) => assert!(why.contains(part), "{text:?}: {why}"),
                (got, want) => panic!("{text:?}: {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn temperature_files() {
        assert_eq!(parse_temperature(b"23125\n"), Ok(23.125));
        assert_eq!(parse_temperature(b"-500\n"), Ok(-0.5));
        assert!(parse_temperature(b"85000\n").is_err());
        assert!(parse_temperature(b"200000\n").is_err());
        assert!(parse_temperature(b"23.1\n").is_err());
    }
}
