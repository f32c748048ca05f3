//! The dev vault's HTTPS front: the Key Vault secrets API, the Entra ID token
//! endpoint, an IMDS stand-in and the `/_dev/` test controls, answered the way
//! Azure answers (status codes, field names, error bodies, paging).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::jwt::{self, Claims, TokenProblem};
use super::store::{AttributesPatch, FaultSpec, StoredVersion, VaultState};
use crate::value::SecretValue;

/// Largest request body accepted.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
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
/// Client id of the IMDS stand-in's system-assigned identity.
pub const SYSTEM_ASSIGNED_CLIENT_ID: &str = "dev-system-assigned-identity";

pub type Resp = Response<Full<Bytes>>;

/// State shared by every connection of one dev vault.
pub struct Shared {
    /// Secrets, access, stats, faults.
    pub state: Mutex<VaultState>,
    /// Tenant named in challenges.
    pub tenant: String,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// `host:port` used when a request has no Host header.
    pub default_host: String,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn respond(status: u16, body: Value) -> Resp {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header("x-ms-keyvault-service-version", "1.9.0.0")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn empty(status: u16) -> Resp {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("valid response")
}

/// Key Vault's error body.
fn kv_error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Resp {
    let mut error = json!({"code": code, "message": message});
    if let Some(i) = inner {
        error["innererror"] = json!({"code": i});
    }
    respond(status, json!({"error": error}))
}

/// Entra ID's error body.
fn entra_error(status: u16, error: &str, description: &str) -> Resp {
    let code: u64 = description
        .strip_prefix("AADSTS")
        .and_then(|d| d.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    respond(
        status,
        json!({
            "error": error,
            "error_description": format!("{description} Trace ID: 00000000-0000-0000-0000-000000000000 Correlation ID: 00000000-0000-0000-0000-000000000000 Timestamp: {}", now()),
            "error_codes": [code],
            "timestamp": now().to_string(),
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
        }),
    )
}

/// What a request is, once its path is read.
enum Route {
    Stats,
    StatsReset,
    Faults,
    Token { tenant: String },
    OpenIdConfig { tenant: String },
    Imds,
    ListSecrets,
    ListVersions { name: String },
    Secret { name: String, version: String },
    NotFound,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["_dev", "stats"] => Route::Stats,
        ["_dev", "stats", "reset"] => Route::StatsReset,
        ["_dev", "faults"] => Route::Faults,
        ["metadata", "identity", "oauth2", "token"] => Route::Imds,
        [tenant, "oauth2", "v2.0", "token"] => Route::Token {
            tenant: tenant.to_string(),
        },
        [tenant, "v2.0", ".well-known", "openid-configuration"] => Route::OpenIdConfig {
            tenant: tenant.to_string(),
        },
        ["secrets"] | ["secrets", ""] => Route::ListSecrets,
        ["secrets", name, "versions"] => Route::ListVersions {
            name: name.to_string(),
        },
        ["secrets", name] => Route::Secret {
            name: name.to_string(),
            version: String::new(),
        },
        ["secrets", name, version] => Route::Secret {
            name: name.to_string(),
            version: version.to_string(),
        },
        _ => Route::NotFound,
    }
}

fn op_of(route: &Route, method: &Method) -> Option<&'static str> {
    Some(match (route, method) {
        (Route::Token { .. } | Route::Imds, _) => "token",
        (Route::ListSecrets, _) => "list_secrets",
        (Route::ListVersions { .. }, _) => "list_versions",
        (Route::Secret { .. }, &Method::GET) => "get_secret",
        (Route::Secret { .. }, &Method::PUT) => "set_secret",
        (Route::Secret { .. }, &Method::PATCH) => "update_secret",
        (Route::Secret { .. }, &Method::DELETE) => "delete_secret",
        _ => return None,
    })
}

/// A request, read in full.
struct Req {
    method: Method,
    query: BTreeMap<String, String>,
    headers: http::HeaderMap,
    body: Bytes,
    host: String,
}

impl Req {
    fn base(&self) -> String {
        format!("https://{}", self.host)
    }
}

/// Answers one request; `Err` closes the connection without an answer.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(kv_error(
                413,
                "BadParameter",
                "The request body is too large.",
                None,
            ));
        }
    };
    let query: BTreeMap<String, String> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| shared.default_host.clone());
    let route = route(parts.uri.path());
    let req = Req {
        method: parts.method,
        query,
        headers: parts.headers,
        body,
        host,
    };

    let op = op_of(&route, &req.method);
    if let Some(op) = op {
        let secret = match &route {
            Route::Secret { name, .. } | Route::ListVersions { name } => Some(name.as_str()),
            _ => None,
        };
        let fault = shared.state.lock().expect("state").take_fault(op, secret);
        if let Some(f) = fault {
            if let Some(ms) = f.latency_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if f.drop {
                return Err(std::io::Error::other("fault: connection dropped"));
            }
            if let Some(status) = f.status {
                let mut resp = fault_response(op, status, &f);
                if let Some(ra) = f.retry_after {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, ra.to_string().parse().expect("number"));
                }
                shared.state.lock().expect("state").count(op, status);
                return Ok(resp);
            }
        }
    }

    let resp = match route {
        Route::Stats if req.method == Method::GET => respond(
            200,
            serde_json::to_value(shared.state.lock().expect("state").stats()).expect("json"),
        ),
        Route::StatsReset if req.method == Method::POST => {
            shared.state.lock().expect("state").reset_stats();
            empty(204)
        }
        Route::Faults if req.method == Method::POST => post_fault(&shared, &req),
        Route::Faults if req.method == Method::DELETE => {
            shared.state.lock().expect("state").clear_faults();
            empty(204)
        }
        Route::Token { tenant } if req.method == Method::POST => token(&shared, &req, &tenant),
        Route::OpenIdConfig { tenant } if req.method == Method::GET => openid_config(&req, &tenant),
        Route::Imds if req.method == Method::GET => imds(&shared, &req),
        Route::ListSecrets | Route::ListVersions { .. } | Route::Secret { .. } => {
            vault(&shared, &req, route)
        }
        _ => kv_error(
            404,
            "NotFound",
            "The requested resource was not found.",
            None,
        ),
    };
    if let Some(op) = op {
        shared
            .state
            .lock()
            .expect("state")
            .count(op, resp.status().as_u16());
    }
    Ok(resp)
}

