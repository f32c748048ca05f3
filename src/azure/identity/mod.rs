//! The credential chain (DESIGN §3) and the token cache.
//!
//! A binding's `spec.identity` resolves to a [`Credential`]; a [`TokenSource`]
//! turns a credential into access tokens, caches them per scope, refreshes
//! them ahead of expiry and lets one request per identity be in flight. A
//! [`TokenSources`] registry shares one `TokenSource` among every binding that
//! uses the same identity.
//!
//! - `mod.rs`: what a credential is ([`Credential`]) and why none could be
//!   had ([`IdentityError`]).
//! - `environment.rs`: the operator's [`AzureEnvironment`] (`AZURE_*`) and
//!   the checks every tenant id, client id and endpoint passes where it
//!   enters.
//! - `resolve.rs`: a binding's `spec.identity` to a [`Credential`], through
//!   [`Resolved`] (what a VaultAccessPolicy judges, before anything secret is
//!   loaded).
//! - `cache.rs`: [`TokenSource`] (per-scope cache, one request in flight,
//!   failures answered from the cache) and the [`TokenSources`] registry.
//! - `request.rs`: the token requests themselves, to Entra ID (client
//!   secret or federated assertion) and to IMDS, with retries and the
//!   same-origin check before every send.

mod cache;
mod environment;
mod request;
mod resolve;

use std::path::PathBuf;
use std::time::Duration;

use crate::reason::Reason;
use crate::value::SecretValue;

pub use cache::{AccessToken, TokenSource, TokenSources};
pub use environment::{AzureEnvironment, entra_token_url};
pub use resolve::{Resolved, ServiceAccountCache};

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
    InvalidId {
        /// Where the id was written (a spec field, a ServiceAccount
        /// annotation or an operator environment variable): what to fix.
        origin: String,
        /// Why the value is not a tenant or client id, with what would be.
        problem: String,
    },
    /// An endpoint variable of the operator that is not a plain https origin.
    #[error("the operator's {var} is {value:?}, which kvsync will not use: {expected}")]
    InvalidEndpoint {
        /// The operator's environment variable that holds the endpoint.
        var: &'static str,
        /// What the variable holds (cut short), to show the mistake.
        value: String,
        /// What the variable should hold instead.
        expected: &'static str,
    },
    /// The last check before a credential leaves the process failed.
    #[error(
        "refused to send the credential of {who} to {target}: it is not {expected}; check \
         the tenant id and AZURE_AUTHORITY_HOST"
    )]
    CredentialRedirected {
        /// The identity whose credential was held back.
        who: String,
        /// The origin the request was about to go to.
        target: String,
        /// The token endpoint's origin, the only one a credential may go to.
        expected: String,
    },
    /// The operator's own workload identity is not configured.
    #[error(
        "{var} is not set, so the operator has no workload identity of its own: label the \
         operator's pod azure.workload.identity/use=true and annotate its ServiceAccount with \
         azure.workload.identity/client-id, or set spec.identity"
    )]
    MissingOperatorIdentity {
        /// The workload-identity environment variable that is not set.
        var: &'static str,
    },
    /// The federated token file could not be read.
    #[error(
        "cannot read the federated token file {path}: {detail} (is the workload-identity \
         webhook injecting it into the operator's pod?)"
    )]
    TokenFile {
        /// Where the operator expects the projected ServiceAccount token.
        path: String,
        /// Why reading it failed (the I/O error).
        detail: String,
    },
    /// The ServiceAccount named by the binding does not exist.
    #[error(
        "ServiceAccount {namespace}/{name} does not exist: create it or fix spec.identity.serviceAccountName"
    )]
    ServiceAccountNotFound {
        /// The binding's namespace, where the ServiceAccount was looked for.
        namespace: String,
        /// The ServiceAccount `spec.identity.serviceAccountName` names.
        name: String,
    },
    /// The ServiceAccount does not name an Entra application.
    #[error(
        "ServiceAccount {namespace}/{name} has no {CLIENT_ID_ANNOTATION} annotation and \
         spec.identity.clientId is not set: annotate it with the Entra application's client id"
    )]
    MissingClientId {
        /// The namespace of the ServiceAccount that lacks the annotation.
        namespace: String,
        /// The ServiceAccount that lacks the annotation.
        name: String,
    },
    /// No tenant is known for the identity.
    #[error(
        "no tenant id for {who}: set spec.identity.tenantId, the ServiceAccount's \
         {TENANT_ID_ANNOTATION} annotation, or AZURE_TENANT_ID on the operator"
    )]
    MissingTenant {
        /// The identity that has no tenant (a ServiceAccount or a service
        /// principal's client id).
        who: String,
    },
    /// The Kubernetes API refused or failed a read or a TokenRequest.
    #[error("{action}: {detail}")]
    Kubernetes {
        /// What kvsync was doing, naming the object (a read of a
        /// ServiceAccount or Secret, a TokenRequest).
        action: String,
        /// What the API server or the client said.
        detail: String,
    },
    /// The client-secret Secret or its key is missing.
    #[error("Secret {namespace}/{name} has no key {key:?}: fix spec.identity.clientSecretRef")]
    ClientSecretMissing {
        /// The binding's namespace, where the Secret was looked for.
        namespace: String,
        /// The Secret `spec.identity.clientSecretRef` names.
        name: String,
        /// The key in that Secret that should hold the client secret.
        key: String,
    },
    /// Entra ID (or IMDS) answered with an error.
    #[error("Entra ID refused {who} ({code}): {description}{hint}")]
    Refused {
        /// The identity that was refused.
        who: String,
        /// Entra's error code (`invalid_client`, …) or the HTTP status.
        code: String,
        /// The first line of Entra's description, without its trace ids.
        description: String,
        /// What to do about it, from the AADSTS code; empty when kvsync
        /// knows no more than Entra said.
        hint: String,
    },
    /// Entra ID or IMDS could not be reached, or kept failing.
    #[error("cannot get a token for {who} from {endpoint}: {detail}")]
    Unavailable {
        /// The identity a token was wanted for.
        who: String,
        /// The origin of the token endpoint (Entra ID or IMDS).
        endpoint: String,
        /// What went wrong on the way, or after how many tries it gave up.
        detail: String,
    },
    /// The token endpoint answered something that is not a token.
    #[error("the token endpoint {endpoint} sent a response kvsync cannot read: {detail}")]
    InvalidResponse {
        /// The origin of the token endpoint that answered.
        endpoint: String,
        /// What is wrong with the answer (not JSON, no lifetime, no token).
        detail: String,
    },
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
        /// The client that sends the TokenRequest.
        client: kube::Client,
        /// The binding's namespace, the ServiceAccount's.
        namespace: String,
        /// The ServiceAccount whose token is exchanged.
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
        /// The Entra tenant to sign in to.
        tenant_id: String,
        /// The Entra application that trusts the federated assertion.
        client_id: String,
        /// Where the federated assertion comes from.
        assertion: AssertionSource,
    },
    /// A service principal's client secret.
    ClientSecret {
        /// The Entra tenant to sign in to.
        tenant_id: String,
        /// The service principal's application (client) id.
        client_id: String,
        /// The client secret, read from the binding's Secret.
        secret: SecretValue,
    },
    /// A managed identity through IMDS (`None`: system-assigned).
    ManagedIdentity {
        /// The user-assigned identity's client id; `None` for the
        /// system-assigned one.
        client_id: Option<String>,
    },
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
