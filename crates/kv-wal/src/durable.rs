//! Durable files beside the log: the one place a whole file is made crash-safe.
//!
//! Everything kvd keeps on disk apart from the log's segments — snapshots, a snapshot being
//! downloaded, `node.meta`, the log's own meta and truncation marker — is written here, through
//! the [`FileSystem`] seam, so the power-loss simulation ([`crate::sim::SimFs`]) covers it the
//! same way it covers segments. The rule every writer follows:
//!
//! 1. write the new contents to `<name>.tmp` (never the file itself),
//! 2. `fdatasync` the temporary file,
//! 3. rename it over `<name>` (atomic: a reader sees the old file or the new one),
//! 4. `fsync` the directory, so the rename survives a power cut.
//!
//! A crash before step 4 leaves the old file (or none) and perhaps a `.tmp` to remove; after
//! it, the new file, whole. [`create_dir_all_durable`] makes newly created directories durable
//! the same way (each new directory's entry is fsynced in its parent).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{IoContext, Result};
use crate::fs::{FileSystem, WalFile};

/// Buffer of a [`DurableFileWriter`] before it writes to the file.
pub const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Writes `bytes` as the whole of `dir/name`, atomically and durably (temporary file, fsync,
/// rename, directory fsync). `dir` must exist.
pub fn write_file_atomic(fs: &dyn FileSystem, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let mut writer = DurableFileWriter::create(fs, dir, name)?;
    writer.write_bytes(bytes)?;
    writer.commit()?;
    Ok(())
}

/// Reads the whole of `path`; `Ok(None)` when it does not exist.
pub fn read_file(fs: &dyn FileSystem, path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match fs.open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).at(path),
    };
    let len = file.size_bytes().at(path)?;
    Ok(Some(crate::fs::read_range(&*file, 0, len).at(path)?))
}

/// Removes `path` if it exists (a missing file is not an error).
pub fn remove_file_if_exists(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    match fs.remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).at(path),
    }
}

/// Renames `dir/from` to `dir/to` (replacing it) and fsyncs `dir`, so the rename survives a
/// power cut. The file's own bytes must already be synced.
pub fn rename_durable(fs: &dyn FileSystem, dir: &Path, from: &str, to: &str) -> Result<PathBuf> {
    let to_path = dir.join(to);
    fs.rename(&dir.join(from), &to_path).at(&to_path)?;
    fs.sync_dir(dir).at(dir)?;
    Ok(to_path)
}

/// Creates `path` and any missing parents, and makes every directory it created durable: each
/// new directory's parent is fsynced (deepest first), so a power cut cannot lose a directory
/// whose files were already synced.
pub fn create_dir_all_durable(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    let mut missing: Vec<&Path> = Vec::new();
    let mut probe = Some(path);
    while let Some(dir) = probe {
        if dir.as_os_str().is_empty() || fs.list_dir(dir).is_ok() {
            break;
        }
        missing.push(dir);
        probe = dir.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(path).at(path)?;
    for dir in missing {
        if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            fs.sync_dir(parent).at(parent)?;
        }
    }
    Ok(())
}

/// A file written in pieces and made visible whole: bytes go to `<name>.tmp` (buffered), and
/// [`DurableFileWriter::commit`] syncs it, renames it over `<name>` and syncs the directory.
/// Dropped without a commit, it removes the temporary file (best effort).
#[derive(Debug)]
pub struct DurableFileWriter<'fs> {
    fs: &'fs dyn FileSystem,
    dir: PathBuf,
    path: PathBuf,
    temp_path: PathBuf,
    file: Option<Arc<dyn WalFile>>,
    buffer: Vec<u8>,
    written_bytes: u64,
}

impl<'fs> DurableFileWriter<'fs> {
    /// Starts `dir/name` afresh: a stale `<name>.tmp` is removed first. `dir` must exist.
    pub fn create(fs: &'fs dyn FileSystem, dir: &Path, name: &str) -> Result<Self> {
        let temp_path = dir.join(format!("{name}.tmp"));
        remove_file_if_exists(fs, &temp_path)?;
        let file = fs.create_new(&temp_path).at(&temp_path)?;
        Ok(DurableFileWriter {
            fs,
            dir: dir.to_owned(),
            path: dir.join(name),
            temp_path,
            file: Some(file),
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            written_bytes: 0,
        })
    }

    /// Appends `bytes` (buffered).
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= WRITE_BUFFER_BYTES {
            self.flush_buffer()?;
        }
        Ok(())
    }

    /// Bytes appended so far.
    pub fn len_bytes(&self) -> u64 {
        self.written_bytes + self.buffer.len() as u64
    }

    /// Makes the file durable and visible under its name; returns its length in bytes.
    pub fn commit(mut self) -> Result<u64> {
        self.flush_buffer()?;
        let file = self.file.take().expect("a writer commits once");
        file.sync_data().at(&self.temp_path)?;
        drop(file);
        self.fs.rename(&self.temp_path, &self.path).at(&self.path)?;
        self.fs.sync_dir(&self.dir).at(&self.dir)?;
        Ok(self.written_bytes)
    }

    fn flush_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let file = self.file.as_ref().expect("not committed");
        file.write_all_at(&self.buffer, self.written_bytes)
            .at(&self.temp_path)?;
        self.written_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

