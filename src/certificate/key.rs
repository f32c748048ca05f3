//! The private key as kvsync writes it: PKCS#8 v1 (`BEGIN PRIVATE KEY`),
//! whatever form it arrived in (PKCS#8, PKCS#1 `RSA PRIVATE KEY`, SEC1
//! `EC PRIVATE KEY`), and which certificate's public key it belongs to.

use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Tag};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use super::asn1::{self, DerFault};

pub(super) const RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub(super) const EC_PUBLIC_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Why a key could not be read. The caller adds where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyFault {
    /// The DER is not the structure its label or bag promised.
    Malformed(&'static str),
    /// Readable, but not a key kvsync can write as PKCS#8.
    Unsupported(&'static str),
}

impl From<DerFault> for KeyFault {
    fn from(f: DerFault) -> Self {
        KeyFault::Malformed(f.what)
    }
}

/// What the private key says about its public half, for finding the leaf.
#[derive(Clone, PartialEq, Eq)]
enum PublicHalf {
    /// PKCS#1 always carries the modulus and the public exponent.
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    },
    /// SEC1 carries the public point only optionally (`[1] publicKey`).
    Ec {
        curve: ObjectIdentifier,
        point: Option<Vec<u8>>,
    },
    Ed25519 {
        public: Vec<u8>,
    },
    /// An algorithm kvsync does not look into.
    Unknown,
}

/// A private key, held as the parts of a PKCS#8 `PrivateKeyInfo`.
/// No `Debug`: it would print the key.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct PrivateKey {
    /// `AlgorithmIdentifier`, DER.
    algorithm: Vec<u8>,
    algorithm_oid: ObjectIdentifier,
    /// The `privateKey` OCTET STRING's contents (PKCS#1, SEC1, …).
    private: Vec<u8>,
    public: PublicHalf,
}

impl PrivateKey {
    /// From PKCS#8 (`PRIVATE KEY`, or a PKCS#12 key bag), v1 or v2.
    /// Attributes and a v2 public key are dropped: the output is v1.
    pub(super) fn from_pkcs8(der: &[u8]) -> Result<Self, KeyFault> {
        const WHAT: &str = "a PKCS#8 private key is not valid DER";
        let parts = asn1::sequence(der, WHAT)?;
        let [version, algorithm, private, rest @ ..] = parts.as_slice() else {
            return Err(KeyFault::Malformed(WHAT));
        };
        if asn1::small_uint(version, WHAT)? > 1 {
            return Err(KeyFault::Unsupported("a PKCS#8 version other than 1 or 2"));
        }
        let alg_parts = asn1::nested(algorithm, WHAT)?;
        let algorithm_oid = asn1::oid(alg_parts.first().ok_or(KeyFault::Malformed(WHAT))?, WHAT)?;
        let private = asn1::octets(private, WHAT)?.to_vec();
        let public = match algorithm_oid {
            RSA_ENCRYPTION => rsa_public_half(&private)?,
            EC_PUBLIC_KEY => {
                let curve = alg_parts
                    .get(1)
                    .and_then(|p| asn1::oid(p, WHAT).ok())
                    .ok_or(KeyFault::Unsupported(
                        "an EC key without a named curve (explicit curve parameters)",
                    ))?;
                PublicHalf::Ec {
                    curve,
                    point: sec1_point(&private)?,
                }
            }
            ED25519 => {
                // v2 may carry the public key as `[1] IMPLICIT BIT STRING`;
                // otherwise it follows from the seed.
                let embedded = rest
                    .iter()
                    .find(|a| asn1::is_context(a, 1))
                    .and_then(|a| a.value().split_first())
                    .filter(|(unused, _)| **unused == 0)
                    .map(|(_, bits)| bits.to_vec());
                match embedded {
                    Some(public) => PublicHalf::Ed25519 { public },
                    None => ed25519_public(&private).unwrap_or(PublicHalf::Unknown),
                }
            }
            _ => PublicHalf::Unknown,
        };
        Ok(Self {
            algorithm: asn1::encoded(algorithm),
            algorithm_oid,
            private,
            public,
        })
    }

    /// From PKCS#1 `RSAPrivateKey` (`RSA PRIVATE KEY`): wrapped in PKCS#8
    /// with `rsaEncryption` and NULL parameters (RFC 8017 appendix A.1).
    pub(super) fn from_pkcs1(der: &[u8]) -> Result<Self, KeyFault> {
        let public = rsa_public_half(der)?;
        let algorithm = asn1::seq(&[
            &asn1::encode_oid(&RSA_ENCRYPTION),
            &asn1::tlv(Tag::Null, &[]),
        ]);
        Ok(Self {
            algorithm,
            algorithm_oid: RSA_ENCRYPTION,
            private: der.to_vec(),
            public,
        })
    }

