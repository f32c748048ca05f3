//! `kvsync check -f binding.yaml`: the reconcile's plan and read path, run
//! once from a terminal. Prints which key would get which secret version and
//! every problem, never a value.

use std::fmt::Write as _;
use std::time::Duration;

use kube::ResourceExt;

use crate::azure::AzureAccess;
use crate::azure::identity::Credential;
use crate::crd::VaultSecretBinding;
use crate::poller::Poller;
use crate::render::{Fetched, RenderInput, render};

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// `(key, secret, version, state)` rows.
    pub rows: Vec<(String, String, String, String)>,
    /// Problems, each `reason: message`.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether the binding would sync.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as a table and a list of problems.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if !self.rows.is_empty() {
            let w = |i: usize, head: &str| {
                self.rows
                    .iter()
                    .map(|r| [&r.0, &r.1, &r.2, &r.3][i].len())
                    .max()
                    .unwrap_or(0)
                    .max(head.len())
            };
            let (a, b, c) = (w(0, "KEY"), w(1, "SECRET"), w(2, "VERSION"));
            let _ = writeln!(
                out,
                "{:a$}  {:b$}  {:c$}  STATUS",
                "KEY", "SECRET", "VERSION"
            );
            for (k, s, v, st) in &self.rows {
                let _ = writeln!(out, "{k:a$}  {s:b$}  {v:c$}  {st}");
            }
        }
        for p in &self.problems {
            let _ = writeln!(out, "problem: {p}");
        }
        let _ = writeln!(
            out,
            "{}",
            if self.ok() {
                "the binding would sync"
            } else {
                "the binding would NOT sync"
            }
        );
        out
    }
}

/// What the VaultAccessPolicies would decide from: the policies, the
/// namespace's labels and the operator's mode.
pub struct PolicyInput {
    /// The policies.
    pub policies: crate::policy::Policies,
    /// The binding's namespace's labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--access-policy`.
    pub mode: crate::policy::Mode,
}

/// Runs the check. `kube` is needed only for ServiceAccount and client-secret
/// identities; without it they are reported as problems. With `policies`,
/// the binding is first decided as the operator would (nothing is read
/// when denied).
pub async fn check(
    binding: &VaultSecretBinding,
    access: &AzureAccess,
    kube: Option<&kube::Client>,
    default_refresh: Duration,
    policies: Option<&PolicyInput>,
) -> CheckReport {
    let mut report = CheckReport::default();
    let spec = &binding.spec;
    if let Err(e) = spec.validate() {
        for fe in e.0 {
            report
                .problems
                .push(format!("InvalidSpec: {}: {}", fe.field, fe.message));
        }
        return report;
    }
    let endpoint = match access.endpoint(&spec.vault_url) {
        Ok(e) => e,
        Err(e) => {
            report.problems.push(format!("VaultHostNotAllowed: {e}"));
            return report;
        }
    };
    let ns = binding.namespace().unwrap_or_else(|| "default".into());
    let narrowed;
    let spec = match policies {
        None => spec,
        Some(p) => match p
            .policies
            .decide(p.mode, &ns, &p.labels, &endpoint.authority(), spec)
        {
            Err(denial) => {
                report
                    .problems
                    .push(format!("PolicyDenied: {}", denial.message));
                return report;
            }
            Ok(filter) => match crate::policy::narrowed(spec, filter) {
                Some(n) => {
                    narrowed = n;
                    &narrowed
                }
                None => spec,
            },
        },
    };
    let needs_kube = spec
        .identity
        .as_ref()
        .is_some_and(|i| i.service_account_name.is_some() || i.client_secret_ref.is_some());
    let credential: Result<Credential, String> = match (needs_kube, kube) {
        (true, Some(client)) => access
            .env
            .resolve(spec.identity.as_ref(), &ns, client)
            .await
            .map_err(|e| format!("{}: {e}", e.reason())),
        (true, None) => Err("IdentityUnavailable: this identity is read from the cluster, and no kubeconfig was found".into()),
        (false, _) => match spec.identity.as_ref() {
            Some(i) if i.managed_identity.is_some() => Ok(Credential::ManagedIdentity {
                client_id: i.managed_identity.as_ref().and_then(|m| m.client_id.clone()),
            }),
            Some(i) => access
                .env
                .operator_credential(i.client_id.as_deref(), i.tenant_id.as_deref())
                .map_err(|e| format!("{}: {e}", e.reason())),
            None => access.env.operator_credential(None, None).map_err(|e| format!("{}: {e}", e.reason())),
        },
    };
    let credential = match credential {
        Ok(c) => c,
        Err(p) => {
            report.problems.push(p);
            return report;
        }
    };
    let poller = Poller::new(access.client(endpoint.clone(), credential), None);
    let interval = spec.refresh_interval_or(default_refresh);
    let read = match poller.read(None, spec, interval, true).await {
        Ok(r) => r,
        Err(e) => {
            report.problems.push(format!("{}: {e}", e.reason()));
            return report;
        }
    };
    for k in &read.plan.keys {
        let (version, state) = match read.fetched.get(&k.key) {
            Some(Fetched::Value {
                version, expires, ..
            }) => {
                let now = k8s_openapi::jiff::Timestamp::now().as_second();
                let state = match expires {
                    Some(e) if *e <= now => "expired",
                    Some(e) if e.saturating_sub(now) <= crate::render::EXPIRY_WARNING_SECS => {
                        "expires within 7 days"
                    }
                    _ => "ok",
                };
                (version.clone(), state.to_string())
            }
            Some(Fetched::Unavailable { reason, message }) => (
                "-".into(),
                format!("unreadable (optional; the Secret keeps its value): {reason}: {message}"),
            ),
            Some(Fetched::Disabled) => (
                "-".into(),
                format!("disabled (onDisabled: {:?})", spec.on_disabled),
            ),
            Some(Fetched::Missing) | None => (
                "-".into(),
                if k.optional {
                    "missing (optional)".into()
                } else {
                    "missing".into()
                },
            ),
        };
        report
            .rows
            .push((k.key.clone(), k.secret.clone(), version, state));
    }
    let certificates =
        crate::certificate::prepare(endpoint.base.as_str(), &read.plan, &read.fetched).await;
    if let Err(e) = render(&RenderInput {
        plan: &read.plan,
        fetched: &read.fetched,
        current: None,
        previous: &[],
        on_disabled: spec.on_disabled,
        on_expired: spec.on_expired,
        now: k8s_openapi::jiff::Timestamp::now().as_second(),
        // check prints no hash: any key will do.
        hash_key: &crate::hashkey::HashKey::new(b"kvsync-check"),
        template: spec.template(),
        certificates: &certificates,
    }) {
        // A disabled KeepLast secret renders (check sees no Secret to keep
        // from; in the cluster KeepLast keeps what the Secret holds).
        report.problems.push(format!("{}: {e}", e.reason()));
    }
    report
}
