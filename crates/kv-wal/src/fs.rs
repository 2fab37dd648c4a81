//! The file-system seam: every byte the log reads or writes goes through [`FileSystem`].
//!
//! [`StdFs`] is the real thing. [`crate::sim::SimFs`] keeps files in memory and can simulate a
//! power loss (unsynced bytes vanish, the last write tears), and [`FaultyFs`] wraps any file
//! system to fail the Nth write or fsync. Tests use them to prove recovery; embedders can use
//! them to test their own crash handling.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An open file. Positional reads and writes only: the log tracks offsets itself, so one handle
/// can serve concurrent readers and the writer.
pub trait WalFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Flushes the file's data (and the metadata needed to read it) to stable storage:
    /// `fdatasync(2)`.
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the file length, cutting or zero-extending it.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The current file length in bytes.
    fn size_bytes(&self) -> io::Result<u64>;
    /// Writes zeros over `[offset, offset + len)`: space the file already has and that already
    /// reads as zeros (a preallocated segment's free space), so no byte changes value. What it
    /// changes is the space: on ext4, fallocated space is "unwritten", and the first write
    /// into each of its blocks makes the next `fdatasync` convert the extent — a synchronous
    /// metadata write on top of the data. Written once ahead of the appends, the space costs
    /// their `fdatasync`s nothing more. The default writes the zeros with
    /// [`WalFile::write_all_at`].
    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let chunk = usize::try_from(end - at).map_or(ZEROS.len(), |left| left.min(ZEROS.len()));
            self.write_all_at(&ZEROS[..chunk], at)?;
            at += chunk as u64;
        }
        Ok(())
    }
    /// Makes the file at least `len` bytes long, the new bytes zero, with its disk space
    /// reserved where the file system can (`fallocate(2)`), so later writes inside it change
    /// neither the file's size nor, on most file systems, its block map. Never shortens the
    /// file. The default zero-extends it with [`WalFile::set_len`].
    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.size_bytes()? < len {
            self.set_len(len)?;
        }
        Ok(())
    }
}

/// The zeros [`WalFile::write_zeros`] writes from, a chunk at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A held directory lock; dropping it releases the lock.
pub trait DirLock: Send + Sync + fmt::Debug {}

/// The directory and file operations the log needs.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates `path` and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Lists the names (not paths) of the entries in a directory.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>>;
    /// Creates a new file, failing if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn WalFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable: `fsync(2)` on the
    /// directory.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing), failing at once with
    /// [`io::ErrorKind::WouldBlock`] if another holder has it.
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(fs::File);

impl WalFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, offset) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        let size = self.size_bytes()?;
        if size >= len {
            return Ok(());
        }
        // Mode 0: allocate and extend the size. A file system without fallocate (some network
        // and FUSE ones) gets a zero-extended file instead.
        match rustix::fs::fallocate(
            &self.0,
            rustix::fs::FallocateFlags::empty(),
            size,
            len - size,
        ) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => self.0.set_len(len),
            Err(error) => Err(error.into()),
        }
    }
}

/// The lock file and the directory holding it, both locked while held.
#[derive(Debug)]
struct StdLock {
    _file: fs::File,
    _dir: Option<fs::File>,
}
impl DirLock for StdLock {}

/// Locks `file` exclusively, failing at once if another holder has it.
fn try_lock_exclusive(file: &fs::File) -> io::Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "locked by another process",
        )),
        Err(fs::TryLockError::Error(error)) => Err(error),
    }
}

impl FileSystem for StdFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(StdFile(file)))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        fs::File::open(path)?.sync_all()
    }
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        try_lock_exclusive(&file)?;
        // The directory too: a lock file deleted while held (a "stale lock" cleaned up by
        // hand) leaves its holder locking a file no longer there, and a second opener would
        // lock a new one — two logs writing one directory. Before, it did (found by a new user
        // embedding kv-wal). The file stays locked as well, for builds that lock only it.
        let dir = match path.parent() {
            Some(parent) => {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                let dir = fs::File::open(parent)?;
                try_lock_exclusive(&dir)?;
                Some(dir)
            }
            None => None,
        };
        Ok(Box::new(StdLock {
            _file: file,
            _dir: dir,
        }))
    }
}

