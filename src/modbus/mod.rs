//! Modbus: sensors and actuators on Modbus TCP devices and RTU serial lines, through tokio-modbus.
//!
//! - [`Transport`] is a connection as the config names it (`tcp://host:502`,
//!   `rtu:///dev/ttyUSB0?baud=9600&parity=E&stop=1`); [`Point`] is one value on one device.
//! - [`plan`] coalesces the points of one set of sensors into as few requests as possible.
//! - [`line`] runs one thread per connection (a TCP device or a serial line), which makes one
//!   transaction at a time, each with its own timeout. Whoever reads or writes queues a job there
//!   and waits for it with a deadline, so a device that does not answer costs its own line its
//!   timeout and nobody else anything.
//! - [`poll`] is what the sensors of one sampler share: it queues a pass's requests at the start
//!   of the pass and hands each sensor its registers.

pub mod line;
pub mod plan;
pub mod poll;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The default time a device has to answer one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The most a device's `timeout_s` may be: below the sensors' read deadline (5 s), so a device
/// that does not answer is that device's error and never a stuck read.
pub const MAX_TIMEOUT_S: f64 = 4.0;
/// The default largest request, in registers (or coils): small enough for every device we know
/// of (many refuse more than 32 or 64 at once), large enough to read a meter's block in one go.
pub const DEFAULT_MAX_SPAN: u16 = 32;
/// The protocol's limits per read request (Modbus application protocol 1.1b3, 6.1 to 6.4).
pub const MAX_REGISTERS: u16 = 125;
pub const MAX_BITS: u16 = 2000;

/// Which of a device's four tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Holding,
    Input,
    Coil,
    Discrete,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        }
    }

    /// Coils and discrete inputs hold bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// What one request may read at most.
    pub fn protocol_max(self) -> u16 {
        if self.is_bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        }
    }
}

/// The shape of a register value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    #[default]
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
        }
    }

    /// Registers it takes.
    pub fn registers(self) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 => 1,
            _ => 2,
        }
    }
}

/// Which register of a 32-bit value comes first. Within a register the bytes are always
/// big-endian (the protocol's rule); devices differ only in the order of the two registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// The high word first ("ABCD"), as most devices do.
    #[default]
    Big,
    /// The low word first ("CDAB").
    Little,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// A serial line's settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial {
    pub path: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl Serial {
    /// The silence that must separate two frames (3.5 characters; 1.75 ms above 19200 baud, as
    /// the serial line specification 1.02, 2.5.1.1, fixes it).
    pub fn frame_gap(&self) -> Duration {
        if self.baud > 19_200 {
            return Duration::from_micros(1750);
        }
        let bits = 1
            + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits);
        Duration::from_micros(u64::from(bits) * 3_500_000 / u64::from(self.baud))
    }
}

/// A connection to one or more devices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp { host: String, port: u16 },
    Rtu(Serial),
}

impl fmt::Display for Transport {
    /// The canonical URL: one serial line or one TCP device is one string, however it was
    /// written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Transport::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Transport::Rtu(serial) => write!(
                f,
                "rtu://{}?baud={}&parity={}&data={}&stop={}",
                serial.path.display(),
                serial.baud,
                match serial.parity {
                    Parity::None => 'N',
                    Parity::Even => 'E',
                    Parity::Odd => 'O',
                },
                serial.data_bits,
                serial.stop_bits
            ),
        }
    }
}

