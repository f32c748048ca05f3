//! The poller's index: what is known of one vault (as one identity sees it)
//! and, through `interests`, which binding needs what. Pure: the results of requests go in (a
//! listing, a GET's answer, a failure), and out come what changed and whom to
//! wake; the async shell in `mod.rs` only does the I/O it is told to.
//!
//! Failures are kept where they happened: on the name (or pinned version)
//! whose GET failed, or on the listing. A binding sees only the failures of
//! what it asked for, so one binding's pick can never fail another binding.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use super::error::VaultError;
use super::fair::round_robin;
use super::interests::{Interests, Orphans};
pub use super::listing::{CyclePlan, choose_plan};
use super::listing::{ambiguous, cmp_name, find, select_diff, trim};
use crate::azure::keyvault::SecretItem;
use crate::crd::{VaultSecretBinding, VaultSecretBindingSpec};
use crate::fetched::Fetched;
use crate::plan::{Plan, PlannedKey};
use crate::reason::Reason;
use crate::value::SecretValue;

/// Who a poller wakes.
pub type BindingRef = ObjectRef<VaultSecretBinding>;

/// A failed request, shared by everyone who waited for it.
pub type Failure = Arc<VaultError>;

/// How long a failure stands as the answer before a read asks again (a
/// failing vault must not get one request per reconcile of every binding).
pub const FAILURE_TTL: Duration = Duration::from_secs(5);
/// A refused LIST is tried again after this many cycles…
pub const LIST_RETRY_CYCLES: u32 = 10;
/// …or after this long (or the shortest refresh interval, if longer), so that
/// a List permission granted later is noticed.
pub const LIST_RETRY_AFTER: Duration = Duration::from_secs(600);

/// One request the shell may send. Concurrent askers of the same key share
/// one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FetchKey {
    /// `GET /secrets`, every page.
    List,
    /// The latest version of a name (lower case).
    Latest(String),
    /// A pinned (name, version), lower case.
    Pinned(String, String),
    /// `GET /secrets/{name}/versions`, every page: the attributes of every
    /// version of a name (lower case) with pinned versions.
    Versions(String),
}

impl FetchKey {
    /// The key that reads `k` by GET (what a read protects while it runs).
    pub fn of(k: &PlannedKey) -> Self {
        let name = lower(&k.secret);
        match &k.version {
            Some(v) => FetchKey::Pinned(name, lower(v)),
            None => FetchKey::Latest(name),
        }
    }
}

/// One read in progress, as the index knows it.
#[derive(Debug)]
struct OpenRead {
    who: Option<BindingRef>,
    /// The entries it relies on: kept through a prune until it ends.
    protected: Vec<FetchKey>,
    /// Its plan, to register its selected names if it ends without
    /// answering (timed out): their values, still coming, are then kept.
    plan: Option<Plan>,
    /// Its selected names are registered (or must not be: it was shed).
    settled: bool,
}

/// A read of the index, from [`Index::open_read`] to [`Index::close_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadId(u64);

/// What a successful GET brought.
pub struct Got {
    /// The value.
    pub value: SecretValue,
    /// Its version (lower case).
    pub version: String,
    /// `attributes.updated`.
    pub updated: Option<i64>,
    /// `attributes.exp`.
    pub expires: Option<i64>,
}

/// What is known of a secret (latest) or of a pinned version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Known {
    /// Never read.
    #[default]
    Unknown,
    Value {
        version: String,
        updated: Option<i64>,
        expires: Option<i64>,
    },
    Disabled,
    /// Azure answered `SecretNotFound` (or the listing no longer selects it).
    Missing,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    known: Known,
    /// How old `known` is: when the GET or the listing that confirmed it ran.
    checked: Option<Instant>,
    /// When the last GET was served, by the vault's clock (unix seconds).
    read_at: Option<i64>,
    /// The last GET failed (since then nothing succeeded), and when.
    failure: Option<(Instant, Failure)>,
}

