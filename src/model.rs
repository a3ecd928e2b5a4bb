//! Plain data shared by the whole agent: what one sampling pass produced.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::Serializer;
use serde::Serialize;

use crate::sensors::SensorError;

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
