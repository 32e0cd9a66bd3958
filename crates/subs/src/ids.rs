//! Identities of subscriptions: the key of a statement, its hash and ids.

use patina_crr::SiteId;
use patina_node::{Params, Statement};

use crate::codec;

/// A subscription's identity: its SQL and bound parameters (no parameters
/// and an empty list of them are the same).
pub(crate) fn key_of(st: &Statement) -> String {
    let mut key = st.sql.trim().to_owned();
    match &st.params {
        Params::None => {}
        Params::Positional(v) if v.is_empty() => {}
        Params::Positional(values) => {
            key.push_str("\0p");
            key.push_str(&hex::encode(codec::encode(values)));
        }
        Params::Named(values) => {
            let mut values: Vec<_> = values.iter().collect();
            values.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, v) in values {
                key.push_str("\0n");
                key.push_str(name);
                key.push('=');
                key.push_str(&hex::encode(codec::encode(std::slice::from_ref(v))));
            }
        }
    }
    key
}

/// FNV-1a, 64 bits: stable across builds and platforms.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `corro-query-hash`: 16 hex characters.
pub(crate) fn hash_of(key: &str) -> String {
    format!("{:016x}", fnv1a(key.as_bytes()))
}

/// A random (v4) UUID, hyphenated.
pub fn new_id() -> String {
    let hex = SiteId::random().to_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use patina_crr::Value;

    #[test]
    fn ids_hashes_and_keys() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4', "version 4: {id}");
        assert_ne!(new_id(), id);
        let a = Statement::with_params("SELECT * FROM t WHERE a = ?", vec![Value::Integer(1)]);
        let b = Statement::with_params("SELECT * FROM t WHERE a = ?", vec![Value::Integer(2)]);
        assert_ne!(key_of(&a), key_of(&b));
        assert_eq!(key_of(&a), key_of(&a.clone()));
        let h = hash_of(&key_of(&a));
        assert_eq!(h.len(), 16);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
