//! Every name kvsync writes on objects other than its own resources' specs:
//! field managers, labels, annotations, the finalizer, the hash-key Secret,
//! the Lease and the keys of a TLS Secret. They are part of kvsync's contract
//! with the cluster (users select by them, `kubectl` shows them, an upgrade
//! must find what the last version wrote), so they live in one place and
//! change only on purpose.

/// Server-side apply field manager of the Secrets kvsync owns (target policy
/// Owner and Orphan) and of the VaultSecretBinding status it writes.
pub const FIELD_MANAGER: &str = "kvsync";

/// Start of the field manager a Merge binding writes its keys with
/// (`kvsync-merge-<binding uid>`): a Merge target is shared, so each binding
/// applies as its own manager and never removes another's keys.
pub const MERGE_FIELD_MANAGER_PREFIX: &str = "kvsync-merge-";

/// The field manager of the Merge binding whose uid is `uid`.
pub fn merge_field_manager(uid: &str) -> String {
    format!("{MERGE_FIELD_MANAGER_PREFIX}{uid}")
}

/// Field manager of the VaultSecretBindings kvsync keeps for
/// ClusterVaultSecretBindings, and of the cluster bindings' status.
pub const CLUSTER_FIELD_MANAGER: &str = "kvsync-cluster";

/// The label kvsync sets to [`MANAGED_BY`] on the Secrets it owns, on the
/// hash-key Secret and on the bindings it keeps for cluster bindings; what
/// the operator's Secret watch selects. Users cannot set it on a target.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// The value of [`MANAGED_BY_LABEL`] on what kvsync manages.
pub const MANAGED_BY: &str = "kvsync";

/// Label (value `true`) on the VaultSecretBindings kvsync keeps for cluster
/// bindings (what its watch of them selects).
pub const CHILD_LABEL: &str = "kvsync.io/cluster-binding-child";

/// Annotation on a Secret kvsync owns naming the binding that writes it, so
/// a second binding of the same target is refused.
pub const BINDING_ANNOTATION: &str = "kvsync.io/binding";

/// Annotation on a VaultSecretBinding kvsync keeps for a cluster binding,
/// naming its ClusterVaultSecretBinding.
pub const PARENT_ANNOTATION: &str = "kvsync.io/cluster-binding";

/// Annotation users set on a binding (or cluster binding, which copies it to
/// its children): a new value triggers an immediate check of the vault.
pub const FORCE_SYNC_ANNOTATION: &str = "kvsync.io/force-sync";

/// Pod template annotation kvsync sets on rollout targets to restart them
/// (what `kubectl rollout restart` does with its own annotation).
pub const RESTARTED_AT_ANNOTATION: &str = "kvsync.io/restartedAt";

/// Finalizer on Merge bindings: their keys are removed from the shared
/// Secret before the binding goes.
pub const MERGE_FINALIZER: &str = "kvsync.io/merge-cleanup";

/// Name of the Secret, in the operator's namespace, that holds the dataHash
/// key every replica shares.
pub const HASH_KEY_SECRET: &str = "kvsync-hash-key";

/// Base name of the leader-election Lease in the operator's namespace (a
/// shard adds its suffix: [`crate::shard::Shard::lease_name`]).
pub const LEASE_NAME: &str = "kvsync";

/// The `reportingController` of the Events kvsync writes.
pub const REPORTING_CONTROLLER: &str = "kvsync";

/// Data key of a certificate's chain in a `kubernetes.io/tls` Secret
/// (`format: Tls`).
pub const TLS_CRT: &str = "tls.crt";

/// Data key of a certificate's private key in a `kubernetes.io/tls` Secret.
pub const TLS_KEY: &str = "tls.key";
