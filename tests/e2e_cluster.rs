//! End-to-end tests of ClusterVaultSecretBinding against a real Kubernetes
//! API server: one vault read fills the Secret of every namespace a cluster
//! binding selects, a namespace that starts or stops matching gains or loses
//! its Secret within seconds, a namespace's own binding writing the same
//! Secret wins, a VaultSecretBinding that only claims to be kept for a
//! cluster binding reads nothing (and is reported, not deleted), deleting
//! the cluster binding takes every namespace's binding and Secret with it,
//! and an operator serving other namespaces (`--namespace`, as every test's
//! operator here) leaves a cluster binding's namespaces and status alone —
//! without which tests running side by side would undo each other's work.
//!
//! They run when `KVSYNC_E2E_KUBECONFIG` names a cluster-admin kubeconfig,
//! and are skipped (saying so) otherwise; see `tests/e2e_support`.
//!
//! Cluster bindings are cluster-scoped and every operator on the cluster
//! (those of tests running in parallel too) sees them: each one here selects
//! only its test's namespaces, by a label whose value is the test's first
//! namespace's (unique) name, is named after that namespace, and is deleted
//! when the test's `Env` drops. Every namespace a test labels is one its own
//! operator serves (`Options::namespaces`), labelled or not.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kvsync::crd::cluster::ClusterVaultSecretBinding;
use kvsync::crd::names::{CHILD_LABEL, PARENT_ANNOTATION};
use serde_json::{Value, json};

mod e2e_support;
use e2e_support::*;

const SEED: &str = r#"
secrets:
  - {name: shared-token, value: the-shared-token}
  - {name: own-token, value: the-namespace-own-token}
  - {name: payroll-db, value: the-payroll-password}
"#;

/// The namespace label the tests' cluster bindings select by (its value:
/// the test's first namespace's name, unique to the test).
const SCOPE_LABEL: &str = "kvsync-e2e/cluster-scope";

/// How long a namespace that starts or stops matching may take to gain or
/// lose its binding ("within seconds"; slack for a remote API server). The
/// cluster bindings here refresh hourly: nothing but the namespace change
/// can act within it.
const MATCH_DEADLINE: Duration = Duration::from_secs(15);

/// The status the dev vault answers any request for `payroll-db` with while
/// the tripwire is set: nothing else in these tests answers it.
const TRIPWIRE: u16 = 418;

/// A `namespaceSelector` selecting the namespaces labelled for `env`'s test.
fn selecting(env: &Env) -> Value {
    json!({"matchLabels": {SCOPE_LABEL: env.ns}})
}

/// Labels `scope`'s namespace so that `env`'s cluster bindings select it.
async fn select(env: &Env, scope: &Scope) {
    scope.label_namespace(SCOPE_LABEL, &env.ns).await;
}

/// The spec of a cluster binding taking `shared-token` into every namespace
/// labelled for `env`'s test, checked hourly.
fn shared_spec(env: &Env) -> Value {
    json!({"namespaceSelector": selecting(env), "secrets": [{"name": "shared-token"}],
           "refreshInterval": "1h"})
}

/// The name of the test's cluster binding (and so of its bindings and
/// Secrets): unique to the test.
fn cluster_name(env: &Env) -> String {
    format!("{}-shared", env.ns)
}

/// Checks the binding kept in `scope` for `cluster`: labelled and annotated
/// as kvsync's, owned by the cluster binding; returns its uid.
async fn kept_binding(scope: &Scope, cluster: &ClusterVaultSecretBinding) -> String {
    let name = cluster.name_any();
    let b = scope
        .bindings()
        .get_opt(&name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no VaultSecretBinding {}/{name}", scope.ns));
    assert_eq!(
        b.labels().get(CHILD_LABEL).map(String::as_str),
        Some("true"),
        "{}/{name} labels {:?}",
        scope.ns,
        b.labels()
    );
    assert_eq!(
        b.annotations().get(PARENT_ANNOTATION),
        Some(&name),
        "{}/{name} annotations {:?}",
        scope.ns,
        b.annotations()
    );
    let owner = b
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .unwrap_or_else(|| panic!("{}/{name} has no controller owner", scope.ns));
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), Some(&owner.uid)),
        (
            "ClusterVaultSecretBinding",
            name.as_str(),
            cluster.uid().as_ref()
        ),
        "{}/{name} is owned by its cluster binding",
        scope.ns
    );
    b.uid().expect("a stored binding has a uid")
}

