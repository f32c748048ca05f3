//! AES-CBC decryption (FIPS 197, SP 800-38A), for PBES2-encrypted PFX
//! contents.
//!
//! Why by hand: kvsync must see what is inside a PBES2-encrypted part of a
//! PFX (its bags carry key-derivation parameters of their own, which are
//! checked before any derivation runs), and `p12-keystore` decrypts and
//! derives in one step. `ring` has no AES-CBC and `aes` is not a direct
//! dependency. The key here derives from the PFX's empty password, which
//! anyone holding the file can derive too, so this table-based
//! implementation's timing reveals nothing secret. Checked against the
//! FIPS 197 vectors below and against what `p12-keystore` encrypts (in
//! `pfx`'s tests).

use std::sync::OnceLock;

struct Tables {
    sbox: [u8; 256],
    inv_sbox: [u8; 256],
}

fn xtime(x: u8) -> u8 {
    (x << 1) ^ if x & 0x80 != 0 { 0x1b } else { 0 }
}

fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        a = xtime(a);
        b >>= 1;
    }
    product
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut sbox = [0u8; 256];
        let mut inv_sbox = [0u8; 256];
        for x in 0..=255u8 {
            // The multiplicative inverse (x^254; 0 for 0), then the affine map.
            let mut inverse = 1u8;
            for _ in 0..254 {
                inverse = mul(inverse, x);
            }
            let s = inverse
                ^ inverse.rotate_left(1)
                ^ inverse.rotate_left(2)
                ^ inverse.rotate_left(3)
                ^ inverse.rotate_left(4)
                ^ 0x63;
            sbox[usize::from(x)] = s;
            inv_sbox[usize::from(s)] = x;
        }
        Tables { sbox, inv_sbox }
    })
}

/// The expanded key: 4 × (rounds + 1) words, each 4 bytes.
fn expand(key: &[u8], sbox: &[u8; 256]) -> Option<Vec<[u8; 4]>> {
    let nk = match key.len() {
        16 | 24 | 32 => key.len() / 4,
        _ => return None,
    };
    let rounds = nk + 6;
    let mut w: Vec<[u8; 4]> = key.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
    let mut rcon = 1u8;
    for i in nk..4 * (rounds + 1) {
        let mut t = w[i - 1];
        if i % nk == 0 {
            t = [t[1], t[2], t[3], t[0]].map(|b| sbox[usize::from(b)]);
            t[0] ^= rcon;
            rcon = xtime(rcon);
        } else if nk > 6 && i % nk == 4 {
            t = t.map(|b| sbox[usize::from(b)]);
        }
        let prev = w[i - nk];
        w.push([
            prev[0] ^ t[0],
            prev[1] ^ t[1],
            prev[2] ^ t[2],
            prev[3] ^ t[3],
        ]);
    }
    Some(w)
}

fn add_round_key(state: &mut [u8; 16], words: &[[u8; 4]]) {
    for (c, word) in words.iter().enumerate() {
        for r in 0..4 {
            state[4 * c + r] ^= word[r];
        }
    }
}

fn inv_shift_rows_sub_bytes(state: &mut [u8; 16], inv_sbox: &[u8; 256]) {
    let old = *state;
    for r in 0..4 {
        for c in 0..4 {
            state[4 * ((c + r) % 4) + r] = inv_sbox[usize::from(old[4 * c + r])];
        }
    }
}

fn inv_mix_columns(state: &mut [u8; 16]) {
    for c in 0..4 {
        let a = [
            state[4 * c],
            state[4 * c + 1],
            state[4 * c + 2],
            state[4 * c + 3],
        ];
        for r in 0..4 {
            state[4 * c + r] = mul(a[r], 14)
                ^ mul(a[(r + 1) % 4], 11)
                ^ mul(a[(r + 2) % 4], 13)
                ^ mul(a[(r + 3) % 4], 9);
        }
    }
}

