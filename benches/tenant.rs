//! One tenant must not move the operator's memory, CPU or another
//! namespace's latency (DESIGN §10, issue 16): the real `kvsync run` (a child
//! process, tests/support/operator.rs) against the API stand-in and an
//! in-process dev vault, in two scenarios, each with its own operator and vault.
//!
//! 1. Oversized select: a vault of KVSYNC_BENCH_TENANT_SECRETS (1,000)
//!    secrets of KVSYNC_BENCH_TENANT_VALUE_BYTES (25,000) bytes each;
//!    KVSYNC_BENCH_TENANT_BINDINGS (12) bindings `select: {all: true}` in
//!    `tenant-a` (each Secret would pass 1 MiB: `SecretTooLarge`), and one
//!    binding of one pick (the vault's last secret) in `tenant-b`. Samples
//!    the operator's RSS and tenant-b's Ready condition every 200 ms until
//!    all of tenant-a's are `SecretTooLarge` and two more refresh cycles
//!    went by.
//! 2. Pinned-version backlog: one binding in `tenant-a` pinning
//!    KVSYNC_BENCH_TENANT_PINS (300) versions of one name (each its own
//!    `key`), every read of that name delayed KVSYNC_BENCH_TENANT_LATENCY_MS
//!    (1,000) by the dev vault's fault injection; once its first read was
//!    answered, a binding of one other, fast secret in `tenant-b`. Then
//!    KVSYNC_BENCH_TENANT_CYCLES (3) windows of one refresh cycle (+10 %)
//!    each, counting the vault's requests in each.
//!
//! Also: KVSYNC_BENCH_TENANT_REFRESH_SECS (30, the bindings'
//! `refreshInterval`), KVSYNC_BENCH_TENANT_TIMEOUT_SECS (300: a scenario
//! gives up, saying so, when what it waits for has not happened by then),
//! KVSYNC_BENCH_TENANT_SCENARIO (0 both, 1 or 2 only that one).
//!
//! Run: `cargo bench --bench tenant`. Prints one JSON line per scenario on
//! stdout, progress on stderr; no timed assertions. The operator is killed
//! when its scenario ends, also on a panic (`Stack` kills on drop).
//!
//! Measured on 2026-12-07, before issue 16's fixes (defaults, 2 shared
//! cores, release build):
//! 1. all 12 `SecretTooLarge` 3.4 s after create, and they stay so; 1,000
//!    GETs (each value once) + 40 LIST pages until then, then 0 GET and 40
//!    LIST pages a cycle; operator RSS 16.2 MiB idle, peak (VmHWM)
//!    385.3 MiB, 98.5 MiB at the end (two cycles later) — the values only
//!    failing bindings read are kept; tenant-b Ready 56 ms after create,
//!    0 of 355 samples not Ready after that.
//! 2. tenant-b's fast binding (created 1.1 s after tenant-a's) is Ready
//!    36.1 s after create, `VaultTimeout` at 10 s first: its one GET waits
//!    behind tenant-a's 300 slow ones (8 at a time). tenant-a's binding:
//!    `VaultTimeout` at 10 s, Synced at 72.3 s after 573 GETs for 300 pins
//!    (the 30 s cycle re-reads the pins while the first reads are in
//!    flight), then `VaultTimeout` again at 118 s with nothing changed (its
//!    pins re-checked each cycle take 37.5 s, longer than the cycle):
//!    not Ready in 263 of 1,191 samples after it was. GETs per 33 s cycle
//!    window: 105, 237, 153 (0 LIST). Operator peak RSS 22 MiB.
//!
//! After issue 16's fixes (2026-12-07, same machine and sizes):
//! 1. all 12 `SecretTooLarge` 0.2 s after create; 46 GETs in all (reads stop
//!    past 1 MiB, shared by the twelve; retries over an unchanged listing
//!    decide from the sizes kept, 0 GET), 40 LIST pages a cycle; operator
//!    RSS 16.4 MiB idle, peak (VmHWM) 25.5 MiB, 25.4 MiB at the end;
//!    tenant-b Ready 59 ms after create, 0 of 336 samples not Ready.
//! 2. tenant-b's fast binding Ready 153 ms after create, never
//!    `VaultTimeout` (reads have their own permits, a namespace at most 4 of
//!    them). tenant-a's binding: `VaultTimeout` at 10 s, Synced at 102.6 s
//!    (its share is 4 reads at a time: 300 × 1 s / 4), 341 GETs + 24
//!    versions-listing pages for 300 pins, and Ready from then on (0 of
//!    1,441 samples not Ready after). Per 33 s cycle window: 38 GETs, then
//!    1 GET and 12 versions pages (one listing of the pinned name, 25 a
//!    page). Operator peak RSS 20.6 MiB.

