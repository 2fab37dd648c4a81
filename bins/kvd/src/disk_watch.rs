//! The disk watch: a thread of its own that says in the log when the disk keeps the WAL (or a
//! save of the node's meta file) waiting, and keeps the async runtime listening meanwhile.
//!
//! The node goes on answering while its disk hangs: an append queues rather than wait for
//! another's write, so a hung disk holds only the thread whose write or `fdatasync` it is
//! (`docs/reliability.md`), and `/health` says the node is unavailable from the same point as
//! the warning ([`kv_http::DISK_SLOW_AFTER`]). That thread may be an async worker — a write
//! group leader's commit runs inside its poll — and tokio parks an idle worker on a condition
//! variable while another holds its I/O driver: a worker that took the driver, then ran the
//! write that hung, leaves the idle ones asleep with nobody polling the driver, and the node
//! takes no connection until the disk answers. So while a WAL operation has waited
//! [`NUDGE_AFTER`], the watch spawns an empty task on the runtime every look: it wakes a parked
//! worker, which parks again on the free driver.
//!
//! The thread reads `WalStats::disk_wait_seconds` and, once the node is open, how long its meta
//! file's save in flight has waited (`Node::meta_saves`; atomics, no lock a hung write could
//! hold) every [`CHECK_EVERY`], warns once the longer has waited [`WARN_AFTER`], again every
//! [`REPEAT`] while it lasts, and says when the disk answers again. A meta save waits under the
//! meta's writer, which a role change takes: a node whose disk hangs there keeps its old role
//! meanwhile, and says so.
//!
//! A stopping node does not wait for a hung disk either. A clean stop ends with the WAL's
//! last `fdatasync` and the node's saved progress, each waiting on the disk, and a SIGTERM to a
//! node whose disk hangs waited for as long as the hang lasted. Once the node stops and a
//! WAL operation or a meta save has waited [`STOP_WAITS_FOR_THE_DISK_AT_MOST`], the watch
//! ends the process (exit status 1) as a `kill -9` would: nothing acknowledged is lost (an
//! acknowledged write was durable, or under `never`/`interval` in the page cache, before its
//! answer), and the next start's recovery reads the log's tail as after any crash.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kv_store::Store;
use kv_wal::BusySince;
use tokio::sync::watch;

/// How long a write or `fdatasync` may wait before the watch warns (etcd warns of a WAL sync
/// slower than a second too); `/health` turns 503 at the same point.
pub const WARN_AFTER: Duration = kv_http::DISK_SLOW_AFTER;
/// How often the warning repeats while the wait lasts.
const REPEAT: Duration = Duration::from_secs(10);
/// How often the watch looks.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a WAL operation may wait before the watch wakes the runtime at every look
/// (a healthy `fdatasync` takes well under this).
pub const NUDGE_AFTER: Duration = Duration::from_millis(100);

/// How long a WAL operation may keep a stopping node waiting before the watch ends the
/// process: the wait after which a running node stops heartbeating (its leadership has passed
/// to another node by then).
pub const STOP_WAITS_FOR_THE_DISK_AT_MOST: Duration = crate::cluster::driver::DISK_HUNG_AFTER;

/// The running watch; dropping it stops the thread.
pub struct DiskWatch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The node's record of its meta file's save in flight, once the node is open.
    meta_saves: Arc<OnceLock<Arc<BusySince>>>,
}

