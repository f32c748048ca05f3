//! `target.template`: Secret keys rendered from the picked values.
//!
//! Each entry of `target.template.data` is a [Jinja]-style template (the
//! [minijinja] engine) whose output becomes the value of that Secret key.
//!
//! # What a template sees
//!
//! - Every picked value under its Secret key (after `keyTransform`), as a
//!   variable when the key is an identifier: `{{ REG_PASSWORD }}`.
//! - Every picked value, whatever its key, in the map `values`:
//!   `{{ values["db-password"] }}` or `{{ values.REG_PASSWORD }}`. A key that
//!   is not an identifier (`db-password`, `tls.crt`), is a Jinja keyword
//!   (`true`, `none`, `in`…) or is `values` itself is reachable only there.
//!   A key named like a function (`range`, `dict`, `namespace`,
//!   `dockerconfigjson`) hides that function.
//!
//! # Helpers
//!
//! | Write | Gives |
//! |---|---|
//! | `{{ X \| b64encode }}` | `X` in base64 (standard alphabet, padded) |
//! | `{{ X \| b64decode }}` | the text `X` encodes in base64 (standard or URL-safe alphabet, padding optional, whitespace ignored); an error if `X` is not base64 or does not decode to UTF-8 text |
//! | `{{ X \| tojson }}` | `X` as JSON: a string becomes a quoted, escaped JSON string (`"p\"w"`; `<`, `>`, `&` and `'` come out as `\u003c`-style escapes, which JSON readers decode); maps and lists become JSON objects and arrays |
//! | `{{ X \| toyaml }}` | `X` as a double-quoted YAML scalar that reads back as exactly `X` (for `key: {{ X \| toyaml }}` in a YAML file) |
//! | `{{ X \| urlencode }}` | `X` with every byte but `A-Z a-z 0-9 - . _ ~` percent-encoded, so it is safe anywhere in a URI, including the user and password part: `postgres://{{ U \| urlencode }}:{{ P \| urlencode }}@db:5432/app`. A map becomes a query string (`k=v&k2=v2`) |
//! | `{{ dockerconfigjson(registry, username, password) }}` | the JSON of a `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson`: `{"auths":{REGISTRY:{"username":…,"password":…,"auth":base64(username:password)}}}`; an error if the registry is empty or the username contains `:` |
//! | `{{ L \| join(", ") }}` | the items of `L` (text, numbers, booleans) with `", "` between them (nothing by default) |
//!
//! # What else is offered
//!
//! Filters: `upper`, `lower`, `trim`, `replace`, `split` (kvsync's own: they
//! take text, numbers or booleans, never a list or map, and refuse to grow
//! past the output budget), `string`, `default`/`d`, `length`/`count`,
//! `first`, `last`, `items`, `attr`, `int`, `float`, `abs`, `round`, `bool`,
//! and the helpers above. Tests: minijinja's but `startingwith`,
//! `endingwith`, `lower` and `upper` (`defined`, `none`, `eq`, `in`…). Functions: `range` (at most 100 000 items),
//! `dict`, `namespace`, `dockerconfigjson`. `tojson` takes `indent` up to 8.
//!
//! Not offered, because each walks or writes out a whole list (which
//! `[X] * 100000000` makes for free) or grows text before it is charged:
//! `batch`, `capitalize`, `chain`, `dictsort`, `escape`/`e`, `format`, `groupby`,
//! `indent`, `lines`, `list`, `map`, `max`, `min`, `pprint`, `reject`,
//! `rejectattr`, `reverse`, `safe`, `select`, `selectattr`, `slice`, `sort`, `sum`,
//! `title`, `unique`, `zip`, and `debug()`. Printing a list or a map
//! (`{{ values }}`) is an error: write it with `tojson`. The `*`, `**` and
//! `+` operators are refused before anything runs (join text with `~`):
//! minijinja repeats or joins lists lazily and writes them out whole
//! (`{{ X ~ ([X] * 100000000) }}`) before any limit can act.
//!
//! # Examples
//!
//! An image-pull Secret (`type: kubernetes.io/dockerconfigjson`):
//!
//! ```yaml
//! .dockerconfigjson: '{{ dockerconfigjson("myregistry.azurecr.io", REG_USER, REG_PASSWORD) }}'
//! ```
//!
//! An `.npmrc`:
//!
//! ```yaml
//! .npmrc: |
//!   //registry.npmjs.org/:_authToken={{ NPM_TOKEN }}
//! ```
//!
//! A connection URI, and an Airflow-style connection (Airflow reads a
//! connection as a URI under `AIRFLOW_CONN_{ID}`):
//!
//! ```yaml
//! DATABASE_URL: 'postgresql://{{ DB_USER | urlencode }}:{{ values["db-password"] | urlencode }}@db.internal:5432/app?sslmode=require'
//! AIRFLOW_CONN_WAREHOUSE: 'postgres://{{ WH_USER | urlencode }}:{{ WH_PASSWORD | urlencode }}@warehouse:5432/dw'
//! ```
//!
//! # Rules
//!
//! - **Strict**: a name that has no value is an error naming it
//!   (`` `REG_PASWORD` is undefined ``), never an empty string; so is
//!   `{% if X %}` when `X` is absent. For a value that may be absent (an
//!   `optional` pick) test it with `{% if X is defined %}` or write
//!   `X | default("…")`.
//! - **Sandboxed**: no file, network or environment access; no `include`,
//!   `import` or `extends` (templates come only from the binding).
//! - **Bounded**: a template is at most [`MAX_TEMPLATE_BYTES`] (16 KiB).
//!   All the templates of a Secret share [`FUEL`] units of work (about one
//!   per instruction and per 64 bytes of data; each template gets what the
//!   ones before it, in key order, left) and may render at most
//!   [`MAX_RENDERED_BYTES`] (1 MiB) together; no text a helper builds may be
//!   larger than what is left. They are parsed and rendered on a thread of
//!   their own with a 64 MiB stack (virtual), so deeply nested expressions
//!   cannot overflow a runtime worker's stack.
//! - **Verbatim**: no auto-escaping (whatever the key's extension), and a
//!   template's trailing newline is kept: what you write is what you get.
//! - **Errors** name the template's key, the line (not the column) and what
//!   is wrong, never a value nor rendered text. An undefined name is named
//!   when the failing line spells exactly one name (or literal
//!   `values["…"]`/`values.key`) of the template text that has no value;
//!   otherwise the error lists those on the line (all of them when the line
//!   is unknown) or says only "a name or values[...] key that is not
//!   defined". A key computed while rendering (`values[P ~ "x"]`) is never
//!   named: it could spell a value.
//!
//! # When a value cannot be read
//!
//! When a value a template could read is disabled (`onDisabled: KeepLast`)
//! or cannot be read this time (a 403, a firewall, on an `optional` or
//! selected name), the templated keys keep what the Secret holds: rendering
//! without the value would silently drop it. With nothing to keep, nothing
//! is written until it can be read. Which values a template could read is
//! decided from its text as the engine parses it ([`dependencies()`]):
//!
//! - a name that is a key (`{{ DB_PASSWORD }}`), also as a filter's or a
//!   function's argument, in a `{% set %}` or a loop, reads that value (a
//!   name a `{% set %}` or a loop shadows still counts: holding too much
//!   keeps the last good data, holding too little loses it);
//! - `values.KEY`, `values["KEY"]` and `values['KEY']` read that value;
//! - any other use of `values` (`values | tojson`, `{% for k, v in values |
//!   items %}`, `values[P ~ "x"]`, `values | length`, `{% set v = values %}`)
//!   reads every value, and so does a template that does not parse;
//! - comments, `{% raw %}` blocks and quoted text read nothing.
//!
//! A value no template could read (a disabled secret a `select` brought in
//! that no template names) follows its own rules and holds nothing.
//!
//! [Jinja]: https://jinja.palletsprojects.com/en/stable/templates/
//! [minijinja]: https://docs.rs/minijinja