impl Transport {
    /// Parses `tcp://host[:port]` or `rtu:///dev/tty…[?baud=…&parity=N|E|O&data=7|8&stop=1|2]`.
    /// RTU defaults are the serial line specification's: 9600 baud, even parity, 8 data bits,
    /// 1 stop bit.
    pub fn parse(url: &str) -> Result<Transport, String> {
        if let Some(rest) = url.strip_prefix("tcp://") {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| format!("expected ] after the IPv6 address in \"{url}\""))?;
                let port = match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None if after.is_empty() => None,
                    None => return Err(format!("unexpected \"{after}\" after the address")),
                };
                (host, port)
            } else {
                match rest.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (rest, None),
                }
            };
            if host.is_empty() || host.contains(['/', '?', '@', ' ']) {
                return Err(format!(
                    "expected tcp://HOST[:PORT], such as tcp://192.0.2.10:502, found \"{url}\""
                ));
            }
            let port = match port {
                None => 502,
                Some(port) => port
                    .parse::<u16>()
                    .ok()
                    .filter(|port| *port > 0)
                    .ok_or_else(|| format!("expected a port 1..=65535, found \"{port}\""))?,
            };
            return Ok(Transport::Tcp {
                host: host.to_owned(),
                port,
            });
        }
        if let Some(rest) = url.strip_prefix("rtu://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if !path.starts_with("/dev/") || path.len() <= 5 {
                return Err(format!(
                    "expected rtu:///dev/DEVICE, such as rtu:///dev/ttyUSB0?baud=9600, found \"{url}\""
                ));
            }
            let mut serial = Serial {
                path: PathBuf::from(path),
                baud: 9600,
                parity: Parity::Even,
                data_bits: 8,
                stop_bits: 1,
            };
            for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("expected key=value in the query, found \"{pair}\""))?;
                match key {
                    "baud" => {
                        serial.baud = value
                            .parse()
                            .ok()
                            .filter(|baud| (300..=4_000_000).contains(baud))
                            .ok_or_else(|| {
                                format!("expected baud 300..=4000000, found \"{value}\"")
                            })?
                    }
                    "parity" => {
                        serial.parity = match value {
                            "N" | "n" | "none" => Parity::None,
                            "E" | "e" | "even" => Parity::Even,
                            "O" | "o" | "odd" => Parity::Odd,
                            _ => {
                                return Err(format!("expected parity N, E or O, found \"{value}\""))
                            }
                        }
                    }
                    "data" => {
                        serial.data_bits = match value {
                            "7" => 7,
                            "8" => 8,
                            _ => return Err(format!("expected data 7 or 8, found \"{value}\"")),
                        }
                    }
                    "stop" => {
                        serial.stop_bits = match value {
                            "1" => 1,
                            "2" => 2,
                            _ => return Err(format!("expected stop 1 or 2, found \"{value}\"")),
                        }
                    }
                    _ => {
                        return Err(format!(
                            "unknown setting \"{key}\"; expected baud, parity, data or stop"
                        ))
                    }
                }
            }
            return Ok(Transport::Rtu(serial));
        }
        Err(format!(
            "expected tcp://HOST[:PORT] or rtu:///dev/DEVICE?baud=…, found \"{url}\""
        ))
    }
}

/// One value on one device: a validated `modbus:` of a sensor or an actuator.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub transport: Transport,
    pub unit: u8,
    pub table: Table,
    /// The zero-based address on the wire.
    pub address: u16,
    pub value_type: ValueType,
    pub word_order: WordOrder,
    pub timeout: Duration,
    pub max_span: u16,
}

