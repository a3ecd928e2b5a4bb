//! A simulated bus with register-level chip models, for tests. Each model behaves as its
//! datasheet describes at the byte level (pointer registers, auto-increment, busy bits, NACK while
//! measuring, CRC), so the drivers are tested through the same transactions they do on hardware.

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::chips::{bme280, sht3x};
use super::{I2cBus, I2cError};
use crate::config::ADS1115_GAINS;

/// A chip on the simulated bus.
pub trait SimChip: Send {
    fn write(&mut self, bytes: &[u8]);
    fn read(&mut self, buf: &mut [u8]) -> Result<(), I2cError>;
    /// For tests that change a model on the bus.
    fn as_any(&mut self) -> &mut dyn Any;
}

#[derive(Default)]
struct SimBus {
    chips: BTreeMap<u16, Box<dyn SimChip>>,
    /// Failures handed out by the next transactions, before any chip sees them.
    faults: VecDeque<I2cError>,
}

/// A handle on one simulated bus; clones share it, so a test can change the bus while a sensor
/// owns another handle.
#[derive(Clone, Default)]
pub struct SharedBus(Arc<Mutex<SimBus>>);

impl SharedBus {
    pub fn attach(&self, addr: u16, chip: impl SimChip + 'static) {
        self.lock().chips.insert(addr, Box::new(chip));
    }

    pub fn detach(&self, addr: u16) -> Option<Box<dyn SimChip>> {
        self.lock().chips.remove(&addr)
    }

    pub fn fail_next(&self, err: I2cError) {
        self.lock().faults.push_back(err);
    }

    /// Runs `f` on the model at `addr`, which must be a `T`.
    pub fn with<T: 'static, R>(&self, addr: u16, f: impl FnOnce(&mut T) -> R) -> R {
        let mut bus = self.lock();
        let chip = bus.chips.get_mut(&addr).expect("a chip at that address");
        f(chip
            .as_any()
            .downcast_mut::<T>()
            .expect("the model has the type the test asked for"))
    }

    fn lock(&self) -> MutexGuard<'_, SimBus> {
        self.0
            .lock()
            .expect("a test thread panicked while holding the simulated bus")
    }

    fn transaction(
        &self,
        addr: u16,
        bytes: Option<&[u8]>,
        buf: Option<&mut [u8]>,
    ) -> Result<(), I2cError> {
        let mut bus = self.lock();
        if let Some(err) = bus.faults.pop_front() {
            return Err(err);
        }
        let chip = bus.chips.get_mut(&addr).ok_or(I2cError::NoAck)?;
        if let Some(bytes) = bytes {
            chip.write(bytes);
        }
        match buf {
            Some(buf) => chip.read(buf),
            None => Ok(()),
        }
    }
}

impl I2cBus for SharedBus {
    fn write(&mut self, addr: u16, bytes: &[u8]) -> Result<(), I2cError> {
        self.transaction(addr, Some(bytes), None)
    }

    fn read(&mut self, addr: u16, buf: &mut [u8]) -> Result<(), I2cError> {
        self.transaction(addr, None, Some(buf))
    }

    fn write_read(&mut self, addr: u16, bytes: &[u8], buf: &mut [u8]) -> Result<(), I2cError> {
        self.transaction(addr, Some(bytes), Some(buf))
    }
}

/// TMP102 or LM75: a pointer byte selects one of four 16-bit registers, read MSB first.
pub struct Reg16 {
    pointer: u8,
    pub registers: [u16; 4],
}

impl Reg16 {
    /// A chip whose temperature register (0x00) holds `temperature`.
    pub fn with_temperature(temperature: u16) -> Reg16 {
        Reg16 {
            pointer: 0,
            registers: [temperature, 0x60A0, 0x4B00, 0x5000],
        }
    }
}

