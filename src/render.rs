//! From what was read in the vault to the Secret's data: pure, no I/O.
//!
//! Applies `onDisabled` and `onExpired`, keeps the last value of a disabled
//! secret (KeepLast), enforces the 1 MiB Secret limit and computes `dataHash`.

use crate::reason::Reason;
use std::collections::BTreeMap;

use crate::crd::names::{TLS_CRT, TLS_KEY};
use crate::crd::{OnDisabled, OnExpired, SyncedSecret};
use crate::hashkey::HashKey;
use crate::plan::{Plan, PlannedKey};
use crate::value::SecretValue;

/// Kubernetes' limit on a Secret's data.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;
/// A synced secret expiring sooner than this sets `ExpiringSoon`.
pub const EXPIRY_WARNING_SECS: i64 = 7 * 86400;

pub use crate::fetched::Fetched;

/// A secret expiring soon, or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// Vault secret name.
    pub name: String,
    /// Unix seconds.
    pub expires: i64,
}

/// The Secret's data as it should be.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Key → value (ours only).
    pub data: BTreeMap<String, SecretValue>,
    /// What is in it, for `status.secrets`.
    pub synced: Vec<SyncedSecret>,
    /// Keyed hash of `data` (`hmac-sha256:`).
    pub hash: String,
    /// Secrets that expire within 7 days or have expired (and are synced).
    pub expiring: Vec<Expiry>,
    /// Keys left out, and why (optional missing, Remove, Skip).
    pub skipped: Vec<(String, String)>,
    /// Keys kept at their last value because the secret is disabled.
    pub kept: Vec<String>,
    /// Optional keys kept at their last value because the vault (or Entra
    /// ID) refused or failed to read them.
    pub kept_unreadable: Vec<String>,
    /// Required secrets that are disabled with nothing to keep: the Secret is
    /// written with everything else, and the binding is not Ready.
    pub disabled_unkept: Vec<String>,
}

/// Why nothing may be written. Each leaves the Secret as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A required secret does not exist.
    #[error(
        "secret {name} was not found in the vault: create it, fix the name, or mark the pick optional: true"
    )]
    Missing {
        /// The vault secret a required pick names.
        name: String,
    },
    /// A required secret is disabled and the policy says fail.
    #[error(
        "secret {name} is disabled in the vault (onDisabled: Fail): enable it, or set onDisabled: Remove or KeepLast"
    )]
    Disabled {
        /// The vault secret that is disabled.
        name: String,
    },
    /// The Secret would exceed Kubernetes' 1 MiB limit.
    #[error(
        "the Secret would hold {bytes} bytes, over Kubernetes' 1 MiB limit: split the binding or pick fewer secrets"
    )]
    TooLarge {
        /// The size the Secret's data would have.
        bytes: usize,
    },
    /// A certificate or a template failed (see [`crate::shape`]).
    #[error(transparent)]
    Shape(#[from] crate::shape::ShapeError),
    /// A template's input could not be read this time, and the Secret holds
    /// no earlier templated keys to keep.
    #[error(
        "secret(s) {names} could not be read now (disabled or refused) and the Secret holds no earlier value of the templated keys to keep; nothing is written until they can be read"
    )]
    TemplateInputUnavailable {
        /// The vault secrets.
        names: String,
        /// The reason of the first one.
        reason: Reason,
    },
}

impl RenderError {
    /// The condition reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Missing { .. } => Reason::SecretNotFound,
            Self::Disabled { .. } => Reason::SecretDisabled,
            Self::TooLarge { .. } => Reason::SecretTooLarge,
            Self::Shape(e) => e.reason(),
            Self::TemplateInputUnavailable { reason, .. } => *reason,
        }
    }
}

/// Everything rendering depends on.
pub struct RenderInput<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// Key → what the vault said (every planned key must be present).
    pub fetched: &'a BTreeMap<String, Fetched>,
    /// The target Secret's current data (for KeepLast).
    pub current: Option<&'a BTreeMap<String, Vec<u8>>>,
    /// The last status's secrets (versions of kept values).
    pub previous: &'a [SyncedSecret],
    /// `spec.onDisabled`.
    pub on_disabled: OnDisabled,
    /// `spec.onExpired`.
    pub on_expired: OnExpired,
    /// Now, unix seconds.
    pub now: i64,
    /// Key of `dataHash`.
    pub hash_key: &'a HashKey,
    /// `target.template`, applied last (after certificates are converted).
    pub template: Option<&'a crate::crd::SecretTemplate>,
    /// The plan's certificates, converted beforehand
    /// ([`crate::certificate::prepare`]; rendering never converts).
    pub certificates: &'a crate::certificate::Conversions,
}

