//! The operator's day: `status` on the board, the agent waiting for its certificates,
//! `check --connect`, drop-in configuration.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::broker::{Broker, BrokerPki, Subscriber};
use crate::daemon::{online, Agent, Setup};
use crate::proxy::{Mode, Proxy};
use crate::util::TestDir;

/// `fieldagent status --json` for `config`: its exit code and the object it printed.
fn status(config: &Path) -> (i32, Value) {
    let output =
        crate::util::fieldagent(&["--config", config.to_str().unwrap(), "status", "--json"]);
    let text = crate::util::stdout(&output);
    let value = serde_json::from_str(&text).unwrap_or_else(|err| {
        panic!(
            "status --json printed no JSON ({err}): {text}{}",
            crate::util::stderr(&output)
        )
    });
    (output.status.code().unwrap(), value)
}

/// Polls `status` until `wanted` holds, for at most `within`.
fn status_until(config: &Path, within: Duration, wanted: impl Fn(i32, &Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, value) = status(config);
        if wanted(code, &value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "status never got there: {code} {value}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_says_what_the_agent_does_offline_online_and_stopped() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    // Nothing answers behind the proxy yet: the agent starts offline, and the missing chip's
    // sensor_fault waits in the outbox.
    let proxy = Proxy::start(broker.port, Mode::Refuse);
    let mut setup = Setup::new("node-st", &broker);
    setup.urls = vec![proxy.url()];
    setup.top_extra = "alerts:\n  - { name: warm, sensor: cpu_temp, above: 60 }\n".to_owned();
    let mut agent = Agent::start_with(&dir, &pki, setup);
    let config = dir.path().join("node-st.yaml");
    // Two independent events: the alert queued, and the first connect refused.
    let offline = status_until(&config, Duration::from_secs(10), |code, s| {
        code == 0
            && s["queued"]["alerts"].as_u64() >= Some(1)
            && s["last_connect_error"].as_str().is_some()
    });
    assert_eq!(offline["running"], true, "{offline}");
    assert_eq!(offline["connected"], false, "{offline}");
    assert!(
        offline["last_connect_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{offline}"
    );
    assert_eq!(
        offline["raised"],
        serde_json::json!(["sensor_fault"]),
        "{offline}"
    );
    assert_eq!(
        offline["failing_sensors"],
        serde_json::json!(["gone"]),
        "{offline}"
    );
    assert_eq!(offline["outbox_durable"], true, "{offline}");
    let made = offline["oldest_queued_ts"]
        .as_u64()
        .expect("the alert's time");
    assert!(
        made <= offline["since_ts"].as_u64().unwrap() + 5_000,
        "{offline}"
    );
    let table = crate::util::stdout(&crate::util::fieldagent(&[
        "--config",
        config.to_str().unwrap(),
        "status",
    ]));
    for needle in [
        "running, pid",
        "offline since",
        "alerts 1",
        "sensor_fault",
        "gone",
    ] {
        assert!(table.contains(needle), "{needle} in:\n{table}");
    }

    // The broker is back: connected, and the alert left the queue.
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-st/status");
    proxy.set(Mode::Forward);
    online(&subscriber, "node-st", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("agent log:\n{}", agent.log()));
    let up = status_until(&config, Duration::from_secs(10), |_, s| {
        s["connected"] == true && s["queued"]["alerts"] == 0
    });
    assert!(up["broker"].as_str().unwrap().contains("127.0.0.1"), "{up}");

    // An alert raised now is in `status` within a pass or two, not at the next health tick.
    dir.write("sys/class/thermal/thermal_zone1/temp", "85000\n");
    let warm = status_until(&config, Duration::from_secs(5), |_, s| {
        s["raised"]
            .as_array()
            .is_some_and(|r| r.iter().any(|a| a == "warm"))
    });
    assert_eq!(warm["connected"], true, "{warm}");

    // Stopped: exit 3, says so, and still shows what is on disk.
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    let (code, stopped) = status(&config);
    assert_eq!(code, 3, "{stopped}");
    assert_eq!(stopped["running"], false, "{stopped}");
    assert!(
        stopped["problem"].as_str().unwrap().contains("is gone"),
        "{stopped}"
    );
}

#[test]
fn status_without_an_agent_ever_run_exits_3_and_says_why() {
    let dir = TestDir::new();
    let config = dir.config(&format!(
        "broker: {{ urls: [\"mqtts://127.0.0.1:8883\"], tls: {{ ca_file: /nonexistent/ca.pem }} }}\nstate_dir: {}/state\n",
        dir.path().display()
    ));
    let (code, value) = status(&config);
    assert_eq!(code, 3);
    assert!(
        value["problem"].as_str().unwrap().contains("has not run"),
        "{value}"
    );
}

/// Installed before provisioning: the agent neither fails nor restarts in a loop; it says what
/// it waits for (log, `status`), and starts by itself once the certificate files appear.
#[test]
fn before_provisioning_the_agent_waits_for_its_certificates_then_starts() {
    use std::process::{Command, Stdio};
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    crate::util::fake_sysfs(&dir);
    let etc = dir.path().join("etc");
    // As shipped: a placeholder broker; provisioning writes a drop-in naming the real one.
    let config = dir.config(&format!(
        "broker:\n  urls: [\"mqtts://127.0.0.1:1\"]\n  reconnect: {{ initial_s: 0.2, max_s: 1 }}\n  tls: {{ ca_file: {etc}/ca.pem, cert_file: {etc}/device.crt, key_file: {etc}/device.key }}\nsysfs_root: @DIR@/sys\nstate_dir: @DIR@/state\ntelemetry: {{ interval_s: 0.5 }}\nsensors:\n  - {{ name: cpu_temp, thermal_zone: {{ type: cpu-thermal }} }}\n",
        etc = etc.display()
    ));
    // An empty CA file (created, not written yet, or emptied by a power cut) is not there yet.
    dir.write("etc/ca.pem", "");
    let log = dir.path().join("agent.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldagent"))
        .args(["--config", config.to_str().unwrap(), "run"])
        .env_remove("FIELDAGENT_CONFIG")
        .env_remove("OPENSSL_CONF")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let waiting = status_until(&config, Duration::from_secs(10), |code, s| {
        code == 0 && s["waiting_for"].is_string()
    });
    assert_eq!(
        waiting["waiting_for"],
        format!("{}/ca.pem", etc.display()),
        "{waiting}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(child.try_wait().unwrap(), None, "the agent exited");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("Not provisioned yet"), "{said}");

    // Provisioning: the drop-in, then the key, the certificate and the CA, as an installer would.
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-prov/status");
    dir.write(
        "conf.d/10-provisioning.yaml",
        format!("broker:\n  urls: [\"{}\"]\n", broker.url()),
    );
    let (cert, key) = pki.issue("node-prov", "node-prov", false);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(&key, etc.join("device.key")).unwrap();
    std::fs::copy(&cert, etc.join("device.crt")).unwrap();
    std::fs::copy(&pki.ca, etc.join("ca.pem")).unwrap();
    let started = online(&subscriber, "node-prov", Duration::from_secs(15));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(started.is_some(), "not online after provisioning:\n{said}");
    assert!(said.contains("Provisioned"), "{said}");
    let up = status_until(&config, Duration::from_secs(10), |_, s| {
        s["connected"] == true
    });
    assert!(up.get("waiting_for").is_none(), "{up}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// A stop signal while waiting ends the agent at once, exit 0.
#[test]
fn a_stop_while_waiting_for_provisioning_exits_0() {
    use std::process::{Command, Stdio};
    let dir = TestDir::new();
    crate::util::fake_sysfs(&dir);
    let config = dir.config(
        "broker: { urls: [\"mqtts://127.0.0.1:1\"], tls: { ca_file: @DIR@/none/ca.pem } }\nsysfs_root: @DIR@/sys\nstate_dir: @DIR@/state\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldagent"))
        .args(["--config", config.to_str().unwrap(), "run"])
        .env_remove("FIELDAGENT_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    status_until(&config, Duration::from_secs(10), |code, _| code == 0);
    let asked = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(asked.elapsed() < Duration::from_secs(2));
}

/// A config for device `id` of `pki` against `url`, with `extra` lines in `broker:`.
fn device_config(
    dir: &TestDir,
    pki: &BrokerPki,
    id: &str,
    url: &str,
    ca: &Path,
    extra: &str,
) -> std::path::PathBuf {
    crate::util::fake_sysfs(dir);
    let (cert, key) = pki.issue(id, id, false);
    dir.write(
        &format!("{id}.yaml"),
        format!(
            "broker:\n  urls: [\"{url}\"]\n  connect_timeout_s: 3\n  tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\n{extra}sysfs_root: {base}/sys\nstate_dir: {base}/state-{id}\nsensors:\n  - {{ name: cpu_temp, thermal_zone: {{ type: cpu-thermal }} }}\n",
            ca.display(),
            cert.display(),
            key.display(),
            base = dir.path().display()
        ),
    )
}

fn check_connect(config: &Path) -> (i32, String) {
    let output =
        crate::util::fieldagent(&["--config", config.to_str().unwrap(), "check", "--connect"]);
    (
        output.status.code().unwrap(),
        format!(
            "{}{}",
            crate::util::stdout(&output),
            crate::util::stderr(&output)
        ),
    )
}

#[test]
fn check_connect_connects_subscribes_and_publishes_each_step_timed() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let health = Subscriber::start(&broker, &pki, "devices/node-cc/health");
    let config = device_config(&dir, &pki, "node-cc", &broker.url(), &pki.ca, "");
    let (code, said) = check_connect(&config);
    assert_eq!(code, 0, "{said}");
    for needle in [
        "connect: ok in ",
        "as node-cc",
        "subscribe devices/node-cc/commands/+: ok in ",
        "publish devices/node-cc/health (QoS 1): confirmed in ",
        "check --connect: ok",
    ] {
        assert!(said.contains(needle), "{needle} in:\n{said}");
    }
    let arrived = health
        .wait_for(Duration::from_secs(5), |_| true)
        .expect("the health message arrived");
    assert!(
        arrived.payload.contains("\"check_connect\":true"),
        "{arrived:?}"
    );
    // No online status and no will: the retained roll call is untouched.
    let status = Subscriber::start(&broker, &pki, "devices/node-cc/status");
    assert!(status
        .wait_for(Duration::from_millis(500), |_| true)
        .is_none());
}

#[test]
fn check_connect_explains_a_wrong_ca_and_exits_1() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let other_dir = TestDir::new();
    let other = BrokerPki::new(&other_dir);
    let config = device_config(&dir, &pki, "node-ca", &broker.url(), &other.ca, "");
    let (code, said) = check_connect(&config);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("connect: FAILED after "), "{said}");
    assert!(
        said.contains("diagnosis: ") && said.contains("certificate"),
        "the daemon's diagnosis: {said}"
    );
    assert!(said.contains("check --connect: FAILED"), "{said}");
}

#[test]
fn check_connect_reports_a_publish_the_acl_refuses_over_mqtt_5() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let acl = dir.write(
        "acl",
        "pattern read devices/%u/commands/+\npattern write devices/%u/status\n",
    );
    let broker = Broker::start_with(
        &pki,
        crate::broker::BrokerOptions {
            extra: &format!("acl_file {}\n", acl.display()),
            ..Default::default()
        },
    );
    let config = device_config(
        &dir,
        &pki,
        "node-acl",
        &broker.url(),
        &pki.ca,
        "  protocol: \"5\"\n",
    );
    let (code, said) = check_connect(&config);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("subscribe devices/node-acl/commands/+: ok"),
        "{said}"
    );
    assert!(
        said.contains("publish devices/node-acl/health (QoS 1): REFUSED by the broker"),
        "{said}"
    );
}

