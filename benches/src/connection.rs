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

/// The path [`wait_until_ready`] asks: kvd's health check (`200` once the node serves as a
/// member of its cluster: a leader leading, a follower hearing its leader; `503` before).
pub const READY_PATH: &str = "/health";

/// Asks `GET /health` of `socket_address` (with `host` as the `Host` header) until it answers
/// 2xx or `wait` has passed; returns `Ok(())`, or what the last attempt got. A kvd node that
/// listens is not yet ready to take writes until its controller made it the leader (it
/// answers `503` meanwhile); a server without a health check that answers every request 2xx
/// (trivial-server) is ready once it answers. Polls with a backoff from 10 ms to 200 ms.
pub async fn wait_until_ready(
    socket_address: SocketAddr,
    host: &str,
    wait: Duration,
) -> Result<(), String> {
    const BACKOFF_MIN: Duration = Duration::from_millis(10);
    const BACKOFF_MAX: Duration = Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + wait;
    let mut backoff = BACKOFF_MIN;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let last = match tokio::time::timeout(remaining, ask_ready(socket_address, host, remaining))
            .await
        {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(what)) => what,
            Err(_) => format!("no answer to GET {READY_PATH} in time"),
        };
        if tokio::time::Instant::now() + backoff >= deadline {
            return Err(last);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One readiness question: connect, `GET /health`, 2xx or why not.
async fn ask_ready(
    socket_address: SocketAddr,
    host: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut connection = HttpConnection::connect(socket_address, timeout)
        .await
        .map_err(|error| match error {
            ConnectError::Timeout => "the TCP connect timed out".to_owned(),
            ConnectError::Failed(error) => format!("cannot connect: {error}"),
        })?;
    let request = http::Request::builder()
        .method(http::Method::GET)
        .uri(READY_PATH)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .expect("a constant request is valid");
    let answer = connection
        .send(request)
        .await
        .map_err(|error| format!("GET {READY_PATH} failed: {error:?}"))?;
    if answer.status.is_success() {
        return Ok(());
    }
    let body = String::from_utf8_lossy(&answer.body);
    let body: String = body.chars().take(200).collect();
    Err(format!(
        "GET {READY_PATH} answered {}: {body}",
        answer.status
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server answering its first `unready` requests 503, the rest 200, one per connection.
    async fn health_server(unready: u32) -> (SocketAddr, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let asked = Arc::new(AtomicU32::new(0));
        let counter = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = vec![0; 4096];
                let _ = stream.read(&mut request).await;
                let answer: &[u8] = if counter.fetch_add(1, Ordering::SeqCst) < unready {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 13\r\nconnection: close\r\n\r\nno leader yet"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                };
                let _ = stream.write_all(answer).await;
            }
        });
        (address, asked)
    }

    #[tokio::test]
    async fn ready_waits_past_503_answers_for_a_2xx() {
        let (address, asked) = health_server(3).await;
        let ready = wait_until_ready(address, "x", Duration::from_secs(10)).await;
        assert_eq!(ready, Ok(()));
        assert_eq!(asked.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_server_that_stays_unready_fails_with_its_last_answer() {
        let (address, _) = health_server(u32::MAX).await;
        let ready = wait_until_ready(address, "x", Duration::from_millis(300)).await;
        let error = ready.unwrap_err();
        assert!(
            error.contains("503") && error.contains("no leader yet"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_fails_after_the_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Accepts, and holds every connection open without a word.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let started = std::time::Instant::now();
        let ready = wait_until_ready(address, "x", Duration::from_millis(300)).await;
        let error = ready.unwrap_err();
        assert!(
            error.contains("no answer to GET /health in time"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_closed_port_fails_after_the_wait() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let started = std::time::Instant::now();
        let ready = wait_until_ready(address, "x", Duration::from_millis(300)).await;
        assert!(ready.unwrap_err().contains("cannot connect"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
