//! The Key Vault client against the dev vault, over real HTTPS.

mod support;

use std::time::{Duration, Instant};

use kvsync::azure::AzureAccess;
use kvsync::azure::hosts::VaultHostPolicy;
use kvsync::azure::identity::{AzureEnvironment, Credential, IdentityError};
use kvsync::azure::keyvault::{ForbiddenKind, KeyVaultError, Operation};
use kvsync::value::SecretValue;
use serde_json::json;
use support::{Fixture, fast_retry, start};

fn seed_of(n: usize) -> String {
    let mut s = String::from("secrets:\n");
    for i in 0..n {
        s.push_str(&format!("  - {{name: s{i:03}, value: value-{i}}}\n"));
    }
    s
}

#[tokio::test]
async fn list_follows_next_link_across_pages() {
    let f = start(&seed_of(60)).await;
    let (kv, _) = f.client("reader");
    let items = kv.list_secrets().await.unwrap();
    assert_eq!(items.len(), 60);
    assert_eq!(items[0].name(), "s000");
    assert_eq!(items[59].name(), "s059");
    let stats = f.stats().await;
    assert_eq!(
        stats.count("list_secrets", 200),
        3,
        "60 items at 25 a page is 3 pages"
    );
    assert_eq!(stats.total("get_secret"), 0);
}

#[tokio::test]
async fn a_hundred_secrets_list_in_four_pages() {
    let f = start(&seed_of(100)).await;
    let (kv, _) = f.client("reader");
    assert_eq!(kv.list_secrets().await.unwrap().len(), 100);
    let stats = f.stats().await;
    assert_eq!(stats.count("list_secrets", 200), 4);
    assert_eq!(stats.count("token", 200), 1, "one token serves every page");
}

#[tokio::test]
async fn pinned_version_and_latest() {
    let f = start("secrets:\n  - {name: db, value: one}\n  - {name: db, value: two}\n").await;
    let (kv, _) = f.client("reader");
    let versions = kv.list_versions("db").await.unwrap();
    assert_eq!(versions.len(), 2);
    let latest = kv.get_secret("db", None).await.unwrap();
    assert_eq!(latest.value.expose(), "two");
    let older = versions
        .iter()
        .find(|v| v.version() != latest.version())
        .unwrap();
    let pinned = kv.get_secret("db", Some(older.version())).await.unwrap();
    assert_eq!(pinned.value.expose(), "one");
    assert_eq!(pinned.version(), older.version());
    // An empty pin means latest, as in Azure.
    assert_eq!(
        kv.get_secret("db", Some("")).await.unwrap().version(),
        latest.version()
    );
}

#[tokio::test]
async fn a_put_makes_a_new_latest_version() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let (kv, _) = f.client("reader");
    let before = kv.get_secret("db", None).await.unwrap();
    let put = f.put_secret("db", "rotated").await;
    let after = kv.get_secret("db", None).await.unwrap();
    assert_eq!(after.value.expose(), "rotated");
    assert_ne!(after.version(), before.version());
    assert_eq!(put["id"].as_str().unwrap(), after.id);
    assert_eq!(kv.list_versions("db").await.unwrap().len(), 2);
}

#[tokio::test]
async fn disabled_secret_is_a_secret_disabled_error() {
    let f = start("secrets:\n  - {name: off, value: x, enabled: false}\n").await;
    let (kv, _) = f.client("reader");
    let err = kv.get_secret("off", None).await.unwrap_err();
    assert!(
        matches!(err, KeyVaultError::SecretDisabled { ref name, .. } if name == "off"),
        "{err:?}"
    );
    assert_eq!(err.reason(), "SecretDisabled");
    // Listing still shows it, with enabled: false.
    let items = kv.list_secrets().await.unwrap();
    assert!(!items[0].attributes.is_enabled());
}

#[tokio::test]
async fn disabling_a_version_by_patch_takes_effect() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let (kv, _) = f.client("reader");
    let v = kv.get_secret("db", None).await.unwrap();
    let r = f
        .patch_secret("db", v.version(), json!({"attributes": {"enabled": false}}))
        .await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body.get("value").is_none(),
        "PATCH answers without the value"
    );
    assert!(matches!(
        kv.get_secret("db", None).await,
        Err(KeyVaultError::SecretDisabled { .. })
    ));
}

