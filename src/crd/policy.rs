//! The `VaultAccessPolicy` custom resource (cluster-scoped): which vaults,
//! secret names and identities the bindings of some namespaces may use.
//!
//! Doc comments become the CRD's field descriptions (`kubectl explain
//! vaultaccesspolicy.spec`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Limits what the VaultSecretBindings of some namespaces may read: which
/// vault hosts, which secret names and which identities.
///
/// For a binding in a namespace that one or more policies select, some
/// selecting policy must allow its vault, every secret it picks by name and
/// its identity; names a `select` lists are kept only when such a policy
/// allows them. With the operator's `--access-policy enforce`, a namespace no
/// policy selects may use nothing.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kvsync.io",
    version = "v1alpha1",
    kind = "VaultAccessPolicy",
    plural = "vaultaccesspolicies",
    shortname = "vap",
    category = "kvsync",
    doc = "Limits which vaults, secret names and identities the VaultSecretBindings of some namespaces may use.",
    derive = "PartialEq",
    printcolumn(name = "Vaults", type_ = "string", json_path = ".spec.vaults"),
    printcolumn(name = "Secrets", type_ = "string", json_path = ".spec.secrets"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VaultAccessPolicySpec {
    /// The namespaces this policy governs, by their labels. Omitted or
    /// empty: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])",
            "message": "namespaceSelector.matchExpressions[].operator must be In, NotIn, Exists or DoesNotExist"
        },
        {
            "rule": "!has(self.matchExpressions) || self.matchExpressions.all(e, (e.operator in ['In', 'NotIn']) == (has(e.values) && size(e.values) > 0))",
            "message": "namespaceSelector.matchExpressions[].values: required (non-empty) for In and NotIn, empty for Exists and DoesNotExist"
        }
    ]))]
    pub namespace_selector: Option<LabelSelector>,

    /// Vault hosts the bindings may read, such as `kv-ci.vault.azure.net`
    /// or `*-ci.vault.azure.net` (`*` is any run of letters, digits and
    /// `-`, never a dot); `*` alone allows every vault host the operator
    /// may reach. At least one.
    #[schemars(
        length(min = 1, max = 64),
        inner(
            pattern(r"^[A-Za-z0-9*-]+(\.[A-Za-z0-9*-]+)*(:[0-9*]+)?$"),
            length(max = 253)
        )
    )]
    pub vaults: Vec<String>,

    /// Secret names the bindings may read, such as `public-*` (`*` is any
    /// run of letters, digits and `-`), however they read them: picks,
    /// pinned versions, certificates, `select`. Omitted: every name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(pattern(r"^[0-9a-zA-Z*-]{1,127}$")))]
    pub secrets: Option<Vec<String>>,

    /// The identities the bindings may use. Omitted: every kind. When set,
    /// only what it allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<IdentityRules>,
}

/// Which identities bindings may use (each kind is refused unless allowed
/// here).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRules {
    /// The operator's own workload identity (a binding without
    /// `spec.identity.serviceAccountName`, `managedIdentity` or
    /// `clientSecretRef`).
    #[serde(default)]
    pub operator: bool,

    /// A ServiceAccount of the binding's namespace
    /// (`spec.identity.serviceAccountName`).
    #[serde(default)]
    pub service_accounts: bool,

    /// Client ids of the node managed identities bindings may use
    /// (`spec.identity.managedIdentity`); `system` for the system-assigned
    /// one, `*` for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub managed_identity_client_ids: Vec<String>,

    /// A client secret from a Secret of the binding's namespace
    /// (`spec.identity.clientSecretRef`).
    #[serde(default)]
    pub client_secret: bool,

    /// Application (client) ids bindings may name in
    /// `spec.identity.clientId` (with any kind above); `*` for any. Omitted:
    /// no binding may set `clientId` (which `clientSecretRef` needs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub client_ids: Vec<String>,

    /// Tenant ids the bindings' identities may sign in to, whether named in
    /// `spec.identity.tenantId` or by the ServiceAccount's
    /// `azure.workload.identity/tenant-id` annotation; `*` for any.
    /// Omitted: only the operator's own tenant, and no binding may set
    /// `tenantId`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub tenant_ids: Vec<String>,
}

/// The CRD as YAML (`crds/kvsync.io_vaultaccesspolicies.yaml`).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&VaultAccessPolicy::crd()).expect("the CRD serializes to YAML")
}

/// The CRD as the Helm chart's template (see [`super::crd_chart_template`]).
pub fn crd_chart_template() -> String {
    use kube::CustomResourceExt;
    super::chart_template(VaultAccessPolicy::crd())
}