fn time(secs: i64) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .ok()
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
}

/// The key's value in the Secret as it is now, for KeepLast.
fn last_value(input: &RenderInput<'_>, key: &str) -> Option<SecretValue> {
    input
        .current
        .and_then(|c| c.get(key))
        .map(|b| SecretValue::from_bytes(b.clone()))
}

/// Whether rendering `fetched` consults the Secret's current data: only a
/// disabled or unreadable pick keeps its last value from there. Otherwise
/// the rendering (and its hash) is the same without the Secret, which is
/// what lets an unchanged binding skip reading it.
pub fn uses_current(fetched: &BTreeMap<String, Fetched>) -> bool {
    fetched
        .values()
        .any(|f| matches!(f, Fetched::Disabled | Fetched::Unavailable { .. }))
}

/// The keys under which a template sees what `planned` brings: its own, and
/// for a `Tls` certificate (key `tls.crt`) the `tls.key` beside it.
fn template_keys(planned: &PlannedKey) -> impl Iterator<Item = &str> {
    let beside = (planned.key == TLS_CRT).then_some(TLS_KEY);
    std::iter::once(planned.key.as_str()).chain(beside)
}

/// Keeps `planned`'s key at the value the Secret holds (`v`), reported
/// with the version the last status recorded for it.
fn keep(
    input: &RenderInput<'_>,
    planned: &crate::plan::PlannedKey,
    v: SecretValue,
    data: &mut BTreeMap<String, SecretValue>,
    synced: &mut Vec<SyncedSecret>,
    kept: &mut Vec<String>,
) {
    data.insert(planned.key.clone(), v);
    kept.push(planned.key.clone());
    if let Some(prev) = input.previous.iter().find(|s| s.key == planned.key) {
        synced.push(prev.clone());
    }
}

