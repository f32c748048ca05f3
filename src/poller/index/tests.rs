//! The index fed by hand: listings, GET answers and failures in; what
//! changed, whom to wake and what a binding reads out.
use super::*;
use crate::azure::keyvault::{ForbiddenKind, KeyVaultError, Operation, SecretAttributes};
use crate::plan::plan;

fn spec(yaml: &str) -> VaultSecretBindingSpec {
    serde_yaml::from_str(&format!("vaultUrl: https://v.vault.azure.net\n{yaml}")).unwrap()
}

fn who(name: &str) -> BindingRef {
    ObjectRef::new(name).within("ns")
}

fn item(name: &str, updated: i64) -> SecretItem {
    SecretItem {
        id: format!("https://v.vault.azure.net/secrets/{name}"),
        attributes: SecretAttributes {
            updated: Some(updated),
            ..Default::default()
        },
        tags: BTreeMap::new(),
        content_type: None,
        managed: None,
    }
}

fn got(version: &str, value: &str, updated: i64) -> Result<Got, Failure> {
    Ok(Got {
        value: SecretValue::new(value),
        version: version.into(),
        updated: Some(updated),
        expires: None,
    })
}

fn failed(e: KeyVaultError) -> Result<Got, Failure> {
    Err(Arc::new(e.into()))
}

fn forbidden(op: Operation) -> KeyVaultError {
    KeyVaultError::Forbidden {
        vault: "v".into(),
        who: "identity app".into(),
        operation: op,
        kind: ForbiddenKind::Rbac,
        detail: "ForbiddenByRbac".into(),
    }
}

fn not_found(name: &str) -> KeyVaultError {
    KeyVaultError::NotFound {
        vault: "v".into(),
        name: name.into(),
        version: None,
    }
}

fn throttled() -> KeyVaultError {
    KeyVaultError::Throttled {
        vault: "v".into(),
        attempts: 4,
    }
}

fn latest(name: &str) -> FetchKey {
    FetchKey::Latest(name.into())
}

/// An index with `bindings` registered (name, spec) and their plans set
/// from `listing`.
fn index(bindings: &[(&str, &str)], listing: &[SecretItem]) -> Index {
    let mut idx = Index::default();
    for (name, yaml) in bindings {
        let s = spec(yaml);
        idx.register(&who(name), &s, Duration::from_secs(300));
        idx.set_selected(&who(name), &plan(&s, listing).unwrap());
    }
    idx
}

fn answer(
    idx: &mut Index,
    name: &str,
    yaml: &str,
    listing: &[SecretItem],
) -> Result<BTreeMap<String, Fetched>, Unanswered> {
    let p = plan(&spec(yaml), listing).unwrap();
    idx.answer(Some(&who(name)), &p).map(|(f, _)| f)
}

fn woken(idx: &mut Index) -> Vec<String> {
    let mut names: Vec<String> = idx.take_wakes().into_iter().map(|w| w.name).collect();
    names.sort();
    names
}

const A: &str = "secrets: [{name: db-password}]";
const B: &str = "secrets: [{name: payroll-db, optional: true}]";

#[test]
fn another_bindings_forbidden_optional_pick_does_not_fail_this_one() {
    // The identity may read only db-password; b adds payroll-db.
    let mut idx = index(&[("a", A), ("b", B)], &[]);
    let now = Instant::now();
    idx.apply_get(&latest("db-password"), got("v1", "one", 100), 200, now);
    woken(&mut idx);
    let changes = idx.apply_get(
        &latest("payroll-db"),
        failed(forbidden(Operation::GetSecret)),
        200,
        now,
    );
    assert_eq!(changes.names, BTreeSet::from(["payroll-db".to_string()]));
    assert_eq!(woken(&mut idx), ["b"], "only the binding that asked for it");

    let a = answer(&mut idx, "a", A, &[]).expect("a is not failed by b's pick");
    assert!(matches!(&a["db-password"], Fetched::Value { value, .. } if value.expose() == "one"));
    let p = plan(&spec(B), &[]).unwrap();
    let (b, why) = idx.answer(Some(&who("b")), &p).expect("optional: b reads");
    assert!(matches!(
        &b["payroll-db"],
        Fetched::Unavailable {
            reason: Reason::VaultForbidden,
            ..
        }
    ));
    assert_eq!(why.len(), 1);

    // The same refusal again changes nothing and wakes nobody; a
    // rotation of db-password wakes a only.
    let later = now + Duration::from_secs(300);
    idx.apply_get(
        &latest("payroll-db"),
        failed(forbidden(Operation::GetSecret)),
        500,
        later,
    );
    assert!(woken(&mut idx).is_empty());
    idx.apply_get(&latest("db-password"), got("v2", "two", 450), 500, later);
    assert_eq!(woken(&mut idx), ["a"]);
}

