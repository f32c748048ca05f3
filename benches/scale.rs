//! The scale bars of DESIGN §6 without a cluster (issue 9): the real
//! `kvsync run` binary against an in-memory API server stand-in
//! (tests/support/apiserver.rs) and in-process dev vaults with Key Vault's
//! service limit injected (4,000 transactions per 10 s per vault).
//!
//! Default scale: 10,000 bindings x 5 picks (50,000 keys) over 10
//! namespaces and 10 vaults of 1,000 secrets, `refreshInterval: 30s`.
//! Environment: KVSYNC_BENCH_BINDINGS, KVSYNC_BENCH_VAULTS,
//! KVSYNC_BENCH_SECRETS (per vault), KVSYNC_BENCH_PICKS,
//! KVSYNC_BENCH_NAMESPACES, KVSYNC_BENCH_REFRESH_SECS,
//! KVSYNC_BENCH_THROTTLE (transactions per 10 s, 0 = none),
//! KVSYNC_BENCH_CONCURRENCY (passed as `--concurrency` when set),
//! KVSYNC_BENCH_RUST_LOG (the operator's RUST_LOG, default `warn`),
//! KVSYNC_BENCH_BIN (another `kvsync` binary, e.g. one built with
//! `--profile profiling`), KVSYNC_BENCH_PROFILE_ENV (space-separated
//! `K=V` pairs set on both operators, `{label}` replaced by `a` for the
//! first and `b` for the restarted one, e.g. heaptrack's
//! `LD_PRELOAD=... DUMP_HEAPTRACK_OUTPUT=/tmp/ht-{label}.raw`).
//! `--status-heartbeat 15m` and `--concurrency` are passed only when the
//! binary's `run --help` lists them.
//!
//! Run: `cargo bench --bench scale` (a few minutes at the default scale).
//! Prints one JSON line on stdout, progress on stderr. It checks only that
//! what it measured really happened (every binding Ready, every Secret of
//! the changed secret updated, every binding synced after the restart);
//! no timed assertions.

#[path = "../tests/support/apiserver.rs"]
mod apiserver;
#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use base64::Engine;
use common::env_num;
use serde_json::{Value, json};

const BUILT: &str = env!("CARGO_BIN_EXE_kvsync");

/// The operator binary: KVSYNC_BENCH_BIN, or the one cargo built.
fn bin() -> String {
    std::env::var("KVSYNC_BENCH_BIN").unwrap_or_else(|_| BUILT.to_string())
}

/// KVSYNC_BENCH_PROFILE_ENV as pairs, for the operator `label`.
fn profile_env(label: &str) -> Vec<(String, String)> {
    std::env::var("KVSYNC_BENCH_PROFILE_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("KVSYNC_BENCH_PROFILE_ENV: {kv:?} is not K=V"));
            (k.to_string(), v.replace("{label}", label))
        })
        .collect()
}
const OPERATOR_NS: &str = "kvsync";

struct Scale {
    bindings: usize,
    vaults: usize,
    secrets: usize,
    picks: usize,
    namespaces: usize,
    refresh: Duration,
    throttle: u64,
}

impl Scale {
    fn from_env() -> Self {
        let s = Self {
            bindings: env_num("KVSYNC_BENCH_BINDINGS", 10_000) as usize,
            vaults: env_num("KVSYNC_BENCH_VAULTS", 10) as usize,
            secrets: env_num("KVSYNC_BENCH_SECRETS", 1000) as usize,
            picks: env_num("KVSYNC_BENCH_PICKS", 5) as usize,
            namespaces: env_num("KVSYNC_BENCH_NAMESPACES", 10) as usize,
            refresh: Duration::from_secs(env_num("KVSYNC_BENCH_REFRESH_SECS", 30)),
            throttle: env_num("KVSYNC_BENCH_THROTTLE", 4000),
        };
        assert!(s.vaults >= 1 && s.namespaces >= 1 && s.bindings >= 1);
        assert!(
            (1..=s.secrets).contains(&s.picks),
            "picks must be 1..=secrets per vault"
        );
        assert!(
            s.refresh >= Duration::from_secs(30),
            "refreshInterval >= 30s"
        );
        s
    }