/// Counters shared by a [`FaultyFs`] and the test that drives it.
///
/// `fail_write_at(n)` makes the nth write from now fail (1 = the next one); likewise for
/// fsyncs. A fault fires once; the counters keep counting. `delay_syncs` makes the disk slow.
#[derive(Debug, Default)]
pub struct FaultPlan {
    writes: AtomicU64,
    syncs: AtomicU64,
    fail_write_number: AtomicU64,
    fail_sync_number: AtomicU64,
    faults_fired: AtomicU64,
    sync_delay_micros: AtomicU64,
    /// While a file exists at this path, the file system is full: allocations fail with
    /// `ENOSPC` (see [`FaultPlan::full_while_exists`]).
    full_while: FileFlag,
    /// While a file exists at this path, the disk does not answer: every change waits (see
    /// [`FaultPlan::stall_while_exists`]).
    stall_while: FileFlag,
    /// While a file exists at this path, every `fsync` waits; writes still land in the page
    /// cache (see [`FaultPlan::stall_syncs_while_exists`]).
    stall_syncs_while: FileFlag,
    /// The paths whose writes and syncs are counted (and failed): all when `None` (see
    /// [`FaultPlan::count_only`]).
    counted: std::sync::Mutex<Option<PathFilter>>,
}

/// Which paths a [`FaultPlan`] counts.
pub type PathFilter = fn(&Path) -> bool;

/// A fault that holds while a file exists at a path a test chose (none: never).
#[derive(Debug, Default)]
struct FileFlag(std::sync::Mutex<Option<std::path::PathBuf>>);

impl FileFlag {
    fn set(&self, path: std::path::PathBuf) {
        *crate::mutex::lock(&self.0) = Some(path);
    }
    /// Whether a path was set at all.
    fn is_set(&self) -> bool {
        crate::mutex::lock(&self.0).is_some()
    }
    /// Whether the fault holds now: the file exists.
    fn holds(&self) -> bool {
        crate::mutex::lock(&self.0)
            .as_ref()
            .is_some_and(|path| path.exists())
    }
}

/// How often a stalled change looks again whether the disk answers
/// ([`FaultPlan::stall_while_exists`]).
const STALL_POLL: std::time::Duration = std::time::Duration::from_millis(5);

impl FaultPlan {
    /// A plan that injects nothing until told to.
    pub fn new() -> Arc<FaultPlan> {
        Arc::new(FaultPlan::default())
    }
    /// Fails the `n`th file write from now (`n >= 1`).
    pub fn fail_write_at(&self, n: u64) {
        let now = self.writes.load(Ordering::SeqCst);
        self.fail_write_number.store(now + n, Ordering::SeqCst);
    }
    /// Counts writes and syncs, and fails the numbered ones, only for the files opened and the
    /// directories synced at paths `filter` accepts (a program whose other files share the
    /// file system: their syncs would take the number meant for the log's). The other paths
    /// still stall, fill and slow down as asked.
    pub fn count_only(&self, filter: PathFilter) {
        *crate::mutex::lock(&self.counted) = Some(filter);
    }
    /// Whether writes and syncs at `path` are counted.
    fn counts(&self, path: &Path) -> bool {
        crate::mutex::lock(&self.counted).is_none_or(|filter| filter(path))
    }
    /// Fails the `n`th `sync_data`/`sync_dir` from now (`n >= 1`).
    pub fn fail_sync_at(&self, n: u64) {
        let now = self.syncs.load(Ordering::SeqCst);
        self.fail_sync_number.store(now + n, Ordering::SeqCst);
    }
    /// Makes every `sync_data`/`sync_dir` from now take at least `delay` (a slow disk), so a
    /// test can hold a commit in flight for as long as it needs.
    pub fn delay_syncs(&self, delay: std::time::Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.sync_delay_micros.store(micros, Ordering::SeqCst);
    }
    /// Makes the file system full while a file exists at `path`: every `allocate` (a new
    /// segment's preallocation) and every write or length change that would grow a file past
    /// its size fails with `ENOSPC`, changing nothing, as on a full disk. Writes into space a
    /// file already has (a preallocated segment's) still succeed. A test creates and removes
    /// the file to fill and free the disk, from this process or another.
    pub fn full_while_exists(&self, path: std::path::PathBuf) {
        self.full_while.set(path);
    }
    /// Makes the disk stop answering while a file exists at `path`, as a hung device or a
    /// frozen file system (`fsfreeze`) does: every write, length change, allocation, `fsync`,
    /// file creation, rename and removal waits, without failing, until the file is removed;
    /// reads still answer (the page cache). A test creates and removes the file to hang and
    /// release the disk, from this process or another.
    pub fn stall_while_exists(&self, path: std::path::PathBuf) {
        self.stall_while.set(path);
    }
    /// Makes every `fsync` wait while a file exists at `path`, as on a device that stopped
    /// completing writes while the page cache still takes them: `write`s return, `fdatasync`
    /// and a directory's `fsync` do not until the file is removed.
    pub fn stall_syncs_while_exists(&self, path: std::path::PathBuf) {
        self.stall_syncs_while.set(path);
    }
    /// Waits while the disk is stalled (see [`FaultPlan::stall_while_exists`]); at once when
    /// no stall was asked for.
    fn wait_while_stalled(&self) {
        self.wait_while_flagged(&self.stall_while);
    }
    /// Waits while `flag` holds, counting one fault per wait.
    fn wait_while_flagged(&self, flag: &FileFlag) {
        if !flag.holds() {
            return;
        }
        self.faults_fired.fetch_add(1, Ordering::SeqCst);
        while flag.holds() {
            std::thread::sleep(STALL_POLL);
        }
    }
    /// Whether a full disk was asked for at all (a file's size is read only then).
    fn fills(&self) -> bool {
        self.full_while.is_set()
    }
    /// Fails a file's growth while the disk is full (see [`FaultPlan::full_while_exists`]).
    fn on_grow(&self) -> io::Result<()> {
        if self.full_while.holds() {
            self.faults_fired.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(())
    }
    /// Writes seen so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }
    /// Syncs seen so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
    /// Faults injected so far.
    pub fn faults_fired(&self) -> u64 {
        self.faults_fired.load(Ordering::SeqCst)
    }
    fn on_write(&self, counted: bool) -> io::Result<()> {
        self.wait_while_stalled();
        if !counted {
            return Ok(());
        }
        let number = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        self.maybe_fail(number, &self.fail_write_number, "write")
    }
    fn on_sync(&self, counted: bool) -> io::Result<()> {
        self.wait_while_stalled();
        self.wait_while_flagged(&self.stall_syncs_while);
        let delay = self.sync_delay_micros.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_micros(delay));
        }
        if !counted {
            return Ok(());
        }
        let number = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        self.maybe_fail(number, &self.fail_sync_number, "fsync")
    }
    fn maybe_fail(&self, number: u64, target: &AtomicU64, what: &str) -> io::Result<()> {
        if number == target.load(Ordering::SeqCst) {
            self.faults_fired.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::other(format!("injected {what} failure")));
        }
        Ok(())
    }
}

