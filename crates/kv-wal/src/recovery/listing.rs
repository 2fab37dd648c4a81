//! Finding the segment files of a log directory.

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::fs::FileSystem;
use crate::report::RecoveryReport;
use crate::segment_file::parse_segment_file_name;

/// A segment file found in the directory.
#[derive(Debug, Clone)]
pub(crate) struct FoundSegment {
    pub sequence: u64,
    pub first_id: u64,
    pub path: PathBuf,
    /// Named `.walz`: a compressed sealed segment.
    pub compressed: bool,
}

/// Lists the segment files in `dir`, sorted by sequence, removing leftover temporaries.
pub(crate) fn list_segments(
    fs: &dyn FileSystem,
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<Vec<FoundSegment>> {
    let mut found = Vec::new();
    for name in fs.list_dir(dir).at(dir)? {
        if name.ends_with(".tmp") {
            let path = dir.join(&name);
            fs.remove_file(&path).at(&path)?;
            report.removed_files.push(path);
            continue;
        }
        if let Some((sequence, first_id, compressed)) = parse_segment_file_name(&name) {
            found.push(FoundSegment {
                sequence,
                first_id,
                path: dir.join(name),
                compressed,
            });
        }
    }
    // Plain before compressed for the same segment.
    found.sort_by_key(|segment| (segment.sequence, segment.compressed));
    // A crash while a segment was being compressed (or rewritten plain) can leave both files:
    // the plain one is kept, always. Both hold the same records up to where the plain one ends,
    // and a plain file only replaces a compressed one when a truncation or repair cut it.
    let mut kept: Vec<FoundSegment> = Vec::with_capacity(found.len());
    for segment in found {
        let twin = kept.last().is_some_and(|plain| {
            plain.sequence == segment.sequence
                && plain.first_id == segment.first_id
                && !plain.compressed
                && segment.compressed
        });
        if twin {
            fs.remove_file(&segment.path).at(&segment.path)?;
            report.removed_files.push(segment.path);
            continue;
        }
        kept.push(segment);
    }
    Ok(kept)
}
