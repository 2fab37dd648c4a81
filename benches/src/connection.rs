//! One HTTP/1.1 keep-alive client connection, on hyper's low-level `client::conn::http1`.
//!
//! No pool: a worker owns its connection, sends one request at a time on it, and throws it
//! away on any error, opening a new one for its next request. The socket has `TCP_NODELAY`
//! set so small requests are not held back by Nagle's algorithm.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The largest response body kv-bench reads; larger answers fail as broken connections.
pub const RESPONSE_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The TCP connect did not finish within the timeout.
    Timeout,
    /// The TCP connect or the HTTP handshake failed.
    Failed(std::io::Error),
}

/// Why a request on an open connection got no answer.
#[derive(Debug)]
pub enum RequestError {
    /// hyper reported an error: the connection closed, reset, or sent garbage.
    Http(hyper::Error),
    /// The response body could not be read completely (or was too large).
    Body(String),
}

/// A status and a fully read body.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The response status.
    pub status: http::StatusCode,
    /// The whole response body.
    pub body: Bytes,
}

/// An open HTTP/1.1 connection; dropping it closes the socket.
pub struct HttpConnection {
    request_sender: SendRequest<Full<Bytes>>,
    connection_task: JoinHandle<()>,
}

impl HttpConnection {
    /// Opens a TCP connection with `TCP_NODELAY` and performs the HTTP/1.1 handshake.
    pub async fn connect(
        socket_address: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<HttpConnection, ConnectError> {
        let tcp_stream = tokio::time::timeout(connect_timeout, TcpStream::connect(socket_address))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Failed)?;
        tcp_stream.set_nodelay(true).map_err(ConnectError::Failed)?;
        let (request_sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp_stream))
                .await
                .map_err(|error| ConnectError::Failed(std::io::Error::other(error)))?;
        let connection_task = tokio::spawn(async move {
            // The connection ends when the worker drops its sender or the peer closes; either
            // way the worker learns of it from its next request.
            let _ = connection.await;
        });
        Ok(HttpConnection {
            request_sender,
            connection_task,
        })
    }

    /// Sends one request and reads the whole answer. The caller applies the timeout.
    pub async fn send(
        &mut self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<HttpAnswer, RequestError> {
        self.request_sender
            .ready()
            .await
            .map_err(RequestError::Http)?;
        let response = self
            .request_sender
            .send_request(request)
            .await
            .map_err(RequestError::Http)?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, RESPONSE_BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|error| RequestError::Body(error.to_string()))?
            .to_bytes();
        Ok(HttpAnswer {
            status: parts.status,
            body,
        })
    }
}

impl Drop for HttpConnection {
    fn drop(&mut self) {
        self.connection_task.abort();
    }
}

/// Tries to open a TCP connection to `socket_address` until one succeeds or `wait` has passed.
/// Returns whether it succeeded. Polls with a backoff from 10 ms to 200 ms.
pub async fn wait_until_accepting(socket_address: SocketAddr, wait: Duration) -> bool {
    const ATTEMPT_COUNT_MAX: u32 = 100_000;
    const BACKOFF_MIN: Duration = Duration::from_millis(10);
    const BACKOFF_MAX: Duration = Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + wait;
    let mut backoff = BACKOFF_MIN;
    for _ in 0..ATTEMPT_COUNT_MAX {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = tokio::time::timeout(remaining, TcpStream::connect(socket_address)).await;
        if let Ok(Ok(_tcp_stream)) = attempt {
            return true;
        }
        if tokio::time::Instant::now() + backoff >= deadline {
            return false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    false
}
