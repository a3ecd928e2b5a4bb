//! LM75 (NXP LM75B and compatibles): temperature register 0x00, 11-bit two's complement in
//! D15..D5 at 0.125 °C. Older 9-bit parts (0.5 °C) read the same way with low bits zero.
//! Datasheet NXP LM75B rev. 6, section 7.4.3, table 10.

use crate::i2c::{I2cBus, I2cError};

/// °C per LSB of the 11-bit value.
const RESOLUTION: f64 = 0.125;

pub fn read(bus: &mut dyn I2cBus, addr: u16) -> Result<f64, I2cError> {
    let mut buf = [0u8; 2];
    bus.write_read(addr, &[0x00], &mut buf)?;
    Ok(decode(u16::from_be_bytes(buf)))
}

/// The temperature register as read (MSB first) to °C.
pub fn decode(register: u16) -> f64 {
    f64::from((register as i16) >> 5) * RESOLUTION
}

#[cfg(test)]
mod tests {
    use super::decode;

    /// LM75B table 10: 11-bit codes, register = code << 5.
    #[test]
    fn datasheet_table() {
        for (code, celsius) in [
            (0x3F8u16, 127.0),
            (0x3F7, 126.875),
            (0x3F1, 126.125),
            (0x3E8, 125.0),
            (0x0C8, 25.0),
            (0x001, 0.125),
            (0x000, 0.0),
            (0x7FF, -0.125),
            (0x738, -25.0),
            (0x649, -54.875),
            (0x648, -55.0),
        ] {
            assert_eq!(decode(code << 5), celsius, "{code:#05x}");
        }
    }
}
