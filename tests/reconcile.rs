//! The reconcile's Kubernetes I/O against a scripted mock API server (kube's
//! tower-test pattern) and the vault side against an in-process dev vault.
//! Each scenario lists the exact requests it expects, in order.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::{reflector, watcher};
use kvsync::azure::AzureAccess;
use kvsync::crd::VaultSecretBinding;
use kvsync::poller::Pollers;
use kvsync::reconcile::{Context, Settings, reconcile};
use serde_json::{Value, json};
use support::mock::{Handle, expect};
use support::{Fixture, fast_retry, start};

struct Scenario {
    ctx: Arc<Context>,
    handle: Handle,
}

fn scenario(f: &Fixture) -> Scenario {
    scenario_with_cooldown(f, Duration::ZERO)
}

fn scenario_with_cooldown(f: &Fixture, force_sync_cooldown: Duration) -> Scenario {
    scenario_as(f, force_sync_cooldown, |ctx| ctx.without_start_spread())
}

/// A scenario whose context is finished by `build` (caches, start spread).
fn scenario_as(
    f: &Fixture,
    force_sync_cooldown: Duration,
    build: impl FnOnce(Context) -> Context,
) -> Scenario {
    let (client, handle) = support::mock::client();
    let access = Arc::new(AzureAccess::new(
        f.http.clone(),
        f.policy(),
        f.env("operator-app", "system:serviceaccount:kvsync:kvsync"),
        fast_retry(),
    ));
    let recorder = kvsync::events::Events::new(client.clone(), "kvsync", None);
    let ctx = Arc::new(build(Context::new(
        client,
        access,
        Pollers::new(None),
        recorder,
        Settings {
            default_refresh: Duration::from_secs(300),
            rollout_window: Duration::from_secs(30),
            hash_key: kvsync::hashkey::HashKey::new(b"test-key"),
            force_sync_cooldown,
            status_heartbeat: Duration::from_secs(900),
            concurrency: 8,
            access_policy: kvsync::policy::Mode::Open,
        },
        Arc::new(kvsync::metrics::Metrics::default()),
    )));
    Scenario { ctx, handle }
}

fn binding(f: &Fixture, status: Value) -> VaultSecretBinding {
    serde_json::from_value(json!({
        "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
        "metadata": {"name": "agent", "namespace": "ci", "uid": "uid-1", "generation": 1, "resourceVersion": "10"},
        "spec": {"vaultUrl": f.vault.url(), "secrets": [{"name": "db-password", "key": "DB_PASSWORD"}]},
        "status": status,
    }))
    .unwrap()
}

/// What the API server answers to a status patch: the binding.
fn reply() -> Value {
    json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
           "metadata": {"name": "agent", "namespace": "ci", "uid": "uid-1", "generation": 1},
           "spec": {"vaultUrl": "https://x.vault.azure.net", "secrets": [{"name": "db-password"}]}})
}

const SECRET_PATH: &str = "/api/v1/namespaces/ci/secrets/agent";
const STATUS_PATH: &str = "/apis/kvsync.io/v1alpha1/namespaces/ci/vaultsecretbindings/agent/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/ci/events";

fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "secrets \"agent\" not found"})
}

fn managed_secret(value_b64: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": "agent", "namespace": "ci", "resourceVersion": "5",
                        "labels": {"app.kubernetes.io/managed-by": "kvsync"},
                        "annotations": {"kvsync.io/binding": "agent"},
                        "ownerReferences": [{"apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding", "name": "agent", "uid": "uid-1", "controller": true, "blockOwnerDeletion": true}]},
           "data": {"DB_PASSWORD": value_b64}})
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The Secret is read holding `current`, then applied holding `new`.
async fn expect_get_then_apply(handle: &mut Handle, current: &str, new: &str) {
    expect(
        handle,
        "GET",
        SECRET_PATH,
        200,
        managed_secret(&b64(current)),
    )
    .await;
    let (_, applied) = expect(handle, "PATCH", SECRET_PATH, 200, managed_secret(&b64(new))).await;
    assert_eq!(applied["data"]["DB_PASSWORD"], b64(new));
}

async fn no_more_requests(scenario: Scenario) {
    let Scenario { ctx, mut handle } = scenario;
    drop(ctx);
    assert!(
        handle.next_request().await.is_none(),
        "no further request expected"
    );
}

#[tokio::test]
async fn first_sync_applies_the_secret_then_writes_status() {
    let f = start("secrets:\n  - {name: db-password, value: first-value}\n").await;
    let mut s = scenario(&f);
    let b = Arc::new(binding(&f, json!(null)));
    let run = tokio::spawn(reconcile(b.clone(), s.ctx.clone()));

    expect(&mut s.handle, "GET", SECRET_PATH, 404, not_found()).await;
    let (query, applied) = expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64("first-value")),
    )
    .await;
    assert!(
        query.contains("fieldManager=kvsync") && query.contains("force=true"),
        "{query}"
    );
    assert_eq!(applied["data"]["DB_PASSWORD"], b64("first-value"));
    assert_eq!(applied["type"], "Opaque");
    assert_eq!(
        applied["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kvsync"
    );
    assert_eq!(applied["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert_eq!(
        applied["metadata"]["ownerReferences"][0]["controller"],
        true
    );
    let (_, event) = expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    assert_eq!(event["reason"], "Synced");
    assert!(!event.to_string().contains("first-value"));
    let (status_query, status) = expect(
        &mut s.handle,
        "PATCH",
        STATUS_PATH,
        200,
        serde_json::to_value(&*b).unwrap(),
    )
    .await;
    assert!(
        status_query.contains("fieldManager=kvsync"),
        "status is applied server-side: {status_query}"
    );
    assert_eq!(status["kind"], "VaultSecretBinding");
    let st = &status["status"];
    assert_eq!(st["conditions"][0]["type"], "Ready");
    assert_eq!(st["conditions"][0]["status"], "True");
    assert_eq!(st["conditions"][0]["reason"], "Synced");
    assert_eq!(st["secrets"][0]["name"], "db-password");
    assert_eq!(st["secrets"][0]["key"], "DB_PASSWORD");
    assert_eq!(st["secrets"][0]["version"].as_str().unwrap().len(), 32);
    assert_eq!(st["observedGeneration"], 1);
    assert!(st["dataHash"].as_str().unwrap().starts_with("hmac-sha256:"));
    assert!(
        !status.to_string().contains("first-value"),
        "no value in the status"
    );

    run.await.unwrap().unwrap();
    no_more_requests(s).await;
}

async fn synced_status(f: &Fixture, value: &str) -> Value {
    // What the first sync wrote, to start the later scenarios from.
    let mut s = scenario(f);
    let b = Arc::new(binding(f, json!(null)));
    let run = tokio::spawn(reconcile(b.clone(), s.ctx.clone()));
    expect(&mut s.handle, "GET", SECRET_PATH, 404, not_found()).await;
    expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64(value)),
    )
    .await;
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    run.await.unwrap().unwrap();
    status["status"].clone()
}

