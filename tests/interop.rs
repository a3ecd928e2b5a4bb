//! The agent against brokers we did not write, each requiring a client certificate signed by the
//! test CA: aedes (Node.js, MQTT 3.1.1; `tests/brokers/aedes.js`, from npm) and rumqttd (Rust,
//! MQTT 3.1.1 and 5, rustls; built from crates.io by `scripts/test` into `target/interop/`). The
//! same scenarios as against mosquitto: the retained online status, telemetry, QoS 1 and 2
//! alerts, a command, the will after kill -9 and for a frozen agent, a command sent while the
//! agent was away (persistent session), a broker restart.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::broker::{free_port, publish, Broker, BrokerPki, Subscriber};
use crate::daemon::{Agent, Setup};
use crate::util::TestDir;

/// The implementations under test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Peer {
    Aedes,
    Rumqttd { mqtt5: bool },
}

impl Peer {
    /// Starts this broker on `port` (a free one when `None`).
    fn start(self, pki: &BrokerPki, port: Option<u16>) -> Broker {
        let port = port.unwrap_or_else(free_port);
        let log = pki
            .dir
            .join(format!("{self:?}-{port}.log").replace([' ', '{', '}', ':'], ""));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut command = match self {
            Peer::Aedes => {
                let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/brokers");
                assert!(
                    dir.join("node_modules/aedes").exists(),
                    "aedes is not installed: run `npm ci` in {} (scripts/test does)",
                    dir.display()
                );
                let mut command = Command::new("node");
                command
                    .arg(dir.join("aedes.js"))
                    .arg(port.to_string())
                    .arg(&pki.ca)
                    .arg(pki.dir.join("server.crt"))
                    .arg(pki.dir.join("server.key"));
                command
            }
            Peer::Rumqttd { mqtt5 } => {
                let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("target/interop/rumqttd/bin/rumqttd");
                assert!(
                    binary.exists(),
                    "rumqttd is not built: scripts/test builds it into {}",
                    binary.display()
                );
                let version = if mqtt5 { "v5" } else { "v4" };
                let config = format!(
                    "id = 0\n\n[router]\nid = 0\nmax_connections = 100\nmax_outgoing_packet_count = 200\n\
                     max_segment_size = 104857600\nmax_segment_count = 10\n\n\
                     [{version}.1]\nname = \"{version}-1\"\nlisten = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 1\n\
                     [{version}.1.tls]\ncapath = \"{ca}\"\ncertpath = \"{dir}/server.crt\"\nkeypath = \"{dir}/server.key\"\n\
                     [{version}.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 20480\n\
                     max_inflight_count = 100\ndynamic_filters = true\n",
                    ca = pki.ca.display(),
                    dir = pki.dir.display(),
                );
                let path = pki.dir.join(format!("rumqttd-{port}.toml"));
                std::fs::write(&path, config).unwrap();
                let mut command = Command::new(binary);
                command.arg("-c").arg(path).arg("-vv");
                command
            }
        };
        let child = command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        // rumqttd follows RFC 6066 and refuses an IP literal in SNI (the agent sends none).
        let rumqttd = matches!(self, Peer::Rumqttd { .. });
        Broker::listening(
            port,
            child,
            log,
            self == Peer::Rumqttd { mqtt5: true },
            rumqttd,
        )
    }

    /// A broker restart: stopped, then started again on the same port.
    fn restart(self, pki: &BrokerPki, broker: Broker) -> Broker {
        let port = broker.port;
        drop(broker);
        std::thread::sleep(Duration::from_millis(300));
        self.start(pki, Some(port))
    }

    fn setup(self, id: &str, broker: &Broker) -> Setup {
        let mut setup = Setup::new(id, broker);
        if self == (Peer::Rumqttd { mqtt5: true }) {
            setup.broker_extra = "  protocol: \"5\"\n".to_owned();
        }
        setup
    }
}