impl Entry {
    /// What bindings can see: a change of it wakes them.
    fn observed(&self) -> (Known, Option<Reason>) {
        (
            self.known.clone(),
            self.failure.as_ref().map(|(_, f)| f.reason()),
        )
    }

    /// Whether a read may answer from this entry without asking the vault.
    fn fresh(&self, now: Instant, max_age: Duration, has_value: impl Fn(&str) -> bool) -> bool {
        if let Some((at, _)) = &self.failure {
            return now.saturating_duration_since(*at) < FAILURE_TTL;
        }
        let recent = self
            .checked
            .is_some_and(|c| now.saturating_duration_since(c) <= max_age);
        match &self.known {
            Known::Unknown => false,
            Known::Value { version, .. } => recent && has_value(version),
            Known::Disabled | Known::Missing => recent,
        }
    }
}

#[derive(Debug)]
struct Listing {
    /// Trimmed to what change detection and `select` need; sorted by name,
    /// case-insensitively.
    items: Arc<Vec<SecretItem>>,
    at: Instant,
    /// Whether tags were kept (only when some binding selects).
    tags: bool,
}

#[derive(Debug)]
struct ListFailure {
    failure: Failure,
    at: Instant,
    /// Cycles that did not list because of it.
    cycles: u32,
}

impl ListFailure {
    fn forbidden(&self) -> bool {
        self.failure.reason() == Reason::ListForbidden
    }
}

/// What an applied result changed.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Latest names whose value, version, attributes or failure changed.
    pub names: BTreeSet<String>,
    /// Pinned versions whose attributes or failure changed.
    pub pinned: BTreeSet<(String, String)>,
    /// Listed items added, removed, or changed in what a `select` matches
    /// (name, enabled, tags): old and new forms.
    pub items: Vec<SecretItem>,
    /// The listing went from failing to working, or the other way.
    pub listing: bool,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.pinned.is_empty() && self.items.is_empty() && !self.listing
    }
}

/// What a read may use of the listing.
pub enum ListingNeed {
    /// A listing recent enough.
    Fresh(Arc<Vec<SecretItem>>),
    /// The vault must be listed first.
    Fetch,
    /// The last LIST failed, and is not retried yet.
    Refused(Failure),
}

/// The work of one cycle.
#[derive(Debug, PartialEq, Eq)]
pub struct CycleWork {
    /// List first; then GET what [`Index::after_listing`] names.
    pub list: bool,
    /// GETs to send regardless of the listing.
    pub gets: Vec<FetchKey>,
    /// The shortest refresh interval.
    pub interval: Duration,
}

/// Why [`Index::answer`] cannot answer.
#[derive(Debug)]
pub enum Unanswered {
    /// A required pick (or pinned version) failed.
    Failed(Failure),
    /// A required pick has not been read yet (its request is still out).
    NotRead,
}

/// The index of one (vault, identity).
#[derive(Debug, Default)]
pub struct Index {
    interests: Interests,
    latest: HashMap<String, Entry>,
    pinned: BTreeMap<(String, String), Entry>,
    /// (name, version) → value; only versions some entry points at.
    values: HashMap<(String, String), SecretValue>,
    listing: Option<Listing>,
    list_failure: Option<ListFailure>,
    /// Bindings to wake, collected until the shell sends them.
    wakes: HashSet<BindingRef>,
    /// A read with a `select` waits for the next listing: keep its tags
    /// even when no registered binding selects (e.g. `kvsync check`).
    tags_wanted: bool,
    /// Reads in progress.
    reads: HashMap<ReadId, OpenRead>,
    next_read: u64,
    /// Entries reads in progress rely on (how many reads).
    protected: HashMap<FetchKey, u32>,
    /// Names whose versions listing was refused (ListForbidden) → cycles
    /// since: their pins are checked by GET meanwhile.
    versions_refused: HashMap<String, u32>,
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

impl Index {
    /// Records what `spec` needs (see [`Interests::register`]).
    pub fn register(
        &mut self,
        who: &BindingRef,
        spec: &VaultSecretBindingSpec,
        interval: Duration,
    ) {
        self.interests.register(who, spec, interval);
    }

