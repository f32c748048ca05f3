//! PKCS#12 (PFX), as Key Vault keeps a certificate with contentType
//! `application/x-pkcs12`: the secret's value is the base64 of a PFX with
//! no password.
//!
//! "No password" comes in two encodings (see `kdf`): the empty password
//! (`00 00`, what OpenSSL and `p12-keystore` write) and the absent one
//! (zero bytes, what Windows and so Key Vault write: verified on a PFX
//! Key Vault returned, `tests/fixtures/certs/keyvault-rsa-selfsigned.pfx.b64`).
//! kvsync checks the MAC itself to learn which one the file uses, then:
//! - empty password: `p12-keystore` reads it;
//! - absent password: the bags are read here; contents encrypted with
//!   PBES2 (AES) are handed to `p12-keystore` with `""`, since PBKDF2 sees
//!   the empty and the absent password alike; contents encrypted with the
//!   legacy PKCS#12 ciphers (3DES, RC2: what Key Vault uses) are decrypted
//!   here.

use der::asn1::{AnyRef, ObjectIdentifier};
use p12_keystore::Pkcs12Archive;
use p12_keystore::error::Error as P12Error;
use ring::{digest, hmac};

use super::asn1::{self, DerFault};
use super::kdf;

const DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
const KEY_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.1");
const SHROUDED_KEY_BAG: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.2");
const CERT_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.3");
const X509_CERTIFICATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.22.1");
const PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
/// `pbeWithSHAAnd…` (RFC 7292 appendix C): RC4, 3DES and RC2 variants.
const PKCS12_PBE_ARC: &str = "1.2.840.113549.1.12.1.";
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// More MAC iterations than this is refused (as `p12-keystore` does for
/// its own derivations): a PFX is not allowed to pin a CPU.
const MAX_ITERATIONS: u32 = 1_000_000;

/// What a PFX holds: PKCS#8 keys and X.509 certificates, DER, in file order.
#[derive(Default)]
pub(super) struct Contents {
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) certs: Vec<Vec<u8>>,
}

