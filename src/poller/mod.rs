//! One poller per (vault, identity): the index of what is in the vault and
//! who needs it, and the only place that sends requests to a vault.
//!
//! ```text
//!   Poller::read ─┐                      ┌─► index.apply_listing / apply_get
//!   Poller::cycle ┼─► index: what to ──► │   (what changed → whom to wake)
//!                 │   fetch (std Mutex,  │
//!                 │   no I/O under it)   └── one spawned request per FetchKey,
//!                 └──── await (bounded) ◄──  shared by everyone who asks
//! ```
//!
//! `index` is pure: results in, changes and bindings to wake out (unit-tested
//! there, without HTTP); it keeps who needs what in `interests` (one state
//! per binding, with name → bindings maps) and the trimmed listing helpers
//! in `listing`. This module is the thin async shell around it. The lock is a `std::sync::Mutex`
//! held only to decide and to apply, never across a request: a slow or
//! black-holed vault holds up only the reads that need what it has not
//! answered, and those wait at most the read timeout (then `VaultTimeout`,
//! while the request goes on in the background and fills the cache).
//!
//! Bindings read through [`Poller::read`], which serves from the cache and
//! fetches only what is stale, in plan order with a few requests out at a
//! time, and stops once what it read passes the Secret limit
//! (`SecretTooLarge`: the binding then keeps no names, and what only it read
//! is pruned, so a failing binding holds no memory and costs cycles
//! nothing). A background cycle per poller, every shortest
//! `refreshInterval` among its bindings, checks for new versions with the
//! cheaper plan — LIST pages (then GET only what changed, or what the listing
//! does not show) or a GET per needed name — plus one versions listing per
//! pinned name (a pinned version's value is GET once; the listing shows it
//! disabled, expiring or gone), and wakes exactly the bindings
//! whose names (or, for a `select`, matching listing items) changed. A value
//! read once serves every binding of the same (vault, identity, name,
//! version). Failures belong to the name or the listing that failed: a
//! binding fails only for a required pick of its own or, with a `select`, for
//! the listing; an optional pick that cannot be read is `Unavailable` (its key
//! keeps its value). A name the listing does not show is read by GET (only
//! Azure's `SecretNotFound` makes it missing). A refused LIST is tried again
//! every 10th cycle or after max(interval, 10 min); meanwhile picks are read
//! by GET.
//!
//! Fairness: reads (what a reconcile or `kvsync check` waits on) and cycles
//! have their own permits, so background work never queues ahead of a
//! sync; one namespace holds at most `NAMESPACE_SHARE` (4) of the read permits;
//! a cycle sends its requests round-robin by namespace (`fair`). A read
//! that gives up waiting registers what it planned, so the requests it
//! started still fill the cache and wake it.

mod error;
mod fair;
mod index;
mod interests;
mod listing;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use futures::future::{BoxFuture, Shared};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

pub use error::{ReadError, VaultError};
pub use index::{BindingRef, CyclePlan, choose_plan};

use crate::azure::keyvault::{KeyVaultClient, SecretBundle};
use crate::crd::VaultSecretBindingSpec;
use crate::fetched::Fetched;
use crate::plan::{Plan, needs_listing, plan};
use crate::render::MAX_SECRET_BYTES;
use fair::Shares;
use index::{FetchKey, Got, Index, ListingNeed, ReadId, Unanswered};

/// Requests in flight at once per poller for reads (what a reconcile or
/// `kvsync check` waits on) and for background cycles: a cycle never holds
/// a permit a read needs. The per-vault token bucket still applies to both.
const READ_REQUESTS: usize = 6;
const CYCLE_REQUESTS: usize = 2;
/// Of the read permits, at most this many serve one namespace at once.
const NAMESPACE_SHARE: usize = 4;
/// Requests one read keeps in flight: it reads in plan order and stops at
/// the Secret limit, so it fetches at most the limit plus this many values.
const READ_WINDOW: usize = 4;
/// A planned key is fetched at most this many times in one read (a pinned
/// version's listing, then its GET).
const FETCH_ROUNDS: u8 = 2;

/// Who a request is for: its permits, and whose share it uses.
#[derive(Debug, Clone)]
enum Lane {
    /// A read, of a binding in this namespace (`None`: unregistered).
    Read(Option<String>),
    /// A background cycle.
    Cycle,
}

