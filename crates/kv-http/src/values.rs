//! How a value is answered: its bytes for `Accept: application/octet-stream`, else JSON (stored
//! JSON as is, raw UTF-8 as a string, other bytes as base64).

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use kv_store::ValueKind;

use crate::body::{self, OCTET_STREAM};
use crate::error::json_response;
use crate::json_text;

/// A value's answer: its bytes for `Accept: application/octet-stream`, else
/// `{"key":k,"value":v[,"encoding":"base64"]…}` with `more_members` appending the rest.
pub(crate) fn value_response(
    key: &str,
    kind: ValueKind,
    value: &[u8],
    headers: &http::HeaderMap,
    more_members: impl FnOnce(&mut Vec<u8>),
) -> Response<Full<Bytes>> {
    if body::accepts_octet_stream(headers) {
        let bytes = match kind {
            ValueKind::Raw => value.to_vec(),
            // A JSON string is returned as its text; any other JSON value as compact JSON.
            ValueKind::Json => match serde_json::from_slice::<String>(value) {
                Ok(text) if value.first() == Some(&b'"') => text.into_bytes(),
                _ => value.to_vec(),
            },
        };
        let mut response = Response::new(Full::new(Bytes::from(bytes)));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
        return response;
    }
    let mut body = Vec::with_capacity(value.len() + key.len() + 96);
    body.extend_from_slice(br#"{"key":"#);
    json_text::write_json_string(&mut body, key);
    body.extend_from_slice(br#","value":"#);
    write_value(&mut body, kind, value);
    more_members(&mut body);
    body.push(b'}');
    json_response(StatusCode::OK, body)
}

/// Appends a value as JSON: stored JSON as is, raw UTF-8 as a string, other raw bytes as a
/// base64 string followed by `,"encoding":"base64"`.
pub(crate) fn write_value(body: &mut Vec<u8>, kind: ValueKind, value: &[u8]) {
    match kind {
        // Stored as compact JSON text: spliced in as is.
        ValueKind::Json => body.extend_from_slice(value),
        ValueKind::Raw => match std::str::from_utf8(value) {
            Ok(text) => json_text::write_json_string(body, text),
            Err(_) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(value);
                serde_json::to_writer(&mut *body, &encoded).expect("writing to a Vec");
                body.extend_from_slice(br#","encoding":"base64""#);
            }
        },
    }
}