#[tokio::test]
async fn unknown_secret_is_not_found_with_advice() {
    let f = start("secrets: []\n").await;
    let (kv, _) = f.client("reader");
    let err = kv.get_secret("nope", None).await.unwrap_err();
    assert!(matches!(err, KeyVaultError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("secret nope was not found in vault") && msg.contains("optional"),
        "{msg}"
    );
}

const RESTRICTED: &str = r#"
secrets:
  - {name: public-key, value: pk}
  - {name: db-password, value: dbp}
access:
  - {clientId: restricted-app, secrets: ["public-*"]}
  - {clientId: "*", secrets: ["*"]}
"#;

#[tokio::test]
async fn identity_without_access_gets_forbidden_by_rbac_with_the_fix() {
    let f = start(RESTRICTED).await;
    let (kv, _) = f.client("restricted-app");
    assert_eq!(
        kv.get_secret("public-key", None)
            .await
            .unwrap()
            .value
            .expose(),
        "pk"
    );
    let err = kv.get_secret("db-password", None).await.unwrap_err();
    match &err {
        KeyVaultError::Forbidden {
            kind, operation, ..
        } => {
            assert_eq!(*kind, ForbiddenKind::Rbac);
            assert_eq!(*operation, Operation::GetSecret);
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("identity restricted-app") && msg.contains("secrets/get"),
        "{msg}"
    );
    assert!(msg.contains("Key Vault Secrets User"), "{msg}");
    assert_eq!(err.reason(), "VaultForbidden");
}

#[tokio::test]
async fn secret_scoped_identity_cannot_list_and_is_told_why() {
    let f = start(RESTRICTED).await;
    let (kv, _) = f.client("restricted-app");
    let err = kv.list_secrets().await.unwrap_err();
    assert_eq!(err.reason(), "ListForbidden");
    let msg = err.to_string();
    assert!(
        msg.contains("does not have secrets list permission"),
        "{msg}"
    );
    assert!(msg.contains("picks by name"), "{msg}");
}

#[tokio::test]
async fn retry_after_is_honoured_on_429() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let (kv, _) = f.client("reader");
    kv.get_secret("db", None).await.unwrap(); // warm the token
    f.fault(json!({"op": "get_secret", "status": 429, "retryAfter": 1, "count": 1}))
        .await;
    let started = Instant::now();
    let got = kv.get_secret("db", None).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited only {:?}",
        started.elapsed()
    );
    assert_eq!(got.value.expose(), "one");
    let stats = f.stats().await;
    assert_eq!(stats.count("get_secret", 429), 1);
    assert_eq!(stats.count("get_secret", 200), 2);
}

#[tokio::test]
async fn a_retry_after_longer_than_we_wait_ends_the_retries() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let (kv, _) = f.client("reader");
    kv.get_secret("db", None).await.unwrap(); // warm the token
    f.fault(json!({"op": "get_secret", "status": 429, "retryAfter": 3600}))
        .await;
    let err = kv.get_secret("db", None).await.unwrap_err();
    assert_eq!(err.reason(), "VaultThrottled");
    assert_eq!(
        f.stats().await.count("get_secret", 429),
        1,
        "asked once: asking sooner than an hour is what the vault refused"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let (kv, _) = f.client("reader");
    f.fault(json!({"op": "get_secret", "status": 503, "code": "ServiceUnavailable", "count": 2}))
        .await;
    assert_eq!(
        kv.get_secret("db", None).await.unwrap().value.expose(),
        "one"
    );
    let stats = f.stats().await;
    assert_eq!(stats.count("get_secret", 503), 2);
    assert_eq!(stats.count("get_secret", 200), 1);
}

