//! An in-memory file system that can lose power.
//!
//! [`SimFs`] keeps two views of every file: what a process would read (`current`) and what a
//! disk would still hold after a power cut (`durable`). `sync_data` copies the first to the
//! second; `sync_dir` makes the directory's creations, renames and removals durable. A
//! [`SimFs::crash`] throws away everything not synced, and can tear the last unsynced write at
//! 512-byte sector granularity, the way a real disk does, or keep any subset of the unsynced
//! 4 KiB pages, each whole, lost or torn at sector granularity, as LazyFS does
//! ([`CrashMode::LoseUnsyncedPages`]): the page cache writes pages back in any order, so a
//! later page can survive an earlier one. [`SimFs::fail_next_syncs`] makes `sync_data` fail the
//! way Linux does: the dirty pages are dropped (marked clean without reaching the disk), so a
//! later `sync_data` of the same file succeeds and the lost bytes never come back. Handles
//! opened before a crash keep pointing at the lost files, so a stale writer cannot touch the
//! recovered state.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::SeedableRng;

use crate::fs::{DirLock, FileSystem, WalFile};

mod power_cut;
use power_cut::{lose_pages, tear_tail};

/// Sector size used when tearing writes.
pub const SECTOR_BYTES: usize = 512;
/// Page size of the simulated page cache ([`CrashMode::LoseUnsyncedPages`]).
pub const PAGE_BYTES: usize = 4096;

/// What a simulated crash does to unsynced data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Unsynced bytes vanish entirely.
    DropUnsynced,
    /// A random whole-sector prefix of each file's unsynced bytes (appended, or written over
    /// the zeros of a preallocated file) survives, and the last surviving sector may be zeroed
    /// or filled with garbage; past the tear the file holds what the disk had. Seeded.
    TearUnsynced {
        /// Seed for the choice of cut and fill.
        seed: u64,
    },
    /// Any subset of each file's unsynced 4 KiB pages survives: each page is kept whole,
    /// lost, or torn (a random subset of its 512-byte sectors kept). Lost bytes read as what
    /// the disk held before (zeros past its old end); the file ends after its last byte kept.
    /// Seeded.
    LoseUnsyncedPages {
        /// Seed for the choice of pages and sectors.
        seed: u64,
    },
}

/// What crashes have done so far (so a test can show its faults fired).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CrashStats {
    /// Crashes simulated.
    pub crashes: u64,
    /// Files whose unsynced bytes were lost, wholly or partly.
    pub files_lost_bytes: u64,
    /// Files left with a torn tail (some unsynced sectors kept).
    pub torn_writes: u64,
    /// Directory entries rolled back (unsynced creates, renames, removes).
    pub directory_entries_rolled_back: u64,
    /// Times a kept unsynced sector followed a lost one (the survivor is not a prefix).
    pub non_prefix_losses: u64,
    /// `sync_data` calls failed on purpose ([`SimFs::fail_next_syncs`]).
    pub syncs_failed: u64,
}

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Lowest offset changed since the last sync (`usize::MAX` when clean).
    dirty_from: usize,
    /// End of the highest range changed since the last sync (0 when clean): a write into a
    /// preallocated file leaves the zeros after it clean.
    dirty_to: usize,
}

impl Inode {
    fn new() -> Inode {
        Inode {
            current: Vec::new(),
            durable: Vec::new(),
            dirty_from: usize::MAX,
            dirty_to: 0,
        }
    }
    fn mark_dirty(&mut self, from: usize, to: usize) {
        self.dirty_from = self.dirty_from.min(from);
        self.dirty_to = self.dirty_to.max(to);
    }
    /// The unsynced range: `[dirty_from, dirty_to)` within the current length.
    fn dirty_range(&self) -> std::ops::Range<usize> {
        let end = self.dirty_to.min(self.current.len());
        self.dirty_from.min(end)..end
    }
    fn sync(&mut self) {
        if self.dirty_from == usize::MAX && self.durable.len() == self.current.len() {
            return;
        }
        // Bytes outside the dirty range that differ were dropped by a failed sync: the disk
        // keeps what it had there (zeros past its old end).
        let range = self.dirty_range();
        self.durable.resize(self.current.len(), 0);
        self.durable[range.clone()].copy_from_slice(&self.current[range]);
        self.dirty_from = usize::MAX;
        self.dirty_to = 0;
    }

    /// What a failed `fdatasync` leaves: the dirty pages are marked clean without reaching
    /// the disk, so no later sync writes them.
    fn drop_dirty_pages(&mut self) {
        self.dirty_from = usize::MAX;
        self.dirty_to = 0;
    }
}

type InodeRef = Arc<Mutex<Inode>>;

