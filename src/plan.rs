//! Which vault secrets go to which keys of the Secret: pure, no I/O.
//!
//! Explicit picks need no listing of the vault; a `select` needs the vault's
//! secret items. Keys come from the pick's `key` or from the name through
//! `keyTransform`; two vault secrets mapping to one key, and keys a Secret
//! cannot hold, are errors that change nothing.

use crate::reason::Reason;
use std::collections::BTreeMap;

use crate::azure::keyvault::SecretItem;
use crate::crd::{CertificateFormat, KeyTransform, VaultSecretBindingSpec, is_secret_key};

/// One key of the Secret and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedKey {
    /// Key in the Secret.
    pub key: String,
    /// Vault secret name.
    pub secret: String,
    /// Pinned version, or `None` for the latest.
    pub version: Option<String>,
    /// Missing/disabled/unreadable is skipped rather than an error.
    pub optional: bool,
    /// Which field of the spec brought this read in.
    pub role: Role,
}

/// Which field of the spec causes a read. Every read a binding makes is a
/// [`PlannedKey`] with one of these, so the policy, the poller's interests,
/// `kvsync check` and holding all see the same reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `spec.secrets[]`: an explicit pick.
    Pick,
    /// `spec.certificates[]`: a certificate's backing secret, converted when
    /// rendered (`key` is then `tls.crt` for `Tls`, with `tls.key` beside it).
    Certificate(CertificateFormat),
    /// `spec.select`: a name the vault's listing showed.
    Selected,
}

impl PlannedKey {
    /// The certificate format, when this read is a certificate's.
    pub fn certificate(&self) -> Option<CertificateFormat> {
        match self.role {
            Role::Certificate(format) => Some(format),
            _ => None,
        }
    }

    /// The spec field that causes this read, for messages and `check`.
    pub fn field(&self) -> &'static str {
        match self.role {
            Role::Pick => "spec.secrets",
            Role::Certificate(_) => "spec.certificates",
            Role::Selected => "spec.select",
        }
    }

    /// Whether this read's version is pinned.
    pub fn pinned(&self) -> bool {
        self.version.is_some()
    }
}

/// The plan of one binding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Keys in key order.
    pub keys: Vec<PlannedKey>,
}

/// Why a binding cannot be planned. Each is the user's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Two vault secrets map to the same key.
    #[error(
        "vault secrets {first} and {second} both map to key {key}: set an explicit key on one of them in spec.secrets"
    )]
    KeyCollision {
        /// The Secret key both would be written under.
        key: String,
        /// The vault secret planned first under that key.
        first: String,
        /// The vault secret whose key collides with `first`'s.
        second: String,
    },
    /// A key is not valid in a Secret.
    #[error(
        "key {key:?} (from vault secret {secret}) is not a valid Secret key: keys are letters, digits, '-', '_' and '.'; set spec.secrets[].key"
    )]
    InvalidKey {
        /// The Secret key as named or derived by `select`'s transform.
        key: String,
        /// The vault secret the key is for.
        secret: String,
    },
}

impl PlanError {
    /// The condition reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::KeyCollision { .. } => Reason::KeyCollision,
            Self::InvalidKey { .. } => Reason::InvalidKey,
        }
    }
}

/// Applies `keyTransform` to a vault secret name.
pub fn transform_key(name: &str, transform: KeyTransform) -> String {
    match transform {
        KeyTransform::Verbatim => name.to_string(),
        KeyTransform::EnvVar => name.to_ascii_uppercase().replace('-', "_"),
    }
}

/// True when the binding needs the vault's list of secrets.
pub fn needs_listing(spec: &VaultSecretBindingSpec) -> bool {
    spec.select.is_some()
}

/// Does a listed item match the binding's `select`?
pub fn selects(spec: &VaultSecretBindingSpec, item: &SecretItem) -> bool {
    let Some(sel) = &spec.select else {
        return false;
    };
    let name = item.name();
    let prefix = sel.name_prefix.as_deref().unwrap_or("");
    if !prefix.is_empty()
        && !name
            .to_ascii_lowercase()
            .starts_with(&prefix.to_ascii_lowercase())
    {
        return false;
    }
    sel.allowed_names
        .as_ref()
        .is_none_or(|patterns| patterns.iter().any(|p| crate::crd::matching::glob(p, name)))
        && sel.tags.iter().all(|(k, v)| item.tags.get(k) == Some(v))
}

