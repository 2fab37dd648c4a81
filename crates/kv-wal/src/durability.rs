//! Durability: the durable watermark, the failure latch, and the rule that publishes an
//! fsync's success only when no other fsync can have swallowed a failure (issue 11).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::{Error, IoContext, Result};
use crate::fs::WalFile;
use crate::mutex::lock;
use crate::segments::Segment;
use crate::stats::Stats;
use crate::ticket::AppendTicket;
use crate::watermark::Watermark;

/// One segment fsync and what its success means.
pub(crate) struct Fsync<'a> {
    pub file: &'a dyn WalFile,
    pub path: &'a Path,
    /// The id the durable watermark may reach when it succeeds.
    pub target: u64,
    /// The watermark's generation the target belongs to (`None`: any).
    pub generation: Option<u64>,
    /// Records it makes durable (for the group-commit statistics).
    pub records: u64,
    /// The segment it covers and through which offset: noted before the success is published,
    /// so the next batch's durability mark says so.
    pub covers: Option<(&'a Segment, u64)>,
}

/// The durable id, and what guards it: the failure latch and the fsyncs in flight.
#[derive(Debug)]
pub(crate) struct Durability {
    /// Last id fsynced (published).
    pub durable: Arc<Watermark>,
    /// Why the log refuses writes, once a write or fsync failed. Set before anything else can
    /// observe the failure's consequences (see [`Durability::sync`]).
    failure: Failure,
    /// The fsyncs of segments in flight, and the durable ids they proved that wait to be
    /// published (see [`Durability::sync`]).
    fsyncs: Mutex<FsyncsInFlight>,
}

/// Segment fsyncs that have started and not reported, and the successes not yet published.
#[derive(Debug, Default)]
struct FsyncsInFlight {
    count: usize,
    /// `(target, generation)` of each success since the last publication.
    succeeded: Vec<(u64, Option<u64>)>,
}

/// The log's write failure, latched: the first reason wins and never clears.
#[derive(Debug, Default)]
struct Failure {
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Failure {
    /// Latches `reason` (unless a failure is already latched); returns the latched reason.
    fn set(&self, reason: String) -> String {
        let mut latched = lock(&self.reason);
        let reason = latched.get_or_insert(reason).clone();
        self.failed.store(true, Ordering::SeqCst);
        reason
    }
    fn is_set(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
    fn reason(&self) -> Option<String> {
        if !self.is_set() {
            return None;
        }
        lock(&self.reason).clone()
    }
}

impl Durability {
    pub(crate) fn new(durable_id: u64) -> Durability {
        Durability {
            durable: Arc::new(Watermark::new(durable_id)),
            failure: Failure::default(),
            fsyncs: Mutex::new(FsyncsInFlight::default()),
        }
    }

    /// Latches a write-path failure: appends fail from now on, and durability waiters that have
    /// not reached their target end with the reason.
    pub(crate) fn poison(&self, reason: String) -> Error {
        let reason = self.failure.set(reason);
        self.durable.fail(&reason);
        Error::Poisoned(reason)
    }

    /// Why the log refuses writes, if it does.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.reason()
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failure.is_set()
    }

    /// `fdatasync`s `file`; if that succeeds, the durable id will reach `target` (within
    /// `generation`, when given: a truncation meanwhile voids the target).
    ///
    /// Linux reports a writeback error once per open file: after one fsync fails, another
    /// fsync of the same file (a roll's, `sync`'s, an `Always` append's) returns success for
    /// the pages that were dropped, and two fsyncs running at once share one report. So a
    /// success proves nothing while another fsync is in flight: the durable id is raised only
    /// when no fsync is in flight and none has failed, by whichever fsync finishes last. A
    /// failure is latched under the same lock, before any later success can be published.
    /// Returns `Ok` once this fsync succeeded; its target may be published later (callers
    /// that acknowledge wait on the durable watermark).
    pub(crate) fn sync(&self, fsync: Fsync<'_>, stats: &Stats) -> Result<()> {
        let Fsync {
            file,
            path,
            target,
            generation,
            records,
            covers,
        } = fsync;
        {
            let mut fsyncs = lock(&self.fsyncs);
            if let Some(reason) = self.failure.reason() {
                return Err(Error::Poisoned(reason));
            }
            fsyncs.count += 1;
        }
        let started = Instant::now();
        let busy = stats.disk_busy(crate::stats::DiskOp::Sync, started);
        let synced = file.sync_data().at(path);
        drop(busy);
        let mut fsyncs = lock(&self.fsyncs);
        fsyncs.count -= 1;
        if let Err(error) = synced {
            fsyncs.succeeded.clear();
            let reason = self.failure.set(error.to_string());
            drop(fsyncs);
            self.durable.fail(&reason);
            return Err(Error::Poisoned(reason));
        }
        if let Some(reason) = self.failure.reason() {
            fsyncs.succeeded.clear();
            return Err(Error::Poisoned(reason));
        }
        stats.on_fsync(started.elapsed(), records);
        if let Some((segment, offset)) = covers {
            segment.note_synced(offset);
        }
        fsyncs.succeeded.push((target, generation));
        if fsyncs.count == 0 {
            for (target, generation) in fsyncs.succeeded.drain(..) {
                match generation {
                    Some(generation) => self.durable.advance_in_generation(target, generation),
                    None => self.durable.advance(target),
                }
            }
        }
        Ok(())
    }

    /// Waits until the durable id reaches `target` (published by the last fsync in flight).
    pub(crate) fn wait(&self, target: u64, generation: u64) -> Result<()> {
        AppendTicket::pending(target..=target, self.durable.clone(), generation)
            .wait()
            .map(drop)
    }
}