mod context;
mod dependencies;
mod error;
mod helpers;
#[cfg(test)]
mod tests;

pub use dependencies::{Dependencies, dependencies, dependencies_of};
pub use error::TemplateError;

use std::collections::BTreeMap;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::value::SecretValue;

/// The work all the templates of one Secret may do together: about one unit
/// per instruction executed and per 64 bytes of data created. A
/// dockerconfigjson or a URI takes well under twenty; writing the full
/// [`MAX_RENDERED_BYTES`] in one go takes about 33 000 (the string made,
/// then written).
pub const FUEL: u64 = 100_000;

/// The most all the templates of one Secret may render together
/// (Kubernetes' limit on a whole Secret). No text a template builds (a
/// `join`, a `tojson`) may be larger either.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// The longest template (in bytes). The CRD mirrors it as `maxLength`.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// The stack of the thread that parses and renders: deeply nested
/// expressions (`not not not …`, long filter chains) recurse in the parser
/// and the engine, and a tokio worker's 2 MiB would overflow (an abort of
/// the whole process). Virtual memory: only the pages used cost.
const TEMPLATE_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Renders each template (Secret key → template text) over `values`
/// (Secret key → value, after `keyTransform`): Secret key → rendered value.
/// The first template that fails stops the rendering. All the templates
/// share one [`FUEL`] and one [`MAX_RENDERED_BYTES`] budget, and run on a
/// thread of their own with a large stack.
pub fn render(
    templates: &BTreeMap<String, String>,
    values: &BTreeMap<String, SecretValue>,
) -> Result<BTreeMap<String, SecretValue>, TemplateError> {
    for (key, source) in templates {
        if let Some((operator, line)) = refused_operator(source) {
            return Err(TemplateError::Operator {
                key: key.clone(),
                line,
                operator,
            });
        }
    }
    render_checked(templates, values)
}

