//! The dev vault's seed file: secrets (several entries of one name are
//! versions, last is latest) and optional access rules.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::value::SecretValue;

/// A seed file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Secrets in order; a repeated name adds a version.
    #[serde(default)]
    pub secrets: Vec<SeedSecret>,
    /// Who may read what. Absent: every client reads everything.
    #[serde(default)]
    pub access: Option<Vec<AccessEntry>>,
    /// Key Vault's service limit, opt-in (absent: no limit). Azure answers
    /// the transactions beyond its limit (4,000 GET/LIST per 10 s per vault
    /// for secrets) with 429 and `Retry-After`; a bench or test that must
    /// prove an operator stays under that budget injects it here.
    #[serde(default)]
    pub throttle: Option<Throttle>,
    /// Certificates made when the vault starts (a test root, intermediate
    /// and leaf each), stored as Key Vault stores a certificate's backing
    /// secret: a version of secret `name` with contentType
    /// `application/x-pkcs12` (base64 PFX) or `application/x-pem-file`.
    /// They are added after `secrets`, so a `secrets` entry of the same name
    /// is an older version.
    #[serde(default)]
    pub certificates: Vec<SeedCertificate>,
}

/// A certificate the dev vault makes at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedCertificate {
    /// The certificate's (and its backing secret's) name.
    pub name: String,
    /// The leaf's common name (default: the name).
    #[serde(default)]
    pub common_name: Option<String>,
    /// How Key Vault would hold it: `pfx` (default) or `pem`.
    #[serde(default)]
    pub format: SeedCertificateFormat,
    /// The leaf's notAfter: RFC 3339 time or unix seconds (default: a year
    /// from now).
    #[serde(default)]
    pub not_after: Option<SeedTime>,
}

/// A seeded certificate's content type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedCertificateFormat {
    /// `application/x-pkcs12`: base64 of a PFX.
    #[default]
    Pfx,
    /// `application/x-pem-file`: the key, then the leaf and the chain.
    Pem,
}

/// A service limit: at most `transactions` Key Vault requests in any
/// `windowSeconds` (a sliding window, as Azure counts). Token requests are
/// Entra ID's, not the vault's, and are never throttled; 429 answers do not
/// count towards the limit (Azure's throttling guidance says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Throttle {
    /// Requests admitted per window, e.g. 4000.
    pub transactions: u32,
    /// The window, in seconds (Key Vault's is 10).
    #[serde(default = "ten_seconds")]
    pub window_seconds: u64,
}

fn ten_seconds() -> u64 {
    10
}

/// One version of a secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedSecret {
    /// Secret name.
    pub name: String,
    /// Value of this version.
    pub value: SecretValue,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Content type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Enabled (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Expiry: RFC 3339 time or unix seconds.
    #[serde(default)]
    pub expires: Option<SeedTime>,
    /// Not before: RFC 3339 time or unix seconds.
    #[serde(default)]
    pub not_before: Option<SeedTime>,
}

/// A time in a seed file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SeedTime {
    /// Unix seconds.
    Unix(i64),
    /// RFC 3339, e.g. `2027-01-01T00:00:00Z`.
    Text(String),
}

impl SeedTime {
    /// Unix seconds.
    pub fn unix(&self) -> Result<i64, String> {
        match self {
            Self::Unix(n) => Ok(*n),
            Self::Text(s) => s
                .parse::<k8s_openapi::jiff::Timestamp>()
                .map(|t| t.as_second())
                .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}")),
        }
    }
}

/// One access rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessEntry {
    /// An exact client id, or `"*"` for any other client.
    pub client_id: String,
    /// Names, `prefix-*` patterns or `"*"` (which also allows listing).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// When set, the client-secret flow must present this secret.
    #[serde(default)]
    pub client_secret: Option<SecretValue>,
}

impl Seed {
    /// Parses and checks a seed file.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let seed: Seed =
            serde_yaml::from_str(text).map_err(|e| format!("invalid seed file: {e}"))?;
        if let Some(t) = &seed.throttle
            && (t.transactions == 0 || t.window_seconds == 0)
        {
            return Err(format!(
                "throttle: {} transactions per {} s admits nothing: both must be at least 1 (Key Vault's limit is 4000 per 10)",
                t.transactions, t.window_seconds
            ));
        }
        let mut seed = seed;
        for c in std::mem::take(&mut seed.certificates) {
            seed.secrets.push(certificate_secret(&c)?);
        }
        for s in &seed.secrets {
            if !crate::crd::is_vault_secret_name(&s.name) {
                return Err(format!(
                    "seed secret name {:?} is not a Key Vault secret name",
                    s.name
                ));
            }
            if let Some(t) = &s.expires {
                t.unix()
                    .map_err(|e| format!("secret {}: expires: {e}", s.name))?;
            }
            if let Some(t) = &s.not_before {
                t.unix()
                    .map_err(|e| format!("secret {}: notBefore: {e}", s.name))?;
            }
        }
        Ok(seed)
    }
}

