//! Shared fixtures: an in-process dev vault over real HTTPS and clients for it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kvsync::azure::hosts::VaultHostPolicy;
use kvsync::azure::http::build_client;
use kvsync::azure::identity::{AzureEnvironment, Credential, TokenSource};
use kvsync::azure::keyvault::KeyVaultClient;
use kvsync::azure::retry::RetryPolicy;
use kvsync::devvault::{self, DevVaultConfig, RunningDevVault, Seed, Stats};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A dev vault and what a test needs to talk to it.
pub struct Fixture {
    pub vault: RunningDevVault,
    pub http: reqwest::Client,
    pub dir: TempDir,
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let mut bytes = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
        let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("kvsync-test-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Retries fast enough for tests: 4 attempts, 10-40 ms apart.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(5),
    }
}

pub async fn start(seed_yaml: &str) -> Fixture {
    start_with_lifetime(seed_yaml, Duration::from_secs(3600)).await
}

pub async fn start_with_lifetime(seed_yaml: &str, token_lifetime: Duration) -> Fixture {
    let seed = Seed::from_yaml(seed_yaml).expect("valid seed");
    let vault = devvault::start(DevVaultConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        seed,
        token_lifetime,
    })
    .await
    .expect("dev vault starts");
    let ca: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(vault.ca_pem().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let http = build_client(&ca).expect("client builds");
    Fixture {
        vault,
        http,
        dir: TempDir::new(),
    }
}

impl Fixture {
    /// The environment the webhook would inject, pointing at this dev vault,
    /// with a federated token file whose subject is `subject`.
    pub fn env(&self, client_id: &str, subject: &str) -> AzureEnvironment {
        let token_file = self.dir.path("federated-token");
        devvault::write_federated_token(&token_file, subject).unwrap();
        let url = self.vault.url();
        let client_id = client_id.to_string();
        AzureEnvironment::from_lookup(move |k| match k {
            "AZURE_AUTHORITY_HOST" => Some(format!("{url}/")),
            "AZURE_POD_IDENTITY_AUTHORITY_HOST" => Some(format!("{url}/")),
            "AZURE_TENANT_ID" => Some(devvault::DEV_TENANT_ID.into()),
            "AZURE_CLIENT_ID" => Some(client_id.clone()),
            "AZURE_FEDERATED_TOKEN_FILE" => Some(token_file.display().to_string()),
            _ => None,
        })
    }

    pub fn policy(&self) -> VaultHostPolicy {
        VaultHostPolicy::new([self.vault.addr().to_string()])
    }

    pub fn token_source(&self, credential: Credential, env: &AzureEnvironment) -> Arc<TokenSource> {
        Arc::new(TokenSource::new(
            credential,
            env.clone(),
            self.http.clone(),
            fast_retry(),
        ))
    }

    /// A Key Vault client signed in as the operator's workload identity `client_id`.
    pub fn client(&self, client_id: &str) -> (KeyVaultClient, Arc<TokenSource>) {
        let env = self.env(client_id, "system:serviceaccount:kvsync:kvsync");
        let tokens = self.token_source(env.operator_credential(None, None).unwrap(), &env);
        (self.client_with(tokens.clone()), tokens)
    }

    pub fn client_with(&self, tokens: Arc<TokenSource>) -> KeyVaultClient {
        let endpoint = self.policy().check(&self.vault.url()).unwrap();
        KeyVaultClient::new(self.http.clone(), endpoint, tokens, fast_retry())
    }

    pub async fn stats(&self) -> Stats {
        self.http
            .get(format!("{}/_dev/stats", self.vault.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn reset_stats(&self) {
        let r = self
            .http
            .post(format!("{}/_dev/stats/reset", self.vault.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    pub async fn fault(&self, body: serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/_dev/faults", self.vault.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    /// `DELETE /_dev/faults`: every injected fault ends.
    pub async fn clear_faults(&self) {
        let r = self
            .http
            .delete(format!("{}/_dev/faults", self.vault.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    /// A token for `client_id` via the client-secret flow (for raw requests).
    pub async fn raw_token(&self, client_id: &str) -> String {
        dev_token(&self.http, &self.vault.url(), client_id).await
    }

    /// `PUT /secrets/{name}`: a new version.
    pub async fn put_secret(&self, name: &str, value: &str) -> serde_json::Value {
        dev_put_secret(&self.http, &self.vault.url(), name, value).await
    }

    /// `PATCH /secrets/{name}/{version}` with attributes.
    pub async fn patch_secret(
        &self,
        name: &str,
        version: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        let token = self.raw_token("test-writer").await;
        self.http
            .patch(format!(
                "{}/secrets/{name}/{version}?api-version=2025-07-01",
                self.vault.url()
            ))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// A token from the dev vault at `url` for `client_id` (client-secret flow).
pub async fn dev_token(http: &reqwest::Client, url: &str, client_id: &str) -> String {
    let resp: serde_json::Value = http
        .post(format!(
            "{url}/{}/oauth2/v2.0/token",
            devvault::DEV_TENANT_ID
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("scope", "https://vault.azure.net/.default"),
            ("client_secret", "anything"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["access_token"].as_str().unwrap().to_string()
}

/// `PUT /secrets/{name}` at the dev vault at `url`: a new version (its bundle).
pub async fn dev_put_secret(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    value: &str,
) -> serde_json::Value {
    let token = dev_token(http, url, "test-writer").await;
    let r = http
        .put(format!("{url}/secrets/{name}?api-version=2025-07-01"))
        .bearer_auth(token)
        .json(&serde_json::json!({"value": value}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The scripted Kubernetes API of kube's tower-test pattern.
pub mod mock {
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::Value;

    /// The test's end of the mock API server.
    pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// A kube client whose every request reaches the returned handle.
    pub fn client() -> (kube::Client, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), handle)
    }

    /// Expects one request (method and path), answers it with `status` and
    /// `body`, and returns the query string and the JSON body that was sent.
    pub async fn expect(
        handle: &mut Handle,
        method: &str,
        path: &str,
        status: u16,
        body: Value,
    ) -> (String, Value) {
        let (request, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {path}, got nothing"));
        let query = request.uri().query().unwrap_or_default().to_string();
        assert_eq!(
            format!("{} {}", request.method(), request.uri().path()),
            format!("{method} {path}")
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let sent = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        (query, sent)
    }
}
