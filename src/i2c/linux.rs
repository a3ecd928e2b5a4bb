//! `/dev/i2c-N` through the I2C_RDWR ioctl (linux/i2c-dev.h), which addresses each message itself,
//! so no I2C_SLAVE call is needed and a write-then-read is one transaction with a repeated START.
//!
//! Adapters that only speak SMBus (PC chipsets, `i2c-stub`, many ARM SoC controllers) lack
//! I2C_FUNC_I2C. For them the same transactions go through I2C_SMBUS where SMBus has an
//! equivalent the adapter supports (its I2C_FUNCS bits; [`plan_read`], [`plan_write`]): a
//! one-byte register read is a read-byte-data, a two-byte one a read-word-data (SMBus sends the
//! low byte first, so the word is split back into wire order), a longer one an I2C-block read;
//! a register write is a write-byte, write-byte-data, write-word-data or I2C-block write; a plain
//! one-byte read a receive-byte. What has no form the adapter supports (a plain multi-byte read,
//! the SHT3x's; an I2C-block read on a PIIX4) is refused with a message naming the transaction
//! and the adapter's bits.
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
const I2C_FUNC_I2C: u64 = 0x0000_0001;
const I2C_FUNC_SMBUS_READ_BYTE: u64 = 0x0002_0000;
const I2C_FUNC_SMBUS_WRITE_BYTE: u64 = 0x0004_0000;
const I2C_FUNC_SMBUS_READ_BYTE_DATA: u64 = 0x0008_0000;
const I2C_FUNC_SMBUS_WRITE_BYTE_DATA: u64 = 0x0010_0000;
const I2C_FUNC_SMBUS_READ_WORD_DATA: u64 = 0x0020_0000;
const I2C_FUNC_SMBUS_WRITE_WORD_DATA: u64 = 0x0040_0000;
const I2C_FUNC_SMBUS_READ_I2C_BLOCK: u64 = 0x0400_0000;
const I2C_FUNC_SMBUS_WRITE_I2C_BLOCK: u64 = 0x0800_0000;
/// linux/i2c.h: SMBus directions and transaction sizes.
const I2C_SMBUS_READ: u8 = 1;
const I2C_SMBUS_WRITE: u8 = 0;
const I2C_SMBUS_BYTE: u32 = 1;
const I2C_SMBUS_BYTE_DATA: u32 = 2;
const I2C_SMBUS_WORD_DATA: u32 = 3;
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
    /// The adapter's I2C_FUNCS bits (all set when it would not say).
    funcs: u64,
}

/// One SMBus transaction: the I2C_SMBUS size constant and how many data bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Smbus {
    /// Receive byte (read) or send byte (write: the command byte alone).
    Byte,
    ByteData,
    WordData,
    /// I2C block read or write of this many bytes.
    I2cBlock(usize),
}

impl Smbus {
    fn size(self) -> u32 {
        match self {
            Smbus::Byte => I2C_SMBUS_BYTE,
            Smbus::ByteData => I2C_SMBUS_BYTE_DATA,
            Smbus::WordData => I2C_SMBUS_WORD_DATA,
            Smbus::I2cBlock(_) => I2C_SMBUS_I2C_BLOCK_DATA,
        }
    }
}

/// The SMBus read that gets `len` bytes from a register, given the adapter's bits; else what
/// is missing.
pub(crate) fn plan_read(funcs: u64, len: usize) -> Result<Smbus, String> {
    let has = |bit: u64| funcs & bit != 0;
    match len {
        1 if has(I2C_FUNC_SMBUS_READ_BYTE_DATA) => Ok(Smbus::ByteData),
        2 if has(I2C_FUNC_SMBUS_READ_WORD_DATA) => Ok(Smbus::WordData),
        1..=I2C_SMBUS_BLOCK_MAX if has(I2C_FUNC_SMBUS_READ_I2C_BLOCK) => Ok(Smbus::I2cBlock(len)),
        _ => Err(format!(
            "a read of {len} byte(s) from a register (the adapter's I2C_FUNCS are {funcs:#010x}: \
             no {})",
            match len {
                1 => "read-byte-data or I2C-block read",
                2 => "read-word-data or I2C-block read",
                _ => "I2C-block read",
            }
        )),
    }
}

/// The SMBus write of `len` bytes (the first is the register), given the adapter's bits.
pub(crate) fn plan_write(funcs: u64, len: usize) -> Result<Smbus, String> {
    let has = |bit: u64| funcs & bit != 0;
    match len {
        1 if has(I2C_FUNC_SMBUS_WRITE_BYTE) => Ok(Smbus::Byte),
        2 if has(I2C_FUNC_SMBUS_WRITE_BYTE_DATA) => Ok(Smbus::ByteData),
        3 if has(I2C_FUNC_SMBUS_WRITE_WORD_DATA) => Ok(Smbus::WordData),
        2..=33 if has(I2C_FUNC_SMBUS_WRITE_I2C_BLOCK) => Ok(Smbus::I2cBlock(len - 1)),
        _ => Err(format!(
            "a write of {len} byte(s) (the adapter's I2C_FUNCS are {funcs:#010x})"
        )),
    }
}

