//! What a command may set: a file (a sysfs attribute such as an LED's brightness), a GPIO output
//! line, or a Modbus coil or holding register. [`set`] does the one write; what may be written is
//! checked before (the allow-list in `crate::commands`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::gpio::OutputSpec;
use crate::modbus::line::Work;
use crate::modbus::{Failure, Point};
use crate::sync::Lock;

/// An actuator's target, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    File(PathBuf),
    Gpio(OutputSpec),
    Modbus(Point),
}

impl Target {
    /// For logs and answers: the path, the line or the register.
    pub fn describe(&self) -> String {
        match self {
            Target::File(path) => path.display().to_string(),
            Target::Gpio(spec) => format!("gpio {} line {}", spec.chip, spec.line),
            Target::Modbus(point) => point.describe(),
        }
    }
}

/// Sets `target` to `value` (one of its allowed values). On success, what the device said, for
/// the answer (a Modbus device echoes the write; a GPIO line reads back its level).
pub fn set(target: &Target, value: &str) -> Result<Option<String>, String> {
    match target {
        Target::File(path) => write_file(path, value).map(|()| None),
        Target::Gpio(spec) => {
            let level = crate::gpio::level(value)?;
            let line = crate::gpio::output(spec)?;
            line.set(level)?;
            let now = line.get()?;
            Ok(Some(format!("line reads {}", u8::from(now))))
        }
        Target::Modbus(point) => {
            let words = point.encode(value)?;
            let line = crate::modbus::line::open(&point.transport);
            let slot = line.submit(
                point.unit,
                Work::Write {
                    table: point.table,
                    address: point.address,
                    words,
                },
                point.timeout,
            );
            // The line may be busy with a pass's reads; a write waits its turn, within reason.
            let deadline = Instant::now() + point.timeout * 3 + Duration::from_millis(500);
            match slot.wait_until(deadline).as_deref() {
                Some(Ok(_)) => Ok(Some(format!(
                    "unit {} acknowledged the write of {} {}",
                    point.unit,
                    point.table.as_str(),
                    point.address
                ))),
                Some(Err(failure)) => Err(match failure {
                    Failure::Exception(_) => format!("{}: {failure}", point.describe()),
                    Failure::NoAnswer(why) => format!("{}: {why}", point.describe()),
                }),
                None => Err(format!(
                    "{}: no answer within {} s; the outcome is unknown",
                    point.describe(),
                    (deadline - Instant::now()).as_secs()
                )),
            }
        }
    }
}

/// What `target` holds now, as text, for Sparkplug's actuator metrics; None when it cannot be
/// read without a bus transaction (Modbus) or at all.
pub fn current(target: &Target) -> Option<String> {
    match target {
        Target::File(path) => {
            use std::io::Read as _;
            use std::os::unix::fs::OpenOptionsExt;
            let mut text = String::new();
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path)
                .and_then(|mut handle| handle.read_to_string(&mut text))
                .ok()?;
            Some(text.trim().to_owned())
        }
        Target::Gpio(spec) => {
            let line = crate::gpio::output(spec).ok()?;
            line.get().ok().map(|level| u8::from(level).to_string())
        }
        Target::Modbus(_) => None,
    }
}

/// Requests every GPIO output of `actuators` (their levels kept), so the agent holds them while
/// it runs; a line that cannot be had is logged and tried again at its first command. Pins where
/// each file actuator's path leads (see [`write_file`]).
pub fn hold(
    actuators: &[crate::config::ActuatorSpec],
) -> Vec<std::sync::Arc<dyn crate::gpio::Output>> {
    let mut held = Vec::new();
    for actuator in actuators {
        if let Target::File(path) = &actuator.target {
            pin(path);
        }
        if let Target::Gpio(spec) = &actuator.target {
            match crate::gpio::output(spec) {
                Ok(line) => held.push(line),
                Err(err) => {
                    tracing::warn!(actuator = %actuator.name, error = %err, "GPIO output not held; tried again at its first command.")
                }
            }
        }
    }
    held
}

