//! One binding's reconcile: binding → plan → vault reads → rendered Secret →
//! apply → status (→ events, rollout). Every error a user can cause ends as a
//! `Ready=False` condition with a reason and a message; the Secret keeps its
//! last good data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::events::{EventType, Events};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use crate::apply;
use crate::azure::AzureAccess;
use crate::crd::{
    TargetPolicy, VaultSecretBinding, VaultSecretBindingSpec, VaultSecretBindingStatus,
};
use crate::poller::{Pollers, ReadError};
use crate::prepare::{Inputs, Judge, PrepareError, prepare};
use crate::reason::Reason;
use crate::render::{RenderInput, render};
use crate::rollout::{self, RolloutDue};
use crate::status::{self, READY, SyncReport};

pub use crate::crd::names::{FORCE_SYNC_ANNOTATION, MERGE_FINALIZER as FINALIZER};

/// Failures of the Kubernetes API itself (not the user's to fix); the
/// controller retries them with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        "kube"
    }
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `refreshInterval` of bindings that set none.
    pub default_refresh: Duration,
    /// Data changes within this window cause one rollout restart.
    pub rollout_window: Duration,
    /// Key of `status.dataHash`.
    pub hash_key: crate::hashkey::HashKey,
    /// A binding's force-sync bypasses the caches (shared with every other
    /// binding of its vault and identity) at most once per this long; a
    /// newer value waits for the rest of it, then is honoured.
    pub force_sync_cooldown: Duration,
    /// With nothing changed, `lastSyncTime` is written at most this often
    /// (zero: after every check).
    pub status_heartbeat: Duration,
    /// Reconciles running at once, per controller (`--concurrency`).
    pub concurrency: u16,
    /// `--access-policy`.
    pub access_policy: crate::policy::Mode,
}

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
    service_accounts: Option<crate::azure::identity::ServiceAccountCache>,
    /// The namespace this context serves (`None`: all). The pollers are
    /// shared with the contexts of other namespaces: it forgets only its own.
    namespace: Option<String>,
    /// Whether settled bindings wait their jitter before the first check.
    spread_start: bool,
    /// The VaultAccessPolicies (see [`Context::with_policies`]).
    policies: Option<crate::policy::view::PolicyView>,
    /// The ClusterVaultSecretBindings (see [`Context::with_clusters`]).
    clusters: Option<crate::cluster::view::ClusterView>,
    /// Bumped (under the `bindings` lock) each time this replica stands
    /// down: a status write that straddles it is not "ours".
    epoch: std::sync::atomic::AtomicU64,
    /// The bindings' watch is listing: the store still holds the previous
    /// listing while the context already knows the new one's bindings, so
    /// a sweep must wait (it would forget their statuses).
    bindings_listing: std::sync::atomic::AtomicBool,
}

/// A binding's namespace and name.
type BindingKey = (String, String);

/// What the operator remembers of one binding between reconciles.
#[derive(Debug, Default)]
struct BindingState {
    /// Consecutive failed reconciles (for the backoff).
    failures: u32,
    /// Rollout targets found missing when last looked up.
    rollout_missing: Option<Vec<String>>,
    /// When a force-sync last bypassed the caches (they are shared, so a
    /// binding may not force reads for everyone more than once a while).
    last_forced: Option<Instant>,
    /// Consecutive failed rollout patches (for their backoff).
    rollout_failures: u32,
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
    last_event: Option<(u64, Instant)>,
}

/// A status kept as its JSON (see `BindingState::status`).
struct PackedStatus(Box<[u8]>);

impl PackedStatus {
    fn pack(status: &VaultSecretBindingStatus) -> Self {
        Self(
            serde_json::to_vec(status)
                .expect("a status serializes")
                .into_boxed_slice(),
        )
    }

