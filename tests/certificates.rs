//! `spec.certificates` end to end without a cluster: the real `kvsync run`
//! against the API stand-in and a dev vault holding certificate-backed
//! secrets (a PFX as Key Vault stores it: base64, contentType
//! application/x-pkcs12).

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/operator.rs"]
mod operator;
mod support;

use std::time::Duration;

use base64::Engine;
use kvsync::devvault::testcerts::{ChainSpec, TestChain, make_chain_with};
use operator::{Stack, decoded};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(20);
/// 2030-01-01T00:00:00Z
const NOT_AFTER: i64 = 1_893_456_000;

fn chain(leaf: &str, not_after: i64) -> TestChain {
    make_chain_with(&ChainSpec {
        leaf_not_after: Some(not_after),
        ..ChainSpec::new("kvsync test root", "kvsync test intermediate", leaf)
    })
    .expect("a test chain")
}

#[tokio::test]
async fn a_pfx_certificate_becomes_a_tls_secret_and_follows_its_renewal() {
    let first = chain("web.example.test", NOT_AFTER);
    let seed = format!(
        "secrets:\n  - name: web-tls\n    contentType: application/x-pkcs12\n    value: {}\n",
        first.pfx_base64().unwrap()
    );
    let stack = Stack::start(&seed, &[]).await;
    stack.api.create_namespace("web");
    stack.create_binding(
        "web",
        "web-tls",
        json!({"certificates": [{"name": "web-tls"}],
                     "target": {"type": "kubernetes.io/tls"}}),
    );
    let secret = stack
        .wait_for("the tls Secret", WITHIN, || {
            stack.api.get("secrets", "web", "web-tls")
        })
        .await;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(decoded(&secret, "tls.crt").unwrap(), first.chain_pem());
    assert!(
        decoded(&secret, "tls.key")
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let keys: Vec<&String> = secret["data"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["tls.crt", "tls.key"],
        "the PFX itself is not written"
    );
    let status = stack
        .wait_for("status with the certificate", WITHIN, || {
            let b = stack.api.get("vaultsecretbindings", "web", "web-tls")?;
            (b["status"]["secrets"][0]["name"] == "web-tls").then(|| b["status"].clone())
        })
        .await;
    assert_eq!(
        status["secrets"][0]["expires"], "2030-01-01T00:00:00Z",
        "the leaf's notAfter"
    );
    assert_eq!(status["secrets"][0]["key"], "tls.crt");

    // Renewal: a new version of the backing secret, found by a forced check.
    let renewed = chain("web.example.test", NOT_AFTER + 86_400);
    stack
        .vault
        .put_secret("web-tls", &renewed.pfx_base64().unwrap())
        .await;
    kube::Api::<kvsync::crd::VaultSecretBinding>::namespaced(stack.client.clone(), "web")
        .patch(
            "web-tls",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"kvsync.io/force-sync": "1"}}}),
            ),
        )
        .await
        .unwrap();
    stack
        .wait_for("the renewed chain", WITHIN, || {
            let s = stack.api.get("secrets", "web", "web-tls")?;
            (decoded(&s, "tls.crt")? == renewed.chain_pem()).then_some(())
        })
        .await;
}

#[tokio::test]
async fn a_plain_secret_picked_as_a_certificate_is_refused_and_nothing_is_written() {
    let seed = "secrets:\n  - {name: not-a-cert, value: hunter2-PLAIN}\n";
    let stack = Stack::start(seed, &[]).await;
    stack.api.create_namespace("web");
    stack.create_binding(
        "web",
        "web-tls",
        json!({"certificates": [{"name": "not-a-cert"}]}),
    );
    let c = stack.ready_condition("web", "web-tls", "False").await;
    assert_eq!(c["reason"], "CertificateInvalid");
    let message = c["message"].as_str().unwrap();
    assert!(message.contains("not-a-cert"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(stack.api.get("secrets", "web", "web-tls").is_none());
}

#[tokio::test]
async fn format_pfx_writes_the_pfx_file_as_is_beside_a_pem_bundle() {
    let c = chain("api.example.test", NOT_AFTER);
    let pfx = c.pfx_base64().unwrap();
    let seed = format!(
        "secrets:\n  - name: api-tls\n    contentType: application/x-pkcs12\n    value: {pfx}\n"
    );
    let stack = Stack::start(&seed, &[]).await;
    stack.api.create_namespace("api");
    stack.create_binding(
        "api",
        "api-files",
        json!({"certificates": [{"name": "api-tls", "format": "Pfx"}]}),
    );
    let secret = stack
        .wait_for("the Secret", WITHIN, || {
            stack.api.get("secrets", "api", "api-files")
        })
        .await;
    assert_eq!(secret["type"], "Opaque");
    let written = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["api-tls.pfx"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        written,
        base64::engine::general_purpose::STANDARD
            .decode(&pfx)
            .unwrap(),
        "the PFX file's bytes, as Key Vault holds them"
    );
}
