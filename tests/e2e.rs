//! End-to-end tests against a real Kubernetes API server: the slice a new
//! user tries first (sync, rotation, drift repair, Merge, rollout, identity).
//!
//! They run when `KVSYNC_E2E_KUBECONFIG` names a kubeconfig with
//! cluster-admin, and are skipped (saying so) otherwise. The harness
//! (`tests/e2e_support`) starts `kvsync dev-vault` and `kvsync run` as child
//! processes of the built binary for each test, in fresh namespaces it deletes
//! at the end. Nothing here needs pods to run. Every step waits for the state
//! it depends on to be observable (the binding Ready for its current
//! generation, the Secret holding the value) before acting on it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

mod e2e_support;
use e2e_support::*;

const SEED: &str = r#"
secrets:
  - {name: db-password, value: first-password}
  - {name: api-key, value: the-api-key}
"#;

#[tokio::test]
async fn binding_becomes_a_secret_with_data_owner_and_status() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.apply_binding("app", json!({"secrets": [{"name": "db-password", "key": "DB_PASSWORD"}, {"name": "api-key"}], "refreshInterval": "30s"})).await;
    let (b, reason, message) = env.ready("app", "True", SYNC_DEADLINE).await;
    assert_eq!(reason, "Synced", "{message}");
    env.wait_for_value(
        "app",
        "DB_PASSWORD",
        "first-password",
        "the first sync",
        SYNC_DEADLINE,
    )
    .await;

    let secret = env.secrets().get("app").await.unwrap();
    let data = data_of(&secret);
    assert_eq!(data["DB_PASSWORD"], "first-password");
    assert_eq!(data["api-key"], "the-api-key");
    assert_eq!(secret.labels()["app.kubernetes.io/managed-by"], "kvsync");
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("VaultSecretBinding", b.uid().unwrap().as_str())
    );
    assert_eq!(owner.controller, Some(true));
    let managers: Vec<String> = secret
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"kvsync".to_string()), "{managers:?}");

    let status = b.status.unwrap();
    assert_eq!(status.secret_count, Some(2));
    assert!(status.data_hash.unwrap().starts_with("hmac-sha256:"));
    assert!(status.last_sync_time.is_some());
    assert!(status.secrets.iter().all(|s| s.version.len() == 32));
    let status_json = serde_json::to_string(&env.binding("app").await.status).unwrap();
    assert!(!status_json.contains("first-password") && !status_json.contains("the-api-key"));
}

#[tokio::test]
async fn new_version_in_the_vault_reaches_the_secret_within_the_refresh_interval() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "30s"}),
    )
    .await;
    let (b, _, _) = env.ready("app", "True", SYNC_DEADLINE).await;
    env.wait_for_value(
        "app",
        "db-password",
        "first-password",
        "the first sync",
        SYNC_DEADLINE,
    )
    .await;
    let old_version = b.status.unwrap().secrets[0].version.clone();

    let new_version = env
        .vault
        .put_secret("db-password", "rotated-password")
        .await;
    let changed_at = Instant::now();
    env.wait_for_value(
        "app",
        "db-password",
        "rotated-password",
        "the new version, by the periodic check",
        CHANGE_DEADLINE,
    )
    .await;
    let took = changed_at.elapsed();
    assert!(
        took <= REFRESH + REFRESH / 10 + Duration::from_secs(5),
        "took {took:?}"
    );
    let status = eventually(
        &env,
        "status.secrets[].version to follow",
        SYNC_DEADLINE,
        || async {
            let b = env.binding("app").await;
            let s = b.status.clone().ok_or("no status")?;
            match s.secrets.first() {
                Some(x) if x.version == new_version => Ok(s),
                other => Err(format!("status.secrets[0] = {other:?}")),
            }
        },
    )
    .await;
    assert_ne!(old_version, new_version);
    assert!(status.last_change_time.is_some());
}

