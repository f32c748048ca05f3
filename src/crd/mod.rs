//! The `VaultSecretBinding` custom resource (group `kvsync.io`, version `v1alpha1`).
//!
//! Doc comments on these types become the CRD's field descriptions, so they are
//! written for the person running `kubectl explain vaultsecretbinding.spec`.
//!
//! Beside the three resources (`VaultSecretBinding` here, [`cluster`],
//! [`policy`]): [`names`], every name kvsync writes on other objects;
//! [`matching`], the globs and label selectors their rules use; and the
//! checks that mirror the schema (`validate`, re-exported here). Nothing
//! in this folder imports a module above it.

// clippy reads the repeated `printcolumn(type_ = ...)` as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod cluster;
pub mod matching;
pub mod names;
pub mod policy;
mod validate;

pub use validate::{
    ENTRA_ID_MAX_LEN, ENTRA_ID_PATTERN, entra_id_problem, is_dns1123_subdomain, is_entra_id,
    is_secret_key, is_vault_secret_name,
};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use validate::{FieldError, ValidationErrors};

/// At most this many templated keys per binding (each costs a render).
pub const MAX_TEMPLATE_KEYS: usize = 20;
/// The longest template, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
/// The shortest refresh interval a binding may ask for.
pub const MIN_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps a Kubernetes Secret in step with secrets held in an Azure Key Vault.
///
/// The operator signs in to Entra ID (workload identity by default), reads the
/// secrets named in `secrets` and/or matched by `select`, writes them into the
/// Secret named by `target`, and checks the vault for new versions every
/// `refreshInterval`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kvsync.io",
    version = "v1alpha1",
    kind = "VaultSecretBinding",
    plural = "vaultsecretbindings",
    shortname = "vsb",
    category = "kvsync",
    namespaced,
    doc = "Keeps a Kubernetes Secret in step with secrets held in an Azure Key Vault.",
    status = "VaultSecretBindingStatus",
    derive = "PartialEq",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(
        name = "Secrets",
        type_ = "integer",
        json_path = ".status.secretCount",
        description = "Number of vault secrets in the target Secret"
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
    }
]))]
pub struct VaultSecretBindingSpec {
    /// The Entra identity used to read the vault. Omit it to use the operator's
    /// own workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<VaultIdentity>,

    /// What to sync and where (the fields shared with
    /// ClusterVaultSecretBinding).
    #[serde(flatten)]
    pub sync: SyncSpec,
}

impl std::ops::Deref for VaultSecretBindingSpec {
    type Target = SyncSpec;
    fn deref(&self) -> &SyncSpec {
        &self.sync
    }
}

impl std::ops::DerefMut for VaultSecretBindingSpec {
    fn deref_mut(&mut self) -> &mut SyncSpec {
        &mut self.sync
    }
}

