//! The shipped broker configuration (packaging/broker/mosquitto/) at work: mosquitto started
//! with it as it is, only its port, certificate paths, ACL path and persistence directory
//! rewritten for the test. Per-device isolation, another CA refused, the per-device queue bound
//! with flat broker memory, and an operator commanding a device end to end.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::broker::{free_port, Broker, BrokerPki, Endpoint, Subscriber};
use crate::daemon::{Agent, Setup};
use crate::util::TestDir;

pub(crate) const OPERATOR: &str = "fleet-operator";

fn shipped(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/broker/mosquitto")
        .join(name)
}

/// The shipped broker: mosquitto, its device listener (`broker`, trusting the fleet CA) and its
/// services listener (trusting a second CA, `services_pki`, from which operators' certificates
/// come).
pub(crate) struct ShippedBroker {
    pub broker: Broker,
    pub services: Endpoint,
    pub services_pki: BrokerPki,
}

/// The shipped mosquitto config with the machine-specific lines rewritten; each must exist.
pub(crate) fn shipped_broker(dir: &TestDir, pki: &BrokerPki) -> ShippedBroker {
    let port = free_port();
    let services_port = free_port();
    let services_pki = BrokerPki::second(dir, "services", pki);
    let text = std::fs::read_to_string(shipped("fieldagent.conf")).unwrap();
    let persistence = dir.path().join("mosquitto-db/");
    std::fs::create_dir_all(&persistence).unwrap();
    let rewrites = [
        ("listener 8883", format!("listener {port} 127.0.0.1")),
        (
            "listener 8884",
            format!("listener {services_port} 127.0.0.1"),
        ),
        (
            "cafile /etc/mosquitto/ca_certificates/fleet-ca.pem",
            format!("cafile {}", pki.ca.display()),
        ),
        (
            "cafile /etc/mosquitto/ca_certificates/services-ca.pem",
            format!("cafile {}", services_pki.ca.display()),
        ),
        (
            "certfile /etc/mosquitto/certs/broker.crt",
            format!("certfile {}", pki.dir.join("server.crt").display()),
        ),
        (
            "keyfile /etc/mosquitto/certs/broker.key",
            format!("keyfile {}", pki.dir.join("server.key").display()),
        ),
        (
            "acl_file /etc/mosquitto/conf.d/fieldagent.acl",
            format!("acl_file {}", shipped("fieldagent.acl").display()),
        ),
        (
            "acl_file /etc/mosquitto/conf.d/fieldagent-services.acl",
            format!("acl_file {}", shipped("fieldagent-services.acl").display()),
        ),
        (
            "persistence_location /var/lib/mosquitto/",
            format!("persistence_location {}", persistence.display()),
        ),
    ];
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (original, replacement) in &rewrites {
        let mut found = false;
        for line in lines.iter_mut().filter(|l| l.trim_end() == *original) {
            *line = replacement.clone();
            found = true;
        }
        assert!(found, "the shipped config has no `{original}` line");
    }
    let config = format!(
        "user root\nlog_dest file {}\nlog_type all\n{}\n",
        Broker::log_path(pki, port).display(),
        lines.join("\n")
    );
    let broker = Broker::spawn(pki, port, &config, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", services_port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no services listener: {}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ShippedBroker {
        services: Endpoint {
            port: services_port,
            mqtt5: false,
            strict_sni: false,
        },
        broker,
        services_pki,
    }
}

impl ShippedBroker {
    /// A subscriber on `topic` as the operator, on the services listener.
    pub(crate) fn operator(&self, topic: &str) -> Subscriber {
        Subscriber::start_as(self.services, &self.services_pki, topic, 1, OPERATOR)
    }

    /// Publishes as the operator, on the services listener; whether it could.
    pub(crate) fn operator_publishes(&self, topic: &str, payload: &str) -> bool {
        publish_as(self.services, &self.services_pki, OPERATOR, topic, payload)
    }
}

