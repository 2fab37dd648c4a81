//! The key space: key names, the value written under each key, and request bodies.
//!
//! Key `index` is named `key-{index}` with the index zero-padded so that every key is exactly
//! `key_size_bytes` long (`key-000042` for 10-byte keys). The value of a key is its name
//! repeated and cut to `value_size_bytes`, so every writer writes the same value under the same
//! key and a reader can check what it got back. Keys and values are plain ASCII: nothing needs
//! escaping in a URL path or a JSON string.

use bytes::Bytes;

use crate::BenchError;

/// Every key name starts with this prefix.
pub const KEY_PREFIX: &str = "key-";
/// The largest key kv-bench generates.
pub const KEY_SIZE_BYTES_MAX: usize = 4096;
/// The largest value kv-bench generates.
pub const VALUE_SIZE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The largest key space kv-bench draws from.
pub const KEY_COUNT_MAX: u64 = 1_000_000_000;

/// A fixed set of `key_count` keys of equal size, each with its own deterministic value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    key_count: u64,
    key_size_bytes: usize,
    value_size_bytes: usize,
}

impl KeySpace {
    /// Checks that `key_count` keys fit in names of `key_size_bytes` and the sizes are in range.
    pub fn new(
        key_count: u64,
        key_size_bytes: usize,
        value_size_bytes: usize,
    ) -> Result<KeySpace, BenchError> {
        let invalid = |reason: String| BenchError::InvalidConfig { reason };
        if key_count == 0 || key_count > KEY_COUNT_MAX {
            return Err(invalid(format!(
                "--keys must be between 1 and {KEY_COUNT_MAX}, got {key_count}"
            )));
        }
        let key_size_bytes_min = KEY_PREFIX.len() + decimal_digit_count(key_count - 1);
        if key_size_bytes < key_size_bytes_min || key_size_bytes > KEY_SIZE_BYTES_MAX {
            return Err(invalid(format!(
                "--key-size must be between {key_size_bytes_min} (to number {key_count} keys) \
                 and {KEY_SIZE_BYTES_MAX}, got {key_size_bytes}"
            )));
        }
        if value_size_bytes > VALUE_SIZE_BYTES_MAX {
            return Err(invalid(format!(
                "--value-size must be at most {VALUE_SIZE_BYTES_MAX}, got {value_size_bytes}"
            )));
        }
        Ok(KeySpace {
            key_count,
            key_size_bytes,
            value_size_bytes,
        })
    }

    /// How many distinct keys there are.
    pub fn key_count(&self) -> u64 {
        self.key_count
    }

    /// The length of every key name.
    pub fn key_size_bytes(&self) -> usize {
        self.key_size_bytes
    }

    /// The length of every value.
    pub fn value_size_bytes(&self) -> usize {
        self.value_size_bytes
    }

    /// The name of key `key_index`, e.g. `key-000042`. `key_index` must be below `key_count`.
    pub fn key(&self, key_index: u64) -> String {
        debug_assert!(key_index < self.key_count);
        let index_width = self.key_size_bytes - KEY_PREFIX.len();
        format!("{KEY_PREFIX}{key_index:0index_width$}")
    }

    /// The value kv-bench writes under key `key_index`: the key name repeated, cut to size.
    pub fn value(&self, key_index: u64) -> String {
        let key = self.key(key_index);
        key.bytes()
            .cycle()
            .take(self.value_size_bytes)
            .map(char::from)
            .collect()
    }

    /// The JSON body of a PUT of key `key_index`: `{"value":"<value>"}`.
    pub fn put_body(&self, key_index: u64) -> Bytes {
        let value = self.value(key_index);
        let mut body = String::with_capacity(value.len() + 12);
        body.push_str("{\"value\":\"");
        body.push_str(&value);
        body.push_str("\"}");
        Bytes::from(body)
    }
}

fn decimal_digit_count(number: u64) -> usize {
    number.checked_ilog10().map_or(1, |log| log as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_to_size() {
        let key_space = KeySpace::new(10_000, 16, 100).unwrap();
        assert_eq!(key_space.key(0), "key-000000000000");
        assert_eq!(key_space.key(42), "key-000000000042");
        assert_eq!(key_space.key(9_999), "key-000000009999");
        for key_index in [0, 1, 9, 10, 9_999] {
            assert_eq!(key_space.key(key_index).len(), 16);
        }
    }

    #[test]
    fn smallest_key_size_is_prefix_plus_digits() {
        assert!(KeySpace::new(10_000, 8, 0).is_ok()); // key-9999
        assert!(matches!(
            KeySpace::new(10_001, 8, 0),
            Err(BenchError::InvalidConfig { .. })
        ));
        assert!(KeySpace::new(1, 5, 0).is_ok()); // key-0
        assert!(KeySpace::new(1, 4, 0).is_err());
        assert!(KeySpace::new(0, 16, 0).is_err());
        assert!(KeySpace::new(10, 16, VALUE_SIZE_BYTES_MAX + 1).is_err());
        assert!(KeySpace::new(10, KEY_SIZE_BYTES_MAX + 1, 1).is_err());
    }

    #[test]
    fn values_are_deterministic_and_sized() {
        let key_space = KeySpace::new(100, 6, 15).unwrap();
        assert_eq!(key_space.value(7), "key-07key-07key");
        assert_eq!(key_space.value(7), key_space.value(7));
        assert_ne!(key_space.value(7), key_space.value(8));
        assert_eq!(KeySpace::new(100, 6, 0).unwrap().value(3), "");
    }

    #[test]
    fn put_body_is_json_with_the_value() {
        let key_space = KeySpace::new(100, 8, 100).unwrap();
        let body = key_space.put_body(5);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["value"], key_space.value(5));
        assert_eq!(parsed["value"].as_str().unwrap().len(), 100);
    }

    #[test]
    fn digit_counts() {
        assert_eq!(decimal_digit_count(0), 1);
        assert_eq!(decimal_digit_count(9), 1);
        assert_eq!(decimal_digit_count(10), 2);
        assert_eq!(decimal_digit_count(u64::MAX), 20);
    }
}