/// The vault, the secrets to take from it, the Secret to write and how to
/// keep it: everything of a binding but the identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// URL of the Key Vault, e.g. `https://contoso-ci.vault.azure.net`. Must be
    /// https, and its host must end in a Key Vault DNS suffix
    /// (`.vault.azure.net`, `.vault.azure.cn`, `.vault.usgovcloudapi.net`,
    /// `.vault.microsoftazure.de`, `.managedhsm.azure.net`) or be allowed by the
    /// operator's `--allowed-vault-hosts`; bearer tokens go nowhere else.
    #[schemars(pattern(r"^https://[^/?#\s]+/?$"), length(max = 2048))]
    pub vault_url: String,

    /// Secrets picked by name, like "+ Add" in an Azure Pipelines variable
    /// group linked to a Key Vault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub secrets: Vec<SecretPick>,

    /// Picks secrets in bulk: every secret (`all: true`), those whose name
    /// starts with `namePrefix`, and/or those carrying all of `tags`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<SecretSelector>,

    /// Key Vault certificates picked by name: kvsync reads each one's backing
    /// secret (the PFX or PEM Key Vault keeps with the private key) and
    /// writes it as `tls.crt`/`tls.key` (`format: Tls`) or as one PEM file
    /// (`format: Pem`). A renewed certificate is a new version of that
    /// secret, followed like any other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub certificates: Vec<CertificatePick>,

    /// How a vault secret name becomes a key in the Secret when a pick sets no
    /// `key`: `Verbatim` keeps it (`db-password`), `EnvVar` makes it an
    /// environment variable name (`DB_PASSWORD`).
    #[serde(default)]
    pub key_transform: KeyTransform,

    /// The Secret to write. Defaults to an `Opaque` Secret named like the
    /// binding, owned by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<SecretTarget>,

    /// How often to check the vault for new versions, as a duration (`30s`,
    /// `5m`, `1h`); at least `30s`. Defaults to the operator's
    /// `--default-refresh-interval` (5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) >= duration('30s')", "message": "refreshInterval must be at least 30s"}
    ]))]
    pub refresh_interval: Option<String>,

    /// What to do when a secret is disabled in the vault: `KeepLast` keeps the
    /// last value synced, `Remove` drops its key from the Secret, `Fail` marks
    /// the binding not Ready (the Secret keeps its last data).
    #[serde(default)]
    pub on_disabled: OnDisabled,

    /// What to do with a secret past its expiry date (Key Vault still serves
    /// it): `Sync` syncs it, `Warn` syncs it and sets the `ExpiringSoon`
    /// condition, `Skip` leaves it out of the Secret.
    #[serde(default)]
    pub on_expired: OnExpired,

    /// Workloads to restart (their pod template is annotated
    /// `kvsync.io/restartedAt`, as `kubectl rollout restart` does) when the
    /// Secret's data changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub rollout: Vec<RolloutTarget>,
}

/// The Entra identity used to read the vault. Set at most one of
/// `serviceAccountName`, `managedIdentity` and `clientSecretRef`; with none of
/// them, `clientId`/`tenantId` override the operator's own workload identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.serviceAccountName) ? 1 : 0) + (has(self.managedIdentity) ? 1 : 0) + (has(self.clientSecretRef) ? 1 : 0) <= 1",
        "message": "set at most one of identity.serviceAccountName, identity.managedIdentity and identity.clientSecretRef"
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
pub struct VaultIdentity {
    /// A ServiceAccount in the binding's namespace whose
    /// `azure.workload.identity/client-id` (and optional `tenant-id`)
    /// annotations name the Entra application. The operator gets a token for it
    /// with the TokenRequest API (audience `api://AzureADTokenExchange`) and
    /// exchanges it at Entra ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub service_account_name: Option<String>,

    /// Entra application (client) id, a GUID; overrides the ServiceAccount
    /// annotation or the operator's `AZURE_CLIENT_ID`. A GUID or a DNS name
    /// (letters, digits, `-` and `.`) only: it is sent to Entra ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        pattern(ENTRA_ID_PATTERN),
        length(min = 1, max = ENTRA_ID_MAX_LEN)
    )]
    pub client_id: Option<String>,

    /// Entra tenant id, a GUID or a verified domain such as
    /// `contoso.onmicrosoft.com`; overrides the ServiceAccount annotation or the
    /// operator's `AZURE_TENANT_ID`. It becomes a path segment of the token URL
    /// at the operator's Entra ID host, so nothing else is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        pattern(ENTRA_ID_PATTERN),
        length(min = 1, max = ENTRA_ID_MAX_LEN)
    )]
    pub tenant_id: Option<String>,

    /// Use the node's managed identity through the instance metadata service
    /// (IMDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentity>,

    /// Use a service principal whose client secret is stored in a Secret of
    /// the binding's namespace (with `clientId`, and `tenantId` unless the
    /// operator's tenant is meant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
}

/// A managed identity reached through IMDS.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIdentity {
    /// Client id (a GUID) of a user-assigned managed identity; omit for the
    /// system-assigned one. A GUID or a DNS name only: it is sent to IMDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        pattern(ENTRA_ID_PATTERN),
        length(min = 1, max = ENTRA_ID_MAX_LEN)
    )]
    pub client_id: Option<String>,
}

/// A key of a Secret in the binding's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
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

