//! Resolving `spec.identity` through the Kubernetes API (scripted mock API
//! server, kube's tower-test pattern) and signing in at the dev vault.

mod support;

use kvsync::azure::identity::{AssertionSource, Credential, IdentityError};
use kvsync::crd::{SecretKeyRef, VaultIdentity};
use kvsync::devvault::jwt;
use serde_json::{Value, json};
use support::start;

use support::mock::{client as mock_client, expect as mock_expect};

async fn expect(
    handle: &mut support::mock::Handle,
    method: &str,
    path: &str,
    status: u16,
    body: Value,
) -> Value {
    mock_expect(handle, method, path, status, body).await.1
}

fn sa(annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": "build-agent", "namespace": "ci", "annotations": annotations}})
}

fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": "serviceaccounts \"build-agent\" not found"})
}

fn sa_identity() -> VaultIdentity {
    VaultIdentity {
        service_account_name: Some("build-agent".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn service_account_identity_uses_a_token_request_and_signs_in() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let env = f.env("operator-app", "system:serviceaccount:kvsync:kvsync");
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/ci/serviceaccounts/build-agent",
            200,
            sa(json!({"azure.workload.identity/client-id": "sa-app"})),
        )
        .await;
        let assertion = jwt::encode_signed(
            &json!({"sub": "system:serviceaccount:ci:build-agent", "aud": ["api://AzureADTokenExchange"]}),
        );
        let sent = expect(
            &mut handle,
            "POST",
            "/api/v1/namespaces/ci/serviceaccounts/build-agent/token",
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": ["api://AzureADTokenExchange"]},
                   "status": {"token": assertion, "expirationTimestamp": "2030-01-01T00:00:00Z"}}),
        )
        .await;
        assert_eq!(
            sent["spec"]["audiences"],
            json!(["api://AzureADTokenExchange"])
        );
    });

    let cred = env
        .resolve(Some(&sa_identity()), "ci", &client)
        .await
        .unwrap();
    let Credential::ClientAssertion {
        client_id,
        tenant_id,
        assertion: AssertionSource::ServiceAccount {
            namespace, name, ..
        },
    } = &cred
    else {
        panic!("expected a ServiceAccount assertion, got {cred:?}");
    };
    assert_eq!(
        (client_id.as_str(), namespace.as_str(), name.as_str()),
        ("sa-app", "ci", "build-agent")
    );
    assert_eq!(
        tenant_id,
        kvsync::devvault::DEV_TENANT_ID,
        "falls back to the operator's tenant"
    );

    let kv = f.client_with(f.token_source(cred, &env));
    assert_eq!(
        kv.get_secret("db", None).await.unwrap().value.expose(),
        "one"
    );
    server.await.unwrap();
    assert_eq!(
        f.stats().await.assertion_subjects["sa-app"],
        ["system:serviceaccount:ci:build-agent"]
    );
}

#[tokio::test]
async fn binding_overrides_beat_service_account_annotations() {
    let env = kvsync::azure::identity::AzureEnvironment::from_lookup(|_| None);
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/ci/serviceaccounts/build-agent",
            200,
            sa(
                json!({"azure.workload.identity/client-id": "from-annotation",
                      "azure.workload.identity/tenant-id": "annotation-tenant"}),
            ),
        )
        .await;
    });
    let id = VaultIdentity {
        client_id: Some("from-binding".into()),
        ..sa_identity()
    };
    let cred = env.resolve(Some(&id), "ci", &client).await.unwrap();
    server.await.unwrap();
    let Credential::ClientAssertion {
        client_id,
        tenant_id,
        ..
    } = cred
    else {
        panic!()
    };
    assert_eq!(client_id, "from-binding");
    assert_eq!(tenant_id, "annotation-tenant");
}