/// Publishes `payload` to `topic` at QoS 1 as a client with certificate CN `cn`; whether the
/// broker let the client connect.
pub(crate) fn publish_as(
    broker: impl Into<Endpoint>,
    pki: &BrokerPki,
    cn: &str,
    topic: &str,
    payload: &str,
) -> bool {
    pki.client_cn("mosquitto_pub", broker, &format!("{cn}-tool"), cn)
        .args(["-t", topic, "-q", "1", "-m", payload])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn broker_rss_kib(broker: &Broker) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn each_device_writes_only_its_own_topics_and_reads_only_its_own_commands() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let fleet = shipped_broker(&dir, &pki);
    let broker = &fleet.broker;
    let operator = fleet.operator("devices/#");
    let agent_a = Agent::start_with(&dir, &pki, Setup::new("node-a", broker));
    let agent_b = Agent::start_with(&dir, &pki, Setup::new("node-b", broker));
    // Both agents' own status, telemetry and alerts (the missing chip's sensor_fault) arrive.
    let wanted: Vec<String> = ["node-a", "node-b"]
        .iter()
        .flat_map(|id| ["status", "telemetry", "alerts"].map(|kind| format!("devices/{id}/{kind}")))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while seen.len() < wanted.len() && std::time::Instant::now() < deadline {
        if let Some(m) =
            operator.wait_for(Duration::from_millis(200), |m| wanted.contains(&m.topic))
        {
            seen.insert(m.topic);
        }
    }
    assert_eq!(
        seen.len(),
        wanted.len(),
        "{seen:?}; agent logs:\n{}\n{}\nbroker log:\n{}",
        agent_a.log(),
        agent_b.log(),
        broker.log()
    );

    // Another device of the fleet, node-x, listens on B's commands and writes under B's
    // prefix: the broker refuses both.
    let spy = pki
        .client_cn("mosquitto_sub", broker, "node-x-spy", "node-x")
        .args([
            "-t",
            "devices/node-b/commands/+",
            "-q",
            "1",
            "-F",
            "%t %p",
            "-W",
            "6",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for topic in ["devices/node-b/telemetry", "devices/node-b/alerts"] {
        assert!(publish_as(
            broker,
            &pki,
            "node-x",
            topic,
            "{\"spoofed\":true}"
        ));
    }
    // The same client may write its own topics, so the refusal above is the ACL's doing.
    assert!(publish_as(
        broker,
        &pki,
        "node-x",
        "devices/node-x/telemetry",
        "{\"own\":true}"
    ));
    assert!(operator
        .wait_for(Duration::from_secs(5), |m| m
            .payload
            .contains("\"own\":true"))
        .is_some());

    // The operator commands B end to end: the command in, B's response out.
    assert!(fleet.operator_publishes("devices/node-b/commands/ping", r#"{"id":"op-1"}"#));
    let response = operator
        .wait_for(Duration::from_secs(10), |m| {
            m.topic == "devices/node-b/responses" && m.payload.contains("op-1")
        })
        .unwrap_or_else(|| panic!("no response; agent log:\n{}", agent_b.log()));
    assert!(
        response.payload.contains(r#""ok":true"#),
        "{}",
        response.payload
    );

    let spied = spy.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&spied.stdout),
        "",
        "device X read B's commands"
    );
    let rest = operator.collect(Duration::from_millis(500));
    assert!(
        !rest.iter().any(|m| m.payload.contains("spoofed")),
        "a spoofed message arrived: {rest:?}"
    );
    let log = broker.log();
    for topic in ["devices/node-b/telemetry", "devices/node-b/alerts"] {
        assert!(
            log.lines()
                .any(|l| l.contains("Denied PUBLISH from") && l.contains(&format!("'{topic}'"))),
            "{log}"
        );
    }
}

#[test]
fn a_device_that_claims_another_ones_client_id_cannot_knock_it_off() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let fleet = shipped_broker(&dir, &pki);
    let broker = &fleet.broker;
    let operator = fleet.operator("devices/node-b/#");
    let agent_b = Agent::start_with(&dir, &pki, Setup::new("node-b", broker));
    operator
        .wait_for(Duration::from_secs(15), |m| {
            m.topic == "devices/node-b/status" && m.payload.contains("online")
        })
        .unwrap_or_else(|| panic!("node-b is not online:\n{}", agent_b.log()));

    // The impostor holds node-a's certificate and claims node-b's client ID, with a persistent
    // session and a subscription to node-b's commands, three times over.
    for round in 0..3 {
        let impostor = pki
            .client_cn("mosquitto_sub", broker, "node-a-impostor", "node-a")
            .args(["-i", "node-b", "-c", "-q", "1"])
            .args(["-t", "devices/node-b/commands/+", "-F", "%t %p", "-W", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(fleet.operator_publishes(
            "devices/node-b/commands/ping",
            &format!(r#"{{"id":"during-{round}"}}"#)
        ));
        let heard = impostor.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&heard.stdout),
            "",
            "the impostor received node-b's command"
        );
        // The real node-b answered it: it was connected all along.
        let response = operator
            .wait_for(Duration::from_secs(10), |m| {
                m.topic == "devices/node-b/responses"
                    && m.payload.contains(&format!("during-{round}"))
            })
            .unwrap_or_else(|| panic!("no answer from node-b:\n{}", agent_b.log()));
        assert!(response.payload.contains(r#""ok":true"#), "{response:?}");
    }
    let log = broker.log();
    // The broker saw the impostor as node-a each time, whatever it claimed, node-b once (the
    // agent), and never closed node-b.
    assert_eq!(broker.sessions("node-a"), 3, "{log}");
    assert!(
        !log.contains("Client node-b already connected, closing old connection"),
        "{log}"
    );
    assert_eq!(broker.sessions("node-b"), 1, "{log}");
    let offline = operator.collect(Duration::from_millis(300));
    assert!(
        !offline
            .iter()
            .any(|m| m.topic == "devices/node-b/status" && m.payload.contains("offline")),
        "node-b went offline: {offline:?}"
    );
    assert_eq!(
        agent_b.log().matches("Connected.").count(),
        1,
        "node-b reconnected:\n{}",
        agent_b.log()
    );

    // A device certificate cannot use the services listener, where client IDs are free.
    let status = pki
        .client_cn("mosquitto_pub", fleet.services, "node-a-impostor", "node-a")
        .args(["-i", "node-b", "-t", "devices/node-b/telemetry", "-m", "{}"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "a device certificate reached the services listener"
    );
    assert!(
        !broker.log().contains("closing old connection"),
        "{}",
        broker.log()
    );
}

#[test]
fn a_certificate_from_another_ca_cannot_connect() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let fleet = shipped_broker(&dir, &pki);
    let broker = &fleet.broker;
    let operator = fleet.operator("devices/#");
    let other_dir = TestDir::new();
    let other = BrokerPki::new(&other_dir);
    let (cert, key) = other.issue("node-x", "node-x", false);
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .arg("--cafile")
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-t", "devices/node-x/telemetry", "-q", "1", "-m", "{}"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "a foreign certificate connected");
    assert!(operator
        .wait_for(Duration::from_secs(2), |m| m.topic.contains("node-x"))
        .is_none());
}

#[test]
fn an_offline_device_gets_exactly_the_queue_bound_and_the_broker_stays_flat() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let fleet = shipped_broker(&dir, &pki);
    let broker = &fleet.broker;
    let bound: usize = std::fs::read_to_string(shipped("fieldagent.conf"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("max_queued_messages "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    // The device subscribes with a persistent session, then goes away.
    let device = |extra: &[&str]| {
        let mut command = pki.client_cn("mosquitto_sub", broker, "node-c-tool", "node-c");
        command.args([
            "-i",
            "node-c",
            "-c",
            "-q",
            "1",
            "-t",
            "devices/node-c/commands/+",
            "-F",
            "%p",
        ]);
        command.args(extra);
        command.stderr(Stdio::null()).output().unwrap()
    };
    assert!(device(&["-E"]).status.success());

    // The operator sends 3 x the bound, then 30 x: the broker keeps the bound, no more.
    let send = |count: usize, from: usize| {
        let mut publisher = fleet
            .services_pki
            .client_cn("mosquitto_pub", fleet.services, "operator-tool", OPERATOR)
            .args(["-t", "devices/node-c/commands/ping", "-q", "1", "-l"])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = publisher.stdin.take().unwrap();
        for i in from..from + count {
            writeln!(stdin, r#"{{"id":"cmd-{i}"}}"#).unwrap();
        }
        drop(stdin);
        assert!(publisher.wait().unwrap().success());
    };
    send(3 * bound, 0);
    std::thread::sleep(Duration::from_millis(300));
    let rss_at_bound = broker_rss_kib(broker);
    send(30 * bound, 3 * bound);
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = broker_rss_kib(broker);
    assert!(
        rss_after <= rss_at_bound + 512,
        "broker RSS grew from {rss_at_bound} to {rss_after} KiB with a full queue"
    );

    let back = device(&["-W", "3"]);
    let received = String::from_utf8_lossy(&back.stdout);
    let ids: Vec<&str> = received.lines().collect();
    assert_eq!(ids.len(), bound, "{received}");
    let log = broker.log();
    assert!(
        log.contains("Outgoing messages are being dropped for client node-c"),
        "{log}"
    );
}

#[test]
fn check_warns_when_the_prefix_would_break_per_device_acls() {
    let dir = TestDir::new();
    let pki = crate::util::pki(&dir, "etc", crate::util::CertSpec::default());
    let config = dir.config(&format!(
        "broker:\n  urls: [\"mqtts://127.0.0.1:8883\"]\n  tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\ntopics: {{ prefix: plant/line1 }}\nsysfs_root: @DIR@/sys\nsensors:\n  - {{ name: sys, system: [uptime_s] }}\n",
        pki.ca.display(),
        pki.cert.display(),
        pki.key.display()
    ));
    let output = crate::util::fieldagent(&["--config", config.to_str().unwrap(), "check"]);
    let text = crate::util::stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a warning, not an error: {text}"
    );
    assert!(
        text.contains("topics.prefix: \"plant/line1\" does not contain {client_id}"),
        "{text}"
    );
}
