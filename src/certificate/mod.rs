//! Key Vault certificates as Kubernetes TLS material.
//!
//! A Key Vault certificate keeps its certificate chain and private key in a
//! secret of the same name (its *backing secret*), with contentType
//! `application/x-pkcs12` (the value is the base64 of a PFX without a
//! password) or `application/x-pem-file` (PEM text: the key and the
//! certificates). [`convert`] turns that value into what a
//! `kubernetes.io/tls` Secret holds: `tls.crt` with the leaf first and then
//! each issuer in turn, and `tls.key` as PKCS#8 PEM, whatever order and key
//! format the secret used.
//!
//! [`convert`] is pure: no I/O, no clock. Errors say what to change and
//! never carry key material or any part of the value.
//!
//! A PFX may cost up to a second of CPU (its key derivations are budgeted,
//! see `pfx`), so the reconcile and `kvsync check` never convert on the
//! async runtime: [`prepare`] converts a plan's certificates on tokio's
//! blocking pool, [`POOL_PERMITS`] at a time, once per (vault, name,
//! version) of the backing secret, and keeps the results (failures too)
//! in a cache bounded by [`CACHE_ENTRIES`] and [`CACHE_BYTES`], least
//! recently used evicted first; rendering uses those [`Conversions`].
//! Details in `prepare`.
//!
//! ```text
//! value ──┬─ PFX ─ pfx (MAC, password, bags) ─┐
//!         └─ PEM ─ pem (blocks) ──────────────┤─ key (→ PKCS#8) ─ leaf = the cert the key
//!                                             │                   belongs to ─ chain order
//!                                             └─ certificates ──────────────────────┘
//! ```

mod asn1;
mod chain;
mod kdf;
mod key;
mod pem;
mod pfx;
mod prepare;
#[cfg(test)]
mod tests;

use std::fmt;

use base64::Engine as _;

use crate::value::SecretValue;
use chain::Cert;
use key::{KeyFault, PrivateKey};
pub use prepare::{CACHE_BYTES, CACHE_ENTRIES, Conversion, Conversions, POOL_PERMITS, prepare};

/// The contentType Key Vault gives a certificate's backing secret in PFX form.
pub const CONTENT_TYPE_PKCS12: &str = "application/x-pkcs12";
/// The contentType Key Vault gives a certificate's backing secret in PEM form.
pub const CONTENT_TYPE_PEM: &str = "application/x-pem-file";

/// The Secret layout wanted for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `kubernetes.io/tls`: `tls.crt` and `tls.key`.
    Tls,
    /// One key holding the PEM bundle (key, leaf, chain).
    Pem,
}

/// A certificate's backing secret, converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// `tls.crt`: PEM certificates, the leaf first, then its issuer, that
    /// one's issuer, and so on; certificates on no path from the leaf
    /// follow in the order the secret held them. A self-signed root is
    /// included only if the secret held it.
    pub tls_crt: SecretValue,
    /// `tls.key`: the leaf's private key as PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub tls_key: SecretValue,
    /// The leaf's notAfter, unix seconds (for status and ExpiringSoon).
    pub not_after: i64,
    /// The leaf's subject (RFC 4514 string), for status and messages.
    pub subject: String,
}

impl Converted {
    /// The PEM bundle: the key, then the leaf, then the chain.
    pub fn pem_bundle(&self) -> SecretValue {
        SecretValue::new(format!(
            "{}{}",
            self.tls_key.expose(),
            self.tls_crt.expose()
        ))
    }
}

/// Which form the backing secret was in, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-pkcs12`.
    Pfx,
    /// `application/x-pem-file`.
    Pem,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Pfx => "PFX (application/x-pkcs12)",
            Format::Pem => "PEM (application/x-pem-file)",
        })
    }
}