#[tokio::test]
async fn service_account_without_client_id_is_a_clear_error() {
    let env = kvsync::azure::identity::AzureEnvironment::from_lookup(|_| None);
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/ci/serviceaccounts/build-agent",
            200,
            sa(json!({})),
        )
        .await;
    });
    let err = env
        .resolve(Some(&sa_identity()), "ci", &client)
        .await
        .unwrap_err();
    server.await.unwrap();
    assert!(
        matches!(err, IdentityError::MissingClientId { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("azure.workload.identity/client-id"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_service_account_is_named() {
    let env = kvsync::azure::identity::AzureEnvironment::from_lookup(|_| None);
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/ci/serviceaccounts/build-agent",
            404,
            not_found(),
        )
        .await;
    });
    let err = env
        .resolve(Some(&sa_identity()), "ci", &client)
        .await
        .unwrap_err();
    server.await.unwrap();
    assert!(
        err.to_string()
            .contains("ServiceAccount ci/build-agent does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn client_secret_is_read_from_the_binding_namespace() {
    let env = kvsync::azure::identity::AzureEnvironment::from_lookup(|k| {
        (k == "AZURE_TENANT_ID").then(|| "op-tenant".to_string())
    });
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        expect(&mut handle, "GET", "/api/v1/namespaces/team-a/secrets/sp-cred", 200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sp-cred", "namespace": "team-a"},
                   "data": {"secret": "czNjcjN0Cg=="}})).await; // "s3cr3t\n"
    });
    let id = VaultIdentity {
        client_id: Some("sp-app".into()),
        client_secret_ref: Some(SecretKeyRef {
            name: "sp-cred".into(),
            key: "secret".into(),
        }),
        ..Default::default()
    };
    let cred = env.resolve(Some(&id), "team-a", &client).await.unwrap();
    server.await.unwrap();
    let Credential::ClientSecret {
        client_id,
        tenant_id,
        secret,
    } = &cred
    else {
        panic!("{cred:?}")
    };
    assert_eq!(
        (client_id.as_str(), tenant_id.as_str()),
        ("sp-app", "op-tenant")
    );
    assert_eq!(
        secret.expose(),
        "s3cr3t",
        "a trailing newline from `kubectl create secret --from-file` is dropped"
    );
    assert!(!format!("{cred:?}").contains("s3cr3t"));
}

#[tokio::test]
async fn managed_identity_needs_no_api_call() {
    let env = kvsync::azure::identity::AzureEnvironment::from_lookup(|_| None);
    let (client, _handle) = mock_client();
    let id = VaultIdentity {
        managed_identity: Some(kvsync::crd::ManagedIdentity { client_id: None }),
        ..Default::default()
    };
    let cred = env.resolve(Some(&id), "ci", &client).await.unwrap();
    assert_eq!(cred.describe(), "the system-assigned managed identity");
}

// ---- A binding cannot send a credential anywhere but Entra ID and the vault.

use kvsync::azure::identity::AzureEnvironment;
use kvsync::reason::Reason;
use support::Fixture;

/// The seen attack: `//host:port/path` as a tenant made `Url::join` post the
/// credential to another host. The second dev vault stands for that host.
fn hostile_tenant(attacker: &Fixture) -> String {
    format!("//{}/evil", attacker.vault.addr())
}

/// Resolves, then (if that passes) reads a secret as the resolved identity:
/// the outcome's reason, `Ok` when the read succeeded.
async fn sign_in(
    f: &Fixture,
    env: &AzureEnvironment,
    resolved: Result<Credential, IdentityError>,
) -> Result<(), Reason> {
    let cred = resolved.map_err(|e| {
        assert!(
            !e.to_string().contains("s3cr3t"),
            "no client secret in the message: {e}"
        );
        e.reason()
    })?;
    f.client_with(f.token_source(cred, env))
        .get_secret("db", None)
        .await
        .map(|_| ())
        .map_err(|e| e.reason())
}

async fn assert_untouched(attacker: &Fixture) {
    let stats = attacker.stats().await;
    assert!(
        stats.requests.is_empty(),
        "the attacker's host received requests: {stats:?}"
    );
}

/// Answers the ServiceAccount read and, if it comes, the TokenRequest.
fn serve_service_account(
    mut handle: support::mock::Handle,
    annotations: Value,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/ci/serviceaccounts/build-agent",
            200,
            sa(annotations),
        )
        .await;
        let assertion = jwt::encode_signed(&json!({"sub": "system:serviceaccount:ci:build-agent"}));
        expect(
            &mut handle,
            "POST",
            "/api/v1/namespaces/ci/serviceaccounts/build-agent/token",
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": ["api://AzureADTokenExchange"]},
                   "status": {"token": assertion, "expirationTimestamp": "2030-01-01T00:00:00Z"}}),
        )
        .await;
    })
}

