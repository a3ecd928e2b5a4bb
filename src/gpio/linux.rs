//! The kernel's GPIO character device through gpiocdev (uAPI v2).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::{Backend, Bias, Found, Input, InputSpec, LineRef, Output, Stop};
use gpiocdev::line::{Bias as LineBias, EdgeDetection, Value};
use gpiocdev::request::{Config, Request};
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// The consumer name the kernel shows for our lines (`gpioinfo`).
const CONSUMER: &str = "fieldagent";

/// Chips under `/dev`.
#[derive(Default)]
pub struct Linux;

impl Linux {
    fn chip_path(&self, chip: &str) -> Result<PathBuf, String> {
        if chip.starts_with('/') {
            return gpiocdev::chip::is_chip(chip)
                .map_err(|err| format!("{chip} is not a GPIO chip: {err}"));
        }
        let paths = gpiocdev::chip::chips()
            .map_err(|err| format!("cannot list the GPIO chips in /dev: {err}"))?;
        let mut seen = Vec::new();
        for path in paths {
            let Ok(found) = gpiocdev::Chip::from_path(&path) else {
                continue;
            };
            let Ok(info) = found.info() else {
                continue;
            };
            if info.name == chip || info.label == chip {
                return Ok(path);
            }
            seen.push(format!("{} \"{}\"", info.name, info.label));
        }
        Err(if seen.is_empty() {
            format!("no GPIO chip named or labelled \"{chip}\": this system has no GPIO chips in /dev (or none this user may open)")
        } else {
            format!(
                "no GPIO chip named or labelled \"{chip}\"; found {}",
                seen.join(", ")
            )
        })
    }
}

impl Backend for Linux {
    fn find(&self, chip: &str, line: &LineRef) -> Result<Found, String> {
        let path = self.chip_path(chip)?;
        let opened = gpiocdev::Chip::from_path(&path)
            .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
        let offset = match line {
            LineRef::Offset(offset) => {
                let info = opened
                    .info()
                    .map_err(|err| format!("cannot query {}: {err}", path.display()))?;
                if *offset >= info.num_lines {
                    return Err(format!(
                        "{} has lines 0..{}, not {offset}",
                        path.display(),
                        info.num_lines
                    ));
                }
                *offset
            }
            LineRef::Name(name) => {
                opened
                    .find_line_info(name)
                    .ok_or_else(|| format!("{} has no line named \"{name}\"", path.display()))?
                    .offset
            }
        };
        Ok(Found { chip: path, offset })
    }

    fn input(&self, found: &Found, spec: &InputSpec) -> Result<Box<dyn Input>, String> {
        let mut config = Config::default();
        config
            .on_chip(&found.chip)
            .with_line(found.offset)
            .as_input();
        if spec.active_low {
            config.as_active_low();
        }
        config.with_bias(match spec.bias {
            Bias::AsIs => None,
            Bias::Disabled => Some(LineBias::Disabled),
            Bias::PullUp => Some(LineBias::PullUp),
            Bias::PullDown => Some(LineBias::PullDown),
        });
        if spec.edges {
            config.with_edge_detection(EdgeDetection::BothEdges);
        }
        let request = request(config, found)?;
        Ok(Box::new(LinuxInput {
            request,
            offset: found.offset,
        }))
    }

    fn output(&self, found: &Found, active_low: bool) -> Result<Box<dyn Output>, String> {
        let mut config = Config::default();
        config.on_chip(&found.chip).with_line(found.offset).as_is();
        if active_low {
            config.as_active_low();
        }
        let request = request(config, found)?;
        Ok(Box::new(LinuxOutput {
            request,
            offset: found.offset,
            active_low,
            chip: found.chip.clone(),
        }))
    }
}

fn request(config: Config, found: &Found) -> Result<Request, String> {
    Request::from_config(config)
        .with_consumer(CONSUMER)
        .request()
        .map_err(|err| {
            format!(
                "cannot request line {} of {}: {err}{}",
                found.offset,
                found.chip.display(),
                if err.to_string().contains("busy") {
                    " (another process holds it: see gpioinfo)"
                } else {
                    ""
                }
            )
        })
}

struct LinuxInput {
    request: Request,
    offset: u32,
}

impl Input for LinuxInput {
    fn value(&self) -> Result<bool, String> {
        self.request
            .value(self.offset)
            .map(|value| value == Value::Active)
            .map_err(|err| format!("cannot read line {}: {err}", self.offset))
    }

    fn wait_edge(&self, stop: &Stop) -> Result<bool, String> {
        let mut fds = [
            PollFd::new(self.request.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(false),
            Err(err) => return Err(format!("cannot wait for edges: {err}")),
        }
        if stop.is_raised() {
            return Ok(false);
        }
        self.drain()?;
        Ok(true)
    }

    fn drain(&self) -> Result<(), String> {
        while self
            .request
            .has_edge_event()
            .map_err(|err| format!("cannot read edge events: {err}"))?
        {
            self.request
                .read_edge_event()
                .map_err(|err| format!("cannot read edge events: {err}"))?;
        }
        Ok(())
    }
}

struct LinuxOutput {
    request: Request,
    offset: u32,
    active_low: bool,
    chip: PathBuf,
}

impl Output for LinuxOutput {
    fn set(&self, value: bool) -> Result<(), String> {
        let level = if value {
            Value::Active
        } else {
            Value::Inactive
        };
        let is_output = self
            .request
            .line_config(self.offset)
            .is_some_and(|config| config.direction == Some(gpiocdev::line::Direction::Output));
        if is_output {
            return self
                .request
                .set_value(self.offset, level)
                .map(|_| ())
                .map_err(|err| self.failed(err));
        }
        // First write: the line becomes an output at the wanted level in one step.
        let mut config = self.request.config();
        config.with_line(self.offset).as_output(level);
        if self.active_low {
            config.as_active_low();
        }
        self.request
            .reconfigure(&config)
            .map_err(|err| self.failed(err))
    }

    fn get(&self) -> Result<bool, String> {
        self.request
            .value(self.offset)
            .map(|value| value == Value::Active)
            .map_err(|err| self.failed(err))
    }
}

impl LinuxOutput {
    fn failed(&self, err: gpiocdev::Error) -> String {
        format!(
            "cannot drive line {} of {}: {err}",
            self.offset,
            display(&self.chip)
        )
    }
}

fn display(path: &Path) -> std::path::Display<'_> {
    path.display()
}
