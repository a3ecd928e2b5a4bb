//! Sparkplug B edge node mode against a real mosquitto, every payload decoded (and every NCMD
//! encoded) by Eclipse Tahu's reference codec, the npm package `sparkplug-payload` driven by
//! `tests/sparkplug/tahu.js` (installed by `npm ci` in `tests/sparkplug`, which scripts/test runs).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::broker::{Broker, BrokerOptions, BrokerPki, Endpoint, Received, Subscriber};
use crate::daemon::{Agent, Setup};
use crate::util::TestDir;

fn tahu(mode: &str, input: &[u8]) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sparkplug");
    assert!(
        dir.join("node_modules/sparkplug-payload").exists(),
        "Eclipse Tahu's sparkplug-payload is not installed: run `npm ci` in {} (scripts/test does)",
        dir.display()
    );
    let mut child = Command::new("node")
        .arg(dir.join("tahu.js"))
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (Debian: nodejs) runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "tahu.js {mode} failed");
    output.stdout
}

/// One message as Tahu decoded it.
#[derive(Debug, Clone)]
struct Decoded {
    topic: String,
    payload: Value,
}

impl Decoded {
    fn metrics(&self) -> &Vec<Value> {
        self.payload["metrics"].as_array().expect("metrics")
    }

    fn metric(&self, name: &str) -> &Value {
        self.metrics()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no metric {name} in {}", self.payload))
    }

    fn by_alias(&self, alias: &Value) -> Option<&Value> {
        self.metrics().iter().find(|m| &m["alias"] == alias)
    }

    fn seq(&self) -> u64 {
        self.payload["seq"].as_u64().expect("seq")
    }

    fn bd_seq(&self) -> i64 {
        self.metric("bdSeq")["value"].as_i64().expect("bdSeq value")
    }
}

fn decode_all(messages: &[Received]) -> Vec<Decoded> {
    let input: String = messages
        .iter()
        .map(|m| format!("{} {}\n", m.topic, m.payload))
        .collect();
    let output = String::from_utf8(tahu("decode", input.as_bytes())).unwrap();
    output
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            assert!(
                value["payload"].get("error").is_none(),
                "Tahu cannot decode: {value}"
            );
            Decoded {
                topic: value["topic"].as_str().unwrap().to_owned(),
                payload: value["payload"].clone(),
            }
        })
        .collect()
}

/// The next message of `kind`, decoded.
fn next(sub: &Subscriber, kind: &str, within: Duration) -> Decoded {
    let wanted = format!("/{kind}/");
    let message = sub
        .wait_for(within, |m| m.topic.contains(&wanted))
        .unwrap_or_else(|| panic!("no {kind} within {within:?}"));
    decode_all(&[message]).remove(0)
}

/// Publishes `payload` (Tahu's form) encoded by Tahu, as the SCADA host would.
fn send(broker: &Broker, pki: &BrokerPki, dir: &TestDir, topic: &str, payload: Value) {
    send_as(broker, pki, dir, topic, payload, "operator");
}