#[tokio::test]
async fn unchanged_vault_and_secret_make_no_write() {
    let f = start("secrets:\n  - {name: db-password, value: same-value}\n").await;
    let status = synced_status(&f, "same-value").await;
    f.reset_stats().await;
    let mut s = scenario(&f);
    let b = Arc::new(binding(&f, status));
    let run = tokio::spawn(reconcile(b, s.ctx.clone()));
    expect(
        &mut s.handle,
        "GET",
        SECRET_PATH,
        200,
        managed_secret(&b64("same-value")),
    )
    .await;
    run.await.unwrap().unwrap();
    no_more_requests(s).await;
}

/// What kvsync's metadata watch of the managed Secrets would hold: Secret
/// `agent` at `rv`, listed. Later watch events go to the same value.
fn secret_cache(
    rv: &str,
) -> (
    kvsync::reconcile::SecretCache,
    kvsync::reconcile::SecretCache,
) {
    let versions = kvsync::reconcile::SecretCache::new();
    versions.observe(&Ok(watcher::Event::Init));
    versions.observe(&Ok(watcher::Event::InitApply(secret_meta(rv))));
    versions.observe(&Ok(watcher::Event::InitDone));
    (versions.clone(), versions)
}

fn secret_meta(rv: &str) -> PartialObjectMeta<Secret> {
    let mut meta: PartialObjectMeta<Secret> = serde_json::from_value(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": managed_secret("")["metadata"].clone(),
    }))
    .unwrap();
    meta.metadata.resource_version = Some(rv.to_string());
    meta
}

/// An empty, listed cache of ServiceAccounts.
fn no_service_accounts() -> kvsync::azure::identity::ServiceAccountCache {
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

#[tokio::test]
async fn a_secret_still_at_the_version_kvsync_wrote_is_not_read() {
    let f = start("secrets:\n  - {name: db-password, value: same-value}\n").await;
    let status = synced_status(&f, "same-value").await;
    assert_eq!(
        status["secretResourceVersion"], "5",
        "what the apply answered"
    );
    let (cache, watch) = secret_cache("5");
    let mut s = scenario_as(&f, Duration::ZERO, |ctx| {
        ctx.without_start_spread()
            .with_caches(cache, no_service_accounts())
    });
    let b = Arc::new(binding(&f, status));
    // Unchanged vault, Secret untouched since: no request at all (the mock
    // answers none, so one would hang here).
    reconcile(b.clone(), s.ctx.clone()).await.unwrap();

    // Someone edits the Secret: the watch shows a new version, so the next
    // check reads it and puts the value back.
    watch.observe(&Ok(watcher::Event::Apply(secret_meta("6"))));
    let run = tokio::spawn(reconcile(b, s.ctx.clone()));
    let mut edited = managed_secret(&b64("edited-by-hand"));
    edited["metadata"]["resourceVersion"] = json!("6");
    expect(&mut s.handle, "GET", SECRET_PATH, 200, edited).await;
    let mut repaired = managed_secret(&b64("same-value"));
    repaired["metadata"]["resourceVersion"] = json!("7");
    let (_, applied) = expect(&mut s.handle, "PATCH", SECRET_PATH, 200, repaired).await;
    assert_eq!(applied["data"]["DB_PASSWORD"], b64("same-value"));
    let (_, event) = expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    assert_eq!(event["reason"], "Repaired");
    let (_, patched) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert_eq!(
        patched["status"]["secretResourceVersion"], "7",
        "the version the repair wrote"
    );
    run.await.unwrap().unwrap();
    no_more_requests(s).await;
}

#[tokio::test]
async fn a_watch_that_stopped_does_not_vouch_for_the_secret() {
    let f = start("secrets:\n  - {name: db-password, value: same-value}\n").await;
    let status = synced_status(&f, "same-value").await;
    let (cache, watch) = secret_cache("5");
    let mut s = scenario_as(&f, Duration::ZERO, |ctx| {
        ctx.without_start_spread()
            .with_caches(cache, no_service_accounts())
    });
    // The watch is re-listing (or failed): what it holds may be old.
    watch.observe(&Ok(watcher::Event::Init));
    let run = tokio::spawn(reconcile(Arc::new(binding(&f, status)), s.ctx.clone()));
    expect(
        &mut s.handle,
        "GET",
        SECRET_PATH,
        200,
        managed_secret(&b64("same-value")),
    )
    .await;
    run.await.unwrap().unwrap();
    no_more_requests(s).await;
}

#[tokio::test]
async fn a_secret_changed_while_kvsync_was_down_is_checked_at_once_after_a_start() {
    let f = start("secrets:\n  - {name: db-password, value: same-value}\n").await;
    let status = synced_status(&f, "same-value").await;
    // The watch lists the Secret at a version the status does not know.
    let (cache, _watch) = secret_cache("8");
    let mut s = scenario_as(&f, Duration::ZERO, |ctx| {
        ctx.with_caches(cache, no_service_accounts())
    });
    let run = tokio::spawn(reconcile(Arc::new(binding(&f, status)), s.ctx.clone()));
    let mut current = managed_secret(&b64("edited"));
    current["metadata"]["resourceVersion"] = json!("8");
    expect(&mut s.handle, "GET", SECRET_PATH, 200, current).await;
    let (_, applied) = expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64("same-value")),
    )
    .await;
    assert_eq!(applied["data"]["DB_PASSWORD"], b64("same-value"));
    run.abort();
}