#[test]
fn a_throttled_name_fails_only_the_bindings_that_require_it() {
    let mut idx = index(&[("a", A), ("c", "secrets: [{name: hot}]")], &[]);
    let now = Instant::now();
    idx.apply_get(&latest("db-password"), got("v1", "one", 100), 200, now);
    idx.apply_get(&latest("hot"), got("h1", "h", 100), 200, now);
    woken(&mut idx);
    idx.apply_get(&latest("hot"), failed(throttled()), 300, now);
    assert_eq!(woken(&mut idx), ["c"], "ok → failure wakes its binding");
    assert!(answer(&mut idx, "a", A, &[]).is_ok());
    match answer(&mut idx, "c", "secrets: [{name: hot}]", &[]) {
        Err(Unanswered::Failed(f)) => assert_eq!(f.reason(), Reason::VaultThrottled),
        other => panic!("expected the throttling, got {other:?}"),
    }
    idx.apply_get(&latest("hot"), got("h1", "h", 100), 400, now);
    assert_eq!(woken(&mut idx), ["c"], "failure → ok wakes it again");
}

#[test]
fn unchanged_listing_needs_no_get_and_wakes_nobody() {
    let listing = vec![item("db-password", 100), item("other", 100)];
    let mut idx = index(&[("a", A), ("all", "select: {all: true}")], &listing);
    let t0 = Instant::now();
    idx.apply_listing(Ok(listing.clone()), t0);
    for n in ["db-password", "other"] {
        idx.apply_get(&latest(n), got("v1", "x", 100), 200, t0);
    }
    woken(&mut idx);
    let t1 = t0 + Duration::from_secs(300);
    let changes = idx.apply_listing(Ok(listing), t1);
    assert!(changes.is_empty(), "{changes:?}");
    assert!(idx.after_listing().is_empty(), "nothing to GET");
    assert!(woken(&mut idx).is_empty());
}

#[test]
fn a_changed_item_is_read_and_wakes_only_its_bindings() {
    let listing = vec![item("db-password", 100), item("other", 100)];
    let mut idx = index(&[("a", A), ("o", "secrets: [{name: other}]")], &listing);
    let t0 = Instant::now();
    for n in ["db-password", "other"] {
        idx.apply_get(&latest(n), got("v1", "x", 100), 200, t0);
    }
    woken(&mut idx);
    let t1 = t0 + Duration::from_secs(300);
    idx.apply_listing(Ok(vec![item("db-password", 400), item("other", 100)]), t1);
    assert_eq!(idx.after_listing(), [latest("db-password")]);
    idx.apply_get(&latest("db-password"), got("v2", "y", 400), 500, t1);
    assert_eq!(woken(&mut idx), ["a"]);
    assert_eq!(
        idx.values.len(),
        2,
        "the replaced version's value is dropped"
    );
}

#[test]
fn a_name_absent_from_the_listing_is_read_not_reported_missing() {
    // The listing was taken before the secret was created.
    let stale = vec![item("other", 100)];
    let mut idx = index(&[("a", A)], &stale);
    let t0 = Instant::now();
    idx.apply_listing(Ok(stale.clone()), t0);
    let p = plan(&spec(A), &stale).unwrap();
    let keys = idx.fetches_for_read(
        &p,
        t0 + Duration::from_secs(10),
        Duration::from_secs(330),
        false,
    );
    assert_eq!(keys, [latest("db-password")], "read by GET");
    assert_eq!(
        idx.after_listing(),
        [latest("db-password")],
        "a cycle GETs it too"
    );
    assert!(
        matches!(answer(&mut idx, "a", A, &stale), Err(Unanswered::NotRead)),
        "never Missing before a GET says so"
    );

    // Only SecretNotFound makes it missing; a later listing without it
    // then confirms the miss without another GET.
    idx.apply_get(
        &latest("db-password"),
        failed(not_found("db-password")),
        200,
        t0,
    );
    assert!(matches!(
        answer(&mut idx, "a", A, &stale).unwrap()["db-password"],
        Fetched::Missing
    ));
    idx.apply_listing(Ok(stale), t0 + Duration::from_secs(300));
    assert!(idx.after_listing().is_empty());
}

