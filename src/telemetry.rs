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

/// The telemetry of one pass as messages of at most `max_bytes` each: one when it fits (the
/// usual case, the same bytes as [`telemetry`]), else parts with the same `ts` and `seq` and
/// `"part":i,"parts":n` (from 1), the values and then the errors, each in config order, each
/// entry whole in one part, each part leaving room for a `"dropped":N` added on delivery. An entry larger than `max_bytes` by itself goes alone in its part.
pub fn telemetry_parts(
    sample: &Sample,
    seq: u64,
    time_synced: bool,
    max_bytes: usize,
) -> Vec<String> {
    let synced = if time_synced {
        ""
    } else {
        ",\"time_synced\":false"
    };
    let head = |part: Option<(usize, usize)>| match part {
        None => format!("{{\"ts\":{}{synced},\"seq\":{seq}", sample.ts_ms),
        Some((part, parts)) => format!(
            "{{\"ts\":{}{synced},\"seq\":{seq},\"part\":{part},\"parts\":{parts}",
            sample.ts_ms
        ),
    };
    // Room for the entries of a part: its head with the largest part numbers, the braces, and
    // `"dropped":N`, which delivery may add to a part after a gap.
    let overhead = head(Some((usize::MAX, usize::MAX))).len()
        + ",\"values\":{},\"errors\":{}}".len()
        + ",\"dropped\":18446744073709551615".len();
    let room = max_bytes.saturating_sub(overhead);
    // Every entry (`"name":value`) is written once, into one buffer for the values and one for
    // the errors, comma-separated; where a part must end is noted as it goes (greedily). So a
    // pass costs a few allocations, however many values it has.
    let mut values: Vec<u8> = Vec::with_capacity(sample.values.len() * 24);
    let mut errors: Vec<u8> = Vec::new();
    // Where each part after the first starts: (offset in values, offset in errors).
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut used = 0;
    let mut empty = true;
    // `values_end`: where the values ended, for an entry of the errors; None for a value.
    let mut add = |body: &mut Vec<u8>, values_end: Option<usize>, write: &dyn Fn(&mut Vec<u8>)| {
        if !body.is_empty() {
            body.push(b',');
        }
        let from = body.len();
        write(body);
        let cost = body.len() - from + 1;
        if used + cost > room && !empty {
            cuts.push(match values_end {
                None => (from, 0),
                Some(values_end) => (values_end, from),
            });
            used = 0;
        }
        used += cost;
        empty = false;
    };
    for (name, value) in &sample.values {
        add(&mut values, None, &|out: &mut Vec<u8>| {
            serde_json::to_writer(&mut *out, &**name).expect("a name serializes");
            out.push(b':');
            serde_json::to_writer(&mut *out, value).expect("a number serializes");
        });
    }
    let values_end = values.len();
    for (name, error) in &sample.errors {
        add(&mut errors, Some(values_end), &|out: &mut Vec<u8>| {
            serde_json::to_writer(&mut *out, &**name).expect("a name serializes");
            out.push(b':');
            serde_json::to_writer(&mut *out, &error.to_string()).expect("a message serializes");
        });
    }
    let text = |bytes: &[u8]| -> String {
        // A part's slice ends with the comma before the next part's first entry.
        let bytes = bytes.strip_suffix(b",").unwrap_or(bytes);
        String::from_utf8(bytes.to_vec()).expect("JSON is UTF-8")
    };
    let message = |head: String, values: &[u8], errors: &[u8]| -> String {
        let mut out = head;
        out.reserve(values.len() + errors.len() + 32);
        out.push_str(",\"values\":{");
        out.push_str(&text(values));
        out.push('}');
        if !errors.is_empty() {
            out.push_str(",\"errors\":{");
            out.push_str(&text(errors));
            out.push('}');
        }
        out.push('}');
        out
    };
    let whole = message(head(None), &values, &errors);
    if whole.len() <= max_bytes {
        return vec![whole];
    }
    drop(whole);
    let count = cuts.len() + 1;
    let mut starts = vec![(0, 0)];
    starts.extend(cuts);
    (0..count)
        .map(|i| {
            let (v0, e0) = starts[i];
            let (v1, e1) = starts
                .get(i + 1)
                .copied()
                .unwrap_or((values.len(), errors.len()));
            message(head(Some((i + 1, count))), &values[v0..v1], &errors[e0..e1])
        })
        .collect()
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

    #[test]
    fn a_pass_larger_than_max_message_bytes_goes_in_parts() {
        let names: Vec<Arc<str>> = (0..1000)
            .map(|i| Arc::from(format!("point_{i:04}")))
            .collect();
        let sample = Sample {
            ts_ms: 1_700_000_000_123,
            values: names.iter().map(|n| (Arc::clone(n), 12.5)).collect(),
            errors: vec![(
                Arc::from("gone"),
                SensorError::I2c {
                    bus: 1,
                    addr: 0x48,
                    reason: "no ACK".to_owned(),
                },
            )],
        };
        // Small enough: one message, the same bytes as before.
        let whole = telemetry(&sample, 3, false);
        assert_eq!(
            telemetry_parts(&sample, 3, false, whole.len()),
            vec![whole.clone()]
        );
        assert_eq!(
            telemetry_parts(&sample, 4, true, usize::MAX),
            vec![telemetry(&sample, 4, true)]
        );
        // 1000 values of about 20 bytes in parts of at most 4 KiB.
        let parts = telemetry_parts(&sample, 3, false, 4096);
        assert!(parts.len() >= 5, "{}", parts.len());
        let mut seen = Vec::new();
        let mut errors = 0;
        for (i, part) in parts.iter().enumerate() {
            assert!(part.len() <= 4096, "part {i}: {} bytes", part.len());
            let json: serde_json::Value = serde_json::from_str(part).unwrap();
            assert_eq!(json["ts"], 1_700_000_000_123u64);
            assert_eq!(json["seq"], 3);
            assert_eq!(json["time_synced"], false);
            assert_eq!(json["part"], i + 1);
            assert_eq!(json["parts"], parts.len());
            for (name, value) in json["values"].as_object().unwrap() {
                assert_eq!(value, 12.5);
                seen.push(name.clone());
            }
            errors += json["errors"].as_object().map_or(0, |e| e.len());
        }
        // Every value once, in config order; the error too.
        let expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(seen, expected);
        assert_eq!(errors, 1);
        // A limit below one entry still sends every entry, one per part.
        let tiny = telemetry_parts(&sample, 3, true, 10);
        assert_eq!(tiny.len(), 1001);
    }
}
