//! Issue 31, "never offline while saying online": each test is one of its points, named by its
//! number. The connection's faults come from the fake broker (brokers that behave like EMQX,
//! HiveMQ and AWS IoT Core do: a DISCONNECT with a reason code, a SUBSCRIBE or a status never
//! answered), the wall clock's steps from libfaketime (the agent's monotonic clock is left
//! alone, as NTP leaves it), the rest from real mosquitto and hostile files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::broker::{publish, Broker, BrokerOptions, BrokerPki, Subscriber};
use crate::daemon::{online, Agent, Setup};
use crate::fake_broker::{Behaviour, FakeBroker};
use crate::util::TestDir;

/// `fieldagent status --json` for the agent `id` of a test.
fn status(dir: &TestDir, id: &str) -> Value {
    let config = dir.path().join(format!("{id}.yaml"));
    let output =
        crate::util::fieldagent(&["--config", config.to_str().unwrap(), "status", "--json"]);
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

/// Waits until `check` holds for `status --json`.
fn status_until(
    dir: &TestDir,
    id: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let value = status(dir, id);
        if check(&value) || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.count())
        .unwrap_or(0)
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// 1: a DISCONNECT from the broker (MQTT 5) is a lost connection: logged with its reason code,
/// `status` says offline, and the agent connects again. Paho reports it only through its
/// `disconnected` callback, which the agent did not register: one connection in 130 s, no
/// reconnect, `"connected":true`. Every reason a cluster sends, in parallel; and over 3.1.1,
/// where the broker only closes the socket.
#[test]
fn issue_31_1_a_server_disconnect_is_a_lost_connection_whatever_its_reason() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let cases: Vec<(u8, &str)> = vec![
        (0x8e, "5"),
        (0x8b, "5"),
        (0x8d, "5"),
        (0x98, "5"),
        (0x9c, "5"),
        (0x9d, "5"),
        (0x8b, "3.1.1"),
    ];
    let running: Vec<(String, FakeBroker, Agent)> = cases
        .iter()
        .enumerate()
        .map(|(n, (code, protocol))| {
            let id = format!("node-d{n}");
            let fake = FakeBroker::start(
                &pki,
                vec![
                    Behaviour::DisconnectAfter {
                        after: Duration::from_secs(1),
                        reason: *code,
                    },
                    Behaviour::Normal,
                ],
            );
            let mut setup = Setup::at(&id, fake.url());
            setup.broker_extra = format!("  protocol: \"{protocol}\"\n");
            setup.reconnect = "{ initial_s: 0.5, max_s: 1, jitter: 0 }".to_owned();
            let agent = Agent::start_with(&dir, &pki, setup);
            (id, fake, agent)
        })
        .collect();
    for ((code, protocol), (id, fake, agent)) in cases.iter().zip(&running) {
        // The second connection says online again.
        let again = fake.wait_for(Duration::from_secs(20), |seen| {
            seen.len() >= 2
                && seen[1].publishes.iter().any(|(topic, payload)| {
                    topic.ends_with("/status")
                        && String::from_utf8_lossy(payload).contains(r#""online":true"#)
                })
        });
        assert!(
            again,
            "{protocol} {code:#04x}: no second connection: {:?}\n{}",
            fake.seen().len(),
            agent.report()
        );
        let log = agent.log();
        assert!(log.contains("Connection lost."), "{log}");
        if *protocol == "5" {
            assert!(
                log.contains(&format!("reason code {code:#04x}")),
                "{code:#04x}: {log}"
            );
        }
        let status = status_until(&dir, id, Duration::from_secs(10), |s| {
            s["connected"] == true
        });
        assert_eq!(status["connected"], true, "{status}");
    }
}

/// 1, `status` while the broker holds the agent off: after a DISCONNECT it says offline with
/// the reason, not connected.
#[test]
fn issue_31_1_status_says_offline_after_a_server_disconnect() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    // Every connection is disconnected after a second: the agent is offline most of the time.
    let fake = FakeBroker::start(
        &pki,
        vec![Behaviour::DisconnectAfter {
            after: Duration::from_millis(300),
            reason: 0x8e,
        }],
    );
    let mut setup = Setup::at("node-do", fake.url());
    setup.broker_extra = "  protocol: \"5\"\n".to_owned();
    setup.reconnect = "{ initial_s: 4, max_s: 4, jitter: 0 }".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    assert!(fake.wait_for(Duration::from_secs(10), |seen| !seen.is_empty()));
    agent.expect_log("Connection lost.", Duration::from_secs(10));
    let status = status_until(&dir, "node-do", Duration::from_secs(3), |s| {
        s["connected"] == false && s["last_connect_error"].as_str().is_some()
    });
    assert_eq!(status["connected"], false, "{status}");
    assert!(
        status["last_connect_error"]
            .as_str()
            .is_some_and(|e| e.contains("Session taken over") && e.contains("0x8e")),
        "{status}"
    );
}

