//! `convert` as a user meets it: Key Vault's two forms, the orders and key
//! formats found in the wild, and every refusal's message.

use base64::Engine as _;
use der::Decode as _;

use super::*;
use crate::devvault::testcerts::{ChainSpec, TestChain, make_chain, make_chain_with};

const RSA_PKCS8: &str = include_str!("../../tests/fixtures/certs/rsa-2048.pkcs8.pem");
const RSA_PKCS1: &str = include_str!("../../tests/fixtures/certs/rsa-2048.pkcs1.pem");
const EC_PKCS8: &str = include_str!("../../tests/fixtures/certs/ec-p256.pkcs8.pem");
const EC_SEC1: &str = include_str!("../../tests/fixtures/certs/ec-p256.sec1.pem");
const KEYVAULT_PEM: &str = include_str!("../../tests/fixtures/certs/keyvault-rsa-selfsigned.pem");
const KEYVAULT_PFX: &str =
    include_str!("../../tests/fixtures/certs/keyvault-rsa-selfsigned.pfx.b64");

fn test_chain() -> TestChain {
    make_chain(
        "kvsync Test Root",
        "kvsync Test Issuing CA",
        "web.example.test",
    )
    .unwrap()
}

fn pem_value(text: &str) -> SecretValue {
    SecretValue::new(text)
}

fn convert_pem(text: &str) -> Result<Converted, CertError> {
    convert(&pem_value(text), Some(CONTENT_TYPE_PEM))
}

/// The DER of every block of `text`, with its label.
fn blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    pem::blocks(text)
        .unwrap()
        .into_iter()
        .map(|b| (b.label, b.der))
        .collect()
}

fn ders(text: &str) -> Vec<Vec<u8>> {
    blocks(text).into_iter().map(|(_, der)| der).collect()
}

/// Asserts that `converted` is `chain` in server order with its key.
fn assert_is_chain(converted: &Converted, chain: &TestChain) {
    assert_eq!(ders(converted.tls_crt.expose()), ders(&chain.chain_pem()));
    assert_eq!(ders(converted.tls_key.expose()), ders(&chain.leaf_key_pem));
    assert!(
        converted
            .tls_key
            .expose()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );
    assert_eq!(converted.subject, "CN=web.example.test");
}

#[test]
fn pfx_with_chain_gives_leaf_first_then_intermediate_then_root() {
    let chain = test_chain();
    let value = SecretValue::new(chain.pfx_base64().unwrap());
    let converted = convert(&value, Some(CONTENT_TYPE_PKCS12)).unwrap();
    assert_is_chain(&converted, &chain);
}

#[test]
fn tls_key_loads_in_ring_and_belongs_to_the_leaf() {
    let chain = test_chain();
    let converted = convert_pem(&chain.keyvault_pem()).unwrap();
    let key_der = &ders(converted.tls_key.expose())[0];
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        key_der,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    use ring::signature::KeyPair as _;
    let leaf = x509_cert::Certificate::from_der(&ders(&chain.leaf_pem)[0]).unwrap();
    let spki_point = leaf
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    assert_eq!(pair.public_key().as_ref(), spki_point);
}

#[test]
fn pem_with_key_first_as_key_vault_writes_it() {
    let chain = test_chain();
    assert_is_chain(&convert_pem(&chain.keyvault_pem()).unwrap(), &chain);
}

#[test]
fn pem_with_key_last() {
    let chain = test_chain();
    let text = format!("{}{}", chain.chain_pem(), chain.leaf_key_pem);
    assert_is_chain(&convert_pem(&text).unwrap(), &chain);
}

#[test]
fn pem_chain_in_wrong_order_is_put_in_server_order() {
    let chain = test_chain();
    let text = format!(
        "{}{}{}{}",
        chain.root_pem, chain.leaf_pem, chain.leaf_key_pem, chain.intermediate_pem
    );
    assert_is_chain(&convert_pem(&text).unwrap(), &chain);
}

#[test]
fn root_absent_from_the_secret_is_not_added() {
    let chain = test_chain();
    let text = format!(
        "{}{}{}",
        chain.intermediate_pem, chain.leaf_key_pem, chain.leaf_pem
    );
    let converted = convert_pem(&text).unwrap();
    assert_eq!(
        ders(converted.tls_crt.expose()),
        [
            ders(&chain.leaf_pem)[0].clone(),
            ders(&chain.intermediate_pem)[0].clone()
        ]
    );
}

