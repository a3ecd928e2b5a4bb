//! Any chip: N bytes from one register, assembled with the configured byte order and sign. Scale
//! and offset from the config turn the number into a unit.

use crate::config::Endian;
use crate::i2c::{I2cBus, I2cError};

pub fn read(
    bus: &mut dyn I2cBus,
    addr: u16,
    register: u8,
    length: u8,
    endian: Endian,
    signed: bool,
) -> Result<f64, I2cError> {
    let mut buf = [0u8; 4];
    let length = usize::from(length.clamp(1, 4));
    bus.write_read(addr, &[register], &mut buf[..length])?;
    Ok(decode(&buf[..length], endian, signed))
}

/// 1..=4 bytes to a number.
pub fn decode(bytes: &[u8], endian: Endian, signed: bool) -> f64 {
    let mut value: u32 = 0;
    let mut push = |byte: &u8| value = (value << 8) | u32::from(*byte);
    match endian {
        Endian::Big => bytes.iter().for_each(&mut push),
        Endian::Little => bytes.iter().rev().for_each(&mut push),
    }
    let bits = 8 * bytes.len() as u32;
    if signed && bits < 32 && value & (1 << (bits - 1)) != 0 {
        f64::from(value as i32 - (1i32 << bits))
    } else if signed {
        f64::from(value as i32)
    } else {
        f64::from(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_orders_and_signs() {
        for (bytes, endian, signed, expected) in [
            (&[0x12, 0x34][..], Endian::Big, false, 4660.0),
            (&[0x12, 0x34][..], Endian::Little, false, 13330.0),
            (&[0xFF, 0xFE][..], Endian::Big, true, -2.0),
            (&[0xFF, 0xFE][..], Endian::Big, false, 65534.0),
            (&[0x80][..], Endian::Big, true, -128.0),
            (&[0x00, 0x00, 0x80][..], Endian::Little, true, -8_388_608.0),
            (&[0xFF, 0xFF, 0xFF, 0xFF][..], Endian::Big, true, -1.0),
            (
                &[0xFF, 0xFF, 0xFF, 0xFF][..],
                Endian::Big,
                false,
                4_294_967_295.0,
            ),
        ] {
            assert_eq!(
                decode(bytes, endian, signed),
                expected,
                "{bytes:?} {endian:?} {signed}"
            );
        }
    }
}
