//! PKCS#12 (PFX), as Key Vault keeps a certificate with contentType
//! `application/x-pkcs12`: the secret's value is the base64 of a PFX with
//! no password.
//!
//! "No password" comes in two encodings (see `kdf`): the empty password
//! (`00 00`, what OpenSSL and `p12-keystore` write) and the absent one
//! (zero bytes, what Windows and so Key Vault write: verified on a PFX
//! Key Vault returned, `tests/fixtures/certs/keyvault-rsa-selfsigned.pfx.b64`).
//! kvsync checks the MAC itself to learn which one the file uses (without
//! a MAC it tries the empty one, then the absent one) and reads the bags
//! itself: the legacy PKCS#12 ciphers (3DES, RC2: what Key Vault uses)
//! with the PKCS#12 key derivation under that password, PBES2 (PBKDF2 and
//! AES or 3DES: what OpenSSL 3 writes) under the empty password, which
//! PBKDF2 sees the same either way.
//!
//! A PFX is attacker-shaped input that names its own key-derivation cost,
//! and one kvsync process serves every namespace, so nothing is derived
//! before its parameters are inspected:
//! - scrypt is refused outright (Key Vault never writes it);
//! - one derivation may ask for at most [`MAX_ITERATIONS`];
//! - one PFX may cost at most [`MAX_WORK`] iterations in all (the MAC,
//!   every encrypted part, each password tried): everything visible is
//!   summed and refused before the first derivation, and what only
//!   decryption reveals (keys inside encrypted contents) is summed and
//!   charged against the same budget before any of it is derived;
//! - at most [`MAX_BAGS`] bags and encrypted parts.
//!
//! `p12-keystore` is not used to read: it derives as soon as it parses,
//! whatever the parameters inside encrypted contents.

use std::num::NonZeroU32;

use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Tag, Tagged};
use ring::{digest, hmac, pbkdf2};

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
const PBKDF2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.12");
const SCRYPT: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11591.4.11");
const HMAC_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.2.7");
const HMAC_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.2.9");
const HMAC_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.2.10");
const HMAC_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.2.11");
const AES128_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.2");
const AES192_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.22");
const AES256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");
const DES_EDE3_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.3.7");
/// `pbeWithSHAAnd…` (RFC 7292 appendix C): RC4, 3DES and RC2 variants.
const PKCS12_PBE_ARC: &str = "1.2.840.113549.1.12.1.";
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// Most iterations one key derivation (the MAC's, a PBKDF2, a PKCS#12
/// key or IV) may ask for. Key Vault writes 2000, OpenSSL 2048;
/// `p12-keystore` would allow 1,000,000.
pub(super) const MAX_ITERATIONS: u32 = 100_000;
/// Most key-derivation work one PFX may cost, in hash iterations summed
/// over the MAC (each password tried), every encrypted part and every
/// output block (3DES under PKCS#12 derives three: two for the key, one
/// for the IV). Key Vault's own PFX costs about 14,000.
pub(super) const MAX_WORK: u64 = 400_000;
/// Most bags (keys, certificates, anything else) and encrypted parts in
/// one PFX. A certificate chain is a handful.
pub(super) const MAX_BAGS: usize = 64;

pub(super) const REFUSED_SCRYPT: &str = "scrypt key derivation";
pub(super) const REFUSED_ITERATIONS: &str =
    "a key derivation of more than 100,000 iterations (Key Vault writes 2,000)";
pub(super) const REFUSED_WORK: &str = "more than 400,000 key-derivation iterations in all (its MAC \
     and encrypted parts together; Key Vault's own PFX needs about 14,000)";