    /// `None` (and a log line) if it does not read back (a time outside
    /// what RFC 3339 can say, from an odd vault): the binding is then
    /// checked as if new.
    fn unpack(&self) -> Option<VaultSecretBindingStatus> {
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
enum Force {
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
    fn secret_version(&self, ns: &str, name: &str) -> Option<String> {
        self.secrets.as_ref()?.version(ns, name)
    }

    /// Whether nothing says `b`'s Secret changed since its status was
    /// written: the watch shows the recorded version (a Secret deleted or
    /// edited while kvsync was down is repaired at once, not after the
    /// jitter). Without the watch there is nothing to say otherwise.
    fn secret_untouched(&self, b: &VaultSecretBinding) -> bool {
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
    fn first_look(&self, key: &BindingKey) -> bool {
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

    fn state<T>(&self, key: &BindingKey, f: impl FnOnce(&mut BindingState) -> T) -> T {
        let mut map = self.bindings.lock().expect("binding state");
        f(map.entry(key.clone()).or_default())
    }

    /// Drops everything held for a deleted binding: its state, its poller
    /// interests (a poller nobody needs stops) and its metric series.
    pub fn forget(&self, b: &VaultSecretBinding) {
        self.forget_key(&key_of(b));
    }

    fn forget_key(&self, key: &BindingKey) {
        self.bindings.lock().expect("binding state").remove(key);
        let (ns, name) = key;
        self.pollers
            .forget(&ObjectRef::<VaultSecretBinding>::new(name).within(ns));
        self.metrics.forget_binding(ns, name, &[]);
    }

    /// Whether this context serves namespace `ns` (the pollers are shared
    /// with the contexts of other namespaces: what is theirs stays).
    fn serves(&self, ns: Option<&str>) -> bool {
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
    fn force(&self, key: &BindingKey, b: &VaultSecretBinding, now: Instant) -> Force {
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
    fn with_newest_status(&self, b: Arc<VaultSecretBinding>) -> Arc<VaultSecretBinding> {
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
    async fn write_status(
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

    fn failure_count(&self, key: &BindingKey, failed: bool) -> u32 {
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

fn key_of(b: &VaultSecretBinding) -> BindingKey {
    (b.namespace().unwrap_or_default(), b.name_any())
}

/// The force-sync annotation's value as recorded in status: short values as
/// they are, long ones as a digest (status is not a place for 256 KiB).
pub fn force_sync_token(b: &VaultSecretBinding) -> Option<String> {
    let value = b.annotations().get(FORCE_SYNC_ANNOTATION)?;
    if value.len() <= 64 {
        return Some(value.clone());
    }
    let d = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let hex: String = d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("sha256:{hex}"))
}

/// Whether the binding carries a force-sync value it has not acted upon
/// (recorded in status, so it is honoured once, across restarts).
fn force_pending(b: &VaultSecretBinding) -> bool {
    let handled = b
        .status
        .as_ref()
        .and_then(|s| s.force_sync_handled.as_deref());
    force_sync_token(b).is_some_and(|t| Some(t.as_str()) != handled)
}

/// Whether `b`'s status says its current generation is in its Secret with
/// nothing due: no pending force-sync or rollout, the same target.
fn settled(b: &VaultSecretBinding) -> bool {
    let Some(s) = &b.status else { return false };
    let ready = s
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True");
    ready
        && s.observed_generation == b.meta().generation
        && s.rollout_pending_since.is_none()
        && s.target_name.as_deref() == Some(b.spec.target_name(&b.name_any()))
        && !force_pending(b)
}

/// A deterministic spread in [0, interval/10) from the binding's uid, so that
/// a restart does not fire every binding at once.
pub fn jitter(uid: &str, interval: Duration) -> Duration {
    let digest = ring::digest::digest(&ring::digest::SHA256, uid.as_bytes());
    let n = u64::from_le_bytes(digest.as_ref()[..8].try_into().expect("8 bytes"));
    let span = (interval.as_millis() as u64 / 10).max(1);
    Duration::from_millis(n % span)
}

/// Backoff after `failures` consecutive failures: 5 s doubling, capped at the
/// refresh interval (and 5 min).
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let base = Duration::from_secs(5).saturating_mul(1 << failures.saturating_sub(1).min(10));
    base.min(interval).min(Duration::from_secs(300))
}

/// Whether a failure means the binding may not (or cannot) read its vault
/// now, so the pollers must drop what they fetch for it.
fn stops_reading(f: &Failure) -> bool {
    matches!(
        f.reason,
        Reason::PolicyDenied
            | Reason::ClusterBindingMissing
            | Reason::InvalidSpec
            | Reason::VaultHostNotAllowed
            | Reason::IdentityMisconfigured
    )
}

/// A failure the user can fix (or wait out), as a condition.
#[derive(Debug)]
struct Failure {
    reason: Reason,
    message: String,
    transient: bool,
}

impl From<ReadError> for Failure {
    fn from(e: ReadError) -> Self {
        Failure {
            reason: e.reason(),
            message: e.to_string(),
            transient: e.is_transient(),
        }
    }
}

enum SyncError {
    User(Failure),
    Kube(kube::Error),
    /// Leadership was lost during the sync: write nothing more.
    Standby,
}

impl From<PrepareError> for SyncError {
    fn from(e: PrepareError) -> Self {
        Self::User(Failure {
            reason: e.reason(),
            message: e.to_string(),
            transient: e.is_transient(),
        })
    }
}

impl From<kube::Error> for SyncError {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

struct Synced {
    /// False when the Secret was written but lacks something (SecretDisabled).
    ready: bool,
    status: VaultSecretBindingStatus,
    data_changed: bool,
    first: bool,
    written: bool,
    /// Written because the Secret had drifted (not a vault or spec change).
    repaired: bool,
    requeue: Option<Duration>,
}

fn display_key(b: &VaultSecretBinding) -> String {
    format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any())
}

/// Reconciles one binding.
pub async fn reconcile(b: Arc<VaultSecretBinding>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let bindings: Api<VaultSecretBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let key = key_of(&b);
    let shown = display_key(&b);
    let has_finalizer = b.finalizers().iter().any(|f| f == FINALIZER);
    if !ctx.may_write() {
        // A standby: the leader reconciles; this replica is woken for every
        // binding when it becomes the leader.
        return Ok(Action::await_change());
    }

    if b.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            release_merged(&b, &ctx).await?;
            remove_finalizer(&bindings, &b).await?;
        }
        ctx.forget(&b);
        return Ok(Action::await_change());
    }
    // A binding kept for a ClusterVaultSecretBinding syncs the cluster
    // binding's spec and identity, whatever its own object says.
    let parent = match &ctx.clusters {
        Some(view) => view.parent_of(&b).await,
        None => Ok(None),
    };
    let b = match &parent {
        Ok(Some(p)) => {
            let mut own = Arc::unwrap_or_clone(b);
            own.spec = p.spec.clone();
            Arc::new(own)
        }
        _ => b,
    };
    match (b.spec.policy() == TargetPolicy::Merge, has_finalizer) {
        (true, false) => {
            let mut finalizers = b.finalizers().to_vec();
            finalizers.push(FINALIZER.to_string());
            let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": b.resource_version()}});
            bindings
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        (false, true) => {
            // The policy moved away from Merge: give the shared Secret its keys back.
            release_merged(&b, &ctx).await?;
            remove_finalizer(&bindings, &b).await?;
        }
        _ => {}
    }

    let b = ctx.with_newest_status(b);
    let interval = b.spec.refresh_interval_or(ctx.settings.default_refresh);
    // After a start (or a takeover) a binding whose status says it is in
    // sync waits its uid jitter before the first check, so ten thousand of
    // them do not reach the vaults and the API server at once. A new,
    // changed, failing or force-synced binding goes at once.
    if ctx.first_look(&key) && settled(&b) && ctx.secret_untouched(&b) {
        return Ok(Action::requeue(jitter(
            &b.uid().unwrap_or_default(),
            interval,
        )));
    }
    let prev = b.status.as_ref();
    let generation = b.meta().generation;
    let started = Instant::now();
    let force = ctx.force(&key, &b, started);
    // Recorded as handled only once acted upon: a deferred value stays due.
    let handled = match force {
        Force::Now => force_sync_token(&b),
        _ => prev.and_then(|p| p.force_sync_handled.clone()),
    };
    let result = sync(
        &b,
        &ctx,
        &parent,
        interval,
        force == Force::Now,
        handled.clone(),
    )
    .await;
    match result {
        Ok(done) => {
            ctx.failure_count(&key, false);
            match done.status.conditions.first() {
                Some(c) if c.status == "False" => ctx.metrics.sync_failed(
                    &shown,
                    Reason::parse(&c.reason).unwrap_or(Reason::SecretDisabled),
                    started.elapsed(),
                ),
                _ => ctx.metrics.sync_succeeded(&shown, started.elapsed()),
            }
            if done.written {
                ctx.metrics.secret_writes.inc();
            }
            ctx.metrics.set_secret_expiries(
                &ns,
                &name,
                done.status.secrets.iter().filter_map(|s| {
                    s.expires
                        .as_ref()
                        .map(|e| (s.name.as_str(), e.0.as_second()))
                }),
            );
            if done.data_changed {
                let secret = b.spec.target_name(&name).to_string();
                let note = format!(
                    "{} Secret {secret}: {} key(s) from vault {}",
                    if done.first { "wrote" } else { "updated" },
                    done.status.secrets.len(),
                    vault_name(&b.spec.vault_url)
                );
                publish(&ctx, &b, EventType::Normal, "Synced", note).await;
            } else if done.repaired {
                publish(
                    &ctx,
                    &b,
                    EventType::Normal,
                    "Repaired",
                    format!(
                        "put Secret {} back as the vault has it",
                        b.spec.target_name(&name)
                    ),
                )
                .await;
            }
            if !done.ready {
                let c = &done.status.conditions[0];
                warn_once(
                    &ctx,
                    &b,
                    prev,
                    Reason::parse(&c.reason).unwrap_or(Reason::Synced),
                    &c.message,
                )
                .await;
            }
            if status::needs_write(prev, &done.status, ctx.settings.status_heartbeat)
                && ctx.may_write()
            {
                ctx.write_status(&bindings, &b, &done.status).await?;
            }
            let mut next = interval + jitter(&b.uid().unwrap_or_default(), interval);
            if let Some(r) = done.requeue {
                next = next.min(r);
            }
            if let Force::After(wait) = force {
                next = next.min(wait);
            }
            Ok(Action::requeue(next))
        }
        Err(SyncError::User(f)) => {
            if stops_reading(&f) {
                // Its vault must not keep being read (nor its identity used)
                // for it: a binding allowed before is denied now, say.
                ctx.pollers.forget(&ObjectRef::new(&name).within(&ns));
            }
            let failures = ctx.failure_count(&key, true);
            ctx.metrics.sync_failed(&shown, f.reason, started.elapsed());
            warn_once(&ctx, &b, prev, f.reason, &f.message).await;
            let new_status = status::failed(
                prev,
                generation,
                f.reason,
                &f.message,
                handled,
                status::now(),
            );
            if status::needs_write(prev, &new_status, ctx.settings.status_heartbeat)
                && ctx.may_write()
            {
                ctx.write_status(&bindings, &b, &new_status).await?;
            }
            let mut wait = if f.transient {
                backoff(failures, interval)
            } else {
                backoff(failures.max(3), interval)
            };
            if let Force::After(w) = force {
                wait = wait.min(w);
            }
            Ok(Action::requeue(
                wait + jitter(&b.uid().unwrap_or_default(), wait),
            ))
        }
        Err(SyncError::Kube(e)) => Err(Error::Kube(e)),
        Err(SyncError::Standby) => Ok(Action::await_change()),
    }
}

/// A Warning event and a log line when the binding newly fails (or fails
/// for another reason): not on every retry.
async fn warn_once(
    ctx: &Context,
    b: &VaultSecretBinding,
    prev: Option<&VaultSecretBindingStatus>,
    reason: Reason,
    message: &str,
) {
    let was = prev.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    // Another problem of the same kind (a second template error, say) is
    // news too; the same one is not (and events repeat at most every
    // EVENT_REPEAT anyway).
    let new_problem = was
        .is_none_or(|c| c.status != "False" || c.reason != reason.as_str() || c.message != message);
    if new_problem {
        tracing::warn!(binding = %display_key(b), reason = %reason, message = %message, "sync failed");
        publish(
            ctx,
            b,
            EventType::Warning,
            "SyncFailed",
            format!("{reason}: {message}"),
        )
        .await;
    }
}

fn vault_name(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| h.split('.').next().unwrap_or(h).to_string())
        })
        .unwrap_or_else(|| url.to_string())
}

/// See `BindingState::last_event`.
const EVENT_REPEAT: Duration = Duration::from_secs(600);

async fn publish(
    ctx: &Context,
    b: &VaultSecretBinding,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (type_ == EventType::Warning, reason, &note).hash(&mut h);
        h.finish()
    };
    let now = Instant::now();
    let repeat = ctx.state(&key_of(b), |s| {
        let repeat = s
            .last_event
            .is_some_and(|(d, at)| d == digest && now.duration_since(at) < EVENT_REPEAT);
        if !repeat {
            s.last_event = Some((digest, now));
        }
        repeat
    });
    if repeat {
        return;
    }
    let regarding = b.object_ref(&());
    if let Err(e) = ctx
        .events
        .publish(regarding, type_, reason, "Sync", &note)
        .await
    {
        tracing::debug!(error = %e, "could not publish an event");
    }
}

async fn release_merged(b: &VaultSecretBinding, ctx: &Context) -> Result<(), Error> {
    let ns = b.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let target = b.spec.target_name(&b.name_any()).to_string();
    let manager = apply::merge_field_manager(b);
    apply::release_fields(&secrets, &target, &manager).await?;
    Ok(())
}

async fn remove_finalizer(
    api: &Api<VaultSecretBinding>,
    b: &VaultSecretBinding,
) -> Result<(), Error> {
    let finalizers: Vec<&String> = b.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": b.resource_version()}});
    match api
        .patch(
            &b.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the rendered data differs from what the Secret holds for our
/// keys (values, and keys we wrote before that are now gone).
fn data_differs(
    rendered: &std::collections::BTreeMap<String, crate::value::SecretValue>,
    current: Option<&std::collections::BTreeMap<String, Vec<u8>>>,
    previous_keys: &[String],
) -> bool {
    let Some(current) = current else { return true };
    rendered
        .iter()
        .any(|(k, v)| current.get(k).map(Vec::as_slice) != Some(v.as_bytes()))
        || previous_keys
            .iter()
            .any(|k| !rendered.contains_key(k) && current.contains_key(k))
}

async fn sync(
    b: &VaultSecretBinding,
    ctx: &Context,
    parent: &Result<Option<crate::cluster::view::Parent>, crate::cluster::view::ParentError>,
    interval: Duration,
    force: bool,
    force_sync_handled: Option<String>,
) -> Result<Synced, SyncError> {
    let user = |reason: Reason, message: String, transient: bool| {
        SyncError::User(Failure {
            reason,
            message,
            transient,
        })
    };
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let spec = &b.spec;

    let parent = parent
        .as_ref()
        .map_err(|e| user(e.reason(), e.to_string(), e.is_transient()))?;
    // VaultAccessPolicies govern what a namespace's own bindings may use;
    // a cluster binding is the platform team's, and is not theirs to limit.
    let judge = match (parent, ctx.policies.as_ref()) {
        (None, Some(view)) => Judge::View(view),
        _ => Judge::Nobody,
    };
    let identity_namespace = parent
        .as_ref()
        .and_then(|p| p.identity_namespace.as_deref())
        .unwrap_or(&ns);
    let prepared = prepare(&Inputs {
        spec,
        namespace: &ns,
        identity_namespace,
        access: &ctx.access,
        kube: Some(&ctx.client),
        service_accounts: ctx.service_accounts.as_ref(),
        judge,
    })
    .await?;
    let spec: &VaultSecretBindingSpec = &prepared.spec;
    let endpoint = &prepared.endpoint;
    let credential = &prepared.credential;
    let poller = ctx
        .pollers
        .get(endpoint.base.as_str(), &credential.key(), || {
            ctx.access.client(endpoint.clone(), credential.clone())
        });
    // Name and namespace only: the pollers keep a copy per secret used, and
    // a resourceVersion or uid in each would be dead weight.
    let objref = ObjectRef::new(&name).within(&ns);
    ctx.pollers.forget_elsewhere(&objref, &poller);
    if force {
        tracing::info!(binding = %display_key(b), "force-sync: checking the vault now");
    }
    let read = poller
        .read(Some(&objref), spec, interval, force)
        .await
        .map_err(|e| SyncError::User(e.into()))?;
    // Certificates convert off the runtime, once per version (costly PFX).
    let certificates =
        crate::certificate::prepare(endpoint.base.as_str(), &read.plan, &read.fetched).await;

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let target = spec.target_name(&name).to_string();
    // target.name changed: what was written under the old name goes, but
    // only once the new Secret is written (apply before retire).
    let retired = b
        .status
        .as_ref()
        .and_then(|s| s.target_name.as_deref())
        .filter(|old| *old != target);

    let prev = b.status.clone().unwrap_or_default();
    let previous_keys: Vec<String> = prev.secrets.iter().map(|s| s.key.clone()).collect();
    // Not yet applied: a generation is observed only once a sync of it
    // succeeded, so a change after a failed sync is still applied.
    let spec_changed = prev.observed_generation != b.meta().generation;
    let render_over = |current: Option<&std::collections::BTreeMap<String, Vec<u8>>>| {
        render(&RenderInput {
            plan: &read.plan,
            fetched: &read.fetched,
            current,
            previous: &prev.secrets,
            on_disabled: spec.on_disabled,
            on_expired: spec.on_expired,
            now: k8s_openapi::jiff::Timestamp::now().as_second(),
            hash_key: &ctx.settings.hash_key,
            template: spec.template(),
            certificates: &certificates,
        })
        .map_err(|e| user(e.reason(), e.to_string(), false))
    };

    // Steady state: the metadata watch says the Secret is still the version
    // this binding last wrote or found in sync, and the vault data renders
    // to the same hash — nothing to read, nothing to write.
    let untouched = !spec_changed
        && prev.target_name.as_deref() == Some(target.as_str())
        && prev.secret_resource_version.is_some()
        && ctx.secret_version(&ns, &target) == prev.secret_resource_version
        && !crate::render::uses_current(&read.fetched);
    let unchanged = if untouched {
        let rendered = render_over(None)?;
        (prev.data_hash.as_deref() == Some(rendered.hash.as_str())).then_some(rendered)
    } else {
        None
    };
    // `desired` is what to write; none when the Secret is as it should be.
    let (rendered, desired, first, data_changed, secret_version) = match unchanged {
        Some(rendered) => (
            rendered,
            None,
            false,
            false,
            prev.secret_resource_version.clone(),
        ),
        None => {
            let mut current = secrets.get_opt(&target).await?;
            apply::check_ownership(b, current.as_ref())
                .map_err(|e| user(e.reason(), e.to_string(), false))?;
            let data_of =
                |current: &Option<Secret>| -> Option<std::collections::BTreeMap<String, Vec<u8>>> {
                    current
                        .as_ref()
                        .and_then(|s| s.data.as_ref())
                        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
                };
            if spec.policy() == TargetPolicy::Merge
                && let Some(owned) = current.as_ref().filter(|c| apply::written_as_owner(b, c))
            {
                // Owner/Orphan -> Merge: give up what kvsync wrote as the
                // Secret's owner (its owner reference above all, or deleting
                // the binding would garbage-collect a Secret others now
                // share) — but only after Merge holds its keys: first the
                // merge manager takes the keys at the values the Secret has
                // (the same values, so they are shared with kvsync's own
                // manager, never a conflict with it), then kvsync's owner
                // fields are released. A Merge apply that is refused (a key
                // someone else owns, a webhook) leaves the Secret as it was.
                let rendered = render_over(data_of(&current).as_ref())?;
                // A key someone else owns is a conflict now, before
                // anything is written.
                let merge_manager = apply::field_manager(b);
                let (keys, managers) = apply::foreign_keys(
                    owned,
                    rendered.data.keys().cloned(),
                    &[apply::FIELD_MANAGER, &merge_manager],
                );
                if !keys.is_empty() {
                    return Err(write_error(apply::WriteError::MergeConflict {
                        name: target.clone(),
                        keys,
                        managers,
                    }));
                }
                let taken = apply::taken_over(b, &rendered, owned);
                if !ctx.may_write() {
                    return Err(SyncError::Standby);
                }
                apply::apply(&secrets, &taken, &merge_manager, false)
                    .await
                    .map_err(write_error)?;
                apply::release_fields(&secrets, &target, apply::FIELD_MANAGER).await?;
                current = secrets.get_opt(&target).await?;
            }
            let current_data = data_of(&current);
            let rendered = render_over(current_data.as_ref())?;
            let desired = apply::desired(b, &rendered);
            let write = !apply::in_sync(&desired, current.as_ref())
                || apply::has_stale_keys(&previous_keys, &desired, current.as_ref())
                || spec_changed;
            let first = prev.data_hash.is_none();
            // A different hash alone is not a change: the hash key (or its
            // scheme) may have changed. The data must also differ from what
            // the Secret holds.
            let data_changed = prev.data_hash.as_deref() != Some(rendered.hash.as_str())
                && data_differs(&rendered.data, current_data.as_ref(), &previous_keys);
            let version = current.and_then(|c| c.metadata.resource_version);
            (
                rendered,
                write.then_some(desired),
                first,
                data_changed,
                version,
            )
        }
    };
    let write = desired.is_some();
    let mut secret_version = secret_version;

    // Rollout: only for changes after the first sync. What is due is kept in
    // status until every target was patched — and recorded BEFORE the Secret
    // changes, so a crash between the two never loses the restart.
    let now = status::now();
    let mut pending = prev.rollout_pending_since.clone();
    if spec.rollout.is_empty() {
        pending = None;
    }
    if !ctx.may_write() {
        return Err(SyncError::Standby);
    }
    if !spec.rollout.is_empty() && data_changed && !first && pending.is_none() && write {
        pending = Some(now.clone());
        let mut intent = prev.clone();
        intent.rollout_pending_since = pending.clone();
        let bindings: Api<VaultSecretBinding> = Api::namespaced(ctx.client.clone(), &ns);
        ctx.write_status(&bindings, b, &intent).await?;
    }
    if desired.is_some() {
        // A policy may have changed while the vault was read: what it now
        // forbids is not written.
        prepared
            .judge_read(judge, &ns, &read.plan, ctx.access.env.tenant_id.as_deref())
            .await?;
    }
    if let Some(desired) = &desired {
        let force_apply = spec.policy() != TargetPolicy::Merge;
        let written = apply::apply(&secrets, desired, &apply::field_manager(b), force_apply)
            .await
            .map_err(write_error)?;
        secret_version = written.metadata.resource_version;
    }
    if let Some(old) = retired {
        // The new Secret is written (or was already in sync): the old one
        // may go now.
        apply::retire_target(&secrets, b, old).await?;
    }

    let mut requeue = None;
    let mut missing = Vec::new();
    let mut rollout_error = None;
    if !spec.rollout.is_empty() {
        let since = pending.as_ref().map(|t| t.0.as_second());
        match rollout::due(since, ctx.settings.rollout_window, now.0.as_second()) {
            RolloutDue::Now => {
                let at = k8s_openapi::jiff::Timestamp::now().to_string();
                let mut failed = None;
                for t in &spec.rollout {
                    match rollout::restart(&ctx.client, &ns, t, &at).await {
                        Ok(true) => {
                            tracing::info!(binding = %display_key(b), kind = ?t.kind, target = %t.name, "restarted rollout target");
                        }
                        Ok(false) => missing.push(format!("{:?}/{}", t.kind, t.name)),
                        Err(e) => failed = Some(format!("{:?}/{}: {e}", t.kind, t.name)),
                    }
                }
                let key = key_of(b);
                if failed.is_some() {
                    // Kept pending: a later reconcile tries again, backing
                    // off (5 s doubling) so a patch that can never succeed
                    // (RBAC, a webhook) is not hammered.
                    let n = ctx.state(&key, |s| {
                        s.rollout_failures = s.rollout_failures.saturating_add(1);
                        s.rollout_failures
                    });
                    requeue = Some(backoff(n, interval));
                    rollout_error = failed;
                } else {
                    ctx.state(&key, |s| s.rollout_failures = 0);
                    pending = None;
                }
                ctx.state(&key, |s| s.rollout_missing = Some(missing.clone()));
            }
            RolloutDue::After(d) => {
                requeue = Some(d);
                missing = missing_targets(ctx, b, spec_changed).await?;
            }
            RolloutDue::Nothing => {
                missing = missing_targets(ctx, b, spec_changed).await?;
            }
        }
    }

    let status = status::synced(
        b.status.as_ref(),
        b.meta().generation,
        &SyncReport {
            rendered: &rendered,
            data_changed,
            vault: &endpoint.name,
            target: &target,
            missing_rollout: &missing,
            optional_failures: &read.optional_failures,
            rollout_pending_since: pending,
            rollout_error: rollout_error.as_deref(),
            force_sync_handled,
            secret_resource_version: secret_version,
        },
        now,
    );
    Ok(Synced {
        ready: rendered.disabled_unkept.is_empty(),
        status,
        data_changed,
        first,
        written: write,
        repaired: write && !data_changed && !spec_changed,
        requeue,
    })
}

/// A refused write of the target Secret: the user's to fix when it has a
/// reason, otherwise the API's failure (retried).
fn write_error(e: apply::WriteError) -> SyncError {
    match e.reason() {
        Some(reason) => SyncError::User(Failure {
            reason,
            message: e.to_string(),
            transient: false,
        }),
        None => match e {
            apply::WriteError::Kube(k) => SyncError::Kube(k),
            other => SyncError::User(Failure {
                reason: Reason::SecretRejected,
                message: other.to_string(),
                transient: false,
            }),
        },
    }
}

/// Rollout targets that do not exist. Looked up when the spec changed or
/// was never looked at; otherwise the last answer stands (a restart looks
/// again), so a steady binding costs no API reads for it.
async fn missing_targets(
    ctx: &Context,
    b: &VaultSecretBinding,
    spec_changed: bool,
) -> Result<Vec<String>, kube::Error> {
    let key = key_of(b);
    if !spec_changed && let Some(known) = ctx.state(&key, |s| s.rollout_missing.clone()) {
        return Ok(known);
    }
    let ns = b.namespace().unwrap_or_default();
    let mut missing = Vec::new();
    for t in &b.spec.rollout {
        if !rollout::exists(&ctx.client, &ns, t).await? {
            missing.push(format!("{:?}/{}", t.kind, t.name));
        }
    }
    ctx.state(&key, |s| s.rollout_missing = Some(missing.clone()));
    Ok(missing)
}

/// Requeue after an infrastructure error.
pub fn error_policy(b: Arc<VaultSecretBinding>, error: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.failure_count(&key_of(&b), true);
    ctx.metrics
        .reconcile_error(crate::metrics::ReconcileErrorKind::Kube);
    tracing::warn!(binding = %display_key(&b), error = %error, "reconcile failed");
    let interval = b.spec.refresh_interval_or(ctx.settings.default_refresh);
    Action::requeue(backoff(n, interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_deterministic_and_within_a_tenth() {
        let i = Duration::from_secs(300);
        assert_eq!(jitter("uid-1", i), jitter("uid-1", i));
        assert_ne!(jitter("uid-1", i), jitter("uid-2", i));
        for n in 0..200 {
            assert!(jitter(&format!("u{n}"), i) < Duration::from_secs(30));
        }
    }

    fn with_force(annotation: Option<&str>, handled: Option<&str>) -> VaultSecretBinding {
        let mut b: VaultSecretBinding = serde_yaml::from_str(
            "apiVersion: kvsync.io/v1alpha1\nkind: VaultSecretBinding\nmetadata: {name: b, namespace: ns}\nspec: {vaultUrl: 'https://v.vault.azure.net', secrets: [{name: a}]}\n",
        )
        .unwrap();
        if let Some(a) = annotation {
            b.metadata.annotations =
                Some([(FORCE_SYNC_ANNOTATION.to_string(), a.to_string())].into());
        }
        b.status = Some(VaultSecretBindingStatus {
            force_sync_handled: handled.map(str::to_string),
            ..Default::default()
        });
        b
    }

    #[test]
    fn a_force_sync_value_is_honoured_once_as_recorded_in_status() {
        assert!(!force_pending(&with_force(None, None)));
        assert!(force_pending(&with_force(Some("1"), None)));
        assert!(
            !force_pending(&with_force(Some("1"), Some("1"))),
            "handled before a restart"
        );
        assert!(force_pending(&with_force(Some("2"), Some("1"))));
        let long = "x".repeat(10_000);
        let token = force_sync_token(&with_force(Some(&long), None)).unwrap();
        assert!(token.starts_with("sha256:") && token.len() < 64);
        assert!(!force_pending(&with_force(Some(&long), Some(&token))));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let i = Duration::from_secs(300);
        assert_eq!(backoff(1, i), Duration::from_secs(5));
        assert_eq!(backoff(2, i), Duration::from_secs(10));
        assert_eq!(backoff(20, i), Duration::from_secs(300));
        assert_eq!(
            backoff(20, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
