//! `fieldagent run` against a real mosquitto with mutual TLS: status, telemetry, clean stop, will.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::broker::{Broker, BrokerPki, Subscriber};
use crate::util::{fake_sysfs, TestDir};

const KEEPALIVE_S: u64 = 2;

/// An agent process; killed by PID if a test ends without stopping it.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &TestDir, pki: &BrokerPki, broker: &Broker, client_id: &str) -> Agent {
        fake_sysfs(dir);
        let (cert, key) = pki.issue(client_id, client_id, false);
        let config = dir.config(&format!(
            r#"broker:
  urls: ["{url}"]
  keepalive_s: {KEEPALIVE_S}
  reconnect: {{ initial_s: 0.2, max_s: 1 }}
  tls: {{ ca_file: {ca}, cert_file: {cert}, key_file: {key} }}
sysfs_root: "@DIR@/sys"
state_dir: "@DIR@/state"
telemetry: {{ interval_s: 0.2 }}
sensors:
  - {{ name: cpu_temp, thermal_zone: {{ type: cpu-thermal }} }}
  - {{ name: gone, hwmon: {{ chip: tmp421, input: temp1 }} }}
"#,
            url = broker.url(),
            ca = pki.ca.display(),
            cert = cert.display(),
            key = key.display(),
        ));
        let log = dir.path().join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_fieldagent"))
            .args(["--config", config.to_str().unwrap(), "run"])
            .env_remove("FIELDAGENT_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the exit code, at most `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn online_status_telemetry_and_a_clean_stop() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/#");
    let mut agent = Agent::start(&dir, &pki, &broker, "node-1");

    let online = subscriber
        .wait_for(Duration::from_secs(10), |m| {
            m.topic == "devices/node-1/status" && m.payload.contains(r#""online":true"#)
        })
        .unwrap_or_else(|| panic!("no online status; agent log:\n{}", agent.log()));
    assert!(
        online
            .payload
            .contains(&format!(r#""version":"{}""#, env!("CARGO_PKG_VERSION"))),
        "{online:?}"
    );
    assert!(online.payload.contains(r#""boot_id":""#), "{online:?}");

    // The status is retained: a subscriber that comes later gets it at once.
    let late = Subscriber::start(&broker, &pki, "devices/node-1/status");
    let retained = late
        .wait_for(Duration::from_secs(5), |_| true)
        .expect("a retained status");
    assert!(
        retained.retained && retained.payload.contains(r#""online":true"#),
        "{retained:?}"
    );

    let first = subscriber
        .wait_for(Duration::from_secs(5), |m| {
            m.topic == "devices/node-1/telemetry"
        })
        .expect("telemetry");
    let json: serde_json::Value = serde_json::from_str(&first.payload).unwrap();
    assert_eq!(json["values"]["cpu_temp"], 48.25, "{}", first.payload);
    assert!(
        json["errors"]["gone"]
            .as_str()
            .unwrap()
            .contains("no hwmon chip with name \"tmp421\""),
        "{}",
        first.payload
    );
    assert!(json["seq"].is_u64() && json["ts"].as_u64().unwrap() > 1_600_000_000_000);

    // Telemetry follows the sensor.
    dir.write("sys/class/thermal/thermal_zone1/temp", "81500\n");
    subscriber
        .wait_for(Duration::from_secs(5), |m| {
            m.topic == "devices/node-1/telemetry" && m.payload.contains(r#""cpu_temp":81.5"#)
        })
        .expect("telemetry with the new value");

    agent.signal(Signal::SIGTERM);
    let stopped = subscriber
        .wait_for(Duration::from_secs(5), |m| {
            m.topic == "devices/node-1/status"
        })
        .expect("a status on shutdown");
    assert!(
        stopped.payload.contains(r#""reason":"shutdown""#),
        "{stopped:?}"
    );
    assert_eq!(
        agent.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        agent.log()
    );
    // A clean disconnect does not fire the will.
    assert!(subscriber
        .wait_for(Duration::from_secs(2), |m| m
            .payload
            .contains(r#""reason":"lost""#))
        .is_none());
}

#[test]
fn a_killed_agent_leaves_its_will() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/+/status");
    let agent = Agent::start(&dir, &pki, &broker, "node-2");
    subscriber
        .wait_for(Duration::from_secs(10), |m| {
            m.payload.contains(r#""online":true"#)
        })
        .unwrap_or_else(|| panic!("no online status; agent log:\n{}", agent.log()));

    agent.signal(Signal::SIGKILL);
    let killed = Instant::now();
    let will = subscriber
        .wait_for(Duration::from_secs(KEEPALIVE_S * 3 / 2 + 1), |m| {
            m.topic == "devices/node-2/status"
        })
        .expect("the will within 1.5 x keepalive");
    assert_eq!(will.payload, r#"{"online":false,"ts":0,"reason":"lost"}"#);
    assert!(
        killed.elapsed() <= Duration::from_millis(KEEPALIVE_S * 1500),
        "{:?}",
        killed.elapsed()
    );
}
