//! The managed Secrets' resourceVersions as their metadata watch reports
//! them: all "in sync" needs to know of a Secret without reading it.
//!
//! A map of (namespace, name) → resourceVersion rather than kube's store of
//! whole metadata objects: ~0.2 KiB a Secret instead of ~1.5 KiB, which at
//! 10,000 bindings is 13 MiB.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

type Key = (String, String);

/// How long after a watch error the map does not vouch. The watcher
/// retries a failed watch at least every 30 s (kube's default backoff) and
/// reports each failure, so a watch that keeps failing keeps this closed;
/// one that resumed replays what it missed (or re-lists), after which the
/// map is as current as the watch.
const DISTRUST_AFTER_ERROR: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Inner {
    versions: HashMap<Key, String>,
    /// A listing in progress: what it has brought so far.
    listing: Option<HashMap<Key, String>>,
    /// A listing completed and no re-list began since.
    current: bool,
    /// The last watch failure since that listing.
    failed_at: Option<Instant>,
}

/// Shared by the watch (which feeds it) and the reconciles (which ask it).
#[derive(Clone, Default)]
pub struct SecretVersions(Arc<Mutex<Inner>>);

fn key(s: &PartialObjectMeta<Secret>) -> Option<(Key, String)> {
    let rv = s.metadata.resource_version.clone()?;
    Some(((s.namespace()?, s.name_any()), rv))
}

impl SecretVersions {
    /// Empty and not current: vouches for nothing until a listing completed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies what the watch reported. The start of a re-list makes it
    /// stop vouching until the listing completes, a failure for a while
    /// after it (see `DISTRUST_AFTER_ERROR`): a map that stopped updating
    /// must not hide an edited Secret.
    pub fn observe(
        &self,
        event: &Result<watcher::Event<PartialObjectMeta<Secret>>, watcher::Error>,
    ) {
        self.observe_at(event, Instant::now());
    }

    fn observe_at(
        &self,
        event: &Result<watcher::Event<PartialObjectMeta<Secret>>, watcher::Error>,
        now: Instant,
    ) {
        let mut inner = self.0.lock().expect("secret versions");
        match event {
            Err(_) => inner.failed_at = Some(now),
            Ok(watcher::Event::Init) => {
                inner.current = false;
                inner.listing = Some(HashMap::new());
            }
            Ok(watcher::Event::InitApply(s)) => {
                if let (Some((k, rv)), Some(listing)) = (key(s), inner.listing.as_mut()) {
                    listing.insert(k, rv);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(listing) = inner.listing.take() {
                    inner.versions = listing;
                }
                inner.current = true;
                inner.failed_at = None;
            }
            Ok(watcher::Event::Apply(s)) => {
                if let Some((k, rv)) = key(s) {
                    inner.versions.insert(k, rv);
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                if let Some((k, _)) = key(s) {
                    inner.versions.remove(&k);
                }
            }
        }
    }

    /// The resourceVersion of Secret `ns/name` as the watch last saw it;
    /// `None` when the watch is not current or has no such Secret.
    pub fn version(&self, ns: &str, name: &str) -> Option<String> {
        self.version_at(ns, name, Instant::now())
    }

    fn version_at(&self, ns: &str, name: &str, now: Instant) -> Option<String> {
        let inner = self.0.lock().expect("secret versions");
        let failing = inner
            .failed_at
            .is_some_and(|at| now.saturating_duration_since(at) < DISTRUST_AFTER_ERROR);
        if !inner.current || failing {
            return None;
        }
        inner
            .versions
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Secrets known (for tests and metrics).
    pub fn len(&self) -> usize {
        self.0.lock().expect("secret versions").versions.len()
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, rv: &str) -> PartialObjectMeta<Secret> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": name, "namespace": "ci", "resourceVersion": rv},
        }))
        .unwrap()
    }

    fn ok(
        e: watcher::Event<PartialObjectMeta<Secret>>,
    ) -> Result<watcher::Event<PartialObjectMeta<Secret>>, watcher::Error> {
        Ok(e)
    }

    #[test]
    fn vouches_only_after_a_listing_and_follows_events() {
        let v = SecretVersions::new();
        v.observe(&ok(watcher::Event::Init));
        v.observe(&ok(watcher::Event::InitApply(meta("a", "1"))));
        assert_eq!(v.version("ci", "a"), None, "the listing is not complete");
        v.observe(&ok(watcher::Event::InitDone));
        assert_eq!(v.version("ci", "a").as_deref(), Some("1"));
        v.observe(&ok(watcher::Event::Apply(meta("a", "2"))));
        v.observe(&ok(watcher::Event::Apply(meta("b", "3"))));
        assert_eq!(v.version("ci", "a").as_deref(), Some("2"));
        assert_eq!(v.version("other", "a"), None);
        v.observe(&ok(watcher::Event::Delete(meta("a", "2"))));
        assert_eq!(v.version("ci", "a"), None);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn a_failure_or_a_relist_stops_it_vouching_and_a_relist_replaces_all() {
        let v = SecretVersions::new();
        v.observe(&ok(watcher::Event::Init));
        v.observe(&ok(watcher::Event::InitApply(meta("a", "1"))));
        v.observe(&ok(watcher::Event::InitApply(meta("b", "1"))));
        v.observe(&ok(watcher::Event::InitDone));
        let failed = Instant::now();
        v.observe_at(&Err(watcher::Error::NoResourceVersion), failed);
        assert_eq!(v.version_at("ci", "a", failed), None, "after a failure");
        assert_eq!(
            v.version_at(
                "ci",
                "a",
                failed + DISTRUST_AFTER_ERROR - Duration::from_secs(1)
            ),
            None,
            "while failures may still come"
        );
        assert_eq!(
            v.version_at("ci", "a", failed + DISTRUST_AFTER_ERROR)
                .as_deref(),
            Some("1"),
            "a watch that resumed (no failure for a minute) is as current as it is"
        );
        v.observe_at(&Err(watcher::Error::NoResourceVersion), failed);
        v.observe(&ok(watcher::Event::Init));
        v.observe(&ok(watcher::Event::InitApply(meta("a", "5"))));
        assert_eq!(v.version("ci", "a"), None, "during a re-list");
        v.observe(&ok(watcher::Event::InitDone));
        assert_eq!(v.version("ci", "a").as_deref(), Some("5"));
        assert_eq!(v.version("ci", "b"), None, "gone while the watch was down");
    }
}