pub(super) const REFUSED_BAGS: &str = "more than 64 bags (keys, certificates and encrypted parts)";

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

    // Everything visible without decrypting, summed before any derivation.
    let mut inspection = BagReader::new(&[], None);
    walk(&pfx, &mut inspection)?;
    let mac_cost = pfx.mac.as_ref().map(MacData::cost).transpose()?;
    // With a MAC: up to two verifications, one pass over the bags.
    // Without: up to two passes (the empty password, then the absent one).
    let worst = match mac_cost {
        Some(mac) => 2 * mac + inspection.work,
        None => 2 * inspection.work,
    };
    if worst > MAX_WORK {
        return Err(PfxFault::Unsupported(REFUSED_WORK));
    }

    let mut budget = MAX_WORK;
    let empty = kdf::bmp_password("");
    match &pfx.mac {
        Some(mac) => {
            let password: &[u8] = if mac.verifies(pfx.safes, &empty, &mut budget)? {
                &empty
            } else if mac.verifies(pfx.safes, &[], &mut budget)? {
                &[]
            } else {
                return Err(PfxFault::Password);
            };
            read_bags_under(&pfx, password, &mut budget)
        }
        // Without a MAC nothing says which password; try both.
        None => match read_bags_under(&pfx, &empty, &mut budget) {
            Ok(contents) => Ok(contents),
            Err(first @ (PfxFault::Password | PfxFault::Malformed(_))) => {
                match read_bags_under(&pfx, &[], &mut budget) {
                    Ok(contents) => Ok(contents),
                    Err(PfxFault::Malformed(_)) => Err(first),
                    Err(other) => Err(other),
                }
            }
            Err(other) => Err(other),
        },
    }
}

/// Takes `cost` from `budget`, or refuses before the work is done.
fn charge(budget: &mut u64, cost: u64) -> Result<(), PfxFault> {
    *budget = budget
        .checked_sub(cost)
        .ok_or(PfxFault::Unsupported(REFUSED_WORK))?;
    Ok(())
}

/// Reads the bags of `pfx`, decrypting legacy-encrypted parts under
/// `password` (BMPString bytes; empty for the absent password), taking
/// the work from `budget`.
fn read_bags_under(pfx: &Pfx<'_>, password: &[u8], budget: &mut u64) -> Result<Contents, PfxFault> {
    let mut reader = BagReader::new(password, Some(*budget));
    let result = walk(pfx, &mut reader);
    *budget = budget.saturating_sub(reader.work);
    result.map(|()| reader.contents)
}

/// Walks the authenticated safe's parts and their bags.
fn walk(pfx: &Pfx<'_>, reader: &mut BagReader<'_>) -> Result<(), PfxFault> {
    for content_info in asn1::sequence(pfx.safes, NOT_PKCS12)? {
        reader.count_bag()?;
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
                    reader.inspect_then_read_bags(&plain)?;
                }
            }
            _ => {
                return Err(PfxFault::Unsupported(
                    "contents encrypted to a public key rather than a password",
                ));
            }
        }
    }
    Ok(())
}

/// Reads bags, or (without a budget) only inspects them: counts bags and
/// sums the derivation work of what is visible, decrypting nothing.
struct BagReader<'a> {
    /// For the legacy ciphers: BMPString bytes, empty for the absent password.
    password: &'a [u8],
    /// `None`: inspect only. `Some(n)`: decrypt, at most `n` work in all.
    budget: Option<u64>,
    /// Derivation work charged so far.
    work: u64,
    bags: usize,
    contents: Contents,
}

impl<'a> BagReader<'a> {
    fn new(password: &'a [u8], budget: Option<u64>) -> Self {
        Self {
            password,
            budget,
            work: 0,
            bags: 0,
            contents: Contents::default(),
        }
    }

    fn count_bag(&mut self) -> Result<(), PfxFault> {
        self.bags += 1;
        if self.bags > MAX_BAGS {
            return Err(PfxFault::Unsupported(REFUSED_BAGS));
        }
        Ok(())
    }