/// Where each file actuator's path led when the agent started or last reloaded: its path with
/// every symlink resolved (`/sys/class/leds/ACT` is itself a link into `/sys/devices`).
static PINNED: std::sync::Mutex<Vec<(PathBuf, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// `path` with every symlink of its directory resolved; the file name itself is kept (a
/// symlink there is never followed).
fn resolve(path: &std::path::Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    Ok(std::fs::canonicalize(parent)?.join(name))
}

/// Records where `path` leads now (nothing when it does not exist yet: its first write pins it).
fn pin(path: &std::path::Path) {
    let Ok(real) = resolve(path) else {
        return;
    };
    let mut pinned = PINNED.locked();
    pinned.retain(|(configured, _)| configured != path);
    pinned.push((path.to_owned(), real));
}

/// Writes `value` to the file actuator at `path`. Only paths from the allow-list reach this.
///
/// Its directory must lead where it led when the agent started or last reloaded (resolved then,
/// symlinks and all): a directory on its way that was replaced since (by a symlink into `/etc`,
/// say) is refused, not followed. The resolved path is opened with no symlink allowed in any of
/// its components (`openat2`, `RESOLVE_NO_SYMLINKS`), so nothing changes between the check and
/// the open, and a symlink planted as the file itself is never written through; non-blocking (a FIFO without a reader is an error, not a wait); truncated (writing
/// "1" over "10" leaves "1", as `echo 1 >` does); it must be a regular file or a device.
pub fn write_file(path: &std::path::Path, value: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::fd::FromRawFd;
    let real = resolve(path).map_err(|err| format!("cannot open {}: {err}", path.display()))?;
    {
        let mut pinned = PINNED.locked();
        match pinned.iter().find(|(configured, _)| configured == path) {
            Some((_, before)) if *before != real => {
                return Err(format!(
                    "refused: {} now leads to {}, not to {} as when the agent started or last reloaded (a directory on its way was replaced?); reload the agent to accept the new place",
                    path.display(),
                    real.display(),
                    before.display()
                ));
            }
            Some(_) => {}
            None => pinned.push((path.to_owned(), real.clone())),
        }
    }
    let how = nix::fcntl::OpenHow::new()
        .flags(
            nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_TRUNC
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_NOCTTY
                | nix::fcntl::OFlag::O_CLOEXEC,
        )
        .resolve(nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = match nix::fcntl::openat2(libc::AT_FDCWD, &real, how) {
        Ok(fd) => fd,
        // Kernels before 5.6 have no openat2: the last component at least is not followed.
        Err(nix::errno::Errno::ENOSYS) => nix::fcntl::open(
            &real,
            nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_TRUNC
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_NOCTTY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|err| format!("cannot open {}: {err}", path.display()))?,
        Err(nix::errno::Errno::ELOOP) => {
            return Err(format!(
                "cannot open {}: it is a symlink, or goes through one that was not there when it was resolved; refused",
                path.display()
            ))
        }
        Err(err) => {
            return Err(format!(
                "cannot open {}: {}",
                path.display(),
                std::io::Error::from(err)
            ))
        }
    };
    // SAFETY: `fd` was just opened here and is owned by nothing else.
    #[allow(unsafe_code)]
    let mut handle = unsafe { std::fs::File::from_raw_fd(fd) };
    let kind = handle
        .metadata()
        .map_err(|err| format!("cannot stat {}: {err}", path.display()))?
        .file_type();
    if let Some(what) = unfit_actuator(kind) {
        return Err(format!("{} is {what}; expected a file", path.display()));
    }
    handle
        .write_all(value.as_bytes())
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}

/// Why a file of this type cannot be an actuator, if it cannot: a FIFO, a socket, a directory.
pub fn unfit_actuator(kind: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_dir() {
        Some("a directory")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 31: a directory on an actuator's path replaced by a symlink after the agent
    /// started is refused, not followed (`O_NOFOLLOW` guarded only the last component); the
    /// target the link points at is untouched.
    #[test]
    fn a_replaced_directory_on_the_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let leds = dir.path().join("leds");
        std::fs::create_dir_all(leds.join("status")).unwrap();
        let brightness = leds.join("status/brightness");
        std::fs::write(&brightness, "0").unwrap();
        // A link on the way at start is fine (sysfs's class directories are links).
        let class = dir.path().join("class");
        std::os::unix::fs::symlink(&leds, &class).unwrap();
        let path = class.join("status/brightness");
        pin(&path);
        write_file(&path, "1").unwrap();
        assert_eq!(std::fs::read_to_string(&brightness).unwrap(), "1");

        // Someone replaces the LED's directory with a link to a secret place.
        let secret = dir.path().join("secret");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("brightness"), "keep").unwrap();
        std::fs::remove_dir_all(leds.join("status")).unwrap();
        std::os::unix::fs::symlink(&secret, leds.join("status")).unwrap();
        let refused = write_file(&path, "1").unwrap_err();
        assert!(refused.starts_with("refused:"), "{refused}");
        assert_eq!(
            std::fs::read_to_string(secret.join("brightness")).unwrap(),
            "keep"
        );

        // A reload pins the new place (an operator accepted it).
        pin(&path);
        write_file(&path, "1").unwrap();
        assert_eq!(
            std::fs::read_to_string(secret.join("brightness")).unwrap(),
            "1"
        );
    }

    /// Issue 20: writing "1" over "10" left "10" and answered ok; a symlink planted at the
    /// path was written through; a FIFO blocked the writer.
    #[test]
    fn writes_truncate_and_follow_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("value");
        std::fs::write(&file, "10").unwrap();
        write_file(&file, "1").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1");

        let victim = dir.path().join("victim");
        std::fs::write(&victim, "kept").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = write_file(&link, "1").unwrap_err();
        assert!(err.contains("cannot open"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "kept");

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = write_file(&fifo, "1").unwrap_err();
        assert!(
            err.contains("cannot open"),
            "no reader: ENXIO at once, {err}"
        );
    }
}
