//! Whether the system clock can be believed, and the clocks durations are measured on.
//!
//! Durations (an alert's `for_s`, the watchdog, a stuck read, a connect's bound) are measured on
//! the monotonic clock ([`monotonic_ms`]), never on the wall clock: NTP steps a board without RTC
//! by years at boot, and an operator may set it by hand. Only timestamps in payloads use the
//! wall clock (`model::now_ms`).
//!
//! Many boards have no RTC and boot in 1970 or at the image's build date; their clock is right
//! only once NTP has set it. The clock counts as synchronised when systemd-timesyncd says so
//! (`/run/systemd/timesync/synchronized`) or the kernel's NTP state is not unsynchronised
//! (`adjtimex`, as `timedatectl` reads it), and never while it reads earlier than the build of
//! this binary.

#![allow(unsafe_code)]

use crate::sync::Lock;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Milliseconds on the monotonic clock since this process first asked: for durations, which a
/// step of the wall clock must neither stretch nor skip.
pub fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Milliseconds since the system booted (`CLOCK_BOOTTIME`, which counts a suspend too): one
/// clock for every process, so `status` judges how old the daemon's state file is whatever the
/// wall clock did meanwhile.
pub fn boot_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
    })
}

/// Unix time in seconds when this binary was built (see build.rs).
pub const BUILD_TS_S: u64 = match u64::from_str_radix(env!("FIELDAGENT_BUILD_TS"), 10) {
    Ok(seconds) => seconds,
    Err(_) => 0,
};

/// How long a look at timesyncd's flag and the kernel's NTP state holds. The sampler asks on
/// every pass; the answer changes once, when NTP first sets the clock, so a minute's delay in
/// believing it costs nothing and saves a `statx` and an `adjtimex` per pass.
const RECHECK: Duration = Duration::from_secs(60);

/// The last look: when (monotonic) and what it found.
static LAST: Mutex<Option<(Instant, bool)>> = Mutex::new(None);

/// True when timestamps from the system clock are true.
pub fn synced(now_ms: u64) -> bool {
    if now_ms / 1000 < BUILD_TS_S {
        return false;
    }
    let mut last = LAST.locked();
    match *last {
        Some((at, synced)) if at.elapsed() < RECHECK => synced,
        _ => {
            let synced = look();
            *last = Some((Instant::now(), synced));
            synced
        }
    }
}

/// timesyncd's flag, else the kernel's state.
fn look() -> bool {
    Path::new("/run/systemd/timesync/synchronized").exists() || kernel_synced()
}

/// The kernel's view: adjtimex in read-only mode (modes 0) returns TIME_ERROR, and sets
/// STA_UNSYNC in the status, while no time source has disciplined the clock.
fn kernel_synced() -> bool {
    // SAFETY: an all-zero timex is a valid argument; with modes 0 adjtimex only reads the
    // kernel's state into it.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `timex` is a live, writable struct of the type adjtimex expects.
    let state = unsafe { libc::adjtimex(&mut timex) };
    state != -1 && state != libc::TIME_ERROR && timex.status & libc::STA_UNSYNC == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_before_the_build_is_never_synced() {
        const { assert!(BUILD_TS_S > 1_700_000_000) };
        assert!(!synced(0));
        assert!(!synced((BUILD_TS_S - 1) * 1000));
    }
}
