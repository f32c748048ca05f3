//! The dev vault's Entra ID stand-in: the client-credentials token endpoint
//! (client assertion or client secret), OpenID metadata for MSAL, and IMDS.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::jwt::{self, Claims};
use super::server::{Req, Resp, Shared, entra_error, now, respond};

/// Client id of the IMDS stand-in's system-assigned identity.
pub const SYSTEM_ASSIGNED_CLIENT_ID: &str = "dev-system-assigned-identity";

pub(super) fn issue(
    shared: &Shared,
    tenant: &str,
    client_id: &str,
    resource: &str,
) -> (String, i64) {
    let now = now();
    let lifetime = shared.token_lifetime.as_secs() as i64;
    let claims = Claims {
        aud: resource.to_string(),
        iss: format!("https://sts.windows.net/{tenant}/"),
        iat: now,
        nbf: now,
        exp: now + lifetime,
        appid: client_id.to_string(),
        tid: tenant.to_string(),
        sub: client_id.to_string(),
    };
    (jwt::sign(&claims), lifetime)
}

pub(super) fn token(shared: &Shared, req: &Req, tenant: &str) -> Resp {
    let form: BTreeMap<String, String> = form_urlencoded::parse(&req.body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return entra_error(
            400,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type. The dev vault supports client_credentials only.",
        );
    }
    let Some(client_id) = form.get("client_id").filter(|c| !c.is_empty()) else {
        return entra_error(
            400,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(scope) = form.get("scope") else {
        return entra_error(
            400,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'scope'.",
        );
    };
    let Some(resource) = scope.strip_suffix("/.default") else {
        return entra_error(
            400,
            "invalid_scope",
            &format!(
                "AADSTS1002012: The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    };
    let mut state = shared.state.lock().expect("state");
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return entra_error(
                400,
                "invalid_request",
                "AADSTS700010: Invalid client assertion type.",
            );
        }
        let Some(claims) = jwt::decode_unverified(assertion) else {
            return entra_error(
                400,
                "invalid_client",
                "AADSTS50027: JWT token is invalid or malformed.",
            );
        };
        if claims
            .get("exp")
            .and_then(Value::as_i64)
            .is_some_and(|exp| exp <= now())
        {
            return entra_error(
                400,
                "invalid_client",
                "AADSTS700024: Client assertion is not within its valid time range.",
            );
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        state.remember_subject(client_id, sub);
    } else if let Some(secret) = form.get("client_secret") {
        if state
            .required_client_secret(client_id)
            .is_some_and(|required| required.expose() != secret)
        {
            return entra_error(
                401,
                "invalid_client",
                &format!(
                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            );
        }
    } else {
        return entra_error(
            400,
            "invalid_client",
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    drop(state);
    let (access_token, lifetime) = issue(shared, tenant, client_id, resource);
    respond(
        200,
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access_token}),
    )
}

pub(super) fn openid_config(req: &Req, tenant: &str) -> Resp {
    let base = req.base();
    respond(
        200,
        json!({
            "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "issuer": format!("{base}/{tenant}/v2.0"),
            "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
            "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
            "tenant_region_scope": null,
            "cloud_instance_name": "microsoftonline.com",
        }),
    )
}

pub(super) fn imds(shared: &Shared, req: &Req) -> Resp {
    if req.headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return entra_error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let Some(resource) = req.query.get("resource") else {
        return entra_error(
            400,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    let resource = resource.trim_end_matches('/');
    let client_id = req
        .query
        .get("client_id")
        .cloned()
        .unwrap_or_else(|| SYSTEM_ASSIGNED_CLIENT_ID.to_string());
    let (access_token, lifetime) = issue(shared, &shared.tenant, &client_id, resource);
    let now = now();
    respond(
        200,
        json!({
            "access_token": access_token,
            "client_id": client_id,
            "expires_in": lifetime.to_string(),
            "expires_on": (now + lifetime).to_string(),
            "ext_expires_in": lifetime.to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}
