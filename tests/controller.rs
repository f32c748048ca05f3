//! `kvsync run`'s wiring (watches, predicate, drift mapping, shutdown) against
//! a small in-memory API server behind kube's tower-test service, with the
//! vault side on an in-process dev vault.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::client::Body;
use kvsync::azure::AzureAccess;
use kvsync::metrics::Metrics;
use kvsync::reconcile::Settings;
use kvsync::server::Health;
use serde_json::{Value, json};
use support::{fast_retry, start};

type RespBody = BoxBody<Bytes, std::io::Error>;

fn full(status: u16, v: Value) -> Response<RespBody> {
    let body = Full::new(Bytes::from(serde_json::to_vec(&v).unwrap()))
        .map_err(|never| match never {})
        .boxed();
    Response::builder().status(status).body(body).unwrap()
}

/// A watch response that stays open and carries what is sent on the channel.
#[derive(Clone, Copy)]
enum Watched {
    Bindings,
    Secrets,
    ServiceAccounts,
}

fn stream(state: &Mutex<Fake>, secrets: bool) -> Response<RespBody> {
    stream_of(
        state,
        if secrets {
            Watched::Secrets
        } else {
            Watched::Bindings
        },
    )
}

fn stream_of(state: &Mutex<Fake>, which: Watched) -> Response<RespBody> {
    let (tx, rx) = unbounded::<Value>();
    let body = BodyExt::boxed(StreamBody::new(rx.map(|ev| {
        let mut line = serde_json::to_vec(&ev).unwrap();
        line.push(b'\n');
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(line)))
    })));
    let mut s = state.lock().unwrap();
    match which {
        Watched::Secrets => s.secret_watches.push(tx),
        Watched::Bindings => s.other_watches.push(tx),
        // Nothing is sent on it: the ServiceAccounts never change here.
        Watched::ServiceAccounts => s.account_watches.push(tx),
    }
    Response::builder().status(200).body(body).unwrap()
}

#[derive(Default)]
struct Fake {
    binding: Value,
    /// The target Secret (named by the binding's target, default "agent").
    secret: Option<Value>,
    status: Option<Value>,
    secret_watches: Vec<UnboundedSender<Value>>,
    other_watches: Vec<UnboundedSender<Value>>,
    account_watches: Vec<UnboundedSender<Value>>,
    applies: usize,
    /// (query, body) of every apply of the Secret.
    applied: Vec<(String, Value)>,
    /// Merge patches of the binding itself (finalizers).
    binding_patches: Vec<Value>,
    /// Merge patches of Deployment agent (rollout restarts).
    deployment_patches: Vec<Value>,
    /// When set, listing and watching bindings answers this status (404:
    /// the CRD is not installed; 403: RBAC forbids it).
    bindings_status: Option<u16>,
    /// The same for the managed Secrets.
    secrets_status: Option<u16>,
    unexpected: Vec<String>,
}

fn failure(code: u16) -> Response<RespBody> {
    let reason = match code {
        403 => "Forbidden",
        404 => "NotFound",
        _ => "InternalError",
    };
    full(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
            "message": format!("answered {code} by the test")}),
    )
}

fn meta_of(secret: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": secret["metadata"]})
}

