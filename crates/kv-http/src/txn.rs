//! `POST /txn`: etcd's transaction over JSON — compares, then the `success` or `failure`
//! operations — carried out as one log record and answered with its outcome. The JSON shapes
//! are in `docs/http-api.md`.

use std::error::Error as StdError;

use base64::Engine as _;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use kv_store::{
    Command, Compare, CompareTarget, KeyMeta, KeyValue, Op, OpResponse, Outcome, Relation, Txn,
    TxnInvalid, TxnOp, Value,
};
use serde_json::{Map, Value as Json};

use crate::body;
use crate::conditions::{form, request_ids, IDEMPOTENT_REPLAYED};
use crate::error::{json_response, Error, Result};
use crate::gate::require_leader;
use crate::json_text::{compact_json, holds_a_double, ExactJson};
use crate::options::KEYS_LIMIT_DEFAULT;
use crate::params::acks_parameter;
use crate::state::AppState;
use crate::values::write_value;
use crate::writes::{execute, Executed};

/// `POST /txn`: parses the body, runs the transaction as one entry (on the leader; a follower
/// answers 307), answers `{"succeeded","revision","responses":[…]}` (200 whatever the verdict).
pub async fn txn<B>(state: &AppState, parts: &Parts, body: B) -> Result<Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    require_leader(state, parts)?;
    let acks = acks_parameter(parts)?;
    // A transaction's conditions are its compares; the headers would be silently ignored
    // (before, a txn sent with a failing If-Match was applied).
    for name in [http::header::IF_MATCH, http::header::IF_NONE_MATCH] {
        if parts.headers.contains_key(&name) {
            return Err(Error::InvalidHeader(format!(
                "{name} does not apply to POST /txn: put the condition in its compare"
            )));
        }
    }
    let bytes = body::read_body(body, &parts.headers, &state.options).await?;
    let txn = parse_txn(&bytes, state.options.key_bytes_max)?;
    txn.check().map_err(|invalid| match invalid {
        TxnInvalid::TooLarge { .. } => Error::TxnTooLarge(invalid.to_string()),
        other => Error::InvalidTxn(other.to_string()),
    })?;
    let query = parts.uri.query().unwrap_or_default();
    let request = request_ids(query, &parts.headers, form::TXN)?;
    let command = Command {
        op: Op::Txn(txn),
        request,
    };
    let executed = execute(state, command, acks, true)
        .await
        .map_err(|error| crate::gate::or_to_the_new_leader(state, parts, error))?;
    txn_answer(&executed)
}

