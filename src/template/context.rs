//! What a template sees: each value under its key and in `values`; and,
//! for an undefined-name error, the names the template TEXT uses that have
//! no value (never a name computed while rendering: `values[P ~ "x"]` could
//! spell a value).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectExt as _, Value};
use minijinja::{Environment, Template};

/// The context of one render.
pub(super) fn root(values: &Arc<BTreeMap<String, Value>>) -> Value {
    Value::from_object(Root {
        values: Value::from_object(Values {
            map: Arc::clone(values),
        }),
        map: Arc::clone(values),
    })
}

/// A name or `values` key the template text uses, as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Missing {
    Name(String),
    Item(String),
}

impl Missing {
    fn written(&self) -> String {
        match self {
            Self::Name(name) => name.clone(),
            Self::Item(key) => format!("values[{key:?}]"),
        }
    }

    /// Does `line` spell this lookup (`NAME`, `values["key"]`, `values.key`)?
    fn spelled_in(&self, line: &str) -> bool {
        match self {
            Self::Name(name) => contains_word(line, name, ""),
            Self::Item(key) => {
                line.contains(&format!("values[\"{key}\"]"))
                    || line.contains(&format!("values['{key}']"))
                    || contains_word(line, key, "values.")
            }
        }
    }
}

/// `word` in `line` with no identifier character around it (and, when
/// `before` is given, right after it).
fn contains_word(line: &str, word: &str, before: &str) -> bool {
    let is_ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let needle = format!("{before}{word}");
    line.match_indices(&needle).any(|(at, _)| {
        let end = at + needle.len();
        let preceding = line[..at].chars().next_back();
        !is_ident(preceding) && !is_ident(line[end..].chars().next())
    })
}

/// The literal keys of `values["..."]`, `values['...']` and `values.key` in
/// the template text (comments included: they are text the author wrote).
fn literal_items(source: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (at, _) in source.match_indices("values") {
        if source[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = source[at + "values".len()..].trim_start();
        if let Some(rest) = rest.strip_prefix('[') {
            let rest = rest.trim_start();
            let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                continue;
            };
            let rest = &rest[1..];
            if let Some(end) = rest.find(quote)
                && rest[end + 1..].trim_start().starts_with(']')
                && !rest[..end].contains('\\')
            {
                keys.insert(rest[..end].to_owned());
            }
        } else if let Some(rest) = rest.strip_prefix('.') {
            let key: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !key.is_empty() {
                keys.insert(key);
            }
        }
    }
    keys
}

/// What an undefined-name error can say: the one name the failing line
/// spells (`Some`), or else the names the template text uses with no value
/// (only when the line is unknown). Built from the template text and the
/// keys alone.
pub(super) fn describe(
    env: &Environment<'_>,
    template: &Template<'_, '_>,
    source: &str,
    line: Option<usize>,
    values: &BTreeMap<String, Value>,
) -> (Option<String>, Vec<String>) {
    let is_global = |name: &str| env.globals().any(|(global, _)| global == name);
    let names = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| name != "values" && !values.contains_key(name) && !is_global(name))
        .map(Missing::Name);
    let items = literal_items(source)
        .into_iter()
        .filter(|key| !values.contains_key(key))
        .map(Missing::Item);
    let missing: BTreeSet<Missing> = names.chain(items).collect();
    match line {
        Some(line) => {
            let text = source.lines().nth(line.saturating_sub(1)).unwrap_or("");
            let on_line: Vec<&Missing> = missing.iter().filter(|m| m.spelled_in(text)).collect();
            match on_line.as_slice() {
                [one] => (Some(one.written()), Vec::new()),
                several => (None, several.iter().map(|m| m.written()).collect()),
            }
        }
        None => (None, missing.iter().map(Missing::written).collect()),
    }
}

/// The template's context: each value under its key, and `values`.
struct Root {
    values: Value,
    map: Arc<BTreeMap<String, Value>>,
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TemplateContext(<{} values>)", self.map.len())
    }
}

impl Object for Root {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        if name == "values" {
            return Some(self.values.clone());
        }
        self.map.get(name).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| {
            Box::new(
                std::iter::once(Value::from("values")).chain(
                    this.map
                        .keys()
                        .filter(|k| *k != "values")
                        .map(|k| Value::from(k.as_str())),
                ),
            )
        })
    }
}

/// `values`: every value by its Secret key.
struct Values {
    map: Arc<BTreeMap<String, Value>>,
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TemplateValues(<{} values>)", self.map.len())
    }
}

impl Object for Values {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        self.map.get(name).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| Box::new(this.map.keys().map(|k| Value::from(k.as_str()))))
    }
}