/// The uid of the controller owner of `secret`, for messages and checks.
fn owner_uid(secret: &Secret) -> Option<String> {
    secret
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// Makes every request for `payroll-db` (GET, versions) answer [`TRIPWIRE`].
async fn set_tripwire(env: &Env) {
    env.vault
        .fault(
            json!({"op": "*", "secret": "payroll-db", "status": TRIPWIRE,
                      "code": "Tripwire", "message": "the test's tripwire on payroll-db"}),
        )
        .await;
}

/// Requests for `payroll-db` the vault received while the tripwire was set.
async fn payroll_requests(env: &Env) -> u64 {
    let stats = env.vault.stats().await;
    ["get_secret", "list_versions"]
        .iter()
        .map(|op| count_in(&stats, op, Some(TRIPWIRE)))
        .sum()
}

#[tokio::test]
async fn one_vault_read_fills_the_secret_of_every_selected_namespace() {
    let kc = e2e!();
    let env = Env::start_with(
        kc,
        Options {
            namespaces: 3,
            ..Options::new(SEED)
        },
    )
    .await;
    for i in 0..3 {
        select(&env, env.scope(i)).await;
    }
    let name = cluster_name(&env);
    // Nothing reads the vault before the cluster binding exists: every
    // request counted from here on is its doing.
    env.vault.reset_stats().await;
    let generation = env.apply_cluster_binding(&name, shared_spec(&env)).await;
    let cluster = env.cluster_synced(&name, 3, SYNC_DEADLINE).await;
    assert_eq!(cluster.metadata.generation, Some(generation));

    for i in 0..3 {
        let scope = env.scope(i);
        let child = kept_binding(scope, &cluster).await;
        // The Secret is named like the cluster binding (no target.name),
        // and owned by the namespace's binding (policy Owner).
        let secret = scope
            .wait_for_value(
                &name,
                "shared-token",
                "the-shared-token",
                "the cluster binding's Secret",
                SYNC_DEADLINE,
            )
            .await;
        assert_eq!(
            owner_uid(&secret),
            Some(child),
            "Secret {}/{name} is owned by the binding kept there",
            scope.ns
        );
        assert_eq!(
            secret.labels().get("app.kubernetes.io/managed-by"),
            Some(&"kvsync".to_string())
        );
    }
    let gets = env.vault.count("get_secret").await;
    assert_eq!(
        gets,
        1,
        "one GET of shared-token serves all 3 namespaces: {}",
        env.vault.stats().await
    );
    let status = cluster.status.expect("a status");
    let names: Vec<&str> = status.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["shared-token"], "status.secrets");
    assert!(
        status.last_sync_time.is_some(),
        "status.lastSyncTime is set"
    );
    assert!(status.failed_namespaces.is_empty());
}

#[tokio::test]
async fn a_namespace_gets_the_secret_when_it_starts_matching_and_loses_it_when_it_stops() {
    let kc = e2e!();
    let env = Env::start_with(
        kc,
        Options {
            namespaces: 4,
            ..Options::new(SEED)
        },
    )
    .await;
    for i in 0..3 {
        select(&env, env.scope(i)).await;
    }
    let name = cluster_name(&env);
    env.apply_cluster_binding(&name, shared_spec(&env)).await;
    env.cluster_synced(&name, 3, SYNC_DEADLINE).await;
    let late = env.scope(3);
    assert!(
        late.secrets().get_opt(&name).await.unwrap().is_none(),
        "an unselected namespace has no Secret"
    );
    assert!(late.seen(&name).await.unwrap().is_none());

    // Labelled: its Secret appears within seconds.
    select(&env, late).await;
    late.wait_for_value(
        &name,
        "shared-token",
        "the-shared-token",
        "the Secret of a namespace that started matching",
        MATCH_DEADLINE,
    )
    .await;
    let cluster = env.cluster_synced(&name, 4, MATCH_DEADLINE).await;
    let child = kept_binding(late, &cluster).await;

    // Unlabelled: its binding is deleted, and the garbage collector deletes
    // the Secret that binding owned.
    late.unlabel_namespace(SCOPE_LABEL).await;
    late.wait_gone(&name, MATCH_DEADLINE).await;
    late.wait_secret_gone(
        &name,
        &format!("the garbage collector, once binding {child} is gone"),
        SYNC_DEADLINE,
    )
    .await;
    env.cluster_synced(&name, 3, MATCH_DEADLINE).await;
    // The namespaces still selected keep theirs.
    for i in 0..3 {
        let data = env.scope(i).secret_data(&name).await;
        assert_eq!(
            data.as_ref()
                .and_then(|d| d.get("shared-token"))
                .map(String::as_str),
            Some("the-shared-token"),
            "Secret {}/{name}: {data:?}",
            env.scope(i).ns
        );
    }
}

