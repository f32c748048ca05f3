//! The poller against the dev vault: what a cycle costs and whom it wakes.

mod support;

use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use kvsync::crd::{VaultSecretBinding, VaultSecretBindingSpec};
use kvsync::poller::{BindingRef, Poller};
use kvsync::render::Fetched;
use support::{Fixture, start};

const REFRESH: Duration = Duration::from_secs(300);

fn spec(f: &Fixture, yaml: &str) -> VaultSecretBindingSpec {
    serde_yaml::from_str(&format!("vaultUrl: {}\n{yaml}", f.vault.url())).unwrap()
}

fn who(name: &str) -> BindingRef {
    ObjectRef::<VaultSecretBinding>::new(name).within("ns")
}

fn poller(
    f: &Fixture,
    client_id: &str,
) -> (
    Poller,
    futures::channel::mpsc::UnboundedReceiver<BindingRef>,
) {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let (kv, _) = f.client(client_id);
    (Poller::new(kv, Some(tx)), rx)
}

/// A read of `yaml`'s spec as binding `name`, which must succeed.
async fn read(p: &Poller, f: &Fixture, name: &str, yaml: &str) -> kvsync::poller::ReadResult {
    p.read(Some(&who(name)), &spec(f, yaml), REFRESH, false)
        .await
        .unwrap()
}

fn value(fetched: &Fetched) -> &str {
    match fetched {
        Fetched::Value { value, .. } => value.expose(),
        other => panic!("expected a value, got {other:?}"),
    }
}

fn seed_of(n: usize) -> String {
    let mut s = String::from("secrets:\n");
    for i in 0..n {
        s.push_str(&format!("  - {{name: s{i:03}, value: v{i}}}\n"));
    }
    s
}

fn woken(rx: &mut futures::channel::mpsc::UnboundedReceiver<BindingRef>) -> Vec<String> {
    let mut names = Vec::new();
    while let Ok(r) = rx.try_recv() {
        names.push(r.name.clone());
    }
    names.sort();
    names
}

#[tokio::test]
async fn bindings_sharing_a_secret_share_one_get() {
    let f = start(&seed_of(3)).await;
    let (p, _rx) = poller(&f, "reader");
    for i in 0..20 {
        let r = p
            .read(
                Some(&who(&format!("b{i}"))),
                &spec(&f, "secrets: [{name: s001}]"),
                REFRESH,
                false,
            )
            .await
            .unwrap();
        assert_eq!(value(&r.fetched["s001"]), "v1");
    }
    assert_eq!(
        f.stats().await.total("get_secret"),
        1,
        "one GET serves 20 bindings"
    );
}

#[tokio::test]
async fn unchanged_vault_cycle_lists_and_gets_nothing() {
    let f = start(&seed_of(60)).await;
    let (p, mut rx) = poller(&f, "reader");
    for i in 0..10 {
        p.read(
            Some(&who(&format!("b{i}"))),
            &spec(&f, "select: {all: true}"),
            REFRESH,
            false,
        )
        .await
        .unwrap();
    }
    f.reset_stats().await;
    p.cycle().await.unwrap();
    let stats = f.stats().await;
    assert_eq!(stats.count("list_secrets", 200), 3, "60 items: 3 pages");
    assert_eq!(stats.total("get_secret"), 0, "nothing changed: no GET");
    assert!(woken(&mut rx).is_empty(), "nobody is woken for nothing");
}

#[tokio::test]
async fn one_changed_secret_costs_one_get_and_wakes_only_its_bindings() {
    let f = start(&seed_of(30)).await;
    let (p, mut rx) = poller(&f, "reader");
    for i in 0..5 {
        p.read(
            Some(&who(&format!("uses-s001-{i}"))),
            &spec(&f, "secrets: [{name: s001}, {name: s002}, {name: s003}]"),
            REFRESH,
            false,
        )
        .await
        .unwrap();
    }
    read(&p, &f, "uses-s010", "secrets: [{name: s010}]").await;
    p.cycle().await.unwrap(); // learns the vault's size
    f.reset_stats().await;
    // Key Vault's `updated` has one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.put_secret("s001", "changed").await;
    f.reset_stats().await;
    p.cycle().await.unwrap();
    let stats = f.stats().await;
    assert_eq!(
        stats.count("list_secrets", 200),
        2,
        "4 needed names, 2 pages: LIST is cheaper"
    );
    assert_eq!(
        stats.total("get_secret"),
        1,
        "only the changed secret is read"
    );
    assert_eq!(
        woken(&mut rx),
        [
            "uses-s001-0",
            "uses-s001-1",
            "uses-s001-2",
            "uses-s001-3",
            "uses-s001-4"
        ]
    );
    let r = read(&p, &f, "uses-s001-0", "secrets: [{name: s001}]").await;
    assert_eq!(value(&r.fetched["s001"]), "changed");
}

#[tokio::test]
async fn a_few_names_in_a_large_vault_are_read_by_get() {
    let f = start(&seed_of(100)).await;
    let (p, _rx) = poller(&f, "reader");
    read(&p, &f, "b", "secrets: [{name: s001}, {name: s050}]").await;
    p.cycle().await.unwrap(); // size unknown: one LIST (4 pages) teaches it
    f.reset_stats().await;
    p.cycle().await.unwrap();
    let stats = f.stats().await;
    assert_eq!(stats.total("list_secrets"), 0);
    assert_eq!(
        stats.count("get_secret", 200),
        2,
        "2 GETs beat 4 LIST pages"
    );
}

const SCOPED: &str = r#"
secrets:
  - {name: app-a, value: a}
  - {name: app-b, value: b}
