//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kv_wal::fs::{DirLock, FileSystem, WalFile};
use kv_wal::sim::SimFs;
use kv_wal::{RecoveryMode, RecoveryReport, SyncPolicy, Wal, WalOptions};

/// The directory every simulated log lives in.
pub fn sim_dir() -> PathBuf {
    PathBuf::from("/sim/wal")
}

pub fn sim_options(fs: &SimFs, segment_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_bytes_max,
        sync_policy: SyncPolicy::Batch,
        recovery_mode: RecoveryMode::TolerateTornTail,
        refuse_whole_damaged_tail: false,
        needed_from: 0,
        first_id: 1,
        compress_records_above: None,
        compress_sealed_segments: None,
        segment_preallocation_bytes: kv_wal::SEGMENT_PREALLOCATION_BYTES_DEFAULT,
        inline_commit_when_idle: true,
        file_system: Arc::new(fs.clone()),
    }
}

pub fn open_sim(
    fs: &SimFs,
    segment_bytes_max: u64,
    mode: RecoveryMode,
) -> kv_wal::Result<(Wal, RecoveryReport)> {
    let options = WalOptions {
        recovery_mode: mode,
        ..sim_options(fs, segment_bytes_max)
    };
    Wal::open(sim_dir(), options)
}

pub fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut bytes = format!("record-{id}-").into_bytes();
    while bytes.len() < len {
        bytes.push(b'a' + (bytes.len() % 26) as u8);
    }
    bytes.truncate(len.max(1));
    bytes
}

pub fn collect(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
    wal.iter_from(from)
        .map(|record| {
            let record = record.expect("readable record");
            (record.id, record.into_payload())
        })
        .collect()
}

pub fn segment_files(fs: &SimFs) -> Vec<PathBuf> {
    let mut names: Vec<String> = fs
        .list_dir(&sim_dir())
        .expect("list")
        .into_iter()
        .filter(|name| name.ends_with(".wal"))
        .collect();
    names.sort();
    names.into_iter().map(|name| sim_dir().join(name)).collect()
}

/// Offsets of the record frames in a segment image, in order: frames are walked by their
/// length fields, and the log's other frames (durability marks, the seal) are left out.
pub fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = kv_wal::SEGMENT_HEADER_BYTES;
    while at + kv_wal::FRAME_HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        if bytes[at + 4] == b'R' {
            offsets.push(at);
        }
        at += kv_wal::FRAME_HEADER_BYTES + len;
    }
    offsets
}

/// Where the data of a segment image ends: past its last frame (walked by the frames' length
/// fields from the header on), before the free space of a preallocated segment.
pub fn data_end(bytes: &[u8]) -> usize {
    let mut at = kv_wal::SEGMENT_HEADER_BYTES;
    while at + kv_wal::FRAME_HEADER_BYTES <= bytes.len()
        && bytes[at..at + kv_wal::FRAME_HEADER_BYTES]
            .iter()
            .any(|&byte| byte != 0)
    {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        at += kv_wal::FRAME_HEADER_BYTES + len;
    }
    at.min(bytes.len())
}

/// What a torn write leaves of a segment image: the bytes from `at` to the end of its data
/// never reached the disk. A preallocated segment keeps its length, zeros there; an appending
/// one ends at `at`.
pub fn torn_at(bytes: &mut Vec<u8>, at: usize) {
    let end = data_end(bytes);
    if is_preallocated(bytes) {
        bytes[at..end].fill(0);
    } else {
        bytes.truncate(at);
    }
}

/// Whether a segment image is a preallocated one (format version 5).
pub fn is_preallocated(bytes: &[u8]) -> bool {
    u32::from_le_bytes(bytes[8..12].try_into().unwrap()) == 5
}

