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
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use reqwest::Url;
use serde::Deserialize;

use super::http::{MAX_RESPONSE_BYTES, describe_transport_error, read_limited, retry_after};
use super::retry::RetryPolicy;
use crate::crd::{VaultIdentity, entra_id_problem, is_entra_id};
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

/// Longest a token is cached, whatever the endpoint says: a hostile or broken
/// endpoint's `expires_in` of 10^30 must neither overflow the clock nor pin a
/// token for ever.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest a token is cached: an `expires_in` of 0 or less would otherwise
/// send one token request per vault request. One second still honours a
/// genuinely short-lived token (refreshed at half-life) while bounding a
/// broken endpoint to about two requests a second per identity.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(1);
/// How long a failed token request is answered from the cache, so many
/// readers of one identity cause one request, not a storm. A `Retry-After`
/// from the endpoint replaces it (up to the retry policy's longest wait).
pub const FAILURE_CACHE_TTL: Duration = Duration::from_secs(10);

/// Why no token could be had. Messages say what to fix; none holds a secret.
/// `Clone`, so a cached failure can be handed to every caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    /// A tenant or client id that is neither a GUID nor a DNS name. It would
    /// end up in the token URL or request, so it is refused where it enters.
    #[error("{origin}: {problem}; fix {origin}")]
    InvalidId { origin: String, problem: String },
    /// An endpoint variable of the operator that is not a plain https origin.
    #[error("the operator's {var} is {value:?}, which kvsync will not use: {expected}")]
    InvalidEndpoint {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The last check before a credential leaves the process failed.
    #[error(
        "refused to send the credential of {who} to {target}: it is not {expected}; check \
         the tenant id and AZURE_AUTHORITY_HOST"
    )]
    CredentialRedirected {
        who: String,
        target: String,
        expected: String,
    },
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
    /// Why `AZURE_AUTHORITY_HOST` cannot be used; every Entra token request
    /// then fails with it rather than going somewhere else.
    authority_problem: Option<IdentityError>,
    /// Likewise for `AZURE_POD_IDENTITY_AUTHORITY_HOST` and IMDS requests.
    imds_problem: Option<IdentityError>,
}

/// Where a tenant or client id came from, for the message that refuses it.
enum Origin<'a> {
    Spec(&'static str),
    Annotation(&'static str, &'a str, &'a str),
    Env(&'static str),
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Spec(field) => f.write_str(field),
            Self::Annotation(a, ns, name) => {
                write!(f, "the {a} annotation of ServiceAccount {ns}/{name}")
            }
            Self::Env(var) => write!(f, "the operator's environment variable {var}"),
        }
    }
}

#[derive(Clone, Copy)]
enum IdKind {
    Tenant,
    Client,
}

impl IdKind {
    fn what(self) -> &'static str {
        match self {
            Self::Tenant => "a tenant id",
            Self::Client => "a client id",
        }
    }
}

/// `value` if it is a GUID or a DNS name, else an error naming `origin`.
fn checked_id(value: &str, kind: IdKind, origin: Origin<'_>) -> Result<String, IdentityError> {
    if is_entra_id(value) {
        Ok(value.to_string())
    } else {
        Err(IdentityError::InvalidId {
            origin: origin.to_string(),
            problem: entra_id_problem(value, kind.what()),
        })
    }
}