#[test]
fn certificates_off_the_path_follow_in_their_order_and_duplicates_go() {
    let chain = test_chain();
    let other = make_chain("Other Root", "Other CA", "other.example.test").unwrap();
    let text = format!(
        "{}{}{}{}{}{}",
        other.root_pem,
        chain.intermediate_pem,
        chain.leaf_pem,
        chain.intermediate_pem,
        other.leaf_pem,
        chain.leaf_key_pem
    );
    let converted = convert_pem(&text).unwrap();
    assert_eq!(
        ders(converted.tls_crt.expose()),
        [
            ders(&chain.leaf_pem)[0].clone(),
            ders(&chain.intermediate_pem)[0].clone(),
            ders(&other.root_pem)[0].clone(),
            ders(&other.leaf_pem)[0].clone(),
        ]
    );
}

#[test]
fn pkcs1_rsa_key_is_converted_to_pkcs8() {
    let chain = make_chain_with(&ChainSpec {
        leaf_key_pem: Some(RSA_PKCS8),
        ..ChainSpec::new("R", "I", "rsa.example.test")
    })
    .unwrap();
    let text = format!("{RSA_PKCS1}{}", chain.chain_pem());
    let converted = convert_pem(&text).unwrap();
    // Byte for byte what OpenSSL writes for the same key as PKCS#8.
    assert_eq!(converted.tls_key.expose(), RSA_PKCS8);
    assert_eq!(ders(converted.tls_crt.expose()), ders(&chain.chain_pem()));
}

#[test]
fn sec1_ec_key_is_converted_to_pkcs8() {
    let chain = make_chain_with(&ChainSpec {
        leaf_key_pem: Some(EC_PKCS8),
        ..ChainSpec::new("R", "I", "ec.example.test")
    })
    .unwrap();
    // openssl ecparam output puts an EC PARAMETERS block first.
    let text = format!(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{EC_SEC1}{}",
        chain.chain_pem()
    );
    let converted = convert_pem(&text).unwrap();
    assert_eq!(converted.tls_key.expose(), EC_PKCS8);
}

#[test]
fn rsa_pfx_converts() {
    let chain = make_chain_with(&ChainSpec {
        leaf_key_pem: Some(RSA_PKCS8),
        ..ChainSpec::new("R", "I", "rsa.example.test")
    })
    .unwrap();
    let value = SecretValue::new(chain.pfx_base64().unwrap());
    let converted = convert(&value, Some(CONTENT_TYPE_PKCS12)).unwrap();
    assert_eq!(converted.tls_key.expose(), RSA_PKCS8);
    assert_eq!(ders(converted.tls_crt.expose()), ders(&chain.chain_pem()));
}

#[test]
fn not_after_and_subject_are_the_leafs() {
    let chain = make_chain_with(&ChainSpec {
        leaf_not_after: Some(1_900_000_000),
        ..ChainSpec::new("Root", "Issuer", "expiry.example.test")
    })
    .unwrap();
    let converted = convert_pem(&chain.keyvault_pem()).unwrap();
    assert_eq!(converted.not_after, 1_900_000_000);
    assert_eq!(converted.subject, "CN=expiry.example.test");
}

#[test]
fn pem_bundle_is_key_then_leaf_then_chain() {
    let chain = test_chain();
    let converted = convert_pem(&format!("{}{}", chain.chain_pem(), chain.leaf_key_pem)).unwrap();
    let bundle = converted.pem_bundle();
    let labels: Vec<String> = blocks(bundle.expose())
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    assert_eq!(
        labels,
        ["PRIVATE KEY", "CERTIFICATE", "CERTIFICATE", "CERTIFICATE"]
    );
    assert_eq!(
        bundle.expose(),
        format!(
            "{}{}",
            converted.tls_key.expose(),
            converted.tls_crt.expose()
        )
    );
}

#[test]
fn key_vault_pem_converts() {
    let converted = convert_pem(KEYVAULT_PEM).unwrap();
    assert_eq!(converted.subject, "CN=MyCert");
    // notAfter 2022-02-16T18:58:24Z, which Key Vault also reports as the
    // secret's `exp`.
    assert_eq!(converted.not_after, 1_645_037_904);
    assert_eq!(ders(converted.tls_crt.expose()).len(), 1);
    let key = &ders(converted.tls_key.expose())[0];
    assert!(ring::signature::RsaKeyPair::from_pkcs8(key).is_ok());
}

