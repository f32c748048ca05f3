//! One poller per (vault, identity): the index of what is in the vault and
//! who needs it, and the only place that sends requests to a vault.
//!
//! Bindings read through [`Poller::read`], which serves from the cache and
//! fetches only what is missing. A background cycle per poller, every
//! shortest `refreshInterval` among its bindings, checks for new versions with
//! the cheaper plan — LIST pages (then GET only changed secrets) or a GET per
//! needed name — and wakes exactly the bindings whose secrets changed. A value
//! read once serves every binding of the same (vault, identity, name, version).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;

use crate::azure::keyvault::{KeyVaultClient, KeyVaultError, PAGE_SIZE, SecretItem};
use crate::crd::{VaultSecretBinding, VaultSecretBindingSpec};
use crate::plan::{Plan, PlanError, needs_listing, plan};
use crate::reason::Reason;
use crate::render::Fetched;
use crate::value::SecretValue;

/// GETs in flight at once per poller (the per-vault budget still applies).
const CONCURRENT_GETS: usize = 8;

/// Who a poller wakes.
pub type BindingRef = ObjectRef<VaultSecretBinding>;

/// What one binding needs from a vault.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    /// Names followed at their latest version (lower case).
    pub latest: BTreeSet<String>,
    /// Pinned (name, version) pairs (lower case).
    pub pinned: BTreeSet<(String, String)>,
    /// Whether the binding selects from the vault's listing.
    pub listing: bool,
    /// The binding's refresh interval.
    pub interval: Duration,
}

/// How a cycle checks for changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CyclePlan {
    /// List the vault (`pages` requests), then GET only what changed.
    List,
    /// GET each needed name.
    Get,
    /// Nothing is needed.
    Idle,
}

/// Picks the cheaper way to check `needed` names: LIST pages or one GET each.
/// `items` is the vault's size when known; `can_list` is false once the vault
/// refused to list for this identity.
pub fn choose_plan(
    needed: usize,
    items: Option<usize>,
    can_list: bool,
    listing_required: bool,
) -> CyclePlan {
    if listing_required {
        return CyclePlan::List;
    }
    if needed == 0 {
        return CyclePlan::Idle;
    }
    if !can_list {
        return CyclePlan::Get;
    }
    let pages = items.map(|n| n.div_ceil(PAGE_SIZE).max(1)).unwrap_or(1);
    if pages < needed {
        CyclePlan::List
    } else {
        CyclePlan::Get
    }
}

/// What is known of a secret's latest version.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    Value {
        version: String,
        updated: Option<i64>,
    },
    Disabled {
        updated: Option<i64>,
    },
    Missing,
}

#[derive(Clone)]
struct CachedValue {
    value: SecretValue,
    updated: Option<i64>,
    expires: Option<i64>,
}

#[derive(Default)]
struct Cache {
    listing: Option<(Instant, Vec<SecretItem>)>,
    can_list: bool,
    latest: HashMap<String, (Instant, Known)>,
    pinned: HashMap<(String, String), Known>,
    values: HashMap<(String, String), CachedValue>,
    /// When each latest name was last read (unix seconds).
    fetched_at: HashMap<String, i64>,
    /// The last background cycle's failure, until one succeeds.
    failure: Option<Arc<KeyVaultError>>,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The vault or the identity failed.
    #[error(transparent)]
    Vault(Arc<KeyVaultError>),
    /// The plan is invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl ReadError {
    /// The condition reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Vault(e) => e.reason(),
            Self::Plan(p) => p.reason(),
        }
    }

    /// Whether trying again later may succeed without a change by a person.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Vault(e) => e.is_transient(),
            Self::Plan(_) => false,
        }
    }
}

impl From<KeyVaultError> for ReadError {
    fn from(e: KeyVaultError) -> Self {
        Self::Vault(Arc::new(e))
    }
}

