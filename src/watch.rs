//! How kvsync watches, for both controllers: what of an object is dropped
//! before it enters a store (at 10,000 bindings, most of the memory), which
//! events of a watch are worth a reconcile, and how a watch's failures
//! become readiness, logs and metrics — with advice a person can act on.

use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;

use crate::metrics::{Metrics, ReconcileErrorKind};
use crate::server::{Health, WatchHealth};

/// Which watch: its failures are classified and explained by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchedKind {
    /// The VaultSecretBindings.
    Bindings,
    /// The Secrets kvsync manages (metadata only).
    Secrets,
    /// ServiceAccounts, for the identities of bindings (metadata only).
    ServiceAccounts,
    /// VaultAccessPolicies (cluster-scoped).
    Policies,
    /// Namespaces, for the labels policies select by (metadata only).
    Namespaces,
}

impl WatchedKind {
    fn resource(self) -> &'static str {
        match self {
            WatchedKind::Bindings => "vaultsecretbindings",
            WatchedKind::Secrets => "secrets",
            WatchedKind::ServiceAccounts => "serviceaccounts",
            WatchedKind::Policies => "vaultaccesspolicies",
            WatchedKind::Namespaces => "namespaces",
        }
    }
}

/// The metric kind of a watch failure, or `None` for the one failure that is
/// routine: 410 Gone (the resourceVersion expired; the watcher re-lists).
pub fn classify(watched: WatchedKind, e: &watcher::Error) -> Option<ReconcileErrorKind> {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    Some(match (watched, code) {
        (_, Some(410)) => return None,
        (WatchedKind::Bindings, Some(404)) => ReconcileErrorKind::WatchBindingsNotFound,
        (WatchedKind::Bindings, Some(403)) => ReconcileErrorKind::WatchBindingsForbidden,
        (WatchedKind::Secrets, Some(403)) => ReconcileErrorKind::WatchSecretsForbidden,
        (WatchedKind::ServiceAccounts, Some(403)) => {
            ReconcileErrorKind::WatchServiceAccountsForbidden
        }
        (WatchedKind::Policies, Some(404)) => ReconcileErrorKind::WatchPoliciesNotFound,
        (WatchedKind::Policies | WatchedKind::Namespaces, Some(403)) => {
            ReconcileErrorKind::WatchPoliciesForbidden
        }
        _ => ReconcileErrorKind::WatchOther,
    })
}

/// What a person does about a watch failure of `kind`; `scope` is e.g.
/// `in namespace ci`.
fn advice(kind: ReconcileErrorKind, watched: WatchedKind, scope: &str) -> String {
    match kind {
        ReconcileErrorKind::WatchBindingsNotFound => {
            "the VaultSecretBinding CRD is not installed: kubectl apply -f crds/ \
             (or kvsync crd | kubectl apply -f -)"
                .to_string()
        }
        ReconcileErrorKind::WatchBindingsForbidden => format!(
            "kvsync may not list vaultsecretbindings {scope}: grant list/watch on \
             vaultsecretbindings.kvsync.io to its ServiceAccount (see README RBAC)"
        ),
        ReconcileErrorKind::WatchSecretsForbidden => format!(
            "kvsync may not list secrets {scope}: grant list/watch on secrets to its \
             ServiceAccount (see README RBAC)"
        ),
        ReconcileErrorKind::WatchServiceAccountsForbidden => format!(
            "kvsync may not list serviceaccounts {scope}: grant list/watch on \
             serviceaccounts to its ServiceAccount (see README RBAC)"
        ),
        ReconcileErrorKind::WatchPoliciesNotFound => {
            "the VaultAccessPolicy CRD is not installed: kubectl apply -f crds/ \
             (or kvsync crd vaultaccesspolicies | kubectl apply -f -); until it is, \
             no binding is synced"
                .to_string()
        }
        ReconcileErrorKind::WatchPoliciesForbidden => format!(
            "kvsync may not list {}: grant list/watch on vaultaccesspolicies.kvsync.io and \
             namespaces to its ServiceAccount (the chart's -policies ClusterRole); until then \
             no binding is synced",
            watched.resource()
        ),
        _ => format!(
            "the watch of {} {scope} failed; retrying with backoff",
            watched.resource()
        ),
    }
}

/// Turns one watch's events into readiness, logs and metrics. A failure of a
/// new kind is logged at ERROR, its repetitions at WARN (the watcher retries
/// with backoff, so a lasting problem logs a line per attempt, not a flood).
pub struct WatchMonitor {
    watched: WatchedKind,
    scope: String,
    health: WatchHealth,
    metrics: Arc<Metrics>,
    failing: Option<ReconcileErrorKind>,
}

