//! Sensirion SHT3x: single-shot measurement, high repeatability, polled (command 0x2400, no clock
//! stretching: several Linux adapters mishandle stretching). The chip NACKs reads until the
//! measurement is done (at most 15.5 ms); then six bytes come: temperature, CRC, humidity, CRC.
//! Datasheet "SHT3x-DIS" v6, sections 4.3 (commands), 4.12 (CRC), 4.13 (conversion).

use std::time::Duration;

use crate::i2c::{I2cBus, I2cError};

/// Single shot, high repeatability, clock stretching disabled (table 9).
const MEASURE: [u8; 2] = [0x24, 0x00];
/// Longest measurement duration at high repeatability (table 4).
const MEASUREMENT: Duration = Duration::from_micros(15_500);
const POLL: Duration = Duration::from_millis(2);
const POLLS: u32 = 10;

pub fn read(bus: &mut dyn I2cBus, addr: u16) -> Result<(f64, f64), I2cError> {
    bus.write(addr, &MEASURE)?;
    let mut buf = [0u8; 6];
    // The chip does not ACK its read address while it measures.
    super::wait_ready(MEASUREMENT, POLL, POLLS, || {
        match bus.read(addr, &mut buf) {
            Ok(()) => Ok(true),
            Err(I2cError::NoAck) => Ok(false),
            Err(err) => Err(err),
        }
    })?;
    decode(&buf)
}

/// Six measurement bytes to (°C, %RH), checking both CRCs.
pub fn decode(buf: &[u8; 6]) -> Result<(f64, f64), I2cError> {
    for (what, word) in [("temperature", &buf[0..3]), ("humidity", &buf[3..6])] {
        let computed = crc8(&word[..2]);
        if computed != word[2] {
            return Err(I2cError::BadCrc {
                what,
                computed,
                received: word[2],
            });
        }
    }
    let raw_t = f64::from(u16::from_be_bytes([buf[0], buf[1]]));
    let raw_rh = f64::from(u16::from_be_bytes([buf[3], buf[4]]));
    Ok((-45.0 + 175.0 * raw_t / 65535.0, 100.0 * raw_rh / 65535.0))
}

/// CRC-8, polynomial 0x31, initial value 0xFF, no reflection, no final XOR (section 4.12).
pub fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for byte in bytes {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Section 4.12, table 20: CRC of 0xBEEF is 0x92.
    #[test]
    fn crc_example() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    }

    /// Section 4.13 formulas at the ends of the range and at 0x6666 (0.4 of full scale).
    #[test]
    fn conversions() {
        let word = |raw: u16| {
            let [hi, lo] = raw.to_be_bytes();
            [hi, lo, crc8(&[hi, lo])]
        };
        for (raw_t, raw_rh, celsius, rh) in [
            (0x0000, 0x0000, -45.0, 0.0),
            (0xFFFF, 0xFFFF, 130.0, 100.0),
            (0x6666, 0x6666, 25.0, 40.0),
        ] {
            let (t, h) = (word(raw_t), word(raw_rh));
            let buf = [t[0], t[1], t[2], h[0], h[1], h[2]];
            assert_eq!(decode(&buf).unwrap(), (celsius, rh));
        }
    }

    #[test]
    fn bad_crc_is_refused() {
        let err = decode(&[0xBE, 0xEF, 0x93, 0x00, 0x00, crc8(&[0, 0])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CRC mismatch on temperature: computed 0x92, chip sent 0x93"
        );
    }
}