#[test]
fn a_selected_name_gone_from_the_listing_leaves_the_select_without_a_get() {
    let listing = vec![item("a", 100), item("b", 100)];
    let mut idx = index(&[("all", "select: {all: true}")], &listing);
    let t0 = Instant::now();
    idx.apply_listing(Ok(listing), t0);
    for n in ["a", "b"] {
        idx.apply_get(&latest(n), got("v1", "x", 100), 200, t0);
    }
    woken(&mut idx);
    idx.apply_listing(Ok(vec![item("a", 100)]), t0 + Duration::from_secs(300));
    assert!(idx.after_listing().is_empty());
    assert_eq!(woken(&mut idx), ["all"]);
}

#[test]
fn the_one_second_rule_uses_the_vaults_clock() {
    let listing = vec![item("db-password", 100)];
    let mut idx = index(&[("a", A)], &listing);
    let t0 = Instant::now();
    // Served at vault second 100, the second the version was written:
    // another version may follow in that second with the same `updated`.
    idx.apply_get(&latest("db-password"), got("v1", "x", 100), 100, t0);
    idx.apply_listing(Ok(listing.clone()), t0 + Duration::from_secs(1));
    assert_eq!(
        idx.after_listing(),
        [latest("db-password")],
        "ambiguous: read again"
    );
    // Served at vault second 102: whatever the listing says at 100 is what we read.
    idx.apply_get(
        &latest("db-password"),
        got("v1", "x", 100),
        102,
        t0 + Duration::from_secs(2),
    );
    idx.apply_listing(Ok(listing), t0 + Duration::from_secs(3));
    assert!(idx.after_listing().is_empty());
}

#[test]
fn a_tag_change_that_makes_a_secret_match_wakes_its_select() {
    let mut tagged = item("s", 100);
    let listing = vec![item("s", 100)];
    let sel = "select: {tags: {team: ci}}";
    let mut idx = index(
        &[
            ("ci", sel),
            ("other", "select: {tags: {team: web}}"),
            ("a", A),
        ],
        &listing,
    );
    let t0 = Instant::now();
    idx.apply_listing(Ok(listing), t0);
    woken(&mut idx);
    tagged.tags.insert("team".into(), "ci".into());
    let changes = idx.apply_listing(Ok(vec![tagged]), t0 + Duration::from_secs(300));
    assert_eq!(changes.items.len(), 2, "old and new form");
    assert_eq!(woken(&mut idx), ["ci"]);
}

#[test]
fn list_forbidden_keeps_picks_on_gets_fails_selects_and_is_retried() {
    let mut idx = index(&[("a", A), ("all", "select: {all: true}")], &[]);
    let t0 = Instant::now();
    let refused: Failure = Arc::new(forbidden(Operation::ListSecrets).into());
    idx.apply_listing(Err(refused), t0);
    assert_eq!(woken(&mut idx), ["all"], "the select is told");
    assert!(
        matches!(idx.after_listing()[..], [FetchKey::Latest(ref n)] if n == "db-password"),
        "picks fall back to GET"
    );
    match idx.listing_for_read(
        t0 + Duration::from_secs(60),
        Duration::from_secs(330),
        false,
    ) {
        ListingNeed::Refused(f) => assert_eq!(f.reason(), Reason::ListForbidden),
        _ => panic!("a select read reports ListForbidden"),
    }
    for cycle in 1..=LIST_RETRY_CYCLES {
        let work = idx
            .cycle_work(t0 + Duration::from_secs(cycle as u64))
            .unwrap();
        assert!(!work.list, "cycle {cycle} does not list");
        assert_eq!(work.gets, [latest("db-password")]);
    }
    let work = idx.cycle_work(t0 + Duration::from_secs(11)).unwrap();
    assert!(work.list, "then the LIST is tried again");
    // Granted meanwhile: the select is woken and reads.
    idx.apply_listing(
        Ok(vec![item("db-password", 100)]),
        t0 + Duration::from_secs(12),
    );
    assert_eq!(woken(&mut idx), ["all"]);
    assert!(matches!(
        idx.listing_for_read(
            t0 + Duration::from_secs(13),
            Duration::from_secs(330),
            false
        ),
        ListingNeed::Fresh(_)
    ));
}

