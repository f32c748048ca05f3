//! What the operator remembers of each binding between reconciles, in one
//! place, and the status-cache protocol.
//!
//! Everything kept per binding is one [`BindingState`] in one map, so
//! forgetting a binding is complete by construction. The binding's status
//! is kept here only (the bindings' store holds none): the watch delivers
//! it through [`Context::observe_status`], a reconcile acts on the newest
//! one ([`Context::with_newest_status`]: ours while we lead, else the
//! watch's), and [`Context::write_status`] marks what this process wrote —
//! so a re-list that brings an older status back can never drop a due
//! rollout or repeat a handled force-sync. What must survive a restart
//! lives in the status itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use super::{Settings, force_pending};
use crate::azure::AzureAccess;
use crate::crd::{VaultSecretBinding, VaultSecretBindingStatus};
use crate::events::Events;
use crate::poller::Pollers;
use crate::status;

/// The resourceVersions of the Secrets kvsync manages, kept by their watch.
pub type SecretCache = crate::versions::SecretVersions;

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Azure access (HTTP client, host guard, token sources).
    pub access: Arc<AzureAccess>,
    /// One poller per (vault, identity).
    pub pollers: Pollers,
    /// Events about bindings.
    pub events: Events,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Everything held in memory per binding, in one place, so forgetting a
    /// binding is complete by construction. What must survive a restart
    /// (a due rollout, a handled force-sync) lives in the binding's status.
    bindings: Mutex<HashMap<BindingKey, BindingState>>,
    /// With leader election: whether this replica may write now.
    leader: Option<tokio::sync::watch::Receiver<bool>>,
    /// The managed Secrets' resourceVersions; without them every check reads the Secret.
    secrets: Option<SecretCache>,
    /// ServiceAccounts' metadata, for identities; without it they are read.
    pub(super) service_accounts: Option<crate::azure::identity::ServiceAccountCache>,
    /// The namespace this context serves (`None`: all). The pollers are
    /// shared with the contexts of other namespaces: it forgets only its own.
    namespace: Option<String>,
    /// Whether settled bindings wait their jitter before the first check.
    spread_start: bool,
    /// The VaultAccessPolicies (see [`Context::with_policies`]).
    pub(super) policies: Option<crate::policy::view::PolicyView>,
    /// The ClusterVaultSecretBindings (see [`Context::with_clusters`]).
    pub(super) clusters: Option<crate::cluster::view::ClusterView>,
    /// Bumped (under the `bindings` lock) each time this replica stands
    /// down: a status write that straddles it is not "ours".
    epoch: std::sync::atomic::AtomicU64,
    /// The bindings' watch is listing: the store still holds the previous
    /// listing while the context already knows the new one's bindings, so
    /// a sweep must wait (it would forget their statuses).
    bindings_listing: std::sync::atomic::AtomicBool,
}

/// A binding's namespace and name.
pub(super) type BindingKey = (String, String);

/// What the operator remembers of one binding between reconciles.
#[derive(Debug, Default)]
pub(super) struct BindingState {
    /// Consecutive failed reconciles (for the backoff).
    failures: u32,
    /// Rollout targets found missing when last looked up.
    pub(super) rollout_missing: Option<Vec<String>>,
    /// When a force-sync last bypassed the caches (they are shared, so a
    /// binding may not force reads for everyone more than once a while).
    last_forced: Option<Instant>,
    /// Consecutive failed rollout patches (for their backoff).
    pub(super) rollout_failures: u32,
    /// The binding's status, with its uid: the only copy kept (the
    /// bindings' store holds none, see [`Context::observe_status`]), as
    /// JSON — one allocation of ~1 KiB instead of some forty small ones
    /// (~2.4 KiB at five secrets); it is read once per check.
    status: Option<(String, PackedStatus)>,
    /// `status` is the one this process last wrote. The watch delivers our
    /// own writes a moment later, and a re-list served from the API
    /// server's watch cache may bring an older status back; a reconcile
    /// must not act on one of those — it would drop a due rollout or repeat
    /// a handled force-sync. Only the leader writes status, so while it
    /// leads, ours is the newest.
    ours: bool,
    /// Reconciled at least once by this process (or since it became the
    /// leader).
    seen: bool,
    /// The last event sent about it (a digest of type, reason and note) and
    /// when: the same one is not sent again within `EVENT_REPEAT` (a status
    /// write that keeps failing would otherwise repeat its warning on every
    /// retry, and a Secret edited in a loop its repair).
    pub(super) last_event: Option<(u64, Instant)>,
}

