//! The follower's side of the fetch protocol over HTTP/1.1: one keep-alive connection to the
//! leader with `TCP_NODELAY`, re-established after any failure.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use kv_replication::{
    FetchRequest, FetchResponse, SnapshotMeta, StreamLink, Transport, TransportError,
    TransportErrorKind,
};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Largest fetch response accepted (the protocol's limit on a response's frames — a batch, or
/// one frame larger than a batch — plus its header).
const FETCH_RESPONSE_BYTES_MAX: usize =
    kv_replication::protocol::RESPONSE_FRAMES_BYTES_MAX as usize + 4096;

/// Fetches from a leader at an `http://host:port` URL.
#[derive(Debug)]
pub struct HttpTransport {
    authority: String,
    path: String,
    connection: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl HttpTransport {
    /// A transport to the leader at `leader_url` (`http://host:port`, optionally with a path
    /// prefix). Fails for other schemes.
    pub fn new(leader_url: &str) -> Result<HttpTransport, TransportError> {
        let bad_url = |reason: &str| {
            TransportError::new(
                TransportErrorKind::Address,
                format!("leader URL {leader_url:?} {reason}"),
            )
        };
        let rest = leader_url
            .strip_prefix("http://")
            .ok_or_else(|| bad_url("must start with http://"))?;
        let (authority, prefix) = match rest.split_once('/') {
            Some((authority, prefix)) => (authority, prefix.trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad_url("has no host"));
        }
        let path = if prefix.is_empty() {
            "/replication/fetch".to_owned()
        } else {
            format!("/{prefix}/replication/fetch")
        };
        Ok(HttpTransport {
            authority: authority.to_owned(),
            path,
            connection: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let connect_error =
            |detail: String| TransportError::new(TransportErrorKind::Connect, detail);
        let stream = TcpStream::connect(&self.authority).await.map_err(|error| {
            connect_error(format!(
                "cannot connect to the leader at {}: {error}",
                self.authority
            ))
        })?;
        stream
            .set_nodelay(true)
            .map_err(|error| connect_error(format!("cannot set TCP_NODELAY: {error}")))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| {
                connect_error(format!("HTTP handshake with the leader failed: {error}"))
            })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "replication connection closed");
            }
        });
        Ok(sender)
    }

    async fn exchange(&self, request: &FetchRequest) -> Result<FetchResponse, TransportError> {
        let http_request = Request::post(&self.path)
            .header(header::CONTENT_TYPE, crate::body::OCTET_STREAM)
            .body(Full::new(Bytes::from(request.encode())));
        let (status, _, body) = self.send(http_request).await?;
        if status != StatusCode::OK {
            return Err(TransportError::new(
                TransportErrorKind::Status,
                format!(
                    "the leader answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(512)])
                ),
            ));
        }
        FetchResponse::decode(&body)
            .map_err(|error| TransportError::new(TransportErrorKind::Decode, error.to_string()))
    }

    async fn get(
        &self,
        path_and_query: &str,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), TransportError> {
        let request = Request::get(format!("{}{path_and_query}", self.prefix()))
            .body(Full::new(Bytes::new()));
        self.send(request).await
    }

    /// Sends one request on the kept-alive connection (made first if there is none); any
    /// failure drops the connection so the next request starts afresh.
    async fn send(
        &self,
        request: http::Result<Request<Full<Bytes>>>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), TransportError> {
        let address_error = |error: &dyn std::fmt::Display| {
            TransportError::new(TransportErrorKind::Address, error.to_string())
        };
        let mut request = request.map_err(|error| address_error(&error))?;
        let host = header::HeaderValue::from_str(&self.authority)
            .map_err(|error| address_error(&error))?;
        request.headers_mut().insert(header::HOST, host);
        let mut connection = self.connection.lock().await;
        let sender = match connection.as_mut() {
            Some(sender) if !sender.is_closed() => sender,
            _ => connection.insert(self.connect().await?),
        };
        let result = async {
            let connect_error =
                |detail: String| TransportError::new(TransportErrorKind::Connect, detail);
            sender.ready().await.map_err(|error| {
                connect_error(format!("the connection to the leader broke: {error}"))
            })?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|error| connect_error(format!("request to the leader failed: {error}")))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = Limited::new(response.into_body(), FETCH_RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|error| {
                    TransportError::new(
                        TransportErrorKind::Decode,
                        format!("reading the leader's answer failed: {error}"),
                    )
                })?
                .to_bytes();
            Ok((status, headers, body))
        }
        .await;
        if result.is_err() {
            *connection = None;
        }
        result
    }

    fn prefix(&self) -> &str {
        self.path.strip_suffix("/replication/fetch").unwrap_or("")
    }
}