impl LinuxBus {
    pub fn new(bus: u32) -> LinuxBus {
        LinuxBus {
            path: PathBuf::from(format!("/dev/i2c-{bus}")),
            file: None,
            plain_i2c: true,
            funcs: u64::MAX,
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
            self.funcs = if known { funcs as u64 } else { u64::MAX };
            self.plain_i2c = self.funcs & I2C_FUNC_I2C != 0;
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
        let Some((command, rest)) = bytes.split_first() else {
            return Ok(());
        };
        let plan = plan_write(self.funcs, bytes.len()).map_err(|what| self.unsupported(&what))?;
        let mut data = I2cSmbusData {
            block: [0; I2C_SMBUS_BLOCK_MAX + 2],
        };
        match plan {
            Smbus::Byte => {}
            // Byte data and word data carry the bytes as they go on the wire (a word low byte
            // first, which is the order they come in).
            Smbus::ByteData | Smbus::WordData => data.block[..rest.len()].copy_from_slice(rest),
            Smbus::I2cBlock(len) => {
                data.block[0] = len as u8;
                data.block[1..=len].copy_from_slice(rest);
            }
        }
        self.smbus(addr, I2C_SMBUS_WRITE, *command, plan.size(), &mut data)
    }

    fn unsupported(&self, what: &str) -> I2cError {
        I2cError::Io {
            operation: "SMBus",
            path: self.path.clone(),
            source: std::io::Error::new(
                ErrorKind::Unsupported,
                format!("the adapter speaks only SMBus and supports no form of {what}"),
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
            if buf.len() != 1 || self.funcs & I2C_FUNC_SMBUS_READ_BYTE == 0 {
                return Err(self.unsupported(&format!(
                    "a plain read of {} byte(s) (I2C_FUNCS {:#010x})",
                    buf.len(),
                    self.funcs
                )));
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
            let [register] = bytes else {
                return Err(self.unsupported("a read after a write of several bytes"));
            };
            let plan = plan_read(self.funcs, buf.len()).map_err(|what| self.unsupported(&what))?;
            let mut data = I2cSmbusData {
                block: [0; I2C_SMBUS_BLOCK_MAX + 2],
            };
            if let Smbus::I2cBlock(len) = plan {
                data.block[0] = len as u8;
            }
            self.smbus(addr, I2C_SMBUS_READ, *register, plan.size(), &mut data)?;
            match plan {
                // The kernel puts a byte in block[0], a word low byte first in block[0..2]: the
                // order they came on the wire.
                Smbus::ByteData | Smbus::WordData | Smbus::Byte => {
                    buf.copy_from_slice(&data.block[..buf.len()])
                }
                Smbus::I2cBlock(len) => buf.copy_from_slice(&data.block[1..=len]),
            }
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

    /// The PC chipset's PIIX4 adapter (no I2C, no I2C-block read): byte and word data, as
    /// `i2cget … b|w` uses; i2c-stub (I2C-block too); an adapter with I2C-block reads only.
    #[test]
    fn smbus_transactions_follow_the_adapter_bits() {
        // i2cdetect -F on a PIIX4: quick, byte, byte data, word data, block data (not I2C block).
        let piix4 = 0x0001_0000
            | I2C_FUNC_SMBUS_READ_BYTE
            | I2C_FUNC_SMBUS_WRITE_BYTE
            | I2C_FUNC_SMBUS_READ_BYTE_DATA
            | I2C_FUNC_SMBUS_WRITE_BYTE_DATA
            | I2C_FUNC_SMBUS_READ_WORD_DATA
            | I2C_FUNC_SMBUS_WRITE_WORD_DATA
            | 0x0100_0000
            | 0x0200_0000;
        assert_eq!(plan_read(piix4, 1), Ok(Smbus::ByteData));
        assert_eq!(plan_read(piix4, 2), Ok(Smbus::WordData), "a TMP102 read");
        assert!(plan_read(piix4, 3)
            .unwrap_err()
            .contains("no I2C-block read"));
        assert_eq!(plan_write(piix4, 2), Ok(Smbus::ByteData));
        assert_eq!(
            plan_write(piix4, 3),
            Ok(Smbus::WordData),
            "an ADS1115 config write"
        );
        assert!(plan_write(piix4, 4).is_err());
        let block_only = I2C_FUNC_SMBUS_READ_I2C_BLOCK | I2C_FUNC_SMBUS_WRITE_I2C_BLOCK;
        assert_eq!(plan_read(block_only, 2), Ok(Smbus::I2cBlock(2)));
        assert_eq!(plan_read(block_only, 6), Ok(Smbus::I2cBlock(6)));
        assert_eq!(plan_write(block_only, 3), Ok(Smbus::I2cBlock(2)));
        assert!(plan_read(block_only, 33).is_err());
        assert!(plan_read(0, 1).unwrap_err().contains("0x00000000"));
    }

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
