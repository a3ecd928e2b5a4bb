//! The shipped broker configuration (packaging/broker/mosquitto/) at work: mosquitto started
//! with it as it is, only its port, certificate paths, ACL path and persistence directory
//! rewritten for the test. Per-device isolation, another CA refused, the per-device queue bound
//! with flat broker memory, and an operator commanding a device end to end.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::broker::{free_port, Broker, BrokerPki, Subscriber};
use crate::daemon::{Agent, Setup};
use crate::util::TestDir;

pub(crate) const OPERATOR: &str = "fleet-operator";

fn shipped(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/broker/mosquitto")
        .join(name)
}

/// The shipped mosquitto config with the machine-specific lines rewritten; each must exist.
pub(crate) fn shipped_broker(dir: &TestDir, pki: &BrokerPki) -> Broker {
    let port = free_port();
    let text = std::fs::read_to_string(shipped("fieldagent.conf")).unwrap();
    let persistence = dir.path().join("mosquitto-db/");
    std::fs::create_dir_all(&persistence).unwrap();
    let rewrites = [
        ("listener 8883", format!("listener {port} 127.0.0.1")),
        ("cafile ", format!("cafile {}", pki.ca.display())),
        (
            "certfile ",
            format!("certfile {}", pki.dir.join("server.crt").display()),
        ),
        (
            "keyfile ",
            format!("keyfile {}", pki.dir.join("server.key").display()),
        ),
        (
            "acl_file ",
            format!("acl_file {}", shipped("fieldagent.acl").display()),
        ),
        (
            "persistence_location ",
            format!("persistence_location {}", persistence.display()),
        ),
    ];
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (prefix, replacement) in &rewrites {
        let line = lines
            .iter_mut()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("the shipped config has no `{prefix}` line"));
        *line = replacement.clone();
    }
    let config = format!(
        "user root\nlog_dest file {}\nlog_type all\n{}\n",
        Broker::log_path(pki, port).display(),
        lines.join("\n")
    );
    Broker::spawn(pki, port, &config, &[])
}

/// Publishes `payload` to `topic` at QoS 1 as a client with certificate CN `cn`; whether the
/// broker let the client connect.
pub(crate) fn publish_as(
    broker: &Broker,
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
    let broker = shipped_broker(&dir, &pki);
    let operator = Subscriber::start_as(&broker, &pki, "devices/#", 1, OPERATOR);
    let agent_a = Agent::start_with(&dir, &pki, Setup::new("node-a", &broker));
    let agent_b = Agent::start_with(&dir, &pki, Setup::new("node-b", &broker));
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

    // Device A listens on B's commands and writes under B's prefix: the broker refuses both.
    let spy = pki
        .client_cn("mosquitto_sub", &broker, "node-a-spy", "node-a")
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
    assert!(publish_as(
        &broker,
        &pki,
        "node-a",
        "devices/node-b/telemetry",
        "{\"spoofed\":true}"
    ));
    assert!(publish_as(
        &broker,
        &pki,
        "node-a",
        "devices/node-b/alerts",
        "{\"spoofed\":true}"
    ));
    // The same client may write its own topics, so the refusal above is the ACL's doing.
    assert!(publish_as(
        &broker,
        &pki,
        "node-a",
        "devices/node-a/telemetry",
        "{\"own\":true}"
    ));
    assert!(operator
        .wait_for(Duration::from_secs(5), |m| m
            .payload
            .contains("\"own\":true"))
        .is_some());

    // The operator commands B end to end: the command in, B's response out.
    assert!(publish_as(
        &broker,
        &pki,
        OPERATOR,
        "devices/node-b/commands/ping",
        r#"{"id":"op-1"}"#
    ));
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
        "device A read B's commands"
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
fn a_certificate_from_another_ca_cannot_connect() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = shipped_broker(&dir, &pki);
    let operator = Subscriber::start_as(&broker, &pki, "devices/#", 1, OPERATOR);
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
    let broker = shipped_broker(&dir, &pki);
    let bound: usize = std::fs::read_to_string(shipped("fieldagent.conf"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("max_queued_messages "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    // The device subscribes with a persistent session, then goes away.
    let device = |extra: &[&str]| {
        let mut command = pki.client_cn("mosquitto_sub", &broker, "node-c-tool", "node-c");
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
        let mut publisher = pki
            .client_cn("mosquitto_pub", &broker, "operator-tool", OPERATOR)
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
    let rss_at_bound = broker_rss_kib(&broker);
    send(30 * bound, 3 * bound);
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = broker_rss_kib(&broker);
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
