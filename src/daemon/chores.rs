//! The event loop's timed chores: petting the systemd watchdog, the health message, and
//! housekeeping (a stuck sensor read, a renewed certificate).
//!
//! They ride on the sampler's passes: each pass ends with [`Chores::due`], which says which are
//! due. One backstop ([`Chores::wake_at`], an [`Alarm`]) does them when passes are sparse or
//! stop, at most [`BACKSTOP`] after the last pass or chore; at one pass a second it never rings.
//!
//! Not tokio timers: tokio's timer wheel wakes the thread to move a timer onto a finer level
//! before it fires, at every 4.096 s boundary its deadline lies beyond. Measured with strace,
//! three periodic timers of their own (watchdog, health, housekeeping) cost about three such
//! wakeups per tick each beside the passes, and a tokio backstop that moves with every pass one
//! every 4.096 s. A timerfd wakes the thread only when it expires; moving it costs one
//! `timerfd_settime` a pass.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How long after the last pass or chore the backstop rings: when passes stop or are sparse,
/// housekeeping and health are at most this late. Shorter than housekeeping's 5 s period, so a
/// stuck sensor read is noticed within two periods.
pub const BACKSTOP: Duration = Duration::from_millis(3_900);

/// The chores due now; see [`Chores::due`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub pet: bool,
    pub health: bool,
    pub housekeeping: bool,
}

/// When each chore is next due.
#[derive(Debug)]
pub struct Chores {
    /// The pet interval (half of `WatchdogSec`) and the next pet, when systemd asks for pets.
    pet: Option<(Duration, Instant)>,
    health_every: Duration,
    health_at: Instant,
    housekeeping_every: Duration,
    housekeeping_at: Instant,
    backstop: Instant,
}

impl Chores {
    /// A schedule started at `now`: housekeeping and pets are first due one period on, the
    /// health message one `health_every` on.
    pub fn new(
        now: Instant,
        watchdog: Option<Duration>,
        health_every: Duration,
        housekeeping_every: Duration,
    ) -> Self {
        Self {
            pet: watchdog.map(|w| (w / 2, now + w / 2)),
            health_every,
            health_at: now + health_every,
            housekeeping_every,
            housekeeping_at: now + housekeeping_every,
            backstop: now + BACKSTOP,
        }
    }

    /// Which chores are due at `now`, each then scheduled one period on; the backstop moves to
    /// [`BACKSTOP`] from now. Called after each pass and when [`Chores::wake_at`] passes.
    pub fn due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        if let Some((every, at)) = &mut self.pet {
            if now >= *at {
                due.pet = true;
                *at = now + *every;
            }
        }
        if now >= self.health_at {
            due.health = true;
            self.health_at = now + self.health_every;
        }
        if now >= self.housekeeping_at {
            due.housekeeping = true;
            self.housekeeping_at = now + self.housekeeping_every;
        }
        self.backstop = now + BACKSTOP;
        due
    }

    /// When the loop must do its chores if no pass comes first: the backstop, or sooner when a
    /// pet that is due may not wait that long. A pet rides on passes for up to a quarter of the
    /// watchdog interval, so systemd hears from the agent at least every three quarters of it.
    /// Health and housekeeping ride on the backstop, at most [`BACKSTOP`] late.
    pub fn wake_at(&self) -> Instant {
        match self.pet {
            Some((every, at)) => self.backstop.min(at + every / 2),
            None => self.backstop,
        }
    }
}

/// A one-shot monotonic timer for the event loop (see the module comment).
pub struct Alarm {
    /// None when no timerfd could be made: then a tokio timer stands in, wakeups and all.
    fd: Option<AsyncFd<Timer>>,
    /// The deadline it is set to, so that setting it again to the same does nothing.
    at: Option<Instant>,
}

