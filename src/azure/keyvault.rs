//! A Key Vault secrets client on `reqwest` (api-version 2025-07-01): get a
//! secret (latest or pinned), list secret items across pages, list versions.
//! Retries, the 401 challenge and Azure's error bodies are handled here; the
//! rest of kvsync sees typed results and [`KeyVaultError`].

use crate::reason::Reason;
use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::Url;
use reqwest::header::HeaderMap;
use serde::Deserialize;

use super::hosts::{HostError, VaultEndpoint};
use super::http::{MAX_RESPONSE_BYTES, describe_transport_error, read_limited, retry_after};
use super::identity::{IdentityError, TokenSource};
use super::retry::RetryPolicy;
use crate::value::SecretValue;

/// The Key Vault REST API version kvsync speaks.
pub const API_VERSION: &str = "2025-07-01";
/// Items per list page (Key Vault's maximum and default).
pub const PAGE_SIZE: usize = 25;
const MAX_PAGES: usize = 10_000;
/// A listing larger than this (items, or bytes over all pages) is not the
/// Key Vault API: a vault answering it is refused rather than held in memory.
const MAX_LISTING_ITEMS: usize = 250_000;
const MAX_LISTING_BYTES: usize = 256 * 1024 * 1024;

/// A Key Vault operation, for messages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GET /secrets/{name}[/{version}]`.
    GetSecret,
    /// `GET /secrets` (one page).
    ListSecrets,
    /// `GET /secrets/{name}/versions` (one page).
    ListVersions,
}

impl Operation {
    /// Label used in metrics and stats.
    pub fn label(self) -> &'static str {
        match self {
            Self::GetSecret => "get_secret",
            Self::ListSecrets => "list_secrets",
            Self::ListVersions => "list_versions",
        }
    }

    fn permission(self) -> &'static str {
        match self {
            Self::GetSecret => "secrets/get",
            Self::ListSecrets | Self::ListVersions => "secrets/list",
        }
    }
}

/// Why a vault refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForbiddenKind {
    /// An Azure RBAC role is missing (`ForbiddenByRbac`).
    Rbac,
    /// The vault's access policy lacks the permission.
    AccessPolicy,
    /// The vault firewall refused the client address.
    Firewall,
    /// Public network access is disabled; only private endpoints get in.
    PrivateLink,
    /// Another 403.
    Other,
}