fn send_as(
    broker: impl Into<Endpoint>,
    pki: &BrokerPki,
    dir: &TestDir,
    topic: &str,
    payload: Value,
    cn: &str,
) {
    let bytes = tahu("encode", payload.to_string().as_bytes());
    let file = dir.write("ncmd.bin", bytes);
    let status = pki
        .client("mosquitto_pub", broker, cn)
        .args(["-t", topic, "-q", "1", "-f", file.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn retain_state(broker: &Broker, pki: &BrokerPki, online: bool, timestamp: u64) {
    let payload = json!({ "online": online, "timestamp": timestamp }).to_string();
    let status = pki
        .client("mosquitto_pub", broker, "operator")
        .args([
            "-t",
            "spBv1.0/STATE/scada-1",
            "-q",
            "1",
            "-r",
            "-m",
            &payload,
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

/// An agent in Sparkplug mode with an alert rule and a fan actuator.
fn setup(dir: &TestDir, id: &str, broker: &Broker, primary_host: bool) -> (Setup, PathBuf) {
    let fan = dir.write(&format!("fan-{id}"), "0\n");
    let mut setup = Setup::new(id, broker);
    setup.top_extra = format!(
        "alerts:\n  - {{ name: overtemp, sensor: cpu_temp, above: 80, clear_below: 75 }}\n\
         actuators:\n  - {{ name: fan, file: \"{}\", values: [\"0\", \"1\"] }}\n\
         sparkplug:\n  group_id: plant1\n{}",
        fan.display(),
        if primary_host {
            "  primary_host_id: scada-1\n"
        } else {
            ""
        }
    );
    (setup, fan)
}

/// A new temperature, written over the old one in one write without truncating first (as sysfs
/// regenerates an attribute): a pass every 0.2 s must never read an empty file, which is a
/// sensor error and a null in the history. The thermal sensor keeps the file open, so it is
/// rewritten in place, not replaced.
fn temperature(dir: &TestDir, millidegrees: u32) {
    use std::os::unix::fs::FileExt;
    let zone = dir.path().join("sys/class/thermal/thermal_zone1");
    std::fs::create_dir_all(&zone).unwrap();
    let path = zone.join("temp");
    let text = format!("{millidegrees}\n");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    file.write_all_at(text.as_bytes(), 0).unwrap();
    file.set_len(text.len() as u64).unwrap();
}

#[test]
fn birth_data_by_exception_and_death_decoded_by_tahu() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/#");
    let (setup, _) = setup(&dir, "sp-node-1", &broker, false);
    let mut agent = Agent::start_with(&dir, &pki, setup);

    let birth = next(&sub, "NBIRTH", Duration::from_secs(10));
    assert_eq!(birth.topic, "spBv1.0/plant1/NBIRTH/sp-node-1");
    assert_eq!(birth.seq(), 0);
    assert_eq!(birth.metric("bdSeq")["type"], "Int64");
    assert_eq!(birth.bd_seq(), 0, "a fresh state_dir starts at bdSeq 0");
    // clean_session is false in the config (its default): Sparkplug asks for a clean session.
    assert!(
        broker.log().contains(" as sp-node-1 (p2, c1,"),
        "MQTT 3.1.1 with Clean Session: {}",
        broker.log()
    );
    // tck-id-topics-nbirth-timestamp, tck-id-payloads-metric-datatype-req,
    // tck-id-payloads-alias-birth-requirement, tck-id-operational-behavior-data-commands-rebirth-name-aliases
    for metric in birth.metrics() {
        assert!(metric["timestamp"].as_u64().is_some(), "{metric}");
        assert!(metric["type"].is_string(), "{metric}");
        match metric["name"].as_str() {
            Some("bdSeq") => {}
            Some("Node Control/Rebirth") => assert!(metric.get("alias").is_none(), "{metric}"),
            _ => assert!(metric["alias"].as_u64().is_some(), "{metric}"),
        }
    }
    let cpu = birth.metric("Sensors/cpu_temp");
    assert_eq!(
        (&cpu["type"], &cpu["value"]),
        (&json!("Double"), &json!(48.25))
    );
    assert_eq!(birth.metric("Sensors/gone")["value"], Value::Null);
    assert_eq!(birth.metric("Node Control/Rebirth")["type"], "Boolean");
    assert_eq!(birth.metric("Alerts/overtemp")["value"], false);
    assert_eq!(birth.metric("Actuators/fan")["value"], "0");
    assert!(birth.metric("Properties/Firmware")["value"]
        .as_str()
        .unwrap()
        .starts_with("fieldagent "));
    // What plain mode's health topic says, as metrics.
    let rss = birth.metric("Node Info/RSS Bytes");
    assert_eq!(rss["type"], "UInt64");
    assert!(rss["value"].as_u64().unwrap() > 1_000_000, "{rss}");
    assert_eq!(birth.metric("Node Info/Messages Sent")["value"], 0);
    assert_eq!(birth.metric("Node Info/Last Connect Error")["value"], "");

    // A change goes out by alias only.
    temperature(&dir, 52_000);
    let data = next(&sub, "NDATA", Duration::from_secs(5));
    assert_eq!(data.seq(), 1);
    assert!(data.metrics().iter().all(|m| m.get("name").is_none()));
    let changed = data.by_alias(&cpu["alias"]).expect("cpu_temp by alias");
    assert_eq!(changed["value"], 52.0);
    // Nothing changes: nothing is sent (five sampling passes).
    let quiet = sub.collect(Duration::from_millis(1200));
    assert!(
        quiet.iter().all(|m| !m.topic.contains("/NDATA/")),
        "unchanged values were sent again: {quiet:?}"
    );
    // An alert is a Boolean metric.
    temperature(&dir, 85_000);
    let data = next(&sub, "NDATA", Duration::from_secs(5));
    let alert_alias = &birth.metric("Alerts/overtemp")["alias"];
    assert_eq!(
        data.by_alias(alert_alias).expect("the alert")["value"],
        true
    );
    assert_eq!(data.seq(), 2);

    // A clean stop publishes NDEATH with the session's bdSeq.
    agent.signal(Signal::SIGTERM);
    let death = next(&sub, "NDEATH", Duration::from_secs(5));
    assert_eq!(death.bd_seq(), birth.bd_seq());
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
}

#[test]
fn will_after_kill_carries_the_births_bd_seq_and_the_next_session_advances_it() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/#");
    let (setup_1, _) = setup(&dir, "sp-node-2", &broker, false);
    let agent = Agent::start_with(&dir, &pki, setup_1);
    let birth = next(&sub, "NBIRTH", Duration::from_secs(10));
    let killed = Instant::now();
    agent.signal(Signal::SIGKILL);
    let will = next(&sub, "NDEATH", Duration::from_secs(6));
    // keepalive_s 2: the broker gives up within 1.5 x keepalive.
    assert!(
        killed.elapsed() <= Duration::from_secs(3),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(will.bd_seq(), birth.bd_seq());
    drop(agent);

    let (setup_2, _) = setup(&dir, "sp-node-2", &broker, false);
    let _agent = Agent::start_with(&dir, &pki, setup_2);
    let rebirth = next(&sub, "NBIRTH", Duration::from_secs(10));
    assert_eq!(rebirth.bd_seq(), birth.bd_seq() + 1);
    assert_eq!(rebirth.seq(), 0);
}

#[test]
fn seq_is_continuous_and_wraps_after_255() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/+/NDATA/#");
    let births = Subscriber::start_hex(&broker, &pki, "spBv1.0/+/NBIRTH/#");
    let (mut setup, _) = setup(&dir, "sp-node-3", &broker, false);
    // /proc/uptime moves every 10 ms: every pass (0.1 s, the shortest interval) has a change
    // to send, so the wrap comes after about 26 s.
    setup.sensors_extra =
        "  - { name: uptime, file: { path: /proc/uptime, column: 1 } }\n".to_owned();
    setup.telemetry = "{ interval_s: 0.1 }".to_owned();
    let _agent = Agent::start_with(&dir, &pki, setup);
    next(&births, "NBIRTH", Duration::from_secs(10));
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < 260 && Instant::now() < deadline {
        if let Some(message) = sub.wait_for(Duration::from_secs(2), |_| true) {
            received.push(message);
        }
    }
    let data = decode_all(&received);
    assert!(data.len() >= 260, "only {} NDATA", data.len());
    let seqs: Vec<u64> = data.iter().map(Decoded::seq).collect();
    assert_eq!(seqs[0], 1, "the first NDATA follows NBIRTH's 0");
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], (pair[0] + 1) % 256, "seq jumps: {seqs:?}");
    }
    assert!(seqs.contains(&255) && seqs.iter().filter(|&&s| s == 0).count() >= 1);
}

#[test]
fn ncmd_rebirth_and_actuator_writes_through_the_allow_list() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/#");
    let (setup, fan) = setup(&dir, "sp-node-4", &broker, false);
    let agent = Agent::start_with(&dir, &pki, setup);
    let birth = next(&sub, "NBIRTH", Duration::from_secs(10));
    let ncmd = "spBv1.0/plant1/NCMD/sp-node-4";

    send(
        &broker,
        &pki,
        &dir,
        ncmd,
        json!({
            "timestamp": 1, "metrics": [{ "name": "Node Control/Rebirth", "type": "Boolean", "value": true }]
        }),
    );
    let rebirth = next(&sub, "NBIRTH", Duration::from_secs(5));
    assert_eq!(rebirth.seq(), 0);
    assert_eq!(
        rebirth.bd_seq(),
        birth.bd_seq(),
        "a rebirth keeps the session's bdSeq"
    );

    send(
        &broker,
        &pki,
        &dir,
        ncmd,
        json!({
            "timestamp": 2, "metrics": [{ "name": "Actuators/fan", "type": "String", "value": "1" }]
        }),
    );
    let data = next(&sub, "NDATA", Duration::from_secs(5));
    let fan_alias = &rebirth.metric("Actuators/fan")["alias"];
    assert_eq!(data.by_alias(fan_alias).expect("the fan")["value"], "1");
    assert_eq!(std::fs::read_to_string(&fan).unwrap().trim(), "1");

    // Not on the allow-list: refused, the file keeps its value.
    send(
        &broker,
        &pki,
        &dir,
        ncmd,
        json!({
            "timestamp": 3, "metrics": [{ "name": "Actuators/fan", "type": "String", "value": "7" }]
        }),
    );
    agent.expect_log("NCMD write refused", Duration::from_secs(5));
    assert!(
        agent.log().contains("value \\\"7\\\" is not allowed")
            || agent.log().contains("value \"7\" is not allowed")
    );
    assert_eq!(std::fs::read_to_string(&fan).unwrap().trim(), "1");
    // Anything else is ignored with a log line, and so is a payload that is not Sparkplug.
    send(
        &broker,
        &pki,
        &dir,
        ncmd,
        json!({
            "timestamp": 4, "metrics": [{ "name": "Sensors/cpu_temp", "type": "Double", "value": 1.5 }]
        }),
    );
    agent.expect_log("NCMD metric ignored", Duration::from_secs(5));
    crate::broker::publish(&broker, &pki, ncmd, "not protobuf at all \u{1}\u{2}");
    agent.expect_log("NCMD ignored", Duration::from_secs(5));
    // Still an edge node in good standing.
    temperature(&dir, 60_000);
    let data = next(&sub, "NDATA", Duration::from_secs(5));
    assert_eq!(
        data.by_alias(&rebirth.metric("Sensors/cpu_temp")["alias"])
            .expect("cpu_temp")["value"],
        60.0
    );
}