/// Plans the keys of a binding. `listing` is the vault's secret items; it is
/// only read when the binding has a `select`.
pub fn plan(spec: &VaultSecretBindingSpec, listing: &[SecretItem]) -> Result<Plan, PlanError> {
    // key -> planned; explicit picks first so they win over select for the same secret.
    let mut by_key: BTreeMap<String, PlannedKey> = BTreeMap::new();
    let mut insert = |planned: PlannedKey| -> Result<(), PlanError> {
        if !is_secret_key(&planned.key) {
            return Err(PlanError::InvalidKey {
                key: planned.key,
                secret: planned.secret,
            });
        }
        match by_key.get(&planned.key) {
            Some(existing) if existing.secret.eq_ignore_ascii_case(&planned.secret) => Ok(()),
            Some(existing) => Err(PlanError::KeyCollision {
                key: planned.key.clone(),
                first: existing.secret.clone(),
                second: planned.secret,
            }),
            None => {
                by_key.insert(planned.key.clone(), planned);
                Ok(())
            }
        }
    };

    for pick in &spec.secrets {
        insert(PlannedKey {
            key: pick
                .key
                .clone()
                .unwrap_or_else(|| transform_key(&pick.name, spec.key_transform)),
            secret: pick.name.clone(),
            version: pick.version.clone().filter(|v| !v.is_empty()),
            optional: pick.optional,
            role: Role::Pick,
        })?;
    }

    for cert in &spec.certificates {
        insert(PlannedKey {
            key: match cert.format {
                CertificateFormat::Tls => crate::crd::names::TLS_CRT.to_string(),
                CertificateFormat::Pem => cert
                    .key
                    .clone()
                    .unwrap_or_else(|| format!("{}.pem", cert.name)),
                CertificateFormat::Pfx => cert
                    .key
                    .clone()
                    .unwrap_or_else(|| format!("{}.pfx", cert.name)),
            },
            secret: cert.name.clone(),
            version: cert.version.clone().filter(|v| !v.is_empty()),
            optional: false,
            role: Role::Certificate(cert.format),
        })?;
    }

    if let Some(sel) = &spec.select {
        let prefix = sel.name_prefix.as_deref().unwrap_or("");
        let mut selected: Vec<&SecretItem> = listing.iter().filter(|i| selects(spec, i)).collect();
        selected.sort_by(|a, b| a.name().cmp(b.name()));
        for item in selected {
            let name = item.name();
            // Secrets picked explicitly keep their explicit key only; a
            // certificate's backing secret is read as a certificate only.
            if spec
                .secrets
                .iter()
                .any(|p| p.name.eq_ignore_ascii_case(name))
                || spec
                    .certificates
                    .iter()
                    .any(|c| c.name.eq_ignore_ascii_case(name))
            {
                continue;
            }
            let base = if sel.strip_prefix && !prefix.is_empty() {
                &name[prefix.len().min(name.len())..]
            } else {
                name
            };
            insert(PlannedKey {
                key: transform_key(base, spec.key_transform),
                secret: name.to_string(),
                version: None,
                // A selected secret that vanishes between list and get is not an error.
                optional: true,
                role: Role::Selected,
            })?;
        }
    }

    Ok(Plan {
        keys: by_key.into_values().collect(),
    })
}