/// What went wrong talking to a vault. Messages say what to do; none holds a value.
#[derive(Debug, thiserror::Error)]
pub enum KeyVaultError {
    /// The vault URL failed the host guard; no token was requested.
    #[error(transparent)]
    Host(#[from] HostError),
    /// No token could be had.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// 403: a permission, the firewall or private-link rules.
    #[error("{}", forbidden_message(.vault, .who, *.operation, *.kind, .detail))]
    Forbidden {
        /// The vault's short name (its host's first label).
        vault: String,
        /// The identity the vault refused.
        who: String,
        /// What was refused, which names the permission to grant.
        operation: Operation,
        /// Which rule refused it, which decides what to fix.
        kind: ForbiddenKind,
        /// The first line of the vault's message.
        detail: String,
    },
    /// 403 `SecretDisabled`.
    #[error(
        "secret {name} is disabled in vault {vault}: enable it in the vault, or set onDisabled (KeepLast keeps the last value)"
    )]
    SecretDisabled {
        /// The vault's short name (its host's first label).
        vault: String,
        /// The disabled secret.
        name: String,
    },
    /// 404.
    #[error("secret {name}{} was not found in vault {vault}: check the name, or mark the pick optional: true", .version.as_deref().map(|v| format!(" version {v}")).unwrap_or_default())]
    NotFound {
        /// The vault's short name (its host's first label).
        vault: String,
        /// The secret that is not there.
        name: String,
        /// The version asked for (`None`: the current one).
        version: Option<String>,
    },
    /// 401 after a fresh token.
    #[error(
        "vault {vault} did not accept the token of {who} ({detail}): check that the identity belongs to the vault's tenant"
    )]
    Unauthorized {
        /// The vault's short name (its host's first label).
        vault: String,
        /// The identity whose token was not accepted.
        who: String,
        /// The first line of the vault's message.
        detail: String,
    },
    /// 429 beyond the retry budget.
    #[error(
        "vault {vault} is throttling requests (429) after {attempts} attempts; kvsync backs off and retries"
    )]
    Throttled {
        /// The vault's short name (its host's first label).
        vault: String,
        /// Requests sent, retries included, before kvsync gave up.
        attempts: u32,
    },
    /// 5xx beyond the retry budget.
    #[error("vault {vault} failed with HTTP {status} {code} after {attempts} attempts: {detail}")]
    Server {
        /// The vault's short name (its host's first label).
        vault: String,
        /// The HTTP status of the last answer.
        status: u16,
        /// Key Vault's error code in the last answer (may be empty).
        code: String,
        /// The first line of the vault's message.
        detail: String,
        /// Requests sent, retries included, before kvsync gave up.
        attempts: u32,
    },
    /// DNS, connect, TLS or timeout.
    #[error(
        "cannot reach vault {vault} at {authority}: {detail} — check DNS and egress from the cluster to the vault (a private endpoint needs the privatelink.vaultcore.azure.net DNS zone)"
    )]
    Unreachable {
        /// The vault's short name (its host's first label).
        vault: String,
        /// The `host[:port]` kvsync tried to connect to.
        authority: String,
        /// What failed: DNS, connect, TLS or the timeout.
        detail: String,
    },
    /// 400 and other client errors.
    #[error("vault {vault} rejected the request (HTTP {status} {code}): {detail}")]
    BadRequest {
        /// The vault's short name (its host's first label).
        vault: String,
        /// The HTTP status of the answer.
        status: u16,
        /// Key Vault's error code (may be empty).
        code: String,
        /// The first line of the vault's message.
        detail: String,
    },
    /// A response that is not what the API promises.
    #[error("vault {vault} sent a response kvsync cannot read: {detail}")]
    InvalidResponse {
        /// The vault's short name (its host's first label).
        vault: String,
        /// What is wrong with the answer; never quotes its body, which
        /// may hold a value.
        detail: String,
    },
}

fn forbidden_message(
    vault: &str,
    who: &str,
    op: Operation,
    kind: ForbiddenKind,
    detail: &str,
) -> String {
    match (kind, op) {
        (ForbiddenKind::Firewall, _) => format!(
            "vault {vault} refused the client address (firewall): add the cluster's egress IP to \
             the vault's firewall allow-list, or reach the vault through a private endpoint"
        ),
        (ForbiddenKind::PrivateLink, _) => format!(
            "vault {vault} refused the client address: public network access is disabled — reach \
             it through a private endpoint from the cluster's network (see private endpoints)"
        ),
        (
            ForbiddenKind::Rbac | ForbiddenKind::AccessPolicy,
            Operation::ListSecrets | Operation::ListVersions,
        ) => format!(
            "{who} lacks secrets/list on vault {vault} (it does not have secrets list permission): \
             grant it 'Key Vault Secrets User' on the whole vault (a role on single secrets cannot \
             list), or List in the vault's access policy; picks by name in spec.secrets work without it"
        ),
        (ForbiddenKind::Rbac | ForbiddenKind::AccessPolicy, Operation::GetSecret) => format!(
            "{who} lacks secrets/get on vault {vault}: grant it 'Key Vault Secrets User' on the \
             vault or on the secret, or Get in the vault's access policy"
        ),
        (ForbiddenKind::Other, _) => format!(
            "vault {vault} refused {} for {who}: {detail}",
            op.permission()
        ),
    }
}