/// Why a PFX could not be read. Carries no bytes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PfxFault {
    /// Neither the empty nor the absent password opens it.
    Password,
    Unsupported(&'static str),
    Malformed(&'static str),
}

impl From<DerFault> for PfxFault {
    fn from(f: DerFault) -> Self {
        PfxFault::Malformed(f.what)
    }
}

const NOT_PKCS12: &str = "it is not valid PKCS#12 DER";

pub(super) fn read(der: &[u8]) -> Result<Contents, PfxFault> {
    let pfx = Pfx::parse(der)?;
    match &pfx.mac {
        Some(mac) => {
            if mac.verifies(pfx.safes, &kdf::bmp_password(""))? != Some(false) {
                // The empty password, or a digest `p12-keystore` knows and
                // kvsync does not: it checks the MAC again either way.
                return with_keystore(der);
            }
            if mac.verifies(pfx.safes, &[])? == Some(true) {
                return read_with_absent_password(&pfx);
            }
            Err(PfxFault::Password)
        }
        // Without a MAC nothing says which password; try both.
        None => with_keystore(der).or_else(|first| match read_with_absent_password(&pfx) {
            Ok(contents) => Ok(contents),
            Err(PfxFault::Malformed(_)) => Err(first),
            Err(other) => Err(other),
        }),
    }
}

fn with_keystore(der: &[u8]) -> Result<Contents, PfxFault> {
    let archive = Pkcs12Archive::from_pkcs12(der, "").map_err(keystore_fault)?;
    Ok(Contents {
        keys: archive
            .keys
            .iter()
            .map(|k| k.key.as_der().to_vec())
            .collect(),
        certs: archive
            .certs
            .iter()
            .map(|c| c.cert.as_der().to_vec())
            .collect(),
    })
}

fn keystore_fault(e: P12Error) -> PfxFault {
    match e {
        P12Error::MacError(_) | P12Error::UnpadError | P12Error::Pkcs5Error(_) => {
            PfxFault::Password
        }
        P12Error::UnsupportedEncryptionScheme => {
            PfxFault::Unsupported("an encryption scheme kvsync cannot decrypt")
        }
        P12Error::UnsupportedMacAlgorithm => {
            PfxFault::Unsupported("a MAC algorithm kvsync does not know")
        }
        P12Error::UnsupportedContentType => {
            PfxFault::Unsupported("contents that are neither plain nor password-encrypted data")
        }
        P12Error::UnsupportedCertificateType => {
            PfxFault::Unsupported("certificates that are not X.509")
        }
        P12Error::InvalidParameters => PfxFault::Unsupported(
            "key-derivation parameters beyond kvsync's limits (over 1,000,000 iterations)",
        ),
        P12Error::InvalidVersion => PfxFault::Malformed("it is not a version 3 PFX"),
        _ => PfxFault::Malformed(NOT_PKCS12),
    }
}

/// Reads the bags of a PFX whose password is the absent one.
fn read_with_absent_password(pfx: &Pfx<'_>) -> Result<Contents, PfxFault> {
    read_bags_under(pfx, Vec::new())
}

/// Reads the bags of `pfx`, decrypting legacy-encrypted ones under
/// `password` (BMPString bytes).
fn read_bags_under(pfx: &Pfx<'_>, password: Vec<u8>) -> Result<Contents, PfxFault> {
    let mut reader = BagReader {
        password,
        contents: Contents::default(),
        needs_pbes2: false,
    };
    for content_info in asn1::sequence(pfx.safes, NOT_PKCS12)? {
        let parts = asn1::nested(&content_info, NOT_PKCS12)?;
        let [content_type, content] = parts.as_slice() else {
            return Err(PfxFault::Malformed(NOT_PKCS12));
        };
        let content = explicit(content)?;
        match asn1::oid(content_type, NOT_PKCS12)? {
            DATA => reader.read_bags(asn1::octets(&content, NOT_PKCS12)?)?,
            ENCRYPTED_DATA => {
                // EncryptedData { version, EncryptedContentInfo {
                //   contentType, contentEncryptionAlgorithm,
                //   [0] IMPLICIT encryptedContent OCTET STRING } }
                let encrypted_data = asn1::nested(&content, NOT_PKCS12)?;
                let info = encrypted_data
                    .get(1)
                    .ok_or(PfxFault::Malformed(NOT_PKCS12))?;
                let info = asn1::nested(info, NOT_PKCS12)?;
                let [_, algorithm, encrypted, ..] = info.as_slice() else {
                    return Err(PfxFault::Malformed(NOT_PKCS12));
                };
                if !asn1::is_context(encrypted, 0) {
                    return Err(PfxFault::Malformed(NOT_PKCS12));
                }
                if let Some(plain) = reader.decrypt(algorithm, encrypted.value())? {
                    reader.read_bags(&plain)?;
                }
            }
            _ => {
                return Err(PfxFault::Unsupported(
                    "contents encrypted to a public key rather than a password",
                ));
            }
        }
    }
    if reader.needs_pbes2 {
        // Strip the MAC (verified above under the absent password, which
        // `p12-keystore` cannot express) and let it decrypt.
        return with_keystore(&pfx.without_mac());
    }
    Ok(reader.contents)
}

struct BagReader {
    password: Vec<u8>,
    contents: Contents,
    /// Some content is PBES2-encrypted: `p12-keystore` reads the file.
    needs_pbes2: bool,
}

impl BagReader {
    fn read_bags(&mut self, der: &[u8]) -> Result<(), PfxFault> {
        for bag in asn1::sequence(der, NOT_PKCS12)? {
            let parts = asn1::nested(&bag, NOT_PKCS12)?;
            let [bag_id, value, ..] = parts.as_slice() else {
                return Err(PfxFault::Malformed(NOT_PKCS12));
            };
            let value = explicit(value)?;
            match asn1::oid(bag_id, NOT_PKCS12)? {
                KEY_BAG => self.contents.keys.push(asn1::encoded(&value)),
                SHROUDED_KEY_BAG => {
                    // EncryptedPrivateKeyInfo { algorithm, encryptedData }
                    let parts = asn1::nested(&value, NOT_PKCS12)?;
                    let [algorithm, encrypted] = parts.as_slice() else {
                        return Err(PfxFault::Malformed(NOT_PKCS12));
                    };
                    let encrypted = asn1::octets(encrypted, NOT_PKCS12)?;
                    if let Some(key) = self.decrypt(algorithm, encrypted)? {
                        self.contents.keys.push(key);
                    }
                }
                CERT_BAG => {
                    let cert_bag = asn1::nested(&value, NOT_PKCS12)?;
                    let [cert_id, cert_value] = cert_bag.as_slice() else {
                        return Err(PfxFault::Malformed(NOT_PKCS12));
                    };
                    if asn1::oid(cert_id, NOT_PKCS12)? != X509_CERTIFICATE {
                        return Err(PfxFault::Unsupported("certificates that are not X.509"));
                    }
                    let cert = explicit(cert_value)?;
                    self.contents
                        .certs
                        .push(asn1::octets(&cert, NOT_PKCS12)?.to_vec());
                }
                // CRLs, secrets, nested safe contents: nothing a TLS Secret uses.
                _ => {}
            }
        }
        Ok(())
    }

    /// `Some(plaintext)`, or `None` when PBES2 content is left to
    /// `p12-keystore`.
    fn decrypt(
        &mut self,
        algorithm: &AnyRef<'_>,
        data: &[u8],
    ) -> Result<Option<Vec<u8>>, PfxFault> {
        let parts = asn1::nested(algorithm, NOT_PKCS12)?;
        let oid = asn1::oid(
            parts.first().ok_or(PfxFault::Malformed(NOT_PKCS12))?,
            NOT_PKCS12,
        )?;
        if oid == PBES2 {
            self.needs_pbes2 = true;
            Ok(None)
        } else if oid.to_string().starts_with(PKCS12_PBE_ARC) {
            decrypt_legacy(&parts, data, &self.password).map(Some)
        } else {
            Err(PfxFault::Unsupported(
                "an encryption scheme kvsync cannot decrypt",
            ))
        }
    }
}

/// Decrypts `data`, encrypted under `password` (BMPString bytes; empty
/// for the absent password) with a PKCS#12 PBE scheme (RFC 7292 appendix
/// C); `algorithm` holds the parts of its AlgorithmIdentifier. 3DES (Key
/// Vault's) and RC2; RC4 is refused.
fn decrypt_legacy(
    algorithm: &[AnyRef<'_>],
    data: &[u8],
    password: &[u8],
) -> Result<Vec<u8>, PfxFault> {
    use cbc::cipher::block_padding::Pkcs7;
    use cbc::cipher::{BlockModeDecrypt, KeyIvInit};

    let [oid, parameters] = algorithm else {
        return Err(PfxFault::Malformed(NOT_PKCS12));
    };
    // pkcs-12PbeParams ::= SEQUENCE { salt OCTET STRING, iterations INTEGER }
    let parameters = asn1::nested(parameters, NOT_PKCS12)?;
    let [salt, iterations] = parameters.as_slice() else {
        return Err(PfxFault::Malformed(NOT_PKCS12));
    };
    let salt = asn1::octets(salt, NOT_PKCS12)?;
    let iterations = asn1::small_uint(iterations, NOT_PKCS12)?;
    if iterations > MAX_ITERATIONS {
        return Err(PfxFault::Unsupported(
            "key-derivation parameters beyond kvsync's limits (over 1,000,000 iterations)",
        ));
    }
    let derive = |purpose, len| {
        kdf::derive(
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            password,
            salt,
            purpose,
            iterations,
            len,
        )
    };
    // The last arc of pkcs-12PbeIds names the cipher.
    let cipher = asn1::oid(oid, NOT_PKCS12)?.arcs().last();
    let key_len = match cipher {
        Some(3) => 24,           // pbeWithSHAAnd3-KeyTripleDES-CBC
        Some(4) | Some(5) => 16, // …2-KeyTripleDES-CBC, …128BitRC2-CBC
        Some(6) => 5,            // pbeWithSHAAnd40BitRC2-CBC
        _ => return Err(PfxFault::Unsupported("RC4 encryption")),
    };
    let key = derive(kdf::Purpose::EncryptionKey, key_len);
    let iv = derive(kdf::Purpose::Iv, 8);
    let plain = match cipher {
        Some(3) => cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
            .map(|c| c.decrypt_padded_vec::<Pkcs7>(data)),
        Some(4) => cbc::Decryptor::<des::TdesEde2>::new_from_slices(&key, &iv)
            .map(|c| c.decrypt_padded_vec::<Pkcs7>(data)),
        _ => cbc::Decryptor::<rc2::Rc2>::new_from_slices(&key, &iv)
            .map(|c| c.decrypt_padded_vec::<Pkcs7>(data)),
    };
    match plain {
        Ok(Ok(plain)) => Ok(plain),
        // Bad padding: this is not the content's password.
        Ok(Err(_)) => Err(PfxFault::Password),
        Err(_) => Err(PfxFault::Malformed(NOT_PKCS12)),
    }
}

/// The single element inside an EXPLICIT `[0]`.
fn explicit<'a>(any: &AnyRef<'a>) -> Result<AnyRef<'a>, PfxFault> {
    if !asn1::is_context(any, 0) {
        return Err(PfxFault::Malformed(NOT_PKCS12));
    }
    match asn1::elements(any.value(), NOT_PKCS12)?.as_slice() {
        [inner] => Ok(*inner),
        _ => Err(PfxFault::Malformed(NOT_PKCS12)),
    }
}