#[test]
fn birth_waits_for_the_primary_host_and_dies_when_it_goes_offline() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/plant1/#");
    let (setup, _) = setup(&dir, "sp-node-5", &broker, true);
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Connected.", Duration::from_secs(10));
    // No STATE yet: no birth.
    let early = sub.collect(Duration::from_millis(1500));
    assert!(
        early.iter().all(|m| !m.topic.contains("/NBIRTH/")),
        "NBIRTH before the primary host was online"
    );

    retain_state(&broker, &pki, true, 1000);
    let birth = next(&sub, "NBIRTH", Duration::from_secs(5));
    // The host goes offline: NDEATH, disconnect.
    retain_state(&broker, &pki, false, 2000);
    let death = next(&sub, "NDEATH", Duration::from_secs(5));
    assert_eq!(death.bd_seq(), birth.bd_seq());
    agent.expect_log("Primary host offline", Duration::from_secs(5));
    // Back online: a new session (bdSeq advanced) and a new birth.
    retain_state(&broker, &pki, true, 3000);
    let rebirth = next(&sub, "NBIRTH", Duration::from_secs(10));
    assert_eq!(rebirth.bd_seq(), birth.bd_seq() + 1);
}

/// Issue 18: a primary host once sent a STATE from a clock far in the future; every later STATE
/// looked stale, for good. The newest timestamp is forgotten at each new session, so the retained
/// STATE the next session gets counts again.
#[test]
fn a_far_future_state_blocks_births_only_until_the_next_session() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/plant1/#");
    let (setup, _) = setup(&dir, "sp-node-9", &broker, true);
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Connected.", Duration::from_secs(10));
    retain_state(&broker, &pki, true, 4_102_444_800_000);
    let birth = next(&sub, "NBIRTH", Duration::from_secs(5));
    // The host's clock is put right: in this session its STATE looks older and is ignored.
    retain_state(&broker, &pki, true, 3000);
    let same_session = sub.collect(Duration::from_millis(700));
    assert!(
        same_session.iter().all(|m| !m.topic.contains("/NBIRTH/")),
        "no rebirth in the same session"
    );
    // The connection is taken over once (a client with the node's ID), so the node starts a new
    // session and gets the retained STATE again.
    let status = pki
        .client_cn("mosquitto_sub", &broker, "sp-node-9-kicker", "sp-node-9")
        .args(["-i", "sp-node-9", "-t", "nothing", "-W", "1"])
        .status()
        .unwrap();
    assert!(!status.success(), "mosquitto_sub ends by its timeout");
    let rebirth = sub
        .wait_for(Duration::from_secs(15), |m| m.topic.contains("/NBIRTH/"))
        .unwrap_or_else(|| panic!("no NBIRTH in the next session:\n{}", agent.report()));
    let rebirth = decode_all(&[rebirth]).remove(0);
    assert_eq!(rebirth.bd_seq(), birth.bd_seq() + 1, "a new session");
}

