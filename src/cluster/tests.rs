//! The cluster binding's plan, status and binding index, fed plain objects.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::runtime::watcher::Event;
use serde_json::json;

use super::fanout::{self, Plan};
use super::index::BindingIndex;
use crate::crd::VaultSecretBinding;
use crate::crd::cluster::ClusterVaultSecretBinding;
use crate::crd::names::{FORCE_SYNC_ANNOTATION, PARENT_ANNOTATION};

fn cluster(spec: serde_json::Value) -> ClusterVaultSecretBinding {
    let mut c: ClusterVaultSecretBinding = serde_json::from_value(json!({
        "apiVersion": "kvsync.io/v1alpha1", "kind": "ClusterVaultSecretBinding",
        "metadata": {"name": "agents", "uid": "cu-1", "generation": 2},
        "spec": {"vaultUrl": "https://kv-ci.vault.azure.net", "secrets": [{"name": "registry-password"}]},
    }))
    .unwrap();
    let extra: serde_json::Map<String, serde_json::Value> = serde_json::from_value(spec).unwrap();
    let mut whole = serde_json::to_value(&c.spec).unwrap();
    for (k, v) in extra {
        whole[k] = v;
    }
    c.spec = serde_json::from_value(whole).unwrap();
    c
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn binding(ns: &str, name: &str, target: Option<&str>) -> VaultSecretBinding {
    let mut spec =
        json!({"vaultUrl": "https://kv-team.vault.azure.net", "secrets": [{"name": "x"}]});
    if let Some(t) = target {
        spec["target"] = json!({"name": t});
    }
    serde_json::from_value(json!({
        "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
        "metadata": {"name": name, "namespace": ns, "uid": format!("u-{ns}-{name}"), "generation": 1},
        "spec": spec,
    }))
    .unwrap()
}

/// The binding kvsync keeps for `c` in `ns`, as the API server returns it
/// (uid, generation), with a Ready condition when `ready` says.
fn kept(
    c: &ClusterVaultSecretBinding,
    ns: &str,
    ready: Option<(&str, &str)>,
) -> Arc<VaultSecretBinding> {
    let mut b = fanout::child(c, ns);
    b.metadata.uid = Some(format!("child-{ns}"));
    b.metadata.generation = Some(1);
    if let Some((status, reason)) = ready {
        b.status = Some(
            serde_json::from_value(json!({
                "observedGeneration": 1,
                "conditions": [{"type": "Ready", "status": status, "reason": reason,
                    "message": format!("{reason} in {ns}"), "lastTransitionTime": "2026-12-07T10:00:00Z"}],
                "secrets": [{"name": "registry-password", "key": "registry-password", "version": "v1"}],
                "lastSyncTime": format!("2026-12-07T10:00:0{}Z", ns.len() % 10),
            }))
            .unwrap(),
        );
    }
    Arc::new(b)
}

fn plan_for(
    c: &ClusterVaultSecretBinding,
    namespaces: &[(&str, BTreeMap<String, String>)],
    children: &BTreeMap<String, Arc<VaultSecretBinding>>,
    own: &[(&str, &str, &str)],
) -> Plan {
    let own: HashMap<String, HashMap<String, String>> =
        own.iter()
            .fold(HashMap::new(), |mut m, (ns, name, target)| {
                m.entry(ns.to_string())
                    .or_default()
                    .insert(name.to_string(), target.to_string());
                m
            });
    fanout::plan(c, namespaces.iter().map(|(n, l)| (*n, l)), children, |ns| {
        own.get(ns).cloned().unwrap_or_default()
    })
}

#[test]
fn selects_by_labels_and_by_name_and_writes_each_missing_binding() {
    let c = cluster(
        json!({"namespaceSelector": {"matchLabels": {"agents": "true"}}, "namespaces": ["build"]}),
    );
    let namespaces = [
        ("a", labels(&[("agents", "true")])),
        ("b", labels(&[("agents", "false")])),
        ("build", labels(&[])),
        ("c", labels(&[("agents", "true")])),
    ];
    let plan = plan_for(&c, &namespaces, &BTreeMap::new(), &[]);
    assert_eq!(plan.selected, ["a", "build", "c"]);
    assert_eq!(plan.write, ["a", "build", "c"]);
    assert!(plan.remove.is_empty() && plan.conflicts.is_empty());
}

#[test]
fn a_binding_in_step_is_not_written_again_one_out_of_step_is() {
    let c = cluster(json!({"namespaces": ["a", "b"]}));
    let mut edited = (*kept(&c, "b", None)).clone();
    edited.spec.sync.secrets[0].name = "payroll-db".into();
    let children = BTreeMap::from([
        ("a".to_string(), kept(&c, "a", None)),
        ("b".to_string(), Arc::new(edited)),
    ]);
    let plan = plan_for(
        &c,
        &[("a", labels(&[])), ("b", labels(&[]))],
        &children,
        &[],
    );
    assert_eq!(plan.write, ["b"], "someone edited b's copy: put back");
}

#[test]
fn the_child_names_its_owner_and_copies_the_spec_without_the_identity() {
    let mut c = cluster(json!({
        "namespaces": ["a"],
        "identity": {"serviceAccountRef": {"namespace": "platform", "name": "agents-reader"}},
    }));
    // names: FORCE_SYNC_ANNOTATION (twice in this test)
    c.metadata.annotations = Some(BTreeMap::from([(
        FORCE_SYNC_ANNOTATION.to_string(),
        "7".to_string(),
    )]));
    let child = fanout::child(&c, "a");
    assert_eq!(child.metadata.name.as_deref(), Some("agents"));
    assert_eq!(child.metadata.namespace.as_deref(), Some("a"));
    let owner = &child.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("ClusterVaultSecretBinding", "cu-1", Some(true))
    );
    let annotations = child.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[PARENT_ANNOTATION], "agents");
    assert_eq!(annotations[FORCE_SYNC_ANNOTATION], "7");
    assert_eq!(
        child.spec.identity, None,
        "the identity names other namespaces"
    );
    assert_eq!(child.spec.sync, c.spec.sync);
    let (spec, ns) = c.spec.binding_spec();
    assert_eq!(ns.as_deref(), Some("platform"));
    assert_eq!(
        spec.identity.unwrap().service_account_name.as_deref(),
        Some("agents-reader")
    );
}