async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<RespBody>>,
    state: Arc<Mutex<Fake>>,
) {
    let bindings = "/apis/kvsync.io/v1alpha1/namespaces/ci/vaultsecretbindings";
    while let Some((req, send)) = handle.next_request().await {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let watch = query.contains("watch=true");
        let body = req.into_body().collect_bytes().await.unwrap();
        let sent: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        let refused = |s: &Mutex<Fake>, secrets: bool| {
            let s = s.lock().unwrap();
            if secrets {
                s.secrets_status
            } else {
                s.bindings_status
            }
        };
        let resp = match (method.as_str(), path.as_str()) {
            ("GET", p) if p == bindings && refused(&state, false).is_some() => {
                failure(refused(&state, false).unwrap())
            }
            ("GET", "/api/v1/namespaces/ci/secrets") if refused(&state, true).is_some() => {
                failure(refused(&state, true).unwrap())
            }
            ("GET", p) if p == bindings && watch => stream(&state, false),
            ("GET", p) if p == bindings => {
                let b = state.lock().unwrap().binding.clone();
                full(
                    200,
                    json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBindingList", "metadata": {"resourceVersion": "1"}, "items": [b]}),
                )
            }
            // No VaultAccessPolicy nor ClusterVaultSecretBinding; namespace
            // ci without labels; none of them changes.
            (
                "GET",
                "/apis/kvsync.io/v1alpha1/vaultaccesspolicies"
                | "/apis/kvsync.io/v1alpha1/clustervaultsecretbindings"
                | "/api/v1/namespaces",
            ) if watch => stream_of(&state, Watched::ServiceAccounts),
            ("GET", "/apis/kvsync.io/v1alpha1/clustervaultsecretbindings") => full(
                200,
                json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "ClusterVaultSecretBindingList", "metadata": {"resourceVersion": "1"}, "items": []}),
            ),
            ("GET", "/apis/kvsync.io/v1alpha1/vaultaccesspolicies") => full(
                200,
                json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "VaultAccessPolicyList", "metadata": {"resourceVersion": "1"}, "items": []}),
            ),
            ("GET", "/api/v1/namespaces") => full(
                200,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "1"},
                    "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": "ci", "resourceVersion": "1"}}]}),
            ),
            ("GET", "/api/v1/namespaces/ci/serviceaccounts") if watch => {
                stream_of(&state, Watched::ServiceAccounts)
            }
            ("GET", "/api/v1/namespaces/ci/serviceaccounts") => full(
                200,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "1"}, "items": []}),
            ),
            ("GET", "/api/v1/namespaces/ci/secrets") if watch => stream(&state, true),
            ("GET", "/api/v1/namespaces/ci/secrets") => {
                let items: Vec<Value> = state.lock().unwrap().secret.iter().map(meta_of).collect();
                full(
                    200,
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", "/api/v1/namespaces/ci/secrets/agent") => {
                match state.lock().unwrap().secret.clone() {
                    Some(s) => full(200, s),
                    None => full(
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                    ),
                }
            }
            ("PATCH", "/api/v1/namespaces/ci/secrets/agent") => {
                // Server-side apply, simplified: what this field manager
                // applied before is replaced by what it applies now; keys of
                // other managers stay.
                let mut s = state.lock().unwrap();
                let manager = |q: &str| {
                    q.split('&')
                        .find(|p| p.starts_with("fieldManager="))
                        .map(str::to_string)
                };
                let previous: Vec<String> = s
                    .applied
                    .iter()
                    .rev()
                    .find(|(q, _)| manager(q) == manager(&query))
                    .and_then(|(_, b)| b["data"].as_object().map(|d| d.keys().cloned().collect()))
                    .unwrap_or_default();
                s.applied.push((query.clone(), sent.clone()));
                let mut secret = s.secret.clone().unwrap_or_else(
                    || json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}, "data": {}}),
                );
                for k in previous {
                    if let Some(d) = secret["data"].as_object_mut() {
                        d.remove(&k);
                    }
                }
                for (k, v) in sent["data"].as_object().cloned().unwrap_or_default() {
                    secret["data"][k] = v;
                }
                for field in ["labels", "annotations", "ownerReferences"] {
                    if !sent["metadata"][field].is_null() {
                        secret["metadata"][field] = sent["metadata"][field].clone();
                    }
                }
                secret["metadata"]["name"] = json!("agent");
                secret["metadata"]["namespace"] = json!("ci");
                secret["metadata"]["resourceVersion"] = json!(format!("{}", 100 + s.applies));
                s.applies += 1;
                s.secret = Some(secret.clone());
                full(200, secret)
            }
            ("PATCH", p) if p == format!("{bindings}/agent") => {
                let mut s = state.lock().unwrap();
                s.binding_patches.push(sent.clone());
                if let Some(f) = sent["metadata"].get("finalizers") {
                    s.binding["metadata"]["finalizers"] = f.clone();
                }
                full(200, s.binding.clone())
            }
            ("PATCH", p) if p == format!("{bindings}/agent/status") => {
                // Like the API server: the status becomes part of the object
                // and watchers see the change.
                let mut s = state.lock().unwrap();
                s.status = Some(sent["status"].clone());
                s.binding["status"] = sent["status"].clone();
                let rv = s.binding["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("1")
                    .parse::<u64>()
                    .unwrap_or(1)
                    + 1;
                s.binding["metadata"]["resourceVersion"] = json!(rv.to_string());
                let b = s.binding.clone();
                let event = json!({"type": "MODIFIED", "object": b});
                s.other_watches
                    .retain(|w| w.unbounded_send(event.clone()).is_ok());
                full(200, b)
            }
            ("GET", "/apis/apps/v1/namespaces/ci/deployments/agent") => full(
                200,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": "agent", "namespace": "ci"}}),
            ),
            ("PATCH", "/apis/apps/v1/namespaces/ci/deployments/agent") => {
                state.lock().unwrap().deployment_patches.push(sent.clone());
                full(
                    200,
                    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "agent", "namespace": "ci"}}),
                )
            }
            ("POST", "/apis/events.k8s.io/v1/namespaces/ci/events") => full(201, sent),
            // A repeated event becomes a series: the recorder patches it.
            ("PATCH", p) if p.starts_with("/apis/events.k8s.io/v1/namespaces/ci/events/") => {
                full(200, sent)
            }
            _ => {
                state
                    .lock()
                    .unwrap()
                    .unexpected
                    .push(format!("{method} {path}"));
                full(
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                )
            }
        };
        send.send_response(resp);
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

