//! The trivial server: hyper answering every request with one fixed JSON body.
//!
//! It does no work beyond HTTP parsing, so its throughput on this machine is the ceiling of
//! any HTTP/1.1 server here, kvd included: the gap between the two is what kvd's own work
//! (routing, JSON, the map, the log) costs. The bodies have the shapes of kvd's answers (a GET's
//! `{"key","value"}`, a write's `{"status":"ok","id"}`) so kv-bench's checks accept them for
//! every workload. With a value size ([`trivial_get_body`]) a GET's answer carries a value of
//! that many bytes, so the ceiling of a GET of a large value is measured with the same body.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The body of every answer to a GET (or anything but a PUT or DELETE).
pub const TRIVIAL_RESPONSE_BODY: &str = r#"{"key":"k","value":"v"}"#;
/// The body of every answer to a PUT or DELETE, shaped like kvd's write answer.
pub const TRIVIAL_WRITE_RESPONSE_BODY: &str = r#"{"status":"ok","id":0}"#;
/// The most connections one server accepts in its lifetime.
pub const ACCEPTED_CONNECTION_COUNT_MAX: u64 = 100_000_000;
/// Request bodies are read (so a PUT leaves the connection reusable) up to this size.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The answer to a GET: [`TRIVIAL_RESPONSE_BODY`], or with `value_size` the same shape with a
/// value of that many bytes (`{"key":"k","value":"vvv…"}`), as kvd answers a GET of such a value.
pub fn trivial_get_body(value_size: Option<usize>) -> Bytes {
    match value_size {
        None => Bytes::from_static(TRIVIAL_RESPONSE_BODY.as_bytes()),
        Some(value_size) => {
            let mut body = Vec::with_capacity(value_size + 32);
            body.extend_from_slice(br#"{"key":"k","value":""#);
            body.resize(body.len() + value_size, b'v');
            body.extend_from_slice(br#""}"#);
            Bytes::from(body)
        }
    }
}

/// Accepts connections on `listener` and serves them until `shutdown` completes or
/// [`ACCEPTED_CONNECTION_COUNT_MAX`] connections were accepted. Returns the accepted count.
pub async fn serve_trivial(listener: TcpListener, shutdown: impl Future<Output = ()>) -> u64 {
    serve_trivial_answering(listener, trivial_get_body(None), shutdown).await
}

/// [`serve_trivial`], answering GETs with `get_body` (see [`trivial_get_body`]).
pub async fn serve_trivial_answering(
    listener: TcpListener,
    get_body: Bytes,
    shutdown: impl Future<Output = ()>,
) -> u64 {
    tokio::pin!(shutdown);
    let mut accepted_count = 0;
    while accepted_count < ACCEPTED_CONNECTION_COUNT_MAX {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let tcp_stream = match accepted {
            Ok((tcp_stream, _peer_address)) => tcp_stream,
            Err(error) => {
                eprintln!("trivial-server: accept failed: {error}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        accepted_count += 1;
        // Best effort: without it small answers may wait for Nagle's algorithm.
        let _ = tcp_stream.set_nodelay(true);
        let get_body = get_body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer_trivially(request, get_body.clone()));
            // A client that goes away mid-request is normal at the end of a benchmark.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp_stream), service)
                .await;
        });
    }
    accepted_count
}

async fn answer_trivially(
    request: http::Request<Incoming>,
    get_body: Bytes,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let body = match *request.method() {
        http::Method::PUT | http::Method::DELETE => {
            Bytes::from_static(TRIVIAL_WRITE_RESPONSE_BODY.as_bytes())
        }
        _ => get_body,
    };
    let _ = Limited::new(request.into_body(), REQUEST_BODY_BYTES_MAX)
        .collect()
        .await;
    let response = http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a constant response is valid");
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::connection::HttpConnection;
    use crate::outcome::{classify_response, BodyCheck, Outcome};
    use crate::workload::Operation;

    #[tokio::test]
    async fn answers_get_and_put_on_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket_address: SocketAddr = listener.local_addr().unwrap();
        let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_trivial(listener, async {
            let _ = stop_receiver.await;
        }));

        let mut connection = HttpConnection::connect(socket_address, Duration::from_secs(5))
            .await
            .unwrap();
        let operations = [
            Operation::Get,
            Operation::Put,
            Operation::Delete,
            Operation::Get,
        ];
        for operation in operations {
            let request = http::Request::builder()
                .method(operation.method())
                .uri("/key/a")
                .header(http::header::HOST, socket_address.to_string())
                .body(Full::new(Bytes::from_static(b"{\"value\":\"x\"}")))
                .unwrap();
            let answer = connection.send(request).await.unwrap();
            assert_eq!(answer.status, http::StatusCode::OK);
            assert_eq!(
                classify_response(operation, answer.status, &answer.body, BodyCheck::Shape),
                Outcome::Ok
            );
        }

        stop_sender.send(()).unwrap();
        assert_eq!(
            server.await.unwrap(),
            1,
            "all requests shared one connection"
        );
    }

    #[test]
    fn a_get_body_with_a_value_size_carries_a_value_of_that_size() {
        assert_eq!(
            trivial_get_body(None).as_ref(),
            TRIVIAL_RESPONSE_BODY.as_bytes()
        );
        for value_size in [0, 1, 100, 65_536] {
            let body = trivial_get_body(Some(value_size));
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed["key"], "k");
            assert_eq!(parsed["value"].as_str().unwrap().len(), value_size);
            assert_eq!(
                classify_response(
                    Operation::Get,
                    http::StatusCode::OK,
                    &body,
                    BodyCheck::Shape
                ),
                Outcome::Ok
            );
        }
    }
}
