//! `kvsync run`: the process. Builds what the controllers need from the
//! command line (the Kubernetes client, Azure access, metrics, the hash
//! key, leader election), serves `/metrics` and the health endpoints, and
//! runs both controllers — the namespaced one ([`crate::controller`]) and
//! the cluster-binding one ([`crate::cluster`]) — over one set of watches,
//! until SIGTERM or Ctrl-C.

use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc::UnboundedReceiver;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};

use crate::azure::AzureAccess;
use crate::cli::{RunArgs, VaultArgs};
use crate::controller::{Replica, Shared, SharedWatches};
use crate::crd::VaultSecretBinding;
use crate::crd::cluster::ClusterVaultSecretBinding;
use crate::crd::policy::VaultAccessPolicy;
use crate::metrics::Metrics;
use crate::reconcile::Settings;
use crate::server::Health;
use crate::shard::Shard;
use crate::watch::{
    Fanout, WatchMonitor, WatchedKind, after_first_listing, keep_labels_only, trim_meta,
};

/// Azure access as the vault flags (`--allowed-vault-hosts`, `--ca-file`)
/// and the `AZURE_*` variables describe it; for `run` and `check`.
pub fn azure_access(args: &VaultArgs) -> Result<crate::azure::AzureAccess, String> {
    use crate::azure::{
        AzureAccess, hosts::VaultHostPolicy, http, identity::AzureEnvironment, retry::RetryPolicy,
    };
    let roots = match &args.ca_file {
        Some(path) => http::load_ca_file(path).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let client = http::build_client(&roots).map_err(|e| e.to_string())?;
    let env = AzureEnvironment::from_env();
    if let Err(e) = env.check() {
        // Not fatal: bindings with an identity of their own still work; those
        // that use the operator's own identity report this as their condition.
        tracing::error!(error = %e, "the operator's Azure environment is invalid");
    }
    Ok(AzureAccess::new(
        client,
        VaultHostPolicy::new(args.allowed_vault_hosts.clone()),
        env,
        RetryPolicy::default(),
    ))
}

/// `kvsync run` until SIGTERM or Ctrl-C; `Err` says why it could not start.
pub async fn run(args: RunArgs) -> Result<(), String> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let observed = metrics.clone();
    let access = Arc::new(azure_access(&args.vault)?.with_observer(Arc::new(
        move |vault, op, status| observed.vault_request(vault, op.label(), status),
    )));
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API (KUBECONFIG or in-cluster): {e}"))?;
    let health = Arc::new(crate::server::Health::default());
    let addr = args.metrics_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on --metrics-addr {addr}: {e}"))?;
    let server = tokio::spawn(crate::server::serve(
        listener,
        health.clone(),
        metrics.clone(),
    ));
    let hash_key_namespace = args
        .hash_key_namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_string());
    let settings = crate::reconcile::Settings {
        default_refresh: args.vault.default_refresh_interval,
        rollout_window: args.rollout_window,
        force_sync_cooldown: args.force_sync_cooldown,
        status_heartbeat: args.status_heartbeat,
        concurrency: args.concurrency,
        access_policy: args.access_policy,
        hash_key: crate::hashkey::load_or_create(&client, &hash_key_namespace)
            .await
            .map_err(|e| e.to_string())?,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shard = args.shard.unwrap_or_default();
    // Leader election: its own stop signal, sent after the controllers have
    // stopped writing, so the Lease is released last and a standby takes
    // over in seconds.
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (leader, election) = if args.leader_elect {
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .ok_or("--leader-elect needs POD_NAMESPACE (the namespace of the Lease): set it from the pod's metadata.namespace")?;
        let cfg = crate::leader::LeaderConfig {
            namespace,
            lease_name: shard.lease_name(crate::crd::names::LEASE_NAME),
            identity: crate::leader::LeaderConfig::identity_from_env(),
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
        };
        tracing::info!(lease = %cfg.lease_name, namespace = %cfg.namespace, identity = %cfg.identity, "leader election");
        let mut rx = release_rx.clone();
        let (leader, handle) = crate::leader::start(client.clone(), cfg, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })
        .map_err(|e| e.to_string())?;
        let role_health = health.clone();
        let mut role_rx = leader.clone();
        tokio::spawn(async move {
            loop {
                let role = crate::leader::Role::from(*role_rx.borrow_and_update());
                tracing::info!(%role, "leader election");
                role_health.set_role(if *role_rx.borrow() {
                    "leader"
                } else {
                    "standby"
                });
                if role_rx.changed().await.is_err() {
                    return;
                }
            }
        });
        (Some(leader), Some(handle))
    } else {
        (None, None)
    };
    tracing::info!(metrics_addr = %addr, "kvsync controller starting");
    let mut stop = stop_rx.clone();
    let all = controllers(
        Controllers {
            client: client.clone(),
            access,
            settings,
            metrics,
            namespaces: args.namespaces.clone(),
            leader,
            shard,
        },
        &health,
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        },
    );
    tokio::pin!(all);
    tokio::select! {
        _ = &mut all => {}
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            health.set_stopping();
            let _ = stop_tx.send(true);
            all.await;
        }
    }
    // Writes have stopped: give the Lease back.
    let _ = release_tx.send(true);
    if let Some(handle) = election {
        let _ = handle.await;
    }
    server.abort();
    Ok(())
}