impl DiskWatch {
    /// Starts watching `store`'s log, waking `runtime` while its disk keeps it waiting, and
    /// ending the process if the disk keeps it waiting once `node_stopping` turns true.
    pub fn start(
        store: Arc<Store>,
        runtime: tokio::runtime::Handle,
        node_stopping: watch::Receiver<bool>,
    ) -> std::io::Result<DiskWatch> {
        let (stop, stopped) = mpsc::channel();
        let meta_saves = Arc::new(OnceLock::new());
        let waits = DiskWaits {
            store,
            meta_saves: meta_saves.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("kvd-disk-watch".to_owned())
            .spawn(move || watch(&waits, &runtime, &stopped, &node_stopping))?;
        Ok(DiskWatch {
            stop: Some(stop),
            thread: Some(thread),
            meta_saves,
        })
    }

    /// Watches the saves of the node's meta file too (`Node::meta_saves`), from now on.
    pub fn watch_meta_saves(&self, saves: Arc<BusySince>) {
        let _ = self.meta_saves.set(saves);
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the watch reads: the log's oldest operation in flight, and the meta file's save.
struct DiskWaits {
    store: Arc<Store>,
    meta_saves: Arc<OnceLock<Arc<BusySince>>>,
}

impl DiskWaits {
    /// The longer wait, and what waits.
    fn longest(&self) -> (Duration, &'static str) {
        let wal = Duration::from_secs_f64(self.store.wal_stats().disk_wait_seconds.max(0.0));
        let meta = self
            .meta_saves
            .get()
            .map_or(Duration::ZERO, |saves| saves.waited());
        if meta > wal {
            (meta, "a save of the node's meta file")
        } else {
            (wal, "a write or fdatasync of the WAL")
        }
    }
}

fn watch(
    waits: &DiskWaits,
    runtime: &tokio::runtime::Handle,
    stopped: &mpsc::Receiver<()>,
    node_stopping: &watch::Receiver<bool>,
) {
    let mut watch = Watch::default();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECK_EVERY) {
        let (waited, what) = waits.longest();
        if *node_stopping.borrow() && waited >= STOP_WAITS_FOR_THE_DISK_AT_MOST {
            tracing::error!(
                waited_ms = waited.as_millis() as u64,
                "stopping, but the disk has kept {what} waiting {:.1} s: exiting without \
                 closing the log, as a kill -9 would (nothing acknowledged is lost; the next \
                 start recovers the log's tail)",
                waited.as_secs_f64()
            );
            std::process::exit(1);
        }
        if waited >= NUDGE_AFTER {
            // Wakes a parked worker (the module docs say why); it runs this and parks again.
            drop(runtime.spawn(async {}));
        }
        match watch.look(waited, Instant::now()) {
            Some(Said::Waiting(waited)) => tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                "the disk has not completed {what} for {:.1} s: writes wait until the disk \
                 does (/health answers 503 meanwhile); its leadership, if any, passes to \
                 another node",
                waited.as_secs_f64()
            ),
            Some(Said::Answered(longest)) => tracing::info!(
                waited_ms = longest.as_millis() as u64,
                "the disk answers again"
            ),
            None => {}
        }
    }
}

/// What the watch says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    /// The disk has kept a write or fsync waiting this long.
    Waiting(Duration),
    /// A wait that was warned of ended; the longest seen.
    Answered(Duration),
}

/// The watch's memory: when it last warned, and the longest wait of the warned stretch.
#[derive(Debug, Default)]
struct Watch {
    warned_at: Option<Instant>,
    longest: Duration,
}

impl Watch {
    /// What to say, if anything, now that the oldest write or fsync in flight has waited
    /// `waited` (zero: none in flight).
    fn look(&mut self, waited: Duration, now: Instant) -> Option<Said> {
        if waited < WARN_AFTER {
            self.warned_at.take()?;
            let longest = std::mem::take(&mut self.longest);
            return Some(Said::Answered(longest));
        }
        self.longest = self.longest.max(waited);
        if self
            .warned_at
            .is_some_and(|warned| now.duration_since(warned) < REPEAT)
        {
            return None;
        }
        self.warned_at = Some(now);
        Some(Said::Waiting(waited))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_past_a_second_is_said_again_every_ten_seconds_and_its_end_once() {
        let mut watch = Watch::default();
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        assert_eq!(watch.look(Duration::ZERO, at(0)), None);
        assert_eq!(watch.look(Duration::from_millis(900), at(900)), None);
        let second = Duration::from_secs(1);
        assert_eq!(watch.look(second, at(1_000)), Some(Said::Waiting(second)));
        assert_eq!(watch.look(second * 5, at(5_000)), None);
        assert_eq!(
            watch.look(second * 11, at(11_000)),
            Some(Said::Waiting(second * 11))
        );
        assert_eq!(watch.look(second * 12, at(12_000)), None);
        assert_eq!(
            watch.look(Duration::ZERO, at(12_250)),
            Some(Said::Answered(second * 12))
        );
        assert_eq!(watch.look(Duration::ZERO, at(12_500)), None);
        // A new wait is said at once, whenever the last one was.
        assert_eq!(watch.look(second, at(13_000)), Some(Said::Waiting(second)));
    }
}
