//! Remote operations through the shipped mosquitto config (its ACLs included): the states of a
//! request, duplicates, the busy rules, refusals, persistence across kill -9 of the agent, the
//! privileged helper (`fieldagent-helper`, run here by the test as its path unit would run it)
//! checking a request again itself, and a restart proven by the new start. The update with its
//! rollback and power cuts needs a real systemd and apt: the system test (tests/system) does it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::broker::{BrokerPki, Received, Subscriber};
use crate::daemon::{Agent, Setup};
use crate::fleet_broker::{shipped_broker, ShippedBroker};
use crate::util::TestDir;

const ID: &str = "node-o";

struct Device {
    dir: TestDir,
    pki: BrokerPki,
    fleet: ShippedBroker,
    /// `devices/node-o/operations/#` as the operator sees it.
    seen: Subscriber,
    /// The helper's own directory.
    helper_dir: PathBuf,
}

impl Device {
    fn new() -> Device {
        let dir = TestDir::new();
        let pki = BrokerPki::new(&dir);
        let fleet = shipped_broker(&dir, &pki);
        let seen = fleet.operator(&format!("devices/{ID}/operations/#"));
        let helper_dir = dir.path().join("helper");
        Device {
            dir,
            pki,
            fleet,
            seen,
            helper_dir,
        }
    }

    fn start(&self) -> Agent {
        let mut setup = Setup::new(ID, &self.fleet.broker);
        setup.top_extra = "operations:\n  restart: {}\n  log_upload: { max_lines: 100 }\n  software_update: { confirm_s: 10 }\n".to_owned();
        let agent = Agent::start_with(&self.dir, &self.pki, setup);
        let status = self.fleet.operator(&format!("devices/{ID}/status"));
        crate::daemon::online(&status, ID, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("not online; agent log:\n{}", agent.log()));
        agent
    }

    fn request(&self, kind: &str, payload: &str) {
        assert!(
            self.fleet
                .operator_publishes(&format!("devices/{ID}/operations/{kind}"), payload),
            "the operator may publish {kind}"
        );
    }

