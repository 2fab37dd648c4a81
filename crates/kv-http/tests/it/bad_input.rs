//! Bad input: a clear 4xx with a JSON detail, and nothing written.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use kv_http::{HttpOptions, NodeRole};

use crate::support::{call, call_with, footprint, get, node, node_with, put};

async fn assert_rejected(
    node: &crate::support::Node,
    method: Method,
    uri: &str,
    body: &str,
    status: StatusCode,
    detail_part: &str,
) {
    let before = footprint(node);
    let answer = call(node, method.clone(), uri, body).await;
    assert_eq!(answer.status, status, "{method} {uri} {body:.40}");
    assert_eq!(answer.header("content-type"), "application/json");
    let detail = answer.detail();
    assert!(
        detail.contains(detail_part),
        "{detail:?} should mention {detail_part:?}"
    );
    assert_eq!(footprint(node), before, "{method} {uri}: nothing written");
}

#[tokio::test]
async fn malformed_json_and_trailing_garbage_are_400() {
    let node = node();
    for body in [
        "{",
        "not json",
        r#"{"value": 1} trailing"#,
        r#"{"value": 1}{}"#,
        "",
    ] {
        assert_rejected(
            &node,
            Method::PUT,
            "/key/k",
            body,
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        )
        .await;
    }
}

#[tokio::test]
async fn a_missing_value_is_422() {
    let node = node();
    for body in ["{}", r#"{"valeu": 1}"#, "[1]", r#""value""#, "1"] {
        assert_rejected(
            &node,
            Method::PUT,
            "/key/k",
            body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "\"value\"",
        )
        .await;
    }
}

#[tokio::test]
async fn deep_nesting_is_400_without_overflowing_the_stack() {
    let node = node();
    let depth = 1_000_000;
    let body = format!(r#"{{"value": {}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    assert_rejected(
        &node,
        Method::PUT,
        "/key/k",
        &body,
        StatusCode::BAD_REQUEST,
        "nests too deeply",
    )
    .await;
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_before_reading() {
    let node = node_with(
        HttpOptions {
            body_bytes_max: 64,
            ..HttpOptions::default()
        },
        NodeRole::Leader,
    );
    // The declared length alone decides: the body sent here is small.
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/key/k")
        .header("content-length", "65")
        .body(Full::new(Bytes::from_static(br#"{"value": 1}"#)))
        .expect("request");
    let before = footprint(&node);
    let answer = call_with(&node, request).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.detail().contains("64 bytes"));
    assert_eq!(footprint(&node), before);
}

#[tokio::test]
async fn an_undeclared_body_over_the_limit_is_413() {
    let node = node_with(
        HttpOptions {
            body_bytes_max: 64,
            ..HttpOptions::default()
        },
        NodeRole::Leader,
    );
    let body = ChunkedBody { chunks_left: 10 };
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/key/k")
        .body(body)
        .expect("request");
    let response = kv_http::handle(&node.state, request).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(footprint(&node), (1, 0));
    // The default limit is 16 MiB.
    assert_eq!(HttpOptions::default().body_bytes_max, 16 << 20);
}

/// A body of 10-byte chunks with no declared length (like `Transfer-Encoding: chunked`).
struct ChunkedBody {
    chunks_left: usize,
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.chunks_left == 0 {
            return Poll::Ready(None);
        }
        self.chunks_left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[b' '; 10])))))
    }
}

/// A body whose client never sends a byte.
struct SilentBody;

impl Body for SilentBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_not_sent_in_time_is_408() {
    let node = node_with(
        HttpOptions {
            body_read_timeout: Duration::from_secs(5),
            ..HttpOptions::default()
        },
        NodeRole::Leader,
    );
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/key/k")
        .body(SilentBody)
        .expect("request");
    let response = kv_http::handle(&node.state, request).await;
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("5000 ms"));
    assert_eq!(footprint(&node), (1, 0));
}