/// [`render`] without its refusal of `*`: the limits behind it (filters
/// that check sizes, fuel, the output budget, the stack) stand on their
/// own, and the tests prove them through this.
fn render_checked(
    templates: &BTreeMap<String, String>,
    values: &BTreeMap<String, SecretValue>,
) -> Result<BTreeMap<String, SecretValue>, TemplateError> {
    if let Some((key, _)) = templates
        .iter()
        .find(|(_, source)| source.len() > MAX_TEMPLATE_BYTES)
    {
        return Err(TemplateError::TooLong {
            key: key.clone(),
            limit: MAX_TEMPLATE_BYTES,
        });
    }
    let Some(first) = templates.keys().next() else {
        return Ok(BTreeMap::new());
    };
    let failed = || TemplateError::Internal { key: first.clone() };
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("kvsync-template".to_owned())
            .stack_size(TEMPLATE_STACK_BYTES)
            .spawn_scoped(scope, || render_all(templates, values))
            .map_err(|_| failed())?;
        worker.join().unwrap_or_else(|_| Err(failed()))
    })
}

/// The first operator Secret templates do not have, and its line, as
/// minijinja's own tokenizer reads the template (comments, raw blocks and
/// nested braces included). `*`/`**` repeat a list and `+` joins two,
/// lazily and for no fuel; writing such a list out (`X ~ list`) builds
/// gigabytes before any limit can act. Templates join text with `~`.
/// A template that does not tokenize is left to the parser's error.
fn refused_operator(source: &str) -> Option<(&'static str, usize)> {
    use minijinja::machinery::Token;
    let config = minijinja::syntax::SyntaxConfig::default();
    for token in minijinja::machinery::tokenize(source, false, config) {
        let Ok((token, span)) = token else {
            return None;
        };
        let operator = match token {
            Token::Mul => "*",
            Token::Pow => "**",
            Token::Plus => "+",
            _ => continue,
        };
        return Some((operator, span.start_line as usize));
    }
    None
}

