//! End-to-end tests of what a platform team asks before it lets every team
//! create bindings in a shared cluster (issue 7): a binding cannot send a
//! credential anywhere but Entra ID and the vault (§1), cannot change another
//! binding's outcome (§2), never loses data (§3), and nothing it needs is
//! forgotten or silent (§4).
//!
//! Like `tests/e2e.rs` they run against a real API server when
//! `KVSYNC_E2E_KUBECONFIG` is set and are skipped otherwise. A second dev vault
//! stands in for a foreign host, `access:` rules in the seed for secret-scoped
//! roles, `/_dev/faults` for refusals and outages, and a Deployment object
//! (which never gets pods) for rollout targets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

mod e2e_support;
use e2e_support::*;

const SEED: &str = r#"
secrets:
  - {name: db-password, value: first-password}
  - {name: api-key, value: the-api-key}
"#;

/// The operator's identity may read only `db-password` (so it may not list);
/// everyone else (the test's writer) may do anything.
fn restricted_seed() -> String {
    format!(
        r#"
secrets:
  - {{name: db-password, value: first-password}}
  - {{name: payroll-db, value: payroll-secret}}
access:
  - {{clientId: {OPERATOR_CLIENT_ID}, secrets: [db-password]}}
  - {{clientId: "*", secrets: ["*"]}}
"#
    )
}

/// Azure's answer to an identity without a role assignment on a secret.
fn forbidden_by_rbac(secret: &str) -> Value {
    json!({"op": "get_secret", "secret": secret, "status": 403, "code": "Forbidden",
           "innerCode": "ForbiddenByRbac",
           "message": "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nAction: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\nAssignment: (not found)\r\n"})
}

fn fail(on: &Scope, what: String) -> ! {
    panic!("{what}\n{}", on.logs.operator_tail())
}

// §1 a binding cannot send a credential anywhere but Entra ID and the vault

#[tokio::test]
async fn identity_values_that_would_redirect_a_credential_are_refused_at_create() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    let evil_tenant = "//127.0.0.1:9999/evil";
    let evil_client = "x/../../evil";
    let sp_ref = json!({"name": "sp-cred", "key": "secret"});
    for (identity, field) in [
        (json!({"tenantId": evil_tenant}), "tenantId"),
        (json!({"clientId": evil_client}), "clientId"),
        (
            json!({"serviceAccountName": "builder", "tenantId": evil_tenant}),
            "tenantId",
        ),
        (
            json!({"serviceAccountName": "builder", "clientId": evil_client}),
            "clientId",
        ),
        (
            json!({"clientSecretRef": sp_ref, "clientId": "good-app", "tenantId": evil_tenant}),
            "tenantId",
        ),
        (
            json!({"clientSecretRef": sp_ref, "clientId": evil_client}),
            "clientId",
        ),
    ] {
        // A CRD updated a moment ago may still be validated with its old
        // schema for a short while: what counts is that it is refused then.
        let spec = json!({"identity": identity, "secrets": [{"name": "db-password"}]});
        let err = eventually(
            &env,
            &format!("the API server to refuse identity {identity}"),
            Duration::from_secs(10),
            || async {
                match env.try_apply_binding("evil", spec.clone()).await {
                    Err(e) => Ok(e),
                    Ok(()) => {
                        let _ = env
                            .bindings()
                            .delete("evil", &DeleteParams::default())
                            .await;
                        Err("it was accepted".to_string())
                    }
                }
            },
        )
        .await;
        assert_eq!(api_code(&err), Some(422), "identity {identity}: {err}");
        assert!(
            err.to_string().contains(field),
            "identity {identity}: the refusal names {field}: {err}"
        );
    }
    assert!(env.bindings().get_opt("evil").await.unwrap().is_none());
}