impl KeyVaultError {
    /// The condition reason for this error.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Host(_) => Reason::VaultHostNotAllowed,
            Self::Identity(e) => e.reason(),
            Self::Forbidden {
                kind: ForbiddenKind::Firewall | ForbiddenKind::PrivateLink,
                ..
            } => Reason::VaultNetworkRefused,
            Self::Forbidden {
                operation: Operation::ListSecrets | Operation::ListVersions,
                ..
            } => Reason::ListForbidden,
            Self::Forbidden { .. } => Reason::VaultForbidden,
            Self::SecretDisabled { .. } => Reason::SecretDisabled,
            Self::NotFound { .. } => Reason::SecretNotFound,
            Self::Unauthorized { .. } => Reason::AuthenticationFailed,
            Self::Throttled { .. } => Reason::VaultThrottled,
            Self::Server { .. } => Reason::VaultUnavailable,
            Self::Unreachable { .. } => Reason::VaultUnreachable,
            Self::BadRequest { .. } => Reason::VaultBadRequest,
            Self::InvalidResponse { .. } => Reason::InvalidVaultResponse,
        }
    }

    /// Whether retrying later may help without a person changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Identity(e) => e.is_transient(),
            Self::Throttled { .. } | Self::Server { .. } | Self::Unreachable { .. } => true,
            _ => false,
        }
    }
}

/// `attributes` of a secret (unix-time fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretAttributes {
    /// Whether the secret may be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Not valid before (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expiry (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Creation time (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// Last update (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<i64>,
    /// Soft-delete retention days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoverable_days: Option<i32>,
    /// Deletion recovery level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_level: Option<String>,
}

impl SecretAttributes {
    /// `enabled`, which Key Vault treats as true when absent.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// A secret with its value (`SecretBundle`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretBundle {
    /// The value (redacted in `Debug`).
    pub value: SecretValue,
    /// `https://{vault}/secrets/{name}/{version}`.
    pub id: String,
    /// Content type, if set.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Attributes.
    #[serde(default)]
    pub attributes: SecretAttributes,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Key id, for a secret backing a certificate.
    #[serde(default)]
    pub kid: Option<String>,
    /// True for a secret backing a certificate.
    #[serde(default)]
    pub managed: Option<bool>,
    /// When the vault served this bundle: its response's `Date` header, in
    /// unix seconds (`None` when absent or unreadable). Compare `updated`
    /// with this, not with the local clock, which may be skewed.
    #[serde(skip)]
    pub served_at: Option<i64>,
}

impl SecretBundle {
    /// The version id at the end of `id`.
    pub fn version(&self) -> &str {
        parse_secret_id(&self.id)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }
}

/// A secret's metadata without its value (`SecretItem`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretItem {
    /// `https://{vault}/secrets/{name}` (with `/{version}` when listing versions).
    pub id: String,
    /// Attributes.
    #[serde(default)]
    pub attributes: SecretAttributes,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Content type, if set.
    #[serde(default)]
    pub content_type: Option<String>,
    /// True for a secret backing a certificate.
    #[serde(default)]
    pub managed: Option<bool>,
}

impl SecretItem {
    /// The secret's name, from `id`.
    pub fn name(&self) -> &str {
        parse_secret_id(&self.id)
            .map(|(n, _)| n)
            .unwrap_or_default()
    }

    /// The version, when `id` carries one (version listings).
    pub fn version(&self) -> &str {
        parse_secret_id(&self.id)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }
}

/// Every item of a listing, with when the vault served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretListing {
    /// The items of all pages.
    pub items: Vec<SecretItem>,
    /// The `Date` header of the first page, in unix seconds: the listing
    /// shows the vault as it was at that second or later.
    pub served_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretListResult {
    value: Vec<SecretItem>,
    #[serde(default)]
    next_link: Option<String>,
}

#[derive(Deserialize, Default)]
struct AzureErrorBody {
    #[serde(default)]
    error: Option<AzureError>,
}

#[derive(Deserialize, Default, Clone)]
struct AzureError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    innererror: Option<Box<AzureError>>,
}

/// Splits `https://host/secrets/{name}[/{version}]` into name and version.
pub fn parse_secret_id(id: &str) -> Option<(&str, &str)> {
    let path = id.split_once("://")?.1.split_once('/')?.1;
    let rest = path.strip_prefix("secrets/")?;
    let (name, version) = rest.split_once('/').unwrap_or((rest, ""));
    Some((name, version.trim_end_matches('/')))
}