/// What is left of one render call's budget.
struct Budget {
    /// Output bytes still allowed (for every template of the call).
    output: AtomicUsize,
}

impl Budget {
    fn output_left(&self) -> usize {
        self.output.load(Ordering::Relaxed)
    }
}

fn render_all(
    templates: &BTreeMap<String, String>,
    values: &BTreeMap<String, SecretValue>,
) -> Result<BTreeMap<String, SecretValue>, TemplateError> {
    let budget = Arc::new(Budget {
        output: AtomicUsize::new(MAX_RENDERED_BYTES),
    });
    let mut env = environment(&budget);
    let values = Arc::new(
        values
            .iter()
            // A value that is not text (a PFX written as-is) is not a
            // template's to read.
            .filter_map(|(key, value)| value.as_text().map(|t| (key.clone(), Value::from(t))))
            .collect::<BTreeMap<_, _>>(),
    );
    let mut fuel = FUEL;
    let mut rendered = BTreeMap::new();
    for (key, source) in templates {
        if fuel == 0 {
            return Err(TemplateError::OutOfFuel {
                key: key.clone(),
                line: None,
            });
        }
        env.set_fuel(Some(fuel));
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            render_one(&env, &budget, &values, key, source)
        }))
        .unwrap_or_else(|_| Err(TemplateError::Internal { key: key.clone() }));
        let (text, left) = outcome?;
        fuel = left;
        budget.output.fetch_sub(text.len(), Ordering::Relaxed);
        rendered.insert(key.clone(), SecretValue::new(text));
    }
    Ok(rendered)
}

/// The sandbox: minijinja with no loader (so no file access; and without its
/// `multi_template` feature there is no `include` either), no `debug()`,
/// strict undefined, fuel, no auto-escaping, only the filters listed in the
/// module documentation and the kvsync helpers.
fn environment<'source>(budget: &Arc<Budget>) -> Environment<'source> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    env.remove_global("debug");
    helpers::register(&mut env, budget);
    env
}

/// Renders one template with the fuel set on `env`: its text and the fuel
/// left.
fn render_one(
    env: &Environment<'_>,
    budget: &Arc<Budget>,
    values: &Arc<BTreeMap<String, Value>>,
    key: &str,
    source: &str,
) -> Result<(String, u64), TemplateError> {
    let template =
        env.template_from_named_str(key, source)
            .map_err(|err| TemplateError::Syntax {
                key: key.to_owned(),
                line: err.line(),
                // Parsing sees no value, so its words are the template's own.
                detail: err.detail().unwrap_or("invalid template").to_owned(),
            })?;
    let root = context::root(values);
    let mut sink = BoundedSink {
        bytes: Vec::new(),
        limit: budget.output_left(),
        overflowed: false,
    };
    match template.render_captured_to(root, &mut sink) {
        Ok(captured) => {
            let left = captured
                .state()
                .fuel_levels()
                .map_or(0, |(_, remaining)| remaining);
            drop(captured);
            // Output is written as `str` pieces, so this cannot fail.
            let text = String::from_utf8(sink.bytes).map_err(|_| TemplateError::Render {
                key: key.to_owned(),
                line: None,
                problem: "the output is not UTF-8 text".to_owned(),
            })?;
            Ok((text, left))
        }
        Err(_) if sink.overflowed => Err(TemplateError::TooLarge {
            key: key.to_owned(),
            limit: MAX_RENDERED_BYTES,
        }),
        Err(err) => Err(error::classify(env, &template, &err, key, source, values)),
    }
}

/// Collects the output and refuses to grow past `limit` (what is left of
/// [`MAX_RENDERED_BYTES`]), so a runaway template stops there (minijinja
/// then loses the line, hence `overflowed`).
struct BoundedSink {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl io::Write for BoundedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.overflowed || self.bytes.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Err(io::Error::other("rendered value too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
