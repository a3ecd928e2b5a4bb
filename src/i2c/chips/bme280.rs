//! Bosch BME280: chip id 0xD0 = 0x60, calibration words read once (and again after any failure,
//! in case the chip was swapped), one forced-mode measurement per read at 1x oversampling, and
//! the datasheet's integer compensation formulas. Datasheet BST-BME280-DS002, sections 4.2
//! (formulas), 5.3 (calibration layout), 5.4 (registers), 9.1 (measurement time).

use std::time::Duration;

use crate::i2c::{I2cBus, I2cError};

pub const CHIP_ID: u8 = 0x60;
const REG_ID: u8 = 0xD0;
const REG_CALIB_00: u8 = 0x88;
const REG_CALIB_26: u8 = 0xE1;
const REG_CTRL_HUM: u8 = 0xF2;
const REG_STATUS: u8 = 0xF3;
const REG_CTRL_MEAS: u8 = 0xF4;
const REG_DATA: u8 = 0xF7;
/// Humidity oversampling x1 (ctrl_hum takes effect at the next ctrl_meas write).
const CTRL_HUM: u8 = 0b001;
/// Temperature x1, pressure x1, forced mode.
const CTRL_MEAS: u8 = (0b001 << 5) | (0b001 << 2) | 0b01;
/// Typical measurement time at 1x/1x/1x is 8 ms (section 9.1); then the status bit is polled.
const MEASUREMENT: Duration = Duration::from_millis(8);
const POLL: Duration = Duration::from_millis(2);
const POLLS: u32 = 10;

/// Trimming parameters (section 4.2.2, table 16), names as in the datasheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Calibration {
    pub t1: u16,
    pub t2: i16,
    pub t3: i16,
    pub p1: u16,
    pub p2: i16,
    pub p3: i16,
    pub p4: i16,
    pub p5: i16,
    pub p6: i16,
    pub p7: i16,
    pub p8: i16,
    pub p9: i16,
    pub h1: u8,
    pub h2: i16,
    pub h3: u8,
    pub h4: i16,
    pub h5: i16,
    pub h6: i8,
}

impl Calibration {
    /// Checks the chip id and reads the calibration registers.
    pub fn read(bus: &mut dyn I2cBus, addr: u16) -> Result<Calibration, I2cError> {
        let mut id = [0u8; 1];
        bus.write_read(addr, &[REG_ID], &mut id)?;
        if id[0] != CHIP_ID {
            return Err(I2cError::WrongChip {
                chip: "bme280",
                expected: CHIP_ID,
                found: id[0],
            });
        }
        let mut low = [0u8; 26];
        bus.write_read(addr, &[REG_CALIB_00], &mut low)?;
        let mut high = [0u8; 7];
        bus.write_read(addr, &[REG_CALIB_26], &mut high)?;
        Ok(Calibration::from_registers(&low, &high))
    }

    /// Parameters to registers 0x88..=0xA1 and 0xE1..=0xE7, the inverse of `from_registers`,
    /// for the simulated chip.
    #[cfg(test)]
    pub fn to_registers(&self) -> ([u8; 26], [u8; 7]) {
        let mut low = [0u8; 26];
        let words = [
            self.t1,
            self.t2 as u16,
            self.t3 as u16,
            self.p1,
            self.p2 as u16,
            self.p3 as u16,
            self.p4 as u16,
            self.p5 as u16,
            self.p6 as u16,
            self.p7 as u16,
            self.p8 as u16,
            self.p9 as u16,
        ];
        for (i, word) in words.into_iter().enumerate() {
            low[2 * i..2 * i + 2].copy_from_slice(&word.to_le_bytes());
        }
        low[25] = self.h1;
        let [h2_lo, h2_hi] = self.h2.to_le_bytes();
        let high = [
            h2_lo,
            h2_hi,
            self.h3,
            (self.h4 >> 4) as u8,
            ((self.h4 & 0x0F) as u8) | (((self.h5 & 0x0F) as u8) << 4),
            (self.h5 >> 4) as u8,
            self.h6 as u8,
        ];
        (low, high)
    }