#[tokio::test]
async fn unchanged_vault_writes_nothing() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    // 1h: no periodic check gets in the way; the checks below are forced.
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h"}),
    )
    .await;
    env.ready("app", "True", SYNC_DEADLINE).await;
    let before = env
        .wait_for_value(
            "app",
            "db-password",
            "first-password",
            "the first sync",
            SYNC_DEADLINE,
        )
        .await
        .resource_version();
    // Once this forced check has finished, so has every earlier reconcile
    // (the first sync's write included): the counter read next is settled.
    env.barrier(&env, "app").await;
    let writes = env.operator_metric("kvsync_secret_writes_total", &[]).await;
    assert!(
        writes >= 1.0,
        "the first sync counted its Secret write (kvsync_secret_writes_total {writes}): the metric read is this operator's\n{}",
        env.logs.operator_tail()
    );
    // Two forced checks of the unchanged vault, each waited for until the
    // operator has finished it (status.forceSyncHandled).
    env.barrier(&env, "app").await;
    env.barrier(&env, "app").await;
    assert_eq!(
        env.operator_metric("kvsync_secret_writes_total", &[]).await,
        writes,
        "the operator wrote no Secret during two forced checks of an unchanged vault (kvsync_secret_writes_total)\n{}",
        env.logs.operator_tail()
    );
    assert_eq!(
        env.secrets().get("app").await.unwrap().resource_version(),
        before,
        "the Secret was written although nothing changed"
    );
}

#[tokio::test]
async fn disabled_secret_keeps_its_last_value_and_says_why() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait("app", json!({"secrets": [{"name": "db-password"}], "refreshInterval": "30s", "onDisabled": "KeepLast"})).await;
    env.wait_for_value(
        "app",
        "db-password",
        "first-password",
        "the first sync",
        SYNC_DEADLINE,
    )
    .await;
    env.vault.disable_secret("db-password").await;
    env.force_sync("app").await;
    let (_, c) = env
        .until(
            "app",
            "the Ready condition to name the disabled secret",
            false,
            CHANGE_DEADLINE,
            |c| c.message.contains("disabled") && c.message.contains("db-password"),
        )
        .await;
    assert!(c.message.contains("db-password"), "{c:?}");
    assert_eq!(
        env.secret_data("app").await.unwrap()["db-password"],
        "first-password"
    );
}

#[tokio::test]
async fn non_vault_host_is_refused_without_a_token_request() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.apply_binding(
        "evil",
        json!({"vaultUrl": "https://collector.example.com", "secrets": [{"name": "db-password"}]}),
    )
    .await;
    let message = env
        .ready_reason("evil", "False", "VaultHostNotAllowed", SYNC_DEADLINE)
        .await;
    assert!(message.contains("--allowed-vault-hosts"), "{message}");
    assert!(env.secrets().get_opt("evil").await.unwrap().is_none());
    assert_eq!(env.vault.count("token").await, 0, "no token was requested");
}

#[tokio::test]
async fn service_account_identity_works_in_its_namespace_and_not_across() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    sas.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "builder", "annotations": {"azure.workload.identity/client-id": "builder-app"}}})).unwrap())
        .await
        .unwrap();
    env.bind_and_wait("mine", json!({"identity": {"serviceAccountName": "builder"}, "secrets": [{"name": "db-password"}]})).await;
    let subjects = env.vault.stats().await["assertionSubjects"]["builder-app"].clone();
    assert_eq!(
        subjects[0],
        format!("system:serviceaccount:{}:builder", env.ns),
        "the TokenRequest token was exchanged"
    );

    // A ServiceAccount of another namespace cannot be named: it is looked up here only.
    let other_ns = env.create_namespace("other").await;
    let other: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &other_ns);
    other
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "elsewhere", "annotations": {"azure.workload.identity/client-id": "other-app"}}})).unwrap())
        .await
        .unwrap();
    env.apply_binding("theirs", json!({"identity": {"serviceAccountName": "elsewhere"}, "secrets": [{"name": "db-password"}]})).await;
    let message = env
        .ready_reason("theirs", "False", "IdentityMisconfigured", SYNC_DEADLINE)
        .await;
    assert!(
        message.contains(&format!(
            "ServiceAccount {}/elsewhere does not exist",
            env.ns
        )),
        "{message}"
    );
    assert!(
        env.vault.stats().await["assertionSubjects"]
            .get("other-app")
            .is_none()
    );
}

