//! `/dev/i2c-N` through the I2C_RDWR ioctl (linux/i2c-dev.h), which addresses each message itself,
//! so no I2C_SLAVE call is needed and a write-then-read is one transaction with a repeated START.
//!
//! Adapters that only speak SMBus (PC chipsets, `i2c-stub`) lack I2C_FUNC_I2C. For them the same
//! transactions go through I2C_SMBUS where SMBus has an equivalent: a register write becomes a
//! byte, byte-data or I2C-block write, a register read an I2C-block read (up to 32 bytes), a
//! plain read of one byte a receive-byte. A plain multi-byte read (SHT3x) has no SMBus form and
//! is refused with a message that says so.
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
const I2C_SLAVE: u32 = 0x0703;
const I2C_FUNCS: u32 = 0x0705;
const I2C_RDWR: u32 = 0x0707;
const I2C_SMBUS: u32 = 0x0720;
/// linux/i2c.h: this message reads from the chip.
const I2C_M_RD: u16 = 0x0001;
/// linux/i2c.h: the adapter does plain I2C transfers.
const I2C_FUNC_I2C: std::ffi::c_ulong = 0x0000_0001;
/// linux/i2c.h: SMBus directions and transaction sizes.
const I2C_SMBUS_READ: u8 = 1;
const I2C_SMBUS_WRITE: u8 = 0;
const I2C_SMBUS_BYTE: u32 = 1;
const I2C_SMBUS_BYTE_DATA: u32 = 2;
const I2C_SMBUS_I2C_BLOCK_DATA: u32 = 8;
const I2C_SMBUS_BLOCK_MAX: usize = 32;

/// union i2c_smbus_data from linux/i2c.h, as its largest member.
#[repr(C)]
struct I2cSmbusData {
    block: [u8; I2C_SMBUS_BLOCK_MAX + 2],
}

/// struct i2c_smbus_ioctl_data from linux/i2c-dev.h.
#[repr(C)]
struct I2cSmbusIoctlData {
    read_write: u8,
    command: u8,
    size: u32,
    data: *mut I2cSmbusData,
}

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
nix::ioctl_write_ptr_bad!(i2c_smbus, I2C_SMBUS, I2cSmbusIoctlData);
nix::ioctl_read_bad!(i2c_funcs, I2C_FUNCS, std::ffi::c_ulong);
nix::ioctl_write_int_bad!(i2c_slave, I2C_SLAVE);

pub struct LinuxBus {
    path: PathBuf,
    file: Option<File>,
    /// False for SMBus-only adapters; learnt from I2C_FUNCS when the file is opened.
    plain_i2c: bool,
}

impl LinuxBus {
    pub fn new(bus: u32) -> LinuxBus {
        LinuxBus {
            path: PathBuf::from(format!("/dev/i2c-{bus}")),
            file: None,
            plain_i2c: true,
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
            let mut funcs: std::ffi::c_ulong = 0;
            // SAFETY: I2C_FUNCS writes one unsigned long through the pointer, which points at
            // `funcs`.
            let known = unsafe { i2c_funcs(file.as_raw_fd(), &mut funcs) }.is_ok();
            self.plain_i2c = !known || funcs & I2C_FUNC_I2C != 0;
            self.file = Some(file);
        }
        Ok(self.file.as_ref().expect("opened just above"))
    }

    fn fail(&mut self, operation: &'static str, errno: Errno) -> I2cError {
        match errno {
            // Adapters report a missing ACK as ENXIO or EREMOTEIO (i2c fault-codes.rst).
            Errno::ENXIO | Errno::EREMOTEIO => I2cError::NoAck,
            Errno::EBUSY if operation == "I2C_SLAVE" => I2cError::Io {
                operation: "I2C_SLAVE (a kernel driver has claimed this address; read it through hwmon or iio instead)",
                path: self.path.clone(),
                source: errno.into(),
            },
            _ => {
                // The adapter may be gone; open it afresh next time.
                self.file = None;
                I2cError::Io {
                    operation,
                    path: self.path.clone(),
                    source: errno.into(),
                }
            }
        }
    }

