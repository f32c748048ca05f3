//! The Helm chart `charts/kvsync`: its CRD template is generated, its values
//! are checked by `values.schema.json`, and what it renders is what the
//! operator needs — every document parses into its Kubernetes type (a
//! misspelt field fails), the pod is locked down, and RBAC grants exactly the
//! API calls kvsync makes.
//!
//! Rendering needs `helm` 3 (`KVSYNC_HELM`, else `helm` on PATH); `.ci/run`
//! installs it. Without it the rendering tests say so and pass, except under
//! CI, where they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/kvsync")
}

#[test]
fn chart_crd_templates_match_the_rust_types() {
    for (template, want) in [
        (
            "templates/crds/vaultsecretbindings.yaml",
            kvsync::crd::crd_chart_template(),
        ),
        (
            "templates/crds/vaultaccesspolicies.yaml",
            kvsync::crd::policy::crd_chart_template(),
        ),
        (
            "templates/crds/clustervaultsecretbindings.yaml",
            kvsync::crd::cluster::crd_chart_template(),
        ),
    ] {
        let path = chart_dir().join(template);
        if std::env::var_os("KVSYNC_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{template} is stale: run `KVSYNC_BLESS=1 cargo test --test chart`"
        );
    }
}

#[test]
fn chart_version_follows_the_crate() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(chart["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(chart["kubeVersion"].as_str(), Some(">=1.29.0-0"));
}

/// `helm`, or None (with a note) when it is not installed outside CI.
fn helm() -> Option<PathBuf> {
    let candidate = std::env::var_os("KVSYNC_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("helm"));
    let ok = Command::new(&candidate)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("v3."));
    if ok {
        return Some(candidate);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "helm 3 is needed in CI: .ci/run installs it and sets KVSYNC_HELM"
    );
    eprintln!("note: helm 3 not found (set KVSYNC_HELM): chart rendering not checked");
    None
}

/// `helm template` with `args`; Err(stderr) when helm refuses.
fn render(helm: &Path, args: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new(helm)
        .args(["template", "kvsync"])
        .arg(chart_dir())
        .args(["--namespace", "kvsync-system"])
        .args(args)
        .output()
        .expect("helm runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect())
}

/// Parses `doc` as `T` and back: a field `T` does not know is lost on the
/// way, and that is a misspelling (k8s-openapi ignores unknown fields).
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let parsed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}\n{doc:#}", doc["kind"]));
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(
        normalise(&back),
        normalise(doc),
        "{} {} has a field its type does not know",
        doc["kind"],
        doc["metadata"]["name"]
    );
    parsed
}

fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        v => v.clone(),
    }
}

/// Checks every document against its type; returns them by kind.
fn check_types(docs: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for d in docs {
        let kind = d["kind"].as_str().expect("every document has a kind");
        match kind {
            "Deployment" => drop(typed::<Deployment>(d)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(d)),
            "Service" => drop(typed::<Service>(d)),
            "ClusterRole" => drop(typed::<ClusterRole>(d)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(d)),
            "Role" => drop(typed::<Role>(d)),
            "RoleBinding" => drop(typed::<RoleBinding>(d)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(d)),
            "NetworkPolicy" => drop(typed::<NetworkPolicy>(d)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(d)),
            // No k8s-openapi type: checked field by field below.
            "ServiceMonitor" => {}
            other => panic!("unexpected kind {other} rendered"),
        }
        by_kind.entry(kind.to_string()).or_default().push(d.clone());
    }
    by_kind
}

fn container(d: &Value) -> Container {
    let dep: Deployment = serde_json::from_value(d.clone()).unwrap();
    dep.spec.unwrap().template.spec.unwrap().containers[0].clone()
}

fn args(d: &Value) -> Vec<String> {
    container(d).args.unwrap_or_default()
}

