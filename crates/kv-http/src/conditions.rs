//! What a write request asks beyond "set this": its conditions (`If-Match`, `If-None-Match`,
//! the v1.5 body `version`), its idempotency ids (`client_id` + `request_id`, or an
//! `Idempotency-Key` header), and the *form* byte that names the request's shape in its log
//! record, so a retry or a status query can be answered in the same shape.

use http::{HeaderMap, HeaderName};
use kv_store::dedup::REQUEST_ID_BYTES_MAX;
use kv_store::{Compare, CompareTarget, KeyMeta, Relation, RequestIds};

use crate::error::{Error, Result};
use crate::percent::query_parameter;

/// Request forms, as stored in a record's request part (`docs/store-format.md`): the kind in
/// the low bits, the conditions a key write carried in the high bits (in the order their
/// compares are built: `If-Match`, `If-None-Match`, `version`).
pub(crate) mod form {
    /// `PUT /key/{key}`.
    pub const PUT: u8 = 1;
    /// `DELETE /key/{key}`.
    pub const DELETE: u8 = 2;
    /// `POST /txn`.
    pub const TXN: u8 = 3;
    /// The kind bits.
    pub const KIND_MASK: u8 = 0x0f;
    /// The write had `If-Match`.
    pub const IF_MATCH: u8 = 0x10;
    /// The write had `If-None-Match`.
    pub const IF_NONE_MATCH: u8 = 0x20;
    /// The PUT body had a `version`.
    pub const VERSION: u8 = 0x40;
}

/// The `Idempotency-Key` request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header on an answer repeated for a retried request.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The ids of an idempotent request, if it names itself: `client_id` and `request_id` query
/// parameters (both, as in the original project), or an `Idempotency-Key` header (client id
/// empty). Both ways at once, or only one of the two parameters, is a 400.
pub(crate) fn request_ids(
    query: &str,
    headers: &HeaderMap,
    form: u8,
) -> Result<Option<RequestIds>> {
    let parameter = |name| -> Result<Option<String>> {
        let Some(bytes) = query_parameter(query, name)? else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::InvalidQuery(format!("{name} is not UTF-8")))?;
        check_id(name, &text).map_err(Error::InvalidQuery)?;
        Ok(Some(text))
    };
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let header = match values.next() {
        None => None,
        Some(_) if values.next().is_some() => {
            return Err(Error::InvalidHeader(
                "Idempotency-Key is given more than once".to_owned(),
            ))
        }
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| {
                    Error::InvalidHeader("Idempotency-Key is not visible ASCII".to_owned())
                })?
                .to_owned();
            check_id("Idempotency-Key", &text).map_err(Error::InvalidHeader)?;
            Some(text)
        }
    };
    match (parameter("client_id")?, parameter("request_id")?, header) {
        (None, None, None) => Ok(None),
        (None, None, Some(key)) => Ok(Some(RequestIds {
            client_id: String::new(),
            request_id: key,
            form,
        })),
        (Some(client_id), Some(request_id), None) => Ok(Some(RequestIds {
            client_id,
            request_id,
            form,
        })),
        (_, _, Some(_)) => Err(Error::InvalidQuery(
            "give either client_id and request_id or an Idempotency-Key header, not both"
                .to_owned(),
        )),
        _ => Err(Error::InvalidQuery(
            "client_id and request_id go together".to_owned(),
        )),
    }
}

/// Why `text` is no request id (`name` is the parameter or header it came in), if it is not.
pub(crate) fn check_id(name: &str, text: &str) -> std::result::Result<(), String> {
    if text.is_empty() || text.len() > REQUEST_ID_BYTES_MAX {
        return Err(format!("{name} must be 1 to {REQUEST_ID_BYTES_MAX} bytes"));
    }
    Ok(())
}

/// An entity tag condition: `*` (any current value) or one value's `"<mod_revision>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    Any,
    Revision(u64),
}

/// The conditions of a key write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WriteConditions {
    /// `If-Match`: `*` the key exists; `"<rev>"` its mod_revision is rev.
    pub if_match: Option<Tag>,
    /// `If-None-Match`: `*` the key is absent; `"<rev>"` its mod_revision is not rev.
    pub if_none_match: Option<Tag>,
    /// The v1.5 body's `version`: the key's version is below it.
    pub version: Option<u64>,
}

