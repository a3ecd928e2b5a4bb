//! Host metrics: CPU and memory use through sysinfo, load and uptime from the kernel, disk use of
//! the root filesystem through statvfs.

use std::time::Instant;

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use super::{SensorError, Source};
use crate::config::SystemMetric;

pub(crate) struct SystemSource {
    metrics: Vec<SystemMetric>,
    system: System,
    /// When CPU usage was last refreshed; sysinfo needs two refreshes some time apart.
    cpu_refreshed: Instant,
}

impl SystemSource {
    pub fn new(metrics: Vec<SystemMetric>) -> SystemSource {
        let mut refresh = RefreshKind::nothing();
        if metrics.contains(&SystemMetric::CpuPercent) {
            refresh = refresh.with_cpu(CpuRefreshKind::nothing().with_cpu_usage());
        }
        if metrics.contains(&SystemMetric::MemUsedPercent) {
            refresh = refresh.with_memory(MemoryRefreshKind::nothing().with_ram());
        }
        SystemSource {
            metrics,
            system: System::new_with_specifics(refresh),
            cpu_refreshed: Instant::now(),
        }
    }

    fn read_metric(&mut self, metric: SystemMetric) -> Result<f64, SensorError> {
        match metric {
            SystemMetric::CpuPercent => {
                // sysinfo measures between two refreshes at least MINIMUM_CPU_UPDATE_INTERVAL
                // apart. The first reading comes right after start: rather than wait for it
                // (200 ms of start-up), it is the average since boot from the first refresh.
                if self.cpu_refreshed.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
                    self.system.refresh_cpu_usage();
                    self.cpu_refreshed = Instant::now();
                }
                if self.system.cpus().is_empty() {
                    return Err(SensorError::System {
                        metric: metric.as_str(),
                        reason: "no CPU found in /proc/stat".to_owned(),
                    });
                }
                Ok(f64::from(self.system.global_cpu_usage()))
            }
            SystemMetric::MemUsedPercent => {
                self.system
                    .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                let total = self.system.total_memory();
                if total == 0 {
                    return Err(SensorError::System {
                        metric: metric.as_str(),
                        reason: "total memory reads 0 in /proc/meminfo".to_owned(),
                    });
                }
                Ok(self.system.used_memory() as f64 * 100.0 / total as f64)
            }
            SystemMetric::Load1 => Ok(System::load_average().one),
            SystemMetric::Load5 => Ok(System::load_average().five),
            SystemMetric::Load15 => Ok(System::load_average().fifteen),
            SystemMetric::UptimeS => Ok(System::uptime() as f64),
            SystemMetric::DiskUsedPercent => disk_used_percent(metric),
        }
    }
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