/// The `Date` header (an HTTP-date) in unix seconds.
fn served_at(headers: &HeaderMap) -> Option<i64> {
    let text = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    k8s_openapi::jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(text.trim())
        .ok()
        .map(|t| t.as_second())
}

/// A response body and when it was served.
struct Served {
    body: Vec<u8>,
    served_at: Option<i64>,
}

/// Parses `Bearer authorization="…", resource="…"` into its parameters.
fn parse_challenge(header: &str) -> BTreeMap<String, String> {
    let rest = header.trim().strip_prefix("Bearer").unwrap_or(header);
    rest.split(',')
        .filter_map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            Some((
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            ))
        })
        .collect()
}

/// Told of every request: vault short name, operation, HTTP status (`None`:
/// no answer). For metrics.
pub type RequestObserver = Arc<dyn Fn(&str, Operation, Option<u16>) + Send + Sync>;

/// A client for one vault, signed in as one identity.
pub struct KeyVaultClient {
    http: reqwest::Client,
    endpoint: VaultEndpoint,
    tokens: Arc<TokenSource>,
    retry: RetryPolicy,
    observer: Option<RequestObserver>,
    limiter: Option<Arc<super::ratelimit::RateLimiter>>,
}

impl KeyVaultClient {
    /// A client for `endpoint` (already checked by the host guard).
    pub fn new(
        http: reqwest::Client,
        endpoint: VaultEndpoint,
        tokens: Arc<TokenSource>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            endpoint,
            tokens,
            retry,
            observer: None,
            limiter: None,
        }
    }

    /// Takes a token from `limiter` before every request.
    pub fn with_limiter(mut self, limiter: Arc<super::ratelimit::RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Reports every request to `observer`.
    pub fn with_observer(mut self, observer: Option<RequestObserver>) -> Self {
        self.observer = observer;
        self
    }

    fn observe(&self, op: Operation, status: Option<u16>) {
        if let Some(o) = &self.observer {
            o(&self.endpoint.name, op, status);
        }
    }

    /// The vault this client talks to.
    pub fn endpoint(&self) -> &VaultEndpoint {
        &self.endpoint
    }

    /// Gets a secret's value: the latest version when `version` is `None` or empty.
    pub async fn get_secret(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<SecretBundle, KeyVaultError> {
        let version = version.filter(|v| !v.is_empty());
        let mut url = self.endpoint.base.clone();
        url.path_segments_mut()
            .expect("https URL has a path")
            .clear()
            .extend(["secrets", name, version.unwrap_or("")]);
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION);
        let served = self
            .send(url, Operation::GetSecret, Some((name, version)))
            .await?;
        let mut bundle: SecretBundle = self.parse(&served.body, "secret bundle")?;
        bundle.served_at = served.served_at;
        match parse_secret_id(&bundle.id) {
            Some((n, v)) if n.eq_ignore_ascii_case(name) && !v.is_empty() => Ok(bundle),
            _ => Err(KeyVaultError::InvalidResponse {
                vault: self.endpoint.name.clone(),
                detail: format!(
                    "secret id {:?} does not name secret {name} and a version",
                    bundle.id
                ),
            }),
        }
    }

    /// Lists every secret's metadata, following `nextLink` across pages.
    pub async fn list_secrets(&self) -> Result<Vec<SecretItem>, KeyVaultError> {
        Ok(self.list_secrets_dated().await?.items)
    }

    /// [`Self::list_secrets`] with the vault's `Date` of the first page.
    pub async fn list_secrets_dated(&self) -> Result<SecretListing, KeyVaultError> {
        let mut url = self.endpoint.base.clone();
        url.set_path("/secrets");
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION)
            .append_pair("maxresults", &PAGE_SIZE.to_string());
        self.list_pages(url, Operation::ListSecrets, None).await
    }

    /// Lists the versions of one secret (`GET /secrets/{name}/versions`,
    /// every page): each item's `id` names the secret and one version, and
    /// carries that version's attributes. A secret that does not exist is
    /// Azure's `SecretNotFound` ([`KeyVaultError::NotFound`]). An item that
    /// names another secret or no version is not the Key Vault API: refused.
    pub async fn list_versions(&self, name: &str) -> Result<Vec<SecretItem>, KeyVaultError> {
        let mut url = self.endpoint.base.clone();
        url.path_segments_mut()
            .expect("https URL has a path")
            .clear()
            .extend(["secrets", name, "versions"]);
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION)
            .append_pair("maxresults", &PAGE_SIZE.to_string());
        let items = self
            .list_pages(url, Operation::ListVersions, Some(name))
            .await?
            .items;
        if let Some(bad) = items
            .iter()
            .find(|i| !i.name().eq_ignore_ascii_case(name) || i.version().is_empty())
        {
            let shown: String = bad.id.chars().take(200).collect();
            return Err(self.invalid(format!(
                "version listing of secret {name} holds item {shown:?}, which does not name it and a version"
            )));
        }
        Ok(items)
    }

    async fn list_pages(
        &self,
        first: Url,
        op: Operation,
        secret: Option<&str>,
    ) -> Result<SecretListing, KeyVaultError> {
        let mut items = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        let mut first_served = None;
        let mut bytes = 0usize;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(self.invalid(format!("more than {MAX_PAGES} pages of secrets")));
            }
            let served = self.send(url, op, secret.map(|n| (n, None))).await?;
            if pages == 1 {
                first_served = served.served_at;
            }
            bytes = bytes.saturating_add(served.body.len());
            if bytes > MAX_LISTING_BYTES {
                return Err(self.invalid(format!(
                    "a listing of more than {} MiB",
                    MAX_LISTING_BYTES / (1024 * 1024)
                )));
            }
            let page: SecretListResult = self.parse(&served.body, "secret list")?;
            items.extend(page.value);
            if items.len() > MAX_LISTING_ITEMS {
                return Err(self.invalid(format!("more than {MAX_LISTING_ITEMS} secrets listed")));
            }
            if let Some(link) = page.next_link.filter(|l| !l.is_empty()) {
                next = Some(self.checked_next_link(&link)?);
            }
        }
        Ok(SecretListing {
            items,
            served_at: first_served,
        })
    }

    /// A `nextLink` must point at the same vault: a token never leaves it.
    fn checked_next_link(&self, link: &str) -> Result<Url, KeyVaultError> {
        let url = Url::parse(link)
            .map_err(|_| self.invalid(format!("nextLink {link:?} is not a URL")))?;
        let base = &self.endpoint.base;
        if url.scheme() != "https"
            || url.host_str() != base.host_str()
            || url.port_or_known_default() != base.port_or_known_default()
        {
            return Err(self.invalid(format!(
                "nextLink points away from the vault ({}): refused",
                url.host_str().unwrap_or_default()
            )));
        }
        Ok(url)
    }

    fn invalid(&self, detail: String) -> KeyVaultError {
        KeyVaultError::InvalidResponse {
            vault: self.endpoint.name.clone(),
            detail,
        }
    }

    fn parse<'a, T: Deserialize<'a>>(
        &self,
        body: &'a [u8],
        what: &str,
    ) -> Result<T, KeyVaultError> {
        serde_json::from_slice(body).map_err(|e| {
            // serde's message names the field and position, never the value.
            self.invalid(format!("not a {what}: {}", redact_serde_error(&e)))
        })
    }

    async fn send(
        &self,
        url: Url,
        op: Operation,
        secret: Option<(&str, Option<&str>)>,
    ) -> Result<Served, KeyVaultError> {
        let vault = self.endpoint.name.clone();
        // Always the Key Vault resource of the vault's cloud: a challenge
        // naming another resource is refused below, never followed.
        let scope = self.endpoint.scope();
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts;
            let token = self.tokens.token(&scope).await?;
            if let Some(limiter) = &self.limiter {
                limiter.acquire().await;
            }
            let sent = self
                .http
                .get(url.clone())
                .bearer_auth(token.token.expose())
                .send()
                .await;
            self.observe(op, sent.as_ref().ok().map(|r| r.status().as_u16()));
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    let detail = describe_transport_error(&e);
                    tracing::debug!(vault = %vault, op = op.label(), attempt, error = %detail, "vault request failed");
                    if last {
                        return Err(KeyVaultError::Unreachable {
                            vault,
                            authority: self.endpoint.authority(),
                            detail,
                        });
                    }
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            tracing::trace!(vault = %vault, op = op.label(), status, "vault response");
            let wait = retry_after(resp.headers());
            let date = served_at(resp.headers());
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(parse_challenge);
            let body = match read_limited(resp, MAX_RESPONSE_BYTES).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    return Err(
                        self.invalid(format!("response larger than {MAX_RESPONSE_BYTES} bytes"))
                    );
                }
                Err(e) if !last => {
                    tracing::debug!(vault = %vault, error = %describe_transport_error(&e), "vault response cut short");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(KeyVaultError::Unreachable {
                        vault,
                        authority: self.endpoint.authority(),
                        detail: describe_transport_error(&e),
                    });
                }
            };
            if (200..300).contains(&status) {
                return Ok(Served {
                    body,
                    served_at: date,
                });
            }
            let error = serde_json::from_slice::<AzureErrorBody>(&body)
                .ok()
                .and_then(|b| b.error)
                .unwrap_or_default();
            if status == 401
                && let Some(resource) = challenge
                    .as_ref()
                    .and_then(|c| c.get("resource").or_else(|| c.get("scope")))
                && !self.endpoint.accepts_resource(resource)
            {
                // Following it would fetch a token for another audience and
                // hand it to whoever answered. (`authorization`, the Entra
                // host it names, is never used: tokens come from the
                // operator's own authority host.)
                let shown: String = resource.chars().take(120).collect();
                return Err(self.invalid(format!(
                    "its 401 challenge asks for a token for resource {shown:?}, which is not the \
                     Key Vault resource of its cloud ({}): refused, no token was fetched for it — \
                     check that vaultUrl names a Key Vault and not a proxy or another service",
                    self.endpoint.resource
                )));
            }
            match status {
                401 if !reauthenticated => {
                    // The token may have expired or been revoked: fetch a new one, once.
                    reauthenticated = true;
                    self.tokens.invalidate(&scope).await;
                    attempt -= 1;
                    continue;
                }
                401 => {
                    return Err(KeyVaultError::Unauthorized {
                        vault,
                        who: self.tokens.describe(),
                        detail: first_line(&error.message),
                    });
                }
                // A Retry-After longer than we would wait ends the retries:
                // asking again sooner is what the vault just refused.
                429 if !last && wait.is_none_or(|d| d <= self.retry.max_retry_after) => {
                    let delay = wait.unwrap_or_else(|| self.retry.backoff(attempt));
                    tracing::debug!(vault = %vault, op = op.label(), ?delay, "vault throttled the request; waiting");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                429 => {
                    return Err(KeyVaultError::Throttled {
                        vault,
                        attempts: attempt,
                    });
                }
                500..=599 if !last => {
                    tokio::time::sleep(
                        wait.filter(|d| *d <= self.retry.max_retry_after)
                            .unwrap_or_else(|| self.retry.backoff(attempt)),
                    )
                    .await;
                    continue;
                }
                500..=599 => {
                    return Err(KeyVaultError::Server {
                        vault,
                        status,
                        code: error.code,
                        detail: first_line(&error.message),
                        attempts: attempt,
                    });
                }
                _ => return Err(self.classify(status, error, op, secret)),
            }
        }
    }

    fn classify(
        &self,
        status: u16,
        error: AzureError,
        op: Operation,
        secret: Option<(&str, Option<&str>)>,
    ) -> KeyVaultError {
        let vault = self.endpoint.name.clone();
        let inner = error
            .innererror
            .as_ref()
            .map(|i| i.code.as_str())
            .unwrap_or("");
        let (name, version) = secret.unwrap_or(("", None));
        match status {
            403 if inner == "SecretDisabled"
                || error.code == "SecretDisabled"
                || error.message.contains("disabled secret") =>
            {
                KeyVaultError::SecretDisabled {
                    vault,
                    name: name.into(),
                }
            }
            403 => {
                let kind = if inner == "ForbiddenByRbac" {
                    ForbiddenKind::Rbac
                } else if inner == "ForbiddenByFirewall"
                    || error.message.contains("Client address is not authorized")
                {
                    ForbiddenKind::Firewall
                } else if inner == "ForbiddenByConnection"
                    || error.message.contains("Public network access is disabled")
                {
                    ForbiddenKind::PrivateLink
                } else if inner == "AccessDenied" || error.message.contains("does not have secrets")
                {
                    ForbiddenKind::AccessPolicy
                } else {
                    ForbiddenKind::Other
                };
                KeyVaultError::Forbidden {
                    vault,
                    who: self.tokens.describe(),
                    operation: op,
                    kind,
                    detail: first_line(&error.message),
                }
            }
            // Only Key Vault's own code means "no such secret": a 404 from a
            // proxy, a wrong path or another service must not make an
            // optional pick disappear from the Secret.
            404 if op != Operation::ListSecrets && error.code == "SecretNotFound" => {
                KeyVaultError::NotFound {
                    vault,
                    name: name.into(),
                    version: version.map(str::to_string),
                }
            }
            404 if error.code.is_empty() => KeyVaultError::InvalidResponse {
                vault,
                detail: format!(
                    "HTTP 404 without Key Vault's error body for {}: the request may not have \
                     reached Key Vault (a proxy or gateway in between?) — check vaultUrl and the \
                     network path to the vault",
                    op.label()
                ),
            },
            _ => KeyVaultError::BadRequest {
                vault,
                status,
                code: error.code,
                detail: first_line(&error.message),
            },
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// serde_json errors can quote the input around the error; keep only the
/// category and position so no value from the body reaches a message.
fn redact_serde_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "unexpected fields or types",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    let msg = e.to_string();
    // "missing field `id`" and "expected a string" are safe and useful; the
    // rest of serde's text may quote data from the body.
    let head = msg.split(" at line").next().unwrap_or(&msg);
    let safe = if head.starts_with("missing field") || head.starts_with("unknown variant") {
        head.split(',').next().unwrap_or(head).to_string()
    } else if let Some((_, expected)) = head.split_once(", expected ") {
        format!("expected {expected}")
    } else {
        String::new()
    };
    if safe.is_empty() {
        format!("{what} at line {}, column {}", e.line(), e.column())
    } else {
        format!("{what}: {safe} (line {}, column {})", e.line(), e.column())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_ids_split_into_name_and_version() {
        assert_eq!(
            parse_secret_id("https://v.vault.azure.net/secrets/db/3f6c"),
            Some(("db", "3f6c"))
        );
        assert_eq!(
            parse_secret_id("https://v.vault.azure.net/secrets/db"),
            Some(("db", ""))
        );
        assert_eq!(parse_secret_id("https://v.vault.azure.net/keys/db"), None);
    }

    #[test]
    fn challenge_parameters_are_read() {
        let c = parse_challenge(
            r#"Bearer authorization="https://login.microsoftonline.com/72f988bf", resource="https://vault.azure.net""#,
        );
        assert_eq!(
            c["authorization"],
            "https://login.microsoftonline.com/72f988bf"
        );
        assert_eq!(c["resource"], "https://vault.azure.net");
    }

    #[test]
    fn serde_errors_do_not_quote_the_body() {
        let e = serde_json::from_str::<SecretBundle>(r#"{"value": 98765, "id": "x"}"#).unwrap_err();
        let shown = redact_serde_error(&e);
        assert!(!shown.contains("98765"), "{shown}");
        let e = serde_json::from_str::<SecretBundle>(r#"{"value": "topsecret"}"#).unwrap_err();
        let shown = redact_serde_error(&e);
        assert!(
            shown.contains("missing field `id`") && !shown.contains("topsecret"),
            "{shown}"
        );
    }
}