#[tokio::test]
async fn two_vault_names_on_one_key_change_nothing() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait(
        "app",
        json!({"secrets": [{"name": "db-password", "key": "X"}]}),
    )
    .await;
    let before = env
        .wait_for_value(
            "app",
            "X",
            "first-password",
            "the first sync",
            SYNC_DEADLINE,
        )
        .await;
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password", "key": "X"}, {"name": "api-key", "key": "X"}]}),
    )
    .await;
    let message = env
        .ready_reason("app", "False", "KeyCollision", SYNC_DEADLINE)
        .await;
    assert!(message.contains("both map to key X"), "{message}");
    let after = env.secrets().get("app").await.unwrap();
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "the Secret was left as it was"
    );
}

#[tokio::test]
async fn merge_keeps_foreign_keys_and_removes_only_ours_on_delete() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.secrets()
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "shared"}, "stringData": {"owned-by-someone": "keep-me"}})).unwrap())
        .await
        .unwrap();
    env.apply_binding("merger", json!({"secrets": [{"name": "db-password", "key": "DB_PASSWORD"}], "target": {"name": "shared", "policy": "Merge"}})).await;
    env.ready("merger", "True", SYNC_DEADLINE).await;
    let data = data_of(
        &env.wait_for_value(
            "shared",
            "DB_PASSWORD",
            "first-password",
            "our key merged in",
            SYNC_DEADLINE,
        )
        .await,
    );
    assert_eq!(data["owned-by-someone"], "keep-me");
    assert!(
        env.binding("merger")
            .await
            .finalizers()
            .contains(&"kvsync.io/merge-cleanup".to_string())
    );

    env.bindings()
        .delete("merger", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("merger", SYNC_DEADLINE).await;
    let data = env
        .secret_data("shared")
        .await
        .expect("the shared Secret stays");
    assert_eq!(
        data.get("owned-by-someone").map(String::as_str),
        Some("keep-me")
    );
    assert!(
        !data.contains_key("DB_PASSWORD"),
        "our key was removed: {:?}",
        data.keys()
    );
}

#[tokio::test]
async fn edited_or_deleted_secret_is_repaired() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h"}),
    )
    .await;
    env.ready("app", "True", SYNC_DEADLINE).await;
    let first = env
        .wait_for_value(
            "app",
            "db-password",
            "first-password",
            "the first sync",
            SYNC_DEADLINE,
        )
        .await;
    env.secrets()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"db-password": "tampered"}})),
        )
        .await
        .unwrap();
    env.wait_for_value(
        "app",
        "db-password",
        "first-password",
        "the edited Secret to be put back",
        SYNC_DEADLINE,
    )
    .await;
    env.secrets()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    let back = env
        .wait_for_value(
            "app",
            "db-password",
            "first-password",
            "the deleted Secret to come back",
            SYNC_DEADLINE,
        )
        .await;
    assert_ne!(back.uid(), first.uid(), "a new Secret was made");
}

