//! Running under systemd: the notify protocol on a NOTIFY_SOCKET listener, and the health topic
//! at a real mosquitto.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::broker::{Broker, BrokerPki, Subscriber};
use crate::daemon::{online, Agent, Setup};
use crate::util::TestDir;

/// Every notify line the agent sends, in order, until `until` appears or `within` passes.
fn collect(socket: &UnixDatagram, lines: &mut Vec<String>, until: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(length) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..length]).into_owned();
            let found = text.lines().any(|line| line == until);
            lines.extend(text.lines().map(str::to_owned));
            if found {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_notify_protocol_in_order() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut setup = Setup::new("node-n", &broker);
    setup.env = vec![
        ("NOTIFY_SOCKET".to_owned(), path.display().to_string()),
        ("WATCHDOG_USEC".to_owned(), "1000000".to_owned()),
    ];
    let mut agent = Agent::start_with(&dir, &pki, setup);
    let mut lines = Vec::new();
    assert!(
        collect(&socket, &mut lines, "READY=1", Duration::from_secs(10)),
        "{lines:?}; log:\n{}",
        agent.log()
    );
    assert!(
        collect(&socket, &mut lines, "WATCHDOG=1", Duration::from_secs(3)),
        "{lines:?}"
    );
    let connected = |lines: &[String]| lines.iter().any(|l| l.starts_with("STATUS=connected to "));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connected(&lines) && Instant::now() < deadline {
        collect(&socket, &mut lines, "STATUS=", Duration::from_millis(200));
    }
    assert!(connected(&lines), "{lines:?}");

    agent.signal(Signal::SIGHUP);
    assert!(
        collect(&socket, &mut lines, "RELOADING=1", Duration::from_secs(5)),
        "{lines:?}"
    );
    assert!(
        collect(&socket, &mut lines, "READY=1", Duration::from_secs(5)),
        "{lines:?}"
    );
    agent.signal(Signal::SIGTERM);
    assert!(
        collect(&socket, &mut lines, "STOPPING=1", Duration::from_secs(5)),
        "{lines:?}"
    );
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));

    let position = |wanted: &str, from: usize| {
        lines[from..]
            .iter()
            .position(|l| l == wanted)
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("no {wanted} after {from}: {lines:?}"))
    };
    let ready = position("READY=1", 0);
    let reloading = position("RELOADING=1", ready);
    let ready_again = position("READY=1", reloading);
    let stopping = position("STOPPING=1", ready_again);
    assert!(
        ready < reloading && reloading < ready_again && ready_again < stopping,
        "{lines:?}"
    );
}

#[test]
fn health_is_published_on_connect() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-m/#");
    let agent = Agent::start(&dir, &pki, &broker, "node-m");
    online(&subscriber, "node-m", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("not online; log:\n{}", agent.log()));
    let message = subscriber
        .wait_for(Duration::from_secs(5), |m| {
            m.topic == "devices/node-m/health"
        })
        .expect("health on connect");
    let health: serde_json::Value = serde_json::from_str(&message.payload).unwrap();
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"), "{health}");
    assert!(health["ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(health["uptime_s"].is_u64(), "{health}");
    assert!(
        health["rss_bytes"].as_u64().unwrap() > 1_000_000,
        "{health}"
    );
    assert!(health["cpu_time_ms"].is_u64(), "{health}");
    for counter in ["sent", "dropped", "queued"] {
        assert!(health["messages"][counter].is_u64(), "{counter}: {health}");
    }
    assert_eq!(health["reconnects"], 0, "{health}");
    assert!(health["last_connect_error"].is_null(), "{health}");
    assert!(
        health["sensor_errors"]["gone"].as_u64().unwrap() >= 1,
        "{health}"
    );
}

/// One journald native-protocol datagram as fields: `KEY=value` lines, or `KEY`, a little-endian
/// u64 length and the value for values that may hold newlines.
fn journal_fields(datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            rest = &rest[(end + 1).min(rest.len())..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let length = u64::from_le_bytes(rest[end + 1..end + 9].try_into().unwrap()) as usize;
            let value = &rest[end + 9..end + 9 + length];
            assert_eq!(rest.get(end + 9 + length), Some(&b'\n'), "{datagram:?}");
            fields.push((name, String::from_utf8_lossy(value).into_owned()));
            rest = &rest[end + 10 + length..];
        }
    }
    fields
}

