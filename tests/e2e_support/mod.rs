//! The end-to-end harness shared by `tests/e2e.rs`, `tests/e2e_trust.rs`,
//! `tests/e2e_ha.rs`, `tests/e2e_policy.rs`, `tests/e2e_cluster.rs` and
//! `tests/e2e_agents.rs`.
//!
//! Tests run when `KVSYNC_E2E_KUBECONFIG` names a kubeconfig with
//! cluster-admin, and are skipped (saying so) otherwise. Each test gets its own
//! world ([`Env`]): one or more fresh namespaces, a namespace for the operator
//! (`POD_NAMESPACE`, where it keeps its dataHash key), a `kvsync dev-vault`
//! child and a `kvsync run` child watching only that test's namespaces (its
//! `/metrics` read with [`Env::operator_metric`]). Tests run in parallel;
//! nothing is shared but the CRDs, which every test applies (idempotently)
//! itself. Tests of high availability start no default operator
//! (`Options::operator`) but several side by side ([`Env::start_replica`]),
//! each with its own POD_NAME and metrics port, and read their `/readyz` and
//! `/metrics`, the Leases, and stop them with SIGTERM or SIGKILL.
//!
//! The cluster may have an API server and a controller manager and no nodes:
//! nothing here waits for a pod. Every wait polls the API (or the dev vault)
//! for an observable state with a deadline, and its failure says what was
//! expected, what was last seen and what the operator logged — a red run on a
//! remote cluster must be diagnosable from its output alone.
//!
//! The tests spend their time waiting on the cluster and the vault, not on
//! the CPU: run them with many threads, e.g.
//! `cargo test --test e2e --test e2e_trust --test e2e_ha -- --test-threads 16`.
//!
//! Everything a test starts is cleaned up by `Drop`, also when it panics:
//! children (every replica too) are killed and, for the operators, waited
//! for until they have exited (bounded), then finalizers of bindings are
//! stripped (the operator is gone by then, so nobody else will), the
//! VaultAccessPolicies and ClusterVaultSecretBindings it applied (both
//! cluster-scoped) are deleted, and the namespaces are deleted, with the
//! Leases in the operator's.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, CustomResourceExt, ResourceExt};
use kvsync::crd::VaultSecretBinding;
use kvsync::crd::cluster::{ClusterVaultSecretBinding, ClusterVaultSecretBindingStatus};
use kvsync::crd::policy::VaultAccessPolicy;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_kvsync");
/// A refresh interval as short as the CRD allows, so changes show up quickly.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long a change found by the periodic check may take: refreshInterval +
/// 10 % + slack for a remote API server.
pub const CHANGE_DEADLINE: Duration = Duration::from_secs(50);
/// How long a first sync (or a forced check) may take against a real API server.
pub const SYNC_DEADLINE: Duration = Duration::from_secs(30);
/// The field manager the suite applies bindings with.
pub const MANAGER: &str = "kvsync-e2e";
/// The client id of the operator's own identity (the dev vault's export).
pub const OPERATOR_CLIENT_ID: &str = kvsync::devvault::DEV_CLIENT_ID;

