//! Who needs what from one vault: each binding's interest, with the reverse
//! maps (name → bindings) that let a change find its bindings without a scan
//! of all of them. Everything kept per binding lives in one `BindingState`,
//! so forgetting a binding is complete by construction.
//!
//! Sized for 10,000 bindings per poller: a binding is stored once (behind an
//! `Arc`) and named elsewhere by a 4-byte id; a secret name is stored once
//! (interned `Arc<str>`) however many bindings use it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::index::{BindingRef, Changes, FetchKey};
use crate::crd::VaultSecretBindingSpec;
use crate::plan::{Plan, selects};

/// A secret name or version, lower case, shared by everyone using it.
type Name = Arc<str>;
/// A binding, within one `Interests`.
type Id = u32;

fn lower(s: &str) -> Name {
    Arc::from(s.to_ascii_lowercase())
}

/// Sorted and without repeats.
fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

/// What one binding needs from the vault.
#[derive(Debug, Clone, Default, PartialEq)]
struct Interest {
    /// Names picked explicitly at their latest version (sorted).
    picks: Vec<Name>,
    /// Names the `select` planned at the last read, not among `picks` (sorted).
    selected: Vec<Name>,
    /// Pinned (name, version) pairs (sorted).
    pinned: Vec<(Name, Name)>,
    /// The spec, kept only when it has a `select`: listing changes are
    /// matched against it.
    select: Option<Arc<VaultSecretBindingSpec>>,
    interval: Duration,
}

impl Interest {
    fn of(spec: &VaultSecretBindingSpec, interval: Duration) -> Self {
        let mut picks = Vec::new();
        let mut pinned = Vec::new();
        // The plan's reads by name (picks, pins, certificates: whatever
        // field brought them in), never the spec's fields one by one. A
        // spec that cannot be planned reads nothing by name.
        let named = crate::plan::plan(spec, &[]).unwrap_or_default();
        for k in &named.keys {
            match &k.version {
                Some(v) => pinned.push((lower(&k.secret), lower(v))),
                None => picks.push(lower(&k.secret)),
            }
        }
        Interest {
            picks: sorted(picks),
            selected: Vec::new(),
            pinned: sorted(pinned),
            select: spec.select.as_ref().map(|_| Arc::new(spec.clone())),
            interval,
        }
    }

    fn picks(&self, name: &str) -> bool {
        self.picks.binary_search_by(|p| (**p).cmp(name)).is_ok()
    }
}

/// Everything the poller keeps per binding.
#[derive(Debug)]
struct BindingState {
    who: Arc<BindingRef>,
    interest: Interest,
    /// Reads of this binding in progress.
    reads: u32,
    /// Something it uses changed while it was reading.
    dirty: bool,
    /// Its interest is in the reverse maps.
    indexed: bool,
}

#[derive(Debug, Default)]
struct Users {
    /// Sorted.
    bindings: Vec<Id>,
    /// How many of them pick the name explicitly (not through a `select`).
    picked: usize,
}

/// Adds `id` to a sorted list; false when it was there.
fn add(list: &mut Vec<Id>, id: Id) -> bool {
    match list.binary_search(&id) {
        Ok(_) => false,
        Err(i) => {
            list.insert(i, id);
            true
        }
    }
}

/// Removes `id` from a sorted list; false when it was not there.
fn take(list: &mut Vec<Id>, id: Id) -> bool {
    match list.binary_search(&id) {
        Ok(i) => {
            list.remove(i);
            true
        }
        Err(_) => false,
    }
}

/// What no binding needs any more after a change of interests.
#[derive(Debug, Default)]
pub struct Orphans {
    /// Latest names.
    pub latest: Vec<String>,
    /// Pinned (name, version) pairs.
    pub pinned: Vec<(String, String)>,
}