/// How long a reconcile waits for the vault by default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The result of a read: the plan and what the vault holds for each key.
#[derive(Debug)]
pub struct ReadResult {
    /// The binding's plan.
    pub plan: Plan,
    /// Key → fetched. An optional pick that could not be read for a reason
    /// other than not found or disabled is [`Fetched::Unavailable`].
    pub fetched: BTreeMap<String, Fetched>,
    /// Those optional picks again, as (secret name, why), for the condition.
    pub optional_failures: Vec<(String, String)>,
}

/// How far the vault's `Date` may be from our clock and still be believed.
const DATE_SKEW: i64 = 120;

/// The vault's clock at the answer (its `Date` header), for the one-second
/// rule; `asked_at` (our clock before the request) when there is none or it
/// is absurd (a date far in the future would hide changes, one far in the
/// past would make every cycle read everything).
fn served_at(bundle: &SecretBundle, asked_at: i64) -> i64 {
    bundle
        .served_at
        .filter(|d| d.saturating_sub(asked_at).abs() <= DATE_SKEW)
        .unwrap_or(asked_at)
}

type InFlight = Shared<BoxFuture<'static, ()>>;

struct State {
    index: Index,
    inflight: HashMap<FetchKey, InFlight>,
    /// The size of each listed name's value as last read, with the
    /// listing's `updated` it was read at: a binding that failed
    /// `SecretTooLarge` (and so keeps no values) fails again from these
    /// alone while the listing shows none of its names changed — its
    /// retries cost no GETs. Sizes, never values.
    sizes: HashMap<Arc<str>, (Option<i64>, usize)>,
    /// Cycles running: they send the wakes collected meanwhile at their end,
    /// so a binding is woken once per cycle.
    cycling: u32,
}

/// Sizes kept at most for this many names per poller (then forgotten).
const MAX_SIZES: usize = 100_000;

impl State {
    /// The bytes of `k`'s answered value, its size kept for the name at the
    /// listing's `updated` (when the name came from a listing).
    fn answered(
        &mut self,
        k: &crate::plan::PlannedKey,
        updated: &HashMap<Arc<str>, Option<i64>>,
    ) -> usize {
        let bytes = self.index.answered_bytes(k);
        let name = k.secret.to_ascii_lowercase();
        if let Some((name, at)) = updated.get_key_value(name.as_str()) {
            if self.sizes.len() >= MAX_SIZES {
                self.sizes.clear();
            }
            self.sizes.insert(name.clone(), (*at, bytes));
        }
        bytes
    }

    /// `SecretTooLarge` when the sizes kept for the plan's listed names,
    /// still at the listing's `updated`, already pass the Secret limit.
    fn known_too_large(
        &self,
        plan: &Plan,
        updated: &HashMap<Arc<str>, Option<i64>>,
    ) -> Option<ReadError> {
        let mut bytes = 0usize;
        let mut counted = 0usize;
        for k in &plan.keys {
            let name = k.secret.to_ascii_lowercase();
            let (Some(at), Some((sized_at, size))) =
                (updated.get(name.as_str()), self.sizes.get(name.as_str()))
            else {
                continue;
            };
            if at == sized_at && at.is_some() {
                bytes = bytes.saturating_add(*size);
                counted += 1;
                if bytes > MAX_SECRET_BYTES {
                    return Some(ReadError::TooLarge {
                        bytes_at_least: bytes,
                        keys_read: counted,
                        keys_planned: plan.keys.len(),
                    });
                }
            }
        }
        None
    }
}

struct Inner {
    client: KeyVaultClient,
    state: Mutex<State>,
    wake: Option<UnboundedSender<BindingRef>>,
    read_permits: tokio::sync::Semaphore,
    cycle_permits: tokio::sync::Semaphore,
    shares: Shares,
}

/// The poller of one (vault, identity).
pub struct Poller {
    inner: Arc<Inner>,
    read_timeout: Duration,
}