/// The kubeconfig of the cluster to test against, when one is named.
pub fn kubeconfig_path() -> Option<PathBuf> {
    std::env::var_os("KVSYNC_E2E_KUBECONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The cluster's kubeconfig, or returns from the test saying why it is skipped.
macro_rules! e2e {
    () => {
        match $crate::e2e_support::kubeconfig_path() {
            Some(path) => path,
            None => {
                eprintln!(
                    "skipping: KVSYNC_E2E_KUBECONFIG is not set (it names a cluster-admin kubeconfig of a cluster to test against)"
                );
                return;
            }
        }
    };
}
pub(crate) use e2e;

pub async fn client_for(path: &Path) -> kube::Client {
    let kubeconfig =
        Kubeconfig::read_from(path).expect("KVSYNC_E2E_KUBECONFIG is a readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    kube::Client::try_from(config).expect("a client")
}

pub fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The log files of one test's children, for failure messages.
pub struct Logs {
    dir: PathBuf,
    operators: Mutex<Vec<PathBuf>>,
    vaults: Mutex<Vec<PathBuf>>,
    /// Set once a test runs several operators side by side ([`Env::start_replica`]):
    /// then every one of them may be the one that matters.
    several: AtomicBool,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Logs {
    pub fn new(dir: &Path) -> Self {
        Logs {
            dir: dir.to_path_buf(),
            operators: Mutex::new(Vec::new()),
            vaults: Mutex::new(Vec::new()),
            several: AtomicBool::new(false),
        }
    }

    /// The tail of the running (last started) operator's log; with several
    /// operators side by side, the tail of each.
    pub fn operator_tail(&self) -> String {
        let ops = self.operators.lock().unwrap();
        if self.several.load(Ordering::Relaxed) {
            return ops
                .iter()
                .map(|p| format!("--- {} (last 40 lines) ---\n{}\n", p.display(), tail(p, 40)))
                .collect();
        }
        match ops.last() {
            Some(p) => format!(
                "--- {} (last 60 lines; {} operator start(s)) ---\n{}",
                p.display(),
                ops.len(),
                tail(p, 60)
            ),
            None => "(no operator started)".into(),
        }
    }

    /// The whole text of every operator log of the test (each start and
    /// replica), e.g. to check that something never was logged.
    pub fn operator_text(&self) -> String {
        self.operators
            .lock()
            .unwrap()
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Everything worth reading after a failure.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for p in self.operators.lock().unwrap().iter() {
            out += &format!(
                "--- {} (last 400 lines) ---\n{}\n",
                p.display(),
                tail(p, 400)
            );
        }
        for p in self.vaults.lock().unwrap().iter() {
            out += &format!("--- {} (last 40 lines) ---\n{}\n", p.display(), tail(p, 40));
        }
        out
    }
}

/// Polls `check` until it returns `Ok`, or panics after `deadline` with what
/// was expected, what `check` last saw (its `Err`), and the operator's log.
pub async fn eventually<T, F, Fut>(on: &Scope, what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        if started.elapsed() > deadline {
            panic!(
                "timed out after {deadline:?} waiting for: {what}\nlast seen: {last}\n{}",
                on.logs.operator_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Ready condition of a binding, as read from the API.
#[derive(Debug, Clone)]
pub struct Cond {
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// What a binding looked like at one read.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The whole object, for fields the typed status may not have.
    pub json: Value,
    pub generation: Option<i64>,
    /// `status.observedGeneration`.
    pub observed: Option<i64>,
    pub ready: Option<Cond>,
}

impl Seen {
    fn from_json(json: Value) -> Self {
        let generation = json["metadata"]["generation"].as_i64();
        let observed = json["status"]["observedGeneration"].as_i64();
        let ready = json["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .map(|c| Cond {
                status: c["status"].as_str().unwrap_or_default().into(),
                reason: c["reason"].as_str().unwrap_or_default().into(),
                message: c["message"].as_str().unwrap_or_default().into(),
                observed_generation: c["observedGeneration"].as_i64(),
            });
        Seen {
            json,
            generation,
            observed,
            ready,
        }
    }

    /// The typed binding.
    pub fn binding(&self) -> VaultSecretBinding {
        serde_json::from_value(self.json.clone()).expect("a VaultSecretBinding")
    }

    /// The typed ClusterVaultSecretBinding (when this is one).
    pub fn cluster(&self) -> ClusterVaultSecretBinding {
        serde_json::from_value(self.json.clone()).expect("a ClusterVaultSecretBinding")
    }

    /// The typed status of a ClusterVaultSecretBinding (empty when it has none).
    pub fn cluster_status(&self) -> ClusterVaultSecretBindingStatus {
        self.cluster().status.unwrap_or_default()
    }

    /// A one-line account of a ClusterVaultSecretBinding, for failure messages.
    pub fn describe_cluster(&self) -> String {
        let st = &self.json["status"];
        format!(
            "generation={:?} status.observedGeneration={:?} conditions=[{}] namespacesSelected={} namespacesSynced={} namespacesFailed={} failedNamespaces={} secrets={}",
            self.generation,
            self.observed,
            self.conditions_line(),
            st["namespacesSelected"],
            st["namespacesSynced"],
            st["namespacesFailed"],
            st["failedNamespaces"],
            st["secrets"],
        )
    }

    /// Every condition as `Type=Status Reason (gen G): "message"`, `; `-separated.
    fn conditions_line(&self) -> String {
        let conditions: Vec<String> = self.json["status"]["conditions"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        format!(
                            "{}={} {} (gen {}): {:?}",
                            c["type"].as_str().unwrap_or("?"),
                            c["status"].as_str().unwrap_or("?"),
                            c["reason"].as_str().unwrap_or("?"),
                            c["observedGeneration"],
                            c["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        conditions.join("; ")
    }

    /// Whether `status.observedGeneration` and the Ready condition both
    /// describe the current generation: the spec was applied, not only
    /// looked at.
    pub fn applied(&self) -> Option<&Cond> {
        self.current()
            .filter(|_| self.observed.is_some() && self.observed == self.generation)
    }

    /// Whether the Ready condition was computed for the current generation.
    pub fn current(&self) -> Option<&Cond> {
        self.ready
            .as_ref()
            .filter(|c| c.observed_generation.is_some() && c.observed_generation == self.generation)
    }

    /// A one-line account for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "generation={:?} status.observedGeneration={:?} finalizers={} conditions=[{}] rolloutPendingSince={}",
            self.generation,
            self.observed,
            self.json["metadata"]["finalizers"],
            self.conditions_line(),
            self.json["status"]["rolloutPendingSince"],
        )
    }
}

/// One namespace of a test's world, with the operator's logs for diagnostics.
pub struct Scope {
    pub client: kube::Client,
    pub ns: String,
    pub vault_url: String,
    pub logs: Arc<Logs>,
}

impl Scope {
    pub fn bindings(&self) -> Api<VaultSecretBinding> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn raw_bindings(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &ApiResource::erase::<VaultSecretBinding>(&()),
        )
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn binding_body(&self, name: &str, spec: Value) -> Value {
        let mut spec = spec;
        if spec.get("vaultUrl").is_none() {
            spec["vaultUrl"] = json!(self.vault_url);
        }
        json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding", "metadata": {"name": name}, "spec": spec})
    }

    /// Applies a binding (server-side apply); the API server's refusal is returned.
    pub async fn try_apply_binding(&self, name: &str, spec: Value) -> Result<(), kube::Error> {
        let body = self.binding_body(name, spec);
        self.bindings()
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map(|_| ())
    }

    /// Applies a binding and returns its generation.
    pub async fn apply_binding(&self, name: &str, spec: Value) -> i64 {
        self.apply_binding_with(name, json!({}), spec).await
    }

    /// Applies a binding whose metadata also has the fields of `metadata`
    /// (e.g. `{"annotations": {...}}`); returns its generation.
    pub async fn apply_binding_with(&self, name: &str, metadata: Value, spec: Value) -> i64 {
        let mut body = self.binding_body(name, spec);
        if let Some(extra) = metadata.as_object() {
            for (k, v) in extra {
                body["metadata"][k] = v.clone();
            }
        }
        let b = self
            .bindings()
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap_or_else(|e| panic!("apply binding {}/{name}: {e}", self.ns));
        b.metadata.generation.unwrap_or_default()
    }

    /// Applies a binding and waits for it to be Ready=True for that spec.
    pub async fn bind_and_wait(&self, name: &str, spec: Value) -> VaultSecretBinding {
        self.apply_binding(name, spec).await;
        self.ready(name, "True", SYNC_DEADLINE).await.0
    }

    pub async fn binding(&self, name: &str) -> VaultSecretBinding {
        self.bindings().get(name).await.unwrap()
    }

    /// The binding as the API has it now, `None` when it does not exist.
    pub async fn seen(&self, name: &str) -> Result<Option<Seen>, String> {
        match self.raw_bindings().get_opt(name).await {
            Ok(Some(o)) => Ok(Some(Seen::from_json(serde_json::to_value(o).unwrap()))),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading binding {}/{name}: {e}", self.ns)),
        }
    }

    /// Every binding of the namespace, described, for failure messages.
    pub async fn describe_bindings(&self) -> String {
        match self.raw_bindings().list(&Default::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .map(|o| {
                    let name = o.name_any();
                    let seen = Seen::from_json(serde_json::to_value(o).unwrap());
                    format!("\n  binding {name}: {}", seen.describe())
                })
                .collect(),
            Err(e) => format!("(cannot list bindings: {e})"),
        }
    }

    /// Waits until the binding's Ready condition, computed for its current
    /// generation, satisfies `ok`. With `applied`, `status.observedGeneration`
    /// must equal the generation too (the spec was applied, not only looked at).
    pub async fn until(
        &self,
        name: &str,
        expected: &str,
        applied: bool,
        deadline: Duration,
        ok: impl Fn(&Cond) -> bool,
    ) -> (Seen, Cond) {
        let what = format!("binding {}/{name}: {expected}", self.ns);
        eventually(self, &what, deadline, || async {
            let seen = self
                .seen(name)
                .await?
                .ok_or_else(|| "the binding does not exist".to_string())?;
            let fits = seen.current().filter(|c| ok(c)).cloned();
            match fits {
                Some(c) if !applied || seen.observed == seen.generation => Ok((seen, c)),
                _ => Err(seen.describe()),
            }
        })
        .await
    }

    /// Waits for Ready to have `status` at the current generation; for
    /// `"True"` the generation must also be the applied one.
    pub async fn ready(
        &self,
        name: &str,
        status: &str,
        deadline: Duration,
    ) -> (VaultSecretBinding, String, String) {
        let (seen, c) = self
            .until(
                name,
                &format!("Ready={status} at its current generation"),
                status == "True",
                deadline,
                |c| c.status == status,
            )
            .await;
        (seen.binding(), c.reason, c.message)
    }

    /// Waits for Ready=`status` with `reason` at the current generation; returns the message.
    pub async fn ready_reason(
        &self,
        name: &str,
        status: &str,
        reason: &str,
        deadline: Duration,
    ) -> String {
        self.until(
            name,
            &format!("Ready={status} reason {reason} at its current generation"),
            status == "True",
            deadline,
            |c| c.status == status && c.reason == reason,
        )
        .await
        .1
        .message
    }

    /// Waits until the binding is gone (its finalizer released).
    pub async fn wait_gone(&self, name: &str, deadline: Duration) {
        eventually(
            self,
            &format!("binding {}/{name} to be gone", self.ns),
            deadline,
            || async {
                match self.seen(name).await? {
                    None => Ok(()),
                    Some(s) => Err(format!(
                        "still there, deletionTimestamp={} {}",
                        s.json["metadata"]["deletionTimestamp"],
                        s.describe()
                    )),
                }
            },
        )
        .await
    }

    /// Annotates `kvsync.io/force-sync` with a value never used before.
    /// Sets a new force-sync value on binding `name`; returns it.
    pub async fn force_sync(&self, name: &str) -> String {
        let value = random_suffix();
        self.bindings()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"kvsync.io/force-sync": value}}}),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("annotate {}/{name} force-sync: {e}", self.ns));
        value
    }

    /// The Secret's data as strings; `None` when it does not exist.
    pub async fn secret_data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let s = self.secrets().get_opt(name).await.ok().flatten()?;
        Some(data_of(&s))
    }

    /// Waits until Secret `name` holds `value` under `key`.
    pub async fn wait_for_value(
        &self,
        name: &str,
        key: &str,
        value: &str,
        what: &str,
        deadline: Duration,
    ) -> Secret {
        let what = format!("{what} (Secret {}/{name} holding {key}={value:?})", self.ns);
        eventually(self, &what, deadline, || async {
            let secret = match self.secrets().get_opt(name).await {
                Ok(Some(s)) if data_of(&s).get(key).map(String::as_str) == Some(value) => {
                    return Ok(s);
                }
                Ok(Some(s)) => format!("Secret data {:?}", data_of(&s)),
                Ok(None) => "the Secret does not exist".into(),
                Err(e) => format!("reading the Secret: {e}"),
            };
            Err(format!("{secret}; {}", self.describe_bindings().await))
        })
        .await
    }

    /// Waits until Secret `name` exists and `ok` accepts it; returns what
    /// `ok` returned. `ok`'s `Err` says what it found instead (without
    /// printing values the test wants kept out of its output).
    pub async fn wait_for_secret<T>(
        &self,
        name: &str,
        what: &str,
        deadline: Duration,
        ok: impl Fn(&Secret) -> Result<T, String>,
    ) -> T {
        let what = format!("{what} (Secret {}/{name})", self.ns);
        eventually(self, &what, deadline, || async {
            let found = match self.secrets().get_opt(name).await {
                Ok(Some(s)) => match ok(&s) {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                },
                Ok(None) => "the Secret does not exist".into(),
                Err(e) => format!("reading the Secret: {e}"),
            };
            Err(format!("{found}; {}", self.describe_bindings().await))
        })
        .await
    }

    /// Events about binding `name` (events.k8s.io/v1, as kube's recorder writes them).
    pub async fn events_of(&self, name: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("VaultSecretBinding")
                        && r.name.as_deref() == Some(name)
                })
            })
            .collect()
    }

    /// Sets label `key`=`value` on this namespace (merge patch), e.g. for a
    /// VaultAccessPolicy's `namespaceSelector` to select it.
    pub async fn label_namespace(&self, key: &str, value: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .patch(
                &self.ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("label namespace {} {key}={value}: {e}", self.ns));
    }

    /// Removes label `key` from this namespace (merge patch).
    pub async fn unlabel_namespace(&self, key: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .patch(
                &self.ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {key: null}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("unlabel namespace {} {key}: {e}", self.ns));
    }

    /// Waits until Secret `name` no longer exists (e.g. deleted by the
    /// garbage collector once its owner is gone).
    pub async fn wait_secret_gone(&self, name: &str, what: &str, deadline: Duration) {
        let what = format!("{what} (Secret {}/{name} to be gone)", self.ns);
        eventually(self, &what, deadline, || async {
            match self.secrets().get_opt(name).await {
                Ok(None) => Ok(()),
                Ok(Some(s)) => Err(format!(
                    "still there: deletionTimestamp={:?} ownerReferences={:?} keys={:?}; {}",
                    s.metadata.deletion_timestamp,
                    s.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .map(|o| format!("{} {} uid={}", o.kind, o.name, o.uid))
                        .collect::<Vec<_>>(),
                    data_of(&s).keys().collect::<Vec<_>>(),
                    self.describe_bindings().await
                )),
                Err(e) => Err(format!("reading the Secret: {e}")),
            }
        })
        .await
    }

    /// Creates a Deployment that never gets pods (the cluster has no nodes).
    pub async fn create_deployment(&self, name: &str) {
        self.deployments()
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                             "template": {"metadata": {"labels": {"app": name}},
                                          "spec": {"containers": [{"name": "c", "image": "registry.invalid/agent:1"}]}}}
                }))
                .unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("create Deployment {name}: {e}"));
    }
}