    fn read_bags(&mut self, der: &[u8]) -> Result<(), PfxFault> {
        for bag in asn1::sequence(der, NOT_PKCS12)? {
            self.count_bag()?;
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
                // CRLs, secrets, nested safe contents: nothing a TLS Secret
                // uses (and never decrypted).
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads bags that decryption revealed, once their derivations are
    /// summed and found within the budget.
    fn inspect_then_read_bags(&mut self, der: &[u8]) -> Result<(), PfxFault> {
        let mut inspection = BagReader::new(&[], None);
        inspection.read_bags(der)?;
        if let Some(budget) = self.budget
            && self.work.saturating_add(inspection.work) > budget
        {
            return Err(PfxFault::Unsupported(REFUSED_WORK));
        }
        self.read_bags(der)
    }

    /// Inspects the scheme and charges its work; then `Some(plaintext)`,
    /// or `None` when only inspecting.
    fn decrypt(
        &mut self,
        algorithm: &AnyRef<'_>,
        data: &[u8],
    ) -> Result<Option<Vec<u8>>, PfxFault> {
        let scheme = Scheme::parse(algorithm)?;
        self.work = self.work.saturating_add(scheme.cost());
        let Some(budget) = self.budget else {
            return Ok(None);
        };
        if self.work > budget {
            return Err(PfxFault::Unsupported(REFUSED_WORK));
        }
        scheme.decrypt(self.password, data).map(Some)
    }
}

/// A password-based encryption scheme, its parameters checked.
enum Scheme<'a> {
    /// `pbeWithSHAAnd…` (RFC 7292 appendix C): the PKCS#12 derivation
    /// with SHA-1, then 3DES or RC2.
    Legacy {
        cipher: LegacyCipher,
        salt: &'a [u8],
        iterations: u32,
    },
    /// PBES2 (RFC 8018) with PBKDF2.
    Pbes2 {
        prf: pbkdf2::Algorithm,
        prf_len: usize,
        salt: &'a [u8],
        iterations: NonZeroU32,
        cipher: Pbes2Cipher,
        iv: &'a [u8],
    },
}

#[derive(Clone, Copy)]
enum LegacyCipher {
    Tdes3,
    Tdes2,
    Rc2(usize),
}

#[derive(Clone, Copy)]
enum Pbes2Cipher {
    Aes(usize),
    Tdes,
}

impl Pbes2Cipher {
    fn key_len(self) -> usize {
        match self {
            Pbes2Cipher::Aes(len) => len,
            Pbes2Cipher::Tdes => 24,
        }
    }
}

impl LegacyCipher {
    fn key_len(self) -> usize {
        match self {
            LegacyCipher::Tdes3 => 24,
            LegacyCipher::Tdes2 => 16,
            LegacyCipher::Rc2(len) => len,
        }
    }
}

/// Refuses an iteration count beyond [`MAX_ITERATIONS`] (and zero).
fn checked_iterations(iterations: u32) -> Result<NonZeroU32, PfxFault> {
    if iterations > MAX_ITERATIONS {
        return Err(PfxFault::Unsupported(REFUSED_ITERATIONS));
    }
    NonZeroU32::new(iterations).ok_or(PfxFault::Malformed(
        "a key derivation has an iteration count of zero",
    ))
}

/// An iteration count as read: too large for 32 bits is too many.
fn iterations_of(any: &AnyRef<'_>) -> Result<u32, PfxFault> {
    if asn1::unsigned(any, NOT_PKCS12)?.len() > 4 {
        return Err(PfxFault::Unsupported(REFUSED_ITERATIONS));
    }
    Ok(asn1::small_uint(any, NOT_PKCS12)?)
}

impl<'a> Scheme<'a> {
    /// Reads an AlgorithmIdentifier, refusing what kvsync will not derive.
    fn parse(algorithm: &AnyRef<'a>) -> Result<Self, PfxFault> {
        let parts = asn1::nested(algorithm, NOT_PKCS12)?;
        let [oid, parameters] = parts.as_slice() else {
            return Err(PfxFault::Malformed(NOT_PKCS12));
        };
        let oid = asn1::oid(oid, NOT_PKCS12)?;
        if oid == PBES2 {
            return Self::parse_pbes2(parameters);
        }
        if !oid.to_string().starts_with(PKCS12_PBE_ARC) {
            return Err(PfxFault::Unsupported(
                "an encryption scheme kvsync cannot decrypt",
            ));
        }
        // The last arc of pkcs-12PbeIds names the cipher.
        let cipher = match oid.arcs().last() {
            Some(3) => LegacyCipher::Tdes3,   // pbeWithSHAAnd3-KeyTripleDES-CBC
            Some(4) => LegacyCipher::Tdes2,   // pbeWithSHAAnd2-KeyTripleDES-CBC
            Some(5) => LegacyCipher::Rc2(16), // pbeWithSHAAnd128BitRC2-CBC
            Some(6) => LegacyCipher::Rc2(5),  // pbeWithSHAAnd40BitRC2-CBC
            _ => return Err(PfxFault::Unsupported("RC4 encryption")),
        };
        // pkcs-12PbeParams ::= SEQUENCE { salt OCTET STRING, iterations INTEGER }
        let parameters = asn1::nested(parameters, NOT_PKCS12)?;
        let [salt, iterations] = parameters.as_slice() else {
            return Err(PfxFault::Malformed(NOT_PKCS12));
        };
        let iterations = checked_iterations(iterations_of(iterations)?)?.get();
        Ok(Scheme::Legacy {
            cipher,
            salt: asn1::octets(salt, NOT_PKCS12)?,
            iterations,
        })
    }