/// One vault secret picked by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretPick {
    /// Name of the secret in Key Vault (1-127 letters, digits and dashes).
    #[schemars(pattern(r"^[0-9a-zA-Z-]{1,127}$"))]
    pub name: String,

    /// Key to write in the Secret. Defaults to the name passed through
    /// `keyTransform`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub key: Option<String>,

    /// Pins a version (the 32-character id at the end of a secret's URI).
    /// Empty or omitted means the latest version, followed as it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9a-zA-Z]{0,64}$"))]
    pub version: Option<String>,

    /// When true, a secret that does not exist in the vault (Azure's
    /// `SecretNotFound`) is left out instead of failing the binding; a
    /// disabled one follows `onDisabled` without failing. Any other error
    /// (403, firewall, throttling, 5xx, Entra ID refusing the identity) keeps
    /// the key's current value, like KeepLast, and the Ready message says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Picks vault secrets in bulk. Every condition given must hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.all) && self.all && has(self.namePrefix) && self.namePrefix != '')",
        "message": "select.all and select.namePrefix are exclusive: use all: true for every secret, or a namePrefix"
    },
    {
        "rule": "(has(self.all) && self.all) || (has(self.namePrefix) && self.namePrefix != '') || (has(self.tags) && size(self.tags) > 0)",
        "message": "select needs all: true, a namePrefix or tags"
    }
]))]
pub struct SecretSelector {
    /// Only secrets whose name starts with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9a-zA-Z-]{0,127}$"), length(max = 127))]
    pub name_prefix: Option<String>,

    /// Every secret in the vault (the variable group's `*` filter).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,

    /// Drop `namePrefix` from the name before it becomes a key
    /// (`agent-token` with prefix `agent-` becomes `token`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_prefix: bool,

    /// Only secrets carrying all of these tags with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,

    /// Set by the operator, never read from the API: the name patterns a
    /// VaultAccessPolicy lets this `select` take (`None`: any).
    #[serde(skip)]
    #[schemars(skip)]
    pub allowed_names: Option<Vec<String>>,
}

/// How a vault secret name becomes a Secret key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum KeyTransform {
    /// Keep the name as it is: `db-password`.
    #[default]
    Verbatim,
    /// Upper case, dashes to underscores: `db-password` becomes `DB_PASSWORD`.
    EnvVar,
}

/// The Secret the binding writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTarget {
    /// Name of the Secret, in the binding's namespace. Defaults to the
    /// binding's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub name: Option<String>,

    /// Secret type, e.g. `Opaque`, `kubernetes.io/dockerconfigjson`,
    /// `kubernetes.io/tls`. Default: `kubernetes.io/tls` when
    /// `spec.certificates` writes `tls.crt`/`tls.key` (format `Tls`), else
    /// `Opaque`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub type_: Option<String>,

    /// Extra labels for the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations for the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Builds the Secret's keys from the picked values with templates
    /// (an image-pull secret from a registry user and password, an
    /// `.npmrc`, a connection URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SecretTemplate>,

    /// Who owns the Secret: `Owner` (the binding; deleted with it), `Orphan`
    /// (left behind when the binding goes), `Merge` (add our keys to a Secret
    /// someone else owns; they are removed when the binding goes).
    #[serde(default)]
    pub policy: TargetPolicy,
}

/// Secret keys rendered from the picked values.
///
/// Each picked value is a variable named by its Secret key (after
/// `keyTransform`): `{{ REG_PASSWORD }}`; every value is also in `values`:
/// `{{ values["db-password"] }}`. A name that is not defined is an error,
/// never an empty string. Helpers: `b64encode`, `b64decode`, `tojson`,
/// `toyaml`, `urlencode` (filters) and `dockerconfigjson(registry,
/// username, password)`. Templates cannot read files, the network or the
/// environment, and their run time and output are bounded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// The Secret's type (overrides `target.type`), e.g.
    /// `kubernetes.io/dockerconfigjson`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub type_: Option<String>,

    /// Secret key → template (at most 20 keys, each template at most 16 KiB).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 20,
        "additionalProperties" = {"type": "string", "maxLength": 16384}
    ))]
    pub data: BTreeMap<String, String>,

    /// Extra labels and annotations for the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,

    /// `Replace`: the Secret holds the templated keys only (the picked
    /// values are just their inputs). `Merge`: the picked keys too (a
    /// templated key of the same name wins).
    #[serde(default)]
    pub merge_policy: TemplateMergePolicy,
}

