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

    /// What to do: run the operator, check a binding, print the CRDs, …
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

/// The CRDs kvsync defines, by plural name.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CrdKind {
    /// `VaultSecretBinding` (namespaced).
    Vaultsecretbindings,
    /// `VaultAccessPolicy` (cluster-scoped).
    Vaultaccesspolicies,
    /// `ClusterVaultSecretBinding` (cluster-scoped).
    Clustervaultsecretbindings,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a CustomResourceDefinition as YAML (VaultSecretBinding unless
    /// another kind is named).
    Crd {
        /// Which CRD.
        #[arg(value_enum, default_value_t = CrdKind::Vaultsecretbindings)]
        kind: CrdKind,
    },
    /// Run the controller: keep every VaultSecretBinding's Secret in step with its vault.
    Run(RunArgs),
    /// Check one binding against its vault: which key gets which secret version, and every problem.
    Check(CheckArgs),
    /// Run a local Key Vault + Entra ID stand-in over HTTPS for development.
    DevVault(DevVaultArgs),
}

/// Flags that decide which vaults kvsync talks to and how.
#[derive(Debug, Clone, clap::Args)]
pub struct VaultArgs {
    /// Extra vault hosts allowed besides the Key Vault DNS suffixes: `.suffix`,
    /// `host` or `host:port` (e.g. 127.0.0.1:8443), comma-separated or repeated.
    #[arg(long, value_delimiter = ',', env = "KVSYNC_ALLOWED_VAULT_HOSTS")]
    pub allowed_vault_hosts: Vec<String>,
    /// Extra trust roots (PEM) for the vault and Entra endpoints.
    #[arg(long, env = "KVSYNC_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// refreshInterval of bindings that set none.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub default_refresh_interval: std::time::Duration,
}

/// Flags of `kvsync run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Watch only this namespace (repeatable); default: all namespaces.
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,
    /// Which vault hosts the operator may send tokens to, and how.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Data changes within this window cause one rollout restart.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub rollout_window: std::time::Duration,
    /// A binding's force-sync re-reads the vault (bypassing the caches every
    /// binding of that vault shares) at most once per this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub force_sync_cooldown: std::time::Duration,
    /// With nothing changed, `status.lastSyncTime` is written at most once
    /// per this long (0: after every check). Every other status field is
    /// written when it changes.
    #[arg(long, default_value = "15m", value_parser = parse_duration_or_zero)]
    pub status_heartbeat: std::time::Duration,
    /// Reconciles running at once (per watched namespace). Reconciles wait on
    /// the vault and the API server, not the CPU; the per-vault request
    /// budget holds whatever this is.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// VaultAccessPolicies: `open` lets a namespace no policy selects use
    /// any vault, name and identity (policies only restrict the namespaces
    /// they select); `enforce` lets it use nothing.
    #[arg(long, value_enum, default_value_t = crate::policy::Mode::Open)]
    pub access_policy: crate::policy::Mode,
    /// Elect one writer among the replicas with a Lease in POD_NAMESPACE
    /// (identity POD_NAME); standbys keep their caches warm and write nothing.
    #[arg(long)]
    pub leader_elect: bool,
    /// How long a lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: std::time::Duration,
    /// A leader that cannot renew within this stops writing.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: std::time::Duration,
    /// Reconcile only the bindings of shard I of N (FNV-1a 64 of the uid);
    /// with --leader-elect each shard has its own Lease.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::shard::Shard>,
    /// Namespace of Secret `kvsync-hash-key`, the key of `status.dataHash`
    /// shared by all replicas (made on the first start); default: the
    /// operator's own namespace (POD_NAMESPACE), else the kubeconfig's.
    #[arg(long, env = "POD_NAMESPACE")]
    pub hash_key_namespace: Option<String>,
}

/// Flags of `kvsync check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The binding's YAML.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// The binding's namespace (default: its metadata.namespace, else
    /// `default`). With a cluster, VaultAccessPolicies are decided for it.
    #[arg(long)]
    pub namespace: Option<String>,
    /// VaultAccessPolicies from this YAML file (one or more documents)
    /// instead of the cluster's.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Namespace labels to decide with (`k=v,k=v`) instead of the cluster's.
    #[arg(long)]
    pub namespace_labels: Option<String>,
    /// The mode to decide in, as the operator's `--access-policy`.
    #[arg(long, value_enum, default_value_t = crate::policy::Mode::Open)]
    pub access_policy: crate::policy::Mode,
    /// The operator's vault flags, so `check` allows the same hosts it would.
    #[command(flatten)]
    pub vault: VaultArgs,
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

/// A duration, or a bare `0` (as Go's durations allow).
fn parse_duration_or_zero(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    parse_duration(s)
}
