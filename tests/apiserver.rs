//! The in-memory API server stand-in (tests/support/apiserver.rs) follows
//! the Kubernetes API semantics kvsync relies on: each test drives it with
//! a real `kube::Client` over HTTP, as `kvsync run` does.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::time::Duration;

use apiserver::ApiServer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use kvsync::crd::VaultSecretBinding;
use serde_json::{Value, json};

const NS: &str = "ns";

async fn server() -> (ApiServer, kube::Client) {
    let api = ApiServer::start().await;
    api.create_namespace(NS);
    let client = api.client();
    (api, client)
}

fn secret(name: &str, labels: Value) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "dg=="},
    }))
    .unwrap()
}

fn binding(name: &str) -> VaultSecretBinding {
    serde_json::from_value(json!({
        "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"vaultUrl": "https://a.vault.azure.net", "secrets": [{"name": "s"}]},
        "status": {"dataHash": "set-by-the-client"},
    }))
    .unwrap()
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other}"),
    }
}

/// The next watch event, within a deadline (the stand-in is in process).
async fn next<T>(stream: &mut (impl futures::Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
}

#[tokio::test]
async fn lists_are_paged_with_limit_and_continue_at_one_resource_version() {
    let (_api, client) = server().await;
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    for i in 0..7 {
        secrets
            .create(&PostParams::default(), &secret(&format!("s{i}"), json!({})))
            .await
            .unwrap();
    }
    let first = secrets.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let rv = first.metadata.resource_version.clone().unwrap();
    let mut names: Vec<String> = first.items.iter().map(|s| s.name_any()).collect();
    let mut cont = Some(token);
    while let Some(c) = cont {
        let page = secrets
            .list(&ListParams::default().limit(3).continue_token(&c))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        names.extend(page.items.iter().map(|s| s.name_any()));
        cont = page.metadata.continue_.filter(|c| !c.is_empty());
    }
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4", "s5", "s6"]);
    let all = secrets.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 7);
    assert!(all.metadata.continue_.is_none());
}

#[tokio::test]
async fn a_watch_delivers_every_change_after_its_resource_version() {
    let (_api, client) = server().await;
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    secrets
        .create(&PostParams::default(), &secret("before", json!({})))
        .await
        .unwrap();
    let rv = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = secrets
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    secrets
        .create(&PostParams::default(), &secret("a", json!({})))
        .await
        .unwrap();
    secrets
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "dzI="}})),
        )
        .await
        .unwrap();
    secrets.delete("a", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match next(&mut stream).await.unwrap() {
            WatchEvent::Added(s) => seen.push(format!("added {}", s.name_any())),
            WatchEvent::Modified(s) => seen.push(format!(
                "modified {} {:?}",
                s.name_any(),
                s.data.unwrap()["k"].0
            )),
            WatchEvent::Deleted(s) => seen.push(format!("deleted {}", s.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, ["added a", "modified a [119, 50]", "deleted a"]);
}

#[tokio::test]
async fn an_idle_watch_gets_bookmarks() {
    let api = ApiServer::start_with(1000, Duration::from_millis(50)).await;
    api.create_namespace(NS);
    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    let rv = api.resource_version().to_string();
    let mut stream = secrets
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_from_before_the_history_is_expired() {
    let api = ApiServer::start_with(2, Duration::from_secs(10)).await;
    api.create_namespace(NS);
    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    for i in 0..4 {
        secrets
            .create(&PostParams::default(), &secret(&format!("s{i}"), json!({})))
            .await
            .unwrap();
    }
    let mut stream = secrets
        .watch(&WatchParams::default().timeout(30), "1")
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn metadata_only_lists_watches_and_gets_carry_no_data() {
    let (_api, client) = server().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let meta: Api<PartialObjectMeta<Secret>> = Api::namespaced(client, NS);
    secrets
        .create(&PostParams::default(), &secret("m", json!({"app": "x"})))
        .await
        .unwrap();
    let list = secrets.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].labels()["app"], "x");
    assert!(list.items[0].metadata.uid.is_some());
    let one = secrets.get_metadata("m").await.unwrap();
    assert_eq!(
        one.types.as_ref().unwrap().kind,
        "PartialObjectMetadata",
        "a metadata-only answer is a PartialObjectMetadata"
    );
    // The reflector path kvsync uses: a metadata watcher.
    let mut events = watcher::watcher(meta, watcher::Config::default()).boxed();
    let mut names = Vec::new();
    loop {
        match next(&mut events).await.unwrap() {
            watcher::Event::InitApply(m) => names.push(m.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, ["m"]);
    secrets
        .patch(
            "m",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}})),
        )
        .await
        .unwrap();
    match next(&mut events).await.unwrap() {
        watcher::Event::Apply(m) => assert_eq!(m.annotations()["a"], "b"),
        other => panic!("expected an apply, got {other:?}"),
    }
}

