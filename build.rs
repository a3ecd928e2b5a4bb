//! Records when the binary was built (SOURCE_DATE_EPOCH for reproducible builds), so the agent
//! knows that a clock reading earlier than that cannot be true; and, for `--version`, the
//! commit it was built from and the version of the Paho C library it bundles; the version the
//! agent reports (`FIELDAGENT_VERSION`).

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    println!("cargo:rustc-env=FIELDAGENT_BUILD_TS={seconds}");
    println!("cargo:rustc-env=FIELDAGENT_COMMIT={}", commit());
    println!("cargo:rustc-env=FIELDAGENT_PAHO_C={}", paho_c());
    println!("cargo:rustc-env=FIELDAGENT_VERSION={}", version());
}

/// The version the agent says it is: Cargo.toml's, or FIELDAGENT_VERSION when the builder sets
/// it (the system test builds a second, higher version of this tree to update to).
fn version() -> String {
    println!("cargo:rerun-if-env-changed=FIELDAGENT_VERSION");
    std::env::var("FIELDAGENT_VERSION")
        .ok()
        .filter(|version| !version.is_empty())
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").unwrap_or_default())
}

/// FIELDAGENT_COMMIT when the builder sets it (a Yocto recipe knows its SRCREV), else the
/// checkout's HEAD, else "unknown" (a source tarball).
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=FIELDAGENT_COMMIT");
    if let Ok(commit) = std::env::var("FIELDAGENT_COMMIT") {
        return commit;
    }
    for path in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The Paho C release the vendored paho-mqtt-sys builds (its build script names it).
fn paho_c() -> String {
    let path = "vendor/paho-mqtt-sys/build.rs";
    println!("cargo:rerun-if-changed={path}");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            let line = text
                .lines()
                .find(|l| l.contains("PAHO_MQTT_C_VERSION: &str"))?
                .to_owned();
            Some(line.split('"').nth(1)?.to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
