//! Who needs what from one vault: each binding's interest, with the reverse
//! maps (name → bindings) that let a change find its bindings without a scan
//! of all of them. Everything kept per binding lives in one `BindingState`,
//! so forgetting a binding is complete by construction.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::index::{BindingRef, Changes};
use crate::crd::VaultSecretBindingSpec;
use crate::plan::{Plan, selects};

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
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

/// Everything the poller keeps per binding.
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

#[derive(Debug, Default)]
struct Users {
    bindings: HashSet<BindingRef>,
    /// How many of them pick the name explicitly (not through a `select`).
    picked: usize,
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
    bindings: HashMap<BindingRef, BindingState>,
    /// Latest name → who uses it.
    users: HashMap<String, Users>,
    /// Pinned (name, version) → who uses it.
    pinned_users: HashMap<(String, String), HashSet<BindingRef>>,
    /// Bindings with a `select`.
    selecting: HashSet<BindingRef>,
}

impl Interests {
    /// Records what `spec` needs. The names a `select` planned are kept until
    /// the next plan ([`Interests::set_selected`]) when the `select` is the same.
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
        self.set(who, Some(interest), &mut Orphans::default());
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
            self.set(who, Some(interest), &mut Orphans::default());
        }
    }

    /// Removes `who`; `None` when it was not there, else what nobody needs now.
    pub fn remove(&mut self, who: &BindingRef) -> Option<Orphans> {
        if !self.bindings.contains_key(who) {
            return None;
        }
        let mut orphans = Orphans::default();
        self.set(who, None, &mut orphans);
        Some(orphans)
    }

    /// Removes every binding for which `keep` is false; returns them, and
    /// what nobody needs now.
    pub fn retain(&mut self, keep: impl Fn(&BindingRef) -> bool) -> (Vec<BindingRef>, Orphans) {
        let gone: Vec<BindingRef> = self
            .bindings
            .keys()
            .filter(|who| !keep(who))
            .cloned()
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
                        orphans.latest.push(n.clone());
                    }
                }
            }
            for p in &old.pinned {
                if let Some(u) = self.pinned_users.get_mut(p) {
                    u.remove(who);
                    if u.is_empty() {
                        self.pinned_users.remove(p);
                        orphans.pinned.push(p.clone());
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

    /// A read of `who` begins: changes it will see are not woken for.
    pub fn begin_read(&mut self, who: &BindingRef) {
        if let Some(state) = self.bindings.get_mut(who) {
            state.reads += 1;
        }
    }

    /// `who` has looked at everything applied so far.
    pub fn seen(&mut self, who: &BindingRef) {
        if let Some(state) = self.bindings.get_mut(who) {
            state.dirty = false;
        }
    }

    /// A read of `who` ended; true when something it uses changed after it
    /// looked (it must be woken).
    pub fn end_read(&mut self, who: &BindingRef) -> bool {
        match self.bindings.get_mut(who) {
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
        let mut out = Vec::new();
        for who in hit {
            let Some(state) = self.bindings.get_mut(&who) else {
                continue;
            };
            if state.reads > 0 {
                state.dirty = true;
            } else {
                out.push(who);
            }
        }
        out
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

    /// Latest names someone needs.
    pub fn needed_latest(&self) -> BTreeSet<String> {
        self.users.keys().cloned().collect()
    }

    /// Pinned versions someone needs.
    pub fn needed_pinned(&self) -> BTreeSet<(String, String)> {
        self.pinned_users.keys().cloned().collect()
    }

    /// Whether some binding picks `name` explicitly.
    pub fn picked(&self, name: &str) -> bool {
        self.users.get(name).is_some_and(|u| u.picked > 0)
    }

    /// Whether some binding has a `select`.
    pub fn any_select(&self) -> bool {
        !self.selecting.is_empty()
    }
}
