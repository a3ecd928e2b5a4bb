//! The sampler alone, for `bench/run`'s floor figures: the agent's sensor code and telemetry JSON
//! with no MQTT, no event loop, no alerts and no threads besides this one.
//!
//!   bare_sampler CONFIG
//!
//! Reads every sensor of CONFIG once per `telemetry.interval_s` (the agent's `Sensors`, the same
//! held-open files and `pread`s), makes the telemetry message the agent would publish, and drops
//! it. Runs until killed. What the agent costs beyond this and `bare_paho` together is the cost
//! of the agent's own centre: the event loop, the hand-offs between threads, the alert rules.

use std::time::{Duration, Instant};

use fieldagent::model::Sample;
use fieldagent::sensors::Sensors;

fn main() {
    let path =
        std::path::PathBuf::from(std::env::args().nth(1).expect("usage: bare_sampler CONFIG"));
    let (config, _) = fieldagent::config::load(&path).expect("config loads");
    let interval = Duration::from_secs_f64(config.config().telemetry.interval_s);
    let mut sensors = Sensors::new(&config.sensors, &config.config().sysfs_root);
    let mut sample = Sample::default();
    let mut next = Instant::now();
    for seq in 0u64.. {
        sample.values.clear();
        sample.errors.clear();
        sample.ts_ms = fieldagent::model::now_ms();
        sensors.begin_pass();
        sensors.read_all(&mut sample);
        let json = fieldagent::telemetry::telemetry(&sample, seq, true);
        std::hint::black_box(json);
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
