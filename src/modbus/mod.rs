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
    U64,
    I64,
    F32,
    F64,
}

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F32 => "f32",
            ValueType::F64 => "f64",
        }
    }

    /// Registers it takes.
    pub fn registers(self) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 4,
        }
    }
}

/// `word_order`, the older shorthand for the two common byte orders: big = ABCD, little = CDAB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// The high word first ("ABCD"), as most devices do.
    #[default]
    Big,
    /// The low word first ("CDAB").
    Little,
}

impl From<WordOrder> for ByteOrder {
    fn from(order: WordOrder) -> ByteOrder {
        match order {
            WordOrder::Big => ByteOrder::Abcd,
            WordOrder::Little => ByteOrder::Cdab,
        }
    }
}

/// How a value of several registers lies on the wire, named as the meter vendors' tables name
/// it for a 32-bit value whose bytes are A (most significant) to D: ABCD is big-endian words and
/// bytes (the protocol's own order); CDAB swaps the words (the low register first); BADC swaps
/// the bytes in each register; DCBA is little-endian throughout. A 64-bit value follows the same
/// rule over four registers: the words in order or reversed, the bytes in each as sent or
/// swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
pub enum ByteOrder {
    #[default]
    #[serde(rename = "ABCD")]
    Abcd,
    #[serde(rename = "CDAB")]
    Cdab,
    #[serde(rename = "BADC")]
    Badc,
    #[serde(rename = "DCBA")]
    Dcba,
}

