//! Checks of a `VaultSecretBindingSpec` that mirror the schema's patterns and
//! CEL rules (so `kvsync check` and the reconciler catch them even where the
//! CRD was not applied with validation) and add what a schema cannot say.

use std::fmt;

use super::names::MANAGED_BY_LABEL;
use super::{MIN_REFRESH_INTERVAL, SecretPick, VaultSecretBindingSpec};

/// One problem with one field of a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.secrets[2].name`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every problem found in a binding's spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// Is `name` a valid Key Vault secret name (1-127 of `[0-9a-zA-Z-]`)?
pub fn is_vault_secret_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Is `key` a valid key of a Secret's `data` (`[-._a-zA-Z0-9]+`, not `.`/`..`)?
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Pattern of an Entra tenant or client id in the CRD schema: a GUID or a DNS
/// name (labels of letters, digits and `-`, 1-63 long, dots between). Such a
/// value is one safe URL path segment: no `/`, `:`, `@`, `%`, `?`, `#`.
pub const ENTRA_ID_PATTERN: &str = r"^[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*$";
/// Longest tenant or client id (a DNS name's limit).
pub const ENTRA_ID_MAX_LEN: usize = 253;

/// Is `id` a GUID or a DNS name, the only shapes of a tenant or client id
/// kvsync puts into a token URL or request? A GUID is a DNS name of hex labels.
pub fn is_entra_id(id: &str) -> bool {
    (1..=ENTRA_ID_MAX_LEN).contains(&id.len())
        && id.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// What is wrong with a tenant or client id, and the shape to use instead.
pub fn entra_id_problem(value: &str, what: &str) -> String {
    let shown: String = value.chars().take(80).collect();
    format!(
        "{shown:?} is not {what}: use a GUID (like 72f988bf-86f1-41af-91ab-2d7cd011db47) or a \
         domain name (like contoso.onmicrosoft.com), at most 253 characters of letters, digits, \
         '-' and '.'"
    )
}

/// Is `name` a DNS-1123 subdomain (the names of Secrets, ServiceAccounts, Deployments)?
pub fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

impl VaultSecretBindingSpec {
    /// Checks the spec; returns every problem found, each naming its field.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Vec::new();
        let mut push = |field: String, message: String| errs.push(FieldError { field, message });

        self.check_sources(&mut push);
        self.check_picks(&mut push);
        self.check_identity(&mut push);
        self.check_target(&mut push);

        if errs.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errs))
        }
    }

    /// The vault URL, that something is read, certificates and the template.
    fn check_sources(&self, push: &mut impl FnMut(String, String)) {
        check_vault_url(&self.vault_url, push);

        if self.secrets.is_empty() && self.select.is_none() && self.certificates.is_empty() {
            push(
                "spec.secrets".into(),
                "name at least one secret in spec.secrets or spec.certificates, or add spec.select"
                    .into(),
            );
        }
        let tls = self
            .certificates
            .iter()
            .filter(|c| c.format == super::CertificateFormat::Tls)
            .count();
        if tls > 1 {
            push(
                "spec.certificates".into(),
                format!(
                    "{tls} certificates with format Tls: a Secret holds one tls.crt/tls.key pair; write the others with format: Pem (and a key), or in other bindings"
                ),
            );
        }
        for (i, cert) in self.certificates.iter().enumerate() {
            if self
                .secrets
                .iter()
                .any(|p| p.name.eq_ignore_ascii_case(&cert.name))
            {
                push(
                    format!("spec.certificates[{i}].name"),
                    format!(
                        "{} is also in spec.secrets: a certificate's backing secret is read once, as a certificate; remove it from spec.secrets",
                        cert.name
                    ),
                );
            }
            if let Some(v) = &cert.version
                && (v.len() > 64 || !v.bytes().all(|b| b.is_ascii_alphanumeric()))
            {
                push(
                    format!("spec.certificates[{i}].version"),
                    format!("{v:?} is not a Key Vault version id"),
                );
            }
            if !is_vault_secret_name(&cert.name) {
                push(
                    format!("spec.certificates[{i}].name"),
                    format!(
                        "{:?} is not a Key Vault certificate name: 1-127 letters, digits and dashes",
                        cert.name
                    ),
                );
            }
            if let Some(key) = &cert.key {
                if !is_secret_key(key) {
                    push(
                        format!("spec.certificates[{i}].key"),
                        format!("{key:?} is not a valid Secret key"),
                    );
                }
                if cert.format == super::CertificateFormat::Tls {
                    push(
                        format!("spec.certificates[{i}].key"),
                        "format Tls always writes tls.crt and tls.key: remove key, or use format Pem"
                            .into(),
                    );
                }
            }
        }
        if let Some(t) = self.template() {
            for key in t.data.keys() {
                if !is_secret_key(key) {
                    push(
                        format!("spec.target.template.data[{key}]"),
                        format!(
                            "{key:?} is not a valid Secret key: use letters, digits, '-', '_' and '.'"
                        ),
                    );
                }
            }
            if t.data.len() > super::MAX_TEMPLATE_KEYS {
                push(
                    "spec.target.template.data".into(),
                    format!(
                        "{} templates: at most {} per binding",
                        t.data.len(),
                        super::MAX_TEMPLATE_KEYS
                    ),
                );
            }
            for (key, text) in &t.data {
                if text.len() > super::MAX_TEMPLATE_BYTES {
                    push(
                        format!("spec.target.template.data[{key}]"),
                        format!(
                            "the template is {} bytes: at most {} (build long files from several values)",
                            text.len(),
                            super::MAX_TEMPLATE_BYTES
                        ),
                    );
                }
            }
            if t.data.is_empty() {
                push(
                    "spec.target.template.data".into(),
                    "a template needs at least one key in data".into(),
                );
            }
            if t.type_.as_deref() == Some("") {
                push(
                    "spec.target.template.type".into(),
                    "type cannot be empty: omit it to keep target.type".into(),
                );
            }
            if t.metadata
                .as_ref()
                .is_some_and(|m| m.labels.contains_key(MANAGED_BY_LABEL))
            {
                push(
                    format!("spec.target.template.metadata.labels[{MANAGED_BY_LABEL}]"),
                    "this label is set by kvsync to find the Secrets it manages; remove it".into(),
                );
            }
        }
    }

    /// Explicit picks and the `select`.
    fn check_picks(&self, push: &mut impl FnMut(String, String)) {
        for (i, pick) in self.secrets.iter().enumerate() {
            check_pick(i, pick, push);
        }

        if let Some(sel) = &self.select {
            let prefix = sel.name_prefix.as_deref().unwrap_or("");
            if sel.all && !prefix.is_empty() {
                push(
                    "spec.select".into(),
                    "select.all and select.namePrefix are exclusive: use all: true for every secret, or a namePrefix".into(),
                );
            }
            if !sel.all && prefix.is_empty() && sel.tags.is_empty() {
                push(
                    "spec.select".into(),
                    "select needs all: true, a namePrefix or tags".into(),
                );
            }
            if !prefix.is_empty() && !is_vault_secret_name(prefix) {
                push(
                    "spec.select.namePrefix".into(),
                    format!(
                        "{prefix:?} cannot start a Key Vault secret name: use letters, digits and dashes"
                    ),
                );
            }
            if sel.strip_prefix && prefix.is_empty() {
                push(
                    "spec.select.stripPrefix".into(),
                    "stripPrefix needs a namePrefix to strip".into(),
                );
            }
        }
    }

    /// `spec.identity`: one kind, ids that cannot redirect a credential.
    fn check_identity(&self, push: &mut impl FnMut(String, String)) {
        if let Some(id) = &self.identity {
            let variants = [
                id.service_account_name.is_some(),
                id.managed_identity.is_some(),
                id.client_secret_ref.is_some(),
            ];
            if variants.iter().filter(|v| **v).count() > 1 {
                push(
                    "spec.identity".into(),
                    "set at most one of identity.serviceAccountName, identity.managedIdentity and identity.clientSecretRef".into(),
                );
            }
            let ids = [
                (
                    "spec.identity.clientId",
                    "a client id",
                    id.client_id.as_deref(),
                ),
                (
                    "spec.identity.tenantId",
                    "a tenant id",
                    id.tenant_id.as_deref(),
                ),
                (
                    "spec.identity.managedIdentity.clientId",
                    "a client id",
                    id.managed_identity
                        .as_ref()
                        .and_then(|m| m.client_id.as_deref()),
                ),
            ];
            for (field, what, value) in ids {
                if let Some(v) = value
                    && !is_entra_id(v)
                {
                    push(field.into(), entra_id_problem(v, what));
                }
            }
            if let Some(sa) = &id.service_account_name
                && !is_dns1123_subdomain(sa)
            {
                push(
                    "spec.identity.serviceAccountName".into(),
                    format!("{sa:?} is not a ServiceAccount name (lower-case DNS-1123 subdomain)"),
                );
            }
            if let Some(r) = &id.client_secret_ref {
                if id.client_id.is_none() {
                    push(
                        "spec.identity.clientId".into(),
                        "identity.clientSecretRef needs identity.clientId (the application's client id)".into(),
                    );
                }
                if !is_dns1123_subdomain(&r.name) {
                    push(
                        "spec.identity.clientSecretRef.name".into(),
                        format!("{:?} is not a Secret name", r.name),
                    );
                }
                if !is_secret_key(&r.key) {
                    push(
                        "spec.identity.clientSecretRef.key".into(),
                        format!("{:?} is not a Secret key", r.key),
                    );
                }
            }
            if id.managed_identity.is_some() && (id.client_id.is_some() || id.tenant_id.is_some()) {
                push(
                    "spec.identity.managedIdentity".into(),
                    "identity.managedIdentity takes its client id in identity.managedIdentity.clientId; remove identity.clientId/tenantId".into(),
                );
            }
        }
    }

    /// The target Secret, the refresh interval and the rollout targets.
    fn check_target(&self, push: &mut impl FnMut(String, String)) {
        if let Some(t) = &self.target {
            if let Some(name) = &t.name
                && !is_dns1123_subdomain(name)
            {
                push(
                    "spec.target.name".into(),
                    format!(
                        "{name:?} is not a Secret name: use lower-case letters, digits, '-' and '.'"
                    ),
                );
            }
            if t.type_.as_deref() == Some("") {
                push(
                    "spec.target.type".into(),
                    "type cannot be empty: omit it for Opaque".into(),
                );
            }
            if t.labels.contains_key(MANAGED_BY_LABEL) {
                push(
                    format!("spec.target.labels[{MANAGED_BY_LABEL}]"),
                    "this label is set by kvsync to find the Secrets it manages; remove it".into(),
                );
            }
        }

        if let Some(ri) = &self.refresh_interval {
            match crate::duration::parse(ri) {
                Err(e) => push("spec.refreshInterval".into(), e.to_string()),
                Ok(d) if d < MIN_REFRESH_INTERVAL => push(
                    "spec.refreshInterval".into(),
                    format!("refreshInterval must be at least 30s (got {ri})"),
                ),
                Ok(_) => {}
            }
        }

        for (i, r) in self.rollout.iter().enumerate() {
            if !is_dns1123_subdomain(&r.name) {
                push(
                    format!("spec.rollout[{i}].name"),
                    format!("{:?} is not a workload name", r.name),
                );
            }
        }
    }
}