#[test]
fn key_vault_pfx_converts() {
    // Key Vault's PFX: absent password, 3DES bags, SHA-1 MAC.
    let value = SecretValue::new(KEYVAULT_PFX.trim());
    let converted = convert(&value, Some(CONTENT_TYPE_PKCS12)).unwrap();
    assert_eq!(converted.subject, "CN=MyCert");
    // notAfter 2022-04-28T20:27:49Z (Key Vault reports it as the secret's `exp`).
    assert_eq!(converted.not_after, 1_651_177_669);
    assert_eq!(ders(converted.tls_crt.expose()).len(), 1);
    // Windows' key bag carries attributes; tls.key is plain PKCS#8 v1.
    let key = &ders(converted.tls_key.expose())[0];
    assert!(ring::signature::RsaKeyPair::from_pkcs8(key).is_ok());
}

#[test]
fn without_content_type_the_value_is_recognised_by_shape() {
    let chain = test_chain();
    let pem = convert(&pem_value(&chain.keyvault_pem()), None).unwrap();
    assert_is_chain(&pem, &chain);
    let pfx = convert(&SecretValue::new(chain.pfx_base64().unwrap()), Some("")).unwrap();
    assert_is_chain(&pfx, &chain);
    assert_eq!(
        convert(&SecretValue::new("hunter2"), None).unwrap_err(),
        CertError::Unrecognized
    );
}

#[test]
fn content_type_is_matched_without_case_or_parameters() {
    let chain = test_chain();
    let converted = convert(
        &pem_value(&chain.keyvault_pem()),
        Some("Application/X-PEM-File; charset=utf-8"),
    )
    .unwrap();
    assert_is_chain(&converted, &chain);
}

#[test]
fn wrong_content_type_is_named() {
    let chain = test_chain();
    let err = convert(&pem_value(&chain.keyvault_pem()), Some("text/plain")).unwrap_err();
    assert_eq!(
        err,
        CertError::NotACertificate {
            content_type: "text/plain".into()
        }
    );
    let message = err.to_string();
    assert!(message.contains("\"text/plain\""), "{message}");
    assert!(message.contains("application/x-pkcs12"), "{message}");
    assert!(message.contains("application/x-pem-file"), "{message}");
    assert!(
        message.contains("not a certificate's backing secret"),
        "{message}"
    );
}

#[test]
fn no_private_key_says_the_certificate_is_not_exportable() {
    let chain = test_chain();
    let err = convert_pem(&chain.chain_pem()).unwrap_err();
    assert_eq!(err, CertError::NotExportable);
    let message = err.to_string();
    assert!(message.contains("not exportable"), "{message}");
    assert!(message.contains("exportable: true"), "{message}");
}

#[test]
fn pfx_without_a_key_says_the_certificate_is_not_exportable() {
    let chain = test_chain();
    let mut store = p12_keystore::KeyStore::new();
    for (i, der) in ders(&chain.chain_pem()).into_iter().enumerate() {
        store.add_entry(
            &format!("c{i}"),
            p12_keystore::KeyStoreEntry::Certificate(
                p12_keystore::Certificate::from_der(&der).unwrap(),
            ),
        );
    }
    let pfx = base64::engine::general_purpose::STANDARD.encode(store.writer("").write().unwrap());
    let err = convert(&SecretValue::new(pfx), Some(CONTENT_TYPE_PKCS12)).unwrap_err();
    assert_eq!(err, CertError::NotExportable);
}