    /// One SMBus transaction with the chip at `addr`.
    fn smbus(
        &mut self,
        addr: u16,
        read_write: u8,
        command: u8,
        size: u32,
        data: &mut I2cSmbusData,
    ) -> Result<(), I2cError> {
        let fd = self.file()?.as_raw_fd();
        // SAFETY: I2C_SLAVE takes the address as a plain integer argument.
        if let Err(errno) = unsafe { i2c_slave(fd, i32::from(addr)) } {
            return Err(self.fail("I2C_SLAVE", errno));
        }
        let args = I2cSmbusIoctlData {
            read_write,
            command,
            size,
            data,
        };
        // SAFETY: `args.data` points at a live union-sized buffer for the whole call; the kernel
        // reads and writes within it only.
        match unsafe { i2c_smbus(fd, &args) } {
            Ok(_) => Ok(()),
            Err(errno) => Err(self.fail("I2C_SMBUS", errno)),
        }
    }

    fn smbus_write(&mut self, addr: u16, bytes: &[u8]) -> Result<(), I2cError> {
        let mut data = I2cSmbusData {
            block: [0; I2C_SMBUS_BLOCK_MAX + 2],
        };
        let (size, command) = match bytes {
            [] => return Ok(()),
            [command] => (I2C_SMBUS_BYTE, *command),
            [command, value] => {
                data.block[0] = *value;
                (I2C_SMBUS_BYTE_DATA, *command)
            }
            [command, rest @ ..] if rest.len() <= I2C_SMBUS_BLOCK_MAX => {
                data.block[0] = rest.len() as u8;
                data.block[1..=rest.len()].copy_from_slice(rest);
                (I2C_SMBUS_I2C_BLOCK_DATA, *command)
            }
            _ => return Err(self.unsupported("a write of more than 33 bytes")),
        };
        self.smbus(addr, I2C_SMBUS_WRITE, command, size, &mut data)
    }

    fn unsupported(&self, what: &str) -> I2cError {
        I2cError::Io {
            operation: "SMBus",
            path: self.path.clone(),
            source: std::io::Error::new(
                ErrorKind::Unsupported,
                format!("the adapter speaks only SMBus, which has no form for {what}"),
            ),
        }
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
            Err(errno) => Err(self.fail("I2C_RDWR", errno)),
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
        self.file()?;
        if !self.plain_i2c {
            return self.smbus_write(addr, bytes);
        }
        // The kernel does not write through a message without I2C_M_RD.
        let mut msgs = [message(addr, 0, bytes.as_ptr().cast_mut(), bytes.len())];
        self.transfer(&mut msgs)
    }

    fn read(&mut self, addr: u16, buf: &mut [u8]) -> Result<(), I2cError> {
        self.file()?;
        if !self.plain_i2c {
            if buf.len() != 1 {
                return Err(self.unsupported("a plain read of several bytes"));
            }
            let mut data = I2cSmbusData {
                block: [0; I2C_SMBUS_BLOCK_MAX + 2],
            };
            self.smbus(addr, I2C_SMBUS_READ, 0, I2C_SMBUS_BYTE, &mut data)?;
            buf[0] = data.block[0];
            return Ok(());
        }
        let mut msgs = [message(addr, I2C_M_RD, buf.as_mut_ptr(), buf.len())];
        self.transfer(&mut msgs)
    }

    fn write_read(&mut self, addr: u16, bytes: &[u8], buf: &mut [u8]) -> Result<(), I2cError> {
        self.file()?;
        if !self.plain_i2c {
            let ([register], true) = (bytes, buf.len() <= I2C_SMBUS_BLOCK_MAX) else {
                return Err(self.unsupported("this combined transaction"));
            };
            let mut data = I2cSmbusData {
                block: [0; I2C_SMBUS_BLOCK_MAX + 2],
            };
            data.block[0] = buf.len() as u8;
            self.smbus(
                addr,
                I2C_SMBUS_READ,
                *register,
                I2C_SMBUS_I2C_BLOCK_DATA,
                &mut data,
            )?;
            buf.copy_from_slice(&data.block[1..=buf.len()]);
            return Ok(());
        }
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