fn unix_now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves a consistent index (no I/O, no await
        // inside): go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, wakes: Vec<BindingRef>) {
        if let Some(wake) = &self.wake {
            for who in wakes {
                let _ = wake.unbounded_send(who);
            }
        }
    }

    /// Wakes collected so far, unless a cycle will send them.
    fn flush(&self, st: &mut State) -> Vec<BindingRef> {
        if st.cycling == 0 {
            st.index.take_wakes()
        } else {
            Vec::new()
        }
    }

    /// The request for `key`: the one in flight, or a new one. It runs as its
    /// own task, so a reader that stops waiting does not cancel it.
    fn fetch(self: &Arc<Self>, st: &mut State, key: FetchKey, lane: &Lane) -> InFlight {
        if let Some(f) = st.inflight.get(&key) {
            return f.clone();
        }
        let task = tokio::spawn(Arc::clone(self).request(key.clone(), lane.clone()));
        let shared = async move {
            let _ = task.await;
        }
        .boxed()
        .shared();
        st.inflight.insert(key, shared.clone());
        shared
    }

    async fn request(self: Arc<Self>, key: FetchKey, lane: Lane) {
        let share = match &lane {
            Lane::Read(Some(ns)) => Some(self.shares.acquire(ns).await),
            _ => None,
        };
        let permit = match lane {
            Lane::Read(_) => self.read_permits.acquire().await,
            Lane::Cycle => self.cycle_permits.acquire().await,
        };
        // Taken before the request: a version written while it runs must
        // count as "possibly newer than what we read".
        let asked_at = unix_now();
        let vault = &self.client.endpoint().name;
        let wakes = match &key {
            FetchKey::List => {
                let result = self.client.list_secrets().await.map_err(|e| {
                    tracing::warn!(vault = %vault, reason = %e.reason(), error = %e, "listing the vault failed");
                    Arc::new(VaultError::from(e))
                });
                drop((permit, share));
                let mut st = self.lock();
                st.inflight.remove(&key);
                st.index.apply_listing(result, Instant::now());
                self.flush(&mut st)
            }
            FetchKey::Versions(name) => {
                let result = self.client.list_versions(name).await.map_err(|e| {
                    if !matches!(e, crate::azure::keyvault::KeyVaultError::NotFound { .. }) {
                        tracing::warn!(vault = %vault, secret = %name, reason = %e.reason(), error = %e, "listing a secret's versions failed");
                    }
                    Arc::new(VaultError::from(e))
                });
                drop((permit, share));
                let mut st = self.lock();
                st.inflight.remove(&key);
                st.index.apply_versions(name, result, Instant::now());
                self.flush(&mut st)
            }
            FetchKey::Latest(name) | FetchKey::Pinned(name, _) => {
                let version = match &key {
                    FetchKey::Pinned(_, v) => Some(v.as_str()),
                    _ => None,
                };
                let result = self.client.get_secret(name, version).await;
                drop((permit, share));
                let read_at = result
                    .as_ref()
                    .map(|b| served_at(b, asked_at))
                    .unwrap_or(asked_at);
                let result = result
                    .map(|b| Got {
                        version: b.version().to_ascii_lowercase(),
                        updated: b.attributes.updated,
                        expires: b.attributes.exp,
                        value: b.value,
                    })
                    .map_err(|e| Arc::new(VaultError::from(e)));
                if let Err(e) = &result
                    && !e.is_not_found()
                    && !e.is_disabled()
                {
                    tracing::warn!(vault = %vault, secret = %name, reason = %e.reason(), error = %e, "reading a secret failed");
                }
                let mut st = self.lock();
                st.inflight.remove(&key);
                st.index.apply_get(&key, result, read_at, Instant::now());
                self.flush(&mut st)
            }
        };
        self.send(wakes);
    }

    async fn read(
        self: &Arc<Self>,
        id: ReadId,
        who: Option<&BindingRef>,
        spec: &VaultSecretBindingSpec,
        interval: Duration,
        force: bool,
        waited: Duration,
    ) -> Result<ReadResult, ReadError> {
        let max_age = if force {
            Duration::ZERO
        } else {
            interval + interval / 10
        };
        let lane = Lane::Read(who.map(|w| w.namespace.clone().unwrap_or_default()));
        let items = if needs_listing(spec) {
            let pending = {
                let mut st = self.lock();
                match st.index.listing_for_read(Instant::now(), max_age, force) {
                    ListingNeed::Fresh(items) => Ok(items),
                    ListingNeed::Refused(f) => return Err(ReadError::Vault(f)),
                    // The listing serves every namespace's `select`: it
                    // waits in no one namespace's share.
                    ListingNeed::Fetch => {
                        Err(self.fetch(&mut st, FetchKey::List, &Lane::Read(None)))
                    }
                }
            };
            match pending {
                Ok(items) => items,
                Err(listing) => {
                    listing.await;
                    self.lock()
                        .index
                        .listing_after_fetch()
                        .map_err(ReadError::Vault)?
                }
            }
        } else {
            Arc::default()
        };
        let plan = plan(spec, &items)?;
        // The listing's `updated` of each name planned from it (the names a
        // `select` brought in): what the sizes kept are valid for.
        let updated: HashMap<Arc<str>, Option<i64>> = if items.is_empty() {
            HashMap::new()
        } else {
            let by_name: HashMap<String, Option<i64>> = items
                .iter()
                .map(|i| (i.name().to_ascii_lowercase(), i.attributes.updated))
                .collect();
            plan.keys
                .iter()
                .filter(|k| k.version.is_none())
                .filter_map(|k| {
                    let name = k.secret.to_ascii_lowercase();
                    by_name.get(&name).map(|u| (Arc::from(name.as_str()), *u))
                })
                .collect()
        };
        drop(items);
        self.lock().index.read_planned(id, &plan);

        let known = (!force)
            .then(|| self.lock().known_too_large(&plan, &updated))
            .flatten();
        let fetched = match known {
            Some(too_large) => Err(too_large),
            None => {
                self.fetch_within_limit(id, &plan, &lane, max_age, force, &updated)
                    .await
            }
        };
        if let Err(too_large) = fetched {
            let wakes = {
                let mut st = self.lock();
                st.index.shed_read(id);
                self.flush(&mut st)
            };
            self.send(wakes);
            return Err(too_large);
        }

        let answer = {
            let mut st = self.lock();
            st.index.settle_read(id, &plan);
            st.index.answer(who, &plan)
        };
        match answer {
            Ok((fetched, optional_failures)) => Ok(ReadResult {
                plan,
                fetched,
                optional_failures,
            }),
            Err(Unanswered::Failed(f)) => Err(ReadError::Vault(f)),
            // Not expected (every request awaited has ended), but never
            // "missing": that would drop keys.
            Err(Unanswered::NotRead) => Err(ReadError::Vault(Arc::new(VaultError::Timeout {
                vault: self.client.endpoint().name.clone(),
                waited,
            }))),
        }
    }

    /// Fetches what `plan` needs, in plan order with at most
    /// [`READ_WINDOW`] requests out, summing the bytes answered; stops (and
    /// fails `SecretTooLarge`) once they pass the Secret limit, after the
    /// requests already out have ended.
    async fn fetch_within_limit(
        self: &Arc<Self>,
        id: ReadId,
        plan: &Plan,
        lane: &Lane,
        max_age: Duration,
        force: bool,
        updated: &HashMap<Arc<str>, Option<i64>>,
    ) -> Result<(), ReadError> {
        let started = Instant::now();
        let keys = &plan.keys;
        let mut bytes = 0usize;
        let mut counted = 0usize;
        let mut next = 0usize;
        let mut out = FuturesUnordered::new();
        loop {
            let wakes = {
                let mut st = self.lock();
                while bytes <= MAX_SECRET_BYTES && out.len() < READ_WINDOW && next < keys.len() {
                    let (i, k) = (next, &keys[next]);
                    next += 1;
                    st.index.protect(id, k);
                    match st.index.fetch_for_key(k, Instant::now(), max_age, force) {
                        Some(key) => {
                            out.push(self.fetch(&mut st, key, lane).map(move |_| (i, 1)).boxed())
                        }
                        None => {
                            bytes = bytes.saturating_add(st.answered(k, updated));
                            counted += 1;
                        }
                    }
                }
                self.flush(&mut st)
            };
            self.send(wakes);
            let Some((i, round)) = out.next().await else {
                break;
            };
            let mut st = self.lock();
            // Settled by this read (a listing of a pinned name may leave
            // its value to a GET, or a refused one leave it all to a GET).
            let since = started.elapsed();
            let again = (round < FETCH_ROUNDS && bytes <= MAX_SECRET_BYTES)
                .then(|| {
                    st.index
                        .fetch_for_key(&keys[i], Instant::now(), since, false)
                })
                .flatten();
            match again {
                Some(key) => out.push(
                    self.fetch(&mut st, key, lane)
                        .map(move |_| (i, round + 1))
                        .boxed(),
                ),
                None => {
                    bytes = bytes.saturating_add(st.answered(&keys[i], updated));
                    counted += 1;
                }
            }
        }
        if bytes > MAX_SECRET_BYTES {
            return Err(ReadError::TooLarge {
                bytes_at_least: bytes,
                keys_read: counted,
                keys_planned: keys.len(),
            });
        }
        Ok(())
    }

    /// Sends `keys` in their order, at most [`CYCLE_REQUESTS`] at once, and
    /// waits for them all.
    async fn cycle_fetch(self: &Arc<Self>, keys: Vec<FetchKey>) {
        let mut keys = keys.into_iter();
        let mut out = FuturesUnordered::new();
        loop {
            {
                let mut st = self.lock();
                while out.len() < CYCLE_REQUESTS {
                    let Some(key) = keys.next() else { break };
                    out.push(self.fetch(&mut st, key, &Lane::Cycle));
                }
            }
            if out.next().await.is_none() {
                break;
            }
        }
    }
}