    /// From SEC1 `ECPrivateKey` (`EC PRIVATE KEY`, RFC 5915): the curve
    /// named in its `[0] parameters` moves into the PKCS#8 algorithm
    /// identifier (as OpenSSL writes PKCS#8), the rest stays.
    pub(super) fn from_sec1(der: &[u8]) -> Result<Self, KeyFault> {
        const WHAT: &str = "an EC PRIVATE KEY is not valid SEC1 DER";
        let ec = Sec1::parse(der)?;
        let curve = ec
            .parameters
            .as_ref()
            .and_then(|p| asn1::elements(p.value(), WHAT).ok())
            .and_then(|inner| inner.first().and_then(|o| asn1::oid(o, WHAT).ok()))
            .ok_or(KeyFault::Unsupported(
                "an EC PRIVATE KEY that names no curve (kvsync needs a named curve such as P-256)",
            ))?;
        let point = ec.point()?;
        Ok(Self {
            algorithm: ec_algorithm(&curve),
            algorithm_oid: EC_PUBLIC_KEY,
            private: ec.encode_without_parameters(point.as_deref()),
            public: PublicHalf::Ec { curve, point },
        })
    }

    /// PKCS#8 v1 DER: version 0, algorithm, private key; nothing else.
    pub(super) fn to_pkcs8_der(&self) -> Vec<u8> {
        asn1::seq(&[
            &asn1::tlv(Tag::Integer, &[0]),
            &self.algorithm,
            &asn1::tlv(Tag::OctetString, &self.private),
        ])
    }

    /// Does this key belong to the certificate with `spki`? `None` when
    /// kvsync cannot tell (an algorithm it does not look into, or an EC
    /// key without its public point on a curve `ring` does not have).
    pub(super) fn matches(&self, spki: &SubjectPublicKeyInfoOwned) -> Option<bool> {
        let cert_bits = spki.subject_public_key.raw_bytes();
        match &self.public {
            PublicHalf::Rsa { modulus, exponent } => {
                if spki.algorithm.oid != RSA_ENCRYPTION {
                    return Some(false);
                }
                Some(
                    rsa_public_key(cert_bits).is_some_and(|(n, e)| n == *modulus && e == *exponent),
                )
            }
            PublicHalf::Ec { curve, point } => {
                let cert_curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
                if spki.algorithm.oid != EC_PUBLIC_KEY || cert_curve != Some(*curve) {
                    return Some(false);
                }
                match point {
                    Some(point) => Some(point.as_slice() == cert_bits),
                    None => self.ec_point_check(curve, cert_bits),
                }
            }
            PublicHalf::Ed25519 { public } => {
                Some(spki.algorithm.oid == ED25519 && public.as_slice() == cert_bits)
            }
            PublicHalf::Unknown => {
                // Another algorithm cannot be this key's; the same one
                // kvsync cannot compare.
                (spki.algorithm.oid != self.algorithm_oid).then_some(false)
            }
        }
    }

    /// The key with the leaf's public point written into its SEC1
    /// `[1] publicKey` when it lacked one: `ring` (so rustls) refuses an
    /// EC key without it. Called only once the key is known to match.
    pub(super) fn completed_for(self, spki: &SubjectPublicKeyInfoOwned) -> Self {
        match &self.public {
            PublicHalf::Ec { curve, point: None } => {
                let cert_point = spki.subject_public_key.raw_bytes().to_vec();
                match self.with_point(*curve, &cert_point) {
                    Ok(completed) => completed,
                    Err(_) => self,
                }
            }
            _ => self,
        }
    }

    fn with_point(&self, curve: ObjectIdentifier, point: &[u8]) -> Result<Self, KeyFault> {
        let ec = Sec1::parse(&self.private)?;
        Ok(Self {
            algorithm: self.algorithm.clone(),
            algorithm_oid: self.algorithm_oid,
            private: ec.encode_without_parameters(Some(point)),
            public: PublicHalf::Ec {
                curve,
                point: Some(point.to_vec()),
            },
        })
    }

    /// For an EC key without its public point: let `ring` derive the point
    /// from the private scalar and compare (it refuses inconsistent pairs).
    fn ec_point_check(&self, curve: &ObjectIdentifier, cert_point: &[u8]) -> Option<bool> {
        let alg: &'static ring::signature::EcdsaSigningAlgorithm = match *curve {
            P256 => &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            P384 => &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            _ => return None,
        };
        let candidate = self.with_point(*curve, cert_point).ok()?;
        let rng = ring::rand::SystemRandom::new();
        Some(
            ring::signature::EcdsaKeyPair::from_pkcs8(alg, &candidate.to_pkcs8_der(), &rng).is_ok(),
        )
    }
}

