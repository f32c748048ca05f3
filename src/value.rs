//! `SecretValue`: the one type that holds a secret's value. Its `Debug` and
//! `Display` never print the value, so it cannot leak through a log line, an
//! error message or a `{:?}` of a struct that contains it.
//!
//! The bytes are shared (`Arc`): the poller's cache, every binding's read
//! and the render hold the same copy, so a clone costs a reference count,
//! not the value's size.

use std::fmt;
use std::sync::Arc;

/// A secret value: text as the vault holds it, or (a PFX written as-is)
/// bytes. Read it with [`SecretValue::expose`] (text) or
/// [`SecretValue::as_bytes`] only where it is written into a Kubernetes
/// Secret or sent to Azure. Cloning shares the bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretValue(Arc<[u8]>);

impl SecretValue {
    /// Wraps a text value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::from(value.into().into_bytes()))
    }

    /// Wraps bytes that need not be text (a PFX file).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(Arc::from(bytes))
    }

    /// The value as text. Call sites are the places that may see it. A
    /// value that is not text (only a PFX written as-is is not) reads as
    /// empty here: such values go to a Secret through [`Self::as_bytes`].
    pub fn expose(&self) -> &str {
        self.as_text().unwrap_or_default()
    }

    /// The value as text, when it is text.
    pub fn as_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The value's bytes, as a Secret holds them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (safe to log).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Is the value empty?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted, {} bytes>)", self.0.len())
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> serde::Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretValue::new)
    }
}

impl serde::Serialize for SecretValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Only text values are ever serialized (the dev vault's seed); a
        // binary one must not become "".
        match self.as_text() {
            Some(text) => s.serialize_str(text),
            None => Err(serde::ser::Error::custom(
                "a binary value cannot be written as text",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_print_the_value() {
        let v = SecretValue::new("hunter2-very-secret");
        assert!(!format!("{v:?}").contains("hunter2"));
        assert!(!format!("{v}").contains("hunter2"));
        assert!(!format!("{:#?}", Some(&v)).contains("hunter2"));
        assert_eq!(v.expose(), "hunter2-very-secret");
    }

    #[test]
    fn bytes_that_are_not_text_stay_bytes_and_read_as_no_text() {
        let v = SecretValue::from_bytes(vec![0x30, 0x82, 0xff]);
        assert_eq!(v.as_bytes(), [0x30, 0x82, 0xff]);
        assert_eq!(v.as_text(), None);
        assert_eq!(v.expose(), "");
        assert!(!format!("{v:?}").contains("130"));
        assert_eq!(SecretValue::new("text").as_text(), Some("text"));
    }

    #[test]
    fn a_clone_shares_the_bytes() {
        let v = SecretValue::new("x".repeat(25_000));
        let c = v.clone();
        assert!(std::ptr::eq(v.as_bytes(), c.as_bytes()), "no copy");
        assert_eq!(c, v);
    }
}