/// `PFX ::= SEQUENCE { version 3, authSafe ContentInfo, macData OPTIONAL }`.
struct Pfx<'a> {
    version: AnyRef<'a>,
    auth_safe: AnyRef<'a>,
    /// The `AuthenticatedSafe` DER: what the MAC covers.
    safes: &'a [u8],
    mac: Option<MacData<'a>>,
}

impl<'a> Pfx<'a> {
    fn parse(der: &'a [u8]) -> Result<Self, PfxFault> {
        let parts = asn1::sequence(der, NOT_PKCS12)?;
        let (version, auth_safe, mac) = match parts.as_slice() {
            [v, a] => (*v, *a, None),
            [v, a, m] => (*v, *a, Some(MacData::parse(m)?)),
            _ => return Err(PfxFault::Malformed(NOT_PKCS12)),
        };
        if asn1::small_uint(&version, NOT_PKCS12)? != 3 {
            return Err(PfxFault::Malformed("it is not a version 3 PFX"));
        }
        let content_info = asn1::nested(&auth_safe, NOT_PKCS12)?;
        let [content_type, content] = content_info.as_slice() else {
            return Err(PfxFault::Malformed(NOT_PKCS12));
        };
        if asn1::oid(content_type, NOT_PKCS12)? != DATA {
            return Err(PfxFault::Unsupported("public-key integrity (a signed PFX)"));
        }
        let safes = asn1::octets(&explicit(content)?, NOT_PKCS12)?;
        Ok(Self {
            version,
            auth_safe,
            safes,
            mac,
        })
    }