#[tokio::test]
async fn a_secret_another_writer_touched_is_read_and_its_version_recorded() {
    let f = start("secrets:\n  - {name: db-password, value: same-value}\n").await;
    let status = synced_status(&f, "same-value").await;
    // Someone relabelled it, say: a new version with our data in it.
    let (cache, _watch) = secret_cache("9");
    let mut s = scenario_as(&f, Duration::ZERO, |ctx| {
        ctx.without_start_spread()
            .with_caches(cache, no_service_accounts())
    });
    let run = tokio::spawn(reconcile(Arc::new(binding(&f, status)), s.ctx.clone()));
    let mut current = managed_secret(&b64("same-value"));
    current["metadata"]["resourceVersion"] = json!("9");
    expect(&mut s.handle, "GET", SECRET_PATH, 200, current).await;
    // In sync: nothing written but the version found, so the next check
    // need not read it again.
    let (_, patched) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert_eq!(patched["status"]["secretResourceVersion"], "9");
    run.await.unwrap().unwrap();
    no_more_requests(s).await;
}

#[tokio::test]
async fn after_a_start_a_settled_binding_waits_its_jitter_and_a_new_one_does_not() {
    let f = start("secrets:\n  - {name: db-password, value: same-value}\n").await;
    let status = synced_status(&f, "same-value").await;
    let mut s = scenario_as(&f, Duration::ZERO, |ctx| ctx);
    let settled = Arc::new(binding(&f, status));
    let first = reconcile(settled.clone(), s.ctx.clone()).await.unwrap();
    assert_eq!(
        first,
        Action::requeue(kvsync::reconcile::jitter("uid-1", Duration::from_secs(300))),
        "no request before its jitter"
    );
    // Its next reconcile checks.
    let run = tokio::spawn(reconcile(settled, s.ctx.clone()));
    expect(
        &mut s.handle,
        "GET",
        SECRET_PATH,
        200,
        managed_secret(&b64("same-value")),
    )
    .await;
    run.await.unwrap().unwrap();

    // A binding never synced goes at once, start or not.
    let mut new = binding(&f, json!(null));
    new.metadata.name = Some("other".into());
    new.metadata.uid = Some("uid-2".into());
    let run = tokio::spawn(reconcile(Arc::new(new), s.ctx.clone()));
    let (method, path) = s
        .handle
        .next_request()
        .await
        .map(|(req, send)| {
            let seen = (req.method().to_string(), req.uri().path().to_string());
            send.send_response(
                http::Response::builder()
                    .status(404)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&not_found()).unwrap(),
                    ))
                    .unwrap(),
            );
            seen
        })
        .unwrap();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("GET", "/api/v1/namespaces/ci/secrets/other")
    );
    run.abort();
}

#[tokio::test]
async fn new_version_rewrites_the_secret_and_status() {
    let f = start("secrets:\n  - {name: db-password, value: old-value}\n").await;
    let status = synced_status(&f, "old-value").await;
    f.put_secret("db-password", "new-value").await;
    let mut s = scenario(&f);
    let b = Arc::new(binding(&f, status.clone()));
    let run = tokio::spawn(reconcile(b, s.ctx.clone()));
    expect_get_then_apply(&mut s.handle, "old-value", "new-value").await;
    let (_, event) = expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .starts_with("updated Secret agent")
    );
    let (_, patched) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert_ne!(patched["status"]["dataHash"], status["dataHash"]);
    assert_ne!(
        patched["status"]["secrets"][0]["version"],
        status["secrets"][0]["version"]
    );
    run.await.unwrap().unwrap();
    no_more_requests(s).await;
}

#[tokio::test]
async fn edited_secret_is_put_back() {
    let f = start("secrets:\n  - {name: db-password, value: vault-value}\n").await;
    let status = synced_status(&f, "vault-value").await;
    let mut s = scenario(&f);
    let b = Arc::new(binding(&f, status));
    let run = tokio::spawn(reconcile(b, s.ctx.clone()));
    expect_get_then_apply(&mut s.handle, "edited-by-hand", "vault-value").await;
    let (_, event) = expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    assert_eq!(event["reason"], "Repaired");
    run.await.unwrap().unwrap();
    no_more_requests(s).await;
}

#[tokio::test]
async fn vault_refusal_keeps_the_secret_and_reports_the_reason() {
    let f = start("secrets:\n  - {name: db-password, value: v}\naccess:\n  - {clientId: someone-else, secrets: ['*']}\n").await;
    let mut s = scenario(&f);
    let b = Arc::new(binding(&f, json!(null)));
    let run = tokio::spawn(reconcile(b, s.ctx.clone()));
    let (_, event) = expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    assert_eq!(event["reason"], "SyncFailed");
    assert_eq!(event["type"], "Warning");
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    let ready = &status["status"]["conditions"][0];
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("VaultForbidden"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("Key Vault Secrets User")
    );
    run.await.unwrap().unwrap();
    no_more_requests(s).await; // no GET, no write of the Secret
}

#[tokio::test]
async fn key_collision_changes_nothing() {
    let f = start("secrets:\n  - {name: a-b, value: 1}\n  - {name: a-b2, value: 2}\n").await;
    let mut s = scenario(&f);
    let mut b = binding(&f, json!(null));
    b.spec.secrets =
        serde_json::from_value(json!([{"name": "a-b"}, {"name": "a-b2", "key": "A_B"}])).unwrap();
    b.spec.key_transform = kvsync::crd::KeyTransform::EnvVar;
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert_eq!(status["status"]["conditions"][0]["reason"], "KeyCollision");
    run.await.unwrap().unwrap();
    no_more_requests(s).await;
    assert_eq!(
        f.stats().await.total("get_secret"),
        0,
        "a collision is found before any value is read"
    );
}

#[tokio::test]
async fn non_vault_host_is_refused_before_any_token_request() {
    let f = start("secrets: []\n").await;
    let mut s = scenario(&f);
    let mut b = binding(&f, json!(null));
    b.spec.vault_url = "https://attacker.example.com".into();
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert_eq!(
        status["status"]["conditions"][0]["reason"],
        "VaultHostNotAllowed"
    );
    run.await.unwrap().unwrap();
    no_more_requests(s).await;
    assert_eq!(f.stats().await.total("token"), 0);
}

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_full_sync_logged_at_trace_never_shows_a_value() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let secret = "Sup3r-S3cret-Value-91f2";
    let f = start(&format!(
        "secrets:\n  - {{name: db-password, value: {secret}}}\n"
    ))
    .await;
    f.fault(json!({"op": "get_secret", "status": 503, "count": 1}))
        .await; // exercise the retry logs too
    let mut s = scenario(&f);
    let b = Arc::new(binding(&f, json!(null)));
    // Other tests of this binary run at once, with no subscriber: a log
    // call site they reach first, while this one's subscriber is being
    // registered, can be cached as disabled everywhere. Ask every call
    // site again now that this thread has one.
    tracing::callsite::rebuild_interest_cache();
    let run = tokio::spawn(reconcile(b, s.ctx.clone()));
    expect(&mut s.handle, "GET", SECRET_PATH, 404, not_found()).await;
    let (_, applied) = expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64(secret)),
    )
    .await;
    assert_eq!(
        applied["data"]["DB_PASSWORD"],
        b64(secret),
        "the value did reach the Secret"
    );
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    run.await.unwrap().unwrap();
    no_more_requests(s).await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.lines().count() > 20,
        "the capture works ({} lines)",
        logs.lines().count()
    );
    assert!(!logs.contains(secret), "a value reached the logs");
    assert!(
        !logs.contains(&b64(secret)),
        "a base64 value reached the logs"
    );
}