#[tokio::test]
async fn a_namespace_s_own_binding_of_the_same_secret_or_name_wins() {
    let kc = e2e!();
    let env = Env::start_with(
        kc,
        Options {
            namespaces: 3,
            ..Options::new(SEED)
        },
    )
    .await;
    for i in 0..3 {
        select(&env, env.scope(i)).await;
    }
    let name = cluster_name(&env);
    // Namespace 1 writes the cluster binding's Secret with a binding of
    // its own; namespace 2 has a binding of the cluster binding's name
    // (writing another Secret).
    let (same_secret, same_name) = (env.scope(1), env.scope(2));
    same_secret
        .bind_and_wait(
            "own",
            json!({"secrets": [{"name": "own-token"}], "target": {"name": name},
                   "refreshInterval": "1h"}),
        )
        .await;
    same_name
        .bind_and_wait(
            &name,
            json!({"secrets": [{"name": "own-token"}], "target": {"name": "elsewhere"},
                   "refreshInterval": "1h"}),
        )
        .await;

    env.apply_cluster_binding(&name, shared_spec(&env)).await;
    let (cluster, ready) = env
        .cluster_until(
            &name,
            "Ready=False NamespacesFailed: 1 synced, 2 failed with ClusterBindingConflict",
            SYNC_DEADLINE,
            |st, c| {
                c.status == "False"
                    && c.reason == "NamespacesFailed"
                    && st.namespaces_selected == 3
                    && st.namespaces_synced == 1
                    && st.namespaces_failed == 2
            },
        )
        .await;
    let failed = cluster.status.unwrap().failed_namespaces;
    let by_ns: Vec<(&str, &str)> = failed
        .iter()
        .map(|f| (f.namespace.as_str(), f.reason.as_str()))
        .collect();
    let mut expected = vec![
        (same_secret.ns.as_str(), "ClusterBindingConflict"),
        (same_name.ns.as_str(), "ClusterBindingConflict"),
    ];
    expected.sort();
    assert_eq!(by_ns, expected, "status.failedNamespaces: {failed:?}");
    let message = |ns: &str| {
        failed
            .iter()
            .find(|f| f.namespace == ns)
            .map(|f| f.message.clone())
            .unwrap_or_default()
    };
    assert!(
        message(&same_secret.ns).contains("VaultSecretBinding own"),
        "the message names the namespace's binding: {}",
        message(&same_secret.ns)
    );
    assert!(
        message(&same_name.ns).contains(&format!("VaultSecretBinding {name} of its own")),
        "{}",
        message(&same_name.ns)
    );
    assert!(
        ready.message.contains(&same_secret.ns),
        "the Ready message names a failed namespace: {}",
        ready.message
    );

    // The selected namespace without a binding of its own has the Secret.
    env.wait_for_value(
        &name,
        "shared-token",
        "the-shared-token",
        "the Secret of the namespace without a conflict",
        SYNC_DEADLINE,
    )
    .await;
    // Namespace 1's Secret is its own binding's, untouched: no kept binding
    // there, and none of the cluster binding's keys.
    assert!(same_secret.seen(&name).await.unwrap().is_none());
    let own = same_secret.binding("own").await;
    let secret = same_secret.secrets().get(&name).await.unwrap();
    assert_eq!(
        data_of(&secret),
        BTreeMap::from([(
            "own-token".to_string(),
            "the-namespace-own-token".to_string()
        )]),
        "Secret {}/{name}",
        same_secret.ns
    );
    assert_eq!(owner_uid(&secret), own.uid());
    same_secret.ready("own", "True", SYNC_DEADLINE).await;
    // Namespace 2's binding is its own still (not taken over), and no
    // Secret of the cluster binding's name was written there.
    let theirs = same_name.binding(&name).await;
    assert!(
        !theirs.annotations().contains_key(PARENT_ANNOTATION)
            && theirs.owner_references().is_empty(),
        "{}/{name} was taken over: {:?} {:?}",
        same_name.ns,
        theirs.annotations(),
        theirs.owner_references()
    );
    same_name.ready(&name, "True", SYNC_DEADLINE).await;
    assert!(same_name.secrets().get_opt(&name).await.unwrap().is_none());
    same_name
        .wait_for_value(
            "elsewhere",
            "own-token",
            "the-namespace-own-token",
            "the namespace's own binding's Secret",
            SYNC_DEADLINE,
        )
        .await;
}