#[derive(Debug, Default)]
struct State {
    /// The namespace a process sees.
    files: BTreeMap<PathBuf, InodeRef>,
    /// The namespace as of the last `sync_dir` of each directory.
    durable_files: BTreeMap<PathBuf, InodeRef>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    stats: CrashStats,
    /// `sync_data` calls still to fail ([`SimFs::fail_next_syncs`]).
    syncs_to_fail: u64,
}

/// The in-memory, power-loss-simulating file system. Cheap to clone (shared state).
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SimFs {
    /// An empty file system.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// Simulates a power cut: unsynced data and directory changes are lost (or torn, per
    /// `mode`), locks are released, and open handles are orphaned.
    pub fn crash(&self, mode: CrashMode) {
        let mut state = lock(&self.state);
        let mut rng = match mode {
            CrashMode::TearUnsynced { seed } | CrashMode::LoseUnsyncedPages { seed } => {
                Some(rand::rngs::StdRng::seed_from_u64(seed))
            }
            CrashMode::DropUnsynced => None,
        };
        let rolled_back = count_namespace_differences(&state.files, &state.durable_files);
        let mut files = BTreeMap::new();
        let mut stats = state.stats;
        for (path, inode) in &state.durable_files {
            let inode = lock(inode);
            if inode.current != inode.durable {
                stats.files_lost_bytes += 1;
            }
            let survivor = match (mode, rng.as_mut()) {
                (CrashMode::TearUnsynced { .. }, Some(rng)) => tear_tail(&inode, rng, &mut stats),
                (CrashMode::LoseUnsyncedPages { .. }, Some(rng)) => {
                    lose_pages(&inode, rng, &mut stats)
                }
                _ => inode.durable.clone(),
            };
            let fresh = Inode {
                durable: survivor.clone(),
                current: survivor,
                dirty_from: usize::MAX,
                dirty_to: 0,
            };
            files.insert(path.clone(), Arc::new(Mutex::new(fresh)));
        }
        stats.crashes += 1;
        stats.directory_entries_rolled_back += rolled_back;
        state.durable_files = files.clone();
        state.files = files;
        state.locks.clear();
        state.stats = stats;
    }

    /// An independent copy of this file system: same files (current and durable contents),
    /// same directory state, no locks. Tests damage copies of one pristine image.
    pub fn fork(&self) -> SimFs {
        let state = lock(&self.state);
        let mut copies: Vec<(InodeRef, InodeRef)> = Vec::new();
        let mut copy_of = |inode: &InodeRef| -> InodeRef {
            if let Some((_, copy)) = copies
                .iter()
                .find(|(original, _)| Arc::ptr_eq(original, inode))
            {
                return copy.clone();
            }
            let source = lock(inode);
            let copy = Arc::new(Mutex::new(Inode {
                current: source.current.clone(),
                durable: source.durable.clone(),
                dirty_from: source.dirty_from,
                dirty_to: source.dirty_to,
            }));
            copies.push((inode.clone(), copy.clone()));
            copy
        };
        let files = state
            .files
            .iter()
            .map(|(path, inode)| (path.clone(), copy_of(inode)))
            .collect();
        let durable_files = state
            .durable_files
            .iter()
            .map(|(path, inode)| (path.clone(), copy_of(inode)))
            .collect();
        SimFs {
            state: Arc::new(Mutex::new(State {
                files,
                durable_files,
                dirs: state.dirs.clone(),
                locks: BTreeSet::new(),
                stats: state.stats,
                syncs_to_fail: 0,
            })),
        }
    }

    /// Makes the next `count` `sync_data` calls (of any file) fail as a failing disk makes
    /// Linux's fail: the file's dirty pages are dropped, so a later sync succeeds without them.
    pub fn fail_next_syncs(&self, count: u64) {
        lock(&self.state).syncs_to_fail = count;
    }

    /// What crashes have done so far.
    pub fn crash_stats(&self) -> CrashStats {
        lock(&self.state).stats
    }

    /// The current contents of a file (for tests that damage files on purpose).
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = lock(&self.state);
        let inode = state.files.get(path).ok_or_else(not_found)?;
        let contents = lock(inode).current.clone();
        Ok(contents)
    }

    /// Replaces a file's contents, durably (for tests that damage files on purpose).
    pub fn write_file_durably(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut state = lock(&self.state);
        let inode = match state.files.get(path) {
            Some(inode) => inode.clone(),
            None => {
                let inode = Arc::new(Mutex::new(Inode::new()));
                state.files.insert(path.to_owned(), inode.clone());
                state.durable_files.insert(path.to_owned(), inode.clone());
                inode
            }
        };
        let mut inode = lock(&inode);
        inode.current = bytes.to_vec();
        inode.durable = bytes.to_vec();
        inode.dirty_from = usize::MAX;
        inode.dirty_to = 0;
        Ok(())
    }
}

