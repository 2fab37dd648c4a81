//! Reading request bodies within the size and time limits, and reading the PUT body's JSON
//! (its value kept as compact JSON text, [`compact_json`]).

use std::error::Error as StdError;

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;

use crate::error::{Error, Result};
use crate::json_text::{compact_json, holds_a_double, ExactJson};
use crate::options::HttpOptions;

/// Reads the whole body. A `Content-Length` over the limit fails before anything is read;
/// a body without one fails as soon as it passes the limit; a body not finished within the
/// body read timeout fails with [`Error::BodyReadTimeout`].
pub async fn read_body<B>(body: B, headers: &HeaderMap, options: &HttpOptions) -> Result<Bytes>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    check_content_encoding(headers)?;
    let limit_bytes = options.body_bytes_max;
    let declared_bytes = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared_bytes.is_some_and(|declared| declared > limit_bytes) {
        return Err(Error::BodyTooLarge { limit_bytes });
    }
    let limited = Limited::new(body, usize::try_from(limit_bytes).unwrap_or(usize::MAX));
    match tokio::time::timeout(options.body_read_timeout, limited.collect()).await {
        Err(_elapsed) => Err(Error::BodyReadTimeout {
            timeout_ms: options.body_read_timeout.as_millis(),
        }),
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            Err(Error::BodyTooLarge { limit_bytes })
        }
        Ok(Err(error)) => Err(Error::BodyRead(error.to_string())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// A body sent with a content coding other than `identity` is refused (415) before it is
/// read, and one with a transfer coding other than `chunked` (501, RFC 9112 §6.1; hyper takes
/// only the chunks off): kvd does not decode bodies, and taking the coded bytes as they are
/// would store (for a raw value) bytes the client did not mean.
fn check_content_encoding(headers: &HeaderMap) -> Result<()> {
    if let Some(text) = coding_other_than(headers, header::CONTENT_ENCODING, "identity") {
        return Err(Error::UnsupportedContentEncoding(text));
    }
    if let Some(text) = coding_other_than(headers, header::TRANSFER_ENCODING, "chunked") {
        return Err(Error::UnsupportedTransferCoding(text));
    }
    Ok(())
}

/// The value of the first `name` header that lists a coding other than `allowed`.
fn coding_other_than(
    headers: &HeaderMap,
    name: header::HeaderName,
    allowed: &str,
) -> Option<String> {
    headers.get_all(name).iter().find_map(|value| {
        let text = String::from_utf8_lossy(value.as_bytes());
        text.split(',')
            .map(str::trim)
            .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(allowed))
            .then(|| text.into_owned())
    })
}

/// The `value` of a PUT body `{"value": …}`, as compact JSON text (object members keep their
/// order), and its `version` (the original project's v1.5 condition): absent, `null` or 0 mean
/// none (0 is "no version" there too); any other non-negative integer is the version the write
/// must be above. Other members are ignored.
pub fn put_body(body: &[u8]) -> Result<(Vec<u8>, Option<u64>)> {
    let document: serde_json::Value = serde_json::from_slice(body).map_err(json_error)?;
    let serde_json::Value::Object(mut members) = document else {
        return Err(Error::MissingValue);
    };
    let value = members.remove("value").ok_or(Error::MissingValue)?;
    let version = match members.remove("version") {
        None | Some(serde_json::Value::Null) => None,
        Some(version) => match version.as_u64() {
            Some(0) => None,
            Some(version) => Some(version),
            None => {
                return Err(Error::InvalidBody(format!(
                    "\"version\" must be a non-negative integer, not {version}"
                )))
            }
        },
    };
    // A double may have been an integer past 64 bits: read the value's digits from the text.
    let compact = if holds_a_double(&value) {
        let text =
            std::str::from_utf8(body).map_err(|error| Error::MalformedJson(error.to_string()))?;
        let document = ExactJson::parse(text).map_err(json_error)?;
        match document.member("value") {
            Some(exact) => exact.compact(),
            None => compact_json(&value),
        }
    } else {
        compact_json(&value)
    };
    Ok((compact, version))
}

pub(crate) fn json_error(error: serde_json::Error) -> Error {
    // serde_json stops at 128 levels of nesting (no stack overflow) and says so only in text.
    let message = error.to_string();
    if message.contains("recursion limit exceeded") {
        Error::JsonTooDeep(message)
    } else {
        Error::MalformedJson(message)
    }
}

/// Whether the request's `Content-Type` is `application/octet-stream` (parameters ignored).
pub fn is_octet_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case(OCTET_STREAM))
}

