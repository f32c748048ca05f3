//! ClusterVaultSecretBindings: one binding for many namespaces.
//!
//! The controller here keeps, in every namespace a cluster binding selects,
//! a VaultSecretBinding of the same name, owned by it ([`fanout`] decides
//! what to write and remove, pure); the namespaced controller syncs those
//! like any other binding, but with the cluster binding's spec and identity
//! ([`view`]). So every namespace has its own status, drift repair, rollout
//! and Merge cleanup, while the pollers — one per (vault, identity) — read
//! each secret version once for all of them. A namespace that stops being
//! selected loses its binding, and Kubernetes' garbage collector (policy
//! Owner) or kvsync's finalizer (Merge) removes what it wrote.

pub mod fanout;
pub mod index;
pub mod view;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use crate::crd::VaultSecretBinding;
use crate::crd::cluster::{
    ClusterVaultSecretBinding, ClusterVaultSecretBindingStatus, NamespaceFailure,
};
use crate::reason::Reason;
use index::{BindingIndex, Concerns};

pub use crate::crd::names::CLUSTER_FIELD_MANAGER as FIELD_MANAGER;
/// A cluster binding is decided again at least this often.
const RESYNC: Duration = Duration::from_secs(300);
/// ... and this soon after a namespace's write or removal failed.
const RETRY: Duration = Duration::from_secs(10);

/// Failures of the Kubernetes API (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// What the cluster-binding reconciles share.
pub struct ClusterContext {
    client: kube::Client,
    bindings: Arc<Mutex<BindingIndex>>,
    namespaces: Namespaces,
    /// `--namespace`: only these (`None`: every namespace).
    scope: Option<Vec<String>>,
    leader: Option<tokio::sync::watch::Receiver<bool>>,
}

impl ClusterContext {
    fn may_write(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| *l.borrow())
    }
}

async fn reconcile(
    cluster: Arc<ClusterVaultSecretBinding>,
    ctx: Arc<ClusterContext>,
) -> Result<Action, ClusterError> {
    if !ctx.may_write() || cluster.meta().deletion_timestamp.is_some() {
        // Deleted: the garbage collector removes the bindings it owns.
        return Ok(Action::await_change());
    }
    let listed = ctx.bindings.lock().expect("binding index").listed() && ctx.namespaces.listed();
    if !listed {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let name = cluster.name_any();
    let api: Api<ClusterVaultSecretBinding> = Api::all(ctx.client.clone());
    if let Err(e) = cluster.spec.validate() {
        let st = fanout::invalid(&cluster, e.to_string(), crate::status::now());
        write_status(&api, &cluster, st).await?;
        return Ok(Action::requeue(RESYNC));
    }
    let namespaces = ctx.namespaces.state();
    let served = namespaces
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| {
            ctx.scope
                .as_ref()
                .is_none_or(|s| s.iter().any(|x| *x == n.name_any()))
        })
        .map(|n| (n.metadata.name.as_deref().unwrap_or_default(), n.labels()));
    let (plan, children) = {
        let index = ctx.bindings.lock().expect("binding index");
        let children = index.children_of(&name);
        (
            fanout::plan(&cluster, served, &children, |ns| index.own_in(ns)),
            children,
        )
    };
    let mut failed_writes = Vec::new();
    let mut retry_soon = false;
    // Removals first: taking a Secret away must not wait on writes
    // elsewhere.
    for (ns, uid) in &plan.remove {
        match removal_confirmed(&ctx, &cluster, &plan, ns).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(cluster_binding = %name, namespace = %ns, error = %e, "could not confirm a namespace stopped matching; retrying");
                retry_soon = true;
                continue;
            }
        }
        let api: Api<VaultSecretBinding> = Api::namespaced(ctx.client.clone(), ns);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                tracing::info!(cluster_binding = %name, namespace = %ns, "removed the namespace's binding")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!(cluster_binding = %name, namespace = %ns, error = %e, "could not remove the namespace's binding; retrying");
                retry_soon = true;
            }
        }
    }
    // One namespace's failure is that namespace's: the others go on.
    for ns in &plan.write {
        match write_child(&ctx, &cluster, ns, children.contains_key(ns)).await {
            Ok(()) => {
                tracing::info!(cluster_binding = %name, namespace = %ns, "wrote the namespace's binding")
            }
            Err(failure) => {
                retry_soon |= failure.1;
                failed_writes.push(failure.0);
            }
        }
    }
    let st = fanout::status(
        &cluster,
        &plan,
        &children,
        failed_writes,
        crate::status::now(),
    );
    // An operator serving some namespaces (`--namespace`) speaks for a
    // cluster binding only where it selects some of them: several such
    // operators must not overwrite each other's view with "none selected".
    if ctx.scope.is_none() || !plan.selected.is_empty() {
        write_status(&api, &cluster, st).await?;
    }
    Ok(Action::requeue(if retry_soon { RETRY } else { RESYNC }))
}

