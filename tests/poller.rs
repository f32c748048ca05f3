//! The poller against the dev vault: what a cycle costs, whom it wakes, and
//! that one binding's failures, slow names or stale listings never decide
//! another binding's outcome.

mod support;

use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;
use kvsync::crd::{VaultSecretBinding, VaultSecretBindingSpec};
use kvsync::poller::{BindingRef, Poller, Pollers};
use kvsync::reason::Reason;
use kvsync::render::Fetched;
use support::{Fixture, start};

const REFRESH: Duration = Duration::from_secs(300);

fn spec(f: &Fixture, yaml: &str) -> VaultSecretBindingSpec {
    serde_yaml::from_str(&format!("vaultUrl: {}\n{yaml}", f.vault.url())).unwrap()
}

fn who(name: &str) -> BindingRef {
    ObjectRef::<VaultSecretBinding>::new(name).within("ns")
}

fn who_in(namespace: &str, name: &str) -> BindingRef {
    ObjectRef::<VaultSecretBinding>::new(name).within(namespace)
}

/// A seed of `versions` versions of secret `name`.
fn versions_of(name: &str, versions: usize) -> String {
    let mut s = String::from("secrets:\n");
    for i in 0..versions {
        s.push_str(&format!("  - {{name: {name}, value: {name}-{i}}}\n"));
    }
    s
}

/// A spec pinning every version of `name` the vault holds, key `k000`….
async fn pin_all(f: &Fixture, name: &str) -> VaultSecretBindingSpec {
    let (kv, _) = f.client("writer");
    let mut yaml = String::from("secrets:\n");
    for (i, v) in kv.list_versions(name).await.unwrap().iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{name: {name}, version: {}, key: k{i:03}}}\n",
            v.version()
        ));
    }
    spec(f, &yaml)
}

type Woken = futures::channel::mpsc::UnboundedReceiver<BindingRef>;

fn poller(f: &Fixture, client_id: &str) -> (Poller, Woken) {
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
    f.clear_faults().await;
    p.cycle().await.unwrap();
    assert_eq!(woken(&mut rx), ["b1"], "recovery wakes the binding");
    let ok = read(&p, &f, "b1", "secrets: [{name: s000}]").await;
    assert_eq!(value(&ok.fetched["s000"]), "v0");
}

