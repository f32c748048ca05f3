//! End-to-end tests of what build agents consume, against a real
//! Kubernetes API server: a `kubernetes.io/dockerconfigjson` Secret built by
//! `target.template` from a registry user and password in the vault (the
//! API server validates that type: `.dockerconfigjson` must be JSON), which
//! follows a new password; `kubernetes.io/tls` Secrets made from a Key
//! Vault certificate's backing secret (the API server validates that type
//! too: `tls.crt` and `tls.key` must be there) — a generated chain in a PFX,
//! whose renewal reaches the Secret and the status, and a PFX exactly as
//! Key Vault returned one —; and a failing template, reported with its key
//! and line while the value it rendered over appears nowhere a person could
//! read it (the binding, its Events, the operator's log).
//!
//! They run when `KVSYNC_E2E_KUBECONFIG` names a cluster-admin kubeconfig,
//! and are skipped (saying so) otherwise; see `tests/e2e_support`. The few
//! `#[test]`s at the end check this file's own readers of certificates and
//! keys, without a cluster.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kvsync::crd::{SyncedSecret, VaultSecretBinding};
use kvsync::devvault::testcerts::{ChainSpec, TestChain, make_chain_with};
use serde_json::{Value, json};
use x509_cert::Certificate;

mod e2e_support;
use e2e_support::*;

/// The contentType of a certificate's backing secret in PFX form.
const PFX: &str = "application/x-pkcs12";
/// The registry of the image-pull Secret.
const REGISTRY: &str = "kvsync-e2e.azurecr.io";
/// A certificate's backing secret as Azure Key Vault returned it
/// (`tests/fixtures/certs/README.md`): self-signed `CN=MyCert`, RSA.
const KEYVAULT_PFX: &str = include_str!("fixtures/certs/keyvault-rsa-selfsigned.pfx.b64");
/// Its notAfter: 2022-04-28T20:27:49Z (it has long expired).
const KEYVAULT_NOT_AFTER: i64 = 1_651_177_669;
/// The renewed leaf's notAfter: 2035-03-04T05:06:07Z.
const RENEWED_NOT_AFTER: i64 = 2_056_597_567;

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A dev vault seed holding `secrets` (each `{name, value[, contentType]}`).
fn seed(secrets: Value) -> String {
    serde_yaml::to_string(&json!({ "secrets": secrets })).unwrap()
}

/// A root, an intermediate and a leaf named `leaf` expiring at `not_after`.
fn chain(leaf: &str, not_after: i64) -> TestChain {
    make_chain_with(&ChainSpec {
        leaf_not_after: Some(not_after),
        ..ChainSpec::new("kvsync e2e root", "kvsync e2e issuing CA", leaf)
    })
    .expect("a test chain")
}

/// Shows that the API server validates Secrets of `type_`: it refuses one
/// holding `data` (base64 values), in a server-side dry run that stores
/// nothing. Its accepting kvsync's Secret of that type then means the
/// Secret is valid for it.
async fn api_server_refuses(scope: &Scope, type_: &str, data: Value, why: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "kvsync-e2e-invalid"}, "type": type_, "data": data,
    }))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match scope.secrets().create(&dry, &secret).await {
        Err(e) if api_code(&e) == Some(422) => {}
        other => panic!(
            "the API server should refuse a {type_} Secret {why} (else it validates nothing this test relies on): {other:?}"
        ),
    }
}

/// The `auths.REGISTRY` entry of the Secret's `.dockerconfigjson`; `Err`
/// says what is there instead (never the values).
fn registry_login(secret: &Secret) -> Result<Value, String> {
    let data = data_of(secret);
    let text = data
        .get(".dockerconfigjson")
        .ok_or_else(|| format!("no .dockerconfigjson; keys {:?}", data.keys()))?;
    let config: Value =
        serde_json::from_str(text).map_err(|e| format!(".dockerconfigjson is not JSON ({e})"))?;
    config["auths"].get(REGISTRY).cloned().ok_or_else(|| {
        format!(
            "no auths[{REGISTRY:?}]; registries {:?}",
            config["auths"]
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
        )
    })
}

