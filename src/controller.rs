//! The namespaced controller of `kvsync run`, per namespace served (or one
//! for all): the controller over VaultSecretBindings, the metadata watch on
//! the Secrets it manages (drift repair), the ServiceAccounts of identities,
//! the pollers' wake-ups, the sweep of state held for bindings that are
//! gone, and graceful shutdown. The watches it shares with the
//! cluster-binding controller (bindings, namespaces, cluster bindings,
//! policies) come from [`crate::operator`]; how a watch is trimmed and
//! monitored is [`crate::watch`]'s.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::events::Events;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use crate::azure::AzureAccess;
use crate::crd::VaultSecretBinding;
use crate::crd::cluster::ClusterVaultSecretBinding;
use crate::crd::names::{
    BINDING_ANNOTATION, FORCE_SYNC_ANNOTATION, MANAGED_BY_LABEL, PARENT_ANNOTATION,
};
use crate::crd::policy::VaultAccessPolicy;
use crate::metrics::Metrics;
use crate::poller::Pollers;
use crate::reconcile::{Context, Settings, error_policy, reconcile};
use crate::server::Health;
use crate::shard::Shard;
use crate::watch::{WatchMonitor, WatchedKind, after_first_listing, keep_only, trim_meta};

/// How often state held for bindings is checked against the bindings store.
/// A deletion the watch reported is forgotten at once (`Context::forget`);
/// this catches those it never reported (deleted while the watch was down,
/// then re-listed) — and every re-list is followed by a sweep too.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Why a sweep may run: the clock, or a complete listing of the bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SweepTrigger {
    Tick,
    Listed,
}

/// Sweeps only once the store holds a complete listing: before the first
/// one it is empty, and a sweep would forget every binding.
#[derive(Default)]
struct SweepGate {
    listed: bool,
}

impl SweepGate {
    fn admit(&mut self, trigger: SweepTrigger) -> bool {
        if trigger == SweepTrigger::Listed {
            self.listed = true;
        }
        self.listed
    }
}

/// Runs the sweep until dropped: after each complete listing of the
/// bindings (`listed`) and every `every`.
async fn sweep(
    ctx: Arc<Context>,
    store: reflector::Store<VaultSecretBinding>,
    listed: impl futures::Stream<Item = ()> + Unpin,
    every: Duration,
) {
    let ticks = futures::stream::unfold(
        tokio::time::interval_at(tokio::time::Instant::now() + every, every),
        |mut interval| async move {
            interval.tick().await;
            Some((SweepTrigger::Tick, interval))
        },
    );
    let mut triggers =
        futures::stream::select(Box::pin(ticks), listed.map(|()| SweepTrigger::Listed));
    let mut gate = SweepGate::default();
    while let Some(trigger) = triggers.next().await {
        if gate.admit(trigger) {
            // Forgets what is held for bindings the store no longer has.
            ctx.forget_absent(|r| store.get(r).is_some());
        }
    }
}

/// What changes of a binding are worth a reconcile: its spec (generation),
/// the force-sync annotation, deletion and finalizers — not its status.
fn binding_predicate(b: &VaultSecretBinding) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.meta().generation.hash(&mut h);
    b.annotations().get(FORCE_SYNC_ANNOTATION).hash(&mut h);
    b.meta().deletion_timestamp.is_some().hash(&mut h);
    b.finalizers().hash(&mut h);
    Some(h.finish())
}

/// Which bindings this replica handles and when it may write.
#[derive(Clone, Default)]
pub struct Replica {
    /// One namespace, or all when `None`.
    pub namespace: Option<String>,
    /// With `--leader-elect`: true while this replica holds the Lease.
    /// `None`: always (a single replica).
    pub leader: Option<tokio::sync::watch::Receiver<bool>>,
    /// With `--shard I/N`: only bindings whose uid hashes into this shard.
    pub shard: Shard,
}

