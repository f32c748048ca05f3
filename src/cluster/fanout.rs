//! What one ClusterVaultSecretBinding needs done (pure): which namespaces
//! it selects, where its binding must be written or removed, which
//! namespaces a binding of their own keeps, and the status that follows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use kube::{Resource, ResourceExt};

use crate::crd::cluster::{
    CHILD_LABEL, ClusterVaultSecretBinding, ClusterVaultSecretBindingStatus, MAX_FAILED_LISTED,
    NamespaceFailure, PARENT_ANNOTATION,
};
use crate::crd::{MANAGED_BY_LABEL, VaultSecretBinding};
use crate::reason::Reason;
// names: FORCE_SYNC_ANNOTATION moves to crate::crd::names.
use crate::reconcile::FORCE_SYNC_ANNOTATION;
use crate::status::READY;

/// How far the newest `lastSyncTime` of the namespaces may run ahead of the
/// cluster binding's before it is written again.
const LAST_SYNC_GRAIN: k8s_openapi::jiff::SignedDuration =
    k8s_openapi::jiff::SignedDuration::from_secs(300);

/// What to do for one cluster binding.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Selected namespaces, by name.
    pub selected: Vec<String>,
    /// Namespaces whose binding must be written (missing or out of step).
    pub write: Vec<String>,
    /// Bindings to remove: (namespace, uid) — no longer selected, or a
    /// binding of the namespace's own writes the same Secret.
    pub remove: Vec<(String, String)>,
    /// Selected namespaces left alone, and why.
    pub conflicts: Vec<NamespaceFailure>,
}

/// The binding kept for `cluster` in `namespace`, as kvsync writes it.
pub fn child(cluster: &ClusterVaultSecretBinding, namespace: &str) -> VaultSecretBinding {
    let name = cluster.name_any();
    let mut annotations = BTreeMap::from([(PARENT_ANNOTATION.to_string(), name.clone())]);
    if let Some(force) = cluster.annotations().get(FORCE_SYNC_ANNOTATION) {
        annotations.insert(FORCE_SYNC_ANNOTATION.to_string(), force.clone());
    }
    VaultSecretBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (CHILD_LABEL.to_string(), "true".to_string()),
                (MANAGED_BY_LABEL.to_string(), "kvsync".to_string()),
            ])),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: ClusterVaultSecretBinding::api_version(&()).into_owned(),
                kind: ClusterVaultSecretBinding::kind(&()).into_owned(),
                name,
                uid: cluster.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: cluster.spec.child_spec(),
        status: None,
    }
}

/// Whether `current` is the binding `desired` says (spec, marks, owner).
pub fn in_step(desired: &VaultSecretBinding, current: &VaultSecretBinding) -> bool {
    let wanted = |m: Option<&BTreeMap<String, String>>, have: &BTreeMap<String, String>| {
        m.into_iter().flatten().all(|(k, v)| have.get(k) == Some(v))
    };
    let owner = desired
        .owner_references()
        .first()
        .is_some_and(|o| current.owner_references().iter().any(|c| c.uid == o.uid));
    // What kvsync applies must be there; a field someone added beside it
    // is theirs (and ignored: kvsync syncs the cluster binding's spec), not
    // a reason to write on every reconcile.
    let spec = serde_json::to_value(&desired.spec).expect("serializes");
    let have = serde_json::to_value(&current.spec).expect("serializes");
    contains(&have, &spec)
        && wanted(desired.metadata.labels.as_ref(), current.labels())
        && wanted(desired.metadata.annotations.as_ref(), current.annotations())
        && owner
}

/// Whether `have` holds everything `want` says (objects by their keys,
/// everything else equal).
fn contains(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    match (have, want) {
        (serde_json::Value::Object(h), serde_json::Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v))),
        _ => have == want,
    }
}