#[tokio::test]
async fn server_errors_forever_fail_after_the_retry_budget() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let (kv, _) = f.client("reader");
    f.fault(json!({"op": "get_secret", "status": 500, "code": "InternalServerError"}))
        .await;
    let err = kv.get_secret("db", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            KeyVaultError::Server {
                status: 500,
                attempts: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(
        f.stats().await.count("get_secret", 500),
        fast_retry().max_attempts as u64
    );
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let (kv, _) = f.client("reader");
    f.fault(json!({"op": "list_secrets", "drop": true, "count": 1}))
        .await;
    assert_eq!(kv.list_secrets().await.unwrap().len(), 1);
}

#[tokio::test]
async fn firewall_and_private_link_refusals_say_what_to_check() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let (kv, _) = f.client("reader");
    f.fault(json!({"op": "get_secret", "status": 403, "code": "Forbidden", "count": 1,
        "message": "Client address is not authorized and caller is not a trusted service.\r\nClient address: 10.0.0.1",
        "innerCode": "ForbiddenByFirewall"})).await;
    let err = kv.get_secret("db", None).await.unwrap_err();
    assert_eq!(err.reason(), "VaultNetworkRefused");
    assert!(err.to_string().contains("firewall allow-list"), "{err}");

    f.fault(json!({"op": "list_secrets", "status": 403, "code": "Forbidden", "count": 1,
        "message": "Public network access is disabled and request is not from a trusted service nor via an approved private link.",
        "innerCode": "ForbiddenByConnection"})).await;
    let err = kv.list_secrets().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("public network access is disabled"),
        "{err}"
    );
    assert!(err.to_string().contains("private endpoint"), "{err}");
}

#[tokio::test]
async fn a_refused_token_is_replaced_once() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let (kv, tokens) = f.client("reader");
    kv.get_secret("db", None).await.unwrap();
    assert_eq!(tokens.requests_sent(), 1);
    f.fault(
        json!({"op": "get_secret", "status": 401, "code": "Unauthorized",
        "message": "[TokenExpired] Error validating token: 'S2S12086'.", "count": 1}),
    )
    .await;
    assert_eq!(
        kv.get_secret("db", None).await.unwrap().value.expose(),
        "one"
    );
    assert_eq!(
        tokens.requests_sent(),
        2,
        "the refused token was dropped and a new one fetched"
    );
}

#[tokio::test]
async fn expiring_tokens_are_refreshed_ahead_of_expiry() {
    let f = support::start_with_lifetime(
        "secrets:\n  - {name: db, value: one}\n",
        Duration::from_secs(2),
    )
    .await;
    let (kv, tokens) = f.client("reader");
    kv.get_secret("db", None).await.unwrap();
    kv.get_secret("db", None).await.unwrap();
    assert_eq!(tokens.requests_sent(), 1, "a fresh token is reused");
    // Half of a 2 s lifetime is the refresh point; this is the passage of
    // time under test, not a wait for another task.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    kv.get_secret("db", None).await.unwrap();
    assert_eq!(tokens.requests_sent(), 2);
    assert_eq!(
        f.stats().await.count("get_secret", 401),
        0,
        "refreshed before the vault saw an expired token"
    );
}

#[tokio::test]
async fn concurrent_callers_share_one_token_request() {
    let f = start(&seed_of(10)).await;
    let (kv, tokens) = f.client("reader");
    let kv = std::sync::Arc::new(kv);
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move {
                kv.get_secret(&format!("s{i:03}"), None)
                    .await
                    .map(|b| b.value)
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap().expose(), format!("value-{i}"));
    }
    assert_eq!(tokens.requests_sent(), 1);
    assert_eq!(f.stats().await.count("token", 200), 1);
}

#[tokio::test]
async fn rewritten_token_file_is_read_on_the_next_exchange() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let env = f.env("wi-app", "system:serviceaccount:kvsync:first");
    let tokens = f.token_source(env.operator_credential(None, None).unwrap(), &env);
    let kv = f.client_with(tokens.clone());
    kv.get_secret("db", None).await.unwrap();
    kvsync::devvault::write_federated_token(
        env.federated_token_file.as_ref().unwrap(),
        "system:serviceaccount:kvsync:second",
    )
    .unwrap();
    tokens.invalidate(&kv.endpoint().scope()).await;
    kv.get_secret("db", None).await.unwrap();
    let stats = f.stats().await;
    assert_eq!(
        stats.assertion_subjects["wi-app"],
        [
            "system:serviceaccount:kvsync:first",
            "system:serviceaccount:kvsync:second"
        ]
    );
}

