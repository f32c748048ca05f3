//! End-to-end tests of running kvsync the way the chart does (issue 8): two
//! `--leader-elect` replicas with one writer between them, failover on
//! SIGTERM (the Lease is released) and on SIGKILL (the Lease expires),
//! `--shard I/N` replicas that split the bindings without overlap, and the
//! chart's manifests accepted by a real API server.
//!
//! Like `tests/e2e.rs` they run against a real API server when
//! `KVSYNC_E2E_KUBECONFIG` is set and are skipped otherwise. The cluster has
//! no nodes, so the replicas are `kvsync run` child processes side by side
//! (`Env::start_replica`), each with its own POD_NAME and metrics port, all in
//! one operator namespace (POD_NAMESPACE, where the Leases live). Who wrote
//! what is read from each process's `/metrics` and `/readyz`, the Lease, the
//! dev vault's request counts and the Events' `reportingInstance` (the
//! operator's POD_NAME).
//!
//! Each test prints its measured times on one line (`..._ms=`), for the
//! closing note.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::GroupVersion;
use kube::discovery::Scope as ResourceScope;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

mod e2e_support;
use e2e_support::*;

const SEED: &str = r#"
secrets:
  - {name: db-password, value: first-password}
"#;

/// Short leader-election timing, so that an expiry-based failover fits in a test.
const LEASE: Duration = Duration::from_secs(6);
const RENEW: Duration = Duration::from_secs(4);
/// How often the leader renews (src/leader.rs: twice per renew deadline), so
/// also how stale the last renewal seen may be.
const RENEW_PERIOD: Duration = Duration::from_secs(2);
/// The chart's default timing: with it a takeover by expiry needs at least
/// `LONG_LEASE - LONG_RENEW / 2` = 10 s after the last renewal, so a faster
/// takeover proves the Lease was released.
const LONG_LEASE: Duration = Duration::from_secs(15);
const LONG_RENEW: Duration = Duration::from_secs(10);

/// The Lease of unsharded replicas.
const LEASE_NAME: &str = "kvsync";

fn leader_elect(lease: Duration, renew: Duration) -> Vec<String> {
    vec![
        "--leader-elect".into(),
        "--leader-elect-lease-duration".into(),
        format!("{}s", lease.as_secs()),
        "--leader-elect-renew-deadline".into(),
        format!("{}s", renew.as_secs()),
    ]
}

