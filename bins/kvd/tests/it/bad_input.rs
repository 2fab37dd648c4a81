//! Bad input over real HTTP: raw bytes on a `TcpStream` to the real binary, the exact status
//! each case must get, and after every case the server still serving with nothing changed
//! (same last id, applied id and key count, the sentinel key intact).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value as Json};

use crate::harness::Kvd;

/// Limits the node runs with, small so the cases stay small.
const BODY_BYTES_MAX: usize = 1024;
const KEY_BYTES_MAX: usize = 64;
const BODY_READ_TIMEOUT_MS: u64 = 1500;
/// How long a case may take to be answered (the slow body waits out the body timeout).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server sent back on one connection, read until it closed it.
struct RawAnswer {
    bytes: Vec<u8>,
    closed_by_server: bool,
}

impl RawAnswer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
    /// Status codes of every response on the connection, in order.
    fn statuses(&self) -> Vec<u16> {
        self.text()
            .match_indices("HTTP/1.1 ")
            .filter_map(|(at, _)| self.text().get(at + 9..at + 12)?.parse().ok())
            .collect()
    }
    fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next()?;
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
    }
    fn json_body(&self) -> Json {
        let text = self.text();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        serde_json::from_str(body).unwrap_or_else(|error| panic!("{error}: {text}"))
    }
}

/// Sends `request` (bytes, possibly several requests or a partial one) and reads until the
/// server closes the connection, or `ANSWER_TIMEOUT` passes.
fn exchange(address: SocketAddr, request: &[u8]) -> RawAnswer {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("timeout");
    // The server may answer and close before taking all of a large request.
    let _ = stream.write_all(request);
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16 << 10];
    let closed_by_server = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(count) => bytes.extend_from_slice(&buffer[..count]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    RawAnswer {
        bytes,
        closed_by_server,
    }
}

fn put_request(path: &str, body: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "PUT {path} HTTP/1.1\r\nHost: kvd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: kvd\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The node's visible state: what must not change.
fn footprint(kvd: &Kvd) -> (Json, Json, Json, Json) {
    let (status, health) = kvd.json("GET", "/health", None);
    assert_eq!(status, 200, "{health}");
    let (status, sentinel) = kvd.json("GET", "/key/sentinel", None);
    assert_eq!(status, 200);
    (
        health["last_id"].clone(),
        health["applied_id"].clone(),
        health["keys"].clone(),
        sentinel["value"].clone(),
    )
}

/// One case: the bytes, and what the answer must be.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// A part of the JSON `detail`, when the answer carries one.
    detail_part: Option<&'static str>,
    /// The server must close the connection after answering.
    closes: bool,
}

fn case(name: &'static str, request: Vec<u8>, status: u16, detail_part: &'static str) -> Case {
    Case {
        name,
        request,
        status,
        detail_part: (!detail_part.is_empty()).then_some(detail_part),
        closes: false,
    }
}