/// Why a backing secret could not be converted. Every message says what to
/// do; none carries key material or any part of the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The secret's contentType is neither of a certificate's.
    #[error(
        "the secret is not a certificate's backing secret: its contentType is {content_type:?}, \
         and kvsync reads certificates from secrets with contentType application/x-pkcs12 or \
         application/x-pem-file, which Key Vault sets on a certificate's secret; name a Key Vault \
         certificate, not a plain secret"
    )]
    NotACertificate {
        /// The contentType found (metadata, not the value; shortened).
        content_type: String,
    },
    /// No contentType, and the value looks like neither form.
    #[error(
        "the secret has no contentType and its value is neither PEM text nor the base64 of a PFX; \
         a certificate's backing secret has contentType application/x-pkcs12 or \
         application/x-pem-file: name a Key Vault certificate, or set the secret's contentType"
    )]
    Unrecognized,
    /// There is no private key: Key Vault leaves it out of a
    /// non-exportable certificate's secret.
    #[error(
        "the certificate is not exportable: Key Vault returns the private key only for exportable \
         certificates; set the certificate policy's exportable: true (keyProperties.exportable) \
         and create a new version"
    )]
    NotExportable,
    /// A private key but no certificate.
    #[error(
        "the {format} holds a private key but no certificate; a certificate's backing secret \
         holds both: check that the secret is a Key Vault certificate's, and that a PEM value \
         has CERTIFICATE blocks"
    )]
    NoCertificate {
        /// PFX or PEM.
        format: Format,
    },
    /// Two or more different private keys.
    #[error(
        "the {format} holds more than one private key; kvsync needs exactly one, the leaf \
         certificate's: remove the others"
    )]
    SeveralKeys {
        /// PFX or PEM.
        format: Format,
    },
    /// The private key belongs to none of the certificates.
    #[error(
        "the private key in the {format} belongs to none of its certificates (no certificate's \
         public key matches it); store the key together with its own certificate"
    )]
    KeyMismatch {
        /// PFX or PEM.
        format: Format,
    },
    /// The PFX has a password other than the empty one.
    #[error(
        "the PFX is protected by a password, and kvsync reads only the password-less PFX Key \
         Vault keeps for a certificate; import the PFX into Key Vault as a certificate (az \
         keyvault certificate import --password …), which stores it without one"
    )]
    PfxPassword,
    /// A PFX feature kvsync does not support.
    #[error(
        "the PFX uses {what}, which kvsync does not support; re-import it into Key Vault as a certificate, or use PEM"
    )]
    PfxUnsupported {
        /// What it uses.
        what: &'static str,
    },
    /// An encrypted private key in PEM.
    #[error(
        "the PEM holds an encrypted private key ({label}), which kvsync cannot decrypt; store the \
         key unencrypted (Key Vault's own PEM form is unencrypted)"
    )]
    EncryptedKey {
        /// `ENCRYPTED PRIVATE KEY`, or a legacy `Proc-Type: 4,ENCRYPTED` key.
        label: &'static str,
    },
    /// A private key kvsync cannot turn into PKCS#8.
    #[error(
        "the {format} holds a private key kvsync cannot use: {what}; use an RSA or EC key in PKCS#8, PKCS#1 or SEC1 form"
    )]
    UnsupportedKey {
        /// PFX or PEM.
        format: Format,
        /// What kind of key (a PEM label or a description).
        what: String,
    },
    /// application/x-pkcs12 but not base64.
    #[error(
        "the value is not valid base64; with contentType application/x-pkcs12 the value is the \
         base64 of a PFX, as Key Vault stores a certificate"
    )]
    Base64,
    /// Structurally broken.
    #[error(
        "the {format} is malformed: {what}; store the certificate again (import it into Key Vault)"
    )]
    Malformed {
        /// PFX or PEM.
        format: Format,
        /// Which part broke (never its bytes).
        what: String,
    },
}