/// 2: a broker that never answers the SUBSCRIBE (and, next, one that never acknowledges the
/// online status) wedged the agent in "connecting" for ever, without a word. The attempt is
/// bounded, ends with the reason, and the next one connects.
#[test]
fn issue_31_2_an_unanswered_subscribe_or_status_ends_the_attempt_with_a_reason() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    for (id, behaviour, reason) in [
        (
            "node-ns",
            Behaviour::NoSuback,
            "did not answer the SUBSCRIBE to devices/node-ns/commands/+ within 2 s",
        ),
        (
            "node-np",
            Behaviour::NoStatusPuback,
            "did not acknowledge the online status on devices/node-np/status within 2 s",
        ),
    ] {
        let fake = FakeBroker::start(&pki, vec![behaviour, Behaviour::Normal]);
        let mut setup = Setup::at(id, fake.url());
        setup.connect_timeout_s = 2;
        setup.reconnect = "{ initial_s: 0.2, max_s: 0.5, jitter: 0 }".to_owned();
        let agent = Agent::start_with(&dir, &pki, setup);
        agent.expect_log(reason, Duration::from_secs(10));
        // The next attempt connects; telemetry flows.
        let flowing = fake.wait_for(Duration::from_secs(15), |seen| {
            seen.len() >= 2
                && seen[1]
                    .publishes
                    .iter()
                    .any(|(topic, _)| topic.ends_with("/telemetry"))
        });
        assert!(flowing, "{:?}\n{}", fake.seen(), agent.report());
    }
}

