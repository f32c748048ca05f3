//! End-to-end tests against a real Kubernetes API server.
//!
//! They run when `KVSYNC_E2E_KUBECONFIG` names a kubeconfig with
//! cluster-admin, and are skipped (saying so) otherwise. Each test installs the
//! CRD, starts `kvsync dev-vault` and `kvsync run --namespace <its own>` as
//! child processes of the built binary, and works in a fresh namespace that it
//! deletes at the end. Nothing here needs pods to run: the cluster may have an
//! API server and a controller manager and no nodes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, CustomResourceExt, ResourceExt};
use kvsync::crd::VaultSecretBinding;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_kvsync");
/// A refresh interval as short as the CRD allows, so changes show up quickly.
const REFRESH: Duration = Duration::from_secs(30);
/// How long a change may take: refreshInterval + 10 % + slack for the API.
const CHANGE_DEADLINE: Duration = Duration::from_secs(50);
/// How long a first sync may take against a real API server.
const SYNC_DEADLINE: Duration = Duration::from_secs(20);

fn kubeconfig_path() -> Option<PathBuf> {
    std::env::var_os("KVSYNC_E2E_KUBECONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

macro_rules! e2e {
    () => {
        match kubeconfig_path() {
            Some(path) => path,
            None => {
                eprintln!("skipping: KVSYNC_E2E_KUBECONFIG is not set (it names a kubeconfig of a cluster to test against)");
                return;
            }
        }
    };
}

async fn client_for(path: &PathBuf) -> kube::Client {
    let kubeconfig =
        Kubeconfig::read_from(path).expect("KVSYNC_E2E_KUBECONFIG is a readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    kube::Client::try_from(config).expect("a client")
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `check` until it returns `Some`, or fails after `deadline` with `what`
/// and the operator's recent log lines.
async fn eventually<T, F, Fut>(env: &Env, what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if started.elapsed() > deadline {
            panic!(
                "timed out after {deadline:?} waiting for: {what}\n--- operator log (tail) ---\n{}",
                env.operator_log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One test's world: a namespace, a dev vault and an operator.
struct Env {
    client: kube::Client,
    ns: String,
    vault_url: String,
    http: reqwest::Client,
    dir: PathBuf,
    _vault: Child,
    operator: Option<Child>,
    kubeconfig: PathBuf,
    exports: BTreeMap<String, String>,
}

impl Env {
    async fn start(kubeconfig: PathBuf, seed: &str) -> Env {
        let client = client_for(&kubeconfig).await;
        install_crd(&client).await;
        let ns = format!("kvsync-e2e-{}", random_suffix());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": ns, "labels": {"kvsync-e2e": "true"}}}),
                )
                .unwrap(),
            )
            .await
            .expect("create the test namespace");

        let dir = std::env::temp_dir().join(format!("kvsync-e2e-{}", random_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("seed.yaml"), seed).unwrap();
        let port = free_port();
        let mut vault = Command::new(BIN)
            .args([
                "dev-vault",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--seed",
            ])
            .arg(dir.join("seed.yaml"))
            .arg("--ca-out")
            .arg(dir.join("ca.pem"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("dev-vault.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start kvsync dev-vault");
        // The export lines are printed once the vault listens.
        let mut lines = BufReader::new(vault.stdout.take().unwrap()).lines();
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
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("dev-vault printed its export lines");
        let vault_url = exports["KVSYNC_DEV_VAULT_URL"].clone();
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(&ca))
            .build()
            .unwrap();

        let mut env = Env {
            client,
            ns,
            vault_url,
            http,
            dir,
            _vault: vault,
            operator: None,
            kubeconfig,
            exports,
        };
        env.start_operator();
        env
    }

    fn start_operator(&mut self) {
        let port = free_port();
        let host = self.vault_url.trim_start_matches("https://").to_string();
        let child = Command::new(BIN)
            .args([
                "run",
                "--namespace",
                &self.ns,
                "--allowed-vault-hosts",
                &host,
                "--ca-file",
            ])
            .arg(self.dir.join("ca.pem"))
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--rollout-window",
                "2s",
                "--default-refresh-interval",
                "30s",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,kvsync=debug")
            .envs(self.exports.iter().filter(|(k, _)| k.starts_with("AZURE_")))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("operator.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start kvsync run");
        self.operator = Some(child);
    }

    fn operator_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("operator.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn bindings(&self) -> Api<VaultSecretBinding> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn apply_binding(&self, name: &str, spec: Value) {
        let mut spec = spec;
        if spec.get("vaultUrl").is_none() {
            spec["vaultUrl"] = json!(self.vault_url);
        }
        let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding", "metadata": {"name": name}, "spec": spec});
        self.bindings()
            .patch(
                name,
                &PatchParams::apply("kvsync-e2e").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap_or_else(|e| panic!("apply binding {name}: {e}"));
    }

    /// Applies a binding and waits for it to be Ready.
    async fn bind_and_wait(&self, name: &str, spec: Value) -> VaultSecretBinding {
        self.apply_binding(name, spec).await;
        self.ready(name, "True", SYNC_DEADLINE).await.0
    }

    async fn binding(&self, name: &str) -> VaultSecretBinding {
        self.bindings().get(name).await.unwrap()
    }

    /// Waits for the binding's Ready condition to have `status` and returns it.
    async fn ready(
        &self,
        name: &str,
        status: &str,
        deadline: Duration,
    ) -> (VaultSecretBinding, String, String) {
        eventually(
            self,
            &format!("binding {name} Ready={status}"),
            deadline,
            || async {
                let b = self.bindings().get_opt(name).await.ok().flatten()?;
                let c = b
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready")?
                    .clone();
                (c.status == status && c.observed_generation == b.metadata.generation)
                    .then(|| (b.clone(), c.reason.clone(), c.message.clone()))
            },
        )
        .await
    }

    async fn secret_data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let s = self.secrets().get_opt(name).await.ok().flatten()?;
        Some(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                .collect(),
        )
    }

    /// Waits until Secret `name` holds `value` under `key`.
    async fn wait_for_value(
        &self,
        name: &str,
        key: &str,
        value: &str,
        what: &str,
        deadline: Duration,
    ) {
        eventually(self, what, deadline, || async {
            (self.secret_data(name).await?.get(key)? == value).then_some(())
        })
        .await
    }

    /// `PUT /secrets/{name}`: returns the new version.
    async fn put_secret(&self, name: &str, value: &str) -> String {
        let bundle = support::dev_put_secret(&self.http, &self.vault_url, name, value).await;
        bundle["id"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    }

    async fn disable_secret(&self, name: &str) {
        let token = support::dev_token(&self.http, &self.vault_url, "e2e-writer").await;
        let r = self
            .http
            .patch(format!(
                "{}/secrets/{name}/?api-version=2025-07-01",
                self.vault_url
            ))
            .bearer_auth(token)
            .json(&json!({"attributes": {"enabled": false}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn vault_stats(&self) -> Value {
        self.http
            .get(format!("{}/_dev/stats", self.vault_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Stop the operator before the namespace goes, then delete the
        // namespace (on a thread of its own: Drop cannot await).
        if let Some(mut op) = self.operator.take() {
            let _ = op.start_kill();
        }
        // A client of its own: the test's runtime is blocked while this runs,
        // so connections pooled on it cannot be used here.
        let kubeconfig = self.kubeconfig.clone();
        let ns = self.ns.clone();
        let dir = self.dir.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = client_for(&kubeconfig).await;
                // Merge bindings carry a finalizer; with the operator gone, drop it.
                let bindings: Api<VaultSecretBinding> = Api::namespaced(client.clone(), &ns);
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
                let namespaces: Api<Namespace> = Api::all(client);
                let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
            });
            let _ = std::fs::remove_dir_all(dir);
        })
        .join();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let crd = VaultSecretBinding::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("kvsync-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the API server accepts the CRD");
    let established = kube::runtime::wait::conditions::is_crd_established();
    tokio::time::timeout(
        Duration::from_secs(30),
        kube::runtime::wait::await_condition(crds, &name, established),
    )
    .await
    .expect("the CRD becomes established")
    .expect("watching the CRD");
}

const SEED: &str = r#"
secrets:
  - {name: db-password, value: first-password}
  - {name: api-key, value: the-api-key}
"#;

#[tokio::test]
async fn binding_becomes_a_secret_with_data_owner_and_status() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait("app", json!({"secrets": [{"name": "db-password", "key": "DB_PASSWORD"}, {"name": "api-key"}], "refreshInterval": "30s"})).await;
    let (b, reason, message) = env.ready("app", "True", SYNC_DEADLINE).await;
    assert_eq!(reason, "Synced", "{message}");

    let secret = env.secrets().get("app").await.unwrap();
    let data = env.secret_data("app").await.unwrap();
    assert_eq!(data["DB_PASSWORD"], "first-password");
    assert_eq!(data["api-key"], "the-api-key");
    assert_eq!(secret.labels()["app.kubernetes.io/managed-by"], "kvsync");
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("VaultSecretBinding", b.uid().unwrap().as_str())
    );
    assert_eq!(owner.controller, Some(true));
    let managers: Vec<String> = secret
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"kvsync".to_string()), "{managers:?}");

    let status = b.status.unwrap();
    assert_eq!(status.secret_count, Some(2));
    assert!(status.data_hash.unwrap().starts_with("hmac-sha256:"));
    assert!(status.last_sync_time.is_some());
    assert!(status.secrets.iter().all(|s| s.version.len() == 32));
    let status_json = serde_json::to_string(&env.binding("app").await.status).unwrap();
    assert!(!status_json.contains("first-password") && !status_json.contains("the-api-key"));
}

#[tokio::test]
async fn new_version_in_the_vault_reaches_the_secret_within_the_refresh_interval() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "30s"}),
    )
    .await;
    let (b, _, _) = env.ready("app", "True", SYNC_DEADLINE).await;
    let old_version = b.status.unwrap().secrets[0].version.clone();

    let new_version = env.put_secret("db-password", "rotated-password").await;
    let changed_at = Instant::now();
    env.wait_for_value(
        "app",
        "db-password",
        "rotated-password",
        "the Secret to hold the new value",
        CHANGE_DEADLINE,
    )
    .await;
    let took = changed_at.elapsed();
    assert!(
        took <= REFRESH + REFRESH / 10 + Duration::from_secs(5),
        "took {took:?}"
    );
    let status = eventually(
        &env,
        "status.secrets[].version to follow",
        Duration::from_secs(10),
        || async {
            let s = env.binding("app").await.status?;
            (s.secrets.first()?.version == new_version).then_some(s)
        },
    )
    .await;
    assert_ne!(old_version, new_version);
    assert!(status.last_change_time.is_some());
}

#[tokio::test]
async fn unchanged_vault_writes_nothing() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "30s"}),
    )
    .await;
    let before = env.secrets().get("app").await.unwrap().resource_version();
    // Make the operator check the vault again, and see that it did.
    let gets_before = env.vault_stats().await["requests"]["get_secret"]["200"]
        .as_u64()
        .unwrap_or(0);
    env.bindings()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kvsync.io/force-sync": "1"}}})),
        )
        .await
        .unwrap();
    eventually(
        &env,
        "the forced check to reach the vault",
        SYNC_DEADLINE,
        || async {
            let gets = env.vault_stats().await["requests"]["get_secret"]["200"]
                .as_u64()
                .unwrap_or(0);
            (gets > gets_before).then_some(())
        },
    )
    .await;
    // Give the reconcile that follows the check time to (wrongly) write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.secrets().get("app").await.unwrap().resource_version(),
        before,
        "the Secret was written although nothing changed"
    );
}

