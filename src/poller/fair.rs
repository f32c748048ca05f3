//! Fair shares of a poller's requests between namespaces: one tenant's many
//! names, pins or force-syncs must not delay another's.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `per` requests of one namespace hold a poller's read permits at
/// once: the rest stay free for the other namespaces, whatever one of them
/// asks (many bindings force-synced at once, or many slow names).
pub struct Shares {
    per: usize,
    map: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Shares {
    /// `per` requests per namespace.
    pub fn new(per: usize) -> Self {
        Self {
            per,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a share of `namespace` (FIFO within it).
    pub async fn acquire(&self, namespace: &str) -> OwnedSemaphorePermit {
        let sem = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            // Namespaces nobody waits on or holds are dropped as we go.
            map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < self.per);
            map.entry(namespace.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per)))
                .clone()
        };
        sem.acquire_owned().await.expect("never closed")
    }
}

/// The order in which to send requests `0..owners.len()`, where
/// `owners[i]` is the set of namespaces that need request `i`: round-robin
/// over the namespaces (in name order), each taking its next request not
/// yet taken, so a request several namespaces need is sent once, in the
/// turn of the first to reach it. A request nobody owns goes last.
pub fn round_robin(owners: &[BTreeSet<&str>]) -> Vec<usize> {
    let mut queues: BTreeMap<&str, VecDeque<usize>> = BTreeMap::new();
    let mut orphans = Vec::new();
    for (i, ns) in owners.iter().enumerate() {
        if ns.is_empty() {
            orphans.push(i);
        }
        for n in ns {
            queues.entry(n).or_default().push_back(i);
        }
    }
    let mut taken = vec![false; owners.len()];
    let mut out = Vec::with_capacity(owners.len());
    loop {
        let mut progressed = false;
        for q in queues.values_mut() {
            while let Some(i) = q.pop_front() {
                if !std::mem::replace(&mut taken[i], true) {
                    out.push(i);
                    progressed = true;
                    break;
                }
            }
        }
        if !progressed {
            break;
        }
    }
    out.extend(orphans);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(v: &[&[&'static str]]) -> Vec<BTreeSet<&'static str>> {
        v.iter().map(|s| s.iter().copied().collect()).collect()
    }

    #[test]
    fn each_namespace_takes_one_request_per_turn() {
        // a needs 0..4, b needs 4, c needs 5.
        let owners = of(&[&["a"], &["a"], &["a"], &["a"], &["b"], &["c"]]);
        assert_eq!(round_robin(&owners), [0, 4, 5, 1, 2, 3]);
    }

    #[test]
    fn a_shared_request_is_sent_once() {
        let owners = of(&[&["a", "b"], &["a"], &["b"], &[]]);
        let order = round_robin(&owners);
        assert_eq!(order, [0, 2, 1, 3], "b's turn takes its next one");
    }
}