/// A status kept as its JSON (see `BindingState::status`).
struct PackedStatus(Box<[u8]>);

impl PackedStatus {
    pub(super) fn pack(status: &VaultSecretBindingStatus) -> Self {
        Self(
            serde_json::to_vec(status)
                .expect("a status serializes")
                .into_boxed_slice(),
        )
    }

    /// `None` (and a log line) if it does not read back (a time outside
    /// what RFC 3339 can say, from an odd vault): the binding is then
    /// checked as if new.
    pub(super) fn unpack(&self) -> Option<VaultSecretBindingStatus> {
        serde_json::from_slice(&self.0)
            .inspect_err(|e| tracing::warn!(error = %e, "a kept status does not read back"))
            .ok()
    }
}

impl std::fmt::Debug for PackedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedStatus({} bytes)", self.0.len())
    }
}

/// What to do about a force-sync annotation now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Force {
    /// None pending.
    No,
    /// Read everything anew now.
    Now,
    /// Pending, but the binding forced a read less than
    /// `Settings::force_sync_cooldown` ago: honoured after this long.
    After(Duration),
}

impl Context {
    /// A context.
    pub fn new(
        client: kube::Client,
        access: Arc<AzureAccess>,
        pollers: Pollers,
        events: Events,
        settings: Settings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            metrics,
            client,
            access,
            pollers,
            events,
            settings,
            bindings: Mutex::new(HashMap::new()),
            leader: None,
            secrets: None,
            service_accounts: None,
            namespace: None,
            spread_start: true,
            policies: None,
            clusters: None,
            epoch: std::sync::atomic::AtomicU64::new(0),
            bindings_listing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Checks every binding at its first reconcile, settled or not: for
    /// callers that drive reconciles themselves (tests, benches), where a
    /// first reconcile is not a restart.
    pub fn without_start_spread(mut self) -> Self {
        self.spread_start = false;
        self
    }

    /// Decides "in sync" from the managed Secrets' metadata watch (`secrets`)
    /// and looks ServiceAccounts up in `service_accounts`, falling back to a
    /// read only for what they do not hold.
    pub fn with_caches(
        mut self,
        secrets: SecretCache,
        service_accounts: crate::azure::identity::ServiceAccountCache,
    ) -> Self {
        self.secrets = Some(secrets);
        self.service_accounts = Some(service_accounts);
        self
    }

    /// Serves only `namespace` (`None`: all); see [`Context::forget_absent`].
    pub fn within(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    /// The resourceVersion of managed Secret `ns/name` as the watch last saw
    /// it; `None` when there is no complete listing yet, or no such Secret.
    pub(super) fn secret_version(&self, ns: &str, name: &str) -> Option<String> {
        self.secrets.as_ref()?.version(ns, name)
    }

    /// Whether nothing says `b`'s Secret changed since its status was
    /// written: the watch shows the recorded version (a Secret deleted or
    /// edited while kvsync was down is repaired at once, not after the
    /// jitter). Without the watch there is nothing to say otherwise.
    pub(super) fn secret_untouched(&self, b: &VaultSecretBinding) -> bool {
        if self.secrets.is_none() {
            return true;
        }
        let recorded = b
            .status
            .as_ref()
            .and_then(|s| s.secret_resource_version.clone());
        recorded.is_some()
            && self.secret_version(
                &b.namespace().unwrap_or_default(),
                b.spec.target_name(&b.name_any()),
            ) == recorded
    }

    /// True the first time it is asked about `key` (since the start, or
    /// since this replica became the leader).
    pub(super) fn first_look(&self, key: &BindingKey) -> bool {
        self.state(key, |s| !std::mem::replace(&mut s.seen, true)) && self.spread_start
    }

    /// Decides every binding by the VaultAccessPolicies `view` holds;
    /// without one (tests, benches) every binding is allowed.
    pub fn with_policies(mut self, view: crate::policy::view::PolicyView) -> Self {
        self.policies = Some(view);
        self
    }

    /// Syncs the bindings kept for ClusterVaultSecretBindings with the
    /// cluster binding's spec and identity (looked up in `view`); without
    /// one (tests, benches) a binding claiming a cluster binding is synced
    /// as its own.
    pub fn with_clusters(mut self, view: crate::cluster::view::ClusterView) -> Self {
        self.clusters = Some(view);
        self
    }

    /// Writes only while `leader` says this replica holds the Lease.
    pub fn with_leader(mut self, leader: tokio::sync::watch::Receiver<bool>) -> Self {
        self.leader = Some(leader);
        self
    }

    /// Whether this replica may write (always, without leader election).
    pub fn may_write(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| *l.borrow())
    }

    pub(super) fn state<T>(&self, key: &BindingKey, f: impl FnOnce(&mut BindingState) -> T) -> T {
        let mut map = self.bindings.lock().expect("binding state");
        f(map.entry(key.clone()).or_default())
    }

    /// Drops everything held for a deleted binding: its state, its poller
    /// interests (a poller nobody needs stops) and its metric series.
    pub fn forget(&self, b: &VaultSecretBinding) {
        self.forget_key(&key_of(b));
    }

    pub(super) fn forget_key(&self, key: &BindingKey) {
        self.bindings.lock().expect("binding state").remove(key);
        let (ns, name) = key;
        self.pollers
            .forget(&ObjectRef::<VaultSecretBinding>::new(name).within(ns));
        self.metrics.forget_binding(ns, name, &[]);
    }

    /// Whether this context serves namespace `ns` (the pollers are shared
    /// with the contexts of other namespaces: what is theirs stays).
    pub(super) fn serves(&self, ns: Option<&str>) -> bool {
        match &self.namespace {
            Some(own) => ns == Some(own.as_str()),
            None => true,
        }
    }

    /// Forgets every binding for which `present` is false: bindings deleted
    /// while the watch was down never send a delete event.
    pub fn forget_absent(&self, present: impl Fn(&ObjectRef<VaultSecretBinding>) -> bool) {
        let absent: Vec<BindingKey> = {
            let map = self.bindings.lock().expect("binding state");
            // Checked under the lock the watch's `observe_status` takes: a
            // listing that began after this check adds its bindings after
            // the list below is made.
            if self
                .bindings_listing
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            map.keys()
                .filter(|(ns, name)| !present(&ObjectRef::new(name).within(ns)))
                .cloned()
                .collect()
        };
        for key in &absent {
            self.forget_key(key);
        }
        // Pollers may know bindings this context never recorded (a read
        // that failed before its state was kept): ask them too.
        self.pollers
            .retain(|r| !self.serves(r.namespace.as_deref()) || present(r));
    }

    /// Whether a pending force-sync of `b` may bypass the caches now.
    pub(super) fn force(&self, key: &BindingKey, b: &VaultSecretBinding, now: Instant) -> Force {
        if !force_pending(b) {
            return Force::No;
        }
        let cooldown = self.settings.force_sync_cooldown;
        self.state(key, |s| match s.last_forced {
            Some(at) if now.duration_since(at) < cooldown => {
                Force::After(cooldown - now.duration_since(at))
            }
            _ => {
                s.last_forced = Some(now);
                Force::Now
            }
        })
    }

    /// The status a reconcile of `b` would act on (what the watch brought,
    /// or this process wrote), without `b`'s own.
    pub fn kept_status(&self, b: &VaultSecretBinding) -> Option<VaultSecretBindingStatus> {
        let mut bare = b.clone();
        bare.status = None;
        Arc::unwrap_or_clone(self.with_newest_status(Arc::new(bare))).status
    }

    /// Set by the bindings' watch: a listing began (`true`) or completed.
    pub fn set_bindings_listing(&self, listing: bool) {
        // Under the lock, so that `forget_absent` sees it in order with
        // the statuses the listing brings.
        let _map = self.bindings.lock().expect("binding state");
        self.bindings_listing
            .store(listing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes the status out of a binding the watch delivered and keeps it
    /// here (unless this process wrote a newer one): the bindings' store
    /// then holds no status, so there is one copy of each in memory.
    pub fn observe_status(&self, b: &mut VaultSecretBinding) {
        let seen = b.status.take();
        let uid = b.uid().unwrap_or_default();
        self.state(&key_of(b), |s| match &s.status {
            Some((u, _)) if s.ours && *u == uid => {}
            _ => {
                s.status = seen.map(|st| (uid, PackedStatus::pack(&st)));
                s.ours = false;
            }
        });
    }

    /// `b` with its newest status: the one this process last wrote, else
    /// the one the watch last delivered. A `b` that still carries a status
    /// (a caller that did not come through the watch) is observed first.
    pub(super) fn with_newest_status(&self, b: Arc<VaultSecretBinding>) -> Arc<VaultSecretBinding> {
        let uid = b.uid().unwrap_or_default();
        let mut b = Arc::unwrap_or_clone(b);
        if b.status.is_some() {
            self.observe_status(&mut b);
        }
        b.status = self.state(&key_of(&b), |s| match &s.status {
            Some((u, st)) if *u == uid => st.unpack(),
            _ => None,
        });
        Arc::new(b)
    }

    /// Writes `status` for `b` and keeps it as "ours" — unless this replica
    /// stood down while the write was out (the next leader's statuses must
    /// then win), or the write failed (it may still have landed: the
    /// watch's copy must win).
    pub(super) async fn write_status(
        &self,
        api: &Api<VaultSecretBinding>,
        b: &VaultSecretBinding,
        status: &VaultSecretBindingStatus,
    ) -> Result<(), kube::Error> {
        let epoch = self.epoch.load(std::sync::atomic::Ordering::SeqCst);
        let written = status::write(api, &b.name_any(), status).await;
        let uid = b.uid().unwrap_or_default();
        let mut map = self.bindings.lock().expect("binding state");
        let s = map.entry(key_of(b)).or_default();
        match &written {
            Ok(()) => {
                s.status = Some((uid, PackedStatus::pack(status)));
                s.ours = self.epoch.load(std::sync::atomic::Ordering::SeqCst) == epoch;
            }
            Err(_) => s.ours = false,
        }
        written
    }

    /// This replica lost the Lease: forgets everything held per binding
    /// but the statuses (the store has none), which stop being "ours" —
    /// the next leader writes newer ones, and the watch must bring them.
    pub fn stand_down(&self) {
        let keys: Vec<BindingKey> = {
            let mut map = self.bindings.lock().expect("binding state");
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            for s in map.values_mut() {
                *s = BindingState {
                    status: s.status.take(),
                    ..Default::default()
                };
            }
            map.keys().cloned().collect()
        };
        for (ns, name) in &keys {
            self.metrics.forget_binding(ns, name, &[]);
        }
        self.pollers
            .retain(|r| !self.serves(r.namespace.as_deref()));
    }

    pub(super) fn failure_count(&self, key: &BindingKey, failed: bool) -> u32 {
        self.state(key, |s| {
            if failed {
                s.failures = s.failures.saturating_add(1);
            } else {
                s.failures = 0;
            }
            s.failures
        })
    }
}

pub(super) fn key_of(b: &VaultSecretBinding) -> BindingKey {
    (b.namespace().unwrap_or_default(), b.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::hosts::VaultHostPolicy;
    use crate::azure::identity::AzureEnvironment;
    use crate::azure::retry::RetryPolicy;

    /// A context whose Kubernetes client is never answered (these tests
    /// exercise only what is kept in memory).
    fn context() -> Context {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = kube::Client::new(service, "default");
        let access = Arc::new(AzureAccess::new(
            crate::azure::http::build_client(&[]).expect("an HTTP client"),
            VaultHostPolicy::new([]),
            AzureEnvironment::from_lookup(|_| None),
            RetryPolicy::default(),
        ));
        Context::new(
            client.clone(),
            access,
            Pollers::new(None),
            Events::new(client, "kvsync", None),
            Settings {
                default_refresh: Duration::from_secs(300),
                rollout_window: Duration::from_secs(30),
                hash_key: crate::hashkey::HashKey::new(b"k"),
                force_sync_cooldown: Duration::ZERO,
                status_heartbeat: Duration::from_secs(900),
                concurrency: 1,
                access_policy: crate::policy::Mode::Open,
            },
            Arc::new(crate::metrics::Metrics::default()),
        )
    }

    fn binding(uid: &str, handled: &str) -> VaultSecretBinding {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
            "metadata": {"name": "b", "namespace": "ns", "uid": uid},
            "spec": {"vaultUrl": "https://v.vault.azure.net", "secrets": [{"name": "x"}]},
            "status": {"forceSyncHandled": handled},
        }))
        .unwrap()
    }

    fn handled(s: Option<VaultSecretBindingStatus>) -> Option<String> {
        s.and_then(|s| s.force_sync_handled)
    }

    #[tokio::test]
    async fn the_watch_hands_over_the_status_and_the_store_keeps_none() {
        let ctx = context();
        let mut b = binding("u1", "from-watch");
        ctx.observe_status(&mut b);
        assert!(
            b.status.is_none(),
            "the binding as stored carries no status"
        );
        assert_eq!(handled(ctx.kept_status(&b)).as_deref(), Some("from-watch"));
    }

    #[tokio::test]
    async fn a_status_this_process_wrote_wins_over_an_older_one_the_watch_brings_back() {
        let ctx = context();
        let b = binding("u1", "ours");
        let ours = b.status.clone().unwrap();
        // As write_status keeps a written status.
        ctx.state(&key_of(&b), |s| {
            s.status = Some(("u1".into(), PackedStatus::pack(&ours)));
            s.ours = true;
        });
        let mut stale = binding("u1", "stale-relist");
        ctx.observe_status(&mut stale);
        assert_eq!(handled(ctx.kept_status(&b)).as_deref(), Some("ours"));
        // Standing down: the next leader's statuses must win.
        ctx.stand_down();
        let mut stale = binding("u1", "stale-relist");
        ctx.observe_status(&mut stale);
        assert_eq!(
            handled(ctx.kept_status(&b)).as_deref(),
            Some("stale-relist")
        );
    }

    #[tokio::test]
    async fn a_recreated_binding_never_gets_the_old_ones_status_and_forget_drops_all() {
        let ctx = context();
        let mut old = binding("u1", "old");
        ctx.observe_status(&mut old);
        let recreated = binding("u2", "x");
        let mut bare = recreated.clone();
        bare.status = None;
        assert!(ctx.kept_status(&bare).is_none(), "another uid");
        ctx.forget(&old);
        assert!(ctx.bindings.lock().unwrap().is_empty(), "nothing kept");
        assert!(ctx.kept_status(&old).is_none());
    }
}
