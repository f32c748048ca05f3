//! The dev vault's certificates: a development CA with a fixed, published key
//! (so `ca.pem` from any dev-vault process trusts every other) and a fresh
//! server certificate for 127.0.0.1, ::1 and localhost signed by it.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The development CA's private key. Public on purpose: it only ever signs
/// certificates for loopback addresses of the dev vault.
const DEV_CA_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgLpA57cQ8qY4GqRlB
rYdJ8nf5RjJf2Iq8grtHimr6gQyhRANCAAQBrEESWbpempatBM2udKKjpgKTgDY/
K1G3ca24FWwxxDKbF1JGFeUpg8DInN18ABFrC29QfCNEJBM1q/jeGPKg
-----END PRIVATE KEY-----
";

/// Certificates and the rustls server configuration built from them.
pub struct DevCertificates {
    /// PEM of the development CA (what `--ca-out` writes).
    pub ca_pem: String,
    /// Server configuration for the listener.
    pub server_config: Arc<rustls::ServerConfig>,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "kvsync dev-vault development CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "kvsync (development only)");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    params
}

/// Makes the CA and a server certificate.
pub fn make() -> Result<DevCertificates, String> {
    let ca_key = KeyPair::from_pem(DEV_CA_KEY_PEM).map_err(|e| e.to_string())?;
    let ca_cert = ca_params()
        .self_signed(&ca_key)
        .map_err(|e| e.to_string())?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let leaf_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut leaf = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(|e| e.to_string())?;
    leaf.distinguished_name
        .push(DnType::CommonName, "kvsync dev-vault");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| e.to_string())?;

    let chain = vec![
        CertificateDer::from(leaf_cert.der().to_vec()),
        CertificateDer::from(ca_cert.der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(DevCertificates {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(config),
    })
}
