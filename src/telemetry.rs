//! Payloads of the plain topics: telemetry and status. Encoding only; no I/O, no clock (the
//! caller passes the time).

use serde::Serialize;

use crate::model::{Ordered, Sample};

/// `{prefix}/telemetry`: `{"ts":…,"seq":N,"values":{…},"errors":{…}}`, `errors` only when a
/// sensor failed, and `"time_synced":false` while the clock cannot be believed.
pub fn telemetry(sample: &Sample, seq: u64, time_synced: bool) -> String {
    #[derive(Serialize)]
    struct Payload<'a> {
        ts: u64,
        #[serde(skip_serializing_if = "is_true")]
        time_synced: bool,
        seq: u64,
        values: Ordered<'a, f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        errors: Option<Ordered<'a, crate::sensors::SensorError>>,
    }
    let payload = Payload {
        ts: sample.ts_ms,
        time_synced,
        seq,
        values: Ordered(&sample.values),
        errors: (!sample.errors.is_empty()).then_some(Ordered(&sample.errors)),
    };
    serde_json::to_string(&payload).expect("telemetry always serializes")
}

/// A telemetry payload with `"dropped":N` added: N telemetry messages were lost since the last
/// one that went out, so a consumer sees a gap instead of guessing from `seq`.
pub fn with_dropped(mut payload: Vec<u8>, dropped: u64) -> Vec<u8> {
    if payload.last() == Some(&b'}') {
        payload.pop();
        payload.extend_from_slice(format!(",\"dropped\":{dropped}}}").as_bytes());
    }
    payload
}

fn is_true(value: &bool) -> bool {
    *value
}

/// `{prefix}/status`, in the SPEC's key order.
#[derive(Serialize)]
struct Status<'a> {
    online: bool,
    ts: u64,
    #[serde(skip_serializing_if = "is_true")]
    time_synced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl Status<'_> {
    fn encode(&self) -> String {
        serde_json::to_string(self).expect("status always serializes")
    }
}

/// `{prefix}/status` when connected.
pub fn online(ts_ms: u64, time_synced: bool, boot_id: &str) -> String {
    Status {
        online: true,
        ts: ts_ms,
        time_synced,
        version: Some(crate::VERSION),
        boot_id: Some(boot_id),
        reason: None,
    }
    .encode()
}

/// `{prefix}/status` as the Last Will: the broker sends it when the agent vanishes.
pub fn will() -> String {
    offline(0, true, "lost")
}

/// `{prefix}/status` on a clean stop.
pub fn shutdown(ts_ms: u64, time_synced: bool) -> String {
    offline(ts_ms, time_synced, "shutdown")
}

fn offline(ts_ms: u64, time_synced: bool, reason: &str) -> String {
    Status {
        online: false,
        ts: ts_ms,
        time_synced,
        version: None,
        boot_id: None,
        reason: Some(reason),
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sensors::SensorError;

    #[test]
    fn a_gap_is_said_in_the_payload() {
        let payload = br#"{"ts":1,"seq":9,"values":{"t":1.5}}"#.to_vec();
        let with = with_dropped(payload, 3);
        assert_eq!(with, br#"{"ts":1,"seq":9,"values":{"t":1.5},"dropped":3}"#);
        let parsed: serde_json::Value = serde_json::from_slice(&with).unwrap();
        assert_eq!(parsed["dropped"], 3);
    }

    #[test]
    fn payloads() {
        let mut sample = Sample {
            ts_ms: 1_700_000_000_123,
            values: vec![(Arc::from("cpu_temp"), 48.25), (Arc::from("a.b"), -1.5)],
            errors: Vec::new(),
        };
        assert_eq!(
            telemetry(&sample, 7, true),
            r#"{"ts":1700000000123,"seq":7,"values":{"cpu_temp":48.25,"a.b":-1.5}}"#
        );
        assert_eq!(
            telemetry(&sample, 7, false),
            r#"{"ts":1700000000123,"time_synced":false,"seq":7,"values":{"cpu_temp":48.25,"a.b":-1.5}}"#
        );
        sample.errors.push((
            Arc::from("ambient"),
            SensorError::I2c {
                bus: 1,
                addr: 0x48,
                reason: "no ACK".to_owned(),
            },
        ));
        assert!(telemetry(&sample, 8, true)
            .ends_with(r#""errors":{"ambient":"i2c bus 1 addr 0x48: no ACK"}}"#));
        assert_eq!(
            online(5, true, "b-1"),
            format!(
                r#"{{"online":true,"ts":5,"version":"{}","boot_id":"b-1"}}"#,
                crate::VERSION
            )
        );
        assert_eq!(
            shutdown(9, true),
            r#"{"online":false,"ts":9,"reason":"shutdown"}"#
        );
        assert_eq!(
            shutdown(9, false),
            r#"{"online":false,"ts":9,"time_synced":false,"reason":"shutdown"}"#
        );
        assert_eq!(will(), r#"{"online":false,"ts":0,"reason":"lost"}"#);
    }
}
