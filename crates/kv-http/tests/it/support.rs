//! A store on a temp dir behind an [`AppState`], and a way to call the service directly.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use kv_http::{AppState, HttpOptions, NodeRole};
use kv_replication::NodeOptions;
use kv_store::{Store, StoreOptions};

pub struct Node {
    pub state: Arc<AppState>,
    pub _dir: tempfile::TempDir,
}

pub fn node_with(options: HttpOptions, role: NodeRole) -> Node {
    node_with_store(StoreOptions::default(), options, role)
}

pub fn node_with_store(store_options: StoreOptions, options: HttpOptions, role: NodeRole) -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _report) = Store::open(dir.path().join("wal"), store_options).expect("open store");
    let store = Arc::new(store);
    let node = match role {
        NodeRole::Leader => {
            kv_replication::Node::open_leader(store, dir.path(), NodeOptions::default())
        }
        NodeRole::Follower { leader_url } => kv_replication::Node::open_follower(
            store,
            dir.path(),
            leader_url,
            NodeOptions::default(),
        ),
        NodeRole::NoLeader => {
            kv_replication::Node::open_controlled(store, dir.path(), 1, NodeOptions::default())
        }
    }
    .expect("open node");
    let state = Arc::new(AppState::new(Arc::new(node), options));
    Node { state, _dir: dir }
}

/// A leader whose store keeps snapshots (in the node's directory).
pub fn node_with_snapshots() -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = StoreOptions {
        snapshot_dir: Some(dir.path().join("snapshots")),
        ..StoreOptions::default()
    };
    let (store, _report) = Store::open(dir.path().join("wal"), options).expect("open store");
    let node =
        kv_replication::Node::open_leader(Arc::new(store), dir.path(), NodeOptions::default())
            .expect("open node");
    let state = Arc::new(AppState::new(Arc::new(node), HttpOptions::default()));
    Node { state, _dir: dir }
}

pub fn node() -> Node {
    node_with(HttpOptions::default(), NodeRole::Leader)
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .expect("a detail string")
            .to_owned()
    }

    /// Asserts the body is a JSON object holding every member of `expected` with its value
    /// (other members allowed): how the seed's answers stay valid as fields are added.
    pub fn assert_has(&self, expected: serde_json::Value) {
        let actual = self.json();
        for (name, value) in expected.as_object().expect("an object") {
            assert_eq!(actual.get(name), Some(value), "{name} in {actual}");
        }
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .expect("ASCII header")
    }
}

pub async fn call_with(node: &Node, request: Request<Full<Bytes>>) -> Answer {
    let response = kv_http::handle(&node.state, request).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("full body")
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn call(node: &Node, method: Method, uri: &str, body: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    call_with(node, request).await
}

pub async fn get(node: &Node, uri: &str) -> Answer {
    call(node, Method::GET, uri, "").await
}

pub async fn put(node: &Node, uri: &str, body: &str) -> Answer {
    call(node, Method::PUT, uri, body).await
}

/// A request with extra headers (`content-type: application/json` unless given).
pub async fn call_with_headers(
    node: &Node,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    call_with(node, request).await
}

/// What a request may not change: the WAL's next id and the number of keys.
pub fn footprint(node: &Node) -> (u64, usize) {
    let store = &node.state.store;
    (store.log_status().next_id, store.key_count())
}