/// Whether the binding in `ns` may go: it is left alone for a namespace's
/// own binding (the plan saw one), or the namespace, read from the API
/// server now, is gone or no longer selected — the watches' caches may lag,
/// and a removal takes a Secret away.
async fn removal_confirmed(
    ctx: &ClusterContext,
    cluster: &ClusterVaultSecretBinding,
    plan: &fanout::Plan,
    ns: &str,
) -> Result<bool, kube::Error> {
    if plan.selected.iter().any(|s| s == ns) {
        return Ok(true);
    }
    let api = Api::<PartialObjectMeta<Namespace>>::all(ctx.client.clone());
    Ok(match api.get_metadata_opt(ns).await? {
        None => true,
        Some(n) => n.metadata.deletion_timestamp.is_some() || !cluster.spec.selects(ns, n.labels()),
    })
}

/// Writes the binding kept in `ns`: created when none is known (a binding
/// of that name the watch has not shown yet is then the namespace's own,
/// and is never taken over), applied over the one kvsync made otherwise.
/// On failure: what to report, and whether to retry soon.
async fn write_child(
    ctx: &ClusterContext,
    cluster: &ClusterVaultSecretBinding,
    ns: &str,
    known: bool,
) -> Result<(), (NamespaceFailure, bool)> {
    let name = cluster.name_any();
    let api: Api<VaultSecretBinding> = Api::namespaced(ctx.client.clone(), ns);
    let child = fanout::child(cluster, ns);
    let written = if known {
        let mut patch = serde_json::to_value(&child).expect("serializes");
        patch["apiVersion"] = VaultSecretBinding::api_version(&()).into();
        patch["kind"] = VaultSecretBinding::kind(&()).into();
        if let Some(o) = patch.as_object_mut() {
            o.remove("status");
        }
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(drop)
    } else {
        api.create(
            &kube::api::PostParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..Default::default()
            },
            &child,
        )
        .await
        .map(drop)
    };
    let failure = |reason: Reason, message: String| NamespaceFailure {
        namespace: ns.to_string(),
        reason: reason.to_string(),
        message,
    };
    match written {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 && !known => Err((
            failure(
                Reason::ClusterBindingConflict,
                format!(
                    "the namespace has a VaultSecretBinding {name} of its own, and kvsync names the binding it keeps there like this cluster binding; the namespace's own wins and this namespace is left alone. Rename one of them, or stop selecting {ns}"
                ),
            ),
            true,
        )),
        Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => Err((
            failure(
                Reason::BindingRejected,
                format!(
                    "the API server refused VaultSecretBinding {ns}/{name}: {} (may kvsync create vaultsecretbindings in {ns}? is the namespace being deleted?)",
                    s.message
                ),
            ),
            false,
        )),
        Err(e) => Err((
            failure(
                Reason::BindingRejected,
                format!("VaultSecretBinding {ns}/{name} could not be written ({e}); retrying"),
            ),
            true,
        )),
    }
}