#[tokio::test]
async fn service_account_annotations_cannot_send_the_token_to_another_host() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    // The attacker's host: a dev vault the operator's CA trusts, on another port.
    let attacker = env.start_vault("attacker", "secrets: []\n").await;
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    for (name, client_id, tenant_id) in [
        (
            "evil-tenant",
            "builder-app".to_string(),
            format!("//127.0.0.1:{}/evil", attacker.port()),
        ),
        (
            "evil-client",
            "x/../../evil".to_string(),
            kvsync::devvault::DEV_TENANT_ID.to_string(),
        ),
    ] {
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "annotations": {
                "azure.workload.identity/client-id": client_id,
                "azure.workload.identity/tenant-id": tenant_id}}}))
            .unwrap(),
        )
        .await
        .unwrap();
        env.apply_binding(
            name,
            json!({"identity": {"serviceAccountName": name}, "secrets": [{"name": "db-password"}]}),
        )
        .await;
    }
    for name in ["evil-tenant", "evil-client"] {
        env.ready_reason(name, "False", "IdentityMisconfigured", SYNC_DEADLINE)
            .await;
        assert!(env.secrets().get_opt(name).await.unwrap().is_none());
    }
    let seen = attacker.stats().await;
    assert_eq!(
        seen["requests"],
        json!({}),
        "the attacker's host got a request: {seen}"
    );
    assert_eq!(seen["assertionSubjects"], json!({}), "{seen}");
    let vault = env.vault.stats().await;
    assert!(
        vault["assertionSubjects"]
            .as_object()
            .is_none_or(|m| m.keys().all(|k| k != "builder-app" && k != "x/../../evil")),
        "no token was exchanged for the misconfigured ServiceAccounts: {vault}"
    );
}

// §2 one binding cannot change another binding's outcome