#[tokio::test]
async fn tenant_from_the_spec_cannot_redirect_the_federated_token() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let attacker = start("secrets: []\n").await;
    let env = f.env("operator-app", "system:serviceaccount:kvsync:kvsync");
    let (client, handle) = mock_client();
    let server = serve_service_account(
        handle,
        json!({"azure.workload.identity/client-id": "sa-app"}),
    );
    let id = VaultIdentity {
        tenant_id: Some(hostile_tenant(&attacker)),
        ..sa_identity()
    };
    let resolved = env.resolve(Some(&id), "ci", &client).await;
    if let Err(e) = &resolved {
        assert!(e.to_string().contains("spec.identity.tenantId"), "{e}");
    }
    assert_eq!(
        sign_in(&f, &env, resolved).await,
        Err(Reason::IdentityMisconfigured)
    );
    server.abort();
    assert_untouched(&attacker).await;

    // Without a ServiceAccount: the operator's own identity, tenant overridden.
    let id = VaultIdentity {
        tenant_id: Some(hostile_tenant(&attacker)),
        ..Default::default()
    };
    let resolved = env.resolve(Some(&id), "ci", &client).await;
    assert_eq!(
        sign_in(&f, &env, resolved).await,
        Err(Reason::IdentityMisconfigured)
    );
    assert_untouched(&attacker).await;
}

#[tokio::test]
async fn tenant_from_a_service_account_annotation_cannot_redirect_the_token() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let attacker = start("secrets: []\n").await;
    let env = f.env("operator-app", "system:serviceaccount:kvsync:kvsync");
    let (client, handle) = mock_client();
    let server = serve_service_account(
        handle,
        json!({"azure.workload.identity/client-id": "sa-app",
               "azure.workload.identity/tenant-id": hostile_tenant(&attacker)}),
    );
    let resolved = env.resolve(Some(&sa_identity()), "ci", &client).await;
    if let Err(e) = &resolved {
        let msg = e.to_string();
        assert!(
            msg.contains(
                "azure.workload.identity/tenant-id annotation of ServiceAccount ci/build-agent"
            ) && msg.contains("GUID"),
            "names where the value came from and the shape expected: {msg}"
        );
    }
    assert_eq!(
        sign_in(&f, &env, resolved).await,
        Err(Reason::IdentityMisconfigured)
    );
    server.abort();
    assert_untouched(&attacker).await;
}

#[tokio::test]
async fn client_id_annotation_must_be_a_guid_or_dns_name() {
    let env = AzureEnvironment::from_lookup(|k| {
        (k == "AZURE_TENANT_ID").then(|| "op-tenant".to_string())
    });
    let (client, handle) = mock_client();
    let server = serve_service_account(
        handle,
        json!({"azure.workload.identity/client-id": "app&scope=https://evil/.default"}),
    );
    let err = env
        .resolve(Some(&sa_identity()), "ci", &client)
        .await
        .unwrap_err();
    server.abort();
    assert_eq!(err.reason(), Reason::IdentityMisconfigured);
    assert!(
        err.to_string()
            .contains("azure.workload.identity/client-id annotation"),
        "{err}"
    );
}

#[tokio::test]
async fn tenant_from_the_environment_cannot_redirect_the_token() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let attacker = start("secrets: []\n").await;
    let env = f.env_with(
        "operator-app",
        &[("AZURE_TENANT_ID", hostile_tenant(&attacker))],
    );
    assert_eq!(
        env.check().map_err(|e| e.reason()),
        Err(Reason::IdentityMisconfigured),
        "a startup check can refuse it"
    );
    let (client, _handle) = mock_client();
    let resolved = env.resolve(None, "ci", &client).await;
    if let Err(e) = &resolved {
        assert!(
            e.to_string()
                .contains("environment variable AZURE_TENANT_ID"),
            "{e}"
        );
    }
    assert_eq!(
        sign_in(&f, &env, resolved).await,
        Err(Reason::IdentityMisconfigured)
    );
    assert_untouched(&attacker).await;
}

#[tokio::test]
async fn client_secret_never_goes_to_a_tenant_host() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let attacker = start("secrets: []\n").await;
    for (spec_tenant, env_tenant) in [
        (Some(hostile_tenant(&attacker)), None),
        (None, Some(hostile_tenant(&attacker))),
    ] {
        let env = match env_tenant {
            Some(t) => f.env_with("operator-app", &[("AZURE_TENANT_ID", t)]),
            None => f.env("operator-app", "system:serviceaccount:kvsync:kvsync"),
        };
        let (client, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            expect(&mut handle, "GET", "/api/v1/namespaces/ci/secrets/sp-cred", 200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sp-cred", "namespace": "ci"},
                       "data": {"secret": "czNjcjN0"}})).await; // "s3cr3t"
        });
        let id = VaultIdentity {
            client_id: Some("sp-app".into()),
            tenant_id: spec_tenant,
            client_secret_ref: Some(SecretKeyRef {
                name: "sp-cred".into(),
                key: "secret".into(),
            }),
            ..Default::default()
        };
        let resolved = env.resolve(Some(&id), "ci", &client).await;
        assert_eq!(
            sign_in(&f, &env, resolved).await,
            Err(Reason::IdentityMisconfigured)
        );
        server.abort();
        assert_untouched(&attacker).await;
    }
}