    /// `PBES2-params ::= SEQUENCE { keyDerivationFunc, encryptionScheme }`.
    fn parse_pbes2(parameters: &AnyRef<'a>) -> Result<Self, PfxFault> {
        let parameters = asn1::nested(parameters, NOT_PKCS12)?;
        let [kdf, scheme] = parameters.as_slice() else {
            return Err(PfxFault::Malformed(NOT_PKCS12));
        };
        let kdf = asn1::nested(kdf, NOT_PKCS12)?;
        let [kdf_oid, kdf_parameters] = kdf.as_slice() else {
            return Err(PfxFault::Malformed(NOT_PKCS12));
        };
        match asn1::oid(kdf_oid, NOT_PKCS12)? {
            PBKDF2 => {}
            SCRYPT => return Err(PfxFault::Unsupported(REFUSED_SCRYPT)),
            _ => {
                return Err(PfxFault::Unsupported(
                    "a key-derivation function kvsync does not know",
                ));
            }
        }
        // PBKDF2-params ::= SEQUENCE { salt OCTET STRING (or otherSource),
        //   iterationCount INTEGER, keyLength INTEGER OPTIONAL,
        //   prf AlgorithmIdentifier DEFAULT hmacWithSHA1 }
        let kdf_parameters = asn1::nested(kdf_parameters, NOT_PKCS12)?;
        let [salt, iterations, rest @ ..] = kdf_parameters.as_slice() else {
            return Err(PfxFault::Malformed(NOT_PKCS12));
        };
        if salt.tag() != Tag::OctetString {
            return Err(PfxFault::Unsupported("a PBKDF2 salt from another source"));
        }
        let iterations = checked_iterations(iterations_of(iterations)?)?;
        let mut key_length = None;
        let mut prf_oid = HMAC_SHA1;
        for part in rest {
            match part.tag() {
                Tag::Integer if key_length.is_none() => {
                    key_length = Some(asn1::small_uint(part, NOT_PKCS12)?);
                }
                Tag::Sequence => {
                    let prf = asn1::nested(part, NOT_PKCS12)?;
                    prf_oid = asn1::oid(
                        prf.first().ok_or(PfxFault::Malformed(NOT_PKCS12))?,
                        NOT_PKCS12,
                    )?;
                }
                _ => return Err(PfxFault::Malformed(NOT_PKCS12)),
            }
        }
        let (prf, prf_len) = match prf_oid {
            HMAC_SHA1 => (pbkdf2::PBKDF2_HMAC_SHA1, 20),
            HMAC_SHA256 => (pbkdf2::PBKDF2_HMAC_SHA256, 32),
            HMAC_SHA384 => (pbkdf2::PBKDF2_HMAC_SHA384, 48),
            HMAC_SHA512 => (pbkdf2::PBKDF2_HMAC_SHA512, 64),
            _ => return Err(PfxFault::Unsupported("a PBKDF2 hash kvsync does not know")),
        };
        let scheme = asn1::nested(scheme, NOT_PKCS12)?;
        let [cipher_oid, iv] = scheme.as_slice() else {
            return Err(PfxFault::Malformed(NOT_PKCS12));
        };
        let cipher = match asn1::oid(cipher_oid, NOT_PKCS12)? {
            AES128_CBC => Pbes2Cipher::Aes(16),
            AES192_CBC => Pbes2Cipher::Aes(24),
            AES256_CBC => Pbes2Cipher::Aes(32),
            DES_EDE3_CBC => Pbes2Cipher::Tdes,
            _ => {
                return Err(PfxFault::Unsupported(
                    "an encryption scheme kvsync cannot decrypt",
                ));
            }
        };
        if key_length.is_some_and(|len| usize::try_from(len).ok() != Some(cipher.key_len())) {
            return Err(PfxFault::Malformed(
                "a PBKDF2 key length does not fit its cipher",
            ));
        }
        Ok(Scheme::Pbes2 {
            prf,
            prf_len,
            salt: asn1::octets(salt, NOT_PKCS12)?,
            iterations,
            cipher,
            iv: asn1::octets(iv, NOT_PKCS12)?,
        })
    }