#[tokio::test]
async fn a_key_over_the_limit_is_414() {
    let node = node();
    let limit = HttpOptions::default().key_bytes_max;
    assert_eq!(limit, 4096);
    let at_limit = "k".repeat(limit);
    assert_eq!(
        put(&node, &format!("/key/{at_limit}"), r#"{"value": 1}"#)
            .await
            .status,
        StatusCode::OK
    );
    let over = "k".repeat(limit + 1);
    assert_rejected(
        &node,
        Method::PUT,
        &format!("/key/{over}"),
        r#"{"value": 1}"#,
        StatusCode::URI_TOO_LONG,
        "4096",
    )
    .await;
    assert_rejected(
        &node,
        Method::GET,
        &format!("/key/{over}"),
        "",
        StatusCode::URI_TOO_LONG,
        "4097",
    )
    .await;
    // Escapes count once decoded: 4097 bytes written as %6B each.
    let escaped = "%6B".repeat(limit + 1);
    assert_rejected(
        &node,
        Method::DELETE,
        &format!("/key/{escaped}"),
        "",
        StatusCode::URI_TOO_LONG,
        "limit",
    )
    .await;
    // Rejected before decoding: the size it gives is a bound (it said "key of 19114 bytes"
    // for these 57,344 before, a third of the encoded length as if it were the key's).
    let huge = "k".repeat(14 * limit);
    assert_rejected(
        &node,
        Method::GET,
        &format!("/key/{huge}"),
        "",
        StatusCode::URI_TOO_LONG,
        "key of at least 19115 bytes exceeds the limit of 4096 bytes",
    )
    .await;
}

#[tokio::test]
async fn bad_keys_are_400() {
    let node = node();
    for (uri, detail) in [
        ("/key/%FF", "UTF-8"),
        ("/key/%zz", "percent-escape"),
        ("/key/abc%", "percent-escape"),
        ("/key/", "empty"),
    ] {
        assert_rejected(
            &node,
            Method::PUT,
            uri,
            r#"{"value": 1}"#,
            StatusCode::BAD_REQUEST,
            detail,
        )
        .await;
    }
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let node = node();
    for uri in [
        "/",
        "/key",
        "/key/a/b",
        "/keys/",
        "/segment",
        "/kv/x",
        "/metrics/x",
    ] {
        assert_rejected(
            &node,
            Method::GET,
            uri,
            "",
            StatusCode::NOT_FOUND,
            "Not Found",
        )
        .await;
    }
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let node = node();
    for (method, uri, allow) in [
        (Method::POST, "/key/k", "GET, HEAD, PUT, DELETE"),
        (Method::PATCH, "/key/k", "GET, HEAD, PUT, DELETE"),
        (Method::PUT, "/segments", "GET, HEAD"),
        (Method::DELETE, "/keys", "GET, HEAD"),
        (Method::POST, "/health", "GET, HEAD"),
        (Method::PUT, "/metrics", "GET, HEAD"),
    ] {
        let answer = call(&node, method.clone(), uri, "").await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        assert_eq!(answer.header("allow"), allow);
        assert_eq!(answer.detail(), "Method Not Allowed");
    }
    assert_eq!(footprint(&node), (1, 0));
}

#[tokio::test]
async fn bad_queries_are_400() {
    let node = node();
    for uri in [
        "/keys?limit=abc",
        "/keys?limit=-1",
        "/keys?limit=10001",
        "/keys?prefix=%zz",
    ] {
        assert_rejected(
            &node,
            Method::GET,
            uri,
            "",
            StatusCode::BAD_REQUEST,
            "invalid query",
        )
        .await;
    }
    assert_eq!(get(&node, "/keys?limit=10000").await.status, StatusCode::OK);
}

/// The fetch view's `cluster_id` is 1 to 16 hex digits, as `/cluster_status` shows it: anything
/// else is a bad query (`zz` was taken as "no cluster id" and answered with entries before).
#[tokio::test]
async fn a_fetch_view_with_a_cluster_id_that_is_no_id_is_400() {
    let node = node();
    put(&node, "/key/k", r#"{"value": 1}"#).await;
    for bad in ["zz", "", "00000000000000001", "-1"] {
        assert_rejected(
            &node,
            Method::GET,
            &format!("/replication/fetch?cluster_id={bad}&next_id=1"),
            "",
            StatusCode::BAD_REQUEST,
            "is not a cluster id",
        )
        .await;
    }
    let view = get(&node, "/replication/fetch?next_id=1").await;
    assert_eq!(view.status, StatusCode::OK, "{:?}", view.body);
}

/// A path segment that names something and is malformed is an invalid path, not a query
/// (it said "invalid query: snapshot id \"abc\" is not a number").
#[tokio::test]
async fn a_malformed_id_in_a_path_is_an_invalid_path() {
    let node = node();
    assert_rejected(
        &node,
        Method::GET,
        "/replication/snapshot/abc",
        "",
        StatusCode::BAD_REQUEST,
        "invalid path: snapshot id \"abc\" is not a number",
    )
    .await;
}
