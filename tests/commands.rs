//! Remote commands through a real mosquitto: actuators, refusals, built-ins, duplicates (also
//! across a restart), expiry, and commands that wait in the persistent session.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::broker::{publish, Broker, BrokerPki, Subscriber};
use crate::daemon::{online, Agent, Setup};
use crate::util::TestDir;

struct Device {
    dir: TestDir,
    pki: BrokerPki,
    broker: Broker,
    responses: Subscriber,
    gpio: PathBuf,
}

impl Device {
    fn new() -> Device {
        let dir = TestDir::new();
        let pki = BrokerPki::new(&dir);
        let broker = Broker::start(&pki);
        let responses = Subscriber::start(&broker, &pki, "devices/node-c/responses");
        let gpio = dir.write("gpio17/value", "0");
        Device {
            dir,
            pki,
            broker,
            responses,
            gpio,
        }
    }

    fn start(&self) -> Agent {
        let mut setup = Setup::new("node-c", &self.broker);
        // Expiry is judged only by a believed clock; this machine's may not be.
        setup.clock_synced = true;
        setup.top_extra = format!(
            "actuators:\n  - {{ name: fan, file: {}, values: [\"0\", \"1\"] }}\n",
            self.gpio.display()
        );
        let agent = Agent::start_with(&self.dir, &self.pki, setup);
        let status = Subscriber::start(&self.broker, &self.pki, "devices/node-c/status");
        online(&status, "node-c", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("not online; agent log:\n{}", agent.log()));
        agent
    }

    fn send(&self, name: &str, payload: &str) {
        publish(
            &self.broker,
            &self.pki,
            &format!("devices/node-c/commands/{name}"),
            payload,
        );
    }

    /// The next response, as JSON.
    fn response(&self) -> serde_json::Value {
        let message = self
            .responses
            .wait_for(Duration::from_secs(10), |_| true)
            .expect("a response");
        serde_json::from_str(&message.payload).unwrap()
    }

    fn gpio(&self) -> String {
        std::fs::read_to_string(&self.gpio).unwrap()
    }
}