    /// The derivation's work: iterations times output blocks.
    fn cost(&self) -> u64 {
        let blocks = |len: usize, block: usize| len.div_ceil(block) as u64;
        match self {
            Scheme::Legacy {
                cipher, iterations, ..
            } => {
                let sha1 = digest::SHA1_OUTPUT_LEN;
                u64::from(*iterations) * (blocks(cipher.key_len(), sha1) + blocks(8, sha1))
            }
            Scheme::Pbes2 {
                prf_len,
                iterations,
                cipher,
                ..
            } => u64::from(iterations.get()) * blocks(cipher.key_len(), *prf_len),
        }
    }

    /// Decrypts `data`; a legacy scheme under `password` (BMPString bytes;
    /// empty for the absent password), PBES2 under the empty password.
    fn decrypt(&self, password: &[u8], data: &[u8]) -> Result<Vec<u8>, PfxFault> {
        use cbc::cipher::block_padding::Pkcs7;
        use cbc::cipher::{BlockModeDecrypt, KeyIvInit};

        let plain = match *self {
            Scheme::Legacy {
                cipher,
                salt,
                iterations,
            } => {
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
                let key = derive(kdf::Purpose::EncryptionKey, cipher.key_len());
                let iv = derive(kdf::Purpose::Iv, 8);
                match cipher {
                    LegacyCipher::Tdes3 => {
                        cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
                            .map(|c| c.decrypt_padded_vec::<Pkcs7>(data))
                    }
                    LegacyCipher::Tdes2 => {
                        cbc::Decryptor::<des::TdesEde2>::new_from_slices(&key, &iv)
                            .map(|c| c.decrypt_padded_vec::<Pkcs7>(data))
                    }
                    LegacyCipher::Rc2(_) => cbc::Decryptor::<rc2::Rc2>::new_from_slices(&key, &iv)
                        .map(|c| c.decrypt_padded_vec::<Pkcs7>(data)),
                }
            }
            Scheme::Pbes2 {
                prf,
                salt,
                iterations,
                cipher,
                iv,
                ..
            } => {
                // PBKDF2 takes the password's bytes as they are: the empty
                // and the absent password are both zero bytes.
                let mut key = vec![0u8; cipher.key_len()];
                pbkdf2::derive(prf, iterations, salt, &[], &mut key);
                match cipher {
                    Pbes2Cipher::Aes(16) => {
                        cbc::Decryptor::<aes::Aes128>::new_from_slices(&key, iv)
                            .map(|c| c.decrypt_padded_vec::<Pkcs7>(data))
                    }
                    Pbes2Cipher::Aes(24) => {
                        cbc::Decryptor::<aes::Aes192>::new_from_slices(&key, iv)
                            .map(|c| c.decrypt_padded_vec::<Pkcs7>(data))
                    }
                    Pbes2Cipher::Aes(_) => cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, iv)
                        .map(|c| c.decrypt_padded_vec::<Pkcs7>(data)),
                    Pbes2Cipher::Tdes => cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, iv)
                        .map(|c| c.decrypt_padded_vec::<Pkcs7>(data)),
                }
            }
        };
        match plain {
            Ok(Ok(plain)) => Ok(plain),
            // Bad padding: this is not the content's password.
            Ok(Err(_)) => Err(PfxFault::Password),
            Err(_) => Err(PfxFault::Malformed(NOT_PKCS12)),
        }
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
        Ok(Self { safes, mac })
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
            [d, s, i] => (d, s, iterations_of(i)?),
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