/// The result of a read: the plan and what the vault holds for each key.
#[derive(Debug)]
pub struct ReadResult {
    /// The binding's plan.
    pub plan: Plan,
    /// Key → fetched.
    pub fetched: BTreeMap<String, Fetched>,
    /// Optional keys that failed for a reason other than missing/disabled.
    pub optional_failures: Vec<(String, String)>,
}

/// The poller of one (vault, identity).
pub struct Poller {
    client: KeyVaultClient,
    cache: tokio::sync::Mutex<Cache>,
    interests: Mutex<HashMap<BindingRef, Interest>>,
    wake: Option<UnboundedSender<BindingRef>>,
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn interest_of(spec: &VaultSecretBindingSpec, plan: Option<&Plan>, interval: Duration) -> Interest {
    let mut i = Interest {
        listing: needs_listing(spec),
        interval,
        ..Default::default()
    };
    for p in &spec.secrets {
        match p.version.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => {
                i.pinned.insert((lower(&p.name), lower(v)));
            }
            None => {
                i.latest.insert(lower(&p.name));
            }
        }
    }
    if let Some(plan) = plan {
        for k in plan.keys.iter().filter(|k| k.version.is_none()) {
            i.latest.insert(lower(&k.secret));
        }
    }
    i
}

impl Poller {
    /// A poller for `client`; `wake` receives bindings whose secrets changed.
    pub fn new(client: KeyVaultClient, wake: Option<UnboundedSender<BindingRef>>) -> Self {
        Self {
            client,
            cache: tokio::sync::Mutex::new(Cache {
                can_list: true,
                ..Default::default()
            }),
            interests: Mutex::new(HashMap::new()),
            wake,
        }
    }

    /// Bindings interested in this vault.
    pub fn interested(&self) -> usize {
        self.interests.lock().expect("interests").len()
    }

    /// The binding no longer needs this vault.
    pub fn forget(&self, who: &BindingRef) {
        self.interests.lock().expect("interests").remove(who);
    }

    fn register(&self, who: Option<&BindingRef>, interest: Interest) {
        if let Some(who) = who {
            self.interests
                .lock()
                .expect("interests")
                .insert(who.clone(), interest);
        }
    }

    /// The shortest refresh interval among the interested bindings.
    pub fn interval(&self) -> Option<Duration> {
        self.interests
            .lock()
            .expect("interests")
            .values()
            .map(|i| i.interval)
            .min()
    }

