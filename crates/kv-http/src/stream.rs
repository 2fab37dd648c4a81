//! The replication stream over HTTP/1.1 (kv-replication's `stream` module is the protocol): a
//! follower sends `GET /replication/stream` with `Connection: upgrade` and
//! `Upgrade: kvd-replication/2`; the leader answers `101 Switching Protocols` and the
//! connection becomes the stream — the follower's opening fetch and acknowledgements one way,
//! the leader's pushes the other, each an envelope and a fetch-protocol body.
//!
//! The leader serves a stream on one task ([`serve`]) with a reader task beside it (reads are
//! not cancel-safe, so they never race a push in a `select!`); the follower's side
//! ([`open`]) reads pushes into kv-replication's `StreamLink` on a reader task and writes the
//! follower's messages through a `SocketSink` (at once, from the session's own task), so
//! kv-replication never sees a socket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use kv_replication::stream::{Envelope, ENVELOPE_BYTES, STREAM_PROTOCOL};
use kv_replication::{
    FetchRequest, FetchResponse, Node, StreamLink, StreamStart, TransportError, TransportErrorKind,
    FETCH_WAIT_MAX,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::lock;

/// How long the leader waits for a stream's opening after the upgrade.
const OPENING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the leader keeps a stream with no message from the follower (it answers
/// heartbeats, which come at least every [`FETCH_WAIT_MAX`]).
const SILENCE_MAX: Duration = Duration::from_secs(FETCH_WAIT_MAX.as_secs() * 2);
/// How long one message may take to be written before the stream is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pushes the follower's reader may hold before it stops reading (the socket then holds the
/// leader back).
const PUSHES_BUFFERED: usize = 8;
/// Buffer sizes of the stream's reader and writer.
const BUFFER_BYTES: usize = 64 * 1024;

/// `GET /replication/stream`: answers `101` and serves the stream on the upgraded connection.
pub fn accept(node: &Arc<Node>, parts: &mut http::request::Parts) -> Result<Response<Full<Bytes>>> {
    let asked = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let upgrading = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !upgrading || !asked.eq_ignore_ascii_case(STREAM_PROTOCOL) {
        return Err(Error::BadFetch(format!(
            "a replication stream needs `Connection: upgrade` and `Upgrade: {STREAM_PROTOCOL}` \
             (asked: {asked:?})"
        )));
    }
    let on_upgrade = parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or_else(|| Error::BadFetch("this connection cannot be upgraded".to_owned()))?;
    let node = node.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(node, upgraded).await,
            Err(error) => tracing::debug!(%error, "replication stream upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response
        .headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(STREAM_PROTOCOL));
    Ok(response)
}

/// Serves one stream until it ends: the follower hangs up or goes silent, a write stalls,
/// the stream's last message was sent, or the node stops leading. Then closes the connection
/// (the follower sees the end at once, even while it still has messages to send).
async fn serve(node: Arc<Node>, upgraded: Upgraded) {
    let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
    let mut writer = BufWriter::with_capacity(BUFFER_BYTES, writer);
    let (mut messages, reading) = spawn_reader(
        reader,
        |body| FetchRequest::decode(body).map_err(|error| Inbound::Bad(error.to_string())),
        Inbound::Broke,
    );
    serve_messages(&node, &mut messages, &mut writer).await;
    reading.abort();
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.shutdown()).await;
}

/// Why the leader stopped reading a follower's stream.
enum Inbound {
    /// A message that does not decode.
    Bad(String),
    /// The connection broke (reset by the follower, say).
    Broke(String),
}

async fn serve_messages<W: AsyncWrite + Unpin>(
    node: &Arc<Node>,
    messages: &mut Messages<FetchRequest, Inbound>,
    writer: &mut BufWriter<W>,
) {
    let opening = match tokio::time::timeout(OPENING_TIMEOUT, messages.recv()).await {
        Ok(Some(Ok(opening))) => opening,
        Ok(Some(Err(Inbound::Bad(error) | Inbound::Broke(error)))) => {
            tracing::debug!(%error, "bad replication stream opening");
            return;
        }
        Ok(None) | Err(_) => return,
    };
    let mut stream = match node.open_stream(&opening.1) {
        StreamStart::Answer(answer) => {
            let _ = write_message(writer, opening.0, &answer.encode()).await;
            return;
        }
        StreamStart::Stream(stream) => stream,
    };
    loop {
        tokio::select! {
            received = tokio::time::timeout(SILENCE_MAX, messages.recv()) => {
                let (seq, ack) = match received {
                    Ok(Some(Ok(message))) => message,
                    Ok(Some(Err(Inbound::Bad(error)))) => {
                        tracing::debug!(%error, "replication stream closed on a bad message");
                        return;
                    }
                    // The follower hung up (it stopped, or crashed): it leaves the ISR
                    // unless it opens another stream at once.
                    Ok(Some(Err(Inbound::Broke(error)))) => {
                        tracing::debug!(%error, "replication stream broke");
                        stream.follower_hung_up();
                        return;
                    }
                    Ok(None) => {
                        stream.follower_hung_up();
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("replication stream closed: the follower went silent");
                        return;
                    }
                };
                if let Some(last) = stream.on_ack(seq, &ack) {
                    let _ = write_message(writer, seq, &last.encode()).await;
                    return;
                }
            }
            push = stream.next_push() => {
                let Some((echo, answer)) = push else {
                    return;
                };
                if let Err(error) = write_message(writer, echo, &answer.encode()).await {
                    // A connection the follower closed or reset; not one it stopped reading
                    // (that follower is slow, and leaves the ISR after the lag limit).
                    if error.kind() != std::io::ErrorKind::TimedOut {
                        stream.follower_hung_up();
                    }
                    return;
                }
            }
        }
    }
}

/// Opens a stream to the leader at `authority` (`path`: its `/replication/stream` with any
/// prefix) and sends `opening` as message 1. `Ok(None)`: the leader has no streams (a build
/// before them answers 404).
pub async fn open(
    authority: &str,
    path: &str,
    opening: &FetchRequest,
) -> std::result::Result<Option<StreamLink>, TransportError> {
    let connect_error = |detail: String| TransportError::new(TransportErrorKind::Connect, detail);
    let socket = TcpStream::connect(authority).await.map_err(|error| {
        connect_error(format!(
            "cannot connect to the leader at {authority}: {error}"
        ))
    })?;
    socket
        .set_nodelay(true)
        .map_err(|error| connect_error(format!("cannot set TCP_NODELAY: {error}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
        .await
        .map_err(|error| {
            connect_error(format!("HTTP handshake with the leader failed: {error}"))
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "replication stream connection failed");
        }
    });
    let request = Request::get(path)
        .header(header::HOST, authority)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, STREAM_PROTOCOL)
        .body(Full::new(Bytes::new()))
        .map_err(|error| TransportError::new(TransportErrorKind::Address, error.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| connect_error(format!("request to the leader failed: {error}")))?;
    match response.status() {
        StatusCode::SWITCHING_PROTOCOLS => {}
        StatusCode::NOT_FOUND => return Ok(None),
        status => {
            return Err(TransportError::new(
                TransportErrorKind::Status,
                format!("the leader answered {status} to a replication stream"),
            ))
        }
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|error| connect_error(format!("replication stream upgrade failed: {error}")))?;
    let decode = |body: &[u8]| {
        FetchResponse::decode(body)
            .map_err(|error| TransportError::new(TransportErrorKind::Decode, error.to_string()))
    };
    let read_error = |detail| TransportError::new(TransportErrorKind::Connect, detail);
    // The connection is the TCP socket `open` made (`TokioIo<TcpStream>`, handed to hyper
    // above): the follower's messages are written to it from the session's own task.
    let parts = upgraded.downcast::<TokioIo<TcpStream>>().map_err(|_| {
        connect_error(
            "the upgraded replication stream is not the TCP connection it was opened on".to_owned(),
        )
    })?;
    let (reader, writer) = parts.io.into_inner().into_split();
    let sink = SocketSink::start(writer);
    if !sink.send_message(1, &opening.encode()) {
        return Err(connect_error(
            "cannot open the replication stream: the connection closed".to_owned(),
        ));
    }
    // What hyper read past the `101` is the stream's first bytes.
    let reader = std::io::Cursor::new(parts.read_buf).chain(reader);
    let (from_leader, _reading) = spawn_reader(reader, decode, read_error);
    Ok(Some(StreamLink {
        to_leader: Box::new(sink),
        from_leader,
    }))
}

/// The follower's sending side of a stream on its TCP socket ([`kv_replication::AckSink`]):
/// each message is written at once from the caller's task (`try_write`), or, when the socket
/// has not taken everything before it, queued for a flusher task that writes as the socket
/// drains (within [`WRITE_TIMEOUT`], or the sending side closes). So an acknowledgement wakes
/// no task: handed to a writer task, it waited in the worker's LIFO slot behind the session's
/// next `fdatasync`, one follower fsync late. Dropped, it shuts the socket's sending side (the
/// leader then ends the stream).
#[derive(Debug)]
struct SocketSink {
    shared: Arc<SinkShared>,
    queued: Arc<tokio::sync::Notify>,
}

#[derive(Debug)]
struct SinkShared {
    socket: tokio::net::tcp::OwnedWriteHalf,
    /// Bytes the socket has not taken yet, in order; closed after a write failed.
    queue: std::sync::Mutex<(Vec<u8>, bool)>,
}

impl SocketSink {
    fn start(socket: tokio::net::tcp::OwnedWriteHalf) -> SocketSink {
        let shared = Arc::new(SinkShared {
            socket,
            queue: std::sync::Mutex::new((Vec::new(), false)),
        });
        let queued = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(flush_queued(Arc::downgrade(&shared), queued.clone()));
        SocketSink { shared, queued }
    }

    /// Writes or queues message `seq`; false once the sending side is closed.
    fn send_message(&self, seq: u64, body: &[u8]) -> bool {
        let envelope = Envelope {
            seq,
            body_len: body.len(),
        }
        .encode();
        let mut message = Vec::with_capacity(envelope.len() + body.len());
        message.extend_from_slice(&envelope);
        message.extend_from_slice(body);
        let mut queue = lock(&self.shared.queue);
        let (bytes, closed) = &mut *queue;
        if *closed {
            return false;
        }
        if bytes.is_empty() {
            match self.shared.socket.try_write(&message) {
                Ok(written) if written == message.len() => return true,
                Ok(written) => bytes.extend_from_slice(&message[written..]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    bytes.extend_from_slice(&message)
                }
                Err(_) => {
                    *closed = true;
                    return false;
                }
            }
        } else {
            bytes.extend_from_slice(&message);
        }
        drop(queue);
        self.queued.notify_one();
        true
    }
}

impl kv_replication::AckSink for SocketSink {
    fn send(&self, seq: u64, ack: &FetchRequest) -> bool {
        self.send_message(seq, &ack.encode())
    }
}

impl Drop for SocketSink {
    fn drop(&mut self) {
        // The flusher wakes, finds the sink gone, and ends.
        self.queued.notify_one();
    }
}

/// Writes what a [`SocketSink`] queued as its socket drains, until the sink is dropped or a
/// write fails or times out (the sending side then closes).
async fn flush_queued(sink: std::sync::Weak<SinkShared>, queued: Arc<tokio::sync::Notify>) {
    loop {
        queued.notified().await;
        loop {
            let Some(shared) = sink.upgrade() else {
                return;
            };
            if lock(&shared.queue).0.is_empty() {
                break;
            }
            let writable = tokio::time::timeout(WRITE_TIMEOUT, shared.socket.writable()).await;
            let mut queue = lock(&shared.queue);
            let (bytes, closed) = &mut *queue;
            if !matches!(writable, Ok(Ok(()))) {
                *closed = true;
                return;
            }
            match shared.socket.try_write(bytes) {
                Ok(written) => {
                    bytes.drain(..written);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    *closed = true;
                    return;
                }
            }
        }
    }
}

/// Decoded messages (`(seq, body)`) or why the reading stopped.
type Messages<T, E> = mpsc::Receiver<std::result::Result<(u64, T), E>>;

/// Reads messages on a task of their own into a channel (bounded: a slow consumer stops the
/// reading, and the socket then holds the sender back); a decode or read error is passed on
/// (`io_error` makes the latter) and ends the reading. The task ends when the connection or
/// the channel closes (or is aborted through the handle).
fn spawn_reader<R, T, E, D, I>(
    reader: R,
    decode: D,
    io_error: I,
) -> (Messages<T, E>, tokio::task::JoinHandle<()>)
where
    R: AsyncRead + Unpin + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    D: Fn(&[u8]) -> std::result::Result<T, E> + Send + 'static,
    I: Fn(String) -> E + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(PUSHES_BUFFERED);
    let reading = tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(BUFFER_BYTES, reader);
        loop {
            let message = match read_message(&mut reader).await {
                Ok(Some((seq, body))) => decode(&body).map(|decoded| (seq, decoded)),
                Ok(None) => return,
                Err(error) => Err(io_error(format!("replication stream broke: {error}"))),
            };
            let failed = message.is_err();
            if sender.send(message).await.is_err() || failed {
                return;
            }
        }
    });
    (receiver, reading)
}