fn ec_algorithm(curve: &ObjectIdentifier) -> Vec<u8> {
    asn1::seq(&[&asn1::encode_oid(&EC_PUBLIC_KEY), &asn1::encode_oid(curve)])
}

/// `RSAPrivateKey ::= SEQUENCE { version, modulus, publicExponent, … }`.
fn rsa_public_half(der: &[u8]) -> Result<PublicHalf, KeyFault> {
    const WHAT: &str = "an RSA private key is not valid PKCS#1 DER";
    let parts = asn1::sequence(der, WHAT)?;
    if parts.len() < 9 {
        return Err(KeyFault::Malformed(WHAT));
    }
    Ok(PublicHalf::Rsa {
        modulus: asn1::unsigned(&parts[1], WHAT)?.to_vec(),
        exponent: asn1::unsigned(&parts[2], WHAT)?.to_vec(),
    })
}

/// `RSAPublicKey ::= SEQUENCE { modulus, publicExponent }`, as in an RSA
/// certificate's subjectPublicKey.
fn rsa_public_key(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    const WHAT: &str = "RSA public key";
    let parts = asn1::sequence(der, WHAT).ok()?;
    let [n, e] = parts.as_slice() else {
        return None;
    };
    Some((
        asn1::unsigned(n, WHAT).ok()?.to_vec(),
        asn1::unsigned(e, WHAT).ok()?.to_vec(),
    ))
}

fn sec1_point(der: &[u8]) -> Result<Option<Vec<u8>>, KeyFault> {
    Sec1::parse(der)?.point()
}

/// Ed25519's PKCS#8 private key is an OCTET STRING holding the 32-byte
/// seed (RFC 8410); the public key follows from it.
fn ed25519_public(private: &[u8]) -> Option<PublicHalf> {
    let seed = AnyRef::from_der(private).ok()?;
    let seed = asn1::octets(&seed, "Ed25519 seed").ok()?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
    use ring::signature::KeyPair as _;
    Some(PublicHalf::Ed25519 {
        public: pair.public_key().as_ref().to_vec(),
    })
}

/// `ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING,
/// [0] parameters OPTIONAL, [1] publicKey BIT STRING OPTIONAL }`.
struct Sec1<'a> {
    scalar: &'a [u8],
    parameters: Option<AnyRef<'a>>,
    public_key: Option<AnyRef<'a>>,
}

impl<'a> Sec1<'a> {
    fn parse(der: &'a [u8]) -> Result<Self, KeyFault> {
        const WHAT: &str = "an EC private key is not valid SEC1 DER";
        let parts = asn1::sequence(der, WHAT)?;
        let [version, scalar, rest @ ..] = parts.as_slice() else {
            return Err(KeyFault::Malformed(WHAT));
        };
        if asn1::small_uint(version, WHAT)? != 1 {
            return Err(KeyFault::Malformed(WHAT));
        }
        Ok(Self {
            scalar: asn1::octets(scalar, WHAT)?,
            parameters: rest.iter().find(|a| asn1::is_context(a, 0)).copied(),
            public_key: rest.iter().find(|a| asn1::is_context(a, 1)).copied(),
        })
    }

    /// The public point from `[1] publicKey` (a BIT STRING without unused
    /// bits), if present.
    fn point(&self) -> Result<Option<Vec<u8>>, KeyFault> {
        const WHAT: &str = "an EC private key's public key is not a valid BIT STRING";
        let Some(wrapper) = &self.public_key else {
            return Ok(None);
        };
        let inner = asn1::elements(wrapper.value(), WHAT)?;
        let [bits] = inner.as_slice() else {
            return Err(KeyFault::Malformed(WHAT));
        };
        asn1::expect_tag(bits, Tag::BitString, WHAT)?;
        match bits.value().split_first() {
            Some((0, point)) => Ok(Some(point.to_vec())),
            _ => Err(KeyFault::Malformed(WHAT)),
        }
    }