impl WatchMonitor {
    /// A monitor registered with `health` as `what scope` (`/readyz` waits
    /// for its first listing); `scope` is e.g. `in namespace ci`.
    pub fn new(watched: WatchedKind, scope: &str, health: &Health, metrics: Arc<Metrics>) -> Self {
        let what = match watched {
            WatchedKind::Secrets => "managed secrets",
            other => other.resource(),
        };
        Self {
            watched,
            scope: scope.to_string(),
            health: health.watch(format!("{what} {scope}")),
            metrics,
            failing: None,
        }
    }

    /// Observes one event; true when it completes a listing.
    pub fn observe<K>(&mut self, event: &Result<watcher::Event<K>, watcher::Error>) -> bool {
        match event {
            Ok(event) => {
                if let Some(kind) = self.failing.take() {
                    tracing::info!(watch = ?self.watched, scope = %self.scope, after = kind.as_str(), "watch recovered");
                }
                if matches!(event, watcher::Event::InitDone) {
                    self.health.listed();
                    true
                } else {
                    self.health.delivered();
                    false
                }
            }
            Err(e) => {
                let Some(kind) = classify(self.watched, e) else {
                    tracing::debug!(watch = ?self.watched, scope = %self.scope, error = %e, "watch expired; re-listing");
                    return false;
                };
                self.health.failed();
                self.metrics.reconcile_error(kind);
                let advice = advice(kind, self.watched, &self.scope);
                if self.failing == Some(kind) {
                    tracing::warn!(kind = kind.as_str(), error = %e, "{advice}");
                } else {
                    tracing::error!(kind = kind.as_str(), error = %e, "{advice}");
                }
                self.failing = Some(kind);
                false
            }
        }
    }
}

/// kubectl's copy of the whole object as last applied: never read by kvsync.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what kvsync never reads before an object enters a store: the
/// managed fields (often larger than the rest of the object) and kubectl's
/// last-applied copy of it. At 10,000 bindings this is most of the memory.
pub fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// Keeps of a namespace's metadata its name and labels (what policies and
/// cluster bindings select by) and its deletion (a namespace going away is
/// selected no more).
pub fn keep_labels_only(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        resource_version: meta.resource_version.take(),
        labels: meta.labels.take(),
        deletion_timestamp: meta.deletion_timestamp.take(),
        ..Default::default()
    };
}

/// One watch, several consumers: each subscriber gets every item sent, in
/// order. A subscriber that went away (its controller stopped) is dropped;
/// the others go on. Unbounded: the items are watch events, and every
/// subscriber is a controller that takes them as they come.
pub struct Fanout<T> {
    to: Vec<UnboundedSender<T>>,
}

impl<T> Default for Fanout<T> {
    fn default() -> Self {
        Self { to: Vec::new() }
    }
}

impl<T: Clone> Fanout<T> {
    /// A new subscriber, which gets what is sent from now on.
    pub fn subscribe(&mut self) -> UnboundedReceiver<T> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.to.push(tx);
        rx
    }

    /// Sends `item` to every subscriber.
    pub fn send(&mut self, item: &T) {
        self.to.retain(|tx| tx.unbounded_send(item.clone()).is_ok());
    }
}

/// Keeps of an object's metadata only what identifies it (name, namespace,
/// uid, resourceVersion, generation), its deletion state and finalizers, and
/// the annotations named in `keep`: for the stores of objects kvsync reads
/// nothing else of (bindings, its own Secrets).
pub fn keep_only(meta: &mut ObjectMeta, keep: &[&str]) {
    let annotations = meta.annotations.take().map(|mut a| {
        a.retain(|k, _| keep.contains(&k.as_str()));
        a
    });
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        generation: meta.generation.take(),
        deletion_timestamp: meta.deletion_timestamp.take(),
        finalizers: meta.finalizers.take(),
        annotations: annotations.filter(|a| !a.is_empty()),
        ..Default::default()
    };
}