/// The error of a call that did not finish within `timeout`.
fn timed_out(what: &str, timeout: Duration) -> TransportError {
    TransportError::new(
        TransportErrorKind::Timeout,
        format!("{what} within {} ms", timeout.as_millis()),
    )
}

impl Transport for HttpTransport {
    async fn open_stream(
        &self,
        opening: &FetchRequest,
        timeout: Duration,
    ) -> Result<Option<StreamLink>, TransportError> {
        let path = format!("{}/replication/stream", self.prefix());
        tokio::time::timeout(
            timeout,
            crate::stream::open(&self.authority, &path, opening),
        )
        .await
        .map_err(|_| timed_out("no replication stream from the leader", timeout))?
    }

    async fn snapshot_meta(
        &self,
        timeout: Duration,
    ) -> Result<Option<SnapshotMeta>, TransportError> {
        let (status, _, body) = tokio::time::timeout(timeout, self.get("/replication/snapshot"))
            .await
            .map_err(|_| timed_out("no answer from the leader", timeout))??;
        match status {
            StatusCode::OK => serde_json::from_slice(&body).map(Some).map_err(|error| {
                TransportError::new(
                    TransportErrorKind::Decode,
                    format!("bad snapshot description: {error}"),
                )
            }),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(TransportError::new(
                TransportErrorKind::Status,
                format!("the leader answered {other} for its snapshot"),
            )),
        }
    }

    async fn snapshot_chunk(
        &self,
        applied_id: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let path = format!("/replication/snapshot/{applied_id}?offset={offset}&len={len}");
        let (status, headers, body) = tokio::time::timeout(timeout, self.get(&path))
            .await
            .map_err(|_| {
                timed_out(&format!("snapshot chunk at {offset} not received"), timeout)
            })??;
        if status != StatusCode::OK {
            return Err(TransportError::new(
                TransportErrorKind::Status,
                format!("the leader answered {status} for snapshot {applied_id} at {offset}"),
            ));
        }
        let expected: u32 = headers
            .get(crate::replication::CHUNK_CRC_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| {
                TransportError::new(
                    TransportErrorKind::Decode,
                    "the snapshot chunk came without its CRC",
                )
            })?;
        if kv_replication::chunk_crc(&body) != expected {
            return Err(TransportError::new(
                TransportErrorKind::Corrupt,
                format!("snapshot chunk at {offset} failed its CRC check"),
            ));
        }
        Ok(body.to_vec())
    }

    async fn fetch(
        &self,
        request: &FetchRequest,
        timeout: Duration,
    ) -> Result<FetchResponse, TransportError> {
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => {
                // The connection may hold a half-finished exchange: start afresh.
                *self.connection.lock().await = None;
                Err(timed_out("no answer from the leader", timeout))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let transport = HttpTransport::new("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (transport.authority.as_str(), transport.path.as_str()),
            ("127.0.0.1:8000", "/replication/fetch")
        );
        let transport = HttpTransport::new("http://localhost:9/kv/").unwrap();
        assert_eq!(transport.path, "/kv/replication/fetch");
        assert!(HttpTransport::new("https://x:1").is_err());
        assert!(HttpTransport::new("http://").is_err());
    }
}
