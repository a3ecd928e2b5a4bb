//! One file per chip: transactions through [`crate::i2c::I2cBus`], conversions as pure functions
//! checked against the datasheet's tables and examples.

pub mod ads1115;
pub mod bme280;
pub mod lm75;
pub mod raw;
pub mod sht3x;
pub mod tmp102;

use std::time::Duration;

use super::I2cError;

/// Waits `first` (the datasheet's conversion time), then asks `ready` up to `polls + 1` times,
/// `poll` apart. Runs on the sampler thread, where sleeping is fine.
pub(crate) fn wait_ready(
    first: Duration,
    poll: Duration,
    polls: u32,
    mut ready: impl FnMut() -> Result<bool, I2cError>,
) -> Result<(), I2cError> {
    std::thread::sleep(first);
    for attempt in 0..=polls {
        if ready()? {
            return Ok(());
        }
        if attempt < polls {
            std::thread::sleep(poll);
        }
    }
    Err(I2cError::NotReady {
        waited_ms: (first + poll * polls).as_millis() as u64,
    })
}