#[test]
fn a_key_without_certificates_is_refused() {
    let chain = test_chain();
    assert_eq!(
        convert_pem(&chain.leaf_key_pem).unwrap_err(),
        CertError::NoCertificate {
            format: Format::Pem
        }
    );
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch() {
    let chain = test_chain();
    let other = test_chain();
    let text = format!("{}{}", other.leaf_key_pem, chain.chain_pem());
    assert_eq!(
        convert_pem(&text).unwrap_err(),
        CertError::KeyMismatch {
            format: Format::Pem
        }
    );
}

#[test]
fn two_different_keys_are_refused_and_a_repeated_one_is_not() {
    let chain = test_chain();
    let other = test_chain();
    let two = format!(
        "{}{}{}",
        chain.leaf_key_pem,
        other.leaf_key_pem,
        chain.chain_pem()
    );
    assert_eq!(
        convert_pem(&two).unwrap_err(),
        CertError::SeveralKeys {
            format: Format::Pem
        }
    );
    let repeated = format!(
        "{}{}{}",
        chain.leaf_key_pem,
        chain.chain_pem(),
        chain.leaf_key_pem
    );
    assert_is_chain(&convert_pem(&repeated).unwrap(), &chain);
}

#[test]
fn encrypted_keys_are_refused_by_name() {
    let chain = test_chain();
    let encrypted =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n";
    let err = convert_pem(&format!("{encrypted}{}", chain.chain_pem())).unwrap_err();
    assert_eq!(
        err,
        CertError::EncryptedKey {
            label: "ENCRYPTED PRIVATE KEY"
        }
    );
    assert!(err.to_string().contains("cannot decrypt"), "{err}");

    let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMAA=\n-----END RSA PRIVATE KEY-----\n";
    assert!(matches!(
        convert_pem(&format!("{legacy}{}", chain.chain_pem())),
        Err(CertError::EncryptedKey { .. })
    ));
}

#[test]
fn other_private_key_kinds_are_named() {
    let chain = test_chain();
    let ssh = "-----BEGIN OPENSSH PRIVATE KEY-----\nMAA=\n-----END OPENSSH PRIVATE KEY-----\n";
    let err = convert_pem(&format!("{ssh}{}", chain.chain_pem())).unwrap_err();
    assert_eq!(
        err,
        CertError::UnsupportedKey {
            format: Format::Pem,
            what: "a OPENSSH PRIVATE KEY block".into()
        }
    );
}

#[test]
fn password_protected_pfx_is_refused() {
    let chain = test_chain();
    let der = base64::engine::general_purpose::STANDARD
        .decode(chain.pfx_base64().unwrap())
        .unwrap();
    let archive =
        p12_keystore::KeyStore::from_pkcs12(&der, "", p12_keystore::Pkcs12ImportPolicy::Relaxed)
            .unwrap();
    let protected = archive.writer("s3cret").write().unwrap();
    let value = SecretValue::new(base64::engine::general_purpose::STANDARD.encode(protected));
    let err = convert(&value, Some(CONTENT_TYPE_PKCS12)).unwrap_err();
    assert_eq!(err, CertError::PfxPassword);
    assert!(
        err.to_string().contains("az keyvault certificate import"),
        "{err}"
    );
}

#[test]
fn malformed_values_are_refused_without_quoting_them() {
    let cases: [(&str, Option<&str>); 5] = [
        ("c2VjcmV0LXZhbHVl!!", Some(CONTENT_TYPE_PKCS12)),
        ("c2VjcmV0LXZhbHVl", Some(CONTENT_TYPE_PKCS12)),
        ("secret-value with no block", Some(CONTENT_TYPE_PEM)),
        (
            "-----BEGIN CERTIFICATE-----\nc2VjcmV0LXZhbHVl\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXZhbHVl\n-----END PRIVATE KEY-----\n",
            Some(CONTENT_TYPE_PEM),
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXZhbHVl\n",
            Some(CONTENT_TYPE_PEM),
        ),
    ];
    for (text, content_type) in cases {
        let err = convert(&SecretValue::new(text), content_type).unwrap_err();
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("c2VjcmV0LXZhbHVl"), "{shown}");
            assert!(!shown.contains("secret-value"), "{shown}");
        }
    }
}

#[test]
fn errors_and_debug_never_show_the_key() {
    let chain = test_chain();
    let other = test_chain();
    let key_body: Vec<String> = chain
        .leaf_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect();
    let failing = [
        format!("{}{}", chain.leaf_key_pem, other.chain_pem()),
        chain.leaf_key_pem.clone(),
        format!(
            "{}{}{}",
            chain.leaf_key_pem,
            other.leaf_key_pem,
            chain.chain_pem()
        ),
        format!(
            "{}{}",
            chain.leaf_key_pem,
            chain.chain_pem().replace("-----END CERTIFICATE-----\n", "")
        ),
    ];
    for text in failing {
        let err = convert_pem(&text).unwrap_err();
        for shown in [err.to_string(), format!("{err:?}"), format!("{err:#?}")] {
            for line in &key_body {
                assert!(!shown.contains(line.as_str()), "{shown}");
            }
        }
    }
    let converted = convert_pem(&chain.keyvault_pem()).unwrap();
    let shown = format!("{converted:?}");
    for line in &key_body {
        assert!(!shown.contains(line.as_str()), "{shown}");
    }
}