#[test]
fn a_refused_list_is_retried_after_ten_minutes_too() {
    let mut idx = index(&[("all", "select: {all: true}")], &[]);
    let t0 = Instant::now();
    idx.apply_listing(Err(Arc::new(forbidden(Operation::ListSecrets).into())), t0);
    assert!(!idx.cycle_work(t0 + Duration::from_secs(1)).unwrap().list);
    assert!(idx.cycle_work(t0 + LIST_RETRY_AFTER).unwrap().list);
}

fn version_item(name: &str, version: &str, enabled: bool) -> SecretItem {
    let mut i = item(&format!("{name}/{version}"), 100);
    i.attributes.enabled = Some(enabled);
    i
}

fn pinned(name: &str, version: &str) -> FetchKey {
    FetchKey::Pinned(name.into(), version.into())
}

fn who_in(ns: &str, name: &str) -> BindingRef {
    ObjectRef::new(name).within(ns)
}

/// `count` pins of `name`, versions v000…, as one spec.
fn pins(name: &str, count: usize) -> String {
    let mut s = String::from("secrets:\n");
    for i in 0..count {
        s.push_str(&format!(
            "  - {{name: {name}, version: v{i:03}, key: k{i:03}}}\n"
        ));
    }
    s
}

#[test]
fn pinned_versions_are_rechecked_by_their_names_listing_and_a_disable_wakes() {
    let pinned_spec = "secrets: [{name: db, version: abc}]";
    let mut idx = index(&[("p", pinned_spec)], &[]);
    let t0 = Instant::now();
    let key = pinned("db", "abc");
    idx.apply_get(&key, got("abc", "x", 100), 200, t0);
    woken(&mut idx);
    let work = idx.cycle_work(t0).unwrap();
    assert_eq!(work.gets, [FetchKey::Versions("db".into())]);
    assert!(!work.list, "a listing shows no pinned version");
    let changes = idx.apply_versions("db", Ok(vec![version_item("db", "abc", true)]), t0);
    assert!(changes.is_empty(), "unchanged: {changes:?}");
    assert!(
        idx.after_versions(t0).is_empty(),
        "its value is kept: no GET"
    );
    assert!(woken(&mut idx).is_empty());
    idx.apply_versions("db", Ok(vec![version_item("db", "abc", false)]), t0);
    assert_eq!(woken(&mut idx), ["p"]);
    assert!(matches!(
        answer(&mut idx, "p", pinned_spec, &[]).unwrap()["db"],
        Fetched::Disabled
    ));
    assert!(
        idx.values.is_empty(),
        "a disabled version's value is not kept"
    );
    // Enabled again: the cycle reads its value once more.
    idx.apply_versions("db", Ok(vec![version_item("db", "abc", true)]), t0);
    assert_eq!(idx.after_versions(t0), [key]);
}

#[test]
fn many_pins_of_one_name_cost_one_versions_listing_per_cycle() {
    let spec300 = pins("db", 300);
    let mut idx = index(&[("p", &spec300)], &[]);
    let t0 = Instant::now();
    let mut listing = Vec::new();
    for i in 0..300 {
        let v = format!("v{i:03}");
        idx.apply_get(&pinned("db", &v), got(&v, "x", 100), 200, t0);
        listing.push(version_item("db", &v, true));
    }
    woken(&mut idx);
    let work = idx.cycle_work(t0).unwrap();
    assert_eq!(
        work.gets,
        [FetchKey::Versions("db".into())],
        "one per name, not 300"
    );
    idx.apply_versions("db", Ok(listing), t0 + Duration::from_secs(1));
    assert!(idx.after_versions(t0).is_empty(), "no GET");
    assert!(woken(&mut idx).is_empty());
}

