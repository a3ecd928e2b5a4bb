//! `gpio:` sensors: one input line through the GPIO character device, 0 or 1 (active-low
//! applied). With `edges: true` a settled change wakes the sampler at once (see
//! `crate::gpio::EdgeWatch`), so an `equals` alert on it is raised without waiting for the next
//! pass.

use std::sync::Arc;

use super::{SensorError, Source, Wake};
use crate::gpio::{EdgeWatch, Input, InputSpec};

pub(crate) struct GpioSource {
    spec: InputSpec,
    /// The requested line; asked for again each pass while that fails (a chip that appears
    /// late, a line another process let go).
    line: Option<Arc<dyn Input>>,
    wake: Option<Wake>,
    watch: Option<EdgeWatch>,
}

impl GpioSource {
    pub fn new(spec: InputSpec) -> GpioSource {
        GpioSource {
            spec,
            line: None,
            wake: None,
            watch: None,
        }
    }

    fn line(&mut self) -> Result<Arc<dyn Input>, String> {
        if let Some(line) = &self.line {
            return Ok(Arc::clone(line));
        }
        let (_, line) = crate::gpio::input(&self.spec)?;
        self.line = Some(Arc::clone(&line));
        self.start_watch();
        Ok(line)
    }

    fn start_watch(&mut self) {
        let (Some(line), Some(wake), None, true) =
            (&self.line, &self.wake, &self.watch, self.spec.edges)
        else {
            return;
        };
        match EdgeWatch::start(Arc::clone(line), self.spec.debounce, Arc::clone(wake)) {
            Ok(watch) => self.watch = Some(watch),
            Err(err) => {
                tracing::warn!(line = %self.describe(), error = %err, "No edge events; the line is read each pass only.")
            }
        }
    }
}

impl Source for GpioSource {
    fn read(&mut self, out: &mut [Result<f64, SensorError>]) {
        out[0] = self
            .line()
            .and_then(|line| line.value())
            .map(|level| f64::from(u8::from(level)))
            .map_err(|reason| SensorError::Device {
                what: self.describe(),
                reason,
            });
    }

    fn describe(&self) -> String {
        format!("gpio {} line {}", self.spec.chip, self.spec.line)
    }

    fn unit(&self, _index: usize) -> Option<&'static str> {
        None
    }

    fn watch(&mut self, wake: &Wake) {
        self.wake = Some(Arc::clone(wake));
        if self.line.is_none() {
            let _ = self.line();
        } else {
            self.start_watch();
        }
    }
}