impl Alarm {
    /// An alarm that is not set. Needs a tokio runtime with I/O enabled.
    pub fn new() -> Self {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)
        .and_then(|fd| {
            // SAFETY: the `Timer` owns its descriptor and closes it only when dropped, which
            // `AsyncFd` does after deregistering it; nothing else closes or reuses it.
            #[allow(unsafe_code)]
            let registered =
                unsafe { AsyncFd::register_with_interest(Timer(fd), Interest::READABLE) };
            registered.map_err(io::Error::from)
        });
        let fd = match fd {
            Ok(fd) => Some(fd),
            Err(err) => {
                tracing::warn!(error = %err, "No timerfd for the chores; using a tokio timer.");
                None
            }
        };
        Self { fd, at: None }
    }

    /// Rings at `at` (at once if that has passed), instead of when it was set to ring.
    pub fn set(&mut self, at: Instant) {
        if self.at == Some(at) {
            return;
        }
        if let Some(fd) = &self.fd {
            // Relative to now: a timespec of zero would disarm it, so at least a nanosecond.
            let after = at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1));
            let set = fd.get_ref().0.set(
                Expiration::OneShot(TimeSpec::from_duration(after)),
                TimerSetTimeFlags::empty(),
            );
            if let Err(err) = set {
                // Not expected with a valid timerfd; the tokio timer stands in from now on.
                tracing::warn!(error = %err, "Cannot set the chores' timerfd; using a tokio timer.");
                self.fd = None;
            }
        }
        self.at = Some(at);
    }

    /// Waits until it rings. Cancel-safe: dropped before it rings, it keeps its deadline.
    pub async fn ring(&mut self) {
        let Some(fd) = &self.fd else {
            match self.at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
            self.at = None;
            return;
        };
        loop {
            let Ok(mut ready) = fd.readable().await else {
                // The reactor is gone (the runtime is shutting down): never ring.
                return std::future::pending().await;
            };
            let mut count = [0u8; 8];
            match nix::unistd::read(fd.get_ref().as_raw_fd(), &mut count) {
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                // Rung (or an error not expected of a timerfd: taken as rung rather than spin).
                _ => break,
            }
        }
        self.at = None;
    }
}