#[test]
fn a_missing_pinned_version_is_not_read_again_each_cycle() {
    let mut idx = index(&[("p", "secrets: [{name: db, version: gone}]")], &[]);
    let t0 = Instant::now();
    let nf = KeyVaultError::NotFound {
        vault: "v".into(),
        name: "db".into(),
        version: Some("gone".into()),
    };
    idx.apply_get(&pinned("db", "gone"), failed(nf), 200, t0);
    woken(&mut idx);
    let t1 = t0 + Duration::from_secs(300);
    let work = idx.cycle_work(t1).unwrap();
    assert_eq!(work.gets, [FetchKey::Versions("db".into())], "no GET of it");
    let changes = idx.apply_versions("db", Ok(vec![version_item("db", "other", true)]), t1);
    assert!(changes.is_empty(), "still missing: {changes:?}");
    assert!(idx.after_versions(t1).is_empty(), "not read again");
    // The secret itself deleted: still one listing, still no GET.
    idx.apply_versions("db", failed_items(not_found("db")), t1);
    assert!(idx.after_versions(t1).is_empty());
}

#[test]
fn a_read_pinned_version_the_listing_no_longer_shows_is_confirmed_by_a_get() {
    let pinned_spec = "secrets: [{name: db, version: abc}]";
    let mut idx = index(&[("p", pinned_spec)], &[]);
    let t0 = Instant::now();
    let key = pinned("db", "abc");
    idx.apply_get(&key, got("abc", "x", 100), 200, t0);
    woken(&mut idx);
    // A short (or oddly paged) listing without it: not "missing" on that
    // alone — a GET must tell, and until it answers the value is served.
    idx.apply_versions("db", Ok(vec![version_item("db", "other", true)]), t0);
    assert_eq!(
        idx.after_versions(t0),
        std::slice::from_ref(&key),
        "one GET confirms"
    );
    assert!(
        !matches!(
            answer(&mut idx, "p", pinned_spec, &[]).map(|a| a["db"].clone()),
            Ok(Fetched::Missing)
        ),
        "never missing on the listing's word alone"
    );
    // Azure's SecretNotFound makes it missing.
    let nf = KeyVaultError::NotFound {
        vault: "v".into(),
        name: "db".into(),
        version: Some("abc".into()),
    };
    idx.apply_get(&key, failed(nf), 300, t0);
    assert!(matches!(
        answer(&mut idx, "p", pinned_spec, &[]).unwrap()["db"],
        Fetched::Missing
    ));
}

fn failed_items(e: KeyVaultError) -> Result<Vec<SecretItem>, Failure> {
    Err(Arc::new(e.into()))
}

#[test]
fn a_refused_versions_listing_checks_pins_by_get_until_retried() {
    let mut idx = index(&[("p", &pins("db", 2))], &[]);
    let t0 = Instant::now();
    for v in ["v000", "v001"] {
        idx.apply_get(&pinned("db", v), got(v, "x", 100), 200, t0);
    }
    let t1 = t0 + Duration::from_secs(300);
    idx.apply_versions("db", failed_items(forbidden(Operation::ListVersions)), t1);
    assert_eq!(
        idx.after_versions(t1),
        [pinned("db", "v000"), pinned("db", "v001")],
        "this cycle falls back to GETs"
    );
    for cycle in 1..=LIST_RETRY_CYCLES {
        let work = idx.cycle_work(t0).unwrap();
        assert_eq!(work.gets.len(), 2, "cycle {cycle}: GETs, no listing");
    }
    let work = idx.cycle_work(t0).unwrap();
    assert_eq!(
        work.gets,
        [FetchKey::Versions("db".into())],
        "then listed again"
    );
}

