//! The `ClusterVaultSecretBinding` custom resource (cluster-scoped): one
//! binding, written into every namespace it selects — a variable group
//! linked to a Key Vault, for the whole cluster.
//!
//! kvsync keeps one `VaultSecretBinding` per selected namespace (its
//! "child", named like the cluster binding, owned by it), so each namespace
//! has its own status, drift repair, rollout and Merge cleanup; the child's
//! spec is a copy the operator keeps in step, and the operator always syncs
//! the cluster binding's own spec and identity for it, never what the child
//! says. Doc comments become the CRD's field descriptions.

// clippy reads the repeated `printcolumn(type_ = ...)` as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    ENTRA_ID_MAX_LEN, ENTRA_ID_PATTERN, FieldError, ManagedIdentity, SecretKeyRef, SyncSpec,
    SyncedSecret, ValidationErrors, VaultIdentity, VaultSecretBindingSpec, is_dns1123_subdomain,
};

/// At most this many failed namespaces are listed in the status.
pub const MAX_FAILED_LISTED: usize = 20;

/// Writes the same Secret into every namespace it selects, from one vault
/// read: a variable group linked to a Key Vault, for the whole cluster.
///
/// The spec is a VaultSecretBinding's plus `namespaceSelector` and/or
/// `namespaces`. In each selected namespace kvsync keeps a
/// VaultSecretBinding of the same name, owned by this object, and syncs it
/// with this spec and identity. A namespace that stops matching loses it
/// (and, with target policy Owner or Merge, the Secret or its keys). A
/// VaultSecretBinding of the namespace's own that writes the same Secret
/// wins: that namespace is reported as failed and left alone.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kvsync.io",
    version = "v1alpha1",
    kind = "ClusterVaultSecretBinding",
    plural = "clustervaultsecretbindings",
    shortname = "cvsb",
    category = "kvsync",
    doc = "Writes the same Secret, from one vault read, into every namespace it selects.",
    status = "ClusterVaultSecretBindingStatus",
    derive = "PartialEq",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Namespaces",
        type_ = "integer",
        json_path = ".status.namespacesSelected",
        description = "Namespaces selected"
    ),
    printcolumn(
        name = "Synced",
        type_ = "integer",
        json_path = ".status.namespacesSynced",
        description = "Namespaces whose Secret is in sync"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.namespacesFailed",
        description = "Namespaces whose Secret could not be synced"
    ),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.lastSyncTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.secrets) && size(self.secrets) > 0) || has(self.select) || (has(self.certificates) && size(self.certificates) > 0)",
        "message": "name at least one secret in spec.secrets or spec.certificates, or add spec.select"
    },
    {
        "rule": "has(self.namespaceSelector) || (has(self.namespaces) && size(self.namespaces) > 0)",
        "message": "select namespaces with spec.namespaceSelector and/or spec.namespaces"
    }
]))]
pub struct ClusterVaultSecretBindingSpec {
    /// Namespaces whose labels match (`{}` matches every namespace). A
    /// namespace matched here or listed in `namespaces` is selected.
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

    /// Namespaces selected by name (in addition to `namespaceSelector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 1000),
        inner(pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))
    )]
    pub namespaces: Vec<String>,

    /// The Entra identity used to read the vault, for every namespace. Omit
    /// it to use the operator's own workload identity. A ServiceAccount or
    /// client secret is named with its namespace: a cluster object has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ClusterIdentity>,

    /// The vault, secrets, Secret and refresh, as in a VaultSecretBinding.
    #[serde(flatten)]
    pub sync: SyncSpec,
}