/// The first of `candidates` that is set, checked.
fn first_id<const N: usize>(
    kind: IdKind,
    candidates: [(Option<&str>, Origin<'_>); N],
) -> Result<Option<String>, IdentityError> {
    for (value, origin) in candidates {
        if let Some(v) = value {
            return checked_id(v, kind, origin).map(Some);
        }
    }
    Ok(None)
}

/// `AZURE_AUTHORITY_HOST` must be a bare https origin: the tenant and
/// `oauth2/v2.0/token` are appended as path segments, and the origin is what
/// every credential is checked against before it is sent.
fn authority_host(value: &str) -> Result<Url, IdentityError> {
    let bad = || IdentityError::InvalidEndpoint {
        var: "AZURE_AUTHORITY_HOST",
        value: value.chars().take(200).collect(),
        expected: "set it to the Entra ID host of your cloud as an https URL without path, \
                   query or credentials, like https://login.microsoftonline.com/",
    };
    let url = Url::parse(value).map_err(|_| bad())?;
    if url.scheme() != "https"
        || url.host_str().is_none_or(str::is_empty)
        || !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(url)
}

/// `AZURE_POD_IDENTITY_AUTHORITY_HOST` (an IMDS stand-in) must be a bare
/// http(s) origin too; the token path is appended to it.
fn imds_endpoint(value: &str) -> Result<Url, IdentityError> {
    let bad = || IdentityError::InvalidEndpoint {
        var: "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        value: value.chars().take(200).collect(),
        expected: "set it to the instance metadata endpoint as an http(s) URL without path, \
                   query or credentials, like http://169.254.169.254/, or unset it",
    };
    let mut url = Url::parse(value).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none_or(str::is_empty)
        || !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(bad());
    }
    url.path_segments_mut()
        .map_err(|_| bad())?
        .pop_if_empty()
        .extend(["metadata", "identity", "oauth2", "token"]);
    Ok(url)
}

/// Whether `url` goes to the same scheme, host and port as `origin`.
fn same_origin(url: &Url, origin: &Url) -> bool {
    url.scheme() == origin.scheme()
        && url.host_str().is_some()
        && url.host_str() == origin.host_str()
        && url.port_or_known_default() == origin.port_or_known_default()
}

/// `scheme://host[:port]` of a URL, for messages (never a path or query).
fn origin_of(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

/// The token endpoint of `tenant` at `authority`, built by path segments so
/// that no tenant text can change the host (`Url::join("//evil/…")` would).
pub fn entra_token_url(authority: &Url, tenant: &str) -> Result<Url, IdentityError> {
    let tenant = checked_id(tenant, IdKind::Tenant, Origin::Spec("the tenant id"))?;
    let mut url = authority.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|_| IdentityError::InvalidEndpoint {
            var: "AZURE_AUTHORITY_HOST",
            value: authority.to_string(),
            expected: "an https URL like https://login.microsoftonline.com/",
        })?
        .clear()
        .push(&tenant)
        .extend(["oauth2", "v2.0", "token"]);
    Ok(url)
}

impl AzureEnvironment {
    /// Reads the `AZURE_*` variables of the process.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads the variables through `get` (testable).
    ///
    /// A malformed `AZURE_AUTHORITY_HOST` or `AZURE_POD_IDENTITY_AUTHORITY_HOST`
    /// is not replaced by a default (that would send credentials to a cloud
    /// nobody chose): it is kept as a problem that [`Self::check`] reports and
    /// that every token request of this environment fails with
    /// (`IdentityMisconfigured`). The client and tenant ids are checked when
    /// a credential uses them.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let mut authority_problem = None;
        let mut imds_problem = None;
        let default_authority = || Url::parse(DEFAULT_AUTHORITY_HOST).expect("valid default");
        let authority_host = match get("AZURE_AUTHORITY_HOST") {
            None => default_authority(),
            Some(h) => authority_host(&h).unwrap_or_else(|e| {
                authority_problem = Some(e);
                default_authority()
            }),
        };
        let default_imds = || Url::parse(DEFAULT_IMDS_ENDPOINT).expect("valid default");
        let imds_endpoint = match get("AZURE_POD_IDENTITY_AUTHORITY_HOST") {
            None => default_imds(),
            Some(h) => imds_endpoint(&h).unwrap_or_else(|e| {
                imds_problem = Some(e);
                default_imds()
            }),
        };
        Self {
            authority_host,
            imds_endpoint,
            client_id: get("AZURE_CLIENT_ID"),
            tenant_id: get("AZURE_TENANT_ID"),
            federated_token_file: get("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
            authority_problem,
            imds_problem,
        }
    }

    /// Every problem of the environment, for a check at startup: a malformed
    /// endpoint variable, or an `AZURE_CLIENT_ID`/`AZURE_TENANT_ID` that is
    /// neither a GUID nor a DNS name.
    pub fn check(&self) -> Result<(), IdentityError> {
        if let Some(p) = self
            .authority_problem
            .as_ref()
            .or(self.imds_problem.as_ref())
        {
            return Err(p.clone());
        }
        if let Some(c) = &self.client_id {
            checked_id(c, IdKind::Client, Origin::Env("AZURE_CLIENT_ID"))?;
        }
        if let Some(t) = &self.tenant_id {
            checked_id(t, IdKind::Tenant, Origin::Env("AZURE_TENANT_ID"))?;
        }
        Ok(())
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
        let client_id = first_id(
            IdKind::Client,
            [
                (client_override, Origin::Spec("spec.identity.clientId")),
                (self.client_id.as_deref(), Origin::Env("AZURE_CLIENT_ID")),
            ],
        )?
        .ok_or(IdentityError::MissingOperatorIdentity {
            var: "AZURE_CLIENT_ID",
        })?;
        let tenant_id = first_id(
            IdKind::Tenant,
            [
                (tenant_override, Origin::Spec("spec.identity.tenantId")),
                (self.tenant_id.as_deref(), Origin::Env("AZURE_TENANT_ID")),
            ],
        )?
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
        self.resolve_cached(identity, namespace, kube, None).await
    }

    /// [`Self::resolve`], taking a ServiceAccount's annotations from `cache`
    /// when it holds the ServiceAccount; one it does not hold (not listed
    /// yet, just created, or absent) is read.
    pub async fn resolve_cached(
        &self,
        identity: Option<&VaultIdentity>,
        namespace: &str,
        kube: &kube::Client,
        cache: Option<&ServiceAccountCache>,
    ) -> Result<Credential, IdentityError> {
        self.resolve_ids(identity, namespace, Some(kube), cache)
            .await?
            .load(Some(kube))
            .await
    }

    /// The first half of [`Self::resolve_cached`]: which identity, client
    /// and tenant a binding's `spec.identity` comes to (the ServiceAccount's
    /// annotations read), before anything secret is loaded — what a
    /// VaultAccessPolicy judges. `kube` is needed only for ServiceAccounts
    /// and client secrets.
    pub async fn resolve_ids(
        &self,
        identity: Option<&VaultIdentity>,
        namespace: &str,
        kube: Option<&kube::Client>,
        cache: Option<&ServiceAccountCache>,
    ) -> Result<Resolved, IdentityError> {
        let Some(id) = identity else {
            return self.operator_credential(None, None).map(Resolved::Ready);
        };
        if let Some(mi) = &id.managed_identity {
            let client_id = mi
                .client_id
                .as_deref()
                .map(|c| {
                    checked_id(
                        c,
                        IdKind::Client,
                        Origin::Spec("spec.identity.managedIdentity.clientId"),
                    )
                })
                .transpose()?;
            return Ok(Resolved::Ready(Credential::ManagedIdentity { client_id }));
        }
        if let Some(sa_name) = &id.service_account_name {
            let kube = kube.ok_or_else(no_cluster)?;
            let annotations = match cached_annotations(cache, namespace, sa_name) {
                Some(annotations) => annotations,
                None => {
                    let api: Api<ServiceAccount> = Api::namespaced(kube.clone(), namespace);
                    api.get_metadata_opt(sa_name)
                        .await
                        .map_err(|e| IdentityError::Kubernetes {
                            action: format!("cannot read ServiceAccount {namespace}/{sa_name}"),
                            detail: e.to_string(),
                        })?
                        .ok_or_else(|| IdentityError::ServiceAccountNotFound {
                            namespace: namespace.into(),
                            name: sa_name.clone(),
                        })?
                        .metadata
                        .annotations
                        .unwrap_or_default()
                }
            };
            let annotation = |a| annotations.get(a).map(String::as_str);
            let client_id = first_id(
                IdKind::Client,
                [
                    (
                        id.client_id.as_deref(),
                        Origin::Spec("spec.identity.clientId"),
                    ),
                    (
                        annotation(CLIENT_ID_ANNOTATION),
                        Origin::Annotation(CLIENT_ID_ANNOTATION, namespace, sa_name),
                    ),
                ],
            )?
            .ok_or_else(|| IdentityError::MissingClientId {
                namespace: namespace.into(),
                name: sa_name.clone(),
            })?;
            let tenant_id = first_id(
                IdKind::Tenant,
                [
                    (
                        id.tenant_id.as_deref(),
                        Origin::Spec("spec.identity.tenantId"),
                    ),
                    (
                        annotation(TENANT_ID_ANNOTATION),
                        Origin::Annotation(TENANT_ID_ANNOTATION, namespace, sa_name),
                    ),
                    (self.tenant_id.as_deref(), Origin::Env("AZURE_TENANT_ID")),
                ],
            )?
            .ok_or_else(|| IdentityError::MissingTenant {
                who: format!("ServiceAccount {namespace}/{sa_name}"),
            })?;
            return Ok(Resolved::Ready(Credential::ClientAssertion {
                tenant_id,
                client_id,
                assertion: AssertionSource::ServiceAccount {
                    client: kube.clone(),
                    namespace: namespace.into(),
                    name: sa_name.clone(),
                },
            }));
        }
        if let Some(r) = &id.client_secret_ref {
            // Both ids are checked before the Secret is read: a bad tenant
            // must not even cause the client secret to be loaded.
            let client_id = id
                .client_id
                .as_deref()
                .map(|c| checked_id(c, IdKind::Client, Origin::Spec("spec.identity.clientId")))
                .transpose()?
                .ok_or_else(|| IdentityError::Refused {
                    who: "the service principal".into(),
                    code: "missing client id".into(),
                    description: "spec.identity.clientSecretRef needs spec.identity.clientId"
                        .into(),
                    hint: String::new(),
                })?;
            let tenant_id = first_id(
                IdKind::Tenant,
                [
                    (
                        id.tenant_id.as_deref(),
                        Origin::Spec("spec.identity.tenantId"),
                    ),
                    (self.tenant_id.as_deref(), Origin::Env("AZURE_TENANT_ID")),
                ],
            )?
            .ok_or_else(|| IdentityError::MissingTenant {
                who: format!("service principal {client_id}"),
            })?;
            return Ok(Resolved::ClientSecret {
                tenant_id,
                client_id,
                namespace: namespace.into(),
                secret: r.clone(),
            });
        }
        self.operator_credential(id.client_id.as_deref(), id.tenant_id.as_deref())
            .map(Resolved::Ready)
    }
}

/// A binding's identity as resolved before anything secret is loaded: what a
/// VaultAccessPolicy judges (its kind, client and tenant), then
/// [`Resolved::load`]ed into a [`Credential`].
#[derive(Debug, Clone)]
pub enum Resolved {
    /// Nothing left to load.
    Ready(Credential),
    /// A service principal whose client secret is still in its Secret.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        namespace: String,
        secret: crate::crd::SecretKeyRef,
    },
}

