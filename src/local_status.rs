//! `state_dir/status.json`: what the running agent is doing, for `fieldagent status` on the
//! board (a technician with the uplink down has nothing else). The daemon writes it at start,
//! on every connect, failed connect and lost connection, and at each health tick (60 s), off the
//! event loop; `status` reads it together with the outbox file itself.
//!
//! The file is replaced atomically (temporary file, rename) but not fsynced: it describes a
//! running process, and after a power cut the process is gone anyway. Boards have slow flash.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::outbox::OnDisk;

/// The file's name in `state_dir`.
pub const FILE: &str = "status.json";

/// Older than this, the file no longer says what the agent does (it is rewritten at least every
/// health tick, 60 s).
pub const STALE_MS: u64 = 150_000;

/// What the daemon writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Written {
    pub pid: u32,
    pub version: String,
    /// When this was written (Unix ms).
    pub written_ts: u64,
    /// When this was written, in milliseconds since boot (`clock::boot_ms`): how old the file
    /// is, whatever the wall clock did since (absent in files of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_boot_ms: Option<u64>,
    /// The boot it was written in (`/proc/sys/kernel/random/boot_id`): `written_boot_ms` of
    /// another boot says nothing of this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    pub started_ts: u64,
    pub client_id: String,
    /// `plain` or `sparkplug`.
    pub mode: String,
    /// Waiting for its certificate files (not provisioned yet): the path it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    pub connected: bool,
    /// The broker it is connected to.
    pub broker: Option<String>,
    /// Connected since, or offline since (Unix ms).
    pub since_ts: u64,
    pub last_connect_error: Option<String>,
    /// Queued per kind, in flight included, as the agent counts them (memory-only ones too).
    pub queued: Queued,
    /// When the oldest message queued in this run was stored (Unix ms).
    pub oldest_queued_ts: Option<u64>,
    pub raised: Vec<String>,
    pub failing_sensors: Vec<String>,
    pub outbox_durable: bool,
    pub sent: u64,
    pub dropped: u64,
    pub refused: u64,
    pub reconnects: u64,
    /// The running operations and the last 10 that ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<crate::operations::Summary>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub alerts: usize,
    pub responses: usize,
    pub telemetry: usize,
}

impl Queued {
    pub fn from_kinds(per_kind: [usize; 3]) -> Queued {
        Queued {
            alerts: per_kind[0],
            responses: per_kind[1],
            telemetry: per_kind[2],
        }
    }

    fn total(self) -> usize {
        self.alerts + self.responses + self.telemetry
    }
}

/// Writes `status` into `dir` atomically (mode 0600, no fsync).
pub fn write(dir: &Path, status: &Written) -> io::Result<()> {
    crate::state::private_dir(dir)?;
    let path = dir.join(FILE);
    let temporary = dir.join(format!("{FILE}.tmp"));
    let mut file = crate::state::create_private(&temporary)?;
    serde_json::to_writer(&mut file, status)?;
    file.flush()?;
    std::fs::rename(&temporary, &path)
}

/// What `fieldagent status` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub running: bool,
    /// Why not running, or why the state cannot be trusted; `None` when running and fresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub state_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// When the agent last wrote its state (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_ts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    pub connected: bool,
    pub broker: Option<String>,
    pub since_ts: Option<u64>,
    pub last_connect_error: Option<String>,
    pub queued: Queued,
    pub oldest_queued_ts: Option<u64>,
    pub raised: Vec<String>,
    pub failing_sensors: Vec<String>,
    pub outbox_durable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_damage: Option<String>,
    pub sent: u64,
    pub dropped: u64,
    pub refused: u64,
    pub reconnects: u64,
    /// The running operations and the last 10 that ended.
    pub operations: Vec<crate::operations::Summary>,
}

