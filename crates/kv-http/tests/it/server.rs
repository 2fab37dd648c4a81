//! The server over loopback: connection limit, header timeout, graceful shutdown.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kv_http::{HttpOptions, NodeRole};
use tokio::sync::oneshot;

use crate::support::{node_with, Node};

/// How long a client waits for something that should happen; the deadline of every wait.
const DEADLINE: Duration = Duration::from_secs(10);

struct Running {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<kv_http::Result<()>>,
    node: Node,
}

async fn start(options: HttpOptions) -> Running {
    let node = node_with(options, NodeRole::Leader);
    let listener = kv_http::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let state = node.state.clone();
    let server = tokio::spawn(kv_http::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Running {
        address,
        stop: Some(stop),
        server,
        node,
    }
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    stream
}

/// Reads one response with a Content-Length body; returns (status line, body).
fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut buffer = Vec::new();
    let mut byte = [0u8; 1];
    while !buffer.ends_with(b"\r\n\r\n") {
        let read = stream.read(&mut byte).expect("response head");
        assert_eq!(
            read,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.push(byte[0]);
    }
    let head = String::from_utf8(buffer).expect("ASCII head");
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().expect("length"))
        })
        .expect("content-length");
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("body");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("client thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_no_headers_is_disconnected() {
    let running = start(HttpOptions {
        header_read_timeout: Duration::from_millis(200),
        ..HttpOptions::default()
    })
    .await;
    let address = running.address;
    blocking(move || {
        let mut silent = connect(address);
        assert_closed_by_server(&mut silent);
        // A client that starts a request and stalls mid-headers is cut off too.
        let mut slow = connect(address);
        slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .expect("partial head");
        assert_closed_by_server(&mut slow);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let running = start(HttpOptions {
        connections_max: 1,
        ..HttpOptions::default()
    })
    .await;
    let address = running.address;
    blocking(move || {
        let mut first = connect(address);
        first
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        assert!(read_response(&mut first).0.contains("200"));
        // The first connection stays open (keep-alive), holding the only slot.
        let mut second = connect(address);
        second
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        second
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        let waiting = second
            .read(&mut byte)
            .expect_err("no answer while the slot is taken");
        assert!(
            matches!(waiting.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{waiting}"
        );
        drop(first);
        second.set_read_timeout(Some(DEADLINE)).expect("timeout");
        assert!(read_response(&mut second).0.contains("200"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_then_returns() {
    let mut running = start(HttpOptions::default()).await;
    let address = running.address;
    let body = br#"{"value": "in flight"}"#;
    let mut client = blocking(move || {
        let mut client = connect(address);
        let head = format!(
            "PUT /key/k HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).expect("head");
        client.write_all(&body[..5]).expect("half the body");
        client
    })
    .await;
    let mut idle = blocking(move || connect(address)).await;
    // Wait until both connections are being served before stopping.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while running.node.state.metrics.connections_open() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections not accepted in time"
        );
        tokio::task::yield_now().await;
    }
    running
        .stop
        .take()
        .expect("stop")
        .send(())
        .expect("server running");
    let (status, answer) = blocking(move || {
        client.write_all(&body[5..]).expect("rest of the body");
        let answer = read_response(&mut client);
        assert_closed_by_server(&mut client);
        assert_closed_by_server(&mut idle);
        answer
    })
    .await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(answer, r#"{"status":"ok","id":1,"key":"k","version":1}"#);
    tokio::time::timeout(DEADLINE, running.server)
        .await
        .expect("serve returned")
        .expect("task")
        .expect("serve");
    assert!(
        TcpStream::connect(address).is_err(),
        "the listener is closed"
    );
}