impl io::Write for DurableFileWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_bytes(bytes).map_err(io::Error::other)?;
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DurableFileWriter<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = self.fs.remove_file(&self.temp_path);
        }
    }
}

/// A file being received in chunks that may resume after a restart (a snapshot download):
/// `<name>` grows by [`PartialFile::append`], then [`PartialFile::sync`] makes it durable under
/// its partial name and [`rename_durable`] gives it its final one. Unlike [`DurableFileWriter`],
/// what was written survives a drop.
#[derive(Debug)]
pub struct PartialFile {
    path: PathBuf,
    file: Arc<dyn WalFile>,
    len_bytes: u64,
}

impl PartialFile {
    /// Opens `dir/name` to continue it, or creates it empty. `dir` must exist.
    pub fn open_or_create(fs: &dyn FileSystem, dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(name);
        let file = match fs.open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs.create_new(&path).at(&path)?
            }
            Err(error) => return Err(error).at(&path),
        };
        let len_bytes = file.size_bytes().at(&path)?;
        Ok(PartialFile {
            path,
            file,
            len_bytes,
        })
    }

    /// Bytes held so far.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Cuts the file to nothing (a download that must start over).
    pub fn clear(&mut self) -> Result<()> {
        self.file.set_len(0).at(&self.path)?;
        self.len_bytes = 0;
        Ok(())
    }

    /// Appends `bytes` at the end.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, self.len_bytes)
            .at(&self.path)?;
        self.len_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Syncs the file (its bytes are on disk under its partial name).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().at(&self.path)
    }
}

/// Reads a file sequentially through the seam (`std::io::Read`), e.g. a snapshot.
#[derive(Debug)]
pub struct FileReader {
    file: Arc<dyn WalFile>,
    offset: u64,
}

impl FileReader {
    /// Opens `path` for reading from its start.
    pub fn open(fs: &dyn FileSystem, path: &Path) -> Result<FileReader> {
        let file = fs.open(path).at(path)?;
        Ok(FileReader { file, offset: 0 })
    }

    /// The file's length in bytes.
    pub fn len_bytes(&self) -> io::Result<u64> {
        self.file.size_bytes()
    }

    /// Moves the read position to `offset`.
    pub fn seek_to(&mut self, offset: u64) {
        self.offset = offset;
    }
}

impl io::Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buf, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{CrashMode, SimFs};
    use std::io::Read;

    fn sim() -> SimFs {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        fs
    }

    #[test]
    fn an_atomic_write_survives_a_power_cut_whole_or_not_at_all() {
        let fs = sim();
        let dir = Path::new("/d");
        write_file_atomic(&fs, dir, "f", b"first").unwrap();
        let mut writer = DurableFileWriter::create(&fs, dir, "f").unwrap();
        writer.write_bytes(b"second, not committed").unwrap();
        std::mem::forget(writer);
        fs.crash(CrashMode::DropUnsynced);
        assert_eq!(
            read_file(&fs, &dir.join("f")).unwrap().as_deref(),
            Some(&b"first"[..])
        );
        write_file_atomic(&fs, dir, "f", b"third").unwrap();
        fs.crash(CrashMode::DropUnsynced);
        assert_eq!(
            read_file(&fs, &dir.join("f")).unwrap().as_deref(),
            Some(&b"third"[..])
        );
    }

    #[test]
    fn a_dropped_writer_leaves_no_temporary() {
        let fs = sim();
        let dir = Path::new("/d");
        let mut writer = DurableFileWriter::create(&fs, dir, "f").unwrap();
        writer.write_bytes(&[7u8; WRITE_BUFFER_BYTES + 10]).unwrap();
        drop(writer);
        assert!(fs.list_dir(dir).unwrap().is_empty());
    }

    #[test]
    fn new_directories_survive_a_power_cut() {
        let fs = SimFs::new();
        create_dir_all_durable(&fs, Path::new("/a/b/c")).unwrap();
        write_file_atomic(&fs, Path::new("/a/b/c"), "f", b"x").unwrap();
        fs.crash(CrashMode::DropUnsynced);
        assert_eq!(
            read_file(&fs, Path::new("/a/b/c/f")).unwrap().as_deref(),
            Some(&b"x"[..])
        );
    }

    #[test]
    fn a_partial_file_resumes_and_finishes() {
        let fs = sim();
        let dir = Path::new("/d");
        let mut part = PartialFile::open_or_create(&fs, dir, "p.part").unwrap();
        part.append(b"abc").unwrap();
        part.sync().unwrap();
        drop(part);
        let mut part = PartialFile::open_or_create(&fs, dir, "p.part").unwrap();
        assert_eq!(part.len_bytes(), 3);
        part.append(b"def").unwrap();
        part.sync().unwrap();
        let path = rename_durable(&fs, dir, "p.part", "p").unwrap();
        fs.crash(CrashMode::DropUnsynced);
        let mut text = String::new();
        FileReader::open(&fs, &path)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "abcdef");
    }
}
