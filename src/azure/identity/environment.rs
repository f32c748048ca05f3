//! The operator's Azure environment and the checks at the door: every tenant
//! id, client id and endpoint is checked where it enters (the spec, a
//! ServiceAccount annotation, an `AZURE_*` variable), so a message can name
//! where to fix it and nothing unchecked reaches a token URL.

use std::path::PathBuf;

use reqwest::Url;

use super::{
    AssertionSource, Credential, DEFAULT_AUTHORITY_HOST, DEFAULT_IMDS_ENDPOINT, IdentityError,
};
use crate::crd::{entra_id_problem, is_entra_id};

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
    pub(super) authority_problem: Option<IdentityError>,
    /// Likewise for `AZURE_POD_IDENTITY_AUTHORITY_HOST` and IMDS requests.
    pub(super) imds_problem: Option<IdentityError>,
}

/// Where a tenant or client id came from, for the message that refuses it.
pub(super) enum Origin<'a> {
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
pub(super) enum IdKind {
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
pub(super) fn checked_id(
    value: &str,
    kind: IdKind,
    origin: Origin<'_>,
) -> Result<String, IdentityError> {
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
pub(super) fn first_id<const N: usize>(
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
pub(super) fn same_origin(url: &Url, origin: &Url) -> bool {
    url.scheme() == origin.scheme()
        && url.host_str().is_some()
        && url.host_str() == origin.host_str()
        && url.port_or_known_default() == origin.port_or_known_default()
}

/// `scheme://host[:port]` of a URL, for messages (never a path or query).
pub(super) fn origin_of(url: &Url) -> String {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;

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
