//! Keys born on the device (`fieldagent cert`), in a file, in a TPM 2.0 and in a PKCS#11 token:
//! the key made, a request made and signed by the test CA, the agent connected to a mosquitto
//! that requires client certificates, through a broker restart and a certificate renewal, and no
//! private key in the clear where the agent keeps things (for the TPM and the token). The TPM is
//! swtpm (a TPM 2.0 simulator) behind tpm2-abrmd on a private D-Bus session bus; the token is
//! SoftHSM. The agent's own OpenSSL config loads the tpm2 provider or the pkcs11 engine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::broker::{free_port, Broker, BrokerPki, Subscriber};
use crate::daemon::{online, Agent, Setup};
use crate::util::TestDir;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A TPM 2.0 simulator and the resource manager in front of it, on a D-Bus session bus of its
/// own; everything stopped by PID when dropped.
struct Tpm {
    swtpm: Option<u32>,
    dbus: Option<u32>,
    abrmd: Option<Child>,
    /// `DBUS_SESSION_BUS_ADDRESS` of the bus.
    bus: String,
    /// swtpm's port.
    port: u16,
}

impl Tpm {
    fn start(dir: &TestDir) -> Tpm {
        let state = dir.path().join("tpmstate");
        std::fs::create_dir_all(&state).unwrap();
        // swtpm's TCTI also uses the next port, for the control channel.
        let port = loop {
            let port = free_port();
            if std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        };
        let pid_file = dir.path().join("swtpm.pid");
        let status = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .args([
                "--flags",
                "not-need-init,startup-clear",
                "--daemon",
                "--pid",
            ])
            .arg(format!("file={}", pid_file.display()))
            .status()
            .expect("swtpm (Debian: swtpm) runs");
        assert!(status.success());
        let swtpm = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|pid| pid.trim().parse().ok());
        let output = Command::new("dbus-daemon")
            .args(["--session", "--fork", "--print-address=1", "--print-pid=1"])
            .output()
            .expect("dbus-daemon (Debian: dbus) runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut lines = text.lines();
        let bus = lines.next().unwrap_or_default().to_owned();
        let dbus = lines.next().and_then(|pid| pid.trim().parse().ok());
        let mut tpm = Tpm {
            swtpm,
            dbus,
            abrmd: None,
            bus,
            port,
        };
        tpm.start_abrmd();
        tpm
    }

    /// The resource manager gone (as before it has started at boot).
    fn stop_abrmd(&mut self) {
        if let Some(mut abrmd) = self.abrmd.take() {
            let _ = abrmd.kill();
            let _ = abrmd.wait();
        }
    }

