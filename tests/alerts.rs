//! Alerts from `fieldagent run` at a real mosquitto: raise and clear with hysteresis, QoS 2
//! delivered once, sensor faults, and no second raise after a restart.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::broker::{Broker, BrokerPki, Subscriber};
use crate::daemon::{online, Agent, Setup};
use crate::util::TestDir;

const RULES: &str = "alerts:\n  - { name: overtemp, sensor: cpu_temp, above: 80, clear_below: 75, severity: critical, qos: 2 }\n";

fn set_temp(dir: &TestDir, millidegrees: u32) {
    dir.write(
        "sys/class/thermal/thermal_zone1/temp",
        format!("{millidegrees}\n"),
    );
}

fn alert(subscriber: &Subscriber, state: &str, within: Duration) -> Option<serde_json::Value> {
    subscriber
        .wait_for(within, |m| {
            m.topic.ends_with("/alerts")
                && m.payload.contains(&format!(r#""state":"{state}""#))
                && m.payload.contains(r#""alert":"overtemp""#)
        })
        .map(|m| serde_json::from_str(&m.payload).unwrap())
}

#[test]
fn raise_and_clear_with_hysteresis_once_each_at_qos_2() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start_qos(&broker, &pki, "devices/+/alerts", 2);
    let mut setup = Setup::new("node-a", &broker);
    setup.top_extra = RULES.to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);

    // The fake tree starts at 48.25 °C: nothing. Then the ramp: 85 raises, 78 holds (hysteresis),
    // 72 clears.
    set_temp(&dir, 85_000);
    // 30 s, not 10: these tests start first, when a fresh CI machine may still be writing back
    // the build, and the agent's first fsyncs wait for it.
    let raised = alert(&subscriber, "raised", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no raise; agent log:\n{}", agent.report()));
    assert_eq!(raised["sensor"], "cpu_temp");
    assert_eq!(raised["value"], 85.0);
    assert_eq!(raised["threshold"], 80.0);
    assert_eq!(raised["severity"], "critical");
    let raised_id = raised["id"].as_str().unwrap().to_owned();
    assert!(raised_id.starts_with("node-a:overtemp:"), "{raised_id}");

    set_temp(&dir, 78_000);
    std::thread::sleep(Duration::from_secs(1));
    set_temp(&dir, 72_000);
    let cleared = alert(&subscriber, "cleared", Duration::from_secs(10)).expect("a clear");
    assert_eq!(cleared["value"], 72.0);
    assert_ne!(cleared["id"], raised_id.as_str());

    // QoS 2: each event arrived exactly once, and nothing more came.
    assert!(
        subscriber
            .wait_for(Duration::from_secs(2), |m| m.topic.ends_with("/alerts"))
            .is_none(),
        "an alert arrived twice or without a change"
    );
}

#[test]
fn a_failing_sensor_raises_sensor_fault_until_it_reads_again() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/+/alerts");
    let agent = Agent::start(&dir, &pki, &broker, "node-f");
    // `gone` never reads: its fault is raised once, right away.
    let fault = subscriber
        .wait_for(Duration::from_secs(30), |m| {
            m.payload.contains(r#""sensor":"gone""#)
        })
        .unwrap_or_else(|| panic!("no sensor_fault; agent log:\n{}", agent.log()));
    assert!(
        fault
            .payload
            .contains(r#""alert":"sensor_fault","state":"raised""#),
        "{fault:?}"
    );
    assert!(
        fault.payload.contains("no hwmon chip with name"),
        "{fault:?}"
    );
    // It comes back: cleared.
    dir.write("sys/class/hwmon/hwmon5/name", "tmp421\n");
    dir.write("sys/class/hwmon/hwmon5/temp1_input", "30000\n");
    let cleared = subscriber
        .wait_for(Duration::from_secs(10), |m| {
            m.payload.contains(r#""sensor":"gone""#) && m.payload.contains(r#""state":"cleared""#)
        })
        .expect("sensor_fault cleared");
    assert!(cleared.payload.contains(r#""alert":"sensor_fault""#));
}

#[test]
fn a_restart_while_raised_does_not_raise_again() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/+/alerts");
    set_temp(&dir, 0);
    let start = |dir: &TestDir| {
        let mut setup = Setup::new("node-r", &broker);
        setup.top_extra = RULES.to_owned();
        Agent::start_with(dir, &pki, setup)
    };
    crate::util::fake_sysfs(&dir);
    set_temp(&dir, 90_000);
    let mut agent = start(&dir);
    let raised = alert(&subscriber, "raised", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no raise; agent log:\n{}", agent.report()));
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));

    let status = Subscriber::start(&broker, &pki, "devices/node-r/status");
    let agent = start(&dir);
    online(&status, "node-r", Duration::from_secs(10)).expect("online again");
    assert!(
        alert(&subscriber, "raised", Duration::from_secs(2)).is_none(),
        "raised again after the restart; agent log:\n{}",
        agent.log()
    );
    set_temp(&dir, 60_000);
    let cleared = alert(&subscriber, "cleared", Duration::from_secs(10)).expect("a clear");
    // The event counter survived the restart: the ids go on.
    let number = |v: &serde_json::Value| -> u64 {
        v["id"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        number(&cleared) > number(&raised),
        "{raised} then {cleared}"
    );
}

/// A power cut after an alert event was synced to the outbox and before the alert state that
/// counts it was saved (here: the state file removed after a stop while the broker was out of
/// reach): the next start catches the state up from the outbox, so the event's id never names
/// a second payload and the alert is not raised again.
#[test]
fn the_alert_state_catches_up_with_the_outbox() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    crate::util::fake_sysfs(&dir);
    set_temp(&dir, 90_000);
    // No broker yet: the event stays queued in the outbox.
    let nowhere = format!("mqtts://127.0.0.1:{}", crate::broker::free_port());
    let mut setup = Setup::at("node-p", nowhere);
    setup.top_extra = RULES.to_owned();
    let mut agent = Agent::start_with(&dir, &pki, setup);
    let state = dir.path().join("state-node-p/alerts.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("overtemp")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no alert state; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    std::fs::remove_file(&state).unwrap();

    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/+/alerts");
    let mut setup = Setup::new("node-p", &broker);
    setup.top_extra = RULES.to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    online(
        &Subscriber::start(&broker, &pki, "devices/node-p/status"),
        "node-p",
        Duration::from_secs(10),
    )
    .expect("online");
    let messages = subscriber.collect(Duration::from_secs(4));
    // What the first run queued: the sensor fault of `gone` (1), then overtemp (2); each id with
    // one payload (a redelivery is the same bytes), nothing made again.
    let mut by_id: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for message in &messages {
        let value: serde_json::Value = serde_json::from_str(&message.payload).unwrap();
        by_id
            .entry(value["id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(message.payload.clone());
    }
    assert_eq!(
        by_id.keys().collect::<Vec<_>>(),
        ["node-p:overtemp:2", "node-p:sensor_fault:1"],
        "{messages:?}\nagent log:\n{}",
        agent.log()
    );
    assert!(
        by_id.values().all(|payloads| payloads.len() == 1),
        "an id with two payloads: {by_id:?}"
    );
    agent.expect_log("caught up from the queued events", Duration::from_secs(1));
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        saved.contains(r#""counter":2"#) && saved.contains("overtemp"),
        "{saved}"
    );
}
