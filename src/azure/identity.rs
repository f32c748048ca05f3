//! The credential chain (DESIGN §3) and the token cache.
//!
//! A binding's `spec.identity` resolves to a [`Credential`]; a [`TokenSource`]
//! turns a credential into access tokens, caches them per scope, refreshes
//! them ahead of expiry and lets one request per identity be in flight. A
//! [`TokenSources`] registry shares one `TokenSource` among every binding that
//! uses the same identity.

use crate::reason::Reason;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use reqwest::Url;
use serde::Deserialize;

use super::http::{MAX_RESPONSE_BYTES, describe_transport_error, read_limited};
use super::retry::RetryPolicy;
use crate::crd::VaultIdentity;
use crate::value::SecretValue;

/// Audience of ServiceAccount tokens exchanged at Entra ID.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Entra ID of the public cloud.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
/// The instance metadata service's token endpoint.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// ServiceAccount annotation naming the Entra application.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// ServiceAccount annotation naming the Entra tenant.
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Why no token could be had. Messages say what to fix; none holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The operator's own workload identity is not configured.
    #[error(
        "{var} is not set, so the operator has no workload identity of its own: label the \
         operator's pod azure.workload.identity/use=true and annotate its ServiceAccount with \
         azure.workload.identity/client-id, or set spec.identity"
    )]
    MissingOperatorIdentity { var: &'static str },
    /// The federated token file could not be read.
    #[error(
        "cannot read the federated token file {path}: {detail} (is the workload-identity \
         webhook injecting it into the operator's pod?)"
    )]
    TokenFile { path: String, detail: String },
    /// The ServiceAccount named by the binding does not exist.
    #[error(
        "ServiceAccount {namespace}/{name} does not exist: create it or fix spec.identity.serviceAccountName"
    )]
    ServiceAccountNotFound { namespace: String, name: String },
    /// The ServiceAccount does not name an Entra application.
    #[error(
        "ServiceAccount {namespace}/{name} has no {CLIENT_ID_ANNOTATION} annotation and \
         spec.identity.clientId is not set: annotate it with the Entra application's client id"
    )]
    MissingClientId { namespace: String, name: String },
    /// No tenant is known for the identity.
    #[error(
        "no tenant id for {who}: set spec.identity.tenantId, the ServiceAccount's \
         {TENANT_ID_ANNOTATION} annotation, or AZURE_TENANT_ID on the operator"
    )]
    MissingTenant { who: String },
    /// The Kubernetes API refused or failed a read or a TokenRequest.
    #[error("{action}: {detail}")]
    Kubernetes { action: String, detail: String },
    /// The client-secret Secret or its key is missing.
    #[error("Secret {namespace}/{name} has no key {key:?}: fix spec.identity.clientSecretRef")]
    ClientSecretMissing {
        namespace: String,
        name: String,
        key: String,
    },
    /// Entra ID (or IMDS) answered with an error.
    #[error("Entra ID refused {who} ({code}): {description}{hint}")]
    Refused {
        who: String,
        code: String,
        description: String,
        hint: String,
    },
    /// Entra ID or IMDS could not be reached, or kept failing.
    #[error("cannot get a token for {who} from {endpoint}: {detail}")]
    Unavailable {
        who: String,
        endpoint: String,
        detail: String,
    },
    /// The token endpoint answered something that is not a token.
    #[error("the token endpoint {endpoint} sent a response kvsync cannot read: {detail}")]
    InvalidResponse { endpoint: String, detail: String },
}

impl IdentityError {
    /// The condition reason for this error.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Refused { .. } => Reason::AuthenticationFailed,
            Self::Unavailable { .. } | Self::InvalidResponse { .. } | Self::Kubernetes { .. } => {
                Reason::IdentityUnavailable
            }
            _ => Reason::IdentityMisconfigured,
        }
    }

    /// Whether trying again later may succeed without a change by a person.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Kubernetes { .. } | Self::TokenFile { .. }
        )
    }
}

