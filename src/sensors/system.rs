//! Host metrics. Memory use through sysinfo: MemTotal less MemAvailable of /proc/meminfo (with
//! its fallback for kernels without MemAvailable), refreshed at most once a second; sysinfo opens,
//! reads and closes the file each time, 7 system calls a refresh (3.5 a pass on average at 1 Hz,
//! `bench/syscalls`), the price of the design's choice of sysinfo rather than of the metric. CPU use, load and uptime from
//! `/proc/stat`, `/proc/loadavg` and `/proc/uptime`, each kept open and read with one `pread` per
//! pass like a sysfs attribute. Disk use of the root filesystem through statvfs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use sysinfo::{MemoryRefreshKind, RefreshKind, System};

use super::{SensorError, Source};
use crate::config::SystemMetric;

/// A /proc file held open and read whole from offset 0 into a buffer kept between reads (the
/// kernel makes the text anew on every read).
struct ProcFile {
    path: &'static str,
    file: Option<File>,
    buf: Vec<u8>,
}

impl ProcFile {
    fn new(path: &'static str) -> ProcFile {
        ProcFile {
            path,
            file: None,
            buf: vec![0; 512],
        }
    }

    /// The file's text now; at most the first `buf` bytes, which hold every line read here
    /// (the buffer grows while a read fills it).
    fn read(&mut self, metric: SystemMetric) -> Result<&str, SensorError> {
        let fail = |reason: String| SensorError::System {
            metric: metric.as_str(),
            reason,
        };
        if self.file.is_none() {
            let file =
                File::open(self.path).map_err(|err| fail(format!("{}: {err}", self.path)))?;
            self.file = Some(file);
        }
        let file = self.file.as_ref().expect("opened just above");
        let mut length = file
            .read_at(&mut self.buf, 0)
            .map_err(|err| fail(format!("{}: {err}", self.path)))?;
        while length == self.buf.len() && self.buf.len() < 1 << 20 {
            self.buf.resize(self.buf.len() * 2, 0);
            length = file
                .read_at(&mut self.buf, 0)
                .map_err(|err| fail(format!("{}: {err}", self.path)))?;
        }
        std::str::from_utf8(&self.buf[..length])
            .map_err(|_| fail(format!("{} is not text", self.path)))
    }
}

/// The aggregate `cpu` line of /proc/stat as (busy, total) jiffies: idle and iowait are not busy.
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let mut total = 0u64;
    let mut idle = 0u64;
    // user nice system idle iowait irq softirq steal (guest and guest_nice are within user).
    for (index, field) in line.split_ascii_whitespace().take(8).enumerate() {
        let value: u64 = field.parse().ok()?;
        total += value;
        if index == 3 || index == 4 {
            idle += value;
        }
    }
    Some((total - idle, total))
}

pub(crate) struct SystemSource {
    metrics: Vec<SystemMetric>,
    system: System,
    stat: ProcFile,
    loadavg: ProcFile,
    uptime: ProcFile,
    /// The last (busy, total) CPU jiffies, for the use between two passes.
    cpu_before: Option<(u64, u64)>,
    /// The last CPU use, given again when no jiffy passed since (sampling faster than 100 Hz).
    cpu_last: f64,
    /// When memory was last refreshed through sysinfo.
    memory_refreshed: Option<Instant>,
}

impl SystemSource {
    pub fn new(metrics: Vec<SystemMetric>) -> SystemSource {
        SystemSource {
            metrics,
            system: System::new_with_specifics(RefreshKind::nothing()),
            stat: ProcFile::new("/proc/stat"),
            loadavg: ProcFile::new("/proc/loadavg"),
            uptime: ProcFile::new("/proc/uptime"),
            cpu_before: None,
            cpu_last: 0.0,
            memory_refreshed: None,
        }
    }

