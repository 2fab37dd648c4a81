//! Fuzz target over the HTTP request path: raw bytes, as a client would send them, into
//! hyper's HTTP/1.1 server on an in-memory duplex stream, answered by [`kv_http::handle`] — the
//! same service `kv_http::serve` runs. The client side writes the bytes, closes its half and
//! reads every answer.
//!
//! The bytes may hold any number of requests, complete or not. The server must not panic,
//! must answer with well-formed responses, and must never answer 500: bad input is a 4xx.
//!
//! This file is the single definition of the target: the cargo-fuzz binary calls it, and
//! kv-http's test `fuzz_corpus.rs` includes it (`#[path]`) to replay the committed corpus.
//! It uses only crates kv-http's tests also have.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kv_http::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Capacity of the in-memory stream, each way.
const DUPLEX_BYTES: usize = 64 << 10;

/// A current-thread runtime with paused time: timeouts (the body read timeout) fire as soon
/// as nothing else can run, so an incomplete request costs no wall-clock time.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// Feeds `data` to a server connection answering with `state`; returns what it sent back,
/// after checking it.
pub fn serve_raw_bytes(
    runtime: &tokio::runtime::Runtime,
    state: &Arc<AppState>,
    data: &[u8],
) -> Vec<u8> {
    let answers = runtime.block_on(async {
        let (client, server) = tokio::io::duplex(DUPLEX_BYTES);
        let service_state = state.clone();
        let service = service_fn(move |request| {
            let state = service_state.clone();
            async move { Ok::<_, Infallible>(kv_http::handle(&state, request).await) }
        });
        let connection = http1::Builder::new().serve_connection(TokioIo::new(server), service);
        let (mut read_half, mut write_half) = tokio::io::split(client);
        let write = async move {
            let _ = write_half.write_all(data).await;
            let _ = write_half.shutdown().await;
        };
        let read = async move {
            let mut answers = Vec::new();
            let _ = read_half.read_to_end(&mut answers).await;
            answers
        };
        // Not spawned: a panic anywhere in the connection reaches the fuzzer.
        let (_served, (), answers) = tokio::join!(connection, write, read);
        answers
    });
    check_answers(&answers);
    answers
}

/// Checks the server's answers: they start with a status line, and none is a 500. (Responses
/// are not parsed one by one: a HEAD answer has a Content-Length and no body.)
pub fn check_answers(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    assert!(
        bytes.starts_with(b"HTTP/1."),
        "the answer does not start with a status line: {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
    );
    let server_error = |at: usize| bytes[at..].starts_with(b"HTTP/1.1 500 ");
    let starts = std::iter::once(0).chain(
        bytes
            .windows(4)
            .enumerate()
            .filter(|(_, window)| *window == b"\r\n\r\n")
            .map(|(at, _)| at + 4),
    );
    for at in starts {
        assert!(
            !server_error(at),
            "a 500 answer to client input: {:?}",
            String::from_utf8_lossy(&bytes[at..bytes.len().min(at + 300)])
        );
    }
}
