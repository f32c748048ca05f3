//! The poller's index: what is known of one vault (as one identity sees it)
//! and which binding needs what. Pure: the results of requests go in (a
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
use crate::azure::keyvault::{PAGE_SIZE, SecretItem};
use crate::crd::{VaultSecretBinding, VaultSecretBindingSpec};
use crate::plan::{Plan, selects};
use crate::reason::Reason;
use crate::render::Fetched;
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
/// `items` is the vault's size when known; `can_list` is false while the
/// vault refuses to list for this identity. Pinned versions are left out:
/// they cost one GET each either way (a listing shows latest versions only).
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
}

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

/// What one binding needs from the vault.
#[derive(Debug, Clone, Default, PartialEq)]
struct Interest {
    /// Names picked explicitly at their latest version (lower case).
    picks: BTreeSet<String>,
    /// Names the `select` planned at the last read (lower case).
    selected: BTreeSet<String>,
    /// Pinned (name, version) pairs (lower case).
    pinned: BTreeSet<(String, String)>,
    /// The spec, kept only when it has a `select`: listing changes are
    /// matched against it.
    select: Option<Arc<VaultSecretBindingSpec>>,
    interval: Duration,
}

impl Interest {
    fn of(spec: &VaultSecretBindingSpec, interval: Duration) -> Self {
        let mut i = Interest {
            interval,
            select: spec.select.as_ref().map(|_| Arc::new(spec.clone())),
            ..Default::default()
        };
        for p in &spec.secrets {
            match p.version.as_deref().filter(|v| !v.is_empty()) {
                Some(v) => {
                    i.pinned.insert((lower(&p.name), lower(v)));
                }
                None => {
                    i.picks.insert(lower(&p.name));
                }
            }
        }
        i
    }
}

/// Everything the poller keeps per binding, in one place: forgetting a
/// binding removes all of it.
#[derive(Debug, Default)]
struct BindingState {
    interest: Interest,
    /// Reads of this binding in progress.
    reads: u32,
    /// Something it uses changed while it was reading.
    dirty: bool,
    /// Its interest is in the reverse maps.
    indexed: bool,
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

#[derive(Debug, Default)]
struct Users {
    bindings: HashSet<BindingRef>,
    /// How many of them pick the name explicitly (not through a `select`).
    picked: usize,
}

/// The index of one (vault, identity).
#[derive(Debug, Default)]
pub struct Index {
    bindings: HashMap<BindingRef, BindingState>,
    latest: HashMap<String, Entry>,
    pinned: HashMap<(String, String), Entry>,
    /// (name, version) → value; only versions some entry points at.
    values: HashMap<(String, String), SecretValue>,
    listing: Option<Listing>,
    list_failure: Option<ListFailure>,
    /// Latest name → who uses it (the reverse of the interests).
    users: HashMap<String, Users>,
    /// Pinned (name, version) → who uses it.
    pinned_users: HashMap<(String, String), HashSet<BindingRef>>,
    /// Bindings with a `select`.
    selecting: HashSet<BindingRef>,
    /// Bindings to wake, collected until the shell sends them.
    wakes: HashSet<BindingRef>,
    /// A read with a `select` waits for the next listing: keep its tags
    /// even when no registered binding selects (e.g. `kvsync check`).
    tags_wanted: bool,
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn cmp_name(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

/// Key Vault's `updated` has one-second resolution: a version written in the
/// second of (or before) our last read may hide behind an equal timestamp.
/// `read_at` is the vault's clock when it served that read.
fn ambiguous(updated: Option<i64>, read_at: Option<i64>) -> bool {
    match (updated, read_at) {
        (Some(u), Some(r)) => u + 1 >= r,
        _ => true,
    }
}

/// Drops what nothing reads: values are never listed, and of the attributes
/// only `enabled`, `exp` and `updated` matter; tags only to a `select`.
fn trim(mut item: SecretItem, tags: bool) -> SecretItem {
    item.content_type = None;
    item.managed = None;
    item.attributes.created = None;
    item.attributes.nbf = None;
    item.attributes.recoverable_days = None;
    item.attributes.recovery_level = None;
    if !tags {
        item.tags.clear();
    }
    item
}

fn find<'a>(items: &'a [SecretItem], name: &str) -> Option<&'a SecretItem> {
    items
        .binary_search_by(|i| cmp_name(i.name(), name))
        .ok()
        .map(|at| &items[at])
}

impl Index {
    /// Records what `spec` needs. The names a `select` planned are kept until
    /// the next plan ([`Index::set_selected`]) when the `select` is the same.
    pub fn register(
        &mut self,
        who: &BindingRef,
        spec: &VaultSecretBindingSpec,
        interval: Duration,
    ) {
        let mut interest = Interest::of(spec, interval);
        if let Some(state) = self.bindings.get(who)
            && interest.select.as_ref().map(|s| &s.select)
                == state.interest.select.as_ref().map(|s| &s.select)
        {
            interest.selected = state
                .interest
                .selected
                .difference(&interest.picks)
                .cloned()
                .collect();
        }
        self.set_interest(who, Some(interest));
    }