/// Whether a watch event concerns a binding of `shard` (markers always do).
fn in_shard(shard: Shard, event: &watcher::Event<VaultSecretBinding>) -> bool {
    match event {
        watcher::Event::Apply(b) | watcher::Event::Delete(b) | watcher::Event::InitApply(b) => {
            shard.owns(b.uid().as_deref().unwrap_or_default())
        }
        watcher::Event::Init | watcher::Event::InitDone => true,
    }
}

/// Yields once each time `leader` turns true (this replica takes over): the
/// new leader reconciles every binding, the way a fresh start does. On
/// losing the Lease, stops polling vaults for bindings the new leader now
/// serves.
fn on_becoming_leader(
    leader: Option<tokio::sync::watch::Receiver<bool>>,
    ctx: Arc<Context>,
) -> impl futures::Stream<Item = ()> + Send {
    crate::leader::changes(leader).filter_map(move |leads| {
        if !leads {
            ctx.stand_down();
        }
        std::future::ready(leads.then_some(()))
    })
}

/// What the controllers of one process share: one poller per (vault,
/// identity) whichever namespace's bindings read it — so `--namespace a
/// --namespace b` costs the vault what one namespace does —, and the routing
/// of the pollers' wake-ups to the controller of the binding's namespace.
#[derive(Clone)]
pub struct Shared {
    pollers: Pollers,
    routes: Arc<std::sync::Mutex<Vec<Route>>>,
}

type BindingRef = ObjectRef<VaultSecretBinding>;
/// A controller's namespace (`None`: all the others) and its wake-ups.
type Route = (Option<String>, UnboundedSender<BindingRef>);

impl Shared {
    /// Shared state, and a task routing wake-ups that ends with the last
    /// clone of it. Needs a Tokio runtime.
    pub fn start() -> Self {
        let (tx, mut rx) = futures::channel::mpsc::unbounded::<BindingRef>();
        let shared = Self {
            pollers: Pollers::new(Some(tx)),
            routes: Default::default(),
        };
        let routes = shared.routes.clone();
        tokio::spawn(async move {
            while let Some(who) = rx.next().await {
                let routes = routes.lock().expect("wake routes");
                // The namespace's own controller, else the one of all.
                let to = routes
                    .iter()
                    .find(|(ns, _)| ns.is_some() && ns.as_deref() == who.namespace.as_deref())
                    .or_else(|| routes.iter().find(|(ns, _)| ns.is_none()));
                if let Some((_, tx)) = to {
                    let _ = tx.unbounded_send(who);
                }
            }
        });
        shared
    }

    /// The wake-ups of bindings in `namespace` (`None`: any other).
    fn route(&self, namespace: Option<String>) -> UnboundedReceiver<BindingRef> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.routes
            .lock()
            .expect("wake routes")
            .push((namespace, tx));
        rx
    }
}

/// What the controller of one namespace (or of all) receives from the
/// process's watches, which the cluster-binding controller shares: each
/// kind is listed and watched once per process ([`crate::operator`]).
pub struct SharedWatches {
    /// The watch of the VaultSecretBindings of this controller's namespace
    /// (all of them, every shard's), trimmed by [`trim_meta`] only.
    pub bindings: BoxStream<'static, Result<watcher::Event<VaultSecretBinding>, watcher::Error>>,
    /// The namespace (or all), for the labels policies select by.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Its changes after the first listing.
    pub namespace_changes: UnboundedReceiver<PartialObjectMeta<Namespace>>,
    /// The ClusterVaultSecretBindings: the bindings kept for them sync
    /// their spec and identity.
    pub clusters: Store<ClusterVaultSecretBinding>,
    /// Every event of their watch.
    pub cluster_events: UnboundedReceiver<watcher::Event<ClusterVaultSecretBinding>>,
    /// The VaultAccessPolicies.
    pub policies: Store<VaultAccessPolicy>,
    /// One item each time the policies changed after their first listing,
    /// and at each re-list's end.
    pub policy_changes: UnboundedReceiver<()>,
}