/// Renders the Secret's data.
pub fn render(input: &RenderInput<'_>) -> Result<Rendered, RenderError> {
    let mut data = BTreeMap::new();
    let mut synced = Vec::new();
    let mut expiring = Vec::new();
    let mut skipped = Vec::new();
    let mut kept = Vec::new();
    let mut kept_unreadable = Vec::new();
    let mut disabled_unkept = Vec::new();

    for planned in &input.plan.keys {
        let fetched = input.fetched.get(&planned.key).unwrap_or(&Fetched::Missing);
        match fetched {
            Fetched::Value {
                value,
                version,
                updated,
                expires,
            } => {
                let expired = expires.is_some_and(|e| e <= input.now);
                if expired && input.on_expired == OnExpired::Skip {
                    skipped.push((
                        planned.key.clone(),
                        format!("{} has expired (onExpired: Skip)", planned.secret),
                    ));
                    continue;
                }
                if let Some(e) = expires
                    && e.saturating_sub(input.now) <= EXPIRY_WARNING_SECS
                {
                    expiring.push(Expiry {
                        name: planned.secret.clone(),
                        expires: *e,
                    });
                }
                data.insert(planned.key.clone(), value.clone());
                synced.push(SyncedSecret {
                    name: planned.secret.clone(),
                    key: planned.key.clone(),
                    version: version.clone(),
                    updated: updated.and_then(time),
                    expires: expires.and_then(time),
                });
            }
            Fetched::Missing if planned.optional => {
                skipped.push((
                    planned.key.clone(),
                    format!("{} does not exist (optional)", planned.secret),
                ));
            }
            Fetched::Missing => {
                return Err(RenderError::Missing {
                    name: planned.secret.clone(),
                });
            }
            Fetched::Unavailable { reason, message } => {
                // Not "does not exist": the vault (or Entra ID) refused or
                // failed. Never drop what is there because of that.
                match last_value(input, &planned.key) {
                    Some(v) => keep(
                        input,
                        planned,
                        v,
                        &mut data,
                        &mut synced,
                        &mut kept_unreadable,
                    ),
                    None => skipped.push((
                        planned.key.clone(),
                        format!(
                            "{} could not be read and has no earlier value ({reason}: {message})",
                            planned.secret
                        ),
                    )),
                }
            }
            Fetched::Disabled => match input.on_disabled {
                OnDisabled::Remove => {
                    skipped.push((
                        planned.key.clone(),
                        format!("{} is disabled (onDisabled: Remove)", planned.secret),
                    ));
                }
                OnDisabled::Fail if !planned.optional => {
                    return Err(RenderError::Disabled {
                        name: planned.secret.clone(),
                    });
                }
                OnDisabled::Fail => {
                    skipped.push((
                        planned.key.clone(),
                        format!("{} is disabled (optional)", planned.secret),
                    ));
                }
                OnDisabled::KeepLast => match last_value(input, &planned.key) {
                    Some(v) => keep(input, planned, v, &mut data, &mut synced, &mut kept),
                    None if planned.optional => {
                        skipped.push((
                            planned.key.clone(),
                            format!("{} is disabled and was never synced", planned.secret),
                        ));
                    }
                    None => {
                        // Nothing to keep (the Secret was deleted, or this is
                        // the first sync): write what can be read and say
                        // which one is missing, rather than write nothing.
                        disabled_unkept.push(planned.secret.clone());
                    }
                },
            },
        }
    }

    let kept_any: Vec<String> = kept.iter().chain(&kept_unreadable).cloned().collect();
    let held_template = held_template(input, &mut kept_unreadable)?;
    let template = if held_template.is_some() {
        None
    } else {
        input.template
    };
    let (mut data, certificates) = crate::shape::shape(
        data,
        input.plan,
        input.certificates,
        &kept_any,
        input.current,
        template,
    )?;
    if let Some((policy, held)) = held_template {
        if policy == crate::crd::TemplateMergePolicy::Replace {
            data.clear();
        }
        data.extend(held);
    }
    certificate_expiries(certificates, &mut synced, &mut expiring, input.now);
    let bytes: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_SECRET_BYTES {
        return Err(RenderError::TooLarge { bytes });
    }
    Ok(Rendered {
        hash: input.hash_key.data_hash(&data),
        data,
        synced,
        expiring,
        skipped,
        kept,
        kept_unreadable,
        disabled_unkept,
    })
}

/// A template's keys kept at what the Secret holds, with its merge policy.
type HeldTemplate = (
    crate::crd::TemplateMergePolicy,
    BTreeMap<String, SecretValue>,
);

/// The templated keys at what the Secret holds, when a template could read
/// a value that could not be read this time; `None`: render the templates.
fn held_template(
    input: &RenderInput<'_>,
    kept_unreadable: &mut Vec<String>,
) -> Result<Option<HeldTemplate>, RenderError> {
    // A template over a value that could not be read this time would render
    // without it (or fail on it): like KeepLast for a plain key, the
    // templated keys keep what the Secret holds.
    let unread: Vec<(&PlannedKey, Reason)> = input
        .plan
        .keys
        .iter()
        .filter_map(|k| match input.fetched.get(&k.key) {
            Some(Fetched::Disabled) if input.on_disabled == OnDisabled::KeepLast => {
                Some((k, Reason::SecretDisabled))
            }
            Some(Fetched::Unavailable { reason, .. }) => Some((k, *reason)),
            _ => None,
        })
        .collect();
    // Only a template that could read an unread value holds (an unrelated
    // disabled secret under a `select` must not freeze it); one that uses
    // `values` as a whole (`tojson`, a loop, a computed key) could read any.
    let unread: Vec<(&str, Reason)> = match input.template {
        Some(t) if !unread.is_empty() => {
            let reads = crate::template::dependencies_of(&t.data);
            unread
                .into_iter()
                .filter(|(k, _)| template_keys(k).any(|key| reads.reads(key)))
                .map(|(k, reason)| (k.secret.as_str(), reason))
                .collect()
        }
        _ => Vec::new(),
    };
    match input.template {
        Some(t) if !unread.is_empty() => {
            let held: Option<BTreeMap<String, SecretValue>> = t
                .data
                .keys()
                .map(|k| last_value(input, k).map(|v| (k.clone(), v)))
                .collect();
            let Some(held) = held else {
                return Err(RenderError::TemplateInputUnavailable {
                    names: unread
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                    reason: unread[0].1,
                });
            };
            kept_unreadable.extend(held.keys().cloned());
            Ok(Some((t.merge_policy, held)))
        }
        _ => Ok(None),
    }
}

