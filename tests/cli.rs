//! The command line as a user runs it: the real binary, real files, exit codes.

use std::os::unix::fs::PermissionsExt;

use crate::util::{fake_sysfs, fieldagent, fieldagent_env, pki, stderr, stdout, CertSpec, TestDir};

/// The SPEC's example config with its paths moved into `dir`, real certificates and a fake sysfs.
fn spec_example(dir: &TestDir) -> std::path::PathBuf {
    let pki = pki(dir, "etc", CertSpec::default());
    assert!(pki.ca.ends_with("etc/ca.pem"));
    let password = dir.write("etc/password", "s3cret\n");
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o640)).unwrap();
    fake_sysfs(dir);
    dir.write("run/plc/tank", "423\n");
    let text = include_str!("data/spec-example.yaml")
        .replace("/etc/fieldagent/", "@DIR@/etc/")
        .replace("/var/lib/fieldagent", "@DIR@/state")
        .replace("sysfs_root: /sys", "sysfs_root: @DIR@/sys")
        .replace("/run/plc/tank", "@DIR@/run/plc/tank");
    dir.config(&text)
}

#[test]
fn version_and_help() {
    let output = fieldagent(&["--version"]);
    assert!(output.status.success());
    let version = stdout(&output);
    let first = version.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "fieldagent {} (commit ",
            env!("CARGO_PKG_VERSION")
        )) && first.contains(", built 20"),
        "{version}"
    );
    assert!(version.contains("\nPaho C 1.3."), "{version}");
    assert!(version.contains("\nOpenSSL 3."), "{version}");
    let output = fieldagent(&["-V"]);
    assert_eq!(
        stdout(&output).trim(),
        format!("fieldagent {}", env!("CARGO_PKG_VERSION"))
    );
    let output = fieldagent(&["--help"]);
    assert!(output.status.success());
    let help = stdout(&output);
    for word in ["check", "identity", "read", "--config", "FIELDAGENT_CONFIG"] {
        assert!(help.contains(word), "help lacks {word}: {help}");
    }
}