    /// Registers 0x88..=0xA1 and 0xE1..=0xE7 to parameters (table 16).
    pub fn from_registers(low: &[u8; 26], high: &[u8; 7]) -> Calibration {
        let u = |i: usize| u16::from_le_bytes([low[i], low[i + 1]]);
        let s = |i: usize| i16::from_le_bytes([low[i], low[i + 1]]);
        Calibration {
            t1: u(0),
            t2: s(2),
            t3: s(4),
            p1: u(6),
            p2: s(8),
            p3: s(10),
            p4: s(12),
            p5: s(14),
            p6: s(16),
            p7: s(18),
            p8: s(20),
            p9: s(22),
            h1: low[25],
            h2: i16::from_le_bytes([high[0], high[1]]),
            h3: high[2],
            // dig_H4 is 0xE4[7:0] / 0xE5[3:0], dig_H5 is 0xE5[7:4] / 0xE6[7:0]; both signed 12-bit.
            h4: (i16::from(high[3] as i8) << 4) | i16::from(high[4] & 0x0F),
            h5: (i16::from(high[5] as i8) << 4) | i16::from(high[4] >> 4),
            h6: high[6] as i8,
        }
    }
}

/// One measurement: temperature °C, pressure hPa, humidity %RH.
pub fn read(
    bus: &mut dyn I2cBus,
    addr: u16,
    calibration: &Calibration,
) -> Result<[f64; 3], I2cError> {
    bus.write(addr, &[REG_CTRL_HUM, CTRL_HUM])?;
    bus.write(addr, &[REG_CTRL_MEAS, CTRL_MEAS])?;
    let mut status = [0u8; 1];
    super::wait_ready(MEASUREMENT, POLL, POLLS, || {
        bus.write_read(addr, &[REG_STATUS], &mut status)?;
        // Bit 3, measuring: 1 while a conversion runs.
        Ok(status[0] & 0b1000 == 0)
    })?;
    let mut data = [0u8; 8];
    bus.write_read(addr, &[REG_DATA], &mut data)?;
    let adc_p = (i32::from(data[0]) << 12) | (i32::from(data[1]) << 4) | (i32::from(data[2]) >> 4);
    let adc_t = (i32::from(data[3]) << 12) | (i32::from(data[4]) << 4) | (i32::from(data[5]) >> 4);
    let adc_h = (i32::from(data[6]) << 8) | i32::from(data[7]);
    let (t_fine, centi_celsius) = compensate_temperature(adc_t, calibration);
    let pressure_q24_8 = compensate_pressure(adc_p, t_fine, calibration);
    let humidity_q22_10 = compensate_humidity(adc_h, t_fine, calibration);
    Ok([
        f64::from(centi_celsius) / 100.0,
        f64::from(pressure_q24_8) / 256.0 / 100.0,
        f64::from(humidity_q22_10) / 1024.0,
    ])
}

/// Section 4.2.3, BME280_compensate_T_int32: (t_fine, temperature in 0.01 °C).
pub fn compensate_temperature(adc_t: i32, c: &Calibration) -> (i32, i32) {
    let t1 = i32::from(c.t1);
    let var1 = (((adc_t >> 3) - (t1 << 1)) * i32::from(c.t2)) >> 11;
    let var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * i32::from(c.t3)) >> 14;
    let t_fine = var1 + var2;
    (t_fine, (t_fine * 5 + 128) >> 8)
}

/// Section 4.2.3, BME280_compensate_P_int64: pressure in Pa as Q24.8.
pub fn compensate_pressure(adc_p: i32, t_fine: i32, c: &Calibration) -> u32 {
    let mut var1 = i64::from(t_fine) - 128_000;
    let mut var2 = var1 * var1 * i64::from(c.p6);
    var2 += (var1 * i64::from(c.p5)) << 17;
    var2 += i64::from(c.p4) << 35;
    var1 = ((var1 * var1 * i64::from(c.p3)) >> 8) + ((var1 * i64::from(c.p2)) << 12);
    var1 = (((1i64 << 47) + var1) * i64::from(c.p1)) >> 33;
    if var1 == 0 {
        // Avoids a division by zero, as the datasheet does.
        return 0;
    }
    let mut p = 1_048_576 - i64::from(adc_p);
    p = (((p << 31) - var2) * 3125) / var1;
    var1 = (i64::from(c.p9) * (p >> 13) * (p >> 13)) >> 25;
    var2 = (i64::from(c.p8) * p) >> 19;
    p = ((p + var1 + var2) >> 8) + (i64::from(c.p7) << 4);
    p as u32
}