const BINDING_PATH: &str = "/apis/kvsync.io/v1alpha1/namespaces/ci/vaultsecretbindings/agent";
const DEPLOYMENT_PATH: &str = "/apis/apps/v1/namespaces/ci/deployments/agent";

/// The Secret is read holding `value`, as kvsync wrote it.
async fn expect_secret(handle: &mut Handle, value: &str) {
    expect(handle, "GET", SECRET_PATH, 200, managed_secret(&b64(value))).await;
}

/// The Deployment's pod template is patched (a rollout restart), answered
/// with `status`/`answer`; returns the patch.
async fn expect_restart(handle: &mut Handle, status: u16, answer: Value) -> Value {
    expect(handle, "PATCH", DEPLOYMENT_PATH, status, answer)
        .await
        .1
}

fn deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "agent", "namespace": "ci"}})
}

/// The finalizer is patched away; returns the patch.
async fn expect_finalizer_released(handle: &mut Handle) -> Value {
    expect(handle, "PATCH", BINDING_PATH, 200, reply()).await.1
}

/// The reconcile ends with `Ok` and nothing more is asked of the API server.
async fn finish(
    run: tokio::task::JoinHandle<
        Result<kube::runtime::controller::Action, kvsync::reconcile::Error>,
    >,
    s: Scenario,
) -> kube::runtime::controller::Action {
    let action = run.await.unwrap().unwrap();
    no_more_requests(s).await;
    action
}

/// `b` as `kubectl delete` leaves it for its finalizer.
fn deleted(mut b: VaultSecretBinding) -> VaultSecretBinding {
    b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
    ));
    b
}

/// A synced binding with a Deployment to restart and a restart due since
/// long ago (recorded by an earlier operator).
async fn rollout_due(f: &Fixture) -> VaultSecretBinding {
    let mut status = synced_status(f, "v").await;
    status["rolloutPendingSince"] = json!("2026-01-01T00:00:00Z");
    let mut b = binding(f, status);
    b.spec.rollout =
        serde_json::from_value(json!([{"kind": "Deployment", "name": "agent"}])).unwrap();
    b
}

/// A synced binding whose last Secret was `old-name` (target.name changed).
async fn renamed(f: &Fixture) -> VaultSecretBinding {
    let mut status = synced_status(f, "v").await;
    status["targetName"] = json!("old-name");
    binding(f, status)
}

fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason, "code": code, "message": message})
}

fn merge_binding(f: &Fixture) -> VaultSecretBinding {
    let mut b = binding(f, json!(null));
    b.spec.target = Some(serde_json::from_value(json!({"policy": "Merge"})).unwrap());
    b.metadata.finalizers = Some(vec![kvsync::crd::names::MERGE_FINALIZER.to_string()]);
    b
}

fn foreign_secret(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": "agent", "namespace": "ci", "resourceVersion": "5"},
           "data": data})
}

#[tokio::test]
async fn merge_never_takes_a_key_another_manager_owns() {
    let f = start("secrets:\n  - {name: db-password, value: from-vault}\n").await;
    let mut s = scenario(&f);
    let run = tokio::spawn(reconcile(Arc::new(merge_binding(&f)), s.ctx.clone()));
    let theirs = foreign_secret(json!({"DB_PASSWORD": b64("typed-by-a-person")}));
    expect(&mut s.handle, "GET", SECRET_PATH, 200, theirs).await;
    let conflict = "Apply failed with 1 conflict: conflict with \"kubectl-create\" using v1: .data.DB_PASSWORD";
    let (query, _) = expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        409,
        status_error(409, "Conflict", conflict),
    )
    .await;
    assert!(
        query.contains("fieldManager=kvsync-merge-uid-1") && !query.contains("force=true"),
        "Merge must never force: {query}"
    );
    let (_, event) = expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .starts_with("MergeConflict: ")
    );
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    let ready = &status["status"]["conditions"][0];
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("MergeConflict"))
    );
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("DB_PASSWORD") && message.contains("kubectl-create"),
        "{message}"
    );
    finish(run, s).await;
}

#[tokio::test]
async fn a_secret_the_api_server_rejects_shows_on_the_binding() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let mut s = scenario(&f);
    let mut b = binding(&f, json!(null));
    b.spec.target = Some(serde_json::from_value(json!({"type": "kubernetes.io/tls"})).unwrap());
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    expect(&mut s.handle, "GET", SECRET_PATH, 404, not_found()).await;
    let refusal = "Secret \"agent\" is invalid: data[tls.crt]: Required value";
    expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        422,
        status_error(422, "Invalid", refusal),
    )
    .await;
    let (_, event) = expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .starts_with("SecretRejected: ")
    );
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    let ready = &status["status"]["conditions"][0];
    assert_eq!(ready["reason"], "SecretRejected");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("data[tls.crt]: Required value")
    );
    assert!(
        status["status"].get("observedGeneration").is_none(),
        "a generation that was not applied is not observed"
    );
    finish(run, s).await;
}