#[tokio::test]
async fn label_selectors_filter_lists_and_watches_see_objects_leave_the_selection() {
    let (_api, client) = server().await;
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    secrets
        .create(
            &PostParams::default(),
            &secret("in", json!({"managed": "yes"})),
        )
        .await
        .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &secret("out", json!({"managed": "no"})),
        )
        .await
        .unwrap();
    let selected = secrets
        .list(&ListParams::default().labels("managed=yes"))
        .await
        .unwrap();
    let names: Vec<String> = selected.items.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, ["in"]);
    for (selector, expected) in [
        ("managed!=yes", vec!["out"]),
        ("managed in (yes,no)", vec!["in", "out"]),
        ("managed notin (yes)", vec!["out"]),
        ("!managed", vec![]),
        ("managed", vec!["in", "out"]),
    ] {
        let got: Vec<String> = secrets
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
            .iter()
            .map(|s| s.name_any())
            .collect();
        assert_eq!(got, expected, "{selector}");
    }
    let rv = selected.metadata.resource_version.unwrap();
    let mut stream = secrets
        .watch(
            &WatchParams::default().labels("managed=yes").timeout(30),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    secrets
        .patch(
            "out",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"managed": "yes"}}})),
        )
        .await
        .unwrap();
    secrets
        .patch(
            "in",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"managed": null}}})),
        )
        .await
        .unwrap();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Added(s) => assert_eq!(s.name_any(), "out", "it joined the selection"),
        other => panic!("{other:?}"),
    }
    match next(&mut stream).await.unwrap() {
        WatchEvent::Deleted(s) => assert_eq!(s.name_any(), "in", "it left the selection"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_side_apply_creates_then_merges_and_a_no_op_keeps_the_resource_version() {
    let (_api, client) = server().await;
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    let apply = |data: Value| {
        Patch::Apply(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "ssa", "labels": {"l": "1"}},
            "data": data,
        }))
    };
    let params = PatchParams::apply("kvsync").force();
    let created = secrets
        .patch("ssa", &params, &apply(json!({"a": "MQ=="})))
        .await
        .unwrap();
    assert!(created.uid().is_some());
    assert!(created.creation_timestamp().is_some());
    assert_eq!(
        created.managed_fields()[0].manager.as_deref(),
        Some("kvsync")
    );
    assert_eq!(
        created.managed_fields()[0].operation.as_deref(),
        Some("Apply")
    );
    let updated = secrets
        .patch("ssa", &params, &apply(json!({"b": "Mg=="})))
        .await
        .unwrap();
    let keys: Vec<&String> = updated.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["a", "b"], "the applied fields are merged in");
    assert_ne!(updated.resource_version(), created.resource_version());
    let again = secrets
        .patch("ssa", &params, &apply(json!({"b": "Mg=="})))
        .await
        .unwrap();
    assert_eq!(
        again.resource_version(),
        updated.resource_version(),
        "an apply that changes nothing is no write"
    );
    let err = secrets
        .patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret"})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).code, 400, "apply needs a field manager");
}

#[tokio::test]
async fn an_apply_with_a_resource_version_never_creates() {
    let (_api, client) = server().await;
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    let err = secrets
        .patch(
            "gone",
            &PatchParams::apply("m"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "gone", "resourceVersion": "5"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).code, 409);
    assert!(secrets.get_opt("gone").await.unwrap().is_none());
}