#[cfg(test)]
thread_local! {
    /// Conversions this thread ran (for tests that no conversion runs on
    /// the thread that renders).
    static CONVERSIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Converts a certificate's backing secret (`value`, with the secret's
/// `content_type`) into TLS material. Without a contentType the value is
/// recognised by shape: PEM text, or the base64 of a PFX. Each call
/// converts again, on the calling thread: the reconcile converts through
/// [`prepare`] instead (off the async runtime, once per version).
pub fn convert(value: &SecretValue, content_type: Option<&str>) -> Result<Converted, CertError> {
    #[cfg(test)]
    CONVERSIONS.with(|n| n.set(n.get() + 1));
    let text = value.expose();
    let (format, keys, certs) = match classify(text, content_type)? {
        Format::Pfx => {
            let der = decode_base64(text)?;
            let contents = pfx::read(&der).map_err(pfx_error)?;
            let keys = contents
                .keys
                .iter()
                .map(|k| PrivateKey::from_pkcs8(k).map_err(|f| key_error(Format::Pfx, f)))
                .collect::<Result<Vec<_>, _>>()?;
            (Format::Pfx, keys, contents.certs)
        }
        Format::Pem => {
            let (keys, certs) = read_pem(text)?;
            (Format::Pem, keys, certs)
        }
    };
    assemble(format, keys, certs)
}

fn classify(text: &str, content_type: Option<&str>) -> Result<Format, CertError> {
    let media_type = content_type
        .map(|ct| ct.split(';').next().unwrap_or_default().trim())
        .unwrap_or_default();
    if media_type.eq_ignore_ascii_case(CONTENT_TYPE_PKCS12) {
        return Ok(Format::Pfx);
    }
    if media_type.eq_ignore_ascii_case(CONTENT_TYPE_PEM) {
        return Ok(Format::Pem);
    }
    if !media_type.is_empty() {
        return Err(CertError::NotACertificate {
            content_type: content_type.unwrap_or_default().chars().take(80).collect(),
        });
    }
    if text.trim_start().starts_with("-----BEGIN ") {
        return Ok(Format::Pem);
    }
    // A PFX is a DER SEQUENCE: base64 "MII…" (long form length).
    match decode_base64(text) {
        Ok(der) if der.first() == Some(&0x30) => Ok(Format::Pfx),
        _ => Err(CertError::Unrecognized),
    }
}

fn decode_base64(text: &str) -> Result<Vec<u8>, CertError> {
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    // The decoder's error names the offending byte: dropped on purpose.
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| CertError::Base64)
}

fn read_pem(text: &str) -> Result<(Vec<PrivateKey>, Vec<Vec<u8>>), CertError> {
    let blocks = pem::blocks(text).map_err(|fault| {
        let what = match fault {
            pem::PemFault::Unterminated { label } => {
                format!("a BEGIN {label} line has no matching END {label} line")
            }
            pem::PemFault::BadBase64 { label } => {
                format!("the base64 inside a {label} block is invalid")
            }
        };
        CertError::Malformed {
            format: Format::Pem,
            what,
        }
    })?;
    if blocks.is_empty() {
        return Err(CertError::Malformed {
            format: Format::Pem,
            what: "it has no -----BEGIN …----- block".into(),
        });
    }
    let mut keys = Vec::new();
    let mut certs = Vec::new();
    for block in blocks {
        let pem_key = |f| key_error(Format::Pem, f);
        match block.label.as_str() {
            "CERTIFICATE" | "X509 CERTIFICATE" => certs.push(block.der),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(CertError::EncryptedKey {
                    label: "ENCRYPTED PRIVATE KEY",
                });
            }
            "RSA PRIVATE KEY" | "EC PRIVATE KEY" if block.encrypted => {
                return Err(CertError::EncryptedKey {
                    label: "a legacy key with Proc-Type: 4,ENCRYPTED",
                });
            }
            "PRIVATE KEY" => keys.push(PrivateKey::from_pkcs8(&block.der).map_err(pem_key)?),
            "RSA PRIVATE KEY" => keys.push(PrivateKey::from_pkcs1(&block.der).map_err(pem_key)?),
            "EC PRIVATE KEY" => keys.push(PrivateKey::from_sec1(&block.der).map_err(pem_key)?),
            other if other.ends_with("PRIVATE KEY") => {
                return Err(CertError::UnsupportedKey {
                    format: Format::Pem,
                    what: format!("a {} block", pem::printable_label(other)),
                });
            }
            // EC PARAMETERS, PUBLIC KEY, X509 CRL, …: not TLS Secret material.
            _ => {}
        }
    }
    Ok((keys, certs))
}

