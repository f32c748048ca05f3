//! The dev vault's state: secrets with versions, access rules, request
//! counts and injected faults. Pure data; the HTTP layer sits in `server`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::seed::{AccessEntry, Seed, Throttle, pattern_matches};
use crate::value::SecretValue;

/// One version of a secret.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    /// 32 hex characters.
    pub id: String,
    /// The value.
    pub value: SecretValue,
    /// Content type.
    pub content_type: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Enabled.
    pub enabled: bool,
    /// Not before (unix seconds).
    pub nbf: Option<i64>,
    /// Expiry (unix seconds).
    pub exp: Option<i64>,
    /// Created (unix seconds).
    pub created: i64,
    /// Updated (unix seconds).
    pub updated: i64,
}

/// A secret: its name as first written, and its versions (last is latest).
#[derive(Debug, Clone)]
pub struct SecretEntry {
    /// Name as created.
    pub name: String,
    /// Versions, oldest first.
    pub versions: Vec<StoredVersion>,
}

/// Attribute changes of `PATCH /secrets/{name}/{version}` and of a new version.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributesPatch {
    /// Enabled.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Not before.
    #[serde(default)]
    pub nbf: Option<i64>,
    /// Expiry.
    #[serde(default)]
    pub exp: Option<i64>,
}

/// A fault to inject, as posted to `/_dev/faults`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    /// Operation it applies to (`get_secret`, `list_secrets`, `list_versions`,
    /// `set_secret`, `update_secret`, `delete_secret`, `token`) or `*`.
    #[serde(default = "any_op")]
    pub op: String,
    /// Only requests for this secret name.
    #[serde(default)]
    pub secret: Option<String>,
    /// HTTP status to answer with.
    #[serde(default)]
    pub status: Option<u16>,
    /// Azure error code (`error.code`).
    #[serde(default)]
    pub code: Option<String>,
    /// Azure error message.
    #[serde(default)]
    pub message: Option<String>,
    /// `error.innererror.code`, e.g. `ForbiddenByFirewall`.
    #[serde(default)]
    pub inner_code: Option<String>,
    /// `Retry-After` seconds.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Delay before answering (or before the normal answer when no status).
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop: bool,
    /// Apply to this many requests, then stop.
    #[serde(default)]
    pub count: Option<u32>,
    /// Apply for this long, then stop.
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

fn any_op() -> String {
    "*".into()
}

/// Operation labels of `/_dev/stats`.
pub const OPS: &[&str] = &[
    "get_secret",
    "list_secrets",
    "list_versions",
    "set_secret",
    "update_secret",
    "delete_secret",
    "token",
];

impl FaultSpec {
    /// Checks a posted fault.
    pub fn check(&self) -> Result<(), String> {
        if self.op != "*" && !OPS.contains(&self.op.as_str()) {
            return Err(format!(
                "op {:?} is not one of {} or *",
                self.op,
                OPS.join(", ")
            ));
        }
        if let Some(s) = self.status
            && !(400..=599).contains(&s)
        {
            return Err(format!("status {s} is not an error status (400-599)"));
        }
        if self.status.is_none() && self.latency_ms.is_none() && !self.drop {
            return Err("a fault needs a status, a latencyMs or drop: true".into());
        }
        Ok(())
    }
}

/// Key Vault's service limit over a sliding window: the instants of the
/// requests admitted within the last window.
#[derive(Debug)]
struct Limiter {
    limit: usize,
    window: Duration,
    admitted: VecDeque<Instant>,
}

impl Limiter {
    fn new(t: Throttle) -> Self {
        Self {
            limit: t.transactions as usize,
            window: Duration::from_secs(t.window_seconds),
            admitted: VecDeque::new(),
        }
    }

    /// Admits a request at `now`, or says how long until one would be.
    fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        while self
            .admitted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.admitted.pop_front();
        }
        if self.admitted.len() < self.limit {
            self.admitted.push_back(now);
            return Ok(());
        }
        let oldest = *self
            .admitted
            .front()
            .expect("a full window holds a request");
        Err((oldest + self.window).saturating_duration_since(now))
    }
}

struct ActiveFault {
    spec: FaultSpec,
    remaining: Option<u32>,
    until: Option<Instant>,
}

