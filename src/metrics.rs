//! Prometheus metrics of the operator, served on `/metrics`. Labels name
//! vaults, bindings and secrets — never values.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a Key Vault request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VaultRequestLabels {
    /// Vault short name.
    pub vault: String,
    /// `get_secret`, `list_secrets`, `list_versions`.
    pub op: String,
    /// HTTP status, or `error` for a transport failure.
    pub status: String,
}

/// Labels of a sync result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// `success` or `failure`.
    pub result: String,
    /// Condition reason.
    pub reason: String,
}

/// Labels of a secret's expiry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpiryLabels {
    /// Binding namespace.
    pub namespace: String,
    /// Binding name.
    pub binding: String,
    /// Vault secret name.
    pub secret: String,
}

/// Labels of the binding count by readiness.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    /// `true` or `false`.
    pub ready: String,
}

/// What failed outside a binding's own sync: the watches that feed the
/// controller, or the Kubernetes API during a reconcile. A closed set, so an
/// alert can name each kind; the label is [`ReconcileErrorKind::as_str`].
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReconcileErrorKind {
    /// Listing or watching VaultSecretBindings answered 404: the CRD is not installed.
    WatchBindingsNotFound,
    /// Listing or watching VaultSecretBindings answered 403: RBAC lacks list/watch.
    WatchBindingsForbidden,
    /// Listing or watching the managed Secrets answered 403: RBAC lacks list/watch.
    WatchSecretsForbidden,
    /// Listing or watching ServiceAccounts (identities) answered 403: RBAC lacks list/watch.
    WatchServiceAccountsForbidden,
    /// Listing or watching VaultAccessPolicies answered 404: the CRD is not installed.
    WatchPoliciesNotFound,
    /// Listing or watching VaultAccessPolicies or Namespaces answered 403.
    WatchPoliciesForbidden,
    /// Any other watch failure (connection, timeout, 5xx, an expired resourceVersion).
    WatchOther,
    /// A Kubernetes API call of a reconcile failed (the controller retries with backoff).
    Kube,
}

impl ReconcileErrorKind {
    /// Every kind, so each series exists (at 0) from the start.
    pub const ALL: &'static [ReconcileErrorKind] = &[
        Self::WatchBindingsNotFound,
        Self::WatchBindingsForbidden,
        Self::WatchSecretsForbidden,
        Self::WatchServiceAccountsForbidden,
        Self::WatchPoliciesNotFound,
        Self::WatchPoliciesForbidden,
        Self::WatchOther,
        Self::Kube,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WatchBindingsNotFound => "watch_bindings_not_found",
            Self::WatchBindingsForbidden => "watch_bindings_forbidden",
            Self::WatchSecretsForbidden => "watch_secrets_forbidden",
            Self::WatchServiceAccountsForbidden => "watch_serviceaccounts_forbidden",
            Self::WatchPoliciesNotFound => "watch_policies_not_found",
            Self::WatchPoliciesForbidden => "watch_policies_forbidden",
            Self::WatchOther => "watch_other",
            Self::Kube => "kube",
        }
    }
}

impl EncodeLabelValue for ReconcileErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// Labels of `kvsync_reconcile_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileErrorLabels {
    /// What failed.
    pub kind: ReconcileErrorKind,
}

/// The series one binding contributes, kept together so that forgetting a
/// binding drops all of them.
#[derive(Default)]
struct BindingSeries {
    /// Its last Ready state, when it has one (counted in `kvsync_bindings`).
    ready: Option<bool>,
    /// Vault secrets with a `kvsync_secret_expiry_timestamp_seconds` series.
    expiring: BTreeSet<String>,
}