/// The retained online status a late subscriber gets, telemetry, a QoS 1 and a QoS 2 alert, and
/// a command with its answer.
fn online_telemetry_alerts_and_a_command(peer: Peer, id: &str) {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = peer.start(&pki, None);
    let mut setup = peer.setup(id, &broker);
    setup.top_extra = "alerts:\n  - { name: warm, sensor: cpu_temp, above: 40, qos: 1 }\n  - { name: hot, sensor: cpu_temp, above: 45, qos: 2 }\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Connected.", Duration::from_secs(20));
    let all = Subscriber::start_qos(&broker, &pki, &format!("devices/{id}/#"), 2);
    let status = all.wait_for(Duration::from_secs(10), |m| m.topic.ends_with("/status"));
    let status = status.unwrap_or_else(|| panic!("no retained status:\n{}", agent.report()));
    assert!(status.retained, "{status:?}");
    assert!(status.payload.contains(r#""online":true"#), "{status:?}");
    let telemetry = all.wait_for(Duration::from_secs(10), |m| m.topic.ends_with("/telemetry"));
    assert!(telemetry.is_some(), "no telemetry:\n{}", agent.report());
    // The alerts were raised before the subscriber came; they are redelivered only with the
    // agent's next raise, so the command comes first and the alerts are checked in the log and
    // through a restart of the sampler's view below.
    publish(
        &broker,
        &pki,
        &format!("devices/{id}/commands/ping"),
        r#"{"id":"i1"}"#,
    );
    let pong = all.wait_for(Duration::from_secs(10), |m| {
        m.topic.ends_with("/responses") && m.payload.contains(r#""id":"i1""#)
    });
    assert!(pong.is_some(), "no answer to ping:\n{}", agent.report());
    let alerts = Subscriber::start_qos(&broker, &pki, &format!("devices/{id}/alerts"), 2);
    // Down and up again: both rules clear, then raise, at their QoS.
    dir.write("sys/class/thermal/thermal_zone1/temp", "30000\n");
    std::thread::sleep(Duration::from_millis(600));
    dir.write("sys/class/thermal/thermal_zone1/temp", "48250\n");
    let mut raised = Vec::new();
    while raised.len() < 2 {
        let Some(message) = alerts.wait_for(Duration::from_secs(10), |m| {
            m.payload.contains(r#""state":"raised""#)
        }) else {
            break;
        };
        raised.push(message.payload);
    }
    assert!(
        raised.iter().any(|p| p.contains(r#""alert":"warm""#))
            && raised.iter().any(|p| p.contains(r#""alert":"hot""#)),
        "{raised:?}\n{}",
        agent.report()
    );
}

/// The will after kill -9, and for an agent that freezes (SIGSTOP) until the broker's keepalive
/// check fires.
fn the_will_after_kill_and_freeze(peer: Peer, id: &str) {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = peer.start(&pki, None);
    let status = Subscriber::start(&broker, &pki, &format!("devices/{id}/status"));
    let agent = Agent::start_with(&dir, &pki, peer.setup(id, &broker));
    let online = |within| status.wait_for(within, |m| m.payload.contains(r#""online":true"#));
    assert!(
        online(Duration::from_secs(20)).is_some(),
        "{}",
        agent.report()
    );
    agent.signal(Signal::SIGKILL);
    let will = status.wait_for(Duration::from_secs(10), |m| {
        m.payload.contains(r#""reason":"lost""#)
    });
    assert!(will.is_some(), "no will after kill -9: {}", broker.log());
    drop(agent);

    let agent = Agent::start_with(&dir, &pki, peer.setup(id, &broker));
    assert!(
        online(Duration::from_secs(20)).is_some(),
        "{}",
        agent.report()
    );
    agent.signal(Signal::SIGSTOP);
    // keepalive_s 2: Paho announces 1 s, the broker allows 1.5 times that.
    let will = status.wait_for(Duration::from_secs(15), |m| {
        m.payload.contains(r#""reason":"lost""#)
    });
    agent.signal(Signal::SIGCONT);
    assert!(
        will.is_some(),
        "no will for a frozen agent: {}",
        broker.log()
    );
}

/// A command sent while the agent was away arrives through its persistent session; after a
/// broker restart the agent is back with its online status.
fn an_offline_command_and_a_broker_restart(peer: Peer, id: &str) {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = peer.start(&pki, None);
    let mut agent = Agent::start_with(&dir, &pki, peer.setup(id, &broker));
    agent.expect_log("Connected.", Duration::from_secs(20));
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    let responses = Subscriber::start(&broker, &pki, &format!("devices/{id}/responses"));
    publish(
        &broker,
        &pki,
        &format!("devices/{id}/commands/ping"),
        r#"{"id":"away-1"}"#,
    );
    let agent = Agent::start_with(&dir, &pki, peer.setup(id, &broker));
    let answered = responses.wait_for(Duration::from_secs(20), |m| m.payload.contains("away-1"));
    assert!(
        answered.is_some(),
        "the offline command was not answered:\n{}",
        agent.report()
    );

    let broker = peer.restart(&pki, broker);
    let status = Subscriber::start(&broker, &pki, &format!("devices/{id}/status"));
    let back = status.wait_for(Duration::from_secs(20), |m| {
        m.payload.contains(r#""online":true"#)
    });
    assert!(
        back.is_some(),
        "not back after the broker's restart:\n{}",
        agent.report()
    );
}

#[test]
fn aedes_online_telemetry_alerts_and_a_command() {
    online_telemetry_alerts_and_a_command(Peer::Aedes, "ae-1");
}

#[test]
fn aedes_the_will_after_kill_and_freeze() {
    the_will_after_kill_and_freeze(Peer::Aedes, "ae-2");
}

#[test]
fn aedes_an_offline_command_and_a_broker_restart() {
    an_offline_command_and_a_broker_restart(Peer::Aedes, "ae-3");
}

#[test]
fn rumqttd_online_telemetry_alerts_and_a_command() {
    online_telemetry_alerts_and_a_command(Peer::Rumqttd { mqtt5: false }, "ru-1");
}

#[test]
fn rumqttd_the_will_after_kill_and_freeze() {
    the_will_after_kill_and_freeze(Peer::Rumqttd { mqtt5: false }, "ru-2");
}

#[test]
fn rumqttd_an_offline_command_and_a_broker_restart() {
    an_offline_command_and_a_broker_restart(Peer::Rumqttd { mqtt5: false }, "ru-3");
}

#[test]
fn rumqttd_mqtt5_online_telemetry_alerts_and_a_command() {
    online_telemetry_alerts_and_a_command(Peer::Rumqttd { mqtt5: true }, "ru5-1");
}

#[test]
fn rumqttd_mqtt5_the_will_after_kill_and_freeze() {
    the_will_after_kill_and_freeze(Peer::Rumqttd { mqtt5: true }, "ru5-2");
}

/// MQTT 5 against a broker that speaks only 3.1.1: the log names the refused version and
/// suggests the other.
#[test]
fn a_refused_protocol_version_is_named() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Peer::Aedes.start(&pki, None);
    let mut setup = Setup::new("ae-5", &broker);
    setup.broker_extra = "  protocol: \"5\"\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Cannot connect.", Duration::from_secs(20));
    let log = agent.log();
    assert!(
        log.contains("MQTT 5") && log.contains(r#"protocol: "3.1.1""#),
        "{log}"
    );
}
