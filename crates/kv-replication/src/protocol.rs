//! The fetch protocol: what a follower asks and what the leader answers, and their binary
//! encoding (little-endian, length-prefixed, versioned; every decode is bounds-checked, so no
//! message can panic the reader or make it allocate more than the message holds).
//!
//! ```text
//! request  = "KVRQ" version:u8 cluster_id:u64 node_id:u64 leader_epoch:u64 next_id:u64
//!            last_epoch:u64 durable_id:u64 commit_id:u64 bytes_max:u32 wait_ms:u32
//! response = "KVRS" version:u8 kind:u8 body
//!   kind 1 entries:        cluster_id:u64 leader_epoch:u64 commit_id:u64 first_id:u64
//!                          last_id:u64 frames_len:u32 frames (kv-wal frames, as stored)
//!   kind 2 diverged:       cluster_id:u64 leader_epoch:u64 truncate_after:u64
//!   kind 3 snapshot needed: cluster_id:u64 leader_epoch:u64 first_id:u64
//!   kind 4 not the leader: leader_epoch:u64 has_url:u8 url_len:u16 url:utf8
//!   kind 5 other cluster:  leader_cluster_id:u64 leader_epoch:u64
//! ```
//!
//! Version 2 (issue 13) added the follower's node id and known leader epoch to the request
//! and the sender's epoch to every answer; a node refuses any other version with an error
//! that names both (mixed versions do not replicate).

use serde::Serialize;

/// Protocol version carried by every message.
pub const PROTOCOL_VERSION: u8 = 2;
/// Bytes of an encoded request.
pub const REQUEST_BYTES: usize = 4 + 1 + 7 * 8 + 4 + 4;
/// Longest leader URL a "not the leader" answer carries.
pub const LEADER_URL_BYTES_MAX: usize = 2048;
/// Largest batch of frames a follower may ask for (64 MiB): the leader cuts a batch there.
pub const FRAMES_BYTES_MAX: u32 = 64 << 20;
/// Most frame bytes a response may carry: a batch of at most [`FRAMES_BYTES_MAX`], or the one
/// frame a batch always holds when that frame alone is larger (a log record may be up to
/// kv-wal's [`kv_wal::RECORD_BYTES_MAX`]). A follower refusing such a frame would never get
/// past it.
pub const RESPONSE_FRAMES_BYTES_MAX: u32 =
    (kv_wal::RECORD_BYTES_MAX + kv_wal::FRAME_HEADER_BYTES) as u32;
const _: () = assert!(RESPONSE_FRAMES_BYTES_MAX >= FRAMES_BYTES_MAX);
const _: () = assert!(
    (RESPONSE_FRAMES_BYTES_MAX as usize) == kv_wal::RECORD_BYTES_MAX + kv_wal::FRAME_HEADER_BYTES
);
const REQUEST_MAGIC: &[u8; 4] = b"KVRQ";
const RESPONSE_MAGIC: &[u8; 4] = b"KVRS";

/// A follower's fetch: who it is, the newest leader epoch it knows, where its log is, what it
/// holds durably (the acknowledgement), how much it wants and how long the leader may hold the
/// request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchRequest {
    /// The cluster the follower belongs to (0: none yet — a new, empty follower).
    pub cluster_id: u64,
    /// The follower's node id (the controller's: `kvd leader` is 0, `follower-N` is N).
    pub node_id: u64,
    /// The highest leader epoch the follower knows: a leader of a lower epoch that hears it
    /// stops acknowledging at once (it was replaced).
    pub leader_epoch: u64,
    /// The first id it wants (its last id + 1).
    pub next_id: u64,
    /// The epoch of its entry `next_id - 1` (0 when it has none).
    pub last_epoch: u64,
    /// The highest id it holds durably.
    pub durable_id: u64,
    /// The commit id it knows: the leader answers at once when its own is newer.
    pub commit_id: u64,
    /// Most frame bytes it wants in one response.
    pub bytes_max: u32,
    /// How long the leader may hold the request when it has nothing new.
    pub wait_ms: u32,
}