#[tokio::test]
async fn the_status_subresource_writes_only_status_and_spec_changes_bump_generation() {
    let (api, client) = server().await;
    let bindings: Api<VaultSecretBinding> = Api::namespaced(client, NS);
    let created = bindings
        .create(&PostParams::default(), &binding("b"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "status is not set on create");
    let patched = bindings
        .patch_status(
            "b",
            &PatchParams::apply("kvsync").force(),
            &Patch::Apply(json!({
                "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
                "spec": {"vaultUrl": "https://evil.vault.azure.net", "secrets": []},
                "status": {"observedGeneration": 1, "dataHash": "h"},
            })),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.vault_url, "https://a.vault.azure.net");
    assert_eq!(patched.metadata.generation, Some(1));
    assert_eq!(
        patched.status.as_ref().unwrap().data_hash.as_deref(),
        Some("h")
    );
    assert_ne!(patched.resource_version(), created.resource_version());
    let stored = api.get("vaultsecretbindings", NS, "b").unwrap();
    assert!(
        stored["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["manager"] == "kvsync" && m["subresource"] == "status"),
        "{stored}"
    );
    let spec_changed = bindings
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"refreshInterval": "1m"}, "status": {"dataHash": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(spec_changed.metadata.generation, Some(2));
    assert_eq!(
        spec_changed.status.unwrap().data_hash.as_deref(),
        Some("h"),
        "the resource's own writes leave status alone"
    );
    let labelled = bindings
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        labelled.metadata.generation,
        Some(2),
        "metadata is not spec"
    );
}

#[tokio::test]
async fn a_merge_patch_with_a_stale_resource_version_is_a_conflict() {
    let (_api, client) = server().await;
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    let s = secrets
        .create(&PostParams::default(), &secret("c", json!({})))
        .await
        .unwrap();
    let rv = s.resource_version().unwrap();
    secrets
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": rv, "labels": {"a": "1"}}})),
        )
        .await
        .unwrap();
    let err = secrets
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": rv, "labels": {"a": "2"}}})),
        )
        .await
        .unwrap_err();
    let status = api_error(err);
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");
    assert!(
        status.message.contains("the object has been modified"),
        "{}",
        status.message
    );
    let mut stale = s.clone();
    stale.metadata.labels = None;
    let err = secrets
        .replace("c", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(
        api_error(err).code,
        409,
        "a PUT with a stale resourceVersion"
    );
}

