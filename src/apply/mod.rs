//! Writing the target Secret: the desired object, the ownership rules of
//! Owner/Orphan/Merge, drift detection and server-side apply.

pub mod finalizer;

use crate::reason::Reason;
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use crate::crd::names::{BINDING_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL};
use crate::crd::{TargetPolicy, VaultSecretBinding};
use crate::render::Rendered;

/// Field manager of Secrets kvsync owns (Owner/Orphan).
pub use crate::crd::names::FIELD_MANAGER;

/// Why the target Secret cannot be written. Each is the user's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// An unmanaged Secret of that name exists.
    #[error(
        "Secret {name} already exists and is not managed by kvsync: delete it, choose another target.name, or use target.policy: Merge to add keys to it"
    )]
    NotManaged {
        /// The target Secret, in the binding's namespace.
        name: String,
    },
    /// Another binding writes that Secret.
    #[error("Secret {name} is written by binding {other}: choose another target.name")]
    OwnedByOtherBinding {
        /// The target Secret, in the binding's namespace.
        name: String,
        /// The binding that writes it (its annotation), in the same namespace.
        other: String,
    },
    /// Merge needs an existing Secret.
    #[error(
        "target.policy Merge adds keys to an existing Secret, and Secret {name} does not exist: create it, or use policy Owner"
    )]
    MergeTargetMissing {
        /// The target Secret, in the binding's namespace.
        name: String,
    },
    /// The Secret's type differs and Kubernetes cannot change it.
    #[error(
        "Secret {name} has type {current} but the binding asks for {wanted}; Kubernetes cannot change a Secret's type: delete the Secret (kvsync writes it again) or set target.type: {current}"
    )]
    TypeMismatch {
        /// The target Secret, in the binding's namespace.
        name: String,
        /// The type the existing Secret has.
        current: String,
        /// The type the binding's `target.type` asks for.
        wanted: String,
    },
}

impl ApplyError {
    /// The condition reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::NotManaged { .. } => Reason::SecretNotManaged,
            Self::OwnedByOtherBinding { .. } => Reason::SecretOwnedByOtherBinding,
            Self::MergeTargetMissing { .. } => Reason::MergeTargetMissing,
            Self::TypeMismatch { .. } => Reason::SecretTypeMismatch,
        }
    }
}

/// The field manager a binding writes with. Merge targets are shared, so each
/// binding applies as its own manager and never removes another's keys.
pub fn field_manager(binding: &VaultSecretBinding) -> String {
    match binding.spec.policy() {
        TargetPolicy::Merge => merge_field_manager(binding),
        _ => FIELD_MANAGER.to_string(),
    }
}

/// The field manager `binding` uses (or used) for policy Merge.
pub fn merge_field_manager(binding: &VaultSecretBinding) -> String {
    crate::crd::names::merge_field_manager(&binding.uid().unwrap_or_default())
}

/// Checks that the binding may write `current` (the Secret as it is now).
pub fn check_ownership(
    binding: &VaultSecretBinding,
    current: Option<&Secret>,
) -> Result<(), ApplyError> {
    let name = binding.spec.target_name(&binding.name_any()).to_string();
    let policy = binding.spec.policy();
    let Some(current) = current else {
        return if policy == TargetPolicy::Merge {
            Err(ApplyError::MergeTargetMissing { name })
        } else {
            Ok(())
        };
    };
    let writer = current.annotations().get(BINDING_ANNOTATION).cloned();
    let managed = current.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
    // Our owner reference (the binding's uid) proves the Secret ours even
    // when someone removed the label or annotation: put them back.
    let owned_by_us = binding
        .uid()
        .is_some_and(|uid| current.owner_references().iter().any(|o| o.uid == uid));
    match (policy, writer) {
        (_, Some(other)) if managed && other != binding.name_any() && !owned_by_us => {
            Err(ApplyError::OwnedByOtherBinding { name, other })
        }
        (TargetPolicy::Merge, _) => Ok(()),
        (_, Some(_)) if managed => check_type(binding, current, name),
        _ if owned_by_us => check_type(binding, current, name),
        _ => Err(ApplyError::NotManaged { name }),
    }
}

