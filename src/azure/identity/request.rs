//! The token requests of a [`TokenSource`]: to Entra ID (a client secret or
//! a federated assertion, from a projected file or a TokenRequest) and to
//! IMDS. Transient failures are retried; right before every send the
//! request's origin is compared with the one it may go to.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use reqwest::Url;
use serde::Deserialize;

use super::super::http::{MAX_RESPONSE_BYTES, describe_transport_error, read_limited, retry_after};
use super::cache::{AccessToken, Failure, TokenSource};
use super::environment::{IdKind, Origin, checked_id, entra_token_url, origin_of, same_origin};
use super::{
    ASSERTION_TYPE, AssertionSource, Credential, IdentityError, MAX_TOKEN_LIFETIME,
    MIN_TOKEN_LIFETIME, TOKEN_EXCHANGE_AUDIENCE,
};
use crate::value::SecretValue;

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

#[derive(Deserialize, Default)]
struct EntraError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenSource {
    pub(super) async fn fetch(&self, scope: &str) -> Result<AccessToken, Failure> {
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
}