#[tokio::test]
async fn a_credential_built_with_a_hostile_tenant_is_refused_before_sending() {
    // Code that builds a Credential without `resolve` gets the same guard.
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let attacker = start("secrets: []\n").await;
    let env = f.env("operator-app", "system:serviceaccount:kvsync:kvsync");
    let cred = Credential::ClientSecret {
        tenant_id: hostile_tenant(&attacker),
        client_id: "sp-app".into(),
        secret: kvsync::value::SecretValue::new("s3cr3t"),
    };
    assert_eq!(
        sign_in(&f, &env, Ok(cred)).await,
        Err(Reason::IdentityMisconfigured)
    );
    assert_untouched(&attacker).await;
}

#[tokio::test]
async fn authority_host_with_a_path_is_refused_not_followed() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let elsewhere = support::Scripted::https(|_| support::Canned::json(500, json!({}))).await;
    for authority in [
        format!("{}/evil/", elsewhere.url("https")),
        format!("{}/?x=1", elsewhere.url("https")),
        elsewhere.url("http") + "/",
    ] {
        let env = f.env_with(
            "operator-app",
            &[("AZURE_AUTHORITY_HOST", authority.clone())],
        );
        let err = env.check().unwrap_err();
        assert!(err.to_string().contains("AZURE_AUTHORITY_HOST"), "{err}");
        let cred = env.operator_credential(None, None).unwrap();
        assert_eq!(
            sign_in(&f, &env, Ok(cred)).await,
            Err(Reason::IdentityMisconfigured),
            "{authority}"
        );
    }
    assert_eq!(elsewhere.requests(), 0);
}

#[tokio::test]
async fn managed_identity_client_id_must_be_a_guid_or_dns_name() {
    let env = AzureEnvironment::from_lookup(|_| None);
    let (client, _handle) = mock_client();
    let id = VaultIdentity {
        managed_identity: Some(kvsync::crd::ManagedIdentity {
            client_id: Some("x&resource=https://management.azure.com".into()),
        }),
        ..Default::default()
    };
    let err = env.resolve(Some(&id), "ci", &client).await.unwrap_err();
    assert_eq!(err.reason(), Reason::IdentityMisconfigured);
    assert!(
        err.to_string()
            .contains("spec.identity.managedIdentity.clientId"),
        "{err}"
    );
}

/// A listed ServiceAccount cache holding `build-agent` with `annotations`.
fn cached_accounts(annotations: Value) -> kvsync::azure::identity::ServiceAccountCache {
    use kube::runtime::{reflector, watcher};
    let (reader, mut writer) = reflector::store();
    let mut meta: kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::ServiceAccount> =
        serde_json::from_value(
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                   "metadata": sa(annotations)["metadata"].clone()}),
        )
        .unwrap();
    meta.metadata.resource_version = Some("1".into());
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(meta));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

#[tokio::test]
async fn a_cached_service_account_is_not_read_and_a_missing_one_is() {
    let f = start("secrets:\n  - {name: db, value: one}\n").await;
    let env = f.env("operator-app", "system:serviceaccount:kvsync:kvsync");
    let cache = cached_accounts(json!({"azure.workload.identity/client-id": "sa-app"}));
    let (client, mut handle) = mock_client();
    let client_id_of = |cred: Credential| match cred {
        Credential::ClientAssertion { client_id, .. } => client_id,
        other => panic!("a client assertion, not {other:?}"),
    };
    let cred = env
        .resolve_cached(Some(&sa_identity()), "ci", &client, Some(&cache))
        .await
        .unwrap();
    assert_eq!(
        client_id_of(cred),
        "sa-app",
        "from the cache, without a request"
    );

    // One the cache does not hold (created a moment ago) is read.
    let other = VaultIdentity {
        service_account_name: Some("new-agent".into()),
        ..Default::default()
    };
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/ci/serviceaccounts/new-agent",
            200,
            sa(json!({"azure.workload.identity/client-id": "new-app"})),
        )
        .await;
        handle
    });
    let cred = env
        .resolve_cached(Some(&other), "ci", &client, Some(&cache))
        .await
        .unwrap();
    assert_eq!(client_id_of(cred), "new-app");
    let mut handle = server.await.unwrap();
    drop(client);
    assert!(
        handle.next_request().await.is_none(),
        "nothing else was read"
    );
}
