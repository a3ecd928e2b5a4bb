//! `{prefix}/health`: what an operator watching a fleet needs to know about one agent, published
//! on every connect and every 60 s at QoS 0. Encoding is pure; [`process_usage`] reads /proc.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// How often health is published while connected.
pub const INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Serialize)]
pub struct Messages {
    pub sent: u64,
    pub dropped: u64,
    /// Waiting in memory for the next connect.
    pub queued: u64,
    /// Refused by the broker (MQTT 5: a reason code of 0x80 or above, e.g. its ACL); only said
    /// when some were.
    #[serde(skip_serializing_if = "crate::health::is_zero")]
    pub refused: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Debug, Serialize)]
pub struct Health<'a> {
    pub ts: u64,
    #[serde(skip_serializing_if = "crate::health::is_true")]
    pub time_synced: bool,
    pub version: &'static str,
    pub uptime_s: u64,
    pub rss_bytes: u64,
    pub cpu_time_ms: u64,
    pub messages: Messages,
    pub reconnects: u64,
    pub last_connect_error: Option<&'a str>,
    /// Failed reads per sensor value since start.
    pub sensor_errors: &'a BTreeMap<String, u64>,
    /// False while the outbox is memory-only (state_dir refuses writes); only said then.
    #[serde(skip_serializing_if = "crate::health::is_true")]
    pub outbox_durable: bool,
    /// The running operations and the last ones that ended (plain mode; absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<crate::operations::Summary>,
}

fn is_true(value: &bool) -> bool {
    *value
}

impl Health<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("health always serializes")
    }
}

/// Resident memory (from /proc/self/statm) and CPU time used so far (getrusage, all threads).
pub fn process_usage() -> (u64, u64) {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    let cpu = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|usage| {
            let ms =
                |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1000 + t.tv_usec() as u64 / 1000;
            ms(usage.user_time()) + ms(usage.system_time())
        })
        .unwrap_or(0);
    (rss, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload() {
        let mut errors = BTreeMap::new();
        errors.insert("gone".to_owned(), 3);
        let health = Health {
            outbox_durable: true,
            operations: Vec::new(),
            ts: 5,
            time_synced: true,
            version: "0.1.0",
            uptime_s: 60,
            rss_bytes: 9_000_000,
            cpu_time_ms: 40,
            messages: Messages {
                sent: 10,
                dropped: 1,
                queued: 0,
                refused: 0,
            },
            reconnects: 2,
            last_connect_error: None,
            sensor_errors: &errors,
        };
        assert_eq!(
            health.to_json(),
            r#"{"ts":5,"version":"0.1.0","uptime_s":60,"rss_bytes":9000000,"cpu_time_ms":40,"messages":{"sent":10,"dropped":1,"queued":0},"reconnects":2,"last_connect_error":null,"sensor_errors":{"gone":3}}"#
        );
        let (rss, _) = process_usage();
        assert!(rss > 0);
    }
}