fn fault_response(op: &str, status: u16, f: &FaultSpec) -> Resp {
    let default_code = match status {
        429 => "Throttled",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        s if s >= 500 => "InternalServerError",
        _ => "BadParameter",
    };
    let code = f.code.as_deref().unwrap_or(default_code);
    let message = f.message.clone().unwrap_or_else(|| match status {
        429 => "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached".into(),
        _ => format!("Injected fault: HTTP {status}"),
    });
    if op == "token" {
        entra_error(status, code, &message)
    } else {
        kv_error(status, code, &message, f.inner_code.as_deref())
    }
}

fn post_fault(shared: &Shared, req: &Req) -> Resp {
    let spec: FaultSpec = match serde_json::from_slice(&req.body) {
        Ok(s) => s,
        Err(e) => return kv_error(400, "BadParameter", &format!("invalid fault: {e}"), None),
    };
    if let Err(e) = spec.check() {
        return kv_error(400, "BadParameter", &format!("invalid fault: {e}"), None);
    }
    let echo = serde_json::to_value(&spec).expect("json");
    shared.state.lock().expect("state").add_fault(spec);
    respond(201, echo)
}

// ---- Entra ID ---------------------------------------------------------------

fn issue(shared: &Shared, tenant: &str, client_id: &str, resource: &str) -> (String, i64) {
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

fn token(shared: &Shared, req: &Req, tenant: &str) -> Resp {
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

fn openid_config(req: &Req, tenant: &str) -> Resp {
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

fn imds(shared: &Shared, req: &Req) -> Resp {
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

// ---- Key Vault ----------------------------------------------------------------

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

fn vault(shared: &Shared, req: &Req, route: Route) -> Resp {
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
                    let display = state.entry(&name).map(|e| e.name.clone()).unwrap_or(name);
                    respond(200, bundle(&base, &display, v, true))
                }
                Method::PUT => {
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
                        return kv_error(
                            400,
                            "BadParameter",
                            "Property 'value' is required.",
                            None,
                        );
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
                        &name,
                        value,
                        body.tags.unwrap_or_default(),
                        body.content_type,
                        body.attributes.unwrap_or_default(),
                        now,
                    );
                    let display = state.entry(&name).map(|e| e.name.clone()).unwrap_or(name);
                    respond(200, bundle(&base, &display, &v, true))
                }
                Method::PATCH => {
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
                        &name,
                        &version,
                        body.attributes.unwrap_or_default(),
                        body.tags,
                        body.content_type,
                        now,
                    ) else {
                        return not_found(&name, &version);
                    };
                    let display = state.entry(&name).map(|e| e.name.clone()).unwrap_or(name);
                    respond(200, bundle(&base, &display, &v, false))
                }
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