/// A preallocated segment image (format version 5) as the appending format (version 3) has
/// it: the free space gone, the header says 3 (its CRC redone). Sealed segments only change
/// their header.
pub fn as_appending_segment(bytes: &[u8]) -> Vec<u8> {
    if !is_preallocated(bytes) {
        return bytes.to_vec();
    }
    let mut appending = bytes[..data_end(bytes)].to_vec();
    appending[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = kv_wal::frame::crc32c(&appending[..44]);
    appending[44..48].copy_from_slice(&crc.to_le_bytes());
    appending
}

pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("KV_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(default)
}

/// A file system that dies at a chosen step: once armed, the Nth mutating call (a write,
/// `set_len`, fsync, create, rename, remove or directory fsync) fails, and so does every one
/// after it, as if the process had been killed there. Pair it with [`SimFs::crash`] to lose
/// what was not synced. Steps are counted whether or not it is armed.
#[derive(Debug, Clone)]
pub struct StepFs {
    inner: SimFs,
    plan: Arc<StepPlan>,
}

#[derive(Debug, Default)]
pub struct StepPlan {
    steps: AtomicU64,
    /// Fail from this step on (0: never).
    fail_from: AtomicU64,
}

impl StepPlan {
    /// Mutating calls seen so far.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::SeqCst)
    }
    /// Makes the `n`th mutating call from now, and all after it, fail.
    pub fn die_at(&self, n: u64) {
        self.fail_from.store(self.steps() + n, Ordering::SeqCst);
    }
    /// Whether the planned death has happened.
    pub fn died(&self) -> bool {
        let from = self.fail_from.load(Ordering::SeqCst);
        from != 0 && self.steps() >= from
    }
    fn step(&self) -> std::io::Result<()> {
        let number = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
        let from = self.fail_from.load(Ordering::SeqCst);
        if from != 0 && number >= from {
            return Err(std::io::Error::other("the process died here (simulated)"));
        }
        Ok(())
    }
}

impl StepFs {
    pub fn new(inner: SimFs) -> StepFs {
        StepFs {
            inner,
            plan: Arc::new(StepPlan::default()),
        }
    }
    pub fn plan(&self) -> &Arc<StepPlan> {
        &self.plan
    }
}

#[derive(Debug)]
struct StepFile {
    inner: Arc<dyn WalFile>,
    plan: Arc<StepPlan>,
}

impl WalFile for StepFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.plan.step()?;
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.plan.step()?;
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.plan.step()?;
        self.inner.set_len(len)
    }
    fn size_bytes(&self) -> std::io::Result<u64> {
        self.inner.size_bytes()
    }
    /// Not a `set_len` of the log's: the file's own allocation, forwarded as it is.
    fn allocate(&self, len: u64) -> std::io::Result<()> {
        self.inner.allocate(len)
    }
}

impl FileSystem for StepFs {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(&self, path: &Path) -> std::io::Result<Arc<dyn WalFile>> {
        Ok(Arc::new(StepFile {
            inner: self.inner.open(path)?,
            plan: self.plan.clone(),
        }))
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn WalFile>> {
        self.plan.step()?;
        Ok(Arc::new(StepFile {
            inner: self.inner.create_new(path)?,
            plan: self.plan.clone(),
        }))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.plan.step()?;
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.plan.step()?;
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.plan.step()?;
        self.inner.sync_dir(path)
    }
    fn try_lock(&self, path: &Path) -> std::io::Result<Box<dyn DirLock>> {
        self.inner.try_lock(path)
    }
}

/// The compressed segment files (`.walz`) in the simulated log directory.
pub fn compressed_files(fs: &SimFs) -> Vec<PathBuf> {
    let mut names: Vec<String> = fs
        .list_dir(&sim_dir())
        .expect("list")
        .into_iter()
        .filter(|name| name.ends_with(".walz"))
        .collect();
    names.sort();
    names.into_iter().map(|name| sim_dir().join(name)).collect()
}

/// Called before every mutating file-system call of a [`HookFs`] with the call's name
/// (`write`, `sync_data`, `set_len`, `create`, `remove`, `rename`, `sync_dir`, `create_dir`)
/// and its path.
pub type Hook = Arc<dyn Fn(&str, &Path) + Send + Sync>;

/// [`SimFs`] with a [`Hook`] before every mutating call: tests watch or pause the log at a
/// chosen step.
#[derive(Clone)]
pub struct HookFs {
    inner: SimFs,
    hook: Hook,
}

impl std::fmt::Debug for HookFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookFs")
    }
}

