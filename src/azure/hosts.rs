//! The guard that keeps bearer tokens on Key Vault hosts (DESIGN §4): a vault
//! URL must be https and its host must end in a Key Vault DNS suffix or be
//! allowed by `--allowed-vault-hosts`. It runs before any token is fetched.

use reqwest::Url;

/// Key Vault DNS suffixes of the Azure clouds, with the token resource of each.
pub const KEY_VAULT_SUFFIXES: &[(&str, &str)] = &[
    (".vault.azure.net", "https://vault.azure.net"),
    (".vault.azure.cn", "https://vault.azure.cn"),
    (
        ".vault.usgovcloudapi.net",
        "https://vault.usgovcloudapi.net",
    ),
    (
        ".vault.microsoftazure.de",
        "https://vault.microsoftazure.de",
    ),
    (".managedhsm.azure.net", "https://managedhsm.azure.net"),
];

/// Why a vault URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Not a URL at all.
    #[error("vaultUrl {url:?} is not a URL: write it like https://contoso.vault.azure.net")]
    NotAUrl {
        /// The `vaultUrl` as written in the spec.
        url: String,
    },
    /// Not https.
    #[error("vaultUrl {url:?} must use https: kvsync sends bearer tokens only over TLS")]
    NotHttps {
        /// The `vaultUrl` as written in the spec.
        url: String,
    },
    /// The host is not a Key Vault host.
    #[error(
        "vaultUrl host {host:?} is not a Key Vault host (*.vault.azure.net, *.vault.azure.cn, \
         *.vault.usgovcloudapi.net, *.vault.microsoftazure.de, *.managedhsm.azure.net); kvsync \
         sends tokens nowhere else. For another cloud or a local vault, start the operator with \
         --allowed-vault-hosts {host}"
    )]
    NotAVaultHost {
        /// The refused `host[:port]`, in the form `--allowed-vault-hosts` takes.
        host: String,
    },
}

/// A vault URL that passed the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultEndpoint {
    /// `https://host[:port]` without a trailing slash.
    pub base: Url,
    /// The vault's short name for messages: the host's first label.
    pub name: String,
    /// Token resource for the vault's cloud, e.g. `https://vault.azure.net`.
    pub resource: String,
}

impl VaultEndpoint {
    /// `host[:port]` of the vault.
    pub fn authority(&self) -> String {
        match self.base.port() {
            Some(p) => format!("{}:{p}", self.base.host_str().unwrap_or_default()),
            None => self.base.host_str().unwrap_or_default().to_string(),
        }
    }

    /// The OAuth scope for this vault's resource.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.resource)
    }

    /// Whether a 401 challenge's `resource` (or `scope`) names this vault's
    /// Key Vault resource. Anything else would make us fetch a token for
    /// another audience and hand it to whoever answered, so it is refused
    /// (the Azure SDKs verify the challenge resource too).
    pub fn accepts_resource(&self, resource: &str) -> bool {
        let r = resource.trim();
        let r = r
            .strip_suffix("/.default")
            .unwrap_or(r)
            .trim_end_matches('/');
        r.eq_ignore_ascii_case(&self.resource)
    }
}

/// Which vault hosts the operator will talk to.
#[derive(Debug, Clone, Default)]
pub struct VaultHostPolicy {
    /// Extra entries: `.suffix`, `host` (default port) or `host:port`.
    extra: Vec<String>,
}