#[tokio::test]
async fn a_generation_changed_after_a_failure_is_still_applied() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let mut status = synced_status(&f, "v").await;
    // Generation 2 (Owner -> Orphan) failed once: status still says 1.
    status["conditions"][0]["status"] = json!("False");
    status["conditions"][0]["reason"] = json!("VaultUnavailable");
    let mut s = scenario(&f);
    let mut b = binding(&f, status);
    b.metadata.generation = Some(2);
    b.spec.target = Some(serde_json::from_value(json!({"policy": "Orphan"})).unwrap());
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    expect_secret(&mut s.handle, "v").await;
    let (_, applied) = expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64("v")),
    )
    .await;
    assert!(
        applied["metadata"].get("ownerReferences").is_none(),
        "Orphan: applied without our owner reference, so SSA removes it: {applied}"
    );
    // The Secret was put back in line with the spec: a "Repaired" event is
    // not sent for a spec change.
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert_eq!(status["status"]["observedGeneration"], 2);
    assert_eq!(status["status"]["conditions"][0]["reason"], "Synced");
    finish(run, s).await;
}

#[tokio::test]
async fn deleting_a_merge_binding_never_creates_the_secret() {
    let f = start("secrets: []\n").await;
    let mut s = scenario(&f);
    let run = tokio::spawn(reconcile(
        Arc::new(deleted(merge_binding(&f))),
        s.ctx.clone(),
    ));
    // The user deleted the Secret first: nothing to release, no apply.
    expect(&mut s.handle, "GET", SECRET_PATH, 404, not_found()).await;
    let patch = expect_finalizer_released(&mut s.handle).await;
    assert_eq!(patch["metadata"]["finalizers"], json!([]));
    finish(run, s).await;
}

#[tokio::test]
async fn a_terminating_namespace_does_not_hold_the_merge_finalizer() {
    let f = start("secrets: []\n").await;
    let mut s = scenario(&f);
    let run = tokio::spawn(reconcile(
        Arc::new(deleted(merge_binding(&f))),
        s.ctx.clone(),
    ));
    expect(
        &mut s.handle,
        "GET",
        SECRET_PATH,
        200,
        foreign_secret(json!({"DB_PASSWORD": b64("x")})),
    )
    .await;
    let (query, body) = expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        403,
        status_error(
            403,
            "Forbidden",
            "secrets \"agent\" is forbidden: unable to create new content in namespace ci because it is being terminated",
        ),
    )
    .await;
    assert!(query.contains("fieldManager=kvsync-merge-uid-1"));
    assert_eq!(
        body["metadata"]["resourceVersion"], "5",
        "the release carries the resourceVersion read, so it can never create"
    );
    expect_finalizer_released(&mut s.handle).await;
    finish(run, s).await;
}

#[tokio::test]
async fn a_rollout_due_before_a_restart_is_done_by_the_next_operator() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    // The previous operator recorded the change and stopped inside the window.
    let b = rollout_due(&f).await;
    let mut s = scenario(&f);
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    expect_secret(&mut s.handle, "v").await;
    let patch = expect_restart(&mut s.handle, 200, deployment()).await;
    assert!(
        patch["spec"]["template"]["metadata"]["annotations"]["kvsync.io/restartedAt"].is_string()
    );
    let (_, written) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert!(
        written["status"].get("rolloutPendingSince").is_none(),
        "done: no longer pending: {written}"
    );
    finish(run, s).await;
}

#[tokio::test]
async fn a_failed_rollout_patch_stays_pending_in_status() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let b = rollout_due(&f).await;
    let mut s = scenario(&f);
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    expect_secret(&mut s.handle, "v").await;
    expect_restart(
        &mut s.handle,
        500,
        status_error(500, "InternalError", "etcdserver: request timed out"),
    )
    .await;
    let (_, written) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert_eq!(
        written["status"]["rolloutPendingSince"],
        "2026-01-01T00:00:00Z"
    );
    assert!(
        written["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("rollout restart failed, retrying")
    );
    let action = run.await.unwrap().unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(5))
    );
    no_more_requests(s).await;
}

#[tokio::test]
async fn force_sync_storms_are_held_to_one_vault_read_per_cooldown() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let status = synced_status(&f, "v").await;
    let mut s = scenario_with_cooldown(&f, Duration::from_secs(30));
    let forced = |value: &str, handled: Option<&str>| {
        let mut b = binding(&f, status.clone());
        b.metadata.annotations =
            Some([("kvsync.io/force-sync".to_string(), value.to_string())].into());
        b.status.as_mut().unwrap().force_sync_handled = handled.map(str::to_string);
        Arc::new(b)
    };
    // The first value: read now, and recorded as handled.
    f.reset_stats().await;
    let run = tokio::spawn(reconcile(forced("1", None), s.ctx.clone()));
    expect_secret(&mut s.handle, "v").await;
    let (_, written) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert_eq!(written["status"]["forceSyncHandled"], "1");
    run.await.unwrap().unwrap();
    assert_eq!(f.stats().await.total("get_secret"), 1, "the forced read");

    // A new value at once: no forced read, not recorded, retried when the
    // cooldown ends.
    let action = tokio::spawn(reconcile(forced("2", Some("1")), s.ctx.clone()));
    expect_secret(&mut s.handle, "v").await;
    let action = action.await.unwrap().unwrap();
    assert_eq!(
        f.stats().await.total("get_secret"),
        1,
        "served from the cache"
    );
    // Action keeps its delay private: its Debug shows it.
    let shown = format!("{action:?}");
    let secs: f64 = shown
        .split("Some(")
        .nth(1)
        .and_then(|r| r.split("s)").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("a requeue, not {shown}"));
    assert!(secs <= 30.0, "retried when the cooldown ends: {shown}");
    no_more_requests(s).await;
}

#[tokio::test]
async fn owner_to_merge_gives_up_the_owner_reference_before_sharing() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let mut s = scenario(&f);
    let run = tokio::spawn(reconcile(Arc::new(merge_binding(&f)), s.ctx.clone()));
    // The Secret as the binding wrote it under policy Owner.
    expect_secret(&mut s.handle, "v").await;
    // Merge takes its keys first, at the values the Secret holds (shared
    // with kvsync's own manager, so never a conflict with it)...
    let (query, taken) = expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64("v")),
    )
    .await;
    assert!(query.contains("fieldManager=kvsync-merge-uid-1") && !query.contains("force=true"));
    assert_eq!(taken["data"]["DB_PASSWORD"], b64("v"));
    assert!(taken["metadata"].get("ownerReferences").is_none());
    // ...then kvsync's owner fields are released.
    expect_secret(&mut s.handle, "v").await;
    let (query, released) = expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        foreign_secret(json!({})),
    )
    .await;
    assert!(
        query.contains("fieldManager=kvsync&") || query.ends_with("fieldManager=kvsync"),
        "released as the Owner-policy manager: {query}"
    );
    assert!(
        released.get("data").is_none() && released["metadata"].get("ownerReferences").is_none(),
        "applying nothing as kvsync drops its owner reference, label and keys: {released}"
    );
    assert_eq!(
        released["type"], "Opaque",
        "the type is kept (a typed Secret refuses a change to Opaque): {released}"
    );
    expect(
        &mut s.handle,
        "GET",
        SECRET_PATH,
        200,
        foreign_secret(json!({})),
    )
    .await;
    let (query, merged) = expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        foreign_secret(json!({"DB_PASSWORD": b64("v")})),
    )
    .await;
    assert!(query.contains("fieldManager=kvsync-merge-uid-1") && !query.contains("force=true"));
    assert!(merged["metadata"].get("ownerReferences").is_none());
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    finish(run, s).await;
}

