//! Benchmarks of the quality bars in DESIGN §6 that can be measured without a
//! cluster: Key Vault requests per poll cycle against dev vaults, and the time
//! from a new binding to its Secret being applied (reconcile against a mock
//! API server that answers at once, vault = in-process dev vault over HTTPS).
//!
//! Run: `cargo bench --bench sync`. Prints numbers; it only checks that the
//! measured reconciles really synced.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::reflector::ObjectRef;
use kvsync::azure::AzureAccess;
use kvsync::crd::{VaultSecretBinding, VaultSecretBindingSpec};
use kvsync::poller::Poller;
use kvsync::reconcile::{Context, Settings, reconcile};
use serde_json::json;

const REFRESH: Duration = Duration::from_secs(300);

fn seed(n: usize) -> String {
    let mut s = String::from("secrets:\n");
    for i in 0..n {
        s.push_str(&format!("  - {{name: s{i:04}, value: value-{i}}}\n"));
    }
    s
}

fn spec(url: &str, yaml: &str) -> VaultSecretBindingSpec {
    serde_yaml::from_str(&format!("vaultUrl: {url}\n{yaml}")).unwrap()
}

async fn requests(f: &support::Fixture) -> (u64, u64) {
    let s = f.stats().await;
    (s.total("list_secrets"), s.total("get_secret"))
}

/// B bindings over V vaults, each binding picking 3 of the vault's secrets.
async fn cycle_cost(vaults: usize, items: usize, bindings: usize, picks_from: usize) {
    let mut fixtures = Vec::new();
    let mut pollers = Vec::new();
    for _ in 0..vaults {
        let f = support::start(&seed(items)).await;
        let (kv, _) = f.client("bench");
        pollers.push(Poller::new(kv, None));
        fixtures.push(f);
    }
    for b in 0..bindings {
        let v = b % vaults;
        let picks: Vec<String> = (0..3)
            .map(|k| format!("{{name: s{:04}}}", (b * 7 + k * 13) % picks_from))
            .collect();
        let who = ObjectRef::<VaultSecretBinding>::new(&format!("b{b}")).within("bench");
        pollers[v]
            .read(
                Some(&who),
                &spec(
                    &fixtures[v].vault.url(),
                    &format!("secrets: [{}]", picks.join(", ")),
                ),
                REFRESH,
                false,
            )
            .await
            .unwrap();
    }
    for p in &pollers {
        p.cycle().await; // learn each vault's size
    }
    for f in &fixtures {
        f.reset_stats().await;
    }
    for p in &pollers {
        p.cycle().await;
    }
    let (mut lists, mut gets) = (0, 0);
    for f in &fixtures {
        let (l, g) = requests(f).await;
        lists += l;
        gets += g;
    }
    // One secret changes in vault 0.
    tokio::time::sleep(Duration::from_millis(1100)).await; // `updated` has 1 s resolution
    fixtures[0].put_secret("s0000", "changed").await;
    for f in &fixtures {
        f.reset_stats().await;
    }
    for p in &pollers {
        p.cycle().await;
    }
    let (mut lists2, mut gets2) = (0, 0);
    for f in &fixtures {
        let (l, g) = requests(f).await;
        lists2 += l;
        gets2 += g;
    }
    let needed = picks_from.min(items);
    let pages = items.div_ceil(25);
    println!(
        "cycle cost: {vaults} vault(s) x {items} secrets, {bindings} bindings x 3 picks ({needed} distinct names/vault):\n  \
         unchanged vault: {lists} LIST pages + {gets} GETs in all ({:.1} per vault; bar: <= min({pages} pages, {needed} GETs) per vault)\n  \
         one secret changed: {lists2} LIST pages + {gets2} GETs (bar: + 1 GET)\n  \
         anchors (one GET per key per binding per refresh): {} GETs",
        (lists + gets) as f64 / vaults as f64,
        bindings * 3
    );
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A mock API server that answers every request at once: 404 for GET Secret,
/// the object for PATCH, 201 for events.
async fn answer_all(mut handle: Handle) {
    while let Some((req, send)) = handle.next_request().await {
        let (status, body) = match (req.method().as_str(), req.uri().path()) {
            ("GET", _) => (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
            ),
            ("POST", _) => (201, json!({})),
            (_, p) if p.ends_with("/status") => (
                200,
                json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding", "metadata": {"name": "b", "namespace": "bench"},
                       "spec": {"vaultUrl": "https://x.vault.azure.net", "secrets": [{"name": "a"}]}}),
            ),
            _ => (
                200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b", "namespace": "bench"}}),
            ),
        };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }
}

async fn first_sync_latency(n: usize) {
    let f = support::start(&seed(n)).await;
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(answer_all(handle));
    let client = kube::Client::new(service, "default");
    let access = Arc::new(AzureAccess::new(
        f.http.clone(),
        f.policy(),
        f.env("bench", "sub"),
        support::fast_retry(),
    ));
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            access,
            kvsync::poller::Pollers::new(None),
            kvsync::events::Events::new(client, "kvsync", None),
            Settings {
                default_refresh: REFRESH,
                rollout_window: Duration::from_secs(30),
                hash_key: kvsync::hashkey::HashKey::new(b"test-key"),
                force_sync_cooldown: Duration::ZERO,
                status_heartbeat: Duration::from_secs(900),
                concurrency: 32,
                access_policy: kvsync::policy::Mode::Open,
            },
            Arc::new(kvsync::metrics::Metrics::default()),
        )
        .without_start_spread(),
    );
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let b: VaultSecretBinding = serde_json::from_value(json!({
            "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
            "metadata": {"name": format!("b{i}"), "namespace": "bench", "uid": format!("uid-{i}"), "generation": 1},
            "spec": {"vaultUrl": f.vault.url(), "secrets": [{"name": format!("s{i:04}")}]},
        }))
        .unwrap();
        let started = Instant::now();
        reconcile(Arc::new(b), ctx.clone()).await.unwrap();
        times.push(started.elapsed());
    }
    let synced = ctx.metrics.encode();
    drop(ctx);
    server.abort();
    let gets = f.stats().await.count("get_secret", 200);
    assert!(
        synced.contains(&format!(
            "kvsync_syncs_total{{result=\"success\",reason=\"Synced\"}} {n}"
        )),
        "every reconcile must have synced:\n{synced}"
    );
    assert_eq!(gets, n as u64, "one vault GET per new binding");
    let first = times[0];
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "new binding -> Secret applied (dev vault over HTTPS, mock API server answering at once), {n} bindings:\n  \
         p50 {:?}, p99 {:?}, max {:?} (first includes the token: {:?}); bar: p50 < 50 ms, p99 < 250 ms",
        pct(0.50),
        pct(0.99),
        times[times.len() - 1],
        first
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    first_sync_latency(300).await;
    cycle_cost(4, 200, 2000, 200).await;
    cycle_cost(1, 1000, 100, 2).await;
}