/// A binding whose periodic check is an hour away: the vault reads a test
/// sees are the syncs it caused (and the poller's listing).
fn spec() -> Value {
    json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h"})
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// What every named replica's `/readyz` says; `Err` names those not ready.
async fn roles(env: &Env, names: &[&str]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for n in names {
        match env.replica(n).readyz().await {
            Ok(r) => out.push(r),
            Err(e) => bad.push(e),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(bad.join("; "))
    }
}

/// Waits until exactly one of `names` says `ready (leader)` and every other
/// `ready (standby)`; returns the leader and the standbys.
async fn one_leader(env: &Env, names: &[&str]) -> (String, Vec<String>) {
    eventually(
        env,
        &format!("exactly one of {names:?} to answer /readyz \"ready (leader)\", the others \"ready (standby)\""),
        SYNC_DEADLINE,
        || async {
            let said = roles(env, names).await?;
            let leaders: Vec<&str> = names
                .iter()
                .zip(&said)
                .filter(|(_, r)| *r == "ready (leader)")
                .map(|(n, _)| *n)
                .collect();
            let standbys = said.iter().filter(|r| *r == "ready (standby)").count();
            match leaders[..] {
                [leader] if standbys == names.len() - 1 => Ok((
                    leader.to_string(),
                    names
                        .iter()
                        .filter(|n| **n != leader)
                        .map(|n| n.to_string())
                        .collect(),
                )),
                _ => Err(format!("/readyz: {:?}", names.iter().zip(&said).collect::<Vec<_>>())),
            }
        },
    )
    .await
}

/// Waits until Lease `lease` names `holder`; returns how long after `since`.
async fn wait_holder(env: &Env, lease: &str, holder: &str, since: Instant) -> Duration {
    eventually(
        env,
        &format!("Lease {}/{lease} to name {holder}", env.op_ns),
        Duration::from_secs(40),
        || async {
            match env.lease_holder(lease).await? {
                Some(h) if h == holder => Ok(since.elapsed()),
                other => Err(format!("holderIdentity {other:?}")),
            }
        },
    )
    .await
}

/// Waits (with [`one_leader`]) until replica `name`, the only one running,
/// says `ready (leader)`; returns how long after `since`.
async fn wait_leader(env: &Env, name: &str, since: Instant) -> Duration {
    let (leader, _) = one_leader(env, &[name]).await;
    assert_eq!(leader, name);
    since.elapsed()
}

/// The Lease's spec, which must exist.
async fn lease_spec(env: &Env, lease: &str) -> LeaseSpec {
    env.lease(lease)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .unwrap_or_else(|| panic!("Lease {}/{lease} has no spec", env.op_ns))
}

/// When a claim expires for the others: renewTime + leaseDurationSeconds
/// (the rule kube-lease-manager and client-go follow). The replicas and the
/// test share one clock, so it compares with `SystemTime::now()`.
fn claim_expiry(spec: &LeaseSpec) -> SystemTime {
    let renewed: SystemTime = spec
        .renew_time
        .as_ref()
        .unwrap_or_else(|| panic!("a held Lease has a renewTime: {spec:?}"))
        .0
        .into();
    let secs = spec
        .lease_duration_seconds
        .unwrap_or_else(|| panic!("a held Lease has leaseDurationSeconds: {spec:?}"));
    renewed + Duration::from_secs(u64::try_from(secs).unwrap())
}

fn acquired(spec: &LeaseSpec) -> SystemTime {
    spec.acquire_time
        .as_ref()
        .unwrap_or_else(|| panic!("a taken Lease has an acquireTime: {spec:?}"))
        .0
        .into()
}

/// Signed `a - b` in milliseconds.
fn ms_between(a: SystemTime, b: SystemTime) -> i128 {
    match a.duration_since(b) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    }
}

/// Per binding of the namespace: the `reportingInstance`s of its Events
/// and their reasons.
async fn reporters(on: &Scope) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let events: Api<Event> = Api::namespaced(on.client.clone(), &on.ns);
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for e in events.list(&Default::default()).await.unwrap().items {
        let Some(binding) = e
            .regarding
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("VaultSecretBinding"))
            .and_then(|r| r.name.clone())
        else {
            continue;
        };
        out.entry(binding)
            .or_default()
            .entry(e.reporting_instance.clone().unwrap_or_default())
            .or_default()
            .insert(e.reason.clone().unwrap_or_default());
    }
    out
}

/// Waits until binding `name` has a `Synced` Event, then returns who reported
/// its Events (instance → reasons).
async fn synced_by(on: &Scope, name: &str) -> BTreeMap<String, BTreeSet<String>> {
    eventually(
        on,
        &format!("a Synced Event about binding {}/{name}", on.ns),
        SYNC_DEADLINE,
        || async {
            let all = reporters(on).await;
            let mine = all.get(name).cloned().unwrap_or_default();
            if mine.values().any(|reasons| reasons.contains("Synced")) {
                Ok(mine)
            } else {
                Err(format!(
                    "Events of the binding by reportingInstance: {mine:?}"
                ))
            }
        },
    )
    .await
}