#[tokio::test]
async fn forbidden_optional_pick_of_one_binding_does_not_touch_another() {
    let kc = e2e!();
    let env = Env::start_with(
        kc,
        Options {
            namespaces: 2,
            ..Options::new(&restricted_seed())
        },
    )
    .await;
    let (a, b) = (env.scope(0), env.scope(1));
    a.bind_and_wait(
        "a",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "30s"}),
    )
    .await;
    a.wait_for_value(
        "a",
        "db-password",
        "first-password",
        "binding a's first sync",
        SYNC_DEADLINE,
    )
    .await;

    // b asks for a secret the identity may not read, in another namespace and
    // (b2) in a's namespace, so that it shares a's poller whatever the
    // operator's layout.
    let greedy = json!({"secrets": [{"name": "db-password", "key": "DB"}, {"name": "payroll-db", "optional": true}],
                        "refreshInterval": "30s"});
    b.apply_binding("b", greedy.clone()).await;
    a.apply_binding("b2", greedy).await;
    for (on, name) in [(b, "b"), (a, "b2")] {
        on.until(
            name,
            "Ready=True whose message mentions payroll-db",
            true,
            SYNC_DEADLINE,
            |c| c.status == "True" && c.message.contains("payroll-db"),
        )
        .await;
        let data = on
            .wait_for_value(name, "DB", "first-password", "b's Secret", SYNC_DEADLINE)
            .await;
        assert!(
            !data_of(&data).contains_key("payroll-db"),
            "{:?}",
            data_of(&data).keys()
        );
    }

    // Two refresh cycles and a rotation: a is Ready=True at every look and gets it.
    env.vault.put_secret("db-password", "rotated").await;
    let started = Instant::now();
    let observe = REFRESH * 2 + Duration::from_secs(15);
    let mut rotated = false;
    while started.elapsed() < observe || !rotated {
        let seen = a
            .seen("a")
            .await
            .unwrap_or_else(|e| fail(a, e))
            .unwrap_or_else(|| fail(a, "binding a is gone".into()));
        if seen.ready.as_ref().is_none_or(|c| c.status != "True") {
            fail(
                a,
                format!(
                    "binding a left Ready=True after {:?}: {}",
                    started.elapsed(),
                    seen.describe()
                ),
            );
        }
        rotated = rotated
            || a.secret_data("a")
                .await
                .is_some_and(|d| d.get("db-password").map(String::as_str) == Some("rotated"));
        if started.elapsed() > observe + CHANGE_DEADLINE {
            fail(a, "the rotation never reached binding a's Secret".into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn list_forbidden_serves_picks_and_refuses_only_the_select() {
    let kc = e2e!();
    let env = Env::start(kc, &restricted_seed()).await;
    env.bind_and_wait(
        "picks",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "30s"}),
    )
    .await;
    env.wait_for_value(
        "picks",
        "db-password",
        "first-password",
        "explicit picks served by GETs",
        SYNC_DEADLINE,
    )
    .await;
    env.apply_binding(
        "everything",
        json!({"select": {"all": true}, "refreshInterval": "30s"}),
    )
    .await;
    let message = env
        .ready_reason("everything", "False", "ListForbidden", SYNC_DEADLINE)
        .await;
    assert!(message.to_lowercase().contains("list"), "{message}");
    // A forced check of picks that has finished: by then the operator has
    // reconciled picks after the refused listing, and written what it would.
    env.barrier(&env, "picks").await;
    let (_, c) = env
        .until("picks", "still Ready=True", true, SYNC_DEADLINE, |c| {
            c.status == "True"
        })
        .await;
    assert_eq!(c.reason, "Synced", "{c:?}");
}

// §3 no data loss, ever

#[tokio::test]
async fn refused_optional_pick_keeps_its_value_across_force_sync_and_restart() {
    let kc = e2e!();
    let mut env = Env::start(kc, SEED).await;
    env.bind_and_wait(
        "app",
        json!({"secrets": [{"name": "db-password", "optional": true}], "refreshInterval": "1h"}),
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
    // A new version the operator is not allowed to read.
    env.vault.put_secret("db-password", "second").await;
    env.vault.fault(forbidden_by_rbac("db-password")).await;

    for (round, status) in [
        ("a force-sync", 403),
        ("an operator restart", 403),
        ("a 404 that is not Azure's SecretNotFound", 404),
    ] {
        if round == "an operator restart" {
            env.restart_operator().await;
        }
        if status == 404 {
            // What a proxy in front of the vault may answer: not Azure's
            // SecretNotFound, so the secret is not known to be gone. The
            // newest fault wins: no moment without one.
            env.vault
                .fault(json!({"op": "get_secret", "secret": "db-password", "status": 404,
                              "code": "NotFound", "message": "The requested resource was not found."}))
                .await;
        }
        let refused = env.vault.count_status("get_secret", status).await;
        // Forced, so that a restarted operator that spreads its first checks
        // over the refresh interval checks this binding now.
        env.force_sync("app").await;
        eventually(
            &env,
            &format!("{round}: the operator to be refused db-password ({status})"),
            SYNC_DEADLINE,
            || async {
                let now = env.vault.count_status("get_secret", status).await;
                (now > refused)
                    .then_some(())
                    .ok_or(format!("{now} GETs answered {status}"))
            },
        )
        .await;
        // Everything the refused check was going to write is written now.
        env.barrier(&env, "app").await;
        let data = env.secret_data("app").await;
        assert_eq!(
            data.as_ref()
                .and_then(|d| d.get("db-password"))
                .map(String::as_str),
            Some("first-password"),
            "after {round} the key keeps its value: {data:?}"
        );
        let (_, c) = env
            .until(
                "app",
                "the Ready condition to say db-password was refused",
                false,
                SYNC_DEADLINE,
                |c| c.message.contains("db-password"),
            )
            .await;
        eprintln!(
            "after {round}: Ready={} {}: {}",
            c.status, c.reason, c.message
        );
    }
}

async fn create_as_kubectl(env: &Env, name: &str, data: &[(&str, &str)]) {
    let data: BTreeMap<String, ByteString> = data
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    env.secrets()
        .create(
            &PostParams {
                field_manager: Some("kubectl-create".into()),
                ..Default::default()
            },
            &secret,
        )
        .await
        .unwrap_or_else(|e| panic!("create Secret {name}: {e}"));
}

#[tokio::test]
async fn merge_never_takes_a_key_another_manager_wrote() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    create_as_kubectl(&env, "shared", &[("DB_PASSWORD", "orig"), ("OTHER", "x")]).await;
    env.apply_binding("merger", json!({"secrets": [{"name": "db-password", "key": "DB_PASSWORD"}],
                                       "target": {"name": "shared", "policy": "Merge"}, "refreshInterval": "1h"}))
        .await;
    let message = env
        .ready_reason("merger", "False", "MergeConflict", SYNC_DEADLINE)
        .await;
    assert!(
        message.contains("DB_PASSWORD") && message.contains("kubectl-create"),
        "{message}"
    );
    assert_eq!(
        env.secret_data("shared").await.unwrap()["DB_PASSWORD"],
        "orig"
    );
    env.bindings()
        .delete("merger", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("merger", SYNC_DEADLINE).await;
    let data = env.secret_data("shared").await.expect("the Secret stays");
    assert_eq!(
        (data["DB_PASSWORD"].as_str(), data["OTHER"].as_str()),
        ("orig", "x"),
        "{data:?}"
    );

    // A new key merges; once the user deletes the Secret, deleting the
    // binding neither re-creates it nor hangs.
    create_as_kubectl(&env, "shared2", &[("OTHER", "x")]).await;
    env.apply_binding("adder", json!({"secrets": [{"name": "db-password", "key": "NEW_KEY"}],
                                      "target": {"name": "shared2", "policy": "Merge"}, "refreshInterval": "1h"}))
        .await;
    env.ready("adder", "True", SYNC_DEADLINE).await;
    let merged = env
        .wait_for_value(
            "shared2",
            "NEW_KEY",
            "first-password",
            "the new key merged in",
            SYNC_DEADLINE,
        )
        .await;
    assert_eq!(data_of(&merged)["OTHER"], "x");
    env.secrets()
        .delete("shared2", &DeleteParams::default())
        .await
        .unwrap();
    env.bindings()
        .delete("adder", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("adder", SYNC_DEADLINE).await;
    assert!(
        env.secrets().get_opt("shared2").await.unwrap().is_none(),
        "the cleanup re-created the deleted Secret"
    );
}

#[tokio::test]
async fn namespace_with_a_merge_binding_is_deleted_within_a_minute() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    create_as_kubectl(&env, "shared", &[("OTHER", "x")]).await;
    env.apply_binding(
        "merger",
        json!({"secrets": [{"name": "db-password", "key": "DB_PASSWORD"}],
                                       "target": {"name": "shared", "policy": "Merge"}}),
    )
    .await;
    env.ready("merger", "True", SYNC_DEADLINE).await;
    env.wait_for_value(
        "shared",
        "DB_PASSWORD",
        "first-password",
        "our key merged in",
        SYNC_DEADLINE,
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .delete(&env.ns, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        &env,
        &format!("namespace {} to be gone", env.ns),
        Duration::from_secs(60),
        || async {
            match namespaces.get_opt(&env.ns).await {
                Ok(None) => Ok(()),
                Ok(Some(ns)) => Err(format!(
                    "namespace status {:?}; binding: {}",
                    ns.status,
                    env.seen("merger")
                        .await
                        .ok()
                        .flatten()
                        .map(|s| format!(
                            "deletionTimestamp={} {}",
                            s.json["metadata"]["deletionTimestamp"],
                            s.describe()
                        ))
                        .unwrap_or_else(|| "gone".into())
                )),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn secret_the_api_server_rejects_shows_on_the_binding() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.apply_binding(
        "tls",
        json!({"secrets": [{"name": "db-password", "key": "password"}],
               "target": {"type": "kubernetes.io/tls"}}),
    )
    .await;
    let message = env
        .ready_reason("tls", "False", "SecretRejected", SYNC_DEADLINE)
        .await;
    assert!(message.contains("tls.crt"), "{message}");
    assert!(env.secrets().get_opt("tls").await.unwrap().is_none());
    eventually(
        &env,
        "a Warning Event on binding tls whose note starts with SecretRejected",
        SYNC_DEADLINE,
        || async {
            let events = env.events_of("tls").await;
            if events.iter().any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.starts_with("SecretRejected"))
            }) {
                Ok(())
            } else {
                Err(format!(
                    "events: {:?}",
                    events
                        .iter()
                        .map(|e| (e.type_.clone(), e.reason.clone(), e.note.clone()))
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;

    // An immutable Secret cannot take the next version.
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
    env.secrets()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"immutable": true})),
        )
        .await
        .unwrap();
    env.vault.put_secret("db-password", "rotated").await;
    env.force_sync("app").await;
    let message = env
        .ready_reason("app", "False", "SecretRejected", SYNC_DEADLINE)
        .await;
    assert!(message.contains("immutable"), "{message}");
    assert_eq!(
        env.secret_data("app").await.unwrap()["db-password"],
        "first-password"
    );
}

#[tokio::test]
async fn rollout_due_when_the_operator_dies_is_done_by_the_next_one() {
    let kc = e2e!();
    let window = Duration::from_secs(20);
    let mut env = Env::start_with(
        kc,
        Options {
            rollout_window: "20s",
            ..Options::new(SEED)
        },
    )
    .await;
    env.create_deployment("d").await;
    env.bind_and_wait(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h",
               "rollout": [{"kind": "Deployment", "name": "d"}]}),
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
    let generation = env
        .deployments()
        .get("d")
        .await
        .unwrap()
        .metadata
        .generation;

    env.vault.put_secret("db-password", "rotated").await;
    env.force_sync("app").await;
    env.wait_for_value(
        "app",
        "db-password",
        "rotated",
        "the forced check to bring the new value",
        SYNC_DEADLINE,
    )
    .await;
    let changed_at = Instant::now();
    env.kill_operator().await;
    assert_eq!(
        restarted_at(&env.deployments().get("d").await.unwrap()),
        None,
        "restarted before the window ended"
    );
    env.restart_operator().await;

    let margin = Duration::from_secs(25);
    let d = eventually(
        &env,
        "the new operator to restart Deployment d within the rollout window",
        (window + margin).saturating_sub(changed_at.elapsed()),
        || async {
            let d = env
                .deployments()
                .get("d")
                .await
                .map_err(|e| e.to_string())?;
            if restarted_at(&d).is_some() {
                Ok(d)
            } else {
                Err(format!(
                    "no kvsync.io/restartedAt; binding: {}",
                    env.seen("app")
                        .await
                        .ok()
                        .flatten()
                        .map(|s| s.describe())
                        .unwrap_or_default()
                ))
            }
        },
    )
    .await;
    assert_eq!(
        d.metadata.generation,
        generation.map(|g| g + 1),
        "one restart"
    );
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
}

/// Panics when the binding claims generation `generation` applied while the
/// Secret still has the owner reference that generation removes.
async fn assert_applied_means_orphaned(env: &Env, generation: i64) -> Option<Seen> {
    let seen = env.seen("app").await.unwrap_or_else(|e| fail(env, e))?;
    if seen.observed == Some(generation) {
        let secret = env.secrets().get("app").await.unwrap();
        if !secret.owner_references().is_empty() {
            fail(
                env,
                format!(
                    "status.observedGeneration is {generation} but the Secret still has owner references {:?}: {}",
                    secret.owner_references(),
                    seen.describe()
                ),
            );
        }
    }
    Some(seen)
}

#[tokio::test]
async fn spec_change_during_a_vault_outage_is_applied_once_it_is_back() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    let spec = |policy: &str| {
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h",
               "target": {"policy": policy}})
    };
    env.bind_and_wait("app", spec("Owner")).await;
    let secret = env
        .wait_for_value(
            "app",
            "db-password",
            "first-password",
            "the first sync",
            SYNC_DEADLINE,
        )
        .await;
    assert!(!secret.owner_references().is_empty());

    // The vault goes down with a new version in it.
    env.vault
        .put_secret("db-password", "written-during-outage")
        .await;
    env.vault
        .fault(
            json!({"op": "get_secret", "status": 503, "code": "ServiceUnavailable",
                      "message": "The service is temporarily unavailable."}),
        )
        .await;
    env.force_sync("app").await;
    env.ready("app", "False", CHANGE_DEADLINE).await;

    // The spec changes while the vault is down.
    let generation = env.apply_binding("app", spec("Orphan")).await;
    eventually(
        &env,
        "the new generation to be looked at (Ready for it) during the outage",
        CHANGE_DEADLINE,
        || async {
            let seen = assert_applied_means_orphaned(&env, generation)
                .await
                .ok_or("the binding is gone")?;
            match seen.current() {
                Some(_) => Ok(()),
                None => Err(seen.describe()),
            }
        },
    )
    .await;

    env.vault.clear_faults().await;
    env.force_sync("app").await;
    eventually(
        &env,
        "the Orphan spec applied (Ready=True, observedGeneration = generation) once the vault is back",
        CHANGE_DEADLINE,
        || async {
            let seen = assert_applied_means_orphaned(&env, generation)
                .await
                .ok_or("the binding is gone")?;
            match seen.current() {
                Some(c) if c.status == "True" && seen.observed == Some(generation) => Ok(()),
                _ => Err(seen.describe()),
            }
        },
    )
    .await;
    let secret = env
        .wait_for_value(
            "app",
            "db-password",
            "written-during-outage",
            "the version written during the outage",
            SYNC_DEADLINE,
        )
        .await;
    assert!(
        secret.owner_references().is_empty(),
        "{:?}",
        secret.owner_references()
    );
}

