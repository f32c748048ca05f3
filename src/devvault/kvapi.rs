//! The dev vault's Key Vault secrets API: get, list (paged), versions, set,
//! update, delete — with Azure's api-version checks, 401 challenge, RBAC-style
//! 403s and error bodies.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, header};
use serde_json::{Value, json};

use super::jwt::{self, Claims, TokenProblem};
use super::server::{Req, Resp, Route, Shared, kv_error, now, respond};
use super::store::{AttributesPatch, StoredVersion, VaultState};
use crate::value::SecretValue;

/// Key Vault's default and maximum page size.
const PAGE_SIZE: usize = 25;
/// Token audiences Key Vault accepts.
const VAULT_AUDIENCES: &[&str] = &[
    "https://vault.azure.net",
    "https://vault.azure.cn",
    "https://vault.usgovcloudapi.net",
    "https://vault.microsoftazure.de",
    "cfa8b339-82a2-471a-a3c9-0fc0be7a4093",
];

/// Key Vault's 7.x versions and the dated ones (2016-10-01 on, previews
/// included): the SDKs move to new dated versions as Azure ships them.
fn api_version_ok(v: &str) -> bool {
    let bare = v.strip_suffix("-preview").unwrap_or(v);
    if let Some(minor) = bare.strip_prefix("7.") {
        return !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit());
    }
    let parts: Vec<&str> = bare.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return false;
    };
    let num = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    match (num(y, 4), num(m, 2), num(d, 2)) {
        (Some(y), Some(m), Some(d)) => {
            (1..=12).contains(&m) && (1..=31).contains(&d) && (y, m, d) >= (2016, 10, 1)
        }
        _ => false,
    }
}

fn challenge(shared: &Shared, req: &Req, status_message: &str) -> Resp {
    let mut resp = kv_error(401, "Unauthorized", status_message, None);
    let value = format!(
        "Bearer authorization=\"{}/{}\", resource=\"https://vault.azure.net\"",
        req.base(),
        shared.tenant
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        value.parse().expect("header value"),
    );
    resp
}

fn authenticate(shared: &Shared, req: &Req) -> Result<Claims, Box<Resp>> {
    let refuse = |message: &str| Box::new(challenge(shared, req, message));
    let Some(token) = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(refuse(
            "AKV10000: Request is missing a Bearer or PoP token.",
        ));
    };
    match jwt::verify(token.trim(), now()) {
        Ok(c) if VAULT_AUDIENCES.contains(&c.aud.trim_end_matches('/')) => Ok(c),
        Ok(c) => Err(refuse(&format!(
            "AKV10022: Invalid audience. Expected https://vault.azure.net, found: {}.",
            c.aud
        ))),
        Err(TokenProblem::Expired) => {
            Err(refuse("[TokenExpired] Error validating token: 'S2S12086'."))
        }
        Err(TokenProblem::BadSignature) => {
            Err(refuse("[BadSignature] Error validating token: 'S2S12005'."))
        }
        Err(TokenProblem::Malformed) => {
            Err(refuse("AKV10022: Invalid token: the token is malformed."))
        }
    }
}

fn forbidden(req: &Req, claims: &Claims, action: &str) -> Resp {
    let message = format!(
        "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid={};oid={};iss={}\r\nAction: 'Microsoft.KeyVault/vaults/secrets/{action}'\r\nResource: '{}'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\nVault: {};location=local\r\n",
        claims.appid,
        claims.sub,
        claims.iss,
        req.host,
        req.host.split(['.', ':']).next().unwrap_or_default(),
    );
    kv_error(403, "Forbidden", &message, Some("ForbiddenByRbac"))
}

fn not_found(name: &str, version: &str) -> Resp {
    let id = if version.is_empty() {
        name.to_string()
    } else {
        format!("{name}/{version}")
    };
    kv_error(
        404,
        "SecretNotFound",
        &format!(
            "A secret with (name/id) {id} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
        ),
        None,
    )
}

fn attributes(v: &StoredVersion) -> Value {
    let mut a = json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.updated,
        "recoverableDays": 90,
        "recoveryLevel": "Recoverable+Purgeable",
    });
    if let Some(n) = v.nbf {
        a["nbf"] = json!(n);
    }
    if let Some(e) = v.exp {
        a["exp"] = json!(e);
    }
    a
}

