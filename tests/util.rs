//! Shared test fixtures: a fresh directory per test, throwaway certificates, fake sysfs trees,
//! and a runner for the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use time::{Duration, OffsetDateTime};

/// A temporary directory that is removed when the test ends.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            dir: tempfile::Builder::new()
                .prefix("fieldagent-test-")
                .tempdir()
                .expect("a temporary directory can be created"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `relative`, creating parent directories.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes a config file whose `@DIR@` placeholders are replaced by this directory.
    pub fn config(&self, yaml: &str) -> PathBuf {
        let text = yaml.replace("@DIR@", &self.dir.path().display().to_string());
        self.write("config.yaml", text)
    }
}

/// Runs the built `fieldagent` binary with `args`, without FIELDAGENT_CONFIG from the caller.
pub fn fieldagent(args: &[&str]) -> Output {
    fieldagent_env(args, &[])
}

pub fn fieldagent_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fieldagent"));
    command.args(args).env_remove("FIELDAGENT_CONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the fieldagent binary runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A CA and a device certificate signed by it, written as PEM files into a directory.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Options for [`pki`].
pub struct CertSpec<'a> {
    pub cn: Option<&'a str>,
    /// Validity relative to now.
    pub not_before_days: i64,
    pub not_after_days: i64,
}

impl Default for CertSpec<'_> {
    fn default() -> Self {
        CertSpec {
            cn: Some("sensor-node-001"),
            not_before_days: -1,
            not_after_days: 365,
        }
    }
}

/// Writes `ca.pem`, `device.crt` and `device.key` (mode 0640) under `dir/name`.
pub fn pki(dir: &TestDir, name: &str, spec: CertSpec) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fieldagent test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    // rcgen's default subject carries a CN of its own.
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = spec.cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fieldagent tests");
    let now = OffsetDateTime::now_utc();
    params.not_before = now + Duration::days(spec.not_before_days);
    params.not_after = now + Duration::days(spec.not_after_days);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();

    let ca_path = dir.write(&format!("{name}/ca.pem"), ca.pem());
    let cert_path = dir.write(&format!("{name}/device.crt"), cert.pem());
    let key_path = dir.write(&format!("{name}/device.key"), key.serialize_pem());
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    Pki {
        ca: ca_path,
        cert: cert_path,
        key: key_path,
    }
}

/// A fake sysfs tree: two thermal zones, three hwmon chips (one with its inputs under `device/`),
/// an IIO ADC with raw/offset/scale and an IIO sensor with a processed `_input`, a board serial and
/// network interfaces.
pub fn fake_sysfs(dir: &TestDir) -> PathBuf {
    let root = "sys";
    for (path, contents) in [
        ("class/thermal/thermal_zone0/type", "gpu-thermal\n"),
        ("class/thermal/thermal_zone0/temp", "39000\n"),
        ("class/thermal/thermal_zone1/type", "cpu-thermal\n"),
        ("class/thermal/thermal_zone1/temp", "48250\n"),
        // hwmon numbers deliberately not in the order of the config.
        ("class/hwmon/hwmon0/name", "nvme\n"),
        ("class/hwmon/hwmon0/temp1_input", "35850\n"),
        ("class/hwmon/hwmon1/name", "ina219\n"),
        ("class/hwmon/hwmon1/in1_input", "12040\n"),
        ("class/hwmon/hwmon1/curr1_input", "-250\n"),
        ("class/hwmon/hwmon1/power1_input", "3010000\n"),
        ("class/hwmon/hwmon2/name", "lm75\n"),
        ("class/hwmon/hwmon2/device/temp1_input", "-10500\n"),
        ("class/hwmon/hwmon3/name", "pwmfan\n"),
        ("class/hwmon/hwmon3/fan1_input", "2400\n"),
        ("bus/iio/devices/iio:device0/name", "ads1015\n"),
        ("bus/iio/devices/iio:device0/in_voltage0_raw", "1000\n"),
        ("bus/iio/devices/iio:device0/in_voltage0_offset", "24\n"),
        ("bus/iio/devices/iio:device0/in_voltage_scale", "3.000000\n"),
        ("bus/iio/devices/iio:device1/name", "bme680\n"),
        (
            "bus/iio/devices/iio:device1/in_humidityrelative_input",
            "45123\n",
        ),
        ("bus/iio/devices/iio:device1/in_pressure_input", "101.325\n"),
        (
            "firmware/devicetree/base/serial-number",
            "10000000abcdef01\0",
        ),
        ("class/net/lo/address", "00:00:00:00:00:00\n"),
        ("class/net/lo/type", "772\n"),
        ("class/net/eth0/address", "dc:a6:32:01:02:03\n"),
        ("class/net/eth0/type", "1\n"),
        ("class/net/dummy0/address", "00:00:00:00:00:00\n"),
        ("class/net/dummy0/type", "1\n"),
    ] {
        dir.write(&format!("{root}/{path}"), contents);
    }
    dir.path().join(root)
}

/// `unshare` arguments for a private mount namespace. Inside a chroot (where / is not a mount
/// point) unshare cannot make / private and fails; there the namespace the chroot runs in is
/// already private (fresh-debian's is), so propagation is left as it is.
pub fn unshare_mount() -> &'static [&'static str] {
    static ARGS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    ARGS.get_or_init(|| {
        let private = Command::new("unshare")
            .args(["--mount", "true"])
            .output()
            .is_ok_and(|o| o.status.success());
        if private {
            &["--mount"]
        } else {
            &["--mount", "--propagation", "unchanged"]
        }
    })
}

/// A file generated from the repository (`relative` to it) must be what `generated` says;
/// `FIELDAGENT_BLESS=1` writes it first. `bless` is the test filter that regenerates it.
pub fn check_generated(relative: &str, generated: &str, bless: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    if std::env::var_os("FIELDAGENT_BLESS").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == generated,
        "{relative} is out of date; run FIELDAGENT_BLESS=1 cargo test {bless}"
    );
}

/// The md5 of `bytes` in hex, as md5sum and Yocto's LIC_FILES_CHKSUM write it.
pub fn md5(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum (coreutils) runs");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
