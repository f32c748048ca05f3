//! End-to-end tests of VaultAccessPolicy against a real Kubernetes API
//! server: a policy that selects a namespace limits the names its bindings
//! may pick and `select`, a denied binding is refused before any request
//! reaches the vault, a policy change re-decides bindings at once, and under
//! `--access-policy enforce` a namespace no policy selects may use nothing.
//!
//! They run when `KVSYNC_E2E_KUBECONFIG` names a cluster-admin kubeconfig,
//! and are skipped (saying so) otherwise; see `tests/e2e_support`.
//!
//! Policies are cluster-scoped and every operator on the cluster (those of
//! tests running in parallel too) sees them: each policy here selects only
//! its test's namespace, by a label whose value is that namespace's (unique)
//! name, and is deleted when the test's `Env` drops.
//!
//! `/_dev/stats` counts requests per operation and status, not per secret.
//! To tell whether the vault was ever asked for `payroll-db`, the tests
//! inject a fault on every request for that one secret answering a status
//! nothing else here produces ([`TRIPWIRE`]): any such request is then
//! counted under it.

use std::time::Duration;

use serde_json::{Value, json};

mod e2e_support;
use e2e_support::*;

const SEED: &str = r#"
secrets:
  - {name: payroll-db, value: the-payroll-password}
  - {name: public-api, value: the-public-api-key}
  - {name: public-web, value: the-public-web-key}
"#;

/// The namespace label the tests' policies select by (its value: the
/// namespace's own name, unique to the test).
const SCOPE_LABEL: &str = "kvsync-e2e/policy-scope";

/// The status the dev vault answers any request for `payroll-db` with while
/// the tripwire is set: nothing else in these tests answers it.
const TRIPWIRE: u16 = 418;

/// How long a policy change may take to reach a binding it re-decides. A
/// binding denied by a policy (a failure that is not transient) is retried
/// no sooner than 20 s after its last check (`backoff(3)`) with a refresh
/// interval of 1 h; the tests force a check just before changing the policy,
/// so Ready within this deadline is the policy change's doing, not a retry's.
const POLICY_CHANGE_DEADLINE: Duration = Duration::from_secs(15);

/// A `namespaceSelector` selecting `scope`'s namespace only.
fn selecting(scope: &Scope) -> Value {
    json!({"matchLabels": {SCOPE_LABEL: scope.ns}})
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

/// Labels the test's namespace, applies policy `<ns>-restrict` allowing only
/// `public-*` from the dev vault (`127.0.0.1:*`: any port of that host) to
/// it, and waits until the operator decides by it: a probe binding picking a
/// name the policy refuses is denied by that policy. Only then may a test
/// rely on the policy — a binding the operator looked at before its watches
/// brought the policy (or the label) would have been open, and read.
/// Returns the policy's name.
async fn restrict_to_public(env: &Env) -> String {
    env.label_namespace(SCOPE_LABEL, &env.ns).await;
    let policy = format!("{}-restrict", env.ns);
    env.apply_policy(
        &policy,
        json!({"namespaceSelector": selecting(env), "vaults": ["127.0.0.1:*"],
               "secrets": ["public-*"]}),
    )
    .await;
    // The probe's name is not in the vault: should it be read, it is a 404.
    env.apply_binding("probe", json!({"secrets": [{"name": "probe-not-public"}]}))
        .await;
    env.until(
        "probe",
        &format!("Ready=False PolicyDenied by {policy}"),
        false,
        SYNC_DEADLINE,
        |c| {
            c.status == "False"
                && c.reason == "PolicyDenied"
                && c.message.contains(&format!("VaultAccessPolicy {policy}:"))
        },
    )
    .await;
    policy
}

/// Waits until binding `name` is Ready=False PolicyDenied at its current
/// generation with a message containing `expected`; returns the message.
async fn denied(on: &Scope, name: &str, expected: &str) -> String {
    on.until(
        name,
        &format!("Ready=False PolicyDenied saying {expected:?}"),
        false,
        SYNC_DEADLINE,
        |c| c.status == "False" && c.reason == "PolicyDenied" && c.message.contains(expected),
    )
    .await
    .1
    .message
}

#[tokio::test]
async fn policy_denies_a_pick_it_does_not_allow_before_any_request_and_serves_one_it_allows() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    set_tripwire(&env).await;
    let policy = restrict_to_public(&env).await;

    env.apply_binding(
        "payroll",
        json!({"secrets": [{"name": "payroll-db"}], "refreshInterval": "30s"}),
    )
    .await;
    let message = denied(&env, "payroll", "payroll-db").await;
    assert!(
        message.contains(&format!(
            "VaultAccessPolicy {policy}: secret payroll-db (spec.secrets) is not among secrets [public-*]"
        )),
        "the message names the policy and the rule: {message}"
    );
    // A forced check is denied as well, and has finished once this returns:
    // whatever a denied binding might have sent the vault, it has sent.
    env.barrier(&env, "payroll").await;
    denied(&env, "payroll", "payroll-db").await;
    assert_eq!(
        payroll_requests(&env).await,
        0,
        "the vault was asked for payroll-db: {}",
        env.vault.stats().await
    );
    assert!(
        env.secrets().get_opt("payroll").await.unwrap().is_none(),
        "a denied binding writes no Secret"
    );

    // In the same namespace, under the same policy, an allowed pick syncs.
    env.apply_binding(
        "public",
        json!({"secrets": [{"name": "public-api"}], "refreshInterval": "30s"}),
    )
    .await;
    env.ready("public", "True", SYNC_DEADLINE).await;
    env.wait_for_value(
        "public",
        "public-api",
        "the-public-api-key",
        "the allowed pick's sync",
        SYNC_DEADLINE,
    )
    .await;
    assert_eq!(payroll_requests(&env).await, 0);
    // The allowed binding did not lift the denial of the other one.
    denied(&env, "payroll", "payroll-db").await;
}