impl HookFs {
    pub fn new(inner: SimFs, hook: Hook) -> HookFs {
        HookFs { inner, hook }
    }
    fn wrap(&self, path: &Path, inner: Arc<dyn WalFile>) -> Arc<dyn WalFile> {
        Arc::new(HookFile {
            inner,
            path: path.to_owned(),
            hook: self.hook.clone(),
        })
    }
}

struct HookFile {
    inner: Arc<dyn WalFile>,
    path: PathBuf,
    hook: Hook,
}

impl std::fmt::Debug for HookFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HookFile({})", self.path.display())
    }
}

impl WalFile for HookFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        (self.hook)("write", &self.path);
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        (self.hook)("sync_data", &self.path);
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        (self.hook)("set_len", &self.path);
        self.inner.set_len(len)
    }
    fn size_bytes(&self) -> std::io::Result<u64> {
        self.inner.size_bytes()
    }
    /// Not a `set_len` of the log's: the file's own allocation, forwarded as it is.
    fn allocate(&self, len: u64) -> std::io::Result<()> {
        self.inner.allocate(len)
    }
}

impl FileSystem for HookFs {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        (self.hook)("create_dir", path);
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(&self, path: &Path) -> std::io::Result<Arc<dyn WalFile>> {
        Ok(self.wrap(path, self.inner.open(path)?))
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn WalFile>> {
        (self.hook)("create", path);
        Ok(self.wrap(path, self.inner.create_new(path)?))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        (self.hook)("remove", path);
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        (self.hook)("rename", to);
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        (self.hook)("sync_dir", path);
        self.inner.sync_dir(path)
    }
    fn try_lock(&self, path: &Path) -> std::io::Result<Box<dyn DirLock>> {
        self.inner.try_lock(path)
    }
}

/// What a [`SyncHookFs`] runs around every `sync_data` of its files.
pub trait SyncHook: std::fmt::Debug + Send + Sync {
    /// Before the inner file's `sync_data`.
    fn before_sync(&self) {}
    /// After it.
    fn after_sync(&self) {}
}

/// A file system whose files run a [`SyncHook`] around every `sync_data` (to hold an fsync,
/// or to see a second one start while the first is held).
#[derive(Debug)]
pub struct SyncHookFs<H> {
    inner: Arc<dyn FileSystem>,
    hook: Arc<H>,
}

impl<H: SyncHook + 'static> SyncHookFs<H> {
    pub fn new(inner: Arc<dyn FileSystem>, hook: Arc<H>) -> SyncHookFs<H> {
        SyncHookFs { inner, hook }
    }

    fn wrap(&self, inner: Arc<dyn WalFile>) -> Arc<dyn WalFile> {
        Arc::new(SyncHookFile {
            inner,
            hook: self.hook.clone(),
        })
    }
}

#[derive(Debug)]
struct SyncHookFile<H> {
    inner: Arc<dyn WalFile>,
    hook: Arc<H>,
}

impl<H: SyncHook> WalFile for SyncHookFile<H> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.hook.before_sync();
        let result = self.inner.sync_data();
        self.hook.after_sync();
        result
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn size_bytes(&self) -> std::io::Result<u64> {
        self.inner.size_bytes()
    }
    fn allocate(&self, len: u64) -> std::io::Result<()> {
        self.inner.allocate(len)
    }
}

impl<H: SyncHook + 'static> FileSystem for SyncHookFs<H> {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(&self, path: &Path) -> std::io::Result<Arc<dyn WalFile>> {
        Ok(self.wrap(self.inner.open(path)?))
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn WalFile>> {
        Ok(self.wrap(self.inner.create_new(path)?))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn try_lock(&self, path: &Path) -> std::io::Result<Box<dyn DirLock>> {
        self.inner.try_lock(path)
    }
}