    fn without_mac(&self) -> Vec<u8> {
        asn1::seq(&[
            &asn1::encoded(&self.version),
            &asn1::encoded(&self.auth_safe),
        ])
    }
}

/// `MacData ::= SEQUENCE { mac DigestInfo, macSalt OCTET STRING,
/// iterations INTEGER DEFAULT 1 }`.
struct MacData<'a> {
    digest_oid: ObjectIdentifier,
    digest: &'a [u8],
    salt: &'a [u8],
    iterations: u32,
}

impl<'a> MacData<'a> {
    fn parse(any: &AnyRef<'a>) -> Result<Self, PfxFault> {
        let parts = asn1::nested(any, NOT_PKCS12)?;
        let (digest_info, salt, iterations) = match parts.as_slice() {
            [d, s] => (d, s, 1),
            [d, s, i] => (d, s, asn1::small_uint(i, NOT_PKCS12)?),
            _ => return Err(PfxFault::Malformed(NOT_PKCS12)),
        };
        let digest_info = asn1::nested(digest_info, NOT_PKCS12)?;
        let [algorithm, digest] = digest_info.as_slice() else {
            return Err(PfxFault::Malformed(NOT_PKCS12));
        };
        let algorithm = asn1::nested(algorithm, NOT_PKCS12)?;
        let digest_oid = asn1::oid(
            algorithm.first().ok_or(PfxFault::Malformed(NOT_PKCS12))?,
            NOT_PKCS12,
        )?;
        Ok(Self {
            digest_oid,
            digest: asn1::octets(digest, NOT_PKCS12)?,
            salt: asn1::octets(salt, NOT_PKCS12)?,
            iterations,
        })
    }