#[tokio::test]
async fn secret_deleted_while_a_pick_is_disabled_comes_back_with_what_can_be_read() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait(
        "app",
        json!({"secrets": [{"name": "db-password"}, {"name": "api-key"}],
               "refreshInterval": "1h", "onDisabled": "KeepLast"}),
    )
    .await;
    let first = env
        .wait_for_value(
            "app",
            "api-key",
            "the-api-key",
            "the first sync",
            SYNC_DEADLINE,
        )
        .await;
    env.vault.disable_secret("api-key").await;
    env.force_sync("app").await;
    env.until(
        "app",
        "the Ready condition to name the disabled api-key",
        false,
        SYNC_DEADLINE,
        |c| c.message.contains("api-key"),
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
            "the deleted Secret to come back with the readable key",
            SYNC_DEADLINE,
        )
        .await;
    assert_ne!(back.uid(), first.uid());
    assert!(
        !data_of(&back).contains_key("api-key"),
        "{:?}",
        data_of(&back).keys()
    );
    let message = env
        .ready_reason("app", "False", "SecretDisabled", SYNC_DEADLINE)
        .await;
    assert!(message.contains("api-key"), "{message}");
}

// §4 nothing is forgotten, nothing is silent

#[tokio::test]
async fn secret_created_after_a_listing_is_synced_at_once() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait(
        "everything",
        json!({"select": {"all": true}, "refreshInterval": "30s"}),
    )
    .await;
    env.wait_for_value(
        "everything",
        "db-password",
        "first-password",
        "the listing binding's first sync",
        SYNC_DEADLINE,
    )
    .await;
    env.vault.put_secret("fresh-secret", "fresh-value").await;
    let started = Instant::now();
    env.apply_binding(
        "fresh",
        json!({"secrets": [{"name": "fresh-secret"}], "refreshInterval": "30s"}),
    )
    .await;
    let at_once = Duration::from_secs(10);
    env.ready("fresh", "True", at_once).await;
    env.wait_for_value(
        "fresh",
        "fresh-secret",
        "fresh-value",
        "the new secret",
        at_once.saturating_sub(started.elapsed()),
    )
    .await;
}

