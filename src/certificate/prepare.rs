//! Where and how often conversion runs: off the async runtime, once per
//! version.
//!
//! A PFX may cost up to [`super::pfx`]'s budget of key derivation (400,000
//! hash iterations: about a second of one core). Run inside a reconcile, on
//! the runtime, that second would be taken from every other binding and from
//! the Lease renewals of leader election. So the reconcile calls [`prepare`]
//! once, after the vault read and before rendering: it converts the plan's
//! certificates on tokio's blocking pool, at most [`POOL_PERMITS`] at a time,
//! and hands the results to `render` as [`Conversions`]; rendering itself
//! never converts.
//!
//! ```text
//! vault read ─▶ prepare ─┬─ cached (vault, name, version)? ─▶ Arc'd result
//!                        └─ no: permit ─▶ spawn_blocking(convert) ─▶ cache
//!            ─▶ render(Conversions) ─▶ shape looks results up by key
//! ```
//!
//! The cache is keyed by (vault base URL, lower-cased secret name, version),
//! never by the value: a Key Vault version is immutable (a new value is a new
//! version), so a version's bytes cannot differ between two reads and no
//! hash of the value is kept. Failures are cached too: a conversion is
//! deterministic, so a hostile value costs its budget once per version. A
//! version is converted once while it is in use: concurrent reconciles of it
//! (one cluster binding in many namespaces) wait for the same conversion,
//! and every later render reuses it. Bounded against growth by
//! [`CACHE_ENTRIES`] entries and [`CACHE_BYTES`] of converted output, least
//! recently used evicted first: a version no binding renders any more ages
//! out. Key Vault caps a secret's value at 25 KB, so the byte bound holds
//! over a thousand of the largest certificates (and thousands of usual
//! ones, a few KiB each): hundreds of distinct versions do not thrash it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, Semaphore};

use super::{CertError, Converted};
use crate::fetched::Fetched;
use crate::plan::{Plan, PlannedKey};
use crate::value::SecretValue;

/// How many conversions run at once, process-wide. One: the operator's
/// target machine has two cores, and a conversion is pure CPU. With one
/// permit, certificates use at most one core and the other stays with the
/// runtime's workers (Lease renewals, other bindings' reconciles, HTTP);
/// with two, a burst of costly PFX could take both and starve leader
/// election again. Throughput hardly matters: each version converts once.
pub const POOL_PERMITS: usize = 1;

/// Most conversions the cache keeps (successes and failures).
pub const CACHE_ENTRIES: usize = 4096;

/// Most bytes of converted output (`tls.crt`, `tls.key`, subject, plus a
/// fixed overhead per entry) the cache keeps: 32 MiB.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// What one entry costs besides its output: its key, the error's text, the
/// map's bookkeeping (an estimate).
const ENTRY_OVERHEAD: usize = 256;

/// One certificate's conversion, shared by the cache and every render.
pub type Conversion = Arc<Result<Converted, CertError>>;

/// The conversions of one plan's certificates, by the plan's key: what
/// `render` uses instead of converting.
#[derive(Debug, Clone, Default)]
pub struct Conversions {
    by_key: BTreeMap<String, Conversion>,
}

impl Conversions {
    /// No certificates (a plan without any, or a caller that renders none).
    pub fn none() -> Self {
        Self::default()
    }

    /// Converts now, on the calling thread, without the cache: for pure
    /// callers (tests, tools). The reconcile and `kvsync check` use
    /// [`prepare`], which keeps conversion off the async runtime.
    pub fn convert_now(plan: &Plan, fetched: &BTreeMap<String, Fetched>) -> Self {
        let by_key = certificate_values(plan, fetched)
            .map(|(planned, value, _)| {
                (
                    planned.key.clone(),
                    Arc::new(super::convert(value, CONTENT_TYPE)),
                )
            })
            .collect();
        Self { by_key }
    }

    /// The conversion of the certificate planned at `key`, if it was
    /// converted (it had a value).
    pub fn get(&self, key: &str) -> Option<&Result<Converted, CertError>> {
        self.by_key.get(key).map(|c| c.as_ref())
    }
}

/// Converts every certificate of `plan` that has a value in `fetched`, read
/// from the vault at `vault` (its base URL): from the cache, or on the
/// blocking pool (see the module doc). Never blocks the calling task.
pub async fn prepare(vault: &str, plan: &Plan, fetched: &BTreeMap<String, Fetched>) -> Conversions {
    let pending = certificate_values(plan, fetched).map(|(planned, value, version)| {
        let value = value.clone();
        async move {
            let conversion = converted(vault, &planned.secret, version, value).await;
            (planned.key.clone(), conversion)
        }
    });
    Conversions {
        by_key: futures::future::join_all(pending)
            .await
            .into_iter()
            .collect(),
    }
}