#[test]
fn the_shipped_acl_lets_an_edge_node_speak_for_itself_only() {
    use crate::fleet_broker::{publish_as, shipped_broker, OPERATOR};
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let fleet = shipped_broker(&dir, &pki);
    let broker = &fleet.broker;
    let host = Subscriber::start_hex_as(fleet.services, &fleet.services_pki, "spBv1.0/#", OPERATOR);
    let (setup, _) = setup(&dir, "sp-node-6", broker, false);
    let agent = Agent::start_with(&dir, &pki, setup);
    let birth = next(&host, "NBIRTH", Duration::from_secs(10));
    assert_eq!(birth.topic, "spBv1.0/plant1/NBIRTH/sp-node-6");
    // The operator's NCMD reaches the node (its read pattern), and its rebirth comes back.
    send_as(
        fleet.services,
        &fleet.services_pki,
        &dir,
        "spBv1.0/plant1/NCMD/sp-node-6",
        json!({ "timestamp": 1, "metrics": [{ "name": "Node Control/Rebirth", "type": "Boolean", "value": true }] }),
        OPERATOR,
    );
    let rebirth = next(&host, "NBIRTH", Duration::from_secs(5));
    assert_eq!(rebirth.bd_seq(), birth.bd_seq());
    // Another device cannot speak for this node: the broker drops its NDATA and NDEATH.
    for kind in ["NDATA", "NDEATH"] {
        assert!(publish_as(
            broker,
            &pki,
            "node-x",
            &format!("spBv1.0/plant1/{kind}/sp-node-6"),
            "forged"
        ));
    }
    let forged = host.collect(Duration::from_millis(800));
    assert!(
        forged.iter().all(|m| m.payload != "666f72676564"),
        "a forged message got through: {forged:?}\n{}",
        agent.log()
    );
}