/// The backing secret of a seeded certificate, made now.
fn certificate_secret(c: &SeedCertificate) -> Result<SeedSecret, String> {
    let not_after = c
        .not_after
        .as_ref()
        .map(SeedTime::unix)
        .transpose()
        .map_err(|e| format!("certificate {}: notAfter: {e}", c.name))?;
    let leaf = c.common_name.as_deref().unwrap_or(&c.name);
    let spec = super::testcerts::ChainSpec {
        leaf_not_after: not_after,
        ..super::testcerts::ChainSpec::new(
            "kvsync dev-vault root",
            "kvsync dev-vault intermediate",
            leaf,
        )
    };
    let chain = super::testcerts::make_chain_with(&spec)
        .map_err(|e| format!("certificate {}: {e}", c.name))?;
    let (value, content_type) = match c.format {
        SeedCertificateFormat::Pfx => (
            chain
                .pfx_base64()
                .map_err(|e| format!("certificate {}: {e}", c.name))?,
            crate::certificate::CONTENT_TYPE_PKCS12,
        ),
        SeedCertificateFormat::Pem => (chain.keyvault_pem(), crate::certificate::CONTENT_TYPE_PEM),
    };
    Ok(SeedSecret {
        name: c.name.clone(),
        value: SecretValue::new(value),
        tags: BTreeMap::new(),
        content_type: Some(content_type.to_string()),
        enabled: None,
        expires: None,
        not_before: None,
    })
}

/// Does `name` match a pattern: exact (case-insensitive), `prefix-*` or `*`?
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => name
            .to_ascii_lowercase()
            .starts_with(&prefix.to_ascii_lowercase()),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions_tags_times_and_access() {
        let seed = Seed::from_yaml(
            r#"
secrets:
  - {name: db-password, value: v1}
  - {name: db-password, value: v2, tags: {team: ci}, expires: "2030-01-01T00:00:00Z"}
  - {name: off, value: x, enabled: false, notBefore: 1700000000}
access:
  - {clientId: restricted-app, secrets: ["public-*"]}
  - {clientId: "*", secrets: ["*"]}
"#,
        )
        .unwrap();
        assert_eq!(seed.secrets.len(), 3);
        assert_eq!(
            seed.secrets[1].expires.as_ref().unwrap().unix(),
            Ok(1893456000)
        );
        assert_eq!(seed.access.unwrap().len(), 2);
    }

    #[test]
    fn rejects_bad_names_and_unknown_fields() {
        assert!(Seed::from_yaml("secrets: [{name: bad_name, value: x}]").is_err());
        assert!(Seed::from_yaml("secrets: [{name: a, value: x, colour: red}]").is_err());
        assert!(Seed::from_yaml("secrets: [{name: a, value: x, expires: soon}]").is_err());
    }

    #[test]
    fn a_throttle_is_opt_in_with_key_vaults_window_by_default() {
        assert_eq!(Seed::from_yaml("secrets: []").unwrap().throttle, None);
        let seed = Seed::from_yaml("throttle: {transactions: 4000}").unwrap();
        assert_eq!(
            seed.throttle,
            Some(Throttle {
                transactions: 4000,
                window_seconds: 10
            })
        );
        let seed = Seed::from_yaml("throttle: {transactions: 5, windowSeconds: 1}").unwrap();
        assert_eq!(seed.throttle.unwrap().window_seconds, 1);
    }

    #[test]
    fn a_throttle_that_admits_nothing_is_refused() {
        let e = Seed::from_yaml("throttle: {transactions: 0}").unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        assert!(Seed::from_yaml("throttle: {transactions: 1, windowSeconds: 0}").is_err());
        assert!(Seed::from_yaml("throttle: {transactions: 1, per: 10}").is_err());
    }

    #[test]
    fn certificates_are_made_at_start_as_key_vault_stores_them() {
        let seed = Seed::from_yaml(
            "secrets:\n  - {name: web-tls, value: old}\ncertificates:\n  - {name: web-tls, commonName: web.example.test, notAfter: \"2030-01-01T00:00:00Z\"}\n  - {name: api-tls, format: pem}\n",
        )
        .unwrap();
        let names: Vec<&str> = seed.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["web-tls", "web-tls", "api-tls"],
            "the made one is the latest"
        );
        let web = &seed.secrets[1];
        assert_eq!(web.content_type.as_deref(), Some("application/x-pkcs12"));
        let converted =
            crate::certificate::convert(&web.value, web.content_type.as_deref()).unwrap();
        assert_eq!(converted.subject, "CN=web.example.test");
        assert_eq!(converted.not_after, 1_893_456_000);
        let api = &seed.secrets[2];
        assert_eq!(api.content_type.as_deref(), Some("application/x-pem-file"));
        assert!(
            api.value
                .expose()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        assert!(Seed::from_yaml("certificates: [{name: x, format: der}]").is_err());
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("public-*", "public-key"));
        assert!(!pattern_matches("public-*", "private-key"));
        assert!(pattern_matches("DB", "db"));
        assert!(!pattern_matches("db", "db2"));
    }
}