/// Every way a spec can make a binding read a vault secret, as spec YAML
/// that reads `payroll-db` that way (a `select` over a listing that shows
/// it). Tests of the plan, the policy and the poller's interests run over
/// all of them; `every_field_of_the_spec_is_classified` makes a new field
/// fail to compile until it is either added here or said to read nothing.
#[cfg(test)]
pub(crate) const READS_BY_FIELD: &[(&str, &str, Role)] = &[
    ("spec.secrets", "secrets: [{name: payroll-db}]", Role::Pick),
    (
        "spec.secrets[].version",
        "secrets: [{name: payroll-db, version: 0123456789abcdef0123456789abcdef}]",
        Role::Pick,
    ),
    (
        "spec.secrets[].optional",
        "secrets: [{name: payroll-db, optional: true}]",
        Role::Pick,
    ),
    (
        "spec.certificates (Tls)",
        "certificates: [{name: payroll-db}]",
        Role::Certificate(CertificateFormat::Tls),
    ),
    (
        "spec.certificates (Pem)",
        "certificates: [{name: payroll-db, format: Pem}]",
        Role::Certificate(CertificateFormat::Pem),
    ),
    (
        "spec.certificates (Pfx)",
        "certificates: [{name: payroll-db, format: Pfx, version: 0123456789abcdef0123456789abcdef}]",
        Role::Certificate(CertificateFormat::Pfx),
    ),
    ("spec.select.all", "select: {all: true}", Role::Selected),
    (
        "spec.select.namePrefix",
        "select: {namePrefix: payroll-}",
        Role::Selected,
    ),
    (
        "spec.select.tags",
        "select: {tags: {team: pay}}",
        Role::Selected,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::keyvault::SecretAttributes;

    #[test]
    fn every_way_of_reading_is_a_planned_read_with_its_role() {
        let listing = [item("payroll-db", &[("team", "pay")]), item("other", &[])];
        for (field, yaml, role) in READS_BY_FIELD {
            let p = plan(&spec(yaml), &listing).unwrap();
            let reads: Vec<_> = p.keys.iter().filter(|k| k.secret == "payroll-db").collect();
            assert_eq!(reads.len(), 1, "{field}: {p:?}");
            assert_eq!(reads[0].role, *role, "{field}");
            if *role != Role::Selected {
                // Read by name: planned without any listing, as the policy
                // judges it before anything is read.
                let named = plan(&spec(yaml), &[]).unwrap();
                assert!(
                    named.keys.iter().any(|k| k.secret == "payroll-db"),
                    "{field}: read by name, so planned before listing"
                );
            }
        }
    }

    /// Every field of a binding's spec is either a way of reading (in
    /// [`READS_BY_FIELD`]) or reads nothing. Adding a field breaks this
    /// destructuring until it is classified here.
    #[test]
    fn every_field_of_the_spec_is_classified() {
        use crate::crd::{CertificatePick, SecretPick, SecretSelector, SecretTarget, SyncSpec};
        let s = spec(
            "secrets: [{name: a}]\ncertificates: [{name: c}]\nselect: {all: true}\ntarget: {name: t}",
        );
        let VaultSecretBindingSpec {
            identity: _, // who reads, judged by the policy on its own
            sync,
        } = &s;
        let SyncSpec {
            vault_url: _, // where: judged by the host guard and the policy
            secrets,
            select,
            certificates,
            key_transform: _,    // names keys, reads nothing
            target,              // below
            refresh_interval: _, // when
            on_disabled: _,      // what to do with what was read
            on_expired: _,
            rollout: _, // workloads, not the vault
        } = sync;
        let SecretPick {
            name: _,     // READS_BY_FIELD: spec.secrets
            key: _,      // names a key
            version: _,  // READS_BY_FIELD: spec.secrets[].version
            optional: _, // READS_BY_FIELD: spec.secrets[].optional
        } = &secrets[0];
        let CertificatePick {
            name: _,    // READS_BY_FIELD: spec.certificates
            key: _,     // names a key
            version: _, // READS_BY_FIELD: spec.certificates (Pfx) pins
            format: _,  // READS_BY_FIELD: each format
        } = &certificates[0];
        let SecretSelector {
            name_prefix: _, // READS_BY_FIELD: spec.select.namePrefix
            all: _,         // READS_BY_FIELD: spec.select.all
            strip_prefix: _,
            tags: _,          // READS_BY_FIELD: spec.select.tags
            allowed_names: _, // set by the policy, never by the user
        } = select.as_ref().unwrap();
        let SecretTarget {
            name: _,
            type_: _,
            labels: _,
            annotations: _,
            template: _, // renders from the planned values only: reads nothing
            policy: _,
        } = target.as_ref().unwrap();
    }

    fn spec(yaml: &str) -> VaultSecretBindingSpec {
        serde_yaml::from_str(&format!("vaultUrl: https://v.vault.azure.net\n{yaml}")).unwrap()
    }

    fn item(name: &str, tags: &[(&str, &str)]) -> SecretItem {
        SecretItem {
            id: format!("https://v.vault.azure.net/secrets/{name}"),
            attributes: SecretAttributes::default(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            content_type: None,
            managed: None,
        }
    }

    fn keys(p: &Plan) -> Vec<(&str, &str)> {
        p.keys
            .iter()
            .map(|k| (k.key.as_str(), k.secret.as_str()))
            .collect()
    }

    #[test]
    fn explicit_picks_use_key_or_transform() {
        let s =
            spec("secrets: [{name: db-password}, {name: api-key, key: API}]\nkeyTransform: EnvVar");
        let p = plan(&s, &[]).unwrap();
        assert_eq!(
            keys(&p),
            [("API", "api-key"), ("DB_PASSWORD", "db-password")]
        );
    }

    #[test]
    fn pinned_version_and_optional_carry_through() {
        let s = spec("secrets: [{name: a, version: abc, optional: true}, {name: b, version: ''}]");
        let p = plan(&s, &[]).unwrap();
        assert_eq!(p.keys[0].version.as_deref(), Some("abc"));
        assert!(p.keys[0].optional);
        assert_eq!(p.keys[1].version, None, "an empty pin means latest");
    }

    #[test]
    fn select_all_takes_every_listed_secret() {
        let s = spec("select: {all: true}");
        let p = plan(&s, &[item("b", &[]), item("a", &[])]).unwrap();
        assert_eq!(keys(&p), [("a", "a"), ("b", "b")]);
        assert!(p.keys.iter().all(|k| k.optional && k.version.is_none()));
    }

    #[test]
    fn select_prefix_is_case_insensitive_and_can_be_stripped() {
        let listing = [
            item("Agent-token", &[]),
            item("agent-url", &[]),
            item("db", &[]),
        ];
        let kept = plan(&spec("select: {namePrefix: agent-}"), &listing).unwrap();
        assert_eq!(
            keys(&kept),
            [("Agent-token", "Agent-token"), ("agent-url", "agent-url")]
        );
        let stripped = plan(
            &spec("select: {namePrefix: agent-, stripPrefix: true}\nkeyTransform: EnvVar"),
            &listing,
        )
        .unwrap();
        assert_eq!(
            keys(&stripped),
            [("TOKEN", "Agent-token"), ("URL", "agent-url")]
        );
    }

    #[test]
    fn select_tags_must_all_match() {
        let listing = [
            item("a", &[("team", "ci"), ("env", "prod")]),
            item("b", &[("team", "ci")]),
            item("c", &[]),
        ];
        let p = plan(&spec("select: {tags: {team: ci, env: prod}}"), &listing).unwrap();
        assert_eq!(keys(&p), [("a", "a")]);
        let p = plan(&spec("select: {namePrefix: b, tags: {team: ci}}"), &listing).unwrap();
        assert_eq!(keys(&p), [("b", "b")]);
    }

    #[test]
    fn explicit_pick_wins_over_select_for_the_same_secret() {
        let s = spec("secrets: [{name: db, key: DATABASE}]\nselect: {all: true}");
        let p = plan(&s, &[item("db", &[]), item("x", &[])]).unwrap();
        assert_eq!(keys(&p), [("DATABASE", "db"), ("x", "x")]);
        assert!(!p.keys[0].optional);
    }

    #[test]
    fn two_secrets_on_one_key_collide() {
        let s = spec(
            "secrets: [{name: db-password}, {name: DB-PASSWORD2, key: DB_PASSWORD}]\nkeyTransform: EnvVar",
        );
        let err = plan(&s, &[]).unwrap_err();
        assert!(
            matches!(err, PlanError::KeyCollision { ref key, .. } if key == "DB_PASSWORD"),
            "{err:?}"
        );
        assert!(err.to_string().contains("both map to key DB_PASSWORD"));
        // Via select + transform: a-b and A_B both become A_B.
        let s = spec("select: {all: true}\nkeyTransform: EnvVar");
        let err = plan(&s, &[item("a-b", &[]), item("A-B", &[])]);
        assert!(
            err.is_ok(),
            "a-b and A-B are one secret in Key Vault (names are case-insensitive)"
        );
        let err = plan(&s, &[item("a-b", &[]), item("x", &[])]).map(|p| p.keys.len());
        assert_eq!(err, Ok(2));
    }

    #[test]
    fn strip_prefix_to_nothing_is_an_invalid_key() {
        let s = spec("select: {namePrefix: agent-, stripPrefix: true}");
        let err = plan(&s, &[item("agent-", &[])]).unwrap_err();
        assert_eq!(err.reason(), "InvalidKey");
    }

    #[test]
    fn the_same_secret_under_two_explicit_keys_is_fine() {
        let s = spec("secrets: [{name: db, key: A}, {name: db, key: B}]");
        assert_eq!(plan(&s, &[]).unwrap().keys.len(), 2);
    }
}