/// The leader's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResponse {
    /// Entries from `next_id` (possibly none: the wait ended first, a heartbeat).
    Entries {
        /// The leader's cluster id (a new follower adopts it).
        cluster_id: u64,
        /// The leader's epoch.
        leader_epoch: u64,
        /// The highest id a write quorum holds durably: followers apply up to it.
        commit_id: u64,
        /// The first id the leader still has.
        first_id: u64,
        /// The leader's last id.
        last_id: u64,
        /// Frames exactly as the leader's WAL stores them, CRCs included.
        frames: Vec<u8>,
    },
    /// The follower's log parts from the leader's: keep ids up to `truncate_after`, drop the
    /// rest, fetch again.
    Diverged {
        /// The leader's cluster id.
        cluster_id: u64,
        /// The leader's epoch.
        leader_epoch: u64,
        /// The last id the follower may keep.
        truncate_after: u64,
    },
    /// The entries the follower needs were compacted away: it must install a snapshot.
    SnapshotNeeded {
        /// The leader's cluster id.
        cluster_id: u64,
        /// The leader's epoch.
        leader_epoch: u64,
        /// The first id the leader still has.
        first_id: u64,
    },
    /// This node does not lead; `leader_url` is who does, if known.
    NotLeader {
        /// The highest leader epoch this node knows.
        leader_epoch: u64,
        /// The leader's base URL.
        leader_url: Option<String>,
    },
    /// The follower belongs to another cluster (or holds data and no cluster id).
    ClusterMismatch {
        /// This leader's cluster id.
        leader_cluster_id: u64,
        /// This leader's epoch.
        leader_epoch: u64,
    },
}

impl FetchResponse {
    /// The epoch the answering node leads (or, for "not the leader", the highest it knows).
    pub fn leader_epoch(&self) -> u64 {
        match self {
            FetchResponse::Entries { leader_epoch, .. }
            | FetchResponse::Diverged { leader_epoch, .. }
            | FetchResponse::SnapshotNeeded { leader_epoch, .. }
            | FetchResponse::NotLeader { leader_epoch, .. }
            | FetchResponse::ClusterMismatch { leader_epoch, .. } => *leader_epoch,
        }
    }
}

/// The snapshot a leader offers to followers behind its compacted log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SnapshotMeta {
    /// The applied id the snapshot holds the map at.
    pub applied_id: u64,
    /// The file's size.
    pub size_bytes: u64,
    /// The epoch the offering node leads (0: it does not lead). A follower installs a
    /// snapshot only from the leader of the epoch that told it to.
    #[serde(default)]
    pub leader_epoch: u64,
}

/// Why bytes are not a protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed replication message: {0}")]
pub struct DecodeError(pub String);

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < count {
            return Err(DecodeError(format!(
                "{what}: {count} bytes needed, {} left",
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self, max: usize, what: &str) -> Result<String, DecodeError> {
        let len = self.u16(what)? as usize;
        if len > max {
            return Err(DecodeError(format!(
                "{what}: {len} bytes, at most {max} allowed"
            )));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError(format!("{what}: not UTF-8")))
    }
    fn header(&mut self, magic: &[u8; 4]) -> Result<(), DecodeError> {
        if self.take(4, "magic")? != magic {
            return Err(DecodeError("bad magic".to_owned()));
        }
        let version = self.u8("version")?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError(format!(
                "replication protocol version {version}, but this node speaks version \
                 {PROTOCOL_VERSION}: nodes of different versions do not replicate (upgrade every \
                 node)"
            )));
        }
        Ok(())
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!("{} trailing bytes", self.bytes.len())))
        }
    }
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl FetchRequest {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REQUEST_BYTES);
        out.extend_from_slice(REQUEST_MAGIC);
        out.push(PROTOCOL_VERSION);
        for word in [
            self.cluster_id,
            self.node_id,
            self.leader_epoch,
            self.next_id,
            self.last_epoch,
            self.durable_id,
            self.commit_id,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&self.bytes_max.to_le_bytes());
        out.extend_from_slice(&self.wait_ms.to_le_bytes());
        out
    }

    /// Decodes and validates a request.
    pub fn decode(bytes: &[u8]) -> Result<FetchRequest, DecodeError> {
        let mut reader = Reader { bytes };
        reader.header(REQUEST_MAGIC)?;
        let request = FetchRequest {
            cluster_id: reader.u64("cluster id")?,
            node_id: reader.u64("node id")?,
            leader_epoch: reader.u64("leader epoch")?,
            next_id: reader.u64("next id")?,
            last_epoch: reader.u64("last epoch")?,
            durable_id: reader.u64("durable id")?,
            commit_id: reader.u64("commit id")?,
            bytes_max: reader.u32("bytes max")?,
            wait_ms: reader.u32("wait ms")?,
        };
        reader.finish()?;
        request.validate()?;
        Ok(request)
    }

    /// Checks the fields make sense together.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.next_id == 0 {
            return Err(DecodeError("next id must be at least 1".to_owned()));
        }
        if self.durable_id >= self.next_id {
            return Err(DecodeError(format!(
                "durable id {} is not below next id {}",
                self.durable_id, self.next_id
            )));
        }
        if self.next_id == 1 && self.last_epoch != 0 {
            return Err(DecodeError("an empty log has no last epoch".to_owned()));
        }
        Ok(())
    }
}

