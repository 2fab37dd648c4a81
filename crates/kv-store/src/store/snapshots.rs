//! The store's snapshots: writing, pruning, listing and installing them, and cutting the log
//! back (`truncate_after`, which removes the snapshots past the cut and rebuilds the map).

use super::*;

impl Store {
    /// What opening found in the snapshot directory.
    pub fn snapshot_load(&self) -> &SnapshotLoad {
        &self.snapshot_load
    }

    /// The snapshot directory, if snapshots are on.
    pub fn snapshot_dir(&self) -> Option<&Path> {
        self.snapshot_dir.as_deref()
    }

    /// A consistent view of the applied map at one applied id: a frozen copy of the map,
    /// taken in `O(1)` under the map's read lock (the tree is shared and copied on write; see
    /// `map.rs`). Writes go on while the view is serialized.
    pub fn snapshot_view(&self) -> SnapshotView {
        let started = Instant::now();
        let (map, applied_id, longest_lock_hold) = {
            let map = read(&self.map);
            let held = Instant::now();
            // Applies happen under the map's write lock: the applied id is the map's.
            let frozen = (map.clone(), self.applied_id());
            (frozen.0, frozen.1, held.elapsed())
        };
        let mut epochs = lock(&self.epochs).clone();
        epochs.truncate_after(applied_id);
        SnapshotView {
            applied_id,
            epochs,
            map,
            copy_duration: started.elapsed(),
            longest_lock_hold,
        }
    }

    /// Writes a snapshot of the applied map into the snapshot directory and deletes all but
    /// the newest `keep` snapshots. Blocking: run it on a thread of its own; writes go on.
    pub fn write_snapshot(&self, codec: Codec, keep: usize) -> Result<SnapshotInfo> {
        self.write_snapshot_of(self.snapshot_view(), codec, keep)
    }

    /// Writes `view` (from [`Store::snapshot_view`]) as a snapshot and deletes all but the
    /// newest `keep`: [`Store::write_snapshot`] in two steps, for a caller that treats the
    /// short copy under the map's lock and the long serializing differently (kvd lowers its
    /// thread's CPU priority in between).
    pub fn write_snapshot_of(
        &self,
        view: SnapshotView,
        codec: Codec,
        keep: usize,
    ) -> Result<SnapshotInfo> {
        let dir = self.snapshot_dir.as_deref().ok_or(Error::SnapshotsOff)?;
        let info = snapshot::write_snapshot(&**self.wal.file_system(), &view, dir, codec)?;
        self.newest_snapshot
            .fetch_max(info.applied_id, Ordering::AcqRel);
        self.prune_snapshots(keep.max(1))?;
        Ok(info)
    }

    /// Deletes all but the newest `keep` snapshots.
    pub fn prune_snapshots(&self, keep: usize) -> Result<()> {
        let Some(dir) = &self.snapshot_dir else {
            return Ok(());
        };
        let fs = &**self.wal.file_system();
        let listed = snapshot::list_snapshots(fs, dir)?;
        for (_, path) in listed.into_iter().skip(keep) {
            kv_wal::durable::remove_file_if_exists(fs, &path)?;
        }
        Ok(())
    }

    /// Snapshot files, newest first.
    pub fn snapshots(&self) -> Vec<(u64, PathBuf)> {
        self.snapshot_dir
            .as_deref()
            .and_then(|dir| snapshot::list_snapshots(&**self.wal.file_system(), dir).ok())
            .unwrap_or_default()
    }

    /// Replaces the whole state with the snapshot at `path`, which must already be in the
    /// snapshot directory (durably): the log is emptied and continues after the snapshot's
    /// applied id. A follower too far behind a compacted log does this. A crash at any point
    /// reopens to the snapshot plus whatever the log holds after it. Then deletes all but the
    /// newest `keep` snapshots, as [`Store::write_snapshot`] does: a follower that installs
    /// snapshots (and is killed before it writes one of its own) otherwise kept every one.
    /// The install stands if that deletion fails; the next snapshot written deletes again.
    pub fn install_snapshot(&self, path: &Path, keep: usize) -> Result<u64> {
        let applied_id = self.install_snapshot_only(path)?;
        let _ = self.prune_snapshots(keep.max(1));
        Ok(applied_id)
    }