/// A certificate's expiry is its leaf's notAfter (the backing secret's own
/// `exp` may be unset): status and ExpiringSoon report that.
fn certificate_expiries(
    certificates: Vec<crate::shape::CertificateExpiry>,
    synced: &mut [SyncedSecret],
    expiring: &mut Vec<Expiry>,
    now: i64,
) {
    for c in certificates {
        for s in synced.iter_mut().filter(|s| s.name == c.name) {
            s.expires = time(c.not_after);
        }
        if c.not_after.saturating_sub(now) <= EXPIRY_WARNING_SECS
            && !expiring.iter().any(|e: &Expiry| e.name == c.name)
        {
            expiring.push(Expiry {
                name: c.name,
                expires: c.not_after,
            });
        }
    }
}

impl Rendered {
    /// The message of a binding whose Secret lacks disabled secrets it could
    /// not keep (reason `SecretDisabled`), if any.
    pub fn disabled_message(&self) -> Option<String> {
        (!self.disabled_unkept.is_empty()).then(|| {
            format!(
                "secret(s) {} are disabled in the vault and the Secret has no earlier value to keep; \
                 the other keys are written: enable them, or set onDisabled: Remove",
                self.disabled_unkept.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn plan(keys: &[(&str, bool)]) -> Plan {
        Plan {
            keys: keys
                .iter()
                .map(|(k, optional)| PlannedKey {
                    key: k.to_string(),
                    secret: format!("{k}-secret"),
                    version: None,
                    optional: *optional,
                    role: crate::plan::Role::Pick,
                })
                .collect(),
        }
    }

    fn value(v: &str, expires: Option<i64>) -> Fetched {
        Fetched::Value {
            value: SecretValue::new(v),
            version: format!("ver-{v}"),
            updated: Some(NOW - 10),
            expires,
        }
    }

    fn run(
        plan: &Plan,
        fetched: &[(&str, Fetched)],
        current: Option<&BTreeMap<String, Vec<u8>>>,
        on_disabled: OnDisabled,
        on_expired: OnExpired,
    ) -> Result<Rendered, RenderError> {
        let fetched: BTreeMap<String, Fetched> = fetched
            .iter()
            .map(|(k, f)| (k.to_string(), f.clone()))
            .collect();
        render(&RenderInput {
            plan,
            fetched: &fetched,
            current,
            previous: &[],
            on_disabled,
            on_expired,
            now: NOW,
            hash_key: &HashKey::new(b"test-key"),
            certificates: &crate::certificate::Conversions::none(),
            template: None,
        })
    }

    #[test]
    fn values_become_data_and_status_without_values() {
        let r = run(
            &plan(&[("a", false), ("b", false)]),
            &[("a", value("1", None)), ("b", value("2", None))],
            None,
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap();
        assert_eq!(r.data["a"].expose(), "1");
        assert_eq!(r.synced.len(), 2);
        assert_eq!(r.synced[0].version, "ver-1");
        assert!(r.hash.starts_with("hmac-sha256:") && r.hash.len() == 76);
        assert!(!format!("{:?}", r.synced).contains("\"1\""));
    }

    #[test]
    fn hash_changes_with_any_value_and_not_otherwise() {
        let p = plan(&[("a", false)]);
        let one = run(
            &p,
            &[("a", value("x", None))],
            None,
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap();
        let same = run(
            &p,
            &[("a", value("x", None))],
            None,
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap();
        let other = run(
            &p,
            &[("a", value("y", None))],
            None,
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap();
        assert_eq!(one.hash, same.hash);
        assert_ne!(one.hash, other.hash);
    }

    #[test]
    fn missing_required_fails_and_missing_optional_is_skipped() {
        let err = run(
            &plan(&[("a", false)]),
            &[("a", Fetched::Missing)],
            None,
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "SecretNotFound");
        let r = run(
            &plan(&[("a", true), ("b", false)]),
            &[("a", Fetched::Missing), ("b", value("2", None))],
            None,
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap();
        assert_eq!(r.data.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(r.skipped.len(), 1);
    }

    #[test]
    fn disabled_keep_last_keeps_the_current_value() {
        let current: BTreeMap<String, Vec<u8>> = [("a".to_string(), b"old".to_vec())].into();
        let r = run(
            &plan(&[("a", false)]),
            &[("a", Fetched::Disabled)],
            Some(&current),
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap();
        assert_eq!(r.data["a"].expose(), "old");
        assert_eq!(r.kept, ["a"]);
    }

    #[test]
    fn disabled_keep_last_with_nothing_to_keep_writes_the_rest_and_names_it() {
        let r = run(
            &plan(&[("a", false), ("b", false)]),
            &[("a", Fetched::Disabled), ("b", value("2", None))],
            None,
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap();
        assert_eq!(r.data.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(r.disabled_unkept, ["a-secret"]);
        assert!(
            r.disabled_message()
                .unwrap()
                .contains("secret(s) a-secret are disabled")
        );
    }

    #[test]
    fn unavailable_optional_keeps_the_current_value_and_is_never_dropped() {
        let current: BTreeMap<String, Vec<u8>> = [("a".to_string(), b"old".to_vec())].into();
        let refused = Fetched::Unavailable {
            reason: Reason::VaultForbidden,
            message: "identity lacks secrets/get".into(),
        };
        let r = run(
            &plan(&[("a", true)]),
            &[("a", refused.clone())],
            Some(&current),
            OnDisabled::Remove,
            OnExpired::Sync,
        )
        .unwrap();
        assert_eq!(r.data["a"].expose(), "old");
        assert_eq!(r.kept_unreadable, ["a"]);
        assert!(r.kept.is_empty(), "not disabled: kept because unreadable");
        // Without a current value there is nothing to keep: skipped, with why.
        let r = run(
            &plan(&[("a", true)]),
            &[("a", refused)],
            None,
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap();
        assert!(r.data.is_empty());
        assert!(r.skipped[0].1.contains("VaultForbidden"));
    }

    #[test]
    fn disabled_remove_drops_the_key_and_fail_fails() {
        let current: BTreeMap<String, Vec<u8>> = [("a".to_string(), b"old".to_vec())].into();
        let r = run(
            &plan(&[("a", false)]),
            &[("a", Fetched::Disabled)],
            Some(&current),
            OnDisabled::Remove,
            OnExpired::Sync,
        )
        .unwrap();
        assert!(r.data.is_empty());
        let err = run(
            &plan(&[("a", false)]),
            &[("a", Fetched::Disabled)],
            Some(&current),
            OnDisabled::Fail,
            OnExpired::Sync,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "SecretDisabled");
        assert!(err.to_string().contains("onDisabled: Fail"));
    }

    #[test]
    fn expired_secrets_follow_on_expired() {
        let p = plan(&[("a", false)]);
        let expired = [("a", value("1", Some(NOW - 1)))];
        let synced = run(&p, &expired, None, OnDisabled::KeepLast, OnExpired::Sync).unwrap();
        assert_eq!(synced.data.len(), 1);
        assert_eq!(synced.expiring.len(), 1);
        let skipped = run(&p, &expired, None, OnDisabled::KeepLast, OnExpired::Skip).unwrap();
        assert!(skipped.data.is_empty());
        let warned = run(&p, &expired, None, OnDisabled::KeepLast, OnExpired::Warn).unwrap();
        assert_eq!(warned.data.len(), 1);
    }

    #[test]
    fn expiring_within_seven_days_is_reported() {
        let p = plan(&[("a", false), ("b", false)]);
        let r = run(
            &p,
            &[
                ("a", value("1", Some(NOW + 86400))),
                ("b", value("2", Some(NOW + 30 * 86400))),
            ],
            None,
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap();
        assert_eq!(
            r.expiring,
            [Expiry {
                name: "a-secret".into(),
                expires: NOW + 86400
            }]
        );
        assert!(r.synced[1].expires.is_some());
    }

    #[test]
    fn absurd_expiry_dates_from_the_vault_never_panic() {
        for exp in [i64::MIN, i64::MAX, 0] {
            let r = run(
                &plan(&[("a", false)]),
                &[("a", value("x", Some(exp)))],
                None,
                OnDisabled::KeepLast,
                OnExpired::Sync,
            )
            .unwrap();
            assert_eq!(r.data["a"].expose(), "x", "exp {exp}");
        }
    }

    #[test]
    fn over_one_mebibyte_is_refused() {
        let big = "x".repeat(600 * 1024);
        let p = plan(&[("a", false), ("b", false)]);
        let err = run(
            &p,
            &[("a", value(&big, None)), ("b", value(&big, None))],
            None,
            OnDisabled::KeepLast,
            OnExpired::Sync,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "SecretTooLarge");
    }

    fn run_templated(
        fetched: &[(&str, Fetched)],
        current: Option<&BTreeMap<String, Vec<u8>>>,
        merge: bool,
    ) -> Result<Rendered, RenderError> {
        let plan = plan(&[("USER", false), ("PASSWORD", true)]);
        let template: crate::crd::SecretTemplate = serde_yaml::from_str(&format!(
            "mergePolicy: {}\ndata:\n  DATABASE_URL: 'pg://{{{{ USER }}}}:{{{{ PASSWORD | default(\"\") }}}}@db'\n",
            if merge { "Merge" } else { "Replace" }
        ))
        .unwrap();
        let fetched: BTreeMap<String, Fetched> = fetched
            .iter()
            .map(|(k, f)| (k.to_string(), f.clone()))
            .collect();
        render(&RenderInput {
            plan: &plan,
            fetched: &fetched,
            current,
            previous: &[],
            on_disabled: OnDisabled::KeepLast,
            on_expired: OnExpired::Sync,
            now: NOW,
            hash_key: &HashKey::new(b"test-key"),
            certificates: &crate::certificate::Conversions::none(),
            template: Some(&template),
        })
    }

    #[test]
    fn a_template_over_an_unreadable_value_keeps_the_templated_keys_it_had() {
        let refused = Fetched::Unavailable {
            reason: Reason::VaultForbidden,
            message: "403".into(),
        };
        let ok = run_templated(
            &[
                ("USER", value("app", None)),
                ("PASSWORD", value("pw", None)),
            ],
            None,
            false,
        )
        .unwrap();
        assert_eq!(ok.data["DATABASE_URL"].expose(), "pg://app:pw@db");
        let current: BTreeMap<String, Vec<u8>> =
            [("DATABASE_URL".to_string(), b"pg://app:pw@db".to_vec())].into();
        let kept = run_templated(
            &[("USER", value("app", None)), ("PASSWORD", refused.clone())],
            Some(&current),
            false,
        )
        .unwrap();
        assert_eq!(
            kept.data["DATABASE_URL"].expose(),
            "pg://app:pw@db",
            "not re-rendered without the password"
        );
        assert_eq!(kept.hash, ok.hash, "so nothing is written");
        assert!(kept.kept_unreadable.contains(&"DATABASE_URL".to_string()));
        let e = run_templated(
            &[("USER", value("app", None)), ("PASSWORD", refused.clone())],
            None,
            false,
        )
        .unwrap_err();
        assert_eq!(e.reason(), Reason::VaultForbidden);
        assert!(e.to_string().contains("PASSWORD-secret"), "{e}");
        // Merge: the plain keys follow their own rules, the templated key is kept.
        let merged = run_templated(
            &[("USER", value("app2", None)), ("PASSWORD", refused)],
            Some(&current),
            true,
        )
        .unwrap();
        assert_eq!(merged.data["DATABASE_URL"].expose(), "pg://app:pw@db");
        assert_eq!(merged.data["USER"].expose(), "app2");
    }

    /// Renders a `select`-like plan (`DB_USER` required, `DB_PASSWORD`
    /// optional) through `target.template` (`mergePolicy: Replace`).
    fn run_template(
        templates: &[(&str, &str)],
        fetched: &[(&str, Fetched)],
        current: Option<&BTreeMap<String, Vec<u8>>>,
        on_disabled: OnDisabled,
    ) -> Result<Rendered, RenderError> {
        let plan = plan(&[("DB_USER", false), ("DB_PASSWORD", true)]);
        let data: BTreeMap<&str, &str> = templates.iter().copied().collect();
        let template: crate::crd::SecretTemplate =
            serde_json::from_value(serde_json::json!({ "data": data })).unwrap();
        let fetched: BTreeMap<String, Fetched> = fetched
            .iter()
            .map(|(k, f)| (k.to_string(), f.clone()))
            .collect();
        render(&RenderInput {
            plan: &plan,
            fetched: &fetched,
            current,
            previous: &[],
            on_disabled,
            on_expired: OnExpired::Sync,
            now: NOW,
            hash_key: &HashKey::new(b"test-key"),
            certificates: &crate::certificate::Conversions::none(),
            template: Some(&template),
        })
    }

    const TOJSON: &[(&str, &str)] = &[("config.json", "{{ values | tojson }}")];
    const OLD_CONFIG: &str = r#"{"DB_PASSWORD":"pw","DB_USER":"app"}"#;

    fn old_config() -> BTreeMap<String, Vec<u8>> {
        [("config.json".to_string(), OLD_CONFIG.as_bytes().to_vec())].into()
    }

    fn refused() -> Fetched {
        Fetched::Unavailable {
            reason: Reason::VaultForbidden,
            message: "403".into(),
        }
    }

    #[test]
    fn a_template_over_all_values_keeps_its_keys_when_one_is_unreadable() {
        let current = old_config();
        let out = run_template(
            TOJSON,
            &[("DB_USER", value("app2", None)), ("DB_PASSWORD", refused())],
            Some(&current),
            OnDisabled::KeepLast,
        )
        .unwrap();
        assert_eq!(
            out.data["config.json"].expose(),
            OLD_CONFIG,
            "not re-rendered without DB_PASSWORD"
        );
        assert_eq!(out.kept_unreadable, ["config.json"]);
    }

    #[test]
    fn a_template_over_all_values_keeps_its_keys_when_one_is_disabled_under_keep_last() {
        let current = old_config();
        let out = run_template(
            TOJSON,
            &[
                ("DB_USER", value("app2", None)),
                ("DB_PASSWORD", Fetched::Disabled),
            ],
            Some(&current),
            OnDisabled::KeepLast,
        )
        .unwrap();
        assert_eq!(out.data["config.json"].expose(), OLD_CONFIG);
        assert!(out.kept_unreadable.contains(&"config.json".to_string()));
        // Remove means the user wants it gone: rendered without it.
        let removed = run_template(
            TOJSON,
            &[
                ("DB_USER", value("app2", None)),
                ("DB_PASSWORD", Fetched::Disabled),
            ],
            Some(&current),
            OnDisabled::Remove,
        )
        .unwrap();
        assert_eq!(
            removed.data["config.json"].expose(),
            r#"{"DB_USER": "app2"}"#
        );
    }

    #[test]
    fn a_loop_over_values_keeps_its_keys_when_one_is_unreadable() {
        let template = &[(
            "app.env",
            "{% for k, v in values | items %}{{ k }}={{ v }}\n{% endfor %}",
        )];
        let current: BTreeMap<String, Vec<u8>> = [(
            "app.env".to_string(),
            b"DB_PASSWORD=pw\nDB_USER=app\n".to_vec(),
        )]
        .into();
        let out = run_template(
            template,
            &[("DB_USER", value("app2", None)), ("DB_PASSWORD", refused())],
            Some(&current),
            OnDisabled::KeepLast,
        )
        .unwrap();
        assert_eq!(
            out.data["app.env"].expose(),
            "DB_PASSWORD=pw\nDB_USER=app\n"
        );
    }

    #[test]
    fn a_template_over_all_values_with_nothing_to_keep_writes_nothing() {
        for unread in [refused(), Fetched::Disabled] {
            let err = run_template(
                TOJSON,
                &[("DB_USER", value("app", None)), ("DB_PASSWORD", unread)],
                None,
                OnDisabled::KeepLast,
            )
            .unwrap_err();
            assert!(
                matches!(err, RenderError::TemplateInputUnavailable { .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains("DB_PASSWORD-secret"), "{err}");
        }
    }

    #[test]
    fn a_template_that_looks_the_unreadable_key_up_in_values_holds() {
        let current: BTreeMap<String, Vec<u8>> =
            [("url".to_string(), b"pg://app:pw".to_vec())].into();
        for lookup in [
            r#"values["DB_PASSWORD"]"#,
            "values['DB_PASSWORD']",
            "values.DB_PASSWORD",
        ] {
            let template = format!("pg://{{{{ DB_USER }}}}:{{{{ {lookup} | default(\"\") }}}}");
            let out = run_template(
                &[("url", &template)],
                &[("DB_USER", value("app2", None)), ("DB_PASSWORD", refused())],
                Some(&current),
                OnDisabled::KeepLast,
            )
            .unwrap();
            assert_eq!(out.data["url"].expose(), "pg://app:pw", "{lookup}");
        }
    }

    #[test]
    fn a_template_over_the_tls_key_of_an_unreadable_certificate_holds() {
        let mut plan = plan(&[(TLS_CRT, true)]);
        plan.keys[0].role = crate::plan::Role::Certificate(crate::crd::CertificateFormat::Tls);
        let template: crate::crd::SecretTemplate = serde_json::from_value(
            serde_json::json!({"data": {"key.pem": "{{ values[\"tls.key\"] }}"}}),
        )
        .unwrap();
        let fetched: BTreeMap<String, Fetched> = [(TLS_CRT.to_string(), refused())].into();
        let current: BTreeMap<String, Vec<u8>> = [(
            "key.pem".to_string(),
            b"-----BEGIN PRIVATE KEY-----".to_vec(),
        )]
        .into();
        let out = render(&RenderInput {
            plan: &plan,
            fetched: &fetched,
            current: Some(&current),
            previous: &[],
            on_disabled: OnDisabled::KeepLast,
            on_expired: OnExpired::Sync,
            now: NOW,
            hash_key: &HashKey::new(b"test-key"),
            certificates: &crate::certificate::Conversions::none(),
            template: Some(&template),
        })
        .unwrap();
        assert_eq!(
            out.data["key.pem"].expose(),
            "-----BEGIN PRIVATE KEY-----",
            "tls.key comes from the certificate that could not be read"
        );
    }

    #[test]
    fn a_key_only_spelled_inside_a_longer_name_does_not_hold() {
        // `A` is in the text (`DATA`, `values.A_B`) but never read.
        let plan = plan(&[("DATA", false), ("A_B", false), ("A", true)]);
        let template: crate::crd::SecretTemplate =
            serde_yaml::from_str("data:\n  out: '{{ DATA }}/{{ values.A_B }}'\n").unwrap();
        let fetched: BTreeMap<String, Fetched> = [
            ("DATA".to_string(), value("d2", None)),
            ("A_B".to_string(), value("ab", None)),
            ("A".to_string(), refused()),
        ]
        .into();
        let current: BTreeMap<String, Vec<u8>> = [("out".to_string(), b"d1/ab".to_vec())].into();
        let out = render(&RenderInput {
            plan: &plan,
            fetched: &fetched,
            current: Some(&current),
            previous: &[],
            on_disabled: OnDisabled::KeepLast,
            on_expired: OnExpired::Sync,
            now: NOW,
            hash_key: &HashKey::new(b"test-key"),
            certificates: &crate::certificate::Conversions::none(),
            template: Some(&template),
        })
        .unwrap();
        assert_eq!(out.data["out"].expose(), "d2/ab");
    }

    #[test]
    fn an_unreadable_pick_the_template_does_not_name_does_not_hold_it() {
        let plan = plan(&[("USER", false), ("OTHER", true)]);
        let template: crate::crd::SecretTemplate =
            serde_yaml::from_str("data:\n  greeting: 'hello {{ USER }}'\n").unwrap();
        let fetched: BTreeMap<String, Fetched> = [
            ("USER".to_string(), value("app2", None)),
            (
                "OTHER".to_string(),
                Fetched::Unavailable {
                    reason: Reason::VaultForbidden,
                    message: "403".into(),
                },
            ),
        ]
        .into();
        let current: BTreeMap<String, Vec<u8>> =
            [("greeting".to_string(), b"hello app".to_vec())].into();
        let out = render(&RenderInput {
            plan: &plan,
            fetched: &fetched,
            current: Some(&current),
            previous: &[],
            on_disabled: OnDisabled::KeepLast,
            on_expired: OnExpired::Sync,
            now: NOW,
            hash_key: &HashKey::new(b"test-key"),
            certificates: &crate::certificate::Conversions::none(),
            template: Some(&template),
        })
        .unwrap();
        assert_eq!(out.data["greeting"].expose(), "hello app2");
    }
}