#[tokio::test]
async fn two_leader_elect_replicas_have_exactly_one_writer() {
    let kc = e2e!();
    let mut env = Env::start_with(
        kc,
        Options {
            operator: false,
            ..Options::new(SEED)
        },
    )
    .await;
    let names = ["kvsync-e2e-a", "kvsync-e2e-b"];
    let started = Instant::now();
    for n in names {
        env.start_replica(n, &leader_elect(LEASE, RENEW)).await;
    }
    let (leader, standbys) = one_leader(&env, &names).await;
    let election = started.elapsed();
    let standby = standbys[0].clone();
    wait_holder(&env, LEASE_NAME, &leader, started).await;

    let t = Instant::now();
    env.bind_and_wait("app", spec()).await;
    env.wait_for_value(
        "app",
        "db-password",
        "first-password",
        "the leader's first sync",
        SYNC_DEADLINE,
    )
    .await;
    let first_sync = t.elapsed();
    // A forced check that reached the vault: by then the standby's watch has
    // delivered the create and the annotation too, so a standby that wrote
    // would have written.
    env.barrier(&env, "app").await;

    let (l, s) = (env.replica(&leader), env.replica(&standby));
    for (metric, what) in [
        ("kvsync_secret_writes_total", "Secret writes"),
        ("kvsync_keyvault_requests_total", "vault requests"),
        ("kvsync_syncs_total", "syncs"),
    ] {
        assert_eq!(
            s.metric(metric, &[]).await,
            0.0,
            "the standby {standby} made no {what} ({metric})\n{}",
            env.logs.operator_tail()
        );
    }
    assert!(
        l.metric("kvsync_secret_writes_total", &[]).await >= 1.0,
        "the leader {leader} wrote the Secret\n{}",
        env.logs.operator_tail()
    );
    // Every read the vault served is one the leader counted: nobody else read.
    let reads = eventually(
        &env,
        "the dev vault's reads to equal the leader's kvsync_keyvault_requests_total (the standby's being 0)",
        Duration::from_secs(10),
        || async {
            let vault = env.vault.reads().await as f64;
            let by_leader = l.metric("kvsync_keyvault_requests_total", &[]).await;
            let by_standby = s.metric("kvsync_keyvault_requests_total", &[]).await;
            if vault == by_leader && by_standby == 0.0 {
                Ok(vault)
            } else {
                Err(format!(
                    "vault served {vault} reads; leader counted {by_leader}, standby {by_standby}"
                ))
            }
        },
    )
    .await;
    let events = synced_by(&env, "app").await;
    assert_eq!(
        events.keys().collect::<Vec<_>>(),
        [&leader],
        "only the leader reported Events about the binding: {events:?}"
    );
    // Still one writer, the same one.
    let (still, _) = one_leader(&env, &names).await;
    assert_eq!(
        still,
        leader,
        "the leader stayed the leader\n{}",
        env.logs.operator_tail()
    );
    assert_eq!(
        env.lease_holder(LEASE_NAME).await.unwrap().as_deref(),
        Some(leader.as_str())
    );
    eprintln!(
        "two_leader_elect_replicas_have_exactly_one_writer: election_ms={} first_sync_ms={} vault_reads={reads} leader={leader} standby={standby}",
        ms(election),
        ms(first_sync)
    );
}

