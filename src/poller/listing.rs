//! The vault's listing as the poller keeps it: trimmed to what change
//! detection and `select` need, sorted for lookups by name, compared between
//! cycles for what a `select` would see differently; and the choice between
//! listing and GETting.

use crate::azure::keyvault::{PAGE_SIZE, SecretItem};

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

/// Key Vault names are case-insensitive: so are the order and lookups.
pub fn cmp_name(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

/// Key Vault's `updated` has one-second resolution: a version written in the
/// second of (or before) our last read may hide behind an equal timestamp.
/// `read_at` is the vault's clock when it served that read.
pub fn ambiguous(updated: Option<i64>, read_at: Option<i64>) -> bool {
    match (updated, read_at) {
        (Some(u), Some(r)) => u.saturating_add(1) >= r,
        _ => true,
    }
}

/// Drops what nothing reads: values are never listed, and of the attributes
/// only `enabled`, `exp` and `updated` matter; tags only to a `select`.
pub fn trim(mut item: SecretItem, tags: bool) -> SecretItem {
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

/// The item called `name` in a listing sorted by [`cmp_name`].
pub fn find<'a>(items: &'a [SecretItem], name: &str) -> Option<&'a SecretItem> {
    items
        .binary_search_by(|i| cmp_name(i.name(), name))
        .ok()
        .map(|at| &items[at])
}

/// Items whose presence, `enabled` or tags differ between two sorted listings.
pub fn select_diff(old: &[SecretItem], new: &[SecretItem], tags: bool) -> Vec<SecretItem> {
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

    #[test]
    fn the_one_second_rule_survives_absurd_timestamps() {
        assert!(ambiguous(Some(100), Some(101)), "same second as the read");
        assert!(!ambiguous(Some(100), Some(102)));
        assert!(ambiguous(Some(i64::MAX), Some(0)), "no overflow");
        assert!(!ambiguous(Some(i64::MIN), Some(0)));
        assert!(ambiguous(None, Some(0)) && ambiguous(Some(0), None));
    }
}
