//! ClusterVaultSecretBinding end to end without a cluster: the real
//! `kvsync run` against the API stand-in and a dev vault. (The stand-in has
//! no garbage collector: that a Secret goes with its binding is the e2e
//! suite's to show; here, that the binding goes.)

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/operator.rs"]
mod operator;
mod support;

use kube::api::{Api, Patch, PatchParams};
use operator::{Stack, WITHIN};
use serde_json::{Value, json};

const SEED: &str = "secrets:\n  - {name: registry-password, value: hunter2}\n  - {name: payroll-db, value: top-secret}\n  - {name: team-token, value: team-value}\n";

fn namespace(api: &apiserver::ApiServer, name: &str, labels: Value) {
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}))
        .expect("namespace created");
}

fn cluster_binding(stack: &Stack, spec: Value) {
    let mut spec = spec;
    spec["vaultUrl"] = json!(stack.vault.vault.url());
    stack
        .api
        .create(json!({
            "apiVersion": "kvsync.io/v1alpha1", "kind": "ClusterVaultSecretBinding",
            "metadata": {"name": "agents"}, "spec": spec,
        }))
        .expect("cluster binding created");
}

/// The cluster binding's status once it describes its current generation
/// and `pred` holds.
async fn cluster_status(stack: &Stack, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    stack
        .wait_for(what, WITHIN, || {
            let c = stack.api.get("clustervaultsecretbindings", "", "agents")?;
            let st = &c["status"];
            (st["observedGeneration"] == c["metadata"]["generation"] && pred(st))
                .then(|| st.clone())
        })
        .await
}

fn ready_reason(st: &Value) -> &str {
    st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["reason"].as_str())
        .unwrap_or_default()
}

