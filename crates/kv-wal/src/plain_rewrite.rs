//! Writing a plain segment file whole (a compressed segment rewritten plain when a truncation
//! or a point-in-time repair must cut into it), atomically: `.tmp`, fdatasync, rename,
//! fsync(dir).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{IoContext, Result};
use crate::fs::{FileSystem, WalFile};
use crate::segment_file::{
    encode_seal, segment_file_name, SegmentHeader, SEAL_BYTES, SEGMENT_HEADER_BYTES,
};

/// Creates `path` (replacing a leftover), writes `bytes` and fdatasyncs it.
pub(crate) fn write_and_sync(
    fs: &dyn FileSystem,
    path: &Path,
    bytes: &[u8],
) -> Result<Arc<dyn WalFile>> {
    match fs.remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).at(path),
    }
    let file = fs.create_new(path).at(path)?;
    file.write_all_at(bytes, 0).at(path)?;
    file.sync_data().at(path)?;
    Ok(file)
}

/// A plain segment rewritten from a compressed one's frames (truncation, point-in-time
/// repair).
pub(crate) struct PlainRewrite {
    pub path: PathBuf,
    pub file: Arc<dyn WalFile>,
    /// The whole file as written.
    pub image: Vec<u8>,
}

/// Writes a plain segment `{sequence}-{first_id}.wal` holding `frames` (sealed with
/// `last_id` when `seal` is set), atomically: a `.tmp`, fdatasync, rename, fsync(dir). The
/// caller then removes the compressed file and fsyncs the directory; a crash in between leaves
/// both files, and open keeps the plain one.
pub(crate) fn write_plain_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    header: SegmentHeader,
    frames: &[u8],
    seal: Option<u64>,
) -> Result<PlainRewrite> {
    let header = SegmentHeader {
        codec: None,
        preallocated: false,
        ..header
    };
    let mut image = Vec::with_capacity(SEGMENT_HEADER_BYTES + frames.len() + SEAL_BYTES);
    image.extend_from_slice(&header.encode());
    image.extend_from_slice(frames);
    if let Some(last_id) = seal {
        encode_seal(
            &mut image,
            last_id,
            last_id - header.first_id + 1,
            header.salt,
        );
    }
    let name = segment_file_name(header.sequence, header.first_id);
    let path = dir.join(&name);
    let temp_path = dir.join(format!("{name}.tmp"));
    let file = write_and_sync(fs, &temp_path, &image)?;
    fs.rename(&temp_path, &path).at(&path)?;
    fs.sync_dir(dir).at(dir)?;
    Ok(PlainRewrite { path, file, image })
}