/// Extra metadata of a templated Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Extra labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Which keys a templated Secret holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum TemplateMergePolicy {
    /// The templated keys only.
    #[default]
    Replace,
    /// The templated keys and the picked ones.
    Merge,
}

/// A Key Vault certificate picked by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificatePick {
    /// Name of the certificate in Key Vault (its backing secret has the
    /// same name).
    #[schemars(pattern(r"^[0-9a-zA-Z-]{1,127}$"))]
    pub name: String,

    /// `Tls`: `tls.crt` (the leaf, then its chain in issuing order) and
    /// `tls.key` (PKCS#8 PEM), as a `kubernetes.io/tls` Secret holds them.
    /// `Pem`: one key holding the private key, the leaf and the chain.
    /// `Pfx`: one key holding the PFX file as-is (a certificate Key Vault
    /// keeps as PEM cannot be written so).
    #[serde(default)]
    pub format: CertificateFormat,

    /// For `Pem` and `Pfx`, the key to write (default: the name with
    /// `.pem` or `.pfx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub key: Option<String>,

    /// Pins a version; omitted means the latest, followed as it renews.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9a-zA-Z]{0,64}$"))]
    pub version: Option<String>,
}

/// How a certificate is written.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum CertificateFormat {
    /// `tls.crt` and `tls.key`.
    #[default]
    Tls,
    /// One PEM file: key, leaf, chain.
    Pem,
    /// The PFX file as Key Vault holds it (binary, no password), for
    /// consumers that read PKCS#12.
    Pfx,
}

/// Ownership of the target Secret.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum TargetPolicy {
    /// The binding owns the Secret; Kubernetes deletes it with the binding.
    #[default]
    Owner,
    /// The Secret is left behind when the binding is deleted.
    Orphan,
    /// Our keys are added to a Secret someone else manages, and removed when
    /// the binding is deleted. A key another writer set (another field
    /// manager) is never taken: that is a `MergeConflict` condition.
    Merge,
}

/// What to do with a secret disabled in the vault.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum OnDisabled {
    /// Keep the value the Secret holds. When the Secret no longer holds it
    /// (deleted, or never synced), the other keys are written and the
    /// binding is not Ready (`SecretDisabled`), naming the disabled secret.
    #[default]
    KeepLast,
    /// Remove the key from the Secret.
    Remove,
    /// Mark the binding not Ready; the Secret keeps its last data.
    Fail,
}

/// What to do with a secret past its expiry date.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum OnExpired {
    /// Sync it (Key Vault still serves expired values); the `ExpiringSoon`
    /// condition reports it.
    #[default]
    Sync,
    /// Same as `Sync` today: synced and reported in `ExpiringSoon`.
    Warn,
    /// Leave it out of the Secret.
    Skip,
}

/// A workload restarted when the Secret's data changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTarget {
    /// Kind of the workload.
    pub kind: RolloutKind,
    /// Name of the workload, in the binding's namespace.
    #[schemars(
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub name: String,
}

/// Kinds of workload that can be restarted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RolloutKind {
    /// An `apps/v1` Deployment.
    Deployment,
    /// An `apps/v1` StatefulSet.
    StatefulSet,
    /// An `apps/v1` DaemonSet.
    DaemonSet,
}