#[test]
fn a_namespace_that_stops_matching_loses_its_binding() {
    let c = cluster(json!({"namespaceSelector": {"matchLabels": {"agents": "true"}}}));
    let children = BTreeMap::from([
        ("a".to_string(), kept(&c, "a", None)),
        ("gone".to_string(), kept(&c, "gone", None)),
    ]);
    let plan = plan_for(
        &c,
        &[
            ("a", labels(&[("agents", "true")])),
            ("gone", labels(&[("agents", "no")])),
        ],
        &children,
        &[],
    );
    assert_eq!(plan.selected, ["a"]);
    assert!(plan.write.is_empty());
    assert_eq!(
        plan.remove,
        [("gone".to_string(), "child-gone".to_string())]
    );
}

#[test]
fn a_namespaces_own_binding_of_the_same_secret_or_name_wins() {
    let c = cluster(json!({"namespaces": ["a", "b", "c"]}));
    let children = BTreeMap::from([("a".to_string(), kept(&c, "a", None))]);
    let plan = plan_for(
        &c,
        &[("a", labels(&[])), ("b", labels(&[])), ("c", labels(&[]))],
        &children,
        &[
            ("a", "team-secrets", "agents"),
            ("b", "agents", "something-else"),
            ("c", "unrelated", "other"),
        ],
    );
    assert_eq!(plan.write, ["c"]);
    assert_eq!(
        plan.remove,
        [("a".to_string(), "child-a".to_string())],
        "kvsync's binding in a gives way"
    );
    let conflicts: Vec<(&str, &str)> = plan
        .conflicts
        .iter()
        .map(|f| (f.namespace.as_str(), f.reason.as_str()))
        .collect();
    assert_eq!(
        conflicts,
        [
            ("a", "ClusterBindingConflict"),
            ("b", "ClusterBindingConflict")
        ]
    );
    assert!(plan.conflicts[0].message.contains("team-secrets"));
}

