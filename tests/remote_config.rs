//! `config_update` through mosquitto, with real drop-ins: the agent checks the change, the
//! privileged helper (`fieldagent-helper run`, started here by a small stand-in for its path unit
//! as systemd would start it) writes it, the agent reloads and confirms it; a change that does
//! not pass `check`, a name outside the globs, a broker that cannot be reached (rolled back
//! within `confirm_s`), a delete, a duplicate, and kill -9 between the write and the
//! confirmation.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::broker::{free_port, publish, Broker, BrokerPki, Subscriber};
use crate::daemon::{online, Agent, Setup};
use crate::util::TestDir;

const ID: &str = "node-rc";
const CONFIRM_S: u64 = 10;

/// What systemd's `fieldagent-helper.path` does: whenever `state_dir/requests/` holds a file,
/// `fieldagent-helper run` (as root, as this test runs). Stopped when dropped.
struct PathUnit {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PathUnit {
    fn start(config: PathBuf, state_dir: PathBuf, helper_dir: PathBuf) -> PathUnit {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let waiting = std::fs::read_dir(state_dir.join("requests"))
                    .map(|mut entries| entries.next().is_some())
                    .unwrap_or(false);
                if waiting {
                    let status =
                        std::process::Command::new(env!("CARGO_BIN_EXE_fieldagent-helper"))
                            .arg("--config")
                            .arg(&config)
                            .arg("--dir")
                            .arg(&helper_dir)
                            .arg("run")
                            .stderr(std::process::Stdio::null())
                            .status()
                            .unwrap();
                    assert!(status.success());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        PathUnit {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PathUnit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Device {
    dir: TestDir,
    pki: BrokerPki,
    broker: Broker,
    seen: Subscriber,
    status: Subscriber,
    _path_unit: PathUnit,
}

impl Device {
    fn new() -> Device {
        let dir = TestDir::new();
        let pki = BrokerPki::new(&dir);
        let broker = Broker::start(&pki);
        let seen = Subscriber::start(&broker, &pki, &format!("devices/{ID}/operations/#"));
        let status = Subscriber::start(&broker, &pki, &format!("devices/{ID}/status"));
        std::fs::create_dir_all(dir.path().join("conf.d")).unwrap();
        dir.write("extra-value", "42.5\n");
        let path_unit = PathUnit::start(
            dir.path().join(format!("{ID}.yaml")),
            dir.path().join(format!("state-{ID}")),
            dir.path().join("helper"),
        );
        Device {
            dir,
            pki,
            broker,
            seen,
            status,
            _path_unit: path_unit,
        }
    }

    fn start(&self) -> Agent {
        let mut setup = Setup::new(ID, &self.broker);
        setup.top_extra = format!(
            "operations:\n  config_update: {{ names: [\"50-remote*.yaml\"], confirm_s: {CONFIRM_S} }}\n"
        );
        let agent = Agent::start_with(&self.dir, &self.pki, setup);
        online(&self.status, ID, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("not online; agent log:\n{}", agent.log()));
        agent
    }

    fn conf_d(&self, name: &str) -> PathBuf {
        self.dir.path().join("conf.d").join(name)
    }

    fn request(&self, payload: Value) {
        publish(
            &self.broker,
            &self.pki,
            &format!("devices/{ID}/operations/config_update"),
            &payload.to_string(),
        );
    }

    /// Every status of `id` until its terminal one (within `within`).
    fn follow(&self, id: &str, within: Duration) -> Vec<Value> {
        let states = std::cell::RefCell::new(Vec::new());
        self.seen.wait_for(within, |m| {
            let Ok(status) = serde_json::from_str::<Value>(&m.payload) else {
                return false;
            };
            if status["id"] != id || !m.topic.ends_with("/status") {
                return false;
            }
            let done = status["state"] == "successful" || status["state"] == "failed";
            states.borrow_mut().push(status);
            done
        });
        states.into_inner()
    }

    fn telemetry_has(&self, key: &str, within: Duration) -> bool {
        let telemetry =
            Subscriber::start(&self.broker, &self.pki, &format!("devices/{ID}/telemetry"));
        telemetry
            .wait_for(within, |m| m.payload.contains(&format!("\"{key}\":")))
            .is_some()
    }
}

fn steps(states: &[Value]) -> Vec<String> {
    states
        .iter()
        .map(|s| {
            s["step"]
                .as_str()
                .unwrap_or(s["state"].as_str().unwrap_or("?"))
                .to_owned()
        })
        .collect()
}

fn terminal_states(states: &[Value]) -> usize {
    states
        .iter()
        .filter(|s| s["state"] == "successful" || s["state"] == "failed")
        .count()
}

#[test]
fn a_good_change_applies_without_a_restart_and_a_bad_one_writes_nothing() {
    let device = Device::new();
    let agent = device.start();
    let pid = agent.pid();
    let extra = device.dir.path().join("extra-value");
    let content = format!(
        "sensors:\n  - {{ name: extra, file: {} }}\n",
        extra.display()
    );
    device.request(json!({ "id": "c1", "name": "50-remote.yaml", "content": content }));
    let states = device.follow("c1", Duration::from_secs(20));
    let last = states.last().cloned().unwrap_or_default();
    assert_eq!(last["state"], "successful", "{states:?}\n{}", agent.log());
    assert_eq!(last["result"]["reconnected"], false, "{last}");
    assert_eq!(
        steps(&states),
        ["accepted", "writing", "reloading", "successful"],
        "{states:?}"
    );
    assert_eq!(
        std::fs::read_to_string(device.conf_d("50-remote.yaml")).unwrap(),
        content
    );
    assert!(
        device.telemetry_has("extra", Duration::from_secs(5)),
        "the new sensor's value is not in telemetry"
    );
    assert_eq!(agent.pid(), pid);

    // Repeated: its last state, not run again.
    device.request(json!({ "id": "c1", "name": "50-remote.yaml", "content": "telemetry: {}\n" }));
    let again = device.follow("c1", Duration::from_secs(10));
    assert_eq!(again.last().unwrap()["duplicate"], true, "{again:?}");
    assert_eq!(
        std::fs::read_to_string(device.conf_d("50-remote.yaml")).unwrap(),
        content
    );

    // A change `check` refuses: the findings in the reason, nothing written.
    let bad = "alerts:\n  - { name: hot, sensor: nonexistent, above: 80 }\n";
    device.request(json!({ "id": "c2", "name": "50-remote-alerts.yaml", "content": bad }));
    let states = device.follow("c2", Duration::from_secs(10));
    let last = states.last().unwrap();
    assert_eq!(last["state"], "failed", "{states:?}");
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not pass check")
            && reason.contains("50-remote-alerts.yaml")
            && reason.contains("nonexistent"),
        "{reason}"
    );
    assert!(!device.conf_d("50-remote-alerts.yaml").exists());

    // Names outside the globs, or leaving conf.d: refused, nothing written anywhere.
    for (id, name) in [
        ("c3", "10-board.yaml"),
        ("c4", "../50-remote.yaml"),
        ("c5", "50-remote/../x.yaml"),
    ] {
        device.request(json!({ "id": id, "name": name, "content": "telemetry: {}\n" }));
        let states = device.follow(id, Duration::from_secs(10));
        let last = states.last().unwrap();
        assert_eq!(last["state"], "failed", "{name}: {states:?}");
        assert!(
            last["reason"]
                .as_str()
                .unwrap()
                .contains("not a drop-in name"),
            "{last}"
        );
    }
    let mut written: Vec<String> = std::fs::read_dir(device.dir.path().join("conf.d"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["50-remote.yaml"]);
    assert!(!device.dir.path().join("50-remote.yaml").exists());

    // The delete: the file goes, the sensor with it.
    device.request(json!({ "id": "c6", "name": "50-remote.yaml", "delete": true }));
    let states = device.follow("c6", Duration::from_secs(20));
    let last = states.last().unwrap();
    assert_eq!(last["state"], "successful", "{states:?}");
    assert_eq!(last["result"]["deleted"], true, "{last}");
    assert!(!device.conf_d("50-remote.yaml").exists());
}

/// A broker change to an address where nothing listens: written, reloaded, not confirmed within
/// `confirm_s`, put back, reloaded again, `failed` "rolled back: …", and online again.
#[test]
fn a_change_that_cannot_connect_is_rolled_back_within_confirm_s() {
    let device = Device::new();
    let agent = device.start();
    let dead = format!("mqtts://127.0.0.1:{}", free_port());
    let content = format!("broker:\n  urls: [\"{dead}\"]\n");
    let asked = Instant::now();
    device.request(json!({ "id": "b1", "name": "50-remote-broker.yaml", "content": content }));
    let states = device.follow("b1", Duration::from_secs(CONFIRM_S + 30));
    let took = asked.elapsed();
    let last = states.last().cloned().unwrap_or_default();
    assert_eq!(last["state"], "failed", "{states:?}\n{}", agent.log());
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("rolled back: not connected with the new config within 10 s"),
        "{reason}"
    );
    assert!(
        steps(&states).contains(&"confirming".to_owned()),
        "{states:?}"
    );
    assert!(
        took >= Duration::from_secs(CONFIRM_S) && took < Duration::from_secs(CONFIRM_S + 20),
        "{took:?}"
    );
    assert_eq!(terminal_states(&states), 1);
    assert!(
        !device.conf_d("50-remote-broker.yaml").exists(),
        "the change is still there"
    );
    assert!(
        online(&device.status, ID, Duration::from_secs(15)).is_some(),
        "not online again:\n{}",
        agent.log()
    );
}

/// kill -9 between the write and the confirmation: the agent that starts runs the change from
/// disk, cannot confirm it, and puts it back; one terminal state.
#[test]
fn kill_9_before_the_confirmation_ends_on_a_confirmed_config() {
    let device = Device::new();
    let mut agent = device.start();
    let dead = format!("mqtts://127.0.0.1:{}", free_port());
    device.request(json!({
        "id": "k1",
        "name": "50-remote-broker.yaml",
        "content": format!("broker:\n  urls: [\"{dead}\"]\n"),
    }));
    let before = device.seen.wait_for(Duration::from_secs(20), |m| {
        m.payload.contains("\"k1\"") && m.payload.contains("\"confirming\"")
    });
    assert!(before.is_some(), "never confirming:\n{}", agent.log());
    agent.signal(Signal::SIGKILL);
    agent.wait(Duration::from_secs(10));
    // Started again with the unconfirmed change on disk: it cannot connect.
    let agent = Agent::start_with(&device.dir, &device.pki, {
        let mut setup = Setup::new(ID, &device.broker);
        setup.top_extra = format!(
            "operations:\n  config_update: {{ names: [\"50-remote*.yaml\"], confirm_s: {CONFIRM_S} }}\n"
        );
        setup
    });
    let states = device.follow("k1", Duration::from_secs(CONFIRM_S + 30));
    let last = states.last().cloned().unwrap_or_default();
    assert_eq!(last["state"], "failed", "{states:?}\n{}", agent.log());
    assert!(
        last["reason"].as_str().unwrap().starts_with("rolled back:"),
        "{last}"
    );
    assert_eq!(terminal_states(&states), 1, "{states:?}");
    assert!(!device.conf_d("50-remote-broker.yaml").exists());
    assert!(
        online(&device.status, ID, Duration::from_secs(15)).is_some(),
        "not online again:\n{}",
        agent.log()
    );
    // Nothing more about it later.
    let later = device.seen.collect(Duration::from_secs(2));
    assert!(
        !later
            .iter()
            .any(|m| m.payload.contains("\"k1\"") && m.payload.contains("\"successful\"")),
        "{later:?}"
    );
}