/// Why the state of `state_dir` could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source} (run as root or as the service user)", path.display())]
    Denied {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The largest `status.json` read (the daemon writes about a kilobyte).
const MAX_FILE: u64 = 256 * 1024;

/// Reads `state_dir`'s status and outbox as of `now_ms`; `alive` says whether a process id is a
/// running fieldagent.
pub fn read(
    state_dir: &Path,
    now_ms: u64,
    alive: impl Fn(u32) -> bool,
) -> Result<Status, ReadError> {
    let path = state_dir.join(FILE);
    let written: Option<Written> = match read_small(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        // Not a regular file, or far too large: not what the daemon writes.
        Err(err) if err.kind() == io::ErrorKind::InvalidData => None,
        Err(source) => return Err(ReadError::Denied { path, source }),
    };
    let on_disk = crate::outbox::inspect(state_dir).map_err(|source| ReadError::Denied {
        path: state_dir.join(crate::outbox::FILE),
        source,
    })?;
    Ok(combine(
        state_dir,
        written,
        &on_disk,
        now_ms,
        crate::clock::boot_ms(),
        alive,
    ))
}

/// A small regular file, read without waiting: opened non-blocking and not following a
/// symlink, checked to be a regular file of at most [`MAX_FILE`] bytes (`InvalidData`
/// otherwise), so a FIFO or a device planted in its place cannot hang `status`.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|err| {
            if err.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(io::ErrorKind::InvalidData, "a symlink")
            } else {
                err
            }
        })?;
    let metadata = file.metadata()?;
    if !metadata.is_file() || metadata.len() > MAX_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file of its size",
        ));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_FILE).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn combine(
    state_dir: &Path,
    written: Option<Written>,
    on_disk: &OnDisk,
    now_ms: u64,
    now_boot_ms: u64,
    alive: impl Fn(u32) -> bool,
) -> Status {
    let disk_queued = Queued::from_kinds(on_disk.per_kind);
    let Some(w) = written else {
        return Status {
            running: false,
            problem: Some(format!(
                "no {FILE} in {}: the agent has not run with this state_dir (or is older)",
                state_dir.display()
            )),
            state_dir: state_dir.to_owned(),
            pid: None,
            version: None,
            client_id: None,
            written_ts: None,
            waiting_for: None,
            connected: false,
            broker: None,
            since_ts: None,
            last_connect_error: None,
            queued: disk_queued,
            oldest_queued_ts: on_disk.oldest_ts,
            raised: Vec::new(),
            failing_sensors: Vec::new(),
            outbox_durable: true,
            outbox_damage: on_disk.damage.clone(),
            sent: 0,
            dropped: 0,
            refused: 0,
            reconnects: 0,
            operations: Vec::new(),
        };
    };
    // Since boot where the file says (a wall clock step changes nothing); a file written in
    // another boot (its boot time ahead of ours) is as old as our whole boot, at least.
    let age_ms = match w.written_boot_ms {
        Some(written) if written <= now_boot_ms => now_boot_ms - written,
        Some(_) => now_boot_ms.max(STALE_MS + 1),
        None => now_ms.saturating_sub(w.written_ts),
    };
    let problem = if !alive(w.pid) {
        Some(format!(
            "not running: process {} is gone; this is what it last wrote, {} ago",
            w.pid,
            duration(age_ms)
        ))
    } else if age_ms > STALE_MS {
        Some(format!(
            "stale: process {} last wrote its state {} ago (it should every 60 s): it may be hung",
            w.pid,
            duration(age_ms)
        ))
    } else {
        None
    };
    let running = problem.is_none();
    // A running agent's own count includes what only it knows (messages in memory); otherwise
    // the file is the truth.
    let (queued, oldest) = if running && !w.outbox_durable {
        (w.queued, w.oldest_queued_ts)
    } else {
        let oldest = match (on_disk.oldest_ts, w.oldest_queued_ts) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (disk_queued, oldest.filter(|_| disk_queued.total() > 0))
    };
    Status {
        running,
        problem,
        state_dir: state_dir.to_owned(),
        pid: Some(w.pid),
        version: Some(w.version),
        client_id: Some(w.client_id),
        written_ts: Some(w.written_ts),
        waiting_for: w.waiting_for,
        connected: running && w.connected,
        broker: w.broker,
        since_ts: Some(w.since_ts),
        last_connect_error: w.last_connect_error,
        queued,
        oldest_queued_ts: oldest,
        raised: w.raised,
        failing_sensors: w.failing_sensors,
        outbox_durable: w.outbox_durable,
        outbox_damage: on_disk.damage.clone(),
        sent: w.sent,
        dropped: w.dropped,
        refused: w.refused,
        reconnects: w.reconnects,
        operations: w.operations,
    }
}

/// Whether `pid` is a running fieldagent (its `/proc/PID/comm`; a recycled PID is another
/// program).
pub fn is_fieldagent(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end() == "fieldagent")
}

/// `3 h 5 min`, `42 s`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// A Unix time in ms as `2026-12-05 04:31:07 UTC`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86400, secs % 86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

