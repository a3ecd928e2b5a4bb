//! Sensors: one blocking read of one or more named values per sensor.
//!
//! Each kind of source lives in its own file and only knows how to get its raw reading into the
//! source's own unit (°C, V, A, W, %RH, hPa, RPM). Scale, offset, rounding and naming are applied
//! once, here, in [`Sensor`]. A source that fails returns an error for that sensor only; the others
//! are read all the same.
//!
//! Reads block (sysfs attributes may run an I2C transfer in the kernel), so callers run them on a
//! dedicated thread, never on an async runtime worker.

pub mod file;
mod gpio;
mod i2c;
mod modbus;
pub mod stuck;
mod sysfs;
mod system;
pub mod w1;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{SensorSource, SensorSpec};
use crate::i2c::I2cBus;
use crate::modbus::poll::Poll;
use crate::model::Sample;
use crate::sync::Lock;

pub use stuck::Stuck;
pub use sysfs::hwmon_kind;

/// The threads [`Sensors::read_all_within`] reads with (besides any it gives up on a stuck
/// read): enough that a few slow sensors do not hold up the rest, few enough that a config of
/// thousands costs no thread each.
pub const READERS: usize = 8;

/// How long one sensor's read may take before it counts as stuck: an error for that pass (and
/// `sensor_fault`), never a delay for the other sensors.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

pub use crate::model::SensorError;

/// What every kind of sensor source provides.
pub(crate) trait Source: Send {
    /// Reads every quantity into `out`, one slot per quantity (one slot for single-valued
    /// sources), in the order of [`SensorSource::quantities`].
    fn read(&mut self, out: &mut [Result<f64, SensorError>]);

    /// Where the value comes from, for `read` and `check`: kind, name and path once known.
    fn describe(&self) -> String;

    /// The unit of quantity `index` after the source's own conversion.
    fn unit(&self, index: usize) -> Option<&'static str>;

    /// Calls `wake` when the source's value changes between passes (GPIO edges); most sources
    /// have nothing to say between passes.
    fn watch(&mut self, _wake: &Wake) {}
}

/// How a source asks for a pass now.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// A configured sensor: its source plus scale, offset and the names of its values.
pub struct Sensor {
    spec: SensorSpec,
    /// `name`, or `name.quantity` for each quantity; built once so a read allocates no names.
    names: Vec<Arc<str>>,
    source: Box<dyn Source>,
    /// Reused between reads.
    results: Vec<Result<f64, SensorError>>,
}

/// Opens an I2C bus by number; tests swap in a simulated bus.
pub(crate) type BusOpener<'a> = &'a dyn Fn(u32) -> Box<dyn I2cBus>;

fn linux_bus(bus: u32) -> Box<dyn I2cBus> {
    Box::new(crate::i2c::linux::LinuxBus::new(bus))
}

impl Sensor {
    pub fn new(spec: SensorSpec, sysfs_root: &Path) -> Sensor {
        Sensor::with_buses(spec, sysfs_root, &linux_bus)
    }

    pub(crate) fn with_buses(spec: SensorSpec, sysfs_root: &Path, open_bus: BusOpener) -> Sensor {
        let modbus = match &spec.source {
            SensorSource::Modbus(point) => {
                Some((Arc::new(Poll::new(std::slice::from_ref(point))), 0))
            }
            _ => None,
        };
        Sensor::build(spec, sysfs_root, open_bus, modbus)
    }