#[test]
fn check_accepts_the_spec_example_with_real_certificates() {
    let dir = TestDir::new();
    let config = spec_example(&dir);
    let output = fieldagent(&["--config", config.to_str().unwrap(), "check"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert!(text.contains("ok: "), "{text}");
    assert!(
        text.contains("client ID sensor-node-001 (from certificate CN of"),
        "{text}"
    );
    assert!(text.contains("cpu_temp = 48.25 °C"), "{text}");
    assert!(text.contains("tank_level = 42.3 %"), "{text}");
    // Sparkplug overrides the persistent session; check says so.
    assert!(
        text.contains(
            "broker.clean_session: overridden: Sparkplug B 3.0 requires Clean Session true"
        ),
        "{text}"
    );
    assert!(text.contains("check: 0 error(s)"), "{text}");
}

#[test]
fn config_comes_from_flag_then_environment() {
    let dir = TestDir::new();
    let good = spec_example(&dir);
    let broken = dir.write("broken.yaml", "broker: {}\n");
    // The environment alone is used.
    let output = fieldagent_env(
        &["identity"],
        &[("FIELDAGENT_CONFIG", good.to_str().unwrap())],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // --config wins over the environment.
    let output = fieldagent_env(
        &["--config", broken.to_str().unwrap(), "identity"],
        &[("FIELDAGENT_CONFIG", good.to_str().unwrap())],
    );
    assert_eq!(output.status.code(), Some(78));
    assert!(
        stderr(&output).contains("broken.yaml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn default_config_path_is_etc_fieldagent() {
    let output = fieldagent(&["identity"]);
    if std::path::Path::new("/etc/fieldagent/config.yaml").exists() {
        return;
    }
    assert_eq!(output.status.code(), Some(78));
    assert!(
        stderr(&output).contains("cannot read config /etc/fieldagent/config.yaml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn identity_prints_id_and_source() {
    let dir = TestDir::new();
    let config = spec_example(&dir);
    let output = fieldagent(&["--config", config.to_str().unwrap(), "identity"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!(
            "sensor-node-001 (from certificate CN of {})\n",
            dir.path().join("etc/device.crt").display()
        )
    );
}

#[test]
fn identity_refuses_a_cn_with_a_slash() {
    let dir = TestDir::new();
    let pki = pki(
        &dir,
        "pki",
        CertSpec {
            cn: Some("plant/7"),
            ..CertSpec::default()
        },
    );
    let config = dir.config(&format!(
        "broker:\n  urls: [\"mqtts://127.0.0.1\"]\n  tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\nsysfs_root: @DIR@/sys\n",
        pki.ca.display(),
        pki.cert.display(),
        pki.key.display()
    ));
    fake_sysfs(&dir);
    let output = fieldagent(&["--config", config.to_str().unwrap(), "identity"]);
    assert_eq!(output.status.code(), Some(78));
    assert!(
        stderr(&output).contains("client ID from certificate CN of")
            && stderr(&output).contains("refused: expected no '/', '+', '#' or control characters"),
        "{}",
        stderr(&output)
    );
}

/// Issue 20: a literal client ID other than the certificate's CN is refused with exit 78, by
/// `identity`, `check` and `run` alike.
#[test]
fn a_client_id_that_is_not_the_certificates_cn_is_refused() {
    let dir = TestDir::new();
    let pki = pki(&dir, "pki", CertSpec::default());
    let config = dir.config(&format!(
        "broker:\n  urls: [\"mqtts://127.0.0.1\"]\n  tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\nidentity: {{ client_id: someone-else }}\nsysfs_root: @DIR@/sys\nstate_dir: @DIR@/state\n",
        pki.ca.display(),
        pki.cert.display(),
        pki.key.display()
    ));
    fake_sysfs(&dir);
    for command in ["identity", "check", "run"] {
        let output = fieldagent(&["--config", config.to_str().unwrap(), command]);
        let said = format!("{}{}", stdout(&output), stderr(&output));
        assert_eq!(output.status.code(), Some(78), "{command}: {said}");
        assert!(
            said.contains(r#"identity.client_id "someone-else" is not the CN"#)
                && said.contains("match_certificate: false"),
            "{command}: {said}"
        );
    }
}

/// Issue 20: `check` said "the device key are usable" with no key, and nothing of a disabled
/// host name check.
#[test]
fn check_warns_of_no_client_certificate_and_no_host_name_check() {
    let dir = TestDir::new();
    let pki = pki(&dir, "pki", CertSpec::default());
    let config = dir.config(&format!(
        "broker:\n  urls: [\"mqtts://127.0.0.1\"]\n  tls: {{ ca_file: {}, verify_hostname: false }}\nidentity: {{ client_id: node-9 }}\nsysfs_root: @DIR@/sys\n",
        pki.ca.display()
    ));
    fake_sysfs(&dir);
    let output = fieldagent(&["--config", config.to_str().unwrap(), "check"]);
    let said = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "warnings only: {said}");
    assert!(
        said.contains("broker.tls.verify_hostname") && said.contains("impostor"),
        "{said}"
    );
    assert!(
        said.contains("broker.tls.cert_file") && said.contains("no client certificate"),
        "{said}"
    );
    assert!(!said.contains("device key are usable"), "{said}");
    assert!(said.contains("is usable (no client certificate)"), "{said}");
}

/// Issue 20: when state_dir could not take the TLS floor's OpenSSL config, the agent silently
/// wrote it into the shared temporary directory. It refuses to run instead, saying why.
#[test]
fn run_refuses_a_state_dir_it_cannot_write() {
    let dir = TestDir::new();
    let pki = pki(&dir, "pki", CertSpec::default());
    dir.write("not-a-dir", "a file");
    let config = dir.config(&format!(
        "broker:\n  urls: [\"mqtts://127.0.0.1:1\"]\n  tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\nsysfs_root: @DIR@/sys\nstate_dir: @DIR@/not-a-dir/state\n",
        pki.ca.display(),
        pki.cert.display(),
        pki.key.display()
    ));
    fake_sysfs(&dir);
    let output = fieldagent(&["--config", config.to_str().unwrap(), "run"]);
    let said = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("into state_dir") && said.contains("needs state_dir writable"),
        "{said}"
    );
}

#[test]
fn read_json_gives_exact_values_and_errors_side_by_side() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    dir.write("run/tank", "level=423\n");
    dir.write("run/garbage", "n/a\n");
    let config = dir.config(
        r#"broker: { urls: ["mqtts://127.0.0.1"], tls: { ca_file: /ca.pem } }
sysfs_root: "@DIR@/sys"
sensors:
  - { name: cpu_temp, thermal_zone: { type: cpu-thermal } }
  - { name: board_temp, hwmon: { chip: lm75, input: temp1 } }
  - { name: vin, hwmon: { chip: ina219, input: in1 } }
  - { name: vadc, iio: { device: ads1015, channel: in_voltage0 } }
  - { name: tank_level, file: { path: "@DIR@/run/tank", key: level }, scale: 0.1, unit: "%" }
  - { name: gone, file: "@DIR@/run/vanished" }
  - { name: junk, file: "@DIR@/run/garbage" }
  - { name: missing, hwmon: { chip: tmp421, input: temp2 } }
"#,
    );
    let output = fieldagent(&["--config", config.to_str().unwrap(), "read", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let run = dir.path().join("run");
    let expected = format!(
        concat!(
            r#"{{"values":{{"cpu_temp":48.25,"board_temp":-10.5,"vin":12.04,"vadc":3.072,"tank_level":42.3}},"#,
            r#""errors":{{"gone":"cannot read {run}/vanished: No such file or directory (os error 2)","#,
            r#""junk":"{run}/garbage: expected a number, found \"n/a\"","#,
            r#""missing":"no hwmon chip with name \"tmp421\" under {sys}/class/hwmon"}}}}"#,
            "\n"
        ),
        run = run.display(),
        sys = dir.path().join("sys").display()
    );
    assert_eq!(stdout(&output), expected);
}

#[test]
fn read_table_shows_values_units_sources_and_errors() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let config = dir.config(
        r#"broker: { urls: ["mqtts://127.0.0.1"], tls: { ca_file: /ca.pem } }
sysfs_root: "@DIR@/sys"
sensors:
  - { name: cpu_temp, thermal_zone: { type: cpu-thermal } }
  - { name: gone, thermal_zone: { type: soc } }
"#,
    );
    let output = fieldagent(&["--config", config.to_str().unwrap(), "read"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{text}");
    assert!(
        lines[1].starts_with("cpu_temp") && lines[1].contains("48.25  °C"),
        "{text}"
    );
    assert!(
        lines[1].contains("thermal_zone cpu-thermal (") && lines[1].contains("thermal_zone1/temp)"),
        "{text}"
    );
    assert!(
        lines[2].contains("ERROR") && lines[2].contains("no thermal zone with type \"soc\""),
        "{text}"
    );
}

/// This machine's own /sys and system metrics: the read works as a whole, whatever the host has.
#[test]
fn read_on_the_real_host() {
    let dir = TestDir::new();
    let config = dir.config(
        r#"broker: { urls: ["mqtts://127.0.0.1"], tls: { ca_file: /ca.pem } }
sensors:
  - { name: sys, system: [cpu_percent, mem_used_percent, load1, load5, load15, disk_used_percent, uptime_s] }
  - { name: cpu_temp, thermal_zone: { type: cpu-thermal } }
"#,
    );
    let output = fieldagent(&["--config", config.to_str().unwrap(), "read", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let value: serde_json::Value = serde_json::from_str(&text).expect("read --json prints JSON");
    let values = &value["values"];
    for metric in ["cpu_percent", "mem_used_percent", "disk_used_percent"] {
        let v = values[format!("sys.{metric}")].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&v), "sys.{metric} = {v} in {text}");
    }
    assert!(values["sys.uptime_s"].as_f64().unwrap() > 0.0, "{text}");
    assert!(values["sys.load1"].as_f64().unwrap() >= 0.0, "{text}");
    // The thermal zone may or may not exist here; either way it is in exactly one of the maps.
    assert!(
        values.get("cpu_temp").is_some() != value["errors"].get("cpu_temp").is_some(),
        "{text}"
    );
}

/// Open files stay bounded: 1 500 `file:` sensors read in one pass by a process whose descriptor
/// limit is 1 024 (soft and hard, so it cannot raise it). Held open between reads, they ran the
/// process out of descriptors past about a thousand; now at most a few hundred are held and the
/// rest are opened for each read.
#[test]
fn fifteen_hundred_file_sensors_under_a_limit_of_1024_descriptors() {
    use std::os::unix::process::CommandExt;
    let dir = TestDir::new();
    let mut yaml = String::from(
        "broker: { urls: [\"mqtts://127.0.0.1:1\"], tls: { ca_file: \"@DIR@/ca.pem\" } }\nsensors:\n",
    );
    for i in 0..1500 {
        dir.write(&format!("run/v{i}"), format!("{i}\n"));
        yaml.push_str(&format!("  - {{ name: v{i}, file: \"@DIR@/run/v{i}\" }}\n"));
    }
    let config = dir.config(&yaml);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fieldagent"));
    command
        .args(["--config", config.to_str().unwrap(), "read", "--json"])
        .env_remove("FIELDAGENT_CONFIG");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024, 1024)
                .map_err(std::io::Error::from)
        });
    }
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let reading: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        reading["errors"].as_object().is_none_or(|e| e.is_empty()),
        "{}",
        &stdout(&output)[..2000.min(output.stdout.len())]
    );
    let values = reading["values"].as_object().unwrap();
    assert_eq!(values.len(), 1500);
    assert_eq!(values["v1499"], 1499.0);
}