    fn read_metric(&mut self, metric: SystemMetric) -> Result<f64, SensorError> {
        match metric {
            SystemMetric::CpuPercent => {
                // ok_or_else: the error's String is made only when there is an error (ok_or made
                // it on every pass, the one allocation of a warm pass).
                let now =
                    cpu_times(self.stat.read(metric)?).ok_or_else(|| SensorError::System {
                        metric: metric.as_str(),
                        reason: "no cpu line in /proc/stat".to_owned(),
                    })?;
                // The first pass: the average since boot (it does not wait for a second
                // reading); every later one, the use since the pass before.
                let (busy, total) = match self.cpu_before {
                    Some(before) if now.1 > before.1 => {
                        (now.0.saturating_sub(before.0), now.1 - before.1)
                    }
                    Some(_) => return Ok(self.cpu_last),
                    None => now,
                };
                self.cpu_before = Some(now);
                self.cpu_last = if total == 0 {
                    0.0
                } else {
                    busy as f64 * 100.0 / total as f64
                };
                Ok(self.cpu_last)
            }
            SystemMetric::MemUsedPercent => {
                // sysinfo reads /proc/meminfo and the cgroup's limits; memory moves slowly, so
                // once a second is enough however fast the sampling.
                if self
                    .memory_refreshed
                    .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1))
                {
                    self.system
                        .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                    self.memory_refreshed = Some(Instant::now());
                }
                let total = self.system.total_memory();
                if total == 0 {
                    return Err(SensorError::System {
                        metric: metric.as_str(),
                        reason: "total memory reads 0 in /proc/meminfo".to_owned(),
                    });
                }
                Ok(self.system.used_memory() as f64 * 100.0 / total as f64)
            }
            SystemMetric::Load1 | SystemMetric::Load5 | SystemMetric::Load15 => {
                let field = match metric {
                    SystemMetric::Load1 => 0,
                    SystemMetric::Load5 => 1,
                    _ => 2,
                };
                first_number(self.loadavg.read(metric)?, field, metric)
            }
            SystemMetric::UptimeS => {
                first_number(self.uptime.read(metric)?, 0, metric).map(f64::trunc)
            }
            SystemMetric::DiskUsedPercent => disk_used_percent(metric),
        }
    }
}

/// The `field`th whitespace-separated number of `text`.
fn first_number(text: &str, field: usize, metric: SystemMetric) -> Result<f64, SensorError> {
    text.split_ascii_whitespace()
        .nth(field)
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| SensorError::System {
            metric: metric.as_str(),
            reason: format!("no number {} in {text:?}", field + 1),
        })
}

/// Used share of the root filesystem as `df` computes it: used / (used + available to users).
fn disk_used_percent(metric: SystemMetric) -> Result<f64, SensorError> {
    let stats = nix::sys::statvfs::statvfs("/").map_err(|errno| SensorError::System {
        metric: metric.as_str(),
        reason: format!("statvfs /: {errno}"),
    })?;
    let used = stats.blocks().saturating_sub(stats.blocks_free()) as f64;
    let available = stats.blocks_available() as f64;
    if used + available == 0.0 {
        return Err(SensorError::System {
            metric: metric.as_str(),
            reason: "statvfs / reports a filesystem of size 0".to_owned(),
        });
    }
    Ok(used * 100.0 / (used + available))
}

impl Source for SystemSource {
    fn read(&mut self, out: &mut [Result<f64, SensorError>]) {
        for (slot, index) in out.iter_mut().zip(0..self.metrics.len()) {
            *slot = self.read_metric(self.metrics[index]);
        }
    }

    fn describe(&self) -> String {
        "system metrics".to_owned()
    }

    fn unit(&self, index: usize) -> Option<&'static str> {
        self.metrics.get(index).and_then(|m| m.unit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_from_the_aggregate_line() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(cpu_times(stat), Some((160, 980)));
        assert_eq!(cpu_times("intr 1 2 3\n"), None);
    }

    #[test]
    fn every_metric_reads_on_this_machine() {
        use SystemMetric::*;
        let metrics = vec![
            CpuPercent,
            MemUsedPercent,
            Load1,
            Load5,
            Load15,
            UptimeS,
            DiskUsedPercent,
        ];
        let mut source = SystemSource::new(metrics.clone());
        let mut out: Vec<Result<f64, SensorError>> = (0..metrics.len()).map(|_| Ok(0.0)).collect();
        for _ in 0..2 {
            source.read(&mut out);
            for (metric, value) in metrics.iter().zip(&out) {
                let value = value.as_ref().unwrap_or_else(|e| panic!("{metric:?}: {e}"));
                assert!(value.is_finite() && *value >= 0.0, "{metric:?} = {value}");
                if matches!(metric, CpuPercent | MemUsedPercent | DiskUsedPercent) {
                    assert!(*value <= 100.0, "{metric:?} = {value}");
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(out[5].as_ref().unwrap() > &0.0, "uptime");
    }
}
