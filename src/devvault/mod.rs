//! `kvsync dev-vault`: a local stand-in for Azure Key Vault **and** Entra ID
//! (DESIGN §7), served over HTTPS, for development and tests without Azure.

pub mod entra;
pub mod jwt;
pub mod kvapi;
pub mod seed;
pub mod server;
pub mod store;
pub mod testcerts;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use seed::Seed;
pub use store::{FaultSpec, Stats};

/// Tenant id the dev vault names in its challenges.
pub const DEV_TENANT_ID: &str = "kvsync-dev-tenant";
/// Client id of the dev federated token file (the operator's identity).
pub const DEV_CLIENT_ID: &str = "kvsync-dev-client";

/// How to run a dev vault.
#[derive(Debug, Clone)]
pub struct DevVaultConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub addr: SocketAddr,
    /// Secrets and access rules.
    pub seed: Seed,
    /// Lifetime of the tokens it issues.
    pub token_lifetime: Duration,
}

/// A dev vault that is serving. Dropping it stops it.
pub struct RunningDevVault {
    addr: SocketAddr,
    ca_pem: String,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningDevVault {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`: the vault URL and the authority host.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// PEM of the development CA that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Stops serving and waits for the listener to close.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningDevVault {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

/// Starts a dev vault on `config.addr`.
pub async fn start(config: DevVaultConfig) -> std::io::Result<RunningDevVault> {
    let certs = tls::make().map_err(std::io::Error::other)?;
    let listener = TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    // Seeded secrets stand for secrets that were in the vault before: they
    // are dated a minute before the start.
    let shared = Arc::new(server::Shared {
        state: Mutex::new(store::VaultState::from_seed(&config.seed, now - 60)),
        tenant: DEV_TENANT_ID.to_string(),
        token_lifetime: config.token_lifetime,
        default_host: addr.to_string(),
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config.clone());
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, acceptor, shared, rx));
    Ok(RunningDevVault {
        addr,
        ca_pem: certs.ca_pem,
        shutdown: tx,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<server::Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((tcp, _peer)) = accepted else { continue };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service =
                hyper::service::service_fn(move |req| server::handle(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = conn => {}
                _ = conn_shutdown.changed() => {}
            }
        });
    }
}

/// Writes the dev federated token file: a JWT for the operator's identity
/// (`sub` = `system:serviceaccount:kvsync:kvsync`), valid for a year.
pub fn write_federated_token(path: &Path, subject: &str) -> std::io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let token = jwt::encode_signed(&serde_json::json!({
        "iss": "https://kvsync-dev-vault.invalid/oidc",
        "sub": subject,
        "aud": [crate::azure::identity::TOKEN_EXCHANGE_AUDIENCE],
        "iat": now,
        "nbf": now,
        "exp": now + 365 * 86400,
    }));
    std::fs::write(path, token)
}

/// The `export` lines that make `kvsync run` / `check` and the Azure SDKs use
/// this dev vault.
pub fn export_lines(url: &str, ca_file: &Path, token_file: &Path) -> String {
    let ca = ca_file.display();
    format!(
        "export KVSYNC_DEV_VAULT_URL={url}\n\
         export AZURE_AUTHORITY_HOST={url}/\n\
         export AZURE_TENANT_ID={DEV_TENANT_ID}\n\
         export AZURE_CLIENT_ID={DEV_CLIENT_ID}\n\
         export AZURE_FEDERATED_TOKEN_FILE={}\n\
         export KVSYNC_CA_FILE={ca}\n\
         # then: kvsync run --allowed-vault-hosts {} --ca-file {ca}\n",
        token_file.display(),
        url.trim_start_matches("https://"),
    )
}

/// Default token file path: beside the CA file.
pub fn default_token_file(ca_out: &Path) -> PathBuf {
    ca_out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("dev-federated-token")
}
