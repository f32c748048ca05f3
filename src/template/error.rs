//! [`TemplateError`]: what went wrong, built from the engine's error kind
//! and line and our helpers' refusals, never from its message.

use std::collections::BTreeMap;

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, Template};

use super::FUEL;
use super::context;
use super::helpers::HelperRefusal;

/// How many available keys an undefined-name error lists.
const LISTED_KEYS: usize = 20;

/// Why a template could not be rendered. Built from the template's key and
/// text and from the engine's error kind and line: never holds a value or
/// rendered text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is not valid template syntax.
    #[error("{}: syntax error: {detail}", place(.key, .line))]
    Syntax {
        /// The Secret key whose template failed.
        key: String,
        /// 1-based line in the template, when known.
        line: Option<usize>,
        /// What the parser expected (template text only).
        detail: String,
    },
    /// The template uses something that has no value.
    #[error("{}: {}", place(.key, .line), undefined_message(.name, .not_found, .known))]
    Undefined {
        /// The Secret key whose template failed.
        key: String,
        /// 1-based line in the template, when known.
        line: Option<usize>,
        /// The undefined name as written (`REG_PASWORD`, `values["db-pw"]`),
        /// when the failing line spells it. Always taken from the template
        /// text, never from a name computed while rendering.
        name: Option<String>,
        /// Otherwise, names the template text uses that have no value (those
        /// on the failing line, or all of them when the line is unknown).
        not_found: Vec<String>,
        /// Keys of the values the template can use (the first few).
        known: Vec<String>,
    },
    /// The template uses an operator Secret templates do not have (`*`,
    /// `**`, `+`: they build lists for free that could be written out as
    /// gigabytes before any check).
    #[error(
        "template {key}, line {line}: the {operator} operator is not available in templates (join text with ~)"
    )]
    Operator {
        /// The Secret key whose template is refused.
        key: String,
        /// 1-based line of the first use.
        line: usize,
        /// The operator.
        operator: &'static str,
    },
    /// The template is longer than
    /// [`MAX_TEMPLATE_BYTES`](super::MAX_TEMPLATE_BYTES).
    #[error("template {key}: the template is longer than {limit} bytes")]
    TooLong {
        /// The Secret key whose template is too long.
        key: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The templates did more work than [`FUEL`] allows (all the templates
    /// of a Secret together).
    #[error("{}: the template does too much work (more than {FUEL} steps for all the templates; a loop too long?)", place(.key, .line))]
    OutOfFuel {
        /// The Secret key whose template failed.
        key: String,
        /// 1-based line in the template, when known.
        line: Option<usize>,
    },
    /// The rendered values would be larger than
    /// [`MAX_RENDERED_BYTES`](super::MAX_RENDERED_BYTES) (all the templates
    /// of a Secret together).
    #[error("template {key}: the rendered values are larger than {limit} bytes")]
    TooLarge {
        /// The Secret key whose template failed.
        key: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A helper refused its input (invalid base64, an empty registry…).
    #[error("{}: {helper}: {problem}", place(.key, .line))]
    Helper {
        /// The Secret key whose template failed.
        key: String,
        /// 1-based line in the template, when known.
        line: Option<usize>,
        /// The helper, as the template calls it.
        helper: &'static str,
        /// What is wrong with its input (never the input).
        problem: &'static str,
    },
    /// Any other failure while rendering (an operator on the wrong type, an
    /// unknown filter, a wrong number of arguments…).
    #[error("{}: {problem}", place(.key, .line))]
    Render {
        /// The Secret key whose template failed.
        key: String,
        /// 1-based line in the template, when known.
        line: Option<usize>,
        /// What went wrong, from the engine's error kind (never its message,
        /// which may quote a value).
        problem: String,
    },
    /// The template engine failed (a bug: it panicked, or its thread could
    /// not be started).
    #[error("template {key}: the template engine failed")]
    Internal {
        /// The Secret key being rendered (or the first one).
        key: String,
    },
}

impl TemplateError {
    /// The Secret key whose template failed.
    pub fn key(&self) -> &str {
        match self {
            Self::Syntax { key, .. }
            | Self::Undefined { key, .. }
            | Self::OutOfFuel { key, .. }
            | Self::TooLarge { key, .. }
            | Self::TooLong { key, .. }
            | Self::Operator { key, .. }
            | Self::Helper { key, .. }
            | Self::Render { key, .. }
            | Self::Internal { key } => key,
        }
    }

    /// The 1-based line in the template, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Syntax { line, .. }
            | Self::Undefined { line, .. }
            | Self::OutOfFuel { line, .. }
            | Self::Helper { line, .. }
            | Self::Render { line, .. } => *line,
            Self::TooLarge { .. } | Self::TooLong { .. } | Self::Internal { .. } => None,
            Self::Operator { line, .. } => Some(*line),
        }
    }
}

fn place(key: &str, line: &Option<usize>) -> String {
    match line {
        Some(line) => format!("template {key}, line {line}"),
        None => format!("template {key}"),
    }
}

fn undefined_message(name: &Option<String>, not_found: &[String], known: &[String]) -> String {
    let what = match (name, not_found) {
        (Some(name), _) => format!("`{name}` is undefined"),
        (None, []) => "a name or values[...] key that is not defined is used here".to_owned(),
        (None, names) => format!(
            "a name or values[...] key that is not defined is used here (the template uses, with no value: {})",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if known.is_empty() {
        format!("{what}; there are no values")
    } else {
        format!("{what}; the values are {}", known.join(", "))
    }
}

/// Turns minijinja's error into ours from its kind, line and our own
/// helpers' refusals only: its message may quote a value (`unable to
/// calculate …`), and with its `debug` feature its Display shows the source
/// and the values in scope.
pub(super) fn classify(
    env: &Environment<'_>,
    template: &Template<'_, '_>,
    err: &minijinja::Error,
    key: &str,
    source: &str,
    values: &BTreeMap<String, Value>,
) -> TemplateError {
    let key = key.to_owned();
    let line = err.line();
    let refusal = std::error::Error::source(err).and_then(|s| s.downcast_ref::<HelperRefusal>());
    if let Some(refusal) = refusal {
        return TemplateError::Helper {
            key,
            line,
            helper: refusal.helper,
            problem: refusal.problem,
        };
    }
    let problem = match err.kind() {
        ErrorKind::OutOfFuel => return TemplateError::OutOfFuel { key, line },
        ErrorKind::UndefinedError => {
            let (name, not_found) = context::describe(env, template, source, line, values);
            return TemplateError::Undefined {
                key,
                line,
                name,
                not_found,
                known: values.keys().take(LISTED_KEYS).cloned().collect(),
            };
        }
        // "filter x is unknown": the name as the template wrote it.
        ErrorKind::UnknownFilter | ErrorKind::UnknownTest | ErrorKind::UnknownFunction => {
            err.detail().unwrap_or("unknown name").to_owned()
        }
        ErrorKind::SyntaxError | ErrorKind::BadEscape | ErrorKind::InvalidDelimiter => {
            return TemplateError::Syntax {
                key,
                line,
                detail: err.kind().to_string(),
            };
        }
        ErrorKind::InvalidOperation => {
            "invalid operation (an operator, filter or call on a value of the wrong type?)"
                .to_owned()
        }
        ErrorKind::TemplateNotFound | ErrorKind::BadInclude => {
            "templates cannot include, import or extend other templates".to_owned()
        }
        kind => kind.to_string(),
    };
    TemplateError::Render { key, line, problem }
}
