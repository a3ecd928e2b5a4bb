//! `modbus:` sensors: one register value, coil or discrete input on a Modbus device, read
//! through the [`Poll`] its sensor set shares (see `crate::modbus`).

use std::sync::Arc;

use super::{SensorError, Source};
use crate::modbus::poll::Poll;
use crate::modbus::Point;

pub(crate) struct ModbusSource {
    point: Point,
    poll: Arc<Poll>,
    /// This point's index in the poll.
    index: usize,
}

impl ModbusSource {
    pub fn new(point: Point, poll: Arc<Poll>, index: usize) -> ModbusSource {
        ModbusSource { point, poll, index }
    }
}

impl Source for ModbusSource {
    fn read(&mut self, out: &mut [Result<f64, SensorError>]) {
        let point = &self.point;
        out[0] = match self.poll.take(self.index, |words| point.decode(words)) {
            Ok(value) => Ok(value),
            Err(failure) => Err(SensorError::Device {
                what: self.point.describe(),
                reason: failure.to_string(),
            }),
        };
    }

    fn describe(&self) -> String {
        self.point.describe()
    }

    fn unit(&self, _index: usize) -> Option<&'static str> {
        None
    }
}
