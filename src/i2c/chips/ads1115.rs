//! TI ADS1115: one single-shot conversion on a single-ended input with the configured full-scale
//! range (PGA) and data rate, then the conversion-ready bit is polled and the 16-bit result read.
//! Datasheet SBAS444, sections 9.3.3 (full scale), 9.5.1 (registers), table 8 (config).

use std::time::Duration;

use crate::i2c::{I2cBus, I2cError};

const REG_CONVERSION: u8 = 0x00;
const REG_CONFIG: u8 = 0x01;
/// Config bit 15: write 1 to start a single conversion; reads 1 when no conversion runs.
const OS: u16 = 1 << 15;
/// Config bit 8: single-shot mode.
const MODE_SINGLE: u16 = 1 << 8;
/// Config bits 1:0 = 11: comparator disabled (the reset value).
const COMP_DISABLE: u16 = 0b11;
const POLL: Duration = Duration::from_millis(1);
const POLLS: u32 = 20;

/// The config register for a single-shot conversion of input `channel` against GND.
/// `gain` and `data_rate` must be values the config validated.
pub fn config_word(channel: u8, gain: f64, data_rate: u32) -> u16 {
    let mux = 0b100 + u16::from(channel.min(3));
    let pga = crate::config::ADS1115_GAINS
        .iter()
        .position(|g| *g == gain)
        .unwrap_or(2) as u16;
    let dr = crate::config::ADS1115_RATES
        .iter()
        .position(|r| *r == data_rate)
        .unwrap_or(4) as u16;
    OS | (mux << 12) | (pga << 9) | MODE_SINGLE | (dr << 5) | COMP_DISABLE
}

/// The conversion register to volts for a full-scale range `gain`: an LSB is FS / 2^15.
pub fn decode(conversion: u16, gain: f64) -> f64 {
    f64::from(conversion as i16) * gain / 32768.0
}

pub fn read(
    bus: &mut dyn I2cBus,
    addr: u16,
    channel: u8,
    gain: f64,
    data_rate: u32,
) -> Result<f64, I2cError> {
    let [hi, lo] = config_word(channel, gain, data_rate).to_be_bytes();
    bus.write(addr, &[REG_CONFIG, hi, lo])?;
    // One conversion takes 1/data_rate; the internal oscillator may be 10 % slow.
    let conversion = Duration::from_micros(1_100_000 / u64::from(data_rate.max(1)));
    let mut buf = [0u8; 2];
    super::wait_ready(conversion, POLL, POLLS, || {
        bus.write_read(addr, &[REG_CONFIG], &mut buf)?;
        Ok(u16::from_be_bytes(buf) & OS != 0)
    })?;
    bus.write_read(addr, &[REG_CONVERSION], &mut buf)?;
    Ok(decode(u16::from_be_bytes(buf), gain))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table 8: AIN0/GND (MUX 100), ±2.048 V (PGA 010), single-shot, 128 SPS (DR 100),
    /// comparator off: 0xC583, the reset value 0x8583 with MUX set.
    // Binary literals are grouped by config field: OS, MUX, PGA, MODE, DR, COMP_MODE, COMP_POL,
    // COMP_LAT, COMP_QUE.
    #[allow(clippy::unusual_byte_groupings)]
    #[test]
    fn config_words() {
        assert_eq!(config_word(0, 2.048, 128), 0xC583);
        assert_eq!(config_word(3, 6.144, 860), 0b1_111_000_1_111_0_0_0_11);
        assert_eq!(config_word(1, 0.256, 8), 0b1_101_101_1_000_0_0_0_11);
    }

    /// Section 9.3.3 / table 3: 0x7FFF is +FS·(2^15−1)/2^15, 0x0001 one LSB (62.5 µV at
    /// ±2.048 V), 0xFFFF minus one LSB, 0x8000 −FS.
    #[test]
    fn output_codes() {
        assert_eq!(decode(0x7FFF, 2.048), 2.048 * 32767.0 / 32768.0);
        assert_eq!(decode(0x0001, 2.048), 0.0000625);
        assert_eq!(decode(0x0000, 2.048), 0.0);
        assert_eq!(decode(0xFFFF, 2.048), -0.0000625);
        assert_eq!(decode(0x8000, 2.048), -2.048);
        assert_eq!(decode(16000, 6.144), 3.0);
    }
}
