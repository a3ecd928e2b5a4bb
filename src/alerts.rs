//! Alert rules as state machines: thresholds with hysteresis, `for_s`, discrete `equals`, and the
//! built-in `sensor_fault`.
//!
//! Pure: no I/O, no clock. [`Alerts::evaluate`] takes a sample (whose wall-clock `ts_ms` goes
//! into the events) and the monotonic time (which `for_s` is measured on, so a step of the wall
//! clock neither stretches nor skips the hold), changes state and returns the events to
//! publish. The state is plain data ([`SavedState`]) that the caller
//! persists in `state_dir` after any change, so a restart never raises an alert again and clears
//! one whose condition ended meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::{AlertConfig, AlertSeverity};
use crate::model::Sample;

/// The built-in alert for a sensor that fails to read.
pub const SENSOR_FAULT: &str = "sensor_fault";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Condition {
    /// Trips above `threshold`; clears below `clear` (default: at or below the threshold).
    Above { threshold: f64, clear: Option<f64> },
    /// Trips below `threshold`; clears above `clear` (default: at or above the threshold).
    Below { threshold: f64, clear: Option<f64> },
    /// Trips while the value equals `value` (a door contact, a pump's running flag).
    Equals { value: f64 },
}

impl Condition {
    fn trips(self, value: f64) -> bool {
        match self {
            Condition::Above { threshold, .. } => value > threshold,
            Condition::Below { threshold, .. } => value < threshold,
            Condition::Equals { value: wanted } => value == wanted,
        }
    }

    fn clears(self, value: f64) -> bool {
        match self {
            Condition::Above { threshold, clear } => match clear {
                Some(clear) => value < clear,
                None => value <= threshold,
            },
            Condition::Below { threshold, clear } => match clear {
                Some(clear) => value > clear,
                None => value >= threshold,
            },
            Condition::Equals { value: wanted } => value != wanted,
        }
    }

    fn threshold(self) -> f64 {
        match self {
            Condition::Above { threshold, .. } | Condition::Below { threshold, .. } => threshold,
            Condition::Equals { value } => value,
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    sensor: String,
    condition: Condition,
    for_ms: u64,
    severity: AlertSeverity,
    qos: u8,
}

/// Whether an event raises or clears its alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    Raised,
    Cleared,
}

/// One raise or clear, ready to encode. `id` is unique per event and the same on every
/// redelivery of it: the client ID, the alert, and a counter that is persisted with the state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    pub id: String,
    pub ts: u64,
    #[serde(skip_serializing_if = "crate::alerts::is_true")]
    pub time_synced: bool,
    pub alert: String,
    pub state: Transition,
    pub sensor: String,
    /// The reading that decided it; absent for a sensor fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    pub severity: &'static str,
    /// For a sensor fault: the read error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub qos: u8,
    /// When the sampling pass that made it started (Unix µs), for the latency log; set by the
    /// caller.
    #[serde(skip)]
    pub pass_start_us: u64,
}

fn is_true(value: &bool) -> bool {
    *value
}

impl AlertEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an alert event always serializes")
    }
}

fn severity_name(severity: AlertSeverity) -> &'static str {
    match severity {
        AlertSeverity::Info => "info",
        AlertSeverity::Warning => "warning",
        AlertSeverity::Critical => "critical",
    }
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    /// Events made so far; the next event's id uses it.
    pub counter: u64,
    /// Raised rules by name.
    pub raised: BTreeMap<String, bool>,
    /// Sensors (value names) whose `sensor_fault` is raised.
    pub faults: BTreeMap<String, bool>,
}

