//! `kvsync check -f binding.yaml`: the reconcile's plan and read path, run
//! once from a terminal. Prints which key would get which secret version and
//! every problem, never a value.

use std::fmt::Write as _;
use std::time::Duration;

use kube::ResourceExt;

use crate::azure::AzureAccess;
use crate::crd::VaultSecretBinding;
use crate::poller::Poller;
use crate::prepare::{Inputs, Judge, PrepareError, prepare};
use crate::render::{Fetched, RenderInput, render};

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// The plan, one row per read: `(key, secret, version, state, from)`,
    /// `from` being the spec field that causes the read.
    pub rows: Vec<(String, String, String, String, &'static str)>,
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
                    .map(|r| [r.0.as_str(), &r.1, &r.2, &r.3, r.4][i].len())
                    .max()
                    .unwrap_or(0)
                    .max(head.len())
            };
            // FROM last: scripts that read the columns by position keep
            // working.
            let (a, b, c, d) = (w(0, "KEY"), w(1, "SECRET"), w(2, "VERSION"), w(3, "STATUS"));
            let _ = writeln!(
                out,
                "{:a$}  {:b$}  {:c$}  {:d$}  FROM",
                "KEY", "SECRET", "VERSION", "STATUS"
            );
            for (k, s, v, st, from) in &self.rows {
                let _ = writeln!(out, "{k:a$}  {s:b$}  {v:c$}  {st:d$}  {from}");
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
pub use crate::prepare::GivenPolicies as PolicyInput;

/// Runs the check. `kube` is needed only for ServiceAccount and client-secret
/// identities; without it they are reported as problems. With `policies`,
/// the binding is first decided as the operator would (nothing is read
/// when denied) — by the same preparation the operator's sync runs.
pub async fn check(
    binding: &VaultSecretBinding,
    access: &AzureAccess,
    kube: Option<&kube::Client>,
    default_refresh: Duration,
    policies: Option<&PolicyInput>,
) -> CheckReport {
    let mut report = CheckReport::default();
    let ns = binding.namespace().unwrap_or_else(|| "default".into());
    let prepared = prepare(&Inputs {
        spec: &binding.spec,
        namespace: &ns,
        identity_namespace: &ns,
        access,
        kube,
        service_accounts: None,
        judge: policies.map_or(Judge::Nobody, Judge::Given),
    })
    .await;
    let prepared = match prepared {
        Ok(p) => p,
        Err(PrepareError::Invalid(e)) => {
            for fe in e.0 {
                report
                    .problems
                    .push(format!("InvalidSpec: {}: {}", fe.field, fe.message));
            }
            return report;
        }
        Err(e) => {
            report.problems.push(format!("{}: {e}", e.reason()));
            return report;
        }
    };
    let spec = &*prepared.spec;
    let poller = Poller::new(
        access.client(prepared.endpoint.clone(), prepared.credential.clone()),
        None,
    );
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
        let from = k.field();
        report
            .rows
            .push((k.key.clone(), k.secret.clone(), version, state, from));
    }
    let certificates =
        crate::certificate::prepare(prepared.endpoint.base.as_str(), &read.plan, &read.fetched)
            .await;
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

/// The VaultAccessPolicies and namespace labels `check` decides with: from
/// `--policies`/`--namespace-labels`, else from the cluster; `None` when
/// neither is there (no decision is made, and `check` says so).
pub async fn policies_for(
    args: &crate::cli::CheckArgs,
    binding: &crate::crd::VaultSecretBinding,
    kube: Option<&kube::Client>,
) -> Result<Option<PolicyInput>, String> {
    use crate::crd::policy::VaultAccessPolicy;
    use crate::policy::{Policies, Policy};
    use kube::ResourceExt;
    let ns = binding.namespace().unwrap_or_else(|| "default".into());
    let from_file = match &args.policies {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut all = Vec::new();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let p =
                    <VaultAccessPolicy as serde::Deserialize>::deserialize(doc).map_err(|e| {
                        format!(
                            "{} holds something that is not a VaultAccessPolicy: {e}",
                            path.display()
                        )
                    })?;
                all.push(p);
            }
            Some(all)
        }
        None => None,
    };
    let labels: Option<std::collections::BTreeMap<String, String>> = match &args.namespace_labels {
        Some(text) => Some(
            text.split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("--namespace-labels: {kv:?} is not k=v"))
                })
                .collect::<Result<_, _>>()?,
        ),
        None => None,
    };
    let (found, labels) = match (from_file, labels, kube) {
        (Some(p), Some(l), _) => (p, l),
        (p, l, Some(client)) => {
            let found = match p {
                Some(p) => p,
                None => {
                    kube::Api::<VaultAccessPolicy>::all(client.clone())
                        .list(&Default::default())
                        .await
                        .map_err(|e| {
                            format!("cannot list VaultAccessPolicies: {e} (or give --policies)")
                        })?
                        .items
                }
            };
            let labels = match l {
                Some(l) => l,
                None => kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                    .get_metadata(&ns)
                    .await
                    .map_err(|e| {
                        format!("cannot read namespace {ns}: {e} (or give --namespace-labels)")
                    })?
                    .labels()
                    .clone(),
            };
            (found, labels)
        }
        (Some(p), None, None) => (p, Default::default()),
        (None, _, None) => {
            println!("no cluster and no --policies: VaultAccessPolicies are not checked");
            return Ok(None);
        }
    };
    Ok(Some(PolicyInput {
        policies: Policies::new(
            found
                .into_iter()
                .map(|p| Policy {
                    name: p.name_any(),
                    spec: p.spec,
                })
                .collect(),
        ),
        labels,
        mode: args.access_policy,
    }))
}