    fn vault_of(&self, i: usize) -> usize {
        i % self.vaults
    }

    fn namespace_of(&self, i: usize) -> String {
        format!("bench-{}", (i / self.vaults) % self.namespaces)
    }

    fn name_of(i: usize) -> String {
        format!("b{i:05}")
    }

    /// The vault secrets binding `i` picks: `picks` distinct names spread
    /// evenly, so that each secret is shared by a few bindings.
    fn picks_of(&self, i: usize) -> Vec<String> {
        let j = i / self.vaults;
        let step = self.secrets / self.picks;
        (0..self.picks)
            .map(|k| secret_name((j + k * step) % self.secrets))
            .collect()
    }
}

fn secret_name(n: usize) -> String {
    format!("s{n:04}")
}

fn seed(scale: &Scale) -> String {
    let mut s = String::new();
    if scale.throttle > 0 {
        s.push_str(&format!(
            "throttle: {{transactions: {}, windowSeconds: 10}}\n",
            scale.throttle
        ));
    }
    s.push_str("secrets:\n");
    for n in 0..scale.secrets {
        s.push_str(&format!(
            "  - {{name: {}, value: value-{n}}}\n",
            secret_name(n)
        ));
    }
    s
}

/// What the stand-in's observer records: when each binding became Ready,
/// and which Secrets still wait for a changed value.
#[derive(Default)]
struct Track {
    created: HashMap<String, Instant>,
    ready: HashMap<String, Duration>,
    /// Secrets ("ns/name") that must get `key` = `value` (base64).
    pending: HashSet<String>,
    expect: Option<(String, String)>,
    last_update: Option<Instant>,
}

fn observe(api: &ApiServer) -> Arc<Mutex<Track>> {
    let track = Arc::new(Mutex::new(Track::default()));
    let t = track.clone();
    api.observe(move |w| {
        let key = format!("{}/{}", w.namespace, w.name);
        if w.resource == "vaultsecretbindings" && w.subresource == "status" {
            let o = w.object;
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let current = o["status"]["observedGeneration"] == o["metadata"]["generation"];
            if ready && current {
                let mut t = t.lock().unwrap();
                if !t.ready.contains_key(&key)
                    && let Some(at) = t.created.get(&key).copied()
                {
                    t.ready.insert(key, at.elapsed());
                }
            }
        } else if w.resource == "secrets" && !w.deleted {
            let mut t = t.lock().unwrap();
            if let Some((k, v)) = t.expect.clone()
                && t.pending.contains(&key)
                && w.object["data"][&k] == v.as_str()
            {
                t.pending.remove(&key);
                t.last_update = Some(Instant::now());
            }
        }
    });
    track
}

