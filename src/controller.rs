//! Wiring of `kvsync run`: the controller over VaultSecretBindings, the
//! metadata watch on the Secrets it manages (drift repair), the pollers'
//! wake-ups, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use crate::apply::BINDING_ANNOTATION;
use crate::azure::AzureAccess;
use crate::crd::{MANAGED_BY_LABEL, VaultSecretBinding};
use crate::poller::Pollers;
use crate::reconcile::{Context, FORCE_SYNC_ANNOTATION, Settings, error_policy, reconcile};

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

/// Runs the controller until `shutdown` completes. `namespace`: one
/// namespace, or all when `None`.
pub async fn run(
    client: kube::Client,
    access: Arc<AzureAccess>,
    settings: Settings,
    metrics: Arc<crate::metrics::Metrics>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded::<ObjectRef<VaultSecretBinding>>();
    let reporter = Reporter {
        controller: "kvsync".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        access,
        Pollers::new(Some(wake_tx)),
        Recorder::new(client.clone(), reporter),
        settings,
        metrics,
    ));

    let (bindings, secrets): (Api<VaultSecretBinding>, Api<PartialObjectMeta<Secret>>) =
        match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };

    let (reader, writer) = reflector::store();
    // A binding deleted without a finalizer is never reconciled again: drop
    // what is held for it when the watch reports the deletion.
    let on_delete = ctx.clone();
    let binding_stream = watcher(bindings, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(b)) = event {
                on_delete.forget(b);
            }
        })
        .applied_objects()
        .predicate_filter(binding_predicate, Default::default());

    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}=kvsync"));
    let secret_stream = watcher(secrets, managed)
        .default_backoff()
        .touched_objects();

    Controller::for_stream(binding_stream, reader)
        .watches_stream(secret_stream, |s| {
            let ns = s.namespace()?;
            let binding = s.annotations().get(BINDING_ANNOTATION)?.clone();
            Some(ObjectRef::new(&binding).within(&ns))
        })
        .reconcile_on(wake_rx)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(binding = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}
