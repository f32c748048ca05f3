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
            ctx.update(v.as_bytes());
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

use crate::crd::names::HASH_KEY_SECRET as SECRET_NAME;
/// Data key of the key bytes in that Secret.
pub const DATA_KEY: &str = "key";
/// Length of a key kvsync makes, and the least it accepts: HMAC-SHA256's
/// output size (RFC 2104 advises no shorter key).
pub const KEY_LEN: usize = 32;

/// Why the dataHash key could not be loaded or made. Never carries the key.
#[derive(Debug, thiserror::Error)]
pub enum HashKeyError {
    /// The API server refused or failed a request on the key Secret.
    #[error(
        "cannot {action} Secret {namespace}/{SECRET_NAME} (the dataHash key): {source}{hint}",
        hint = rbac_hint(.source, .namespace)
    )]
    Kube {
        /// `read` or `create`.
        action: &'static str,
        /// The operator's namespace.
        namespace: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists but its `key` is missing or too short to be a key.
    #[error(
        "Secret {namespace}/{SECRET_NAME} holds no usable dataHash key ({found}; at least {KEY_LEN} bytes needed): \
         delete it (kubectl -n {namespace} delete secret {SECRET_NAME}) and restart kvsync, which makes a new one"
    )]
    Unusable {
        /// The operator's namespace.
        namespace: String,
        /// What was found instead, e.g. `no data key "key"` or `12 bytes`.
        found: String,
    },
    /// The system's random source failed.
    #[error("cannot draw a random dataHash key: the system random source failed")]
    Random,
}

fn rbac_hint(e: &kube::Error, namespace: &str) -> String {
    match e {
        kube::Error::Api(s) if s.is_forbidden() => format!(
            " — grant kvsync get and create on secrets in namespace {namespace} (see README RBAC)"
        ),
        _ => String::new(),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The key every replica shares: read from Secret `kvsync-hash-key` in
/// `namespace`, or made there (32 random bytes) on the first start. When two
/// replicas start at once, the one whose create loses (409) reads the
/// winner's key, so both hash alike. An unusable Secret is an error rather
/// than replaced: replacing it would silently change every binding's
/// dataHash, and the user may have put the Secret there on purpose.
pub async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
) -> Result<HashKey, HashKeyError> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{ObjectMeta, PostParams};

    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let kube_err = |action, source| HashKeyError::Kube {
        action,
        namespace: namespace.to_string(),
        source,
    };
    match api.get(SECRET_NAME).await {
        Ok(s) => return key_of(&s, namespace),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(kube_err("read", e)),
    }
    let mut bytes = [0u8; KEY_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| HashKeyError::Random)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    crate::crd::names::MANAGED_BY_LABEL.to_string(),
                    crate::crd::names::MANAGED_BY.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        // Immutable: an edit would change every dataHash at once; deleting
        // it (the documented reset) stays possible.
        immutable: Some(true),
        type_: Some("Opaque".into()),
        data: Some([(DATA_KEY.to_string(), ByteString(bytes.to_vec()))].into()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(namespace, secret = SECRET_NAME, "made a new dataHash key");
            Ok(HashKey::new(&bytes))
        }
        Err(e) if is_status(&e, 409) => {
            let s = api
                .get(SECRET_NAME)
                .await
                .map_err(|e| kube_err("read", e))?;
            key_of(&s, namespace)
        }
        Err(e) => Err(kube_err("create", e)),
    }
}

fn key_of(
    s: &k8s_openapi::api::core::v1::Secret,
    namespace: &str,
) -> Result<HashKey, HashKeyError> {
    let unusable = |found: String| HashKeyError::Unusable {
        namespace: namespace.to_string(),
        found,
    };
    match s.data.as_ref().and_then(|d| d.get(DATA_KEY)) {
        None => Err(unusable(format!("no data key {DATA_KEY:?}"))),
        Some(k) if k.0.len() < KEY_LEN => Err(unusable(format!("{} bytes", k.0.len()))),
        Some(k) => Ok(HashKey::new(&k.0)),
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
