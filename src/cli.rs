//! The `kvsync` command line. Its commands and flags are a contract (DESIGN §5).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// kvsync keeps Kubernetes Secrets in step with Azure Key Vault.
#[derive(Debug, Parser)]
#[command(name = "kvsync", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KVSYNC_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// Human-readable text.
    Text,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the VaultSecretBinding CustomResourceDefinition as YAML.
    Crd,
    /// Run a local Key Vault + Entra ID stand-in over HTTPS for development.
    DevVault(DevVaultArgs),
}

/// Flags of `kvsync dev-vault`.
#[derive(Debug, clap::Args)]
pub struct DevVaultArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub addr: SocketAddr,
    /// Seed file (YAML): secrets and optional access rules.
    #[arg(long)]
    pub seed: Option<PathBuf>,
    /// Where to write the development CA certificate (PEM).
    #[arg(long, default_value = "dev-vault-ca.pem")]
    pub ca_out: PathBuf,
    /// Where to write the federated token file for AZURE_FEDERATED_TOKEN_FILE
    /// (default: `dev-federated-token` beside --ca-out).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Lifetime of issued access tokens (e.g. 1h, 90s).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub token_lifetime: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}
