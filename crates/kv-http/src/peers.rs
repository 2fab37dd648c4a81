//! Requests from this node to its peers (controller traffic: Raft messages, heartbeats,
//! proposals, joins, forwarded admin calls): keep-alive HTTP/1.1 connections, a few per peer
//! kept idle for reuse, `TCP_NODELAY`, and one deadline over connecting, sending and reading
//! the whole answer.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest answer accepted from a peer.
pub const PEER_ANSWER_BYTES_MAX: usize = 64 << 20;
/// Idle connections kept per peer.
const IDLE_PER_PEER_MAX: usize = 4;

/// Why a request to a peer got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made (refused, unreachable): the peer is down or cut off.
    #[error("cannot connect to {authority}: {reason}")]
    Unreachable {
        /// `host:port`.
        authority: String,
        /// What failed.
        reason: String,
    },
    /// Connected, but no whole answer arrived (timeout, reset, malformed).
    #[error("no answer from {authority}: {reason}")]
    NoAnswer {
        /// `host:port`.
        authority: String,
        /// What failed.
        reason: String,
    },
    /// The URL is not `http://host:port[/prefix]`.
    #[error("bad peer URL {0:?}: expected http://HOST:PORT")]
    BadUrl(String),
}

/// A peer's whole answer.
#[derive(Debug, Clone)]
pub struct PeerAnswer {
    /// Its status.
    pub status: StatusCode,
    /// Its body.
    pub body: Bytes,
}

/// Keep-alive connections to every peer this node talks to. Cheap to share.
#[derive(Debug, Default)]
pub struct PeerClient {
    idle: Mutex<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
    /// Where to connect for a peer's `host:port` instead of that address (tests route each
    /// link through its own fault-injecting proxy); empty: every peer at its own address.
    dial: HashMap<String, String>,
}

/// `http://host:port[/prefix]` → (`host:port`, `/prefix` without a trailing slash).
pub fn split_url(url: &str) -> Result<(&str, &str), PeerError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| PeerError::BadUrl(url.to_owned()))?;
    let (authority, prefix) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(PeerError::BadUrl(url.to_owned()));
    }
    Ok((authority, prefix))
}

impl PeerClient {
    /// A client with no connections yet.
    pub fn new() -> PeerClient {
        PeerClient::default()
    }

    /// A client that connects to `dial[host:port]` for a peer at `host:port` (and to the
    /// peer's own address for one not in the map); the requests still name the peer.
    pub fn with_dial(dial: HashMap<String, String>) -> PeerClient {
        PeerClient {
            dial,
            ..PeerClient::default()
        }
    }

    /// Sends `method {base_url}{path}` with a JSON `body` (when given) and `extra_header` (when
    /// given), and returns the whole answer, whatever its status; gives up after `timeout`.
    pub async fn send(
        &self,
        method: Method,
        base_url: &str,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
        extra_header: Option<(&'static str, &'static str)>,
    ) -> Result<PeerAnswer, PeerError> {
        let (authority, prefix) = split_url(base_url)?;
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{prefix}{path}"))
            .header(header::HOST, authority);
        if let Some((name, value)) = extra_header {
            request = request.header(name, value);
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|_| PeerError::BadUrl(base_url.to_owned()))?;
        match tokio::time::timeout(timeout, self.exchange(authority, request)).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::NoAnswer {
                authority: authority.to_owned(),
                reason: format!("timed out after {} ms", timeout.as_millis()),
            }),
        }
    }

    async fn exchange(
        &self,
        authority: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<PeerAnswer, PeerError> {
        let no_answer = |reason: String| PeerError::NoAnswer {
            authority: authority.to_owned(),
            reason,
        };
        let mut sender = match self.take_idle(authority) {
            Some(sender) => sender,
            None => {
                let address = self.dial.get(authority).map_or(authority, String::as_str);
                connect(address).await?
            }
        };
        sender
            .ready()
            .await
            .map_err(|error| no_answer(error.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| no_answer(error.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), PEER_ANSWER_BYTES_MAX)
            .collect()
            .await
            .map_err(|error| no_answer(error.to_string()))?
            .to_bytes();
        self.put_idle(authority, sender);
        Ok(PeerAnswer { status, body })
    }

    fn idle(&self) -> MutexGuard<'_, HashMap<String, Vec<SendRequest<Full<Bytes>>>>> {
        crate::lock(&self.idle)
    }

    /// An idle connection to `authority` that is still open, if any.
    fn take_idle(&self, authority: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle();
        let connections = idle.get_mut(authority)?;
        while let Some(sender) = connections.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, authority: &str, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        let connections = idle.entry(authority.to_owned()).or_default();
        if connections.len() < IDLE_PER_PEER_MAX {
            connections.push(sender);
        }
    }
}

async fn connect(authority: &str) -> Result<SendRequest<Full<Bytes>>, PeerError> {
    let unreachable = |reason: String| PeerError::Unreachable {
        authority: authority.to_owned(),
        reason,
    };
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|error| unreachable(error.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| unreachable(format!("HTTP handshake failed: {error}")))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "peer connection closed");
        }
    });
    Ok(sender)
}

/// A JSON body, for [`PeerClient::post_json`].
pub(crate) fn json_bytes(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("peer messages always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_prefix() {
        assert_eq!(
            split_url("http://127.0.0.1:8000").unwrap(),
            ("127.0.0.1:8000", "")
        );
        assert_eq!(
            split_url("http://localhost:9/kv/").unwrap(),
            ("localhost:9", "/kv")
        );
        assert!(split_url("https://x:1").is_err());
        assert!(split_url("http://").is_err());
        assert!(split_url("http:///path").is_err());
    }
}