impl SavedState {
    /// Catches up with the alert events that reached the outbox after this state was saved (a
    /// power cut between the two: the outbox is synced first): each event of `client_id` whose
    /// counter is above ours, in counter order, moves the counter and its alert's state, so no
    /// id is made twice. `events` are the payloads as queued; others are ignored. True when
    /// anything changed.
    pub fn catch_up<'a>(
        &mut self,
        client_id: &str,
        events: impl IntoIterator<Item = &'a [u8]>,
    ) -> bool {
        #[derive(Deserialize)]
        struct Queued {
            id: String,
            alert: String,
            state: Transition,
            sensor: String,
        }
        let mut newer: Vec<(u64, Queued)> = events
            .into_iter()
            .filter_map(|payload| serde_json::from_slice::<Queued>(payload).ok())
            .filter_map(|event| {
                // Exactly this device's id for this alert: `{client_id}:{alert}:{counter}`.
                let counter: u64 = event.id.rsplit_once(':')?.1.parse().ok()?;
                let ours = event.id == format!("{client_id}:{}:{counter}", event.alert);
                (ours && counter > self.counter).then_some((counter, event))
            })
            .collect();
        newer.sort_by_key(|(counter, _)| *counter);
        let changed = !newer.is_empty();
        for (counter, event) in newer {
            self.counter = counter;
            let (set, key) = if event.alert == SENSOR_FAULT {
                (&mut self.faults, event.sensor)
            } else {
                (&mut self.raised, event.alert)
            };
            match event.state {
                Transition::Raised => set.insert(key, true),
                Transition::Cleared => set.remove(&key),
            };
        }
        changed
    }
}

/// Where the change of a rule's condition started, for `for_s` (monotonic milliseconds).
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    since_ms: Option<u64>,
}

/// Every rule of the config with its state.
#[derive(Debug)]
pub struct Alerts {
    client_id: String,
    rules: Vec<(Rule, Pending)>,
    state: SavedState,
    /// The rules of each value name, so a pass finds every rule's value in one look per value.
    by_sensor: HashMap<String, Vec<usize>>,
    /// Each rule's value in the pass being evaluated (kept between passes: no allocation).
    values: Vec<Option<f64>>,
    /// Where each rule's value was in the last pass's values: looked at first, so a pass
    /// whose sensors all read costs one comparison a rule, however many values there are.
    positions: Vec<usize>,
}

