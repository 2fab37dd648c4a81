//! The accept loop: one task per connection, a connection limit, header and body timeouts,
//! and a graceful shutdown that stops accepting and lets in-flight requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::service::handle;
use crate::state::AppState;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves; then stops accepting, lets
/// in-flight requests finish (idle keep-alive connections close at once), and returns once
/// every connection is closed or `shutdown_drain_timeout` has passed.
///
/// At most `connections_max` connections are served at once; further clients wait in the
/// listen backlog until one closes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let connection_slots = Arc::new(Semaphore::new(state.options.connections_max.max(1)));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accept = async {
            let slot = connection_slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            (slot, listener.accept().await)
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            (slot, accepted) = accept => match accepted {
                Ok((stream, _peer)) => {
                    let state = state.clone();
                    connections.spawn(async move {
                        serve_connection(stream, state).await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    // Connections close once idle; requests that would outwait the drain end now.
    state.stopping.send_replace(true);
    let open_connections = connections.len();
    tracing::info!(open_connections, "stopped accepting; draining connections");
    let drained = tokio::time::timeout(state.options.shutdown_drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            still_open = connections.len(),
            "drain timeout passed; closing the remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Binds a listener on `address` (e.g. `127.0.0.1:0` for an ephemeral port).
///
/// The listen backlog is 1024 connections (the kernel caps it at `net.core.somaxconn`), not
/// the 128 `TcpListener::bind` asks for: when a burst of clients connects at once (say, the
/// server's header timeout cutting hundreds of slow clients who all reconnect), a short
/// backlog drops SYNs and well-behaved clients wait a full second for the retry.
pub async fn bind(address: &str) -> Result<TcpListener> {
    let io_error = |source| Error::Io {
        context: format!("cannot listen on {address}"),
        source,
    };
    let mut last_error = None;
    for socket_address in tokio::net::lookup_host(address).await.map_err(io_error)? {
        match listen(socket_address) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(io_error(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    })))
}

/// Most connections waiting to be accepted (see [`bind`]).
const LISTEN_BACKLOG: u32 = 1024;

fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted server can take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn serve_connection(stream: TcpStream, state: Arc<AppState>) {
    let _ = stream.set_nodelay(true);
    state.metrics.connection_opened();
    let service_state = state.clone();
    let service = service_fn(move |request| {
        let state = service_state.clone();
        async move { Ok::<_, Infallible>(handle(&state, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.options.header_read_timeout)
        .keep_alive(true);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let shutdown_started = state.stopped();
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown_started => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
    state.metrics.connection_closed();
}
