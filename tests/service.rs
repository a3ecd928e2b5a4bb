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