    /// Reads what `spec` needs, from the cache where it is fresher than
    /// `interval` (+10 %), fetching the rest; `force` fetches everything
    /// anew (force-sync). `who` registers the binding so that cycles keep its
    /// secrets fresh and wake it on change.
    pub async fn read(
        &self,
        who: Option<&BindingRef>,
        spec: &VaultSecretBindingSpec,
        interval: Duration,
        force: bool,
    ) -> Result<ReadResult, ReadError> {
        self.register(who, interest_of(spec, None, interval));
        let max_age = if force {
            Duration::ZERO
        } else {
            interval + interval / 10
        };
        let mut cache = self.cache.lock().await;
        if force {
            cache.failure = None;
        } else if let Some(failure) = &cache.failure {
            // The last cycle failed: report it rather than serve stale data
            // as if it were fresh. The Secret keeps its last data.
            return Err(ReadError::Vault(failure.clone()));
        }

        let now = Instant::now();
        let listing_required = needs_listing(spec);
        let listing_fresh = |c: &Cache| {
            c.listing
                .as_ref()
                .is_some_and(|(at, _)| now.duration_since(*at) <= max_age)
        };
        if listing_required && !listing_fresh(&cache) {
            self.list_now(&mut cache).await?;
        }
        let empty = Vec::new();
        let items = cache.listing.as_ref().map(|(_, i)| i).unwrap_or(&empty);
        let plan = plan(spec, if listing_required { items } else { &empty })?;
        self.register(who, interest_of(spec, Some(&plan), interval));

        // Latest names whose knowledge is stale or whose value is not cached.
        let stale: Vec<String> = plan
            .keys
            .iter()
            .filter(|k| k.version.is_none())
            .map(|k| lower(&k.secret))
            .filter(|n| force || !self.fresh(&cache, n, now, max_age))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let optional: BTreeSet<String> = plan
            .keys
            .iter()
            .filter(|k| k.optional)
            .map(|k| lower(&k.secret))
            .collect();
        let mut optional_failures = Vec::new();
        if !stale.is_empty() {
            let items_known = cache.listing.as_ref().map(|(_, i)| i.len());
            let use_list = !listing_fresh(&cache)
                && choose_plan(stale.len(), items_known, cache.can_list, false) == CyclePlan::List;
            if use_list {
                match self.list_now(&mut cache).await {
                    Ok(()) => {}
                    Err(ReadError::Vault(e)) if e.reason() == Reason::ListForbidden => {}
                    Err(e) => return Err(e),
                }
            }
            let to_get: Vec<String> = if listing_fresh(&cache) {
                stale
                    .iter()
                    .filter(|n| self.settle_from_listing(&mut cache, n))
                    .cloned()
                    .collect()
            } else {
                stale.clone()
            };
            for (name, result) in self.fetch_latest(&mut cache, &to_get).await {
                if let Err(e) = result {
                    if optional.contains(&name) && !e.is_transient() {
                        optional_failures.push((name, e.to_string()));
                    } else {
                        return Err(e.into());
                    }
                }
            }
        }

        let mut fetched = BTreeMap::new();
        for k in &plan.keys {
            let name = lower(&k.secret);
            let known = match &k.version {
                Some(v) => {
                    let key = (name.clone(), lower(v));
                    if !matches!(cache.pinned.get(&key), Some(Known::Value { .. })) {
                        match self.get_pinned(&mut cache, &name, v).await {
                            Ok(()) => {}
                            Err(e) if k.optional && !e.is_transient() => {
                                optional_failures.push((name.clone(), e.to_string()));
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    cache.pinned.get(&key).cloned()
                }
                None => cache.latest.get(&name).map(|(_, k)| k.clone()),
            };
            let f = match known {
                Some(Known::Value { version, .. }) => {
                    match cache.values.get(&(name.clone(), version.clone())) {
                        Some(v) => Fetched::Value {
                            value: v.value.clone(),
                            version,
                            updated: v.updated,
                            expires: v.expires,
                        },
                        None => Fetched::Missing,
                    }
                }
                Some(Known::Disabled { .. }) => Fetched::Disabled,
                Some(Known::Missing) | None => Fetched::Missing,
            };
            fetched.insert(k.key.clone(), f);
        }
        Ok(ReadResult {
            plan,
            fetched,
            optional_failures,
        })
    }

    fn fresh(&self, cache: &Cache, name: &str, now: Instant, max_age: Duration) -> bool {
        match cache.latest.get(name) {
            Some((at, known)) if now.duration_since(*at) <= max_age => match known {
                Known::Value { version, .. } => cache
                    .values
                    .contains_key(&(name.to_string(), version.clone())),
                _ => true,
            },
            _ => false,
        }
    }

    async fn list_now(&self, cache: &mut Cache) -> Result<(), ReadError> {
        match self.client.list_secrets().await {
            Ok(items) => {
                cache.can_list = true;
                cache.listing = Some((Instant::now(), items));
                Ok(())
            }
            Err(e) => {
                if e.reason() == Reason::ListForbidden {
                    cache.can_list = false;
                }
                Err(e.into())
            }
        }
    }

    /// Updates one latest name from the listing; true when it changed and
    /// must be read with a GET.
    fn settle_from_listing(&self, cache: &mut Cache, name: &str) -> bool {
        let item = cache
            .listing
            .as_ref()
            .and_then(|(_, items)| items.iter().find(|i| i.name().eq_ignore_ascii_case(name)))
            .cloned();
        let now = Instant::now();
        match item {
            None => {
                cache.latest.insert(name.to_string(), (now, Known::Missing));
                false
            }
            Some(i) if !i.attributes.is_enabled() => {
                cache.latest.insert(
                    name.to_string(),
                    (
                        now,
                        Known::Disabled {
                            updated: i.attributes.updated,
                        },
                    ),
                );
                false
            }
            Some(i) => {
                // Key Vault's `updated` has one-second resolution: a version
                // written in the second of (or before) our last read may hide
                // behind an equal timestamp, so read again to be sure.
                let read_at = cache.fetched_at.get(name).copied().unwrap_or(i64::MIN);
                let ambiguous = i.attributes.updated.is_none_or(|u| u + 1 >= read_at);
                let unchanged = match cache.latest.get(name) {
                    Some((_, Known::Value { version, updated })) => {
                        !ambiguous
                            && *updated == i.attributes.updated
                            && cache
                                .values
                                .get(&(name.to_string(), version.clone()))
                                .is_some_and(|v| v.expires == i.attributes.exp)
                    }
                    _ => false,
                };
                if unchanged && let Some(entry) = cache.latest.get_mut(name) {
                    entry.0 = now;
                }
                !unchanged
            }
        }
    }

    /// GETs the latest version of `names`, a few at a time, and records
    /// what came back.
    async fn fetch_latest(
        &self,
        cache: &mut Cache,
        names: &[String],
    ) -> Vec<(String, Result<(), KeyVaultError>)> {
        use futures::StreamExt;
        // Taken before the requests: a version written while they run must
        // count as "possibly newer than what we read".
        let read_at = k8s_openapi::jiff::Timestamp::now().as_second();
        let client = &self.client;
        let results: Vec<(
            String,
            Result<crate::azure::keyvault::SecretBundle, KeyVaultError>,
        )> = futures::stream::iter(names.iter().cloned())
            .map(|name| async move {
                let r = client.get_secret(&name, None).await;
                (name, r)
            })
            .buffer_unordered(CONCURRENT_GETS)
            .collect()
            .await;
        let now = Instant::now();
        let mut out = Vec::with_capacity(results.len());
        for (name, result) in results {
            let known = match result {
                Ok(b) => {
                    let version = lower(b.version());
                    cache.values.insert(
                        (name.clone(), version.clone()),
                        CachedValue {
                            value: b.value,
                            updated: b.attributes.updated,
                            expires: b.attributes.exp,
                        },
                    );
                    Known::Value {
                        version,
                        updated: b.attributes.updated,
                    }
                }
                Err(KeyVaultError::NotFound { .. }) => Known::Missing,
                Err(KeyVaultError::SecretDisabled { .. }) => Known::Disabled { updated: None },
                Err(e) => {
                    out.push((name, Err(e)));
                    continue;
                }
            };
            cache.fetched_at.insert(name.clone(), read_at);
            cache.latest.insert(name.clone(), (now, known));
            out.push((name, Ok(())));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Like [`fetch_latest`](Self::fetch_latest), failing on the first error.
    async fn fetch_latest_all(
        &self,
        cache: &mut Cache,
        names: &[String],
    ) -> Result<(), KeyVaultError> {
        for (_, r) in self.fetch_latest(cache, names).await {
            r?;
        }
        Ok(())
    }

    async fn get_pinned(
        &self,
        cache: &mut Cache,
        name: &str,
        version: &str,
    ) -> Result<(), KeyVaultError> {
        let key = (name.to_string(), lower(version));
        let known = match self.client.get_secret(name, Some(version)).await {
            Ok(b) => {
                cache.values.insert(
                    key.clone(),
                    CachedValue {
                        value: b.value,
                        updated: b.attributes.updated,
                        expires: b.attributes.exp,
                    },
                );
                Known::Value {
                    version: key.1.clone(),
                    updated: b.attributes.updated,
                }
            }
            Err(KeyVaultError::NotFound { .. }) => Known::Missing,
            Err(KeyVaultError::SecretDisabled { .. }) => Known::Disabled { updated: None },
            Err(e) => return Err(e),
        };
        cache.pinned.insert(key, known);
        Ok(())
    }

    /// One background check of every needed secret. Returns how long to wait
    /// before the next one.
    pub async fn cycle(&self) -> Option<Duration> {
        let (latest, listing_required, interval) = {
            let interests = self.interests.lock().expect("interests");
            if interests.is_empty() {
                return None;
            }
            let latest: BTreeSet<String> = interests
                .values()
                .flat_map(|i| i.latest.iter().cloned())
                .collect();
            let listing = interests.values().any(|i| i.listing);
            let interval = interests
                .values()
                .map(|i| i.interval)
                .min()
                .unwrap_or(Duration::from_secs(300));
            (latest, listing, interval)
        };
        let mut cache = self.cache.lock().await;
        let before: HashMap<String, Known> = cache
            .latest
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        let names_before: Option<BTreeSet<String>> = cache
            .listing
            .as_ref()
            .map(|(_, items)| items.iter().map(|i| lower(i.name())).collect());
        let items_known = cache.listing.as_ref().map(|(_, i)| i.len());
        let plan = choose_plan(latest.len(), items_known, cache.can_list, listing_required);

        let result: Result<(), KeyVaultError> = async {
            match plan {
                CyclePlan::Idle => Ok(()),
                CyclePlan::List => {
                    match self.client.list_secrets().await {
                        Ok(items) => {
                            cache.can_list = true;
                            cache.listing = Some((Instant::now(), items));
                        }
                        Err(e) if e.reason() == Reason::ListForbidden && !listing_required => {
                            cache.can_list = false;
                            let names: Vec<String> = latest.iter().cloned().collect();
                            return self.fetch_latest_all(&mut cache, &names).await;
                        }
                        Err(e) => return Err(e),
                    }
                    let changed: Vec<String> = latest
                        .iter()
                        .filter(|n| self.settle_from_listing(&mut cache, n))
                        .cloned()
                        .collect();
                    self.fetch_latest_all(&mut cache, &changed).await
                }
                CyclePlan::Get => {
                    let names: Vec<String> = latest.iter().cloned().collect();
                    self.fetch_latest_all(&mut cache, &names).await
                }
            }
        }
        .await;

        let mut to_wake: std::collections::HashSet<BindingRef> = Default::default();
        let interests = self.interests.lock().expect("interests").clone();
        let next = match result {
            Ok(()) => {
                let recovered = cache.failure.take().is_some();
                let changed: BTreeSet<&String> = latest
                    .iter()
                    .filter(|n| before.get(*n) != cache.latest.get(*n).map(|(_, k)| k))
                    .collect();
                let names_after: Option<BTreeSet<String>> = cache
                    .listing
                    .as_ref()
                    .map(|(_, items)| items.iter().map(|i| lower(i.name())).collect());
                let listing_changed = names_before.is_some() && names_before != names_after;
                for (who, i) in &interests {
                    if recovered
                        || (i.listing && listing_changed)
                        || i.latest.iter().any(|n| changed.contains(n))
                    {
                        to_wake.insert(who.clone());
                    }
                }
                self.prune(&mut cache, &interests);
                interval
            }
            Err(e) => {
                tracing::warn!(vault = %self.client.endpoint().name, reason = %e.reason(), error = %e, "vault check failed");
                let new_reason = cache
                    .failure
                    .as_ref()
                    .is_none_or(|f| f.reason() != e.reason());
                cache.failure = Some(Arc::new(e));
                if new_reason {
                    to_wake.extend(interests.keys().cloned());
                }
                // Retry sooner than a full interval, but not in a hot loop.
                (interval / 4).clamp(Duration::from_secs(5), interval)
            }
        };
        drop(cache);
        if let Some(wake) = &self.wake {
            for who in to_wake {
                let _ = wake.unbounded_send(who);
            }
        }
        Some(next)
    }

    fn prune(&self, cache: &mut Cache, interests: &HashMap<BindingRef, Interest>) {
        let latest: BTreeSet<&String> = interests.values().flat_map(|i| i.latest.iter()).collect();
        let pinned: BTreeSet<&(String, String)> =
            interests.values().flat_map(|i| i.pinned.iter()).collect();
        cache.latest.retain(|n, _| latest.contains(n));
        cache.fetched_at.retain(|n, _| latest.contains(n));
        cache.pinned.retain(|k, _| pinned.contains(k));
        let current: BTreeSet<(String, String)> = cache
            .latest
            .iter()
            .filter_map(|(n, (_, k))| match k {
                Known::Value { version, .. } => Some((n.clone(), version.clone())),
                _ => None,
            })
            .chain(cache.pinned.keys().cloned())
            .collect();
        cache.values.retain(|k, _| current.contains(k));
    }
}

/// The pollers of the operator, one per (vault, identity).
pub struct Pollers {
    map: Mutex<HashMap<(String, String), Arc<Poller>>>,
    wake: Option<UnboundedSender<BindingRef>>,
}

impl Pollers {
    /// An empty set; `wake` receives bindings to reconcile.
    pub fn new(wake: Option<UnboundedSender<BindingRef>>) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            wake,
        }
    }

    /// The poller for (vault, identity key), made by `make` on first use; its
    /// background cycle starts with it and stops when no binding needs it.
    pub fn get(
        &self,
        vault: &str,
        identity: &str,
        make: impl FnOnce() -> KeyVaultClient,
    ) -> Arc<Poller> {
        let key = (vault.to_string(), identity.to_string());
        let mut map = self.map.lock().expect("pollers");
        if let Some(p) = map.get(&key) {
            return p.clone();
        }
        let poller = Arc::new(Poller::new(make(), self.wake.clone()));
        map.insert(key, poller.clone());
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(run_cycles(Arc::downgrade(&poller)));
        }
        poller
    }

    /// Removes `who` from every poller but `keep` (after its vault or
    /// identity changed), and pollers nobody needs.
    pub fn forget_elsewhere(&self, who: &BindingRef, keep: &Arc<Poller>) {
        let mut map = self.map.lock().expect("pollers");
        for p in map.values() {
            if !Arc::ptr_eq(p, keep) {
                p.forget(who);
            }
        }
        map.retain(|_, p| Arc::ptr_eq(p, keep) || p.interested() > 0);
    }

    /// Removes `who` from every poller, and pollers nobody needs.
    pub fn forget(&self, who: &BindingRef) {
        let mut map = self.map.lock().expect("pollers");
        for p in map.values() {
            p.forget(who);
        }
        map.retain(|_, p| p.interested() > 0);
    }
}

async fn run_cycles(poller: Weak<Poller>) {
    // The first cycle waits 30 s (or the interval, if shorter): the bindings' first reads fetch
    // what they need themselves.
    let mut wait = Duration::from_secs(30);
    loop {
        let interval = match poller.upgrade() {
            Some(p) => p.interval(),
            None => return,
        };
        let wait_now = interval.map(|i| wait.min(i)).unwrap_or(wait);
        tokio::time::sleep(wait_now).await;
        let Some(p) = poller.upgrade() else { return };
        wait = match p.cycle().await {
            Some(next) => next,
            None => Duration::from_secs(30),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_is_chosen_when_pages_are_fewer_than_gets() {
        assert_eq!(choose_plan(5, Some(40), true, false), CyclePlan::List); // 2 pages < 5 GETs
        assert_eq!(choose_plan(2, Some(1000), true, false), CyclePlan::Get); // 40 pages > 2 GETs
        assert_eq!(choose_plan(2, Some(50), true, false), CyclePlan::Get); // 2 pages == 2 GETs: GET is as cheap
        assert_eq!(choose_plan(3, None, true, false), CyclePlan::List); // unknown size: one page is likely
    }

    #[test]
    fn listing_is_required_by_select_and_skipped_when_forbidden() {
        assert_eq!(choose_plan(0, Some(1000), true, true), CyclePlan::List);
        assert_eq!(choose_plan(50, Some(10), false, false), CyclePlan::Get);
        assert_eq!(choose_plan(0, None, true, false), CyclePlan::Idle);
    }
}