#[tokio::test]
async fn disabled_secret_keeps_its_last_value_and_says_why() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait("app", json!({"secrets": [{"name": "db-password"}], "refreshInterval": "30s", "onDisabled": "KeepLast"})).await;
    env.disable_secret("db-password").await;
    let message = eventually(
        &env,
        "the condition to mention the disabled secret",
        CHANGE_DEADLINE,
        || async {
            let s = env.binding("app").await.status?;
            let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?;
            ready
                .message
                .contains("kept the last value of disabled")
                .then(|| ready.message.clone())
        },
    )
    .await;
    assert!(message.contains("db-password"), "{message}");
    assert_eq!(
        env.secret_data("app").await.unwrap()["db-password"],
        "first-password"
    );
}

#[tokio::test]
async fn non_vault_host_is_refused_without_a_token_request() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.apply_binding(
        "evil",
        json!({"vaultUrl": "https://collector.example.com", "secrets": [{"name": "db-password"}]}),
    )
    .await;
    let (_, reason, message) = env.ready("evil", "False", SYNC_DEADLINE).await;
    assert_eq!(reason, "VaultHostNotAllowed");
    assert!(message.contains("--allowed-vault-hosts"), "{message}");
    assert!(env.secrets().get_opt("evil").await.unwrap().is_none());
    assert_eq!(
        env.vault_stats().await["requests"].get("token"),
        None,
        "no token was requested"
    );
}

