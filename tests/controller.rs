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
use kvsync::reconcile::Settings;
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
fn stream(state: &Mutex<Fake>, secrets: bool) -> Response<RespBody> {
    let (tx, rx) = unbounded::<Value>();
    let body = BodyExt::boxed(StreamBody::new(rx.map(|ev| {
        let mut line = serde_json::to_vec(&ev).unwrap();
        line.push(b'\n');
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(line)))
    })));
    let mut s = state.lock().unwrap();
    if secrets {
        s.secret_watches.push(tx);
    } else {
        s.other_watches.push(tx);
    }
    Response::builder().status(200).body(body).unwrap()
}

#[derive(Default)]
struct Fake {
    binding: Value,
    secret: Option<Value>,
    status: Option<Value>,
    secret_watches: Vec<UnboundedSender<Value>>,
    other_watches: Vec<UnboundedSender<Value>>,
    applies: usize,
    unexpected: Vec<String>,
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
        let watch = req.uri().query().unwrap_or_default().contains("watch=true");
        let body = req.into_body().collect_bytes().await.unwrap();
        let sent: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        let resp = match (method.as_str(), path.as_str()) {
            ("GET", p) if p == bindings && watch => stream(&state, false),
            ("GET", p) if p == bindings => {
                let b = state.lock().unwrap().binding.clone();
                full(
                    200,
                    json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBindingList", "metadata": {"resourceVersion": "1"}, "items": [b]}),
                )
            }
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
                let mut s = state.lock().unwrap();
                let mut secret = sent.clone();
                secret["metadata"]["resourceVersion"] = json!(format!("{}", 100 + s.applies));
                s.applies += 1;
                s.secret = Some(secret.clone());
                full(200, secret)
            }
            ("PATCH", p) if p == format!("{bindings}/agent/status") => {
                let mut s = state.lock().unwrap();
                s.status = Some(sent["status"].clone());
                let mut b = s.binding.clone();
                b["status"] = sent["status"].clone();
                full(200, b)
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

#[tokio::test]
async fn run_syncs_a_binding_repairs_drift_and_shuts_down() {
    let f = start("secrets:\n  - {name: db-password, value: from-the-vault}\n").await;
    let state = Arc::new(Mutex::new(Fake {
        binding: json!({
            "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
            "metadata": {"name": "agent", "namespace": "ci", "uid": "uid-1", "generation": 1, "resourceVersion": "1"},
            "spec": {"vaultUrl": f.vault.url(), "secrets": [{"name": "db-password", "key": "DB_PASSWORD"}]},
        }),
        ..Default::default()
    }));
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
    let server = tokio::spawn(serve(handle, state.clone()));
    let client = kube::Client::new(service, "default");
    let access = Arc::new(AzureAccess::new(
        f.http.clone(),
        f.policy(),
        f.env("operator", "sub"),
        fast_retry(),
    ));
    let (stop, stopped) = futures::channel::oneshot::channel::<()>();
    let run = tokio::spawn(kvsync::controller::run(
        client,
        access,
        Settings {
            default_refresh: Duration::from_secs(300),
            rollout_window: Duration::from_secs(30),
        },
        Arc::new(kvsync::metrics::Metrics::default()),
        Some("ci".into()),
        async move {
            let _ = stopped.await;
        },
    ));

    // First sync: the Secret is applied and the status says Ready.
    until("the Secret to be applied", || {
        state
            .lock()
            .unwrap()
            .secret
            .as_ref()
            .is_some_and(|s| s["data"]["DB_PASSWORD"] == b64("from-the-vault"))
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
        let s = state.lock().unwrap();
        s.applies > applies_before
            && s.secret
                .as_ref()
                .is_some_and(|s| s["data"]["DB_PASSWORD"] == b64("from-the-vault"))
    })
    .await;

    // Status-only changes do not loop: the status writes above caused no further apply.
    let applies = state.lock().unwrap().applies;
    assert_eq!(applies, applies_before + 1);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the controller stops on shutdown")
        .unwrap();
    server.abort();
    let unexpected = state.lock().unwrap().unexpected.clone();
    assert!(unexpected.is_empty(), "unexpected requests: {unexpected:?}");
    assert_eq!(
        f.stats().await.count("get_secret", 200),
        1,
        "the drift repair was served from the poller's cache"
    );
}