    fn algorithms(&self) -> Result<(&'static digest::Algorithm, hmac::Algorithm), PfxFault> {
        Ok(match self.digest_oid {
            SHA1 => (
                &digest::SHA1_FOR_LEGACY_USE_ONLY,
                hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            ),
            SHA256 => (&digest::SHA256, hmac::HMAC_SHA256),
            SHA384 => (&digest::SHA384, hmac::HMAC_SHA384),
            SHA512 => (&digest::SHA512, hmac::HMAC_SHA512),
            _ => {
                return Err(PfxFault::Unsupported(
                    "a MAC algorithm kvsync does not know",
                ));
            }
        })
    }

    /// One verification's work (the key is one hash output: one block),
    /// or the refusal of its parameters.
    fn cost(&self) -> Result<u64, PfxFault> {
        self.algorithms()?;
        Ok(u64::from(checked_iterations(self.iterations)?.get()))
    }

    /// Does the MAC over `covered` verify under `password` (BMPString
    /// bytes; empty for the absent password)? The work comes from `budget`.
    fn verifies(
        &self,
        covered: &[u8],
        password: &[u8],
        budget: &mut u64,
    ) -> Result<bool, PfxFault> {
        let (hash, algorithm) = self.algorithms()?;
        charge(budget, self.cost()?)?;
        let key = kdf::derive(
            hash,
            password,
            self.salt,
            kdf::Purpose::Mac,
            self.iterations,
            hash.output_len(),
        );
        let key = hmac::Key::new(algorithm, &key);
        Ok(hmac::verify(&key, covered, self.digest).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use der::Tag;

    use super::*;
    use crate::certificate::pem;
    use crate::devvault::testcerts::{TestChain, make_chain};
    use p12_keystore::Pkcs12Archive;

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
            let budget = &mut MAX_WORK.clone();
            assert_eq!(
                mac.verifies(pfx.safes, &kdf::bmp_password(""), budget),
                Ok(true)
            );
            assert_eq!(mac.verifies(pfx.safes, &[], budget), Ok(false));
        }
    }

    #[test]
    fn key_vault_pfx_mac_is_under_the_absent_password() {
        let der = b64(KEYVAULT_PFX);
        let pfx = Pfx::parse(&der).unwrap();
        let mac = pfx.mac.as_ref().unwrap();
        let budget = &mut MAX_WORK.clone();
        assert_eq!(mac.verifies(pfx.safes, &[], budget), Ok(true));
        assert_eq!(
            mac.verifies(pfx.safes, &kdf::bmp_password(""), budget),
            Ok(false)
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
        assert_eq!(
            huge.verifies(parsed.safes, &[], &mut MAX_WORK.clone()),
            Err(PfxFault::Unsupported(REFUSED_ITERATIONS))
        );
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
            let contents =
                read_bags_under(&pfx, &kdf::bmp_password(""), &mut MAX_WORK.clone()).unwrap();
            assert_eq!(contents.keys, der_of(&chain.leaf_key_pem), "{algorithm:?}");
            assert_eq!(contents.certs.len(), 3, "{algorithm:?}");
            assert_eq!(
                read_bags_under(&pfx, &[], &mut MAX_WORK.clone()).err(),
                Some(PfxFault::Password)
            );
        }
    }

    // Crafted inputs for the limits: every parameter is inspected and
    // refused before any derivation runs (so these tests are quick; a
    // derivation they let through would cost seconds or a GiB).

    fn int(n: u64) -> Vec<u8> {
        let mut be = n.to_be_bytes().to_vec();
        while be.len() > 1 && be[0] == 0 && be[1] & 0x80 == 0 {
            be.remove(0);
        }
        if be[0] & 0x80 != 0 {
            be.insert(0, 0);
        }
        asn1::tlv(Tag::Integer, &be)
    }

    fn octets(bytes: &[u8]) -> Vec<u8> {
        asn1::tlv(Tag::OctetString, bytes)
    }

    fn algorithm(id: ObjectIdentifier, parameters: &[u8]) -> Vec<u8> {
        asn1::seq(&[&oid(id), parameters])
    }

    fn scrypt(n: u64, r: u64, p: u64) -> Vec<u8> {
        let parameters = asn1::seq(&[&octets(&[1; 16]), &int(n), &int(r), &int(p)]);
        algorithm(SCRYPT, &parameters)
    }

    fn pbkdf2_sha1(iterations: u64) -> Vec<u8> {
        algorithm(PBKDF2, &asn1::seq(&[&octets(&[2; 8]), &int(iterations)]))
    }