/// 3: the agent announces a Maximum Packet Size over MQTT 5, so a broker never sends it more:
/// one 200 MB PUBLISH on a command topic cost ~790 MB. The fake broker records the CONNECT's
/// property; mosquitto, which honours it, drops a 1 MB command for the agent (and the agent
/// goes on answering commands).
#[test]
fn issue_31_3_the_agent_announces_its_maximum_packet_size() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let fake = FakeBroker::start(&pki, vec![Behaviour::Normal]);
    let mut setup = Setup::at("node-mp", fake.url());
    setup.broker_extra = "  protocol: \"5\"\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    assert!(
        fake.wait_for(Duration::from_secs(10), |seen| !seen.is_empty()
            && seen[0].level == 5),
        "{}",
        agent.report()
    );
    assert_eq!(fake.seen()[0].max_packet_size, Some(256 * 1024));
    drop(agent);

    // A broker that ignores it: the packet is refused before its body is read (the vendored
    // Paho's check), the connection ends and the next one is made; memory stays small.
    let fake = FakeBroker::start(
        &pki,
        vec![Behaviour::HugePublish { size: 20 << 20 }, Behaviour::Normal],
    );
    let mut setup = Setup::at("node-mh", fake.url());
    setup.broker_extra = "  protocol: \"5\"\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    assert!(
        fake.wait_for(Duration::from_secs(20), |seen| seen.len() >= 2
            && !seen[1].publishes.is_empty()),
        "no second connection:\n{}",
        agent.report()
    );
    let peak = peak_rss_kib(agent.pid());
    assert!(
        peak < 48 * 1024,
        "peak RSS {peak} KiB after a 20 MiB PUBLISH"
    );
    drop(agent);

    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-mq/responses");
    let mut setup = Setup::new("node-mq", &broker);
    setup.broker_extra = "  protocol: \"5\"\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    let status_sub = Subscriber::start(&broker, &pki, "devices/node-mq/status");
    online(&status_sub, "node-mq", Duration::from_secs(10)).expect("online");
    let big = format!(r#"{{"id":"big","pad":"{}"}}"#, "x".repeat(1 << 20));
    let file = dir.write("big.json", &big);
    let sent = pki
        .client("mosquitto_pub", &broker, "operator")
        .args(["-t", "devices/node-mq/commands/ping", "-q", "1", "-f"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(sent.success());
    publish(
        &broker,
        &pki,
        "devices/node-mq/commands/ping",
        r#"{"id":"small"}"#,
    );
    // Answers come in order: one for "big" would come before the one for "small".
    let big_answered = std::cell::Cell::new(false);
    let answer = subscriber
        .wait_for(Duration::from_secs(10), |m| {
            big_answered.set(big_answered.get() || m.payload.contains(r#""id":"big""#));
            m.payload.contains(r#""id":"small""#)
        })
        .unwrap_or_else(|| panic!("no answer to the small ping:\n{}", agent.report()));
    assert!(answer.payload.contains(r#""ok":true"#), "{answer:?}");
    assert!(
        !big_answered.get(),
        "the broker delivered the large command:\n{}",
        agent.log()
    );
    let peak = peak_rss_kib(agent.pid());
    assert!(peak < 48 * 1024, "peak RSS {peak} KiB");
}

/// The peak resident memory of `pid` (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .unwrap()
}

/// 4: `broker.password_file` is read at every connect: a rotated password is used by the next
/// reconnect (it was read once per session, so only a restart took it).
#[test]
fn issue_31_4_a_rotated_password_is_used_at_the_next_connect() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let passwords = dir.write("broker/passwords", "");
    let set = |password: &str| {
        let status = Command::new("mosquitto_passwd")
            .args(["-b", passwords.to_str().unwrap(), "device", password])
            .status()
            .unwrap();
        assert!(status.success());
    };
    set("first");
    let extra = format!(
        "password_file {}\nallow_anonymous false",
        passwords.display()
    );
    let broker = Broker::start_with(
        &pki,
        BrokerOptions {
            extra: &extra,
            no_identity_as_username: true,
            ..BrokerOptions::default()
        },
    );
    let port = broker.port;
    let password_file = dir.write("password", "first\n");
    let mut setup = Setup::new("node-pw", &broker);
    setup.broker_extra = format!(
        "  username: device\n  password_file: {}\n",
        password_file.display()
    );
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Connected.", Duration::from_secs(10));
    // The password is rotated on both sides; the broker restarts with the new one (and logs
    // to the same file, after what is there).
    let before = broker.log().len();
    drop(broker);
    set("rotated-pass-2");
    std::fs::write(&password_file, "rotated-pass-2\n").unwrap();
    let broker = Broker::start_with(
        &pki,
        BrokerOptions {
            extra: &extra,
            no_identity_as_username: true,
            port: Some(port),
            ..BrokerOptions::default()
        },
    );
    let after = || broker.log().get(before..).unwrap_or_default().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !after().contains("as node-pw") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = after();
    assert!(
        log.contains("as node-pw") && !log.contains("not authorised"),
        "not connected with the new password:\n{log}\n{}",
        agent.report()
    );
    assert!(
        !agent.log().contains("rotated-pass-2"),
        "the password reached the log"
    );
}

/// 5: no CONNACK within the timeout was reported as "TCP connect timeout" although TCP and TLS
/// had succeeded.
#[test]
fn issue_31_5_a_connack_that_never_comes_is_named() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let fake = FakeBroker::start(&pki, vec![Behaviour::NoConnack]);
    let mut setup = Setup::at("node-nc", fake.url());
    setup.connect_timeout_s = 2;
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log(
        "no CONNACK within 2 s (connect_timeout_s): TCP and TLS to",
        Duration::from_secs(15),
    );
    assert!(
        !agent.log().contains("TCP connect timeout"),
        "{}",
        agent.log()
    );
}

/// libfaketime for the agent: its wall clock is what `offset` holds (`+0`, `-3600`, …, re-read
/// at every call), its monotonic clock real.
fn faketime(setup: &mut Setup, offset: &Path) {
    let library = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/arm-linux-gnueabihf",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| PathBuf::from(dir).join("faketime/libfaketime.so.1"))
    .find(|path| path.exists())
    .expect("libfaketime is installed (scripts/test installs it)");
    setup
        .env
        .push(("LD_PRELOAD".into(), library.display().to_string()));
    setup.env.push((
        "FAKETIME_TIMESTAMP_FILE".into(),
        offset.display().to_string(),
    ));
    setup.env.push(("FAKETIME_NO_CACHE".into(), "1".into()));
    setup.env.push(("DONT_FAKE_MONOTONIC".into(), "1".into()));
}

/// 6: `for_s` is held on the monotonic clock. Stepped back an hour, an alert with `for_s: 3`
/// was raised only an hour later; stepped forward a day, at once.
#[test]
fn issue_31_6_for_s_holds_whatever_the_wall_clock_does() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    for (id, step) in [("node-tb", "-3600"), ("node-tf", "+86400")] {
        let subscriber = Subscriber::start(&broker, &pki, &format!("devices/{id}/alerts"));
        let level = dir.write(&format!("{id}-level"), "0\n");
        let offset = dir.write(&format!("{id}-offset"), "+0\n");
        let mut setup = Setup::new(id, &broker);
        setup.sensors_extra = format!("  - {{ name: level, file: {} }}\n", level.display());
        setup.top_extra =
            "alerts:\n  - { name: high, sensor: level, above: 50, for_s: 3 }\n".to_owned();
        faketime(&mut setup, &offset);
        let agent = Agent::start_with(&dir, &pki, setup);
        agent.expect_log("Starting.", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(500));
        std::fs::write(&level, "90\n").unwrap();
        let high = Instant::now();
        // The step, once the condition holds.
        std::thread::sleep(Duration::from_millis(500));
        std::fs::write(&offset, format!("{step}\n")).unwrap();
        let raised = subscriber
            .wait_for(Duration::from_secs(15), |m| {
                m.payload.contains(r#""alert":"high""#) && m.payload.contains(r#""state":"raised""#)
            })
            .unwrap_or_else(|| panic!("{step}: not raised:\n{}", agent.report()));
        let after = high.elapsed();
        assert!(
            after >= Duration::from_millis(2800) && after < Duration::from_secs(8),
            "{step}: raised {after:?} after the condition began ({raised:?})"
        );
    }
}

/// 7: the watchdog and the stuck-read watch compare monotonic readings. A forward step of a day
/// stopped the pets between passes (with `interval_s` at WatchdogSec/2 or more systemd would
/// have killed the agent); a backward step of an hour during a stuck read hid it for an hour.
#[test]
fn issue_31_7_the_watchdog_and_the_stuck_read_watch_ignore_wall_clock_steps() {
    use std::os::unix::net::UnixDatagram;
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let offset = dir.write("offset", "+0\n");
    // A sensor on a chip that appears later, with an attribute whose read blocks (a FIFO
    // nobody writes): stuck from the moment it exists.
    let sys = crate::util::fake_sysfs(&dir);
    let mut setup = Setup::new("node-wd", &broker);
    // Passes every 3 s, the watchdog at 4 s: it is petted between passes too.
    setup.telemetry = "{ interval_s: 3 }".to_owned();
    setup.sensors_extra =
        "  - { name: late, hwmon: { chip: latechip, input: temp1 } }\n".to_owned();
    faketime(&mut setup, &offset);
    setup
        .env
        .push(("NOTIFY_SOCKET".into(), socket_path.display().to_string()));
    setup.env.push(("WATCHDOG_USEC".into(), "4000000".into()));
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Starting.", Duration::from_secs(10));
    let pets = |within: Duration| {
        let deadline = Instant::now() + within;
        let mut count = 0;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                    count += 1;
                }
            }
        }
        count
    };
    assert!(
        pets(Duration::from_secs(3)) >= 1,
        "no pets at all:\n{}",
        agent.report()
    );
    // A day forward: the pets go on between passes.
    std::fs::write(&offset, "+86400\n").unwrap();
    let forward = pets(Duration::from_secs(7));
    assert!(
        forward >= 2,
        "{forward} pets in 7 s after a forward step:\n{}",
        agent.report()
    );
    assert!(
        !agent.log().contains("Sampling is stuck"),
        "{}",
        agent.report()
    );
    // The chip appears and its read blocks; then the clock goes back a day and an hour, while
    // the read is stuck: it is found within its deadline (5 s) and the next check (5 s).
    std::fs::create_dir_all(sys.join("class/hwmon/hwmon9")).unwrap();
    mkfifo(&sys.join("class/hwmon/hwmon9/temp1_input"));
    dir.write("sys/class/hwmon/hwmon9/name", "latechip\n");
    std::thread::sleep(Duration::from_secs(4));
    std::fs::write(&offset, "-3600\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.log().contains("Sensor read stuck") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent.log().contains("Sensor read stuck"),
        "{}",
        agent.report()
    );
    assert!(
        pets(Duration::from_secs(3)) >= 1,
        "no pets after a backward step"
    );
}

/// 9: a YAML alias bomb (one anchored list referenced K times: K² nodes from ~5·K bytes) cost
/// 1.6 GB in `check` at 20 KB; as a drop-in plus SIGHUP it killed the running agent. Aliases
/// are refused before they are expanded, by `check` and by a reload, which keeps the running
/// config.
#[test]
fn issue_31_9_an_alias_bomb_is_refused_before_it_is_expanded() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-ab/telemetry");
    let agent = Agent::start(&dir, &pki, &broker, "node-ab");
    subscriber
        .wait_for(Duration::from_secs(10), |_| true)
        .expect("telemetry");
    let mut bomb = String::from("x0: &a0 [1,1,1,1,1,1,1,1,1,1]\n");
    for level in 1..12 {
        let refs = vec![format!("*a{}", level - 1); 10].join(",");
        bomb.push_str(&format!("x{level}: &a{level} [{refs}]\n"));
    }
    let bomb = format!("sensors: []\nbomb:\n  {}\n", bomb.replace('\n', "\n  "));
    dir.write("conf.d/50-bomb.yaml", &bomb);
    let config = dir.path().join("node-ab.yaml");
    let started = Instant::now();
    let output = crate::util::fieldagent(&["--config", config.to_str().unwrap(), "check"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(78));
    let stdout = crate::util::stdout(&output);
    assert!(
        stdout.contains("YAML aliases (*name) are not accepted"),
        "{stdout}"
    );
    assert!(stdout.contains("50-bomb.yaml"), "{stdout}");
    agent.signal(Signal::SIGHUP);
    agent.expect_log("Reload refused", Duration::from_secs(10));
    subscriber
        .wait_for(Duration::from_secs(5), |_| true)
        .expect("telemetry after the refused reload");
}

/// 10: a drop-in that is a symlink to a secret put the secret into findings and the journal
/// (14 of 14 lines of a private key). It is refused without a word of it; a secret pasted into
/// a drop-in shows as its length; a huge drop-in is refused unread.
#[test]
fn issue_31_10_findings_never_carry_a_secret() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let (_, key) = pki.issue("node-sk", "node-sk", false);
    let key_text = std::fs::read_to_string(&key).unwrap();
    let config = dir.config(
        "broker: { urls: [\"mqtts://127.0.0.1:1\"], tls: { ca_file: /etc/ssl/certs/ca-certificates.crt } }\nstate_dir: @DIR@/state\n",
    );
    std::fs::create_dir_all(dir.path().join("conf.d")).unwrap();
    std::os::unix::fs::symlink(&key, dir.path().join("conf.d/10-key.yaml")).unwrap();
    let shadow_like = "root:$y$j9T$Qmh0kQ2pCwQm9dsB5ylLm/$Jf1x0bN3lYqq7hd0dnQ9J0CR9pRzKpM5tS:19700:0:99999:7:::\n";
    dir.write(
        "conf.d/20-pasted.yaml",
        format!("sensors:\n  - name: {}", key_text.lines().nth(1).unwrap()),
    );
    dir.write("conf.d/30-shadow.yaml", shadow_like);
    dir.write("conf.d/40-notes.txt", "not a drop-in\n");
    let output = crate::util::fieldagent(&["--config", config.to_str().unwrap(), "check"]);
    assert_eq!(output.status.code(), Some(78));
    let text = format!(
        "{}{}",
        crate::util::stdout(&output),
        crate::util::stderr(&output)
    );
    assert!(text.contains("10-key.yaml: refused: a symlink"), "{text}");
    assert!(text.contains("40-notes.txt: not read"), "{text}");
    for line in key_text.lines().filter(|l| !l.starts_with("-----")) {
        for chunk in line.as_bytes().chunks(16) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            assert!(
                !text.contains(chunk),
                "a piece of the key ({chunk}) in:\n{text}"
            );
        }
    }
    assert!(!text.contains("$y$j9T$Qmh0"), "the hash in:\n{text}");
    assert!(!text.contains("Jf1x0bN3lYqq7hd0"), "the hash in:\n{text}");

    // Larger than a config may be: refused unread, at once.
    std::fs::remove_dir_all(dir.path().join("conf.d")).unwrap();
    let big = format!(
        "sensors:\n{}",
        "  - { name: s, file: /x }\n".repeat(200_000)
    );
    dir.write("conf.d/90-big.yaml", big);
    let started = Instant::now();
    let output = crate::util::fieldagent(&["--config", config.to_str().unwrap(), "check"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let text = crate::util::stdout(&output);
    assert!(text.contains("90-big.yaml: refused unread"), "{text}");
}

/// 11: a SIGHUP that arrives while a reload runs was dropped (the older config stayed, and
/// `systemctl reload` said success). The config file is a FIFO here, so the test decides when
/// each reload has read it: the second SIGHUP comes while the first reload waits.
#[test]
fn issue_31_11_a_sighup_during_a_reload_reloads_again() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-hh/alerts");
    let mut setup = Setup::new("node-hh", &broker);
    setup.top_extra = "alerts:\n  - { name: warm, sensor: cpu_temp, above: 60 }\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Starting.", Duration::from_secs(10));
    let path = dir.path().join("node-hh.yaml");
    let original = std::fs::read_to_string(&path).unwrap();
    let fifo = dir.path().join("fifo.tmp");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &path).unwrap();
    // Writes `text` to the config FIFO once the agent has opened it (a reload reads it).
    let feed = |text: &str| -> bool {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
            {
                Ok(mut fifo) => {
                    fifo.write_all(text.as_bytes()).unwrap();
                    return true;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return false,
            }
        }
    };
    agent.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    // The second SIGHUP comes while the first reload waits for the file.
    agent.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(feed(&original), "the first reload never read the config");
    agent.expect_log("Reloaded", Duration::from_secs(10));
    // The pending one reads it again: the threshold it brings is the one in force.
    assert!(
        feed(&original.replace("above: 60", "above: 40")),
        "the second SIGHUP was dropped: no reload read the config again:\n{}",
        agent.report()
    );
    let raised = subscriber
        .wait_for(Duration::from_secs(10), |m| {
            m.payload.contains(r#""alert":"warm""#)
        })
        .unwrap_or_else(|| panic!("the newer config is not in force:\n{}", agent.report()));
    assert!(raised.payload.contains(r#""threshold":40.0"#), "{raised:?}");
    std::fs::remove_file(&path).unwrap();
}

/// 12: a reload that moves `state_dir` split the state (outbox and ledger stayed, alert state
/// and status moved); one that changes the identity would have sent what was queued as the
/// other device. Both take a restart; the running config stays.
#[test]
fn issue_31_12_a_reload_that_moves_state_dir_or_changes_identity_is_refused() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let agent = Agent::start(&dir, &pki, &broker, "node-sd");
    agent.expect_log("Starting.", Duration::from_secs(10));
    Agent::edit_config(&dir, "node-sd", "state-node-sd", "state-elsewhere");
    agent.signal(Signal::SIGHUP);
    agent.expect_log("Reload refused", Duration::from_secs(10));
    assert!(
        agent.log().contains("state_dir: moving it from"),
        "{}",
        agent.log()
    );
    assert!(!dir.path().join("state-elsewhere").exists());
    Agent::edit_config(&dir, "node-sd", "state-elsewhere", "state-node-sd");

    // A new client ID by a reload: refused too.
    let path = dir.path().join("node-sd.yaml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{config}\nidentity: {{ client_id: node-other, match_certificate: false }}\n"),
    )
    .unwrap();
    agent.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("the client ID would change") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent
            .log()
            .contains("the client ID would change from node-sd to node-other"),
        "{}",
        agent.report()
    );
    // Started so, the agent is the new device: what the old one left in state_dir is set
    // aside, not sent as the new one's.
    drop(agent);
    let state = dir.path().join("state-node-sd");
    assert!(state.join("alerts.json").exists());
    let log = dir.path().join("restarted.log");
    let _restarted = Guard(
        Command::new(env!("CARGO_BIN_EXE_fieldagent"))
            .args(["--config", path.to_str().unwrap(), "run"])
            .env_remove("OPENSSL_CONF")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !said().contains("Starting.") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = said();
    assert!(
        text.contains("state_dir holds what was made as another client ID")
            && text.contains("previous=node-sd"),
        "{text}"
    );
    let aside = std::fs::read_dir(&state).unwrap().flatten().any(|entry| {
        entry
            .file_name()
            .to_string_lossy()
            .starts_with("alerts.json.as-node-sd-")
    });
    assert!(aside, "the old alert state was not set aside");
}

