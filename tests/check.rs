//! `kvsync check`: the same plan and read path, a table, and a verdict.

mod support;

use kvsync::azure::AzureAccess;
use kvsync::crd::VaultSecretBinding;
use std::time::Duration;
use support::{Fixture, fast_retry, start};

fn binding(f: &Fixture, spec: &str) -> VaultSecretBinding {
    serde_yaml::from_str(&format!(
        "apiVersion: kvsync.io/v1alpha1\nkind: VaultSecretBinding\nmetadata: {{name: b, namespace: ci}}\nspec:\n  vaultUrl: {}\n{spec}",
        f.vault.url()
    ))
    .unwrap()
}

fn access(f: &Fixture) -> AzureAccess {
    AzureAccess::new(
        f.http.clone(),
        f.policy(),
        f.env("checker", "sub"),
        fast_retry(),
    )
}

const SEED: &str = "secrets:\n  - {name: db-password, value: hunter2}\n  - {name: off, value: x, enabled: false}\n";

#[tokio::test]
async fn a_good_binding_prints_versions_and_no_values() {
    let f = start(SEED).await;
    let b = binding(&f, "  secrets: [{name: db-password, key: DB}]");
    let report = kvsync::check::check(&b, &access(&f), None, Duration::from_secs(300), None).await;
    assert!(report.ok(), "{report:?}");
    let text = report.to_text();
    assert!(
        text.contains("DB") && text.contains("db-password") && text.contains("ok"),
        "{text}"
    );
    assert_eq!(report.rows[0].2.len(), 32, "the version id is shown");
    assert_eq!(report.rows[0].4, "spec.secrets", "the field that reads it");
    assert!(
        text.lines().next().unwrap().ends_with("STATUS  FROM"),
        "FROM is the last column: {text}"
    );
    assert!(!text.contains("hunter2"));
    assert!(text.ends_with("the binding would sync\n"));
}

#[tokio::test]
async fn missing_and_disabled_secrets_are_problems_unless_optional() {
    let f = start(SEED).await;
    let b = binding(
        &f,
        "  secrets: [{name: nope}, {name: off}]\n  onDisabled: Fail",
    );
    let report = kvsync::check::check(&b, &access(&f), None, Duration::from_secs(300), None).await;
    assert!(!report.ok());
    assert!(
        report.problems[0].starts_with("SecretNotFound:"),
        "{:?}",
        report.problems
    );
    let b = binding(
        &f,
        "  secrets: [{name: nope, optional: true}, {name: db-password}]",
    );
    let report = kvsync::check::check(&b, &access(&f), None, Duration::from_secs(300), None).await;
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report.to_text().contains("missing (optional)"));
}

#[tokio::test]
async fn refused_host_and_invalid_spec_are_reported_without_a_token_request() {
    let f = start(SEED).await;
    let mut b = binding(&f, "  secrets: [{name: db-password}]");
    b.spec.vault_url = "https://exfil.example.com".into();
    let report = kvsync::check::check(&b, &access(&f), None, Duration::from_secs(300), None).await;
    assert!(
        report.problems[0].starts_with("VaultHostNotAllowed:"),
        "{:?}",
        report.problems
    );
    let b = binding(&f, "  secrets: [{name: bad_name}]");
    let report = kvsync::check::check(&b, &access(&f), None, Duration::from_secs(300), None).await;
    assert!(
        report.problems[0].contains("spec.secrets[0].name"),
        "{:?}",
        report.problems
    );
    assert_eq!(f.stats().await.total("token"), 0);
}

#[tokio::test]
async fn service_account_identity_needs_the_cluster() {
    let f = start(SEED).await;
    let b = binding(
        &f,
        "  identity: {serviceAccountName: builder}\n  secrets: [{name: db-password}]",
    );
    let report = kvsync::check::check(&b, &access(&f), None, Duration::from_secs(300), None).await;
    assert!(
        report.problems[0].contains("no kubeconfig"),
        "{:?}",
        report.problems
    );
}