/// What both controllers run with, once built from the command line.
pub struct Controllers {
    /// The Kubernetes API.
    pub client: kube::Client,
    /// Key Vault and Entra ID, behind the host guard.
    pub access: Arc<AzureAccess>,
    /// The reconcile settings (`--default-refresh-interval`, …).
    pub settings: Settings,
    /// Where the controllers count.
    pub metrics: Arc<Metrics>,
    /// `--namespace`: the namespaces served; empty for all of them.
    pub namespaces: Vec<String>,
    /// With `--leader-elect`: true while this replica holds the Lease.
    pub leader: Option<tokio::sync::watch::Receiver<bool>>,
    /// `--shard I/N`.
    pub shard: Shard,
}

/// Both controllers until `shutdown` completes: the namespaced one, per
/// namespace served (or one for all), and — on shard 0, whose leader fans
/// them out (the bindings it writes are then sharded) — the one of the
/// ClusterVaultSecretBindings. They share the watches of every kind both
/// read, so each is listed once per process: one watch of the
/// ClusterVaultSecretBindings and one of the VaultAccessPolicies, and per
/// namespace served (or one for all) one of the namespaces and one of the
/// VaultSecretBindings. The watches are registered with `health` when this
/// is called, before any runs: `/readyz` waits for all of them.
pub fn controllers(
    c: Controllers,
    health: &Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let shutdown = shutdown.boxed().shared();
    let scopes: Vec<Option<String>> = if c.namespaces.is_empty() {
        vec![None]
    } else {
        c.namespaces.iter().cloned().map(Some).collect()
    };
    let cluster_runs = c.shard.index == 0;
    // Each watch's events go to every controller that reads the kind; the
    // drivers run until the controllers have stopped.
    let mut drivers: Vec<BoxFuture<'static, ()>> = Vec::new();

    let (policies, policy_subscribers, driver) =
        policy_watch(&c.client, health, &c.metrics, scopes.len());
    drivers.push(driver);

    let (clusters, mut cluster_subscribers, driver) =
        cluster_binding_watch(&c.client, scopes.len() + usize::from(cluster_runs));
    let cluster_own_events = cluster_runs.then(|| cluster_subscribers.pop()).flatten();
    drivers.push(driver);

    // Namespaces: watched by name where kvsync serves some (`--namespace`).
    let mut namespace_stores = Vec::new();
    let mut cluster_namespace_changes = Fanout::default();
    let cluster_own_namespace_changes = cluster_runs.then(|| cluster_namespace_changes.subscribe());
    let cluster_namespace_changes = Arc::new(Mutex::new(cluster_namespace_changes));
    let mut namespace_subscribers = Vec::new();
    for scope in &scopes {
        let (store, changes, driver) = namespace_watch(
            &c.client,
            scope,
            health,
            &c.metrics,
            cluster_namespace_changes.clone(),
        );
        namespace_stores.push(store.clone());
        namespace_subscribers.push((store, changes));
        drivers.push(driver);
    }

    // VaultSecretBindings: the cluster controller's index is fed by the
    // namespaced controllers' watches, before they keep only what they read.
    let (cluster_watches, feed) = match (cluster_own_events, cluster_own_namespace_changes) {
        (Some(events), Some(changes)) => {
            let (watches, feed) = crate::cluster::ClusterWatches::new(
                clusters.clone(),
                events,
                crate::cluster::Namespaces::new(namespace_stores),
                changes,
                scopes.clone(),
            );
            (Some(watches), Some(feed))
        }
        _ => (None, None),
    };

    // One poller per (vault, identity), whichever namespace reads it.
    let shared = Shared::start();
    let mut all: Vec<BoxFuture<'static, ()>> = scopes
        .iter()
        .zip(policy_subscribers)
        .zip(cluster_subscribers)
        .zip(namespace_subscribers)
        .map(
            |(((scope, policy_changes), cluster_events), (namespaces, namespace_changes))| {
                let api = match scope {
                    Some(ns) => Api::<VaultSecretBinding>::namespaced(c.client.clone(), ns),
                    None => Api::all(c.client.clone()),
                };
                let feed = feed.clone();
                let within = scope.clone();
                let bindings = watcher(api, watcher::Config::default().any_semantic())
                    .default_backoff()
                    .modify(|b| trim_meta(b.meta_mut()))
                    .inspect(move |event| {
                        if let Some(feed) = &feed {
                            feed.observe(within.as_deref(), event);
                        }
                    })
                    .boxed();
                crate::controller::namespaced(
                    c.client.clone(),
                    c.access.clone(),
                    c.settings.clone(),
                    c.metrics.clone(),
                    health,
                    Replica {
                        namespace: scope.clone(),
                        leader: c.leader.clone(),
                        shard: c.shard,
                    },
                    &shared,
                    SharedWatches {
                        bindings,
                        namespaces,
                        namespace_changes,
                        clusters: clusters.clone(),
                        cluster_events,
                        policies: policies.clone(),
                        policy_changes,
                    },
                    shutdown.clone(),
                )
                .boxed()
            },
        )
        .collect();
    if let Some(watches) = cluster_watches {
        let scope = (!c.namespaces.is_empty()).then(|| c.namespaces.clone());
        all.push(crate::cluster::controller(c.client, watches, scope, c.leader, shutdown).boxed());
    }
    let drivers = futures::future::join_all(drivers);
    async move {
        // The drivers never end; the controllers end on shutdown.
        tokio::select! {
            _ = futures::future::join_all(all) => {}
            _ = drivers => {}
        }
    }
}