#[test]
fn alert_changes_made_offline_follow_the_birth_as_historical_data() {
    use crate::proxy::{Mode, Proxy};
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    // Nothing answers behind the proxy yet: the node starts offline.
    let proxy = Proxy::start(broker.port, Mode::Refuse);
    retain_state(&broker, &pki, true, 1000);
    let (mut setup, _) = setup(&dir, "sp-node-7", &broker, true);
    setup.urls = vec![proxy.url()];
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Cannot connect.", Duration::from_secs(10));
    // Raised and cleared while no birth stands.
    temperature(&dir, 85_000);
    agent.expect_log(
        "alert=overtemp sensor=cpu_temp state=Raised",
        Duration::from_secs(5),
    );
    temperature(&dir, 70_000);
    agent.expect_log(
        "alert=overtemp sensor=cpu_temp state=Cleared",
        Duration::from_secs(5),
    );

    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/#");
    proxy.set(Mode::Forward);
    let birth = next(&sub, "NBIRTH", Duration::from_secs(10));
    let alert = birth.metric("Alerts/overtemp");
    assert_eq!(alert["value"], false, "the birth carries the current state");
    let error = birth.metric("Node Info/Last Connect Error")["value"].clone();
    assert!(
        error.as_str().is_some_and(|e| !e.is_empty()),
        "the refused connects: {error}"
    );
    // Both changes follow as historical NDATA (with the sensor values of those passes), after
    // the state of the first pass (every metric as it stood at start), each alert change once,
    // raise before clear, in time order.
    let history = historical(&sub, Duration::from_secs(5));
    let alert_history: Vec<&Value> = history
        .iter()
        .filter(|m| m["alias"] == alert["alias"])
        .collect();
    let values: Vec<&Value> = alert_history.iter().map(|m| &m["value"]).collect();
    assert_eq!(
        values,
        [&json!(false), &json!(true), &json!(false)],
        "{history:?}"
    );
    assert!(alert_history
        .windows(2)
        .all(|w| w[0]["timestamp"].as_u64() <= w[1]["timestamp"].as_u64()));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Every historical metric of the NDATA that arrive within `quiet` of each other (store and
/// forward's drain), in arrival order; each NDATA's seq checked to follow the one before.
fn historical(sub: &Subscriber, quiet: Duration) -> Vec<Value> {
    let mut metrics = Vec::new();
    while let Some(message) = sub.wait_for(quiet, |m| m.topic.contains("/NDATA/")) {
        let data = decode_all(&[message]).remove(0);
        let kept: Vec<Value> = data
            .metrics()
            .iter()
            .filter(|m| m["isHistorical"] == true)
            .cloned()
            .collect();
        if kept.is_empty() {
            break;
        }
        metrics.extend(kept);
    }
    metrics
}

/// Issue 36, store and forward: while the primary host is offline the node keeps what it would
/// have published (durably); after the host's next ONLINE and the NBIRTH it goes out as NDATA
/// marked historical, every value of the window once, in order, with its original timestamp
/// and valid seqs; then live NDATA resume. `kill` restarts the agent with kill -9 halfway
/// through the outage. (No assertion id: the specification leaves store and forward to the
/// implementation; its `is_historical` field is what a host reads.)
fn host_outage_is_forwarded(id: &str, kill: bool) {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/plant1/#");
    let (mut setup, _) = setup(&dir, id, &broker, true);
    setup.reconnect = "{ initial_s: 1, max_s: 1, jitter: 0 }".to_owned();
    let mut agent = Agent::start_with(&dir, &pki, setup.clone());
    retain_state(&broker, &pki, true, 1000);
    let birth = next(&sub, "NBIRTH", Duration::from_secs(10));
    let cpu = birth.metric("Sensors/cpu_temp")["alias"].clone();
    // What the node kept before the STATE came (its first passes) has gone out.
    sub.collect(Duration::from_millis(500));
    retain_state(&broker, &pki, false, 2000);
    next(&sub, "NDEATH", Duration::from_secs(5));
    agent.expect_log("Primary host offline", Duration::from_secs(5));
    // The window: a new value every 0.5 s (the node samples every 0.2 s). With `kill`, the
    // agent is killed halfway and the next value is written while none runs: the first pass of
    // the new one keeps it.
    let window: Vec<f64> = (0..16).map(|i| 40.0 + f64::from(i) * 0.25).collect();
    let started = now_ms();
    let mut down = false;
    for (i, value) in window.iter().enumerate() {
        temperature(&dir, (value * 1000.0) as u32);
        if down {
            agent = Agent::start_with(&dir, &pki, setup.clone());
            agent.expect_log("Connected.", Duration::from_secs(10));
            down = false;
        }
        std::thread::sleep(Duration::from_millis(500));
        if kill && i == window.len() / 2 {
            agent.signal(Signal::SIGKILL);
            assert!(agent.wait(Duration::from_secs(5)).is_none(), "killed");
            down = true;
        }
    }
    let ended = now_ms();
    // Nothing goes out while the host is offline.
    let during = sub.collect(Duration::from_millis(300));
    assert!(
        during
            .iter()
            .all(|m| !m.topic.contains("/NDATA/") && !m.topic.contains("/NBIRTH/")),
        "published while the host was offline: {during:?}"
    );
    retain_state(&broker, &pki, true, 3000);
    let rebirth = next(&sub, "NBIRTH", Duration::from_secs(10));
    assert_eq!(rebirth.seq(), 0);
    let first = sub
        .wait_for(Duration::from_secs(5), |m| m.topic.contains("/NDATA/"))
        .unwrap_or_else(|| panic!("no historical NDATA after the birth:\n{}", agent.report()));
    let first = decode_all(&[first]).remove(0);
    assert_eq!(first.seq(), 1, "the first NDATA after the birth has seq 1");
    let mut seq = first.seq();
    let mut history: Vec<Value> = first
        .metrics()
        .iter()
        .filter(|m| m["isHistorical"] == true)
        .cloned()
        .collect();
    assert!(
        !history.is_empty(),
        "the first NDATA after the birth is history: {first:?}"
    );
    while let Some(message) = sub.wait_for(Duration::from_secs(2), |m| m.topic.contains("/NDATA/"))
    {
        let data = decode_all(&[message]).remove(0);
        assert_eq!(data.seq(), (seq + 1) % 256, "seq follows on: {data:?}");
        seq = data.seq();
        let kept: Vec<Value> = data
            .metrics()
            .iter()
            .filter(|m| m["isHistorical"] == true)
            .cloned()
            .collect();
        if kept.is_empty() {
            break;
        }
        history.extend(kept);
    }
    let values: Vec<(f64, u64)> = history
        .iter()
        .filter(|m| m["alias"] == cpu)
        .map(|m| {
            (
                m["value"].as_f64().unwrap(),
                m["timestamp"].as_u64().unwrap(),
            )
        })
        .collect();
    let seen: Vec<f64> = values.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        seen,
        window,
        "every value of the window once, in order:\n{}",
        agent.report()
    );
    for (_, ts) in &values {
        assert!(
            (started..=ended).contains(ts),
            "original timestamps ({ts} in {started}..{ended})"
        );
    }
    assert!(values.windows(2).all(|w| w[0].1 < w[1].1), "{values:?}");
    // Live again: a change goes out as a plain NDATA.
    temperature(&dir, 60_000);
    let live = sub
        .wait_for(Duration::from_secs(5), |m| m.topic.contains("/NDATA/"))
        .map(|m| decode_all(&[m]).remove(0))
        .expect("live NDATA");
    let value = live.by_alias(&cpu).expect("cpu_temp live");
    assert_eq!(value["value"], 60.0);
    assert!(value.get("isHistorical").is_none() || value["isHistorical"] == false);
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
}

#[test]
fn issue_36_a_host_outage_is_forwarded_as_history_once_in_order_after_the_birth() {
    host_outage_is_forwarded("sp-node-11", false);
}

#[test]
fn issue_36_a_host_outage_with_kill_9_midway_loses_no_history() {
    host_outage_is_forwarded("sp-node-12", true);
}

/// Issue 36: the host goes offline again while the history of its last outage is still being
/// forwarded (paced at 2 a second). What went before the NDEATH went once; what had not is
/// neither lost nor sent under the dead birth: it follows the next NBIRTH with that session's
/// seqs. Every value of the window arrives once, in order, over the two drains.
#[test]
fn issue_36_the_host_going_offline_mid_drain_loses_and_repeats_nothing() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/plant1/#");
    let (mut setup, _) = setup(&dir, "sp-node-16", &broker, true);
    setup.reconnect = "{ initial_s: 1, max_s: 1, jitter: 0 }".to_owned();
    setup.broker_extra = "  drain_rate: 2\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    retain_state(&broker, &pki, true, 1000);
    let birth = next(&sub, "NBIRTH", Duration::from_secs(10));
    let cpu = birth.metric("Sensors/cpu_temp")["alias"].clone();
    sub.collect(Duration::from_millis(1500));
    retain_state(&broker, &pki, false, 2000);
    next(&sub, "NDEATH", Duration::from_secs(5));
    let window: Vec<f64> = (0..12).map(|i| 50.0 + f64::from(i) * 0.5).collect();
    for value in &window {
        temperature(&dir, (value * 1000.0) as u32);
        std::thread::sleep(Duration::from_millis(400));
    }
    // Online: the drain starts; offline again after the first few records.
    retain_state(&broker, &pki, true, 3000);
    next(&sub, "NBIRTH", Duration::from_secs(10));
    let mut first = Vec::new();
    let mut sessions = vec![Vec::new()];
    while let Some(message) = sub.wait_for(Duration::from_secs(3), |m| m.topic.contains("/NDATA/"))
    {
        first.push(decode_all(&[message]).remove(0));
        if first.len() == 3 {
            break;
        }
    }
    assert_eq!(first.len(), 3, "the drain began:\n{}", agent.report());
    retain_state(&broker, &pki, false, 4000);
    // Until the NDEATH: what was already on its way.
    let until_death = sub.collect(Duration::from_secs(3));
    let death_at = until_death
        .iter()
        .position(|m| m.topic.contains("/NDEATH/"))
        .unwrap_or_else(|| panic!("no NDEATH:\n{}", agent.report()));
    first.extend(
        decode_all(&until_death[..death_at])
            .into_iter()
            .filter(|d| d.topic.contains("/NDATA/")),
    );
    assert!(
        until_death[death_at..]
            .iter()
            .all(|m| !m.topic.contains("/NDATA/")),
        "NDATA after the NDEATH: {until_death:?}"
    );
    sessions[0] = first;
    retain_state(&broker, &pki, true, 5000);
    let rebirth = next(&sub, "NBIRTH", Duration::from_secs(10));
    assert_eq!(rebirth.seq(), 0);
    let mut second = Vec::new();
    while let Some(message) = sub.wait_for(Duration::from_secs(3), |m| m.topic.contains("/NDATA/"))
    {
        second.push(decode_all(&[message]).remove(0));
    }
    sessions.push(second);
    let mut values = Vec::new();
    for (n, session) in sessions.iter().enumerate() {
        for (i, data) in session.iter().enumerate() {
            assert_eq!(
                data.seq(),
                i as u64 + 1,
                "session {n}: seqs follow the birth: {session:?}"
            );
            values.extend(
                data.metrics()
                    .iter()
                    .filter(|m| m["isHistorical"] == true && m["alias"] == cpu)
                    .map(|m| m["value"].as_f64().unwrap()),
            );
        }
    }
    assert!(!sessions[1].is_empty(), "history left for the second birth");
    assert_eq!(
        values,
        window,
        "every value once, in order, over both drains:\n{}",
        agent.report()
    );
}

