//! Scale on a real API server (issue 9): 1,000 bindings over 2 vaults and 10
//! namespaces, one operator. Ignored by default — it should run alone, as it
//! reads the API server's request counters, which other tests would move:
//!
//! `KVSYNC_E2E_KUBECONFIG=~/.kube/config cargo test --locked --test e2e_scale -- --ignored --nocapture`
//!
//! Prints one JSON line (create→Ready p50/p99, Key Vault requests of the
//! first sync, of an unchanged cycle and of a one-secret change, API server
//! requests of an unchanged cycle, the operator's peak RSS) and asserts the
//! bars that do not depend on the machine: an unchanged cycle costs no vault
//! GET, at most ⌈200/25⌉ LIST pages per vault and cycle, no Secret read and
//! no Secret write; a changed secret costs exactly one GET.

mod e2e_support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use e2e_support::*;
use futures::{StreamExt, TryStreamExt};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

const BINDINGS: usize = 1000;
const NAMESPACES: usize = 10;
const SECRETS: usize = 200;
const PICKS: usize = 3;
/// The CRD's shortest refreshInterval.
const REFRESH_SECS: u64 = 30;

fn seed() -> String {
    let mut s = String::from("secrets:\n");
    for i in 0..SECRETS {
        s.push_str(&format!("  - {{name: s{i:03}, value: value-{i}}}\n"));
    }
    s
}

/// Binding `i`: its namespace, vault (0 or 1) and picks.
fn layout(i: usize) -> (usize, usize, Vec<String>) {
    let picks = (0..PICKS)
        .map(|k| format!("s{:03}", (i * 7 + k * 61) % SECRETS))
        .collect();
    (i % NAMESPACES, (i / NAMESPACES) % 2, picks)
}

/// Requests of `op` at `vault` so far.
async fn ops(vault: &DevVault, op: &str) -> u64 {
    count_in(&vault.stats().await, op, None)
}

async fn vault_counts(vaults: &[&DevVault]) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for v in vaults {
        let stats = v.stats().await;
        for op in ["get_secret", "list_secrets", "token"] {
            *out.entry(op).or_default() += count_in(&stats, op, None);
        }
    }
    out
}

fn delta(
    after: &BTreeMap<&'static str, u64>,
    before: &BTreeMap<&'static str, u64>,
    op: &str,
) -> u64 {
    after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0)
}

/// `apiserver_request_total` summed by (verb, resource, subresource).
async fn api_requests(client: &kube::Client) -> HashMap<(String, String, String), f64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .expect("the API server's /metrics (cluster-admin can read it)");
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        *out.entry((label("verb"), label("resource"), label("subresource")))
            .or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn api_delta(
    after: &HashMap<(String, String, String), f64>,
    before: &HashMap<(String, String, String), f64>,
    pick: impl Fn(&str, &str, &str) -> bool,
) -> u64 {
    after
        .iter()
        .filter(|((v, r, s), _)| pick(v, r, s))
        .map(|(k, n)| n - before.get(k).copied().unwrap_or(0.0))
        .sum::<f64>()
        .round() as u64
}