#[test]
fn check_connect_answers_commands_kept_for_the_device_and_refuses_while_the_agent_runs() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let responses = Subscriber::start(&broker, &pki, "devices/node-q/responses");
    // The agent ran once (its persistent session and subscription stand), then stopped.
    let mut agent = Agent::start_with(&dir, &pki, Setup::new("node-q", &broker));
    let status_sub = Subscriber::start(&broker, &pki, "devices/node-q/status");
    online(&status_sub, "node-q", Duration::from_secs(10)).expect("online");
    let config = dir.path().join("node-q.yaml");
    let (code, said) = check_connect(&config);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("the agent runs (pid"), "{said}");
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    crate::broker::publish(
        &broker,
        &pki,
        "devices/node-q/commands/ping",
        r#"{"id":"kept-1"}"#,
    );
    let (code, said) = check_connect(&config);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("commands: 1 kept by the broker"), "{said}");
    let answer = responses
        .wait_for(Duration::from_secs(5), |m| m.payload.contains("kept-1"))
        .expect("the kept command is answered");
    assert!(answer.payload.contains(r#""ok":false"#), "{answer:?}");
    assert!(answer.payload.contains("not executed"), "{answer:?}");
}

/// Drop-ins: `conf.d/*.yaml` beside the config, in name order, merged over it; a finding in a
/// drop-in names that file, its own key path, line and column.
#[test]
fn drop_ins_merge_over_the_config_and_findings_name_their_file() {
    let dir = TestDir::new();
    crate::util::fake_sysfs(&dir);
    dir.write("run/tank", "42\n");
    dir.write("run/flow", "7\n");
    let config = dir.config(
        "broker: { urls: [\"mqtts://broker.example.com:8883\"], keepalive_s: 60, tls: { ca_file: /etc/ca.pem } }\n\
         sysfs_root: \"@DIR@/sys\"\n\
         sensors:\n  - { name: cpu_temp, thermal_zone: { type: cpu-thermal } }\n  - { name: tank, file: /nonexistent/tank }\n",
    );
    dir.write(
        "conf.d/10-provisioning.yaml",
        "broker:\n  urls: [\"mqtts://127.0.0.1:8883\"]\n",
    );
    dir.write(
        "conf.d/20-sensors.yaml",
        format!(
            "sensors:\n  - {{ name: tank, file: {0}/run/tank }}\n  - {{ name: flow, file: {0}/run/flow }}\n",
            dir.path().display()
        ),
    );
    dir.write("conf.d/README", "not yaml: [");
    dir.write("conf.d/.hidden.yaml", "not yaml: [");
    let output = crate::util::fieldagent(&["--config", config.to_str().unwrap(), "read", "--json"]);
    let read: Value = serde_json::from_str(&crate::util::stdout(&output))
        .unwrap_or_else(|_| panic!("{}", crate::util::stderr(&output)));
    assert_eq!(read["values"]["tank"], 42.0, "{read}");
    assert_eq!(read["values"]["flow"], 7.0, "{read}");
    assert!(read["values"]["cpu_temp"].is_number(), "{read}");

    // A mistake in a drop-in: its file, its key path (not the merged list's), line and column.
    let broken = dir.write(
        "conf.d/30-broken.yaml",
        "broker:\n  keepalive_s: \"soon\"\nsensors:\n  - { name: extra, i2c: { bus: 1, address: 0x90, chip: tmp102 } }\n",
    );
    let output = crate::util::fieldagent(&["--config", config.to_str().unwrap(), "check"]);
    let said = crate::util::stdout(&output);
    assert_eq!(output.status.code(), Some(78), "{said}");
    assert!(
        said.contains(&format!(
            "{}:2:3: broker.keepalive_s: expected",
            broken.display()
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!("{}:4:", broken.display()))
            && said.contains("sensors[0].i2c.address: expected a 7-bit address"),
        "{said}"
    );
    // The main file's own entries still name the main file, with its own index.
    assert!(
        said.contains(&format!("{}:4:5: sensors[0]: cpu_temp", config.display())),
        "{said}"
    );
    assert!(
        said.contains("20-sensors.yaml:2:5: sensors[0]: tank = 42"),
        "the replaced entry is the drop-in's: {said}"
    );
}

/// SIGHUP reads the drop-ins too: one added applies without a reconnect, a broken one is
/// refused naming its file, and the running config stays.
#[test]
fn a_reload_reads_the_drop_ins() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-d/#");
    let agent = Agent::start_with(&dir, &pki, Setup::new("node-d", &broker));
    online(&subscriber, "node-d", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("not online; log:\n{}", agent.log()));
    dir.write(
        "conf.d/50-alerts.yaml",
        "alerts:\n  - { name: warm, sensor: cpu_temp, above: 40 }\n",
    );
    agent.signal(Signal::SIGHUP);
    subscriber
        .wait_for(Duration::from_secs(10), |m| {
            m.topic.ends_with("/alerts") && m.payload.contains(r#""alert":"warm""#)
        })
        .unwrap_or_else(|| panic!("no alert after the reload; log:\n{}", agent.log()));
    assert_eq!(broker.sessions("node-d"), 1, "an alert change reconnected");
    let broken = dir.write("conf.d/60-broken.yaml", "telemetry: { interval_s: -1 }\n");
    agent.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let log = agent.log();
    assert!(log.contains("Reload refused"), "{log}");
    assert!(log.contains(&broken.display().to_string()), "{log}");
    subscriber
        .wait_for(Duration::from_secs(5), |m| m.topic.ends_with("/telemetry"))
        .expect("telemetry after a refused reload");
}