struct Operator {
    state: Arc<Mutex<Fake>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: futures::channel::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
}

/// Starts the controller for `binding` (namespace ci, name agent) with
/// `secret` as the existing target Secret, if any.
fn operator(f: &support::Fixture, binding: Value, secret: Option<Value>) -> Operator {
    operator_with(
        f,
        Fake {
            binding,
            secret,
            ..Default::default()
        },
    )
}

/// Starts the controller against the API server `fake`.
fn operator_with(f: &support::Fixture, fake: Fake) -> Operator {
    operator_as(f, fake, kvsync::controller::Replica::default())
}

/// Starts the controller against `fake` as `replica` (leader election, shard).
fn operator_as(f: &support::Fixture, fake: Fake, replica: kvsync::controller::Replica) -> Operator {
    let state = Arc::new(Mutex::new(fake));
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
    let server = tokio::spawn(serve(handle, state.clone()));
    let client = kube::Client::new(service, "default");
    let access = Arc::new(AzureAccess::new(
        f.http.clone(),
        f.policy(),
        f.env("operator", "sub"),
        fast_retry(),
    ));
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = futures::channel::oneshot::channel::<()>();
    let run = tokio::spawn(kvsync::operator::controllers(
        kvsync::operator::Controllers {
            client,
            access,
            settings: Settings {
                default_refresh: Duration::from_secs(300),
                rollout_window: Duration::from_millis(300),
                hash_key: kvsync::hashkey::HashKey::new(b"test-key"),
                force_sync_cooldown: Duration::ZERO,
                status_heartbeat: Duration::from_secs(900),
                concurrency: 8,
                access_policy: kvsync::policy::Mode::Open,
            },
            metrics: metrics.clone(),
            namespaces: vec!["ci".into()],
            leader: replica.leader,
            shard: replica.shard,
        },
        &health,
        async move {
            let _ = stopped.await;
        },
    ));
    Operator {
        state,
        health,
        metrics,
        stop,
        run,
        server,
    }
}