/// The bindings of this controller's shard as the controller sees them:
/// trimmed to what it decides by, their statuses handed to the context,
/// deletions forgotten, listings reported to the sweep and the monitor.
fn binding_stream(
    bindings: BoxStream<'static, Result<watcher::Event<VaultSecretBinding>, watcher::Error>>,
    shard: Shard,
    ctx: Arc<Context>,
    mut bindings_watch: WatchMonitor,
    listed_tx: UnboundedSender<()>,
    writer: reflector::store::Writer<VaultSecretBinding>,
) -> impl futures::Stream<Item = Result<VaultSecretBinding, watcher::Error>> + Send + 'static {
    // A binding deleted without a finalizer is never reconciled again: drop
    // what is held for it when the watch reports the deletion.
    let on_delete = ctx.clone();
    let statuses = ctx.clone();
    let listing = ctx.clone();
    // Other shards' bindings never enter the store (nor memory).
    bindings
        .try_filter(move |event| std::future::ready(in_shard(shard, event)))
        .modify(move |b| {
            // A binding kept for a cluster binding is proven so by its
            // owner reference: keep that (and only for those).
            let owners = b
                .annotations()
                .contains_key(PARENT_ANNOTATION)
                .then(|| b.metadata.owner_references.take())
                .flatten();
            keep_only(b.meta_mut(), &[FORCE_SYNC_ANNOTATION, PARENT_ANNOTATION]);
            b.metadata.owner_references = owners;
            // The status moves to the context: one copy per binding.
            statuses.observe_status(b);
        })
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::Init) = event {
                listing.set_bindings_listing(true);
            }
            if let Ok(watcher::Event::InitDone) = event {
                listing.set_bindings_listing(false);
            }
            if bindings_watch.observe(event) {
                let _ = listed_tx.unbounded_send(());
            }
            if let Ok(watcher::Event::Delete(b)) = event {
                on_delete.forget(b);
            }
        })
        .applied_objects()
        .predicate_filter(binding_predicate, Default::default())
}

/// The Secrets kvsync manages, metadata only, by label: their
/// resourceVersions decide "in sync" without a read, and a change wakes
/// the binding that wrote it (drift repair).
fn managed_secrets(
    secrets: Api<PartialObjectMeta<Secret>>,
    mut monitor: WatchMonitor,
    versions: crate::versions::SecretVersions,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static
{
    let managed = watcher::Config::default().labels(&format!(
        "{MANAGED_BY_LABEL}={}",
        crate::crd::names::MANAGED_BY
    ));
    after_first_listing(
        watcher(secrets, managed)
            .default_backoff()
            .modify(|s| keep_only(&mut s.metadata, &[BINDING_ANNOTATION]))
            .inspect(move |event| {
                monitor.observe(event);
                versions.observe(event);
            }),
    )
}

/// ServiceAccounts' annotations, kept in memory instead of a GET per check
/// of an identity. Never ends by itself.
fn service_accounts(
    accounts: Api<PartialObjectMeta<ServiceAccount>>,
    mut monitor: WatchMonitor,
    writer: reflector::store::Writer<PartialObjectMeta<ServiceAccount>>,
) -> impl Future<Output = ()> + Send + 'static {
    watcher(accounts, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|a| trim_meta(&mut a.metadata))
        .reflect(writer)
        .for_each(move |event| {
            monitor.observe(&event);
            std::future::ready(())
        })
}

/// Ends at `shutdown` only when the bindings were never listed (the CRD
/// missing, RBAC refusing): the controller's graceful shutdown waits for
/// reconciles it holds until a first listing, which would never come.
async fn never_listed(shutdown: impl Future<Output = ()>, reader: Store<VaultSecretBinding>) {
    shutdown.await;
    if reader.wait_until_ready().now_or_never().is_some() {
        std::future::pending::<()>().await;
    }
    tracing::info!("shutting down before the bindings were ever listed");
}