impl VaultHostPolicy {
    /// The built-in suffixes plus `extra` (from `--allowed-vault-hosts`).
    pub fn new(extra: impl IntoIterator<Item = String>) -> Self {
        Self {
            extra: extra
                .into_iter()
                .map(|e| e.trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
        }
    }

    /// Checks `url` and returns the endpoint to use, or why it is refused.
    pub fn check(&self, url: &str) -> Result<VaultEndpoint, HostError> {
        let parsed = Url::parse(url).map_err(|_| HostError::NotAUrl { url: url.into() })?;
        if parsed.scheme() != "https" {
            return Err(HostError::NotHttps { url: url.into() });
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| HostError::NotAUrl { url: url.into() })?
            .to_ascii_lowercase();
        let port = parsed.port();
        let with_port = match port {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };

        let builtin = KEY_VAULT_SUFFIXES.iter().find(|(suffix, _)| {
            host.len() > suffix.len() && host.ends_with(suffix) && port.is_none()
        });
        let resource = if let Some((_, resource)) = builtin {
            (*resource).to_string()
        } else if self.extra.iter().any(|e| {
            if e.contains(':') {
                *e == with_port
            } else if e.starts_with('.') {
                port.is_none() && host.len() > e.len() && host.ends_with(e.as_str())
            } else {
                port.is_none() && *e == host
            }
        }) {
            "https://vault.azure.net".to_string()
        } else {
            return Err(HostError::NotAVaultHost { host: with_port });
        };

        let mut base = parsed.clone();
        base.set_path("");
        base.set_query(None);
        base.set_fragment(None);
        let name = host.split('.').next().unwrap_or(&host).to_string();
        Ok(VaultEndpoint {
            base,
            name,
            resource,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_sovereign_suffixes_pass_with_their_resource() {
        let p = VaultHostPolicy::default();
        let e = p.check("https://contoso-ci.vault.azure.net/").unwrap();
        assert_eq!(e.name, "contoso-ci");
        assert_eq!(e.scope(), "https://vault.azure.net/.default");
        assert_eq!(
            p.check("https://x.vault.azure.cn").unwrap().resource,
            "https://vault.azure.cn"
        );
        assert_eq!(
            p.check("https://x.vault.usgovcloudapi.net")
                .unwrap()
                .resource,
            "https://vault.usgovcloudapi.net"
        );
    }

    #[test]
    fn lookalike_and_plain_hosts_are_refused() {
        let p = VaultHostPolicy::default();
        for url in [
            "https://evil.example.com",
            "https://vault.azure.net.evil.com",
            "https://evilvault.azure.net",
            "https://.vault.azure.net",
            "https://x.vault.azure.net:8443",
            "https://127.0.0.1:8443",
        ] {
            assert!(
                matches!(p.check(url), Err(HostError::NotAVaultHost { .. })),
                "{url} should be refused"
            );
        }
        assert!(matches!(
            p.check("http://x.vault.azure.net"),
            Err(HostError::NotHttps { .. })
        ));
        assert!(matches!(
            p.check("nonsense"),
            Err(HostError::NotAUrl { .. })
        ));
    }

    #[test]
    fn allowed_hosts_match_exact_host_port_or_suffix() {
        let p = VaultHostPolicy::new(["127.0.0.1:8443".into(), ".vault.corp.example".into()]);
        assert!(p.check("https://127.0.0.1:8443").is_ok());
        assert!(p.check("https://127.0.0.1:9443").is_err());
        assert!(p.check("https://kv1.vault.corp.example").is_ok());
        assert!(p.check("https://vault.corp.example").is_err());
    }

    #[test]
    fn only_the_vault_clouds_resource_is_accepted_from_a_challenge() {
        let e = VaultHostPolicy::default()
            .check("https://contoso.vault.azure.net")
            .unwrap();
        for ok in [
            "https://vault.azure.net",
            "https://vault.azure.net/",
            "https://vault.azure.net/.default",
            "HTTPS://VAULT.AZURE.NET",
        ] {
            assert!(e.accepts_resource(ok), "{ok}");
        }
        for bad in [
            "https://vault.azure.cn",
            "https://management.azure.com",
            "https://evil.example/vault.azure.net",
            "https://vault.azure.net.evil.example",
            "",
        ] {
            assert!(!e.accepts_resource(bad), "{bad}");
        }
    }

    #[test]
    fn refusal_names_the_flag_that_allows_it() {
        let msg = VaultHostPolicy::default()
            .check("https://127.0.0.1:8443")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("--allowed-vault-hosts 127.0.0.1:8443"),
            "{msg}"
        );
    }
}