#[test]
fn status_counts_synced_failed_and_pending_namespaces() {
    let c = cluster(json!({"namespaces": ["a", "b", "c", "d", "e"]}));
    let children = BTreeMap::from([
        ("a".to_string(), kept(&c, "a", Some(("True", "Synced")))),
        (
            "b".to_string(),
            kept(&c, "b", Some(("False", "VaultForbidden"))),
        ),
        ("c".to_string(), kept(&c, "c", None)),
        ("d".to_string(), kept(&c, "d", Some(("True", "Synced")))),
    ]);
    let namespaces: Vec<(&str, BTreeMap<String, String>)> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| (*n, labels(&[])))
        .collect();
    let plan = plan_for(&c, &namespaces, &children, &[("e", "own", "agents")]);
    let st = fanout::status(&c, &plan, &children, Vec::new(), crate::status::now());
    assert_eq!(
        (
            st.namespaces_selected,
            st.namespaces_synced,
            st.namespaces_failed
        ),
        (5, 2, 2)
    );
    let failed: Vec<(&str, &str)> = st
        .failed_namespaces
        .iter()
        .map(|f| (f.namespace.as_str(), f.reason.as_str()))
        .collect();
    assert_eq!(
        failed,
        [("b", "VaultForbidden"), ("e", "ClusterBindingConflict")]
    );
    let ready = &st.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NamespacesFailed")
    );
    assert!(
        ready.message.starts_with(
            "2 of 5 namespaces failed: b (VaultForbidden), e (ClusterBindingConflict)"
        ),
        "{}",
        ready.message
    );
    assert_eq!(
        st.secrets.len(),
        1,
        "versions as a synced namespace reports them"
    );
    assert_eq!(st.observed_generation, Some(2));
    assert!(st.last_sync_time.is_some());
}

#[test]
fn all_synced_is_ready_and_a_stale_generation_is_pending() {
    let c = cluster(json!({"namespaces": ["a", "b"]}));
    let mut stale = (*kept(&c, "b", Some(("True", "Synced")))).clone();
    stale.metadata.generation = Some(2); // spec changed, not synced yet
    let children = BTreeMap::from([
        ("a".to_string(), kept(&c, "a", Some(("True", "Synced")))),
        ("b".to_string(), Arc::new(stale)),
    ]);
    let ns = [("a", labels(&[])), ("b", labels(&[]))];
    let plan = plan_for(&c, &ns, &children, &[]);
    let st = fanout::status(&c, &plan, &children, Vec::new(), crate::status::now());
    assert_eq!(st.conditions[0].reason, "NamespacesPending");
    assert_eq!(st.namespaces_synced, 1);

    let children = BTreeMap::from([
        ("a".to_string(), kept(&c, "a", Some(("True", "Synced")))),
        ("b".to_string(), kept(&c, "b", Some(("True", "Synced")))),
    ]);
    let st = fanout::status(
        &c,
        &plan_for(&c, &ns, &children, &[]),
        &children,
        Vec::new(),
        crate::status::now(),
    );
    assert_eq!(
        (
            st.conditions[0].status.as_str(),
            st.conditions[0].reason.as_str()
        ),
        ("True", "Synced")
    );
    assert_eq!((st.namespaces_selected, st.namespaces_synced), (2, 2));
}

#[test]
fn failed_namespaces_are_listed_up_to_a_bound() {
    let names: Vec<String> = (0..50).map(|i| format!("ns-{i:02}")).collect();
    let c = cluster(json!({"namespaces": names}));
    let children: BTreeMap<String, Arc<VaultSecretBinding>> = names
        .iter()
        .map(|n| (n.clone(), kept(&c, n, Some(("False", "VaultForbidden")))))
        .collect();
    let ns: Vec<(&str, BTreeMap<String, String>)> =
        names.iter().map(|n| (n.as_str(), labels(&[]))).collect();
    let plan = plan_for(&c, &ns, &children, &[]);
    let st = fanout::status(&c, &plan, &children, Vec::new(), crate::status::now());
    assert_eq!(st.namespaces_failed, 50);
    assert_eq!(
        st.failed_namespaces.len(),
        crate::crd::cluster::MAX_FAILED_LISTED
    );
}

#[test]
fn a_ready_condition_keeps_its_transition_time_while_unchanged() {
    let c0 = cluster(json!({"namespaces": ["a"]}));
    let children = BTreeMap::from([("a".to_string(), kept(&c0, "a", Some(("True", "Synced"))))]);
    let ns = [("a", labels(&[]))];
    let plan = plan_for(&c0, &ns, &children, &[]);
    let first = fanout::status(&c0, &plan, &children, Vec::new(), crate::status::now());
    let mut c = c0.clone();
    c.status = Some(first.clone());
    let later = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        first.conditions[0].last_transition_time.0
            + k8s_openapi::jiff::SignedDuration::from_secs(60),
    );
    let again = fanout::status(&c, &plan, &children, Vec::new(), later.clone());
    assert_eq!(again, first, "nothing changed: nothing to write");

    // A namespace's heartbeat a minute later is not worth a write; one
    // after more than five minutes is.
    let heartbeat = |secs: i64| {
        let mut b = (*children["a"]).clone();
        let at = first.last_sync_time.as_ref().unwrap().0
            + k8s_openapi::jiff::SignedDuration::from_secs(secs);
        b.status.as_mut().unwrap().last_sync_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
        BTreeMap::from([("a".to_string(), Arc::new(b))])
    };
    let soon = heartbeat(60);
    assert_eq!(
        fanout::status(&c, &plan, &soon, Vec::new(), later.clone()),
        first
    );
    let late = heartbeat(301);
    assert_ne!(
        fanout::status(&c, &plan, &late, Vec::new(), later).last_sync_time,
        first.last_sync_time
    );
}