/// Cleans up the Secret a binding wrote before its `target.name` changed:
/// deletes it when the binding owns it (policy Owner: its owner reference),
/// removes the binding's keys when it merged into it, leaves an Orphan.
pub async fn retire_target(
    api: &Api<Secret>,
    binding: &VaultSecretBinding,
    old: &str,
) -> Result<(), kube::Error> {
    let Some(secret) = api.get_opt(old).await? else {
        return Ok(());
    };
    let uid = binding.uid().unwrap_or_default();
    let owned = secret
        .owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true));
    if owned && written_as_owner(binding, &secret) {
        let precondition = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: secret.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        return match api.delete(old, &precondition).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e),
        };
    }
    if written_as_owner(binding, &secret) {
        return Ok(()); // Orphan: left behind, as the policy says.
    }
    release_fields(api, old, &merge_field_manager(binding)).await
}

/// Whether `current` was written by `binding` under policy Owner or Orphan
/// (kvsync's label, and the binding named in the annotation).
pub fn written_as_owner(binding: &VaultSecretBinding, current: &Secret) -> bool {
    current.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        && current.annotations().get(BINDING_ANNOTATION) == Some(&binding.name_any())
}

fn check_type(
    binding: &VaultSecretBinding,
    current: &Secret,
    name: String,
) -> Result<(), ApplyError> {
    let current_type = current.type_.as_deref().unwrap_or("Opaque");
    if current_type != binding.spec.target_type() {
        return Err(ApplyError::TypeMismatch {
            name,
            current: current_type.to_string(),
            wanted: binding.spec.target_type().to_string(),
        });
    }
    Ok(())
}