impl Operator {
    /// Changes the binding as a user would (`change` edits the current
    /// object, status included) and sends the watch event.
    fn update_binding(&self, change: impl FnOnce(&mut Value)) {
        let mut s = self.state.lock().unwrap();
        let mut b = s.binding.clone();
        change(&mut b);
        let rv = b["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("1")
            .parse::<u64>()
            .unwrap_or(1)
            + 1;
        b["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.binding = b.clone();
        let event = json!({"type": "MODIFIED", "object": b});
        s.other_watches
            .retain(|w| w.unbounded_send(event.clone()).is_ok());
    }

    fn force_sync(&self, value: &str) {
        let value = value.to_string();
        self.update_binding(move |b| {
            b["metadata"]["annotations"] = json!({"kvsync.io/force-sync": value})
        });
    }

    fn secret_holds(&self, key: &str, value: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .secret
            .as_ref()
            .is_some_and(|s| s["data"][key] == b64(value))
    }

    /// `kvsync_reconcile_errors_total{kind}` as /metrics shows it.
    fn errors(&self, kind: &str) -> u64 {
        let series = format!("kvsync_reconcile_errors_total{{kind=\"{kind}\"}} ");
        let text = self.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
            .parse()
            .unwrap()
    }

    /// What /readyz would answer with 503, or "" when ready.
    fn not_ready(&self) -> String {
        self.health.readiness().err().unwrap_or_default()
    }

    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("the controller stops on shutdown")
            .unwrap();
        self.server.abort();
        let unexpected = self.state.lock().unwrap().unexpected.clone();
        assert!(unexpected.is_empty(), "unexpected requests: {unexpected:?}");
    }
}

fn binding(f: &support::Fixture, spec: Value) -> Value {
    let mut spec = spec;
    spec["vaultUrl"] = json!(f.vault.url());
    json!({
        "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
        "metadata": {"name": "agent", "namespace": "ci", "uid": "uid-1", "generation": 1, "resourceVersion": "1"},
        "spec": spec,
    })
}

#[tokio::test]
async fn run_syncs_a_binding_repairs_drift_and_shuts_down() {
    let f = start("secrets:\n  - {name: db-password, value: from-the-vault}\n").await;
    let op = operator(
        &f,
        binding(
            &f,
            json!({"secrets": [{"name": "db-password", "key": "DB_PASSWORD"}]}),
        ),
        None,
    );
    let state = op.state.clone();

    // First sync: the Secret is applied and the status says Ready.
    until("the Secret to be applied", || {
        op.secret_holds("DB_PASSWORD", "from-the-vault")
    })
    .await;
    until("the status to say Ready", || {
        state
            .lock()
            .unwrap()
            .status
            .as_ref()
            .is_some_and(|s| s["conditions"][0]["status"] == "True")
    })
    .await;
    let secret = state.lock().unwrap().secret.clone().unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kvsync"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["kvsync.io/binding"],
        "agent"
    );
    let query = state.lock().unwrap().applied[0].0.clone();
    assert!(
        query.split('&').any(|p| p == "fieldManager=kvsync"),
        "{query}"
    );

    // Drift: someone edits the Secret; the metadata watch maps it back to the binding.
    let applies_before = {
        let mut s = state.lock().unwrap();
        let mut edited = s.secret.clone().unwrap();
        edited["data"]["DB_PASSWORD"] = json!(b64("edited-by-hand"));
        edited["metadata"]["resourceVersion"] = json!("500");
        s.secret = Some(edited.clone());
        let event = json!({"type": "MODIFIED", "object": meta_of(&edited)});
        s.secret_watches
            .retain(|w| w.unbounded_send(event.clone()).is_ok());
        s.applies
    };
    until("the edited Secret to be put back", || {
        state.lock().unwrap().applies > applies_before
            && op.secret_holds("DB_PASSWORD", "from-the-vault")
    })
    .await;
    // The status writes (seen by the watch as MODIFIED events) caused no further apply.
    assert_eq!(state.lock().unwrap().applies, applies_before + 1);
    op.shutdown().await;
    assert_eq!(
        f.stats().await.count("get_secret", 200),
        1,
        "the drift repair was served from the poller's cache"
    );
}

#[tokio::test]
async fn force_sync_annotation_reads_the_vault_now_and_status_changes_do_not() {
    let f = start("secrets:\n  - {name: db-password, value: before}\n").await;
    let op = operator(
        &f,
        binding(
            &f,
            json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h"}),
        ),
        None,
    );
    until("the first sync", || {
        op.secret_holds("db-password", "before")
    })
    .await;
    until("the status", || op.state.lock().unwrap().status.is_some()).await;
    f.put_secret("db-password", "after").await;
    // The status write reached the watch as a MODIFIED event and was
    // filtered out by the predicate; the annotation is not.
    op.force_sync("1");
    until("the forced read to bring the new value", || {
        op.secret_holds("db-password", "after")
    })
    .await;
    op.shutdown().await;
    assert_eq!(
        f.stats().await.count("get_secret", 200),
        2,
        "first sync and the forced read; nothing for the status change"
    );
}