/// Reads one message; `None` at a clean end of the connection before a message.
async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let mut header = [0u8; ENVELOPE_BYTES];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let envelope = Envelope::decode(&header)
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
    let mut body = vec![0u8; envelope.body_len];
    reader.read_exact(&mut body).await?;
    Ok(Some((envelope.seq, body)))
}

/// Writes one message and flushes it, within [`WRITE_TIMEOUT`].
async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut BufWriter<W>,
    seq: u64,
    body: &[u8],
) -> std::io::Result<()> {
    let envelope = Envelope {
        seq,
        body_len: body.len(),
    }
    .encode();
    let write = async {
        writer.write_all(&envelope).await?;
        writer.write_all(body).await?;
        writer.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the stream's peer stopped reading",
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages the socket cannot take at once are queued and written, whole and in order, as
    /// the peer reads; dropping the sink then ends the connection's sending side.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_sink_queues_what_the_socket_cannot_take_and_keeps_the_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (_client_reader, client_writer) = client.into_split();
        let sink = SocketSink::start(client_writer);
        // The peer reads nothing yet: 64 MiB is more than any socket buffer takes.
        let body = |seq: u64| vec![seq as u8; 256 << 10];
        let count = 256u64;
        for seq in 1..=count {
            assert!(sink.send_message(seq, &body(seq)), "message {seq}");
        }
        assert!(
            !lock(&sink.shared.queue).0.is_empty(),
            "the socket took everything: the queue was not exercised"
        );
        let mut reader = BufReader::new(&mut server);
        for seq in 1..=count {
            let (got_seq, got_body) = read_message(&mut reader).await.unwrap().expect("a message");
            assert_eq!(got_seq, seq);
            assert!(got_body == body(seq), "message {seq} arrived changed");
        }
        drop(sink);
        let end = tokio::time::timeout(WRITE_TIMEOUT, read_message(&mut reader)).await;
        assert!(matches!(end, Ok(Ok(None))), "no end of stream: {end:?}");
    }
}