#[test]
fn defaults_render_a_locked_down_ha_operator() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &[]).unwrap();
    let kinds = check_types(&docs);
    let deployments = &kinds["Deployment"];
    assert_eq!(deployments.len(), 1);
    let d = &deployments[0];
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["azure.workload.identity/use"], "true",
        "the workload-identity label is on the pod"
    );
    let sa = &kinds["ServiceAccount"][0];
    assert!(
        sa["metadata"]["labels"]
            .get("azure.workload.identity/use")
            .is_none(),
        "…not on the ServiceAccount"
    );
    let psc = &pod["spec"]["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    let sc = container(d).security_context.unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    let a = args(d);
    assert_eq!(a[0], "run");
    for want in [
        "--leader-elect",
        "--log-format=json",
        "--metrics-addr=0.0.0.0:8080",
        "--default-refresh-interval=5m",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
    }
    let c = container(d);
    assert_eq!(
        c.liveness_probe.unwrap().http_get.unwrap().path.as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe.unwrap().http_get.unwrap().path.as_deref(),
        Some("/readyz")
    );
    let env: BTreeSet<String> = c.env.unwrap().into_iter().map(|e| e.name).collect();
    assert!(env.contains("POD_NAME") && env.contains("POD_NAMESPACE"));
    assert!(
        !env.iter().any(|e| e.starts_with("AZURE_")),
        "the webhook injects AZURE_*; the chart never hard-codes the token path"
    );
    assert_eq!(kinds["PodDisruptionBudget"].len(), 1, "on with 2 replicas");
    let crds: BTreeSet<&str> = kinds["CustomResourceDefinition"]
        .iter()
        .map(|crd| {
            assert_eq!(
                crd["metadata"]["annotations"]["helm.sh/resource-policy"],
                "keep"
            );
            crd["metadata"]["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        crds,
        BTreeSet::from([
            "clustervaultsecretbindings.kvsync.io",
            "vaultaccesspolicies.kvsync.io",
            "vaultsecretbindings.kvsync.io",
        ])
    );
    assert!(kinds.contains_key("ClusterRole"));
    assert!(!kinds.contains_key("NetworkPolicy") && !kinds.contains_key("ServiceMonitor"));
}

#[test]
fn every_optional_feature_renders() {
    let Some(helm) = helm() else { return };
    let values =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chart-all-features.yaml");
    let docs = render(&helm, &["-f", values.to_str().unwrap()]).unwrap();
    let kinds = check_types(&docs);
    let deployments = &kinds["Deployment"];
    assert_eq!(deployments.len(), 2, "one Deployment per shard");
    for (i, d) in deployments.iter().enumerate() {
        let a = args(d);
        assert!(a.contains(&format!("--shard={i}/2")), "{a:?}");
        assert!(
            a.contains(&"--allowed-vault-hosts=.vault.example.cloud,vault.local:8443".to_string())
        );
        assert!(a.contains(&"--ca-file=/etc/kvsync/ca/bundle.pem".to_string()));
        assert!(a.contains(&"--status-heartbeat=0".to_string()));
        assert!(a.contains(&"--concurrency=64".to_string()));
        assert!(a.contains(&"--access-policy=enforce".to_string()));
        assert!(a.contains(&"--force-sync-cooldown=1m".to_string()));
        assert!(a.contains(&"--log-format=text".to_string()));
        assert_eq!(d["metadata"]["labels"]["team"], "platform");
        assert_eq!(
            container(d).image.as_deref(),
            Some(
                "registry.example.com/kvsync@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            )
        );
        let spec = &d["spec"]["template"]["spec"];
        assert_eq!(spec["priorityClassName"], "system-cluster-critical");
        assert_eq!(spec["volumes"][0]["configMap"]["name"], "corp-ca");
        assert_eq!(
            d["spec"]["selector"]["matchLabels"]["kvsync.io/shard"],
            i.to_string()
        );
    }
    let sa = &kinds["ServiceAccount"][0];
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "11111111-2222-3333-4444-555555555555"
    );
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/tenant-id"],
        "66666666-7777-8888-9999-000000000000"
    );
    assert_eq!(kinds["PodDisruptionBudget"].len(), 2);
    assert_eq!(kinds["NetworkPolicy"].len(), 1);
    let sm = &kinds["ServiceMonitor"][0];
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
}

#[test]
fn watch_namespaces_render_roles_not_a_cluster_role() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &["--set", "watchNamespaces={ci,build}"]).unwrap();
    let kinds = check_types(&docs);
    // Only the cluster-scoped ones for VaultAccessPolicies (read-only) and
    // ClusterVaultSecretBindings.
    let names = |kind: &str| -> BTreeSet<String> {
        kinds[kind]
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let cluster_scoped: BTreeSet<String> = ["kvsync-policies", "kvsync-cluster-bindings"]
        .map(String::from)
        .into();
    assert_eq!(names("ClusterRole"), cluster_scoped);
    assert_eq!(names("ClusterRoleBinding"), cluster_scoped);
    let roles: BTreeSet<String> = kinds["Role"]
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["metadata"]["namespace"].as_str().unwrap(),
                r["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        roles,
        ["build/kvsync", "ci/kvsync", "kvsync-system/kvsync-self"]
            .map(String::from)
            .into()
    );
    assert_eq!(kinds["RoleBinding"].len(), 3);
    let a = args(&kinds["Deployment"][0]);
    assert!(
        a.contains(&"--namespace=ci".to_string()) && a.contains(&"--namespace=build".to_string())
    );
}