#[path = "../tests/support/apiserver.rs"]
mod apiserver;
#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/operator.rs"]
mod operator;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::env_num;
use kvsync::devvault::Stats;
use operator::Stack;
use serde_json::{Value, json};

const VSB: &str = "vaultsecretbindings";
/// How often the scenarios sample.
const SAMPLE: Duration = Duration::from_millis(200);

struct Config {
    secrets: usize,
    value_bytes: usize,
    bindings: usize,
    pins: usize,
    latency_ms: u64,
    cycles: u64,
    refresh: Duration,
    timeout: Duration,
}

impl Config {
    fn from_env() -> Self {
        let c = Self {
            secrets: env_num("KVSYNC_BENCH_TENANT_SECRETS", 1000) as usize,
            value_bytes: env_num("KVSYNC_BENCH_TENANT_VALUE_BYTES", 25_000) as usize,
            bindings: env_num("KVSYNC_BENCH_TENANT_BINDINGS", 12) as usize,
            pins: env_num("KVSYNC_BENCH_TENANT_PINS", 300) as usize,
            latency_ms: env_num("KVSYNC_BENCH_TENANT_LATENCY_MS", 1000),
            cycles: env_num("KVSYNC_BENCH_TENANT_CYCLES", 3),
            refresh: Duration::from_secs(env_num("KVSYNC_BENCH_TENANT_REFRESH_SECS", 30).max(30)),
            timeout: Duration::from_secs(env_num("KVSYNC_BENCH_TENANT_TIMEOUT_SECS", 300)),
        };
        assert!(c.secrets >= 1 && c.bindings >= 1 && c.pins >= 1);
        assert!(c.value_bytes >= 8, "values of at least 8 bytes");
        c
    }

    fn refresh_text(&self) -> String {
        format!("{}s", self.refresh.as_secs())
    }

    /// One refresh cycle as the operator may stretch it (+10 %).
    fn cycle(&self) -> Duration {
        self.refresh + self.refresh / 10
    }
}

/// The Ready condition in a binding object, and whether it describes the
/// binding's current generation.
fn ready_in(binding: &Value) -> Option<(&Value, bool)> {
    let c = binding["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c,
        binding["status"]["observedGeneration"] == binding["metadata"]["generation"],
    ))
}

fn is_ready(c: &Value, current: bool) -> bool {
    c["status"] == "True" && current
}

/// A status write the stand-in saw: when, whether it was Ready for the
/// current generation, and Ready's reason.
struct Written {
    at: Instant,
    ready: bool,
    reason: String,
}

/// Every status write of every binding ("ns/name" → writes, in order).
type Writes = Arc<Mutex<HashMap<String, Vec<Written>>>>;

fn record_status_writes(stack: &Stack) -> Writes {
    let writes = Writes::default();
    let w = writes.clone();
    stack.api.observe(move |write| {
        if write.resource != VSB || write.subresource != "status" {
            return;
        }
        if let Some((c, current)) = ready_in(write.object) {
            w.lock()
                .unwrap()
                .entry(format!("{}/{}", write.namespace, write.name))
                .or_default()
                .push(Written {
                    at: Instant::now(),
                    ready: is_ready(c, current),
                    reason: c["reason"].as_str().unwrap_or_default().to_string(),
                });
        }
    });
    writes
}

/// A binding whose Ready condition is sampled.
struct Watched {
    ns: &'static str,
    name: String,
    created: Instant,
    /// Samples taken, and those not Ready after the first Ready one.
    samples: u64,
    first_ready_sample: Option<Duration>,
    not_ready_after_ready: u64,
    /// Reasons sampled, in the order first seen.
    reasons: Vec<String>,
}

