//! The few DER shapes the certificate code reads and writes by hand (PKCS#8,
//! PKCS#1, SEC1, PKCS#12 envelopes), on top of `der`'s untyped reader, so
//! this module depends on `der`'s stable core only (no derive macros).
//!
//! Errors here say where a structure broke (byte offset), never what the
//! bytes were: these buffers hold private keys.

use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Encode, Reader, SliceReader, Tag, TagNumber, Tagged};

/// Which DER structure broke, for the error message. Deliberately carries
/// neither bytes nor the decoder's error (which can quote a byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DerFault {
    pub(super) what: &'static str,
}

pub(super) type DerResult<T> = Result<T, DerFault>;

pub(super) fn fault(what: &'static str) -> impl Fn(der::Error) -> DerFault {
    move |_| DerFault { what }
}

/// The elements of a constructed value (a SEQUENCE's or a SET's contents).
pub(super) fn elements<'a>(contents: &'a [u8], what: &'static str) -> DerResult<Vec<AnyRef<'a>>> {
    let mut reader = SliceReader::new(contents).map_err(fault(what))?;
    let mut out = Vec::new();
    while !reader.is_finished() {
        out.push(reader.decode::<AnyRef<'a>>().map_err(fault(what))?);
    }
    Ok(out)
}

/// One whole DER value that must be a SEQUENCE; its elements.
pub(super) fn sequence<'a>(der: &'a [u8], what: &'static str) -> DerResult<Vec<AnyRef<'a>>> {
    let any = AnyRef::from_der(der).map_err(fault(what))?;
    expect_tag(&any, Tag::Sequence, what)?;
    elements(any.value(), what)
}

/// The elements of an element that must be a SEQUENCE.
pub(super) fn nested<'a>(any: &AnyRef<'a>, what: &'static str) -> DerResult<Vec<AnyRef<'a>>> {
    expect_tag(any, Tag::Sequence, what)?;
    elements(any.value(), what)
}

pub(super) fn expect_tag(any: &AnyRef<'_>, tag: Tag, what: &'static str) -> DerResult<()> {
    if any.tag() == tag {
        Ok(())
    } else {
        Err(DerFault { what })
    }
}

pub(super) fn oid(any: &AnyRef<'_>, what: &'static str) -> DerResult<ObjectIdentifier> {
    any.decode_as::<ObjectIdentifier>().map_err(fault(what))
}

/// An OCTET STRING's contents.
pub(super) fn octets<'a>(any: &AnyRef<'a>, what: &'static str) -> DerResult<&'a [u8]> {
    expect_tag(any, Tag::OctetString, what)?;
    Ok(any.value())
}

/// A non-negative INTEGER's magnitude, without leading zero bytes, so two
/// encodings of one number compare equal.
pub(super) fn unsigned<'a>(any: &AnyRef<'a>, what: &'static str) -> DerResult<&'a [u8]> {
    expect_tag(any, Tag::Integer, what)?;
    let bytes = any.value();
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(DerFault { what });
    }
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    Ok(&bytes[start..])
}

/// A small INTEGER (versions, iteration counts).
pub(super) fn small_uint(any: &AnyRef<'_>, what: &'static str) -> DerResult<u32> {
    let magnitude = unsigned(any, what)?;
    if magnitude.len() > 4 {
        return Err(DerFault { what });
    }
    Ok(magnitude.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)))
}

/// Is this element the context-specific tag `[number]`?
pub(super) fn is_context(any: &AnyRef<'_>, number: u32) -> bool {
    matches!(any.tag(), Tag::ContextSpecific { number: n, .. } if n == TagNumber(number))
}

/// Encodes `contents` under `tag`.
pub(super) fn tlv(tag: Tag, contents: &[u8]) -> Vec<u8> {
    // Fails only past DER's length limit (256 MiB), far beyond any Key
    // Vault value (25 KiB), and every caller passes parts of such a value.
    der::asn1::Any::new(tag, contents)
        .and_then(|any| any.to_der())
        .expect("DER value within length limits")
}

/// A SEQUENCE of already encoded elements.
pub(super) fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(Tag::Sequence, &parts.concat())
}

/// The whole encoding (tag, length and contents) of an element.
pub(super) fn encoded(any: &AnyRef<'_>) -> Vec<u8> {
    tlv(any.tag(), any.value())
}

pub(super) fn encode_oid(oid: &ObjectIdentifier) -> Vec<u8> {
    oid.to_der().expect("an OID encodes")
}

/// A context-specific, constructed `[number]` wrapping `contents`.
pub(super) fn context(number: u32, contents: &[u8]) -> Vec<u8> {
    tlv(
        Tag::ContextSpecific {
            constructed: true,
            number: TagNumber(number),
        },
        contents,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_strips_leading_zeros_and_refuses_negatives() {
        let positive = [0x02, 0x03, 0x00, 0x80, 0x01];
        let any = AnyRef::from_der(&positive).unwrap();
        assert_eq!(unsigned(&any, "t").unwrap(), &[0x80, 0x01]);
        let negative = [0x02, 0x01, 0x80];
        let any = AnyRef::from_der(&negative).unwrap();
        assert!(unsigned(&any, "t").is_err());
    }

    #[test]
    fn seq_round_trips_through_sequence() {
        let one = tlv(Tag::Integer, &[1]);
        let two = tlv(Tag::OctetString, b"ab");
        let encoded = seq(&[&one, &two]);
        let parts = sequence(&encoded, "t").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(small_uint(&parts[0], "t").unwrap(), 1);
        assert_eq!(octets(&parts[1], "t").unwrap(), b"ab");
    }

    #[test]
    fn long_contents_get_a_long_form_length() {
        let contents = vec![7u8; 300];
        let encoded = tlv(Tag::OctetString, &contents);
        assert_eq!(&encoded[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let any = AnyRef::from_der(&encoded).unwrap();
        assert_eq!(any.value(), &contents[..]);
    }
}
