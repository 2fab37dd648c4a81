//! The node's meta file as the node knows it: one writer at a time across the file's write
//! and `fsync`, and readers that never wait for the disk.
//!
//! Saving `node.meta` waits on the disk (a write, an `fsync`, a rename and the directory's
//! `fsync`), and a disk can take seconds to answer. The heartbeat's epoch
//! ([`super::Node::leader_epoch`]), the controller view's quick check
//! ([`super::Node::apply_cluster_view`], under the role lock) and `/cluster_status` only read
//! what was last saved: they read [`SavedMeta::get`], a copy under a lock no disk operation is
//! made under. Writers take [`SavedMeta::write`], which serializes them as the one lock did
//! before; the copy follows when a writer lets go.
//!
//! Every save goes through [`MetaFiles::save`], which marks it in flight
//! ([`SavedMeta::saving`]) so that a save the disk keeps waiting shows
//! ([`super::Node::meta_save_wait`]): in `/health`, and to kvd's disk watch and driver, as the
//! log's own writes do.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use kv_wal::fs::FileSystem;
use kv_wal::BusySince;

use super::lock;
use crate::error::Result;
use crate::meta::NodeMeta;

/// See the module docs.
#[derive(Debug)]
pub(super) struct SavedMeta {
    /// Held by a writer from its read of the meta to the end of its save.
    writing: Mutex<NodeMeta>,
    /// What the last writer left: what the file holds once a save has returned.
    copy: Mutex<NodeMeta>,
    /// Since when the save in flight has waited for the disk ([`MetaFiles::save`]).
    saving: Arc<BusySince>,
}

impl SavedMeta {
    pub(super) fn new(meta: NodeMeta) -> SavedMeta {
        SavedMeta {
            writing: Mutex::new(meta),
            copy: Mutex::new(meta),
            saving: Arc::default(),
        }
    }

    /// The record of the save in flight, if any: how long the disk has kept it waiting.
    pub(super) fn saving(&self) -> &Arc<BusySince> {
        &self.saving
    }

    /// The meta as last saved, without waiting for a save in progress.
    pub(super) fn get(&self) -> NodeMeta {
        *lock(&self.copy)
    }

    /// The meta for changing (after a successful save; see [`NodeMeta::store`]), one writer at
    /// a time; readers see the change once the writer is dropped.
    pub(super) fn write(&self) -> MetaWriter<'_> {
        MetaWriter {
            meta: lock(&self.writing),
            copy: &self.copy,
        }
    }
}

/// A writer of [`SavedMeta`]: publishes what it holds to the readers when dropped.
pub(super) struct MetaWriter<'a> {
    meta: MutexGuard<'a, NodeMeta>,
    copy: &'a Mutex<NodeMeta>,
}

impl Deref for MetaWriter<'_> {
    type Target = NodeMeta;
    fn deref(&self) -> &NodeMeta {
        &self.meta
    }
}

impl DerefMut for MetaWriter<'_> {
    fn deref_mut(&mut self) -> &mut NodeMeta {
        &mut self.meta
    }
}

impl Drop for MetaWriter<'_> {
    fn drop(&mut self) {
        *lock(self.copy) = *self.meta;
    }
}

/// Where the node's meta file is saved, and the record a save in flight is marked in.
pub(super) struct MetaFiles<'a> {
    pub(super) fs: &'a dyn FileSystem,
    pub(super) data_dir: &'a Path,
    pub(super) saving: &'a BusySince,
}

impl MetaFiles<'_> {
    /// Saves `meta` (atomically: [`NodeMeta::store`]), marked in flight from its first write
    /// to its directory's `fsync`.
    pub(super) fn save(&self, meta: &NodeMeta) -> Result<()> {
        let _saving = self.saving.begin_at(Instant::now());
        meta.store(self.fs, self.data_dir)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_reader_does_not_wait_for_a_writer_and_sees_its_change_once_it_is_done() {
        let saved = SavedMeta::new(NodeMeta {
            epoch: 3,
            ..NodeMeta::default()
        });
        let (held, hold) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let saved = &saved;
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || {
                let mut meta = saved.write();
                meta.epoch = 4;
                held.send(()).expect("send");
                // A save that waits on the disk.
                released.recv().expect("released");
            });
            // Dropped if the test fails here, which releases the writer.
            let release = release;
            hold.recv().expect("the writer holds the meta");
            // Read on a thread of its own: a reader that waited for the writer fails the test
            // instead of hanging it.
            let (read, reading) = mpsc::channel();
            scope.spawn(move || read.send(saved.get().epoch));
            let epoch = reading
                .recv_timeout(Duration::from_secs(5))
                .expect("a reader waited for the writer's save");
            assert_eq!(epoch, 3, "the copy is what was saved before");
            release.send(()).expect("send");
            writer.join().expect("the writer");
        });
        assert_eq!(saved.get().epoch, 4);
        assert_eq!(saved.write().epoch, 4);
    }

    /// A save marks itself in flight for as long as the disk keeps it (here an `fsync` that
    /// hangs until a file is removed), and clears the mark once it returns.
    #[test]
    fn a_save_the_disk_keeps_waiting_shows_its_wait_until_it_returns() {
        use kv_wal::fs::{FaultPlan, FaultyFs};
        use kv_wal::sim::SimFs;
        let scratch = tempfile::tempdir().expect("temp dir");
        let stall = scratch.path().join("stall");
        let plan = FaultPlan::new();
        plan.stall_syncs_while_exists(stall.clone());
        let sim = SimFs::new();
        let faulty = FaultyFs::new(Arc::new(sim.clone()), plan);
        let saving = BusySince::default();
        let data_dir = Path::new("/node");
        let files = MetaFiles {
            fs: &faulty,
            data_dir,
            saving: &saving,
        };
        let meta = NodeMeta {
            epoch: 4,
            ..NodeMeta::default()
        };
        assert_eq!(saving.waited(), Duration::ZERO);
        std::fs::write(&stall, b"").expect("hang the fsyncs");
        std::thread::scope(|scope| {
            let save = scope.spawn(|| files.save(&meta));
            std::thread::sleep(Duration::from_millis(300));
            let waited = saving.waited();
            std::fs::remove_file(&stall).expect("the disk answers");
            assert!(waited >= Duration::from_millis(250), "{waited:?}");
            save.join().expect("the save").expect("saved");
        });
        assert_eq!(saving.waited(), Duration::ZERO);
        assert_eq!(NodeMeta::load(&sim, data_dir).expect("read"), Some(meta));
    }

    #[test]
    fn writers_take_turns() {
        let saved = SavedMeta::new(NodeMeta::default());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        let mut meta = saved.write();
                        let seen = meta.commit_id;
                        std::thread::sleep(Duration::from_micros(10));
                        meta.commit_id = seen + 1;
                    }
                });
            }
        });
        assert_eq!(saved.get().commit_id, 400);
    }
}
