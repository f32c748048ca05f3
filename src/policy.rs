//! VaultAccessPolicy decisions (pure): may a binding in a namespace read
//! its vault, every name its plan reads, with the identity it will really
//! use — and which listed names may its `select` take.
//!
//! The policies judge a [`Request`]: the vault host, the binding's
//! [`Plan`] (every read, whatever field of the spec brought it in: picks,
//! pinned versions, certificates, `select` results) and the identity as the
//! resolver resolved it (its kind, the spec's overrides and the tenant it
//! signs in to, wherever that came from: the spec, a ServiceAccount's
//! annotation or the operator's environment). They never look at the spec's
//! fields one by one, so a new way of reading cannot pass them by.
//!
//! A binding in a namespace that some policies select is allowed when one
//! of them allows its vault host, every name it reads by name and its
//! identity; the names its `select` lists are kept only when one of those
//! allowing policies allows them. A namespace no policy selects is open,
//! unless the operator runs with `--access-policy enforce`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::crd::matching::{glob, selects};
use crate::crd::policy::{IdentityRules, VaultAccessPolicySpec};
use crate::crd::{VaultIdentity, VaultSecretBindingSpec};
use crate::plan::{Plan, Role};

/// `--access-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// A namespace no policy selects may use anything (policies only deny).
    #[default]
    Open,
    /// A namespace no policy selects may use nothing.
    Enforce,
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

/// What a binding asks for, as the policies judge it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The vault host (`host[:port]`, as in its vaultUrl).
    pub host: &'a str,
    /// Every read: before the vault is listed, the plan without a listing
    /// (every name read by name); before a write, the plan that was read.
    pub plan: &'a Plan,
    /// The identity it will use.
    pub identity: IdentityUse<'a>,
}

/// The identity a binding will really use, as resolved.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityUse<'a> {
    /// `spec.identity`: its kind and overrides.
    pub spec: Option<&'a VaultIdentity>,
    /// The tenant the credential signs in to, wherever it came from (the
    /// spec, a ServiceAccount's `azure.workload.identity/tenant-id`, the
    /// operator's `AZURE_TENANT_ID`); `None` for a managed identity.
    pub tenant: Option<&'a str>,
    /// The operator's own tenant (`AZURE_TENANT_ID`): the one tenant
    /// `identities.tenantIds` need not list.
    pub operator_tenant: Option<&'a str>,
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
fn identity_denial(rules: &IdentityRules, identity: &IdentityUse<'_>) -> Option<String> {
    let id = identity.spec.cloned().unwrap_or_default();
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
    // The tenant the credential really signs in to: a ServiceAccount's
    // annotation names one too, and only the operator's own needs no rule.
    if let Some(t) = identity.tenant {
        let own = identity
            .operator_tenant
            .is_some_and(|o| o.eq_ignore_ascii_case(t));
        if !own && !listed(&rules.tenant_ids, t) {
            return Some(format!(
                "identities.tenantIds does not allow tenant {t}, which the identity signs in to (from spec.identity.tenantId or the ServiceAccount's azure.workload.identity/tenant-id annotation); only the operator's own tenant needs no entry"
            ));
        }
    }
    None
}

impl Policy {
    /// Why this policy does not allow `request`; `None`: it does. Names a
    /// `select` listed are judged by [`NameFilter`], not here.
    fn denial(&self, request: &Request<'_>) -> Option<String> {
        let s = &self.spec;
        let host = request.host;
        if !s.vaults.iter().any(|p| p == "*" || glob(p, host)) {
            return Some(format!(
                "vault {host} is not among vaults [{}]",
                s.vaults.join(", ")
            ));
        }
        if let Some(patterns) = &s.secrets
            && let Some(read) = request.plan.keys.iter().find(|k| {
                k.role != Role::Selected && !patterns.iter().any(|pat| glob(pat, &k.secret))
            })
        {
            return Some(format!(
                "secret {} ({}) is not among secrets [{}]",
                read.secret,
                read.field(),
                patterns.join(", ")
            ));
        }
        if let Some(rules) = &s.identities {
            return identity_denial(rules, &request.identity);
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

    /// Decides for a binding in namespace `namespace` (with `labels`)
    /// making `request`: the names a `select` may take, or why not at all.
    /// A `select` result in the plan that the allowing policies do not
    /// allow denies too (a plan read before a policy changed).
    pub fn decide(
        &self,
        mode: Mode,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        request: &Request<'_>,
    ) -> Result<NameFilter, Denial> {
        let filter = self.decide_named(mode, namespace, labels, request)?;
        match request
            .plan
            .keys
            .iter()
            .find(|k| k.role == Role::Selected && !filter.allows(&k.secret))
        {
            Some(k) => Err(Denial {
                message: format!(
                    "secret {} ({}) is not among the names the VaultAccessPolicies selecting namespace {namespace} allow",
                    k.secret,
                    k.field()
                ),
            }),
            None => Ok(filter),
        }
    }

    fn decide_named(
        &self,
        mode: Mode,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        request: &Request<'_>,
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
            match p.denial(request) {
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
