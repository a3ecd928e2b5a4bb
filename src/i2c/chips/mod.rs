//! One file per chip: transactions through [`crate::i2c::I2cBus`], conversions as pure functions
//! checked against the datasheet's tables and examples.

pub mod ads1115;
pub mod bme280;
pub mod lm75;
pub mod raw;
pub mod sht3x;
pub mod tmp102;