impl ByteOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            ByteOrder::Abcd => "ABCD",
            ByteOrder::Cdab => "CDAB",
            ByteOrder::Badc => "BADC",
            ByteOrder::Dcba => "DCBA",
        }
    }

    /// The low register first.
    fn words_reversed(self) -> bool {
        matches!(self, ByteOrder::Cdab | ByteOrder::Dcba)
    }

    /// The two bytes of each register swapped.
    fn bytes_swapped(self) -> bool {
        matches!(self, ByteOrder::Badc | ByteOrder::Dcba)
    }

    /// The registers as received, to the value's bits (most significant first).
    pub fn join(self, words: &[u16]) -> u64 {
        let word = |w: u16| {
            if self.bytes_swapped() {
                w.swap_bytes()
            } else {
                w
            }
        };
        let fold = |bits: u64, w: &u16| (bits << 16) | u64::from(word(*w));
        if self.words_reversed() {
            words.iter().rev().fold(0, fold)
        } else {
            words.iter().fold(0, fold)
        }
    }

    /// The value's bits to the `count` registers to send, the inverse of `join`.
    pub fn split(self, bits: u64, count: u16) -> Vec<u16> {
        let mut words: Vec<u16> = (0..count)
            .rev()
            .map(|i| (bits >> (16 * u32::from(i))) as u16)
            .map(|w| {
                if self.bytes_swapped() {
                    w.swap_bytes()
                } else {
                    w
                }
            })
            .collect();
        if self.words_reversed() {
            words.reverse();
        }
        words
    }
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
    Tcp {
        host: String,
        port: u16,
    },
    Rtu(Serial),
    /// RTU framing (with its CRC) over a TCP connection: a serial gateway in transparent mode,
    /// its RS-485 line behind it.
    RtuOverTcp {
        host: String,
        port: u16,
    },
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
            Transport::RtuOverTcp { host, port } if host.contains(':') => {
                write!(f, "rtuovertcp://[{host}]:{port}")
            }
            Transport::RtuOverTcp { host, port } => write!(f, "rtuovertcp://{host}:{port}"),
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
    /// Parses `tcp://host[:port]`, `rtuovertcp://host:port` or
    /// `rtu:///dev/tty…[?baud=…&parity=N|E|O&data=7|8&stop=1|2]`.
    /// RTU defaults are the serial line specification's: 9600 baud, even parity, 8 data bits,
    /// 1 stop bit.
    pub fn parse(url: &str) -> Result<Transport, String> {
        if let Some(rest) = url.strip_prefix("rtuovertcp://") {
            // A gateway's port is its own choice (4001, 502, …): it must be given.
            let Transport::Tcp { host, port } = Transport::parse(&format!("tcp://{rest}"))
                .map_err(|_| {
                    format!(
                        "expected rtuovertcp://HOST:PORT, such as rtuovertcp://192.0.2.20:4001, found \"{url}\""
                    )
                })?
            else {
                unreachable!("tcp:// parses to Tcp")
            };
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let has_port = match rest.strip_prefix('[') {
                Some(bracketed) => bracketed.contains("]:"),
                None => rest.contains(':'),
            };
            if !has_port {
                return Err(format!(
                    "expected rtuovertcp://HOST:PORT with the gateway's port, found \"{url}\""
                ));
            }
            return Ok(Transport::RtuOverTcp { host, port });
        }
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
            "expected tcp://HOST[:PORT], rtuovertcp://HOST:PORT or rtu:///dev/DEVICE?baud=…, found \"{url}\""
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
    pub byte_order: ByteOrder,
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
            if self.value_type.registers() > 1 && self.byte_order != ByteOrder::Abcd {
                text.push(' ');
                text.push_str(self.byte_order.as_str());
            }
        }
        text
    }

    /// The value of this point's registers (or bit). A 64-bit integer beyond 2^53 loses its
    /// lowest digits, as every number in the JSON telemetry does.
    pub fn decode(&self, words: &[u16]) -> f64 {
        if self.table.is_bits() {
            return f64::from(words[0] != 0);
        }
        let bits = self
            .byte_order
            .join(&words[..usize::from(self.value_type.registers())]);
        match self.value_type {
            ValueType::U16 => f64::from(words[0]),
            ValueType::I16 => f64::from(words[0] as i16),
            ValueType::U32 => f64::from(bits as u32),
            ValueType::I32 => f64::from(bits as u32 as i32),
            ValueType::F32 => f64::from(f32::from_bits(bits as u32)),
            ValueType::U64 => bits as f64,
            ValueType::I64 => bits as i64 as f64,
            ValueType::F64 => f64::from_bits(bits),
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
                let count = self.value_type.registers();
                let split = |bits: u64| self.byte_order.split(bits, count);
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
                        .map(|v| split(u64::from(v)))
                        .map_err(|_| whole("a whole number 0..=4294967295 for a u32 value")),
                    ValueType::I32 => value
                        .parse::<i32>()
                        .map(|v| split(u64::from(v as u32)))
                        .map_err(|_| whole("a whole number that fits an i32 value")),
                    ValueType::U64 => value
                        .parse::<u64>()
                        .map(split)
                        .map_err(|_| whole("a whole number that fits a u64 value")),
                    ValueType::I64 => value
                        .parse::<i64>()
                        .map(|v| split(v as u64))
                        .map_err(|_| whole("a whole number that fits an i64 value")),
                    ValueType::F32 => match value.parse::<f32>() {
                        Ok(v) if v.is_finite() => Ok(split(u64::from(v.to_bits()))),
                        _ => Err(whole("a finite number for an f32 value")),
                    },
                    ValueType::F64 => match value.parse::<f64>() {
                        Ok(v) if v.is_finite() => Ok(split(v.to_bits())),
                        _ => Err(whole("a finite number for an f64 value")),
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

    fn point(table: Table, value_type: ValueType, order: impl Into<ByteOrder>) -> Point {
        Point {
            transport: Transport::parse("tcp://127.0.0.1").unwrap(),
            unit: 1,
            table,
            address: 0,
            value_type,
            byte_order: order.into(),
            timeout: DEFAULT_TIMEOUT,
            max_span: DEFAULT_MAX_SPAN,
        }
    }

    #[test]
    fn rtu_over_tcp_urls_need_the_gateways_port() {
        assert_eq!(
            Transport::parse("rtuovertcp://192.0.2.20:4001").unwrap(),
            Transport::RtuOverTcp {
                host: "192.0.2.20".to_owned(),
                port: 4001
            }
        );
        assert_eq!(
            Transport::parse("rtuovertcp://[::1]:4001/")
                .unwrap()
                .to_string(),
            "rtuovertcp://[::1]:4001"
        );
        assert!(Transport::parse("rtuovertcp://gw.local")
            .unwrap_err()
            .contains("the gateway's port"));
        assert!(Transport::parse("rtuovertcp://gw.local:0")
            .unwrap_err()
            .contains("rtuovertcp://HOST:PORT"));
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

    /// The four byte orders of the vendors' tables, on the value they all use for the example:
    /// 123456.0 as f32 is 0x47F12000, so ABCD sends 47F1 2000, CDAB 2000 47F1, BADC F147 0020
    /// and DCBA 0020 F147.
    #[test]
    fn the_four_byte_orders_of_a_32_bit_value() {
        for (order, wire) in [
            (ByteOrder::Abcd, [0x47F1, 0x2000]),
            (ByteOrder::Cdab, [0x2000, 0x47F1]),
            (ByteOrder::Badc, [0xF147, 0x0020]),
            (ByteOrder::Dcba, [0x0020, 0xF147]),
        ] {
            let f32 = point(Table::Holding, ValueType::F32, order);
            assert_eq!(f32.decode(&wire), 123456.0, "{order:?}");
            assert_eq!(f32.encode("123456").unwrap(), wire, "{order:?}");
            // The same bits as a u32: 0x47F12000 = 1206984704.
            let u32 = point(Table::Holding, ValueType::U32, order);
            assert_eq!(u32.decode(&wire), 1_206_984_704.0, "{order:?}");
        }
        // word_order, the shorthand: big is ABCD, little is CDAB.
        assert_eq!(ByteOrder::from(WordOrder::Big), ByteOrder::Abcd);
        assert_eq!(ByteOrder::from(WordOrder::Little), ByteOrder::Cdab);
    }

    /// 64-bit values over four registers: an energy counter (u64) of 0x0000_0001_0000_0002
    /// (4294967298 Wh), -2 as i64 (0xFFFF_FFFF_FFFF_FFFE), and 1.0 as f64 (0x3FF0_0000_0000_0000),
    /// in each byte order.
    #[test]
    fn sixty_four_bit_values_in_each_byte_order() {
        let cases: [(ValueType, &str, f64, [u16; 4]); 3] = [
            (
                ValueType::U64,
                "4294967298",
                4_294_967_298.0,
                [0x0000, 0x0001, 0x0000, 0x0002],
            ),
            (ValueType::I64, "-2", -2.0, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]),
            (ValueType::F64, "1", 1.0, [0x3FF0, 0x0000, 0x0000, 0x0000]),
        ];
        for (value_type, text, value, abcd) in cases {
            let swapped = abcd.map(u16::swap_bytes);
            let mut reversed = abcd;
            reversed.reverse();
            let mut both = swapped;
            both.reverse();
            for (order, wire) in [
                (ByteOrder::Abcd, abcd),
                (ByteOrder::Cdab, reversed),
                (ByteOrder::Badc, swapped),
                (ByteOrder::Dcba, both),
            ] {
                let p = point(Table::Holding, value_type, order);
                assert_eq!(p.count(), 4);
                assert_eq!(p.decode(&wire), value, "{value_type:?} {order:?}");
                assert_eq!(p.encode(text).unwrap(), wire, "{value_type:?} {order:?}");
            }
        }
        // DCBA of a 64-bit value is the plain little-endian byte string.
        let f64_le = 1.0f64.to_le_bytes();
        let words: Vec<u16> = f64_le
            .chunks(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(
            point(Table::Holding, ValueType::F64, ByteOrder::Dcba).decode(&words),
            1.0
        );
        let i64 = point(Table::Holding, ValueType::I64, ByteOrder::Abcd);
        assert!(i64
            .encode("9223372036854775808")
            .unwrap_err()
            .contains("i64"));
        let f64 = point(Table::Holding, ValueType::F64, ByteOrder::Abcd);
        assert!(f64.encode("inf").unwrap_err().contains("finite"));
    }
}