/// The backing secret's contentType is not carried in `Fetched`; without
/// one, [`super::convert`] recognises PEM or PFX by the value's shape.
const CONTENT_TYPE: Option<&str> = None;

/// The plan's certificates that have a value: (planned key, value, version).
/// The one place that asks the plan which keys are certificates.
fn certificate_values<'a>(
    plan: &'a Plan,
    fetched: &'a BTreeMap<String, Fetched>,
) -> impl Iterator<Item = (&'a PlannedKey, &'a SecretValue, &'a str)> {
    plan.keys
        .iter()
        .filter(|planned| planned.certificate().is_some())
        .filter_map(|planned| match fetched.get(&planned.key) {
            Some(Fetched::Value { value, version, .. }) => Some((planned, value, version.as_str())),
            _ => None,
        })
}

/// What the cache is keyed by: a version of a backing secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct VersionKey {
    /// The vault's base URL.
    vault: String,
    /// The secret's name, lower-cased (Key Vault names ignore case).
    name: String,
    version: String,
}

/// The conversion of `value`, version `version` of secret `name` in
/// `vault`: cached, or converted on the pool (once, however many ask).
async fn converted(vault: &str, name: &str, version: &str, value: SecretValue) -> Conversion {
    let run = move || async move {
        #[cfg(test)]
        tests::count(vault);
        Arc::new(on_pool(value).await)
    };
    // An empty version (an id the vault sent oddly) names nothing
    // immutable: converted, but not cached.
    if version.is_empty() {
        return run().await;
    }
    let key = VersionKey {
        vault: vault.to_string(),
        name: name.to_lowercase(),
        version: version.to_string(),
    };
    let cell = lock().cell(&key);
    let result = cell.get_or_init(run).await.clone();
    lock().settle(&key, &cell, &result);
    result
}

static POOL: Semaphore = Semaphore::const_new(POOL_PERMITS);

/// Converts on the blocking pool, holding one of the [`POOL_PERMITS`] for
/// the conversion's whole run, even if the awaiting task goes away.
async fn on_pool(value: SecretValue) -> Result<Converted, CertError> {
    let permit = POOL.acquire().await.expect("the pool is never closed");
    let conversion = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        super::convert(&value, CONTENT_TYPE)
    });
    match conversion.await {
        Ok(result) => result,
        // A panic is a bug: it surfaces where it would have inline.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Blocking tasks are cancelled only when the runtime shuts down,
        // and this task with it.
        Err(_) => panic!("certificate conversion cancelled: the runtime is shutting down"),
    }
}

type Cell = Arc<OnceCell<Conversion>>;

struct Entry {
    cell: Cell,
    /// When last used, on the cache's own clock (the key in `order`).
    used: u64,
    /// What it holds, once converted; `None` while converting.
    bytes: Option<usize>,
}

/// The conversions of versions, least recently used first in `order`.
struct Cache {
    entries: BTreeMap<VersionKey, Entry>,
    order: BTreeMap<u64, VersionKey>,
    clock: u64,
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    entries: BTreeMap::new(),
    order: BTreeMap::new(),
    clock: 0,
    bytes: 0,
});

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    // The cache is consistent between statements: a panic elsewhere
    // holding it leaves nothing half-done.
    CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Cache {
    /// The version's cell (new and empty if unknown), marked most recently
    /// used.
    fn cell(&mut self, key: &VersionKey) -> Cell {
        self.clock += 1;
        let now = self.clock;
        let cell = match self.entries.get_mut(key) {
            Some(entry) => {
                self.order.remove(&entry.used);
                entry.used = now;
                entry.cell.clone()
            }
            None => {
                let cell = Cell::default();
                self.entries.insert(
                    key.clone(),
                    Entry {
                        cell: cell.clone(),
                        used: now,
                        bytes: None,
                    },
                );
                cell
            }
        };
        self.order.insert(now, key.clone());
        self.evict();
        cell
    }

    /// Records the size of a finished conversion (once), then evicts down
    /// to the bounds. An entry evicted while it converted is not put back.
    fn settle(&mut self, key: &VersionKey, cell: &Cell, result: &Conversion) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if entry.bytes.is_some() || !Arc::ptr_eq(&entry.cell, cell) {
            return;
        }
        let bytes = ENTRY_OVERHEAD
            + match result.as_ref() {
                Ok(c) => c.tls_crt.len() + c.tls_key.len() + c.subject.len(),
                Err(_) => 0,
            };
        entry.bytes = Some(bytes);
        self.bytes += bytes;
        self.evict();
    }

    fn evict(&mut self) {
        while self.entries.len() > CACHE_ENTRIES || self.bytes > CACHE_BYTES {
            let Some((_, oldest)) = self.order.pop_first() else {
                return;
            };
            if let Some(entry) = self.entries.remove(&oldest) {
                self.bytes -= entry.bytes.unwrap_or(0);
            }
        }
    }
}

#[cfg(test)]
mod tests;