fn item(id: String, v: &StoredVersion) -> Value {
    let mut item = json!({"id": id, "attributes": attributes(v)});
    if !v.tags.is_empty() {
        item["tags"] = json!(v.tags);
    }
    if let Some(ct) = &v.content_type {
        item["contentType"] = json!(ct);
    }
    item
}

fn bundle(base: &str, name: &str, v: &StoredVersion, with_value: bool) -> Value {
    let mut b = item(format!("{base}/secrets/{name}/{}", v.id), v);
    if with_value {
        b["value"] = json!(v.value.expose());
    }
    b
}

fn page(req: &Req, path: &str, items: Vec<Value>) -> Resp {
    let size = match req.query.get("maxresults") {
        None => PAGE_SIZE,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=PAGE_SIZE).contains(&n) => n,
            _ => {
                return kv_error(
                    400,
                    "BadParameter",
                    &format!(
                        "The value of maxresults ({n}) is invalid. It must be between 1 and {PAGE_SIZE}."
                    ),
                    None,
                );
            }
        },
    };
    let start = match req.query.get("$skiptoken") {
        None => 0,
        Some(t) => match URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<usize>().ok())
        {
            Some(n) => n,
            None => return kv_error(400, "BadParameter", "The skip token is invalid.", None),
        },
    };
    let end = (start + size).min(items.len());
    let value: Vec<Value> = items
        .get(start..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let next = (end < items.len()).then(|| {
        format!(
            "{}{path}?api-version={}&$skiptoken={}&maxresults={size}",
            req.base(),
            req.query
                .get("api-version")
                .map(String::as_str)
                .unwrap_or("2025-07-01"),
            URL_SAFE_NO_PAD.encode(end.to_string())
        )
    });
    respond(200, json!({"value": value, "nextLink": next}))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetBody {
    value: Option<SecretValue>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    attributes: Option<AttributesPatch>,
}

pub(super) fn vault(shared: &Shared, req: &Req, route: Route) -> Resp {
    match req.query.get("api-version") {
        None => {
            return kv_error(
                400,
                "BadParameter",
                "The request is missing the required 'api-version' query parameter.",
                None,
            );
        }
        Some(v) if !api_version_ok(v) => {
            return kv_error(
                400,
                "BadParameter",
                &format!(
                    "The specified version ({v}) is not recognized. Consider using the latest supported version (2025-07-01)."
                ),
                None,
            );
        }
        Some(_) => {}
    }
    let claims = match authenticate(shared, req) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let base = req.base();
    let now = now();
    let mut state = shared.state.lock().expect("state");
    match route {
        Route::ListSecrets if req.method == Method::GET => {
            if !state.allowed(&claims.appid, None) {
                return forbidden(req, &claims, "readMetadata/action");
            }
            let items = state
                .list()
                .into_iter()
                .map(|(name, v)| item(format!("{base}/secrets/{name}"), v))
                .collect();
            page(req, "/secrets", items)
        }
        Route::ListVersions { name } if req.method == Method::GET => {
            if !state.allowed(&claims.appid, Some(&name)) {
                return forbidden(req, &claims, "readMetadata/action");
            }
            let Some(entry) = state.entry(&name) else {
                return not_found(&name, "");
            };
            let items = entry
                .versions
                .iter()
                .map(|v| item(format!("{base}/secrets/{}/{}", entry.name, v.id), v))
                .collect();
            page(req, &format!("/secrets/{}/versions", entry.name), items)
        }
        Route::Secret { name, version } => {
            if !crate::crd::is_vault_secret_name(&name) {
                return kv_error(
                    400,
                    "BadParameter",
                    &format!("The request URI contains an invalid name: {name}"),
                    None,
                );
            }
            let action = match req.method {
                Method::GET => "getSecret/action",
                Method::PUT => "setSecret/action",
                Method::PATCH => "writeMetadata/action",
                Method::DELETE => "delete",
                _ => {
                    return kv_error(
                        405,
                        "MethodNotAllowed",
                        "The method is not allowed for this resource.",
                        None,
                    );
                }
            };
            if !state.allowed(&claims.appid, Some(&name)) {
                return forbidden(req, &claims, action);
            }
            match req.method {
                Method::GET => {
                    let Some(v) = state.version(&name, &version) else {
                        return not_found(&name, &version);
                    };
                    if !v.enabled {
                        return kv_error(
                            403,
                            "Forbidden",
                            "Operation get is not allowed on a disabled secret.",
                            Some("SecretDisabled"),
                        );
                    }
                    let display = state.display_name(&name);
                    respond(200, bundle(&base, &display, v, true))
                }
                Method::PUT => set_secret(&mut state, req, &base, &name, &version, now),
                Method::PATCH => update_secret(&mut state, req, &base, &name, &version, now),
                Method::DELETE => {
                    if !version.is_empty() {
                        return kv_error(
                            405,
                            "MethodNotAllowed",
                            "DELETE cannot be applied to an individual version of a secret.",
                            None,
                        );
                    }
                    let Some(entry) = state.delete(&name) else {
                        return not_found(&name, "");
                    };
                    let latest = entry.versions.last().expect("a secret has a version");
                    let mut b = bundle(&base, &entry.name, latest, false);
                    b["recoveryId"] = json!(format!("{base}/deletedsecrets/{}", entry.name));
                    b["deletedDate"] = json!(now);
                    b["scheduledPurgeDate"] = json!(now + 90 * 86400);
                    respond(200, b)
                }
                _ => unreachable!("methods filtered above"),
            }
        }
        _ => kv_error(
            405,
            "MethodNotAllowed",
            "The method is not allowed for this resource.",
            None,
        ),
    }
}

/// `PUT /secrets/{name}`: a new version (values up to 25 KB, as Azure).
fn set_secret(
    state: &mut VaultState,
    req: &Req,
    base: &str,
    name: &str,
    version: &str,
    now: i64,
) -> Resp {
    if !version.is_empty() {
        return kv_error(
            405,
            "MethodNotAllowed",
            "A new version is set on /secrets/{name}, not on a version.",
            None,
        );
    }
    let body: SetBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(_) => {
            return kv_error(
                400,
                "BadParameter",
                "The request body is not valid JSON for a secret.",
                None,
            );
        }
    };
    let Some(value) = body.value else {
        return kv_error(400, "BadParameter", "Property 'value' is required.", None);
    };
    if value.len() > 25 * 1024 {
        return kv_error(
            400,
            "BadParameter",
            "The secret value is larger than 25 KB.",
            None,
        );
    }
    let v = state.set(
        name,
        value,
        body.tags.unwrap_or_default(),
        body.content_type,
        body.attributes.unwrap_or_default(),
        now,
    );
    let display = state.display_name(name);
    respond(200, bundle(base, &display, &v, true))
}