async fn label(stack: &Stack, ns: &str, labels: Value) {
    Api::<k8s_openapi::api::core::v1::Namespace>::all(stack.client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await
        .expect("namespace labelled");
}

#[tokio::test]
async fn one_read_serves_every_selected_namespace_and_labels_move_the_secret() {
    let stack = Stack::start(SEED, &[]).await;
    for ns in ["a", "b", "c"] {
        namespace(&stack.api, ns, json!({"kvsync.io/agents": "true"}));
    }
    namespace(&stack.api, "d", json!({}));
    stack.vault.reset_stats().await;
    cluster_binding(
        &stack,
        json!({
            "namespaceSelector": {"matchLabels": {"kvsync.io/agents": "true"}},
            "secrets": [{"name": "registry-password", "key": "REGISTRY_PASSWORD"}],
        }),
    );
    let st = cluster_status(&stack, "3 namespaces synced", |st| {
        st["namespacesSynced"] == 3
    })
    .await;
    assert_eq!(ready_reason(&st), "Synced");
    assert_eq!(st["namespacesSelected"], 3);
    assert_eq!(st["namespacesFailed"], 0);
    assert_eq!(st["secrets"][0]["name"], "registry-password");
    for ns in ["a", "b", "c"] {
        assert_eq!(
            stack
                .secret_text(ns, "agents", "REGISTRY_PASSWORD")
                .as_deref(),
            Some("hunter2"),
            "Secret {ns}/agents"
        );
        let b = stack
            .api
            .get("vaultsecretbindings", ns, "agents")
            .expect("the namespace's binding");
        assert_eq!(
            b["metadata"]["ownerReferences"][0]["kind"],
            "ClusterVaultSecretBinding"
        );
    }
    assert!(stack.api.get("secrets", "d", "agents").is_none());
    let stats = stack.vault.stats().await;
    let reads = stats.count("get_secret", 200) + stats.count("list_secrets", 200);
    assert_eq!(
        reads, 1,
        "one read for three namespaces, as for one binding: {:?}",
        stats.requests
    );

    // A namespace labelled to match gets its Secret.
    label(&stack, "d", json!({"kvsync.io/agents": "true"})).await;
    stack
        .wait_for("Secret d/agents", WITHIN, || {
            stack.secret_text("d", "agents", "REGISTRY_PASSWORD")
        })
        .await;
    cluster_status(&stack, "4 namespaces synced", |st| {
        st["namespacesSynced"] == 4
    })
    .await;

    // One that stops matching loses its binding (and so, by garbage
    // collection on a cluster, its Secret).
    label(&stack, "b", json!({"kvsync.io/agents": null})).await;
    stack
        .wait_for("binding b/agents removed", WITHIN, || {
            stack
                .api
                .get("vaultsecretbindings", "b", "agents")
                .is_none()
                .then_some(())
        })
        .await;
    let st = cluster_status(&stack, "3 selected", |st| {
        st["namespacesSelected"] == 3 && st["namespacesSynced"] == 3
    })
    .await;
    assert_eq!(ready_reason(&st), "Synced");
}

#[tokio::test]
async fn a_namespaces_own_binding_of_the_same_secret_wins() {
    let stack = Stack::start(SEED, &[]).await;
    namespace(&stack.api, "a", json!({"agents": "yes"}));
    namespace(&stack.api, "team", json!({"agents": "yes"}));
    stack.create_binding(
        "team",
        "team-secrets",
        json!({"secrets": [{"name": "team-token"}], "target": {"name": "agents"}}),
    );
    cluster_binding(
        &stack,
        json!({
            "namespaceSelector": {"matchLabels": {"agents": "yes"}},
            "secrets": [{"name": "registry-password"}],
        }),
    );
    let st = cluster_status(&stack, "a synced, team failed", |st| {
        st["namespacesSynced"] == 1 && st["namespacesFailed"] == 1
    })
    .await;
    assert_eq!(ready_reason(&st), "NamespacesFailed");
    let failed = &st["failedNamespaces"][0];
    assert_eq!(failed["namespace"], "team");
    assert_eq!(failed["reason"], "ClusterBindingConflict");
    assert!(
        failed["message"].as_str().unwrap().contains("team-secrets"),
        "{failed}"
    );
    assert!(
        stack
            .api
            .get("vaultsecretbindings", "team", "agents")
            .is_none(),
        "no binding of the cluster's in the namespace it leaves alone"
    );
    let team = stack
        .wait_for("team's own Secret", WITHIN, || {
            stack.secret_text("team", "agents", "team-token")
        })
        .await;
    assert_eq!(team, "team-value");
    assert_eq!(
        stack
            .secret_text("a", "agents", "registry-password")
            .as_deref(),
        Some("hunter2")
    );
}

fn forged(stack: &Stack, ns: &str, owner_uid: Option<&Value>) {
    let mut metadata = json!({"name": "agents", "namespace": ns,
        "annotations": {"kvsync.io/cluster-binding": "agents"}});
    if let Some(uid) = owner_uid {
        metadata["ownerReferences"] = json!([{"apiVersion": "kvsync.io/v1alpha1",
            "kind": "ClusterVaultSecretBinding", "name": "agents", "uid": uid, "controller": true}]);
    }
    stack.create_binding_with(metadata, json!({"secrets": [{"name": "payroll-db"}]}));
}

#[tokio::test]
async fn a_forged_claim_reads_nothing_and_a_policy_does_not_limit_the_cluster_binding() {
    let stack = Stack::start(SEED, &["--access-policy", "enforce"]).await;
    namespace(&stack.api, "agents-ns", json!({"agents": "yes"}));
    for ns in ["intruder", "copycat"] {
        namespace(&stack.api, ns, json!({}));
    }
    cluster_binding(
        &stack,
        json!({
            "namespaceSelector": {"matchLabels": {"agents": "yes"}},
            "secrets": [{"name": "registry-password"}],
        }),
    );
    // Under enforce, no policy selects agents-ns: a namespaced binding there
    // would be denied, but the cluster binding is the platform team's.
    cluster_status(&stack, "synced under enforce", |st| {
        st["namespacesSynced"] == 1
    })
    .await;
    stack.vault.reset_stats().await;

    // A claim made by hand in a namespace the cluster binding does not
    // select: refused, and not deleted (kvsync deletes only what it made).
    forged(&stack, "intruder", None);
    let c = stack.ready_condition("intruder", "agents", "False").await;
    assert_eq!(c["reason"], "ClusterBindingMissing");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("no owner reference"),
        "{c}"
    );

    // A claim that copies even the owner reference (a uid is no secret)
    // is one kvsync cannot tell from its own: outside the selection, it is
    // refused and removed.
    let owner = stack
        .api
        .get("clustervaultsecretbindings", "", "agents")
        .unwrap();
    forged(&stack, "copycat", Some(&owner["metadata"]["uid"]));
    stack
        .wait_for("copycat/agents removed", WITHIN, || {
            stack
                .api
                .get("vaultsecretbindings", "copycat", "agents")
                .is_none()
                .then_some(())
        })
        .await;

    // In a selected namespace, a claim made by hand is the namespace's own
    // binding: reported as a conflict, refused, never taken over.
    namespace(&stack.api, "forger", json!({"agents": "yes"}));
    forged(&stack, "forger", None);
    let st = cluster_status(&stack, "forger left alone", |st| {
        st["namespacesFailed"] == 1
    })
    .await;
    assert_eq!(st["failedNamespaces"][0]["namespace"], "forger");
    assert_eq!(
        st["failedNamespaces"][0]["reason"],
        "ClusterBindingConflict"
    );
    let c = stack.ready_condition("forger", "agents", "False").await;
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("no owner reference"),
        "{c}"
    );
    let kept = stack
        .api
        .get("vaultsecretbindings", "forger", "agents")
        .unwrap();
    assert!(
        kept["metadata"]["ownerReferences"].is_null(),
        "not taken over: {kept}"
    );
    assert_eq!(kept["spec"]["secrets"][0]["name"], "payroll-db");

    // The cluster binding decides again (a force-sync is copied to the
    // binding it keeps): the hand-made claim outside still stands.
    Api::<kvsync::crd::cluster::ClusterVaultSecretBinding>::all(stack.client.clone())
        .patch(
            "agents",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kvsync.io/force-sync": "1"}}})),
        )
        .await
        .unwrap();
    stack
        .wait_for("the force-sync copied to agents-ns", WITHIN, || {
            let b = stack
                .api
                .get("vaultsecretbindings", "agents-ns", "agents")?;
            (b["metadata"]["annotations"]["kvsync.io/force-sync"] == "1").then_some(())
        })
        .await;
    assert!(
        stack
            .api
            .get("vaultsecretbindings", "intruder", "agents")
            .is_some()
    );

    // Nothing was read for any claim, nothing written for them.
    let stats = stack.vault.stats().await;
    let reads_for_claims = stats.count("list_secrets", 200);
    assert_eq!(reads_for_claims, 0, "{:?}", stats.requests);
    assert!(
        stats.count("get_secret", 200) <= 1,
        "at most the forced read of registry-password: {:?}",
        stats.requests
    );
    for ns in ["intruder", "copycat", "forger"] {
        assert!(stack.api.get("secrets", ns, "agents").is_none(), "{ns}");
    }
}

