//! The HTTPS client shared by every call to Key Vault and Entra ID: rustls on
//! the ring provider (the one kube uses), Mozilla's roots plus `--ca-file`,
//! timeouts, response bodies read with a size limit, and what both clients
//! read from a response the same way (`Retry-After`, transport errors).

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Largest response body read from Azure; larger ones are refused.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Problems building the HTTPS client.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The `--ca-file` could not be read or holds no certificate.
    #[error("cannot use CA file {path}: {detail}")]
    CaFile {
        /// The `--ca-file` path given to the operator.
        path: String,
        /// Why it cannot be used: unreadable, not PEM, or no certificate in it.
        detail: String,
    },
    /// rustls or reqwest refused the configuration.
    #[error("cannot build the HTTPS client: {0}")]
    Build(String),
}

/// Reads the PEM certificates of a CA file.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |detail: String| TlsError::CaFile {
        path: path.display().to_string(),
        detail,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Builds the client: Mozilla roots plus `extra_roots`, ring provider.
pub fn build_client(extra_roots: &[CertificateDer<'static>]) -> Result<reqwest::Client, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::Build(format!("extra CA certificate: {e}")))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Build(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kvsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| TlsError::Build(e.to_string()))
}

/// The `Retry-After` header, in seconds.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Reads a response body of at most `limit` bytes; `None` when it is larger.
pub async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n as usize > limit) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// A short description of a transport error (no URL query, no body).
pub fn describe_transport_error(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    if e.is_timeout() {
        parts.push("timed out".to_string());
    } else if e.is_connect() {
        parts.push("connection failed".to_string());
    }
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(if e.is_body() || e.is_decode() {
            "the response was cut short".to_string()
        } else {
            "request failed".to_string()
        });
    }
    parts.dedup();
    parts.join(": ")
}