/// The operator's peak resident set (VmHWM), MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "scale: run alone against a real cluster (--ignored)"]
async fn a_thousand_bindings_over_two_vaults() {
    let kubeconfig = e2e_support::e2e!();
    let mut env = Env::start_with(
        kubeconfig,
        Options {
            namespaces: NAMESPACES,
            operator: false,
            ..Options::new(&seed())
        },
    )
    .await;
    let second = env.start_vault("dev-vault-2", &seed()).await;
    let urls = [env.vault.url.clone(), second.url.clone()];
    env.start_replica(
        "scale",
        &[
            "--concurrency".into(),
            "32".into(),
            "--status-heartbeat".into(),
            "15m".into(),
            "--allowed-vault-hosts".into(),
            second.host(),
        ],
    )
    .await;
    let pid = env.replica("scale").pid().expect("the operator runs");
    let client = env.client.clone();

    // Ready times come from one watch per namespace, started before the
    // first create, so no transition is missed.
    let created: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut watches = Vec::new();
    for n in 0..NAMESPACES {
        let api = env.scope(n).bindings();
        let tx = ready_tx.clone();
        let ns = env.scope(n).ns.clone();
        watches.push(tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Ok(Some(b)) = events.try_next().await {
                let st = b.status.as_ref();
                let ready = st.is_some_and(|s| {
                    s.observed_generation == b.metadata.generation
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                });
                if ready {
                    let name = format!("{ns}/{}", b.metadata.name.clone().unwrap_or_default());
                    let _ = tx.send((name, Instant::now()));
                }
            }
        }));
    }
    drop(ready_tx);
    let vaults = [&env.vault, &second];
    let before_first = vault_counts(&vaults).await;

    // Create, 50 at a time.
    futures::stream::iter(0..BINDINGS)
        .for_each_concurrent(50, |i| {
            let (n, v, picks) = layout(i);
            let scope = env.scope(n);
            let created = created.clone();
            let spec = json!({
                "vaultUrl": urls[v],
                "refreshInterval": format!("{REFRESH_SECS}s"),
                "secrets": picks.iter().map(|p| json!({"name": p})).collect::<Vec<Value>>(),
            });
            async move {
                let name = format!("b{i:04}");
                scope.apply_binding(&name, spec).await;
                created
                    .lock()
                    .unwrap()
                    .insert(format!("{}/{name}", scope.ns), Instant::now());
            }
        })
        .await;

    let mut ready_at: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready_at.len() < BINDINGS {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ready_rx.recv()).await {
            Ok(Some((name, at))) => {
                ready_at.entry(name).or_insert(at);
            }
            _ => panic!(
                "{} of {BINDINGS} bindings Ready after 300 s\n{}",
                ready_at.len(),
                env.logs.operator_tail()
            ),
        }
    }
    let created = created.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = ready_at
        .iter()
        .map(|(name, at)| at.saturating_duration_since(created[name]))
        .collect();
    latencies.sort();
    let first = vault_counts(&vaults).await;

    // One unchanged cycle (every binding's refresh, jitter included, and
    // slack), counted at the vaults and the API server.
    let window = Duration::from_secs(REFRESH_SECS * 11 / 10 + 5);
    let api_before = api_requests(&client).await;
    let vault_before = vault_counts(&vaults).await;
    let writes_before = env
        .replica("scale")
        .metric("kvsync_secret_writes_total", &[])
        .await;
    tokio::time::sleep(window).await; // the measured window itself, not a wait for state
    let vault_after = vault_counts(&vaults).await;
    let api_after = api_requests(&client).await;
    let writes_after = env
        .replica("scale")
        .metric("kvsync_secret_writes_total", &[])
        .await;
    let secrets_get = api_delta(&api_after, &api_before, |v, r, s| {
        v == "GET" && r == "secrets" && s.is_empty()
    });
    let secrets_write = api_delta(&api_after, &api_before, |v, r, _| {
        r == "secrets" && matches!(v, "PATCH" | "APPLY" | "UPDATE" | "PUT" | "CREATE" | "POST")
    });
    let status_write = api_delta(&api_after, &api_before, |v, r, s| {
        r == "vaultsecretbindings" && s == "status" && v != "GET"
    });
    let other = api_delta(&api_after, &api_before, |v, r, _| {
        (r == "secrets" || r == "vaultsecretbindings" || r == "serviceaccounts")
            && v != "WATCH"
            && v != "LIST"
    })
    .saturating_sub(secrets_get + secrets_write + status_write);
    let unchanged_get = delta(&vault_after, &vault_before, "get_secret");
    let unchanged_list = delta(&vault_after, &vault_before, "list_secrets");

    // One secret changes in vault 0: every Secret using it gets the value.
    let changed = "s000";
    let users: Vec<(usize, String)> = (0..BINDINGS)
        .filter(|&i| {
            let (_, v, picks) = layout(i);
            v == 0 && picks.iter().any(|p| p == changed)
        })
        .map(|i| (layout(i).0, format!("b{i:04}")))
        .collect();
    assert!(!users.is_empty(), "the layout uses {changed}");
    let gets_before = ops(&env.vault, "get_secret").await;
    let lists_before = ops(&env.vault, "list_secrets").await;
    let put_at = Instant::now();
    env.vault.put_secret(changed, "changed-value").await;
    for (n, name) in &users {
        env.scope(*n)
            .wait_for_value(
                name,
                changed,
                "changed-value",
                "the new version",
                CHANGE_DEADLINE,
            )
            .await;
    }
    let change_latency = put_at.elapsed();
    let change_gets = ops(&env.vault, "get_secret").await - gets_before;
    let change_lists = ops(&env.vault, "list_secrets").await - lists_before;

    let line = json!({
        "test": "e2e_scale",
        "bindings": BINDINGS, "keys": BINDINGS * PICKS, "vaults": 2, "secrets_per_vault": SECRETS,
        "ready_ms": {"p50": percentile(&latencies, 0.50), "p99": percentile(&latencies, 0.99)},
        "kv": {
            "first_sync": {"get": delta(&first, &before_first, "get_secret"),
                           "list": delta(&first, &before_first, "list_secrets"),
                           "token": delta(&first, &before_first, "token")},
            "unchanged_cycle": {"get": unchanged_get, "list": unchanged_list},
            "one_change": {"get": change_gets, "list": change_lists,
                           "secrets_updated": users.len(), "latency_ms": change_latency.as_millis()},
        },
        "api_unchanged_cycle": {"secrets_get": secrets_get, "secrets_write": secrets_write,
                                "status_write": status_write, "other": other},
        "peak_rss_mib": (peak_rss_mib(pid) * 10.0).round() / 10.0,
    });
    println!("{line}");

    // A window of 1.1 refresh + 5 s holds at most 2 cycles per vault.
    let pages = SECRETS.div_ceil(25) as u64;
    assert_eq!(unchanged_get, 0, "an unchanged cycle GETs nothing: {line}");
    assert!(unchanged_list <= 2 * 2 * pages, "LIST pages: {line}");
    assert_eq!(secrets_get, 0, "no Secret read in steady state: {line}");
    assert_eq!(secrets_write, 0, "no Secret write in steady state: {line}");
    assert_eq!(
        writes_after, writes_before,
        "kvsync_secret_writes_total: {line}"
    );
    assert_eq!(change_gets, 1, "one GET for a changed secret: {line}");
    for w in watches {
        w.abort();
    }
}