/// A `kvsync run` child process.
struct Operator {
    child: tokio::process::Child,
    metrics: SocketAddr,
    log: PathBuf,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The flags of `run` this binary knows (the new ones may not be there yet).
fn supported_flags() -> String {
    let out = std::process::Command::new(bin())
        .args(["run", "--help"])
        .output()
        .expect("kvsync run --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Setup {
    kubeconfig: PathBuf,
    ca: PathBuf,
    token: PathBuf,
    hosts: String,
    authority: String,
    flags: Vec<String>,
    dir: PathBuf,
}

async fn http_get(http: &reqwest::Client, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = http
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

impl Operator {
    /// Starts one; returns once `/readyz` answers 200 (its watches listed).
    async fn start(
        setup: &Setup,
        http: &reqwest::Client,
        label: &str,
        extra_env: &[(String, String)],
    ) -> Operator {
        for attempt in 1..=3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
            let log = setup.dir.join(format!("operator-{label}-{attempt}.log"));
            let mut child = tokio::process::Command::new(bin())
                .arg("run")
                .args(["--allowed-vault-hosts", &setup.hosts])
                .arg("--ca-file")
                .arg(&setup.ca)
                .args(["--metrics-addr", &metrics.to_string()])
                .args(["--log-format", "json"])
                .args(&setup.flags)
                .env("KUBECONFIG", &setup.kubeconfig)
                .env("POD_NAMESPACE", OPERATOR_NS)
                .env("POD_NAME", format!("kvsync-bench-{label}"))
                .env(
                    "RUST_LOG",
                    std::env::var("KVSYNC_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .env("AZURE_AUTHORITY_HOST", &setup.authority)
                .env("AZURE_TENANT_ID", kvsync::devvault::DEV_TENANT_ID)
                .env("AZURE_CLIENT_ID", kvsync::devvault::DEV_CLIENT_ID)
                .env("AZURE_FEDERATED_TOKEN_FILE", &setup.token)
                .envs(extra_env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .kill_on_drop(true)
                .spawn()
                .expect("start kvsync run");
            let started = Instant::now();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    if tail(&log, 5).contains("cannot listen on --metrics-addr") && attempt < 3 {
                        break;
                    }
                    panic!("kvsync run exited ({status}):\n{}", tail(&log, 40));
                }
                if matches!(http_get(http, metrics, "/readyz").await, Some((200, _))) {
                    return Operator {
                        child,
                        metrics,
                        log,
                    };
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "kvsync run not ready within 60 s:\n{}",
                    tail(&log, 40)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        unreachable!("three attempts")
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// VmHWM: the peak resident set, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        (kib / 1024.0 * 10.0).round() / 10.0
    }

    /// Sum of `kvsync_syncs_total` over its labels.
    async fn syncs(&self, http: &reqwest::Client) -> u64 {
        let Some((200, text)) = http_get(http, self.metrics, "/metrics").await else {
            return 0;
        };
        text.lines()
            .filter(|l| l.starts_with("kvsync_syncs_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Key Vault requests over all vaults: op -> status -> count.
async fn kv_stats(vaults: &[support::Fixture]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut all: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for v in vaults {
        for (op, by_status) in v.stats().await.requests {
            for (status, n) in by_status {
                *all.entry(op.clone())
                    .or_default()
                    .entry(status)
                    .or_default() += n;
            }
        }
    }
    all
}

fn total(stats: &BTreeMap<String, BTreeMap<String, u64>>, op: &str) -> u64 {
    stats.get(op).map(|m| m.values().sum()).unwrap_or(0)
}

fn with_status(stats: &BTreeMap<String, BTreeMap<String, u64>>, status: &str) -> u64 {
    stats.values().filter_map(|m| m.get(status)).sum()
}

async fn reset_all(vaults: &[support::Fixture], api: &ApiServer) {
    for v in vaults {
        v.reset_stats().await;
    }
    api.reset_counts();
}

/// API requests by kind: Secret GETs, Secret writes, status writes, other.
fn api_summary(api: &ApiServer) -> Value {
    let (mut get, mut write, mut status, mut other) = (0, 0, 0, 0);
    let mut others = BTreeMap::new();
    for ((verb, res, sub), n) in api.counts() {
        let is_write = matches!(
            verb.as_str(),
            "create" | "update" | "patch" | "apply" | "delete"
        );
        match (res.as_str(), sub.as_str()) {
            ("secrets", "") if verb == "get" => get += n,
            ("secrets", "") if is_write => write += n,
            ("vaultsecretbindings", "status") if is_write => status += n,
            _ => {
                other += n;
                others.insert(
                    format!("{verb} {res}{}{sub}", if sub.is_empty() { "" } else { "/" }),
                    n,
                );
            }
        }
    }
    json!({"secrets_get": get, "secrets_write": write, "status_write": status, "other": other, "other_by_kind": others})
}

fn percentile(sorted: &[Duration], p: f64) -> u64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_millis() as u64
}

async fn wait_for(what: &str, deadline: Duration, op: &Operator, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}\noperator log:\n{}",
            tail(&op.log, 40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scale = Scale::from_env();
    let refresh = scale.refresh;
    let n = scale.bindings;
    let dir = support::TempDir::new();
    let http = kvsync::azure::http::build_client(&[]).expect("http client");

    eprintln!(
        "scale: {} bindings x {} picks, {} vaults x {} secrets, {} namespaces, refresh {:?}, throttle {}/10s",
        n, scale.picks, scale.vaults, scale.secrets, scale.namespaces, refresh, scale.throttle
    );
    let seed = seed(&scale);
    let mut vaults = Vec::new();
    for _ in 0..scale.vaults {
        vaults.push(support::start(&seed).await);
    }
    let ca = dir.path("vault-cas.pem");
    std::fs::write(
        &ca,
        vaults
            .iter()
            .map(|v| v.vault.ca_pem())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let token = dir.path("federated-token");
    kvsync::devvault::write_federated_token(&token, "system:serviceaccount:kvsync:kvsync").unwrap();

    let api = ApiServer::start().await;
    api.create_namespace(OPERATOR_NS);
    for ns in 0..scale.namespaces {
        api.create_namespace(&format!("bench-{ns}"));
    }
    let kubeconfig = dir.path("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let track = observe(&api);

    let help = supported_flags();
    let mut flags = vec![
        "--default-refresh-interval".to_string(),
        format!("{}s", refresh.as_secs()),
    ];
    if help.contains("--status-heartbeat") {
        flags.extend(["--status-heartbeat".into(), "15m".into()]);
    }
    if let Ok(c) = std::env::var("KVSYNC_BENCH_CONCURRENCY")
        && help.contains("--concurrency")
    {
        flags.extend(["--concurrency".into(), c]);
    }
    eprintln!("operator flags: {}", flags.join(" "));
    let setup = Setup {
        kubeconfig,
        ca,
        token,
        hosts: vaults
            .iter()
            .map(|v| v.vault.addr().to_string())
            .collect::<Vec<_>>()
            .join(","),
        authority: format!("{}/", vaults[0].vault.url()),
        flags,
        dir: dir.0.clone(),
    };

    // 1. First sync: every binding created at once, straight into the store.
    let op = Operator::start(&setup, &http, "a", &profile_env("a")).await;
    let urls: Vec<String> = vaults.iter().map(|v| v.vault.url()).collect();
    let refresh_text = format!("{}s", refresh.as_secs());
    let created_at = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        let objs: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                let picks: Vec<Value> = scale.picks_of(i).into_iter().map(|s| json!({"name": s})).collect();
                json!({
                    "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
                    "metadata": {"name": Scale::name_of(i), "namespace": scale.namespace_of(i)},
                    "spec": {"vaultUrl": urls[scale.vault_of(i)], "secrets": picks, "refreshInterval": refresh_text},
                })
            })
            .collect();
        let t = track.clone();
        api.create_all(objs, |o| {
            let key = format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            );
            t.lock().unwrap().created.insert(key, Instant::now());
        });
        tokio::task::yield_now().await;
    }
    eprintln!("created {n} bindings in {:?}", created_at.elapsed());
    wait_for("every binding Ready", Duration::from_secs(900), &op, || {
        track.lock().unwrap().ready.len() == n
    })
    .await;
    let all_ready = created_at.elapsed();
    let mut ready: Vec<Duration> = track.lock().unwrap().ready.values().copied().collect();
    ready.sort();
    eprintln!("all Ready {all_ready:?} after the first create");
    let secrets = api.len("secrets");
    assert_eq!(secrets, n + 1, "a Secret per binding, and the hash key");
    let first = kv_stats(&vaults).await;
    eprintln!("first sync, Key Vault: {first:?}");
    let api_first = api_summary(&api);

    // 2. An unchanged cycle.
    reset_all(&vaults, &api).await;
    tokio::time::sleep(refresh.mul_f64(1.1) + Duration::from_secs(2)).await;
    let unchanged = kv_stats(&vaults).await;
    let api_unchanged = api_summary(&api);
    eprintln!("unchanged cycle, Key Vault: {unchanged:?}; API: {api_unchanged}");

    // 3. One secret changes in vault 0.
    let changed = (0..n)
        .filter(|&i| scale.vault_of(i) == 0)
        .flat_map(|i| scale.picks_of(i))
        .next()
        .expect("vault 0 has a binding");
    let affected: HashSet<String> = (0..n)
        .filter(|&i| scale.vault_of(i) == 0 && scale.picks_of(i).contains(&changed))
        .map(|i| format!("{}/{}", scale.namespace_of(i), Scale::name_of(i)))
        .collect();
    let new_value = format!("changed-{}", created_at.elapsed().as_millis());
    {
        let mut t = track.lock().unwrap();
        t.pending = affected.clone();
        t.expect = Some((
            changed.clone(),
            base64::engine::general_purpose::STANDARD.encode(&new_value),
        ));
    }
    // `attributes.updated` has whole seconds: a change within the second
    // of the last listing would look unchanged to a real Key Vault client.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reset_all(&vaults, &api).await;
    vaults[0].put_secret(&changed, &new_value).await;
    let put_at = Instant::now();
    wait_for(
        "every Secret using the changed secret updated",
        refresh.mul_f64(1.1) + Duration::from_secs(60),
        &op,
        || track.lock().unwrap().pending.is_empty(),
    )
    .await;
    let latency = track.lock().unwrap().last_update.expect("updated") - put_at;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let one = kv_stats(&vaults).await;
    let api_one = api_summary(&api);
    eprintln!(
        "one change ({changed} in vault 0, {} Secrets): {latency:?}; Key Vault: {one:?}; API: {api_one}",
        affected.len()
    );
    let peak_rss = op.peak_rss_mib();

    // 4. Restart: a new process reconciles every binding again.
    op.kill().await;
    reset_all(&vaults, &api).await;
    let restarted_at = Instant::now();
    let op = Operator::start(&setup, &http, "b", &profile_env("b")).await;
    let started_in = restarted_at.elapsed();
    let mut synced = 0;
    loop {
        synced = synced.max(op.syncs(&http).await);
        if synced >= n as u64 {
            break;
        }
        assert!(
            restarted_at.elapsed() < refresh * 3 + Duration::from_secs(120),
            "after the restart only {synced} of {n} bindings synced\n{}",
            tail(&op.log, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_synced = restarted_at.elapsed();
    let restart = kv_stats(&vaults).await;
    let api_restart = api_summary(&api);
    eprintln!(
        "restart: ready after {started_in:?}, all synced after {all_synced:?}; Key Vault: {restart:?}; API: {api_restart}"
    );
    let restart_rss = op.peak_rss_mib();
    op.kill().await;

    let kv_all: u64 = restart.values().flat_map(|m| m.values()).sum();
    let line = json!({
        "bench": "scale",
        "bindings": n,
        "keys": n * scale.picks,
        "vaults": scale.vaults,
        "secrets_per_vault": scale.secrets,
        "refresh_s": refresh.as_secs(),
        "ready_ms": {"p50": percentile(&ready, 0.50), "p99": percentile(&ready, 0.99), "all": all_ready.as_millis() as u64},
        "kv": {
            "first_sync": {"get": total(&first, "get_secret"), "list": total(&first, "list_secrets"), "token": total(&first, "token"), "429": with_status(&first, "429")},
            "unchanged_cycle": {"get": total(&unchanged, "get_secret"), "list": total(&unchanged, "list_secrets")},
            "one_change": {
                "get": total(&one, "get_secret"),
                "list": total(&one, "list_secrets"),
                "secrets_updated": affected.len(),
                "latency_ms": latency.as_millis() as u64,
            },
        },
        "api_first_sync": api_first,
        "api_unchanged_cycle": api_unchanged,
        "api_one_change": api_one,
        "restart": {
            "all_synced_ms": all_synced.as_millis() as u64,
            "kv_requests": kv_all,
            "kv_429": with_status(&restart, "429"),
            "api": api_restart,
            "peak_rss_mib": restart_rss,
        },
        "peak_rss_mib": peak_rss,
    });
    println!("{line}");
}