impl Alerts {
    /// Rules from the config, with the state saved before a restart (rules no longer configured
    /// are forgotten).
    pub fn new(client_id: &str, configs: &[AlertConfig], mut saved: SavedState) -> Alerts {
        let rules: Vec<(Rule, Pending)> = configs
            .iter()
            .filter_map(|config| {
                let condition = match (config.above, config.below, config.equals) {
                    (Some(threshold), None, None) => Condition::Above {
                        threshold,
                        clear: config.clear_below,
                    },
                    (None, Some(threshold), None) => Condition::Below {
                        threshold,
                        clear: config.clear_above,
                    },
                    (None, None, Some(value)) => Condition::Equals { value },
                    // Validation refuses anything else.
                    _ => return None,
                };
                Some((
                    Rule {
                        name: config.name.clone(),
                        sensor: config.sensor.clone(),
                        condition,
                        for_ms: (config.for_s * 1000.0) as u64,
                        severity: config.severity,
                        qos: config.qos,
                    },
                    Pending::default(),
                ))
            })
            .collect();
        let names: HashSet<&str> = rules.iter().map(|(rule, _)| rule.name.as_str()).collect();
        saved.raised.retain(|name, _| names.contains(name.as_str()));
        let mut by_sensor: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, (rule, _)) in rules.iter().enumerate() {
            by_sensor
                .entry(rule.sensor.clone())
                .or_default()
                .push(index);
        }
        Alerts {
            client_id: client_id.to_owned(),
            values: vec![None; rules.len()],
            positions: vec![usize::MAX; rules.len()],
            rules,
            state: saved,
            by_sensor,
        }
    }

    pub fn state(&self) -> &SavedState {
        &self.state
    }

    /// [`SavedState::catch_up`], forgetting rules no longer configured.
    pub fn catch_up<'a>(&mut self, events: impl IntoIterator<Item = &'a [u8]>) -> bool {
        let changed = self.state.catch_up(&self.client_id, events);
        let names: HashSet<&str> = self
            .rules
            .iter()
            .map(|(rule, _)| rule.name.as_str())
            .collect();
        self.state
            .raised
            .retain(|name, _| names.contains(name.as_str()));
        changed
    }

    fn event(
        &mut self,
        alert: &str,
        transition: Transition,
        sensor: &str,
        now_ms: u64,
        synced: bool,
    ) -> AlertEvent {
        self.state.counter += 1;
        AlertEvent {
            id: format!("{}:{alert}:{}", self.client_id, self.state.counter),
            ts: now_ms,
            time_synced: synced,
            alert: alert.to_owned(),
            state: transition,
            sensor: sensor.to_owned(),
            value: None,
            threshold: None,
            severity: "warning",
            error: None,
            qos: 1,
            pass_start_us: 0,
        }
    }

    /// Evaluates every rule on `sample` at `monotonic_ms` (the monotonic clock, for `for_s`);
    /// returns the events in rule order, sensor faults first, stamped with the sample's `ts_ms`.
    /// A rule whose sensor failed neither raises nor clears.
    pub fn evaluate(
        &mut self,
        sample: &Sample,
        monotonic_ms: u64,
        synced: bool,
    ) -> Vec<AlertEvent> {
        let now_ms = sample.ts_ms;
        let mut events = Vec::new();
        // Sensor faults: raised while a value fails, cleared when it reads again.
        for (name, error) in &sample.errors {
            if !self.state.faults.contains_key(&**name) {
                self.state.faults.insert(name.to_string(), true);
                let mut event = self.event(SENSOR_FAULT, Transition::Raised, name, now_ms, synced);
                event.error = Some(error.to_string());
                events.push(event);
            }
        }
        // One look per value, and only while something is failing; the events in name order.
        let mut recovered: Vec<String> = Vec::new();
        if !self.state.faults.is_empty() {
            recovered = sample
                .values
                .iter()
                .filter(|(name, _)| self.state.faults.contains_key(&**name))
                .map(|(name, _)| name.to_string())
                .collect();
            recovered.sort_unstable();
        }
        for name in recovered {
            self.state.faults.remove(&name);
            events.push(self.event(SENSOR_FAULT, Transition::Cleared, &name, now_ms, synced));
        }

        self.values.fill(None);
        let mut missed = false;
        for (index, (rule, _)) in self.rules.iter().enumerate() {
            match sample.values.get(self.positions[index]) {
                Some((name, value)) if **name == *rule.sensor => self.values[index] = Some(*value),
                _ => missed = true,
            }
        }
        if missed {
            // A value moved (a sensor before it failed or recovered) or is missing: one look
            // per value, and the positions learnt for the next pass.
            for (position, (name, value)) in sample.values.iter().enumerate() {
                if let Some(indexes) = self.by_sensor.get(&**name) {
                    for &index in indexes {
                        self.values[index] = Some(*value);
                        self.positions[index] = position;
                    }
                }
            }
        }
        for index in 0..self.rules.len() {
            let (rule, pending) = &self.rules[index];
            let Some(value) = self.values[index] else {
                continue;
            };
            let raised = self.state.raised.contains_key(&rule.name);
            let changing = if raised {
                rule.condition.clears(value)
            } else {
                rule.condition.trips(value)
            };
            if !changing {
                self.rules[index].1 = Pending::default();
                continue;
            }
            let since = pending.since_ms.unwrap_or(monotonic_ms);
            if monotonic_ms.saturating_sub(since) < rule.for_ms {
                self.rules[index].1.since_ms = Some(since);
                continue;
            }
            let rule = rule.clone();
            self.rules[index].1 = Pending::default();
            let transition = if raised {
                self.state.raised.remove(&rule.name);
                Transition::Cleared
            } else {
                self.state.raised.insert(rule.name.clone(), true);
                Transition::Raised
            };
            let mut event = self.event(&rule.name, transition, &rule.sensor, now_ms, synced);
            event.value = Some(value);
            event.threshold = Some(rule.condition.threshold());
            event.severity = severity_name(rule.severity);
            event.qos = rule.qos;
            events.push(event);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sensors::SensorError;

    fn rule(yaml: &str) -> AlertConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn sample(value: Option<f64>) -> Sample {
        sample_at(0, value)
    }

    /// A sample stamped `ts_ms` on the wall clock.
    fn sample_at(ts_ms: u64, value: Option<f64>) -> Sample {
        let mut sample = Sample {
            ts_ms,
            ..Sample::default()
        };
        match value {
            Some(value) => sample.values.push((Arc::from("t"), value)),
            None => sample.errors.push((
                Arc::from("t"),
                SensorError::System {
                    metric: "t",
                    reason: "gone".to_owned(),
                },
            )),
        }
        sample
    }

    /// Rules find their values wherever they stand in the pass: a sensor before theirs that
    /// fails (and so is missing from the values) or comes back moves them.
    #[test]
    fn a_rule_finds_its_value_when_the_values_before_it_come_and_go() {
        let config = [
            rule("{ name: high_b, sensor: b, above: 10, clear_below: 5 }"),
            rule("{ name: high_c, sensor: c, above: 10, clear_below: 5 }"),
        ];
        let mut alerts = Alerts::new("node", &config, SavedState::default());
        let pass = |values: &[(&str, f64)]| Sample {
            ts_ms: 0,
            values: values
                .iter()
                .map(|&(name, value)| (Arc::from(name), value))
                .collect(),
            errors: Vec::new(),
        };
        let marks = |events: Vec<AlertEvent>| -> Vec<String> {
            events
                .iter()
                .map(|e| format!("{}:{:?}", e.alert, e.state))
                .collect()
        };
        // Learnt where b and c are; nothing over the threshold.
        let first = alerts.evaluate(&pass(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]), 0, true);
        assert!(first.is_empty());
        // a is gone: b and c moved one place up; b is high.
        let events = alerts.evaluate(&pass(&[("b", 11.0), ("c", 1.0)]), 1, true);
        assert_eq!(marks(events), ["high_b:Raised"]);
        // a is back: the old places are stale again; c is high, b clears.
        let events = alerts.evaluate(&pass(&[("a", 1.0), ("b", 1.0), ("c", 12.0)]), 2, true);
        assert_eq!(marks(events), ["high_b:Cleared", "high_c:Raised"]);
        // Another sensor's value where c's was is not taken for c's.
        let events = alerts.evaluate(&pass(&[("a", 1.0), ("b", 1.0), ("x", 1.0)]), 3, true);
        assert!(events.is_empty(), "{:?}", marks(events));
    }

    /// Feeds (time in s, value or failure) to one rule; returns "raised@t"/"cleared@t" marks,
    /// sensor faults as "fault+@t"/"fault-@t".
    fn check(yaml: &str, steps: &[(u64, Option<f64>)], expected: &[&str]) {
        let mut alerts = Alerts::new("node", &[rule(yaml)], SavedState::default());
        let mut got = Vec::new();
        for (t, value) in steps {
            for event in alerts.evaluate(&sample(*value), t * 1000, true) {
                let mark = match (event.alert.as_str(), event.state) {
                    (SENSOR_FAULT, Transition::Raised) => "fault+",
                    (SENSOR_FAULT, Transition::Cleared) => "fault-",
                    (_, Transition::Raised) => "raised",
                    (_, Transition::Cleared) => "cleared",
                };
                got.push(format!("{mark}@{t}"));
            }
        }
        assert_eq!(got, expected, "{yaml}");
    }

    #[test]
    fn state_machines() {
        let above = "{ name: hot, sensor: t, above: 80, clear_below: 75 }";
        // Edges: 80 is not above 80; 75 is not below 75.
        check(
            above,
            &[
                (0, Some(80.0)),
                (1, Some(80.1)),
                (2, Some(90.0)),
                (3, Some(75.0)),
                (4, Some(74.9)),
            ],
            &["raised@1", "cleared@4"],
        );
        // No clear_below: clears at or below the threshold.
        check(
            "{ name: hot, sensor: t, above: 80 }",
            &[(0, Some(81.0)), (1, Some(80.0))],
            &["raised@0", "cleared@1"],
        );
        let below = "{ name: cold, sensor: t, below: 5, clear_above: 7 }";
        check(
            below,
            &[
                (0, Some(5.0)),
                (1, Some(4.0)),
                (2, Some(6.9)),
                (3, Some(7.1)),
            ],
            &["raised@1", "cleared@3"],
        );
        let door = "{ name: door_open, sensor: t, equals: 1 }";
        check(
            door,
            &[
                (0, Some(0.0)),
                (1, Some(1.0)),
                (2, Some(1.0)),
                (3, Some(0.0)),
            ],
            &["raised@1", "cleared@3"],
        );
        // for_s: the condition must hold 10 s; a dip restarts the wait; clearing waits too.
        let held = "{ name: hot, sensor: t, above: 80, for_s: 10 }";
        check(
            held,
            &[
                (0, Some(90.0)),
                (5, Some(70.0)),
                (6, Some(90.0)),
                (15, Some(90.0)),
                (16, Some(90.0)),
                (20, Some(70.0)),
                (29, Some(70.0)),
                (30, Some(70.0)),
            ],
            &["raised@16", "cleared@30"],
        );
        // A failing sensor raises sensor_fault; the rule neither raises nor clears meanwhile.
        check(
            above,
            &[(0, Some(90.0)), (1, None), (2, None), (3, Some(70.0))],
            &["raised@0", "fault+@1", "fault-@3", "cleared@3"],
        );
    }

    /// Issue 31: `for_s` is measured on the monotonic clock. A wall clock stepped back an hour
    /// (the samples' `ts_ms`) used to hold the alert for an hour more; stepped forward a day, it
    /// raised at once, skipping the hold that filters transients.
    #[test]
    fn for_s_holds_whatever_the_wall_clock_does() {
        let config = [rule("{ name: hot, sensor: t, above: 80, for_s: 30 }")];
        let day_ms = 86_400_000;
        let t0 = 1_700_000_000_000;
        // (wall clock ts_ms, monotonic s): stepped back an hour after the first sample.
        let back = [
            (t0, 0),
            (t0 - 3_600_000 + 1_000, 1),
            (t0 - 3_600_000 + 30_000, 30),
        ];
        // Stepped forward a day after the first sample.
        let forward = [
            (t0, 0),
            (t0 + day_ms + 1_000, 1),
            (t0 + day_ms + 6_000, 6),
            (t0 + day_ms + 30_000, 30),
        ];
        for (steps, raised_at) in [(&back[..], 30), (&forward[..], 30)] {
            let mut alerts = Alerts::new("node", &config, SavedState::default());
            let mut raised = None;
            for &(ts_ms, monotonic_s) in steps {
                let events =
                    alerts.evaluate(&sample_at(ts_ms, Some(90.0)), monotonic_s * 1000, true);
                if let Some(event) = events.first() {
                    assert_eq!(event.ts, ts_ms, "the event carries the wall clock's time");
                    raised.get_or_insert(monotonic_s);
                }
            }
            assert_eq!(raised, Some(raised_at), "{steps:?}");
        }
    }

    #[test]
    fn events_carry_stable_unique_ids_and_the_state_survives() {
        let config = [rule(
            "{ name: hot, sensor: t, above: 80, severity: critical, qos: 2 }",
        )];
        let mut alerts = Alerts::new("node-1", &config, SavedState::default());
        let events = alerts.evaluate(&sample_at(1000, Some(81.2)), 1, true);
        assert_eq!(
            events[0].to_json(),
            r#"{"id":"node-1:hot:1","ts":1000,"alert":"hot","state":"raised","sensor":"t","value":81.2,"threshold":80.0,"severity":"critical"}"#
        );
        assert_eq!(events[0].qos, 2);
        // A restart with the saved state: still raised, so no second raise; the next event
        // continues the counter.
        let saved = alerts.state().clone();
        let mut restarted = Alerts::new("node-1", &config, saved);
        assert!(restarted
            .evaluate(&sample_at(2000, Some(85.0)), 2, true)
            .is_empty());
        let cleared = restarted.evaluate(&sample_at(3000, Some(70.0)), 3, false);
        assert_eq!(cleared[0].id, "node-1:hot:2");
        assert!(cleared[0].to_json().contains(r#""time_synced":false"#));
    }

    #[test]
    fn the_state_catches_up_with_queued_events_in_counter_order() {
        let mut state = SavedState {
            counter: 3,
            raised: BTreeMap::from([("old".to_owned(), true)]),
            faults: BTreeMap::new(),
        };
        let events: [&[u8]; 6] = [
            // Counted already.
            br#"{"id":"n1:hot:2","alert":"hot","state":"raised","sensor":"t"}"#,
            br#"{"id":"n1:hot:5","alert":"hot","state":"cleared","sensor":"t"}"#,
            br#"{"id":"n1:hot:4","alert":"hot","state":"raised","sensor":"t"}"#,
            br#"{"id":"n1:sensor_fault:6","alert":"sensor_fault","state":"raised","sensor":"p"}"#,
            // Another device's (whose id starts with ours), and not an event.
            br#"{"id":"n1:2:cold:9","alert":"cold","state":"raised","sensor":"t"}"#,
            b"not json",
        ];
        assert!(state.catch_up("n1", events));
        assert_eq!(state.counter, 6);
        assert_eq!(state.raised, BTreeMap::from([("old".to_owned(), true)]));
        assert_eq!(state.faults, BTreeMap::from([("p".to_owned(), true)]));
        // Nothing newer: unchanged.
        assert!(!state.catch_up("n1", events));
    }
}