    /// PBES2 with `kdf` and AES-256-CBC.
    fn pbes2(kdf: &[u8]) -> Vec<u8> {
        let scheme = algorithm(AES256_CBC, &octets(&[3; 16]));
        algorithm(PBES2, &asn1::seq(&[kdf, &scheme]))
    }

    /// pbeWithSHAAnd3-KeyTripleDES-CBC.
    fn legacy_3des(iterations: u64) -> Vec<u8> {
        algorithm(
            ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.3"),
            &asn1::seq(&[&octets(&[4; 8]), &int(iterations)]),
        )
    }

    /// An EncryptedData ContentInfo.
    fn encrypted(algorithm: &[u8], ciphertext: &[u8]) -> Vec<u8> {
        let implicit = asn1::tlv(
            Tag::ContextSpecific {
                constructed: false,
                number: der::TagNumber(0),
            },
            ciphertext,
        );
        let info = asn1::seq(&[&oid(DATA), algorithm, &implicit]);
        asn1::seq(&[
            &oid(ENCRYPTED_DATA),
            &asn1::context(0, &asn1::seq(&[&int(0), &info])),
        ])
    }

    fn shrouded(algorithm: &[u8]) -> Vec<u8> {
        bag(
            SHROUDED_KEY_BAG,
            &asn1::seq(&[algorithm, &octets(&[5; 32])]),
        )
    }

    fn safe_contents(bags: &[Vec<u8>]) -> Vec<u8> {
        let refs: Vec<&[u8]> = bags.iter().map(Vec::as_slice).collect();
        asn1::seq(&refs)
    }

    /// A PFX of `contents`; without a MAC, or with a SHA-256 MAC of
    /// `mac_iterations` whose digest is wrong (it must never be checked).
    fn pfx_of(contents: &[Vec<u8>], mac_iterations: Option<u64>) -> Vec<u8> {
        let safes = safe_contents(contents);
        let version = int(3);
        let auth_safe = data(&safes);
        let Some(iterations) = mac_iterations else {
            return asn1::seq(&[&version, &auth_safe]);
        };
        let digest_info = asn1::seq(&[
            &algorithm(SHA256, &asn1::tlv(Tag::Null, &[])),
            &octets(&[0; 32]),
        ]);
        let mac = asn1::seq(&[&digest_info, &octets(&[6; 16]), &int(iterations)]);
        asn1::seq(&[&version, &auth_safe, &mac])
    }

    /// `plain` encrypted as Key Vault's bags are (3DES), under the empty
    /// password, one iteration.
    fn legacy_encrypted(plain: &[u8]) -> Vec<u8> {
        use cbc::cipher::block_padding::Pkcs7;
        use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
        let password = kdf::bmp_password("");
        let derive = |purpose, len| {
            kdf::derive(
                &digest::SHA1_FOR_LEGACY_USE_ONLY,
                &password,
                &[4; 8],
                purpose,
                1,
                len,
            )
        };
        let key = derive(kdf::Purpose::EncryptionKey, 24);
        let iv = derive(kdf::Purpose::Iv, 8);
        let ciphertext = cbc::Encryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
            .unwrap()
            .encrypt_padded_vec::<Pkcs7>(plain);
        encrypted(&legacy_3des(1), &ciphertext)
    }

    #[test]
    fn the_reviewers_scrypt_pfx_is_refused_before_deriving() {
        // No MAC; one EncryptedData: PBES2, scrypt N=2^20 r=8 p=16 (1 GiB).
        let der = pfx_of(
            &[encrypted(&pbes2(&scrypt(1 << 20, 8, 16)), &[0; 32])],
            None,
        );
        assert!(der.len() < 300, "{}", der.len());
        assert_eq!(
            read(&der).err(),
            Some(PfxFault::Unsupported(REFUSED_SCRYPT))
        );
        let value =
            crate::value::SecretValue::new(base64::engine::general_purpose::STANDARD.encode(&der));
        assert_eq!(
            crate::certificate::convert(&value, Some(crate::certificate::CONTENT_TYPE_PKCS12)),
            Err(crate::certificate::CertError::PfxUnsupported {
                what: REFUSED_SCRYPT
            })
        );
    }

