//! What a template sees: each value under its key and in `values`, with
//! the lookups that found nothing remembered to name an undefined one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use minijinja::Environment;
use minijinja::value::{Enumerator, Object, ObjectExt as _, Value};

/// How many distinct missing names a render remembers to name the one an
/// error is about.
const REMEMBERED_MISSES: usize = 32;

/// The context of one render, remembering its misses in `misses`.
pub(super) fn root(values: &Arc<BTreeMap<String, Value>>, misses: &Arc<Misses>) -> Value {
    Value::from_object(Root {
        values: Value::from_object(Values {
            map: Arc::clone(values),
            misses: Arc::clone(misses),
        }),
        map: Arc::clone(values),
        misses: Arc::clone(misses),
    })
}

/// A name or `values` key the template looked up and did not find, as the
/// template would write it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Miss {
    Name(String),
    Item(String),
}

impl Miss {
    fn written(&self) -> String {
        match self {
            Self::Name(name) => name.clone(),
            Self::Item(key) => format!("values[{key:?}]"),
        }
    }

    /// The text of the lookup: a missing name's own, or the key of
    /// `values[...]` (which may come from a value: `values[X]`).
    fn text(&self) -> &str {
        match self {
            Self::Name(text) | Self::Item(text) => text,
        }
    }

    /// Does `line` spell this lookup (`NAME`, `values["key"]`, `values.key`)?
    fn spelled_in(&self, line: &str) -> bool {
        match self {
            Self::Name(name) => contains_word(line, name, ""),
            Self::Item(key) => {
                line.contains(&format!("\"{key}\""))
                    || line.contains(&format!("'{key}'"))
                    || contains_word(line, key, ".")
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
        (!before.is_empty() || !is_ident(preceding)) && !is_ident(line[end..].chars().next())
    })
}

/// The misses of one render, the latest last (bounded).
#[derive(Debug, Default)]
pub(super) struct Misses(Mutex<Vec<Miss>>);

impl Misses {
    fn record(&self, miss: Miss) {
        // A Secret key is at most 253 characters: longer is not a key.
        if miss.text().len() > 253 {
            return;
        }
        let mut list = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        list.retain(|m| *m != miss);
        if list.len() == REMEMBERED_MISSES {
            list.remove(0);
        }
        list.push(miss);
    }

    /// The undefined name on the error's line, if one of the misses is
    /// spelled there; else every miss. Only misses the template spells out
    /// are told (a key looked up as `values[X]` may be a value), and never
    /// one equal to a value.
    pub(super) fn describe(
        &self,
        env: &Environment<'_>,
        source: &str,
        line: Option<usize>,
        values: &BTreeMap<String, Value>,
    ) -> (Option<String>, Vec<String>) {
        let list = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let is_global = |name: &str| env.globals().any(|(global, _)| global == name);
        let tellable: Vec<&Miss> = list
            .iter()
            .filter(|miss| !matches!(miss, Miss::Name(name) if is_global(name)))
            .filter(|miss| miss.spelled_in(source))
            .filter(|miss| !values.values().any(|v| v.as_str() == Some(miss.text())))
            .collect();
        let error_line = line.and_then(|n| source.lines().nth(n.checked_sub(1)?));
        if let Some(text) = error_line
            && let Some(miss) = tellable.iter().rev().find(|miss| miss.spelled_in(text))
        {
            return (Some(miss.written()), Vec::new());
        }
        (None, tellable.iter().map(|miss| miss.written()).collect())
    }
}

/// The template's context: each value under its key, and `values`. Misses
/// are remembered to name an undefined variable (minijinja only does so in
/// debug mode, which copies the values in scope into every error).
struct Root {
    values: Value,
    map: Arc<BTreeMap<String, Value>>,
    misses: Arc<Misses>,
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
        let found = self.map.get(name).cloned();
        if found.is_none() {
            self.misses.record(Miss::Name(name.to_owned()));
        }
        found
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
    misses: Arc<Misses>,
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TemplateValues(<{} values>)", self.map.len())
    }
}

impl Object for Values {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        let found = self.map.get(name).cloned();
        if found.is_none() {
            self.misses.record(Miss::Item(name.to_owned()));
        }
        found
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| Box::new(this.map.keys().map(|k| Value::from(k.as_str()))))
    }
}