impl Point {
    /// Registers or bits it takes.
    pub fn count(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.value_type.registers()
        }
    }

    /// e.g. `modbus tcp://192.0.2.10:502 unit 1 holding 100 f32`.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "modbus {} unit {} {} {}",
            self.transport,
            self.unit,
            self.table.as_str(),
            self.address
        );
        if !self.table.is_bits() {
            text.push(' ');
            text.push_str(self.value_type.as_str());
            if self.value_type.registers() == 2 && self.word_order == WordOrder::Little {
                text.push_str(" little");
            }
        }
        text
    }

    /// The value of this point's registers (or bit).
    pub fn decode(&self, words: &[u16]) -> f64 {
        let pair = || -> u32 {
            let (high, low) = match self.word_order {
                WordOrder::Big => (words[0], words[1]),
                WordOrder::Little => (words[1], words[0]),
            };
            (u32::from(high) << 16) | u32::from(low)
        };
        if self.table.is_bits() {
            return f64::from(words[0] != 0);
        }
        match self.value_type {
            ValueType::U16 => f64::from(words[0]),
            ValueType::I16 => f64::from(words[0] as i16),
            ValueType::U32 => f64::from(pair()),
            ValueType::I32 => f64::from(pair() as i32),
            ValueType::F32 => f64::from(f32::from_bits(pair())),
        }
    }

    /// The registers (or bit) that write `value`, one of an actuator's allowed values; the
    /// config check runs this on every allowed value, so a command never meets an error here.
    pub fn encode(&self, value: &str) -> Result<Vec<u16>, String> {
        let value = value.trim();
        match self.table {
            Table::Coil => match value {
                "0" | "false" | "off" => Ok(vec![0]),
                "1" | "true" | "on" => Ok(vec![1]),
                _ => Err(format!(
                    "expected 0, 1, true, false, on or off for a coil, found \"{value}\""
                )),
            },
            Table::Holding => {
                let split = |bits: u32| -> Vec<u16> {
                    let (high, low) = ((bits >> 16) as u16, bits as u16);
                    match self.word_order {
                        WordOrder::Big => vec![high, low],
                        WordOrder::Little => vec![low, high],
                    }
                };
                let whole = |what: &str| format!("expected {what}, found \"{value}\"");
                match self.value_type {
                    ValueType::U16 => value
                        .parse::<u16>()
                        .map(|v| vec![v])
                        .map_err(|_| whole("a whole number 0..=65535 for a u16 register")),
                    ValueType::I16 => value
                        .parse::<i16>()
                        .map(|v| vec![v as u16])
                        .map_err(|_| whole("a whole number -32768..=32767 for an i16 register")),
                    ValueType::U32 => value
                        .parse::<u32>()
                        .map(split)
                        .map_err(|_| whole("a whole number 0..=4294967295 for a u32 value")),
                    ValueType::I32 => value
                        .parse::<i32>()
                        .map(|v| split(v as u32))
                        .map_err(|_| whole("a whole number that fits an i32 value")),
                    ValueType::F32 => match value.parse::<f32>() {
                        Ok(v) if v.is_finite() => Ok(split(v.to_bits())),
                        _ => Err(whole("a finite number for an f32 value")),
                    },
                }
            }
            Table::Input | Table::Discrete => Err(format!(
                "the {} table is read-only; an actuator writes a coil or a holding register",
                self.table.as_str()
            )),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The device answered with an exception: it is there, this request is wrong.
    Exception(u8),
    /// No (valid) answer: timeout, refused connection, a bad CRC, a broken connection.
    NoAnswer(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Exception(code) => {
                write!(
                    f,
                    "the device answered exception {} ({code})",
                    exception_name(*code)
                )
            }
            Failure::NoAnswer(why) => f.write_str(why),
        }
    }
}

