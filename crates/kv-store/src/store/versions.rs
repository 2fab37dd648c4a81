//! Reading a key's older versions through the store: `?version=`, `/history` and `/versions`
//! follow the history links (history.rs) to the log records that hold the values.

use super::*;
use crate::history::{KeyHistory, VersionChain, VersionRead};
use crate::map::Locator;
use crate::txn::TxnOp;
use crate::value::Value;

impl Store {
    /// The value `key` had at `version` (counted since the key was last created).
    pub fn get_version(&self, key: &[u8], version: u64) -> Result<VersionRead> {
        let Some((current, chain)) = self.version_chain(key, usize::MAX) else {
            return Ok(VersionRead::KeyNotFound);
        };
        let latest = current.version();
        if version == 0 || version > latest {
            return Ok(VersionRead::NoSuchVersion { latest });
        }
        let oldest_available = chain.versions.last().map_or(latest, |at| at.version);
        let compacted = VersionRead::Compacted {
            oldest_available,
            latest,
        };
        let Some(at) = chain.versions.iter().find(|at| at.version == version) else {
            return Ok(compacted);
        };
        Ok(match self.value_at(&current, key, at.locator)? {
            Some(value) => VersionRead::Found {
                version,
                mod_revision: at.mod_revision,
                value,
            },
            None => compacted,
        })
    }

    /// Up to `limit` of `key`'s versions, newest first, with their values read back when
    /// `with_values`; `None` when the key is absent.
    pub fn key_history(
        &self,
        key: &[u8],
        limit: usize,
        with_values: bool,
    ) -> Result<Option<KeyHistory>> {
        let Some((current, chain)) = self.version_chain(key, limit) else {
            return Ok(None);
        };
        let mut versions = Vec::with_capacity(chain.versions.len());
        for at in &chain.versions {
            let value = if with_values {
                match self.value_at(&current, key, at.locator)? {
                    Some(value) => Some(value),
                    None => {
                        return Ok(Some(KeyHistory {
                            latest: current.meta(),
                            versions,
                            compacted: true,
                        }))
                    }
                }
            } else {
                None
            };
            versions.push((at.version, at.mod_revision, value));
        }
        Ok(Some(KeyHistory {
            latest: current.meta(),
            versions,
            compacted: chain.compacted,
        }))
    }

    /// The key's cell and the versions history reaches whose records the log still holds.
    fn version_chain(&self, key: &[u8], limit: usize) -> Option<(KeyValue, VersionChain)> {
        let (current, mut chain) = {
            let state = self.applied_state();
            let current = state.keys.get(key)?;
            let chain = state.history.chain(&current, limit);
            (current, chain)
        };
        let log_start = self
            .wal()
            .first_id()
            .unwrap_or_else(|| self.wal().start_id());
        let current_revision = current.mod_revision();
        if let Some(cut) = chain
            .versions
            .iter()
            .position(|at| at.mod_revision != current_revision && at.mod_revision < log_start)
        {
            chain.versions.truncate(cut);
            chain.compacted = true;
        }
        Some((current, chain))
    }

    /// The value written at `locator` for `key`: the current cell's, or read back from the log
    /// (`None` when the log no longer holds the record).
    fn value_at(&self, current: &KeyValue, key: &[u8], locator: Locator) -> Result<Option<Value>> {
        if locator == current.locator() {
            return Ok(Some(current.to_value()));
        }
        let Some(payload) = self.wal().read(locator.revision)? else {
            return Ok(None);
        };
        let entry = LogEntry::decode(&payload).map_err(|reason| crate::Error::Decode {
            id: locator.revision,
            reason,
        })?;
        let value = match entry.op {
            Op::Set {
                key: written,
                value,
            } if written == key && locator.op_index == 0 => value,
            Op::Txn(txn) => match txn.op_at(locator.op_index) {
                Some(TxnOp::Put {
                    key: written,
                    value,
                }) if written == key => value.clone(),
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some(value))
    }
}
