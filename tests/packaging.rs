//! The systemd unit and the sysusers entry as shipped in packaging/: the unit's sandboxing
//! exposure (systemd-analyze security, offline) stays at 2.0 or lower, and the sysusers entry
//! makes the service user with its I2C and GPIO groups.

use std::path::{Path, PathBuf};
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
    for name in ["i2c", "gpio", "dialout"] {
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

/// This machine's Debian architecture (amd64, arm64, armhf).
fn debian_arch() -> String {
    let output = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The .deb `./scripts/package` built; `./scripts/test` builds it before the tests and sets
/// FIELDAGENT_REQUIRE_DEB, so a missing package fails there and only skips in a bare `cargo test`.
fn built_deb() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "target/debian/fieldagent_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        debian_arch()
    ));
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("FIELDAGENT_REQUIRE_DEB").is_some() {
        panic!("{} is missing: ./scripts/package builds it", path.display());
    }
    eprintln!(
        "skipped: {} is missing (./scripts/package builds it)",
        path.display()
    );
    None
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let output = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(output.status.success(), "dpkg-deb {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// A control-archive member of the package (postinst, prerm, …).
fn control_file(deb: &Path, name: &str) -> String {
    let dir = TestDir::new();
    let status = Command::new("dpkg-deb")
        .arg("--control")
        .arg(deb)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(dir.path().join(name)).unwrap_or_default()
}

#[test]
fn the_deb_has_its_metadata_and_files() {
    let Some(deb) = built_deb() else { return };
    let info = dpkg_deb(&["--info"], &deb);
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{info}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "fieldagent");
    assert_eq!(field("Architecture"), debian_arch());
    // Computed from the binary's shared libraries (dpkg-shlibdeps), not written by hand.
    let depends = field("Depends");
    for library in ["libc6 (>= ", "libssl3 (>= "] {
        assert!(depends.contains(library), "{depends}");
    }
    assert_eq!(
        control_file(&deb, "conffiles").trim(),
        "/etc/fieldagent/config.yaml\n/etc/fieldagent/conf.d/README"
    );

    let contents = dpkg_deb(&["--contents"], &deb);
    for (path, mode) in [
        ("./usr/bin/fieldagent", "-rwxr-xr-x"),
        ("./usr/libexec/fieldagent/fieldagent-helper", "-rwxr-xr-x"),
        (
            "./usr/lib/systemd/system/fieldagent-helper.path",
            "-rw-r--r--",
        ),
        (
            "./usr/lib/systemd/system/fieldagent-helper.service",
            "-rw-r--r--",
        ),
        (
            "./usr/lib/systemd/system/fieldagent-helper-recover.service",
            "-rw-r--r--",
        ),
        (
            "./usr/share/doc/fieldagent/docs/operations.md",
            "-rw-r--r--",
        ),
        ("./etc/fieldagent/config.yaml", "-rw-r--r--"),
        ("./usr/lib/systemd/system/fieldagent.service", "-rw-r--r--"),
        ("./usr/lib/sysusers.d/fieldagent.conf", "-rw-r--r--"),
        ("./usr/lib/tmpfiles.d/fieldagent.conf", "-rw-r--r--"),
        (
            "./usr/lib/udev/rules.d/60-fieldagent-gpio.rules",
            "-rw-r--r--",
        ),
        (
            "./usr/lib/udev/rules.d/60-fieldagent-i2c.rules",
            "-rw-r--r--",
        ),
        ("./usr/share/man/man1/fieldagent.1.gz", "-rw-r--r--"),
        ("./usr/share/man/man5/fieldagent.yaml.5.gz", "-rw-r--r--"),
        (
            "./usr/share/doc/fieldagent/docs/configuration.md",
            "-rw-r--r--",
        ),
        (
            "./usr/share/doc/fieldagent/examples/config.yaml",
            "-rw-r--r--",
        ),
        ("./usr/share/doc/fieldagent/README.md", "-rw-r--r--"),
        ("./usr/share/doc/fieldagent/copyright", "-rw-r--r--"),
        (
            "./usr/share/doc/fieldagent/changelog.Debian.gz",
            "-rw-r--r--",
        ),
        ("./usr/share/lintian/overrides/fieldagent", "-rw-r--r--"),
        (
            "./usr/share/doc/fieldagent/docs/operating-a-fleet.md",
            "-rw-r--r--",
        ),
        (
            "./usr/share/doc/fieldagent/examples/mosquitto/fieldagent.conf",
            "-rw-r--r--",
        ),
        (
            "./usr/share/doc/fieldagent/examples/mosquitto/fieldagent.acl",
            "-rw-r--r--",
        ),
        (
            "./usr/share/doc/fieldagent/examples/mosquitto/fieldagent-services.acl",
            "-rw-r--r--",
        ),
        (
            "./usr/share/bash-completion/completions/fieldagent",
            "-rw-r--r--",
        ),
        (
            "./usr/share/zsh/vendor-completions/_fieldagent",
            "-rw-r--r--",
        ),
        ("./etc/fieldagent/conf.d/README", "-rw-r--r--"),
        (
            "./usr/share/fish/vendor_completions.d/fieldagent.fish",
            "-rw-r--r--",
        ),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(&format!(" {path}"))),
            "{path} ({mode}) missing from:\n{contents}"
        );
    }

    // The copyright file is ours (every crate and C library built in, tests/copyright.rs), not
    // the one cargo-deb would make from Cargo.toml, which names only our own licence.
    let output = Command::new("sh")
        .arg("-c")
        .arg("dpkg-deb --fsys-tarfile \"$0\" | tar -xO ./usr/share/doc/fieldagent/copyright")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(
        output.stdout == std::fs::read(packaging("copyright")).unwrap(),
        "the .deb's copyright is not packaging/copyright"
    );

    // Installs start the agent and upgrades restart it, without waiting (the helper that may be
    // running the upgrade confirms the new version itself, and at boot runs before the agent);
    // the helper's service is never stopped or restarted by an upgrade; removal stops them all.
    let postinst = control_file(&deb, "postinst");
    assert!(postinst.contains("systemd-sysusers"), "{postinst}");
    assert!(
        postinst.contains("udevadm trigger --subsystem-match=gpio --subsystem-match=i2c-dev"),
        "{postinst}"
    );
    assert!(
        postinst.contains("systemctl --no-block \"$action\" fieldagent.service"),
        "{postinst}"
    );
    for unit in [
        "fieldagent.service",
        "fieldagent-helper.path",
        "fieldagent-helper-recover.service",
    ] {
        assert!(
            postinst.contains(&format!("deb-systemd-helper enable {unit}")),
            "{unit}: {postinst}"
        );
    }
    assert!(
        !postinst
            .lines()
            .any(|line| line.trim_start().starts_with("deb-systemd-invoke")),
        "a postinst that waits for a unit: {postinst}"
    );
    assert!(
        !postinst.contains("restart fieldagent-helper"),
        "{postinst}"
    );
    let prerm = control_file(&deb, "prerm");
    let stop = prerm
        .lines()
        .find(|line| line.contains("deb-systemd-invoke stop"))
        .unwrap_or_else(|| panic!("{prerm}"));
    assert!(
        stop.contains("fieldagent.service") && stop.contains("fieldagent-helper.path"),
        "{prerm}"
    );
    assert!(
        prerm.contains("[ \"$1\" = remove ]"),
        "stops on upgrade: {prerm}"
    );
}