#[test]
fn a_cycle_takes_one_request_per_namespace_per_turn() {
    let mut idx = Index::default();
    let mut a = String::from("secrets:\n");
    for n in ["a0", "a1", "a2", "a3"] {
        a.push_str(&format!("  - {{name: {n}, version: v1}}\n"));
    }
    let t = Duration::from_secs(300);
    idx.register(&who_in("tenant-a", "many"), &spec(&a), t);
    idx.register(
        &who_in("tenant-b", "one"),
        &spec("secrets: [{name: zz, version: v1}]"),
        t,
    );
    idx.register(
        &who_in("tenant-c", "shares"),
        &spec("secrets: [{name: a0, version: v1}, {name: c0, version: v1}]"),
        t,
    );
    let work = idx.cycle_work(Instant::now()).unwrap();
    let names: Vec<String> = work
        .gets
        .iter()
        .map(|k| match k {
            FetchKey::Versions(n) => n.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    // a takes a0 (which c needs too: sent once), b takes zz, c takes c0;
    // then a's other names.
    assert_eq!(names, ["a0", "zz", "c0", "a1", "a2", "a3"]);
}

#[test]
fn a_shed_read_keeps_nothing_only_it_needed() {
    let all = "select: {all: true}";
    let listing = vec![item("big", 100), item("shared", 100)];
    let mut idx = index(
        &[("all", all), ("a", "secrets: [{name: shared}]")],
        &listing,
    );
    let t0 = Instant::now();
    let p = plan(&spec(all), &listing).unwrap();
    let id = idx.open_read(Some(&who("all")));
    for k in &p.keys {
        idx.protect(id, k);
    }
    idx.apply_get(&latest("big"), got("v1", &"x".repeat(1000), 100), 200, t0);
    idx.apply_get(&latest("shared"), got("v1", "s", 100), 200, t0);
    assert_eq!(idx.cached_bytes(), 1001);
    idx.shed_read(id);
    idx.close_read(id);
    assert_eq!(idx.cached_bytes(), 1, "only what binding a uses is kept");
    let work = idx.cycle_work(t0).unwrap();
    assert!(work.list, "the select still hears of listing changes");
    assert_eq!(
        idx.interests.needed_latest(),
        BTreeSet::from(["shared".to_string()])
    );
}

#[test]
fn answered_bytes_count_key_and_value() {
    let mut idx = index(&[("a", A)], &[]);
    let p = plan(&spec(A), &[]).unwrap();
    assert_eq!(idx.answered_bytes(&p.keys[0]), 0, "not read");
    idx.apply_get(
        &latest("db-password"),
        got("v1", "12345", 100),
        200,
        Instant::now(),
    );
    assert_eq!(idx.answered_bytes(&p.keys[0]), "db-password".len() + 5);
}

#[test]
fn a_reading_binding_is_woken_only_for_what_it_did_not_see() {
    let mut idx = index(&[("a", A)], &[]);
    let t0 = Instant::now();
    idx.begin_read(&who("a"));
    idx.apply_get(&latest("db-password"), got("v1", "x", 100), 200, t0);
    answer(&mut idx, "a", A, &[]).unwrap();
    idx.end_read(&who("a"));
    assert!(
        woken(&mut idx).is_empty(),
        "its own first read is no change to it"
    );

    idx.begin_read(&who("a"));
    answer(&mut idx, "a", A, &[]).unwrap();
    idx.apply_get(&latest("db-password"), got("v2", "y", 300), 400, t0);
    assert!(woken(&mut idx).is_empty(), "not while reading");
    idx.end_read(&who("a"));
    assert_eq!(
        woken(&mut idx),
        ["a"],
        "it answered before the change: woken"
    );
}

#[test]
fn forgetting_removes_everything_kept_for_a_binding() {
    let pinned = "secrets: [{name: db, version: abc}, {name: db-password}]";
    let mut idx = index(&[("a", A), ("p", pinned)], &[]);
    let t0 = Instant::now();
    idx.apply_get(&latest("db-password"), got("v1", "x", 100), 200, t0);
    idx.apply_get(
        &FetchKey::Pinned("db".into(), "abc".into()),
        got("abc", "y", 100),
        200,
        t0,
    );
    idx.retain(|w| w.name != "p");
    assert_eq!(idx.len(), 1);
    assert!(idx.pinned.is_empty());
    assert_eq!(idx.values.len(), 1, "only db-password's value is left");
    idx.forget(&who("a"));
    assert!(idx.is_empty());
    assert!(idx.latest.is_empty() && idx.values.is_empty() && idx.listing.is_none());
}

#[test]
fn the_listing_keeps_only_what_change_detection_needs() {
    let mut full = item("s", 100);
    full.content_type = Some("text/plain".into());
    full.attributes.recovery_level = Some("Recoverable+Purgeable".into());
    full.tags.insert("team".into(), "ci".into());
    let mut idx = index(&[("a", "secrets: [{name: s}]")], &[]);
    idx.apply_listing(Ok(vec![full.clone()]), Instant::now());
    let kept = &idx.listing.as_ref().unwrap().items[0];
    assert_eq!(kept.content_type, None);
    assert_eq!(kept.attributes.recovery_level, None);
    assert!(kept.tags.is_empty(), "no select: no tags");
    assert_eq!(kept.attributes.updated, Some(100));
}

#[test]
fn a_changed_spec_moves_its_wakes_to_its_new_names() {
    let mut idx = index(&[("a", A)], &[]);
    let t0 = Instant::now();
    idx.register(
        &who("a"),
        &spec("secrets: [{name: other}]"),
        Duration::from_secs(300),
    );
    idx.apply_get(&latest("db-password"), got("v1", "x", 100), 200, t0);
    assert!(woken(&mut idx).is_empty(), "a no longer uses db-password");
    idx.apply_get(&latest("other"), got("v1", "x", 100), 200, t0);
    assert_eq!(woken(&mut idx), ["a"]);
    idx.prune();
    assert!(
        !idx.latest.contains_key("db-password"),
        "nobody needs it: pruned"
    );
}

#[test]
fn a_failing_listing_fails_selects_and_sends_picks_to_get() {
    let mut idx = index(&[("a", A), ("all", "select: {all: true}")], &[]);
    let t0 = Instant::now();
    let down: Failure = Arc::new(
        KeyVaultError::Server {
            vault: "v".into(),
            status: 503,
            code: "ServiceUnavailable".into(),
            detail: String::new(),
            attempts: 4,
        }
        .into(),
    );
    idx.apply_listing(Err(down), t0);
    assert_eq!(woken(&mut idx), ["all"]);
    assert_eq!(idx.after_listing(), [latest("db-password")]);
    assert!(idx.failing(), "the cycle comes back sooner");
    match idx.listing_for_read(t0, Duration::from_secs(330), false) {
        ListingNeed::Refused(f) => assert_eq!(f.reason(), Reason::VaultUnavailable),
        _ => panic!("a failure stands for a few seconds"),
    }
    assert!(matches!(
        idx.listing_for_read(t0 + FAILURE_TTL, Duration::from_secs(330), false),
        ListingNeed::Fetch
    ));
}

#[test]
fn a_select_read_without_a_registered_binding_keeps_tags() {
    // `kvsync check` reads without registering.
    let mut idx = Index::default();
    let mut tagged = item("s", 100);
    tagged.tags.insert("team".into(), "ci".into());
    assert!(matches!(
        idx.listing_for_read(Instant::now(), Duration::from_secs(330), false),
        ListingNeed::Fetch
    ));
    idx.apply_listing(Ok(vec![tagged]), Instant::now());
    let items = idx.listing_after_fetch().unwrap();
    assert_eq!(items[0].tags.get("team").map(String::as_str), Some("ci"));
}

#[test]
fn listing_is_chosen_when_pages_are_fewer_than_gets() {
    assert_eq!(choose_plan(5, Some(40), true, false), CyclePlan::List); // 2 pages < 5 GETs
    assert_eq!(choose_plan(2, Some(1000), true, false), CyclePlan::Get); // 40 pages > 2 GETs
    assert_eq!(choose_plan(2, Some(50), true, false), CyclePlan::Get); // 2 pages == 2 GETs: GET is as cheap
    assert_eq!(choose_plan(3, None, true, false), CyclePlan::List); // unknown size: one page is likely
}

#[test]
fn listing_is_required_by_select_and_skipped_when_forbidden() {
    assert_eq!(choose_plan(0, Some(1000), true, true), CyclePlan::List);
    assert_eq!(choose_plan(50, Some(10), false, false), CyclePlan::Get);
    assert_eq!(choose_plan(0, None, true, false), CyclePlan::Idle);
}