fn cases() -> Vec<Case> {
    let deep = format!(
        r#"{{"value": {}{}}}"#,
        "[".repeat(BODY_BYTES_MAX / 2 - 20),
        "]".repeat(BODY_BYTES_MAX / 2 - 20)
    );
    let long_key = "k".repeat(KEY_BYTES_MAX + 1);
    let many_headers: String = (0..101)
        .map(|index| format!("X-Header-{index}: v\r\n"))
        .collect();
    let huge_header = format!("X-Huge: {}\r\n", "a".repeat(500 << 10));
    // Framed by Transfer-Encoding the body is empty and a second request follows; framed by
    // Content-Length it is all one body. Either way the second request must never run.
    let smuggled = "GET /key/sentinel HTTP/1.1\r\nHost: kvd\r\n\r\n";
    let chunked_then_smuggled = format!("0\r\n\r\n{smuggled}");
    vec![
        case("malformed JSON", put_request("/key/k", "{", ""), 400, "malformed JSON"),
        case(
            "a query parameter given twice",
            put_request("/key/k?acks=all&acks=leader", r#"{"value": 1}"#, ""),
            400,
            "acks is given more than once",
        ),
        case(
            "a header kvd reads given twice (the first was taken before)",
            put_request(
                "/key/k",
                r#"{"value": 1}"#,
                "Idempotency-Key: a\r\nIdempotency-Key: b\r\n",
            ),
            400,
            "Idempotency-Key is given more than once",
        ),
        case(
            "a wait_ms that is no integer, without min_id (it was not read before: 200)",
            get_request("/key/sentinel?wait_ms=abc"),
            400,
            "wait_ms",
        ),
        case(
            "a wait_ms without min_id (it waits for nothing)",
            get_request("/key/sentinel?wait_ms=10"),
            400,
            "give min_id too",
        ),
        case(
            "a min_id not applied within its wait_ms",
            get_request("/key/sentinel?min_id=999999&wait_ms=10"),
            504,
            "999999",
        ),
        case(
            "a bad version after a min_id (refused before the wait)",
            get_request("/key/sentinel?min_id=999999&wait_ms=30000&version=x"),
            400,
            "version",
        ),
        case(
            "trailing garbage",
            put_request("/key/k", r#"{"value": 1} trailing"#, ""),
            400,
            "malformed JSON",
        ),
        case(
            "a gzip-coded body (kvd decodes none: the coded bytes were stored as the value)",
            put_request("/key/k", r#"{"value": 1}"#, "Content-Encoding: gzip\r\n"),
            415,
            "Content-Encoding",
        ),
        Case {
            closes: true,
            ..case(
                "a gzip transfer coding (hyper takes the chunks off, not the gzip)",
                b"PUT /key/k HTTP/1.1\r\nHost: kvd\r\nTransfer-Encoding: gzip, chunked\r\n\
                  Connection: close\r\n\r\nc\r\n{\"value\": 1}\r\n0\r\n\r\n"
                    .to_vec(),
                501,
                "Transfer-Encoding",
            )
        },
        case(
            "missing value",
            put_request("/key/k", r#"{"valu": 1}"#, ""),
            422,
            "\"value\"",
        ),
        case(
            "deep nesting",
            put_request("/key/k", &deep, ""),
            400,
            "nests too deeply",
        ),
        case(
            "declared body over the limit (413 before the body is read)",
            format!(
                "PUT /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"value\": 1}}",
                BODY_BYTES_MAX + 1
            )
            .into_bytes(),
            413,
            "exceeds the limit",
        ),
        case(
            "key over the limit",
            put_request(&format!("/key/{long_key}"), r#"{"value": 1}"#, ""),
            414,
            "exceeds the limit",
        ),
        case(
            "badly encoded key",
            put_request("/key/%zz", r#"{"value": 1}"#, ""),
            400,
            "invalid key",
        ),
        case(
            "unknown route",
            b"GET /nope HTTP/1.1\r\nHost: kvd\r\nConnection: close\r\n\r\n".to_vec(),
            404,
            "Not Found",
        ),
        case(
            "a key is one path segment",
            b"GET /key/a/b HTTP/1.1\r\nHost: kvd\r\nConnection: close\r\n\r\n".to_vec(),
            404,
            "Not Found",
        ),
        case(
            "wrong method on a key",
            b"POST /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec(),
            405,
            "Method Not Allowed",
        ),
        case(
            "wrong method on /health",
            put_request("/health", r#"{"value": 1}"#, ""),
            405,
            "Method Not Allowed",
        ),
        Case {
            closes: true,
            ..case(
                "smuggling: Content-Length and Transfer-Encoding",
                format!(
                    "PUT /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: {}\r\n\
                     Transfer-Encoding: chunked\r\n\r\n{chunked_then_smuggled}",
                    chunked_then_smuggled.len()
                )
                .into_bytes(),
                400,
                "malformed JSON",
            )
        },
        Case {
            closes: true,
            ..case(
                "smuggling: two different Content-Lengths",
                format!(
                    "PUT /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: 12\r\n\
                     Content-Length: {}\r\n\r\n{{\"value\": 1}}{smuggled}",
                    12 + smuggled.len()
                )
                .into_bytes(),
                400,
                "",
            )
        },
        Case {
            closes: true,
            ..case(
                "smuggling: a bad chunk size",
                format!(
                    "PUT /key/k HTTP/1.1\r\nHost: kvd\r\nTransfer-Encoding: chunked\r\n\r\n\
                     zz\r\n{{\"value\": 1}}\r\n0\r\n\r\n{smuggled}"
                )
                .into_bytes(),
                400,
                "could not read request body",
            )
        },
        Case {
            closes: true,
            ..case(
                "a chunk size past 64 bits",
                b"PUT /key/k HTTP/1.1\r\nHost: kvd\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc"
                    .to_vec(),
                400,
                "could not read request body",
            )
        },
        Case {
            closes: true,
            ..case(
                "chunked body over the limit",
                format!(
                    "PUT /key/k HTTP/1.1\r\nHost: kvd\r\nTransfer-Encoding: chunked\r\n\
                     Connection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                    BODY_BYTES_MAX + 1,
                    "a".repeat(BODY_BYTES_MAX + 1)
                )
                .into_bytes(),
                413,
                "exceeds the limit",
            )
        },
        Case {
            closes: true,
            ..case(
                "101 headers",
                format!("GET /health HTTP/1.1\r\nHost: kvd\r\n{many_headers}\r\n").into_bytes(),
                431,
                "",
            )
        },
        Case {
            closes: true,
            ..case(
                "a 500 KB header",
                format!("GET /health HTTP/1.1\r\nHost: kvd\r\n{huge_header}\r\n").into_bytes(),
                431,
                "",
            )
        },
        Case {
            closes: true,
            ..case(
                "Expect: 100-continue with an oversized length (413, no 100, body never read)",
                b"PUT /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n"
                    .to_vec(),
                413,
                "exceeds the limit",
            )
        },
        case(
            "slow body (408 once the body timeout passes)",
            b"PUT /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: 12\r\n\r\n{\"va".to_vec(),
            408,
            "not received within",
        ),
        Case {
            closes: true,
            ..case(
                "not HTTP at all (a TLS hello)",
                [&[0x16u8, 0x03, 0x01, 0x00, 0xa5, 0x01][..], &[b'x'; 64], b"\r\n\r\n"].concat(),
                400,
                "",
            )
        },
    ]
}

#[test]
fn every_bad_request_gets_its_exact_status_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let body_bytes_max = BODY_BYTES_MAX.to_string();
    let key_bytes_max = KEY_BYTES_MAX.to_string();
    let body_read_timeout_ms = BODY_READ_TIMEOUT_MS.to_string();
    let kvd = Kvd::start(
        &dir.path().join("leader"),
        &[
            "--max-body-bytes",
            &body_bytes_max,
            "--max-key-bytes",
            &key_bytes_max,
            "--body-read-timeout-ms",
            &body_read_timeout_ms,
        ],
        &[],
    );
    let (status, _) = kvd.json("PUT", "/key/sentinel", Some(r#"{"value": "intact"}"#));
    assert_eq!(status, 200);
    let before = footprint(&kvd);
    for case in cases() {
        let started = std::time::Instant::now();
        let answer = exchange(kvd.address, &case.request);
        let elapsed = started.elapsed();
        let name = case.name;
        let statuses = answer.statuses();
        assert_eq!(
            statuses,
            vec![case.status],
            "{name}: exactly one answer, with status {}; got {:.300}",
            case.status,
            answer.text()
        );
        if let Some(detail_part) = case.detail_part {
            let detail = answer.json_body()["detail"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(detail.contains(detail_part), "{name}: detail {detail:?}");
        }
        if case.status == 405 {
            assert!(
                answer.header("allow").is_some(),
                "{name}: 405 without Allow"
            );
        }
        if case.closes {
            assert!(
                answer.closed_by_server,
                "{name}: the server must close the connection"
            );
        }
        assert_eq!(footprint(&kvd), before, "{name}: nothing changed");
        println!("{name}: {} as expected, in {elapsed:.1?}", case.status);
    }
    // The Allow headers name the route's methods.
    let answer = exchange(
        kvd.address,
        b"POST /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        answer.header("allow").as_deref(),
        Some("GET, HEAD, PUT, DELETE")
    );
    let answer = exchange(kvd.address, &put_request("/health", "{}", ""));
    assert_eq!(answer.header("allow").as_deref(), Some("GET, HEAD"));
    // Each of these is the client's doing, none a fault of the node's: nothing is logged as
    // an error (the 504 of a min_id wait and the 501 of a transfer coding were).
    let errors: Vec<_> = kvd
        .stderr()
        .lines()
        .filter(|line| line.contains("ERROR"))
        .map(str::to_owned)
        .collect();
    assert!(errors.is_empty(), "logged as errors: {errors:#?}");
    // And good requests still work.
    let (status, written) = kvd.json("PUT", "/key/after", Some(r#"{"value": [1, 2]}"#));
    assert_eq!(status, 200, "{written}");
    assert_eq!(
        kvd.seed_json("GET", "/key/after", None),
        (200, json!({"key": "after", "value": [1, 2]}))
    );
}

/// HEAD is GET without the body (RFC 9110, 9.3.2): the same status and headers, the GET's
/// Content-Length, no body bytes — and nothing changes (on `/key/…`, where the methods are
/// GET, PUT and DELETE, a HEAD must not be taken for any of the others).
#[test]
fn head_answers_what_get_would_without_the_body() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kvd = Kvd::start(&dir.path().join("data"), &[], &[]);
    let (status, written) = kvd.json("PUT", "/key/k", Some(r#"{"value": "some value"}"#));
    assert_eq!(status, 200, "{written}");
    let get = exchange(
        kvd.address,
        b"GET /key/k HTTP/1.1\r\nHost: kvd\r\nConnection: close\r\n\r\n",
    );
    for (path, status) in [("/key/k", 200), ("/key/absent", 404), ("/health", 200)] {
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: kvd\r\nConnection: close\r\n\r\n");
        let head = exchange(kvd.address, request.as_bytes());
        assert_eq!(head.statuses(), vec![status], "{path}: {}", head.text());
        let text = head.text();
        let (_, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(body.is_empty(), "{path}: HEAD sent a body: {text}");
        if path == "/key/k" {
            assert_eq!(head.header("content-length"), get.header("content-length"));
            assert_eq!(head.header("etag"), get.header("etag"));
        }
    }
    assert_eq!(kvd.json("GET", "/key/k", None).1["value"], "some value");
}