    /// Does the MAC over `covered` verify under `password` (BMPString
    /// bytes; empty for the absent password)? `None` for a digest kvsync
    /// does not know.
    fn verifies(&self, covered: &[u8], password: &[u8]) -> Result<Option<bool>, PfxFault> {
        let (hash, algorithm) = match self.digest_oid {
            SHA1 => (
                &digest::SHA1_FOR_LEGACY_USE_ONLY,
                hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            ),
            SHA256 => (&digest::SHA256, hmac::HMAC_SHA256),
            SHA384 => (&digest::SHA384, hmac::HMAC_SHA384),
            SHA512 => (&digest::SHA512, hmac::HMAC_SHA512),
            _ => return Ok(None),
        };
        if self.iterations > MAX_ITERATIONS {
            return Err(PfxFault::Unsupported(
                "key-derivation parameters beyond kvsync's limits (over 1,000,000 iterations)",
            ));
        }
        let key = kdf::derive(
            hash,
            password,
            self.salt,
            kdf::Purpose::Mac,
            self.iterations,
            hash.output_len(),
        );
        let key = hmac::Key::new(algorithm, &key);
        Ok(Some(hmac::verify(&key, covered, self.digest).is_ok()))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use der::Tag;

    use super::*;
    use crate::certificate::pem;
    use crate::devvault::testcerts::{TestChain, make_chain};

    const KEYVAULT_PFX: &str =
        include_str!("../../tests/fixtures/certs/keyvault-rsa-selfsigned.pfx.b64");

    fn b64(text: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap()
    }

    fn der_of(pem_text: &str) -> Vec<Vec<u8>> {
        pem::blocks(pem_text)
            .unwrap()
            .into_iter()
            .map(|b| b.der)
            .collect()
    }

    fn chain() -> TestChain {
        make_chain("R", "I", "pfx.example.test").unwrap()
    }

    fn oid(o: ObjectIdentifier) -> Vec<u8> {
        asn1::encode_oid(&o)
    }

    fn data(inner: &[u8]) -> Vec<u8> {
        asn1::seq(&[
            &oid(DATA),
            &asn1::context(0, &asn1::tlv(Tag::OctetString, inner)),
        ])
    }

    fn bag(id: ObjectIdentifier, value: &[u8]) -> Vec<u8> {
        asn1::seq(&[&oid(id), &asn1::context(0, value)])
    }

    /// A PFX with `safes` as its authenticated safe and, if `password` is
    /// given (BMP bytes; empty = absent), a SHA-256 MAC under it.
    fn assemble(safes: &[u8], password: Option<&[u8]>, iterations: u32) -> Vec<u8> {
        let version = asn1::tlv(Tag::Integer, &[3]);
        let auth_safe = data(safes);
        let Some(password) = password else {
            return asn1::seq(&[&version, &auth_safe]);
        };
        let salt = [7u8; 16];
        let key = kdf::derive(
            &digest::SHA256,
            password,
            &salt,
            kdf::Purpose::Mac,
            iterations,
            32,
        );
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), safes);
        let digest_info = asn1::seq(&[
            &asn1::seq(&[&oid(SHA256), &asn1::tlv(Tag::Null, &[])]),
            &asn1::tlv(Tag::OctetString, tag.as_ref()),
        ]);
        let mut iterations_be = iterations.to_be_bytes().to_vec();
        while iterations_be.len() > 1 && iterations_be[0] == 0 && iterations_be[1] & 0x80 == 0 {
            iterations_be.remove(0);
        }
        let mac = asn1::seq(&[
            &digest_info,
            &asn1::tlv(Tag::OctetString, &salt),
            &asn1::tlv(Tag::Integer, &iterations_be),
        ]);
        asn1::seq(&[&version, &auth_safe, &mac])
    }

    /// An unencrypted PFX (key bag, certificate bags) as Key Vault keeps
    /// an imported certificate: no encryption, a MAC under `password`.
    fn plain_pfx(chain: &TestChain, password: Option<&[u8]>) -> Vec<u8> {
        let key = &der_of(&chain.leaf_key_pem)[0];
        let mut bags = vec![bag(KEY_BAG, key)];
        for cert in der_of(&chain.chain_pem()) {
            let cert_bag = asn1::seq(&[
                &oid(X509_CERTIFICATE),
                &asn1::context(0, &asn1::tlv(Tag::OctetString, &cert)),
            ]);
            bags.push(bag(CERT_BAG, &cert_bag));
        }
        let refs: Vec<&[u8]> = bags.iter().map(Vec::as_slice).collect();
        let safe_contents = asn1::seq(&refs);
        assemble(&asn1::seq(&[&data(&safe_contents)]), password, 2048)
    }

    fn assert_holds(contents: &Contents, chain: &TestChain) {
        assert_eq!(contents.keys, der_of(&chain.leaf_key_pem));
        assert_eq!(contents.certs, der_of(&chain.chain_pem()));
    }

    #[test]
    fn mac_derivation_agrees_with_p12_keystore() {
        // p12-keystore (RustCrypto pkcs12) derives with the empty password;
        // kvsync's derivation must verify its MACs, SHA-1 and SHA-256.
        let chain = chain();
        let der = b64(&chain.pfx_base64().unwrap());
        let store = p12_keystore::KeyStore::from_pkcs12(&der, "", Default::default()).unwrap();
        for algorithm in [
            p12_keystore::MacAlgorithm::HmacSha1,
            p12_keystore::MacAlgorithm::HmacSha256,
        ] {
            let der = store.writer("").mac_algorithm(algorithm).write().unwrap();
            let pfx = Pfx::parse(&der).unwrap();
            let mac = pfx.mac.as_ref().unwrap();
            assert_eq!(
                mac.verifies(pfx.safes, &kdf::bmp_password("")),
                Ok(Some(true))
            );
            assert_eq!(mac.verifies(pfx.safes, &[]), Ok(Some(false)));
        }
    }

    #[test]
    fn key_vault_pfx_mac_is_under_the_absent_password() {
        let der = b64(KEYVAULT_PFX);
        let pfx = Pfx::parse(&der).unwrap();
        let mac = pfx.mac.as_ref().unwrap();
        assert_eq!(mac.verifies(pfx.safes, &[]), Ok(Some(true)));
        assert_eq!(
            mac.verifies(pfx.safes, &kdf::bmp_password("")),
            Ok(Some(false))
        );
        // p12-keystore alone cannot open it: it only knows the empty password.
        assert!(Pkcs12Archive::from_pkcs12(&der, "").is_err());
        let contents = read(&der).unwrap();
        assert_eq!(contents.keys.len(), 1);
        assert_eq!(contents.certs.len(), 1);
    }

    #[test]
    fn unencrypted_pfx_under_the_absent_password_is_read() {
        let chain = chain();
        let contents = read(&plain_pfx(&chain, Some(&[]))).unwrap();
        assert_holds(&contents, &chain);
    }

    #[test]
    fn unencrypted_pfx_without_a_mac_is_read() {
        let chain = chain();
        let contents = read(&plain_pfx(&chain, None)).unwrap();
        assert_holds(&contents, &chain);
    }

    #[test]
    fn aes_encrypted_pfx_under_the_absent_password_is_read() {
        // PBES2 contents (PBKDF2 sees no difference between empty and
        // absent) with the MAC redone under the absent password.
        let chain = chain();
        let der = b64(&chain.pfx_base64().unwrap());
        let pfx = Pfx::parse(&der).unwrap();
        let rebuilt = assemble(pfx.safes, Some(&[]), 2048);
        assert!(Pkcs12Archive::from_pkcs12(&rebuilt, "").is_err());
        let contents = read(&rebuilt).unwrap();
        assert_eq!(contents.keys, der_of(&chain.leaf_key_pem));
        assert_eq!(contents.certs.len(), 3);
    }

    #[test]
    fn a_mac_under_another_password_is_a_password_error() {
        let chain = chain();
        let der = plain_pfx(&chain, Some(&kdf::bmp_password("s3cret")));
        assert_eq!(read(&der).err(), Some(PfxFault::Password));
    }

    #[test]
    fn too_many_mac_iterations_are_refused_before_deriving() {
        let safes = asn1::seq(&[&data(&asn1::seq(&[]))]);
        let pfx = assemble(&safes, Some(&[]), 2048);
        // Same MAC structure, iterations rewritten to 2^31 - 1.
        let parsed = Pfx::parse(&pfx).unwrap();
        let mac = parsed.mac.as_ref().unwrap();
        let huge = MacData {
            iterations: i32::MAX as u32,
            ..MacData {
                digest_oid: mac.digest_oid,
                digest: mac.digest,
                salt: mac.salt,
                iterations: mac.iterations,
            }
        };
        assert!(matches!(
            huge.verifies(parsed.safes, &[]),
            Err(PfxFault::Unsupported(_))
        ));
    }

    #[test]
    fn legacy_ciphers_decrypt_what_p12_keystore_encrypts() {
        // p12-keystore writes 3DES and RC2-40 under the empty password;
        // the same bags read here under that password prove the ciphers
        // and the key/IV derivation (Key Vault's file proves the absent
        // password).
        use p12_keystore::EncryptionAlgorithm::{
            PbeWithShaAnd3KeyTripleDesCbc, PbeWithShaAnd40BitRc4Cbc,
        };
        let chain = chain();
        let der = b64(&chain.pfx_base64().unwrap());
        let store = p12_keystore::KeyStore::from_pkcs12(&der, "", Default::default()).unwrap();
        for algorithm in [PbeWithShaAnd3KeyTripleDesCbc, PbeWithShaAnd40BitRc4Cbc] {
            let legacy = store
                .writer("")
                .encryption_algorithm(algorithm)
                .write()
                .unwrap();
            let pfx = Pfx::parse(&legacy).unwrap();
            let contents = read_bags_under(&pfx, kdf::bmp_password("")).unwrap();
            assert_eq!(contents.keys, der_of(&chain.leaf_key_pem), "{algorithm:?}");
            assert_eq!(contents.certs.len(), 3, "{algorithm:?}");
            assert_eq!(
                read_bags_under(&pfx, Vec::new()).err(),
                Some(PfxFault::Password)
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            read(b"\x30\x03\x02\x01\x03"),
            Err(PfxFault::Malformed(_))
        ));
        assert!(matches!(read(b"not der"), Err(PfxFault::Malformed(_))));
    }
}
