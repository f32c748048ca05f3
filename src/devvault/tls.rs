//! The dev vault's certificates: a development CA with a fixed, published key
//! (so `ca.pem` from any dev-vault process trusts every other) and a fresh
//! server certificate for 127.0.0.1, ::1 and localhost signed by it.
//!
//! The key is public, so anyone can sign with it: the CA is therefore
//! name-constrained (RFC 5280 §4.2.1.10, marked critical) to `localhost`,
//! 127.0.0.0/8 and ::1. Even a `ca.pem` that leaks into a production
//! `--ca-file` can never vouch for `*.vault.azure.net` or Entra ID.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, GeneralSubtree, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, NameConstraints,
};
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
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("localhost".into()),
            GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([127, 0, 0, 0], 8)),
            GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
                std::net::Ipv6Addr::LOCALHOST.octets(),
                128,
            )),
        ],
        excluded_subtrees: Vec::new(),
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    /// A leaf for `names` signed with the published dev CA key, as anyone
    /// holding that key could make.
    fn leaf_signed_by_dev_key(names: &[&str]) -> CertificateDer<'static> {
        let issuer = Issuer::new(ca_params(), KeyPair::from_pem(DEV_CA_KEY_PEM).unwrap());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        CertificateDer::from(leaf.signed_by(&key, &issuer).unwrap().der().to_vec())
    }

    fn verify(leaf: &CertificateDer<'static>, server: &str) -> Result<(), rustls::Error> {
        let ca_pem = make().unwrap().ca_pem;
        let ca: CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_server_cert(
                leaf,
                &[],
                &ServerName::try_from(server.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn dev_ca_cannot_vouch_for_an_azure_host() {
        for host in [
            "contoso.vault.azure.net",
            "login.microsoftonline.com",
            "localhost.evil.example",
        ] {
            let err = verify(&leaf_signed_by_dev_key(&[host]), host)
                .expect_err("the dev CA must not vouch for a non-loopback name");
            assert!(
                format!("{err:?}").contains("NameConstraint"),
                "{host}: {err:?}"
            );
        }
        // Not even next to a permitted name in one certificate.
        let mixed = leaf_signed_by_dev_key(&["127.0.0.1", "contoso.vault.azure.net"]);
        assert!(verify(&mixed, "127.0.0.1").is_err());
    }

    #[test]
    fn dev_ca_still_vouches_for_loopback_names() {
        let leaf = leaf_signed_by_dev_key(&["localhost", "127.0.0.1", "::1"]);
        for name in ["localhost", "127.0.0.1", "::1"] {
            verify(&leaf, name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        let other_loopback = leaf_signed_by_dev_key(&["127.8.9.10"]);
        verify(&other_loopback, "127.8.9.10").unwrap();
    }
}