#[tokio::test]
async fn merge_to_owner_releases_nothing_before_the_new_secret_is_written() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let mut s = scenario(&f);
    // A Merge binding (finalizer held) switched to Owner on the same name:
    // the Secret is someone else's, so the Owner write is refused — and the
    // binding's keys stay in it.
    let mut b = merge_binding(&f);
    b.spec.target = None;
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    expect(
        &mut s.handle,
        "GET",
        SECRET_PATH,
        200,
        foreign_secret(json!({"DB_PASSWORD": b64("v"), "theirs": b64("x")})),
    )
    .await;
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert_eq!(
        status["status"]["conditions"][0]["reason"], "SecretNotManaged",
        "{status}"
    );
    let _ = run.await.unwrap();
    no_more_requests(s).await;
}

#[tokio::test]
async fn merge_to_owner_on_a_new_name_writes_first_then_releases_the_shared_keys() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let mut s = scenario(&f);
    // A synced Merge binding into `old-name`, now Owner of its own `agent`.
    let mut b = renamed(&f).await;
    b.metadata.finalizers = Some(vec![kvsync::reconcile::FINALIZER.to_string()]);
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    // The new Secret first.
    expect(&mut s.handle, "GET", SECRET_PATH, 404, not_found()).await;
    expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64("v")),
    )
    .await;
    // Then the old shared Secret gives back the binding's keys.
    let old_path = "/api/v1/namespaces/ci/secrets/old-name";
    let mut shared = foreign_secret(json!({"DB_PASSWORD": b64("v"), "theirs": b64("x")}));
    shared["metadata"]["name"] = json!("old-name");
    expect(&mut s.handle, "GET", old_path, 200, shared.clone()).await;
    expect(&mut s.handle, "GET", old_path, 200, shared.clone()).await;
    let (query, _) = expect(&mut s.handle, "PATCH", old_path, 200, shared.clone()).await;
    assert!(query.contains("fieldManager=kvsync-merge-uid-1"), "{query}");
    // The finalizer goes last (its keys in the current target: none).
    expect(
        &mut s.handle,
        "GET",
        SECRET_PATH,
        200,
        managed_secret(&b64("v")),
    )
    .await;
    expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64("v")),
    )
    .await;
    // A stale resourceVersion: read again, then removed.
    expect(
        &mut s.handle,
        "PATCH",
        BINDING_PATH,
        409,
        status_error(409, "Conflict", "the object has been modified"),
    )
    .await;
    let mut fresh = reply();
    fresh["metadata"]["finalizers"] = json!([kvsync::reconcile::FINALIZER, "someone-else/keep"]);
    fresh["metadata"]["resourceVersion"] = json!("11");
    expect(&mut s.handle, "GET", BINDING_PATH, 200, fresh).await;
    let (_, removed) = expect(&mut s.handle, "PATCH", BINDING_PATH, 200, reply()).await;
    assert_eq!(
        removed["metadata"]["finalizers"],
        json!(["someone-else/keep"]),
        "only ours goes, others' as they are now: {removed}"
    );
    assert_eq!(removed["metadata"]["resourceVersion"], "11");
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    finish(run, s).await;
}

#[tokio::test]
async fn owner_to_merge_refused_leaves_the_secret_as_it_was() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let mut s = scenario(&f);
    let run = tokio::spawn(reconcile(Arc::new(merge_binding(&f)), s.ctx.clone()));
    expect_secret(&mut s.handle, "v").await;
    let conflict =
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.DB_PASSWORD";
    expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        409,
        status_error(409, "Conflict", conflict),
    )
    .await;
    // No release of kvsync's fields: the Secret keeps its keys and owner.
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    let ready = &status["status"]["conditions"][0];
    assert_eq!(ready["reason"], "MergeConflict", "{status}");
    let _ = run.await.unwrap();
    no_more_requests(s).await;
}

#[tokio::test]
async fn owner_to_merge_over_a_key_someone_else_owns_writes_nothing() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let mut s = scenario(&f);
    let run = tokio::spawn(reconcile(Arc::new(merge_binding(&f)), s.ctx.clone()));
    let mut owned = managed_secret(&b64("theirs"));
    owned["metadata"]["managedFields"] = json!([
        {"manager": "kvsync", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:ownerReferences": {}}}},
        {"manager": "kubectl-edit", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:data": {"f:DB_PASSWORD": {}}}},
    ]);
    expect(&mut s.handle, "GET", SECRET_PATH, 200, owned).await;
    // No write at all: the conflict is known from the Secret as read.
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    let ready = &status["status"]["conditions"][0];
    assert_eq!(ready["reason"], "MergeConflict", "{status}");
    assert!(
        ready["message"].as_str().unwrap().contains("kubectl-edit"),
        "{ready}"
    );
    let _ = run.await.unwrap();
    no_more_requests(s).await;
}

#[tokio::test]
async fn a_rename_onto_a_secret_kvsync_does_not_manage_keeps_the_old_one() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let b = renamed(&f).await;
    let mut s = scenario(&f);
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    // The new name is someone else's Secret: refused, and the old Secret
    // (the one the workload uses) is never read nor deleted.
    expect(
        &mut s.handle,
        "GET",
        SECRET_PATH,
        200,
        foreign_secret(json!({"x": b64("theirs")})),
    )
    .await;
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, status) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    let ready = &status["status"]["conditions"][0];
    assert_eq!(ready["reason"], "SecretNotManaged", "{status}");
    let _ = run.await.unwrap();
    no_more_requests(s).await;
}