/// A timerfd that `AsyncFd` can register (nix's `TimerFd` has `AsFd` only).
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTH: Duration = Duration::from_secs(60);
    const HOUSEKEEPING: Duration = Duration::from_secs(5);

    /// Drives a schedule with passes every `pass` for `span`, doing chores when a pass comes or
    /// the wake time passes, whichever is first; returns the times of each chore and of every
    /// wake that was not a pass.
    fn drive(watchdog: Option<Duration>, pass: Option<Duration>, span: Duration) -> Trace {
        let start = Instant::now();
        let mut chores = Chores::new(start, watchdog, HEALTH, HOUSEKEEPING);
        let mut trace = Trace::default();
        let mut next_pass = pass.map(|p| start + p);
        let end = start + span;
        let mut now = start;
        while now < end {
            let wake = chores.wake_at();
            let by_pass = next_pass.is_some_and(|p| p <= wake);
            now = if by_pass { next_pass.unwrap() } else { wake };
            if by_pass {
                next_pass = pass.map(|p| now + p);
            } else {
                trace.timer_wakes.push(now - start);
            }
            let due = chores.due(now);
            let at = now - start;
            if due.pet {
                trace.pets.push(at);
            }
            if due.health {
                trace.health.push(at);
            }
            if due.housekeeping {
                trace.housekeeping.push(at);
            }
        }
        trace
    }

    #[derive(Debug, Default)]
    struct Trace {
        timer_wakes: Vec<Duration>,
        pets: Vec<Duration>,
        health: Vec<Duration>,
        housekeeping: Vec<Duration>,
    }

    fn largest_gap(times: &[Duration]) -> Duration {
        let mut previous = Duration::ZERO;
        let mut largest = Duration::ZERO;
        for &t in times {
            largest = largest.max(t - previous);
            previous = t;
        }
        largest
    }

    #[test]
    fn at_a_pass_a_second_the_timer_never_fires_and_every_chore_keeps_its_pace() {
        let trace = drive(
            Some(Duration::from_secs(60)),
            Some(Duration::from_secs(1)),
            Duration::from_secs(600),
        );
        assert!(trace.timer_wakes.is_empty(), "{:?}", trace.timer_wakes);
        assert_eq!(trace.health.len(), 10, "{:?}", trace.health);
        assert!(largest_gap(&trace.health) <= HEALTH + Duration::from_secs(1));
        assert!((119..=120).contains(&trace.housekeeping.len()));
        assert!(largest_gap(&trace.housekeeping) <= HOUSEKEEPING + Duration::from_secs(1));
        assert!(largest_gap(&trace.pets) <= Duration::from_secs(31));
    }

    #[test]
    fn without_passes_the_backstop_does_the_chores_at_most_its_distance_apart() {
        let trace = drive(
            Some(Duration::from_secs(60)),
            None,
            Duration::from_secs(600),
        );
        let mut previous = Duration::ZERO;
        for &wake in &trace.timer_wakes {
            assert!(wake - previous <= BACKSTOP, "{previous:?} -> {wake:?}");
            previous = wake;
        }
        assert!(largest_gap(&trace.housekeeping) <= HOUSEKEEPING + BACKSTOP);
        assert!(largest_gap(&trace.health) <= HEALTH + BACKSTOP);
        assert!(trace.health.len() >= 9, "{:?}", trace.health);
    }

    #[test]
    fn a_short_watchdog_is_petted_within_three_quarters_of_it_whatever_the_passes() {
        for pass in [
            None,
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(30)),
        ] {
            let watchdog = Duration::from_secs(4);
            let trace = drive(Some(watchdog), pass, Duration::from_secs(300));
            assert!(trace.pets.len() >= 99, "{pass:?}: {:?}", trace.pets);
            assert!(
                largest_gap(&trace.pets) <= watchdog * 3 / 4,
                "{pass:?}: {:?}",
                largest_gap(&trace.pets)
            );
        }
    }

    #[test]
    fn the_alarm_rings_at_its_last_deadline_and_at_once_for_one_passed() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut alarm = Alarm::new();
            assert!(alarm.fd.is_some(), "no timerfd");
            let start = Instant::now();
            alarm.set(start + Duration::from_millis(400));
            // Moved nearer before it rings: the new deadline holds.
            alarm.set(start + Duration::from_millis(100));
            alarm.ring().await;
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(100) && took < Duration::from_millis(350),
                "{took:?}"
            );
            // Not rung again until set again.
            let idle = tokio::time::timeout(Duration::from_millis(200), alarm.ring()).await;
            assert!(idle.is_err(), "rang without a deadline");
            // Moved further away while waiting (a pass came): it rings at the later time.
            let start = Instant::now();
            alarm.set(start + Duration::from_millis(100));
            let early = tokio::time::timeout(Duration::from_millis(50), alarm.ring()).await;
            assert!(early.is_err());
            alarm.set(start + Duration::from_millis(300));
            alarm.ring().await;
            assert!(
                start.elapsed() >= Duration::from_millis(300),
                "{:?}",
                start.elapsed()
            );
            // A deadline already passed rings at once.
            let start = Instant::now();
            alarm.set(start - Duration::from_secs(1));
            alarm.ring().await;
            assert!(start.elapsed() < Duration::from_millis(100));
        });
    }

    #[test]
    fn sparse_passes_leave_housekeeping_to_the_backstop_on_time() {
        let trace = drive(
            None,
            Some(Duration::from_secs(60)),
            Duration::from_secs(600),
        );
        assert!(largest_gap(&trace.housekeeping) <= HOUSEKEEPING + BACKSTOP);
        assert!(trace.pets.is_empty());
    }
}