#[tokio::test]
async fn a_forged_claim_on_a_cluster_binding_that_does_not_select_the_namespace_reads_nothing() {
    let kc = e2e!();
    let env = Env::start_with(
        kc,
        Options {
            namespaces: 2,
            ..Options::new(SEED)
        },
    )
    .await;
    set_tripwire(&env).await;
    select(&env, &env).await;
    let name = cluster_name(&env);
    env.apply_cluster_binding(&name, shared_spec(&env)).await;
    env.cluster_synced(&name, 1, SYNC_DEADLINE).await;

    // Namespace 1 is not selected. A binding there claims to be kept for
    // the cluster binding (its name and annotation, no owner), asking for
    // a secret of its own choosing.
    let outside = env.scope(1);
    outside
        .apply_binding_with(
            &name,
            json!({"annotations": {PARENT_ANNOTATION: name}}),
            json!({"secrets": [{"name": "payroll-db"}], "refreshInterval": "1h"}),
        )
        .await;
    // Refused before anything else: kvsync did not make it (no owner
    // reference to the cluster binding).
    let expected = "no owner reference".to_string();
    let (seen, _) = outside
        .until(
            &name,
            &format!("Ready=False ClusterBindingMissing saying {expected:?}"),
            false,
            SYNC_DEADLINE,
            |c| {
                c.status == "False"
                    && c.reason == "ClusterBindingMissing"
                    && c.message.contains(&expected)
            },
        )
        .await;
    let forged = seen.binding().uid();

    // The cluster binding's controller decides again (a force-sync on it is
    // copied to the bindings it keeps: once the selected namespace's binding
    // carries it, that decision, taken with the forged binding in view, is
    // done), and so does the namespace controller for the forged binding
    // (a barrier: its forced check has finished).
    let force = env.force_sync_cluster_binding(&name).await;
    eventually(
        &env,
        "the cluster binding's decision after the forged binding appeared",
        SYNC_DEADLINE,
        || async {
            let b = env.binding(&name).await;
            match b.annotations().get("kvsync.io/force-sync") {
                Some(v) if *v == force => Ok(()),
                other => Err(format!("kept binding's force-sync annotation {other:?}")),
            }
        },
    )
    .await;
    match outside.seen(&name).await.unwrap() {
        Some(s) if s.binding().uid() == forged => {}
        other => panic!(
            "the forged VaultSecretBinding {}/{name} (no owner reference) was deleted or replaced by the cluster-binding controller instead of being reported: {:?}",
            outside.ns,
            other.map(|s| s.describe())
        ),
    }
    env.barrier(outside, &name).await;
    outside
        .until(
            &name,
            "still Ready=False ClusterBindingMissing after a forced check",
            false,
            SYNC_DEADLINE,
            |c| c.status == "False" && c.reason == "ClusterBindingMissing",
        )
        .await;
    assert_eq!(
        payroll_requests(&env).await,
        0,
        "the forged binding's secret was asked for: {}",
        env.vault.stats().await
    );
    assert!(
        outside.secrets().get_opt(&name).await.unwrap().is_none(),
        "nothing is written for a forged claim (neither its spec nor the cluster binding's)"
    );
    assert!(
        outside
            .binding(&name)
            .await
            .status
            .unwrap()
            .secrets
            .is_empty(),
        "the forged binding reports no secrets"
    );
}