/// The Secret as the binding wants it (only the fields kvsync manages).
pub fn desired(binding: &VaultSecretBinding, rendered: &Rendered) -> Secret {
    let spec = &binding.spec;
    let name = spec.target_name(&binding.name_any()).to_string();
    let data: BTreeMap<String, ByteString> = rendered
        .data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let target = spec.target.clone().unwrap_or_default();
    let merge = spec.policy() == TargetPolicy::Merge;
    let mut labels = target.labels.clone();
    let mut annotations = target.annotations.clone();
    if let Some(m) = target.template.as_ref().and_then(|t| t.metadata.as_ref()) {
        labels.extend(m.labels.clone());
        annotations.extend(m.annotations.clone());
    }
    if !merge {
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        annotations.insert(BINDING_ANNOTATION.into(), binding.name_any());
    }
    let owner_references = (spec.policy() == TargetPolicy::Owner).then(|| {
        vec![OwnerReference {
            api_version: VaultSecretBinding::api_version(&()).into_owned(),
            kind: VaultSecretBinding::kind(&()).into_owned(),
            name: binding.name_any(),
            uid: binding.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    });
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: binding.namespace(),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references,
            ..Default::default()
        },
        type_: (!merge).then(|| spec.target_type().to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The first write of an Owner/Orphan -> Merge switch: the Secret as Merge
/// wants it, but with the values `current` holds for the keys it has, so
/// that the merge manager shares kvsync's own fields (equal values never
/// conflict) and nothing changes for the Secret's readers until kvsync's
/// owner fields are released. The rendered values follow in the next write.
pub fn taken_over(binding: &VaultSecretBinding, rendered: &Rendered, current: &Secret) -> Secret {
    let mut taken = desired(binding, rendered);
    if let (Some(data), Some(held)) = (taken.data.as_mut(), current.data.as_ref()) {
        for (key, value) in data.iter_mut() {
            if let Some(v) = held.get(key) {
                *value = v.clone();
            }
        }
    }
    taken
}

/// Data keys of `keys` that a field manager other than `ours` owns in
/// `current` (from its `managedFields`), with those managers: what a Merge
/// apply would conflict on.
pub fn foreign_keys(
    current: &Secret,
    keys: impl IntoIterator<Item = String>,
    ours: &[&str],
) -> (Vec<String>, Vec<String>) {
    let fields = current.metadata.managed_fields.as_deref().unwrap_or(&[]);
    let mut found = Vec::new();
    let mut managers = Vec::new();
    for key in keys {
        let field = format!("f:{key}");
        for m in fields {
            let manager = m.manager.as_deref().unwrap_or("");
            let owns = m
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:data"))
                .and_then(|d| d.get(&field))
                .is_some();
            if owns && !ours.contains(&manager) {
                if !found.contains(&key) {
                    found.push(key.clone());
                }
                if !managers.iter().any(|x: &String| x == manager) {
                    managers.push(manager.to_string());
                }
            }
        }
    }
    (found, managers)
}

/// Whether `current` already holds everything `desired` says (data keys and
/// values, labels, annotations, owner reference, type).
pub fn in_sync(desired: &Secret, current: Option<&Secret>) -> bool {
    let Some(current) = current else { return false };
    let empty = BTreeMap::new();
    let have = current.data.as_ref().unwrap_or(&empty);
    let want = desired.data.as_ref().unwrap_or(&empty);
    if want.iter().any(|(k, v)| have.get(k) != Some(v)) {
        return false;
    }
    let subset = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    if !subset(&desired.metadata.labels, &current.metadata.labels)
        || !subset(&desired.metadata.annotations, &current.metadata.annotations)
    {
        return false;
    }
    // Owner references: ours exactly as desired (uid, kind, name,
    // controller, blockOwnerDeletion), and none of ours when the policy no
    // longer wants one (Owner -> Orphan).
    let have = current.metadata.owner_references.as_deref().unwrap_or(&[]);
    let want = desired.metadata.owner_references.as_deref().unwrap_or(&[]);
    if !want.iter().all(|o| have.contains(o)) {
        return false;
    }
    if want.is_empty()
        && have
            .iter()
            .any(|h| h.kind == VaultSecretBinding::kind(&()) && h.controller == Some(true))
    {
        return false;
    }
    if let Some(t) = &desired.type_
        && current.type_.as_deref().unwrap_or("Opaque") != t
    {
        return false;
    }
    true
}

/// Keys kvsync wrote before that the desired Secret no longer has. With
/// server-side apply they are removed by applying without them; this tells
/// whether an apply is needed for that.
pub fn has_stale_keys(
    previous_keys: &[String],
    desired: &Secret,
    current: Option<&Secret>,
) -> bool {
    let Some(have) = current.and_then(|c| c.data.as_ref()) else {
        return false;
    };
    let want = desired.data.as_ref();
    previous_keys
        .iter()
        .any(|k| have.contains_key(k) && !want.is_some_and(|w| w.contains_key(k)))
}

/// Why a write of the target Secret did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The API server refused the Secret: validation of its type, an
    /// immutable Secret, an admission webhook, RBAC. The user's to fix.
    #[error("the API server rejected Secret {name}: {message}")]
    Rejected {
        /// The target Secret, in the binding's namespace.
        name: String,
        /// The API server's reason, as it gave it.
        message: String,
    },
    /// Merge would take keys that another field manager owns.
    #[error(
        "Secret {name}: key(s) {} are owned by {}; policy Merge never takes a key someone else wrote: \
         map the vault secret to another key (spec.secrets[].key), or remove the key from the Secret \
         (then kvsync adds it)",
        keys.join(", "),
        managers.iter().map(|m| format!("field manager {m:?}")).collect::<Vec<_>>().join(", ")
    )]
    MergeConflict {
        /// The target Secret, in the binding's namespace.
        name: String,
        /// The Secret keys the binding maps that another manager owns.
        keys: Vec<String>,
        /// The field managers that own them (`kubectl-create`, `helm`, …).
        managers: Vec<String>,
    },
    /// Any other failure of the API (retried with backoff).
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

impl WriteError {
    /// The condition reason, for errors the user can act on.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::Rejected { .. } => Some(Reason::SecretRejected),
            Self::MergeConflict { .. } => Some(Reason::MergeConflict),
            Self::Kube(_) => None,
        }
    }
}

/// Reads an apply conflict's message ("Apply failed with 1 conflict:
/// conflict with \"kubectl-create\" using v1: .data.DB_PASSWORD", or the
/// plural form with one "- .data.K" line per field) into keys and managers.
pub fn parse_conflict(message: &str) -> (Vec<String>, Vec<String>) {
    let mut managers = Vec::new();
    let mut rest = message;
    while let Some(i) = rest.find("with \"") {
        let after = &rest[i + 6..];
        let Some(end) = after.find('"') else { break };
        let m = after[..end].to_string();
        if !managers.contains(&m) {
            managers.push(m);
        }
        rest = &after[end..];
    }
    let mut keys: Vec<String> = message
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter_map(|t| t.strip_prefix(".data."))
        .map(|k| k.trim_end_matches(['.', ';']).to_string())
        .collect();
    keys.dedup();
    (keys, managers)
}

