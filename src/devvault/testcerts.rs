//! Test certificates: a root CA, an intermediate CA and a leaf, as the
//! values Key Vault keeps in a certificate's backing secret, so the dev
//! vault can serve certificates and tests can check what kvsync makes of
//! them.
//!
//! A seed file carries them as secrets with the certificate's contentType:
//!
//! ```yaml
//! secrets:
//!   - name: web-tls                       # the certificate's name
//!     contentType: application/x-pem-file
//!     value: |                            # TestChain::keyvault_pem()
//!       -----BEGIN PRIVATE KEY-----
//!       …
//!   - name: api-tls
//!     contentType: application/x-pkcs12
//!     value: MIIK…                         # TestChain::pfx_base64()
//! ```
//!
//! A renewal is another entry of the same name (a new version).
//!
//! The PFX differs from Key Vault's own in one way that matters to a
//! reader: it uses the *empty* password and AES (what OpenSSL 3 and
//! `p12-keystore` write), while Key Vault writes the *absent* password and
//! 3DES; `tests/fixtures/certs/keyvault-rsa-selfsigned.pfx.b64` is a PFX
//! Key Vault returned, for tests of that form.
//!
//! Generated keys are ECDSA P-256 (`ring` cannot generate RSA keys); pass
//! an RSA PKCS#8 key in [`ChainSpec::leaf_key_pem`] for an RSA leaf.

use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// What to make.
#[derive(Debug, Clone, Copy)]
pub struct ChainSpec<'a> {
    /// Common name of the self-signed root CA.
    pub root_name: &'a str,
    /// Common name of the intermediate CA (issued by the root).
    pub intermediate_name: &'a str,
    /// Common name and DNS name (subjectAltName) of the leaf (issued by
    /// the intermediate).
    pub leaf_name: &'a str,
    /// The leaf's notAfter, unix seconds; `None`: 2049-12-31. Set it near
    /// to test ExpiringSoon, in the past for an expired certificate.
    pub leaf_not_after: Option<i64>,
    /// The leaf's key as PKCS#8 PEM (e.g. an RSA key); `None`: a fresh
    /// ECDSA P-256 key.
    pub leaf_key_pem: Option<&'a str>,
}

impl<'a> ChainSpec<'a> {
    /// A chain with these names, default validity and a fresh P-256 leaf key.
    pub fn new(root_name: &'a str, intermediate_name: &'a str, leaf_name: &'a str) -> Self {
        Self {
            root_name,
            intermediate_name,
            leaf_name,
            leaf_not_after: None,
            leaf_key_pem: None,
        }
    }
}

/// A root, an intermediate and a leaf with its key.
#[derive(Clone)]
pub struct TestChain {
    /// The self-signed root CA certificate, PEM.
    pub root_pem: String,
    /// The intermediate CA certificate, PEM.
    pub intermediate_pem: String,
    /// The leaf certificate, PEM.
    pub leaf_pem: String,
    /// The leaf's private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub leaf_key_pem: String,
    leaf_key_der: Vec<u8>,
    ders: [Vec<u8>; 3],
}

/// Deliberately not showing the key.
impl std::fmt::Debug for TestChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestChain").finish_non_exhaustive()
    }
}

/// A chain with these names (see [`ChainSpec::new`]).
pub fn make_chain(
    root_name: &str,
    intermediate_name: &str,
    leaf_name: &str,
) -> Result<TestChain, String> {
    make_chain_with(&ChainSpec::new(root_name, intermediate_name, leaf_name))
}