/// What the operator last saw and did. Never holds a secret value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultSecretBindingStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` (with a reason such as `Synced`, `VaultForbidden`,
    /// `InvalidSpec`) and `ExpiringSoon`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The vault secrets now in the target Secret: names, keys and versions,
    /// never values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SyncedSecret>,

    /// Number of entries in `secrets` (for the printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_count: Option<i32>,

    /// Last successful check with the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,

    /// Last time the Secret's data changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<Time>,

    /// Keyed hash (`hmac-sha256:`, with a key only the operator holds) of
    /// the data written: an equal hash means no write. It cannot be used to
    /// confirm a guessed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hash: Option<String>,

    /// Set while a rollout restart of `spec.rollout` is due: the time of the
    /// first data change not yet rolled out. Kept here so that an operator
    /// restart or a failed patch never drops the restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_pending_since: Option<Time>,

    /// The last `kvsync.io/force-sync` annotation value acted upon; a
    /// different value triggers one immediate check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_sync_handled: Option<String>,

    /// The Secret last written. When `target.name` changes, kvsync cleans up
    /// the old one: an owned Secret is deleted, Merge keys are removed, an
    /// Orphan Secret stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<String>,

    /// The target Secret's `metadata.resourceVersion` when kvsync last wrote
    /// it or found it as the binding wants it. While the Secret still has
    /// this version (seen by kvsync's metadata watch) and the vault data is
    /// unchanged, kvsync does not read the Secret at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_resource_version: Option<String>,
}

/// One vault secret synced into the target Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncedSecret {
    /// Name in the vault.
    pub name: String,
    /// Key in the Secret (with `target.template`, the name the template
    /// reads the value by; for a certificate, `tls.crt` or its PEM key).
    pub key: String,
    /// Version id synced.
    pub version: String,
    /// When that version was last updated in the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<Time>,
    /// When the secret expires, if it has an expiry date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
}

impl SyncSpec {
    /// The Secret's name: `target.name`, else the binding's name.
    pub fn target_name<'a>(&'a self, binding_name: &'a str) -> &'a str {
        self.target
            .as_ref()
            .and_then(|t| t.name.as_deref())
            .unwrap_or(binding_name)
    }

    /// The target's ownership policy.
    pub fn policy(&self) -> TargetPolicy {
        self.target.as_ref().map(|t| t.policy).unwrap_or_default()
    }

    /// The Secret's type: `target.template.type`, else `target.type`, else
    /// `kubernetes.io/tls` when a certificate is written as `tls.crt` and
    /// `tls.key`, else `Opaque`.
    pub fn target_type(&self) -> &str {
        let target = self.target.as_ref();
        // Only when tls.crt and tls.key are in the Secret: a Replace
        // template writes its own keys only.
        let replaced = target
            .and_then(|t| t.template.as_ref())
            .is_some_and(|t| t.merge_policy == TemplateMergePolicy::Replace);
        let tls = !replaced
            && self
                .certificates
                .iter()
                .any(|c| c.format == CertificateFormat::Tls);
        target
            .and_then(|t| t.template.as_ref())
            .and_then(|t| t.type_.as_deref())
            .or_else(|| target.and_then(|t| t.type_.as_deref()))
            .unwrap_or(if tls { "kubernetes.io/tls" } else { "Opaque" })
    }

    /// `target.template`, if any.
    pub fn template(&self) -> Option<&SecretTemplate> {
        self.target.as_ref()?.template.as_ref()
    }

    /// The refresh interval, or `default` when unset. Call after `validate()`.
    pub fn refresh_interval_or(&self, default: std::time::Duration) -> std::time::Duration {
        self.refresh_interval
            .as_deref()
            .and_then(|s| crate::duration::parse(s).ok())
            .unwrap_or(default)
    }
}

/// The CRD as YAML, as `kvsync crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&VaultSecretBinding::crd()).expect("the CRD serializes to YAML")
}

/// The CRD as the Helm chart's template (`charts/kvsync/templates/crds/`):
/// installed and upgraded with the chart when `crds.install` is true, and
/// kept on `helm uninstall` so users' bindings survive it.
pub fn crd_chart_template() -> String {
    use kube::CustomResourceExt;
    chart_template(VaultSecretBinding::crd())
}

fn chart_template(
    mut crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    crd.metadata.annotations =
        Some([("helm.sh/resource-policy".to_string(), "keep".to_string())].into());
    let yaml = serde_yaml::to_string(&crd).expect("the CRD serializes to YAML");
    format!(
        "{{{{- /* Generated from the Rust types by `KVSYNC_BLESS=1 cargo test --test chart`: do not edit. */}}}}\n{{{{- if .Values.crds.install }}}}\n{yaml}{{{{- end }}}}\n"
    )
}