fn classify(name: &str, force: bool, e: kube::Error) -> WriteError {
    match e {
        kube::Error::Api(s) if s.code == 409 && !force => {
            let (keys, managers) = parse_conflict(&s.message);
            if keys.is_empty() {
                WriteError::Rejected {
                    name: name.into(),
                    message: s.message,
                }
            } else {
                WriteError::MergeConflict {
                    name: name.into(),
                    keys,
                    managers,
                }
            }
        }
        // 400 Bad Request, 403 Forbidden (RBAC, webhooks, a terminating
        // namespace), 404 (no such namespace), 422 Invalid (type validation,
        // immutability): the server's answer is the user's answer.
        kube::Error::Api(s) if matches!(s.code, 400 | 403 | 404 | 422) => WriteError::Rejected {
            name: name.into(),
            message: s.message,
        },
        e => WriteError::Kube(e),
    }
}

/// Server-side apply of the desired Secret. `force` takes fields from other
/// managers (Owner/Orphan: the Secret is kvsync's); Merge never forces, so a
/// key someone else wrote is a [`WriteError::MergeConflict`], not overwritten.
pub async fn apply(
    api: &Api<Secret>,
    desired: &Secret,
    manager: &str,
    force: bool,
) -> Result<Secret, WriteError> {
    let mut patch = serde_json::to_value(desired).expect("a Secret serializes");
    patch["apiVersion"] = "v1".into();
    patch["kind"] = "Secret".into();
    let name = desired
        .metadata
        .name
        .as_deref()
        .expect("desired Secret has a name");
    let mut params = PatchParams::apply(manager);
    params.force = force;
    api.patch(name, &params, &Patch::Apply(&patch))
        .await
        .map_err(|e| classify(name, force, e))
}

/// Releases what field manager `manager` wrote (a Merge binding's keys, or
/// kvsync's owner fields before Owner -> Merge): applying an empty object as
/// that manager releases every field it owned (a field another manager
/// also set keeps its value). Never creates the Secret: server-side apply
/// would, so the apply carries the resourceVersion just read, and a Secret
/// that is gone (or a namespace being deleted) means there is nothing to
/// release.
pub async fn release_fields(
    api: &Api<Secret>,
    name: &str,
    manager: &str,
) -> Result<(), kube::Error> {
    release(api, name, manager, None).await
}

/// [`release_fields`] of kvsync's own manager on Owner/Orphan -> Merge,
/// keeping the Secret's `type` (`type_`, as read): a Merge apply sets no
/// type, so released it would be defaulted to `Opaque` — which a typed
/// Secret (`kubernetes.io/tls`, dockerconfigjson) refuses as immutable.
pub async fn release_owner_fields(
    api: &Api<Secret>,
    name: &str,
    type_: Option<&str>,
) -> Result<(), kube::Error> {
    release(api, name, FIELD_MANAGER, type_).await
}