/// Where a federated client assertion comes from.
#[derive(Clone)]
pub enum AssertionSource {
    /// A projected token file, re-read on every exchange (the operator's own identity).
    File(PathBuf),
    /// A TokenRequest for a ServiceAccount in the binding's namespace.
    ServiceAccount {
        client: kube::Client,
        namespace: String,
        name: String,
    },
}

impl std::fmt::Debug for AssertionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "File({})", p.display()),
            Self::ServiceAccount {
                namespace, name, ..
            } => write!(f, "ServiceAccount({namespace}/{name})"),
        }
    }
}

/// How to sign in to Entra ID.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Workload identity: a federated assertion exchanged for a token.
    ClientAssertion {
        tenant_id: String,
        client_id: String,
        assertion: AssertionSource,
    },
    /// A service principal's client secret.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: SecretValue,
    },
    /// A managed identity through IMDS (`None`: system-assigned).
    ManagedIdentity { client_id: Option<String> },
}

impl Credential {
    /// A stable key: equal keys share one token cache.
    pub fn key(&self) -> String {
        match self {
            Self::ClientAssertion {
                tenant_id,
                client_id,
                assertion: AssertionSource::File(p),
            } => format!("wi/{tenant_id}/{client_id}/{}", p.display()),
            Self::ClientAssertion {
                tenant_id,
                client_id,
                assertion:
                    AssertionSource::ServiceAccount {
                        namespace, name, ..
                    },
            } => format!("sa/{namespace}/{name}/{tenant_id}/{client_id}"),
            Self::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => {
                let digest =
                    ring::digest::digest(&ring::digest::SHA256, secret.expose().as_bytes());
                let short: String = digest.as_ref()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("sp/{tenant_id}/{client_id}/{short}")
            }
            Self::ManagedIdentity { client_id } => {
                format!("mi/{}", client_id.as_deref().unwrap_or("system"))
            }
        }
    }

    /// Who this is, for messages: never a secret.
    pub fn describe(&self) -> String {
        match self {
            Self::ClientAssertion {
                client_id,
                assertion: AssertionSource::File(_),
                ..
            } => format!("identity {client_id} (operator workload identity)"),
            Self::ClientAssertion {
                client_id,
                assertion:
                    AssertionSource::ServiceAccount {
                        namespace, name, ..
                    },
                ..
            } => format!("identity {client_id} (ServiceAccount {namespace}/{name})"),
            Self::ClientSecret { client_id, .. } => {
                format!("identity {client_id} (service principal)")
            }
            Self::ManagedIdentity { client_id: Some(c) } => {
                format!("identity {c} (managed identity)")
            }
            Self::ManagedIdentity { client_id: None } => {
                "the system-assigned managed identity".to_string()
            }
        }
    }
}

/// The operator's Azure environment: authority host, IMDS endpoint, and its
/// own workload identity (from the variables the webhook injects).
#[derive(Debug, Clone)]
pub struct AzureEnvironment {
    /// Entra ID host, from `AZURE_AUTHORITY_HOST`.
    pub authority_host: Url,
    /// IMDS token endpoint (overridable, e.g. for tests, with
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` as the Azure SDKs do).
    pub imds_endpoint: Url,
    /// `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    pub federated_token_file: Option<PathBuf>,
}

impl AzureEnvironment {
    /// Reads the `AZURE_*` variables of the process.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads the variables through `get` (testable).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let authority_host = get("AZURE_AUTHORITY_HOST")
            .and_then(|h| Url::parse(&h).ok())
            .unwrap_or_else(|| Url::parse(DEFAULT_AUTHORITY_HOST).expect("valid default"));
        let imds_endpoint = get("AZURE_POD_IDENTITY_AUTHORITY_HOST")
            .and_then(|h| Url::parse(&h).ok())
            .and_then(|h| h.join("metadata/identity/oauth2/token").ok())
            .unwrap_or_else(|| Url::parse(DEFAULT_IMDS_ENDPOINT).expect("valid default"));
        Self {
            authority_host,
            imds_endpoint,
            client_id: get("AZURE_CLIENT_ID"),
            tenant_id: get("AZURE_TENANT_ID"),
            federated_token_file: get("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
        }
    }