#[test]
fn the_binary_exits_nonzero_for_a_binding_that_would_not_sync() {
    let dir = support::TempDir::new();
    let file = dir.path("b.yaml");
    std::fs::write(
        &file,
        "apiVersion: kvsync.io/v1alpha1\nkind: VaultSecretBinding\nmetadata: {name: b}\nspec:\n  vaultUrl: https://exfil.example.com\n  secrets: [{name: a}]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvsync"))
        .args(["check", "-f"])
        .arg(&file)
        .env("KUBECONFIG", dir.path("no-such-kubeconfig"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("VaultHostNotAllowed") && stdout.contains("would NOT sync"),
        "{stdout}"
    );
}

fn policy_input(f: &Fixture, secrets: &str) -> kvsync::check::PolicyInput {
    let p: kvsync::crd::policy::VaultAccessPolicy = serde_yaml::from_str(&format!(
        "apiVersion: kvsync.io/v1alpha1\nkind: VaultAccessPolicy\nmetadata: {{name: ci-public}}\nspec:\n  namespaceSelector: {{matchLabels: {{team: ci}}}}\n  vaults: [\"{}\"]\n  secrets: {secrets}\n",
        f.vault.addr()
    ))
    .unwrap();
    kvsync::check::PolicyInput {
        policies: kvsync::policy::Policies::new(vec![kvsync::policy::Policy {
            name: "ci-public".into(),
            spec: p.spec,
        }]),
        labels: [("team".to_string(), "ci".to_string())].into(),
        mode: kvsync::policy::Mode::Open,
    }
}

const POLICY_SEED: &str =
    "secrets:\n  - {name: public-api, value: p}\n  - {name: payroll-db, value: s3cret}\n";

#[tokio::test]
async fn a_policy_denial_is_reported_and_nothing_is_read() {
    let f = start(POLICY_SEED).await;
    let b = binding(&f, "  secrets: [{name: payroll-db}]");
    let policies = policy_input(&f, "[public-*]");
    let report = kvsync::check::check(
        &b,
        &access(&f),
        None,
        Duration::from_secs(300),
        Some(&policies),
    )
    .await;
    assert_eq!(
        report.problems,
        [
            "PolicyDenied: VaultAccessPolicy ci-public: secret payroll-db (spec.secrets) is not among secrets [public-*]"
        ]
    );
    let stats = f.stats().await;
    assert!(
        stats.requests.is_empty(),
        "no token, no read: {:?}",
        stats.requests
    );
}

#[tokio::test]
async fn a_select_takes_only_what_the_policy_allows() {
    let f = start(POLICY_SEED).await;
    let b = binding(&f, "  select: {all: true}");
    let policies = policy_input(&f, "[public-*]");
    let report = kvsync::check::check(
        &b,
        &access(&f),
        None,
        Duration::from_secs(300),
        Some(&policies),
    )
    .await;
    assert!(report.ok(), "{report:?}");
    let secrets: Vec<&str> = report.rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(secrets, ["public-api"]);
    let stats = f.stats().await;
    assert_eq!(stats.count("get_secret", 200), 1, "{:?}", stats.requests);
}

#[tokio::test]
async fn a_certificate_is_judged_like_a_pick_and_nothing_is_read() {
    let f = start(POLICY_SEED).await;
    let b = binding(&f, "  certificates: [{name: payroll-db}]");
    let policies = policy_input(&f, "[public-*]");
    let report = kvsync::check::check(
        &b,
        &access(&f),
        None,
        Duration::from_secs(300),
        Some(&policies),
    )
    .await;
    assert_eq!(
        report.problems,
        [
            "PolicyDenied: VaultAccessPolicy ci-public: secret payroll-db (spec.certificates) is not among secrets [public-*]"
        ]
    );
    let stats = f.stats().await;
    assert!(
        stats.requests.is_empty(),
        "no token, no read: {:?}",
        stats.requests
    );
}