#[tokio::test]
async fn select_all_takes_only_the_names_the_policy_allows() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    set_tripwire(&env).await;
    restrict_to_public(&env).await;

    env.apply_binding(
        "everything",
        json!({"select": {"all": true}, "refreshInterval": "30s"}),
    )
    .await;
    env.ready("everything", "True", SYNC_DEADLINE).await;
    // Written after every read of the sync that wrote it.
    let secret = env
        .wait_for_value(
            "everything",
            "public-web",
            "the-public-web-key",
            "the select's sync",
            SYNC_DEADLINE,
        )
        .await;
    let data = data_of(&secret);
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["public-api", "public-web"],
        "only the names the policy allows"
    );
    assert_eq!(data["public-api"], "the-public-api-key");
    assert_eq!(
        payroll_requests(&env).await,
        0,
        "the select asked the vault for payroll-db: {}",
        env.vault.stats().await
    );
    let status = env.binding("everything").await.status.unwrap();
    assert!(
        status.secrets.iter().all(|s| s.name != "payroll-db"),
        "the status lists no payroll-db: {:?}",
        status.secrets.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn policy_change_re_decides_a_denied_binding_at_once() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    set_tripwire(&env).await;
    let policy = restrict_to_public(&env).await;

    // A refresh interval of an hour: nothing but the policy change may make
    // it read again within the deadline below.
    env.apply_binding(
        "payroll",
        json!({"secrets": [{"name": "payroll-db"}], "refreshInterval": "1h"}),
    )
    .await;
    env.apply_binding(
        "everything",
        json!({"select": {"all": true}, "refreshInterval": "1h"}),
    )
    .await;
    denied(&env, "payroll", &format!("VaultAccessPolicy {policy}")).await;
    env.wait_for_value(
        "everything",
        "public-api",
        "the-public-api-key",
        "the select's sync under the first policy",
        SYNC_DEADLINE,
    )
    .await;
    assert_eq!(payroll_requests(&env).await, 0);
    env.vault.clear_faults().await;
    let generation = env.binding("payroll").await.metadata.generation;

    // Checked just now (so its next retry is at least 20 s away), then the
    // policy changes to allow payroll-db.
    env.barrier(&env, "payroll").await;
    denied(&env, "payroll", "payroll-db").await;
    env.apply_policy(
        &policy,
        json!({"namespaceSelector": selecting(&env), "vaults": ["127.0.0.1:*"],
               "secrets": ["public-*", "payroll-db"]}),
    )
    .await;
    let (b, reason, message) = env.ready("payroll", "True", POLICY_CHANGE_DEADLINE).await;
    assert_eq!(reason, "Synced", "{message}");
    assert_eq!(
        b.metadata.generation, generation,
        "the binding itself was not touched"
    );
    env.wait_for_value(
        "payroll",
        "payroll-db",
        "the-payroll-password",
        "the re-decided binding's sync",
        POLICY_CHANGE_DEADLINE,
    )
    .await;
    // The select is re-decided too: it now takes payroll-db.
    env.wait_for_value(
        "everything",
        "payroll-db",
        "the-payroll-password",
        "the select re-decided under the changed policy",
        POLICY_CHANGE_DEADLINE,
    )
    .await;
}