impl Status {
    /// The table `fieldagent status` prints.
    pub fn render(&self, now_ms: u64, out: &mut dyn Write) -> io::Result<()> {
        let ago = |ts: u64| format!("{} ({} ago)", utc(ts), duration(now_ms.saturating_sub(ts)));
        let state = match &self.problem {
            None => format!(
                "running, pid {} (state written {} ago)",
                self.pid.unwrap_or_default(),
                duration(now_ms.saturating_sub(self.written_ts.unwrap_or(now_ms)))
            ),
            Some(problem) => problem.clone(),
        };
        let mut rows: Vec<(&str, String)> = vec![("agent", state)];
        if let Some(version) = &self.version {
            rows.push(("version", version.clone()));
        }
        if let Some(id) = &self.client_id {
            rows.push(("client id", id.clone()));
        }
        if let Some(path) = &self.waiting_for {
            rows.push((
                "provisioning",
                format!("waiting for {path} (the agent starts once it exists)"),
            ));
        }
        let connection = match (self.connected, &self.broker, self.since_ts) {
            (true, Some(broker), Some(since)) => {
                format!("connected to {broker} since {}", ago(since))
            }
            (_, _, Some(since)) if self.running => format!("offline since {}", ago(since)),
            _ => "unknown (the agent is not running)".to_owned(),
        };
        rows.push(("connection", connection));
        if let Some(error) = &self.last_connect_error {
            rows.push(("last error", error.clone()));
        }
        let mut queue = format!(
            "alerts {}, responses {}, telemetry {}",
            self.queued.alerts, self.queued.responses, self.queued.telemetry
        );
        if let Some(oldest) = self.oldest_queued_ts {
            queue.push_str(&format!("; oldest made {}", ago(oldest)));
        }
        rows.push(("queued", queue));
        rows.push((
            "outbox",
            if self.outbox_durable {
                format!("on disk ({})", self.state_dir.display())
            } else {
                "MEMORY-ONLY: state_dir refuses writes; queued messages are lost if the agent stops"
                    .to_owned()
            },
        ));
        if let Some(damage) = &self.outbox_damage {
            rows.push(("outbox file", format!("read up to {damage}")));
        }
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        rows.push(("alerts raised", list(&self.raised)));
        rows.push(("sensors failing", list(&self.failing_sensors)));
        rows.push((
            "messages",
            format!(
                "sent {}, dropped {}, refused {}; reconnects {}",
                self.sent, self.dropped, self.refused, self.reconnects
            ),
        ));
        for operation in &self.operations {
            rows.push((
                "operation",
                format!(
                    "{} {} {} at {}",
                    operation.kind,
                    operation.id.escape_debug(),
                    operation.state,
                    utc(operation.ts)
                ),
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in rows {
            writeln!(out, "{key:<width$}  {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written() -> Written {
        Written {
            pid: 42,
            version: "0.1.0".into(),
            written_ts: 1_000_000,
            started_ts: 900_000,
            client_id: "node-1".into(),
            mode: "plain".into(),
            connected: true,
            broker: Some("mqtts://b:8883".into()),
            since_ts: 950_000,
            queued: Queued::from_kinds([1, 0, 3]),
            oldest_queued_ts: Some(990_000),
            raised: vec!["overtemp".into()],
            outbox_durable: true,
            ..Written::default()
        }
    }

    #[test]
    fn fresh_stale_and_gone() {
        let disk = OnDisk {
            per_kind: [2, 0, 5],
            oldest_ts: Some(980_000),
            damage: None,
        };
        let dir = Path::new("/var/lib/fieldagent");
        let fresh = combine(dir, Some(written()), &disk, 1_010_000, 0, |_| true);
        assert!(fresh.running && fresh.connected && fresh.problem.is_none());
        assert_eq!(
            fresh.queued,
            Queued::from_kinds([2, 0, 5]),
            "the file's count"
        );
        assert_eq!(fresh.oldest_queued_ts, Some(980_000));
        let stale = combine(
            dir,
            Some(written()),
            &disk,
            1_000_000 + STALE_MS + 1,
            0,
            |_| true,
        );
        assert!(!stale.running && !stale.connected);
        assert!(stale.problem.unwrap().starts_with("stale"));
        // With the boot clock in the file, a wall clock stepped a day ahead or an hour back
        // changes nothing: 10 s after writing is fresh, STALE_MS later is stale.
        let booted = Written {
            written_boot_ms: Some(500_000),
            ..written()
        };
        for wall in [1_010_000 + 86_400_000, 10_000] {
            let fresh = combine(dir, Some(booted.clone()), &disk, wall, 510_000, |_| true);
            assert!(fresh.running, "{wall}: {:?}", fresh.problem);
            let stale = combine(
                dir,
                Some(booted.clone()),
                &disk,
                wall,
                500_001 + STALE_MS,
                |_| true,
            );
            assert!(stale.problem.unwrap().starts_with("stale"), "{wall}");
        }
        // Written in an earlier boot (its boot time ahead of ours): not this boot's agent.
        let earlier = combine(dir, Some(booted), &disk, 1_010_000, 20_000, |_| true);
        assert!(!earlier.running);
        let gone = combine(dir, Some(written()), &disk, 1_010_000, 0, |_| false);
        assert!(gone.problem.unwrap().contains("process 42 is gone"));
        let never = combine(dir, None, &disk, 1_010_000, 0, |_| true);
        assert!(!never.running && never.problem.unwrap().contains("has not run"));
        assert_eq!(never.queued.telemetry, 5, "the outbox is read all the same");
    }

    #[test]
    fn a_memory_only_outbox_is_counted_by_the_agent() {
        let mut w = written();
        w.outbox_durable = false;
        let status = combine(
            Path::new("/s"),
            Some(w),
            &OnDisk::default(),
            1_010_000,
            0,
            |_| true,
        );
        assert_eq!(status.queued, Queued::from_kinds([1, 0, 3]));
        let mut text = Vec::new();
        status.render(1_010_000, &mut text).unwrap();
        assert!(String::from_utf8(text).unwrap().contains("MEMORY-ONLY"));
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_443_116_000), "2026-12-05 03:58:36 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(duration(59_999), "59 s");
        assert_eq!(duration(3_725_000), "1 h 2 min");
    }
}