/// The answer to a transaction from its outcome (a retry's too, with
/// `Idempotent-Replayed: true` and its reads elided).
pub(crate) fn txn_answer(executed: &Executed) -> Result<Response<Full<Bytes>>> {
    let outcome = executed
        .outcome
        .as_ref()
        .ok_or_else(|| Error::Internal("a transaction answered without its outcome".to_owned()))?;
    let mut response = json_response(StatusCode::OK, outcome_json(outcome));
    if executed.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `{"succeeded","revision","responses":[…][,"failed_compare":{…}]}`.
pub(crate) fn outcome_json(outcome: &Outcome) -> Vec<u8> {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(
        format!(
            r#"{{"succeeded":{},"revision":{},"responses":["#,
            outcome.succeeded, outcome.revision
        )
        .as_bytes(),
    );
    for (index, response) in outcome.responses.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        write_response(&mut body, response);
    }
    body.push(b']');
    if let Some(failed) = &outcome.failed_compare {
        body.extend_from_slice(
            format!(r#","failed_compare":{{"index":{},"key":"#, failed.index).as_bytes(),
        );
        write_text(&mut body, &failed.key);
        body.extend_from_slice(br#","current":"#);
        match failed.current {
            Some(meta) => {
                body.push(b'{');
                write_meta(&mut body, meta);
                body.push(b'}');
            }
            None => body.extend_from_slice(b"null"),
        }
        body.push(b'}');
    }
    body.push(b'}');
    body
}

fn write_response(body: &mut Vec<u8>, response: &OpResponse) {
    match response {
        OpResponse::Put { key, meta } => {
            body.extend_from_slice(br#"{"put":{"key":"#);
            write_text(body, key);
            body.push(b',');
            write_meta(body, *meta);
            body.extend_from_slice(b"}}");
        }
        OpResponse::Delete { key, deleted } => {
            body.extend_from_slice(br#"{"delete":{"key":"#);
            write_text(body, key);
            body.extend_from_slice(format!(r#","deleted":{}}}}}"#, u8::from(*deleted)).as_bytes());
        }
        OpResponse::Get { key, found } => {
            body.extend_from_slice(br#"{"get":"#);
            match found {
                Some(cell) => write_cell(body, cell),
                None => {
                    body.extend_from_slice(br#"{"key":"#);
                    write_text(body, key);
                    body.extend_from_slice(br#","found":false}"#);
                }
            }
            body.push(b'}');
        }
        OpResponse::Range {
            prefix,
            found,
            more,
        } => {
            body.extend_from_slice(br#"{"range":{"prefix":"#);
            write_text(body, prefix);
            body.extend_from_slice(br#","kvs":["#);
            for (index, cell) in found.iter().enumerate() {
                if index > 0 {
                    body.push(b',');
                }
                write_cell(body, cell);
            }
            body.extend_from_slice(
                format!(r#"],"count":{},"more":{more}}}}}"#, found.len()).as_bytes(),
            );
        }
        OpResponse::Elided => body.extend_from_slice(br#"{"elided":true}"#),
    }
}

/// `{"key","found":true,"value"[,"encoding"],"version","mod_revision","create_revision"}`.
fn write_cell(body: &mut Vec<u8>, cell: &KeyValue) {
    body.extend_from_slice(br#"{"key":"#);
    write_text(body, cell.key());
    body.extend_from_slice(br#","found":true,"value":"#);
    write_value(body, cell.value_kind(), cell.value_bytes());
    body.push(b',');
    write_meta(body, cell.meta());
    body.push(b'}');
}

fn write_meta(body: &mut Vec<u8>, meta: KeyMeta) {
    body.extend_from_slice(
        format!(
            r#""version":{},"mod_revision":{},"create_revision":{}"#,
            meta.version, meta.mod_revision, meta.create_revision
        )
        .as_bytes(),
    );
}

/// A key as a JSON string (keys are UTF-8; lossily otherwise).
fn write_text(body: &mut Vec<u8>, bytes: &[u8]) {
    serde_json::to_writer(body, &String::from_utf8_lossy(bytes)).expect("writing to a Vec");
}

/// Parses a transaction body (see `docs/http-api.md`); every problem is an
/// [`Error::InvalidTxn`] naming where it is.
pub(crate) fn parse_txn(bytes: &[u8], key_bytes_max: usize) -> Result<Txn> {
    let document: Json = serde_json::from_slice(bytes).map_err(body::json_error)?;
    // Values keep integers past 64 bits digit for digit (`json_text.rs`).
    let exact = if holds_a_double(&document) {
        let text =
            std::str::from_utf8(bytes).map_err(|error| Error::MalformedJson(error.to_string()))?;
        Some(ExactJson::parse(text).map_err(body::json_error)?)
    } else {
        None
    };
    let exact_items = |name: &str| -> &[ExactJson] {
        exact
            .as_ref()
            .and_then(|document| document.member(name))
            .map_or(&[], ExactJson::items)
    };
    let Json::Object(mut members) = document else {
        return Err(invalid("the body must be a JSON object"));
    };
    let mut list = |name: &str| -> Result<Vec<Json>> {
        match members.remove(name) {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::Array(items)) => Ok(items),
            Some(_) => Err(invalid(format!("\"{name}\" must be an array"))),
        }
    };
    let compares = list("compare")?;
    let success = list("success")?;
    let failure = list("failure")?;
    if let Some(name) = members.keys().next() {
        return Err(invalid(format!(
            "unknown member \"{name}\" (expected compare, success, failure)"
        )));
    }
    let key = |member: &Json, place: &str| -> Result<Vec<u8>> {
        let key = member
            .as_str()
            .ok_or_else(|| invalid(format!("{place}: \"key\" must be a string")))?;
        if key.is_empty() || key.len() > key_bytes_max {
            return Err(invalid(format!(
                "{place}: a key must be 1 to {key_bytes_max} bytes"
            )));
        }
        Ok(key.as_bytes().to_vec())
    };
    let exact_compares = exact_items("compare");
    let compares = compares
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let place = format!("compare[{index}]");
            parse_compare(item, exact_compares.get(index), &place, &key)
        })
        .collect::<Result<Vec<_>>>()?;
    let ops = |items: &[Json], branch: &str| -> Result<Vec<TxnOp>> {
        let exact_ops = exact_items(branch);
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let place = format!("{branch}[{index}]");
                parse_op(item, exact_ops.get(index), &place, &key)
            })
            .collect()
    };
    Ok(Txn {
        compares,
        success: ops(&success, "success")?,
        failure: ops(&failure, "failure")?,
    })
}

fn invalid(detail: impl Into<String>) -> Error {
    Error::InvalidTxn(detail.into())
}

type KeyParser<'a> = dyn Fn(&Json, &str) -> Result<Vec<u8>> + 'a;

fn object<'a>(item: &'a Json, place: &str) -> Result<&'a Map<String, Json>> {
    item.as_object()
        .ok_or_else(|| invalid(format!("{place} must be an object")))
}

/// `exact` is the same compare read by [`ExactJson`], when the body holds a double.
fn parse_compare(
    item: &Json,
    exact: Option<&ExactJson>,
    place: &str,
    key: &KeyParser<'_>,
) -> Result<Compare> {
    let members = object(item, place)?;
    let known = [
        "key",
        "target",
        "result",
        "value",
        "value_base64",
        "version",
        "create_revision",
        "mod_revision",
    ];
    if let Some(name) = members.keys().find(|name| !known.contains(&name.as_str())) {
        return Err(invalid(format!("{place}: unknown member \"{name}\"")));
    }
    let key = key(members.get("key").unwrap_or(&Json::Null), place)?;
    let relation = match members.get("result").and_then(Json::as_str) {
        Some("=" | "==" | "EQUAL") => Relation::Equal,
        Some("!=" | "NOT_EQUAL") => Relation::NotEqual,
        Some("<" | "LESS") => Relation::Less,
        Some(">" | "GREATER") => Relation::Greater,
        _ => {
            return Err(invalid(format!(
                "{place}: \"result\" must be one of \"=\", \"!=\", \"<\", \">\""
            )))
        }
    };
    let number = |name: &str| -> Result<u64> {
        match members.get(name) {
            None => Err(invalid(format!(
                "{place}: the target {name:?} needs its operand \"{name}\""
            ))),
            Some(operand) => operand.as_u64().ok_or_else(|| {
                invalid(format!(
                    "{place}: \"{name}\" must be a non-negative integer"
                ))
            }),
        }
    };
    let target_name = members.get("target").and_then(Json::as_str);
    // One operand, the target's own: another target's was ignored before, and a compare
    // carrying two reads as asking for both.
    let own: &[&str] = match target_name {
        Some("value" | "VALUE") => &["value", "value_base64"],
        Some("version" | "VERSION") => &["version"],
        Some("create_revision" | "CREATE") => &["create_revision"],
        Some("mod_revision" | "MOD") => &["mod_revision"],
        _ => &[],
    };
    let operands = [
        "value",
        "value_base64",
        "version",
        "create_revision",
        "mod_revision",
    ];
    if let (Some(target), Some(other)) = (
        target_name,
        operands
            .iter()
            .find(|name| !own.contains(name) && members.contains_key(**name)),
    ) {
        return Err(invalid(format!(
            "{place}: \"{other}\" is no operand of the target {target:?} (a compare has one \
             target and its one operand)"
        )));
    }
    let target = match target_name {
        Some("value" | "VALUE") => CompareTarget::Value(parse_value(members, exact, place)?),
        Some("version" | "VERSION") => CompareTarget::Version(number("version")?),
        Some("create_revision" | "CREATE") => {
            CompareTarget::CreateRevision(number("create_revision")?)
        }
        Some("mod_revision" | "MOD") => CompareTarget::ModRevision(number("mod_revision")?),
        _ => {
            return Err(invalid(format!(
                "{place}: \"target\" must be one of \"value\", \"version\", \"create_revision\", \"mod_revision\""
            )))
        }
    };
    Ok(Compare {
        key,
        relation,
        target,
    })
}

/// `"value": <any JSON>` (stored as compact JSON; from `exact`, the same object read by
/// [`ExactJson`], when given), or `"value_base64": "<bytes>"` (raw).
fn parse_value(
    members: &Map<String, Json>,
    exact: Option<&ExactJson>,
    place: &str,
) -> Result<Value> {
    match (members.get("value"), members.get("value_base64")) {
        (Some(value), None) => Ok(Value::json(
            match exact.and_then(|exact| exact.member("value")) {
                Some(exact) => exact.compact(),
                None => compact_json(value),
            },
        )),
        (None, Some(Json::String(encoded))) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Value::raw)
            .map_err(|error| invalid(format!("{place}: \"value_base64\" is not base64: {error}"))),
        _ => Err(invalid(format!(
            "{place}: give \"value\" (JSON) or \"value_base64\" (raw bytes), one of them"
        ))),
    }
}

/// `exact` is the same operation read by [`ExactJson`], when the body holds a double.
fn parse_op(
    item: &Json,
    exact: Option<&ExactJson>,
    place: &str,
    key: &KeyParser<'_>,
) -> Result<TxnOp> {
    let members = object(item, place)?;
    let mut entries = members.iter();
    let (Some((name, inner)), None) = (entries.next(), entries.next()) else {
        return Err(invalid(format!(
            "{place} must have exactly one of put, delete, get, range"
        )));
    };
    let place = format!("{place}.{name}");
    let inner = object(inner, &place)?;
    let allowed: &[&str] = match name.as_str() {
        "put" => &["key", "value", "value_base64"],
        "delete" | "get" => &["key"],
        "range" => &["prefix", "limit"],
        other => {
            return Err(invalid(format!(
                "{place}: unknown operation \"{other}\" (expected put, delete, get, range)"
            )))
        }
    };
    if let Some(extra) = inner
        .keys()
        .find(|member| !allowed.contains(&member.as_str()))
    {
        return Err(invalid(format!("{place}: unknown member \"{extra}\"")));
    }
    let key = || key(inner.get("key").unwrap_or(&Json::Null), &place);
    Ok(match name.as_str() {
        "put" => TxnOp::Put {
            key: key()?,
            value: parse_value(inner, exact.and_then(|exact| exact.member(name)), &place)?,
        },
        "delete" => TxnOp::Delete { key: key()? },
        "get" => TxnOp::Get { key: key()? },
        _ => TxnOp::Range {
            prefix: match inner.get("prefix") {
                None => Vec::new(),
                Some(Json::String(prefix)) => prefix.as_bytes().to_vec(),
                Some(_) => return Err(invalid(format!("{place}: \"prefix\" must be a string"))),
            },
            limit: match inner.get("limit") {
                None => KEYS_LIMIT_DEFAULT as u32,
                Some(limit) => limit
                    .as_u64()
                    .and_then(|limit| u32::try_from(limit).ok())
                    .ok_or_else(|| {
                        invalid(format!("{place}: \"limit\" must be a non-negative integer"))
                    })?,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_transaction_parses() {
        let body = br#"{
            "compare": [
                {"key": "a", "target": "version", "result": ">", "version": 0},
                {"key": "b", "target": "value", "result": "=", "value": {"x": [1]}},
                {"key": "c", "target": "value", "result": "!=", "value_base64": "AAE="},
                {"key": "d", "target": "MOD", "result": "LESS", "mod_revision": 9}
            ],
            "success": [{"put": {"key": "a", "value": 1}}, {"range": {"prefix": "p/", "limit": 2}}],
            "failure": [{"get": {"key": "a"}}, {"delete": {"key": "b"}}, {"range": {}}]
        }"#;
        let txn = parse_txn(body, 100).unwrap();
        assert_eq!(txn.compares.len(), 4);
        assert_eq!(
            txn.compares[1].target,
            CompareTarget::Value(Value::json(r#"{"x":[1]}"#))
        );
        assert_eq!(
            txn.compares[2].target,
            CompareTarget::Value(Value::raw(vec![0, 1]))
        );
        assert_eq!(txn.compares[3].relation, Relation::Less);
        assert_eq!(
            txn.success[1],
            TxnOp::Range {
                prefix: b"p/".to_vec(),
                limit: 2
            }
        );
        assert_eq!(
            txn.failure[2],
            TxnOp::Range {
                prefix: Vec::new(),
                limit: KEYS_LIMIT_DEFAULT as u32
            }
        );
        assert_eq!(parse_txn(b"{}", 100).unwrap(), Txn::default());
    }

    #[test]
    fn bad_transactions_say_where() {
        for (body, place) in [
            (r#"[]"#, "object"),
            (r#"{"compares": []}"#, "compares"),
            (
                r#"{"compare": [{"key": "a", "target": "version", "result": "~", "version": 1}]}"#,
                "compare[0]",
            ),
            (
                r#"{"compare": [{"key": "a", "target": "version", "result": "=", "version": -1}]}"#,
                "compare[0]",
            ),
            (
                r#"{"compare": [{"key": "", "target": "version", "result": "=", "version": 1}]}"#,
                "compare[0]",
            ),
            (
                r#"{"compare": [{"key": "a", "target": "value", "result": "="}]}"#,
                "compare[0]",
            ),
            (r#"{"success": [{"put": {"key": "a"}}]}"#, "success[0].put"),
            (
                r#"{"success": [{"put": {"key": "a", "value": 1}, "get": {"key": "a"}}]}"#,
                "success[0]",
            ),
            (
                r#"{"failure": [{"increment": {"key": "a"}}]}"#,
                "failure[0].increment",
            ),
            (
                r#"{"failure": [{"get": {"key": "a", "x": 1}}]}"#,
                "failure[0].get",
            ),
            (
                r#"{"failure": [{"range": {"limit": "ten"}}]}"#,
                "failure[0].range",
            ),
        ] {
            match parse_txn(body.as_bytes(), 100) {
                Err(Error::InvalidTxn(detail)) => {
                    assert!(detail.contains(place), "{body}: {detail}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(parse_txn(b"{", 100), Err(Error::MalformedJson(_))));
    }
}