    #[test]
    fn scrypt_in_a_key_bag_is_refused_plain_or_inside_encrypted_contents() {
        let key = shrouded(&pbes2(&scrypt(1 << 20, 8, 16)));
        let plain = pfx_of(&[data(&safe_contents(std::slice::from_ref(&key)))], None);
        assert_eq!(
            read(&plain).err(),
            Some(PfxFault::Unsupported(REFUSED_SCRYPT))
        );
        // Only decryption shows this one: inspected before it is derived.
        let hidden = pfx_of(&[legacy_encrypted(&safe_contents(&[key]))], None);
        assert_eq!(
            read(&hidden).err(),
            Some(PfxFault::Unsupported(REFUSED_SCRYPT))
        );
    }

    #[test]
    fn too_many_iterations_in_one_derivation_are_refused() {
        let refused = Some(PfxFault::Unsupported(REFUSED_ITERATIONS));
        let over = u64::from(MAX_ITERATIONS) + 1;
        for contents in [
            encrypted(&pbes2(&pbkdf2_sha1(over)), &[0; 32]),
            encrypted(&legacy_3des(1_000_000), &[0; 32]),
            encrypted(&legacy_3des(1 << 40), &[0; 32]),
            data(&safe_contents(&[shrouded(&pbes2(&pbkdf2_sha1(over)))])),
        ] {
            assert_eq!(read(&pfx_of(&[contents], None)).err(), refused);
        }
        // The MAC's own derivation, before it is verified.
        let safes = data(&safe_contents(&[]));
        assert_eq!(
            read(&pfx_of(std::slice::from_ref(&safes), Some(over))).err(),
            refused
        );
        assert_eq!(read(&pfx_of(&[safes], Some(1 << 40))).err(), refused);
    }

    #[test]
    fn too_much_work_in_all_is_refused_before_the_first_derivation() {
        // 60 bags of 3DES at 3,000 iterations (9,000 work each: 540,000)
        // under a MAC whose digest is wrong: refused as work, not as a
        // password, so nothing was derived.
        let bags: Vec<Vec<u8>> = (0..60).map(|_| shrouded(&legacy_3des(3_000))).collect();
        let der = pfx_of(&[data(&safe_contents(&bags))], Some(2_000));
        assert_eq!(read(&der).err(), Some(PfxFault::Unsupported(REFUSED_WORK)));
        // Each within the per-derivation cap; a MAC at the cap and one
        // part at the cap are within the budget only once.
        let der = pfx_of(&[encrypted(&legacy_3des(100_000), &[0; 32])], Some(100_000));
        assert_eq!(read(&der).err(), Some(PfxFault::Unsupported(REFUSED_WORK)));
    }

    #[test]
    fn too_much_work_inside_encrypted_contents_is_refused_before_deriving_it() {
        // Visible: one cheap 3DES part. Inside it: three keys of PBKDF2-SHA1
        // at the cap for AES-256 (two blocks: 200,000 work each).
        let keys: Vec<Vec<u8>> = (0..3)
            .map(|_| shrouded(&pbes2(&pbkdf2_sha1(u64::from(MAX_ITERATIONS)))))
            .collect();
        let der = pfx_of(&[legacy_encrypted(&safe_contents(&keys))], None);
        assert_eq!(read(&der).err(), Some(PfxFault::Unsupported(REFUSED_WORK)));
    }

    #[test]
    fn too_many_bags_are_refused() {
        let cert_bag = |_| {
            bag(
                CERT_BAG,
                &asn1::seq(&[&oid(X509_CERTIFICATE), &asn1::context(0, &octets(&[0; 4]))]),
            )
        };
        let bags: Vec<Vec<u8>> = (0..MAX_BAGS).map(cert_bag).collect();
        let der = pfx_of(&[data(&safe_contents(&bags))], None);
        assert_eq!(read(&der).err(), Some(PfxFault::Unsupported(REFUSED_BAGS)));
        let parts: Vec<Vec<u8>> = (0..=MAX_BAGS).map(|_| data(&safe_contents(&[]))).collect();
        assert_eq!(
            read(&pfx_of(&parts, None)).err(),
            Some(PfxFault::Unsupported(REFUSED_BAGS))
        );
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
