//! Each key's earlier versions, within a bounded retention.
//!
//! Values are not copied: every value ever written is in the log, at the record that wrote it,
//! so the history is an index of *where* versions were written. A cell names its own write
//! (`mod_revision` and the op's position in the record: a locator); each write that
//! replaced a value adds a link from the new value's locator to the replaced one's. Walking
//! the links from the current cell back gives the key's versions, newest first (each one
//! version lower), and each value is read back from its log record while the log still holds
//! it. A key written once has no link: history costs nothing per key until a key is
//! overwritten.
//!
//! Retention (like etcd's compaction): links made more than `revisions_max` revisions ago are
//! dropped, and the oldest links go first while the values they reach add up to more than
//! `bytes_max`; the log's own compaction (snapshots, then purging) also takes old values away,
//! and a purge drops the links made before the log's new first id with them (their values are
//! gone, so they would only hold memory: `a_purge_forgets_the_history_links_it_made_unreadable`).
//! A version whose link or record is gone is *compacted*: asked for, it is an error (410 over
//! HTTP), never a wrong answer. A delete ends the key's history with it: a key created again
//! starts at version 1.

use crate::map::{KeyMeta, KeyValue, Locator, Replaced};
use crate::value::Value;

/// How much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Versions replaced more than this many revisions ago are forgotten (0: keep no history).
    pub revisions_max: u64,
    /// While the replaced values still reachable add up to more than this, the oldest are
    /// forgotten.
    pub bytes_max: u64,
}

impl Default for HistoryOptions {
    fn default() -> HistoryOptions {
        HistoryOptions {
            revisions_max: 100_000,
            bytes_max: 64 << 20,
        }
    }
}

/// A replaced value: where it was written, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    pub previous: Locator,
    pub previous_bytes: u32,
}

/// The links, by the locator of the value that replaced the linked one.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    links: imbl::OrdMap<Locator, Link>,
    bytes: u64,
    /// The highest revision of a link dropped so far (0: none).
    pub compacted_through: u64,
}

/// One of a key's versions, located.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionAt {
    /// The version number.
    pub version: u64,
    /// The id of the record that wrote it.
    pub mod_revision: u64,
    pub(crate) locator: Locator,
}

/// The versions of a key that history still reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionChain {
    /// Newest first, starting with the current version.
    pub versions: Vec<VersionAt>,
    /// Whether versions older than the last listed were compacted away (rather than the last
    /// listed being version 1, or the walk stopping at a limit).
    pub compacted: bool,
}

impl History {
    /// Records that the value at `new` replaced the one `replaced` names.
    pub fn link(&mut self, new: Locator, replaced: Replaced) {
        let previous_bytes = u32::try_from(replaced.value_bytes).unwrap_or(u32::MAX);
        self.bytes += u64::from(previous_bytes);
        let link = Link {
            previous: replaced.locator,
            previous_bytes,
        };
        if let Some(replaced) = self.links.insert(new, link) {
            self.bytes -= u64::from(replaced.previous_bytes);
        }
    }

    /// Drops what retention no longer keeps, after the record `revision` was applied.
    pub fn prune(&mut self, revision: u64, options: &HistoryOptions) {
        let oldest_kept = revision.saturating_sub(options.revisions_max) + 1;
        while let Some(&(locator, link)) = self.links.get_min() {
            if locator.revision >= oldest_kept && self.bytes <= options.bytes_max {
                break;
            }
            self.bytes -= u64::from(link.previous_bytes);
            self.compacted_through = self.compacted_through.max(locator.revision);
            self.links.remove(&locator);
        }
    }

    /// Drops the links made by records before `first_id`, the log's first id once it was
    /// purged: the values they reach were written earlier still, so the log no longer holds
    /// them and the links would only take memory (the versions read as compacted either way).
    pub fn forget_before(&mut self, first_id: u64) {
        while let Some(&(locator, link)) = self.links.get_min() {
            if locator.revision >= first_id {
                break;
            }
            self.bytes -= u64::from(link.previous_bytes);
            self.compacted_through = self.compacted_through.max(locator.revision);
            self.links.remove(&locator);
        }
    }