pub fn data_of(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// The `kvsync.io/restartedAt` annotation of a Deployment's pod template.
pub fn restarted_at(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("kvsync.io/restartedAt")
        .cloned()
}

/// A `kvsync dev-vault` child process.
pub struct DevVault {
    _child: Child,
    pub url: String,
    pub http: reqwest::Client,
    pub exports: BTreeMap<String, String>,
}

impl DevVault {
    /// Starts one on a free port (the OS picks it; the URL is read from its exports).
    pub async fn start(dir: &Path, label: &str, seed: &str, logs: &Logs) -> DevVault {
        let seed_file = dir.join(format!("{label}-seed.yaml"));
        std::fs::write(&seed_file, seed).unwrap();
        let log = dir.join(format!("{label}.log"));
        logs.vaults.lock().unwrap().push(log.clone());
        let ca = dir.join(format!("{label}-ca.pem"));
        let mut child = Command::new(BIN)
            .args(["dev-vault", "--addr", "127.0.0.1:0", "--seed"])
            .arg(&seed_file)
            .arg("--ca-out")
            .arg(&ca)
            .arg("--token-file")
            .arg(dir.join(format!("{label}-token")))
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start kvsync dev-vault");
        // The export lines are printed once the vault listens.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut exports = BTreeMap::new();
        let read = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                    exports.insert(k.to_string(), v.to_string());
                    if k == "KVSYNC_CA_FILE" {
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .is_err()
        {
            panic!(
                "dev-vault printed no export lines within 20 s\n{}",
                tail(&log, 40)
            );
        }
        let url = exports
            .get("KVSYNC_DEV_VAULT_URL")
            .unwrap_or_else(|| panic!("dev-vault exports {exports:?}"))
            .clone();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(&std::fs::read(&ca).unwrap()))
            .build()
            .unwrap();
        DevVault {
            _child: child,
            url,
            http,
            exports,
        }
    }

    /// `host:port`, for `--allowed-vault-hosts`.
    pub fn host(&self) -> String {
        self.url.trim_start_matches("https://").to_string()
    }

    pub fn port(&self) -> u16 {
        self.host().rsplit(':').next().unwrap().parse().unwrap()
    }

    /// `POST /_dev/stats/reset`: counts start again from zero.
    pub async fn reset_stats(&self) {
        let r = self
            .http
            .post(format!("{}/_dev/stats/reset", self.url))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "POST /_dev/stats/reset: {}",
            r.status()
        );
    }

    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_dev/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Requests of `op` with any status.
    pub async fn count(&self, op: &str) -> u64 {
        count_in(&self.stats().await, op, None)
    }

    /// Requests of `op` answered with `status`.
    pub async fn count_status(&self, op: &str, status: u16) -> u64 {
        count_in(&self.stats().await, op, Some(status))
    }

    /// Vault reads of any kind (GET, LIST pages, versions), any status.
    pub async fn reads(&self) -> u64 {
        let s = self.stats().await;
        ["get_secret", "list_secrets", "list_versions"]
            .iter()
            .map(|op| count_in(&s, op, None))
            .sum()
    }

    pub async fn fault(&self, body: Value) {
        let r = self
            .http
            .post(format!("{}/_dev/faults", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    pub async fn clear_faults(&self) {
        let r = self
            .http
            .delete(format!("{}/_dev/faults", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    /// A token for a writer client (the seeds let `e2e-writer` do anything).
    pub async fn writer_token(&self) -> String {
        let resp: Value = self
            .http
            .post(format!(
                "{}/{}/oauth2/v2.0/token",
                self.url,
                kvsync::devvault::DEV_TENANT_ID
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "e2e-writer"),
                ("scope", "https://vault.azure.net/.default"),
                ("client_secret", "anything"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("token answer {resp}"))
            .to_string()
    }

    /// `PUT /secrets/{name}`: a new version; returns its id.
    pub async fn put_secret(&self, name: &str, value: &str) -> String {
        self.put(name, json!({"value": value})).await
    }

    /// `PUT /secrets/{name}` with a `contentType`, as Key Vault writes a
    /// certificate's backing secret (`application/x-pkcs12`,
    /// `application/x-pem-file`): a new version; returns its id.
    pub async fn put_secret_with_content_type(
        &self,
        name: &str,
        value: &str,
        content_type: &str,
    ) -> String {
        self.put(name, json!({"value": value, "contentType": content_type}))
            .await
    }

    /// `PUT /secrets/{name}` with `body`; checks that the new version has
    /// the body's `contentType` (none when it has none) and returns its id.
    async fn put(&self, name: &str, body: Value) -> String {
        let token = self.writer_token().await;
        let r = self
            .http
            .put(format!(
                "{}/secrets/{name}?api-version=2025-07-01",
                self.url
            ))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let bundle: Value = r.json().await.unwrap_or_default();
        assert_eq!(status, 200, "PUT {name}: {bundle}");
        assert_eq!(
            bundle["contentType"], body["contentType"],
            "PUT {name}: the new version's contentType"
        );
        bundle["id"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    }

    /// `PATCH /secrets/{name}/` (the latest version) with `body`.
    pub async fn patch_latest(&self, name: &str, body: Value) {
        let token = self.writer_token().await;
        let r = self
            .http
            .patch(format!(
                "{}/secrets/{name}/?api-version=2025-07-01",
                self.url
            ))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "PATCH {name}: {}", r.text().await.unwrap());
    }

    pub async fn disable_secret(&self, name: &str) {
        self.patch_latest(name, json!({"attributes": {"enabled": false}}))
            .await;
    }
}

pub fn count_in(stats: &Value, op: &str, status: Option<u16>) -> u64 {
    let Some(m) = stats["requests"][op].as_object() else {
        return 0;
    };
    m.iter()
        .filter(|(s, _)| status.is_none_or(|st| **s == st.to_string()))
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

/// How a test's world is set up.
pub struct Options {
    /// The dev vault's seed file (YAML).
    pub seed: String,
    /// How many test namespaces the operator watches (`Env::scope(i)`).
    pub namespaces: usize,
    /// `--rollout-window` of the operator.
    pub rollout_window: &'static str,
    /// Whether `Env::start_with` starts the operator. Tests of several
    /// replicas say false and start each with [`Env::start_replica`].
    pub operator: bool,
    /// Further flags of the operator `Env` starts (and restarts), e.g.
    /// `--access-policy enforce`; not of replicas, which get their own.
    pub operator_args: Vec<String>,
}

impl Options {
    pub fn new(seed: &str) -> Self {
        Options {
            seed: seed.to_string(),
            namespaces: 1,
            rollout_window: "2s",
            operator: true,
            operator_args: Vec::new(),
        }
    }
}

/// One test's world. It dereferences to its first namespace.
pub struct Env {
    scopes: Vec<Scope>,
    /// The operator's own namespace (`POD_NAMESPACE`).
    pub op_ns: String,
    pub vault: DevVault,
    operator: Option<Child>,
    /// Where the running operator (not a replica) serves /metrics.
    operator_metrics: Option<SocketAddr>,
    operator_starts: usize,
    rollout_window: &'static str,
    /// `Options::operator_args`.
    operator_args: Vec<String>,
    kubeconfig: PathBuf,
    dir: PathBuf,
    all_logs: Arc<Logs>,
    /// Further namespaces a test made, deleted with the others.
    extra_namespaces: Mutex<Vec<String>>,
    /// Operators started side by side with [`Env::start_replica`].
    replicas: Vec<Replica>,
    /// VaultAccessPolicies a test applied ([`Env::apply_policy`]): cluster
    /// scoped, so deleted by name on drop.
    policies: Mutex<Vec<String>>,
    /// ClusterVaultSecretBindings a test applied
    /// ([`Env::apply_cluster_binding`]): deleted by name on drop.
    cluster_bindings: Mutex<Vec<String>>,
}

impl Deref for Env {
    type Target = Scope;

    fn deref(&self) -> &Scope {
        &self.scopes[0]
    }
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"kvsync-e2e": "true"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

impl Env {
    pub async fn start(kubeconfig: PathBuf, seed: &str) -> Env {
        Env::start_with(kubeconfig, Options::new(seed)).await
    }

    pub async fn start_with(kubeconfig: PathBuf, opts: Options) -> Env {
        let client = client_for(&kubeconfig).await;
        install_crd(&client).await;
        let id = random_suffix();
        let dir = std::env::temp_dir().join(format!("kvsync-e2e-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let logs = Arc::new(Logs::new(&dir));
        // Namespaces are registered before they exist, so a failure half-way
        // through still deletes what was made.
        let op_ns = format!("kvsync-e2e-{id}-op");
        let names: Vec<String> = (0..opts.namespaces.max(1))
            .map(|i| match i {
                0 => format!("kvsync-e2e-{id}"),
                i => format!("kvsync-e2e-{id}-{i}"),
            })
            .collect();
        let vault = DevVault::start(&dir, "dev-vault", &opts.seed, &logs).await;
        let scopes = names
            .iter()
            .map(|ns| Scope {
                client: client.clone(),
                ns: ns.clone(),
                vault_url: vault.url.clone(),
                logs: logs.clone(),
            })
            .collect();
        let mut env = Env {
            scopes,
            op_ns: op_ns.clone(),
            vault,
            operator: None,
            operator_metrics: None,
            operator_starts: 0,
            rollout_window: opts.rollout_window,
            operator_args: opts.operator_args,
            kubeconfig,
            dir,
            all_logs: logs,
            extra_namespaces: Mutex::new(Vec::new()),
            replicas: Vec::new(),
            policies: Mutex::new(Vec::new()),
            cluster_bindings: Mutex::new(Vec::new()),
        };
        for ns in names.iter().chain([&op_ns]) {
            create_namespace(&client, ns).await;
        }
        if opts.operator {
            env.start_operator().await;
        }
        env
    }

    /// The `i`-th test namespace (0 is the one `Env` dereferences to).
    pub fn scope(&self, i: usize) -> &Scope {
        &self.scopes[i]
    }

    /// Starts `kvsync run` for this test's namespaces, with /metrics on a
    /// port of its own ([`Env::operator_metric`]); its stderr goes to a log
    /// file of its own (one per start, so a restart keeps the old one).
    /// Returns once that port answers `/healthz`.
    async fn start_operator(&mut self) {
        self.operator_starts += 1;
        let n = self.operator_starts;
        let pod_name = format!("kvsync-e2e-{n}");
        let (child, metrics, _) = self
            .spawn_operator(&pod_name, &self.operator_args, |attempt| match attempt {
                1 => format!("operator-{n}.log"),
                a => format!("operator-{n}-attempt-{a}.log"),
            })
            .await;
        self.operator = Some(child);
        self.operator_metrics = Some(metrics);
    }

    /// Spawns `kvsync run` as `pod_name` with `extra` flags and /metrics on
    /// a free local port, its stderr to the file `log_name(attempt)` names;
    /// returns once that port answers `/healthz`: the child, the port and
    /// the log.
    ///
    /// The port is one the OS just handed out and gave back; should another
    /// process take it in between, the operator exits ("cannot listen") and
    /// is started again on a new one.
    async fn spawn_operator(
        &self,
        pod_name: &str,
        extra: &[String],
        log_name: impl Fn(u32) -> String,
    ) -> (Child, SocketAddr, PathBuf) {
        for attempt in 1..=3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free local port")
                .port();
            let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
            let log = self.dir.join(log_name(attempt));
            self.all_logs.operators.lock().unwrap().push(log.clone());
            let mut child = self
                .operator_command(pod_name, &metrics.to_string(), extra, &log)
                .spawn()
                .expect("start kvsync run");
            let started = Instant::now();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("cannot listen on --metrics-addr") && attempt < 3 {
                        break;
                    }
                    panic!(
                        "operator {pod_name} exited ({status}) before /healthz answered\n{}",
                        tail(&log, 60)
                    );
                }
                if matches!(http_get(metrics, "/healthz").await, Ok((200, _))) {
                    return (child, metrics, log);
                }
                if started.elapsed() > Duration::from_secs(20) {
                    panic!(
                        "operator {pod_name}: /healthz on {metrics} did not answer within 20 s\n{}",
                        tail(&log, 60)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        unreachable!("the last attempt panics rather than retrying");
    }

    /// The sum of every series of metric `name` whose labels contain each of
    /// `labels`, on the running operator's `/metrics` (see
    /// [`Replica::metric`]); 0 when there is none. Counters start at 0 with
    /// each operator start.
    pub async fn operator_metric(&self, name: &str, labels: &[&str]) -> f64 {
        let addr = self
            .operator_metrics
            .expect("the operator runs (Options::operator, not killed)");
        let text = metrics_text_at(addr, "the operator")
            .await
            .unwrap_or_else(|e| panic!("reading metrics: {e}"));
        metric_sum(&text, name, labels)
    }

    /// `kvsync run` for this test's namespaces as `pod_name` (POD_NAME), with
    /// /metrics on `metrics_addr` and `extra` flags; stderr to `log`.
    fn operator_command(
        &self,
        pod_name: &str,
        metrics_addr: &str,
        extra: &[String],
        log: &Path,
    ) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("run");
        for s in &self.scopes {
            cmd.args(["--namespace", &s.ns]);
        }
        let ca = &self.vault.exports["KVSYNC_CA_FILE"];
        cmd.args(["--allowed-vault-hosts", &self.vault.host()])
            .args(["--ca-file", ca])
            .args(["--metrics-addr", metrics_addr])
            .args(["--rollout-window", self.rollout_window])
            .args(["--default-refresh-interval", "30s"])
            // Tests force-sync one binding many times in a row (barriers).
            .args(["--force-sync-cooldown", "0s"])
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAMESPACE", &self.op_ns)
            .env("POD_NAME", pod_name)
            .env("RUST_LOG", "info,kvsync=debug")
            .env("NO_COLOR", "1")
            .envs(
                self.vault
                    .exports
                    .iter()
                    .filter(|(k, _)| k.starts_with("AZURE_")),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .kill_on_drop(true);
        cmd
    }

    /// Starts one more `kvsync run` beside the others, as `name` (its
    /// POD_NAME: leader-election identity and Events' reportingInstance),
    /// with `extra` flags (e.g. `--leader-elect`, `--shard 0/2`) and /metrics
    /// on a port of its own; returns once that port answers `/healthz`.
    pub async fn start_replica(&mut self, name: &str, extra: &[String]) {
        assert!(
            self.replicas.iter().all(|r| r.name != name),
            "replica {name} started twice"
        );
        self.all_logs.several.store(true, Ordering::Relaxed);
        let (child, metrics, log) = self
            .spawn_operator(name, extra, |attempt| {
                format!("replica-{name}-{attempt}.log")
            })
            .await;
        self.replicas.push(Replica {
            name: name.to_string(),
            metrics,
            log,
            child: Some(child),
        });
    }

    /// The replica started as `name`.
    pub fn replica(&self, name: &str) -> &Replica {
        self.replicas
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no replica {name}"))
    }

    fn replica_mut(&mut self, name: &str) -> &mut Replica {
        self.replicas
            .iter_mut()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no replica {name}"))
    }

    /// Sends SIGTERM (what the kubelet sends first) to replica `name` and
    /// waits up to `deadline` for it to exit; returns how it exited.
    pub async fn terminate_replica(
        &mut self,
        name: &str,
        deadline: Duration,
    ) -> std::process::ExitStatus {
        let r = self.replica_mut(name);
        let mut child = r
            .child
            .take()
            .unwrap_or_else(|| panic!("replica {name} is not running"));
        let pid = child.id().expect("a running child has a pid").to_string();
        // The shell's own `kill`: no extra crate, and present where `sh` is.
        let sent = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &pid])
            .status()
            .await
            .expect("run sh -c kill");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        match tokio::time::timeout(deadline, child.wait()).await {
            Ok(status) => status.expect("wait for the replica"),
            Err(_) => {
                let _ = child.start_kill();
                panic!(
                    "replica {name} did not exit within {deadline:?} of SIGTERM\n{}",
                    tail(&r.log, 60)
                )
            }
        }
    }

    /// SIGKILL to replica `name` (no chance to release anything); returns
    /// once it is gone.
    pub async fn kill_replica(&mut self, name: &str) {
        let r = self.replica_mut(name);
        let mut child = r
            .child
            .take()
            .unwrap_or_else(|| panic!("replica {name} is not running"));
        child.kill().await.expect("SIGKILL the replica");
    }

    /// Lease `name` in the operator's namespace, `None` when there is none.
    pub async fn lease(&self, name: &str) -> Result<Option<Lease>, String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.op_ns);
        leases
            .get_opt(name)
            .await
            .map_err(|e| format!("reading Lease {}/{name}: {e}", self.op_ns))
    }

    /// The holder of Lease `name`, for waits: `Err` says what is there instead.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self
            .lease(name)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity))
    }

    /// Kills the operator (SIGKILL: no chance to finish anything) and waits
    /// for it to be gone.
    pub async fn kill_operator(&mut self) {
        self.operator_metrics = None;
        if let Some(mut op) = self.operator.take() {
            let _ = op.kill().await;
        }
    }

    /// Kills the operator and starts a new one against the same cluster.
    pub async fn restart_operator(&mut self) {
        self.kill_operator().await;
        self.start_operator().await;
    }

    /// A second dev vault (e.g. standing in for an attacker's host); killed on drop.
    pub async fn start_vault(&self, label: &str, seed: &str) -> DevVault {
        DevVault::start(&self.dir, label, seed, &self.all_logs).await
    }

    /// A namespace the operator does not watch, deleted with the test's.
    pub async fn create_namespace(&self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.ns);
        self.extra_namespaces.lock().unwrap().push(name.clone());
        create_namespace(&self.client, &name).await;
        name
    }

    /// Applies (server-side, creating or replacing its spec) the
    /// cluster-scoped VaultAccessPolicy `name` with `spec`; it is deleted
    /// when the `Env` drops. A policy is seen by every operator on the
    /// cluster, those of tests running in parallel too: `spec` must have a
    /// `namespaceSelector` (one that selects this test's namespaces only,
    /// by a label unique to the test), and `name` should be unique to the
    /// test (e.g. start with [`Scope::ns`]).
    pub async fn apply_policy(&self, name: &str, spec: Value) -> VaultAccessPolicy {
        assert!(
            spec["namespaceSelector"]
                .as_object()
                .is_some_and(|s| !s.is_empty()),
            "policy {name} must select this test's namespaces only: {spec}"
        );
        {
            // Registered before it exists: a failure half-way still deletes it.
            let mut policies = self.policies.lock().unwrap();
            if !policies.iter().any(|p| p == name) {
                policies.push(name.to_string());
            }
        }
        let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "VaultAccessPolicy",
                          "metadata": {"name": name}, "spec": spec});
        Api::<VaultAccessPolicy>::all(self.client.clone())
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap_or_else(|e| panic!("apply VaultAccessPolicy {name}: {e}"))
    }

    /// Deletes VaultAccessPolicy `name` (one [`Env::apply_policy`] applied).
    pub async fn delete_policy(&self, name: &str) {
        match Api::<VaultAccessPolicy>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if api_code(&e) == Some(404) => {}
            Err(e) => panic!("delete VaultAccessPolicy {name}: {e}"),
        }
        self.policies.lock().unwrap().retain(|p| p != name);
    }

    fn cluster_api(&self) -> Api<ClusterVaultSecretBinding> {
        Api::all(self.client.clone())
    }

    fn raw_cluster_api(&self) -> Api<DynamicObject> {
        Api::all_with(
            self.client.clone(),
            &ApiResource::erase::<ClusterVaultSecretBinding>(&()),
        )
    }

    /// Applies (server-side, creating or replacing its spec) the
    /// cluster-scoped ClusterVaultSecretBinding `name` with `spec`
    /// (`vaultUrl` defaults to the test's dev vault); returns its
    /// generation. It is deleted when the `Env` drops. Every operator on
    /// the cluster sees it, those of tests running in parallel too: `spec`
    /// must select this test's namespaces only (a `namespaceSelector` on a
    /// label unique to the test, and/or `namespaces` naming the test's),
    /// and `name` should be unique to the test (e.g. start with
    /// [`Scope::ns`]).
    pub async fn apply_cluster_binding(&self, name: &str, spec: Value) -> i64 {
        let selects = spec["namespaceSelector"]
            .as_object()
            .is_some_and(|s| !s.is_empty())
            || spec["namespaces"].as_array().is_some_and(|n| !n.is_empty());
        assert!(
            selects,
            "cluster binding {name} must select this test's namespaces only: {spec}"
        );
        {
            // Registered before it exists: a failure half-way still deletes it.
            let mut clusters = self.cluster_bindings.lock().unwrap();
            if !clusters.iter().any(|c| c == name) {
                clusters.push(name.to_string());
            }
        }
        let mut spec = spec;
        if spec.get("vaultUrl").is_none() {
            spec["vaultUrl"] = json!(self.vault_url);
        }
        let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "ClusterVaultSecretBinding",
                          "metadata": {"name": name}, "spec": spec});
        self.cluster_api()
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap_or_else(|e| panic!("apply ClusterVaultSecretBinding {name}: {e}"))
            .metadata
            .generation
            .unwrap_or_default()
    }

    /// Deletes ClusterVaultSecretBinding `name` (one
    /// [`Env::apply_cluster_binding`] applied); the garbage collector then
    /// deletes the bindings kept for it.
    pub async fn delete_cluster_binding(&self, name: &str) {
        match self
            .cluster_api()
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if api_code(&e) == Some(404) => {}
            Err(e) => panic!("delete ClusterVaultSecretBinding {name}: {e}"),
        }
        self.cluster_bindings.lock().unwrap().retain(|c| c != name);
    }

    /// The ClusterVaultSecretBinding as the API has it now, `None` when it
    /// does not exist.
    pub async fn cluster_seen(&self, name: &str) -> Result<Option<Seen>, String> {
        match self.raw_cluster_api().get_opt(name).await {
            Ok(Some(o)) => Ok(Some(Seen::from_json(serde_json::to_value(o).unwrap()))),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading ClusterVaultSecretBinding {name}: {e}")),
        }
    }

    /// Waits until ClusterVaultSecretBinding `name` has a status for its
    /// current generation (`status.observedGeneration` and the Ready
    /// condition's both equal `metadata.generation`) that satisfies `ok`;
    /// returns it as read then, and its Ready condition.
    pub async fn cluster_until(
        &self,
        name: &str,
        expected: &str,
        deadline: Duration,
        ok: impl Fn(&ClusterVaultSecretBindingStatus, &Cond) -> bool,
    ) -> (ClusterVaultSecretBinding, Cond) {
        let what = format!("ClusterVaultSecretBinding {name}: {expected}");
        eventually(self, &what, deadline, || async {
            let seen = self
                .cluster_seen(name)
                .await?
                .ok_or_else(|| "the cluster binding does not exist".to_string())?;
            let fits = seen
                .applied()
                .filter(|c| ok(&seen.cluster_status(), c))
                .cloned();
            match fits {
                Some(c) => Ok((seen.cluster(), c)),
                None => Err(seen.describe_cluster()),
            }
        })
        .await
    }

    /// Waits until ClusterVaultSecretBinding `name` is Ready=True (reason
    /// Synced) at its current generation with `selected` namespaces
    /// selected, all of them synced and none failed.
    pub async fn cluster_synced(
        &self,
        name: &str,
        selected: i32,
        deadline: Duration,
    ) -> ClusterVaultSecretBinding {
        self.cluster_until(
            name,
            &format!("Ready=True Synced with {selected} of {selected} namespaces synced"),
            deadline,
            |st, c| {
                c.status == "True"
                    && c.reason == "Synced"
                    && st.namespaces_selected == selected
                    && st.namespaces_synced == selected
                    && st.namespaces_failed == 0
            },
        )
        .await
        .0
    }

    /// Sets a new `kvsync.io/force-sync` value on ClusterVaultSecretBinding
    /// `name` (kvsync copies it to the bindings it keeps); returns it.
    pub async fn force_sync_cluster_binding(&self, name: &str) -> String {
        let value = random_suffix();
        self.cluster_api()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"kvsync.io/force-sync": value}}}),
                ),
            )
            .await
            .unwrap_or_else(|e| {
                panic!("annotate ClusterVaultSecretBinding {name} force-sync: {e}")
            });
        value
    }

    /// Waits until ClusterVaultSecretBinding `name` is gone.
    pub async fn wait_cluster_gone(&self, name: &str, deadline: Duration) {
        eventually(
            self,
            &format!("ClusterVaultSecretBinding {name} to be gone"),
            deadline,
            || async {
                match self.cluster_seen(name).await? {
                    None => Ok(()),
                    Some(s) => Err(format!(
                        "still there, deletionTimestamp={} finalizers={} {}",
                        s.json["metadata"]["deletionTimestamp"],
                        s.json["metadata"]["finalizers"],
                        s.describe_cluster()
                    )),
                }
            },
        )
        .await
    }

    /// Forces a check of binding `name` and waits until the operator has
    /// finished it: `status.forceSyncHandled` names the value just set, and
    /// that status is written at the end of the forced reconcile, after its
    /// vault reads and its Secret write. Reconciles of one object never
    /// overlap, so every earlier reconcile of it has finished too.
    pub async fn barrier(&self, on: &Scope, name: &str) {
        let value = on.force_sync(name).await;
        eventually(
            on,
            &format!("the forced check {value} of {}/{name} to finish", on.ns),
            SYNC_DEADLINE,
            || async {
                let b = on.binding(name).await;
                let handled = b.status.as_ref().and_then(|s| s.force_sync_handled.clone());
                if handled.as_deref() == Some(value.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "status.forceSyncHandled is {handled:?}; {}",
                        on.describe_bindings().await
                    ))
                }
            },
        )
        .await
    }
}