#[tokio::test]
async fn rollout_target_is_restarted_once_per_change() {
    let kc = e2e!();
    // The CRD has no per-binding rollout window: the operator's
    // --rollout-window is 10 s here, room for two changes, each brought by a
    // forced check of its own.
    let window = Duration::from_secs(10);
    let env = Env::start_with(
        kc,
        Options {
            rollout_window: "10s",
            ..Options::new(SEED)
        },
    )
    .await;
    env.create_deployment("agent").await;
    let deployments = env.deployments();
    // 1h: every change below is found by a forced check, not a periodic one.
    env.bind_and_wait(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h",
                                    "rollout": [{"kind": "Deployment", "name": "agent"}]}),
    )
    .await;
    env.wait_for_value(
        "app",
        "db-password",
        "first-password",
        "the first sync",
        SYNC_DEADLINE,
    )
    .await;
    let start_generation = deployments.get("agent").await.unwrap().metadata.generation;
    assert_eq!(
        restarted_at(&deployments.get("agent").await.unwrap()),
        None,
        "no restart on the first sync"
    );

    // Two changes inside one window, each in the Secret before the next is
    // made: one restart, at the end of the window the first one opened.
    // Measured from before the first change, so the window (which starts at
    // the check that finds it) ends no earlier than `window` after this.
    let first_change = Instant::now();
    for value in ["second", "third"] {
        env.vault.put_secret("db-password", value).await;
        env.force_sync("app").await;
        env.wait_for_value(
            "app",
            "db-password",
            value,
            "a forced check to bring the change",
            SYNC_DEADLINE,
        )
        .await;
    }
    let d = deployments.get("agent").await.unwrap();
    let both = first_change.elapsed();
    // rolloutPendingSince has whole seconds: the restart may come up to 1 s
    // before `window` has passed.
    let sure = window - Duration::from_secs(1);
    assert!(
        both < sure,
        "both changes were in the Secret within {sure:?} of the first one, inside the {window:?} rollout window: took {both:?} (the cluster was too slow for this test to show coalescing)"
    );
    assert_eq!(
        restarted_at(&d),
        None,
        "no restart before the rollout window ended ({both:?} after the first change): {}",
        env.describe_bindings().await
    );
    let restarted = eventually(
        &env,
        "the Deployment's pod template to get kvsync.io/restartedAt at the end of the window",
        window + SYNC_DEADLINE,
        || async {
            let d = deployments.get("agent").await.map_err(|e| e.to_string())?;
            restarted_at(&d)
                .map(|a| (a, d.metadata.generation))
                .ok_or_else(|| {
                    format!(
                        "template annotations {:?}",
                        d.spec.map(|s| s.template.metadata)
                    )
                })
        },
    )
    .await;
    eventually(
        &env,
        "status.rolloutPendingSince to be cleared once the restart is done",
        SYNC_DEADLINE,
        || async {
            let s = env.seen("app").await?.ok_or("the binding is gone")?;
            if s.json["status"]["rolloutPendingSince"].is_null() {
                Ok(())
            } else {
                Err(s.describe())
            }
        },
    )
    .await;
    // Later checks of an unchanged vault restart nothing; read after them,
    // the Deployment shows every restart the two changes caused.
    env.barrier(&env, "app").await;
    env.barrier(&env, "app").await;
    let d = deployments.get("agent").await.unwrap();
    assert_eq!(
        d.metadata.generation,
        start_generation.map(|g| g + 1),
        "exactly one template change for the two changes (generation {:?} before them)",
        start_generation
    );
    assert_eq!(restarted_at(&d), Some(restarted.0));
    assert_eq!(restarted.1, d.metadata.generation);
}

#[tokio::test]
async fn force_sync_annotation_checks_the_vault_now() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h"}),
    )
    .await;
    env.wait_for_value(
        "app",
        "db-password",
        "first-password",
        "the first sync",
        SYNC_DEADLINE,
    )
    .await;
    env.vault.put_secret("db-password", "forced-value").await;
    // With refreshInterval 1h only the forced check can bring the value, and
    // it does so at once: a deadline of its own, far below any other path.
    let forced = Duration::from_secs(10);
    let started = Instant::now();
    env.force_sync("app").await;
    env.wait_for_value(
        "app",
        "db-password",
        "forced-value",
        "the forced sync to bring the new value",
        forced.saturating_sub(started.elapsed()),
    )
    .await;
    assert!(
        started.elapsed() <= forced,
        "the forced check brought the new value within {forced:?}: took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn invalid_spec_is_rejected_by_the_api_server() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    for (spec, words) in [
        (
            json!({"vaultUrl": env.vault_url, "secrets": [{"name": "bad_name"}]}),
            "secrets[0].name",
        ),
        (
            json!({"vaultUrl": env.vault_url, "secrets": [{"name": "a"}], "refreshInterval": "10s"}),
            "at least 30s",
        ),
        (json!({"vaultUrl": env.vault_url}), "at least one secret"),
        (
            json!({"vaultUrl": env.vault_url, "select": {"all": true, "namePrefix": "x"}}),
            "exclusive",
        ),
    ] {
        let err = env
            .try_apply_binding("bad", spec)
            .await
            .expect_err("the API server rejects it");
        assert_eq!(api_code(&err), Some(422), "{err}");
        assert!(err.to_string().contains(words), "{err}");
    }
}