const KIND_ENTRIES: u8 = 1;
const KIND_DIVERGED: u8 = 2;
const KIND_SNAPSHOT_NEEDED: u8 = 3;
const KIND_NOT_LEADER: u8 = 4;
const KIND_CLUSTER_MISMATCH: u8 = 5;

impl FetchResponse {
    /// Encodes the response.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(RESPONSE_MAGIC);
        out.push(PROTOCOL_VERSION);
        let words = |out: &mut Vec<u8>, kind: u8, words: &[u64]| {
            out.push(kind);
            for word in words {
                out.extend_from_slice(&word.to_le_bytes());
            }
        };
        match self {
            FetchResponse::Entries {
                cluster_id,
                leader_epoch,
                commit_id,
                first_id,
                last_id,
                frames,
            } => {
                words(
                    &mut out,
                    KIND_ENTRIES,
                    &[*cluster_id, *leader_epoch, *commit_id, *first_id, *last_id],
                );
                out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
                out.extend_from_slice(frames);
            }
            FetchResponse::Diverged {
                cluster_id,
                leader_epoch,
                truncate_after,
            } => words(
                &mut out,
                KIND_DIVERGED,
                &[*cluster_id, *leader_epoch, *truncate_after],
            ),
            FetchResponse::SnapshotNeeded {
                cluster_id,
                leader_epoch,
                first_id,
            } => words(
                &mut out,
                KIND_SNAPSHOT_NEEDED,
                &[*cluster_id, *leader_epoch, *first_id],
            ),
            FetchResponse::NotLeader {
                leader_epoch,
                leader_url,
            } => {
                words(&mut out, KIND_NOT_LEADER, &[*leader_epoch]);
                out.push(u8::from(leader_url.is_some()));
                put_string(&mut out, leader_url.as_deref().unwrap_or(""));
            }
            FetchResponse::ClusterMismatch {
                leader_cluster_id,
                leader_epoch,
            } => words(
                &mut out,
                KIND_CLUSTER_MISMATCH,
                &[*leader_cluster_id, *leader_epoch],
            ),
        }
        out
    }

    /// Decodes a response. Frames are not checked here (the follower checks every CRC and id
    /// before appending).
    pub fn decode(bytes: &[u8]) -> Result<FetchResponse, DecodeError> {
        let mut reader = Reader { bytes };
        reader.header(RESPONSE_MAGIC)?;
        let response = match reader.u8("kind")? {
            KIND_ENTRIES => {
                let cluster_id = reader.u64("cluster id")?;
                let leader_epoch = reader.u64("leader epoch")?;
                let commit_id = reader.u64("commit id")?;
                let first_id = reader.u64("first id")?;
                let last_id = reader.u64("last id")?;
                let len = reader.u32("frames length")?;
                if len > RESPONSE_FRAMES_BYTES_MAX {
                    return Err(DecodeError(format!("{len} frame bytes exceed the limit")));
                }
                let frames = reader.take(len as usize, "frames")?.to_vec();
                FetchResponse::Entries {
                    cluster_id,
                    leader_epoch,
                    commit_id,
                    first_id,
                    last_id,
                    frames,
                }
            }
            KIND_DIVERGED => FetchResponse::Diverged {
                cluster_id: reader.u64("cluster id")?,
                leader_epoch: reader.u64("leader epoch")?,
                truncate_after: reader.u64("truncate after")?,
            },
            KIND_SNAPSHOT_NEEDED => FetchResponse::SnapshotNeeded {
                cluster_id: reader.u64("cluster id")?,
                leader_epoch: reader.u64("leader epoch")?,
                first_id: reader.u64("first id")?,
            },
            KIND_NOT_LEADER => {
                let leader_epoch = reader.u64("leader epoch")?;
                let has_url = match reader.u8("has url")? {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(DecodeError(format!("has url must be 0 or 1, not {other}")))
                    }
                };
                let url = reader.string(LEADER_URL_BYTES_MAX, "leader url")?;
                if !has_url && !url.is_empty() {
                    return Err(DecodeError("a leader url without its flag".to_owned()));
                }
                FetchResponse::NotLeader {
                    leader_epoch,
                    leader_url: has_url.then_some(url),
                }
            }
            KIND_CLUSTER_MISMATCH => FetchResponse::ClusterMismatch {
                leader_cluster_id: reader.u64("cluster id")?,
                leader_epoch: reader.u64("leader epoch")?,
            },
            other => return Err(DecodeError(format!("unknown response kind {other}"))),
        };
        reader.finish()?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> FetchRequest {
        FetchRequest {
            cluster_id: 7,
            node_id: 1,
            leader_epoch: 3,
            next_id: 11,
            last_epoch: 2,
            durable_id: 10,
            commit_id: 9,
            bytes_max: 1 << 20,
            wait_ms: 500,
        }
    }

    #[test]
    fn messages_round_trip() {
        assert_eq!(FetchRequest::decode(&request().encode()), Ok(request()));
        let responses = [
            FetchResponse::Entries {
                cluster_id: 1,
                leader_epoch: 2,
                commit_id: 3,
                first_id: 1,
                last_id: 9,
                frames: vec![1, 2, 3],
            },
            FetchResponse::Diverged {
                cluster_id: 1,
                leader_epoch: 2,
                truncate_after: 5,
            },
            FetchResponse::SnapshotNeeded {
                cluster_id: 1,
                leader_epoch: 2,
                first_id: 100,
            },
            FetchResponse::NotLeader {
                leader_epoch: 4,
                leader_url: Some("http://127.0.0.1:8000".to_owned()),
            },
            FetchResponse::NotLeader {
                leader_epoch: 0,
                leader_url: None,
            },
            FetchResponse::ClusterMismatch {
                leader_cluster_id: 9,
                leader_epoch: 2,
            },
        ];
        for response in responses {
            assert_eq!(FetchResponse::decode(&response.encode()), Ok(response));
        }
        assert_eq!(request().encode().len(), REQUEST_BYTES);
    }

    /// Version 2 changed the layout: a message of another version is refused with an error
    /// that names both versions, never misread.
    #[test]
    fn another_protocol_version_is_refused_by_name() {
        let mut old = request().encode();
        old[4] = 1;
        let error = FetchRequest::decode(&old).unwrap_err();
        assert!(
            error.0.contains("version 1") && error.0.contains("version 2"),
            "{error}"
        );
        let mut newer = FetchResponse::NotLeader {
            leader_epoch: 1,
            leader_url: None,
        }
        .encode();
        newer[4] = 3;
        assert!(FetchResponse::decode(&newer)
            .unwrap_err()
            .0
            .contains("version 3"));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_handled_without_panic() {
        let request = request().encode();
        let response = FetchResponse::Entries {
            cluster_id: 1,
            leader_epoch: 2,
            commit_id: 3,
            first_id: 1,
            last_id: 9,
            frames: vec![9; 40],
        }
        .encode();
        for bytes in [request, response] {
            for cut in 0..bytes.len() {
                assert!(FetchRequest::decode(&bytes[..cut]).is_err());
                assert!(FetchResponse::decode(&bytes[..cut]).is_err());
            }
            for bit in 0..bytes.len() * 8 {
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                let _ = FetchRequest::decode(&flipped);
                let _ = FetchResponse::decode(&flipped);
            }
        }
    }

    #[test]
    fn nonsense_requests_are_refused() {
        let mut bad = request();
        bad.durable_id = 11;
        assert!(FetchRequest::decode(&bad.encode()).is_err());
        let mut bad = request();
        bad.next_id = 0;
        assert!(FetchRequest::decode(&bad.encode()).is_err());
        let mut bad = request();
        bad.last_epoch = 1;
        bad.next_id = 1;
        bad.durable_id = 0;
        assert!(FetchRequest::decode(&bad.encode()).is_err());
        let mut huge = FetchResponse::Entries {
            cluster_id: 1,
            leader_epoch: 1,
            commit_id: 1,
            first_id: 1,
            last_id: 1,
            frames: Vec::new(),
        }
        .encode();
        let len_at = huge.len() - 4;
        huge[len_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(FetchResponse::decode(&huge).is_err());
    }
}
