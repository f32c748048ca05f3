//! VaultAccessPolicy decisions (pure): may a binding in a namespace read
//! its vault, its picks, with its identity — and which listed names may its
//! `select` take.
//!
//! A binding in a namespace that some policies select is allowed when one
//! of them allows its vault host, every name it picks and its identity; the
//! names its `select` lists are kept only when one of those allowing
//! policies allows them. A namespace no policy selects is open, unless the
//! operator runs with `--access-policy enforce`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::crd::policy::{IdentityRules, VaultAccessPolicySpec};
use crate::crd::{VaultIdentity, VaultSecretBindingSpec};

/// `--access-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// A namespace no policy selects may use anything (policies only deny).
    #[default]
    Open,
    /// A namespace no policy selects may use nothing.
    Enforce,
}

/// `*` matches any run of letters, digits and `-` (never `.` or `:`);
/// everything else matches itself, ignoring ASCII case.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let wild = |c: u8| c.is_ascii_alphanumeric() || c == b'-';
    // Backtracking over the last `*` (enough for one-class globs).
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i].eq_ignore_ascii_case(&t[j]) {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star
            && wild(t[sj])
        {
            // The `*` takes one more character.
            star = Some((si, sj + 1));
            i = si + 1;
            j = sj + 1;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

/// Whether `selector` selects an object with `labels` (an empty or absent
/// selector selects everything). An expression that cannot be evaluated
/// (an unknown operator, `In`/`NotIn` without values — the CRD refuses
/// both) selects everything: a policy that fails must restrict more, not
/// less.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = selector else { return true };
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => true,
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => true,
        }
    });
    by_labels && by_expressions
}

/// `spec` with its `select` narrowed to what `filter` allows; `None` when
/// nothing needs narrowing (no `select`, or any name allowed).
pub fn narrowed(
    spec: &VaultSecretBindingSpec,
    filter: NameFilter,
) -> Option<VaultSecretBindingSpec> {
    let patterns = filter.patterns()?;
    spec.select.as_ref()?;
    let mut narrowed = spec.clone();
    if let Some(sel) = narrowed.select.as_mut() {
        sel.allowed_names = Some(patterns);
    }
    Some(narrowed)
}

/// One policy, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// Its spec.
    pub spec: VaultAccessPolicySpec,
}

/// What a policy decided against a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The message for the condition: the policy and the rule that decided.
    pub message: String,
}

/// The names a `select` may take: those some allowing policy allows
/// (`None`: any).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NameFilter(Option<Vec<String>>);

impl NameFilter {
    /// Any name.
    pub fn any() -> Self {
        Self(None)
    }

    /// The patterns (`None`: any name).
    pub fn patterns(self) -> Option<Vec<String>> {
        self.0
    }

    /// Whether `name` may be taken.
    pub fn allows(&self, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| glob(p, name)))
    }
}

/// The kind of identity a binding uses, as the rules name them.
fn identity_denial(rules: &IdentityRules, identity: Option<&VaultIdentity>) -> Option<String> {
    let id = identity.cloned().unwrap_or_default();
    let kind = if let Some(mi) = &id.managed_identity {
        let client = mi.client_id.as_deref().unwrap_or("system");
        let allowed = rules
            .managed_identity_client_ids
            .iter()
            .any(|c| c == "*" || c.eq_ignore_ascii_case(client));
        if !allowed {
            return Some(format!(
                "identities.managedIdentityClientIds does not allow managed identity {client}"
            ));
        }
        None
    } else if let Some(sa) = &id.service_account_name {
        // The order in which azure::identity resolves them.
        (!rules.service_accounts)
            .then(|| format!("identities.serviceAccounts is not true (ServiceAccount {sa})"))
    } else if id.client_secret_ref.is_some() {
        (!rules.client_secret).then(|| "identities.clientSecret is not true".to_string())
    } else {
        (!rules.operator)
            .then(|| "identities.operator is not true (the operator's own identity)".to_string())
    };
    if kind.is_some() {
        return kind;
    }
    let listed = |allowed: &[String], v: &str| {
        allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(v))
    };
    if let Some(c) = &id.client_id
        && !listed(&rules.client_ids, c)
    {
        return Some(format!("identities.clientIds does not allow clientId {c}"));
    }
    if let Some(t) = &id.tenant_id
        && !listed(&rules.tenant_ids, t)
    {
        return Some(format!("identities.tenantIds does not allow tenantId {t}"));
    }
    None
}

impl Policy {
    /// Why this policy does not allow `spec` at vault `host`; `None`: it does.
    fn denial(&self, host: &str, spec: &VaultSecretBindingSpec) -> Option<String> {
        let s = &self.spec;
        if !s.vaults.iter().any(|p| p == "*" || glob(p, host)) {
            return Some(format!(
                "vault {host} is not among vaults [{}]",
                s.vaults.join(", ")
            ));
        }
        if let Some(patterns) = &s.secrets
            && let Some(pick) = spec
                .secrets
                .iter()
                .find(|p| !patterns.iter().any(|pat| glob(pat, &p.name)))
        {
            return Some(format!(
                "secret {} is not among secrets [{}]",
                pick.name,
                patterns.join(", ")
            ));
        }
        if let Some(rules) = &s.identities {
            return identity_denial(rules, spec.identity.as_ref());
        }
        None
    }
}

/// Every policy the operator knows, sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies(Arc<Vec<Policy>>);

impl Policies {
    /// From any order.
    pub fn new(mut policies: Vec<Policy>) -> Self {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Self(Arc::new(policies))
    }

    /// Decides for a binding with `spec` in namespace `namespace` (with
    /// `labels`) reading vault `host` (`host[:port]`, as in its vaultUrl).
    pub fn decide(
        &self,
        mode: Mode,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        host: &str,
        spec: &VaultSecretBindingSpec,
    ) -> Result<NameFilter, Denial> {
        let selecting: Vec<&Policy> = self
            .0
            .iter()
            .filter(|p| selects(p.spec.namespace_selector.as_ref(), labels))
            .collect();
        if selecting.is_empty() {
            return match mode {
                Mode::Open => Ok(NameFilter::any()),
                Mode::Enforce => Err(Denial {
                    message: format!(
                        "no VaultAccessPolicy selects namespace {namespace} and the operator enforces policies (--access-policy enforce); ask the platform team for one"
                    ),
                }),
            };
        }
        let mut first_denial = None;
        let mut names: Option<Vec<String>> = Some(Vec::new());
        let mut allowed = false;
        for p in &selecting {
            match p.denial(host, spec) {
                None => {
                    allowed = true;
                    match (&mut names, &p.spec.secrets) {
                        (Some(all), Some(patterns)) => all.extend(patterns.iter().cloned()),
                        (n, None) => *n = None,
                        (None, Some(_)) => {}
                    }
                }
                Some(why) => {
                    first_denial
                        .get_or_insert_with(|| format!("VaultAccessPolicy {}: {why}", p.name));
                }
            }
        }
        if allowed {
            Ok(NameFilter(names))
        } else {
            let mut message = first_denial.expect("a selecting policy denied");
            if selecting.len() > 1 {
                message.push_str(&format!(
                    " (and {} other polic{} selecting namespace {namespace} allow it neither)",
                    selecting.len() - 1,
                    if selecting.len() == 2 { "y" } else { "ies" }
                ));
            }
            Err(Denial { message })
        }
    }
}

#[cfg(test)]
mod tests;
pub mod view;