#[tokio::test]
async fn service_account_identity_works_in_its_namespace_and_not_across() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    sas.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "builder", "annotations": {"azure.workload.identity/client-id": "builder-app"}}})).unwrap())
        .await
        .unwrap();
    env.bind_and_wait("mine", json!({"identity": {"serviceAccountName": "builder"}, "secrets": [{"name": "db-password"}]})).await;
    let subjects = env.vault_stats().await["assertionSubjects"]["builder-app"].clone();
    assert_eq!(
        subjects[0],
        format!("system:serviceaccount:{}:builder", env.ns),
        "the TokenRequest token was exchanged"
    );

    // A ServiceAccount of another namespace cannot be named: it is looked up here only.
    let other_ns = format!("{}-other", env.ns);
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": other_ns}})).unwrap(),
        )
        .await
        .unwrap();
    let other: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &other_ns);
    other
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "elsewhere", "annotations": {"azure.workload.identity/client-id": "other-app"}}})).unwrap())
        .await
        .unwrap();
    env.apply_binding("theirs", json!({"identity": {"serviceAccountName": "elsewhere"}, "secrets": [{"name": "db-password"}]})).await;
    let (_, reason, message) = env.ready("theirs", "False", SYNC_DEADLINE).await;
    let _ = namespaces.delete(&other_ns, &DeleteParams::default()).await;
    assert_eq!(reason, "IdentityMisconfigured");
    assert!(
        message.contains(&format!(
            "ServiceAccount {}/elsewhere does not exist",
            env.ns
        )),
        "{message}"
    );
    assert!(
        env.vault_stats().await["assertionSubjects"]
            .get("other-app")
            .is_none()
    );
}