fn no_cluster() -> IdentityError {
    IdentityError::Kubernetes {
        action: "this identity is read from the cluster".into(),
        detail: "no kubeconfig was found".into(),
    }
}

impl Resolved {
    /// The tenant the credential signs in to (`None`: a managed identity,
    /// whose tenant is the node's).
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            Self::Ready(Credential::ClientAssertion { tenant_id, .. })
            | Self::Ready(Credential::ClientSecret { tenant_id, .. })
            | Self::ClientSecret { tenant_id, .. } => Some(tenant_id),
            Self::Ready(Credential::ManagedIdentity { .. }) => None,
        }
    }

    /// The credential, reading a client secret from its Secret (in the
    /// binding's namespace only).
    pub async fn load(self, kube: Option<&kube::Client>) -> Result<Credential, IdentityError> {
        match self {
            Self::Ready(credential) => Ok(credential),
            Self::ClientSecret {
                tenant_id,
                client_id,
                namespace,
                secret: r,
            } => {
                let kube = kube.ok_or_else(no_cluster)?;
                let api: Api<Secret> = Api::namespaced(kube.clone(), &namespace);
                let secret = api
                    .get_opt(&r.name)
                    .await
                    .map_err(|e| IdentityError::Kubernetes {
                        action: format!("cannot read Secret {namespace}/{}", r.name),
                        detail: e.to_string(),
                    })?;
                let missing = || IdentityError::ClientSecretMissing {
                    namespace: namespace.clone(),
                    name: r.name.clone(),
                    key: r.key.clone(),
                };
                let bytes = secret
                    .and_then(|s| s.data)
                    .and_then(|mut d| d.remove(&r.key))
                    .ok_or_else(missing)?;
                let text = String::from_utf8(bytes.0).map_err(|_| missing())?;
                Ok(Credential::ClientSecret {
                    tenant_id,
                    client_id,
                    secret: SecretValue::new(text.trim_end_matches(['\r', '\n'])),
                })
            }
        }
    }
}