/// Whether the request's `Accept` asks for raw bytes: it names `application/octet-stream` with
/// a quality above 0 and at least the quality it gives JSON (`application/json`, else
/// `application/*`, else `*/*`: the most specific range decides, RFC 9110 12.5.1; a tie goes
/// to the type named). Before, any non-zero quality chose raw bytes, even below JSON's
/// (`application/octet-stream;q=0.1, application/json`).
pub fn accepts_octet_stream(headers: &HeaderMap) -> bool {
    // The best quality per specificity: [octet-stream], and JSON's [exact, application/*, */*].
    let mut raw: Option<f32> = None;
    let mut json: [Option<f32>; 3] = [None; 3];
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for media_range in ranges {
        let mut parts = media_range.split(';');
        let media_type = parts.next().unwrap_or_default().trim();
        let quality = parts
            .filter_map(|parameter| parameter.trim().strip_prefix("q="))
            .find_map(|quality| quality.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = if media_type.eq_ignore_ascii_case(OCTET_STREAM) {
            &mut raw
        } else if media_type.eq_ignore_ascii_case("application/json") {
            &mut json[0]
        } else if media_type.eq_ignore_ascii_case("application/*") {
            &mut json[1]
        } else if media_type == "*/*" {
            &mut json[2]
        } else {
            continue;
        };
        *slot = Some(slot.map_or(quality, |best: f32| best.max(quality)));
    }
    let json = json.into_iter().flatten().next().unwrap_or(0.0);
    raw.is_some_and(|raw| raw > 0.0 && raw >= json)
}

/// The media type of raw values.
pub const OCTET_STREAM: &str = "application/octet-stream";

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderValue;

    fn value_from_put_body(body: &[u8]) -> Result<Vec<u8>> {
        Ok(put_body(body)?.0)
    }

    #[test]
    fn put_bodies_yield_compact_values_in_member_order() {
        assert_eq!(
            value_from_put_body(br#"{"value": "myvalue"}"#).unwrap(),
            br#""myvalue""#
        );
        assert_eq!(
            value_from_put_body(br#" {"value": {"b": 1, "a": [true, null]}, "x": 0} "#).unwrap(),
            br#"{"b":1,"a":[true,null]}"#
        );
        assert_eq!(value_from_put_body(br#"{"value": null}"#).unwrap(), b"null");
    }

    #[test]
    fn put_bodies_may_carry_a_version() {
        assert_eq!(put_body(br#"{"value": 1}"#).unwrap(), (b"1".to_vec(), None));
        assert_eq!(
            put_body(br#"{"value": 1, "version": 3}"#).unwrap(),
            (b"1".to_vec(), Some(3))
        );
        for none in [
            r#"{"value": 1, "version": 0}"#,
            r#"{"value": 1, "version": null}"#,
        ] {
            assert_eq!(put_body(none.as_bytes()).unwrap().1, None);
        }
        for bad in [
            r#"{"value": 1, "version": -1}"#,
            r#"{"value": 1, "version": "2"}"#,
        ] {
            assert!(matches!(
                put_body(bad.as_bytes()),
                Err(Error::InvalidBody(_))
            ));
        }
    }

    #[test]
    fn bad_put_bodies_are_classified() {
        assert!(matches!(
            value_from_put_body(b"{"),
            Err(Error::MalformedJson(_))
        ));
        assert!(matches!(
            value_from_put_body(br#"{"value":1} x"#),
            Err(Error::MalformedJson(_))
        ));
        assert!(matches!(
            value_from_put_body(b""),
            Err(Error::MalformedJson(_))
        ));
        assert!(matches!(
            value_from_put_body(br#"{"valu":1}"#),
            Err(Error::MissingValue)
        ));
        assert!(matches!(
            value_from_put_body(b"[1]"),
            Err(Error::MissingValue)
        ));
        let deep = format!(
            "{{\"value\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(
            value_from_put_body(deep.as_bytes()),
            Err(Error::JsonTooDeep(_))
        ));
    }

    #[test]
    fn media_types_are_matched_loosely() {
        let mut headers = HeaderMap::new();
        assert!(!is_octet_stream(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/Octet-Stream; x=1"),
        );
        assert!(is_octet_stream(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, application/octet-stream;q=0.5"),
        );
        assert!(accepts_octet_stream(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/octet-stream;q=0"),
        );
        assert!(!accepts_octet_stream(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!accepts_octet_stream(&headers));
        // Qualities decide, the most specific range JSON matches counting for it.
        for (accept, raw) in [
            ("application/octet-stream;q=0.1, application/json", false),
            ("application/octet-stream;q=0.5, */*", false),
            (
                "application/octet-stream;q=0.5, application/*;q=0.4, */*",
                true,
            ),
            ("application/json;q=0.5, application/octet-stream", true),
            ("application/json, application/octet-stream", true),
            (
                "application/octet-stream; q=0.9, application/json; q=0.8",
                true,
            ),
            ("application/octet-stream;q=0.001, text/html", true),
            ("application/octet-stream;q=x", true),
        ] {
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
            assert_eq!(accepts_octet_stream(&headers), raw, "{accept}");
        }
    }

    #[test]
    fn a_coded_body_is_refused_and_identity_is_not() {
        let mut headers = HeaderMap::new();
        assert!(check_content_encoding(&headers).is_ok());
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("Identity"),
        );
        assert!(check_content_encoding(&headers).is_ok());
        for coded in ["gzip", "identity, br", "x-custom"] {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coded));
            let error = check_content_encoding(&headers).unwrap_err();
            assert_eq!(
                error.status(),
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{coded}"
            );
        }
        headers.remove(header::CONTENT_ENCODING);
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(check_content_encoding(&headers).is_ok());
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        let error = check_content_encoding(&headers).unwrap_err();
        assert_eq!(error.status(), http::StatusCode::NOT_IMPLEMENTED);
    }
}