#[tokio::test]
async fn merge_adds_a_finalizer_and_removes_only_its_keys_on_delete() {
    let f = start("secrets:\n  - {name: db-password, value: merged}\n").await;
    let shared = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "agent", "namespace": "ci", "resourceVersion": "7"},
        "data": {"theirs": b64("keep-me")}});
    let b = binding(
        &f,
        json!({"secrets": [{"name": "db-password", "key": "ours"}], "target": {"policy": "Merge"}}),
    );
    let op = operator(&f, b, Some(shared));
    let state = op.state.clone();
    until("our key to be merged", || op.secret_holds("ours", "merged")).await;
    {
        let s = state.lock().unwrap();
        let secret = s.secret.as_ref().unwrap();
        assert_eq!(secret["data"]["theirs"], b64("keep-me"));
        assert!(
            secret["metadata"]["labels"].is_null(),
            "a Merge target is not relabelled"
        );
        assert!(
            s.applied[0].0.contains("fieldManager=kvsync-merge-uid-1"),
            "{}",
            s.applied[0].0
        );
        assert_eq!(
            s.binding["metadata"]["finalizers"],
            json!(["kvsync.io/merge-cleanup"])
        );
        assert_eq!(
            s.binding_patches[0]["metadata"]["resourceVersion"], "1",
            "the finalizer is added with optimistic concurrency"
        );
    }

    // kubectl delete: the API server sets deletionTimestamp and keeps the object for the finalizer.
    op.update_binding(|b| {
        b["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        b["metadata"]["generation"] = json!(2);
    });
    until("the finalizer to be removed", || {
        state.lock().unwrap().binding["metadata"]["finalizers"] == json!([])
    })
    .await;
    {
        let s = state.lock().unwrap();
        let secret = s.secret.as_ref().unwrap();
        assert_eq!(secret["data"]["theirs"], b64("keep-me"));
        assert!(
            secret["data"].get("ours").is_none(),
            "our key is gone: {secret}"
        );
        let (query, body) = s.applied.last().unwrap();
        assert!(query.contains("fieldManager=kvsync-merge-uid-1"));
        assert!(
            body.get("data").is_none(),
            "released by applying nothing as our field manager"
        );
    }
    op.shutdown().await;
}

#[tokio::test]
async fn a_data_change_restarts_rollout_targets_once() {
    let f = start("secrets:\n  - {name: db-password, value: v1}\n").await;
    let b = binding(
        &f,
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h",
               "rollout": [{"kind": "Deployment", "name": "agent"}]}),
    );
    let op = operator(&f, b, None);
    until("the first sync", || {
        op.state.lock().unwrap().status.is_some()
    })
    .await;
    assert!(
        op.state.lock().unwrap().deployment_patches.is_empty(),
        "no restart on the first sync"
    );

    // Two changes inside the 300 ms window: one restart at its end.
    f.put_secret("db-password", "v2").await;
    op.force_sync("1");
    until("v2 in the Secret", || op.secret_holds("db-password", "v2")).await;
    f.put_secret("db-password", "v3").await;
    op.force_sync("2");
    until("v3 in the Secret", || op.secret_holds("db-password", "v3")).await;
    until("the restart", || {
        !op.state.lock().unwrap().deployment_patches.is_empty()
    })
    .await;
    let patch = op.state.lock().unwrap().deployment_patches[0].clone();
    assert!(
        patch["spec"]["template"]["metadata"]["annotations"]["kvsync.io/restartedAt"].is_string(),
        "{patch}"
    );

    // No change: no restart.
    let reads = f.stats().await.count("get_secret", 200);
    op.force_sync("3");
    let started = Instant::now();
    while f.stats().await.count("get_secret", 200) == reads {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the forced read did not happen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A restart, if one were due, would come within the 300 ms window.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        op.state.lock().unwrap().deployment_patches.len(),
        1,
        "one restart for two changes, none for no change"
    );
    op.shutdown().await;
}

#[tokio::test]
async fn a_missing_crd_keeps_it_not_ready_and_is_counted() {
    let f = start("secrets: []\n").await;
    let op = operator_with(
        &f,
        Fake {
            bindings_status: Some(404),
            ..Default::default()
        },
    );
    until("the failed listing to be counted", || {
        op.errors("watch_bindings_not_found") >= 1
    })
    .await;
    until("the managed Secrets to be listed", || {
        !op.not_ready().contains("managed secrets")
    })
    .await;
    let why = op.not_ready();
    assert!(
        why.starts_with("waiting for the initial listing of vaultsecretbindings in namespace ci"),
        "{why}"
    );
    assert_eq!(op.errors("watch_bindings_forbidden"), 0);
    assert_eq!(op.errors("watch_other"), 0);
    op.shutdown().await;
}

