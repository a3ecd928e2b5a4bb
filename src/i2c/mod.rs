//! I2C: a small bus trait, the Linux implementation, and chip drivers.
//!
//! The trait is the seam: chip drivers do their transactions through [`I2cBus`] and keep their
//! arithmetic in pure functions, so tests run them against the register-level models in `sim`
//! with values taken from the datasheets. `linux` talks to `/dev/i2c-N` through the I2C_RDWR
//! ioctl. Drivers may sleep while a conversion runs; they are only called from the sampler
//! thread, never from an async runtime worker.

pub mod chips;
pub mod linux;
#[cfg(test)]
pub mod sim;

use std::io;
use std::path::PathBuf;

/// One I2C bus. Addresses are 7-bit.
pub trait I2cBus: Send {
    /// Writes `bytes` to the chip at `addr` (START, address+W, bytes, STOP).
    fn write(&mut self, addr: u16, bytes: &[u8]) -> Result<(), I2cError>;

    /// Fills `buf` from the chip at `addr` (START, address+R, bytes, STOP).
    fn read(&mut self, addr: u16, buf: &mut [u8]) -> Result<(), I2cError>;

    /// Writes `bytes` then reads into `buf` in one combined transaction with a repeated START,
    /// so no other master can move the chip's register pointer in between.
    fn write_read(&mut self, addr: u16, bytes: &[u8], buf: &mut [u8]) -> Result<(), I2cError>;
}

/// Why a bus transaction or a chip read failed. Shown after "i2c bus N addr 0xAA: ".
#[derive(Debug, thiserror::Error)]
pub enum I2cError {
    #[error("no such bus {} ({source}); is the I2C adapter enabled (dtparam, overlay) and i2c-dev loaded?", path.display())]
    NoSuchBus {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("permission denied on {}; the user must be in group i2c", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("no ACK")]
    NoAck,
    #[error("short read: {got} of {expected} messages transferred")]
    ShortRead { expected: usize, got: usize },
    #[error("CRC mismatch on {what}: computed {computed:#04x}, chip sent {received:#04x}")]
    BadCrc {
        what: &'static str,
        computed: u8,
        received: u8,
    },
    #[error("chip id {found:#04x} is not a {chip} (expected {expected:#04x})")]
    WrongChip {
        chip: &'static str,
        expected: u8,
        found: u8,
    },
    #[error("conversion not ready after {waited_ms} ms")]
    NotReady { waited_ms: u64 },
    #[error("{operation} on {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