/// The unkeyed hash kvsync wrote before dataHash was keyed.
fn plain_sha256(data: &[(&str, &str)]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (k, v) in data {
        ctx.update(&(k.len() as u64).to_le_bytes());
        ctx.update(k.as_bytes());
        ctx.update(&(v.len() as u64).to_le_bytes());
        ctx.update(v.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn data_hash_is_keyed_and_its_key_lives_in_the_operator_namespace() {
    let kc = e2e!();
    let mut env = Env::start(kc, SEED).await;
    let b = env
        .bind_and_wait(
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
    let hash = b.status.unwrap().data_hash.unwrap();
    let hex = hash
        .strip_prefix("hmac-sha256:")
        .unwrap_or_else(|| panic!("dataHash {hash}"));
    assert_ne!(hex, plain_sha256(&[("db-password", "first-password")]));
    assert_ne!(hex, plain_sha256(&[]));
    let digest = ring::digest::digest(&ring::digest::SHA256, b"first-password");
    let raw: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_ne!(hex, raw);

    let keys: Api<Secret> = Api::namespaced(env.client.clone(), &env.op_ns);
    let key = eventually(
        &env,
        &format!(
            "Secret kvsync-hash-key in the operator's namespace {}",
            env.op_ns
        ),
        SYNC_DEADLINE,
        || async {
            match keys.get_opt("kvsync-hash-key").await {
                Ok(Some(s)) => Ok(s),
                Ok(None) => Err("it does not exist".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert!(
        key.data.as_ref().is_some_and(|d| !d.is_empty()),
        "the key Secret holds a key"
    );
    assert_eq!(
        key.immutable,
        Some(true),
        "the key Secret is immutable: nobody can swap the key under the operator"
    );

    // The next operator uses the same key: the hash, and so the Secret, stay.
    let rv = env.secrets().get("app").await.unwrap().resource_version();
    env.restart_operator().await;
    // The first forced check may meet the new operator's own first check;
    // the later ones come after it.
    for _ in 0..3 {
        env.barrier(&env, "app").await;
    }
    assert_eq!(
        env.binding("app").await.status.unwrap().data_hash,
        Some(hash.clone())
    );
    assert_eq!(
        env.secrets().get("app").await.unwrap().resource_version(),
        rv
    );
    // The key Secret is the same object, still immutable.
    let again = keys.get("kvsync-hash-key").await.unwrap();
    assert_eq!(
        (again.uid(), again.immutable),
        (key.uid(), Some(true)),
        "the next operator kept the immutable key Secret"
    );
    assert!(
        again.data == key.data,
        "the next operator kept the key (its data unchanged)"
    );
}

#[tokio::test]
async fn tag_change_that_makes_a_secret_match_brings_it_in() {
    let kc = e2e!();
    let env = Env::start(
        kc,
        r#"
secrets:
  - {name: ci-token, value: ci-value, tags: {team: ci}}
  - {name: later-token, value: later-value, tags: {team: other}}
"#,
    )
    .await;
    env.bind_and_wait(
        "ci",
        json!({"select": {"tags": {"team": "ci"}}, "refreshInterval": "30s"}),
    )
    .await;
    let first = env
        .wait_for_value(
            "ci",
            "ci-token",
            "ci-value",
            "the first sync",
            SYNC_DEADLINE,
        )
        .await;
    assert!(!data_of(&first).contains_key("later-token"));
    env.vault
        .patch_latest("later-token", json!({"tags": {"team": "ci"}}))
        .await;
    let changed_at = Instant::now();
    env.wait_for_value(
        "ci",
        "later-token",
        "later-value",
        "the newly matching secret, within refreshInterval",
        REFRESH + Duration::from_secs(15),
    )
    .await;
    assert!(
        changed_at.elapsed() <= REFRESH + REFRESH / 10 + Duration::from_secs(5),
        "took {:?}",
        changed_at.elapsed()
    );
}

// §3 apply before retire: nothing a workload uses is deleted before its
// replacement is written

#[tokio::test]
async fn a_rename_that_cannot_be_written_keeps_the_old_secret() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait("app", json!({"secrets": [{"name": "db-password"}]}))
        .await;
    env.wait_for_value(
        "app",
        "db-password",
        "first-password",
        "the first sync",
        SYNC_DEADLINE,
    )
    .await;
    // Renamed onto a Secret kvsync does not manage: refused, and the
    // Secret the workload reads stays as it was.
    create_as_kubectl(&env, "theirs", &[("x", "their-value")]).await;
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password"}], "target": {"name": "theirs"}}),
    )
    .await;
    env.ready_reason("app", "False", "SecretNotManaged", SYNC_DEADLINE)
        .await;
    let old = env.secret_data("app").await;
    assert_eq!(
        old.as_ref()
            .and_then(|d| d.get("db-password"))
            .map(String::as_str),
        Some("first-password"),
        "the old Secret is untouched while the new one cannot be written: {old:?}"
    );
    assert_eq!(
        env.secret_data("theirs").await,
        Some([("x".to_string(), "their-value".to_string())].into()),
        "the foreign Secret is untouched"
    );
    // Renamed with a template that fails: the same.
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password"}],
               "target": {"name": "renamed", "template": {"data": {"dsn": "{{ NOT_A_KEY }}"}}}}),
    )
    .await;
    env.ready_reason("app", "False", "TemplateError", SYNC_DEADLINE)
        .await;
    assert!(
        env.secret_data("app").await.is_some(),
        "the old Secret is still there"
    );
    assert!(env.secrets().get_opt("renamed").await.unwrap().is_none());
    // A rename that can be written retires the old Secret once the new one
    // is there.
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password"}], "target": {"name": "renamed"}}),
    )
    .await;
    env.ready("app", "True", SYNC_DEADLINE).await;
    env.wait_for_value(
        "renamed",
        "db-password",
        "first-password",
        "the renamed Secret",
        SYNC_DEADLINE,
    )
    .await;
    env.wait_secret_gone(
        "app",
        "the old Secret, once the new one is written",
        SYNC_DEADLINE,
    )
    .await;
}

#[tokio::test]
async fn owner_to_merge_refused_keeps_the_secret_and_its_keys() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait("app", json!({"secrets": [{"name": "db-password"}]}))
        .await;
    env.wait_for_value(
        "app",
        "db-password",
        "first-password",
        "the first sync",
        SYNC_DEADLINE,
    )
    .await;
    // Someone else writes another key of the Secret, as their own field
    // manager (kvsync's drift repair leaves keys it does not write alone);
    // the switch to Merge would have to take it, which Merge never does.
    let theirs = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("typed-by-someone")
    };
    env.secrets()
        .patch(
            "app",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": "app"},
                                 "data": {"api-key": theirs}})),
        )
        .await
        .unwrap();
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password"}, {"name": "api-key"}],
               "target": {"policy": "Merge"}}),
    )
    .await;
    let message = env
        .ready_reason("app", "False", "MergeConflict", SYNC_DEADLINE)
        .await;
    assert!(message.contains("someone-else"), "{message}");
    let secret = env.secrets().get("app").await.unwrap();
    assert!(
        !secret.owner_references().is_empty(),
        "kvsync's owner fields are not released before Merge holds its keys"
    );
    let data = data_of(&secret);
    assert_eq!(
        data.get("db-password").map(String::as_str),
        Some("first-password"),
        "kvsync's key is still there: {data:?}"
    );
    assert_eq!(
        data.get("api-key").map(String::as_str),
        Some("typed-by-someone"),
        "theirs is untouched: {data:?}"
    );
}