    /// The next status of operation `id` for which `wanted` holds.
    fn status(&self, id: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let topic = format!("devices/{ID}/operations/status");
        let found = self
            .seen
            .wait_for(Duration::from_secs(15), |m| {
                m.topic == topic
                    && serde_json::from_str::<Value>(&m.payload)
                        .is_ok_and(|status| status["id"] == id && wanted(&status))
            })
            .unwrap_or_else(|| panic!("no such status of {id}"));
        serde_json::from_str(&found.payload).unwrap()
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join(format!("state-{ID}"))
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_dir(self.state_dir().join("requests"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `fieldagent-helper run`, as `fieldagent-helper.path` starts it (this test runs as root).
    fn helper(&self) {
        let output = Command::new(env!("CARGO_BIN_EXE_fieldagent-helper"))
            .arg("--config")
            .arg(self.dir.path().join(format!("{ID}.yaml")))
            .arg("--dir")
            .arg(&self.helper_dir)
            .arg("run")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
}

fn terminal(status: &Value) -> bool {
    status["state"] == "successful" || status["state"] == "failed"
}

fn statuses_of(messages: &[Received], id: &str) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/operations/status"))
        .filter_map(|m| serde_json::from_str::<Value>(&m.payload).ok())
        .filter(|status| status["id"] == id)
        .collect()
}

#[test]
fn states_duplicates_busy_and_refusals_through_the_shipped_broker() {
    let device = Device::new();
    let agent = device.start();

    device.request("log_upload", r#"{"id":"l1","lines":10}"#);
    let accepted = device.status("l1", |s| s["state"] == "accepted");
    assert_eq!(accepted["type"], "log_upload", "{accepted}");
    // Handed to the helper: one request file, named after the id.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while device.requests().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(device.requests().len(), 1, "{:?}", device.requests());

    // The busy rules: a restart runs alone; one log upload at a time.
    device.request("restart", r#"{"id":"r1","target":"agent"}"#);
    let busy = device.status("r1", |_| true);
    assert_eq!(busy["state"], "failed", "{busy}");
    let reason = busy["reason"].as_str().unwrap();
    assert!(reason.starts_with("busy: restart runs alone"), "{busy}");
    device.request("log_upload", r#"{"id":"l2"}"#);
    let busy = device.status("l2", |_| true);
    assert!(
        busy["reason"].as_str().unwrap().contains("one at a time"),
        "{busy}"
    );
    // A repeated id: its last state, marked, not run again.
    device.request("log_upload", r#"{"id":"l1","lines":10}"#);
    let again = device.status("l1", |s| s["duplicate"] == true);
    assert_eq!(again["state"], "accepted", "{again}");
    assert_eq!(device.requests().len(), 1, "a duplicate was handed over");

    // A type the shipped ACL does not let operators publish never reaches the device.
    device.request("reboot", r#"{"id":"x1"}"#);
    assert!(
        device
            .seen
            .wait_for(Duration::from_secs(2), |m| m.payload.contains("\"x1\""))
            .is_none(),
        "an unknown type passed the shipped ACL"
    );
    // Refusals, each with its reason.
    for (kind, payload, expected) in [
        (
            "software_update",
            r#"{"id":"x2","package":"openssh-server","version":"1"}"#,
            "is not in operations.software_update.packages",
        ),
        (
            "restart",
            r#"{"id":"x3","target":"device"}"#,
            "restart.device",
        ),
        ("log_upload", r#"{"id":"x4","lines":1000}"#, "max_lines"),
        ("log_upload", "not json", "malformed"),
    ] {
        device.request(kind, payload);
        let refused = device
            .seen
            .wait_for(Duration::from_secs(10), |m| {
                m.topic.ends_with("/operations/status") && m.payload.contains(expected)
            })
            .unwrap_or_else(|| panic!("{kind} {payload}: no refusal naming {expected:?}"));
        let refused: Value = serde_json::from_str(&refused.payload).unwrap();
        assert_eq!(refused["state"], "failed", "{refused}");
    }

    // The helper takes the request (this machine's journal has no entries for the unit): the
    // chunks come before the terminal state, which says how many.
    device.helper();
    assert!(device.requests().is_empty(), "{:?}", device.requests());
    let chunk = device
        .seen
        .wait_for(Duration::from_secs(10), |m| {
            m.topic == format!("devices/{ID}/operations/log/l1")
        })
        .expect("a log chunk");
    let chunk: Value = serde_json::from_str(&chunk.payload).unwrap();
    assert_eq!(chunk["id"], "l1");
    assert_eq!(chunk["chunk"], 0);
    assert_eq!(chunk["last"], true);
    let done = device.status("l1", terminal);
    assert_eq!(done["state"], "successful", "{done}");
    assert_eq!(done["result"]["chunks"], 1, "{done}");
    assert_eq!(
        done["result"]["lines"],
        chunk["lines"].as_array().unwrap().len(),
        "{done}"
    );
    device.request("log_upload", r#"{"id":"l1","lines":10}"#);
    let again = device.status("l1", |s| s["duplicate"] == true);
    assert_eq!(again["state"], "successful", "{again}");

    // `status --json` lists it (written at the pass after the change).
    let config = device.dir.path().join(format!("{ID}.yaml"));
    let listed = |status: &Value| {
        status["operations"].as_array().is_some_and(|ops| {
            ops.iter().any(|op| {
                op["id"] == "l1" && op["state"] == "successful" && op["type"] == "log_upload"
            })
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let output =
            crate::util::fieldagent(&["--config", config.to_str().unwrap(), "status", "--json"]);
        let status: Value = serde_json::from_slice(&output.stdout).unwrap();
        if listed(&status) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);
}

#[test]
fn an_operation_survives_kill_9_and_ends_exactly_once() {
    let device = Device::new();
    let mut agent = device.start();
    device.request("log_upload", r#"{"id":"k1"}"#);
    device.status("k1", |s| s["state"] == "accepted");

    // kill -9 with the operation running; the helper does its part while the agent is down.
    agent.signal(Signal::SIGKILL);
    agent.wait(Duration::from_secs(10));
    device.helper();
    let _agent = device.start();
    let done = device.status("k1", terminal);
    assert_eq!(done["state"], "successful", "{done}");

    // And once more: the agent killed after the end; nothing is sent as new again.
    let mut agent = _agent;
    std::thread::sleep(Duration::from_millis(500));
    agent.signal(Signal::SIGKILL);
    agent.wait(Duration::from_secs(10));
    let _agent = device.start();
    let later = device.seen.collect(Duration::from_secs(2));
    let terminals: Vec<Value> = statuses_of(&later, "k1")
        .into_iter()
        .filter(terminal)
        .collect();
    assert!(terminals.is_empty(), "sent again: {terminals:?}");
    device.request("log_upload", r#"{"id":"k1"}"#);
    let again = device.status("k1", |s| s["duplicate"] == true);
    assert_eq!(again["state"], "successful", "{again}");
}

#[test]
fn a_restart_is_proven_by_the_new_start_and_the_helper_checks_again() {
    let device = Device::new();
    let mut agent = device.start();
    device.request("restart", r#"{"id":"r1","target":"agent"}"#);
    let accepted = device.status("r1", |s| s["state"] == "accepted");
    let asked_at = accepted["ts"].as_u64().unwrap();

    // What systemd does for `systemctl restart fieldagent` (this machine has no systemd for the
    // helper to ask): the agent stopped, started again.
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    let agent = device.start();
    let done = device.status("r1", terminal);
    assert_eq!(done["state"], "successful", "{done}; log:\n{}", agent.log());
    let started = done["result"]["started_ts"].as_u64().unwrap();
    assert!(started >= asked_at, "{done}");
    assert!(device.requests().is_empty(), "{:?}", device.requests());

    // The helper asked to restart where systemctl cannot: failed, with systemctl's reason.
    device.request("restart", r#"{"id":"r2","target":"agent"}"#);
    device.status("r2", |s| s["state"] == "accepted");
    device.helper();
    let failed = device.status("r2", terminal);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["reason"].as_str().unwrap().contains("systemctl"),
        "{failed}"
    );

    // A request the agent would never write (a device restart the config does not allow),
    // planted in its directory: the helper checks it against the config itself.
    let planted = serde_json::json!({
        "id": "evil",
        "params": { "restart": { "target": "device" } },
        "accepted_ts": 1
    });
    let name = format!("evil-{:08x}.json", crc32fast::hash(b"evil"));
    std::fs::write(
        device.state_dir().join("requests").join(&name),
        planted.to_string(),
    )
    .unwrap();
    device.helper();
    let result: Value = serde_json::from_slice(
        &std::fs::read(device.state_dir().join("results").join(&name)).unwrap(),
    )
    .unwrap();
    assert_eq!(result["state"], "failed", "{result}");
    assert!(
        result["reason"]
            .as_str()
            .unwrap()
            .contains("refused by the helper"),
        "{result}"
    );
}
