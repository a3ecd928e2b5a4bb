//! SIGHUP: a changed threshold applies without a reconnect, a broker change reconnects once, a
//! broken config is refused while the agent goes on.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::broker::{Broker, BrokerPki, Subscriber};
use crate::daemon::{online, Agent, Setup};
use crate::util::TestDir;

#[test]
fn a_reload_applies_what_changed_and_refuses_a_broken_config() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-h/#");
    let mut setup = Setup::new("node-h", &broker);
    setup.top_extra = "alerts:\n  - { name: warm, sensor: cpu_temp, above: 60 }\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    online(&subscriber, "node-h", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("not online; log:\n{}", agent.log()));
    assert_eq!(broker.sessions("node-h"), 1);

    // 48.25 °C is below 60; lowering the threshold to 40 raises the alert, without a reconnect.
    Agent::edit_config(&dir, "node-h", "above: 60", "above: 40");
    agent.signal(Signal::SIGHUP);
    let raised = subscriber
        .wait_for(Duration::from_secs(10), |m| {
            m.topic.ends_with("/alerts") && m.payload.contains(r#""alert":"warm""#)
        })
        .unwrap_or_else(|| panic!("no alert after the reload; log:\n{}", agent.log()));
    assert!(raised.payload.contains(r#""threshold":40.0"#), "{raised:?}");
    assert_eq!(
        broker.sessions("node-h"),
        1,
        "a sampling change reconnected"
    );

    // A broken config is refused; telemetry goes on.
    let path = dir.path().join("node-h.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\nbogus_key: 1\n")).unwrap();
    agent.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let log = agent.log();
    assert!(log.contains("Reload refused"), "{log}");
    assert!(log.contains("bogus_key: unknown key"), "{log}");
    subscriber
        .wait_for(Duration::from_secs(5), |m| m.topic.ends_with("/telemetry"))
        .expect("telemetry after a refused reload");

    // A broker setting changes: one reconnect.
    std::fs::write(&path, good.replace("keepalive_s: 2", "keepalive_s: 4")).unwrap();
    agent.signal(Signal::SIGHUP);
    online(&subscriber, "node-h", Duration::from_secs(10)).expect("online after the reconnect");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(broker.sessions("node-h"), 2, "{}", broker.log());
    assert!(
        broker.log().contains("as node-h (p2, c0, k2"),
        "the new keepalive: {}",
        broker.log()
    );
}

#[test]
fn a_renewed_certificate_is_checked_and_used_after_one_reconnect() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-k/status");
    let agent = Agent::start(&dir, &pki, &broker, "node-k");
    online(&subscriber, "node-k", Duration::from_secs(10)).expect("online");
    let cert = dir.path().join("broker/node-k.crt");
    let key = dir.path().join("broker/node-k.key");

    // A pair for another device: refused, the running one stays.
    let (other_cert, other_key) = pki.issue("other", "node-other", false);
    std::fs::copy(&other_cert, &cert).unwrap();
    std::fs::copy(&other_key, &key).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while !agent.log().contains("New certificate refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "not refused; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent
            .log()
            .contains("is not the running identity \"node-k\""),
        "{}",
        agent.log()
    );
    assert_eq!(broker.sessions("node-k"), 1);

    // A proper renewal: checked, copied in, one reconnect with it.
    pki.issue("node-k", "node-k", false);
    online(&subscriber, "node-k", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no reconnect after the renewal; log:\n{}", agent.log()));
    assert!(
        agent
            .log()
            .contains("Certificate renewed; reconnecting once."),
        "{}",
        agent.log()
    );
    assert_eq!(broker.sessions("node-k"), 2, "{}", broker.log());
}
