//! One ClusterVaultSecretBinding across many namespaces (issue 10): what a
//! refresh cycle costs the vault compared with one namespaced binding of
//! the same picks, Secret writes only on change, and the operator's memory.
//! The real `kvsync run` against the API stand-in and a dev vault.
//!
//! Environment: KVSYNC_BENCH_NAMESPACES (default 500), KVSYNC_BENCH_PICKS
//! (default 5), KVSYNC_BENCH_REFRESH_SECS (default 30, at least 30).
//! Run: `cargo bench --bench cluster` (about two minutes). Prints one JSON
//! line on stdout, progress on stderr; it checks only that what it measured
//! happened (every namespace synced, every Secret updated), no timings.

#[path = "../tests/support/apiserver.rs"]
mod apiserver;
#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/operator.rs"]
mod operator;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use common::env_num;
use kvsync::devvault::Stats;
use operator::Stack;
use serde_json::{Value, json};

fn vault_reads(s: &Stats) -> u64 {
    s.requests
        .iter()
        .filter(|(op, _)| *op == "get_secret" || *op == "list_secrets")
        .flat_map(|(_, by_status)| by_status.values())
        .sum()
}

fn secret_writes(stack: &Stack) -> u64 {
    ["apply", "patch", "create", "update"]
        .iter()
        .map(|verb| stack.api.count(verb, "secrets", ""))
        .sum()
}

fn status_of(stack: &Stack) -> Value {
    stack
        .api
        .get("clustervaultsecretbindings", "", "agents")
        .map(|c| c["status"].clone())
        .unwrap_or_default()
}

/// Waits out one refresh cycle (this is a bench: the cycle is what is measured).
async fn one_cycle(refresh: Duration) {
    tokio::time::sleep(refresh + refresh / 10 + Duration::from_secs(2)).await;
}

#[tokio::main]
async fn main() {
    let namespaces = env_num("KVSYNC_BENCH_NAMESPACES", 500) as usize;
    let picks = env_num("KVSYNC_BENCH_PICKS", 5) as usize;
    let refresh = Duration::from_secs(env_num("KVSYNC_BENCH_REFRESH_SECS", 30).max(30));
    let refresh_text = format!("{}s", refresh.as_secs());
    let mut seed = String::from("secrets:\n");
    for i in 0..100 {
        seed.push_str(&format!("  - {{name: s{i:03}, value: value-{i}}}\n"));
    }
    let stack = Stack::start(&seed, &["--default-refresh-interval", &refresh_text]).await;
    let url = stack.vault.vault.url();
    let picked: Vec<Value> = (0..picks)
        .map(|i| json!({"name": format!("s{i:03}")}))
        .collect();
    eprintln!(
        "cluster bench: 1 cluster binding x {namespaces} namespaces, {picks} picks, refresh {refresh_text}"
    );

    // 0. One namespaced binding of the same picks: the cost to match.
    stack.api.create_namespace("solo");
    stack
        .api
        .create(json!({
            "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
            "metadata": {"name": "solo", "namespace": "solo"},
            "spec": {"vaultUrl": url, "secrets": picked, "refreshInterval": refresh_text},
        }))
        .unwrap();
    stack
        .wait_for(
            "the namespaced binding's Secret",
            Duration::from_secs(30),
            || stack.api.get("secrets", "solo", "solo").map(|_| ()),
        )
        .await;
    stack.vault.reset_stats().await;
    one_cycle(refresh).await;
    let single_cycle = vault_reads(&stack.vault.stats().await);
    eprintln!("one namespaced binding: {single_cycle} vault reads per cycle");

    // 1. The cluster binding's first sync into every namespace.
    stack.api.create_all(
        (0..namespaces).map(|i| {
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": format!("agents-{i:04}"), "labels": {"kvsync.io/agents": "true"}}})
        }),
        |_| {},
    );
    stack.vault.reset_stats().await;
    stack.api.reset_counts();
    let created = Instant::now();
    stack
        .api
        .create(json!({
            "apiVersion": "kvsync.io/v1alpha1", "kind": "ClusterVaultSecretBinding",
            "metadata": {"name": "agents"},
            "spec": {"namespaceSelector": {"matchLabels": {"kvsync.io/agents": "true"}},
                     "vaultUrl": url, "secrets": picked, "refreshInterval": refresh_text},
        }))
        .unwrap();
    stack
        .wait_for("every namespace synced", Duration::from_secs(300), || {
            (status_of(&stack)["namespacesSynced"] == namespaces).then_some(())
        })
        .await;
    let first_sync_secs = created.elapsed().as_secs_f64();
    let first_reads = vault_reads(&stack.vault.stats().await);
    let first_writes = secret_writes(&stack);
    eprintln!(
        "first sync: {first_sync_secs:.1} s, {first_reads} vault reads, {first_writes} Secret writes"
    );

    // 2. An unchanged cycle.
    stack.vault.reset_stats().await;
    stack.api.reset_counts();
    one_cycle(refresh).await;
    let unchanged_reads = vault_reads(&stack.vault.stats().await);
    let unchanged_writes = secret_writes(&stack);
    let unchanged_secret_gets = stack.api.count("get", "secrets", "");
    eprintln!(
        "unchanged cycle: {unchanged_reads} vault reads, {unchanged_writes} Secret writes, {unchanged_secret_gets} Secret GETs"
    );

    // 3. One secret changes: every namespace's Secret follows.
    stack.vault.reset_stats().await;
    stack.api.reset_counts();
    stack.vault.put_secret("s000", "rotated").await;
    let rotated = base64::engine::general_purpose::STANDARD.encode("rotated");
    let changed_at = Instant::now();
    stack
        .wait_for("every Secret rotated", refresh * 3, || {
            (0..namespaces)
                .all(|i| {
                    stack
                        .api
                        .get("secrets", &format!("agents-{i:04}"), "agents")
                        .is_some_and(|s| s["data"]["s000"] == rotated.as_str())
                })
                .then_some(())
        })
        .await;
    let change_secs = changed_at.elapsed().as_secs_f64();
    let changed_reads = vault_reads(&stack.vault.stats().await);
    let changed_writes = secret_writes(&stack);
    eprintln!(
        "one secret changed: all {namespaces} Secrets in {change_secs:.1} s, {changed_reads} vault reads, {changed_writes} Secret writes"
    );

    println!(
        "{}",
        json!({
            "namespaces": namespaces,
            "picks": picks,
            "refresh_secs": refresh.as_secs(),
            "single_binding_vault_reads_per_cycle": single_cycle,
            "first_sync_secs": first_sync_secs,
            "first_sync_vault_reads": first_reads,
            "first_sync_secret_writes": first_writes,
            "unchanged_cycle_vault_reads": unchanged_reads,
            "unchanged_cycle_secret_writes": unchanged_writes,
            "unchanged_cycle_secret_gets": unchanged_secret_gets,
            "one_change_secs": change_secs,
            "one_change_vault_reads": changed_reads,
            "one_change_secret_writes": changed_writes,
            "peak_rss_mib": stack.peak_rss_mib(),
        })
    );
}
