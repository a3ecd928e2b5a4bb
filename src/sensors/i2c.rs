//! I2C chips as sensor sources: the chip drivers of `crate::i2c::chips` on a bus.
//!
//! Chip state (BME280 calibration) is dropped after any failure and read again on the next
//! attempt, so a chip that vanishes and comes back, or is swapped, is picked up without a
//! restart. A failure is this sensor's alone.

use crate::config::{I2cChip, I2cConfig};
use crate::i2c::chips::{ads1115, bme280, lm75, raw, sht3x, tmp102};
use crate::i2c::{I2cBus, I2cError};

use super::{SensorError, Source};

pub(crate) struct I2cSource {
    config: I2cConfig,
    bus: Box<dyn I2cBus>,
    /// BME280 trimming parameters, once read.
    calibration: Option<bme280::Calibration>,
}

impl I2cSource {
    pub fn new(config: I2cConfig, bus: Box<dyn I2cBus>) -> I2cSource {
        I2cSource {
            config,
            bus,
            calibration: None,
        }
    }

    fn measure(&mut self, out: &mut [Result<f64, SensorError>]) -> Result<(), I2cError> {
        let bus = self.bus.as_mut();
        let addr = self.config.address;
        match self.config.chip {
            I2cChip::Tmp102 => out[0] = Ok(tmp102::read(bus, addr)?),
            I2cChip::Lm75 => out[0] = Ok(lm75::read(bus, addr)?),
            I2cChip::Sht3x => {
                let (celsius, rh) = sht3x::read(bus, addr)?;
                out[0] = Ok(celsius);
                out[1] = Ok(rh);
            }
            I2cChip::Bme280 => {
                let calibration = match self.calibration {
                    Some(calibration) => calibration,
                    None => *self
                        .calibration
                        .insert(bme280::Calibration::read(bus, addr)?),
                };
                let values = bme280::read(bus, addr, &calibration)?;
                for (slot, value) in out.iter_mut().zip(values) {
                    *slot = Ok(value);
                }
            }
            I2cChip::Ads1115 => {
                out[0] = Ok(ads1115::read(
                    bus,
                    addr,
                    self.config.channel.unwrap_or(0),
                    self.config.gain.unwrap_or(2.048),
                    self.config.data_rate.unwrap_or(128),
                )?)
            }
            I2cChip::Raw => {
                out[0] = Ok(raw::read(
                    bus,
                    addr,
                    self.config.register.unwrap_or(0),
                    self.config.length.unwrap_or(1),
                    self.config.endian.unwrap_or_default(),
                    self.config.signed.unwrap_or(false),
                )?)
            }
        }
        Ok(())
    }
}

impl Source for I2cSource {
    fn read(&mut self, out: &mut [Result<f64, SensorError>]) {
        if let Err(err) = self.measure(out) {
            self.calibration = None;
            let reason = err.to_string();
            for slot in out.iter_mut() {
                *slot = Err(SensorError::I2c {
                    bus: self.config.bus,
                    addr: self.config.address,
                    reason: reason.clone(),
                });
            }
        }
    }

    fn describe(&self) -> String {
        let id = match self.calibration {
            Some(_) => format!(", chip id {:#04x}", bme280::CHIP_ID),
            None => String::new(),
        };
        format!(
            "i2c {} on /dev/i2c-{} addr {:#04x}{id}",
            self.config.chip.as_str(),
            self.config.bus,
            self.config.address
        )
    }