/// How long `Drop` waits for a SIGKILLed operator to be gone.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

impl Drop for Env {
    fn drop(&mut self) {
        // Stop every operator and wait until it is gone before cleaning up:
        // one still running could re-add a finalizer stripped below, or
        // write into a namespace being deleted. SIGKILL, then reap: once
        // `try_wait` has an exit status the process no longer exists. Drop
        // cannot await (and the test's runtime is blocked while it runs), so
        // the exit is polled, bounded by EXIT_DEADLINE.
        let mut children: Vec<Child> = self.operator.take().into_iter().collect();
        self.operator_metrics = None;
        children.extend(self.replicas.iter_mut().filter_map(|r| r.child.take()));
        for child in &mut children {
            let _ = child.start_kill();
        }
        let killed = Instant::now();
        for child in &mut children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Err(e) => {
                        eprintln!("cleanup: waiting for operator {:?}: {e}", child.id());
                        break;
                    }
                    Ok(None) if killed.elapsed() > EXIT_DEADLINE => {
                        eprintln!(
                            "cleanup: operator {:?} still runs {EXIT_DEADLINE:?} after SIGKILL; cleaning up anyway",
                            child.id()
                        );
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        let failed = std::thread::panicking();
        if failed {
            eprintln!(
                "=== the test failed; logs of its children (kept in {}) ===\n{}",
                self.dir.display(),
                self.all_logs.dump()
            );
        }
        let kubeconfig = self.kubeconfig.clone();
        let mut namespaces: Vec<String> = self.scopes.iter().map(|s| s.ns.clone()).collect();
        namespaces.extend(self.extra_namespaces.lock().unwrap().iter().cloned());
        let op_ns = self.op_ns.clone();
        let policies = std::mem::take(&mut *self.policies.lock().unwrap());
        let cluster_bindings = std::mem::take(&mut *self.cluster_bindings.lock().unwrap());
        let dir = self.all_logs.dir.clone();
        // A runtime and client of their own: Drop cannot await, and the
        // test's runtime (whose pooled connections the test client holds) is
        // blocked while this runs.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = client_for(&kubeconfig).await;
                // Cluster-scoped: left behind, they would govern other
                // tests' namespaces' bindings (and outlive the run).
                let policy_api: Api<VaultAccessPolicy> = Api::all(client.clone());
                for p in &policies {
                    if let Err(e) = policy_api.delete(p, &DeleteParams::default()).await
                        && api_code(&e) != Some(404)
                    {
                        eprintln!("cleanup: deleting VaultAccessPolicy {p}: {e}");
                    }
                }
                // Cluster-scoped too: left behind, they would keep writing
                // into any namespace they select, for as long as an
                // operator runs. Their bindings go with them (owned), and
                // with the namespaces.
                let cluster_api: Api<ClusterVaultSecretBinding> = Api::all(client.clone());
                for c in &cluster_bindings {
                    if let Err(e) = cluster_api.delete(c, &DeleteParams::default()).await
                        && api_code(&e) != Some(404)
                    {
                        eprintln!("cleanup: deleting ClusterVaultSecretBinding {c}: {e}");
                    }
                }
                let ns_api: Api<Namespace> = Api::all(client.clone());
                for ns in &namespaces {
                    // Merge bindings carry a finalizer; with the operator gone, drop it.
                    let bindings: Api<VaultSecretBinding> = Api::namespaced(client.clone(), ns);
                    if let Ok(list) = bindings.list(&Default::default()).await {
                        for b in list {
                            let _ = bindings
                                .patch(
                                    &b.name_any(),
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                                )
                                .await;
                        }
                    }
                    let _ = ns_api.delete(ns, &DeleteParams::default()).await;
                }
                let _ = ns_api.delete(&op_ns, &DeleteParams::default()).await;
            });
            if !failed {
                let _ = std::fs::remove_dir_all(dir);
            }
        })
        .join();
    }
}

