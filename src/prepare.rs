//! The front half of a sync, one copy for the reconcile and `kvsync check`,
//! so the two can never decide differently:
//!
//! ```text
//!  validate ─▶ host guard ─▶ plan (no listing) ─▶ identity ids ─▶ policy ─▶ credential
//!  (spec)      (vaultUrl)    every name read      (annotations    judges     (client secret
//!                            by name, any field)   read, no token) plan+ids    loaded)
//! ```
//!
//! Nothing reaches a vault or Entra ID before every step passed: a denied
//! binding reads and writes nothing. The policies judge the plan (every
//! read, whatever field brought it in) and the identity as resolved (the
//! tenant a ServiceAccount's annotation names included), never the spec's
//! fields one by one; a `select` is then narrowed to the names they allow.

use std::borrow::Cow;

use crate::azure::AzureAccess;
use crate::azure::hosts::{HostError, VaultEndpoint};
use crate::azure::identity::{Credential, IdentityError, ServiceAccountCache};
use crate::crd::ValidationErrors;
use crate::crd::VaultSecretBindingSpec;
use crate::plan::{Plan, PlanError};
use crate::policy::view::{PolicyView, ViewError};
use crate::policy::{Denial, IdentityUse, Mode, NameFilter, Policies, Request};
use crate::reason::Reason;

/// The VaultAccessPolicies and namespace labels `kvsync check` decides
/// with (the operator decides from its watches instead).
pub struct GivenPolicies {
    /// The policies.
    pub policies: Policies,
    /// The binding's namespace's labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--access-policy`.
    pub mode: Mode,
}

/// Who judges a binding.
#[derive(Clone, Copy)]
pub enum Judge<'a> {
    /// No VaultAccessPolicy governs it (a cluster binding's kept binding:
    /// the platform team's own).
    Nobody,
    /// The operator's watches.
    View(&'a PolicyView),
    /// Policies given by hand (`kvsync check`).
    Given(&'a GivenPolicies),
}

impl Judge<'_> {
    /// Decides `request` for a binding in `namespace`.
    pub async fn decide(
        &self,
        namespace: &str,
        request: &Request<'_>,
    ) -> Result<NameFilter, PrepareError> {
        match self {
            Self::Nobody => Ok(NameFilter::any()),
            Self::View(view) => view
                .decide(namespace, request)
                .await?
                .map_err(PrepareError::Denied),
            Self::Given(g) => g
                .policies
                .decide(g.mode, namespace, &g.labels, request)
                .map_err(PrepareError::Denied),
        }
    }
}

/// What a binding is prepared with (`'s`: the spec's lifetime, which the
/// prepared binding keeps).
pub struct Inputs<'a, 's> {
    /// The spec (for a kept binding, its cluster binding's).
    pub spec: &'s VaultSecretBindingSpec,
    /// The binding's namespace (what the policies select by).
    pub namespace: &'a str,
    /// Where its ServiceAccount or client secret is read (a cluster
    /// binding names it; otherwise the binding's namespace).
    pub identity_namespace: &'a str,
    /// Hosts, environment and HTTP.
    pub access: &'a AzureAccess,
    /// The cluster, for ServiceAccounts and client secrets (`check` may
    /// have none).
    pub kube: Option<&'a kube::Client>,
    /// ServiceAccounts as the operator's watch holds them.
    pub service_accounts: Option<&'a ServiceAccountCache>,
    /// Who judges it.
    pub judge: Judge<'a>,
}

/// A binding ready to be read.
#[derive(Debug)]
pub struct Prepared<'a> {
    /// The vault, past the host guard.
    pub endpoint: VaultEndpoint,
    /// The spec, its `select` narrowed to what the policies allow.
    pub spec: Cow<'a, VaultSecretBindingSpec>,
    /// How to sign in.
    pub credential: Credential,
    /// The tenant the policies judged, and the operator's own (for
    /// [`Prepared::judge_read`]).
    tenant: Option<String>,
    operator_tenant: Option<String>,
}

/// Why a binding cannot be read. Each is a condition reason and a message
/// that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The spec is invalid.
    #[error("{0}")]
    Invalid(ValidationErrors),
    /// The vault host is not one kvsync sends tokens to.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The picks cannot be planned (two on one key, an invalid key).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The identity cannot be resolved or loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A VaultAccessPolicy denies it.
    #[error("{}", .0.message)]
    Denied(Denial),
    /// The policies could not be decided yet.
    #[error(transparent)]
    Undecided(#[from] ViewError),
}

impl PrepareError {
    /// The condition reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Invalid(_) => Reason::InvalidSpec,
            Self::Host(_) => Reason::VaultHostNotAllowed,
            Self::Plan(e) => e.reason(),
            Self::Identity(e) => e.reason(),
            Self::Denied(_) | Self::Undecided(_) => Reason::PolicyDenied,
        }
    }

    /// Whether trying again later may succeed without a change by a person.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Identity(e) => e.is_transient(),
            Self::Undecided(_) => true,
            _ => false,
        }
    }
}

/// Prepares a binding: every check that needs no vault, in the order above.
pub async fn prepare<'s>(inputs: &Inputs<'_, 's>) -> Result<Prepared<'s>, PrepareError> {
    let spec = inputs.spec;
    spec.validate().map_err(PrepareError::Invalid)?;
    // The host guard runs before any identity is resolved or token fetched.
    let endpoint = inputs.access.endpoint(&spec.vault_url)?;
    // Every name read by name, whatever field brought it in.
    let named = crate::plan::plan(spec, &[])?;
    let env = &inputs.access.env;
    let resolved = env
        .resolve_ids(
            spec.identity.as_ref(),
            inputs.identity_namespace,
            inputs.kube,
            inputs.service_accounts,
        )
        .await?;
    let tenant = resolved.tenant_id().map(str::to_string);
    let authority = endpoint.authority();
    let request = Request {
        host: &authority,
        plan: &named,
        identity: IdentityUse {
            spec: spec.identity.as_ref(),
            tenant: tenant.as_deref(),
            operator_tenant: env.tenant_id.as_deref(),
        },
    };
    let filter = inputs.judge.decide(inputs.namespace, &request).await?;
    let spec = match crate::policy::narrowed(spec, filter) {
        Some(narrowed) => Cow::Owned(narrowed),
        None => Cow::Borrowed(spec),
    };
    let credential = resolved.load(inputs.kube).await?;
    Ok(Prepared {
        endpoint,
        spec,
        credential,
        tenant,
        operator_tenant: env.tenant_id.clone(),
    })
}

impl Prepared<'_> {
    /// Judges the plan that was read, as it is about to be written: a
    /// policy changed while the vault was read may forbid some of it.
    pub async fn judge_read(
        &self,
        judge: Judge<'_>,
        namespace: &str,
        plan: &Plan,
    ) -> Result<(), PrepareError> {
        let authority = self.endpoint.authority();
        let request = Request {
            host: &authority,
            plan,
            identity: IdentityUse {
                spec: self.spec.identity.as_ref(),
                tenant: self.tenant.as_deref(),
                operator_tenant: self.operator_tenant.as_deref(),
            },
        };
        judge.decide(namespace, &request).await.map(|_| ())
    }
}