/// Ends a read in the index even when the read is dropped (timed out).
struct ReadGuard<'a> {
    inner: &'a Arc<Inner>,
    id: ReadId,
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        let wakes = {
            let mut st = self.inner.lock();
            st.index.close_read(self.id);
            self.inner.flush(&mut st)
        };
        self.inner.send(wakes);
    }
}

/// Ends a cycle even when it is dropped: the wakes it held back are sent.
struct CycleGuard<'a>(&'a Arc<Inner>);

impl Drop for CycleGuard<'_> {
    fn drop(&mut self) {
        let wakes = {
            let mut st = self.0.lock();
            st.cycling = st.cycling.saturating_sub(1);
            st.index.prune();
            self.0.flush(&mut st)
        };
        self.0.send(wakes);
    }
}

impl Poller {
    /// A poller for `client`; `wake` receives bindings whose secrets changed.
    pub fn new(client: KeyVaultClient, wake: Option<UnboundedSender<BindingRef>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                state: Mutex::new(State {
                    index: Index::default(),
                    inflight: HashMap::new(),
                    sizes: HashMap::new(),
                    cycling: 0,
                }),
                wake,
                read_permits: tokio::sync::Semaphore::new(READ_REQUESTS),
                cycle_permits: tokio::sync::Semaphore::new(CYCLE_REQUESTS),
                shares: Shares::new(NAMESPACE_SHARE),
            }),
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }

    /// How long [`Poller::read`] waits for the vault before it answers
    /// `VaultTimeout` (default [`DEFAULT_READ_TIMEOUT`]).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Bindings interested in this vault.
    pub fn interested(&self) -> usize {
        self.inner.lock().index.len()
    }

    /// The binding no longer needs this vault: everything kept for it goes.
    pub fn forget(&self, who: &BindingRef) {
        self.inner.lock().index.forget(who);
    }

    /// Forgets every binding for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&BindingRef) -> bool) {
        self.inner.lock().index.retain(keep);
    }

    /// The shortest refresh interval among the interested bindings.
    pub fn interval(&self) -> Option<Duration> {
        self.inner.lock().index.interval()
    }

    /// Reads what `spec` needs, from the cache where it is fresher than
    /// `interval` (+10 %), fetching the rest; `force` fetches everything
    /// anew (force-sync). `who` registers the binding so that cycles keep its
    /// secrets fresh and wake it on change. Fails only for what this binding
    /// needs: a required pick, or the listing of its `select`. Waits at most
    /// the read timeout, then fails with `VaultTimeout` (transient).
    pub async fn read(
        &self,
        who: Option<&BindingRef>,
        spec: &VaultSecretBindingSpec,
        interval: Duration,
        force: bool,
    ) -> Result<ReadResult, ReadError> {
        let id = {
            let mut st = self.inner.lock();
            if let Some(who) = who {
                st.index.register(who, spec, interval);
            }
            st.index.open_read(who)
        };
        let _guard = ReadGuard {
            inner: &self.inner,
            id,
        };
        let waited = self.read_timeout;
        let read = self.inner.read(id, who, spec, interval, force, waited);
        match tokio::time::timeout(waited, read).await {
            Ok(result) => result,
            Err(_) => Err(ReadError::Vault(Arc::new(VaultError::Timeout {
                vault: self.inner.client.endpoint().name.clone(),
                waited,
            }))),
        }
    }

    /// Bytes of secret values this poller keeps (each value once, however
    /// many bindings use it).
    pub fn cached_bytes(&self) -> usize {
        self.inner.lock().index.cached_bytes()
    }

    /// One background check of every needed secret. Returns how long to wait
    /// before the next one (sooner while something needed is failing), or
    /// `None` when no binding needs this vault.
    pub async fn cycle(&self) -> Option<Duration> {
        let inner = &self.inner;
        let work = {
            let mut st = inner.lock();
            let work = st.index.cycle_work(Instant::now())?;
            st.cycling += 1;
            work
        };
        let _guard = CycleGuard(inner);
        let started = Instant::now();
        if work.list {
            let listing = {
                let mut st = inner.lock();
                inner.fetch(&mut st, FetchKey::List, &Lane::Cycle)
            };
            listing.await;
        }
        let keys = {
            let st = inner.lock();
            // What the listing shows changed first (a rotation waits behind
            // no one's pin checks: a pinned value cannot change), then the
            // rest of the cycle's work, each fairly ordered by namespace.
            let mut keys = if work.list {
                st.index.fair_order(st.index.after_listing())
            } else {
                Vec::new()
            };
            let first: std::collections::HashSet<FetchKey> = keys.iter().cloned().collect();
            keys.extend(work.gets.into_iter().filter(|k| !first.contains(k)));
            keys
        };
        inner.cycle_fetch(keys).await;
        // Pinned versions the listings showed enabled but whose value is not
        // kept, or whose listing was refused meanwhile.
        let keys = {
            let st = inner.lock();
            st.index.fair_order(st.index.after_versions(started))
        };
        inner.cycle_fetch(keys).await;
        let failing = inner.lock().index.failing();
        let interval = work.interval;
        Some(if failing {
            // Retry sooner than a full interval, but not in a hot loop.
            (interval / 4).clamp(Duration::from_secs(5), interval)
        } else {
            interval
        })
    }
}

