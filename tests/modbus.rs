//! Modbus against pymodbus (tests/modbus/server.py, from PyPI: an implementation we did not
//! write): over TCP on loopback, and over RTU through two pseudo-terminal pairs with a relay in
//! between that can drop or corrupt the server's answers. Shapes and exceptions through `read`,
//! a device that stops answering and comes back under the daemon (with mosquitto), writes and
//! their refusals, the RTU frame gap, and the config checks of shapes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::broker::{free_port, publish, Broker, BrokerPki, Subscriber};
use crate::daemon::{online, Agent, Setup};
use crate::util::{fieldagent, stderr, stdout, TestDir};

/// The Python of the venv `scripts/test` makes (target/interop/pymodbus).
fn python() -> PathBuf {
    let python =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/interop/pymodbus/bin/python");
    assert!(
        python.exists(),
        "{} is missing: ./scripts/test installs pymodbus there (python3 -m venv, then pip)",
        python.display()
    );
    python
}

/// pymodbus serving units 1 and 3; stopped by PID when dropped.
struct Server {
    child: Child,
}

impl Server {
    fn start(kind: &str, where_: &str) -> Server {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/modbus/server.py");
        let mut child = Command::new(python())
            .arg(script)
            .args([kind, where_])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pymodbus starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "pymodbus did not start");
        Server { child }
    }

    fn tcp() -> (Server, u16) {
        let port = free_port();
        (Server::start("tcp", &port.to_string()), port)
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn read_json(config: &std::path::Path) -> serde_json::Value {
    let output = fieldagent(&["--config", config.to_str().unwrap(), "read", "--json"]);
    serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|err| panic!("{err}: {}{}", stdout(&output), stderr(&output)))
}

const HEAD: &str = r#"broker: { urls: ["mqtts://127.0.0.1:1"], tls: { ca_file: /etc/ssl/certs/ca-certificates.crt } }
state_dir: "@DIR@/state"
"#;

#[test]
fn tcp_shapes_word_orders_and_an_exception_by_name() {
    let (_server, port) = Server::tcp();
    let dir = TestDir::new();
    let url = format!("tcp://127.0.0.1:{port}");
    let config = dir.config(&format!(
        r#"{HEAD}sensors:
  - {{ name: u16, modbus: {{ url: "{url}", table: holding, address: 0 }} }}
  - {{ name: i16, modbus: {{ url: "{url}", table: holding, address: 1, type: i16 }} }}
  - {{ name: u32, modbus: {{ url: "{url}", table: holding, address: 2, type: u32 }} }}
  - {{ name: i32, modbus: {{ url: "{url}", table: holding, address: 4, type: i32 }} }}
  - {{ name: f32, modbus: {{ url: "{url}", table: holding, address: 6, type: f32 }} }}
  - {{ name: f32_little, modbus: {{ url: "{url}", table: holding, address: 8, type: f32, word_order: little }} }}
  - {{ name: input, modbus: {{ url: "{url}", table: input, address: 3 }}, scale: 0.1, unit: bar }}
  - {{ name: coil, modbus: {{ url: "{url}", table: coil, address: 1 }} }}
  - {{ name: discrete, modbus: {{ url: "{url}", table: discrete, address: 1 }} }}
  - {{ name: beyond, modbus: {{ url: "{url}", table: holding, address: 60 }} }}
  - {{ name: next_to_beyond, modbus: {{ url: "{url}", table: holding, address: 49 }} }}
  - {{ name: unit3, modbus: {{ url: "{url}", unit: 3, table: holding, address: 0 }} }}
"#
    ));
    let reading = read_json(&config);
    let values = &reading["values"];
    for (name, expected) in [
        ("u16", 1234.0),
        ("i16", -100.0),
        ("u32", 65536.0),
        ("i32", -2.0),
        ("f32", 12.5),
        ("f32_little", 12.5),
        ("input", 10.3),
        ("coil", 1.0),
        ("discrete", 0.0),
        ("next_to_beyond", 49.0),
        ("unit3", 1234.0),
    ] {
        assert_eq!(values[name].as_f64(), Some(expected), "{name}: {reading}");
    }
    let beyond = reading["errors"]["beyond"].as_str().unwrap();
    assert_eq!(
        beyond,
        format!(
            "modbus {url} unit 1 holding 60 u16: the device answered exception illegal data address (2)"
        )
    );
    // `read` names the source once.
    let table = stdout(&fieldagent(&["--config", config.to_str().unwrap(), "read"]));
    assert!(table.contains("bar"), "{table}");
    assert_eq!(table.matches("holding 60").count(), 1, "{table}");
}