fn decrypt_block(words: &[[u8; 4]], inv_sbox: &[u8; 256], block: &mut [u8; 16]) {
    let rounds = words.len() / 4 - 1;
    add_round_key(block, &words[4 * rounds..]);
    for round in (1..rounds).rev() {
        inv_shift_rows_sub_bytes(block, inv_sbox);
        add_round_key(block, &words[4 * round..4 * round + 4]);
        inv_mix_columns(block);
    }
    inv_shift_rows_sub_bytes(block, inv_sbox);
    add_round_key(block, &words[..4]);
}

/// Why CBC decryption failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CbcFault {
    /// Key or IV of the wrong size, or data not whole blocks.
    Shape,
    /// The PKCS#7 padding is wrong: most likely the wrong key.
    Padding,
}

/// AES-CBC decryption with PKCS#7 padding removed; `key` of 16, 24 or 32
/// bytes, `iv` of 16.
pub(super) fn decrypt_cbc(key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>, CbcFault> {
    let mut out = decrypt_cbc_unpadded(key, iv, data)?;
    let pad = usize::from(*out.last().unwrap_or(&0));
    if pad == 0
        || pad > 16
        || out[out.len() - pad..]
            .iter()
            .any(|b| usize::from(*b) != pad)
    {
        return Err(CbcFault::Padding);
    }
    out.truncate(out.len() - pad);
    Ok(out)
}

fn decrypt_cbc_unpadded(key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>, CbcFault> {
    let tables = tables();
    let words = expand(key, &tables.sbox).ok_or(CbcFault::Shape)?;
    let mut previous: [u8; 16] = iv.try_into().map_err(|_| CbcFault::Shape)?;
    if data.is_empty() || !data.len().is_multiple_of(16) {
        return Err(CbcFault::Shape);
    }
    let mut out = Vec::with_capacity(data.len());
    for chunk in data.chunks_exact(16) {
        let cipher: [u8; 16] = chunk.try_into().map_err(|_| CbcFault::Shape)?;
        let mut block = cipher;
        decrypt_block(&words, &tables.inv_sbox, &mut block);
        out.extend(block.iter().zip(&previous).map(|(b, p)| b ^ p));
        previous = cipher;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sbox_matches_fips_197() {
        let t = tables();
        assert_eq!(t.sbox[0x00], 0x63);
        assert_eq!(t.sbox[0x53], 0xed);
        assert_eq!(t.sbox[0xff], 0x16);
        assert_eq!(t.inv_sbox[0x63], 0x00);
    }

    #[test]
    fn fips_197_appendix_c_vectors_decrypt() {
        let plain = hex("00112233445566778899aabbccddeeff");
        for (key, cipher) in [
            (
                "000102030405060708090a0b0c0d0e0f",
                "69c4e0d86a7b0430d8cdb78070b4c55a",
            ),
            (
                "000102030405060708090a0b0c0d0e0f1011121314151617",
                "dda97ca4864cdfe06eaf70a0ec0d7191",
            ),
            (
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "8ea2b7ca516745bfeafc49904b496089",
            ),
        ] {
            let words = expand(&hex(key), &tables().sbox).unwrap();
            let mut block: [u8; 16] = hex(cipher).try_into().unwrap();
            decrypt_block(&words, &tables().inv_sbox, &mut block);
            assert_eq!(block.to_vec(), plain, "key {key}");
        }
    }

    #[test]
    fn sp_800_38a_cbc_vector_decrypts() {
        // F.2.2 CBC-AES128.Decrypt, its first two blocks; they are not
        // PKCS#7-padded, so the padded form refuses them.
        let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
        let iv = hex("000102030405060708090a0b0c0d0e0f");
        let cipher = hex("7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2");
        assert_eq!(
            decrypt_cbc_unpadded(&key, &iv, &cipher).unwrap(),
            hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
        );
        assert_eq!(
            decrypt_cbc(&key, &iv, &cipher),
            Err(CbcFault::Padding),
            "the vector's plaintext is not padded"
        );
        assert_eq!(decrypt_cbc(&key, &iv[..8], &cipher), Err(CbcFault::Shape));
        assert_eq!(decrypt_cbc(&key, &iv, &cipher[..20]), Err(CbcFault::Shape));
    }
}