/// Which condition a failed compare was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition {
    IfMatch,
    IfNoneMatch,
    Version,
}

impl WriteConditions {
    /// `If-Match` and `If-None-Match` from the headers (`version` comes from the body).
    /// A tag no key carries (`"0"`: revisions start at 1) is taken as RFC 9110 says of a tag
    /// that matches nothing, the absent key included: `If-Match: "0"` never holds (it
    /// created an absent key before, read as etcd's "mod_revision = 0"), and `If-None-Match:
    /// "0"` always holds (it failed on an absent key before), so it is no condition at all.
    /// `If-Match` compares strongly (RFC 9110, 13.1.1): a weak tag (`W/"7"`) matches nothing,
    /// as `"0"` (kvd sends only strong ones); `If-None-Match` compares weakly, so `W/"7"`
    /// there is `"7"`.
    pub fn from_headers(headers: &HeaderMap) -> Result<WriteConditions> {
        let if_none_match = tag(headers, http::header::IF_NONE_MATCH)?.map(|(tag, _)| tag);
        let if_match = tag(headers, http::header::IF_MATCH)?.map(|(tag, weak)| match weak {
            true => Tag::Revision(0),
            false => tag,
        });
        Ok(WriteConditions {
            if_match,
            if_none_match: if_none_match.filter(|tag| *tag != Tag::Revision(0)),
            version: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == WriteConditions::default()
    }

    /// The form bits for these conditions.
    pub fn form_bits(&self) -> u8 {
        let mut bits = 0;
        if self.if_match.is_some() {
            bits |= form::IF_MATCH;
        }
        if self.if_none_match.is_some() {
            bits |= form::IF_NONE_MATCH;
        }
        if self.version.is_some() {
            bits |= form::VERSION;
        }
        bits
    }

    /// The compares, in the order [`Condition::of`] reads them back.
    pub fn compares(&self, key: &[u8]) -> Vec<Compare> {
        let compare = |relation, target| Compare {
            key: key.to_vec(),
            relation,
            target,
        };
        let mut compares = Vec::new();
        match self.if_match {
            Some(Tag::Any) => compares.push(compare(Relation::Greater, CompareTarget::Version(0))),
            // No key is at revision 0 (an absent key compares as 0): nothing is below it.
            Some(Tag::Revision(0)) => {
                compares.push(compare(Relation::Less, CompareTarget::ModRevision(0)))
            }
            Some(Tag::Revision(revision)) => compares.push(compare(
                Relation::Equal,
                CompareTarget::ModRevision(revision),
            )),
            None => {}
        }
        match self.if_none_match {
            Some(Tag::Any) => compares.push(compare(Relation::Equal, CompareTarget::Version(0))),
            Some(Tag::Revision(revision)) => compares.push(compare(
                Relation::NotEqual,
                CompareTarget::ModRevision(revision),
            )),
            None => {}
        }
        if let Some(version) = self.version {
            compares.push(compare(Relation::Less, CompareTarget::Version(version)));
        }
        compares
    }
}

impl WriteConditions {
    /// For a read of the key's current value (`current`: its meta, `None` when absent), as
    /// RFC 9110 (13.2.2) orders them: the `If-Match` that does not hold, named (a 412), else
    /// whether `If-None-Match` matches (a 304 for a GET or HEAD).
    pub fn on_read(&self, current: Option<KeyMeta>) -> std::result::Result<bool, String> {
        let matches = |tag: Tag| match tag {
            Tag::Any => current.is_some(),
            Tag::Revision(revision) => current.is_some_and(|meta| meta.mod_revision == revision),
        };
        if let Some(tag) = self.if_match.filter(|tag| !matches(*tag)) {
            let wanted = match tag {
                Tag::Any => "the key to exist".to_owned(),
                Tag::Revision(revision) => format!("mod_revision {revision}"),
            };
            let is = match current {
                Some(meta) => format!("it is at mod_revision {}", meta.mod_revision),
                None => "it does not exist".to_owned(),
            };
            return Err(format!("If-Match wanted {wanted}; {is}"));
        }
        Ok(self.if_none_match.is_some_and(matches))
    }
}

impl Condition {
    /// Which condition the compare at `index` of a write of `form` was.
    pub fn of(form: u8, index: u32) -> Option<Condition> {
        let present = [
            (form::IF_MATCH, Condition::IfMatch),
            (form::IF_NONE_MATCH, Condition::IfNoneMatch),
            (form::VERSION, Condition::Version),
        ];
        present
            .into_iter()
            .filter(|(bit, _)| form & bit != 0)
            .nth(index as usize)
            .map(|(_, condition)| condition)
    }
}

/// One `If-Match`/`If-None-Match` header: `*`, or one entity tag `"<digits>"` (bare digits
/// accepted), and whether it was weak (`W/"<digits>"`). A list of tags is a 400: kvd's values
/// have one tag each.
fn tag(headers: &HeaderMap, name: HeaderName) -> Result<Option<(Tag, bool)>> {
    let mut values = headers.get_all(&name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        Error::InvalidHeader(format!(
            "{name} must be * or one entity tag \"<mod_revision>\" as GET sends in ETag"
        ))
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(Some((Tag::Any, false)));
    }
    let (text, weak) = match text.strip_prefix("W/") {
        Some(text) => (text, true),
        None => (text, false),
    };
    let digits = text
        .strip_prefix('"')
        .and_then(|text| text.strip_suffix('"'))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad());
    }
    digits
        .parse()
        .map(|revision| Some((Tag::Revision(revision), weak)))
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn entity_tags_parse_leniently_but_lists_do_not() {
        let mut headers = HeaderMap::new();
        for (text, expected) in [
            ("*", Tag::Any),
            ("\"12\"", Tag::Revision(12)),
            ("3", Tag::Revision(3)),
            // A weak tag never matches under If-Match's strong comparison.
            ("W/\"7\"", Tag::Revision(0)),
        ] {
            headers.insert(http::header::IF_MATCH, HeaderValue::from_static(text));
            assert_eq!(
                WriteConditions::from_headers(&headers).unwrap().if_match,
                Some(expected)
            );
        }
        headers.clear();
        headers.insert(
            http::header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"7\""),
        );
        assert_eq!(
            WriteConditions::from_headers(&headers)
                .unwrap()
                .if_none_match,
            Some(Tag::Revision(7)),
            "If-None-Match compares weakly"
        );
        for text in ["\"1\", \"2\"", "\"x\"", "\"\"", "-1"] {
            headers.insert(http::header::IF_NONE_MATCH, HeaderValue::from_static(text));
            assert!(WriteConditions::from_headers(&headers).is_err(), "{text}");
        }
    }

    #[test]
    fn failed_compares_map_back_to_their_condition() {
        let conditions = WriteConditions {
            if_match: None,
            if_none_match: Some(Tag::Any),
            version: Some(3),
        };
        let form = form::PUT | conditions.form_bits();
        assert_eq!(conditions.compares(b"k").len(), 2);
        assert_eq!(Condition::of(form, 0), Some(Condition::IfNoneMatch));
        assert_eq!(Condition::of(form, 1), Some(Condition::Version));
        assert_eq!(Condition::of(form, 2), None);
    }

    #[test]
    fn request_ids_come_from_the_query_or_the_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_ids("", &headers, 1).unwrap(), None);
        let ids = request_ids("client_id=c&request_id=r%201", &headers, 1)
            .unwrap()
            .unwrap();
        assert_eq!(
            (ids.client_id.as_str(), ids.request_id.as_str()),
            ("c", "r 1")
        );
        assert!(request_ids("client_id=c", &headers, 1).is_err());
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k-1"));
        let ids = request_ids("", &headers, 2).unwrap().unwrap();
        assert_eq!(
            (ids.client_id.as_str(), ids.request_id.as_str(), ids.form),
            ("", "k-1", 2)
        );
        assert!(request_ids("client_id=c&request_id=r", &headers, 1).is_err());
    }
}