#[test]
fn bad_values_fail_at_install() {
    let Some(helm) = helm() else { return };
    for (set, why) in [
        ("replicaCount=two", "replicaCount"),
        ("defaultRefreshInterval=5 minutes", "defaultRefreshInterval"),
        ("log.format=xml", "format"),
        ("azureWorkloadIdentity.clientId=not-a-guid", "clientId"),
        ("sharding.shards=0", "shards"),
        ("concurrency=0", "concurrency"),
        ("accessPolicy=strict", "accessPolicy"),
        ("statusHeartbeat=often", "statusHeartbeat"),
        ("no.suchValue=1", "no"),
    ] {
        let flag = if set.starts_with("replicaCount") {
            "--set-string"
        } else {
            "--set"
        };
        let err = render(&helm, &[flag, set]).expect_err(set);
        assert!(err.contains(why), "{set}: {err}");
    }
}

#[test]
fn helm_lint_strict_passes() {
    let Some(helm) = helm() else { return };
    let out = Command::new(&helm)
        .args(["lint", "--strict"])
        .arg(chart_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every Kubernetes API call `kvsync run` makes, as (API group, resource,
/// verb, where). Keep it in step with the code: a new call needs a line here
/// and, through the test below, a rule in the chart.
const CALLS: &[(&str, &str, &str, &str)] = &[
    (
        "kvsync.io",
        "vaultsecretbindings",
        "list",
        "controller: bindings watch",
    ),
    (
        "kvsync.io",
        "vaultsecretbindings",
        "watch",
        "controller: bindings watch",
    ),
    (
        "kvsync.io",
        "vaultsecretbindings",
        "patch",
        "reconcile: Merge finalizer add/remove; cluster::reconcile: a namespace's kept binding (server-side apply)",
    ),
    (
        "kvsync.io",
        "vaultsecretbindings",
        "create",
        "cluster::reconcile: server-side apply of a missing kept binding",
    ),
    (
        "kvsync.io",
        "vaultsecretbindings",
        "delete",
        "cluster::reconcile: the kept binding of a namespace no longer selected (or taken by its own binding)",
    ),
    (
        "kvsync.io",
        "vaultsecretbindings/status",
        "patch",
        "status::write (server-side apply)",
    ),
    (
        "kvsync.io",
        "vaultsecretbindings/finalizers",
        "update",
        "owner references with blockOwnerDeletion",
    ),
    (
        "",
        "secrets",
        "get",
        "reconcile: current Secret; identity: clientSecretRef (a cluster binding's: in the namespace it names); hash key",
    ),
    (
        "",
        "secrets",
        "list",
        "controller: managed Secrets metadata watch",
    ),
    (
        "",
        "secrets",
        "watch",
        "controller: managed Secrets metadata watch",
    ),
    (
        "",
        "secrets",
        "patch",
        "apply::apply, apply::release_fields (server-side apply)",
    ),
    (
        "",
        "secrets",
        "create",
        "server-side apply of a missing Secret; hash key Secret",
    ),
    (
        "",
        "secrets",
        "delete",
        "apply::retire_target: the owned Secret of an old target.name",
    ),
    (
        "",
        "serviceaccounts",
        "get",
        "identity: ServiceAccount annotations (not yet in the cache; a cluster binding's serviceAccountRef: in the namespace it names)",
    ),
    (
        "",
        "serviceaccounts",
        "list",
        "controller: ServiceAccounts metadata watch (identity cache)",
    ),
    (
        "",
        "serviceaccounts",
        "watch",
        "controller: ServiceAccounts metadata watch (identity cache)",
    ),
    (
        "",
        "serviceaccounts/token",
        "create",
        "identity: TokenRequest (a cluster binding's serviceAccountRef: in the namespace it names)",
    ),
    ("apps", "deployments", "get", "rollout::exists"),
    ("apps", "deployments", "patch", "rollout::restart"),
    ("apps", "statefulsets", "get", "rollout::exists"),
    ("apps", "statefulsets", "patch", "rollout::restart"),
    ("apps", "daemonsets", "get", "rollout::exists"),
    ("apps", "daemonsets", "patch", "rollout::restart"),
    ("events.k8s.io", "events", "create", "reconcile: events"),
    (
        "events.k8s.io",
        "events",
        "patch",
        "reconcile: event series",
    ),
];

/// The calls of `kvsync run` for VaultAccessPolicies and the namespaces'
/// labels (which ClusterVaultSecretBindings select by too): a ClusterRole of
/// its own, also with watchNamespaces.
const POLICY_CALLS: &[(&str, &str, &str, &str)] = &[
    ("kvsync.io", "vaultaccesspolicies", "list", "policy watch"),
    ("kvsync.io", "vaultaccesspolicies", "watch", "policy watch"),
    (
        "",
        "namespaces",
        "get",
        "a namespace the watch has not brought yet",
    ),
    (
        "",
        "namespaces",
        "list",
        "namespace labels watch (operator: one per scope, for both controllers)",
    ),
    (
        "",
        "namespaces",
        "watch",
        "namespace labels watch (operator: one per scope, for both controllers)",
    ),
];

/// The calls of `kvsync run` on ClusterVaultSecretBindings (cluster-scoped:
/// a ClusterRole of its own, also with watchNamespaces).
const CLUSTER_BINDING_CALLS: &[(&str, &str, &str, &str)] = &[
    (
        "kvsync.io",
        "clustervaultsecretbindings",
        "list",
        "cluster bindings watch (operator: one, for both controllers)",
    ),
    (
        "kvsync.io",
        "clustervaultsecretbindings",
        "watch",
        "cluster bindings watch (operator: one, for both controllers)",
    ),
    (
        "kvsync.io",
        "clustervaultsecretbindings/status",
        "patch",
        "cluster::write_status (server-side apply)",
    ),
    (
        "kvsync.io",
        "clustervaultsecretbindings/finalizers",
        "update",
        "kept bindings' owner references with blockOwnerDeletion",
    ),
];

/// Calls in the operator's own namespace (leader election, hash key).
const SELF_CALLS: &[(&str, &str, &str, &str)] = &[
    ("coordination.k8s.io", "leases", "get", "leader election"),
    ("coordination.k8s.io", "leases", "create", "leader election"),
    ("coordination.k8s.io", "leases", "patch", "leader election"),
    ("", "secrets", "get", "hashkey: read kvsync-hash-key"),
    (
        "",
        "secrets",
        "create",
        "hashkey: create kvsync-hash-key once",
    ),
];

fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn needed(calls: &[(&str, &str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    calls
        .iter()
        .map(|(g, r, v, _)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

/// The rules of the rendered `kind` (ClusterRole or Role) named `name`, in
/// `namespace` for a Role.
fn rules_of(
    kinds: &BTreeMap<String, Vec<Value>>,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> Vec<PolicyRule> {
    let doc = kinds[kind]
        .iter()
        .find(|r| {
            r["metadata"]["name"] == name
                && namespace.is_none_or(|ns| r["metadata"]["namespace"] == ns)
        })
        .unwrap_or_else(|| panic!("{kind} {name} is rendered"));
    let rules: Option<Vec<PolicyRule>> =
        serde_json::from_value(doc["rules"].clone()).expect("rules parse");
    let rules = rules.unwrap_or_default();
    assert!(
        rules
            .iter()
            .all(|r| r.resource_names.is_none() || kind == "Role")
            && rules.iter().all(|r| !r.verbs.iter().any(|v| v == "*")
                && !r.resources.iter().flatten().any(|x| x == "*")
                && !r.api_groups.iter().flatten().any(|x| x == "*")),
        "{kind} {name}: no wildcards"
    );
    rules
}

#[test]
fn rbac_grants_exactly_the_calls_kvsync_makes() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &[]).unwrap();
    let kinds = check_types(&docs);
    let cluster = rules_of(&kinds, "ClusterRole", "kvsync", None);
    assert!(
        cluster.iter().all(|r| r.resource_names.is_none()),
        "no resourceNames in the ClusterRole"
    );
    assert_eq!(
        grants(&cluster),
        needed(CALLS),
        "ClusterRole vs the calls of kvsync run"
    );
    let own = rules_of(&kinds, "Role", "kvsync-self", Some("kvsync-system"));
    assert_eq!(grants(&own), needed(SELF_CALLS));
    let policies = rules_of(&kinds, "ClusterRole", "kvsync-policies", None);
    assert_eq!(grants(&policies), needed(POLICY_CALLS));
    let clusters = rules_of(&kinds, "ClusterRole", "kvsync-cluster-bindings", None);
    assert_eq!(
        grants(&clusters),
        needed(CLUSTER_BINDING_CALLS),
        "ClusterRole kvsync-cluster-bindings vs the calls for cluster bindings"
    );
    let bound = |name: &str| {
        kinds["ClusterRoleBinding"]
            .iter()
            .any(|b| b["metadata"]["name"] == name && b["roleRef"]["name"] == name)
    };
    assert!(bound("kvsync") && bound("kvsync-policies") && bound("kvsync-cluster-bindings"));

    // watchNamespaces: the namespaced calls in each namespace's Role (the
    // cluster-binding controller then watches bindings namespace by
    // namespace too); cluster-wide only what is cluster-scoped, read-only
    // but for the cluster bindings' status and owner references.
    let docs = render(&helm, &["--set", "watchNamespaces={ci,build}"]).unwrap();
    let kinds = check_types(&docs);
    for ns in ["ci", "build"] {
        let role = rules_of(&kinds, "Role", "kvsync", Some(ns));
        assert_eq!(grants(&role), needed(CALLS), "Role kvsync in {ns}");
    }
    let policies = rules_of(&kinds, "ClusterRole", "kvsync-policies", None);
    assert_eq!(grants(&policies), needed(POLICY_CALLS));
    let clusters = rules_of(&kinds, "ClusterRole", "kvsync-cluster-bindings", None);
    assert_eq!(
        grants(&clusters),
        needed(CLUSTER_BINDING_CALLS),
        "watchNamespaces: ClusterRole kvsync-cluster-bindings"
    );
    let cluster_wide: BTreeSet<_> = kinds["ClusterRole"]
        .iter()
        .flat_map(|r| {
            let rules: Vec<PolicyRule> =
                serde_json::from_value(r["rules"].clone()).unwrap_or_default();
            grants(&rules)
        })
        .collect();
    for (g, r, v) in &cluster_wide {
        assert!(
            r.starts_with("clustervaultsecretbindings")
                || r == "vaultaccesspolicies"
                || r == "namespaces",
            "watchNamespaces grants {g}/{r} {v} cluster-wide"
        );
    }

    // Optional rules go away with their feature.
    let docs = render(
        &helm,
        &[
            "--set",
            "rbac.serviceAccountTokenCreate=false",
            "--set",
            "rbac.rolloutRestart=false",
        ],
    )
    .unwrap();
    let kinds = check_types(&docs);
    let g = grants(&rules_of(&kinds, "ClusterRole", "kvsync", None));
    assert!(
        !g.iter()
            .any(|(_, r, _)| r == "serviceaccounts/token" || r == "deployments")
    );
}
