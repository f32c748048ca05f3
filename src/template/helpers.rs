//! The helpers a template can call, registered on the environment by
//! [`super::environment`]. Each refuses bad input with a [`HelperRefusal`]
//! whose words are ours: the input itself never reaches an error.

use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use minijinja::value::ValueKind;
use minijinja::{Environment, Error, ErrorKind, Value};

/// Why a helper refused its input. It travels as the `source` of the
/// minijinja error, so the error kept for the user is built from these two
/// fixed strings and never from what the template passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HelperRefusal {
    pub helper: &'static str,
    pub problem: &'static str,
}

impl fmt::Display for HelperRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.helper, self.problem)
    }
}

impl std::error::Error for HelperRefusal {}

fn refuse(helper: &'static str, problem: &'static str) -> Error {
    Error::new(ErrorKind::InvalidOperation, problem).with_source(HelperRefusal { helper, problem })
}

/// Strict undefined for helpers that take a `&Value` (and so escape
/// minijinja's own check on string arguments).
fn defined(value: &Value) -> Result<&Value, Error> {
    if value.is_undefined() {
        Err(Error::from(ErrorKind::UndefinedError))
    } else {
        Ok(value)
    }
}

/// Registers the helpers, replacing minijinja's `urlencode` (which leaves
/// `/` as is, so a password holding one would end a URI's authority).
pub(super) fn register(env: &mut Environment<'_>) {
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env.add_filter("toyaml", toyaml);
    env.add_filter("urlencode", urlencode);
    env.add_function("dockerconfigjson", dockerconfigjson);
}

fn b64encode(text: String) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Standard or URL-safe alphabet, padded or not, ignoring whitespace (the
/// line breaks `base64` puts every 76 characters).
fn b64decode(text: String) -> Result<String, Error> {
    const HELPER: &str = "b64decode";
    let lenient =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = GeneralPurpose::new(&base64::alphabet::STANDARD, lenient)
        .decode(&compact)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient).decode(&compact))
        .map_err(|_| refuse(HELPER, "the input is not valid base64"))?;
    String::from_utf8(bytes).map_err(|_| refuse(HELPER, "the decoded bytes are not UTF-8 text"))
}

/// A YAML double-quoted scalar that reads back as exactly `value` in any
/// YAML 1.1 or 1.2 parser, wherever a scalar may stand.
fn toyaml(value: &Value) -> Result<String, Error> {
    let value = defined(value)?;
    let text = match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        ValueKind::Number => value.to_string(),
        _ => return Err(refuse("toyaml", "expects text or a number")),
    };
    Ok(yaml_quote(&text))
}

fn yaml_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Not printable in YAML (C0, DEL, C1 but NEL), or a line break
            // to YAML 1.1 (NEL, LS, PS), or a BOM: all escaped.
            '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{feff}'
            | '\u{fffe}'
            | '\u{ffff}' => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Percent-encodes every byte but RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), so the result is safe in any part of a URI,
/// userinfo included. A map becomes a query string (`k=v&k2=v2`, none and
/// undefined entries left out), like minijinja's own `urlencode`.
fn urlencode(value: &Value) -> Result<String, Error> {
    let value = defined(value)?;
    if value.kind() == ValueKind::Map {
        let mut pairs = Vec::new();
        for key in value.try_iter()? {
            let item = value.get_item(&key)?;
            if item.is_none() || item.is_undefined() {
                continue;
            }
            pairs.push(format!(
                "{}={}",
                percent_encode(&plain_text(&key)),
                percent_encode(&plain_text(&item))
            ));
        }
        return Ok(pairs.join("&"));
    }
    if value.is_none() {
        return Ok(String::new());
    }
    Ok(percent_encode(&plain_text(value)))
}

fn plain_text(value: &Value) -> String {
    match value.as_str() {
        Some(text) => text.to_owned(),
        None => value.to_string(),
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` Secret
/// holding one registry login.
fn dockerconfigjson(registry: String, username: String, password: String) -> Result<Value, Error> {
    const HELPER: &str = "dockerconfigjson";
    if registry.trim().is_empty() {
        return Err(refuse(HELPER, "the registry is empty"));
    }
    if username.contains(':') {
        // `auth` is `user:password` and readers split it at the first ':'.
        return Err(refuse(HELPER, "the username contains ':'"));
    }
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let config = serde_json::json!({
        "auths": {
            registry: { "username": username, "password": password, "auth": auth }
        }
    });
    Ok(Value::from(config.to_string()))
}