#[test]
fn the_index_keeps_children_whole_and_of_other_bindings_only_their_secret() {
    let c = cluster(json!({"namespaces": ["a"]}));
    let mut index = BindingIndex::new([None]);
    let child = (*kept(&c, "a", None)).clone();
    index.apply(None, &Event::Init);
    index.apply(None, &Event::InitApply(child.clone()));
    index.apply(
        None,
        &Event::InitApply(binding("a", "team", Some("team-secret"))),
    );
    assert!(!index.listed());
    index.apply(None, &Event::InitDone);
    assert!(index.listed());
    assert_eq!(index.children_of("agents").len(), 1);
    assert_eq!(index.own_in("a")["team"], "team-secret");

    // A claim of a different name is not a child (kvsync names them alike).
    let mut forged = binding("a", "other", None);
    forged.metadata.annotations = Some(BTreeMap::from([(
        PARENT_ANNOTATION.to_string(),
        "agents".to_string(),
    )]));
    index.apply(None, &Event::Apply(forged));
    assert_eq!(index.own_in("a")["other"], "other");
    assert_eq!(index.children_of("agents").len(), 1);

    // Losing the annotation makes a child a binding of the namespace's own.
    let mut unmarked = child.clone();
    unmarked.metadata.annotations = None;
    index.apply(None, &Event::Apply(unmarked.clone()));
    assert!(index.children_of("agents").is_empty());
    assert_eq!(index.own_in("a")["agents"], "agents");
    index.apply(None, &Event::Delete(unmarked));
    assert!(!index.own_in("a").contains_key("agents"));

    // A re-list replaces everything: what it does not bring is gone.
    index.apply(None, &Event::Init);
    index.apply(None, &Event::InitApply(binding("b", "x", None)));
    index.apply(None, &Event::InitDone);
    assert!(index.own_in("a").is_empty());
    assert_eq!(index.own_in("b")["x"], "x");
}

#[test]
fn with_one_watch_per_namespace_a_relist_replaces_only_its_namespace() {
    let c = cluster(json!({"namespaces": ["a", "b"]}));
    let mut index = BindingIndex::new([Some("a".to_string()), Some("b".to_string())]);
    for ns in ["a", "b"] {
        index.apply(Some(ns), &Event::Init);
        index.apply(Some(ns), &Event::InitApply((*kept(&c, ns, None)).clone()));
        index.apply(Some(ns), &Event::InitApply(binding(ns, "own", None)));
        assert!(
            !index.listed() || ns == "b",
            "listed only when both watches are"
        );
        index.apply(Some(ns), &Event::InitDone);
    }
    assert!(index.listed());
    assert_eq!(index.children_of("agents").len(), 2);
    // a's watch re-lists without its binding of its own: b keeps everything.
    index.apply(Some("a"), &Event::Init);
    index.apply(Some("a"), &Event::InitApply((*kept(&c, "a", None)).clone()));
    index.apply(Some("a"), &Event::InitDone);
    assert!(index.own_in("a").is_empty());
    assert_eq!(index.own_in("b")["own"], "own");
    assert_eq!(index.children_of("agents").len(), 2);
}