access:
  - {clientId: scoped, secrets: ["app-*"]}
"#;

#[tokio::test]
async fn identity_without_list_falls_back_to_gets_for_picks() {
    let f = start(SCOPED).await;
    let (p, _rx) = poller(&f, "scoped");
    let picks = spec(&f, "secrets: [{name: app-a}, {name: app-b}]");
    let r = p
        .read(Some(&who("b")), &picks, REFRESH, false)
        .await
        .unwrap(); // tries LIST once, is refused, reads by name
    assert_eq!(value(&r.fetched["app-b"]), "b");
    p.cycle().await.unwrap(); // remembers: GETs only
    p.cycle().await.unwrap();
    let stats = f.stats().await;
    assert_eq!(
        stats.count("list_secrets", 403),
        1,
        "the refusal is remembered"
    );
    assert_eq!(stats.count("get_secret", 200), 6);
}

#[tokio::test]
async fn select_without_list_permission_says_so() {
    let f = start(SCOPED).await;
    let (p, _rx) = poller(&f, "scoped");
    let err = p
        .read(
            Some(&who("b")),
            &spec(&f, "select: {namePrefix: app-}"),
            REFRESH,
            false,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("does not have secrets list permission"),
        "{err}"
    );
}

#[tokio::test]
async fn failed_cycle_is_reported_and_recovery_wakes_everyone() {
    let f = start(&seed_of(2)).await;
    let (p, mut rx) = poller(&f, "reader");
    read(&p, &f, "b1", "secrets: [{name: s000}]").await;
    f.fault(serde_json::json!({"op": "*", "status": 503, "code": "ServiceUnavailable"}))
        .await;
    let retry_in = p.cycle().await.unwrap();
    assert!(
        retry_in < REFRESH,
        "a failed cycle is retried sooner ({retry_in:?})"
    );
    assert_eq!(
        woken(&mut rx),
        ["b1"],
        "the binding is told, to report the failure"
    );
    let err = p
        .read(
            Some(&who("b1")),
            &spec(&f, "secrets: [{name: s000}]"),
            REFRESH,
            false,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    let http = &f.http;
    http.delete(format!("{}/_dev/faults", f.vault.url()))
        .send()
        .await
        .unwrap();
    p.cycle().await.unwrap();
    assert_eq!(woken(&mut rx), ["b1"], "recovery wakes the binding");
    let ok = read(&p, &f, "b1", "secrets: [{name: s000}]").await;
    assert_eq!(value(&ok.fetched["s000"]), "v0");
}

#[tokio::test]
async fn pinned_versions_are_read_once() {
    let f = start("secrets:\n  - {name: db, value: one}\n  - {name: db, value: two}\n").await;
    let (kv, _) = f.client("reader");
    let versions = kv.list_versions("db").await.unwrap();
    let first = versions
        .iter()
        .map(|v| v.version().to_string())
        .find(|v| !v.is_empty())
        .unwrap();
    let (p, _rx) = poller(&f, "reader");
    let pinned = spec(&f, &format!("secrets: [{{name: db, version: {first}}}]"));
    f.reset_stats().await;
    for _ in 0..3 {
        p.read(Some(&who("b")), &pinned, REFRESH, false)
            .await
            .unwrap();
        p.cycle().await.unwrap();
    }
    assert_eq!(
        f.stats().await.total("get_secret"),
        1,
        "a pinned version never changes"
    );
}

#[tokio::test]
async fn removed_and_disabled_secrets_are_seen_by_the_listing() {
    let f = start(
        "secrets:\n  - {name: a, value: 1}\n  - {name: b, value: 2}\n  - {name: c, value: 3}\n",
    )
    .await;
    let (p, mut rx) = poller(&f, "reader");
    read(&p, &f, "all", "select: {all: true}").await;
    let (kv, _) = f.client("writer");
    let b = kv.get_secret("b", None).await.unwrap();
    let resp = f
        .patch_secret(
            "b",
            b.version(),
            serde_json::json!({"attributes": {"enabled": false}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let token = f.raw_token("writer").await;
    f.http
        .delete(format!(
            "{}/secrets/c?api-version=2025-07-01",
            f.vault.url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    f.reset_stats().await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // `updated` has 1 s resolution
    p.cycle().await.unwrap();
    assert_eq!(
        f.stats().await.total("get_secret"),
        0,
        "disabled and removed need no GET"
    );
    assert_eq!(woken(&mut rx), ["all"]);
    let r = read(&p, &f, "all", "select: {all: true}").await;
    assert!(matches!(r.fetched["b"], Fetched::Disabled));
    assert!(
        !r.fetched.contains_key("c"),
        "a deleted secret leaves the select"
    );
}

#[tokio::test]
async fn two_versions_in_one_second_are_not_missed() {
    // Key Vault's `updated` has one-second resolution: a version written in
    // the same second as the one we read looks unchanged in the listing.
    let f = start(&seed_of(30)).await;
    let (p, _rx) = poller(&f, "reader");
    let picks = spec(&f, "secrets: [{name: s001}, {name: s002}, {name: s003}]");
    p.read(Some(&who("b")), &picks, REFRESH, false)
        .await
        .unwrap();
    p.cycle().await.unwrap(); // learns the size: LIST is the plan
    f.put_secret("s001", "second").await;
    p.cycle().await.unwrap();
    f.put_secret("s001", "third").await; // very likely the same second
    p.cycle().await.unwrap();
    let r = p
        .read(Some(&who("b")), &picks, REFRESH, false)
        .await
        .unwrap();
    assert_eq!(value(&r.fetched["s001"]), "third");
}