#[tokio::test]
async fn deleting_the_cluster_binding_removes_every_kept_binding_and_secret() {
    let kc = e2e!();
    let env = Env::start_with(
        kc,
        Options {
            namespaces: 2,
            ..Options::new(SEED)
        },
    )
    .await;
    for i in 0..2 {
        select(&env, env.scope(i)).await;
    }
    let name = cluster_name(&env);
    env.apply_cluster_binding(&name, shared_spec(&env)).await;
    let cluster = env.cluster_synced(&name, 2, SYNC_DEADLINE).await;
    for i in 0..2 {
        kept_binding(env.scope(i), &cluster).await;
        env.scope(i)
            .wait_for_value(
                &name,
                "shared-token",
                "the-shared-token",
                "the cluster binding's Secret",
                SYNC_DEADLINE,
            )
            .await;
    }

    env.delete_cluster_binding(&name).await;
    env.wait_cluster_gone(&name, SYNC_DEADLINE).await;
    for i in 0..2 {
        let scope = env.scope(i);
        scope.wait_gone(&name, SYNC_DEADLINE).await;
        scope
            .wait_secret_gone(
                &name,
                "the garbage collector, once the binding owning it is gone",
                SYNC_DEADLINE,
            )
            .await;
    }
}

#[tokio::test]
async fn an_operator_serving_other_namespaces_leaves_the_bindings_kept_in_these_alone() {
    let kc = e2e!();
    let env = Env::start_with(
        kc.clone(),
        Options {
            namespaces: 2,
            ..Options::new(SEED)
        },
    )
    .await;
    for i in 0..2 {
        select(&env, env.scope(i)).await;
    }
    let name = cluster_name(&env);
    env.apply_cluster_binding(&name, shared_spec(&env)).await;
    let cluster = env.cluster_synced(&name, 2, SYNC_DEADLINE).await;
    let mut kept = Vec::new();
    for i in 0..2 {
        kept.push(kept_binding(env.scope(i), &cluster).await);
    }
    let ready_message = |c: &ClusterVaultSecretBinding| {
        c.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let synced_message = ready_message(&cluster);

    // Another world, as a test running beside this one has: an operator
    // serving only its own namespace (`--namespace`), with a cluster
    // binding of its own. Its cluster-binding controller lists every
    // cluster binding when it starts and decides about each; once its own
    // is synced (a round trip through a kept binding's sync), it has
    // decided about this test's too.
    let other = Env::start(kc, SEED).await;
    select(&other, &other).await;
    let other_name = cluster_name(&other);
    other
        .apply_cluster_binding(&other_name, shared_spec(&other))
        .await;
    other.cluster_synced(&other_name, 1, SYNC_DEADLINE).await;

    for (i, uid) in kept.iter().enumerate() {
        let scope = env.scope(i);
        let now = scope.seen(&name).await.unwrap();
        assert_eq!(
            now.as_ref().map(|s| s.binding().uid()),
            Some(Some(uid.clone())),
            "VaultSecretBinding {}/{name}, kept for cluster binding {name}, was deleted (or replaced) \
             by the operator of namespace {} that does not serve {}: {:?}",
            scope.ns,
            other.ns,
            scope.ns,
            now.map(|s| s.describe())
        );
    }
    // Nor did it report on this test's cluster binding from its own view
    // (no namespace of it selected). The status is as this test's operator
    // wrote it, which writes only when it changes.
    let seen = env.cluster_seen(&name).await.unwrap().expect("it exists");
    let st = seen.cluster_status();
    assert!(
        st.namespaces_selected == 2
            && st.namespaces_synced == 2
            && ready_message(&seen.cluster()) == synced_message,
        "the status of cluster binding {name} was written by the operator of namespace {}, which serves none of its namespaces: {}",
        other.ns,
        seen.describe_cluster()
    );
}
