//! The dev vault's HTTPS front: routing, Azure's response shapes, and the
//! `/_dev/` test controls. The Key Vault API is in `kvapi`, Entra ID in `entra`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::store::{FaultSpec, VaultState};

/// Largest request body accepted.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

pub(super) type Resp = Response<Full<Bytes>>;

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

pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

pub(super) fn respond(status: u16, body: Value) -> Resp {
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
pub(super) fn kv_error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Resp {
    let mut error = json!({"code": code, "message": message});
    if let Some(i) = inner {
        error["innererror"] = json!({"code": i});
    }
    respond(status, json!({"error": error}))
}

/// Entra ID's error body.
pub(super) fn entra_error(status: u16, error: &str, description: &str) -> Resp {
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
pub(super) enum Route {
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
pub(super) struct Req {
    pub(super) method: Method,
    pub(super) query: BTreeMap<String, String>,
    pub(super) headers: http::HeaderMap,
    pub(super) body: Bytes,
    pub(super) host: String,
}

impl Req {
    pub(super) fn base(&self) -> String {
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

    // Key Vault's service limit covers the vault's own operations; token
    // requests go to Entra ID, which Key Vault does not count.
    if let Some(op) = op.filter(|op| *op != "token") {
        let mut state = shared.state.lock().expect("state");
        if let Err(retry_after) = state.admit(std::time::Instant::now()) {
            state.count(op, 429);
            return Ok(throttled(retry_after));
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
        Route::Token { tenant } if req.method == Method::POST => {
            super::entra::token(&shared, &req, &tenant)
        }
        Route::OpenIdConfig { tenant } if req.method == Method::GET => {
            super::entra::openid_config(&req, &tenant)
        }
        Route::Imds if req.method == Method::GET => super::entra::imds(&shared, &req),
        Route::ListSecrets | Route::ListVersions { .. } | Route::Secret { .. } => {
            super::kvapi::vault(&shared, &req, route)
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

/// Key Vault's answer beyond its service limit (the throttling guidance):
/// 429, `Retry-After` in seconds, error code `Throttled`.
pub(super) fn throttled(retry_after: u64) -> Resp {
    let mut resp = kv_error(429, "Throttled", THROTTLED_MESSAGE, None);
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        retry_after.to_string().parse().expect("a number"),
    );
    resp
}

/// The message of Key Vault's 429.
const THROTTLED_MESSAGE: &str = "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached";

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
        429 => THROTTLED_MESSAGE.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_answer_is_key_vaults_429() {
        let resp = throttled(3);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        let body = futures::executor::block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "Throttled");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("too many requests")
        );
    }
}