    /// Records the names `plan` took from the listing.
    #[cfg(test)]
    pub fn set_selected(&mut self, who: &BindingRef, plan: &Plan) {
        self.interests.set_selected(who, plan);
    }

    /// A read of `who` begins: changes it will see are not woken for.
    #[cfg(test)]
    pub fn begin_read(&mut self, who: &BindingRef) {
        self.interests.begin_read(who);
    }

    /// A read of `who` ended (answered, failed or timed out): if something it
    /// uses changed after it looked, it is woken.
    pub fn end_read(&mut self, who: &BindingRef) {
        if self.interests.end_read(who) {
            self.wakes.insert(who.clone());
        }
    }

    /// Forgets `who` entirely, and what nobody needs any more.
    pub fn forget(&mut self, who: &BindingRef) {
        if let Some(orphans) = self.interests.remove(who) {
            self.wakes.remove(who);
            self.drop_orphans(orphans);
        }
    }

    /// Forgets every binding for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(&BindingRef) -> bool) {
        let (gone, orphans) = self.interests.retain(&keep);
        if !gone.is_empty() {
            self.wakes.retain(|who| keep(who));
            self.drop_orphans(orphans);
        }
    }

    /// Drops the entries and values of what nobody needs any more (without
    /// the full scan of [`Index::prune`]: forgetting one binding costs what
    /// it used).
    fn drop_orphans(&mut self, orphans: Orphans) {
        for name in orphans.latest {
            if self.protected.contains_key(&FetchKey::Latest(name.clone())) {
                continue;
            }
            if let Some(Entry {
                known: Known::Value { version, .. },
                ..
            }) = self.latest.remove(&name)
            {
                self.drop_value_if_unused(&name, &version);
            }
        }
        for (name, version) in orphans.pinned {
            if self
                .protected
                .contains_key(&FetchKey::Pinned(name.clone(), version.clone()))
            {
                continue;
            }
            if self
                .pinned
                .remove(&(name.clone(), version.clone()))
                .is_some()
            {
                self.drop_value_if_unused(&name, &version);
            }
        }
        if self.is_empty() && self.reads.is_empty() {
            self.latest.clear();
            self.pinned.clear();
            self.values.clear();
            self.listing = None;
            self.list_failure = None;
        }
    }

    /// Bindings registered.
    pub fn len(&self) -> usize {
        self.interests.len()
    }

    /// Whether no binding is registered.
    pub fn is_empty(&self) -> bool {
        self.interests.is_empty()
    }

    /// The shortest refresh interval among the bindings.
    pub fn interval(&self) -> Option<Duration> {
        self.interests.interval()
    }

    fn needed_latest(&self) -> BTreeSet<String> {
        self.interests.needed_latest()
    }

    fn needed_pinned(&self) -> BTreeSet<(String, String)> {
        self.interests.needed_pinned()
    }

    fn picked(&self, name: &str) -> bool {
        self.interests.picked(name)
    }

    fn any_select(&self) -> bool {
        self.interests.any_select()
    }

    fn list_retry_due(&self, now: Instant) -> bool {
        let Some(f) = self.list_failure.as_ref().filter(|f| f.forbidden()) else {
            return false;
        };
        let after = self.interval().unwrap_or_default().max(LIST_RETRY_AFTER);
        f.cycles >= LIST_RETRY_CYCLES || now.saturating_duration_since(f.at) >= after
    }

    /// What a read with a `select` may use of the listing.
    pub fn listing_for_read(
        &mut self,
        now: Instant,
        max_age: Duration,
        force: bool,
    ) -> ListingNeed {
        if let Some(f) = &self.list_failure {
            let young = now.saturating_duration_since(f.at) < FAILURE_TTL;
            let waiting = f.forbidden() && !self.list_retry_due(now);
            if !force && (young || waiting) {
                return ListingNeed::Refused(f.failure.clone());
            }
        } else if let Some(l) = &self.listing
            && !force
            && l.tags
            && now.saturating_duration_since(l.at) <= max_age
        {
            return ListingNeed::Fresh(l.items.clone());
        }
        self.tags_wanted = true;
        ListingNeed::Fetch
    }

