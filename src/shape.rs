//! The last step of rendering (pure): certificates' backing secrets become
//! `tls.crt`/`tls.key` or a PEM file, then `target.template` builds the
//! Secret's keys from the values. Errors name a certificate or a template
//! key, never a value.

use std::collections::BTreeMap;

use crate::certificate::Conversions;
use crate::crd::names::{TLS_CRT, TLS_KEY};
use crate::crd::{CertificateFormat, SecretTemplate, TemplateMergePolicy};
use crate::plan::Plan;
use crate::reason::Reason;
use crate::value::SecretValue;

/// Why the values could not be shaped into the Secret's data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// A certificate's backing secret could not be converted.
    #[error("certificate {name}: {detail}")]
    Certificate {
        /// The certificate's name in the vault.
        name: String,
        /// What is wrong and what to do (never key material).
        detail: String,
    },
    /// A certificate's output key is taken by another pick.
    #[error(
        "certificate {name} writes key {key}, which another pick also writes: set a different key on one of them"
    )]
    KeyTaken {
        /// The certificate.
        name: String,
        /// The key.
        key: String,
    },
    /// A template failed.
    #[error("{0}")]
    Template(#[from] crate::template::TemplateError),
}

impl ShapeError {
    /// The condition reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Certificate { .. } => Reason::CertificateInvalid,
            Self::KeyTaken { .. } => Reason::KeyCollision,
            Self::Template(_) => Reason::TemplateError,
        }
    }
}

/// A certificate's expiry, from the certificate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// The certificate's name in the vault.
    pub name: String,
    /// Its leaf's notAfter, unix seconds.
    pub not_after: i64,
}

