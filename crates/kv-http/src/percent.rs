//! Percent-decoding of path segments and query strings (RFC 3986), without allocating for
//! input that has nothing to decode.

use std::borrow::Cow;

use crate::error::{Error, Result};

/// Decodes `%XX` escapes. `plus_is_space` turns `+` into a space (query strings, HTML-form
/// style); path segments keep `+` as is. Fails on a `%` not followed by two hex digits, with
/// the error `invalid` makes of the reason ([`Error::InvalidKey`], [`Error::InvalidQuery`]).
pub fn percent_decode(
    text: &str,
    plus_is_space: bool,
    invalid: fn(String) -> Error,
) -> Result<Cow<'_, [u8]>> {
    let bytes = text.as_bytes();
    let needs_decoding = bytes.contains(&b'%') || (plus_is_space && bytes.contains(&b'+'));
    if !needs_decoding {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let high = bytes.get(index + 1).copied().and_then(hex_value);
                let low = bytes.get(index + 2).copied().and_then(hex_value);
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(invalid(format!("bad percent-escape at byte {index}")));
                };
                out.push(high << 4 | low);
                index += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    Ok(Cow::Owned(out))
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The decoded value of the `name=value` pair in a query string, if present. A bad escape is
/// an [`Error::InvalidQuery`], and so is a name given twice (`?acks=all&acks=leader`): which
/// one the client meant is not kvd's to guess (it took the first one before, silently).
pub fn query_parameter(query: &str, name: &str) -> Result<Option<Vec<u8>>> {
    if query.is_empty() {
        return Ok(None);
    }
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key, true, Error::InvalidQuery)?.as_ref() != name.as_bytes() {
            continue;
        }
        if found.is_some() {
            return Err(Error::InvalidQuery(format!(
                "{name} is given more than once"
            )));
        }
        found = Some(percent_decode(value, true, Error::InvalidQuery)?.into_owned());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_given_twice_is_refused() {
        assert_eq!(
            query_parameter("a=1&acks=all&b=2", "acks").unwrap(),
            Some(b"all".to_vec())
        );
        assert_eq!(query_parameter("a=1", "acks").unwrap(), None);
        for query in [
            "acks=all&acks=leader",
            "acks=all&acks=all",
            "acks&acks=all",
            "ac%6Bs=1&acks=2",
        ] {
            let error = query_parameter(query, "acks").unwrap_err();
            assert!(
                error.to_string().contains("acks is given more than once"),
                "{query}: {error}"
            );
        }
    }

    #[test]
    fn decodes_escapes_and_keeps_plain_text_borrowed() {
        assert!(matches!(
            percent_decode("key6", false, Error::InvalidKey),
            Ok(Cow::Borrowed(b"key6"))
        ));
        assert_eq!(
            percent_decode("a%2Fb%2fc", false, Error::InvalidKey)
                .unwrap()
                .as_ref(),
            b"a/b/c"
        );
        assert_eq!(
            percent_decode("%CE%BA", false, Error::InvalidKey)
                .unwrap()
                .as_ref(),
            "κ".as_bytes()
        );
        assert_eq!(
            percent_decode("a+b", false, Error::InvalidKey)
                .unwrap()
                .as_ref(),
            b"a+b"
        );
        assert_eq!(
            percent_decode("a+b", true, Error::InvalidKey)
                .unwrap()
                .as_ref(),
            b"a b"
        );
        assert_eq!(
            percent_decode("%00", false, Error::InvalidKey)
                .unwrap()
                .as_ref(),
            [0]
        );
    }

    #[test]
    fn rejects_broken_escapes() {
        for text in ["%", "%4", "%zz", "a%g0", "%%41"] {
            assert!(
                percent_decode(text, false, Error::InvalidKey).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn finds_query_parameters() {
        let query = "limit=5&prefix=a%2Fb+c&empty=&flag";
        assert_eq!(
            query_parameter(query, "prefix").unwrap(),
            Some(b"a/b c".to_vec())
        );
        assert_eq!(
            query_parameter(query, "limit").unwrap(),
            Some(b"5".to_vec())
        );
        assert_eq!(query_parameter(query, "empty").unwrap(), Some(Vec::new()));
        assert_eq!(query_parameter(query, "flag").unwrap(), Some(Vec::new()));
        assert_eq!(query_parameter(query, "missing").unwrap(), None);
        assert!(query_parameter("prefix=%zz", "prefix").is_err());
    }
}