#[test]
fn a_cluster_spec_is_validated_naming_the_field() {
    let c = cluster(json!({
        "namespaces": ["Not_A_Namespace"],
        "identity": {"serviceAccountRef": {"namespace": "bad.ns", "name": "Bad"}},
    }));
    let e = c.spec.validate().unwrap_err().to_string();
    assert!(e.contains("spec.namespaces[0]"), "{e}");
    assert!(
        e.contains("spec.identity.serviceAccountRef.namespace"),
        "{e}"
    );
    assert!(e.contains("spec.identity.serviceAccountRef.name"), "{e}");
    let bad_selector = cluster(json!({"namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": "In"},
        {"key": "team", "operator": "Matches", "values": ["x"]},
    ]}}));
    let e = bad_selector.spec.validate().unwrap_err().to_string();
    assert!(
        e.contains("matchExpressions[0]") && e.contains("needs values"),
        "{e}"
    );
    assert!(
        e.contains("matchExpressions[1]") && e.contains("must be In"),
        "{e}"
    );
    let none = cluster(json!({}));
    let e = none.spec.validate().unwrap_err().to_string();
    assert!(e.contains("namespaceSelector"), "{e}");
    assert!(
        cluster(json!({"namespaces": ["a"]}))
            .spec
            .validate()
            .is_ok()
    );
}

#[test]
fn a_claim_made_by_hand_outside_the_selection_is_not_deleted() {
    let c = cluster(json!({"namespaces": ["a"]}));
    let mut forged = (*kept(&c, "elsewhere", None)).clone();
    forged.metadata.owner_references = None;
    let children = BTreeMap::from([("elsewhere".to_string(), Arc::new(forged))]);
    let plan = plan_for(
        &c,
        &[("a", labels(&[])), ("elsewhere", labels(&[]))],
        &children,
        &[],
    );
    assert_eq!(plan.write, ["a"]);
    assert!(
        plan.remove.is_empty(),
        "kvsync deletes only what it made; the claim is refused instead"
    );
}

#[test]
fn only_a_binding_with_the_cluster_bindings_owner_reference_is_kept_for_it() {
    let c = cluster(json!({"namespaces": ["a"]}));
    let made = (*kept(&c, "a", None)).clone();
    assert_eq!(super::index::kept_for(&made), Some("agents"));
    let mut by_hand = made.clone();
    by_hand.metadata.owner_references = None;
    assert_eq!(super::index::kept_for(&by_hand), None);
    let mut index = BindingIndex::new([None]);
    index.apply(None, &Event::Init);
    index.apply(None, &Event::InitApply(by_hand));
    index.apply(None, &Event::InitDone);
    assert!(index.children_of("agents").is_empty());
    assert_eq!(
        index.own_in("a")["agents"],
        "agents",
        "the namespace's own: a conflict, never taken over"
    );
}

#[test]
fn a_field_added_beside_what_kvsync_applies_is_no_reason_to_write() {
    let c = cluster(json!({"namespaces": ["a"]}));
    let mut edited = (*kept(&c, "a", None)).clone();
    edited.spec.identity = Some(Default::default());
    assert!(fanout::in_step(&fanout::child(&c, "a"), &edited));
    // (kvsync syncs the cluster binding's spec whatever the copy says.)
    edited.spec.sync.secrets[0].name = "payroll-db".into();
    assert!(!fanout::in_step(&fanout::child(&c, "a"), &edited));
}

#[test]
fn an_invalid_selector_selects_nothing() {
    let c = cluster(json!({"namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": "in", "values": ["a"]},
    ]}}));
    assert!(!c.spec.selects("x", &labels(&[("team", "a")])));
    let ok = cluster(json!({"namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": "In", "values": ["a"]},
    ]}}));
    assert!(ok.spec.selects("x", &labels(&[("team", "a")])));
}

#[test]
fn a_heartbeat_of_a_kept_binding_changes_nothing_its_ready_condition_does() {
    let c = cluster(json!({"namespaces": ["a"]}));
    let mut index = BindingIndex::new([None]);
    index.apply(None, &Event::Init);
    index.apply(None, &Event::InitDone);
    let synced = (*kept(&c, "a", Some(("True", "Synced")))).clone();
    assert!(index.apply(None, &Event::Apply(synced.clone())));
    let mut heartbeat = synced.clone();
    heartbeat.status.as_mut().unwrap().last_sync_time = Some(crate::status::now());
    assert!(!index.apply(None, &Event::Apply(heartbeat)));
    let failing = (*kept(&c, "a", Some(("False", "VaultForbidden")))).clone();
    assert!(index.apply(None, &Event::Apply(failing)));
    // A namespace's own binding: only its target matters.
    let own = binding("a", "team", Some("x"));
    assert!(index.apply(None, &Event::Apply(own.clone())));
    let mut relabelled = own.clone();
    relabelled.metadata.labels = Some(BTreeMap::from([("l".into(), "v".into())]));
    assert!(!index.apply(None, &Event::Apply(relabelled)));
    assert!(index.apply(None, &Event::Apply(binding("a", "team", Some("y")))));
}