/// Wraps a file system and fails the writes or fsyncs its [`FaultPlan`] names.
#[derive(Debug, Clone)]
pub struct FaultyFs {
    inner: Arc<dyn FileSystem>,
    plan: Arc<FaultPlan>,
}

impl FaultyFs {
    /// Wraps `inner`, injecting the faults of `plan`.
    pub fn new(inner: Arc<dyn FileSystem>, plan: Arc<FaultPlan>) -> FaultyFs {
        FaultyFs { inner, plan }
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn WalFile>,
    plan: Arc<FaultPlan>,
    /// Whether its writes and syncs are counted ([`FaultPlan::count_only`]).
    counted: bool,
}

impl FaultyFile {
    /// Fails a change that would make the file longer than `end` while the disk is full.
    fn fail_growth_past(&self, end: u64) -> io::Result<()> {
        if self.plan.fills() && end > self.inner.size_bytes()? {
            self.plan.on_grow()?;
        }
        Ok(())
    }
}

impl WalFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.fail_growth_past(offset + buf.len() as u64)?;
        self.plan.on_write(self.counted)?;
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.plan.on_sync(self.counted)?;
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fail_growth_past(len)?;
        self.plan.on_write(self.counted)?;
        self.inner.set_len(len)
    }
    fn size_bytes(&self) -> io::Result<u64> {
        self.inner.size_bytes()
    }
    /// Not counted as a write: fault plans count the writes that carry data.
    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        self.plan.wait_while_stalled();
        self.fail_growth_past(offset + len)?;
        self.inner.write_zeros(offset, len)
    }
    /// Not counted as a write: fault plans count the writes that carry data.
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.plan.wait_while_stalled();
        self.fail_growth_past(len)?;
        self.inner.allocate(len)
    }
}

impl FileSystem for FaultyFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let inner = self.inner.open(path)?;
        Ok(Arc::new(FaultyFile {
            inner,
            plan: self.plan.clone(),
            counted: self.plan.counts(path),
        }))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        self.plan.wait_while_stalled();
        let inner = self.inner.create_new(path)?;
        Ok(Arc::new(FaultyFile {
            inner,
            plan: self.plan.clone(),
            counted: self.plan.counts(path),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.plan.wait_while_stalled();
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.plan.wait_while_stalled();
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.plan.on_sync(self.plan.counts(path))?;
        self.inner.sync_dir(path)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>> {
        self.inner.try_lock(path)
    }
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
pub(crate) fn read_exact_at(
    file: &dyn WalFile,
    mut buf: &mut [u8],
    mut offset: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        let read = file.read_at(buf, offset)?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[read..];
        offset += read as u64;
    }
    Ok(())
}

/// Reads from `offset` to the end of the file (at most `len` bytes).
pub(crate) fn read_range(file: &dyn WalFile, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0usize;
    while filled < buf.len() {
        let read = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    buf.truncate(filled);
    Ok(buf)
}