#[tokio::test]
async fn a_renamed_target_deletes_the_secret_the_binding_owned() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let b = renamed(&f).await;
    let mut s = scenario(&f);
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    let old_path = "/api/v1/namespaces/ci/secrets/old-name";
    // Apply before retire: the new Secret first.
    expect(&mut s.handle, "GET", SECRET_PATH, 404, not_found()).await;
    expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64("v")),
    )
    .await;
    let mut owned = managed_secret(&b64("v"));
    owned["metadata"]["name"] = json!("old-name");
    owned["metadata"]["uid"] = json!("secret-uid-7");
    expect(&mut s.handle, "GET", old_path, 200, owned).await;
    let (_, delete) = expect(
        &mut s.handle,
        "DELETE",
        old_path,
        200,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    )
    .await;
    assert_eq!(
        delete["preconditions"]["uid"], "secret-uid-7",
        "only the Secret that was read is deleted"
    );
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, written) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert_eq!(written["status"]["targetName"], "agent");
    finish(run, s).await;
}

#[tokio::test]
async fn a_renamed_orphan_target_is_left_behind() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let mut b = renamed(&f).await;
    let mut s = scenario(&f);
    b.spec.target = Some(serde_json::from_value(json!({"policy": "Orphan"})).unwrap());
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    expect(&mut s.handle, "GET", SECRET_PATH, 404, not_found()).await;
    expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64("v")),
    )
    .await;
    let mut orphan = managed_secret(&b64("v"));
    orphan["metadata"]["name"] = json!("old-name");
    orphan["metadata"]["ownerReferences"] = json!(null);
    expect(
        &mut s.handle,
        "GET",
        "/api/v1/namespaces/ci/secrets/old-name",
        200,
        orphan,
    )
    .await;
    // No DELETE: an Orphan is left behind.
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    finish(run, s).await;
}

#[tokio::test]
async fn a_reconcile_that_sees_a_stale_status_keeps_the_due_rollout() {
    let f = start("secrets:\n  - {name: db-password, value: old-value}\n").await;
    let status = synced_status(&f, "old-value").await;
    f.put_secret("db-password", "new-value").await;
    let mut s = scenario(&f);
    let mut b = binding(&f, status);
    b.spec.rollout =
        serde_json::from_value(json!([{"kind": "Deployment", "name": "agent"}])).unwrap();
    // The change: the intent is written before the Secret, then the status.
    let run = tokio::spawn(reconcile(Arc::new(b.clone()), s.ctx.clone()));
    expect_secret(&mut s.handle, "old-value").await;
    let (_, intent) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    assert!(
        intent["status"]["rolloutPendingSince"].is_string(),
        "{intent}"
    );
    expect(
        &mut s.handle,
        "PATCH",
        SECRET_PATH,
        200,
        managed_secret(&b64("new-value")),
    )
    .await;
    expect(
        &mut s.handle,
        "GET",
        DEPLOYMENT_PATH,
        200,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "agent"}}),
    )
    .await;
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, after) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    let pending = after["status"]["rolloutPendingSince"].clone();
    assert!(pending.is_string());
    run.await.unwrap().unwrap();

    // The Secret write wakes the binding before the watch delivered either
    // status write: the object still carries the old status. The due
    // restart must survive (nothing to write: the status is the same).
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    expect_secret(&mut s.handle, "new-value").await;
    finish(run, s).await;
}

#[tokio::test]
async fn statuses_survive_a_sweep_during_a_listing_and_go_with_the_binding() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let status = synced_status(&f, "v").await;
    let s = scenario(&f);
    let mut b = binding(&f, status.clone());
    // The watch takes the status out of the object into the context.
    s.ctx.observe_status(&mut b);
    assert!(b.status.is_none(), "the store gets no status");
    let kept = s.ctx.kept_status(&b).expect("kept");
    assert_eq!(serde_json::to_value(&kept).unwrap(), status);
    // A re-list is under way: the store does not have the binding yet, and
    // a sweep now must not forget what the listing already brought.
    s.ctx.set_bindings_listing(true);
    s.ctx.forget_absent(|_| false);
    assert!(s.ctx.kept_status(&b).is_some(), "kept during the listing");
    // Once listed, a binding the store does not have is gone, status too.
    s.ctx.set_bindings_listing(false);
    s.ctx.forget_absent(|_| false);
    assert!(
        s.ctx.kept_status(&b).is_none(),
        "forgotten with the binding"
    );
}

#[tokio::test]
async fn after_standing_down_the_watch_brings_the_next_leaders_status() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let status = synced_status(&f, "v").await;
    let s = scenario(&f);
    let mut b = binding(&f, status.clone());
    s.ctx.observe_status(&mut b);
    s.ctx.stand_down();
    assert!(s.ctx.kept_status(&b).is_some(), "a standby keeps statuses");
    let mut newer = status.clone();
    newer["forceSyncHandled"] = json!("by-the-new-leader");
    let mut from_watch = binding(&f, newer.clone());
    s.ctx.observe_status(&mut from_watch);
    assert_eq!(
        serde_json::to_value(s.ctx.kept_status(&b).unwrap()).unwrap(),
        newer
    );
    // A recreated binding (another uid) never gets the old one's status.
    let mut recreated = binding(&f, json!(null));
    recreated.metadata.uid = Some("uid-2".into());
    assert!(s.ctx.kept_status(&recreated).is_none());
}

/// A PolicyView over one policy (restricting namespace `ci`, labelled
/// team=ci, to `allowed` names at the fixture's vault).
fn policy_view(
    f: &Fixture,
    client: kube::Client,
    allowed: &str,
) -> kvsync::policy::view::PolicyView {
    policy_view_of(
        client,
        json!({"namespaceSelector": {"matchLabels": {"team": "ci"}},
               "vaults": [f.vault.addr().to_string()], "secrets": [allowed]}),
    )
}

/// A PolicyView over one policy `ci-public` with `spec`, namespace `ci`
/// labelled team=ci.
fn policy_view_of(client: kube::Client, spec: Value) -> kvsync::policy::view::PolicyView {
    use kvsync::crd::policy::VaultAccessPolicy;
    let (policies, mut pw) = reflector::store::<VaultAccessPolicy>();
    let p: VaultAccessPolicy = serde_json::from_value(json!({
        "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultAccessPolicy",
        "metadata": {"name": "ci-public"},
        "spec": spec,
    }))
    .unwrap();
    pw.apply_watcher_event(&watcher::Event::Init);
    pw.apply_watcher_event(&watcher::Event::InitApply(p));
    pw.apply_watcher_event(&watcher::Event::InitDone);
    let (namespaces, mut nw) =
        reflector::store::<PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>();
    let ns: PartialObjectMeta<k8s_openapi::api::core::v1::Namespace> =
        serde_json::from_value(json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "ci", "labels": {"team": "ci"}},
        }))
        .unwrap();
    nw.apply_watcher_event(&watcher::Event::Init);
    nw.apply_watcher_event(&watcher::Event::InitApply(ns));
    nw.apply_watcher_event(&watcher::Event::InitDone);
    kvsync::policy::view::PolicyView::new(kvsync::policy::Mode::Open, policies, namespaces, client)
}