    fn unit(&self, index: usize) -> Option<&'static str> {
        match self.config.chip {
            I2cChip::Tmp102 | I2cChip::Lm75 => Some("°C"),
            I2cChip::Sht3x => ["°C", "%RH"].get(index).copied(),
            I2cChip::Bme280 => ["°C", "hPa", "%RH"].get(index).copied(),
            I2cChip::Ads1115 => Some("V"),
            I2cChip::Raw => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::load_str;
    use crate::i2c::chips::bme280::tests::example;
    use crate::i2c::sim::{self, SharedBus};
    use crate::i2c::I2cError;
    use crate::model::Sample;
    use crate::sensors::Sensors;

    /// Sensors from `yaml` whose buses 1 and 2 are the given simulated buses.
    fn sensors(yaml: &str, bus1: &SharedBus, bus2: &SharedBus) -> Sensors {
        let text = format!(
            "broker: {{ urls: [\"mqtts://127.0.0.1\"], tls: {{ ca_file: /ca.pem }} }}\nsensors:\n{yaml}"
        );
        let (config, _) = load_str(&text, Path::new("test.yaml")).expect("valid config");
        let (one, two) = (bus1.clone(), bus2.clone());
        let open = move |bus: u32| -> Box<dyn crate::i2c::I2cBus> {
            match bus {
                1 => Box::new(one.clone()),
                _ => Box::new(two.clone()),
            }
        };
        Sensors::with_buses(&config.sensors, Path::new("/nonexistent"), &open)
    }

    type Values = Vec<(String, f64)>;
    type Errors = Vec<(String, String)>;

    fn read(sensors: &mut Sensors) -> (Values, Errors) {
        let mut sample = Sample::default();
        sensors.read_all(&mut sample);
        (
            sample
                .values
                .iter()
                .map(|(n, v)| (n.to_string(), *v))
                .collect(),
            sample
                .errors
                .iter()
                .map(|(n, e)| (n.to_string(), e.to_string()))
                .collect(),
        )
    }

    fn pairs(values: &[(&str, f64)]) -> Vec<(String, f64)> {
        values.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    // The ADS1115 config word is grouped by field: OS, MUX, PGA, MODE, DR, COMP bits.
    #[allow(clippy::unusual_byte_groupings)]
    #[test]
    fn every_chip_through_the_bus() {
        let bus1 = SharedBus::default();
        let bus2 = SharedBus::default();
        // TMP102 table 8: 0x190 is 25 °C; LM75B table 10: 0x738 is −25 °C.
        bus1.attach(0x48, sim::Reg16::with_temperature(0x190 << 4));
        bus1.attach(0x49, sim::Reg16::with_temperature(0x738 << 5));
        // 0x6666 is 0.4 of full scale: 25 °C and 40 %RH by SHT3x section 4.13.
        bus1.attach(0x44, sim::Sht3x::new(0x6666, 0x6666));
        // BMP280 worked example ADC values.
        bus1.attach(
            0x76,
            sim::Bme280::new(&example(), (519_888, 415_148, 30_000)),
        );
        // 4-20 mA over 250 ohm: 12 mA is 3.0 V, 50 % after scale 25 and offset −25.
        bus2.attach(0x48, sim::Ads1115::new([3.0, 0.0, 0.0, 0.0]));
        bus1.attach(0x50, sim::Reg16::with_temperature(0xFF38));
        let mut set = sensors(
            r#"  - { name: ambient, i2c: { bus: 1, address: 0x48, chip: tmp102 } }
  - { name: board, i2c: { bus: 1, address: 0x49, chip: lm75 } }
  - { name: room, i2c: { bus: 1, address: 0x44, chip: sht3x } }
  - { name: climate, i2c: { bus: 1, address: 0x76, chip: bme280 } }
  - { name: pressure_4_20, i2c: { bus: 2, address: 0x48, chip: ads1115, channel: 0, gain: 6.144, data_rate: 860 }, scale: 25, offset: -25, unit: "%" }
  - { name: flow, i2c: { bus: 1, address: 0x50, chip: raw, register: 0x00, length: 2, endian: big, signed: true }, scale: 0.01 }
"#,
            &bus1,
            &bus2,
        );
        let (values, errors) = read(&mut set);
        assert!(errors.is_empty(), "{errors:?}");
        let humidity = values
            .iter()
            .find(|(n, _)| n == "climate.humidity")
            .map(|(_, v)| *v)
            .unwrap();
        assert_eq!(
            values,
            pairs(&[
                ("ambient", 25.0),
                ("board", -25.0),
                ("room.temperature", 25.0),
                ("room.humidity", 40.0),
                ("climate.temperature", 25.08),
                ("climate.pressure", 1006.532539),
                ("climate.humidity", humidity),
                ("pressure_4_20", 50.0),
                ("flow", -2.0),
            ])
        );
        assert!((0.0..=100.0).contains(&humidity), "{humidity}");
        // The chip saw the datasheet's config word: AIN0, ±6.144 V, single-shot, 860 SPS.
        let configs = bus2.with(0x48, |chip: &mut sim::Ads1115| chip.configs.clone());
        assert_eq!(configs, [0b1_100_000_1_111_0_0_0_11]);
        let commands = bus1.with(0x44, |chip: &mut sim::Sht3x| chip.commands.clone());
        assert_eq!(commands, [0x2400]);
        let units: Vec<Option<&str>> = set.iter().map(|s| s.unit(0)).collect();
        assert_eq!(
            units,
            [
                Some("°C"),
                Some("°C"),
                Some("°C"),
                Some("°C"),
                Some("%"),
                None
            ]
        );
    }

    #[test]
    fn bus_faults_stay_with_their_chip() {
        let bus1 = SharedBus::default();
        let bus2 = SharedBus::default();
        bus1.attach(0x48, sim::Reg16::with_temperature(0x190 << 4));
        let mut corrupt = sim::Sht3x::new(0x6666, 0x6666);
        corrupt.corrupt_crc = true;
        bus1.attach(0x44, corrupt);
        let mut bmp = sim::Bme280::new(&example(), (519_888, 415_148, 30_000));
        bmp.set_id(0x58);
        bus1.attach(0x76, bmp);
        let mut set = sensors(
            r#"  - { name: absent, i2c: { bus: 1, address: 0x4a, chip: tmp102 } }
  - { name: room, i2c: { bus: 1, address: 0x44, chip: sht3x } }
  - { name: climate, i2c: { bus: 1, address: 0x76, chip: bme280 } }
  - { name: ambient, i2c: { bus: 1, address: 0x48, chip: tmp102 } }
"#,
            &bus1,
            &bus2,
        );
        let (values, errors) = read(&mut set);
        assert_eq!(values, pairs(&[("ambient", 25.0)]));
        let expected = [
            ("absent", "i2c bus 1 addr 0x4a: no ACK"),
            (
                "room.temperature",
                "i2c bus 1 addr 0x44: CRC mismatch on temperature: computed 0x93, chip sent 0x92",
            ),
            (
                "room.humidity",
                "i2c bus 1 addr 0x44: CRC mismatch on temperature: computed 0x93, chip sent 0x92",
            ),
            (
                "climate.temperature",
                "i2c bus 1 addr 0x76: chip id 0x58 is not a bme280 (expected 0x60)",
            ),
            (
                "climate.pressure",
                "i2c bus 1 addr 0x76: chip id 0x58 is not a bme280 (expected 0x60)",
            ),
            (
                "climate.humidity",
                "i2c bus 1 addr 0x76: chip id 0x58 is not a bme280 (expected 0x60)",
            ),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, e)| (n.to_string(), e.to_string()))
            .collect();
        assert_eq!(errors, expected);

        // A conversion that never finishes is given up on after the datasheet time plus polls.
        let mut stuck = sim::Ads1115::new([1.0; 4]);
        stuck.stuck = true;
        bus2.attach(0x49, stuck);
        let mut set = sensors(
            "  - { name: adc, i2c: { bus: 2, address: 0x49, chip: ads1115, data_rate: 860 } }\n",
            &bus1,
            &bus2,
        );
        let (values, errors) = read(&mut set);
        assert!(values.is_empty());
        assert_eq!(
            errors,
            [(
                "adc".to_owned(),
                "i2c bus 2 addr 0x49: conversion not ready after 21 ms".to_owned()
            )]
        );

        // A short read on the next transaction hits only the chip that makes it.
        bus1.fail_next(I2cError::ShortRead {
            expected: 2,
            got: 1,
        });
        let mut set = sensors(
            r#"  - { name: first, i2c: { bus: 1, address: 0x48, chip: tmp102 } }
  - { name: second, i2c: { bus: 1, address: 0x48, chip: tmp102 } }
"#,
            &bus1,
            &bus2,
        );
        let (values, errors) = read(&mut set);
        assert_eq!(values, pairs(&[("second", 25.0)]));
        assert_eq!(
            errors,
            [(
                "first".to_owned(),
                "i2c bus 1 addr 0x48: short read: 1 of 2 messages transferred".to_owned()
            )]
        );
    }

    #[test]
    fn a_chip_that_vanishes_and_comes_back_is_read_again() {
        let bus1 = SharedBus::default();
        let bus2 = SharedBus::default();
        bus1.attach(
            0x76,
            sim::Bme280::new(&example(), (519_888, 415_148, 30_000)),
        );
        let mut set = sensors(
            "  - { name: climate, i2c: { bus: 1, address: 0x76, chip: bme280 } }\n",
            &bus1,
            &bus2,
        );
        let (values, _) = read(&mut set);
        assert_eq!(values[0], ("climate.temperature".to_owned(), 25.08));
        assert!(set
            .iter()
            .next()
            .unwrap()
            .describe()
            .ends_with("chip id 0x60"));

        bus1.detach(0x76);
        let (values, errors) = read(&mut set);
        assert!(values.is_empty());
        assert_eq!(errors[0].1, "i2c bus 1 addr 0x76: no ACK");

        // Another BME280 is plugged in: its own calibration is read before its values are used.
        let mut other = example();
        other.t1 = 27_000;
        bus1.attach(0x76, sim::Bme280::new(&other, (519_888, 415_148, 30_000)));
        let (values, errors) = read(&mut set);
        assert!(errors.is_empty(), "{errors:?}");
        let (_, expected) = crate::i2c::chips::bme280::compensate_temperature(519_888, &other);
        assert_eq!(
            values[0],
            (
                "climate.temperature".to_owned(),
                f64::from(expected) / 100.0
            )
        );
        assert_ne!(values[0].1, 25.08);
    }
}
