//! Which sensors are stuck: a read that has not returned within [`super::DEADLINE`], known to
//! every reader of the process.
//!
//! A read blocked in the kernel (a hung NFS path, a FIFO without a writer, an I2C driver that
//! never completes) cannot be cancelled; its thread waits until the read returns. What must
//! not happen is a second thread blocking on the same sensor: every sampler thread (across
//! reloads) and every `read` (the remote command, `check`) asks [`Stuck`] first and reports a
//! sensor it names as timed out without reading it. The one blocked read takes its sensor out
//! when it returns, and the sensor is read again from the next pass.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::SensorSource;
use crate::sync::Lock;

/// The sensors whose read is stuck, shared by every reader of one process.
#[derive(Clone, Default)]
pub struct Stuck {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    sources: Mutex<Vec<SensorSource>>,
    /// Raised on every change, so a reader that polls often (the sampler, every pass) looks
    /// at the set only when it changed.
    version: AtomicU64,
}

impl Stuck {
    /// The version of the set: it changes whenever the set does.
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    pub fn contains(&self, source: &SensorSource) -> bool {
        self.lock().contains(source)
    }

    /// Marks `source` stuck, unless `returned` says its read came back meanwhile (checked
    /// under the same lock as [`Stuck::returned`] sets it, so a read that returns just at its
    /// deadline never leaves its sensor marked for good). True when it was marked.
    pub fn mark(&self, source: &SensorSource, returned: &AtomicBool) -> bool {
        let mut sources = self.lock();
        if returned.load(Ordering::Acquire) || sources.contains(source) {
            return false;
        }
        sources.push(source.clone());
        self.inner.version.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The read of `source` has returned: it is read again from now on. True when it had been
    /// marked stuck.
    pub fn returned(&self, source: &SensorSource, returned: &AtomicBool) -> bool {
        let mut sources = self.lock();
        returned.store(true, Ordering::Release);
        let before = sources.len();
        sources.retain(|stuck| stuck != source);
        let was = sources.len() != before;
        if was {
            self.inner.version.fetch_add(1, Ordering::AcqRel);
        }
        was
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SensorSource>> {
        self.inner.sources.locked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &str) -> SensorSource {
        SensorSource::File {
            path: path.into(),
            field: crate::config::FileField::Whole,
        }
    }

    #[test]
    fn a_read_that_returns_before_it_is_marked_is_never_marked() {
        let stuck = Stuck::default();
        let a = source("/a");
        let returned = AtomicBool::new(false);
        let v0 = stuck.version();
        assert!(stuck.mark(&a, &returned));
        assert!(stuck.contains(&a));
        assert_ne!(stuck.version(), v0);
        assert!(stuck.returned(&a, &returned));
        assert!(!stuck.contains(&a));
        // The other order: returned first, then the deadline passes.
        let late = AtomicBool::new(false);
        assert!(!stuck.returned(&a, &late));
        assert!(!stuck.mark(&a, &late), "a read that returned is not stuck");
        assert!(!stuck.contains(&a));
    }
}
