//! The system test: fieldagent on a real kernel with systemd as PID 1, installed from its .deb,
//! its power cut for real. A Debian 12 guest (scripts/system-image) boots under qemu's software
//! emulation; the harness drives it through qemu-guest-agent over virtio-serial (no network
//! login) and gives it exactly one network peer: the test broker, through user-mode networking
//! with `restrict=on` and a forward of 10.0.2.100:8883 to a proxy on the host's loopback.
//!
//! Scenarios, each printing a verdict and its figures, and all of them written to
//! `bench/runs/<date>-<host>/system-test.md`:
//! - install: `apt install ./fieldagent.deb` before provisioning leaves the unit active (waiting),
//!   not failed; provisioning (certificates and a drop-in) brings it online at the broker, with a
//!   live STATUS=;
//! - i2c: i2c-stub at 0x48 programmed as a TMP102, read through the real /dev/i2c-N; the PC
//!   chipset's SMBus-only adapter answers with a missing ACK, not "Operation not supported";
//! - watchdog: the agent frozen with SIGSTOP is killed and restarted by systemd, the broker sees
//!   the will, then the new online status;
//! - reboot: the unit comes back and online after `systemctl reboot`;
//! - power cut: an alert toggling five times a second, the qemu process killed with SIGKILL at a
//!   random moment (for the guest, a power cut: its page cache is gone; qemu's `cache=writeback`
//!   turns a guest flush into an fdatasync of the image file), booted again, N times, every
//!   second cycle with the broker behind a proxy that accepts connections and never answers (the
//!   connects hang); then drained: the alert ids' counter must have no gap;
//! - modbus: a second UART (ttyS1, the kernel's 8250 driver) whose other end is a pty on the
//!   host with pymodbus serving RTU on it; a drop-in adds a sensor on /dev/ttyS1 and the service,
//!   as its own user in its sandbox (group dialout, `DeviceAllow=char-ttyS`), publishes its value;
//! - upgrade and purge: a newer .deb keeps the edited conffile and the state; purge removes the
//!   state and the user and keeps the provisioned key.
//!
//!   cargo test --release --test system -- [--cycles N] [--only a,b]   (scripts/system-test)

#[allow(dead_code)]
#[path = "../broker.rs"]
mod broker;
#[allow(dead_code)]
#[path = "../proxy.rs"]
mod proxy;
#[allow(dead_code)]
#[path = "../util.rs"]
mod util;

mod operations;
mod repo;
mod sparkplug;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use broker::{Broker, BrokerPki, Subscriber};
use proxy::{Mode, Proxy};
use repo::{Repo, REPO_IN_GUEST};
use util::TestDir;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The broker as the guest sees it.
const BROKER_IN_GUEST: &str = "10.0.2.100";
const ID: &str = "vm-node-1";

fn main() {
    let mut args = std::env::args().skip(1);
    let mut cycles = 20;
    let mut update_cuts = 10;
    let mut short = false;
    let mut only: Option<Vec<String>> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cycles" => {
                cycles = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--cycles N")
            }
            "--update-cuts" => {
                update_cuts = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--update-cuts N")
            }
            "--short" => short = true,
            "--only" => {
                only = Some(
                    args.next()
                        .expect("--only a,b")
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                )
            }
            _ => {}
        }
    }
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    let mut report = Report::default();
    let mut run = Run::new();
    run.install(&mut report);
    if wanted("i2c") {
        run.i2c(&mut report);
    }
    if wanted("watchdog") {
        run.watchdog(&mut report);
    }
    if wanted("reboot") {
        run.reboot(&mut report);
    }
    if wanted("modbus") {
        run.modbus(&mut report);
    }
    if wanted("powercut") {
        run.power_cuts(cycles, &mut report);
    }
    if wanted("sparkplug") {
        run.sparkplug_outage(if short { 2 } else { 3 }, &mut report);
    }
    if wanted("update") || wanted("operations") {
        if run.vm.is_none() {
            run.boot();
        }
        run.enable_operations();
    }
    if wanted("update") {
        run.updates(update_cuts, short, &mut report);
    }
    if wanted("operations") {
        run.operations(&mut report);
    }
    if wanted("tpm") {
        run.tpm(&mut report);
    }
    if wanted("offline") {
        run.offline_boot(&mut report);
    }
    if wanted("upgrade") {
        run.upgrade_and_purge(&mut report);
    }
    // Everything the run started stops (by PID, in its fixtures' Drop) before the report may
    // end the process with a failure.
    drop(run);
    report.finish(only.as_deref());
}

/// Verdicts and figures, printed as they come and written at the end.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    failed: usize,
}

impl Report {
    fn figure(&mut self, what: &str, value: impl std::fmt::Display) {
        let line = format!("- {what}: {value}");
        println!("{line}");
        self.lines.push(line);
    }

    /// A table of figures under `title`.
    fn table(&mut self, title: &str, header: &str, rows: Vec<String>) {
        let text = format!("\n{title}:\n\n{header}\n{}\n", rows.join("\n"));
        println!("{text}");
        self.lines.push(text);
    }

    fn verdict(&mut self, scenario: &str, ok: bool, detail: impl std::fmt::Display) {
        let line = format!(
            "- **{scenario}: {}** {detail}",
            if ok { "PASS" } else { "FAIL" }
        );
        println!("{line}");
        self.lines.push(line);
        if !ok {
            self.failed += 1;
        }
    }