/// Section 4.2.3, bme280_compensate_H_int32: relative humidity in %RH as Q22.10.
pub fn compensate_humidity(adc_h: i32, t_fine: i32, c: &Calibration) -> u32 {
    let mut v = t_fine - 76_800;
    v = (((adc_h << 14) - (i32::from(c.h4) << 20) - (i32::from(c.h5) * v) + 16_384) >> 15)
        * (((((((v * i32::from(c.h6)) >> 10) * (((v * i32::from(c.h3)) >> 11) + 32_768)) >> 10)
            + 2_097_152)
            * i32::from(c.h2)
            + 8192)
            >> 14);
    v -= ((((v >> 15) * (v >> 15)) >> 7) * i32::from(c.h1)) >> 4;
    let v = v.clamp(0, 419_430_400);
    (v >> 12) as u32
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The trimming values of the worked example in the BMP280 datasheet (BST-BMP280-DS001,
    /// section 3.12, table 16), whose temperature and pressure formulas the BME280 shares, and
    /// humidity values typical of production BME280 parts.
    pub fn example() -> Calibration {
        Calibration {
            t1: 27504,
            t2: 26435,
            t3: -1000,
            p1: 36477,
            p2: -10685,
            p3: 3024,
            p4: 2855,
            p5: 140,
            p6: -7,
            p7: 15500,
            p8: -14600,
            p9: 6000,
            h1: 75,
            h2: 362,
            h3: 0,
            h4: 313,
            h5: 50,
            h6: 30,
        }
    }

    /// BMP280 worked example: adc_T 519888 gives t_fine 128422 and 25.08 °C; adc_P 415148 gives
    /// 100653.27 Pa (the example's floating-point result). The 64-bit integer formula gives
    /// 25767233 / 256 = 100653.254 Pa here; a slip in any term would be off by whole pascals.
    #[test]
    fn worked_example() {
        let c = example();
        let (t_fine, centi) = compensate_temperature(519_888, &c);
        assert_eq!((t_fine, centi), (128_422, 2508));
        let pascal = f64::from(compensate_pressure(415_148, t_fine, &c)) / 256.0;
        assert!((pascal - 100_653.27).abs() < 0.05, "{pascal}");
    }

    /// Humidity has no worked example; the integer formula is checked against the datasheet's
    /// double-precision formula (section 8.1, bme280_compensate_H_double) over a range of inputs.
    #[test]
    fn humidity_matches_the_floating_point_formula() {
        let c = example();
        let double = |adc_h: f64, t_fine: f64| -> f64 {
            let mut h = t_fine - 76800.0;
            h = (adc_h - (f64::from(c.h4) * 64.0 + f64::from(c.h5) / 16384.0 * h))
                * (f64::from(c.h2) / 65536.0
                    * (1.0
                        + f64::from(c.h6) / 67_108_864.0
                            * h
                            * (1.0 + f64::from(c.h3) / 67_108_864.0 * h)));
            h *= 1.0 - f64::from(c.h1) * h / 524_288.0;
            h.clamp(0.0, 100.0)
        };
        for adc_h in [20_000, 25_000, 30_000, 35_000] {
            for t_fine in [50_000, 128_422, 150_000] {
                let integer = f64::from(compensate_humidity(adc_h, t_fine, &c)) / 1024.0;
                let float = double(f64::from(adc_h), f64::from(t_fine));
                assert!(
                    (integer - float).abs() < 0.05,
                    "adc_h {adc_h} t_fine {t_fine}: {integer} vs {float}"
                );
            }
        }
    }

    #[test]
    fn calibration_layout() {
        let c = example();
        let (low, high) = c.to_registers();
        assert_eq!(Calibration::from_registers(&low, &high), c);
        // dig_H4 = 313 = 0x139 and dig_H5 = 50 = 0x032 share register 0xE5 (table 16).
        assert_eq!(&high[3..6], &[0x13, 0x29, 0x03]);
    }
}