/// `PATCH /secrets/{name}/{version}`: attributes, tags, content type —
/// never the value.
fn update_secret(
    state: &mut VaultState,
    req: &Req,
    base: &str,
    name: &str,
    version: &str,
    now: i64,
) -> Resp {
    let body: SetBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(_) => {
            return kv_error(
                400,
                "BadParameter",
                "The request body is not valid JSON for secret attributes.",
                None,
            );
        }
    };
    if body.value.is_some() {
        return kv_error(
            400,
            "BadParameter",
            "The value of a secret cannot be changed: set a new version with PUT.",
            None,
        );
    }
    let Some(v) = state.update(
        name,
        version,
        body.attributes.unwrap_or_default(),
        body.tags,
        body.content_type,
        now,
    ) else {
        return not_found(name, version);
    };
    let display = state.display_name(name);
    respond(200, bundle(base, &display, &v, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        for ok in [
            "2025-07-01",
            "2026-04-01",
            "2016-10-01",
            "7.0",
            "7.4",
            "7.5-preview",
            "7.6",
        ] {
            assert!(api_version_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "7",
            "7.x",
            "2015-06-01",
            "2025-13-01",
            "2025-7-1",
            "8.0",
            "latest",
        ] {
            assert!(!api_version_ok(bad), "{bad}");
        }
    }
}
