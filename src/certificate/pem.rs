//! PEM text in and out. Reading is lenient the way real bundles need:
//! text between blocks (`Bag Attributes` lines from `openssl pkcs12`), CRLF
//! line ends and any line width are accepted; RFC 1421 headers
//! (`Proc-Type: 4,ENCRYPTED`) are noticed, so an encrypted legacy key is
//! refused by name rather than misread.

use base64::Engine as _;

/// One `-----BEGIN label-----` … `-----END label-----` block.
pub(super) struct Block {
    pub(super) label: String,
    /// RFC 1421 `Proc-Type: 4,ENCRYPTED` header present.
    pub(super) encrypted: bool,
    pub(super) der: Vec<u8>,
}

/// Why PEM text could not be split into blocks. Names the label at most
/// (never a line of the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PemFault {
    Unterminated { label: String },
    BadBase64 { label: String },
}

/// Every block in `text`, in order.
pub(super) fn blocks(text: &str) -> Result<Vec<Block>, PemFault> {
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = begin_label(line) else {
            continue;
        };
        let label = label.to_string();
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut encrypted = false;
        let mut terminated = false;
        for line in lines.by_ref() {
            if line == end {
                terminated = true;
                break;
            }
            if line.starts_with("-----") {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                // An RFC 1421 header such as `DEK-Info: DES-EDE3-CBC,…`.
                if name.trim().eq_ignore_ascii_case("Proc-Type") && value.contains("ENCRYPTED") {
                    encrypted = true;
                }
                continue;
            }
            body.push_str(line);
        }
        if !terminated {
            return Err(PemFault::Unterminated {
                label: printable_label(&label),
            });
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| PemFault::BadBase64 {
                label: printable_label(&label),
            })?;
        out.push(Block {
            label,
            encrypted,
            der,
        });
    }
    Ok(out)
}

fn begin_label(line: &str) -> Option<&str> {
    line.strip_prefix("-----BEGIN ")?.strip_suffix("-----")
}

/// A label fit for an error message: short, printable ASCII.
pub(super) fn printable_label(label: &str) -> String {
    label
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// `der` as a PEM block with 64-character lines and LF line ends.
pub(super) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_blocks_round_trips() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = encode("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let parsed = blocks(&pem).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].label, "CERTIFICATE");
        assert_eq!(parsed[0].der, der);
        assert!(!parsed[0].encrypted);
    }

    #[test]
    fn text_around_blocks_and_crlf_are_accepted() {
        let one = encode("CERTIFICATE", b"one").replace('\n', "\r\n");
        let two = encode("PRIVATE KEY", b"two");
        let text =
            format!("Bag Attributes\n    friendlyName: x\nsubject=CN = a\n{one}\nnoise\n{two}");
        let parsed = blocks(&text).unwrap();
        let labels: Vec<_> = parsed.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["CERTIFICATE", "PRIVATE KEY"]);
        assert_eq!(parsed[1].der, b"two");
    }

    #[test]
    fn legacy_encryption_header_is_noticed() {
        let text = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let parsed = blocks(text).unwrap();
        assert!(parsed[0].encrypted);
    }

    #[test]
    fn a_block_without_its_end_is_refused() {
        let text = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            blocks(text).err(),
            Some(PemFault::Unterminated {
                label: "CERTIFICATE".into()
            })
        );
    }

    #[test]
    fn bad_base64_names_the_label_only() {
        let text = "-----BEGIN PRIVATE KEY-----\nnot*base64\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            blocks(text).err(),
            Some(PemFault::BadBase64 {
                label: "PRIVATE KEY".into()
            })
        );
    }
}