/// What the namespaced controller's [`Context`] is made of.
struct ContextParts {
    client: kube::Client,
    access: Arc<AzureAccess>,
    pollers: Pollers,
    settings: Settings,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
    leader: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The context every reconcile of one controller shares: the caches its
/// watches fill, the policies and the cluster bindings it decides by.
fn binding_context(
    parts: ContextParts,
    secret_versions: crate::versions::SecretVersions,
    account_reader: Store<PartialObjectMeta<ServiceAccount>>,
    policy_reader: Store<VaultAccessPolicy>,
    namespace_reader: Store<PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>,
    cluster_reader: Store<ClusterVaultSecretBinding>,
) -> Arc<Context> {
    let ContextParts {
        client,
        access,
        pollers,
        settings,
        metrics,
        namespace,
        leader,
    } = parts;
    let settings_policy = settings.access_policy;
    let mut ctx = Context::new(
        client.clone(),
        access,
        pollers,
        Events::new(
            client.clone(),
            crate::crd::names::REPORTING_CONTROLLER,
            std::env::var("POD_NAME").ok(),
        ),
        settings,
        metrics,
    )
    .with_caches(secret_versions, account_reader)
    .within(namespace.clone());
    if let Some(leader) = leader {
        ctx = ctx.with_leader(leader);
    }
    // VaultAccessPolicies and the namespaces' labels they select by.
    ctx = ctx.with_policies(crate::policy::view::PolicyView::new(
        settings_policy,
        policy_reader,
        namespace_reader.clone(),
        client.clone(),
    ));
    // ClusterVaultSecretBindings: the bindings kept for them sync their
    // spec and identity.
    ctx = ctx.with_clusters(crate::cluster::view::ClusterView::new(
        cluster_reader,
        namespace_reader,
        client.clone(),
    ));
    Arc::new(ctx)
}

/// The controller of `replica`'s namespace (`None`: all), until `shutdown`
/// completes. Its own watches (Secrets, ServiceAccounts) and that of its
/// bindings are registered with `health` when this is called, not when the
/// future first runs, so that several controllers started together are all
/// counted before any can report ready.
#[allow(clippy::too_many_arguments)]
pub(crate) fn namespaced(
    client: kube::Client,
    access: Arc<AzureAccess>,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: &Health,
    replica: Replica,
    shared: &Shared,
    watches: SharedWatches,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let namespace = replica.namespace.clone();
    let scope = match &namespace {
        Some(ns) => format!("in namespace {ns}"),
        None => "in all namespaces".to_string(),
    };
    let bindings_watch = WatchMonitor::new(WatchedKind::Bindings, &scope, health, metrics.clone());
    let secrets_watch = WatchMonitor::new(WatchedKind::Secrets, &scope, health, metrics.clone());
    let accounts_watch = WatchMonitor::new(
        WatchedKind::ServiceAccounts,
        &scope,
        health,
        metrics.clone(),
    );
    let wake_rx = shared.route(namespace.clone());
    let pollers = shared.pollers.clone();
    async move {
        let shutdown = shutdown.shared();
        let SharedWatches {
            bindings,
            namespaces: namespace_reader,
            namespace_changes,
            clusters: cluster_reader,
            cluster_events,
            policies: policy_reader,
            policy_changes: policy_rx,
        } = watches;
        let (secrets, accounts): (
            Api<PartialObjectMeta<Secret>>,
            Api<PartialObjectMeta<ServiceAccount>>,
        ) = match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let secret_versions = crate::versions::SecretVersions::new();
        let (account_reader, account_writer) = reflector::store();
        let concurrency = settings.concurrency;
        let ctx = binding_context(
            ContextParts {
                client: client.clone(),
                access,
                pollers,
                settings,
                metrics,
                namespace: namespace.clone(),
                leader: replica.leader.clone(),
            },
            secret_versions.clone(),
            account_reader,
            policy_reader,
            namespace_reader,
            cluster_reader,
        );

        let (reader, writer) = reflector::store();
        let (listed_tx, listed_rx) = futures::channel::mpsc::unbounded::<()>();
        let binding_stream = binding_stream(
            bindings,
            replica.shard,
            ctx.clone(),
            bindings_watch,
            listed_tx,
            writer,
        );

        let secret_stream = managed_secrets(secrets, secrets_watch, secret_versions);
        let account_stream = service_accounts(accounts, accounts_watch, account_writer);

        // A policy created, changed or deleted re-decides every binding at
        // once (`policy_rx`); a namespace's labels, the bindings in it.
        let namespace_stream = namespace_changes.map(Ok::<_, watcher::Error>);
        let in_namespace = reader.clone();
        // A cluster binding changed (its identity, say, which the kept
        // bindings do not show): the bindings kept for it check again.
        let cluster_stream = after_first_listing(cluster_events.map(Ok))
            // Spec changes only: its status changes with every kept binding's.
            .predicate_filter(kube::runtime::predicates::generation, Default::default())
            .filter_map(|event| std::future::ready(event.ok().map(Ok)));
        let kept_for = reader.clone();

        let controller = Controller::for_stream(binding_stream, reader.clone())
            .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
            .watches_stream(secret_stream, |s| {
                let ns = s.namespace()?;
                let binding = s.annotations().get(BINDING_ANNOTATION)?.clone();
                Some(ObjectRef::new(&binding).within(&ns))
            })
            .watches_stream(namespace_stream, move |n| {
                let ns = n.name_any();
                in_namespace
                    .state()
                    .into_iter()
                    .filter(|b| b.namespace().as_deref() == Some(ns.as_str()))
                    .map(|b| ObjectRef::from_obj(&*b))
                    .collect::<Vec<_>>()
            })
            .watches_stream(cluster_stream, move |c| {
                let name = c.name_any();
                kept_for
                    .state()
                    .into_iter()
                    .filter(|b| {
                        b.name_any() == name
                            && b.annotations().get(PARENT_ANNOTATION) == Some(&name)
                    })
                    .map(|b| ObjectRef::from_obj(&*b))
                    .collect::<Vec<_>>()
            })
            .reconcile_all_on(policy_rx)
            .reconcile_on(wake_rx)
            .reconcile_all_on(on_becoming_leader(replica.leader, ctx.clone()))
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((obj, _)) => tracing::debug!(binding = %obj, "reconciled"),
                    Err(e) => tracing::debug!(error = %e, "reconcile error"),
                }
            });
        // The controller holds its reconciles until the bindings have been
        // listed once, and its graceful shutdown waits for them: without a
        // listing (the CRD missing, RBAC refusing) it would wait for good.
        // With nothing ever reconciled, there is nothing to wait for.
        let never_listed = never_listed(shutdown, reader.clone());
        // The sweep and the ServiceAccount watch never end by themselves;
        // the controller ends on shutdown.
        tokio::select! {
            () = controller => {}
            () = never_listed => {}
            () = sweep(ctx, reader, listed_rx, SWEEP_EVERY) => {}
            () = account_stream => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wake_ups_go_to_the_controller_of_the_bindings_namespace() {
        let shared = Shared::start();
        let mut ci = shared.route(Some("ci".into()));
        let mut rest = shared.route(None);
        let tx = shared.pollers.wake_sender().expect("a wake channel");
        tx.unbounded_send(ObjectRef::new("a").within("ci")).unwrap();
        tx.unbounded_send(ObjectRef::new("b").within("build"))
            .unwrap();
        assert_eq!(ci.next().await.unwrap().name, "a");
        assert_eq!(rest.next().await.unwrap().name, "b");
    }

    #[test]
    fn the_sweep_waits_for_a_complete_listing_then_runs_on_every_trigger() {
        let mut gate = SweepGate::default();
        assert!(
            !gate.admit(SweepTrigger::Tick),
            "an empty store is not swept"
        );
        assert!(gate.admit(SweepTrigger::Listed));
        assert!(gate.admit(SweepTrigger::Tick));
        assert!(
            gate.admit(SweepTrigger::Listed),
            "each re-list is swept too"
        );
    }
}