    /// The operator's own workload identity, with optional overrides.
    pub fn operator_credential(
        &self,
        client_override: Option<&str>,
        tenant_override: Option<&str>,
    ) -> Result<Credential, IdentityError> {
        let file =
            self.federated_token_file
                .clone()
                .ok_or(IdentityError::MissingOperatorIdentity {
                    var: "AZURE_FEDERATED_TOKEN_FILE",
                })?;
        let client_id = client_override
            .map(str::to_string)
            .or_else(|| self.client_id.clone())
            .ok_or(IdentityError::MissingOperatorIdentity {
                var: "AZURE_CLIENT_ID",
            })?;
        let tenant_id = tenant_override
            .map(str::to_string)
            .or_else(|| self.tenant_id.clone())
            .ok_or(IdentityError::MissingOperatorIdentity {
                var: "AZURE_TENANT_ID",
            })?;
        Ok(Credential::ClientAssertion {
            tenant_id,
            client_id,
            assertion: AssertionSource::File(file),
        })
    }

    /// Resolves a binding's `spec.identity` in `namespace` to a credential.
    /// ServiceAccounts and Secrets are read in that namespace only.
    pub async fn resolve(
        &self,
        identity: Option<&VaultIdentity>,
        namespace: &str,
        kube: &kube::Client,
    ) -> Result<Credential, IdentityError> {
        let Some(id) = identity else {
            return self.operator_credential(None, None);
        };
        if let Some(mi) = &id.managed_identity {
            return Ok(Credential::ManagedIdentity {
                client_id: mi.client_id.clone(),
            });
        }
        if let Some(sa_name) = &id.service_account_name {
            let api: Api<ServiceAccount> = Api::namespaced(kube.clone(), namespace);
            let sa = api
                .get_opt(sa_name)
                .await
                .map_err(|e| IdentityError::Kubernetes {
                    action: format!("cannot read ServiceAccount {namespace}/{sa_name}"),
                    detail: e.to_string(),
                })?
                .ok_or_else(|| IdentityError::ServiceAccountNotFound {
                    namespace: namespace.into(),
                    name: sa_name.clone(),
                })?;
            let annotations = sa.metadata.annotations.unwrap_or_default();
            let client_id = id
                .client_id
                .clone()
                .or_else(|| annotations.get(CLIENT_ID_ANNOTATION).cloned())
                .ok_or_else(|| IdentityError::MissingClientId {
                    namespace: namespace.into(),
                    name: sa_name.clone(),
                })?;
            let tenant_id = id
                .tenant_id
                .clone()
                .or_else(|| annotations.get(TENANT_ID_ANNOTATION).cloned())
                .or_else(|| self.tenant_id.clone())
                .ok_or_else(|| IdentityError::MissingTenant {
                    who: format!("ServiceAccount {namespace}/{sa_name}"),
                })?;
            return Ok(Credential::ClientAssertion {
                tenant_id,
                client_id,
                assertion: AssertionSource::ServiceAccount {
                    client: kube.clone(),
                    namespace: namespace.into(),
                    name: sa_name.clone(),
                },
            });
        }
        if let Some(r) = &id.client_secret_ref {
            let client_id = id.client_id.clone().ok_or_else(|| IdentityError::Refused {
                who: "the service principal".into(),
                code: "missing client id".into(),
                description: "spec.identity.clientSecretRef needs spec.identity.clientId".into(),
                hint: String::new(),
            })?;
            let tenant_id = id
                .tenant_id
                .clone()
                .or_else(|| self.tenant_id.clone())
                .ok_or_else(|| IdentityError::MissingTenant {
                    who: format!("service principal {client_id}"),
                })?;
            let api: Api<Secret> = Api::namespaced(kube.clone(), namespace);
            let secret = api
                .get_opt(&r.name)
                .await
                .map_err(|e| IdentityError::Kubernetes {
                    action: format!("cannot read Secret {namespace}/{}", r.name),
                    detail: e.to_string(),
                })?;
            let missing = || IdentityError::ClientSecretMissing {
                namespace: namespace.into(),
                name: r.name.clone(),
                key: r.key.clone(),
            };
            let bytes = secret
                .and_then(|s| s.data)
                .and_then(|mut d| d.remove(&r.key))
                .ok_or_else(missing)?;
            let text = String::from_utf8(bytes.0).map_err(|_| missing())?;
            return Ok(Credential::ClientSecret {
                tenant_id,
                client_id,
                secret: SecretValue::new(text.trim_end_matches(['\r', '\n'])),
            });
        }
        self.operator_credential(id.client_id.as_deref(), id.tenant_id.as_deref())
    }
}