fn check_vault_url(url: &str, push: &mut impl FnMut(String, String)) {
    let field = "spec.vaultUrl".to_string();
    let Ok(parsed) = reqwest::Url::parse(url) else {
        push(
            field,
            format!("{url:?} is not a URL: write it like https://contoso.vault.azure.net"),
        );
        return;
    };
    if parsed.scheme() != "https" {
        push(field, format!("{url:?} must use https"));
    } else if parsed.host_str().is_none_or(str::is_empty)
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || !matches!(parsed.path(), "" | "/")
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        push(
            field,
            format!(
                "{url:?} must be just the vault's address, like https://contoso.vault.azure.net"
            ),
        );
    }
}

fn check_pick(i: usize, pick: &SecretPick, push: &mut impl FnMut(String, String)) {
    if !is_vault_secret_name(&pick.name) {
        push(
            format!("spec.secrets[{i}].name"),
            format!(
                "{:?} is not a Key Vault secret name: 1-127 letters, digits and dashes",
                pick.name
            ),
        );
    }
    if let Some(key) = &pick.key
        && !is_secret_key(key)
    {
        push(
            format!("spec.secrets[{i}].key"),
            format!("{key:?} is not a valid Secret key: use letters, digits, '-', '_' and '.'"),
        );
    }
    if let Some(v) = &pick.version
        && (v.len() > 64 || !v.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        push(
            format!("spec.secrets[{i}].version"),
            format!(
                "{v:?} is not a Key Vault version id (the 32 characters at the end of the secret's URI)"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_ids_are_guids_or_dns_names_only() {
        for ok in [
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "contoso.onmicrosoft.com",
            "kvsync-dev-tenant",
            "common",
        ] {
            assert!(is_entra_id(ok), "{ok}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["a"; 127].join(".") + ".bb";
        for bad in [
            "",
            "//127.0.0.1:9999/evil",
            "a/b",
            "a:b",
            "user@host",
            "a%2fb",
            "a?b",
            "a#b",
            "a b",
            "tenant\n",
            "a..b",
            ".a",
            "a.",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(!is_entra_id(bad), "{bad:?}");
        }
    }
}