/// The Entra identity of a cluster binding. Set at most one of
/// `serviceAccountRef`, `managedIdentity` and `clientSecretRef`; with none
/// of them, `clientId`/`tenantId` override the operator's own identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.serviceAccountRef) ? 1 : 0) + (has(self.managedIdentity) ? 1 : 0) + (has(self.clientSecretRef) ? 1 : 0) <= 1",
        "message": "set at most one of identity.serviceAccountRef, identity.managedIdentity and identity.clientSecretRef"
    },
    {
        "rule": "!has(self.clientSecretRef) || has(self.clientId)",
        "message": "identity.clientSecretRef needs identity.clientId (the application's client id)"
    },
    {
        "rule": "!has(self.managedIdentity) || (!has(self.clientId) && !has(self.tenantId))",
        "message": "identity.managedIdentity takes its client id in identity.managedIdentity.clientId; remove identity.clientId/tenantId"
    }
]))]
pub struct ClusterIdentity {
    /// A ServiceAccount whose `azure.workload.identity/client-id` (and
    /// optional `tenant-id`) annotations name the Entra application; the
    /// operator gets its token with the TokenRequest API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ref: Option<ObjectRef>,

    /// Entra application (client) id; overrides the ServiceAccount
    /// annotation or the operator's `AZURE_CLIENT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        pattern(ENTRA_ID_PATTERN),
        length(min = 1, max = ENTRA_ID_MAX_LEN)
    )]
    pub client_id: Option<String>,

    /// Entra tenant id (a GUID or a verified domain); overrides the
    /// ServiceAccount annotation or the operator's `AZURE_TENANT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        pattern(ENTRA_ID_PATTERN),
        length(min = 1, max = ENTRA_ID_MAX_LEN)
    )]
    pub tenant_id: Option<String>,

    /// Use the node's managed identity through IMDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentity>,

    /// Use a service principal whose client secret is stored in this
    /// Secret (with `clientId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<NamespacedSecretKeyRef>,
}

/// A named object in a namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Its namespace.
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub namespace: String,
    /// Its name.
    #[schemars(
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub name: String,
}

/// A key of a Secret in a named namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedSecretKeyRef {
    /// Namespace of the Secret.
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub name: String,
    /// Key in the Secret holding the client secret.
    #[schemars(pattern(r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub key: String,
}

/// What the operator last saw of the selected namespaces. Never holds a
/// secret value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterVaultSecretBindingStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: True when every selected namespace's Secret is in sync
    /// with this generation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Namespaces selected now.
    #[serde(default)]
    pub namespaces_selected: i32,

    /// Selected namespaces whose Secret is in sync with this generation.
    #[serde(default)]
    pub namespaces_synced: i32,

    /// Selected namespaces whose Secret could not be synced (or that a
    /// namespaced binding writing the same Secret keeps).
    #[serde(default)]
    pub namespaces_failed: i32,

    /// The failed namespaces, with why (the first 20 by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_namespaces: Vec<NamespaceFailure>,

    /// The vault secrets in the Secrets: names, keys and versions, never
    /// values (as the namespaces in sync report them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SyncedSecret>,

    /// The latest successful check with the vault in any namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}

/// One selected namespace whose Secret is not in sync.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceFailure {
    /// The namespace.
    pub namespace: String,
    /// The condition reason (as on a VaultSecretBinding).
    pub reason: String,
    /// What went wrong and what to do.
    pub message: String,
}

impl ClusterIdentity {
    /// The identity as a namespaced binding would name it, and the
    /// namespace its ServiceAccount or Secret is read in (`None`: it reads
    /// neither).
    pub fn as_namespaced(&self) -> (VaultIdentity, Option<String>) {
        let namespace = self
            .service_account_ref
            .as_ref()
            .map(|r| r.namespace.clone())
            .or_else(|| self.client_secret_ref.as_ref().map(|r| r.namespace.clone()));
        let identity = VaultIdentity {
            service_account_name: self.service_account_ref.as_ref().map(|r| r.name.clone()),
            client_id: self.client_id.clone(),
            tenant_id: self.tenant_id.clone(),
            managed_identity: self.managed_identity.clone(),
            client_secret_ref: self.client_secret_ref.as_ref().map(|r| SecretKeyRef {
                name: r.name.clone(),
                key: r.key.clone(),
            }),
        };
        (identity, namespace)
    }
}

