//! The systemd unit and the sysusers entry as shipped in packaging/: the unit's sandboxing
//! exposure (systemd-analyze security, offline) stays at 2.0 or lower, and the sysusers entry
//! makes the service user with its I2C and GPIO groups.

use std::path::Path;
use std::process::Command;

use crate::util::TestDir;

fn packaging(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(relative)
}

#[test]
fn the_unit_exposure_is_2_0_or_lower() {
    let unit = packaging("systemd/fieldagent.service");
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager", "--threshold=20"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze is installed (scripts/test installs systemd)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "exposure over 2.0:\n{text}");
    let exposure: f64 = text
        .lines()
        .find_map(|line| line.split("fieldagent.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    assert!(exposure <= 2.0, "{exposure}");

    let unit = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "RestartPreventExitStatus=78",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=60",
        "User=fieldagent",
        "StateDirectory=fieldagent",
        "ConfigurationDirectory=fieldagent",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
}

#[test]
fn sysusers_makes_the_user_and_its_groups() {
    let root = TestDir::new();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let status = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(packaging("sysusers.d/fieldagent.conf"))
        .status()
        .expect("systemd-sysusers is installed (scripts/test installs systemd)");
    assert!(status.success());
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("fieldagent:")
            && l.ends_with(":/var/lib/fieldagent:/usr/sbin/nologin")),
        "{passwd}"
    );
    for name in ["i2c", "gpio"] {
        assert!(
            group
                .lines()
                .any(|l| l.starts_with(&format!("{name}:")) && l.ends_with(":fieldagent")),
            "{name} in {group}"
        );
    }
}

/// The example config shipped as /etc/fieldagent/config.yaml passes `check` once its broker URL
/// and certificate paths point at real ones.
#[test]
fn the_shipped_example_config_checks_once_filled_in() {
    let dir = TestDir::new();
    let pki = crate::util::pki(&dir, "etc", crate::util::CertSpec::default());
    let example = std::fs::read_to_string(packaging("config.yaml")).unwrap();
    assert!(example.contains("mqtts://broker.example.com:8883"));
    let filled = example
        .replace("mqtts://broker.example.com:8883", "mqtts://127.0.0.1:8883")
        .replace("/etc/fieldagent/ca.pem", pki.ca.to_str().unwrap())
        .replace("/etc/fieldagent/device.crt", pki.cert.to_str().unwrap())
        .replace("/etc/fieldagent/device.key", pki.key.to_str().unwrap());
    let config = dir.write("config.yaml", filled);
    let output = crate::util::fieldagent(&["--config", config.to_str().unwrap(), "check"]);
    let text = crate::util::stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("client ID sensor-node-001 (from certificate CN of"),
        "{text}"
    );
    assert!(text.contains("check: 0 error(s)"), "{text}");
}