#[tokio::test]
async fn managed_identity_through_imds() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let env = f.env("unused", "unused");
    let tokens = f.token_source(
        Credential::ManagedIdentity {
            client_id: Some("mi-client".into()),
        },
        &env,
    );
    let kv = f.client_with(tokens.clone());
    assert_eq!(
        kv.get_secret("db", None).await.unwrap().value.expose(),
        "one"
    );
    assert_eq!(tokens.requests_sent(), 1);
    assert_eq!(f.stats().await.count("token", 200), 1);
}

#[tokio::test]
async fn imds_access_rules_apply_to_the_managed_identity_client() {
    let seed = "secrets:\n  - {name: db, value: one}\naccess:\n  - {clientId: mi-client, secrets: [other]}\n";
    let f = start(seed).await;
    let env = f.env("unused", "unused");
    let tokens = f.token_source(
        Credential::ManagedIdentity {
            client_id: Some("mi-client".into()),
        },
        &env,
    );
    let err = f
        .client_with(tokens)
        .get_secret("db", None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("identity mi-client (managed identity)"),
        "{err}"
    );
}

const SP_SEED: &str = r#"
secrets:
  - {name: db, value: one}
access:
  - {clientId: sp-app, secrets: ["*"], clientSecret: right-secret}
"#;

#[tokio::test]
async fn client_secret_flow_signs_in() {
    let f = start(SP_SEED).await;
    let env = f.env("unused", "unused");
    let cred = Credential::ClientSecret {
        tenant_id: kvsync::devvault::DEV_TENANT_ID.into(),
        client_id: "sp-app".into(),
        secret: SecretValue::new("right-secret"),
    };
    let kv = f.client_with(f.token_source(cred, &env));
    assert_eq!(
        kv.get_secret("db", None).await.unwrap().value.expose(),
        "one"
    );
}

#[tokio::test]
async fn wrong_client_secret_is_refused_with_advice_and_no_secret_in_the_message() {
    let f = start(SP_SEED).await;
    let env = f.env("unused", "unused");
    let cred = Credential::ClientSecret {
        tenant_id: kvsync::devvault::DEV_TENANT_ID.into(),
        client_id: "sp-app".into(),
        secret: SecretValue::new("wrong-secret-value"),
    };
    let err = f
        .client_with(f.token_source(cred, &env))
        .get_secret("db", None)
        .await
        .unwrap_err();
    let KeyVaultError::Identity(IdentityError::Refused { code, .. }) = &err else {
        panic!("expected a refusal, got {err:?}");
    };
    assert_eq!(code, "invalid_client");
    let msg = err.to_string();
    assert!(
        msg.contains("AADSTS7000215") && msg.contains("clientSecretRef"),
        "{msg}"
    );
    assert!(
        !msg.contains("wrong-secret-value") && !format!("{err:?}").contains("wrong-secret-value")
    );
    assert_eq!(err.reason(), "AuthenticationFailed");
}

#[tokio::test]
async fn non_vault_host_is_refused_before_any_token_request() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let access = AzureAccess::new(
        f.http.clone(),
        VaultHostPolicy::default(), // the dev vault's host:port is not allowed
        f.env("reader", "sub"),
        fast_retry(),
    );
    let err = access.endpoint(&f.vault.url()).unwrap_err();
    assert!(err.to_string().contains("--allowed-vault-hosts"), "{err}");
    assert_eq!(access.identities(), 0);
    assert_eq!(f.stats().await.total("token"), 0);
}

#[tokio::test]
async fn missing_operator_identity_says_how_to_set_it_up() {
    let env = AzureEnvironment::from_lookup(|_| None);
    let err = env.operator_credential(None, None).unwrap_err();
    assert!(
        err.to_string().contains("azure.workload.identity/use"),
        "{err}"
    );
    assert_eq!(err.reason(), "IdentityMisconfigured");
}

