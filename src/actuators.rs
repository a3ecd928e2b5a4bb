//! What a command may set: a file (a sysfs attribute such as an LED's brightness), a GPIO output
//! line, or a Modbus coil or holding register. [`set`] does the one write; what may be written is
//! checked before (the allow-list in `crate::commands`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::gpio::OutputSpec;
use crate::modbus::line::Work;
use crate::modbus::{Failure, Point};

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
        Target::File(path) => crate::commands::write(path, value).map(|()| None),
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
            match slot.wait_until(deadline) {
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
/// it runs; a line that cannot be had is logged and tried again at its first command.
pub fn hold(
    actuators: &[crate::config::ActuatorSpec],
) -> Vec<std::sync::Arc<dyn crate::gpio::Output>> {
    let mut held = Vec::new();
    for actuator in actuators {
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