/// An access token and when to stop using it.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The bearer token.
    pub token: SecretValue,
    /// When Entra says it expires.
    pub expires_at: SystemTime,
    refresh_at: SystemTime,
}

impl AccessToken {
    fn new(token: SecretValue, lifetime: Duration) -> Self {
        let now = SystemTime::now();
        // Refresh ahead of expiry: 5 minutes early, or at half-life for short tokens.
        let margin = Duration::from_secs(300).min(lifetime / 2);
        Self {
            token,
            expires_at: now + lifetime,
            refresh_at: now + lifetime - margin,
        }
    }

    fn fresh(&self) -> bool {
        SystemTime::now() < self.refresh_at
    }
}

#[derive(Deserialize)]
struct EntraToken {
    access_token: SecretValue,
    expires_in: NumberOrString,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    Text(String),
}

impl NumberOrString {
    fn seconds(&self) -> Option<u64> {
        match self {
            Self::Number(n) => Some(*n),
            Self::Text(s) => s.parse().ok(),
        }
    }
}

#[derive(Deserialize, Default)]
struct EntraError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Turns a credential into access tokens; cached per scope, one request in
/// flight at a time.
pub struct TokenSource {
    credential: Credential,
    env: AzureEnvironment,
    http: reqwest::Client,
    retry: RetryPolicy,
    cache: tokio::sync::Mutex<HashMap<String, AccessToken>>,
    requests: std::sync::atomic::AtomicU64,
}