    /// Re-encoded without `[0] parameters` (they live in the PKCS#8
    /// algorithm identifier), with `point` as `[1] publicKey`.
    fn encode_without_parameters(&self, point: Option<&[u8]>) -> Vec<u8> {
        let version = asn1::tlv(Tag::Integer, &[1]);
        let scalar = asn1::tlv(Tag::OctetString, self.scalar);
        let public = point.map(|p| {
            let mut bits = Vec::with_capacity(p.len() + 1);
            bits.push(0);
            bits.extend_from_slice(p);
            asn1::context(1, &asn1::tlv(Tag::BitString, &bits))
        });
        match public {
            Some(public) => asn1::seq(&[&version, &scalar, &public]),
            None => asn1::seq(&[&version, &scalar]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    const RSA_PKCS8: &str = include_str!("../../tests/fixtures/certs/rsa-2048.pkcs8.pem");
    const RSA_PKCS1: &str = include_str!("../../tests/fixtures/certs/rsa-2048.pkcs1.pem");
    const EC_PKCS8: &str = include_str!("../../tests/fixtures/certs/ec-p256.pkcs8.pem");
    const EC_SEC1: &str = include_str!("../../tests/fixtures/certs/ec-p256.sec1.pem");

    #[test]
    fn pkcs1_wraps_into_the_pkcs8_openssl_writes() {
        let converted = PrivateKey::from_pkcs1(&pem_der(RSA_PKCS1)).unwrap();
        assert_eq!(converted.to_pkcs8_der(), pem_der(RSA_PKCS8));
    }

    #[test]
    fn sec1_wraps_into_the_pkcs8_openssl_writes() {
        let converted = PrivateKey::from_sec1(&pem_der(EC_SEC1)).unwrap();
        assert_eq!(converted.to_pkcs8_der(), pem_der(EC_PKCS8));
        assert_eq!(converted.algorithm_oid, EC_PUBLIC_KEY);
    }

    #[test]
    fn pkcs8_round_trips_unchanged_when_already_v1_without_attributes() {
        for pem in [RSA_PKCS8, EC_PKCS8] {
            let key = PrivateKey::from_pkcs8(&pem_der(pem)).unwrap();
            assert_eq!(key.to_pkcs8_der(), pem_der(pem));
        }
    }

    #[test]
    fn pkcs8_attributes_are_dropped() {
        let der = pem_der(RSA_PKCS8);
        let parts = asn1::sequence(&der, "t").unwrap();
        // [0] IMPLICIT SET OF Attribute, here one empty-valued attribute.
        let attribute = asn1::seq(&[
            &asn1::encode_oid(&ObjectIdentifier::new_unwrap("2.5.29.15")),
            &asn1::tlv(Tag::Set, &[]),
        ]);
        let attributes = asn1::context(0, &attribute);
        let with_attributes = asn1::seq(&[
            &asn1::encoded(&parts[0]),
            &asn1::encoded(&parts[1]),
            &asn1::encoded(&parts[2]),
            &attributes,
        ]);
        let key = PrivateKey::from_pkcs8(&with_attributes).unwrap();
        assert_eq!(key.to_pkcs8_der(), der);
    }

    #[test]
    fn ec_key_without_public_point_is_completed_and_checked_by_ring() {
        let full = PrivateKey::from_sec1(&pem_der(EC_SEC1)).unwrap();
        let PublicHalf::Ec {
            point: Some(point),
            curve,
        } = full.public.clone()
        else {
            panic!("fixture has a public point");
        };
        let bare = Sec1::parse(&full.private)
            .unwrap()
            .encode_without_parameters(None);
        let bare_pkcs8 = asn1::seq(&[
            &asn1::tlv(Tag::Integer, &[0]),
            &ec_algorithm(&curve),
            &asn1::tlv(Tag::OctetString, &bare),
        ]);
        let key = PrivateKey::from_pkcs8(&bare_pkcs8).unwrap();
        let spki = |point: &[u8]| SubjectPublicKeyInfoOwned {
            algorithm: x509_cert::spki::AlgorithmIdentifierOwned {
                oid: EC_PUBLIC_KEY,
                parameters: Some(der::Any::encode_from(&curve).unwrap()),
            },
            subject_public_key: der::asn1::BitString::from_bytes(point).unwrap(),
        };
        assert_eq!(key.matches(&spki(&point)), Some(true));
        let mut other = point.clone();
        other[10] ^= 1;
        assert_eq!(key.matches(&spki(&other)), Some(false));
        assert_eq!(
            key.completed_for(&spki(&point)).to_pkcs8_der(),
            full.to_pkcs8_der()
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(matches!(
            PrivateKey::from_pkcs8(b"\x30\x03\x02\x01"),
            Err(KeyFault::Malformed(_))
        ));
        assert!(matches!(
            PrivateKey::from_pkcs1(&[0x30, 0x00]),
            Err(KeyFault::Malformed(_))
        ));
        assert!(matches!(
            PrivateKey::from_sec1(&[0x04, 0x00]),
            Err(KeyFault::Malformed(_))
        ));
    }
}