/// Writes the certificates among `data` (planned by `plan`) from their
/// `certificates` conversions (made beforehand, off the async runtime:
/// shape never converts) and applies `template`. A certificate whose key
/// holds a kept value (`kept`: disabled or unreadable, KeepLast) is not
/// converted again: its last output stays, `tls.key` taken from `current`.
pub fn shape(
    mut data: BTreeMap<String, SecretValue>,
    plan: &Plan,
    certificates: &Conversions,
    kept: &[String],
    current: Option<&BTreeMap<String, Vec<u8>>>,
    template: Option<&SecretTemplate>,
) -> Result<(BTreeMap<String, SecretValue>, Vec<CertificateExpiry>), ShapeError> {
    let mut expiries = Vec::new();
    for planned in &plan.keys {
        let Some(format) = planned.certificate() else {
            continue;
        };
        let Some(raw) = data.get(&planned.key).cloned() else {
            continue;
        };
        if kept.contains(&planned.key) {
            if format == CertificateFormat::Tls
                && let Some(key) = current.and_then(|c| c.get(TLS_KEY))
            {
                data.insert(TLS_KEY.to_string(), SecretValue::from_bytes(key.clone()));
            }
            continue;
        }
        let converted = match certificates.get(&planned.key) {
            Some(Ok(converted)) => converted,
            Some(Err(e)) => {
                return Err(ShapeError::Certificate {
                    name: planned.secret.clone(),
                    detail: e.to_string(),
                });
            }
            // Converting here would run on the caller's (async) thread.
            None => {
                return Err(ShapeError::Certificate {
                    name: planned.secret.clone(),
                    detail:
                        "it was not converted before rendering (a kvsync bug: please report it)"
                            .into(),
                });
            }
        };
        expiries.push(CertificateExpiry {
            name: planned.secret.clone(),
            not_after: converted.not_after,
        });
        match format {
            CertificateFormat::Tls => {
                if data.contains_key(TLS_KEY) {
                    return Err(ShapeError::KeyTaken {
                        name: planned.secret.clone(),
                        key: TLS_KEY.to_string(),
                    });
                }
                data.insert(TLS_CRT.to_string(), converted.tls_crt.clone());
                data.insert(TLS_KEY.to_string(), converted.tls_key.clone());
            }
            CertificateFormat::Pem => {
                data.insert(planned.key.clone(), converted.pem_bundle());
            }
            CertificateFormat::Pfx => {
                // As-is: the PFX Key Vault holds (base64 text there), as the
                // file's bytes. Converting it above proved it one.
                use base64::Engine;
                let pfx = raw
                    .as_text()
                    .filter(|t| !t.trim_start().starts_with("-----BEGIN"))
                    .and_then(|t| {
                        base64::engine::general_purpose::STANDARD
                            .decode(t.split_whitespace().collect::<String>())
                            .ok()
                    })
                    .ok_or_else(|| ShapeError::Certificate {
                        name: planned.secret.clone(),
                        detail: "Key Vault keeps this certificate as PEM, so there is no PFX to write as-is: use format Pem or Tls, or make the certificate policy's contentType application/x-pkcs12".into(),
                    })?;
                data.insert(planned.key.clone(), SecretValue::from_bytes(pfx));
            }
        }
    }
    let Some(template) = template else {
        return Ok((data, expiries));
    };
    let rendered = crate::template::render(&template.data, &data)?;
    let data = match template.merge_policy {
        TemplateMergePolicy::Replace => rendered,
        TemplateMergePolicy::Merge => {
            data.extend(rendered);
            data
        }
    };
    Ok((data, expiries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlannedKey;
    use crate::render::Fetched;

    /// [`super::shape`] with the certificates among `data` converted first,
    /// as `render` is given them.
    fn shape(
        data: BTreeMap<String, SecretValue>,
        plan: &Plan,
        kept: &[String],
        current: Option<&BTreeMap<String, Vec<u8>>>,
        template: Option<&SecretTemplate>,
    ) -> Result<(BTreeMap<String, SecretValue>, Vec<CertificateExpiry>), ShapeError> {
        let fetched: BTreeMap<String, Fetched> = data
            .iter()
            .map(|(k, v)| {
                let value = Fetched::Value {
                    value: v.clone(),
                    version: "v1".into(),
                    updated: None,
                    expires: None,
                };
                (k.clone(), value)
            })
            .collect();
        let certificates = Conversions::convert_now(plan, &fetched);
        super::shape(data, plan, &certificates, kept, current, template)
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretValue::new(*v)))
            .collect()
    }

    fn template(yaml: &str) -> SecretTemplate {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn plain_plan(keys: &[&str]) -> Plan {
        Plan {
            keys: keys
                .iter()
                .map(|k| PlannedKey {
                    key: k.to_string(),
                    secret: k.to_lowercase().replace('_', "-"),
                    version: None,
                    optional: false,
                    role: crate::plan::Role::Pick,
                })
                .collect(),
        }
    }

    #[test]
    fn replace_keeps_only_the_templated_keys_merge_keeps_the_picks_too() {
        let data = values(&[("REG_USER", "robot"), ("REG_PASSWORD", "hunter2")]);
        let plan = plain_plan(&["REG_USER", "REG_PASSWORD"]);
        let t = template(
            "type: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: '{{ dockerconfigjson(\"registry.example.com\", REG_USER, REG_PASSWORD) }}'\n",
        );
        let (out, _) = shape(data.clone(), &plan, &[], None, Some(&t)).unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), [".dockerconfigjson"]);
        let json: serde_json::Value =
            serde_json::from_str(out[".dockerconfigjson"].expose()).unwrap();
        assert_eq!(json["auths"]["registry.example.com"]["password"], "hunter2");

        let mut merge = t.clone();
        merge.merge_policy = TemplateMergePolicy::Merge;
        let (out, _) = shape(data, &plan, &[], None, Some(&merge)).unwrap();
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            [".dockerconfigjson", "REG_PASSWORD", "REG_USER"]
        );
    }

    #[test]
    fn without_template_or_certificates_the_data_is_untouched() {
        let data = values(&[("A", "1")]);
        let (out, expiries) = shape(data.clone(), &plain_plan(&["A"]), &[], None, None).unwrap();
        assert_eq!(out, data);
        assert!(expiries.is_empty());
    }

    #[test]
    fn a_template_error_names_the_key_and_is_a_template_error_without_the_value() {
        let data = values(&[("DB_PASSWORD", "hunter2-SECRET")]);
        let t = template(
            "data:\n  uri: \"postgres://app:{{ DB_PASSWORD | urlencode }}@db/{{ DB_NAME }}\"\n",
        );
        let e = shape(data, &plain_plan(&["DB_PASSWORD"]), &[], None, Some(&t)).unwrap_err();
        assert_eq!(e.reason(), Reason::TemplateError);
        let shown = format!("{e} {e:?}");
        assert!(shown.contains("uri"), "{shown}");
        assert!(shown.contains("DB_NAME"), "{shown}");
        assert!(!shown.contains("hunter2-SECRET"), "{shown}");
    }

    fn cert_plan(format: CertificateFormat, key: &str) -> Plan {
        Plan {
            keys: vec![PlannedKey {
                key: key.to_string(),
                secret: "web-tls".to_string(),
                version: None,
                optional: false,
                role: crate::plan::Role::Certificate(format),
            }],
        }
    }

    fn chain() -> crate::devvault::testcerts::TestChain {
        crate::devvault::testcerts::make_chain("Test Root", "Test Intermediate", "web.example.test")
            .unwrap()
    }

    #[test]
    fn a_pfx_becomes_tls_crt_leaf_first_and_a_pkcs8_tls_key() {
        let c = chain();
        let data = values(&[(TLS_CRT, &c.pfx_base64().unwrap())]);
        let (out, expiries) = shape(
            data,
            &cert_plan(CertificateFormat::Tls, TLS_CRT),
            &[],
            None,
            None,
        )
        .unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), [TLS_CRT, TLS_KEY]);
        assert_eq!(out[TLS_CRT].expose(), c.chain_pem());
        assert!(
            out[TLS_KEY]
                .expose()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        assert_eq!(expiries.len(), 1);
        assert_eq!(expiries[0].name, "web-tls");
    }

    #[test]
    fn a_pem_certificate_can_be_kept_as_one_pem_file_and_templated() {
        let c = chain();
        let data = values(&[("web.pem", &c.keyvault_pem())]);
        let t = template(
            "mergePolicy: Merge\ndata:\n  fingerprint-source: '{{ values[\"web.pem\"] | length > 0 }}'\n",
        );
        let (out, _) = shape(
            data,
            &cert_plan(CertificateFormat::Pem, "web.pem"),
            &[],
            None,
            Some(&t),
        )
        .unwrap();
        let pem = out["web.pem"].expose();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "key first");
        assert!(pem.ends_with(&c.chain_pem()), "then leaf and chain");
        assert_eq!(out["fingerprint-source"].expose(), "True");
    }

    #[test]
    fn a_plain_secret_named_as_a_certificate_is_certificate_invalid_without_its_value() {
        let data = values(&[(TLS_CRT, "hunter2-NOT-A-CERT")]);
        let e = shape(
            data,
            &cert_plan(CertificateFormat::Tls, TLS_CRT),
            &[],
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(e.reason(), Reason::CertificateInvalid);
        let shown = format!("{e} {e:?}");
        assert!(shown.contains("web-tls"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_kept_certificate_keeps_its_last_tls_key() {
        let current: BTreeMap<String, Vec<u8>> = [
            (TLS_CRT.to_string(), b"old-crt".to_vec()),
            (TLS_KEY.to_string(), b"old-key".to_vec()),
        ]
        .into();
        let data = values(&[(TLS_CRT, "old-crt")]);
        let (out, _) = shape(
            data,
            &cert_plan(CertificateFormat::Tls, TLS_CRT),
            &[TLS_CRT.to_string()],
            Some(&current),
            None,
        )
        .unwrap();
        assert_eq!(out[TLS_KEY].expose(), "old-key");
    }

    #[test]
    fn a_tls_key_picked_beside_a_tls_certificate_is_a_collision() {
        let c = chain();
        let mut plan = cert_plan(CertificateFormat::Tls, TLS_CRT);
        plan.keys.push(PlannedKey {
            key: TLS_KEY.to_string(),
            secret: "other".to_string(),
            version: None,
            optional: false,
            role: crate::plan::Role::Pick,
        });
        let data = values(&[(TLS_CRT, &c.pfx_base64().unwrap()), (TLS_KEY, "x")]);
        let e = shape(data, &plan, &[], None, None).unwrap_err();
        assert_eq!(e.reason(), Reason::KeyCollision);
    }

    #[test]
    fn a_pfx_is_written_as_is_as_bytes_and_a_pem_one_cannot_be() {
        use base64::Engine;
        let c = chain();
        let b64 = c.pfx_base64().unwrap();
        let data = values(&[("web.pfx", &b64)]);
        let (out, expiries) = shape(
            data,
            &cert_plan(CertificateFormat::Pfx, "web.pfx"),
            &[],
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            out["web.pfx"].as_bytes(),
            base64::engine::general_purpose::STANDARD
                .decode(&b64)
                .unwrap(),
            "the file's bytes, not its base64"
        );
        assert_eq!(out["web.pfx"].as_text(), None, "binary");
        assert_eq!(expiries.len(), 1, "its expiry still comes from the leaf");
        // A template never sees the binary value (it reads the others).
        let t = template(
            "mergePolicy: Merge\ndata:\n  note: 'no pfx: {{ values[\"web.pfx\"] is defined }}'\n",
        );
        let data = values(&[("web.pfx", &b64)]);
        let (out, _) = shape(
            data,
            &cert_plan(CertificateFormat::Pfx, "web.pfx"),
            &[],
            None,
            Some(&t),
        )
        .unwrap();
        assert_eq!(out["note"].expose(), "no pfx: False");

        let pem = values(&[("web.pfx", &c.keyvault_pem())]);
        let e = shape(
            pem,
            &cert_plan(CertificateFormat::Pfx, "web.pfx"),
            &[],
            None,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("use format Pem or Tls"), "{e}");
    }

    #[test]
    fn a_certificate_not_converted_beforehand_is_refused_not_converted_here() {
        let c = chain();
        let data = values(&[(TLS_CRT, &c.pfx_base64().unwrap())]);
        let plan = cert_plan(CertificateFormat::Tls, TLS_CRT);
        let e = super::shape(data, &plan, &Conversions::none(), &[], None, None).unwrap_err();
        assert_eq!(e.reason(), Reason::CertificateInvalid);
        assert!(
            e.to_string().contains("not converted before rendering"),
            "{e}"
        );
    }
}