#[tokio::test]
async fn enforce_denies_a_namespace_no_policy_selects_until_one_does() {
    let kc = e2e!();
    let env = Env::start_with(
        kc,
        Options {
            operator_args: vec!["--access-policy".into(), "enforce".into()],
            ..Options::new(SEED)
        },
    )
    .await;
    // Labelled, but no policy selects that label yet.
    env.label_namespace(SCOPE_LABEL, &env.ns).await;
    env.apply_binding(
        "public",
        json!({"secrets": [{"name": "public-api"}], "refreshInterval": "1h"}),
    )
    .await;
    let message = denied(
        &env,
        "public",
        &format!("no VaultAccessPolicy selects namespace {}", env.ns),
    )
    .await;
    assert!(message.contains("--access-policy enforce"), "{message}");
    // A forced check (denied too) has finished: the vault, this test's own,
    // was asked for nothing.
    env.barrier(&env, "public").await;
    denied(&env, "public", "no VaultAccessPolicy selects namespace").await;
    assert_eq!(
        env.vault.reads().await,
        0,
        "a denied binding read the vault: {}",
        env.vault.stats().await
    );
    assert!(env.secrets().get_opt("public").await.unwrap().is_none());

    // A policy selecting the namespace (by its label) lets it in at once.
    let policy = format!("{}-allow", env.ns);
    env.apply_policy(
        &policy,
        json!({"namespaceSelector": selecting(&env), "vaults": [env.vault.host()]}),
    )
    .await;
    env.ready("public", "True", POLICY_CHANGE_DEADLINE).await;
    env.wait_for_value(
        "public",
        "public-api",
        "the-public-api-key",
        "the sync once a policy selects the namespace",
        POLICY_CHANGE_DEADLINE,
    )
    .await;

    // Its deletion is a policy change too: the binding, next due in an
    // hour, is denied again at once.
    env.delete_policy(&policy).await;
    env.until(
        "public",
        "Ready=False PolicyDenied again once the policy is deleted",
        false,
        POLICY_CHANGE_DEADLINE,
        |c| {
            c.status == "False"
                && c.reason == "PolicyDenied"
                && c.message.contains("no VaultAccessPolicy selects namespace")
        },
    )
    .await;
}

/// Every way of reading a name is judged, not only `spec.secrets`: a
/// certificate (whose Secret would carry a private key) and a pinned
/// version of a forbidden name are denied before any request for it.
#[tokio::test]
async fn policy_judges_certificates_and_pins_like_picks_before_any_request() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    set_tripwire(&env).await;
    let policy = restrict_to_public(&env).await;
    let ways = [
        (
            "cert-tls",
            json!({"certificates": [{"name": "payroll-db"}]}),
            "spec.certificates",
        ),
        (
            "cert-pem",
            json!({"certificates": [{"name": "payroll-db", "format": "Pem", "key": "payroll.pem"}]}),
            "spec.certificates",
        ),
        (
            "pinned",
            json!({"secrets": [{"name": "payroll-db", "version": "0123456789abcdef0123456789abcdef"}]}),
            "spec.secrets",
        ),
    ];
    for (name, spec, _) in &ways {
        env.apply_binding(name, spec.clone()).await;
    }
    for (name, _, field) in &ways {
        let message = denied(&env, name, &format!("secret payroll-db ({field})")).await;
        assert!(
            message.contains(&format!("VaultAccessPolicy {policy}:")),
            "{name}: the message names the policy: {message}"
        );
        assert!(
            env.secrets().get_opt(name).await.unwrap().is_none(),
            "{name}: no Secret was written"
        );
    }
    assert_eq!(
        payroll_requests(&env).await,
        0,
        "no request for payroll-db reached the vault"
    );
}

/// The tenant a ServiceAccount's `azure.workload.identity/tenant-id`
/// annotation names is judged like `spec.identity.tenantId`: without
/// `identities.tenantIds`, only the operator's own tenant is allowed.
#[tokio::test]
async fn a_service_accounts_tenant_annotation_is_judged_by_the_policy() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.label_namespace(SCOPE_LABEL, &env.ns).await;
    let policy = format!("{}-ids", env.ns);
    env.apply_policy(
        &policy,
        json!({"namespaceSelector": selecting(&env), "vaults": ["127.0.0.1:*"],
               "identities": {"serviceAccounts": true}}),
    )
    .await;
    // Wait until the operator decides by the policy: a binding with the
    // operator's own identity is refused by it.
    env.apply_binding("probe", json!({"secrets": [{"name": "public-api"}]}))
        .await;
    denied(&env, "probe", "identities.operator is not true").await;

    let foreign = "44444444-4444-4444-4444-444444444444";
    let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    for (name, tenant) in [
        ("foreign", foreign),
        ("own", kvsync::devvault::DEV_TENANT_ID),
    ] {
        sas.create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "annotations": {
                "azure.workload.identity/client-id": format!("{name}-app"),
                "azure.workload.identity/tenant-id": tenant}}}))
            .unwrap(),
        )
        .await
        .unwrap();
        env.apply_binding(
            name,
            json!({"identity": {"serviceAccountName": name}, "secrets": [{"name": "public-api"}]}),
        )
        .await;
    }
    let message = denied(
        &env,
        "foreign",
        &format!("identities.tenantIds does not allow tenant {foreign}"),
    )
    .await;
    assert!(
        message.contains(&format!("VaultAccessPolicy {policy}:")),
        "{message}"
    );
    assert!(env.secrets().get_opt("foreign").await.unwrap().is_none());
    // The operator's own tenant needs no entry.
    env.ready("own", "True", SYNC_DEADLINE).await;
    let vault = env.vault.stats().await;
    assert!(
        vault["assertionSubjects"]
            .as_object()
            .is_none_or(|m| !m.contains_key("foreign-app")),
        "no token was exchanged for the foreign tenant's identity: {vault}"
    );
}
