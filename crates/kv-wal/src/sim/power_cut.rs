//! What a power cut leaves of a file's unsynced bytes: a torn prefix
//! ([`super::CrashMode::TearUnsynced`]) or any subset of its pages
//! ([`super::CrashMode::LoseUnsyncedPages`]).

use rand::Rng;

use super::{CrashStats, Inode, PAGE_BYTES, SECTOR_BYTES};

/// What survives of a file whose unsynced bytes are torn: a random whole-sector prefix of them,
/// its last sector maybe zeroed or garbage ([`super::CrashMode::TearUnsynced`]). The unsynced
/// bytes run from the lowest offset written since the last sync to the end: bytes appended, or
/// (in a preallocated file) written over zeros the disk already holds, which it keeps where the
/// tear stops.
pub(super) fn tear_tail(
    inode: &Inode,
    rng: &mut rand::rngs::StdRng,
    stats: &mut CrashStats,
) -> Vec<u8> {
    let mut survivor = inode.durable.clone();
    // Bytes a failed sync dropped are not dirty any more, and stay lost.
    let std::ops::Range { start, end } = inode.dirty_range();
    if end <= start {
        return survivor;
    }
    if survivor.len() < start {
        survivor.resize(start, 0);
    }
    // Sector boundaries (absolute offsets) where the disk may have stopped.
    let first_boundary = (start / SECTOR_BYTES + 1) * SECTOR_BYTES;
    let boundaries = (first_boundary..end).step_by(SECTOR_BYTES).chain([end]);
    let cuts: Vec<usize> = std::iter::once(start).chain(boundaries).collect();
    let cut = cuts[rng.gen_range(0..cuts.len())];
    if cut > start {
        if survivor.len() < cut {
            survivor.resize(cut, 0);
        }
        survivor[start..cut].copy_from_slice(&inode.current[start..cut]);
        let last_sector = ((cut - 1) / SECTOR_BYTES * SECTOR_BYTES).max(start);
        match rng.gen_range(0..3) {
            0 => {}
            1 => survivor[last_sector..cut].fill(0),
            _ => rng.fill(&mut survivor[last_sector..cut]),
        }
        stats.torn_writes += 1;
    }
    survivor
}

/// What survives of a file's unsynced bytes when the page cache wrote back any subset of its
/// dirty pages ([`super::CrashMode::LoseUnsyncedPages`]): each 4 KiB page is kept, lost, or torn at
/// sector granularity. Lost bytes read as the disk had them; the file ends after its last
/// byte kept (or at its old length).
pub(super) fn lose_pages(
    inode: &Inode,
    rng: &mut rand::rngs::StdRng,
    stats: &mut CrashStats,
) -> Vec<u8> {
    let mut survivor = inode.durable.clone();
    let std::ops::Range { start: from, end } = inode.dirty_range();
    if from >= end {
        // Nothing dirty (or only a cut, whose new length may or may not have reached the disk).
        let len = inode.current.len();
        if len < survivor.len() && rng.gen_bool(0.5) {
            survivor.truncate(len);
        }
        return survivor;
    }
    let mut lost_any = false;
    let mut torn = false;
    let mut page = from / PAGE_BYTES * PAGE_BYTES;
    while page < end {
        let range = page.max(from)..(page + PAGE_BYTES).min(end);
        let keep_sectors: Vec<bool> = match rng.gen_range(0..5) {
            0 | 1 => vec![false],
            2 | 3 => vec![true],
            _ => {
                torn = true;
                (0..PAGE_BYTES / SECTOR_BYTES)
                    .map(|_| rng.gen_bool(0.5))
                    .collect()
            }
        };
        let mut sector_start = range.start;
        while sector_start < range.end {
            let sector_end = ((sector_start / SECTOR_BYTES + 1) * SECTOR_BYTES).min(range.end);
            let keep = if keep_sectors.len() == 1 {
                keep_sectors[0]
            } else {
                keep_sectors[(sector_start - page) / SECTOR_BYTES]
            };
            if keep {
                if lost_any {
                    stats.non_prefix_losses += 1;
                    lost_any = false; // count once per run of losses
                }
                if survivor.len() < sector_end {
                    survivor.resize(sector_end, 0);
                }
                survivor[sector_start..sector_end]
                    .copy_from_slice(&inode.current[sector_start..sector_end]);
            } else {
                lost_any = true;
            }
            sector_start = sector_end;
        }
        page += PAGE_BYTES;
    }
    if torn {
        stats.torn_writes += 1;
    }
    survivor
}