/// The bindings of one poller and what each needs.
#[derive(Debug, Default)]
pub struct Interests {
    ids: HashMap<Arc<BindingRef>, Id>,
    /// By id; `None` for a free id.
    bindings: Vec<Option<BindingState>>,
    free: Vec<Id>,
    /// Latest name → who uses it.
    users: HashMap<Name, Users>,
    /// Pinned (name, version) → who uses it (sorted); ordered, so that a
    /// name's pinned versions are one range.
    pinned_users: BTreeMap<(Name, Name), Vec<Id>>,
    /// Bindings with a `select` (sorted).
    selecting: Vec<Id>,
}

impl Interests {
    fn state(&self, who: &BindingRef) -> Option<&BindingState> {
        let id = *self.ids.get(who)?;
        self.bindings[id as usize].as_ref()
    }

    fn state_mut(&mut self, who: &BindingRef) -> Option<&mut BindingState> {
        let id = *self.ids.get(who)?;
        self.bindings[id as usize].as_mut()
    }

    /// The id of `who`, given one if it has none.
    fn id(&mut self, who: &BindingRef) -> Id {
        if let Some(id) = self.ids.get(who) {
            return *id;
        }
        let who = Arc::new(who.clone());
        let state = BindingState {
            who: who.clone(),
            interest: Interest::default(),
            reads: 0,
            dirty: false,
            indexed: false,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.bindings[id as usize] = Some(state);
                id
            }
            None => {
                self.bindings.push(Some(state));
                Id::try_from(self.bindings.len() - 1).expect("fewer than 2^32 bindings")
            }
        };
        self.ids.insert(who, id);
        id
    }

    /// The interned copy of `name` (interned now if nobody uses it yet).
    fn intern(&mut self, name: &Name) -> Name {
        match self.users.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => {
                self.users.insert(name.clone(), Users::default());
                name.clone()
            }
        }
    }

    /// Records what `spec` needs. The names a `select` planned are kept until
    /// the next plan ([`Interests::set_selected`]) when the `select` is the same.
    pub fn register(
        &mut self,
        who: &BindingRef,
        spec: &VaultSecretBindingSpec,
        interval: Duration,
    ) {
        let mut interest = Interest::of(spec, interval);
        if let Some(state) = self.state(who)
            && interest.select.as_ref().map(|s| &s.select)
                == state.interest.select.as_ref().map(|s| &s.select)
        {
            interest.selected = state
                .interest
                .selected
                .iter()
                .filter(|n| !interest.picks(n))
                .cloned()
                .collect();
        }
        self.set(who, Some(interest), &mut Orphans::default());
    }

    /// Records the names `plan` took from the listing.
    pub fn set_selected(&mut self, who: &BindingRef, plan: &Plan) {
        let Some(state) = self.state(who) else {
            return;
        };
        let selected: BTreeSet<String> = plan
            .keys
            .iter()
            .filter(|k| k.version.is_none())
            .map(|k| k.secret.to_ascii_lowercase())
            .filter(|n| !state.interest.picks(n))
            .collect();
        let same = selected.len() == state.interest.selected.len()
            && selected
                .iter()
                .zip(&state.interest.selected)
                .all(|(a, b)| a.as_str() == &**b);
        if !same {
            let mut interest = state.interest.clone();
            interest.selected = selected.into_iter().map(Name::from).collect();
            self.set(who, Some(interest), &mut Orphans::default());
        }
    }

    /// Removes `who`; `None` when it was not there, else what nobody needs now.
    pub fn remove(&mut self, who: &BindingRef) -> Option<Orphans> {
        self.ids.get(who)?;
        let mut orphans = Orphans::default();
        self.set(who, None, &mut orphans);
        Some(orphans)
    }

    /// Removes every binding for which `keep` is false; returns them, and
    /// what nobody needs now.
    pub fn retain(&mut self, keep: impl Fn(&BindingRef) -> bool) -> (Vec<BindingRef>, Orphans) {
        let gone: Vec<BindingRef> = self
            .ids
            .keys()
            .filter(|who| !keep(who))
            .map(|who| (**who).clone())
            .collect();
        let mut orphans = Orphans::default();
        for who in &gone {
            self.set(who, None, &mut orphans);
        }
        (gone, orphans)
    }

    /// Replaces (or, with `None`, removes) what `who` needs, keeping the
    /// reverse maps in step; names and versions left without a user go to
    /// `orphans`.
    fn set(&mut self, who: &BindingRef, interest: Option<Interest>, orphans: &mut Orphans) {
        let (id, old) = match &interest {
            Some(new) => {
                let id = self.id(who);
                let state = self.bindings[id as usize].as_mut().expect("an id in use");
                if state.interest == *new && state.indexed {
                    return;
                }
                let old = state.indexed.then(|| std::mem::take(&mut state.interest));
                state.indexed = true;
                (id, old)
            }
            None => {
                let Some(id) = self.ids.remove(who) else {
                    return;
                };
                let state = self.bindings[id as usize].take().expect("an id in use");
                self.free.push(id);
                (id, Some(state.interest))
            }
        };
        if let Some(old) = old {
            for n in old.picks.iter().chain(&old.selected) {
                if let Some(u) = self.users.get_mut(n) {
                    if take(&mut u.bindings, id) && old.picks(n) {
                        u.picked = u.picked.saturating_sub(1);
                    }
                    if u.bindings.is_empty() {
                        self.users.remove(n);
                        orphans.latest.push(n.to_string());
                    }
                }
            }
            for p in &old.pinned {
                if let Some(u) = self.pinned_users.get_mut(p) {
                    take(u, id);
                    if u.is_empty() {
                        self.pinned_users.remove(p);
                        orphans.pinned.push((p.0.to_string(), p.1.to_string()));
                    }
                }
            }
            take(&mut self.selecting, id);
        }
        if let Some(mut new) = interest {
            for i in 0..new.picks.len() {
                let n = self.intern(&new.picks[i]);
                let u = self.users.get_mut(&n).expect("interned");
                if add(&mut u.bindings, id) {
                    u.picked += 1;
                }
                new.picks[i] = n;
            }
            for i in 0..new.selected.len() {
                let n = self.intern(&new.selected[i]);
                add(&mut self.users.get_mut(&n).expect("interned").bindings, id);
                new.selected[i] = n;
            }
            for i in 0..new.pinned.len() {
                let key = new.pinned[i].clone();
                let (k, users) = match self.pinned_users.get_key_value(&key) {
                    Some((k, _)) => (k.clone(), None),
                    None => (key.clone(), Some(Vec::new())),
                };
                if let Some(users) = users {
                    self.pinned_users.insert(k.clone(), users);
                }
                add(self.pinned_users.get_mut(&k).expect("interned"), id);
                new.pinned[i] = k;
            }
            if new.select.is_some() {
                add(&mut self.selecting, id);
            }
            if let Some(state) = self.bindings[id as usize].as_mut() {
                state.interest = new;
            }
        }
    }

    /// A read of `who` begins: changes it will see are not woken for.
    pub fn begin_read(&mut self, who: &BindingRef) {
        if let Some(state) = self.state_mut(who) {
            state.reads += 1;
        }
    }

    /// `who` has looked at everything applied so far.
    pub fn seen(&mut self, who: &BindingRef) {
        if let Some(state) = self.state_mut(who) {
            state.dirty = false;
        }
    }

    /// A read of `who` ended; true when something it uses changed after it
    /// looked (it must be woken).
    pub fn end_read(&mut self, who: &BindingRef) -> bool {
        match self.state_mut(who) {
            Some(state) => {
                state.reads = state.reads.saturating_sub(1);
                state.reads == 0 && std::mem::take(&mut state.dirty)
            }
            None => false,
        }
    }

    /// The bindings `changes` concern that are not reading (those that are
    /// are marked, see [`Interests::end_read`]).
    pub fn concerned(&mut self, changes: &Changes) -> Vec<BindingRef> {
        let mut hit: Vec<Id> = Vec::new();
        for n in &changes.names {
            hit.extend(
                self.users
                    .get(n.as_str())
                    .into_iter()
                    .flat_map(|u| &u.bindings),
            );
        }
        for (name, version) in &changes.pinned {
            let key: (Name, Name) = (Name::from(name.as_str()), Name::from(version.as_str()));
            hit.extend(self.pinned_users.get(&key).into_iter().flatten());
        }
        if changes.listing || !changes.items.is_empty() {
            for id in &self.selecting {
                let matches = self.bindings[*id as usize]
                    .as_ref()
                    .and_then(|s| s.interest.select.as_ref())
                    .is_some_and(|spec| {
                        changes.listing || changes.items.iter().any(|item| selects(spec, item))
                    });
                if matches {
                    hit.push(*id);
                }
            }
        }
        hit.sort_unstable();
        hit.dedup();
        let mut out = Vec::new();
        for id in hit {
            let Some(state) = self.bindings[id as usize].as_mut() else {
                continue;
            };
            if state.reads > 0 {
                state.dirty = true;
            } else {
                out.push((*state.who).clone());
            }
        }
        out
    }

    /// Bindings registered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no binding is registered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The shortest refresh interval among the bindings.
    pub fn interval(&self) -> Option<Duration> {
        self.bindings
            .iter()
            .flatten()
            .map(|s| s.interest.interval)
            .min()
    }

    /// Latest names someone needs.
    pub fn needed_latest(&self) -> BTreeSet<String> {
        self.users.keys().map(|n| n.to_string()).collect()
    }

    /// Pinned versions someone needs.
    pub fn needed_pinned(&self) -> BTreeSet<(String, String)> {
        self.pinned_users
            .keys()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// Whether some binding picks `name` explicitly.
    pub fn picked(&self, name: &str) -> bool {
        self.users.get(name).is_some_and(|u| u.picked > 0)
    }

    /// Whether some binding has a `select`.
    pub fn any_select(&self) -> bool {
        !self.selecting.is_empty()
    }

    /// The pinned versions of `name` someone needs.
    pub fn pinned_of(&self, name: &str) -> Vec<String> {
        self.pinned_range(name)
            .map(|((_, v), _)| v.to_string())
            .collect()
    }

    fn pinned_range<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a (Name, Name), &'a Vec<Id>)> + 'a {
        let from: (Name, Name) = (Name::from(name), Name::from(""));
        self.pinned_users
            .range(from..)
            .take_while(move |((n, _), _)| &**n == name)
    }

    /// The namespaces of the bindings that need what `key` fetches (a
    /// cluster-scoped reference counts as the namespace `""`).
    pub fn namespaces(&self, key: &FetchKey) -> BTreeSet<&str> {
        let ids: Vec<Id> = match key {
            FetchKey::List => self.ids.values().copied().collect(),
            FetchKey::Latest(n) => self
                .users
                .get(n.as_str())
                .map(|u| u.bindings.clone())
                .unwrap_or_default(),
            FetchKey::Pinned(n, v) => self
                .pinned_users
                .get(&(Name::from(n.as_str()), Name::from(v.as_str())))
                .cloned()
                .unwrap_or_default(),
            FetchKey::Versions(n) => self
                .pinned_range(n)
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect(),
        };
        ids.into_iter()
            .filter_map(|id| self.bindings[id as usize].as_ref())
            .map(|s| s.who.namespace.as_deref().unwrap_or(""))
            .collect()
    }

    /// `who`'s read would pass the Secret limit: it keeps only its `select`
    /// (so that a listing change can wake it) and its interval; its picks,
    /// selected names and pins go (a later read registers them again).
    /// Returns what nobody needs now.
    pub fn shed(&mut self, who: &BindingRef) -> Orphans {
        let mut orphans = Orphans::default();
        let Some(state) = self.state(who) else {
            return orphans;
        };
        let kept = Interest {
            select: state.interest.select.clone(),
            interval: state.interest.interval,
            ..Interest::default()
        };
        self.set(who, Some(kept), &mut orphans);
        orphans
    }
}
