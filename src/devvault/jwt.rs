//! Tokens of the dev vault: HS256 JWTs signed with a fixed, documented
//! development key, so that a token issued by one dev-vault process is
//! accepted by every other (several ports = several vaults of one tenant).
//! The key is public: these tokens protect nothing but test data.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// The development signing key (public by design; see the README).
pub const DEV_SIGNING_KEY: &[u8] = b"kvsync dev-vault signing key - public, for development only";

/// Claims of an access token issued by the dev vault.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Audience: the resource, e.g. `https://vault.azure.net`.
    pub aud: String,
    /// Issuer.
    pub iss: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// Client (application) id.
    pub appid: String,
    /// Tenant id.
    pub tid: String,
    /// Subject (the client id, as for app-only tokens).
    pub sub: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenProblem {
    /// Not three base64url parts of JSON.
    Malformed,
    /// Signature does not verify.
    BadSignature,
    /// `exp` is in the past.
    Expired,
}

/// Signs `claims` into a JWT.
pub fn sign(claims: &Claims) -> String {
    encode_signed(&serde_json::to_value(claims).expect("claims serialize"))
}

/// Signs arbitrary claims (used for the dev federated token file).
pub fn encode_signed(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("json"));
    let signing_input = format!("{header}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, DEV_SIGNING_KEY);
    let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, signing_input.as_bytes()).as_ref());
    format!("{signing_input}.{sig}")
}

/// Verifies a token's signature and expiry at `now` (unix seconds).
pub fn verify(token: &str, now: i64) -> Result<Claims, TokenProblem> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenProblem::Malformed);
    };
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenProblem::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, DEV_SIGNING_KEY);
    hmac::verify(&key, format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| TokenProblem::BadSignature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| TokenProblem::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenProblem::Malformed)?;
    if claims.exp <= now {
        return Err(TokenProblem::Expired);
    }
    Ok(claims)
}

/// Decodes the payload of any well-formed JWT without checking its signature
/// (client assertions: Entra would check them against the cluster's OIDC keys,
/// which the dev vault does not have).
pub fn decode_unverified(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    header.get("alg")?;
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
    payload.is_object().then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            aud: "https://vault.azure.net".into(),
            iss: "https://sts.windows.net/t/".into(),
            iat: 0,
            nbf: 0,
            exp,
            appid: "app".into(),
            tid: "t".into(),
            sub: "app".into(),
        }
    }

    #[test]
    fn signed_tokens_verify_until_they_expire() {
        let t = sign(&claims(100));
        assert_eq!(verify(&t, 99).unwrap().appid, "app");
        assert_eq!(verify(&t, 100), Err(TokenProblem::Expired));
    }

    #[test]
    fn tampered_or_malformed_tokens_fail() {
        let t = sign(&claims(100));
        let mut parts: Vec<&str> = t.split('.').collect();
        let other = sign(&Claims {
            appid: "other".into(),
            ..claims(100)
        });
        parts[1] = other.split('.').nth(1).unwrap();
        assert_eq!(verify(&parts.join("."), 0), Err(TokenProblem::BadSignature));
        assert_eq!(verify("abc", 0), Err(TokenProblem::Malformed));
        assert!(decode_unverified("a.b").is_none());
        assert_eq!(decode_unverified(&t).unwrap()["appid"], "app");
    }
}
