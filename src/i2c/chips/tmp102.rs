//! TI TMP102: temperature register 0x00, 12-bit two's complement at 0.0625 °C, or 13-bit when
//! extended mode is on (bit 0 of the register then reads 1). Datasheet SBOS397, section 7.5.4.

use crate::i2c::{I2cBus, I2cError};

/// °C per LSB.
const RESOLUTION: f64 = 0.0625;

pub fn read(bus: &mut dyn I2cBus, addr: u16) -> Result<f64, I2cError> {
    let mut buf = [0u8; 2];
    bus.write_read(addr, &[0x00], &mut buf)?;
    Ok(decode(u16::from_be_bytes(buf)))
}

/// The temperature register as read (MSB first) to °C.
pub fn decode(register: u16) -> f64 {
    let signed = register as i16;
    let counts = if register & 0x0001 != 0 {
        signed >> 3
    } else {
        signed >> 4
    };
    f64::from(counts) * RESOLUTION
}

#[cfg(test)]
mod tests {
    use super::decode;

    /// SBOS397 table 8 (12-bit, register = code << 4) and table 9 (13-bit extended mode,
    /// register = code << 3 with the EM bit 0 set).
    #[test]
    fn datasheet_tables() {
        for (code, celsius) in [
            (0x7FF, 127.9375),
            (0x640, 100.0),
            (0x500, 80.0),
            (0x4B0, 75.0),
            (0x320, 50.0),
            (0x190, 25.0),
            (0x004, 0.25),
            (0x000, 0.0),
            (0xFFC, -0.25),
            (0xE70, -25.0),
            (0xC90, -55.0),
        ] {
            assert_eq!(decode(code << 4), celsius, "12-bit {code:#05x}");
        }
        for (code, celsius) in [
            (0x0960u16, 150.0),
            (0x0800, 128.0),
            (0x0190, 25.0),
            (0x1C90, -55.0),
        ] {
            assert_eq!(decode((code << 3) | 1), celsius, "13-bit {code:#06x}");
        }
    }
}
