//! The request handler: routing, the method check, metrics, and the single point where an
//! error becomes a response. Callable without a socket: tests hand it requests directly.

use std::error::Error as StdError;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;

use crate::cluster::{self, ControllerEndpoint};
use crate::compaction;
use crate::error::{error_response, Error, Result};
use crate::handlers;
use crate::history;
use crate::idempotency;
use crate::replication;
use crate::route::{Route, ROUTE_LABEL_UNKNOWN};
use crate::state::AppState;
use crate::stream;
use crate::txn;

/// Answers one request. Never fails: every error is answered with its status and a JSON
/// `{"detail": …}` body.
pub async fn handle<B>(state: &AppState, request: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let started = Instant::now();
    let method = request.method().clone();
    let route_label_index = Route::from_path(request.uri().path())
        .map_or(ROUTE_LABEL_UNKNOWN, |route| route.label_index());
    let response = match dispatch(state, request).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    };
    state.metrics.record_request(
        route_label_index,
        &method,
        response.status(),
        started.elapsed(),
    );
    response
}

/// Moves the data leadership off this node as `POST /admin/transfer-leader` without a body
/// does (to the live ISR member holding the most), through the same handler, so it is
/// forwarded to the active controller like any such request: the answer's status and body.
/// kvd calls it when a leader stops.
pub async fn transfer_leadership_away(state: &AppState) -> (StatusCode, String) {
    use http_body_util::BodyExt as _;
    let request = http::Request::post("/admin/transfer-leader")
        .body(Full::new(Bytes::new()))
        .expect("a valid request");
    let response = handle(state, request).await;
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn dispatch<B>(state: &AppState, request: Request<B>) -> Result<Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (mut parts, body) = request.into_parts();
    let route = Route::from_path(parts.uri.path()).ok_or(Error::RouteNotFound)?;
    if !route.allows(&parts.method) {
        return Err(Error::MethodNotAllowed {
            allow: route.allowed_methods(),
        });
    }
    // HEAD is GET without the body (RFC 9110, 9.3.2): the handlers answer it as a GET and
    // hyper sends the head alone, its Content-Length included.
    if parts.method == Method::HEAD {
        parts.method = Method::GET;
    }
    match route {
        Route::Key(encoded_key) => {
            let key = handlers::decode_key(encoded_key, state.options.key_bytes_max)?;
            match parts.method {
                Method::GET => handlers::get_key(state, &key, &parts).await,
                Method::PUT => handlers::put_key(state, key, &parts, body).await,
                _ => handlers::delete_key(state, key, &parts).await,
            }
        }
        Route::KeyHistory(encoded_key) | Route::KeyVersions(encoded_key) => {
            let key = handlers::decode_key(encoded_key, state.options.key_bytes_max)?;
            crate::gate::check_read(state, &parts).await?;
            let query = parts.uri.query().unwrap_or_default();
            match route {
                Route::KeyHistory(_) => history::key_history(state, &key, query),
                _ => history::key_versions(state, &key, query),
            }
        }
        Route::Txn => txn::txn(state, &parts, body).await,
        Route::RequestStatus => {
            idempotency::request_status(state, parts.uri.query().unwrap_or_default()).await
        }
        Route::DeduplicationStats => Ok(idempotency::deduplication_stats(state)),
        Route::Keys => {
            crate::gate::check_read(state, &parts).await?;
            handlers::list_keys(state, parts.uri.query().unwrap_or_default())
        }
        Route::Segments => Ok(handlers::segments(state)),
        Route::Health => Ok(handlers::health(state)),
        Route::Metrics => Ok(handlers::metrics(state)),
        Route::ReplicationFetch => match parts.method {
            Method::POST => replication::fetch(state, &parts, body).await,
            _ => replication::fetch_view(state, parts.uri.query().unwrap_or_default()).await,
        },
        Route::ReplicationStream => stream::accept(&state.node, &mut parts),
        Route::ClusterStatus => Ok(cluster::cluster_status(state)),
        Route::SnapshotMeta => replication::snapshot_meta(state),
        Route::SnapshotChunk(applied_id) => {
            replication::snapshot_chunk(state, applied_id, parts.uri.query().unwrap_or_default())
        }
        Route::AdminSnapshot => replication::admin_snapshot(state).await,
        Route::CompactionStatus => Ok(compaction::status(state)),
        Route::CompactionRun => compaction::run(state, parts.uri.query().unwrap_or_default()).await,
        Route::CompactionConfigure => {
            compaction::configure(state, parts.uri.query().unwrap_or_default())
        }
        Route::ControllerRaft => {
            cluster::controller_endpoint(state, &parts, body, ControllerEndpoint::Raft).await
        }
        Route::ControllerHeartbeat => {
            cluster::controller_endpoint(state, &parts, body, ControllerEndpoint::Heartbeat).await
        }
        Route::ControllerPropose => {
            cluster::controller_endpoint(state, &parts, body, ControllerEndpoint::Propose).await
        }
        Route::ControllerJoin => {
            cluster::controller_endpoint(state, &parts, body, ControllerEndpoint::Join).await
        }
        Route::ControllerCampaign => {
            cluster::controller_endpoint(state, &parts, body, ControllerEndpoint::Campaign).await
        }
        Route::AdminTransferLeader => cluster::admin_transfer_leader(state, &parts, body).await,
        Route::AdminMember(id) => cluster::admin_remove_member(state, &parts, id).await,
    }
}