impl Watched {
    /// Creates the binding (`spec` without `vaultUrl`) and starts its clock.
    fn create(stack: &Stack, ns: &'static str, name: &str, spec: Value) -> Self {
        let created = Instant::now();
        stack.create_binding(ns, name, spec);
        Watched {
            ns,
            name: name.to_string(),
            created,
            samples: 0,
            first_ready_sample: None,
            not_ready_after_ready: 0,
            reasons: Vec::new(),
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn sample(&mut self, stack: &Stack) {
        self.samples += 1;
        let now = stack.ready_now(self.ns, &self.name);
        let ready = now.as_ref().is_some_and(|(c, cur)| is_ready(c, *cur));
        if let Some((c, _)) = &now {
            let reason = c["reason"].as_str().unwrap_or_default();
            if !self.reasons.iter().any(|r| r == reason) {
                self.reasons.push(reason.to_string());
            }
        }
        if ready && self.first_ready_sample.is_none() {
            self.first_ready_sample = Some(self.created.elapsed());
        } else if !ready && self.first_ready_sample.is_some() {
            self.not_ready_after_ready += 1;
        }
    }

    /// Ready for its generation, as last sampled.
    fn ready(&self, stack: &Stack) -> bool {
        stack
            .ready_now(self.ns, &self.name)
            .is_some_and(|(c, cur)| is_ready(&c, cur))
    }

    /// What was seen: create → Ready (from the first Ready status write),
    /// the reasons written (and when, the first 20 writes), and the samples
    /// not Ready after the first Ready.
    fn report(&self, writes: &Writes) -> Value {
        let writes = writes.lock().unwrap();
        let mine = writes.get(&self.key()).map(Vec::as_slice).unwrap_or(&[]);
        let first_ready = mine.iter().position(|w| w.ready);
        let mut written: Vec<&str> = Vec::new();
        for w in mine {
            if !written.contains(&w.reason.as_str()) {
                written.push(&w.reason);
            }
        }
        let vault_timeout =
            written.contains(&"VaultTimeout") || self.reasons.iter().any(|r| r == "VaultTimeout");
        json!({
            "binding": self.key(),
            "create_to_ready_ms": first_ready.map(|i| mine[i].at.duration_since(self.created).as_millis() as u64),
            "status_writes": mine.len(),
            "not_ready_writes_after_ready": first_ready.map(|i| mine[i..].iter().filter(|w| !w.ready).count()),
            "reasons_written": written,
            "timeline_ms": mine.iter().take(20).map(|w| json!([w.at.duration_since(self.created).as_millis() as u64, w.reason])).collect::<Vec<_>>(),
            "ever_vault_timeout": vault_timeout,
            "samples": self.samples,
            "samples_not_ready_after_ready": self.not_ready_after_ready,
        })
    }
}

fn requests(s: &Stats) -> Value {
    json!({
        "get": s.total("get_secret"),
        "list_pages": s.total("list_secrets"),
        "by_op": s.requests,
    })
}

fn secret_name(n: usize) -> String {
    format!("s{n:04}")
}

/// Scenario 1: one tenant's bindings select more than a Secret can hold.
async fn oversized_select(cfg: &Config) -> Value {
    let refresh_text = cfg.refresh_text();
    let mut seed = String::with_capacity(cfg.secrets * (cfg.value_bytes + 40));
    seed.push_str("secrets:\n");
    for n in 0..cfg.secrets {
        let head = format!("v{n:06}-");
        let pad = cfg.value_bytes.saturating_sub(head.len());
        seed.push_str(&format!(
            "  - {{name: {}, value: \"{head}{}\"}}\n",
            secret_name(n),
            "x".repeat(pad)
        ));
    }
    eprintln!(
        "1. oversized select: {} secrets x {} bytes, {} bindings select all in tenant-a, 1 pick in tenant-b, refresh {refresh_text}",
        cfg.secrets, cfg.value_bytes, cfg.bindings
    );
    let mut stack = Stack::start(&seed, &["--default-refresh-interval", &refresh_text]).await;
    drop(seed);
    let writes = record_status_writes(&stack);
    stack.api.create_namespace("tenant-a");
    stack.api.create_namespace("tenant-b");
    let idle_rss = stack.rss_mib();
    stack.vault.reset_stats().await;

    let created = Instant::now();
    let names: Vec<String> = (0..cfg.bindings).map(|i| format!("all-{i:02}")).collect();
    for name in &names {
        stack.create_binding(
            "tenant-a",
            name,
            json!({"select": {"all": true}, "refreshInterval": refresh_text}),
        );
    }
    let mut small = Watched::create(
        &stack,
        "tenant-b",
        "small",
        json!({"secrets": [{"name": secret_name(cfg.secrets - 1)}], "refreshInterval": refresh_text}),
    );

    let settle = cfg.cycle() * 2 + Duration::from_secs(2);
    let mut all_too_large: Option<(Duration, Stats)> = None;
    let mut left_too_large = 0u64;
    let mut max_rss: f64 = 0.0;
    let mut outcome = "ok".to_string();
    loop {
        if let Some(status) = stack.exited() {
            outcome = format!("the operator exited ({status})");
            break;
        }
        if let Some(rss) = stack.rss_mib() {
            max_rss = max_rss.max(rss);
        }
        small.sample(&stack);
        let too_large = names
            .iter()
            .filter(|n| {
                stack
                    .ready_now("tenant-a", n)
                    .is_some_and(|(c, _)| c["status"] == "False" && c["reason"] == "SecretTooLarge")
            })
            .count();
        match &all_too_large {
            None if too_large == names.len() => {
                let at = created.elapsed();
                eprintln!("   all {} SecretTooLarge after {at:?}", names.len());
                all_too_large = Some((at, stack.vault.stats().await));
            }
            Some(_) if too_large < names.len() => left_too_large += 1,
            _ => {}
        }
        if let Some((at, _)) = &all_too_large
            && created.elapsed() >= *at + settle
            && small.first_ready_sample.is_some()
        {
            break;
        }
        if created.elapsed() >= cfg.timeout {
            outcome = format!(
                "timed out after {:?}: {too_large} of {} SecretTooLarge, tenant-b Ready: {}",
                cfg.timeout,
                names.len(),
                small.ready(&stack)
            );
            break;
        }
        tokio::time::sleep(SAMPLE).await;
    }
    let elapsed = created.elapsed();
    let total = stack.vault.stats().await;
    let peak = stack.proc_status_mib("VmHWM");
    let final_rss = stack.rss_mib();
    eprintln!("   {outcome}; operator log: {}", stack.log.display());
    let after = all_too_large.as_ref().map(|(at, s)| {
        json!({
            "seconds": (elapsed - *at).as_secs(),
            "get": total.total("get_secret") - s.total("get_secret"),
            "list_pages": total.total("list_secrets") - s.total("list_secrets"),
        })
    });
    let reasons: Vec<Value> = names
        .iter()
        .map(|n| {
            stack
                .ready_now("tenant-a", n)
                .map(|(c, _)| c["reason"].clone())
                .unwrap_or(Value::Null)
        })
        .collect();
    json!({
        "scenario": "oversized_select",
        "outcome": outcome,
        "secrets": cfg.secrets,
        "value_bytes": cfg.value_bytes,
        "bindings": cfg.bindings,
        "refresh_s": cfg.refresh.as_secs(),
        "operator_rss_mib": {"idle": idle_rss, "peak_vmhwm": peak, "max_sampled": max_rss, "final": final_rss},
        "all_too_large_ms": all_too_large.as_ref().map(|(at, _)| at.as_millis() as u64),
        "samples_one_left_too_large_after_all_were": left_too_large,
        "tenant_a_reasons_at_end": reasons,
        "kv_until_all_too_large": all_too_large.as_ref().map(|(_, s)| requests(s)),
        "kv_after_all_too_large": after,
        "kv_total": requests(&total),
        "tenant_b": small.report(&writes),
    })
}

/// Scenario 2: one tenant pins many versions of a slow secret.
async fn pinned_backlog(cfg: &Config) -> Value {
    let refresh_text = cfg.refresh_text();
    let mut seed = String::from("secrets:\n");
    for i in 0..cfg.pins {
        seed.push_str(&format!("  - {{name: pinned, value: pinned-{i}}}\n"));
    }
    seed.push_str("  - {name: fast, value: fast-value}\n");
    eprintln!(
        "2. pinned backlog: {} pinned versions of one name at {} ms a read in tenant-a, one fast pick in tenant-b, refresh {refresh_text}",
        cfg.pins, cfg.latency_ms
    );
    let mut stack = Stack::start(&seed, &["--default-refresh-interval", &refresh_text]).await;
    let writes = record_status_writes(&stack);
    stack.api.create_namespace("tenant-a");
    stack.api.create_namespace("tenant-b");
    let (kv, _) = stack.vault.client("bench-setup");
    let versions: Vec<String> = kv
        .list_versions("pinned")
        .await
        .expect("the versions of `pinned`")
        .iter()
        .map(|item| item.id.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(versions.len(), cfg.pins, "one version per pin");
    stack
        .vault
        .fault(json!({"op": "get_secret", "secret": "pinned", "latencyMs": cfg.latency_ms}))
        .await;
    stack.vault.reset_stats().await;

    let pins: Vec<Value> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"name": "pinned", "version": v, "key": format!("v{i:04}")}))
        .collect();
    let mut pinned = Watched::create(
        &stack,
        "tenant-a",
        "pinned",
        json!({"secrets": pins, "refreshInterval": refresh_text}),
    );
    // Its reads are in flight once the first (slow) one was answered.
    let in_flight_by = Duration::from_millis(cfg.latency_ms) + Duration::from_secs(30);
    while stack.vault.stats().await.total("get_secret") == 0 {
        if pinned.created.elapsed() >= in_flight_by {
            eprintln!("   no read of the pinned binding answered within {in_flight_by:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fast_after_ms = pinned.created.elapsed().as_millis() as u64;
    let mut fast = Watched::create(
        &stack,
        "tenant-b",
        "fast",
        json!({"secrets": [{"name": "fast"}], "refreshInterval": refresh_text}),
    );

    let mut outcome = "ok".to_string();
    loop {
        if let Some(status) = stack.exited() {
            outcome = format!("the operator exited ({status})");
            break;
        }
        pinned.sample(&stack);
        fast.sample(&stack);
        if pinned.first_ready_sample.is_some() && fast.first_ready_sample.is_some() {
            break;
        }
        if pinned.created.elapsed() >= cfg.timeout {
            outcome = format!(
                "timed out after {:?}: pinned Ready: {}, fast Ready: {}",
                cfg.timeout,
                pinned.first_ready_sample.is_some(),
                fast.first_ready_sample.is_some()
            );
            break;
        }
        tokio::time::sleep(SAMPLE / 2).await;
    }
    let first_sync = stack.vault.stats().await;
    let first_sync_s = pinned.created.elapsed().as_secs_f64();
    eprintln!(
        "   first sync: {outcome} after {first_sync_s:.1} s; {} GETs",
        first_sync.total("get_secret")
    );

    let mut cycles = Vec::new();
    if stack.exited().is_none() {
        for c in 0..cfg.cycles {
            stack.vault.reset_stats().await;
            let window = Instant::now();
            while window.elapsed() < cfg.cycle() && stack.exited().is_none() {
                pinned.sample(&stack);
                fast.sample(&stack);
                tokio::time::sleep(SAMPLE).await;
            }
            let s = stack.vault.stats().await;
            eprintln!(
                "   cycle window {}: {} GETs, {} LIST pages in {:?}",
                c + 1,
                s.total("get_secret"),
                s.total("list_secrets"),
                window.elapsed()
            );
            cycles.push(requests(&s));
        }
    }
    if let Some(status) = stack.exited() {
        outcome = format!("{outcome}; the operator exited ({status})");
    }
    eprintln!("   operator log: {}", stack.log.display());
    json!({
        "scenario": "pinned_backlog",
        "outcome": outcome,
        "pins": cfg.pins,
        "latency_ms": cfg.latency_ms,
        "refresh_s": cfg.refresh.as_secs(),
        "tenant_b_created_after_ms": fast_after_ms,
        "tenant_b": fast.report(&writes),
        "tenant_a": pinned.report(&writes),
        "kv_first_sync": requests(&first_sync),
        "cycle_window_s": cfg.cycle().as_secs_f64(),
        "kv_per_cycle_window": cycles,
        "operator_peak_rss_mib": stack.proc_status_mib("VmHWM"),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cfg = Config::from_env();
    let only = env_num("KVSYNC_BENCH_TENANT_SCENARIO", 0);
    if only == 0 || only == 1 {
        println!("{}", oversized_select(&cfg).await);
    }
    if only == 0 || only == 2 {
        println!("{}", pinned_backlog(&cfg).await);
    }
}