    fn install_snapshot_only(&self, path: &Path) -> Result<u64> {
        let snapshot = snapshot::read_snapshot(&**self.wal.file_system(), path)?;
        let mut pending = lock(&self.pending);
        self.wal.truncate_after(0)?;
        // A crash here reopens to the snapshot over an empty log, and open skips the same way.
        self.wal.skip_to(snapshot.applied_id + 1)?;
        pending.clear();
        *lock(&self.epochs) = snapshot.epochs;
        let mut map = write(&self.map);
        *map = snapshot.map;
        let last_stamp = map.requests.last_timestamp_ms();
        if last_stamp > 0 {
            lock(&self.request_clock).observe(last_stamp);
        }
        self.sizes.map_changed(&map);
        self.sizes.pending_changed(&pending);
        self.applied_id
            .store(snapshot.applied_id, Ordering::Release);
        self.snapshot_base
            .store(snapshot.applied_id, Ordering::Release);
        self.newest_snapshot
            .store(snapshot.applied_id, Ordering::Release);
        Ok(snapshot.applied_id)
    }

    /// The applied id of the newest valid snapshot this store loaded at open, wrote or
    /// installed since (0: none).
    pub fn newest_snapshot_id(&self) -> u64 {
        self.newest_snapshot.load(Ordering::Acquire)
    }

    /// The applied id of the snapshot the store rests on (0: none).
    pub fn snapshot_base(&self) -> u64 {
        self.snapshot_base.load(Ordering::Acquire)
    }

    /// Drops every entry after `after_id` from the log (a follower whose log diverged from
    /// its leader's), along with pending ops and the epoch history past it. If applied entries
    /// are dropped, the map is rebuilt from the log that remains.
    pub fn truncate_after(&self, after_id: u64) -> Result<()> {
        let mut pending = lock(&self.pending);
        // A cut that drops applied entries rebuilds the map from a base: find it before
        // anything changes, so a cut that cannot be served is refused whole. (Applies take the
        // pending lock first: the applied id cannot move meanwhile.)
        let rebuild_from = if self.applied_id() > after_id {
            Some(self.rebuild_start(after_id)?)
        } else {
            None
        };
        // Snapshots past the cut hold the history being dropped: they go first (durably), so
        // no open, however interrupted, can bring that history back.
        self.remove_snapshots_after(after_id)?;
        self.wal.truncate_after(after_id)?;
        pending.retain(|(id, _)| *id <= after_id);
        self.sizes.pending_changed(&pending);
        lock(&self.epochs).truncate_after(after_id);
        if let Some((start, base)) = rebuild_from {
            // Rebuild what stays applied; what was pending stays pending.
            let apply_limit = pending.front().map_or(after_id, |(id, _)| id - 1);
            let rebuilt = replay(&self.wal, start, base, apply_limit, &self.retention)?;
            let mut current = write(&self.map);
            *current = rebuilt.map;
            self.applied_id.store(rebuilt.applied_id, Ordering::Release);
            self.snapshot_base.store(base, Ordering::Release);
            *pending = rebuilt.pending;
            self.sizes.map_changed(&current);
            self.sizes.pending_changed(&pending);
        }
        Ok(())
    }

    /// Deletes every snapshot whose applied id is past `after_id` (and fsyncs the directory),
    /// so the store rests only on snapshots at or before it.
    pub(super) fn remove_snapshots_after(&self, after_id: u64) -> Result<()> {
        let Some(dir) = &self.snapshot_dir else {
            return Ok(());
        };
        let fs = &**self.wal.file_system();
        let mut removed = false;
        let mut newest_kept = 0;
        for (applied_id, path) in snapshot::list_snapshots(fs, dir)? {
            if applied_id > after_id {
                kv_wal::durable::remove_file_if_exists(fs, &path)?;
                removed = true;
            } else {
                newest_kept = newest_kept.max(applied_id);
            }
        }
        if removed {
            fs.sync_dir(dir).map_err(|source| kv_wal::Error::Io {
                path: dir.clone(),
                source,
            })?;
        }
        if removed {
            self.newest_snapshot.store(newest_kept, Ordering::Release);
        }
        Ok(())
    }

    /// Where a rebuild of the map after a cut at `after_id` starts: empty when the log still
    /// starts at id 1; otherwise the newest snapshot the log continues that holds nothing past
    /// `after_id`, read again from its file.
    pub(super) fn rebuild_start(&self, after_id: u64) -> Result<(Replayed, u64)> {
        let log_start = self.wal.start_id();
        if log_start <= 1 {
            return Ok((Replayed::default(), 0));
        }
        let mut reasons = Vec::new();
        for (applied_id, path) in self.snapshots() {
            if applied_id > after_id || applied_id + 1 < log_start {
                continue;
            }
            match snapshot::read_snapshot(&**self.wal.file_system(), &path) {
                Ok(snapshot) => return Ok((Replayed::from_snapshot(snapshot), applied_id)),
                Err(error) => reasons.push(error.to_string()),
            }
        }
        Err(Error::CannotRebuild {
            after_id,
            log_start,
            unreadable: reasons,
        })
    }
}
