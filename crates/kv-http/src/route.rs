//! Which endpoint a request is for, decided from its path alone; the method is checked by
//! the caller against [`Route::allowed_methods`].

use http::Method;

/// An endpoint of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/key/{key}`, with the key still percent-encoded.
    Key(&'a str),
    /// `/key/{key}/history`: the key's versions with their values.
    KeyHistory(&'a str),
    /// `/key/{key}/versions`: the key's version numbers.
    KeyVersions(&'a str),
    /// `/txn`: a transaction (POST).
    Txn,
    /// `/request_status`: whether an idempotent request was applied, and its answer.
    RequestStatus,
    /// `/deduplication_stats`
    DeduplicationStats,
    /// `/keys`
    Keys,
    /// `/segments`
    Segments,
    /// `/health`
    Health,
    /// `/metrics`
    Metrics,
    /// `/replication/fetch`: followers pull here (POST, binary); GET is a JSON debugging view.
    ReplicationFetch,
    /// `/cluster_status`
    ClusterStatus,
    /// `/replication/snapshot`: which snapshot the node offers followers.
    SnapshotMeta,
    /// `/replication/snapshot/{applied_id}`: a chunk of that snapshot (`?offset=&len=`).
    SnapshotChunk(&'a str),
    /// `/admin/snapshot`: write a snapshot and compact the log now (POST).
    AdminSnapshot,
    /// `/compaction/status`
    CompactionStatus,
    /// `/compaction/run`: snapshot and compact now (POST; the original's v1.6).
    CompactionRun,
    /// `/compaction/configure?enabled=&interval=`: automatic compaction's switches (POST).
    CompactionConfigure,
    /// `/controller/raft`: Raft messages between controllers (POST, JSON).
    ControllerRaft,
    /// `/controller/heartbeat`: a data node's heartbeat to the active controller (POST).
    ControllerHeartbeat,
    /// `/controller/propose`: a command for the active controller (POST).
    ControllerPropose,
    /// `/controller/join`: a new node asks to join (POST).
    ControllerJoin,
    /// `/admin/transfer-leader`: move the data leadership (POST).
    AdminTransferLeader,
    /// `/admin/members/{id}`: remove a node (DELETE).
    AdminMember(&'a str),
    /// `/replication/stream`: a follower's replication stream (GET with `Upgrade`).
    ReplicationStream,
    /// `/controller/campaign`: a stopping Raft leader asks this member to stand (POST).
    ControllerCampaign,
}

/// Route names used as metric labels (and their index in metric arrays).
pub const ROUTE_LABELS: [&str; 27] = [
    "/key/{key}",
    "/key/{key}/history",
    "/key/{key}/versions",
    "/txn",
    "/request_status",
    "/deduplication_stats",
    "/keys",
    "/segments",
    "/health",
    "/metrics",
    "/replication/fetch",
    "/cluster_status",
    "/replication/snapshot",
    "/replication/snapshot/{id}",
    "/admin/snapshot",
    "/compaction/status",
    "/compaction/run",
    "/compaction/configure",
    "/controller/raft",
    "/controller/heartbeat",
    "/controller/propose",
    "/controller/join",
    "/admin/transfer-leader",
    "/admin/members/{id}",
    "/replication/stream",
    "/controller/campaign",
    "unknown",
];
/// Index of the label for paths that match no route.
pub const ROUTE_LABEL_UNKNOWN: usize = ROUTE_LABELS.len() - 1;

impl<'a> Route<'a> {
    /// The route for `path`, if any. `/key/a/b` is no route: a key is one path segment
    /// (a `/` inside a key is sent as `%2F`).
    pub fn from_path(path: &'a str) -> Option<Route<'a>> {
        if let Some(rest) = path.strip_prefix("/key/") {
            return match rest.split_once('/') {
                None => Some(Route::Key(rest)),
                Some((encoded_key, "history")) => Some(Route::KeyHistory(encoded_key)),
                Some((encoded_key, "versions")) => Some(Route::KeyVersions(encoded_key)),
                Some(_) => None,
            };
        }
        if let Some(applied_id) = path.strip_prefix("/replication/snapshot/") {
            return (!applied_id.contains('/')).then_some(Route::SnapshotChunk(applied_id));
        }
        if let Some(id) = path.strip_prefix("/admin/members/") {
            return (!id.contains('/')).then_some(Route::AdminMember(id));
        }
        match path {
            "/keys" => Some(Route::Keys),
            "/segments" => Some(Route::Segments),
            "/health" => Some(Route::Health),
            "/metrics" => Some(Route::Metrics),
            "/replication/fetch" => Some(Route::ReplicationFetch),
            "/replication/stream" => Some(Route::ReplicationStream),
            "/cluster_status" => Some(Route::ClusterStatus),
            "/replication/snapshot" => Some(Route::SnapshotMeta),
            "/admin/snapshot" => Some(Route::AdminSnapshot),
            "/compaction/status" => Some(Route::CompactionStatus),
            "/compaction/run" => Some(Route::CompactionRun),
            "/compaction/configure" => Some(Route::CompactionConfigure),
            "/txn" => Some(Route::Txn),
            "/request_status" => Some(Route::RequestStatus),
            "/deduplication_stats" => Some(Route::DeduplicationStats),
            "/controller/raft" => Some(Route::ControllerRaft),
            "/controller/heartbeat" => Some(Route::ControllerHeartbeat),
            "/controller/propose" => Some(Route::ControllerPropose),
            "/controller/join" => Some(Route::ControllerJoin),
            "/controller/campaign" => Some(Route::ControllerCampaign),
            "/admin/transfer-leader" => Some(Route::AdminTransferLeader),
            _ => None,
        }
    }

    /// The methods the route answers, in `Allow` header form.
    pub fn allowed_methods(&self) -> &'static str {
        match self {
            Route::Key(_) => "GET, HEAD, PUT, DELETE",
            Route::ReplicationFetch => "GET, HEAD, POST",
            Route::AdminSnapshot
            | Route::Txn
            | Route::CompactionRun
            | Route::CompactionConfigure
            | Route::ControllerRaft
            | Route::ControllerHeartbeat
            | Route::ControllerPropose
            | Route::ControllerJoin
            | Route::ControllerCampaign
            | Route::AdminTransferLeader => "POST",
            Route::AdminMember(_) => "DELETE",
            _ => "GET, HEAD",
        }
    }

    /// Whether `method` is one of [`Route::allowed_methods`] (read from that list, so the two
    /// cannot disagree).
    pub fn allows(&self, method: &Method) -> bool {
        self.allowed_methods()
            .split(", ")
            .any(|allowed| allowed == method.as_str())
    }

    /// Index of the route's metric label (in `ROUTE_LABELS`, the `route` label of metrics).
    pub fn label_index(&self) -> usize {
        match self {
            Route::Key(_) => 0,
            Route::KeyHistory(_) => 1,
            Route::KeyVersions(_) => 2,
            Route::Txn => 3,
            Route::RequestStatus => 4,
            Route::DeduplicationStats => 5,
            Route::Keys => 6,
            Route::Segments => 7,
            Route::Health => 8,
            Route::Metrics => 9,
            Route::ReplicationFetch => 10,
            Route::ClusterStatus => 11,
            Route::SnapshotMeta => 12,
            Route::SnapshotChunk(_) => 13,
            Route::AdminSnapshot => 14,
            Route::CompactionStatus => 15,
            Route::CompactionRun => 16,
            Route::CompactionConfigure => 17,
            Route::ControllerRaft => 18,
            Route::ControllerHeartbeat => 19,
            Route::ControllerPropose => 20,
            Route::ControllerJoin => 21,
            Route::AdminTransferLeader => 22,
            Route::AdminMember(_) => 23,
            Route::ReplicationStream => 24,
            Route::ControllerCampaign => 25,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes() {
        assert_eq!(Route::from_path("/key/key6"), Some(Route::Key("key6")));
        assert_eq!(Route::from_path("/key/a%2Fb"), Some(Route::Key("a%2Fb")));
        assert_eq!(Route::from_path("/key/"), Some(Route::Key("")));
        assert_eq!(Route::from_path("/key/a/b"), None);
        assert_eq!(
            Route::from_path("/key/a%2Fb/history"),
            Some(Route::KeyHistory("a%2Fb"))
        );
        assert_eq!(
            Route::from_path("/key/k/versions"),
            Some(Route::KeyVersions("k"))
        );
        assert_eq!(Route::from_path("/key/k/versions/"), None);
        assert_eq!(Route::from_path("/txn"), Some(Route::Txn));
        assert_eq!(Route::from_path("/key"), None);
        assert_eq!(Route::from_path("/keys"), Some(Route::Keys));
        assert_eq!(Route::from_path("/segments"), Some(Route::Segments));
        assert_eq!(Route::from_path("/health"), Some(Route::Health));
        assert_eq!(Route::from_path("/metrics"), Some(Route::Metrics));
        assert_eq!(Route::from_path("/"), None);
        assert_eq!(Route::from_path("/segments/"), None);
        assert_eq!(
            Route::from_path("/admin/members/2"),
            Some(Route::AdminMember("2"))
        );
        assert_eq!(Route::from_path("/admin/members/2/x"), None);
        assert_eq!(
            Route::from_path("/controller/join"),
            Some(Route::ControllerJoin)
        );
    }

    #[test]
    fn labels_line_up_with_routes() {
        for (route, label) in [
            (Route::Key("k"), "/key/{key}"),
            (Route::KeyHistory("k"), "/key/{key}/history"),
            (Route::KeyVersions("k"), "/key/{key}/versions"),
            (Route::Txn, "/txn"),
            (Route::RequestStatus, "/request_status"),
            (Route::DeduplicationStats, "/deduplication_stats"),
            (Route::Keys, "/keys"),
            (Route::Segments, "/segments"),
            (Route::Health, "/health"),
            (Route::Metrics, "/metrics"),
            (Route::ReplicationFetch, "/replication/fetch"),
            (Route::ClusterStatus, "/cluster_status"),
            (Route::SnapshotMeta, "/replication/snapshot"),
            (Route::SnapshotChunk("1"), "/replication/snapshot/{id}"),
            (Route::AdminSnapshot, "/admin/snapshot"),
            (Route::CompactionStatus, "/compaction/status"),
            (Route::CompactionRun, "/compaction/run"),
            (Route::CompactionConfigure, "/compaction/configure"),
            (Route::ControllerRaft, "/controller/raft"),
            (Route::ControllerHeartbeat, "/controller/heartbeat"),
            (Route::ControllerPropose, "/controller/propose"),
            (Route::ControllerJoin, "/controller/join"),
            (Route::AdminTransferLeader, "/admin/transfer-leader"),
            (Route::AdminMember("3"), "/admin/members/{id}"),
            (Route::ReplicationStream, "/replication/stream"),
            (Route::ControllerCampaign, "/controller/campaign"),
        ] {
            assert_eq!(ROUTE_LABELS[route.label_index()], label);
        }
        assert_eq!(ROUTE_LABELS[ROUTE_LABEL_UNKNOWN], "unknown");
    }
}