#[test]
fn mqtt5_reload_rebirths_or_starts_a_new_session_and_renewal_does_too() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start_with(
        &pki,
        BrokerOptions {
            extra: "sys_interval 1\n",
            ..BrokerOptions::default()
        },
    );
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/#");
    let deaths = Subscriber::start_hex(&broker, &pki, "spBv1.0/+/NDEATH/#");
    let id = "sp-node-8";
    let (mut setup, _) = setup(&dir, id, &broker, false);
    // A persistent session asked for in the config: Sparkplug overrides it.
    setup.broker_extra =
        "  protocol: \"5\"\n  clean_session: false\n  session_expiry_s: 600\n".to_owned();
    let mut agent = Agent::start_with(&dir, &pki, setup);
    let birth = next(&sub, "NBIRTH", Duration::from_secs(10));
    assert_eq!(birth.bd_seq(), 0);
    assert!(
        broker.log().contains(&format!(" as {id} (p5, c1,")),
        "MQTT 5 with Clean Start: {}",
        broker.log()
    );

    // A broken config is refused: the session and its birth stand, NDATA goes on.
    let path = dir.path().join(format!("{id}.yaml"));
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\nbogus_key: 1\n")).unwrap();
    agent.signal(Signal::SIGHUP);
    agent.expect_log("Reload refused", Duration::from_secs(5));
    assert!(
        agent.log().contains("bogus_key: unknown key"),
        "{}",
        agent.log()
    );
    temperature(&dir, 55_000);
    let data = next(&sub, "NDATA", Duration::from_secs(5));
    assert_eq!(
        data.seq(),
        1,
        "the session went on after the refused reload"
    );
    // The same config again: nothing to do.
    std::fs::write(&path, &good).unwrap();
    agent.signal(Signal::SIGHUP);
    agent.expect_log("Reloaded; nothing changed.", Duration::from_secs(5));

    // A new alert and a sensor less change the metric set, not the session: a rebirth declares
    // it, with the session's bdSeq and no NDEATH.
    Agent::edit_config(
        &dir,
        id,
        "alerts:\n",
        "alerts:\n  - { name: hot, sensor: cpu_temp, above: 90 }\n",
    );
    Agent::edit_config(
        &dir,
        id,
        "  - { name: gone, hwmon: { chip: tmp421, input: temp1 } }\n",
        "",
    );
    agent.signal(Signal::SIGHUP);
    let reborn = next(&sub, "NBIRTH", Duration::from_secs(10));
    assert_eq!((reborn.bd_seq(), reborn.seq()), (0, 0));
    assert_eq!(reborn.metric("Alerts/hot")["value"], false);
    assert_eq!(reborn.metric("Node Info/Reconnects")["value"], 0);
    let sent = reborn.metric("Node Info/Messages Sent")["value"].as_u64();
    assert!(sent >= Some(2), "the birth and an NDATA: {sent:?}");
    assert!(
        reborn.metrics().iter().all(|m| m["name"] != "Sensors/gone"),
        "a removed sensor in the rebirth: {}",
        reborn.payload
    );
    assert_eq!(reborn.metric("Sensors/cpu_temp")["value"], 55.0);
    let death = deaths.wait_for(Duration::from_millis(500), |_| true);
    assert!(death.is_none(), "NDEATH on a rebirth: {death:?}");
    assert_eq!(broker.sessions(id), 1, "{}", broker.log());

    // A broker setting changes: NDEATH for this session, NBIRTH with the next bdSeq.
    Agent::edit_config(&dir, id, "keepalive_s: 2", "keepalive_s: 4");
    agent.signal(Signal::SIGHUP);
    death_and_will(&deaths, 0);
    let new_session = next(&sub, "NBIRTH", Duration::from_secs(10));
    assert_eq!((new_session.bd_seq(), new_session.seq()), (1, 0));
    assert_eq!(new_session.metric("Alerts/hot")["value"], false);
    assert_eq!(new_session.metric("Node Info/Reconnects")["value"], 1);
    assert_eq!(broker.sessions(id), 2, "{}", broker.log());

    // A renewed certificate: the same, with the new pair.
    pki.issue(id, id, false);
    death_and_will(&deaths, 1);
    let renewed = next(&sub, "NBIRTH", Duration::from_secs(10));
    assert_eq!(renewed.bd_seq(), 2);
    agent.expect_log("Certificate renewed", Duration::from_secs(1));

    // Session Expiry 0: once the node has gone, the broker keeps no session for it.
    agent.signal(Signal::SIGTERM);
    death_and_will(&deaths, 2);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    std::thread::sleep(Duration::from_millis(2500));
    let kept = Subscriber::start(&broker, &pki, "$SYS/broker/clients/disconnected")
        .wait_for(Duration::from_secs(5), |_| true)
        .expect("the broker's count of kept sessions");
    assert_eq!(kept.payload, "0", "a session outlived the node");
}