#[tokio::test]
async fn errors_are_status_bodies_like_the_real_servers() {
    let (_api, client) = server().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let missing = api_error(secrets.get("nope").await.unwrap_err());
    assert_eq!(missing.code, 404);
    assert_eq!(missing.reason, "NotFound");
    assert_eq!(missing.message, r#"secrets "nope" not found"#);
    assert_eq!(missing.details.unwrap().name, "nope");
    secrets
        .create(&PostParams::default(), &secret("twice", json!({})))
        .await
        .unwrap();
    let dup = api_error(
        secrets
            .create(&PostParams::default(), &secret("twice", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(dup.code, 409);
    assert_eq!(dup.reason, "AlreadyExists");
    assert_eq!(dup.message, r#"secrets "twice" already exists"#);
    let bindings: Api<VaultSecretBinding> = Api::namespaced(client.clone(), NS);
    let b = api_error(bindings.get("nope").await.unwrap_err());
    assert_eq!(
        b.message,
        r#"vaultsecretbindings.kvsync.io "nope" not found"#
    );
    let elsewhere: Api<Secret> = Api::namespaced(client, "no-such-namespace");
    let ns = api_error(
        elsewhere
            .create(&PostParams::default(), &secret("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(ns.code, 404);
    assert_eq!(ns.message, r#"namespaces "no-such-namespace" not found"#);
}

#[tokio::test]
async fn a_finalizer_holds_a_deletion_until_it_is_removed() {
    let (_api, client) = server().await;
    let bindings: Api<VaultSecretBinding> = Api::namespaced(client, NS);
    let mut b = binding("f");
    b.metadata.finalizers = Some(vec!["kvsync.io/merge".into()]);
    bindings.create(&PostParams::default(), &b).await.unwrap();
    bindings
        .delete("f", &DeleteParams::default())
        .await
        .unwrap();
    let deleting = bindings.get("f").await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let rv = deleting.resource_version().unwrap();
    let mut stream = bindings
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    bindings
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": [], "resourceVersion": rv}})),
        )
        .await
        .unwrap();
    assert!(bindings.get_opt("f").await.unwrap().is_none());
    match next(&mut stream).await.unwrap() {
        WatchEvent::Deleted(d) => assert_eq!(d.name_any(), "f"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_delete_precondition_that_does_not_hold_is_a_conflict() {
    let (_api, client) = server().await;
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    secrets
        .create(&PostParams::default(), &secret("p", json!({})))
        .await
        .unwrap();
    let err = secrets
        .delete(
            "p",
            &DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some("someone-else".into()),
                    resource_version: None,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).code, 409);
    assert!(secrets.get_opt("p").await.unwrap().is_some());
}

#[tokio::test]
async fn requests_are_counted_by_verb_resource_and_subresource() {
    let (api, client) = server().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let bindings: Api<VaultSecretBinding> = Api::namespaced(client, NS);
    secrets
        .create(&PostParams::default(), &secret("n", json!({})))
        .await
        .unwrap();
    secrets.get("n").await.unwrap();
    secrets.get_metadata("n").await.unwrap();
    secrets.list(&ListParams::default()).await.unwrap();
    secrets
        .patch(
            "n",
            &PatchParams::apply("m"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret"})),
        )
        .await
        .unwrap();
    bindings
        .create(&PostParams::default(), &binding("b"))
        .await
        .unwrap();
    bindings
        .patch_status(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"dataHash": "h"}})),
        )
        .await
        .unwrap();
    secrets.delete("n", &DeleteParams::default()).await.unwrap();
    assert_eq!(api.count("create", "secrets", ""), 1);
    assert_eq!(api.count("get", "secrets", ""), 2);
    assert_eq!(api.count("list", "secrets", ""), 1);
    assert_eq!(api.count("apply", "secrets", ""), 1);
    assert_eq!(api.count("delete", "secrets", ""), 1);
    assert_eq!(api.count("patch", "vaultsecretbindings", "status"), 1);
    assert_eq!(api.count("create", "vaultsecretbindings", ""), 1);
    api.reset_counts();
    assert!(api.counts().is_empty());
}

#[tokio::test]
async fn in_process_creates_are_watched_like_any_other_and_observed() {
    let (api, client) = server().await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    api.observe(move |w| {
        record.lock().unwrap().push(format!(
            "{} {}/{} {}",
            w.verb, w.resource, w.subresource, w.name
        ))
    });
    let bindings: Api<VaultSecretBinding> = Api::namespaced(client, NS);
    let mut events = watcher::watcher(bindings.clone(), watcher::Config::default()).boxed();
    loop {
        if let watcher::Event::InitDone = next(&mut events).await.unwrap() {
            break;
        }
    }
    let b = api
        .create(serde_json::to_value(binding("direct")).unwrap())
        .unwrap();
    assert_eq!(
        b["status"]["dataHash"], "set-by-the-client",
        "an in-process create keeps the status it is given"
    );
    match next(&mut events).await.unwrap() {
        watcher::Event::Apply(b) => assert_eq!(b.name_any(), "direct"),
        other => panic!("{other:?}"),
    }
    bindings
        .patch_status(
            "direct",
            &PatchParams::apply("kvsync"),
            &Patch::Apply(json!({"status": {"dataHash": "z"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "create vaultsecretbindings/ direct",
            "apply vaultsecretbindings/status direct"
        ]
    );
    assert_eq!(
        api.count("create", "vaultsecretbindings", ""),
        0,
        "not a request"
    );
}