/// (vault, identity key) → its poller.
type PollerMap = HashMap<(String, String), Arc<Poller>>;

/// The pollers of the operator, one per (vault, identity). Clones share them.
#[derive(Clone)]
pub struct Pollers {
    map: Arc<Mutex<PollerMap>>,
    wake: Option<UnboundedSender<BindingRef>>,
    read_timeout: Duration,
}

impl Pollers {
    /// An empty set; `wake` receives bindings to reconcile.
    pub fn new(wake: Option<UnboundedSender<BindingRef>>) -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
            wake,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }

    /// Bindings registered, over all pollers.
    pub fn interested(&self) -> usize {
        self.lock().values().map(|p| p.interested()).sum()
    }

    /// Where wake-ups go (tests of their routing send on it).
    pub fn wake_sender(&self) -> Option<UnboundedSender<BindingRef>> {
        self.wake.clone()
    }

    /// How long a read waits for a vault (see [`Poller::with_read_timeout`]).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    fn lock(&self) -> MutexGuard<'_, PollerMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut map = self.lock();
        if let Some(p) = map.get(&key) {
            return p.clone();
        }
        let poller =
            Arc::new(Poller::new(make(), self.wake.clone()).with_read_timeout(self.read_timeout));
        map.insert(key, poller.clone());
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(run_cycles(Arc::downgrade(&poller)));
        }
        poller
    }

    /// Removes `who` from every poller but `keep` (after its vault or
    /// identity changed), and pollers nobody needs.
    pub fn forget_elsewhere(&self, who: &BindingRef, keep: &Arc<Poller>) {
        let mut map = self.lock();
        for p in map.values() {
            if !Arc::ptr_eq(p, keep) {
                p.forget(who);
            }
        }
        map.retain(|_, p| Arc::ptr_eq(p, keep) || needed(p));
    }

    /// Removes `who` from every poller, and pollers nobody needs.
    pub fn forget(&self, who: &BindingRef) {
        let mut map = self.lock();
        for p in map.values() {
            p.forget(who);
        }
        map.retain(|_, p| needed(p));
    }

    /// Forgets every binding for which `keep` is false, in every poller, and
    /// pollers nobody needs. The controller calls it against its store, so
    /// bindings deleted while the watch was down are forgotten too.
    pub fn retain(&self, keep: impl Fn(&BindingRef) -> bool) {
        let mut map = self.lock();
        for p in map.values() {
            p.retain(&keep);
        }
        map.retain(|_, p| needed(p));
    }
}

/// Whether a poller must stay in the map: a binding needs it, or a reconcile
/// holds it right now (it was just made and its binding has not registered
/// yet; dropping it would split one vault into two pollers).
fn needed(p: &Arc<Poller>) -> bool {
    p.interested() > 0 || Arc::strong_count(p) > 1
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