/// One of several `kvsync run` processes of a test ([`Env::start_replica`]).
pub struct Replica {
    /// Its POD_NAME.
    pub name: String,
    /// Where it serves /metrics, /healthz and /readyz.
    pub metrics: SocketAddr,
    pub log: PathBuf,
    /// `None` once it was terminated or killed.
    child: Option<Child>,
}

impl Replica {
    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The `/readyz` answer when ready (e.g. `ready (leader)`); `Err` says
    /// what it answered instead.
    pub async fn readyz(&self) -> Result<String, String> {
        match http_get(self.metrics, "/readyz").await {
            Ok((200, body)) => Ok(body.trim().to_string()),
            Ok((status, body)) => Err(format!("{}: /readyz {status} {:?}", self.name, body.trim())),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// Its `/metrics` text.
    pub async fn metrics_text(&self) -> Result<String, String> {
        metrics_text_at(self.metrics, &self.name).await
    }

    /// The sum of every series of metric `name` (e.g.
    /// `kvsync_keyvault_requests_total`) whose labels contain each of
    /// `labels` (e.g. `ready="true"`); 0 when there is none.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self
            .metrics_text()
            .await
            .unwrap_or_else(|e| panic!("reading metrics: {e}"));
        metric_sum(&text, name, labels)
    }
}

/// The `/metrics` text served on `addr` (by `who`, for messages).
pub async fn metrics_text_at(addr: SocketAddr, who: &str) -> Result<String, String> {
    match http_get(addr, "/metrics").await {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(format!("{who}: /metrics {status} {body:?}")),
        Err(e) => Err(format!("{who}: {e}")),
    }
}

/// Every sample of metric `name` in an OpenMetrics text: (labels, value).
pub fn metric_samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let end = r.find("} ")?;
                    (r[..end].to_string(), &r[end + 2..])
                }
                None => (String::new(), rest.strip_prefix(' ')?),
            };
            Some((labels, value.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    metric_samples(text, name)
        .iter()
        .filter(|(have, _)| labels.iter().all(|l| have.split(',').any(|h| h == *l)))
        .map(|(_, v)| v)
        .sum()
}

/// A plain HTTP/1.1 GET (the operator's metrics port speaks no TLS):
/// `(status, body)`, or what went wrong. Bounded by 5 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer)
            .await
            .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
        parse_http_answer(&answer).ok_or_else(|| {
            format!(
                "GET http://{addr}{path}: not an HTTP answer: {:?}",
                String::from_utf8_lossy(&answer)
            )
        })
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err(format!("GET http://{addr}{path}: no answer within 5 s")))
}