// A template that iterates its values holds them all under a vault fault.

#[tokio::test]
async fn a_template_over_all_values_keeps_an_entry_the_vault_refuses() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait(
        "app",
        json!({"select": {"all": true}, "refreshInterval": "1h",
               "target": {"template": {"data": {"config.json": "{{ values | tojson }}"}}}}),
    )
    .await;
    let first = env
        .wait_for_secret("app", "config.json with both values", SYNC_DEADLINE, |s| {
            data_of(s)
                .get("config.json")
                .filter(|c| c.contains("first-password") && c.contains("the-api-key"))
                .cloned()
                .ok_or_else(|| format!("config.json is {:?}", data_of(s).get("config.json")))
        })
        .await;
    env.vault.fault(forbidden_by_rbac("api-key")).await;
    let refused = env.vault.count_status("get_secret", 403).await;
    // A new version of the other value, so that the file is rendered again.
    env.vault.put_secret("db-password", "second-password").await;
    env.barrier(&env, "app").await;
    assert!(
        env.vault.count_status("get_secret", 403).await > refused,
        "the forced check was refused api-key"
    );
    let data = env.secret_data("app").await.unwrap_or_default();
    assert_eq!(
        data.get("config.json"),
        Some(&first),
        "the templated key keeps what it held rather than lose the refused entry"
    );
    let (_, c) = env
        .until(
            "app",
            "the condition to name the refused value",
            false,
            SYNC_DEADLINE,
            |c| c.message.contains("api-key"),
        )
        .await;
    eprintln!("Ready={} {}: {}", c.status, c.reason, c.message);
}