async fn release(
    api: &Api<Secret>,
    name: &str,
    manager: &str,
    type_: Option<&str>,
) -> Result<(), kube::Error> {
    for _ in 0..3 {
        let Some(current) = api.get_metadata_opt(name).await? else {
            return Ok(());
        };
        let mut patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "resourceVersion": current.metadata.resource_version},
        });
        if let Some(t) = type_ {
            patch["type"] = t.into();
        }
        match api
            .patch(name, &PatchParams::apply(manager), &Patch::Apply(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            // Gone meanwhile, or changed meanwhile (look again; a Secret
            // deleted between the read and the apply makes the apply a
            // create that the resourceVersion refuses, 409 or 422).
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => continue,
            // "unable to create new content in namespace … because it is
            // being terminated": the namespace takes the Secret with it.
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("being terminated") => {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    // Changed under us three times in a row: keys may be left behind, but a
    // deletion is never held up by a busy Secret.
    tracing::warn!(secret = %name, manager, "could not release Merge keys: the Secret kept changing");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashkey::HashKey;
    use crate::value::SecretValue;

    fn binding(yaml: &str) -> VaultSecretBinding {
        let mut b: VaultSecretBinding = serde_yaml::from_str(&format!(
            "apiVersion: kvsync.io/v1alpha1\nkind: VaultSecretBinding\nmetadata: {{name: b, namespace: ns, uid: u-1}}\nspec:\n  vaultUrl: https://v.vault.azure.net\n  secrets: [{{name: a}}]\n{yaml}"
        ))
        .unwrap();
        b.metadata.uid = Some("u-1".into());
        b
    }

    fn rendered(pairs: &[(&str, &str)]) -> Rendered {
        let data: BTreeMap<String, SecretValue> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretValue::new(*v)))
            .collect();
        Rendered {
            hash: HashKey::new(b"test-key").data_hash(&data),
            data,
            synced: vec![],
            expiring: vec![],
            skipped: vec![],
            kept: vec![],
            kept_unreadable: vec![],
            disabled_unkept: vec![],
        }
    }

    fn secret(
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        data: &[(&str, &str)],
    ) -> Secret {
        let map = |p: &[(&str, &str)]| {
            Some(
                p.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        Secret {
            metadata: ObjectMeta {
                name: Some("b".into()),
                labels: map(labels),
                annotations: map(annotations),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn owner_policy_sets_owner_reference_label_and_annotation() {
        let d = desired(&binding(""), &rendered(&[("a", "1")]));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("VaultSecretBinding", "u-1", Some(true))
        );
        assert_eq!(
            d.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL],
            "kvsync"
        );
        assert_eq!(
            d.metadata.annotations.as_ref().unwrap()[BINDING_ANNOTATION],
            "b"
        );
        assert_eq!(d.type_.as_deref(), Some("Opaque"));
    }

    #[test]
    fn orphan_policy_has_no_owner_reference() {
        let d = desired(
            &binding("  target: {policy: Orphan}"),
            &rendered(&[("a", "1")]),
        );
        assert!(d.metadata.owner_references.is_none());
    }

    #[test]
    fn merge_policy_touches_only_data_and_uses_its_own_manager() {
        let b = binding("  target: {policy: Merge, name: shared}");
        let d = desired(&b, &rendered(&[("a", "1")]));
        assert!(
            d.metadata.labels.is_none()
                && d.metadata.owner_references.is_none()
                && d.type_.is_none()
        );
        assert_eq!(field_manager(&b), "kvsync-merge-u-1");
        assert_eq!(field_manager(&binding("")), "kvsync");
    }

    #[test]
    fn ownership_rules() {
        let owner = binding("");
        assert_eq!(check_ownership(&owner, None), Ok(()));
        let ours = secret(
            &[(MANAGED_BY_LABEL, "kvsync")],
            &[(BINDING_ANNOTATION, "b")],
            &[],
        );
        assert_eq!(check_ownership(&owner, Some(&ours)), Ok(()));
        let foreign = secret(&[], &[], &[("x", "y")]);
        assert_eq!(
            check_ownership(&owner, Some(&foreign))
                .unwrap_err()
                .reason(),
            "SecretNotManaged"
        );
        let others = secret(
            &[(MANAGED_BY_LABEL, "kvsync")],
            &[(BINDING_ANNOTATION, "other")],
            &[],
        );
        assert_eq!(
            check_ownership(&owner, Some(&others)).unwrap_err().reason(),
            "SecretOwnedByOtherBinding"
        );

        let merge = binding("  target: {policy: Merge}");
        assert_eq!(
            check_ownership(&merge, None).unwrap_err().reason(),
            "MergeTargetMissing"
        );
        assert_eq!(check_ownership(&merge, Some(&foreign)), Ok(()));
        assert_eq!(
            check_ownership(&merge, Some(&others)).unwrap_err().reason(),
            "SecretOwnedByOtherBinding"
        );
    }

    #[test]
    fn our_owner_reference_keeps_a_relabelled_secret_ours() {
        let owner = binding("");
        let mut stripped = secret(&[], &[], &[("a", "1")]);
        stripped.metadata.owner_references = desired(&owner, &rendered(&[("a", "1")]))
            .metadata
            .owner_references;
        assert_eq!(
            check_ownership(&owner, Some(&stripped)),
            Ok(()),
            "label and annotation removed by hand: still ours, and put back"
        );
        let mut other = stripped.clone();
        other.metadata.owner_references.as_mut().unwrap()[0].uid = "someone-else".into();
        assert_eq!(
            check_ownership(&owner, Some(&other)).unwrap_err().reason(),
            "SecretNotManaged"
        );
    }

    #[test]
    fn type_change_is_refused_with_the_fix() {
        let b = binding("  target: {type: kubernetes.io/dockerconfigjson}");
        let ours = secret(
            &[(MANAGED_BY_LABEL, "kvsync")],
            &[(BINDING_ANNOTATION, "b")],
            &[],
        );
        let err = check_ownership(&b, Some(&ours)).unwrap_err();
        assert_eq!(err.reason(), "SecretTypeMismatch");
        assert!(err.to_string().contains("delete the Secret"));
    }

    #[test]
    fn drift_is_detected_on_values_labels_and_missing_keys() {
        let b = binding("");
        let d = desired(&b, &rendered(&[("a", "1")]));
        let mut current = secret(
            &[(MANAGED_BY_LABEL, "kvsync")],
            &[(BINDING_ANNOTATION, "b")],
            &[("a", "1"), ("foreign", "x")],
        );
        current.metadata.owner_references = d.metadata.owner_references.clone();
        assert!(
            in_sync(&d, Some(&current)),
            "extra foreign keys are not drift"
        );
        let mut edited = current.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("a".into(), ByteString(b"tampered".to_vec()));
        assert!(!in_sync(&d, Some(&edited)));
        let mut removed = current.clone();
        removed.data.as_mut().unwrap().remove("a");
        assert!(!in_sync(&d, Some(&removed)));
        let mut relabelled = current.clone();
        relabelled.metadata.labels = None;
        assert!(!in_sync(&d, Some(&relabelled)));
        assert!(!in_sync(&d, None));
    }

    #[test]
    fn owner_reference_drift_and_owner_to_orphan_are_not_in_sync() {
        let b = binding("");
        let d = desired(&b, &rendered(&[("a", "1")]));
        let mut current = secret(
            &[(MANAGED_BY_LABEL, "kvsync")],
            &[(BINDING_ANNOTATION, "b")],
            &[("a", "1")],
        );
        current.metadata.owner_references = d.metadata.owner_references.clone();
        assert!(in_sync(&d, Some(&current)));
        let mut weakened = current.clone();
        weakened.metadata.owner_references.as_mut().unwrap()[0].controller = Some(false);
        assert!(
            !in_sync(&d, Some(&weakened)),
            "a changed owner reference is drift"
        );
        let orphan = desired(
            &binding("  target: {policy: Orphan}"),
            &rendered(&[("a", "1")]),
        );
        assert!(
            !in_sync(&orphan, Some(&current)),
            "Owner -> Orphan must remove our owner reference"
        );
        let mut retyped = current.clone();
        retyped.type_ = Some("kubernetes.io/tls".into());
        assert!(!in_sync(&d, Some(&retyped)));
    }

    #[test]
    fn apply_conflicts_name_keys_and_managers() {
        let one = "Apply failed with 1 conflict: conflict with \"kubectl-create\" using v1: .data.DB_PASSWORD";
        assert_eq!(
            parse_conflict(one),
            (
                vec!["DB_PASSWORD".to_string()],
                vec!["kubectl-create".to_string()]
            )
        );
        let two = "Apply failed with 2 conflicts: conflicts with \"kubectl-create\" using v1:\n- .data.A\n- .data.B\nconflict with \"helm\" using v1: .data.C";
        let (keys, managers) = parse_conflict(two);
        assert_eq!(keys, ["A", "B", "C"]);
        assert_eq!(managers, ["kubectl-create", "helm"]);
        let e = WriteError::MergeConflict {
            name: "shared".into(),
            keys,
            managers,
        };
        assert!(
            e.to_string()
                .contains("A, B, C are owned by field manager \"kubectl-create\"")
        );
        assert_eq!(e.reason(), Some(Reason::MergeConflict));
    }

    #[test]
    fn stale_keys_need_an_apply() {
        let d = desired(&binding(""), &rendered(&[("a", "1")]));
        let current = secret(&[], &[], &[("a", "1"), ("old", "x")]);
        assert!(has_stale_keys(
            &["a".into(), "old".into()],
            &d,
            Some(&current)
        ));
        assert!(!has_stale_keys(&["a".into()], &d, Some(&current)));
    }
}
