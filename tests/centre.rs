//! The daemon's centre under the faults that broke the old one (issue 18): each test is one of
//! its points, against a real mosquitto with mutual TLS. A connect that hangs comes from the
//! test proxy in blackhole mode (TCP accepted, nothing ever answered); a read or a write that
//! blocks comes from a FIFO nobody opens at the other end.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::broker::{publish, Broker, BrokerPki, Subscriber};
use crate::daemon::{Agent, Setup};
use crate::outbox::set_level;
use crate::proxy::{Mode, Proxy};
use crate::util::{fake_sysfs, TestDir};

/// A setup with a file sensor `level` (starting at 0) and the rule `hot: level above 50`.
fn with_level(dir: &TestDir, id: &str, broker: &Broker) -> Setup {
    let level = dir.write("level", "0\n");
    let mut setup = Setup::new(id, broker);
    setup.sensors_extra = format!("  - {{ name: level, file: {} }}\n", level.display());
    setup.top_extra = "alerts:\n  - { name: hot, sensor: level, above: 50 }\n".to_owned();
    setup.telemetry = "{ interval_s: 0.1 }".to_owned();
    setup
}

/// The fake sysfs tree with a hwmon chip `stuckchip` whose `temp1_input` is a FIFO nobody
/// writes: reading it blocks, as a hung bus or NFS path does.
fn stuck_hwmon(dir: &TestDir) {
    let sys = fake_sysfs(dir);
    dir.write("sys/class/hwmon/hwmon9/name", "stuckchip\n");
    mkfifo(&sys.join("class/hwmon/hwmon9/temp1_input"));
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// Issue 18, point 1: the sampler handed an alert over, the event loop was stuck in a connect,
/// and a stop dropped it while `alerts.json` already said raised: lost for good.
#[test]
fn an_alert_made_while_a_connect_hangs_survives_a_stop() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let proxy = Proxy::start(broker.port, Mode::Blackhole);
    let mut setup = with_level(&dir, "node-c1", &broker);
    setup.urls = vec![proxy.url()];
    // Each attempt hangs for its whole timeout; the backoff between them is short, so the old
    // loop was inside a connect almost all the time.
    setup.reconnect = "{ initial_s: 0.1, max_s: 0.1, jitter: 0 }".to_owned();
    let mut agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Starting.", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    set_level(&dir, 90);
    agent.expect_log("Alert. alert=hot", Duration::from_secs(10));
    agent.signal(Signal::SIGTERM);
    assert_eq!(
        agent.wait(Duration::from_secs(8)),
        Some(0),
        "{}",
        agent.report()
    );

    // Against the real broker now, with the same state_dir: the raise arrives.
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-c1/alerts");
    let agent = Agent::start_with(&dir, &pki, with_level_at(&dir, "node-c1", &broker, 90));
    let raised = subscriber.wait_for(Duration::from_secs(20), |m| {
        m.payload.contains(r#""alert":"hot""#) && m.payload.contains(r#""state":"raised""#)
    });
    assert!(
        raised.is_some(),
        "the raise never arrived:\n{}",
        agent.report()
    );
    assert_eq!(
        agent.log().matches("Alert. alert=hot").count(),
        0,
        "not made again: it was on disk\n{}",
        agent.log()
    );
}

/// As `with_level`, with the level already at `value`.
fn with_level_at(dir: &TestDir, id: &str, broker: &Broker, value: u32) -> Setup {
    let setup = with_level(dir, id, broker);
    set_level(dir, value);
    setup
}

/// Issue 18, point 2: SIGTERM took as long as the pending connects (13.5 s with one URL; with
/// three and the default timeout, past systemd's stop timeout).
#[test]
fn a_stop_takes_at_most_five_seconds_while_connects_hang() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let proxy = Proxy::start(broker.port, Mode::Blackhole);
    let mut setup = Setup::new("node-c2", &broker);
    setup.urls = vec![proxy.url(), proxy.url(), proxy.url()];
    setup.connect_timeout_s = 10;
    let mut agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Starting.", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let signalled = Instant::now();
    agent.signal(Signal::SIGTERM);
    let code = agent.wait(Duration::from_secs(30));
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "{}", agent.report());
    assert!(
        took < Duration::from_millis(5500),
        "the stop took {took:?}\n{}",
        agent.log()
    );
    assert!(agent.log().contains("Stopped."), "{}", agent.log());
}