// §2 one namespace cannot move the operator's memory or another
// namespace's outcome

/// Twelve `select`s in one namespace whose Secrets would each be about
/// 1.5 MB: every one fails `SecretTooLarge`, the vault is read only until the
/// limit is passed (shared between them), and a binding of another namespace
/// syncs and stays Ready throughout.
#[tokio::test]
async fn oversized_selects_in_one_namespace_stop_at_the_limit_and_spare_another() {
    let kc = e2e!();
    const BIG: usize = 60;
    let mut seed = String::from("secrets:\n  - {name: db-password, value: first-password}\n");
    let filler = "x".repeat(25_000);
    for i in 0..BIG {
        seed.push_str(&format!("  - {{name: big-{i:02}, value: {filler}}}\n"));
    }
    let env = Env::start_with(
        kc,
        Options {
            namespaces: 2,
            ..Options::new(&seed)
        },
    )
    .await;
    let (tenant, other) = (env.scope(0), env.scope(1));
    other
        .bind_and_wait("small", json!({"secrets": [{"name": "db-password"}]}))
        .await;
    env.vault.reset_stats().await;
    for i in 0..12 {
        tenant
            .apply_binding(
                &format!("big-{i}"),
                json!({"select": {"namePrefix": "big-"}, "refreshInterval": "30s"}),
            )
            .await;
    }
    for i in 0..12 {
        let message = tenant
            .ready_reason(
                &format!("big-{i}"),
                "False",
                "SecretTooLarge",
                SYNC_DEADLINE,
            )
            .await;
        assert!(
            message.contains("narrow the select"),
            "the message says what to do: {message}"
        );
        assert!(
            tenant
                .secrets()
                .get_opt(&format!("big-{i}"))
                .await
                .unwrap()
                .is_none(),
            "nothing is written for big-{i}"
        );
    }
    let gets = env.vault.count_status("get_secret", 200).await;
    assert!(
        gets < BIG as u64,
        "reads stop past the 1 MiB limit and are shared: {gets} GETs for {BIG} big secrets × 12 bindings"
    );
    // The other namespace's binding is still Ready at its generation, and a
    // rotation still reaches it.
    other.ready("small", "True", SYNC_DEADLINE).await;
    env.vault.put_secret("db-password", "second-password").await;
    other.force_sync("small").await;
    other
        .wait_for_value(
            "small",
            "db-password",
            "second-password",
            "a rotation in the other namespace",
            SYNC_DEADLINE,
        )
        .await;
}
