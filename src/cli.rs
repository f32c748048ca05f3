//! The `kvsync` command line. Its commands and flags are a contract (DESIGN §5).

use clap::{Parser, Subcommand};

/// kvsync keeps Kubernetes Secrets in step with Azure Key Vault.
#[derive(Debug, Parser)]
#[command(name = "kvsync", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the VaultSecretBinding CustomResourceDefinition as YAML.
    Crd,
}