/// The state of one dev vault.
pub struct VaultState {
    secrets: BTreeMap<String, SecretEntry>,
    access: Option<Vec<AccessEntry>>,
    stats: BTreeMap<String, BTreeMap<String, u64>>,
    faults: Vec<ActiveFault>,
    assertion_subjects: BTreeMap<String, Vec<String>>,
    limiter: Option<Limiter>,
}

/// Stats as served by `GET /_dev/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// `{OP: {STATUS: COUNT}}`.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// Subjects of the client assertions received, per client id, in order.
    pub assertion_subjects: BTreeMap<String, Vec<String>>,
}

impl Stats {
    /// Requests of `op` with `status`.
    pub fn count(&self, op: &str, status: u16) -> u64 {
        self.requests
            .get(op)
            .and_then(|m| m.get(&status.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Requests of `op`, any status.
    pub fn total(&self, op: &str) -> u64 {
        self.requests.get(op).map(|m| m.values().sum()).unwrap_or(0)
    }
}

/// A new random version id (32 lower-case hex characters, like Azure's).
pub fn new_version_id() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system random");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl VaultState {
    /// State from a seed, with every seeded version created at `now`.
    pub fn from_seed(seed: &Seed, now: i64) -> Self {
        let mut state = Self {
            secrets: BTreeMap::new(),
            access: seed.access.clone(),
            stats: BTreeMap::new(),
            faults: Vec::new(),
            assertion_subjects: BTreeMap::new(),
            limiter: seed.throttle.map(Limiter::new),
        };
        for s in &seed.secrets {
            state.set(
                &s.name,
                s.value.clone(),
                s.tags.clone(),
                s.content_type.clone(),
                AttributesPatch {
                    enabled: s.enabled,
                    nbf: s.not_before.as_ref().and_then(|t| t.unix().ok()),
                    exp: s.expires.as_ref().and_then(|t| t.unix().ok()),
                },
                now,
            );
        }
        state
    }

    /// The secret called `name` (case-insensitive).
    pub fn entry(&self, name: &str) -> Option<&SecretEntry> {
        self.secrets.get(&name.to_ascii_lowercase())
    }

    /// The name as the secret was created (Key Vault keeps its case), or
    /// `name` itself when there is no such secret.
    pub fn display_name(&self, name: &str) -> String {
        self.entry(name)
            .map(|e| e.name.clone())
            .unwrap_or_else(|| name.to_string())
    }

    /// A version of `name`: the latest when `version` is empty.
    pub fn version(&self, name: &str, version: &str) -> Option<&StoredVersion> {
        let entry = self.entry(name)?;
        if version.is_empty() {
            entry.versions.last()
        } else {
            entry
                .versions
                .iter()
                .find(|v| v.id.eq_ignore_ascii_case(version))
        }
    }

    /// Adds a version (creating the secret) and returns it.
    pub fn set(
        &mut self,
        name: &str,
        value: SecretValue,
        tags: BTreeMap<String, String>,
        content_type: Option<String>,
        attrs: AttributesPatch,
        now: i64,
    ) -> StoredVersion {
        let entry = self
            .secrets
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| SecretEntry {
                name: name.to_string(),
                versions: Vec::new(),
            });
        let v = StoredVersion {
            id: new_version_id(),
            value,
            content_type,
            tags,
            enabled: attrs.enabled.unwrap_or(true),
            nbf: attrs.nbf,
            exp: attrs.exp,
            created: now,
            updated: now,
        };
        entry.versions.push(v.clone());
        v
    }

    /// Updates attributes, tags or content type of a version (latest when empty).
    pub fn update(
        &mut self,
        name: &str,
        version: &str,
        attrs: AttributesPatch,
        tags: Option<BTreeMap<String, String>>,
        content_type: Option<String>,
        now: i64,
    ) -> Option<StoredVersion> {
        let entry = self.secrets.get_mut(&name.to_ascii_lowercase())?;
        let v = if version.is_empty() {
            entry.versions.last_mut()?
        } else {
            entry
                .versions
                .iter_mut()
                .find(|v| v.id.eq_ignore_ascii_case(version))?
        };
        if let Some(e) = attrs.enabled {
            v.enabled = e;
        }
        if attrs.nbf.is_some() {
            v.nbf = attrs.nbf;
        }
        if attrs.exp.is_some() {
            v.exp = attrs.exp;
        }
        if let Some(t) = tags {
            v.tags = t;
        }
        if content_type.is_some() {
            v.content_type = content_type;
        }
        v.updated = now;
        Some(v.clone())
    }

    /// Deletes a secret with all its versions.
    pub fn delete(&mut self, name: &str) -> Option<SecretEntry> {
        self.secrets.remove(&name.to_ascii_lowercase())
    }

    /// Every secret with its latest version, by name.
    pub fn list(&self) -> Vec<(&str, &StoredVersion)> {
        self.secrets
            .values()
            .filter_map(|e| e.versions.last().map(|v| (e.name.as_str(), v)))
            .collect()
    }

    /// May `client` read `name` (`None`: list the vault)?
    pub fn allowed(&self, client: &str, name: Option<&str>) -> bool {
        let Some(rules) = &self.access else {
            return true;
        };
        let entry = rules
            .iter()
            .find(|r| r.client_id == client)
            .or_else(|| rules.iter().find(|r| r.client_id == "*"));
        let Some(entry) = entry else {
            return false;
        };
        match name {
            None => entry.secrets.iter().any(|p| p == "*"),
            Some(n) => entry.secrets.iter().any(|p| pattern_matches(p, n)),
        }
    }

    /// The client secret the seed requires of `client`, if any.
    pub fn required_client_secret(&self, client: &str) -> Option<&SecretValue> {
        self.access
            .as_ref()?
            .iter()
            .find(|r| r.client_id == client)?
            .client_secret
            .as_ref()
    }

    /// Counts a request.
    pub fn count(&mut self, op: &str, status: u16) {
        *self
            .stats
            .entry(op.to_string())
            .or_default()
            .entry(status.to_string())
            .or_default() += 1;
    }

    /// Remembers the subject of a client assertion.
    pub fn remember_subject(&mut self, client: &str, sub: &str) {
        self.assertion_subjects
            .entry(client.to_string())
            .or_default()
            .push(sub.to_string());
    }

    /// The counts since start or the last reset.
    pub fn stats(&self) -> Stats {
        Stats {
            requests: self.stats.clone(),
            assertion_subjects: self.assertion_subjects.clone(),
        }
    }

    /// Forgets the counts.
    pub fn reset_stats(&mut self) {
        self.stats.clear();
        self.assertion_subjects.clear();
    }

    /// Adds a fault (checked by the caller).
    pub fn add_fault(&mut self, spec: FaultSpec) {
        self.faults.push(ActiveFault {
            remaining: spec.count,
            until: spec
                .duration_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms)),
            spec,
        });
    }

    /// Removes every fault.
    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// Admits one Key Vault request at `now` under the seed's service limit
    /// (always, without one), or gives the `Retry-After` seconds of the 429:
    /// until the oldest request of the window leaves it, at least 1 — the
    /// header has whole seconds, and 0 would invite an immediate retry that
    /// is refused again. A refused request does not count.
    pub fn admit(&mut self, now: Instant) -> Result<(), u64> {
        match self.limiter.as_mut().map(|l| l.admit(now)) {
            None | Some(Ok(())) => Ok(()),
            Some(Err(wait)) => Err(wait.as_secs_f64().ceil().max(1.0) as u64),
        }
    }

    /// The fault that applies to this request, if any (consuming one use).
    pub fn take_fault(&mut self, op: &str, secret: Option<&str>) -> Option<FaultSpec> {
        let now = Instant::now();
        self.faults
            .retain(|f| f.remaining != Some(0) && f.until.is_none_or(|u| u > now));
        // The newest matching fault wins: adding one overrides what was
        // injected before, with no gap in between.
        let fault = self.faults.iter_mut().rev().find(|f| {
            (f.spec.op == "*" || f.spec.op == op)
                && f.spec
                    .secret
                    .as_deref()
                    .is_none_or(|s| secret.is_some_and(|n| n.eq_ignore_ascii_case(s)))
        })?;
        if let Some(r) = fault.remaining.as_mut() {
            *r -= 1;
        }
        Some(fault.spec.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded() -> VaultState {
        let seed = Seed::from_yaml(
            r#"
secrets:
  - {name: db-password, value: v1}
  - {name: db-password, value: v2}
  - {name: public-key, value: k}
access:
  - {clientId: restricted-app, secrets: ["public-*"]}
  - {clientId: nobody, secrets: []}
  - {clientId: "*", secrets: ["*"]}
"#,
        )
        .unwrap();
        VaultState::from_seed(&seed, 1000)
    }

    #[test]
    fn later_seed_entries_are_newer_versions() {
        let s = seeded();
        let e = s.entry("DB-PASSWORD").unwrap();
        assert_eq!(e.versions.len(), 2);
        assert_eq!(s.version("db-password", "").unwrap().value.expose(), "v2");
        let first = e.versions[0].id.clone();
        assert_eq!(
            s.version("db-password", &first).unwrap().value.expose(),
            "v1"
        );
    }

    #[test]
    fn access_rules_scope_reads_and_listing() {
        let s = seeded();
        assert!(s.allowed("restricted-app", Some("public-key")));
        assert!(!s.allowed("restricted-app", Some("db-password")));
        assert!(!s.allowed("restricted-app", None));
        assert!(s.allowed("someone-else", None));
        assert!(!s.allowed("nobody", Some("public-key")));
    }

    #[test]
    fn faults_apply_to_their_op_and_run_out() {
        let mut s = seeded();
        s.add_fault(FaultSpec {
            op: "get_secret".into(),
            status: Some(503),
            count: Some(2),
            ..Default::default()
        });
        assert!(s.take_fault("list_secrets", None).is_none());
        assert!(s.take_fault("get_secret", Some("a")).is_some());
        assert!(s.take_fault("get_secret", Some("a")).is_some());
        assert!(s.take_fault("get_secret", Some("a")).is_none());
    }

    fn throttled(transactions: u32, window_seconds: u64) -> VaultState {
        let seed = Seed {
            throttle: Some(Throttle {
                transactions,
                window_seconds,
            }),
            ..Seed::default()
        };
        VaultState::from_seed(&seed, 1000)
    }

    #[test]
    fn without_a_throttle_every_request_is_admitted() {
        let mut s = seeded();
        let now = Instant::now();
        assert!((0..10_000).all(|_| s.admit(now).is_ok()));
    }

    #[test]
    fn a_throttle_refuses_beyond_its_limit_until_the_oldest_request_leaves_the_window() {
        let mut s = throttled(3, 10);
        let t0 = Instant::now();
        assert_eq!(s.admit(t0), Ok(()));
        assert_eq!(s.admit(t0 + Duration::from_secs(4)), Ok(()));
        assert_eq!(s.admit(t0 + Duration::from_millis(4500)), Ok(()));
        // Full: the first leaves the window at t0 + 10 s.
        assert_eq!(s.admit(t0 + Duration::from_secs(6)), Err(4));
        assert_eq!(s.admit(t0 + Duration::from_millis(9100)), Err(1));
        assert_eq!(s.admit(t0 + Duration::from_secs(10)), Ok(()));
        // Now the second is the oldest: it leaves at t0 + 14 s.
        assert_eq!(s.admit(t0 + Duration::from_millis(10_500)), Err(4));
    }

    #[test]
    fn refused_requests_do_not_count_towards_the_limit() {
        let mut s = throttled(1, 10);
        let t0 = Instant::now();
        assert_eq!(s.admit(t0), Ok(()));
        for ms in (1000..9000).step_by(500) {
            assert!(s.admit(t0 + Duration::from_millis(ms)).is_err());
        }
        assert_eq!(
            s.admit(t0 + Duration::from_secs(10)),
            Ok(()),
            "the refusals did not extend the window"
        );
    }

    #[test]
    fn fault_checks() {
        assert!(
            FaultSpec {
                op: "bogus".into(),
                status: Some(500),
                ..Default::default()
            }
            .check()
            .is_err()
        );
        assert!(
            FaultSpec {
                op: "*".into(),
                ..Default::default()
            }
            .check()
            .is_err()
        );
        assert!(
            FaultSpec {
                op: "*".into(),
                status: Some(200),
                ..Default::default()
            }
            .check()
            .is_err()
        );
        assert!(
            FaultSpec {
                op: "token".into(),
                drop: true,
                ..Default::default()
            }
            .check()
            .is_ok()
        );
    }
}