/// Under systemd (JOURNAL_STREAM naming our stderr) `log.target: auto` writes to the journal
/// socket with structured fields, so `journalctl SENSOR=gone` finds the sensor's lines. The
/// socket path is fixed in the journald protocol, so the agent runs in a mount namespace where a
/// test directory is /run/systemd/journal (needs root, as CI and the README's set-up are).
#[test]
fn journald_gets_structured_fields() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a mount namespace for the journal socket needs root");
        return;
    }
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal).unwrap();
    let socket = UnixDatagram::bind(journal.join("socket")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut setup = Setup::new("node-j", &broker);
    setup.journal = Some(journal.clone());
    let mut agent = Agent::start_with(&dir, &pki, setup);

    let mut entries: Vec<Vec<(String, String)>> = Vec::new();
    let has = |entries: &[Vec<(String, String)>], message: &str| {
        entries
            .iter()
            .any(|fields| fields.iter().any(|(k, v)| k == "MESSAGE" && v == message))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = vec![0u8; 65536];
    while !(has(&entries, "Connected.") && has(&entries, "Sensor failing."))
        && Instant::now() < deadline
    {
        if let Ok(length) = socket.recv(&mut buf) {
            if length > 0 {
                entries.push(journal_fields(&buf[..length]));
            }
        }
    }
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));

    let entry = |message: &str| {
        entries
            .iter()
            .find(|fields| fields.iter().any(|(k, v)| k == "MESSAGE" && v == message))
            .unwrap_or_else(|| panic!("no {message:?} entry in {entries:#?}"))
            .clone()
    };
    let field = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {fields:#?}"))
    };
    let failing = entry("Sensor failing.");
    assert_eq!(field(&failing, "SENSOR"), "gone");
    assert_eq!(field(&failing, "PRIORITY"), "4", "a warning");
    assert_eq!(field(&failing, "SYSLOG_IDENTIFIER"), "fieldagent");
    assert!(field(&failing, "ERROR").contains("tmp421"), "{failing:?}");
    let connected = entry("Connected.");
    assert_eq!(field(&connected, "BROKER"), broker.url());
    assert_eq!(field(&connected, "PRIORITY"), "6", "info");
    // Nothing went to stderr: the journal has it all, once.
    assert_eq!(agent.log(), "", "stderr should stay empty");
}

/// `JOURNAL_STREAM` naming another stream (stderr redirected by the operator) keeps stderr.
#[test]
fn journal_stream_of_another_file_keeps_stderr() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let mut setup = Setup::new("node-s", &broker);
    setup.env = vec![("JOURNAL_STREAM".to_owned(), "1:1".to_owned())];
    let mut agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Connected.", Duration::from_secs(15));
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
}

/// Issue 18: STATUS= stayed "sampling; connecting" for ever on a device that could not connect.
/// Each failed connect says why and when the next attempt is.
#[test]
fn status_says_why_the_device_is_offline() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let proxy = crate::proxy::Proxy::start(broker.port, crate::proxy::Mode::Refuse);
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut setup = Setup::new("node-n2", &broker);
    setup.urls = vec![proxy.url()];
    setup.env = vec![("NOTIFY_SOCKET".to_owned(), path.display().to_string())];
    let agent = Agent::start_with(&dir, &pki, setup);
    let offline = |lines: &[String]| {
        lines
            .iter()
            .any(|l| l.starts_with("STATUS=offline: ") && l.contains("; retrying in "))
    };
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !offline(&lines) && Instant::now() < deadline {
        collect(&socket, &mut lines, "STATUS=", Duration::from_millis(200));
    }
    assert!(offline(&lines), "{lines:?}\n{}", agent.log());
}