#[test]
fn actuators_refusals_and_built_ins() {
    let device = Device::new();
    let agent = device.start();

    device.send("fan", r#"{"id":"c1","value":"1"}"#);
    let answer = device.response();
    assert_eq!(answer["id"], "c1", "{answer}");
    assert_eq!(answer["command"], "fan");
    assert_eq!(answer["ok"], true, "{answer}; log:\n{}", agent.log());
    assert_eq!(device.gpio(), "1");

    for (name, payload, id, reason) in [
        (
            "fan",
            r#"{"id":"c2","value":"2"}"#,
            serde_json::json!("c2"),
            "value \"2\" is not allowed; fan accepts 0, 1",
        ),
        (
            "pump",
            r#"{"id":"c3","value":"1"}"#,
            serde_json::json!("c3"),
            "unknown command \"pump\"",
        ),
        (
            "fan",
            "{not json",
            serde_json::Value::Null,
            "expected a JSON object",
        ),
        (
            "fan",
            r#"{"value":"1"}"#,
            serde_json::Value::Null,
            "missing \"id\"",
        ),
        (
            "fan",
            r#"{"id":"c4","value":"0","expires_ts":1000}"#,
            serde_json::json!("c4"),
            "expired",
        ),
    ] {
        std::fs::write(&device.gpio, "1").unwrap();
        device.send(name, payload);
        let answer = device.response();
        assert_eq!(answer["ok"], false, "{payload}: {answer}");
        assert_eq!(answer["id"], id, "{payload}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(reason),
            "{payload}: {answer}"
        );
        assert_eq!(device.gpio(), "1", "{payload} touched the actuator");
    }
    let big = format!(r#"{{"id":"c5","value":"{}"}}"#, "0".repeat(5000));
    device.send("fan", &big);
    let answer = device.response();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 4096"),
        "{answer}"
    );

    device.send("ping", r#"{"id":"p1"}"#);
    let answer = device.response();
    assert_eq!(answer["ok"], true);
    assert_eq!(answer["version"], env!("CARGO_PKG_VERSION"));
    assert!(answer["uptime_s"].is_u64(), "{answer}");

    device.send("read", r#"{"id":"r1"}"#);
    let answer = device.response();
    assert_eq!(answer["values"]["cpu_temp"], 48.25, "{answer}");
    assert!(answer["errors"]["gone"].is_string(), "{answer}");
}

#[test]
fn a_repeated_id_is_answered_not_executed_even_after_a_restart() {
    let device = Device::new();
    let mut agent = device.start();
    device.send("fan", r#"{"id":"d1","value":"1"}"#);
    assert_eq!(device.response()["ok"], true);
    assert_eq!(device.gpio(), "1");

    std::fs::write(&device.gpio, "0").unwrap();
    device.send("fan", r#"{"id":"d1","value":"1"}"#);
    let answer = device.response();
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert_eq!(answer["ok"], true, "the original answer: {answer}");
    assert_eq!(device.gpio(), "0", "a duplicate ran again");

    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    let _agent = device.start();
    device.send("fan", r#"{"id":"d1","value":"1"}"#);
    let answer = device.response();
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert_eq!(
        device.gpio(),
        "0",
        "a duplicate ran again after the restart"
    );
}

#[test]
fn a_command_sent_while_the_agent_is_down_runs_when_it_is_back() {
    let device = Device::new();
    let mut agent = device.start();
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));

    // The broker keeps it in the device's persistent session.
    device.send("fan", r#"{"id":"w1","value":"1"}"#);
    assert_eq!(device.gpio(), "0");
    let agent = device.start();
    let answer = device.response();
    assert_eq!(answer["id"], "w1", "{answer}; log:\n{}", agent.log());
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(device.gpio(), "1");
}

/// Issue 24: a retained message is replayed at every subscribe; as a command it would repeat an
/// old order at each reconnect (and to every new device on that topic). A delivery with the
/// retain flag is refused with a reason and nothing is written. (A subscriber that is already
/// there when it is published gets it without the flag, as MQTT says: that one is a live command.)
#[test]
fn a_retained_command_is_refused_not_run() {
    let device = Device::new();
    let status = device
        .pki
        .client("mosquitto_pub", &device.broker, "operator")
        .args([
            "-t",
            "devices/node-c/commands/fan",
            "-q",
            "1",
            "-r",
            "-m",
            r#"{"id":"r1","value":"1"}"#,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    // The agent subscribes after it was retained: the broker replays it with the flag.
    let _agent = device.start();
    let answer = device.response();
    assert_eq!(answer["id"], "r1", "{answer}");
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("retain"),
        "{answer}"
    );
    assert_eq!(device.gpio(), "0", "a retained command ran");
}

/// Issue 20: a command's id is the sender's; a newline in it cannot start a line of the agent's
/// log that looks like one of its own. (A newline in the name, its topic level, is refused by
/// mosquitto as a control character; the agent escapes names the same way for other brokers.)
#[test]
fn a_newline_in_a_command_id_cannot_forge_a_log_line() {
    let device = Device::new();
    let agent = device.start();
    let forged = "2026-01-01T00:00:00.000000Z  INFO fieldagent::daemon: FORGED";
    device.send("nosuch", &format!(r#"{{"id":"a\n{forged}"}}"#));
    let answer = device.response();
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["id"], format!("a\n{forged}"), "answered as sent");
    device.send("fan", &format!(r#"{{"id":"b\n{forged}","value":"1"}}"#));
    let answer = device.response();
    assert_eq!(answer["ok"], true, "{answer}");
    let log = agent.log();
    assert!(
        log.matches("Command.").count() >= 2,
        "both commands are logged:\n{log}"
    );
    assert!(
        !log.lines().any(|line| line.starts_with("2026-01-01")),
        "a forged line:\n{log}"
    );
    assert!(log.contains("\\n2026-01-01"), "escaped in place:\n{log}");
}