/// 64-bit values and the four byte orders, as a device packed them (pymodbus's unit 5, the
/// registers made by Python's struct): f64 in ABCD and CDAB, u64 in BADC, i64 in DCBA, f32 in
/// DCBA, and 2^53 (the largest integer a JSON number holds exactly).
#[test]
fn sixty_four_bit_values_and_the_four_byte_orders() {
    let (_server, port) = Server::tcp();
    let dir = TestDir::new();
    let url = format!("tcp://127.0.0.1:{port}");
    let config = dir.config(&format!(
        r#"{HEAD}sensors:
  - {{ name: f64_abcd, modbus: {{ url: "{url}", unit: 5, table: holding, address: 0, type: f64 }} }}
  - {{ name: f64_cdab, modbus: {{ url: "{url}", unit: 5, table: holding, address: 4, type: f64, byte_order: CDAB }} }}
  - {{ name: u64_badc, modbus: {{ url: "{url}", unit: 5, table: holding, address: 8, type: u64, byte_order: BADC }} }}
  - {{ name: i64_dcba, modbus: {{ url: "{url}", unit: 5, table: holding, address: 12, type: i64, byte_order: DCBA }} }}
  - {{ name: f32_dcba, modbus: {{ url: "{url}", unit: 5, table: holding, address: 16, type: f32, byte_order: DCBA }} }}
  - {{ name: u64_2_53, modbus: {{ url: "{url}", unit: 5, table: holding, address: 18, type: u64 }} }}
  - {{ name: f64_little, modbus: {{ url: "{url}", unit: 5, table: holding, address: 4, type: f64, word_order: little }} }}
"#
    ));
    let reading = read_json(&config);
    let values = &reading["values"];
    for (name, expected) in [
        ("f64_abcd", 1234.5678),
        ("f64_cdab", 1234.5678),
        ("u64_badc", 1_099_511_627_783.0),
        ("i64_dcba", -123_456_789_012.0),
        ("f32_dcba", 123_456.0),
        ("u64_2_53", 9_007_199_254_740_992.0),
        ("f64_little", 1234.5678),
    ] {
        assert_eq!(values[name].as_f64(), Some(expected), "{name}: {reading}");
    }
    assert!(
        reading["errors"].as_object().is_none_or(|e| e.is_empty()),
        "{reading}"
    );
}

/// A serial gateway in transparent mode (`rtuovertcp://`): RTU frames with their CRC over TCP,
/// pymodbus serving them; several units behind one connection, a 64-bit value, and a write.
#[test]
fn rtu_over_tcp_to_a_serial_gateway() {
    let port = free_port();
    let _server = Server::start("rtutcp", &port.to_string());
    let dir = TestDir::new();
    let url = format!("rtuovertcp://127.0.0.1:{port}");
    let config = dir.config(&format!(
        r#"{HEAD}sensors:
  - {{ name: u16, modbus: {{ url: "{url}", table: holding, address: 0 }} }}
  - {{ name: f32, modbus: {{ url: "{url}", table: holding, address: 6, type: f32 }} }}
  - {{ name: unit3, modbus: {{ url: "{url}", unit: 3, table: input, address: 3 }} }}
  - {{ name: f64, modbus: {{ url: "{url}", unit: 5, table: holding, address: 0, type: f64 }} }}
  - {{ name: beyond, modbus: {{ url: "{url}", table: holding, address: 60 }} }}
"#
    ));
    let reading = read_json(&config);
    let values = &reading["values"];
    for (name, expected) in [
        ("u16", 1234.0),
        ("f32", 12.5),
        ("unit3", 103.0),
        ("f64", 1234.5678),
    ] {
        assert_eq!(values[name].as_f64(), Some(expected), "{name}: {reading}");
    }
    assert_eq!(
        reading["errors"]["beyond"],
        format!("modbus {url} unit 1 holding 60 u16: the device answered exception illegal data address (2)"),
        "{reading}"
    );
}