/// Issue 18, point 3: commands ran inline in the loop; one slow command stalled everything. A
/// `read` of a sensor that blocks takes its deadline (5 s); a ping sent meanwhile is answered
/// at once and telemetry goes on. (A command that overruns its own 10 s deadline is answered
/// "timed out": `daemon::commands` tests that with a job that blocks; an actuator file can no
/// longer block a write, which is non-blocking.)
#[test]
fn a_slow_command_stops_only_itself() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    stuck_hwmon(&dir);
    let mut setup = Setup::new("node-c3", &broker);
    setup.sensors_extra =
        "  - { name: stuck, hwmon: { chip: stuckchip, input: temp1 } }\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    let responses = Subscriber::start(&broker, &pki, "devices/node-c3/responses");
    let telemetry = Subscriber::start(&broker, &pki, "devices/node-c3/telemetry");
    agent.expect_log("Connected.", Duration::from_secs(30));
    // The sampler has met the stuck sensor too, and goes on without it.
    agent.expect_log("Sensor read stuck", Duration::from_secs(20));
    publish(
        &broker,
        &pki,
        "devices/node-c3/commands/read",
        r#"{"id":"r1"}"#,
    );
    let sent = Instant::now();
    publish(
        &broker,
        &pki,
        "devices/node-c3/commands/ping",
        r#"{"id":"p1"}"#,
    );
    // Both are answered, in whichever order: the read does not wait for the stuck sensor
    // again (the sampler knows it is stuck, issue 31), and the ping never waits for the read.
    let read = std::cell::RefCell::new(None);
    let pong = responses.wait_for(Duration::from_secs(5), |m| {
        if m.payload.contains(r#""id":"r1""#) {
            *read.borrow_mut() = Some(m.clone());
        }
        m.payload.contains(r#""id":"p1""#)
    });
    assert!(
        pong.is_some(),
        "the ping waited for the slow read:\n{}",
        agent.report()
    );
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "{:?}",
        sent.elapsed()
    );
    // Telemetry goes on meanwhile.
    let during = telemetry.collect(Duration::from_millis(1000)).len();
    assert!(during >= 3, "telemetry stalled: {during}");
    // The read is answered too, with the stuck sensor as an error and the others read.
    let read = read.into_inner().or_else(|| {
        responses.wait_for(Duration::from_secs(15), |m| {
            m.payload.contains(r#""id":"r1""#)
        })
    });
    let read = read.unwrap_or_else(|| panic!("no answer to read:\n{}", agent.report()));
    assert!(
        read.payload.contains("no answer within 5 s"),
        "{}",
        read.payload
    );
    assert!(
        read.payload.contains(r#""cpu_temp":48.25"#),
        "{}",
        read.payload
    );
}

/// Issue 18, point 4: 1 000 QoS 1 commands in a burst; 910 were acknowledged by Paho and then
/// dropped ("Command queue full"). Every one is answered now: executed or busy.
#[test]
fn a_thousand_commands_at_once_are_all_answered() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let mut setup = Setup::new("node-c4", &broker);
    setup.broker_extra = "  drain_rate: 2000\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    let responses = Subscriber::start_qos(&broker, &pki, "devices/node-c4/responses", 1);
    agent.expect_log("Connected.", Duration::from_secs(30));
    let mut sender = pki
        .client("mosquitto_pub", &broker, "operator")
        .args(["-t", "devices/node-c4/commands/ping", "-q", "1", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let stdin = sender.stdin.as_mut().unwrap();
        for i in 0..1000 {
            writeln!(stdin, r#"{{"id":"b{i}"}}"#).unwrap();
        }
    }
    drop(sender.stdin.take());
    assert!(sender.wait().unwrap().success());
    let mut answered = BTreeSet::new();
    let mut busy = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.len() < 1000 && Instant::now() < deadline {
        for message in responses.collect(Duration::from_millis(500)) {
            let json: serde_json::Value = serde_json::from_str(&message.payload).unwrap();
            let id = json["id"].as_str().unwrap_or_default().to_owned();
            if answered.insert(id) && json["error"] == "busy" {
                busy += 1;
            }
        }
    }
    assert_eq!(answered.len(), 1000, "{}", agent.report());
    assert!(
        busy > 0,
        "a burst beyond broker.command_rate is answered busy"
    );
    assert!(!agent.log().contains("lost"), "{}", agent.log());
}

/// Issue 18, point 5: a sensor whose read blocks (a hwmon input that is a FIFO, standing for a
/// hung NFS or FUSE path) stopped all telemetry, and `read` hung for ever. A `file:` sensor on a
/// FIFO is refused at once.
#[test]
fn a_blocking_sensor_stops_only_itself() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    stuck_hwmon(&dir);
    let pipe = dir.path().join("bridge-pipe");
    mkfifo(&pipe);
    let mut setup = Setup::new("node-c5", &broker);
    setup.sensors_extra = format!(
        "  - {{ name: stuck, hwmon: {{ chip: stuckchip, input: temp1 }} }}\n  - {{ name: piped, file: {} }}\n",
        pipe.display()
    );
    let agent = Agent::start_with(&dir, &pki, setup);
    let telemetry = Subscriber::start(&broker, &pki, "devices/node-c5/telemetry");
    let isolated = telemetry.wait_for(Duration::from_secs(20), |m| {
        m.payload.contains(r#""cpu_temp":48.25"#) && m.payload.contains("no answer within 5 s")
    });
    let isolated = isolated.unwrap_or_else(|| panic!("no telemetry:\n{}", agent.report()));
    assert!(
        isolated.payload.contains("not a regular file but a FIFO"),
        "{}",
        isolated.payload
    );
    let later = telemetry.collect(Duration::from_millis(1500));
    assert!(later.len() >= 3, "telemetry goes on: {later:?}");
    agent.expect_log("Sensor read stuck", Duration::from_secs(1));

    // `read` is bounded by the same deadline.
    let config = dir.path().join("node-c5.yaml");
    let started = Instant::now();
    let mut read = Command::new(env!("CARGO_BIN_EXE_fieldagent"))
        .args(["--config", config.to_str().unwrap(), "read", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut finished = None;
    while started.elapsed() < Duration::from_secs(15) {
        if let Some(status) = read.try_wait().unwrap() {
            finished = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if finished.is_none() {
        let _ = read.kill();
        let _ = read.wait();
        panic!("read did not end within 15 s");
    }
    let output = read.wait_with_output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["values"]["cpu_temp"], 48.25, "{json}");
    assert!(
        json["errors"]["stuck"]
            .as_str()
            .unwrap()
            .contains("no answer within 5 s"),
        "{json}"
    );
}

/// Issue 18, point 6: after a short disk-full the outbox stayed memory-only until a restart, so
/// an alert made after the disk recovered was lost at the next restart. The store tries the
/// disk again and writes what it holds.
#[test]
fn the_outbox_goes_back_to_disk_when_the_disk_has_room() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a small tmpfs as state_dir needs root");
        return;
    }
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let proxy = Proxy::start(broker.port, Mode::Refuse);
    let mut setup = with_level(&dir, "node-c6", &broker);
    // Forty events per change: more than the slack of the outbox file's last page, which a
    // full tmpfs still lets an append fill.
    setup.top_extra = (1..=40)
        .map(|i| format!("  - {{ name: hot{i}, sensor: level, above: {i} }}\n"))
        .fold("alerts:\n".to_owned(), |all, rule| all + &rule);
    setup.urls = vec![proxy.url()];
    setup.state_tmpfs_kib = Some(64);
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Cannot connect.", Duration::from_secs(30));
    // The agent's state_dir as the agent sees it, inside its mount namespace.
    let state = format!(
        "/proc/{}/root{}/state-node-c6",
        agent.pid(),
        dir.path().display()
    );
    let filler = format!("{state}/filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    drop(file);
    set_level(&dir, 90);
    agent.expect_log("Alert kept in memory only", Duration::from_secs(10));
    agent.expect_log("Outbox: cannot write to state_dir", Duration::from_secs(1));
    std::fs::remove_file(&filler).unwrap();
    agent.expect_log("state_dir takes writes again", Duration::from_secs(25));
    set_level(&dir, 0);
    agent.expect_log(
        "alert=hot40 sensor=level state=Cleared",
        Duration::from_secs(10),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut outbox = String::new();
    while Instant::now() < deadline {
        let bytes = std::fs::read(format!("{state}/outbox.log")).unwrap_or_default();
        outbox = String::from_utf8_lossy(&bytes).into_owned();
        if outbox.matches(r#""state":"cleared""#).count() == 40 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        outbox.contains(r#""state":"raised""#) && outbox.contains(r#""state":"cleared""#),
        "both events are on disk: {outbox:?}\n{}",
        agent.log()
    );
    let saved = std::fs::read_to_string(format!("{state}/alerts.json")).unwrap();
    assert!(!saved.contains(r#""hot40""#), "saved as cleared: {saved}");
    assert_eq!(
        outbox.matches(r#""state":"cleared""#).count(),
        40,
        "{outbox:?}"
    );
}

/// Issue 20: over MQTT 5 a PUBACK with a reason code of 0x80 or above (the broker's ACL refused
/// the message) counted as delivered. It is not: the refusal is logged once per topic, an alert
/// refused this way is kept for the next connection (not sent again and again on this one), and
/// anything else is dropped and counted.
#[test]
fn a_publish_the_broker_refused_is_not_delivered() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let acl = dir.write(
        "broker/acl",
        "user node-acl\n\
         topic write devices/node-acl/status\n\
         topic write devices/node-acl/telemetry\n\
         topic write devices/node-acl/health\n\
         topic write devices/node-acl/responses\n\
         topic read devices/node-acl/commands/+\n\
         user observer\n\
         topic read #\n",
    );
    let broker = Broker::start_with(
        &pki,
        crate::broker::BrokerOptions {
            extra: &format!("acl_file {}", acl.display()),
            ..Default::default()
        },
    );
    let mut setup = Setup::new("node-acl", &broker);
    setup.broker_extra = "  protocol: \"5\"\n".to_owned();
    setup.top_extra =
        "alerts:\n  - { name: warm, sensor: cpu_temp, above: 40 }\n  - { name: hot, sensor: cpu_temp, above: 45 }\n"
            .to_owned();
    let mut agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Connected.", Duration::from_secs(30));
    agent.expect_log("The broker refused a message", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    assert_eq!(
        log.matches("The broker refused a message").count(),
        1,
        "once per topic:\n{log}"
    );
    assert!(
        log.contains("devices/node-acl/alerts") && log.contains("kept"),
        "{log}"
    );
    // Not sent again and again: each alert was refused once on this connection.
    let denied = broker.log().matches("Denied PUBLISH from node-acl").count();
    assert!(denied <= 4, "{denied} refused publishes:\n{}", broker.log());
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    let stopped = agent
        .log()
        .lines()
        .find(|l| l.contains("Stopped."))
        .unwrap_or_default()
        .to_owned();
    assert!(
        stopped.contains("queued=2") || stopped.contains("queued=3"),
        "the refused alerts are kept: {stopped}"
    );
}
