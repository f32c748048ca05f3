//! The real `kvsync run` as a child process against the API stand-in
//! (tests/support/apiserver.rs) and one in-process dev vault; a test file
//! includes it next to `mod support` and `mod apiserver` (by #[path]): for tests of
//! whole behaviours without a cluster. Killed when dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::apiserver::ApiServer;
use crate::support::{Fixture, TempDir};

/// The namespace the operator runs in (its hash key Secret, its Lease).
pub const OPERATOR_NS: &str = "kvsync";

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An API stand-in, a dev vault and `kvsync run` against both.
pub struct Stack {
    pub api: ApiServer,
    pub vault: Fixture,
    pub client: kube::Client,
    child: tokio::process::Child,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    dir: TempDir,
}

impl Stack {
    /// Starts all three with the vault seeded by `seed`; returns once the
    /// operator's `/readyz` answers 200 (its watches listed).
    pub async fn start(seed: &str, flags: &[&str]) -> Stack {
        let vault = crate::support::start(seed).await;
        let dir = TempDir::new();
        let api = ApiServer::start().await;
        api.create_namespace(OPERATOR_NS);
        let kubeconfig = dir.path("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
        let ca = dir.path("vault-ca.pem");
        std::fs::write(&ca, vault.vault.ca_pem()).unwrap();
        let token = dir.path("federated-token");
        kvsync::devvault::write_federated_token(&token, "system:serviceaccount:kvsync:kvsync")
            .unwrap();
        let http = kvsync::azure::http::build_client(&[]).expect("http client");
        for attempt in 1..=3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
            let log = dir.path(&format!("operator-{attempt}.log"));
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvsync"))
                .arg("run")
                .args(["--allowed-vault-hosts", &vault.vault.addr().to_string()])
                .arg("--ca-file")
                .arg(&ca)
                .args(["--metrics-addr", &metrics.to_string()])
                .args(["--log-format", "json"])
                .args(flags)
                .env("KUBECONFIG", &kubeconfig)
                .env("POD_NAMESPACE", OPERATOR_NS)
                .env("POD_NAME", "kvsync-test")
                .env("RUST_LOG", "info")
                .env("AZURE_AUTHORITY_HOST", format!("{}/", vault.vault.url()))
                .env("AZURE_TENANT_ID", kvsync::devvault::DEV_TENANT_ID)
                .env("AZURE_CLIENT_ID", kvsync::devvault::DEV_CLIENT_ID)
                .env("AZURE_FEDERATED_TOKEN_FILE", &token)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .kill_on_drop(true)
                .spawn()
                .expect("start kvsync run");
            let started = Instant::now();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    if tail(&log, 5).contains("cannot listen on --metrics-addr") && attempt < 3 {
                        break;
                    }
                    panic!("kvsync run exited ({status}):\n{}", tail(&log, 40));
                }
                let ready = http
                    .get(format!("http://{metrics}/readyz"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200);
                if ready {
                    let client = api.client();
                    return Stack {
                        api,
                        vault,
                        client,
                        child,
                        metrics,
                        log,
                        dir,
                    };
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "kvsync run not ready within 60 s:\n{}",
                    tail(&log, 40)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        unreachable!("three attempts")
    }

    /// Polls `f` every 50 ms until it returns `Some`, for at most `within`;
    /// panics naming `what` (with the operator's last log lines) otherwise.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                started.elapsed() < within,
                "{what}: not within {within:?}\n{}",
                tail(&self.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Stack {
    /// VmHWM of the operator: its peak resident set, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.proc_status_mib("VmHWM").expect("VmHWM")
    }

    /// VmRSS of the operator: its resident set now, in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        self.proc_status_mib("VmRSS")
    }

    /// A `kB` field of the operator's /proc/PID/status (`VmHWM`, `VmRSS`),
    /// in MiB to a tenth; `None` once it has exited.
    pub fn proc_status_mib(&self, field: &str) -> Option<f64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
        Some((kib / 1024.0 * 10.0).round() / 10.0)
    }

    /// The operator's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Waits used by the stand-in tests.
pub const WITHIN: Duration = Duration::from_secs(15);

/// The text of `key` in a Secret object (its `data`, base64-decoded).
pub fn decoded(secret: &serde_json::Value, key: &str) -> Option<String> {
    use base64::Engine;
    let b64 = secret["data"][key].as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()
}

impl Stack {
    /// Creates VaultSecretBinding `ns/name` with `spec` (its `vaultUrl` set
    /// to the dev vault's), in process.
    pub fn create_binding(&self, ns: &str, name: &str, spec: serde_json::Value) {
        self.create_binding_with(serde_json::json!({"name": name, "namespace": ns}), spec);
    }

    /// [`Self::create_binding`] with whole `metadata` (annotations, owners).
    pub fn create_binding_with(&self, metadata: serde_json::Value, spec: serde_json::Value) {
        let mut spec = spec;
        spec["vaultUrl"] = serde_json::json!(self.vault.vault.url());
        self.api
            .create(serde_json::json!({
                "apiVersion": "kvsync.io/v1alpha1", "kind": "VaultSecretBinding",
                "metadata": metadata, "spec": spec,
            }))
            .expect("binding created");
    }

    /// The text of `key` in Secret `ns/name`, if it is there.
    pub fn secret_text(&self, ns: &str, name: &str, key: &str) -> Option<String> {
        decoded(&self.api.get("secrets", ns, name)?, key)
    }

    /// Binding `ns/name`'s Ready condition once it has `status` — for
    /// `True`, describing its current generation (a failure may be reported
    /// before its generation is observed).
    pub async fn ready_condition(&self, ns: &str, name: &str, status: &str) -> serde_json::Value {
        self.wait_for(&format!("{ns}/{name} Ready={status}"), WITHIN, || {
            let (c, current) = self.ready_now(ns, name)?;
            (c["status"] == status && (current || status == "False")).then_some(c)
        })
        .await
    }

    /// Binding `ns/name`'s Ready condition now, and whether its status
    /// describes the current generation; `None` before it has one.
    pub fn ready_now(&self, ns: &str, name: &str) -> Option<(serde_json::Value, bool)> {
        let b = self.api.get("vaultsecretbindings", ns, name)?;
        let c = b["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        let current = b["status"]["observedGeneration"] == b["metadata"]["generation"];
        Some((c, current))
    }
}
