//! Plain data shared by the whole agent: what one sampling pass produced, and why a sensor
//! could not be read. It uses nothing else of the crate.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::Serializer;
use serde::Serialize;

/// One pass over every sensor: the values that were read and the errors of those that were not,
/// both in config order.
#[derive(Debug, Default)]
pub struct Sample {
    /// Unix time in milliseconds when the pass started.
    pub ts_ms: u64,
    pub values: Vec<(Arc<str>, f64)>,
    pub errors: Vec<(Arc<str>, SensorError)>,
}

impl Sample {
    /// The `read --json` form: `{"values":{…},"errors":{…}}`, keys in config order.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Payload<'a> {
            values: Ordered<'a, f64>,
            errors: Ordered<'a, SensorError>,
        }
        serde_json::to_string(&Payload {
            values: Ordered(&self.values),
            errors: Ordered(&self.errors),
        })
        .expect("a map of strings to numbers and strings always serializes")
    }
}

/// Serializes a list of pairs as a JSON object, keeping the list's order.
pub(crate) struct Ordered<'a, T>(pub &'a [(Arc<str>, T)]);

impl Serialize for Ordered<'_, f64> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (&**name, value)))
    }
}

/// Errors become their message.
impl Serialize for Ordered<'_, SensorError> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, err)| (&**name, err.to_string())))
    }
}

/// Why one sensor could not be read. The message names the path or device, the cause and, where
/// it helps, what was read.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("no {what} with {key} \"{wanted}\" under {}", dir.display())]
    NotFound {
        what: &'static str,
        key: &'static str,
        wanted: String,
        dir: PathBuf,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: expected a number, found \"{found}\"", path.display())]
    NotANumber { path: PathBuf, found: String },
    #[error("{}: {what}", path.display())]
    NoField { path: PathBuf, what: String },
    #[error("{metric}: {reason}")]
    System {
        metric: &'static str,
        reason: String,
    },
    #[error("i2c bus {bus} addr {addr:#04x}: {reason}")]
    I2c { bus: u32, addr: u16, reason: String },
    /// A device on a field bus (Modbus) or a GPIO line: `what` names it, e.g.
    /// `modbus tcp://192.0.2.10:502 unit 1 holding 100 f32`.
    #[error("{what}: {reason}")]
    Device { what: String, reason: String },
    #[error("{what}: no answer within {deadline_s} s; not read again until that read returns")]
    Timeout { what: String, deadline_s: f64 },
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Unix time in microseconds, for latency measurements.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