/// The name of an exception code (Modbus application protocol 1.1b3, section 7).
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(table: Table, value_type: ValueType, word_order: WordOrder) -> Point {
        Point {
            transport: Transport::parse("tcp://127.0.0.1").unwrap(),
            unit: 1,
            table,
            address: 0,
            value_type,
            word_order,
            timeout: DEFAULT_TIMEOUT,
            max_span: DEFAULT_MAX_SPAN,
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            Transport::parse("tcp://192.0.2.10:502")
                .unwrap()
                .to_string(),
            "tcp://192.0.2.10:502"
        );
        assert_eq!(
            Transport::parse("tcp://meter.local").unwrap().to_string(),
            "tcp://meter.local:502"
        );
        assert_eq!(
            Transport::parse("tcp://[::1]:1502").unwrap(),
            Transport::Tcp {
                host: "::1".into(),
                port: 1502
            }
        );
        let rtu = Transport::parse("rtu:///dev/ttyUSB0?baud=19200&parity=N&stop=2").unwrap();
        assert_eq!(
            rtu.to_string(),
            "rtu:///dev/ttyUSB0?baud=19200&parity=N&data=8&stop=2"
        );
        assert_eq!(
            Transport::parse("rtu:///dev/ttyS1").unwrap().to_string(),
            "rtu:///dev/ttyS1?baud=9600&parity=E&data=8&stop=1",
            "the serial line specification's defaults"
        );
        for (bad, fragment) in [
            ("http://x", "expected tcp://"),
            ("tcp://:502", "expected tcp://HOST"),
            ("tcp://host:0", "port 1..=65535"),
            ("tcp://host:99999", "port 1..=65535"),
            ("rtu://ttyUSB0", "rtu:///dev/DEVICE"),
            ("rtu:///dev/ttyUSB0?baud=fast", "baud 300"),
            ("rtu:///dev/ttyUSB0?parity=X", "parity N, E or O"),
            ("rtu:///dev/ttyUSB0?flow=rts", "unknown setting \"flow\""),
        ] {
            let err = Transport::parse(bad).unwrap_err();
            assert!(err.contains(fragment), "{bad}: {err}");
        }
    }

    /// 3.5 characters of 11 bits at 9600 baud is 4.01 ms; above 19200 baud a fixed 1.75 ms.
    #[test]
    fn frame_gaps() {
        let Transport::Rtu(serial) = Transport::parse("rtu:///dev/ttyS0?baud=9600").unwrap() else {
            unreachable!()
        };
        assert_eq!(serial.frame_gap(), Duration::from_micros(4010));
        let Transport::Rtu(fast) = Transport::parse("rtu:///dev/ttyS0?baud=115200").unwrap() else {
            unreachable!()
        };
        assert_eq!(fast.frame_gap(), Duration::from_micros(1750));
    }

    /// Worked values: 0x4148_0000 is 12.5f32; 0xFFFF_FFFE is -2 as i32.
    #[test]
    fn shapes_decode_and_encode() {
        let f32_big = point(Table::Holding, ValueType::F32, WordOrder::Big);
        assert_eq!(f32_big.decode(&[0x4148, 0x0000]), 12.5);
        assert_eq!(f32_big.encode("12.5").unwrap(), vec![0x4148, 0x0000]);
        let f32_little = point(Table::Holding, ValueType::F32, WordOrder::Little);
        assert_eq!(f32_little.decode(&[0x0000, 0x4148]), 12.5);
        assert_eq!(f32_little.encode("12.5").unwrap(), vec![0x0000, 0x4148]);
        let i32_big = point(Table::Holding, ValueType::I32, WordOrder::Big);
        assert_eq!(i32_big.decode(&[0xFFFF, 0xFFFE]), -2.0);
        assert_eq!(i32_big.encode("-2").unwrap(), vec![0xFFFF, 0xFFFE]);
        let u32_big = point(Table::Input, ValueType::U32, WordOrder::Big);
        assert_eq!(u32_big.decode(&[0x0001, 0x0000]), 65536.0);
        let i16 = point(Table::Holding, ValueType::I16, WordOrder::Big);
        assert_eq!(i16.decode(&[0xFF9C]), -100.0);
        assert_eq!(i16.encode("-100").unwrap(), vec![0xFF9C]);
        let coil = point(Table::Coil, ValueType::U16, WordOrder::Big);
        assert_eq!(coil.decode(&[1]), 1.0);
        assert_eq!(coil.encode("on").unwrap(), vec![1]);
        assert!(coil.encode("2").unwrap_err().contains("for a coil"));
        let u16 = point(Table::Holding, ValueType::U16, WordOrder::Big);
        assert!(u16.encode("70000").unwrap_err().contains("0..=65535"));
        let input = point(Table::Input, ValueType::U16, WordOrder::Big);
        assert!(input.encode("1").unwrap_err().contains("read-only"));
    }
}