#[tokio::test]
async fn two_vault_names_on_one_key_change_nothing() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait(
        "app",
        json!({"secrets": [{"name": "db-password", "key": "X"}]}),
    )
    .await;
    let before = env.secrets().get("app").await.unwrap();
    env.bind_and_wait(
        "app",
        json!({"secrets": [{"name": "db-password", "key": "X"}, {"name": "api-key", "key": "X"}]}),
    )
    .await;
    let (_, reason, message) = env.ready("app", "False", SYNC_DEADLINE).await;
    assert_eq!(reason, "KeyCollision");
    assert!(message.contains("both map to key X"), "{message}");
    let after = env.secrets().get("app").await.unwrap();
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "the Secret was left as it was"
    );
}

#[tokio::test]
async fn merge_keeps_foreign_keys_and_removes_only_ours_on_delete() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.secrets()
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "shared"}, "stringData": {"owned-by-someone": "keep-me"}})).unwrap())
        .await
        .unwrap();
    env.apply_binding("merger", json!({"secrets": [{"name": "db-password", "key": "DB_PASSWORD"}], "target": {"name": "shared", "policy": "Merge"}})).await;
    env.ready("merger", "True", SYNC_DEADLINE).await;
    let data = env.secret_data("shared").await.unwrap();
    assert_eq!(data["owned-by-someone"], "keep-me");
    assert_eq!(data["DB_PASSWORD"], "first-password");
    assert!(
        env.binding("merger")
            .await
            .finalizers()
            .contains(&"kvsync.io/merge-cleanup".to_string())
    );

    env.bindings()
        .delete("merger", &DeleteParams::default())
        .await
        .unwrap();
    eventually(&env, "the binding to be gone", SYNC_DEADLINE, || async {
        env.bindings()
            .get_opt("merger")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let data = env
        .secret_data("shared")
        .await
        .expect("the shared Secret stays");
    assert_eq!(
        data.get("owned-by-someone").map(String::as_str),
        Some("keep-me")
    );
    assert!(
        !data.contains_key("DB_PASSWORD"),
        "our key was removed: {:?}",
        data.keys()
    );
}

#[tokio::test]
async fn edited_or_deleted_secret_is_repaired() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.apply_binding(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h"}),
    )
    .await;
    env.secrets()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"db-password": "tampered"}})),
        )
        .await
        .unwrap();
    env.wait_for_value(
        "app",
        "db-password",
        "first-password",
        "the edited Secret to be put back",
        SYNC_DEADLINE,
    )
    .await;
    env.secrets()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_for_value(
        "app",
        "db-password",
        "first-password",
        "the deleted Secret to come back",
        SYNC_DEADLINE,
    )
    .await;
}

