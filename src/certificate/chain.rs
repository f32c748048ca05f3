//! Certificates in the order a TLS server sends them: the leaf, then each
//! issuer in turn (RFC 8446 §4.4.2), whatever order the secret held them in.

use der::Decode;
use x509_cert::Certificate;

/// A certificate and its DER, as read.
pub(super) struct Cert {
    pub(super) der: Vec<u8>,
    pub(super) parsed: Certificate,
}

impl Cert {
    /// `None` when `der` is not an X.509 certificate.
    pub(super) fn parse(der: Vec<u8>) -> Option<Self> {
        let parsed = Certificate::from_der(&der).ok()?;
        Some(Self { der, parsed })
    }

    fn subject(&self) -> &x509_cert::name::Name {
        self.parsed.tbs_certificate().subject()
    }

    fn issuer(&self) -> &x509_cert::name::Name {
        self.parsed.tbs_certificate().issuer()
    }

    fn self_issued(&self) -> bool {
        self.subject() == self.issuer()
    }

    /// Did this certificate issue `other` (by name; signatures are the
    /// workload's TLS stack's business)?
    fn issued(&self, other: &Cert) -> bool {
        !other.self_issued() && other.issuer() == self.subject()
    }
}

/// Parses every certificate, dropping exact duplicates (a bundle that holds
/// the intermediate twice should not send it twice). `Err` holds how many
/// certificates were read before one that is not X.509.
pub(super) fn parse_all(ders: Vec<Vec<u8>>) -> Result<Vec<Cert>, usize> {
    let mut out: Vec<Cert> = Vec::with_capacity(ders.len());
    for der in ders {
        if out.iter().any(|c| c.der == der) {
            continue;
        }
        let index = out.len();
        out.push(Cert::parse(der).ok_or(index)?);
    }
    Ok(out)
}

/// The leaf when the key cannot tell: among `candidates`, the first
/// certificate that issued no other certificate in the set.
pub(super) fn leaf_by_position(certs: &[Cert], candidates: &[usize]) -> Option<usize> {
    candidates
        .iter()
        .copied()
        .find(|&i| !certs.iter().any(|other| certs[i].issued(other)))
        .or_else(|| candidates.first().copied())
}

/// `certs` reordered: `leaf`, then its issuer, its issuer's issuer, … as far
/// as the set goes (a self-signed root ends the path, and is there only if
/// it was in the set); certificates on no path follow in their original
/// order.
pub(super) fn ordered(certs: Vec<Cert>, leaf: usize) -> Vec<Cert> {
    let mut order = vec![leaf];
    let mut current = leaf;
    while !certs[current].self_issued() {
        let next =
            (0..certs.len()).find(|&i| !order.contains(&i) && certs[i].issued(&certs[current]));
        match next {
            Some(i) => {
                order.push(i);
                current = i;
            }
            None => break,
        }
    }
    order.extend(
        (0..certs.len())
            .filter(|i| !order.contains(i))
            .collect::<Vec<_>>(),
    );
    let mut slots: Vec<Option<Cert>> = certs.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}