fn count_namespace_differences(
    current: &BTreeMap<PathBuf, InodeRef>,
    durable: &BTreeMap<PathBuf, InodeRef>,
) -> u64 {
    let mut differences = 0;
    for (path, inode) in current {
        match durable.get(path) {
            Some(other) if Arc::ptr_eq(inode, other) => {}
            _ => differences += 1,
        }
    }
    differences
        + durable
            .keys()
            .filter(|path| !current.contains_key(*path))
            .count() as u64
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file (simulated)")
}

#[derive(Debug)]
struct SimFile {
    inode: InodeRef,
    state: Arc<Mutex<State>>,
}

impl WalFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let inode = lock(&self.inode);
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        if offset >= inode.current.len() {
            return Ok(0);
        }
        let available = &inode.current[offset..];
        let count = available.len().min(buf.len());
        buf[..count].copy_from_slice(&available[..count]);
        Ok(count)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut inode = lock(&self.inode);
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        let end = offset + buf.len();
        if inode.current.len() < end {
            inode.current.resize(end, 0);
        }
        inode.current[offset..end].copy_from_slice(buf);
        inode.mark_dirty(offset, end);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        let mut inode = lock(&self.inode);
        if state.syncs_to_fail > 0 {
            state.syncs_to_fail -= 1;
            state.stats.syncs_failed += 1;
            inode.drop_dirty_pages();
            return Err(io::Error::other(
                "injected fdatasync failure (simulated: the dirty pages were dropped)",
            ));
        }
        inode.sync();
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut inode = lock(&self.inode);
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let old_len = inode.current.len();
        inode.current.resize(len, 0);
        inode.mark_dirty(len.min(old_len), len.max(old_len));
        Ok(())
    }
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(lock(&self.inode).current.len() as u64)
    }
}