#[tokio::test]
async fn rollout_target_is_restarted_once_per_change() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deployments
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": "agent"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}}}
        })).unwrap())
        .await
        .unwrap();
    env.bind_and_wait(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "30s",
                                    "rollout": [{"kind": "Deployment", "name": "agent"}]}),
    )
    .await;
    let start_generation = deployments.get("agent").await.unwrap().metadata.generation;
    let annotation = |d: &Deployment| {
        d.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get("kvsync.io/restartedAt")
            .cloned()
    };
    assert_eq!(
        annotation(&deployments.get("agent").await.unwrap()),
        None,
        "no restart on the first sync"
    );

    // Two changes in quick succession: one restart.
    env.put_secret("db-password", "second").await;
    env.put_secret("db-password", "third").await;
    let restarted = eventually(
        &env,
        "the Deployment to be restarted",
        CHANGE_DEADLINE,
        || async {
            let d = deployments.get("agent").await.ok()?;
            annotation(&d).map(|a| (a, d.metadata.generation))
        },
    )
    .await;
    assert_eq!(
        env.secret_data("app").await.unwrap()["db-password"],
        "third"
    );
    assert_eq!(
        restarted.1,
        start_generation.map(|g| g + 1),
        "one template change"
    );

    // A later check of an unchanged vault restarts nothing.
    let stats_before = env.vault_stats().await["requests"].clone();
    eventually(
        &env,
        "another check of the vault",
        CHANGE_DEADLINE,
        || async { (env.vault_stats().await["requests"] != stats_before).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = deployments.get("agent").await.unwrap();
    assert_eq!(annotation(&d), Some(restarted.0));
    assert_eq!(d.metadata.generation, restarted.1);
}

#[tokio::test]
async fn force_sync_annotation_checks_the_vault_now() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    env.bind_and_wait(
        "app",
        json!({"secrets": [{"name": "db-password"}], "refreshInterval": "1h"}),
    )
    .await;
    env.put_secret("db-password", "forced-value").await;
    env.bindings()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kvsync.io/force-sync": "now"}}})),
        )
        .await
        .unwrap();
    env.wait_for_value(
        "app",
        "db-password",
        "forced-value",
        "the forced sync to bring the new value",
        SYNC_DEADLINE,
    )
    .await;
}

#[tokio::test]
async fn invalid_spec_is_rejected_by_the_api_server() {
    let kc = e2e!();
    let env = Env::start(kc, SEED).await;
    for (spec, words) in [
        (
            json!({"vaultUrl": env.vault_url, "secrets": [{"name": "bad_name"}]}),
            "secrets[0].name",
        ),
        (
            json!({"vaultUrl": env.vault_url, "secrets": [{"name": "a"}], "refreshInterval": "10s"}),
            "at least 30s",
        ),
        (json!({"vaultUrl": env.vault_url}), "at least one secret"),
        (
            json!({"vaultUrl": env.vault_url, "select": {"all": true, "namePrefix": "x"}}),
            "exclusive",
        ),
    ] {
        let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding", "metadata": {"name": "bad"}, "spec": spec});
        let err = env
            .bindings()
            .patch(
                "bad",
                &PatchParams::apply("kvsync-e2e").force(),
                &Patch::Apply(&body),
            )
            .await
            .expect_err("the API server rejects it");
        assert!(err.to_string().contains(words), "{err}");
    }
}