/// Kills the child process when dropped.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// 13: every remote `read` left one more thread blocked on a stuck sensor, for good (10 reads:
/// 6 -> 17 threads), and every reload blocked on it again. What is known stuck is shared by the
/// sampler, its successors after reloads, and `read`.
#[test]
fn issue_31_13_a_stuck_sensor_costs_one_thread_whatever_reads_it() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let sys = crate::util::fake_sysfs(&dir);
    dir.write("sys/class/hwmon/hwmon9/name", "stuckchip\n");
    mkfifo(&sys.join("class/hwmon/hwmon9/temp1_input"));
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-st/responses");
    let mut setup = Setup::new("node-st", &broker);
    setup.sensors_extra =
        "  - { name: stuck, hwmon: { chip: stuckchip, input: temp1 } }\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, setup);
    agent.expect_log("Sensor read stuck", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    let before = threads(agent.pid());
    for n in 0..10 {
        publish(
            &broker,
            &pki,
            "devices/node-st/commands/read",
            &format!(r#"{{"id":"r{n}"}}"#),
        );
        let answer = subscriber
            .wait_for(Duration::from_secs(15), |m| {
                m.payload.contains(&format!(r#""id":"r{n}""#))
            })
            .unwrap_or_else(|| panic!("read r{n} not answered:\n{}", agent.report()));
        assert!(answer.payload.contains("stuck"), "{answer:?}");
    }
    // Reloads that restart sampling (the interval changes each time).
    for n in 0..5 {
        let (from, to) = if n % 2 == 0 {
            ("interval_s: 0.2", "interval_s: 0.3")
        } else {
            ("interval_s: 0.3", "interval_s: 0.2")
        };
        Agent::edit_config(&dir, "node-st", from, to);
        agent.signal(Signal::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.log().matches("Reloaded.").count() <= n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            agent.log().matches("Reloaded.").count() > n,
            "{}",
            agent.report()
        );
        std::thread::sleep(Duration::from_millis(600));
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = threads(agent.pid());
    assert!(
        after <= before + 1,
        "threads {before} -> {after} after 10 reads and 5 reloads:\n{}",
        agent.report()
    );
}

/// 15: a `status.json` replaced by a FIFO hung `status`; messages on topics that are not
/// command topics gave a warning each (1 000 stray publishes, 1 000 lines).
#[test]
fn issue_31_15_status_never_waits_and_strays_are_said_once() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let fake = FakeBroker::start(&pki, vec![Behaviour::Stray { count: 1000 }]);
    let agent = Agent::start_with(&dir, &pki, Setup::at("node-sy", fake.url()));
    agent.expect_log("not a command topic", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        agent.log().matches("not a command topic").count(),
        1,
        "{}",
        agent.log()
    );
    drop(agent);
    let state = dir.path().join("state-node-sy");
    std::fs::remove_file(state.join("status.json")).unwrap();
    mkfifo(&state.join("status.json"));
    let config = dir.path().join("node-sy.yaml");
    let started = Instant::now();
    let output =
        crate::util::fieldagent(&["--config", config.to_str().unwrap(), "status", "--json"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(3));
}