    /// `modbus` is the poll a Modbus sensor reads through, and its point's index there.
    fn build(
        spec: SensorSpec,
        sysfs_root: &Path,
        open_bus: BusOpener,
        modbus: Option<(Arc<Poll>, usize)>,
    ) -> Sensor {
        let quantities = spec.source.quantities();
        let names: Vec<Arc<str>> = if quantities.is_empty() {
            vec![Arc::from(spec.name.as_str())]
        } else {
            quantities
                .iter()
                .map(|q| Arc::from(format!("{}.{q}", spec.name)))
                .collect()
        };
        let source: Box<dyn Source> = match &spec.source {
            SensorSource::ThermalZone { zone_type } => {
                Box::new(sysfs::SysfsSource::thermal(sysfs_root, zone_type))
            }
            SensorSource::Hwmon { chip, input } => {
                Box::new(sysfs::SysfsSource::hwmon(sysfs_root, chip, input))
            }
            SensorSource::Iio { device, channel } => {
                Box::new(sysfs::SysfsSource::iio(sysfs_root, device, channel))
            }
            SensorSource::File { path, field } => {
                Box::new(file::FileSource::new(path.clone(), field.clone()))
            }
            SensorSource::W1 { device } => Box::new(w1::W1Source::new(sysfs_root, device)),
            SensorSource::System(metrics) => Box::new(system::SystemSource::new(metrics.clone())),
            SensorSource::I2c(config) => {
                Box::new(i2c::I2cSource::new(config.clone(), open_bus(config.bus)))
            }
            SensorSource::Modbus(point) => {
                let (poll, index) =
                    modbus.unwrap_or_else(|| (Arc::new(Poll::new(std::slice::from_ref(point))), 0));
                Box::new(modbus::ModbusSource::new(point.clone(), poll, index))
            }
            SensorSource::Gpio(input) => Box::new(gpio::GpioSource::new(input.clone())),
        };
        let results = names.iter().map(|_| Ok(f64::NAN)).collect();
        Sensor {
            spec,
            names,
            source,
            results,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The full names of this sensor's values, in read order.
    pub fn value_names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// The unit of value `index`: the config's `unit`, else the source's.
    pub fn unit(&self, index: usize) -> Option<&str> {
        self.spec
            .unit
            .as_deref()
            .or_else(|| self.source.unit(index))
    }

    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// Appends a `Timeout` error for each of its values: its read did not return in time.
    fn timed_out(&self, deadline: std::time::Duration, sample: &mut Sample) {
        for name in &self.names {
            sample.errors.push((
                Arc::clone(name),
                SensorError::Timeout {
                    what: self.describe(),
                    deadline_s: deadline.as_secs_f64(),
                },
            ));
        }
    }

    /// Reads once and appends each value or error to `sample`.
    pub fn read_into(&mut self, sample: &mut Sample) {
        self.source.read(&mut self.results);
        for (name, result) in self.names.iter().zip(self.results.iter_mut()) {
            match std::mem::replace(result, Ok(f64::NAN)) {
                Ok(raw) => {
                    let value = round(raw * self.spec.scale + self.spec.offset);
                    sample.values.push((Arc::clone(name), value));
                }
                Err(err) => sample.errors.push((Arc::clone(name), err)),
            }
        }
    }
}

/// Rounds to 6 decimal places, so `123 * 0.1` reads 12.3 and not 12.300000000000001. Values too
/// large for that to be exact are left alone.
fn round(value: f64) -> f64 {
    if value.abs() < 1e9 {
        (value * 1e6).round() / 1e6
    } else {
        value
    }
}

/// Every configured sensor, read in config order.
pub struct Sensors {
    sensors: Vec<Sensor>,
    /// For a sensor made anew after its read was abandoned.
    sysfs_root: PathBuf,
    /// The Modbus requests of the set, if it has Modbus sensors.
    poll: Option<Arc<Poll>>,
}

impl Sensors {
    pub fn new(specs: &[SensorSpec], sysfs_root: &Path) -> Sensors {
        Sensors::with_buses(specs, sysfs_root, &linux_bus)
    }

    /// As [`Sensors::new`], with I2C buses from `open_bus`.
    pub(crate) fn with_buses(
        specs: &[SensorSpec],
        sysfs_root: &Path,
        open_bus: BusOpener,
    ) -> Sensors {
        // One poll for every Modbus sensor of the set, so their registers are coalesced.
        let points: Vec<crate::modbus::Point> = specs
            .iter()
            .filter_map(|spec| match &spec.source {
                SensorSource::Modbus(point) => Some(point.clone()),
                _ => None,
            })
            .collect();
        let poll = (!points.is_empty()).then(|| Arc::new(Poll::new(&points)));
        let mut next_point = 0;
        let sensors = specs
            .iter()
            .map(|spec| {
                let modbus = match (&spec.source, &poll) {
                    (SensorSource::Modbus(_), Some(poll)) => {
                        next_point += 1;
                        Some((Arc::clone(poll), next_point - 1))
                    }
                    _ => None,
                };
                Sensor::build(spec.clone(), sysfs_root, open_bus, modbus)
            })
            .collect();
        Sensors {
            sensors,
            sysfs_root: sysfs_root.to_owned(),
            poll,
        }
    }

    /// Starts a pass: queues the Modbus requests, so every device works while the other
    /// sensors are read.
    pub fn begin_pass(&self) {
        if let Some(poll) = &self.poll {
            poll.kick();
        }
    }

    /// Lets sources with events between passes (GPIO edges) call `wake`.
    pub fn watch(&mut self, wake: &Wake) {
        for sensor in &mut self.sensors {
            sensor.source.watch(wake);
        }
    }

    /// Reads every sensor once into `sample` (cleared first). One failure never stops the rest.
    pub fn read_all(&mut self, sample: &mut Sample) {
        sample.values.clear();
        sample.errors.clear();
        sample.ts_ms = crate::model::now_ms();
        self.begin_pass();
        for sensor in &mut self.sensors {
            sensor.read_into(sample);
        }
    }

    /// Reads every sensor once on a few threads of its own, waiting at most `deadline` for each
    /// read: a sensor whose read blocks (a hung NFS path, a FIFO without a writer) becomes a
    /// `Timeout` error, its thread is given up (another takes its place), and the others are
    /// read all the same. A sensor `stuck` names (its read, by the sampler or an earlier `read`,
    /// has not returned) is reported as timed out without another thread blocking on it; one
    /// that blocks now is added to `stuck` until its read returns. For `read`, `check` and the
    /// remote `read` command; [`READERS`] threads at most besides the ones given up, however
    /// many sensors there are.
    pub fn read_all_within(&mut self, deadline: std::time::Duration, stuck: &Stuck) -> Sample {
        use std::collections::VecDeque;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::mpsc::RecvTimeoutError;
        use std::sync::Mutex;
        use std::time::Instant;

        /// What one reader is reading, and whether the caller gave it up.
        struct Running {
            index: usize,
            since: Instant,
            returned: Arc<AtomicBool>,
        }
        struct Shared {
            queue: Mutex<VecDeque<(usize, Sensor)>>,
            running: Mutex<Vec<Option<Running>>>,
            retired: Vec<AtomicBool>,
        }

        let mut sample = Sample {
            ts_ms: crate::model::now_ms(),
            ..Sample::default()
        };
        self.begin_pass();
        let all = std::mem::take(&mut self.sensors);
        let count = all.len();
        let specs: Vec<SensorSpec> = all.iter().map(|sensor| sensor.spec.clone()).collect();
        // Per sensor: its values and errors, and the sensor back (None while not read).
        let mut parts: Vec<Option<(Sensor, Sample)>> = (0..count).map(|_| None).collect();
        let mut queue = VecDeque::new();
        for (index, sensor) in all.into_iter().enumerate() {
            if stuck.contains(&sensor.spec.source) {
                let mut part = Sample::default();
                sensor.timed_out(deadline, &mut part);
                parts[index] = Some((sensor, part));
            } else {
                queue.push_back((index, sensor));
            }
        }
        let mut pending = queue.len();
        // Every reader that may ever run: the first few, and one more for each given up.
        let most = READERS.min(pending) + pending;
        let shared = Arc::new(Shared {
            queue: Mutex::new(queue),
            running: Mutex::new((0..most).map(|_| None).collect()),
            retired: (0..most).map(|_| AtomicBool::new(false)).collect(),
        });
        let (results, finished) = std::sync::mpsc::channel::<(usize, Sensor, Sample)>();
        let spawn = |worker: usize| {
            let shared = Arc::clone(&shared);
            let results = results.clone();
            let stuck = stuck.clone();
            std::thread::Builder::new()
                .name("read".to_owned())
                .spawn(move || loop {
                    let (index, mut sensor, returned) = {
                        let Some((index, sensor)) = shared.queue.locked().pop_front()
                        else {
                            return;
                        };
                        let returned = Arc::new(AtomicBool::new(false));
                        shared.running.locked()[worker] = Some(Running {
                            index,
                            since: Instant::now(),
                            returned: Arc::clone(&returned),
                        });
                        (index, sensor, returned)
                    };
                    let mut part = Sample::default();
                    sensor.read_into(&mut part);
                    if stuck.returned(&sensor.spec.source, &returned) {
                        tracing::info!(sensor = %sensor.spec.name, "A stuck sensor read returned; it is read again.");
                    }
                    shared.running.locked()[worker] = None;
                    if shared.retired[worker].load(Ordering::Acquire) {
                        // Given up: the caller has reported this sensor already.
                        return;
                    }
                    if results.send((index, sensor, part)).is_err() {
                        return;
                    }
                })
                .is_ok()
        };
        let mut workers = 0;
        while workers < READERS.min(pending) && spawn(workers) {
            workers += 1;
        }
        let tick = deadline.min(std::time::Duration::from_millis(100));
        while pending > 0 && workers > 0 {
            match finished.recv_timeout(tick) {
                Ok((index, sensor, part)) => {
                    parts[index] = Some((sensor, part));
                    pending -= 1;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let mut given_up = 0;
                    let mut running = shared.running.locked();
                    for worker in 0..workers {
                        let Some(slot) = running[worker].as_ref() else {
                            continue;
                        };
                        if slot.since.elapsed() < deadline
                            || shared.retired[worker].swap(true, Ordering::AcqRel)
                        {
                            continue;
                        }
                        let spec = &specs[slot.index];
                        if stuck.mark(&spec.source, &slot.returned) {
                            tracing::error!(sensor = %spec.name, deadline_s = deadline.as_secs_f64(), "Sensor read stuck; it is not read again until that read returns.");
                        }
                        // The stuck read keeps its sensor; a new one stands in for names and
                        // units.
                        let stand_in = Sensor::new(spec.clone(), &self.sysfs_root);
                        let mut part = Sample::default();
                        stand_in.timed_out(deadline, &mut part);
                        parts[slot.index] = Some((stand_in, part));
                        running[worker] = None;
                        pending -= 1;
                        given_up += 1;
                    }
                    drop(running);
                    // A reader in place of each one given up, while sensors wait.
                    for _ in 0..given_up {
                        if workers >= most {
                            break;
                        }
                        if !spawn(workers) {
                            // No thread to take its place: the rest is read here.
                            pending = 0;
                            break;
                        }
                        workers += 1;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(results);
        // Sensors no reader took (no thread could be started): read on this thread.
        let left: Vec<(usize, Sensor)> = shared.queue.locked().drain(..).collect();
        for (index, mut sensor) in left {
            let mut part = Sample::default();
            sensor.read_into(&mut part);
            parts[index] = Some((sensor, part));
        }
        for (index, part) in parts.into_iter().enumerate() {
            let (sensor, part) = part.unwrap_or_else(|| {
                let sensor = Sensor::new(specs[index].clone(), &self.sysfs_root);
                let mut part = Sample::default();
                sensor.timed_out(deadline, &mut part);
                (sensor, part)
            });
            sample.values.extend(part.values);
            sample.errors.extend(part.errors);
            self.sensors.push(sensor);
        }
        sample
    }

    /// Reads sensor `index` into `sample`.
    pub fn read_one(&mut self, index: usize, sample: &mut Sample) {
        self.sensors[index].read_into(sample);
    }

    /// Appends a `Timeout` error for each value of sensor `index`, without reading it.
    pub fn skip_stuck(&self, index: usize, deadline: std::time::Duration, sample: &mut Sample) {
        self.sensors[index].timed_out(deadline, sample);
    }

    pub fn len(&self) -> usize {
        self.sensors.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Sensor> {
        self.sensors.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty()
    }
}

#[cfg(test)]
mod alloc_tests {
    //! A pass over sysfs sensors and system metrics allocates nothing once warm: a counting
    //! allocator (this test binary's global allocator) counts per thread.

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use super::*;
    use crate::config::SystemMetric;

    struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    // SAFETY: forwards to the system allocator unchanged; only counts.
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
            // SAFETY: the caller's contract is the system allocator's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }

    fn spec(name: &str, source: SensorSource) -> SensorSpec {
        SensorSpec {
            key: format!("sensors[{name}]"),
            name: name.to_owned(),
            scale: 1.0,
            offset: 0.0,
            unit: None,
            source,
        }
    }

    /// The footprint bench's workload: 10 thermal zones, 10 hwmon inputs and 4 system metrics,
    /// plus a `file:` sensor.
    /// After two passes (which open the files), 20 more allocate nothing on the reading thread.
    /// (Memory through sysinfo is refreshed at most once a second, so not within these passes;
    /// the CPU metric made an error message on every pass until this test found it.)
    #[test]
    fn a_warm_pass_allocates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut specs = Vec::new();
        for i in 0..10 {
            let zone = dir.path().join(format!("class/thermal/thermal_zone{i}"));
            std::fs::create_dir_all(&zone).unwrap();
            std::fs::write(zone.join("type"), format!("zone{i}\n")).unwrap();
            std::fs::write(zone.join("temp"), format!("{}\n", 40000 + i)).unwrap();
            let hwmon = dir.path().join(format!("class/hwmon/hwmon{i}"));
            std::fs::create_dir_all(&hwmon).unwrap();
            std::fs::write(hwmon.join("name"), format!("chip{i}\n")).unwrap();
            std::fs::write(hwmon.join("in1_input"), "12000\n").unwrap();
            specs.push(spec(
                &format!("zone{i}"),
                SensorSource::ThermalZone {
                    zone_type: format!("zone{i}"),
                },
            ));
            specs.push(spec(
                &format!("volts{i}"),
                SensorSource::Hwmon {
                    chip: format!("chip{i}"),
                    input: "in1".to_owned(),
                },
            ));
        }
        let tank = dir.path().join("tank");
        std::fs::write(&tank, "42\n").unwrap();
        specs.push(spec(
            "tank",
            SensorSource::File {
                path: tank,
                field: crate::config::FileField::Whole,
            },
        ));
        let without_memory = specs.clone();
        specs.push(spec(
            "sys",
            SensorSource::System(vec![
                SystemMetric::CpuPercent,
                SystemMetric::MemUsedPercent,
                SystemMetric::Load1,
                SystemMetric::UptimeS,
            ]),
        ));
        let mut sample = Sample::default();
        for (what, specs) in [("sysfs", without_memory), ("sysfs and system", specs)] {
            let mut sensors = Sensors::new(&specs, dir.path());
            sensors.read_all(&mut sample);
            sensors.read_all(&mut sample);
            assert!(sample.errors.is_empty(), "{:?}", sample.errors);
            let before = allocations();
            for _ in 0..20 {
                sensors.read_all(&mut sample);
            }
            let made = allocations() - before;
            assert_eq!(made, 0, "{what}: {made} allocations in 20 passes");
        }
    }
}