#[tokio::test]
async fn sigterm_on_the_leader_hands_over_within_seconds() {
    let kc = e2e!();
    let mut env = Env::start_with(
        kc,
        Options {
            operator: false,
            ..Options::new(SEED)
        },
    )
    .await;
    let names = ["kvsync-e2e-a", "kvsync-e2e-b"];
    for n in names {
        env.start_replica(n, &leader_elect(LONG_LEASE, LONG_RENEW))
            .await;
    }
    let (leader, standbys) = one_leader(&env, &names).await;
    let survivor = standbys[0].clone();
    env.bind_and_wait("before", spec()).await;
    // The claim as last seen before the SIGTERM: renewals only move its
    // expiry later, so without a release nobody takes over before this.
    let claim = lease_spec(&env, LEASE_NAME).await;
    assert_eq!(claim.holder_identity.as_deref(), Some(leader.as_str()));
    let expires = claim_expiry(&claim);

    let (t0, t0_wall) = (Instant::now(), SystemTime::now());
    let status = env
        .terminate_replica(&leader, LONG_RENEW + Duration::from_secs(10))
        .await;
    let exited = t0.elapsed();
    assert!(
        status.success(),
        "the leader exits cleanly on SIGTERM: {status}\n{}",
        env.logs.operator_tail()
    );
    // Created once the old leader is gone, so only the new one can sync it.
    env.apply_binding("after", spec()).await;
    let taken = wait_holder(&env, LEASE_NAME, &survivor, t0).await;
    let leading = wait_leader(&env, &survivor, t0).await;
    env.ready("after", "True", SYNC_DEADLINE).await;
    let synced = t0.elapsed();
    env.wait_for_value(
        "after",
        "db-password",
        "first-password",
        "the new leader's sync of a binding created after the SIGTERM",
        SYNC_DEADLINE,
    )
    .await;

    let now = lease_spec(&env, LEASE_NAME).await;
    let took_at = acquired(&now);
    eprintln!(
        "sigterm_on_the_leader_hands_over_within_seconds: sigterm_exit_ms={} lease_taken_ms={} readyz_leader_ms={} new_binding_ready_ms={} old_claim_left_at_sigterm_ms={} lease_duration_ms={}",
        ms(exited),
        ms(taken),
        ms(leading),
        ms(synced),
        ms_between(expires, t0_wall),
        ms(LONG_LEASE)
    );
    assert!(
        took_at < expires,
        "{survivor} took the Lease ({took_at:?}) before the old claim expired ({expires:?}): only a release allows that\n{}",
        env.logs.operator_tail()
    );
    assert!(
        synced < LONG_LEASE,
        "a binding created after the SIGTERM is Ready within the lease duration ({LONG_LEASE:?}): took {synced:?}\n{}",
        env.logs.operator_tail()
    );
    let events = synced_by(&env, "after").await;
    assert_eq!(
        events.keys().collect::<Vec<_>>(),
        [&survivor],
        "the new leader synced the new binding: {events:?}"
    );
    assert!(
        env.replica(&survivor)
            .metric("kvsync_secret_writes_total", &[])
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn sigkill_on_the_leader_hands_over_within_the_lease_duration() {
    let kc = e2e!();
    let mut env = Env::start_with(
        kc,
        Options {
            operator: false,
            ..Options::new(SEED)
        },
    )
    .await;
    let names = ["kvsync-e2e-a", "kvsync-e2e-b"];
    for n in names {
        env.start_replica(n, &leader_elect(LEASE, RENEW)).await;
    }
    let (leader, standbys) = one_leader(&env, &names).await;
    let survivor = standbys[0].clone();
    env.bind_and_wait("before", spec()).await;

    let (t0, t0_wall) = (Instant::now(), SystemTime::now());
    env.kill_replica(&leader).await;
    // Read after the kill: the dead leader's last claim is this one or a
    // later one (a renewal in flight), never an earlier one.
    let claim = lease_spec(&env, LEASE_NAME).await;
    assert_eq!(
        claim.holder_identity.as_deref(),
        Some(leader.as_str()),
        "the killed leader released nothing"
    );
    let expires = claim_expiry(&claim);
    // Created once the old leader is gone, so only the new one can sync it:
    // its first sync is the new leader's first work.
    env.apply_binding("after", spec()).await;
    let taken = wait_holder(&env, LEASE_NAME, &survivor, t0).await;
    // When the survivor took the Lease, as it recorded it (acquireTime;
    // renewals leave it alone). The replicas and the test share one clock.
    let took = lease_spec(&env, LEASE_NAME).await;
    assert_eq!(
        took.holder_identity.as_deref(),
        Some(survivor.as_str()),
        "the survivor still holds the Lease it was seen taking"
    );
    let took_at = acquired(&took);
    // The first sync by the new leader, measured when the test sees its
    // value in the Secret: an upper bound of when it happened.
    env.wait_for_value(
        "after",
        "db-password",
        "first-password",
        "the new leader's sync of a binding created after the SIGKILL",
        SYNC_DEADLINE,
    )
    .await;
    let synced_wall = SystemTime::now();
    let synced = t0.elapsed();
    let leading = wait_leader(&env, &survivor, t0).await;
    env.ready("after", "True", SYNC_DEADLINE).await;

    // The takeover: the dead leader's claim expires at most LEASE after the
    // kill (it was renewed before it), and the survivor looks again every
    // renew period; 4 s for the API server.
    let take_bound = LEASE + RENEW_PERIOD + Duration::from_secs(4);
    // The new leader's first sync after it took the Lease.
    let sync_bound = Duration::from_secs(8);
    let taken_after_kill = ms_between(took_at, t0_wall);
    let synced_after_take = ms_between(synced_wall, took_at);
    eprintln!(
        "sigkill_on_the_leader_hands_over_within_the_lease_duration: lease_taken_ms={} lease_acquired_after_kill_ms={taken_after_kill} first_sync_after_take_ms={synced_after_take} readyz_leader_ms={} new_binding_synced_ms={} claim_left_at_kill_ms={} taken_after_expiry_ms={} lease_duration_ms={} take_bound_ms={} sync_bound_ms={}",
        ms(taken),
        ms(leading),
        ms(synced),
        ms_between(expires, t0_wall),
        ms_between(took_at, expires),
        ms(LEASE),
        ms(take_bound),
        ms(sync_bound)
    );
    assert!(
        took_at >= expires,
        "{survivor} took the Lease ({took_at:?}) only after the dead leader's claim had expired ({expires:?}): never two writers\n{}",
        env.logs.operator_tail()
    );
    assert!(
        taken_after_kill < ms(take_bound) as i128,
        "the survivor takes the Lease within lease duration + renew period + 4 s ({take_bound:?}) of the kill: acquireTime is {taken_after_kill} ms after it\n{}",
        env.logs.operator_tail()
    );
    assert!(
        synced_after_take < ms(sync_bound) as i128,
        "the new leader's first sync is in the Secret within {sync_bound:?} of taking the Lease: {synced_after_take} ms after its acquireTime\n{}",
        env.logs.operator_tail()
    );
    let events = synced_by(&env, "after").await;
    assert_eq!(
        events.keys().collect::<Vec<_>>(),
        [&survivor],
        "the new leader synced the new binding: {events:?}"
    );
}

#[tokio::test]
async fn two_shards_sync_every_binding_exactly_once() {
    const BINDINGS: usize = 20;
    let kc = e2e!();
    let mut env = Env::start_with(
        kc,
        Options {
            operator: false,
            ..Options::new(SEED)
        },
    )
    .await;
    let names = ["kvsync-e2e-shard-0", "kvsync-e2e-shard-1"];
    for (i, n) in names.iter().enumerate() {
        let mut flags = leader_elect(LEASE, RENEW);
        flags.extend(["--shard".to_string(), format!("{i}/2")]);
        env.start_replica(n, &flags).await;
    }
    // Each shard elects on a Lease of its own, so each replica leads.
    eventually(
        &env,
        "both shard replicas to answer /readyz \"ready (leader)\"",
        SYNC_DEADLINE,
        || async {
            let said = roles(&env, &names).await?;
            if said.iter().all(|r| r == "ready (leader)") {
                Ok(())
            } else {
                Err(format!("/readyz: {said:?}"))
            }
        },
    )
    .await;
    let since = Instant::now();
    for (i, n) in names.iter().enumerate() {
        wait_holder(&env, &format!("kvsync-shard-{i}-of-2"), n, since).await;
    }
    assert!(
        env.lease(LEASE_NAME).await.unwrap().is_none(),
        "sharded replicas never use the unsharded Lease"
    );

    let started = Instant::now();
    let binding_names: Vec<String> = (0..BINDINGS).map(|i| format!("b-{i:02}")).collect();
    futures::future::join_all(binding_names.iter().map(|n| env.apply_binding(n, spec()))).await;
    let uids: BTreeMap<String, String> = eventually(
        &env,
        &format!("all {BINDINGS} bindings Ready=True at their current generation"),
        Duration::from_secs(60),
        || async {
            let list = env
                .bindings()
                .list(&Default::default())
                .await
                .map_err(|e| format!("listing bindings: {e}"))?;
            let mut uids = BTreeMap::new();
            let mut waiting = Vec::new();
            for b in list {
                let name = b.name_any();
                let generation = b.metadata.generation;
                let status = b.status.as_ref();
                let ready = status.is_some_and(|s| {
                    s.observed_generation == generation
                        && s.conditions.iter().any(|c| {
                            c.type_ == "Ready"
                                && c.status == "True"
                                && c.observed_generation == generation
                        })
                });
                if ready {
                    uids.insert(name, b.uid().unwrap());
                } else {
                    waiting.push(name);
                }
            }
            if uids.len() == BINDINGS {
                Ok(uids)
            } else {
                Err(format!(
                    "{} Ready; not yet: {waiting:?}{}",
                    uids.len(),
                    env.describe_bindings().await
                ))
            }
        },
    )
    .await;
    let all_ready = started.elapsed();

    let shards = [
        kvsync::shard::Shard { index: 0, count: 2 },
        kvsync::shard::Shard { index: 1, count: 2 },
    ];
    let owner = |uid: &str| {
        let owners: Vec<&str> = names
            .iter()
            .zip(&shards)
            .filter(|(_, s)| s.owns(uid))
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(owners.len(), 1, "uid {uid} belongs to exactly one shard");
        owners[0]
    };
    let owned: Vec<usize> = names
        .iter()
        .map(|n| uids.values().filter(|u| owner(u) == *n).count())
        .collect();
    assert!(
        owned.iter().all(|&n| n > 0),
        "every shard owns some of the {BINDINGS} bindings: {owned:?} — all random uids fell into one shard \
         (probability 2^-19); the test proves nothing this time, run it again"
    );
    for name in &binding_names {
        assert_eq!(
            env.secret_data(name)
                .await
                .and_then(|d| d.get("db-password").cloned())
                .as_deref(),
            Some("first-password"),
            "Secret {name}"
        );
    }
    // Each process counts the distinct bindings it synced: exactly its shard's.
    for (n, want) in names.iter().zip(&owned) {
        let r = env.replica(n);
        let ready = r.metric("kvsync_bindings", &["ready=\"true\""]).await;
        let not_ready = r.metric("kvsync_bindings", &["ready=\"false\""]).await;
        let writes = r.metric("kvsync_secret_writes_total", &[]).await;
        assert_eq!(
            (ready, not_ready),
            (*want as f64, 0.0),
            "{n} synced exactly the {want} bindings of its shard (kvsync_bindings)\n{}",
            env.logs.operator_tail()
        );
        assert!(
            writes >= *want as f64,
            "{n} wrote the Secrets of its {want} bindings: kvsync_secret_writes_total {writes}"
        );
    }
    // And per binding: its Events come from its shard's replica only.
    let by_binding = eventually(
        &env,
        &format!("a Synced Event about each of the {BINDINGS} bindings"),
        SYNC_DEADLINE,
        || async {
            let all = reporters(&env).await;
            let missing: Vec<&String> = binding_names
                .iter()
                .filter(|b| {
                    !all.get(*b)
                        .is_some_and(|m| m.values().any(|r| r.contains("Synced")))
                })
                .collect();
            if missing.is_empty() {
                Ok(all)
            } else {
                Err(format!("no Synced Event yet for {missing:?}"))
            }
        },
    )
    .await;
    for (name, uid) in &uids {
        let reported: Vec<&String> = by_binding[name].keys().collect();
        assert_eq!(
            reported,
            [owner(uid)],
            "binding {name} (uid {uid}) was reconciled by its shard's replica only: {:?}",
            by_binding[name]
        );
    }
    eprintln!(
        "two_shards_sync_every_binding_exactly_once: bindings={BINDINGS} shard_0={} shard_1={} all_ready_ms={}",
        owned[0],
        owned[1],
        ms(all_ready)
    );
}

/// `helm` 3 (`KVSYNC_HELM`, else `helm` on PATH), or None.
fn helm() -> Option<PathBuf> {
    let candidate = std::env::var_os("KVSYNC_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("helm"));
    std::process::Command::new(&candidate)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("v3."))
        .then_some(candidate)
}

/// `helm template kvsync charts/kvsync --namespace ns args…`, as documents.
fn render(helm: &Path, ns: &str, args: &[&str]) -> Vec<Value> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/kvsync");
    let out = std::process::Command::new(helm)
        .args(["template", "kvsync"])
        .arg(&chart)
        .args(["--namespace", ns])
        .args(args)
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Server-side dry-run apply of one rendered document (found by discovery,
/// so a kind the API server does not serve is refused too): `Kind/name` when
/// accepted, what the API server said otherwise.
async fn dry_run(client: &kube::Client, doc: &Value, release_ns: &str) -> Result<String, String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let what = format!("{api_version} {kind}/{name}");
    let gvk = GroupVersion::from_str(api_version)
        .map_err(|e| format!("{what}: {e}"))?
        .with_kind(kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{what}: not served by the API server: {e}"))?;
    let api: Api<DynamicObject> = match caps.scope {
        ResourceScope::Namespaced => Api::namespaced_with(
            client.clone(),
            doc["metadata"]["namespace"].as_str().unwrap_or(release_ns),
            &resource,
        ),
        ResourceScope::Cluster => Api::all_with(client.clone(), &resource),
    };
    // Forced: the suite's own apply of the CRD owns its fields; a dry run
    // changes nothing either way, and validation is what is asked here.
    api.patch(
        name,
        &PatchParams::apply("kvsync-e2e-chart").force().dry_run(),
        &Patch::Apply(doc),
    )
    .await
    .map(|_| format!("{kind}/{name}"))
    .map_err(|e| format!("{what}: refused: {e}"))
}

#[tokio::test]
async fn chart_renders_manifests_the_api_server_accepts() {
    let kc = e2e!();
    let Some(helm) = helm() else {
        eprintln!(
            "skipping: helm 3 not found (set KVSYNC_HELM, e.g. to the path .ci/install-helm.sh prints)"
        );
        return;
    };
    // Namespace 0 is the release's; 1 and 2 are watched (Roles go there).
    let env = Env::start_with(
        kc,
        Options {
            operator: false,
            namespaces: 3,
            ..Options::new(SEED)
        },
    )
    .await;
    let release = env.scope(0).ns.clone();
    let watched = format!(
        "watchNamespaces={{{},{}}}",
        env.scope(1).ns,
        env.scope(2).ns
    );
    let all_features =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chart-all-features.yaml");
    let started = Instant::now();
    let mut accepted = BTreeMap::new();
    let mut refused = Vec::new();
    for (label, args) in [
        ("defaults", vec![]),
        (
            "every feature",
            // The cluster has no ServiceMonitor CRD (Prometheus Operator).
            vec![
                "-f",
                all_features.to_str().unwrap(),
                "--set",
                "serviceMonitor.enabled=false",
            ],
        ),
        ("watchNamespaces", vec!["--set", watched.as_str()]),
    ] {
        let docs = render(&helm, &release, &args);
        assert!(!docs.is_empty(), "{label}: helm rendered nothing");
        for doc in &docs {
            match dry_run(&env.client, doc, &release).await {
                Ok(ok) => *accepted.entry(ok).or_insert(0) += 1,
                Err(e) => refused.push(format!("{label}: {e}")),
            }
        }
    }
    assert!(
        refused.is_empty(),
        "the API server refused rendered documents:\n{}",
        refused.join("\n")
    );
    let kinds: BTreeSet<&str> = accepted
        .keys()
        .map(|k| k.split('/').next().unwrap())
        .collect();
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "Service",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(
            kinds.contains(kind),
            "a {kind} was rendered and dry-run: {accepted:?}"
        );
    }
    eprintln!(
        "chart_renders_manifests_the_api_server_accepts: documents={} dry_run_ms={}",
        accepted.values().sum::<usize>(),
        ms(started.elapsed())
    );
}