    /// Records the names `plan` took from the listing.
    pub fn set_selected(&mut self, who: &BindingRef, plan: &Plan) {
        let Some(state) = self.bindings.get(who) else {
            return;
        };
        let picks = &state.interest.picks;
        let selected: BTreeSet<String> = plan
            .keys
            .iter()
            .filter(|k| k.version.is_none())
            .map(|k| lower(&k.secret))
            .filter(|n| !picks.contains(n))
            .collect();
        if selected != state.interest.selected {
            let mut interest = state.interest.clone();
            interest.selected = selected;
            self.set_interest(who, Some(interest));
        }
    }

    /// Replaces (or, with `None`, removes) what `who` needs, keeping the
    /// reverse maps (name → bindings) in step: a change then finds its
    /// bindings without a scan of all of them.
    fn set_interest(&mut self, who: &BindingRef, interest: Option<Interest>) {
        let old = match &interest {
            Some(new) => {
                let state = self.bindings.entry(who.clone()).or_default();
                if state.interest == *new && state.indexed {
                    return;
                }
                state.indexed = true;
                Some(std::mem::replace(&mut state.interest, new.clone()))
            }
            None => self.bindings.remove(who).map(|s| s.interest),
        };
        if let Some(old) = old {
            for n in old.picks.iter().chain(&old.selected) {
                if let Some(u) = self.users.get_mut(n) {
                    if u.bindings.remove(who) && old.picks.contains(n) {
                        u.picked = u.picked.saturating_sub(1);
                    }
                    if u.bindings.is_empty() {
                        self.users.remove(n);
                    }
                }
            }
            for p in &old.pinned {
                if let Some(u) = self.pinned_users.get_mut(p) {
                    u.remove(who);
                    if u.is_empty() {
                        self.pinned_users.remove(p);
                    }
                }
            }
            self.selecting.remove(who);
        }
        if let Some(new) = interest {
            for n in new.picks.iter().chain(&new.selected) {
                let u = self.users.entry(n.clone()).or_default();
                if u.bindings.insert(who.clone()) && new.picks.contains(n) {
                    u.picked += 1;
                }
            }
            for p in &new.pinned {
                self.pinned_users
                    .entry(p.clone())
                    .or_default()
                    .insert(who.clone());
            }
            if new.select.is_some() {
                self.selecting.insert(who.clone());
            }
        }
    }

    /// A read of `who` begins: changes it would see are not woken for.
    pub fn begin_read(&mut self, who: &BindingRef) {
        if let Some(state) = self.bindings.get_mut(who) {
            state.reads += 1;
        }
    }

    /// A read of `who` ended (answered, failed or timed out): if something it
    /// uses changed after it looked, it is woken.
    pub fn end_read(&mut self, who: &BindingRef) {
        if let Some(state) = self.bindings.get_mut(who) {
            state.reads = state.reads.saturating_sub(1);
            if state.reads == 0 && std::mem::take(&mut state.dirty) {
                self.wakes.insert(who.clone());
            }
        }
    }

    /// Forgets `who` entirely, and what nobody needs any more.
    pub fn forget(&mut self, who: &BindingRef) {
        if self.bindings.contains_key(who) {
            self.set_interest(who, None);
            self.wakes.remove(who);
            self.prune();
        }
    }