#[derive(Debug)]
struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl DirLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        lock(&self.state).locks.remove(&self.path);
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        for ancestor in path.ancestors() {
            state.dirs.insert(ancestor.to_owned());
        }
        Ok(())
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        if !state.dirs.contains(path) {
            return Err(not_found());
        }
        Ok(state
            .files
            .keys()
            .filter(|file| file.parent() == Some(path))
            .filter_map(|file| file.file_name()?.to_str().map(str::to_owned))
            .collect())
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let state = lock(&self.state);
        let inode = state.files.get(path).ok_or_else(not_found)?.clone();
        Ok(Arc::new(SimFile {
            inode,
            state: self.state.clone(),
        }))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let mut state = lock(&self.state);
        if state.files.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "file exists (simulated)",
            ));
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if !state.dirs.contains(parent) {
            return Err(not_found());
        }
        let inode = Arc::new(Mutex::new(Inode::new()));
        state.files.insert(path.to_owned(), inode.clone());
        Ok(Arc::new(SimFile {
            inode,
            state: self.state.clone(),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.files.remove(path).map(|_| ()).ok_or_else(not_found)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        let inode = state.files.remove(from).ok_or_else(not_found)?;
        state.files.insert(to.to_owned(), inode);
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        let in_dir = |file: &PathBuf| file.parent() == Some(path);
        state.durable_files.retain(|file, _| !in_dir(file));
        let entries: Vec<(PathBuf, InodeRef)> = state
            .files
            .iter()
            .filter(|(file, _)| in_dir(file))
            .map(|(file, inode)| (file.clone(), inode.clone()))
            .collect();
        state.durable_files.extend(entries);
        Ok(())
    }
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>> {
        let mut state = lock(&self.state);
        if !state.locks.insert(path.to_owned()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "locked (simulated)",
            ));
        }
        Ok(Box::new(SimLock {
            state: self.state.clone(),
            path: path.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_data_and_entries_vanish_on_crash() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let file = fs.create_new(&dir.join("a")).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        file.sync_data().unwrap();
        fs.crash(CrashMode::DropUnsynced);
        assert!(
            fs.open(&dir.join("a")).is_err(),
            "file creation was not made durable"
        );

        let file = fs.create_new(&dir.join("a")).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        file.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        file.write_all_at(b" world", 5).unwrap();
        fs.crash(CrashMode::DropUnsynced);
        assert_eq!(fs.read_file(&dir.join("a")).unwrap(), b"hello");
        // The old handle is orphaned.
        file.write_all_at(b"zzz", 0).unwrap();
        assert_eq!(fs.read_file(&dir.join("a")).unwrap(), b"hello");
    }

    /// `/d/a` holding 100 bytes of 1s, synced, its name too.
    fn file_with_100_synced_bytes() -> (SimFs, Arc<dyn WalFile>) {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let file = fs.create_new(&dir.join("a")).unwrap();
        file.write_all_at(&[1u8; 100], 0).unwrap();
        file.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        (fs, file)
    }

    #[test]
    fn a_power_cut_can_keep_a_later_unsynced_page_and_lose_an_earlier_one() {
        let mut non_prefix = 0;
        for seed in 0..64 {
            let (fs, file) = file_with_100_synced_bytes();
            let dir = Path::new("/d");
            file.write_all_at(&[2u8; 3 * PAGE_BYTES], 100).unwrap();
            fs.crash(CrashMode::LoseUnsyncedPages { seed });
            let contents = fs.read_file(&dir.join("a")).unwrap();
            assert_eq!(
                &contents[..100],
                &[1u8; 100],
                "seed {seed}: synced bytes kept"
            );
            for (offset, &byte) in contents.iter().enumerate().skip(100) {
                assert!(
                    byte == 2 || byte == 0,
                    "seed {seed}: byte {offset} is {byte}"
                );
            }
            non_prefix += fs.crash_stats().non_prefix_losses;
        }
        assert!(non_prefix > 0, "no crash kept a page after a lost one");
    }

    #[test]
    fn a_failed_sync_drops_the_pages_and_a_later_sync_does_not_bring_them_back() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let file = fs.create_new(&dir.join("a")).unwrap();
        fs.sync_dir(dir).unwrap();
        file.write_all_at(b"kept", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"lost", 4).unwrap();
        fs.fail_next_syncs(1);
        assert!(file.sync_data().is_err());
        assert_eq!(
            fs.read_file(&dir.join("a")).unwrap(),
            b"keptlost",
            "still cached"
        );
        file.sync_data()
            .expect("the next sync succeeds, as on Linux");
        fs.crash(CrashMode::DropUnsynced);
        let contents = fs.read_file(&dir.join("a")).unwrap();
        assert_eq!(&contents[..4], b"kept");
        assert!(contents[4..].iter().all(|&byte| byte == 0), "{contents:?}");
        assert_eq!(fs.crash_stats().syncs_failed, 1);
    }

    #[test]
    fn torn_writes_keep_whole_sectors_of_the_tail() {
        let mut torn = 0;
        for seed in 0..64 {
            let (fs, file) = file_with_100_synced_bytes();
            let dir = Path::new("/d");
            file.write_all_at(&[2u8; 2000], 100).unwrap();
            fs.crash(CrashMode::TearUnsynced { seed });
            let contents = fs.read_file(&dir.join("a")).unwrap();
            assert!(contents.len() >= 100);
            assert_eq!(&contents[..100], &[1u8; 100]);
            let len = contents.len();
            assert!(
                len == 100 || len == 2100 || len.is_multiple_of(SECTOR_BYTES),
                "seed {seed}: {len}"
            );
            torn += fs.crash_stats().torn_writes;
        }
        assert!(torn > 0, "no crash tore a write");
    }

    #[test]
    fn torn_writes_into_preallocated_space_keep_its_zeros_past_the_tear() {
        let mut torn = 0;
        for seed in 0..64 {
            let (fs, file) = file_with_100_synced_bytes();
            let dir = Path::new("/d");
            file.allocate(8192).unwrap();
            file.sync_data().unwrap();
            file.write_all_at(&[2u8; 2000], 100).unwrap();
            fs.crash(CrashMode::TearUnsynced { seed });
            let contents = fs.read_file(&dir.join("a")).unwrap();
            assert_eq!(
                contents.len(),
                8192,
                "seed {seed}: the allocation was synced"
            );
            assert_eq!(&contents[..100], &[1u8; 100]);
            // Whole sectors of the write, then the disk's zeros (the last sector kept may be
            // zeroed or garbage).
            let first_other = (100..2100)
                .find(|&offset| contents[offset] != 2)
                .unwrap_or(2100);
            let torn_sector_end = (first_other / SECTOR_BYTES + 1) * SECTOR_BYTES;
            assert!(
                contents[torn_sector_end.min(2100)..].iter().all(|&byte| byte == 0),
                "seed {seed}: bytes survived past the tear: first other {first_other}, nonzero at {:?}", contents.iter().rposition(|&b| b != 0)
            );
            assert!(
                contents[2100..].iter().all(|&byte| byte == 0),
                "seed {seed}: past the write, the disk's zeros"
            );
            torn += fs.crash_stats().torn_writes;
        }
        assert!(torn > 0, "no crash tore a write");
    }
}