    /// The versions reachable from `current`, newest first, at most `limit` of them.
    pub fn chain(&self, current: &KeyValue, limit: usize) -> VersionChain {
        let meta = current.meta();
        let mut versions = Vec::new();
        let mut at = Some(VersionAt {
            version: meta.version,
            mod_revision: meta.mod_revision,
            locator: current.locator(),
        });
        while let Some(version) = at {
            if versions.len() == limit {
                return VersionChain {
                    versions,
                    compacted: false,
                };
            }
            versions.push(version);
            if version.version <= 1 {
                break;
            }
            at = self.links.get(&version.locator).map(|link| VersionAt {
                version: version.version - 1,
                mod_revision: link.previous.revision,
                locator: link.previous,
            });
        }
        let oldest = versions.last().map_or(1, |version| version.version);
        VersionChain {
            versions,
            compacted: oldest > 1,
        }
    }

    /// Links held.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Every link, oldest first (a snapshot section).
    pub fn iter(&self) -> impl Iterator<Item = (&Locator, &Link)> {
        self.links.iter()
    }

    /// Restores a link read from a snapshot.
    pub fn restore(&mut self, new: Locator, link: Link) {
        self.bytes += u64::from(link.previous_bytes);
        if let Some(replaced) = self.links.insert(new, link) {
            self.bytes -= u64::from(replaced.previous_bytes);
        }
    }
}

/// What a read of one version found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRead {
    /// The key had this value at that version.
    Found {
        /// The version asked for.
        version: u64,
        /// The id of the record that wrote it.
        mod_revision: u64,
        /// The value.
        value: Value,
    },
    /// The key is absent.
    KeyNotFound,
    /// The key never reached that version (0, or above the current one).
    NoSuchVersion {
        /// The key's current version.
        latest: u64,
    },
    /// The version is older than what history still holds.
    Compacted {
        /// The oldest version still held.
        oldest_available: u64,
        /// The key's current version.
        latest: u64,
    },
}

/// A key's versions, newest first, as far back as history reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHistory {
    /// The current version and revisions.
    pub latest: KeyMeta,
    /// `(version, mod_revision, value)`, newest first (values only when asked for).
    pub versions: Vec<(u64, u64, Option<Value>)>,
    /// Whether older versions existed but were compacted away.
    pub compacted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::KeyMap;
    use crate::value::Value;

    fn at(revision: u64) -> Locator {
        Locator {
            revision,
            op_index: 0,
        }
    }

    /// Writes `key` at each revision, linking as the store does.
    fn write(map: &mut KeyMap, history: &mut History, key: &[u8], revisions: &[u64]) {
        for &revision in revisions {
            let value = Value::raw(vec![0; 10]);
            if let (_, Some(replaced)) = map.put(key, &value, at(revision)) {
                history.link(at(revision), replaced);
            }
        }
    }

    fn versions(chain: &VersionChain) -> Vec<(u64, u64)> {
        chain
            .versions
            .iter()
            .map(|version| (version.version, version.mod_revision))
            .collect()
    }

    #[test]
    fn the_chain_walks_back_to_version_1() {
        let (mut map, mut history) = (KeyMap::default(), History::default());
        write(&mut map, &mut history, b"a", &[2, 5, 9]);
        write(&mut map, &mut history, b"b", &[3]);
        let chain = history.chain(&map.get(b"a").unwrap(), usize::MAX);
        assert_eq!(versions(&chain), [(3, 9), (2, 5), (1, 2)]);
        assert!(!chain.compacted);
        let limited = history.chain(&map.get(b"a").unwrap(), 2);
        assert_eq!(versions(&limited), [(3, 9), (2, 5)]);
        assert!(!limited.compacted);
        let once = history.chain(&map.get(b"b").unwrap(), usize::MAX);
        assert_eq!(versions(&once), [(1, 3)]);
        assert_eq!(history.len(), 2, "a key written once has no link");
    }

    #[test]
    fn retention_by_revisions_and_bytes_compacts_the_oldest() {
        let (mut map, mut history) = (KeyMap::default(), History::default());
        write(&mut map, &mut history, b"a", &[1, 2, 3, 4, 5]);
        // Links at 2..=5; keep those made in the last 2 revisions of 5 (4 and 5).
        let options = HistoryOptions {
            revisions_max: 2,
            bytes_max: u64::MAX,
        };
        history.prune(5, &options);
        let chain = history.chain(&map.get(b"a").unwrap(), usize::MAX);
        assert_eq!(versions(&chain), [(5, 5), (4, 4), (3, 3)]);
        assert!(chain.compacted);
        assert_eq!(history.compacted_through, 3);
        // 10 bytes per replaced value: 15 bytes keep one link.
        let options = HistoryOptions {
            revisions_max: u64::MAX,
            bytes_max: 15,
        };
        history.prune(5, &options);
        assert_eq!(
            versions(&history.chain(&map.get(b"a").unwrap(), usize::MAX)),
            [(5, 5), (4, 4)]
        );
    }
}