#[test]
fn lintian_reports_no_errors_or_warnings() {
    let Some(deb) = built_deb() else { return };
    let output = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--pedantic"])
        .arg(&deb)
        .output()
        .expect("lintian is installed (scripts/lib.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{output:?}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{text}"
    );
}

/// A writable copy of this machine's root (an overlay in a private mount namespace), so the
/// package can really be installed, upgraded, removed and purged without touching the machine.
struct ScratchRoot {
    dir: TestDir,
    /// Mounted at /mnt inside.
    debs: PathBuf,
}

impl ScratchRoot {
    fn new(debs: &Path) -> ScratchRoot {
        let dir = TestDir::new();
        for sub in ["upper", "work", "merged"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        ScratchRoot {
            dir,
            debs: debs.to_owned(),
        }
    }

    /// Runs `script` with /bin/sh inside the scratch root; what it changes stays for the next run.
    fn run(&self, script: &str) -> std::process::Output {
        let base = self.dir.path().display().to_string();
        let setup = format!(
            "mount -t overlay overlay -o lowerdir=/,upperdir={base}/upper,workdir={base}/work {base}/merged \
             && mount --bind /proc {base}/merged/proc && mount --bind /dev {base}/merged/dev \
             && mount -t tmpfs none {base}/merged/run && mount -t tmpfs none {base}/merged/tmp \
             && mount --bind \"$1\" {base}/merged/mnt && exec chroot {base}/merged /bin/sh -ec \"$2\""
        );
        Command::new("unshare")
            .args(crate::util::unshare_mount())
            .args(["sh", "-c", &setup, "sh"])
            .arg(&self.debs)
            .arg(script)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap()
    }

    /// `run` that must succeed; its stdout and stderr.
    fn ok(&self, script: &str) -> String {
        let output = self.run(script);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{script}\n{text}");
        text
    }
}

/// Install, upgrade (the operator's config edit kept), remove (config, state and user kept) and
/// purge (state, config and user gone; the operator's own files in /etc/fieldagent kept) in a
/// scratch copy of this machine. systemd is not PID 1 here, so starting and stopping the service
/// is checked in the maintainer scripts (the_deb_has_its_metadata_and_files), not observed.
#[test]
fn install_upgrade_remove_purge() {
    let Some(deb) = built_deb() else { return };
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: installing into a scratch root needs root");
        return;
    }
    let debs = TestDir::new();
    std::fs::copy(&deb, debs.path().join("v1.deb")).unwrap();
    // The same files as a newer revision, as an upgrade would bring: unpacked, renumbered, packed.
    let tree = debs.path().join("tree");
    let status = Command::new("dpkg-deb")
        .arg("-R")
        .arg(&deb)
        .arg(&tree)
        .status()
        .unwrap();
    assert!(status.success());
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let version = format!("Version: {}-1\n", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&version), "{text}");
    let upgraded = text.replace(
        &version,
        &format!("Version: {}-2\n", env!("CARGO_PKG_VERSION")),
    );
    std::fs::write(&control, upgraded).unwrap();
    let output = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(debs.path().join("v2.deb"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let root = ScratchRoot::new(debs.path());
    root.ok("! getent passwd fieldagent");

    root.ok("dpkg -i /mnt/v1.deb");
    root.ok(
        "test -x /usr/bin/fieldagent && fieldagent --version | grep -q '^fieldagent '
         getent passwd fieldagent | grep -q ':/var/lib/fieldagent:/usr/sbin/nologin$'
         id -nG fieldagent | grep -qw i2c && id -nG fieldagent | grep -qw gpio
         dpkg-query -W -f='${Conffiles}' fieldagent | grep -q '/etc/fieldagent/config.yaml'
         test -L /etc/systemd/system/multi-user.target.wants/fieldagent.service
         test -L /etc/systemd/system/multi-user.target.wants/fieldagent-helper-recover.service
         test -L /etc/systemd/system/paths.target.wants/fieldagent-helper.path
         test -x /usr/libexec/fieldagent/fieldagent-helper
         test -f /usr/share/man/man1/fieldagent.1.gz",
    );
    // The installed unit verifies against the installed binary and this systemd.
    let verify = root.run(
        "systemd-analyze verify /usr/lib/systemd/system/fieldagent.service \
         /usr/lib/systemd/system/fieldagent-helper.path /usr/lib/systemd/system/fieldagent-helper.service \
         /usr/lib/systemd/system/fieldagent-helper-recover.service",
    );
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The operator edits the config, provisions a key, and the agent has written state.
    root.ok(
        "echo '# edited by the operator' >> /etc/fieldagent/config.yaml
         echo key > /etc/fieldagent/device.key
         install -d -o fieldagent -g fieldagent /var/lib/fieldagent
         echo '{}' > /var/lib/fieldagent/alerts.json
         install -d -m 0700 /var/lib/fieldagent-helper
         echo '{}' > /var/lib/fieldagent-helper/update.json",
    );
    root.ok("dpkg -i /mnt/v2.deb");
    root.ok("dpkg-query -W -f='${Version}' fieldagent | grep -qx '.*-2'
         grep -q 'edited by the operator' /etc/fieldagent/config.yaml
         ! ls /etc/fieldagent/config.yaml.dpkg-* 2>/dev/null");

    root.ok("dpkg -r fieldagent");
    root.ok("! test -e /usr/bin/fieldagent
         grep -q 'edited by the operator' /etc/fieldagent/config.yaml
         test -f /var/lib/fieldagent/alerts.json
         getent passwd fieldagent");

    let purged = root.ok("dpkg -P fieldagent");
    assert!(
        purged.contains("kept /etc/fieldagent: it holds files the package did not install"),
        "{purged}"
    );
    root.ok("! test -e /etc/fieldagent/config.yaml
         ! test -e /var/lib/fieldagent
         ! test -e /var/lib/fieldagent-helper
         ! test -e /etc/systemd/system/paths.target.wants/fieldagent-helper.path
         ! getent passwd fieldagent
         ! getent group fieldagent
         test -f /etc/fieldagent/device.key
         ! dpkg-query -W fieldagent 2>/dev/null");
}

/// The device starts offline happily: the unit does not wait for network-online.target (up to
/// two minutes at a boot without uplink) and is ordered after network.target only, so that it
/// stops before the network does and its goodbye still goes out. The system test's offline boot
/// shows it on a real systemd.
#[test]
fn the_unit_starts_without_waiting_for_the_network() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packaging/systemd/fieldagent.service"),
    )
    .unwrap();
    let directives: Vec<&str> = unit
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    assert!(
        !directives.iter().any(|l| l.contains("network-online")),
        "{unit}"
    );
    assert!(
        directives
            .iter()
            .any(|l| l.starts_with("After=") && l.contains("network.target")),
        "{unit}"
    );
}

/// The docs on the board: every relative link in a Markdown file the .deb installs resolves to a
/// file or directory the .deb installs (the README links docs/, the reports and charts its
/// figures cite, the Yocto and Paho notes), so `/usr/share/doc/fieldagent` reads as it does in
/// the source.
#[test]
fn every_link_in_the_shipped_docs_resolves_on_the_board() {
    let Some(deb) = built_deb() else { return };
    let dir = TestDir::new();
    let root = dir.path().join("root");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    let docs = root.join("usr/share/doc/fieldagent");
    let mut pages = Vec::new();
    let mut pending = vec![docs.clone()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    assert!(pages.len() >= 9, "{pages:?}");
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (start, _) in text.match_indices("](") {
            let rest = &text[start + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = page.parent().unwrap().join(target);
            if !resolved.exists() {
                broken.push(format!(
                    "{} -> {target}",
                    page.strip_prefix(&docs).unwrap().display()
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to what the .deb does not install:\n{}",
        broken.join("\n")
    );
}