/// The certificates of a PEM text, in order.
fn certificates(pem: &str) -> Result<Vec<Certificate>, String> {
    Certificate::load_pem_chain(pem.as_bytes()).map_err(|e| format!("not PEM certificates: {e}"))
}

/// A certificate's notAfter, unix seconds.
fn not_after(cert: &Certificate) -> i64 {
    cert.tbs_certificate()
        .validity()
        .not_after
        .to_unix_duration()
        .as_secs() as i64
}

/// Whether `key_pem` (PKCS#8 PEM, `BEGIN PRIVATE KEY`) is the private key
/// of `leaf`: the public key derived from it is the certificate's. An RSA
/// or a P-256 key (what these tests' certificates have).
fn key_fits(key_pem: &str, leaf: &Certificate) -> Result<(), String> {
    use ring::signature::{self, KeyPair as _};
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::pki_types::pem::PemObject;
    if !key_pem.starts_with("-----BEGIN PRIVATE KEY-----") {
        return Err("tls.key is not PKCS#8 PEM (BEGIN PRIVATE KEY)".into());
    }
    let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("tls.key is not a PKCS#8 PEM key: {e}"))?;
    let der = der.secret_pkcs8_der();
    let spki = leaf.tbs_certificate().subject_public_key_info();
    let public = match spki.algorithm.oid.to_string().as_str() {
        "1.2.840.10045.2.1" => signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| format!("tls.key is not a P-256 key with its public key: {e}"))?
        .public_key()
        .as_ref()
        .to_vec(),
        "1.2.840.113549.1.1.1" => signature::RsaKeyPair::from_pkcs8(der)
            .map_err(|e| format!("tls.key is not an RSA key: {e}"))?
            .public_key()
            .as_ref()
            .to_vec(),
        other => {
            return Err(format!(
                "the leaf's key algorithm {other} is not one read here"
            ));
        }
    };
    if public == spki.subject_public_key.raw_bytes() {
        Ok(())
    } else {
        Err("tls.key is not the private key of the leaf in tls.crt".into())
    }
}

/// Checks a `kubernetes.io/tls` Secret: its type, exactly `tls.crt` and
/// `tls.key`, `tls.crt` PEM certificates and `tls.key` the first one's key.
/// Returns the certificates, leaf first.
fn tls_secret(secret: &Secret) -> Result<Vec<Certificate>, String> {
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!("type {:?}", secret.type_));
    }
    let data = data_of(secret);
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    if keys != ["tls.crt", "tls.key"] {
        return Err(format!("keys {keys:?}"));
    }
    let certs = certificates(&data["tls.crt"])?;
    let leaf = certs.first().ok_or("tls.crt holds no certificate")?;
    key_fits(&data["tls.key"], leaf)?;
    Ok(certs)
}

/// The entry of `status.secrets` for vault secret `name`.
fn synced(b: &VaultSecretBinding, name: &str) -> Result<SyncedSecret, String> {
    let status = b.status.as_ref().ok_or("no status")?;
    status
        .secrets
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| format!("status.secrets has no {name}: {:?}", status.secrets))
}

