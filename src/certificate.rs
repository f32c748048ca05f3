//! Key Vault certificates: a certificate's backing secret (PFX or PEM) as
//! Secret data. (Being written: see issue 11.)