/// Addresses 48 to 51 in one coalesced request would be refused (50 and 51 do not exist): the
/// line reads each part on its own, so only the sensors beyond the map fail.
#[test]
fn a_refused_coalesced_request_fails_only_its_wrong_parts() {
    let (_server, port) = Server::tcp();
    let dir = TestDir::new();
    let url = format!("tcp://127.0.0.1:{port}");
    let config = dir.config(&format!(
        r#"{HEAD}sensors:
  - {{ name: a48, modbus: {{ url: "{url}", table: input, address: 48 }} }}
  - {{ name: a49, modbus: {{ url: "{url}", table: input, address: 49 }} }}
  - {{ name: a50, modbus: {{ url: "{url}", table: input, address: 50 }} }}
  - {{ name: a51, modbus: {{ url: "{url}", table: input, address: 51 }} }}
"#
    ));
    let reading = read_json(&config);
    assert_eq!(reading["values"]["a48"].as_f64(), Some(148.0), "{reading}");
    assert_eq!(reading["values"]["a49"].as_f64(), Some(149.0), "{reading}");
    for name in ["a50", "a51"] {
        assert!(
            reading["errors"][name]
                .as_str()
                .unwrap()
                .ends_with("illegal data address (2)"),
            "{reading}"
        );
    }
}