    /// Writes the report: `system-test.md` for a whole run, `system-test-<scenarios>.md` for one
    /// of some scenarios only (`--only`), so a partial run never overwrites the whole one's.
    fn finish(self, only: Option<&[String]>) {
        let host = Command::new("hostname").arg("-s").output().ok();
        let host = host
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let date = Command::new("date").arg("+%F").output().unwrap();
        let date = String::from_utf8_lossy(&date.stdout).trim().to_owned();
        let commit = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(ROOT)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let dir = Path::new(ROOT).join(format!("bench/runs/{date}-{host}"));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "# System test on {host}, {date}\n\n- command: `./scripts/system-test {}`\n- commit: {commit}\n- guest: Debian 12, linux-image-amd64, systemd, qemu-system-x86_64 TCG (1 vCPU, 768 MiB), `cache=writeback`\n\n{}\n",
            std::env::args().skip(1).collect::<Vec<_>>().join(" "),
            self.lines.join("\n")
        );
        let name = match only {
            Some(scenarios) => format!("system-test-{}.md", scenarios.join("-")),
            None => "system-test.md".to_owned(),
        };
        std::fs::write(dir.join(&name), text).unwrap();
        println!("written: {}", dir.join(&name).display());
        if self.failed > 0 {
            eprintln!("{} scenario(s) failed", self.failed);
            std::process::exit(1);
        }
    }
}