/// An intentional end of an MQTT 5 session: the node's NDEATH, then (the DISCONNECT carrying
/// "Disconnect with Will Message") the broker's copy of its will, both with `bd_seq`.
/// tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath,
/// tck-id-payloads-ndeath-will-message-publisher-disconnect-mqtt50.
fn death_and_will(deaths: &Subscriber, bd_seq: i64) {
    for which in ["the node's NDEATH", "the will"] {
        let death = next(deaths, "NDEATH", Duration::from_secs(15));
        assert_eq!(death.bd_seq(), bd_seq, "{which}");
    }
}

/// Issue 31, point 14: the writes of an NCMD ran side by side in no order (`fan = 1, fan = 0`
/// left the file at 1 in 96 of 100 trials). Through the one executor they run in order, one
/// at a time per actuator: every trial ends at the value written last.
#[test]
fn issue_31_14_ncmd_writes_end_at_the_value_written_last() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/#");
    let (setup, fan) = setup(&dir, "sp-node-14", &broker, false);
    let agent = Agent::start_with(&dir, &pki, setup);
    let birth = next(&sub, "NBIRTH", Duration::from_secs(10));
    let fan_alias = birth.metric("Actuators/fan")["alias"].clone();
    let ncmd = "spBv1.0/plant1/NCMD/sp-node-14";
    let write = |timestamp: u64, values: &[&str]| {
        let metrics: Vec<Value> = values
            .iter()
            .map(|value| json!({ "name": "Actuators/fan", "type": "String", "value": value }))
            .collect();
        send(
            &broker,
            &pki,
            &dir,
            ncmd,
            json!({ "timestamp": timestamp, "metrics": metrics }),
        );
    };
    // Waits for NDATA saying the fan holds `value`.
    let holds = |value: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let data = next(&sub, "NDATA", left);
            if data
                .by_alias(&fan_alias)
                .is_some_and(|m| m["value"] == value)
            {
                return;
            }
        }
    };
    for trial in 0..20u64 {
        write(trial * 2 + 10, &["1"]);
        holds("1");
        write(trial * 2 + 11, &["1", "0"]);
        holds("0");
        assert_eq!(
            std::fs::read_to_string(&fan).unwrap().trim(),
            "0",
            "trial {trial}:\n{}",
            agent.report()
        );
    }
}

/// Several brokers: a primary host offline on the broker the node is on sends it, after NDEATH
/// there, to the next broker in `broker.urls`, and from there back again.
/// tck-id-operational-behavior-edge-node-termination-host-offline,
/// tck-id-operational-behavior-edge-node-termination-host-offline-reconnect,
/// tck-id-operational-behavior-primary-application-state-with-multiple-servers-walk,
/// tck-id-message-flow-edge-node-birth-publish-phid-offline.
#[test]
fn issue_36_a_host_offline_on_one_broker_moves_the_node_to_the_next() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let ([first, second], [on_first, on_second], agent) =
        walking_node(&dir, &pki, "sp-node-13", None);
    let birth = next(&on_first, "NBIRTH", Duration::from_secs(10));
    // The host goes offline on the first broker: NDEATH there, the next birth on the second.
    retain_state(&first, &pki, false, 2000);
    assert_eq!(
        next(&on_first, "NDEATH", Duration::from_secs(5)).bd_seq(),
        birth.bd_seq()
    );
    let moved = next(&on_second, "NBIRTH", Duration::from_secs(10));
    assert_eq!(moved.bd_seq(), birth.bd_seq() + 1);
    let stayed = on_first.collect(Duration::from_millis(500));
    assert!(
        stayed.iter().all(|m| !m.topic.contains("/NBIRTH/")),
        "a birth on the broker where the host is offline: {stayed:?}\n{}",
        agent.report()
    );
    // Online on the first again, offline on the second: back to the first.
    retain_state(&first, &pki, true, 3000);
    retain_state(&second, &pki, false, 3000);
    assert_eq!(
        next(&on_second, "NDEATH", Duration::from_secs(5)).bd_seq(),
        moved.bd_seq()
    );
    let back = next(&on_first, "NBIRTH", Duration::from_secs(10));
    assert_eq!(back.bd_seq(), moved.bd_seq() + 1);
}