#[tokio::test]
async fn readiness_waits_for_the_initial_listing_of_the_managed_secrets() {
    let f = start("secrets:\n  - {name: db-password, value: v1}\n").await;
    let op = operator_with(
        &f,
        Fake {
            binding: binding(&f, json!({"secrets": [{"name": "db-password"}]})),
            secrets_status: Some(403),
            ..Default::default()
        },
    );
    assert!(!op.health.is_ready(), "registered before it runs");
    until("the refused listing to be counted", || {
        op.errors("watch_secrets_forbidden") >= 1
    })
    .await;
    until("the bindings to be listed", || {
        !op.not_ready().contains("vaultsecretbindings")
    })
    .await;
    let why = op.not_ready();
    assert!(
        why.starts_with("waiting for the initial listing of managed secrets in namespace ci"),
        "{why}"
    );

    // RBAC granted: the retry lists and the operator is ready.
    op.state.lock().unwrap().secrets_status = None;
    until("readiness", || op.health.is_ready()).await;
    op.shutdown().await;
}

#[tokio::test]
async fn a_watch_that_keeps_failing_after_sync_makes_it_not_ready_until_it_recovers() {
    let f = start("secrets:\n  - {name: db-password, value: v1}\n").await;
    let op = operator(
        &f,
        binding(&f, json!({"secrets": [{"name": "db-password"}]})),
        None,
    );
    until("readiness after the initial listings", || {
        op.health.is_ready()
    })
    .await;
    assert_eq!(op.errors("watch_bindings_forbidden"), 0);

    // RBAC revoked: the open watch ends and every restart is refused.
    {
        let mut s = op.state.lock().unwrap();
        s.bindings_status = Some(403);
        s.other_watches.clear();
    }
    until("not ready while the watch keeps failing", || {
        op.not_ready()
            .contains("the watch of vaultsecretbindings in namespace ci keeps failing")
    })
    .await;
    assert!(op.errors("watch_bindings_forbidden") >= 2);

    // Granted again: the watch resumes; its next event shows it works.
    op.state.lock().unwrap().bindings_status = None;
    until("the watch to resume", || {
        !op.state.lock().unwrap().other_watches.is_empty()
    })
    .await;
    op.update_binding(|_| {});
    until("readiness again", || op.health.is_ready()).await;
    op.shutdown().await;
}

#[tokio::test]
async fn a_standby_writes_nothing_until_it_becomes_the_leader() {
    let f = start("secrets:\n  - {name: db-password, value: v1}\n").await;
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let op = operator_as(
        &f,
        Fake {
            binding: binding(&f, json!({"secrets": [{"name": "db-password"}]})),
            ..Default::default()
        },
        kvsync::controller::Replica {
            leader: Some(leader_rx),
            ..Default::default()
        },
    );
    until("the watches to list (a standby's caches are warm)", || {
        op.not_ready().is_empty()
    })
    .await;
    // A standby: the bindings are listed and reconciled, but nothing is
    // read from the vault or written.
    tokio::task::yield_now().await;
    assert!(op.state.lock().unwrap().secret.is_none());
    assert_eq!(
        f.stats().await.total("get_secret"),
        0,
        "a standby reads no vault"
    );
    leader_tx.send(true).unwrap();
    until("the new leader to sync", || {
        op.secret_holds("db-password", "v1")
    })
    .await;
    op.shutdown().await;
}

#[tokio::test]
async fn a_shard_reconciles_only_the_bindings_it_owns() {
    let f = start("secrets:\n  - {name: db-password, value: v1}\n").await;
    let owner: kvsync::shard::Shard = "0/2".parse().unwrap();
    let uid = (0..)
        .map(|i| format!("uid-{i}"))
        .find(|u| !owner.owns(u))
        .unwrap();
    let mut b = binding(&f, json!({"secrets": [{"name": "db-password"}]}));
    b["metadata"]["uid"] = json!(uid);
    let op = operator_as(
        &f,
        Fake {
            binding: b.clone(),
            ..Default::default()
        },
        kvsync::controller::Replica {
            shard: owner,
            ..Default::default()
        },
    );
    until("the watches to list", || op.not_ready().is_empty()).await;
    // Give the controller the chance to act on the listing it filtered.
    op.force_sync("now");
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(
        op.state.lock().unwrap().secret.is_none(),
        "another shard's binding is left alone"
    );
    assert_eq!(f.stats().await.total("get_secret"), 0);
    op.shutdown().await;

    // The shard that owns it syncs it.
    let op = operator_as(
        &f,
        Fake {
            binding: b,
            ..Default::default()
        },
        kvsync::controller::Replica {
            shard: "1/2".parse().unwrap(),
            ..Default::default()
        },
    );
    until("the owning shard to sync", || {
        op.secret_holds("db-password", "v1")
    })
    .await;
    op.shutdown().await;
}