/// qemu-guest-agent's protocol: one JSON command per line, one answer per line.
struct Agent {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Agent {
    /// Connects and synchronises; the guest agent answers once the guest has booted that far.
    fn connect(path: &Path, within: Duration) -> Agent {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(stream) = UnixStream::connect(path) {
                stream
                    .set_read_timeout(Some(Duration::from_secs(3)))
                    .unwrap();
                let mut agent = Agent {
                    writer: stream.try_clone().unwrap(),
                    reader: BufReader::new(stream),
                    next_id: fastrand::u64(1..1 << 40),
                };
                while Instant::now() < deadline {
                    if agent.sync() {
                        return agent;
                    }
                }
            }
            assert!(Instant::now() < deadline, "the guest agent never answered");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn sync(&mut self) -> bool {
        self.next_id += 1;
        let id = self.next_id;
        let line = json!({ "execute": "guest-sync", "arguments": { "id": id } }).to_string();
        if writeln!(self.writer, "{line}").is_err() {
            return false;
        }
        let mut answer = String::new();
        loop {
            answer.clear();
            match self.reader.read_line(&mut answer) {
                Ok(0) | Err(_) => return false,
                Ok(_) => {
                    let text = answer.trim_start_matches('\u{ff}');
                    if let Ok(value) = serde_json::from_str::<Value>(text) {
                        if value["return"] == id {
                            return true;
                        }
                    }
                }
            }
        }
    }

    fn call(&mut self, command: &str, arguments: Value) -> Value {
        let line = json!({ "execute": command, "arguments": arguments }).to_string();
        writeln!(self.writer, "{line}").unwrap();
        let mut answer = String::new();
        loop {
            answer.clear();
            match self.reader.read_line(&mut answer) {
                Ok(0) => panic!("the guest agent went away during {command}"),
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => panic!("{command}: {err}"),
            }
            let value: Value = serde_json::from_str(answer.trim()).unwrap_or(Value::Null);
            if let Some(error) = value.get("error") {
                panic!("{command}: {error}");
            }
            if let Some(result) = value.get("return") {
                return result.clone();
            }
        }
    }

    /// Runs `script` with /bin/sh in the guest; (exit code, stdout, stderr).
    fn sh(&mut self, script: &str, within: Duration) -> (i64, String, String) {
        let started = self.call(
            "guest-exec",
            json!({ "path": "/bin/sh", "arg": ["-c", script], "capture-output": true }),
        );
        let pid = started["pid"].as_i64().unwrap();
        let deadline = Instant::now() + within;
        loop {
            let status = self.call("guest-exec-status", json!({ "pid": pid }));
            if status["exited"] == true {
                let text = |key: &str| {
                    status[key]
                        .as_str()
                        .map(|b| {
                            String::from_utf8_lossy(
                                &base64::engine::general_purpose::STANDARD
                                    .decode(b)
                                    .unwrap_or_default(),
                            )
                            .into_owned()
                        })
                        .unwrap_or_default()
                };
                return (
                    status["exitcode"].as_i64().unwrap_or(-1),
                    text("out-data"),
                    text("err-data"),
                );
            }
            assert!(
                Instant::now() < deadline,
                "guest command timed out: {script}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `sh`, which must succeed; its stdout.
    fn ok(&mut self, script: &str) -> String {
        let (code, out, err) = self.sh(script, Duration::from_secs(300));
        assert_eq!(code, 0, "{script}\n{out}{err}");
        out
    }

    fn write_file(&mut self, path: &str, bytes: &[u8]) {
        let handle = self.call("guest-file-open", json!({ "path": path, "mode": "w" }));
        for chunk in bytes.chunks(48 * 1024) {
            let data = base64::engine::general_purpose::STANDARD.encode(chunk);
            self.call(
                "guest-file-write",
                json!({ "handle": handle, "buf-b64": data }),
            );
        }
        self.call("guest-file-close", json!({ "handle": handle }));
        // qemu-ga creates files writable by everyone (its umask is 0); the agent refuses such
        // a drop-in, as an operator's would be.
        self.ok(&format!("chmod go-w '{path}'"));
    }
}

/// A running guest: the qemu process (killed when dropped) and its agent.
struct Vm {
    child: Child,
    agent: Agent,
    booted_in: Duration,
    /// qemu's QMP socket.
    qmp: PathBuf,
}

impl Vm {
    fn boot(dir: &Path, disk: &Path, forward_port: u16, repo_port: u16, tpm: &Path) -> Vm {
        Vm::boot_with(dir, disk, forward_port, repo_port, tpm, true)
    }

    /// `boot`, with the network cable in or out from the start.
    fn boot_with(
        dir: &Path,
        disk: &Path,
        forward_port: u16,
        repo_port: u16,
        tpm: &Path,
        plugged: bool,
    ) -> Vm {
        let system = Path::new(ROOT).join("target/system");
        let socket = dir.join(format!("qga-{}.sock", fastrand::u32(..)));
        let qmp = dir.join(format!("qmp-{}.sock", fastrand::u32(..)));
        let started = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "pc,accel=tcg", "-m", "768", "-smp", "1"])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-serial")
            .arg(format!("file:{}", dir.join("console.log").display()))
            .arg("-kernel")
            .arg(system.join("vmlinuz"))
            .arg("-initrd")
            .arg(system.join("initrd.img"))
            .args([
                "-append",
                "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet systemd.show_status=0",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,cache=writeback",
                disk.display()
            ))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,restrict=on,guestfwd=tcp:{BROKER_IN_GUEST}:8883-cmd:socat STDIO TCP:127.0.0.1:{forward_port},guestfwd=tcp:{REPO_IN_GUEST}:80-cmd:socat STDIO TCP:127.0.0.1:{repo_port}"
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=qga0",
                socket.display()
            ))
            // ttyS1 in the guest; its other end a pty on the host, named in qemu.log.
            .args(["-chardev", "pty,id=rtu"])
            .args(["-device", "isa-serial,chardev=rtu"])
            .args(["-device", "virtio-serial"])
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ])
            // A TPM 2.0 on the guest's ISA bus (tpm_tis), backed by swtpm on the host.
            .arg("-chardev")
            .arg(format!("socket,id=tpm0,path={}", tpm.display()))
            .args(["-tpmdev", "emulator,id=tpm0,chardev=tpm0"])
            .args(["-device", "tpm-tis,tpmdev=tpm0"])
            .stdin(Stdio::null())
            // qemu names the pty of ttyS1 on stdout.
            .stdout(std::fs::File::create(dir.join("qemu.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("qemu.log")).unwrap())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/system-image installs it)");
        if !plugged {
            Vm::set_link(&qmp, false);
        }
        let agent = Agent::connect(&socket, Duration::from_secs(300));
        Vm {
            child,
            agent,
            booted_in: started.elapsed(),
            qmp,
        }
    }

    /// The guest's network cable, plugged in or out (qemu's `set_link` over QMP).
    fn set_link(qmp: &Path, up: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(qmp) {
                Ok(stream) => break stream,
                Err(err) => {
                    assert!(Instant::now() < deadline, "qmp: {err}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap(); // the greeting
        for command in [
            json!({ "execute": "qmp_capabilities" }),
            json!({ "execute": "set_link", "arguments": { "name": "n0", "up": up } }),
        ] {
            writeln!(writer, "{command}").unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let answer: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                assert!(answer.get("error").is_none(), "qmp {command}: {line}");
                if answer.get("return").is_some() {
                    break;
                }
            }
        }
    }

    /// The power cut: SIGKILL of qemu, nothing flushed.
    fn cut(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything of one run: the broker, the proxy in front of it, the guest disk, the observer.
/// Dropped before the report is written (which may exit the process): its fixtures stop what
/// they started.
struct Run {
    dir: TestDir,
    pki: BrokerPki,
    /// Kept running until the run ends.
    broker: Broker,
    proxy: Proxy,
    disk: PathBuf,
    vm: Option<Vm>,
    alerts: Subscriber,
    status: Subscriber,
    /// `devices/<id>/operations/#`: the operations' states and log chunks.
    op_states: Subscriber,
    /// The guest's apt repository.
    repo: Repo,
    /// The guest's TPM.
    tpm: Swtpm,
}

impl Run {
    fn new() -> Run {
        let status = Command::new(Path::new(ROOT).join("scripts/system-image"))
            .status()
            .unwrap();
        assert!(status.success(), "scripts/system-image failed");
        let dir = TestDir::new();
        let pki = BrokerPki::new(&dir);
        // The broker's certificate names the address the guest reaches it at.
        pki.issue_server(&["127.0.0.1", BROKER_IN_GUEST]);
        let broker = Broker::start(&pki);
        let proxy = Proxy::start(broker.port, Mode::Forward);
        let disk = dir.path().join("disk.raw");
        let copied = Command::new("cp")
            .arg("--sparse=always")
            .arg(Path::new(ROOT).join("target/system/image.raw"))
            .arg(&disk)
            .status()
            .unwrap();
        assert!(copied.success());
        let alerts = Subscriber::start_as(
            &broker,
            &pki,
            &format!("devices/{ID}/alerts"),
            1,
            "alert-observer",
        );
        let status = Subscriber::start_as(
            &broker,
            &pki,
            &format!("devices/{ID}/status"),
            1,
            "status-observer",
        );
        let op_states = Subscriber::start_as(
            &broker,
            &pki,
            &format!("devices/{ID}/operations/#"),
            1,
            "operations-observer",
        );
        let repo = Repo::new(dir.path());
        let tpm = Swtpm::start(dir.path());
        Run {
            dir,
            pki,
            broker,
            proxy,
            disk,
            vm: None,
            alerts,
            status,
            op_states,
            repo,
            tpm,
        }
    }

    fn boot(&mut self) -> Duration {
        self.vm = None;
        self.tpm.ensure(self.dir.path());
        let vm = Vm::boot(
            self.dir.path(),
            &self.disk,
            self.proxy.port,
            self.repo.port,
            &self.tpm.socket,
        );
        let took = vm.booted_in;
        self.vm = Some(vm);
        took
    }

    /// Boots with the guest's cable out from the first instant (qemu's link set down before the
    /// guest's kernel is far enough to look); the cable goes in with `Vm::set_link`.
    fn boot_unplugged(&mut self) -> (Duration, PathBuf) {
        self.vm = None;
        self.tpm.ensure(self.dir.path());
        let vm = Vm::boot_with(
            self.dir.path(),
            &self.disk,
            self.proxy.port,
            self.repo.port,
            &self.tpm.socket,
            false,
        );
        let (took, qmp) = (vm.booted_in, vm.qmp.clone());
        self.vm = Some(vm);
        (took, qmp)
    }

    /// A boot without network: the agent starts at once (no wait for network-online.target),
    /// samples and raises an alert locally, and delivers it when the cable goes in.
    fn offline_boot(&mut self, report: &mut Report) {
        if self.vm.is_none() {
            self.boot();
        }
        let _ = self.guest().sh("sync", Duration::from_secs(30));
        self.vm.take().unwrap().cut();
        let (booted, qmp) = self.boot_unplugged();
        let guest = self.guest();
        // How long after the kernel started the unit became active, and what it said then.
        let active = guest.ok(
            "for i in $(seq 60); do systemctl is-active -q fieldagent && break; sleep 1; done; \
             systemctl is-active fieldagent; \
             echo $(( $(systemctl show -p ActiveEnterTimestampMonotonic --value fieldagent) / 1000 ))",
        );
        let mut lines = active.lines();
        let state = lines.next().unwrap_or("").to_owned();
        let active_ms: u64 = lines.next().unwrap_or("0").trim().parse().unwrap_or(0);
        let carrier = guest.ok("cat /sys/class/net/eth0/carrier 2>/dev/null || echo none");
        guest.ok("echo 1 > /run/toggle");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let (_, out, _) = guest.sh("fieldagent status --json", Duration::from_secs(30));
            let status: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            let raised = status["raised"]
                .as_array()
                .is_some_and(|r| r.iter().any(|a| a.to_string().contains("toggled")));
            if raised || Instant::now() >= deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let raised_offline = status["connected"] == false
            && status["raised"]
                .as_array()
                .is_some_and(|r| r.iter().any(|a| a.to_string().contains("toggled")));
        let plugged = Instant::now();
        Vm::set_link(&qmp, true);
        let delivered = self
            .alerts
            .wait_for(Duration::from_secs(120), |m| {
                m.payload.contains("\"alert\":\"toggled\"")
                    && m.payload.contains("\"state\":\"raised\"")
            })
            .map(|_| plugged.elapsed());
        self.guest().ok("echo 0 > /run/toggle");
        report.figure(
            "boot with the cable out: the unit active after the kernel started",
            format!("{:.1} s", active_ms as f64 / 1000.0),
        );
        report.verdict(
            "offline boot",
            state == "active"
                && carrier.trim() != "1"
                && active_ms > 0
                && active_ms < 60_000
                && raised_offline
                && delivered.is_some(),
            format!(
                "unit {state} {:.1} s after the kernel started (guest agent after {:.1} s; carrier {}); alert raised offline: {raised_offline} (connected {}, queued {}); delivered {} after the cable went in",
                active_ms as f64 / 1000.0,
                booted.as_secs_f64(),
                carrier.trim(),
                status["connected"],
                status["queued"],
                delivered.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            ),
        );
    }

    fn guest(&mut self) -> &mut Agent {
        &mut self.vm.as_mut().expect("a guest runs").agent
    }

    /// Waits for the retained or live online status at the broker.
    fn online(&self, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        self.status
            .wait_for(within, |m| m.payload.contains("\"online\":true"))
            .map(|_| started.elapsed())
    }

    fn install(&mut self, report: &mut Report) {
        let first = operations::debs().remove(0);
        self.repo.publish(&first);
        let boot = self.boot();
        report.figure(
            "boot to a usable guest (guest agent answering)",
            format!("{:.1} s", boot.as_secs_f64()),
        );
        // As an operator's image does: its apt sources name the fleet's repository and its key
        // (the image's own mirror is out of reach of this guest).
        let key = self.repo.key.clone();
        let sources = self.repo.sources();
        let guest = self.guest();
        guest.ok("mkdir -p /etc/apt/keyrings && mv /etc/apt/sources.list /etc/apt/sources.list.image 2>/dev/null || true");
        guest.write_file("/etc/apt/keyrings/fieldagent.asc", key.as_bytes());
        guest.write_file(
            "/etc/apt/sources.list.d/fieldagent.sources",
            sources.as_bytes(),
        );
        let started = Instant::now();
        let out = guest.ok(
            "apt-get update 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y fieldagent 2>&1",
        );
        report.figure(
            "`apt-get update && apt-get install fieldagent` from the signed repository",
            format!("{:.1} s", started.elapsed().as_secs_f64()),
        );
        let complaint = out.contains("Could not execute systemctl");
        std::thread::sleep(Duration::from_secs(3));
        let active = self
            .guest()
            .sh("systemctl is-active fieldagent", Duration::from_secs(30))
            .1;
        let status = self
            .guest()
            .sh("fieldagent status --json", Duration::from_secs(30))
            .1;
        let waiting = status.contains("\"waiting_for\":\"/etc/fieldagent/ca.pem\"");
        report.verdict(
            "install before provisioning",
            active.trim() == "active" && waiting && !complaint,
            format!(
                "unit {}, status says waiting_for ca.pem: {waiting}, apt complained: {complaint}",
                active.trim()
            ),
        );

        // Provisioning: the CA, the device's certificate and key, one drop-in.
        let (cert, key) = self.pki.issue(ID, ID, false);
        let ca = std::fs::read(&self.pki.ca).unwrap();
        let cert = std::fs::read(cert).unwrap();
        let key = std::fs::read(key).unwrap();
        let guest = self.guest();
        guest.write_file("/etc/fieldagent/device.key", &key);
        guest.ok("chown root:fieldagent /etc/fieldagent/device.key && chmod 0640 /etc/fieldagent/device.key");
        guest.write_file("/etc/fieldagent/device.crt", &cert);
        guest.write_file(
            "/etc/fieldagent/conf.d/10-test.yaml",
            format!(
                "broker:\n  urls: [\"mqtts://{BROKER_IN_GUEST}:8883\"]\n  keepalive_s: 10\n  reconnect: {{ initial_s: 0.5, max_s: 2 }}\n\
                 telemetry: {{ interval_s: 0.1 }}\n\
                 sensors:\n  - {{ name: toggle, file: /run/toggle }}\n\
                 alerts:\n  - {{ name: toggled, sensor: toggle, equals: 1, qos: 1 }}\n"
            )
            .as_bytes(),
        );
        guest.ok("echo 0 > /run/toggle");
        let started = Instant::now();
        guest.write_file("/etc/fieldagent/ca.pem", &ca);
        // As a provisioning tool does: on the disk before anything else happens (a power cut
        // right after provisioning would otherwise leave empty files).
        guest.ok("sync");
        let online = self.online(Duration::from_secs(60));
        let shown = self
            .guest()
            .ok("systemctl show -p StatusText --value fieldagent");
        report.verdict(
            "provisioned",
            online.is_some() && shown.contains("connected to"),
            format!(
                "online at the broker {:.1} s after the CA file appeared; STATUS={}",
                started.elapsed().as_secs_f64(),
                shown.trim()
            ),
        );
    }

    fn i2c(&mut self, report: &mut Report) {
        let guest = self.guest();
        guest.ok("modprobe i2c-dev && modprobe i2c-stub chip_addr=0x48");
        let bus =
            guest.ok("i2cdetect -l | awk '/SMBus stub/ { sub(\"i2c-\", \"\", $1); print $1 }'");
        let bus = bus.trim().to_owned();
        let piix4 =
            guest.ok("i2cdetect -l | awk '/PIIX4/ { sub(\"i2c-\", \"\", $1); print $1; exit }'");
        let piix4 = piix4.trim().to_owned();
        // TMP102 temperature register 0x00: 0x1900 on the wire (25 °C); i2c-stub keeps a word
        // per register and sends its low byte first.
        guest.ok(&format!("i2cset -y {bus} 0x48 0x00 0x0019 w"));
        let mut config = format!(
            "broker: {{ urls: [\"mqtts://{BROKER_IN_GUEST}:8883\"], tls: {{ ca_file: /etc/fieldagent/ca.pem }} }}\n\
             sensors:\n  - {{ name: stub, i2c: {{ bus: {bus}, address: 0x48, chip: tmp102 }} }}\n"
        );
        if !piix4.is_empty() {
            config.push_str(&format!(
                "  - {{ name: chipset, i2c: {{ bus: {piix4}, address: 0x48, chip: tmp102 }} }}\n"
            ));
        }
        // The bus's group comes from the package's rule, not i2c-tools' (which the image has
        // for i2cset): that one removed, the devices judged again.
        let owner = guest.ok(&format!(
            "rm -f /lib/udev/rules.d/*i2c-tools*.rules /usr/lib/udev/rules.d/*i2c-tools*.rules && \
             udevadm control --reload && udevadm trigger --subsystem-match=i2c-dev --action=add && udevadm settle && \
             stat -c '%G %a' /dev/i2c-{bus}"
        ));
        let owner = owner.trim().to_owned();
        guest.write_file("/run/i2c.yaml", config.as_bytes());
        // As the service's user, as the agent reads it.
        let (_, out, err) = guest.sh(
            "runuser -u fieldagent -- fieldagent --config /run/i2c.yaml read --json",
            Duration::from_secs(60),
        );
        let read: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let stub_ok = read["values"]["stub"] == 25.0;
        let chipset = read["errors"]["chipset"].as_str().unwrap_or("").to_owned();
        let chipset_ok =
            piix4.is_empty() || (!chipset.contains("os error 95") && !chipset.is_empty());
        report.verdict(
            "i2c",
            stub_ok && chipset_ok && owner == "i2c 660",
            format!(
                "/dev/i2c-{bus} group and mode by the package's rule alone: {owner}; read as user fieldagent: TMP102 on i2c-stub (bus {bus}): {}; on the chipset's SMBus adapter (bus {piix4}, nothing at 0x48): {chipset} {err}",
                read["values"]["stub"]
            ),
        );
    }

    fn modbus(&mut self, report: &mut Report) {
        // "char device redirected to /dev/pts/N (label rtu)"
        let log = std::fs::read_to_string(self.dir.path().join("qemu.out")).unwrap_or_default();
        let Some(pty) = log
            .lines()
            .filter(|l| l.contains("label rtu"))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/dev/pts/")))
            .last()
            .map(str::to_owned)
        else {
            report.verdict(
                "modbus",
                false,
                format!("no pty for ttyS1 in qemu.out: {log}"),
            );
            return;
        };
        let mut server = Command::new(Path::new(ROOT).join("target/interop/pymodbus/bin/python"))
            .arg(Path::new(ROOT).join("tests/modbus/server.py"))
            .args(["rtu", &pty])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pymodbus (scripts/system-test installs it)");
        let mut ready = String::new();
        let _ = BufReader::new(server.stdout.take().unwrap()).read_line(&mut ready);
        let telemetry = Subscriber::start_as(
            &self.broker,
            &self.pki,
            &format!("devices/{ID}/telemetry"),
            0,
            "telemetry-observer",
        );
        let started = Instant::now();
        let guest = self.guest();
        let device = guest.ok("stat -c '%G %a' /dev/ttyS1");
        guest.write_file(
            "/etc/fieldagent/conf.d/50-modbus.yaml",
            b"sensors:\n  - { name: flow, modbus: { url: \"rtu:///dev/ttyS1?baud=19200&parity=N\", unit: 3, table: input, address: 7, timeout_s: 0.5 } }\n",
        );
        guest.ok("systemctl reload fieldagent");
        let reading = telemetry.wait_for(Duration::from_secs(60), |m| {
            m.payload.contains("\"flow\":107")
        });
        let took = started.elapsed();
        let last = if reading.is_none() {
            telemetry
                .collect(Duration::from_secs(2))
                .last()
                .map(|m| m.payload.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let journal = if reading.is_none() {
            self.guest()
                .sh(
                    "journalctl -u fieldagent -n 20 --no-pager",
                    Duration::from_secs(30),
                )
                .1
        } else {
            String::new()
        };
        let _ = server.kill();
        let _ = server.wait();
        // Leave the rest of the run as it was.
        self.guest()
            .ok("rm /etc/fieldagent/conf.d/50-modbus.yaml && systemctl reload fieldagent");
        if reading.is_some() {
            report.figure(
                "modbus: drop-in with an RTU sensor on ttyS1 to its value at the broker",
                format!("{:.1} s", took.as_secs_f64()),
            );
        }
        report.verdict(
            "modbus",
            reading.is_some(),
            format!(
                "pymodbus on the host end ({pty}) of the guest's ttyS1 ({}), read by the service: {} {last} {journal}",
                device.trim(),
                if reading.is_some() { "flow 107" } else { "no value" }
            ),
        );
    }

    fn watchdog(&mut self, report: &mut Report) {
        let pid = self
            .guest()
            .ok("systemctl show -p MainPID --value fieldagent")
            .trim()
            .to_owned();
        let started = Instant::now();
        self.guest().ok(&format!("kill -STOP {pid}"));
        let will = self.status.wait_for(Duration::from_secs(120), |m| {
            m.payload.contains("\"reason\":\"lost\"")
        });
        let will_at = started.elapsed();
        let back = self.online(Duration::from_secs(120));
        let restarted_at = started.elapsed();
        let new_pid = self
            .guest()
            .ok("systemctl show -p MainPID --value fieldagent")
            .trim()
            .to_owned();
        report.figure(
            "watchdog: frozen agent to the will at the broker",
            format!("{:.1} s", will_at.as_secs_f64()),
        );
        report.figure(
            "watchdog: frozen agent to online again (new process)",
            format!("{:.1} s", restarted_at.as_secs_f64()),
        );
        report.verdict(
            "watchdog",
            will.is_some()
                && back.is_some()
                && new_pid != pid
                && restarted_at < Duration::from_secs(60 + 30),
            format!("pid {pid} -> {new_pid} (WatchdogSec=60)"),
        );
    }

    fn reboot(&mut self, report: &mut Report) {
        // Drained before: everything made so far has been seen.
        let started = Instant::now();
        let _ = self.guest().sh("systemctl reboot", Duration::from_secs(30));
        std::thread::sleep(Duration::from_secs(5));
        // The same connection to qemu: the guest's agent answers again once it is back.
        let deadline = Instant::now() + Duration::from_secs(300);
        while !self.guest().sync() {
            assert!(Instant::now() < deadline, "the guest did not come back");
        }
        let back = self.online(Duration::from_secs(120));
        report.verdict(
            "reboot",
            back.is_some(),
            format!(
                "online again {:.1} s after `systemctl reboot`",
                started.elapsed().as_secs_f64()
            ),
        );
    }

    fn power_cuts(&mut self, cycles: usize, report: &mut Report) {
        let mut cuts = 0;
        for cycle in 0..cycles {
            let hang = cycle % 2 == 1;
            self.proxy
                .set(if hang { Mode::Blackhole } else { Mode::Forward });
            if self.vm.is_none() {
                self.boot();
            }
            // Replaced by rename, so the sensor never reads a half-written file.
            self.guest().ok(
                "nohup sh -c 'while :; do echo 1 > /run/t && mv /run/t /run/toggle; sleep 0.1; echo 0 > /run/t && mv /run/t /run/toggle; sleep 0.1; done' >/dev/null 2>&1 &",
            );
            std::thread::sleep(Duration::from_millis(fastrand::u64(3_000..9_000)));
            self.vm.take().unwrap().cut();
            cuts += 1;
            println!(
                "power cut {cuts}/{cycles} ({})",
                if hang {
                    "connects hanging"
                } else {
                    "broker reachable"
                }
            );
        }
        self.proxy.set(Mode::Forward);
        self.boot();
        // Drained: the outbox is empty and the agent connected.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let (_, out, _) = self
                .guest()
                .sh("fieldagent status --json", Duration::from_secs(30));
            let status: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            if status["connected"] == true && status["queued"]["alerts"] == 0 {
                break;
            }
            if Instant::now() >= deadline {
                let (_, journal, _) = self.guest().sh(
                    "systemctl status fieldagent --no-pager; journalctl -u fieldagent -b --no-pager | tail -40; ls -la /etc/fieldagent /etc/fieldagent/conf.d",
                    Duration::from_secs(60),
                );
                panic!("never drained: {out}\n{journal}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        std::thread::sleep(Duration::from_secs(2));
        // A damaged outbox is moved aside as outbox.log.damaged-<ms> (and logged, in a journal
        // that the next power cut takes: the guest's journal is volatile).
        let damaged = self
            .guest()
            .ok("ls /var/lib/fieldagent | grep -c '^outbox.log.damaged' || true");
        let messages = self.alerts.collect(Duration::from_secs(3));
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        // The outbox is the truth: an id names one event, so every copy of it is the same bytes.
        let mut payloads: BTreeMap<u64, std::collections::BTreeSet<&str>> = BTreeMap::new();
        for message in &messages {
            let value: Value = serde_json::from_str(&message.payload).unwrap_or(Value::Null);
            if let Some(n) = value["id"]
                .as_str()
                .and_then(|id| id.rsplit(':').next())
                .and_then(|n| n.parse().ok())
            {
                *seen.entry(n).or_default() += 1;
                payloads.entry(n).or_default().insert(&message.payload);
            }
        }
        let two_payloads: Vec<u64> = payloads
            .iter()
            .filter(|(_, p)| p.len() > 1)
            .map(|(n, _)| *n)
            .collect();
        let max = seen.keys().max().copied().unwrap_or(0);
        let gaps: Vec<u64> = (1..=max).filter(|n| !seen.contains_key(n)).collect();
        let duplicates: usize = seen.values().map(|c| c - 1).sum();
        report.figure(
            "power cuts",
            format!("{cuts} (every second one with connects hanging)"),
        );
        report.figure(
            "alert events made (highest id counter) / messages received / duplicates",
            format!("{max} / {} / {duplicates}", messages.len()),
        );
        report.figure("outbox files found damaged and moved aside", damaged.trim());
        report.verdict(
            "power cut",
            gaps.is_empty() && two_payloads.is_empty() && max > 0,
            format!(
                "{} gap(s) in the alert ids{}; {} id(s) with two different payloads{}",
                gaps.len(),
                if gaps.is_empty() {
                    String::new()
                } else {
                    format!(": {:?}", &gaps[..gaps.len().min(20)])
                },
                two_payloads.len(),
                if two_payloads.is_empty() {
                    String::new()
                } else {
                    format!(": {:?}", &two_payloads[..two_payloads.len().min(20)])
                }
            ),
        );
    }

    /// The device key made inside the guest's TPM (swtpm behind qemu's tpm-tis): the request
    /// signed by the fleet's CA, the agent connected with it, through a power cut; no private
    /// key in the clear under /etc, state_dir or /tmp. Debian 12's tpm2-openssl needs
    /// tpm2-abrmd (docs/device-keys.md). Ends with the file key back, as it found it.
    fn tpm(&mut self, report: &mut Report) {
        if self.vm.is_none() {
            self.boot();
        }
        let guest = self.guest();
        let (_, devices, _) = guest.sh(
            "ls /dev/tpm0 /dev/tpmrm0 && systemctl is-active tpm2-abrmd",
            Duration::from_secs(30),
        );
        // The key made elsewhere at provisioning is put where the scan does not look.
        guest.ok("mv /etc/fieldagent/device.key /root/device.key.file");
        guest.write_file(
            "/etc/fieldagent/conf.d/20-tpm.yaml",
            b"broker:\n  tls:\n    key_file: /etc/fieldagent/device.tpm\n    cert_file: /etc/fieldagent/device-tpm.crt\n    tpm: { tcti: tabrmd }\n",
        );
        let started = Instant::now();
        let made = guest.sh(
            "fieldagent cert create-key --tpm && stat -c '%a %U' /etc/fieldagent/device.tpm && head -1 /etc/fieldagent/device.tpm",
            Duration::from_secs(120),
        );
        let created_in = started.elapsed();
        assert_eq!(
            made.0, 0,
            "cert create-key --tpm\n{}{}\n{devices}",
            made.1, made.2
        );
        let csr = guest.ok(&format!("fieldagent cert csr --cn {ID}"));
        let cert = self.pki.sign_request(csr.as_bytes(), 7001);
        let guest = self.guest();
        guest.write_file("/etc/fieldagent/device-tpm.crt", &cert);
        let shown = guest.ok("fieldagent cert show --json");
        let shown: Value = serde_json::from_str(&shown).unwrap_or(Value::Null);
        // As docs/device-keys.md says: the service in group tss (the TPM's device node, and
        // tpm2-abrmd's D-Bus policy).
        let guest = self.guest();
        guest.ok("mkdir -p /etc/systemd/system/fieldagent.service.d");
        guest.write_file(
            "/etc/systemd/system/fieldagent.service.d/tpm.conf",
            b"[Service]\nSupplementaryGroups=tss\n",
        );
        // On the disk before anything else happens, as a provisioning tool does (the power cut
        // below would otherwise leave empty files, which the agent waits for).
        self.guest().ok("sync");
        let _ = self.status.collect(Duration::from_millis(500));
        let started = Instant::now();
        self.guest().ok(
            "systemctl daemon-reload && systemctl restart fieldagent || { journalctl -u fieldagent -n 30 --no-pager; false; }",
        );
        let online = self.online(Duration::from_secs(60));
        let connected_in = started.elapsed();
        let _ = self.status.collect(Duration::from_millis(500));
        // A power cut: the key stays in the TPM's wrapped form, the TPM keeps its seed.
        self.vm.take().unwrap().cut();
        let started = Instant::now();
        self.boot();
        let again = self.online(Duration::from_secs(180));
        let after_cut = started.elapsed();
        if again.is_none() {
            let (_, journal, _) = self.guest().sh(
                "systemctl status fieldagent tpm2-abrmd --no-pager; journalctl -b -u fieldagent -u tpm2-abrmd --no-pager | tail -40",
                Duration::from_secs(60),
            );
            println!("not online after the power cut:\n{journal}");
        }
        let (_, status, _) = self
            .guest()
            .sh("fieldagent status --json", Duration::from_secs(30));
        let status: Value = serde_json::from_str(&status).unwrap_or(Value::Null);
        let clear = self.guest().ok(
            "grep -rlsE -- '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----' /etc /var/lib/fieldagent /tmp /var/tmp /run/fieldagent || true",
        );
        let ok = online.is_some()
            && again.is_some()
            && shown["key_kind"] == "tpm"
            && made.1.contains("\n600 fieldagent\n")
            && made.1.contains("TSS2 PRIVATE KEY")
            && status["connected"] == true
            && clear.trim().is_empty();
        report.figure(
            "`fieldagent cert create-key --tpm` in the guest (TCG, swtpm)",
            format!("{:.1} s", created_in.as_secs_f64()),
        );
        report.verdict(
            "device key in the TPM",
            ok,
            format!(
                "key {}; cert show key_kind {}; online {:.1} s after the restart with it, {:.1} s after a power cut; private keys in the clear under /etc, /var/lib/fieldagent, /tmp, /var/tmp, /run/fieldagent: {}",
                made.1.lines().next().unwrap_or("?"),
                shown["key_kind"],
                connected_in.as_secs_f64(),
                after_cut.as_secs_f64(),
                if clear.trim().is_empty() { "none".to_owned() } else { clear.trim().replace('\n', ", ") }
            ),
        );
        // Back to the file key.
        let guest = self.guest();
        guest.ok("rm /etc/fieldagent/conf.d/20-tpm.yaml /etc/systemd/system/fieldagent.service.d/tpm.conf && mv /root/device.key.file /etc/fieldagent/device.key && sync && systemctl daemon-reload && systemctl restart fieldagent");
        assert!(
            self.online(Duration::from_secs(60)).is_some(),
            "not online again with the file key"
        );
    }

    fn upgrade_and_purge(&mut self, report: &mut Report) {
        if self.vm.is_none() {
            self.boot();
        }
        // A newer version of the package installed (after the update scenario, the raised one).
        let installed = self
            .guest()
            .ok("dpkg-query -W -f '${Version}' fieldagent")
            .trim()
            .to_owned();
        let deb = operations::debs()
            .into_iter()
            .find(|deb| operations::deb_version(deb) == installed)
            .unwrap_or_else(newest_deb);
        let work = self.dir.path().join("repack");
        let _ = std::fs::remove_dir_all(&work);
        assert!(Command::new("dpkg-deb")
            .arg("-R")
            .arg(&deb)
            .arg(&work)
            .status()
            .unwrap()
            .success());
        let control = work.join("DEBIAN/control");
        let text = std::fs::read_to_string(&control).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("Version: ") {
                    format!("{l}+upgrade1")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        std::fs::write(&control, text).unwrap();
        let newer = self.dir.path().join("fieldagent-newer.deb");
        assert!(Command::new("dpkg-deb")
            .args(["-b", "--root-owner-group"])
            .arg(&work)
            .arg(&newer)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success());
        let bytes = std::fs::read(&newer).unwrap();
        let guest = self.guest();
        guest.write_file("/root/fieldagent-newer.deb", &bytes);
        guest.ok("echo '# edited on the board' >> /etc/fieldagent/config.yaml");
        let state_before = guest.ok("ls /var/lib/fieldagent | sort | tr '\\n' ' '");
        guest.ok("DEBIAN_FRONTEND=noninteractive apt-get install -y -o Dpkg::Options::=--force-confold /root/fieldagent-newer.deb 2>&1");
        let kept = guest.ok("grep -c 'edited on the board' /etc/fieldagent/config.yaml");
        let state_after = guest.ok("ls /var/lib/fieldagent | sort | tr '\\n' ' '");
        let version = guest.ok("dpkg-query -W -f '${Version}' fieldagent");
        let upgraded_ok = kept.trim() == "1"
            && state_after.contains("outbox.log")
            && version.contains("upgrade1");
        report.verdict(
            "upgrade",
            upgraded_ok,
            format!("to {version}; the edited conffile kept: {}; state before: {state_before}; after: {state_after}", kept.trim() == "1"),
        );
        guest.ok("DEBIAN_FRONTEND=noninteractive apt-get purge -y fieldagent 2>&1");
        let state_gone = guest
            .sh("test -e /var/lib/fieldagent", Duration::from_secs(30))
            .0
            != 0;
        let user_gone = guest.sh("id fieldagent", Duration::from_secs(30)).0 != 0;
        let key_kept = guest
            .sh(
                "test -e /etc/fieldagent/device.key",
                Duration::from_secs(30),
            )
            .0
            == 0;
        report.verdict(
            "purge",
            state_gone && user_gone && key_kept,
            format!("state removed: {state_gone}, user removed: {user_gone}, provisioned key kept: {key_kept}"),
        );
    }
}

/// The newest .deb `./scripts/package` made for this machine.
fn newest_deb() -> PathBuf {
    let dir = Path::new(ROOT).join("target/debian");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|_| panic!("no {}: run ./scripts/package", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("_amd64.deb"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("a .deb from ./scripts/package")
}

/// swtpm, the TPM 2.0 simulator, as the guest's TPM: one for the run, so the TPM keeps its seeds
/// (and the guest's keys stay usable) across the guest's reboots and power cuts. Stopped by PID.
struct Swtpm {
    child: Child,
    socket: PathBuf,
}

impl Swtpm {
    fn start(dir: &Path) -> Swtpm {
        let socket = dir.join("swtpm.sock");
        Swtpm {
            child: Swtpm::spawn(dir, &socket),
            socket,
        }
    }

    /// Started again (same state) if it ended with the last guest's connection.
    fn ensure(&mut self, dir: &Path) {
        if let Ok(Some(_)) = self.child.try_wait() {
            self.child = Swtpm::spawn(dir, &self.socket);
        }
    }

    fn spawn(dir: &Path, socket: &Path) -> Child {
        let state = dir.join("tpm");
        std::fs::create_dir_all(&state).unwrap();
        let _ = std::fs::remove_file(socket);
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .stdin(Stdio::null())
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("swtpm.log"))
                    .unwrap(),
            )
            .stderr(Stdio::inherit())
            .spawn()
            .expect("swtpm (scripts/system-test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "swtpm made no socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
