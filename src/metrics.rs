//! Prometheus metrics of the operator, served on `/metrics`. Labels name
//! vaults, bindings and secrets — never values.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
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
    ready: Mutex<HashMap<String, bool>>,
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
        Self {
            registry,
            vault_requests,
            syncs,
            sync_duration,
            secret_writes,
            secret_expiry,
            bindings,
            ready: Mutex::new(HashMap::new()),
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

    /// Records a binding's readiness (`None`: deleted).
    pub fn set_ready(&self, binding: &str, ready: Option<bool>) {
        let mut map = self.ready.lock().expect("ready map");
        match ready {
            Some(r) => {
                map.insert(binding.to_string(), r);
            }
            None => {
                map.remove(binding);
            }
        }
        let ready_count = map.values().filter(|r| **r).count() as i64;
        let not_ready = map.len() as i64 - ready_count;
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

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
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
}
