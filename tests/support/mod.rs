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

/// A canned HTTP answer of a [`Scripted`] server.
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Canned {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Canned {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

/// A tiny server on 127.0.0.1 that answers every request with what `answer`
/// says for its path and counts the requests: a stand-in for a hostile or
/// broken endpoint (a foreign token endpoint, a proxy in front of a vault).
/// HTTPS with a dev-vault certificate (trusted by the fixtures' client), or
/// plain HTTP like IMDS. Stops when dropped.
pub struct Scripted {
    pub addr: std::net::SocketAddr,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    pub async fn https(answer: impl Fn(&str) -> Canned + Send + Sync + 'static) -> Self {
        Self::start(answer, true).await
    }

    pub async fn http(answer: impl Fn(&str) -> Canned + Send + Sync + 'static) -> Self {
        Self::start(answer, false).await
    }

    async fn start(answer: impl Fn(&str) -> Canned + Send + Sync + 'static, tls: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls
            .then(|| tokio_rustls::TlsAcceptor::from(devvault::tls::make().unwrap().server_config));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let answer = Arc::new(answer);
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let answer = answer.clone();
                let counted = counted.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let canned = answer(req.uri().path());
                            let mut resp = http::Response::builder().status(canned.status);
                            for (k, v) in &canned.headers {
                                resp = resp.header(*k, v.as_str());
                            }
                            let resp = resp
                                .body(http_body_util::Full::new(bytes::Bytes::from(canned.body)))
                                .unwrap();
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        },
                    );
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            if let Ok(stream) = a.accept(tcp).await {
                                let _ = builder
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                                .await;
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            requests,
            task,
        }
    }

    /// `https://127.0.0.1:PORT` (or `http://` for a plain server).
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fixture {
    /// [`Fixture::env`] with some variables replaced (e.g. a hostile
    /// `AZURE_TENANT_ID`, or another `AZURE_AUTHORITY_HOST`).
    pub fn env_with(
        &self,
        client_id: &str,
        overrides: &[(&'static str, String)],
    ) -> AzureEnvironment {
        let base = self.env(client_id, "system:serviceaccount:kvsync:kvsync");
        let token_file = base.federated_token_file.clone().unwrap();
        let url = self.vault.url();
        let client_id = client_id.to_string();
        let overrides = overrides.to_vec();
        AzureEnvironment::from_lookup(move |k| {
            if let Some((_, v)) = overrides.iter().find(|(o, _)| *o == k) {
                return Some(v.clone());
            }
            match k {
                "AZURE_AUTHORITY_HOST" => Some(format!("{url}/")),
                "AZURE_POD_IDENTITY_AUTHORITY_HOST" => Some(format!("{url}/")),
                "AZURE_TENANT_ID" => Some(devvault::DEV_TENANT_ID.into()),
                "AZURE_CLIENT_ID" => Some(client_id.clone()),
                "AZURE_FEDERATED_TOKEN_FILE" => Some(token_file.display().to_string()),
                _ => None,
            }
        })
    }

    /// An `AzureAccess` allowed to reach this dev vault, with `env`.
    pub fn access(&self, env: AzureEnvironment) -> kvsync::azure::AzureAccess {
        kvsync::azure::AzureAccess::new(self.http.clone(), self.policy(), env, fast_retry())
    }
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

    /// Like [`expect`], but the answer is made from the JSON body that was
    /// sent (e.g. a create answered with the object created).
    pub async fn expect_answering(
        handle: &mut Handle,
        method: &str,
        path: &str,
        status: u16,
        answer: impl FnOnce(&Value) -> Value,
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
                .body(Body::from(serde_json::to_vec(&answer(&sent)).unwrap()))
                .unwrap(),
        );
        (query, sent)
    }
}