/// ServiceAccounts' metadata, kept by a watch: their annotations are all
/// kvsync reads of them.
pub type ServiceAccountCache =
    kube::runtime::reflector::Store<kube::core::PartialObjectMeta<ServiceAccount>>;

/// The annotations of `namespace/name` when `cache` has a complete listing
/// that holds it.
fn cached_annotations(
    cache: Option<&ServiceAccountCache>,
    namespace: &str,
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    use futures::FutureExt;
    let cache = cache?;
    cache.wait_until_ready().now_or_never()?.ok()?;
    let sa = cache.get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))?;
    Some(sa.metadata.annotations.clone().unwrap_or_default())
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
    /// A token valid for `lifetime`, clamped to
    /// [`MIN_TOKEN_LIFETIME`]..=[`MAX_TOKEN_LIFETIME`].
    pub fn new(token: SecretValue, lifetime: Duration) -> Self {
        let lifetime = lifetime.clamp(MIN_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME);
        let now = SystemTime::now();
        // Refresh ahead of expiry: 5 minutes early, or at half-life for short tokens.
        let margin = Duration::from_secs(300).min(lifetime / 2);
        let expires_at = now.checked_add(lifetime).unwrap_or(now);
        Self {
            token,
            expires_at,
            refresh_at: expires_at.checked_sub(margin).unwrap_or(now),
        }
    }

    fn fresh(&self) -> bool {
        SystemTime::now() < self.refresh_at
    }
}