/// The common tail: one key, its certificate as the leaf, the chain in order.
fn assemble(
    format: Format,
    keys: Vec<PrivateKey>,
    certs: Vec<Vec<u8>>,
) -> Result<Converted, CertError> {
    // The same key twice (a bundle that repeats it) is still one key.
    let mut keys = keys
        .into_iter()
        .fold(Vec::new(), |mut unique: Vec<PrivateKey>, k| {
            if !unique.contains(&k) {
                unique.push(k);
            }
            unique
        });
    if certs.is_empty() {
        if keys.is_empty() {
            return Err(CertError::Malformed {
                format,
                what: "it holds neither a certificate nor a private key".into(),
            });
        }
        return Err(CertError::NoCertificate { format });
    }
    let key = match keys.len() {
        0 => return Err(CertError::NotExportable),
        1 => keys.remove(0),
        _ => return Err(CertError::SeveralKeys { format }),
    };
    let certs = chain::parse_all(certs).map_err(|index| CertError::Malformed {
        format,
        what: format!(
            "certificate #{} is not a valid X.509 certificate",
            index + 1
        ),
    })?;

    let verdicts: Vec<Option<bool>> = certs
        .iter()
        .map(|c| key.matches(c.parsed.tbs_certificate().subject_public_key_info()))
        .collect();
    let leaf = match verdicts.iter().position(|v| *v == Some(true)) {
        Some(i) => i,
        None => {
            // The key could not be compared with some certificates: take
            // the one among them that issued no other.
            let undecided: Vec<usize> = (0..certs.len())
                .filter(|&i| verdicts[i].is_none())
                .collect();
            chain::leaf_by_position(&certs, &undecided).ok_or(CertError::KeyMismatch { format })?
        }
    };
    let leaf_tbs = certs[leaf].parsed.tbs_certificate();
    let key = key.completed_for(leaf_tbs.subject_public_key_info());
    let not_after = i64::try_from(leaf_tbs.validity().not_after.to_unix_duration().as_secs())
        .unwrap_or(i64::MAX);
    let subject = leaf_tbs.subject().to_string();

    let ordered = chain::ordered(certs, leaf);
    let tls_crt: String = ordered
        .iter()
        .map(|c: &Cert| pem::encode("CERTIFICATE", &c.der))
        .collect();
    let tls_key = pem::encode("PRIVATE KEY", &key.to_pkcs8_der());
    Ok(Converted {
        tls_crt: SecretValue::new(tls_crt),
        tls_key: SecretValue::new(tls_key),
        not_after,
        subject,
    })
}

fn key_error(format: Format, fault: KeyFault) -> CertError {
    match fault {
        KeyFault::Malformed(what) => CertError::Malformed {
            format,
            what: what.into(),
        },
        KeyFault::Unsupported(what) => CertError::UnsupportedKey {
            format,
            what: what.into(),
        },
    }
}

fn pfx_error(fault: pfx::PfxFault) -> CertError {
    match fault {
        pfx::PfxFault::Password => CertError::PfxPassword,
        pfx::PfxFault::Unsupported(what) => CertError::PfxUnsupported { what },
        pfx::PfxFault::Malformed(what) => CertError::Malformed {
            format: Format::Pfx,
            what: what.into(),
        },
    }
}