    fn start_abrmd(&mut self) {
        let tpm = self;
        let port = tpm.port;
        let abrmd = Command::new("tpm2-abrmd")
            .args(["--session", "--allow-root"])
            .arg(format!("--tcti=swtpm:host=127.0.0.1,port={port}"))
            .env("DBUS_SESSION_BUS_ADDRESS", &tpm.bus)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tpm2-abrmd (Debian: tpm2-abrmd) runs");
        tpm.abrmd = Some(abrmd);
        // Ready when it has its name on the bus.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let names = Command::new("dbus-send")
                .args([
                    "--session",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.ListNames",
                ])
                .env("DBUS_SESSION_BUS_ADDRESS", &tpm.bus)
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default();
            if names.contains("com.intel.tss2.Tabrmd") {
                break;
            }
            assert!(Instant::now() < deadline, "tpm2-abrmd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        if let Some(abrmd) = &mut self.abrmd {
            let _ = abrmd.kill();
            let _ = abrmd.wait();
        }
        for pid in [self.dbus, self.swtpm].into_iter().flatten() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

/// A SoftHSM token `devtoken` with a P-256 key pair `devkey` in it (made by the token's tools,
/// as an operator does), under `dir`; the `SOFTHSM2_CONF` that names it.
fn token(dir: &TestDir) -> PathBuf {
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.write(
        "softhsm2.conf",
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    );
    let run = |program: &str, args: &[&str]| {
        let output = Command::new(program)
            .args(args)
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap_or_else(|err| panic!("{program} (Debian: softhsm2, opensc): {err}"));
        assert!(output.status.success(), "{program}: {output:?}");
    };
    run(
        "softhsm2-util",
        &[
            "--init-token",
            "--free",
            "--label",
            "devtoken",
            "--so-pin",
            "87654321",
            "--pin",
            "123456",
        ],
    );
    run(
        "pkcs11-tool",
        &[
            "--module",
            SOFTHSM,
            "--token-label",
            "devtoken",
            "--login",
            "--pin",
            "123456",
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "01",
            "--label",
            "devkey",
        ],
    );
    conf
}

/// Files under `dirs` that hold a private key in the clear (PEM).
fn clear_keys(dirs: &[&Path]) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if std::fs::read(&path).is_ok_and(|bytes| {
                let text = String::from_utf8_lossy(&bytes);
                [
                    "BEGIN PRIVATE KEY",
                    "BEGIN EC PRIVATE KEY",
                    "BEGIN RSA PRIVATE KEY",
                    "BEGIN ENCRYPTED PRIVATE KEY",
                ]
                .iter()
                .any(|header| text.contains(header))
            }) {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for dir in dirs {
        walk(dir, &mut found);
    }
    found
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    File,
    Tpm,
    Pkcs11,
}

/// The whole life of a device key of `kind`: made, requested, certified, connected, through a
/// broker restart and a renewal.
fn round(kind: Kind) {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let mut broker = Broker::start(&pki);
    let id = format!("keys-{kind:?}").to_lowercase();
    let status = Subscriber::start(&broker, &pki, &format!("devices/{id}/status"));
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let cert = dir.path().join("device.crt");
    let mut tpm = (kind == Kind::Tpm).then(|| Tpm::start(&dir));
    let mut setup = Setup::new(&id, &broker);
    setup
        .env
        .push(("TMPDIR".to_owned(), tmp.display().to_string()));
    let key: PathBuf = match kind {
        Kind::File => keys.join("device.key"),
        Kind::Tpm => {
            let tpm = tpm.as_ref().unwrap();
            setup.tls_extra = ", tpm: { tcti: \"tabrmd:bus_type=session\" }".to_owned();
            setup
                .env
                .push(("DBUS_SESSION_BUS_ADDRESS".to_owned(), tpm.bus.clone()));
            keys.join("device.tss2")
        }
        Kind::Pkcs11 => {
            let conf = token(&dir);
            let pin = dir.write("keys/pin", "123456\n");
            std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            setup.tls_extra = format!(
                ", pkcs11: {{ module: {SOFTHSM}, pin_file: {} }}",
                pin.display()
            );
            setup
                .env
                .push(("SOFTHSM2_CONF".to_owned(), conf.display().to_string()));
            PathBuf::from("pkcs11:token=devtoken;object=devkey;type=private")
        }
    };
    setup.cert = Some((cert.clone(), key.clone()));
    let config = Agent::write_config(&dir, &pki, &setup);
    let fieldagent = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fieldagent"));
        command
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("OPENSSL_CONF");
        for (name, value) in &setup.env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "fieldagent {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };

    // Made on the board: in a file, in the TPM (the token's key was made by its tools).
    match kind {
        Kind::File => {
            fieldagent(&["cert", "create-key"]);
        }
        Kind::Tpm => {
            fieldagent(&["cert", "create-key", "--tpm"]);
            let text = std::fs::read_to_string(&key).unwrap();
            assert!(
                text.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"),
                "{text}"
            );
        }
        Kind::Pkcs11 => {}
    }
    if kind != Kind::Pkcs11 {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Made exclusively: a second create keeps the key.
        let mut again = Command::new(env!("CARGO_BIN_EXE_fieldagent"));
        again
            .arg("--config")
            .arg(&config)
            .args(["cert", "create-key"]);
        for (name, value) in &setup.env {
            again.env(name, value);
        }
        let again = again.output().unwrap();
        assert!(
            !again.status.success()
                && String::from_utf8_lossy(&again.stderr).contains("exists: kept"),
            "{again:?}"
        );
    }
    // The request, with the CN the agent would use, signed by the fleet's CA.
    let request = dir.path().join("device.csr");
    fieldagent(&[
        "cert",
        "csr",
        "--cn",
        &id,
        "--out",
        request.to_str().unwrap(),
    ]);
    std::fs::write(
        &cert,
        pki.sign_request(&std::fs::read(&request).unwrap(), 1),
    )
    .unwrap();
    let shown: Value = serde_json::from_str(&fieldagent(&["cert", "show", "--json"])).unwrap();
    assert_eq!(
        shown["key_kind"],
        ["file", "tpm", "pkcs11"][kind as usize],
        "{shown}"
    );
    assert_eq!(shown["key_matches"], true, "{shown}");
    assert_eq!(shown["subject"], format!("CN={id}"), "{shown}");
    let check = fieldagent(&["check"]);
    assert!(check.contains("check: 0 error(s)"), "{check}");
    assert!(
        !check.contains("123456"),
        "the PIN in check's output: {check}"
    );

    // A TPM that cannot be reached at start (its resource manager not up yet, as at boot): the
    // agent waits for the key, ready and saying so, rather than exit 78, which systemd would not
    // restart; it starts by itself when the key can be used.
    if let Some(tpm) = &mut tpm {
        tpm.stop_abrmd();
    }
    // Connected as that device, through a broker restart.
    let agent = Agent::start_config(&dir, &config, setup);
    if let Some(tpm) = &mut tpm {
        agent.expect_log("waiting for the device key", Duration::from_secs(10));
        let waiting = dir.path().join(format!("state-{id}"));
        let status_json = std::fs::read_to_string(waiting.join("status.json")).unwrap_or_default();
        assert!(
            status_json.contains(r#""mode":"waiting""#)
                || agent.log().contains("Not ready to start"),
            "{status_json}"
        );
        tpm.start_abrmd();
    }
    online(&status, &id, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{kind:?}: not online; agent log:\n{}", agent.log()));
    broker = broker.restart(&pki);
    let status = Subscriber::start(&broker, &pki, &format!("devices/{id}/status"));
    online(&status, &id, Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "{kind:?}: not online after the restart; log:\n{}\nbroker log:\n{}",
            agent.log(),
            broker.log()
        )
    });

    // Renewed: a new certificate for the same key, put in place as a renewal tool does.
    let renewed = dir.path().join("device.crt.new");
    std::fs::write(
        &renewed,
        pki.sign_request(&std::fs::read(&request).unwrap(), 2),
    )
    .unwrap();
    std::fs::rename(&renewed, &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.log().contains("Certificate renewed") {
        assert!(
            Instant::now() < deadline,
            "{kind:?}: the renewal was not taken:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    online(&status, &id, Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "{kind:?}: not online after the renewal; log:\n{}",
            agent.log()
        )
    });
    assert!(!agent.log().contains("123456"), "the PIN in the log");

    // No private key in the clear where the agent keeps things (a file key is one, by choice).
    if kind != Kind::File {
        let state = dir.path().join(format!("state-{id}"));
        let found = clear_keys(&[&keys, &state, &tmp, &dir.path().join("conf.d")]);
        assert!(
            found.is_empty(),
            "{kind:?}: private keys in the clear: {found:?}"
        );
    }
    drop(agent);

    // A wrong PIN is a config error at start (exit 78), tried once: never again every few
    // seconds as a late TPM is, which would lock a real token.
    if kind == Kind::Pkcs11 {
        let pin = dir.write("keys/pin", "000000\n");
        std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let mut setup = Setup::new(&id, &broker);
        setup.env = vec![(
            "SOFTHSM2_CONF".to_owned(),
            dir.path().join("softhsm2.conf").display().to_string(),
        )];
        let mut wrong = Agent::start_config(&dir, &config, setup);
        assert_eq!(
            wrong.wait(Duration::from_secs(15)),
            Some(78),
            "a wrong PIN:\n{}",
            wrong.log()
        );
    }
    drop(broker);
}

#[test]
fn a_key_file_made_on_the_board() {
    round(Kind::File);
}

#[test]
fn a_key_inside_a_tpm() {
    round(Kind::Tpm);
}

#[test]
fn a_key_in_a_pkcs11_token() {
    round(Kind::Pkcs11);
}