/// Condition `type_` of the binding, computed for its current generation:
/// `(status, reason, message)`.
fn condition(seen: &Seen, type_: &str) -> Result<(String, String, String), String> {
    let c = seen.json["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .ok_or_else(|| format!("no {type_} condition"))?;
    if c["observedGeneration"].as_i64() != seen.generation {
        return Err(format!("{type_} is of another generation: {c}"));
    }
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Ok((s("status"), s("reason"), s("message")))
}

/// Waits until binding `name`'s status describes its current generation
/// (`status.observedGeneration` and Ready) and `ok` accepts it.
async fn status_until<T>(
    scope: &Scope,
    name: &str,
    what: &str,
    ok: impl Fn(&Seen) -> Result<T, String>,
) -> T {
    let what = format!("binding {}/{name}: {what}", scope.ns);
    eventually(scope, &what, SYNC_DEADLINE, || async {
        let seen = scope
            .seen(name)
            .await?
            .ok_or_else(|| "the binding does not exist".to_string())?;
        if seen.applied().is_none() {
            return Err(format!("no status of its generation: {}", seen.describe()));
        }
        ok(&seen).map_err(|e| format!("{e}; {}", seen.describe()))
    })
    .await
}

#[tokio::test]
async fn an_image_pull_secret_built_by_a_template_is_accepted_and_follows_a_new_password() {
    let kc = e2e!();
    let (user, first, second) = ("robot-e2e", "first-Pa55word", "second-Pa55word");
    let env = Env::start(
        kc,
        &seed(json!([
            {"name": "reg-user", "value": user},
            {"name": "reg-password", "value": first},
        ])),
    )
    .await;
    api_server_refuses(
        &env,
        "kubernetes.io/dockerconfigjson",
        json!({".dockerconfigjson": b64("{not json")}),
        "whose .dockerconfigjson is not JSON",
    )
    .await;

    // Each picked value is a variable named by its key after keyTransform.
    let generation = env
        .apply_binding(
            "registry",
            json!({
                "secrets": [{"name": "reg-user"}, {"name": "reg-password"}],
                "keyTransform": "EnvVar",
                "target": {"name": "registry-pull", "template": {
                    "type": "kubernetes.io/dockerconfigjson",
                    "data": {".dockerconfigjson":
                        format!("{{{{ dockerconfigjson(\"{REGISTRY}\", REG_USER, REG_PASSWORD) }}}}")},
                    "metadata": {"labels": {"kvsync-e2e/use": "image-pull"},
                                 "annotations": {"kvsync-e2e/note": "built by a template"}},
                    "mergePolicy": "Replace",
                }},
            }),
        )
        .await;
    let (b, _, _) = env.ready("registry", "True", SYNC_DEADLINE).await;
    assert_eq!(b.metadata.generation, Some(generation));

    // The API server took it (it refuses an invalid one, as shown above).
    let secret = env.secrets().get("registry-pull").await.unwrap();
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let keys: Vec<String> = data_of(&secret).into_keys().collect();
    assert_eq!(
        keys,
        [".dockerconfigjson"],
        "Replace: the templated key only"
    );
    let login = registry_login(&secret).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(login["username"], user);
    assert_eq!(login["password"], first);
    assert_eq!(login["auth"], b64(&format!("{user}:{first}")));
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kvsync-e2e/use").map(String::as_str),
        Some("image-pull"),
        "template.metadata.labels: {labels:?}"
    );
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("kvsync"),
        "{labels:?}"
    );
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("kvsync-e2e/note").map(String::as_str),
        Some("built by a template"),
        "template.metadata.annotations: {annotations:?}"
    );

    // A new password in the vault, found by a forced check.
    let version = env.vault.put_secret("reg-password", second).await;
    env.force_sync("registry").await;
    let expected = b64(&format!("{user}:{second}"));
    let login = env
        .wait_for_secret(
            "registry-pull",
            "the new password in auths.auth",
            SYNC_DEADLINE,
            |s| {
                let login = registry_login(s)?;
                if login["auth"] == expected.as_str() {
                    Ok(login)
                } else {
                    Err("auths.auth is not user:new-password".into())
                }
            },
        )
        .await;
    assert_eq!(login["password"], second);
    assert_eq!(login["username"], user);
    status_until(
        &env,
        "registry",
        &format!("Ready=True with reg-password at version {version}"),
        |seen| {
            let (status, reason, _) = condition(seen, "Ready")?;
            let synced = synced(&seen.binding(), "reg-password")?;
            if status == "True" && synced.version == version {
                Ok(())
            } else {
                Err(format!(
                    "Ready={status} {reason}, reg-password at version {}",
                    synced.version
                ))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_pfx_certificate_becomes_a_tls_secret_and_its_renewal_reaches_it() {
    let kc = e2e!();
    // Three days left: ExpiringSoon says so until the renewal.
    let soon = now_secs() + 3 * 86_400;
    let expiring = chain("agents.e2e.example", soon);
    let env = Env::start(
        kc,
        &seed(json!([{"name": "agents-tls", "contentType": PFX,
                      "value": expiring.pfx_base64().unwrap()}])),
    )
    .await;
    api_server_refuses(
        &env,
        "kubernetes.io/tls",
        json!({"tls.crt": b64(&expiring.chain_pem())}),
        "without tls.key",
    )
    .await;

    let generation = env
        .apply_binding(
            "agents-tls",
            json!({
                "certificates": [{"name": "agents-tls", "format": "Tls"}],
                "target": {"type": "kubernetes.io/tls"},
            }),
        )
        .await;
    let (b, _, _) = env.ready("agents-tls", "True", SYNC_DEADLINE).await;
    assert_eq!(b.metadata.generation, Some(generation));
    let secret = env.secrets().get("agents-tls").await.unwrap();
    let certs = tls_secret(&secret).unwrap_or_else(|e| panic!("Secret agents-tls: {e}"));
    assert_eq!(
        data_of(&secret)["tls.crt"],
        expiring.chain_pem(),
        "tls.crt: the leaf, then the intermediate, then the root"
    );
    assert_eq!(certs.len(), 3);
    assert_eq!(not_after(&certs[0]), soon, "the leaf is first");
    let first_key = data_of(&secret)["tls.key"].clone();

    // The status reports the leaf's notAfter, and ExpiringSoon warns of it.
    let first_version = status_until(
        &env,
        "agents-tls",
        "status.secrets[agents-tls] expiring with the leaf, ExpiringSoon=True",
        |seen| {
            let s = synced(&seen.binding(), "agents-tls")?;
            let expires = s.expires.as_ref().map(|t| t.0.as_second());
            let (status, reason, message) = condition(seen, "ExpiringSoon")?;
            if expires != Some(soon) {
                return Err(format!(
                    "expires {expires:?}, the leaf's notAfter is {soon}"
                ));
            }
            if (status.as_str(), reason.as_str()) != ("True", "SecretExpiring")
                || !message.contains("agents-tls")
            {
                return Err(format!("ExpiringSoon={status} {reason}: {message:?}"));
            }
            Ok((s.key, s.version))
        },
    )
    .await;
    assert_eq!(first_version.0, "tls.crt", "status.secrets[].key");

    // The renewal: a new version of the backing secret, with another leaf
    // (and key) and a later expiry.
    let renewed = chain("agents-renewed.e2e.example", RENEWED_NOT_AFTER);
    let version = env
        .vault
        .put_secret_with_content_type("agents-tls", &renewed.pfx_base64().unwrap(), PFX)
        .await;
    assert_ne!(version, first_version.1);
    env.force_sync("agents-tls").await;
    let want = renewed.chain_pem();
    let old = expiring.chain_pem();
    let secret = env
        .wait_for_secret(
            "agents-tls",
            "the renewed chain in tls.crt",
            SYNC_DEADLINE,
            |s| match data_of(s).get("tls.crt") {
                Some(crt) if *crt == want => Ok(s.clone()),
                Some(crt) if *crt == old => Err("tls.crt is still the first chain".into()),
                Some(_) => Err("tls.crt is neither chain".into()),
                None => Err("no tls.crt".into()),
            },
        )
        .await;
    let certs = tls_secret(&secret).unwrap_or_else(|e| panic!("renewed Secret agents-tls: {e}"));
    assert_eq!(not_after(&certs[0]), RENEWED_NOT_AFTER);
    assert_ne!(
        data_of(&secret)["tls.key"],
        first_key,
        "tls.key is the renewed leaf's (checked above), not the first's"
    );
    status_until(
        &env,
        "agents-tls",
        &format!("Ready=True with agents-tls at version {version}, expiring in 2035"),
        |seen| {
            let (ready, reason, _) = condition(seen, "Ready")?;
            let s = synced(&seen.binding(), "agents-tls")?;
            let expires = s.expires.as_ref().map(|t| t.0.as_second());
            let (soon, soon_reason, _) = condition(seen, "ExpiringSoon")?;
            if ready == "True"
                && s.version == version
                && expires == Some(RENEWED_NOT_AFTER)
                && soon == "False"
            {
                Ok(())
            } else {
                Err(format!(
                    "Ready={ready} {reason}; agents-tls at version {} expires {expires:?}; ExpiringSoon={soon} {soon_reason}",
                    s.version
                ))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn key_vault_s_own_pfx_becomes_a_tls_secret_the_api_server_accepts() {
    let kc = e2e!();
    let env = Env::start(
        kc,
        &seed(json!([{"name": "kv-selfsigned", "contentType": PFX,
                      "value": KEYVAULT_PFX.trim()}])),
    )
    .await;
    api_server_refuses(
        &env,
        "kubernetes.io/tls",
        json!({"tls.key": b64("-----BEGIN PRIVATE KEY-----\n")}),
        "without tls.crt",
    )
    .await;

    // The format is left to its default, Tls.
    let generation = env
        .apply_binding(
            "kv-tls",
            json!({
                "certificates": [{"name": "kv-selfsigned"}],
                "target": {"type": "kubernetes.io/tls"},
            }),
        )
        .await;
    let (b, _, _) = env.ready("kv-tls", "True", SYNC_DEADLINE).await;
    assert_eq!(b.metadata.generation, Some(generation));
    let secret = env.secrets().get("kv-tls").await.unwrap();
    // The absent password, 3DES bags, an RSA key with Windows attributes:
    // a tls.key that is the certificate's key, as PKCS#8.
    let certs = tls_secret(&secret).unwrap_or_else(|e| panic!("Secret kv-tls: {e}"));
    assert_eq!(certs.len(), 1, "a self-signed certificate has no chain");
    assert_eq!(
        certs[0].tbs_certificate().subject().to_string(),
        "CN=MyCert"
    );
    assert_eq!(not_after(&certs[0]), KEYVAULT_NOT_AFTER);

    // Long expired: it is synced all the same, and said to be expired.
    status_until(
        &env,
        "kv-tls",
        "status.secrets[kv-selfsigned] with the certificate's notAfter, ExpiringSoon=True SecretExpired",
        |seen| {
            let s = synced(&seen.binding(), "kv-selfsigned")?;
            let expires = s.expires.as_ref().map(|t| t.0.as_second());
            let (status, reason, message) = condition(seen, "ExpiringSoon")?;
            if expires == Some(KEYVAULT_NOT_AFTER)
                && status == "True"
                && reason == "SecretExpired"
                && message.contains("kv-selfsigned")
            {
                Ok(())
            } else {
                Err(format!(
                    "expires {expires:?}; ExpiringSoon={status} {reason}: {message:?}"
                ))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_failing_template_names_its_key_and_line_and_the_value_is_nowhere() {
    let kc = e2e!();
    // Letters, digits, '-' and '.': urlencode leaves it as it is, and it
    // is not base64 (no alphabet has '.').
    let value = format!("kvsync-canary.{}.{}", random_suffix(), random_suffix());
    let env = Env::start(kc, &seed(json!([{"name": "db-password", "value": value}]))).await;
    let pick = json!([{"name": "db-password", "key": "DB_PASSWORD"}]);

    // A template that works: the Secret holds the rendered value.
    env.bind_and_wait(
        "uri",
        json!({"secrets": pick, "target": {"template": {"data": {
            "DATABASE_URL": "postgres://app:{{ DB_PASSWORD | urlencode }}@db:5432/payments",
        }}}}),
    )
    .await;
    let url = format!("postgres://app:{value}@db:5432/payments");
    env.wait_for_value(
        "uri",
        "DATABASE_URL",
        &url,
        "the rendered template",
        SYNC_DEADLINE,
    )
    .await;

    // Then one that names something undefined on its second line.
    env.apply_binding(
        "uri",
        json!({"secrets": pick, "target": {"template": {"data": {
            "DATABASE_URL": "{# built from the vault #}\npostgres://app:{{ DB_PASSWORD | urlencode }}@db:5432/{{ DB_NAME }}",
        }}}}),
    )
    .await;
    let message = env
        .ready_reason("uri", "False", "TemplateError", SYNC_DEADLINE)
        .await;
    for part in ["DATABASE_URL", "line 2", "DB_NAME"] {
        assert!(message.contains(part), "{part:?} in {message:?}");
    }
    assert_eq!(
        env.secret_data("uri")
            .await
            .and_then(|d| d.get("DATABASE_URL").cloned()),
        Some(url),
        "the Secret keeps its last data"
    );

    // And one that fails on the value itself: a helper refuses it.
    env.apply_binding(
        "decoded",
        json!({"secrets": pick, "target": {"template": {"data": {
            "token": "{# the vault keeps it base64 #}\n\n{{ DB_PASSWORD | b64decode }}",
        }}}}),
    )
    .await;
    let message = env
        .ready_reason("decoded", "False", "TemplateError", SYNC_DEADLINE)
        .await;
    for part in ["token", "line 3", "b64decode"] {
        assert!(message.contains(part), "{part:?} in {message:?}");
    }
    assert_eq!(env.secret_data("decoded").await, None, "nothing written");

    // The value is in none of what a person reads: the bindings (status
    // included), the Events about them, the operator's log.
    let forms = [value.clone(), b64(&value)];
    for name in ["uri", "decoded"] {
        let seen = env.seen(name).await.unwrap().expect("the binding");
        let text = seen.json.to_string();
        assert!(
            forms.iter().all(|f| !text.contains(f)),
            "binding {name} shows the value: {}",
            seen.describe()
        );
        let events = eventually(
            &env,
            &format!("a Warning Event about {name} saying TemplateError"),
            SYNC_DEADLINE,
            || async {
                let events = env.events_of(name).await;
                let warned = events.iter().any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.note
                            .as_deref()
                            .is_some_and(|n| n.contains("TemplateError"))
                });
                if warned {
                    Ok(events)
                } else {
                    Err(format!(
                        "events: {:?}",
                        events
                            .iter()
                            .map(|e| (e.reason.clone(), e.note.clone()))
                            .collect::<Vec<_>>()
                    ))
                }
            },
        )
        .await;
        for e in &events {
            let text = serde_json::to_string(e).unwrap();
            assert!(
                forms.iter().all(|f| !text.contains(f)),
                "an Event about {name} shows the value: reason {:?}",
                e.reason
            );
        }
    }
    let log = eventually(
        &env,
        "the operator to log both TemplateErrors",
        SYNC_DEADLINE,
        || async {
            let log = env.logs.operator_text();
            let failures = log.lines().filter(|l| l.contains("TemplateError")).count();
            if failures >= 2 {
                Ok(log)
            } else {
                Err(format!("{failures} log line(s) say TemplateError"))
            }
        },
    )
    .await;
    for (i, line) in log.lines().enumerate() {
        assert!(
            forms.iter().all(|f| !line.contains(f)),
            "the operator's log line {} shows the value",
            i + 1
        );
    }
}

/// This file's readers, checked without a cluster: a key check that
/// accepted any key would make the TLS tests prove nothing.
#[test]
fn the_key_check_tells_a_leaf_s_own_key_from_another() {
    let a = chain("a.e2e.example", RENEWED_NOT_AFTER);
    let b = chain("b.e2e.example", RENEWED_NOT_AFTER);
    let leaf = &certificates(&a.chain_pem()).unwrap()[0];
    assert_eq!(key_fits(&a.leaf_key_pem, leaf), Ok(()));
    assert_eq!(
        key_fits(&b.leaf_key_pem, leaf),
        Err("tls.key is not the private key of the leaf in tls.crt".into())
    );
    assert!(key_fits("not a key", leaf).is_err());
    assert_eq!(not_after(leaf), RENEWED_NOT_AFTER);
    assert_eq!(
        leaf.tbs_certificate().subject().to_string(),
        "CN=a.e2e.example"
    );
}

#[test]
fn a_dockerconfigjson_login_is_read_by_registry() {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(&format!(
            r#"{{"auths":{{"{REGISTRY}":{{"username":"u","password":"p","auth":"dTpw"}}}}}}"#))},
    }))
    .unwrap();
    assert_eq!(registry_login(&secret).unwrap()["auth"], b64("u:p"));
    let other: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s"}, "data": {".dockerconfigjson": b64(r#"{"auths":{}}"#)},
    }))
    .unwrap();
    assert!(registry_login(&other).is_err());
}