/// Issue 36: history kept in Sparkplug mode, then the agent restarted in plain mode: the kept
/// records (JSON meant to become historical NDATA) are dropped and said so, never published on
/// the Sparkplug topics, and plain telemetry goes on.
#[test]
fn issue_36_history_kept_before_a_switch_to_plain_mode_is_dropped_not_published() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sparkplug = Subscriber::start_hex(&broker, &pki, "spBv1.0/plant1/+/sp-node-18");
    retain_state(&broker, &pki, false, 1000);
    let (setup, _) = setup(&dir, "sp-node-18", &broker, true);
    let mut plain = setup.clone();
    let mut agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Connected.", Duration::from_secs(10));
    for millidegrees in [41_000, 42_000, 43_000] {
        temperature(&dir, millidegrees);
        std::thread::sleep(Duration::from_millis(400));
    }
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    // NDEATH (the goodbye) is all the Sparkplug topics had.
    let before = sparkplug.collect(Duration::from_millis(300));
    assert!(
        before.iter().all(|m| m.topic.contains("/NDEATH/")),
        "{before:?}"
    );

    plain.top_extra = String::new();
    let telemetry = Subscriber::start(&broker, &pki, "devices/sp-node-18/telemetry");
    let agent = Agent::start_with(&dir, &pki, plain);
    agent.expect_log(
        "Sparkplug history kept before the switch to plain topics is dropped.",
        Duration::from_secs(10),
    );
    assert!(
        telemetry
            .wait_for(Duration::from_secs(5), |_| true)
            .is_some(),
        "plain telemetry:\n{}",
        agent.report()
    );
    let after = sparkplug.collect(Duration::from_secs(1));
    assert!(
        after.is_empty(),
        "published on Sparkplug topics in plain mode: {after:?}"
    );
}

/// Two brokers with the primary host online on each and a subscriber to the node's topics there,
/// and a node whose `broker.urls` are `before` (a broker that is down), then the two.
fn walking_node(
    dir: &TestDir,
    pki: &BrokerPki,
    id: &str,
    before: Option<String>,
) -> ([Broker; 2], [Subscriber; 2], Agent) {
    let brokers = [Broker::start(pki), Broker::start(pki)];
    let subs = brokers
        .each_ref()
        .map(|broker| Subscriber::start_hex(broker, pki, "spBv1.0/plant1/#"));
    for broker in &brokers {
        retain_state(broker, pki, true, 1000);
    }
    let (mut setup, _) = setup(dir, id, &brokers[0], true);
    setup.urls = before
        .into_iter()
        .chain(brokers.iter().map(Broker::url))
        .collect();
    setup.reconnect = "{ initial_s: 1, max_s: 1, jitter: 0 }".to_owned();
    let agent = Agent::start_with(dir, pki, setup);
    (brokers, subs, agent)
}

/// Issue 36, tck-id-operational-behavior-edge-node-termination-host-offline-reconnect: the walk
/// goes on from the broker the node is on, not from the first of the list. With `urls: [A, B,
/// C]` and A down, the node is on B; the host goes offline there: the next connect is to C,
/// without going back to B (which would cost a bdSeq and another NDEATH there).
#[test]
fn issue_36_the_walk_to_the_next_broker_goes_on_from_the_one_the_node_is_on() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a_url = format!("mqtts://127.0.0.1:{}", down.local_addr().unwrap().port());
    drop(down);
    let ([b, _c], [on_b, on_c], agent) = walking_node(&dir, &pki, "sp-node-17", Some(a_url));
    let birth = next(&on_b, "NBIRTH", Duration::from_secs(15));
    retain_state(&b, &pki, false, 2000);
    assert_eq!(
        next(&on_b, "NDEATH", Duration::from_secs(5)).bd_seq(),
        birth.bd_seq()
    );
    let moved = next(&on_c, "NBIRTH", Duration::from_secs(15));
    assert_eq!(
        moved.bd_seq(),
        birth.bd_seq() + 1,
        "straight to C, no session on B or A in between:\n{}",
        agent.report()
    );
    let on_b_since = on_b.collect(Duration::from_millis(300));
    assert!(
        on_b_since.is_empty(),
        "back on B after the host went offline there: {on_b_since:?}"
    );
}

/// Issue 36: NCMD writes go through the one executor (one job per actuator, a bounded queue, a
/// deadline). An actuator whose device accepts the connection and never answers, flooded with
/// writes: the node keeps publishing its data, and the agent's thread count stays bounded.
#[test]
fn issue_36_a_stuck_actuator_under_ncmd_stops_only_itself() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    // A Modbus device that takes connections and never answers a request.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let sub = Subscriber::start_hex(&broker, &pki, "spBv1.0/plant1/#");
    let mut setup = Setup::new("sp-node-15", &broker);
    setup.top_extra = format!(
        "actuators:\n  - {{ name: valve, modbus: {{ url: \"tcp://127.0.0.1:{port}\", table: coil, address: 1, timeout_s: 1 }}, values: [\"0\", \"1\"] }}\n\
         sparkplug:\n  group_id: plant1\n"
    );
    let agent = Agent::start_with(&dir, &pki, setup);
    let birth = next(&sub, "NBIRTH", Duration::from_secs(10));
    let cpu = birth.metric("Sensors/cpu_temp")["alias"].clone();
    let before = std::fs::read_dir(format!("/proc/{}/task", agent.pid()))
        .unwrap()
        .count();
    let ncmd = "spBv1.0/plant1/NCMD/sp-node-15";
    for i in 0..40u64 {
        let value = if i % 2 == 0 { "1" } else { "0" };
        send(
            &broker,
            &pki,
            &dir,
            ncmd,
            json!({ "timestamp": i, "metrics": [{ "name": "Actuators/valve", "type": "String", "value": value }] }),
        );
    }
    // The node goes on: each change of the sensor comes out as NDATA.
    for (i, millidegrees) in [50_000u32, 51_000, 52_000].into_iter().enumerate() {
        temperature(&dir, millidegrees);
        let wanted = f64::from(millidegrees) / 1000.0;
        let seen = sub.wait_for(Duration::from_secs(3), |m| {
            m.topic.contains("/NDATA/")
                && decode_all(std::slice::from_ref(m))[0]
                    .by_alias(&cpu)
                    .is_some_and(|metric| metric["value"] == wanted)
        });
        assert!(
            seen.is_some(),
            "change {i} not published while the actuator hangs:\n{}",
            agent.report()
        );
    }
    let after = std::fs::read_dir(format!("/proc/{}/task", agent.pid()))
        .unwrap()
        .count();
    assert!(
        after <= before + 3,
        "threads {before} before the writes, {after} with 40 waiting on a silent device"
    );
}