/// The objects of a watch worth a reconcile (of the managed Secrets, of
/// namespaces): every change and deletion — but not the first listing, when
/// every binding is reconciled anyway (a start with 10,000 Secrets would otherwise queue
/// 10,000 reconciles at once, ahead of the bindings' jitter). Later
/// re-listings do count: changes may hide in them.
pub fn after_first_listing<S, K>(
    events: S,
) -> impl futures::Stream<Item = Result<K, watcher::Error>>
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    events
        .scan(false, |listed, event| {
            let out = match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => Some(Ok(s)),
                Ok(watcher::Event::InitApply(s)) if *listed => Some(Ok(s)),
                Ok(watcher::Event::InitDone) => {
                    *listed = true;
                    None
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            };
            std::future::ready(Some(out))
        })
        .filter_map(std::future::ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::VaultSecretBinding;
    use k8s_openapi::api::core::v1::Secret;
    use kube::ResourceExt;
    use kube::core::{PartialObjectMeta, Status};

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Status::failure("no", "x").with_code(code).boxed())
    }

    #[test]
    fn watch_failures_are_classified_by_status_and_watch() {
        use ReconcileErrorKind::*;
        use WatchedKind::*;
        let list = |c| watcher::Error::InitialListFailed(api(c));
        assert_eq!(classify(Bindings, &list(404)), Some(WatchBindingsNotFound));
        assert_eq!(classify(Bindings, &list(403)), Some(WatchBindingsForbidden));
        assert_eq!(classify(Secrets, &list(403)), Some(WatchSecretsForbidden));
        assert_eq!(classify(Secrets, &list(404)), Some(WatchOther));
        assert_eq!(classify(Bindings, &list(500)), Some(WatchOther));
        assert_eq!(classify(Policies, &list(404)), Some(WatchPoliciesNotFound));
        assert_eq!(classify(Policies, &list(403)), Some(WatchPoliciesForbidden));
        assert_eq!(
            classify(Namespaces, &list(403)),
            Some(WatchPoliciesForbidden)
        );
        assert_eq!(classify(Namespaces, &list(404)), Some(WatchOther));
        assert_eq!(
            classify(Bindings, &watcher::Error::WatchStartFailed(api(403))),
            Some(WatchBindingsForbidden)
        );
        assert_eq!(
            classify(Bindings, &watcher::Error::NoResourceVersion),
            Some(WatchOther)
        );
        let gone = Status::failure("too old", "Expired").with_code(410).boxed();
        assert_eq!(classify(Bindings, &watcher::Error::WatchError(gone)), None);
    }

    #[test]
    fn advice_says_what_to_do() {
        let scope = "in namespace ci";
        assert!(
            advice(
                ReconcileErrorKind::WatchBindingsNotFound,
                WatchedKind::Bindings,
                scope
            )
            .contains("kubectl apply -f crds/")
        );
        let secrets = advice(
            ReconcileErrorKind::WatchSecretsForbidden,
            WatchedKind::Secrets,
            scope,
        );
        assert!(
            secrets.contains("may not list secrets in namespace ci"),
            "{secrets}"
        );
        assert!(secrets.contains("grant list/watch on secrets"), "{secrets}");
    }

    /// Log lines written while `f` runs, plain text without colours.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_new_kind_of_watch_failure_is_an_error_its_repeats_warnings() {
        let health = Health::default();
        let metrics = Arc::new(Metrics::default());
        let mut monitor = WatchMonitor::new(
            WatchedKind::Bindings,
            "in namespace ci",
            &health,
            metrics.clone(),
        );
        let failed = |code| -> Result<watcher::Event<VaultSecretBinding>, watcher::Error> {
            Err(watcher::Error::InitialListFailed(api(code)))
        };
        let logs = logs_of(|| {
            assert!(!monitor.observe(&failed(404)));
            assert!(!monitor.observe(&failed(404)));
            assert!(!monitor.observe(&failed(403)));
            assert!(monitor.observe(&Ok(watcher::Event::<VaultSecretBinding>::InitDone)));
        });
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.len(), 4, "{logs}");
        assert!(lines[0].contains("ERROR"), "{logs}");
        assert!(
            lines[0]
                .contains("the VaultSecretBinding CRD is not installed: kubectl apply -f crds/"),
            "{logs}"
        );
        assert!(lines[1].contains("WARN"), "{logs}");
        assert!(lines[2].contains("ERROR"), "a new kind: {logs}");
        assert!(
            lines[2].contains("may not list vaultsecretbindings in namespace ci"),
            "{logs}"
        );
        assert!(
            lines[3].contains("INFO") && lines[3].contains("watch recovered"),
            "{logs}"
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"kvsync_reconcile_errors_total{kind="watch_bindings_not_found"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kvsync_reconcile_errors_total{kind="watch_bindings_forbidden"} 1"#),
            "{text}"
        );
        assert!(health.is_ready());
    }

    #[test]
    fn an_expired_resource_version_is_routine() {
        let health = Health::default();
        let metrics = Arc::new(Metrics::default());
        let mut monitor = WatchMonitor::new(
            WatchedKind::Secrets,
            "in all namespaces",
            &health,
            metrics.clone(),
        );
        monitor.observe::<VaultSecretBinding>(&Ok(watcher::Event::InitDone));
        let gone = || {
            Err(watcher::Error::WatchError(
                Status::failure("too old", "Expired").with_code(410).boxed(),
            ))
        };
        let logs = logs_of(|| {
            monitor.observe::<VaultSecretBinding>(&gone());
            monitor.observe::<VaultSecretBinding>(&gone());
        });
        assert_eq!(logs, "", "debug only");
        assert!(health.is_ready());
        assert!(
            metrics
                .encode()
                .contains(r#"kvsync_reconcile_errors_total{kind="watch_other"} 0"#)
        );
    }

    #[test]
    fn what_kvsync_never_reads_is_dropped_before_the_store() {
        let mut meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "agent",
            "annotations": {LAST_APPLIED: "{\"data\": \"...\"}", "kvsync.io/binding": "agent"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        }))
        .unwrap();
        trim_meta(&mut meta);
        assert!(meta.managed_fields.is_none());
        let annotations = meta.annotations.unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(annotations["kvsync.io/binding"], "agent");
    }

    #[test]
    fn stores_of_bindings_and_secrets_keep_only_what_kvsync_reads() {
        let mut meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "agent", "namespace": "ci", "uid": "u-1", "resourceVersion": "7",
            "generation": 3, "finalizers": ["kvsync.io/merge"],
            "deletionTimestamp": "2026-12-03T10:00:00Z",
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": {"team": "build"},
            "annotations": {LAST_APPLIED: "{}", "kvsync.io/binding": "agent", "other": "x"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u-2"}],
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        }))
        .unwrap();
        keep_only(&mut meta, &["kvsync.io/binding"]);
        assert_eq!(
            serde_json::to_value(&meta).unwrap(),
            serde_json::json!({
                "name": "agent", "namespace": "ci", "uid": "u-1", "resourceVersion": "7",
                "generation": 3, "finalizers": ["kvsync.io/merge"],
                "deletionTimestamp": "2026-12-03T10:00:00Z",
                "annotations": {"kvsync.io/binding": "agent"},
            })
        );
        let mut bare: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "agent", "annotations": {"other": "x"}
        }))
        .unwrap();
        keep_only(&mut bare, &["kvsync.io/force-sync"]);
        assert_eq!(bare.annotations, None);
    }

    fn meta(name: &str) -> PartialObjectMeta<Secret> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": name, "namespace": "ci"},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_item_and_one_gone_stops_no_other() {
        let mut fanout = Fanout::default();
        let mut a = fanout.subscribe();
        let b = fanout.subscribe();
        fanout.send(&1);
        drop(b);
        fanout.send(&2);
        drop(fanout);
        assert_eq!(a.by_ref().collect::<Vec<_>>().await, [1, 2]);
    }

    #[test]
    fn a_namespace_keeps_its_name_labels_and_deletion() {
        let mut meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "ci", "resourceVersion": "7", "uid": "u-1",
            "labels": {"team": "build"},
            "annotations": {"other": "x"},
            "deletionTimestamp": "2026-12-03T10:00:00Z",
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        }))
        .unwrap();
        keep_labels_only(&mut meta);
        assert_eq!(
            serde_json::to_value(&meta).unwrap(),
            serde_json::json!({
                "name": "ci", "resourceVersion": "7", "labels": {"team": "build"},
                "deletionTimestamp": "2026-12-03T10:00:00Z",
            })
        );
    }

    #[tokio::test]
    async fn the_first_listing_of_secrets_triggers_nothing_later_ones_do() {
        use watcher::Event::*;
        let events = futures::stream::iter(vec![
            Ok(Init),
            Ok(InitApply(meta("a"))),
            Ok(InitDone),
            Ok(Apply(meta("b"))),
            Ok(Delete(meta("c"))),
            Ok(Init),
            Ok(InitApply(meta("d"))),
            Ok(InitDone),
        ]);
        let names: Vec<String> = after_first_listing(events)
            .map(|r| r.unwrap().name_any())
            .collect()
            .await;
        assert_eq!(names, ["b", "c", "d"]);
    }
}
