//! The helpers a template can call, registered on the environment by
//! [`super::environment`]. Each refuses bad input with a [`HelperRefusal`]
//! whose words are ours: the input itself never reaches an error.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State, Value};

use super::Budget;

/// minijinja's filters that are not offered: each materializes or walks a
/// list (which `[X] * 100000000` makes lazily, for free) or serializes a
/// value before fuel is charged, and none is needed to build a Secret value.
const REMOVED_FILTERS: &[&str] = &[
    "batch",
    "capitalize",
    "chain",
    "dictsort",
    "e",
    "escape",
    "format",
    "groupby",
    "indent",
    "lines",
    "list",
    "map",
    "max",
    "min",
    "pprint",
    "reject",
    "rejectattr",
    "reverse",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "sum",
    "title",
    "unique",
    "zip",
];

// Known gap: `~` with a list (`X ~ ([X] * 100000000)`) still writes the
// whole list out as text before any check (minijinja's `string_concat`); it
// cannot be hooked from here and needs a fix in minijinja (charge while
// formatting) or an AST check (its `unstable_machinery` feature).

/// minijinja's tests that are not offered: they write a list out as text
/// first, whatever its size.
const REMOVED_TESTS: &[&str] = &["endingwith", "lower", "startingwith", "upper"];

/// The largest `indent` `tojson` takes.
pub(super) const MAX_JSON_INDENT: usize = 8;

/// The deepest nesting of lists and maps `tojson` writes.
const MAX_JSON_DEPTH: usize = 64;

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
/// `/` as is, so a password holding one would end a URI's authority) and
/// its `join`, `tojson`, `string` and `split` (which build their text or
/// list before charging for it: `([X] * 100000000) | join` took gigabytes);
/// and removes [`REMOVED_FILTERS`]. Text a helper builds may not be larger
/// than what is left of the call's output budget.
pub(super) fn register(env: &mut Environment<'_>, budget: &Arc<Budget>) {
    for name in REMOVED_FILTERS {
        env.remove_filter(name);
    }
    for name in REMOVED_TESTS {
        env.remove_test(name);
    }
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env.add_filter("toyaml", toyaml);
    env.add_filter("urlencode", urlencode);
    env.add_filter("string", string);
    env.add_filter("upper", |value: &Value| {
        Ok::<_, Error>(text_arg("upper", value)?.to_uppercase())
    });
    env.add_filter("lower", |value: &Value| {
        Ok::<_, Error>(text_arg("lower", value)?.to_lowercase())
    });
    env.add_filter("trim", trim);
    let limit = Arc::clone(budget);
    env.add_filter(
        "replace",
        move |state: &State, value: &Value, from: &Value, to: &Value, count: Option<usize>| {
            replace(state, [value, from, to], count, limit.output_left())
        },
    );
    env.add_filter("split", split);
    let limit = Arc::clone(budget);
    env.add_filter(
        "join",
        move |state: &State, value: &Value, joiner: Option<String>| {
            join(
                state,
                value,
                joiner.as_deref().unwrap_or(""),
                limit.output_left(),
            )
        },
    );
    let limit = Arc::clone(budget);
    env.add_filter(
        "tojson",
        move |state: &State, value: &Value, indent: Option<Value>, kwargs: Kwargs| {
            tojson(state, value, indent, kwargs, limit.output_left())
        },
    );
    env.add_function("dockerconfigjson", dockerconfigjson);
    env.set_formatter(print);
}

/// What `{{ … }}` writes: text, numbers and booleans (`none` as nothing is
/// not kept: strict). A list or a map is refused rather than written out
/// whole (`{{ [X] * 100000000 }}` took seconds of CPU to fail).
fn print(out: &mut Output<'_>, _state: &mut State<'_, '_>, value: &Value) -> Result<(), Error> {
    let value = defined(value)?;
    let text = match value.as_str() {
        Some(text) => text,
        None => &scalar_text(value).ok_or_else(|| {
            refuse(
                "print",
                "a list or a map cannot be printed as it is (tojson writes one)",
            )
        })?,
    };
    out.write_str(text).map_err(Error::from)
}

/// Charges `bytes` of text made (one fuel per 64 bytes, as the engine does).
fn charge_bytes(state: &State, bytes: usize) -> Result<(), Error> {
    state.consume_fuel(u64::try_from(bytes / 64).unwrap_or(u64::MAX))
}