/// The LIST requests of each kind `kvsync run` sends at start, once they
/// have stopped coming: every kind in `expected` listed at least as often,
/// then a second without more. Not every watch counts toward `/readyz`, so
/// readiness alone does not say they all listed.
async fn lists_at_start(stack: &Stack, expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    let lists = || -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = stack
            .api
            .counts()
            .into_iter()
            .filter(|((verb, _, sub), _)| verb == "list" && sub.is_empty())
            .map(|((_, resource, _), n)| (resource, n))
            .collect();
        all.sort();
        all
    };
    stack
        .wait_for("every kind listed", WITHIN, || {
            let now = lists();
            expected
                .iter()
                .all(|(kind, n)| now.iter().any(|(k, m)| k == kind && m >= n))
                .then_some(())
        })
        .await;
    let mut last = lists();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = lists();
        if now == last {
            return now;
        }
        last = now;
    }
}

fn owned(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = expected.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    v.sort();
    v
}

#[tokio::test]
async fn each_kind_is_listed_once_at_start_for_both_controllers() {
    let stack = Stack::start(SEED, &[]).await;
    let expected = [
        ("clustervaultsecretbindings", 1),
        ("namespaces", 1),
        ("secrets", 1),
        ("serviceaccounts", 1),
        ("vaultaccesspolicies", 1),
        ("vaultsecretbindings", 1),
    ];
    assert_eq!(lists_at_start(&stack, &expected).await, owned(&expected));
}

#[tokio::test]
async fn with_namespaces_each_namespaced_kind_is_listed_once_per_namespace_at_start() {
    let stack = Stack::start(SEED, &["--namespace", "a", "--namespace", "b"]).await;
    // Namespaces are watched one by one (by name) where kvsync serves some.
    let expected = [
        ("clustervaultsecretbindings", 1),
        ("namespaces", 2),
        ("secrets", 2),
        ("serviceaccounts", 2),
        ("vaultaccesspolicies", 1),
        ("vaultsecretbindings", 2),
    ];
    assert_eq!(lists_at_start(&stack, &expected).await, owned(&expected));
}