    /// Forgets every binding for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(&BindingRef) -> bool) {
        let gone: Vec<BindingRef> = self
            .bindings
            .keys()
            .filter(|who| !keep(who))
            .cloned()
            .collect();
        for who in &gone {
            self.set_interest(who, None);
            self.wakes.remove(who);
        }
        if !gone.is_empty() {
            self.prune();
        }
    }

    /// Bindings registered.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether no binding is registered.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// The shortest refresh interval among the bindings.
    pub fn interval(&self) -> Option<Duration> {
        self.bindings.values().map(|s| s.interest.interval).min()
    }

    fn needed_latest(&self) -> BTreeSet<String> {
        self.users.keys().cloned().collect()
    }

    fn needed_pinned(&self) -> BTreeSet<(String, String)> {
        self.pinned_users.keys().cloned().collect()
    }

    fn picked(&self, name: &str) -> bool {
        self.users.get(name).is_some_and(|u| u.picked > 0)
    }

    fn any_select(&self) -> bool {
        !self.selecting.is_empty()
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
    /// known recently enough (all of them with `force`). A recent listing
    /// settles latest names it shows unchanged; a name it does not show is
    /// read by GET (it may be younger than the listing).
    pub fn fetches_for_read(
        &mut self,
        plan: &Plan,
        now: Instant,
        max_age: Duration,
        force: bool,
    ) -> Vec<FetchKey> {
        let listing = self
            .listing
            .as_ref()
            .filter(|l| {
                self.list_failure.is_none() && now.saturating_duration_since(l.at) <= max_age
            })
            .map(|l| (l.items.clone(), l.at));
        let mut changes = Changes::default();
        let mut out = BTreeSet::new();
        for k in &plan.keys {
            let name = lower(&k.secret);
            match &k.version {
                None => {
                    let values = &self.values;
                    let fresh = self.latest.get(&name).is_some_and(|e| {
                        e.fresh(now, max_age, |v| {
                            values.contains_key(&(name.clone(), v.into()))
                        })
                    });
                    if !force && fresh {
                        continue;
                    }
                    if !force
                        && let Some((items, at)) = &listing
                        && !self.settle(&name, items, *at, false, &mut changes)
                    {
                        continue;
                    }
                    out.insert(FetchKey::Latest(name));
                }
                Some(v) => {
                    let key = (name, lower(v));
                    let values = &self.values;
                    let fresh = self.pinned.get(&key).is_some_and(|e| {
                        e.fresh(now, max_age, |v| {
                            values.contains_key(&(key.0.clone(), v.into()))
                        })
                    });
                    if force || !fresh {
                        out.insert(FetchKey::Pinned(key.0, key.1));
                    }
                }
            }
        }
        self.wake(&changes);
        out.into_iter().collect()
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
        // A listing shows latest versions only: pinned versions are re-checked
        // (enabled, expiry) with one GET each, every cycle.
        let mut gets: Vec<FetchKey> = self
            .needed_pinned()
            .into_iter()
            .map(|(n, v)| FetchKey::Pinned(n, v))
            .collect();
        if plan == CyclePlan::Get {
            gets.extend(needed.into_iter().map(FetchKey::Latest));
        }
        Some(CycleWork {
            list: plan == CyclePlan::List,
            gets,
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
            FetchKey::List => return changes,
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
        if changes.is_empty() {
            return;
        }
        let mut hit: HashSet<&BindingRef> = HashSet::new();
        for n in &changes.names {
            hit.extend(self.users.get(n).into_iter().flat_map(|u| &u.bindings));
        }
        for p in &changes.pinned {
            hit.extend(self.pinned_users.get(p).into_iter().flatten());
        }
        if changes.listing || !changes.items.is_empty() {
            for who in &self.selecting {
                let matches = self
                    .bindings
                    .get(who)
                    .and_then(|s| s.interest.select.as_ref())
                    .is_some_and(|spec| {
                        changes.listing || changes.items.iter().any(|item| selects(spec, item))
                    });
                if matches {
                    hit.insert(who);
                }
            }
        }
        let hit: Vec<BindingRef> = hit.into_iter().cloned().collect();
        for who in hit {
            let Some(state) = self.bindings.get_mut(&who) else {
                continue;
            };
            if state.reads > 0 {
                state.dirty = true;
            } else {
                self.wakes.insert(who);
            }
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
        if let Some(state) = who.and_then(|w| self.bindings.get_mut(w)) {
            // It sees everything applied so far.
            state.dirty = false;
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
        self.latest.retain(|n, _| latest.contains(n));
        self.pinned.retain(|k, _| pinned.contains(k));
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
        if self.is_empty() {
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

/// Items whose presence, `enabled` or tags differ between two sorted listings.
fn select_diff(old: &[SecretItem], new: &[SecretItem], tags: bool) -> Vec<SecretItem> {
    let same = |a: &SecretItem, b: &SecretItem| {
        a.attributes.is_enabled() == b.attributes.is_enabled() && (!tags || a.tags == b.tags)
    };
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let ord = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => cmp_name(a.name(), b.name()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                out.push(old[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(new[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if !same(&old[i], &new[j]) {
                    out.push(old[i].clone());
                    out.push(new[j].clone());
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::keyvault::{ForbiddenKind, KeyVaultError, Operation, SecretAttributes};
    use crate::plan::plan;

    fn spec(yaml: &str) -> VaultSecretBindingSpec {
        serde_yaml::from_str(&format!("vaultUrl: https://v.vault.azure.net\n{yaml}")).unwrap()
    }

    fn who(name: &str) -> BindingRef {
        ObjectRef::new(name).within("ns")
    }

    fn item(name: &str, updated: i64) -> SecretItem {
        SecretItem {
            id: format!("https://v.vault.azure.net/secrets/{name}"),
            attributes: SecretAttributes {
                updated: Some(updated),
                ..Default::default()
            },
            tags: BTreeMap::new(),
            content_type: None,
            managed: None,
        }
    }

    fn got(version: &str, value: &str, updated: i64) -> Result<Got, Failure> {
        Ok(Got {
            value: SecretValue::new(value),
            version: version.into(),
            updated: Some(updated),
            expires: None,
        })
    }

    fn failed(e: KeyVaultError) -> Result<Got, Failure> {
        Err(Arc::new(e.into()))
    }

    fn forbidden(op: Operation) -> KeyVaultError {
        KeyVaultError::Forbidden {
            vault: "v".into(),
            who: "identity app".into(),
            operation: op,
            kind: ForbiddenKind::Rbac,
            detail: "ForbiddenByRbac".into(),
        }
    }

    fn not_found(name: &str) -> KeyVaultError {
        KeyVaultError::NotFound {
            vault: "v".into(),
            name: name.into(),
            version: None,
        }
    }

    fn throttled() -> KeyVaultError {
        KeyVaultError::Throttled {
            vault: "v".into(),
            attempts: 4,
        }
    }

    fn latest(name: &str) -> FetchKey {
        FetchKey::Latest(name.into())
    }

    /// An index with `bindings` registered (name, spec) and their plans set
    /// from `listing`.
    fn index(bindings: &[(&str, &str)], listing: &[SecretItem]) -> Index {
        let mut idx = Index::default();
        for (name, yaml) in bindings {
            let s = spec(yaml);
            idx.register(&who(name), &s, Duration::from_secs(300));
            idx.set_selected(&who(name), &plan(&s, listing).unwrap());
        }
        idx
    }

    fn answer(
        idx: &mut Index,
        name: &str,
        yaml: &str,
        listing: &[SecretItem],
    ) -> Result<BTreeMap<String, Fetched>, Unanswered> {
        let p = plan(&spec(yaml), listing).unwrap();
        idx.answer(Some(&who(name)), &p).map(|(f, _)| f)
    }

    fn woken(idx: &mut Index) -> Vec<String> {
        let mut names: Vec<String> = idx.take_wakes().into_iter().map(|w| w.name).collect();
        names.sort();
        names
    }

    const A: &str = "secrets: [{name: db-password}]";
    const B: &str = "secrets: [{name: payroll-db, optional: true}]";

    #[test]
    fn another_bindings_forbidden_optional_pick_does_not_fail_this_one() {
        // The identity may read only db-password; b adds payroll-db.
        let mut idx = index(&[("a", A), ("b", B)], &[]);
        let now = Instant::now();
        idx.apply_get(&latest("db-password"), got("v1", "one", 100), 200, now);
        woken(&mut idx);
        let changes = idx.apply_get(
            &latest("payroll-db"),
            failed(forbidden(Operation::GetSecret)),
            200,
            now,
        );
        assert_eq!(changes.names, BTreeSet::from(["payroll-db".to_string()]));
        assert_eq!(woken(&mut idx), ["b"], "only the binding that asked for it");

        let a = answer(&mut idx, "a", A, &[]).expect("a is not failed by b's pick");
        assert!(
            matches!(&a["db-password"], Fetched::Value { value, .. } if value.expose() == "one")
        );
        let p = plan(&spec(B), &[]).unwrap();
        let (b, why) = idx.answer(Some(&who("b")), &p).expect("optional: b reads");
        assert!(matches!(
            &b["payroll-db"],
            Fetched::Unavailable {
                reason: Reason::VaultForbidden,
                ..
            }
        ));
        assert_eq!(why.len(), 1);

        // The same refusal again changes nothing and wakes nobody; a
        // rotation of db-password wakes a only.
        let later = now + Duration::from_secs(300);
        idx.apply_get(
            &latest("payroll-db"),
            failed(forbidden(Operation::GetSecret)),
            500,
            later,
        );
        assert!(woken(&mut idx).is_empty());
        idx.apply_get(&latest("db-password"), got("v2", "two", 450), 500, later);
        assert_eq!(woken(&mut idx), ["a"]);
    }

    #[test]
    fn a_throttled_name_fails_only_the_bindings_that_require_it() {
        let mut idx = index(&[("a", A), ("c", "secrets: [{name: hot}]")], &[]);
        let now = Instant::now();
        idx.apply_get(&latest("db-password"), got("v1", "one", 100), 200, now);
        idx.apply_get(&latest("hot"), got("h1", "h", 100), 200, now);
        woken(&mut idx);
        idx.apply_get(&latest("hot"), failed(throttled()), 300, now);
        assert_eq!(woken(&mut idx), ["c"], "ok → failure wakes its binding");
        assert!(answer(&mut idx, "a", A, &[]).is_ok());
        match answer(&mut idx, "c", "secrets: [{name: hot}]", &[]) {
            Err(Unanswered::Failed(f)) => assert_eq!(f.reason(), Reason::VaultThrottled),
            other => panic!("expected the throttling, got {other:?}"),
        }
        idx.apply_get(&latest("hot"), got("h1", "h", 100), 400, now);
        assert_eq!(woken(&mut idx), ["c"], "failure → ok wakes it again");
    }

    #[test]
    fn unchanged_listing_needs_no_get_and_wakes_nobody() {
        let listing = vec![item("db-password", 100), item("other", 100)];
        let mut idx = index(&[("a", A), ("all", "select: {all: true}")], &listing);
        let t0 = Instant::now();
        idx.apply_listing(Ok(listing.clone()), t0);
        for n in ["db-password", "other"] {
            idx.apply_get(&latest(n), got("v1", "x", 100), 200, t0);
        }
        woken(&mut idx);
        let t1 = t0 + Duration::from_secs(300);
        let changes = idx.apply_listing(Ok(listing), t1);
        assert!(changes.is_empty(), "{changes:?}");
        assert!(idx.after_listing().is_empty(), "nothing to GET");
        assert!(woken(&mut idx).is_empty());
    }

    #[test]
    fn a_changed_item_is_read_and_wakes_only_its_bindings() {
        let listing = vec![item("db-password", 100), item("other", 100)];
        let mut idx = index(&[("a", A), ("o", "secrets: [{name: other}]")], &listing);
        let t0 = Instant::now();
        for n in ["db-password", "other"] {
            idx.apply_get(&latest(n), got("v1", "x", 100), 200, t0);
        }
        woken(&mut idx);
        let t1 = t0 + Duration::from_secs(300);
        idx.apply_listing(Ok(vec![item("db-password", 400), item("other", 100)]), t1);
        assert_eq!(idx.after_listing(), [latest("db-password")]);
        idx.apply_get(&latest("db-password"), got("v2", "y", 400), 500, t1);
        assert_eq!(woken(&mut idx), ["a"]);
        assert_eq!(
            idx.values.len(),
            2,
            "the replaced version's value is dropped"
        );
    }

    #[test]
    fn a_name_absent_from_the_listing_is_read_not_reported_missing() {
        // The listing was taken before the secret was created.
        let stale = vec![item("other", 100)];
        let mut idx = index(&[("a", A)], &stale);
        let t0 = Instant::now();
        idx.apply_listing(Ok(stale.clone()), t0);
        let p = plan(&spec(A), &stale).unwrap();
        let keys = idx.fetches_for_read(
            &p,
            t0 + Duration::from_secs(10),
            Duration::from_secs(330),
            false,
        );
        assert_eq!(keys, [latest("db-password")], "read by GET");
        assert_eq!(
            idx.after_listing(),
            [latest("db-password")],
            "a cycle GETs it too"
        );
        assert!(
            matches!(answer(&mut idx, "a", A, &stale), Err(Unanswered::NotRead)),
            "never Missing before a GET says so"
        );

        // Only SecretNotFound makes it missing; a later listing without it
        // then confirms the miss without another GET.
        idx.apply_get(
            &latest("db-password"),
            failed(not_found("db-password")),
            200,
            t0,
        );
        assert!(matches!(
            answer(&mut idx, "a", A, &stale).unwrap()["db-password"],
            Fetched::Missing
        ));
        idx.apply_listing(Ok(stale), t0 + Duration::from_secs(300));
        assert!(idx.after_listing().is_empty());
    }

    #[test]
    fn a_selected_name_gone_from_the_listing_leaves_the_select_without_a_get() {
        let listing = vec![item("a", 100), item("b", 100)];
        let mut idx = index(&[("all", "select: {all: true}")], &listing);
        let t0 = Instant::now();
        idx.apply_listing(Ok(listing), t0);
        for n in ["a", "b"] {
            idx.apply_get(&latest(n), got("v1", "x", 100), 200, t0);
        }
        woken(&mut idx);
        idx.apply_listing(Ok(vec![item("a", 100)]), t0 + Duration::from_secs(300));
        assert!(idx.after_listing().is_empty());
        assert_eq!(woken(&mut idx), ["all"]);
    }

    #[test]
    fn the_one_second_rule_uses_the_vaults_clock() {
        let listing = vec![item("db-password", 100)];
        let mut idx = index(&[("a", A)], &listing);
        let t0 = Instant::now();
        // Served at vault second 100, the second the version was written:
        // another version may follow in that second with the same `updated`.
        idx.apply_get(&latest("db-password"), got("v1", "x", 100), 100, t0);
        idx.apply_listing(Ok(listing.clone()), t0 + Duration::from_secs(1));
        assert_eq!(
            idx.after_listing(),
            [latest("db-password")],
            "ambiguous: read again"
        );
        // Served at vault second 102: whatever the listing says at 100 is what we read.
        idx.apply_get(
            &latest("db-password"),
            got("v1", "x", 100),
            102,
            t0 + Duration::from_secs(2),
        );
        idx.apply_listing(Ok(listing), t0 + Duration::from_secs(3));
        assert!(idx.after_listing().is_empty());
    }

    #[test]
    fn a_tag_change_that_makes_a_secret_match_wakes_its_select() {
        let mut tagged = item("s", 100);
        let listing = vec![item("s", 100)];
        let sel = "select: {tags: {team: ci}}";
        let mut idx = index(
            &[
                ("ci", sel),
                ("other", "select: {tags: {team: web}}"),
                ("a", A),
            ],
            &listing,
        );
        let t0 = Instant::now();
        idx.apply_listing(Ok(listing), t0);
        woken(&mut idx);
        tagged.tags.insert("team".into(), "ci".into());
        let changes = idx.apply_listing(Ok(vec![tagged]), t0 + Duration::from_secs(300));
        assert_eq!(changes.items.len(), 2, "old and new form");
        assert_eq!(woken(&mut idx), ["ci"]);
    }

    #[test]
    fn list_forbidden_keeps_picks_on_gets_fails_selects_and_is_retried() {
        let mut idx = index(&[("a", A), ("all", "select: {all: true}")], &[]);
        let t0 = Instant::now();
        let refused: Failure = Arc::new(forbidden(Operation::ListSecrets).into());
        idx.apply_listing(Err(refused), t0);
        assert_eq!(woken(&mut idx), ["all"], "the select is told");
        assert!(
            matches!(idx.after_listing()[..], [FetchKey::Latest(ref n)] if n == "db-password"),
            "picks fall back to GET"
        );
        match idx.listing_for_read(
            t0 + Duration::from_secs(60),
            Duration::from_secs(330),
            false,
        ) {
            ListingNeed::Refused(f) => assert_eq!(f.reason(), Reason::ListForbidden),
            _ => panic!("a select read reports ListForbidden"),
        }
        for cycle in 1..=LIST_RETRY_CYCLES {
            let work = idx
                .cycle_work(t0 + Duration::from_secs(cycle as u64))
                .unwrap();
            assert!(!work.list, "cycle {cycle} does not list");
            assert_eq!(work.gets, [latest("db-password")]);
        }
        let work = idx.cycle_work(t0 + Duration::from_secs(11)).unwrap();
        assert!(work.list, "then the LIST is tried again");
        // Granted meanwhile: the select is woken and reads.
        idx.apply_listing(
            Ok(vec![item("db-password", 100)]),
            t0 + Duration::from_secs(12),
        );
        assert_eq!(woken(&mut idx), ["all"]);
        assert!(matches!(
            idx.listing_for_read(
                t0 + Duration::from_secs(13),
                Duration::from_secs(330),
                false
            ),
            ListingNeed::Fresh(_)
        ));
    }

    #[test]
    fn a_refused_list_is_retried_after_ten_minutes_too() {
        let mut idx = index(&[("all", "select: {all: true}")], &[]);
        let t0 = Instant::now();
        idx.apply_listing(Err(Arc::new(forbidden(Operation::ListSecrets).into())), t0);
        assert!(!idx.cycle_work(t0 + Duration::from_secs(1)).unwrap().list);
        assert!(idx.cycle_work(t0 + LIST_RETRY_AFTER).unwrap().list);
    }

    #[test]
    fn pinned_versions_are_rechecked_every_cycle_and_a_disable_wakes() {
        let pinned = "secrets: [{name: db, version: abc}]";
        let mut idx = index(&[("p", pinned)], &[]);
        let t0 = Instant::now();
        let key = FetchKey::Pinned("db".into(), "abc".into());
        idx.apply_get(&key, got("abc", "x", 100), 200, t0);
        woken(&mut idx);
        let work = idx.cycle_work(t0).unwrap();
        assert_eq!(work.gets, std::slice::from_ref(&key));
        assert!(!work.list, "a listing shows no pinned version");
        let disabled = KeyVaultError::SecretDisabled {
            vault: "v".into(),
            name: "db".into(),
        };
        idx.apply_get(&key, failed(disabled), 300, t0);
        assert_eq!(woken(&mut idx), ["p"]);
        assert!(matches!(
            answer(&mut idx, "p", pinned, &[]).unwrap()["db"],
            Fetched::Disabled
        ));
    }

    #[test]
    fn a_reading_binding_is_woken_only_for_what_it_did_not_see() {
        let mut idx = index(&[("a", A)], &[]);
        let t0 = Instant::now();
        idx.begin_read(&who("a"));
        idx.apply_get(&latest("db-password"), got("v1", "x", 100), 200, t0);
        answer(&mut idx, "a", A, &[]).unwrap();
        idx.end_read(&who("a"));
        assert!(
            woken(&mut idx).is_empty(),
            "its own first read is no change to it"
        );

        idx.begin_read(&who("a"));
        answer(&mut idx, "a", A, &[]).unwrap();
        idx.apply_get(&latest("db-password"), got("v2", "y", 300), 400, t0);
        assert!(woken(&mut idx).is_empty(), "not while reading");
        idx.end_read(&who("a"));
        assert_eq!(
            woken(&mut idx),
            ["a"],
            "it answered before the change: woken"
        );
    }

    #[test]
    fn forgetting_removes_everything_kept_for_a_binding() {
        let pinned = "secrets: [{name: db, version: abc}, {name: db-password}]";
        let mut idx = index(&[("a", A), ("p", pinned)], &[]);
        let t0 = Instant::now();
        idx.apply_get(&latest("db-password"), got("v1", "x", 100), 200, t0);
        idx.apply_get(
            &FetchKey::Pinned("db".into(), "abc".into()),
            got("abc", "y", 100),
            200,
            t0,
        );
        idx.retain(|w| w.name != "p");
        assert_eq!(idx.len(), 1);
        assert!(idx.pinned.is_empty());
        assert_eq!(idx.values.len(), 1, "only db-password's value is left");
        idx.forget(&who("a"));
        assert!(idx.is_empty());
        assert!(idx.latest.is_empty() && idx.values.is_empty() && idx.listing.is_none());
    }

    #[test]
    fn the_listing_keeps_only_what_change_detection_needs() {
        let mut full = item("s", 100);
        full.content_type = Some("text/plain".into());
        full.attributes.recovery_level = Some("Recoverable+Purgeable".into());
        full.tags.insert("team".into(), "ci".into());
        let mut idx = index(&[("a", "secrets: [{name: s}]")], &[]);
        idx.apply_listing(Ok(vec![full.clone()]), Instant::now());
        let kept = &idx.listing.as_ref().unwrap().items[0];
        assert_eq!(kept.content_type, None);
        assert_eq!(kept.attributes.recovery_level, None);
        assert!(kept.tags.is_empty(), "no select: no tags");
        assert_eq!(kept.attributes.updated, Some(100));
    }

    #[test]
    fn a_changed_spec_moves_its_wakes_to_its_new_names() {
        let mut idx = index(&[("a", A)], &[]);
        let t0 = Instant::now();
        idx.register(
            &who("a"),
            &spec("secrets: [{name: other}]"),
            Duration::from_secs(300),
        );
        idx.apply_get(&latest("db-password"), got("v1", "x", 100), 200, t0);
        assert!(woken(&mut idx).is_empty(), "a no longer uses db-password");
        idx.apply_get(&latest("other"), got("v1", "x", 100), 200, t0);
        assert_eq!(woken(&mut idx), ["a"]);
        idx.prune();
        assert!(
            !idx.latest.contains_key("db-password"),
            "nobody needs it: pruned"
        );
    }

    #[test]
    fn a_failing_listing_fails_selects_and_sends_picks_to_get() {
        let mut idx = index(&[("a", A), ("all", "select: {all: true}")], &[]);
        let t0 = Instant::now();
        let down: Failure = Arc::new(
            KeyVaultError::Server {
                vault: "v".into(),
                status: 503,
                code: "ServiceUnavailable".into(),
                detail: String::new(),
                attempts: 4,
            }
            .into(),
        );
        idx.apply_listing(Err(down), t0);
        assert_eq!(woken(&mut idx), ["all"]);
        assert_eq!(idx.after_listing(), [latest("db-password")]);
        assert!(idx.failing(), "the cycle comes back sooner");
        match idx.listing_for_read(t0, Duration::from_secs(330), false) {
            ListingNeed::Refused(f) => assert_eq!(f.reason(), Reason::VaultUnavailable),
            _ => panic!("a failure stands for a few seconds"),
        }
        assert!(matches!(
            idx.listing_for_read(t0 + FAILURE_TTL, Duration::from_secs(330), false),
            ListingNeed::Fetch
        ));
    }

    #[test]
    fn a_select_read_without_a_registered_binding_keeps_tags() {
        // `kvsync check` reads without registering.
        let mut idx = Index::default();
        let mut tagged = item("s", 100);
        tagged.tags.insert("team".into(), "ci".into());
        assert!(matches!(
            idx.listing_for_read(Instant::now(), Duration::from_secs(330), false),
            ListingNeed::Fetch
        ));
        idx.apply_listing(Ok(vec![tagged]), Instant::now());
        let items = idx.listing_after_fetch().unwrap();
        assert_eq!(items[0].tags.get("team").map(String::as_str), Some("ci"));
    }

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