#[tokio::test]
async fn pinned_versions_are_rechecked_each_cycle_and_a_disable_is_seen() {
    let f = start("secrets:\n  - {name: db, value: one}\n  - {name: db, value: two}\n").await;
    let (kv, _) = f.client("reader");
    let versions = kv.list_versions("db").await.unwrap();
    let first = versions
        .iter()
        .map(|v| v.version().to_string())
        .find(|v| !v.is_empty())
        .unwrap();
    let (p, mut rx) = poller(&f, "reader");
    let pinned = spec(&f, &format!("secrets: [{{name: db, version: {first}}}]"));
    f.reset_stats().await;
    for _ in 0..3 {
        p.read(Some(&who("b")), &pinned, REFRESH, false)
            .await
            .unwrap();
        p.cycle().await.unwrap();
    }
    let stats = f.stats().await;
    assert_eq!(
        stats.total("get_secret"),
        1,
        "one GET to read it: a version's value never changes"
    );
    assert_eq!(
        stats.count("list_versions", 200),
        3,
        "then one versions listing per cycle: a listing of the vault shows only latest versions"
    );
    assert!(woken(&mut rx).is_empty(), "nothing changed");
    let resp = f
        .patch_secret(
            "db",
            &first,
            serde_json::json!({"attributes": {"enabled": false}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    p.cycle().await.unwrap();
    assert_eq!(
        woken(&mut rx),
        ["b"],
        "the disable is noticed by the next cycle"
    );
    let r = p
        .read(Some(&who("b")), &pinned, REFRESH, false)
        .await
        .unwrap();
    assert!(
        matches!(r.fetched["db"], Fetched::Disabled),
        "{:?}",
        r.fetched
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

/// A secret scoped identity: `app` may read db-password only (and so may not list).
const DB_ONLY: &str = r#"
secrets:
  - {name: db-password, value: one}
  - {name: payroll-db, value: payroll}
access:
  - {clientId: app, secrets: [db-password]}
  - {clientId: "*", secrets: ["*"]}
"#;

#[tokio::test]
async fn another_bindings_unreadable_optional_pick_does_not_fail_this_one() {
    let f = start(DB_ONLY).await;
    let (p, mut rx) = poller(&f, "app");
    let a = "secrets: [{name: db-password}]";
    read(&p, &f, "a", a).await;
    let b = read(&p, &f, "b", "secrets: [{name: payroll-db, optional: true}]").await;
    assert!(
        matches!(
            &b.fetched["payroll-db"],
            Fetched::Unavailable {
                reason: Reason::VaultForbidden,
                ..
            }
        ),
        "{:?}",
        b.fetched
    );
    assert_eq!(b.optional_failures.len(), 1);
    p.cycle().await.unwrap();
    assert!(woken(&mut rx).is_empty(), "nothing changed for anyone");
    let r = read(&p, &f, "a", a).await;
    assert_eq!(
        value(&r.fetched["db-password"]),
        "one",
        "a is not failed by b's pick"
    );

    f.put_secret("db-password", "rotated").await;
    p.cycle().await.unwrap();
    assert_eq!(woken(&mut rx), ["a"], "a still receives rotations");
    let r = read(&p, &f, "a", a).await;
    assert_eq!(value(&r.fetched["db-password"]), "rotated");
}

#[tokio::test]
async fn a_throttled_optional_pick_is_unavailable_not_a_failure() {
    let f = start(&seed_of(2)).await;
    let (p, _rx) = poller(&f, "reader");
    f.fault(
        serde_json::json!({"op": "get_secret", "secret": "s001", "status": 429, "retryAfter": 0}),
    )
    .await;
    let r = read(
        &p,
        &f,
        "b",
        "secrets: [{name: s000}, {name: s001, optional: true}]",
    )
    .await;
    assert_eq!(value(&r.fetched["s000"]), "v0");
    assert!(
        matches!(
            &r.fetched["s001"],
            Fetched::Unavailable {
                reason: Reason::VaultThrottled,
                ..
            }
        ),
        "{:?}",
        r.fetched
    );
}

#[tokio::test]
async fn a_refused_listing_is_retried_and_a_later_grant_is_noticed() {
    let f = start(&seed_of(30)).await;
    let (p, _rx) = poller(&f, "reader");
    // Until the fault is removed the identity may not list (as with roles
    // on single secrets); then it is granted.
    f.fault(serde_json::json!({"op": "list_secrets", "status": 403, "code": "Forbidden", "innerCode": "ForbiddenByRbac"}))
        .await;
    let selects = spec(&f, "select: {namePrefix: s00}");
    let err = p.read(None, &selects, REFRESH, false).await.unwrap_err();
    assert_eq!(err.reason(), Reason::ListForbidden, "{err}");
    // Four names in two pages: LIST would be the cheaper plan.
    let picks = "secrets: [{name: s001}, {name: s002}, {name: s003}, {name: s004}]";
    let r = read(&p, &f, "picks", picks).await;
    assert_eq!(
        value(&r.fetched["s004"]),
        "v4",
        "explicit picks are read by GET"
    );
    f.clear_faults().await;
    f.reset_stats().await;
    let mut cycles = 0;
    while f.stats().await.count("list_secrets", 200) == 0 {
        cycles += 1;
        assert!(cycles <= 12, "the LIST is never tried again");
        p.cycle().await.unwrap();
    }
    assert!(
        cycles > 1,
        "not on every cycle: the refusal is remembered for a while"
    );
    let r = p.read(None, &selects, REFRESH, false).await.unwrap();
    assert_eq!(r.plan.keys.len(), 10, "s000..s009: the grant is noticed");
}

#[tokio::test]
async fn a_slow_name_delays_only_its_readers_and_they_time_out() {
    let f = start(&seed_of(2)).await;
    let (tx, mut rx) = futures::channel::mpsc::unbounded();
    let (kv, _) = f.client("reader");
    let p = Poller::new(kv, Some(tx)).with_read_timeout(Duration::from_millis(700));
    read(&p, &f, "warm", "secrets: [{name: s000}]").await; // the token is fetched
    f.fault(
        serde_json::json!({"op": "get_secret", "secret": "s001", "latencyMs": 3000, "count": 1}),
    )
    .await;
    let slow_spec = spec(&f, "secrets: [{name: s001}]");
    let fast_spec = spec(&f, "secrets: [{name: s000}]");
    let started = Instant::now();
    let slow = async {
        let r = p.read(Some(&who("slow")), &slow_spec, REFRESH, false).await;
        (r, started.elapsed())
    };
    let fast = async {
        // Force: a GET of its own, while the slow one is out.
        let r = p.read(Some(&who("fast")), &fast_spec, REFRESH, true).await;
        (r, started.elapsed())
    };
    let ((slow, slow_took), (fast, fast_took)) = futures::join!(slow, fast);
    assert_eq!(value(&fast.unwrap().fetched["s000"]), "v0");
    assert!(
        fast_took < Duration::from_millis(700),
        "the fast binding waited {fast_took:?}"
    );
    let err = slow.unwrap_err();
    assert_eq!(err.reason(), Reason::VaultTimeout, "{err}");
    assert!(err.is_transient());
    assert!(
        slow_took < Duration::from_millis(2500),
        "the slow binding waited {slow_took:?}, beyond its bound"
    );
    // The request goes on: when it ends, the binding that gave up is woken
    // and its next read is served from the cache.
    let woke = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut rx))
        .await
        .expect("woken when the slow answer arrives")
        .unwrap();
    assert_eq!(woke.name, "slow");
    let r = p
        .read(Some(&who("slow")), &slow_spec, REFRESH, false)
        .await
        .unwrap();
    assert_eq!(value(&r.fetched["s001"]), "v1");
    assert_eq!(
        f.stats().await.count("get_secret", 200),
        3,
        "s000 twice, s001 once"
    );
}

#[tokio::test]
async fn a_secret_created_after_the_listing_syncs_at_once() {
    let f = start(&seed_of(30)).await;
    let (p, _rx) = poller(&f, "reader");
    read(
        &p,
        &f,
        "x",
        "secrets: [{name: s001}, {name: s002}, {name: s003}]",
    )
    .await;
    p.cycle().await.unwrap(); // a listing, taken before `fresh` exists
    f.put_secret("fresh", "new").await;
    let r = read(&p, &f, "y", "secrets: [{name: fresh}]").await;
    assert_eq!(value(&r.fetched["fresh"]), "new", "{:?}", r.fetched);
}

#[tokio::test]
async fn a_tag_change_that_makes_a_secret_match_wakes_its_select() {
    let f = start("secrets:\n  - {name: a, value: 1}\n  - {name: b, value: 2}\n").await;
    let (p, mut rx) = poller(&f, "reader");
    let sel = "select: {tags: {team: ci}}";
    let r = read(&p, &f, "ci", sel).await;
    assert!(r.plan.keys.is_empty());
    let (kv, _) = f.client("writer");
    let a = kv.get_secret("a", None).await.unwrap();
    let resp = f
        .patch_secret(
            "a",
            a.version(),
            serde_json::json!({"tags": {"team": "ci"}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    p.cycle().await.unwrap();
    assert_eq!(woken(&mut rx), ["ci"]);
    let r = read(&p, &f, "ci", sel).await;
    assert_eq!(value(&r.fetched["a"]), "1");
}

#[tokio::test]
async fn retain_forgets_bindings_the_store_no_longer_has() {
    let f = start(&seed_of(2)).await;
    let pollers = Pollers::new(None);
    let make = || f.client("reader").0;
    let p = pollers.get("v", "reader", make);
    read(&p, &f, "kept", "secrets: [{name: s000}]").await;
    read(&p, &f, "gone", "secrets: [{name: s001}]").await;
    pollers.retain(|w| w.name == "kept");
    assert_eq!(p.interested(), 1);
    f.reset_stats().await;
    p.cycle().await.unwrap();
    assert_eq!(
        f.stats().await.total("get_secret"),
        1,
        "only s000 is still checked"
    );
    pollers.retain(|_| false);
    assert_eq!(p.interested(), 0);
    // Held by a reconcile (this test): kept, so that one vault never gets
    // two pollers. Once nobody holds it, it goes.
    let held = std::sync::Arc::downgrade(&p);
    drop(p);
    pollers.retain(|_| false);
    assert!(held.upgrade().is_none(), "a poller nobody needs is dropped");
    let again = pollers.get("v", "reader", make);
    assert_eq!(again.interested(), 0, "a new one");
}

#[tokio::test]
async fn a_poller_just_made_survives_another_bindings_forget() {
    let f = start(&seed_of(2)).await;
    let pollers = Pollers::new(None);
    let make = || f.client("reader").0;
    // A reconcile made the poller and has not read (registered) yet...
    let p = pollers.get("v", "reader", make);
    // ...when another binding is forgotten.
    pollers.forget(&kube::runtime::reflector::ObjectRef::new("other").within("ns"));
    let same = pollers.get("v", "reader", make);
    assert!(
        std::sync::Arc::ptr_eq(&p, &same),
        "one poller per vault and identity"
    );
}

#[tokio::test]
async fn concurrent_reads_of_one_name_share_one_get() {
    let f = start(&seed_of(2)).await;
    let (p, _rx) = poller(&f, "reader");
    read(&p, &f, "warm", "secrets: [{name: s000}]").await; // the token is fetched
    f.fault(
        serde_json::json!({"op": "get_secret", "secret": "s001", "latencyMs": 300, "count": 1}),
    )
    .await;
    f.reset_stats().await;
    let s = spec(&f, "secrets: [{name: s001}]");
    // Two force-syncs at once: one request, both answered by it.
    let (wa, wb) = (who("a"), who("b"));
    let (a, b) = futures::join!(
        p.read(Some(&wa), &s, REFRESH, true),
        p.read(Some(&wb), &s, REFRESH, true)
    );
    assert_eq!(value(&a.unwrap().fetched["s001"]), "v1");
    assert_eq!(value(&b.unwrap().fetched["s001"]), "v1");
    assert_eq!(f.stats().await.total("get_secret"), 1);
}

#[tokio::test]
async fn a_select_past_the_secret_limit_stops_reading_and_keeps_nothing() {
    // 200 values of 25 KB: 5 MB, five times what a Secret can hold.
    let big = "x".repeat(25 * 1024);
    let mut seed = String::from("secrets:\n");
    for i in 0..200 {
        seed.push_str(&format!("  - {{name: s{i:03}, value: {big}}}\n"));
    }
    seed.push_str("  - {name: small, value: ok}\n");
    let f = start(&seed).await;
    let (p, _rx) = poller(&f, "reader");
    let other = read(&p, &f, "other", "secrets: [{name: small}]").await;
    assert_eq!(value(&other.fetched["small"]), "ok");
    let all = spec(&f, "select: {namePrefix: s}");
    for attempt in 0..2 {
        f.reset_stats().await;
        let err = p
            .read(Some(&who_in("tenant", "all")), &all, REFRESH, false)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Reason::SecretTooLarge, "{err}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("namePrefix or tags"), "{err}");
        let gets = f.stats().await.total("get_secret");
        if attempt == 0 {
            // ⌈1 MiB / 25 KB⌉ = 41 values pass the limit, plus what was in flight.
            assert!((41..=41 + 4).contains(&gets), "{gets} GETs, not 200");
        } else {
            // The listing shows none of them changed: the sizes read before
            // decide, and the retry costs no GET.
            assert_eq!(gets, 0, "a retry over an unchanged listing reads nothing");
        }
        assert_eq!(
            p.cached_bytes(),
            2,
            "attempt {attempt}: only the other binding's value is kept"
        );
    }
    // A force-sync reads again (and fails again, keeping nothing).
    f.reset_stats().await;
    let err = p
        .read(Some(&who_in("tenant", "all")), &all, REFRESH, true)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::SecretTooLarge, "{err}");
    let gets = f.stats().await.total("get_secret");
    assert!((41..=41 + 4).contains(&gets), "forced: {gets} GETs");
    assert_eq!(p.cached_bytes(), 2);
    f.reset_stats().await;
    p.cycle().await.unwrap();
    assert_eq!(
        f.stats().await.total("get_secret"),
        0,
        "a cycle reads nothing for the failing binding"
    );
    let other = read(&p, &f, "other", "secrets: [{name: small}]").await;
    assert_eq!(value(&other.fetched["small"]), "ok");
}

#[tokio::test]
async fn a_namespace_with_many_slow_pins_does_not_hold_up_another_namespaces_first_read() {
    let mut seed = versions_of("slow", 300);
    seed.push_str("  - {name: other, value: fast}\n");
    let f = start(&seed).await;
    let (tx, _rx) = futures::channel::mpsc::unbounded();
    let (kv, _) = f.client("reader");
    let p = Poller::new(kv, Some(tx)).with_read_timeout(Duration::from_secs(3));
    let pins = pin_all(&f, "slow").await;
    read(&p, &f, "warm", "secrets: [{name: other}]").await; // the token is fetched
    f.fault(serde_json::json!({"op": "get_secret", "secret": "slow", "latencyMs": 1000}))
        .await;
    let other = spec(&f, "secrets: [{name: other}]");
    let (wa, wb) = (who_in("tenant-a", "pins"), who_in("tenant-b", "new"));
    let (_, b) = futures::join!(p.read(Some(&wa), &pins, REFRESH, false), async {
        // A's 300 reads are queued first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Force: a GET of its own, not the warm-up's cached value.
        p.read(Some(&wb), &other, REFRESH, true).await
    });
    let b = b.expect("B's first read is not queued behind A's pins");
    assert_eq!(value(&b.fetched["other"]), "fast");
}

#[tokio::test]
async fn an_unchanged_cycle_over_many_pins_of_one_name_costs_one_versions_listing() {
    // 25 versions: one page of the listing.
    let f = start(&versions_of("db", 25)).await;
    let (p, mut rx) = poller(&f, "reader");
    let pins = pin_all(&f, "db").await;
    let r = p
        .read(Some(&who("p")), &pins, REFRESH, false)
        .await
        .unwrap();
    assert_eq!(value(&r.fetched["k000"]), "db-0");
    for cycle in 0..2 {
        f.reset_stats().await;
        p.cycle().await.unwrap();
        let stats = f.stats().await;
        assert_eq!(stats.count("list_versions", 200), 1, "cycle {cycle}");
        assert_eq!(stats.total("get_secret"), 0, "cycle {cycle}: no GET");
    }
    assert!(woken(&mut rx).is_empty(), "nothing changed");
}

#[tokio::test]
async fn a_missing_pinned_version_is_not_read_again_next_cycle() {
    let f = start(&seed_of(1)).await;
    let (p, _rx) = poller(&f, "reader");
    let gone = "secrets: [{name: s000, version: 0123456789abcdef0123456789abcdef, optional: true}]";
    let r = read(&p, &f, "p", gone).await;
    assert!(
        matches!(r.fetched["s000"], Fetched::Missing),
        "{:?}",
        r.fetched
    );
    p.cycle().await.unwrap();
    f.reset_stats().await;
    p.cycle().await.unwrap();
    let stats = f.stats().await;
    assert_eq!(stats.total("get_secret"), 0, "not GET again");
    assert_eq!(
        stats.count("list_versions", 200),
        1,
        "re-checked by the listing"
    );
}