/// Every metric of the operator.
pub struct Metrics {
    registry: Registry,
    /// Key Vault requests by vault, operation and status.
    pub vault_requests: Family<VaultRequestLabels, Counter>,
    /// Reconciles by result and reason.
    pub syncs: Family<SyncLabels, Counter>,
    /// Reconcile durations.
    pub sync_duration: Histogram,
    /// Writes of Secrets.
    pub secret_writes: Counter,
    /// Expiry of synced secrets (unix seconds).
    pub secret_expiry: Family<ExpiryLabels, Gauge>,
    /// Bindings by Ready state.
    pub bindings: Family<ReadyLabels, Gauge>,
    /// Watch and Kubernetes API failures by kind.
    pub reconcile_errors: Family<ReconcileErrorLabels, Counter>,
    /// Per binding (`namespace/name`), the series it contributes.
    per_binding: Mutex<HashMap<String, BindingSeries>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kvsync");
        let vault_requests = Family::<VaultRequestLabels, Counter>::default();
        registry.register(
            "keyvault_requests",
            "Key Vault requests by vault, operation and HTTP status",
            vault_requests.clone(),
        );
        let syncs = Family::<SyncLabels, Counter>::default();
        registry.register(
            "syncs",
            "Reconciles of bindings by result and reason",
            syncs.clone(),
        );
        let sync_duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "sync_duration_seconds",
            "Duration of one binding's reconcile",
            sync_duration.clone(),
        );
        let secret_writes = Counter::default();
        registry.register(
            "secret_writes",
            "Writes of Kubernetes Secrets",
            secret_writes.clone(),
        );
        let secret_expiry = Family::<ExpiryLabels, Gauge>::default();
        registry.register(
            "secret_expiry_timestamp_seconds",
            "Expiry of synced vault secrets that have one",
            secret_expiry.clone(),
        );
        let bindings = Family::<ReadyLabels, Gauge>::default();
        registry.register(
            "bindings",
            "VaultSecretBindings by Ready state",
            bindings.clone(),
        );
        let reconcile_errors = Family::<ReconcileErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failures outside a binding's sync, by kind: watch_bindings_not_found (the \
             VaultSecretBinding CRD is not installed), watch_bindings_forbidden and \
             watch_secrets_forbidden (RBAC lacks list/watch), watch_other (any other watch \
             failure), kube (a Kubernetes API call of a reconcile failed)",
            reconcile_errors.clone(),
        );
        for kind in ReconcileErrorKind::ALL {
            // Each series exists from the start: an alert on `increase()` needs a 0 to begin from.
            reconcile_errors
                .get_or_create(&ReconcileErrorLabels { kind: *kind })
                .inc_by(0);
        }
        Self {
            registry,
            vault_requests,
            syncs,
            sync_duration,
            secret_writes,
            secret_expiry,
            bindings,
            reconcile_errors,
            per_binding: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// Counts a Key Vault request.
    pub fn vault_request(&self, vault: &str, op: &str, status: Option<u16>) {
        self.vault_requests
            .get_or_create(&VaultRequestLabels {
                vault: vault.to_string(),
                op: op.to_string(),
                status: status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "error".into()),
            })
            .inc();
    }

    /// Records a binding's readiness (`None`: deleted). `binding` is
    /// `namespace/name`.
    pub fn set_ready(&self, binding: &str, ready: Option<bool>) {
        let mut map = self.per_binding.lock().expect("per-binding series");
        match ready {
            Some(r) => map.entry(binding.to_string()).or_default().ready = Some(r),
            None => {
                if let Some(series) = map.get_mut(binding) {
                    series.ready = None;
                    if series.expiring.is_empty() {
                        map.remove(binding);
                    }
                }
            }
        }
        self.count_ready(&map);
    }

    fn count_ready(&self, map: &HashMap<String, BindingSeries>) {
        let ready_count = map.values().filter(|s| s.ready == Some(true)).count() as i64;
        let not_ready = map.values().filter(|s| s.ready == Some(false)).count() as i64;
        self.bindings
            .get_or_create(&ReadyLabels {
                ready: "true".into(),
            })
            .set(ready_count);
        self.bindings
            .get_or_create(&ReadyLabels {
                ready: "false".into(),
            })
            .set(not_ready);
    }

    fn sync_done(&self, result: &str, reason: crate::reason::Reason, duration: Duration) {
        self.syncs
            .get_or_create(&SyncLabels {
                result: result.into(),
                reason: reason.as_str().into(),
            })
            .inc();
        self.sync_duration.observe(duration.as_secs_f64());
    }

    /// A sync of `binding_key` (`namespace/name`) that ended Ready.
    pub fn sync_succeeded(&self, binding_key: &str, duration: Duration) {
        self.sync_done("success", crate::reason::Reason::Synced, duration);
        self.set_ready(binding_key, Some(true));
    }

    /// A sync of `binding_key` (`namespace/name`) that ended Ready=False for `reason`.
    pub fn sync_failed(
        &self,
        binding_key: &str,
        reason: crate::reason::Reason,
        duration: Duration,
    ) {
        self.sync_done("failure", reason, duration);
        self.set_ready(binding_key, Some(false));
    }

    /// The expiry (unix seconds) of vault secret `secret` as synced by
    /// binding `namespace/binding`.
    pub fn secret_expiry_set(&self, namespace: &str, binding: &str, secret: &str, unix: i64) {
        let mut map = self.per_binding.lock().expect("per-binding series");
        map.entry(format!("{namespace}/{binding}"))
            .or_default()
            .expiring
            .insert(secret.to_string());
        self.secret_expiry
            .get_or_create(&expiry_labels(namespace, binding, secret))
            .set(unix);
    }

    /// The expiries (vault secret name, unix seconds) of everything binding
    /// `namespace/binding` synced, replacing what was recorded before: a
    /// secret that left the spec, or lost its expiry, loses its series.
    pub fn set_secret_expiries<'a>(
        &self,
        namespace: &str,
        binding: &str,
        expiries: impl IntoIterator<Item = (&'a str, i64)>,
    ) {
        let mut map = self.per_binding.lock().expect("per-binding series");
        let series = map.entry(format!("{namespace}/{binding}")).or_default();
        let mut now = BTreeSet::new();
        for (secret, unix) in expiries {
            self.secret_expiry
                .get_or_create(&expiry_labels(namespace, binding, secret))
                .set(unix);
            now.insert(secret.to_string());
        }
        for gone in series.expiring.difference(&now) {
            self.secret_expiry
                .remove(&expiry_labels(namespace, binding, gone));
        }
        series.expiring = now;
    }

    /// Drops every series of binding `namespace/binding`: its part of
    /// `kvsync_bindings` and the expiry of each secret it synced — those
    /// recorded here and `secrets` (e.g. from its last status, for series
    /// set before a restart of this process's bookkeeping).
    pub fn forget_binding(&self, namespace: &str, binding: &str, secrets: &[String]) {
        let mut map = self.per_binding.lock().expect("per-binding series");
        let known = map
            .remove(&format!("{namespace}/{binding}"))
            .map(|s| s.expiring)
            .unwrap_or_default();
        for secret in known.iter().chain(secrets) {
            self.secret_expiry
                .remove(&expiry_labels(namespace, binding, secret));
        }
        self.count_ready(&map);
    }

    /// Counts a failure outside a binding's sync (a watch, or the Kubernetes
    /// API during a reconcile).
    pub fn reconcile_error(&self, kind: ReconcileErrorKind) {
        self.reconcile_errors
            .get_or_create(&ReconcileErrorLabels { kind })
            .inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

fn expiry_labels(namespace: &str, binding: &str, secret: &str) -> ExpiryLabels {
    ExpiryLabels {
        namespace: namespace.to_string(),
        binding: binding.to_string(),
        secret: secret.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests_and_ready_counts() {
        let m = Metrics::default();
        m.vault_request("contoso", "get_secret", Some(200));
        m.vault_request("contoso", "get_secret", Some(200));
        m.vault_request("contoso", "list_secrets", None);
        m.set_ready("ns/a", Some(true));
        m.set_ready("ns/b", Some(false));
        m.set_ready("ns/b", None);
        let text = m.encode();
        assert!(
            text.contains(
                r#"kvsync_keyvault_requests_total{vault="contoso",op="get_secret",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"kvsync_keyvault_requests_total{vault="contoso",op="list_secrets",status="error"} 1"#), "{text}");
        assert!(
            text.contains(r#"kvsync_bindings{ready="true"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kvsync_bindings{ready="false"} 0"#),
            "{text}"
        );
    }

    fn has(text: &str, series: &str) -> bool {
        text.lines().any(|l| l.starts_with(series))
    }

    #[test]
    fn a_sync_counts_its_result_reason_duration_and_readiness() {
        let m = Metrics::default();
        m.sync_succeeded("ns/a", Duration::from_millis(20));
        m.sync_failed(
            "ns/b",
            crate::reason::Reason::VaultForbidden,
            Duration::from_secs(3),
        );
        m.sync_failed(
            "ns/b",
            crate::reason::Reason::VaultForbidden,
            Duration::from_secs(3),
        );
        let text = m.encode();
        assert!(
            has(
                &text,
                r#"kvsync_syncs_total{result="success",reason="Synced"} 1"#
            ),
            "{text}"
        );
        assert!(
            has(
                &text,
                r#"kvsync_syncs_total{result="failure",reason="VaultForbidden"} 2"#
            ),
            "{text}"
        );
        assert!(has(&text, "kvsync_sync_duration_seconds_count 3"), "{text}");
        assert!(has(&text, r#"kvsync_bindings{ready="true"} 1"#), "{text}");
        assert!(has(&text, r#"kvsync_bindings{ready="false"} 1"#), "{text}");

        // b recovers: it moves from not ready to ready, it is not counted twice.
        m.sync_succeeded("ns/b", Duration::from_millis(5));
        let text = m.encode();
        assert!(has(&text, r#"kvsync_bindings{ready="true"} 2"#), "{text}");
        assert!(has(&text, r#"kvsync_bindings{ready="false"} 0"#), "{text}");
    }

    #[test]
    fn forgetting_a_binding_drops_every_series_of_it_and_only_its() {
        let m = Metrics::default();
        m.sync_succeeded("ns/a", Duration::from_millis(1));
        m.sync_failed(
            "ns/b",
            crate::reason::Reason::SecretNotFound,
            Duration::from_millis(1),
        );
        m.secret_expiry_set("ns", "a", "tls-cert", 1_900_000_000);
        m.secret_expiry_set("ns", "a", "db-password", 1_800_000_000);
        m.secret_expiry_set("ns", "b", "tls-cert", 1_700_000_000);
        let a_cert = r#"kvsync_secret_expiry_timestamp_seconds{namespace="ns",binding="a",secret="tls-cert"} 1900000000"#;
        let a_db = r#"kvsync_secret_expiry_timestamp_seconds{namespace="ns",binding="a",secret="db-password"}"#;
        let b_cert = r#"kvsync_secret_expiry_timestamp_seconds{namespace="ns",binding="b",secret="tls-cert"} 1700000000"#;
        let text = m.encode();
        assert!(
            has(&text, a_cert) && has(&text, a_db) && has(&text, b_cert),
            "{text}"
        );

        // Its status named only one of the secrets: the other goes too.
        m.forget_binding("ns", "a", &["tls-cert".to_string()]);
        let text = m.encode();
        assert!(!has(&text, a_cert), "{text}");
        assert!(!has(&text, a_db), "{text}");
        assert!(has(&text, b_cert), "{text}");
        assert!(has(&text, r#"kvsync_bindings{ready="true"} 0"#), "{text}");
        assert!(has(&text, r#"kvsync_bindings{ready="false"} 1"#), "{text}");

        m.forget_binding("ns", "b", &[]);
        let text = m.encode();
        assert!(!has(&text, b_cert), "{text}");
        assert!(has(&text, r#"kvsync_bindings{ready="false"} 0"#), "{text}");
    }

    #[test]
    fn forgetting_drops_expiry_series_named_by_the_caller_only() {
        // Series this bookkeeping never saw (set through the public family)
        // go when the caller names them.
        let m = Metrics::default();
        m.secret_expiry
            .get_or_create(&expiry_labels("ns", "a", "old"))
            .set(1);
        m.forget_binding("ns", "a", &["old".to_string()]);
        assert!(!m.encode().contains(r#"secret="old""#));
    }

    #[test]
    fn setting_the_expiries_drops_those_no_longer_synced() {
        let m = Metrics::default();
        m.set_secret_expiries("ns", "a", [("cert", 10), ("key", 20)]);
        m.set_secret_expiries("ns", "a", [("cert", 11)]);
        let text = m.encode();
        assert!(
            has(
                &text,
                r#"kvsync_secret_expiry_timestamp_seconds{namespace="ns",binding="a",secret="cert"} 11"#
            ),
            "{text}"
        );
        assert!(!text.contains(r#"secret="key""#), "{text}");
        m.forget_binding("ns", "a", &[]);
        assert!(!m.encode().contains(r#"secret="cert""#));
    }

    #[test]
    fn reconcile_errors_count_by_kind_and_every_kind_starts_at_zero() {
        let m = Metrics::default();
        let text = m.encode();
        for kind in ReconcileErrorKind::ALL {
            assert!(
                has(
                    &text,
                    &format!(
                        r#"kvsync_reconcile_errors_total{{kind="{}"}} 0"#,
                        kind.as_str()
                    )
                ),
                "{text}"
            );
        }
        m.reconcile_error(ReconcileErrorKind::WatchBindingsNotFound);
        m.reconcile_error(ReconcileErrorKind::WatchBindingsNotFound);
        m.reconcile_error(ReconcileErrorKind::Kube);
        let text = m.encode();
        assert!(
            has(
                &text,
                r#"kvsync_reconcile_errors_total{kind="watch_bindings_not_found"} 2"#
            ),
            "{text}"
        );
        assert!(
            has(&text, r#"kvsync_reconcile_errors_total{kind="kube"} 1"#),
            "{text}"
        );
        assert!(
            has(
                &text,
                r#"kvsync_reconcile_errors_total{kind="watch_other"} 0"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# HELP kvsync_reconcile_errors Failures outside"),
            "{text}"
        );
    }
}
