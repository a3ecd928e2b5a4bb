//! What a reload changed, so that it applies only that: sampling (sensors, alerts, telemetry)
//! restarts the sampler; the session (broker, identity, topics) reconnects once; actuators take
//! effect with the next command. Pure.

use super::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changes {
    /// Sensors, alerts, telemetry, sysfs_root or state_dir changed: restart sampling.
    pub sampling: bool,
    /// Broker, TLS, identity or topics changed: reconnect once.
    pub session: bool,
    /// Anything at all changed.
    pub any: bool,
}

impl Changes {
    pub fn between(old: &Config, new: &Config) -> Changes {
        let sampling = old.sensors != new.sensors
            || old.alerts != new.alerts
            || old.telemetry != new.telemetry
            || old.sysfs_root != new.sysfs_root
            || old.state_dir != new.state_dir;
        // The queue's bound, the drain rate and the command rate apply without a reconnect.
        let connection = |broker: &super::BrokerConfig| super::BrokerConfig {
            max_queued_messages: 0,
            drain_rate: 0.0,
            command_rate: 0.0,
            ..broker.clone()
        };
        // Sparkplug deadbands only change what NDATA carries.
        let sparkplug = |sparkplug: &Option<super::SparkplugConfig>| {
            sparkplug.as_ref().map(|s| super::SparkplugConfig {
                deadband: Default::default(),
                ..s.clone()
            })
        };
        let session = connection(&old.broker) != connection(&new.broker)
            || old.identity != new.identity
            || old.topics != new.topics
            || sparkplug(&old.sparkplug) != sparkplug(&new.sparkplug);
        Changes {
            sampling,
            session,
            any: old != new,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::load_str;

    fn config(extra: &str) -> Config {
        let yaml = format!(
            "broker: {{ urls: [\"mqtts://a:8883\"], tls: {{ ca_file: /ca }} }}\nsensors:\n  - {{ name: t, file: /t }}\n{extra}"
        );
        load_str(&yaml, Path::new("c.yaml"))
            .unwrap()
            .0
            .config()
            .clone()
    }

    #[test]
    fn changes() {
        let base = config("");
        let check = |extra: &str, sampling: bool, session: bool| {
            let changes = Changes::between(&base, &config(extra));
            assert_eq!(
                (changes.sampling, changes.session),
                (sampling, session),
                "{extra}"
            );
            assert_eq!(
                changes.any,
                sampling || session || !extra.is_empty(),
                "{extra}"
            );
        };
        check("", false, false);
        check(
            "alerts:\n  - { name: hot, sensor: t, above: 1 }\n",
            true,
            false,
        );
        check("telemetry: { interval_s: 5 }\n", true, false);
        check(
            "actuators:\n  - { name: fan, file: /f, values: [\"1\"] }\n",
            false,
            false,
        );
        check("identity: { client_id: other }\n", false, true);
        check("topics: { prefix: \"site/{client_id}\" }\n", false, true);
        check("sparkplug: { group_id: plant1 }\n", false, true);
        let sparkplug = config("sparkplug: { group_id: plant1 }\n");
        let deadband = config("sparkplug: { group_id: plant1, deadband: { t: 0.5 } }\n");
        let changes = Changes::between(&sparkplug, &deadband);
        assert_eq!(
            (changes.sampling, changes.session, changes.any),
            (false, false, true)
        );
        let host = config("sparkplug: { group_id: plant1, primary_host_id: scada }\n");
        assert!(Changes::between(&sparkplug, &host).session);
    }
}