/// A token response of Entra ID (`expires_in`: a number) or IMDS
/// (`expires_in` and `expires_on`: strings of numbers). The times are read
/// as any JSON value so that no number, however odd, fails to parse or
/// overflows: [`token_lifetime`] clamps it.
#[derive(Deserialize)]
struct EntraToken {
    access_token: SecretValue,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

/// Seconds in a JSON number or a string of one; `None` for anything else.
fn seconds_of(v: &serde_json::Value) -> Option<f64> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (!n.is_nan()).then_some(n)
}

/// How long a token may be cached: `expires_in`, else `expires_on` minus
/// `now_unix`, clamped to [`MIN_TOKEN_LIFETIME`]..=[`MAX_TOKEN_LIFETIME`]
/// (no arithmetic that can overflow). `Err` says what is missing.
fn token_lifetime(
    expires_in: Option<&serde_json::Value>,
    expires_on: Option<&serde_json::Value>,
    now_unix: i64,
) -> Result<Duration, &'static str> {
    let seconds = match (expires_in, expires_on) {
        (Some(v), _) => seconds_of(v).ok_or("expires_in is not a number of seconds")?,
        (None, Some(v)) => seconds_of(v).ok_or("expires_on is not a unix time")? - now_unix as f64,
        (None, None) => return Err("neither expires_in nor expires_on is set"),
    };
    let clamped = seconds.clamp(
        MIN_TOKEN_LIFETIME.as_secs_f64(),
        MAX_TOKEN_LIFETIME.as_secs_f64(),
    );
    Ok(Duration::from_secs_f64(clamped))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A failed token request and how long to answer with it.
