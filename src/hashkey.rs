//! The key of `status.dataHash`: an HMAC-SHA256 key the operator keeps in a
//! Secret of its own namespace, so that someone who can read a binding but
//! not its Secret cannot confirm a guessed value offline.

use std::collections::BTreeMap;
use std::fmt;

use crate::value::SecretValue;

/// The dataHash key. `Debug` never prints it.
#[derive(Clone)]
pub struct HashKey(ring::hmac::Key);

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

impl HashKey {
    /// A key from its bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    /// `hmac-sha256:<hex>` over the keys and values (length-prefixed, in key order).
    pub fn data_hash(&self, data: &BTreeMap<String, SecretValue>) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        for (k, v) in data {
            ctx.update(&(k.len() as u64).to_le_bytes());
            ctx.update(k.as_bytes());
            ctx.update(&(v.len() as u64).to_le_bytes());
            ctx.update(v.expose().as_bytes());
        }
        let hex: String = ctx
            .sign()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("hmac-sha256:{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretValue::new(v.to_string())))
            .collect()
    }

    #[test]
    fn hash_depends_on_the_key_and_the_data() {
        let a = HashKey::new(b"key-a");
        let b = HashKey::new(b"key-b");
        let d = data(&[("K", "v1")]);
        assert_eq!(a.data_hash(&d), a.data_hash(&d));
        assert_ne!(a.data_hash(&d), b.data_hash(&d));
        assert_ne!(a.data_hash(&d), a.data_hash(&data(&[("K", "v2")])));
        // Length prefixes: moving a byte between key and value changes the hash.
        assert_ne!(
            a.data_hash(&data(&[("ab", "c")])),
            a.data_hash(&data(&[("a", "bc")]))
        );
        assert!(a.data_hash(&d).starts_with("hmac-sha256:"));
        assert_eq!(format!("{a:?}"), "HashKey(<redacted>)");
    }
}