    /// The listing after a LIST ended: its items, or why it failed.
    pub fn listing_after_fetch(&self) -> Result<Arc<Vec<SecretItem>>, Failure> {
        if let Some(f) = &self.list_failure {
            return Err(f.failure.clone());
        }
        Ok(self
            .listing
            .as_ref()
            .map(|l| l.items.clone())
            .unwrap_or_default())
    }

    /// What a read of `plan` must fetch: latest names and pinned versions not
    /// known recently enough (all of them with `force`). See
    /// [`Index::fetch_for_key`].
    #[cfg(test)]
    pub fn fetches_for_read(
        &mut self,
        plan: &Plan,
        now: Instant,
        max_age: Duration,
        force: bool,
    ) -> Vec<FetchKey> {
        let keys: BTreeSet<FetchKey> = plan
            .keys
            .iter()
            .filter_map(|k| self.fetch_for_key(k, now, max_age, force))
            .collect();
        keys.into_iter().collect()
    }

    /// What a read must fetch for one planned key, if anything. A recent
    /// listing settles a latest name it shows unchanged; a name it does not
    /// show is read by GET (it may be younger than the listing). A pinned
    /// version whose value is cached is re-checked with its name's versions
    /// listing (its value cannot have changed); one never read is GET.
    pub fn fetch_for_key(
        &mut self,
        k: &PlannedKey,
        now: Instant,
        max_age: Duration,
        force: bool,
    ) -> Option<FetchKey> {
        let name = lower(&k.secret);
        let values = &self.values;
        match &k.version {
            None => {
                let fresh = self.latest.get(&name).is_some_and(|e| {
                    e.fresh(now, max_age, |v| {
                        values.contains_key(&(name.clone(), v.into()))
                    })
                });
                if !force && fresh {
                    return None;
                }
                let listing = self
                    .listing
                    .as_ref()
                    .filter(|l| {
                        self.list_failure.is_none()
                            && now.saturating_duration_since(l.at) <= max_age
                    })
                    .map(|l| (l.items.clone(), l.at));
                if !force && let Some((items, at)) = listing {
                    let mut changes = Changes::default();
                    let need_get = self.settle(&name, &items, at, false, &mut changes);
                    self.wake(&changes);
                    if !need_get {
                        return None;
                    }
                }
                Some(FetchKey::Latest(name))
            }
            Some(v) => {
                let key = (name, lower(v));
                let fresh = self.pinned.get(&key).is_some_and(|e| {
                    e.fresh(now, max_age, |v| {
                        values.contains_key(&(key.0.clone(), v.into()))
                    })
                });
                if !force && fresh {
                    return None;
                }
                if self.pin_by_listing(&key.0, &key.1) {
                    return Some(FetchKey::Versions(key.0));
                }
                Some(FetchKey::Pinned(key.0, key.1))
            }
        }
    }

    /// Bytes `k` adds to its Secret as known now, counted as the render
    /// counts them (key and value): 0 for what has no value (missing,
    /// disabled, failed, not read).
    pub fn answered_bytes(&self, k: &PlannedKey) -> usize {
        let name = lower(&k.secret);
        let entry = match &k.version {
            Some(v) => self.pinned.get(&(name.clone(), lower(v))),
            None => self.latest.get(&name),
        };
        match entry {
            Some(Entry {
                known: Known::Value { version, .. },
                failure: None,
                ..
            }) => self
                .values
                .get(&(name, version.clone()))
                .map_or(0, |v| k.key.len().saturating_add(v.len())),
            _ => 0,
        }
    }

    /// Bytes of the values cached (each once, however many bindings use it).
    pub fn cached_bytes(&self) -> usize {
        self.values.values().map(|v| v.len()).sum()
    }