/// A scalar as text (`join`, `string`), or `None` for a list, map or other
/// object (whose text may be unbounded: a lazy `[X] * 100000000`).
fn scalar_text(value: &Value) -> Option<String> {
    match value.kind() {
        ValueKind::String => Some(value.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number | ValueKind::Bool | ValueKind::None => Some(value.to_string()),
        _ => None,
    }
}

/// `join`: the items (text, numbers, booleans) with `joiner` between them,
/// refused before it grows past `limit` bytes.
fn join(state: &State, value: &Value, joiner: &str, limit: usize) -> Result<String, Error> {
    const HELPER: &str = "join";
    let value = defined(value)?;
    let mut out = String::new();
    for (index, item) in value.try_iter()?.enumerate() {
        state.consume_fuel(1)?;
        let item = defined(&item)?;
        let text = scalar_text(item)
            .ok_or_else(|| refuse(HELPER, "expects a list of text, numbers or booleans"))?;
        let sep = if index == 0 { "" } else { joiner };
        if out.len() + sep.len() + text.len() > limit {
            return Err(refuse(
                HELPER,
                "the joined text would be larger than the rendered values may be",
            ));
        }
        charge_bytes(state, sep.len() + text.len())?;
        out.push_str(sep);
        out.push_str(&text);
    }
    Ok(out)
}

/// `trim`: without leading and trailing whitespace (or the characters of
/// `chars`).
fn trim(value: &Value, chars: Option<&Value>) -> Result<String, Error> {
    let text = text_arg("trim", value)?;
    Ok(match chars {
        Some(chars) => {
            let chars: Vec<char> = text_arg("trim", chars)?.chars().collect();
            text.trim_matches(&chars[..]).to_owned()
        }
        None => text.trim().to_owned(),
    })
}

/// `replace`: `from` replaced by `to` (the first `count` times), refused
/// before it grows past `limit` bytes.
fn replace(
    state: &State,
    [value, from, to]: [&Value; 3],
    count: Option<usize>,
    limit: usize,
) -> Result<String, Error> {
    const HELPER: &str = "replace";
    let text = text_arg(HELPER, value)?;
    let from = text_arg(HELPER, from)?;
    let to = text_arg(HELPER, to)?;
    let count = count.unwrap_or(usize::MAX);
    let matches = if from.is_empty() {
        text.chars().count() + 1
    } else {
        text.matches(from.as_str()).count()
    }
    .min(count);
    let grown = text.len().saturating_add(matches.saturating_mul(to.len()));
    if grown > limit {
        return Err(refuse(
            HELPER,
            "the replaced text would be larger than the rendered values may be",
        ));
    }
    charge_bytes(state, grown)?;
    Ok(text.replacen(from.as_str(), &to, count))
}

/// `string`: text, numbers and booleans as text; a list or map is refused
/// (its text may be unbounded; `tojson` writes one).
fn string(value: &Value) -> Result<Value, Error> {
    let value = defined(value)?;
    if value.kind() == ValueKind::String {
        return Ok(value.clone());
    }
    scalar_text(value).map(Value::from).ok_or_else(|| {
        refuse(
            "string",
            "expects text, a number or a boolean (tojson writes a list or a map)",
        )
    })
}

/// `split`: like minijinja's (on whitespace by default; at most
/// `maxsplits` splits), charging fuel for every piece.
fn split(
    state: &State,
    value: &Value,
    sep: Option<String>,
    maxsplits: Option<i64>,
) -> Result<Value, Error> {
    let text = text_arg("split", value)?;
    let pieces = maxsplits
        .and_then(|n| usize::try_from(n).ok())
        .map_or(usize::MAX, |n| n.saturating_add(1));
    let mut out = Vec::new();
    let mut push = |piece: &str| -> Result<(), Error> {
        state.consume_fuel(1)?;
        out.push(Value::from(piece));
        Ok(())
    };
    match sep.as_deref() {
        Some("") => return Err(refuse("split", "the separator is empty")),
        Some(sep) => {
            for piece in text.splitn(pieces, sep) {
                push(piece)?;
            }
        }
        None => {
            let mut rest = text.trim_start();
            let mut count = 1;
            while !rest.is_empty() {
                match rest.find(char::is_whitespace) {
                    Some(end) if count < pieces => {
                        push(&rest[..end])?;
                        rest = rest[end..].trim_start();
                        count += 1;
                    }
                    _ => {
                        push(rest.trim_end())?;
                        break;
                    }
                }
            }
        }
    }
    charge_bytes(state, text.len())?;
    Ok(Value::from(out))
}

/// `tojson`: `value` as JSON (`[1, 2]`, `{"k": "v"}`; one item a line with
/// `indent`, at most [`MAX_JSON_INDENT`]), with `<`, `>`, `&` and `'` in
/// strings escaped as minijinja does; refused before it grows past `limit`
/// bytes or [`MAX_JSON_DEPTH`] levels.
fn tojson(
    state: &State,
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
    limit: usize,
) -> Result<Value, Error> {
    const HELPER: &str = "tojson";
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(value) => match value.kind() {
            ValueKind::Bool => value.is_true().then_some(2),
            ValueKind::Number => match usize::try_from(value) {
                Ok(n) if n <= MAX_JSON_INDENT => Some(n),
                _ => return Err(refuse(HELPER, "indent must be a number from 0 to 8")),
            },
            _ => return Err(refuse(HELPER, "indent must be a number from 0 to 8")),
        },
    };
    let mut writer = JsonWriter {
        state,
        out: String::new(),
        indent,
        limit,
    };
    writer.value(defined(value)?, 0)?;
    // Serializing walks the value: a quarter fuel a byte, as minijinja's.
    state.consume_fuel(u64::try_from(writer.out.len() / 4).unwrap_or(u64::MAX))?;
    Ok(Value::from_safe_string(writer.out))
}