/// A chain as `spec` says.
pub fn make_chain_with(spec: &ChainSpec<'_>) -> Result<TestChain, String> {
    let root_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail("root key"))?;
    let root_params = ca_params(spec.root_name, BasicConstraints::Unconstrained);
    let root = root_params
        .self_signed(&root_key)
        .map_err(fail("root certificate"))?;
    let root_issuer = Issuer::new(root_params, root_key);

    let intermediate_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail("intermediate key"))?;
    let intermediate_params = ca_params(spec.intermediate_name, BasicConstraints::Constrained(0));
    let intermediate = intermediate_params
        .signed_by(&intermediate_key, &root_issuer)
        .map_err(fail("intermediate certificate"))?;
    let intermediate_issuer = Issuer::new(intermediate_params, intermediate_key);

    let leaf_key = match spec.leaf_key_pem {
        Some(pem) => KeyPair::from_pem(pem).map_err(fail("leaf key"))?,
        None => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail("leaf key"))?,
    };
    let mut leaf_params =
        CertificateParams::new(vec![spec.leaf_name.to_string()]).map_err(fail("leaf name"))?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, spec.leaf_name);
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    leaf_params.not_after = match spec.leaf_not_after {
        Some(secs) => {
            let secs = u64::try_from(secs).map_err(|_| "leaf notAfter before 1970".to_string())?;
            rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs)
        }
        None => rcgen::date_time_ymd(2049, 12, 31),
    };
    let leaf = leaf_params
        .signed_by(&leaf_key, &intermediate_issuer)
        .map_err(fail("leaf certificate"))?;

    Ok(TestChain {
        root_pem: root.pem(),
        intermediate_pem: intermediate.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
        leaf_key_der: leaf_key.serialize_der(),
        ders: [
            leaf.der().to_vec(),
            intermediate.der().to_vec(),
            root.der().to_vec(),
        ],
    })
}

fn fail(what: &'static str) -> impl Fn(rcgen::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn ca_params(name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    params
}

impl TestChain {
    /// The value of a PEM certificate's backing secret (contentType
    /// `application/x-pem-file`), laid out as Key Vault does: the private
    /// key, then the leaf, then the chain up to the root.
    pub fn keyvault_pem(&self) -> String {
        format!("{}{}", self.leaf_key_pem, self.chain_pem())
    }

    /// The leaf, the intermediate and the root, PEM, in that order: what
    /// `tls.crt` should hold.
    pub fn chain_pem(&self) -> String {
        format!(
            "{}{}{}",
            self.leaf_pem, self.intermediate_pem, self.root_pem
        )
    }

    /// The value of a PFX certificate's backing secret (contentType
    /// `application/x-pkcs12`): the base64 of a PKCS#12 with the leaf's key
    /// and the three certificates, leaf first, under the empty password
    /// (PBES2/AES-256, HMAC-SHA-256 MAC).
    pub fn pfx_base64(&self) -> Result<String, String> {
        use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
        let fail = |what: &'static str| move |e: p12_keystore::error::Error| format!("{what}: {e}");
        let key = PrivateKey::from_der(&self.leaf_key_der).map_err(fail("leaf key"))?;
        let certs = self
            .ders
            .iter()
            .map(|der| Certificate::from_der(der).map_err(fail("certificate")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut store = KeyStore::new();
        store.add_entry(
            "leaf",
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new("kvsync-test-leaf", key, certs)),
        );
        let der = store.writer("").write().map_err(fail("PKCS#12"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(der))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_is_leaf_intermediate_root_with_the_names_given() {
        let chain = make_chain("Test Root", "Test Issuing CA", "web.example.test").unwrap();
        let subjects: Vec<String> = chain
            .ders
            .iter()
            .map(|der| {
                use x509_cert::der::Decode;
                let cert = x509_cert::Certificate::from_der(der).unwrap();
                format!(
                    "{} <- {}",
                    cert.tbs_certificate().subject(),
                    cert.tbs_certificate().issuer()
                )
            })
            .collect();
        assert_eq!(
            subjects,
            [
                "CN=web.example.test <- CN=Test Issuing CA",
                "CN=Test Issuing CA <- CN=Test Root",
                "CN=Test Root <- CN=Test Root",
            ]
        );
        assert!(
            chain
                .keyvault_pem()
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert!(chain.keyvault_pem().ends_with(&chain.chain_pem()));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let chain = make_chain("R", "I", "leaf.test").unwrap();
        assert!(!format!("{chain:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn pfx_reads_back_with_the_empty_password() {
        let chain = make_chain("R", "I", "leaf.test").unwrap();
        let der = base64::engine::general_purpose::STANDARD
            .decode(chain.pfx_base64().unwrap())
            .unwrap();
        let archive = p12_keystore::Pkcs12Archive::from_pkcs12(&der, "").unwrap();
        assert_eq!(archive.keys.len(), 1);
        assert_eq!(archive.keys[0].key.as_der(), &chain.leaf_key_der[..]);
        assert_eq!(archive.certs.len(), 3);
    }
}