/// Status and body of an HTTP/1.1 answer with a `Content-Length` body (as
/// the operator's server sends them).
fn parse_http_answer(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn tls_config(ca_pem: &[u8]) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

async fn install_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        VaultSecretBinding::crd(),
        VaultAccessPolicy::crd(),
        ClusterVaultSecretBinding::crd(),
    ] {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("the API server accepts the CRD");
        let established = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(crds.clone(), &name, established),
        )
        .await
        .expect("the CRD becomes established")
        .expect("watching the CRD");
    }
    // On a cluster that had an older CRD, the new schema is served a moment
    // after the apply: wait until it refuses what only it refuses (a tenant
    // id that is not a GUID or DNS name), with a server-side dry run.
    let probe: Api<VaultSecretBinding> = Api::namespaced(client.clone(), "default");
    let bad: VaultSecretBinding = serde_json::from_value(json!({
        "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
        "metadata": {"name": "kvsync-e2e-schema-probe"},
        "spec": {"vaultUrl": "https://probe.vault.azure.net", "secrets": [{"name": "a"}],
                 "identity": {"tenantId": "//127.0.0.1:1/evil"}},
    }))
    .unwrap();
    let started = Instant::now();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    loop {
        match probe.create(&dry, &bad).await {
            Err(e) if api_code(&e) == Some(422) => break,
            other => assert!(
                started.elapsed() < Duration::from_secs(30),
                "the API server still serves an old VaultSecretBinding schema: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Likewise for ClusterVaultSecretBindings (a 404 while the new kind is
    // not served yet): one that selects no namespace is refused by its
    // schema's rule.
    let probe: Api<ClusterVaultSecretBinding> = Api::all(client.clone());
    let bad: ClusterVaultSecretBinding = serde_json::from_value(json!({
        "apiVersion": "kvsync.io/v1alpha1", "kind": "ClusterVaultSecretBinding",
        "metadata": {"name": "kvsync-e2e-schema-probe"},
        "spec": {"vaultUrl": "https://probe.vault.azure.net", "secrets": [{"name": "a"}]},
    }))
    .unwrap();
    let started = Instant::now();
    loop {
        match probe.create(&dry, &bad).await {
            Err(e) if api_code(&e) == Some(422) => return,
            other => assert!(
                started.elapsed() < Duration::from_secs(30),
                "the API server does not serve the ClusterVaultSecretBinding schema yet: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The status of a kube API error, when it is one.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// The harness's own logic, checked without a cluster: a wait that misreads
/// a binding would make every e2e test wrong in the same way.
#[cfg(test)]
mod harness_tests {
    use super::*;

    fn binding(generation: i64, observed: i64, cond_gen: i64, status: &str) -> Seen {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
            "metadata": {"name": "app", "namespace": "ns", "generation": generation},
            "spec": {"vaultUrl": "https://127.0.0.1:1", "secrets": [{"name": "db-password"}]},
            "status": {"observedGeneration": observed, "conditions": [
                {"type": "ExpiringSoon", "status": "False", "reason": "NoneExpiring", "message": "",
                 "observedGeneration": cond_gen, "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Ready", "status": status, "reason": "KeyCollision", "message": "both map to key X",
                 "observedGeneration": cond_gen, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        Seen::from_json(serde_json::to_value(o).unwrap())
    }

    #[test]
    fn a_condition_counts_only_for_the_current_generation() {
        let stale = binding(3, 2, 2, "True");
        assert!(stale.current().is_none(), "{}", stale.describe());
        let looked_at = binding(3, 2, 3, "False");
        let c = looked_at.current().expect("computed for generation 3");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "KeyCollision")
        );
        assert_eq!(looked_at.observed, Some(2), "looked at, not applied");
        let d = looked_at.describe();
        assert!(
            d.contains("generation=Some(3)") && d.contains("Ready=False KeyCollision (gen 3)"),
            "{d}"
        );
        assert_eq!(
            binding(3, 3, 3, "True")
                .binding()
                .status
                .unwrap()
                .observed_generation,
            Some(3)
        );
    }

    fn cluster(generation: i64, observed: i64, cond_gen: i64) -> Seen {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kvsync.io/v1alpha1", "kind": "ClusterVaultSecretBinding",
            "metadata": {"name": "shared", "generation": generation},
            "spec": {"vaultUrl": "https://127.0.0.1:1", "secrets": [{"name": "db-password"}],
                     "namespaces": ["a", "b", "c"]},
            "status": {"observedGeneration": observed, "conditions": [
                {"type": "Ready", "status": "False", "reason": "NamespacesFailed",
                 "message": "1 of 3 namespaces failed: b (ClusterBindingConflict)",
                 "observedGeneration": cond_gen, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "namespacesSelected": 3, "namespacesSynced": 2, "namespacesFailed": 1,
                "failedNamespaces": [{"namespace": "b", "reason": "ClusterBindingConflict",
                                      "message": "VaultSecretBinding own of the namespace writes Secret shared too"}]}
        }))
        .unwrap();
        Seen::from_json(serde_json::to_value(o).unwrap())
    }

    #[test]
    fn a_cluster_binding_status_counts_only_when_it_describes_the_current_generation() {
        assert!(
            cluster(2, 1, 2).applied().is_none(),
            "status of generation 1"
        );
        assert!(
            cluster(2, 2, 1).applied().is_none(),
            "Ready of generation 1"
        );
        let seen = cluster(2, 2, 2);
        let c = seen.applied().expect("both of generation 2");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NamespacesFailed")
        );
        let st = seen.cluster_status();
        assert_eq!(
            (
                st.namespaces_selected,
                st.namespaces_synced,
                st.namespaces_failed
            ),
            (3, 2, 1)
        );
        assert_eq!(st.failed_namespaces[0].reason, "ClusterBindingConflict");
        let d = seen.describe_cluster();
        assert!(
            d.contains("namespacesSynced=2")
                && d.contains("Ready=False NamespacesFailed (gen 2)")
                && d.contains("ClusterBindingConflict"),
            "{d}"
        );
    }

    #[test]
    fn metrics_are_summed_by_name_and_labels() {
        let text = "# HELP kvsync_secret_writes Writes of Kubernetes Secrets.\n\
            # TYPE kvsync_secret_writes counter\n\
            kvsync_secret_writes_total 3\n\
            kvsync_keyvault_requests_total{vault=\"v\",op=\"get_secret\",status=\"200\"} 4\n\
            kvsync_keyvault_requests_total{vault=\"v\",op=\"list_secrets\",status=\"200\"} 1\n\
            kvsync_bindings{ready=\"true\"} 7\n\
            kvsync_bindings{ready=\"false\"} 0\n\
            # EOF\n";
        assert_eq!(metric_sum(text, "kvsync_secret_writes_total", &[]), 3.0);
        assert_eq!(metric_sum(text, "kvsync_keyvault_requests_total", &[]), 5.0);
        assert_eq!(
            metric_sum(
                text,
                "kvsync_keyvault_requests_total",
                &["op=\"get_secret\""]
            ),
            4.0
        );
        assert_eq!(
            metric_sum(text, "kvsync_bindings", &["ready=\"true\""]),
            7.0
        );
        assert_eq!(metric_sum(text, "kvsync_syncs_total", &[]), 0.0);
        assert_eq!(
            metric_sum(text, "kvsync_secret_writes", &[]),
            0.0,
            "a name is matched whole"
        );
    }

    #[test]
    fn http_answers_are_split_into_status_and_body() {
        let answer =
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 14\r\n\r\nshutting down\n";
        assert_eq!(
            parse_http_answer(answer),
            Some((503, "shutting down\n".to_string()))
        );
        assert_eq!(parse_http_answer(b"garbage"), None);
    }

    #[test]
    fn dev_vault_stats_are_counted_by_op_and_status() {
        let stats =
            json!({"requests": {"get_secret": {"200": 2, "403": 3}, "list_secrets": {"200": 1}}});
        assert_eq!(count_in(&stats, "get_secret", None), 5);
        assert_eq!(count_in(&stats, "get_secret", Some(403)), 3);
        assert_eq!(count_in(&stats, "token", None), 0);
    }
}
