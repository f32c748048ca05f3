//! `target.template`: Secret keys rendered from the picked values with a
//! sandboxed template engine. (Being written: see issue 11.)

use std::collections::BTreeMap;

use crate::value::SecretValue;

/// Why a template could not be rendered. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Placeholder until the engine lands.
    #[error("template {key}: templates are not supported yet")]
    Unsupported {
        /// The Secret key whose template failed.
        key: String,
    },
}

/// Renders each template (Secret key → template text) over `values`
/// (Secret key → value, after `keyTransform`).
pub fn render(
    templates: &BTreeMap<String, String>,
    _values: &BTreeMap<String, SecretValue>,
) -> Result<BTreeMap<String, SecretValue>, TemplateError> {
    match templates.keys().next() {
        Some(key) => Err(TemplateError::Unsupported { key: key.clone() }),
        None => Ok(BTreeMap::new()),
    }
}