/// Decides for `cluster`: `namespaces` are every namespace kvsync serves
/// with its labels, `children` the bindings kept for it by namespace, and
/// `own(ns)` a namespace's own bindings (name → the Secret each writes).
pub fn plan<'a>(
    cluster: &ClusterVaultSecretBinding,
    namespaces: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
    children: &BTreeMap<String, Arc<VaultSecretBinding>>,
    own: impl Fn(&str) -> HashMap<String, String>,
) -> Plan {
    let name = cluster.name_any();
    let target = cluster.spec.sync.target_name(&name).to_string();
    let mut out = Plan::default();
    let mut keep = std::collections::BTreeSet::new();
    let mut selected: Vec<&str> = namespaces
        .into_iter()
        .filter(|(ns, labels)| cluster.spec.selects(ns, labels))
        .map(|(ns, _)| ns)
        .collect();
    selected.sort_unstable();
    selected.dedup();
    for ns in selected {
        out.selected.push(ns.to_string());
        let theirs = own(ns);
        let mut clashing: Vec<(&String, &String)> = theirs
            .iter()
            .filter(|(b, t)| **b == name || **t == target)
            .collect();
        clashing.sort();
        if let Some((b, t)) = clashing.first() {
            let message = if **b == name {
                format!(
                    "the namespace has a VaultSecretBinding {b} of its own, and kvsync names the binding it keeps there like this cluster binding; the namespace's own wins and this namespace is left alone. Rename one of them, or stop selecting {ns}"
                )
            } else {
                format!(
                    "VaultSecretBinding {b} of the namespace writes Secret {t} too; the namespace's own binding wins and this namespace is left alone. Change spec.target.name here or there, or stop selecting {ns}"
                )
            };
            out.conflicts.push(NamespaceFailure {
                namespace: ns.to_string(),
                reason: Reason::ClusterBindingConflict.to_string(),
                message,
            });
            continue;
        }
        keep.insert(ns.to_string());
        let desired = child(cluster, ns);
        if !children.get(ns).is_some_and(|c| in_step(&desired, c)) {
            out.write.push(ns.to_string());
        }
    }
    let uid = cluster.uid().unwrap_or_default();
    for (ns, c) in children {
        // Only what kvsync made for this cluster binding (its owner
        // reference): a claim made by hand is refused by the namespaced
        // controller, not deleted.
        let ours = c.owner_references().iter().any(|o| o.uid == uid);
        if !keep.contains(ns) && ours && c.metadata.deletion_timestamp.is_none() {
            out.remove.push((ns.clone(), c.uid().unwrap_or_default()));
        }
    }
    out
}

fn ready_of(b: &VaultSecretBinding) -> Option<&Condition> {
    b.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
}