struct JsonWriter<'a, 'state, 'env> {
    state: &'a State<'state, 'env>,
    out: String,
    indent: Option<usize>,
    limit: usize,
}

impl JsonWriter<'_, '_, '_> {
    const HELPER: &'static str = "tojson";

    fn push(&mut self, text: &str) -> Result<(), Error> {
        if self.out.len() + text.len() > self.limit {
            return Err(refuse(
                Self::HELPER,
                "the JSON would be larger than the rendered values may be",
            ));
        }
        self.out.push_str(text);
        Ok(())
    }

    fn string(&mut self, text: &str) -> Result<(), Error> {
        if self.out.len() + text.len() > self.limit {
            return self.push(text);
        }
        let quoted = serde_json::to_string(text).unwrap_or_default();
        let escaped = quoted
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
            .replace('\'', "\\u0027");
        self.push(&escaped)
    }

    /// Before an item: `, ` or, with an indent, a line break and the
    /// indentation of `depth`.
    fn item(&mut self, first: bool, depth: usize) -> Result<(), Error> {
        self.state.consume_fuel(1)?;
        match self.indent {
            Some(indent) => {
                self.push(if first {
                    "
"
                } else {
                    ",
"
                })?;
                self.push(&" ".repeat(indent.saturating_mul(depth).min(self.limit)))
            }
            None if first => Ok(()),
            None => self.push(", "),
        }
    }

    fn close(&mut self, close: &str, empty: bool, depth: usize) -> Result<(), Error> {
        if let (Some(indent), false) = (self.indent, empty) {
            self.push(
                "
",
            )?;
            self.push(&" ".repeat(indent.saturating_mul(depth).min(self.limit)))?;
        }
        self.push(close)
    }

    fn value(&mut self, value: &Value, depth: usize) -> Result<(), Error> {
        if depth > MAX_JSON_DEPTH {
            return Err(refuse(Self::HELPER, "the value is nested too deeply"));
        }
        match value.kind() {
            ValueKind::Undefined => Err(Error::from(ErrorKind::UndefinedError)),
            ValueKind::None => self.push("null"),
            ValueKind::Bool => self.push(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if value.is_integer() {
                    self.push(&value.to_string())
                } else {
                    let number = f64::try_from(value.clone())
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map_or_else(|| "null".to_owned(), |n| n.to_string());
                    self.push(&number)
                }
            }
            ValueKind::String => self.string(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                self.push("[")?;
                let mut empty = true;
                for item in value.try_iter()? {
                    self.item(empty, depth + 1)?;
                    empty = false;
                    self.value(&item, depth + 1)?;
                }
                self.close("]", empty, depth)
            }
            ValueKind::Map => {
                self.push("{")?;
                let mut empty = true;
                for key in value.try_iter()? {
                    self.item(empty, depth + 1)?;
                    empty = false;
                    let name = match key.kind() {
                        ValueKind::String | ValueKind::Number | ValueKind::Bool => {
                            scalar_text(&key).unwrap_or_default()
                        }
                        _ => return Err(refuse(Self::HELPER, "a map key is not text or a number")),
                    };
                    self.string(&name)?;
                    self.push(": ")?;
                    let item = value.get_item(&key)?;
                    self.value(&item, depth + 1)?;
                }
                self.close("}", empty, depth)
            }
            _ => Err(refuse(
                Self::HELPER,
                "expects text, numbers, booleans, lists and maps",
            )),
        }
    }
}

fn b64encode(value: &Value) -> Result<String, Error> {
    let text = text_arg("b64encode", value)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(text))
}

/// A text argument: text, a number or a boolean. A list or a map is refused
/// (minijinja would write it out as text first, whatever its size).
fn text_arg(helper: &'static str, value: &Value) -> Result<String, Error> {
    scalar_text(defined(value)?).ok_or_else(|| refuse(helper, "expects text, not a list or a map"))
}

/// Standard or URL-safe alphabet, padded or not, ignoring whitespace (the
/// line breaks `base64` puts every 76 characters).
fn b64decode(value: &Value) -> Result<String, Error> {
    const HELPER: &str = "b64decode";
    let text = text_arg(HELPER, value)?;
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
                percent_encode(&text_arg("urlencode", &key)?),
                percent_encode(&text_arg("urlencode", &item)?)
            ));
        }
        return Ok(pairs.join("&"));
    }
    if value.is_none() {
        return Ok(String::new());
    }
    Ok(percent_encode(&text_arg("urlencode", value)?))
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
fn dockerconfigjson(registry: &Value, username: &Value, password: &Value) -> Result<Value, Error> {
    const HELPER: &str = "dockerconfigjson";
    let registry = text_arg(HELPER, registry)?;
    let username = text_arg(HELPER, username)?;
    let password = text_arg(HELPER, password)?;
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
