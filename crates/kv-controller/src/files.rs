//! Small durable files through kv-wal's file-system seam: written whole and atomically
//! (a temporary file, fsync, rename, directory fsync), read whole.

use std::io;
use std::path::Path;

use kv_wal::fs::FileSystem;

use crate::error::{Error, Result};

/// Longest small file read (the controller's files are a few KiB).
const SMALL_FILE_BYTES_MAX: u64 = 64 << 20;

/// Writes `bytes` to `dir/name` atomically: after a crash at any point the file holds either
/// its old content or `bytes`.
pub(crate) fn write_atomic(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<()> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.tmp"));
    match fs.remove_file(&temp) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(Error::io(&temp, error)),
    }
    let file = fs
        .create_new(&temp)
        .map_err(|error| Error::io(&temp, error))?;
    file.write_all_at(bytes, 0)
        .and_then(|()| file.sync_data())
        .map_err(|error| Error::io(&temp, error))?;
    drop(file);
    fs.rename(&temp, &path)
        .map_err(|error| Error::io(&path, error))?;
    fs.sync_dir(dir).map_err(|error| Error::io(dir, error))
}

/// Reads `path` whole; `None` if it does not exist.
pub(crate) fn read(fs: &dyn FileSystem, path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match fs.open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io(path, error)),
    };
    let size = file.size_bytes().map_err(|error| Error::io(path, error))?;
    if size > SMALL_FILE_BYTES_MAX {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            reason: format!("{size} bytes is too large for a controller file"),
        });
    }
    let mut bytes = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < bytes.len() {
        let read = file
            .read_at(&mut bytes[filled..], filled as u64)
            .map_err(|error| Error::io(path, error))?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    bytes.truncate(filled);
    Ok(Some(bytes))
}
