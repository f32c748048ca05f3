//! The PKCS#12 key derivation (RFC 7292 appendix B.2), for the one thing
//! `p12-keystore` cannot do: use the *absent* password.
//!
//! PKCS#12 turns a password into bytes as BMPString plus a two-byte NUL
//! terminator, so the empty password `""` is `00 00`. An absent ("null")
//! password is zero bytes. They derive different keys. Windows, and so Key
//! Vault, write a certificate's PFX with the absent password; OpenSSL and
//! .NET try both when told "no password"; `p12-keystore` takes a `&str` and
//! always adds the terminator, so it can only try `""`.

use ring::digest;

/// What the derived bytes are for (RFC 7292 B.3: the "ID" byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Key for a PKCS#12 PBE cipher.
    EncryptionKey = 1,
    /// Initialisation vector for a PKCS#12 PBE cipher.
    Iv = 2,
    /// Key for the MAC over the authenticated safe.
    Mac = 3,
}

/// RFC 7292 appendix B.2 with `hash`, over `password` as given (already
/// BMPString-encoded; empty for the absent password).
pub(super) fn derive(
    hash: &'static digest::Algorithm,
    password: &[u8],
    salt: &[u8],
    purpose: Purpose,
    iterations: u32,
    len: usize,
) -> Vec<u8> {
    let v = hash.block_len();
    let u = hash.output_len();
    // S and P: salt and password, each repeated to a multiple of v bytes
    // (empty stays empty); I = S || P.
    let repeat = |x: &[u8]| -> Vec<u8> {
        if x.is_empty() {
            return Vec::new();
        }
        let n = v * x.len().div_ceil(v);
        x.iter().copied().cycle().take(n).collect()
    };
    let mut i_blocks = repeat(salt);
    i_blocks.extend(repeat(password));
    let diversifier = vec![purpose as u8; v];

    let mut out = Vec::with_capacity(len + u);
    loop {
        let mut ctx = digest::Context::new(hash);
        ctx.update(&diversifier);
        ctx.update(&i_blocks);
        let mut a = ctx.finish();
        for _ in 1..iterations.max(1) {
            a = digest::digest(hash, a.as_ref());
        }
        let a = a.as_ref();
        out.extend_from_slice(a);
        if out.len() >= len {
            out.truncate(len);
            return out;
        }
        // I_j = (I_j + B + 1) mod 2^(8v), for each v-byte block I_j,
        // where B is A repeated to v bytes.
        let b: Vec<u8> = a.iter().copied().cycle().take(v).collect();
        for block in i_blocks.chunks_mut(v) {
            let mut carry = 1u16;
            for (x, y) in block.iter_mut().zip(&b).rev() {
                let sum = u16::from(*x) + u16::from(*y) + carry;
                *x = sum as u8;
                carry = sum >> 8;
            }
        }
    }
}

/// `password` as PKCS#12 wants it: UTF-16BE plus the NUL terminator.
pub(super) fn bmp_password(password: &str) -> Vec<u8> {
    let mut out: Vec<u8> = password.encode_utf16().flat_map(u16::to_be_bytes).collect();
    out.extend([0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The derivation is checked against independent implementations in
    // `pfx`'s tests: MACs written by `p12-keystore` (RustCrypto `pkcs12`)
    // verify with it, and so does Key Vault's own PFX with the absent
    // password. Here: its properties.

    #[test]
    fn longer_output_extends_shorter_output() {
        let hash = &digest::SHA1_FOR_LEGACY_USE_ONLY;
        let short = derive(hash, &bmp_password("pw"), b"salty", Purpose::Mac, 3, 20);
        let long = derive(hash, &bmp_password("pw"), b"salty", Purpose::Mac, 3, 50);
        assert_eq!(&long[..20], &short[..]);
        assert_eq!(long.len(), 50);
    }

    #[test]
    fn empty_and_absent_passwords_derive_different_keys() {
        let hash = &digest::SHA256;
        let empty = derive(hash, &bmp_password(""), b"salt", Purpose::Mac, 2, 32);
        let absent = derive(hash, &[], b"salt", Purpose::Mac, 2, 32);
        assert_eq!(bmp_password(""), [0, 0]);
        assert_ne!(empty, absent);
    }
}