impl SimChip for Reg16 {
    fn write(&mut self, bytes: &[u8]) {
        self.pointer = bytes[0] & 0x03;
        if let [_, hi, lo] = bytes {
            self.registers[usize::from(self.pointer)] = u16::from_be_bytes([*hi, *lo]);
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), I2cError> {
        let register = self.registers[usize::from(self.pointer)].to_be_bytes();
        for (slot, byte) in buf.iter_mut().zip(register.iter().cycle()) {
            *slot = *byte;
        }
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// ADS1115: conversion (0x00) and config (0x01) registers; a config write with OS set starts a
/// conversion of the selected input at the selected full scale; OS reads 0 until it is done.
pub struct Ads1115 {
    pointer: u8,
    config: u16,
    conversion: u16,
    /// Config reads that still show a conversion in progress.
    busy_reads: u8,
    /// The voltage on AIN0..AIN3.
    pub inputs: [f64; 4],
    /// Every config word written, for tests to check.
    pub configs: Vec<u16>,
    /// Never finishes a conversion, as a chip with a stuck oscillator would.
    pub stuck: bool,
}

impl Ads1115 {
    pub fn new(inputs: [f64; 4]) -> Ads1115 {
        Ads1115 {
            pointer: 0,
            config: 0x8583,
            conversion: 0,
            busy_reads: 0,
            inputs,
            configs: Vec::new(),
            stuck: false,
        }
    }
}

impl SimChip for Ads1115 {
    fn write(&mut self, bytes: &[u8]) {
        self.pointer = bytes[0] & 0x03;
        if let ([_, hi, lo], 0x01) = (bytes, self.pointer) {
            let config = u16::from_be_bytes([*hi, *lo]);
            self.configs.push(config);
            self.config = config & 0x7FFF;
            if config & 0x8000 != 0 {
                let mux = usize::from((config >> 12) & 0x07);
                let full_scale = ADS1115_GAINS[usize::from((config >> 9) & 0x07).min(5)];
                // Single-ended inputs only (MUX 100..111).
                let volts = if mux >= 4 { self.inputs[mux - 4] } else { 0.0 };
                let code = (volts / full_scale * 32768.0)
                    .round()
                    .clamp(-32768.0, 32767.0);
                self.conversion = (code as i16) as u16;
                self.busy_reads = 1;
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), I2cError> {
        let value = if self.pointer == 0x01 {
            if self.stuck {
                self.config
            } else if self.busy_reads > 0 {
                self.busy_reads -= 1;
                self.config
            } else {
                self.config | 0x8000
            }
        } else {
            self.conversion
        };
        buf.copy_from_slice(&value.to_be_bytes()[..buf.len()]);
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// BME280: byte registers with auto-increment; writes are (register, value) pairs; a forced-mode
/// write to ctrl_meas sets the measuring bit for one status read, then the data registers hold
/// the raw ADC values.
pub struct Bme280 {
    registers: [u8; 256],
    pointer: u8,
    busy_reads: u8,
    /// Raw ADC values: temperature, pressure (20-bit), humidity (16-bit).
    pub adc: (i32, i32, i32),
}

impl Bme280 {
    pub fn new(calibration: &bme280::Calibration, adc: (i32, i32, i32)) -> Bme280 {
        let mut registers = [0u8; 256];
        registers[0xD0] = bme280::CHIP_ID;
        let (low, high) = calibration.to_registers();
        registers[0x88..=0xA1].copy_from_slice(&low);
        registers[0xE1..=0xE7].copy_from_slice(&high);
        Bme280 {
            registers,
            pointer: 0,
            busy_reads: 0,
            adc,
        }
    }

    /// Makes the chip answer with another id, as a BMP280 (0x58) would.
    pub fn set_id(&mut self, id: u8) {
        self.registers[0xD0] = id;
    }
}

impl SimChip for Bme280 {
    fn write(&mut self, bytes: &[u8]) {
        if let [register] = bytes {
            self.pointer = *register;
            return;
        }
        for pair in bytes.chunks(2) {
            if let [register, value] = pair {
                self.registers[usize::from(*register)] = *value;
                if *register == 0xF4 && value & 0b11 == 0b01 {
                    let (t, p, h) = self.adc;
                    self.registers[0xF7..=0xFE].copy_from_slice(&[
                        (p >> 12) as u8,
                        (p >> 4) as u8,
                        ((p & 0x0F) << 4) as u8,
                        (t >> 12) as u8,
                        (t >> 4) as u8,
                        ((t & 0x0F) << 4) as u8,
                        (h >> 8) as u8,
                        h as u8,
                    ]);
                    self.busy_reads = 1;
                }
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), I2cError> {
        for slot in buf {
            if self.pointer == 0xF3 {
                let measuring = if self.busy_reads > 0 {
                    self.busy_reads -= 1;
                    0b1000
                } else {
                    0
                };
                self.registers[0xF3] = measuring;
            }
            *slot = self.registers[usize::from(self.pointer)];
            self.pointer = self.pointer.wrapping_add(1);
        }
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// SHT3x: a measurement command, then NACK on read while measuring, then six bytes with CRCs.
pub struct Sht3x {
    pub raw_temperature: u16,
    pub raw_humidity: u16,
    /// Reads that still get no ACK after a measurement starts.
    busy_reads: u8,
    measured: bool,
    /// Sends a wrong temperature CRC, as a disturbed bus would.
    pub corrupt_crc: bool,
    /// Every command received.
    pub commands: Vec<u16>,
}

impl Sht3x {
    pub fn new(raw_temperature: u16, raw_humidity: u16) -> Sht3x {
        Sht3x {
            raw_temperature,
            raw_humidity,
            busy_reads: 0,
            measured: false,
            corrupt_crc: false,
            commands: Vec::new(),
        }
    }
}

impl SimChip for Sht3x {
    fn write(&mut self, bytes: &[u8]) {
        if let [hi, lo] = bytes {
            let command = u16::from_be_bytes([*hi, *lo]);
            self.commands.push(command);
            if command == 0x2400 {
                self.measured = true;
                self.busy_reads = 2;
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), I2cError> {
        if !self.measured || self.busy_reads > 0 {
            self.busy_reads = self.busy_reads.saturating_sub(1);
            return Err(I2cError::NoAck);
        }
        self.measured = false;
        let [t_hi, t_lo] = self.raw_temperature.to_be_bytes();
        let [h_hi, h_lo] = self.raw_humidity.to_be_bytes();
        let mut t_crc = sht3x::crc8(&[t_hi, t_lo]);
        if self.corrupt_crc {
            t_crc ^= 0x01;
        }
        let data = [t_hi, t_lo, t_crc, h_hi, h_lo, sht3x::crc8(&[h_hi, h_lo])];
        buf.copy_from_slice(&data[..buf.len()]);
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}