struct Failure {
    error: IdentityError,
    retry_after: Option<Duration>,
}

impl From<IdentityError> for Failure {
    fn from(error: IdentityError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

/// What a [`TokenSource`] remembers per scope.
#[derive(Default)]
struct TokenCache {
    tokens: HashMap<String, AccessToken>,
    /// Recent failures and until when they are answered from here.
    failures: HashMap<String, (IdentityError, Instant)>,
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
    /// Per identity, so holding it across the token request makes callers of
    /// this identity wait for the one request, and no other identity waits.
    cache: tokio::sync::Mutex<TokenCache>,
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
            cache: tokio::sync::Mutex::new(TokenCache::default()),
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

    /// A token for `scope`, from the cache while it is fresh. A failure is
    /// answered from the cache for [`FAILURE_CACHE_TTL`] (or the endpoint's
    /// `Retry-After`), so a refusing Entra ID sees one request per identity,
    /// not one per reader.
    pub async fn token(&self, scope: &str) -> Result<AccessToken, IdentityError> {
        // Holding the lock across the request makes concurrent callers wait
        // for the one request instead of sending their own.
        let mut cache = self.cache.lock().await;
        if let Some(t) = cache.tokens.get(scope).filter(|t| t.fresh()) {
            return Ok(t.clone());
        }
        let now = Instant::now();
        if let Some((e, _)) = cache.failures.get(scope).filter(|(_, until)| *until > now) {
            return Err(e.clone());
        }
        cache.failures.remove(scope);
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch(scope).await {
            Ok(token) => {
                cache.tokens.insert(scope.to_string(), token.clone());
                Ok(token)
            }
            Err(f) => {
                let ttl = f
                    .retry_after
                    .unwrap_or(FAILURE_CACHE_TTL)
                    .min(self.retry.max_retry_after);
                if let Some(until) = Instant::now().checked_add(ttl) {
                    cache
                        .failures
                        .insert(scope.to_string(), (f.error.clone(), until));
                }
                Err(f.error)
            }
        }
    }

    /// Drops the cached token (and failure) for `scope`, after the vault
    /// refused the token.
    pub async fn invalidate(&self, scope: &str) {
        let mut cache = self.cache.lock().await;
        cache.tokens.remove(scope);
        cache.failures.remove(scope);
    }

    async fn fetch(&self, scope: &str) -> Result<AccessToken, Failure> {
        let problem = match &self.credential {
            Credential::ManagedIdentity { .. } => &self.env.imds_problem,
            _ => &self.env.authority_problem,
        };
        if let Some(p) = problem {
            return Err(p.clone().into());
        }
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
                let jwt = self.assertion(assertion).await.map_err(Failure::from)?;
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
    ) -> Result<AccessToken, Failure> {
        // The ids were checked where they entered; a credential built by
        // other code is checked here again, before anything is sent.
        if let Some((_, client_id)) = form.iter().find(|(k, _)| *k == "client_id") {
            checked_id(client_id, IdKind::Client, Origin::Spec("the client id"))?;
        }
        let endpoint = entra_token_url(&self.env.authority_host, tenant_id)?;
        let http = self.http.clone();
        let ep = endpoint.clone();
        self.send_with_retry(&endpoint, &self.env.authority_host, move || {
            http.post(ep.clone()).form(&form)
        })
        .await
    }

    async fn fetch_imds(
        &self,
        scope: &str,
        client_id: Option<&str>,
    ) -> Result<AccessToken, Failure> {
        if let Some(c) = client_id {
            checked_id(
                c,
                IdKind::Client,
                Origin::Spec("spec.identity.managedIdentity.clientId"),
            )?;
        }
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
        let imds = self.env.imds_endpoint.clone();
        self.send_with_retry(&endpoint, &imds, move || {
            http.get(ep.clone()).header("Metadata", "true")
        })
        .await
    }

    /// Sends the token request built by `request`, retrying transient
    /// failures. Right before each send, the built request's scheme, host and
    /// port are compared with `allowed` (the authority host or the IMDS
    /// endpoint): a credential never goes anywhere else.
    async fn send_with_retry(
        &self,
        endpoint: &Url,
        allowed: &Url,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<AccessToken, Failure> {
        let who = self.describe();
        let shown = origin_of(endpoint);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts;
            let built = request().build().map_err(|e| IdentityError::Unavailable {
                who: who.clone(),
                endpoint: shown.clone(),
                detail: describe_transport_error(&e),
            })?;
            if !same_origin(built.url(), allowed) {
                return Err(IdentityError::CredentialRedirected {
                    who,
                    target: origin_of(built.url()),
                    expected: origin_of(allowed),
                }
                .into());
            }
            let resp = match self.http.execute(built).await {
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
                    }
                    .into());
                }
            };
            let status = resp.status();
            let retry_after = retry_after(resp.headers());
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
                let lifetime = token_lifetime(
                    parsed.expires_in.as_ref(),
                    parsed.expires_on.as_ref(),
                    unix_now(),
                )
                .map_err(|detail| IdentityError::InvalidResponse {
                    endpoint: shown.clone(),
                    detail: detail.into(),
                })?;
                if parsed.access_token.is_empty() {
                    return Err(IdentityError::InvalidResponse {
                        endpoint: shown,
                        detail: "empty access_token".into(),
                    }
                    .into());
                }
                return Ok(AccessToken::new(parsed.access_token, lifetime));
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
                return Err(Failure {
                    error: IdentityError::Unavailable {
                        who,
                        endpoint: shown,
                        detail: format!(
                            "HTTP {} {}",
                            status.as_u16(),
                            first_line(&err.error_description)
                        ),
                    },
                    retry_after,
                });
            }
            let code = if err.error.is_empty() {
                format!("HTTP {}", status.as_u16())
            } else {
                err.error.clone()
            };
            return Err(Failure {
                error: IdentityError::Refused {
                    hint: entra_hint(&err.error_description, &self.credential),
                    who,
                    code,
                    description: first_line(&err.error_description).to_string(),
                },
                retry_after,
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

/// Shares one [`TokenSource`] per identity among all bindings. It holds weak
/// references: a source lives as long as some client uses it, so the source
/// of a rotated client secret (a new key) or of a deleted binding's identity
/// goes with its last client. The lock guards the map only, never I/O.
#[derive(Default)]
pub struct TokenSources {
    sources: Mutex<HashMap<String, Weak<TokenSource>>>,
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
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(source) = map.get(&key).and_then(Weak::upgrade) {
            return source;
        }
        let source = Arc::new(TokenSource::new(
            credential,
            env.clone(),
            http.clone(),
            retry,
        ));
        map.insert(key, Arc::downgrade(&source));
        source
    }

    /// How many identities have a source some client still uses.
    pub fn len(&self) -> usize {
        let mut map = self.sources.lock().expect("token source registry lock");
        map.retain(|_, w| w.strong_count() > 0);
        map.len()
    }

    /// True when no identity has a source yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn any_lifetime_is_clamped_and_never_panics() {
        let now = 1_700_000_000;
        let max = Ok(MAX_TOKEN_LIFETIME);
        let min = Ok(MIN_TOKEN_LIFETIME);
        let cases = [
            (json!(3599), Ok(Duration::from_secs(3599))),
            (json!("3599"), Ok(Duration::from_secs(3599))),
            (json!(0), min),
            (json!(-5), min),
            (json!(i64::MIN), min),
            (json!(1e30), max),
            (json!(u64::MAX), max),
            (json!("1e30"), max),
            (json!("-1e308"), min),
            (json!("inf"), max),
            (json!("NaN"), Err("expires_in is not a number of seconds")),
            (json!("soon"), Err("expires_in is not a number of seconds")),
            (json!(null), Err("expires_in is not a number of seconds")),
            (
                json!({"a": 1}),
                Err("expires_in is not a number of seconds"),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(token_lifetime(Some(&v), None, now), want, "expires_in {v}");
        }
        // IMDS: expires_on, a unix time as a string, when expires_in is absent.
        let on = |v: serde_json::Value| token_lifetime(None, Some(&v), now);
        assert_eq!(on(json!("1700003600")), Ok(Duration::from_secs(3600)));
        assert_eq!(on(json!("0")), min);
        assert_eq!(on(json!(u64::MAX.to_string())), max);
        assert!(on(json!("tomorrow")).is_err());
        assert!(token_lifetime(None, None, now).is_err());
        // A clamped lifetime makes a token whose times are representable.
        for d in [Duration::ZERO, Duration::MAX, Duration::from_secs(u64::MAX)] {
            let t = AccessToken::new(SecretValue::new("t"), d);
            assert!(t.expires_at <= SystemTime::now() + MAX_TOKEN_LIFETIME);
            assert!(t.refresh_at <= t.expires_at);
        }
    }

    #[test]
    fn token_url_is_built_by_segments_and_refuses_url_text() {
        let authority = authority_host("https://login.microsoftonline.com/").unwrap();
        assert_eq!(
            entra_token_url(&authority, "contoso.onmicrosoft.com")
                .unwrap()
                .as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        for evil in [
            "//127.0.0.1:9999/evil",
            "../../evil",
            "t?x=1",
            "t#f",
            "a@b",
            "%2e%2e",
        ] {
            assert!(
                matches!(
                    entra_token_url(&authority, evil),
                    Err(IdentityError::InvalidId { .. })
                ),
                "{evil}"
            );
        }
    }

    #[test]
    fn authority_host_must_be_a_bare_https_origin() {
        for ok in [
            "https://login.microsoftonline.com/",
            "https://login.microsoftonline.com",
            "https://127.0.0.1:8443/",
        ] {
            assert!(authority_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://login.microsoftonline.com/",
            "https://login.microsoftonline.com/tenant/",
            "https://login.microsoftonline.com/?x=1",
            "https://user:pw@login.microsoftonline.com/",
            "login.microsoftonline.com",
            "",
        ] {
            assert!(authority_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_environment_is_reported_not_replaced_by_a_default() {
        let env = AzureEnvironment::from_lookup(|k| {
            (k == "AZURE_AUTHORITY_HOST").then(|| "https://evil.example/steal/".to_string())
        });
        let err = env.check().unwrap_err();
        assert_eq!(err.reason(), Reason::IdentityMisconfigured);
        assert!(err.to_string().contains("AZURE_AUTHORITY_HOST"), "{err}");

        let env = AzureEnvironment::from_lookup(|k| {
            (k == "AZURE_TENANT_ID").then(|| "//127.0.0.1:9999/evil".to_string())
        });
        let err = env.check().unwrap_err();
        assert_eq!(err.reason(), Reason::IdentityMisconfigured);
        assert!(
            err.to_string()
                .contains("environment variable AZURE_TENANT_ID"),
            "{err}"
        );
        let env = AzureEnvironment::from_lookup(|k| {
            (k == "AZURE_POD_IDENTITY_AUTHORITY_HOST")
                .then(|| "http://169.254.169.254/x?resource=evil".to_string())
        });
        let err = env.check().unwrap_err();
        assert!(
            err.to_string()
                .contains("AZURE_POD_IDENTITY_AUTHORITY_HOST"),
            "{err}"
        );
        assert!(env.authority_problem.is_none(), "Entra ID stays usable");
        assert!(AzureEnvironment::from_lookup(|_| None).check().is_ok());
    }
}