/// Writes `status` unless the cluster binding already shows it.
async fn write_status(
    api: &Api<ClusterVaultSecretBinding>,
    cluster: &ClusterVaultSecretBinding,
    status: ClusterVaultSecretBindingStatus,
) -> Result<(), kube::Error> {
    if cluster.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": ClusterVaultSecretBinding::api_version(&()),
        "kind": ClusterVaultSecretBinding::kind(&()),
        "status": status,
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn error_policy(
    cluster: Arc<ClusterVaultSecretBinding>,
    error: &ClusterError,
    _: Arc<ClusterContext>,
) -> Action {
    tracing::warn!(cluster_binding = %cluster.name_any(), error = %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// The namespaces served, as the shared watches hold them: one store of
/// every namespace, or (with `--namespace`) one per namespace served, each
/// filled by its own watch.
#[derive(Clone)]
pub struct Namespaces(Vec<Store<PartialObjectMeta<Namespace>>>);

impl Namespaces {
    /// From the stores of the namespaces' watches.
    pub fn new(stores: Vec<Store<PartialObjectMeta<Namespace>>>) -> Self {
        Self(stores)
    }

    /// Whether every store holds a complete listing.
    fn listed(&self) -> bool {
        self.0
            .iter()
            .all(|s| s.wait_until_ready().now_or_never().is_some())
    }

    fn state(&self) -> Vec<Arc<PartialObjectMeta<Namespace>>> {
        self.0.iter().flat_map(|s| s.state()).collect()
    }

    fn get(&self, name: &str) -> Option<Arc<PartialObjectMeta<Namespace>>> {
        let key = ObjectRef::new(name);
        self.0.iter().find_map(|s| s.get(&key))
    }
}

/// Feeds the cluster controller's [`BindingIndex`] from the namespaced
/// controller's watch of the VaultSecretBindings (one watch per scope,
/// listed once for both), before that watch drops what only the cluster
/// controller reads (spec, status, other shards' bindings).
#[derive(Clone)]
pub struct BindingFeed {
    index: Arc<Mutex<BindingIndex>>,
    changed: UnboundedSender<VaultSecretBinding>,
    relisted: UnboundedSender<()>,
}

impl BindingFeed {
    /// Observes one event of the watch of `scope` (`None`: all namespaces).
    /// Only what changes a decision or a report goes on: a heartbeat or an
    /// edit elsewhere in a binding does not. Failures are the namespaced
    /// controller's watch monitor's to report.
    pub fn observe(
        &self,
        scope: Option<&str>,
        event: &Result<watcher::Event<VaultSecretBinding>, watcher::Error>,
    ) {
        let Ok(e) = event else { return };
        let relevant = self.index.lock().expect("binding index").apply(scope, e);
        match e {
            watcher::Event::Apply(b) | watcher::Event::Delete(b) if relevant => {
                let _ = self.changed.unbounded_send(b.clone());
            }
            watcher::Event::InitDone => {
                let _ = self.relisted.unbounded_send(());
            }
            _ => {}
        }
    }
}

/// What the cluster-binding controller receives from the process's shared
/// watches.
pub struct ClusterWatches {
    /// The ClusterVaultSecretBindings.
    pub clusters: Store<ClusterVaultSecretBinding>,
    /// Every event of their watch.
    pub cluster_events: UnboundedReceiver<watcher::Event<ClusterVaultSecretBinding>>,
    /// The namespaces served.
    pub namespaces: Namespaces,
    /// The namespaces that changed, after each watch's first listing.
    pub namespace_changes: UnboundedReceiver<PartialObjectMeta<Namespace>>,
    bindings: Arc<Mutex<BindingIndex>>,
    binding_changes: UnboundedReceiver<VaultSecretBinding>,
    relisted: UnboundedReceiver<()>,
}

impl ClusterWatches {
    /// The cluster controller's inputs from `clusters`, `namespaces` and
    /// their changes, and the [`BindingFeed`] that the watch of each of
    /// `scopes` (the namespaces served, or `[None]`) feeds.
    pub fn new(
        clusters: Store<ClusterVaultSecretBinding>,
        cluster_events: UnboundedReceiver<watcher::Event<ClusterVaultSecretBinding>>,
        namespaces: Namespaces,
        namespace_changes: UnboundedReceiver<PartialObjectMeta<Namespace>>,
        scopes: Vec<Option<String>>,
    ) -> (Self, BindingFeed) {
        let bindings = Arc::new(Mutex::new(BindingIndex::new(scopes)));
        let (changed, binding_changes) = futures::channel::mpsc::unbounded();
        let (relisted_tx, relisted) = futures::channel::mpsc::unbounded();
        let feed = BindingFeed {
            index: bindings.clone(),
            changed,
            relisted: relisted_tx,
        };
        let watches = Self {
            clusters,
            cluster_events,
            namespaces,
            namespace_changes,
            bindings,
            binding_changes,
            relisted,
        };
        (watches, feed)
    }
}

/// The cluster-binding controller until `shutdown` completes. `scope`:
/// the namespaces kvsync serves (`--namespace`; `None`: all). Its watches
/// are shared with the namespaced controllers, whose monitors report their
/// failures to `/readyz`.
pub(crate) async fn controller(
    client: kube::Client,
    watches: ClusterWatches,
    scope: Option<Vec<String>>,
    leader: Option<tokio::sync::watch::Receiver<bool>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ClusterWatches {
        clusters: cluster_reader,
        cluster_events,
        namespaces,
        namespace_changes,
        bindings: index,
        binding_changes,
        relisted,
    } = watches;
    let clusters = cluster_events
        .map(Ok::<_, watcher::Error>)
        .applied_objects()
        // Its own status writes are no reason to decide again.
        .predicate_filter(
            |c: &ClusterVaultSecretBinding| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                c.meta().generation.hash(&mut h);
                // names:
                c.annotations()
                    .get(crate::crd::names::FORCE_SYNC_ANNOTATION)
                    .hash(&mut h);
                Some(h.finish())
            },
            Default::default(),
        );
    // Labels and deletion decide; any other metadata change does not
    // (a cluster creating namespaces all day must not stall the rest).
    let namespace_changes = namespace_changes
        .map(Ok::<_, watcher::Error>)
        .predicate_filter(
            |n: &PartialObjectMeta<Namespace>| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                n.labels().hash(&mut h);
                n.metadata.deletion_timestamp.is_some().hash(&mut h);
                Some(h.finish())
            },
            Default::default(),
        );
    let bindings = binding_changes.map(Ok::<_, watcher::Error>);

    let ctx = Arc::new(ClusterContext {
        client: client.clone(),
        bindings: index,
        namespaces,
        scope,
        leader: leader.clone(),
    });
    let all_clusters = cluster_reader.clone();
    let same_target = cluster_reader.clone();
    let labels_of = ctx.namespaces.clone();
    Controller::for_stream(clusters, cluster_reader)
        // A namespace created, labelled or unlabelled: every cluster
        // binding decides again.
        .watches_stream(namespace_changes, move |_| {
            all_clusters
                .state()
                .iter()
                .map(|c| ObjectRef::from_obj(&**c))
                .collect::<Vec<_>>()
        })
        // A kept binding's report (its parent shows it), or a
        // namespace's own binding that may take a Secret's name — for
        // the cluster bindings that select its namespace only.
        .watches_stream(bindings, move |b| match index::concerns(&b) {
            Concerns::Child(parent) => vec![ObjectRef::new(&parent)],
            Concerns::Own {
                namespace,
                name,
                target,
            } => {
                let labels = labels_of
                    .get(&namespace)
                    .map(|n| n.labels().clone())
                    .unwrap_or_default();
                same_target
                    .state()
                    .iter()
                    .filter(|c| {
                        let n = c.name_any();
                        (n == name || c.spec.sync.target_name(&n) == target)
                            && c.spec.selects(&namespace, &labels)
                    })
                    .map(|c| ObjectRef::from_obj(&**c))
                    .collect()
            }
        })
        // A re-list's end re-decides every cluster binding (what it
        // dropped shows only as an absence).
        .reconcile_all_on(relisted)
        .reconcile_all_on(
            crate::leader::changes(leader)
                .filter_map(|leads| std::future::ready(leads.then_some(()))),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(cluster_binding = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "cluster binding reconcile error"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