/// The VaultAccessPolicies' watch and store: `subscribers` receivers of an
/// item for every change after the first listing and for each re-list's
/// end (a policy deleted while the watch was down shows only as its
/// absence), and the future that drives the watch.
fn policy_watch(
    client: &kube::Client,
    health: &Health,
    metrics: &Arc<Metrics>,
    subscribers: usize,
) -> (
    Store<VaultAccessPolicy>,
    Vec<UnboundedReceiver<()>>,
    BoxFuture<'static, ()>,
) {
    let (policies, writer) = reflector::store();
    let mut changes = Fanout::default();
    let mut monitor = WatchMonitor::new(
        WatchedKind::Policies,
        "in all namespaces",
        health,
        metrics.clone(),
    );
    let receivers = (0..subscribers).map(|_| changes.subscribe()).collect();
    let driver = watcher(
        Api::<VaultAccessPolicy>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|p| trim_meta(p.meta_mut()))
    .reflect(writer)
    .scan(false, move |listed, event| {
        monitor.observe(&event);
        let trigger = match &event {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => true,
            Ok(watcher::Event::InitDone) => std::mem::replace(listed, true),
            _ => false,
        };
        std::future::ready(Some(trigger))
    })
    .for_each(move |trigger| {
        if trigger {
            changes.send(&());
        }
        std::future::ready(())
    })
    .boxed();
    (policies, receivers, driver)
}

/// The ClusterVaultSecretBindings' watch and store: `subscribers`
/// receivers of its every event, and the future that drives it.
fn cluster_binding_watch(
    client: &kube::Client,
    subscribers: usize,
) -> (
    Store<ClusterVaultSecretBinding>,
    Vec<UnboundedReceiver<watcher::Event<ClusterVaultSecretBinding>>>,
    BoxFuture<'static, ()>,
) {
    let (clusters, writer) = reflector::store();
    let mut events = Fanout::default();
    let receivers = (0..subscribers).map(|_| events.subscribe()).collect();
    let driver = watcher(
        Api::<ClusterVaultSecretBinding>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|c| trim_meta(c.meta_mut()))
    .reflect(writer)
    .for_each(move |event| {
        match event {
            Ok(event) => events.send(&event),
            Err(e) => {
                tracing::warn!(error = %e, "watch of clustervaultsecretbindings failed; retrying")
            }
        }
        std::future::ready(())
    })
    .boxed();
    (clusters, receivers, driver)
}

/// The watch and store of the namespaces of `scope` (by name with
/// `--namespace`): the namespaced controller's receiver of what changed
/// after the first listing — sent to `to_cluster` too —, and the future
/// that drives the watch.
fn namespace_watch(
    client: &kube::Client,
    scope: &Option<String>,
    health: &Health,
    metrics: &Arc<Metrics>,
    to_cluster: Arc<Mutex<Fanout<PartialObjectMeta<Namespace>>>>,
) -> (
    Store<PartialObjectMeta<Namespace>>,
    UnboundedReceiver<PartialObjectMeta<Namespace>>,
    BoxFuture<'static, ()>,
) {
    let (store, writer) = reflector::store();
    let mut monitor = WatchMonitor::new(
        WatchedKind::Namespaces,
        &scope_text(scope),
        health,
        metrics.clone(),
    );
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let config = match scope {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    }
    .any_semantic();
    let driver = after_first_listing(
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            config,
        )
        .default_backoff()
        .modify(|n| keep_labels_only(&mut n.metadata))
        .reflect(writer)
        .inspect(move |event| {
            monitor.observe(event);
        }),
    )
    // Failures are the monitor's to report; the controllers see changes.
    .for_each(move |changed| {
        if let Ok(n) = changed {
            to_cluster.lock().expect("namespace changes").send(&n);
            let _ = tx.unbounded_send(n);
        }
        std::future::ready(())
    })
    .boxed();
    (store, rx, driver)
}

/// How a watch's scope reads in logs and `/readyz`.
fn scope_text(scope: &Option<String>) -> String {
    match scope {
        Some(ns) => format!("in namespace {ns}"),
        None => "in all namespaces".to_string(),
    }
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
