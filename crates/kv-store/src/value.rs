//! A value as the store keeps it: its kind (JSON text or raw bytes) and its bytes.

/// The kind byte of a JSON value.
const KIND_JSON: u8 = 1;
/// The kind byte of a raw value.
const KIND_RAW: u8 = 2;

/// How a value's bytes are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// Compact JSON text, as serde_json writes it.
    Json,
    /// Opaque bytes.
    Raw,
}

impl ValueKind {
    /// The byte stored for this kind in entries and in the map.
    pub fn to_byte(self) -> u8 {
        match self {
            ValueKind::Json => KIND_JSON,
            ValueKind::Raw => KIND_RAW,
        }
    }

    /// The kind stored as `byte`, if it is one.
    pub fn from_byte(byte: u8) -> Option<ValueKind> {
        match byte {
            KIND_JSON => Some(ValueKind::Json),
            KIND_RAW => Some(ValueKind::Raw),
            _ => None,
        }
    }
}

/// A value as the store keeps it: its kind and its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Value {
    /// How to read `bytes`.
    pub kind: ValueKind,
    /// The value itself (compact JSON text for [`ValueKind::Json`]).
    pub bytes: Vec<u8>,
}

impl Value {
    /// A JSON value from its (compact) JSON text. The store does not parse it.
    pub fn json(text: impl Into<Vec<u8>>) -> Value {
        Value {
            kind: ValueKind::Json,
            bytes: text.into(),
        }
    }

    /// A raw byte value.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Value {
        Value {
            kind: ValueKind::Raw,
            bytes: bytes.into(),
        }
    }
}
