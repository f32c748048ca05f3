//! Pinned versions (`spec.secrets[].version`). A version's value never
//! changes, so it is read by GET once; what can change (enabled, expiry) or
//! vanish (a deleted secret) is seen in the name's versions listing
//! (`GET /secrets/{name}/versions`), one request per name per cycle however
//! many versions of it are pinned. A version the listing does not show is
//! missing until a later listing shows it: it is not read again every cycle.
//! An identity that may not list (a Get-only access policy) checks its pins
//! by GET, as before, and the listing is tried again every
//! [`LIST_RETRY_CYCLES`] cycles.

use std::collections::BTreeSet;
use std::time::Instant;

use super::{Entry, Failure, FetchKey, Index, Known, LIST_RETRY_CYCLES};
use crate::azure::keyvault::SecretItem;
use crate::reason::Reason;

impl Index {
    /// The cycle's checks of pinned versions: one versions listing per
    /// pinned name, or, for a name whose listing is refused, a GET per
    /// version (until the listing is tried again).
    pub(super) fn pin_checks(&mut self) -> Vec<FetchKey> {
        let names: BTreeSet<String> = self.needed_pinned().into_iter().map(|(n, _)| n).collect();
        self.versions_refused.retain(|n, _| names.contains(n));
        let mut out = Vec::new();
        for name in names {
            match self.versions_refused.get_mut(&name) {
                Some(cycles) if *cycles < LIST_RETRY_CYCLES => {
                    *cycles += 1;
                    out.extend(
                        self.interests
                            .pinned_of(&name)
                            .into_iter()
                            .map(|v| FetchKey::Pinned(name.clone(), v)),
                    );
                }
                _ => out.push(FetchKey::Versions(name)),
            }
        }
        out
    }

    /// Whether a read must check the pinned `(name, version)` with the
    /// versions listing (its value is cached: only its attributes can have
    /// changed) rather than GET it.
    pub(super) fn pin_by_listing(&self, name: &str, version: &str) -> bool {
        if self.versions_refused.contains_key(name) {
            return false;
        }
        let key = (name.to_string(), version.to_string());
        matches!(self.pinned.get(&key), Some(Entry { known: Known::Value { version: v, .. }, .. })
            if self.values.contains_key(&(name.to_string(), v.clone())))
    }

    /// Applies a versions listing of `name`, taken at `now`, to every pinned
    /// version of it that is needed or known.
    pub fn apply_versions(
        &mut self,
        name: &str,
        result: Result<Vec<SecretItem>, Failure>,
        now: Instant,
    ) -> super::Changes {
        let mut changes = super::Changes::default();
        let refused = matches!(&result, Err(f) if f.reason() == Reason::ListForbidden);
        if refused {
            // Checked by GET until the listing is tried again; the pins'
            // state is not this refusal's to change.
            self.versions_refused.insert(name.to_string(), 0);
            return changes;
        }
        self.versions_refused.remove(name);
        let mut versions: BTreeSet<String> = self.interests.pinned_of(name).into_iter().collect();
        versions.extend(self.pinned_versions_known(name));
        for version in versions {
            let key = (name.to_string(), version.clone());
            let entry = self.pinned.entry(key.clone()).or_default();
            let before = entry.observed();
            let mut drop_value = None;
            match &result {
                Ok(items) => {
                    let item = items
                        .iter()
                        .find(|i| i.version().eq_ignore_ascii_case(&version));
                    match item {
                        // A version that was there and is no longer
                        // listed: a GET must confirm it (only Azure's
                        // SecretNotFound makes it missing — a short or
                        // oddly paged listing must not drop a key).
                        None if matches!(entry.known, Known::Value { .. }) => {
                            entry.known = Known::Unknown;
                            entry.failure = None;
                            entry.checked = None;
                        }
                        None => {
                            drop_value = value_version(&entry.known);
                            entry.known = Known::Missing;
                            entry.failure = None;
                            entry.checked = Some(now);
                        }
                        Some(i) if !i.attributes.is_enabled() => {
                            drop_value = value_version(&entry.known);
                            entry.known = Known::Disabled;
                            entry.failure = None;
                            entry.checked = Some(now);
                        }
                        Some(i) => {
                            let cached = value_version(&entry.known)
                                .is_some_and(|v| self.values.contains_key(&(name.to_string(), v)));
                            if cached {
                                if let Known::Value {
                                    updated, expires, ..
                                } = &mut entry.known
                                {
                                    *updated = i.attributes.updated;
                                    *expires = i.attributes.exp;
                                }
                                entry.failure = None;
                                entry.checked = Some(now);
                            } else {
                                // Enabled, and its value never read (or no
                                // longer kept): a GET must tell.
                                entry.known = Known::Unknown;
                                entry.failure = None;
                                entry.checked = None;
                            }
                        }
                    }
                }
                // The secret itself is gone: so is every version of it.
                Err(f) if f.is_not_found() => {
                    drop_value = value_version(&entry.known);
                    entry.known = Known::Missing;
                    entry.failure = None;
                    entry.checked = Some(now);
                }
                Err(f) => entry.failure = Some((now, f.clone())),
            }
            if entry.observed() != before {
                changes.pinned.insert(key);
            }
            if let Some(v) = drop_value {
                self.drop_value_if_unused(name, &v);
            }
        }
        self.wake(&changes);
        changes
    }

    /// The versions of `name` the index holds an entry for.
    fn pinned_versions_known(&self, name: &str) -> Vec<String> {
        let from = (name.to_string(), String::new());
        self.pinned
            .range(from..)
            .take_while(|((n, _), _)| n == name)
            .map(|((_, v), _)| v.clone())
            .collect()
    }

    /// After a cycle's pin checks (begun at `since`): GETs of the needed
    /// pinned versions whose value must be read (never read, enabled again)
    /// or whose listing was refused during the cycle.
    pub fn after_versions(&self, since: Instant) -> Vec<FetchKey> {
        self.needed_pinned()
            .into_iter()
            .filter(|(n, v)| {
                let Some(e) = self.pinned.get(&(n.clone(), v.clone())) else {
                    return true;
                };
                let unchecked = e.failure.is_none() && e.checked.is_none_or(|c| c < since);
                match &e.known {
                    Known::Unknown => e.failure.is_none(),
                    Known::Value { version, .. } => {
                        !self.values.contains_key(&(n.clone(), version.clone()))
                            || (unchecked && self.versions_refused.contains_key(n))
                    }
                    Known::Disabled | Known::Missing => {
                        unchecked && self.versions_refused.contains_key(n)
                    }
                }
            })
            .map(|(n, v)| FetchKey::Pinned(n, v))
            .collect()
    }
}

fn value_version(known: &Known) -> Option<String> {
    match known {
        Known::Value { version, .. } => Some(version.clone()),
        _ => None,
    }
}