impl ClusterVaultSecretBindingSpec {
    /// The spec a namespace's binding syncs with, and the namespace its
    /// identity is resolved in (`None`: the binding's own, which then reads
    /// nothing from it).
    pub fn binding_spec(&self) -> (VaultSecretBindingSpec, Option<String>) {
        let (identity, namespace) = match &self.identity {
            Some(id) => {
                let (identity, namespace) = id.as_namespaced();
                (Some(identity), namespace)
            }
            None => (None, None),
        };
        (
            VaultSecretBindingSpec {
                identity,
                sync: self.sync.clone(),
            },
            namespace,
        )
    }

    /// The spec a namespace's binding object shows: the cluster binding's,
    /// without the identity (which names other namespaces; kvsync takes it
    /// from the cluster binding).
    pub fn child_spec(&self) -> VaultSecretBindingSpec {
        VaultSecretBindingSpec {
            identity: None,
            sync: self.sync.clone(),
        }
    }

    /// Whether namespace `name` with `labels` is selected. A selector the
    /// schema refuses (see [`Self::validate`]) selects nothing: where
    /// Secrets go, narrower is safer.
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces.iter().any(|n| n == name)
            || self.namespace_selector.as_ref().is_some_and(|s| {
                selector_problems(s).is_empty() && super::matching::selects(Some(s), labels)
            })
    }

    /// Checks the spec; returns every problem found, each naming its field.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = match self.binding_spec().0.validate() {
            Ok(()) => Vec::new(),
            Err(ValidationErrors(errs)) => errs
                .into_iter()
                .map(|e| FieldError {
                    field: e.field.replace(
                        "identity.serviceAccountName",
                        "identity.serviceAccountRef.name",
                    ),
                    message: e.message,
                })
                .collect(),
        };
        if self.namespace_selector.is_none() && self.namespaces.is_empty() {
            errs.push(FieldError {
                field: "spec.namespaces".into(),
                message: "select namespaces with spec.namespaceSelector and/or spec.namespaces"
                    .into(),
            });
        }
        // A selector the schema would refuse selects nothing (see `selects`).
        if let Some(sel) = &self.namespace_selector {
            errs.extend(selector_problems(sel));
        }
        let label = |n: &str| n.len() <= 63 && !n.contains('.') && is_dns1123_subdomain(n);
        for (i, n) in self.namespaces.iter().enumerate() {
            if !label(n) {
                errs.push(FieldError {
                    field: format!("spec.namespaces[{i}]"),
                    message: format!("{n:?} is not a namespace name"),
                });
            }
        }
        let refs = self.identity.iter().flat_map(|id| {
            [
                id.service_account_ref
                    .as_ref()
                    .map(|r| ("spec.identity.serviceAccountRef.namespace", &r.namespace)),
                id.client_secret_ref
                    .as_ref()
                    .map(|r| ("spec.identity.clientSecretRef.namespace", &r.namespace)),
            ]
        });
        for (field, ns) in refs.flatten() {
            if !label(ns) {
                errs.push(FieldError {
                    field: field.into(),
                    message: format!("{ns:?} is not a namespace name"),
                });
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errs))
        }
    }
}

/// What is wrong with the match expressions of `selector`.
fn selector_problems(selector: &LabelSelector) -> Vec<FieldError> {
    selector
        .match_expressions
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, e)| {
            let values = e.values.as_ref().is_some_and(|v| !v.is_empty());
            let problem = match e.operator.as_str() {
                "In" | "NotIn" if !values => "needs values",
                "Exists" | "DoesNotExist" if values => "takes no values",
                "In" | "NotIn" | "Exists" | "DoesNotExist" => return None,
                _ => "must be In, NotIn, Exists or DoesNotExist",
            };
            Some(FieldError {
                field: format!("spec.namespaceSelector.matchExpressions[{i}]"),
                message: format!("operator {:?} {problem}", e.operator),
            })
        })
        .collect()
}

/// The CRD as YAML (`crds/kvsync.io_clustervaultsecretbindings.yaml`).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&ClusterVaultSecretBinding::crd()).expect("the CRD serializes to YAML")
}

/// The CRD as the Helm chart's template.
pub fn crd_chart_template() -> String {
    use kube::CustomResourceExt;
    super::chart_template(ClusterVaultSecretBinding::crd())
}