/// The daemon with mosquitto: a device that stops answering (pymodbus stopped with SIGSTOP:
/// its socket still accepts, nothing answers) is an error for its sensors within its timeout
/// and raises `sensor_fault`, the other sensor keeps its pace, and the device is read again
/// when it answers again, without a restart.
#[test]
fn a_device_that_stops_answering_fails_alone_and_is_read_again_when_it_answers() {
    let (server, port) = Server::tcp();
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let telemetry = Subscriber::start(&broker, &pki, "devices/node-m/telemetry");
    let alerts = Subscriber::start(&broker, &pki, "devices/node-m/alerts");
    let mut setup = Setup::new("node-m", &broker);
    let url = format!("tcp://127.0.0.1:{port}");
    setup.sensors_extra = format!(
        "  - {{ name: meter, modbus: {{ url: \"{url}\", table: holding, address: 6, type: f32, timeout_s: 0.3 }} }}\n  \
         - {{ name: flow, modbus: {{ url: \"{url}\", table: input, address: 0, timeout_s: 0.3 }} }}\n"
    );
    let agent = Agent::start_with(&dir, &pki, setup);
    let reading = |m: &crate::broker::Received| -> serde_json::Value {
        serde_json::from_str(&m.payload).unwrap()
    };
    telemetry
        .wait_for(Duration::from_secs(15), |m| {
            let t = reading(m);
            t["values"]["meter"] == 12.5 && t["values"]["flow"] == 100.0
        })
        .unwrap_or_else(|| panic!("no Modbus values; agent log:\n{}", agent.log()));

    server.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let failed = telemetry
        .wait_for(Duration::from_secs(5), |m| {
            reading(m)["errors"]["meter"].is_string()
        })
        .unwrap_or_else(|| panic!("no error for the silent device; log:\n{}", agent.log()));
    let error = reading(&failed)["errors"]["meter"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("no answer within 0.3 s"), "{error}");
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "the error came {:?} after the device went silent",
        stopped.elapsed()
    );
    // While it stays silent, telemetry keeps its pace (0.2 s) with the other sensor's values:
    // the silent device is not waited for.
    let window = Instant::now();
    let mut passes = 0;
    while window.elapsed() < Duration::from_secs(3) {
        if let Some(m) = telemetry.wait_for(Duration::from_secs(1), |_| true) {
            let t = reading(&m);
            assert!(t["values"]["cpu_temp"].is_number(), "{t}");
            assert!(t["errors"]["meter"].is_string(), "{t}");
            passes += 1;
        }
    }
    assert!(
        passes >= 11,
        "{passes} passes in 3 s at 0.2 s with a silent device; log:\n{}",
        agent.log()
    );
    alerts
        .wait_for(Duration::from_secs(5), |m| {
            m.payload
                .contains(r#""alert":"sensor_fault","state":"raised""#)
                && m.payload.contains(r#""sensor":"meter""#)
        })
        .unwrap_or_else(|| panic!("no sensor_fault for the meter; log:\n{}", agent.log()));

    server.signal(Signal::SIGCONT);
    telemetry
        .wait_for(Duration::from_secs(10), |m| {
            let t = reading(m);
            t["values"]["meter"] == 12.5 && t["errors"]["meter"].is_null()
        })
        .unwrap_or_else(|| panic!("the device was not read again; log:\n{}", agent.log()));
    alerts
        .wait_for(Duration::from_secs(5), |m| {
            m.payload
                .contains(r#""alert":"sensor_fault","state":"cleared""#)
                && m.payload.contains(r#""sensor":"meter""#)
        })
        .expect("sensor_fault cleared");
}

/// Commands to a coil and a holding register: done and read back through a sensor on the same
/// device; a value outside the allow-list refused before anything is sent; a register the
/// device does not have answered with the exception by name.
#[test]
fn writes_are_answered_with_what_the_device_said() {
    let (_server, port) = Server::tcp();
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let responses = Subscriber::start(&broker, &pki, "devices/node-w/responses");
    let telemetry = Subscriber::start(&broker, &pki, "devices/node-w/telemetry");
    let status = Subscriber::start(&broker, &pki, "devices/node-w/status");
    let url = format!("tcp://127.0.0.1:{port}");
    let mut setup = Setup::new("node-w", &broker);
    setup.sensors_extra = format!(
        "  - {{ name: pump_state, modbus: {{ url: \"{url}\", table: coil, address: 4 }} }}\n  \
         - {{ name: setpoint_now, modbus: {{ url: \"{url}\", table: holding, address: 20, type: i32 }} }}\n"
    );
    setup.top_extra = format!(
        "actuators:\n  \
         - {{ name: pump, modbus: {{ url: \"{url}\", table: coil, address: 4 }}, values: [\"0\", \"1\"] }}\n  \
         - {{ name: setpoint, modbus: {{ url: \"{url}\", table: holding, address: 20, type: i32 }}, values: [\"-5\", \"70000\"] }}\n  \
         - {{ name: nowhere, modbus: {{ url: \"{url}\", table: holding, address: 60 }}, values: [\"1\"] }}\n"
    );
    let agent = Agent::start_with(&dir, &pki, setup);
    online(&status, "node-w", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("not online; log:\n{}", agent.log()));
    let send = |name: &str, payload: &str| {
        publish(
            &broker,
            &pki,
            &format!("devices/node-w/commands/{name}"),
            payload,
        )
    };
    let response = |id: &str| -> serde_json::Value {
        let m = responses
            .wait_for(Duration::from_secs(10), |m| m.payload.contains(id))
            .unwrap_or_else(|| panic!("no answer to {id}; log:\n{}", agent.log()));
        serde_json::from_str(&m.payload).unwrap()
    };

    send("pump", r#"{"id":"w1","value":"1"}"#);
    let answer = response("w1");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(
        answer["device"], "unit 1 acknowledged the write of coil 4",
        "{answer}"
    );
    send("setpoint", r#"{"id":"w2","value":"70000"}"#);
    let answer = response("w2");
    assert_eq!(answer["ok"], true, "{answer}");
    telemetry
        .wait_for(Duration::from_secs(10), |m| {
            let t: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
            t["values"]["pump_state"] == 1.0 && t["values"]["setpoint_now"] == 70000.0
        })
        .unwrap_or_else(|| panic!("the writes did not reach the device; log:\n{}", agent.log()));
    send("setpoint", r#"{"id":"w3","value":"-5"}"#);
    assert_eq!(response("w3")["ok"], true);
    telemetry
        .wait_for(Duration::from_secs(10), |m| {
            let t: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
            t["values"]["setpoint_now"] == -5.0
        })
        .expect("a negative i32 written as two registers, big word order");

    send("pump", r#"{"id":"w4","value":"2"}"#);
    let answer = response("w4");
    assert_eq!(answer["ok"], false);
    assert_eq!(
        answer["error"], "value \"2\" is not allowed; pump accepts 0, 1",
        "{answer}"
    );
    send("nowhere", r#"{"id":"w5","value":"1"}"#);
    let answer = response("w5");
    assert_eq!(answer["ok"], false);
    assert_eq!(
        answer["error"],
        format!(
            "modbus {url} unit 1 holding 60 u16: the device answered exception illegal data address (2)"
        ),
        "{answer}"
    );
}

/// A relay between two pseudo-terminal pairs: the agent's end and pymodbus's end. It passes
/// bytes both ways, drops or corrupts the server's answers on demand, and notes when each chunk
/// passed, for the frame gap.
struct Relay {
    /// The agent opens this.
    agent_tty: PathBuf,
    /// pymodbus opens this.
    server_tty: PathBuf,
    mode: Arc<AtomicU8>,
    log: Arc<Mutex<Vec<(Instant, bool, usize)>>>,
    /// The slave ends, held open so their raw settings stay.
    _slaves: Vec<OwnedFd>,
}

const PASS: u8 = 0;
const DROP: u8 = 1;
const CORRUPT: u8 = 2;

impl Relay {
    fn start() -> Relay {
        let a = nix::pty::openpty(None, None).unwrap();
        let b = nix::pty::openpty(None, None).unwrap();
        for fd in [&a.slave, &b.slave] {
            let mut raw = nix::sys::termios::tcgetattr(fd).unwrap();
            nix::sys::termios::cfmakeraw(&mut raw);
            nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, &raw).unwrap();
        }
        let name =
            |fd: &OwnedFd| std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let (agent_tty, server_tty) = (name(&a.slave), name(&b.slave));
        let mode = Arc::new(AtomicU8::new(PASS));
        let log = Arc::new(Mutex::new(Vec::new()));
        let a_master = std::fs::File::from(a.master);
        let b_master = std::fs::File::from(b.master);
        // Requests: agent -> server, always passed.
        {
            let (mut from, mut to) = (a_master.try_clone().unwrap(), b_master.try_clone().unwrap());
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock().unwrap().push((Instant::now(), true, n));
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
        // Answers: server -> agent, as the mode says.
        {
            let (mut from, mut to) = (b_master, a_master);
            let (mode, log) = (Arc::clone(&mode), Arc::clone(&log));
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    match mode.load(Ordering::SeqCst) {
                        DROP => continue,
                        CORRUPT => buf[n - 1] ^= 0xFF,
                        _ => {}
                    }
                    log.lock().unwrap().push((Instant::now(), false, n));
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
        Relay {
            agent_tty,
            server_tty,
            mode,
            log,
            _slaves: vec![a.slave, b.slave],
        }
    }
}

#[test]
fn rtu_through_a_pty_silence_a_bad_crc_and_the_frame_gap() {
    let relay = Relay::start();
    let _server = Server::start("rtu", relay.server_tty.to_str().unwrap());
    let dir = TestDir::new();
    let url = format!(
        "rtu://{}?baud=19200&parity=N&stop=1",
        relay.agent_tty.display()
    );
    let config = dir.config(&format!(
        r#"{HEAD}sensors:
  - {{ name: u16, modbus: {{ url: "{url}", unit: 1, table: holding, address: 0, timeout_s: 0.5 }} }}
  - {{ name: f32, modbus: {{ url: "{url}", unit: 1, table: holding, address: 6, type: f32, timeout_s: 0.5 }} }}
  - {{ name: input, modbus: {{ url: "{url}", unit: 3, table: input, address: 7, timeout_s: 0.5 }} }}
  - {{ name: coil, modbus: {{ url: "{url}", unit: 3, table: coil, address: 3, timeout_s: 0.5 }} }}
"#
    ));
    let reading = read_json(&config);
    assert_eq!(reading["values"]["u16"].as_f64(), Some(1234.0), "{reading}");
    assert_eq!(reading["values"]["f32"].as_f64(), Some(12.5), "{reading}");
    assert_eq!(
        reading["values"]["input"].as_f64(),
        Some(107.0),
        "{reading}"
    );
    assert_eq!(reading["values"]["coil"].as_f64(), Some(1.0), "{reading}");

    // One transaction at a time, and at least 3.5 characters of silence (11 bits each at 19200
    // baud: 2.0 ms) between an answer and the next request.
    let log = relay.log.lock().unwrap().clone();
    let mut last_answer: Option<Instant> = None;
    let mut gaps = Vec::new();
    let mut requests = 0;
    for (at, request, _) in &log {
        if *request {
            if let Some(answered) = last_answer.take() {
                gaps.push(at.duration_since(answered));
            }
            requests += 1;
        } else {
            last_answer = Some(*at);
        }
    }
    assert!(requests >= 3, "{log:?}");
    assert!(!gaps.is_empty(), "{log:?}");
    for gap in &gaps {
        assert!(*gap >= Duration::from_micros(2000), "gaps {gaps:?}");
    }

    relay.mode.store(DROP, Ordering::SeqCst);
    let started = Instant::now();
    let reading = read_json(&config);
    for name in ["u16", "f32", "input", "coil"] {
        let error = reading["errors"][name].as_str().unwrap_or_default();
        assert!(
            error.contains("no answer within 0.5 s"),
            "{name}: {reading}"
        );
    }
    // Each unit costs its line one timeout, not one per request.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );

    relay.mode.store(CORRUPT, Ordering::SeqCst);
    let reading = read_json(&config);
    let error = reading["errors"]["u16"].as_str().unwrap_or_default();
    assert!(error.contains("answer with a bad CRC"), "{reading}");

    relay.mode.store(PASS, Ordering::SeqCst);
    let reading = read_json(&config);
    assert_eq!(reading["values"]["u16"].as_f64(), Some(1234.0), "{reading}");
}

#[test]
fn check_refuses_shapes_that_cannot_be() {
    let dir = TestDir::new();
    let config = dir.config(&format!(
        r#"{HEAD}sensors:
  - {{ name: a, modbus: {{ url: "tcp://127.0.0.1", table: holding, address: 65535, type: u32 }} }}
  - {{ name: b, modbus: {{ url: "tcp://127.0.0.1", table: coil, address: 1, type: f32 }} }}
  - {{ name: c, modbus: {{ url: "tcp://127.0.0.1", table: holding, address: 1, word_order: little }} }}
  - {{ name: d, modbus: {{ url: "rtu:///dev/ttyUSB0?baud=9600", unit: 0, table: input, address: 1 }} }}
  - {{ name: e, modbus: {{ url: "rtu:///dev/ttyUSB0?baud=19200", table: input, address: 2 }} }}
  - {{ name: f, modbus: {{ url: "udp://127.0.0.1", table: input, address: 2 }} }}
  - {{ name: g, modbus: {{ url: "tcp://127.0.0.1", table: input, address: 2, timeout_s: 10 }} }}
  - {{ name: h, modbus: {{ url: "tcp://127.0.0.1", table: register, address: 2 }} }}
  - {{ name: i, gpio: {{ chip: gpiochip0, line: 17, debounce_ms: 5 }} }}
  - {{ name: o, modbus: {{ url: "tcp://127.0.0.1", table: holding, address: 3, type: f64, byte_order: BADC, word_order: little }} }}
  - {{ name: p, modbus: {{ url: "tcp://127.0.0.1", table: holding, address: 65533, type: u64 }} }}
  - {{ name: q, modbus: {{ url: "tcp://127.0.0.1", table: holding, address: 3, type: i64, byte_order: ABDC }} }}
actuators:
  - {{ name: j, modbus: {{ url: "tcp://127.0.0.1", table: input, address: 1 }}, values: ["1"] }}
  - {{ name: k, modbus: {{ url: "tcp://127.0.0.1", table: holding, address: 1 }}, values: ["70000"] }}
  - {{ name: l, modbus: {{ url: "tcp://127.0.0.1", unit: 0, table: coil, address: 1 }}, values: ["2"] }}
  - {{ name: m, gpio: {{ chip: gpiochip0, line: 17 }}, values: ["high"] }}
  - {{ name: n, file: /sys/class/leds/x/brightness, gpio: {{ chip: gpiochip0, line: 3 }}, values: ["1"] }}
"#
    ));
    let output = fieldagent(&["--config", config.to_str().unwrap(), "check"]);
    assert_eq!(output.status.code(), Some(78), "{}", stdout(&output));
    let text = format!("{}{}", stdout(&output), stderr(&output));
    for expected in [
        "sensors[0].modbus.address: a u32 needs 2 registers from 65535, past the last address 65535",
        "sensors[1].modbus.type: a coil is one bit (read as 0 or 1)",
        "sensors[2].modbus.word_order: word_order orders the registers of a value of two or four (u32, i32, f32, u64, i64, f64); found it with u16",
        "sensors[9].modbus.word_order: word_order little means byte_order CDAB, but byte_order says BADC: give one of them",
        "sensors[10].modbus.address: a u64 needs 4 registers from 65533, past the last address 65535",
        "sensors[11].modbus.byte_order",
        "sensors[3].modbus.unit: expected a unit 1..=247 on a serial line, found 0",
        "sensors[4].modbus.url: /dev/ttyUSB0 is already used as rtu:///dev/ttyUSB0?baud=9600&parity=E&data=8&stop=1 at sensors[3].modbus.url",
        "sensors[5].modbus.url: expected tcp://HOST[:PORT], rtuovertcp://HOST:PORT or rtu:///dev/DEVICE",
        "sensors[6].modbus.timeout_s: expected 0.05 to 4 seconds, found 10",
        "sensors[7].modbus.table",
        "sensors[8].gpio.debounce_ms: debounce_ms applies to edges",
        "actuators[0].modbus.table: expected coil or holding",
        "actuators[1].values[0]: expected a whole number 0..=65535 for a u16 register, found \"70000\"",
        "actuators[2].values[0]: expected 0, 1, true, false, on or off for a coil, found \"2\"",
        "actuators[2].modbus.unit: unit 0 is a broadcast",
        "actuators[3].gpio: line 17 of gpiochip0 is already used at sensors[8].gpio",
        "actuators[3].values[0]: expected 0, 1, true, false, on or off for a GPIO line, found \"high\"",
        "actuators[4]: expected exactly one target key (file, gpio, modbus), found file and gpio",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
