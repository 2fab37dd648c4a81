//! The clients' HTTP/1.1: keep-alive connections with timeouts, and an answer to the one
//! question the history needs besides the response: was the request sent at all?

use std::io::{BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::harness::{read_answer, Answer};

/// How long a client waits to connect (a paused node's kernel still accepts).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How one request went.
pub enum Exchange {
    Answered(Answer),
    /// The request never left: the connection could not be made. Nothing happened.
    NotSent(String),
    /// The request was sent (or partly) and no answer came: it may have taken effect.
    Lost(String),
}

/// One keep-alive connection per node, made again after any failure.
pub struct Connections {
    addresses: Vec<SocketAddr>,
    streams: Vec<Option<BufReader<TcpStream>>>,
}

impl Connections {
    pub fn new(addresses: Vec<SocketAddr>) -> Connections {
        let streams = addresses.iter().map(|_| None).collect();
        Connections { addresses, streams }
    }

    pub fn send(
        &mut self,
        node: usize,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
        timeout: Duration,
    ) -> Exchange {
        // A connection the server closed meanwhile (idle timeout, a restart) is not reused:
        // a request on it would be lost for nothing and counted as "unknown".
        if let Some(stream) = &self.streams[node] {
            if !is_open(stream.get_ref()) {
                self.streams[node] = None;
            }
        }
        let stream = match &mut self.streams[node] {
            Some(stream) => stream,
            slot @ None => match connect(self.addresses[node], timeout) {
                Ok(stream) => slot.insert(BufReader::new(stream)),
                Err(error) => return Exchange::NotSent(format!("connect: {error}")),
            },
        };
        let request = Request {
            method,
            path,
            headers,
            body,
        };
        let exchange = exchange(stream, self.addresses[node], &request, timeout);
        let keep = match &exchange {
            Exchange::Answered(answer) => !answer
                .header("connection")
                .is_some_and(|value| value.eq_ignore_ascii_case("close")),
            _ => false,
        };
        if !keep {
            self.streams[node] = None;
        }
        exchange
    }
}

/// One request on a fresh connection.
pub fn once(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Exchange {
    match connect(address, timeout) {
        Ok(stream) => {
            let request = Request {
                method,
                path,
                headers: &[],
                body,
            };
            exchange(&mut BufReader::new(stream), address, &request, timeout)
        }
        Err(error) => Exchange::NotSent(format!("connect: {error}")),
    }
}

fn connect(address: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT.min(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What to send.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    body: Option<&'a str>,
}

fn exchange(
    stream: &mut BufReader<TcpStream>,
    address: SocketAddr,
    request: &Request<'_>,
    timeout: Duration,
) -> Exchange {
    let socket = stream.get_ref();
    if let Err(error) = socket
        .set_read_timeout(Some(timeout))
        .and_then(|()| socket.set_write_timeout(Some(timeout)))
    {
        return Exchange::NotSent(format!("socket: {error}"));
    }
    let Request {
        method,
        path,
        headers,
        body,
    } = request;
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
    );
    for (name, value) in *headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let request = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
    if let Err(error) = stream.get_mut().write_all(request.as_bytes()) {
        return Exchange::Lost(format!("send: {error}"));
    }
    match read_answer(stream) {
        Ok(answer) => Exchange::Answered(answer),
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Exchange::Lost("timeout".to_owned())
        }
        Err(error) => Exchange::Lost(format!("receive: {error}")),
    }
}

/// Whether the server has not closed the connection (nothing readable, no end of stream).
fn is_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open =
        matches!(stream.peek(&mut byte), Err(error) if error.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && open
}
