//! `/dev/i2c-N` through the I2C_RDWR ioctl (linux/i2c-dev.h), which addresses each message itself,
//! so no I2C_SLAVE call is needed and a write-then-read is one transaction with a repeated START.
//!
//! The device file is opened on first use and dropped after any failure other than a missing
//! ACK, so a USB adapter that is unplugged and plugged back is opened again without a restart.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::errno::Errno;

use super::{I2cBus, I2cError};

/// linux/i2c-dev.h.
const I2C_RDWR: u32 = 0x0707;
/// linux/i2c.h: this message reads from the chip.
const I2C_M_RD: u16 = 0x0001;

/// struct i2c_msg from linux/i2c.h.
#[repr(C)]
struct I2cMsg {
    addr: u16,
    flags: u16,
    len: u16,
    buf: *mut u8,
}

/// struct i2c_rdwr_ioctl_data from linux/i2c-dev.h.
#[repr(C)]
struct I2cRdwrIoctlData {
    msgs: *mut I2cMsg,
    nmsgs: u32,
}

nix::ioctl_write_ptr_bad!(i2c_rdwr, I2C_RDWR, I2cRdwrIoctlData);

pub struct LinuxBus {
    path: PathBuf,
    file: Option<File>,
}

impl LinuxBus {
    pub fn new(bus: u32) -> LinuxBus {
        LinuxBus {
            path: PathBuf::from(format!("/dev/i2c-{bus}")),
            file: None,
        }
    }

    fn file(&mut self) -> Result<&File, I2cError> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .map_err(|source| match source.kind() {
                    ErrorKind::NotFound => I2cError::NoSuchBus {
                        path: self.path.clone(),
                        source,
                    },
                    ErrorKind::PermissionDenied => I2cError::PermissionDenied {
                        path: self.path.clone(),
                    },
                    _ => I2cError::Io {
                        operation: "open",
                        path: self.path.clone(),
                        source,
                    },
                })?;
            self.file = Some(file);
        }
        Ok(self.file.as_ref().expect("opened just above"))
    }

    fn transfer(&mut self, msgs: &mut [I2cMsg]) -> Result<(), I2cError> {
        let fd = self.file()?.as_raw_fd();
        let data = I2cRdwrIoctlData {
            msgs: msgs.as_mut_ptr(),
            nmsgs: msgs.len() as u32,
        };
        // SAFETY: `data` points at `msgs`, whose buffers are live slices of the stated lengths
        // for the whole call; the kernel reads the messages and writes only into the read
        // buffers, within their lengths.
        let result = unsafe { i2c_rdwr(fd, &data) };
        match result {
            Ok(done) if done as usize == msgs.len() => Ok(()),
            Ok(done) => Err(I2cError::ShortRead {
                expected: msgs.len(),
                got: done.max(0) as usize,
            }),
            // Adapters report a missing ACK as ENXIO or EREMOTEIO (i2c fault-codes.rst).
            Err(Errno::ENXIO | Errno::EREMOTEIO) => Err(I2cError::NoAck),
            Err(errno) => {
                self.file = None;
                Err(I2cError::Io {
                    operation: "I2C_RDWR",
                    path: self.path.clone(),
                    source: errno.into(),
                })
            }
        }
    }
}

fn message(addr: u16, flags: u16, buf: *mut u8, len: usize) -> I2cMsg {
    I2cMsg {
        addr,
        flags,
        // Chip transactions here are a few bytes; i2c_msg lengths are 16-bit.
        len: len.min(u16::MAX as usize) as u16,
        buf,
    }
}

impl I2cBus for LinuxBus {
    fn write(&mut self, addr: u16, bytes: &[u8]) -> Result<(), I2cError> {
        // The kernel does not write through a message without I2C_M_RD.
        let mut msgs = [message(addr, 0, bytes.as_ptr().cast_mut(), bytes.len())];
        self.transfer(&mut msgs)
    }

    fn read(&mut self, addr: u16, buf: &mut [u8]) -> Result<(), I2cError> {
        let mut msgs = [message(addr, I2C_M_RD, buf.as_mut_ptr(), buf.len())];
        self.transfer(&mut msgs)
    }

    fn write_read(&mut self, addr: u16, bytes: &[u8], buf: &mut [u8]) -> Result<(), I2cError> {
        let mut msgs = [
            message(addr, 0, bytes.as_ptr().cast_mut(), bytes.len()),
            message(addr, I2C_M_RD, buf.as_mut_ptr(), buf.len()),
        ];
        self.transfer(&mut msgs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_bus_says_so() {
        let mut bus = LinuxBus::new(250);
        let err = bus.read(0x48, &mut [0; 2]).unwrap_err();
        assert!(
            err.to_string().starts_with("no such bus /dev/i2c-250"),
            "{err}"
        );
    }
}