#[tokio::test]
async fn a_binding_a_policy_now_denies_stops_being_read() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let status = synced_status(&f, "v").await;
    let b = Arc::new(binding(&f, status.clone()));
    // Now a policy restricts namespace ci to public-* names.
    // The view's client is for namespaces the watch has not brought: none.
    let (client, _unused) = support::mock::client();
    let denied = scenario_as(&f, Duration::ZERO, |ctx| {
        ctx.without_start_spread()
            .with_policies(policy_view(&f, client, "public-*"))
    });
    // Its interest, as an earlier, allowed read registered it.
    denied
        .ctx
        .pollers
        .get(&f.vault.url(), "operator", || {
            let env = f.env("operator-app", "system:serviceaccount:kvsync:kvsync");
            f.client_with(f.token_source(env.operator_credential(None, None).unwrap(), &env))
        })
        .read(
            Some(&kube::runtime::reflector::ObjectRef::new("agent").within("ci")),
            &b.spec,
            Duration::from_secs(300),
            false,
        )
        .await
        .unwrap();
    assert_eq!(denied.ctx.pollers.interested(), 1);
    let before = f.stats().await.count("get_secret", 200);
    let run = tokio::spawn(reconcile(b.clone(), denied.ctx.clone()));
    let mut denied = denied;
    let (_, patched) = expect(&mut denied.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    assert_eq!(patched["reason"], "SyncFailed");
    let (_, st) = expect(&mut denied.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    let ready = &st["status"]["conditions"][0];
    assert_eq!(ready["reason"], "PolicyDenied");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("secret db-password (spec.secrets) is not among secrets [public-*]"),
        "{ready}"
    );
    run.await.unwrap().unwrap();
    assert_eq!(
        denied.ctx.pollers.interested(),
        0,
        "its poller no longer reads anything for it"
    );
    assert_eq!(
        f.stats().await.count("get_secret", 200),
        before,
        "nothing read"
    );
}

/// Every Key Vault and Entra request the dev vault answered, by any status.
async fn vault_requests(f: &Fixture) -> u64 {
    let stats = f.stats().await;
    ["get_secret", "list_secrets", "list_versions", "token"]
        .iter()
        .map(|op| {
            [200, 401, 403, 404, 429, 500]
                .iter()
                .map(|status| stats.count(op, *status))
                .sum::<u64>()
        })
        .sum()
}

#[tokio::test]
async fn a_certificate_the_policy_forbids_is_denied_and_never_read() {
    let f = start(
        "secrets:\n  - {name: public-api, value: v}\n  - {name: payroll-tls, value: not-a-cert}\n",
    )
    .await;
    // A tripwire on the forbidden name: a request for it would be answered
    // (and counted) as a 500.
    f.fault(json!({"op": "get_secret", "secret": "payroll-tls", "status": 500, "code": "Tripwire", "count": 1000}))
        .await;
    let mut b = binding(&f, json!(null));
    b.spec.secrets = serde_json::from_value(json!([{"name": "public-api"}])).unwrap();
    b.spec.certificates = serde_json::from_value(json!([{"name": "payroll-tls"}])).unwrap();
    let (client, _unused) = support::mock::client();
    let mut s = scenario_as(&f, Duration::ZERO, |ctx| {
        ctx.without_start_spread()
            .with_policies(policy_view(&f, client, "public-*"))
    });
    f.reset_stats().await;
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, st) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    let ready = &st["status"]["conditions"][0];
    assert_eq!(ready["reason"], "PolicyDenied", "{st}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("secret payroll-tls (spec.certificates) is not among secrets [public-*]"),
        "{ready}"
    );
    run.await.unwrap().unwrap();
    no_more_requests(s).await;
    assert_eq!(
        vault_requests(&f).await,
        0,
        "no request reached the vault or Entra ID"
    );
}

#[tokio::test]
async fn a_service_accounts_foreign_tenant_annotation_is_judged_by_tenant_ids() {
    let f = start("secrets:\n  - {name: db-password, value: v}\n").await;
    let mut b = binding(&f, json!(null));
    b.spec.identity = Some(serde_json::from_value(json!({"serviceAccountName": "agent"})).unwrap());
    let (client, _unused) = support::mock::client();
    let mut s = scenario_as(&f, Duration::ZERO, |ctx| {
        ctx.without_start_spread().with_policies(policy_view_of(
            client,
            json!({"namespaceSelector": {"matchLabels": {"team": "ci"}},
                   "vaults": [f.vault.addr().to_string()],
                   "identities": {"serviceAccounts": true}}),
        ))
    });
    f.reset_stats().await;
    let run = tokio::spawn(reconcile(Arc::new(b), s.ctx.clone()));
    let foreign = "44444444-4444-4444-4444-444444444444";
    expect(
        &mut s.handle,
        "GET",
        "/api/v1/namespaces/ci/serviceaccounts/agent",
        200,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": "agent", "namespace": "ci", "annotations": {
                   "azure.workload.identity/client-id": "55555555-5555-5555-5555-555555555555",
                   "azure.workload.identity/tenant-id": foreign}}}),
    )
    .await;
    expect(&mut s.handle, "POST", EVENTS_PATH, 201, json!({})).await;
    let (_, st) = expect(&mut s.handle, "PATCH", STATUS_PATH, 200, reply()).await;
    let ready = &st["status"]["conditions"][0];
    assert_eq!(ready["reason"], "PolicyDenied", "{st}");
    assert!(
        ready["message"].as_str().unwrap().contains(&format!(
            "identities.tenantIds does not allow tenant {foreign}"
        )),
        "{ready}"
    );
    run.await.unwrap().unwrap();
    no_more_requests(s).await;
    assert_eq!(vault_requests(&f).await, 0, "no token was asked for");
}