#[tokio::test]
async fn values_never_show_in_debug_output() {
    let f = start("secrets:\n  - {name: db, value: hunter2-value}\n").await;
    let (kv, _) = f.client("reader");
    let bundle = kv.get_secret("db", None).await.unwrap();
    assert!(!format!("{bundle:?}").contains("hunter2-value"));
    assert!(!format!("{bundle:#?}").contains("hunter2-value"));
    assert_eq!(bundle.value.expose(), "hunter2-value");
}

#[tokio::test]
async fn dev_vault_speaks_azure_error_shapes() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let url = f.vault.url();
    // No api-version: 400 BadParameter.
    let r = f
        .http
        .get(format!("{url}/secrets/db"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BadParameter");
    // No token: 401 with the challenge.
    let r = f
        .http
        .get(format!("{url}/secrets/db?api-version=7.4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer authorization=\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("resource=\"https://vault.azure.net\""),
        "{challenge}"
    );
    // Trailing slash = latest.
    let token = f.raw_token("any").await;
    let r = f
        .http
        .get(format!("{url}/secrets/db/?api-version=2025-07-01"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["value"], "one");
    assert!(b["attributes"]["created"].is_i64() && b["attributes"]["updated"].is_i64());
    assert_eq!(b["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
    // maxresults out of range.
    let r = f
        .http
        .get(format!(
            "{url}/secrets?api-version=2025-07-01&maxresults=26"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // DELETE answers a DeletedSecretBundle and the secret is gone.
    let r = f
        .http
        .delete(format!("{url}/secrets/db?api-version=2025-07-01"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d: serde_json::Value = r.json().await.unwrap();
    assert!(
        d["recoveryId"]
            .as_str()
            .unwrap()
            .ends_with("/deletedsecrets/db")
    );
    assert!(d.get("value").is_none());
    let r = f
        .http
        .get(format!("{url}/secrets/db?api-version=2025-07-01"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "SecretNotFound");
}

#[tokio::test]
async fn tokens_from_one_dev_vault_work_at_another() {
    let a = start("secrets:\n  - {name: a, value: from-a}\n").await;
    let b = start("secrets:\n  - {name: b, value: from-b}\n").await;
    let token = a.raw_token("shared").await;
    let r = b
        .http
        .get(format!(
            "{}/secrets/b?api-version=2025-07-01",
            b.vault.url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _: &Fixture = &a;
}

#[tokio::test]
async fn clients_from_azure_access_report_every_request() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let env = f.env("observed", "sub");
    let access = AzureAccess::new(f.http.clone(), f.policy(), env.clone(), fast_retry())
        .with_observer(std::sync::Arc::new(
            move |vault: &str, op: Operation, status: Option<u16>| {
                sink.lock()
                    .unwrap()
                    .push((vault.to_string(), op.label(), status))
            },
        ));
    let kv = access.client(
        access.endpoint(&f.vault.url()).unwrap(),
        env.operator_credential(None, None).unwrap(),
    );
    kv.get_secret("db", None).await.unwrap();
    let _ = kv.get_secret("nope", None).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("127".to_string(), "get_secret", Some(200)),
            ("127".to_string(), "get_secret", Some(404))
        ]
    );
}

// ---- Only what the API promises is believed; token trouble stays contained.

use kvsync::reason::Reason;
use support::{Canned, Scripted};

/// A client for a scripted vault at `vault`, signed in at the dev vault `f`.
fn client_for_scripted(
    f: &Fixture,
    vault: &Scripted,
) -> (
    kvsync::azure::keyvault::KeyVaultClient,
    std::sync::Arc<kvsync::azure::identity::TokenSource>,
) {
    let (_, tokens) = f.client("reader");
    let endpoint = VaultHostPolicy::new([vault.addr.to_string()])
        .check(&vault.url("https"))
        .unwrap();
    let kv = kvsync::azure::keyvault::KeyVaultClient::new(
        f.http.clone(),
        endpoint,
        tokens.clone(),
        fast_retry(),
    );
    (kv, tokens)
}

#[tokio::test]
async fn challenge_for_a_foreign_resource_is_refused_and_no_token_fetched_for_it() {
    let f = start("secrets: []\n").await;
    for resource in [
        r#"resource="https://management.azure.com""#,
        r#"resource="https://evil.example""#,
        r#"scope="https://vault.azure.cn/.default""#,
    ] {
        let header = format!(
            r#"Bearer authorization="https://login.microsoftonline.com/kvsync-dev-tenant", {resource}"#
        );
        let vault = Scripted::https(move |_| {
            Canned::json(
                401,
                json!({"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}}),
            )
            .with_header("www-authenticate", &header)
        })
        .await;
        let (kv, tokens) = client_for_scripted(&f, &vault);
        let err = kv.get_secret("db", None).await.unwrap_err();
        assert!(
            matches!(err, KeyVaultError::InvalidResponse { .. }),
            "{resource}: {err:?}"
        );
        assert_eq!(err.reason(), Reason::InvalidVaultResponse);
        assert!(
            err.to_string().contains("not the Key Vault resource"),
            "{err}"
        );
        assert_eq!(vault.requests(), 1, "{resource}: not retried");
        assert_eq!(
            tokens.requests_sent(),
            1,
            "{resource}: only the first token, none for the foreign resource"
        );
    }
    assert_eq!(f.stats().await.total("token"), 3);
}

#[tokio::test]
async fn challenge_for_the_vaults_own_resource_is_followed_once() {
    let f = start("secrets: []\n").await;
    let vault = Scripted::https(|_| {
        Canned::json(401, json!({"error": {"code": "Unauthorized", "message": "expired"}}))
            .with_header(
                "www-authenticate",
                r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://vault.azure.net""#,
            )
    })
    .await;
    let (kv, tokens) = client_for_scripted(&f, &vault);
    let err = kv.get_secret("db", None).await.unwrap_err();
    assert_eq!(err.reason(), Reason::AuthenticationFailed, "{err}");
    assert_eq!(vault.requests(), 2);
    assert_eq!(tokens.requests_sent(), 2);
}

#[tokio::test]
async fn a_404_without_secret_not_found_is_not_a_missing_secret() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let (kv, _) = f.client("reader");
    // Key Vault's own 404 of another kind (a path it does not serve).
    f.fault(json!({"op": "get_secret", "status": 404, "code": "NotFound", "count": 1}))
        .await;
    let err = kv.get_secret("db", None).await.unwrap_err();
    assert!(!matches!(err, KeyVaultError::NotFound { .. }), "{err:?}");
    assert_ne!(err.reason(), Reason::SecretNotFound);
    assert_eq!(err.reason(), Reason::VaultBadRequest);

    // A proxy's 404: no Azure error body at all.
    let proxy = Scripted::https(|_| Canned {
        status: 404,
        headers: vec![("content-type", "text/html".into())],
        body: "<html><body>404 Not Found</body></html>".into(),
    })
    .await;
    let (kv, _) = client_for_scripted(&f, &proxy);
    let err = kv.get_secret("db", None).await.unwrap_err();
    assert!(
        matches!(err, KeyVaultError::InvalidResponse { .. }),
        "{err:?}"
    );
    assert_eq!(err.reason(), Reason::InvalidVaultResponse);
    assert!(err.to_string().contains("proxy"), "{err}");

    // Key Vault's SecretNotFound still is.
    let (kv, _) = f.client("reader");
    let err = kv.get_secret("nope", None).await.unwrap_err();
    assert_eq!(err.reason(), Reason::SecretNotFound);
}

/// A token response of `expires_in` (Entra, over HTTPS) for `f`'s vault.
async fn entra_answering(f: &Fixture, expires: serde_json::Value) -> Scripted {
    let token = f.raw_token("odd-lifetime").await;
    Scripted::https(move |_| {
        Canned::json(
            200,
            json!({"token_type": "Bearer", "expires_in": expires, "access_token": token}),
        )
    })
    .await
}

#[tokio::test]
async fn any_token_lifetime_from_entra_or_imds_is_capped_without_panicking() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let day = std::time::SystemTime::now() + Duration::from_secs(24 * 3600 + 60);
    for expires in [
        json!(u64::MAX),
        json!(1e30),
        json!(i64::MIN),
        json!(0),
        json!(-1),
        json!("18446744073709551615"),
    ] {
        let entra = entra_answering(&f, expires.clone()).await;
        let env = f.env_with(
            "odd-lifetime",
            &[("AZURE_AUTHORITY_HOST", entra.url("https") + "/")],
        );
        let tokens = f.token_source(env.operator_credential(None, None).unwrap(), &env);
        let kv = f.client_with(tokens.clone());
        assert_eq!(
            kv.get_secret("db", None).await.unwrap().value.expose(),
            "one",
            "expires_in {expires}"
        );
        let t = tokens.token(&kv.endpoint().scope()).await.unwrap();
        assert!(t.expires_at < day, "expires_in {expires}: capped at 24 h");
        assert_eq!(entra.requests(), 1, "expires_in {expires}: cached");
    }
    let entra = entra_answering(&f, json!("soon")).await;
    let env = f.env_with(
        "odd-lifetime",
        &[("AZURE_AUTHORITY_HOST", entra.url("https") + "/")],
    );
    let err = f
        .client_with(f.token_source(env.operator_credential(None, None).unwrap(), &env))
        .get_secret("db", None)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::IdentityUnavailable, "{err}");
    assert!(err.to_string().contains("expires_in"), "{err}");

    // IMDS sends both as strings of numbers.
    let token = f.raw_token("mi-client").await;
    let imds = Scripted::http(move |_| {
        Canned::json(
            200,
            json!({"access_token": token, "expires_in": "99999999999999999999999",
                   "expires_on": "99999999999999999999999", "resource": "https://vault.azure.net",
                   "token_type": "Bearer"}),
        )
    })
    .await;
    let env = f.env_with(
        "unused",
        &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url("http") + "/")],
    );
    let tokens = f.token_source(
        Credential::ManagedIdentity {
            client_id: Some("mi-client".into()),
        },
        &env,
    );
    let kv = f.client_with(tokens.clone());
    assert_eq!(
        kv.get_secret("db", None).await.unwrap().value.expose(),
        "one"
    );
    assert!(
        tokens
            .token(&kv.endpoint().scope())
            .await
            .unwrap()
            .expires_at
            < day
    );
}

#[tokio::test]
async fn a_refusing_entra_is_asked_once_for_many_readers() {
    let f = start(&seed_of(5)).await;
    f.fault(
        json!({"op": "token", "status": 400, "code": "invalid_client",
                   "message": "AADSTS700016: Application not found in the directory."}),
    )
    .await;
    let (kv, tokens) = f.client("reader");
    let kv = std::sync::Arc::new(kv);
    for i in 0..5 {
        let err = kv.get_secret(&format!("s{i:03}"), None).await.unwrap_err();
        assert_eq!(err.reason(), Reason::AuthenticationFailed, "{err}");
        assert!(err.to_string().contains("AADSTS700016"), "{err}");
    }
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let kv = kv.clone();
            tokio::spawn(async move { kv.get_secret("s000", None).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    assert_eq!(
        f.stats().await.total("token"),
        1,
        "one request, then the cached failure"
    );
    assert_eq!(tokens.requests_sent(), 1);
    assert_eq!(f.stats().await.total("get_secret"), 0);
}

#[tokio::test]
async fn a_black_holed_token_endpoint_of_one_identity_does_not_delay_another() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    // Accepts connections and never answers: identity A's IMDS.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_url = format!("http://{}/", hole.local_addr().unwrap());
    let env = f.env_with("wi-app", &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", hole_url)]);
    let access = std::sync::Arc::new(f.access(env.clone()));
    let endpoint = access.endpoint(&f.vault.url()).unwrap();
    let stuck = access.client(
        endpoint.clone(),
        Credential::ManagedIdentity {
            client_id: Some("mi-stuck".into()),
        },
    );
    let a = tokio::spawn(async move { stuck.get_secret("db", None).await.map(|_| ()) });
    let (_held, _) = hole.accept().await.unwrap(); // A's token request is in flight
    let other = access.client(endpoint, env.operator_credential(None, None).unwrap());
    let read = tokio::time::timeout(Duration::from_secs(10), other.get_secret("db", None))
        .await
        .expect("identity B waited for identity A's token request");
    assert_eq!(read.unwrap().value.expose(), "one");
    assert!(!a.is_finished(), "A is still waiting for its endpoint");
    a.abort();
}

#[tokio::test]
async fn token_sources_go_with_their_last_client() {
    let f = start(SP_SEED).await;
    let access = f.access(f.env("unused", "unused"));
    let endpoint = access.endpoint(&f.vault.url()).unwrap();
    let sp = |secret: &str| Credential::ClientSecret {
        tenant_id: kvsync::devvault::DEV_TENANT_ID.into(),
        client_id: "sp-app".into(),
        secret: SecretValue::new(secret),
    };
    let old = access.client(endpoint.clone(), sp("old-secret"));
    let old_twin = access.client(endpoint.clone(), sp("old-secret"));
    assert_eq!(access.identities(), 1, "one source per identity");
    let rotated = access.client(endpoint.clone(), sp("right-secret"));
    assert_eq!(access.identities(), 2);
    drop(old);
    assert_eq!(access.identities(), 2, "a client still uses the old secret");
    drop(old_twin);
    assert_eq!(
        access.identities(),
        1,
        "the rotated-away secret's source is gone"
    );
    rotated.get_secret("db", None).await.unwrap();
    drop(rotated);
    assert_eq!(access.identities(), 0);
}

#[tokio::test]
async fn a_vault_nobody_reads_keeps_no_request_budget() {
    let f = start(SP_SEED).await;
    let access = f.access(f.env("unused", "unused"));
    let endpoint = access.endpoint(&f.vault.url()).unwrap();
    let mi = || Credential::ManagedIdentity { client_id: None };
    let a = access.client(endpoint.clone(), mi());
    let b = access.client(endpoint.clone(), mi());
    assert_eq!(access.vaults(), 1, "one budget per vault, shared");
    drop(a);
    assert_eq!(access.vaults(), 1);
    drop(b);
    assert_eq!(
        access.vaults(),
        0,
        "a vault no client reads leaves nothing behind"
    );
}

#[tokio::test]
async fn responses_carry_the_vaults_date() {
    let f = start(&seed_of(30)).await;
    let (kv, _) = f.client("reader");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let bundle = kv.get_secret("s001", None).await.unwrap();
    let served = bundle.served_at.expect("the Date header is read");
    assert!((served - now).abs() <= 5, "{served} vs {now}");
    let listing = kv.list_secrets_dated().await.unwrap();
    assert_eq!(listing.items.len(), 30);
    assert!((listing.served_at.expect("Date of the first page") - now).abs() <= 5);
    assert_eq!(kv.list_secrets().await.unwrap(), listing.items);
}

#[tokio::test]
async fn versions_of_a_secret_list_across_pages_and_a_missing_one_is_not_found() {
    let mut seed = String::from("secrets:\n");
    for i in 0..30 {
        seed.push_str(&format!("  - {{name: db, value: v{i}}}\n"));
    }
    let f = start(&seed).await;
    let (kv, _) = f.client("reader");
    let versions = kv.list_versions("db").await.unwrap();
    assert_eq!(versions.len(), 30);
    assert!(
        versions
            .iter()
            .all(|v| v.name() == "db" && !v.version().is_empty())
    );
    assert_eq!(f.stats().await.count("list_versions", 200), 2, "25 a page");
    let err = kv.list_versions("nope").await.unwrap_err();
    assert!(
        matches!(&err, KeyVaultError::NotFound { name, .. } if name == "nope"),
        "the error names the secret: {err:?}"
    );
}