/// The status after `plan`, from the children's statuses; `failed_writes`
/// are namespaces whose binding the API server refused.
pub fn status(
    cluster: &ClusterVaultSecretBinding,
    plan: &Plan,
    children: &BTreeMap<String, Arc<VaultSecretBinding>>,
    failed_writes: Vec<NamespaceFailure>,
    now: Time,
) -> ClusterVaultSecretBindingStatus {
    let mut failed: BTreeMap<String, NamespaceFailure> = plan
        .conflicts
        .iter()
        .chain(&failed_writes)
        .map(|f| (f.namespace.clone(), f.clone()))
        .collect();
    let mut synced = 0;
    let mut secrets = None;
    let mut last_sync: Option<Time> = None;
    // Being rewritten: not in step with this spec yet.
    let rewriting: std::collections::HashSet<&String> = plan.write.iter().collect();
    for ns in &plan.selected {
        if failed.contains_key(ns) {
            continue;
        }
        let Some(c) = children.get(ns) else { continue };
        let st = c.status.as_ref();
        if let Some(t) = st.and_then(|s| s.last_sync_time.clone())
            && last_sync.as_ref().is_none_or(|l| l.0 < t.0)
        {
            last_sync = Some(t);
        }
        let current = st.and_then(|s| s.observed_generation) == c.meta().generation
            && !rewriting.contains(ns);
        match ready_of(c) {
            Some(r) if r.status == "True" && current => {
                synced += 1;
                if secrets.is_none() {
                    secrets = st.map(|s| s.secrets.clone());
                }
            }
            Some(r) if r.status == "False" => {
                failed.insert(
                    ns.clone(),
                    NamespaceFailure {
                        namespace: ns.clone(),
                        reason: r.reason.clone(),
                        message: r.message.clone(),
                    },
                );
            }
            _ => {}
        }
    }
    let selected = plan.selected.len();
    let pending = selected - synced - failed.len();
    let (ok, reason, message) = if !failed.is_empty() {
        let named: Vec<String> = failed
            .values()
            .take(3)
            .map(|f| format!("{} ({})", f.namespace, f.reason))
            .collect();
        (
            false,
            Reason::NamespacesFailed,
            format!(
                "{} of {selected} namespaces failed: {}{}; see status.failedNamespaces",
                failed.len(),
                named.join(", "),
                if failed.len() > 3 { ", ..." } else { "" }
            ),
        )
    } else if pending > 0 {
        (
            false,
            Reason::NamespacesPending,
            format!("{pending} of {selected} namespaces are not synced with this spec yet"),
        )
    } else if selected == 0 {
        (
            true,
            Reason::Synced,
            "no namespace is selected: label some to match spec.namespaceSelector, or list them in spec.namespaces".to_string(),
        )
    } else {
        (
            true,
            Reason::Synced,
            format!("the Secret is in sync in all {selected} selected namespaces"),
        )
    };
    let previous = cluster
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    let status_str = if ok { "True" } else { "False" };
    let transition = match previous {
        Some(p) if p.status == status_str && p.reason == reason.as_str() => {
            p.last_transition_time.clone()
        }
        _ => now,
    };
    // Each namespace's binding writes its lastSyncTime as a heartbeat; the
    // newest of them moves on at most every LAST_SYNC_GRAIN here, so that
    // 500 namespaces do not mean 500 status writes per heartbeat.
    let kept_sync = cluster
        .status
        .as_ref()
        .and_then(|s| s.last_sync_time.clone());
    let last_sync = match (kept_sync, last_sync) {
        (Some(kept), Some(newest))
            if newest.0 >= kept.0 && newest.0.duration_since(kept.0) < LAST_SYNC_GRAIN =>
        {
            Some(kept)
        }
        (_, newest) => newest,
    };
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    ClusterVaultSecretBindingStatus {
        observed_generation: cluster.meta().generation,
        conditions: vec![Condition {
            type_: READY.to_string(),
            status: status_str.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time: transition,
            observed_generation: cluster.meta().generation,
        }],
        namespaces_selected: count(selected),
        namespaces_synced: count(synced),
        namespaces_failed: count(failed.len()),
        failed_namespaces: failed.into_values().take(MAX_FAILED_LISTED).collect(),
        secrets: secrets.unwrap_or_default(),
        last_sync_time: last_sync,
    }
}

/// The status of a cluster binding whose spec is invalid.
pub fn invalid(
    cluster: &ClusterVaultSecretBinding,
    message: String,
    now: Time,
) -> ClusterVaultSecretBindingStatus {
    let mut st = cluster.status.clone().unwrap_or_default();
    let previous = st.conditions.iter().find(|c| c.type_ == READY);
    let transition = match previous {
        Some(p) if p.status == "False" && p.reason == Reason::InvalidSpec.as_str() => {
            p.last_transition_time.clone()
        }
        _ => now,
    };
    st.observed_generation = cluster.meta().generation;
    st.conditions = vec![Condition {
        type_: READY.to_string(),
        status: "False".to_string(),
        reason: Reason::InvalidSpec.to_string(),
        message,
        last_transition_time: transition,
        observed_generation: cluster.meta().generation,
    }];
    st
}