    /// A read begins (of `who`, or unregistered as `kvsync check` reads).
    pub fn open_read(&mut self, who: Option<&BindingRef>) -> ReadId {
        self.next_read += 1;
        let id = ReadId(self.next_read);
        if let Some(who) = who {
            self.interests.begin_read(who);
        }
        self.reads.insert(
            id,
            OpenRead {
                who: who.cloned(),
                protected: Vec::new(),
                plan: None,
                settled: false,
            },
        );
        id
    }

    /// The read has its plan.
    pub fn read_planned(&mut self, id: ReadId, plan: &Plan) {
        if let Some(r) = self.reads.get_mut(&id) {
            r.plan = Some(plan.clone());
        }
    }

    /// The read relies on what is known of `k` until it ends: a prune (or a
    /// forgotten binding) does not drop it meanwhile.
    pub fn protect(&mut self, id: ReadId, k: &PlannedKey) {
        if let Some(r) = self.reads.get_mut(&id) {
            let key = FetchKey::of(k);
            *self.protected.entry(key.clone()).or_default() += 1;
            r.protected.push(key);
        }
    }

    fn unprotect(&mut self, keys: Vec<FetchKey>) {
        for key in keys {
            if let Some(n) = self.protected.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.protected.remove(&key);
                }
            }
        }
    }

    /// The read is about to answer: the names its `select` planned become
    /// its interest (under the same lock as the answer, so a change applied
    /// after it wakes the binding).
    pub fn settle_read(&mut self, id: ReadId, plan: &Plan) {
        if let Some(r) = self.reads.get_mut(&id) {
            r.settled = true;
            if let Some(who) = r.who.clone() {
                self.interests.set_selected(&who, plan);
            }
        }
    }

    /// The read would pass the Secret limit: what only it read is dropped,
    /// and its binding keeps no names (see [`Interests::shed`]), so that a
    /// failing binding costs no memory and no cycle requests.
    pub fn shed_read(&mut self, id: ReadId) {
        let Some(r) = self.reads.get_mut(&id) else {
            return;
        };
        r.settled = true;
        let protected = std::mem::take(&mut r.protected);
        let who = r.who.clone();
        self.unprotect(protected);
        if let Some(who) = who {
            let orphans = self.interests.shed(&who);
            self.drop_orphans(orphans);
        }
        self.prune();
    }

    /// A read ended (answered, failed, or given up). One that gave up before
    /// answering registers its selected names now: the requests it started
    /// go on and fill the cache, and a change wakes it.
    pub fn close_read(&mut self, id: ReadId) {
        let Some(r) = self.reads.remove(&id) else {
            return;
        };
        self.unprotect(r.protected);
        if let Some(who) = &r.who {
            if !r.settled
                && let Some(plan) = &r.plan
            {
                self.interests.set_selected(who, plan);
            }
            self.end_read(who);
        }
    }

    /// `keys` in the order a cycle sends them: round-robin over the
    /// namespaces that need them, one key per namespace per turn, so that a
    /// namespace with many names (or pins) cannot hold back the others'. A
    /// key several namespaces need is sent once, in the turn of the first.
    pub fn fair_order(&self, keys: Vec<FetchKey>) -> Vec<FetchKey> {
        let owners: Vec<BTreeSet<&str>> =
            keys.iter().map(|k| self.interests.namespaces(k)).collect();
        let order = round_robin(&owners);
        let mut slots: Vec<Option<FetchKey>> = keys.into_iter().map(Some).collect();
        order.into_iter().filter_map(|i| slots[i].take()).collect()
    }

    /// Updates a latest name from a listing taken at `at`; true when a GET
    /// must tell. `absent_is_missing`: the name is only there because a
    /// `select` chose it, so leaving the listing means leaving the select.
    fn settle(
        &mut self,
        name: &str,
        items: &[SecretItem],
        at: Instant,
        absent_is_missing: bool,
        changes: &mut Changes,
    ) -> bool {
        let values = &self.values;
        let entry = self.latest.entry(name.to_string()).or_default();
        let before = entry.observed();
        let need_get = match find(items, name) {
            None if absent_is_missing => {
                entry.known = Known::Missing;
                entry.failure = None;
                entry.checked = Some(at);
                false
            }
            None => {
                // Only Azure's SecretNotFound makes a name missing: the
                // listing may be older than the secret. A miss confirmed by
                // a GET before the listing was taken stands.
                let confirmed = entry.failure.is_none()
                    && entry.known == Known::Missing
                    && entry.checked.is_some_and(|c| c <= at);
                if confirmed {
                    entry.checked = Some(at);
                }
                !confirmed
            }
            Some(item) if !item.attributes.is_enabled() => {
                entry.known = Known::Disabled;
                entry.failure = None;
                entry.checked = Some(at);
                false
            }
            Some(item) => {
                let unchanged = entry.failure.is_none()
                    && match &entry.known {
                        Known::Value {
                            version,
                            updated,
                            expires,
                        } => {
                            *updated == item.attributes.updated
                                && *expires == item.attributes.exp
                                && !ambiguous(item.attributes.updated, entry.read_at)
                                && values.contains_key(&(name.to_string(), version.clone()))
                        }
                        _ => false,
                    };
                if unchanged {
                    entry.checked = Some(at);
                }
                !unchanged
            }
        };
        if entry.observed() != before {
            changes.names.insert(name.to_string());
        }
        need_get
    }

    /// The start of a cycle: what to request, or `None` when nobody needs
    /// anything. A refused LIST is not retried until [`LIST_RETRY_CYCLES`]
    /// cycles or [`LIST_RETRY_AFTER`] have passed; meanwhile names are read by
    /// GET and `select`s report the refusal.
    pub fn cycle_work(&mut self, now: Instant) -> Option<CycleWork> {
        let interval = self.interval()?;
        let needed = self.needed_latest();
        let retry = self.list_retry_due(now);
        let forbidden = self.list_failure.as_ref().is_some_and(|f| f.forbidden());
        let can_list = !forbidden || retry;
        let listing_required = self.any_select() && can_list;
        let items = self.listing.as_ref().map(|l| l.items.len());
        let plan = choose_plan(needed.len(), items, can_list, listing_required);
        if plan != CyclePlan::List
            && let Some(f) = self.list_failure.as_mut().filter(|f| f.forbidden())
        {
            f.cycles += 1;
        }
        // A listing shows latest versions only: pinned versions are
        // re-checked (enabled, expiry, gone) by their names' versions
        // listings (see `pins`).
        let mut gets = self.pin_checks();
        if plan == CyclePlan::Get {
            gets.extend(needed.into_iter().map(FetchKey::Latest));
        }
        Some(CycleWork {
            list: plan == CyclePlan::List,
            gets: self.fair_order(gets),
            interval,
        })
    }

    /// After a cycle's LIST: the latest names it did not settle (changed,
    /// absent, ambiguous, failing), or every needed name when it failed.
    pub fn after_listing(&self) -> Vec<FetchKey> {
        let listed_at = match (&self.listing, &self.list_failure) {
            (Some(l), None) => Some(l.at),
            _ => None,
        };
        self.needed_latest()
            .into_iter()
            .filter(|n| {
                let Some(at) = listed_at else { return true };
                self.latest
                    .get(n)
                    .is_none_or(|e| e.failure.is_some() || e.checked.is_none_or(|c| c < at))
            })
            .map(FetchKey::Latest)
            .collect()
    }

    /// Applies a LIST's result, taken at `now`: settles every needed name
    /// from it and notes what a `select` would see differently.
    pub fn apply_listing(
        &mut self,
        result: Result<Vec<SecretItem>, Failure>,
        now: Instant,
    ) -> Changes {
        let mut changes = Changes::default();
        match result {
            Ok(items) => {
                let tags = std::mem::take(&mut self.tags_wanted) || self.any_select();
                let mut items: Vec<SecretItem> = items.into_iter().map(|i| trim(i, tags)).collect();
                items.sort_by(|a, b| cmp_name(a.name(), b.name()));
                items.dedup_by(|a, b| cmp_name(a.name(), b.name()).is_eq());
                if self.list_failure.take().is_some() {
                    changes.listing = true;
                }
                if let Some(old) = &self.listing {
                    changes.items = select_diff(&old.items, &items, old.tags && tags);
                }
                let items = Arc::new(items);
                for name in self.needed_latest() {
                    let selected_only = !self.picked(&name);
                    self.settle(&name, &items, now, selected_only, &mut changes);
                }
                self.listing = Some(Listing {
                    items,
                    at: now,
                    tags,
                });
            }
            Err(failure) => {
                let before = self.list_failure.as_ref().map(|f| f.failure.reason());
                if before != Some(failure.reason()) {
                    changes.listing = true;
                }
                self.list_failure = Some(ListFailure {
                    failure,
                    at: now,
                    cycles: 0,
                });
            }
        }
        self.wake(&changes);
        changes
    }

    /// Applies a GET's result. `read_at` is when the vault served it, by its
    /// clock (the `Date` header), or ours taken before the request.
    pub fn apply_get(
        &mut self,
        key: &FetchKey,
        result: Result<Got, Failure>,
        read_at: i64,
        now: Instant,
    ) -> Changes {
        let mut changes = Changes::default();
        let (name, entry) = match key {
            FetchKey::List | FetchKey::Versions(_) => return changes,
            FetchKey::Latest(name) => (name, self.latest.entry(name.clone()).or_default()),
            FetchKey::Pinned(name, version) => (
                name,
                self.pinned
                    .entry((name.clone(), version.clone()))
                    .or_default(),
            ),
        };
        let before = entry.observed();
        let replaced = match &entry.known {
            Known::Value { version, .. } => Some(version.clone()),
            _ => None,
        };
        match result {
            Ok(got) => {
                entry.known = Known::Value {
                    version: got.version.clone(),
                    updated: got.updated,
                    expires: got.expires,
                };
                entry.failure = None;
                entry.checked = Some(now);
                entry.read_at = Some(read_at);
                self.values.insert((name.clone(), got.version), got.value);
            }
            Err(f) if f.is_not_found() || f.is_disabled() => {
                entry.known = if f.is_not_found() {
                    Known::Missing
                } else {
                    Known::Disabled
                };
                entry.failure = None;
                entry.checked = Some(now);
                entry.read_at = Some(read_at);
            }
            Err(f) => {
                // The last known state stays (KeepLast needs it); the failure
                // belongs to this name alone.
                entry.failure = Some((now, f));
            }
        }
        let after = entry.observed();
        if after != before {
            match key {
                FetchKey::Pinned(n, v) => {
                    changes.pinned.insert((n.clone(), v.clone()));
                }
                _ => {
                    changes.names.insert(name.clone());
                }
            }
        }
        if let Some(old) = replaced
            && !matches!(&after.0, Known::Value { version, .. } if *version == old)
        {
            self.drop_value_if_unused(name, &old);
        }
        self.wake(&changes);
        changes
    }

    fn drop_value_if_unused(&mut self, name: &str, version: &str) {
        let key = (name.to_string(), version.to_string());
        let latest = matches!(self.latest.get(name), Some(Entry { known: Known::Value { version: v, .. }, .. }) if *v == key.1);
        let pinned = matches!(
            self.pinned.get(&key),
            Some(Entry {
                known: Known::Value { .. },
                ..
            })
        );
        if !latest && !pinned {
            self.values.remove(&key);
        }
    }

    /// Queues the bindings `changes` concern; a binding in a read is marked
    /// instead, and woken when its read ends if it looked too early.
    pub fn wake(&mut self, changes: &Changes) {
        if !changes.is_empty() {
            self.wakes.extend(self.interests.concerned(changes));
        }
    }

    /// The bindings to wake, once each.
    pub fn take_wakes(&mut self) -> Vec<BindingRef> {
        self.wakes.drain().collect()
    }

    /// What the vault holds for each key of `plan`, as known now. A required
    /// key whose read failed fails the read; an optional one is
    /// [`Fetched::Unavailable`] (its key keeps its value) and is listed in
    /// the second part, (secret name, why).
    #[allow(clippy::type_complexity)]
    pub fn answer(
        &mut self,
        who: Option<&BindingRef>,
        plan: &Plan,
    ) -> Result<(BTreeMap<String, Fetched>, Vec<(String, String)>), Unanswered> {
        if let Some(who) = who {
            self.interests.seen(who);
        }
        let mut fetched = BTreeMap::new();
        let mut optional_failures = Vec::new();
        for k in &plan.keys {
            let name = lower(&k.secret);
            let entry = match &k.version {
                Some(v) => self.pinned.get(&(name.clone(), lower(v))),
                None => self.latest.get(&name),
            };
            let failure = entry.and_then(|e| e.failure.as_ref().map(|(_, f)| f.clone()));
            let known = entry.map(|e| &e.known).unwrap_or(&Known::Unknown);
            let f = match (failure, known) {
                (Some(failure), _) if k.optional => {
                    optional_failures.push((k.secret.clone(), failure.to_string()));
                    Fetched::Unavailable {
                        reason: failure.reason(),
                        message: failure.to_string(),
                    }
                }
                (Some(failure), _) => return Err(Unanswered::Failed(failure)),
                (
                    None,
                    Known::Value {
                        version,
                        updated,
                        expires,
                    },
                ) => match self.values.get(&(name.clone(), version.clone())) {
                    Some(value) => Fetched::Value {
                        value: value.clone(),
                        version: version.clone(),
                        updated: *updated,
                        expires: *expires,
                    },
                    None if k.optional => not_read(&k.secret, &mut optional_failures),
                    None => return Err(Unanswered::NotRead),
                },
                (None, Known::Disabled) => Fetched::Disabled,
                (None, Known::Missing) => Fetched::Missing,
                (None, Known::Unknown) if k.optional => not_read(&k.secret, &mut optional_failures),
                (None, Known::Unknown) => return Err(Unanswered::NotRead),
            };
            fetched.insert(k.key.clone(), f);
        }
        Ok((fetched, optional_failures))
    }

    /// Whether something needed is failing (the cycle then comes back sooner).
    pub fn failing(&self) -> bool {
        let names = self.needed_latest();
        let pinned = self.needed_pinned();
        names
            .iter()
            .any(|n| self.latest.get(n).is_some_and(|e| e.failure.is_some()))
            || pinned
                .iter()
                .any(|p| self.pinned.get(p).is_some_and(|e| e.failure.is_some()))
            || (self.any_select() && self.list_failure.as_ref().is_some_and(|f| !f.forbidden()))
    }

    /// Drops what no binding needs: entries, values, and the listing's tags'
    /// reason to exist.
    pub fn prune(&mut self) {
        let latest = self.needed_latest();
        let pinned = self.needed_pinned();
        let protected = &self.protected;
        self.latest.retain(|n, _| {
            latest.contains(n) || protected.contains_key(&FetchKey::Latest(n.clone()))
        });
        self.pinned.retain(|k, _| {
            pinned.contains(k)
                || protected.contains_key(&FetchKey::Pinned(k.0.clone(), k.1.clone()))
        });
        let current: HashSet<(String, String)> = self
            .latest
            .iter()
            .filter_map(|(n, e)| match &e.known {
                Known::Value { version, .. } => Some((n.clone(), version.clone())),
                _ => None,
            })
            .chain(self.pinned.keys().cloned())
            .collect();
        self.values.retain(|k, _| current.contains(k));
        if self.is_empty() && self.reads.is_empty() {
            self.listing = None;
            self.list_failure = None;
        }
    }
}

fn not_read(name: &str, optional_failures: &mut Vec<(String, String)>) -> Fetched {
    let message = "not read yet: the vault has not answered".to_string();
    optional_failures.push((name.to_string(), message.clone()));
    Fetched::Unavailable {
        reason: Reason::VaultTimeout,
        message,
    }
}

mod pins;
#[cfg(test)]
mod tests;