impl TokenSource {
    /// A token source for `credential`.
    pub fn new(
        credential: Credential,
        env: AzureEnvironment,
        http: reqwest::Client,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            credential,
            env,
            http,
            retry,
            cache: tokio::sync::Mutex::new(HashMap::new()),
            requests: Default::default(),
        }
    }

    /// The credential behind this source.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// Who this is, for messages.
    pub fn describe(&self) -> String {
        self.credential.describe()
    }

    /// Token requests sent so far (cache misses).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A token for `scope`, from the cache while it is fresh.
    pub async fn token(&self, scope: &str) -> Result<AccessToken, IdentityError> {
        // Holding the lock across the request makes concurrent callers wait
        // for the one request instead of sending their own.
        let mut cache = self.cache.lock().await;
        if let Some(t) = cache.get(scope).filter(|t| t.fresh()) {
            return Ok(t.clone());
        }
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = self.fetch(scope).await?;
        cache.insert(scope.to_string(), token.clone());
        Ok(token)
    }

    /// Drops the cached token for `scope` (after the vault refused it).
    pub async fn invalidate(&self, scope: &str) {
        self.cache.lock().await.remove(scope);
    }

    async fn fetch(&self, scope: &str) -> Result<AccessToken, IdentityError> {
        match &self.credential {
            Credential::ManagedIdentity { client_id } => {
                self.fetch_imds(scope, client_id.as_deref()).await
            }
            Credential::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => {
                let form = vec![
                    ("grant_type", "client_credentials".to_string()),
                    ("client_id", client_id.clone()),
                    ("scope", scope.to_string()),
                    ("client_secret", secret.expose().to_string()),
                ];
                self.fetch_entra(tenant_id, form).await
            }
            Credential::ClientAssertion {
                tenant_id,
                client_id,
                assertion,
            } => {
                let jwt = self.assertion(assertion).await?;
                let form = vec![
                    ("grant_type", "client_credentials".to_string()),
                    ("client_id", client_id.clone()),
                    ("scope", scope.to_string()),
                    ("client_assertion_type", ASSERTION_TYPE.to_string()),
                    ("client_assertion", jwt.expose().to_string()),
                ];
                self.fetch_entra(tenant_id, form).await
            }
        }
    }

    async fn assertion(&self, source: &AssertionSource) -> Result<SecretValue, IdentityError> {
        match source {
            AssertionSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|s| SecretValue::new(s.trim()))
                .map_err(|e| IdentityError::TokenFile {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                }),
            AssertionSource::ServiceAccount {
                client,
                namespace,
                name,
            } => {
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
                let request = TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![TOKEN_EXCHANGE_AUDIENCE.to_string()],
                        expiration_seconds: Some(3600),
                        bound_object_ref: None,
                    },
                    ..Default::default()
                };
                let resp = api
                    .create_token_request(name, &PostParams::default(), &request)
                    .await
                    .map_err(|e| match &e {
                        kube::Error::Api(s) if s.code == 404 => IdentityError::ServiceAccountNotFound {
                            namespace: namespace.clone(),
                            name: name.clone(),
                        },
                        _ => IdentityError::Kubernetes {
                            action: format!(
                                "cannot get a token for ServiceAccount {namespace}/{name} (TokenRequest)"
                            ),
                            detail: e.to_string(),
                        },
                    })?;
                let token = resp.status.map(|s| s.token).unwrap_or_default();
                if token.is_empty() {
                    return Err(IdentityError::Kubernetes {
                        action: format!("TokenRequest for ServiceAccount {namespace}/{name}"),
                        detail: "the API server returned no token".into(),
                    });
                }
                Ok(SecretValue::new(token))
            }
        }
    }

    async fn fetch_entra(
        &self,
        tenant_id: &str,
        form: Vec<(&'static str, String)>,
    ) -> Result<AccessToken, IdentityError> {
        let endpoint = self
            .env
            .authority_host
            .join(&format!("{tenant_id}/oauth2/v2.0/token"))
            .map_err(|e| IdentityError::InvalidResponse {
                endpoint: self.env.authority_host.to_string(),
                detail: e.to_string(),
            })?;
        let http = self.http.clone();
        let ep = endpoint.clone();
        self.send_with_retry(&endpoint, move || http.post(ep.clone()).form(&form))
            .await
    }

    async fn fetch_imds(
        &self,
        scope: &str,
        client_id: Option<&str>,
    ) -> Result<AccessToken, IdentityError> {
        let mut endpoint = self.env.imds_endpoint.clone();
        {
            let mut q = endpoint.query_pairs_mut();
            q.append_pair("api-version", "2018-02-01");
            q.append_pair("resource", scope.trim_end_matches("/.default"));
            if let Some(c) = client_id {
                q.append_pair("client_id", c);
            }
        }
        let http = self.http.clone();
        let ep = endpoint.clone();
        self.send_with_retry(&endpoint, move || {
            http.get(ep.clone()).header("Metadata", "true")
        })
        .await
    }

    async fn send_with_retry(
        &self,
        endpoint: &Url,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<AccessToken, IdentityError> {
        let who = self.describe();
        let shown = format!(
            "{}://{}{}",
            endpoint.scheme(),
            endpoint.host_str().unwrap_or_default(),
            endpoint.port().map(|p| format!(":{p}")).unwrap_or_default()
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts;
            let resp = match request().send().await {
                Ok(r) => r,
                Err(e) if !last => {
                    tracing::debug!(%who, error = %describe_transport_error(&e), attempt, "token request failed; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(IdentityError::Unavailable {
                        who,
                        endpoint: shown,
                        detail: describe_transport_error(&e),
                    });
                }
            };
            let status = resp.status();
            let retry_after = super::keyvault::retry_after(resp.headers());
            let body = read_limited(resp, MAX_RESPONSE_BYTES)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            if status.is_success() {
                let parsed: EntraToken =
                    serde_json::from_slice(&body).map_err(|e| IdentityError::InvalidResponse {
                        endpoint: shown.clone(),
                        detail: format!("not a token response ({e})"),
                    })?;
                let lifetime =
                    parsed
                        .expires_in
                        .seconds()
                        .ok_or_else(|| IdentityError::InvalidResponse {
                            endpoint: shown.clone(),
                            detail: "expires_in is not a number".into(),
                        })?;
                if parsed.access_token.is_empty() {
                    return Err(IdentityError::InvalidResponse {
                        endpoint: shown,
                        detail: "empty access_token".into(),
                    });
                }
                return Ok(AccessToken::new(
                    parsed.access_token,
                    Duration::from_secs(lifetime),
                ));
            }
            let transient = status.as_u16() == 429 || status.is_server_error();
            if transient && !last {
                let delay = retry_after
                    .filter(|d| *d <= self.retry.max_retry_after)
                    .unwrap_or_else(|| self.retry.backoff(attempt));
                tracing::debug!(%who, status = status.as_u16(), attempt, "token endpoint busy; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
            let err: EntraError = serde_json::from_slice(&body).unwrap_or_default();
            if transient {
                return Err(IdentityError::Unavailable {
                    who,
                    endpoint: shown,
                    detail: format!(
                        "HTTP {} {}",
                        status.as_u16(),
                        first_line(&err.error_description)
                    ),
                });
            }
            let code = if err.error.is_empty() {
                format!("HTTP {}", status.as_u16())
            } else {
                err.error.clone()
            };
            return Err(IdentityError::Refused {
                hint: entra_hint(&err.error_description, &self.credential),
                who,
                code,
                description: first_line(&err.error_description).to_string(),
            });
        }
    }
}

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default();
    line.split(" Trace ID:").next().unwrap_or(line).trim()
}

/// What to do about an Entra refusal, by its AADSTS code.
fn entra_hint(description: &str, credential: &Credential) -> String {
    let subject = match credential {
        Credential::ClientAssertion {
            assertion:
                AssertionSource::ServiceAccount {
                    namespace, name, ..
                },
            ..
        } => format!("system:serviceaccount:{namespace}:{name}"),
        _ => "system:serviceaccount:<operator namespace>:<operator ServiceAccount>".into(),
    };
    let code = description.split(':').next().unwrap_or_default();
    match code {
        "AADSTS70021" | "AADSTS700211" | "AADSTS700212" | "AADSTS700213" => format!(
            " — add a federated credential to the Entra application with the cluster's OIDC \
             issuer, subject {subject} and audience {TOKEN_EXCHANGE_AUDIENCE}"
        ),
        "AADSTS700016" => " — check the client id: no such application in this tenant".into(),
        "AADSTS90002" => " — check the tenant id: Entra ID does not know this tenant".into(),
        "AADSTS7000215" | "AADSTS7000222" => {
            " — the client secret is wrong or expired: put a current one in the Secret named by spec.identity.clientSecretRef".into()
        }
        "AADSTS700024" => " — the federated token expired before it was exchanged; check the projected token's lifetime".into(),
        _ => String::new(),
    }
}

/// Shares one [`TokenSource`] per identity among all bindings.
#[derive(Default)]
pub struct TokenSources {
    sources: Mutex<HashMap<String, Arc<TokenSource>>>,
}

impl TokenSources {
    /// The source for `credential`, created on first use.
    pub fn get(
        &self,
        credential: Credential,
        env: &AzureEnvironment,
        http: &reqwest::Client,
        retry: RetryPolicy,
    ) -> Arc<TokenSource> {
        let key = credential.key();
        let mut map = self.sources.lock().expect("token source registry lock");
        map.entry(key)
            .or_insert_with(|| {
                Arc::new(TokenSource::new(
                    credential,
                    env.clone(),
                    http.clone(),
                    retry,
                ))
            })
            .clone()
    }

    /// How many identities have a source.
    pub fn len(&self) -> usize {
        self.sources
            .lock()
            .expect("token source registry lock")
            .len()
    }

    /// True when no identity has a source yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
